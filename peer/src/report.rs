//! Plain data the node reports to local clients (`distc status`, `flush`, `inspect`).
//! Serialisable both for the IPC socket and for `--json` output.

use serde::{Deserialize, Serialize};

/// One peer as `distc status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// libp2p peer id (base58).
    pub id: String,
    /// Addresses it listens on, as known here.
    pub addrs: Vec<String>,
    /// `up`, `suspect`, `down` (or `self` for the answering peer).
    pub state: String,
    /// Seconds since the epoch when it was last heard of (0 = never).
    pub last_seen: u64,
    /// Its store: entries and bytes (as last gossiped).
    pub entries: u64,
    pub bytes: u64,
    /// Share of the key space it is primary owner of, in percent (0 when not in the ring).
    pub ring_share: f64,
    /// Its weight on the ring (share ∝ weight); 0 for a client.
    pub weight: u32,
    /// `owner` or `client` (owns no range).
    pub role: String,
    /// Directly connected to the answering peer.
    pub connected: bool,
}

/// The mesh as seen by the local peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The local peer's id.
    pub id: String,
    /// distc version of the local peer.
    pub version: String,
    /// Where the local peer listens.
    pub listen: Vec<String>,
    /// Replication factor R.
    pub replication: u32,
    /// Whether the mesh is closed by a key (fingerprint shown) or open.
    pub mesh_key: Option<String>,
    /// Every known peer, the local one first.
    pub peers: Vec<PeerStatus>,
    /// Entries peers sent that were not the entry asked for (another key's, or corrupt) since
    /// the local peer started; each was refused and the next peer asked.
    pub bad_entries: u64,
    /// Whose entries the local peer accepts ([`crate::trust::TrustPolicy::describe`]).
    pub trust: String,
    /// Entries refused since the local peer started: unsigned, wrongly signed, or from a
    /// producer it does not trust.
    pub refused: crate::trust::Refusals,
    /// Addresses this peer refused or was refused by at the mesh key handshake lately, and
    /// bootstrap addresses it will not dial: why each one cannot join.
    pub rejected: Vec<RejectedPeer>,
    /// Membership traffic of the local peer (sent + received, bytes per second, over about the
    /// last ten seconds).
    #[serde(default)]
    pub membership_rate: f64,
    /// Members the local peer holds a connection to.
    #[serde(default)]
    pub connections: u64,
}

/// An address that cannot join this peer's mesh (`distc status`, "rejected").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedPeer {
    /// The address dialed, or the IP address an inbound connection came from.
    pub addr: String,
    /// The peer id, when the address named one.
    pub peer: Option<String>,
    /// `inbound` (it connected here), `dial` (this peer dialed it) or `not dialed`.
    pub direction: String,
    /// What is wrong and what to do.
    pub reason: String,
    /// Failed attempts (0 for an address not dialed).
    pub attempts: u64,
    /// When the last attempt failed (seconds since the epoch; 0 = never tried).
    pub last_seen: u64,
}

/// What `distc flush` did on one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlushedPeer {
    pub id: String,
    /// Entries and bytes removed; `None` when the peer could not be reached.
    pub removed: Option<(u64, u64)>,
    /// Why it could not be flushed.
    pub error: Option<String>,
}

/// What `distc flush` did across the mesh, the local peer first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlushReport {
    pub peers: Vec<FlushedPeer>,
}

/// One owner of a key (`distc inspect`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerInfo {
    pub id: String,
    /// `self`, `up`, `suspect` or `down`.
    pub state: String,
    /// 0 = primary, then replicas.
    pub rank: u32,
}
