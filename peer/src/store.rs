//! The content-addressed local store: one file per key under `<dir>/<2 hex>/<62 hex>`.
//!
//! Every wrapper process and the machine's peer use the same directory at once, so every
//! operation is safe across processes without a daemon:
//! - entries are written to a temporary file in the same directory and renamed into place, so a
//!   reader sees either nothing or a whole entry;
//! - every entry names the key it was stored under and carries a digest of its header and
//!   payload, checked on every read: a corrupt or truncated entry, or a valid one under another
//!   key's name (a swapped or restored file, a peer's wrong answer), is deleted and reported,
//!   never returned;
//! - the entry count and byte total live in a small counter file updated under `flock`, so
//!   `usage()` and the size cap need no directory scan; the scan happens only when a put pushes
//!   the total over the cap (LRU by modification time, which hits refresh at most once a minute).
//!
//! Entry format 5 (all integers little-endian):
//! `b"DSTC"` | format `u8` | key `[u8; 32]` | payload length `u64` | digest `[u8; 32]` |
//! provenance | body, where digest = H(magic, format, key, length, payload): the key and
//! the format are inside the checked bytes, the body's encoding is not. Provenance is one
//! byte, `0` for an entry made on this machine (a wrapper stored it; nothing to sign), or `1`
//! followed by the producer's ed25519 public key `[u8; 32]` and its signature `[u8; 64]` over
//! [`signing_message`] (key, digest, producer): what every entry that crossed the network
//! carries. H follows the provenance:
//! - a signed entry's digest is BLAKE3, because the signature covers the payload only through
//!   it: a digest that could be made to collide would let a signature move to another payload;
//! - an entry made here carries XXH3-128 (zero-padded to 32 bytes). Its digest detects a torn,
//!   truncated or bit-flipped file, or one under another key's name; it cannot and need not
//!   authenticate anything — whoever can write this directory can write any entry with any
//!   digest, cryptographic or not — so it takes the fastest hash that reliably detects damage
//!   (a 4 MiB executable's hit checks it in about a tenth of BLAKE3's time). Such an entry is
//!   re-digested with BLAKE3 as the peer signs it, before it leaves the machine
//!   ([`Store::signed`]).
//!
//! The body is a zstd frame of the payload, except that [`Store::put`] keeps a payload of
//! [`RAW_ABOVE`] bytes or more as it is: the body is then a zstd *skippable* frame
//! ([`STORED_MAGIC`], a `u32` length, the payload), which no zstd frame can be mistaken for. A
//! hit maps such an entry into memory and writes its outputs straight from the mapping:
//! nothing is decompressed, read into a buffer or moved. The peer compresses it before an
//! entry leaves the machine ([`Store::signed`], [`Store::compressed`]), so what the mesh moves
//! is always a compressed zstd frame. Entry files are never written in place (a temporary file
//! is renamed over them, removal unlinks them), so a mapped entry cannot change under its
//! reader. The store checks the digest; signatures are checked by the peer that receives an
//! entry ([`crate::trust`]). Entries of another format are a miss (removed, not counted as
//! corruption). (Format 3 had SHA-256 as the digest, format 4 BLAKE3 for every entry; a
//! distc that reads format 5 starts with an empty local cache.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::key::Key;

const MAGIC: &[u8; 4] = b"DSTC";
/// The store entry format: 2 named the key and put the header under the digest; 3 adds the
/// provenance (who produced the entry, signed); 4 makes the digest BLAKE3; 5 makes it
/// XXH3-128 for entries made here (signed ones keep BLAKE3).
pub const ENTRY_FORMAT: u8 = 5;
const FORMAT: u8 = ENTRY_FORMAT;
const KEY_AT: usize = 5;
const LEN_AT: usize = KEY_AT + 32;
const DIGEST_AT: usize = LEN_AT + 8;
const PROVENANCE_AT: usize = DIGEST_AT + 32;
/// The shortest header: an entry made on this machine (provenance byte `0`).
const HEADER_LEN: usize = PROVENANCE_AT + 1;
/// The header of a signed entry: provenance `1`, public key, signature.
pub const SIGNED_HEADER_LEN: usize = HEADER_LEN + 32 + 64;
const LOCAL: u8 = 0;
const SIGNED: u8 = 1;
const USAGE_FILE: &str = "usage";
const EVICT_LOCK: &str = "evict.lock";
/// The number of entries evicted so far, as text (see [`Store::evictions`]).
const EVICTIONS: &str = "evictions";
/// Hits refresh an entry's LRU time only when it is older than this, to keep hits cheap.
const TOUCH_GRANULARITY: Duration = Duration::from_secs(60);
/// After an eviction the store is brought down to this fraction of its cap.
const EVICT_TARGET: f64 = 0.9;
/// Temporary files older than this are leftovers of a killed writer.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// zstd level for new entries: fast, since a miss should cost little more than the compile.
const ZSTD_LEVEL: i32 = 1;
/// Payloads at least this large are stored by [`Store::put`] as they are ([`STORED_MAGIC`]):
/// a hit then writes them from the mapped entry instead of decompressing them (for a 4 MiB
/// executable, most of the hit's CPU), at the cost of disk. They are compressed before they
/// leave the machine ([`Store::compressed`]), so the mesh moves and keeps compressed entries.
pub const RAW_ABOVE: usize = 1 << 20;
/// The magic of a body that holds its payload as it is: one of the sixteen magics of a zstd
/// skippable frame (`0x184D2A50..=0x184D2A5F`), followed by the payload's length (`u32` LE)
/// and the payload.
const STORED_MAGIC: [u8; 4] = 0x184D_2A5Du32.to_le_bytes();
/// Magic and length of a stored body.
const STORED_HEADER: usize = 8;
/// Entry files from this size on are mapped into memory to be read by a hit, not copied into
/// a buffer.
const MAP_ABOVE: u64 = 256 << 10;

/// What went wrong in the store. Callers treat every error as "no cache here" and compile.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt cache entry {key}: {reason} (removed; it will be rebuilt)")]
    Corrupt { key: Key, reason: String },
    #[error("invalid cache entry: {0}")]
    Invalid(String),
    #[error("cache entry stored for key {found} was found under key {expected}")]
    WrongKey { expected: Key, found: Key },
    #[error("cache entry of format {0} (this distc reads format {FORMAT})")]
    OtherFormat(u8),
    #[error("cache entry of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
}

