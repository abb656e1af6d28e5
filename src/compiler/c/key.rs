//! The key of a compile: everything that can change its outputs, hashed.
//!
//! # Key inputs (FORMAT_VERSION 3)
//! Every input is hashed on its own and the key is SHA-256 over the labelled input digests, so
//! `distc inspect` can list them and a miss can be explained input by input.
//!
//! 1. `format` — [`FORMAT_VERSION`], so any change to this list changes every key.
//! 2. `compiler` — the name the compiler runs under (`clang++` and `clang` are one binary that
//!    behaves differently) and the SHA-256 of the binary it resolves to (memoised by stat, see
//!    [`crate::compiler::c::identity`]).
//! 3. `language` — the source language (`-x` or the extension).
//! 4. `args` — the normalised arguments: output paths (`-o`, `-MF`) and the source path left
//!    out; absolute paths under `base_dir` made relative to the working directory (with
//!    `base_dir` the compiler itself runs with those relative forms, see [`compile_args`]),
//!    and so is the OLD of `-fdebug-prefix-map`/`-ffile-prefix-map`/`-fmacro-prefix-map=OLD=NEW`
//!    (NEW is keyed as written: it is what the output records). With `-MD` and no `-MT`/`-MQ`
//!    the object path is included (it is the `.d` file's target).
//! 5. `env` — every variable of [`KEY_ENV`] (set or unset): the include paths, SOURCE_DATE_EPOCH,
//!    the locale and message language, and those that change diagnostics or the command line.
//! 6. `arg-files` — only when an option names a file the compiler reads and no dependency
//!    output lists ([`ARG_FILES`]: sanitizer ignore lists and the like): each option and the
//!    file's contents.
//! 7. `cwd` — the working directory, only with debug info (`-g`; the object records it), as the
//!    compiler names it (`$PWD` when that is the same directory, see [`apparent_cwd`]),
//!    rewritten by `-fdebug-prefix-map`/`-ffile-prefix-map` the way the compiler rewrites it.
//! 8. One of:
//!    - `preprocessed` — the output of `compiler -E` with the same preprocessor arguments, line
//!      markers under `base_dir` made relative (preprocessor and direct mode; `__TIME__` and
//!      friends expand in it, so they can never give a stale hit);
//!    - `source` + `headers` — the source bytes and path, and every header's path and digest as
//!      the compiler's own `-MD` output listed them (depend mode); files mentioning
//!      `__TIME__`/`__DATE__`/`__TIMESTAMP__` are never keyed this way;
//!    - `source` — the bytes of an already-preprocessed source (`.i`, `.ii`, `.s`).
//!
//! Never keyed: a compile whose source, headers or preprocessed output name a file only the
//! assembler or the compiler proper reads (`.incbin`, the assembler's `.include`, `#embed`; see
//! [`unlisted_input`]), and one whose environment chooses the compiler's own programs or asks
//! for extra output files ([`REFUSED_ENV`]). docs/ARCHITECTURE.md lists every such input and
//! how it is handled.
//!
//! Version 3: [`KEY_ENV`] grew (OBJCPLUS_INCLUDE_PATH, LANGUAGE, GCC_COMPARE_DEBUG, GCC_COLORS,
//! GCC_URLS, TERM_URLS, GCC_EXTRA_DIAGNOSTIC_OUTPUT, CCC_OVERRIDE_OPTIONS,
//! CLANG_NO_DEFAULT_CONFIG) and lost COMPILER_PATH and GCC_EXEC_PREFIX (now refused);
//! `arg-files` and the apparent `cwd` are new; results stored by earlier versions may hold
//! objects built from an `.incbin` file that has changed since, and are never used.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use distc_peer::Key;
use sha2::{Digest, Sha256};

use crate::compiler::c::CompileJob;
pub use crate::key::Inputs;
use crate::key::file::FileRecord;
use crate::key::hash_list;
use crate::pipeline::{Command, Runner};

/// Version of the list above. Bump on any change to what is hashed or how.
/// 2: prefix-map OLD values under `base_dir` keyed relative to the working directory.
/// 3: inputs no dependency output lists (see the module docs).
pub const FORMAT_VERSION: u32 = 3;

/// Environment variables that change a compile's result or its diagnostics (input 5).
pub const KEY_ENV: &[&str] = &[
    // Include search paths (gcc and clang).
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "OBJCPLUS_INCLUDE_PATH",
    // __DATE__, __TIME__ and __TIMESTAMP__.
    "SOURCE_DATE_EPOCH",
    // The language of diagnostics (LANGUAGE overrides LANG for messages).
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LANGUAGE",
    // gcc: a second compile to compare (can fail the compile), colours and links in
    // diagnostics, machine-readable fix-it hints on stderr.
    "GCC_COMPARE_DEBUG",
    "GCC_COLORS",
    "GCC_URLS",
    "TERM_URLS",
    "GCC_EXTRA_DIAGNOSTIC_OUTPUT",
    // clang: edits the command line; turns off the default configuration files.
    "CCC_OVERRIDE_OPTIONS",
    "CLANG_NO_DEFAULT_CONFIG",
];

