//! Real build systems through the cache: `make CC="distc gcc"` and CMake's compiler launchers,
//! each built twice from scratch; the oracle compiler shows the second build compiles nothing.

mod common;

use common::{Sandbox, assert_ok, distc_bin, have_tool};

/// Real compiles of sources whose name ends with one of `sources`.
fn compiles_of(sb: &Sandbox, sources: &[&str]) -> usize {
    sb.invocations()
        .iter()
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.contains(&"-c")
                && !words.contains(&"-E")
                && words.iter().any(|w| sources.iter().any(|s| w.ends_with(s)))
        })
        .count()
}

#[test]
fn makefile_second_build_after_clean_compiles_nothing() {
    if !have_tool("make") {
        println!("SKIP: make is not installed");
        return;
    }
    let sb = Sandbox::new();
    let dir = sb.demo("make-project");
    let cc = format!("{} gcc", distc_bin().display());
    let make = |args: &[&str]| {
        let out = sb
            .command("make")
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("run make");
        assert_ok(&out, &format!("make {args:?}"));
    };

    make(&[&format!("CC={cc}")]);
    assert_eq!(
        compiles_of(&sb, &["main.c", "util.c"]),
        2,
        "first build compiles both: {:?}",
        sb.invocations()
    );
    let run = std::process::Command::new(dir.join("app"))
        .output()
        .expect("run app");
    assert!(assert_ok(&run, "app").contains("triple(14) = 42"));

    make(&["clean"]);
    assert!(!dir.join("main.o").exists());
    make(&[&format!("CC={cc}")]);
    assert_eq!(
        compiles_of(&sb, &["main.c", "util.c"]),
        2,
        "second build after make clean must be all hits: {:?}",
        sb.invocations()
    );
    assert!(dir.join("main.o").is_file() && dir.join("util.o").is_file());
    let run = std::process::Command::new(dir.join("app"))
        .output()
        .expect("run app again");
    assert!(assert_ok(&run, "app").contains("triple(14) = 42"));
}

#[test]
fn cmake_launcher_second_fresh_build_is_all_hits() {
    if !have_tool("cmake") {
        println!("SKIP: cmake is not installed; the CMake launcher test did not run");
        return;
    }
    let sb = Sandbox::new();
    let dir = sb.demo("cmake-project");
    let sources = ["shapes.c", "main.cpp"];
    let build = |build_dir: &str| {
        let out = sb
            .command("cmake")
            .current_dir(&dir)
            .args(["-S", ".", "-B", build_dir])
            .arg(format!(
                "-DCMAKE_C_COMPILER={}",
                sb.bin.join("gcc").display()
            ))
            .arg(format!(
                "-DCMAKE_CXX_COMPILER={}",
                sb.bin.join("g++").display()
            ))
            .arg(format!(
                "-DCMAKE_C_COMPILER_LAUNCHER={}",
                distc_bin().display()
            ))
            .arg(format!(
                "-DCMAKE_CXX_COMPILER_LAUNCHER={}",
                distc_bin().display()
            ))
            .output()
            .expect("run cmake configure");
        assert_ok(&out, "cmake configure");
        let out = sb
            .command("cmake")
            .current_dir(&dir)
            .args(["--build", build_dir])
            .output()
            .expect("run cmake --build");
        assert_ok(&out, "cmake --build");
        let run = std::process::Command::new(dir.join(build_dir).join("cmake_demo"))
            .output()
            .expect("run demo");
        assert!(assert_ok(&run, "cmake_demo").contains("square_area(6) = 36"));
    };

    build("build-first");
    assert_eq!(
        compiles_of(&sb, &sources),
        2,
        "first build compiles both: {:?}",
        sb.invocations()
    );
    build("build-second");
    assert_eq!(
        compiles_of(&sb, &sources),
        2,
        "a fresh build directory must be all hits: {:?}",
        sb.invocations()
    );
}
