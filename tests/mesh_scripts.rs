//! scripts/run_nodes.sh starts a local mesh; scripts/stop_nodes.sh stops exactly it and leaves
//! no process behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Sandbox, assert_ok};

/// Kills whatever pids the node pid files name, if the test failed half-way.
struct NodesGuard(PathBuf);

fn pids(nodes: &Path) -> Vec<i32> {
    std::fs::read_dir(nodes)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|s| s.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for NodesGuard {
    fn drop(&mut self) {
        for pid in pids(&self.0) {
            // SAFETY: kill(2) on a pid this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // Zombies are gone for our purpose: check /proc state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn run_nodes_then_stop_nodes_leaves_nothing_behind() {
    let sb = Sandbox::new();
    let nodes = sb.root.path().join("nodes");
    let _guard = NodesGuard(nodes.clone());
    let base = 20000 + (std::process::id() % 20000) as u16;
    let script = common::repo_root().join("scripts/run_nodes.sh");
    let out = sb
        .command("bash")
        .arg(&script)
        .arg("3")
        .env("DISTC_NODES_DIR", &nodes)
        .env("DISTC_BIN", common::distc_bin())
        .env("BASE_PORT", base.to_string())
        .output()
        .unwrap();
    let stdout = assert_ok(&out, "run_nodes.sh");
    assert!(stdout.contains("DISTC_DIR="), "{stdout}");
    let started = pids(&nodes);
    assert_eq!(started.len(), 3, "{stdout}");
    assert!(started.iter().all(|&p| alive(p)));

    // They form one mesh.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = sb
            .distc()
            .env("DISTC_DIR", nodes.join("node3"))
            .env("DISTC_CONFIG_DIR", nodes.join("config"))
            .args(["status", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let up = v["peers"]
            .as_array()
            .map(|a| a.iter().filter(|p| p["state"] == "up").count())
            .unwrap_or(0);
        if up == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "mesh did not form: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = sb
        .command("bash")
        .arg(common::repo_root().join("scripts/stop_nodes.sh"))
        .env("DISTC_NODES_DIR", &nodes)
        .output()
        .unwrap();
    let stdout = assert_ok(&out, "stop_nodes.sh");
    assert!(stdout.contains("stopped 3"), "{stdout}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "a peer survived stop_nodes.sh");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pids(&nodes).is_empty());
}
