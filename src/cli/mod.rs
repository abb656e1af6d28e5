//! The `distc` command line: clap definitions and dispatch only.
//!
//! `src/main.rs` decides whether argv is a compiler invocation (wrapper mode) or a command; for
//! commands it calls [`main`]. Each subcommand's work lives in its own module: [`build`] and
//! [`build_rust`] (`build`, `build-project`), [`inspect`], [`stats`], [`flush`], [`peer`], [`mesh`],
//! [`status`] and [`top`]. Each takes a loaded [`Config`].

mod build;
mod build_rust;
mod flush;
mod inspect;
mod mesh;
mod peer;
mod slots;
mod stats;
mod status;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgAction, FromArgMatches, Parser, Subcommand};

use crate::config::{Config, Raw, Source};

/// A peer-to-peer compiler cache for C, C++ and Rust.
///
/// Wrap a compile with `distc gcc -c a.c -o a.o` (or `make CC="distc gcc"`,
/// `-DCMAKE_C_COMPILER_LAUNCHER=distc`), or use the commands below.
#[derive(Debug, Parser)]
#[command(name = "distc", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug, -vvv: trace); overrides DISTC_LOG and `log`.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Cache directory for this command (overrides DISTC_DIR and `dir` in the config file).
    #[arg(long, global = true, value_name = "PATH")]
    pub cache_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build one C, C++ or Rust source file into an executable, through the cache.
    ///
    /// Prints whether the compile was a cache hit or miss, the executable's size and the time
    /// taken. C and C++ files are compiled to an object (cached) and linked; a .rs file is
    /// compiled by rustc through the cache.
    Build {
        /// The source file (.c, .cpp, .cc, .cxx, .rs).
        file: PathBuf,
        /// Output executable [default: the file's stem in the current directory].
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Extra compiler flags, after `--` (e.g. `-- -O2 -DNDEBUG`).
        #[arg(last = true, value_name = "FLAGS", allow_hyphen_values = true)]
        flags: Vec<String>,
    },

    /// Build every C/C++ source under DIR into cached objects in parallel, then link them.
    ///
    /// Sources are found recursively; build/, target/ and hidden directories are skipped.
    /// Objects go to DIR/build/<source path>.o; DIR and DIR/include are on the include path.
    /// The link uses the C++ driver when any source is C++. A directory with Cargo.toml is
    /// built by cargo with distc as its rustc wrapper.
    BuildProject {
        /// The project directory.
        dir: PathBuf,
        /// Output executable [default: DIR/build/<name of DIR>].
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Parallel compiles [default: the number of CPUs].
        #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
        jobs: Option<u32>,
        /// Extra compiler flags, after `--` (e.g. `-- -O2 -Wall`).
        #[arg(last = true, value_name = "FLAGS", allow_hyphen_values = true)]
        flags: Vec<String>,
    },

    /// Show what the cache sees for one compile: key, inputs, headers, owners, why it missed.
    ///
    /// Inspects the compile `distc build` runs (`cc -c FILE -o STEM.o FLAGS`, `c++` for C++,
    /// rustc for a .rs file) without compiling: the key it would look up, the inputs the key
    /// covers, the headers found, whether the result is stored, the peers that own it, why it
    /// is not cacheable, and which inputs changed since the last stored result for this source.
    Inspect {
        /// The source file (.c, .cpp, .cc, .cxx, .rs).
        file: PathBuf,
        /// Compiler flags of the compile to inspect, after `--` (e.g. `-- -O2 -Iinclude`).
        #[arg(last = true, value_name = "FLAGS", allow_hyphen_values = true)]
        flags: Vec<String>,
    },

    /// Show cache statistics: hits, misses, uncacheable compiles by reason, errors, store usage.
    Stats {
        /// Print JSON (integer `hits`, `misses`, `errors`, `entries`, `bytes`; object
        /// `uncacheable` reason -> count; `hit_rate` from 0 to 1).
        #[arg(long)]
        json: bool,
        /// Reset the counters to zero (stored results are kept; `distc flush` removes them).
        #[arg(long, conflicts_with = "json")]
        zero: bool,
    },

    /// Empty the cache: every stored result and direct-mode manifest, here and on every peer.
    ///
    /// The local store is emptied first; when a local peer runs, it asks every reachable peer of
    /// the mesh to empty its store too and names the ones it could not reach.
    Flush,

    /// Run this machine's mesh peer in the foreground (see docs/mesh.md).
    Peer(crate::cli::peer::PeerArgs),

    /// Create or join a mesh: its shared key and one-line join token.
    Mesh {
        #[command(subcommand)]
        action: crate::cli::mesh::MeshAction,
    },

    /// Show the mesh: a summary line (members up, suspect, down; ring shares; membership
    /// traffic), every known peer (state, last seen, entries, bytes, ring share; the first 20
    /// unless --all), and addresses that cannot join (another mesh key, or none), and why.
    Status {
        /// Print JSON (every peer, whatever the size of the mesh).
        #[arg(long)]
        json: bool,
        /// List every peer (without it, the table stops after 20 rows and says how many more).
        #[arg(long)]
        all: bool,
    },

    /// How many jobs this machine can usefully run now: its cores plus the free compile slots
    /// of mesh members that have one of its compilers (`make -j"$(distc slots)"`).
    Slots {
        /// Every member's cores and free slots.
        #[arg(long)]
        list: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },

    /// Watch the cache live: the mesh's peers, this machine's compiles as they happen, and
    /// the hit rate of the last minutes. `q` quits.
    ///
    /// Reads the counters the wrappers keep and, when a peer runs, the mesh as it sees it;
    /// without a peer it shows the local cache only. Refreshes once a second.
    Top {
        /// Print one frame as text and exit (also what happens when stdout is no terminal).
        #[arg(long)]
        once: bool,
    },

    /// Print a shell completion script (e.g. `distc completions bash > ~/.local/share/bash-completion/completions/distc`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff), e.g. `distc man | man -l -`.
    Man,
}

