//! End-to-end tests of the wrapper's local cache with real gcc/g++, in every key mode
//! (preprocessor, direct, depend). The oracle (a script logging each real compile) decides
//! hit or miss, not distc's own counters.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{MODES, Sandbox, assert_ok};

/// Runs `body` once per mode, each in a fresh sandbox.
fn each_mode(body: impl Fn(&Sandbox, &dyn Fn(&[&str]) -> Output, &str)) {
    for (mode, direct, depend) in MODES {
        let sb = Sandbox::new();
        let run = |args: &[&str]| -> Output {
            sb.distc()
                .env("DISTC_DIRECT_MODE", direct)
                .env("DISTC_DEPEND_MODE", depend)
                .args(args)
                .output()
                .expect("run distc")
        };
        body(&sb, &run, mode);
    }
}

/// Compiles with the real compiler directly (no distc) for a reference object.
fn reference(sb: &Sandbox, compiler: &str, args: &[&str]) -> Output {
    let out = std::process::Command::new(compiler)
        .current_dir(&sb.work)
        .args(args)
        .output()
        .unwrap();
    assert_ok(&out, "reference compile");
    out
}

const HELLO: &str =
    "#include <stdio.h>\n#include \"h.h\"\nint main(void) { printf(\"%d\\n\", X); return 0; }\n";

#[test]
fn second_compile_is_a_hit_with_identical_object() {
    each_mode(|sb, run, mode| {
        sb.write("a.c", HELLO);
        sb.write("h.h", "#define X 1\n");
        assert_ok(&run(&["gcc", "-c", "a.c", "-o", "a.o", "-O2"]), mode);
        assert_eq!(sb.compiles(), 1, "{mode}");
        let first = sb.read("a.o");
        fs::remove_file(sb.work.join("a.o")).unwrap();
        assert_ok(&run(&["gcc", "-c", "a.c", "-o", "a.o", "-O2"]), mode);
        assert_eq!(sb.compiles(), 1, "{mode}: second compile must be a hit");
        assert_eq!(sb.read("a.o"), first, "{mode}");
        reference(sb, "gcc", &["-c", "a.c", "-o", "ref.o", "-O2"]);
        assert_eq!(sb.read("ref.o"), first, "{mode}: same as a plain compile");
        // C++ too.
        sb.write(
            "b.cpp",
            "#include <string>\nstd::string f() { return \"x\"; }\n",
        );
        assert_ok(&run(&["g++", "-c", "b.cpp", "-o", "b.o"]), mode);
        assert_ok(&run(&["g++", "-c", "b.cpp", "-o", "b2.o"]), mode);
        assert_eq!(sb.compiles(), 2, "{mode}");
        assert_eq!(sb.read("b.o"), sb.read("b2.o"));
    });
}

#[test]
fn editing_an_included_header_misses() {
    each_mode(|sb, run, mode| {
        sb.write("a.c", HELLO);
        sb.write("h.h", "#define X 1\n");
        assert_ok(&run(&["gcc", "-c", "a.c"]), mode);
        // Same size, immediately after: stat alone must not be trusted.
        sb.write("h.h", "#define X 2\n");
        assert_ok(&run(&["gcc", "-c", "a.c"]), mode);
        assert_eq!(sb.compiles(), 2, "{mode}");
        let obj = sb.read("a.o");
        reference(sb, "gcc", &["-c", "a.c", "-o", "ref.o"]);
        assert_eq!(obj, sb.read("ref.o"), "{mode}");
        // Back to the first content: a hit again.
        sb.write("h.h", "#define X 1\n");
        assert_ok(&run(&["gcc", "-c", "a.c"]), mode);
        assert_eq!(sb.compiles(), 2, "{mode}");
    });
}

