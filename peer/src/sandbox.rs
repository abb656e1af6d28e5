//! Where a guest's compile runs: a [bubblewrap](https://github.com/containers/bubblewrap)
//! sandbox that can read nothing but the toolchain, and limits on what the compile may take.
//!
//! The sandbox (`bwrap`): a new root on a tmpfs with every namespace unshared (no network, no
//! other processes, no IPC); `/usr` and the top-level links into it (`/bin`, `/lib`…) read-only,
//! `/etc/ld.so.cache` and `/etc/alternatives` read-only (the dynamic loader and the compiler
//! links need them), a private `/tmp`, minimal `/dev` and `/proc`, and the job's own
//! directory — holding only the preprocessed source — mounted read-write at the requester's
//! working directory, which is also the compile's working directory: the object records that
//! directory in its debug info exactly as a local compile would, so no path needs rewriting.
//! Directives-only input (compiles with debug info) is written under the source's own name
//! instead, which the object records too — in the job directory when the name lies under
//! the working directory, else in a directory of its own, holding only it, mounted at the
//! source's directory ([`source_path`]) — and compiled with `-nostdinc`.
//! A compiler installed outside `/usr` gets its own directory bound read-only as well. The
//! environment is cleared but for `PATH`, `PWD` and the locale variables the request names.
//!
//! Limits (`setrlimit` before `bwrap` starts, inherited by everything in it): CPU time,
//! address space, the size of any file written (the object, the streams), no core dumps; the
//! whole sandbox is killed after a wall-clock limit. Guests run at a lower priority (`nice`)
//! so the machine's own compiles always come first.
//!
//! Without bwrap ([`Isolation::None`], only on the explicit opt-in `serve_unsandboxed`) the
//! compile runs in the job directory with the same limits but can read whatever the peer's
//! user can (`.incbin` in inline assembly reads files): for machines whose members are all
//! trusted with that.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a guest compile is isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// bubblewrap at this path.
    Bwrap(PathBuf),
    /// None (the explicit opt-in `serve_unsandboxed`).
    None,
}

/// What one guest compile may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU seconds.
    pub cpu_secs: u64,
    /// Address space of each process, in bytes.
    pub memory: u64,
    /// Largest file written (object, streams), in bytes.
    pub output: u64,
    /// Wall-clock time before the sandbox is killed.
    pub wall: Duration,
    /// Added niceness.
    pub nice: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_secs: 300,
            memory: 4 << 30,
            output: 256 << 20,
            wall: Duration::from_secs(600),
            nice: 10,
        }
    }
}

/// One compile to run.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// The server's own compiler (as found on its `PATH`; run under that name).
    pub compiler: &'a Path,
    /// `-x` language: `cpp-output` or `c++-cpp-output`.
    pub language: &'a str,
    /// Checked options (see [`crate::offload::check_args`]).
    pub args: &'a [String],
    /// The preprocessed source.
    pub source: &'a [u8],
    /// The requester's working directory (absolute).
    pub cwd: &'a Path,
    /// Environment variables the compile sees besides `PATH` and `PWD`.
    pub env: &'a [(String, String)],
    /// The source's own name (relative to `cwd`, or absolute) for directives-only input
    /// ([`crate::offload::DIRECTIVES_LANGUAGES`]): the source is written there and compiled
    /// under that name, with `-nostdinc`, since the object records it. `None`: a name of
    /// the job's own.
    pub source_name: Option<&'a Path>,
}

/// What a compile gave.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The object, when the compile succeeded and wrote one.
    pub object: Option<Vec<u8>>,
}

/// Why a compile could not be run (not: the compile failed).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot prepare the job directory: {0}")]
    Setup(io::Error),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the compile ran past its wall-clock limit of {0:?} and was killed")]
    Timeout(Duration),
    #[error("an output exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the sandbox failed: {0}")]
    Failed(String),
}

/// Names inside the job directory (which becomes the compile's working directory).
const SOURCE: &str = "distc-job-source";
const OBJECT: &str = "distc-job-object.o";
const STDOUT: &str = "distc-job.stdout";
const STDERR: &str = "distc-job.stderr";

