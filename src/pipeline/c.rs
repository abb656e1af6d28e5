//! Wrapper mode: `distc gcc ARGS…`, `distc /path/to/cc ARGS…`, or a `gcc -> distc` symlink.
//!
//! This is the hot path of every build, so it uses neither clap nor tokio: parse the command
//! line, compute the key (one `cc -E`, or none in direct mode), replay a hit, or compile, store
//! and replay. Every cache fault degrades to running the real compiler.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime};

use distc_peer::Key;

use crate::cache::bundle::{BUNDLE_VERSION, Bundle, Output, Role};
use crate::cache::stats::Event;
use crate::cache::{Cache, Found, KeyLock, LOCK_WAIT};
use crate::compiler::c::direct;
use crate::compiler::c::key::{self as fingerprint, Context};
use crate::compiler::c::{self as compiler, CompileJob, Parsed};
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

/// Everything one wrapped compile needs, resolved once.
struct Run {
    cfg: Config,
    cache: Cache,
    ctx: Context,
    job: CompileJob,
    /// When the wrapper started: files modified after it are not trusted in manifests.
    started: SystemTime,
    /// The user left diagnostics colour to the compiler's default (colour on a terminal).
    /// Captured stderr is no terminal, so a compile for a terminal gets `-fdiagnostics-color`
    /// (not in the key) and a replay to anything else strips the colour sequences.
    auto_colour: bool,
    stderr_is_tty: bool,
}

/// Whether `args` choose diagnostics colouring themselves (gcc or clang spelling).
pub fn colour_chosen(args: &[OsString]) -> bool {
    args.iter().any(|a| {
        let a = a.as_bytes();
        a.starts_with(b"-fdiagnostics-color")
            || a.starts_with(b"-fno-diagnostics-color")
            || a == b"-fcolor-diagnostics"
            || a == b"-fno-color-diagnostics"
    })
}

/// Wrapper entry point; never returns an error to the caller's build beyond the compiler's own.
pub fn main(inv: Invocation) -> ExitCode {
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
        return exec(&real, &inv.args);
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
            return exec(&real, &inv.args);
        }
    };
    if cfg.disable {
        return exec(&real, &inv.args);
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
    let parsed = match family_of(name) {
        Some(Family::Rustc) => return crate::pipeline::rust::main(&real, &inv.args, &cfg, &cache),
        // A path to some other program (e.g. CMake's launcher with /usr/bin/cc): gcc rules.
        _ => compiler::args::parse(&inv.args, &|p| fs::read(p).ok()),
    };
    let job = match parsed {
        Parsed::Compile(job) => *job,
        Parsed::Uncacheable(reason) => return uncacheable(&cache, &real, &inv.args, reason),
    };
    let cwd = match std::env::current_dir() {
        Ok(c) => c,
        Err(_) => return uncacheable(&cache, &real, &inv.args, "no-cwd"),
    };
    // With base_dir, the compiler runs with the paths under it relative to the working
    // directory (response files expanded), so what it records (debug info, __FILE__, the
    // object's file symbol, the .d file) is the same in every checkout; the key sees the same.
    let (job, args) = match cfg
        .base_dir
        .as_deref()
        .and_then(|base| fingerprint::compile_args(&job.args, base, &cwd))
    {
        Some(rel) => match compiler::args::parse(&rel, &|_| None) {
            Parsed::Compile(j) => (*j, rel),
            Parsed::Uncacheable(_) => (job, inv.args.clone()),
        },
        None => (job, inv.args.clone()),
    };
    cache.set_source(job.source.display());
    if let Some((v, label)) = fingerprint::refused_env() {
        tracing::debug!("{v} is set");
        return uncacheable(&cache, &real, &inv.args, label);
    }
    // `-o /dev/null` (configure checks) or a FIFO: reading it back stores nothing real, and a
    // hit would rename a file over the device. Like ccache, only regular files are outputs.
    let mut outputs = std::iter::once(&job.output).chain(job.dep_file.as_ref().map(|d| &d.path));
    if outputs.any(|p| fs::metadata(p).is_ok_and(|m| !m.is_file())) {
        return uncacheable(&cache, &real, &inv.args, "output-not-a-file");
    }
    let ctx = Context {
        distc_dir: cfg.dir.clone(),
        cwd,
        base_dir: cfg.base_dir.clone(),
        compiler: real,
        invoked_as: name.to_os_string(),
    };
    let auto_colour = !colour_chosen(&job.args);
    let run = Run {
        cfg,
        cache,
        ctx,
        job,
        started,
        auto_colour,
        stderr_is_tty: auto_colour && io::IsTerminal::is_terminal(&io::stderr()),
    };
    run.cached(&args)
}

