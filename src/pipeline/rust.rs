//! Wrapper mode for rustc: `RUSTC_WRAPPER=distc cargo build` runs `distc /path/to/rustc ARGS…`.
//!
//! Flow: parse ([`crate::compiler::rust::args`]); non-compiles (`-vV`, `--print`, stdin) are
//! `exec`ed at once. Otherwise: rustc identity (memoised) -> the key inputs known before
//! compiling -> direct mode ([`crate::compiler::rust::direct`]): the manifest's result key, when its
//! env-deps and source files still match -> the tiered lookup of [`crate::cache::Cache`] ->
//! replay. Without a usable manifest entry: rustc's dep-info pass -> key ([`crate::compiler::rust::key`])
//! -> lookup -> replay, or compile, collect every output of the crate, store; both record a
//! manifest entry. Like the C wrapper, every cache fault degrades to
//! running rustc, and no tokio or clap is involved.
//!
//! Outputs are stored by file name relative to the output directory. Text that names paths
//! (the `.d` file, the diagnostics and cargo's JSON `artifact` notices on stderr) is stored with
//! the output directory and the working directory replaced by placeholders, and replayed with
//! the requester's own.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use distc_peer::Key;
use serde::{Deserialize, Serialize};

use super::{Command, Family, Finished, NoKey, Outcome, Pipeline, Skip, System};
use crate::cache::Cache;
use crate::cache::bundle::{BUNDLE_VERSION, Bundle, Output, Role};
use crate::cache::stats::Event;
use crate::compiler::rust::args::{self as rustc, CrateType, Emit, RustJob, RustParsed};
use crate::compiler::rust::direct::RustDirect;
use crate::compiler::rust::key::{
    self as rust_key, DepInfo, KeyContext, KeyParts, RustKeyError, RustcId,
};
use crate::config::Config;

/// Environment variable naming a file to which every rustc invocation appends one line
/// `<outcome> <crate> <types> <ms>`: how `distc build-project` reports per-crate hits.
pub const CRATE_LOG_ENV: &str = "DISTC_CRATE_LOG";

/// Placeholder for the output directory in stored text.
const OUT_TOKEN: &[u8] = b"\x01distc:out-dir\x01";
/// Placeholder for the working directory in stored text.
const CWD_TOKEN: &[u8] = b"\x01distc:cwd\x01";
/// Placeholder for cargo's target directory in stored text (`OUT_DIR` files in the `.d` file).
const TARGET_TOKEN: &[u8] = b"\x01distc:target\x01";

/// Largest encoded file list we decode.
const MAX_FILES: usize = 1 << 30;

/// [`RustFiles`] as encoded, borrowing names and contents from the stored bytes: what a hit
/// decodes, so the crate's files are written from the entry's buffer without a copy.
#[derive(Deserialize)]
struct RustFilesView<'a> {
    #[serde(borrow)]
    files: Vec<RustFileView<'a>>,
}

#[derive(Deserialize)]
struct RustFileView<'a> {
    name: &'a str,
    exec: bool,
    templated: bool,
    data: &'a [u8],
}

/// The files of one crate compile, as stored in [`Role::RustFiles`] (read back as
/// [`RustFilesView`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct RustFiles {
    files: Vec<RustFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct RustFile {
    /// Name relative to the output directory (or `-o` for the single link output: empty).
    name: String,
    /// Executable (binaries, shared objects).
    exec: bool,
    /// Stored with path placeholders (the `.d` file).
    templated: bool,
    #[serde(serialize_with = "crate::cache::bundle::bytes::serialize")]
    data: Vec<u8>,
}

