//! The key of a rustc compile: everything that can change what rustc writes, hashed.
//!
//! # Key inputs (RUST_FORMAT_VERSION 5)
//! Each input is hashed on its own and labelled ([`crate::key::Inputs`]), so
//! `distc inspect` can list them.
//!
//! 1. `format` — `rust` + [`RUST_FORMAT_VERSION`]: any change to this list changes every key,
//!    and Rust keys never equal C keys.
//! 2. `rustc` — the rustc identity: the real rustc binary (rustup proxies resolved), its
//!    `rustc -vV`, and the sysroot's compiler libraries and host tools (`lib/*.so`,
//!    `lib/rustlib/<host>/bin`, where `rust-lld` lives). Memoised under `$DISTC_DIR/rustc/` by
//!    the rustc binary's path, size, mtime, ctime and inode.
//! 3. `target` — the target triple (`--target`, else the host) and the contents of
//!    `lib/rustlib/<target>/lib` (std and friends: what the crate links), memoised by the
//!    listing's names, sizes and mtimes.
//! 4. `args` — the normalised arguments: `--out-dir`, `-o`, the crate root, `--extern` and
//!    `-L dependency=` left out (their contents are inputs 6 and 8); `--cfg`/`--check-cfg`
//!    sorted; `--crate-type` and `--emit` in canonical order; absolute paths inside values
//!    (`--remap-path-prefix`, `-C link-arg=…`, `-L native=…`) rewritten under the known roots
//!    (see [`Normalizer`]). RUSTFLAGS reach rustc as arguments, so they are covered here.
//! 5. `crate-root` — the crate root path relative to the working directory (it is recorded in
//!    the output: `file!()`, panic locations); a relative `--out-dir`/`-o` too, and whether the
//!    link output is named by `-o` (its stored name then differs: an entry of the other form
//!    could not be replayed).
//! 6. `sources` — every source file rustc's own dep-info pass lists (modules,
//!    `include_str!`/`include_bytes!`/`include!` files), each as normalised path + content
//!    digest.
//! 7. `env-deps` — the variables the crate reads with `env!`/`option_env!` (rustc's dep-info
//!    `# env-dep:` lines), with their values: those values are compiled into the output. A
//!    value that is an absolute path under a root of the [`Normalizer`] (`OUT_DIR` under the
//!    target directory, `CARGO_MANIFEST_DIR` under the working directory) is keyed
//!    normalised, since what such a path usually does is name a file to `include!` (keyed by
//!    content, input 6; its path remapped with `base_dir`): `serde`'s
//!    `include!(concat!(env!("OUT_DIR"), "/private.rs"))`. A result whose outputs contain
//!    such a value verbatim (a path compiled in as a string) is stored under
//!    [`path_dependent_key`] instead, which adds the exact values.
//! 8. `externs` — for each `--extern`: the name and the SHA-256 of the crate file (`.rlib`,
//!    `.rmeta`, `.so`). Transitive dependencies are covered through them: every crate file
//!    records the hashes (SVH) of the crates it was built against.
//! 9. `cargo-env` — every other `CARGO_*` variable (except cargo's own settings that never
//!    reach the output: `CARGO_MAKEFLAGS`, the jobserver, `CARGO_TERM_*`, `CARGO_BUILD_JOBS`,
//!    `CARGO_INCREMENTAL`, logging, network and registry settings, and where cargo writes:
//!    `CARGO_TARGET_DIR`, `CARGO_BUILD_TARGET_DIR`, `CARGO_BUILD_BUILD_DIR`),
//!    `RUSTC_BOOTSTRAP`, and `LIBRARY_PATH` for linking crates, set or unset, with absolute
//!    paths normalised: proc-macros may read them without rustc knowing (the reason for each
//!    is at `cargo_own_setting`).
//! 10. `native-libs` — each `-l` with the contents of the library file found in the `-L
//!     native=`/`-L all=` directories (system libraries not found there: the name only).
//! 11. `linker` — for crates rustc links (bin, dylib, cdylib, proc-macro): the SHA-256 of the
//!     linker driver (`-C linker`, else `cc`, as found on PATH).
//! 12. `cwd` — the working directory, only with debug info not covered by
//!     `--remap-path-prefix` (debug info records it).
//!
//! Inputs 1-5 and 8-12 are known before the dep-info pass ([`KeyParts`]): direct mode
//! ([`crate::compiler::rust::direct`]) keys its manifests by them, with input 9 over every `CARGO_*`
//! variable, so a hit needs no rustc process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use distc_peer::Key;
use sha2::{Digest, Sha256};

use crate::compiler::rust::args::{KeyArg, RustJob};
use crate::key::file::stamp;
use crate::key::{Inputs, hash_list};

/// Version of the list above. Bump on any change to what is hashed or how.
/// 3: the target directory variables left out of `cargo-env`; with `base_dir`, rustc runs with
/// a `--remap-path-prefix` of the working directory (see `crate::pipeline::rust`).
/// 4: path-valued env-deps normalised (input 7); with `base_dir`, the target directory
/// remapped too.
/// 5: input 5 says whether `-o` names the link output (`distc build FILE.rs` passes an
/// absolute `-o`, which is otherwise not keyed, like an absolute `--out-dir`).
pub const RUST_FORMAT_VERSION: u32 = 5;

/// Errors computing a Rust key. Each one means "compile without the cache".
#[derive(Debug, thiserror::Error)]
pub enum RustKeyError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot run {} {what}: {detail}", rustc.display())]
    Rustc {
        rustc: PathBuf,
        what: &'static str,
        detail: String,
    },
    /// The dep-info pass failed: the real compile will fail the same way and say why.
    #[error("rustc's dep-info pass failed (exit {code}); the compile reports why")]
    DepInfo { code: i32 },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RustKeyError + 'a {
    move |source| RustKeyError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The identity of a rustc toolchain (input 2).
