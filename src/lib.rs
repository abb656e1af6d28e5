//! distc: a peer-to-peer compiler cache for C, C++ and Rust.
//!
//! Module map:
//! - [`config`]: defaults < config file < `DISTC_*` environment < flags.
//! - [`cli`]: clap definitions and dispatch of the `distc` commands.
//! - [`project`]: `distc build` and `distc build-project`.
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
