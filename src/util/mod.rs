//! Small file helpers every layer uses: atomic writes, best-effort memo files, and (re-exported
//! from the peer package) `flock`.
//! Nothing here knows about compilers or the cache.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Hash maps and sets of the wrapper's hot paths (header paths, directory listings): a fast
/// hash, randomly seeded per process, in place of std's SipHash, which was a tenth of a small
/// compile's miss.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

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

/// Writes a cached result's output where the command line wants it, at the least cost to
/// the file system:
/// - when the file there already holds exactly these bytes (make rebuilding after a header
///   was touched, the same build repeated), only its modification time is set to now, as a
///   compile would have;
/// - otherwise a temporary file is written and renamed into place after the old file is
///   unlinked: a reader never sees half a file, and whoever still has the old one open (a
///   running executable, a hard link) keeps it, as binutils does for the objects it writes.
///   Renaming onto an existing file would also make ext4 (`auto_da_alloc`) start writing the
///   new data back at once, on the build's time.
pub fn write_output(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Ok(md) = fs::symlink_metadata(path)
        && md.is_file()
    {
        // Opened for reading only: the file may be an executable that is running, which
        // cannot be opened for writing (ETXTBSY), and setting its times needs no more.
        if md.len() == data.len() as u64
            && let Ok(f) = File::open(path)
            && holds(&f, data).unwrap_or(false)
            && f.set_modified(std::time::SystemTime::now()).is_ok()
        {
            return Ok(());
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    write_atomic(path, data)
}

/// True when the file `f` (read from its start) holds exactly `data`.
fn holds(mut f: &File, data: &[u8]) -> io::Result<bool> {
    use std::io::Read;
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(at == data.len());
        }
        if data.get(at..at + n) != Some(&buf[..n]) {
            return Ok(false);
        }
        at += n;
    }
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
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

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
    fn output_writes_touch_identical_files_and_replace_others() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.o");
        write_output(&p, b"object one").unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let ino = fs::metadata(&p).unwrap().ino();

        // The same bytes: the same file, modified now (make must see it as new).
        write_output(&p, b"object one").unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!(md.ino(), ino);
        assert!(md.modified().unwrap() > old + Duration::from_secs(3600));

        // Other bytes of the same length: a new file; a hard link to the old one keeps it.
        let link = d.path().join("snapshot.o");
        fs::hard_link(&p, &link).unwrap();
        write_output(&p, b"object two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"object two");
        assert_eq!(fs::read(&link).unwrap(), b"object one");
        assert_ne!(fs::metadata(&p).unwrap().ino(), ino);

        // Another length, a read-only file, a symlink: replaced by a plain file each time.
        write_output(&p, b"longer object three").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"longer object three");
        let ro = d.path().join("ro.o");
        fs::write(&ro, b"same").unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
        write_output(&ro, b"same").unwrap();
        assert_eq!(fs::read(&ro).unwrap(), b"same");
        let target = d.path().join("elsewhere.o");
        fs::write(&target, b"not mine").unwrap();
        let sym = d.path().join("sym.o");
        std::os::unix::fs::symlink(&target, &sym).unwrap();
        write_output(&sym, b"mine").unwrap();
        assert!(fs::symlink_metadata(&sym).unwrap().is_file());
        assert_eq!(fs::read(&target).unwrap(), b"not mine");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".distc-")), "{names:?}");
    }

    #[test]
    fn a_running_executable_holding_the_bytes_is_left_in_place() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("sleeper");
        let bytes = fs::read("/bin/sleep").unwrap();
        fs::write(&exe, &bytes).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let ino = fs::metadata(&exe).unwrap().ino();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        // spawn returns once the child has exec'd: it cannot be opened for writing now.
        let busy = File::options().write(true).open(&exe).map(|_| ());
        let same = write_output(&exe, &bytes);
        let md = fs::metadata(&exe).unwrap();
        // Other bytes replace it beside the running one.
        let other = write_output(&exe, b"#!/bin/sh\n");
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(busy.map_err(|e| e.raw_os_error()), Err(Some(libc::ETXTBSY)));
        same.unwrap();
        assert_eq!(
            md.ino(),
            ino,
            "an identical running executable was replaced"
        );
        assert_eq!(md.mode() & 0o777, 0o755);
        other.unwrap();
        assert_eq!(fs::read(&exe).unwrap(), b"#!/bin/sh\n");
        assert!(running, "the replaced executable kept running");
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
