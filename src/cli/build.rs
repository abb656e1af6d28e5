//! `distc build` and `distc build-project`: turn sources into an executable, with every C/C++
//! object step going through the cache exactly like a wrapped compile.
//!
//! Each object is produced by running this very binary in wrapper mode
//! (`distc <cc> -c SRC -o OBJ FLAGS…`), so `build`, `make CC="distc gcc"` and CMake launchers share
//! one code path, one key and one store. The wrapper tells us whether the object was a hit
//! through the file named by [`RESULT_FILE_ENV`]; when it does not (an older wrapper, a disabled
//! cache) the outcome is shown as `done`.
//!
//! Project layout: objects go to `DIR/build/<relative source path>.o` (mirroring the source tree,
//! so `a/util.c` and `b/util.c` never collide), and the compiler runs with `DIR` as its working
//! directory on relative paths, so two checkouts of one project at different places produce the
//! same keys. `DIR` and `DIR/include` (when present) are on the include path.
//!
//! Rust sources and Cargo projects are handed to [`crate::cli::build_rust`] (rustc through the
//! wrapper for one file; `cargo build` with distc as `RUSTC_WRAPPER` for a Cargo project).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::pipeline::{Outcome, RESULT_FILE_ENV};

/// Directory under a project where `build-project` writes its objects.
pub const BUILD_DIR: &str = "build";

/// The language of a source file, decided by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    C,
    Cxx,
    Rust,
}

impl Language {
    /// Extensions `build` accepts, for error messages.
    pub const ACCEPTED: &'static str = ".c, .cpp, .cc, .cxx, .rs";

    /// The language of `path`, or `None` when its extension is not one distc builds.
    pub fn of(path: &Path) -> Option<Language> {
        let ext = path.extension()?.to_str()?;
        match ext {
            "c" => Some(Language::C),
            "cpp" | "cc" | "cxx" | "c++" | "C" => Some(Language::Cxx),
            "rs" => Some(Language::Rust),
            _ => None,
        }
    }

    /// The compiler driver used for objects of this language (and for linking them).
    pub fn driver(self) -> String {
        // CC/CXX are honoured when they name a single program; "distc gcc"-style values would
        // wrap twice, and anything with arguments is not ours to split.
        let (var, default) = match self {
            Language::C => ("CC", "cc"),
            Language::Cxx | Language::Rust => ("CXX", "c++"),
        };
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() && !v.contains(char::is_whitespace) => {
                let name = Path::new(&v)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("");
                if name == "distc" {
                    default.to_string()
                } else {
                    v
                }
            }
            _ => default.to_string(),
        }
    }
}

/// What the cache did, for people (`done` when the wrapper did not say).
fn human(outcome: &Option<Outcome>) -> String {
    outcome
        .as_ref()
        .map_or_else(|| "done".into(), Outcome::human)
}

/// One object compile, done through the wrapper.
struct ObjectJob {
    /// Source path as given to the compiler (relative to `cwd` for projects).
    source: PathBuf,
    /// Object path as given to the compiler.
    object: PathBuf,
    language: Language,
}

/// The result of one [`ObjectJob`].
struct ObjectResult {
    /// `None`: the wrapper did not say (cache disabled, or an error it reported).
    outcome: Option<Outcome>,
    elapsed: Duration,
    success: bool,
    /// The compiler's diagnostics, replayed by the wrapper (warnings on success, errors on failure).
    stderr: String,
}

