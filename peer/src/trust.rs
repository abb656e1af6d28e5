//! Who made an entry, and whether this machine takes it: signatures and the trust policy.
//!
//! The producer of an entry is the machine whose wrapper ran the compiler. A wrapper stores its
//! result unsigned (the hot path gets no signing and no round trip); the machine's peer signs it
//! with its libp2p identity (ed25519, `$DISTC_DIR/peer.key`) the first time it sends it to the
//! mesh ([`Trust::outgoing`]): over the cache key, the entry digest and the producer's public
//! key ([`crate::store::signing_message`]). An entry that crossed the network keeps that
//! signature wherever it goes — replicas, repair handoffs, a wrapper's local copy — so a peer
//! can pass an entry on but cannot change what it holds or claim another origin.
//!
//! Every entry a peer receives ([`Trust::incoming`]) must be signed, its signature must verify
//! for the producer key it names (the producer's peer id is derived from that key, so the two
//! cannot disagree), and the producer must be one this machine trusts ([`TrustPolicy`]). Refused
//! entries are counted by reason ([`Refusals`]) and the next peer is asked.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use libp2p::PeerId;
use libp2p::identity::{self, ed25519};
use serde::{Deserialize, Serialize};

use crate::key::Key;
use crate::store::{self, Provenance, Store, StoreError};

/// Whose entries this machine accepts from the mesh. Entries made on this machine are always
/// accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustPolicy {
    /// `None`: any member of the mesh (`trust = "mesh"`); `Some(ids)`: only these producers.
    pub only: Option<Vec<String>>,
    /// Producers refused whatever `only` says (`distc mesh distrust`).
    pub distrust: Vec<String>,
}

impl TrustPolicy {
    /// The policy in one line, as `distc status` shows it.
    pub fn describe(&self) -> String {
        let mut s = match &self.only {
            None => "mesh (entries from any member)".to_string(),
            Some(ids) if ids.is_empty() => "only this machine's own entries".to_string(),
            Some(ids) => format!("only {}", ids.join(", ")),
        };
        if !self.distrust.is_empty() {
            s.push_str(&format!("; distrusted: {}", self.distrust.join(", ")));
        }
        s
    }
}

/// A policy with its peer ids parsed, for checks on every received entry.
#[derive(Debug, Clone, Default)]
struct Parsed {
    only: Option<BTreeSet<PeerId>>,
    distrust: BTreeSet<PeerId>,
}

/// A peer id in a policy that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a peer id (distc status shows each peer's id, e.g. 12D3KooW…)")]
pub struct BadPeerId(pub String);

/// Parses a peer id as `distc status` prints it.
pub fn parse_peer_id(s: &str) -> Result<PeerId, BadPeerId> {
    s.trim().parse().map_err(|_| BadPeerId(s.to_string()))
}

impl Parsed {
    fn new(p: &TrustPolicy) -> Result<Parsed, BadPeerId> {
        let set = |ids: &[String]| ids.iter().map(|s| parse_peer_id(s)).collect();
        Ok(Parsed {
            only: p.only.as_deref().map(set).transpose()?,
            distrust: set(&p.distrust)?,
        })
    }

    fn accepts(&self, producer: &PeerId) -> bool {
        !self.distrust.contains(producer) && self.only.as_ref().is_none_or(|o| o.contains(producer))
    }
}

/// Why a received entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("entry is not signed by its producer")]
    Unsigned,
    #[error("entry signature does not verify: {0}")]
    BadSignature(String),
    #[error("entry produced by {0}, which this machine does not trust")]
    Untrusted(PeerId),
}

/// Received entries refused since the peer started, by reason (`distc status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    pub unsigned: u64,
    pub bad_signature: u64,
    pub untrusted: u64,
}

/// The producer of a signed entry, verified: its peer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer(pub PeerId);

/// The peer id of an ed25519 public key as an entry names it (`None`: not a valid key).
pub fn producer_id(public: &[u8; 32]) -> Option<PeerId> {
    let pk = ed25519::PublicKey::try_from_bytes(public).ok()?;
    Some(identity::PublicKey::from(pk).to_peer_id())
}

/// Who produced an entry, as its header says, without checking the signature (the receiving
/// peer did): `None` for an entry made on this machine. For reports (`inspect`, mismatch
/// warnings).
pub fn claimed_producer(entry: &[u8]) -> Option<PeerId> {
    match Store::provenance(entry).ok()? {
        Provenance::Local => None,
        Provenance::Signed { producer, .. } => producer_id(&producer),
    }
}