/// Environment variables that make a compile uncacheable, with the label `distc stats` counts:
/// gcc writing extra dependency files, and the compiler's own programs (cc1, as) taken from
/// directories whose contents the key does not cover (as `-B` does).
pub const REFUSED_ENV: &[(&str, &str)] = &[
    ("DEPENDENCIES_OUTPUT", "dependencies-env"),
    ("SUNPRO_DEPENDENCIES", "dependencies-env"),
    ("COMPILER_PATH", "compiler-path"),
    ("GCC_EXEC_PREFIX", "compiler-path"),
];

/// The first variable of [`REFUSED_ENV`] set in this environment, with its label.
pub fn refused_env() -> Option<(&'static str, &'static str)> {
    REFUSED_ENV
        .iter()
        .find(|(v, _)| std::env::var_os(v).is_some())
        .copied()
}

/// Options (glued with `=`) whose value is a file the compiler reads that neither `-E` output
/// nor (always) `-MD` output lists: its contents are keyed (input 6).
pub const ARG_FILES: &[&str] = &[
    "-fsanitize-ignorelist=",
    "-fsanitize-blacklist=",
    "-fsanitize-system-ignorelist=",
    "-fsanitize-coverage-allowlist=",
    "-fsanitize-coverage-ignorelist=",
    "-fsanitize-coverage-whitelist=",
    "-fsanitize-coverage-blacklist=",
    "-fxray-attr-list=",
    "-fxray-always-instrument=",
    "-fxray-never-instrument=",
];

/// What the key is computed in, shared by all inputs of one compile.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// Where the compiler probes (preprocessor, include search list) run.
    pub runner: &'a dyn Runner,
    /// `$DISTC_DIR`.
    pub distc_dir: PathBuf,
    /// The working directory (absolute, as getcwd reports it).
    pub cwd: PathBuf,
    /// Checkouts under this directory share hits.
    pub base_dir: Option<PathBuf>,
    /// The real compiler (as found on PATH or given; symlinks not resolved, since the name a
    /// driver is run under can change what it does: `clang++` vs `clang`).
    pub compiler: PathBuf,
    /// The compiler name the user invoked (`gcc`, `clang++`), part of its identity.
    pub invoked_as: OsString,
}

/// Inputs 1–6: everything except the source and headers. Also the base of direct-mode
/// manifest keys.
pub fn common_inputs(ctx: &Context, job: &CompileJob) -> io::Result<Inputs> {
    let mut inputs = Inputs::default();
    inputs.push("format", &FORMAT_VERSION.to_le_bytes());
    let binary = crate::compiler::c::identity::compiler_digest(&ctx.distc_dir, &ctx.compiler)?;
    let run_as = ctx
        .compiler
        .file_name()
        .unwrap_or(ctx.invoked_as.as_os_str());
    inputs.push_digest(
        "compiler",
        hash_list([run_as.as_bytes(), binary.as_slice()]),
    );
    inputs.push("language", job.language.name().as_bytes());
    let args: Vec<OsString> = job
        .key_args
        .iter()
        .map(|a| rewrite_arg(a, ctx.base_dir.as_deref(), &ctx.cwd))
        .collect();
    inputs.push_digest("args", hash_list(args.iter().map(|a| a.as_bytes())));
    let env: Vec<Vec<u8>> = KEY_ENV
        .iter()
        .map(|k| match std::env::var_os(k) {
            Some(v) => {
                let mut b = k.as_bytes().to_vec();
                b.push(b'=');
                b.extend_from_slice(v.as_bytes());
                b
            }
            None => k.as_bytes().to_vec(),
        })
        .collect();
    inputs.push_digest("env", hash_list(env.iter().map(|v| v.as_slice())));
    let mut files: Vec<Vec<u8>> = Vec::new();
    for a in &job.key_args {
        let a = a.as_bytes();
        if let Some(path) = ARG_FILES.iter().find_map(|f| a.strip_prefix(f.as_bytes())) {
            // Unreadable: the compile fails and stores nothing; the key only has to differ.
            let digest: [u8; 32] = match fs::read(ctx.cwd.join(OsStr::from_bytes(path))) {
                Ok(bytes) => Sha256::digest(&bytes).into(),
                Err(_) => [0; 32],
            };
            files.push(a.to_vec());
            files.push(digest.to_vec());
        }
    }
    if !files.is_empty() {
        inputs.push_digest("arg-files", hash_list(files.iter().map(|v| v.as_slice())));
    }
    if let Some(cwd) = job.recorded_cwd(&apparent_cwd(&ctx.cwd)) {
        inputs.push("cwd", cwd.as_bytes());
    }
    Ok(inputs)
}

