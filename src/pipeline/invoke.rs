//! Wrapper mode: `distc gcc ARGS…`, `distc /path/to/cc ARGS…`, or a `gcc -> distc` symlink.
//!
//! This is the hot path of every build, so it uses neither clap nor tokio: recognise the
//! invocation, find the real compiler, load the configuration, open the cache, and hand the
//! command line to its family's entry ([`super::c::run`], [`super::rust::run`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::{InProcess, Outcome, Pipeline, Runner, System};
use crate::cache::Cache;
use crate::compiler::{Family, family_of};
use crate::config::Config;

/// A compiler invocation recognised in `argv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The compiler as named: `gcc`, `/usr/bin/g++`, or the masquerading argv[0] basename.
    pub compiler: OsString,
    /// Arguments after the compiler.
    pub args: Vec<OsString>,
}

/// Decides whether `argv` is a compiler invocation (wrapper mode) or a distc command.
pub fn detect(argv: &[OsString]) -> Option<Invocation> {
    let argv0 = argv.first()?;
    let base = Path::new(argv0).file_name().unwrap_or(argv0);
    if base != "distc" && family_of(base).is_some() {
        // Masquerading: a symlink named like a compiler.
        return Some(Invocation {
            compiler: base.to_os_string(),
            args: argv[1..].to_vec(),
        });
    }
    let first = argv.get(1)?;
    let is_name = family_of(first).is_some() && !first.as_bytes().contains(&b'/');
    let is_path = first.as_bytes().contains(&b'/') && is_executable(Path::new(first));
    (is_name || is_path).then(|| Invocation {
        compiler: first.clone(),
        args: argv[2..].to_vec(),
    })
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Identity of the running distc binary, to never run ourselves as "the real compiler".
fn self_identity() -> Option<(u64, u64)> {
    let exe = std::env::current_exe().ok()?;
    let m = fs::metadata(exe).ok()?;
    Some((m.dev(), m.ino()))
}

fn is_self(path: &Path, me: Option<(u64, u64)>) -> bool {
    // metadata follows every symlink in a chain, so `gcc -> cc -> distc` is recognised.
    match (fs::metadata(path), me) {
        (Ok(m), Some(me)) => (m.dev(), m.ino()) == me,
        _ => false,
    }
}

/// Resolves the real compiler: a path that is not distc itself, or the first `name` on PATH
/// that is not distc (whatever chain of symlinks leads to it).
pub fn resolve_compiler(named: &OsStr) -> Option<PathBuf> {
    let me = self_identity();
    let p = Path::new(named);
    if named.as_bytes().contains(&b'/') && !is_self(p, me) {
        return Some(p.to_path_buf());
    }
    let name = p.file_name()?;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|c| is_executable(c) && !is_self(c, me))
}

/// Wrapper entry point; never returns an error to the caller's build beyond the compiler's own.
pub fn main(inv: Invocation) -> ExitCode {
    run(inv, &System)
}

/// The wrapper inside a distc command's own process (`distc build FILE.rs`: no second distc
/// process on a hit): the same pipeline, with an uncached compiler run as a child; also what
/// the cache did, when the pipeline got that far.
pub(crate) fn in_process(inv: Invocation) -> (ExitCode, Option<Outcome>) {
    let code = run(inv, &InProcess);
    (code, super::outcome::last())
}

fn run(inv: Invocation, runner: &dyn Runner) -> ExitCode {
    let started = SystemTime::now();
    // Logging costs start-up time, so it exists on this path only when asked for.
    if let Some(filter) = std::env::var_os("DISTC_LOG")
        && let Some(filter) = filter.to_str()
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(io::stderr)
            .try_init();
    }
    let Some(real) = resolve_compiler(&inv.compiler) else {
        eprintln!(
            "distc: error: cannot find the compiler {:?} on PATH (other than distc itself); \
             install it or pass its full path",
            inv.compiler
        );
        return ExitCode::from(127);
    };
    // Checked before loading anything, so a disabled cache costs nothing; an unreadable value
    // is left to the load below, which warns and keeps the default (caching on).
    if std::env::var_os("DISTC_DISABLE")
        .and_then(|v| v.to_str().and_then(crate::config::parse_bool))
        == Some(true)
    {
        return runner.exec(&real, &inv.args);
    }
    let cfg = match Config::load_lenient() {
        Ok((c, problems)) => {
            for e in problems {
                eprintln!("distc: warning: {e}; using the default for it");
            }
            c
        }
        Err(e) => {
            eprintln!("distc: warning: {e}; compiling without the cache");
            return runner.exec(&real, &inv.args);
        }
    };
    if cfg.disable {
        return runner.exec(&real, &inv.args);
    }
    let cache = Cache::open(
        &cfg.dir,
        cfg.max_size,
        Duration::from_millis(cfg.peer_timeout_ms),
        cfg.max_entry_size,
    );
    if cfg.auto_start {
        distc_peer::daemon::auto_start(&cfg.dir); // never waits; no-op when a peer runs
    }
    let name = Path::new(&inv.compiler)
        .file_name()
        .unwrap_or(inv.compiler.as_os_str());
    // Until a source is parsed (a link, a probe), the ring names the compile by its compiler.
    cache.set_source(Path::new(name).display());
    let pipeline = Pipeline {
        cfg: &cfg,
        cache: &cache,
        runner,
    };
    match family_of(name) {
        Some(Family::Rustc) => super::rust::run(&pipeline, &real, &inv.args),
        // A path to some other program (e.g. CMake's launcher with /usr/bin/cc): gcc rules.
        _ => super::c::run(&pipeline, real, name, &inv.args, started),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn detect_modes() {
        assert_eq!(
            detect(&v(&["/usr/local/bin/gcc", "-c", "a.c"])),
            Some(Invocation {
                compiler: "gcc".into(),
                args: v(&["-c", "a.c"])
            })
        );
        assert_eq!(
            detect(&v(&["distc", "g++-12", "-c", "a.cc"]))
                .unwrap()
                .compiler,
            OsString::from("g++-12")
        );
        assert_eq!(
            detect(&v(&["distc", "/bin/sh", "-c", "x"]))
                .unwrap()
                .compiler,
            OsString::from("/bin/sh")
        );
        assert!(detect(&v(&["distc", "stats"])).is_none());
        assert!(detect(&v(&["distc"])).is_none());
        assert!(detect(&v(&["/x/distc", "build", "a.c"])).is_none());
    }
}
