//! The gcc/clang family in the pipeline: what [`run`] turns away before any key, and
//! [`CFamily`], the [`Family`] whose keys come from [`crate::compiler::c`] (preprocessor,
//! direct and depend mode, manifests shared in a mesh) and whose results are the object and
//! the dependency file.

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use distc_peer::Key;

use super::{Command, Family, Finished, NoKey, Pipeline, Skip, pass_through};
use crate::cache::Cache;
use crate::cache::bundle::{BUNDLE_VERSION, Bundle, Output, Role};
use crate::cache::stats::Event;
use crate::compiler::c::direct::{self, DirectKey};
use crate::compiler::c::key::{self as fingerprint, Context, Fingerprint, Inputs};
use crate::compiler::c::{self as compiler, CompileJob, Parsed};
use crate::config::Config;

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

/// A gcc/clang command line through the pipeline. `name` is the compiler as invoked.
pub(crate) fn run(
    p: &Pipeline<'_>,
    real: PathBuf,
    name: &OsStr,
    args: &[OsString],
    started: SystemTime,
) -> ExitCode {
    let job = match compiler::args::parse(args, &|p| fs::read(p).ok()) {
        Parsed::Compile(job) => *job,
        Parsed::Uncacheable(reason) => return pass_through(p.cache, p.runner, &real, args, reason),
    };
    let cwd = match std::env::current_dir() {
        Ok(c) => c,
        Err(_) => return pass_through(p.cache, p.runner, &real, args, "no-cwd"),
    };
    // With base_dir, the compiler runs with the paths under it relative to the working
    // directory (response files expanded), so what it records (debug info, __FILE__, the
    // object's file symbol, the .d file) is the same in every checkout; the key sees the same.
    let (job, run_args) = match p
        .cfg
        .base_dir
        .as_deref()
        .and_then(|base| fingerprint::compile_args(&job.args, base, &cwd))
    {
        Some(rel) => match compiler::args::parse(&rel, &|_| None) {
            Parsed::Compile(j) => (*j, rel),
            Parsed::Uncacheable(_) => (job, args.to_vec()),
        },
        None => (job, args.to_vec()),
    };
    p.cache.set_source(job.source.display());
    if let Some((v, label)) = fingerprint::refused_env() {
        tracing::debug!("{v} is set");
        return pass_through(p.cache, p.runner, &real, args, label);
    }
    // `-o /dev/null` (configure checks) or a FIFO: reading it back stores nothing real, and a
    // hit would rename a file over the device. Like ccache, only regular files are outputs.
    let mut outputs = std::iter::once(&job.output).chain(job.dep_file.as_ref().map(|d| &d.path));
    if outputs.any(|p| fs::metadata(p).is_ok_and(|m| !m.is_file())) {
        return pass_through(p.cache, p.runner, &real, args, "output-not-a-file");
    }
    let ctx = Context {
        runner: p.runner,
        distc_dir: p.cfg.dir.clone(),
        cwd,
        base_dir: p.cfg.base_dir.clone(),
        compiler: real,
        invoked_as: name.to_os_string(),
    };
    let stderr_is_tty = io::IsTerminal::is_terminal(&io::stderr());
    match CFamily::new(p.cfg, ctx, job, &run_args, started, stderr_is_tty) {
        Ok(f) => p.run(&f),
        Err(e) => {
            tracing::warn!("cannot identify the compiler: {e}");
            p.cache.count(Event::Error("compiler-id"));
            let outcome = super::Outcome::Uncacheable("compiler-id".into());
            p.cache.count(outcome.event());
            outcome.report();
            p.runner.exec(&e.compiler, args)
        }
    }
}

/// The compiler could not be identified: no key at all.
#[derive(Debug, thiserror::Error)]
#[error("{compiler}: {source}")]
pub(crate) struct NoIdentity {
    compiler: PathBuf,
    source: io::Error,
}

