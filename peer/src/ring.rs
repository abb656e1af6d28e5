//! The consistent-hash ring: which peers own a key.
//!
//! Every member is placed on a 64-bit circle at a number of points (virtual nodes) that follows
//! its weight ([`points_for`]: `vnodes × weight / 100`, at least one; none for a client, weight
//! 0), each point the first 8 bytes of `sha256(peer id bytes | vnode index)`. A member's points
//! for a weight are a prefix of its points for any larger weight, so a weight change moves keys
//! only to or from that member. A key's position is the first 8 bytes
//! of the key itself (keys are already SHA-256 digests, so uniformly spread). The owners of a key
//! are the distinct members met walking clockwise from its position. The result depends only on
//! the member set (ids and weights, which travel in membership records) and `vnodes`, so every
//! peer that sees the same members computes the same owners — no coordination needed.

use std::collections::BTreeMap;

use libp2p::PeerId;
use sha2::{Digest, Sha256};

use crate::key::Key;

/// Default number of points per member: keeps the largest/smallest share within a few percent
/// of each other for 3–20 members (see the `balance` test).
pub const DEFAULT_VNODES: usize = 256;

/// The weight of a peer with the default store size (5 GiB): it gets exactly `vnodes` points.
pub const DEFAULT_WEIGHT: u32 = 100;

/// The largest weight (a 500 GiB store): a member has at most `100 × vnodes` points.
pub const MAX_WEIGHT: u32 = 10_000;

/// A peer's default weight from its store size: 100 per 5 GiB of `max_size`, rounded, at least
/// 1 and at most [`MAX_WEIGHT`]. So a member's share of the ring follows its capacity.
pub fn weight_for_size(max_size: u64) -> u32 {
    let unit = 5u64 << 30;
    let w = max_size
        .saturating_mul(DEFAULT_WEIGHT as u64)
        .saturating_add(unit / 2)
        / unit;
    w.clamp(1, MAX_WEIGHT as u64) as u32
}

/// How many points a member of `weight` has on a ring of `vnodes` points per default-weight
/// member: `vnodes × weight / 100` rounded, at least 1; 0 for weight 0 (a client owns nothing).
pub fn points_for(weight: u32, vnodes: usize) -> usize {
    if weight == 0 {
        return 0;
    }
    let w = weight.min(MAX_WEIGHT) as usize;
    ((vnodes.max(1) * w + DEFAULT_WEIGHT as usize / 2) / DEFAULT_WEIGHT as usize).max(1)
}

/// An immutable ring over a set of members. Rebuilt (cheaply) whenever membership changes.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (position, index into `members`), sorted by position then index so ties are stable.
    points: Vec<(u64, usize)>,
    /// Members sorted by peer id bytes: the canonical order every peer agrees on. Clients
    /// (weight 0) are members with no points.
    members: Vec<PeerId>,
    /// Each member's weight, by index into `members`.
    weights: Vec<u32>,
    /// Members with at least one point.
    owning: usize,
    /// Points per default-weight member this ring was built with.
    vnodes: usize,
}

fn point(peer: &[u8], vnode: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(peer);
    h.update(vnode.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

fn position(key: &Key) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key.0[..8]);
    u64::from_be_bytes(b)
}

impl Ring {
    /// Builds the ring of `members` (duplicates ignored), each of the default weight: `vnodes`
    /// points each (min 1).
    pub fn new(members: impl IntoIterator<Item = PeerId>, vnodes: usize) -> Ring {
        Ring::weighted(members.into_iter().map(|p| (p, DEFAULT_WEIGHT)), vnodes)
    }

    /// Builds the ring of `members` with their weights ([`points_for`]); a peer listed twice
    /// keeps its largest weight.
    pub fn weighted(members: impl IntoIterator<Item = (PeerId, u32)>, vnodes: usize) -> Ring {
        Ring::default().rebuilt(members, vnodes)
    }

