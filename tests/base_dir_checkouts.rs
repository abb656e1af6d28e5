//! `base_dir` makes results checkout-independent, not only keys: the same project in two
//! checkouts at different paths, compiled the way CMake does it (absolute paths everywhere,
//! the object and dependency file in a build directory, `-g` and prefix maps), hits in the
//! second checkout, and every object is byte-identical to what the compiler writes for the
//! relative command line, in either checkout.

mod common;

use std::path::{Path, PathBuf};

use common::{Sandbox, assert_ok, write};

/// A small project: a C and a C++ source using a header of the project and `__FILE__`.
fn write_project(dir: &Path) {
    write(
        &dir.join("include/shape.h"),
        "#define SHAPE_FILE __FILE__\nstatic inline int sides(int n) { return n > 2 ? n : 0; }\n",
    );
    write(
        &dir.join("src/square.c"),
        "#include <assert.h>\n#include \"shape.h\"\n\
         const char *square_file(void) { return SHAPE_FILE; }\n\
         const char *here(void) { return __FILE__; }\n\
         int square(int n) { assert(n >= 0); return sides(4) * n; }\n",
    );
    write(
        &dir.join("src/circle.cpp"),
        "#include <string>\n#include \"shape.h\"\n\
         std::string circle_file() { return SHAPE_FILE; }\n\
         int circle(int n) { return sides(n) + 1; }\n",
    );
}

/// The CMake-style command line of `src` in checkout `ck` (absolute paths), run in
/// `ck/build`, with `-g` and the prefix maps a reproducible build adds.
fn cmake_args(ck: &Path, src: &str) -> Vec<String> {
    let c = ck.display();
    let obj = format!("{c}/build/{src}.o");
    vec![
        format!("-I{c}/include"),
        "-g".into(),
        "-O1".into(),
        format!("-fdebug-prefix-map={c}=."),
        format!("-ffile-prefix-map={c}/=",),
        "-MD".into(),
        "-MT".into(),
        obj.clone(),
        "-MF".into(),
        format!("{obj}.d"),
        "-o".into(),
        obj,
        "-c".into(),
        format!("{c}/{src}"),
    ]
}

/// The same compile with every path inside the checkout relative to `ck/build`.
fn relative_args(ck: &Path, src: &str) -> Vec<String> {
    let c = ck.display();
    let obj = format!("{src}.o");
    vec![
        "-I../include".into(),
        "-g".into(),
        "-O1".into(),
        format!("-fdebug-prefix-map={c}=."),
        format!("-ffile-prefix-map={c}/=",),
        "-MD".into(),
        "-MT".into(),
        obj.clone(),
        "-MF".into(),
        format!("{obj}.d"),
        "-o".into(),
        obj,
        "-c".into(),
        format!("../{src}"),
    ]
}

fn driver(src: &str) -> &'static str {
    if src.ends_with(".cpp") { "g++" } else { "gcc" }
}

