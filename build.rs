//! Link-time tuning for the `distc` binary.
//!
//! Every wrapped compile starts a fresh `distc` process, so what the dynamic loader does at
//! start-up counts. A position-independent executable of this size carries ~12 000 relative
//! relocations: applying them touches hundreds of KiB of pages, which shows up in the
//! wrapper's peak memory and start-up time. Packed relative relocations (`DT_RELR`) keep the
//! executable position-independent with a table a hundredth of the size. They need a linker
//! and C library that support them (binutils ≥ 2.38 / lld, glibc ≥ 2.36), so this probes the
//! system's C compiler once and only then asks for them; elsewhere the build is unchanged.
//! Linking position-dependent (`-no-pie`) would save the remaining ~60 page faults (~0.2 ms
//! of a hit), but the same binary is `distc peer`, which reads from the network: it keeps
//! the address-space randomisation of a PIE.
//!
//! The unwinder is linked in statically as well (`libgcc_eh.a`, what `gcc -static-libgcc`
//! uses), where the C compiler has it: rustc asks for `-lgcc_s`, and a shared `libgcc_s.so.1`
//! costs every process a library load and its constructor, which runs `cpuid` a dozen times
//! (each one traps to the hypervisor on a virtual machine, ~10 µs): together about 0.2 ms of
//! every hit. A one-line linker script named `libgcc_s.a`, found first on the search path,
//! points `-lgcc_s` at `libgcc_eh.a`. Unwinding and backtraces work the same (the static
//! unwinder finds the frame tables through `dl_iterate_phdr`). `DISTC_SHARED_LIBGCC=1` at
//! build time keeps the shared one.

use std::io::Write;
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    if os != "linux" || env != "gnu" || host != target {
        return;
    }
    if linker_supports_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-env-changed=DISTC_SHARED_LIBGCC");
    if std::env::var_os("DISTC_SHARED_LIBGCC").is_none()
        && let Some(dir) = static_unwinder_shim()
    {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
}

/// A directory holding `libgcc_s.a`, a linker script that stands for `libgcc_eh.a`, when the C
/// compiler has that archive; `None` (the shared unwinder stays) otherwise.
fn static_unwinder_shim() -> Option<std::path::PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    let archive = std::path::Path::new(path.trim());
    // Without the archive, the compiler prints the bare name back.
    if !out.status.success() || !archive.is_absolute() || !archive.is_file() {
        return None;
    }
    let dir = std::path::Path::new(&std::env::var("OUT_DIR").ok()?).join("static-unwinder");
    std::fs::create_dir_all(&dir).ok()?;
    let script = format!("INPUT(\"{}\")\n", archive.display());
    std::fs::write(dir.join("libgcc_s.a"), script).ok()?;
    Some(dir)
}

/// Links a trivial C program with the flag; success means linker and libc both support it.
fn linker_supports_relr() -> bool {
    let Ok(out_dir) = std::env::var("OUT_DIR") else {
        return false;
    };
    let exe = std::path::Path::new(&out_dir).join("relr-probe");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let child = Command::new(cc)
        .args(["-x", "c", "-", "-o"])
        .arg(&exe)
        .args(["-pie", "-fPIE", "-Wl,-z,pack-relative-relocs"])
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
