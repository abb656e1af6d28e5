//! `distc build-project DIR`: every source compiled through the cache in parallel and linked;
//! a second build (objects removed) is all hits according to the oracle compiler.

mod common;

use common::{Sandbox, assert_ok, text};

fn build_twice(demo: &str, expected_output: &str, files: usize) {
    let sb = Sandbox::new();
    let dir = sb.demo(demo);
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();

    let out = sb.run_distc(&sb.work, &["build-project", &name, "-j", "2"]);
    let stdout = assert_ok(&out, "first build-project");
    assert!(
        stdout.contains(&format!("Compiled {files}/{files} files (0 cache hits)")),
        "first build compiles everything: {stdout}"
    );
    assert_eq!(
        stdout.matches("miss ").count(),
        files,
        "one miss line per file: {stdout}"
    );
    assert_eq!(sb.compiles(), files, "oracle: {:?}", sb.invocations());
    // The objects went through the sandbox's cache (DISTC_DIR), not some other directory.
    let out = sb.run_distc(&sb.work, &["stats", "--json"]);
    let stats: serde_json::Value =
        serde_json::from_str(&assert_ok(&out, "stats --json")).expect("stats JSON");
    assert_eq!(stats["misses"].as_u64(), Some(files as u64), "{stats}");
    assert_eq!(stats["entries"].as_u64(), Some(files as u64), "{stats}");
    assert!(!dir.join("store").exists(), "no cache inside the project");
    let binary = dir.join("build").join(&name);
    let run = std::process::Command::new(&binary)
        .output()
        .expect("run project binary");
    assert!(assert_ok(&run, "project binary").contains(expected_output));

    // Objects are in DIR/build/: remove them so the second build has to produce them again.
    assert!(dir.join("build").is_dir(), "objects go to DIR/build");
    std::fs::remove_dir_all(dir.join("build")).expect("remove build dir");

    let out = sb.run_distc(&sb.work, &["build-project", &name, "-o", "again"]);
    let stdout = assert_ok(&out, "second build-project");
    assert!(
        stdout.contains(&format!("Compiled 0/{files} files ({files} cache hits)")),
        "second build is all hits: {stdout}"
    );
    assert_eq!(
        stdout.matches("hit ").count(),
        files,
        "one hit line per file: {stdout}"
    );
    assert_eq!(
        sb.compiles(),
        files,
        "oracle: the second build compiled nothing: {:?}",
        sb.invocations()
    );
    let run = std::process::Command::new(sb.work.join("again"))
        .output()
        .expect("run relinked binary");
    assert!(assert_ok(&run, "relinked binary").contains(expected_output));
}

#[test]
fn c_project_with_include_dir_builds_twice() {
    build_twice("c-project", "scale(7) = 21", 2);
}

#[test]
fn cpp_project_builds_twice_and_links_with_cxx() {
    build_twice("cpp-project", "two-file C++ project", 2);
}

#[test]
fn failing_source_shows_compiler_error() {
    let sb = Sandbox::new();
    let dir = sb.demo("c-project");
    std::fs::write(
        dir.join("src/extra.c"),
        "int broken(void) { return missing_symbol_xyz; }\n",
    )
    .expect("write");
    let out = sb.run_distc(&sb.work, &["build-project", "c-project"]);
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "a failing compile fails the project: {stdout}"
    );
    assert!(
        stderr.contains("missing_symbol_xyz"),
        "compiler error shown: {stderr}"
    );
    assert!(stderr.contains("extra.c"), "failing file named: {stderr}");
    assert!(
        !dir.join("build/c-project").exists(),
        "no binary on failure"
    );
}

#[test]
fn bad_project_input_is_rejected_clearly() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.work.join("empty/build")).expect("mkdir");
    std::fs::write(sb.work.join("empty/build/ignored.c"), "int x;\n").expect("write");
    std::fs::create_dir_all(sb.work.join("rusty/src")).expect("mkdir");
    std::fs::write(
        sb.work.join("rusty/Cargo.toml"),
        "[package]\nname = \"rusty\"\n",
    )
    .expect("write");
    std::fs::write(sb.work.join("file.c"), "int main(void){return 0;}\n").expect("write");

    let cases: &[(&[&str], &str)] = &[
        (&["build-project", "nowhere"], "nowhere"),
        (&["build-project", "empty"], "no C or C++ sources"),
        (&["build-project", "rusty"], "cargo"),
        (&["build-project", "file.c"], "not a directory"),
        (&["build-project", "empty", "-j", "0"], "-j"),
        (&["build-project", "empty", "-j", "many"], "-j"),
    ];
    for (args, needle) in cases {
        let out = sb.run_distc(&sb.work, args);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: error should mention {needle:?}: {stderr}"
        );
    }
    let out = sb.run_distc(&sb.work, &["build-project", "--help"]);
    assert!(assert_ok(&out, "build-project --help").contains("--jobs"));
}
