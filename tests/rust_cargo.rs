//! `RUSTC_WRAPPER=distc cargo …` with real cargo and rustc, on a generated workspace: a
//! library, a binary, a proc-macro, a crate with a build script, a path dependency and one
//! small crates.io dependency (`itoa`).
//!
//! An oracle `rustc` script (first in `RUSTC`) logs every real compile (it ignores distc's
//! dep-info passes and cargo's probes) and execs the real rustc: the log is the truth about
//! which crates were compiled, independent of distc's own counters.
//!
//! Every test has its own DISTC_DIR and CARGO_TARGET_DIR; CARGO_HOME is shared by the tests of
//! this file (under cargo's test tmpdir) so `itoa` is downloaded once. When crates.io cannot
//! be reached the tests print `SKIP:` and pass.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{distc_bin, write};

/// The fixture workspace, written into `dir`.
fn write_fixture(dir: &Path) {
    write(
        &dir.join("Cargo.toml"),
        r#"[workspace]
members = ["app", "mylib", "util", "mymacro"]
resolver = "2"
"#,
    );
    write(
        &dir.join("util/Cargo.toml"),
        r#"[package]
name = "util"
version = "0.1.0"
edition = "2021"
build = "build.rs"
"#,
    );
    write(
        &dir.join("util/build.rs"),
        r#"fn main() {
    println!("cargo:rustc-env=UTIL_BUILD_MESSAGE=built-by-build-rs");
    println!("cargo:rerun-if-changed=build.rs");
}
"#,
    );
    write(
        &dir.join("util/src/lib.rs"),
        r#"pub fn build_message() -> &'static str {
    env!("UTIL_BUILD_MESSAGE")
}

pub fn double(x: u64) -> u64 {
    x * 2
}
"#,
    );
    write(
        &dir.join("mymacro/Cargo.toml"),
        r#"[package]
name = "mymacro"
version = "0.1.0"
edition = "2021"

[lib]
proc-macro = true
"#,
    );
    write(
        &dir.join("mymacro/src/lib.rs"),
        r#"use proc_macro::TokenStream;

#[proc_macro]
pub fn answer(_input: TokenStream) -> TokenStream {
    "42u64".parse().expect("a literal")
}
"#,
    );
    write(
        &dir.join("mylib/Cargo.toml"),
        r#"[package]
name = "mylib"
version = "0.1.0"
edition = "2021"

[dependencies]
itoa = "1"
util = { path = "../util" }
"#,
    );
    write(&dir.join("mylib/src/data.txt"), "data-v1\n");
    write(
        &dir.join("mylib/src/lib.rs"),
        r#"pub const LABEL: &str = "v1";
pub const DATA: &str = include_str!("data.txt");

pub fn render(n: u64) -> String {
    let mut buf = itoa::Buffer::new();
    format!("{}:{}", LABEL, buf.format(util::double(n)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders() {
        assert_eq!(super::render(2), format!("{}:4", super::LABEL));
    }
}
"#,
    );
    write(
        &dir.join("app/Cargo.toml"),
        r#"[package]
name = "app"
version = "0.1.0"
edition = "2021"

[dependencies]
mylib = { path = "../mylib" }
mymacro = { path = "../mymacro" }
util = { path = "../util" }
"#,
    );
    write(
        &dir.join("app/src/main.rs"),
        r#"fn main() {
    let greeting = option_env!("FIXTURE_GREETING").unwrap_or("hello");
    println!(
        "{} {} {} {}",
        mylib::render(mymacro::answer!()),
        util::build_message(),
        greeting,
        mylib::DATA.trim()
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn answer_is_42() {
        assert_eq!(mymacro::answer!(), 42);
    }
}
"#,
    );
}

/// What every test shares: the oracle rustc, CARGO_HOME with `itoa` fetched, the lock file,
/// and a DISTC_DIR whose memoised rustc identity is copied into each test's own.
struct Shared {
    oracle: PathBuf,
    cargo_home: PathBuf,
    lock: String,
    memo_dir: PathBuf,
}

/// `None` (after printing `SKIP:`) when cargo or crates.io is unavailable.
fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<Shared>> = OnceLock::new();
    SHARED.get_or_init(setup).as_ref()
}

fn setup() -> Option<Shared> {
    let cargo_ok = Command::new("cargo")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !cargo_ok {
        println!("SKIP: cargo not found");
        return None;
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("distc-rust-tests");
    std::fs::create_dir_all(&base).expect("mkdir shared");
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("run rustc --print sysroot");
    let real = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("bin/rustc");
    // Log real compiles: cargo's probes (`-vV`, `- --print …`) are not compiles, and distc's
    // dep-info passes (`-o …/distc-depinfo-…/deps.d`) go to a log of their own.
    let oracle = base.join("bin/rustc");
    write(
        &oracle,
        &format!(
            "#!/bin/sh\ncase \"$*\" in\n  *distc-depinfo-*) printf '%s\\n' \"$*\" >> \"$DISTC_TEST_RUSTC_LOG.depinfo\" ;;\n  *--print*) ;;\n  *--crate-name*) printf '%s\\n' \"$*\" >> \"$DISTC_TEST_RUSTC_LOG\" ;;\nesac\nexec '{}' \"$@\"\n",
            real.display()
        ),
    );
    std::fs::set_permissions(&oracle, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let cargo_home = base.join("cargo-home");
    let proto = base.join("fixture-proto");
    let _ = std::fs::remove_dir_all(&proto);
    write_fixture(&proto);
    let fetch = Command::new("cargo")
        .arg("fetch")
        .current_dir(&proto)
        .env("CARGO_HOME", &cargo_home)
        .output()
        .expect("run cargo fetch");
    if !fetch.status.success() {
        println!(
            "SKIP: cannot fetch the fixture's crates.io dependency: {}",
            String::from_utf8_lossy(&fetch.stderr).trim()
        );
        return None;
    }
    let lock = std::fs::read_to_string(proto.join("Cargo.lock")).expect("read Cargo.lock");

    // Warm a DISTC_DIR once: the rustc identity hashes the whole sysroot (hundreds of MB),
    // which each test would otherwise repeat.
    let memo_dir = base.join("memo-distc-dir");
    let warm = base.join("warm");
    write(&warm.join("w.rs"), "fn main() {}\n");
    let out = Command::new(distc_bin())
        .arg(&oracle)
        .args([
            "--crate-name",
            "w",
            "--crate-type",
            "bin",
            "w.rs",
            "--out-dir",
            "out",
        ])
        .current_dir(&warm)
        .env("DISTC_DIR", &memo_dir)
        .env("DISTC_AUTO_START", "0")
        .env("DISTC_TEST_RUSTC_LOG", base.join("warm.log"))
        .output()
        .expect("run distc rustc");
    assert!(out.status.success(), "warm-up compile failed: {out:?}");
    Some(Shared {
        oracle,
        cargo_home,
        lock,
        memo_dir,
    })
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            if entry.file_name() != "target" {
                copy_dir(&entry.path(), &to);
            }
        } else {
            std::fs::copy(entry.path(), &to).expect("copy");
        }
    }
}

