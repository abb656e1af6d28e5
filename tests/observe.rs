//! Watching distc: `distc top` in a real terminal (tmux), `distc top --once`, `/metrics`
//! scraped over HTTP (counters equal `distc stats --json`, the text parsed by Prometheus'
//! own Python parser), shell completions, the man page, `--version`, and the systemd unit.
//! Every process started here is killed by pid (the tmux server by its private socket).

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Sandbox, assert_ok, distc_bin, have_tool, repo_root, text, wait_until};

/// A running `distc peer`, killed and reaped on drop.
struct Peer {
    child: Child,
    log: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn status(sb: &Sandbox) -> Option<serde_json::Value> {
    let out = sb.distc().args(["status", "--json"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// A keyless (loopback-only) peer for the sandbox's cache, with `extra` flags.
fn start_peer(sb: &Sandbox, extra: &[&str]) -> Peer {
    let log = sb.root.path().join("peer.log");
    let file = std::fs::File::create(&log).expect("create peer log");
    let child = sb
        .distc()
        .args(["peer", "--no-mdns"])
        .args(extra)
        .env("DISTC_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log"))
        .stderr(file)
        .spawn()
        .expect("spawn distc peer");
    let peer = Peer { child, log };
    wait_until("the peer to answer", Duration::from_secs(30), || {
        status(sb).is_some()
    });
    peer
}

fn compile(sb: &Sandbox, src: &str) {
    let obj = format!("{}.o", src.trim_end_matches(".c"));
    let out = sb
        .distc()
        .args(["gcc", "-c", src, "-o", &obj])
        .output()
        .expect("run distc gcc");
    assert_ok(&out, &format!("compile {src}"));
}

fn link(sb: &Sandbox, obj: &str, exe: &str) {
    let out = sb
        .distc()
        .args(["gcc", obj, "-o", exe])
        .output()
        .expect("run distc gcc (link)");
    assert_ok(&out, "link");
}

fn stats(sb: &Sandbox) -> serde_json::Value {
    let out = sb.run_distc(&sb.work, &["stats", "--json"]);
    serde_json::from_str(&assert_ok(&out, "stats --json")).expect("stats JSON")
}

#[test]
fn top_once_without_a_peer_shows_the_local_cache_and_recent_compiles() {
    let sb = Sandbox::new();
    sb.demo("hello.c");
    compile(&sb, "hello.c");
    compile(&sb, "hello.c");
    link(&sb, "hello.o", "hello");
    let out = sb.run_distc(&sb.work, &["top", "--once"]);
    let frame = assert_ok(&out, "top --once");
    assert!(!frame.contains('\x1b'), "plain text, no escapes:\n{frame}");
    for want in [
        "No peer running: local cache only",
        "Hits 1 (local 1, from peers 0)   Misses 1",
        "Uncacheable 1 (linking 1)",
        "Stored ",
        "50 % of 2",
        "Recent compiles on this machine (3 in 5 min)",
        "uncacheable: linking",
    ] {
        assert!(frame.contains(want), "missing {want:?} in:\n{frame}");
    }
    // Newest first: the link, then the hit, then the miss, each naming what it compiled.
    let row = |what: &str| {
        frame
            .lines()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no row {what:?} in:\n{frame}"))
    };
    let (link_row, hit, miss) = (row("uncacheable: linking"), row(" hit "), row(" miss "));
    assert!(link_row < hit && hit < miss, "order:\n{frame}");
    for r in [hit, miss] {
        assert!(frame.lines().nth(r).unwrap().contains("hello.c"), "{frame}");
    }

    // `stats --zero` empties the ring with the counters.
    assert_ok(
        &sb.run_distc(&sb.work, &["stats", "--zero"]),
        "stats --zero",
    );
    let frame = assert_ok(&sb.run_distc(&sb.work, &["top", "--once"]), "top --once");
    assert!(frame.contains("(0 in 5 min)"), "{frame}");
    assert!(frame.contains("no cacheable compiles"), "{frame}");
}

/// A tmux server on a private socket, killed on drop.
struct Tmux {
    socket: String,
    sb_env: Vec<(String, std::ffi::OsString)>,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        for (k, v) in &self.sb_env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run tmux");
        assert_ok(&out, &format!("tmux {args:?}"))
    }

    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purpose: it no longer runs.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn top_in_a_real_terminal_shows_the_mesh_and_new_compiles_and_quits_on_q() {
    if !have_tool("tmux") {
        eprintln!("SKIP: tmux is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    let sb = Sandbox::new();
    sb.demo("hello.c");
    let peer = start_peer(&sb, &[]);
    let id = status(&sb).expect("status")["id"]
        .as_str()
        .expect("peer id")
        .to_string();
    compile(&sb, "hello.c");

    // The pane runs in the sandbox's environment: a tmux server started with it passes it on.
    let env = sb.distc();
    let tmux = Tmux {
        socket: format!("distc-top-test-{}", std::process::id()),
        sb_env: env
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_os_string())))
            .collect(),
    };
    let command = format!(
        "cd '{}' && exec '{}' top",
        sb.work.display(),
        distc_bin().display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ]);
    let pid: u32 = tmux
        .run(&["display-message", "-p", "-t", "top", "#{pane_pid}"])
        .trim()
        .parse()
        .expect("pane pid");

    let id_tail = &id[id.len() - 12..];
    let mut screen = String::new();
    wait_until(
        "top to show the peer and the miss",
        Duration::from_secs(30),
        || {
            screen = tmux.capture();
            screen.contains("distc top")
                && screen.contains(id_tail)
                && screen.contains("self")
                && screen
                    .lines()
                    .any(|l| l.contains("miss") && l.contains("hello.c"))
        },
    );
    assert!(screen.contains("Mesh: no key"), "{screen}");

    // A compile made while top runs appears on its own within a refresh or two.
    compile(&sb, "hello.c");
    wait_until("the new hit to appear", Duration::from_secs(30), || {
        screen = tmux.capture();
        screen
            .lines()
            .any(|l| l.contains(" hit ") && l.contains("hello.c"))
            && screen.contains("Hits 1 (local 1")
    });

    tmux.run(&["send-keys", "-t", "top", "q"]);
    wait_until("top to exit on q", Duration::from_secs(15), || !alive(pid));
    drop(peer);
}

/// `GET path` on 127.0.0.1:port; the status line, headers and body.
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    (head.to_string(), body.to_string())
}

