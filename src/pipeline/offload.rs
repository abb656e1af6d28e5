//! A miss compiled on an idle member: the wrapper's half of [`distc_peer::offload`].
//!
//! [`Pipeline::miss`](super::Pipeline) holds one local compile slot
//! ([`distc_peer::slots`]) while it compiles. When every slot is taken (more compiles running
//! than cores), the mesh is active, `offload` is on and the local peer says some member has
//! a free slot (`peer.slots`, one small file), a C/C++ family may offer a remote compile:
//! it preprocesses here, and its peer sends the preprocessed source to a member with the
//! identical compiler ([`distc_peer::toolchain`]). With debug info the source sent is gcc's
//! `-E -fdirectives-only` output ([`remote::directives_source`]), compiled there as C or C++
//! under the source's own name, so the line table and every recorded name are a local
//! compile's. Only a clean success is taken — exit 0,
//! nothing on stderr (a warning from preprocessed input lacks the macro-expansion notes a
//! local compile prints), an object — and the pipeline then stores and replays it exactly
//! as a local miss (a dependency file is written by the preprocessor run here, with the
//! compile's own `-MD`-family options). Anything else, a compile error included, compiles here, so what the
//! user sees is always what the local compiler says.
//!
//! Never on a hit: this runs only after the lookups missed and the key lock is held.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use distc_peer::ipc::IpcClient;
use distc_peer::offload::{self as remote, CompileRequest, CompileResponse};
use distc_peer::protocol::Bytes;
use distc_peer::toolchain::ToolchainId;

use super::{Command, Finished, Runner};
use crate::compiler::c::key::KeptOutput;

/// The file in `$DISTC_DIR` where the local peer keeps the number of slots members offer now
/// (written by the peer; absent or `0`: nobody to send to, nothing is tried).
pub(crate) fn remote_slots(distc_dir: &Path) -> u32 {
    std::fs::read_to_string(distc_dir.join(distc_peer::offload::SLOTS_MARKER))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Options that only the preprocessor reads (dropped: the source is preprocessed), with
/// whether they take the next argument when given alone.
const PREPROCESSOR_ONLY: &[(&str, bool)] = &[
    ("-D", true),
    ("-U", true),
    ("-I", true),
    ("-include", true),
    ("-imacros", true),
    ("-iquote", true),
    ("-isystem", true),
    ("-idirafter", true),
    ("-iprefix", true),
    ("-iwithprefixbefore", true),
    ("-iwithprefix", true),
    ("-isysroot", true),
    ("-imultilib", true),
    ("--sysroot", true),
    ("-nostdinc++", false),
    ("-nostdinc", false),
    ("-x", true),
];

/// The compile options of a preprocessor command line: `cpp_args` without what only the
/// preprocessor reads. `None` when an argument is not text.
pub(crate) fn compile_options(cpp_args: &[OsString]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in cpp_args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let s = a.to_str()?;
        match PREPROCESSOR_ONLY.iter().find(|(p, _)| s.starts_with(p)) {
            Some((p, takes)) => {
                // `-Dx`/`-Ix` glued, `--sysroot=x`, or the value in the next argument.
                skip_next = *takes && s.len() == p.len();
            }
            None => out.push(s.to_string()),
        }
    }
    Some(out)
}

/// Whether gcc's directives-only output `pre` compiles on a member as the source does here.
/// Not when it names the date or time (`__DATE__`, `__TIME__`, `__TIMESTAMP__`: expanded
/// there, they would be the member's clock and its copy's date), nor when a file it was
/// made of has a `pop_macro`: gcc runs `#pragma push_macro`/`pop_macro` itself and writes
/// the pop as an `#undef`, without the definition it restores (a later use of the macro
/// would compile as another identifier). The files are those its line markers name, read
/// relative to `cwd`; one that cannot be read keeps the compile here.
pub(crate) fn directives_portable(pre: &[u8], cwd: &Path) -> Result<(), String> {
    let mentions = |hay: &[u8], w: &[u8]| hay.windows(w.len()).any(|x| x == w);
    for w in ["__DATE__", "__TIME__", "__TIMESTAMP__"] {
        if mentions(pre, w.as_bytes()) {
            return Err(format!("{w} would be the member's"));
        }
    }
    let mut files = std::collections::BTreeSet::new();
    for line in pre.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(b"# ") else {
            continue;
        };
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let Some(quoted) = rest[digits..].strip_prefix(b" \"").filter(|_| digits > 0) else {
            continue;
        };
        if quoted.starts_with(b"<") {
            continue; // `<built-in>`, `<command-line>`
        }
        files.insert(unquote(quoted).ok_or("a file name in a line marker not read")?);
    }
    for f in files {
        let path = cwd.join(std::ffi::OsStr::from_bytes(&f));
        let text =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if mentions(&text, b"pop_macro") {
            return Err(format!("{} pops a macro definition", path.display()));
        }
    }
    Ok(())
}

