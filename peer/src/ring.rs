//! The consistent-hash ring: which peers own a key.
//!
//! Every member is placed on a 64-bit circle at `vnodes` points (virtual nodes), each point the
//! first 8 bytes of `sha256(peer id bytes | vnode index)`. A key's position is the first 8 bytes
//! of the key itself (keys are already SHA-256 digests, so uniformly spread). The owners of a key
//! are the distinct members met walking clockwise from its position. The result depends only on
//! the member set and `vnodes`, so every peer that sees the same members computes the same
//! owners — no coordination needed.

use std::collections::BTreeMap;

use libp2p::PeerId;
use sha2::{Digest, Sha256};

use crate::key::Key;

/// Default number of points per member: keeps the largest/smallest share within a few percent
/// of each other for 3–20 members (see the `balance` test).
pub const DEFAULT_VNODES: usize = 256;

/// An immutable ring over a set of members. Rebuilt (cheaply) whenever membership changes.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (position, index into `members`), sorted by position then index so ties are stable.
    points: Vec<(u64, usize)>,
    /// Members sorted by peer id bytes: the canonical order every peer agrees on.
    members: Vec<PeerId>,
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
    /// Builds the ring of `members` (duplicates ignored) with `vnodes` points each (min 1).
    pub fn new(members: impl IntoIterator<Item = PeerId>, vnodes: usize) -> Ring {
        let mut members: Vec<PeerId> = members.into_iter().collect();
        members.sort_by_key(|p| p.to_bytes());
        members.dedup();
        let vnodes = vnodes.max(1);
        let mut points = Vec::with_capacity(members.len() * vnodes);
        for (i, m) in members.iter().enumerate() {
            let bytes = m.to_bytes();
            for v in 0..vnodes {
                points.push((point(&bytes, v as u32), i));
            }
        }
        points.sort_unstable();
        Ring { points, members }
    }

    /// The ring of `members`, built from this one: the points of members in both are kept,
    /// only those of new members are hashed, and the two sorted lists are merged. The result is
    /// exactly [`Ring::new`]'s, in time linear in the points instead of a hash per point and
    /// a sort (a ring of 200 members has 51 200 points, rebuilt on every membership change).
    pub fn rebuilt(&self, members: impl IntoIterator<Item = PeerId>, vnodes: usize) -> Ring {
        let vnodes = vnodes.max(1);
        if self.points.len() != self.members.len() * vnodes {
            return Ring::new(members, vnodes);
        }
        let mut keyed: Vec<(Vec<u8>, PeerId)> =
            members.into_iter().map(|p| (p.to_bytes(), p)).collect();
        keyed.sort();
        keyed.dedup();
        let new_index: std::collections::HashMap<PeerId, usize> = keyed
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (*p, i))
            .collect();
        let remap: Vec<Option<usize>> = self
            .members
            .iter()
            .map(|m| new_index.get(m).copied())
            .collect();
        // Old indices map to new ones in the same order (both lists are sorted by bytes), so
        // the kept points stay sorted by (position, index).
        let kept: Vec<(u64, usize)> = self
            .points
            .iter()
            .filter_map(|&(p, i)| remap[i].map(|j| (p, j)))
            .collect();
        let old: std::collections::HashSet<&PeerId> = self.members.iter().collect();
        let mut added: Vec<(u64, usize)> = Vec::new();
        for (i, (bytes, p)) in keyed.iter().enumerate() {
            if !old.contains(p) {
                for v in 0..vnodes {
                    added.push((point(bytes, v as u32), i));
                }
            }
        }
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
        Ring {
            points,
            members: keyed.into_iter().map(|(_, p)| p).collect(),
        }
    }

    /// The members, in canonical order.
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
        let want = r.min(self.members.len());
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
        let again = from.rebuilt(ps.clone(), DEFAULT_VNODES);
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
}
