//! Regression tests for ccache-style usage found in hands-on QA, with real gcc. The oracle
//! (a script logging each real compile) decides hit or miss; outputs are compared with what a
//! plain compile writes.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{Sandbox, assert_ok};

/// The key modes: (name, DISTC_DIRECT_MODE, DISTC_DEPEND_MODE).
const MODES: &[(&str, &str, &str)] = &[
    ("preprocessor", "0", "0"),
    ("direct", "1", "0"),
    ("depend", "1", "1"),
];

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, text).unwrap();
}

/// `distc ARGS…` in `cwd` with the given key mode.
fn run_in(sb: &Sandbox, cwd: &Path, mode: &(&str, &str, &str), args: &[&str]) -> Output {
    sb.distc()
        .current_dir(cwd)
        .env("DISTC_DIRECT_MODE", mode.1)
        .env("DISTC_DEPEND_MODE", mode.2)
        .args(args)
        .output()
        .expect("run distc")
}

/// A plain compile (no distc) in `cwd`.
fn plain(cwd: &Path, compiler: &str, args: &[&str]) {
    let out = std::process::Command::new(compiler)
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run compiler");
    assert_ok(&out, "plain compile");
}

#[test]
fn debug_prefix_map_that_keeps_part_of_the_cwd_misses_in_another_dir() {
    // `-fdebug-prefix-map=/src=.` run in /src/p1 records `./p1` as the compile directory:
    // a compile in /src/p2 must not get p1's object.
    for mode in MODES {
        let sb = Sandbox::new();
        let map = format!("-fdebug-prefix-map={}=.", sb.work.display());
        let args = ["-c", "a.c", "-g", map.as_str(), "-o", "a.o"];
        for p in ["p1", "p2"] {
            let dir = sb.work.join(p);
            write(&dir, "a.c", "int f(int x) { return x + 1; }\n");
            assert_ok(
                &run_in(
                    &sb,
                    &dir,
                    mode,
                    &["gcc"].iter().chain(&args).copied().collect::<Vec<_>>(),
                ),
                mode.0,
            );
            let mut ref_args = args.to_vec();
            ref_args[5] = "ref.o";
            plain(&dir, "gcc", &ref_args);
            assert_eq!(
                fs::read(dir.join("a.o")).unwrap(),
                fs::read(dir.join("ref.o")).unwrap(),
                "{}: object in {p} differs from a plain compile there",
                mode.0
            );
        }
        assert_eq!(sb.compiles(), 2, "{}: {:?}", mode.0, sb.invocations());
        // The same directory again is a hit.
        let dir = sb.work.join("p2");
        fs::remove_file(dir.join("a.o")).unwrap();
        let all: Vec<&str> = ["gcc"].iter().chain(&args).copied().collect();
        assert_ok(&run_in(&sb, &dir, mode, &all), mode.0);
        assert_eq!(sb.compiles(), 2, "{}: same dir must hit", mode.0);
        assert_eq!(
            fs::read(dir.join("a.o")).unwrap(),
            fs::read(dir.join("ref.o")).unwrap()
        );
    }
}

#[test]
fn damaged_statistics_files_do_not_break_stats_or_counting() {
    let sb = Sandbox::new();
    write(&sb.work, "a.c", "int x;\n");
    let mode = &MODES[2];
    assert_ok(&run_in(&sb, &sb.work, mode, &["gcc", "-c", "a.c"]), "miss");
    let stats_dir = sb.distc_dir.join("stats");
    for e in fs::read_dir(&stats_dir).unwrap() {
        fs::write(e.unwrap().path(), b"\xff\xfe\x00garbage\nmisses x\n").unwrap();
    }
    // Every shard, so the next wrapper's counter lands in a damaged one.
    for i in 0..16 {
        fs::write(stats_dir.join(format!("{i:x}")), b"\xff\xfe\x00\n").unwrap();
    }
    assert_ok(&run_in(&sb, &sb.work, mode, &["gcc", "-c", "a.c"]), "hit");
    let out = sb.distc().args(["stats", "--json"]).output().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&assert_ok(&out, "distc stats --json")).expect("stats JSON");
    assert_eq!(json["hits"], 1, "{json}");
    assert_eq!(json["misses"], 0, "{json}");
    let out = sb.distc().args(["stats", "--zero"]).output().unwrap();
    assert_ok(&out, "distc stats --zero");
}

#[test]
fn help_of_build_commands_describes_rust_as_supported() {
    let sb = Sandbox::new();
    for cmd in ["build", "build-project"] {
        let out = sb.distc().args([cmd, "--help"]).output().unwrap();
        let help = assert_ok(&out, "distc --help");
        assert!(!help.contains("not supported"), "{cmd}: {help}");
        assert!(
            help.contains("Rust") || help.contains("Cargo.toml"),
            "{cmd}: {help}"
        );
    }
}

