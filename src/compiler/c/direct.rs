//! Direct mode and depend mode: keys without running the preprocessor.
//!
//! A *manifest* per (compiler, args, environment, source path + contents) lists, for each
//! result seen, every header the compile read (path, digest, stat) and a set of *probes*: paths
//! where a newly created header would shadow one of them (same name in the source's directory,
//! any `-I`/`-iquote`/`-isystem`/`-idirafter` directory, or a system include directory searched
//! before the one it was found in; the compiler's list is learnt once per compiler, language
//! and search-list options, see [`crate::compiler::c::identity::system_include_dirs`]) with whether each
//! existed. Probes are grouped under the directory that decides them: while that directory's
//! stat is unchanged (and was old enough when recorded), none of its probes needs a stat. A lookup trusts an
//! entry only if every header still has its digest (re-hashed unless its stat matches and it was
//! old enough when recorded to be trusted) and every probe gives the same answer; otherwise the
//! wrapper falls back to the preprocessor. Sources or headers that mention `__TIME__`,
//! `__DATE__` or `__TIMESTAMP__` never get a manifest, and headers modified after the compile
//! began are not recorded (they may not be what the compiler read).
//!
//! Manifests live in `$DISTC_DIR/manifests/<2 hex>/<62 hex>`, bincode via `distc_peer::codec`.
//!
//! In a mesh a manifest is also shared: each time it is written, its bytes are stored as an
//! ordinary entry under [`DirectKey::shared_key`] (derived from the manifest key and the
//! manifest format) and announced, so the peer replicates it like a result. The manifest key is
//! as machine-independent as the result key (paths under `base_dir` are relative to the
//! working directory; system headers keep their absolute paths and must exist here). A machine
//! with no usable manifest of its own fetches the shared one and trusts none of its stats:
//! every header is re-hashed here and every probe stat'ed ([`DirectKey::merge_shared`]); the
//! entry that matches is kept with this machine's stats. A peer keeps the first copy of a key
//! it receives, so later entries of a manifest recorded elsewhere reach the mesh only through
//! owners that had none; a machine whose headers match none of the shared entries takes the
//! preprocessor path, exactly as without sharing.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use distc_peer::Key;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compiler::c::CompileJob;
use crate::compiler::c::key::{self as fingerprint, Context, Fingerprint, HeaderState, Inputs};
use crate::key::file::{FileRecord, Time, Window, times as stat_tuple};
use crate::key::manifest::{self, MAX_ENTRIES};

/// 2: probes also cover the compiler's system include directories; directory stamps.
/// 3: a manifest names its manifest key.
const MANIFEST_VERSION: u32 = 3;
/// Largest manifest accepted from the mesh (16 entries of a few thousand headers and probes
/// each fit many times over).
pub const MAX_SHARED_MANIFEST: usize = 16 << 20;
/// Headers or probes per entry accepted from the mesh: each costs a syscall or a read here.
const MAX_SHARED_ITEMS: usize = 1 << 16;