/// One gcc/clang compile, resolved once.
pub(crate) struct CFamily<'a> {
    ctx: Context<'a>,
    job: CompileJob,
    /// The arguments the real compiler runs with: as given (response files unexpanded), or
    /// with base_dir the rewritten ones.
    args: Vec<OsString>,
    /// Inputs 1-6 of the key (everything but the source's and headers' share).
    common: Inputs,
    /// Direct mode's identity of this compile, when direct mode is on and safe for it.
    direct: Option<DirectKey>,
    /// When the wrapper started: files modified after it are not trusted in manifests.
    started: SystemTime,
    /// The user left diagnostics colour to the compiler's default (colour on a terminal).
    /// Captured stderr is no terminal, so a compile for a terminal gets `-fdiagnostics-color`
    /// (not in the key) and a replay to anything else strips the colour sequences.
    auto_colour: bool,
    stderr_is_tty: bool,
    /// `offload` is on: a miss may compile on a member while this machine is busy.
    offload: bool,
    /// The key's preprocessor output and dependency file, kept for an offload
    /// ([`CFamily::full_key`] keeps them when one is likely).
    kept: RefCell<Option<Kept>>,
}

/// What the key's preprocessor run left for an offload.
struct Kept {
    output: fingerprint::KeptOutput,
    /// The dependency file it wrote (when the compile writes one).
    dep: Option<crate::util::Scratch>,
}

/// Where depend mode finds the headers a compile read: the job's own `-MD` file, or ours.
pub(crate) struct CDepend {
    /// Our own dependency file when the user asked for none (in memory where it can be; gone
    /// on drop).
    temp: Option<crate::util::Scratch>,
}

impl<'a> CFamily<'a> {
    pub fn new(
        cfg: &Config,
        ctx: Context<'a>,
        job: CompileJob,
        args: &[OsString],
        started: SystemTime,
        stderr_is_tty: bool,
    ) -> Result<CFamily<'a>, NoIdentity> {
        let common = fingerprint::common_inputs(&ctx, &job).map_err(|source| NoIdentity {
            compiler: ctx.compiler.clone(),
            source,
        })?;
        let direct = if cfg.direct_mode {
            DirectKey::new(&ctx, &job, &common)
        } else {
            None
        };
        let auto_colour = !colour_chosen(&job.args);
        Ok(CFamily {
            ctx,
            job,
            args: args.to_vec(),
            common,
            direct,
            started,
            auto_colour,
            stderr_is_tty: auto_colour && stderr_is_tty,
            offload: cfg.offload,
            kept: RefCell::new(None),
        })
    }

    /// The languages a member compiles this in (`-x` of what it is sent, and of the
    /// source), when it can: C and C++. Without debug info, the preprocessed source
    /// (`cpp-output`). With it, gcc's directives-only output, compiled as C or C++ (`c`):
    /// the line table of fully preprocessed input has the columns of expanded macros, so
    /// the macros are left to the member's compiler. Not with macro information (`-g3`:
    /// the definitions are recorded in another order) or options that change what the
    /// preprocessor writes (`-fpreprocessed`, `-fdirectives-only`, `-traditional-cpp`), and
    /// not with clang (no `-fdirectives-only` in clang 14; a `cc` that is clang is caught by
    /// the shape of its output, [`distc_peer::offload::directives_source`]).
    fn remote_languages(&self) -> Option<(&'static str, &'static str)> {
        use compiler::Language;
        if self.job.debug_info {
            let named_clang = [
                self.ctx.invoked_as.as_os_str(),
                self.ctx.compiler.as_os_str(),
            ]
            .iter()
            .any(|n| {
                Path::new(n)
                    .file_name()
                    .is_some_and(|f| f.as_bytes().starts_with(b"clang"))
            });
            if named_clang
                || self.job.args.iter().any(|a| {
                    let a = a.as_bytes();
                    macro_info(a)
                        || a == b"-fpreprocessed"
                        || a == b"-fdirectives-only"
                        || a.starts_with(b"-traditional")
                })
            {
                return None;
            }
            return match self.job.language {
                Language::C => Some(("c", "c")),
                Language::Cxx => Some(("c++", "c++")),
                _ => None,
            };
        }
        match self.job.language {
            Language::C => Some(("cpp-output", "c")),
            Language::Cxx => Some(("c++-cpp-output", "c++")),
            _ => None,
        }
    }

    /// The options that make a preprocessor run write this compile's dependency file at
    /// `path` (none without one); `None` when it cannot ([`dependency_args`]).
    fn remote_dep_args(&self, path: &Path) -> Option<Vec<OsString>> {
        match &self.job.dep_file {
            Some(dep) => {
                dependency_args(&self.job.args, path, dep.explicit_target, &self.job.output)
            }
            None => Some(Vec::new()),
        }
    }

    /// Whether the key's preprocessor run should keep its output for an offload, and with
    /// which dependency-file options and scratch file: only when an offload could follow
    /// (`offload` on, a compile a member can take, an active mesh whose members would take
    /// jobs), so other compiles pay nothing.
    /// With debug info the member is sent another preprocessor run's output: nothing kept.
    fn keep_for_offload(&self) -> Option<(Vec<OsString>, Option<crate::util::Scratch>)> {
        if !self.offload || self.job.debug_info || self.remote_languages().is_none() {
            return None;
        }
        let dir = &self.ctx.distc_dir;
        if !distc_peer::ipc::mesh_active(dir) || super::offload::remote_slots(dir) == 0 {
            return None;
        }
        match &self.job.dep_file {
            Some(_) => {
                let scratch = crate::util::Scratch::new("distc-dep-", ".d").ok()?;
                Some((self.remote_dep_args(scratch.path())?, Some(scratch)))
            }
            None => Some((Vec::new(), None)),
        }
    }

    pub fn context(&self) -> &Context<'a> {
        &self.ctx
    }

    pub fn job(&self) -> &CompileJob {
        &self.job
    }

    /// Inputs 1-6 of the key.
    pub fn common(&self) -> &Inputs {
        &self.common
    }

    /// Direct mode's identity of this compile, when direct mode is on and safe for it.
    pub fn direct(&self) -> Option<&DirectKey> {
        self.direct.as_ref()
    }

    /// A stored result may hold colours added for a terminal; not for this stderr.
    fn strip_colours(&self) -> bool {
        self.auto_colour && !self.stderr_is_tty
    }

    /// With `base_dir`, dependency files are stored with paths under it relative to the working
    /// directory, so another checkout gets paths of its own.
    fn store_depfile(&self, data: Vec<u8>) -> Vec<u8> {
        match &self.ctx.base_dir {
            Some(base) => rewrite_depfile(&data, base, &self.ctx.cwd),
            None => data,
        }
    }
}

