//! How the wrapper is invoked: masquerading symlinks (without recursion), compiler paths, and
//! `base_dir` sharing hits between two checkouts.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::process::Command;

use common::{Sandbox, assert_ok, distc_bin};

/// A command that runs `program` found via `path` (not the sandbox's default PATH).
fn with_path(sb: &Sandbox, program: &str, path: &std::ffi::OsStr) -> Command {
    let mut c = sb.command(program);
    c.env("PATH", path);
    c
}

#[test]
fn masquerading_symlink_runs_the_next_compiler_without_recursion() {
    let sb = Sandbox::new();
    fs::write(sb.work.join("a.c"), "int x;\n").unwrap();
    // links/gcc -> distc, and a chain: chain/gcc -> hop/cc-link -> distc.
    let links = sb.root.path().join("links");
    let chain = sb.root.path().join("chain");
    let hop = sb.root.path().join("hop");
    for d in [&links, &chain, &hop] {
        fs::create_dir_all(d).unwrap();
    }
    symlink(distc_bin(), links.join("gcc")).unwrap();
    symlink(distc_bin(), hop.join("cc-link")).unwrap();
    symlink(hop.join("cc-link"), chain.join("gcc")).unwrap();
    for first in [&links, &chain] {
        // Our links first (twice, like a misconfigured PATH), then the oracle, then the system.
        let mut dirs = vec![first.clone(), links.clone(), first.clone()];
        dirs.extend(std::env::split_paths(&sb.path_env()));
        let path = std::env::join_paths(dirs).unwrap();
        for _ in 0..2 {
            let out = with_path(&sb, "gcc", &path)
                .args(["-c", "a.c", "-o", "a.o"])
                .output()
                .unwrap();
            assert_ok(&out, "masquerading gcc");
        }
    }
    // The oracle ran exactly once: one miss, then hits (a recursion would hang or fail).
    assert_eq!(sb.compiles(), 1);
    assert!(sb.work.join("a.o").exists());
}

#[test]
fn compiler_given_by_path_and_by_name() {
    let sb = Sandbox::new();
    fs::write(sb.work.join("a.c"), "int x;\n").unwrap();
    let oracle = sb.bin.join("gcc");
    let by_path = sb
        .distc()
        .arg(&oracle)
        .args(["-c", "a.c", "-o", "p.o"])
        .output()
        .unwrap();
    assert_ok(&by_path, "distc /path/to/gcc");
    let by_name = sb
        .distc()
        .args(["gcc", "-c", "a.c", "-o", "n.o"])
        .output()
        .unwrap();
    assert_ok(&by_name, "distc gcc");
    assert_eq!(sb.compiles(), 1, "same compiler, same key");
    // A path that is distc itself (a launcher pointing at a masquerade link) is not run.
    let links = sb.root.path().join("links");
    fs::create_dir_all(&links).unwrap();
    symlink(distc_bin(), links.join("gcc")).unwrap();
    let out = sb
        .distc()
        .arg(links.join("gcc"))
        .args(["-c", "a.c", "-o", "s.o"])
        .output()
        .unwrap();
    assert_ok(&out, "distc /path/to/masquerade-link");
    assert!(sb.work.join("s.o").exists());
}

#[test]
fn base_dir_lets_two_checkouts_share_hits() {
    for (direct, depend) in [("0", "0"), ("1", "0"), ("1", "1")] {
        base_dir_case(direct, depend);
    }
}

fn base_dir_case(direct: &str, depend: &str) {
    let sb = Sandbox::new();
    let base = sb.work.canonicalize().unwrap();
    for checkout in ["one", "two"] {
        let root = base.join(checkout);
        fs::create_dir_all(root.join("inc")).unwrap();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("inc/h.h"), "#define X 42\n").unwrap();
        fs::write(
            root.join("src/a.c"),
            "#include \"h.h\"\nint f(void) { return X; }\n",
        )
        .unwrap();
    }
    let mut objects = Vec::new();
    for checkout in ["one", "two"] {
        let root = base.join(checkout);
        let inc = format!("-I{}", root.join("inc").display());
        let src = root.join("src/a.c");
        let out = sb
            .distc()
            .current_dir(&root)
            .env("DISTC_BASE_DIR", &base)
            .env("DISTC_DIRECT_MODE", direct)
            .env("DISTC_DEPEND_MODE", depend)
            .args(["gcc", "-c", src.to_str().unwrap(), &inc, "-o", "a.o", "-MD"])
            .output()
            .unwrap();
        assert_ok(&out, checkout);
        objects.push(fs::read(root.join("a.o")).unwrap());
        let d = fs::read_to_string(root.join("a.d")).unwrap();
        assert!(
            !d.contains("/one/") || checkout == "one",
            "checkout two's .d names checkout one: {d}"
        );
    }
    assert_eq!(
        sb.compiles(),
        1,
        "direct={direct} depend={depend}: the second checkout must hit"
    );
    assert_eq!(objects[0], objects[1]);

    // Without base_dir the absolute paths differ: a miss.
    let root = base.join("two");
    let out = sb
        .distc()
        .current_dir(&root)
        .args([
            "gcc",
            "-c",
            root.join("src/a.c").to_str().unwrap(),
            &format!("-I{}", root.join("inc").display()),
            "-o",
            "b.o",
        ])
        .output()
        .unwrap();
    assert_ok(&out, "no base_dir");
    assert_eq!(sb.compiles(), 2);
}