/// bwrap on `PATH`, if it works here (user namespaces may be off): a trivial sandbox is tried.
pub fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())?;
    let ok = Command::new(&path)
        .args(["--unshare-all", "--ro-bind", "/usr", "/usr"])
        .args(top_level_links())
        .args(["--", "/usr/bin/true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(path)
}

/// `/bin`, `/lib`… as they are here: links into `/usr` recreated, directories bound read-only.
fn top_level_links() -> Vec<OsString> {
    let mut out = Vec::new();
    for d in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let p = Path::new(d);
        match fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = fs::read_link(p) {
                    out.extend(["--symlink".into(), target.into_os_string(), d.into()]);
                }
            }
            Ok(m) if m.is_dir() => out.extend(["--ro-bind".into(), d.into(), d.into()]),
            _ => {}
        }
    }
    out
}

/// Directories a compiler installed outside `/usr` needs: the one holding the name it runs
/// under, and the installation prefix of the file that name resolves to.
fn toolchain_dirs(compiler: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut add = |d: Option<&Path>| {
        if let Some(d) = d
            && !d.starts_with("/usr")
            && d != Path::new("/")
            && !dirs.iter().any(|x: &PathBuf| d.starts_with(x))
        {
            dirs.push(d.to_path_buf());
        }
    };
    add(compiler.parent());
    if let Ok(real) = fs::canonicalize(compiler) {
        add(real.parent().and_then(Path::parent));
    }
    dirs
}

/// A working directory the sandbox can mount the job at: absolute, plain components, and not
/// over the toolchain or the system directories.
pub fn mountable_cwd(cwd: &Path) -> bool {
    use std::path::Component;
    cwd.is_absolute()
        && cwd.components().count() > 1
        && cwd
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && ![
            "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/dev",
        ]
        .iter()
        .any(|d| cwd.starts_with(d))
}

