//! The Rust side of `distc build`, `distc build-project` and `distc inspect`.
//!
//! - `distc build FILE.rs`: one `rustc` compile of a binary crate through the wrapper's pipeline,
//!   run in this process (so the key and the store are the ones cargo builds use, and a hit
//!   starts no process), with rustc's `-o` the absolute output path: an absolute `-o` is not
//!   part of the key, and a hit replays straight onto the output, where an executable that
//!   already holds the bytes is left as it is (only its modification time changes).
//! - `distc build-project DIR` with a `Cargo.toml`: `cargo build` with `RUSTC_WRAPPER` set to
//!   distc; every rustc invocation appends its outcome to the file named by
//!   [`CRATE_LOG_ENV`], from which the per-crate report and the summary are printed.
//! - `distc inspect FILE.rs`: the key `distc build FILE.rs` would use, and its inputs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cli::build::human_bytes;
use crate::compiler::rust::args::{self as rustc, RustParsed};
use crate::config::Config;
use crate::pipeline::Outcome;
use crate::pipeline::rust::CRATE_LOG_ENV;

/// The rustc `distc build` runs: `$RUSTC` when set, else `rustc` on PATH.
fn rustc_program() -> OsString {
    std::env::var_os("RUSTC")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "rustc".into())
}

/// The rustc arguments of `distc build FILE.rs` (and of `distc inspect FILE.rs`); `output` is
/// absolute (a relative `-o` would be keyed).
fn build_args(file: &Path, flags: &[String], output: &Path) -> Result<(String, Vec<OsString>)> {
    let stem = file.file_stem().and_then(|s| s.to_str()).with_context(|| {
        format!(
            "{} has no UTF-8 file name to name the crate",
            file.display()
        )
    })?;
    let crate_name = stem.replace('-', "_");
    let mut args: Vec<OsString> = vec![
        file.as_os_str().into(),
        "--crate-name".into(),
        crate_name.clone().into(),
        "--crate-type".into(),
        "bin".into(),
        "--emit=link".into(),
        "-o".into(),
        output.as_os_str().into(),
    ];
    // rustc's own default is the 2015 edition; a single file today means the current one.
    if !flags.iter().any(|f| f.starts_with("--edition")) {
        args.push("--edition=2021".into());
    }
    args.extend(flags.iter().map(OsString::from));
    Ok((crate_name, args))
}

