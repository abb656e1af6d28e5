//! One compile per key across processes: a `flock`ed file per key under `$DISTC_DIR/locks/`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// An exclusive `flock` on `$DISTC_DIR/locks/<key>`, released on drop (and by the kernel if the
/// holder dies, so a crashed compile never blocks others). The lock file stays: removing it
/// while locked could let a newcomer lock a fresh inode while a waiter still locks the old one
/// (both would compile; harmless but wasted). Stale lock files are trimmed with the store.
pub struct KeyLock {
    _file: File,
}

/// How long a process waits for another one compiling the same key before compiling itself.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

impl KeyLock {
    /// Takes the lock for `name`, waiting at most `max_wait`. `Ok(Some(lock))` = ours (perhaps
    /// after waiting: `waited` tells), `Ok(None)` = gave up waiting.
    pub fn acquire(
        dir: &Path,
        name: &str,
        max_wait: Duration,
    ) -> io::Result<(Option<KeyLock>, bool)> {
        let locks = dir.join("locks");
        let path = locks.join(name);
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&locks)?;
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)?
            }
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        let mut waited = false;
        let mut pause = Duration::from_millis(2);
        loop {
            if crate::util::try_lock(&file)? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_excludes_and_times_out() {
        let d = tempfile::tempdir().unwrap();
        let (a, waited) = KeyLock::acquire(d.path(), "k", Duration::from_secs(1)).unwrap();
        assert!(a.is_some() && !waited);
        // flock locks are per open file description, so a second open in this process conflicts.
        let (b, waited) = KeyLock::acquire(d.path(), "k", Duration::from_millis(30)).unwrap();
        assert!(b.is_none() && waited);
        drop(a);
        let (c, _) = KeyLock::acquire(d.path(), "k", Duration::from_millis(30)).unwrap();
        assert!(c.is_some());
    }
}
