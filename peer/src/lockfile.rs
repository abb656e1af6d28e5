//! Advisory whole-file locks, the one home for both packages: `flock(2)` semantics through
//! std's `File::lock` family (held until unlocked or the file is closed, released by the
//! kernel if the holder dies), with a wait that a signal interrupts retried.

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
}