/// The working directory as gcc and clang name it (in debug info): `$PWD` when it is absolute
/// and the same directory as `cwd` (a path through a symlink), else `cwd` — the rule of gcc's
/// `getpwd` and LLVM's `current_path`.
pub fn apparent_cwd(cwd: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    if let Some(pwd) = std::env::var_os("PWD") {
        let p = Path::new(&pwd);
        if p.is_absolute()
            && p != cwd
            && let (Ok(a), Ok(b)) = (fs::metadata(p), fs::metadata(cwd))
            && (a.dev(), a.ino()) == (b.dev(), b.ino())
        {
            return p.to_path_buf();
        }
    }
    cwd.to_path_buf()
}

/// The source path as it goes into keys: relative when under `base_dir`.
pub fn normalised_source(ctx: &Context, job: &CompileJob) -> OsString {
    rewrite_arg(job.source.as_os_str(), ctx.base_dir.as_deref(), &ctx.cwd)
}

/// Flags whose glued value is a path (`-I/abs/inc`).
const PATH_FLAGS: &[&str] = &[
    "-I",
    "-isystem",
    "-iquote",
    "-idirafter",
    "-include",
    "-imacros",
    "-L",
];

/// Options whose value is `OLD=NEW`, OLD a path prefix the compiler rewrites to NEW in what it
/// records (`-fdebug-prefix-map` also maps the working directory in the debug info).
pub const PREFIX_MAP_FLAGS: &[&str] = &[
    "-fdebug-prefix-map=",
    "-ffile-prefix-map=",
    "-fmacro-prefix-map=",
];

/// Flags whose glued value names a file the compile writes or a dependency target
/// (`-o/abs/a.o`, `-MF/abs/a.d`, `-MT/abs/a.o`).
const OUTPUT_FLAGS: &[&str] = &["-o", "-MF", "-MT", "-MQ"];

/// Rewrites an argument whose path lies under `base_dir` to a path relative to `cwd`, as the
/// key sees it: what [`compile_arg`] rewrites, and the OLD of a prefix map (the compiler gets
/// the absolute OLD, see [`compile_arg`]; two checkouts differ in it only by where they are).
pub fn rewrite_arg(arg: &OsStr, base_dir: Option<&Path>, cwd: &Path) -> OsString {
    let Some(base) = base_dir else {
        return arg.to_os_string();
    };
    let bytes = arg.as_bytes();
    for flag in PREFIX_MAP_FLAGS {
        if let Some(map) = bytes.strip_prefix(flag.as_bytes())
            && let Some(eq) = map.iter().position(|&c| c == b'=')
            && map.first() == Some(&b'/')
            && let Some(rel) = relativize(Path::new(OsStr::from_bytes(&map[..eq])), base, cwd)
        {
            let mut out = flag.as_bytes().to_vec();
            out.extend_from_slice(rel.as_os_str().as_bytes());
            // gcc matches OLD as a string prefix: `/src/` and `/src` differ.
            if map[..eq].ends_with(b"/") && !out.ends_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(&map[eq..]);
            return OsString::from_vec(out);
        }
    }
    compile_arg(arg, base, cwd)
}

/// The compiler's arguments with every path under `base` made relative to `cwd` (`cwd` itself
/// under `base`), so the compile records the same paths whichever checkout runs it: the
/// source, `-o`, `-MF`, `-MT`/`-MQ` targets, `-I`/`-isystem`/`-iquote`/`-idirafter`/
/// `-include`/`-imacros`/`-L` values (glued or separate) and any other absolute path argument.
/// `None` when nothing changes.
pub fn compile_args(args: &[OsString], base: &Path, cwd: &Path) -> Option<Vec<OsString>> {
    if !cwd.starts_with(base) {
        return None;
    }
    let out: Vec<OsString> = args.iter().map(|a| compile_arg(a, base, cwd)).collect();
    (out != args).then_some(out)
}

