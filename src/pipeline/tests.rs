//! The cached compile in process: a scripted family and a scripted compiler, so hit, miss,
//! uncacheable, compile failure, corrupt entry and lock contention are each one test.

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use distc_peer::Key;

use super::*;
use crate::cache::bundle::{BUNDLE_VERSION, Output, Role};
use crate::cache::stats::Stats;

/// A compiler that "compiles" `source` into `output` by copying it, with scripted status and
/// streams; every call is recorded.
#[derive(Debug)]
struct Scripted {
    source: PathBuf,
    output: PathBuf,
    code: Cell<i32>,
    stderr: Vec<u8>,
    runs: RefCell<Vec<Command>>,
    execs: Cell<usize>,
    /// Each compile's output differs (a clock in the object).
    vary: Cell<bool>,
}

impl Runner for Scripted {
    fn output(&self, cmd: &Command) -> io::Result<Finished> {
        self.runs.borrow_mut().push(cmd.clone());
        let code = self.code.get();
        if code == 0 {
            fs::copy(&self.source, &self.output)?;
            if self.vary.get() {
                let mut o = fs::read(&self.output)?;
                o.extend_from_slice(format!("{}", self.runs.borrow().len()).as_bytes());
                fs::write(&self.output, o)?;
            }
        }
        Ok(Finished {
            stdout: b"out\n".to_vec(),
            stderr: self.stderr.clone(),
            code,
            success: code == 0,
        })
    }

    fn exec(&self, _program: &Path, _args: &[OsString]) -> ExitCode {
        self.execs.set(self.execs.get() + 1);
        ExitCode::from(77)
    }
}

/// A family keyed by its source's bytes, with one output; streams go to `printed`.
struct Toy {
    source: PathBuf,
    output: PathBuf,
    no_key: Option<NoKey>,
    recorded: Cell<usize>,
    printed: RefCell<Vec<u8>>,
}

impl Family for Toy {
    type Inputs = ();
    type Depend = ();

    fn describe(&self) -> String {
        self.source.display().to_string()
    }
    fn original(&self) -> (&Path, &[OsString]) {
        (Path::new("cc"), &[])
    }
    fn manifest_lookup(&self) -> Option<Key> {
        None
    }
    fn depend(&self) -> Option<()> {
        None
    }
    fn manifest_lock(&self) -> String {
        "m-toy".into()
    }
    fn depend_key(&self, _: &()) -> Result<(Key, ()), &'static str> {
        Err("no-depend")
    }
    fn full_key(&self) -> Result<(Key, ()), NoKey> {
        if let Some(no) = self.no_key {
            return Err(no);
        }
        let bytes = fs::read(&self.source).map_err(|_| NoKey::uncacheable("no-source"))?;
        Ok((Key::digest(&bytes), ()))
    }
    fn record(&self, _: &Cache, _: &Key, _: &(), _stored: bool) {
        self.recorded.set(self.recorded.get() + 1);
    }
    fn command(&self, _: Option<&()>) -> Command {
        Command::new("cc", vec![self.source.clone().into()])
    }
    fn collect(&self, done: &Finished) -> Result<Bundle, Skip> {
        let data = fs::read(&self.output).map_err(|_| Skip::Uncacheable("compile-failed"))?;
        Ok(Bundle {
            version: BUNDLE_VERSION,
            outputs: vec![Output {
                role: Role::Object,
                data: data.into(),
            }],
            stdout: done.stdout.clone(),
            stderr: done.stderr.clone(),
            exit_code: done.code,
        })
    }
    fn print(&self, done: &Finished) {
        self.printed.borrow_mut().extend_from_slice(&done.stderr);
    }
    fn replay_outputs(&self, bundle: &Bundle) -> Result<(), String> {
        let obj = bundle.output(Role::Object).ok_or("no object")?;
        crate::util::write_atomic(&self.output, obj).map_err(|e| e.to_string())
    }
    fn replay_streams(&self, bundle: &Bundle) {
        self.printed.borrow_mut().extend_from_slice(&bundle.stderr);
    }
}

struct Bench {
    dir: tempfile::TempDir,
    cfg: Config,
    cache: Cache,
    runner: Scripted,
    toy: Toy,
}

