//! The identity of a compiler binary: a content digest, memoised by path/size/mtime/ctime/inode
//! under `$DISTC_DIR/compilers/` so it is computed once per compiler install, not per call.
//! Also the compiler's own `#include <...>` search directories (see [`system_include_dirs`]),
//! memoised there per compiler identity, language and the arguments that change them.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::key::file::stamp;
use crate::pipeline::{Command, Runner};

/// SHA-256 of the compiler at `real` (already resolved, no symlinks), memoised in `distc_dir`.
pub fn compiler_digest(distc_dir: &Path, real: &Path) -> io::Result<[u8; 32]> {
    let md = fs::metadata(real)?;
    let stamp = stamp(&md);
    let memo = distc_dir.join("compilers").join(hex::encode(
        &Sha256::digest(real.as_os_str().as_bytes())[..16],
    ));
    if let Ok(text) = fs::read_to_string(&memo)
        && let Some((s, d)) = text.trim_end().rsplit_once(' ')
        && s == stamp
    {
        let mut out = [0u8; 32];
        if hex::decode_to_slice(d, &mut out).is_ok() {
            return Ok(out);
        }
    }
    let bytes = fs::read(real)?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    // Memoising is an optimisation: a read-only cache dir just means hashing every time.
    crate::util::write_memo(
        &memo,
        format!("{stamp} {}\n", hex::encode(digest)).as_bytes(),
    );
    Ok(digest)
}

/// Options that change the compiler's built-in include search list, with whether they take a
/// value (next argument, or glued: `--sysroot DIR`, `--sysroot=DIR`, `-isysrootDIR`). Longer
/// flags come before their prefixes.
const INCLUDE_LIST_FLAGS: &[(&str, bool)] = &[
    ("-nostdinc++", false),
    ("-nostdinc", false),
    ("-nostdlibinc", false),
    ("-nobuiltininc", false),
    ("--no-standard-includes", false),
    ("--sysroot", true),
    ("-isysroot", true),
    ("-target", true),
    ("--target", true),
    ("-arch", true),
    ("-imultilib", true),
    ("-imultiarch", true),
    ("-iprefix", true),
    ("-iwithprefixbefore", true),
    ("-iwithprefix", true),
    ("-gcc-toolchain", true),
    ("--gcc-toolchain", true),
    ("-resource-dir", true),
    ("-cxx-isystem", true),
    ("-Xclang", true),
    ("-B", true),
    ("-stdlib", false),
    ("-m32", false),
    ("-m64", false),
    ("-mx32", false),
    ("-m16", false),
    ("-mabi", false),
];

/// The arguments among `args` that can change the built-in include search list.
pub fn include_list_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_bytes();
        i += 1;
        for (flag, separate) in INCLUDE_LIST_FLAGS {
            let f = flag.as_bytes();
            if a == f {
                out.push(args[i - 1].clone());
                if *separate && let Some(v) = args.get(i) {
                    out.push(v.clone());
                    i += 1;
                }
                break;
            }
            // Glued values: `--sysroot=DIR`, `-stdlib=libc++`, `-mabi=lp64`, `-isysrootDIR`.
            if let Some(rest) = a.strip_prefix(f)
                && (rest.first() == Some(&b'=') || (*separate && !flag.starts_with("--")))
            {
                out.push(args[i - 1].clone());
                break;
            }
        }
    }
    out
}

/// The compiler's built-in include search list (see [`system_include_dirs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchList {
    /// The `#include <...>` directories, in search order, as the compiler prints them.
    pub dirs: Vec<PathBuf>,
    /// Directories the compiler would search but left out because they did not exist (a
    /// `--sysroot` tree's `usr/local/include`, a multiarch directory): one created later
    /// joins the list, and a header in it may shadow one found after it.
    pub missing: Vec<PathBuf>,
}

