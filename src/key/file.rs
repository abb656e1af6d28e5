//! A file as a key input: its content digest and the stat taken when it was hashed, with the
//! one rule that says when the stat alone proves the content unchanged. Direct mode's
//! manifests (C headers, Rust sources) record files this way; memos of a binary's digest key
//! on [`stamp`].

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A file's stat is trusted only if it was this much older than the recording compile: a
/// later same-size edit then necessarily changes mtime, even on coarse-timestamp filesystems.
pub const TRUST_AGE: Duration = Duration::from_secs(2);

/// A timestamp as (seconds, nanoseconds).
pub type Time = (i64, i64);

/// mtime and ctime of `md`.
pub fn times(md: &fs::Metadata) -> (Time, Time) {
    ((md.mtime(), md.mtime_nsec()), (md.ctime(), md.ctime_nsec()))
}

/// `t` as a [`Time`] (the epoch for anything before it).
pub fn time_of(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
        Err(_) => (0, 0),
    }
}

/// The stat fields that must all be unchanged for a memoised digest to be trusted: size,
/// mtime, ctime (both with nanoseconds) and inode. Shared by every memo of a file's digest.
pub fn stamp(md: &fs::Metadata) -> String {
    format!(
        "{} {} {} {} {} {}",
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
        md.ino()
    )
}

/// SHA-256 of a file's contents.
pub fn digest(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

/// When the compile whose inputs are recorded began: a file changed since then may not be
/// what the compiler read, and one changed less than [`TRUST_AGE`] before it is re-hashed
/// on every lookup (its stat cannot tell a later same-size edit apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: Time,
    trust_before: Time,
}

impl Window {
    pub fn since(started: SystemTime) -> Window {
        Window {
            start: time_of(started),
            trust_before: time_of(started.checked_sub(TRUST_AGE).unwrap_or(UNIX_EPOCH)),
        }
    }

    /// No compile to compare with: nothing is too new, nothing is trusted.
    pub fn unbounded() -> Window {
        Window {
            start: (i64::MAX, 0),
            trust_before: (i64::MIN, 0),
        }
    }

    /// What is older than this is trusted.
    pub fn trust_before(&self) -> Time {
        self.trust_before
    }

    /// Changed since the compile began.
    pub fn modified(&self, mtime: Time, ctime: Time) -> bool {
        mtime >= self.start || ctime >= self.start
    }

    /// Old enough for its stat to prove its content.
    pub fn trusts(&self, mtime: Time, ctime: Time) -> bool {
        mtime < self.trust_before && ctime < self.trust_before
    }
}

/// A file's content digest, the stat taken right after reading it, and whether that stat
/// alone proves the content unchanged (see [`Window`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub digest: [u8; 32],
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    /// Stat equality alone proves the content unchanged.
    pub trusted: bool,
}

impl FileRecord {
    /// The record of a file with content `digest` and stat `md`, judged in `window`; `None`
    /// when it changed since the compile began.
    pub fn new(digest: [u8; 32], md: &fs::Metadata, window: &Window) -> Option<FileRecord> {
        let (mtime, ctime) = times(md);
        if window.modified(mtime, ctime) {
            return None;
        }
        Some(FileRecord {
            digest,
            size: md.len(),
            mtime,
            ctime,
            trusted: window.trusts(mtime, ctime),
        })
    }

    /// This record judged again in `window` (a record made before the window was known).
    pub fn within(&self, window: &Window) -> Option<FileRecord> {
        if window.modified(self.mtime, self.ctime) {
            return None;
        }
        Some(FileRecord {
            trusted: window.trusts(self.mtime, self.ctime),
            ..self.clone()
        })
    }

    /// Whether `path` still holds this content: a regular file of the same size whose stat
    /// is unchanged and trusted, or whose content hashes the same.
    pub fn matches(&self, path: &Path) -> bool {
        let Ok(md) = fs::metadata(path) else {
            return false;
        };
        if !md.is_file() || md.len() != self.size {
            return false;
        }
        if self.trusted && times(&md) == (self.mtime, self.ctime) {
            return true;
        }
        digest(path).is_ok_and(|d| d == self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_needs_age_and_an_unchanged_stat() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.h");
        fs::write(&p, b"int x;\n").unwrap();
        let md = fs::metadata(&p).unwrap();
        let dg = digest(&p).unwrap();
        // Written just now: too new for a compile that began a second ago.
        let past = Window::since(SystemTime::now() - Duration::from_secs(1));
        assert!(FileRecord::new(dg, &md, &past).is_none());
        // Recorded by a compile that begins now: not yet trusted, so re-hashed.
        let now = Window::since(SystemTime::now() + Duration::from_millis(10));
        let fresh = FileRecord::new(dg, &md, &now).unwrap();
        assert!(!fresh.trusted);
        assert!(fresh.matches(&p));
        // A compile far later trusts the stat, even over a wrong digest: stat alone decides.
        let later = Window::since(SystemTime::now() + Duration::from_secs(10));
        let old = FileRecord::new([0; 32], &md, &later).unwrap();
        assert!(old.trusted && old.matches(&p));
        // An untrusted record with a wrong digest is re-hashed and rejected.
        assert!(
            !FileRecord {
                trusted: false,
                ..old.clone()
            }
            .matches(&p)
        );
        // Another size never matches.
        fs::write(&p, b"int xy;\n").unwrap();
        assert!(!old.matches(&p));
        assert!(!Window::unbounded().modified((0, 0), (0, 0)));
        assert!(!Window::unbounded().trusts((0, 0), (0, 0)));
    }
}