impl StoreError {
    fn io(path: &Path, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the directory cannot be written (read-only, permission, disk full): the
    /// caller warns once and keeps compiling without the cache.
    pub fn is_unwritable(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::PermissionDenied
                        | io::ErrorKind::ReadOnlyFilesystem
                        | io::ErrorKind::StorageFull
                        | io::ErrorKind::QuotaExceeded
                )
            }
            _ => false,
        }
    }
}

/// An entry read from the store and checked: its on-disk bytes (what peers send) and its
/// payload.
#[derive(Debug, Clone)]
pub struct CheckedEntry {
    pub raw: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Who produced an entry, as its header says (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Made on this machine by a wrapper: not signed (its peer signs it when it first sends
    /// it).
    Local,
    /// Produced elsewhere: the producer's ed25519 public key and its signature, as received
    /// (not checked here; see [`crate::trust`]).
    Signed {
        producer: [u8; 32],
        signature: [u8; 64],
    },
}

/// The bytes a producer signs for an entry: a domain tag, the key, the entry digest (which
/// covers key, length and payload) and the producer's public key.
pub fn signing_message(key: &Key, digest: &[u8; 32], producer: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_TAG.len() + 96);
    m.extend_from_slice(SIGNING_TAG);
    m.extend_from_slice(&key.0);
    m.extend_from_slice(digest);
    m.extend_from_slice(producer);
    m
}

const SIGNING_TAG: &[u8] = b"distc entry signature v1\0";

fn compress(payload: &[u8]) -> Result<Vec<u8>, StoreError> {
    zstd::bulk::compress(payload, ZSTD_LEVEL)
        .map_err(|e| StoreError::Invalid(format!("compression failed: {e}")))
}

/// From this size on, a read buffer asks for huge pages.
const HUGE_PAGE: usize = 2 << 20;

/// An empty buffer for reading `len` bytes. A large one has the 2 MiB-aligned parts of it
/// backed by huge pages where the kernel offers them (`MADV_HUGEPAGE`, for transparent huge
/// pages in `madvise` mode): filling a fresh 4 MiB buffer page by page costs a thousand page
/// faults, which were most of the system time of a hit on a 4 MiB executable; with huge
/// pages it is a handful.
fn read_buffer(len: usize) -> Vec<u8> {
    if len < 2 * HUGE_PAGE {
        return Vec::with_capacity(len);
    }
    // One huge page more than needed (address space only, until touched): the last aligned
    // huge page that the bytes reach lies inside the buffer too.
    let v: Vec<u8> = Vec::with_capacity(len + HUGE_PAGE);
    #[cfg(target_os = "linux")]
    {
        let at = v.as_ptr() as usize;
        let start = at.next_multiple_of(HUGE_PAGE);
        let end = (at + v.capacity()) & !(HUGE_PAGE - 1);
        if end > start {
            // SAFETY: [start, end) lies inside the allocation `v` owns (its capacity);
            // MADV_HUGEPAGE only advises how those pages are backed, changes no
            // content and no mapping, and its failure (no THP) is harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// The payload of a stored body (see [`STORED_MAGIC`]): `None` for a body that is not one,
/// an error for one whose length field disagrees with its size.
fn stored_payload(body: &[u8]) -> Option<Result<&[u8], StoreError>> {
    if body.len() < STORED_HEADER || body[..4] != STORED_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([body[4], body[5], body[6], body[7]]) as usize;
    let payload = &body[STORED_HEADER..];
    Some(if payload.len() == len {
        Ok(payload)
    } else {
        Err(StoreError::Invalid(format!(
            "stored payload is {} bytes, its frame says {len}",
            payload.len()
        )))
    })
}

/// The header of a stored body of `len` bytes.
fn stored_header(len: usize) -> Option<[u8; STORED_HEADER]> {
    let len = u32::try_from(len).ok()?;
    let mut h = [0u8; STORED_HEADER];
    h[..4].copy_from_slice(&STORED_MAGIC);
    h[4..].copy_from_slice(&len.to_le_bytes());
    Some(h)
}

/// Number of entries and bytes on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
}

/// A handle on a store directory. Opening is cheap (one `mkdir -p`), so every wrapper
/// process opens its own.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    max_size: u64,
    /// Directories of small files that live alongside the store (direct-mode manifests, miss
    /// records, lock files): trimmed whenever the store evicts, so the whole cache directory
    /// stays bounded, not just the entries.
    aux: Vec<PathBuf>,
}

/// Share of `max_size` that auxiliary directories may take together.
const AUX_SHARE: u64 = 10;
/// Empty files (locks) older than this are removed when auxiliary directories are trimmed.
const STALE_LOCK: Duration = Duration::from_secs(3600);

impl Store {
    /// Opens (creating if needed) the store at `dir`, capped at `max_size` bytes on disk.
    pub fn open(dir: &Path, max_size: u64) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        Ok(Store {
            root: dir.to_path_buf(),
            max_size,
            aux: Vec::new(),
        })
    }

    /// Names directories whose files are trimmed (oldest first) when the store evicts, to at
    /// most a tenth of `max_size` together; empty files in them older than an hour go too.
    pub fn with_aux_dirs(mut self, dirs: Vec<PathBuf>) -> Store {
        self.aux = dirs;
        self
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_path(&self, key: &Key) -> PathBuf {
        let hex = key.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// The payload stored under `key`, its digest and key checked. A corrupt entry (or one
    /// stored for another key) is removed and reported as [`StoreError::Corrupt`]; an entry of
    /// another format is removed and is a plain miss.
    pub fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_checked(key)?.map(|e| e.payload))
    }

    /// The on-disk bytes of the entry under `key` and its payload, both checked as by
    /// [`Store::get`]: what a peer serves, so that it never hands out (and drops) an entry of
    /// its own that is corrupt.
    pub fn get_checked(&self, key: &Key) -> Result<Option<CheckedEntry>, StoreError> {
        let Some(raw) = self.get_raw(key)? else {
            return Ok(None);
        };
        match Store::verify_raw(&raw, key, u64::MAX) {
            Ok(payload) => Ok(Some(CheckedEntry { raw, payload })),
            Err(StoreError::OtherFormat(_)) => {
                let _ = self.remove(key);
                Ok(None)
            }
            Err(e) => {
                let _ = self.remove(key);
                Err(StoreError::Corrupt {
                    key: *key,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// The payload stored under `key` and who produced it, checked as by [`Store::get`]: what
    /// a wrapper's hit reads. A large entry is mapped into memory, and a payload kept as it is
    /// ([`STORED_MAGIC`]) comes back as a slice of the mapping: its bytes are hashed in place
    /// and go from there to the files they are replayed into. Any other payload is
    /// decompressed (or copied out of its raw blocks) once.
    pub fn get_payload(&self, key: &Key) -> Result<Option<(Bytes, Provenance)>, StoreError> {
        let Some(entry) = self.read_shared(key)? else {
            return Ok(None);
        };
        let checked =
            Store::provenance(&entry).and_then(|p| Ok((Store::verify_shared(entry, key)?, p)));
        match checked {
            Ok(found) => Ok(Some(found)),
            Err(StoreError::OtherFormat(_)) => {
                let _ = self.remove(key);
                Ok(None)
            }
            Err(e) => {
                let _ = self.remove(key);
                Err(StoreError::Corrupt {
                    key: *key,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// The entry file under `key`, opened, with its metadata; its LRU time refreshed.
    fn open_entry(&self, key: &Key) -> Result<Option<(File, fs::Metadata)>, StoreError> {
        let path = self.entry_path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let meta = file.metadata().map_err(|e| StoreError::io(&path, e))?;
        // LRU: refresh the time of entries that are read, at most once per granularity.
        if let Ok(modified) = meta.modified() {
            let now = SystemTime::now();
            if now
                .duration_since(modified)
                .is_ok_and(|age| age > TOUCH_GRANULARITY)
            {
                let _ = file.set_modified(now);
            }
        }
        Ok(Some((file, meta)))
    }

    /// The on-disk bytes of the entry under `key`: mapped into memory from [`MAP_ABOVE`]
    /// bytes on, else read.
    fn read_shared(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        let Some((mut file, meta)) = self.open_entry(key)? else {
            return Ok(None);
        };
        if meta.len() >= MAP_ABOVE {
            // SAFETY: entry files are never written in place (module docs): a new entry is
            // renamed over the old one and removal unlinks, so the mapped file keeps its
            // bytes and its length while the mapping lives. Its bytes are checked against the
            // digest before anything uses them.
            match unsafe { memmap2::MmapOptions::new().populate().map(&file) } {
                Ok(map) => return Ok(Some(Bytes::from_owner(map))),
                Err(e) => tracing::debug!(%key, "cannot map cache entry ({e}); reading it"),
            }
        }
        let mut raw = read_buffer(meta.len() as usize);
        file.read_to_end(&mut raw)
            .map_err(|e| StoreError::io(&self.entry_path(key), e))?;
        Ok(Some(Bytes::from(raw)))
    }

    /// [`Store::verify_raw`] on shared bytes: a payload kept as it is comes back as a slice of
    /// `entry`, any other is decompressed.
    fn verify_shared(entry: Bytes, key: &Key) -> Result<Bytes, StoreError> {
        let (body, len) = Store::checked_header(&entry, key, u64::MAX)?;
        if let Some(stored) = stored_payload(&entry[body..]) {
            Store::check_digest(&entry, stored?)?;
            return Ok(entry.slice(body + STORED_HEADER..));
        }
        Store::decompressed(&entry, body, len).map(Bytes::from)
    }

    /// The on-disk bytes of the entry under `key` (compressed, self-describing): what peers
    /// send each other. Not verified here; receivers call [`Store::verify_raw`].
    pub fn get_raw(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((mut file, meta)) = self.open_entry(key)? else {
            return Ok(None);
        };
        let mut raw = read_buffer(meta.len() as usize);
        file.read_to_end(&mut raw)
            .map_err(|e| StoreError::io(&self.entry_path(key), e))?;
        Ok(Some(raw))
    }

    /// Checks that an entry was stored for `key`, its header, length and digest, and returns
    /// its payload. Refuses payloads that claim more than `max_payload` bytes before
    /// decompressing anything.
    pub fn verify_raw(entry: &[u8], key: &Key, max_payload: u64) -> Result<Vec<u8>, StoreError> {
        let (body, len) = Store::checked_header(entry, key, max_payload)?;
        if let Some(stored) = stored_payload(&entry[body..]) {
            let payload = stored?;
            Store::check_digest(entry, payload)?;
            return Ok(payload.to_vec());
        }
        Store::decompressed(entry, body, len)
    }

    /// The payload's start in `entry` and its length, after checking the header: magic,
    /// format, provenance, that it names `key`, and a length of at most `max_payload`.
    fn checked_header(
        entry: &[u8],
        key: &Key,
        max_payload: u64,
    ) -> Result<(usize, u64), StoreError> {
        let body = payload_start(entry)?;
        let mut found = [0u8; 32];
        found.copy_from_slice(&entry[KEY_AT..LEN_AT]);
        if found != key.0 {
            return Err(StoreError::WrongKey {
                expected: *key,
                found: Key(found),
            });
        }
        let len = header_payload_len(entry);
        if len > max_payload {
            return Err(StoreError::TooLarge {
                size: len,
                limit: max_payload,
            });
        }
        Ok((body, len))
    }

    /// Checks `payload` (kept as it is in `entry`) against the length and digest in the
    /// header.
    fn check_digest(entry: &[u8], payload: &[u8]) -> Result<(), StoreError> {
        let len = header_payload_len(entry);
        if payload.len() as u64 != len {
            return Err(StoreError::Invalid(format!(
                "payload is {} bytes, header says {len}",
                payload.len()
            )));
        }
        if entry_digest(&entry[..DIGEST_AT], entry[PROVENANCE_AT], payload)
            != entry[DIGEST_AT..PROVENANCE_AT]
        {
            return Err(StoreError::Invalid("digest mismatch".into()));
        }
        Ok(())
    }

    /// The zstd-framed payload of `entry` (starting at `body`, `len` bytes as its checked
    /// header says), decompressed and checked against the digest.
    fn decompressed(entry: &[u8], body: usize, len: u64) -> Result<Vec<u8>, StoreError> {
        // The frame names its content size too: it must agree with the header before a buffer
        // of that size is allocated (a flipped length bit would ask for an absurd one).
        match zstd::zstd_safe::get_frame_content_size(&entry[body..]) {
            Ok(Some(n)) if n == len => {}
            _ => {
                return Err(StoreError::Invalid(format!(
                    "compressed payload does not hold the {len} bytes the header says"
                )));
            }
        }
        let capacity = usize::try_from(len)
            .map_err(|_| StoreError::Invalid(format!("payload length {len} too large")))?;
        let payload = zstd::bulk::decompress(&entry[body..], capacity)
            .map_err(|e| StoreError::Invalid(format!("decompression failed: {e}")))?;
        Store::check_digest(entry, &payload)?;
        Ok(payload)
    }

    /// Builds the on-disk form of `payload` stored under `key`, compressed.
    pub fn encode_entry(key: &Key, payload: &[u8]) -> Result<Vec<u8>, StoreError> {
        let compressed = compress(payload)?;
        Ok(Store::entry_with_body(key, payload, &compressed))
    }

    fn entry_with_body(key: &Key, payload: &[u8], body: &[u8]) -> Vec<u8> {
        let mut entry = Store::entry_head(key, payload);
        entry.extend_from_slice(body);
        entry
    }

    /// The header of an entry made here for `payload` under `key` (provenance `LOCAL`).
    fn entry_head(key: &Key, payload: &[u8]) -> Vec<u8> {
        let mut entry = Vec::with_capacity(HEADER_LEN + STORED_HEADER);
        entry.extend_from_slice(MAGIC);
        entry.push(FORMAT);
        entry.extend_from_slice(&key.0);
        entry.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let digest = entry_digest(&entry, LOCAL, payload);
        entry.extend_from_slice(&digest);
        entry.push(LOCAL);
        entry
    }

    /// `entry` with a payload kept as it is ([`STORED_MAGIC`]) compressed, header and
    /// provenance unchanged (the digest covers the payload, not its encoding); any other entry
    /// as it is. Not verified here (a receiver checks every entry, [`Store::verify_raw`]).
    pub fn compressed(entry: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let body = payload_start(&entry)?;
        let Some(stored) = stored_payload(&entry[body..]) else {
            return Ok(entry);
        };
        let compressed = compress(stored?)?;
        let mut out = Vec::with_capacity(body + compressed.len());
        out.extend_from_slice(&entry[..body]);
        out.extend_from_slice(&compressed);
        Ok(out)
    }

    /// Who produced `entry`, from its header alone (magic, format and provenance checked; the
    /// digest is not: [`Store::verify_raw`] does that).
    pub fn provenance(entry: &[u8]) -> Result<Provenance, StoreError> {
        payload_start(entry)?;
        Ok(match entry[PROVENANCE_AT] {
            SIGNED => {
                let mut producer = [0u8; 32];
                let mut signature = [0u8; 64];
                producer.copy_from_slice(&entry[HEADER_LEN..HEADER_LEN + 32]);
                signature.copy_from_slice(&entry[HEADER_LEN + 32..SIGNED_HEADER_LEN]);
                Provenance::Signed {
                    producer,
                    signature,
                }
            }
            _ => Provenance::Local,
        })
    }

    /// The key and digest an entry's header names (unchecked: verify the entry first).
    pub fn header_key_digest(entry: &[u8]) -> Result<(Key, [u8; 32]), StoreError> {
        payload_start(entry)?;
        let mut key = [0u8; 32];
        let mut digest = [0u8; 32];
        key.copy_from_slice(&entry[KEY_AT..LEN_AT]);
        digest.copy_from_slice(&entry[DIGEST_AT..PROVENANCE_AT]);
        Ok((Key(key), digest))
    }

    /// `entry`, made here for `key`, as it leaves this machine signed by `producer`: checked
    /// (digest and key), re-digested with BLAKE3 (see the module docs), signed by `sign` over
    /// the [`signing_message`] it is given, and compressed. An entry that is signed already
    /// is refused (it keeps its producer's signature: [`Store::compressed`]).
    pub fn signed(
        entry: &[u8],
        key: &Key,
        producer: &[u8; 32],
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Result<Vec<u8>, StoreError> {
        let body = payload_start(entry)?;
        if entry[PROVENANCE_AT] != LOCAL {
            return Err(StoreError::Invalid("entry is signed already".into()));
        }
        let payload = Store::verify_raw(entry, key, u64::MAX)?;
        let compressed;
        let frame = match stored_payload(&entry[body..]) {
            Some(_) => {
                compressed = compress(&payload)?;
                &compressed[..]
            }
            None => &entry[body..],
        };
        let mut out = Vec::with_capacity(SIGNED_HEADER_LEN + frame.len());
        out.extend_from_slice(&entry[..DIGEST_AT]);
        let digest = entry_digest(&out, SIGNED, &payload);
        out.extend_from_slice(&digest);
        out.push(SIGNED);
        out.extend_from_slice(producer);
        out.extend_from_slice(&sign(&signing_message(key, &digest, producer)));
        out.extend_from_slice(frame);
        Ok(out)
    }

    /// `entry` (signed or not) with its payload kept as it is in a stored body, as an older
    /// peer might send it (tests of [`Store::compressed`] on received entries).
    #[cfg(test)]
    pub(crate) fn with_stored_body(entry: &[u8], key: &Key) -> Vec<u8> {
        let payload = Store::verify_raw(entry, key, u64::MAX).expect("a valid entry");
        let body = payload_start(entry).expect("a valid entry");
        let mut out = entry[..body].to_vec();
        out.extend_from_slice(&stored_header(payload.len()).expect("a small payload"));
        out.extend_from_slice(&payload);
        out
    }

    /// The first bytes of the entry under `key`: enough for [`Store::provenance`] (scans that
    /// sort entries by producer read no payload).
    pub fn read_header(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.entry_path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let mut buf = Vec::with_capacity(SIGNED_HEADER_LEN);
        file.take(SIGNED_HEADER_LEN as u64)
            .read_to_end(&mut buf)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(Some(buf))
    }

    /// Stores `payload` under `key` atomically (from [`RAW_ABOVE`] bytes on uncompressed).
    /// Returns the entry's size on disk.
    pub fn put(&self, key: &Key, payload: &[u8]) -> Result<u64, StoreError> {
        if payload.len() >= RAW_ABOVE
            && let Some(stored) = stored_header(payload.len())
        {
            let head = Store::entry_head(key, payload);
            return self.write_entry(key, &[&head, &stored, payload]);
        }
        let entry = Store::encode_entry(key, payload)?;
        self.write_entry(key, &[&entry])
    }

    /// Stores an entry received from elsewhere, after checking it completely (including that
    /// it was made for `key`).
    pub fn put_raw(&self, key: &Key, entry: &[u8]) -> Result<u64, StoreError> {
        Store::verify_raw(entry, key, u64::MAX)?;
        self.write_entry(key, &[entry])
    }

    /// Writes the entry made of `parts` under `key` atomically and counts it.
    fn write_entry(&self, key: &Key, parts: &[&[u8]]) -> Result<u64, StoreError> {
        let path = self.entry_path(key);
        let dir = path.parent().unwrap_or(&self.root);
        if let Err(e) = fs::create_dir(dir)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            return Err(StoreError::io(dir, e));
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| StoreError::io(dir, e))?;
        for part in parts {
            tmp.write_all(part).map_err(|e| StoreError::io(dir, e))?;
        }
        let size = parts.iter().map(|p| p.len() as u64).sum();
        // Rename under the counter lock, so that two writers of one key count it once.
        let usage = self.with_usage(|u| {
            let replaced = fs::metadata(&path).map(|m| m.len()).ok();
            tmp.persist(&path)
                .map_err(|e| StoreError::io(&path, e.error))?;
            match replaced {
                Some(old) => u.bytes = u.bytes.saturating_sub(old),
                None => u.entries += 1,
            }
            u.bytes += size;
            Ok(())
        })?;
        if usage.bytes > self.max_size {
            self.evict()?;
        }
        Ok(size)
    }

    /// True when an entry for `key` exists (not verified).
    pub fn contains(&self, key: &Key) -> bool {
        self.entry_path(key).exists()
    }

    /// Removes the entry for `key`; returns whether there was one.
    pub fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        let path = self.entry_path(key);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io(&path, e)),
        }
        self.adjust_usage(|u| {
            u.entries = u.entries.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(size);
        })?;
        Ok(true)
    }

    /// Removes every entry. Returns what was removed.
    pub fn clear(&self) -> Result<Usage, StoreError> {
        let _guard = self.lock_file(EVICT_LOCK)?;
        let mut removed = Usage::default();
        for (path, meta, is_temp) in self.scan()? {
            if fs::remove_file(&path).is_ok() && !is_temp {
                removed.entries += 1;
                removed.bytes += meta.len();
            }
        }
        self.adjust_usage(|u| *u = Usage::default())?;
        Ok(removed)
    }

    /// Entries and bytes stored, from the counter file (no scan).
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let path = self.root.join(USAGE_FILE);
        match fs::read(&path) {
            Ok(bytes) => Ok(parse_usage(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Usage::default()),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Every key in the store (a full directory scan: for handoff and repair, never for hits).
    pub fn keys(&self) -> Result<Vec<Key>, StoreError> {
        let mut keys = Vec::new();
        for (path, _, is_temp) in self.scan()? {
            if is_temp {
                continue;
            }
            if let Some(key) = key_of_path(&path) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Recounts the store from disk, repairing the counter file.
    pub fn recount(&self) -> Result<Usage, StoreError> {
        let _guard = self.lock_file(EVICT_LOCK)?;
        let mut usage = Usage::default();
        for (_, meta, is_temp) in self.scan()? {
            if !is_temp {
                usage.entries += 1;
                usage.bytes += meta.len();
            }
        }
        self.adjust_usage(|u| *u = usage)?;
        Ok(usage)
    }

    /// Entries evicted from this store so far, by any process (for `/metrics`).
    pub fn evictions(&self) -> u64 {
        fs::read_to_string(self.root.join(EVICTIONS))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Brings the store under `EVICT_TARGET` of its cap, oldest entries first. Only one
    /// process evicts at a time; others skip, since that one is already doing the work.
    fn evict(&self) -> Result<(), StoreError> {
        let Some(_guard) = self.try_lock_file(EVICT_LOCK)? else {
            return Ok(());
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut total = Usage::default();
        for (path, meta, is_temp) in self.scan()? {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if is_temp {
                if now.duration_since(modified).is_ok_and(|a| a > STALE_TEMP) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            total.entries += 1;
            total.bytes += meta.len();
            entries.push((modified, meta.len(), path));
        }
        entries.sort();
        let target = (self.max_size as f64 * EVICT_TARGET) as u64;
        let mut evicted = 0u64;
        for (_, size, path) in entries {
            if total.bytes <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total.bytes -= size;
                total.entries -= 1;
                evicted += 1;
            }
        }
        tracing::debug!(evicted, ?total, "cache store evicted old entries");
        // Only the holder of the evict lock writes the running total, so a fixed temporary
        // name is safe; the rename keeps readers from seeing a half-written number.
        let tmp = self.root.join(".evictions.tmp");
        if fs::write(&tmp, format!("{}\n", self.evictions() + evicted)).is_ok() {
            let _ = fs::rename(&tmp, self.root.join(EVICTIONS));
        }
        self.adjust_usage(|u| *u = total)?;
        self.trim_aux(now);
        Ok(())
    }

    /// Keeps the auxiliary directories under their share of the cap (best effort).
    fn trim_aux(&self, now: SystemTime) {
        let mut files = Vec::new();
        let mut total = 0u64;
        for dir in &self.aux {
            walk_files(dir, 2, &mut |path, meta| {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if meta.len() == 0 {
                    if now.duration_since(modified).is_ok_and(|a| a > STALE_LOCK) {
                        let _ = fs::remove_file(path);
                    }
                    return;
                }
                total += meta.len();
                files.push((modified, meta.len(), path.to_path_buf()));
            });
        }
        let budget = self.max_size / AUX_SHARE;
        if total <= budget {
            return;
        }
        files.sort();
        for (_, size, path) in files {
            if total <= budget {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= size;
            }
        }
    }

    /// All files under the store's 256 fan-out directories: (path, metadata, is_temp).
    fn scan(&self) -> Result<Vec<(PathBuf, fs::Metadata, bool)>, StoreError> {
        let mut out = Vec::new();
        let top = match fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) => return Err(StoreError::io(&self.root, e)),
        };
        for sub in top.flatten() {
            let name = sub.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let Ok(meta) = f.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let is_temp = f.file_name().to_string_lossy().starts_with(".tmp");
                out.push((f.path(), meta, is_temp));
            }
        }
        Ok(out)
    }

    /// Read-modify-write of the counter file under an exclusive lock.
    fn adjust_usage(&self, f: impl FnOnce(&mut Usage)) -> Result<Usage, StoreError> {
        self.with_usage(|u| {
            f(u);
            Ok(())
        })
    }

    /// Runs `f` while holding the counter file's lock; writes back the counters it leaves.
    fn with_usage(
        &self,
        f: impl FnOnce(&mut Usage) -> Result<(), StoreError>,
    ) -> Result<Usage, StoreError> {
        let path = self.root.join(USAGE_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        crate::lockfile::lock(&file).map_err(|e| StoreError::io(&path, e))?;
        let mut buf = [0u8; 16];
        let n = file.read_at(&mut buf, 0).unwrap_or(0);
        let mut usage = parse_usage(&buf[..n]);
        f(&mut usage)?;
        buf[..8].copy_from_slice(&usage.entries.to_le_bytes());
        buf[8..].copy_from_slice(&usage.bytes.to_le_bytes());
        file.write_all_at(&buf, 0)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(usage)
        // The lock is released when `file` is closed.
    }

    fn open_lock_file(&self, name: &str) -> Result<(File, PathBuf), StoreError> {
        let path = self.root.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok((file, path))
    }

    /// Waits for an exclusive lock on `name`; released when the file is dropped.
    fn lock_file(&self, name: &str) -> Result<File, StoreError> {
        let (file, path) = self.open_lock_file(name)?;
        crate::lockfile::lock(&file).map_err(|e| StoreError::io(&path, e))?;
        Ok(file)
    }

    /// The exclusive lock on `name` if nobody holds it, else `None`.
    fn try_lock_file(&self, name: &str) -> Result<Option<File>, StoreError> {
        let (file, path) = self.open_lock_file(name)?;
        match crate::lockfile::try_lock(&file) {
            Ok(true) => Ok(Some(file)),
            Ok(false) => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }
}

/// Calls `f` for every regular file under `dir`, at most `depth` directory levels down.
fn walk_files(dir: &Path, depth: u32, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() && depth > 0 {
            walk_files(&e.path(), depth - 1, f);
        } else if meta.is_file() {
            f(&e.path(), &meta);
        }
    }
}

/// Where the compressed payload of `entry` begins, after checking magic, format and that the
/// provenance block is whole.
fn payload_start(entry: &[u8]) -> Result<usize, StoreError> {
    if entry.len() < HEADER_LEN {
        return Err(StoreError::Invalid(format!(
            "truncated: {} bytes is shorter than the header",
            entry.len()
        )));
    }
    if &entry[..4] != MAGIC {
        return Err(StoreError::Invalid("bad magic".into()));
    }
    if entry[4] != FORMAT {
        return Err(StoreError::OtherFormat(entry[4]));
    }
    let start = match entry[PROVENANCE_AT] {
        LOCAL => HEADER_LEN,
        SIGNED => SIGNED_HEADER_LEN,
        other => {
            return Err(StoreError::Invalid(format!(
                "unknown provenance kind {other}"
            )));
        }
    };
    if entry.len() < start {
        return Err(StoreError::Invalid(format!(
            "truncated: {} bytes is shorter than the signed header",
            entry.len()
        )));
    }
    Ok(start)
}

/// The payload length an entry's header names (the header's size checked by
/// [`payload_start`]).
fn header_payload_len(entry: &[u8]) -> u64 {
    let mut len = [0u8; 8];
    len.copy_from_slice(&entry[LEN_AT..DIGEST_AT]);
    u64::from_le_bytes(len)
}

/// The digest of an entry: its header up to the digest (magic, format, key, length), then the
/// payload; BLAKE3 for a signed entry, XXH3-128 (zero-padded) for one made here (module docs).
fn entry_digest(head: &[u8], provenance: u8, payload: &[u8]) -> [u8; 32] {
    if provenance == SIGNED {
        let mut h = blake3::Hasher::new();
        h.update(head);
        h.update(payload);
        return h.finalize().into();
    }
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    h.update(head);
    h.update(payload);
    let mut digest = [0u8; 32];
    digest[..16].copy_from_slice(&h.digest128().to_le_bytes());
    digest
}

fn parse_usage(bytes: &[u8]) -> Usage {
    if bytes.len() < 16 {
        return Usage::default();
    }
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    b.copy_from_slice(&bytes[8..16]);
    Usage {
        entries: u64::from_le_bytes(a),
        bytes: u64::from_le_bytes(b),
    }
}

fn key_of_path(path: &Path) -> Option<Key> {
    let file = path.file_name()?.to_str()?;
    let dir = path.parent()?.file_name()?.to_str()?;
    format!("{dir}{file}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store"), max).unwrap();
        (dir, s)
    }

    #[test]
    fn put_get_round_trip_and_usage() {
        let (_d, s) = store(1 << 30);
        let k = Key::digest(b"a");
        assert_eq!(s.get(&k).unwrap(), None);
        let size = s.put(&k, b"hello world").unwrap();
        assert_eq!(s.get(&k).unwrap().as_deref(), Some(&b"hello world"[..]));
        assert_eq!(
            s.usage().unwrap(),
            Usage {
                entries: 1,
                bytes: size
            }
        );
        // Replacing keeps one entry.
        let size2 = s.put(&k, b"hello again, world").unwrap();
        assert_eq!(
            s.usage().unwrap(),
            Usage {
                entries: 1,
                bytes: size2
            }
        );
        assert_eq!(s.keys().unwrap(), vec![k]);
        assert!(s.remove(&k).unwrap());
        assert_eq!(s.usage().unwrap(), Usage::default());
    }

    #[test]
    fn large_payloads_are_stored_as_they_are_and_leave_compressed() {
        let (_d, s) = store(1 << 30);
        for n in [
            RAW_ABOVE,
            RAW_ABOVE + 1,
            RAW_ABOVE + (128 << 10) - 1,
            3 * RAW_ABOVE + 5,
        ] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let k = Key::digest(&n.to_le_bytes());
            let size = s.put(&k, &payload).unwrap();
            let raw = s.get_raw(&k).unwrap().unwrap();
            assert_eq!(size as usize, HEADER_LEN + STORED_HEADER + n, "{n}");
            // The payload as it is, after a skippable-frame header.
            assert_eq!(raw[HEADER_LEN..HEADER_LEN + 4], STORED_MAGIC);
            assert_eq!(raw[HEADER_LEN + STORED_HEADER..], payload[..]);
            assert_eq!(s.get(&k).unwrap().as_deref(), Some(&payload[..]));
            // A hit's payload: the entry's own bytes (mapped), checked.
            let (p, prov) = s.get_payload(&k).unwrap().unwrap();
            assert_eq!(p, payload);
            assert_eq!(prov, Provenance::Local);
            let sent = Store::compressed(raw.clone()).unwrap();
            assert!(sent.len() < raw.len() / 4, "{n}: {} bytes", sent.len());
            assert_eq!(sent[..HEADER_LEN], raw[..HEADER_LEN]);
            assert!(stored_payload(&sent[HEADER_LEN..]).is_none());
            assert_eq!(Store::verify_raw(&sent, &k, u64::MAX).unwrap(), payload);
            // Compressed once: the second time is a no-op.
            assert_eq!(Store::compressed(sent.clone()).unwrap(), sent);
        }
        // A flipped byte of the payload, a length field that disagrees with the file, a
        // truncated file: corrupt, removed, never returned (mapped or read).
        let payload: Vec<u8> = (0..2 * RAW_ABOVE + 7).map(|i| (i % 241) as u8).collect();
        let k = Key::digest(b"corrupt stored");
        let path = s.entry_path(&k);
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 4] = [
            ("payload byte", |raw| {
                raw[HEADER_LEN + STORED_HEADER + 1000] ^= 0x40
            }),
            ("last byte", |raw| *raw.last_mut().unwrap() ^= 1),
            ("length field", |raw| raw[HEADER_LEN + 4] ^= 1),
            ("truncated", |raw| raw.truncate(raw.len() - 1)),
        ];
        for (what, damage) in damages {
            s.put(&k, &payload).unwrap();
            let mut raw = fs::read(&path).unwrap();
            damage(&mut raw);
            assert!(Store::verify_raw(&raw, &k, u64::MAX).is_err(), "{what}");
            fs::write(&path, &raw).unwrap();
            assert!(
                matches!(s.get_payload(&k), Err(StoreError::Corrupt { .. })),
                "{what}"
            );
            assert!(!path.exists(), "{what}");
        }
        // Small payloads are compressed in the store already.
        let k = Key::digest(b"small");
        s.put(&k, &vec![0u8; RAW_ABOVE - 1]).unwrap();
        let raw = s.get_raw(&k).unwrap().unwrap();
        assert!(raw.len() < 1000);
        assert_eq!(Store::compressed(raw.clone()).unwrap(), raw);
        // A corrupt stored entry stays corrupt: its receiver refuses it.
        let k = Key::digest(b"big");
        s.put(&k, &vec![1u8; RAW_ABOVE]).unwrap();
        let mut raw = s.get_raw(&k).unwrap().unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let sent = Store::compressed(raw).unwrap();
        assert!(Store::verify_raw(&sent, &k, u64::MAX).is_err());
        // A signed entry keeps its provenance through compression.
        s.put(&k, &vec![1u8; RAW_ABOVE]).unwrap();
        let raw = s.get_raw(&k).unwrap().unwrap();
        let signed = Store::with_stored_body(
            &Store::signed(&raw, &k, &[3u8; 32], |_| [4u8; 64]).unwrap(),
            &k,
        );
        assert_eq!(
            Store::verify_raw(&signed, &k, u64::MAX).unwrap(),
            vec![1u8; RAW_ABOVE]
        );
        let sent = Store::compressed(signed.clone()).unwrap();
        assert_eq!(sent[..SIGNED_HEADER_LEN], signed[..SIGNED_HEADER_LEN]);
        assert_eq!(
            Store::verify_raw(&sent, &k, u64::MAX).unwrap(),
            vec![1u8; RAW_ABOVE]
        );
    }

    #[test]
    fn local_entries_carry_xxh3_and_signed_ones_blake3() {
        let (_d, s) = store(1 << 30);
        for n in [10, RAW_ABOVE + 3] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 239) as u8).collect();
            let k = Key::digest(&n.to_le_bytes());
            s.put(&k, &payload).unwrap();
            let local = s.get_raw(&k).unwrap().unwrap();
            let mut head = local[..DIGEST_AT].to_vec();
            let mut h = xxhash_rust::xxh3::Xxh3Default::new();
            h.update(&head);
            h.update(&payload);
            assert_eq!(
                local[DIGEST_AT..DIGEST_AT + 16],
                h.digest128().to_le_bytes()
            );
            assert_eq!(local[DIGEST_AT + 16..PROVENANCE_AT], [0u8; 16]);
            // Signed as it leaves: BLAKE3 under the signature, compressed, still valid.
            let mut message = Vec::new();
            let signed = Store::signed(&local, &k, &[7u8; 32], |m| {
                message = m.to_vec();
                [9u8; 64]
            })
            .unwrap();
            head.extend_from_slice(&payload);
            let (named, digest) = Store::header_key_digest(&signed).unwrap();
            assert_eq!(named, k);
            assert_eq!(digest, <[u8; 32]>::from(blake3::hash(&head)));
            assert_eq!(message, signing_message(&k, &digest, &[7u8; 32]));
            assert!(stored_payload(&signed[SIGNED_HEADER_LEN..]).is_none());
            assert_eq!(Store::verify_raw(&signed, &k, u64::MAX).unwrap(), payload);
            assert!(matches!(
                Store::provenance(&signed).unwrap(),
                Provenance::Signed { producer, signature }
                    if producer == [7u8; 32] && signature == [9u8; 64]
            ));
            // Once signed, it is not signed again; a signed entry's header relabelled as made
            // here (its BLAKE3 digest then checked as XXH3) fails its check.
            assert!(Store::signed(&signed, &k, &[7u8; 32], |_| [0u8; 64]).is_err());
            let mut relabelled = signed[..HEADER_LEN].to_vec();
            relabelled[PROVENANCE_AT] = LOCAL;
            relabelled.extend_from_slice(&signed[SIGNED_HEADER_LEN..]);
            assert!(Store::verify_raw(&relabelled, &k, u64::MAX).is_err());
            // A damaged or misnamed entry is not signed.
            let mut bad = local.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(Store::signed(&bad, &k, &[7u8; 32], |_| [0u8; 64]).is_err());
            let other = Key::digest(b"other");
            assert!(Store::signed(&local, &other, &[7u8; 32], |_| [0u8; 64]).is_err());
        }
    }

    #[test]
    fn corrupt_entry_is_removed_and_reported() {
        let (_d, s) = store(1 << 30);
        let k = Key::digest(b"a");
        s.put(&k, &vec![7u8; 10_000]).unwrap();
        let path = s.entry_path(&k);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(s.get(&k), Err(StoreError::Corrupt { .. })));
        assert!(!path.exists());
        assert_eq!(s.get(&k).unwrap(), None);
    }

    #[test]
    fn truncated_and_garbage_entries_are_rejected() {
        let k = Key::digest(b"k");
        let entry = Store::encode_entry(&k, b"payload").unwrap();
        for cut in 0..entry.len() {
            assert!(
                Store::verify_raw(&entry[..cut], &k, u64::MAX).is_err(),
                "cut {cut}"
            );
        }
        assert!(
            Store::verify_raw(
                b"DSTC\x03garbage-garbage-garbage-garbage-garbage-garbage-garbage-garbage-garbage",
                &k,
                1 << 20
            )
            .is_err()
        );
        assert_eq!(Store::verify_raw(&entry, &k, u64::MAX).unwrap(), b"payload");
        // Every byte of the header is checked (the payload by its digest).
        for i in 0..HEADER_LEN {
            let mut bad = entry.clone();
            bad[i] ^= 0x01;
            assert!(Store::verify_raw(&bad, &k, u64::MAX).is_err(), "byte {i}");
        }
    }

    #[test]
    fn an_entry_is_bound_to_its_key() {
        let (_d, s) = store(1 << 30);
        let (a, b) = (Key::digest(b"a"), Key::digest(b"b"));
        s.put(&a, b"object of a").unwrap();
        s.put(&b, b"object of b").unwrap();
        // Swap the two files on disk: neither is returned under the other's name.
        let (pa, pb) = (s.entry_path(&a), s.entry_path(&b));
        let (ea, eb) = (fs::read(&pa).unwrap(), fs::read(&pb).unwrap());
        fs::write(&pa, &eb).unwrap();
        fs::write(&pb, &ea).unwrap();
        assert!(matches!(
            Store::verify_raw(&eb, &a, u64::MAX),
            Err(StoreError::WrongKey { .. })
        ));
        assert!(matches!(s.get(&a), Err(StoreError::Corrupt { .. })));
        assert!(matches!(s.get_checked(&b), Err(StoreError::Corrupt { .. })));
        assert!(!pa.exists() && !pb.exists(), "swapped entries kept");
        assert_eq!(s.get(&a).unwrap(), None);
        // An entry received for one key is refused under another.
        assert!(matches!(
            s.put_raw(&a, &eb),
            Err(StoreError::WrongKey { .. })
        ));
        assert!(!s.contains(&a));
    }

    #[test]
    fn an_entry_of_another_format_is_a_plain_miss() {
        let (_d, s) = store(1 << 30);
        let k = Key::digest(b"old");
        s.put(&k, b"payload").unwrap();
        let path = s.entry_path(&k);
        let mut bytes = fs::read(&path).unwrap();
        bytes[4] = 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(s.get(&k).unwrap(), None);
        assert!(!path.exists());
    }

    #[test]
    fn claimed_size_over_limit_is_refused_before_decompressing() {
        let k = Key::digest(b"k");
        let mut entry = Store::encode_entry(&k, &[0u8; 100]).unwrap();
        entry[LEN_AT..DIGEST_AT].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(matches!(
            Store::verify_raw(&entry, &k, 1 << 20),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn put_raw_validates() {
        let (_d, s) = store(1 << 30);
        let k = Key::digest(b"a");
        assert!(
            s.put_raw(&k, b"not an entry at all, not even close.....")
                .is_err()
        );
        assert!(!s.contains(&k));
        let entry = Store::encode_entry(&k, b"x").unwrap();
        s.put_raw(&k, &entry).unwrap();
        assert_eq!(s.get_raw(&k).unwrap().unwrap(), entry);
    }

    #[test]
    fn eviction_keeps_the_store_under_its_cap_dropping_oldest() {
        // Incompressible payloads so sizes are predictable.
        let payload = |i: u64| -> Vec<u8> {
            let mut v = Vec::new();
            let mut x = i.wrapping_mul(0x9E3779B97F4A7C15) | 1;
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.extend_from_slice(&x.to_le_bytes());
            }
            v
        };
        let (_d, s) = store(40_000);
        let mut keys = Vec::new();
        for i in 0..10u64 {
            let k = Key::digest(&i.to_le_bytes());
            s.put(&k, &payload(i)).unwrap();
            // Make age order explicit.
            let f = File::options().write(true).open(s.entry_path(&k)).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i))
                .unwrap();
            keys.push(k);
        }
        let u = s.usage().unwrap();
        assert!(u.bytes <= 40_000, "{u:?}");
        assert_eq!(s.recount().unwrap(), u);
        // The newest entry survives.
        assert!(s.contains(&keys[9]));
        assert!(!s.contains(&keys[0]));
        let gone = keys.iter().filter(|k| !s.contains(k)).count() as u64;
        assert_eq!(s.evictions(), gone, "every eviction is counted");
    }

    #[test]
    fn eviction_also_trims_auxiliary_directories() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        let locks = dir.path().join("locks");
        fs::create_dir_all(manifests.join("ab")).unwrap();
        fs::create_dir_all(&locks).unwrap();
        for i in 0..50 {
            fs::write(manifests.join("ab").join(format!("m{i}")), [0u8; 1000]).unwrap();
        }
        let old_lock = locks.join("old");
        fs::write(&old_lock, b"").unwrap();
        File::options()
            .write(true)
            .open(&old_lock)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        fs::write(locks.join("fresh"), b"").unwrap();
        let s = Store::open(&dir.path().join("store"), 20_000)
            .unwrap()
            .with_aux_dirs(vec![manifests.clone(), locks.clone()]);
        // Push the store over its cap so that it evicts.
        for i in 0..30u32 {
            let payload: Vec<u8> = (0..2000u32)
                .map(|j| (j * 7 + i * 13) as u8 ^ (j >> 3) as u8)
                .collect();
            s.put(&Key::digest(&i.to_le_bytes()), &payload).unwrap();
        }
        let mut aux = 0;
        walk_files(&manifests, 2, &mut |_, m| aux += m.len());
        assert!(aux <= 2_000, "manifests not trimmed: {aux} bytes");
        assert!(!old_lock.exists(), "stale lock kept");
        assert!(locks.join("fresh").exists(), "fresh lock removed");
    }

    #[test]
    fn clear_empties_everything() {
        let (_d, s) = store(1 << 30);
        for i in 0..5u8 {
            s.put(&Key::digest(&[i]), &[i; 100]).unwrap();
        }
        let removed = s.clear().unwrap();
        assert_eq!(removed.entries, 5);
        assert!(s.keys().unwrap().is_empty());
        assert_eq!(s.usage().unwrap(), Usage::default());
    }

    #[test]
    fn concurrent_writers_keep_counters_exact() {
        let (_d, s) = store(1 << 30);
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..20u8 {
                        s.put(&Key::digest(&[t, i]), &[i; 300]).unwrap();
                        // Everyone also writes one shared key.
                        s.put(&Key::digest(b"shared"), &[t; 300]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let counted = s.usage().unwrap();
        assert_eq!(counted.entries, 8 * 20 + 1);
        assert_eq!(s.recount().unwrap(), counted);
        assert!(s.get(&Key::digest(b"shared")).unwrap().is_some());
    }
}