/// One test's world: its own DISTC_DIR, target dir and copy of the fixture.
struct World {
    shared: &'static Shared,
    root: tempfile::TempDir,
    distc_dir: PathBuf,
    ws: PathBuf,
    target: PathBuf,
    log: PathBuf,
}

impl World {
    fn new() -> Option<World> {
        let shared = shared()?;
        let root = tempfile::tempdir().expect("tempdir");
        let distc_dir = root.path().join("distc");
        for sub in ["rustc", "compilers"] {
            let from = shared.memo_dir.join(sub);
            if from.is_dir() {
                copy_dir(&from, &distc_dir.join(sub));
            }
        }
        let ws = root.path().join("ws");
        write_fixture(&ws);
        std::fs::write(ws.join("Cargo.lock"), &shared.lock).expect("write lock");
        Some(World {
            shared,
            target: root.path().join("target"),
            log: root.path().join("rustc.log"),
            distc_dir,
            ws,
            root,
        })
    }

    /// `cargo ARGS…` through distc in `dir`, with `extra` environment.
    fn cargo_in(&self, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("cargo");
        for (k, _) in std::env::vars() {
            if k.starts_with("DISTC_")
                || k.starts_with("CARGO_")
                || matches!(
                    k.as_str(),
                    "RUSTFLAGS" | "RUSTC" | "RUSTC_WRAPPER" | "FIXTURE_GREETING"
                )
            {
                cmd.env_remove(&k);
            }
        }
        cmd.args(args)
            .arg("--offline")
            .current_dir(dir)
            .env("RUSTC", &self.shared.oracle)
            .env("RUSTC_WRAPPER", distc_bin())
            .env("CARGO_HOME", &self.shared.cargo_home)
            .env("CARGO_TARGET_DIR", &self.target)
            .env("CARGO_INCREMENTAL", "0")
            .env("CARGO_TERM_COLOR", "never")
            .env("DISTC_DIR", &self.distc_dir)
            .env("DISTC_AUTO_START", "0")
            .env("DISTC_TEST_RUSTC_LOG", &self.log);
        for (k, v) in extra {
            // An empty value unsets (e.g. CARGO_TARGET_DIR: the target dir inside the checkout).
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = cmd.output().expect("run cargo");
        assert!(
            out.status.success(),
            "cargo {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn cargo(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        self.cargo_in(&self.ws, args, extra)
    }

    /// Crate names of the real compiles logged since the last call (and clears the log).
    fn take_compiles(&self) -> BTreeMap<String, usize> {
        take_log(&self.log)
    }

    /// Crate names of distc's dep-info passes since the last call (and clears their log).
    fn take_depinfo(&self) -> BTreeMap<String, usize> {
        let mut p = self.log.clone().into_os_string();
        p.push(".depinfo");
        take_log(Path::new(&p))
    }

    fn clean(&self) {
        self.cargo(&["clean"], &[]);
    }

    fn run_app(&self, profile: &str) -> String {
        let out = Command::new(self.target.join(profile).join("app"))
            .output()
            .expect("run the fixture binary");
        assert!(out.status.success(), "app failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn stats(&self) -> String {
        let out = Command::new(distc_bin())
            .args(["stats"])
            .env("DISTC_DIR", &self.distc_dir)
            .env("DISTC_AUTO_START", "0")
            .output()
            .expect("run distc stats");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Crate names in an oracle log (which is then removed), with their counts.
fn take_log(log: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "--crate-name")
            && let Some(name) = words.get(i + 1)
        {
            *out.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    out
}

const ALL_CRATES: [&str; 6] = [
    "app",
    "build_script_build",
    "itoa",
    "mylib",
    "mymacro",
    "util",
];

fn names(m: &BTreeMap<String, usize>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn warm_build_after_clean_compiles_nothing() {
    let Some(w) = World::new() else { return };
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs hello data-v1"
    );

    w.clean();
    w.cargo(&["build", "--release"], &[]);
    let again = w.take_compiles();
    assert!(
        again.is_empty(),
        "warm build compiled {again:?}\n{}",
        w.stats()
    );
    // The binary (and through it the proc-macro and the build script's output) came from
    // the cache and still works.
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs hello data-v1"
    );

    // Editing the library recompiles it and its dependents only.
    let lib = w.ws.join("mylib/src/lib.rs");
    let text = std::fs::read_to_string(&lib).expect("read lib");
    std::fs::write(&lib, text.replace("\"v1\"", "\"v2\"")).expect("edit lib");
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), vec!["app", "mylib"]);
    assert_eq!(
        w.run_app("release"),
        "v2:84 built-by-build-rs hello data-v1"
    );

    // A file pulled in by include_str! is an input too.
    std::fs::write(w.ws.join("mylib/src/data.txt"), "data-v2\n").expect("edit data");
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), vec!["app", "mylib"]);
    assert_eq!(
        w.run_app("release"),
        "v2:84 built-by-build-rs hello data-v2"
    );
}

