//! Membership at scale, run by `scripts/bench_scale.sh` (or by hand):
//!
//! ```console
//! $ cargo run --release -p distc-peer --example scale_bench -- N [IDLE_SECS]
//! ```
//!
//! Starts N nodes in this one process (each a full libp2p node on its own 127.0.0.1 TCP port,
//! no mesh key, the daemon's membership timing), each joining through one of the first three.
//! Measures, and prints as tab-separated `measure  value  unit`:
//!
//! - `ring_all`: from the first start until every node's ring holds all N members;
//! - `join_agree`: one more node joins; until every node's ring holds it;
//! - `keys_moved`: share of 100 000 random keys whose primary owner changed with that join;
//! - `kill_agree`: one node's event loop is dropped (its sockets close at once, as in a
//!   crash); until no node's ring holds it;
//! - `traffic_median`, `traffic_max`: membership bytes per second per peer (sent + received,
//!   message bodies and frame prefixes as the membership codec counts them; not TCP, Noise or
//!   Yamux overhead), over IDLE_SECS (default 10) of an idle mesh after the kill;
//! - `conns_median`, `conns_max`: members each peer holds an open connection to, at the end;
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
    cfg.timing = Timing::default();
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
            anyhow::bail!("{what}: no agreement within {limit:?}; ring sizes {sizes:?}");
        }
    }
    Ok(t.elapsed())
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
    let t0 = Instant::now();
    let mut peers = vec![start(vec![]).await?];
    for i in 1..n {
        let seed = peers[i % peers.len().min(3)].addr.clone();
        peers.push(start(vec![seed]).await?);
    }
    until_all(&peers, limit, "start", move |v| v.ring.len() == n).await?;
    line("ring_all", t0.elapsed().as_secs_f64(), "s");

    let before = peers[0].node.view().ring.clone();
    let joiner = start(vec![peers[1].addr.clone()]).await?;
    let j = joiner.node.view().me;
    peers.push(joiner);
    let d = until_all(&peers, limit, "join", move |v| {
        v.ring.members().contains(&j) && v.ring.len() == n + 1
    })
    .await?;
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
    let d = until_all(&peers, limit, "kill", move |v| {
        !v.ring.members().contains(&dead) && v.ring.len() == n
    })
    .await?;
    line("kill_agree", d.as_secs_f64(), "s");

    let bytes = |v: &View| (v.membership_sent + v.membership_received) as f64;
    let start_bytes: Vec<f64> = peers.iter().map(|p| bytes(&p.node.view())).collect();
    let t = Instant::now();
    tokio::time::sleep(idle).await;
    let secs = t.elapsed().as_secs_f64();
    let rates: Vec<f64> = peers
        .iter()
        .zip(&start_bytes)
        .map(|(p, s)| (bytes(&p.node.view()) - s) / secs)
        .collect();
    let max = rates.iter().copied().fold(0.0, f64::max);
    line("traffic_median", median(rates) / 1000.0, "KB/s");
    line("traffic_max", max / 1000.0, "KB/s");
    let conns: Vec<f64> = peers
        .iter()
        .map(|p| p.node.view().members.iter().filter(|m| m.connected).count() as f64)
        .collect();
    let cmax = conns.iter().copied().fold(0.0, f64::max);
    line("conns_median", median(conns), "connections");
    line("conns_max", cmax, "connections");
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
