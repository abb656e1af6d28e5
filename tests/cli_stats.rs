//! `distc stats [--json] [--zero]` and `distc flush`, checked against the oracle compiler.

mod common;

use common::{Sandbox, assert_ok, text};
use serde_json::Value;

fn stats_json(sb: &Sandbox) -> Value {
    let out = sb.run_distc(&sb.work, &["stats", "--json"]);
    let stdout = assert_ok(&out, "distc stats --json");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stats --json is not JSON ({e}): {stdout}"))
}

fn compile_hello(sb: &Sandbox) {
    let out = sb.run_distc(&sb.work, &["gcc", "-c", "hello.c", "-o", "hello.o"]);
    assert_ok(&out, "distc gcc -c hello.c");
}

#[test]
fn stats_json_counts_hits_misses_uncacheable_and_store_usage() {
    let sb = Sandbox::new();
    sb.demo("hello.c");

    let empty = stats_json(&sb);
    for field in ["hits", "misses", "errors", "entries", "bytes"] {
        assert_eq!(
            empty[field].as_u64(),
            Some(0),
            "{field} starts at 0: {empty}"
        );
    }
    assert!(
        empty["uncacheable"].is_object(),
        "uncacheable is an object: {empty}"
    );
    assert!(
        empty["hit_rate"].is_number(),
        "hit_rate is a number: {empty}"
    );

    compile_hello(&sb);
    compile_hello(&sb);
    assert_eq!(sb.compiles(), 1, "oracle: the second compile is a hit");
    let out = sb.run_distc(&sb.work, &["gcc", "hello.o", "-o", "hello"]);
    assert_ok(&out, "distc gcc (link)");

    let s = stats_json(&sb);
    assert_eq!(s["hits"].as_u64(), Some(1), "{s}");
    assert_eq!(s["misses"].as_u64(), Some(1), "{s}");
    assert_eq!(s["uncacheable"]["linking"].as_u64(), Some(1), "{s}");
    assert_eq!(s["errors"].as_u64(), Some(0), "{s}");
    assert_eq!(s["entries"].as_u64(), Some(1), "{s}");
    assert!(s["bytes"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(
        (s["hit_rate"].as_f64().unwrap_or(-1.0) - 0.5).abs() < 1e-9,
        "{s}"
    );

    let out = sb.run_distc(&sb.work, &["stats"]);
    let table = assert_ok(&out, "distc stats");
    for needle in [
        "Hits",
        "Misses",
        "Uncacheable",
        "linking",
        "Errors",
        "Entries",
        "Stored",
    ] {
        assert!(table.contains(needle), "stats shows {needle}: {table}");
    }

    // --zero resets the counters but keeps the stored results.
    let out = sb.run_distc(&sb.work, &["stats", "--zero"]);
    assert_ok(&out, "distc stats --zero");
    let z = stats_json(&sb);
    assert_eq!(z["hits"].as_u64(), Some(0), "{z}");
    assert_eq!(z["misses"].as_u64(), Some(0), "{z}");
    assert_eq!(
        z["uncacheable"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum::<u64>()),
        Some(0)
    );
    assert_eq!(
        z["entries"].as_u64(),
        Some(1),
        "entries survive --zero: {z}"
    );
    compile_hello(&sb);
    assert_eq!(sb.compiles(), 1, "still a hit after --zero");
}

#[test]
fn flush_empties_the_cache_so_the_next_compile_misses() {
    let sb = Sandbox::new();
    sb.demo("hello.c");
    compile_hello(&sb);
    assert_eq!(stats_json(&sb)["entries"].as_u64(), Some(1));

    let out = sb.run_distc(&sb.work, &["flush"]);
    let stdout = assert_ok(&out, "distc flush");
    assert!(
        stdout.contains("1 entr"),
        "flush says what it removed: {stdout}"
    );
    let s = stats_json(&sb);
    assert_eq!(s["entries"].as_u64(), Some(0), "{s}");
    assert_eq!(s["bytes"].as_u64(), Some(0), "{s}");

    compile_hello(&sb);
    assert_eq!(
        sb.compiles(),
        2,
        "oracle: after a flush the compile runs again"
    );
    let out = sb.run_distc(&sb.work, &["flush", "--help"]);
    assert_ok(&out, "flush --help");
}

#[test]
fn stats_rejects_conflicting_flags_and_bad_config() {
    let sb = Sandbox::new();
    let out = sb.run_distc(&sb.work, &["stats", "--json", "--zero"]);
    assert!(!out.status.success(), "--json with --zero is a usage error");

    let out = sb
        .distc()
        .args(["stats"])
        .env("DISTC_MAX_SIZE", "lots")
        .output()
        .expect("run distc");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("DISTC_MAX_SIZE") && stderr.contains("max_size"),
        "names the variable and key: {stderr}"
    );

    // A flag overrides the environment: --dir points stats at another cache.
    let other = sb.root.path().join("other-cache");
    let out = sb.run_distc(
        &sb.work,
        &[
            "--cache-dir",
            other.to_str().expect("utf8"),
            "stats",
            "--json",
        ],
    );
    let stdout = assert_ok(&out, "stats --cache-dir");
    assert!(
        stdout.contains("other-cache"),
        "--cache-dir wins over DISTC_DIR: {stdout}"
    );
}
