//! The rustc family: a command line parsed into a [`args::RustJob`] ([`args`]), the rustc
//! identity and the key ([`key`]), and direct mode ([`direct`]).

pub mod args;
pub mod direct;
pub mod key;
