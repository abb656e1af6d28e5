//! The report-style commands of the CLI: what they print and how they reach the cache.
//! Clap definitions stay in [`crate::cli`]; each command here takes a loaded [`Config`].
//!
//! [`Config`]: crate::config::Config

pub mod flush;
pub mod inspect;
pub mod stats;