/// `distc build FILE.rs [-o OUT] [-- FLAGS…]`.
pub fn build_file(file: &Path, output: Option<&Path>, flags: &[String]) -> Result<ExitCode> {
    let start = Instant::now();
    let output = match output {
        Some(o) => o.to_path_buf(),
        None => PathBuf::from(file.file_stem().unwrap_or(file.as_os_str())),
    };
    // Absolute, since a relative `-o` would be keyed (rustc records nothing of it); messages
    // name it as given.
    let shown = output;
    let output = std::path::absolute(&shown)
        .with_context(|| format!("cannot resolve the output path {}", shown.display()))?;
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    // rustc writes the executable itself (its linker into a temporary file renamed over the
    // old one, so a running executable is never written into); its temporary objects lie
    // beside the output while it compiles and are gone when it returns. A hit is replayed
    // onto the output by the pipeline, like every Rust output.
    let (_, args) = build_args(file, flags, &output)?;
    // The wrapper runs in this process: a hit starts no process at all.
    let (code, outcome) = crate::pipeline::in_process(crate::pipeline::Invocation {
        compiler: rustc_program(),
        args,
    });
    if code != ExitCode::SUCCESS {
        bail!(
            "compiling {} failed (see rustc's messages above)",
            file.display()
        );
    }
    let outcome = outcome.map_or_else(|| "done".into(), |o| o.human());
    let size = std::fs::metadata(&output)
        .with_context(|| format!("rustc reported success but {} is missing", shown.display()))?
        .len();
    println!(
        "Built {} ({}) from {}: cache {} in {} ms",
        shown.display(),
        human_bytes(size),
        file.display(),
        outcome,
        start.elapsed().as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

/// One line of the crate log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateOutcome {
    pub outcome: Outcome,
    pub crate_name: String,
    /// `rlib`, `bin`, `proc-macro`, `test`, comma-separated.
    pub types: String,
    pub millis: u64,
}

/// Parses the crate log written by the wrapper (one `outcome crate types ms` line each).
pub fn parse_crate_log(text: &str) -> Vec<CrateOutcome> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(CrateOutcome {
                outcome: Outcome::parse(w.next()?)?,
                crate_name: w.next()?.to_string(),
                types: w.next()?.to_string(),
                millis: w.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The summary line of a cargo build: counts by outcome, reasons of uncached crates.
pub fn summarize(outcomes: &[CrateOutcome]) -> String {
    let hits = outcomes.iter().filter(|o| o.outcome.is_hit()).count();
    let remote = outcomes
        .iter()
        .filter(|o| o.outcome == Outcome::RemoteHit)
        .count();
    let misses = outcomes
        .iter()
        .filter(|o| o.outcome == Outcome::Miss)
        .count();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        if let Outcome::Uncacheable(r) = &o.outcome {
            *reasons.entry(r).or_insert(0) += 1;
        }
    }
    let uncached: usize = reasons.values().sum();
    let mut s = format!(
        "{} crate{}: {hits} from the cache{}, {} compiled ({misses} stored",
        outcomes.len(),
        if outcomes.len() == 1 { "" } else { "s" },
        if remote > 0 {
            format!(" ({remote} from peers)")
        } else {
            String::new()
        },
        misses + uncached,
    );
    if uncached > 0 {
        let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        s.push_str(&format!(", {uncached} not cacheable: {}", list.join(", ")));
    }
    s.push(')');
    s
}

/// `distc build-project DIR` on a Cargo project: `cargo build` through distc, then a report.
/// `flags` are passed to cargo (e.g. `-- --release`).
pub fn build_cargo_project(
    config: &Config,
    dir: &Path,
    jobs: Option<usize>,
    flags: &[String],
) -> Result<ExitCode> {
    let start = Instant::now();
    let exe = std::env::current_exe()
        .context("cannot find the distc executable to use as RUSTC_WRAPPER")?;
    let log = tempfile::Builder::new()
        .prefix("distc-crates-")
        .tempfile()
        .context("cannot create a temporary file for the per-crate log")?;
    let cargo = std::env::var_os("CARGO")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build").current_dir(dir);
    if let Some(j) = jobs {
        cmd.arg("-j").arg(j.to_string());
    }
    // Cargo's dev profile compiles workspace members incrementally, which cannot be cached;
    // distc runs this cargo itself, so it can ask for whole-crate compiles.
    if std::env::var_os("CARGO_INCREMENTAL").is_none_or(|v| v != "0") {
        eprintln!(
            "distc: building with CARGO_INCREMENTAL=0 so that the workspace's own crates are \
             cached too (incremental compiles cannot be)"
        );
    }
    cmd.args(flags)
        .env("RUSTC_WRAPPER", &exe)
        // The wrappers must use the cache this command was pointed at (--cache-dir included).
        .env("DISTC_DIR", &config.dir)
        .env("CARGO_INCREMENTAL", "0")
        .env(CRATE_LOG_ENV, log.path());
    let status = cmd.status().with_context(|| {
        format!(
            "cannot run {:?} in {} (is cargo installed and on PATH?)",
            cargo,
            dir.display()
        )
    })?;
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let outcomes = parse_crate_log(&text);
    for o in &outcomes {
        let word = o.outcome.human();
        println!("{word:<12} {} ({}) {} ms", o.crate_name, o.types, o.millis);
    }
    println!(
        "{} in {} ms",
        summarize(&outcomes),
        start.elapsed().as_millis()
    );
    if !status.success() {
        bail!("cargo build failed in {} ({status})", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `distc inspect FILE.rs [-- FLAGS…]`: the key `distc build FILE.rs` would use.
pub fn inspect_file(config: &Config, file: &Path, flags: &[String]) -> Result<ExitCode> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let rustc = rustc_program();
    let real = crate::pipeline::resolve_compiler(&rustc)
        .with_context(|| format!("cannot find {rustc:?} on PATH"))?;
    // The key is the same whatever absolute output path `distc build` passes.
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (_, args) = build_args(file, flags, &tmp.path().join("out"))?;
    let job = match rustc::parse(&args, &|p| std::fs::read(p).ok()) {
        RustParsed::Compile(j) => *j,
        RustParsed::NotCompile => bail!("these flags make it no compile (e.g. --print)"),
        RustParsed::Uncacheable(r) => {
            println!("{}: not cacheable ({r})", file.display());
            return Ok(ExitCode::SUCCESS);
        }
    };
    let id =
        crate::compiler::rust::key::rustc_identity(&crate::pipeline::System, &config.dir, &real)
            .with_context(|| format!("cannot identify {}", real.display()))?;
    let (key, inputs) = crate::pipeline::rust::compute_key(config, &cwd, &id, &job)
        .with_context(|| format!("cannot compute the key of {}", file.display()))?;
    println!("key:    {key}");
    println!(
        "rustc:  {} ({})",
        id.real.display(),
        id.version.lines().next().unwrap_or("")
    );
    println!("crate:  {}", job.describe());
    let stored = distc_peer::store::Store::open(&config.store_dir(), config.max_size)
        .map(|s| s.contains(&key))
        .unwrap_or(false);
    println!("stored: {}", if stored { "yes" } else { "no" });
    println!("inputs:");
    for (label, digest) in inputs {
        println!("  {label:<24} {}", digest.get(..16).unwrap_or(&digest));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_log_and_summary() {
        let log = "miss itoa rlib 120\nhit app bin 3\nuncacheable:incremental mylib rlib 40\n\
                   remote-hit mymacro proc-macro 9\ngarbage\n";
        let o = parse_crate_log(log);
        assert_eq!(o.len(), 4);
        assert_eq!(o[0].crate_name, "itoa");
        assert_eq!(
            summarize(&o),
            "4 crates: 2 from the cache (1 from peers), 2 compiled (1 stored, \
             1 not cacheable: incremental 1)"
        );
    }

    #[test]
    fn build_args_default_edition_and_crate_name() {
        let (name, args) =
            build_args(Path::new("dir/my-tool.rs"), &[], Path::new("/tmp/o")).expect("args");
        assert_eq!(name, "my_tool");
        assert!(args.contains(&OsString::from("--edition=2021")));
        let (_, args) = build_args(
            Path::new("a.rs"),
            &["--edition=2024".to_string()],
            Path::new("/tmp/o"),
        )
        .expect("args");
        assert!(!args.contains(&OsString::from("--edition=2021")));
    }
}
