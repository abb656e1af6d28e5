//! Compile slots: how many compiles a machine runs, how many more it could, and what every
//! member says about itself.
//!
//! **Local.** Every compile a wrapper runs on a miss holds one byte of
//! `$DISTC_DIR/compile.slots` (an open file description lock, released by the kernel when the
//! wrapper exits, however it exits): byte `i` is slot `i`, and a machine has as many slots
//! as cores this process may run on ([`cores`], which honours `taskset`). A wrapper that finds
//! every slot taken knows the machine is busy (more compiles running than cores) and may send
//! its compile to a member with a free slot. The peer counts the held bytes ([`running`]) to
//! say how many slots it has free: cores minus its owner's compiles minus the guests' it runs,
//! so its offer shrinks as soon as its owner's build starts.
//!
//! **In the mesh.** Each peer advertises a [`SlotAdvert`] (free slots, cores, the identities
//! of the compilers it serves) as a foca *custom broadcast*: it rides piggybacked on the SWIM
//! probes and gossip that flow anyway, reaches every member within a few probe periods, and
//! a newer advert of the same peer replaces an older one everywhere ([`AdvertKey`]). The
//! anti-entropy exchange would carry it only to the one member synced with each round, so a
//! member would learn another's slots only every few rounds in a larger mesh — too stale for
//! a number that changes with every compile. Adverts are re-sent when they change and every
//! [`REFRESH`] anyway (so a newcomer learns them), and one older than [`STALE`] is ignored.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::protocol::Bytes;
use crate::toolchain::{MAX_TOOLCHAINS, ToolchainId};

/// The slot file in `$DISTC_DIR`.
pub const SLOTS_FILE: &str = "compile.slots";

/// Most slots counted on one machine.
pub const MAX_SLOTS: usize = 1024;

/// An unchanged advert is re-sent this often.
pub const REFRESH: Duration = Duration::from_secs(10);

/// An advert not renewed for this long is not believed.
pub const STALE: Duration = Duration::from_secs(30);

/// The cores this process may run on (its CPU affinity: `taskset` narrows it).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_SLOTS)
}

fn open(distc_dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(distc_dir.join(SLOTS_FILE))
}

/// A local compile slot, held until drop.
#[derive(Debug)]
pub struct LocalSlot {
    _file: File,
    /// Which slot (byte) this is.
    pub index: usize,
}

/// Takes a free slot among the first `cores()`, or `None` when every one is taken (the machine
/// is busy). Errors mean the slot file cannot be used. Every machine has a first slot, so
/// `cores` (which reads cgroup files) is asked only when that one is taken.
#[cfg(target_os = "linux")]
pub fn take(distc_dir: &Path, cores: impl FnOnce() -> usize) -> io::Result<Option<LocalSlot>> {
    let file = open(distc_dir)?;
    if crate::lockfile::try_lock_byte(&file, 0)? {
        return Ok(Some(LocalSlot {
            _file: file,
            index: 0,
        }));
    }
    for index in 1..cores().min(MAX_SLOTS) {
        if crate::lockfile::try_lock_byte(&file, index as i64)? {
            return Ok(Some(LocalSlot { _file: file, index }));
        }
    }
    Ok(None)
}

/// Elsewhere there are no byte locks: the machine never counts as busy (nothing is offloaded).
#[cfg(not(target_os = "linux"))]
pub fn take(distc_dir: &Path, _cores: impl FnOnce() -> usize) -> io::Result<Option<LocalSlot>> {
    Ok(Some(LocalSlot {
        _file: open(distc_dir)?,
        index: 0,
    }))
}

/// How many of the first `upto` slots are held by running compiles.
#[cfg(target_os = "linux")]
pub fn running(distc_dir: &Path, upto: usize) -> usize {
    let Ok(file) = open(distc_dir) else {
        return 0;
    };
    (0..upto.min(MAX_SLOTS))
        .filter(|&i| crate::lockfile::byte_locked(&file, i as i64))
        .count()
}

#[cfg(not(target_os = "linux"))]
pub fn running(_distc_dir: &Path, _upto: usize) -> usize {
    0
}

/// What a peer says about its compile slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotAdvert {
    /// The advertising peer (libp2p peer id bytes): foca does not say who sent a broadcast.
    pub peer: Bytes,
    /// Raised with every new advert of this peer (ms since the epoch at its making).
    pub seq: u64,
    /// Its cores.
    pub cores: u32,
    /// Slots free for guests now (0 when it does not serve).
    pub free: u32,
    /// The compilers it serves (none when it does not serve).
    pub toolchains: Vec<ToolchainId>,
}

