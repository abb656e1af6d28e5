//! The rustup proxy's answer is memoised, so a Rust hit starts no process, and everything
//! that makes rustup pick another toolchain picks another key: `RUSTUP_TOOLCHAIN`, a
//! `rust-toolchain.toml` appearing (and going again).
//!
//! The test has its own `RUSTUP_HOME` with two linked toolchains (nothing is downloaded):
//! `main`, the installed toolchain, and `fake`, a toolchain whose `bin/rustc` is a script that
//! logs every run and execs the real rustc (its own content makes it another compiler to
//! distc). When `rustc` on PATH is not a rustup proxy the test prints `SKIP:` and passes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn distc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_distc"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Toolchains {
    root: tempfile::TempDir,
    rustup_home: PathBuf,
    fake_log: PathBuf,
    fake_rustc: PathBuf,
    distc_dir: PathBuf,
    project: PathBuf,
}

impl Toolchains {
    fn new() -> Option<Toolchains> {
        let proxy = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("rustc"))
                .find(|c| c.is_file())
        })?;
        let canon = std::fs::canonicalize(&proxy).ok()?;
        if !canon
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("rustup"))
        {
            println!("SKIP: rustc on PATH is not a rustup proxy");
            return None;
        }
        let sysroot = run(Command::new("rustc")
            .args(["--print", "sysroot"])
            .env_remove("RUSTC"));
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        let root = tempfile::tempdir().expect("tempdir");
        let rustup_home = root.path().join("rustup-home");
        let fake = root.path().join("fake-toolchain");
        let fake_log = root.path().join("fake.log");
        std::fs::create_dir_all(fake.join("bin")).expect("mkdir fake");
        std::os::unix::fs::symlink(sysroot.join("lib"), fake.join("lib")).expect("symlink lib");
        let fake_rustc = fake.join("bin/rustc");
        std::fs::write(
            &fake_rustc,
            format!(
                "#!/bin/sh\n# the fake toolchain\nprintf '%s\\n' \"$*\" >> '{log}'\n\
                 if [ \"$1\" = --print ] && [ \"$2\" = sysroot ]; then echo '{fake}'; exit 0; fi\n\
                 exec '{real}' \"$@\"\n",
                log = fake_log.display(),
                fake = fake.display(),
                real = sysroot.join("bin/rustc").display()
            ),
        )
        .expect("write fake rustc");
        std::fs::set_permissions(&fake_rustc, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let t = Toolchains {
            distc_dir: root.path().join("distc"),
            project: root.path().join("project"),
            rustup_home,
            fake_log,
            fake_rustc,
            root,
        };
        let link = |name: &str, dir: &Path| {
            run(t.rustup().args(["toolchain", "link", name]).arg(dir));
        };
        link("main", &sysroot);
        link("fake", &fake);
        run(t.rustup().args(["default", "main"]));
        std::fs::create_dir_all(&t.project).expect("mkdir project");
        std::fs::write(
            t.project.join("hello.rs"),
            "fn main() { println!(\"hello\"); }\n",
        )
        .expect("write hello.rs");
        Some(t)
    }

    fn rustup(&self) -> Command {
        let mut c = Command::new("rustup");
        c.env("RUSTUP_HOME", &self.rustup_home)
            .env_remove("RUSTUP_TOOLCHAIN");
        c
    }

    fn distc(&self, args: &[&str], toolchain: Option<&str>) -> String {
        let mut c = Command::new(distc_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("DISTC_") || k.starts_with("RUSTUP_") || k == "RUSTC" {
                c.env_remove(&k);
            }
        }
        c.args(args)
            .current_dir(&self.project)
            .env("RUSTUP_HOME", &self.rustup_home)
            .env("DISTC_DIR", &self.distc_dir)
            .env("DISTC_AUTO_START", "0");
        if let Some(t) = toolchain {
            c.env("RUSTUP_TOOLCHAIN", t);
        }
        String::from_utf8_lossy(&run(&mut c).stdout).into_owned()
    }

    fn build(&self, toolchain: Option<&str>) -> String {
        self.distc(&["build", "hello.rs"], toolchain)
    }

    /// (key, rustc) as `distc inspect hello.rs` shows them.
    fn inspect(&self, toolchain: Option<&str>) -> (String, String) {
        let text = self.distc(&["inspect", "hello.rs"], toolchain);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (field("key:"), field("rustc:"))
    }

    fn fake_runs(&self) -> usize {
        std::fs::read_to_string(&self.fake_log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

#[test]
fn toolchain_switches_change_the_key_and_hits_start_no_rustc() {
    let Some(t) = Toolchains::new() else { return };
    let _keep = t.root.path();

    // The fake toolchain: a miss runs it, a hit (the proxy's answer memoised) does not.
    let first = t.build(Some("fake"));
    assert!(first.contains("cache miss"), "{first}");
    let runs = t.fake_runs();
    assert!(runs > 0, "the fake toolchain never ran");
    let again = t.build(Some("fake"));
    assert!(again.contains("cache hit"), "{again}");
    assert_eq!(t.fake_runs(), runs, "a hit ran the toolchain's rustc");

    // The default toolchain is another compiler: another key, its own miss.
    let main = t.build(None);
    assert!(main.contains("cache miss"), "{main}");
    assert_eq!(
        t.fake_runs(),
        runs,
        "the default toolchain ran the fake one"
    );
    let main = t.build(None);
    assert!(main.contains("cache hit"), "{main}");

    let (key_main, rustc_main) = t.inspect(None);
    let (key_fake, rustc_fake) = t.inspect(Some("fake"));
    assert_ne!(key_main, key_fake);
    assert!(
        rustc_fake.starts_with(&t.fake_rustc.display().to_string()),
        "{rustc_fake}"
    );
    assert!(!rustc_main.contains("fake"), "{rustc_main}");

    // A rust-toolchain.toml appearing picks the fake toolchain; going, the default again.
    let file = t.project.join("rust-toolchain.toml");
    std::fs::write(&file, "[toolchain]\nchannel = \"fake\"\n").expect("write toolchain file");
    assert_eq!(t.inspect(None).0, key_fake);
    let runs = t.fake_runs();
    let hit = t.build(None);
    assert!(hit.contains("cache hit"), "{hit}");
    assert_eq!(t.fake_runs(), runs, "a hit ran the toolchain's rustc");
    std::fs::remove_file(&file).expect("remove toolchain file");
    assert_eq!(t.inspect(None).0, key_main);
    // RUSTUP_TOOLCHAIN wins over the default, and its absence gives the default back.
    assert_eq!(t.inspect(Some("fake")).0, key_fake);
    assert_eq!(t.inspect(Some("main")).0, key_main);
}
