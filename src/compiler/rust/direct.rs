//! Direct mode for rustc: a warm hit without rustc's dep-info pass.
//!
//! The dep-info pass (`rustc --emit=dep-info`) expands macros and runs proc-macros to learn
//! which files and environment variables a crate reads; for small crates it costs about as much
//! as compiling them. A *manifest* remembers what earlier passes found.
//!
//! The manifest key covers everything known before the pass
//! ([`crate::compiler::rust::key::KeyParts::pre_dep_info`]): the rustc identity, the target, the
//! normalised arguments, the crate root's path and contents, the `--extern` crates' contents,
//! the `CARGO_*` environment (normalised), native libraries, the linker and (with debug info)
//! the working directory. Each entry records, for one result key:
//!
//! - every env-dep the pass reported, by name, with its value (or its absence): normalised by
//!   the key's [`Normalizer`] (`OUT_DIR` as `$TARGET/…`, as the full key keys it) and compared
//!   with the requester's value normalised the same way, unless the result is path-dependent
//!   (its outputs contain such a value verbatim), whose values are stored and compared exactly;
//! - every source file the pass listed: path, SHA-256, size, mtime and ctime. A file whose stat
//!   matches and which was already old when recorded is trusted without reading it; otherwise
//!   it is re-hashed;
//! - probes: `foo/mod.rs` for each `foo.rs` (and the reverse), whose existence decides how
//!   rustc resolves `mod foo;` (both existing is an error).
//!
//! A lookup trusts an entry only if every env value, file and probe matches; anything else falls
//! back to the dep-info pass, which then records a new entry. Nothing is recorded when a file
//! was modified after the invocation began (it may not be what rustc read), or when an env-dep
//! value rustc reported differs from the environment distc sees.
//!
//! File paths are stored relative to the working directory when rustc reported them so,
//! relative to the package directory (`CARGO_MANIFEST_DIR`, else the crate root's directory)
//! when they lie under it (crates.io sources), normalised when under a root of the
//! [`Normalizer`] (`OUT_DIR` files; re-instantiated with the requester's roots), and absolute
//! otherwise; the normalised crate
//! root and package directory are part of the manifest key, so the same manifest serves
//! another checkout or `CARGO_HOME` with the same layout.
//!
//! Manifests live in `$DISTC_DIR/manifests/r<2 hex>/<62 hex>`, bincode via
//! `distc_peer::codec`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use distc_peer::Key;
use serde::{Deserialize, Serialize};

use crate::compiler::rust::args::RustJob;
use crate::compiler::rust::key::{DepInfo, KeyContext, KeyParts, Normalizer};
use crate::key::file::{FileRecord, Window};
use crate::key::manifest;

/// 4: a manifest names its manifest key. 5: env-dep values and files under a root of the
/// [`Normalizer`] (`OUT_DIR`, the target directory, `base_dir`) stored normalised.
const MANIFEST_VERSION: u32 = 5;

type Manifest = manifest::Manifest<Entry>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    /// Env-deps: name and value (`None`: unset), normalised by the [`Normalizer`] unless
    /// `exact_env`.
    env: Vec<(String, Option<Vec<u8>>)>,
    /// The result's outputs contain a path-valued env-dep verbatim (its key is
    /// [`crate::compiler::rust::key::path_dependent_key`]): values are stored and compared
    /// exactly, so another checkout never finds it.
    exact_env: bool,
    files: Vec<FileRec>,
    /// (path, existed).
    probes: Vec<(StoredPath, bool)>,
    result: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
