//! distc-peer: everything a distc mesh node is.
//!
//! - [`key`]: the cache key type (SHA-256, shown as 64 hex characters).
//! - [`codec`]: the single place where values become bytes (bincode 2 + serde), bounded.
//! - [`store`]: the content-addressed local store shared by the wrapper and the peer.

pub mod codec;
pub mod daemon;
pub mod ipc;
pub mod key;
pub mod membership;
pub mod node;
pub mod protocol;
pub mod psk;
pub mod report;
pub mod ring;
pub mod store;

pub use key::Key;
