//! Real nodes on real sockets (127.0.0.1, port 0), in one process: discovery by bootstrap,
//! gossip convergence, replication, failover, repair, flush, and the key boundary.

mod common;

use std::time::{Duration, Instant};

use common::TestNode;
use distc_peer::Key;
use distc_peer::membership::Timing;
use distc_peer::node::{NodeConfig, View};
use distc_peer::protocol::{Request, Response};
use distc_peer::psk;
use distc_peer::store::Store;
use distc_peer::trust;
use libp2p::{Multiaddr, identity};

impl TestNode {
    /// Simulates a crash: the event loop (and with it every connection) vanishes at once.
    fn kill(&self) {
        self.task.abort();
    }
}

async fn spawn(key: Option<psk::PreSharedKey>, bootstrap: Vec<Multiaddr>) -> TestNode {
    let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
    cfg.psk = key;
    cfg.bootstrap = bootstrap;
    cfg.gossip_interval = Duration::from_millis(100);
    cfg.get_timeout = Duration::from_millis(1500);
    cfg.max_entry_size = 1 << 20;
    cfg.timing = Timing {
        probe_period: Duration::from_millis(300),
        probe_rtt: Duration::from_millis(150),
        suspect_to_down: Duration::from_millis(900),
        sync_interval: Duration::from_millis(500),
        forget_after: Duration::from_secs(60),
        unreachable_backoff: Duration::from_secs(2),
        gossip_period: Duration::from_millis(300),
        gossip_fanout: 3,
    };
    common::start(cfg, 1 << 30, Duration::from_secs(5)).await
}

fn ring_size(n: usize) -> impl Fn(&View) -> bool {
    move |v: &View| v.ring.len() == n
}