/// Runs `distc <driver> -c SOURCE -o OBJECT FLAGS…` in `cwd` and reports what the cache did.
fn compile_object(
    config: &Config,
    cwd: &Path,
    job: &ObjectJob,
    flags: &[String],
) -> Result<ObjectResult> {
    let exe =
        std::env::current_exe().context("cannot find the distc executable to run the wrapper")?;
    let report = tempfile::Builder::new()
        .prefix("distc-result-")
        .tempfile()
        .context("cannot create a temporary file for the wrapper's result")?;
    let start = Instant::now();
    let output = Command::new(&exe)
        .arg(job.language.driver())
        .arg("-c")
        .arg(&job.source)
        .arg("-o")
        .arg(&job.object)
        .args(flags)
        .current_dir(cwd)
        // The wrapper must use the cache this command was pointed at (--dir included).
        .env("DISTC_DIR", &config.dir)
        .env(RESULT_FILE_ENV, report.path())
        .output()
        .with_context(|| {
            format!(
                "cannot run {} to compile {}",
                exe.display(),
                job.source.display()
            )
        })?;
    let elapsed = start.elapsed();
    let outcome = std::fs::read_to_string(report.path())
        .ok()
        .and_then(|s| Outcome::parse(&s));
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.stdout.is_empty() {
        stderr.insert_str(0, &String::from_utf8_lossy(&output.stdout));
    }
    Ok(ObjectResult {
        outcome,
        elapsed,
        success: output.status.success(),
        stderr,
    })
}

