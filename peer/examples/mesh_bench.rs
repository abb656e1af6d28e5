//! Node-level mesh measurements, run by `scripts/bench_mesh.sh` (or by hand):
//!
//! ```console
//! $ cargo run --release -p distc-peer --example mesh_bench -- transfer [MB] [RUNS]
//! $ cargo run --release -p distc-peer --example mesh_bench -- converge N [RUNS]
//! ```
//!
//! `transfer`: two nodes on 127.0.0.1 sharing a mesh key (pnet, as in a closed mesh); node A
//! holds one entry of MB megabytes (default 20) of incompressible data; node B fetches it
//! RUNS times (default 7). Prints one line per measure: the raw transfer of the entry (one
//! `Get` request/response) and `Node::get` (the transfer plus the digest check a remote hit
//! pays), as median milliseconds and MB/s (1 MB = 10^6 bytes).
//!
//! `converge`: starts N nodes at once (each bootstrapping from the first, the daemon's gossip
//! timing) and measures the time from the first node's start until every node's ring holds
//! all N members. Median of RUNS (default 5).
//!
//! Output lines are tab-separated: `measure  median_ms  mb_per_s  detail`.

use std::time::{Duration, Instant};

use distc_peer::Key;
use distc_peer::membership::Timing;
use distc_peer::node::{self, Node, NodeConfig};
use distc_peer::protocol::{Request, Response};
use distc_peer::psk;
use distc_peer::store::Store;
use libp2p::{Multiaddr, identity};

struct Bench {
    node: Node,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(key: Option<psk::PreSharedKey>, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
    cfg.psk = key;
    cfg.bootstrap = bootstrap;
    // The daemon's defaults (see daemon::run_async).
    cfg.timing = Timing {
        suspect_after: cfg.gossip_interval * 5,
        down_after: cfg.gossip_interval * 12,
        ..Timing::default()
    };
    cfg
}

fn start(cfg: NodeConfig) -> anyhow::Result<Bench> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("store"), 4 << 30)?;
    let (node, ev) = node::new(cfg, store)?;
    let task = tokio::spawn(ev.run());
    Ok(Bench {
        node,
        task,
        _dir: dir,
    })
}

async fn address(b: &Bench) -> anyhow::Result<Multiaddr> {
    if !b
        .node
        .wait_for(Duration::from_secs(5), |v| !v.listen.is_empty())
        .await
    {
        anyhow::bail!("node did not start listening within 5 s");
    }
    let v = b.node.view();
    Ok(v.listen[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(v.me)))
}

/// Incompressible bytes (xorshift), so the entry is as large as the payload.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn line(measure: &str, d: Duration, bytes: Option<usize>, detail: &str) {
    let ms = d.as_secs_f64() * 1000.0;
    let rate = bytes
        .map(|b| format!("{:.0}", b as f64 / 1e6 / d.as_secs_f64()))
        .unwrap_or_default();
    println!("{measure}\t{ms:.1}\t{rate}\t{detail}");
}

async fn transfer(mb: usize, runs: usize) -> anyhow::Result<()> {
    let key = psk::generate()?;
    let a = start(config(Some(key), vec![]))?;
    let a_addr = address(&a).await?;
    let b = start(config(Some(key), vec![a_addr]))?;
    for n in [&a, &b] {
        if !n
            .node
            .wait_for(Duration::from_secs(10), |v| v.ring.len() == 2)
            .await
        {
            anyhow::bail!("the two nodes did not form a ring within 10 s");
        }
    }
    let payload = noise(mb * 1_000_000);
    let k = Key::digest(&payload);
    let size = a.node.store().put(&k, &payload)?;
    let entry_len = a.node.store().get_raw(&k)?.map(|e| e.len()).unwrap_or(0);
    let a_id = a.node.view().me;
    let timeout = Duration::from_secs(60);

    let mut raw = Vec::new();
    let mut full = Vec::new();
    for i in 0..runs + 1 {
        let t = Instant::now();
        match b.node.request(a_id, Request::Get(k), timeout).await {
            Ok(Response::Entry(Some(e))) if e.0.len() == entry_len => {}
            other => anyhow::bail!("raw get failed: {other:?}"),
        }
        let d1 = t.elapsed();
        let t = Instant::now();
        if b.node.get(&k).await.is_none() {
            anyhow::bail!("Node::get missed an entry node A holds");
        }
        let d2 = t.elapsed();
        if i > 0 {
            raw.push(d1);
            full.push(d2);
        }
    }
    let detail = format!("{runs} runs, entry {entry_len} bytes ({size} on disk), pnet key");
    line("transfer", median(raw), Some(entry_len), &detail);
    line("get+verify", median(full), Some(entry_len), &detail);
    Ok(())
}

async fn converge(n: usize, runs: usize) -> anyhow::Result<()> {
    let key = psk::generate()?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let first = start(config(Some(key), vec![]))?;
        let addr = address(&first).await?;
        let mut nodes = vec![first];
        for _ in 1..n {
            nodes.push(start(config(Some(key), vec![addr.clone()]))?);
        }
        for b in &nodes {
            if !b
                .node
                .wait_for(Duration::from_secs(30), |v| v.ring.len() == n)
                .await
            {
                anyhow::bail!("{n} nodes did not converge within 30 s");
            }
        }
        times.push(t0.elapsed());
        // Leave cleanly so the next round starts from nothing.
        for b in &nodes {
            b.node.leave().await;
        }
    }
    line(
        &format!("converge-{n}"),
        median(times),
        None,
        &format!("{runs} runs, {n} nodes, gossip every 500 ms"),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| -> anyhow::Result<usize> {
        match args.get(i) {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|_| anyhow::anyhow!("{s:?} is not a number")),
        }
    };
    match args.first().map(String::as_str) {
        Some("transfer") => transfer(num(1, 20)?, num(2, 7)?.max(1)).await,
        Some("converge") => converge(num(1, 3)?.max(2), num(2, 5)?.max(1)).await,
        _ => anyhow::bail!("usage: mesh_bench transfer [MB] [RUNS] | converge N [RUNS]"),
    }
}
