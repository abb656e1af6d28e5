//! Helpers shared by the integration tests: an isolated distc environment per test and a
//! fake-compiler oracle. Each test binary uses a subset, hence the `dead_code` allowance.
//!
//! The oracle is a shell script per compiler name (`cc`, `c++`, `gcc`, `g++`) placed first on
//! PATH: it appends its arguments to a log and execs the real compiler. Counting the logged
//! compiles (`-c` without `-E`) tells whether the real compiler ran, independently of distc's
//! own counters; [`Sandbox::preprocessor_runs`] and [`Sandbox::compiler_runs`] count `-E` runs
//! and runs of any kind.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The distc binary under test.
pub fn distc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_distc"))
}

/// The repository root (where `demo/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when `tool` is found on PATH.
pub fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false)
}

/// The absolute path of `tool` on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join(tool))
        .find(|p| p.is_file())
}

/// Recursively copies `src` into `dst` (created), skipping `build/` directories.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create destination dir");
    for entry in std::fs::read_dir(src).expect("read source dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let from = entry.path();
        let to = dst.join(&name);
        if entry.file_type().expect("file type").is_dir() {
            if name != "build" {
                copy_dir(&from, &to);
            }
        } else {
            std::fs::copy(&from, &to).expect("copy file");
        }
    }
}

/// The key modes correctness tests run in: (name, `DISTC_DIRECT_MODE`, `DISTC_DEPEND_MODE`).
pub const MODES: &[(&str, &str, &str)] = &[
    ("preprocessor", "0", "0"),
    ("direct", "1", "0"),
    ("depend", "1", "1"),
];

/// An isolated environment: its own DISTC_DIR, config dir, HOME, a work dir, and oracle
/// compilers first on PATH. Everything lives in one tempdir removed on drop.
pub struct Sandbox {
    pub root: tempfile::TempDir,
    /// DISTC_DIR of every command run through [`Sandbox::distc`] / [`Sandbox::command`].
    pub distc_dir: PathBuf,
    /// Scratch directory for sources and outputs; the default working directory.
    pub work: PathBuf,
    /// Directory of the oracle compiler scripts (first on PATH).
    pub bin: PathBuf,
    /// Log the oracle appends one line per real compiler invocation to.
    pub log: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let root = tempfile::tempdir().expect("tempdir");
        let distc_dir = root.path().join("cache");
        let work = root.path().join("work");
        let bin = root.path().join("bin");
        let log = root.path().join("oracle.log");
        for d in [
            &work,
            &bin,
            &root.path().join("home"),
            &root.path().join("config"),
        ] {
            std::fs::create_dir_all(d).expect("create sandbox dir");
        }
        let sandbox = Sandbox {
            root,
            distc_dir,
            work,
            bin,
            log,
        };
        for (name, real) in [
            ("cc", "gcc"),
            ("gcc", "gcc"),
            ("c++", "g++"),
            ("g++", "g++"),
        ] {
            sandbox.add_oracle(name, real);
        }
        sandbox
    }

    /// Installs an oracle script named `name` that logs and execs the real `real` compiler.
    pub fn add_oracle(&self, name: &str, real: &str) -> PathBuf {
        let real_path = which(real).unwrap_or_else(|| panic!("{real} not found on PATH"));
        let script = self.bin.join(name);
        let text = format!(
            "#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> '{}'\nexec '{}' \"$@\"\n",
            self.log.display(),
            real_path.display()
        );
        std::fs::write(&script, text).expect("write oracle script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod oracle");
        script
    }

    /// PATH with the oracle directory first.
    pub fn path_env(&self) -> std::ffi::OsString {
        let mut paths = vec![self.bin.clone()];
        if let Some(old) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&old));
        }
        std::env::join_paths(paths).expect("join PATH")
    }

    /// A command with the sandbox environment, run in the work dir.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && (k.starts_with("DISTC_")
                    || matches!(k, "CC" | "CXX" | "CFLAGS" | "CXXFLAGS" | "MAKEFLAGS"))
            {
                cmd.env_remove(&key);
            }
        }
        cmd.current_dir(&self.work)
            .env("DISTC_DIR", &self.distc_dir)
            .env("DISTC_AUTO_START", "0")
            // Tests share a few loaded cores: a budget generous enough that a live but slow
            // peer is never taken for a hung one. Tests of the budget set their own.
            .env("DISTC_PEER_TIMEOUT_MS", "5000")
            .env("DISTC_CONFIG_DIR", self.root.path().join("config"))
            .env("HOME", self.root.path().join("home"))
            .env("XDG_CONFIG_HOME", self.root.path().join("config"))
            .env("XDG_CACHE_HOME", self.root.path().join("home/.cache"))
            .env("PATH", self.path_env());
        cmd
    }

    /// `distc ARGS…` in the sandbox.
    pub fn distc(&self) -> Command {
        self.command(distc_bin())
    }

    /// Runs `distc ARGS…` in `cwd` and returns its output.
    pub fn run_distc(&self, cwd: &Path, args: &[&str]) -> Output {
        self.distc()
            .current_dir(cwd)
            .args(args)
            .output()
            .expect("run distc")
    }

    /// Every oracle invocation so far, one `name args…` line each.
    pub fn invocations(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Real compiles so far: oracle invocations with `-c` and without `-E`.
    pub fn compiles(&self) -> usize {
        self.invocations()
            .iter()
            .filter(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.contains(&"-c") && !words.contains(&"-E")
            })
            .count()
    }

    /// Preprocessor runs so far: oracle invocations with `-E`.
    pub fn preprocessor_runs(&self) -> usize {
        self.invocations()
            .iter()
            .filter(|l| l.split_whitespace().any(|w| w == "-E"))
            .count()
    }

    /// Every real compiler run so far, of any kind (compile, `-E`, probes of the compiler).
    pub fn compiler_runs(&self) -> usize {
        self.invocations().len()
    }

    /// Writes `text` to `rel` under the work dir, creating its directories.
    pub fn write(&self, rel: &str, text: impl AsRef<[u8]>) {
        let p = self.work.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("create dirs in the work dir");
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// The bytes of `rel` under the work dir.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.work.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Copies `demo/<name>` into the work dir and returns its new path.
    pub fn demo(&self, name: &str) -> PathBuf {
        let src = repo_root().join("demo").join(name);
        let dst = self
            .work
            .join(Path::new(name).file_name().expect("demo name"));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy demo file");
        }
        dst
    }
}

/// Output as text, for assertions and failure messages.
/// Writes a fixture file, creating its directory.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write fixture file");
}

/// Polls `f` every 100 ms until it holds; fails the test, naming `what`, after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Panics with both streams when `out` is not a success.
pub fn assert_ok(out: &Output, what: &str) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}
