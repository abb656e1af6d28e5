//! `distc mesh init|join|token|trust|distrust`, and the mesh part of `distc flush`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use distc_peer::ipc::IpcClient;
use distc_peer::psk;
use distc_peer::report::FlushReport;

use crate::config::Config;

/// `distc mesh` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum MeshAction {
    /// Create a mesh key (owner-only, in the config dir) and print its one-line join token.
    Init {
        /// Replace an existing key (every other machine must join again).
        #[arg(long)]
        force: bool,
    },
    /// Admit this machine to a mesh: store the key from a token printed by `distc mesh init`.
    Join {
        /// The token (`distc-mesh:` followed by 64 hex characters).
        token: String,
        /// Replace an existing, different key.
        #[arg(long)]
        force: bool,
    },
    /// Print the join token of this machine's mesh key.
    Token,
    /// Accept entries produced by PEER (its id as `distc status` shows it): added to the
    /// config's `trust` list (when it is a list) and removed from `distrust`.
    Trust {
        /// The producer's peer id.
        peer: String,
    },
    /// Refuse entries produced by PEER: added to the config's `distrust` list; its entries
    /// are dropped from this machine's store and no longer served to other peers.
    Distrust {
        /// The producer's peer id.
        peer: String,
    },
}

/// `distc mesh …`.
pub fn mesh(config: &Config, action: &MeshAction) -> Result<ExitCode> {
    let path = config.psk_path();
    match action {
        MeshAction::Init { force } => {
            if psk::load(&path)?.is_some() && !force {
                bail!(
                    "a mesh key already exists at {}; its join token is printed by `distc mesh \
                     token` (use --force to replace it: every other machine must then join \
                     again)",
                    path.display()
                );
            }
            let key = psk::generate().context("cannot generate a mesh key")?;
            psk::save(&path, key)?;
            println!("{}", psk::to_token(key));
            eprintln!(
                "Created the mesh key {} (owner-only). On every other machine run:\n  distc mesh join <the token above>\nthen (re)start `distc peer` everywhere.",
                path.display()
            );
        }
        MeshAction::Join { token, force } => {
            let key = psk::parse_token(token)?;
            if let Some(existing) = psk::load(&path)?
                && existing != key
                && !force
            {
                bail!(
                    "{} already holds a different mesh key; pass --force to replace it",
                    path.display()
                );
            }
            psk::save(&path, key)?;
            eprintln!(
                "Joined mesh {} (key stored in {}). Restart `distc peer` to use it.",
                psk::fingerprint(key),
                path.display()
            );
        }
        MeshAction::Trust { peer } => return set_trust(peer, true),
        MeshAction::Distrust { peer } => return set_trust(peer, false),
        MeshAction::Token => match psk::load(&path)? {
            Some(key) => println!("{}", psk::to_token(key)),
            None => bail!(
                "no mesh key at {}; create one with `distc mesh init`",
                path.display()
            ),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// `distc mesh trust|distrust PEER`: edits `trust`/`distrust` in the config file (comments
/// kept), then tells the running peer, or drops the producer's entries from the store itself.
fn set_trust(peer: &str, trusted: bool) -> Result<ExitCode> {
    let id = distc_peer::trust::parse_peer_id(peer)?.to_string();
    let path = crate::config::config_file()
        .context("no config file location (set DISTC_CONFIG or DISTC_CONFIG_DIR)")?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML; fix it first", path.display()))?;
    let ids = |doc: &toml_edit::DocumentMut, key: &str| -> Option<Vec<String>> {
        doc.get(key)?.as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
    };
    let set = |doc: &mut toml_edit::DocumentMut, key: &str, list: Vec<String>| {
        let mut a = toml_edit::Array::new();
        for s in list {
            a.push(s);
        }
        doc[key] = toml_edit::value(a);
    };
    let mut distrust = ids(&doc, "distrust").unwrap_or_default();
    let trust_list = ids(&doc, "trust");
    let said = if trusted {
        distrust.retain(|p| *p != id);
        match trust_list {
            Some(mut list) => {
                if !list.contains(&id) {
                    list.push(id.clone());
                }
                set(&mut doc, "trust", list);
                format!("{id} added to the trusted producers")
            }
            None => format!("{id} is trusted (trust = \"mesh\": every member is)"),
        }
    } else {
        if !distrust.contains(&id) {
            distrust.push(id.clone());
        }
        if let Some(mut list) = trust_list {
            list.retain(|p| *p != id);
            set(&mut doc, "trust", list);
        }
        format!("{id} is distrusted: its entries are refused, dropped and not served")
    };
    set(&mut doc, "distrust", distrust);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::util::write_atomic(&path, doc.to_string().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    for var in ["DISTC_TRUST", "DISTC_DISTRUST"] {
        if std::env::var_os(var).is_some() {
            eprintln!("distc: warning: {var} is set and overrides the config file");
        }
    }
    let config = Config::load().context("the edited config does not load")?;
    let policy = config.trust_policy();
    match IpcClient::connect(&config.dir, Duration::from_secs(30)) {
        Ok(mut c) => c
            .set_trust(policy.clone())
            .context("the local peer did not take the new policy; restart it")?,
        Err(_) => {
            let store = distc_peer::store::Store::open(&config.store_dir(), config.max_size)?;
            let removed = distc_peer::trust::purge_policy(&store, &policy)?;
            if removed > 0 {
                eprintln!("Dropped {removed} entries of producers no longer trusted.");
            }
        }
    }
    println!("{said}");
    println!("Trust: {} (in {})", policy.describe(), path.display());
    Ok(ExitCode::SUCCESS)
}

/// The mesh part of `distc flush`: every reachable peer empties its store. `None` when no
/// local peer runs (then only the local store was flushed).
pub fn flush_mesh(config: &Config) -> Result<Option<FlushReport>> {
    let Ok(mut c) = IpcClient::connect(&config.dir, Duration::from_secs(30)) else {
        return Ok(None);
    };
    Ok(Some(c.flush().context("the local peer did not answer")?))
}

/// Prints a mesh flush report; returns the number of peers that could not be flushed.
pub fn print_flush(report: &FlushReport) -> usize {
    let mut failed = 0;
    for p in report.peers.iter() {
        match (&p.removed, &p.error) {
            (Some((entries, bytes)), _) => println!(
                "Flushed peer {}: removed {entries} entries ({})",
                p.id,
                crate::cli::build::human_bytes(*bytes)
            ),
            (None, e) => {
                failed += 1;
                println!(
                    "Could not flush peer {}: {}",
                    p.id,
                    e.as_deref().unwrap_or("unreachable")
                );
            }
        }
    }
    failed
}
