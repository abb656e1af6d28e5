//! distc-peer: everything a distc mesh node is.
//!
//! - [`key`]: the cache key type (SHA-256, shown as 64 hex characters).
//! - [`codec`]: the single place where values become bytes (bincode 2 + serde), bounded.
//! - [`store`]: the content-addressed local store shared by the wrapper and the peer.
//! - [`ring`]: consistent hashing with virtual nodes; `owners(key, R)`.
//! - [`membership`]: the member table, merged from gossip; liveness (up/suspect/down).
//! - [`datagram`]: membership packets over UDP, signed by their sender and, in a closed mesh,
//!   sealed with the mesh key.
//! - [`protocol`]: peer-to-peer wire messages and their bounded request-response codec.
//! - [`frame`]: length-prefixed framing, the one home of every length on the wire.
//! - [`handshake`]: why a connection failed: unreachable, not answering, or refused at the mesh
//!   key handshake (the table `distc status` shows as `rejected`).
//! - [`node`]: the libp2p node as an actor (cloneable `Node` handle + `EventLoop`): the
//!   mechanism — one request to one peer, and the latest view of members and ring.
//! - [`mesh`]: the policy on top: get from owners, replicate, repair, the handoff of a
//!   graceful leave, flush, inbound answers.
//! - [`transfer`]: transfer timeouts from entry size and measured throughput per peer.
//! - [`metrics`]: the peer's counters and their Prometheus exposition (`--metrics`).
//! - [`ipc`]: the local socket (`$DISTC_DIR/peer.sock`) and the sync `IpcClient` the wrapper uses.
//! - [`daemon`]: `distc peer` (lock, identity, trust rules, IPC server) and auto-start.
//! - [`psk`]: the mesh key (swarm.key format) and join tokens.
//! - [`report`]: what `status`, `flush` and `inspect` receive from the peer.
//! - [`offload`]: compiles on idle peers — the `/distc/compile/1.0.0` protocol, the
//!   allow-list of options, and the serving side.
//! - [`sandbox`]: where a guest's compile runs (bubblewrap, resource limits).
//! - [`slots`]: local compile slots (`compile.slots`) and the slot adverts members gossip.
//! - [`toolchain`]: a compiler's identity as remote compiles match it, and this machine's
//!   compilers.
//! - [`trust`]: entry signatures (the producer's identity) and the policy of whose entries
//!   this machine accepts.

pub mod codec;
pub mod daemon;
pub mod datagram;
pub mod frame;
pub mod handshake;
pub mod ipc;
pub mod key;
pub mod lockfile;
pub mod membership;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod offload;
pub mod protocol;
pub mod psk;
pub mod report;
pub mod ring;
pub mod sandbox;
pub mod slots;
pub mod store;
pub mod swim;
pub mod toolchain;
pub mod transfer;
pub mod trust;

pub use key::Key;
