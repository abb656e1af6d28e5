//! Compiles on idle peers: the `/distc/compile/1.2.0` protocol and the serving side.
//!
//! A wrapper whose machine is busy preprocesses its compile locally and asks its own peer
//! (over IPC) to have it compiled by a member that has the identical compiler and a free slot
//! ([`crate::slots`]). The request names the compiler by its [`ToolchainId`] — never by a
//! path or a program — and carries the preprocessed source, the language, the compile options
//! and the requester's working directory. The serving peer ([`Server`]):
//!
//! 1. refuses unless it serves compiles at all (`serve_compiles`, a closed mesh, a sandbox or
//!    the explicit opt-in to serve without one), and unless it has a free slot;
//! 2. refuses a language other than preprocessed C or C++ ([`LANGUAGES`]) or gcc's
//!    directives-only output of C or C++ ([`DIRECTIVES_LANGUAGES`], for debug info), any
//!    option outside the allow-list ([`check_args`]: no plugins, specs, `-B`, `-wrapper`,
//!    response files, linker, assembler or preprocessor pass-through, output paths, anything
//!    that reads or writes a file of its own), and a source that still holds preprocessor
//!    directives ([`check_preprocessed`]; the compile is run with `-x cpp-output` anyway, so
//!    none would be obeyed) — for directives-only input, any directive but a line marker,
//!    `#define`, `#undef`, `#pragma` (none that names a file) and `#ident`
//!    ([`check_directives_only`]: no `#include` or any other way to read a file);
//! 3. looks the identity up among the compilers on its own `PATH` ([`crate::toolchain`]) and
//!    refuses one it does not have;
//! 4. runs the compile in the sandbox ([`crate::sandbox`]) within CPU, memory, output and
//!    wall-clock limits, at a lower priority than its owner's compiles, and answers with the
//!    exit code, stdout, stderr and the object.
//!
//! One message each way, each one [`crate::frame`] holding a value encoded by
//! [`crate::codec`], refused over its limit before anything is read into memory.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::prelude::*;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::frame::{self, invalid};
use crate::protocol::Bytes;
use crate::sandbox::{self, Isolation, Limits};
use crate::slots::{self, SlotAdvert};
use crate::toolchain::{self, MAX_TOOLCHAINS, ToolchainId};

/// The protocol's name.
/// (1.1.0: a result says how many slots the server has free for its requester. 1.2.0: the
/// languages `c` and `c++` ([`DIRECTIVES_LANGUAGES`]): directives-only input compiled under
/// the source's name, for compiles with debug info.)
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/distc/compile/1.2.0");

/// Largest request (the preprocessed source and a little more).
pub const MAX_REQUEST: usize = 64 << 20;

/// Largest response (object and streams).
pub const MAX_RESPONSE: usize = 256 << 20;

/// The languages a server compiles: preprocessed C and C++ only.
pub const LANGUAGES: [&str; 2] = ["cpp-output", "c++-cpp-output"];

/// Environment variables a request may set for the compile (diagnostics language and charset).
pub const ENV: [&str; 5] = ["LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LANGUAGE"];

/// A compile for another peer to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileRequest {
    /// The compiler, by identity.
    pub toolchain: ToolchainId,
    /// `-x` language: [`LANGUAGES`] for preprocessed input, [`DIRECTIVES_LANGUAGES`] for
    /// gcc's directives-only output ([`check_directives_only`]).
    pub language: String,
    /// Compile options, each within [`check_args`].
    pub args: Vec<String>,
    /// The requester's working directory (absolute): the compile runs there in the sandbox, so
    /// debug info records it as a local compile does.
    pub cwd: String,
    /// Variables among [`ENV`], as the requester has them.
    pub env: Vec<(String, String)>,
    /// The source's name as the compile names it (relative to `cwd`, or absolute): for logs
    /// and, with [`DIRECTIVES_LANGUAGES`], the name the member compiles the source under
    /// (the object records it: `DW_AT_name`, `__BASE_FILE__`, the file symbol).
    pub name: String,
    /// The preprocessed source.
    pub source: Bytes,
}

/// What a compile gave on the serving peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileResult {
    pub exit_code: i32,
    pub stdout: Bytes,
    pub stderr: Bytes,
    /// The object (empty unless the compile succeeded).
    pub object: Bytes,
    /// Jobs the server would take from this requester right after this one: its slots for
    /// guests and the one it queues ([`QUEUED`]), minus the other requesters' jobs. The
    /// requester's own jobs still there are counted as free, so what the requester may
    /// send now is this minus what it has in flight there — known as each job ends, where
    /// slot adverts take a probe period or more to arrive.
    pub free: u32,
}

/// Why a compile was not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("this peer does not serve compiles")]
    NotServing,
    #[error("no free compile slot")]
    Busy,
    #[error("no such compiler here")]
    UnknownCompiler,
    #[error("language {0:?} is not preprocessed C or C++")]
    Language(String),
    #[error("option {0:?} is not allowed in a remote compile")]
    ForbiddenOption(String),
    #[error("the source is not preprocessed: {0}")]
    NotPreprocessed(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the compile could not be run: {0}")]
    Sandbox(String),
    /// Said by the requester's own peer: no member has the compiler and a free slot.
    #[error("no member has this compiler and a free slot")]
    NoSlot,
    /// Said by the requester's own peer while it waited for a member's slot: one of its own
    /// machine's compile slots came free first (compile there).
    #[error("a local compile slot came free")]
    LocalSlotFree,
}

/// The answer to a [`CompileRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CompileResponse {
    Done(CompileResult),
    Refused(Refusal),
}

/// Options a remote compile accepts exactly as spelt.
const EXACT: &[&str] = &[
    "-ansi",
    "-pedantic",
    "-pedantic-errors",
    "-w",
    "-pipe",
    "-pthread",
    "-fPIC",
    "-fpic",
    "-fPIE",
    "-fpie",
];

/// `-f` options refused (prefixes after `-f` / `-fno-`): plugins, profile data and coverage
/// notes, dumps and other files written beside the object, command lines recorded in the
/// object, lists read from files, offloading to other compilers, modules, linker choice.
const FORBIDDEN_F: &[&str] = &[
    "plugin",
    "pass-plugin",
    "profile",
    "auto-profile",
    "branch-probabilities",
    "test-coverage",
    "coverage",
    "dump",
    "stack-usage",
    "callgraph-info",
    "record-gcc-switches",
    "record-command-line",
    "save-optimization-record",
    "opt-info",
    "sanitize-ignorelist",
    "sanitize-blacklist",
    "sanitize-system-ignorelist",
    "sanitize-coverage-allowlist",
    "sanitize-coverage-ignorelist",
    "sanitize-coverage-whitelist",
    "sanitize-coverage-blacklist",
    "xray",
    "offload",
    "modules",
    "module-",
    "use-ld",
    "compare-debug",
    "lto-partition",
    "syntax-only",
    "embed-bitcode",
    "crash-diagnostics",
    "time-trace",
    "thinlto",
    "prebuilt",
    "cs-profile",
    "memory-profile",
    "basic-block-sections",
    "pch",
];

/// Checks every option of a remote compile against the allow-list: `-O*`, `-g*` (not
/// `-gsplit-dwarf`, which writes a second file), `-std=`, `-W*` (not the `-Wl,`/`-Wa,`/`-Wp,`
/// pass-through), `-m*`, `-f*` but [`FORBIDDEN_F`], `--param=`, and [`EXACT`]. Everything
/// else — inputs, `-o`, `-c`, `-x`, `-B`, `-specs`, `-wrapper`, `@file`, `-I`/`-D`/`-include`
/// (the source is preprocessed), `-Xclang`, `-Xlinker`, `-l`, `-L`, `--sysroot`, `-save-temps`,
/// `-M*` — is refused with the option named.
pub fn check_args(args: &[String]) -> Result<(), Refusal> {
    for a in args {
        if !allowed(a) {
            return Err(Refusal::ForbiddenOption(a.clone()));
        }
    }
    Ok(())
}