#[test]
fn output_to_a_device_is_passed_through_never_replaced() {
    // `-o /dev/null` is common in configure checks; a symlink to it stands in for it here, so
    // a regression replaces the link, never the real device.
    for mode in MODES {
        let sb = Sandbox::new();
        write(&sb.work, "a.c", "int x;\n");
        std::os::unix::fs::symlink("/dev/null", sb.work.join("null.o")).unwrap();
        std::os::unix::fs::symlink("/dev/null", sb.work.join("null.d")).unwrap();
        for args in [
            &["gcc", "-c", "a.c", "-o", "null.o"][..],
            &["gcc", "-c", "a.c", "-o", "a.o", "-MD", "-MF", "null.d"][..],
        ] {
            for _ in 0..2 {
                assert_ok(&run_in(&sb, &sb.work, mode, args), mode.0);
            }
        }
        for link in ["null.o", "null.d"] {
            let md = fs::symlink_metadata(sb.work.join(link)).unwrap();
            assert!(
                md.file_type().is_symlink(),
                "{}: {link} was replaced",
                mode.0
            );
        }
        assert_eq!(sb.compiles(), 4, "{}: never cached", mode.0);
        let s = distc::stats::Stats::read_all(&sb.distc_dir).unwrap();
        assert_eq!(s.uncacheable.get("output-not-a-file"), Some(&4), "{s:?}");
    }
}

#[test]
fn header_shadowed_in_an_earlier_glued_isystem_dir_misses() {
    for mode in MODES {
        let sb = Sandbox::new();
        write(&sb.work, "a.c", "#include <h.h>\nint v = H;\n");
        write(&sb.work, "second/h.h", "#define H 1\n");
        fs::create_dir_all(sb.work.join("first")).unwrap();
        let args = [
            "gcc",
            "-c",
            "a.c",
            "-isystemfirst",
            "-isystemsecond",
            "-o",
            "a.o",
        ];
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_eq!(sb.compiles(), 1, "{}: second compile hits", mode.0);
        write(&sb.work, "first/h.h", "#define H 2\n");
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_eq!(sb.compiles(), 2, "{}: the new header must miss", mode.0);
        let mut ref_args = args[1..5].to_vec();
        ref_args.extend(["-o", "ref.o"]);
        plain(&sb.work, "gcc", &ref_args);
        assert_eq!(
            fs::read(sb.work.join("a.o")).unwrap(),
            fs::read(sb.work.join("ref.o")).unwrap()
        );
    }
}

#[test]
fn assembler_listing_file_is_written_every_time() {
    for mode in MODES {
        let sb = Sandbox::new();
        write(&sb.work, "a.c", "int f(int x) { return x * 3; }\n");
        let args = ["gcc", "-c", "a.c", "-Wa,-adhln=a.lst", "-o", "a.o"];
        for _ in 0..2 {
            let _ = fs::remove_file(sb.work.join("a.lst"));
            assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
            assert!(sb.work.join("a.lst").is_file(), "{}: no listing", mode.0);
        }
        // A plain assembler option stays cacheable.
        let args = ["gcc", "-c", "a.c", "-Wa,--noexecstack", "-o", "b.o"];
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_eq!(sb.compiles(), 3, "{}: {:?}", mode.0, sb.invocations());
    }
}

#[test]
fn new_header_shadowing_a_system_header_misses() {
    for mode in MODES {
        let sb = Sandbox::new();
        write(
            &sb.work,
            "m.c",
            "#include \"h.h\"\n#include <stdio.h>\nint v = H + EOF;\n",
        );
        write(&sb.work, "b/h.h", "#define H 1\n");
        fs::create_dir_all(sb.work.join("a")).unwrap();
        let args = ["gcc", "-c", "m.c", "-Ia", "-Ib", "-o", "m.o"];
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_eq!(sb.compiles(), 1, "{}: second compile hits", mode.0);
        // An -I directory now holds a stdio.h: it wins over the system one.
        write(&sb.work, "a/stdio.h", "#define EOF 3\n");
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_eq!(
            sb.compiles(),
            2,
            "{}: the shadowing header must miss",
            mode.0
        );
        plain(&sb.work, "gcc", &["-c", "m.c", "-Ia", "-Ib", "-o", "ref.o"]);
        assert_eq!(
            fs::read(sb.work.join("m.o")).unwrap(),
            fs::read(sb.work.join("ref.o")).unwrap(),
            "{}",
            mode.0
        );
        // Gone again: the first result is right again. Then in the other -I directory.
        fs::remove_file(sb.work.join("a/stdio.h")).unwrap();
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_eq!(sb.compiles(), 2, "{}: back to the first state", mode.0);
        write(&sb.work, "b/stdio.h", "#define EOF 4\n");
        assert_ok(&run_in(&sb, &sb.work, mode, &args), mode.0);
        assert_eq!(sb.compiles(), 3, "{}: {:?}", mode.0, sb.invocations());
    }
}