#[test]
fn rustflags_and_env_deps_change_the_key() {
    let Some(w) = World::new() else { return };
    w.cargo(&["build", "--release"], &[]);
    w.take_compiles();

    // RUSTFLAGS reach rustc as arguments: every crate misses.
    w.cargo(
        &["build", "--release"],
        &[("RUSTFLAGS", "-C overflow-checks=on")],
    );
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    // Back to the original flags after a clean: all hits.
    w.clean();
    w.cargo(&["build", "--release"], &[]);
    assert!(w.take_compiles().is_empty());

    // A variable read with option_env!/env! misses when it changes, and hits when it returns.
    w.cargo(&["build", "--release"], &[("FIXTURE_GREETING", "bonjour")]);
    assert_eq!(names(&w.take_compiles()), vec!["app"]);
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs bonjour data-v1"
    );
    w.cargo(&["build", "--release"], &[("FIXTURE_GREETING", "hola")]);
    assert_eq!(names(&w.take_compiles()), vec!["app"]);
    w.cargo(&["build", "--release"], &[("FIXTURE_GREETING", "bonjour")]);
    assert!(w.take_compiles().is_empty());
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs bonjour data-v1"
    );
}

#[test]
fn copied_workspace_hits() {
    let Some(w) = World::new() else { return };
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(w.take_compiles().len(), ALL_CRATES.len());
    w.take_depinfo();

    // Another checkout at another path, with its own target directory.
    let other = w.root.path().join("elsewhere/checkout");
    copy_dir(&w.ws, &other);
    let other_target = w.root.path().join("elsewhere/target");
    let mut cmd_env = vec![];
    let t = other_target.to_string_lossy().into_owned();
    cmd_env.push(("CARGO_TARGET_DIR", t.as_str()));
    w.cargo_in(&other, &["build", "--release"], &cmd_env);
    let compiles = w.take_compiles();
    assert!(compiles.is_empty(), "the copy compiled {compiles:?}");
    // Direct mode's manifests serve the copy too: no dep-info pass.
    let passes = w.take_depinfo();
    assert!(passes.is_empty(), "the copy ran dep-info for {passes:?}");
    let out = Command::new(other_target.join("release/app"))
        .output()
        .expect("run copied app");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "v1:84 built-by-build-rs hello data-v1"
    );
    // The .d files name the copy's own paths.
    let deps = other_target.join("release/deps");
    let d = std::fs::read_dir(&deps)
        .expect("deps dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|x| x == "d")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("mylib-"))
        })
        .expect("mylib's .d file");
    let text = std::fs::read_to_string(d).expect("read .d");
    assert!(
        text.contains(&deps.to_string_lossy().into_owned()),
        "{text}"
    );
    assert!(
        !text.contains(&w.target.to_string_lossy().into_owned()),
        "{text}"
    );
}