#[test]
fn new_header_shadowing_another_misses() {
    each_mode(|sb, run, mode| {
        sb.write("a.c", "#include \"h.h\"\nint x = X;\n");
        sb.write("inc2/h.h", "#define X 2\n");
        fs::create_dir_all(sb.work.join("inc1")).unwrap();
        let args = ["gcc", "-c", "a.c", "-Iinc1", "-Iinc2"];
        assert_ok(&run(&args), mode);
        assert_ok(&run(&args), mode);
        assert_eq!(sb.compiles(), 1, "{mode}");
        sb.write("inc1/h.h", "#define X 1\n");
        assert_ok(&run(&args), mode);
        assert_eq!(sb.compiles(), 2, "{mode}: shadowing header must miss");
        let obj = sb.read("a.o");
        reference(sb, "gcc", &["-c", "a.c", "-Iinc1", "-Iinc2", "-o", "ref.o"]);
        assert_eq!(obj, sb.read("ref.o"), "{mode}");
        // A header next to the source shadows both -I directories for "..." includes.
        sb.write("h.h", "#define X 3\n");
        assert_ok(&run(&args), mode);
        assert_eq!(
            sb.compiles(),
            3,
            "{mode}: header beside the source must miss"
        );
    });
}

#[test]
fn define_and_optimisation_changes_miss() {
    each_mode(|sb, run, mode| {
        sb.write("a.c", "int f(void) { return V; }\n");
        assert_ok(&run(&["gcc", "-c", "a.c", "-DV=1"]), mode);
        assert_ok(&run(&["gcc", "-c", "a.c", "-DV=2"]), mode);
        assert_eq!(sb.compiles(), 2, "{mode}");
        assert_ok(&run(&["gcc", "-c", "a.c", "-DV=2", "-O2"]), mode);
        assert_eq!(sb.compiles(), 3, "{mode}");
        assert_ok(&run(&["gcc", "-c", "a.c", "-DV=2", "-O1"]), mode);
        assert_eq!(sb.compiles(), 4, "{mode}");
        assert_ok(&run(&["gcc", "-c", "a.c", "-DV=2", "-O1"]), mode);
        assert_eq!(sb.compiles(), 4, "{mode}");
        assert_ok(
            &run(&["gcc", "-c", "a.c", "-DV=2", "-O1", "-UV", "-DV=3"]),
            mode,
        );
        assert_eq!(sb.compiles(), 5, "{mode}");
    });
}

#[test]
fn a_changed_compiler_misses() {
    each_mode(|sb, run, mode| {
        sb.write("a.c", "int x;\n");
        assert_ok(&run(&["gcc", "-c", "a.c"]), mode);
        // A different compiler binary under the same path (here: the script changes).
        let script = sb.bin.join("gcc");
        let mut text = fs::read_to_string(&script).unwrap();
        text.push_str("# another build of the compiler\n");
        fs::write(&script, text).unwrap();
        assert_ok(&run(&["gcc", "-c", "a.c"]), mode);
        assert_eq!(sb.compiles(), 2, "{mode}");
        assert_ok(&run(&["gcc", "-c", "a.c"]), mode);
        assert_eq!(sb.compiles(), 2, "{mode}");
    });
}

#[test]
fn time_macros_never_give_a_stale_hit() {
    each_mode(|sb, run, mode| {
        sb.write(
            "t.c",
            "const char *t = __TIME__;\n#include \"d.h\"\nconst char *d = D;\n",
        );
        sb.write("d.h", "#define D __DATE__\n");
        assert_ok(&run(&["gcc", "-c", "t.c"]), mode);
        let first = sb.read("t.o");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_ok(&run(&["gcc", "-c", "t.c"]), mode);
        assert_eq!(
            sb.compiles(),
            2,
            "{mode}: a __TIME__ source must be recompiled"
        );
        assert_ne!(sb.read("t.o"), first, "{mode}");
    });
}

#[test]
fn warnings_and_exit_status_are_replayed() {
    each_mode(|sb, run, mode| {
        sb.write(
            "w.c",
            "int f(void) { int unused; return 0; }\n#warning hello from w.c\n",
        );
        let a = run(&["gcc", "-Wall", "-c", "w.c"]);
        let b = run(&["gcc", "-Wall", "-c", "w.c"]);
        assert_ok(&a, mode);
        assert_ok(&b, mode);
        assert_eq!(sb.compiles(), 1, "{mode}");
        assert!(
            String::from_utf8_lossy(&a.stderr).contains("unused"),
            "{mode}"
        );
        assert!(String::from_utf8_lossy(&a.stderr).contains("hello from w.c"));
        assert_eq!(a.stderr, b.stderr, "{mode}: stderr replayed byte for byte");
        assert_eq!(a.stdout, b.stdout);
    });
}

