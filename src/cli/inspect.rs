//! `distc inspect FILE [-- FLAGS…]`: what the cache sees for one compile, without compiling.
//!
//! The compile inspected is the object step `distc build` runs (`cc -c FILE -o STEM.o FLAGS`,
//! `c++` for C++), parsed and keyed by the wrapper's own code ([`crate::compiler`],
//! [`crate::compiler::c::key`], [`crate::compiler::c::direct`]), so what is shown is what a wrapped compile would
//! do now: the key it would look up and in which mode, the inputs the key covers, the headers
//! found, whether the result is stored, the peers that own the key, and — when a result for this
//! source was stored before — which inputs changed since (why it would miss).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use distc_peer::Key;
use distc_peer::store::Store;

use crate::cache::Cache;
use crate::cli::build::Language;
use crate::compiler::c::direct::DirectKey;
use crate::compiler::c::key::{self as fingerprint, Context, Fingerprint};
use crate::compiler::c::{self as compiler, CompileJob, Parsed};
use crate::config::Config;
use crate::pipeline::c::CFamily;
use crate::pipeline::{Family, Mode, Pipeline, System};

/// What each of the pipeline's modes means here.
fn describe(mode: Mode) -> &'static str {
    match mode {
        Mode::Manifest => "direct mode: a manifest matches the current headers",
        Mode::Depend => "depend mode: source + headers from the compiler's -MD output",
        Mode::Full => "preprocessor mode: the preprocessed output",
    }
}