/// Replaces every occurrence of `from` in `data` by `to`.
fn replace_bytes(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() || data.len() < from.len() {
        return data.to_vec();
    }
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// The roots that stored text is made independent of: the output directory, cargo's target
/// directory (where `OUT_DIR`s lie; empty when the output directory is not cargo's) and the
/// working directory.
struct Roots {
    out_dir: Vec<u8>,
    target: Vec<u8>,
    cwd: Vec<u8>,
}

impl Roots {
    fn new(cwd: &Path, job: &RustJob) -> Roots {
        use std::os::unix::ffi::OsStrExt;
        let out = job
            .out_dir
            .as_ref()
            .map(|o| cwd.join(o))
            .unwrap_or_else(|| cwd.to_path_buf());
        let target = rust_key::cargo_dirs(&out)
            .map(|(t, _)| t)
            .unwrap_or_default();
        Roots {
            out_dir: out.as_os_str().as_bytes().to_vec(),
            target: target.as_os_str().as_bytes().to_vec(),
            cwd: cwd.as_os_str().as_bytes().to_vec(),
        }
    }

    fn pairs(&self) -> [(&[u8], &'static [u8]); 3] {
        [
            (&self.out_dir, OUT_TOKEN),
            (&self.target, TARGET_TOKEN),
            (&self.cwd, CWD_TOKEN),
        ]
    }

    /// Absolute roots -> placeholders; the longer (more specific) root first.
    fn template(&self, data: &[u8]) -> Vec<u8> {
        let mut pairs = self.pairs();
        pairs.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let mut d = data.to_vec();
        for (root, token) in pairs {
            if root.len() > 1 {
                d = replace_bytes(&d, root, token);
            }
        }
        d
    }

    fn instantiate(&self, data: &[u8]) -> Vec<u8> {
        let mut d = data.to_vec();
        for (root, token) in self.pairs() {
            // Only a compile with a cargo output directory stores the target token, and the
            // key (normalised `OUT_DIR`, sources under `$PROFILE`) then says this one has one.
            if !root.is_empty() {
                d = replace_bytes(&d, token, root);
            }
        }
        d
    }
}

/// A rustc command line through the pipeline (`real` is the program named, perhaps a driver).
pub(crate) fn run(p: &Pipeline<'_>, real: &Path, args: &[OsString]) -> ExitCode {
    let started = Instant::now();
    if !is_rustc(real) {
        return driver(p, real, args, started);
    }
    // Files modified from now on may not be what rustc reads: direct mode does not record them.
    let started_wall = SystemTime::now();
    let job = match rustc::parse(args, &|p| fs::read(p).ok()) {
        RustParsed::Compile(job) => {
            p.cache.set_source(job.describe());
            *job
        }
        RustParsed::NotCompile => {
            // No stats write, no report: cargo probes rustc this way several times per build.
            return p.runner.exec(real, args);
        }
        RustParsed::Uncacheable(reason) => {
            return turn_away(p, real, args, NoKey::uncacheable(reason), None, started);
        }
    };
    let cwd = match std::env::current_dir() {
        Ok(c) => c,
        Err(_) => {
            return turn_away(
                p,
                real,
                args,
                NoKey::uncacheable("no-cwd"),
                Some(&job),
                started,
            );
        }
    };
    let remapped = with_base_dir_remap(p.cfg, &cwd, &job);
    let remapped_args: Vec<OsString>;
    let (job, args) = match remapped {
        Some((j, a)) => {
            remapped_args = a;
            (j, remapped_args.as_slice())
        }
        None => (job, args),
    };
    let id = match rust_key::rustc_identity(p.runner, &p.cfg.dir, real) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!("cannot identify rustc: {e}");
            let no = NoKey {
                reason: "compiler-id",
                error: Some("compiler-id"),
            };
            return turn_away(p, real, args, no, Some(&job), started);
        }
    };
    let env_names = env_names();
    let env = |k: &str| std::env::var_os(k);
    let ctx = KeyContext {
        runner: p.runner,
        distc_dir: &p.cfg.dir,
        cwd: &cwd,
        base_dir: p.cfg.base_dir.as_deref(),
        id: &id,
        env: &env,
        env_names: &env_names,
    };
    let parts = match rust_key::key_parts(&ctx, &job) {
        Ok(parts) => parts,
        // Compile with the toolchain's rustc itself, not a rustup proxy that could pick another.
        Err(e) => return turn_away(p, &id.real, args, no_key(&job, e), Some(&job), started),
    };
    let f = RustFamily::new(p.cfg, ctx, &job, &parts, args, started, started_wall);
    p.run(&f)
}

