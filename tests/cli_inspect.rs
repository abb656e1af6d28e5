//! `distc inspect FILE [-- FLAGS…]`: key, inputs, headers, stored or not, owners, why not
//! cacheable, and why a compile would miss — checked against what the wrapper really does.

mod common;

use common::{Sandbox, assert_ok, text};

/// The value of the first line starting with `label`.
fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{out}"))
}

#[test]
fn inspect_shows_key_headers_and_why_a_compile_misses() {
    let sb = Sandbox::new();
    let dir = sb.demo("c-project");
    let inspect = || {
        let out = sb.run_distc(&dir, &["inspect", "src/main.c", "--", "-Iinclude"]);
        assert_ok(&out, "distc inspect")
    };

    let before = inspect();
    assert_eq!(field(&before, "Cacheable"), "yes", "{before}");
    let key = field(&before, "Key");
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{before}"
    );
    assert!(field(&before, "Stored").starts_with("no"), "{before}");
    for header in ["include/mathops.h", "include/config.h", "stdio.h"] {
        assert!(
            before.contains(header),
            "headers found include {header}: {before}"
        );
    }
    for label in ["format", "compiler", "args", "env"] {
        assert!(
            before.lines().any(|l| l.trim_start().starts_with(label)),
            "input {label} listed: {before}"
        );
    }
    assert!(
        field(&before, "Owner peers").contains("no local peer"),
        "{before}"
    );
    assert!(before.contains("nothing recorded"), "{before}");
    assert_eq!(
        sb.compiles(),
        0,
        "inspect never compiles: {:?}",
        sb.invocations()
    );

    // Compile through the wrapper: inspect now finds the result under the key it predicted.
    let out = sb.run_distc(
        &dir,
        &["cc", "-c", "src/main.c", "-o", "main.o", "-Iinclude"],
    );
    assert_ok(&out, "distc cc -c src/main.c");
    assert_eq!(sb.compiles(), 1);
    let after = inspect();
    assert_eq!(
        field(&after, "Key"),
        key,
        "inspect predicted the stored key: {before}\n---\n{after}"
    );
    assert!(field(&after, "Stored").starts_with("yes"), "{after}");
    let store_file = sb.distc_dir.join("store").join(&key[..2]).join(&key[2..]);
    assert!(
        store_file.is_file(),
        "the result is in the store under that key: {}",
        store_file.display()
    );

    // Edit a header two levels down: the compile would miss, and inspect says why.
    std::fs::write(
        dir.join("include/config.h"),
        "#ifndef DEMO_CONFIG_H\n#define DEMO_CONFIG_H\n#define SCALE_FACTOR 5\n#endif\n",
    )
    .expect("edit header");
    let edited = inspect();
    assert_ne!(field(&edited, "Key"), key, "{edited}");
    assert!(field(&edited, "Stored").starts_with("no"), "{edited}");
    assert!(
        edited.contains("changed: header include/config.h"),
        "why it misses: {edited}"
    );

    // And it does miss (oracle), after which the new result is stored.
    let out = sb.run_distc(
        &dir,
        &["cc", "-c", "src/main.c", "-o", "main.o", "-Iinclude"],
    );
    assert_ok(&out, "recompile after the edit");
    assert_eq!(sb.compiles(), 2, "{:?}", sb.invocations());
    assert!(field(&inspect(), "Stored").starts_with("yes"));
}

#[test]
fn inspect_cpp_uses_the_cxx_driver() {
    let sb = Sandbox::new();
    let dir = sb.demo("cpp-project");
    let out = sb.run_distc(&dir, &["inspect", "main.cpp", "--", "-O2"]);
    let stdout = assert_ok(&out, "inspect main.cpp");
    assert!(field(&stdout, "Compiler").contains("c++"), "{stdout}");
    assert!(stdout.contains("greeter.h"), "{stdout}");
    assert!(field(&stdout, "Command").ends_with("-O2"), "{stdout}");
}

#[test]
fn inspect_explains_uncacheable_compiles_and_rejects_bad_input() {
    let sb = Sandbox::new();
    sb.demo("hello.c");
    sb.demo("hello.rs");
    for (flag, reason) in [("-E", "preprocess-only"), ("-save-temps", "save-temps")] {
        let out = sb.run_distc(&sb.work, &["inspect", "hello.c", "--", flag]);
        let stdout = assert_ok(&out, &format!("inspect -- {flag}"));
        let cacheable = field(&stdout, "Cacheable");
        assert!(cacheable.starts_with("no"), "{flag}: {stdout}");
        assert!(
            cacheable.contains(reason),
            "{flag} gives reason {reason}: {stdout}"
        );
    }

    std::fs::write(sb.work.join("broken.c"), "#include \"no_such_header.h\"\n").expect("write");
    let out = sb.run_distc(&sb.work, &["inspect", "broken.c"]);
    let stdout = assert_ok(&out, "inspect broken.c");
    assert!(field(&stdout, "Cacheable").starts_with("no"), "{stdout}");

    let cases: &[(&[&str], &str)] = &[
        (&["inspect", "missing.c"], "missing.c"),
        (&["inspect", "Makefile"], "unsupported"),
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
    let out = sb.run_distc(&sb.work, &["inspect", "--help"]);
    assert!(assert_ok(&out, "inspect --help").contains("FLAGS"));
}
