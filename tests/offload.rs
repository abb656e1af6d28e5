//! Compiles on idle peers, against the real thing: two `distc peer` processes on 127.0.0.1
//! in one closed mesh, real gcc, bubblewrap, and `make`. Machine one is made busy (pinned to
//! one core with `taskset`, or its compile slots held by the test), machine two serves.
//! Objects are compared byte for byte with plain gcc's; every process started here is killed
//! by pid when its guard drops.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, assert_ok, text, wait_until};

/// A running `distc peer`, killed (SIGKILL) and reaped on drop.
struct Peer {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Peer {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Jobs this peer compiled for another, as its log lists them.
    fn jobs_served(&self) -> usize {
        self.log().matches("compiled a job for a peer").count()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A command in the sandbox with the real compilers first on PATH (the oracle scripts log to
/// a file a sandboxed compile cannot write), `DISTC_DIR` = `dir`.
fn in_dir(sb: &Sandbox, program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut c = sb.command(program);
    c.env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DISTC_DIR", dir);
    c
}

fn distc(sb: &Sandbox, dir: &Path) -> Command {
    in_dir(sb, common::distc_bin(), dir)
}

fn json(out: &Output) -> Option<serde_json::Value> {
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn status(sb: &Sandbox, dir: &Path) -> Option<serde_json::Value> {
    json(&distc(sb, dir).args(["status", "--json"]).output().ok()?)
}

fn start_peer(sb: &Sandbox, name: &str, bootstrap: Option<&str>) -> Peer {
    let dir = sb.root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = sb.root.path().join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = distc(sb, &dir);
    cmd.env("DISTC_LOG", "info")
        .args(["peer", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let peer = Peer {
        child: Some(cmd.spawn().expect("spawn distc peer")),
        dir,
        log: log_path,
    };
    wait_until(
        &format!("peer {name} answers"),
        Duration::from_secs(20),
        || status(sb, &peer.dir).is_some(),
    );
    peer
}

fn address(sb: &Sandbox, peer: &Peer) -> String {
    let s = status(sb, &peer.dir).expect("status");
    format!(
        "{}/p2p/{}",
        s["listen"][0].as_str().expect("listen address"),
        s["id"].as_str().expect("id")
    )
}

/// Slots `distc slots` says this machine can use (its cores plus members' free ones).
fn usable_slots(sb: &Sandbox, dir: &Path) -> u64 {
    distc(sb, dir)
        .args(["slots", "--json"])
        .output()
        .ok()
        .and_then(|o| json(&o))
        .and_then(|v| v["usable"].as_u64())
        .unwrap_or(0)
}

/// A closed mesh of two peers; `one` sees `two`'s free slots.
/// Every compile slot of the machine whose cache is `dir`, held: it is busy until they drop.
fn hold_every_slot(dir: &std::path::Path) -> Vec<distc_peer::slots::LocalSlot> {
    let cores = distc_peer::slots::cores();
    (0..cores)
        .map(|_| {
            distc_peer::slots::take(dir, || cores)
                .unwrap()
                .expect("a free slot")
        })
        .collect()
}

fn two_machines() -> Option<(Sandbox, Peer, Peer)> {
    if distc_peer::sandbox::find_bwrap().is_none() {
        eprintln!("bubblewrap does not work here: skipped");
        return None;
    }
    let sb = Sandbox::new();
    assert_ok(
        &sb.distc().args(["mesh", "init"]).output().unwrap(),
        "mesh init",
    );
    let one = start_peer(&sb, "one", None);
    let two = start_peer(&sb, "two", Some(&address(&sb, &one)));
    let cores = distc_peer::slots::cores() as u64;
    wait_until(
        "machine one sees machine two's slots",
        Duration::from_secs(30),
        || {
            distc_peer::ipc::mesh_active(&one.dir)
                && usable_slots(&sb, &one.dir) > cores
                && std::fs::read_to_string(one.dir.join("peer.slots"))
                    .is_ok_and(|s| s.trim() != "0")
        },
    );
    Some((sb, one, two))
}

/// `n` C sources with a little work for the optimiser each, and a Makefile compiling them
/// with `$(CC) -O2 -Wall -c`.
fn write_project(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let mut src =
            format!("#include <stdio.h>\n#include <string.h>\n#define SCALE(x) ((x) * {i} + 1)\n");
        for f in 0..40 {
            src.push_str(&format!(
                "int f{i}_{f}(const char *s, int n) {{ int acc = SCALE(n); \
                 for (size_t k = 0; k < strlen(s); k++) acc = acc * 31 + s[k] + {f}; \
                 if (acc % 7 == 3) printf(\"%d\\n\", acc); return acc; }}\n"
            ));
        }
        std::fs::write(dir.join(format!("s{i}.c")), src).unwrap();
    }
    std::fs::write(
        dir.join("Makefile"),
        "SRCS := $(sort $(wildcard *.c))\nall: $(SRCS:.c=.o)\n%.o: %.c\n\t$(CC) -O2 -Wall -c $< -o $@\n",
    )
    .unwrap();
}

/// Every object of `dir` equals plain gcc's compile of its source.
fn assert_objects_match_plain_gcc(sb: &Sandbox, dir: &Path, n: usize) {
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for i in 0..n {
        let src = format!("s{i}.c");
        let out = in_dir(sb, "gcc", &sb.distc_dir)
            .args(["-O2", "-Wall", "-c", &src, "-o"])
            .arg(plain.join(format!("s{i}.o")))
            .current_dir(dir)
            .output()
            .unwrap();
        assert_ok(&out, "plain gcc");
        let a = std::fs::read(dir.join(format!("s{i}.o"))).expect("distc object");
        let b = std::fs::read(plain.join(format!("s{i}.o"))).unwrap();
        assert!(a == b, "s{i}.o differs from plain gcc's");
    }
}

fn offloaded(sb: &Sandbox, dir: &Path) -> u64 {
    json(&distc(sb, dir).args(["stats", "--json"]).output().unwrap())
        .and_then(|v| v["offloaded"].as_u64())
        .unwrap_or(0)
}

/// `make -jJOBS` of `proj` on machine one, pinned to one core.
fn make(sb: &Sandbox, one: &Peer, proj: &Path, jobs: usize) -> Command {
    let mut c = in_dir(sb, "taskset", &one.dir);
    c.args(["-c", "0", "make", &format!("-j{jobs}")])
        .arg(format!("CC={} gcc", common::distc_bin().display()))
        .current_dir(proj);
    c
}

#[test]
fn a_build_with_more_jobs_than_local_slots_compiles_on_the_idle_peer() {
    let Some((sb, one, two)) = two_machines() else {
        return;
    };
    let proj = sb.work.join("proj");
    let n = 12;
    write_project(&proj, n);
    let out = make(&sb, &one, &proj, 4).output().unwrap();
    assert_ok(&out, "make -j4 on one core");
    let sent = offloaded(&sb, &one.dir);
    assert!(
        sent > 0,
        "nothing was compiled on machine two; its log:\n{}",
        two.log()
    );
    assert_eq!(
        two.jobs_served() as u64,
        sent,
        "machine two's log lists its jobs"
    );
    assert_objects_match_plain_gcc(&sb, &proj, n);
    // The results were stored like local misses: a second build is all hits.
    for i in 0..n {
        std::fs::remove_file(proj.join(format!("s{i}.o"))).unwrap();
    }
    let out = in_dir(&sb, common::distc_bin(), &one.dir)
        .args(["stats", "--zero"])
        .output()
        .unwrap();
    assert_ok(&out, "stats --zero");
    assert_ok(&make(&sb, &one, &proj, 4).output().unwrap(), "second make");
    let stats = json(
        &distc(&sb, &one.dir)
            .args(["stats", "--json"])
            .output()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stats["hits"].as_u64(), Some(n as u64), "{stats}");
    assert_objects_match_plain_gcc(&sb, &proj, n);
    // `distc slots --list` and `status` show both machines' slots.
    let list = distc(&sb, &one.dir)
        .args(["slots", "--list"])
        .output()
        .unwrap();
    let (table, _) = text(&list);
    assert!(
        table.contains("this peer") && table.contains("usable now"),
        "{table}"
    );
    let (st, _) = text(&distc(&sb, &one.dir).arg("status").output().unwrap());
    assert!(st.contains("Compile slots"), "{st}");
}

/// With every local slot taken for the whole build, four jobs at once for one remote slot
/// (and the one it queues): each waits for the member's slot instead of compiling here.
#[test]
fn a_busy_machine_waits_for_the_members_slot_instead_of_compiling_locally() {
    let Some((sb, one, two)) = two_machines() else {
        return;
    };
    let held = hold_every_slot(&one.dir);
    let proj = sb.work.join("proj");
    let n = 8;
    write_project(&proj, n);
    let out = make(&sb, &one, &proj, 4).output().unwrap();
    assert_ok(&out, "make -j4 on a busy machine");
    drop(held);
    assert_eq!(
        offloaded(&sb, &one.dir),
        n as u64,
        "every compile ran on machine two; its log:\n{}",
        two.log()
    );
    assert_eq!(two.jobs_served(), n, "machine two's log lists its jobs");
    assert_objects_match_plain_gcc(&sb, &proj, n);
}

#[test]
fn killing_the_serving_peer_mid_build_still_finishes_the_build() {
    let Some((sb, one, mut two)) = two_machines() else {
        return;
    };
    let proj = sb.work.join("proj");
    let n = 24;
    write_project(&proj, n);
    let mut build = make(&sb, &one, &proj, 4)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while two.jobs_served() == 0 && Instant::now() < deadline {
        if build.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        two.jobs_served() > 0,
        "machine two never got a job:\n{}",
        two.log()
    );
    two.kill();
    let out = build.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the build failed after the serving peer died: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_objects_match_plain_gcc(&sb, &proj, n);
}

#[test]
fn remote_errors_and_warnings_report_what_local_reports_and_bad_requests_are_refused() {
    let Some((sb, one, two)) = two_machines() else {
        return;
    };
    // Machine one is busy: the test holds every one of its compile slots.
    let held = hold_every_slot(&one.dir);
    let dir = sb.work.join("diag");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.c"),
        "#define CALL(f) f(1)\nint g(void) { return CALL(undefined_function) + missing; }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("warn.c"),
        "#define UNUSED(x) int x = 0\nint g(void) { UNUSED(unused_here); return 1; }\n",
    )
    .unwrap();
    // Preprocessed, larger than the local socket's ordinary requests (64 KiB).
    let table: String = (0..20_000).map(|i| format!("{},", i % 251)).collect();
    std::fs::write(
        dir.join("ok.c"),
        format!(
            "static const unsigned char t[] = {{{table}}};\nint ok(int a) {{ return a * t[a]; }}\n"
        ),
    )
    .unwrap();
    let run = |program: &mut Command, src: &str| -> Output {
        let obj = format!("{src}.o");
        let _ = std::fs::remove_file(dir.join(&obj));
        program
            .args(["-O2", "-Wall", "-c", src, "-o", &obj])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    for src in ["bad.c", "warn.c"] {
        let before = two.jobs_served() + two.log().matches("exit=1").count();
        let local = run(&mut in_dir(&sb, "gcc", &one.dir), src);
        let local_obj = std::fs::read(dir.join(format!("{src}.o"))).ok();
        let mut d = distc(&sb, &one.dir);
        d.arg("gcc");
        let via = run(&mut d, src);
        assert_eq!(via.status.code(), local.status.code(), "{src}: exit code");
        assert_eq!(
            String::from_utf8_lossy(&via.stderr),
            String::from_utf8_lossy(&local.stderr),
            "{src}: diagnostics"
        );
        assert_eq!(
            std::fs::read(dir.join(format!("{src}.o"))).ok(),
            local_obj,
            "{src}: object"
        );
        // It did go to machine two first.
        wait_until(
            &format!("machine two compiled {src}"),
            Duration::from_secs(10),
            || two.jobs_served() + two.log().matches("exit=1").count() > before,
        );
    }
    // A clean compile is offloaded; with a dependency file (default and explicit targets)
    // both outputs equal plain gcc's.
    let mut expected = offloaded(&sb, &one.dir);
    let variants: [&[&str]; 4] = [
        &[],
        &["-MD"],
        &["-MMD", "-MP", "-MF", "deps/ok.d"],
        &["-MD", "-MT", "custom$target", "-MF", "deps/ok2.d"],
    ];
    std::fs::create_dir_all(dir.join("deps")).unwrap();
    for deps in variants {
        let depfile = deps
            .iter()
            .position(|a| *a == "-MF")
            .map(|i| deps[i + 1].to_string())
            .unwrap_or_else(|| "ok.c.d".to_string());
        let mut plain = in_dir(&sb, "gcc", &one.dir);
        plain.args(deps);
        assert_ok(&run(&mut plain, "ok.c"), "plain gcc ok.c");
        let want_obj = std::fs::read(dir.join("ok.c.o")).unwrap();
        let want_dep = if deps.is_empty() {
            Vec::new()
        } else {
            std::fs::read(dir.join(&depfile)).unwrap()
        };
        let _ = std::fs::remove_file(dir.join(&depfile));
        let mut d = distc(&sb, &one.dir);
        d.arg("gcc").args(deps);
        assert_ok(&run(&mut d, "ok.c"), "ok.c through distc");
        expected += 1;
        assert_eq!(
            offloaded(&sb, &one.dir),
            expected,
            "ok.c {deps:?} was not offloaded"
        );
        assert!(
            std::fs::read(dir.join("ok.c.o")).unwrap() == want_obj,
            "{deps:?}: object"
        );
        if !deps.is_empty() {
            assert_eq!(
                String::from_utf8_lossy(&std::fs::read(dir.join(&depfile)).unwrap()),
                String::from_utf8_lossy(&want_dep),
                "{deps:?}: dependency file"
            );
        }
        // Each variant is its own key; empty the stores so the next one misses too.
        assert_ok(
            &distc(&sb, &one.dir).arg("flush").output().unwrap(),
            "flush",
        );
    }
    drop(held);

    // Requests machine two refuses, sent through machine one's peer as a wrapper would.
    let gcc = common::which("gcc").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let toolchain = distc_peer::toolchain::identify(scratch.path(), "gcc", &gcc).unwrap();
    let ask_in = |language: &str, args: &[&str], source: &[u8], toolchain| {
        let mut c = distc_peer::ipc::IpcClient::connect(&one.dir, Duration::from_secs(30)).unwrap();
        c.compile(distc_peer::offload::Ask {
            request: distc_peer::offload::CompileRequest {
                toolchain,
                language: language.into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                cwd: dir.to_string_lossy().into_owned(),
                env: Vec::new(),
                name: "probe.c".into(),
                source: distc_peer::protocol::Bytes(source.to_vec()),
            },
            wait_ms: 0,
            local_cores: 1,
        })
        .unwrap()
        .1
    };
    let ask =
        |args: &[&str], source: &[u8], toolchain| ask_in("cpp-output", args, source, toolchain);
    use distc_peer::offload::{CompileResponse, Refusal};
    let refused = |r: CompileResponse| match r {
        CompileResponse::Refused(why) => why,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        refused(ask(
            &["-O2", "-fplugin=/tmp/evil.so"],
            b"int x;\n",
            toolchain
        )),
        Refusal::ForbiddenOption("-fplugin=/tmp/evil.so".into())
    );
    assert_eq!(
        refused(ask(&["-B/tmp"], b"int x;\n", toolchain)),
        Refusal::ForbiddenOption("-B/tmp".into())
    );
    assert!(matches!(
        refused(ask(&["-O2"], b"#include \"/etc/passwd\"\n", toolchain)),
        Refusal::NotPreprocessed(_)
    ));
    // Directives-only input (compiles with debug info) with a directive that reads a file,
    // however spelt, is refused too.
    let ask_c = |source: &[u8]| ask_in("c", &["-g", "-O2"], source, toolchain);
    for bad in [
        &b"#define X 1\n#include \"/etc/passwd\"\n"[..],
        b"int x;\n/* */ %:include_next <stdio.h>\n",
        b"#if __has_include(</etc/passwd>)\n#endif\n",
        b"#pragma GCC dependency \"/etc/passwd\"\n",
        b"#embed \"/etc/passwd\"\n",
    ] {
        assert!(
            matches!(refused(ask_c(bad)), Refusal::NotPreprocessed(_)),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    match ask_c(b"# 0 \"<command-line>\"\n#define V 2\n# 1 \"probe.c\"\nint v = V;\n") {
        CompileResponse::Done(r) => assert_eq!(r.exit_code, 0, "{r:?}"),
        other => panic!("{other:?}"),
    }
    // A compiler no member has is never sent anywhere.
    assert_eq!(
        refused(ask(
            &["-O2"],
            b"int x;\n",
            distc_peer::toolchain::ToolchainId([7; 32])
        )),
        Refusal::NoSlot
    );
    assert!(two.log().contains("refused a job"), "{}", two.log());
}

/// Compiles with debug info go to the member too (gcc's directives-only output, compiled
/// there under the source's name at this directory), and come back byte-identical to plain
/// gcc's: `-g` levels, DWARF versions, prefix maps, `-D`, a dependency file, C++, a source
/// with macros, `assert`, `__FILE__` and pragmas, and a source outside the working
/// directory with `base_dir` (the paths made relative). `-g3` stays local.
#[test]
fn compiles_with_debug_info_are_offloaded_byte_identical() {
    let Some((sb, one, two)) = two_machines() else {
        return;
    };
    let held = hold_every_slot(&one.dir);
    let proj = sb.work.join("dbg");
    std::fs::create_dir_all(proj.join("inc")).unwrap();
    std::fs::create_dir_all(proj.join("build")).unwrap();
    std::fs::write(
        proj.join("inc/util.h"),
        "#pragma once\n#define WHERE __FILE__\n#define CHECK(c) assert(c)\n\
         static inline int here(void) { return __LINE__ + __COUNTER__; }\n",
    )
    .unwrap();
    std::fs::write(
        proj.join("m.c"),
        "#include <assert.h>\n#include <stdio.h>\n#include \"util.h\"\n\
         #define TWICE(x) ((x) * 2)\n#define SQ(x) ((x) * (x))\n#define STR(x) #x\n#define XSTR(x) STR(x)\n\
         #pragma GCC diagnostic push\n_Pragma(\"GCC diagnostic ignored \\\"-Wunused-variable\\\"\")\n\
         static int f(int a) { int r = TWICE(a) + SQ(a); CHECK(r > 0); return r + __COUNTER__; }\n\
         #pragma GCC diagnostic pop\n\
         int main(void) { printf(\"%d %s %s %d %s %s %d\\n\", f(3), __FILE__, WHERE, __LINE__, \
         __BASE_FILE__, XSTR(VAL), here()); return 0; }\n",
    )
    .unwrap();
    std::fs::write(
        proj.join("x.cc"),
        "#include <string>\n#include <vector>\n#include <cassert>\n#include \"util.h\"\n\
         #define MAKE(n) std::vector<std::string> v(n, WHERE)\n\
         int g(int n) { MAKE(n); CHECK(n >= 0); return (int)v.size() + here(); }\n",
    )
    .unwrap();
    let map = format!("-fdebug-prefix-map={}=/src", proj.display());
    let fmap = format!("-ffile-prefix-map={}/=", proj.display());
    let variants: [(&str, Vec<&str>); 6] = [
        (
            "gcc",
            vec!["-g", "-O2", "-Iinc", "-DVAL=3", &map, "-c", "m.c"],
        ),
        ("gcc", vec!["-g1", "-O1", "-Iinc", "-MD", "-c", "m.c"]),
        ("gcc", vec!["-gdwarf-4", "-O0", "-Iinc", &fmap, "-c", "m.c"]),
        (
            "gcc",
            vec!["-g2", "-Os", "-Iinc", "-DVAL=x", "-std=c99", "-c", "m.c"],
        ),
        (
            "gcc",
            vec!["-ggdb", "-gdwarf-5", "-O2", "-Iinc", "-c", "m.c"],
        ),
        ("g++", vec!["-g", "-O1", "-Iinc", &map, "-c", "x.cc"]),
    ];
    let compile = |program: &mut Command, args: &[&str], out: &str| -> Output {
        let _ = std::fs::remove_file(proj.join(out));
        let o = program
            .args(args)
            .args(["-o", out])
            .current_dir(&proj)
            .output()
            .unwrap();
        assert_ok(&o, &format!("{args:?}"));
        o
    };
    let mut expected = offloaded(&sb, &one.dir);
    for (driver, args) in &variants {
        compile(&mut in_dir(&sb, driver, &one.dir), args, "plain.o");
        let plain = std::fs::read(proj.join("plain.o")).unwrap();
        let plain_dep = std::fs::read(proj.join("plain.d")).ok();
        let mut d = distc(&sb, &one.dir);
        d.arg(driver);
        compile(&mut d, args, "via.o");
        expected += 1;
        assert_eq!(
            offloaded(&sb, &one.dir),
            expected,
            "{driver} {args:?} was not offloaded; machine two's log:\n{}",
            two.log()
        );
        assert!(
            std::fs::read(proj.join("via.o")).unwrap() == plain,
            "{driver} {args:?}: the object differs from plain {driver}'s"
        );
        if let Some(want) = plain_dep {
            // The default target names the object: only that differs.
            let got = std::fs::read_to_string(proj.join("via.d")).unwrap();
            assert_eq!(
                got.replacen("via.o", "plain.o", 1),
                String::from_utf8_lossy(&want),
                "dependency file"
            );
            let _ = std::fs::remove_file(proj.join("plain.d"));
        }
    }
    // These stay local (and are still right): macro information; a header that pops a macro
    // definition (gcc's directives-only output drops the definition restored: the member
    // would return the variable, 5, where the source returns 1); `__TIME__`.
    std::fs::write(
        proj.join("inc/stack.h"),
        "static int LEVEL = 5;\n#define LEVEL 1\n#pragma push_macro(\"LEVEL\")\n#undef LEVEL\n\
         #define LEVEL 2\n#pragma pop_macro(\"LEVEL\")\n",
    )
    .unwrap();
    std::fs::write(
        proj.join("p.c"),
        "#include \"stack.h\"\nint level(void) { return LEVEL; }\n",
    )
    .unwrap();
    std::fs::write(
        proj.join("t.c"),
        "const char *when(void) { return __TIME__; }\n",
    )
    .unwrap();
    let local_only: [&[&str]; 3] = [
        &["-g3", "-O2", "-Iinc", "-c", "m.c"],
        &["-g", "-O2", "-Iinc", "-c", "p.c"],
        &["-g", "-O2", "-c", "t.c"],
    ];
    for args in local_only {
        let mut d = distc(&sb, &one.dir);
        d.arg("gcc");
        compile(&mut d, args, "via.o");
        assert_eq!(offloaded(&sb, &one.dir), expected, "{args:?} was offloaded");
        if args.contains(&"t.c") {
            continue; // another second, another object
        }
        compile(&mut in_dir(&sb, "gcc", &one.dir), args, "plain.o");
        assert!(
            std::fs::read(proj.join("via.o")).unwrap()
                == std::fs::read(proj.join("plain.o")).unwrap(),
            "{args:?}"
        );
    }

    // base_dir, compiled as CMake does (absolute paths, from a build directory): the member
    // gets the relative names, and the object equals this machine's own compile of it.
    let build = proj.join("build");
    let abs_src = proj.join("m.c").to_string_lossy().into_owned();
    let abs_inc = format!("-I{}", proj.join("inc").display());
    let cmake = |busy: bool| -> Vec<u8> {
        let _ = std::fs::remove_file(build.join("m.o"));
        let o = distc(&sb, &one.dir)
            .arg("gcc")
            .args(["-g", "-O2", &abs_inc, &map, "-c", &abs_src, "-o", "m.o"])
            .env("DISTC_BASE_DIR", &sb.work)
            .current_dir(&build)
            .output()
            .unwrap();
        assert_ok(&o, &format!("base_dir compile (busy: {busy})"));
        std::fs::read(build.join("m.o")).unwrap()
    };
    let remote = cmake(true);
    expected += 1;
    assert_eq!(
        offloaded(&sb, &one.dir),
        expected,
        "base_dir compile not offloaded"
    );
    drop(held);
    assert_ok(
        &distc(&sb, &one.dir).arg("flush").output().unwrap(),
        "flush",
    );
    let local = cmake(false);
    assert_eq!(
        offloaded(&sb, &one.dir),
        expected,
        "compiled remotely while idle"
    );
    assert!(
        remote == local,
        "base_dir: the offloaded object differs from the local one"
    );
}