/// One rustc compile, resolved once.
pub(crate) struct RustFamily<'a> {
    ctx: KeyContext<'a>,
    job: &'a RustJob,
    /// The key inputs known before rustc's dep-info pass.
    parts: &'a KeyParts,
    args: &'a [OsString],
    direct: Option<RustDirect>,
    roots: Roots,
    /// For the per-crate log.
    started: Instant,
    /// Files modified from then on may not be what rustc read.
    started_wall: SystemTime,
    /// Set by `store_key` when the result is path-dependent: its manifest entry then matches
    /// env-deps exactly.
    path_dependent: std::cell::Cell<bool>,
}

impl<'a> RustFamily<'a> {
    fn new(
        cfg: &Config,
        ctx: KeyContext<'a>,
        job: &'a RustJob,
        parts: &'a KeyParts,
        args: &'a [OsString],
        started: Instant,
        started_wall: SystemTime,
    ) -> RustFamily<'a> {
        // Direct mode: a manifest maps what is known now (plus the env-deps and source files it
        // lists) to the result key, without rustc's dep-info pass.
        let direct = if cfg.direct_mode {
            RustDirect::new(&ctx, job, parts)
        } else {
            None
        };
        RustFamily {
            roots: Roots::new(ctx.cwd, job),
            ctx,
            job,
            parts,
            args,
            direct,
            started,
            started_wall,
            path_dependent: std::cell::Cell::new(false),
        }
    }
}