#[test]
fn failing_compiles_fail_the_same_way_every_time() {
    each_mode(|sb, run, mode| {
        sb.write("bad.c", "int f(void) { return nope; }\n");
        let outs: Vec<Output> = (0..3).map(|_| run(&["gcc", "-c", "bad.c"])).collect();
        for o in &outs {
            assert!(!o.status.success(), "{mode}: failure must stay a failure");
            assert_eq!(o.status.code(), outs[0].status.code());
            assert_eq!(o.stderr, outs[0].stderr, "{mode}");
            assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));
        }
        assert!(
            !sb.work.join("bad.o").exists(),
            "{mode}: no object from a failure"
        );
        // Fixing it compiles; breaking it again fails again (never a stale success).
        sb.write("bad.c", "int f(void) { return 0; }\n");
        assert_ok(&run(&["gcc", "-c", "bad.c"]), mode);
        sb.write("bad.c", "int f(void) { return nope; }\n");
        assert!(!run(&["gcc", "-c", "bad.c"]).status.success(), "{mode}");
    });
}

#[test]
fn dependency_files_are_correct_on_a_hit() {
    each_mode(|sb, run, mode| {
        sb.write("a.c", HELLO);
        sb.write("h.h", "#define X 1\n");
        fs::create_dir_all(sb.work.join("obj")).unwrap();
        for (i, flags) in [
            vec!["-MD"],
            vec!["-MMD", "-MF", "obj/deps.d"],
            vec!["-MD", "-MF", "obj/t.d", "-MT", "custom", "-MP"],
        ]
        .iter()
        .enumerate()
        {
            let mut args = vec!["gcc", "-c", "a.c", "-o", "obj/a.o"];
            args.extend(flags.iter().copied());
            let dep = flags
                .iter()
                .position(|f| *f == "-MF")
                .map_or("obj/a.d".to_string(), |p| flags[p + 1].to_string());
            assert_ok(&run(&args), mode);
            let first = sb.read(&dep);
            fs::remove_file(sb.work.join(&dep)).unwrap();
            fs::remove_file(sb.work.join("obj/a.o")).unwrap();
            assert_ok(&run(&args), mode);
            assert_eq!(sb.compiles(), i + 1, "{mode} {flags:?}: hit");
            assert_eq!(sb.read(&dep), first, "{mode} {flags:?}");
            assert!(String::from_utf8_lossy(&first).contains("h.h"));
        }
        // The object path is the default target: another -o gives another .d.
        assert_ok(
            &run(&["gcc", "-c", "a.c", "-o", "obj/other.o", "-MD"]),
            mode,
        );
        let d = String::from_utf8(sb.read("obj/other.d")).unwrap();
        assert!(d.starts_with("obj/other.o:"), "{mode}: {d}");
    });
}

#[test]
fn cpath_changes_miss() {
    each_mode(|sb, _run, mode| {
        sb.write("a.c", "#include \"h.h\"\nint x = X;\n");
        sb.write("i1/h.h", "#define X 1\n");
        sb.write("i2/h.h", "#define X 2\n");
        let with = |cpath: &str| {
            let (_, direct, depend) = MODES.iter().find(|m| m.0 == mode).unwrap();
            sb.distc()
                .env("DISTC_DIRECT_MODE", direct)
                .env("DISTC_DEPEND_MODE", depend)
                .env("CPATH", sb.work.join(cpath))
                .args(["gcc", "-c", "a.c"])
                .output()
                .unwrap()
        };
        assert_ok(&with("i1"), mode);
        assert_ok(&with("i2"), mode);
        assert_eq!(sb.compiles(), 2, "{mode}");
        assert_ok(&with("i2"), mode);
        assert_eq!(sb.compiles(), 2, "{mode}");
    });
}