#[derive(Debug, Clone)]
pub struct RustcId {
    /// The real rustc binary (the toolchain's, not a rustup proxy).
    pub real: PathBuf,
    /// `rustc --print sysroot`.
    pub sysroot: PathBuf,
    /// The `host:` line of `rustc -vV`.
    pub host: String,
    /// `rustc -vV`, verbatim.
    pub version: String,
    /// SHA-256 over the binary, the version text and the sysroot's compiler libraries.
    pub digest: [u8; 32],
}

fn memo_path(distc_dir: &Path, kind: &str, id: &[u8]) -> PathBuf {
    distc_dir
        .join("rustc")
        .join(format!("{kind}-{}", hex::encode(&Sha256::digest(id)[..16])))
}

fn run_rustc(
    runner: &dyn Runner,
    rustc: &Path,
    args: &[&str],
    what: &'static str,
) -> Result<String, RustKeyError> {
    let out = runner
        .output(&Command {
            null_stdin: true,
            ..Command::new(rustc, args.iter().map(OsString::from).collect())
        })
        .map_err(|e| RustKeyError::Rustc {
            rustc: rustc.to_path_buf(),
            what,
            detail: e.to_string(),
        })?;
    if !out.success {
        return Err(RustKeyError::Rustc {
            rustc: rustc.to_path_buf(),
            what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    String::from_utf8(out.stdout).map_err(|_| RustKeyError::Rustc {
        rustc: rustc.to_path_buf(),
        what,
        detail: "output is not UTF-8".into(),
    })
}

/// Resolves a rustup proxy (`~/.cargo/bin/rustc -> rustup`) to the toolchain's real rustc.
/// Cargo already passes the real path; `distc rustc …` and `distc build FILE.rs` may not.
///
/// The proxy's answer is memoised (`$DISTC_DIR/rustc/proxy-…`), so a hit starts no process:
/// the memo is keyed by everything rustup decides the toolchain from (see [`proxy_inputs`])
/// and holds the sysroot's stat, checked on every use (a toolchain reinstalled, updated or
/// relinked has another).
pub fn resolve_real_rustc(
    runner: &dyn Runner,
    distc_dir: &Path,
    rustc: &Path,
) -> Result<PathBuf, RustKeyError> {
    let canon = fs::canonicalize(rustc).map_err(io_err("rustc", rustc))?;
    let is_proxy = canon
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("rustup"));
    if !is_proxy {
        return Ok(canon);
    }
    let memo = std::env::current_dir()
        .ok()
        .and_then(|cwd| proxy_inputs(&canon, &cwd))
        .map(|inputs| memo_path(distc_dir, "proxy", &inputs));
    if let Some(memo) = &memo
        && let Ok(text) = fs::read_to_string(memo)
        && let Some((sysroot, rest)) = text.split_once('\n')
        && let Some((stamp, real)) = rest.split_once('\n')
        && sysroot_stamp(Path::new(sysroot)).is_some_and(|s| s == stamp)
    {
        return Ok(PathBuf::from(real));
    }
    let sysroot = run_rustc(runner, rustc, &["--print", "sysroot"], "--print sysroot")?;
    let sysroot = Path::new(sysroot.trim_end());
    let real = sysroot.join("bin").join("rustc");
    let real = fs::canonicalize(&real).map_err(io_err("rustc", &real))?;
    if let Some(memo) = &memo
        && let Some(stamp) = sysroot_stamp(sysroot)
        && let (Some(s), Some(r)) = (sysroot.to_str(), real.to_str())
    {
        crate::util::write_memo(memo, format!("{s}\n{stamp}\n{r}").as_bytes());
    }
    Ok(real)
}

/// The stat of a toolchain directory, both the link (`rustup toolchain link`) and what it
/// names, and of its `bin/rustc`.
fn sysroot_stamp(sysroot: &Path) -> Option<String> {
    let link = fs::symlink_metadata(sysroot).ok()?;
    let dir = fs::metadata(sysroot).ok()?;
    let bin = fs::metadata(sysroot.join("bin/rustc")).ok()?;
    Some(format!(
        "{} / {} / {}",
        stamp(&link),
        stamp(&dir),
        stamp(&bin)
    ))
}

/// Everything the rustup proxy at `proxy` chooses a toolchain by, run in `cwd`: the proxy
/// binary itself, `RUSTUP_TOOLCHAIN`, `RUSTUP_HOME`, `CARGO_HOME` and `HOME` (where rustup's
/// settings live), the settings file's stat (default toolchain, directory overrides), and the
/// contents of every `rust-toolchain.toml` / `rust-toolchain` from `cwd` up to the root.
/// `None` when the proxy cannot be stat'ed.
fn proxy_inputs(proxy: &Path, cwd: &Path) -> Option<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = vec![
        proxy.as_os_str().as_bytes().to_vec(),
        stamp(&fs::metadata(proxy).ok()?).into_bytes(),
    ];
    for var in ["RUSTUP_TOOLCHAIN", "RUSTUP_HOME", "CARGO_HOME", "HOME"] {
        let mut v = var.as_bytes().to_vec();
        if let Some(val) = std::env::var_os(var) {
            v.push(b'=');
            v.extend_from_slice(val.as_bytes());
        }
        parts.push(v);
    }
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".rustup")));
    if let Some(home) = rustup_home {
        let settings = fs::metadata(home.join("settings.toml")).map(|m| stamp(&m));
        parts.push(settings.unwrap_or_default().into_bytes());
    }
    for dir in cwd.ancestors() {
        for name in ["rust-toolchain.toml", "rust-toolchain"] {
            if let Ok(text) = fs::read(dir.join(name)) {
                parts.push(dir.join(name).into_os_string().into_vec());
                parts.push(text);
            }
        }
    }
    Some(hash_list(parts.iter().map(Vec::as_slice)).to_vec())
}