type Manifest = manifest::Manifest<Entry>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    headers: Vec<Header>,
    /// Directories whose unchanged stat proves that no entry in them was created or removed
    /// since recording: the probes they guard need no stat of their own.
    dirs: Vec<DirStamp>,
    /// A change in a probe's existence means include resolution may differ.
    probes: Vec<Probe>,
    result: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DirStamp {
    path: Vec<u8>,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Probe {
    path: Vec<u8>,
    existed: bool,
    /// Index into `dirs` of the directory whose entries decide this path's existence (its
    /// parent, or the deepest ancestor that existed), or `NO_GUARD`.
    guard: u32,
}

const NO_GUARD: u32 = u32::MAX;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Header {
    path: Vec<u8>,
    file: FileRecord,
}

/// The direct-mode identity of one compile, computed from the source without preprocessing.
pub struct DirectKey {
    pub manifest_key: Key,
    common: Inputs,
    norm_source: OsString,
    source_digest: [u8; 32],
}

/// Sources at least this large have what direct mode learns of them memoised by stat (see
/// [`source_facts`]); smaller ones are read and hashed on every call, which costs no more
/// than reading the memo would.
const SOURCE_MEMO_MIN: u64 = 128 << 10;

/// The digest of a source direct mode may key, `None` when it must not (it mentions a time
/// macro, or names a file no dependency output lists: `.incbin`, `#embed`; the preprocessor
/// path then decides). For a large source (an amalgamation such as `sqlite3.c`), reading,
/// scanning and hashing it dominate a hit, so the answer is memoised under
/// `$DISTC_DIR/sources/` by the source's absolute path and full stat (size, mtime, ctime,
/// inode), with the rule headers follow: only a file unchanged for [`crate::key::file::TRUST_AGE`] is memoised,
/// so a later same-size edit necessarily changes its stat. The memo names the key and
/// manifest formats, whose rules the answer depends on.
fn source_facts(ctx: &Context, source: &Path) -> Option<[u8; 32]> {
    use std::io::Read;
    let mut f = fs::File::open(source).ok()?;
    let md = f.metadata().ok()?;
    let memo = (md.len() >= SOURCE_MEMO_MIN).then(|| {
        let abs = ctx.cwd.join(source);
        let name = hex::encode(Sha256::digest(abs.as_os_str().as_bytes()));
        let stamp = format!(
            "v{}.{} {}",
            fingerprint::FORMAT_VERSION,
            MANIFEST_VERSION,
            crate::key::file::stamp(&md)
        );
        (
            ctx.distc_dir
                .join("sources")
                .join(&name[..2])
                .join(&name[2..]),
            stamp,
        )
    });
    if let Some((path, stamp)) = &memo
        && let Ok(text) = fs::read_to_string(path)
        && let Some((s, answer)) = text.split_once('\n')
    {
        let answer = answer.trim_end();
        let mut digest = [0u8; 32];
        if s == stamp && answer == "-" {
            return None;
        }
        // A memo that does not parse is recomputed and rewritten.
        if s == stamp && hex::decode_to_slice(answer, &mut digest).is_ok() {
            return Some(digest);
        }
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    f.read_to_end(&mut bytes).ok()?;
    let digest: Option<[u8; 32]> = (!fingerprint::mentions_time_macros(&bytes)
        && fingerprint::unlisted_input(&bytes).is_none())
    .then(|| Sha256::digest(&bytes).into());
    if let Some((path, stamp)) = memo {
        let (mtime, ctime) = stat_tuple(&md);
        if Window::since(SystemTime::now()).trusts(mtime, ctime) {
            let answer = digest.map_or_else(|| "-".to_string(), hex::encode);
            crate::util::write_memo(&path, format!("{stamp}\n{answer}\n").as_bytes());
        }
    }
    digest
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
        let source_digest = source_facts(ctx, &job.source)?;
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

    /// This key's manifest; one that is corrupt is discarded (and counted).
    fn read(&self, ctx: &Context) -> Option<Manifest> {
        let path = self.path(ctx);
        Manifest::read(&path, MANIFEST_VERSION, &self.manifest_key).unwrap_or_else(|why| {
            crate::cache::discard_corrupt(&ctx.distc_dir, &path, &why);
            None
        })
    }

    /// This key's manifest, or one with no entries yet.
    fn read_or_empty(&self, ctx: &Context) -> Manifest {
        self.read(ctx)
            .unwrap_or_else(|| Manifest::new(MANIFEST_VERSION, self.manifest_key))
    }

    /// The result key whose recorded header state matches the files now, if any.
    pub fn lookup(&self, ctx: &Context, _job: &CompileJob) -> Option<Key> {
        let m = self.read(ctx)?;
        m.find(|e| entry_matches(&ctx.cwd, e))
            .map(|e| Key(e.result))
    }

    /// Adds an entry mapping the current state of `headers` to `result`. Best effort: nothing
    /// is recorded when a header cannot be read, mentions a time macro or is too new.
    /// Returns the manifest's bytes as written (for sharing), `None` when nothing was written.
    pub fn record(
        &self,
        ctx: &Context,
        job: &CompileJob,
        fp: &Fingerprint,
        started: SystemTime,
    ) -> Option<Vec<u8>> {
        let entry = make_entry(ctx, job, self, fp, started)?;
        let mut m = self.read_or_empty(ctx);
        m.upsert(entry, |a, b| a == b);
        // The bytes written are the payload shared with the mesh.
        m.write(&self.path(ctx))
    }

    /// The compiler's include search list, probed now (on another thread, beside the compile)
    /// when recording this manifest would otherwise probe it after the compile: once per
    /// compiler and search-list arguments in a cache directory, so only the first miss of a
    /// fresh cache pays for it, and with this not on top of its compile. `None` when it is
    /// memoised already, or the runner keeps to one thread.
    pub fn include_probe<'a>(
        &self,
        ctx: &'a Context,
        job: &'a CompileJob,
    ) -> Option<impl FnOnce() + Send + 'a> {
        let runner = ctx.runner.concurrent()?;
        let identity = identity_of(&self.common);
        let language = job.language.name();
        let (dir, compiler) = (&ctx.distc_dir, &ctx.compiler);
        if crate::compiler::c::identity::include_dirs_memoised(
            dir, compiler, &identity, language, &job.args,
        ) {
            return None;
        }
        Some(move || {
            crate::compiler::c::identity::system_include_dirs(
                runner, dir, compiler, &identity, language, &job.args,
            );
        })
    }

    /// The key this manifest is shared under in the mesh (an ordinary store entry whose
    /// payload is the manifest file's bytes). The manifest format is part of it: peers with
    /// another format never see each other's manifests.
    pub fn shared_key(&self) -> Key {
        let mut b = format!("distc-manifest-v{MANIFEST_VERSION}\0").into_bytes();
        b.extend_from_slice(&self.manifest_key.0);
        Key::digest(&b)
    }

    /// Merges a manifest another machine shared (the payload under [`DirectKey::shared_key`])
    /// and looks it up. Nothing in it is trusted but paths, digests and probe answers: every
    /// header is re-hashed here and every probe stat'ed (another machine's stats mean nothing
    /// on this one). The first entry that matches this machine's files is re-stamped with this
    /// machine's stats, kept in the local manifest (so the next hit is an ordinary local one)
    /// and its result key returned. `Ok(None)`: no entry matches (headers differ here).
    pub fn merge_shared(
        &self,
        ctx: &Context,
        payload: &[u8],
        started: SystemTime,
    ) -> Result<Option<Key>, SharedError> {
        let shared = decode_shared(payload, MAX_SHARED_MANIFEST)?;
        if shared.key != self.manifest_key {
            return Err(SharedError::WrongKey(shared.key));
        }
        let window = Window::since(started);
        let Some(entry) = shared
            .entries
            .iter()
            .find_map(|e| localize(&ctx.cwd, e, &window))
        else {
            return Ok(None);
        };
        let result = Key(entry.result);
        let mut m = self.read_or_empty(ctx);
        m.upsert(entry, same_state);
        let _ = m.write(&self.path(ctx));
        Ok(Some(result))
    }

    /// Depend-mode fingerprint: common inputs + source + every header listed in `dep_file`.
    /// `None` when a header cannot be read or mentions a time macro.
    pub fn depend_fingerprint(
        &self,
        ctx: &Context,
        job: &CompileJob,
        dep_file: &Path,
    ) -> Option<Fingerprint> {
        self.depend_fingerprint_since(ctx, job, dep_file, None).ok()
    }

    /// [`DirectKey::depend_fingerprint`] for a compile that began at `started`: a header
    /// modified since then may not be what the compiler read, so nothing is keyed (the reason
    /// is the error, a stats label).
    pub fn depend_fingerprint_since(
        &self,
        ctx: &Context,
        job: &CompileJob,
        dep_file: &Path,
        started: Option<SystemTime>,
    ) -> Result<Fingerprint, &'static str> {
        let text = fs::read(dep_file).map_err(|_| "no-dependency-file")?;
        let deps = parse_depfile(&text);
        let window = started.map_or_else(Window::unbounded, Window::since);
        let mut headers = Vec::with_capacity(deps.len());
        let mut states = Vec::with_capacity(deps.len());
        let mut buf = HeaderBuf::new();
        let mut h = Sha256::new();
        for d in deps {
            if d == job.source {
                continue;
            }
            let state = header_state(&d, &window, &mut buf)?;
            let norm = fingerprint::rewrite_arg(d.as_os_str(), ctx.base_dir.as_deref(), &ctx.cwd);
            h.update((norm.len() as u64).to_le_bytes());
            h.update(norm.as_bytes());
            h.update(state.file.digest);
            headers.push(d);
            states.push(state);
        }
        let mut inputs = self.common.clone();
        inputs.push("source-path", self.norm_source.as_bytes());
        inputs.push_digest("source", self.source_digest);
        inputs.push_digest("headers", h.finalize().into());
        Ok(Fingerprint {
            key: inputs.key(),
            inputs,
            headers,
            header_states: states,
        })
    }
}

