//! The identity of a C/C++ toolchain as remote compiles match it: the driver's name and
//! content digest (what the cache key already names) plus the digests of the programs it
//! runs for a `-c` compile (`cc1`, `cc1plus`, `as`, as `-print-prog-name` finds them), so
//! two machines with the same `gcc` driver but another assembler never exchange compiles.
//!
//! Both sides compute it the same way: the wrapper for the compiler it was asked to run (only
//! on a miss that may be offloaded, memoised by the driver's stat), the serving peer for every
//! compiler it finds on its own `PATH` ([`discover`]). A server runs only a compiler from its
//! own list whose identity equals the one asked for; nothing received is ever executed.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A toolchain identity: SHA-256 over the version tag, the driver's name, and the digests of
/// the driver and of each program it runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ToolchainId(pub [u8; 32]);

impl std::fmt::Debug for ToolchainId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &hex::encode(self.0)[..12])
    }
}

impl std::fmt::Display for ToolchainId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &hex::encode(self.0)[..12])
    }
}

/// Bump when what goes into an identity changes.
const ID_VERSION: &[u8] = b"distc-toolchain-1";

/// The programs a `-c` compile runs besides the driver.
const PROGRAMS: [&str; 3] = ["cc1", "cc1plus", "as"];

/// Most compilers a peer lists (and advertises).
pub const MAX_TOOLCHAINS: usize = 16;

/// Whether `name` looks like a C/C++ compiler driver: `gcc`, `g++`, `cc`, `c++`, `clang`,
/// `clang++`, with an optional target prefix (`x86_64-linux-gnu-`) and version suffix (`-12`).
pub fn is_compiler_name(name: &str) -> bool {
    let base = name.rsplit_once('-').map_or(name, |(head, tail)| {
        if !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit() || c == '.') {
            head
        } else {
            name
        }
    });
    let driver = base.rsplit('-').next().unwrap_or(base);
    // A cross prefix (`x86_64-linux-gnu-`) names something: `-gcc` is no compiler.
    let prefix = base.len() - driver.len();
    (prefix == 0 || prefix >= 2)
        && matches!(driver, "gcc" | "g++" | "cc" | "c++" | "clang" | "clang++")
}

/// A file's size, mtime, ctime and inode: a digest stays valid while they do.
fn stamp(md: &fs::Metadata) -> String {
    format!(
        "{} {} {} {} {}",
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ino()
    )
}

/// SHA-256 of a file, memoised in this process by canonical path and [`stamp`]: every driver
/// of one installation runs the same `cc1`, `cc1plus` and `as`, hashed once.
fn file_digest(path: &Path) -> io::Result<[u8; 32]> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Memo = Mutex<HashMap<(PathBuf, String), [u8; 32]>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let real = fs::canonicalize(path)?;
    let key = (real.clone(), stamp(&fs::metadata(&real)?));
    let memo = MEMO.get_or_init(Mutex::default);
    if let Some(d) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(*d);
    }
    let d: [u8; 32] = Sha256::digest(fs::read(&real)?).into();
    memo.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, d);
    Ok(d)
}

