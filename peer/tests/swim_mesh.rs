//! A mesh of real nodes in one process (libp2p over 127.0.0.1 TCP, port 0): SWIM membership
//! brings every one of them to the same ring after the joins, after a graceful leave and after
//! a kill. Every wait is on a condition, bounded generously, so a slow machine makes the test
//! slower, not flaky.
//!
//! 24 nodes in a debug build (what CI runs), where libp2p's unoptimised per-message cost would
//! starve a hundred event loops sharing two cores (probes answered seconds late are failed
//! probes); 120 in an optimised build (`cargo test --release -p distc-peer --test swim_mesh`:
//! 15 s for the file on an otherwise idle 2-core machine, the 120-node kill agreed in under
//! 6 s). The same protocol code at 120 members without sockets is `membership::tests`, in
//! virtual time. `SWIM_TEST_N` overrides the size.

mod common;

use std::time::{Duration, Instant};

use common::TestNode;
use distc_peer::membership::Timing;
use distc_peer::node::NodeConfig;
use libp2p::{Multiaddr, PeerId, identity};

fn n() -> usize {
    std::env::var("SWIM_TEST_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 24 } else { 120 })
}

async fn spawn(bootstrap: Vec<Multiaddr>) -> TestNode {
    let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
    cfg.bootstrap = bootstrap;
    // The daemon's timing: 120 nodes share the test's two worker threads (and the machine's
    // cores with whatever else runs), which is what the widened probe timeouts are for.
    cfg.timing = Timing::default();
    common::start(cfg, 1 << 20, Duration::from_secs(30)).await
}

/// Waits until every node's ring is exactly `want`; says who disagrees if not.
async fn all_agree(nodes: &[&TestNode], want: &[PeerId], limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    for n in nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        let ok = n.node.wait_for(left, |v| v.ring.members() == want).await;
        if !ok {
            let sizes: Vec<usize> = nodes.iter().map(|n| n.node.view().ring.len()).collect();
            eprintln!("ring sizes: {sizes:?}");
        }
        assert!(
            ok,
            "{what}: {} has a ring of {} members, want {}",
            n.node.view().me,
            n.node.view().ring.len(),
            want.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_agree_on_one_ring_through_joins_a_leave_and_a_kill() {
    let t0 = Instant::now();
    let count = n();
    let first = spawn(vec![]).await;
    let mut nodes = vec![first];
    for i in 1..count {
        // Each joins through one of the first few (as a team would list two or three seeds).
        let seed = nodes[i % nodes.len().min(3)].addr.clone();
        nodes.push(spawn(vec![seed]).await);
    }
    let mut ids: Vec<PeerId> = nodes.iter().map(|n| n.node.view().me).collect();
    ids.sort_by_key(|p| p.to_bytes());
    let all: Vec<&TestNode> = nodes.iter().collect();
    all_agree(&all, &ids, Duration::from_secs(180), "after the joins").await;
    eprintln!("{count} members on one ring {:?} after start", t0.elapsed());

    // A graceful leave: everyone drops it.
    let leaver = nodes.remove(count / 2);
    let gone = leaver.node.view().me;
    let t1 = Instant::now();
    leaver.node.leave().await;
    ids.retain(|p| *p != gone);
    let all: Vec<&TestNode> = nodes.iter().collect();
    all_agree(&all, &ids, Duration::from_secs(120), "after a leave").await;
    eprintln!("leave agreed in {:?}", t1.elapsed());
    drop(leaver);

    // A kill: the event loop and its connections vanish at once; SWIM finds out.
    let victim = nodes.remove(count / 3);
    let dead = victim.node.view().me;
    let t2 = Instant::now();
    victim.task.abort();
    ids.retain(|p| *p != dead);
    let all: Vec<&TestNode> = nodes.iter().collect();
    all_agree(&all, &ids, Duration::from_secs(120), "after a kill").await;
    eprintln!("kill agreed in {:?}", t2.elapsed());
    drop(victim);

    // Every member is known with the addresses it announced, so anyone can dial anyone.
    let v = nodes[0].node.view();
    for m in &v.members {
        if ids.contains(&m.id) {
            assert!(!m.addrs.is_empty(), "{} has no address", m.id);
        }
    }
}

/// A crashed member (its event loop and sockets gone, so its address refuses connections) is
/// out of every ring long before the suspicion timeout: a member that suspects it and dials it
/// is refused on its every address and declares it down at once. With the timeout at 60 s,
/// only that can take it out within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_whose_address_refuses_is_down_before_the_suspicion_timeout() {
    let long = Timing {
        suspect_to_down: Duration::from_secs(60),
        ..Timing::default()
    };
    let spawn_long = |bootstrap: Vec<Multiaddr>| {
        let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
        cfg.bootstrap = bootstrap;
        cfg.timing = long;
        common::start(cfg, 1 << 20, Duration::from_secs(30))
    };
    let first = spawn_long(vec![]).await;
    let mut nodes = vec![first];
    for _ in 1..5 {
        let seed = nodes[0].addr.clone();
        nodes.push(spawn_long(vec![seed]).await);
    }
    let mut ids: Vec<PeerId> = nodes.iter().map(|n| n.node.view().me).collect();
    ids.sort_by_key(|p| p.to_bytes());
    let all: Vec<&TestNode> = nodes.iter().collect();
    all_agree(&all, &ids, Duration::from_secs(60), "after the joins").await;

    let victim = nodes.remove(2);
    let dead = victim.node.view().me;
    let t = Instant::now();
    victim.task.abort();
    drop(victim);
    ids.retain(|p| *p != dead);
    let all: Vec<&TestNode> = nodes.iter().collect();
    all_agree(&all, &ids, Duration::from_secs(30), "after a crash").await;
    eprintln!(
        "a crash agreed in {:?} (suspicion timeout 60 s)",
        t.elapsed()
    );
}

/// With more members than `max_connections`, no member holds more than that many idle
/// connections (inbound or outbound) at any moment once the mesh has settled, and still
/// probes everyone: the ring stays whole while connections come and go. Membership over
/// streams (no datagrams), where every probe of a member not connected opens a connection:
/// what a peer without a UDP socket does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_stay_within_the_bound_and_the_ring_stays_whole() {
    const BOUND: usize = 3;
    let spawn_bounded = |bootstrap: Vec<Multiaddr>| {
        let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
        cfg.bootstrap = bootstrap;
        cfg.max_connections = BOUND;
        cfg.datagrams = false;
        common::start(cfg, 1 << 20, Duration::from_secs(30))
    };
    let mut nodes = vec![spawn_bounded(vec![]).await];
    for _ in 1..10 {
        let seed = nodes[0].addr.clone();
        nodes.push(spawn_bounded(vec![seed]).await);
    }
    let mut ids: Vec<PeerId> = nodes.iter().map(|n| n.node.view().me).collect();
    ids.sort_by_key(|p| p.to_bytes());
    let all: Vec<&TestNode> = nodes.iter().collect();
    all_agree(&all, &ids, Duration::from_secs(60), "after the joins").await;

    // Probes and gossip keep opening connections to members beyond the bound; sample every
    // node's view for a while.
    let (mut worst, mut most) = (0, 0);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        for n in &nodes {
            let v = n.node.view();
            worst = worst.max(v.idle_connections);
            most = most.max(v.members.iter().filter(|m| m.connected).count());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("idle connections at most {worst}, connections at most {most} (bound {BOUND})");
    assert!(
        worst <= BOUND,
        "a node held {worst} idle connections, bound {BOUND}"
    );
    all_agree(&all, &ids, Duration::from_secs(5), "after the sampling").await;
}

/// In a closed mesh, probes, acks and gossip travel as sealed UDP datagrams beside each
/// peer's TCP port: every member announces its endpoint and every node receives them (over
/// streams none would), and a datagram that is not sealed with the mesh's key (another
/// mesh's, an unsealed or a garbled one), sent to a member's real socket, is dropped,
/// counted, and changes nothing. (What datagrams save, connections, shows at scale:
/// `scripts/bench_scale.sh`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_travels_as_sealed_datagrams_and_refuses_foreign_ones() {
    use distc_peer::{datagram, psk};
    let key = psk::generate().unwrap();
    let spawn_keyed = |bootstrap: Vec<Multiaddr>| {
        let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
        cfg.bootstrap = bootstrap;
        cfg.psk = Some(key);
        common::start(cfg, 1 << 20, Duration::from_secs(30))
    };
    let mut nodes = vec![spawn_keyed(vec![]).await];
    for _ in 1..8 {
        let seed = nodes[0].addr.clone();
        nodes.push(spawn_keyed(vec![seed]).await);
    }
    let mut ids: Vec<PeerId> = nodes.iter().map(|n| n.node.view().me).collect();
    ids.sort_by_key(|p| p.to_bytes());
    let all: Vec<&TestNode> = nodes.iter().collect();
    all_agree(&all, &ids, Duration::from_secs(60), "after the joins").await;

    // Every member announces a datagram endpoint, and every node hears datagrams.
    let v1 = nodes[1].node.view();
    let target = v1
        .members
        .iter()
        .find(|m| m.id == ids_of(&nodes)[0])
        .and_then(|m| datagram::endpoint(&m.addrs))
        .expect("node 0 announces a UDP endpoint");
    let before: Vec<(u64, u64)> = nodes
        .iter()
        .map(|n| {
            let v = n.node.view();
            (v.datagrams_received, v.tcp_connections)
        })
        .collect();
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;
    let (mut heard, mut dialed) = (Vec::new(), 0);
    for (n, (d0, c0)) in nodes.iter().zip(&before) {
        let v = n.node.view();
        heard.push(v.datagrams_received - d0);
        dialed += v.tcp_connections - c0;
    }
    eprintln!(
        "datagrams received per node in {window:?}: {heard:?}; TCP connections opened in all: {dialed}"
    );
    // Each node probes once a second and is probed about as often: acks alone are 6.
    assert!(
        heard.iter().all(|&d| d >= 4),
        "a node heard too few membership datagrams: {heard:?}"
    );
    // Foreign datagrams at node 0's real socket: sealed with another key, unsealed, garbage.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let foreign = datagram::Sealer::new(identity::Keypair::generate_ed25519(), Some([9u8; 32]));
    let open = datagram::Sealer::new(identity::Keypair::generate_ed25519(), None);
    let packet = b"not a foca packet, and not from a member".to_vec();
    let dropped0 = nodes[0].node.view().datagrams_dropped;
    let now_ms = distc_peer::membership::unix_now_ms();
    for d in [
        foreign.seal(&packet, now_ms).unwrap(),
        open.seal(&packet, now_ms).unwrap(),
        vec![0u8; 200],
        Vec::new(),
    ] {
        sock.send_to(&d, target).unwrap();
    }
    let t = Instant::now();
    while nodes[0].node.view().datagrams_dropped < dropped0 + 4
        && t.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        nodes[0].node.view().datagrams_dropped,
        dropped0 + 4,
        "every foreign datagram is dropped, and counted"
    );
    all_agree(
        &all,
        &ids,
        Duration::from_secs(5),
        "after the foreign datagrams",
    )
    .await;
}

fn ids_of(nodes: &[TestNode]) -> Vec<PeerId> {
    nodes.iter().map(|n| n.node.view().me).collect()
}