enum Base {
    /// Relative to the working directory.
    Cwd,
    /// Relative to the package directory.
    Package,
    /// Absolute, verbatim.
    Absolute,
    /// Normalised by the [`Normalizer`] (`$TARGET/debug/build/…`), re-instantiated with the
    /// requester's roots.
    Root,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoredPath {
    base: Base,
    path: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct FileRec {
    path: StoredPath,
    file: FileRecord,
}

/// The direct-mode identity of one rustc invocation.
pub struct RustDirect {
    pub manifest_key: Key,
    /// `$DISTC_DIR`, where a manifest found corrupt is counted.
    distc_dir: PathBuf,
    path: PathBuf,
    cwd: PathBuf,
    /// The package directory (absolute).
    package: PathBuf,
    /// The roots env-dep values and absolute file paths are stored relative to.
    norm: Normalizer,
}

impl RustDirect {
    /// `None` when the crate root cannot be read (the dep-info path then says why).
    pub fn new(ctx: &KeyContext<'_>, job: &RustJob, parts: &KeyParts) -> Option<RustDirect> {
        let root = ctx.cwd.join(&job.input);
        let root_digest = crate::key::file::digest(&root).ok()?;
        let mut inputs = parts.pre_dep_info(ctx, job);
        inputs.push("manifest", format!("rust {MANIFEST_VERSION}").as_bytes());
        inputs.push_digest("crate-root-content", root_digest);
        let manifest_key = inputs.key();
        let package = match (ctx.env)("CARGO_MANIFEST_DIR").map(PathBuf::from) {
            Some(p) if p.is_absolute() && root.starts_with(&p) => p,
            _ => root.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let hex = manifest_key.to_hex();
        let path = ctx
            .distc_dir
            .join("manifests")
            .join(format!("r{}", &hex[..2]))
            .join(&hex[2..]);
        Some(RustDirect {
            manifest_key,
            distc_dir: ctx.distc_dir.to_path_buf(),
            path,
            cwd: ctx.cwd.to_path_buf(),
            package,
            norm: parts.norm.clone(),
        })
    }

    /// This key's manifest; one that is corrupt is discarded (and counted).
    fn read(&self) -> Option<Manifest> {
        Manifest::read(&self.path, MANIFEST_VERSION, &self.manifest_key).unwrap_or_else(|why| {
            crate::cache::discard_corrupt(&self.distc_dir, &self.path, &why);
            None
        })
    }

    fn resolve(&self, p: &StoredPath) -> PathBuf {
        let rel = Path::new(OsStr::from_bytes(&p.path));
        match p.base {
            Base::Cwd => self.cwd.join(rel),
            Base::Package => self.package.join(rel),
            Base::Absolute => rel.to_path_buf(),
            Base::Root => match std::str::from_utf8(&p.path)
                .ok()
                .and_then(|t| self.norm.instantiate(t))
            {
                Some(abs) => PathBuf::from(abs),
                // A root this invocation does not have: nothing there can match.
                None => PathBuf::new(),
            },
        }
    }

    /// An env-dep value as stored: normalised unless `exact`.
    fn store_value(&self, value: &[u8], exact: bool) -> Vec<u8> {
        match std::str::from_utf8(value) {
            Ok(v) if !exact => self.norm.path(v).into_bytes(),
            _ => value.to_vec(),
        }
    }

    /// How `file` (as rustc's dep-info wrote it) is stored.
    fn store_path(&self, file: &str) -> StoredPath {
        let p = Path::new(file);
        if p.is_relative() {
            return StoredPath {
                base: Base::Cwd,
                path: file.as_bytes().to_vec(),
            };
        }
        if !self.package.as_os_str().is_empty()
            && let Ok(rel) = p.strip_prefix(&self.package)
            && !rel.as_os_str().is_empty()
        {
            return StoredPath {
                base: Base::Package,
                path: rel.as_os_str().as_bytes().to_vec(),
            };
        }
        let normalised = self.norm.path(file);
        if normalised != file {
            return StoredPath {
                base: Base::Root,
                path: normalised.into_bytes(),
            };
        }
        StoredPath {
            base: Base::Absolute,
            path: file.as_bytes().to_vec(),
        }
    }

    /// A manifest exists but cannot be read back (corrupt, or another format): depend mode
    /// would then compile on every build, so the caller computes the key first instead.
    pub fn unreadable(&self) -> bool {
        self.path.exists() && self.read().is_none()
    }

    /// The result key of the first entry that matches the environment and files now.
    /// `env` reads a variable (a parameter so tests control it).
    pub fn lookup(&self, env: &dyn Fn(&str) -> Option<OsString>) -> Option<Key> {
        let Some(m) = self.read() else {
            tracing::debug!("no manifest {}", self.manifest_key);
            return None;
        };
        m.find(|e| self.matches(e, env)).map(|e| Key(e.result))
    }

    fn matches(&self, e: &Entry, env: &dyn Fn(&str) -> Option<OsString>) -> bool {
        for (name, value) in &e.env {
            let now = env(name).map(|v| self.store_value(v.as_bytes(), e.exact_env));
            if now != *value {
                tracing::debug!("manifest entry: env-dep {name} differs");
                return false;
            }
        }
        for f in &e.files {
            let path = self.resolve(&f.path);
            if !f.file.matches(&path) {
                tracing::debug!("manifest entry: {} changed or is gone", path.display());
                return false;
            }
        }
        e.probes.iter().all(|(p, existed)| {
            let same = self.resolve(p).exists() == *existed;
            if !same {
                tracing::debug!(
                    "manifest entry: {} appeared or went",
                    self.resolve(p).display()
                );
            }
            same
        })
    }

    /// Records that `dep` (with `digests`, from [`KeyParts::sources`]) gave `result`. Best
    /// effort: nothing is recorded when a file changed after `started`, cannot be read, or an
    /// env-dep value differs from what `env` says. `exact_env`: `result` is path-dependent
    /// (its outputs contain a path-valued env-dep), so env-deps are matched exactly.
    pub fn record(
        &self,
        dep: &DepInfo,
        digests: &[[u8; 32]],
        result: &Key,
        started: SystemTime,
        env: &dyn Fn(&str) -> Option<OsString>,
        exact_env: bool,
    ) {
        let Some(entry) = self.make_entry(dep, digests, result, started, env, exact_env) else {
            tracing::debug!("no direct-mode entry recorded for {}", self.manifest_key);
            return;
        };
        let mut m = self
            .read()
            .unwrap_or_else(|| Manifest::new(MANIFEST_VERSION, self.manifest_key));
        m.upsert(entry, |a, b| a == b);
        if m.write(&self.path).is_none() {
            tracing::debug!("manifest {} cannot be written", self.manifest_key);
        }
    }

    fn make_entry(
        &self,
        dep: &DepInfo,
        digests: &[[u8; 32]],
        result: &Key,
        started: SystemTime,
        env: &dyn Fn(&str) -> Option<OsString>,
        exact_env: bool,
    ) -> Option<Entry> {
        if digests.len() != dep.files.len() {
            return None;
        }
        let mut vars = Vec::with_capacity(dep.env_deps.len());
        for (name, reported) in &dep.env_deps {
            let now = env(name).map(|v| v.as_bytes().to_vec());
            // rustc saw another value (`--env-set`, a lossy escape): not ours to predict.
            if now.as_deref() != reported.as_deref().map(str::as_bytes) {
                return None;
            }
            vars.push((name.clone(), now.map(|v| self.store_value(&v, exact_env))));
        }
        let window = Window::since(started);
        let mut files = Vec::with_capacity(dep.files.len());
        let mut probes: Vec<(StoredPath, bool)> = Vec::new();
        for (f, digest) in dep.files.iter().zip(digests) {
            let abs = self.cwd.join(f);
            let md = fs::metadata(&abs).ok()?;
            files.push(FileRec {
                path: self.store_path(f),
                // None when modified while we ran: what we hashed may not be what rustc read.
                file: FileRecord::new(*digest, &md, &window)?,
            });
            if let Some(alt) = module_alternative(f) {
                let sp = self.store_path(&alt);
                if !probes.iter().any(|(p, _)| *p == sp) {
                    let exists = self.resolve(&sp).exists();
                    probes.push((sp, exists));
                }
            }
        }
        Some(Entry {
            env: vars,
            exact_env,
            files,
            probes,
            result: result.0,
        })
    }
}

/// The other file `mod name;` could resolve to: `dir/name.rs` <-> `dir/name/mod.rs`.
fn module_alternative(file: &str) -> Option<String> {
    let stem = file.strip_suffix(".rs")?;
    if let Some(dir) = stem.strip_suffix("/mod") {
        if dir.is_empty() || dir.ends_with('/') {
            return None;
        }
        return Some(format!("{dir}.rs"));
    }
    if stem.is_empty() || stem.ends_with('/') {
        return None;
    }
    Some(format!("{stem}/mod.rs"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn module_alternatives() {
        assert_eq!(
            module_alternative("src/foo.rs").as_deref(),
            Some("src/foo/mod.rs")
        );
        assert_eq!(
            module_alternative("src/foo/mod.rs").as_deref(),
            Some("src/foo.rs")
        );
        assert_eq!(module_alternative("mod.rs").as_deref(), Some("mod/mod.rs"));
        assert_eq!(module_alternative("data.txt"), None);
    }

    fn direct(cwd: &Path, package: &Path) -> RustDirect {
        RustDirect {
            manifest_key: Key([7; 32]),
            distc_dir: cwd.join("cache"),
            path: cwd.join("manifest"),
            cwd: cwd.to_path_buf(),
            package: package.to_path_buf(),
            norm: Normalizer::new(cwd, None, None, &|_| None),
        }
    }

    #[test]
    fn record_then_lookup_and_changes_miss() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cwd = tmp.path();
        fs::create_dir_all(cwd.join("src")).expect("mkdir");
        fs::write(cwd.join("src/lib.rs"), "mod a;\n").expect("write");
        fs::write(cwd.join("src/a.rs"), "pub const X: u8 = 1;\n").expect("write");
        let d = direct(cwd, &cwd.join("src"));
        let dep = DepInfo {
            files: vec!["src/a.rs".into(), "src/lib.rs".into()],
            env_deps: vec![("V".into(), Some("1".into())), ("U".into(), None)],
        };
        let digests: Vec<[u8; 32]> = dep
            .files
            .iter()
            .map(|f| crate::key::file::digest(&cwd.join(f)).expect("digest"))
            .collect();
        let env1 = |k: &str| (k == "V").then(|| OsString::from("1"));
        let later = SystemTime::now() + Duration::from_secs(5);
        d.record(&dep, &digests, &Key([1; 32]), later, &env1, false);
        assert_eq!(d.lookup(&env1), Some(Key([1; 32])));
        // An env-dep changes, or an unset one appears.
        assert_eq!(d.lookup(&|k| (k == "V").then(|| OsString::from("2"))), None);
        assert_eq!(
            d.lookup(&|k| Some(OsString::from(if k == "V" { "1" } else { "x" }))),
            None
        );
        // A same-size edit.
        fs::write(cwd.join("src/a.rs"), "pub const X: u8 = 2;\n").expect("write");
        assert_eq!(d.lookup(&env1), None);
        fs::write(cwd.join("src/a.rs"), "pub const X: u8 = 1;\n").expect("write");
        assert_eq!(d.lookup(&env1), Some(Key([1; 32])));
        // The other module file appearing changes how `mod a;` resolves.
        fs::create_dir_all(cwd.join("src/a")).expect("mkdir");
        fs::write(cwd.join("src/a/mod.rs"), "").expect("write");
        assert_eq!(d.lookup(&env1), None);
        fs::remove_file(cwd.join("src/a/mod.rs")).expect("rm");
        assert_eq!(d.lookup(&env1), Some(Key([1; 32])));
        // The same manifest file read for another manifest key is refused and removed.
        let other = RustDirect {
            manifest_key: Key([8; 32]),
            ..direct(cwd, &cwd.join("src"))
        };
        assert_eq!(other.lookup(&env1), None);
        assert!(
            !d.path.exists(),
            "a manifest under another key's name was kept"
        );
    }

    #[test]
    fn manifests_of_many_files_read_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cwd = tmp.path();
        for n in [1usize, 20, 34, 40, 60, 500, 700] {
            let files: Vec<String> = (0..n).map(|i| format!("src/m{i}.rs")).collect();
            for f in &files {
                write_file(&cwd.join(f), f);
            }
            let d = direct(cwd, cwd);
            let _ = fs::remove_file(&d.path);
            let digests: Vec<[u8; 32]> = files
                .iter()
                .map(|f| crate::key::file::digest(&cwd.join(f)).expect("digest"))
                .collect();
            let dep = DepInfo {
                files,
                env_deps: vec![("CARGO_PKG_NAME".into(), Some("x".into()))],
            };
            let env = |k: &str| (k == "CARGO_PKG_NAME").then(|| OsString::from("x"));
            let later = SystemTime::now() + Duration::from_secs(5);
            d.record(&dep, &digests, &Key([9; 32]), later, &env, false);
            assert_eq!(d.lookup(&env), Some(Key([9; 32])), "{n} files");
        }
    }

    fn write_file(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    #[test]
    fn files_newer_than_the_start_are_not_recorded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cwd = tmp.path();
        fs::write(cwd.join("lib.rs"), "").expect("write");
        let d = direct(cwd, cwd);
        let dep = DepInfo {
            files: vec!["lib.rs".into()],
            env_deps: vec![],
        };
        let digests = vec![crate::key::file::digest(&cwd.join("lib.rs")).expect("digest")];
        let earlier = SystemTime::now() - Duration::from_secs(60);
        d.record(&dep, &digests, &Key([1; 32]), earlier, &|_| None, false);
        assert_eq!(d.lookup(&|_| None), None);
        // An env-dep value rustc saw that the environment does not have.
        let dep2 = DepInfo {
            files: vec![],
            env_deps: vec![("V".into(), Some("1".into()))],
        };
        d.record(
            &dep2,
            &[],
            &Key([2; 32]),
            SystemTime::now(),
            &|_| None,
            false,
        );
        assert_eq!(d.lookup(&|_| None), None);
    }

    #[test]
    fn package_relative_paths_follow_the_package() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = tmp.path().join("home-a/registry/foo-1.0");
        let b = tmp.path().join("home-b/registry/foo-1.0");
        for p in [&a, &b] {
            fs::create_dir_all(p.join("src")).expect("mkdir");
            fs::write(p.join("src/lib.rs"), "x").expect("write");
            fs::write(p.join("README.md"), "readme").expect("write");
        }
        let cwd = tmp.path().join("ws");
        fs::create_dir_all(&cwd).expect("mkdir");
        let da = direct(&cwd, &a);
        let files: Vec<String> = ["src/lib.rs", "README.md"]
            .iter()
            .map(|f| a.join(f).to_string_lossy().into_owned())
            .collect();
        let dep = DepInfo {
            files,
            env_deps: vec![],
        };
        let digests: Vec<[u8; 32]> = dep
            .files
            .iter()
            .map(|f| crate::key::file::digest(Path::new(f)).expect("digest"))
            .collect();
        let mut m = direct(&cwd, &b);
        m.path = da.path.clone();
        da.record(
            &dep,
            &digests,
            &Key([3; 32]),
            SystemTime::now() + Duration::from_secs(5),
            &|_| None,
            false,
        );
        assert_eq!(m.lookup(&|_| None), Some(Key([3; 32])));
        fs::write(b.join("README.md"), "README").expect("write");
        assert_eq!(m.lookup(&|_| None), None);
    }

    /// An `OUT_DIR` value and a file under it are stored normalised: another target directory
    /// with the same content is served; a changed file there, or a path-dependent result,
    /// is not.
    #[test]
    fn out_dir_values_and_files_follow_the_target_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cwd = tmp.path().join("ws");
        let make = |target: &Path| {
            let out = target.join("debug/build/gen-1/out");
            fs::create_dir_all(&out).expect("mkdir");
            fs::write(out.join("gen.rs"), "pub const G: u8 = 7;\n").expect("write");
            let env_target = target.as_os_str().to_owned();
            let mut d = direct(&cwd, &cwd);
            d.norm = Normalizer::new(&cwd, None, None, &|k| {
                (k == "CARGO_TARGET_DIR").then(|| env_target.clone())
            });
            let file = out.join("gen.rs").to_string_lossy().into_owned();
            let dep = DepInfo {
                files: vec![file.clone()],
                env_deps: vec![("OUT_DIR".into(), Some(out.to_string_lossy().into_owned()))],
            };
            (d, dep, out)
        };
        fs::create_dir_all(&cwd).expect("mkdir");
        let (a, dep_a, _) = make(&tmp.path().join("t1"));
        let (mut b, _, out_b) = make(&tmp.path().join("t2"));
        b.path = a.path.clone();
        let digests = [crate::key::file::digest(Path::new(&dep_a.files[0])).expect("digest")];
        let env_a = |k: &str| {
            (k == "OUT_DIR")
                .then(|| OsString::from(&dep_a.env_deps[0].1.clone().unwrap_or_default()))
        };
        let env_b = |k: &str| (k == "OUT_DIR").then(|| out_b.as_os_str().to_owned());
        let later = SystemTime::now() + Duration::from_secs(5);
        a.record(&dep_a, &digests, &Key([1; 32]), later, &env_a, false);
        assert_eq!(a.lookup(&env_a), Some(Key([1; 32])));
        assert_eq!(
            b.lookup(&env_b),
            Some(Key([1; 32])),
            "another target directory"
        );
        fs::write(out_b.join("gen.rs"), "pub const G: u8 = 8;\n").expect("write");
        assert_eq!(b.lookup(&env_b), None, "a changed OUT_DIR file");
        fs::write(out_b.join("gen.rs"), "pub const G: u8 = 7;\n").expect("write");
        fs::remove_file(&a.path).expect("rm manifest");
        a.record(&dep_a, &digests, &Key([2; 32]), later, &env_a, true);
        assert_eq!(a.lookup(&env_a), Some(Key([2; 32])));
        assert_eq!(b.lookup(&env_b), None, "a path-dependent result");
    }
}