/// Compiles `src` of checkout `ck` through distc with `base_dir`; returns the wrapper's
/// one-line outcome.
fn distc_compile(sb: &Sandbox, base: &Path, ck: &Path, src: &str) -> String {
    let report = sb.root.path().join("result");
    let out = sb
        .distc()
        .arg(driver(src))
        .args(cmake_args(ck, src))
        .current_dir(ck.join("build"))
        .env("DISTC_BASE_DIR", base)
        .env("DISTC_RESULT_FILE", &report)
        .output()
        .expect("run distc");
    assert_ok(
        &out,
        &format!("distc {} {src} in {}", driver(src), ck.display()),
    );
    std::fs::read_to_string(&report)
        .expect("wrapper result")
        .trim()
        .to_string()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

const SOURCES: [&str; 2] = ["src/square.c", "src/circle.cpp"];

#[test]
fn two_checkouts_share_results_and_objects_are_path_free() {
    let sb = Sandbox::new();
    let base = sb.work.clone();
    // Different names and depths: only the layout inside the checkout is common.
    let one: PathBuf = base.join("alice/src/app");
    let two: PathBuf = base.join("bob/work/nested/app-copy");
    for ck in [&one, &two] {
        write_project(ck);
        std::fs::create_dir_all(ck.join("build/src")).expect("mkdir build");
    }

    for src in SOURCES {
        assert_eq!(distc_compile(&sb, &base, &one, src), "miss", "{src}");
    }
    let compiled = sb.compiles();
    assert_eq!(compiled, SOURCES.len());
    for src in SOURCES {
        let outcome = distc_compile(&sb, &base, &two, src);
        assert_eq!(outcome, "hit", "{src} in the second checkout");
    }
    assert_eq!(sb.compiles(), compiled, "the second checkout compiled");

    for src in SOURCES {
        let obj_one = std::fs::read(one.join(format!("build/{src}.o"))).expect("object one");
        let obj_two = std::fs::read(two.join(format!("build/{src}.o"))).expect("object two");
        assert!(
            obj_one == obj_two,
            "{src}: objects differ between checkouts"
        );
        // No checkout's path anywhere in the object: the compiler saw relative paths, and
        // the prefix map took care of the working directory.
        for ck in [&one, &two] {
            assert!(
                !contains(&obj_two, &ck.display().to_string()),
                "{src}: the object names {}",
                ck.display()
            );
        }
        // The dependency file names the second checkout's files, relatively.
        let dep = std::fs::read_to_string(two.join(format!("build/{src}.o.d"))).expect("dep");
        assert!(dep.starts_with(&format!("{src}.o:")), "{dep}");
        assert!(dep.contains("../include/shape.h"), "{dep}");
        assert!(!dep.contains(&one.display().to_string()), "{dep}");

        // Byte-identical to the compiler's own output for the relative command line.
        let plain = sb.root.path().join("plain");
        let _ = std::fs::remove_dir_all(&plain);
        write_project(&plain);
        std::fs::create_dir_all(plain.join("build/src")).expect("mkdir");
        let out = std::process::Command::new(driver(src))
            .args(relative_args(&plain, src))
            .current_dir(plain.join("build"))
            .output()
            .expect("run the compiler");
        assert_ok(&out, "plain relative compile");
        let obj_plain = std::fs::read(plain.join(format!("build/{src}.o"))).expect("plain");
        assert!(
            obj_plain == obj_two,
            "{src}: differs from a plain relative compile"
        );
    }
}

#[test]
fn without_prefix_maps_debug_info_keeps_checkouts_apart() {
    // -g without a prefix map records the absolute working directory: a second checkout must
    // not be served the first one's object.
    let sb = Sandbox::new();
    let base = sb.work.clone();
    let one = base.join("one/app");
    let two = base.join("two/app");
    for ck in [&one, &two] {
        write_project(ck);
        std::fs::create_dir_all(ck.join("build/src")).expect("mkdir build");
    }
    let run = |ck: &Path| {
        let c = ck.display();
        let report = sb.root.path().join("result");
        let out = sb
            .distc()
            .args(["gcc", "-g", &format!("-I{c}/include"), "-c"])
            .arg(format!("{c}/src/square.c"))
            .args(["-o", &format!("{c}/build/square.o")])
            .current_dir(ck.join("build"))
            .env("DISTC_BASE_DIR", &base)
            .env("DISTC_RESULT_FILE", &report)
            .output()
            .expect("run distc");
        assert_ok(&out, "distc gcc -g");
        std::fs::read_to_string(&report)
            .expect("result")
            .trim()
            .to_string()
    };
    assert_eq!(run(&one), "miss");
    assert_eq!(run(&two), "miss");
    let obj = std::fs::read(two.join("build/square.o")).expect("object");
    assert!(contains(&obj, &two.join("build").display().to_string()));
    assert!(!contains(&obj, &one.display().to_string()));
    // The source path the compiler saw was relative.
    assert!(contains(&obj, "../src/square.c"));
}