fn bench() -> Bench {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config {
        dir: dir.path().join("cache"),
        ..Config::default()
    };
    let cache = Cache::open(&cfg.dir, 1 << 30, Duration::from_millis(50), 1 << 30);
    let source = dir.path().join("a.c");
    let output = dir.path().join("a.o");
    fs::write(&source, b"int a;\n").expect("source");
    Bench {
        runner: Scripted {
            source: source.clone(),
            output: output.clone(),
            code: Cell::new(0),
            stderr: b"warning: w\n".to_vec(),
            runs: RefCell::new(Vec::new()),
            execs: Cell::new(0),
            vary: Cell::new(false),
        },
        toy: Toy {
            source,
            output,
            no_key: None,
            recorded: Cell::new(0),
            printed: RefCell::new(Vec::new()),
        },
        cfg,
        cache,
        dir,
    }
}

impl Bench {
    fn run(&self) -> ExitCode {
        let p = Pipeline {
            cfg: &self.cfg,
            cache: &self.cache,
            runner: &self.runner,
        };
        p.run(&self.toy)
    }

    fn stats(&self) -> Stats {
        Stats::read_all(&self.cfg.dir).expect("stats")
    }

    fn compiles(&self) -> usize {
        self.runner.runs.borrow().len()
    }
}

fn same(a: ExitCode, b: u8) -> bool {
    format!("{a:?}") == format!("{:?}", ExitCode::from(b))
}

#[test]
fn miss_stores_then_hit_replays_without_compiling() {
    let b = bench();
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 1);
    assert_eq!(b.stats().misses, 1);
    assert_eq!(b.toy.recorded.get(), 1, "the miss is recorded");
    assert_eq!(b.toy.printed.borrow().as_slice(), b"warning: w\n");

    fs::remove_file(&b.toy.output).expect("rm");
    b.toy.printed.borrow_mut().clear();
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 1, "a hit runs no compiler");
    assert_eq!(fs::read(&b.toy.output).expect("replayed"), b"int a;\n");
    assert_eq!(b.toy.printed.borrow().as_slice(), b"warning: w\n");
    let s = b.stats();
    assert_eq!((s.local_hits, s.misses, s.errors), (1, 1, 0));
    assert_eq!(b.toy.recorded.get(), 2, "the hit is recorded too");
}

#[test]
fn no_key_runs_the_compiler_uncached_and_counts_why() {
    let mut b = bench();
    b.toy.no_key = Some(NoKey {
        reason: "no-key",
        error: Some("rust-key"),
    });
    assert!(same(b.run(), 77), "the exec'd compiler's status");
    assert_eq!(b.runner.execs.get(), 1);
    assert_eq!(b.compiles(), 0);
    let s = b.stats();
    assert_eq!(s.uncacheable.get("no-key"), Some(&1), "{s:?}");
    assert_eq!(s.errors_by_kind.get("rust-key"), Some(&1), "{s:?}");
    assert_eq!(s.misses, 0);
}

#[test]
fn a_failed_compile_keeps_its_status_and_stores_nothing() {
    let b = bench();
    b.runner.code.set(3);
    assert!(same(b.run(), 3));
    assert_eq!(b.toy.printed.borrow().as_slice(), b"warning: w\n");
    b.runner.code.set(128 + 9);
    assert!(same(b.run(), 137), "a killed compiler's 128 + signal");
    assert_eq!(b.compiles(), 2, "nothing was stored to hit");
    let s = b.stats();
    assert_eq!(s.uncacheable.get("compile-failed"), Some(&2), "{s:?}");
    assert_eq!((s.misses, s.hits), (0, 0));
    assert_eq!(b.toy.recorded.get(), 0);
}

#[test]
fn a_corrupt_entry_is_a_counted_miss_that_stores_again() {
    let b = bench();
    assert!(same(b.run(), 0));
    fn corrupt(p: &Path) {
        for e in fs::read_dir(p).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                corrupt(&p);
            } else if p.file_name().is_some_and(|n| n.len() > 20) {
                fs::write(&p, b"garbage").expect("write");
            }
        }
    }
    corrupt(&b.cfg.dir.join("store"));
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 2, "the corrupt entry was not served");
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 2, "the new entry is served");
    let s = b.stats();
    assert_eq!((s.misses, s.local_hits), (2, 1), "{s:?}");
    assert_eq!(s.errors_by_kind.get("corrupt"), Some(&1), "{s:?}");
}

