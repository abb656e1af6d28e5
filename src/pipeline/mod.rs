//! The cached compile: a wrapped compiler invocation, from argv to exit code.
//!
//! [`invoke`] recognises a compiler invocation in argv and finds the real compiler; each
//! family's entry ([`c`] for gcc/clang, [`rust`] for rustc) parses the command line, turns
//! away what cannot be cached, and hands [`Pipeline::run`] a [`Family`]: the one cached
//! compile, the same for every compiler, read top to bottom here:
//!
//! 1. direct mode: the local manifest's result key for the files as they are now -> lookup;
//! 2. in a mesh, a manifest another machine shared, checked against this machine's files;
//! 3. depend mode (outside a mesh): compile at once, key from what the compile itself read;
//! 4. otherwise the full key (preprocessor / dep-info pass) -> lookup (local store, then mesh);
//! 5. a miss: the per-key lock (one compile per key across processes; a waiter that finds the
//!    result stored replays it), compile through the [`Runner`], store, record the manifest,
//!    replay the compiler's streams and exit with its status.
//!
//! Every cache fault degrades to running the real compiler; a result that cannot be replayed
//! is counted and treated as absent. Nothing here starts a runtime or talks to the peer except
//! through [`Cache`] (the ipc client, only while the mesh is active).

pub mod c;
mod invoke;
mod offload;
mod outcome;
mod runner;
pub mod rust;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use distc_peer::Key;

pub use invoke::{Invocation, detect, main};
pub(crate) use invoke::{in_process, resolve_compiler};
pub(crate) use outcome::Outcome;
pub use outcome::RESULT_FILE_ENV;
pub(crate) use runner::{Command, Finished, InProcess, Runner, System};

use crate::cache::bundle::Bundle;
use crate::cache::lock::{KeyLock, LOCK_WAIT};
use crate::cache::stats::Event;
use crate::cache::{Cache, Found};
use crate::config::Config;

/// What differs between compiler families; everything else is [`Pipeline::run`].
pub(crate) trait Family {
    /// What the manifest (and the miss record) keeps beside a result key: the inputs the key
    /// was computed from.
    type Inputs;
    /// How depend mode learns a compile's inputs from the compile itself.
    type Depend;

    /// The compile as given (for logs).
    fn describe(&self) -> String;
    /// The real compiler and the arguments as given: what runs when nothing is cached.
    fn original(&self) -> (&Path, &[OsString]);
    /// Direct mode: the result key the local manifest gives for the files as they are now.
    fn manifest_lookup(&self) -> Option<Key>;
    /// Direct mode in a mesh: a manifest another machine shared, checked against this
    /// machine's files. Only families that share manifests have one.
    fn shared_lookup(&self, _cache: &Cache) -> Option<Key> {
        None
    }
    /// Depend mode for this job, or `None` when it cannot learn the inputs without changing
    /// the outputs (the full key is computed first then).
    fn depend(&self) -> Option<Self::Depend>;
    /// The name depend mode's compile is locked under (the key is not known before it).
    fn manifest_lock(&self) -> String;
    /// The key of a depend-mode compile that has run, or the stats label of why not.
    fn depend_key(&self, depend: &Self::Depend) -> Result<(Key, Self::Inputs), &'static str>;
    /// The full key: known before compiling, the one every machine of a mesh computes.
    fn full_key(&self) -> Result<(Key, Self::Inputs), NoKey>;
    /// Records what `key` was computed from (manifest; after a store also the miss record).
    fn record(&self, cache: &Cache, key: &Key, inputs: &Self::Inputs, stored: bool);
    /// The real compile (with depend mode's extra arguments).
    fn command(&self, depend: Option<&Self::Depend>) -> Command;
    /// What the requester sees of a compile that ran (rustc: without the notice of depend
    /// mode's own dep-info file).
    fn tidy(&self, done: Finished, _depend: Option<&Self::Depend>) -> Finished {
        done
    }
    /// The result of a successful compile: its outputs read back, its streams as stored.
    fn collect(&self, done: &Finished) -> Result<Bundle, Skip>;
    /// The key `bundle`, compiled for `key`, is stored (and its manifest entry recorded)
    /// under: `key`, unless the outputs show that the key left out something they depend on
    /// (rustc: a path-valued env-dep keyed normalised but compiled in verbatim).
    fn store_key(&self, key: Key, _inputs: &Self::Inputs, _bundle: &Bundle) -> Key {
        key
    }
    /// Writes the compiler's streams of a compile that just ran.
    fn print(&self, done: &Finished);
    /// Writes a stored result's outputs where this command line wants them.
    fn replay_outputs(&self, bundle: &Bundle) -> Result<(), String>;
    /// Writes a stored result's streams.
    fn replay_streams(&self, bundle: &Bundle);
    /// What else hears of the outcome (the per-crate log of `distc build-project`).
    fn log(&self, _outcome: &Outcome) {}
    /// Compiles on a mesh member instead of here ([`offload`]), when the family can; `Some`
    /// only for a clean success with its outputs written where a local compile writes them.
    /// While it waits for a member's slot, a local one may come free: `take_local` takes it
    /// (true), and the family then returns `None` to compile here.
    fn offload(
        &self,
        _distc_dir: &Path,
        _take_local: &mut dyn FnMut() -> bool,
    ) -> Option<Finished> {
        None
    }
    /// Work that [`Family::record`] needs after a compile but that does not depend on it (the
    /// C family's first probe of a compiler's include search list): run on a second thread
    /// while the compile runs.
    fn beside_compile(&self) -> Option<Box<dyn FnOnce() + Send + '_>> {
        None
    }
    /// Why this compile cannot be expected to give the same bytes on another machine (the
    /// stats label), known before compiling; re-verification skips it.
    fn unreproducible(&self) -> Option<&'static str> {
        None
    }
}

