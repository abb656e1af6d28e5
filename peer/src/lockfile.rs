//! Advisory locks, the one home for both packages: whole-file locks with `flock(2)` semantics
//! through std's `File::lock` family (held until unlocked or the file is closed, released by
//! the kernel if the holder dies), with a wait that a signal interrupts retried; and on Linux
//! locks of one byte of a file ([`try_lock_byte`]), so many keys share one lock file.

use std::fs::{File, TryLockError};
use std::io;

/// Retries `op` while a signal interrupts it.
fn retry(mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Takes the exclusive lock of `f` if no one holds it now (`false` if someone does).
pub fn try_lock(f: &File) -> io::Result<bool> {
    match f.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the exclusive lock of byte `offset` of `f` if no other open file description holds
/// it (`false` if one does): an open file description lock (`F_OFD_SETLK`), held until `f` is
/// closed and released by the kernel if the holder dies, like [`try_lock`]'s.
#[cfg(target_os = "linux")]
pub fn try_lock_byte(f: &File, offset: i64) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: an all-zero `flock` is a valid value of the plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset;
    fl.l_len = 1;
    loop {
        // SAFETY: fcntl on a valid open descriptor with a pointer to a live `flock`.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// True when another open file description holds a lock on byte `offset` of `f`
/// (`F_OFD_GETLK`: asks, takes nothing).
#[cfg(target_os = "linux")]
pub fn byte_locked(f: &File, offset: i64) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: an all-zero `flock` is a valid value of the plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset;
    fl.l_len = 1;
    // SAFETY: fcntl on a valid open descriptor with a pointer to a live `flock`.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    r == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
}

/// True when someone holds an exclusive lock on `f` (probed with a shared lock that is
/// released at once).
pub fn is_locked(f: &File) -> bool {
    match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Waits for the exclusive lock of `f`; held until `f` is closed.
pub fn lock(f: &File) -> io::Result<()> {
    retry(|| f.lock())
}

/// An advisory lock held until drop.
pub struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    /// Waits for the exclusive lock of `f`.
    pub fn exclusive(f: &'a File) -> io::Result<Flock<'a>> {
        lock(f).map(|()| Flock(f))
    }

    /// Waits for a shared lock of `f`.
    pub fn shared(f: &'a File) -> io::Result<Flock<'a>> {
        retry(|| f.lock_shared()).map(|()| Flock(f))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // Unlocking cannot fail in a way we could act on; closing the file also releases it.
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_seen_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let a = File::create(&p).unwrap();
        let b = File::open(&p).unwrap();
        {
            let _held = Flock::exclusive(&a).unwrap();
            assert!(!try_lock(&b).unwrap());
            assert!(is_locked(&b));
        }
        assert!(!is_locked(&b));
        assert!(try_lock(&b).unwrap());
        let c = File::open(&p).unwrap();
        assert!(is_locked(&c));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn byte_locks_exclude_per_byte_and_open_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("locks");
        // A write lock needs a descriptor open for writing.
        let a = File::create(&p).unwrap();
        let b = File::options().write(true).open(&p).unwrap();
        assert!(try_lock_byte(&a, 7).unwrap());
        assert!(!try_lock_byte(&b, 7).unwrap());
        assert!(try_lock_byte(&b, 8).unwrap());
        drop(a);
        assert!(try_lock_byte(&b, 7).unwrap());
    }
}
