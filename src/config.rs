//! Configuration: built-in defaults < config file < `DISTC_*` environment < command-line flags.
//!
//! `config/distc.toml` documents every key; a unit test checks that it parses to exactly the
//! built-in defaults, so the documentation cannot drift from the code. The defaults are Rust
//! values rather than a parsed copy of that file because every wrapped compile loads the
//! configuration, and parsing a 100-line file on each one is waste.
//!
//! Every layer goes through one setter, [`Config::set`], so a bad value gets the same error —
//! naming where it came from, the key, and what is accepted — whatever layer it came from.

use std::fmt;
use std::path::PathBuf;

/// The documented default configuration file, shipped inside the binary.
#[cfg(test)]
const DEFAULT_TOML: &str = include_str!("../config/distc.toml");

/// Every configuration key, in documentation order.
pub const KEYS: &[&str] = &[
    "dir",
    "max_size",
    "base_dir",
    "disable",
    "direct_mode",
    "depend_mode",
    "peer_timeout_ms",
    "auto_start",
    "log",
    "replication",
    "vnodes",
    "weight",
    "role",
    "port",
    "listen",
    "bootstrap",
    "mdns",
    "psk_file",
    "open",
    "max_entry_size",
    "hedge_delay_ms",
    "leave_timeout_secs",
    "handoff_rate",
    "idle_timeout_secs",
    "metrics_listen",
    "trust",
    "distrust",
    "verify_rate",
    "offload",
    "serve_compiles",
    "serve_unsandboxed",
];

/// The effective configuration. Each field documents itself in `config/distc.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Cache directory (store, stats, manifests, peer socket). Never empty after `load`.
    pub dir: PathBuf,
    /// Size cap of the local store, bytes.
    pub max_size: u64,
    /// Checkouts under this directory share hits (paths in the key made relative).
    pub base_dir: Option<PathBuf>,
    /// Run the real compiler, no cache at all.
    pub disable: bool,
    /// Hash headers from a manifest instead of running the preprocessor.
    pub direct_mode: bool,
    /// Learn headers from the compiler's -MD output on a miss.
    pub depend_mode: bool,
    /// Bound on waiting for the local peer, milliseconds.
    pub peer_timeout_ms: u64,
    /// Start a peer in the background when none runs.
    pub auto_start: bool,
    /// tracing filter for distc's own logs.
    pub log: String,
    /// Copies of each result in the mesh.
    pub replication: u32,
    /// Virtual nodes on the ring of a peer of weight 100.
    pub vnodes: u32,
    /// This peer's weight on the ring (None = "auto": from `max_size`).
    pub weight: Option<u32>,
    /// Owns no range of the ring (`role = "client"`).
    pub client: bool,
    /// Default TCP port of a peer.
    pub port: u16,
    /// Explicit listen multiaddrs (empty = defaults derived from `port` and the mesh key).
    pub listen: Vec<String>,
    /// Multiaddrs to dial at start.
    pub bootstrap: Vec<String>,
    /// Discover peers by multicast DNS.
    pub mdns: bool,
    /// Mesh key file (None = `<config dir>/swarm.key`).
    pub psk_file: Option<PathBuf>,
    /// Run a keyless mesh beyond loopback.
    pub open: bool,
    /// Largest entry accepted from the network, bytes.
    pub max_entry_size: u64,
    /// A get also asks the next owner after this long without a first answer, ms.
    pub hedge_delay_ms: u64,
    /// A leaving peer hands its entries on for at most this long, seconds (0 = no handoff).
    pub leave_timeout_secs: u64,
    /// Bytes per second a leaving peer's handoff sends at most (0 = no limit).
    pub handoff_rate: u64,
    /// Idle exit of an auto-started keyless peer, seconds (0 = never).
    pub idle_timeout_secs: u64,
    /// Where `distc peer` serves Prometheus metrics (None = off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Producers whose entries this machine accepts: `None` = any member ("mesh").
    pub trust: Option<Vec<String>>,
    /// Producers refused whatever `trust` says.
    pub distrust: Vec<String>,
    /// Share of remote hits also compiled here and compared.
    pub verify_rate: VerifyRate,
    /// Send a miss to a member with a free slot while this machine is busy.
    pub offload: bool,
    /// Compile for other members (closed mesh only).
    pub serve_compiles: bool,
    /// Serve compiles without bubblewrap where it is missing.
    pub serve_unsandboxed: bool,
}