/// Hashes every regular file under `dir` (recursively, sorted by relative path) into `h`.
/// `filter` selects files by name. A missing directory hashes as empty.
fn hash_tree(h: &mut Sha256, dir: &Path, filter: &dyn Fn(&str) -> bool) -> io::Result<()> {
    let mut files = Vec::new();
    list_files(dir, dir, &mut files)?;
    files.sort();
    for rel in files {
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !filter(name) {
            continue;
        }
        h.update(rel.as_os_str().as_bytes());
        h.update([0]);
        h.update(file_digest(&dir.join(&rel))?);
    }
    Ok(())
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        // metadata() follows symlinks: a symlinked library counts as the file it names.
        let Ok(md) = fs::metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            list_files(root, &path, out)?;
        } else if md.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

/// What the memo of a directory tree's digest is checked against on every use: each file's
/// path under `root` with its size, times and inode (one `stat` each, symlinks followed),
/// sorted by path, hashed. Listed on every Rust key (the target's std libraries), so it works
/// on bytes rather than `PathBuf`s, and formats nothing.
fn tree_stamp(root: &Path) -> io::Result<[u8; 32]> {
    let mut files = Vec::new();
    stamp_files(root, &mut Vec::new(), &mut files)?;
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (path, st) in &files {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path);
        for x in st {
            h.update(x.to_le_bytes());
        }
    }
    Ok(h.finalize().into())
}

/// A file's stamp for [`tree_stamp`]: size, mtime, ctime (seconds and nanoseconds) and inode.
type FileStamp = [i64; 6];

fn stamp_files(
    dir: &Path,
    rel: &mut Vec<u8>,
    out: &mut Vec<(Vec<u8>, FileStamp)>,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let path = dir.join(&name);
        // Stat relative to the open directory (no walk of the long sysroot path per file);
        // a symlink is followed to the file it names.
        let md = match entry.file_type() {
            Ok(t) if !t.is_symlink() => entry.metadata(),
            _ => fs::metadata(&path),
        };
        let Ok(md) = md else {
            continue;
        };
        let at = rel.len();
        rel.extend_from_slice(name.as_bytes());
        if md.is_dir() {
            rel.push(b'/');
            stamp_files(&path, rel, out)?;
        } else if md.is_file() {
            out.push((
                rel.clone(),
                [
                    md.size() as i64,
                    md.mtime(),
                    md.mtime_nsec(),
                    md.ctime(),
                    md.ctime_nsec(),
                    md.ino() as i64,
                ],
            ));
        }
        rel.truncate(at);
    }
    Ok(())
}

use crate::key::file::digest as file_digest;
use crate::pipeline::{Command, Runner};

/// The rustc identity, memoised by the real binary's stat; the probes run through `runner`.
pub fn rustc_identity(
    runner: &dyn Runner,
    distc_dir: &Path,
    rustc: &Path,
) -> Result<RustcId, RustKeyError> {
    let real = resolve_real_rustc(runner, distc_dir, rustc)?;
    let md = fs::metadata(&real).map_err(io_err("rustc", &real))?;
    let stamp = stamp(&md);
    let memo = memo_path(distc_dir, "id", real.as_os_str().as_bytes());
    if let Ok(text) = fs::read_to_string(&memo)
        && let Some(id) = parse_id_memo(&text, &stamp, &real)
    {
        return Ok(id);
    }
    let version = run_rustc(runner, &real, &["-vV"], "-vV")?;
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
        .ok_or_else(|| RustKeyError::Rustc {
            rustc: real.clone(),
            what: "-vV",
            detail: "no `host:` line in its output".into(),
        })?;
    let sysroot = PathBuf::from(
        run_rustc(runner, &real, &["--print", "sysroot"], "--print sysroot")?.trim_end(),
    );
    let mut h = Sha256::new();
    h.update(file_digest(&real).map_err(io_err("rustc", &real))?);
    h.update(version.as_bytes());
    let lib = sysroot.join("lib");
    // Only the top level of lib/: the compiler's own shared libraries (librustc_driver, LLVM).
    let mut libs: Vec<PathBuf> = fs::read_dir(&lib)
        .map_err(io_err("sysroot", &lib))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "so") && p.is_file())
        .collect();
    libs.sort();
    for l in &libs {
        h.update(l.file_name().map(|n| n.as_bytes()).unwrap_or_default());
        h.update(file_digest(l).map_err(io_err("sysroot library", l))?);
    }
    let tools = sysroot.join("lib/rustlib").join(&host).join("bin");
    hash_tree(&mut h, &tools, &|_| true).map_err(io_err("sysroot tools", &tools))?;
    let id = RustcId {
        real: real.clone(),
        sysroot,
        host,
        version,
        digest: h.finalize().into(),
    };
    crate::util::write_memo(
        &memo,
        format!(
            "{stamp}\n{}\n{}\n{}\n{}",
            hex::encode(id.digest),
            id.sysroot.display(),
            id.host,
            id.version
        )
        .as_bytes(),
    );
    Ok(id)
}

