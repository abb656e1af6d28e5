//! The tiered lookup the wrapper uses: local store -> local peer (mesh) -> compile -> put.
//!
//! Every fault here degrades to "not cached": a build never fails because of the cache. The
//! only visible effect of a broken cache directory is one warning per process.

pub mod bundle;
pub mod events;
pub mod lock;
pub mod stats;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use distc_peer::Key;
use distc_peer::ipc::{self, IpcClient, IpcError};
use distc_peer::store::{Store, StoreError};

use crate::cache::bundle::Bundle;
use crate::cache::stats::{Event, Stats};
use events::Outcome;

/// The wrapper's handle on the cache of one `$DISTC_DIR`.
pub struct Cache {
    /// `$DISTC_DIR`.
    pub dir: PathBuf,
    /// `None` when the store cannot be opened (read-only or missing dir): compile only.
    store: Option<Store>,
    /// The budget of this process (one compile) for all its waits on the local peer together:
    /// connects, lookups, manifest fetches. Announces never wait.
    peer_timeout: Duration,
    /// When that budget runs out; set by the first request to the peer.
    peer_deadline: std::cell::Cell<Option<Instant>>,
    /// The peer is not asked again in this process: it is absent, missed the deadline, or was
    /// marked unresponsive by another wrapper within the back-off.
    peer_skipped: std::cell::Cell<bool>,
    /// An old unresponsive marker was found (back-off over): an answer removes it.
    peer_retrying: std::cell::Cell<bool>,
    /// Largest entry accepted from a peer.
    max_entry_size: u64,
    /// One warning per process about an unusable cache directory.
    warned: std::cell::Cell<bool>,
    /// When this process opened the cache: a compile's duration in the recent-events ring.
    opened: Instant,
    /// The source being compiled, as the recent-events ring names it.
    source: std::cell::RefCell<String>,
}

/// Directories of `$DISTC_DIR` that grow with the store and are trimmed with it (`misses/`
/// holds the miss records of distc before the miss log, `misses.log`, which bounds itself).
const AUX_DIRS: &[&str] = &["manifests", "misses", "locks", "sources"];

/// What a lookup found.
pub struct Found {
    pub bundle: Bundle,
    /// Fetched from the mesh by this lookup (else read from the local store).
    pub remote: bool,
    /// The producer's public key when another machine produced the entry (received now or
    /// earlier: a replica pushed here is local but foreign); `None` for this machine's own.
    pub producer: Option<[u8; 32]>,
}

/// The producer key an entry's header names, if it is signed (another machine's).
fn producer_of(raw: &[u8]) -> Option<[u8; 32]> {
    Store::provenance(raw).ok().and_then(producer_in)
}

/// The producer key a provenance names, if it is signed (another machine's).
fn producer_in(provenance: distc_peer::store::Provenance) -> Option<[u8; 32]> {
    match provenance {
        distc_peer::store::Provenance::Signed { producer, .. } => Some(producer),
        distc_peer::store::Provenance::Local => None,
    }
}

impl Cache {
    pub fn open(dir: &Path, max_size: u64, peer_timeout: Duration, max_entry_size: u64) -> Cache {
        let cache = Cache {
            dir: dir.to_path_buf(),
            store: None,
            peer_timeout,
            peer_deadline: std::cell::Cell::new(None),
            peer_skipped: std::cell::Cell::new(false),
            peer_retrying: std::cell::Cell::new(false),
            max_entry_size,
            warned: std::cell::Cell::new(false),
            opened: Instant::now(),
            source: std::cell::RefCell::new(String::new()),
        };
        match Store::open(&dir.join("store"), max_size) {
            Ok(s) => Cache {
                store: Some(s.with_aux_dirs(AUX_DIRS.iter().map(|d| dir.join(d)).collect())),
                ..cache
            },
            Err(e) => {
                cache.warn(&e);
                cache
            }
        }
    }

    /// Prints the one warning of this process about the cache directory.
    pub fn warn(&self, e: &dyn std::fmt::Display) {
        if !self.warned.replace(true) {
            eprintln!(
                "distc: warning: cache unusable ({e}); compiling without caching. \
                 Check that {} is writable and not full, or set DISTC_DIR.",
                self.dir.display()
            );
        }
    }

    /// Names the source this process compiles, for the recent-events ring (`distc top`).
    pub fn set_source(&self, source: impl std::fmt::Display) {
        *self.source.borrow_mut() = source.to_string();
    }

    /// Counts an event, and appends a compile's outcome to the recent-events ring; a counter
    /// that cannot be written is not worth a warning of its own.
    pub fn count(&self, event: Event<'_>) {
        let _ = Stats::record(&self.dir, event);
        let (outcome, reason) = match event {
            Event::LocalHit => (Outcome::Hit, None),
            Event::RemoteHit => (Outcome::RemoteHit, None),
            Event::Miss => (Outcome::Miss, None),
            Event::Uncacheable(r) => (Outcome::Uncacheable, Some(r)),
            Event::Error(_)
            | Event::Verified
            | Event::VerifySkipped(_)
            | Event::Mismatch(_)
            | Event::Offloaded => {
                return;
            }
        };
        let source = self.source.borrow();
        let _ = events::append(&self.dir, outcome, reason, self.opened.elapsed(), &source);
    }

