//! mDNS discovery with no bootstrap address, inside network namespaces this test creates: a
//! bridge in a "hub" namespace and one veth per peer namespace, addresses in 10.77.0.0/24.
//! Nothing here touches any other network. Needs root and `ip`; otherwise prints SKIP.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, assert_ok};

/// Network namespaces created by this test, deleted (after their processes) on drop.
struct Netns {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates hub + `n` peer namespaces; returns the guard or why it could not.
fn make_namespaces(n: usize) -> Result<Netns, String> {
    let tag = format!("dtc{}", std::process::id());
    let hub = format!("{tag}h");
    let mut ns = Netns {
        names: Vec::new(),
        children: Vec::new(),
    };
    ip(&["netns", "add", &hub])?;
    ns.names.push(hub.clone());
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &hub, "link", "set", "br0", "up"])?;
    for i in 1..=n {
        let name = format!("{tag}p{i}");
        ip(&["netns", "add", &name])?;
        ns.names.push(name.clone());
        let hub_end = format!("v{i}");
        ip(&[
            "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns",
            &name,
        ])?;
        ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;
        let addr = format!("10.77.0.{i}/24");
        ip(&["-n", &name, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &name, "link", "set", "eth0", "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
    }
    Ok(ns)
}

fn status(sb: &Sandbox, dir: &Path) -> Option<serde_json::Value> {
    let out = sb
        .distc()
        .env("DISTC_DIR", dir)
        .args(["status", "--json"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn peers_find_each_other_by_mdns_in_private_namespaces() {
    let have_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_ip {
        println!("SKIP: mDNS test needs the `ip` tool (iproute2)");
        return;
    }
    let mut ns = match make_namespaces(2) {
        Ok(ns) => ns,
        Err(e) => {
            println!("SKIP: cannot create network namespaces ({e}); CI runs this as root");
            return;
        }
    };
    let sb = Sandbox::new();
    assert_ok(
        &sb.distc().args(["mesh", "init"]).output().unwrap(),
        "mesh init",
    );
    std::fs::write(sb.work.join("m.c"), "int m(void) { return 5; }\n").unwrap();
    let dirs: Vec<PathBuf> = (1..=2)
        .map(|i| sb.root.path().join(format!("peer{i}")))
        .collect();
    for (i, dir) in dirs.iter().enumerate() {
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("test-peer.log")).unwrap();
        let listen = format!("/ip4/10.77.0.{}/tcp/0", i + 1);
        // `ip netns exec` execs distc in place, so the child's pid is the peer's.
        let child = sb
            .command("ip")
            .args(["netns", "exec", &ns.names[i + 1]])
            .arg(common::distc_bin())
            .args(["peer", "--listen", &listen])
            .env("DISTC_DIR", dir)
            .env("DISTC_LOG", "info,distc_peer=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        ns.children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for dir in &dirs {
        loop {
            let up = status(&sb, dir)
                .and_then(|s| {
                    s["peers"]
                        .as_array()
                        .map(|a| a.iter().filter(|p| p["state"] == "up").count())
                })
                .unwrap_or(0);
            if up == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "peers did not find each other by mDNS: {}",
                std::fs::read_to_string(dir.join("test-peer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Addresses gossiped are the namespace addresses, never loopback.
    let s = status(&sb, &dirs[0]).unwrap();
    for a in s["peers"][1]["addrs"].as_array().unwrap() {
        assert!(a.as_str().unwrap().contains("10.77.0."), "{a}");
    }
    // A cross-peer hit.
    for dir in &dirs {
        let _ = std::fs::remove_file(sb.work.join("m.o"));
        let out = sb
            .distc()
            .env("DISTC_DIR", dir)
            .args(["gcc", "-c", "m.c", "-o", "m.o"])
            .output()
            .unwrap();
        assert_ok(&out, "compile");
        if sb.compiles() == 1 {
            // Give the announce a moment to reach the owners before the second compile.
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    assert_eq!(
        sb.compiles(),
        1,
        "second peer did not get a hit over mDNS mesh"
    );
}