/// The first executable called `name` in the directories of `path_var`.
fn which(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Where the driver at `driver` finds `program`: its `-print-prog-name` answer when that is
/// a file, else the program of that name on `PATH`, else nothing.
fn program_path(driver: &Path, program: &str) -> Option<PathBuf> {
    let out = Command::new(driver)
        .arg(format!("-print-prog-name={program}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = PathBuf::from(&text);
    if p.is_absolute() {
        return p.is_file().then_some(p);
    }
    which(&text, &std::env::var_os("PATH").unwrap_or_default())
}

/// Computes the identity of the driver `name` at `driver` (symlinks are followed for the
/// digests; the name is what it runs as, since `clang++` and `clang` differ).
pub fn compute(name: &str, driver: &Path) -> io::Result<ToolchainId> {
    let real = fs::canonicalize(driver)?;
    let mut h = Sha256::new();
    h.update(ID_VERSION);
    h.update((name.len() as u32).to_le_bytes());
    h.update(name.as_bytes());
    h.update(file_digest(&real)?);
    for program in PROGRAMS {
        h.update(program.as_bytes());
        match program_path(&real, program) {
            Some(p) => {
                h.update([1]);
                h.update(file_digest(&p)?);
            }
            None => h.update([0]),
        }
    }
    Ok(ToolchainId(h.finalize().into()))
}

/// [`compute`], memoised under `$DISTC_DIR/compilers/toolchain-…` by the driver's path and
/// stat (size, mtime, ctime, inode): the programs are asked for once per installation.
pub fn identify(distc_dir: &Path, name: &str, driver: &Path) -> io::Result<ToolchainId> {
    let stamp = stamp(&fs::metadata(driver)?);
    let mut tag = Sha256::new();
    tag.update(driver.as_os_str().as_bytes());
    tag.update([0]);
    tag.update(name.as_bytes());
    let memo = distc_dir
        .join("compilers")
        .join(format!("toolchain-{}", hex::encode(&tag.finalize()[..16])));
    if let Ok(text) = fs::read_to_string(&memo)
        && let Some((s, d)) = text.trim_end().rsplit_once(' ')
        && s == stamp
    {
        let mut out = [0u8; 32];
        if hex::decode_to_slice(d, &mut out).is_ok() {
            return Ok(ToolchainId(out));
        }
    }
    let id = compute(name, driver)?;
    if let Some(dir) = memo.parent() {
        let _ = fs::create_dir_all(dir);
        let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
        if fs::write(&tmp, format!("{stamp} {}\n", hex::encode(id.0))).is_ok() {
            let _ = fs::rename(&tmp, &memo);
        }
    }
    Ok(id)
}

/// The compilers of this machine: every executable on `path_var` whose name
/// [`is_compiler_name`], first of each name wins (as a shell would run it), not distc itself
/// (a masquerading symlink), at most [`MAX_TOOLCHAINS`]; identity → path to run.
pub fn discover(distc_dir: &Path, path_var: &OsStr) -> BTreeMap<ToolchainId, PathBuf> {
    let me = std::env::current_exe().and_then(fs::canonicalize).ok();
    let mut seen = std::collections::HashSet::new();
    let mut out = BTreeMap::new();
    for dir in std::env::split_paths(path_var) {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| is_compiler_name(n))
            .collect();
        names.sort();
        for name in names {
            if out.len() >= MAX_TOOLCHAINS || !seen.insert(name.clone()) {
                continue;
            }
            let path = dir.join(&name);
            let Ok(real) = fs::canonicalize(&path) else {
                continue;
            };
            if Some(&real) == me.as_ref()
                || !fs::metadata(&real).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
            {
                continue;
            }
            match identify(distc_dir, &name, &path) {
                Ok(id) => {
                    out.insert(id, path);
                }
                Err(e) => tracing::debug!(path = %path.display(), "compiler not identified: {e}"),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_names() {
        for n in [
            "gcc",
            "g++",
            "cc",
            "c++",
            "clang",
            "clang++",
            "gcc-12",
            "clang-14",
            "x86_64-linux-gnu-gcc-12",
            "x86_64-linux-gnu-g++",
        ] {
            assert!(is_compiler_name(n), "{n}");
        }
        for n in [
            "gcc-ar",
            "gcc-nm-12",
            "ccache",
            "distc",
            "clang-format",
            "gcov",
            "cpp",
        ] {
            assert!(!is_compiler_name(n), "{n}");
        }
    }

    #[test]
    fn identity_is_stable_memoised_and_found_on_path() {
        let Some(gcc) = which("gcc", &std::env::var_os("PATH").unwrap_or_default()) else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let a = identify(d.path(), "gcc", &gcc).unwrap();
        let b = identify(d.path(), "gcc", &gcc).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, compute("gcc", &gcc).unwrap());
        // The name is part of it.
        assert_ne!(a, compute("cc", &gcc).unwrap());
        let found = discover(d.path(), gcc.parent().unwrap().as_os_str());
        assert_eq!(found.get(&a), Some(&gcc));
    }
}
