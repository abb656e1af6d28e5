//! The member table: who is in the mesh, as far as this peer can tell.
//!
//! Membership spreads by push-pull gossip: every round each peer raises its own heartbeat and
//! swaps its whole table with the peers it is connected to. A record replaces an older one of
//! the same member when its `(incarnation, heartbeat)` is larger. A member whose heartbeat has
//! not advanced for `down_after` leaves the ring; every peer applies the same rule to the same
//! gossip, so all of them derive the same member set (and so the same ring) within a round or
//! two of any change.
//!
//! Separately, each peer remembers who it could not reach itself (`unreachable`): that only
//! changes how it routes requests (it skips them for a while), never the ring.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::protocol::{Bytes, MemberRecord};
use crate::store::Usage;

/// Most members accepted from one gossip message, and most addresses per member.
pub const MAX_MEMBERS: usize = 1024;
pub const MAX_ADDRS: usize = 16;

/// How long silence means what.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// No new heartbeat for this long: shown as suspect.
    pub suspect_after: Duration,
    /// No new heartbeat for this long: down, out of the ring.
    pub down_after: Duration,
    /// Down for this long: forgotten.
    pub forget_after: Duration,
    /// After a failed dial or request, skip the peer for this long.
    pub unreachable_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            suspect_after: Duration::from_millis(2500),
            down_after: Duration::from_secs(6),
            forget_after: Duration::from_secs(600),
            unreachable_backoff: Duration::from_secs(5),
        }
    }
}

/// What this peer believes about a member's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    Up,
    Suspect,
    Down,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Up => "up",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
        })
    }
}

/// One remote member.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: PeerId,
    /// Where it says it listens.
    pub addrs: Vec<Multiaddr>,
    pub incarnation: u64,
    pub heartbeat: u64,
    pub usage: Usage,
    /// It announced it was leaving.
    pub left: bool,
    /// When its heartbeat last advanced (local clock).
    pub last_change: Instant,
    /// The same moment as wall-clock seconds since the epoch, for display.
    pub last_seen_unix: u64,
    /// We have at least one open connection to it.
    pub connected: bool,
    /// We failed to reach it at this moment (cleared on connection).
    pub unreachable_since: Option<Instant>,
}

/// The local peer's member table.
#[derive(Debug)]
pub struct Membership {
    me: PeerId,
    incarnation: u64,
    heartbeat: u64,
    my_addrs: Vec<Multiaddr>,
    my_usage: Usage,
    leaving: bool,
    members: BTreeMap<PeerId, Member>,
    timing: Timing,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// True for addresses that only make sense on this machine.
pub fn is_loopback(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback() || ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_loopback() || ip.is_unspecified(),
        _ => false,
    })
}

impl Membership {
    pub fn new(me: PeerId, timing: Timing) -> Membership {
        Membership {
            me,
            incarnation: unix_now_ms(),
            heartbeat: 0,
            my_addrs: Vec::new(),
            my_usage: Usage::default(),
            leaving: false,
            members: BTreeMap::new(),
            timing,
        }
    }