/// The value of the sample `name{labels}` (labels exactly as written, `""` for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Parses the exposition with prometheus_client's OpenMetrics parser; `None` when Python or
/// the package is missing. Returns the number of samples it read.
fn python_parse(exposition: &str) -> Option<Result<usize, String>> {
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        n = sum(len(f.samples) for f in text_string_to_metric_families(sys.stdin.read()))\n\
        print(n)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python parser");
    let (stdout, stderr) = text(&out);
    Some(if out.status.success() {
        stdout.trim().parse().map_err(|_| stdout)
    } else {
        Err(stderr)
    })
}

fn metrics_port(peer: &Peer) -> u16 {
    let mut port = None;
    wait_until(
        "the metrics address in the log",
        Duration::from_secs(20),
        || {
            port = peer.log().lines().find_map(|l| {
                let rest = l.split("serving metrics on http://127.0.0.1:").nth(1)?;
                rest.split('/').next()?.parse().ok()
            });
            port.is_some()
        },
    );
    port.expect("port")
}

#[test]
fn metrics_over_http_match_stats_and_parse() {
    let sb = Sandbox::new();
    sb.demo("hello.c");
    let peer = start_peer(&sb, &["--metrics", "127.0.0.1:0"]);
    let port = metrics_port(&peer);
    compile(&sb, "hello.c");
    compile(&sb, "hello.c");
    compile(&sb, "hello.c");
    link(&sb, "hello.o", "hello");

    let (head, body) = http_get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    let s = stats(&sb);
    let n = |v: &serde_json::Value| v.as_u64().expect("number") as f64;
    let checks = [
        ("distc_hits_total", "tier=\"local\"", n(&s["local_hits"])),
        ("distc_hits_total", "tier=\"remote\"", n(&s["remote_hits"])),
        ("distc_misses_total", "", n(&s["misses"])),
        (
            "distc_uncacheable_total",
            "reason=\"linking\"",
            n(&s["uncacheable"]["linking"]),
        ),
        ("distc_store_entries", "", n(&s["entries"])),
        ("distc_store_bytes", "", n(&s["bytes"])),
        ("distc_store_max_bytes", "", n(&s["max_size"])),
        ("distc_members", "state=\"self\"", 1.0),
        ("distc_members", "state=\"up\"", 0.0),
        ("distc_served_total", "result=\"hit\"", 0.0),
    ];
    assert_eq!(n(&s["local_hits"]), 2.0, "{s}");
    for (name, labels, want) in checks {
        assert_eq!(
            sample(&body, name, labels),
            Some(want),
            "{name}{{{labels}}} vs stats --json {s}:\n{body}"
        );
    }
    // The IPC requests of `distc status` are timed.
    assert!(
        body.contains("distc_ipc_request_duration_seconds_count{request=\"status\"}"),
        "{body}"
    );

    match python_parse(&body) {
        None => eprintln!(
            "SKIP: the format check needs python3 with prometheus_client \
             (scripts/install-deps.sh installs it)"
        ),
        Some(Ok(samples)) => assert!(samples >= checks.len(), "{samples} samples"),
        Some(Err(e)) => panic!("prometheus_client cannot parse /metrics: {e}\n{body}"),
    }

    let (head, _) = http_get(port, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    drop(peer);
}

#[test]
fn metrics_beyond_loopback_need_the_explicit_flag() {
    let sb = Sandbox::new();
    let out = sb
        .distc()
        .args(["peer", "--no-mdns", "--metrics", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run distc peer");
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("--metrics-public"), "{stderr}");

    // The config key is validated like every other.
    let out = sb
        .distc()
        .args(["peer", "--no-mdns"])
        .env("DISTC_METRICS_LISTEN", "localhost")
        .stdin(Stdio::null())
        .output()
        .expect("run distc peer");
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("DISTC_METRICS_LISTEN"), "{stderr}");
}

#[test]
fn completions_man_page_and_version() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = sb.run_distc(&sb.work, &["completions", shell]);
        let script = assert_ok(&out, &format!("completions {shell}"));
        for sub in ["top", "build-project", "completions"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // Bash loads its script and registers the completion.
    let out = sb.run_distc(&sb.work, &["completions", "bash"]);
    let file = sb.root.path().join("distc.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && complete -p distc", file.display()))
        .output()
        .expect("bash");
    assert!(assert_ok(&out, "bash completion").contains("distc"));

    let out = sb.run_distc(&sb.work, &["man"]);
    let page = assert_ok(&out, "man");
    assert!(
        page.starts_with(".ie") || page.contains(".TH distc 1"),
        "{page}"
    );
    assert!(page.contains(".TH distc 1"), "{page}");
    for sub in ["top", "completions", "stats", "peer"] {
        assert!(page.contains(sub), "man page lacks {sub}");
    }
    if have_tool("groff") {
        let mut child = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("groff");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    }

    let out = sb.run_distc(&sb.work, &["--version"]);
    let version = assert_ok(&out, "--version");
    assert!(version.starts_with(&format!("distc {}", env!("CARGO_PKG_VERSION"))));
    for p in distc_peer::protocol::PROTOCOLS {
        assert!(version.contains(p.as_ref()), "{p} missing: {version}");
    }
    assert!(
        version.contains(&format!(
            "local IPC protocol: {}",
            distc_peer::ipc::IPC_VERSION
        )),
        "{version}"
    );

    // Every command has help text.
    let out = sb.run_distc(&sb.work, &["--help"]);
    let help = assert_ok(&out, "--help");
    for sub in ["top", "completions", "man", "stats", "status", "peer"] {
        assert!(
            help.contains(&format!("  {sub} ")),
            "--help lacks {sub}:\n{help}"
        );
    }
    let out = sb.run_distc(&sb.work, &["peer", "--help"]);
    let help = assert_ok(&out, "peer --help");
    assert!(
        help.contains("--metrics <ADDR:PORT>") && help.contains("--metrics-public"),
        "{help}"
    );
}