/// Who produced a stored entry, from its header: this machine (not signed), or the peer whose
/// signature it carries (checked by this machine's peer when it arrived).
fn producer_line(head: &[u8]) -> String {
    match Store::provenance(head) {
        Ok(distc_peer::store::Provenance::Local) => {
            "this machine (compiled here; its peer signs it when it shares it)".into()
        }
        Ok(distc_peer::store::Provenance::Signed { producer, .. }) => {
            match distc_peer::trust::producer_id(&producer) {
                Some(id) => format!("{id} (signed; verified when it was received)"),
                None => "unknown (the producer key is not valid)".into(),
            }
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// The ring owners of `key` as the local peer sees them: one line per owner, or a sentence
/// saying why there are none. The mesh support owns what the peer answers.
pub fn owner_peers(config: &Config, key: &Key) -> Vec<String> {
    let timeout = Duration::from_millis(config.peer_timeout_ms.max(1));
    let mut client = match distc_peer::ipc::IpcClient::connect(&config.dir, timeout) {
        Ok(c) => c,
        Err(_) => {
            return vec!["none: no local peer is running (start one with `distc peer`)".into()];
        }
    };
    match client.owners(key) {
        Ok(owners) if owners.is_empty() => vec!["none: the local peer knows no members yet".into()],
        Ok(owners) => owners
            .iter()
            .map(|o| {
                let role = if o.rank == 0 {
                    "primary".to_string()
                } else {
                    format!("replica {}", o.rank)
                };
                format!("{} ({role}, {})", o.id, o.state)
            })
            .collect(),
        Err(e) => vec![format!("unknown: the local peer did not answer ({e})")],
    }
}

/// Writes a depend-mode dependency file listing `headers`, so [`DirectKey::depend_fingerprint`]
/// computes the key a depend-mode miss would store under, without compiling.
fn depend_fingerprint(
    ctx: &Context,
    job: &CompileJob,
    d: &DirectKey,
    headers: &[PathBuf],
) -> Option<Fingerprint> {
    let mut text = String::from("distc-inspect.o:");
    for h in headers {
        let escaped = h
            .to_str()?
            .replace('\\', "\\\\")
            .replace(' ', "\\ ")
            .replace('$', "$$");
        text.push_str(" \\\n ");
        text.push_str(&escaped);
    }
    text.push('\n');
    let tmp = tempfile::Builder::new()
        .prefix("distc-inspect-")
        .suffix(".d")
        .tempfile()
        .ok()?;
    std::fs::write(tmp.path(), text).ok()?;
    d.depend_fingerprint(ctx, job, tmp.path())
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

/// `distc inspect FILE [-- FLAGS…]`.
pub fn inspect(config: &Config, file: &Path, flags: &[String]) -> Result<ExitCode> {
    let language = crate::cli::build::source_language(file, "inspect")?;
    if language == Language::Rust {
        return crate::cli::build_rust::inspect_file(config, file, flags);
    }
    let driver = language.driver();
    let real = crate::pipeline::resolve_compiler(std::ffi::OsStr::new(&driver))
        .with_context(|| format!("cannot find the compiler `{driver}` on PATH"))?;
    let stem = file
        .file_stem()
        .with_context(|| format!("{} has no file name", file.display()))?;
    let mut args: Vec<OsString> = vec!["-c".into(), file.as_os_str().into(), "-o".into()];
    args.push(Path::new(stem).with_extension("o").into_os_string());
    args.extend(flags.iter().map(OsString::from));

    let mut out = String::new();
    let command: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let _ = writeln!(out, "File          {}", file.display());
    let _ = writeln!(out, "Compiler      {} (as {driver})", real.display());
    let _ = writeln!(out, "Command       {driver} {}", command.join(" "));

    let job = match compiler::args::parse(&args, &|p| std::fs::read(p).ok()) {
        Parsed::Compile(job) => *job,
        Parsed::Uncacheable(reason) => {
            let _ = writeln!(out, "Cacheable     no: {reason}");
            let _ = writeln!(
                out,
                "              (the wrapper runs the real compiler and `distc stats` counts \
                 `{reason}`)"
            );
            print!("{out}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    // As the wrapper does: with base_dir the compiler runs with relative paths.
    let job = match config
        .base_dir
        .as_deref()
        .and_then(|base| fingerprint::compile_args(&job.args, base, &cwd))
        .map(|rel| compiler::args::parse(&rel, &|_| None))
    {
        Some(Parsed::Compile(rel)) => *rel,
        _ => job,
    };
    if let Some((v, label)) = fingerprint::refused_env() {
        let _ = writeln!(out, "Cacheable     no: {label} ({v} is set)");
        print!("{out}");
        return Ok(ExitCode::SUCCESS);
    }

    let ctx = Context {
        runner: &System,
        distc_dir: config.dir.clone(),
        cwd,
        base_dir: config.base_dir.clone(),
        compiler: real.clone(),
        invoked_as: driver.clone().into(),
    };
    let family = CFamily::new(config, ctx, job, &args, SystemTime::now(), false)
        .with_context(|| format!("cannot identify the compiler {}", real.display()))?;
    let (ctx, job) = (family.context(), family.job());
    let pre = match fingerprint::preprocessor_fingerprint(ctx, job, family.common()) {
        Ok(fp) => fp,
        Err(fingerprint::PreprocessError::Unlisted(label)) => {
            let _ = writeln!(
                out,
                "Cacheable     no: {label} (the compile reads a file no dependency output \
                 lists; the wrapper runs the real compiler and `distc stats` counts `{label}`)"
            );
            print!("{out}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "Cacheable     no: compile-failed ({e}; the compile would fail the same way)"
            );
            print!("{out}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let _ = writeln!(out, "Cacheable     yes");

    // The choice the wrapper makes, asked of the pipeline itself.
    let cache = Cache::open(
        &config.dir,
        config.max_size,
        Duration::from_millis(config.peer_timeout_ms),
        config.max_entry_size,
    );
    let pipeline = Pipeline {
        cfg: config,
        cache: &cache,
        runner: &System,
    };
    let mode = pipeline.mode(&family);
    let (mode, fp) = match (mode, family.direct()) {
        (Mode::Manifest, Some(d)) => {
            let key = family.manifest_lookup().unwrap_or(pre.key);
            // The manifest's key stands for a depend- or preprocessor-mode result: show the
            // inputs of whichever it is.
            match depend_fingerprint(ctx, job, d, &pre.headers) {
                Some(fp) if fp.key == key => (mode, fp),
                _ => (mode, Fingerprint { key, ..pre.clone() }),
            }
        }
        (Mode::Depend, Some(d)) => match depend_fingerprint(ctx, job, d, &pre.headers) {
            Some(fp) => (mode, fp),
            None => (Mode::Full, pre.clone()),
        },
        _ => (Mode::Full, pre.clone()),
    };
    let _ = writeln!(out, "Key           {}", fp.key);
    let _ = writeln!(out, "              ({})", describe(mode));
    if fp.key != pre.key {
        let _ = writeln!(
            out,
            "Mesh key      {} (preprocessor mode, asked of peers)",
            pre.key
        );
    }
    if let Some(blocker) = job.direct_blocker {
        let _ = writeln!(out, "Direct mode   off for this compile: {blocker}");
    }

    let store_dir = config.store_dir();
    let store = Store::open(&store_dir, config.max_size)
        .with_context(|| format!("cannot open the cache store {}", store_dir.display()))?;
    let stored = [fp.key, pre.key]
        .into_iter()
        .find_map(|k| store.read_header(&k).ok().flatten());
    let _ = writeln!(
        out,
        "Stored        {}",
        if stored.is_some() {
            "yes: the next compile is a hit"
        } else {
            "no: the next compile is a miss"
        }
    );
    if let Some(head) = stored {
        let _ = writeln!(out, "Producer      {}", producer_line(&head));
    }

    let _ = writeln!(
        out,
        "Inputs        (the key is SHA-256 over these, in order)"
    );
    for (label, digest) in fp.inputs.listing() {
        let _ = writeln!(out, "  {label:<14}{}", short(&digest));
    }
    let _ = writeln!(out, "Headers       {} found", fp.headers.len());
    for h in &fp.headers {
        let _ = writeln!(out, "  {}", h.display());
    }

    let owners = owner_peers(config, &pre.key);
    for (i, line) in owners.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{line}",
            if i == 0 {
                "Owner peers   "
            } else {
                "              "
            }
        );
    }

    match fingerprint::why_missed(ctx, &job.source, &fp) {
        None => {
            let _ = writeln!(
                out,
                "Last stored   nothing recorded for this source and compiler yet"
            );
        }
        Some(changes) if changes.is_empty() => {
            let _ = writeln!(out, "Last stored   same inputs as now");
        }
        Some(changes) => {
            let _ = writeln!(
                out,
                "Why a miss    inputs changed since the last stored result:"
            );
            for c in changes {
                let _ = writeln!(out, "  {c}");
            }
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