impl Family for RustFamily<'_> {
    /// The dep-info (sources and env-deps) and each source's digest.
    type Inputs = (DepInfo, Vec<[u8; 32]>);
    type Depend = DependOut;

    fn describe(&self) -> String {
        self.job.describe()
    }

    fn original(&self) -> (&Path, &[OsString]) {
        (&self.ctx.id.real, self.args)
    }

    fn manifest_lookup(&self) -> Option<Key> {
        self.direct.as_ref()?.lookup(self.ctx.env)
    }

    /// A miss outside a mesh compiles at once and learns the sources from the compile's own
    /// dep-info, so a cold build pays rustc's front end once.
    fn depend(&self) -> Option<DependOut> {
        if self.direct.as_ref()?.unreadable() {
            return None;
        }
        DependOut::new(self.job, self.ctx.cwd)
    }

    fn manifest_lock(&self) -> String {
        match &self.direct {
            Some(d) => format!("m{}", d.manifest_key),
            None => "m".into(),
        }
    }

    fn depend_key(&self, out: &DependOut) -> Result<(Key, Self::Inputs), &'static str> {
        let text = fs::read_to_string(&out.path).map_err(|_| "no-dep-info")?;
        let dep = rust_key::parse_dep_info(&text);
        let (digests, sources) =
            self.parts
                .sources_read_before(&self.ctx, &dep, self.started_wall)?;
        let key = self.parts.inputs(&self.ctx, self.job, &dep, sources).key();
        Ok((key, (dep, digests)))
    }

    fn full_key(&self) -> Result<(Key, Self::Inputs), NoKey> {
        let dep =
            rust_key::run_dep_info(self.ctx.runner, &self.ctx.id.real, self.job, self.ctx.cwd)
                .map_err(|e| no_key(self.job, e))?;
        let (digests, sources) = self
            .parts
            .sources(&self.ctx, &dep)
            .map_err(|e| no_key(self.job, e))?;
        let key = self.parts.inputs(&self.ctx, self.job, &dep, sources).key();
        Ok((key, (dep, digests)))
    }

    fn record(&self, _cache: &Cache, key: &Key, (dep, digests): &Self::Inputs, _stored: bool) {
        if let Some(d) = &self.direct {
            d.record(
                dep,
                digests,
                key,
                self.started_wall,
                self.ctx.env,
                self.path_dependent.get(),
            );
        }
    }

    fn command(&self, depend: Option<&DependOut>) -> Command {
        let mut args = self.args.to_vec();
        if let Some(d) = depend {
            args.extend(d.extra.iter().cloned());
        }
        Command {
            null_stdin: true,
            ..Command::new(self.ctx.id.real.clone(), args)
        }
    }

    /// Our own dep-info file's JSON artifact notice (`--json=artifacts`) is dropped from
    /// stderr, so the requester sees exactly what it asked for.
    fn tidy(&self, mut done: Finished, depend: Option<&DependOut>) -> Finished {
        let hide = depend.and_then(|d| d.temp.as_ref().map(|_| d.path.as_path()));
        done.stderr = drop_artifact_notice(std::mem::take(&mut done.stderr), hide);
        done
    }

    fn collect(&self, done: &Finished) -> Result<Bundle, Skip> {
        let files = collect(self.job, self.ctx.cwd, &self.roots).map_err(|missing| {
            // E.g. a `#![crate_type]` attribute chose other outputs than the command line says.
            tracing::debug!("{} wrote no {missing}; not cached", self.job.describe());
            Skip::Uncacheable("unexpected-outputs")
        })?;
        let data = distc_peer::codec::encode(&files).map_err(|e| {
            tracing::warn!("cannot encode the outputs of {}: {e}", self.job.describe());
            Skip::Error("encode")
        })?;
        Ok(Bundle {
            version: BUNDLE_VERSION,
            outputs: vec![Output {
                role: Role::RustFiles,
                data: data.into(),
            }],
            stdout: self.roots.template(&done.stdout),
            stderr: self.roots.template(&done.stderr),
            exit_code: done.code,
        })
    }

    /// A result whose outputs contain a path-valued env-dep verbatim (`env!("OUT_DIR")` as a
    /// string) is not path-free: it is stored under the key with the exact values.
    fn store_key(&self, key: Key, (dep, _): &Self::Inputs, bundle: &Bundle) -> Key {
        let values = self.parts.normalised_env_values(dep);
        let leaks = |hay: &[u8]| {
            values
                .iter()
                .any(|v| memchr::memmem::find(hay, v.as_bytes()).is_some())
        };
        let in_outputs = bundle.outputs.iter().any(|o| leaks(&o.data))
            || leaks(&bundle.stdout)
            || leaks(&bundle.stderr);
        if !in_outputs {
            return key;
        }
        tracing::debug!(
            "{}: the outputs contain a path-valued env-dep; stored for these paths only",
            self.job.describe()
        );
        self.path_dependent.set(true);
        rust_key::path_dependent_key(&key, dep)
    }

    fn print(&self, done: &Finished) {
        let _ = std::io::stdout().lock().write_all(&done.stdout);
        let _ = std::io::stderr().lock().write_all(&done.stderr);
    }

    fn replay_outputs(&self, bundle: &Bundle) -> Result<(), String> {
        replay_files(bundle, self.job, self.ctx.cwd, &self.roots)
    }

    /// The stored streams with this requester's paths.
    fn replay_streams(&self, bundle: &Bundle) {
        let out = self.roots.instantiate(&bundle.stdout);
        let err = self.roots.instantiate(&bundle.stderr);
        let _ = std::io::stdout().lock().write_all(&out);
        let _ = std::io::stderr().lock().write_all(&err);
    }

    fn log(&self, outcome: &Outcome) {
        crate_log(outcome, self.job, self.started);
    }
}

