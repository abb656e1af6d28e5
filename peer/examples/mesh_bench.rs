//! Node-level mesh measurements, run by `scripts/bench_mesh.sh` (or by hand):
//!
//! ```console
//! $ cargo run --release -p distc-peer --example mesh_bench -- transfer [MB] [RUNS]
//! $ cargo run --release -p distc-peer --example mesh_bench -- converge N [RUNS]
//! $ cargo run --release -p distc-peer --example mesh_bench -- sign [RUNS]
//! ```
//!
//! `transfer`: two nodes on 127.0.0.1 sharing a mesh key (pnet, as in a closed mesh); node A
//! holds one entry of MB megabytes (default 20) of incompressible data; node B fetches it
//! RUNS times (default 7). Prints one line per measure: the raw transfer of the entry (one
//! `Get` request/response over `/distc/1.1.0`), `Node::get` (the transfer plus the digest check
//! a remote hit pays) and, for comparison, the raw transfer between a second pair of nodes that
//! speak only `/distc/1.0.0` (the entry copied into and out of one encoded message) and between
//! a third pair without a mesh key (Noise + Yamux, no pnet). The four are measured in turn
//! within each run, so they see the same machine load. Each line gives
//! the median milliseconds, MB/s (1 MB = 10^6 bytes) and, in the detail, the median CPU time
//! the process (both nodes) spent per transfer.
//!
//! `converge`: starts N nodes at once (each bootstrapping from the first, the daemon's gossip
//! timing) and measures the time from the first node's start until every node's ring holds
//! all N members. Median of RUNS (default 5).
//!
//! `sign`: what provenance costs, per entry, for an object of 4 KB and one of 20 MB
//! (incompressible): the producer's peer signing an entry made on its machine as it first
//! sends it (`Trust::outgoing`), and the receiving peer's checks of a remote hit, the digest
//! check it always paid (`Store::verify_raw`: decompress and hash) and the signature and policy
//! check added to it (`Trust::incoming`). Median of RUNS (default 201) timings of each.
//!
//! Output lines are tab-separated: `measure  median_ms  mb_per_s  detail`.

use std::time::{Duration, Instant};

use distc_peer::Key;
use distc_peer::membership::Timing;
use distc_peer::node::{self, Node, NodeConfig};
use distc_peer::protocol::{PROTOCOL_1_0, PROTOCOLS, Request, Response};
use distc_peer::psk;
use distc_peer::store::Store;
use libp2p::{Multiaddr, StreamProtocol, identity};

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
    config_with(key, bootstrap, &PROTOCOLS)
}

fn config_with(
    key: Option<psk::PreSharedKey>,
    bootstrap: Vec<Multiaddr>,
    protocols: &[StreamProtocol],
) -> NodeConfig {
    let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
    cfg.psk = key;
    cfg.bootstrap = bootstrap;
    cfg.protocols = protocols.to_vec();
    // The daemon's defaults (see daemon::run_async).
    cfg.timing = Timing::default();
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
    // Sub-millisecond measures (signatures) need more digits.
    let prec = if ms < 1.0 { 3 } else { 1 };
    println!("{measure}\t{ms:.prec$}\t{rate}\t{detail}");
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Two nodes sharing a mesh key (or none) and speaking `protocols`, in one ring.
async fn pair(
    key: Option<psk::PreSharedKey>,
    protocols: &[StreamProtocol],
) -> anyhow::Result<[Bench; 2]> {
    let a = start(config_with(key, vec![], protocols))?;
    let a_addr = address(&a).await?;
    let b = start(config_with(key, vec![a_addr], protocols))?;
    for n in [&a, &b] {
        if !n
            .node
            .wait_for(Duration::from_secs(10), |v| v.ring.len() == 2)
            .await
        {
            anyhow::bail!("the two nodes did not form a ring within 10 s");
        }
    }
    Ok([a, b])
}

/// Wall and CPU time of one future.
async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration, Duration) {
    let (t, c) = (Instant::now(), cpu_time());
    let r = f.await;
    (r, t.elapsed(), cpu_time().saturating_sub(c))
}