/// A line marker's file name up to its closing quote, as gcc quotes it (`\\`, `\"`, octal
/// `\NNN`); `None` for anything else.
fn unquote(q: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < q.len() {
        match q[i] {
            b'"' => return Some(out),
            b'\\' => match q.get(i + 1)? {
                c @ (b'\\' | b'"') => {
                    out.push(*c);
                    i += 2;
                }
                b'0'..=b'7' => {
                    let oct = q.get(i + 1..i + 4)?;
                    let s = std::str::from_utf8(oct).ok()?;
                    out.push(u8::from_str_radix(s, 8).ok()?);
                    i += 4;
                }
                _ => return None,
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    None
}

/// The environment a remote compile is given: the locale variables set here.
fn locale_env() -> Vec<(String, String)> {
    remote::ENV
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .collect()
}

/// How long a busy wrapper waits for a slot — a member's or one of its own machine's,
/// whichever comes free first — before it compiles here anyway.
pub(crate) const OFFLOAD_WAIT: Duration = Duration::from_secs(30);

/// One compile to offer to the mesh.
pub(crate) struct Offer<'a> {
    pub distc_dir: &'a Path,
    pub runner: &'a dyn Runner,
    /// The real compiler and the name it runs under.
    pub compiler: &'a Path,
    /// `cpp-output` or `c++-cpp-output`.
    pub language: &'static str,
    /// The preprocessor command line (without `-E`, `-x` and the source).
    pub cpp_args: &'a [OsString],
    /// What the key's preprocessor run printed, when it kept it (its dependency file is
    /// then in `kept_dep`); otherwise the preprocessor runs again here, with `dep_args`.
    pub preprocessed: Option<&'a KeptOutput>,
    /// Where the key's preprocessor run wrote the dependency file, copied to `dep_file`.
    pub kept_dep: Option<&'a Path>,
    /// The compile's dependency file.
    pub dep_file: Option<&'a Path>,
    /// Options that make the preprocessor run write the compile's dependency file.
    pub dep_args: &'a [OsString],
    /// `-x` of the source as compiled here (`c`, `c++`).
    pub source_language: &'static str,
    /// A compile with debug info: the member gets gcc's `-E -fdirectives-only` output (from
    /// a preprocessor run of its own here), compiled as `language` (`c`, `c++`) under the
    /// source's name at `cwd` ([`remote::directives_source`]).
    pub directives: bool,
    pub source: &'a Path,
    pub cwd: &'a Path,
    /// Where the object goes.
    pub output: &'a Path,
}

/// Compiles `offer` on a member. `Some` only for a clean success whose object is written to
/// `offer.output`; `None` means: compile here (the reason is logged). When no member has a
/// slot now, waits for one up to [`OFFLOAD_WAIT`]; when one of this machine's slots comes
/// free first, `take_local` is called, and `None` returned if it took it.
pub(crate) fn compile(offer: &Offer, take_local: &mut dyn FnMut() -> bool) -> Option<Finished> {
    let why_not = |why: &str| {
        tracing::debug!(source = %offer.source.display(), "compiled here: {why}");
        None
    };
    let name = offer.compiler.file_name()?.to_str()?;
    let toolchain: ToolchainId =
        match distc_peer::toolchain::identify(offer.distc_dir, name, offer.compiler) {
            Ok(t) => t,
            Err(e) => return why_not(&format!("compiler not identified: {e}")),
        };
    let Some(args) = compile_options(offer.cpp_args) else {
        return why_not("an argument is not text");
    };
    if let Err(e) = remote::check_args(&args) {
        return why_not(&e.to_string());
    }
    let Some(cwd) = offer.cwd.to_str() else {
        return why_not("the working directory is not text");
    };
    let pre = match offer.preprocessed {
        Some(k) if k.clean && !offer.directives => k.text.clone(),
        Some(_) if !offer.directives => return why_not("the preprocessor warned"),
        _ => {
            let mut pp = offer.cpp_args.to_vec();
            pp.extend(offer.dep_args.iter().cloned());
            if offer.directives {
                pp.push("-fdirectives-only".into());
            }
            pp.extend([
                "-E".into(),
                "-x".into(),
                offer.source_language.into(),
                offer.source.as_os_str().to_owned(),
            ]);
            match offer.runner.output(&Command {
                null_stdin: true,
                ..Command::new(offer.compiler, pp)
            }) {
                Ok(p) if p.success && p.stderr.is_empty() => p.stdout,
                Ok(_) => return why_not("the preprocessor failed or warned"),
                Err(e) => return why_not(&format!("cannot run the preprocessor: {e}")),
            }
        }
    };
    let pre = if offer.directives {
        let Some(pre) = remote::directives_source(&pre) else {
            return why_not("not gcc's directives-only output");
        };
        if let Err(e) = remote::check_directives_only(&pre) {
            return why_not(&e.to_string());
        }
        if let Err(e) = directives_portable(&pre, offer.cwd) {
            return why_not(&e);
        }
        pre
    } else {
        if let Err(e) = remote::check_preprocessed(&pre) {
            return why_not(&e.to_string());
        }
        pre
    };
    let name = if offer.directives {
        // The member compiles the source under this name: it must be the one given here.
        match offer.source.to_str() {
            Some(n) => n.to_string(),
            None => return why_not("the source's name is not text"),
        }
    } else {
        offer.source.display().to_string()
    };
    let req = CompileRequest {
        toolchain,
        language: offer.language.into(),
        args,
        cwd: cwd.to_string(),
        env: locale_env(),
        name,
        source: Bytes(pre),
    };
    let deadline = Instant::now() + OFFLOAD_WAIT;
    let mut client =
        match IpcClient::connect(offer.distc_dir, Duration::from_secs(1)).and_then(|mut c| {
            c.set_timeout(remote::REMOTE_TIMEOUT + OFFLOAD_WAIT + Duration::from_secs(10))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => return why_not(&format!("local peer: {e}")),
        };
    let local_cores = distc_peer::slots::cores() as u32;
    let (peer, response) = loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let ask = remote::Ask {
            request: req.clone(),
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            local_cores,
        };
        match client.compile(ask) {
            Ok((_, CompileResponse::Refused(remote::Refusal::LocalSlotFree))) => {
                if take_local() {
                    return why_not("a local compile slot came free first");
                }
                // Another wrapper took it: wait on, while there is time.
                if Instant::now() >= deadline {
                    return why_not("no slot came free in time");
                }
            }
            Ok(a) => break a,
            Err(e) => return why_not(&format!("local peer: {e}")),
        }
    };
    let peer = peer.unwrap_or_default();
    match response {
        CompileResponse::Done(r)
            if r.exit_code == 0 && r.stderr.0.is_empty() && !r.object.0.is_empty() =>
        {
            if let (Some(from), Some(to)) = (offer.kept_dep, offer.dep_file) {
                let copied = std::fs::read(from).and_then(|d| crate::util::write_output(to, &d));
                if let Err(e) = copied {
                    return why_not(&format!("cannot write {}: {e}", to.display()));
                }
            }
            if let Err(e) = crate::util::write_atomic(offer.output, &r.object.0) {
                return why_not(&format!("cannot write {}: {e}", offer.output.display()));
            }
            tracing::debug!(source = %offer.source.display(), %peer, "compiled on a member");
            Some(Finished {
                stdout: r.stdout.0,
                stderr: Vec::new(),
                code: 0,
                success: true,
            })
        }
        CompileResponse::Done(r) => why_not(&format!(
            "member {peer} exited with {} ({} bytes on stderr): the local compiler says",
            r.exit_code,
            r.stderr.0.len()
        )),
        CompileResponse::Refused(why) => why_not(&format!("not compiled remotely: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn directives_only_output_with_dates_or_a_popped_macro_stays_local() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("inc")).unwrap();
        std::fs::write(d.path().join("a.c"), "int a;\n").unwrap();
        std::fs::write(d.path().join("inc/q\"h.h"), "int h;\n").unwrap();
        std::fs::write(
            d.path().join("inc/p.h"),
            "#pragma push_macro(\"new\")\n#undef new\n#pragma pop_macro(\"new\")\n",
        )
        .unwrap();
        let pre = |text: &str| {
            format!("# 0 \"<command-line>\"\n# 1 \"a.c\"\n{text}# 1 \"inc/q\\\"h.h\" 1\nint h;\n")
        };
        directives_portable(pre("int a;\n").as_bytes(), d.path()).unwrap();
        for bad in [
            pre("const char *d = __DATE__;\n"),
            pre("#define T __TIME__\n"),
            pre("const char *t = __TIMESTAMP__;\n"),
            pre("# 1 \"inc/p.h\" 1\n"),
            pre("# 1 \"inc/missing.h\" 1\n"),
            pre("# 1 \"inc/\\x.h\" 1\n"),
        ] {
            assert!(
                directives_portable(bad.as_bytes(), d.path()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(unquote(b"a\\\\b\\\"c\\101\" 1").unwrap(), b"a\\b\"cA");
    }

    #[test]
    fn preprocessor_options_are_dropped() {
        let got = compile_options(&os(&[
            "-O2",
            "-DX=1",
            "-D",
            "Y",
            "-Iinc",
            "-I",
            "other",
            "-include",
            "cfg.h",
            "-isystem",
            "/opt/inc",
            "--sysroot=/s",
            "-nostdinc",
            "-x",
            "c",
            "-Wall",
            "-std=c99",
        ]))
        .unwrap();
        assert_eq!(got, ["-O2", "-Wall", "-std=c99"]);
        remote::check_args(&got).unwrap();
    }
}