/// The share of remote hits re-verified, in millionths (so that the config stays `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyRate(pub u32);

impl VerifyRate {
    /// The share as a fraction from 0 to 1.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 1e6
    }

    /// True with the probability of this rate (a sample is due). Never true at 0.
    pub fn sample(self) -> bool {
        use std::hash::{BuildHasher, Hasher};
        if self.0 == 0 {
            return false;
        }
        // A fresh random value per call from the standard library's seeded hasher keys: no
        // RNG crate on the wrapper's path.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        (r % 1_000_000) < u64::from(self.0)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            dir: PathBuf::new(),
            max_size: 5 << 30,
            base_dir: None,
            disable: false,
            direct_mode: true,
            depend_mode: true,
            peer_timeout_ms: 500,
            auto_start: true,
            log: "warn".into(),
            replication: 2,
            vnodes: 128,
            weight: None,
            client: false,
            port: 7878,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            psk_file: None,
            open: false,
            max_entry_size: 512 << 20,
            hedge_delay_ms: 100,
            leave_timeout_secs: 30,
            handoff_rate: 32 << 20,
            idle_timeout_secs: 900,
            metrics_listen: None,
            trust: None,
            distrust: Vec::new(),
            verify_rate: VerifyRate(10_000),
            offload: true,
            serve_compiles: true,
            serve_unsandboxed: false,
        }
    }
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_}: not valid TOML: {message}")]
    Syntax { source_: Source, message: String },
    #[error("{source_}: unknown key `{key}`; accepted keys: {}", KEYS.join(", "))]
    UnknownKey { source_: Source, key: String },
    #[error("{source_}: key `{key}`: invalid value {value}; expected {expected}")]
    BadValue {
        source_: Source,
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "cannot find a home directory for the cache; set DISTC_DIR (or `dir` in the config file)"
    )]
    NoHome,
}