#[test]
fn eight_parallel_compiles_of_one_file_are_all_correct() {
    each_mode(|sb, _run, mode| {
        sb.write("a.c", HELLO);
        sb.write("h.h", "#define X 1\n");
        reference(sb, "gcc", &["-c", "a.c", "-o", "ref.o"]);
        let (_, direct, depend) = MODES.iter().find(|m| m.0 == mode).unwrap();
        let children: Vec<_> = (0..8)
            .map(|i| {
                sb.distc()
                    .env("DISTC_DIRECT_MODE", direct)
                    .env("DISTC_DEPEND_MODE", depend)
                    .args(["gcc", "-c", "a.c", "-o", &format!("p{i}.o")])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert_ok(&out, mode);
        }
        let r = sb.read("ref.o");
        for i in 0..8 {
            assert_eq!(sb.read(&format!("p{i}.o")), r, "{mode}: p{i}.o");
        }
        let n = sb.compiles();
        assert!((1..=8).contains(&n), "{mode}: {n}");
    });
}

fn corrupt_all(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            corrupt_all(&p);
        } else if p.file_name().is_some_and(|n| n != "peer.sock") {
            let len = fs::metadata(&p).unwrap().len();
            let junk: Vec<u8> = (0..len.max(7)).map(|i| (i * 7 + 3) as u8).collect();
            fs::write(&p, junk).unwrap();
        }
    }
}

#[test]
fn every_cache_file_corrupted_still_gives_correct_objects() {
    each_mode(|sb, run, mode| {
        sb.write("a.c", HELLO);
        sb.write("h.h", "#define X 1\n");
        reference(
            sb,
            "gcc",
            &["-c", "a.c", "-o", "ref.o", "-MD", "-MF", "ref.d"],
        );
        assert_ok(&run(&["gcc", "-c", "a.c", "-o", "a.o", "-MD"]), mode);
        corrupt_all(&sb.distc_dir);
        fs::remove_file(sb.work.join("a.o")).unwrap();
        let out = run(&["gcc", "-c", "a.c", "-o", "a.o", "-MD"]);
        assert_ok(&out, mode);
        assert_eq!(sb.read("a.o"), sb.read("ref.o"), "{mode}");
        // Truncated entries too.
        corrupt_all(&sb.distc_dir);
        assert_ok(&run(&["gcc", "-c", "a.c", "-o", "a.o", "-MD"]), mode);
        assert_eq!(sb.read("a.o"), sb.read("ref.o"), "{mode}");
        // And the cache recovers: the next compile is a hit again.
        let before = sb.compiles();
        assert_ok(&run(&["gcc", "-c", "a.c", "-o", "a.o", "-MD"]), mode);
        assert_eq!(sb.compiles(), before, "{mode}: cache recovered");
    });
}

#[test]
fn unusable_cache_dir_compiles_with_one_warning() {
    let sb = Sandbox::new();
    sb.write("a.c", "int x;\n");
    // A regular file where the cache directory should be (permission bits do not stop root).
    fs::write(&sb.distc_dir, b"not a directory").unwrap();
    let out = sb.distc().args(["gcc", "-c", "a.c"]).output().unwrap();
    assert_ok(&out, "compile with an unusable cache");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(sb.work.join("a.o").exists());
}

