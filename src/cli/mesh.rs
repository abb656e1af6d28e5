//! The mesh commands: `distc peer`, `distc mesh init|join|token`, `distc status`, and the mesh
//! parts of `distc flush` and `distc inspect`. The node itself lives in `distc_peer`; this
//! module turns the configuration into its options and prints what it reports.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use distc_peer::daemon::{self, Multiaddr, PeerOptions};
use distc_peer::ipc::IpcClient;
use distc_peer::metrics::{WrapperCounters, WrapperSource};
use distc_peer::psk;
use distc_peer::report::{FlushReport, StatusReport};

use crate::config::Config;

/// `distc peer` flags (config file and DISTC_* variables give the defaults).
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// Listen on this multiaddr (repeatable) [default: /ip4/0.0.0.0/tcp/<port> with a mesh
    /// key, /ip4/127.0.0.1/tcp/0 without].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Dial this multiaddr at start, e.g. /ip4/100.64.0.7/tcp/7878 (repeatable; adds to the
    /// config's `bootstrap`).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Do not discover peers by mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// The mesh key file [default: <config dir>/swarm.key].
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<std::path::PathBuf>,
    /// Without a mesh key, still listen beyond loopback: a keyless mesh for a LAN you trust.
    #[arg(long)]
    pub open: bool,
    /// Serve Prometheus metrics on this address (GET /metrics), e.g. 127.0.0.1:9464
    /// [default: config `metrics_listen`, off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Allow --metrics on an address other than loopback (the page shows this machine's
    /// build activity and the mesh's peers to whoever reaches it).
    #[arg(long)]
    pub metrics_public: bool,
    /// Set by auto-start: a keyless peer then exits after `idle_timeout_secs` without use.
    #[arg(long, hide = true)]
    pub auto_started: bool,
}

/// `distc mesh` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum MeshAction {
    /// Create a mesh key (owner-only, in the config dir) and print its one-line join token.
    Init {
        /// Replace an existing key (every other machine must join again).
        #[arg(long)]
        force: bool,
    },
    /// Admit this machine to a mesh: store the key from a token printed by `distc mesh init`.
    Join {
        /// The token (`distc-mesh:` followed by 64 hex characters).
        token: String,
        /// Replace an existing, different key.
        #[arg(long)]
        force: bool,
    },
    /// Print the join token of this machine's mesh key.
    Token,
    /// Accept entries produced by PEER (its id as `distc status` shows it): added to the
    /// config's `trust` list (when it is a list) and removed from `distrust`.
    Trust {
        /// The producer's peer id.
        peer: String,
    },
    /// Refuse entries produced by PEER: added to the config's `distrust` list; its entries
    /// are dropped from this machine's store and no longer served to other peers.
    Distrust {
        /// The producer's peer id.
        peer: String,
    },
}

fn parse_addrs(list: &[String], what: &str) -> Result<Vec<Multiaddr>> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim().parse::<Multiaddr>().with_context(|| {
                format!("{what} {s:?} is not a multiaddr (example: /ip4/192.168.1.7/tcp/7878)")
            })
        })
        .collect()
}

