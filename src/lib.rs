//! distc: a peer-to-peer compiler cache for C, C++ and Rust.
//!
//! Module map (docs/ARCHITECTURE.md has the whole picture):
//! - [`pipeline`]: the cached compile of a wrapped compiler invocation (the hot path).
//! - `compiler`: per family (`c` for gcc/clang, `rust` for rustc) argument parsing, compiler
//!   identity, key inputs and direct mode.
//! - `cache`: the tiered lookup local store -> local peer, the result bundle, the per-key lock,
//!   the [`stats`] counters and the ring of recent compiles `distc top` shows (`events`).
//! - `config`: defaults < config file < `DISTC_*` environment < flags.
//! - [`cli`]: the `distc` commands, one module each; they use the pipeline, never the reverse.
//!
//! The content-addressed store, the hash ring and the libp2p node live in the `distc-peer`
//! package.
mod cache;
pub mod cli;
mod compiler;
mod config;
mod key;
pub mod pipeline;
mod util;

pub use cache::stats;