/// Why no key could be computed: the compile runs without the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoKey {
    /// The uncacheable label counted and reported.
    pub reason: &'static str,
    /// An error counted besides (the cache failed, not the compile).
    pub error: Option<&'static str>,
}

impl NoKey {
    pub fn uncacheable(reason: &'static str) -> NoKey {
        NoKey {
            reason,
            error: None,
        }
    }
}

/// Why a compiled result is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Counted as uncacheable and reported.
    Uncacheable(&'static str),
    /// Counted as an error of the cache, not reported.
    Error(&'static str),
}

/// How the key of a compile is computed right now (what `distc inspect` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A direct-mode manifest matches the current files: no preprocessor needed.
    Manifest,
    /// Depend mode: from what the compile itself reads.
    Depend,
    /// The full key (preprocessor output / dep-info pass), also what peers are asked for.
    Full,
}

/// One wrapped compile's handles: configuration, cache and the process runner.
pub(crate) struct Pipeline<'a> {
    pub cfg: &'a Config,
    pub cache: &'a Cache,
    pub runner: &'a dyn Runner,
}

impl Pipeline<'_> {
    /// The cached compile.
    pub fn run<F: Family>(&self, f: &F) -> ExitCode {
        if let Some(key) = f.manifest_lookup() {
            match self.cache.get(&key) {
                Some(found) => {
                    tracing::debug!("direct-mode hit {key} for {}", f.describe());
                    if let Some(code) = self.serve(f, found, &key) {
                        return code;
                    }
                }
                None => tracing::debug!("direct-mode key {key} is no longer stored"),
            }
        }
        if let Some(key) = f.shared_lookup(self.cache)
            && let Some(found) = self.cache.get(&key)
            && let Some(code) = self.serve(f, found, &key)
        {
            return code;
        }
        if self.depend_allowed()
            && let Some(depend) = f.depend()
        {
            return self.miss(
                f,
                &f.manifest_lock(),
                || f.manifest_lookup(),
                Some(&depend),
                || f.depend_key(&depend),
            );
        }
        let (key, inputs) = match f.full_key() {
            Ok(k) => k,
            Err(no) => {
                if let Some(e) = no.error {
                    self.cache.count(Event::Error(e));
                }
                return self.uncached(f, no.reason);
            }
        };
        if let Some(found) = self.cache.get(&key)
            && let Some(code) = self.serve(f, found, &key)
        {
            f.record(self.cache, &key, &inputs, false);
            return code;
        }
        self.miss(
            f,
            &key.to_string(),
            || Some(key),
            None,
            || Ok((key, inputs)),
        )
    }

    /// The mode [`Pipeline::run`] computes the key of `f` in, without compiling.
    pub fn mode<F: Family>(&self, f: &F) -> Mode {
        if f.manifest_lookup().is_some() {
            Mode::Manifest
        } else if self.depend_allowed() && f.depend().is_some() {
            Mode::Depend
        } else {
            Mode::Full
        }
    }

    /// Depend mode only outside a mesh: there the key must be known before compiling, it is
    /// what peers are asked for.
    fn depend_allowed(&self) -> bool {
        self.cfg.direct_mode && self.cfg.depend_mode && !self.cache.mesh_active()
    }

    /// Compiles under the per-key lock `lock`. A process that waited for the lock first looks
    /// for the result the holder stored (`stored_key`); `keying` gives the key once the
    /// compile has run (depend mode computes it from the compile).
    fn miss<F: Family>(
        &self,
        f: &F,
        lock: &str,
        stored_key: impl Fn() -> Option<Key>,
        depend: Option<&F::Depend>,
        keying: impl FnOnce() -> Result<(Key, F::Inputs), &'static str>,
    ) -> ExitCode {
        let (lock, waited) = match KeyLock::acquire(&self.cfg.dir, lock, LOCK_WAIT) {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("no key lock: {e}");
                (None, false)
            }
        };
        if waited
            && let Some(key) = stored_key()
            && let Some(found) = self.cache.get(&key)
            && let Some(code) = self.serve(f, found, &key)
        {
            // Another process compiled it while we waited.
            return code;
        }
        let cmd = f.command(depend);
        // One local slot per running compile: with all of them taken the machine is busy,
        // and an idle member may compile this instead.
        // The core count (cgroup files) is read only when the first slot is taken, and once.
        let counted = std::cell::OnceCell::new();
        let cores = || *counted.get_or_init(distc_peer::slots::cores);
        let mut slot = distc_peer::slots::take(&self.cfg.dir, cores);
        let remote = if matches!(slot, Ok(None))
            && depend.is_none()
            && self.cfg.offload
            && self.cache.mesh_active()
            && offload::remote_slots(&self.cfg.dir) > 0
        {
            // A wait for a member's slot ends as soon as a local one is free: then it is
            // held for the local compile.
            let mut take_local = || match distc_peer::slots::take(&self.cfg.dir, cores) {
                Ok(Some(s)) => {
                    slot = Ok(Some(s));
                    true
                }
                _ => false,
            };
            f.offload(&self.cfg.dir, &mut take_local)
        } else {
            None
        };
        if remote.is_some() {
            self.cache.count(Event::Offloaded);
        }
        let ran = std::thread::scope(|s| {
            let beside = f.beside_compile().map(|w| s.spawn(w));
            let ran = remote.map_or_else(|| self.runner.output(&cmd), Ok);
            if let Some(h) = beside
                && h.join().is_err()
            {
                tracing::debug!("the work beside the compile failed");
            }
            ran
        });
        let done = match ran {
            Ok(d) => f.tidy(d, depend),
            Err(e) => {
                eprintln!("distc: error: cannot run {}: {e}", cmd.program.display());
                return ExitCode::from(127);
            }
        };
        drop(slot);
        let stored = if done.success {
            f.collect(&done)
                .and_then(|b| keying().map(|k| (b, k)).map_err(Skip::Uncacheable))
        } else {
            Err(Skip::Uncacheable("compile-failed"))
        };
        match stored {
            Ok((bundle, (key, inputs))) => {
                let key = f.store_key(key, &inputs, &bundle);
                self.cache.put(&key, &bundle);
                f.record(self.cache, &key, &inputs, true);
                self.finish(f, Outcome::Miss);
            }
            Err(Skip::Uncacheable(reason)) => {
                tracing::debug!("{} not cached: {reason}", f.describe());
                self.finish(f, Outcome::Uncacheable(reason.into()));
            }
            Err(Skip::Error(e)) => self.cache.count(Event::Error(e)),
        }
        drop(lock);
        f.print(&done);
        exit_code(done.code)
    }

    /// Replays a stored result; `None` (counted as a replay error) when it cannot be used.
    /// A share (`verify_rate`) of the hits on entries another machine produced is compiled
    /// here instead and compared ([`Pipeline::reverify`]).
    fn serve<F: Family>(&self, f: &F, found: Found, key: &Key) -> Option<ExitCode> {
        let outcome = if found.remote {
            Outcome::RemoteHit
        } else {
            Outcome::Hit
        };
        if let Some(producer) = found.producer
            && self.cfg.verify_rate.sample()
            && let Some(code) = self.reverify(f, &found.bundle, &producer, key, &outcome)
        {
            return Some(code);
        }
        let bundle = found.bundle;
        match f.replay_outputs(&bundle) {
            Ok(()) => {
                self.finish(f, outcome);
                f.replay_streams(&bundle);
                Some(exit_code(bundle.exit_code))
            }
            Err(e) => {
                tracing::warn!(
                    "cannot replay cached result {key} for {}: {e}",
                    f.describe()
                );
                self.cache.count(Event::Error("replay"));
                None
            }
        }
    }

    /// A sampled hit on another machine's entry: compiled here too, and the build gets the
    /// local result. Outputs and exit status are compared byte for byte (the streams are not:
    /// colour and terminal settings change them). A difference is confirmed by a second
    /// compile here, a second later: when the two local compiles differ, the compile is not reproducible and
    /// the sample is skipped; when they agree, the entry is wrong — a loud warning names key,
    /// source and producer, the entry is replaced by the local result, and the mismatch is
    /// counted by producer. `None`: not sampled after all (serve the hit).
    fn reverify<F: Family>(
        &self,
        f: &F,
        served: &Bundle,
        producer: &[u8; 32],
        key: &Key,
        outcome: &Outcome,
    ) -> Option<ExitCode> {
        if let Some(reason) = f.unreproducible() {
            self.cache.count(Event::VerifySkipped(reason));
            return None;
        }
        let same = |a: &Bundle, b: &Bundle| a.outputs == b.outputs && a.exit_code == b.exit_code;
        let compile = || -> Option<(Finished, Result<Bundle, Skip>)> {
            let cmd = f.command(None);
            let done = f.tidy(self.runner.output(&cmd).ok()?, None);
            let bundle = if done.success {
                f.collect(&done)
            } else {
                Err(Skip::Uncacheable("compile-failed"))
            };
            Some((done, bundle))
        };
        let (done, local) = compile()?;
        self.finish(f, outcome.clone());
        let done = match local {
            Ok(local) if same(&local, served) => {
                self.cache.count(Event::Verified);
                done
            }
            Ok(local) => match confirm(&compile) {
                Some((again, Ok(second))) if same(&second, &local) => {
                    let id = distc_peer::trust::producer_id(producer)
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "an unknown producer".into());
                    eprintln!(
                        "distc: WARNING: the cached result {key} for {} produced by peer {id} \
                         differs from this machine's compile of it (compiled twice here, the \
                         same both times). The build uses the local result, and the entry was \
                         replaced by it. If this peer is not to be trusted: distc mesh \
                         distrust {id}",
                        f.describe()
                    );
                    tracing::warn!(%key, producer = %id, source = %f.describe(), "re-verification mismatch");
                    self.cache.remove(key);
                    self.cache.put(key, &second);
                    self.cache.count(Event::Mismatch(&id));
                    again
                }
                Some((again, _)) => {
                    self.cache.count(Event::VerifySkipped("nonreproducible"));
                    again
                }
                None => {
                    self.cache.count(Event::VerifySkipped("nonreproducible"));
                    done
                }
            },
            Err(_) => {
                self.cache.count(Event::VerifySkipped("compile-failed"));
                done
            }
        };
        f.print(&done);
        Some(exit_code(done.code))
    }

    /// No key: the real compiler replaces this process.
    fn uncached<F: Family>(&self, f: &F, reason: &'static str) -> ExitCode {
        self.finish(f, Outcome::Uncacheable(reason.into()));
        let (real, args) = f.original();
        self.runner.exec(real, args)
    }

    /// Counts and reports an outcome.
    fn finish<F: Family>(&self, f: &F, outcome: Outcome) {
        self.cache.count(outcome.event());
        outcome.report();
        f.log(&outcome);
    }
}

/// The confirming compile of a re-verification that found a difference. A clock in the output
/// (`__TIME__` in a header) changes every second: this compile runs in another second than the
/// first, so such a compile never agrees with itself and is skipped, never reported. Only a
/// difference pays the wait.
fn confirm<T>(compile: &dyn Fn() -> Option<T>) -> Option<T> {
    std::thread::sleep(RECOMPILE_DELAY);
    compile()
}

/// How long re-verification waits before the confirming compile (see [`Pipeline::reverify`]).
const RECOMPILE_DELAY: std::time::Duration = std::time::Duration::from_millis(1100);

/// Counts and reports a compile turned away before a [`Family`] exists, then runs the real
/// compiler in place of this process.
pub(crate) fn pass_through(
    cache: &Cache,
    runner: &dyn Runner,
    real: &Path,
    args: &[OsString],
    reason: &str,
) -> ExitCode {
    tracing::debug!("not cached: {reason}");
    let outcome = Outcome::Uncacheable(reason.into());
    cache.count(outcome.event());
    outcome.report();
    runner.exec(real, args)
}

/// The exit code for a compiler's status (or a stored one): 0-255 as is; anything else, which
/// no process exit gives, is a failure (1), never a success.
pub(crate) fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
