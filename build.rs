//! Link-time tuning for the `distc` binary.
//!
//! Every wrapped compile starts a fresh `distc` process, so what the dynamic loader does at
//! start-up counts. A position-independent executable of this size carries ~12 000 relative
//! relocations in ~250 KiB of read-only-after-relocation data (vtables, tables of the
//! libraries it links): applying them writes every one of those pages, a copy-on-write page
//! fault each (~60 per process), on every compile. So the binary is linked as a
//! position-dependent executable (`-no-pie`) where the system's C compiler can link one: its
//! addresses are fixed at link time and nothing is relocated. The cost is address-space
//! randomisation of the executable itself (libraries, heap and stack stay randomised), the
//! trade-off Go makes by default on Linux. `DISTC_PIE=1` at build time keeps a PIE, with packed
//! relative relocations (`DT_RELR`, a table a hundredth of the size) where the linker and C
//! library support them (binutils ≥ 2.38 / lld, glibc ≥ 2.36).

use std::io::Write;
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DISTC_PIE");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    if os != "linux" || env != "gnu" || host != target {
        return;
    }
    let pie = std::env::var_os("DISTC_PIE").is_some_and(|v| v != "0");
    if !pie && links_and_runs(&["-no-pie"]) {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    } else if links_and_runs(&["-pie", "-fPIE", "-Wl,-z,pack-relative-relocs"]) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Links a trivial C program with `flags` and runs it; success means the C compiler, the
/// linker and the C library all support them.
fn links_and_runs(flags: &[&str]) -> bool {
    let Ok(out_dir) = std::env::var("OUT_DIR") else {
        return false;
    };
    let exe = std::path::Path::new(&out_dir).join("link-probe");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let child = Command::new(cc)
        .args(["-x", "c", "-", "-o"])
        .arg(&exe)
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"int main(void) { return 0; }\n");
    }
    let linked = child.wait().map(|s| s.success()).unwrap_or(false);
    // The probe must also run: a libc without DT_RELR support would refuse to load it.
    let runs = linked
        && Command::new(&exe)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    let _ = std::fs::remove_file(&exe);
    runs
}
