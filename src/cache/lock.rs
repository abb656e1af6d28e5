//! One compile per key across processes: an exclusive lock per key, bounded wait, released by
//! the kernel if the holder dies.
//!
//! On Linux every key locks one byte of the one file `$DISTC_DIR/key.locks` (an open file
//! description lock, `F_OFD_SETLK`, at an offset given by the key's digest), so a miss creates
//! no file for its lock: on ext4 under load, allocating an inode is a large share of a small
//! compile's miss. Two keys whose offsets collide only wait for each other; the waiter then
//! finds no result under its own key and compiles. Elsewhere, a `flock`ed file per key under
//! `$DISTC_DIR/locks/`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// The lock of one key, held until drop. A per-key lock file stays after use: removing it
/// while locked could let a newcomer lock a fresh inode while a waiter still locks the old one
/// (both would compile; harmless but wasted). Stale lock files are trimmed with the store.
pub struct KeyLock {
    _file: File,
}

/// How long a process waits for another one compiling the same key before compiling itself.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The file whose bytes are the keys' locks.
#[cfg(target_os = "linux")]
const LOCK_FILE: &str = "key.locks";

impl KeyLock {
    /// Takes the lock for `name`, waiting at most `max_wait`. `Ok(Some(lock))` = ours (perhaps
    /// after waiting: `waited` tells), `Ok(None)` = gave up waiting.
    pub fn acquire(
        dir: &Path,
        name: &str,
        max_wait: Duration,
    ) -> io::Result<(Option<KeyLock>, bool)> {
        let (file, slot) = open(dir, name)?;
        let start = Instant::now();
        let mut waited = false;
        let mut pause = Duration::from_millis(2);
        loop {
            if try_lock(&file, slot)? {
                return Ok((Some(KeyLock { _file: file }), waited));
            }
            if start.elapsed() >= max_wait {
                return Ok((None, waited));
            }
            waited = true;
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Opens `path` for locking (creating it, and with `mkdir`, its directory).
fn open_lock_file(path: &Path, mkdir: Option<&Path>) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
    };
    match (open(), mkdir) {
        (Err(e), Some(d)) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(d)?;
            open()
        }
        (r, _) => r,
    }
}

/// The lock file of `name` and the byte of it that is the lock.
#[cfg(target_os = "linux")]
fn open(dir: &Path, name: &str) -> io::Result<(File, i64)> {
    let d = distc_peer::Key::digest(name.as_bytes()).0;
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // Any offset from 0 to 2^62: far below the largest file offset.
    let slot = (u64::from_le_bytes(b) >> 2) as i64;
    Ok((open_lock_file(&dir.join(LOCK_FILE), None)?, slot))
}

#[cfg(not(target_os = "linux"))]
fn open(dir: &Path, name: &str) -> io::Result<(File, i64)> {
    let locks = dir.join("locks");
    Ok((open_lock_file(&locks.join(name), Some(&locks))?, 0))
}

#[cfg(target_os = "linux")]
fn try_lock(file: &File, slot: i64) -> io::Result<bool> {
    distc_peer::lockfile::try_lock_byte(file, slot)
}

#[cfg(not(target_os = "linux"))]
fn try_lock(file: &File, _slot: i64) -> io::Result<bool> {
    distc_peer::lockfile::try_lock(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_excludes_and_times_out() {
        let d = tempfile::tempdir().unwrap();
        let (a, waited) = KeyLock::acquire(d.path(), "k", Duration::from_secs(1)).unwrap();
        assert!(a.is_some() && !waited);
        // The locks are per open file description, so a second open in this process conflicts.
        let (b, waited) = KeyLock::acquire(d.path(), "k", Duration::from_millis(30)).unwrap();
        assert!(b.is_none() && waited);
        // Another key is not held up.
        let (other, waited) = KeyLock::acquire(d.path(), "j", Duration::from_millis(30)).unwrap();
        assert!(other.is_some() && !waited);
        drop(a);
        let (c, _) = KeyLock::acquire(d.path(), "k", Duration::from_millis(30)).unwrap();
        assert!(c.is_some());
        // A miss creates no file per key.
        #[cfg(target_os = "linux")]
        assert!(!d.path().join("locks").exists());
    }
}