fn allowed(a: &str) -> bool {
    if a.contains('\0') || a.contains('\n') {
        return false;
    }
    if EXACT.contains(&a) {
        return true;
    }
    if let Some(o) = a.strip_prefix("-O") {
        return o.is_empty() || matches!(o, "0" | "1" | "2" | "3" | "s" | "z" | "g" | "fast");
    }
    if let Some(g) = a.strip_prefix("-g") {
        return !g.contains("split-dwarf");
    }
    if a.starts_with("-std=") {
        return true;
    }
    if let Some(w) = a.strip_prefix("-W") {
        return !w.is_empty()
            && !w.starts_with("l,")
            && !w.starts_with("a,")
            && !w.starts_with("p,");
    }
    if a.starts_with("-m") {
        // clang's `-mllvm` passes options to LLVM, `-load=` among them.
        return a.len() > 2 && !a.starts_with("-mllvm");
    }
    if let Some(f) = a.strip_prefix("-f") {
        let f = f.strip_prefix("no-").unwrap_or(f);
        return !f.is_empty() && !FORBIDDEN_F.iter().any(|p| f.starts_with(p));
    }
    if let Some(p) = a.strip_prefix("--param=") {
        return p.contains('=');
    }
    false
}

/// Whether `text` is preprocessor output: every line whose first non-blank character is `#`
/// is a line marker (`# 12 "file"`), `#pragma` or `#ident`. Anything else (`#include`,
/// `#define`, `#embed`…) is refused with the line's number.
pub fn check_preprocessed(text: &[u8]) -> Result<(), Refusal> {
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        let t = line.trim_ascii_start();
        let Some(rest) = t.strip_prefix(b"#") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        let ok = rest.first().is_some_and(u8::is_ascii_digit)
            || rest.starts_with(b"pragma")
            || rest.starts_with(b"ident")
            || rest.is_empty();
        if !ok {
            let shown = String::from_utf8_lossy(&t[..t.len().min(40)]).into_owned();
            return Err(Refusal::NotPreprocessed(format!(
                "line {} is a directive: {shown}",
                n + 1
            )));
        }
    }
    Ok(())
}

/// The languages of gcc's `-E -fdirectives-only` output, compiled as C or C++ — macros
/// expanded by the member — so that a compile with debug info gives the local object (see
/// [`check_directives_only`]). The source is compiled under its own name
/// ([`CompileRequest::name`]) with `-nostdinc`.
pub const DIRECTIVES_LANGUAGES: [&str; 2] = ["c", "c++"];

/// Words that refuse a `#pragma` (or a line with `_Pragma`) in directives-only input: the
/// pragmas that name a file (`GCC dependency`, `GCC pch_preprocess`) or import a module
/// (`clang module`).
const FILE_PRAGMAS: [&[u8]; 3] = [b"dependency", b"pch_preprocess", b"module"];

/// Identifiers that ask whether a file exists (`__has_include_next` too): refused in
/// directives-only input but in the body of a `#define` — where libstdc++ has one — since
/// they are evaluated only in `#if` and `#elif`, which are refused.
const FILE_WORDS: [&[u8]; 3] = [b"__has_include", b"__has_include_next", b"__has_embed"];

/// Whether `text` is gcc's `-E -fdirectives-only` output with every include resolved: its
/// only directives are line markers (`# 12 "file" 1 3`), `#define`, `#undef`, `#pragma`
/// (not one of [`FILE_PRAGMAS`]), `#ident` and the null directive. A member compiles it as
/// C or C++, so the preprocessor runs on it; this scan finds its directives as the
/// preprocessor does — after line splices (`\` and a newline, blanks between allowed), any
/// of the three line ends (LF, CR LF, CR), at the start of a line or after comments, with
/// `#` or `%:` — and refuses, rather than guesses, what it cannot read the same way: a
/// trigraph (`??=` is `#`), a raw string literal (`R"(…)"`), a digit separator followed on
/// its line by a quote or a comment, an unterminated comment. Also refused: any of
/// [`FILE_WORDS`] outside a `#define`, and a `_Pragma` line naming one of [`FILE_PRAGMAS`]
/// (a `_Pragma` whose text a macro builds is not found: see `docs/security.md`). So `#include`,
/// `#include_next`, `#import`, `#embed`, `#if`… are refused with the line's number.
pub fn check_directives_only(text: &[u8]) -> Result<(), Refusal> {
    let refuse =
        |line: usize, why: &str| Err(Refusal::NotPreprocessed(format!("line {line}: {why}")));
    // Trigraphs: `??=` is `#`, `??/` a backslash; none is read, all are refused.
    if let Some(at) = text
        .windows(3)
        .position(|w| w[0] == b'?' && w[1] == b'?' && b"=/'()!<>-".contains(&w[2]))
    {
        return refuse(line_of(text, at), "a trigraph");
    }
    let t = logical(text);
    let b = &t.bytes;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let space = |c: u8| matches!(c, b' ' | b'\t' | b'\x0b' | b'\x0c' | 0);
    let mut i = 0;
    // Only blanks and comments since the last line end (or the start).
    let mut bol = true;
    // In a `#define` line.
    let mut define = false;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'\n' {
            bol = true;
            define = false;
            i += 1;
        } else if space(c) {
            i += 1;
        } else if c == b'/' && next == Some(b'*') {
            let Some(end) = find(&b[i + 2..], b"*/") else {
                return refuse(t.line(i), "an unterminated comment");
            };
            // A line end in a comment: what follows it may be read as a line's start.
            if b[i + 2..i + 2 + end].contains(&b'\n') {
                bol = true;
            }
            i += end + 4;
        } else if c == b'/' && next == Some(b'/') {
            i += b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .unwrap_or(b.len() - i);
        } else if bol && (c == b'#' || (c == b'%' && next == Some(b':'))) {
            let at = i;
            i += if c == b'#' { 1 } else { 2 };
            // The directive's name: after blanks and comments.
            loop {
                if i < b.len() && space(b[i]) {
                    i += 1;
                } else if b[i..].starts_with(b"/*") {
                    match find(&b[i + 2..], b"*/") {
                        Some(end) => i += end + 4,
                        None => return refuse(t.line(at), "an unterminated comment"),
                    }
                } else {
                    break;
                }
            }
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let name = &b[start..i];
            let eol = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |n| i + n);
            let ok = match name {
                b"" => b.get(i).is_none_or(|&x| x == b'\n'),
                b"define" | b"undef" | b"ident" => true,
                b"pragma" => !FILE_PRAGMAS.iter().any(|w| find(&b[i..eol], w).is_some()),
                n => n[0].is_ascii_digit(),
            };
            if !ok {
                let shown = String::from_utf8_lossy(&b[at..eol.min(at + 40)]).into_owned();
                return refuse(t.line(at), &format!("the directive {shown}"));
            }
            bol = false;
            define = name == b"define";
            // The rest of the line is lexed as text (strings, comments).
        } else if c == b'"' || c == b'\'' {
            bol = false;
            i += 1;
            while i < b.len() && b[i] != c && b[i] != b'\n' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            // The closing quote; an unterminated literal ends at the line end, left for
            // the next round (a line's start).
            if b.get(i) == Some(&c) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit())) {
            // A preprocessing number; `1'000` is one in C++14 and C23, a number and a
            // character constant before them: refused when the two readings can differ.
            // With an even count of separators the readings agree where the number ends;
            // with an odd one, the character constant runs on to the next quote or the line
            // end: the rest of the line must then hold no quote and no comment.
            bol = false;
            let start = i;
            let mut separators = 0;
            i += 1;
            while i < b.len() {
                let x = b[i];
                if matches!(x, b'+' | b'-') && matches!(b[i - 1], b'e' | b'E' | b'p' | b'P') {
                    i += 1;
                } else if x == b'\'' && b.get(i + 1).is_some_and(|&n| ident(n)) {
                    separators += 1;
                    i += 1;
                } else if ident(x) || x == b'.' {
                    i += 1;
                } else {
                    break;
                }
            }
            if separators % 2 == 1 {
                let eol = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |n| i + n);
                let rest = &b[i..eol];
                if rest.iter().any(|&x| x == b'"' || x == b'\'') || find(rest, b"/*").is_some() {
                    return refuse(t.line(start), "a digit separator before a quote or comment");
                }
            }
        } else if ident(c) {
            bol = false;
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &b[start..i];
            if b.get(i) == Some(&b'"') && word.ends_with(b"R") {
                return refuse(t.line(start), "a raw string literal");
            }
            if !define && FILE_WORDS.contains(&word) {
                return refuse(t.line(start), &String::from_utf8_lossy(word));
            }
            if word == b"_Pragma" {
                let eol = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |n| i + n);
                if FILE_PRAGMAS.iter().any(|w| find(&b[i..eol], w).is_some()) {
                    return refuse(t.line(start), "a _Pragma naming a file");
                }
            }
        } else {
            bol = false;
            i += 1;
        }
    }
    Ok(())
}