#[test]
fn cargo_test_through_the_wrapper() {
    let Some(w) = World::new() else { return };
    // The dev profile (debug info on): hits within one checkout.
    let out = w.cargo(&["test", "--workspace"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("renders ... ok"), "{text}");
    assert!(text.contains("answer_is_42 ... ok"), "{text}");
    assert!(!w.take_compiles().is_empty());
    w.clean();
    let out = w.cargo(&["test", "--workspace"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("renders ... ok"), "{text}");
    let again = w.take_compiles();
    assert!(again.is_empty(), "warm cargo test compiled {again:?}");
}

#[test]
fn incremental_passes_through_with_a_reason() {
    let Some(w) = World::new() else { return };
    w.cargo(&["build"], &[("CARGO_INCREMENTAL", "1")]);
    w.take_compiles();
    let stats = w.stats();
    assert!(stats.contains("incremental"), "{stats}");
}

#[test]
fn build_single_rust_file_miss_then_hit() {
    let Some(w) = World::new() else { return };
    let dir = w.root.path().join("single");
    write(
        &dir.join("hello.rs"),
        "fn main() {\n    println!(\"hello from distc build\");\n}\n",
    );
    let build = |out: &str| {
        let o = Command::new(distc_bin())
            .args(["build", "hello.rs", "-o", out])
            .current_dir(&dir)
            .env("RUSTC", &w.shared.oracle)
            .env("DISTC_DIR", &w.distc_dir)
            .env("DISTC_AUTO_START", "0")
            .env("DISTC_TEST_RUSTC_LOG", &w.log)
            .output()
            .expect("run distc build");
        assert!(o.status.success(), "distc build failed: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let first = build("hello");
    assert!(first.contains("cache miss"), "{first}");
    assert_eq!(names(&w.take_compiles()), vec!["hello"]);
    let second = build("bin/hello2");
    assert!(second.contains("cache hit"), "{second}");
    assert!(w.take_compiles().is_empty());
    let out = Command::new(dir.join("bin/hello2"))
        .output()
        .expect("run hello2");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from distc build\n"
    );
}

/// `distc build FILE.rs` has rustc write the output itself and a hit replay onto it: a hit on
/// an executable that holds the bytes leaves it in place (same inode, still executable), even
/// while it runs; nothing else appears beside it; a changed source rebuilds; a hit with other
/// bytes replaces a running executable without disturbing it.
#[test]
fn build_single_rust_file_hits_in_place_and_leaves_nothing_beside_it() {
    use std::os::unix::fs::MetadataExt;
    let Some(w) = World::new() else { return };
    let dir = w.root.path().join("inplace");
    let src = dir.join("tool.rs");
    // Prints its message, then waits for a line on stdin (so a test can hold it running).
    let program = |msg: &str| {
        format!(
            "fn main() {{\n    println!(\"{msg}\");\n    let mut l = String::new();\n    \
             let _ = std::io::stdin().read_line(&mut l);\n}}\n"
        )
    };
    write(&src, &program("one"));
    let build = || {
        let o = Command::new(distc_bin())
            .args(["build", "tool.rs", "-o", "tool"])
            .current_dir(&dir)
            .env("RUSTC", &w.shared.oracle)
            .env("DISTC_DIR", &w.distc_dir)
            .env("DISTC_AUTO_START", "0")
            .env("DISTC_TEST_RUSTC_LOG", &w.log)
            .output()
            .expect("run distc build");
        assert!(o.status.success(), "distc build failed: {o:?}");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        // The message names the output as given.
        assert!(out.starts_with("Built tool ("), "{out}");
        out
    };
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let exe = dir.join("tool");
    let run = || {
        let o = Command::new(&exe)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tool");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let first = build();
    assert!(first.contains("cache miss"), "{first}");
    assert_eq!(names(&w.take_compiles()), vec!["tool"]);
    assert_eq!(listing(), vec!["tool", "tool.rs"]);
    assert_eq!(run(), "one\n");
    let md = std::fs::metadata(&exe).expect("stat tool");
    assert_eq!(md.mode() & 0o111, 0o111, "not executable: {:o}", md.mode());

    // A hit while the executable runs: it is left as it is.
    let mut running = Command::new(&exe)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start tool");
    let hit = build();
    assert!(hit.contains("cache hit"), "{hit}");
    assert!(w.take_compiles().is_empty());
    let again = std::fs::metadata(&exe).expect("stat tool");
    assert_eq!(
        again.ino(),
        md.ino(),
        "a hit replaced an identical executable"
    );
    assert_eq!(again.mode(), md.mode());
    assert_eq!(listing(), vec!["tool", "tool.rs"]);

    // A changed source compiles (rustc writes over the running executable: a new file).
    write(&src, &program("two"));
    let changed = build();
    assert!(changed.contains("cache miss"), "{changed}");
    assert_eq!(names(&w.take_compiles()), vec!["tool"]);
    assert_eq!(run(), "two\n");
    assert_eq!(listing(), vec!["tool", "tool.rs"]);
    // Back to the first source: a hit with other bytes than the file holds.
    write(&src, &program("one"));
    let back = build();
    assert!(back.contains("cache hit"), "{back}");
    assert!(w.take_compiles().is_empty());
    assert_eq!(run(), "one\n");
    assert_eq!(listing(), vec!["tool", "tool.rs"]);
    let md = std::fs::metadata(&exe).expect("stat tool");
    assert_eq!(md.mode() & 0o111, 0o111, "not executable: {:o}", md.mode());

    // The first process ran through all of it and still finishes normally.
    use std::io::Write as _;
    running
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"\n")
        .expect("write to tool");
    let done = running.wait_with_output().expect("wait for tool");
    assert!(done.status.success(), "{done:?}");
    assert_eq!(String::from_utf8_lossy(&done.stdout), "one\n");
    let stats = w.stats();
    assert!(stats.contains("Errors             0"), "{stats}");
}

/// An `-o` compile and an `--out-dir` compile of one crate are different results (the stored
/// names differ): neither is served the other's entry.
#[test]
fn output_file_and_output_directory_forms_do_not_share_an_entry() {
    let Some(w) = World::new() else { return };
    let dir = w.root.path().join("forms");
    write(&dir.join("f.rs"), "fn main() {\n    println!(\"f\");\n}\n");
    let run = |extra: &[&str]| {
        let o = Command::new(distc_bin())
            .arg(&w.shared.oracle)
            .args(["f.rs", "--crate-name", "f", "--crate-type", "bin"])
            .args(extra)
            .current_dir(&dir)
            .env("DISTC_DIR", &w.distc_dir)
            .env("DISTC_AUTO_START", "0")
            .env("DISTC_TEST_RUSTC_LOG", &w.log)
            .output()
            .expect("run distc rustc");
        assert!(o.status.success(), "distc rustc failed: {o:?}");
    };
    let d = dir.join("d");
    let o = dir.join("o/f");
    std::fs::create_dir_all(o.parent().expect("parent")).expect("mkdir");
    run(&["--out-dir", d.to_str().expect("utf-8")]);
    run(&["-o", o.to_str().expect("utf-8")]);
    assert_eq!(w.take_compiles().get("f"), Some(&2));
    run(&["-o", o.to_str().expect("utf-8")]);
    run(&["--out-dir", d.to_str().expect("utf-8")]);
    assert!(w.take_compiles().is_empty());
    let stats = w.stats();
    assert!(stats.contains("Errors             0"), "{stats}");
    for exe in [d.join("f"), o] {
        let out = Command::new(&exe).output().expect("run f");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "f\n");
    }
}

#[test]
fn build_project_reports_per_crate_outcomes() {
    let Some(w) = World::new() else { return };
    // `via_flag`: the cache named by --cache-dir, DISTC_DIR naming another (empty) one: the
    // wrappers cargo runs must use the flag's.
    let elsewhere = w.distc_dir.with_extension("elsewhere");
    let run = |via_flag: bool| {
        let mut cmd = Command::new(distc_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER" {
                cmd.env_remove(&k);
            }
        }
        if via_flag {
            cmd.arg("--cache-dir")
                .arg(&w.distc_dir)
                .env("DISTC_DIR", &elsewhere);
        } else {
            cmd.env("DISTC_DIR", &w.distc_dir);
        }
        let o = cmd
            .args(["build-project", ".", "--", "--release", "--offline"])
            .current_dir(&w.ws)
            .env("RUSTC", &w.shared.oracle)
            .env("CARGO_HOME", &w.shared.cargo_home)
            .env("CARGO_TARGET_DIR", &w.target)
            .env("DISTC_AUTO_START", "0")
            .env("DISTC_TEST_RUSTC_LOG", &w.log)
            .output()
            .expect("run distc build-project");
        assert!(o.status.success(), "build-project failed: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let cold = run(false);
    // mymacro twice: as a workspace member and, with build-override settings, as app's macro.
    assert!(
        cold.contains("7 crates: 0 from the cache, 7 compiled (7 stored)"),
        "{cold}"
    );
    assert!(cold.contains("miss         app (bin)"), "{cold}");
    w.clean();
    let warm = run(true);
    assert!(
        warm.contains("7 crates: 7 from the cache, 0 compiled"),
        "{warm}"
    );
    assert!(warm.contains("hit          mymacro (proc-macro)"), "{warm}");
    assert!(
        !elsewhere.exists(),
        "the wrappers used DISTC_DIR, not --cache-dir"
    );
}

#[test]
fn direct_mode_hit_runs_no_dep_info_pass() {
    let Some(w) = World::new() else { return };
    // Without depend mode, a miss runs the dep-info pass first.
    w.cargo(&["build", "--release"], &[("DISTC_DEPEND_MODE", "0")]);
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    assert_eq!(names(&w.take_depinfo()), ALL_CRATES.to_vec());

    w.clean();
    w.cargo(&["build", "--release"], &[]);
    assert!(w.take_compiles().is_empty());
    let passes = w.take_depinfo();
    assert!(
        passes.is_empty(),
        "a direct-mode hit ran rustc's dep-info pass for {passes:?}\n{}",
        w.stats()
    );
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs hello data-v1"
    );

    // DISTC_DIRECT_MODE=0: every crate pays the dep-info pass, and still hits.
    w.clean();
    w.cargo(&["build", "--release"], &[("DISTC_DIRECT_MODE", "0")]);
    assert!(w.take_compiles().is_empty());
    assert_eq!(names(&w.take_depinfo()), ALL_CRATES.to_vec());
}

#[test]
fn direct_mode_same_size_module_edit_misses() {
    let Some(w) = World::new() else { return };
    let lib = w.ws.join("mylib/src/lib.rs");
    let text = std::fs::read_to_string(&lib).expect("read lib");
    std::fs::write(&lib, format!("pub mod extra;\n{text}")).expect("edit lib");
    let extra = w.ws.join("mylib/src/extra.rs");
    write(&extra, "pub const EXTRA: u32 = 1;\n");
    // Old enough for direct mode to trust the files' stat data without re-reading them.
    std::thread::sleep(std::time::Duration::from_secs(3));
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    w.take_depinfo();
    w.clean();
    w.cargo(&["build", "--release"], &[]);
    assert!(w.take_compiles().is_empty());
    assert!(w.take_depinfo().is_empty());

    // Same size, same mtime: only the content (and the ctime) tell.
    let mtime = std::fs::metadata(&extra)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::write(&extra, "pub const EXTRA: u32 = 2;\n").expect("edit module");
    std::fs::File::options()
        .write(true)
        .open(&extra)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
    // Cargo would trust the mtime too: after a clean it has to ask distc.
    w.clean();
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), vec!["app", "mylib"]);
    w.take_depinfo();

    // Back to the first content: a hit again, from the manifest's other entry.
    std::fs::write(&extra, "pub const EXTRA: u32 = 1;\n").expect("edit module");
    w.clean();
    w.cargo(&["build", "--release"], &[]);
    assert!(w.take_compiles().is_empty());
    assert!(w.take_depinfo().is_empty());
}

