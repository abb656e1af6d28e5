//! Peers over a slow link, in two network namespaces this test creates: two owners in one,
//! a client in the other, joined by a veth pair rate-shaped to 20 Mbit/s with `tc tbf` in both
//! directions, with 50 ms of round-trip delay and 1 % loss added by a small TCP proxy run here
//! (the kernel's netem may be absent). The client reaches each owner only through its proxy.
//!
//! Shown: a 50 MB entry arrives in full (its transfer is given the time its size needs, not a
//! fixed timeout), and a stalled owner is routed around within the hedge delay. And, with a
//! firewall (nftables) in one namespace that drops inbound UDP: the peer there finds that no
//! membership datagram reaches it, stops announcing its UDP socket, and the two stay one mesh
//! over TCP streams.
//!
//! Needs root and `ip netns`; skipped with a message otherwise. Traffic stays inside the two
//! namespaces. Every process is killed by pid and both namespaces are deleted when the test
//! ends, whatever happens.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Sandbox, assert_ok, wait_until};

/// Two namespaces joined by a veth pair, deleted on drop.
struct Netns {
    names: [String; 2],
}

const OWNERS_IP: &str = "10.231.77.1";
const CLIENT_IP: &str = "10.231.77.2";

fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn new() -> Result<Netns, String> {
        // Unique per test in this process too: the tests of this file run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id());
        let net = Netns {
            names: [format!("distc-own-{tag}"), format!("distc-cli-{tag}")],
        };
        let [a, b] = &net.names;
        let (va, vb) = (format!("dco{tag}"), format!("dcc{tag}"));
        // 20 Mbit/s each way; a queue of up to 400 ms, as a congested uplink has.
        let shape = |ns: &str, dev: &str| {
            run(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                "20mbit", "burst", "32kbit", "latency", "400ms",
            ])
        };
        run(&["ip", "netns", "add", a])?;
        run(&["ip", "netns", "add", b])?;
        run(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ])?;
        run(&["ip", "link", "set", &va, "netns", a])?;
        run(&["ip", "link", "set", &vb, "netns", b])?;
        run(&[
            "ip",
            "-n",
            a,
            "addr",
            "add",
            &format!("{OWNERS_IP}/24"),
            "dev",
            &va,
        ])?;
        run(&[
            "ip",
            "-n",
            b,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            &vb,
        ])?;
        for (ns, dev) in [(a, &va), (b, &vb)] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            shape(ns, dev)?;
        }
        Ok(net)
    }
}

/// The namespaces, or `None` after saying why the test is skipped (not root, no `ip netns`).
fn namespaces_or_skip() -> Option<Netns> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to create network namespaces");
        return None;
    }
    Netns::new()
        .map_err(|e| {
            eprintln!("SKIPPED: cannot set up network namespaces with `ip netns` and `tc tbf`: {e}")
        })
        .ok()
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = run(&["ip", "netns", "del", n]);
        }
    }
}