/// The peer's options from the configuration and flags.
pub fn peer_options(config: &Config, args: &PeerArgs) -> Result<PeerOptions> {
    let mut o = PeerOptions::new(config.dir.clone());
    o.listen = if args.listen.is_empty() {
        parse_addrs(&config.listen, "listen address")?
    } else {
        parse_addrs(&args.listen, "--listen")?
    };
    o.port = config.port;
    o.bootstrap = parse_addrs(&config.bootstrap, "bootstrap address")?;
    o.bootstrap
        .extend(parse_addrs(&args.bootstrap, "--bootstrap")?);
    o.mdns = config.mdns && !args.no_mdns;
    let psk_file = args.psk_file.clone().unwrap_or_else(|| config.psk_path());
    // A key file the user named must exist: a typo must not quietly give a keyless peer.
    let named = args.psk_file.is_some() || config.psk_file.is_some();
    let keyed = if named {
        psk::load_named(&psk_file).map(|_| true)?
    } else {
        psk::load(&psk_file)?.is_some()
    };
    o.psk_file = Some(psk_file);
    o.psk_required = named;
    o.open = config.open || args.open;
    o.replication = config.replication.max(1) as usize;
    o.vnodes = config.vnodes.max(1) as usize;
    o.max_entry_size = config.max_entry_size;
    o.max_size = config.max_size;
    // A wrapper gives its local peer `peer_timeout_ms` in all; the peer answers a lookup
    // within most of it (then "not found"), so that only a stuck local peer ever misses a
    // wrapper's deadline, and gives each remote owner a part, so that a dead owner leaves
    // time to ask the next.
    o.lookup_timeout = Duration::from_millis(config.peer_timeout_ms * 4 / 5);
    o.get_timeout = Duration::from_millis((config.peer_timeout_ms * 2 / 5).clamp(50, 10_000));
    o.metrics_listen = args.metrics.or(config.metrics_listen);
    o.metrics_public = args.metrics_public;
    o.trust = config.trust_policy();
    let dir = config.dir.clone();
    o.wrapper_counters = Some(WrapperSource(std::sync::Arc::new(move || {
        let s = crate::stats::Stats::read_all(&dir).ok()?;
        Some(WrapperCounters {
            local_hits: s.local_hits,
            remote_hits: s.remote_hits,
            misses: s.misses,
            uncacheable: s.uncacheable,
            errors: s.errors_by_kind,
            mismatches: s.mismatches,
        })
    })));
    if args.auto_started && !keyed && config.idle_timeout_secs > 0 {
        o.idle_timeout = Some(Duration::from_secs(config.idle_timeout_secs));
    }
    Ok(o)
}

/// `distc peer`: runs the node in the foreground until interrupted.
pub fn peer(config: &Config, args: &PeerArgs) -> Result<ExitCode> {
    let opts = peer_options(config, args)?;
    daemon::run(opts)?;
    Ok(ExitCode::SUCCESS)
}