#[test]
fn direct_mode_new_included_file_edit_misses() {
    let Some(w) = World::new() else { return };
    w.cargo(&["build", "--release"], &[]);
    w.take_compiles();
    w.take_depinfo();
    // A new file pulled in by include_str!.
    let lib = w.ws.join("mylib/src/lib.rs");
    let text = std::fs::read_to_string(&lib).expect("read lib");
    std::fs::write(
        &lib,
        format!("pub const NOTES: &str = include_str!(\"notes.txt\");\n{text}"),
    )
    .expect("edit lib");
    write(&w.ws.join("mylib/src/notes.txt"), "notes-1\n");
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), vec!["app", "mylib"]);
    w.take_depinfo();
    w.clean();
    w.cargo(&["build", "--release"], &[]);
    assert!(w.take_compiles().is_empty());
    assert!(w.take_depinfo().is_empty());

    write(&w.ws.join("mylib/src/notes.txt"), "notes-2\n");
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), vec!["app", "mylib"]);
}

#[test]
fn direct_mode_env_dep_change_misses() {
    let Some(w) = World::new() else { return };
    w.cargo(&["build", "--release"], &[]);
    w.take_compiles();
    w.take_depinfo();
    w.clean();
    w.cargo(&["build", "--release"], &[]);
    assert!(w.take_compiles().is_empty());
    assert!(w.take_depinfo().is_empty());

    // The variable option_env! reads was unset when the manifest was recorded.
    w.cargo(&["build", "--release"], &[("FIXTURE_GREETING", "bonjour")]);
    assert_eq!(names(&w.take_compiles()), vec!["app"]);
    w.take_depinfo();
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs bonjour data-v1"
    );
    w.clean();
    w.cargo(&["build", "--release"], &[("FIXTURE_GREETING", "bonjour")]);
    assert!(w.take_compiles().is_empty());
    assert!(w.take_depinfo().is_empty());
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs bonjour data-v1"
    );
    // Another value misses; unset again hits the first result, with no dep-info pass.
    w.cargo(&["build", "--release"], &[("FIXTURE_GREETING", "hola")]);
    assert_eq!(names(&w.take_compiles()), vec!["app"]);
    w.take_depinfo();
    w.cargo(&["build", "--release"], &[]);
    assert!(w.take_compiles().is_empty());
    assert!(w.take_depinfo().is_empty());
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs hello data-v1"
    );
}