    /// Local store lookup. A corrupt entry is removed by the store, counted, and is a miss.
    pub fn get_local(&self, key: &Key) -> Option<Found> {
        let (payload, provenance) = self.local_payload(key)?;
        // The entry mapped (or, small, read) once; its outputs are slices of it.
        match Bundle::decode_shared(payload) {
            Ok(bundle) => Some(Found {
                bundle,
                remote: false,
                producer: producer_in(provenance),
            }),
            Err(e) => {
                tracing::warn!("cache entry {key} does not decode: {e}; removing it");
                self.remove(key);
                self.count(Event::Error("corrupt"));
                None
            }
        }
    }

    /// The checked payload under `key` in the local store. A corrupt entry is removed by the
    /// store, counted, and is a miss.
    fn local_payload(&self, key: &Key) -> Option<(bytes::Bytes, distc_peer::store::Provenance)> {
        let store = self.store.as_ref()?;
        match store.get_payload(key) {
            Ok(found) => found,
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::warn!("{e}");
                self.count(Event::Error("corrupt"));
                None
            }
            Err(e) => {
                tracing::warn!("cache read failed: {e}");
                self.count(Event::Error("store-read"));
                None
            }
        }
    }

    /// Local store, then the local peer (only when its socket exists).
    pub fn get(&self, key: &Key) -> Option<Found> {
        if let Some(f) = self.get_local(key) {
            return Some(f);
        }
        self.get_remote_found(key)
    }

    /// Removes the entry under `key` from the local store (a re-verification found it wrong).
    pub fn remove(&self, key: &Key) {
        if let Some(store) = &self.store {
            let _ = store.remove(key);
        }
    }

    /// Whether asking the mesh can help: the local peer has other live members, and it is
    /// neither absent nor marked unresponsive. A stopped peer cannot remove its `peer.mesh`
    /// marker; while it is skipped, compiles run as without a mesh (depend mode, no shared
    /// manifests), so that it costs a build one budget and nothing per compile after that.
    pub fn mesh_active(&self) -> bool {
        if self.peer_skipped.get() || !distc_peer::ipc::mesh_active(&self.dir) {
            return false;
        }
        match ipc::unresponsive_for(&self.dir) {
            Some(age) if age < ipc::UNRESPONSIVE_BACKOFF => {
                self.peer_skipped.set(true);
                false
            }
            _ => true,
        }
    }

    /// Asks the machine's peer for `key` (only while the mesh is active); returns the raw
    /// entry and its verified payload, at most `max_payload` bytes.
    fn fetch_remote(&self, key: &Key, max_payload: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        if !self.mesh_active() {
            return None;
        }
        let raw = self.peer_get(key)?;
        // What the mesh sends must be this key's entry, checked like a local one.
        match Store::verify_raw(&raw, key, max_payload.min(self.max_entry_size)) {
            Ok(p) => Some((raw, p)),
            Err(e) => {
                tracing::warn!("entry {key} from the mesh rejected: {e}");
                self.count(Event::Error("remote-corrupt"));
                None
            }
        }
    }

    /// The payload of an auxiliary entry (a shared manifest), at most `max_payload` bytes: from
    /// the local store, where the peer keeps the replicas this machine owns, else from the
    /// mesh (verified; not kept in the local store, the caller keeps what it uses). The local
    /// look comes first because the peer does not look in its own store for the wrapper.
    pub fn get_shared_payload(&self, key: &Key, max_payload: u64) -> Option<Vec<u8>> {
        if let Some((payload, _)) = self.local_payload(key)
            && payload.len() as u64 <= max_payload
        {
            return Some(payload.to_vec());
        }
        self.fetch_remote(key, max_payload).map(|(_, p)| p)
    }

    /// Asks the machine's peer for `key`; verifies and stores what comes back.
    fn get_remote_found(&self, key: &Key) -> Option<Found> {
        let (raw, payload) = self.fetch_remote(key, self.max_entry_size)?;
        let bundle = match Bundle::decode_shared(payload.into()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("entry {key} from the mesh does not decode: {e}");
                self.count(Event::Error("remote-corrupt"));
                return None;
            }
        };
        if let Some(store) = &self.store
            && let Err(e) = store.put_raw(key, &raw)
        {
            tracing::debug!("cannot keep remote entry {key} locally: {e}");
        }
        Some(Found {
            bundle,
            remote: true,
            producer: producer_of(&raw),
        })
    }

    /// Stores a result and tells the local peer about it. Failures warn once and are counted.
    pub fn put(&self, key: &Key, bundle: &Bundle) {
        if self.store.is_none() {
            return;
        }
        let payload = match bundle.encode() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot encode result {key}: {e}");
                self.count(Event::Error("encode"));
                return;
            }
        };
        self.put_payload(key, &payload);
    }

    /// Stores an opaque payload (an encoded bundle, a shared manifest) and, while the mesh is
    /// active, tells the local peer, which replicates it like any entry. A peer alone (the
    /// usual keyless one) has nobody to replicate to, so a miss costs no round trip to it; a
    /// member that joins later gets the entries it owns by the peer's repair after the join.
    pub fn put_payload(&self, key: &Key, payload: &[u8]) {
        let Some(store) = &self.store else {
            return;
        };
        match store.put(key, payload) {
            Ok(_) => {
                if self.mesh_active() {
                    self.peer_announce(key);
                }
            }
            Err(e) => {
                if e.is_unwritable() {
                    self.warn(&e);
                } else {
                    tracing::warn!("cannot store result {key}: {e}");
                }
                self.count(Event::Error("store-write"));
            }
        }
    }

    /// What is left of this compile's budget for the local peer; `None`: skip it.
    fn peer_budget(&self) -> Option<Duration> {
        if self.peer_skipped.get() {
            return None;
        }
        let deadline = match self.peer_deadline.get() {
            Some(d) => d,
            None => {
                match ipc::unresponsive_for(&self.dir) {
                    Some(age) if age < ipc::UNRESPONSIVE_BACKOFF => {
                        self.peer_skipped.set(true);
                        return None;
                    }
                    Some(_) => self.peer_retrying.set(true),
                    None => {}
                }
                let d = Instant::now() + self.peer_timeout;
                self.peer_deadline.set(Some(d));
                d
            }
        };
        match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => {
                self.peer_skipped.set(true);
                None
            }
        }
    }

    /// Books the outcome of one request to the local peer. A timeout marks the peer
    /// unresponsive for every wrapper (for the back-off) and is counted; a peer that is not
    /// there is simply not asked again in this process.
    fn peer_outcome<T>(&self, what: &str, r: Result<T, IpcError>) -> Option<T> {
        match r {
            Ok(v) => {
                if self.peer_retrying.replace(false) {
                    ipc::clear_unresponsive(&self.dir);
                }
                Some(v)
            }
            Err(e) => {
                self.peer_skipped.set(true);
                if ipc::is_timeout(&e) {
                    tracing::warn!(
                        "local peer did not answer {what} within {} ms; skipping it for {} s",
                        self.peer_timeout.as_millis(),
                        ipc::UNRESPONSIVE_BACKOFF.as_secs()
                    );
                    let _ = ipc::mark_unresponsive(&self.dir);
                    self.count(Event::Error("peer-timeout"));
                } else {
                    tracing::debug!("local peer {what}: {e}");
                }
                None
            }
        }
    }

    /// Raw entry bytes for `key` from the ring owners, via the local peer, within the budget.
    fn peer_get(&self, key: &Key) -> Option<Vec<u8>> {
        let budget = self.peer_budget()?;
        let r = IpcClient::connect(&self.dir, budget)
            .map_err(IpcError::from)
            .and_then(|mut c| {
                // The connect took part of the budget.
                c.set_timeout(self.peer_budget().unwrap_or(Duration::from_millis(1)))?;
                c.get(key)
            });
        self.peer_outcome("a lookup", r).flatten()
    }

    /// "key is stored locally, replicate it": written without waiting for any answer.
    fn peer_announce(&self, key: &Key) {
        let Some(budget) = self.peer_budget() else {
            return;
        };
        let r = IpcClient::connect(&self.dir, budget)
            .map_err(IpcError::from)
            .and_then(|mut c| c.announce(key));
        self.peer_outcome("an announce", r);
    }
}

