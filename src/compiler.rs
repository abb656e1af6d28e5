//! Compiler families: which family a program name belongs to, and each family's parsing,
//! identity, key inputs and direct mode ([`c`] for gcc/clang, [`rust`] for rustc). Everything
//! here is about what a compile reads and writes; none of it touches the cache.

pub mod c;
pub mod rust;

use std::ffi::OsStr;

/// The compiler family named by a program name (`gcc`, `x86_64-linux-gnu-g++-12`, `rustc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gcc,
    Rustc,
}

/// Classify a compiler program name (basename, no directory).
pub fn family_of(name: &OsStr) -> Option<Family> {
    let name = name.to_str()?;
    // Strip a version suffix: `gcc-12`, `clang-16`, `clang++-18.1`.
    let base = match name.rfind('-') {
        Some(i)
            if i + 1 < name.len()
                && name[i + 1..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            &name[..i]
        }
        _ => name,
    };
    // clippy-driver: `cargo clippy` runs `distc clippy-driver rustc ARGS…` for workspace
    // members (RUSTC_WORKSPACE_WRAPPER); the Rust wrapper passes it through.
    if base == "rustc" || base == "clippy-driver" {
        return Some(Family::Rustc);
    }
    // gcc-like drivers, cross compilers (`x86_64-linux-gnu-gcc`, `arm-none-eabi-g++`) too: the
    // one rule, shared with the peer, which finds the compilers it may serve by it.
    if distc_peer::toolchain::is_compiler_name(base) {
        return Some(Family::Gcc);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        for n in [
            "gcc",
            "g++",
            "cc",
            "c++",
            "clang",
            "clang++",
            "gcc-12",
            "clang++-18.1",
            "x86_64-linux-gnu-gcc-12",
            "arm-none-eabi-g++",
        ] {
            assert_eq!(family_of(OsStr::new(n)), Some(Family::Gcc), "{n}");
        }
        assert_eq!(family_of(OsStr::new("rustc")), Some(Family::Rustc));
        assert_eq!(family_of(OsStr::new("clippy-driver")), Some(Family::Rustc));
        for n in ["distc", "make", "ld", "gcc-ar", "-gcc", "cmake", "ccache"] {
            assert_eq!(family_of(OsStr::new(n)), None, "{n}");
        }
    }
}