#[test]
fn depend_mode_cold_build_runs_no_dep_info_pass() {
    let Some(w) = World::new() else { return };
    // Cold: every crate compiled once, learning its sources from its own dep-info output.
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    let passes = w.take_depinfo();
    assert!(
        passes.is_empty(),
        "a cold build ran dep-info for {passes:?}"
    );
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs hello data-v1"
    );
    // mymacro is compiled twice (a workspace member, and with build-override settings).
    let stats = w.stats();
    assert!(stats.contains("Misses             7"), "{stats}");
    assert!(stats.contains("Errors             0"), "{stats}");

    // Warm, after cargo clean: every crate a direct-mode hit, still no rustc at all.
    w.clean();
    w.cargo(&["build", "--release"], &[]);
    let again = w.take_compiles();
    assert!(
        again.is_empty(),
        "warm build compiled {again:?}\n{}",
        w.stats()
    );
    assert!(w.take_depinfo().is_empty());
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs hello data-v1"
    );

    // An edit: the edited crate and its dependents recompile, again without a dep-info pass,
    // and the new results hit after a clean.
    std::fs::write(w.ws.join("mylib/src/data.txt"), "data-v2\n").expect("edit data");
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), vec!["app", "mylib"]);
    assert!(w.take_depinfo().is_empty());
    w.clean();
    w.cargo(&["build", "--release"], &[]);
    assert!(w.take_compiles().is_empty());
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs hello data-v2"
    );

    // The dev profile (check and test included) works the same way.
    w.cargo(&["check", "--workspace", "--tests"], &[]);
    assert!(!w.take_compiles().is_empty());
    assert!(w.take_depinfo().is_empty());
    w.clean();
    w.cargo(&["check", "--workspace", "--tests"], &[]);
    assert!(w.take_compiles().is_empty());

    // DISTC_DEPEND_MODE=0 restores the dep-info pass before every miss.
    for sub in ["store", "manifests"] {
        let _ = std::fs::remove_dir_all(w.distc_dir.join(sub));
    }
    w.clean();
    w.cargo(&["build", "--release"], &[("DISTC_DEPEND_MODE", "0")]);
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    assert_eq!(names(&w.take_depinfo()), ALL_CRATES.to_vec());
}

#[test]
fn depend_mode_single_file_leaves_no_extra_files() {
    let Some(w) = World::new() else { return };
    let dir = w.root.path().join("single");
    write(
        &dir.join("hi.rs"),
        "fn main() {\n    println!(\"hi\");\n}\n",
    );
    // A plain rustc invocation asking for no dep-info: distc adds its own, elsewhere.
    let run = |args: &[&str]| {
        let o = Command::new(distc_bin())
            .arg(&w.shared.oracle)
            .args(args)
            .current_dir(&dir)
            .env("DISTC_DIR", &w.distc_dir)
            .env("DISTC_AUTO_START", "0")
            .env("DISTC_TEST_RUSTC_LOG", &w.log)
            .output()
            .expect("run distc rustc");
        assert!(o.status.success(), "distc rustc failed: {o:?}");
        o
    };
    let args = [
        "hi.rs",
        "--crate-name",
        "hi",
        "--crate-type",
        "bin",
        "-o",
        "hi",
        "--error-format=json",
        "--json=artifacts",
    ];
    let cold = run(&args);
    assert_eq!(names(&w.take_compiles()), vec!["hi"]);
    assert!(w.take_depinfo().is_empty());
    let listing = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listing(&dir), vec!["hi", "hi.rs"]);
    // Only the artifact the requester asked for is reported.
    let err = String::from_utf8_lossy(&cold.stderr).into_owned();
    assert!(!err.contains("dep-info"), "{err}");
    assert!(err.contains("\"emit\":\"link\""), "{err}");
    std::fs::remove_file(dir.join("hi")).expect("rm hi");
    let warm = run(&args);
    assert!(w.take_compiles().is_empty());
    assert_eq!(String::from_utf8_lossy(&warm.stderr), err);
    assert_eq!(listing(&dir), vec!["hi", "hi.rs"]);
    let out = Command::new(dir.join("hi")).output().expect("run hi");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}