/// One argument of [`compile_args`]. Prefix maps are left as given: their OLD must stay
/// absolute to match the working directory, which the compiler records as an absolute path
/// (the paths distc made relative no longer need mapping); the key normalises OLD instead
/// ([`rewrite_arg`]).
pub fn compile_arg(arg: &OsStr, base: &Path, cwd: &Path) -> OsString {
    let bytes = arg.as_bytes();
    if PREFIX_MAP_FLAGS
        .iter()
        .any(|f| bytes.starts_with(f.as_bytes()))
    {
        return arg.to_os_string();
    }
    if bytes.first() == Some(&b'/') {
        return relativize(Path::new(arg), base, cwd)
            .map(PathBuf::into_os_string)
            .unwrap_or_else(|| arg.to_os_string());
    }
    for flag in PATH_FLAGS.iter().chain(OUTPUT_FLAGS) {
        if let Some(rest) = bytes.strip_prefix(flag.as_bytes())
            && rest.first() == Some(&b'/')
            && let Some(rel) = relativize(Path::new(OsStr::from_bytes(rest)), base, cwd)
        {
            let mut out = flag.as_bytes().to_vec();
            out.extend_from_slice(rel.as_os_str().as_bytes());
            return OsString::from_vec(out);
        }
    }
    arg.to_os_string()
}

/// `path` relative to `cwd` when `path` is under `base`; `None` otherwise.
pub fn relativize(path: &Path, base: &Path, cwd: &Path) -> Option<PathBuf> {
    if !path.starts_with(base) || !cwd.starts_with(base) {
        return None;
    }
    let p: Vec<Component> = path.components().collect();
    let c: Vec<Component> = cwd.components().collect();
    let common = p.iter().zip(&c).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..c.len() {
        out.push("..");
    }
    for comp in &p[common..] {
        out.push(comp);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Some(out)
}

/// The result of running the preprocessor.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// Digest of the output with line markers normalised (input 7).
    pub digest: [u8; 32],
    /// Files the output came from, in first-seen order (the source excluded), as the compiler
    /// printed them (relative to the working directory unless absolute).
    pub headers: Vec<PathBuf>,
    /// The output names a file no dependency output lists ([`unlisted_input`]): not keyable.
    pub unlisted: Option<&'static str>,
}

