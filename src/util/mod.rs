//! Small file helpers every layer uses: atomic writes, best-effort memo files, `flock`.
//! Nothing here knows about compilers or the cache.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Writes `data` to `path` atomically: a temporary file in the same directory, then rename.
/// A reader (make, the linker) never sees a half-written object.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".distc-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    // Objects are normally 0644 (umask applied); tempfile creates 0600.
    set_default_mode(tmp.as_file())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn set_default_mode(f: &fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask is process-global but we restore it immediately; single-threaded here.
    let mask = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    f.set_permissions(fs::Permissions::from_mode(0o666 & !(mask as u32)))
}

/// Writes a memo or record file (creating its directory): best effort, since a memo is an
/// optimisation and an unwritable cache directory just means recomputing next time.
pub fn write_memo(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = write_atomic(path, data);
}

/// `flock(2)` on `f`, retried when a signal interrupts it: the one wrapper of the call.
fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid open descriptor; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), op) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes the exclusive lock of `f` if no one holds it now (`false` if someone does). It is
/// held until `f` is closed, and released by the kernel if the holder dies.
pub fn try_lock(f: &File) -> io::Result<bool> {
    match flock(f, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An advisory `flock` held until drop.
pub struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    pub fn exclusive(f: &'a File) -> io::Result<Flock<'a>> {
        flock(f, libc::LOCK_EX).map(|()| Flock(f))
    }

    pub fn shared(f: &'a File) -> io::Result<Flock<'a>> {
        flock(f, libc::LOCK_SH).map(|()| Flock(f))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // Unlocking cannot fail in a way we could act on.
        let _ = flock(self.0, libc::LOCK_UN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.o");
        write_atomic(&p, b"abc").unwrap();
        write_atomic(&p, b"defg").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"defg");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn flock_try_sees_a_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let a = File::create(&p).unwrap();
        let b = File::open(&p).unwrap();
        let held = Flock::exclusive(&a).unwrap();
        assert!(!try_lock(&b).unwrap());
        drop(held);
        assert!(try_lock(&b).unwrap());
    }
}