#[test]
fn clippy_passes_through_and_never_shares_results_with_rustc() {
    let Some(w) = World::new() else { return };
    let clippy_ok = Command::new("cargo")
        .args(["clippy", "-V"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !clippy_ok {
        println!("SKIP: cargo clippy not installed");
        return;
    }
    let lib = w.ws.join("util/src/lib.rs");
    let text = std::fs::read_to_string(&lib).expect("read util");
    std::fs::write(
        &lib,
        format!("{text}\npub fn lint_me(x: u32) -> bool {{\n    x == 5 && true\n}}\n"),
    )
    .expect("edit util");
    let lint = "this boolean expression can be simplified";
    // A check first: its results must not be served to clippy (lints would go missing).
    let out = w.cargo(&["check", "--workspace"], &[]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(lint));
    for _ in 0..2 {
        let out = w.cargo(&["clippy", "--workspace"], &[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(lint), "clippy's lint is missing:\n{err}");
        w.clean();
    }
    let stats = w.stats();
    assert!(stats.contains("clippy"), "{stats}");
    // Nor are clippy's results served to rustc: a check after clippy has no lint.
    let out = w.cargo(&["check", "--workspace"], &[]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(lint));
    // Members never went through the C/C++ parser.
    let json = Command::new(distc_bin())
        .args(["stats", "--json"])
        .env("DISTC_DIR", &w.distc_dir)
        .output()
        .expect("run distc stats --json");
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    assert!(!json.contains("unknown-option"), "{json}");
    assert!(!json.contains("stdin-source"), "{json}");
}

#[test]
fn cargo_settings_in_the_environment_still_hit() {
    let Some(w) = World::new() else { return };
    w.cargo(&["build", "--release"], &[]);
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    // CI-style settings of cargo itself change nothing rustc writes.
    w.clean();
    w.cargo(
        &["build", "--release"],
        &[("CARGO_TERM_COLOR", "always"), ("CARGO_BUILD_JOBS", "1")],
    );
    let again = w.take_compiles();
    assert!(again.is_empty(), "cargo settings missed {again:?}");
    assert_eq!(
        w.run_app("release"),
        "v1:84 built-by-build-rs hello data-v1"
    );
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn target_dir_never_enters_the_key() {
    let Some(w) = World::new() else { return };
    // Debug build, target dir inside the checkout (CARGO_TARGET_DIR unset).
    w.cargo(&["build"], &[("CARGO_TARGET_DIR", "")]);
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    assert!(w.ws.join("target/debug/app").is_file());
    // The same checkout with CARGO_TARGET_DIR set elsewhere: nothing compiled.
    w.cargo(&["build"], &[]);
    let again = w.take_compiles();
    assert!(
        again.is_empty(),
        "CARGO_TARGET_DIR recompiled {again:?}\n{}",
        w.stats()
    );
    assert_eq!(w.run_app("debug"), "v1:84 built-by-build-rs hello data-v1");
}

#[test]
fn second_checkout_with_base_dir_hits_in_debug_builds() {
    let Some(w) = World::new() else { return };
    let base = w.root.path().to_string_lossy().into_owned();
    let env = [("DISTC_BASE_DIR", base.as_str())];
    w.cargo(&["build"], &env);
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());

    let other = w.root.path().join("elsewhere/deeper/checkout");
    copy_dir(&w.ws, &other);
    let other_target = w.root.path().join("elsewhere/target");
    let t = other_target.to_string_lossy().into_owned();
    w.cargo_in(
        &other,
        &["build"],
        &[("DISTC_BASE_DIR", base.as_str()), ("CARGO_TARGET_DIR", &t)],
    );
    let compiles = w.take_compiles();
    assert!(
        compiles.is_empty(),
        "the second checkout compiled {compiles:?}\n{}",
        w.stats()
    );
    let app = other_target.join("debug/app");
    let out = Command::new(&app).output().expect("run the second app");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "v1:84 built-by-build-rs hello data-v1"
    );
    // Neither checkout's path is in the binary: the working directory was remapped to `.`.
    let bin = std::fs::read(&app).expect("read app");
    for ck in [&w.ws, &other] {
        assert!(
            !contains(&bin, &ck.to_string_lossy()),
            "the binary names {}",
            ck.display()
        );
    }
}

#[test]
fn build_project_caches_workspace_crates_in_debug_builds() {
    let Some(w) = World::new() else { return };
    let run = || {
        let mut cmd = Command::new(distc_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER" {
                cmd.env_remove(&k);
            }
        }
        let o = cmd
            .args(["build-project", ".", "--", "--offline"])
            .current_dir(&w.ws)
            .env("RUSTC", &w.shared.oracle)
            .env("CARGO_HOME", &w.shared.cargo_home)
            .env("CARGO_TARGET_DIR", &w.target)
            .env("DISTC_DIR", &w.distc_dir)
            .env("DISTC_AUTO_START", "0")
            .env("DISTC_TEST_RUSTC_LOG", &w.log)
            .output()
            .expect("run distc build-project");
        assert!(o.status.success(), "build-project failed: {o:?}");
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (cold, err) = run();
    assert_eq!(err.matches("CARGO_INCREMENTAL=0").count(), 1, "{err}");
    assert!(
        cold.contains("6 crates: 0 from the cache, 6 compiled (6 stored)"),
        "{cold}"
    );
    assert_eq!(names(&w.take_compiles()), ALL_CRATES.to_vec());
    w.clean();
    let (warm, _) = run();
    assert!(
        warm.contains("6 crates: 6 from the cache, 0 compiled (0 stored)"),
        "{warm}"
    );
    assert!(w.take_compiles().is_empty());
    assert_eq!(w.run_app("debug"), "v1:84 built-by-build-rs hello data-v1");
}

/// A workspace whose crates read build-script output: `generated` only `include!`s a file from
/// `OUT_DIR` (as serde does), `embedded` compiles the `OUT_DIR` path in as a string.
fn write_out_dir_workspace(dir: &Path) {
    write(
        &dir.join("Cargo.toml"),
        "[workspace]\nmembers = [\"generated\", \"embedded\", \"show\"]\nresolver = \"2\"\n",
    );
    let build = r#"fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{out}/gen.rs"), "pub const GENERATED: u64 = 7;\n").expect("write gen.rs");
    println!("cargo:rerun-if-changed=build.rs");
}
"#;
    for name in ["generated", "embedded"] {
        write(
            &dir.join(format!("{name}/Cargo.toml")),
            &format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
        );
        write(&dir.join(format!("{name}/build.rs")), build);
    }
    write(
        &dir.join("generated/src/lib.rs"),
        "include!(concat!(env!(\"OUT_DIR\"), \"/gen.rs\"));\n",
    );
    write(
        &dir.join("embedded/src/lib.rs"),
        "include!(concat!(env!(\"OUT_DIR\"), \"/gen.rs\"));\npub const OUT: &str = env!(\"OUT_DIR\");\n",
    );
    write(
        &dir.join("show/Cargo.toml"),
        "[package]\nname = \"show\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\ngenerated = { path = \"../generated\" }\nembedded = { path = \"../embedded\" }\n",
    );
    write(
        &dir.join("show/src/main.rs"),
        "fn main() {\n    println!(\"{} {}\", generated::GENERATED + embedded::GENERATED, embedded::OUT);\n}\n",
    );
}

/// `OUT_DIR` is keyed normalised: a crate that only `include!`s from it is served to a second
/// checkout (with `base_dir`: the include is recorded as `target/…`); one that compiles the
/// path in is compiled there, and its binary names its own target directory. The second
/// checkout is looked up by the full key (as a machine of a mesh that never built it does):
/// its manifests record the first checkout's exact `OUT_DIR`.
#[test]
fn out_dir_includes_hit_in_a_second_checkout_and_embedded_paths_do_not() {
    let Some(w) = World::new() else { return };
    let base = w.root.path().to_string_lossy().into_owned();
    let one = w.root.path().join("one/ws");
    let two = w.root.path().join("two/deeper/ws");
    write_out_dir_workspace(&one);
    write_out_dir_workspace(&two);
    let env = [
        ("DISTC_BASE_DIR", base.as_str()),
        ("CARGO_TARGET_DIR", ""),
        ("DISTC_DEPEND_MODE", "0"),
    ];
    w.cargo_in(&one, &["build"], &env);
    let first = w.take_compiles();
    for c in ["build_script_build", "embedded", "generated", "show"] {
        assert!(first.contains_key(c), "{c} not compiled: {first:?}");
    }
    w.cargo_in(&two, &["build"], &env);
    let second = w.take_compiles();
    assert_eq!(
        names(&second),
        ["embedded", "show"],
        "only the crate with the path compiled in (and the binary linking it) compile again\n{}",
        w.stats()
    );
    for ck in [&one, &two] {
        let out = Command::new(ck.join("target/debug/show"))
            .output()
            .expect("run show");
        let text = String::from_utf8_lossy(&out.stdout);
        let own = ck.join("target/debug/build");
        assert!(
            text.starts_with("14 ") && text.contains(&*own.to_string_lossy()),
            "{} printed {text}",
            ck.display()
        );
        let lib = std::fs::read_dir(ck.join("target/debug/deps"))
            .expect("deps")
            .filter_map(|e| e.ok())
            .find(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("libgenerated-") && n.ends_with(".rlib")
            })
            .expect("libgenerated rlib");
        let bytes = std::fs::read(lib.path()).expect("read rlib");
        for other in [&one, &two] {
            assert!(
                !contains(&bytes, &other.to_string_lossy()),
                "{} names {}",
                lib.path().display(),
                other.display()
            );
        }
    }
    // Cargo's own fingerprints (the `.d` files name this checkout's OUT_DIR): nothing to do.
    w.cargo_in(&two, &["build"], &env);
    assert!(w.take_compiles().is_empty());
}