/// Where a source named `name` is for a compile at `cwd`: `name` made absolute against
/// `cwd` with `.` and `..` resolved as the kernel does when no link is on the way (none is,
/// in the sandbox). `None` for a name that is empty, not text, or does not end in a file
/// name (`..`, `/`, `/.`).
pub fn source_path(cwd: &Path, name: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let text = name.to_str()?;
    if text.is_empty()
        || text.contains(['\0', '\n'])
        || text.ends_with('/')
        || text.ends_with("/.")
        || !cwd.is_absolute()
    {
        return None;
    }
    if !matches!(name.components().next_back(), Some(Component::Normal(_))) {
        return None;
    }
    let mut out = cwd.to_path_buf();
    for c in name.components() {
        match c {
            Component::RootDir => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Where, in the job, the source of `job` is written, and the directory of its own bound
/// at its parent (`None` when the source lies under the working directory). Errors for a
/// name that cannot be placed.
fn place_source(
    jobdir: &Path,
    isolation: &Isolation,
    job: &Job,
) -> Result<(PathBuf, Option<(tempfile::TempDir, PathBuf)>), SandboxError> {
    let Some(name) = job.source_name else {
        return Ok((jobdir.join(SOURCE), None));
    };
    let bad = |why: &str| SandboxError::Failed(format!("source {}: {why}", name.display()));
    let path = source_path(job.cwd, name).ok_or_else(|| bad("not a plain path"))?;
    // Without a sandbox the job directory is mapped to the working directory by a prefix
    // map of its own, which a map of the command's would not be applied after.
    let mapped =
        |a: &String| a.starts_with("-fdebug-prefix-map=") || a.starts_with("-ffile-prefix-map=");
    if *isolation == Isolation::None && job.args.iter().any(mapped) {
        return Err(bad("a prefix map, without a sandbox"));
    }
    if let Ok(rel) = path.strip_prefix(job.cwd)
        && !rel.as_os_str().is_empty()
    {
        let first = rel.components().next().map(|c| c.as_os_str().to_owned());
        if first.is_some_and(|f| f.as_encoded_bytes().starts_with(b"distc-job")) {
            return Err(bad("the job's own name"));
        }
        if *isolation == Isolation::None && !name.is_relative() {
            return Err(bad("absolute, without a sandbox"));
        }
        return Ok((jobdir.join(rel), None));
    }
    if *isolation == Isolation::None {
        return Err(bad("outside the working directory, without a sandbox"));
    }
    let parent = path.parent().ok_or_else(|| bad("no directory"))?;
    if !mountable_cwd(parent) {
        return Err(bad("its directory cannot be mounted"));
    }
    let dir = tempfile::Builder::new()
        .prefix("distc-job-src-")
        .tempdir()
        .map_err(SandboxError::Setup)?;
    let file = dir
        .path()
        .join(path.file_name().ok_or_else(|| bad("no file name"))?);
    let mount = parent.to_path_buf();
    Ok((file, Some((dir, mount))))
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, SandboxError> {
    match fs::metadata(path) {
        Ok(m) if m.len() > limit => Err(SandboxError::TooLarge(limit)),
        Ok(_) => fs::read(path).map_err(SandboxError::Setup),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SandboxError::Setup(e)),
    }
}

/// Runs `job` isolated as `isolation` says, within `limits`.
pub fn run(isolation: &Isolation, limits: &Limits, job: &Job) -> Result<Finished, SandboxError> {
    let dir = tempfile::Builder::new()
        .prefix("distc-job-")
        .tempdir()
        .map_err(SandboxError::Setup)?;
    let jobdir = dir.path();
    let (file, source_dir) = place_source(jobdir, isolation, job)?;
    if let Some(d) = file.parent() {
        fs::create_dir_all(d).map_err(SandboxError::Setup)?;
    }
    fs::write(&file, job.source).map_err(SandboxError::Setup)?;
    let mut compile: Vec<OsString> = vec!["-x".into(), job.language.into()];
    if job.source_name.is_some() {
        // Nothing from the member's headers (`stdc-predef.h` is read in unless this is
        // given): the input holds every definition the requester's preprocessor made.
        compile.push("-nostdinc".into());
    }
    compile.extend(job.args.iter().map(OsString::from));
    compile.extend([
        "-c".into(),
        job.source_name
            .map_or_else(|| SOURCE.into(), |n| n.as_os_str().to_owned()),
        "-o".into(),
        OBJECT.into(),
    ]);
    let mut cmd = match isolation {
        Isolation::Bwrap(bwrap) => {
            if !mountable_cwd(job.cwd) {
                return Err(SandboxError::Failed(format!(
                    "cannot mount the job at {}",
                    job.cwd.display()
                )));
            }
            let mut c = Command::new(bwrap);
            c.args(["--unshare-all", "--die-with-parent", "--new-session"])
                .args(["--ro-bind", "/usr", "/usr"])
                .args(top_level_links())
                .args(["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"])
                .args(["--ro-bind-try", "/etc/alternatives", "/etc/alternatives"]);
            for d in toolchain_dirs(job.compiler) {
                c.arg("--ro-bind").arg(&d).arg(&d);
            }
            c.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
            // A source outside the working directory: its own directory, holding only it,
            // at the source's directory — first when that holds the working directory (then
            // writable: bwrap makes the working directory's mount point in it).
            let outer = source_dir
                .as_ref()
                .filter(|(_, at)| job.cwd.starts_with(at));
            let inner = source_dir
                .as_ref()
                .filter(|(_, at)| !job.cwd.starts_with(at));
            if let Some((d, at)) = outer {
                c.arg("--bind").arg(d.path()).arg(at);
            }
            c.arg("--bind").arg(jobdir).arg(job.cwd);
            if let Some((d, at)) = inner {
                c.arg("--ro-bind").arg(d.path()).arg(at);
            }
            c.arg("--chdir")
                .arg(job.cwd)
                .arg("--")
                .arg(job.compiler)
                .args(&compile);
            c.env("PWD", job.cwd);
            c
        }
        Isolation::None => {
            let mut c = Command::new(job.compiler);
            // The requester's directory does not exist here: debug info records it anyway.
            let mut map = OsString::from("-fdebug-prefix-map=");
            map.push(jobdir);
            map.push("=");
            map.push(job.cwd);
            c.arg(map).args(&compile).current_dir(jobdir);
            c.env("PWD", jobdir);
            c
        }
    };
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(File::create(jobdir.join(STDOUT)).map_err(SandboxError::Setup)?)
        .stderr(File::create(jobdir.join(STDERR)).map_err(SandboxError::Setup)?);
    let limits_copy = *limits;
    // SAFETY: only async-signal-safe calls (setrlimit, setpriority) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let set = |res, v: u64| {
                let l = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                if libc::setrlimit(res, &l) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            };
            set(libc::RLIMIT_CPU, limits_copy.cpu_secs)?;
            set(libc::RLIMIT_AS, limits_copy.memory)?;
            set(libc::RLIMIT_FSIZE, limits_copy.output)?;
            set(libc::RLIMIT_CORE, 0)?;
            libc::setpriority(libc::PRIO_PROCESS, 0, limits_copy.nice);
            Ok(())
        });
    }
    let program = match isolation {
        Isolation::Bwrap(b) => b.clone(),
        Isolation::None => job.compiler.to_path_buf(),
    };
    let mut child = cmd
        .spawn()
        .map_err(|source| SandboxError::Spawn { program, source })?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > limits.wall => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SandboxError::Timeout(limits.wall));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(SandboxError::Failed(e.to_string())),
        }
    };
    let stdout = read_limited(&jobdir.join(STDOUT), limits.output)?;
    let stderr = read_limited(&jobdir.join(STDERR), limits.output)?;
    // A signal (the CPU limit's SIGXCPU/SIGKILL, or a crash) is a failed compile: 128 + sig.
    let exit_code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    let object = if exit_code == 0 {
        Some(read_limited(&jobdir.join(OBJECT), limits.output)?).filter(|o| !o.is_empty())
    } else {
        None
    };
    Ok(Finished {
        exit_code,
        stdout,
        stderr,
        object,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_placed_where_its_name_resolves_against_the_working_directory() {
        let cwd = Path::new("/w/proj/build");
        let at = |n: &str| source_path(cwd, Path::new(n));
        assert_eq!(at("a.c"), Some(PathBuf::from("/w/proj/build/a.c")));
        assert_eq!(
            at("./sub/a.c"),
            Some(PathBuf::from("/w/proj/build/sub/a.c"))
        );
        assert_eq!(at("../src/a.c"), Some(PathBuf::from("/w/proj/src/a.c")));
        assert_eq!(at("/abs/a.c"), Some(PathBuf::from("/abs/a.c")));
        assert_eq!(at("../../../../a.c"), Some(PathBuf::from("/a.c")));
        for bad in ["", "..", "sub/..", "a.c/.", "/", "a\nb.c", "a\0.c"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
        assert_eq!(source_path(Path::new("rel"), Path::new("a.c")), None);
    }

    /// Without a sandbox only a name under the working directory can be placed; with one, a
    /// name elsewhere gets its own directory, but never over the system's.
    #[test]
    fn names_that_cannot_be_placed_are_refused() {
        let jobdir = tempfile::tempdir().unwrap();
        let job = |name: &'static str| Job {
            compiler: Path::new("/usr/bin/gcc"),
            language: "c",
            args: &[],
            source: b"",
            cwd: Path::new("/w/proj"),
            env: &[],
            source_name: Some(Path::new(name)),
        };
        let bwrap = Isolation::Bwrap(PathBuf::from("/usr/bin/bwrap"));
        let place = |iso: &Isolation, name| {
            place_source(jobdir.path(), iso, &job(name)).map(|(file, dir)| (file, dir.map(|d| d.1)))
        };
        let (file, dir) = place(&Isolation::None, "sub/a.c").unwrap();
        assert_eq!((file, dir), (jobdir.path().join("sub/a.c"), None));
        assert!(place(&Isolation::None, "../a.c").is_err());
        assert!(place(&Isolation::None, "/w/proj/a.c").is_err());
        assert!(place(&bwrap, "distc-job-object.o").is_err());
        let (file, dir) = place(&bwrap, "/w/proj/a.c").unwrap();
        assert_eq!((file, dir), (jobdir.path().join("a.c"), None));
        let (file, dir) = place(&bwrap, "../src/a.c").unwrap();
        assert_eq!(file.file_name().unwrap(), "a.c");
        assert_eq!(dir, Some(PathBuf::from("/w/src")));
        assert!(place(&bwrap, "/usr/include/a.c").is_err());
        assert!(place(&bwrap, "/etc/a.c").is_err());
    }
}
