//! distc: a peer-to-peer compiler cache for C, C++ and Rust.
//!
//! Module map (docs/ARCHITECTURE.md has the whole picture):
//! - [`wrapper`]: the C/C++ hot path of a wrapped compile; [`rust_wrapper`] the rustc one.
//! - [`compiler`]: argument parsing per compiler family into a job or a reason not to cache.
//! - [`compiler_id`], [`fingerprint`], [`rust_key`]: what goes into a key, numbered and versioned.
//! - [`direct`]: direct mode (manifests, no preprocessor on a hit) and depend mode.
//! - [`bundle`]: a result (outputs, stdout, stderr, exit status); [`cache`]: the tiered lookup
//!   local store -> local peer -> compile -> store -> announce; [`stats`]: counters.
//! - [`config`]: defaults < config file < `DISTC_*` environment < flags.
//! - [`cli`], [`commands`], [`mesh_cmd`]: the `distc` commands; [`project`], [`project_rust`]:
//!   `distc build` and `distc build-project`.
//!
//! The content-addressed store, the hash ring and the libp2p node live in the `distc-peer`
//! package.
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod compiler;
pub mod compiler_id;
pub mod config;
pub mod direct;
pub mod fingerprint;
pub mod mesh_cmd;
pub mod project;
pub mod project_rust;
pub mod rust_direct;
pub mod rust_key;
pub mod rust_wrapper;
pub mod stats;
pub mod wrapper;