/// With `base_dir`, the remap that makes what rustc records independent of where the checkout
/// lies: `--remap-path-prefix=CWD=.` when the working directory is under `base_dir` (cargo
/// runs rustc in the workspace root for workspace members and passes relative source paths),
/// so debug info records `.` as the compilation directory and absolute paths under the
/// working directory become `./…`; relative paths (panic locations, `file!()`) are as cargo
/// passed them. Crates compiled in `CARGO_HOME` (crates.io and git sources, absolute paths)
/// map their package directory to its name (`itoa-1.0.10`), as cargo's `trim-paths` does.
/// Then cargo's target directory maps to `target` (`include!`s of `OUT_DIR` files). They come
/// first: a user's `--remap-path-prefix` given later takes precedence in rustc. `None`
/// outside `base_dir`.
fn base_dir_remap(base: &Path, cwd: &Path, job: &RustJob) -> Option<Vec<OsString>> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let to = match cargo_home {
        Some(h) if cwd.starts_with(h.join("registry")) || cwd.starts_with(h.join("git")) => {
            cwd.file_name()?.to_str()?.to_string()
        }
        _ if cwd.starts_with(base) => ".".to_string(),
        _ => return None,
    };
    let remap = |from: &Path, to: &str| {
        let from = from.to_str().filter(|f| !f.contains('='))?;
        Some(OsString::from(format!("--remap-path-prefix={from}={to}")))
    };
    let mut args = vec![remap(cwd, &to)?];
    // Build-script output (`OUT_DIR`) lies in the target directory, which may be outside the
    // working directory (crates.io crates, `CARGO_TARGET_DIR`): `include!`d files there are
    // recorded as `target/…`. Given after the working directory's, so it wins for paths
    // under both (rustc applies the last matching remap).
    if let Some((target, _)) = job
        .out_dir
        .as_ref()
        .and_then(|o| rust_key::cargo_dirs(&cwd.join(o)))
        && let Some(a) = remap(&target, "target")
    {
        args.push(a);
    }
    Some(args)
}

/// `job` with [`base_dir_remap`] in front of its arguments (and those arguments), when it
/// applies.
fn with_base_dir_remap(
    cfg: &Config,
    cwd: &Path,
    job: &RustJob,
) -> Option<(RustJob, Vec<OsString>)> {
    let mut a = base_dir_remap(cfg.base_dir.as_deref()?, cwd, job)?;
    a.extend(job.args.iter().cloned());
    match rustc::parse(&a, &|_| None) {
        RustParsed::Compile(j) => Some((*j, a)),
        _ => None,
    }
}

/// Where depend mode finds the dep-info of the compile itself.
pub(crate) struct DependOut {
    /// The dep-info file rustc writes.
    path: PathBuf,
    /// Extra arguments for rustc (empty when the job asks for dep-info itself).
    extra: Vec<OsString>,
    /// Our own directory for it (removed on drop), when the job asks for none.
    temp: Option<tempfile::TempDir>,
}

impl DependOut {
    /// `None` when depend mode cannot learn this job's sources without changing its outputs:
    /// then the dep-info pass runs first, as inside a mesh.
    fn new(job: &RustJob, cwd: &Path) -> Option<DependOut> {
        if let Some(name) = job.dep_info_name() {
            return Some(DependOut {
                path: target_path(job, cwd, &name),
                extra: Vec::new(),
                temp: None,
            });
        }
        if !job.extra_dep_info_is_neutral() {
            return None;
        }
        // Not named like the dep-info pass's directory (`distc-depinfo-`): this is a compile.
        let temp = tempfile::Builder::new()
            .prefix("distc-rustdep-")
            .tempdir()
            .ok()?;
        let path = temp.path().join("crate.d");
        let emit = job.emit_with_dep_info(&path)?;
        Some(DependOut {
            path,
            extra: vec![emit],
            temp: Some(temp),
        })
    }
}

