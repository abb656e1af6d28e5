//! distc: a peer-to-peer compiler cache for C, C++ and Rust.
//!
//! Module map (docs/ARCHITECTURE.md has the whole picture), top to bottom:
//! - [`cli`]: the `distc` commands, one module each; they use the pipeline, never the reverse.
//! - [`pipeline`]: the cached compile of a wrapped compiler invocation (the hot path), the
//!   same for every compiler family; each family plugs in through `pipeline::Family`.
//! - `compiler`: per family (`c` for gcc/clang, `rust` for rustc) argument parsing, compiler
//!   identity, key inputs and direct mode.
//! - `key`: the language-neutral key builder, the file record with its trust rule, the
//!   manifest file both direct modes keep.
//! - `cache`: the tiered lookup local store -> local peer, the result bundle, the per-key lock,
//!   the [`stats`] counters and the ring of recent compiles `distc top` shows (`events`).
//! - `config`: defaults < config file < `DISTC_*` environment < flags.
//! - `util`: atomic writes, memo files, `flock`.
//!
//! One compile, `distc gcc -c a.c -o a.o`: `main.rs` sees a compiler in argv
//! ([`pipeline::detect`]) -> `pipeline::invoke` finds the real gcc, loads the config, opens the
//! cache -> `pipeline::c` parses the command line (`compiler::c::args`) and builds the C family
//! (compiler identity and inputs 1-6 from `compiler::c::key`, the manifest key from
//! `compiler::c::direct`) -> `Pipeline::run`: the manifest gives a result key whose headers are
//! unchanged -> `Cache::get` finds it in the local store -> the family writes `a.o`, the
//! streams are replayed, the stored status is the exit code. On a miss the key comes from the
//! preprocessor (or, outside a mesh, from the compile's own `-MD`), the compile runs under the
//! per-key lock through the `Runner`, and the result is stored, announced and recorded.
//!
//! The content-addressed store, the hash ring and the libp2p node live in the `distc-peer`
//! package; the hot path reaches a peer only through its ipc client.
mod cache;
pub mod cli;
mod compiler;
mod config;
mod key;
pub mod pipeline;
mod util;

pub use cache::stats;