/// `distc --version`: the release and every format and protocol version it speaks, so two
/// machines can be compared at a glance.
fn long_version() -> String {
    let mesh: Vec<String> = distc_peer::protocol::PROTOCOLS
        .iter()
        .map(|p| p.to_string())
        .collect();
    format!(
        "{}\nmesh protocols: {} (preferred first)\nlocal IPC protocol: {}\n\
         key formats: C/C++ {}, Rust {}; result bundle {}; store entry {} (signed)",
        env!("CARGO_PKG_VERSION"),
        mesh.join(", "),
        distc_peer::ipc::IPC_VERSION,
        crate::compiler::c::key::FORMAT_VERSION,
        crate::compiler::rust::key::RUST_FORMAT_VERSION,
        crate::cache::bundle::BUNDLE_VERSION,
        distc_peer::store::ENTRY_FORMAT,
    )
}

/// The full clap command: the derive definitions plus the computed long version. Parsing,
/// completions and the man page all start here.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().long_version(long_version())
}

/// Sets up logging to stderr (command output on stdout stays parseable): `-v` flags win,
/// else the configured filter (`log` in the config file, or DISTC_LOG).
fn init_logging(verbose: u8, configured: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match verbose {
        0 => EnvFilter::try_new(configured).unwrap_or_else(|e| {
            eprintln!(
                "distc: warning: log filter {configured:?} (DISTC_LOG or `log`) is not valid: \
                 {e}; using \"warn\". Examples: info, debug, distc=debug,distc_peer=trace"
            );
            EnvFilter::new("warn")
        }),
        1 => EnvFilter::new("info"),
        2 => EnvFilter::new("debug"),
        _ => EnvFilter::new("trace"),
    };
    // A second initialisation (tests calling main twice) is harmless; ignore it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses argv and runs the command. Errors are returned to `src/main.rs`, which prints them.
pub fn main() -> Result<ExitCode> {
    // `src/main.rs` takes an executable path as a compiler to wrap; any other path is a
    // compiler that does not exist (or a file given without a command), not a subcommand.
    if let Some(first) = std::env::args_os().nth(1)
        && !first.as_encoded_bytes().starts_with(b"-")
        && first.as_encoded_bytes().contains(&b'/')
    {
        anyhow::bail!(
            "{} is not an executable file: to wrap a compile, give a compiler first \
             (`distc gcc -c a.c`, `distc /usr/bin/cc -c a.c`); `distc --help` lists the commands",
            std::path::Path::new(&first).display()
        );
    }
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    run(cli)
}

/// The configuration for this command: defaults < file < environment < global flags.
fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = Config::load().context("cannot load the distc configuration")?;
    if let Some(dir) = &cli.cache_dir {
        let text = dir.to_string_lossy();
        config
            .set("dir", Raw::Text(&text), &Source::Flag("--cache-dir".into()))
            .context("bad --cache-dir")?;
    }
    // Commands run wrapper processes in other directories (build-project): a relative cache
    // directory must mean the same place for all of them.
    config.dir = std::path::absolute(&config.dir).with_context(|| {
        format!(
            "cannot resolve the cache directory {}",
            config.dir.display()
        )
    })?;
    Ok(config)
}