/// Checks the signature of an entry whose digest [`Store::verify_raw`] has checked; returns
/// its producer.
pub fn verify_signature(entry: &[u8], key: &Key) -> Result<PeerId, Refusal> {
    let bad = |e: StoreError| Refusal::BadSignature(e.to_string());
    let (producer, signature) = match Store::provenance(entry).map_err(bad)? {
        Provenance::Local => return Err(Refusal::Unsigned),
        Provenance::Signed {
            producer,
            signature,
        } => (producer, signature),
    };
    let (named, digest) = Store::header_key_digest(entry).map_err(bad)?;
    if named != *key {
        return Err(Refusal::BadSignature(format!(
            "entry names key {named}, asked for {key}"
        )));
    }
    let pk = ed25519::PublicKey::try_from_bytes(&producer)
        .map_err(|e| Refusal::BadSignature(format!("producer key: {e}")))?;
    if !pk.verify(&store::signing_message(key, &digest, &producer), &signature) {
        return Err(Refusal::BadSignature(
            "signature does not match the key, digest and producer".into(),
        ));
    }
    Ok(identity::PublicKey::from(pk).to_peer_id())
}

/// This peer's signing identity, its policy and the refusal counters; shared by the node's
/// handle, its event loop and the IPC handler.
pub struct Trust {
    keypair: ed25519::Keypair,
    public: [u8; 32],
    me: PeerId,
    policy: RwLock<(TrustPolicy, Parsed)>,
    unsigned: AtomicU64,
    bad_signature: AtomicU64,
    untrusted: AtomicU64,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("me", &self.me).finish()
    }
}

/// The identity cannot sign entries.
#[derive(Debug, thiserror::Error)]
#[error("the peer identity is not an ed25519 key, which distc signs entries with")]
pub struct NotEd25519;

impl Trust {
    /// Signing with `keypair` (the peer's identity), accepting what `policy` allows.
    pub fn new(keypair: &identity::Keypair, policy: TrustPolicy) -> Result<Trust, TrustError> {
        let keypair = keypair
            .clone()
            .try_into_ed25519()
            .map_err(|_| TrustError::NotEd25519(NotEd25519))?;
        let public = keypair.public().to_bytes();
        let me = identity::PublicKey::from(keypair.public()).to_peer_id();
        let parsed = Parsed::new(&policy)?;
        Ok(Trust {
            keypair,
            public,
            me,
            policy: RwLock::new((policy, parsed)),
            unsigned: AtomicU64::new(0),
            bad_signature: AtomicU64::new(0),
            untrusted: AtomicU64::new(0),
        })
    }

    /// A producer with a fresh identity that is kept nowhere (tests and benchmarks that need
    /// another machine's signed entries).
    pub fn with_new_identity(policy: TrustPolicy) -> Result<Trust, TrustError> {
        Trust::new(&identity::Keypair::generate_ed25519(), policy)
    }

    /// This peer's id (the producer id of the entries it signs).
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// The policy in force.
    pub fn policy(&self) -> TrustPolicy {
        self.policy.read().map(|p| p.0.clone()).unwrap_or_default()
    }

    /// Replaces the policy (`distc mesh trust|distrust` tell the running peer).
    pub fn set_policy(&self, policy: TrustPolicy) -> Result<(), BadPeerId> {
        let parsed = Parsed::new(&policy)?;
        if let Ok(mut p) = self.policy.write() {
            *p = (policy, parsed);
        }
        Ok(())
    }

    /// Whether entries of `producer` are accepted here (this peer's own always are).
    pub fn accepts(&self, producer: &PeerId) -> bool {
        *producer == self.me || self.policy.read().is_ok_and(|p| p.1.accepts(producer))
    }

    /// Refusals so far.
    pub fn refusals(&self) -> Refusals {
        Refusals {
            unsigned: self.unsigned.load(Ordering::Relaxed),
            bad_signature: self.bad_signature.load(Ordering::Relaxed),
            untrusted: self.untrusted.load(Ordering::Relaxed),
        }
    }

