//! Membership at scale, run by `scripts/bench_scale.sh` (or by hand):
//!
//! ```console
//! $ cargo run --release -p distc-peer --example scale_bench -- N [IDLE_SECS]
//! ```
//!
//! Starts N nodes in this one process (each a full libp2p node on its own 127.0.0.1 TCP port,
//! and its membership datagram socket on the same UDP port; no mesh key, the daemon's
//! membership timing), each joining through one of the first three. `SCALE_STREAMS=1` sends
//! every membership packet over a libp2p stream instead of a datagram, to compare.
//! Measures, and prints as tab-separated `measure  value  unit`:
//!
//! - `ring_all`: from the first start until every node's ring holds all N members;
//! - `settle`: then until no node is short of CPU (its timers late, so it probes more slowly),
//!   at most 60 s, so that the join and the kill are timed on a settled mesh;
//! - `join_agree`: one more node joins; until every node's ring holds it;
//! - `keys_moved`: share of 100 000 random keys whose primary owner changed with that join;
//! - `kill_agree`: one node's event loop is dropped (its sockets close at once, as in a
//!   crash); until no node's ring holds it;
//! - `traffic_median`, `traffic_max`: membership bytes per second per peer (sent + received:
//!   whole datagrams, and over streams the message bodies and frame prefixes as the
//!   membership codec counts them, not TCP, Noise or Yamux overhead), over IDLE_SECS (default
//!   10) of an idle mesh after the kill;
//! - `tcp_median`, `tcp_max`: the same on the wire: bytes each peer's TCP streams moved per
//!   second (every protocol, with Noise, Yamux and handshakes), over the same window;
//! - `new_conns_median`: TCP connections each peer made or accepted per second, same window;
//! - `failed_median`: membership requests per peer per second that failed (no connection, no
//!   answer in time);
//! - `cpu_per_peer`: this process's CPU time over the window, per peer, in ms per second;
//!   `cpu_cores`: the same for the whole process, in cores (what the machine gave it), and
//!   `cpu_cores_start` from the first start until one ring;
//! - `slowed_peers`: peers whose timers fired late at the end, so that they probe and
//!   suspect more slowly (the process is short of CPU);
//! - `conns_median`, `conns_max`: members each peer holds an open connection to, at the end,
//!   and `idle_conns_median`, `idle_conns_max`: those with nothing in flight for a second
//!   (what the bound of 16 is for);
//! - `rss_per_peer`: this process's resident size divided by the peers in it.
//!
//! Nodes in one process share the runtime and the allocator, so `rss_per_peer` is an average,
//! not what one peer process would take on its own.

use std::time::{Duration, Instant};

use distc_peer::Key;
use distc_peer::membership::Timing;
use distc_peer::node::{self, Node, NodeConfig, View};
use distc_peer::store::Store;
use libp2p::{Multiaddr, PeerId, identity};