/// `stderr` without cargo-JSON artifact notices naming `path`.
fn drop_artifact_notice(stderr: Vec<u8>, path: Option<&Path>) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = path else {
        return stderr;
    };
    let needle = path.as_os_str().as_bytes();
    if !stderr.windows(needle.len()).any(|w| w == needle) {
        return stderr;
    }
    let mut out = Vec::with_capacity(stderr.len());
    for line in stderr.split_inclusive(|b| *b == b'\n') {
        let notice = line.starts_with(b"{\"$message_type\":\"artifact\"")
            && line.windows(needle.len()).any(|w| w == needle);
        if !notice {
            out.extend_from_slice(line);
        }
    }
    out
}

fn is_rustc(program: &Path) -> bool {
    program
        .file_name()
        .and_then(crate::compiler::family_of)
        .is_some_and(|f| f == crate::compiler::Family::Rustc)
        && program.file_name().is_some_and(|n| n != "clippy-driver")
}

/// A driver in front of rustc: `cargo clippy` runs `distc clippy-driver /path/to/rustc ARGS…`
/// for workspace members (RUSTC_WORKSPACE_WRAPPER). Its output (lints) is not rustc's, so it
/// is never cached and never served from rustc's results: probes are `exec`ed uncounted,
/// compiles pass through as `clippy`.
fn driver(p: &Pipeline<'_>, real: &Path, args: &[OsString], started: Instant) -> ExitCode {
    let rest = match args.first() {
        Some(first)
            if Path::new(first)
                .file_name()
                .and_then(crate::compiler::family_of)
                == Some(crate::compiler::Family::Rustc) =>
        {
            &args[1..]
        }
        _ => args,
    };
    let clippy = NoKey::uncacheable("clippy");
    match rustc::parse(rest, &|p| fs::read(p).ok()) {
        RustParsed::NotCompile => p.runner.exec(real, args),
        RustParsed::Compile(job) => turn_away(p, real, args, clippy, Some(&job), started),
        RustParsed::Uncacheable(_) => turn_away(p, real, args, clippy, None, started),
    }
}

/// Why the key could not be computed.
fn no_key(job: &RustJob, e: RustKeyError) -> NoKey {
    if let RustKeyError::DepInfo { .. } = e {
        // A compile error: the real compile reports it.
        return NoKey::uncacheable("compile-failed");
    }
    tracing::warn!("cannot compute the key of {}: {e}", job.describe());
    NoKey {
        reason: "no-key",
        error: Some("rust-key"),
    }
}

/// Counts and reports a compile not cached before the pipeline runs, then runs rustc in place
/// of this process.
fn turn_away(
    p: &Pipeline<'_>,
    real: &Path,
    args: &[OsString],
    no: NoKey,
    job: Option<&RustJob>,
    started: Instant,
) -> ExitCode {
    if let Some(e) = no.error {
        p.cache.count(Event::Error(e));
    }
    tracing::debug!("rustc compile not cached: {}", no.reason);
    let outcome = Outcome::Uncacheable(no.reason.into());
    p.cache.count(outcome.event());
    outcome.report();
    match job {
        Some(job) => crate_log(&outcome, job, started),
        // Not parsed into a job (e.g. `incremental`), but a crate compile all the same: the
        // per-crate log must count it.
        None => {
            if let Some(name) = option_value(args, "--crate-name") {
                let types = if args.iter().any(|a| a == "--test") {
                    "test".to_string()
                } else {
                    option_value(args, "--crate-type").unwrap_or_else(|| "bin".into())
                };
                log_crate(&outcome, &name, &types, started);
            }
        }
    }
    p.runner.exec(real, args)
}

/// Tells `distc build-project` (one line per crate), when it asked.
fn crate_log(outcome: &Outcome, job: &RustJob, started: Instant) {
    let types: Vec<&str> = if job.test {
        vec!["test"]
    } else {
        job.crate_types.iter().map(|t| t.name()).collect()
    };
    log_crate(outcome, &job.crate_name, &types.join(","), started);
}

