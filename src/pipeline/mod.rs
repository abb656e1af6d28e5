//! The cached compile: a wrapped compiler invocation, from argv to exit code.
//!
//! [`c`] holds the gcc/clang flow and the entry point ([`detect`], [`main`]); [`rust`] the rustc
//! flow. Every cache fault degrades to running the real compiler.

pub mod c;
pub mod rust;

pub use c::{detect, main};

/// Environment variable naming a file in which the wrapper writes the outcome of one compile:
/// a single line `hit`, `remote-hit`, `miss`, `uncacheable <reason>` or `error <text>`.
pub const RESULT_FILE_ENV: &str = "DISTC_RESULT_FILE";
