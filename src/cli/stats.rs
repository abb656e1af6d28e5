//! `distc stats`: the wrapper's counters (src/cache/stats.rs) plus what the local store holds.

use anyhow::{Context, Result};
use distc_peer::store::{Store, Usage};

use crate::cache::stats::Stats;
use crate::cli::build::human_bytes;
use crate::config::Config;

/// Everything `distc stats` reports.
#[derive(Debug, Clone)]
pub struct Report {
    pub counters: Stats,
    pub usage: Usage,
}

impl Report {
    /// Reads the counters and the store's usage (both cheap: no directory scan).
    pub fn load(config: &Config) -> Result<Report> {
        let counters = Stats::read_all(&config.dir).with_context(|| {
            format!(
                "cannot read the statistics in {}",
                config.dir.join("stats").display()
            )
        })?;
        let store_dir = config.store_dir();
        let usage = Store::open(&store_dir, config.max_size)
            .and_then(|s| s.usage())
            .with_context(|| {
                format!(
                    "cannot read the usage of the cache store {}",
                    store_dir.display()
                )
            })?;
        Ok(Report { counters, usage })
    }

    /// Hits over cacheable lookups (hits + misses), 0 when there were none.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.counters.hits + self.counters.misses;
        if lookups == 0 {
            0.0
        } else {
            self.counters.hits as f64 / lookups as f64
        }
    }

    /// The `--json` document: the counters' own fields, plus store usage and the hit rate.
    pub fn to_json(&self, config: &Config) -> serde_json::Value {
        let mut value = self.counters.to_json();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("entries".into(), self.usage.entries.into());
            obj.insert("bytes".into(), self.usage.bytes.into());
            obj.insert("max_size".into(), config.max_size.into());
            obj.insert("hit_rate".into(), self.hit_rate().into());
            obj.insert("dir".into(), config.dir.display().to_string().into());
        }
        value
    }

    /// The human-readable table.
    pub fn to_text(&self, config: &Config) -> String {
        use std::fmt::Write as _;
        let c = &self.counters;
        let mut out = String::new();
        let uncacheable: u64 = c.uncacheable.values().sum();
        let _ = writeln!(out, "Cache directory    {}", config.dir.display());
        let _ = writeln!(
            out,
            "Hits               {} (local {}, from peers {})",
            c.hits, c.local_hits, c.remote_hits
        );
        if c.offloaded > 0 {
            let _ = writeln!(
                out,
                "Misses             {} (compiled on other members {})",
                c.misses, c.offloaded
            );
        } else {
            let _ = writeln!(out, "Misses             {}", c.misses);
        }
        let _ = writeln!(out, "Hit rate           {:.1} %", self.hit_rate() * 100.0);
        let _ = writeln!(out, "Uncacheable        {uncacheable}");
        for (reason, n) in &c.uncacheable {
            let _ = writeln!(out, "  {reason:<17}{n}");
        }
        let _ = writeln!(out, "Errors             {}", c.errors);
        for (kind, n) in &c.errors_by_kind {
            let _ = writeln!(out, "  {kind:<17}{n}");
        }
        let skipped: u64 = c.verify_skipped.values().sum();
        let mismatched: u64 = c.mismatches.values().sum();
        if c.verified + skipped + mismatched > 0 {
            let _ = writeln!(
                out,
                "Re-verified        {} matched, {mismatched} MISMATCHED, {skipped} skipped",
                c.verified
            );
            for (producer, n) in &c.mismatches {
                let _ = writeln!(out, "  mismatch from {producer}: {n}");
            }
            for (reason, n) in &c.verify_skipped {
                let _ = writeln!(out, "  skipped {reason:<9}{n}");
            }
        }
        let _ = writeln!(out, "Entries            {}", self.usage.entries);
        let _ = writeln!(
            out,
            "Stored             {} of {} max",
            human_bytes(self.usage.bytes),
            human_bytes(config.max_size)
        );
        out
    }
}

/// `distc stats [--json]`, or `--zero` to reset the counters (the stored results stay).
pub fn stats(config: &Config, json: bool, zero: bool) -> Result<()> {
    if zero {
        Stats::zero(&config.dir).with_context(|| {
            format!(
                "cannot zero the statistics in {}",
                config.dir.join("stats").display()
            )
        })?;
        crate::cache::events::clear(&config.dir).with_context(|| {
            format!(
                "cannot empty the recent compiles in {}",
                config.dir.join("events").display()
            )
        })?;
        println!(
            "Statistics zeroed in {} (cached results are kept; `distc flush` removes them)",
            config.dir.display()
        );
        return Ok(());
    }
    let report = Report::load(config)?;
    if json {
        let text = serde_json::to_string_pretty(&report.to_json(config))
            .context("cannot encode the statistics as JSON")?;
        println!("{text}");
    } else {
        print!("{}", report.to_text(config));
    }
    Ok(())
}