/// Appends `outcome crate types ms` to the per-crate log, when `distc build-project` asked.
fn log_crate(outcome: &Outcome, crate_name: &str, types: &str, started: Instant) {
    if let Some(p) = std::env::var_os(CRATE_LOG_ENV) {
        // One short write with O_APPEND: lines from parallel rustc processes never interleave.
        let line = format!(
            "{outcome} {crate_name} {types} {}\n",
            started.elapsed().as_millis()
        );
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The value of `--name VALUE` or `--name=VALUE` in a rustc command line (the first one), with
/// no whitespace in it (the crate log is split on whitespace).
fn option_value(args: &[OsString], name: &str) -> Option<String> {
    let mut it = args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        let v = if a == name {
            it.next()
        } else {
            a.strip_prefix(name).and_then(|r| r.strip_prefix('='))
        };
        if let Some(v) = v {
            return Some(v.split_whitespace().collect::<Vec<_>>().join(""));
        }
    }
    None
}

/// The key of `job` and its labelled inputs (for `distc inspect`).
pub fn compute_key(
    cfg: &Config,
    cwd: &Path,
    id: &RustcId,
    job: &RustJob,
) -> Result<(Key, Vec<(String, String)>), RustKeyError> {
    let remapped = with_base_dir_remap(cfg, cwd, job);
    let job = remapped.as_ref().map_or(job, |(j, _)| j);
    let dep: DepInfo = rust_key::run_dep_info(&System, &id.real, job, cwd)?;
    let env_names = env_names();
    let env = |k: &str| std::env::var_os(k);
    let ctx = KeyContext {
        runner: &System,
        distc_dir: &cfg.dir,
        cwd,
        base_dir: cfg.base_dir.as_deref(),
        id,
        env: &env,
        env_names: &env_names,
    };
    let inputs = rust_key::key_inputs(&ctx, job, &dep)?;
    Ok((inputs.key(), inputs.listing()))
}

/// Where a stored file goes for this requester.
fn target_path(job: &RustJob, cwd: &Path, name: &str) -> PathBuf {
    if name.is_empty()
        && let Some(o) = &job.out_file
    {
        return cwd.join(o);
    }
    let dir = job
        .out_dir
        .as_ref()
        .map(|o| cwd.join(o))
        .unwrap_or_else(|| cwd.to_path_buf());
    dir.join(name)
}

/// Writes every stored file of a hit into this requester's output directory.
fn replay_files(bundle: &Bundle, job: &RustJob, cwd: &Path, roots: &Roots) -> Result<(), String> {
    let data = bundle
        .output(Role::RustFiles)
        .ok_or("the entry holds no Rust outputs")?;
    let files: RustFilesView<'_> =
        distc_peer::codec::decode(data, MAX_FILES).map_err(|e| e.to_string())?;
    // The entry must hold exactly what this job writes (names are keyed, so they match).
    let mut expected = job.output_names();
    if job.out_file.is_some() {
        expected.push(String::new());
    }
    for name in &expected {
        if !files.files.iter().any(|f| f.name == name) {
            return Err(format!("the entry lacks {name:?}"));
        }
    }
    for f in &files.files {
        if f.name.contains('/') || f.name == ".." {
            return Err(format!("refusing output name {:?}", f.name));
        }
        let path = target_path(job, cwd, f.name);
        let data = if f.templated {
            std::borrow::Cow::Owned(roots.instantiate(f.data))
        } else {
            std::borrow::Cow::Borrowed(f.data)
        };
        crate::util::write_output(&path, &data)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if f.exec {
            let mode = fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0o644);
            // Executable wherever readable (the umask already shaped the read bits); an
            // executable left in place by `write_output` usually is already.
            let exec_bits = (mode & 0o444) >> 2;
            if mode | exec_bits != mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode | exec_bits))
                    .map_err(|e| format!("cannot make {} executable: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Reads every output of the crate back; `Err(name)` when one is missing.
fn collect(job: &RustJob, cwd: &Path, roots: &Roots) -> Result<RustFiles, String> {
    let mut names: Vec<String> = job.output_names();
    if job.out_file.is_some() {
        names.push(String::new());
    }
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = target_path(job, cwd, &name);
        let data = fs::read(&path).map_err(|_| path.display().to_string())?;
        let is_dep = job.emit.contains(&Emit::DepInfo) && name.ends_with(".d");
        let exec = if name.is_empty() {
            job.crate_types.iter().any(|t| t.links())
        } else {
            job.crate_types.iter().any(|t| {
                matches!(
                    t,
                    CrateType::Bin | CrateType::Dylib | CrateType::Cdylib | CrateType::ProcMacro
                )
            }) && !name.ends_with(".rlib")
                && !name.ends_with(".rmeta")
                && !name.ends_with(".d")
                && !name.ends_with(".a")
        };
        files.push(RustFile {
            data: if is_dep { roots.template(&data) } else { data },
            name,
            exec,
            templated: is_dep,
        });
    }
    Ok(RustFiles { files })
}

/// Names of this process's environment variables (the key inspects some of them).
fn env_names() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_round_trip_to_another_checkout() {
        let job = match rustc::parse(
            &[
                "--crate-name",
                "a",
                "src/lib.rs",
                "--crate-type",
                "lib",
                "--emit=dep-info,link",
                "--out-dir",
                "/w1/target/debug/deps",
            ]
            .map(OsString::from),
            &|_| None,
        ) {
            RustParsed::Compile(j) => *j,
            other => panic!("{other:?}"),
        };
        let a = Roots::new(Path::new("/w1"), &job);
        let d = b"/w1/target/debug/deps/a.d: src/lib.rs /w1/gen.rs\n";
        let t = a.template(d);
        assert!(!t.windows(3).any(|w| w == b"/w1"));
        let mut job2 = job.clone();
        job2.out_dir = Some(PathBuf::from("/elsewhere/t/debug/deps"));
        let b = Roots::new(Path::new("/elsewhere/w2"), &job2);
        assert_eq!(
            b.instantiate(&t),
            b"/elsewhere/t/debug/deps/a.d: src/lib.rs /elsewhere/w2/gen.rs\n".to_vec()
        );
    }

    #[test]
    fn stored_files_read_back_borrowed() {
        let files = RustFiles {
            files: vec![
                RustFile {
                    name: String::new(),
                    exec: true,
                    templated: false,
                    data: vec![0x7f; 5000],
                },
                RustFile {
                    name: "a.d".into(),
                    exec: false,
                    templated: true,
                    data: b"a: a.rs\n".to_vec(),
                },
            ],
        };
        let enc = distc_peer::codec::encode(&files).expect("encode");
        let view: RustFilesView<'_> = distc_peer::codec::decode(&enc, MAX_FILES).expect("decode");
        let range = enc.as_ptr_range();
        for (v, f) in view.files.iter().zip(&files.files) {
            assert_eq!(
                (v.name, v.exec, v.templated, v.data),
                (f.name.as_str(), f.exec, f.templated, f.data.as_slice())
            );
            assert!(range.contains(&v.data.as_ptr()), "{} was copied", v.name);
        }
        assert_eq!(view.files.len(), 2);
    }

    #[test]
    fn replace_bytes_edges() {
        assert_eq!(replace_bytes(b"aXbXX", b"X", b"yy"), b"ayybyyyy".to_vec());
        assert_eq!(replace_bytes(b"ab", b"abc", b"z"), b"ab".to_vec());
        assert_eq!(replace_bytes(b"", b"a", b"z"), b"".to_vec());
    }
}
