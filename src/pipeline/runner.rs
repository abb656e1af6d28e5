//! The one seam between distc and the compiler processes it starts: a compile and every
//! compiler probe (the C compiler's include search list and preprocessor run, rustc's `-vV`,
//! sysroot and dep-info passes) through [`Runner::output`], the uncached compiler through
//! [`Runner::exec`]. [`System`] runs them for real ([`InProcess`] too, for callers with work
//! left after the compile); the pipeline's tests script them.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};

/// A compiler invocation. Unset fields keep the requester's: its environment, working
/// directory and stdin; stdout and stderr are captured unless discarded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Command {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// stdin is not the requester's (rustc: a compile never reads it; the jobserver
    /// descriptors cargo passed are inherited either way).
    pub null_stdin: bool,
    /// stdout goes nowhere (a probe that reads only stderr): [`Finished::stdout`] is empty.
    pub null_stdout: bool,
    /// stderr goes nowhere: [`Finished::stderr`] is empty.
    pub null_stderr: bool,
    /// Variables set on top of the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory, when not the requester's.
    pub cwd: Option<PathBuf>,
}

impl Command {
    /// `program` with `args`, everything else as [`Command`] says by default.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> Command {
        Command {
            program: program.into(),
            args,
            ..Command::default()
        }
    }
}

/// What a compile that ran left: its captured streams and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finished {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The exit code (128 + signal when killed).
    pub code: i32,
    pub success: bool,
}

impl Finished {
    pub fn from_status(status: ExitStatus, stdout: Vec<u8>, stderr: Vec<u8>) -> Finished {
        Finished {
            stdout,
            stderr,
            code: status_code(status),
            success: status.success(),
        }
    }
}

/// A process's status as an exit code: its code, or 128 + the signal that killed it.
pub(crate) fn status_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

pub(crate) trait Runner: std::fmt::Debug {
    /// Runs `cmd` to completion with stdout and stderr captured.
    fn output(&self, cmd: &Command) -> io::Result<Finished>;
    /// Runs `program` in place of this process (for real: returns only when it cannot start).
    fn exec(&self, program: &std::path::Path, args: &[OsString]) -> ExitCode;
    /// This runner, when it may run commands from another thread at the same time (real
    /// processes); `None` keeps everything on the calling thread (scripted test runners).
    fn concurrent(&self) -> Option<&(dyn Runner + Sync)> {
        None
    }
}

/// Real processes.
#[derive(Debug)]
pub(crate) struct System;

impl Runner for System {
    fn concurrent(&self) -> Option<&(dyn Runner + Sync)> {
        Some(self)
    }

    fn output(&self, cmd: &Command) -> io::Result<Finished> {
        let mut c = std::process::Command::new(&cmd.program);
        c.args(&cmd.args);
        if cmd.null_stdin {
            c.stdin(Stdio::null());
        }
        if cmd.null_stdout {
            c.stdout(Stdio::null());
        }
        if cmd.null_stderr {
            c.stderr(Stdio::null());
        }
        c.envs(cmd.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &cmd.cwd {
            c.current_dir(dir);
        }
        let out = c.output()?;
        Ok(Finished::from_status(out.status, out.stdout, out.stderr))
    }

    fn exec(&self, program: &std::path::Path, args: &[OsString]) -> ExitCode {
        let err = std::process::Command::new(program).args(args).exec();
        eprintln!("distc: error: cannot run {}: {err}", program.display());
        ExitCode::from(127)
    }
}

/// Real processes for a caller that runs the pipeline in its own process and has work left
/// after the compile (`distc build FILE.rs`): the uncached compiler runs as a child, waited
/// for, instead of replacing this process.
#[derive(Debug)]
pub(crate) struct InProcess;

impl Runner for InProcess {
    fn concurrent(&self) -> Option<&(dyn Runner + Sync)> {
        Some(self)
    }

    fn output(&self, cmd: &Command) -> io::Result<Finished> {
        System.output(cmd)
    }

    fn exec(&self, program: &std::path::Path, args: &[OsString]) -> ExitCode {
        match std::process::Command::new(program).args(args).status() {
            Ok(status) => super::exit_code(status_code(status)),
            Err(err) => {
                eprintln!("distc: error: cannot run {}: {err}", program.display());
                ExitCode::from(127)
            }
        }
    }
}
