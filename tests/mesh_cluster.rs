//! Real `distc peer` processes on 127.0.0.1 joined by bootstrap addresses, driven through the
//! real wrapper: cross-peer hits, failover to a replica, every peer gone, status and flush
//! across the mesh, the key boundary and the single-peer-per-directory lock.
//! Every process started here is killed by pid when its guard drops.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, assert_ok, text, wait_until};

/// A running `distc peer`, killed (SIGKILL) and reaped on drop.
struct Peer {
    child: Option<Child>,
    dir: PathBuf,
}

impl Peer {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `distc` in the sandbox with its DISTC_DIR pointed at `dir`.
fn distc_in(sb: &Sandbox, dir: &Path) -> Command {
    let mut c = sb.distc();
    c.env("DISTC_DIR", dir);
    c
}

fn start_peer(sb: &Sandbox, name: &str, bootstrap: &[String]) -> Peer {
    start_peer_with(sb, name, bootstrap, |c| {
        c.env("DISTC_LOG", "info,distc_peer=debug");
    })
}

/// [`start_peer`] with the command adjusted by `setup` (log level, config dir), its output in
/// `NAME.log` in the sandbox root.
fn start_peer_with(
    sb: &Sandbox,
    name: &str,
    bootstrap: &[String],
    setup: impl FnOnce(&mut Command),
) -> Peer {
    let dir = sb.root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(sb.root.path().join(format!("{name}.log"))).unwrap();
    let mut cmd = distc_in(sb, &dir);
    setup(&mut cmd);
    cmd.args(["peer", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for b in bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let child = cmd.spawn().expect("spawn distc peer");
    let peer = Peer {
        child: Some(child),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(sb, &peer.dir).is_none() {
        assert!(
            Instant::now() < deadline,
            "peer {name} did not start: {}",
            std::fs::read_to_string(sb.root.path().join(format!("{name}.log"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    peer
}

fn status(sb: &Sandbox, dir: &Path) -> Option<serde_json::Value> {
    let out = distc_in(sb, dir).args(["status", "--json"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `/ip4/127.0.0.1/tcp/N/p2p/ID` of a running peer.
fn address(sb: &Sandbox, peer: &Peer) -> String {
    let s = status(sb, &peer.dir).expect("status");
    format!(
        "{}/p2p/{}",
        s["listen"][0].as_str().expect("listen address"),
        s["id"].as_str().expect("id")
    )
}

fn up_peers(sb: &Sandbox, dir: &Path) -> usize {
    status(sb, dir)
        .and_then(|s| {
            s["peers"]
                .as_array()
                .map(|a| a.iter().filter(|p| p["state"] == "up").count())
        })
        .unwrap_or(0)
}

/// Waits until each of `peers` sees all the others up (15 s) and then has its mesh marker
/// (`marker` each).
fn wait_meshed(sb: &Sandbox, peers: &[&Peer], marker: Duration) {
    let label = format!("{} peers up", peers.len());
    for p in peers {
        wait_until(&label, Duration::from_secs(15), || {
            up_peers(sb, &p.dir) == peers.len() - 1
        });
        wait_until("mesh marker", marker, || {
            distc_peer::ipc::mesh_active(&p.dir)
        });
    }
}

fn compile(sb: &Sandbox, dir: &Path, src: &str) -> Output {
    let obj = format!("{}.o", src.trim_end_matches(".c"));
    let _ = std::fs::remove_file(sb.work.join(&obj));
    let out = distc_in(sb, dir)
        .args(["gcc", "-c", src, "-o", &obj])
        .output()
        .expect("run distc gcc");
    assert_ok(&out, &format!("compile {src}"));
    assert!(sb.work.join(&obj).is_file(), "{obj} not written");
    out
}

fn total_entries(sb: &Sandbox, dir: &Path) -> u64 {
    status(sb, dir)
        .and_then(|s| {
            s["peers"]
                .as_array()
                .map(|a| a.iter().map(|p| p["entries"].as_u64().unwrap_or(0)).sum())
        })
        .unwrap_or(0)
}

/// Waits until the mesh holds at least `at_least` entries in all and that total has stopped
/// growing. Two results at R = 2 with the producer's own copies make 4 to 6 entries, by how
/// many of them the producer owns: reaching 4 alone can leave a copy still on its way to an
/// owner that the next lookup asks.
fn wait_replicated(sb: &Sandbox, dir: &Path, at_least: u64) {
    let mut last = (0, Instant::now());
    wait_until("replication", Duration::from_secs(20), || {
        let n = total_entries(sb, dir);
        if n != last.0 {
            last = (n, Instant::now());
        }
        n >= at_least && last.1.elapsed() >= Duration::from_secs(2)
    });
}

fn mesh_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    let out = sb.distc().args(["mesh", "init"]).output().unwrap();
    let token = assert_ok(&out, "mesh init");
    assert!(token.trim().starts_with("distc-mesh:"), "{token}");
    sb
}

#[test]
fn three_peers_share_hits_survive_a_death_and_compile_with_none() {
    let sb = mesh_sandbox();
    std::fs::write(sb.work.join("hello.c"), "int hello(void) { return 42; }\n").unwrap();
    std::fs::write(sb.work.join("lone.c"), "int lone(void) { return 7; }\n").unwrap();

    let a = start_peer(&sb, "a", &[]);
    let boot = vec![address(&sb, &a)];
    let b = start_peer(&sb, "b", &boot);
    let mut c = start_peer(&sb, "c", &boot);
    let t0 = Instant::now();
    for p in [&a, &b, &c] {
        wait_until("3 peers up", Duration::from_secs(15), || {
            up_peers(&sb, &p.dir) == 2
        });
    }
    eprintln!("3 processes converged in {:?}", t0.elapsed());
    // Each peer tells its wrappers, by a marker file, that asking the mesh can help.
    for p in [&a, &b, &c] {
        wait_until("mesh marker", Duration::from_secs(5), || {
            distc_peer::ipc::mesh_active(&p.dir)
        });
    }

    // A compile through A's dir...
    compile(&sb, &a.dir, "hello.c");
    assert_eq!(sb.compiles(), 1);
    // ...reaches R = 2 peers (A keeps its own copy too), as does its shared manifest.
    wait_replicated(&sb, &c.dir, 4);
    // The same compile through C's dir is a hit: the real compiler does not run.
    compile(&sb, &c.dir, "hello.c");
    assert_eq!(sb.compiles(), 1, "compile through C was not a hit");

    // Kill A: a peer that never had the entry (D, joining now) still gets a hit from a replica.
    let mut a = a;
    a.kill();
    let mut d = start_peer(&sb, "d", &[address(&sb, &b)]);
    wait_until("D sees B and C", Duration::from_secs(15), || {
        up_peers(&sb, &d.dir) >= 2
    });
    compile(&sb, &d.dir, "hello.c");
    assert_eq!(sb.compiles(), 1, "no hit from a replica after A died");

    // Every peer gone: compiles still succeed, locally, without hanging.
    let mut b = b;
    b.kill();
    c.kill();
    d.kill();
    let t = Instant::now();
    compile(&sb, &c.dir, "lone.c");
    assert_eq!(sb.compiles(), 2);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// One checkout of a tiny project under `base`: `src/hello.c` including `inc/config.h`
/// (whose `V` is `v`) and a system header.
fn checkout(base: &Path, name: &str, v: u32) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("inc")).unwrap();
    std::fs::write(
        dir.join("src/hello.c"),
        "#include <stddef.h>\n#include \"config.h\"\nsize_t hello(void) { return V; }\n",
    )
    .unwrap();
    std::fs::write(dir.join("inc/config.h"), format!("#define V {v}\n")).unwrap();
    dir
}

/// `gcc -c <abs>/src/hello.c -I<abs>/inc -o hello.o` in `checkout` through `dir`'s wrapper,
/// with `base` as base_dir; returns the wrapper's result line and the object.
fn compile_checkout(sb: &Sandbox, dir: &Path, base: &Path, checkout: &Path) -> (String, Vec<u8>) {
    let obj = checkout.join("hello.o");
    let _ = std::fs::remove_file(&obj);
    let result = checkout.join("result");
    let out = distc_in(sb, dir)
        .current_dir(checkout)
        .env("DISTC_BASE_DIR", base)
        .env("DISTC_RESULT_FILE", &result)
        .arg("gcc")
        .arg("-c")
        .arg(checkout.join("src/hello.c"))
        .arg(format!("-I{}", checkout.join("inc").display()))
        .args(["-o", "hello.o"])
        .output()
        .expect("run distc gcc");
    assert_ok(&out, &format!("compile in {}", checkout.display()));
    let line = std::fs::read_to_string(&result).unwrap_or_default();
    (
        line.trim().to_string(),
        std::fs::read(&obj).expect("object"),
    )
}

#[test]
fn shared_manifests_give_a_first_remote_hit_without_any_compiler_run() {
    let sb = mesh_sandbox();
    let a = start_peer(&sb, "a", &[]);
    let boot = vec![address(&sb, &a)];
    let b = start_peer(&sb, "b", &boot);
    let c = start_peer(&sb, "c", &boot);
    wait_meshed(&sb, &[&a, &b, &c], Duration::from_secs(5));
    // Three "machines": each peer's dir, each with a checkout of its own under one base_dir.
    let base = sb.root.path().join("src");
    let on_a = checkout(&base, "a", 1);
    let on_c = checkout(&base, "c", 1);
    let (line, obj_a) = compile_checkout(&sb, &a.dir, &base, &on_a);
    assert_eq!(line, "miss");
    assert_eq!(sb.compiles(), 1);

    // C never compiled this file: the manifest A shared names the result, C's own headers
    // match it, and neither the compiler nor its preprocessor runs. C's store is emptied of
    // any replicas first, so both the manifest and the result come from other peers.
    wait_replicated(&sb, &c.dir, 4);
    assert!(!c.dir.join("manifests").exists());
    for e in std::fs::read_dir(c.dir.join("store")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && p.file_name().is_some_and(|n| n.len() == 2) {
            std::fs::remove_dir_all(p).unwrap();
        }
    }
    let runs = sb.compiler_runs();
    let (line, obj_c) = compile_checkout(&sb, &c.dir, &base, &on_c);
    assert_eq!(line, "remote-hit");
    assert_eq!(
        sb.compiler_runs(),
        runs,
        "compiler ran on C: {:?}",
        &sb.invocations()[runs..]
    );
    assert_eq!(obj_c, obj_a);
    // The manifest is now C's own: the next compile is a local hit.
    let (line, _) = compile_checkout(&sb, &c.dir, &base, &on_c);
    assert_eq!(line, "hit");
    assert_eq!(sb.compiler_runs(), runs);

    // B's copy of the header differs (same size, other value): A's manifest must miss there,
    // and B compiles for real and gets its own, correct object.
    let on_b = checkout(&base, "b", 2);
    let (line, obj_b) = compile_checkout(&sb, &b.dir, &base, &on_b);
    assert_eq!(line, "miss");
    assert_eq!(sb.compiles(), 2);
    assert_ne!(obj_b, obj_a);
    let plain = on_b.join("plain.o");
    let out = sb
        .command("gcc")
        .current_dir(&on_b)
        .arg("-c")
        .arg(on_b.join("src/hello.c"))
        .arg(format!("-I{}", on_b.join("inc").display()))
        .arg("-o")
        .arg(&plain)
        .output()
        .unwrap();
    assert_ok(&out, "plain gcc");
    assert_eq!(
        obj_b,
        std::fs::read(&plain).unwrap(),
        "B's object is not gcc's"
    );
}

/// The replicas a peer keeps are this machine's store: B's first compile of a file A compiled
/// (another checkout) is served from the manifest and result A replicated to B, with no
/// compiler run, also after A is gone and nobody else could answer for them.
#[test]
fn a_shared_manifest_replicated_here_serves_while_its_producer_is_down() {
    let sb = mesh_sandbox();
    let mut a = start_peer(&sb, "a", &[]);
    let b = start_peer(&sb, "b", &[address(&sb, &a)]);
    wait_meshed(&sb, &[&a, &b], Duration::from_secs(10));
    let base = sb.root.path().join("src");
    let on_a = checkout(&base, "a", 1);
    let on_b = checkout(&base, "b", 1);
    let (line, obj_a) = compile_checkout(&sb, &a.dir, &base, &on_a);
    assert_eq!(line, "miss");
    // Two owners of every key: B holds the shared manifest and the result.
    wait_until("replication to B", Duration::from_secs(15), || {
        store_files(&b.dir).len() == 2
    });
    a.kill();
    let runs = sb.compiler_runs();
    let (line, obj_b) = compile_checkout(&sb, &b.dir, &base, &on_b);
    assert_eq!(
        sb.compiler_runs(),
        runs,
        "compiler ran on B: {:?}",
        &sb.invocations()[runs..]
    );
    assert_eq!(line, "hit");
    assert_eq!(obj_b, obj_a);
}

/// Two machines (two DISTC_DIRs, one peer each, one closed mesh), two checkouts of one C
/// project at different paths and depths under base_dir, compiled as CMake does (absolute
/// paths, a build directory, `-g` with the build directory mapped): machine two's whole build
/// is served from machine one's results, and no object names checkout one.
#[test]
fn a_second_machine_builds_another_checkout_from_the_first_ones_results() {
    let sb = mesh_sandbox();
    let one_peer = start_peer(&sb, "one", &[]);
    let two_peer = start_peer(&sb, "two", &[address(&sb, &one_peer)]);
    wait_meshed(&sb, &[&one_peer, &two_peer], Duration::from_secs(10));
    let base = sb.root.path().join("home");
    let one = base.join("alice/src/app");
    let two = base.join("bob/work/clones/app");
    let sources = ["src/main.c", "src/list.c", "src/util/text.c"];
    for ck in [&one, &two] {
        for (rel, text) in [
            (
                "include/app.h",
                "#define WHERE __FILE__\nint list_len(void);\n",
            ),
            (
                "src/main.c",
                "#include <assert.h>\n#include \"app.h\"\n\
                 const char *main_file(void) { return WHERE; }\n\
                 int run(int n) { assert(n > 0); return list_len() + n; }\n",
            ),
            (
                "src/list.c",
                "#include \"app.h\"\nint list_len(void) { return 3; }\n",
            ),
            (
                "src/util/text.c",
                "#include <string.h>\n#include \"app.h\"\n\
                 const char *text_file(void) { return __FILE__; }\n\
                 size_t text_len(const char *s) { return strlen(s); }\n",
            ),
        ] {
            let p = ck.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::create_dir_all(ck.join("build/src/util")).unwrap();
    }
    let build = |dir: &Path, ck: &Path| -> Vec<Vec<u8>> {
        let c = ck.display();
        sources
            .iter()
            .map(|src| {
                let obj = format!("{c}/build/{src}.o");
                let out = distc_in(&sb, dir)
                    .current_dir(ck.join("build"))
                    .env("DISTC_BASE_DIR", &base)
                    .arg("gcc")
                    .arg(format!("-I{c}/include"))
                    .args(["-g", "-O1"])
                    .arg(format!("-fdebug-prefix-map={c}/build=."))
                    .args(["-MD", "-MT", &obj, "-MF", &format!("{obj}.d")])
                    .args(["-o", &obj, "-c", &format!("{c}/{src}")])
                    .output()
                    .expect("run distc gcc");
                assert_ok(&out, &format!("{src} in {c}"));
                std::fs::read(&obj).expect("object")
            })
            .collect()
    };
    // (local hits, remote hits, misses) as `distc stats --json` counts them.
    let counts = |dir: &Path| {
        let out = distc_in(&sb, dir)
            .args(["stats", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&assert_ok(&out, "stats --json")).unwrap();
        let n = |k: &str| v[k].as_u64().unwrap();
        (n("local_hits"), n("remote_hits"), n("misses"))
    };
    let first = build(&one_peer.dir, &one);
    assert_eq!(sb.compiles(), sources.len());
    assert_eq!(counts(&one_peer.dir), (0, 0, sources.len() as u64));
    // Results and shared manifests reach machine two's peer (R = 2 of 2 peers).
    wait_until("replication", Duration::from_secs(15), || {
        store_files(&two_peer.dir).len() >= 2 * sources.len()
    });
    let mut held = store_files(&two_peer.dir).len();
    wait_until("replication settled", Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(1000));
        let now = store_files(&two_peer.dir).len();
        std::mem::replace(&mut held, now) == now
    });
    // Machine two holds copies as an owner; empty its store so every object crosses the mesh
    // at lookup, as on a machine that never held them.
    for f in store_files(&two_peer.dir) {
        std::fs::remove_file(f).unwrap();
    }
    let second = build(&two_peer.dir, &two);
    assert_eq!(sb.compiles(), sources.len(), "machine two compiled");
    // Every compile a hit; from the mesh, unless a replica still in flight landed in machine
    // two's store after it was emptied (then it is a local copy of machine one's result).
    let (local, remote, misses) = counts(&two_peer.dir);
    assert!(
        local + remote == sources.len() as u64 && remote > 0 && misses == 0,
        "machine two's build was not served by machine one's results: {local} local hits, \
         {remote} remote hits, {misses} misses"
    );
    let needle = one.display().to_string();
    for (src, (a, b)) in sources.iter().zip(first.iter().zip(&second)) {
        assert!(a == b, "{src}: objects differ between the machines");
        assert!(
            !b.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{src}: machine two's object names checkout one ({needle})"
        );
        let dep = std::fs::read_to_string(two.join(format!("build/{src}.o.d"))).unwrap();
        assert!(!dep.contains(&needle), "{src}: {dep}");
    }
}

#[test]
fn status_and_flush_cover_the_mesh() {
    let sb = mesh_sandbox();
    std::fs::write(sb.work.join("x.c"), "int x(void) { return 1; }\n").unwrap();
    let a = start_peer(&sb, "a", &[]);
    let boot = vec![address(&sb, &a)];
    let b = start_peer(&sb, "b", &boot);
    let mut c = start_peer(&sb, "c", &boot);
    for p in [&a, &b, &c] {
        wait_until("3 peers up", Duration::from_secs(15), || {
            up_peers(&sb, &p.dir) == 2
        });
    }
    compile(&sb, &a.dir, "x.c");
    wait_until("replication", Duration::from_secs(10), || {
        total_entries(&sb, &b.dir) >= 2
    });

    // status: every peer with id, addresses, state, last seen, entries, bytes, ring share.
    let s = status(&sb, &b.dir).unwrap();
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    let share: f64 = peers
        .iter()
        .map(|p| p["ring_share"].as_f64().unwrap())
        .sum();
    assert!((share - 100.0).abs() < 0.5, "ring shares sum to {share}");
    for p in peers {
        assert!(p["id"].as_str().unwrap().starts_with("12D3"));
        assert!(!p["addrs"].as_array().unwrap().is_empty());
        assert!(p["last_seen"].as_u64().unwrap() > 0);
        assert!(p["bytes"].is_u64() && p["entries"].is_u64());
    }
    let out = distc_in(&sb, &b.dir).arg("status").output().unwrap();
    let table = assert_ok(&out, "status");
    assert!(table.contains("self") && table.contains("up"), "{table}");
    assert!(table.contains("Members: 3 ("), "no summary line: {table}");
    assert!(table.contains("over 3 owners"), "{table}");

    // flush: with C dead, A and B are emptied and C is named.
    let c_id = status(&sb, &c.dir).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.kill();
    let out = distc_in(&sb, &b.dir).arg("flush").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("Could not flush peer {c_id}")),
        "{stdout}"
    );
    assert_eq!(stdout.matches("Flushed peer").count(), 2, "{stdout}");
    wait_until("stores empty", Duration::from_secs(5), || {
        status(&sb, &a.dir).is_some_and(|s| s["peers"][0]["entries"] == 0)
            && status(&sb, &b.dir).is_some_and(|s| s["peers"][0]["entries"] == 0)
    });
}

#[test]
fn keyless_peer_is_local_only_and_one_peer_per_dir() {
    let sb = Sandbox::new(); // no mesh key
    let dir = sb.root.path().join("p");
    let p = {
        let log = std::fs::File::create(sb.root.path().join("p.log")).unwrap();
        let child = distc_in(&sb, &dir)
            .args(["peer", "--no-mdns"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Peer {
            child: Some(child),
            dir: dir.clone(),
        }
    };
    wait_until("keyless peer", Duration::from_secs(15), || {
        status(&sb, &dir).is_some()
    });
    let s = status(&sb, &dir).unwrap();
    let listen = s["listen"].as_array().unwrap();
    assert!(!listen.is_empty());
    for a in listen {
        assert!(a.as_str().unwrap().starts_with("/ip4/127."), "{a}");
    }
    assert!(s["mesh_key"].is_null());
    // Alone, the peer never claims a mesh: its wrappers keep the preprocessor-free miss path.
    assert!(!distc_peer::ipc::mesh_active(&dir));
    let log = std::fs::read_to_string(sb.root.path().join("p.log")).unwrap();
    assert!(
        log.contains("distc mesh init"),
        "no hint how to make a mesh: {log}"
    );

    // A second peer on the same dir refuses, naming the first.
    let out = distc_in(&sb, &dir)
        .args(["peer", "--no-mdns"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("already running") && stderr.contains(&p.pid().to_string()),
        "{stderr}"
    );

    // Without a key, listening beyond loopback is refused with the way out.
    let out = distc_in(&sb, &sb.root.path().join("q"))
        .args(["peer", "--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/0"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--open") && stderr.contains("mesh init"),
        "{stderr}"
    );
}

/// Runs `cmd` to completion, or kills it after `limit` (then the output says so): a command
/// that should fail at once must not hang the test when it regresses into running.
fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<std::process::ExitStatus>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

#[test]
fn a_named_key_file_that_is_missing_is_an_error_not_a_keyless_peer() {
    let sb = Sandbox::new();
    let missing = sb.root.path().join("no-such-dir/swarm.key");
    let missing_s = missing.display().to_string();
    let cfg = sb.root.path().join("psk.toml");
    std::fs::write(&cfg, format!("psk_file = \"{missing_s}\"\n")).unwrap();
    let ways: Vec<(&str, Command)> = vec![
        ("--psk-file", {
            let mut c = distc_in(&sb, &sb.root.path().join("p1"));
            c.args(["peer", "--no-mdns", "--psk-file", &missing_s]);
            c
        }),
        ("DISTC_PSK_FILE", {
            let mut c = distc_in(&sb, &sb.root.path().join("p2"));
            c.args(["peer", "--no-mdns"])
                .env("DISTC_PSK_FILE", &missing);
            c
        }),
        ("psk_file", {
            let mut c = distc_in(&sb, &sb.root.path().join("p3"));
            c.args(["peer", "--no-mdns"]).env("DISTC_CONFIG", &cfg);
            c
        }),
    ];
    for (how, cmd) in ways {
        let (status, stderr) = run_bounded(cmd, Duration::from_secs(20));
        let status = status.unwrap_or_else(|| panic!("{how}: the peer ran without its key"));
        assert!(!status.success(), "{how}: {stderr}");
        assert!(
            stderr.contains(&missing_s)
                && stderr.contains("distc mesh init")
                && stderr.contains("distc mesh join"),
            "{how}: {stderr}"
        );
    }
}

#[test]
fn a_peer_with_another_key_cannot_join_or_fetch() {
    let sb = mesh_sandbox();
    std::fs::write(sb.work.join("s.c"), "int s(void) { return 3; }\n").unwrap();
    let a = start_peer(&sb, "a", &[]);
    let boot = [address(&sb, &a)];
    compile(&sb, &a.dir, "s.c");
    assert_eq!(sb.compiles(), 1);

    // An intruder with its own key, bootstrapping to A.
    let other_cfg = sb.root.path().join("other-config");
    let out = sb
        .distc()
        .env("DISTC_CONFIG_DIR", &other_cfg)
        .args(["mesh", "init"])
        .output()
        .unwrap();
    assert_ok(&out, "mesh init (other)");
    let dir = sb.root.path().join("x");
    let log = std::fs::File::create(sb.root.path().join("x.log")).unwrap();
    let child = distc_in(&sb, &dir)
        .env("DISTC_CONFIG_DIR", &other_cfg)
        .args([
            "peer",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot[0],
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _x = Peer {
        child: Some(child),
        dir: dir.clone(),
    };
    wait_until("intruder up", Duration::from_secs(15), || {
        status(&sb, &dir).is_some()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status(&sb, &a.dir).unwrap()["peers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        status(&sb, &dir).unwrap()["peers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Its compile is a miss (compiled for real) and nothing it stores reaches A.
    compile(&sb, &dir, "s.c");
    assert_eq!(sb.compiles(), 2, "a peer without the key got a hit");
    std::fs::write(sb.work.join("t.c"), "int t(void) { return 4; }\n").unwrap();
    compile(&sb, &dir, "t.c");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(status(&sb, &a.dir).unwrap()["peers"][0]["entries"], 1);
}

/// A peer with another key, and a keyless peer given `--bootstrap`, say at the default log
/// level why they cannot join, and `distc status` lists them as rejected.
#[test]
fn a_peer_that_cannot_join_says_why_in_its_log_and_in_status() {
    let sb = mesh_sandbox();
    let default_level = |c: &mut Command| {
        c.env_remove("DISTC_LOG");
    };
    let a = start_peer_with(&sb, "a", &[], default_level);
    let a_addr = address(&sb, &a);
    let a_tcp = a_addr.split("/p2p/").next().unwrap().to_string();

    let other_cfg = sb.root.path().join("other-config");
    let out = sb
        .distc()
        .env("DISTC_CONFIG_DIR", &other_cfg)
        .args(["mesh", "init"])
        .output()
        .unwrap();
    assert_ok(&out, "mesh init (other)");
    let x = start_peer_with(&sb, "x", std::slice::from_ref(&a_addr), |c| {
        c.env_remove("DISTC_LOG")
            .env("DISTC_CONFIG_DIR", &other_cfg);
    });
    let log = |name: &str| std::fs::read_to_string(sb.root.path().join(format!("{name}.log")));
    let rejected = |dir: &Path| -> Vec<serde_json::Value> {
        status(&sb, dir)
            .and_then(|s| s["rejected"].as_array().cloned())
            .unwrap_or_default()
    };
    // The dialer names the address it could not join; the dialed peer names where the
    // connection came from. The key handshake may end in a reset or run into the upgrade
    // timeout (10 s), so this can take a while.
    wait_until(
        "both peers name each other as rejected",
        Duration::from_secs(40),
        || {
            rejected(&x.dir)
                .iter()
                .any(|r| r["addr"] == a_tcp.as_str() && r["direction"] == "dial")
                && rejected(&a.dir)
                    .iter()
                    .any(|r| r["addr"] == "/ip4/127.0.0.1" && r["direction"] == "inbound")
        },
    );
    let x_log = log("x").unwrap();
    assert!(
        x_log.contains("WARN")
            && x_log.contains(&a_tcp)
            && x_log.contains("does not have this mesh's key")
            && x_log.contains("distc mesh join"),
        "no warning naming {a_tcp} at the default level: {x_log}"
    );
    let a_log = log("a").unwrap();
    assert!(
        a_log.contains("WARN")
            && a_log.contains("127.0.0.1")
            && a_log.contains("without this mesh's key")
            && a_log.contains("distc mesh join"),
        "no warning naming the intruder at the default level: {a_log}"
    );
    // Rate-limited: the dialer retries every half second while alone, one warning a minute.
    let warnings = x_log.matches("does not have this mesh's key").count();
    assert_eq!(warnings, 1, "not rate-limited: {x_log}");
    let out = distc_in(&sb, &x.dir).arg("status").output().unwrap();
    let table = assert_ok(&out, "status");
    assert!(
        table.contains("Rejected") && table.contains(&a_tcp) && table.contains("mesh join"),
        "{table}"
    );
    // Neither joined the other.
    assert_eq!(
        status(&sb, &a.dir).unwrap()["peers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A keyless peer given --bootstrap says it will not dial, and why.
    let keyless_cfg = sb.root.path().join("keyless-config");
    let k = start_peer_with(&sb, "k", std::slice::from_ref(&a_addr), |c| {
        c.env_remove("DISTC_LOG")
            .env("DISTC_CONFIG_DIR", &keyless_cfg);
    });
    let k_log = log("k").unwrap();
    assert!(
        k_log.contains("WARN")
            && k_log.contains("not dialing bootstrap")
            && k_log.contains(&a_tcp)
            && k_log.contains("no mesh key")
            && k_log.contains("distc mesh join"),
        "{k_log}"
    );
    let r = rejected(&k.dir);
    assert!(
        r.iter()
            .any(|r| r["addr"] == a_tcp.as_str() && r["direction"] == "not dialed"),
        "{r:?}"
    );
}

/// Kills (SIGKILL) the process whose pid is in a file when dropped, if it still runs: the
/// peer a wrapper auto-starts is not our child, so it is stopped by the pid it wrote.
struct PidFileGuard(PathBuf, Option<u32>);

impl PidFileGuard {
    fn pid(&mut self) -> Option<u32> {
        if self.1.is_none() {
            self.1 = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
        self.1
    }
}

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid()
            && alive(pid)
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by init) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn auto_started_keyless_peer_exits_when_idle() {
    let sb = Sandbox::new(); // no mesh key: the auto-started peer serves this machine only
    std::fs::write(sb.work.join("idle.c"), "int idle(void) { return 3; }\n").unwrap();
    let mut guard = PidFileGuard(sb.distc_dir.join("peer.pid"), None);
    let out = sb
        .distc()
        .env("DISTC_AUTO_START", "1")
        .env("DISTC_IDLE_TIMEOUT_SECS", "2")
        .args(["gcc", "-c", "idle.c", "-o", "idle.o"])
        .output()
        .unwrap();
    assert_ok(&out, "compile that auto-starts a peer");
    wait_until("the auto-started peer", Duration::from_secs(15), || {
        guard.pid().is_some() && ipc_socket(&sb.distc_dir).exists()
    });
    let pid = guard.pid().expect("peer.pid");
    assert!(alive(pid), "auto-started peer {pid} is not running");
    let started = Instant::now();
    // No local use: it leaves within the timeout plus its 1 s check and a clean leave.
    wait_until("the idle peer to exit", Duration::from_secs(15), || {
        !alive(pid)
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited after only {took:?}"
    );
    let log = std::fs::read_to_string(sb.distc_dir.join("peer.log")).unwrap_or_default();
    assert!(log.contains("no local activity"), "{log}");
    assert!(
        !ipc_socket(&sb.distc_dir).exists(),
        "the socket outlived the peer"
    );
    assert!(!sb.distc_dir.join("peer.pid").exists());
}

fn ipc_socket(dir: &Path) -> PathBuf {
    distc_peer::ipc::socket_path(dir)
}

/// Regular files of a store (`<2 hex>/<62 hex>`), sorted.
fn store_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("store"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if !sub.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().is_file() && !f.file_name().to_string_lossy().starts_with(".tmp") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// A peer whose entries sit under other keys' names (a restored or mixed-up disk) answers
/// "not found" for them and removes them; the requester compiles the right object itself.
#[test]
fn a_peer_holding_another_keys_entry_never_serves_it() {
    let sb = mesh_sandbox();
    let a = start_peer(&sb, "a", &[]);
    let b = start_peer(&sb, "b", &[address(&sb, &a)]);
    wait_meshed(&sb, &[&a, &b], Duration::from_secs(10));
    let sources = ["x.c", "y.c"];
    std::fs::write(sb.work.join("x.c"), "int x(void) { return 1; }\n").unwrap();
    std::fs::write(sb.work.join("y.c"), "int y(void) { return 2; }\n").unwrap();
    let mut want = Vec::new();
    for s in sources {
        compile(&sb, &a.dir, s);
        want.push(std::fs::read(sb.work.join(s.replace(".c", ".o"))).unwrap());
    }
    // Both results and both shared manifests reach B.
    wait_until("replication to B", Duration::from_secs(15), || {
        store_files(&b.dir).len() == 4
    });
    // Every entry of B's under another one's name; A keeps nothing of its own.
    let files = store_files(&b.dir);
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(f, &bytes[(i + 1) % bytes.len()]).unwrap();
    }
    for f in store_files(&a.dir) {
        std::fs::remove_file(f).unwrap();
    }
    for (s, want) in sources.iter().zip(&want) {
        compile(&sb, &a.dir, s);
        let got = std::fs::read(sb.work.join(s.replace(".c", ".o"))).unwrap();
        assert!(&got == want, "{s}: wrong object from the mesh");
    }
    assert_eq!(sb.compiles(), 4, "the two compiles were not compiled again");
    let s = distc::stats::Stats::read_all(&a.dir).unwrap();
    assert_eq!(s.remote_hits, 0, "{s:?}");
    // B dropped every entry it was asked for and found under the wrong name (what it holds
    // now came back from A's compiles).
    for f in store_files(&b.dir) {
        let i = files.iter().position(|g| *g == f);
        let swapped = i.map(|i| &bytes[(i + 1) % bytes.len()]);
        assert!(
            swapped.is_none_or(|sw| std::fs::read(&f).unwrap() != *sw),
            "B kept a swapped entry: {f:?}"
        );
    }
    let log = std::fs::read_to_string(sb.root.path().join("b.log")).unwrap_or_default();
    assert!(
        log.contains("was found under key"),
        "B did not check: {log}"
    );
    drop(b);
}

/// Runs a wrapped compile with a bounded wait: `None` if it had to be killed (a hang).
fn compile_bounded(sb: &Sandbox, dir: &Path, src: &str, budget_ms: u64) -> Option<Duration> {
    let obj = format!("{}.o", src.trim_end_matches(".c"));
    let _ = std::fs::remove_file(sb.work.join(&obj));
    let mut cmd = distc_in(sb, dir);
    cmd.env("DISTC_PEER_TIMEOUT_MS", budget_ms.to_string())
        .args(["gcc", "-c", src, "-o", &obj]);
    let t = Instant::now();
    let (status, stderr) = run_bounded(cmd, Duration::from_secs(60));
    let took = t.elapsed();
    let status = status?;
    assert!(status.success(), "compile {src}: {stderr}");
    let reference = std::process::Command::new("gcc")
        .current_dir(&sb.work)
        .args(["-c", src, "-o", "reference.o"])
        .status()
        .expect("reference compile");
    assert!(reference.success());
    let want = std::fs::read(sb.work.join("reference.o")).expect("reference object");
    assert!(
        std::fs::read(sb.work.join(&obj)).ok() == Some(want),
        "{src}: wrong or missing object"
    );
    Some(took)
}

fn peer_timeouts(dir: &Path) -> u64 {
    distc::stats::Stats::read_all(dir)
        .map(|s| s.errors_by_kind.get("peer-timeout").copied().unwrap_or(0))
        .unwrap_or(0)
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Resumes a SIGSTOPped peer when the test ends, whatever happens, so it can be killed.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// A machine's peer stopped with SIGSTOP (Ctrl-Z): compiles finish, correct, and only one of
/// them waits for the peer (one budget); the rest skip it at no cost while it is marked
/// unresponsive. With its accept queue full, a compile still returns (a blocking connect would
/// never). `distc status` says the peer is not answering and how to see why. Bounded waits
/// only: a hang fails the test instead of stalling it.
#[test]
fn a_stopped_local_peer_costs_one_budget_and_never_hangs_a_compile() {
    let sb = mesh_sandbox();
    let a = start_peer(&sb, "a", &[]);
    let b = start_peer(&sb, "b", &[address(&sb, &a)]);
    for p in [&a, &b] {
        wait_until("2 peers up", Duration::from_secs(15), || {
            up_peers(&sb, &p.dir) == 1
        });
    }
    wait_until("mesh marker", Duration::from_secs(10), || {
        distc_peer::ipc::mesh_active(&a.dir)
    });
    let budget_ms = 1000;
    let sources: Vec<String> = (0..20).map(|i| format!("s{i}.c")).collect();
    for (i, s) in sources.iter().enumerate() {
        std::fs::write(
            sb.work.join(s),
            format!("int f{i}(void) {{ return {i}; }}\n"),
        )
        .unwrap();
    }

    signal(a.pid(), "-STOP");
    let _resume = Resume(a.pid());
    let mut total = Duration::ZERO;
    for s in &sources {
        total += compile_bounded(&sb, &a.dir, s, budget_ms)
            .unwrap_or_else(|| panic!("compile of {s} hung on the stopped peer"));
    }
    eprintln!("20 compiles with the local peer stopped: {total:?} (budget {budget_ms} ms)");
    assert_eq!(sb.compiles(), 20);
    // While the peer is skipped, compiles run as without a mesh: no preprocessor run for a
    // mesh-wide key (the peer.mesh marker the stopped peer cannot remove is not believed).
    let preprocessed = sb
        .invocations()
        .iter()
        .filter(|l| l.split_whitespace().any(|w| w == "-E"))
        .count();
    assert!(
        preprocessed <= 1,
        "{preprocessed} preprocessor runs: {:?}",
        sb.invocations()
    );
    assert_eq!(
        peer_timeouts(&a.dir),
        1,
        "the stopped peer was waited for more than once"
    );
    assert!(distc_peer::ipc::unresponsive_for(&a.dir).is_some());

    // `distc status` says so, and how to look.
    let (status, stderr) = run_bounded(
        {
            let mut c = distc_in(&sb, &a.dir);
            c.arg("status");
            c
        },
        Duration::from_secs(60),
    );
    let status = status.expect("distc status hung on the stopped peer");
    assert!(!status.success());
    assert!(
        stderr.contains("not answering") && stderr.contains(&a.pid().to_string()),
        "{stderr}"
    );

    // Fill the stopped peer's accept queue, forget the marker: the next compile tries the
    // peer again and still returns.
    let mut held = Vec::new();
    while held.len() < 5000 {
        match distc_peer::ipc::IpcClient::connect(&a.dir, Duration::from_millis(50)) {
            Ok(c) => held.push(c),
            Err(e) => {
                eprintln!("accept queue full after {} connections: {e}", held.len());
                break;
            }
        }
    }
    assert!(held.len() < 5000, "the accept queue never filled");
    distc_peer::ipc::clear_unresponsive(&a.dir);
    std::fs::write(sb.work.join("late.c"), "int late(void) { return 99; }\n").unwrap();
    let took = compile_bounded(&sb, &a.dir, "late.c", budget_ms)
        .expect("a compile hung on the full accept queue");
    eprintln!("compile with the accept queue full: {took:?}");
    assert_eq!(peer_timeouts(&a.dir), 2);
    drop(held);
    drop(b);
}

/// A compile as `distc inspect FILE` predicts it: `cc -c FILE -o STEM.o` in the work dir.
fn compile_cc(sb: &Sandbox, dir: &Path, src: &str) {
    let obj = format!("{}.o", src.trim_end_matches(".c"));
    let out = distc_in(sb, dir)
        .current_dir(&sb.work)
        .args(["cc", "-c", src, "-o", &obj])
        .output()
        .expect("run distc cc");
    assert_ok(&out, &format!("compile {src}"));
}

/// Entries carry their producer: B's copy of A's result names A (`distc inspect`), A keeps its
/// peer id across a restart, and what it signs after the restart is still A's.
#[test]
fn entries_name_their_producer_and_a_restarted_peer_keeps_its_identity() {
    let sb = mesh_sandbox();
    std::fs::write(sb.work.join("hello.c"), "int hello(void) { return 42; }\n").unwrap();
    std::fs::write(sb.work.join("later.c"), "int later(void) { return 9; }\n").unwrap();
    let a = start_peer(&sb, "a", &[]);
    let b = start_peer(&sb, "b", &[address(&sb, &a)]);
    wait_meshed(&sb, &[&a, &b], Duration::from_secs(10));
    let a_id = status(&sb, &a.dir).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    compile_cc(&sb, &a.dir, "hello.c");
    wait_until("replication to B", Duration::from_secs(15), || {
        store_files(&b.dir).len() == 2
    });
    let inspect = |dir: &Path| {
        let out = distc_in(&sb, dir)
            .current_dir(&sb.work)
            .args(["inspect", "hello.c"])
            .output()
            .unwrap();
        assert_ok(&out, "distc inspect")
    };
    let on_b = inspect(&b.dir);
    assert!(
        on_b.contains(&format!("Producer      {a_id} (signed")),
        "{on_b}"
    );
    let on_a = inspect(&a.dir);
    assert!(on_a.contains("Producer      this machine"), "{on_a}");
    let human = distc_in(&sb, &b.dir).arg("status").output().unwrap();
    let human = assert_ok(&human, "distc status");
    assert!(human.contains("Trust: mesh"), "{human}");

    let mut a = a;
    a.kill();
    let a = start_peer(&sb, "a", &[address(&sb, &b)]);
    assert_eq!(status(&sb, &a.dir).unwrap()["id"].as_str().unwrap(), a_id);
    wait_until("A back in the mesh", Duration::from_secs(15), || {
        up_peers(&sb, &b.dir) == 1 && distc_peer::ipc::mesh_active(&a.dir)
    });
    compile_cc(&sb, &a.dir, "later.c");
    wait_until("replication to B", Duration::from_secs(15), || {
        store_files(&b.dir).len() == 4
    });
    for f in store_files(&b.dir) {
        let raw = std::fs::read(&f).unwrap();
        assert_eq!(
            distc_peer::trust::claimed_producer(&raw).map(|p| p.to_string()),
            Some(a_id.clone()),
            "{f:?}"
        );
    }
    compile_cc(&sb, &b.dir, "later.c");
    assert_eq!(sb.compiles(), 2, "B did not use the restarted A's entry");
    let s = status(&sb, &b.dir).unwrap();
    assert_eq!(s["refused"]["bad_signature"], 0, "{s}");
}

/// The key of the one entry in a store.
fn only_key(dir: &Path) -> distc_peer::Key {
    let files = store_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let f = &files[0];
    let hex = format!(
        "{}{}",
        f.parent().unwrap().file_name().unwrap().to_string_lossy(),
        f.file_name().unwrap().to_string_lossy()
    );
    hex.parse().unwrap()
}

/// The attack of issue 13: a member stores another program's valid result under the key of
/// `victim.c` (found by compiling it on its own, outside the mesh) and has its peer announce
/// it, so that its peer signs it and pushes it to the key's owners. Returns the key and the
/// object `victim.c` really compiles to.
fn plant(sb: &Sandbox, planter: &Peer) -> (distc_peer::Key, Vec<u8>) {
    sb.write("victim.c", "int answer(void) { return 42; }\n");
    sb.write("other.c", "int answer(void) { return 666; }\n");
    let (scratch_v, scratch_o) = (
        sb.root.path().join("scratch-v"),
        sb.root.path().join("scratch-o"),
    );
    // Outside the mesh, with the preprocessor key: the key every member computes.
    let scratch = |dir: &Path, src: &str| {
        let out = distc_in(sb, dir)
            .env("DISTC_DEPEND_MODE", "0")
            .args(["gcc", "-c", src, "-o", &src.replace(".c", ".o")])
            .output()
            .unwrap();
        assert_ok(&out, src);
    };
    scratch(&scratch_v, "victim.c");
    let right = sb.read("victim.o");
    scratch(&scratch_o, "other.c");
    let (key, other) = (only_key(&scratch_v), only_key(&scratch_o));
    let payload = distc_peer::store::Store::open(&scratch_o.join("store"), 1 << 30)
        .unwrap()
        .get(&other)
        .unwrap()
        .unwrap();
    distc_peer::store::Store::open(&planter.dir.join("store"), 1 << 30)
        .unwrap()
        .put(&key, &payload)
        .unwrap();
    distc_peer::ipc::IpcClient::connect(&planter.dir, Duration::from_secs(5))
        .unwrap()
        .announce(&key)
        .unwrap();
    (key, right)
}

fn two_peer_mesh(sb: &Sandbox) -> (Peer, Peer, String) {
    let p = start_peer(sb, "planter", &[]);
    let v = start_peer(sb, "victim", &[address(sb, &p)]);
    wait_meshed(sb, &[&p, &v], Duration::from_secs(10));
    let id = status(sb, &p.dir).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    (p, v, id)
}

fn holds(dir: &Path, key: &distc_peer::Key) -> bool {
    distc_peer::store::Store::open(&dir.join("store"), 1 << 30)
        .unwrap()
        .contains(key)
}

/// A distrusted planter's entry is dropped from the victim's store, refused when it is sent
/// again, and never used: the victim compiles the right object itself.
#[test]
fn a_distrusted_producers_planted_entry_is_never_used() {
    let sb = mesh_sandbox();
    let (p, v, p_id) = two_peer_mesh(&sb);
    let (key, right) = plant(&sb, &p);
    wait_until(
        "the planted entry reaches the victim",
        Duration::from_secs(15),
        || holds(&v.dir, &key),
    );
    let out = distc_in(&sb, &v.dir)
        .args(["mesh", "distrust", &p_id])
        .output()
        .unwrap();
    let said = assert_ok(&out, "distc mesh distrust");
    assert!(said.contains("distrusted"), "{said}");
    assert!(
        !holds(&v.dir, &key),
        "the distrusted producer's entry was kept"
    );
    let human = assert_ok(
        &distc_in(&sb, &v.dir).arg("status").output().unwrap(),
        "status",
    );
    assert!(human.contains(&format!("distrusted: {p_id}")), "{human}");
    // Sent again, it is refused.
    distc_peer::ipc::IpcClient::connect(&p.dir, Duration::from_secs(5))
        .unwrap()
        .announce(&key)
        .unwrap();
    let before = sb.compiles();
    compile(&sb, &v.dir, "victim.c");
    assert_eq!(
        sb.read("victim.o"),
        right,
        "the victim used the planted object"
    );
    assert_eq!(sb.compiles(), before + 1);
    let s = distc::stats::Stats::read_all(&v.dir).unwrap();
    assert_eq!(s.remote_hits, 0, "{s:?}");
    let st = status(&sb, &v.dir).unwrap();
    assert!(st["refused"]["untrusted"].as_u64().unwrap() >= 1, "{st}");
    // Trusted again: the list is empty once more.
    let out = distc_in(&sb, &v.dir)
        .args(["mesh", "trust", &p_id])
        .output()
        .unwrap();
    assert_ok(&out, "distc mesh trust");
    let st = status(&sb, &v.dir).unwrap();
    assert!(
        !st["trust"].as_str().unwrap().contains("distrusted"),
        "{st}"
    );
    let bad = distc_in(&sb, &v.dir)
        .args(["mesh", "distrust", "not-a-peer"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).1.contains("not a peer id"), "{:?}", text(&bad));
}

/// With default trust and every remote hit re-verified, the planted entry is caught: the
/// warning names key, source and producer, the build gets the right object, the entry is
/// replaced, and `stats --json` and `status` list the mismatch by producer. An honest remote
/// hit is verified and raises nothing.
#[test]
fn re_verification_catches_a_planted_entry_and_names_its_producer() {
    let sb = mesh_sandbox();
    let (p, v, p_id) = two_peer_mesh(&sb);
    sb.write("honest.c", "int honest(void) { return 1; }\n");
    compile(&sb, &p.dir, "honest.c");
    let honest = sb.read("honest.o");
    let (key, right) = plant(&sb, &p);
    wait_until(
        "the planted entry reaches the victim",
        Duration::from_secs(15),
        || holds(&v.dir, &key),
    );
    let verify = |src: &str| {
        let before = sb.compiles();
        let obj = format!("{}.o", src.trim_end_matches(".c"));
        let _ = std::fs::remove_file(sb.work.join(&obj));
        let out = distc_in(&sb, &v.dir)
            .env("DISTC_VERIFY_RATE", "1.0")
            .args(["gcc", "-c", src, "-o", &obj])
            .output()
            .unwrap();
        assert_ok(&out, src);
        (text(&out).1, sb.compiles() - before, sb.read(&obj))
    };
    let (stderr, compiles, obj) = verify("victim.c");
    assert_eq!(obj, right, "the victim's build used the planted object");
    assert_eq!(compiles, 2, "compiled and confirmed here");
    for want in [
        key.to_string().as_str(),
        "victim.c",
        p_id.as_str(),
        "WARNING",
    ] {
        assert!(stderr.contains(want), "warning lacks {want}: {stderr}");
    }
    let raw = std::fs::read(
        v.dir
            .join("store")
            .join(&key.to_hex()[..2])
            .join(&key.to_hex()[2..]),
    )
    .unwrap();
    assert_eq!(
        distc_peer::trust::claimed_producer(&raw),
        None,
        "planted entry kept"
    );
    let stats = distc_in(&sb, &v.dir)
        .args(["stats", "--json"])
        .output()
        .unwrap();
    let stats: serde_json::Value =
        serde_json::from_str(&assert_ok(&stats, "stats --json")).unwrap();
    assert_eq!(stats["mismatches"][&p_id], 1, "{stats}");
    assert_eq!(status(&sb, &v.dir).unwrap()["mismatches"][&p_id], 1);
    let human = assert_ok(
        &distc_in(&sb, &v.dir).arg("status").output().unwrap(),
        "status",
    );
    assert!(
        human.contains("MISMATCH") && human.contains(&p_id),
        "{human}"
    );

    let (stderr, compiles, obj) = verify("honest.c");
    assert_eq!(obj, honest);
    assert_eq!(compiles, 1, "a matching sample compiles once");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    let s = distc::stats::Stats::read_all(&v.dir).unwrap();
    assert_eq!((s.verified, s.mismatches.len()), (1, 1), "{s:?}");
}

/// The peer in `status`'s list whose id is `id`.
fn peer_entry(s: &serde_json::Value, id: &str) -> serde_json::Value {
    s["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["id"] == id).cloned())
        .unwrap_or_else(|| panic!("{id} not in status: {s}"))
}

#[test]
fn a_client_peer_gets_hits_writes_through_the_owners_and_owns_no_range() {
    let sb = mesh_sandbox();
    std::fs::write(sb.work.join("x.c"), "int x(void) { return 1; }\n").unwrap();
    std::fs::write(sb.work.join("y.c"), "int y(void) { return 2; }\n").unwrap();
    let a = start_peer(&sb, "a", &[]);
    let boot = vec![address(&sb, &a)];
    let b = start_peer(&sb, "b", &boot);
    // The client takes its role from the config (here its variable, DISTC_ROLE).
    let c = start_peer_with(&sb, "c", &boot, |cmd| {
        cmd.env("DISTC_LOG", "info,distc_peer=debug")
            .env("DISTC_ROLE", "client");
    });
    wait_meshed(&sb, &[&a, &b, &c], Duration::from_secs(5));
    let c_id = status(&sb, &c.dir).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Every peer sees the client as a member that owns nothing, the owners share the ring.
    for p in [&a, &b, &c] {
        wait_until("the client's role known", Duration::from_secs(10), || {
            status(&sb, &p.dir).is_some_and(|s| peer_entry(&s, &c_id)["role"] == "client")
        });
        let s = status(&sb, &p.dir).unwrap();
        let client = peer_entry(&s, &c_id);
        assert_eq!(client["weight"], 0, "{client}");
        assert_eq!(client["ring_share"].as_f64(), Some(0.0), "{client}");
        let owners: f64 = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["role"] == "owner")
            .map(|p| p["ring_share"].as_f64().unwrap())
            .sum();
        assert!((owners - 100.0).abs() < 0.5, "owner shares sum to {owners}");
    }
    let out = distc_in(&sb, &a.dir).arg("status").output().unwrap();
    let table = assert_ok(&out, "status");
    assert!(table.contains("client"), "{table}");

    // An owner's compile is a hit through the client.
    compile(&sb, &a.dir, "x.c");
    wait_until("replication to the owners", Duration::from_secs(10), || {
        status(&sb, &b.dir).is_some_and(|s| s["peers"][0]["entries"].as_u64() >= Some(2))
    });
    compile(&sb, &c.dir, "x.c");
    assert_eq!(sb.compiles(), 1, "compile through the client was not a hit");
    // The client's compile is written through to the owners: a hit on B.
    compile(&sb, &c.dir, "y.c");
    assert_eq!(sb.compiles(), 2);
    wait_until(
        "the client's entries on the owners",
        Duration::from_secs(10),
        || status(&sb, &b.dir).is_some_and(|s| s["peers"][0]["entries"].as_u64() >= Some(4)),
    );
    compile(&sb, &b.dir, "y.c");
    assert_eq!(
        sb.compiles(),
        2,
        "the client's result was not a hit on an owner"
    );
}

/// The keys in a peer's store.
fn store_keys(dir: &Path) -> Vec<distc_peer::Key> {
    store_files(dir)
        .iter()
        .map(|f| {
            let hex = format!(
                "{}{}",
                f.parent().unwrap().file_name().unwrap().to_string_lossy(),
                f.file_name().unwrap().to_string_lossy()
            );
            hex.parse().unwrap()
        })
        .collect()
}

/// A graceful stop (`distc peer stop`) of one of three peers at R = 2 loses nothing: before it
/// tells the mesh it leaves, it hands every entry to the peers that own it once it is gone, so
/// the moment it has exited both survivors hold every key (even those the other survivor's
/// repair could only have copied later), and a newcomer compiles nothing.
#[test]
fn a_graceful_leave_hands_every_entry_to_its_new_owners() {
    let sb = mesh_sandbox();
    let files: Vec<String> = (0..8).map(|i| format!("g{i}.c")).collect();
    for (i, f) in files.iter().enumerate() {
        sb.write(f, format!("int g{i}(void) {{ return {i}; }}\n"));
    }
    let a = start_peer(&sb, "a", &[]);
    let boot = vec![address(&sb, &a)];
    let b = start_peer(&sb, "b", &boot);
    let c = start_peer(&sb, "c", &boot);
    wait_meshed(&sb, &[&a, &b, &c], Duration::from_secs(5));
    let id = |p: &Peer| {
        status(&sb, &p.dir).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ids = [(id(&a), &a), (id(&b), &b), (id(&c), &c)];
    for f in &files {
        compile(&sb, &a.dir, f);
    }
    assert_eq!(sb.compiles(), files.len());
    let keys = store_keys(&a.dir);
    assert_eq!(
        keys.len(),
        2 * files.len(),
        "a result and a manifest per compile"
    );
    // Replication done: each key on its two owners.
    let mut ipc = distc_peer::ipc::IpcClient::connect(&a.dir, Duration::from_secs(5)).unwrap();
    let mut shared_with_a = 0;
    for k in &keys {
        let owners: Vec<String> = ipc.owners(k).unwrap().into_iter().map(|o| o.id).collect();
        assert_eq!(owners.len(), 2);
        shared_with_a += owners.contains(&ids[0].0) as usize;
        wait_until("replication to the owners", Duration::from_secs(10), || {
            ids.iter()
                .filter(|(i, _)| owners.contains(i))
                .all(|(_, p)| holds(&p.dir, k))
        });
    }
    drop(ipc);
    eprintln!("{shared_with_a} of {} keys have A as an owner", keys.len());
    assert!(shared_with_a > 0);

    let t = Instant::now();
    let out = distc_in(&sb, &a.dir)
        .args(["peer", "stop"])
        .output()
        .unwrap();
    let said = assert_ok(&out, "distc peer stop");
    let took = t.elapsed();
    assert!(!distc_peer::daemon::is_running(&a.dir), "{said}");
    // At once, before the survivors could have repaired anything themselves.
    let missing: Vec<String> = keys
        .iter()
        .flat_map(|k| {
            [("b", &b), ("c", &c)]
                .into_iter()
                .filter(|(_, p)| !holds(&p.dir, k))
                .map(move |(n, _)| format!("{k} on {n}"))
        })
        .collect();
    assert!(missing.is_empty(), "not handed on: {missing:?}");
    let log = std::fs::read_to_string(sb.root.path().join("a.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("handoff done"))
        .unwrap_or_else(|| panic!("no handoff in the log:\n{log}"));
    eprintln!("stop took {took:?}; {line}");
    // The survivors see it gone, and a newcomer gets every result from them.
    for p in [&b, &c] {
        wait_until("A gone", Duration::from_secs(10), || {
            up_peers(&sb, &p.dir) == 1
        });
    }
    let d = start_peer(&sb, "d", &[address(&sb, &b)]);
    wait_meshed(&sb, &[&b, &c, &d], Duration::from_secs(5));
    // Every entry is on b and c (checked above), so a compile here that misses would be a
    // lookup that ran out of time, not a lost result: the newcomer's first gets dial the
    // owners (a key handshake each), which on a loaded machine can take longer than the
    // wrapper's default 500 ms budget. Give them the time.
    for f in &files {
        compile_timed(&sb, &d.dir, f, 10_000);
    }
    assert_eq!(
        sb.compiles(),
        files.len(),
        "a result was lost with the leave"
    );
}

/// `distc gcc -c SRC` through `dir`'s peer with the wrapper's `peer_timeout_ms` set, timed.
fn compile_timed(sb: &Sandbox, dir: &Path, src: &str, peer_timeout_ms: u64) -> Duration {
    let obj = src.replace(".c", ".o");
    let _ = std::fs::remove_file(sb.work.join(&obj));
    let t = Instant::now();
    let out = distc_in(sb, dir)
        .env("DISTC_PEER_TIMEOUT_MS", peer_timeout_ms.to_string())
        .args(["gcc", "-c", src, "-o", &obj])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert_ok(&out, src);
    took
}

/// A key's owner that stops answering (SIGSTOP: connections accepted, nothing said) is raced
/// against the next replica after the hedge delay (100 ms), so a fetch costs about that, not
/// the per-peer timeout; the same fetch without hedging waits its budget out.
#[test]
fn a_stalled_owner_is_raced_against_the_next_replica_after_the_hedge_delay() {
    let sb = mesh_sandbox();
    sb.write("h.c", "int h(void) { return 3; }\n");
    let a = start_peer(&sb, "a", &[]);
    let boot = vec![address(&sb, &a)];
    let b = start_peer(&sb, "b", &boot);
    let c = start_peer(&sb, "c", &boot);
    // Clients, so that they own nothing and the owners stay those of the three; a peer timeout
    // of 5 s gives each owner 2 s to start answering (`peer_timeout_ms` × 2/5).
    let client = |name: &str, hedge_ms: &str| {
        start_peer_with(&sb, name, &boot, |cmd| {
            cmd.env("DISTC_LOG", "info,distc_peer=debug")
                .env("DISTC_ROLE", "client")
                .env("DISTC_PEER_TIMEOUT_MS", "5000")
                .env("DISTC_HEDGE_DELAY_MS", hedge_ms);
        })
    };
    let hedged = client("hedged", "100");
    let unhedged = client("unhedged", "60000");
    wait_meshed(
        &sb,
        &[&a, &b, &c, &hedged, &unhedged],
        Duration::from_secs(5),
    );
    compile(&sb, &a.dir, "h.c");
    let keys = store_keys(&a.dir);
    let id = |p: &Peer| {
        status(&sb, &p.dir).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let owners_of = |k: &distc_peer::Key| -> Vec<String> {
        distc_peer::ipc::IpcClient::connect(&hedged.dir, Duration::from_secs(5))
            .unwrap()
            .owners(k)
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect()
    };
    let peers = [(id(&a), &a), (id(&b), &b), (id(&c), &c)];
    for k in &keys {
        let owners = owners_of(k);
        wait_until("replication", Duration::from_secs(10), || {
            peers
                .iter()
                .filter(|(i, _)| owners.contains(i))
                .all(|(_, p)| holds(&p.dir, k))
        });
    }
    // Stop the first owner of a key the lookups ask for, preferring one that is not A (A
    // compiled it, so it holds every key). When A comes first for every key, A it is: the
    // second owners hold the replicas (waited for above). Any other peer would be asked by
    // no lookup first, and nothing would be raced.
    let victim = keys
        .iter()
        .map(|k| owners_of(k)[0].clone())
        .find(|o| *o != peers[0].0)
        .unwrap_or_else(|| peers[0].0.clone());
    let stalled = peers.iter().find(|(i, _)| *i == victim).unwrap().1;
    signal(stalled.pid(), "-STOP");
    let _resume = Resume(stalled.pid());

    let fast = compile_timed(&sb, &hedged.dir, "h.c", 5000);
    assert_eq!(sb.compiles(), 1, "no hit with an owner stalled");
    // Without hedging the stalled owner holds the lookup until its budget runs out (4 s of
    // the compile's 5; each owner may take 5 s to start answering).
    let slow = compile_timed(&sb, &unhedged.dir, "h.c", 5000);
    eprintln!("with an owner stalled: hedged fetch {fast:?}, unhedged {slow:?}");
    let log = std::fs::read_to_string(sb.root.path().join("hedged.log")).unwrap();
    assert!(
        log.contains("asking the next peer too"),
        "no hedge in the log:\n{log}"
    );
    assert!(
        fast < Duration::from_millis(1500),
        "hedged fetch took {fast:?}"
    );
    assert!(
        slow > Duration::from_secs(2),
        "the unhedged fetch did not wait: {slow:?}"
    );
}