/// Direct mode on one machine: a manifest recorded in one checkout (or one target directory)
/// serves another, whose `OUT_DIR` differs. The manifest stores the `OUT_DIR` value and the
/// `include!`d file normalised, re-instantiated with the second build's roots; the crate that
/// compiles the path in is still compiled again, and each binary names its own target directory.
#[test]
fn direct_mode_serves_out_dir_includes_to_a_second_checkout_and_target_dir() {
    let Some(w) = World::new() else { return };
    let base = w.root.path().to_string_lossy().into_owned();
    let one = w.root.path().join("one/ws");
    let two = w.root.path().join("two/deeper/ws");
    write_out_dir_workspace(&one);
    write_out_dir_workspace(&two);
    let env = [("DISTC_BASE_DIR", base.as_str()), ("CARGO_TARGET_DIR", "")];
    w.cargo_in(&one, &["build"], &env);
    let first = w.take_compiles();
    for c in ["build_script_build", "embedded", "generated", "show"] {
        assert!(first.contains_key(c), "{c} not compiled: {first:?}");
    }
    let runs = |bin: &Path, own: &Path| {
        let out = Command::new(bin).output().expect("run show");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("14 ") && text.contains(&*own.to_string_lossy()),
            "{} printed {text}",
            bin.display()
        );
    };
    w.cargo_in(&two, &["build"], &env);
    assert_eq!(
        names(&w.take_compiles()),
        ["embedded", "show"],
        "a second checkout: only the crate with the path compiled in (and the binary)\n{}",
        w.stats()
    );
    runs(
        &two.join("target/debug/show"),
        &two.join("target/debug/build"),
    );
    let elsewhere = w.root.path().join("elsewhere");
    let elsewhere_s = elsewhere.to_string_lossy().into_owned();
    w.cargo_in(
        &one,
        &["build"],
        &[
            ("DISTC_BASE_DIR", base.as_str()),
            ("CARGO_TARGET_DIR", elsewhere_s.as_str()),
        ],
    );
    assert_eq!(
        names(&w.take_compiles()),
        ["embedded", "show"],
        "another target directory: only the crate with the path compiled in (and the binary)\n{}",
        w.stats()
    );
    runs(
        &elsewhere.join("debug/show"),
        &elsewhere.join("debug/build"),
    );
    runs(
        &one.join("target/debug/show"),
        &one.join("target/debug/build"),
    );
}
