//! `distc status`: what the local peer reports, as a table or JSON, and what to say when no
//! peer runs or it does not answer.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use distc_peer::daemon;
use distc_peer::ipc::IpcClient;
use distc_peer::report::{PeerStatus, StatusReport};

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

/// Rows of the peer table shown without `--all`.
pub const TABLE_ROWS: usize = 20;

/// The summary line above the table: members by state (this peer counted as up), how evenly
/// the ring is shared among the owners in it, this peer's share, membership traffic.
pub fn summary(s: &StatusReport) -> String {
    let count = |state: &str| s.peers.iter().filter(|p| p.state == state).count();
    let up = count("up") + count("self");
    let (suspect, down) = (count("suspect"), count("down"));
    let owners: Vec<f64> = s
        .peers
        .iter()
        .filter(|p| p.state != "down" && p.role != "client")
        .map(|p| p.ring_share)
        .collect();
    let min = owners.iter().copied().fold(f64::INFINITY, f64::min);
    let max = owners.iter().copied().fold(0.0, f64::max);
    let ring = if owners.is_empty() {
        "no owners in the ring".to_string()
    } else {
        format!(
            "ring share {min:.1}–{max:.1}% over {} owners (equal: {:.1}%)",
            owners.len(),
            100.0 / owners.len() as f64
        )
    };
    let mine = s
        .peers
        .iter()
        .find(|p| p.state == "self")
        .map(|p| match p.role.as_str() {
            "client" => "this peer: client, owns no range".to_string(),
            _ => format!("this peer {:.1}%", p.ring_share),
        })
        .unwrap_or_default();
    format!(
        "Members: {} ({up} up, {suspect} suspect, {down} down); {ring}; {mine}; membership {:.1} KB/s, {} connections",
        s.peers.len(),
        s.membership_rate / 1000.0,
        s.connections
    )
}

/// The order of the table: this peer, then suspect and down members (what needs a look), then
/// the rest, each in the peer's order.
fn table_order(s: &StatusReport) -> Vec<&PeerStatus> {
    let rank = |p: &PeerStatus| match p.state.as_str() {
        "self" => 0,
        "suspect" => 1,
        "down" => 2,
        _ => 3,
    };
    let mut rows: Vec<&PeerStatus> = s.peers.iter().collect();
    rows.sort_by_key(|p| rank(p));
    rows
}

/// Human-readable status: the summary line, then the table (the first [`TABLE_ROWS`] rows
/// unless `all`).
pub fn render_status(s: &StatusReport, all: bool) -> String {
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
    let _ = writeln!(out, "{}", summary(s));
    let _ = writeln!(
        out,
        "{:<54} {:<8} {:>9} {:>8} {:>10} {:>6}  ADDRESSES",
        "PEER", "STATE", "SEEN", "ENTRIES", "BYTES", "RING"
    );
    let rows = table_order(s);
    let shown = if all { rows.len() } else { TABLE_ROWS };
    for p in rows.iter().take(shown) {
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
    if rows.len() > shown {
        let _ = writeln!(
            out,
            "… {} more (`distc status --all` lists every one)",
            rows.len() - shown
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

/// `distc status [--json] [--all]`.
pub fn status(config: &Config, json: bool, all: bool) -> Result<ExitCode> {
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
            if let Ok(r) = c.slots() {
                o.insert("slots".into(), serde_json::to_value(&r)?);
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&s, all));
        if let Ok(r) = c.slots() {
            print!("{}", crate::cli::slots::render(&r));
        }
        for (producer, n) in &mismatches {
            println!(
                "MISMATCH: {n} re-verified entries produced by {producer} differed from this \
                 machine's compile (`distc mesh distrust {producer}` refuses its entries)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distc_peer::report::PeerStatus;

    fn peer(i: usize, state: &str, share: f64) -> PeerStatus {
        PeerStatus {
            id: format!("12D3KooPeer{i:03}"),
            addrs: vec![format!("/ip4/10.0.0.{i}/tcp/7878")],
            state: state.into(),
            last_seen: distc_peer::membership::unix_now(),
            entries: 1,
            bytes: 10,
            ring_share: share,
            weight: 100,
            role: "owner".into(),
            connected: false,
        }
    }

    /// 40 members: one self, 36 up, 2 suspect, 1 down (out of the ring).
    fn report() -> StatusReport {
        let mut peers = vec![peer(0, "self", 2.6)];
        for i in 1..40 {
            let state = match i {
                7 | 30 => "suspect",
                35 => "down",
                _ => "up",
            };
            let share = if state == "down" {
                0.0
            } else {
                2.0 + (i % 5) as f64 * 0.25
            };
            peers.push(peer(i, state, share));
        }
        StatusReport {
            id: "12D3KooPeer000".into(),
            version: "0".into(),
            listen: vec![],
            replication: 2,
            mesh_key: None,
            peers,
            bad_entries: 0,
            trust: "mesh".into(),
            refused: Default::default(),
            rejected: vec![],
            membership_rate: 1234.0,
            connections: 9,
        }
    }

    #[test]
    fn a_large_mesh_gets_a_summary_and_a_paged_table_with_what_needs_a_look_first() {
        let s = report();
        let text = render_status(&s, false);
        let lines: Vec<&str> = text.lines().collect();
        let summary = lines
            .iter()
            .find(|l| l.starts_with("Members:"))
            .expect("summary line");
        assert_eq!(
            *summary,
            "Members: 40 (37 up, 2 suspect, 1 down); ring share 2.0–3.0% over 39 owners \
             (equal: 2.6%); this peer 2.6%; membership 1.2 KB/s, 9 connections"
        );
        let header = lines.iter().position(|l| l.starts_with("PEER")).unwrap();
        assert!(
            header
                > lines
                    .iter()
                    .position(|l| l.starts_with("Members:"))
                    .unwrap()
        );
        let rows = &lines[header + 1..];
        assert_eq!(rows.len(), TABLE_ROWS + 1, "{text}");
        assert!(rows[0].contains("self"));
        assert!(rows[1].contains("suspect") && rows[2].contains("suspect"));
        assert!(rows[3].contains("down"));
        assert_eq!(
            rows[TABLE_ROWS],
            "… 20 more (`distc status --all` lists every one)"
        );
        // --all lists every member, and no "more" line.
        let all = render_status(&s, true);
        assert_eq!(
            all.lines().filter(|l| l.starts_with("12D3KooPeer")).count(),
            40
        );
        assert!(!all.contains("more (`distc status --all`"));
        // JSON keeps the whole list and the numbers the summary is made of.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["peers"].as_array().unwrap().len(), 40);
        assert_eq!(v["membership_rate"], 1234.0);
        assert_eq!(v["connections"], 9);
    }

    #[test]
    fn a_small_mesh_shows_every_row() {
        let mut s = report();
        s.peers.truncate(3);
        let text = render_status(&s, false);
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("12D3KooPeer"))
                .count(),
            3
        );
        assert!(!text.contains("more ("));
        assert!(
            text.contains("Members: 3 (3 up, 0 suspect, 0 down)"),
            "{text}"
        );
    }
}