async fn transfer(mb: usize, runs: usize) -> anyhow::Result<()> {
    let key = psk::generate()?;
    let [a, b] = pair(Some(key), &PROTOCOLS).await?;
    let [a10, b10] = pair(Some(key), &[PROTOCOL_1_0]).await?;
    let [an, bn] = pair(None, &PROTOCOLS).await?;
    let payload = noise(mb * 1_000_000);
    let k = Key::digest(&payload);
    let size = a.node.store().put(&k, &payload)?;
    a10.node.store().put(&k, &payload)?;
    an.node.store().put(&k, &payload)?;
    // What a peer serves: its own entry, signed as it leaves.
    let entry_len = match a.node.store().get_raw(&k)? {
        Some(e) => a.node.trust().outgoing(e, &k)?.len(),
        None => 0,
    };
    let timeout = Duration::from_secs(60);
    let raw_get = |from: &Bench, to: &Bench| {
        let (node, peer) = (to.node.clone(), from.node.view().me);
        async move {
            match node.request(peer, Request::Get(k), timeout).await {
                Ok(Response::Entry(Some(e))) if e.0.len() == entry_len => Ok(()),
                other => Err(anyhow::anyhow!("raw get failed: {other:?}")),
            }
        }
    };

    // (wall, cpu) per measure: raw 1.1.0, Node::get, raw 1.0.0, raw 1.1.0 without a key.
    let mut m: [(Vec<Duration>, Vec<Duration>); 4] = Default::default();
    for i in 0..runs + 1 {
        let (r, w0, c0) = timed(raw_get(&a, &b)).await;
        r?;
        let (r, w1, c1) = timed(b.node.get(&k)).await;
        if r.is_none() {
            anyhow::bail!("Node::get missed an entry node A holds");
        }
        let (r, w2, c2) = timed(raw_get(&a10, &b10)).await;
        r?;
        let (r, w3, c3) = timed(raw_get(&an, &bn)).await;
        r?;
        if i > 0 {
            let all = [(w0, c0), (w1, c1), (w2, c2), (w3, c3)];
            for (j, (w, c)) in all.into_iter().enumerate() {
                m[j].0.push(w);
                m[j].1.push(c);
            }
        }
    }
    let [raw, full, old, open] = m;
    let detail = |cpu: Vec<Duration>, what: &str| {
        format!(
            "{runs} runs, entry {entry_len} bytes ({size} on disk), {what}, cpu {:.0} ms",
            median(cpu).as_secs_f64() * 1000.0
        )
    };
    line(
        "transfer",
        median(raw.0),
        Some(entry_len),
        &detail(raw.1, "pnet key, /distc/1.1.0"),
    );
    line(
        "get+verify",
        median(full.0),
        Some(entry_len),
        &detail(full.1, "pnet key, /distc/1.1.0"),
    );
    line(
        "transfer-1.0",
        median(old.0),
        Some(entry_len),
        &detail(old.1, "pnet key, /distc/1.0.0"),
    );
    line(
        "transfer-nokey",
        median(open.0),
        Some(entry_len),
        &detail(open.1, "no key (Noise only), /distc/1.1.0"),
    );
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

fn sign(runs: usize) -> anyhow::Result<()> {
    use distc_peer::trust::{Trust, TrustPolicy};
    let producer = Trust::with_new_identity(TrustPolicy::default())?;
    let receiver = Trust::with_new_identity(TrustPolicy::default())?;
    for (name, len, runs) in [("4KB", 4_000, runs), ("20MB", 20_000_000, runs.min(15))] {
        let payload = noise(len);
        let k = Key::digest(&payload);
        let local = Store::encode_entry(&k, &payload)?;
        let signed = producer.outgoing(local.clone(), &k)?;
        let time = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<Duration> {
            let mut v = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                f()?;
                v.push(t.elapsed());
            }
            Ok(median(v))
        };
        let sign = time(&|| {
            producer.outgoing(local.clone(), &k)?;
            Ok(())
        })?;
        let copy = time(&|| {
            std::hint::black_box(local.clone());
            Ok(())
        })?;
        let digest = time(&|| {
            Store::verify_raw(&signed, &k, u64::MAX)?;
            Ok(())
        })?;
        let check = time(&|| {
            receiver
                .incoming(&signed, &k)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        })?;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let detail = |what: &str| format!("{runs} runs, entry {} bytes, {what}", signed.len());
        line(
            &format!("sign-{name}"),
            sign.saturating_sub(copy),
            None,
            &detail(&format!(
                "signing on first send ({:.1} us, less {:.1} us copying the entry to call it)",
                us(sign),
                us(copy)
            )),
        );
        line(
            &format!("digest-{name}"),
            digest,
            None,
            &detail("digest check of a remote hit (decompress + SHA-256), as before"),
        );
        line(
            &format!("verify-{name}"),
            check,
            None,
            &detail("signature + policy check added to a remote hit"),
        );
    }
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
        Some("sign") => sign(num(1, 201)?.max(1)),
        _ => anyhow::bail!(
            "usage: mesh_bench transfer [MB] [RUNS] | converge N [RUNS] | sign [RUNS]"
        ),
    }
}