impl SlotAdvert {
    pub fn peer_id(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.peer.0).ok()
    }

    pub fn encode(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(self)
    }

    pub fn decode(data: &[u8]) -> Result<SlotAdvert, codec::CodecError> {
        let a: SlotAdvert = codec::decode(data, 4096)?;
        if a.toolchains.len() > MAX_TOOLCHAINS {
            return Err(codec::CodecError::TooLarge {
                len: a.toolchains.len(),
                limit: MAX_TOOLCHAINS,
            });
        }
        Ok(a)
    }
}

/// What this peer holds of every member's latest advert (and its own).
#[derive(Debug, Clone, Default)]
pub struct Board {
    inner: Arc<Mutex<HashMap<PeerId, (SlotAdvert, Instant)>>>,
}

impl Board {
    /// Keeps `a` if it is newer than what is held for its peer; true if it was.
    pub fn offer(&self, a: SlotAdvert) -> bool {
        let Some(peer) = a.peer_id() else {
            return false;
        };
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&peer) {
            Some((held, _)) if held.seq >= a.seq => false,
            _ => {
                m.insert(peer, (a, Instant::now()));
                true
            }
        }
    }

    /// Every advert younger than [`STALE`].
    pub fn current(&self) -> Vec<(PeerId, SlotAdvert)> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (_, at)| at.elapsed() < STALE * 4);
        let mut out: Vec<(PeerId, SlotAdvert)> = m
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < STALE)
            .map(|(p, (a, _))| (*p, a.clone()))
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out
    }
}

/// The key foca keeps a broadcast under: a newer advert of a peer invalidates its older ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertKey {
    peer: Vec<u8>,
    seq: u64,
}

impl foca::Invalidates for AdvertKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.peer == other.peer && self.seq >= other.seq
    }
}

/// foca's handler of slot adverts: decodes, keeps the newer ones on the [`Board`], and tells
/// foca to spread only those.
#[derive(Debug, Clone, Default)]
pub struct AdvertHandler {
    pub board: Board,
}

impl<T> foca::BroadcastHandler<T> for AdvertHandler {
    type Key = AdvertKey;
    type Error = codec::CodecError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&T>,
    ) -> Result<Option<AdvertKey>, codec::CodecError> {
        let a = SlotAdvert::decode(data)?;
        let key = AdvertKey {
            peer: a.peer.0.clone(),
            seq: a.seq,
        };
        Ok(self.board.offer(a).then_some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_counted_and_released() {
        let d = tempfile::tempdir().unwrap();
        let a = take(d.path(), || 2).unwrap().expect("slot 0");
        let b = take(d.path(), || 2).unwrap().expect("slot 1");
        assert_eq!((a.index, b.index), (0, 1));
        assert!(take(d.path(), || 2).unwrap().is_none(), "busy");
        assert_eq!(running(d.path(), 4), 2);
        drop(a);
        assert_eq!(running(d.path(), 4), 1);
        assert_eq!(take(d.path(), || 2).unwrap().expect("free again").index, 0);
    }

    #[test]
    fn newer_adverts_win_and_old_ones_are_not_spread() {
        use foca::BroadcastHandler;
        let peer = PeerId::random();
        let advert = |seq, free| SlotAdvert {
            peer: Bytes(peer.to_bytes()),
            seq,
            cores: 4,
            free,
            toolchains: vec![ToolchainId([7; 32])],
        };
        let mut h = AdvertHandler::default();
        let recv = |h: &mut AdvertHandler, a: &SlotAdvert| {
            BroadcastHandler::<()>::receive_item(h, &a.encode().unwrap(), None).unwrap()
        };
        assert!(recv(&mut h, &advert(2, 3)).is_some());
        assert!(recv(&mut h, &advert(1, 1)).is_none(), "older advert spread");
        assert!(
            recv(&mut h, &advert(2, 3)).is_none(),
            "same advert spread twice"
        );
        assert_eq!(h.board.current()[0].1.free, 3);
        assert!(recv(&mut h, &advert(5, 0)).is_some());
        assert_eq!(h.board.current()[0].1.free, 0);
        use foca::Invalidates;
        let k = |seq| AdvertKey {
            peer: peer.to_bytes(),
            seq,
        };
        assert!(k(5).invalidates(&k(2)) && !k(2).invalidates(&k(5)));
        assert!(BroadcastHandler::<()>::receive_item(&mut h, b"garbage", None).is_err());
    }
}