fn entry(payload: &[u8]) -> (Key, Vec<u8>) {
    let key = Key::digest(payload);
    (key, Store::encode_entry(&key, payload).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_replicate_fail_over_and_repair() {
    let key = psk::generate().unwrap();
    let a = spawn(Some(key), vec![]).await;
    let b = spawn(Some(key), vec![a.addr.clone()]).await;
    let c = spawn(Some(key), vec![a.addr.clone()]).await;
    let t0 = Instant::now();
    for n in [&a, &b, &c] {
        assert!(
            n.node.wait_for(Duration::from_secs(10), ring_size(3)).await,
            "ring did not converge: {:?}",
            n.node.view().ring.members()
        );
    }
    eprintln!("3-peer ring converged in {:?}", t0.elapsed());
    // Same ring everywhere.
    assert_eq!(a.node.view().ring.members(), c.node.view().ring.members());

    // Store 30 entries through A, replicate, read each through C.
    let mut keys = Vec::new();
    for i in 0..30u32 {
        let payload = format!("object file {i}").repeat(100);
        let (k, _) = entry(payload.as_bytes());
        a.node.store().put(&k, payload.as_bytes()).unwrap();
        let r = a.node.replicate(&k).await;
        assert_eq!(r.holders.len(), 2, "key {k} reached {:?}", r.holders);
        keys.push((k, payload));
    }
    for (k, payload) in &keys {
        let owners = c.node.owners(k);
        let got = if owners.contains(&c.node.view().me) {
            c.node.store().get_raw(k).unwrap()
        } else {
            c.node.get(k).await
        };
        let got = got.unwrap_or_else(|| panic!("miss for {k} (owners {owners:?})"));
        assert_eq!(
            Store::verify_raw(&got, k, 1 << 20).unwrap(),
            payload.as_bytes()
        );
    }
    // A miss is a miss, not an error.
    assert!(c.node.get(&Key::digest(b"never stored")).await.is_none());

    // Kill A: every key is still readable from B or C (a replica), at once.
    let a_id = a.node.view().me;
    a.kill();
    for (k, _) in &keys {
        let local = c.node.store().contains(k);
        assert!(
            local || c.node.get(k).await.is_some(),
            "key {k} lost after the primary died"
        );
    }
    // The survivors drop A from the ring and bring every key back to two copies.
    for n in [&b, &c] {
        assert!(n.node.wait_for(Duration::from_secs(10), ring_size(2)).await);
        assert!(!n.node.view().ring.contains(&a_id));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let missing: Vec<_> = keys
            .iter()
            .filter(|(k, _)| !(b.node.store().contains(k) && c.node.store().contains(k)))
            .collect();
        if missing.is_empty() {
            break;
        }
        b.node.repair().await;
        c.node.repair().await;
        assert!(
            Instant::now() < deadline,
            "{} keys not re-replicated",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Flush across the mesh: both stores empty, A (dead) is named.
    let report = b.node.flush_all().await;
    assert!(
        report
            .peers
            .iter()
            .any(|p| p.id == c.node.view().me.to_string() && p.removed.is_some())
    );
    assert_eq!(c.node.store().usage().unwrap().entries, 0);
    assert_eq!(b.node.store().usage().unwrap().entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_hands_keys_to_the_new_owner() {
    let key = psk::generate().unwrap();
    let a = spawn(Some(key), vec![]).await;
    let mut keys = Vec::new();
    for i in 0..40u32 {
        let payload = format!("entry {i}");
        let k = Key::digest(payload.as_bytes());
        a.node.store().put(&k, payload.as_bytes()).unwrap();
        keys.push(k);
    }
    let b = spawn(Some(key), vec![a.addr.clone()]).await;
    let c = spawn(Some(key), vec![a.addr.clone()]).await;
    for n in [&a, &b, &c] {
        assert!(n.node.wait_for(Duration::from_secs(10), ring_size(3)).await);
    }
    // A's repair (what its repair loop runs after a ring change) hands each key to its owners.
    a.node.repair().await;
    for k in &keys {
        for o in a.node.owners(k) {
            let holder = [&a, &b, &c]
                .into_iter()
                .find(|n| n.node.view().me == o)
                .unwrap();
            assert!(holder.node.store().contains(k), "owner {o} lacks {k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_loop_runs_after_a_join_while_gossip_keeps_ticking() {
    // The view changes every gossip round (100 ms here); the loop must still notice that the
    // ring's members changed and settled (300 ms), and hand the keys over on its own.
    let key = psk::generate().unwrap();
    let a = spawn(Some(key), vec![]).await;
    let mut keys = Vec::new();
    for i in 0..20u32 {
        let payload = format!("loop entry {i}");
        let k = Key::digest(payload.as_bytes());
        a.node.store().put(&k, payload.as_bytes()).unwrap();
        keys.push(k);
    }
    let repair = tokio::spawn(
        a.node
            .clone()
            .repair_loop(Duration::from_millis(300), Duration::from_secs(3600)),
    );
    let b = spawn(Some(key), vec![a.addr.clone()]).await;
    for n in [&a, &b] {
        assert!(n.node.wait_for(Duration::from_secs(10), ring_size(2)).await);
    }
    let b_id = b.node.view().me;
    let want: Vec<Key> = keys
        .iter()
        .copied()
        .filter(|k| a.node.owners(k).contains(&b_id))
        .collect();
    assert!(!want.is_empty());
    let t = Instant::now();
    while !want.iter().all(|k| b.node.store().contains(k)) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the repair loop did not hand the keys to the new owner"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    repair.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_or_no_key_cannot_read_or_write() {
    let key = psk::generate().unwrap();
    let a = spawn(Some(key), vec![]).await;
    let (k, e) = entry(b"secret object");
    a.node.store().put_raw(&k, &e).unwrap();
    let a_id = a.node.view().me;

    let wrong = spawn(Some(psk::generate().unwrap()), vec![a.addr.clone()]).await;
    let keyless = spawn(None, vec![a.addr.clone()]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.node.view().ring.len(), 1, "a peer without the key joined");
    for n in [&wrong, &keyless] {
        assert_eq!(n.node.view().ring.len(), 1);
        let r = n
            .node
            .request(a_id, Request::Get(k), Duration::from_secs(3))
            .await;
        assert!(r.is_err(), "read without the key: {r:?}");
        let (k2, e2) = entry(b"planted");
        let r = n
            .node
            .request(
                a_id,
                Request::Put {
                    key: k2,
                    entry: distc_peer::protocol::Bytes(e2),
                },
                Duration::from_secs(3),
            )
            .await;
        assert!(r.is_err(), "write without the key: {r:?}");
        assert!(!a.node.store().contains(&k2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_entries_and_garbage_bytes_are_refused() {
    let key = psk::generate().unwrap();
    let a = spawn(Some(key), vec![]).await;
    let b = spawn(Some(key), vec![a.addr.clone()]).await;
    assert!(b.node.wait_for(Duration::from_secs(10), ring_size(2)).await);
    let a_id = a.node.view().me;
    // A well-framed Put whose entry is not a valid entry: refused, not stored.
    let k = Key::digest(b"x");
    let r = b
        .node
        .request(
            a_id,
            Request::Put {
                key: k,
                entry: distc_peer::protocol::Bytes(b"DSTC garbage".to_vec()),
            },
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    assert!(matches!(r, Response::Error(_)), "{r:?}");
    assert!(!a.node.store().contains(&k));
    // An entry over max_entry_size (1 MiB here) is refused by the frame limit.
    let big = Store::encode_entry(&k, &vec![0x5au8; 3 << 20]).unwrap();
    let mut noisy = big.clone();
    noisy.resize(2 << 20, 0);
    let r = b
        .node
        .request(
            a_id,
            Request::Put {
                key: k,
                entry: distc_peer::protocol::Bytes(noisy),
            },
            Duration::from_secs(5),
        )
        .await;
    assert!(r.is_err(), "oversized frame accepted: {r:?}");
    // Raw garbage on the TCP port (no pnet, no noise): the connection dies, the node lives.
    let port = a
        .addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(p) => Some(p),
            _ => None,
        })
        .unwrap();
    for junk in [vec![0xffu8; 64], u32::MAX.to_le_bytes().to_vec(), vec![]] {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = s.write_all(&junk).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (k3, e3) = entry(b"still alive");
    a.node.store().put_raw(&k3, &e3).unwrap();
    let got = b.node.get(&k3).await.expect("hit");
    assert_eq!(
        Store::verify_raw(&got, &k3, 1 << 20).unwrap(),
        b"still alive"
    );
    assert_eq!(trust::claimed_producer(&got), Some(a_id));
}

/// A's entries reach B by replication and C by B's repair after A died: every copy still
/// carries A's signature, and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_and_handoff_keep_the_producers_signature() {
    let key = psk::generate().unwrap();
    let a = spawn(Some(key), vec![]).await;
    let b = spawn(Some(key), vec![a.addr.clone()]).await;
    for n in [&a, &b] {
        assert!(n.node.wait_for(Duration::from_secs(10), ring_size(2)).await);
    }
    let a_id = a.node.view().me;
    let mut keys = Vec::new();
    for i in 0..20u32 {
        let payload = format!("signed entry {i}");
        let k = Key::digest(payload.as_bytes());
        a.node.store().put(&k, payload.as_bytes()).unwrap();
        assert_eq!(a.node.replicate(&k).await.holders.len(), 2);
        keys.push(k);
    }
    // A's own copies stay as its wrappers wrote them; B's are signed by A.
    for k in &keys {
        let raw = b.node.store().get_raw(k).unwrap().expect("replicated");
        assert_eq!(trust::verify_signature(&raw, k), Ok(a_id));
        let own = a.node.store().get_raw(k).unwrap().unwrap();
        assert_eq!(trust::claimed_producer(&own), None);
    }
    a.kill();
    let c = spawn(Some(key), vec![b.addr.clone()]).await;
    for n in [&b, &c] {
        assert!(n.node.wait_for(Duration::from_secs(15), ring_size(2)).await);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !keys.iter().all(|k| c.node.store().contains(k)) {
        b.node.repair().await;
        assert!(Instant::now() < deadline, "B did not hand A's keys to C");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for k in &keys {
        let raw = c.node.store().get_raw(k).unwrap().unwrap();
        assert_eq!(
            trust::verify_signature(&raw, k),
            Ok(a_id),
            "handoff lost the origin"
        );
    }
    assert_eq!(c.node.trust().refusals(), trust::Refusals::default());
}

/// A member that serves or pushes an entry whose signature does not match its producer or
/// its key, or an unsigned one, is refused (counted), and the requester asks the next peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_with_a_wrong_or_no_signature_are_refused_and_routed_around() {
    let key = psk::generate().unwrap();
    let a = spawn(Some(key), vec![]).await;
    let m = spawn(Some(key), vec![a.addr.clone()]).await;
    let v = spawn(Some(key), vec![a.addr.clone()]).await;
    for n in [&a, &m, &v] {
        assert!(n.node.wait_for(Duration::from_secs(10), ring_size(3)).await);
    }
    let (a_id, v_id) = (a.node.view().me, v.node.view().me);
    // A signs an entry for its key; M re-encodes the payload under the victim's key and keeps
    // A's signature (the digest is recomputed, so only the signature can tell).
    let (k, _) = entry(b"object of a");
    a.node.store().put(&k, b"object of a").unwrap();
    let signed = m.node.get(&k).await.expect("M fetches A's entry");
    let victim = Key::digest(b"victim key");
    let distc_peer::store::Provenance::Signed {
        producer,
        signature,
    } = Store::provenance(&signed).unwrap()
    else {
        panic!("a served entry is signed")
    };
    let moved = Store::signed(
        &Store::encode_entry(&victim, b"object of a").unwrap(),
        &victim,
        &producer,
        |_| signature,
    )
    .unwrap();
    assert!(Store::verify_raw(&moved, &victim, 1 << 20).is_ok());
    // Pushed to V: refused, not stored.
    let unsigned = Store::encode_entry(&victim, b"unsigned").unwrap();
    for bad in [moved.clone(), unsigned] {
        let r = m
            .node
            .request(
                v_id,
                Request::Put {
                    key: victim,
                    entry: distc_peer::protocol::Bytes(bad),
                },
                Duration::from_secs(3),
            )
            .await
            .unwrap();
        assert!(matches!(r, Response::Error(_)), "{r:?}");
        assert!(!v.node.store().contains(&victim));
    }
    let r = v.node.trust().refusals();
    assert_eq!((r.bad_signature, r.unsigned), (1, 1), "{r:?}");
    // Served by M (as a stored entry of its own, received from elsewhere): V refuses it and
    // asks the next peer; A, which holds the right one, answers.
    m.node.store().put_raw(&victim, &moved).unwrap();
    assert!(v.node.get(&victim).await.is_none(), "used a forged entry");
    assert_eq!(v.node.trust().refusals().bad_signature, 2);
    a.node.store().put(&victim, b"the right object").unwrap();
    let got = v.node.get(&victim).await.expect("routed around M");
    assert_eq!(
        Store::verify_raw(&got, &victim, 1 << 20).unwrap(),
        b"the right object"
    );
    assert_eq!(trust::verify_signature(&got, &victim), Ok(a_id));
    assert!(
        !v.node.store().contains(&victim)
            || v.node.store().get_raw(&victim).unwrap() != Some(moved)
    );
}

/// A mesh member that answers every request for an entry with `answer` (set by the test: a
/// valid, signed entry of another key), as a peer with a swapped or restored store would if it
/// did not check (a real peer checks its entries before serving them, so this one is written
/// against the wire protocol). It runs the real membership (SWIM), so the others put it on
/// their rings.
struct Rogue {
    id: libp2p::PeerId,
    addr: Multiaddr,
    answer: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    gets: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn spawn_rogue(key: psk::PreSharedKey) -> Rogue {
    use distc_peer::membership::Membership;
    use distc_peer::protocol::{Bytes, Codec, PROTOCOLS};
    use distc_peer::swim::{self, SwimCodec, SwimRequest};
    use futures::StreamExt;
    use libp2p::core::upgrade;
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{Transport, noise, pnet, request_response, tcp, yamux};

    #[derive(NetworkBehaviour)]
    struct RogueBehaviour {
        rr: request_response::Behaviour<Codec>,
        swim: request_response::Behaviour<SwimCodec>,
    }

    let keypair = identity::Keypair::generate_ed25519();
    let id = keypair.public().to_peer_id();
    let transport = tcp::tokio::Transport::new(tcp::Config::default())
        .and_then(move |socket, _| pnet::PnetConfig::new(key).handshake(socket))
        .upgrade(upgrade::Version::V1)
        .authenticate(noise::Config::new(&keypair).unwrap())
        .multiplex(yamux::Config::default())
        .boxed();
    let behaviour = RogueBehaviour {
        rr: request_response::Behaviour::with_codec(
            Codec::new(1 << 20),
            PROTOCOLS
                .iter()
                .map(|p| (p.clone(), request_response::ProtocolSupport::Full)),
            request_response::Config::default(),
        ),
        swim: request_response::Behaviour::with_codec(
            SwimCodec::default(),
            [(swim::PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default(),
        ),
    };
    let mut swarm = libp2p::Swarm::new(
        transport,
        behaviour,
        id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let listen = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let answer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let other = answer.clone();
    let gets = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = gets.clone();
    let mut membership = Membership::new(id, Timing::default());
    membership.set_local_addrs(vec![listen.clone()]);
    let task = tokio::spawn(async move {
        loop {
            let due = membership
                .next_timer()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let ev = tokio::select! {
                ev = swarm.select_next_some() => ev,
                _ = tokio::time::sleep_until(due.into()) => {
                    membership.fire_timers(Instant::now());
                    for out in membership.take_outbox() {
                        swarm.behaviour_mut().swim.send_request_with_addresses(
                            &out.to,
                            SwimRequest::Packet(Bytes(out.packet)),
                            out.addrs,
                        );
                    }
                    continue;
                }
            };
            match ev {
                SwarmEvent::Behaviour(RogueBehaviourEvent::Swim(
                    request_response::Event::Message { peer, message, .. },
                )) => match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let response = membership.answer(peer, request);
                        let _ = swarm.behaviour_mut().swim.send_response(channel, response);
                    }
                    // It never starts an exchange, so any answer is to a push of its own.
                    request_response::Message::Response { response, .. } => {
                        membership.on_sync_answer(peer, true, response);
                    }
                },
                SwarmEvent::Behaviour(RogueBehaviourEvent::Rr(
                    request_response::Event::Message {
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    },
                )) => {
                    let response = match request {
                        Request::Gossip(_) => Response::Gossip(Vec::new()),
                        Request::Get(_) => {
                            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let e = other.lock().map(|e| e.clone()).unwrap_or_default();
                            Response::Entry(Some(Bytes(e)))
                        }
                        Request::Put { .. } => Response::Stored,
                        Request::Offer(_) => Response::Want(Vec::new()),
                        Request::Flush => Response::Error("no".into()),
                    };
                    let _ = swarm.behaviour_mut().rr.send_response(channel, response);
                }
                _ => {}
            }
            for out in membership.take_outbox() {
                swarm.behaviour_mut().swim.send_request_with_addresses(
                    &out.to,
                    SwimRequest::Packet(Bytes(out.packet)),
                    out.addrs,
                );
            }
        }
    });
    Rogue {
        id,
        addr: listen.with(libp2p::multiaddr::Protocol::P2p(id)),
        answer,
        gets,
        task,
    }
}

/// A peer that answers a request for K with another key's valid entry is routed around: the
/// requester takes K's entry from the next owner that has it, or misses (and the wrapper
/// compiles) when none does; each bad answer is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_with_another_keys_entry_is_routed_around() {
    let key = psk::generate().unwrap();
    let rogue = spawn_rogue(key).await;
    let a = spawn(Some(key), vec![rogue.addr.clone()]).await;
    let b = spawn(Some(key), vec![a.addr.clone()]).await;
    for n in [&a, &b] {
        assert!(
            n.node.wait_for(Duration::from_secs(15), ring_size(3)).await,
            "no ring of three: {:?}",
            n.node.view().ring.members()
        );
    }
    // The rogue's answer: B's entry of another compile, as B serves it (signed by B).
    let b_id = b.node.view().me;
    let other = b"the object of some other compile";
    let j = Key::digest(other);
    b.node.store().put(&j, other).unwrap();
    let Ok(Response::Entry(Some(signed))) = a
        .node
        .request(b_id, Request::Get(j), Duration::from_secs(3))
        .await
    else {
        panic!("B does not serve its entry");
    };
    assert!(Store::verify_raw(&signed.0, &j, 1 << 20).is_ok());
    *rogue.answer.lock().unwrap() = signed.0;
    // Keys whose primary owner, as A sees the ring, is the rogue: A asks it first.
    let rogue_first = |tag: &str| {
        (0u32..)
            .map(|i| format!("{tag} {i}").into_bytes())
            .find(|p| a.node.owners(&Key::digest(p)).first() == Some(&rogue.id))
            .unwrap()
    };
    let payload = rogue_first("held by b");
    let k = Key::digest(&payload);
    b.node.store().put(&k, &payload).unwrap();
    let got = a
        .node
        .get(&k)
        .await
        .expect("A did not get K's entry from B");
    assert_eq!(
        Store::verify_raw(&got, &k, 1 << 20).unwrap(),
        payload,
        "A did not get K's own entry from B"
    );
    assert_eq!(a.node.bad_entries(), 1, "the bad answer was not counted");
    let k2 = Key::digest(&rogue_first("held by nobody"));
    let got = a.node.get(&k2).await;
    assert!(got.is_none(), "another key's entry was taken");
    assert_eq!(a.node.bad_entries(), 2);
    assert_eq!(
        rogue.gets.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the rogue was not asked"
    );
    assert!(!a.node.store().contains(&k2));
}