/// What a member compiles for a compile with debug info: gcc's `-E -fdirectives-only`
/// output from its `<command-line>` part on (the `-D`/`-U` definitions, `-include`d files,
/// `stdc-predef.h`, then the source). What precedes it — the `<built-in>` definitions and
/// the working-directory marker — goes: the member's identical compiler predefines the same
/// for the same options (compiled again they would be redefinitions), and it compiles at
/// the same working directory. `None` when the text is not shaped as gcc writes it (clang
/// has no `-fdirectives-only` before 15, and writes other markers since).
pub fn directives_source(text: &[u8]) -> Option<Vec<u8>> {
    const START: &[u8] = b"# 0 \"<command-line>\"\n";
    let mut at = 0;
    let mut built_in = false;
    while at < text.len() {
        let rest = &text[at..];
        if rest.starts_with(START) {
            return built_in.then(|| rest.to_vec());
        }
        let end = rest.iter().position(|&b| b == b'\n')? + 1;
        let line = &rest[..end];
        built_in |= line == b"# 0 \"<built-in>\"\n";
        if !(line.starts_with(b"# 0 \"")
            || line.starts_with(b"# 1 \"")
            || line.starts_with(b"#define "))
        {
            return None;
        }
        at += end;
    }
    None
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The 1-based line of byte `at`.
fn line_of(text: &[u8], at: usize) -> usize {
    text[..at].iter().filter(|&&c| c == b'\n').count() + 1
}

/// Text as the preprocessor reads its lines: CR LF and CR made LF, line splices (a
/// backslash, blanks, a line end) removed; with each byte's original line.
struct Logical {
    bytes: Vec<u8>,
    lines: Vec<u32>,
}

impl Logical {
    fn line(&self, at: usize) -> usize {
        self.lines.get(at).map_or(0, |&l| l as usize)
    }
}

fn logical(text: &[u8]) -> Logical {
    let mut norm = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' => {
                norm.push(b'\n');
                if text.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            c => norm.push(c),
        }
        i += 1;
    }
    let mut bytes = Vec::with_capacity(norm.len());
    let mut lines = Vec::with_capacity(norm.len());
    let mut line = 1u32;
    let mut i = 0;
    while i < norm.len() {
        let c = norm[i];
        if c == b'\\' {
            let mut j = i + 1;
            while j < norm.len() && matches!(norm[j], b' ' | b'\t' | b'\x0b' | b'\x0c') {
                j += 1;
            }
            if norm.get(j) == Some(&b'\n') {
                line += 1;
                i = j + 1;
                continue;
            }
        }
        bytes.push(c);
        lines.push(line);
        if c == b'\n' {
            line += 1;
        }
        i += 1;
    }
    Logical { bytes, lines }
}

/// How a peer serves guests' compiles.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `$DISTC_DIR` (the slot file, the toolchain memos).
    pub distc_dir: PathBuf,
    /// Serve at all: `serve_compiles` in a closed mesh, with a sandbox or the opt-in.
    pub enabled: bool,
    pub isolation: Isolation,
    pub limits: Limits,
    /// Cores of this machine ([`slots::cores`]).
    pub cores: usize,
    /// Where its compilers are found (the peer's `PATH`).
    pub path: std::ffi::OsString,
    /// When not enabled, why (shown by `distc slots --list` and `status`).
    pub why_not: Option<String>,
}

/// Counters of the serving side and the asking side, since start.
#[derive(Debug, Default)]
pub struct OffloadCounters {
    /// Compiles this peer ran for others.
    pub served: AtomicU64,
    /// Requests it refused.
    pub refused: AtomicU64,
    /// Compiles this peer sent to others, and the ones that came back compiled.
    pub sent: AtomicU64,
    pub returned: AtomicU64,
    /// Protocol bytes written and read.
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
}

/// The process-wide counters (the codec adds the bytes).
pub fn counters() -> &'static OffloadCounters {
    static C: std::sync::OnceLock<OffloadCounters> = std::sync::OnceLock::new();
    C.get_or_init(OffloadCounters::default)
}

/// The serving side.
#[derive(Debug)]
pub struct Server {
    opts: ServeOptions,
    why_not: Option<String>,
    toolchains: RwLock<BTreeMap<ToolchainId, PathBuf>>,
    /// Guests' compiles admitted (running or queued), by requester.
    guests: Mutex<Guests>,
    /// Signalled when a guest's compile ends (a queued one may start).
    ended: Condvar,
}

/// The guests' compiles a server holds.
#[derive(Debug, Default)]
struct Guests {
    /// Admitted (running or queued) per requester.
    by_peer: HashMap<PeerId, usize>,
    /// Running now.
    running: usize,
}

impl Guests {
    fn admitted(&self) -> usize {
        self.by_peer.values().sum()
    }
}

/// Guests' compiles a server queues beyond its free slots: one, so that the next job's
/// transfer overlaps the running compile and the slot never waits for the network.
pub const QUEUED: usize = 1;

/// How long a queued guest's compile waits for a slot before it is refused as busy (the
/// owner's own build took the slots meanwhile).
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