/// Why the preprocessor run gave no key.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot run the preprocessor {compiler}: {source}")]
    Spawn {
        compiler: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The preprocessor failed (its exit code): the real compile will fail too and show why.
    #[error("the preprocessor exited with code {0}")]
    Failed(i32),
    /// The compile reads a file that no dependency output lists: never cached (the label).
    #[error("the compile reads a file no dependency output lists ({0})")]
    Unlisted(&'static str),
}

/// The output of a key's preprocessor run, kept to be sent to a member that compiles it
/// ([`crate::pipeline`]'s offload), so an offloaded miss runs the preprocessor once.
#[derive(Debug)]
pub struct KeptOutput {
    /// What `-E` printed.
    pub text: Vec<u8>,
    /// It printed nothing on stderr (a warning there would be lost on the member).
    pub clean: bool,
}

/// Runs `compiler -E` with the job's preprocessor arguments and hashes its output. With
/// `keep`, also runs with those extra arguments (the dependency file's, pointed elsewhere)
/// and hands back what it printed.
pub fn preprocess(
    ctx: &Context,
    job: &CompileJob,
    keep: Option<&[OsString]>,
) -> Result<(Preprocessed, Option<KeptOutput>), PreprocessError> {
    let mut args = job.cpp_args.clone();
    args.extend(keep.unwrap_or_default().iter().cloned());
    args.extend(["-E".into(), "-x".into(), job.language.name().into()]);
    args.push(job.source.clone().into_os_string());
    let out = ctx
        .runner
        .output(&Command {
            null_stdin: true,
            null_stderr: keep.is_none(),
            ..Command::new(&ctx.compiler, args)
        })
        .map_err(|source| PreprocessError::Spawn {
            compiler: ctx.compiler.clone(),
            source,
        })?;
    if !out.success {
        return Err(PreprocessError::Failed(out.code));
    }
    let pp = hash_preprocessed(&out.stdout, &job.source, ctx.base_dir.as_deref(), &ctx.cwd);
    if let Some(label) = pp.unlisted {
        return Err(PreprocessError::Unlisted(label));
    }
    let kept = keep.map(|_| KeptOutput {
        clean: out.stderr.is_empty(),
        text: out.stdout,
    });
    Ok((pp, kept))
}

/// Hashes preprocessor output, rewriting line-marker paths under `base_dir` and collecting the
/// files they name.
pub fn hash_preprocessed(
    text: &[u8],
    source: &Path,
    base_dir: Option<&Path>,
    cwd: &Path,
) -> Preprocessed {
    let mut h = Sha256::new();
    let mut headers: Vec<PathBuf> = Vec::new();
    let mut seen: crate::util::FastSet<Vec<u8>> = Default::default();
    let mut start = 0;
    while start < text.len() {
        let end = memchr::memchr(b'\n', &text[start..]).map_or(text.len(), |i| start + i + 1);
        let line = &text[start..end];
        start = end;
        if line.first() != Some(&b'#') {
            h.update(line);
            continue;
        }
        let Some((pre, path, post)) = split_marker(line) else {
            h.update(line);
            continue;
        };
        let rewritten = base_dir.and_then(|b| {
            let p = Path::new(OsStr::from_bytes(&path));
            if p.is_absolute() {
                relativize(p, b, cwd)
            } else {
                None
            }
        });
        h.update(pre);
        match &rewritten {
            Some(r) => h.update(r.as_os_str().as_bytes()),
            None => h.update(&path),
        }
        h.update(post);
        // Collect real files: not <built-in>/<command-line>, not the cwd marker ("dir//").
        if !path.starts_with(b"<")
            && !path.ends_with(b"//")
            && path.as_slice() != source.as_os_str().as_bytes()
            && !seen.contains(&path)
        {
            seen.insert(path.clone());
            headers.push(PathBuf::from(OsString::from_vec(path)));
        }
    }
    Preprocessed {
        digest: h.finalize().into(),
        headers,
        unlisted: unlisted_input(text),
    }
}

/// Whether `text` (a source, a header, or preprocessor output) names a file that only the
/// assembler or the compiler proper reads, which neither `-E` nor `-MD` output lists, and so no
/// key can cover; the label `distc stats` counts:
/// - `incbin`: the assembler's `.incbin` (in inline assembly or an assembler source);
/// - `asm-include`: the assembler's `.include`, followed by a quote (possibly escaped, in a C
///   string), or by blanks and a name (a macro, in an assembler source): a C member named
///   `include` is no match;
/// - `embed`: C23 `#embed` or `__has_embed` (the file's bytes or existence; direct and depend
///   mode cannot see it, and an `#embed` left in `-E` output means the data is not there).
///
/// Directive names match in any case, as the assembler reads them, and anywhere (a comment or
/// a string too): a needless refusal costs one cache hit, a missed one a stale object. What is
/// not seen: a directive spelt across concatenated string literals (`".inc" "bin"`), which only
/// the compiler proper joins.
pub fn unlisted_input(text: &[u8]) -> Option<&'static str> {
    let word =
        |rest: &[u8], w: &[u8]| rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w);
    for i in memchr::memchr_iter(b'.', text) {
        let rest = &text[i + 1..];
        if word(rest, b"incbin") {
            return Some("incbin");
        }
        if word(rest, b"include") {
            let after = &rest[7..];
            let blanks = after
                .iter()
                .take_while(|c| matches!(c, b' ' | b'\t'))
                .count();
            match after.get(blanks) {
                Some(b'"' | b'\\') => return Some("asm-include"),
                // `.include NAME`: a macro naming the file, in an assembler source.
                Some(c) if blanks > 0 && (c.is_ascii_alphabetic() || *c == b'_') => {
                    return Some("asm-include");
                }
                _ => {}
            }
        }
    }
    for i in memchr::memmem::find_iter(text, b"embed") {
        let before = &text[..i];
        let directive = before
            .iter()
            .rev()
            .find(|&&c| c != b' ' && c != b'\t')
            .is_some_and(|&c| c == b'#');
        if before.ends_with(b"__has_") || directive {
            return Some("embed");
        }
    }
    None
}

/// Splits a line marker `# 12 "path" 1 3` into (`# 12 "`, unescaped path, `" 1 3\n`).
fn split_marker(line: &[u8]) -> Option<(&[u8], Vec<u8>, &[u8])> {
    let q = memchr::memchr(b'"', line)?;
    let head = &line[..q];
    // `# <digits> ` or `#line <digits> `
    let body = head
        .strip_prefix(b"# ")
        .or_else(|| head.strip_prefix(b"#line "))?;
    if body.is_empty() || !body[0].is_ascii_digit() {
        return None;
    }
    let mut path = Vec::new();
    let mut i = q + 1;
    while i < line.len() {
        match line[i] {
            b'\\' if i + 1 < line.len() => {
                path.push(line[i + 1]);
                i += 2;
            }
            b'"' => return Some((&line[..=q], path, &line[i..])),
            c => {
                path.push(c);
                i += 1;
            }
        }
    }
    None
}

/// Whether `bytes` mentions a macro that expands differently on every compile.
pub fn mentions_time_macros(bytes: &[u8]) -> bool {
    use std::sync::LazyLock;
    // Two vectorised substring searches: `__TIME` finds `__TIME__` and `__TIMESTAMP__` (what
    // follows it is checked), `__DATE__` itself. System headers are full of `__`, so a
    // byte-wise scan that stops at every underscore costs more than the rest of a miss's
    // header reading.
    static TIME: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"__TIME"));
    static DATE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"__DATE__"));
    DATE.find(bytes).is_some()
        || TIME.find_iter(bytes).any(|i| {
            let rest = &bytes[i + 6..];
            rest.starts_with(b"__") || rest.starts_with(b"STAMP__")
        })
}