struct Peer {
    node: Node,
    task: tokio::task::JoinHandle<()>,
    addr: Multiaddr,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(bootstrap: Vec<Multiaddr>) -> anyhow::Result<Peer> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("store"), 1 << 20)?;
    let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
    cfg.bootstrap = bootstrap;
    cfg.timing = timing();
    // SCALE_STREAMS=1: every membership packet over a libp2p stream, none as a datagram.
    cfg.datagrams = std::env::var_os("SCALE_STREAMS").is_none();
    if let Some(s) = env_u64("SCALE_CONN_IDLE_MS") {
        cfg.idle_connection_timeout = Duration::from_millis(s);
    }
    let (node, ev) = node::new(cfg, store)?;
    let task = tokio::spawn(ev.run());
    if !node
        .wait_for(Duration::from_secs(30), |v| !v.listen.is_empty())
        .await
    {
        anyhow::bail!("a node never listened");
    }
    let v = node.view();
    let addr = v.listen[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(v.me));
    Ok(Peer {
        node,
        task,
        addr,
        _dir: dir,
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// The daemon's timing, or what `SCALE_PROBE_MS`, `SCALE_RTT_MS`, `SCALE_SUSPECT_MS`,
/// `SCALE_GOSSIP_MS`, `SCALE_FANOUT` say (to compare settings).
fn timing() -> Timing {
    let mut t = Timing::default();
    let ms = Duration::from_millis;
    if let Some(v) = env_u64("SCALE_PROBE_MS") {
        t.probe_period = ms(v);
    }
    if let Some(v) = env_u64("SCALE_RTT_MS") {
        t.probe_rtt = ms(v);
    }
    if let Some(v) = env_u64("SCALE_SUSPECT_MS") {
        t.suspect_to_down = ms(v);
    }
    if let Some(v) = env_u64("SCALE_GOSSIP_MS") {
        t.gossip_period = ms(v);
    }
    if let Some(v) = env_u64("SCALE_FANOUT") {
        t.gossip_fanout = v as usize;
    }
    t
}

/// This process's CPU time (user + system), in seconds.
fn cpu_secs() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which ends with ')'): utime, stime are the 12th, 13th.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Waits until `pred` holds on every peer; the time it took, or an error after `limit`.
async fn until_all(
    peers: &[Peer],
    limit: Duration,
    what: &str,
    pred: impl Fn(&View) -> bool + Clone,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for p in peers {
        let left = limit.saturating_sub(t.elapsed());
        if !p.node.wait_for(left, pred.clone()).await {
            let sizes: Vec<usize> = peers.iter().map(|p| p.node.view().ring.len()).collect();
            let slowed = peers.iter().filter(|p| p.node.view().slowdown > 1).count();
            anyhow::bail!(
                "{what}: no agreement within {limit:?}; {slowed} of {} peers were short of CPU \
                 (timers late, probing slowed down) at the end; ring sizes {sizes:?}",
                peers.len()
            );
        }
    }
    Ok(t.elapsed())
}

/// With `SCALE_TRACE` set: every 500 ms on stderr, how many peers hold what `has` looks for,
/// how many have a ring of `want`, and how many member records are suspect or down.
fn progress(
    peers: &[Peer],
    has: impl Fn(&View) -> bool + Send + 'static,
    want: usize,
) -> tokio::task::JoinHandle<()> {
    let nodes: Vec<Node> = peers.iter().map(|p| p.node.clone()).collect();
    tokio::spawn(async move {
        if std::env::var_os("SCALE_TRACE").is_none() {
            return;
        }
        let t = Instant::now();
        let (mut cpu, mut fails, mut conns) = (cpu_secs(), 0u64, 0u64);
        loop {
            let views: Vec<_> = nodes.iter().map(|n| n.view()).collect();
            let (c, f, k) = (
                cpu_secs(),
                views.iter().map(|v| v.membership_failed).sum::<u64>(),
                views.iter().map(|v| v.tcp_connections).sum::<u64>(),
            );
            let (dc, df, dk) = (c - cpu, f - fails, k - conns);
            (cpu, fails, conns) = (c, f, k);
            let holding = views.iter().filter(|v| has(v)).count();
            let full = views.iter().filter(|v| v.ring.len() == want).count();
            let count = |l: distc_peer::membership::Liveness| {
                views
                    .iter()
                    .flat_map(|v| v.members.iter())
                    .filter(|m| m.liveness == l)
                    .count()
            };
            let sizes: std::collections::BTreeMap<usize, usize> =
                views.iter().fold(Default::default(), |mut m, v| {
                    *m.entry(v.ring.len()).or_default() += 1;
                    m
                });
            let slowed = views.iter().filter(|v| v.slowdown > 1).count();
            let slowest = views.iter().map(|v| v.slowdown).max().unwrap_or(1);
            eprintln!(
                "{:6.1}s cpu {:.2} slowed {slowed} (max x{slowest}) failed {df} conns {dk} holding {holding}/{} ring={want}: {full} suspect {} down {} sizes {sizes:?}",
                t.elapsed().as_secs_f64(),
                dc / 0.5,
                views.len(),
                count(distc_peer::membership::Liveness::Suspect),
                count(distc_peer::membership::Liveness::Down),
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn line(measure: &str, value: f64, unit: &str) {
    println!("{measure}\t{value:.3}\t{unit}");
}

async fn run(n: usize, idle: Duration) -> anyhow::Result<()> {
    let limit = Duration::from_secs(300);
    let (t0, cpu_start) = (Instant::now(), cpu_secs());
    let mut peers = vec![start(vec![]).await?];
    for i in 1..n {
        let seed = peers[i % peers.len().min(3)].addr.clone();
        peers.push(start(vec![seed]).await?);
    }
    let watch = progress(&peers, move |v: &View| v.ring.len() == n, n);
    until_all(&peers, limit, "start", move |v| v.ring.len() == n).await?;
    watch.abort();
    line("ring_all", t0.elapsed().as_secs_f64(), "s");
    line(
        "cpu_cores_start",
        (cpu_secs() - cpu_start) / t0.elapsed().as_secs_f64(),
        "cores",
    );

    // Starting 200 nodes at once starves this process, and a starved node probes more slowly
    // (membership's `slowdown`): let the mesh settle before the join and the kill are timed,
    // as a mesh of machines would be.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) && peers.iter().any(|p| p.node.view().slowdown > 1)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    line("settle", t.elapsed().as_secs_f64(), "s");

    let before = peers[0].node.view().ring.clone();
    let joiner = start(vec![peers[1].addr.clone()]).await?;
    let j = joiner.node.view().me;
    peers.push(joiner);
    let watch = progress(&peers, move |v: &View| v.ring.members().contains(&j), n + 1);
    let d = until_all(&peers, limit, "join", move |v| {
        v.ring.members().contains(&j) && v.ring.len() == n + 1
    })
    .await?;
    watch.abort();
    line("join_agree", d.as_secs_f64(), "s");
    let after = peers[0].node.view().ring.clone();
    let mut moved = 0;
    let samples = 100_000u32;
    for i in 0..samples {
        let k = Key::digest(&i.to_le_bytes());
        if before.owners(&k, 1) != after.owners(&k, 1) {
            moved += 1;
        }
    }
    line("keys_moved", moved as f64 / samples as f64, "share");
    line("keys_moved_ideal", 1.0 / (n + 1) as f64, "share");

    let victim = peers.remove(n / 2);
    let dead: PeerId = victim.node.view().me;
    victim.task.abort();
    drop(victim);
    let watch = progress(&peers, move |v: &View| !v.ring.members().contains(&dead), n);
    let d = until_all(&peers, limit, "kill", move |v| {
        !v.ring.members().contains(&dead) && v.ring.len() == n
    })
    .await?;
    watch.abort();
    line("kill_agree", d.as_secs_f64(), "s");

    let bytes = |v: &View| (v.membership_sent + v.membership_received) as f64;
    let tcp = |v: &View| (v.tcp_sent + v.tcp_received) as f64;
    let dials = |v: &View| v.tcp_connections as f64;
    let failed = |v: &View| v.membership_failed as f64;
    let snap = |f: &dyn Fn(&View) -> f64| -> Vec<f64> {
        peers.iter().map(|p| f(&p.node.view())).collect()
    };
    let (b0, t0, d0, f0) = (snap(&bytes), snap(&tcp), snap(&dials), snap(&failed));
    let (t, cpu0) = (Instant::now(), cpu_secs());
    tokio::time::sleep(idle).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let rate = |f: &dyn Fn(&View) -> f64, start: &[f64]| -> Vec<f64> {
        peers
            .iter()
            .zip(start)
            .map(|(p, s)| (f(&p.node.view()) - s) / secs)
            .collect()
    };
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let rates = rate(&bytes, &b0);
    line("traffic_median", median(rates.clone()) / 1000.0, "KB/s");
    line("traffic_max", max(&rates) / 1000.0, "KB/s");
    let rates = rate(&tcp, &t0);
    line("tcp_median", median(rates.clone()) / 1000.0, "KB/s");
    line("tcp_max", max(&rates) / 1000.0, "KB/s");
    let rates = rate(&dials, &d0);
    line("new_conns_median", median(rates), "per s");
    let rates = rate(&failed, &f0);
    line("failed_median", median(rates), "per s");
    line(
        "cpu_per_peer",
        cpu / secs / peers.len() as f64 * 1000.0,
        "ms/s",
    );
    line("cpu_cores", cpu / secs, "cores");
    let views: Vec<_> = peers.iter().map(|p| p.node.view()).collect();
    line(
        "slowed_peers",
        views.iter().filter(|v| v.slowdown > 1).count() as f64,
        "peers",
    );
    let conns: Vec<f64> = views
        .iter()
        .map(|v| v.members.iter().filter(|m| m.connected).count() as f64)
        .collect();
    let cmax = conns.iter().copied().fold(0.0, f64::max);
    line("conns_median", median(conns), "connections");
    line("conns_max", cmax, "connections");
    let idle: Vec<f64> = views.iter().map(|v| v.idle_connections as f64).collect();
    let imax = idle.iter().copied().fold(0.0, f64::max);
    line("idle_conns_median", median(idle), "connections");
    line("idle_conns_max", imax, "connections");
    line(
        "rss_per_peer",
        rss_bytes() as f64 / peers.len() as f64 / 1e6,
        "MB",
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(50);
    let idle: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    run(n.max(4), Duration::from_secs(idle)).await
}
