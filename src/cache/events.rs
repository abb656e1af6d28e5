//! The bounded ring of recent compiles under `$DISTC_DIR/events/`, which `distc top` shows.
//!
//! Writing must cost the hot path next to nothing and never contend under `make -j`: a
//! wrapper appends one text line with a single `write(2)` to a file opened `O_APPEND` (the
//! kernel places each append after the previous one, so concurrent writers never interleave
//! or overwrite, and no lock is taken). Processes spread over [`SHARDS`] files by pid.
//!
//! Bounded without coordination: the one writer whose line crosses [`SHARD_BYTES`] renames
//! the shard to `<shard>.old` (replacing the previous generation); the next writer creates a
//! fresh shard. Appends are contiguous, so exactly one writer crosses the limit. Writers that
//! opened the shard before the rename append to `.old`, which is still read. Each shard thus
//! holds at most about two generations: the directory stays under
//! `2 * SHARDS * (SHARD_BYTES + LINE_MAX)` bytes.
//!
//! Line format (version 1), fields separated by one space, the source last since it may
//! contain spaces: `1 <unix ms> <pid> <outcome> <reason or -> <duration µs> <source>`. A line
//! that does not parse (a torn write on a full disk) is skipped by the reader.

use std::fs::{self, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Number of shard files; processes spread over them by pid.
pub const SHARDS: u32 = 8;
/// Size at which a shard starts a new generation.
pub const SHARD_BYTES: u64 = 32 * 1024;
/// Longest line written; longer sources keep their end (the file name).
const LINE_MAX: usize = 400;
/// Format version, the first field of every line.
const VERSION: &str = "1";

/// What happened to one wrapped compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Served from the local store.
    Hit,
    /// Fetched from a peer of the mesh.
    RemoteHit,
    /// Compiled and stored.
    Miss,
    /// Compiled without caching (the reason says why).
    Uncacheable,
}

impl Outcome {
    /// The stable label written to the ring and shown by `distc top`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::RemoteHit => "remote-hit",
            Outcome::Miss => "miss",
            Outcome::Uncacheable => "uncacheable",
        }
    }

    fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "hit" => Outcome::Hit,
            "remote-hit" => Outcome::RemoteHit,
            "miss" => Outcome::Miss,
            "uncacheable" => Outcome::Uncacheable,
            _ => return None,
        })
    }
}

/// One recent compile as read back from the ring.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// When it finished, milliseconds since the epoch.
    pub unix_ms: u64,
    /// The wrapper's process id.
    pub pid: u32,
    pub outcome: Outcome,
    /// Why it was not cached (only for [`Outcome::Uncacheable`]).
    pub reason: Option<String>,
    /// Wall time of the wrapper, from opening the cache to the outcome.
    pub duration_us: u64,
    /// The source file as given on the command line (or the compiler, when none was parsed).
    pub source: String,
}

fn events_dir(distc_dir: &Path) -> PathBuf {
    distc_dir.join("events")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The line for one event, at most [`LINE_MAX`] bytes, newline-terminated.
fn format_line(
    now: SystemTime,
    outcome: Outcome,
    reason: Option<&str>,
    took: Duration,
    source: &str,
) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(128);
    let reason = reason
        .filter(|r| !r.is_empty() && !r.contains(char::is_whitespace))
        .unwrap_or("-");
    let _ = write!(
        line,
        "{VERSION} {} {} {} {reason} {} ",
        unix_ms(now),
        std::process::id(),
        outcome.label(),
        took.as_micros() as u64,
    );
    // Keep the end of a long path (its file name) and never split a character.
    let room = LINE_MAX.saturating_sub(line.len() + 1);
    let mut start = source.len().saturating_sub(room);
    while !source.is_char_boundary(start) {
        start += 1;
    }
    line.extend(
        source[start..]
            .chars()
            .map(|c| if c.is_control() { '?' } else { c }),
    );
    line.push('\n');
    line
}

/// Appends one event (one `write(2)`). Errors are returned so a caller may ignore them: the
/// ring is a view, never a reason to fail or slow a build.
pub fn append(
    distc_dir: &Path,
    outcome: Outcome,
    reason: Option<&str>,
    took: Duration,
    source: &str,
) -> io::Result<()> {
    let line = format_line(SystemTime::now(), outcome, reason, took, source);
    let dir = events_dir(distc_dir);
    let shard = dir.join(format!("{:x}", std::process::id() % SHARDS));
    let open = || OpenOptions::new().append(true).create(true).open(&shard);
    let mut file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(&dir)?;
            open()?
        }
        Err(e) => return Err(e),
    };
    let n = file.write(line.as_bytes())?;
    // After an append the offset is the end of our own bytes: only the line that crosses the
    // limit starts a new generation.
    let end = file.stream_position()?;
    if end >= SHARD_BYTES && end - (n as u64) < SHARD_BYTES {
        let mut old = shard.clone().into_os_string();
        old.push(".old");
        fs::rename(&shard, old)?;
    }
    Ok(())
}