fn parse_id_memo(text: &str, stamp: &str, real: &Path) -> Option<RustcId> {
    let mut lines = text.splitn(5, '\n');
    if lines.next()? != stamp {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(lines.next()?, &mut digest).ok()?;
    let sysroot = PathBuf::from(lines.next()?);
    let host = lines.next()?.to_string();
    let version = lines.next()?.to_string();
    Some(RustcId {
        real: real.to_path_buf(),
        sysroot,
        host,
        version,
        digest,
    })
}

/// Digest of `lib/rustlib/<target>/lib` (input 3), memoised by the listing's stat data.
pub fn target_digest(
    distc_dir: &Path,
    id: &RustcId,
    target: &str,
) -> Result<[u8; 32], RustKeyError> {
    let dir = id.sysroot.join("lib/rustlib").join(target).join("lib");
    let listing = hex::encode(tree_stamp(&dir).map_err(io_err("target libraries", &dir))?);
    let memo = memo_path(distc_dir, "target", dir.as_os_str().as_bytes());
    if let Ok(text) = fs::read_to_string(&memo)
        && let Some((l, d)) = text.trim_end().split_once(' ')
        && l == listing
    {
        let mut out = [0u8; 32];
        if hex::decode_to_slice(d, &mut out).is_ok() {
            return Ok(out);
        }
    }
    let mut h = Sha256::new();
    h.update(target.as_bytes());
    hash_tree(&mut h, &dir, &|_| true).map_err(io_err("target libraries", &dir))?;
    let digest: [u8; 32] = h.finalize().into();
    crate::util::write_memo(
        &memo,
        format!("{listing} {}\n", hex::encode(digest)).as_bytes(),
    );
    Ok(digest)
}

/// Cargo's target and profile directories of a crate whose (absolute) `--out-dir` is `out`:
/// `<target>/<profile>/deps`, or `<target>/<profile>/build/<pkg>-<hash>` for build scripts
/// (`<target>` includes the `<triple>` directory of a `--target` build). `None` for an output
/// directory cargo did not choose.
pub fn cargo_dirs(out: &Path) -> Option<(PathBuf, PathBuf)> {
    let profile = if out.file_name().is_some_and(|n| n == "deps") {
        out.parent()?
    } else if out
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "build")
    {
        out.parent()?.parent()?
    } else {
        return None;
    };
    Some((profile.parent()?.to_path_buf(), profile.to_path_buf()))
}