    /// The ring of `members` (with weights), built from this one: the points of members in
    /// both with the same weight are kept, only the others are hashed, and the two sorted lists
    /// are merged. The result is exactly [`Ring::weighted`]'s, in time linear in the points
    /// instead of a hash per point and a sort (a ring of 200 members has 25 600 points at the
    /// default 128 virtual nodes, rebuilt on every membership change).
    pub fn rebuilt(&self, members: impl IntoIterator<Item = (PeerId, u32)>, vnodes: usize) -> Ring {
        let vnodes = vnodes.max(1);
        let mut keyed: Vec<(Vec<u8>, PeerId, u32)> = members
            .into_iter()
            .map(|(p, w)| (p.to_bytes(), p, w.min(MAX_WEIGHT)))
            .collect();
        // Sorted by bytes, then the largest weight first, which dedup keeps.
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)));
        keyed.dedup_by(|a, b| a.0 == b.0);
        let same_vnodes = self.vnodes == vnodes;
        let old: std::collections::HashMap<&PeerId, (usize, u32)> = self
            .members
            .iter()
            .zip(&self.weights)
            .enumerate()
            .map(|(i, (p, w))| (p, (i, *w)))
            .collect();
        // Old index -> new index, for members whose points are kept.
        let mut remap: Vec<Option<usize>> = vec![None; self.members.len()];
        let mut added: Vec<(u64, usize)> = Vec::new();
        for (i, (bytes, p, w)) in keyed.iter().enumerate() {
            match old.get(p) {
                Some(&(j, ow)) if same_vnodes && ow == *w => remap[j] = Some(i),
                _ => {
                    for v in 0..points_for(*w, vnodes) {
                        added.push((point(bytes, v as u32), i));
                    }
                }
            }
        }
        // Old indices map to new ones in the same order (both lists are sorted by bytes), so
        // the kept points stay sorted by (position, index).
        let kept: Vec<(u64, usize)> = self
            .points
            .iter()
            .filter_map(|&(p, i)| remap[i].map(|j| (p, j)))
            .collect();
        added.sort_unstable();
        let mut points = Vec::with_capacity(kept.len() + added.len());
        let (mut a, mut b) = (kept.into_iter().peekable(), added.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => {
                    if x <= y {
                        a.next()
                    } else {
                        b.next()
                    }
                }
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            points.extend(next);
        }
        let owning = keyed.iter().filter(|k| k.2 > 0).count();
        Ring {
            points,
            weights: keyed.iter().map(|k| k.2).collect(),
            members: keyed.into_iter().map(|k| k.1).collect(),
            owning,
            vnodes,
        }
    }

    /// This ring without `peer` (the ring the others will derive once it has left).
    pub fn without(&self, peer: &PeerId) -> Ring {
        let rest: Vec<(PeerId, u32)> = self
            .members
            .iter()
            .zip(&self.weights)
            .filter(|(p, _)| *p != peer)
            .map(|(p, w)| (*p, *w))
            .collect();
        self.rebuilt(rest, self.vnodes)
    }

    /// A member's weight (0 for a client), `None` if it is not a member.
    pub fn weight(&self, peer: &PeerId) -> Option<u32> {
        self.members
            .iter()
            .position(|m| m == peer)
            .map(|i| self.weights[i])
    }

    /// Members that own part of the key space (weight above 0).
    pub fn owning(&self) -> usize {
        self.owning
    }

    /// The members (clients too), in canonical order.
    pub fn members(&self) -> &[PeerId] {
        &self.members
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.members.contains(peer)
    }

    /// The first `r` distinct members clockwise from `key`: the primary owner first, then the
    /// replicas. `owners(key, usize::MAX)` is every member in the key's preference order.
    pub fn owners(&self, key: &Key, r: usize) -> Vec<PeerId> {
        let want = r.min(self.owning);
        let mut out: Vec<PeerId> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let pos = position(key);
        let start = self.points.partition_point(|&(p, _)| p < pos);
        let n = self.points.len();
        let mut seen = vec![false; self.members.len()];
        for i in 0..n {
            let (_, m) = self.points[(start + i) % n];
            if !seen[m] {
                seen[m] = true;
                out.push(self.members[m]);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// Fraction of the key space for which each member is the primary owner (sums to 1).
    pub fn shares(&self) -> BTreeMap<PeerId, f64> {
        let mut out: BTreeMap<PeerId, f64> = self.members.iter().map(|m| (*m, 0.0)).collect();
        let n = self.points.len();
        if n == 0 {
            return out;
        }
        let full = u64::MAX as f64 + 1.0;
        for i in 0..n {
            // The arc (prev, this] belongs to this point's member.
            let (p, m) = self.points[i];
            let prev = if i == 0 {
                self.points[n - 1].0
            } else {
                self.points[i - 1].0
            };
            let arc = p.wrapping_sub(prev) as f64;
            let arc = if n == 1 { full } else { arc };
            if let Some(s) = out.get_mut(&self.members[m]) {
                *s += arc / full;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn keys(n: usize) -> Vec<Key> {
        (0..n as u64)
            .map(|i| Key::digest(&i.to_le_bytes()))
            .collect()
    }

    #[test]
    fn deterministic_and_order_independent() {
        let ps = peers(7);
        let mut rev = ps.clone();
        rev.reverse();
        let a = Ring::new(ps.clone(), DEFAULT_VNODES);
        let b = Ring::new(rev, DEFAULT_VNODES);
        for k in keys(2000) {
            let oa = a.owners(&k, 3);
            assert_eq!(oa, b.owners(&k, 3));
            assert_eq!(oa.len(), 3);
            let mut d = oa.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "owners must be distinct");
            // The R owners are a prefix of the full preference order.
            assert_eq!(&a.owners(&k, usize::MAX)[..3], &oa[..]);
        }
    }

    #[test]
    fn small_rings() {
        let k = Key::digest(b"x");
        assert!(Ring::new(vec![], 16).owners(&k, 2).is_empty());
        let p = PeerId::random();
        let r = Ring::new(vec![p, p], 16);
        assert_eq!(r.owners(&k, 2), vec![p]);
        let s = r.shares();
        assert!((s[&p] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn balance() {
        for n in [3usize, 10, 20] {
            let ps = peers(n);
            let ring = Ring::new(ps.clone(), DEFAULT_VNODES);
            let total = 60_000;
            let mut counts: BTreeMap<PeerId, usize> = BTreeMap::new();
            for k in keys(total) {
                *counts.entry(ring.owners(&k, 1)[0]).or_default() += 1;
            }
            let ideal = total as f64 / n as f64;
            let max = *counts.values().max().unwrap_or(&0) as f64;
            let min = ps
                .iter()
                .map(|p| *counts.get(p).unwrap_or(&0))
                .min()
                .unwrap_or(0) as f64;
            let shares = ring.shares();
            let sum: f64 = shares.values().sum();
            eprintln!(
                "ring balance n={n} vnodes={DEFAULT_VNODES}: max/ideal={:.3} min/ideal={:.3} \
                 share sum={sum:.6}",
                max / ideal,
                min / ideal
            );
            assert!((sum - 1.0).abs() < 1e-6);
            assert!(max / ideal < 1.35, "max share too high: {}", max / ideal);
            assert!(min / ideal > 0.65, "min share too low: {}", min / ideal);
        }
    }

    #[test]
    fn join_moves_about_one_nth() {
        let n = 9;
        let ps = peers(n);
        let before = Ring::new(ps.clone(), DEFAULT_VNODES);
        // Rebuilding from another ring gives exactly the ring built from scratch.
        let mut other = ps.clone();
        other.truncate(ps.len() / 2);
        other.push(PeerId::random());
        let from = Ring::new(other, DEFAULT_VNODES);
        let again = from.rebuilt(ps.iter().map(|p| (*p, DEFAULT_WEIGHT)), DEFAULT_VNODES);
        assert_eq!(again.points, before.points);
        assert_eq!(again.members, before.members);
        let newcomer = PeerId::random();
        let mut grown = ps.clone();
        grown.push(newcomer);
        let after = Ring::new(grown, DEFAULT_VNODES);
        let ks = keys(30_000);
        let mut moved = 0usize;
        for k in &ks {
            let a = before.owners(k, 1)[0];
            let b = after.owners(k, 1)[0];
            if a != b {
                moved += 1;
                assert_eq!(b, newcomer, "a key may only move to the newcomer");
            }
        }
        let frac = moved as f64 / ks.len() as f64;
        eprintln!(
            "join of peer {} moved {:.3} of keys (ideal {:.3})",
            n + 1,
            frac,
            1.0 / (n + 1) as f64
        );
        assert!(frac > 0.05 && frac < 0.15, "moved fraction {frac}");
    }

    #[test]
    fn default_weight_follows_the_store_size() {
        assert_eq!(weight_for_size(5 << 30), DEFAULT_WEIGHT);
        assert_eq!(weight_for_size(10 << 30), 200);
        assert_eq!(weight_for_size(1 << 30), 20);
        assert_eq!(
            weight_for_size(1 << 20),
            1,
            "never 0: only a client owns nothing"
        );
        assert_eq!(weight_for_size(u64::MAX), MAX_WEIGHT);
        assert_eq!(points_for(DEFAULT_WEIGHT, 128), 128);
        assert_eq!(points_for(50, 128), 64);
        assert_eq!(points_for(1, 128), 1);
        assert_eq!(points_for(0, 128), 0);
    }

    /// Key counts per member over `n` keys, as primary owner.
    fn primaries(ring: &Ring, n: usize) -> BTreeMap<PeerId, usize> {
        let mut counts = BTreeMap::new();
        for k in keys(n) {
            *counts.entry(ring.owners(&k, 1)[0]).or_default() += 1;
        }
        counts
    }

    #[test]
    fn share_follows_weight_and_a_client_owns_nothing() {
        // 1024 points per weight 100: a member's share then strays by about 3 % (1/√points)
        // from its weight's, so the 20 % bound below never fails by chance.
        let ps = peers(4);
        let weights = [100u32, 200, 400, 0];
        let ring = Ring::weighted(ps.iter().copied().zip(weights), 1024);
        assert_eq!(ring.len(), 4, "a client is a member");
        assert_eq!(ring.owning(), 3);
        assert_eq!(ring.weight(&ps[3]), Some(0));
        let total = 70_000;
        let counts = primaries(&ring, total);
        let shares = ring.shares();
        assert_eq!(shares[&ps[3]], 0.0);
        assert!(
            !counts.contains_key(&ps[3]),
            "the client is primary for nothing"
        );
        for (p, w) in ps.iter().zip(weights).take(3) {
            let ideal = w as f64 / 700.0;
            let got = counts[p] as f64 / total as f64;
            eprintln!(
                "weight {w}: share {got:.3} (ideal {ideal:.3}, ring {:.3})",
                shares[p]
            );
            assert!(
                (got / ideal - 1.0).abs() < 0.2,
                "weight {w}: {got} vs {ideal}"
            );
            assert!((shares[p] / ideal - 1.0).abs() < 0.2);
        }
        // Nor is it ever a replica: R owners are found among the owning members only.
        for k in keys(5000) {
            let o = ring.owners(&k, usize::MAX);
            assert_eq!(o.len(), 3);
            assert!(!o.contains(&ps[3]));
        }
        // A mesh of clients only has no owners at all.
        let clients = Ring::weighted(ps.iter().map(|p| (*p, 0)), 128);
        assert!(clients.owners(&Key::digest(b"k"), 2).is_empty());
    }

    #[test]
    fn a_weight_change_moves_keys_only_to_or_from_that_member() {
        let ps = peers(5);
        let before = Ring::weighted(ps.iter().map(|p| (*p, DEFAULT_WEIGHT)), 1024);
        let grown: Vec<(PeerId, u32)> = ps
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, if i == 0 { 300 } else { DEFAULT_WEIGHT }))
            .collect();
        let after = before.rebuilt(grown.clone(), 1024);
        // Rebuilt incrementally, it is the ring built from scratch.
        let fresh = Ring::weighted(grown, 1024);
        assert_eq!(after.points, fresh.points);
        assert_eq!(after.weights, fresh.weights);
        let ks = keys(30_000);
        let mut moved = 0usize;
        for k in &ks {
            let (a, b) = (before.owners(k, 1)[0], after.owners(k, 1)[0]);
            if a != b {
                moved += 1;
                assert_eq!(b, ps[0], "a key may only move to the member that grew");
            }
        }
        // Ideal: its share goes from 1/5 to 3/7, so 3/7 - 1/5 = 0.229 of the keys move.
        let frac = moved as f64 / ks.len() as f64;
        eprintln!("weight 100 -> 300 of one of 5 moved {frac:.3} of keys (ideal 0.229)");
        assert!(frac > 0.15 && frac < 0.31, "moved fraction {frac}");
        // Turning it into a client hands all of its keys to the others, and nothing else.
        let client = after.rebuilt(
            ps.iter()
                .enumerate()
                .map(|(i, p)| (*p, (i > 0) as u32 * 100)),
            1024,
        );
        for k in &ks {
            let (a, b) = (after.owners(k, 1)[0], client.owners(k, 1)[0]);
            assert_ne!(b, ps[0]);
            if a != ps[0] {
                assert_eq!(a, b, "a key of another member moved");
            }
        }
    }
}