/// Every spelling `config/distc.toml` documents means the same in the wrapper as in the CLI;
/// a value the parser does not know warns, keeps the default (caching on) and never disables
/// the cache, while `distc stats` refuses it.
#[test]
fn distc_disable_spellings_mean_one_thing_and_a_bad_one_keeps_caching() {
    let spellings: &[(&str, bool)] = &[
        ("1", true),
        ("true", true),
        ("yes", true),
        ("on", true),
        ("TRUE", true),
        (" On ", true),
        ("0", false),
        ("false", false),
        ("no", false),
        ("off", false),
        ("OFF", false),
        ("", false),
    ];
    for &(value, disabled) in spellings {
        let sb = Sandbox::new();
        sb.write("a.c", "int x;\n");
        for _ in 0..2 {
            let out = sb
                .distc()
                .env("DISTC_DISABLE", value)
                .args(["gcc", "-c", "a.c"])
                .output()
                .unwrap();
            assert_ok(&out, value);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("warning"), "{value:?}: {err}");
        }
        let expected = if disabled { 2 } else { 1 };
        assert_eq!(sb.compiles(), expected, "DISTC_DISABLE={value:?}");
        assert_eq!(
            sb.distc_dir.join("store").exists(),
            !disabled,
            "DISTC_DISABLE={value:?}"
        );
        let stats = sb
            .distc()
            .env("DISTC_DISABLE", value)
            .arg("stats")
            .output()
            .unwrap();
        assert_ok(&stats, &format!("stats with DISTC_DISABLE={value:?}"));
    }

    let sb = Sandbox::new();
    sb.write("a.c", "int x;\n");
    for _ in 0..2 {
        let out = sb
            .distc()
            .env("DISTC_DISABLE", "maybe")
            .args(["gcc", "-c", "a.c"])
            .output()
            .unwrap();
        assert_ok(&out, "DISTC_DISABLE=maybe");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("warning").count(), 1, "{err}");
        assert!(
            err.contains("DISTC_DISABLE") && err.contains("\"maybe\"") && err.contains("default"),
            "{err}"
        );
    }
    assert_eq!(sb.compiles(), 1, "a bad value must not turn caching off");
    let stats = sb
        .distc()
        .env("DISTC_DISABLE", "maybe")
        .arg("stats")
        .output()
        .unwrap();
    assert!(!stats.status.success(), "stats accepts DISTC_DISABLE=maybe");
    let err = String::from_utf8_lossy(&stats.stderr);
    assert!(
        err.contains("DISTC_DISABLE") && err.contains("true or false"),
        "{err}"
    );

    // The same in a config file: a bad size warns and keeps the default.
    let cfg = sb.root.path().join("bad.toml");
    fs::write(&cfg, "max_size = \"lots\"\ndisable = \"sometimes\"\n").unwrap();
    sb.write("b.c", "int y;\n");
    for _ in 0..2 {
        let out = sb
            .distc()
            .env("DISTC_CONFIG", &cfg)
            .args(["gcc", "-c", "b.c"])
            .output()
            .unwrap();
        assert_ok(&out, "bad config file");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("max_size") && err.contains("disable"), "{err}");
    }
    assert_eq!(sb.compiles(), 2, "b.c compiled once, then a hit");
}

/// Real compiles given the response file (the oracle logs `@args.rsp`, not its contents).
fn rsp_compiles(sb: &Sandbox) -> usize {
    sb.invocations()
        .iter()
        .filter(|l| l.contains("@args.rsp"))
        .count()
}

#[test]
fn response_files_are_expanded() {
    each_mode(|sb, run, mode| {
        sb.write("a.c", "int x = V;\n");
        sb.write("args.rsp", "-c a.c\n-o 'out.o' -DV=7\n");
        assert_ok(&run(&["gcc", "@args.rsp"]), mode);
        assert_ok(&run(&["gcc", "@args.rsp"]), mode);
        assert_eq!(rsp_compiles(sb), 1, "{mode}");
        reference(sb, "gcc", &["-c", "a.c", "-o", "ref.o", "-DV=7"]);
        assert_eq!(sb.read("out.o"), sb.read("ref.o"));
        // Changing the file's contents changes the key.
        sb.write("args.rsp", "-c a.c\n-o 'out.o' -DV=8\n");
        assert_ok(&run(&["gcc", "@args.rsp"]), mode);
        assert_eq!(rsp_compiles(sb), 2, "{mode}");
    });
}

#[test]
fn uncacheable_reasons_are_counted() {
    let sb = Sandbox::new();
    sb.write("a.c", "int main(void) { return 0; }\n");
    sb.write("b.c", "int y;\n");
    let run = |args: &[&str]| sb.distc().args(args).output().unwrap();
    assert_ok(&run(&["gcc", "a.c", "-o", "prog"]), "link");
    assert_ok(&run(&["gcc", "-E", "a.c"]), "-E");
    assert_ok(&run(&["gcc", "-c", "a.c", "b.c"]), "two sources");
    assert_ok(&run(&["gcc", "-M", "a.c"]), "-M");
    assert!(sb.work.join("prog").exists());
    let s = distc::stats::Stats::read_all(&sb.distc_dir).unwrap();
    assert_eq!(s.uncacheable.get("linking"), Some(&1), "{s:?}");
    assert_eq!(s.uncacheable.get("preprocess-only"), Some(&1), "{s:?}");
    assert_eq!(s.uncacheable.get("multiple-sources"), Some(&1), "{s:?}");
    assert_eq!(s.uncacheable.get("dependencies-only"), Some(&1), "{s:?}");
    assert_eq!(s.hits + s.misses, 0);
}