/// The full fingerprint of a job: key, inputs and the headers found.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub key: Key,
    pub inputs: Inputs,
    pub headers: Vec<PathBuf>,
    /// What each of `headers` was when hashed, when known (depend mode): one entry per header,
    /// or empty. Spares later readers (manifest, miss record) hashing the headers again.
    pub header_states: Vec<HeaderState>,
}

/// A header as read for a key: its content digest and the stat taken right after reading it,
/// and what it tests with `__has_include`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderState {
    pub file: FileRecord,
    /// The names the header tests with `__has_include`: a file appearing under one changes
    /// the compile without being in any header list. `None`: one is not a literal name.
    pub has_include: Option<Vec<Vec<u8>>>,
}

/// The names `text` tests with `__has_include(...)` or `__has_include_next(...)`; `None` when
/// one is not a literal `"name"` or `<name>` (a macro: what it names is not known here).
/// A bare `__has_include` (`#ifdef __has_include`) tests no file.
pub fn has_include_names(text: &[u8]) -> Option<Vec<Vec<u8>>> {
    const NEEDLE: &[u8] = b"__has_include";
    let blank = |s: &[u8]| -> usize { s.iter().take_while(|c| matches!(c, b' ' | b'\t')).count() };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for i in memchr::memmem::find_iter(text, NEEDLE) {
        let mut rest = &text[i + NEEDLE.len()..];
        rest = rest.strip_prefix(b"_next").unwrap_or(rest);
        rest = rest.strip_prefix(b"__").unwrap_or(rest);
        rest = &rest[blank(rest)..];
        let Some(arg) = rest.strip_prefix(b"(") else {
            continue;
        };
        let arg = &arg[blank(arg)..];
        let close = match arg.first() {
            Some(b'"') => b'"',
            Some(b'<') => b'>',
            _ => return None,
        };
        let body = &arg[1..];
        let end = memchr::memchr2(close, b'\n', body)?;
        if body[end] != close || end == 0 {
            return None;
        }
        if !out.iter().any(|n| n.as_slice() == &body[..end]) {
            out.push(body[..end].to_vec());
        }
    }
    Some(out)
}

/// Preprocessor-mode fingerprint: inputs 1–7 plus the preprocessed output.
pub fn preprocessor_fingerprint(
    ctx: &Context,
    job: &CompileJob,
    common: &Inputs,
) -> Result<Fingerprint, PreprocessError> {
    preprocessor_fingerprint_keeping(ctx, job, common, None).map(|(fp, _)| fp)
}

/// [`preprocessor_fingerprint`], keeping the preprocessor's output as [`preprocess`] does
/// with `keep` (`None` for a source the compiler does not preprocess).
pub fn preprocessor_fingerprint_keeping(
    ctx: &Context,
    job: &CompileJob,
    common: &Inputs,
    keep: Option<&[OsString]>,
) -> Result<(Fingerprint, Option<KeptOutput>), PreprocessError> {
    let mut inputs = common.clone();
    let mut kept = None;
    let headers = if job.language.is_preprocessed_by_compiler() {
        let (pp, k) = preprocess(ctx, job, keep)?;
        kept = k;
        inputs.push_digest("preprocessed", pp.digest);
        pp.headers
    } else {
        let bytes = fs::read(&job.source).map_err(|source| PreprocessError::Spawn {
            compiler: job.source.clone(),
            source,
        })?;
        if let Some(label) = unlisted_input(&bytes) {
            return Err(PreprocessError::Unlisted(label));
        }
        inputs.push("source", &bytes);
        Vec::new()
    };
    let fp = Fingerprint {
        key: inputs.key(),
        inputs,
        headers,
        header_states: Vec::new(),
    };
    Ok((fp, kept))
}

// ---------------------------------------------------------------------------------------------
// Miss records: why did this compile miss?

/// The log the inputs of the last stored result for each (source, compiler) are appended to
/// (see [`crate::util::append_record`]), and the id of this source's records in it.
fn miss_record(distc_dir: &Path, cwd: &Path, source: &Path, compiler: &Path) -> (PathBuf, String) {
    let abs = cwd.join(source);
    let id = hash_list([abs.as_os_str().as_bytes(), compiler.as_os_str().as_bytes()]);
    (distc_dir.join(MISS_LOG), hex::encode(&id[..16]))
}

/// The miss records' log in `$DISTC_DIR`.
pub const MISS_LOG: &str = "misses.log";