/// Rewrites absolute paths under known roots to stable tokens, so the key of the same crate
/// at two places (two checkouts, two users' CARGO_HOME, two target dirs) is the same.
///
/// Roots, longest match first: the output directory, cargo's profile and target directories
/// (derived from `--out-dir`), the working directory, `CARGO_HOME`, `RUSTUP_HOME` and the
/// configured `base_dir`.
#[derive(Debug, Clone)]
pub struct Normalizer {
    /// (root, token), longest root first.
    roots: Vec<(String, &'static str)>,
}

impl Normalizer {
    pub fn new(
        cwd: &Path,
        out_dir: Option<&Path>,
        base_dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Normalizer {
        let mut roots: Vec<(PathBuf, &'static str)> = Vec::new();
        if let Some(out) = out_dir {
            let out = cwd.join(out);
            if let Some((target, profile)) = cargo_dirs(&out) {
                roots.push((target, "$TARGET"));
                roots.push((profile, "$PROFILE"));
            }
            roots.push((out, "$OUT"));
        }
        if let Some(t) = env("CARGO_TARGET_DIR") {
            roots.push((cwd.join(t), "$TARGET"));
        }
        roots.push((cwd.to_path_buf(), "$CWD"));
        let home = env("HOME").map(PathBuf::from);
        match env("CARGO_HOME") {
            Some(c) => roots.push((cwd.join(c), "$CARGO_HOME")),
            None => {
                if let Some(h) = &home {
                    roots.push((h.join(".cargo"), "$CARGO_HOME"));
                }
            }
        }
        match env("RUSTUP_HOME") {
            Some(r) => roots.push((cwd.join(r), "$RUSTUP_HOME")),
            None => {
                if let Some(h) = &home {
                    roots.push((h.join(".rustup"), "$RUSTUP_HOME"));
                }
            }
        }
        if let Some(b) = base_dir {
            roots.push((b.to_path_buf(), "$BASE"));
        }
        let mut roots: Vec<(String, &'static str)> = roots
            .into_iter()
            .filter_map(|(p, t)| {
                let s = p.to_str()?.trim_end_matches('/').to_string();
                // "/" as a root would rewrite everything.
                (s.len() > 1 && s.starts_with('/')).then_some((s, t))
            })
            .collect();
        roots.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Normalizer { roots }
    }

    /// Normalises one path: the longest root it lies under becomes its token.
    pub fn path(&self, p: &str) -> String {
        for (root, token) in &self.roots {
            if let Some(rest) = p.strip_prefix(root.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{token}{rest}");
            }
        }
        p.to_string()
    }

    /// The inverse of [`Normalizer::path`]: a path starting with a token becomes the path under
    /// this normaliser's root for it (the longest, when several share the token). `None` when
    /// `p` starts with no token this normaliser has.
    pub fn instantiate(&self, p: &str) -> Option<String> {
        self.roots.iter().find_map(|(root, token)| {
            let rest = p.strip_prefix(token)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{root}{rest}"))
        })
    }

    /// Normalises every root occurring inside `text` (option values with embedded paths).
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (root, token) in &self.roots {
            if out.contains(root.as_str()) {
                out = out.replace(root.as_str(), token);
            }
        }
        out
    }
}

/// What rustc's dep-info lists for a crate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DepInfo {
    /// Every file the crate read, as rustc wrote them (relative to the working directory or
    /// absolute), sorted and deduplicated.
    pub files: Vec<String>,
    /// `# env-dep:NAME=VALUE` (or `# env-dep:NAME` for an unset variable), sorted by name.
    pub env_deps: Vec<(String, Option<String>)>,
}

/// Splits a make-style dependency list, honouring `\ ` escapes.
fn split_deps(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                cur.push(' ');
                chars.next();
            }
            ' ' | '\t' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses rustc's dep-info output: the first rule's prerequisites, plus `# env-dep:` lines.
pub fn parse_dep_info(text: &str) -> DepInfo {
    let mut files = Vec::new();
    let mut env: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut first_rule = true;
    for line in text.lines() {
        if let Some(dep) = line.strip_prefix("# env-dep:") {
            let (k, v) = match dep.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(unescape_env(v))),
                None => (dep.to_string(), None),
            };
            env.insert(k, v);
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() || !first_rule {
            continue;
        }
        // `target: dep dep…` — find the separator that is not part of an escaped path.
        if let Some(pos) = line
            .find(": ")
            .or_else(|| line.strip_suffix(':').map(|s| s.len()))
        {
            files.extend(split_deps(&line[(pos + 1).min(line.len())..]));
            first_rule = false;
        }
    }
    files.sort();
    files.dedup();
    DepInfo {
        files,
        env_deps: env.into_iter().collect(),
    }
}

/// rustc escapes `\` and newlines in env-dep values (`\\`, `\n`).
fn unescape_env(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs rustc's dep-info pass (`--emit=dep-info -o TMP`) with the job's other arguments, in
/// the same working directory and environment, through `runner`, and parses what it lists.
pub fn run_dep_info(
    runner: &dyn Runner,
    rustc: &Path,
    job: &RustJob,
    cwd: &Path,
) -> Result<DepInfo, RustKeyError> {
    let tmp = tempfile::Builder::new()
        .prefix("distc-depinfo-")
        .tempdir()
        .map_err(io_err("temporary directory", Path::new("$TMPDIR")))?;
    let dep = tmp.path().join("deps.d");
    let mut args = job.depinfo_args.clone();
    args.extend([
        "--emit=dep-info".into(),
        "-o".into(),
        dep.clone().into_os_string(),
    ]);
    let out = runner
        .output(&Command {
            null_stdin: true,
            null_stdout: true,
            cwd: Some(cwd.to_path_buf()),
            ..Command::new(rustc, args)
        })
        .map_err(|e| RustKeyError::Rustc {
            rustc: rustc.to_path_buf(),
            what: "--emit=dep-info",
            detail: e.to_string(),
        })?;
    if !out.success {
        tracing::debug!(
            "dep-info pass failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(RustKeyError::DepInfo { code: out.code });
    }
    let text = fs::read_to_string(&dep).map_err(io_err("dep-info output", &dep))?;
    Ok(parse_dep_info(&text))
}

/// Everything the key of one rustc job is computed in.
pub struct KeyContext<'a> {
    /// Where the dep-info pass runs.
    pub runner: &'a dyn Runner,
    pub distc_dir: &'a Path,
    pub cwd: &'a Path,
    pub base_dir: Option<&'a Path>,
    pub id: &'a RustcId,
    /// Reads an environment variable (a parameter so tests control it).
    pub env: &'a dyn Fn(&str) -> Option<OsString>,
    /// All environment variable names (for the `CARGO_*` scan).
    pub env_names: &'a [String],
}

/// Finds the linker driver: a path (relative to the working directory) or a name on PATH.
fn find_program(
    name: &Path,
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<PathBuf> {
    if name.as_os_str().as_bytes().contains(&b'/') {
        return Some(cwd.join(name));
    }
    let path = env("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|c| fs::metadata(c).is_ok_and(|m| m.is_file()))
}

/// The key inputs known before the dep-info pass: everything but the sources (6) and the
/// env-deps (7), which also shape the cargo-env input (9). Computed once per invocation and
/// shared by the direct-mode manifest key ([`crate::compiler::rust::direct`]) and the key itself.
pub struct KeyParts {
    pub norm: Normalizer,
    /// Inputs 1-5.
    head: Inputs,
    /// Input 8.
    externs: Labelled,
    /// Inputs 10-12.
    tail: Inputs,
}

type Labelled = (String, [u8; 32]);

/// Computes [`KeyParts`] of `job` (see the module docs for the list).
pub fn key_parts(ctx: &KeyContext<'_>, job: &RustJob) -> Result<KeyParts, RustKeyError> {
    let norm = Normalizer::new(ctx.cwd, job.out_dir.as_deref(), ctx.base_dir, ctx.env);
    let mut inputs = Inputs::default();
    // 1.
    inputs.push("format", format!("rust {RUST_FORMAT_VERSION}").as_bytes());
    // 2.
    inputs.push_digest("rustc", ctx.id.digest);
    // 3.
    let target = job.target.clone().unwrap_or_else(|| ctx.id.host.clone());
    let tdigest = target_digest(ctx.distc_dir, ctx.id, &target)?;
    inputs.push_digest(format!("target {target}"), tdigest);
    // 4.
    let args: Vec<String> = job
        .key_args
        .iter()
        .map(|a| match a {
            KeyArg::Plain(s) => s.clone(),
            KeyArg::WithPaths(s) => norm.text(s),
        })
        .collect();
    inputs.push_digest("args", hash_list(args.iter().map(|s| s.as_bytes())));
    // 5.
    // Relative or absolute as given: rustc records the path the way it was written.
    let given = if job.input.is_relative() {
        "relative"
    } else {
        "absolute"
    };
    let mut root = vec![
        given.to_string(),
        norm.path(&ctx.cwd.join(&job.input).to_string_lossy()),
    ];
    for p in [&job.out_dir, &job.out_file].into_iter().flatten() {
        if p.is_relative() {
            root.push(p.to_string_lossy().into_owned());
        }
    }
    if job.out_file.is_some() {
        root.push("-o".to_string());
    }
    inputs.push_digest("crate-root", hash_list(root.iter().map(|s| s.as_bytes())));
    // 8.
    let mut h = Sha256::new();
    for e in &job.externs {
        h.update((e.name.len() as u64).to_le_bytes());
        h.update(e.name.as_bytes());
        match &e.path {
            Some(p) => {
                let abs = ctx.cwd.join(p);
                h.update(abs.extension().map(|x| x.as_bytes()).unwrap_or_default());
                h.update(file_digest(&abs).map_err(io_err("--extern crate", &abs))?);
            }
            None => h.update(b"\0sysroot"),
        }
    }
    let externs = (
        format!("externs ({})", job.externs.len()),
        h.finalize().into(),
    );
    let mut tail = Inputs::default();
    // 10.
    let mut h = Sha256::new();
    let search: Vec<PathBuf> = job
        .lib_paths
        .iter()
        .filter(|l| matches!(l.kind.as_str(), "native" | "all" | "framework"))
        .map(|l| ctx.cwd.join(&l.path))
        .collect();
    for lib in &job.native_libs {
        h.update(hash_list([lib.kind.as_bytes(), lib.name.as_bytes()]));
        if lib.kind.starts_with("link-arg") {
            continue;
        }
        let name = lib.name.split(':').next().unwrap_or(&lib.name);
        let candidates = [
            format!("lib{name}.a"),
            format!("lib{name}.so"),
            name.to_string(),
        ];
        'dirs: for dir in &search {
            for c in &candidates {
                let p = dir.join(c);
                if p.is_file() {
                    h.update(c.as_bytes());
                    h.update(file_digest(&p).map_err(io_err("native library", &p))?);
                    break 'dirs;
                }
            }
        }
    }
    tail.push_digest(
        format!("native-libs ({})", job.native_libs.len()),
        h.finalize().into(),
    );
    // 11.
    if job.links() {
        let name = job.linker.clone().unwrap_or_else(|| PathBuf::from("cc"));
        let digest = match find_program(&name, ctx.cwd, ctx.env) {
            Some(p) => {
                let real = fs::canonicalize(&p).unwrap_or(p);
                crate::compiler::c::identity::compiler_digest(ctx.distc_dir, &real)
                    .map_err(io_err("linker", &real))?
            }
            // rustc will fail to link and say so; the key just records the absence.
            None => Sha256::digest(b"\0no linker").into(),
        };
        tail.push_digest("linker", digest);
    }
    // 12.
    if job.debug_info
        && !job
            .remap_from
            .iter()
            .any(|r| ctx.cwd.starts_with(ctx.cwd.join(r)))
    {
        tail.push("cwd", ctx.cwd.as_os_str().as_bytes());
    }
    Ok(KeyParts {
        norm,
        head: inputs,
        externs,
        tail,
    })
}

/// `CARGO_*` variables that configure cargo itself and never change what rustc writes:
/// terminal output, parallelism and the jobserver, logging, the network and registries.
/// Cargo turns the settings that matter (profiles, RUSTFLAGS, incremental) into rustc
/// arguments, which are keyed. Keying these would make `CARGO_TERM_COLOR=always` in CI or
/// `CARGO_BUILD_JOBS=1` miss every crate a developer's build stored.
///
/// The variables that only say where cargo writes are among them: `CARGO_TARGET_DIR`,
/// `CARGO_BUILD_TARGET_DIR` and `CARGO_BUILD_BUILD_DIR` are set in one shell and not in
/// another, and what a crate gets from them reaches rustc as `--out-dir`, `-L dependency=`
/// and `--extern` paths (left out of the key, their contents hashed) or as `OUT_DIR` (an
/// env-dep when read, keyed exactly then).
///
/// Every other `CARGO_*` variable is keyed (input 9) because a proc-macro or `build.rs`-generated
/// code may read it at compile time without rustc tracking it, and each can change what is
/// generated: the package metadata cargo sets for the crate (`CARGO_PKG_*`, `CARGO_CRATE_NAME`,
/// `CARGO_MANIFEST_DIR`/`_PATH`, `CARGO_BIN_NAME`, `CARGO_PRIMARY_PACKAGE`, `CARGO_TARGET_TMPDIR`,
/// paths normalised), `CARGO` and `CARGO_HOME` (where a macro finds cargo and the registry
/// sources), `CARGO_ENCODED_RUSTFLAGS`, `CARGO_CFG_*`, `CARGO_PROFILE_*` and `CARGO_BUILD_*`
/// settings (compile-affecting configuration a macro may read), and any user variable that
/// happens to start with `CARGO_`. An unknown variable is keyed: correctness first.
fn cargo_own_setting(name: &str) -> bool {
    const EXACT: [&str; 8] = [
        "CARGO_MAKEFLAGS",
        "CARGO_BUILD_JOBS",
        "CARGO_INCREMENTAL",
        "CARGO_LOG",
        "CARGO_FUTURE_INCOMPAT_REPORT_FREQUENCY",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_BUILD_DIR",
    ];
    const PREFIXES: [&str; 7] = [
        "CARGO_TERM_",
        "CARGO_LOG_",
        "CARGO_HTTP_",
        "CARGO_NET_",
        "CARGO_REGISTRY_",
        "CARGO_REGISTRIES_",
        "CARGO_ALIAS_",
    ];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

impl KeyParts {
    /// Input 9 over every `CARGO_*` variable except those named in `exclude` (the env-deps,
    /// whose exact values input 7 holds).
    pub fn cargo_env(&self, ctx: &KeyContext<'_>, job: &RustJob, exclude: &[&str]) -> [u8; 32] {
        let mut names: Vec<&str> = ctx
            .env_names
            .iter()
            .map(String::as_str)
            .filter(|n| (n.starts_with("CARGO_") || *n == "CARGO") && !cargo_own_setting(n))
            .filter(|n| !exclude.contains(n))
            .collect();
        // RUSTC_BOOTSTRAP lets a stable rustc accept unstable features (and cfg on them);
        // LIBRARY_PATH is where the linker finds the libraries a linked crate names.
        names.push("RUSTC_BOOTSTRAP");
        if job.links() {
            names.push("LIBRARY_PATH");
        }
        names.sort_unstable();
        names.dedup();
        let mut h = Sha256::new();
        for n in names {
            let v = (ctx.env)(n).map(|v| self.norm.text(&v.to_string_lossy()));
            h.update(hash_list([
                n.as_bytes(),
                v.as_deref().map(str::as_bytes).unwrap_or(b"\0unset"),
            ]));
        }
        h.finalize().into()
    }

    /// The inputs known before the dep-info pass, for the direct-mode manifest key: inputs
    /// 1-5, 8, 9 over every `CARGO_*` variable (normalised), 10-12. The caller adds the crate
    /// root's contents.
    pub fn pre_dep_info(&self, ctx: &KeyContext<'_>, job: &RustJob) -> Inputs {
        let mut inputs = self.head.clone();
        inputs.push_digest(self.externs.0.clone(), self.externs.1);
        inputs.push_digest("cargo-env", self.cargo_env(ctx, job, &[]));
        inputs.items.extend(self.tail.items.iter().cloned());
        inputs
    }

    /// Digests of the dep-info files (input 6), in `dep.files` order, and the input itself.
    pub fn sources(
        &self,
        ctx: &KeyContext<'_>,
        dep: &DepInfo,
    ) -> Result<(Vec<[u8; 32]>, [u8; 32]), RustKeyError> {
        let mut h = Sha256::new();
        let mut digests = Vec::with_capacity(dep.files.len());
        for f in &dep.files {
            let abs = ctx.cwd.join(f);
            let d = file_digest(&abs).map_err(io_err("source file", &abs))?;
            self.add_source(&mut h, &abs, d);
            digests.push(d);
        }
        Ok((digests, h.finalize().into()))
    }

    /// One source file's contribution to the `sources` input: its normalised name and digest.
    fn add_source(&self, h: &mut Sha256, abs: &Path, digest: [u8; 32]) {
        let name = self.norm.path(&abs.to_string_lossy());
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(digest);
    }

    /// [`KeyParts::sources`] for the files a compile that began at `started` read (depend
    /// mode: the key is computed after the compile). Each file is hashed, then its open
    /// handle is stat'ed: a file modified since `started` (or while being read) may not be
    /// what rustc read, so nothing is keyed. The error is a stats label.
    pub fn sources_read_before(
        &self,
        ctx: &KeyContext<'_>,
        dep: &DepInfo,
        started: SystemTime,
    ) -> Result<(Vec<[u8; 32]>, [u8; 32]), &'static str> {
        let start = match started.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
            Err(_) => return Err("source-modified"),
        };
        let mut h = Sha256::new();
        let mut digests = Vec::with_capacity(dep.files.len());
        for f in &dep.files {
            let abs = ctx.cwd.join(f);
            let mut file = fs::File::open(&abs).map_err(|_| "unreadable-source")?;
            let mut fh = Sha256::new();
            let read = io::copy(&mut file, &mut fh).map_err(|_| "unreadable-source")?;
            let md = file.metadata().map_err(|_| "unreadable-source")?;
            let mtime = (md.mtime(), md.mtime_nsec());
            let ctime = (md.ctime(), md.ctime_nsec());
            if mtime >= start || ctime >= start || md.len() != read {
                return Err("source-modified");
            }
            let d: [u8; 32] = fh.finalize().into();
            self.add_source(&mut h, &abs, d);
            digests.push(d);
        }
        Ok((digests, h.finalize().into()))
    }

    /// The full labelled key inputs (see the module docs), given the dep-info result and
    /// the sources input from [`KeyParts::sources`].
    pub fn inputs(
        &self,
        ctx: &KeyContext<'_>,
        job: &RustJob,
        dep: &DepInfo,
        sources: [u8; 32],
    ) -> Inputs {
        let mut inputs = self.head.clone();
        // 6.
        inputs.push_digest(format!("sources ({})", dep.files.len()), sources);
        // 7.
        let mut h = Sha256::new();
        for (k, v) in &dep.env_deps {
            let v = v.as_deref().map(|v| self.norm.path(v));
            h.update(hash_list([
                k.as_bytes(),
                v.as_deref().map(str::as_bytes).unwrap_or(b"\0unset"),
            ]));
        }
        inputs.push_digest(
            format!("env-deps ({})", dep.env_deps.len()),
            h.finalize().into(),
        );
        // 8.
        inputs.push_digest(self.externs.0.clone(), self.externs.1);
        // 9.
        let exclude: Vec<&str> = dep.env_deps.iter().map(|(k, _)| k.as_str()).collect();
        inputs.push_digest("cargo-env", self.cargo_env(ctx, job, &exclude));
        // 10-12.
        inputs.items.extend(self.tail.items.iter().cloned());
        inputs
    }
}

impl KeyParts {
    /// The env-dep values of `dep` that input 7 keys normalised: absolute paths under a root
    /// (`OUT_DIR`, `CARGO_MANIFEST_DIR`), as they are here. A result whose outputs contain one
    /// of them verbatim is path-dependent after all ([`path_dependent_key`]).
    pub fn normalised_env_values<'d>(&self, dep: &'d DepInfo) -> Vec<&'d str> {
        dep.env_deps
            .iter()
            .filter_map(|(_, v)| v.as_deref())
            .filter(|v| self.norm.path(v) != *v)
            .collect()
    }
}

