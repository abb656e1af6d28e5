//! Argument parsing for rustc, as cargo (or a person) invokes it.
//!
//! The result is a [`RustJob`]: what the compile reads (the crate root, `--extern` crates,
//! native libraries), what it writes (every file rustc puts into `--out-dir` for this crate) and
//! the arguments that go into the key, with per-invocation paths separated out. Anything the
//! parser does not understand makes the compile uncacheable with a short, stable label
//! (`unknown-option`, `incremental`, …) rather than risking a key that misses an input.
//!
//! Unlike sccache, every crate type is cacheable: binaries, `dylib`, `cdylib` and `proc-macro`
//! crates are linked by rustc, so the key of those jobs also covers the linker and the native
//! libraries named on the command line (see `crate::compiler::rust::key`).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The outcome of parsing a rustc command line.
#[derive(Debug)]
pub enum RustParsed {
    /// A cacheable compile of one crate.
    Compile(Box<RustJob>),
    /// Not a compile at all (`-vV`, `--print`, reading stdin, `--explain`): run rustc directly,
    /// as fast as possible. Counted as `rustc-no-compile`.
    NotCompile,
    /// A compile distc does not cache; the label is what `distc stats` shows.
    Uncacheable(&'static str),
}

/// A crate type, as `--crate-type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrateType {
    Bin,
    Rlib,
    Dylib,
    Cdylib,
    Staticlib,
    ProcMacro,
}

impl CrateType {
    fn parse(s: &str) -> Option<CrateType> {
        Some(match s {
            "bin" => CrateType::Bin,
            "lib" | "rlib" => CrateType::Rlib,
            "dylib" => CrateType::Dylib,
            "cdylib" => CrateType::Cdylib,
            "staticlib" => CrateType::Staticlib,
            "proc-macro" => CrateType::ProcMacro,
            _ => return None,
        })
    }

    /// The stable name used in the key and in logs.
    pub fn name(self) -> &'static str {
        match self {
            CrateType::Bin => "bin",
            CrateType::Rlib => "rlib",
            CrateType::Dylib => "dylib",
            CrateType::Cdylib => "cdylib",
            CrateType::Staticlib => "staticlib",
            CrateType::ProcMacro => "proc-macro",
        }
    }

    /// Whether rustc runs the system linker for this crate type (then the linker and native
    /// libraries join the key).
    pub fn links(self) -> bool {
        matches!(
            self,
            CrateType::Bin | CrateType::Dylib | CrateType::Cdylib | CrateType::ProcMacro
        )
    }

    /// The file rustc writes for this crate type (Linux/ELF naming).
    fn file_name(self, stem: &str) -> String {
        match self {
            CrateType::Bin => stem.to_string(),
            CrateType::Rlib => format!("lib{stem}.rlib"),
            CrateType::Dylib | CrateType::Cdylib | CrateType::ProcMacro => {
                format!("lib{stem}.so")
            }
            CrateType::Staticlib => format!("lib{stem}.a"),
        }
    }
}

/// An `--extern NAME[=PATH]` argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Extern {
    /// The name, possibly with modifiers (`noprelude:foo`, `priv:foo`).
    pub name: String,
    /// The crate file (`.rlib`, `.rmeta`, `.so`); `None` for sysroot crates (`--extern proc_macro`).
    pub path: Option<PathBuf>,
}

/// A `-L [KIND=]PATH` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibPath {
    /// `dependency`, `crate`, `native`, `framework` or `all` (no kind given).
    pub kind: String,
    pub path: PathBuf,
}

/// A `-l [KIND[:MODIFIERS]=]NAME[:RENAME]` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeLib {
    /// `static`, `dylib`, `framework`, `link-arg` or empty (unspecified), with modifiers.
    pub kind: String,
    pub name: String,
}

/// One argument that goes into the key, with its paths still raw: the key builder
/// (`crate::compiler::rust::key`) normalises the paths inside values so two checkouts share keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyArg {
    /// An option and its value, key-relevant as written (`--edition 2021`, `-C opt-level=3`).
    Plain(String),
    /// An option whose value contains paths (`--remap-path-prefix`, `-C link-arg=…`): the
    /// normaliser rewrites absolute paths under known roots.
    WithPaths(String),
}