/// A file of `$DISTC_DIR` (a manifest) that does not hold what its name says: removed so it is
/// rebuilt, counted under `stats` errors as `corrupt`, and a miss for the caller.
pub fn discard_corrupt(distc_dir: &Path, path: &Path, why: &str) {
    tracing::warn!("{}: {why}; removing it", path.display());
    let _ = fs::remove_file(path);
    let _ = Stats::record(distc_dir, Event::Error("corrupt"));
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn corrupt_entry_is_a_counted_miss() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path(), 1 << 30, Duration::from_millis(10), 1 << 30);
        let key = Key::digest(b"x");
        let b = Bundle {
            version: crate::cache::bundle::BUNDLE_VERSION,
            outputs: vec![],
            stdout: vec![],
            stderr: vec![],
            exit_code: 0,
        };
        cache.put(&key, &b);
        assert!(cache.get_local(&key).is_some());
        // Corrupt every file in the store.
        fn walk(p: &Path) {
            for e in fs::read_dir(p).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p)
                } else if p.file_name().unwrap().len() > 20 {
                    fs::write(&p, b"garbage").unwrap();
                }
            }
        }
        walk(&d.path().join("store"));
        assert!(cache.get_local(&key).is_none());
        assert_eq!(Stats::read_all(d.path()).unwrap().errors, 1);
    }
}