/// The key a result is stored under when its outputs contain the value of an env-dep that
/// input 7 keyed normalised (e.g. `env!("OUT_DIR")` compiled in as a string): `key` and the
/// exact values, so only a compile with the very same paths is served it.
pub fn path_dependent_key(key: &Key, dep: &DepInfo) -> Key {
    let mut inputs = Inputs::default();
    inputs.push_digest("path-free key", key.0);
    let exact = dep.env_deps.iter().flat_map(|(k, v)| {
        [
            k.as_bytes(),
            v.as_deref().map(str::as_bytes).unwrap_or(b"\0unset"),
        ]
    });
    inputs.push_digest("env-deps, exact", hash_list(exact));
    inputs.key()
}

/// Computes the labelled key inputs of `job` (see the module docs for the list).
pub fn key_inputs(
    ctx: &KeyContext<'_>,
    job: &RustJob,
    dep: &DepInfo,
) -> Result<Inputs, RustKeyError> {
    let parts = key_parts(ctx, job)?;
    let (_, sources) = parts.sources(ctx, dep)?;
    Ok(parts.inputs(ctx, job, dep, sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_stamp_sees_every_file_change() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        fs::create_dir_all(root.join("self-contained")).expect("mkdir");
        fs::write(root.join("libstd.rlib"), b"std").expect("write");
        fs::write(root.join("self-contained/crt1.o"), b"crt").expect("write");
        let a = tree_stamp(root).expect("stamp");
        assert_eq!(tree_stamp(root).expect("stamp"), a);
        // Rewritten in place (same name, other size), added, removed: each changes it.
        fs::write(root.join("self-contained/crt1.o"), b"crt1").expect("write");
        let b = tree_stamp(root).expect("stamp");
        assert_ne!(b, a);
        fs::write(root.join("libcore.rlib"), b"core").expect("write");
        let c = tree_stamp(root).expect("stamp");
        assert_ne!(c, b);
        fs::remove_file(root.join("libcore.rlib")).expect("rm");
        assert_eq!(tree_stamp(root).expect("stamp"), b);
        assert_eq!(
            tree_stamp(&root.join("absent")).expect("stamp"),
            tree_stamp(&root.join("self-contained/none")).expect("stamp")
        );
    }

    #[test]
    fn dep_info_parsing() {
        let text = "/tmp/x/deps.d: src/lib.rs src/a\\ b.rs /reg/itoa/src/udiv128.rs\n\
                    \n\
                    src/lib.rs:\n\
                    src/a\\ b.rs:\n\
                    \n\
                    # env-dep:CARGO_PKG_NAME=foo\n\
                    # env-dep:SOME_VAR=a\\nb\n\
                    # env-dep:UNSET_ONE\n";
        let d = parse_dep_info(text);
        assert_eq!(
            d.files,
            vec!["/reg/itoa/src/udiv128.rs", "src/a b.rs", "src/lib.rs"]
        );
        assert_eq!(
            d.env_deps,
            vec![
                ("CARGO_PKG_NAME".to_string(), Some("foo".to_string())),
                ("SOME_VAR".to_string(), Some("a\nb".to_string())),
                ("UNSET_ONE".to_string(), None),
            ]
        );
    }

    #[test]
    fn cargo_settings_are_not_keyed() {
        for n in [
            "CARGO_TERM_COLOR",
            "CARGO_BUILD_JOBS",
            "CARGO_INCREMENTAL",
            "CARGO_MAKEFLAGS",
            "CARGO_NET_OFFLINE",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET_DIR",
        ] {
            assert!(cargo_own_setting(n), "{n}");
        }
        for n in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_HOME",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_PROFILE_RELEASE_LTO",
            "CARGO_TARGET_TMPDIR",
            "CARGO",
        ] {
            assert!(!cargo_own_setting(n), "{n}");
        }
    }

    #[test]
    fn normalizer_roots() {
        let env = |k: &str| -> Option<OsString> {
            match k {
                "HOME" => Some("/home/u".into()),
                _ => None,
            }
        };
        let n = Normalizer::new(
            Path::new("/home/u/proj"),
            Some(Path::new("/home/u/proj/target/release/deps")),
            None,
            &env,
        );
        assert_eq!(n.path("/home/u/proj/src/lib.rs"), "$CWD/src/lib.rs");
        assert_eq!(
            n.path("/home/u/proj/target/release/deps/x.rlib"),
            "$OUT/x.rlib"
        );
        assert_eq!(
            n.path("/home/u/proj/target/release/build/a/out"),
            "$PROFILE/build/a/out"
        );
        assert_eq!(n.path("/home/u/proj/target/tmp"), "$TARGET/tmp");
        assert_eq!(
            n.path("/home/u/.cargo/registry/src/x"),
            "$CARGO_HOME/registry/src/x"
        );
        assert_eq!(n.path("/home/u/projection"), "/home/u/projection");
        assert_eq!(n.text("-Wl,-rpath,/home/u/proj/lib"), "-Wl,-rpath,$CWD/lib");
        // Another checkout, another user: the same normalised forms.
        let env2 = |k: &str| -> Option<OsString> {
            match k {
                "CARGO_HOME" => Some("/ci/cargo".into()),
                _ => None,
            }
        };
        let m = Normalizer::new(
            Path::new("/ci/w"),
            Some(Path::new("/ci/w/target/release/deps")),
            None,
            &env2,
        );
        assert_eq!(
            m.path("/ci/w/src/lib.rs"),
            n.path("/home/u/proj/src/lib.rs")
        );
        assert_eq!(
            m.path("/ci/cargo/registry/src/x"),
            "$CARGO_HOME/registry/src/x"
        );
    }
}