/// Why a manifest from the mesh was rejected.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("shared manifest does not decode: {0}")]
    Decode(#[from] distc_peer::codec::CodecError),
    #[error("shared manifest has version {0} (this distc reads {MANIFEST_VERSION})")]
    Version(u32),
    #[error("shared manifest is implausibly large ({0} entries, headers or probes)")]
    TooLarge(usize),
    #[error("shared manifest was written for another compile (manifest key {0})")]
    WrongKey(Key),
}

/// Bounded decode of a manifest from the network: the limit caps what the decoder may
/// allocate, and counts that no local manifest can exceed are rejected.
fn decode_shared(payload: &[u8], limit: usize) -> Result<Manifest, SharedError> {
    let m: Manifest = distc_peer::codec::decode(payload, limit)?;
    if m.version != MANIFEST_VERSION {
        return Err(SharedError::Version(m.version));
    }
    if m.entries.len() > MAX_ENTRIES {
        return Err(SharedError::TooLarge(m.entries.len()));
    }
    for e in &m.entries {
        let n = e.headers.len().max(e.probes.len()).max(e.dirs.len());
        if n > MAX_SHARED_ITEMS {
            return Err(SharedError::TooLarge(n));
        }
    }
    Ok(m)
}

/// Same result from the same header contents (stats aside).
fn same_state(a: &Entry, b: &Entry) -> bool {
    a.result == b.result
        && a.headers.len() == b.headers.len()
        && a.probes.len() == b.probes.len()
        && a.probes
            .iter()
            .zip(&b.probes)
            .all(|(x, y)| x.path == y.path && x.existed == y.existed)
        && a.headers
            .iter()
            .zip(&b.headers)
            .all(|(x, y)| x.path == y.path && x.file.digest == y.file.digest)
}

/// Checks an entry from another machine against this machine's files and returns it with
/// this machine's stats, or `None` when any header differs or any probe answers otherwise.
/// Every header is read (a regular file only, no more than its recorded size) and hashed;
/// one modified since the window's start makes the entry unusable, as in a local recording.
fn localize(cwd: &Path, e: &Entry, window: &Window) -> Option<Entry> {
    use std::io::Read;
    let mut headers = Vec::with_capacity(e.headers.len());
    for h in &e.headers {
        let size = h.file.size;
        let path = cwd.join(OsStr::from_bytes(&h.path));
        let md = fs::metadata(&path).ok()?;
        if !md.is_file() || md.len() != size {
            return None;
        }
        let mut f = fs::File::open(&path).ok()?;
        let mut bytes = Vec::with_capacity(md.len() as usize);
        (&mut f).take(size + 1).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 != size || <[u8; 32]>::from(Sha256::digest(&bytes)) != h.file.digest {
            return None;
        }
        let md = f.metadata().ok()?;
        if md.len() != size {
            return None;
        }
        headers.push(Header {
            path: h.path.clone(),
            file: FileRecord::new(h.file.digest, &md, window)?,
        });
    }
    // Probes first, directory stamps after: a file created in between makes its directory
    // too recent to guard anything.
    let mut listings = Listings::default();
    for p in &e.probes {
        if let Some(parent) = Path::new(OsStr::from_bytes(&p.path)).parent() {
            *listings.wanted.entry(parent.to_path_buf()).or_insert(0) += 1;
        }
    }
    let mut probes = Vec::with_capacity(e.probes.len());
    for p in &e.probes {
        if listings.exists(cwd, Path::new(OsStr::from_bytes(&p.path))) != p.existed {
            return None;
        }
        probes.push((p.path.clone(), p.existed));
    }
    let (dirs, probes) = guard_probes(cwd, probes, window.trust_before(), &mut listings.stats);
    Some(Entry {
        headers,
        dirs,
        probes,
        result: e.result,
    })
}

