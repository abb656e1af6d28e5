//! Direct mode and depend mode: keys without running the preprocessor.
//!
//! A *manifest* per (compiler, args, environment, source path + contents) lists, for each
//! result seen, every header the compile read (path, digest, stat) and a set of *probes*: paths
//! where a newly created header would shadow one of them (same name in another `-I`/`-iquote`/
//! `-isystem` directory or the source's directory) with whether each existed. A lookup trusts an
//! entry only if every header still has its digest (re-hashed unless its stat matches and it was
//! old enough when recorded to be trusted) and every probe gives the same answer; otherwise the
//! wrapper falls back to the preprocessor. Sources or headers that mention `__TIME__`,
//! `__DATE__` or `__TIMESTAMP__` never get a manifest, and headers modified after the compile
//! began are not recorded (they may not be what the compiler read).
//!
//! Manifests live in `$DISTC_DIR/manifests/<2 hex>/<62 hex>`, bincode via `distc_peer::codec`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distc_peer::Key;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compiler::CompileJob;
use crate::fingerprint::{self, Context, Fingerprint, Inputs};

const MANIFEST_VERSION: u32 = 1;
/// Entries kept per manifest (newest first); old header states fall off.
const MAX_ENTRIES: usize = 16;
const MAX_MANIFEST: usize = 64 << 20;
/// A header's stat is trusted only if it was this much older than the recording compile:
/// a later same-size edit then necessarily changes mtime, even on coarse-timestamp filesystems.
const TRUST_AGE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    headers: Vec<Header>,
    /// (path, existed): a change in existence means include resolution may differ.
    probes: Vec<(Vec<u8>, bool)>,
    result: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Header {
    path: Vec<u8>,
    digest: [u8; 32],
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Stat equality alone proves the content unchanged.
    trusted: bool,
}

/// The direct-mode identity of one compile, computed from the source without preprocessing.
pub struct DirectKey {
    pub manifest_key: Key,
    common: Inputs,
    norm_source: OsString,
    source_digest: [u8; 32],
}

/// Whether depend mode can learn this job's headers from a `-MD` file: either we add our own,
/// or the user's is a full `-MD` (`-MMD` leaves out system headers).
pub fn depend_eligible(job: &CompileJob) -> bool {
    !job.key_args.iter().any(|a| a == "-MMD")
}

impl DirectKey {
    /// `None` when direct mode is not safe for this job.
    pub fn new(ctx: &Context, job: &CompileJob, common: &Inputs) -> Option<DirectKey> {
        if job.direct_blocker.is_some() || !job.language.is_preprocessed_by_compiler() {
            return None;
        }
        let source = fs::read(&job.source).ok()?;
        if fingerprint::mentions_time_macros(&source) {
            return None;
        }
        let source_digest: [u8; 32] = Sha256::digest(&source).into();
        let norm_source = fingerprint::normalised_source(ctx, job);
        let mut inputs = common.clone();
        inputs.push("manifest", &MANIFEST_VERSION.to_le_bytes());
        inputs.push("source-path", norm_source.as_bytes());
        inputs.push_digest("source", source_digest);
        Some(DirectKey {
            manifest_key: inputs.key(),
            common: common.clone(),
            norm_source,
            source_digest,
        })
    }

    fn path(&self, ctx: &Context) -> PathBuf {
        let hex = self.manifest_key.to_hex();
        ctx.distc_dir
            .join("manifests")
            .join(&hex[..2])
            .join(&hex[2..])
    }

    fn read(&self, ctx: &Context) -> Option<Manifest> {
        let bytes = fs::read(self.path(ctx)).ok()?;
        let m: Manifest = distc_peer::codec::decode(&bytes, MAX_MANIFEST).ok()?;
        (m.version == MANIFEST_VERSION).then_some(m)
    }