#[test]
fn an_entry_that_cannot_be_replayed_is_counted_and_compiled_again() {
    let b = bench();
    let (key, ()) = b.toy.full_key().expect("key");
    let empty = Bundle {
        version: BUNDLE_VERSION,
        outputs: vec![],
        stdout: vec![],
        stderr: vec![],
        exit_code: 0,
    };
    b.cache.put(&key, &empty);
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 1);
    let s = b.stats();
    assert_eq!(s.errors_by_kind.get("replay"), Some(&1), "{s:?}");
    assert_eq!(s.misses, 1);
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 1, "the stored-again result is served");
}

#[test]
fn a_process_that_waited_for_the_lock_serves_what_the_holder_stored() {
    let b = bench();
    let (key, ()) = b.toy.full_key().expect("key");
    let (held, _) =
        KeyLock::acquire(&b.cfg.dir, &key.to_string(), Duration::from_secs(1)).expect("lock");
    let held = held.expect("free");
    let dir = b.cfg.dir.clone();
    let output = fs::read(&b.toy.source).expect("source");
    let holder = std::thread::spawn(move || {
        // The holder compiles (here: takes a while), stores, and releases the lock.
        std::thread::sleep(Duration::from_millis(200));
        let cache = Cache::open(&dir, 1 << 30, Duration::from_millis(50), 1 << 30);
        let bundle = Bundle {
            version: BUNDLE_VERSION,
            outputs: vec![Output {
                role: Role::Object,
                data: output.into(),
            }],
            stdout: vec![],
            stderr: b"from the holder\n".to_vec(),
            exit_code: 0,
        };
        cache.put(&key, &bundle);
        drop(held);
    });
    assert!(same(b.run(), 0));
    holder.join().expect("holder");
    assert_eq!(b.compiles(), 0, "the waiter compiled nothing");
    assert_eq!(b.toy.printed.borrow().as_slice(), b"from the holder\n");
    assert_eq!(b.stats().local_hits, 1);
    drop(b.dir);
}

#[test]
fn exit_codes_out_of_range_are_failures() {
    assert!(same(exit_code(0), 0));
    assert!(same(exit_code(255), 255));
    assert!(same(exit_code(256), 1));
    assert!(same(exit_code(-1), 1));
}

/// Stores, as another machine's signed entry under the toy's key, a result whose object is
/// `object`; returns the producer's peer id.
fn plant_foreign(b: &Bench, object: &[u8]) -> String {
    let key = Key::digest(&fs::read(&b.toy.source).expect("source"));
    let bundle = Bundle {
        version: BUNDLE_VERSION,
        outputs: vec![Output {
            role: Role::Object,
            data: object.to_vec().into(),
        }],
        stdout: b"out\n".to_vec(),
        stderr: b"warning: w\n".to_vec(),
        exit_code: 0,
    };
    let producer = distc_peer::trust::Trust::with_new_identity(Default::default()).expect("id");
    let local = Store::encode_entry(&key, &bundle.encode().expect("encode")).expect("entry");
    let signed = producer.outgoing(local, &key).expect("sign");
    Store::open(&b.cfg.dir.join("store"), 1 << 30)
        .expect("store")
        .put_raw(&key, &signed)
        .expect("plant");
    producer.me().to_string()
}

fn verifying(rate: u32) -> Bench {
    let mut b = bench();
    b.cfg.verify_rate = crate::config::VerifyRate(rate);
    b
}

use distc_peer::store::Store;

#[test]
fn a_sampled_foreign_entry_that_differs_is_reported_replaced_and_not_used() {
    let b = verifying(1_000_000);
    let producer = plant_foreign(&b, b"int planted;\n");
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 2, "compiled, then confirmed");
    assert_eq!(
        fs::read(&b.toy.output).unwrap(),
        b"int a;\n",
        "the build got the planted object"
    );
    let s = b.stats();
    assert_eq!(s.mismatches.get(&producer), Some(&1), "{s:?}");
    assert_eq!(s.verified, 0);
    // Replaced by this machine's own result: the next hit is local, not re-verified.
    let f = b
        .cache
        .get_local(&Key::digest(b"int a;\n"))
        .expect("stored");
    assert_eq!(f.producer, None);
    assert_eq!(f.bundle.output(Role::Object), Some(&b"int a;\n"[..]));
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 2);
}