impl Server {
    pub fn new(opts: ServeOptions) -> Server {
        Server {
            why_not: opts.why_not.clone(),
            opts,
            toolchains: RwLock::default(),
            guests: Mutex::default(),
            ended: Condvar::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.opts.enabled
    }

    pub fn isolation(&self) -> &Isolation {
        &self.opts.isolation
    }

    pub fn cores(&self) -> usize {
        self.opts.cores
    }

    /// `$DISTC_DIR` of this peer (where its machine's compile slots are).
    pub fn distc_dir(&self) -> &Path {
        &self.opts.distc_dir
    }

    /// Finds this machine's compilers again (blocking: it may run each one once).
    pub fn refresh_toolchains(&self) {
        let found = toolchain::discover(&self.opts.distc_dir, &self.opts.path);
        let mut t = self.toolchains.write().unwrap_or_else(|e| e.into_inner());
        if *t != found {
            tracing::info!(
                "compilers here: {}",
                found
                    .iter()
                    .map(|(id, p)| format!("{} ({id})", p.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            *t = found;
        }
    }

    pub fn toolchains(&self) -> Vec<ToolchainId> {
        let t = self.toolchains.read().unwrap_or_else(|e| e.into_inner());
        t.keys().copied().take(MAX_TOOLCHAINS).collect()
    }

    /// The owner's compiles running now.
    pub fn local_running(&self) -> usize {
        slots::running(&self.opts.distc_dir, self.opts.cores)
    }

    fn guests(&self) -> std::sync::MutexGuard<'_, Guests> {
        self.guests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots free for guests: cores minus the owner's compiles minus the guests'.
    pub fn free(&self) -> usize {
        if !self.opts.enabled {
            return 0;
        }
        self.opts
            .cores
            .saturating_sub(self.local_running())
            .saturating_sub(self.guests().admitted())
    }

    /// How many guests' compiles may be admitted when the owner runs `local`: the slots
    /// it leaves free, and [`QUEUED`] more when it leaves any.
    fn admissible(&self, local: usize) -> usize {
        match self.opts.cores.saturating_sub(local) {
            0 => 0,
            n => n + QUEUED,
        }
    }

    /// What [`CompileResult::free`] says to `from`: the jobs admissible now minus the other
    /// requesters' ones.
    pub fn free_for(&self, from: &PeerId) -> usize {
        if !self.opts.enabled {
            return 0;
        }
        let others: usize = self
            .guests()
            .by_peer
            .iter()
            .filter(|(p, _)| *p != from)
            .map(|(_, n)| n)
            .sum();
        self.admissible(self.local_running()).saturating_sub(others)
    }

    /// This peer's advert.
    pub fn advert(&self, me: &PeerId, seq: u64) -> SlotAdvert {
        SlotAdvert {
            peer: Bytes(me.to_bytes()),
            seq,
            cores: self.opts.cores as u32,
            free: self.free() as u32,
            toolchains: if self.opts.enabled {
                self.toolchains()
            } else {
                Vec::new()
            },
        }
    }

    /// Answers one guest's compile (blocking: runs it).
    pub fn serve(&self, from: &PeerId, req: CompileRequest) -> CompileResponse {
        let started = Instant::now();
        let name = req.name.clone();
        let mut queued = Duration::ZERO;
        let r = self.try_serve(from, req, &mut queued).map(|mut done| {
            done.free = self.free_for(from) as u32;
            done
        });
        let c = counters();
        match &r {
            Ok(done) => {
                c.served.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    %from,
                    source = %name,
                    exit = done.exit_code,
                    ms = started.elapsed().as_millis() as u64,
                    queued_ms = queued.as_millis() as u64,
                    "compiled a job for a peer"
                );
            }
            Err(why) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%from, source = %name, "refused a job: {why}");
            }
        }
        match r {
            Ok(done) => CompileResponse::Done(done),
            Err(why) => CompileResponse::Refused(why),
        }
    }

    /// Runs one guest's compile; `queued` is set to the time it waited for a slot.
    fn try_serve(
        &self,
        from: &PeerId,
        req: CompileRequest,
        queued: &mut Duration,
    ) -> Result<CompileResult, Refusal> {
        if !self.opts.enabled {
            return Err(Refusal::NotServing);
        }
        let directives = DIRECTIVES_LANGUAGES.contains(&req.language.as_str());
        if !directives && !LANGUAGES.contains(&req.language.as_str()) {
            return Err(Refusal::Language(req.language));
        }
        check_args(&req.args)?;
        if let Some((k, _)) = req.env.iter().find(|(k, _)| !ENV.contains(&k.as_str())) {
            return Err(Refusal::BadRequest(format!("environment variable {k}")));
        }
        let cwd = Path::new(&req.cwd);
        if !sandbox::mountable_cwd(cwd) {
            return Err(Refusal::BadRequest(format!(
                "working directory {:?}",
                req.cwd
            )));
        }
        let source_name = Path::new(&req.name);
        if directives {
            if sandbox::source_path(cwd, source_name).is_none() {
                return Err(Refusal::BadRequest(format!("source name {:?}", req.name)));
            }
            check_directives_only(&req.source.0)?;
        } else {
            check_preprocessed(&req.source.0)?;
        }
        let compiler = {
            let t = self.toolchains.read().unwrap_or_else(|e| e.into_inner());
            t.get(&req.toolchain).cloned()
        }
        .ok_or(Refusal::UnknownCompiler)?;
        let waited = Instant::now();
        let _guest = self.claim(from).ok_or(Refusal::Busy)?;
        *queued = waited.elapsed();
        let job = sandbox::Job {
            compiler: &compiler,
            language: &req.language,
            args: &req.args,
            source: &req.source.0,
            cwd,
            env: &req.env,
            source_name: directives.then_some(source_name),
        };
        let done = sandbox::run(&self.opts.isolation, &self.opts.limits, &job)
            .map_err(|e| Refusal::Sandbox(e.to_string()))?;
        Ok(CompileResult {
            exit_code: done.exit_code,
            stdout: Bytes(done.stdout),
            stderr: Bytes(done.stderr),
            object: Bytes(done.object.unwrap_or_default()),
            free: 0,
        })
    }

    /// A guest slot for `from`: admitted when a slot is free or the queue has room (else
    /// `None`: busy), then waits until it may run — a slot the owner's compiles and the
    /// other guests leave free — for at most [`QUEUE_WAIT`]. Given back on drop.
    fn claim(&self, from: &PeerId) -> Option<GuestSlot<'_>> {
        let mut g = self.guests();
        if g.admitted() >= self.admissible(self.local_running()) {
            return None;
        }
        *g.by_peer.entry(*from).or_default() += 1;
        let mut slot = GuestSlot {
            server: self,
            from: *from,
            running: false,
        };
        let deadline = Instant::now() + QUEUE_WAIT;
        loop {
            // The owner's compiles are not signalled: looked at again every 20 ms.
            if g.running + self.local_running() < self.opts.cores {
                g.running += 1;
                slot.running = true;
                return Some(slot);
            }
            let now = Instant::now();
            if now >= deadline {
                drop(g);
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            g = self
                .ended
                .wait_timeout(g, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A guest's admitted compile: its place among the admitted, and its slot once running.
struct GuestSlot<'a> {
    server: &'a Server,
    from: PeerId,
    running: bool,
}

impl Drop for GuestSlot<'_> {
    fn drop(&mut self) {
        let mut g = self.server.guests();
        if self.running {
            g.running = g.running.saturating_sub(1);
        }
        if let Some(n) = g.by_peer.get_mut(&self.from) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.by_peer.remove(&self.from);
            }
        }
        drop(g);
        self.server.ended.notify_all();
    }
}

/// The request-response codec of [`PROTOCOL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OffloadCodec;

impl OffloadCodec {
    async fn read<T, M>(io: &mut T, max: usize) -> io::Result<M>
    where
        T: AsyncRead + Unpin + Send,
        M: serde::de::DeserializeOwned,
    {
        let buf = frame::read(io, max).await?;
        counters()
            .bytes_in
            .fetch_add(buf.len() as u64 + 4, Ordering::Relaxed);
        codec::decode(&buf, max).map_err(|e| invalid(e.to_string()))
    }

    async fn write<T, M>(io: &mut T, msg: &M, max: usize) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
        M: Serialize,
    {
        let buf = codec::encode(msg).map_err(|e| invalid(e.to_string()))?;
        if buf.len() > max {
            return Err(invalid(format!(
                "compile message of {} bytes exceeds the limit of {max} bytes",
                buf.len()
            )));
        }
        counters()
            .bytes_out
            .fetch_add(buf.len() as u64 + 4, Ordering::Relaxed);
        frame::write(io, &buf).await
    }
}

impl libp2p::request_response::Codec for OffloadCodec {
    type Protocol = StreamProtocol;
    type Request = CompileRequest;
    type Response = CompileResponse;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<CompileRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        Self::read(io, MAX_REQUEST).await
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<CompileResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        Self::read(io, MAX_RESPONSE).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: CompileRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Self::write(io, &req, MAX_REQUEST).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: CompileResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Self::write(io, &res, MAX_RESPONSE).await
    }
}

/// The file in `$DISTC_DIR` where the peer keeps how many jobs members would take from this
/// machine now ([`Router::capacity`]: for compilers of this machine, this peer's jobs in
/// flight counted as taken), so a busy wrapper knows with one read whether asking can help.
pub const SLOTS_MARKER: &str = "peer.slots";

