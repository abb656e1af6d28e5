//! Wrapper counters under `$DISTC_DIR/stats/`.
//!
//! Every wrapped compile bumps one counter, so updates must be cheap and safe under `make -j`:
//! the counters are spread over [`SHARDS`] small text files (shard chosen by process id), each
//! updated by a `flock`ed read-modify-write. Readers sum all shards.
//!
//! Shard format: one `name value` pair per line, e.g. `hits 3` or `uncacheable.linking 2`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::util::Flock;

/// Number of shard files; processes spread over them by pid.
pub const SHARDS: u32 = 16;

/// One event worth counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Result served from the local store.
    LocalHit,
    /// Result fetched from a peer of the mesh.
    RemoteHit,
    /// Compiled and stored.
    Miss,
    /// Passed to the real compiler without caching, for this reason.
    Uncacheable(&'a str),
    /// Something went wrong in the cache (never in the build); the kind, e.g. `corrupt`.
    Error(&'a str),
    /// A sampled remote hit compiled here gave the same outputs.
    Verified,
    /// A sampled remote hit that could not be compared, for this reason (`time-macros`,
    /// `nonreproducible`, `compile-failed`).
    VerifySkipped(&'a str),
    /// A sampled remote hit whose outputs differed from this machine's compile (twice the
    /// same here): the producer's peer id.
    Mismatch(&'a str),
    /// A miss compiled on another member of the mesh (it is also counted as a miss).
    Offloaded,
}

impl Event<'_> {
    fn counter(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Event::LocalHit => "hits.local".into(),
            Event::RemoteHit => "hits.remote".into(),
            Event::Miss => "misses".into(),
            Event::Uncacheable(r) => format!("uncacheable.{r}").into(),
            Event::Error(k) => format!("errors.{k}").into(),
            Event::Verified => "verify.matched".into(),
            Event::VerifySkipped(r) => format!("verify.skipped.{r}").into(),
            Event::Mismatch(p) => format!("verify.mismatch.{p}").into(),
            Event::Offloaded => "offloaded".into(),
        }
    }
}

/// Summed counters, as `distc stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Local + remote hits.
    pub hits: u64,
    pub local_hits: u64,
    pub remote_hits: u64,
    pub misses: u64,
    /// Reason label -> count.
    pub uncacheable: BTreeMap<String, u64>,
    /// Sum of `errors_by_kind`.
    pub errors: u64,
    /// Error kind (`corrupt`, `store-read`, `store-write`, ...) -> count.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Sampled remote hits compiled here that matched (`verify_rate`).
    pub verified: u64,
    /// Sampled remote hits not compared: reason -> count.
    pub verify_skipped: BTreeMap<String, u64>,
    /// Sampled remote hits that differed from this machine's compile: producer -> count.
    pub mismatches: BTreeMap<String, u64>,
    /// Misses compiled on another member of the mesh (`offload`).
    pub offloaded: u64,
}

impl Stats {
    fn stats_dir(distc_dir: &Path) -> PathBuf {
        distc_dir.join("stats")
    }

    /// Counts one event. Failures are returned so the caller can warn; they never fail a build.
    pub fn record(distc_dir: &Path, event: Event<'_>) -> io::Result<()> {
        let dir = Stats::stats_dir(distc_dir);
        let shard = dir.join(format!("{:x}", std::process::id() % SHARDS));
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&shard)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir)?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&shard)?
            }
            Err(e) => return Err(e),
        };
        let _lock = Flock::exclusive(&file)?;
        let mut f = &file;
        let mut bytes = Vec::with_capacity(256);
        f.read_to_end(&mut bytes)?;
        // A damaged shard (not text) loses its unreadable lines and is rewritten clean.
        let text = String::from_utf8_lossy(&bytes);
        let mut counters = parse_shard(&text);
        *counters.entry(event.counter().into_owned()).or_insert(0) += 1;
        let mut out = String::with_capacity(text.len() + 32);
        for (k, v) in &counters {
            out.push_str(k);
            out.push(' ');
            out.push_str(&v.to_string());
            out.push('\n');
        }
        f.seek(SeekFrom::Start(0))?;
        f.write_all(out.as_bytes())?;
        file.set_len(out.len() as u64)?;
        Ok(())
    }

    /// Sums every shard. A missing directory is all zeros.
    pub fn read_all(distc_dir: &Path) -> io::Result<Stats> {
        let dir = Stats::stats_dir(distc_dir);
        let mut stats = Stats::default();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(stats),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let _lock = Flock::shared(&file)?;
            let mut bytes = Vec::new();
            (&file).read_to_end(&mut bytes)?;
            for (k, v) in parse_shard(&String::from_utf8_lossy(&bytes)) {
                stats.add(&k, v);
            }
        }
        stats.hits = stats.local_hits + stats.remote_hits;
        stats.errors = stats.errors_by_kind.values().sum();
        Ok(stats)
    }

    fn add(&mut self, counter: &str, v: u64) {
        match counter {
            "hits.local" => self.local_hits += v,
            "hits.remote" => self.remote_hits += v,
            "misses" => self.misses += v,
            "verify.matched" => self.verified += v,
            "offloaded" => self.offloaded += v,
            c => {
                if let Some(r) = c.strip_prefix("verify.skipped.") {
                    *self.verify_skipped.entry(r.to_string()).or_insert(0) += v;
                    return;
                }
                if let Some(p) = c.strip_prefix("verify.mismatch.") {
                    *self.mismatches.entry(p.to_string()).or_insert(0) += v;
                    return;
                }
                if let Some(r) = c.strip_prefix("uncacheable.") {
                    *self.uncacheable.entry(r.to_string()).or_insert(0) += v;
                } else if let Some(k) = c.strip_prefix("errors.") {
                    *self.errors_by_kind.entry(k.to_string()).or_insert(0) += v;
                }
            }
        }
    }

    /// Resets every counter to zero.
    pub fn zero(distc_dir: &Path) -> io::Result<()> {
        let dir = Stats::stats_dir(distc_dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let file = OpenOptions::new().write(true).open(&path)?;
            let _lock = Flock::exclusive(&file)?;
            file.set_len(0)?;
        }
        Ok(())
    }

    /// The JSON that `distc stats --json` prints (without store usage, which the CLI adds).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn parse_shard(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_read_zero() {
        let d = tempfile::tempdir().unwrap();
        let s = Stats::read_all(d.path()).unwrap();
        assert_eq!(s, Stats::default());
        Stats::record(d.path(), Event::LocalHit).unwrap();
        Stats::record(d.path(), Event::LocalHit).unwrap();
        Stats::record(d.path(), Event::RemoteHit).unwrap();
        Stats::record(d.path(), Event::Miss).unwrap();
        Stats::record(d.path(), Event::Uncacheable("linking")).unwrap();
        Stats::record(d.path(), Event::Error("corrupt")).unwrap();
        let s = Stats::read_all(d.path()).unwrap();
        assert_eq!(s.hits, 3);
        assert_eq!(s.local_hits, 2);
        assert_eq!(s.misses, 1);
        assert_eq!(s.uncacheable["linking"], 1);
        assert_eq!(s.errors, 1);
        let j = s.to_json();
        assert_eq!(j["hits"], 3);
        assert_eq!(j["uncacheable"]["linking"], 1);
        Stats::zero(d.path()).unwrap();
        assert_eq!(Stats::read_all(d.path()).unwrap(), Stats::default());
    }
}