/// A source large enough for its digest to be memoised by stat (an amalgamation): a hit
/// reads no source, and an edit of the same size, made long after the memo, still misses
/// with the right object.
#[test]
fn a_large_source_edited_at_the_same_size_misses() {
    each_mode(|sb, run, mode| {
        let big = |x: u32| {
            let mut s = String::from("#include <stdio.h>\n");
            for i in 0..12_000 {
                s.push_str(&format!("int v{i:05} = {:05};\n", i + 10_000));
            }
            s.push_str(&format!(
                "int main(void) {{ printf(\"%d\\n\", {x}); return 0; }}\n"
            ));
            s
        };
        let age = |rel: &str| {
            // Old enough for its stat to be trusted, as a checked-out file is.
            let out = std::process::Command::new("touch")
                .args(["-d", "-1 minute"])
                .arg(sb.work.join(rel))
                .output()
                .expect("run touch");
            assert_ok(&out, "touch");
        };
        sb.write("big.c", big(1));
        age("big.c");
        let args = ["gcc", "-c", "big.c", "-o", "big.o"];
        assert_ok(&run(&args), mode);
        assert_ok(&run(&args), mode);
        assert_eq!(sb.compiles(), 1, "{mode}: second compile must be a hit");
        let first = sb.read("big.o");
        sb.write("big.c", big(2));
        age("big.c");
        assert_ok(&run(&args), mode);
        assert_eq!(sb.compiles(), 2, "{mode}: an edited source must miss");
        reference(sb, "gcc", &["-c", "big.c", "-o", "ref.o"]);
        assert_eq!(sb.read("big.o"), sb.read("ref.o"), "{mode}");
        assert_ne!(sb.read("big.o"), first, "{mode}");
        assert_ok(&run(&args), mode);
        assert_eq!(sb.compiles(), 2, "{mode}: unchanged again, a hit");
    });
}

/// make rebuilds an object after a header was touched without changing; the hit writes the
/// same bytes. The object must then be newer than the header, or make rebuilds it forever.
#[test]
fn a_hit_onto_the_same_object_leaves_make_up_to_date() {
    use std::time::{Duration, SystemTime};
    if !common::have_tool("make") {
        eprintln!("skipped: make not installed");
        return;
    }
    let sb = Sandbox::new();
    sb.write("a.c", HELLO);
    sb.write("h.h", "#define X 1\n");
    sb.write(
        "Makefile",
        format!(
            "a.o: a.c h.h\n\t{} gcc -O2 -c a.c -o a.o\n",
            common::distc_bin().display()
        ),
    );
    let make = |args: &[&str]| sb.command("make").args(args).output().expect("run make");
    assert_ok(&make(&[]), "first make");
    assert_eq!(sb.compiles(), 1);
    let first = sb.read("a.o");
    let set_mtime = |rel: &str, ago: u64| {
        fs::File::options()
            .write(true)
            .open(sb.work.join(rel))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(ago))
            .unwrap();
    };
    for round in 0..2 {
        // The header "changes" after the object was built: make must rebuild.
        set_mtime("a.o", 100);
        set_mtime("h.h", 50);
        assert_eq!(
            make(&["-q"]).status.code(),
            Some(1),
            "round {round}: out of date"
        );
        assert_ok(&make(&[]), "make after touching the header");
        assert_eq!(sb.compiles(), 1, "round {round}: served from the cache");
        assert_eq!(sb.read("a.o"), first, "round {round}");
        assert_eq!(
            make(&["-q"]).status.code(),
            Some(0),
            "round {round}: up to date"
        );
    }
}