/// A cacheable rustc compile of one crate.
#[derive(Debug, Clone)]
pub struct RustJob {
    /// The crate root as given on the command line.
    pub input: PathBuf,
    pub crate_name: String,
    /// Sorted, deduplicated; `--test` makes it `[Bin]`.
    pub crate_types: Vec<CrateType>,
    /// `--test`: a test harness executable.
    pub test: bool,
    /// `--emit` kinds (subset of `link`, `metadata`, `dep-info`); `link` when none given.
    pub emit: BTreeSet<Emit>,
    /// `--out-dir` (absolute or relative to the working directory); `None` = working directory.
    pub out_dir: Option<PathBuf>,
    /// `-o FILE`: the single output file (only with `--emit=link` and one crate type).
    pub out_file: Option<PathBuf>,
    /// `-C extra-filename`: suffix of every output's stem.
    pub extra_filename: String,
    pub externs: Vec<Extern>,
    pub lib_paths: Vec<LibPath>,
    pub native_libs: Vec<NativeLib>,
    /// `--target` (a built-in triple; JSON target specs are not cached).
    pub target: Option<String>,
    /// `-C linker=…`.
    pub linker: Option<PathBuf>,
    /// Debug info requested: the output then records the working directory and source paths.
    pub debug_info: bool,
    /// `--remap-path-prefix FROM=TO` FROM values: paths under them do not reach the output.
    pub remap_from: Vec<PathBuf>,
    /// Arguments that go into the key, in order, with order-free ones (`--cfg`,
    /// `--check-cfg`) sorted at the end. Excludes output paths, the input path, `--extern`
    /// and `-L` (whose contents are hashed instead).
    pub key_args: Vec<KeyArg>,
    /// The full argument list for the real compile (response files expanded).
    pub args: Vec<OsString>,
    /// Arguments for the dep-info pass: everything except `--emit`, `--out-dir` and `-o`
    /// (the pass adds `--emit=dep-info -o TMP`).
    pub depinfo_args: Vec<OsString>,
}

/// An `--emit` kind distc caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Emit {
    Link,
    Metadata,
    DepInfo,
}

impl Emit {
    /// The name `--emit` uses.
    pub fn name(self) -> &'static str {
        match self {
            Emit::Link => "link",
            Emit::Metadata => "metadata",
            Emit::DepInfo => "dep-info",
        }
    }
}

impl RustJob {
    /// Whether rustc runs the linker for this job.
    pub fn links(&self) -> bool {
        self.emit.contains(&Emit::Link) && self.crate_types.iter().any(|t| t.links())
    }

    /// The stem of every output: crate name + `-C extra-filename`.
    pub fn stem(&self) -> String {
        format!("{}{}", self.crate_name, self.extra_filename)
    }

    /// Every file rustc writes for this crate, as names relative to the output directory
    /// (or the full `-o` path for the link output when `-o` is given).
    pub fn output_names(&self) -> Vec<String> {
        let stem = self.stem();
        let mut names = Vec::new();
        if self.emit.contains(&Emit::Link) && self.out_file.is_none() {
            for t in &self.crate_types {
                names.push(t.file_name(&stem));
            }
        }
        if self.emit.contains(&Emit::Metadata) {
            let rmeta = format!("lib{stem}.rmeta");
            if !names.contains(&rmeta) {
                names.push(rmeta);
            }
        }
        if self.emit.contains(&Emit::DepInfo) {
            names.push(format!("{stem}.d"));
        }
        names
    }

    /// The dep-info file this job asks rustc for, relative to the output directory.
    pub fn dep_info_name(&self) -> Option<String> {
        self.emit
            .contains(&Emit::DepInfo)
            .then(|| format!("{}.d", self.stem()))
    }

    /// Whether asking rustc for dep-info as well leaves every output of this job
    /// byte-identical. The crate metadata rustc writes (`.rmeta`, and inside `.rlib`, dylibs
    /// and proc-macros) differs when dep-info is emitted too, so only jobs that write no
    /// metadata qualify: executables (`--test` harnesses included) and cdylibs.
    pub fn extra_dep_info_is_neutral(&self) -> bool {
        self.emit.contains(&Emit::Link)
            && !self.emit.contains(&Emit::Metadata)
            && self
                .crate_types
                .iter()
                .all(|t| matches!(t, CrateType::Bin | CrateType::Cdylib))
    }