/// Moves the calling thread into network namespace `ns` (sockets it creates live there).
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A TCP proxy in namespace `ns`: listens on `ip`, forwards each connection to `upstream`
/// (in the same namespace), delaying every chunk by `one_way` in each direction and, with the
/// probability 1 % loss per 1448-byte segment gives a chunk, holding it back 200 ms — the
/// retransmission stall a lost segment costs a TCP stream. Returns the port. Its threads end
/// with the test process.
fn proxy(ns: &str, ip: &str, upstream: SocketAddr, one_way: Duration) -> u16 {
    let (tx, rx) = mpsc::channel();
    let (ns, ip) = (ns.to_string(), ip.to_string());
    std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind((ip.as_str(), 0)).expect("proxy bind");
        let _ = tx.send(l.local_addr().expect("proxy addr").port());
        for (seed, down) in l.incoming().flatten().enumerate() {
            let Ok(up) = TcpStream::connect(upstream) else {
                continue;
            };
            let _ = (up.set_nodelay(true), down.set_nodelay(true));
            let (d2, u2) = (
                down.try_clone().expect("clone"),
                up.try_clone().expect("clone"),
            );
            pump(down, u2, one_way, seed as u64 * 2 + 1);
            pump(up, d2, one_way, seed as u64 * 2 + 2);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("proxy port")
}

/// One direction of a proxied connection: a reader that timestamps chunks and a writer that
/// sends each `delay` after it arrived (so the link keeps its throughput and gains latency).
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, seed: u64) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(512);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for (at, chunk) in rx {
            let mut due = at + delay;
            let segments = chunk.len().div_ceil(1448) as i32;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let lost = (rng % 1_000_000) as f64 / 1e6 < 1.0 - 0.99f64.powi(segments);
            if lost {
                due += Duration::from_millis(200);
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A `distc peer` in a namespace, killed (SIGKILL) by pid on drop.
struct Peer {
    child: Child,
    dir: PathBuf,
    name: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(sb: &Sandbox, ns: &str, name: &str, bootstrap: &[String], env: &[(&str, &str)]) -> Peer {
    start_on(sb, ns, name, "/ip4/127.0.0.1/tcp/0", bootstrap, env)
}

/// [`start`], listening on `listen`.
fn start_on(
    sb: &Sandbox,
    ns: &str,
    name: &str,
    listen: &str,
    bootstrap: &[String],
    env: &[(&str, &str)],
) -> Peer {
    let dir = sb.root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(sb.root.path().join(format!("{name}.log"))).unwrap();
    let mut cmd = sb.command("ip");
    cmd.args(["netns", "exec", ns])
        .arg(common::distc_bin())
        .args(["peer", "--no-mdns", "--listen", listen])
        .env("DISTC_DIR", &dir)
        .env("DISTC_LOG", "info,distc_peer=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for b in bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let peer = Peer {
        child: cmd.spawn().expect("spawn distc peer in a namespace"),
        dir,
        name: name.to_string(),
    };
    wait_until(&format!("{name} started"), Duration::from_secs(20), || {
        status(&peer.dir).is_some()
    });
    peer
}

fn status(dir: &Path) -> Option<distc_peer::report::StatusReport> {
    distc_peer::ipc::IpcClient::connect(dir, Duration::from_secs(5))
        .ok()?
        .status()
        .ok()
}

fn listen_port(p: &Peer) -> u16 {
    // `/ip4/127.0.0.1/tcp/PORT`
    let s = status(&p.dir).expect("status");
    s.listen[0]
        .rsplit('/')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("tcp port")
}

fn up(p: &Peer) -> usize {
    status(&p.dir)
        .map(|s| s.peers.iter().filter(|m| m.state == "up").count())
        .unwrap_or(0)
}

/// `len` bytes no compressor shrinks.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
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

fn store(p: &Peer) -> distc_peer::store::Store {
    distc_peer::store::Store::open(&p.dir.join("store"), 1 << 30).expect("store")
}

#[test]
fn over_a_slow_link_a_50_mb_entry_arrives_and_a_stalled_owner_is_routed_around() {
    let Some(net) = namespaces_or_skip() else {
        return;
    };
    let [own_ns, cli_ns] = net.names.clone();
    let sb = Sandbox::new();
    assert_ok(
        &sb.distc().args(["mesh", "init"]).output().unwrap(),
        "mesh init",
    );

    // Two owners in one namespace (on its loopback), each reachable from the other side only
    // through its own proxy on the veth address.
    let o1 = start(&sb, &own_ns, "owner1", &[], &[]);
    let id1 = status(&o1.dir).unwrap().id;
    let boot1 = format!("/ip4/127.0.0.1/tcp/{}/p2p/{id1}", listen_port(&o1));
    let o2 = start(&sb, &own_ns, "owner2", &[boot1], &[]);
    let id2 = status(&o2.dir).unwrap().id;
    let one_way = Duration::from_millis(25);
    let via = |p: &Peer, id: &str| {
        let port = proxy(
            &own_ns,
            OWNERS_IP,
            ([127, 0, 0, 1], listen_port(p)).into(),
            one_way,
        );
        format!("/ip4/{OWNERS_IP}/tcp/{port}/p2p/{id}")
    };
    let boot = vec![via(&o1, &id1), via(&o2, &id2)];
    // The client: owns nothing, so it fetches over the link; a compile's budget of two
    // minutes, as a machine behind a slow link would set (each owner gets 10 s to start).
    let client = start(
        &sb,
        &cli_ns,
        "client",
        &boot,
        &[
            ("DISTC_ROLE", "client"),
            ("DISTC_PEER_TIMEOUT_MS", "120000"),
        ],
    );
    // A machine whose compiles wait for the mesh only a second in all (`peer_timeout_ms`).
    let hasty = start(
        &sb,
        &cli_ns,
        "hasty",
        &boot,
        &[("DISTC_ROLE", "client"), ("DISTC_PEER_TIMEOUT_MS", "1000")],
    );
    for p in [&o1, &o2, &client, &hasty] {
        wait_until(
            &format!("{} sees 3 up", p.name),
            Duration::from_secs(30),
            || up(p) == 3,
        );
    }

    let mut ipc =
        distc_peer::ipc::IpcClient::connect(&client.dir, Duration::from_secs(150)).unwrap();

    // First, while no large transfer or repair shares the link: a small entry on both owners,
    // and its first owner stops answering (SIGSTOP: the link and its connections stay up,
    // nothing comes back).
    let small = noise(20_000, 11);
    let small_key = distc_peer::Key::digest(&small);
    store(&o1).put(&small_key, &small).unwrap();
    store(&o2).put(&small_key, &small).unwrap();
    let first = ipc.owners(&small_key).unwrap()[0].id.clone();
    let stalled = if first == id1 { &o1 } else { &o2 };
    assert!(
        Command::new("kill")
            .args(["-STOP", &stalled.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    );
    let t = Instant::now();
    let got = ipc
        .get(&small_key)
        .unwrap()
        .expect("no entry with an owner stalled");
    let took = t.elapsed();
    assert_eq!(
        distc_peer::store::Store::verify_raw(&got, &small_key, 1 << 30).unwrap(),
        small
    );
    eprintln!(
        "with its first owner ({}) stalled: served in {took:?} (hedge delay 100 ms, per-owner limit 10 s)",
        stalled.name
    );
    // The hedge delay, then a round trip or two over the link and the check (a quarter of a
    // second on a quiet machine): far from the 10 s the stalled owner would otherwise have
    // been given, even on a loaded one.
    let log = std::fs::read_to_string(sb.root.path().join("client.log")).unwrap();
    let about: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains(&small_key.to_string()) || l.contains("dial") || l.contains("connect")
        })
        .collect();
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}; the client's log of it:\n{}",
        about.join("\n")
    );
    assert!(
        log.contains("asking the next peer too"),
        "no hedge in the log"
    );
    // The stalled owner resumes (it was at most suspected meanwhile, and refutes).
    assert!(
        Command::new("kill")
            .args(["-CONT", &stalled.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    );
    for p in [&o1, &o2, &client, &hasty] {
        wait_until(
            &format!("{} sees 3 up again", p.name),
            Duration::from_secs(30),
            || up(p) == 3,
        );
    }

    // A 50 MB entry on one owner only; the client fetches it across the link.
    let big = noise(50_000_000, 7);
    let big_key = distc_peer::Key::digest(&big);
    store(&o1).put(&big_key, &big).unwrap();
    let t = Instant::now();
    let got = ipc
        .get(&big_key)
        .unwrap()
        .expect("the 50 MB entry did not arrive");
    let took = t.elapsed();
    let payload = distc_peer::store::Store::verify_raw(&got, &big_key, 1 << 30).unwrap();
    assert!(payload == big, "the entry arrived changed");
    eprintln!(
        "50 MB entry ({} bytes on the wire) over 20 Mbit/s, 50 ms RTT, 1 % loss: {took:?} ({:.1} Mbit/s)",
        got.len(),
        got.len() as f64 * 8.0 / took.as_secs_f64() / 1e6
    );

    // A 10 MB entry (about 5 s over this link) asked for by a compile that waits one second:
    // the compile gets no entry in time (and compiles), but the fetch is not abandoned: it
    // arrives in that machine's store, for the next compile.
    let mid = noise(10_000_000, 9);
    let mid_key = distc_peer::Key::digest(&mid);
    store(&o1).put(&mid_key, &mid).unwrap();
    let mut hasty_ipc =
        distc_peer::ipc::IpcClient::connect(&hasty.dir, Duration::from_secs(30)).unwrap();
    let t = Instant::now();
    assert!(
        hasty_ipc.get(&mid_key).unwrap().is_none(),
        "10 MB in under a second?"
    );
    let answered = t.elapsed();
    wait_until("the late entry kept", Duration::from_secs(60), || {
        store(&hasty).contains(&mid_key)
    });
    eprintln!(
        "10 MB entry for a compile that waits 1 s: answered \"not found\" in {answered:?}, kept in the store after {:?}",
        t.elapsed()
    );
    assert_eq!(store(&hasty).get(&mid_key).unwrap().unwrap(), mid);
    drop(hasty_ipc);

    drop(ipc);
    drop((hasty, client, o2, o1));
    drop(net);
}

#[test]
fn a_peer_whose_firewall_drops_udp_is_reached_over_streams() {
    if !common::have_tool("nft") {
        eprintln!(
            "SKIPPED: needs nft (nftables) for the firewall; scripts/install-deps.sh installs it"
        );
        return;
    }
    let Some(net) = namespaces_or_skip() else {
        return;
    };
    let [a_ns, b_ns] = net.names.clone();
    // B's firewall: TCP passes, inbound UDP to the peer's port is dropped.
    for rule in [
        "add table inet distc_test",
        "add chain inet distc_test input { type filter hook input priority 0 ; policy accept ; }",
        "add rule inet distc_test input udp dport 7878 drop",
    ] {
        let mut cmd = vec!["ip", "netns", "exec", &b_ns, "nft"];
        cmd.extend(rule.split(' '));
        if let Err(e) = run(&cmd) {
            eprintln!("SKIPPED: cannot add an nftables rule in the namespace: {e}");
            return;
        }
    }
    let sb = Sandbox::new();
    assert_ok(
        &sb.distc().args(["mesh", "init"]).output().unwrap(),
        "mesh init",
    );
    let a = start_on(
        &sb,
        &a_ns,
        "a",
        &format!("/ip4/{OWNERS_IP}/tcp/7878"),
        &[],
        &[],
    );
    let a_id = status(&a.dir).unwrap().id;
    let boot = format!("/ip4/{OWNERS_IP}/tcp/7878/p2p/{a_id}");
    let b = start_on(
        &sb,
        &b_ns,
        "b",
        &format!("/ip4/{CLIENT_IP}/tcp/7878"),
        &[boot],
        &[],
    );
    for p in [&a, &b] {
        wait_until(
            &format!("{} sees the other up", p.name),
            Duration::from_secs(30),
            || up(p) == 1,
        );
    }
    let b_log = sb.root.path().join("b.log");
    wait_until(
        "b says no datagram reaches it",
        Duration::from_secs(75),
        || {
            std::fs::read_to_string(&b_log)
                .is_ok_and(|l| l.contains("no membership datagram has arrived"))
        },
    );
    // A learns B's new record, without the UDP endpoint.
    wait_until("a drops b's UDP endpoint", Duration::from_secs(20), || {
        status(&a.dir).is_some_and(|s| {
            s.peers
                .iter()
                .any(|p| p.state == "up" && !p.addrs.iter().any(|x| x.contains("/udp/")))
        })
    });
    // From then on one mesh, over streams: neither sees the other down.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        for (p, other) in [(&a, &b), (&b, &a)] {
            let s = status(&p.dir).expect("status");
            let seen: Vec<&str> = s.peers.iter().map(|m| m.state.as_str()).collect();
            assert!(
                !seen.contains(&"down"),
                "{} holds {} down after the switch to streams: {seen:?}\n{}",
                p.name,
                other.name,
                std::fs::read_to_string(sb.root.path().join(format!("{}.log", p.name)))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!((up(&a), up(&b)), (1, 1), "both still see each other up");
}