fn parse_line(line: &str) -> Option<Record> {
    let mut f = line.splitn(7, ' ');
    if f.next()? != VERSION {
        return None;
    }
    let unix_ms = f.next()?.parse().ok()?;
    let pid = f.next()?.parse().ok()?;
    let outcome = Outcome::parse(f.next()?)?;
    let reason = match f.next()? {
        "-" => None,
        r => Some(r.to_string()),
    };
    let duration_us = f.next()?.parse().ok()?;
    let source = f.next()?.to_string();
    Some(Record {
        unix_ms,
        pid,
        outcome,
        reason,
        duration_us,
        source,
    })
}

/// Every event in the ring that finished at or after `since_unix_ms`, oldest first. A missing
/// directory is an empty ring; unreadable shards and lines are skipped.
pub fn read_since(distc_dir: &Path, since_unix_ms: u64) -> io::Result<Vec<Record>> {
    let dir = events_dir(distc_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(bytes) = fs::read(entry.path()) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        out.extend(
            text.lines()
                .filter_map(parse_line)
                .filter(|r| r.unix_ms >= since_unix_ms),
        );
    }
    out.sort_by_key(|r| (r.unix_ms, r.pid));
    Ok(out)
}

/// Empties the ring (with `distc stats --zero`).
pub fn clear(distc_dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(events_dir(distc_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_since(d.path(), 0).unwrap().is_empty());
        let took = Duration::from_micros(1234);
        append(d.path(), Outcome::Miss, None, took, "src/a b.c").unwrap();
        append(d.path(), Outcome::Uncacheable, Some("linking"), took, "gcc").unwrap();
        append(d.path(), Outcome::Hit, None, took, "x\ny.c").unwrap();
        let r = read_since(d.path(), 0).unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        let miss = r.iter().find(|e| e.outcome == Outcome::Miss).unwrap();
        assert_eq!(miss.source, "src/a b.c");
        assert_eq!(miss.duration_us, 1234);
        assert_eq!(miss.pid, std::process::id());
        assert_eq!(miss.reason, None);
        let unc = r
            .iter()
            .find(|e| e.outcome == Outcome::Uncacheable)
            .unwrap();
        assert_eq!(unc.reason.as_deref(), Some("linking"));
        let hit = r.iter().find(|e| e.outcome == Outcome::Hit).unwrap();
        assert_eq!(
            hit.source, "x?y.c",
            "control characters cannot break the line"
        );
        let later = unix_ms(SystemTime::now()) + 60_000;
        assert!(read_since(d.path(), later).unwrap().is_empty());
        clear(d.path()).unwrap();
        assert!(read_since(d.path(), 0).unwrap().is_empty());
    }

    #[test]
    fn long_sources_keep_their_end() {
        let long = format!("{}/file.c", "d".repeat(1000));
        let line = format_line(SystemTime::now(), Outcome::Hit, None, Duration::ZERO, &long);
        assert!(line.len() <= LINE_MAX, "{}", line.len());
        assert!(line.ends_with("/file.c\n"));
        assert_eq!(parse_line(line.trim_end()).unwrap().outcome, Outcome::Hit);
    }

    #[test]
    fn ring_stays_bounded_and_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let source = "s".repeat(200);
        let n = 4 * SHARD_BYTES as usize / 200;
        for _ in 0..n {
            append(d.path(), Outcome::Miss, None, Duration::ZERO, &source).unwrap();
        }
        append(d.path(), Outcome::Hit, None, Duration::ZERO, "last.c").unwrap();
        let dir = events_dir(d.path());
        let total: u64 = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            total <= 2 * (SHARD_BYTES + LINE_MAX as u64),
            "{total} bytes"
        );
        let files = fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, 2, "one shard and its previous generation");
        let r = read_since(d.path(), 0).unwrap();
        assert_eq!(r.last().unwrap().source, "last.c");
        assert!(
            r.len() > SHARD_BYTES as usize / LINE_MAX,
            "{} kept",
            r.len()
        );
    }

    #[test]
    fn unreadable_lines_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), Outcome::Hit, None, Duration::ZERO, "a.c").unwrap();
        let shard = events_dir(d.path()).join("f");
        fs::write(
            &shard,
            "garbage\n2 1 2 hit - 3 future.c\n1 x 1 hit - 1 a\n1 5 1 hit - 1",
        )
        .unwrap();
        let r = read_since(d.path(), 0).unwrap();
        assert_eq!(r.len(), 1, "{r:?}");
    }
}