impl Family for CFamily<'_> {
    type Inputs = Fingerprint;
    type Depend = CDepend;

    fn describe(&self) -> String {
        self.job.source.display().to_string()
    }

    /// `__DATE__`, `__TIME__` or `__TIMESTAMP__` in the source (without `SOURCE_DATE_EPOCH`)
    /// give another object at every second: never re-verified. In a header they are caught
    /// by the confirming compile, which runs a second later.
    fn unreproducible(&self) -> Option<&'static str> {
        if std::env::var_os("SOURCE_DATE_EPOCH").is_some() {
            return None;
        }
        let bytes = fs::read(&self.job.source).ok()?;
        fingerprint::mentions_time_macros(&bytes).then_some("time-macros")
    }

    fn original(&self) -> (&Path, &[OsString]) {
        (&self.ctx.compiler, &self.args)
    }

    fn manifest_lookup(&self) -> Option<Key> {
        self.direct.as_ref()?.lookup(&self.ctx, &self.job)
    }

    /// In a mesh: the manifest another machine shared for this compile, checked against this
    /// machine's files. Any doubt is a `None`, and the full key is computed.
    fn shared_lookup(&self, cache: &Cache) -> Option<Key> {
        let d = self.direct.as_ref()?;
        let payload =
            cache.get_shared_payload(&d.shared_key(), direct::MAX_SHARED_MANIFEST as u64)?;
        match d.merge_shared(&self.ctx, &payload, self.started) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!("manifest from the mesh rejected: {e}");
                cache.count(Event::Error("remote-manifest"));
                None
            }
        }
    }

    fn depend(&self) -> Option<CDepend> {
        self.direct.as_ref()?;
        if !direct::depend_eligible(&self.job) {
            return None;
        }
        if self.job.dep_file.is_some() {
            return Some(CDepend { temp: None });
        }
        let temp = crate::util::Scratch::new("distc-dep-", ".d").ok()?;
        Some(CDepend { temp: Some(temp) })
    }

    fn manifest_lock(&self) -> String {
        match &self.direct {
            Some(d) => format!("m{}", d.manifest_key),
            None => "m".into(),
        }
    }

    fn depend_key(&self, depend: &CDepend) -> Result<(Key, Fingerprint), &'static str> {
        let d = self.direct.as_ref().ok_or("no-dependency-file")?;
        let path = match (&depend.temp, &self.job.dep_file) {
            (Some(t), _) => t.path().to_path_buf(),
            (None, Some(dep)) => dep.path.clone(),
            (None, None) => return Err("no-dependency-file"),
        };
        let fp = d.depend_fingerprint_since(&self.ctx, &self.job, &path, Some(self.started))?;
        Ok((fp.key, fp))
    }

    /// The preprocessor run of the key; when an offload could follow, its output and the
    /// dependency file it wrote are kept for it (the preprocessor then runs once).
    fn full_key(&self) -> Result<(Key, Fingerprint), NoKey> {
        let keep = self.keep_for_offload();
        match fingerprint::preprocessor_fingerprint_keeping(
            &self.ctx,
            &self.job,
            &self.common,
            keep.as_ref().map(|(args, _)| args.as_slice()),
        ) {
            Ok((fp, kept)) => {
                if let (Some(output), Some((_, dep))) = (kept, keep) {
                    *self.kept.borrow_mut() = Some(Kept { output, dep });
                }
                Ok((fp.key, fp))
            }
            Err(fingerprint::PreprocessError::Unlisted(label)) => Err(NoKey::uncacheable(label)),
            Err(e) => {
                // The compile will fail the same way and say why; nothing to cache.
                tracing::debug!("{e}");
                Err(NoKey {
                    reason: "compile-failed",
                    error: None,
                })
            }
        }
    }

    /// Records the direct-mode manifest and, in a mesh, shares it: stored under its shared
    /// key and announced, so the peer replicates it like any entry. After a store, also the
    /// miss record `distc inspect` explains the next miss with.
    fn record(&self, cache: &Cache, _key: &Key, fp: &Fingerprint, stored: bool) {
        if let Some(d) = &self.direct
            && let Some(bytes) = d.record(&self.ctx, &self.job, fp, self.started)
            && cache.mesh_active()
        {
            cache.put_payload(&d.shared_key(), &bytes);
        }
        if stored {
            fingerprint::record_inputs(&self.ctx, &self.job.source, fp);
        }
    }

    fn command(&self, depend: Option<&CDepend>) -> Command {
        let mut args: Vec<OsString> = Vec::with_capacity(self.args.len() + 4);
        if self.auto_colour && self.stderr_is_tty {
            args.push("-fdiagnostics-color".into());
        }
        args.extend(self.args.iter().cloned());
        if let Some(CDepend { temp: Some(t) }) = depend {
            args.extend(["-MD".into(), "-MF".into(), t.path().as_os_str().to_owned()]);
        }
        Command::new(self.ctx.compiler.clone(), args)
    }

    /// The object and (when asked for) the dependency file; a missing one is not stored.
    fn collect(&self, done: &Finished) -> Result<Bundle, Skip> {
        let missing = Skip::Uncacheable("compile-failed");
        let mut outputs = vec![Output {
            role: Role::Object,
            data: fs::read(&self.job.output).map_err(|_| missing)?.into(),
        }];
        if let Some(dep) = &self.job.dep_file {
            let data = fs::read(&dep.path).map_err(|_| missing)?;
            outputs.push(Output {
                role: Role::DepFile,
                data: self.store_depfile(data).into(),
            });
        }
        Ok(Bundle {
            version: BUNDLE_VERSION,
            outputs,
            stdout: done.stdout.clone(),
            stderr: done.stderr.clone(),
            exit_code: done.code,
        })
    }

    fn print(&self, done: &Finished) {
        write_streams(&done.stdout, &done.stderr, self.strip_colours());
    }

    fn replay_outputs(&self, bundle: &Bundle) -> Result<(), String> {
        let obj = bundle
            .output(Role::Object)
            .ok_or("cached result has no object")?;
        if let Some(dep) = &self.job.dep_file {
            let data = bundle
                .output(Role::DepFile)
                .ok_or("cached result has no dependency file")?;
            crate::util::write_output(&dep.path, data)
                .map_err(|e| format!("cannot write {}: {e}", dep.path.display()))?;
        }
        crate::util::write_output(&self.job.output, obj)
            .map_err(|e| format!("cannot write {}: {e}", self.job.output.display()))
    }

    fn replay_streams(&self, bundle: &Bundle) {
        write_streams(&bundle.stdout, &bundle.stderr, self.strip_colours());
    }

    /// C and C++ ([`CFamily::remote_languages`]). Without debug info, the source sent is the
    /// key's preprocessor output when it was kept, with the dependency file that run wrote;
    /// otherwise (and always with debug info, then with `-fdirectives-only`) the preprocessor
    /// runs again, writing the compile's dependency file.
    fn beside_compile(&self) -> Option<Box<dyn FnOnce() + Send + '_>> {
        let probe = self.direct.as_ref()?.include_probe(&self.ctx, &self.job)?;
        Some(Box::new(probe))
    }

    fn offload(&self, distc_dir: &Path, take_local: &mut dyn FnMut() -> bool) -> Option<Finished> {
        let (language, source_language) = self.remote_languages()?;
        let dep_file = self.job.dep_file.as_ref().map(|d| d.path.as_path());
        let dep_args = self.remote_dep_args(dep_file.unwrap_or(Path::new("")))?;
        let kept = self.kept.borrow();
        // With debug info, the directory the object records (`$PWD` when it names this one).
        let cwd = if self.job.debug_info {
            fingerprint::apparent_cwd(&self.ctx.cwd)
        } else {
            self.ctx.cwd.clone()
        };
        super::offload::compile(
            &super::offload::Offer {
                distc_dir,
                runner: self.ctx.runner,
                compiler: &self.ctx.compiler,
                language,
                cpp_args: &self.job.cpp_args,
                preprocessed: kept.as_ref().map(|k| &k.output),
                kept_dep: kept.as_ref().and_then(|k| k.dep.as_ref()).map(|d| d.path()),
                dep_file,
                dep_args: &dep_args,
                source_language,
                directives: self.job.debug_info,
                source: &self.job.source,
                cwd: &cwd,
                output: &self.job.output,
            },
            take_local,
        )
    }
}