#[test]
fn diagnostics_are_coloured_on_a_terminal_and_plain_elsewhere() {
    if !common::have_tool("script") {
        println!("SKIP: script (util-linux) not installed; no pseudo-terminal for this test");
        return;
    }
    for mode in MODES {
        let sb = Sandbox::new();
        write(&sb.work, "w.c", "int f(void) { int unused; return 0; }\n");
        let line = format!("{} gcc -Wall -c w.c -o w.o", common::distc_bin().display());
        // On a (pseudo) terminal: coloured, as gcc itself would show it there.
        let tty = sb
            .command("script")
            .args(["-qec", &line, "/dev/null"])
            .env("DISTC_DIRECT_MODE", mode.1)
            .env("DISTC_DEPEND_MODE", mode.2)
            .env("TERM", "xterm")
            .output()
            .expect("run script");
        let shown = assert_ok(&tty, mode.0);
        assert!(shown.contains("\x1b["), "{}: no colour: {shown:?}", mode.0);
        assert_eq!(sb.compiles(), 1, "{}", mode.0);
        // Replayed into a pipe: a hit, and no colour sequences.
        let args = ["gcc", "-Wall", "-c", "w.c", "-o", "w.o"];
        let piped = run_in(&sb, &sb.work, mode, &args);
        assert_ok(&piped, mode.0);
        assert_eq!(sb.compiles(), 1, "{}: a hit", mode.0);
        let plain_err = std::process::Command::new("gcc")
            .current_dir(&sb.work)
            .args(&args[1..4])
            .args(["-o", "ref.o"])
            .output()
            .expect("run gcc")
            .stderr;
        assert!(!piped.stderr.contains(&0x1b), "{}", mode.0);
        assert_eq!(
            String::from_utf8_lossy(&piped.stderr),
            String::from_utf8_lossy(&plain_err),
            "{}",
            mode.0
        );
        // An explicit choice is the user's: kept in the key and replayed as is.
        let args = ["gcc", "-Wall", "-fdiagnostics-color=always", "-c", "w.c"];
        let a = run_in(&sb, &sb.work, mode, &args);
        let b = run_in(&sb, &sb.work, mode, &args);
        assert_eq!(sb.compiles(), 2, "{}", mode.0);
        assert!(
            a.stderr.contains(&0x1b) && a.stderr == b.stderr,
            "{}",
            mode.0
        );
    }
}

/// The first miss in a fresh cache probes the compiler's include search list (`-E -v -`)
/// beside its compile, not after it: a compiler that makes each of the two wait for the
/// other to start (up to 30 s, then it fails) succeeds only when they run at the same time.
/// In direct and depend mode the second compile is then a hit, and the probe ran once.
#[test]
fn the_first_include_list_probe_runs_beside_the_compile() {
    for mode in &MODES[1..] {
        let sb = Sandbox::new();
        let real = common::which("gcc").expect("gcc on PATH");
        let marks = sb.root.path().join("marks");
        fs::create_dir_all(&marks).unwrap();
        let script = format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"gcc $*\" >> '{log}'\n\
             wait_for() {{ n=0; while [ ! -e '{m}'/\"$1\" ]; do n=$((n+1)); [ $n -gt 3000 ] && exit 9; sleep 0.01; done; }}\n\
             case \" $* \" in\n\
             *' -v '*) touch '{m}/probe'; wait_for compile ;;\n\
             *' -c '*) touch '{m}/compile'; wait_for probe ;;\n\
             esac\n\
             exec '{real}' \"$@\"\n",
            log = sb.log.display(),
            m = marks.display(),
            real = real.display(),
        );
        let gcc = sb.bin.join("gcc");
        fs::write(&gcc, script).unwrap();
        write(&sb.work, "a.c", "int a(void) { return 1; }\n");
        for round in 0..2 {
            let out = run_in(&sb, &sb.work, mode, &["gcc", "-c", "a.c", "-o", "a.o"]);
            assert_ok(&out, &format!("{} round {round}", mode.0));
            assert!(
                out.stderr.is_empty(),
                "{}: {}",
                mode.0,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(sb.compiles(), 1, "{}: the second compile is a hit", mode.0);
        let probes = sb
            .invocations()
            .iter()
            .filter(|l| l.split_whitespace().any(|w| w == "-v"))
            .count();
        assert_eq!(probes, 1, "{}: {:?}", mode.0, sb.invocations());
    }
}