/// The language of the one source file `distc {command}` was given, after checking it is a
/// readable regular file: each error says what is wrong and what is accepted.
pub(crate) fn source_language(file: &Path, command: &str) -> Result<Language> {
    if file.is_dir() {
        bail!(
            "{} is a directory; `distc {command}` takes one source file ({}), \
             `distc build-project DIR` builds a directory",
            file.display(),
            Language::ACCEPTED
        );
    }
    let language = Language::of(file).with_context(|| {
        format!(
            "{}: unsupported file type; `distc {command}` accepts {}",
            file.display(),
            Language::ACCEPTED
        )
    })?;
    let meta = std::fs::metadata(file)
        .with_context(|| format!("cannot read source file {}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    Ok(language)
}

/// The size of a linked executable; a link that reported success without one is an error.
fn linked_size(output: &Path) -> Result<u64> {
    Ok(std::fs::metadata(output)
        .with_context(|| {
            format!(
                "the linker reported success but {} is missing",
                output.display()
            )
        })?
        .len())
}

/// Links `objects` into `output` with the driver of `language`.
fn link(
    cwd: &Path,
    language: Language,
    objects: &[PathBuf],
    output: &Path,
    flags: &[String],
) -> Result<()> {
    let driver = language.driver();
    // Only flags that matter to the link are passed on; -D/-I/-W… are compile-time only and
    // harmless, but -c/-E/-S would break the link, so they are dropped.
    let link_flags = flags
        .iter()
        .filter(|f| !matches!(f.as_str(), "-c" | "-E" | "-S"));
    let out = Command::new(&driver)
        .args(objects)
        .arg("-o")
        .arg(output)
        .args(link_flags)
        .current_dir(cwd)
        .output()
        .with_context(|| {
            format!("cannot run the linker `{driver}` (is it installed and on PATH?)")
        })?;
    if !out.status.success() {
        bail!(
            "linking {} with `{driver}` failed ({}):\n{}",
            output.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

/// Human-readable byte count: `16.2 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// `distc build FILE [-o OUT] [-- FLAGS…]`.
pub fn build(
    config: &Config,
    file: &Path,
    output: Option<&Path>,
    flags: &[String],
) -> Result<ExitCode> {
    let language = source_language(file, "build")?;
    if language == Language::Rust {
        return crate::cli::build_rust::build_file(file, output, flags);
    }
    let stem = file.file_stem().with_context(|| {
        format!(
            "{} has no file name to derive an output name from",
            file.display()
        )
    })?;
    let output = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(stem));
    if let (Ok(src), Ok(out)) = (file.canonicalize(), output.canonicalize())
        && src == out
    {
        bail!(
            "the output {} is the source file itself; choose another -o",
            output.display()
        );
    }

    let start = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("distc-build-")
        .tempdir()
        .context("cannot create a temporary directory for the object file")?;
    let object = tmp.path().join(Path::new(stem).with_extension("o"));
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let job = ObjectJob {
        source: file.to_path_buf(),
        object: object.clone(),
        language,
    };
    let result = compile_object(config, &cwd, &job, flags)?;
    eprint!("{}", result.stderr);
    if !result.success {
        bail!(
            "compiling {} failed (see the compiler's messages above)",
            file.display()
        );
    }
    link(&cwd, language, &[object], &output, flags)?;
    let size = linked_size(&output)?;
    println!(
        "Built {} ({}) from {}: cache {} in {} ms",
        output.display(),
        human_bytes(size),
        file.display(),
        human(&result.outcome),
        millis(start.elapsed())
    );
    Ok(ExitCode::SUCCESS)
}

/// Every C/C++ source under `dir` (relative to `dir`), skipping directories named `build` or
/// `target` and hidden ones, at any depth, sorted so the output is stable.
pub fn find_sources(dir: &Path) -> Result<Vec<(PathBuf, Language)>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, Language)>) -> Result<()> {
        let here = root.join(rel);
        let entries = std::fs::read_dir(&here)
            .with_context(|| format!("cannot list directory {}", here.display()))?;
        for entry in entries {
            let entry =
                entry.with_context(|| format!("cannot list directory {}", here.display()))?;
            let name = entry.file_name();
            let Some(name_str) = name.to_str() else {
                continue;
            };
            if name_str.starts_with('.') {
                continue;
            }
            let file_type = entry
                .file_type()
                .with_context(|| format!("cannot stat {}", entry.path().display()))?;
            let rel_path = rel.join(&name);
            if file_type.is_dir() {
                // Build output of any tool (ours, CMake's, cargo's) is not source.
                if name_str == BUILD_DIR || name_str == "target" {
                    continue;
                }
                walk(root, &rel_path, out)?;
            } else if let Some(lang @ (Language::C | Language::Cxx)) = Language::of(&rel_path) {
                out.push((rel_path, lang));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Options of `distc build-project`.
pub struct ProjectOptions<'a> {
    pub config: &'a Config,
    pub dir: &'a Path,
    pub output: Option<&'a Path>,
    /// Parallel compiles; `None` = number of CPUs.
    pub jobs: Option<usize>,
    pub flags: &'a [String],
}

/// `distc build-project DIR [-o OUT] [-j N] [-- FLAGS…]`.
pub fn build_project(opts: &ProjectOptions<'_>) -> Result<ExitCode> {
    let dir = opts.dir;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot open project directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a directory; `distc build-project` takes a project directory",
            dir.display()
        );
    }
    if dir.join("Cargo.toml").is_file() {
        return crate::cli::build_rust::build_cargo_project(
            opts.config,
            dir,
            opts.jobs,
            opts.flags,
        );
    }
    let sources = find_sources(dir)?;
    if sources.is_empty() {
        bail!(
            "no C or C++ sources (.c, .cpp, .cc, .cxx) found under {} (build/, target/ and hidden \
             directories are skipped)",
            dir.display()
        );
    }
    let jobs = match opts.jobs {
        Some(0) => bail!("-j must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let dir_abs =
        std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let name = dir_abs
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "a.out".into());
    let output = match opts.output {
        Some(o) => {
            std::path::absolute(o).with_context(|| format!("cannot resolve {}", o.display()))?
        }
        // Not `./<name>`: run from the project's parent, that is the project directory itself.
        None => dir_abs.join(BUILD_DIR).join(name),
    };

    let mut flags: Vec<String> = Vec::new();
    if dir_abs.join("include").is_dir() {
        flags.push("-Iinclude".into());
    }
    flags.push("-I.".into());
    flags.extend(opts.flags.iter().cloned());

    let build_dir = dir_abs.join(BUILD_DIR);
    let jobs_list: Vec<ObjectJob> = sources
        .iter()
        .map(|(src, language)| {
            let mut obj = PathBuf::from(BUILD_DIR).join(src).into_os_string();
            obj.push(".o");
            ObjectJob {
                source: src.clone(),
                object: PathBuf::from(obj),
                language: *language,
            }
        })
        .collect();
    for job in &jobs_list {
        if let Some(parent) = job.object.parent() {
            let parent = dir_abs.join(parent);
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("cannot create object directory {}", parent.display()))?;
        }
    }
    tracing::debug!(jobs, files = jobs_list.len(), build_dir = %build_dir.display(), "building project");

    let start = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(jobs_list.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
            pb.set_style(style);
        }
        pb
    });
    let say = |line: String| match &bar {
        Some(pb) => pb.println(line),
        None => println!("{line}"),
    };

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<ObjectResult>>>> =
        Mutex::new((0..jobs_list.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(jobs_list.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs_list.get(i) else { break };
                    let res = compile_object(opts.config, &dir_abs, job, &flags);
                    match &res {
                        Ok(r) => {
                            let word = if r.success {
                                human(&r.outcome)
                            } else {
                                "FAILED".into()
                            };
                            say(format!(
                                "{word:<5} {} ({} ms)",
                                job.source.display(),
                                millis(r.elapsed)
                            ));
                        }
                        Err(e) => say(format!("ERROR {}: {e:#}", job.source.display())),
                    }
                    if let Some(pb) = &bar {
                        pb.inc(1);
                    }
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(res);
                    }
                }
            });
        }
    });
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }

    let results = results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut hits = 0;
    let mut failed = Vec::new();
    for (job, res) in jobs_list.iter().zip(results) {
        match res {
            Some(Ok(r)) => {
                if !r.stderr.trim().is_empty() {
                    eprintln!("--- {} ---\n{}", job.source.display(), r.stderr.trim_end());
                }
                if !r.success {
                    failed.push(job.source.display().to_string());
                } else if r.outcome.as_ref().is_some_and(Outcome::is_hit) {
                    hits += 1;
                }
            }
            Some(Err(e)) => return Err(e.context(format!("compiling {}", job.source.display()))),
            None => bail!("internal error: no result for {}", job.source.display()),
        }
    }
    let total = jobs_list.len();
    let compiled = total - hits - failed.len();
    let summary = format!(
        "Compiled {compiled}/{total} files ({hits} cache hit{}) in {} ms",
        if hits == 1 { "" } else { "s" },
        millis(start.elapsed())
    );
    if !failed.is_empty() {
        println!("{summary}");
        bail!(
            "{} of {total} files failed to compile: {}",
            failed.len(),
            failed.join(", ")
        );
    }

    let language = if sources.iter().any(|(_, l)| *l == Language::Cxx) {
        Language::Cxx
    } else {
        Language::C
    };
    let objects: Vec<PathBuf> = jobs_list.iter().map(|j| j.object.clone()).collect();
    link(&dir_abs, language, &objects, &output, opts.flags)?;
    let size = linked_size(&output)?;
    println!("{summary}");
    println!(
        "Linked {} ({}) in {} ms total",
        output.display(),
        human_bytes(size),
        millis(start.elapsed())
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_by_extension() {
        assert_eq!(Language::of(Path::new("a.c")), Some(Language::C));
        assert_eq!(Language::of(Path::new("a.cpp")), Some(Language::Cxx));
        assert_eq!(Language::of(Path::new("a.cc")), Some(Language::Cxx));
        assert_eq!(Language::of(Path::new("a.cxx")), Some(Language::Cxx));
        assert_eq!(Language::of(Path::new("a.rs")), Some(Language::Rust));
        assert_eq!(Language::of(Path::new("a.h")), None);
        assert_eq!(Language::of(Path::new("Makefile")), None);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(16 * 1024 + 200), "16.2 KiB");
    }

    #[test]
    fn sources_skip_build_and_hidden_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        for p in [
            "a.c",
            "sub/b.cpp",
            "build/c.c",
            ".git/d.c",
            "e.h",
            "sub/.hidden/f.c",
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "").expect("write");
        }
        let found: Vec<String> = find_sources(dir.path())
            .expect("walk")
            .into_iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(found, vec!["a.c".to_string(), "sub/b.cpp".to_string()]);
    }
}