/// Whether a `-g` option asks for macro information (level 3: `-g3`, `-ggdb3`; not
/// `-gdwarf-3`, a DWARF version).
fn macro_info(arg: &[u8]) -> bool {
    arg.starts_with(b"-g") && arg.ends_with(b"3") && !arg.starts_with(b"-gdwarf")
}

/// The options that make a preprocessor run write the dependency file a compile with `args`
/// writes: `-MD`/`-MMD`, `-MP`, `-MT`/`-MQ` as given, `-MF` = `path`, and without an explicit
/// target `-MQ OUTPUT` (the compile's default target: the object, quoted for make). `None`
/// for spellings it does not rewrite (`-Wp,-MD,…`).
fn dependency_args(
    args: &[OsString],
    path: &Path,
    explicit_target: bool,
    output: &Path,
) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        match b {
            b"-MD" | b"-MMD" | b"-MP" => out.push(a.clone()),
            b"-MT" | b"-MQ" => {
                out.push(a.clone());
                out.push(it.next()?.clone());
            }
            b"-MF" => {
                it.next()?;
            }
            _ if b.starts_with(b"-MT") || b.starts_with(b"-MQ") => out.push(a.clone()),
            _ if b.starts_with(b"-MF") => {}
            _ if b.starts_with(b"-Wp,") => return None,
            _ => {}
        }
    }
    out.extend(["-MF".into(), path.as_os_str().to_owned()]);
    if !explicit_target {
        out.extend(["-MQ".into(), output.as_os_str().to_owned()]);
    }
    Some(out)
}

/// Writes a compile's stdout and stderr; with `strip_colours`, stderr without colour
/// sequences (a result compiled for a terminal, replayed into a file or pipe).
fn write_streams(stdout: &[u8], stderr: &[u8], strip_colours: bool) {
    if !stdout.is_empty() {
        let mut o = io::stdout().lock();
        let _ = o.write_all(stdout).and_then(|()| o.flush());
    }
    if !stderr.is_empty() {
        let mut e = io::stderr().lock();
        let _ = if strip_colours {
            e.write_all(&crate::cache::bundle::strip_ansi_colours(stderr))
        } else {
            e.write_all(stderr)
        };
        let _ = e.flush();
    }
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

    #[test]
    fn macro_information_is_level_three_not_dwarf_three() {
        for a in ["-g3", "-ggdb3", "-gstabs+3"] {
            assert!(macro_info(a.as_bytes()), "{a}");
        }
        for a in ["-g", "-g1", "-g2", "-gdwarf-3", "-gdwarf-4", "-ggdb", "-O3"] {
            assert!(!macro_info(a.as_bytes()), "{a}");
        }
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