/// Reads and hashes a header, then stats the open file: a change after the window's start
/// (or during the read) shows in the stat, so the digest is what the compile that began then
/// read. `buf` is reused from header to header: one allocation (and its page faults) for all
/// of them, and no stat before the read to size it. A regular file's read comes back short only
/// at its end, and the stat after it must give the length read, so four syscalls (open, read,
/// fstat, close) do for a header smaller than the buffer.
fn header_state(
    path: &Path,
    window: &Window,
    buf: &mut HeaderBuf,
) -> Result<HeaderState, &'static str> {
    let mut f = fs::File::open(path).map_err(|_| "unreadable-header")?;
    let bytes = buf.read_whole(&mut f).map_err(|_| "unreadable-header")?;
    let md = f.metadata().map_err(|_| "unreadable-header")?;
    if md.len() != bytes.len() as u64 {
        return Err("header-modified");
    }
    let file =
        FileRecord::new(Sha256::digest(bytes).into(), &md, window).ok_or("header-modified")?;
    if fingerprint::mentions_time_macros(bytes) {
        return Err("time-macro");
    }
    // No dependency output lists what this header makes the compile read: nothing to key.
    if let Some(label) = fingerprint::unlisted_input(bytes) {
        return Err(label);
    }
    Ok(HeaderState {
        file,
        has_include: fingerprint::has_include_names(bytes),
    })
}

/// A header buffer's first size: larger than nearly every header, so one read returns it all.
/// Below the allocator's mmap threshold, so it comes from (and goes back to) the heap.
const HEADER_BUF: usize = 64 << 10;

/// A buffer for reading header after header.
struct HeaderBuf(Vec<u8>);

impl HeaderBuf {
    fn new() -> HeaderBuf {
        HeaderBuf(vec![0; HEADER_BUF])
    }