/// A value as a layer gives it: typed from TOML, or text from the environment or a flag.
#[derive(Debug, Clone)]
pub enum Raw<'a> {
    Toml(&'a toml::Value),
    Text(&'a str),
}

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Toml(v) => write!(f, "{v}"),
            Raw::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl Config {
    /// Loads defaults, the config file and the environment.
    pub fn load() -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = config_file() {
            match std::fs::read_to_string(&path) {
                Ok(text) => cfg.apply_toml(&text, Source::File(path))?,
                // Only an explicitly named file must exist.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && std::env::var_os("DISTC_CONFIG").is_none() => {}
                Err(e) => return Err(ConfigError::Read { path, source: e }),
            }
        }
        cfg.apply_env()?;
        cfg.finish()
    }

    /// Loads like [`Config::load`], but a bad value never stops it: the wrapper, which must
    /// never fail a build, keeps the default (or the earlier layer's value) for that key and
    /// gets the errors back to warn about. An unreadable or malformed file is skipped whole.
    /// Only a missing home directory (no cache directory at all) is an error.
    pub fn load_lenient() -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let mut cfg = Config::default();
        let mut problems = Vec::new();
        if let Some(path) = config_file() {
            match std::fs::read_to_string(&path) {
                Ok(text) => cfg.apply_toml_with(&text, Source::File(path), &mut |e| {
                    problems.push(e);
                    Ok(())
                })?,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && std::env::var_os("DISTC_CONFIG").is_none() => {}
                Err(e) => problems.push(ConfigError::Read { path, source: e }),
            }
        }
        cfg.apply_env_with(&mut |e| {
            problems.push(e);
            Ok(())
        })?;
        Ok((cfg.finish()?, problems))
    }

    /// Applies one TOML document (a config file's text).
    pub fn apply_toml(&mut self, text: &str, source: Source) -> Result<(), ConfigError> {
        self.apply_toml_with(text, source, &mut Err)
    }

    /// [`Config::apply_toml`], handing each bad key to `on_error` (which may stop the load by
    /// returning the error, or skip the key).
    fn apply_toml_with(
        &mut self,
        text: &str,
        source: Source,
        on_error: &mut dyn FnMut(ConfigError) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                return on_error(ConfigError::Syntax {
                    source_: source.clone(),
                    message: e.message().to_string(),
                });
            }
        };
        for (key, value) in &table {
            if let Err(e) = self.set(key, Raw::Toml(value), &source) {
                on_error(e)?;
            }
        }
        Ok(())
    }

    /// Applies every `DISTC_<KEY>` variable that is set.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_env_with(&mut Err)
    }

    fn apply_env_with(
        &mut self,
        on_error: &mut dyn FnMut(ConfigError) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        for key in KEYS {
            let var = format!("DISTC_{}", key.to_ascii_uppercase());
            if let Some(value) = std::env::var_os(&var) {
                let value = value.to_string_lossy().into_owned();
                if let Err(e) = self.set(key, Raw::Text(&value), &Source::Env(var)) {
                    on_error(e)?;
                }
            }
        }
        Ok(())
    }

    /// Sets one key. Flags call this with `Source::Flag`.
    pub fn set(&mut self, key: &str, raw: Raw<'_>, source: &Source) -> Result<(), ConfigError> {
        let bad = |expected: &'static str| ConfigError::BadValue {
            source_: source.clone(),
            key: key.to_string(),
            value: raw.to_string(),
            expected,
        };
        match key {
            "dir" => self.dir = expand_home(&string(&raw).ok_or_else(|| bad("a path"))?),
            "max_size" => self.max_size = size(&raw).ok_or_else(|| bad(SIZE))?,
            "base_dir" => {
                let s = string(&raw).ok_or_else(|| bad("an absolute path"))?;
                self.base_dir = match expand_home(&s) {
                    p if p.as_os_str().is_empty() => None,
                    p if p.is_absolute() => Some(p),
                    _ => return Err(bad("an absolute path (or \"\" for off)")),
                };
            }
            "disable" => self.disable = boolean(&raw).ok_or_else(|| bad(BOOL))?,
            "direct_mode" => self.direct_mode = boolean(&raw).ok_or_else(|| bad(BOOL))?,
            "depend_mode" => self.depend_mode = boolean(&raw).ok_or_else(|| bad(BOOL))?,
            "offload" => self.offload = boolean(&raw).ok_or_else(|| bad(BOOL))?,
            "serve_compiles" => self.serve_compiles = boolean(&raw).ok_or_else(|| bad(BOOL))?,
            "serve_unsandboxed" => {
                self.serve_unsandboxed = boolean(&raw).ok_or_else(|| bad(BOOL))?
            }
            "peer_timeout_ms" => {
                self.peer_timeout_ms =
                    integer(&raw, 0, 600_000).ok_or_else(|| bad("milliseconds from 0 to 600000"))?
            }
            "auto_start" => self.auto_start = boolean(&raw).ok_or_else(|| bad(BOOL))?,
            "log" => self.log = string(&raw).ok_or_else(|| bad("a log filter such as \"info\""))?,
            "replication" => {
                self.replication =
                    integer(&raw, 1, 16).ok_or_else(|| bad("a whole number from 1 to 16"))? as u32
            }
            "vnodes" => {
                self.vnodes = integer(&raw, 1, 4096)
                    .ok_or_else(|| bad("a whole number from 1 to 4096"))?
                    as u32
            }
            "weight" => {
                self.weight = match string(&raw) {
                    Some(s) if s.trim().eq_ignore_ascii_case("auto") => None,
                    _ => Some(
                        integer(&raw, 1, distc_peer::ring::MAX_WEIGHT as u64)
                            .ok_or_else(|| bad("\"auto\" or a whole number from 1 to 10000"))?
                            as u32,
                    ),
                }
            }
            "role" => {
                let s = string(&raw).ok_or_else(|| bad(ROLE))?;
                self.client = match s.trim().to_ascii_lowercase().as_str() {
                    "owner" | "" => false,
                    "client" => true,
                    _ => return Err(bad(ROLE)),
                };
            }
            "port" => {
                self.port =
                    integer(&raw, 0, 65535).ok_or_else(|| bad("a TCP port from 0 to 65535"))? as u16
            }
            "listen" => self.listen = list(&raw).ok_or_else(|| bad(LIST))?,
            "bootstrap" => self.bootstrap = list(&raw).ok_or_else(|| bad(LIST))?,
            "mdns" => self.mdns = boolean(&raw).ok_or_else(|| bad(BOOL))?,
            "psk_file" => {
                let s = string(&raw).ok_or_else(|| bad("a path"))?;
                self.psk_file = (!s.is_empty()).then(|| expand_home(&s));
            }
            "open" => self.open = boolean(&raw).ok_or_else(|| bad(BOOL))?,
            "max_entry_size" => self.max_entry_size = size(&raw).ok_or_else(|| bad(SIZE))?,
            "hedge_delay_ms" => {
                self.hedge_delay_ms =
                    integer(&raw, 1, 60_000).ok_or_else(|| bad("milliseconds from 1 to 60000"))?
            }
            "leave_timeout_secs" => {
                self.leave_timeout_secs = integer(&raw, 0, 3600)
                    .ok_or_else(|| bad("seconds from 0 to 3600 (0 = no handoff)"))?
            }
            "handoff_rate" => self.handoff_rate = size(&raw).ok_or_else(|| bad(SIZE))?,
            "idle_timeout_secs" => {
                self.idle_timeout_secs =
                    integer(&raw, 0, u32::MAX as u64).ok_or_else(|| bad("seconds (0 = never)"))?
            }
            "metrics_listen" => {
                let s = string(&raw).ok_or_else(|| bad(SOCKET))?;
                self.metrics_listen = match s.trim() {
                    "" => None,
                    a => Some(a.parse().map_err(|_| bad(SOCKET))?),
                };
            }
            "trust" => {
                let text = match &raw {
                    Raw::Toml(toml::Value::String(s)) => Some(s.as_str()),
                    Raw::Text(s) => Some(*s),
                    Raw::Toml(_) => None,
                };
                self.trust = match text {
                    Some(s) if s.trim().eq_ignore_ascii_case("mesh") => None,
                    _ => Some(peer_ids(&raw).ok_or_else(|| bad(TRUST))?),
                }
            }
            "distrust" => self.distrust = peer_ids(&raw).ok_or_else(|| bad(PEER_IDS))?,
            "verify_rate" => {
                let f = match &raw {
                    Raw::Toml(toml::Value::Float(f)) => Some(*f),
                    Raw::Toml(toml::Value::Integer(i)) => Some(*i as f64),
                    Raw::Toml(toml::Value::String(s)) => s.trim().parse().ok(),
                    Raw::Text(s) => s.trim().parse().ok(),
                    Raw::Toml(_) => None,
                };
                self.verify_rate = match f {
                    Some(f) if (0.0..=1.0).contains(&f) => VerifyRate((f * 1e6).round() as u32),
                    _ => return Err(bad("a share from 0 to 1, such as 0.01 (0 = off)")),
                };
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    source_: source.clone(),
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Fills in derived defaults (the cache directory).
    fn finish(mut self) -> Result<Config, ConfigError> {
        if self.dir.as_os_str().is_empty() {
            self.dir = directories::BaseDirs::new()
                .map(|b| b.cache_dir().join("distc"))
                .ok_or(ConfigError::NoHome)?;
        } else if self.dir.is_relative()
            && let Ok(cwd) = std::env::current_dir()
        {
            // Relative to where distc runs; absolute from here on, so that children (a peer,
            // wrapped compiles in other directories) use the same directory.
            self.dir = cwd.join(&self.dir);
        }
        Ok(self)
    }

    /// The content-addressed store's directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The trust policy the peer enforces.
    pub fn trust_policy(&self) -> distc_peer::trust::TrustPolicy {
        distc_peer::trust::TrustPolicy {
            only: self.trust.clone(),
            distrust: self.distrust.clone(),
        }
    }

    /// The mesh key file.
    pub fn psk_path(&self) -> PathBuf {
        self.psk_file
            .clone()
            .unwrap_or_else(|| config_dir().join("swarm.key"))
    }
}

/// The configuration directory: `$DISTC_CONFIG_DIR`, else the platform's (`~/.config/distc`).
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DISTC_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    directories::BaseDirs::new()
        .map(|b| b.config_dir().join("distc"))
        .unwrap_or_else(|| PathBuf::from(".distc"))
}