#[test]
fn a_sampled_foreign_entry_that_matches_is_counted_and_the_local_result_used() {
    let b = verifying(1_000_000);
    plant_foreign(&b, b"int a;\n");
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 1);
    let s = b.stats();
    assert_eq!(
        (s.verified, s.mismatches.len(), s.local_hits),
        (1, 0, 1),
        "{s:?}"
    );
    assert_eq!(b.toy.printed.borrow().as_slice(), b"warning: w\n");
}

#[test]
fn a_compile_that_differs_from_itself_is_skipped_never_reported() {
    let b = verifying(1_000_000);
    b.runner.vary.set(true);
    plant_foreign(&b, b"int a;\n");
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 2);
    let s = b.stats();
    assert!(s.mismatches.is_empty(), "{s:?}");
    assert_eq!(s.verify_skipped.get("nonreproducible"), Some(&1), "{s:?}");
}

#[test]
fn verify_rate_zero_never_compiles_a_hit() {
    let b = verifying(0);
    plant_foreign(&b, b"int planted;\n");
    assert!(same(b.run(), 0));
    assert_eq!(b.compiles(), 0);
    assert_eq!(fs::read(&b.toy.output).unwrap(), b"int planted;\n");
}

/// A scripted gcc/rustc for the compiler probes: its preprocessor output and `-vV` carry
/// `version`, `-E -v` prints `include` as the search list, a compile writes its `-o` file.
/// The compiler itself is a file that cannot run, so a probe that bypassed the runner fails.
#[derive(Debug)]
struct Probed {
    version: Cell<u32>,
    include: PathBuf,
    sysroot: PathBuf,
    runs: RefCell<Vec<Command>>,
    execs: Cell<usize>,
}

impl Probed {
    fn new(dir: &Path) -> Probed {
        let include = dir.join("include");
        let sysroot = dir.join("sysroot");
        fs::create_dir_all(&include).expect("include dir");
        fs::create_dir_all(sysroot.join("lib")).expect("sysroot");
        Probed {
            version: Cell::new(1),
            include,
            sysroot,
            runs: RefCell::new(Vec::new()),
            execs: Cell::new(0),
        }
    }

    /// The runs whose arguments include `arg`.
    fn runs_with(&self, arg: &str) -> usize {
        self.runs
            .borrow()
            .iter()
            .filter(|c| c.args.iter().any(|a| a == arg))
            .count()
    }
}

impl Runner for Probed {
    fn output(&self, cmd: &Command) -> io::Result<Finished> {
        self.runs.borrow_mut().push(cmd.clone());
        let v = self.version.get();
        let has = |s: &str| cmd.args.iter().any(|a| a == s);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if has("-E") && has("-v") {
            stderr = format!(
                "#include <...> search starts here:\n {}\nEnd of search list.\n",
                self.include.display()
            )
            .into_bytes();
        } else if has("-E") {
            let source = cmd.args.last().map(PathBuf::from).unwrap_or_default();
            stdout = format!("# 1 \"{}\"\nint v = {v};\n", source.display()).into_bytes();
        } else if has("-vV") {
            stdout = format!("rustc 1.{v}.0\nhost: x86_64-unknown-linux-gnu\n").into_bytes();
        } else if has("--print") {
            stdout = format!("{}\n", self.sysroot.display()).into_bytes();
        } else if let Some(i) = cmd.args.iter().position(|a| a == "-o") {
            fs::write(&cmd.args[i + 1], format!("object {v}"))?;
        }
        if cmd.null_stdout {
            stdout.clear();
        }
        if cmd.null_stderr {
            stderr.clear();
        }
        Ok(Finished {
            stdout,
            stderr,
            code: 0,
            success: true,
        })
    }

    fn exec(&self, _program: &Path, _args: &[OsString]) -> ExitCode {
        self.execs.set(self.execs.get() + 1);
        ExitCode::from(77)
    }
}

/// A gcc compile of `a.c` through the whole C family with the scripted compiler `cc`.
fn c_compile(dir: &Path, cfg: &Config, runner: &Probed) -> ExitCode {
    let cache = Cache::open(&cfg.dir, 1 << 30, Duration::from_millis(50), 1 << 30);
    let p = Pipeline {
        cfg,
        cache: &cache,
        runner,
    };
    let args: Vec<OsString> = vec![
        "-O2".into(),
        "-c".into(),
        dir.join("a.c").into(),
        "-o".into(),
        dir.join("a.o").into(),
    ];
    let started = std::time::SystemTime::now();
    super::c::run(&p, dir.join("cc"), "gcc".as_ref(), &args, started)
}