    /// The result key whose recorded header state matches the files now, if any.
    pub fn lookup(&self, ctx: &Context, _job: &CompileJob) -> Option<Key> {
        let m = self.read(ctx)?;
        m.entries
            .iter()
            .find(|e| entry_matches(&ctx.cwd, e))
            .map(|e| Key(e.result))
    }

    /// Adds an entry mapping the current state of `headers` to `result`. Best effort: nothing
    /// is recorded when a header cannot be read, mentions a time macro or is too new.
    pub fn record(
        &self,
        ctx: &Context,
        job: &CompileJob,
        headers: &[PathBuf],
        result: &Key,
        started: SystemTime,
    ) {
        let Some(entry) = make_entry(ctx, job, &self.norm_source, headers, result, started) else {
            return;
        };
        let mut m = self.read(ctx).unwrap_or(Manifest {
            version: MANIFEST_VERSION,
            entries: Vec::new(),
        });
        m.entries.retain(|e| e != &entry);
        m.entries.insert(0, entry);
        m.entries.truncate(MAX_ENTRIES);
        let Ok(bytes) = distc_peer::codec::encode(&m) else {
            return;
        };
        let path = self.path(ctx);
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let _ = crate::bundle::write_atomic(&path, &bytes);
    }

    /// Depend-mode fingerprint: common inputs + source + every header listed in `dep_file`.
    /// `None` when a header cannot be read or mentions a time macro.
    pub fn depend_fingerprint(
        &self,
        ctx: &Context,
        job: &CompileJob,
        dep_file: &Path,
    ) -> Option<Fingerprint> {
        let text = fs::read(dep_file).ok()?;
        let deps = parse_depfile(&text);
        let mut headers = Vec::new();
        let mut h = Sha256::new();
        for d in deps {
            if d == job.source {
                continue;
            }
            let content = fs::read(&d).ok()?;
            if fingerprint::mentions_time_macros(&content) {
                return None;
            }
            let norm = fingerprint::rewrite_arg(d.as_os_str(), ctx.base_dir.as_deref(), &ctx.cwd);
            h.update((norm.len() as u64).to_le_bytes());
            h.update(norm.as_bytes());
            h.update(Sha256::digest(&content));
            headers.push(d);
        }
        let mut inputs = self.common.clone();
        inputs.push("source-path", self.norm_source.as_bytes());
        inputs.push_digest("source", self.source_digest);
        inputs.push_digest("headers", h.finalize().into());
        Some(Fingerprint {
            key: inputs.key(),
            inputs,
            headers,
        })
    }
}

fn stat_tuple(md: &fs::Metadata) -> ((i64, i64), (i64, i64)) {
    ((md.mtime(), md.mtime_nsec()), (md.ctime(), md.ctime_nsec()))
}

fn entry_matches(cwd: &Path, e: &Entry) -> bool {
    let resolve = |p: &[u8]| cwd.join(OsStr::from_bytes(p));
    for h in &e.headers {
        let path = resolve(&h.path);
        let Ok(md) = fs::metadata(&path) else {
            return false;
        };
        if md.len() != h.size {
            return false;
        }
        let (m, c) = stat_tuple(&md);
        if h.trusted && m == h.mtime && c == h.ctime {
            continue;
        }
        match fs::read(&path) {
            Ok(bytes) if <[u8; 32]>::from(Sha256::digest(&bytes)) == h.digest => {}
            _ => return false,
        }
    }
    e.probes
        .iter()
        .all(|(p, existed)| resolve(p).exists() == *existed)
}

fn secs(t: SystemTime) -> (i64, i64) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
        Err(_) => (0, 0),
    }
}

