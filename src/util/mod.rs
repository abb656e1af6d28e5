//! Small file helpers every layer uses: atomic writes, best-effort memo files, and (re-exported
//! from the peer package) `flock`.
//! Nothing here knows about compilers or the cache.

use std::fs;
use std::io::{self, Write};
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

/// Advisory file locks live with the peer package (the lower layer), so both use one home.
pub use distc_peer::lockfile::{Flock, try_lock};

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
}
