//! `distc status`: what the local peer reports, as a table or JSON, and what to say when no
//! peer runs or it does not answer.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use distc_peer::daemon;
use distc_peer::ipc::IpcClient;
use distc_peer::report::StatusReport;

use crate::config::Config;

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
        // A client owns no range: its RING column says so rather than 0.0%.
        let ring = match p.role.as_str() {
            "client" => "client".to_string(),
            _ => format!("{:.1}%", p.ring_share),
        };
        let _ = writeln!(
            out,
            "{:<54} {:<8} {:>9} {:>8} {:>10} {:>6}  {}",
            p.id,
            p.state,
            ago(p.last_seen),
            p.entries,
            crate::cli::build::human_bytes(p.bytes),
            ring,
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
