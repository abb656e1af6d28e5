//! `distc slots`: how many jobs this machine can usefully run now — its own cores plus the
//! free compile slots of members that serve one of its compilers — for `make -j"$(distc
//! slots)"`; with `--list`, every member's slots as this peer last heard them (the same
//! table `distc status` ends with).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use distc_peer::ipc::IpcClient;
use distc_peer::offload::SlotsReport;

use crate::config::Config;

/// The local peer's slot report, or `None` when no peer answers.
pub fn report(config: &Config) -> Option<SlotsReport> {
    let mut c = IpcClient::connect(&config.dir, Duration::from_secs(2)).ok()?;
    c.slots().ok()
}

/// The table of slots per member.
pub fn render(r: &SlotsReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Compile slots: {} cores here, {} compiles running; serving: {}",
        r.cores, r.running, r.serving
    );
    if !r.peers.is_empty() {
        let _ = writeln!(
            out,
            "  {:<54} {:>5} {:>5} {:>10}",
            "PEER", "CORES", "FREE", "COMPILERS"
        );
        for p in &r.peers {
            let tag = if p.me {
                " (this peer)"
            } else if p.shared_toolchain {
                ""
            } else {
                " (none of ours)"
            };
            let _ = writeln!(
                out,
                "  {:<54} {:>5} {:>5} {:>10}{tag}",
                p.peer, p.cores, p.free, p.toolchains
            );
        }
    }
    let _ = writeln!(
        out,
        "  compiled for others {} (refused {}); sent to others {} (returned {}); bytes out {}, in {}",
        r.served, r.refused, r.sent, r.returned, r.bytes_out, r.bytes_in
    );
    out
}

/// `distc slots [--list] [--json]`. Without a peer: this machine's cores.
pub fn slots(config: &Config, list: bool, json: bool) -> Result<ExitCode> {
    let r = report(config);
    let usable = r
        .as_ref()
        .map_or(distc_peer::slots::cores() as u32, SlotsReport::usable);
    if json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("usable".into(), usable.into());
        } else {
            v = serde_json::json!({ "usable": usable, "running": false });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if list {
        match &r {
            Some(r) => print!("{}", render(r)),
            None => println!("no peer runs: {usable} cores here, no members"),
        }
        println!("usable now: {usable}");
    } else {
        println!("{usable}");
    }
    Ok(ExitCode::SUCCESS)
}