/// The config file to read: `$DISTC_CONFIG`, else `<config dir>/distc.toml`.
pub fn config_file() -> Option<PathBuf> {
    match std::env::var_os("DISTC_CONFIG") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => Some(config_dir().join("distc.toml")),
    }
}

const ROLE: &str = "\"owner\" (owns part of the ring) or \"client\" (owns no range)";
const BOOL: &str = "true or false (also 1/0, yes/no, on/off; empty is false)";
const SIZE: &str = "a size in bytes, or a number with K, M, G or T (e.g. \"5G\")";
const SOCKET: &str = "an IP address and port such as \"127.0.0.1:9464\" (or \"\" for off)";
const LIST: &str = "a list of multiaddrs (comma-separated in the environment)";
const PEER_IDS: &str = "a list of peer ids as `distc status` shows them (comma-separated in \
                        the environment)";
const TRUST: &str = "\"mesh\" (any member) or a list of peer ids as `distc status` shows them \
                     (comma-separated in the environment)";

/// A list of peer ids, each checked.
fn peer_ids(raw: &Raw<'_>) -> Option<Vec<String>> {
    let ids = list(raw)?;
    ids.iter()
        .all(|s| distc_peer::trust::parse_peer_id(s).is_ok())
        .then(|| ids.into_iter().map(|s| s.trim().to_string()).collect())
}