/// Records the inputs (and header digests) of a result just stored, so a later miss of the same
/// source can say what changed. Best effort: one line appended to the miss log.
pub fn record_inputs(ctx: &Context, source: &Path, fp: &Fingerprint) {
    use std::fmt::Write;
    let (log, id) = miss_record(&ctx.distc_dir, &ctx.cwd, source, &ctx.compiler);
    let mut text = format!("key {}\n", fp.key);
    for i in &fp.inputs.items {
        let _ = writeln!(text, "{} {}", hex::encode(i.digest), i.label);
    }
    let known = fp.header_states.len() == fp.headers.len();
    for (i, hdr) in fp.headers.iter().enumerate() {
        let digest: [u8; 32] = if known {
            fp.header_states[i].file.digest
        } else {
            match fs::read(hdr) {
                Ok(bytes) => Sha256::digest(&bytes).into(),
                Err(_) => continue,
            }
        };
        let _ = writeln!(text, "{} header {}", hex::encode(digest), hdr.display());
    }
    crate::util::append_record(&log, &id, &text);
}

/// What changed between the last stored result for this source and `fp`: a list of
/// human-readable lines (`changed: args`, `changed: header inc/a.h`, `new: header b.h`), empty
/// when nothing differs, `None` when there is no record.
pub fn why_missed(ctx: &Context, source: &Path, fp: &Fingerprint) -> Option<Vec<String>> {
    let (log, id) = miss_record(&ctx.distc_dir, &ctx.cwd, source, &ctx.compiler);
    let text = crate::util::last_record(&log, &id)?;
    let mut old: Vec<(String, String)> = Vec::new();
    for line in text.lines().skip(1) {
        if let Some((d, label)) = line.split_once(' ') {
            old.push((label.to_string(), d.to_string()));
        }
    }
    let mut now: Vec<(String, String)> = fp.inputs.listing();
    for hdr in &fp.headers {
        if let Ok(bytes) = fs::read(hdr) {
            now.push((
                format!("header {}", hdr.display()),
                hex::encode(Sha256::digest(&bytes)),
            ));
        }
    }
    let mut out = Vec::new();
    for (label, d) in &now {
        match old.iter().find(|(l, _)| l == label) {
            Some((_, od)) if od == d => {}
            Some(_) => out.push(format!("changed: {label}")),
            None => out.push(format!("new: {label}")),
        }
    }
    for (label, _) in &old {
        if !now.iter().any(|(l, _)| l == label) {
            out.push(format!("gone: {label}"));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relativize_paths() {
        let base = Path::new("/home/u/src");
        let cwd = Path::new("/home/u/src/proj/build");
        assert_eq!(
            relativize(Path::new("/home/u/src/proj/inc"), base, cwd).unwrap(),
            Path::new("../inc")
        );
        assert_eq!(
            relativize(Path::new("/home/u/src/proj/build"), base, cwd).unwrap(),
            Path::new(".")
        );
        assert!(relativize(Path::new("/usr/include"), base, cwd).is_none());
        assert_eq!(
            rewrite_arg(OsStr::new("-I/home/u/src/proj/inc"), Some(base), cwd),
            OsStr::new("-I../inc")
        );
        assert_eq!(
            rewrite_arg(OsStr::new("-I/usr/inc"), Some(base), cwd),
            OsStr::new("-I/usr/inc")
        );
    }

    #[test]
    fn compile_args_and_prefix_maps() {
        let base = Path::new("/home/u");
        let cwd = Path::new("/home/u/app/build");
        let args: Vec<OsString> = [
            "-I/home/u/app/include",
            "-fdebug-prefix-map=/home/u/app=.",
            "-ffile-prefix-map=/home/u/app/=",
            "-MT",
            "/home/u/app/build/a.o",
            "-MF/home/u/app/build/a.o.d",
            "-o/home/u/app/build/a.o",
            "-isystem",
            "/usr/include/x",
            "/home/u/app/src/a.c",
        ]
        .map(OsString::from)
        .to_vec();
        let rel = compile_args(&args, base, cwd).expect("rewritten");
        let rel: Vec<&str> = rel.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            rel,
            [
                "-I../include",
                // The compiler keeps OLD absolute: it must still match the working directory.
                "-fdebug-prefix-map=/home/u/app=.",
                "-ffile-prefix-map=/home/u/app/=",
                "-MT",
                "a.o",
                "-MFa.o.d",
                "-oa.o",
                "-isystem",
                "/usr/include/x",
                "../src/a.c",
            ]
        );
        // Not under base_dir: nothing to do.
        assert!(compile_args(&args, Path::new("/other"), cwd).is_none());
        // The key normalises OLD, keeping a trailing slash (gcc matches OLD as a string).
        let key = |a: &str| rewrite_arg(OsStr::new(a), Some(base), cwd);
        assert_eq!(
            key("-fdebug-prefix-map=/home/u/app=."),
            "-fdebug-prefix-map=..=."
        );
        assert_eq!(
            key("-ffile-prefix-map=/home/u/app/="),
            "-ffile-prefix-map=../="
        );
        assert_eq!(
            key("-fmacro-prefix-map=/home/u/app/build=/home/u/x"),
            "-fmacro-prefix-map=.=/home/u/x"
        );
        assert_eq!(
            key("-fdebug-prefix-map=/opt=."),
            "-fdebug-prefix-map=/opt=."
        );
    }

    #[test]
    fn line_markers_rewritten_and_headers_collected() {
        let a = b"# 0 \"/a/p/x.c\"\n# 1 \"/a/p/inc/h.h\" 1\nint x;\n# 1 \"/usr/include/stdio.h\" 1 3 4\n# 0 \"<built-in>\"\n";
        let b = b"# 0 \"/b/p/x.c\"\n# 1 \"/b/p/inc/h.h\" 1\nint x;\n# 1 \"/usr/include/stdio.h\" 1 3 4\n# 0 \"<built-in>\"\n";
        let pa = hash_preprocessed(
            a,
            Path::new("/a/p/x.c"),
            Some(Path::new("/a")),
            Path::new("/a/p"),
        );
        let pb = hash_preprocessed(
            b,
            Path::new("/b/p/x.c"),
            Some(Path::new("/b")),
            Path::new("/b/p"),
        );
        assert_eq!(pa.digest, pb.digest);
        assert_eq!(
            pa.headers,
            [
                PathBuf::from("/a/p/inc/h.h"),
                PathBuf::from("/usr/include/stdio.h")
            ]
        );
        let pc = hash_preprocessed(a, Path::new("/a/p/x.c"), None, Path::new("/a/p"));
        assert_ne!(pa.digest, pc.digest);
    }

    #[test]
    fn time_macros() {
        assert!(mentions_time_macros(b"const char *t = __TIME__;"));
        assert!(mentions_time_macros(b"__DATE__"));
        assert!(mentions_time_macros(b"x __TIMESTAMP__"));
        assert!(!mentions_time_macros(b"__TIM__ __DAT__ int x;"));
        assert!(!mentions_time_macros(
            b"__TIMER__ __TIME_ __TIMESTAMP_ __DATE_"
        ));
        // A match after many near-misses, at the very end of the text.
        let mut t = b"__TIMEOUT __TIME_ __attribute__ ".repeat(1000);
        assert!(!mentions_time_macros(&t));
        t.extend_from_slice(b"__TIMESTAMP__");
        assert!(mentions_time_macros(&t));
    }

    #[test]
    fn unlisted_inputs_found() {
        for (text, want) in [
            (
                &b"__asm__(\".incbin \\\"blob.bin\\\"\");"[..],
                Some("incbin"),
            ),
            (b"  .INCBIN \"x\"\n", Some("incbin")),
            (b".IncBin \"x\"", Some("incbin")),
            (b".include \"part.s\"\n", Some("asm-include")),
            (b"__asm__(\".include\\\"p.s\\\"\");", Some("asm-include")),
            (b"\t.include\tP\n", Some("asm-include")),
            (b"#embed \"data.bin\"\n", Some("embed")),
            (b"#  embed <data.bin>\n", Some("embed")),
            (b"#if __has_embed(\"x\")\n", Some("embed")),
            // Not directives: a member named include, an include of a header, a word.
            (b"s.include = 1; x.includes; p->incbin;", None),
            (b"#include \"incbin.h\"\n#include <x/include/y.h>\n", None),
            (b"embedded = 1; /* embed */ double d = 1.5;", None),
        ] {
            assert_eq!(
                unlisted_input(text),
                want,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn has_include_names_found() {
        let text = b"#ifdef __has_include\n# if __has_include (\"linux/rseq.h\")\n#endif\n\
            #if __has_include(<sys/sdt.h>) || __has_include_next(<sys/sdt.h>)\n";
        assert_eq!(
            has_include_names(text).unwrap(),
            [b"linux/rseq.h".to_vec(), b"sys/sdt.h".to_vec()]
        );
        assert!(has_include_names(b"#if __has_include(HEADER)\n").is_none());
        assert!(has_include_names(b"#if __has_include(\"open\n").is_none());
        assert_eq!(has_include_names(b"int x;").unwrap(), Vec::<Vec<u8>>::new());
        for pad in 0..4 {
            let mut t = " ".repeat(pad).into_bytes();
            t.extend_from_slice(b"__TIME__");
            assert!(mentions_time_macros(&t), "offset {pad}");
            assert!(!mentions_time_macros(&t[..t.len() - 1]), "offset {pad}");
        }
    }
}