    /// Reads `f` to its end; a read that returns less than asked is taken as the end (the
    /// caller's stat checks the length).
    fn read_whole(&mut self, f: &mut fs::File) -> std::io::Result<&[u8]> {
        use std::io::Read;
        let mut filled = 0;
        loop {
            if filled == self.0.len() {
                let len = self.0.len();
                self.0.resize(len * 2, 0);
            }
            let asked = self.0.len() - filled;
            match f.read(&mut self.0[filled..]) {
                Ok(n) => {
                    filled += n;
                    if n < asked {
                        return Ok(&self.0[..filled]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn entry_matches(cwd: &Path, e: &Entry) -> bool {
    let resolve = |p: &[u8]| cwd.join(OsStr::from_bytes(p));
    if !e.headers.iter().all(|h| h.file.matches(&resolve(&h.path))) {
        return false;
    }
    // Each guarding directory is stat'ed at most once; a changed one means stat its probes.
    let mut unchanged: Vec<Option<bool>> = vec![None; e.dirs.len()];
    e.probes.iter().all(|p| {
        if let Some(slot) = unchanged.get_mut(p.guard as usize) {
            let ok = *slot.get_or_insert_with(|| {
                let d = &e.dirs[p.guard as usize];
                fs::metadata(resolve(&d.path)).is_ok_and(|md| stat_tuple(&md) == (d.mtime, d.ctime))
            });
            if ok {
                return true;
            }
        }
        resolve(&p.path).exists() == p.existed
    })
}

/// Existence checks answered from one directory listing per parent directory: most probes
/// name files that do not exist, often many in one directory, and a listing is a few syscalls
/// where a stat per probe is one each.
#[derive(Default)]
struct Listings {
    dirs: crate::util::FastMap<PathBuf, Listing>,
    /// Probes per parent directory: only directories with several are listed.
    wanted: crate::util::FastMap<PathBuf, usize>,
    /// The directories stat'ed on the way, which the probes' guards stat again.
    stats: DirStats,
}

/// One stat per directory while an entry is recorded: the probes' parent directories are
/// stat'ed to list them and again to stamp the guards of [`guard_probes`]. A stamp taken before
/// a probe is answered guards it as well as one taken after: a lookup trusts the guard only
/// while the directory's stat is the stamped one, and any entry created or removed after the
/// stamp changes it.
#[derive(Default)]
struct DirStats(crate::util::FastMap<PathBuf, Result<fs::Metadata, Option<i32>>>);

impl DirStats {
    /// `cwd.join(dir)`'s metadata, or the error's `errno`.
    fn get(&mut self, cwd: &Path, dir: &Path) -> &Result<fs::Metadata, Option<i32>> {
        self.0
            .entry(dir.to_path_buf())
            .or_insert_with(|| fs::metadata(cwd.join(dir)).map_err(|e| e.raw_os_error()))
    }
}

/// A directory is listed when at least this many probes fall in it...
const LIST_MIN_PROBES: usize = 6;
/// ...and it is small enough that listing beats one stat per probe.
const LIST_MAX_DIR_BYTES: u64 = 64 << 10;

enum Listing {
    Names(crate::util::FastSet<OsString>),
    /// The parent does not exist (or is no directory): neither does anything under it.
    Missing,
    /// Not listed: ask stat.
    Unknown,
}

impl Listings {
    /// Same answer as `cwd.join(p).exists()`.
    fn exists(&mut self, cwd: &Path, p: &Path) -> bool {
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return cwd.join(p).exists();
        };
        let many = self
            .wanted
            .get(parent)
            .is_some_and(|&n| n >= LIST_MIN_PROBES);
        let stats = &mut self.stats;
        let listing =
            self.dirs
                .entry(parent.to_path_buf())
                .or_insert_with(|| match stats.get(cwd, parent) {
                    Err(Some(libc::ENOENT | libc::ENOTDIR)) => Listing::Missing,
                    Ok(md) if !md.is_dir() => Listing::Missing,
                    Ok(md) if many && md.len() <= LIST_MAX_DIR_BYTES => {
                        match fs::read_dir(cwd.join(parent)) {
                            Ok(rd) => Listing::Names(
                                rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
                            ),
                            Err(_) => Listing::Unknown,
                        }
                    }
                    _ => Listing::Unknown,
                });
        match listing {
            // Listed: a stat decides (a dangling symlink is listed but does not exist).
            Listing::Names(names) if names.contains(name) => cwd.join(p).exists(),
            Listing::Names(_) | Listing::Missing => false,
            Listing::Unknown => cwd.join(p).exists(),
        }
    }
}

/// Groups probes under the directories that decide them. A directory guards only when its
/// mtime and ctime were older than `trust_before`: any later entry created or removed in it
/// then necessarily gives it a different stat.
fn guard_probes(
    cwd: &Path,
    probes: Vec<(Vec<u8>, bool)>,
    trust_before: Time,
    stats: &mut DirStats,
) -> (Vec<DirStamp>, Vec<Probe>) {
    let mut dirs: Vec<DirStamp> = Vec::new();
    let mut index: crate::util::FastMap<Vec<u8>, u32> = Default::default();
    let mut out = Vec::with_capacity(probes.len());
    for (path, existed) in probes {
        let mut guard = NO_GUARD;
        let mut dir = Path::new(OsStr::from_bytes(&path)).parent();
        // Missing directories on the way share the guard of their nearest existing ancestor.
        let mut missing: Vec<Vec<u8>> = Vec::new();
        while let Some(d) = dir {
            let key = d.as_os_str().as_bytes().to_vec();
            if let Some(&i) = index.get(&key) {
                guard = i;
                break;
            }
            match stats.get(cwd, d) {
                Ok(md) if md.is_dir() => {
                    let (m, c) = stat_tuple(md);
                    if m < trust_before && c < trust_before && dirs.len() < NO_GUARD as usize {
                        guard = dirs.len() as u32;
                        dirs.push(DirStamp {
                            path: key.clone(),
                            mtime: m,
                            ctime: c,
                        });
                    }
                    index.insert(key, guard);
                    break;
                }
                // Missing: its creation shows in the nearest existing ancestor.
                Err(Some(libc::ENOENT)) if !existed => {
                    missing.push(key);
                    dir = d.parent();
                }
                _ => break,
            }
        }
        for m in missing {
            index.insert(m, guard);
        }
        out.push(Probe {
            path,
            existed,
            guard,
        });
    }
    (dirs, out)
}

fn make_entry(
    ctx: &Context,
    job: &CompileJob,
    key: &DirectKey,
    fp: &Fingerprint,
    started: SystemTime,
) -> Option<Entry> {
    let (common, norm_source) = (&key.common, key.norm_source.as_os_str());
    let norm = |p: &Path| -> Vec<u8> {
        fingerprint::rewrite_arg(p.as_os_str(), ctx.base_dir.as_deref(), &ctx.cwd).into_vec()
    };
    let window = Window::since(started);
    let known = fp.header_states.len() == fp.headers.len();
    let mut buf: Option<HeaderBuf> = None;
    let mut out = Vec::with_capacity(fp.headers.len());
    // (directory of the file that tests it, name) for every `__has_include`.
    let mut tested: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let dir_of = |p: &[u8]| {
        Path::new(OsStr::from_bytes(p))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    // The source as the manifest key hashed it: its `__has_include` names.
    let source = fs::read(&job.source).ok()?;
    if <[u8; 32]>::from(Sha256::digest(&source)) != key.source_digest {
        return None;
    }
    for name in fingerprint::has_include_names(&source)? {
        tested.push((dir_of(norm_source.as_bytes()), name));
    }
    for (i, p) in fp.headers.iter().enumerate() {
        // Modified since the compile began: what we hash may not be what the compiler read.
        let st = if known {
            let st = fp.header_states[i].clone();
            HeaderState {
                file: st.file.within(&window)?,
                ..st
            }
        } else {
            header_state(p, &window, buf.get_or_insert_with(HeaderBuf::new)).ok()?
        };
        let path = norm(p);
        for name in st.has_include? {
            tested.push((dir_of(&path), name));
        }
        out.push(Header {
            path,
            file: st.file,
        });
    }
    // Candidate include directories, in search order: the source's own, the user's search dirs
    // (-iquote/-I/-isystem; their mutual order depends on the include form, so each one is
    // probed for every header), the compiler's system dirs, then -idirafter dirs.
    let src_dir = Path::new(norm_source)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let identity = identity_of(common);
    let system = crate::compiler::c::identity::system_include_dirs(
        ctx.runner,
        &ctx.distc_dir,
        &ctx.compiler,
        &identity,
        job.language.name(),
        &job.args,
    )?;
    let after = idirafter_dirs(&job.args);
    let mut dirs: Vec<(PathBuf, Tier)> = vec![(src_dir, Tier::User)];
    for d in &job.search_dirs {
        if !after.contains(d) {
            dirs.push((PathBuf::from(OsString::from_vec(norm(d))), Tier::User));
        }
    }
    for d in &system.dirs {
        dirs.push((PathBuf::from(OsString::from_vec(norm(d))), Tier::System));
    }
    for d in &after {
        dirs.push((PathBuf::from(OsString::from_vec(norm(d))), Tier::After));
    }
    let mut listings = Listings::default();
    let mut probes = shadow_probes(
        &ctx.cwd,
        &dirs,
        out.iter().map(|h| h.path.as_slice()),
        &mut listings,
    );
    // More existence probes, each answered now:
    // - a system directory the compiler skipped as nonexistent joins its search list once it
    //   exists (and may then shadow any header found after it);
    // - a name tested with `__has_include`, wherever an include of it could find it (the
    //   testing file's directory and every search directory), exists or not.
    let mut extra: Vec<Vec<u8>> = system.missing.iter().map(|d| norm(d)).collect();
    for (from, name) in &tested {
        let name = Path::new(OsStr::from_bytes(name));
        if name.is_absolute() {
            extra.push(name.as_os_str().as_bytes().to_vec());
            continue;
        }
        for d in std::iter::once(from).chain(dirs.iter().map(|(d, _)| d)) {
            extra.push(d.join(name).into_os_string().into_vec());
        }
    }
    let mut seen: crate::util::FastSet<Vec<u8>> = probes.iter().map(|(p, _)| p.clone()).collect();
    for p in extra {
        if seen.insert(p.clone()) {
            let exists = ctx.cwd.join(OsStr::from_bytes(&p)).exists();
            probes.push((p, exists));
        }
    }
    let (dirs, probes) = guard_probes(&ctx.cwd, probes, window.trust_before(), &mut listings.stats);
    Some(Entry {
        headers: out,
        dirs,
        probes,
        result: fp.key.0,
    })
}

/// Where a candidate include directory sits in the search order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// The source's directory, -iquote, -I, -isystem: probed for every header.
    User,
    /// The compiler's own directories: searched after the user's, in their listed order.
    System,
    /// -idirafter: searched last.
    After,
}

/// The compiler identity and the environment that shapes its search list, from the common
/// inputs (which always hold both).
fn identity_of(common: &Inputs) -> [u8; 32] {
    let mut h = Sha256::new();
    for i in &common.items {
        if i.label == "compiler" || i.label == "env" {
            h.update(i.label.as_bytes());
            h.update(i.digest);
        }
    }
    h.finalize().into()
}

/// The `-idirafter` directories of a command line (separate or glued value).
fn idirafter_dirs(args: &[OsString]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-idirafter" {
            if let Some(v) = it.next() {
                out.push(PathBuf::from(v));
            }
        } else if let Some(v) = a.as_bytes().strip_prefix(b"-idirafter") {
            out.push(PathBuf::from(OsStr::from_bytes(v)));
        }
    }
    out
}

/// Paths where a new file would change which file an include of one of `headers` resolves to,
/// with whether each exists now. A header may have been found through any candidate directory
/// that prefixes it (`/usr/include/x86_64-linux-gnu/bits/types.h` is `bits/types.h` there and
/// `x86_64-linux-gnu/bits/types.h` under `/usr/include`); for each such reading its name is
/// probed in every user directory and every directory searched before the one it was found in.
/// Stat only: this list is what a hit re-checks.
fn shadow_probes<'a>(
    cwd: &Path,
    dirs: &[(PathBuf, Tier)],
    headers: impl Iterator<Item = &'a [u8]>,
    listings: &mut Listings,
) -> Vec<(Vec<u8>, bool)> {
    let mut probes: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut seen: crate::util::FastSet<_> = Default::default();
    for hp in headers {
        let hp = Path::new(OsStr::from_bytes(hp));
        for (k, (found_in, tier)) in dirs.iter().enumerate() {
            let rel = if found_in.as_os_str().is_empty() {
                if hp.is_absolute() {
                    continue;
                }
                hp
            } else {
                match hp.strip_prefix(found_in) {
                    Ok(r) if !r.as_os_str().is_empty() => r,
                    _ => continue,
                }
            };
            for (j, (d, t)) in dirs.iter().enumerate() {
                let earlier = match (tier, t) {
                    (_, Tier::User) => true,
                    (Tier::User, _) => false,
                    _ => j < k,
                };
                if j == k || !earlier || d == found_in {
                    continue;
                }
                let probe = d.join(rel);
                let bytes = probe.into_os_string().into_vec();
                if bytes.as_slice() != hp.as_os_str().as_bytes() && seen.insert(bytes.clone()) {
                    probes.push((bytes, false));
                }
            }
        }
    }
    for (p, _) in &probes {
        if let Some(parent) = Path::new(OsStr::from_bytes(p)).parent() {
            *listings.wanted.entry(parent.to_path_buf()).or_insert(0) += 1;
        }
    }
    for (p, exists) in &mut probes {
        *exists = listings.exists(cwd, Path::new(OsStr::from_bytes(p)));
    }
    probes
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
    use std::time::Duration;

    use super::*;
    use crate::key::file::time_of as secs;

    #[test]
    fn probes_cover_earlier_system_dirs_and_every_user_dir() {
        let d = tempfile::tempdir().unwrap();
        let dirs = [
            (PathBuf::new(), Tier::User),
            (PathBuf::from("inc"), Tier::User),
            (PathBuf::from("/sys/gcc"), Tier::System),
            (PathBuf::from("/sys/usr"), Tier::System),
            (PathBuf::from("/sys/usr/multi"), Tier::System),
            (PathBuf::from("late"), Tier::After),
        ];
        let probes = shadow_probes(
            d.path(),
            &dirs,
            [&b"/sys/usr/stdio.h"[..], b"inc/h.h"].into_iter(),
            &mut Listings::default(),
        );
        let names: Vec<&str> = probes
            .iter()
            .map(|(p, _)| std::str::from_utf8(p).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "stdio.h",
                "inc/stdio.h",
                "/sys/gcc/stdio.h",
                // inc/h.h read as relative to the source dir, then as found in inc. The
                // -idirafter dir is searched after both: a file there shadows neither.
                "inc/inc/h.h",
                "h.h",
            ]
        );
        assert!(probes.iter().all(|(_, e)| !e));
    }

    #[test]
    fn directory_stamps_guard_probes() {
        let d = tempfile::tempdir().unwrap();
        let inc = d.path().join("inc");
        fs::create_dir(&inc).unwrap();
        fs::write(inc.join("x.h"), "").unwrap();
        let p = |rel: &str| inc.join(rel).into_os_string().into_vec();
        let probes = vec![(p("x.h"), true), (p("y.h"), false), (p("sub/z.h"), false)];
        let future = secs(SystemTime::now() + Duration::from_secs(60));
        let (dirs, guarded) =
            guard_probes(d.path(), probes.clone(), future, &mut DirStats::default());
        assert_eq!(dirs.len(), 1);
        assert!(guarded.iter().all(|p| p.guard == 0));
        let mut e = Entry {
            headers: vec![],
            dirs,
            probes: guarded,
            result: [0; 32],
        };
        assert!(entry_matches(d.path(), &e));
        // A directory stamp that no longer matches: every probe is stat'ed, and they agree.
        e.dirs[0].mtime.0 -= 1;
        assert!(entry_matches(d.path(), &e));
        e.dirs[0].mtime.0 += 1;
        std::thread::sleep(Duration::from_millis(20));
        fs::create_dir(inc.join("sub")).unwrap();
        fs::write(inc.join("sub/z.h"), "").unwrap();
        assert!(!entry_matches(d.path(), &e), "sub/z.h appeared");
        // Too recent to trust: no guard.
        let (dirs, guarded) = guard_probes(d.path(), probes, (0, 0), &mut DirStats::default());
        assert!(dirs.is_empty() && guarded.iter().all(|p| p.guard == NO_GUARD));
    }

    #[test]
    fn header_buffer_reads_whole_files_of_any_size() {
        let d = tempfile::tempdir().unwrap();
        let mut buf = HeaderBuf::new();
        for size in [
            0,
            1,
            4096,
            HEADER_BUF - 1,
            HEADER_BUF,
            HEADER_BUF + 1,
            3 * HEADER_BUF + 7,
        ] {
            let p = d.path().join(format!("h{size}.h"));
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            fs::write(&p, &data).unwrap();
            let mut f = fs::File::open(&p).unwrap();
            assert_eq!(
                buf.read_whole(&mut f).unwrap(),
                data.as_slice(),
                "size {size}"
            );
        }
        // After a large file, a small one is read whole and alone.
        let p = d.path().join("small.h");
        fs::write(&p, b"#define X 1\n").unwrap();
        let st = header_state(&p, &Window::unbounded(), &mut buf).unwrap();
        assert_eq!(
            st.file.digest,
            <[u8; 32]>::from(Sha256::digest(b"#define X 1\n"))
        );
        assert_eq!(st.file.size, 12);
    }

    #[test]
    fn listings_agree_with_stat() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("inc")).unwrap();
        fs::write(d.path().join("inc/x.h"), "").unwrap();
        fs::write(d.path().join("file"), "").unwrap();
        std::os::unix::fs::symlink("nowhere", d.path().join("inc/dangling.h")).unwrap();
        let names = [
            "inc/x.h",
            "inc/dangling.h",
            "inc/y.h",
            "inc/a.h",
            "inc/b.h",
            "inc/c.h",
            "inc/d.h",
            "missing/x.h",
            "file/x.h",
            "x.h",
            "file",
        ];
        let mut l = Listings::default();
        l.wanted.insert(PathBuf::from("inc"), names.len());
        for n in names {
            let p = Path::new(n);
            assert_eq!(l.exists(d.path(), p), d.path().join(p).exists(), "{n}");
        }
        assert!(matches!(l.dirs[Path::new("inc")], Listing::Names(_)));
    }