fn string(raw: &Raw<'_>) -> Option<String> {
    match raw {
        Raw::Toml(toml::Value::String(s)) => Some(s.clone()),
        Raw::Toml(_) => None,
        Raw::Text(s) => Some(s.to_string()),
    }
}

fn boolean(raw: &Raw<'_>) -> Option<bool> {
    let text = match raw {
        Raw::Toml(toml::Value::Boolean(b)) => return Some(*b),
        Raw::Toml(toml::Value::Integer(0)) => return Some(false),
        Raw::Toml(toml::Value::Integer(1)) => return Some(true),
        Raw::Toml(toml::Value::String(s)) => s.as_str(),
        Raw::Toml(_) => return None,
        Raw::Text(s) => s,
    };
    parse_bool(text)
}

/// The one reading of a boolean written as text (environment, flags, strings in the file):
/// `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`, any case, surrounding blanks ignored;
/// an empty value is false. Anything else is `None`: an error for the CLI and the peer, a
/// warning and the default for the wrapper.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn integer(raw: &Raw<'_>, min: u64, max: u64) -> Option<u64> {
    let n = match raw {
        Raw::Toml(toml::Value::Integer(i)) => u64::try_from(*i).ok()?,
        Raw::Toml(toml::Value::String(s)) => s.trim().parse().ok()?,
        Raw::Toml(_) => return None,
        Raw::Text(s) => s.trim().parse().ok()?,
    };
    (min..=max).contains(&n).then_some(n)
}

/// `~` and `~/…` mean the home directory, as in a shell.
fn expand_home(s: &str) -> PathBuf {
    let home = || directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf());
    if s == "~" {
        return home().unwrap_or_else(|| PathBuf::from(s));
    }
    match (s.strip_prefix("~/"), home()) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(s),
    }
}

fn size(raw: &Raw<'_>) -> Option<u64> {
    match raw {
        Raw::Toml(toml::Value::Integer(i)) => u64::try_from(*i).ok(),
        Raw::Toml(toml::Value::String(s)) => parse_size(s),
        Raw::Toml(_) => None,
        Raw::Text(s) => parse_size(s),
    }
}

/// Parses "1234", "64K", "5G", "1.5G", "5GiB", "5GB" (all powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    let v = num * mult as f64;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