#[test]
fn systemd_unit_verifies() {
    let unit = repo_root().join("config/distc-peer.service");
    let unit_text = std::fs::read_to_string(&unit).expect("read the unit");
    assert!(
        unit_text.contains("ExecStart=%h/.cargo/bin/distc peer"),
        "{unit_text}"
    );
    if !have_tool("systemd-analyze") {
        eprintln!("SKIP: systemd-analyze is not installed");
        return;
    }
    // Verified as a user unit, with ExecStart pointing at the binary under test (verify
    // checks that the program exists).
    let sb = Sandbox::new();
    let dir = sb.root.path().join("units");
    let runtime = sb.root.path().join("runtime");
    for d in [&dir, &runtime] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let copy = dir.join("distc-peer.service");
    std::fs::write(
        &copy,
        unit_text.replace("%h/.cargo/bin/distc", &distc_bin().display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user", "--man=no"])
        .arg(&copy)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", sb.root.path().join("home"))
        .output()
        .expect("systemd-analyze");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stdout}{stderr}"
    );
    // The unit's own install instructions are the ones docs/mesh.md gives.
    let doc = std::fs::read_to_string(repo_root().join("docs/mesh.md")).unwrap();
    for line in [
        "install -Dm644 config/distc-peer.service ~/.config/systemd/user/distc-peer.service",
        "systemctl --user daemon-reload && systemctl --user enable --now distc-peer",
    ] {
        assert!(unit_text.contains(line) && doc.contains(line), "{line}");
    }
}