/// Dispatches a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let config = load_config(&cli)?;
    // A peer's log is its only output: show its info lines unless configured otherwise.
    let peer_default = matches!(cli.command, Command::Peer(_)) && config.log == "warn";
    init_logging(cli.verbose, if peer_default { "info" } else { &config.log });
    tracing::debug!(dir = %config.dir.display(), "configuration loaded");
    match cli.command {
        Command::Inspect { file, flags } => crate::cli::inspect::inspect(&config, &file, &flags),
        Command::Stats { json, zero } => {
            crate::cli::stats::stats(&config, json, zero)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Flush => {
            crate::cli::flush::flush(&config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Peer(args) => crate::cli::peer::peer(&config, &args),
        Command::Mesh { action } => crate::cli::mesh::mesh(&config, &action),
        Command::Status { json, all } => crate::cli::status::status(&config, json, all),
        Command::Top { once } => crate::cli::top::top(&config, once),
        Command::Slots { list, json } => crate::cli::slots::slots(&config, list, json),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "distc", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(command())
                .render(&mut std::io::stdout())
                .context("cannot write the manual page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Build {
            file,
            output,
            flags,
        } => crate::cli::build::build(&config, &file, output.as_deref(), &flags),
        Command::BuildProject {
            dir,
            output,
            jobs,
            flags,
        } => crate::cli::build::build_project(&crate::cli::build::ProjectOptions {
            config: &config,
            dir: &dir,
            output: output.as_deref(),
            jobs: jobs.map(|j| j as usize),
            flags: &flags,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_after_double_dash() {
        let cli = Cli::try_parse_from(["distc", "build", "a.c", "-o", "app", "--", "-O2", "-DX=1"])
            .expect("parse");
        match cli.command {
            Command::Build {
                file,
                output,
                flags,
            } => {
                assert_eq!(file, PathBuf::from("a.c"));
                assert_eq!(output, Some(PathBuf::from("app")));
                assert_eq!(flags, vec!["-O2".to_string(), "-DX=1".to_string()]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cache_dir_flag_does_not_capture_the_project_dir() {
        let cli = Cli::try_parse_from(["distc", "build-project", "proj"]).expect("parse");
        assert_eq!(cli.cache_dir, None);
        let cli = Cli::try_parse_from(["distc", "--cache-dir", "/c", "build-project", "proj"])
            .expect("parse");
        assert_eq!(cli.cache_dir, Some(PathBuf::from("/c")));
        match cli.command {
            Command::BuildProject { dir, .. } => assert_eq!(dir, PathBuf::from("proj")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_jobs_rejected() {
        assert!(Cli::try_parse_from(["distc", "build-project", "d", "-j", "0"]).is_err());
        assert!(Cli::try_parse_from(["distc", "build-project", "d", "-j", "x"]).is_err());
        assert!(Cli::try_parse_from(["distc", "build-project", "d", "-j", "4"]).is_ok());
    }
}
