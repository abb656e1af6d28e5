//! What the cache did for one compile, as counted, and as told to `distc build` (the result
//! file) and `distc build-project` (the per-crate log). One spelling, one parser.

use std::fmt;

use crate::cache::stats::Event;

/// Environment variable naming a file in which the wrapper writes the outcome of one compile:
/// a single line `hit`, `remote-hit`, `miss` or `uncacheable:<reason>` ([`Outcome`]).
pub const RESULT_FILE_ENV: &str = "DISTC_RESULT_FILE";

/// What the cache did for one compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Found in the local store.
    Hit,
    /// Found on a peer of the mesh.
    RemoteHit,
    /// Compiled and stored.
    Miss,
    /// Compiled without the cache, for this reason (a `distc stats` label).
    Uncacheable(String),
}

impl Outcome {
    /// Reads the first word of `text` as written by [`fmt::Display`]; `None` for anything
    /// else (an empty file: the wrapper did not say).
    pub fn parse(text: &str) -> Option<Outcome> {
        let word = text.split_whitespace().next()?;
        Some(match word {
            "hit" | "local-hit" => Outcome::Hit,
            "remote-hit" => Outcome::RemoteHit,
            "miss" => Outcome::Miss,
            "uncacheable" => Outcome::Uncacheable(String::new()),
            w => Outcome::Uncacheable(w.strip_prefix("uncacheable:")?.to_string()),
        })
    }

    pub fn is_hit(&self) -> bool {
        matches!(self, Outcome::Hit | Outcome::RemoteHit)
    }

    /// For people: `hit`, `hit (peer)`, `miss`, `uncacheable (reason)`.
    pub fn human(&self) -> String {
        match self {
            Outcome::Hit => "hit".into(),
            Outcome::RemoteHit => "hit (peer)".into(),
            Outcome::Miss => "miss".into(),
            Outcome::Uncacheable(r) if r.is_empty() => "uncacheable".into(),
            Outcome::Uncacheable(r) => format!("uncacheable ({r})"),
        }
    }

    /// The stats counter this outcome bumps.
    pub fn event(&self) -> Event<'_> {
        match self {
            Outcome::Hit => Event::LocalHit,
            Outcome::RemoteHit => Event::RemoteHit,
            Outcome::Miss => Event::Miss,
            Outcome::Uncacheable(r) => Event::Uncacheable(r),
        }
    }

    /// Tells `distc build`/`build-project` what happened, when they asked: in the result file,
    /// and to a caller in this process ([`last`]).
    pub fn report(&self) {
        if let Ok(mut last) = LAST.lock() {
            *last = Some(self.clone());
        }
        if let Some(p) = std::env::var_os(RESULT_FILE_ENV) {
            let _ = std::fs::write(p, format!("{self}\n"));
        }
    }
}

/// The outcome last reported in this process.
static LAST: std::sync::Mutex<Option<Outcome>> = std::sync::Mutex::new(None);

/// What the cache did for the compile this process last ran through the pipeline.
pub(crate) fn last() -> Option<Outcome> {
    LAST.lock().ok().and_then(|l| l.clone())
}

/// One word, no spaces: the per-crate log puts more words after it.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Hit => f.write_str("hit"),
            Outcome::RemoteHit => f.write_str("remote-hit"),
            Outcome::Miss => f.write_str("miss"),
            Outcome::Uncacheable(r) => write!(f, "uncacheable:{r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_outcome() {
        assert_eq!(Outcome::parse("hit\n"), Some(Outcome::Hit));
        assert_eq!(Outcome::parse("remote-hit"), Some(Outcome::RemoteHit));
        assert_eq!(Outcome::parse("miss"), Some(Outcome::Miss));
        assert_eq!(
            Outcome::parse("uncacheable:linking"),
            Some(Outcome::Uncacheable("linking".into()))
        );
        assert_eq!(Outcome::parse(""), None);
    }

    #[test]
    fn every_outcome_reads_back_as_written() {
        for o in [
            Outcome::Hit,
            Outcome::RemoteHit,
            Outcome::Miss,
            Outcome::Uncacheable("compile-failed".into()),
        ] {
            assert_eq!(Outcome::parse(&format!("{o}\n")), Some(o.clone()), "{o}");
            assert!(!o.to_string().contains(' '), "{o}");
        }
        assert_eq!(Outcome::parse("error cannot write"), None);
        assert_eq!(Outcome::Uncacheable("x".into()).human(), "uncacheable (x)");
        assert_eq!(Outcome::RemoteHit.human(), "hit (peer)");
    }
}