/// Replaces this process with the real compiler (no cache).
fn exec(real: &Path, args: &[OsString]) -> ExitCode {
    let err = Command::new(real).args(args).exec();
    eprintln!("distc: error: cannot run {}: {err}", real.display());
    ExitCode::from(127)
}

fn uncacheable(cache: &Cache, real: &Path, args: &[OsString], reason: &str) -> ExitCode {
    tracing::debug!("uncacheable: {reason}");
    cache.count(Event::Uncacheable(reason));
    report_result(&format!("uncacheable {reason}"));
    exec(real, args)
}

/// Tells `distc build`/`build-project` what happened, when they asked.
fn report_result(line: &str) {
    if let Some(p) = std::env::var_os(crate::pipeline::RESULT_FILE_ENV) {
        let _ = fs::write(p, format!("{line}\n"));
    }
}

/// The result of a real compile.
struct Compiled {
    bundle: Bundle,
    /// The exit code to return (128 + signal when killed).
    code: i32,
    /// Whether the result may be stored: success and every output present.
    storable: bool,
}

impl Run {
    fn cached(self, orig_args: &[OsString]) -> ExitCode {
        let common = match fingerprint::common_inputs(&self.ctx, &self.job) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot identify the compiler: {e}");
                self.cache.count(Event::Error("compiler-id"));
                return self.compile_uncached(orig_args);
            }
        };

        // Direct mode: the manifest maps header state to a result key without a preprocessor.
        let direct = if self.cfg.direct_mode {
            direct::DirectKey::new(&self.ctx, &self.job, &common)
        } else {
            None
        };
        if let Some(d) = &direct
            && let Some(key) = d.lookup(&self.ctx, &self.job)
            && let Some(found) = self.cache.get(&key)
        {
            return self.replay(found, &key);
        }
        // Nothing usable here: another machine may have shared its manifest for this compile.
        if let Some(d) = &direct
            && let Some((key, found)) = self.shared_manifest_hit(d)
        {
            return self.replay(found, &key);
        }

        // Depend mode: no preprocessor on a miss; the compile's own -MD output lists headers.
        // Only outside a mesh: a result key known before compiling is what peers are asked for.
        if let Some(d) = &direct
            && self.cfg.depend_mode
            && !self.cache.mesh_active()
            && direct::depend_eligible(&self.job)
        {
            return self.depend_miss(d, orig_args);
        }

        let fp = match fingerprint::preprocessor_fingerprint(&self.ctx, &self.job, &common) {
            Ok(fp) => fp,
            Err(fingerprint::PreprocessError::Unlisted(label)) => {
                return uncacheable(&self.cache, &self.ctx.compiler, orig_args, label);
            }
            Err(e) => {
                // The compile will fail the same way and say why; nothing to cache.
                tracing::debug!("{e}");
                return self.compile_uncached(orig_args);
            }
        };
        if let Some(found) = self.cache.get(&fp.key) {
            if let Some(d) = &direct {
                self.record_manifest(d, &fp);
            }
            return self.replay(found, &fp.key);
        }
        self.miss(&fp.key.to_string(), fp.key, orig_args, |run, _| {
            if let Some(d) = &direct {
                run.record_manifest(d, &fp);
            }
            fingerprint::record_inputs(&run.ctx, &run.job.source, &fp);
            Some(fp.key)
        })
    }

    /// Records the direct-mode manifest and, in a mesh, shares it: stored under its shared
    /// key and announced, so the peer replicates it like any entry.
    fn record_manifest(&self, d: &direct::DirectKey, fp: &fingerprint::Fingerprint) {
        if let Some(bytes) = d.record(&self.ctx, &self.job, fp, self.started)
            && self.cache.mesh_active()
        {
            self.cache.put_payload(&d.shared_key(), &bytes);
        }
    }

    /// In a mesh: the manifest another machine shared for this compile, checked against this
    /// machine's files, then the result it names (local store, then mesh). Any doubt is a
    /// `None`, and the caller takes the preprocessor path.
    fn shared_manifest_hit(&self, d: &direct::DirectKey) -> Option<(Key, Found)> {
        let payload = self
            .cache
            .get_remote_payload(&d.shared_key(), direct::MAX_SHARED_MANIFEST as u64)?;
        match d.merge_shared(&self.ctx, &payload, self.started) {
            Ok(Some(key)) => {
                let found = self.cache.get(&key)?;
                Some((key, found))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("manifest from the mesh rejected: {e}");
                self.cache.count(Event::Error("remote-manifest"));
                None
            }
        }
    }

    /// Compile under the per-key lock; `finish` returns the key to store under (computed after
    /// the compile in depend mode).
    fn miss(
        &self,
        lock_name: &str,
        lock_key: Key,
        args: &[OsString],
        finish: impl FnOnce(&Run, &Compiled) -> Option<Key>,
    ) -> ExitCode {
        let (lock, waited) = match KeyLock::acquire(&self.cfg.dir, lock_name, LOCK_WAIT) {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("no key lock: {e}");
                (None, false)
            }
        };
        if waited && let Some(found) = self.cache.get(&lock_key) {
            // Another process compiled it while we waited.
            return self.replay(found, &lock_key);
        }
        let compiled = match self.compile(args, &[]) {
            Ok(c) => c,
            Err(code) => return code,
        };
        if compiled.storable {
            if let Some(key) = finish(self, &compiled) {
                self.cache.put(&key, &compiled.bundle);
            }
            self.cache.count(Event::Miss);
            report_result("miss");
        } else {
            self.cache.count(Event::Uncacheable("compile-failed"));
            report_result("uncacheable compile-failed");
        }
        drop(lock);
        finish_streams(&compiled.bundle, compiled.code, self.strip_colours())
    }

    /// Depend mode miss: compile with `-MD` to learn the headers, key from their contents.
    fn depend_miss(&self, d: &direct::DirectKey, orig_args: &[OsString]) -> ExitCode {
        let lock_name = format!("m{}", d.manifest_key);
        let (lock, waited) =
            KeyLock::acquire(&self.cfg.dir, &lock_name, LOCK_WAIT).unwrap_or((None, false));
        if waited
            && let Some(key) = d.lookup(&self.ctx, &self.job)
            && let Some(found) = self.cache.get(&key)
        {
            return self.replay(found, &key);
        }
        // Our own dependency file when the user asked for none.
        let tmp_dep = match &self.job.dep_file {
            Some(_) => None,
            None => tempfile::Builder::new()
                .prefix("distc-dep-")
                .suffix(".d")
                .tempfile()
                .ok(),
        };
        let extra: Vec<OsString> = match &tmp_dep {
            Some(t) => vec!["-MD".into(), "-MF".into(), t.path().as_os_str().to_owned()],
            None if self.job.dep_file.is_some() => vec![],
            None => return self.compile_uncached(orig_args),
        };
        let compiled = match self.compile(orig_args, &extra) {
            Ok(c) => c,
            Err(code) => return code,
        };
        if compiled.storable {
            let dep_path = tmp_dep
                .as_ref()
                .map(|t| t.path().to_path_buf())
                .or_else(|| self.job.dep_file.as_ref().map(|d| d.path.clone()));
            let fp = match dep_path {
                Some(p) => d.depend_fingerprint_since(&self.ctx, &self.job, &p, Some(self.started)),
                None => Err("no-dependency-file"),
            };
            match fp {
                Ok(fp) => {
                    self.cache.put(&fp.key, &compiled.bundle);
                    self.record_manifest(d, &fp);
                    fingerprint::record_inputs(&self.ctx, &self.job.source, &fp);
                    self.cache.count(Event::Miss);
                    report_result("miss");
                }
                Err(reason) => {
                    self.cache.count(Event::Uncacheable(reason));
                    report_result(&format!("uncacheable {reason}"));
                }
            }
        } else {
            self.cache.count(Event::Uncacheable("compile-failed"));
            report_result("uncacheable compile-failed");
        }
        drop(lock);
        finish_streams(&compiled.bundle, compiled.code, self.strip_colours())
    }

    /// Runs the real compiler with stdout/stderr captured; outputs read back into a bundle.
    fn compile(&self, args: &[OsString], extra: &[OsString]) -> Result<Compiled, ExitCode> {
        let colour: &[&str] = if self.auto_colour && self.stderr_is_tty {
            &["-fdiagnostics-color"]
        } else {
            &[]
        };
        let out = match Command::new(&self.ctx.compiler)
            .args(colour)
            .args(args)
            .args(extra)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!(
                    "distc: error: cannot run {}: {e}",
                    self.ctx.compiler.display()
                );
                return Err(ExitCode::from(127));
            }
        };
        let code = match (out.status.code(), out.status.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 1,
        };
        let mut bundle = Bundle {
            version: BUNDLE_VERSION,
            outputs: Vec::new(),
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: code,
        };
        let mut storable = out.status.success();
        if storable {
            match fs::read(&self.job.output) {
                Ok(data) => bundle.outputs.push(Output {
                    role: Role::Object,
                    data,
                }),
                Err(_) => storable = false,
            }
            if let Some(dep) = &self.job.dep_file {
                match fs::read(&dep.path) {
                    Ok(data) => bundle.outputs.push(Output {
                        role: Role::DepFile,
                        data: self.store_depfile(data),
                    }),
                    Err(_) => storable = false,
                }
            }
        }
        Ok(Compiled {
            bundle,
            code,
            storable,
        })
    }

    /// With `base_dir`, dependency files are stored with paths under it relative to the working
    /// directory, so another checkout gets paths of its own.
    fn store_depfile(&self, data: Vec<u8>) -> Vec<u8> {
        match &self.ctx.base_dir {
            Some(base) => rewrite_depfile(&data, base, &self.ctx.cwd),
            None => data,
        }
    }

    /// A stored result may hold colours added for a terminal; not for this stderr.
    fn strip_colours(&self) -> bool {
        self.auto_colour && !self.stderr_is_tty
    }

    fn compile_uncached(&self, args: &[OsString]) -> ExitCode {
        report_result("uncacheable no-key");
        exec(&self.ctx.compiler, args)
    }

    /// Writes a found bundle's outputs and streams, exits with its status.
    fn replay(&self, found: Found, key: &Key) -> ExitCode {
        let (bundle, remote) = match found {
            Found::Local(b) => (b, false),
            Found::Remote(b) => (b, true),
        };
        if let Err(e) = self.write_outputs(&bundle) {
            tracing::warn!("cannot replay cached result {key}: {e}");
            self.cache.count(Event::Error("replay"));
            return self.compile_uncached(&self.job.args);
        }
        self.cache.count(if remote {
            Event::RemoteHit
        } else {
            Event::LocalHit
        });
        report_result(if remote { "remote-hit" } else { "hit" });
        finish_streams(&bundle, bundle.exit_code, self.strip_colours())
    }

    fn write_outputs(&self, bundle: &Bundle) -> io::Result<()> {
        let obj = bundle
            .output(Role::Object)
            .ok_or_else(|| io::Error::other("cached result has no object"))?;
        if let Some(dep) = &self.job.dep_file {
            let data = bundle
                .output(Role::DepFile)
                .ok_or_else(|| io::Error::other("cached result has no dependency file"))?;
            crate::cache::bundle::write_atomic(&dep.path, data)?;
        }
        crate::cache::bundle::write_atomic(&self.job.output, obj)
    }
}