    /// `--emit` naming every kind this job emits, plus dep-info written to `path`: the extra
    /// argument that makes rustc report the crate's sources during the compile itself.
    pub fn emit_with_dep_info(&self, path: &Path) -> Option<OsString> {
        let p = path.to_str()?;
        if p.contains(',') {
            return None;
        }
        let mut kinds: Vec<String> = self
            .emit
            .iter()
            .filter(|e| **e != Emit::DepInfo)
            .map(|e| e.name().to_string())
            .collect();
        kinds.push(format!("dep-info={p}"));
        Some(OsString::from(format!("--emit={}", kinds.join(","))))
    }

    /// A short description for logs and `build-project`: `name (rlib)`.
    pub fn describe(&self) -> String {
        let types: Vec<&str> = if self.test {
            vec!["test"]
        } else {
            self.crate_types.iter().map(|t| t.name()).collect()
        };
        format!("{} ({})", self.crate_name, types.join(","))
    }
}

/// Options that take a value (as the next argument, or glued: `--opt=v`, `-Cv`).
/// `true` = short option (value may be glued without `=`).
const WITH_VALUE: &[(&str, bool)] = &[
    ("--cfg", false),
    ("--check-cfg", false),
    ("--crate-name", false),
    ("--crate-type", false),
    ("--edition", false),
    ("--emit", false),
    ("--print", false),
    ("--out-dir", false),
    ("--explain", false),
    ("--target", false),
    ("--sysroot", false),
    ("--error-format", false),
    ("--json", false),
    ("--color", false),
    ("--diagnostic-width", false),
    ("--remap-path-prefix", false),
    ("--extern", false),
    ("--cap-lints", false),
    ("--allow", false),
    ("--warn", false),
    ("--deny", false),
    ("--forbid", false),
    ("--force-warn", false),
    ("--codegen", false),
    ("--pretty", false),
    ("--unpretty", false),
    ("--env-set", false),
    ("-C", true),
    ("-Z", true),
    ("-L", true),
    ("-l", true),
    ("-o", true),
    ("-A", true),
    ("-W", true),
    ("-D", true),
    ("-F", true),
];

/// Parse a rustc command line (without the program name). `read_file` reads `@file`
/// argument files; a parameter so tests need no filesystem.
pub fn parse(args: &[OsString], read_file: &dyn Fn(&Path) -> Option<Vec<u8>>) -> RustParsed {
    // The fast exits first: cargo probes rustc with `-vV` and `- --print=…` several times per
    // build, and those must cost nothing.
    if args.is_empty() {
        return RustParsed::NotCompile;
    }
    let args = match expand_argfiles(args, read_file) {
        Some(a) => a,
        None => return RustParsed::Uncacheable("response-file"),
    };
    parse_expanded(args)
}

/// Expand `@path` arguments: rustc reads one argument per line.
fn expand_argfiles(
    args: &[OsString],
    read_file: &dyn Fn(&Path) -> Option<Vec<u8>>,
) -> Option<Vec<OsString>> {
    if !args.iter().any(|a| a.as_bytes().first() == Some(&b'@')) {
        return Some(args.to_vec());
    }
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a.as_bytes() {
            [b'@', rest @ ..] if !rest.is_empty() => {
                if rest.starts_with(b"shell:") {
                    return None;
                }
                let text = read_file(Path::new(OsStr::from_bytes(rest)))?;
                let text = String::from_utf8(text).ok()?;
                out.extend(text.lines().map(OsString::from));
            }
            _ => out.push(a.clone()),
        }
    }
    Some(out)
}

fn split_kv(s: &str) -> (&str, Option<&str>) {
    match s.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (s, None),
    }
}

/// Whether a `-C`/`-Z` value or other option text mentions something that looks like a path.
fn has_path(s: &str) -> bool {
    s.contains('/')
}