/// The compiler's `#include <...>` search directories for `language` under `args` (only the
/// ones [`include_list_args`] picks), in search order, as the compiler prints them (so they
/// prefix the header paths it reports), and the ones it skipped as nonexistent. `identity`
/// must cover the compiler binary and the environment that changes the list (CPATH and
/// friends). Memoised under `$DISTC_DIR/compilers/` (per working directory too when a path
/// among the arguments is relative), and recomputed once a skipped directory exists; runs
/// `compiler -x LANG -E -v -` through `runner` once per memo key. `None` when the compiler
/// does not say.
pub fn system_include_dirs(
    runner: &dyn Runner,
    distc_dir: &Path,
    compiler: &Path,
    identity: &[u8; 32],
    language: &str,
    args: &[OsString],
) -> Option<SearchList> {
    let (memo, list_args) = include_memo(distc_dir, compiler, identity, language, args)?;
    if let Ok(bytes) = fs::read(&memo)
        && let Some(body) = bytes.strip_prefix(b"ok\n")
    {
        let mut parts = body.splitn(2, |&b| b == b'\0');
        let lines = |part: Option<&[u8]>| -> Vec<PathBuf> {
            part.unwrap_or_default()
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| PathBuf::from(OsStr::from_bytes(l)))
                .collect()
        };
        let list = SearchList {
            dirs: lines(parts.next()),
            missing: lines(parts.next()),
        };
        if !list.missing.iter().any(|d| d.exists()) {
            return Some(list);
        }
    }
    probe_include_dirs(runner, compiler, language, list_args, &memo)
}

/// Whether [`system_include_dirs`] has its answer memoised for these arguments (it then runs
/// no process, unless a directory the list skipped has appeared since).
pub fn include_dirs_memoised(
    distc_dir: &Path,
    compiler: &Path,
    identity: &[u8; 32],
    language: &str,
    args: &[OsString],
) -> bool {
    include_memo(distc_dir, compiler, identity, language, args)
        .is_some_and(|(memo, _)| memo.exists())
}

/// The memo file of [`system_include_dirs`] and the arguments that change the list.
fn include_memo(
    distc_dir: &Path,
    compiler: &Path,
    identity: &[u8; 32],
    language: &str,
    args: &[OsString],
) -> Option<(PathBuf, Vec<OsString>)> {
    let list_args = include_list_args(args);
    let mut h = Sha256::new();
    h.update(b"include-dirs 2\0");
    h.update(identity);
    h.update(compiler.as_os_str().as_bytes());
    h.update([0]);
    h.update(language.as_bytes());
    for a in &list_args {
        h.update([0]);
        h.update(a.as_bytes());
    }
    if relative_path_value(&list_args) {
        let cwd = std::env::current_dir().ok()?;
        h.update([1]);
        h.update(cwd.as_os_str().as_bytes());
    }
    let memo = distc_dir
        .join("compilers")
        .join(format!("inc-{}", hex::encode(&h.finalize()[..16])));
    Some((memo, list_args))
}

/// Runs `compiler -x LANG -E -v -` with the search-list arguments, parses its search list and
/// memoises it in `memo`.
fn probe_include_dirs(
    runner: &dyn Runner,
    compiler: &Path,
    language: &str,
    list_args: Vec<OsString>,
    memo: &Path,
) -> Option<SearchList> {
    let mut args = list_args;
    args.extend(["-x", language, "-E", "-v", "-"].map(OsString::from));
    let out = runner
        .output(&Command {
            null_stdin: true,
            null_stdout: true,
            env: vec![("LC_ALL".into(), "C".into())],
            ..Command::new(compiler, args)
        })
        .ok()?;
    if !out.success {
        return None;
    }
    let list = parse_search_list(&out.stderr)?;
    let mut text = b"ok\n".to_vec();
    for (i, part) in [&list.dirs, &list.missing].into_iter().enumerate() {
        if i > 0 {
            text.push(0);
        }
        for d in part {
            text.extend_from_slice(d.as_os_str().as_bytes());
            text.push(b'\n');
        }
    }
    crate::util::write_memo(memo, &text);
    Some(list)
}