/// Replays stdout/stderr and turns the recorded status into our exit code.
fn finish_streams(bundle: &Bundle, code: i32, strip_colours: bool) -> ExitCode {
    let _ = bundle.replay_streams_with(strip_colours);
    let _ = io::stdout().flush();
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Rewrites absolute paths under `base` in a make dependency file to paths relative to `cwd`.
pub fn rewrite_depfile(data: &[u8], base: &Path, cwd: &Path) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let at_token_start = i == 0 || matches!(data[i - 1], b' ' | b'\t' | b'\n');
        if at_token_start && data[i] == b'/' {
            let end = data[i..]
                .iter()
                .position(|c| matches!(c, b' ' | b'\t' | b'\n' | b':'))
                .map_or(data.len(), |p| i + p);
            let tok = Path::new(OsStr::from_bytes(&data[i..end]));
            match fingerprint::relativize(tok, base, cwd) {
                Some(rel) => out.extend_from_slice(rel.as_os_str().as_bytes()),
                None => out.extend_from_slice(&data[i..end]),
            }
            i = end;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
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

    #[test]
    fn depfile_rewrite() {
        let d = b"/b/p/a.o: /b/p/a.c /b/p/inc/h.h \\\n /usr/include/stdio.h\n";
        let r = rewrite_depfile(d, Path::new("/b"), Path::new("/b/p"));
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "a.o: a.c inc/h.h \\\n /usr/include/stdio.h\n"
        );
    }
}
