//! `distc flush`: empty the cache.
//!
//! [`flush`] is the single entry point: the mesh support extends it to ask every peer to empty
//! its store too, after the local part below.

use anyhow::{Context, Result};
use distc_peer::store::{Store, Usage};

use crate::config::Config;

/// What a flush removed from this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Entries and bytes removed from the local store.
    pub local: Usage,
}

/// Empties the local store and the direct-mode manifests (they only point at store entries).
pub fn flush_local(config: &Config) -> Result<FlushReport> {
    let store_dir = config.store_dir();
    let store = Store::open(&store_dir, config.max_size)
        .with_context(|| format!("cannot open the cache store {}", store_dir.display()))?;
    let local = store
        .clear()
        .with_context(|| format!("cannot empty the cache store {}", store_dir.display()))?;
    let manifests = config.dir.join("manifests");
    match std::fs::remove_dir_all(&manifests) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot remove the manifests in {}", manifests.display())
            });
        }
    }
    Ok(FlushReport { local })
}

/// `distc flush`: empties the cache and prints what was removed.
pub fn flush(config: &Config) -> Result<()> {
    let report = flush_local(config)?;
    println!(
        "Flushed the local cache in {}: removed {} entries ({})",
        config.dir.display(),
        report.local.entries,
        crate::cli::build::human_bytes(report.local.bytes)
    );
    if let Some(mesh) = crate::cli::mesh::flush_mesh(config)? {
        crate::cli::mesh::print_flush(&mesh);
    }
    Ok(())
}