fn list(raw: &Raw<'_>) -> Option<Vec<String>> {
    match raw {
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect(),
        Raw::Toml(_) => None,
        Raw::Text(s) => Some(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Source {
        Source::File(PathBuf::from("test.toml"))
    }

    #[test]
    fn documented_defaults_are_the_built_in_defaults() {
        let mut cfg = Config::default();
        cfg.apply_toml(DEFAULT_TOML, file()).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn every_key_is_documented() {
        let table: toml::Table = DEFAULT_TOML.parse().unwrap();
        let mut documented: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut keys = KEYS.to_vec();
        documented.sort();
        keys.sort();
        assert_eq!(documented, keys);
    }

    #[test]
    fn booleans() {
        for t in ["1", "true", "yes", "on", "TRUE", " On "] {
            assert_eq!(parse_bool(t), Some(true), "{t:?}");
        }
        for f in ["0", "false", "no", "off", "Off", ""] {
            assert_eq!(parse_bool(f), Some(false), "{f:?}");
        }
        for bad in ["maybe", "2", "enabled", "y"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5G"), Some(5 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("10GiB"), Some(10 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5X"), None);
    }

    #[test]
    fn file_values_apply_and_errors_name_file_key_and_accepted() {
        let mut cfg = Config::default();
        cfg.apply_toml(
            "max_size = \"1G\"\nreplication = 3\nbootstrap = [\"/ip4/127.0.0.1/tcp/1\"]",
            file(),
        )
        .unwrap();
        assert_eq!(cfg.max_size, 1 << 30);
        assert_eq!(cfg.replication, 3);
        assert_eq!(cfg.bootstrap, vec!["/ip4/127.0.0.1/tcp/1".to_string()]);

        let e = cfg
            .apply_toml("replication = 0", file())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml") && e.contains("replication") && e.contains("1 to 16"),
            "{e}"
        );
        let e = cfg
            .apply_toml("max_sise = 3", file())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `max_sise`") && e.contains("max_size"),
            "{e}"
        );
        let e = cfg
            .apply_toml("max_size = \"huge\"", file())
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_size") && e.contains("K, M, G"), "{e}");
        let e = cfg
            .apply_toml("disable = 2", file())
            .unwrap_err()
            .to_string();
        assert!(e.contains("disable") && e.contains("true or false"), "{e}");
        let e = cfg
            .apply_toml("this is not toml", file())
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml") && e.contains("TOML"), "{e}");
        let e = cfg
            .apply_toml("base_dir = \"relative\"", file())
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn weight_is_auto_or_a_number_and_role_owner_or_client() {
        let mut cfg = Config::default();
        assert_eq!((cfg.weight, cfg.client), (None, false));
        cfg.apply_toml("weight = 250\nrole = \"client\"", file())
            .unwrap();
        assert_eq!((cfg.weight, cfg.client), (Some(250), true));
        cfg.set(
            "weight",
            Raw::Text("auto"),
            &Source::Env("DISTC_WEIGHT".into()),
        )
        .unwrap();
        cfg.set(
            "role",
            Raw::Text("Owner"),
            &Source::Env("DISTC_ROLE".into()),
        )
        .unwrap();
        assert_eq!((cfg.weight, cfg.client), (None, false));
        for bad in [
            "weight = 0",
            "weight = 10001",
            "weight = \"big\"",
            "role = \"server\"",
        ] {
            let e = cfg.apply_toml(bad, file()).unwrap_err().to_string();
            assert!(e.contains("test.toml"), "{bad}: {e}");
        }
    }

    #[test]
    fn lenient_spellings_and_home_paths() {
        let mut cfg = Config::default();
        cfg.apply_toml(
            "direct_mode = \"no\"\nauto_start = 0\nreplication = \"3\"",
            file(),
        )
        .unwrap();
        assert!(!cfg.direct_mode && !cfg.auto_start);
        assert_eq!(cfg.replication, 3);
        if let Some(home) = directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf()) {
            cfg.apply_toml("dir = \"~/dcache\"\nbase_dir = \"~\"", file())
                .unwrap();
            assert_eq!(cfg.dir, home.join("dcache"));
            assert_eq!(cfg.base_dir, Some(home));
        }
    }

    #[test]
    fn trust_is_mesh_or_a_list_of_peer_ids() {
        let id = "12D3KooWHwFct279AkXH316RCj7G6sPEXfJmNn2Z6qbpduAmPBBY";
        let mut cfg = Config::default();
        cfg.apply_toml(&format!("trust = [\"{id}\"]\ndistrust = []"), file())
            .unwrap();
        assert_eq!(cfg.trust, Some(vec![id.to_string()]));
        let env = Source::Env("DISTC_TRUST".into());
        cfg.set("trust", Raw::Text("mesh"), &env).unwrap();
        assert_eq!(cfg.trust, None);
        cfg.set("distrust", Raw::Text(&format!("{id}, {id}")), &env)
            .unwrap();
        assert_eq!(cfg.trust_policy().distrust.len(), 2);
        let e = cfg
            .apply_toml("trust = [\"alice\"]", file())
            .unwrap_err()
            .to_string();
        assert!(e.contains("trust") && e.contains("peer ids"), "{e}");
    }

    #[test]
    fn text_values_from_env_or_flags() {
        let mut cfg = Config::default();
        let src = Source::Env("DISTC_DISABLE".into());
        cfg.set("disable", Raw::Text("1"), &src).unwrap();
        assert!(cfg.disable);
        cfg.set(
            "bootstrap",
            Raw::Text("/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2"),
            &src,
        )
        .unwrap();
        assert_eq!(cfg.bootstrap.len(), 2);
        let e = cfg
            .set("port", Raw::Text("99999"), &src)
            .unwrap_err()
            .to_string();
        assert!(e.contains("DISTC_DISABLE") && e.contains("port"), "{e}");
    }
}