    fn count(&self, r: &Refusal) {
        let c = match r {
            Refusal::Unsigned => &self.unsigned,
            Refusal::BadSignature(_) => &self.bad_signature,
            Refusal::Untrusted(_) => &self.untrusted,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The check of an entry received from another peer whose digest and key
    /// [`Store::verify_raw`] has checked: signed, signature valid, producer trusted. A refusal
    /// is counted.
    pub fn incoming(&self, entry: &[u8], key: &Key) -> Result<PeerId, Refusal> {
        let r = verify_signature(entry, key).and_then(|p| {
            if self.accepts(&p) {
                Ok(p)
            } else {
                Err(Refusal::Untrusted(p))
            }
        });
        if let Err(e) = &r {
            self.count(e);
        }
        r
    }

    /// An entry of the local store as it leaves this peer: one made here is signed now (this
    /// peer is its producer); one received keeps its producer's signature, unless that producer
    /// is no longer trusted (then `Err`: it is not passed on).
    pub fn outgoing(&self, entry: Vec<u8>, key: &Key) -> Result<Vec<u8>, OutgoingError> {
        match Store::provenance(&entry)? {
            Provenance::Local => {
                // Re-digested with BLAKE3 (what a signature may cover) and compressed (large
                // payloads are kept uncompressed on this machine only).
                Ok(Store::signed(&entry, key, &self.public, |message| {
                    let mut signature = [0u8; 64];
                    signature.copy_from_slice(&self.keypair.sign(message));
                    signature
                })?)
            }
            Provenance::Signed { producer, .. } => match producer_id(&producer) {
                // Compressed if a peer sent it with its payload as stored (the signature covers
                // the payload, not its encoding).
                Some(p) if self.accepts(&p) => Ok(Store::compressed(entry)?),
                Some(p) => Err(OutgoingError::Untrusted(p)),
                None => Err(OutgoingError::Store(StoreError::Invalid(
                    "producer key is not an ed25519 key".into(),
                ))),
            },
        }
    }

    /// Removes from `store` every entry whose producer is not accepted now (after a distrust,
    /// or at start under a stricter policy). Reads only headers. Returns how many went.
    pub fn purge(&self, store: &Store) -> Result<u64, StoreError> {
        purge_with(store, |p| self.accepts(p))
    }
}

/// Removes from `store` every signed entry whose producer `policy` refuses, when no peer runs
/// to do it ([`Trust::purge`]).
pub fn purge_policy(store: &Store, policy: &TrustPolicy) -> Result<u64, PurgeError> {
    let parsed = Parsed::new(policy)?;
    Ok(purge_with(store, |p| parsed.accepts(p))?)
}

/// Why [`purge_policy`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    BadPeerId(#[from] BadPeerId),
}

/// Removes from `store` every signed entry whose producer `keep` refuses (headers only).
pub fn purge_with(store: &Store, keep: impl Fn(&PeerId) -> bool) -> Result<u64, StoreError> {
    let mut removed = 0;
    for key in store.keys()? {
        let Ok(Some(head)) = store.read_header(&key) else {
            continue;
        };
        if let Ok(Provenance::Signed { producer, .. }) = Store::provenance(&head) {
            let gone = producer_id(&producer).is_none_or(|p| !keep(&p));
            if gone && store.remove(&key)? {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Why a [`Trust`] cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    NotEd25519(#[from] NotEd25519),
    #[error("trust policy: {0}")]
    BadPeerId(#[from] BadPeerId),
}

/// Why a stored entry is not sent.
#[derive(Debug, thiserror::Error)]
pub enum OutgoingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("entry produced by {0}, which this machine no longer trusts")]
    Untrusted(PeerId),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(policy: TrustPolicy) -> Trust {
        Trust::new(&identity::Keypair::generate_ed25519(), policy).unwrap()
    }

    #[test]
    fn a_signed_entry_verifies_and_names_its_producer() {
        let (a, b) = (trust(TrustPolicy::default()), trust(TrustPolicy::default()));
        let k = Key::digest(b"k");
        let local = Store::encode_entry(&k, b"object").unwrap();
        assert_eq!(b.incoming(&local, &k), Err(Refusal::Unsigned));
        let signed = a.outgoing(local, &k).unwrap();
        assert_eq!(Store::verify_raw(&signed, &k, 1 << 20).unwrap(), b"object");
        assert_eq!(b.incoming(&signed, &k), Ok(a.me()));
        assert_eq!(claimed_producer(&signed), Some(a.me()));
        // Passed on, it keeps its producer.
        assert_eq!(b.outgoing(signed.clone(), &k).unwrap(), signed);
        assert_eq!(b.refusals().unsigned, 1);
    }

    /// An entry received with its large payload as stored leaves this peer compressed, its
    /// producer's signature intact.
    #[test]
    fn a_passed_on_entry_leaves_compressed_and_keeps_its_signature() {
        let (a, b, c) = (
            trust(TrustPolicy::default()),
            trust(TrustPolicy::default()),
            trust(TrustPolicy::default()),
        );
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store"), 1 << 30).unwrap();
        let k = Key::digest(b"large");
        let payload: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        s.put(&k, &payload).unwrap();
        let stored = s.get_raw(&k).unwrap().unwrap();
        assert!(stored.len() > payload.len());
        // Signed by A, its payload as stored, as a peer that does not compress would send it.
        let signed = Store::with_stored_body(&a.outgoing(stored, &k).unwrap(), &k);
        assert!(signed.len() > payload.len());
        assert_eq!(b.incoming(&signed, &k), Ok(a.me()));
        let sent = b.outgoing(signed.clone(), &k).unwrap();
        assert!(sent.len() < signed.len() / 4, "{} bytes", sent.len());
        assert_eq!(c.incoming(&sent, &k), Ok(a.me()));
        assert_eq!(Store::verify_raw(&sent, &k, u64::MAX).unwrap(), payload);
    }

    #[test]
    fn a_forged_origin_or_a_moved_entry_is_refused() {
        let (a, m, v) = (
            trust(TrustPolicy::default()),
            trust(TrustPolicy::default()),
            trust(TrustPolicy::default()),
        );
        let k = Key::digest(b"k");
        let signed = a
            .outgoing(Store::encode_entry(&k, b"object").unwrap(), &k)
            .unwrap();
        // M swaps in its own public key but keeps A's signature.
        let mut forged = signed.clone();
        forged[store::SIGNED_HEADER_LEN - 96..store::SIGNED_HEADER_LEN - 64]
            .copy_from_slice(&m.public);
        assert!(matches!(
            v.incoming(&forged, &k),
            Err(Refusal::BadSignature(_))
        ));
        // A's signed entry re-encoded under another key (its digest recomputed) keeps a
        // signature that is not for that key.
        let k2 = Key::digest(b"victim");
        let moved_local = Store::encode_entry(&k2, b"object").unwrap();
        let Provenance::Signed {
            producer,
            signature,
        } = Store::provenance(&signed).unwrap()
        else {
            panic!("not signed")
        };
        let moved = Store::signed(&moved_local, &k2, &producer, |_| signature).unwrap();
        assert!(Store::verify_raw(&moved, &k2, 1 << 20).is_ok());
        assert!(matches!(
            v.incoming(&moved, &k2),
            Err(Refusal::BadSignature(_))
        ));
        assert_eq!(v.refusals().bad_signature, 2);
    }

    #[test]
    fn the_policy_decides_whose_entries_are_taken() {
        let (a, b) = (trust(TrustPolicy::default()), trust(TrustPolicy::default()));
        let k = Key::digest(b"k");
        let from_a = a
            .outgoing(Store::encode_entry(&k, b"o").unwrap(), &k)
            .unwrap();
        let only_b = trust(TrustPolicy {
            only: Some(vec![b.me().to_string()]),
            distrust: vec![],
        });
        assert_eq!(
            only_b.incoming(&from_a, &k),
            Err(Refusal::Untrusted(a.me()))
        );
        let v = trust(TrustPolicy::default());
        assert!(v.incoming(&from_a, &k).is_ok());
        v.set_policy(TrustPolicy {
            only: None,
            distrust: vec![a.me().to_string()],
        })
        .unwrap();
        assert_eq!(v.incoming(&from_a, &k), Err(Refusal::Untrusted(a.me())));
        assert!(matches!(
            v.outgoing(from_a.clone(), &k),
            Err(OutgoingError::Untrusted(_))
        ));
        // Purging drops A's entry and keeps this machine's own.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 30).unwrap();
        s.put_raw(&k, &from_a).unwrap();
        let mine = Key::digest(b"mine");
        s.put(&mine, b"m").unwrap();
        assert_eq!(v.purge(&s).unwrap(), 1);
        assert!(!s.contains(&k) && s.contains(&mine));
        assert!(
            TrustPolicy {
                only: Some(vec!["nope".into()]),
                distrust: vec![]
            }
            .describe()
            .contains("nope")
        );
        assert!(
            v.set_policy(TrustPolicy {
                only: Some(vec!["nope".into()]),
                distrust: vec![]
            })
            .is_err()
        );
    }
}