fn probe_bench() -> (tempfile::TempDir, Probed) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Not executable: only the runner can "run" it.
    fs::write(dir.path().join("cc"), b"scripted compiler\n").expect("compiler");
    fs::write(dir.path().join("a.c"), b"int v = V;\n").expect("source");
    let runner = Probed::new(dir.path());
    (dir, runner)
}

#[test]
fn the_preprocessor_runs_through_the_runner_and_decides_the_key() {
    let (dir, runner) = probe_bench();
    let cfg = Config {
        dir: dir.path().join("cache"),
        direct_mode: false,
        depend_mode: false,
        ..Config::default()
    };
    assert!(same(c_compile(dir.path(), &cfg, &runner), 0));
    assert!(same(c_compile(dir.path(), &cfg, &runner), 0));
    runner.version.set(2);
    assert!(same(c_compile(dir.path(), &cfg, &runner), 0));
    assert_eq!(runner.execs.get(), 0, "every compile had a key");
    let s = Stats::read_all(&cfg.dir).expect("stats");
    assert_eq!(
        (s.misses, s.local_hits),
        (2, 1),
        "another preprocessor output is another key: {s:?}"
    );
    assert_eq!(runner.runs_with("-E"), 3, "one preprocessor run a compile");
    assert_eq!(runner.runs_with("-c"), 2, "and a compile a miss");
    let runs = runner.runs.borrow();
    assert!(
        runs.iter().all(|c| c.program == dir.path().join("cc")),
        "{runs:?}"
    );
    let pp = runs.iter().filter(|c| c.args.iter().any(|a| a == "-E"));
    assert!(
        pp.clone()
            .all(|c| c.null_stdin && c.null_stderr && !c.null_stdout)
    );
    assert_eq!(
        fs::read(dir.path().join("a.o")).expect("object"),
        b"object 2"
    );
}

#[test]
fn the_include_list_probe_runs_through_the_runner_and_a_hit_runs_nothing() {
    let (dir, runner) = probe_bench();
    let cfg = Config {
        dir: dir.path().join("cache"),
        depend_mode: false,
        ..Config::default()
    };
    assert!(same(c_compile(dir.path(), &cfg, &runner), 0));
    assert_eq!(
        runner.runs_with("-v"),
        1,
        "the manifest asked for the search list"
    );
    let probe = runner
        .runs
        .borrow()
        .iter()
        .find(|c| c.args.iter().any(|a| a == "-v"))
        .cloned();
    let probe = probe.expect("the search-list probe");
    assert_eq!(probe.env, vec![("LC_ALL".into(), "C".into())]);
    assert!(probe.null_stdin && probe.null_stdout && !probe.null_stderr);
    let before = runner.runs.borrow().len();
    fs::remove_file(dir.path().join("a.o")).expect("rm object");
    assert!(same(c_compile(dir.path(), &cfg, &runner), 0));
    assert_eq!(
        runner.runs.borrow().len(),
        before,
        "a direct-mode hit starts no probe and no compile"
    );
    assert_eq!(
        fs::read(dir.path().join("a.o")).expect("object"),
        b"object 1"
    );
    let s = Stats::read_all(&cfg.dir).expect("stats");
    assert_eq!((s.misses, s.local_hits), (1, 1), "{s:?}");
}

#[test]
fn rustc_identity_probes_run_through_the_runner() {
    let (dir, runner) = probe_bench();
    let rustc = dir.path().join("rustc");
    fs::write(&rustc, b"scripted rustc\n").expect("rustc");
    let id = |v: u32, cache: &str| {
        runner.version.set(v);
        crate::compiler::rust::key::rustc_identity(&runner, &dir.path().join(cache), &rustc)
            .expect("identity")
    };
    let one = id(1, "c1");
    let two = id(2, "c2");
    assert_eq!(one.sysroot, runner.sysroot);
    assert_eq!(one.host, "x86_64-unknown-linux-gnu");
    assert_ne!(one.digest, two.digest, "another -vV is another toolchain");
    assert_eq!(runner.runs_with("-vV"), 2);
    let again = id(2, "c2");
    assert_eq!(again.digest, two.digest);
    assert_eq!(runner.runs_with("-vV"), 2, "the identity is memoised");
    assert!(
        runner
            .runs
            .borrow()
            .iter()
            .all(|c| c.program == rustc && c.null_stdin)
    );
}