/// Keeps [`SLOTS_MARKER`] up to date (every 100 ms, written only on a change).
pub async fn keep_slots_marker(
    node: crate::node::Node,
    server: std::sync::Arc<Server>,
    router: std::sync::Arc<Router>,
) {
    let path = server.opts.distc_dir.join(SLOTS_MARKER);
    let mut last = None;
    loop {
        let n = router.capacity(&node, &server.toolchains());
        if last != Some(n) {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, format!("{n}\n")).is_ok()
                && std::fs::rename(&tmp, &path).is_ok()
            {
                last = Some(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long one remote compile may take, from the request to the answer.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(300);

/// Members asked one after the other for one compile, at most.
const ATTEMPTS: usize = 3;

/// How long what a member's answer said about its slots ([`CompileResult::free`]) is
/// believed over its adverts, which lag by a probe period or more; after a busy refusal, for
/// a shorter time (another requester's job may end any moment).
const LEARNED_FOR: Duration = Duration::from_secs(5);
const BUSY_FOR: Duration = Duration::from_millis(500);

/// How often a waiting request looks again for a member's slot and for a free local slot
/// (an answer from a member wakes it at once).
const WAIT_POLL: Duration = Duration::from_millis(10);

/// What a wrapper asks its own peer ([`crate::ipc::IpcRequest::Compile`]): a compile for a
/// member, and how long to wait for a member's slot when none is free now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ask {
    pub request: CompileRequest,
    /// At most this long (ms); 0 asks once. The wait ends early, with
    /// [`Refusal::LocalSlotFree`], when a compile slot of this machine comes free.
    pub wait_ms: u32,
    /// The wrapper's cores (its slots in `compile.slots`; `taskset` narrows them).
    pub local_cores: u32,
}

/// The asking side in the requester's peer: picks members, counts what is in flight to
/// each, and keeps what each member's last answer said about its slots, so that compiles
/// sent at once spread over the free slots and a slot that comes free is used at once.
#[derive(Debug, Default)]
pub struct Router {
    state: Mutex<RouterState>,
    /// Woken when an answer comes back (a slot may be free).
    answered: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct RouterState {
    /// This peer's compiles in flight, per member.
    inflight: HashMap<PeerId, u32>,
    /// Per member: the jobs it would take from us ([`CompileResult::free`]) and until when
    /// that is believed.
    learned: HashMap<PeerId, (u32, Instant)>,
}

impl Router {
    fn state(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn adjust(&self, peer: PeerId, delta: i32) {
        let mut st = self.state();
        let n = st.inflight.entry(peer).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            st.inflight.remove(&peer);
        }
    }

    fn learn(&self, peer: PeerId, free: u32, valid: Duration) {
        self.state()
            .learned
            .insert(peer, (free, Instant::now() + valid));
    }

    /// Every routable member's advert with `free` replaced by what this peer may send it
    /// now: what its last answer said (while believed) or its advert, minus what is in
    /// flight to it.
    fn adverts(&self, node: &crate::node::Node) -> Vec<(PeerId, SlotAdvert)> {
        let v = node.view();
        let mut st = self.state();
        let now = Instant::now();
        st.learned.retain(|_, (_, until)| *until > now);
        v.slots
            .iter()
            .filter(|(p, _)| v.routable(p))
            .map(|(p, a)| {
                let mut a = a.clone();
                let base = st.learned.get(p).map_or(a.free, |(free, _)| *free);
                a.free = base.saturating_sub(st.inflight.get(p).copied().unwrap_or(0));
                (*p, a)
            })
            .collect()
    }

    /// How many jobs of this machine the members that serve one of `mine` would take:
    /// what they say, this peer's jobs in flight to them counted as theirs (`peer.slots`).
    pub fn capacity(&self, node: &crate::node::Node, mine: &[ToolchainId]) -> u32 {
        let v = node.view();
        let st = self.state();
        let now = Instant::now();
        v.slots
            .iter()
            .filter(|(p, a)| {
                *p != v.me
                    && v.routable(p)
                    && (mine.is_empty() || a.toolchains.iter().any(|t| mine.contains(t)))
            })
            .map(|(p, a)| match st.learned.get(p) {
                Some((free, until)) if *until > now => *free,
                _ => a.free + st.inflight.get(p).copied().unwrap_or(0),
            })
            .sum()
    }

    /// Sends `ask.request` to a member with the compiler and a free slot; a member that is
    /// busy, has no such compiler, fails or cannot be reached is skipped for the next. When
    /// no member has a slot now but one has the compiler, waits for one up to
    /// `ask.wait_ms`, and stops waiting with [`Refusal::LocalSlotFree`] as soon as one of
    /// the `ask.local_cores` slots of `distc_dir` is free. Returns who compiled it, or the
    /// last refusal ([`Refusal::NoSlot`] when no member was left).
    pub async fn compile(
        &self,
        node: &crate::node::Node,
        distc_dir: &Path,
        ask: Ask,
    ) -> (Option<PeerId>, CompileResponse) {
        let req = ask.request;
        let me = node.view().me;
        let deadline = Instant::now() + Duration::from_millis(ask.wait_ms.into());
        let mut skip = Vec::new();
        let mut attempts = 0;
        let mut last = Refusal::NoSlot;
        let c = counters();
        while attempts < ATTEMPTS {
            let adverts = self.adverts(node);
            let Some(peer) = pick(&adverts, &req.toolchain, &me, &skip) else {
                let anyone = adverts.iter().any(|(p, a)| {
                    *p != me && !skip.contains(p) && a.toolchains.contains(&req.toolchain)
                });
                if !anyone || Instant::now() >= deadline {
                    break;
                }
                if slots::running(distc_dir, ask.local_cores as usize) < ask.local_cores as usize {
                    return (None, CompileResponse::Refused(Refusal::LocalSlotFree));
                }
                let _ = tokio::time::timeout(WAIT_POLL, self.answered.notified()).await;
                continue;
            };
            attempts += 1;
            self.adjust(peer, 1);
            c.sent.fetch_add(1, Ordering::Relaxed);
            let r = node.compile(peer, req.clone(), REMOTE_TIMEOUT).await;
            self.adjust(peer, -1);
            match &r {
                Ok(CompileResponse::Done(done)) => self.learn(peer, done.free, LEARNED_FOR),
                Ok(CompileResponse::Refused(Refusal::Busy)) => {
                    let mine = self.state().inflight.get(&peer).copied().unwrap_or(0);
                    self.learn(peer, mine, BUSY_FOR);
                }
                _ => {}
            }
            self.answered.notify_waiters();
            match r {
                Ok(CompileResponse::Done(done)) => {
                    c.returned.fetch_add(1, Ordering::Relaxed);
                    return (Some(peer), CompileResponse::Done(done));
                }
                // A busy member may take the next try; another member may take what this one
                // cannot; a request it found wrong every member would.
                Ok(CompileResponse::Refused(why)) => match why {
                    Refusal::Busy => {
                        tracing::debug!(%peer, "compile refused: {why}");
                        last = why;
                    }
                    Refusal::NotServing | Refusal::UnknownCompiler | Refusal::Sandbox(_) => {
                        tracing::debug!(%peer, "compile refused: {why}");
                        skip.push(peer);
                        last = why;
                    }
                    other => return (Some(peer), CompileResponse::Refused(other)),
                },
                Err(e) => {
                    tracing::info!(%peer, source = %req.name, "remote compile failed: {e}");
                    skip.push(peer);
                    last = Refusal::Sandbox(e.to_string());
                }
            }
        }
        (None, CompileResponse::Refused(last))
    }
}

/// What `distc slots` and `distc status` show of compile slots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotsReport {
    /// This machine's cores and the compiles its wrappers run now.
    pub cores: u32,
    pub running: u32,
    /// Whether this peer serves compiles, and how (`bwrap`, `unsandboxed`, or why not).
    pub serving: String,
    /// Every member's advert (this peer's own included), with whether it has a compiler of
    /// this machine's (unknown, so assumed, when this peer does not serve).
    pub peers: Vec<PeerSlots>,
    /// Compiles this peer ran for others / refused; sent to others / returned compiled.
    pub served: u64,
    pub refused: u64,
    pub sent: u64,
    pub returned: u64,
    /// Bytes of the compile protocol written and read.
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// One member's slots as this peer last heard them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerSlots {
    pub peer: String,
    pub me: bool,
    pub cores: u32,
    pub free: u32,
    pub toolchains: u32,
    /// It serves one of the compilers this machine has.
    pub shared_toolchain: bool,
}

impl SlotsReport {
    /// Jobs this machine can usefully run now: its own cores plus the free slots of members
    /// that serve one of its compilers.
    pub fn usable(&self) -> u32 {
        self.cores
            + self
                .peers
                .iter()
                .filter(|p| !p.me && p.shared_toolchain)
                .map(|p| p.free)
                .sum::<u32>()
    }
}

/// Builds the report from the node's view and the serving side.
pub fn report(node: &crate::node::Node, server: Option<&Server>) -> SlotsReport {
    let v = node.view();
    let mine: Vec<ToolchainId> = server.map(Server::toolchains).unwrap_or_default();
    let c = counters();
    let serving = match server {
        Some(s) if s.enabled() => match s.isolation() {
            Isolation::Bwrap(_) => "yes (bubblewrap)".to_string(),
            Isolation::None => "yes (UNSANDBOXED: serve_unsandboxed = true)".to_string(),
        },
        Some(s) => s.why_not.clone().unwrap_or_else(|| "no".into()),
        None => "no".into(),
    };
    SlotsReport {
        cores: server.map_or(slots::cores(), Server::cores) as u32,
        running: server.map_or(0, Server::local_running) as u32,
        serving,
        peers: v
            .slots
            .iter()
            .map(|(p, a)| PeerSlots {
                peer: p.to_string(),
                me: *p == v.me,
                cores: a.cores,
                free: a.free,
                toolchains: a.toolchains.len() as u32,
                // A peer that does not serve has not listed its compilers: any member may
                // have one of them (the wrapper's own identity decides, member by member).
                shared_toolchain: mine.is_empty() || a.toolchains.iter().any(|t| mine.contains(t)),
            })
            .collect(),
        served: c.served.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        sent: c.sent.load(Ordering::Relaxed),
        returned: c.returned.load(Ordering::Relaxed),
        bytes_out: c.bytes_out.load(Ordering::Relaxed),
        bytes_in: c.bytes_in.load(Ordering::Relaxed),
    }
}

/// Which member to send a compile for `toolchain` to: one with that compiler and the most free
/// slots (ties by peer id), not `me`, not in `skip`.
pub fn pick(
    adverts: &[(PeerId, SlotAdvert)],
    toolchain: &ToolchainId,
    me: &PeerId,
    skip: &[PeerId],
) -> Option<PeerId> {
    adverts
        .iter()
        .filter(|(p, a)| {
            p != me && !skip.contains(p) && a.free > 0 && a.toolchains.contains(toolchain)
        })
        .max_by_key(|(p, a)| (a.free, std::cmp::Reverse(*p)))
        .map(|(p, _)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use libp2p::request_response::Codec as _;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn allow_list_takes_ordinary_compile_options() {
        check_args(&s(&[
            "-O2",
            "-O",
            "-Os",
            "-g",
            "-g3",
            "-gdwarf-4",
            "-std=gnu99",
            "-Wall",
            "-Wextra",
            "-Werror=format",
            "-Wno-unused",
            "-march=native",
            "-m64",
            "-fPIC",
            "-fno-strict-aliasing",
            "-fdebug-prefix-map=/a=/b",
            "-fdiagnostics-color=never",
            "-fvisibility=hidden",
            "--param=max-inline-insns-single=100",
            "-pedantic",
            "-pthread",
            "-w",
        ]))
        .unwrap();
    }

    #[test]
    fn allow_list_refuses_what_runs_reads_or_writes_other_things() {
        for bad in [
            "-fplugin=/tmp/evil.so",
            "-fplugin-arg-x-y",
            "-specs=/tmp/s",
            "--specs=/tmp/s",
            "-B/tmp",
            "-B",
            "-wrapper",
            "@/tmp/args",
            "-o",
            "/tmp/out.o",
            "-c",
            "-x",
            "-Wl,-rpath,/x",
            "-Wa,-adhln=/tmp/listing",
            "-Wp,-MD,/tmp/d",
            "-Xlinker",
            "-Xassembler",
            "-Xclang",
            "-Xpreprocessor",
            "-lm",
            "-L/tmp",
            "-I/etc",
            "-DX=1",
            "-include",
            "-imacros",
            "--sysroot=/",
            "-save-temps",
            "-MD",
            "-MF",
            "-E",
            "-S",
            "-v",
            "-###",
            "-fprofile-use=/tmp/p",
            "-fprofile-generate",
            "-fauto-profile=/x",
            "-ftest-coverage",
            "-fdump-tree-all",
            "-fstack-usage",
            "-fcallgraph-info",
            "-frecord-gcc-switches",
            "-fsanitize-ignorelist=/etc/passwd",
            "-fxray-attr-list=/x",
            "-foffload=nvptx-none",
            "-fuse-ld=gold",
            "-fcompare-debug",
            "-gsplit-dwarf",
            "-fmodules-ts",
            "-O9",
            "--param",
            "-m",
            "-f",
            "-W",
            "a.c",
            "-fpass-plugin=/x.so",
            "-fopt-info-all=/tmp/x",
            "-Wall\n",
            "-mllvm",
            "-mllvm=-load=/x.so",
            "-ftime-trace",
            "-fbasic-block-sections=list=/etc/passwd",
        ] {
            assert_eq!(
                check_args(&s(&["-O2", bad])),
                Err(Refusal::ForbiddenOption(bad.to_string())),
                "{bad}"
            );
        }
    }

    /// `checked` refused `input` as not preprocessed.
    fn assert_not_preprocessed(checked: Result<(), Refusal>, input: &[u8]) {
        assert!(
            matches!(checked, Err(Refusal::NotPreprocessed(_))),
            "{}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn only_preprocessor_output_passes() {
        check_preprocessed(b"# 1 \"a.c\"\n# 1 \"<built-in>\" 1\nint x;\n#pragma once\n  # 7 \"a.h\" 3\n#ident \"x\"\n#\n").unwrap();
        for bad in [
            &b"#include <stdio.h>\nint x;\n"[..],
            b"int x;\n  #define A 1\n",
            b"#embed \"/etc/passwd\"\n",
            b"# include \"x\"\n",
            b"#if 1\n#endif\n",
        ] {
            assert_not_preprocessed(check_preprocessed(bad), bad);
        }
    }

    #[test]
    fn directives_only_input_keeps_definitions_and_refuses_every_way_to_read_a_file() {
        check_directives_only(
            b"# 0 \"<command-line>\"\n#define VAL 7\n#undef __STRICT_ANSI__\n# 1 \"a.c\"\n\
              # 12 \"/usr/include/stdio.h\" 1 3 4\n/* a comment\n   #include <x.h>\n   #if 1 */\n\
              // #include <y.h>\nconst char *s = \"#include <z.h>\"; char c = '#';\n\
              #define STR(x) #x\n  #  define A /* #include */ 1\n#pragma GCC diagnostic push\n\
              _Pragma(\"GCC diagnostic ignored \\\"-Wunused\\\"\")\n#ident \"v1\"\n#\n\
              #define TBB __has_include(<tbb/tbb.h>)\n\
              int big = 1'000'000; int m = 0x1p-3 + 1e+5; int k = 1'0;\n#define LONG 1 \\\n  + 2\n",
        )
        .unwrap();
        for bad in [
            &b"#include <stdio.h>\n"[..],
            b"int x;\n  #include \"/etc/passwd\"\n",
            b"#include_next <x.h>\n",
            b"#import <x.h>\n",
            b"#embed \"/etc/passwd\"\n",
            b"#if 1\n#endif\n",
            b"#line 3 \"x\"\n",
            b"#error no\n",
            b"# include \"x\"\n",
            b"%:include \"x\"\n",
            b"/**/#include \"x\"\n",
            b"# /* c */ include \"x\"\n",
            b"#\\\ninclude \"x\"\n",
            b"#\\  \r\ninclude \"x\"\n",
            b"#inc\\\nlude \"x\"\n",
            b"int x;\r#include \"x\"\n",
            b"??=include \"x\"\n",
            b"/* one\n two */ #include \"x\"\n",
            b"int x = 1 /* open\n",
            b"#pragma GCC dependency \"/etc/passwd\"\n",
            b"#pragma GCC pch_preprocess \"/x.gch\"\n",
            b"#pragma clang module import x\n",
            b"_Pragma(\"GCC dependency \\\"/etc/passwd\\\"\")\n",
            b"int h = __has_include(<x.h>);\n",
            b"#pragma GCC warning __has_include_next(<x.h>)\n",
            // A raw string could hide from this scan what the compiler reads as a line.
            b"const char *s = R\"(x \"/*\" y)\";\n#include \"x\"\n// */\n",
            b"int a = 1'a/*';\n#include \"x\"\n// */\n",
        ] {
            assert_not_preprocessed(check_directives_only(bad), bad);
        }
        // The wrapper's side: the `<built-in>` part goes, the `<command-line>` part stays;
        // anything not shaped as gcc writes it is not sent.
        let gcc = b"# 0 \"a.c\"\n# 1 \"/src//\"\n# 0 \"<built-in>\"\n#define __STDC__ 1\n\
                    # 0 \"<command-line>\"\n#define VAL 7\n# 1 \"a.c\"\nint x;\n";
        assert_eq!(
            directives_source(gcc).unwrap(),
            b"# 0 \"<command-line>\"\n#define VAL 7\n# 1 \"a.c\"\nint x;\n"
        );
        assert!(directives_source(b"# 1 \"<built-in>\"\n# 1 \"a.c\"\nint x;\n").is_none());
        assert!(directives_source(b"# 0 \"<command-line>\"\nint x;\n").is_none());
        assert!(
            directives_source(b"# 0 \"<built-in>\"\nint y;\n# 0 \"<command-line>\"\n").is_none()
        );
    }

    #[test]
    fn messages_round_trip_and_are_bounded() {
        let req = CompileRequest {
            toolchain: ToolchainId([3; 32]),
            language: "cpp-output".into(),
            args: s(&["-O2"]),
            cwd: "/src".into(),
            env: vec![("LANG".into(), "C".into())],
            name: "a.c".into(),
            source: Bytes(b"int x;\n".to_vec()),
        };
        let mut c = OffloadCodec;
        let mut buf = Vec::new();
        block_on(c.write_request(&PROTOCOL, &mut buf, req)).unwrap();
        let back = block_on(c.read_request(&PROTOCOL, &mut &buf[..])).unwrap();
        assert_eq!(back.source.0, b"int x;\n");
        assert_eq!(back.toolchain, ToolchainId([3; 32]));
        let mut buf = Vec::new();
        let res = CompileResponse::Refused(Refusal::ForbiddenOption("-B".into()));
        block_on(c.write_response(&PROTOCOL, &mut buf, res)).unwrap();
        match block_on(c.read_response(&PROTOCOL, &mut &buf[..])).unwrap() {
            CompileResponse::Refused(Refusal::ForbiddenOption(o)) => assert_eq!(o, "-B"),
            other => panic!("{other:?}"),
        }
        // A request claiming more than the limit is refused on its length alone.
        let claim = ((MAX_REQUEST + 1) as u32).to_le_bytes();
        let e = block_on(c.read_request(&PROTOCOL, &mut &claim[..])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_server_queues_one_job_beyond_its_slots_and_yields_to_its_owner() {
        let d = tempfile::tempdir().unwrap();
        let server = Server::new(ServeOptions {
            distc_dir: d.path().to_path_buf(),
            enabled: true,
            isolation: Isolation::None,
            limits: Limits::default(),
            cores: 1,
            path: Default::default(),
            why_not: None,
        });
        let (p1, p2, p3) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!((server.free(), server.free_for(&p1)), (1, 2));
        let running = server.claim(&p1).expect("a free slot");
        assert!(running.running);
        // The slot is taken; one more job is queued, for whoever asks.
        assert_eq!(server.free(), 0);
        assert_eq!((server.free_for(&p1), server.free_for(&p2)), (2, 1));
        std::thread::scope(|scope| {
            let queued = scope.spawn(|| server.claim(&p2).map(|g| g.running));
            while server.guests().admitted() < 2 {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(server.claim(&p3).is_none(), "a second job queued");
            assert_eq!(server.free_for(&p3), 0);
            drop(running);
            assert_eq!(queued.join().unwrap(), Some(true), "the queued job runs");
        });
        assert_eq!(server.guests().admitted(), 0);
        // The owner's compile takes the core: nothing is admitted, nothing is offered.
        let owner = slots::take(d.path(), || 1).unwrap().expect("owner's slot");
        assert!(server.claim(&p1).is_none());
        assert_eq!((server.free(), server.free_for(&p1)), (0, 0));
        drop(owner);
        assert!(server.claim(&p1).is_some());
    }

    #[test]
    fn pick_takes_the_freest_member_with_the_compiler() {
        let (me, a, b, c) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let t = ToolchainId([1; 32]);
        let ad = |p: PeerId, free, ts: Vec<ToolchainId>| {
            (
                p,
                SlotAdvert {
                    peer: Bytes(p.to_bytes()),
                    seq: 1,
                    cores: 4,
                    free,
                    toolchains: ts,
                },
            )
        };
        let list = vec![
            ad(me, 4, vec![t]),
            ad(a, 1, vec![t]),
            ad(b, 3, vec![t]),
            ad(c, 4, vec![ToolchainId([2; 32])]),
        ];
        assert_eq!(pick(&list, &t, &me, &[]), Some(b));
        assert_eq!(pick(&list, &t, &me, &[b]), Some(a));
        assert_eq!(pick(&list, &t, &me, &[a, b]), None);
    }

    /// A serving peer's compile server under bubblewrap that knows the compilers beside `gcc`.
    fn sandboxed_server(
        distc_dir: std::path::PathBuf,
        bwrap: std::path::PathBuf,
        gcc: &Path,
    ) -> Server {
        let server = Server::new(ServeOptions {
            distc_dir,
            enabled: true,
            isolation: Isolation::Bwrap(bwrap),
            limits: Limits::default(),
            cores: 2,
            path: gcc.parent().unwrap().as_os_str().to_owned(),
            why_not: None,
        });
        server.refresh_toolchains();
        server
    }

    /// What `cmd` printed, after checking that it succeeded.
    fn stdout_of(cmd: &mut std::process::Command) -> Vec<u8> {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `name` as found on `PATH`.
    fn on_path(name: &str) -> Option<std::path::PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// bubblewrap, when it works here (else the test says it is skipped).
    fn working_bwrap() -> Option<std::path::PathBuf> {
        let found = sandbox::find_bwrap();
        if found.is_none() {
            eprintln!("bubblewrap does not work here: skipped");
        }
        found
    }

    /// Debug info: gcc's directives-only output, compiled as C or C++ under the source's own
    /// name at the requester's directory, gives the local object byte for byte — macros,
    /// `assert`, `__FILE__`/`__LINE__`/`__BASE_FILE__`/`__COUNTER__`, pragmas, `-D`, prefix
    /// maps, a source outside the working directory (relative with `..`, and absolute).
    #[test]
    fn real_gcc_with_debug_info_serves_byte_identical_objects() {
        use std::process::Command;
        let (Some(gcc), Some(gxx)) = (on_path("gcc"), on_path("g++")) else {
            eprintln!("no gcc: skipped");
            return;
        };
        let Some(bwrap) = working_bwrap() else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let src = root.join("src");
        let build = root.join("build");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(
            src.join("sub/h.h"),
            "#pragma once\n#define HF __FILE__\n\
             static inline int hline(void) { return __LINE__ + __COUNTER__; }\n",
        )
        .unwrap();
        std::fs::write(
            src.join("a.c"),
            "#include <stdio.h>\n#include <assert.h>\n#include \"sub/h.h\"\n\
             #define TWICE(x) ((x) * 2)\n#define SQ(x) ((x)*(x))\n\
             #define STR(x) #x\n#define XSTR(x) STR(x)\n\
             #pragma GCC diagnostic push\n_Pragma(\"GCC diagnostic ignored \\\"-Wunused\\\"\")\n\
             static int f(int a) { int r = TWICE(a) + SQ(a); assert(r > 0); return r + __COUNTER__; }\n\
             #pragma GCC diagnostic pop\n\
             int main(void) { printf(\"%d %s %d %s %s %s %d\\n\", f(21), __FILE__, __LINE__, \
             __BASE_FILE__, HF, XSTR(VAL), hline()); return 0; }\n",
        )
        .unwrap();
        std::fs::write(
            src.join("b.cc"),
            "#include <vector>\n#include <string>\n#include <cassert>\n#include \"sub/h.h\"\n\
             #define MAKE(n) std::vector<std::string> v(n, HF)\n\
             int g(int n) { MAKE(n); assert(n >= 0); return (int)v.size() + hline() + __LINE__; }\n",
        )
        .unwrap();
        let server = sandboxed_server(root.to_path_buf(), bwrap, &gcc);
        let abs = src.join("a.c").to_string_lossy().into_owned();
        let map = format!("-fdebug-prefix-map={}=/x", root.display());
        let fmap = format!("-ffile-prefix-map={}/=", root.display());
        let cases: [(&Path, &Path, &str, &str, Vec<&str>); 6] = [
            (&src, &gcc, "c", "a.c", vec!["-g", "-O2", "-DVAL=7", &map]),
            (&src, &gcc, "c", "a.c", vec!["-g1", "-O1", "-Wall"]),
            (
                &src,
                &gcc,
                "c",
                "./a.c",
                vec!["-ggdb", "-Os", "-UVAL", "-fPIC"],
            ),
            (
                &build,
                &gcc,
                "c",
                "../src/a.c",
                vec!["-gdwarf-4", "-O0", &fmap],
            ),
            (&build, &gcc, "c", &abs, vec!["-g2", "-O2", "-DVAL=x"]),
            (
                &src,
                &gxx,
                "c++",
                "b.cc",
                vec!["-g", "-O1", "-std=c++17", &map],
            ),
        ];
        let me = PeerId::random();
        for (cwd, compiler, language, name, opts) in cases {
            let run = |extra: &[&str]| {
                stdout_of(
                    Command::new(compiler)
                        .args(&opts)
                        .args(extra)
                        .arg(name)
                        .current_dir(cwd),
                )
            };
            let local_o = root.join("local.o");
            run(&["-c", "-o", local_o.to_str().unwrap()]);
            let local = std::fs::read(&local_o).unwrap();
            let pre = directives_source(&run(&["-E", "-fdirectives-only"])).expect("gcc's shape");
            check_directives_only(&pre).unwrap();
            let program = compiler.file_name().unwrap().to_str().unwrap();
            let req = CompileRequest {
                toolchain: toolchain::identify(root, program, compiler).unwrap(),
                language: language.into(),
                // The wrapper drops what only the preprocessor reads (`-D`, `-U`).
                args: opts
                    .iter()
                    .filter(|o| !o.starts_with("-D") && !o.starts_with("-U"))
                    .map(|o| o.to_string())
                    .collect(),
                cwd: cwd.to_string_lossy().into_owned(),
                env: Vec::new(),
                name: name.into(),
                source: Bytes(pre.clone()),
            };
            match server.serve(&me, req.clone()) {
                CompileResponse::Done(r) => {
                    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr.0));
                    assert!(
                        r.stderr.0.is_empty(),
                        "{}",
                        String::from_utf8_lossy(&r.stderr.0)
                    );
                    assert!(
                        r.object.0 == local,
                        "{name} {opts:?} at {}: the remote object differs",
                        cwd.display()
                    );
                }
                other => panic!("{other:?}"),
            }
            // Not under another name: the object records it.
            let mut renamed = req.clone();
            renamed.name = "other.c".into();
            match server.serve(&me, renamed) {
                CompileResponse::Done(r) => assert!(r.object.0 != local),
                other => panic!("{other:?}"),
            }
        }
        // Without a sandbox (the opt-in): the same object, but not with a prefix map.
        let bare = Server::new(ServeOptions {
            isolation: Isolation::None,
            ..server.opts.clone()
        });
        bare.refresh_toolchains();
        let (cwd, opts) = (&src, ["-g", "-O1", "-Wall"]);
        let out = Command::new(&gcc)
            .args(opts)
            .args(["-c", "a.c", "-o", root.join("bare.o").to_str().unwrap()])
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(out.status.success());
        let out_pre = Command::new(&gcc)
            .args(opts)
            .args(["-E", "-fdirectives-only", "a.c"])
            .current_dir(cwd)
            .output()
            .unwrap();
        let mut req = CompileRequest {
            toolchain: toolchain::identify(root, "gcc", &gcc).unwrap(),
            language: "c".into(),
            args: s(&opts),
            cwd: cwd.to_string_lossy().into_owned(),
            env: Vec::new(),
            name: "a.c".into(),
            source: Bytes(directives_source(&out_pre.stdout).unwrap()),
        };
        match bare.serve(&me, req.clone()) {
            CompileResponse::Done(r) => {
                assert!(r.object.0 == std::fs::read(root.join("bare.o")).unwrap())
            }
            other => panic!("{other:?}"),
        }
        req.args.push(map.clone());
        assert!(matches!(
            bare.serve(&me, req),
            CompileResponse::Refused(Refusal::Sandbox(_))
        ));
        // Refused: an include (anywhere, however spelt), a name that is no plain path.
        let id = toolchain::identify(root, "gcc", &gcc).unwrap();
        let request = |name: &str, source: &[u8]| CompileRequest {
            toolchain: id,
            language: "c".into(),
            args: s(&["-g", "-O2"]),
            cwd: src.to_string_lossy().into_owned(),
            env: Vec::new(),
            name: name.into(),
            source: Bytes(source.to_vec()),
        };
        for bad in [
            &b"#include <stdio.h>\nint x;\n"[..],
            b"int x;\n/**/ %:include \"/usr/include/stdio.h\"\n",
            b"#define E(x) x\n#pragma GCC dependency \"/usr/include/stdio.h\"\n",
        ] {
            match server.serve(&me, request("a.c", bad)) {
                CompileResponse::Refused(Refusal::NotPreprocessed(_)) => {}
                other => panic!("{}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        for bad in ["", "..", "a.c/..", "sub/\n.c"] {
            match server.serve(&me, request(bad, b"int x;\n")) {
                CompileResponse::Refused(Refusal::BadRequest(_)) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // The sandbox still holds nothing but the toolchain and the source.
        let secret = root.join("secret");
        std::fs::write(&secret, "not for guests").unwrap();
        let incbin = format!("__asm__(\".incbin \\\"{}\\\"\");\n", secret.display());
        match server.serve(&me, request("a.c", incbin.as_bytes())) {
            CompileResponse::Done(r) => assert_ne!(r.exit_code, 0, "read a file outside"),
            other => panic!("{other:?}"),
        }
    }

    /// The real thing: gcc on this machine, in bubblewrap when it works here.
    #[test]
    fn real_gcc_serves_byte_identical_objects_and_refuses_the_rest() {
        use std::process::Command;
        let Some(gcc) = on_path("gcc") else {
            eprintln!("no gcc: skipped");
            return;
        };
        let Some(bwrap) = working_bwrap() else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(
            src.join("a.c"),
            "#include <stdio.h>\n#define TWICE(x) ((x) * 2)\nint f(int a) { return TWICE(a); }\n\
             int main(void) { printf(\"%d\\n\", f(21)); return 0; }\n",
        )
        .unwrap();
        let run = |args: &[&str]| stdout_of(Command::new(&gcc).args(args).current_dir(&src));
        // Without debug info (with it, columns in the line table of fully preprocessed input
        // are those of the expanded macros: directives-only input, tested above).
        run(&["-O2", "-Wall", "-c", "a.c", "-o", "local.o"]);
        let local = std::fs::read(src.join("local.o")).unwrap();
        let pre = run(&["-O2", "-Wall", "-E", "a.c"]);
        let server = sandboxed_server(d.path().to_path_buf(), bwrap, &gcc);
        let id = toolchain::identify(d.path(), "gcc", &gcc).unwrap();
        assert!(server.toolchains().contains(&id));
        let request = |args: &[&str], source: &[u8]| CompileRequest {
            toolchain: id,
            language: "cpp-output".into(),
            args: s(args),
            cwd: src.to_string_lossy().into_owned(),
            env: Vec::new(),
            name: "a.c".into(),
            source: Bytes(source.to_vec()),
        };
        let me = PeerId::random();
        match server.serve(&me, request(&["-O2", "-Wall"], &pre)) {
            CompileResponse::Done(r) => {
                assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr.0));
                assert!(
                    r.object.0 == local,
                    "remote object differs from the local one"
                );
            }
            other => panic!("{other:?}"),
        }
        // A compile error comes back as one, with the compiler's message.
        let broken = b"# 1 \"bad.c\"\nint f(void) { return x; }\n";
        match server.serve(&me, request(&["-O2"], broken)) {
            CompileResponse::Done(r) => {
                assert_ne!(r.exit_code, 0);
                assert!(String::from_utf8_lossy(&r.stderr.0).contains("bad.c:1"));
                assert!(r.object.0.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // The sandbox reads nothing but the toolchain: `.incbin` of a file outside it fails.
        let secret = d.path().join("secret");
        std::fs::write(&secret, "not for guests").unwrap();
        let incbin = format!("__asm__(\".incbin \\\"{}\\\"\");\n", secret.display());
        match server.serve(&me, request(&["-O2"], incbin.as_bytes())) {
            CompileResponse::Done(r) => assert_ne!(r.exit_code, 0, "read a file outside"),
            other => panic!("{other:?}"),
        }
        // Refusals.
        let refused = |r: CompileResponse| match r {
            CompileResponse::Refused(why) => why,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            refused(server.serve(&me, request(&["-O2", "-fplugin=/tmp/x.so"], &pre))),
            Refusal::ForbiddenOption("-fplugin=/tmp/x.so".into())
        );
        assert!(matches!(
            refused(server.serve(&me, request(&["-O2"], b"#include <stdio.h>\n"))),
            Refusal::NotPreprocessed(_)
        ));
        let mut unknown = request(&["-O2"], &pre);
        unknown.toolchain = ToolchainId([9; 32]);
        assert_eq!(
            refused(server.serve(&me, unknown)),
            Refusal::UnknownCompiler
        );
        let mut lang = request(&["-O2"], &pre);
        lang.language = "assembler".into();
        assert!(matches!(
            refused(server.serve(&me, lang)),
            Refusal::Language(_)
        ));
        let off = Server::new(ServeOptions {
            enabled: false,
            ..server.opts.clone()
        });
        assert_eq!(
            refused(off.serve(&me, request(&["-O2"], &pre))),
            Refusal::NotServing
        );
    }
}