/// Whether a path among the search-list arguments is relative: the list then depends on the
/// working directory.
fn relative_path_value(list_args: &[OsString]) -> bool {
    const PATH_FLAGS: &[&str] = &[
        "--sysroot",
        "-isysroot",
        "-iprefix",
        "-gcc-toolchain",
        "--gcc-toolchain",
        "-resource-dir",
        "-cxx-isystem",
        "-B",
    ];
    let mut it = list_args.iter().map(|a| a.as_bytes()).peekable();
    while let Some(a) = it.next() {
        for f in PATH_FLAGS {
            let value = if a == f.as_bytes() {
                it.peek().copied()
            } else {
                a.strip_prefix(f.as_bytes())
                    .map(|r| r.strip_prefix(b"=").unwrap_or(r))
            };
            if let Some(v) = value
                && v.first().is_some_and(|&c| c != b'/')
            {
                return true;
            }
        }
    }
    false
}

/// The `#include <...>` list of `cc -v` output and the directories it reports ignoring as
/// nonexistent. `None` without a list (or with a directory whose name has a newline or a NUL,
/// which the memo could not hold).
fn parse_search_list(stderr: &[u8]) -> Option<SearchList> {
    const MISSING: &[u8] = b"ignoring nonexistent directory \"";
    let mut missing = Vec::new();
    let mut lines = stderr.split(|&b| b == b'\n');
    for l in lines.by_ref() {
        if l.starts_with(b"#include <...> search starts here:") {
            break;
        }
        if let Some(rest) = l.strip_prefix(MISSING)
            && let Some(d) = rest.strip_suffix(b"\"")
            && !d.is_empty()
            && !d.contains(&0)
        {
            missing.push(PathBuf::from(OsString::from_vec(d.to_vec())));
        }
    }
    let mut dirs = Vec::new();
    for l in lines {
        if l.starts_with(b"End of search list.") {
            return Some(SearchList { dirs, missing });
        }
        let d = l.strip_prefix(b" ")?;
        // clang marks macOS framework directories; they hold no plain headers.
        if d.ends_with(b" (framework directory)") {
            continue;
        }
        dirs.push(PathBuf::from(OsString::from_vec(d.to_vec())));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_list_parsed() {
        let err = [
            "ignoring nonexistent directory \"/x\"",
            "#include \"...\" search starts here:",
            "#include <...> search starts here:",
            " /usr/lib/gcc/x86_64-linux-gnu/12/include",
            " /usr/include",
            " /S/System/Library/Frameworks (framework directory)",
            "End of search list.",
            "",
        ]
        .join("\n");
        let err = err.as_bytes();
        assert_eq!(
            parse_search_list(err).unwrap(),
            SearchList {
                dirs: vec![
                    PathBuf::from("/usr/lib/gcc/x86_64-linux-gnu/12/include"),
                    PathBuf::from("/usr/include")
                ],
                missing: vec![PathBuf::from("/x")],
            }
        );
        assert!(parse_search_list(b"no list\n").is_none());
        let rel =
            |v: &[&str]| relative_path_value(&v.iter().map(OsString::from).collect::<Vec<_>>());
        assert!(rel(&["--sysroot=sr"]));
        assert!(rel(&["--sysroot", "sr"]));
        assert!(rel(&["-isysrootsr"]));
        assert!(!rel(&[
            "--sysroot=/sr",
            "-isysroot",
            "/x",
            "--target",
            "arm",
            "-m64"
        ]));
    }

    #[test]
    fn include_list_args_picked() {
        let args: Vec<OsString> = [
            "-O2",
            "-I",
            "inc",
            "-m64",
            "--sysroot",
            "/sr",
            "-isysroot/x",
            "-nostdinc",
            "-Dx",
            "-stdlib=libc++",
            "-march=x86-64",
            "--target=arm",
            "-mavx",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let got: Vec<String> = include_list_args(&args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "-m64",
                "--sysroot",
                "/sr",
                "-isysroot/x",
                "-nostdinc",
                "-stdlib=libc++",
                "--target=arm"
            ]
        );
    }

    #[test]
    fn memoised_and_invalidated() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("cc");
        fs::write(&c, b"one").unwrap();
        let a = compiler_digest(d.path(), &c).unwrap();
        assert_eq!(a, compiler_digest(d.path(), &c).unwrap());
        fs::write(&c, b"two").unwrap();
        let b = compiler_digest(d.path(), &c).unwrap();
        assert_ne!(a, b);
        assert_eq!(b, <[u8; 32]>::from(Sha256::digest(b"two")));
    }
}
