//! Every stored object names its key: store entries and manifests swapped on disk (as a restore
//! from backup or a bad copy would leave them) never give a build the other compile's object.
//! Real gcc, g++ and rustc through the real wrapper; the oracle log tells real compiles apart.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Sandbox, assert_ok, have_tool};

/// Regular files under `dir`, two levels down (`<2 hex>/<62 hex>`), sorted; skips the store's
/// own bookkeeping files at the top level.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(top) = fs::read_dir(dir) else {
        return out;
    };
    for sub in top.flatten() {
        if !sub.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(sub.path())
            .expect("read fan-out dir")
            .flatten()
        {
            let name = f.file_name();
            if f.path().is_file() && !name.to_string_lossy().starts_with(".tmp") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// Swaps the contents of two files.
fn swap(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).expect("read a"), fs::read(b).expect("read b"));
    assert_ne!(x, y, "nothing to swap");
    fs::write(a, y).expect("write a");
    fs::write(b, x).expect("write b");
}

fn corrupt_count(sb: &Sandbox) -> u64 {
    let s = distc::stats::Stats::read_all(&sb.distc_dir).expect("stats");
    s.errors_by_kind.get("corrupt").copied().unwrap_or(0)
}

/// Two C (or C++) sources with different objects, compiled once through distc.
struct Pair<'a> {
    sb: &'a Sandbox,
    compiler: &'static str,
    sources: [String; 2],
    objects: [Vec<u8>; 2],
}

impl<'a> Pair<'a> {
    fn new(sb: &'a Sandbox, compiler: &'static str, ext: &str) -> Pair<'a> {
        let sources = [format!("a.{ext}"), format!("b.{ext}")];
        fs::write(sb.work.join(&sources[0]), "int fa(void) { return 1; }\n").unwrap();
        fs::write(sb.work.join(&sources[1]), "int fb(void) { return 22; }\n").unwrap();
        let mut pair = Pair {
            sb,
            compiler,
            sources,
            objects: [Vec::new(), Vec::new()],
        };
        for i in 0..2 {
            pair.objects[i] = pair.compile(i);
        }
        pair
    }

    fn object(&self, i: usize) -> String {
        format!("{}.o", &self.sources[i][..1])
    }

    /// Compiles source `i` through distc and returns the object it wrote.
    fn compile(&self, i: usize) -> Vec<u8> {
        let obj = self.sb.work.join(self.object(i));
        let _ = fs::remove_file(&obj);
        let out = self
            .sb
            .distc()
            .args([self.compiler, "-c", &self.sources[i], "-o", &self.object(i)])
            .output()
            .expect("run distc");
        assert_ok(&out, &self.sources[i]);
        fs::read(&obj).expect("object written")
    }

    /// Both compiles give their own object, `runs` times over.
    fn check(&self, runs: usize, what: &str) {
        for run in 0..runs {
            for i in 0..2 {
                assert!(
                    self.compile(i) == self.objects[i],
                    "{what}, run {run}: {} got the wrong object",
                    self.sources[i]
                );
            }
        }
    }
}

#[test]
fn swapped_store_entries_are_corruption_not_hits_for_c_and_cxx() {
    for (compiler, ext) in [("gcc", "c"), ("g++", "cpp")] {
        let sb = Sandbox::new();
        let pair = Pair::new(&sb, compiler, ext);
        assert_eq!(sb.compiles(), 2);
        let entries = files_under(&sb.distc_dir.join("store"));
        assert_eq!(entries.len(), 2, "{compiler}: {entries:?}");
        swap(&entries[0], &entries[1]);

        // Both are detected, removed, counted and compiled again; every later run is a hit
        // with the right object.
        pair.check(1, &format!("{compiler} after the swap"));
        assert_eq!(corrupt_count(&sb), 2, "{compiler}: swap not counted");
        assert_eq!(sb.compiles(), 4, "{compiler}: not compiled again");
        pair.check(2, &format!("{compiler} later"));
        assert_eq!(sb.compiles(), 4, "{compiler}: later runs are hits");
    }
}

#[test]
fn swapped_manifests_are_corruption_not_hits_for_c_and_cxx() {
    // Preprocessor-free direct mode (no depend mode): a manifest is the only way to the key.
    for depend in ["0", "1"] {
        let sb = Sandbox::new();
        let cfg = sb.root.path().join("config/distc.toml");
        fs::write(&cfg, format!("depend_mode = {}\n", depend == "1")).unwrap();
        let pair = Pair::new(&sb, "gcc", "c");
        let manifests = files_under(&sb.distc_dir.join("manifests"));
        assert_eq!(manifests.len(), 2, "depend={depend}: {manifests:?}");
        swap(&manifests[0], &manifests[1]);
        pair.check(1, &format!("depend={depend}, after the manifest swap"));
        assert_eq!(corrupt_count(&sb), 2, "depend={depend}: swap not counted");
        let after = sb.compiles();
        pair.check(2, &format!("depend={depend}, later"));
        assert_eq!(sb.compiles(), after, "depend={depend}: later runs are hits");
    }
}

/// `distc rustc` on one library crate; returns the rlib it wrote.
fn rustc_lib(sb: &Sandbox, name: &str) -> Vec<u8> {
    let out_dir = sb.work.join(format!("out-{name}"));
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir).unwrap();
    let out = sb
        .distc()
        .args([
            "rustc",
            "--edition",
            "2021",
            "--crate-type",
            "lib",
            "--crate-name",
            name,
            &format!("{name}.rs"),
            "--out-dir",
            &out_dir.to_string_lossy(),
            "--emit=link",
            "-C",
            "opt-level=1",
        ])
        .output()
        .expect("run distc rustc");
    assert_ok(&out, name);
    fs::read(out_dir.join(format!("lib{name}.rlib"))).expect("rlib written")
}

#[test]
fn swapped_rust_entries_and_manifests_are_corruption_not_hits() {
    if !have_tool("rustc") {
        eprintln!("SKIP: no rustc");
        return;
    }
    for what in ["store", "manifests"] {
        let sb = Sandbox::new();
        fs::write(sb.work.join("alpha.rs"), "pub fn a() -> u32 { 1 }\n").unwrap();
        fs::write(sb.work.join("beta.rs"), "pub fn b() -> u64 { 22 }\n").unwrap();
        let want = [rustc_lib(&sb, "alpha"), rustc_lib(&sb, "beta")];
        let stats = |sb: &Sandbox| distc::stats::Stats::read_all(&sb.distc_dir).expect("stats");
        assert_eq!(stats(&sb).misses, 2, "{what}: {:?}", stats(&sb));
        let files = files_under(&sb.distc_dir.join(what));
        assert_eq!(files.len(), 2, "{what}: {files:?}");
        swap(&files[0], &files[1]);
        for run in 0..3 {
            for (i, name) in ["alpha", "beta"].into_iter().enumerate() {
                assert!(
                    rustc_lib(&sb, name) == want[i],
                    "{what} swapped, run {run}: {name} got the wrong rlib"
                );
            }
        }
        let s = stats(&sb);
        assert_eq!(
            s.errors_by_kind.get("corrupt"),
            Some(&2),
            "{what}: swap not counted: {s:?}"
        );
        // A swapped entry is compiled again, then hit; a swapped manifest is recomputed and
        // its (intact) entry hit at once.
        let hits = if what == "store" { 4 } else { 6 };
        assert_eq!(s.hits, hits, "{what}: {s:?}");
    }
}