fn parse_expanded(args: Vec<OsString>) -> RustParsed {
    let mut input: Option<PathBuf> = None;
    let mut crate_name: Option<String> = None;
    let mut crate_types: BTreeSet<CrateType> = BTreeSet::new();
    let mut emit: BTreeSet<Emit> = BTreeSet::new();
    let mut emit_given = false;
    let mut out_dir = None;
    let mut out_file = None;
    let mut extra_filename = String::new();
    let mut externs = Vec::new();
    let mut lib_paths = Vec::new();
    let mut native_libs = Vec::new();
    let mut target = None;
    let mut linker = None;
    let mut debug_info = false;
    let mut remap_from = Vec::new();
    let mut test = false;
    let mut key_args: Vec<KeyArg> = Vec::new();
    let mut sorted_args: Vec<String> = Vec::new();
    let mut depinfo_args: Vec<OsString> = Vec::new();
    let mut not_compile = false;
    let mut uncacheable: Option<&'static str> = None;

    let mut i = 0;
    while i < args.len() {
        let raw = &args[i];
        i += 1;
        let Some(arg) = raw.to_str() else {
            // Non-UTF-8 arguments: only a path could be like that.
            if raw.as_bytes().first() == Some(&b'-') {
                return RustParsed::Uncacheable("non-utf8-argument");
            }
            if input.is_some() {
                return RustParsed::Uncacheable("multiple-sources");
            }
            input = Some(PathBuf::from(raw));
            depinfo_args.push(raw.clone());
            continue;
        };
        if arg == "-" {
            // The crate comes from stdin: cargo's target-info probe, never a real build.
            not_compile = true;
            continue;
        }
        if !arg.starts_with('-') {
            if input.is_some() {
                return RustParsed::Uncacheable("multiple-sources");
            }
            input = Some(PathBuf::from(arg));
            depinfo_args.push(raw.clone());
            continue;
        }
        // Flags without a value.
        match arg {
            "-V" | "--version" | "-h" | "--help" | "-vV" | "-Vv" => {
                not_compile = true;
                continue;
            }
            "-v" | "--verbose" => {
                // Only meaningful with -V/--help; harmless in a compile but keyed.
                key_args.push(KeyArg::Plain(arg.into()));
                depinfo_args.push(raw.clone());
                continue;
            }
            "-g" => {
                debug_info = true;
                key_args.push(KeyArg::Plain(arg.into()));
                depinfo_args.push(raw.clone());
                continue;
            }
            "-O" => {
                key_args.push(KeyArg::Plain(arg.into()));
                depinfo_args.push(raw.clone());
                continue;
            }
            "--test" => {
                test = true;
                key_args.push(KeyArg::Plain(arg.into()));
                depinfo_args.push(raw.clone());
                continue;
            }
            _ => {}
        }
        // Options with a value: `--opt=v`, `--opt v`, `-Xv`, `-X v`.
        let mut found = None;
        for &(name, short) in WITH_VALUE {
            if arg == name {
                let Some(v) = args.get(i) else {
                    return RustParsed::Uncacheable("missing-argument");
                };
                i += 1;
                let Some(v) = v.to_str() else {
                    return RustParsed::Uncacheable("non-utf8-argument");
                };
                found = Some((name, v.to_string()));
                break;
            }
            if let Some(rest) = arg.strip_prefix(name) {
                if !short && let Some(v) = rest.strip_prefix('=') {
                    found = Some((name, v.to_string()));
                    break;
                }
                if short && !rest.is_empty() {
                    found = Some((name, rest.to_string()));
                    break;
                }
            }
        }
        let Some((opt, value)) = found else {
            return RustParsed::Uncacheable("unknown-option");
        };
        // By default an option goes everywhere; the match says otherwise.
        let mut to_depinfo = true;
        let mut to_key = Some(KeyArg::Plain(format!("{opt}={value}")));
        match opt {
            "--print" | "--explain" => {
                not_compile = true;
            }
            "--pretty" | "--unpretty" => {
                uncacheable.get_or_insert("unpretty");
            }
            "--crate-name" => crate_name = Some(value.clone()),
            "--crate-type" => {
                for t in value.split(',') {
                    match CrateType::parse(t.trim()) {
                        Some(ct) => {
                            crate_types.insert(ct);
                        }
                        None => {
                            uncacheable.get_or_insert("crate-type-unknown");
                        }
                    }
                }
                // Collected and keyed in sorted form below.
                to_key = None;
            }
            "--emit" => {
                emit_given = true;
                to_depinfo = false;
                for e in value.split(',') {
                    let (kind, path) = split_kv(e.trim());
                    if path.is_some() {
                        uncacheable.get_or_insert("emit-path");
                    }
                    match kind {
                        "link" => {
                            emit.insert(Emit::Link);
                        }
                        "metadata" => {
                            emit.insert(Emit::Metadata);
                        }
                        "dep-info" => {
                            emit.insert(Emit::DepInfo);
                        }
                        "asm" | "llvm-bc" | "llvm-ir" | "obj" | "mir" | "thin-link-bitcode" => {
                            uncacheable.get_or_insert("emit-other");
                        }
                        _ => {
                            uncacheable.get_or_insert("unknown-option");
                        }
                    }
                }
                to_key = None;
            }
            "--out-dir" => {
                out_dir = Some(PathBuf::from(&value));
                to_depinfo = false;
                to_key = None;
            }
            "-o" => {
                out_file = Some(PathBuf::from(&value));
                to_depinfo = false;
                to_key = None;
            }
            "--target" => {
                if value.ends_with(".json") || value.contains('/') {
                    uncacheable.get_or_insert("target-spec-file");
                }
                target = Some(value.clone());
            }
            "--sysroot" => {
                uncacheable.get_or_insert("sysroot");
            }
            "--extern" => {
                let (name, path) = split_kv(&value);
                externs.push(Extern {
                    name: name.to_string(),
                    path: path.filter(|p| !p.is_empty()).map(PathBuf::from),
                });
                to_key = None;
            }
            "-L" => {
                let (kind, path) = match split_kv(&value) {
                    (k, Some(p))
                        if matches!(k, "dependency" | "crate" | "native" | "framework" | "all") =>
                    {
                        (k.to_string(), p)
                    }
                    _ => ("all".to_string(), value.as_str()),
                };
                if matches!(kind.as_str(), "native" | "framework" | "all") {
                    // Native search paths shape which library the linker finds: keyed
                    // (normalised) in order; the libraries found there are hashed too.
                    to_key = Some(KeyArg::WithPaths(format!("-L={kind}={path}")));
                } else {
                    to_key = None;
                }
                lib_paths.push(LibPath {
                    kind,
                    path: PathBuf::from(path),
                });
            }
            "-l" => {
                let (kind, name) = match split_kv(&value) {
                    (k, Some(n)) => (k.to_string(), n.to_string()),
                    (n, None) => (String::new(), n.to_string()),
                };
                native_libs.push(NativeLib { kind, name });
            }
            "--remap-path-prefix" => {
                if let Some((from, _to)) = value.rsplit_once('=') {
                    remap_from.push(PathBuf::from(from));
                }
                to_key = Some(KeyArg::WithPaths(format!("{opt}={value}")));
            }
            "--cfg" | "--check-cfg" => {
                sorted_args.push(format!("{opt}={value}"));
                to_key = None;
            }
            "--color" => {
                // Shapes the diagnostics we replay: keyed as given.
            }
            "-C" | "--codegen" => {
                let (k, v) = split_kv(&value);
                let k = k.replace('_', "-");
                match (k.as_str(), v) {
                    ("incremental", _) => {
                        uncacheable.get_or_insert("incremental");
                    }
                    ("extra-filename", Some(v)) => extra_filename = v.to_string(),
                    ("linker", Some(v)) => {
                        linker = Some(PathBuf::from(v));
                        // The linker's identity goes into the key instead of its path.
                        to_key = None;
                    }
                    ("debuginfo", Some(v)) => debug_info = !matches!(v, "0" | "none"),
                    ("save-temps", _) => {
                        uncacheable.get_or_insert("save-temps");
                    }
                    ("profile-generate", _) | ("profile-use", _) => {
                        uncacheable.get_or_insert("profile-guided");
                    }
                    ("split-debuginfo", Some(v)) if v != "off" => {
                        uncacheable.get_or_insert("split-debuginfo");
                    }
                    ("target-cpu", Some("native")) => {
                        uncacheable.get_or_insert("target-cpu-native");
                    }
                    _ => {}
                }
                if to_key.is_some() {
                    let text = format!("-C={k}{}", v.map(|v| format!("={v}")).unwrap_or_default());
                    to_key = Some(if has_path(&text) {
                        KeyArg::WithPaths(text)
                    } else {
                        KeyArg::Plain(text)
                    });
                }
            }
            "-Z" => {
                let (k, _) = split_kv(&value);
                if k.replace('_', "-") == "incremental" {
                    uncacheable.get_or_insert("incremental");
                }
                if has_path(&value) {
                    to_key = Some(KeyArg::WithPaths(format!("-Z={value}")));
                }
            }
            _ => {}
        }
        if let Some(k) = to_key {
            key_args.push(k);
        }
        if to_depinfo {
            depinfo_args.push(OsString::from(opt));
            depinfo_args.push(OsString::from(value));
        }
    }

    if not_compile {
        return RustParsed::NotCompile;
    }
    let Some(input) = input else {
        return RustParsed::NotCompile;
    };
    if let Some(reason) = uncacheable {
        return RustParsed::Uncacheable(reason);
    }
    if !emit_given {
        emit.insert(Emit::Link);
    }
    if !emit.contains(&Emit::Link) && !emit.contains(&Emit::Metadata) {
        // Only dep-info: nothing worth caching.
        return RustParsed::Uncacheable("emit-dep-info-only");
    }
    let crate_name = match crate_name {
        Some(n) => n,
        None => match input.file_stem().and_then(|s| s.to_str()) {
            // rustc's default: the file stem with `-` made `_`.
            Some(stem) if !stem.is_empty() => stem.replace('-', "_"),
            _ => return RustParsed::Uncacheable("crate-name"),
        },
    };
    let crate_types: Vec<CrateType> = if test {
        vec![CrateType::Bin]
    } else if crate_types.is_empty() {
        // rustc's default; a `#![crate_type]` attribute could say otherwise, in which case the
        // expected output is missing after the compile and the result is not stored.
        vec![CrateType::Bin]
    } else {
        crate_types.into_iter().collect()
    };
    if out_file.is_some()
        && (crate_types.len() != 1 || emit.len() != 1 || !emit.contains(&Emit::Link))
    {
        return RustParsed::Uncacheable("output-file");
    }
    let types: Vec<&str> = crate_types.iter().map(|t| t.name()).collect();
    key_args.push(KeyArg::Plain(format!("--crate-type={}", types.join(","))));
    let emits: Vec<&str> = emit.iter().map(|e| e.name()).collect();
    key_args.push(KeyArg::Plain(format!("--emit={}", emits.join(","))));
    sorted_args.sort();
    key_args.extend(sorted_args.into_iter().map(KeyArg::Plain));
    externs.sort();

    RustParsed::Compile(Box::new(RustJob {
        input,
        crate_name,
        crate_types,
        test,
        emit,
        out_dir,
        out_file,
        extra_filename,
        externs,
        lib_paths,
        native_libs,
        target,
        linker,
        debug_info,
        remap_from,
        key_args,
        args,
        depinfo_args,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn p(line: &str) -> RustParsed {
        parse(&os(line), &|_| None)
    }

    fn job(line: &str) -> RustJob {
        match p(line) {
            RustParsed::Compile(j) => *j,
            other => panic!("expected a compile for {line:?}, got {other:?}"),
        }
    }

    fn reason(line: &str) -> &'static str {
        match p(line) {
            RustParsed::Uncacheable(r) => r,
            other => panic!("expected uncacheable for {line:?}, got {other:?}"),
        }
    }

    const CARGO_LIB: &str = "--crate-name foo --edition=2021 src/lib.rs --error-format=json \
        --json=diagnostic-rendered-ansi,artifacts,future-incompat --crate-type lib \
        --emit=dep-info,metadata,link -C embed-bitcode=no -C debuginfo=2 \
        --check-cfg cfg(docsrs,test) --check-cfg cfg(feature,values()) -C metadata=338f1d8b \
        -C extra-filename=-c7705a44 --out-dir /w/target/debug/deps \
        -L dependency=/w/target/debug/deps --extern itoa=/w/target/debug/deps/libitoa-1.rmeta \
        --cfg feature=\"b\" --cfg feature=\"a\"";

    #[test]
    fn cargo_lib_invocation() {
        let j = job(CARGO_LIB);
        assert_eq!(j.crate_name, "foo");
        assert_eq!(j.input, PathBuf::from("src/lib.rs"));
        assert_eq!(j.crate_types, vec![CrateType::Rlib]);
        assert_eq!(j.out_dir, Some(PathBuf::from("/w/target/debug/deps")));
        assert_eq!(j.extra_filename, "-c7705a44");
        assert!(j.debug_info);
        assert!(!j.links());
        assert_eq!(
            j.output_names(),
            vec![
                "libfoo-c7705a44.rlib".to_string(),
                "libfoo-c7705a44.rmeta".to_string(),
                "foo-c7705a44.d".to_string()
            ]
        );
        assert_eq!(j.externs.len(), 1);
        assert_eq!(j.externs[0].name, "itoa");
        // No per-invocation path reaches the key.
        let keys: Vec<String> = j
            .key_args
            .iter()
            .map(|k| match k {
                KeyArg::Plain(s) | KeyArg::WithPaths(s) => s.clone(),
            })
            .collect();
        assert!(keys.iter().all(|k| !k.contains("/w/")), "{keys:?}");
        // --cfg values sorted at the end.
        let cfgs: Vec<&String> = keys.iter().filter(|k| k.starts_with("--cfg=")).collect();
        assert_eq!(cfgs, vec!["--cfg=feature=\"a\"", "--cfg=feature=\"b\""]);
        // The dep-info pass has no --emit / --out-dir.
        let d: Vec<&str> = j.depinfo_args.iter().filter_map(|a| a.to_str()).collect();
        assert!(
            !d.iter()
                .any(|a| a.starts_with("--emit") || *a == "--out-dir")
        );
        assert!(d.contains(&"src/lib.rs"));
    }

    #[test]
    fn every_crate_type_is_cacheable() {
        let bin = job(
            "--crate-name app src/main.rs --crate-type bin --emit=dep-info,link \
             -C extra-filename=-9 --out-dir out",
        );
        assert!(bin.links());
        assert_eq!(
            bin.output_names(),
            vec!["app-9".to_string(), "app-9.d".to_string()]
        );
        let pm = job(
            "--crate-name m src/lib.rs --crate-type proc-macro --emit=dep-info,link \
             --extern proc_macro --out-dir out",
        );
        assert_eq!(
            pm.output_names(),
            vec!["libm.so".to_string(), "m.d".to_string()]
        );
        assert_eq!(pm.externs[0].path, None);
        let multi = job("--crate-name x x.rs --crate-type cdylib,staticlib --crate-type rlib");
        assert_eq!(
            multi.crate_types,
            vec![CrateType::Rlib, CrateType::Cdylib, CrateType::Staticlib]
        );
        assert_eq!(multi.output_names(), vec!["libx.rlib", "libx.so", "libx.a"]);
        let t = job("--crate-name t src/lib.rs --test --emit=dep-info,link --out-dir o");
        assert!(t.test);
        assert_eq!(t.output_names(), vec!["t".to_string(), "t.d".to_string()]);
    }

    #[test]
    fn not_compiles_pass_through() {
        for line in [
            "-vV",
            "-V",
            "--version",
            "- --crate-name ___ --print=file-names --crate-type bin",
            "--print sysroot",
            "--explain E0308",
            "",
        ] {
            assert!(matches!(p(line), RustParsed::NotCompile), "{line:?}");
        }
    }

    #[test]
    fn uncacheable_reasons() {
        assert_eq!(
            reason("--crate-name a a.rs -C incremental=/tmp/inc --crate-type lib"),
            "incremental"
        );
        assert_eq!(reason("a.rs b.rs"), "multiple-sources");
        assert_eq!(reason("a.rs --frobnicate"), "unknown-option");
        assert_eq!(reason("a.rs --emit=asm"), "emit-other");
        assert_eq!(reason("a.rs --emit=link=/x/y"), "emit-path");
        assert_eq!(reason("a.rs --crate-type sdylib"), "crate-type-unknown");
        assert_eq!(reason("a.rs --target my.json"), "target-spec-file");
        assert_eq!(reason("a.rs -C target-cpu=native"), "target-cpu-native");
        assert_eq!(reason("a.rs -C save-temps"), "save-temps");
        assert_eq!(reason("a.rs --emit=dep-info"), "emit-dep-info-only");
        assert_eq!(reason("a.rs --crate-type lib,bin -o x"), "output-file");
        assert_eq!(reason("a.rs @missing"), "response-file");
    }

    #[test]
    fn glued_and_separate_forms_are_equal() {
        let a = job("--crate-name=a a.rs -Copt-level=3 -Lnative=/n -lstatic=z --crate-type=lib");
        let b = job("--crate-name a a.rs -C opt-level=3 -L native=/n -l static=z --crate-type lib");
        assert_eq!(a.key_args, b.key_args);
        assert_eq!(a.lib_paths, b.lib_paths);
        assert_eq!(a.native_libs, b.native_libs);
        assert_eq!(a.native_libs[0].kind, "static");
    }

    #[test]
    fn defaults_for_plain_rustc() {
        let j = job("hello-world.rs");
        assert_eq!(j.crate_name, "hello_world");
        assert_eq!(j.crate_types, vec![CrateType::Bin]);
        assert_eq!(j.output_names(), vec!["hello_world".to_string()]);
        let o = job("hello.rs -o bin/hello -C opt-level=2");
        assert_eq!(o.out_file, Some(PathBuf::from("bin/hello")));
        assert!(o.output_names().is_empty());
    }

    #[test]
    fn argfiles_expand() {
        let j = match parse(&os("@args"), &|p| {
            (p == Path::new("args")).then(|| b"--crate-name\nz\nz.rs\n--crate-type\nlib\n".to_vec())
        }) {
            RustParsed::Compile(j) => j,
            other => panic!("{other:?}"),
        };
        assert_eq!(j.crate_name, "z");
        assert_eq!(j.crate_types, vec![CrateType::Rlib]);
    }

    #[test]
    fn linker_and_flags_change_key_args() {
        let a = job("a.rs --crate-type bin -C opt-level=3");
        let b = job("a.rs --crate-type bin -C opt-level=2");
        assert_ne!(a.key_args, b.key_args);
        let l = job("a.rs --crate-type bin -C linker=/usr/bin/clang");
        assert_eq!(l.linker, Some(PathBuf::from("/usr/bin/clang")));
        let r = job("a.rs --remap-path-prefix=/home/u/p=.");
        assert_eq!(r.remap_from, vec![PathBuf::from("/home/u/p")]);
        assert!(matches!(r.key_args[0], KeyArg::WithPaths(_)));
        let nd = job("a.rs -C debuginfo=0");
        assert!(!nd.debug_info);
    }

    #[test]
    fn dep_info_for_depend_mode() {
        let lib = job(CARGO_LIB);
        assert_eq!(lib.dep_info_name().as_deref(), Some("foo-c7705a44.d"));
        assert!(!lib.extra_dep_info_is_neutral());
        let hello = job("hello.rs -o bin/hello");
        assert_eq!(hello.dep_info_name(), None);
        assert!(hello.extra_dep_info_is_neutral());
        assert_eq!(
            hello.emit_with_dep_info(Path::new("/t/x=1/d.d")),
            Some(OsString::from("--emit=link,dep-info=/t/x=1/d.d"))
        );
        assert_eq!(hello.emit_with_dep_info(Path::new("/t/a,b/d.d")), None);
        assert!(!job("l.rs --crate-type lib").extra_dep_info_is_neutral());
        assert!(!job("m.rs --crate-type proc-macro").extra_dep_info_is_neutral());
        assert!(job("t.rs --test").extra_dep_info_is_neutral());
        assert!(job("c.rs --crate-type cdylib").extra_dep_info_is_neutral());
    }
}