/// `distc mesh …`.
pub fn mesh(config: &Config, action: &MeshAction) -> Result<ExitCode> {
    let path = config.psk_path();
    match action {
        MeshAction::Init { force } => {
            if psk::load(&path)?.is_some() && !force {
                bail!(
                    "a mesh key already exists at {}; its join token is printed by `distc mesh \
                     token` (use --force to replace it: every other machine must then join \
                     again)",
                    path.display()
                );
            }
            let key = psk::generate().context("cannot generate a mesh key")?;
            psk::save(&path, key)?;
            println!("{}", psk::to_token(key));
            eprintln!(
                "Created the mesh key {} (owner-only). On every other machine run:\n  distc mesh join <the token above>\nthen (re)start `distc peer` everywhere.",
                path.display()
            );
        }
        MeshAction::Join { token, force } => {
            let key = psk::parse_token(token)?;
            if let Some(existing) = psk::load(&path)?
                && existing != key
                && !force
            {
                bail!(
                    "{} already holds a different mesh key; pass --force to replace it",
                    path.display()
                );
            }
            psk::save(&path, key)?;
            eprintln!(
                "Joined mesh {} (key stored in {}). Restart `distc peer` to use it.",
                psk::fingerprint(key),
                path.display()
            );
        }
        MeshAction::Trust { peer } => return set_trust(peer, true),
        MeshAction::Distrust { peer } => return set_trust(peer, false),
        MeshAction::Token => match psk::load(&path)? {
            Some(key) => println!("{}", psk::to_token(key)),
            None => bail!(
                "no mesh key at {}; create one with `distc mesh init`",
                path.display()
            ),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// `distc mesh trust|distrust PEER`: edits `trust`/`distrust` in the config file (comments
/// kept), then tells the running peer, or drops the producer's entries from the store itself.
fn set_trust(peer: &str, trusted: bool) -> Result<ExitCode> {
    let id = distc_peer::trust::parse_peer_id(peer)?.to_string();
    let path = crate::config::config_file()
        .context("no config file location (set DISTC_CONFIG or DISTC_CONFIG_DIR)")?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML; fix it first", path.display()))?;
    let ids = |doc: &toml_edit::DocumentMut, key: &str| -> Option<Vec<String>> {
        doc.get(key)?.as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
    };
    let set = |doc: &mut toml_edit::DocumentMut, key: &str, list: Vec<String>| {
        let mut a = toml_edit::Array::new();
        for s in list {
            a.push(s);
        }
        doc[key] = toml_edit::value(a);
    };
    let mut distrust = ids(&doc, "distrust").unwrap_or_default();
    let trust_list = ids(&doc, "trust");
    let said = if trusted {
        distrust.retain(|p| *p != id);
        match trust_list {
            Some(mut list) => {
                if !list.contains(&id) {
                    list.push(id.clone());
                }
                set(&mut doc, "trust", list);
                format!("{id} added to the trusted producers")
            }
            None => format!("{id} is trusted (trust = \"mesh\": every member is)"),
        }
    } else {
        if !distrust.contains(&id) {
            distrust.push(id.clone());
        }
        if let Some(mut list) = trust_list {
            list.retain(|p| *p != id);
            set(&mut doc, "trust", list);
        }
        format!("{id} is distrusted: its entries are refused, dropped and not served")
    };
    set(&mut doc, "distrust", distrust);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::util::write_atomic(&path, doc.to_string().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    for var in ["DISTC_TRUST", "DISTC_DISTRUST"] {
        if std::env::var_os(var).is_some() {
            eprintln!("distc: warning: {var} is set and overrides the config file");
        }
    }
    let config = Config::load().context("the edited config does not load")?;
    let policy = config.trust_policy();
    match IpcClient::connect(&config.dir, Duration::from_secs(30)) {
        Ok(mut c) => c
            .set_trust(policy.clone())
            .context("the local peer did not take the new policy; restart it")?,
        Err(_) => {
            let store = distc_peer::store::Store::open(&config.store_dir(), config.max_size)?;
            let removed = distc_peer::trust::purge_policy(&store, &policy)?;
            if removed > 0 {
                eprintln!("Dropped {removed} entries of producers no longer trusted.");
            }
        }
    }
    println!("{said}");
    println!("Trust: {} (in {})", policy.describe(), path.display());
    Ok(ExitCode::SUCCESS)
}

/// Connects to the local peer; with `auto_start`, starts one and waits up to `wait` for it.
fn client(config: &Config, wait: Duration) -> Option<IpcClient> {
    let timeout = Duration::from_secs(10);
    if let Ok(c) = IpcClient::connect(&config.dir, timeout) {
        return Some(c);
    }
    if !config.auto_start {
        return None;
    }
    daemon::auto_start(&config.dir);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(c) = IpcClient::connect(&config.dir, timeout) {
            return Some(c);
        }
    }
    None
}

fn no_peer_message(config: &Config) -> String {
    format!(
        "no peer is running for {} (start one with `distc peer`; see {} if it fails)",
        config.dir.display(),
        config.dir.join("peer.log").display()
    )
}

fn ago(unix: u64) -> String {
    let now = distc_peer::membership::unix_now();
    if unix == 0 {
        return "never".into();
    }
    let s = now.saturating_sub(unix);
    match s {
        0..=1 => "now".into(),
        2..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// Human-readable status table.
pub fn render_status(s: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mesh = match &s.mesh_key {
        Some(fp) => format!("closed (key {fp})"),
        None => "no key (this machine only, or --open)".into(),
    };
    let _ = writeln!(out, "Mesh: {mesh}; replication R = {}", s.replication);
    let _ = writeln!(out, "This peer: {} (distc {})", s.id, s.version);
    let _ = writeln!(out, "Trust: {}", s.trust);
    let r = &s.refused;
    if r.unsigned + r.bad_signature + r.untrusted > 0 {
        let _ = writeln!(
            out,
            "Refused entries: {} unsigned, {} wrongly signed, {} from producers not trusted here",
            r.unsigned, r.bad_signature, r.untrusted
        );
    }
    if s.bad_entries > 0 {
        let _ = writeln!(
            out,
            "Refused {} entries from peers that were not the entry asked for (see the peer log)",
            s.bad_entries
        );
    }
    let _ = writeln!(
        out,
        "{:<54} {:<8} {:>9} {:>8} {:>10} {:>6}  ADDRESSES",
        "PEER", "STATE", "SEEN", "ENTRIES", "BYTES", "RING"
    );
    for p in &s.peers {
        let _ = writeln!(
            out,
            "{:<54} {:<8} {:>9} {:>8} {:>10} {:>5.1}%  {}",
            p.id,
            p.state,
            ago(p.last_seen),
            p.entries,
            crate::cli::build::human_bytes(p.bytes),
            p.ring_share,
            p.addrs.join(" ")
        );
    }
    if !s.rejected.is_empty() {
        let _ = writeln!(out, "Rejected (cannot join this mesh):");
        for r in &s.rejected {
            let peer = r
                .peer
                .as_deref()
                .map(|p| format!(" {p}"))
                .unwrap_or_default();
            let tried = match r.attempts {
                0 => r.direction.clone(),
                1 => format!("{}, 1 attempt, {}", r.direction, ago(r.last_seen)),
                n => format!("{}, {n} attempts, last {}", r.direction, ago(r.last_seen)),
            };
            let _ = writeln!(out, "  {}{peer} ({tried}): {}", r.addr, r.reason);
        }
    }
    out
}

/// What `status` says when the local peer holds its socket but does not answer.
fn not_answering_message(config: &Config) -> String {
    let pid = std::fs::read_to_string(config.dir.join("peer.pid"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let (who, how) = match &pid {
        Some(pid) => (
            format!("the local peer (pid {pid})"),
            format!(
                "if `ps -o stat= -p {pid}` shows T it is stopped (Ctrl-Z, kill -STOP): resume it \
                 with `kill -CONT {pid}`; otherwise see"
            ),
        ),
        None => ("the local peer".to_string(), "see".to_string()),
    };
    let marked = match distc_peer::ipc::unresponsive_for(&config.dir) {
        Some(age) => format!(
            "; compiles found it unresponsive {} s ago and skip it for {} s at a time",
            age.as_secs(),
            distc_peer::ipc::UNRESPONSIVE_BACKOFF.as_secs()
        ),
        None => String::new(),
    };
    format!(
        "{who} for {} is not answering: {how} {}{marked}",
        config.dir.display(),
        config.dir.join("peer.log").display()
    )
}

/// How long `status` waits for the local peer's answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// `distc status [--json]`.
pub fn status(config: &Config, json: bool) -> Result<ExitCode> {
    let not_answering = || {
        if json {
            println!(
                "{}",
                serde_json::json!({ "running": true, "answering": false, "peers": [] })
            );
        } else {
            eprintln!("distc: {}", not_answering_message(config));
        }
        Ok(ExitCode::FAILURE)
    };
    let connected = match IpcClient::connect(&config.dir, STATUS_TIMEOUT) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return not_answering(),
        Err(_) => None,
    };
    let Some(mut c) = connected.or_else(|| client(config, Duration::from_secs(3))) else {
        if json {
            println!("{}", serde_json::json!({ "running": false, "peers": [] }));
        } else {
            eprintln!("distc: {}", no_peer_message(config));
        }
        return Ok(ExitCode::FAILURE);
    };
    c.set_timeout(STATUS_TIMEOUT)
        .context("cannot set a timeout on the local peer's socket")?;
    let s = match c.status() {
        Ok(s) => s,
        Err(e) if distc_peer::ipc::is_timeout(&e) => return not_answering(),
        Err(e) => return Err(e).context("the local peer did not answer"),
    };
    // Re-verification is the wrappers' (their counters), not the peer's.
    let mismatches = crate::stats::Stats::read_all(&config.dir)
        .map(|s| s.mismatches)
        .unwrap_or_default();
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("running".into(), serde_json::Value::Bool(true));
            o.insert("answering".into(), serde_json::Value::Bool(true));
            o.insert("mismatches".into(), serde_json::to_value(&mismatches)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&s));
        for (producer, n) in &mismatches {
            println!(
                "MISMATCH: {n} re-verified entries produced by {producer} differed from this \
                 machine's compile (`distc mesh distrust {producer}` refuses its entries)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The mesh part of `distc flush`: every reachable peer empties its store. `None` when no
/// local peer runs (then only the local store was flushed).
pub fn flush_mesh(config: &Config) -> Result<Option<FlushReport>> {
    let Ok(mut c) = IpcClient::connect(&config.dir, Duration::from_secs(30)) else {
        return Ok(None);
    };
    Ok(Some(c.flush().context("the local peer did not answer")?))
}

/// Prints a mesh flush report; returns the number of peers that could not be flushed.
pub fn print_flush(report: &FlushReport) -> usize {
    let mut failed = 0;
    for p in report.peers.iter() {
        match (&p.removed, &p.error) {
            (Some((entries, bytes)), _) => println!(
                "Flushed peer {}: removed {entries} entries ({})",
                p.id,
                crate::cli::build::human_bytes(*bytes)
            ),
            (None, e) => {
                failed += 1;
                println!(
                    "Could not flush peer {}: {}",
                    p.id,
                    e.as_deref().unwrap_or("unreachable")
                );
            }
        }
    }
    failed
}
