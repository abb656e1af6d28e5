//! Small file helpers every layer uses: atomic writes, best-effort memo files, and (re-exported
//! from the peer package) `flock`.
//! Nothing here knows about compilers or the cache.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// Rewrites a diagnostic record in place (creating it and its directory if needed), under an
/// exclusive `flock` so that writers do not interleave. No new inode and no rename over the
/// old file: freeing the replaced inode costs a miss about a millisecond on ext4 under load. A
/// reader may see a record half-written, so this is only for files nothing depends on being
/// whole (the miss records `distc inspect` explains a miss with). Best effort, like
/// [`write_memo`].
pub fn write_record(path: &Path, data: &[u8]) {
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
    };
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            match open() {
                Ok(f) => f,
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    let Ok(_held) = Flock::exclusive(&file) else {
        return;
    };
    use std::os::unix::fs::FileExt;
    let _ = file
        .write_all_at(data, 0)
        .and_then(|()| file.set_len(data.len() as u64));
}

/// A file a child process writes by path and this process reads back after the child exits
/// (depend mode's own dependency file). On Linux an anonymous in-memory file
/// (`memfd_create`), inherited by the child and named `/proc/self/fd/N`: it costs no inode on
/// disk, where freeing an unlinked temporary file on close can cost milliseconds (a journal
/// transaction on ext4 under load). Elsewhere, or without a usable `/proc`, a temporary file.
pub enum Scratch {
    /// `_file` is held open for the name to stay valid.
    Memory {
        _file: File,
        path: PathBuf,
    },
    Temp(tempfile::NamedTempFile),
}

impl Scratch {
    /// A new empty scratch file; `prefix` and `suffix` name the temporary file if one is used.
    pub fn new(prefix: &str, suffix: &str) -> io::Result<Scratch> {
        if let Some(s) = Scratch::memory(prefix) {
            return Ok(s);
        }
        tempfile::Builder::new()
            .prefix(prefix)
            .suffix(suffix)
            .tempfile()
            .map(Scratch::Temp)
    }

    #[cfg(target_os = "linux")]
    fn memory(name: &str) -> Option<Scratch> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::FromRawFd;
        let cname = std::ffi::CString::new(name).ok()?;
        // SAFETY: a valid NUL-terminated name; no CLOEXEC, so the compiler inherits it.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        // The name must open this very file (no /proc, another one mounted: a temporary file).
        let (mine, named) = (file.metadata().ok()?, fs::metadata(&path).ok()?);
        (mine.ino() == named.ino() && mine.dev() == named.dev())
            .then_some(Scratch::Memory { _file: file, path })
    }

    #[cfg(not(target_os = "linux"))]
    fn memory(_name: &str) -> Option<Scratch> {
        None
    }

    /// The name the child writes (and this process reads) the file by.
    pub fn path(&self) -> &Path {
        match self {
            Scratch::Memory { path, .. } => path,
            Scratch::Temp(t) => t.path(),
        }
    }
}

/// Advisory file locks live with the peer package (the lower layer), so both use one home.
pub use distc_peer::lockfile::Flock;

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
    fn record_rewritten_in_place() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("misses").join("r");
        write_record(&p, b"a longer first record\n");
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap());
        write_record(&p, b"short\n");
        assert_eq!(fs::read(&p).unwrap(), b"short\n");
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap()),
            ino
        );
    }

    #[test]
    fn scratch_is_written_by_a_child_and_read_back() {
        let s = Scratch::new("distc-test-", ".d").unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf 'a.o: a.c\\n' > \"$0\"")
            .arg(s.path())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(fs::read(s.path()).unwrap(), b"a.o: a.c\n");
        #[cfg(target_os = "linux")]
        assert!(matches!(s, Scratch::Memory { .. }));
    }
}