fn make_entry(
    ctx: &Context,
    job: &CompileJob,
    norm_source: &OsStr,
    headers: &[PathBuf],
    result: &Key,
    started: SystemTime,
) -> Option<Entry> {
    let norm = |p: &Path| -> Vec<u8> {
        fingerprint::rewrite_arg(p.as_os_str(), ctx.base_dir.as_deref(), &ctx.cwd).into_vec()
    };
    let start = secs(started);
    let trust_before = secs(started.checked_sub(TRUST_AGE).unwrap_or(UNIX_EPOCH));
    let mut out = Vec::with_capacity(headers.len());
    for p in headers {
        let md = fs::metadata(p).ok()?;
        let (m, c) = stat_tuple(&md);
        if m >= start || c >= start {
            // Modified while we compiled: what we hash may not be what the compiler read.
            return None;
        }
        let bytes = fs::read(p).ok()?;
        if bytes.len() as u64 != md.len() || fingerprint::mentions_time_macros(&bytes) {
            return None;
        }
        out.push(Header {
            path: norm(p),
            digest: Sha256::digest(&bytes).into(),
            size: md.len(),
            mtime: m,
            ctime: c,
            trusted: m < trust_before && c < trust_before,
        });
    }
    // Candidate include directories: the source's own, then the user's search dirs.
    let src_dir = Path::new(norm_source)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![src_dir];
    for d in &job.search_dirs {
        dirs.push(PathBuf::from(OsString::from_vec(norm(d))));
    }
    let mut probes: Vec<(Vec<u8>, bool)> = Vec::new();
    for h in &out {
        let hp = Path::new(OsStr::from_bytes(&h.path));
        // The directory the header was found in: the longest candidate that prefixes it.
        let Some((found_in, rel)) = dirs
            .iter()
            .filter_map(|d| {
                if d.as_os_str().is_empty() {
                    (hp.is_relative()).then_some((d, hp))
                } else {
                    hp.strip_prefix(d).ok().map(|r| (d, r))
                }
            })
            .max_by_key(|(d, _)| d.as_os_str().len())
        else {
            continue; // a system header: resolution there is the compiler's own business
        };
        for d in &dirs {
            if d == found_in {
                continue;
            }
            let probe = d.join(rel);
            let bytes = probe.as_os_str().as_bytes().to_vec();
            if !probes.iter().any(|(p, _)| *p == bytes) {
                let exists = ctx.cwd.join(&probe).exists();
                probes.push((bytes, exists));
            }
        }
    }
    Some(Entry {
        headers: out,
        probes,
        result: result.0,
    })
}

/// The prerequisites of the first rule of a make dependency file.
pub fn parse_depfile(text: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    // Skip the target list: up to the first ':' followed by whitespace or end.
    let mut i = 0;
    while i < text.len() {
        if text[i] == b':' && text.get(i + 1).is_none_or(|c| c.is_ascii_whitespace()) {
            i += 1;
            break;
        }
        i += 1;
    }
    let mut cur: Vec<u8> = Vec::new();
    while i < text.len() {
        let c = text[i];
        match c {
            b'\\' if text.get(i + 1) == Some(&b'\n') => i += 1,
            b'\\' if text.get(i + 1) == Some(&b'\r') => i += 2,
            b'\\' if matches!(text.get(i + 1), Some(b' ' | b'#' | b'\\')) => {
                cur.push(text[i + 1]);
                i += 1;
            }
            b'$' if text.get(i + 1) == Some(&b'$') => {
                cur.push(b'$');
                i += 1;
            }
            b' ' | b'\t' | b'\r' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(OsString::from_vec(std::mem::take(&mut cur))));
                }
            }
            b'\n' => break,
            c => cur.push(c),
        }
        i += 1;
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(OsString::from_vec(cur)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depfile_parsing() {
        let d = b"obj/a.o obj/b.o: src/a.c inc/a\\ b.h \\\n /usr/include/stdio.h\n\ninc/a\\ b.h:\n";
        assert_eq!(
            parse_depfile(d),
            [
                PathBuf::from("src/a.c"),
                PathBuf::from("inc/a b.h"),
                PathBuf::from("/usr/include/stdio.h")
            ]
        );
        assert!(parse_depfile(b"a.o:\n").is_empty());
    }
}