    pub fn me(&self) -> PeerId {
        self.me
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// One gossip round passed: raise our heartbeat, forget long-dead members.
    pub fn tick(&mut self, now: Instant) {
        self.heartbeat += 1;
        let forget = self.timing.down_after + self.timing.forget_after;
        self.members
            .retain(|_, m| m.connected || now.duration_since(m.last_change) < forget);
    }

    pub fn set_local_addrs(&mut self, addrs: Vec<Multiaddr>) {
        self.my_addrs = addrs;
    }

    pub fn local_addrs(&self) -> &[Multiaddr] {
        &self.my_addrs
    }

    pub fn set_local_usage(&mut self, usage: Usage) {
        self.my_usage = usage;
    }

    pub fn local_usage(&self) -> Usage {
        self.my_usage
    }

    /// We are shutting down: the next records we send say so.
    pub fn leave(&mut self) {
        self.leaving = true;
        self.heartbeat += 1;
    }

    /// Our table as gossip. Loopback addresses are only given to peers on this machine.
    pub fn records(&self, for_loopback_peer: bool) -> Vec<MemberRecord> {
        let addrs = |a: &[Multiaddr]| -> Vec<Bytes> {
            a.iter()
                .filter(|a| for_loopback_peer || !is_loopback(a))
                .take(MAX_ADDRS)
                .map(|a| Bytes(a.to_vec()))
                .collect()
        };
        let mut out = Vec::with_capacity(self.members.len() + 1);
        out.push(MemberRecord {
            peer: Bytes(self.me.to_bytes()),
            addrs: addrs(&self.my_addrs),
            incarnation: self.incarnation,
            heartbeat: self.heartbeat,
            usage: self.my_usage,
            left: self.leaving,
        });
        for m in self.members.values().take(MAX_MEMBERS - 1) {
            out.push(MemberRecord {
                peer: Bytes(m.id.to_bytes()),
                addrs: addrs(&m.addrs),
                incarnation: m.incarnation,
                heartbeat: m.heartbeat,
                usage: m.usage,
                left: m.left,
            });
        }
        out
    }

    /// Merges gossip. Returns the members seen for the first time (to dial them).
    pub fn merge(&mut self, records: &[MemberRecord], now: Instant) -> Vec<PeerId> {
        let mut new = Vec::new();
        for r in records.iter().take(MAX_MEMBERS) {
            let Ok(id) = PeerId::from_bytes(&r.peer.0) else {
                continue;
            };
            if id == self.me {
                continue;
            }
            let addrs: Vec<Multiaddr> = r
                .addrs
                .iter()
                .take(MAX_ADDRS)
                .filter_map(|a| Multiaddr::try_from(a.0.clone()).ok())
                .collect();
            match self.members.get_mut(&id) {
                Some(m) => {
                    if (r.incarnation, r.heartbeat) > (m.incarnation, m.heartbeat) {
                        m.incarnation = r.incarnation;
                        m.heartbeat = r.heartbeat;
                        m.usage = r.usage;
                        m.left = r.left;
                        if !addrs.is_empty() {
                            m.addrs = addrs;
                        }
                        m.last_change = now;
                        m.last_seen_unix = unix_now();
                    }
                }
                None => {
                    if r.left {
                        continue;
                    }
                    self.members.insert(
                        id,
                        Member {
                            id,
                            addrs,
                            incarnation: r.incarnation,
                            heartbeat: r.heartbeat,
                            usage: r.usage,
                            left: false,
                            last_change: now,
                            last_seen_unix: unix_now(),
                            connected: false,
                            unreachable_since: None,
                        },
                    );
                    new.push(id);
                }
            }
        }
        new
    }

    pub fn set_connected(&mut self, peer: &PeerId, connected: bool) {
        if let Some(m) = self.members.get_mut(peer) {
            m.connected = connected;
            if connected {
                m.unreachable_since = None;
            }
        }
    }

    /// We could not reach `peer` (dial or request failed).
    pub fn set_unreachable(&mut self, peer: &PeerId, now: Instant) {
        if let Some(m) = self.members.get_mut(peer)
            && !m.connected
        {
            m.unreachable_since = Some(now);
        }
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Member> {
        self.members.get(peer)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    fn fresh(&self, m: &Member, now: Instant) -> bool {
        !m.left && now.duration_since(m.last_change) < self.timing.down_after
    }

    /// What we believe about `m` now.
    pub fn liveness(&self, m: &Member, now: Instant) -> Liveness {
        if !self.fresh(m, now) {
            return Liveness::Down;
        }
        if let Some(t) = m.unreachable_since
            && !m.connected
            && now.duration_since(t) < self.timing.unreachable_backoff
        {
            return Liveness::Down;
        }
        if now.duration_since(m.last_change) < self.timing.suspect_after {
            Liveness::Up
        } else {
            Liveness::Suspect
        }
    }

    /// The ring's member set: us plus every member with a fresh heartbeat. Depends only on
    /// gossip, so it is the same on every peer.
    pub fn ring_members(&self, now: Instant) -> Vec<PeerId> {
        let mut out = vec![self.me];
        out.extend(
            self.members
                .values()
                .filter(|m| self.fresh(m, now))
                .map(|m| m.id),
        );
        out
    }

    /// Worth sending a request to right now.
    pub fn routable(&self, peer: &PeerId, now: Instant) -> bool {
        match self.members.get(peer) {
            Some(m) => self.liveness(m, now) != Liveness::Down,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: PeerId, inc: u64, hb: u64) -> MemberRecord {
        MemberRecord {
            peer: Bytes(id.to_bytes()),
            addrs: vec![Bytes(
                "/ip4/10.0.0.1/tcp/1".parse::<Multiaddr>().unwrap().to_vec(),
            )],
            incarnation: inc,
            heartbeat: hb,
            usage: Usage::default(),
            left: false,
        }
    }

    #[test]
    fn gossip_converges_and_silence_means_down() {
        let t = Timing {
            suspect_after: Duration::from_millis(100),
            down_after: Duration::from_millis(200),
            forget_after: Duration::from_millis(300),
            unreachable_backoff: Duration::from_millis(50),
        };
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut ma = Membership::new(a, t);
        let mut mb = Membership::new(b, t);
        let mut mc = Membership::new(c, t);
        let now = Instant::now();
        // a <-> b, b <-> c: a learns about c through b.
        assert_eq!(mb.merge(&ma.records(true), now), vec![a]);
        mb.merge(&mc.records(true), now);
        mc.merge(&mb.records(true), now);
        ma.merge(&mb.records(true), now);
        let mut ra = ma.ring_members(now);
        let mut rc = mc.ring_members(now);
        ra.sort();
        rc.sort();
        assert_eq!(ra, rc);
        assert_eq!(ra.len(), 3);
        // Old records never overwrite new ones.
        ma.tick(now);
        mb.merge(&ma.records(true), now);
        mb.merge(&[rec(a, 0, 0)], now);
        assert_eq!(mb.get(&a).unwrap().heartbeat, 1);
        // Silence: suspect, then down and out of the ring, then forgotten.
        let m = mb.get(&a).unwrap().clone();
        assert_eq!(
            mb.liveness(&m, now + Duration::from_millis(150)),
            Liveness::Suspect
        );
        assert_eq!(
            mb.liveness(&m, now + Duration::from_millis(250)),
            Liveness::Down
        );
        assert!(
            !mb.ring_members(now + Duration::from_millis(250))
                .contains(&a)
        );
        mb.tick(now + Duration::from_millis(600));
        assert!(mb.get(&a).is_none());
    }

    #[test]
    fn unreachable_is_local_and_leaving_is_immediate() {
        let t = Timing::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut ma = Membership::new(a, t);
        let mut mb = Membership::new(b, t);
        let now = Instant::now();
        ma.merge(&mb.records(true), now);
        ma.set_unreachable(&b, now);
        assert!(!ma.routable(&b, now));
        assert_eq!(
            ma.ring_members(now).len(),
            2,
            "unreachability never changes the ring"
        );
        assert!(ma.routable(&b, now + t.unreachable_backoff));
        mb.leave();
        ma.merge(&mb.records(true), now);
        assert_eq!(ma.ring_members(now), vec![a]);
    }

    #[test]
    fn loopback_addresses_stay_local() {
        let a = PeerId::random();
        let mut ma = Membership::new(a, Timing::default());
        ma.set_local_addrs(vec![
            "/ip4/127.0.0.1/tcp/5".parse().unwrap(),
            "/ip4/192.168.1.2/tcp/5".parse().unwrap(),
        ]);
        assert_eq!(ma.records(true)[0].addrs.len(), 2);
        assert_eq!(ma.records(false)[0].addrs.len(), 1);
        // Garbage records are skipped, not fatal.
        let mut bad = rec(PeerId::random(), 1, 1);
        bad.peer = Bytes(vec![1, 2, 3]);
        assert!(ma.merge(&[bad], Instant::now()).is_empty());
    }
}
