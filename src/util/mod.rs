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

/// An append-only log of diagnostic records (the miss records `distc inspect` explains a miss
/// with), one line per record: `ID CHECK TEXT`, the text escaped onto one line and `CHECK` the
/// first 8 bytes of SHA-256 over `ID TEXT`. Appending is one `write(2)` to a file opened with
/// `O_APPEND`: no inode per record, no lock, no rename (on ext4 creating an inode was a tenth
/// of a small compile's miss). Concurrent appends do not interleave (the kernel writes each
/// under the file's lock); a line torn by a crash fails its check and is skipped, with the
/// record appended after it. Once the log passes [`RECORD_LOG_MAX`] it becomes `PATH.old`
/// (replacing the one before) and a new log starts, so both together stay under twice that.
/// Best effort, like [`write_memo`]: nothing depends on a record being there.
pub fn append_record(path: &Path, id: &str, text: &str) {
    append_record_within(path, id, text, RECORD_LOG_MAX)
}

/// [`append_record`] with the rotation size given.
fn append_record_within(path: &Path, id: &str, text: &str, max: u64) {
    let line = record_line(id, text);
    let open = || fs::OpenOptions::new().create(true).append(true).open(path);
    let mut file = match open() {
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
    if file.write_all(line.as_bytes()).is_err() {
        return;
    }
    if file.metadata().is_ok_and(|m| m.len() > max) {
        let _ = fs::rename(path, old_log(path));
    }
}

/// The size past which a record log is rotated (see [`append_record`]): the records of a few
/// thousand sources of a few hundred headers each, about what the file per source of
/// earlier versions kept.
pub const RECORD_LOG_MAX: u64 = 32 << 20;

/// The newest intact record `id` has in the log at `path` (or its previous generation).
pub fn last_record(path: &Path, id: &str) -> Option<String> {
    [path.to_path_buf(), old_log(path)].iter().find_map(|p| {
        let text = fs::read(p).ok()?;
        text.rsplit(|&b| b == b'\n')
            .find_map(|l| parse_record(std::str::from_utf8(l).ok()?, id))
    })
}

fn old_log(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".old");
    PathBuf::from(p)
}

fn record_check(id: &str, escaped: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(b" ");
    h.update(escaped.as_bytes());
    hex::encode(&h.finalize()[..8])
}

fn record_line(id: &str, text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r");
    format!("{id} {} {escaped}\n", record_check(id, &escaped))
}

fn parse_record(line: &str, id: &str) -> Option<String> {
    let rest = line.strip_prefix(id)?.strip_prefix(' ')?;
    let (check, escaped) = rest.split_once(' ')?;
    if check != record_check(id, escaped) {
        return None;
    }
    let mut text = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        match chars.next()? {
            'n' => text.push('\n'),
            'r' => text.push('\r'),
            '\\' => text.push('\\'),
            _ => return None,
        }
    }
    Some(text)
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
    fn records_append_to_one_log_and_survive_torn_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("misses.log");
        assert_eq!(last_record(&p, "a"), None, "no log yet");
        append_record(&p, "a", "key 1\nheader /x\\y\r.h\n");
        append_record(&p, "b", "key 2\n");
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap());
        append_record(&p, "a", "key 3\n");
        assert_eq!(last_record(&p, "a").as_deref(), Some("key 3\n"));
        assert_eq!(last_record(&p, "b").as_deref(), Some("key 2\n"));
        assert_eq!(last_record(&p, "c"), None);
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap()),
            ino,
            "one file, appended to"
        );
        // A record torn by a crash (no end of line) spoils only itself.
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        let whole = record_line("a", "key 4\n");
        f.write_all(&whole.as_bytes()[..whole.len() / 2]).unwrap();
        append_record(&p, "b", "key 5\n");
        assert_eq!(last_record(&p, "a").as_deref(), Some("key 3\n"));
        append_record(&p, "a", "key 6\nheader /x\\y\r.h\n");
        assert_eq!(
            last_record(&p, "a").as_deref(),
            Some("key 6\nheader /x\\y\r.h\n")
        );
        // An id that prefixes another's is not confused with it.
        assert_eq!(last_record(&p, "").as_deref(), None);
        // Rotation: past the limit the log becomes the old generation, still read.
        let big = "x".repeat(4096);
        append_record_within(&p, "big", &big, 4096);
        assert!(!p.exists());
        append_record(&p, "c", "key 7\n");
        assert_eq!(
            last_record(&p, "a").as_deref(),
            Some("key 6\nheader /x\\y\r.h\n")
        );
        assert_eq!(last_record(&p, "c").as_deref(), Some("key 7\n"));
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
