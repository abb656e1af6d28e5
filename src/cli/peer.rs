//! `distc peer`: the configuration and flags turned into the node's options; the node itself
//! lives in `distc_peer`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use distc_peer::daemon::{self, Multiaddr, PeerOptions};
use distc_peer::metrics::{WrapperCounters, WrapperSource};
use distc_peer::psk;

use crate::config::Config;

/// `distc peer` flags (config file and DISTC_* variables give the defaults).
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PeerArgs {
    #[command(subcommand)]
    pub action: Option<PeerAction>,
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
    /// Join as a client: owns no range of the ring, reads and writes through the owners
    /// (config `role = "client"`). For CI runners and laptops that come and go.
    #[arg(long)]
    pub client: bool,
    /// Set by auto-start: a keyless peer then exits after `idle_timeout_secs` without use.
    #[arg(long, hide = true)]
    pub auto_started: bool,
}

/// What `distc peer` does instead of running a peer.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PeerAction {
    /// Stops this machine's running peer gracefully: it hands the entries it holds to the
    /// peers that will own them (at most `leave_timeout_secs`), tells the mesh it leaves, and
    /// exits; this command waits for that.
    Stop,
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
    o.weight = if config.client || args.client {
        0
    } else {
        config
            .weight
            .unwrap_or_else(|| distc_peer::ring::weight_for_size(config.max_size))
    };
    o.max_entry_size = config.max_entry_size;
    o.max_size = config.max_size;
    // A wrapper gives its local peer `peer_timeout_ms` in all; the peer answers a lookup
    // within most of it (then "not found"), so that only a stuck local peer ever misses a
    // wrapper's deadline, and gives each remote owner a part, so that a dead owner leaves
    // time to ask the next.
    o.lookup_timeout = Duration::from_millis(config.peer_timeout_ms * 4 / 5);
    o.get_timeout = Duration::from_millis((config.peer_timeout_ms * 2 / 5).clamp(50, 10_000));
    o.hedge_delay = Duration::from_millis(config.hedge_delay_ms.max(1));
    o.leave_timeout = Duration::from_secs(config.leave_timeout_secs);
    o.handoff_rate = config.handoff_rate;
    o.metrics_listen = args.metrics.or(config.metrics_listen);
    o.metrics_public = args.metrics_public;
    o.trust = config.trust_policy();
    o.serve_compiles = config.serve_compiles;
    o.serve_unsandboxed = config.serve_unsandboxed;
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
    if let Some(PeerAction::Stop) = args.action {
        return stop(config);
    }
    let opts = peer_options(config, args)?;
    daemon::run(opts)?;
    Ok(ExitCode::SUCCESS)
}

/// `distc peer stop`: asks the running peer to stop and waits until it has exited.
fn stop(config: &Config) -> Result<ExitCode> {
    let dir = &config.dir;
    let pid: Option<i32> = std::fs::read_to_string(dir.join("peer.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut client = match distc_peer::ipc::IpcClient::connect(dir, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(_) => {
            println!("no peer is running for {}", dir.display());
            return Ok(ExitCode::SUCCESS);
        }
    };
    client.shutdown().with_context(|| {
        format!(
            "the peer for {} did not take the request to stop; `kill -TERM` its pid (peer.pid) stops it the same way",
            dir.display()
        )
    })?;
    drop(client);
    println!("stopping the peer: it hands its entries on, then leaves the mesh");
    // The peer still holds its lock while it hands entries on; it is gone when the lock is.
    let limit = Duration::from_secs(config.leave_timeout_secs + 15);
    let started = std::time::Instant::now();
    while daemon::is_running(dir) {
        if started.elapsed() > limit {
            anyhow::bail!(
                "the peer for {} (pid {}) is still running after {}s; see its log (or {} when \
                 it was started automatically)",
                dir.display(),
                pid.map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                limit.as_secs(),
                dir.join("peer.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("stopped after {:.1}s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
