//! `distc build FILE`: miss then hit through the cache (the oracle compiler shows the second
//! build runs no compile), the binary runs, and bad input gives clear errors.

mod common;

use common::{Sandbox, assert_ok, text};

#[test]
fn build_c_twice_misses_then_hits_and_runs() {
    let sb = Sandbox::new();
    sb.demo("hello.c");

    let out = sb.run_distc(&sb.work, &["build", "hello.c"]);
    let stdout = assert_ok(&out, "first distc build");
    assert!(
        stdout.contains("miss"),
        "first build should report a miss: {stdout}"
    );
    assert_eq!(
        sb.compiles(),
        1,
        "first build compiles once: {:?}",
        sb.invocations()
    );
    assert!(stdout.contains(" ms"), "build reports its time: {stdout}");
    assert!(
        stdout.contains("B)") || stdout.contains("KiB"),
        "build reports the size: {stdout}"
    );

    let binary = sb.work.join("hello");
    let run = std::process::Command::new(&binary)
        .output()
        .expect("run built binary");
    assert!(assert_ok(&run, "hello").contains("Hello from C"));

    std::fs::remove_file(&binary).expect("remove binary");
    let out = sb.run_distc(&sb.work, &["build", "hello.c"]);
    let stdout = assert_ok(&out, "second distc build");
    assert!(
        stdout.contains("hit"),
        "second build should report a hit: {stdout}"
    );
    assert_eq!(
        sb.compiles(),
        1,
        "second build must not compile: {:?}",
        sb.invocations()
    );
    let run = std::process::Command::new(&binary)
        .output()
        .expect("run rebuilt binary");
    assert!(assert_ok(&run, "hello").contains("Hello from C"));
}

#[test]
fn build_cpp_with_output_and_flags() {
    let sb = Sandbox::new();
    sb.demo("hello.cpp");
    let out = sb.run_distc(
        &sb.work,
        &["build", "hello.cpp", "-o", "bin/greeter", "--", "-O2"],
    );
    let (_, stderr) = text(&out);
    // The output directory does not exist: the linker's error must be shown.
    assert!(!out.status.success());
    assert!(
        stderr.contains("bin/greeter"),
        "error names the output: {stderr}"
    );

    std::fs::create_dir_all(sb.work.join("bin")).expect("mkdir bin");
    let out = sb.run_distc(
        &sb.work,
        &["build", "hello.cpp", "-o", "bin/greeter", "--", "-O2"],
    );
    assert_ok(&out, "distc build hello.cpp");
    let run = std::process::Command::new(sb.work.join("bin/greeter"))
        .output()
        .expect("run greeter");
    assert!(assert_ok(&run, "greeter").contains("Hello from C++"));
    assert!(
        sb.invocations()
            .iter()
            .any(|l| l.starts_with("c++ ") && l.contains("-O2")),
        "C++ compiled with c++ and the extra flags: {:?}",
        sb.invocations()
    );

    // A different flag is a different key: it must compile again.
    let before = sb.compiles();
    let out = sb.run_distc(
        &sb.work,
        &["build", "hello.cpp", "-o", "bin/greeter", "--", "-O1"],
    );
    assert!(assert_ok(&out, "rebuild with -O1").contains("miss"));
    assert_eq!(sb.compiles(), before + 1);
}

#[test]
fn build_reports_compile_errors_and_fails() {
    let sb = Sandbox::new();
    std::fs::write(
        sb.work.join("broken.c"),
        "int main(void) { return undeclared_thing; }\n",
    )
    .expect("write");
    let out = sb.run_distc(&sb.work, &["build", "broken.c"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "a failing compile fails the build");
    assert!(
        stderr.contains("undeclared_thing"),
        "the compiler's error is shown: {stderr}"
    );
    assert!(!sb.work.join("broken").exists(), "no binary on failure");
}

#[test]
fn build_rejects_bad_input_clearly() {
    let sb = Sandbox::new();
    let cases: &[(&[&str], &str)] = &[
        (&["build", "missing.c"], "missing.c"),
        (&["build", "notes.txt"], "unsupported"),
        (&["build", "."], "is a directory"),
        (&["inspect", "."], "is a directory"),
        (&["inspect", "notes.txt"], "unsupported"),
        (&["./no-such-cc", "-c", "notes.c"], "not an executable file"),
        (&["build", "notes.c", "-o", "notes.c"], "source file itself"),
    ];
    std::fs::write(sb.work.join("notes.txt"), "hi").expect("write");
    std::fs::write(sb.work.join("notes.c"), "int main(void) { return 0; }\n").expect("write");
    for (args, needle) in cases {
        let out = sb.run_distc(&sb.work, args);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: error should mention {needle:?}: {stderr}"
        );
    }

    let out = sb.run_distc(&sb.work, &["build"]);
    assert!(!out.status.success(), "missing FILE is a usage error");
    let out = sb.run_distc(&sb.work, &["build", "--help"]);
    assert!(assert_ok(&out, "build --help").contains("-o, --output"));
}