    /// A shared manifest for the test's manifest key, `Key([1; 32])`.
    fn shared(entries: Vec<Entry>) -> Vec<u8> {
        distc_peer::codec::encode(&Manifest {
            version: MANIFEST_VERSION,
            key: Key([1; 32]),
            entries,
        })
        .unwrap()
    }

    #[test]
    fn shared_manifest_decode_is_bounded() {
        // Garbage, truncated, and a claimed length far beyond the input: errors, no panic.
        assert!(decode_shared(b"", MAX_SHARED_MANIFEST).is_err());
        assert!(decode_shared(&[0xff; 64], MAX_SHARED_MANIFEST).is_err());
        let mut huge = vec![MANIFEST_VERSION as u8];
        huge.extend_from_slice(&[1; 32]);
        huge.push(253);
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode_shared(&huge, MAX_SHARED_MANIFEST),
            Err(SharedError::Decode(_))
        ));
        let entry = Entry {
            headers: vec![],
            dirs: vec![],
            probes: vec![],
            result: [7; 32],
        };
        let ok = shared(vec![entry.clone()]);
        assert_eq!(
            decode_shared(&ok, 1 << 10).unwrap().entries,
            std::slice::from_ref(&entry)
        );
        // Over the size limit, another version, more entries than a manifest keeps.
        assert!(decode_shared(&ok, ok.len() - 1).is_err());
        let other = distc_peer::codec::encode(&Manifest {
            version: MANIFEST_VERSION + 1,
            key: Key([1; 32]),
            entries: vec![],
        })
        .unwrap();
        assert!(matches!(
            decode_shared(&other, MAX_SHARED_MANIFEST),
            Err(SharedError::Version(_))
        ));
        let many = shared(vec![entry; MAX_ENTRIES + 1]);
        assert!(matches!(
            decode_shared(&many, MAX_SHARED_MANIFEST),
            Err(SharedError::TooLarge(_))
        ));
    }

    #[test]
    fn shared_entries_are_checked_against_local_files() {
        let d = tempfile::tempdir().unwrap();
        let cwd = d.path().join("work");
        fs::create_dir_all(&cwd).unwrap();
        fs::write(cwd.join("h.h"), "#define X 1\n").unwrap();
        let ctx = Context {
            runner: &crate::pipeline::System,
            distc_dir: d.path().join("cache"),
            cwd: cwd.clone(),
            base_dir: None,
            compiler: PathBuf::from("cc"),
            invoked_as: "cc".into(),
        };
        let dk = DirectKey {
            manifest_key: Key([1; 32]),
            common: Inputs::default(),
            norm_source: "a.c".into(),
            source_digest: [0; 32],
        };
        let header = |path: &[u8], text: &[u8]| Header {
            path: path.to_vec(),
            file: FileRecord {
                digest: Sha256::digest(text).into(),
                size: text.len() as u64,
                // Another machine's stats, claimed trusted: ignored here.
                mtime: (1, 0),
                ctime: (1, 0),
                trusted: true,
            },
        };
        let entry = |h: Header, probe: &[u8], existed: bool| Entry {
            headers: vec![h],
            dirs: vec![DirStamp {
                path: b".".to_vec(),
                mtime: (1, 0),
                ctime: (1, 0),
            }],
            probes: vec![Probe {
                path: probe.to_vec(),
                existed,
                guard: 0,
            }],
            result: [9; 32],
        };
        let later = SystemTime::now() + Duration::from_secs(10);
        // A manifest shared for another compile is refused, however well its entries match.
        let foreign = distc_peer::codec::encode(&Manifest {
            version: MANIFEST_VERSION,
            key: Key([2; 32]),
            entries: vec![entry(header(b"h.h", b"#define X 1\n"), b"inc/h.h", false)],
        })
        .unwrap();
        assert!(matches!(
            dk.merge_shared(&ctx, &foreign, later),
            Err(SharedError::WrongKey(_))
        ));
        // Different header contents here, a probe that answers otherwise, a device file:
        // all miss, and nothing is written.
        for e in [
            entry(header(b"h.h", b"#define X 2\n"), b"inc/h.h", false),
            entry(header(b"h.h", b"#define X 1\n"), b"inc/h.h", true),
            entry(header(b"/dev/zero", b""), b"inc/h.h", false),
        ] {
            assert_eq!(
                dk.merge_shared(&ctx, &shared(vec![e]), later).unwrap(),
                None
            );
        }
        assert!(dk.lookup(&ctx, &dummy_job()).is_none());
        // The same contents: a hit, kept locally with this machine's stats.
        let good = entry(header(b"h.h", b"#define X 1\n"), b"inc/h.h", false);
        let got = dk.merge_shared(&ctx, &shared(vec![good]), later).unwrap();
        assert_eq!(got, Some(Key([9; 32])));
        let m = dk.read(&ctx).unwrap();
        let md = fs::metadata(cwd.join("h.h")).unwrap();
        assert_eq!(m.entries[0].headers[0].file.mtime, stat_tuple(&md).0);
        assert_eq!(dk.lookup(&ctx, &dummy_job()), Some(Key([9; 32])));
        // Garbage is an error.
        assert!(dk.merge_shared(&ctx, b"garbage", later).is_err());
    }

    fn dummy_job() -> CompileJob {
        let args: Vec<OsString> = ["-c", "a.c"].iter().map(OsString::from).collect();
        match crate::compiler::c::args::parse(&args, &|_| None) {
            crate::compiler::c::Parsed::Compile(j) => *j,
            crate::compiler::c::Parsed::Uncacheable(r) => panic!("{r}"),
        }
    }

    #[test]
    fn idirafter_collected() {
        let args: Vec<OsString> = ["-Ia", "-idirafter", "x", "-idirafter/y", "-c"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            idirafter_dirs(&args),
            [PathBuf::from("x"), PathBuf::from("/y")]
        );
    }

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
