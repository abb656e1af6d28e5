//! The mesh key: a libp2p pre-shared key (pnet) in the usual `swarm.key` file format, plus the
//! one-line join token `distc mesh init` prints and `distc mesh join` accepts.
//!
//! File format (three lines): `/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex characters.
//! Token format: `distc-mesh:` followed by the same 64 hex characters.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use libp2p::pnet::PreSharedKey;

/// Prefix of a join token.
pub const TOKEN_PREFIX: &str = "distc-mesh:";

/// Why a key could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum PskError {
    #[error("mesh key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "mesh key file {path} is not a swarm.key (expected /key/swarm/psk/1.0.0/, /base16/, 64 hex characters)"
    )]
    BadFile { path: PathBuf },
    #[error("not a distc join token: expected `{TOKEN_PREFIX}` followed by 64 hex characters")]
    BadToken,
    #[error(
        "mesh key file {path} does not exist, but it was named (--psk-file, DISTC_PSK_FILE or \
         psk_file): fix the path, or create the key there with `distc mesh init` (a new mesh) \
         or `distc mesh join TOKEN` (an existing one)"
    )]
    Missing { path: PathBuf },
    #[error(
        "mesh key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
}

fn io_err(path: &Path, source: io::Error) -> PskError {
    PskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A fresh random key (from the kernel's CSPRNG).
pub fn generate() -> io::Result<PreSharedKey> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(PreSharedKey::new(bytes))
}

/// The key file text for `key`.
pub fn to_file_text(key: PreSharedKey) -> String {
    key.to_key_file()
}

/// Parses swarm.key text.
pub fn parse_file_text(text: &str) -> Option<PreSharedKey> {
    text.parse().ok()
}

fn key_hex(key: PreSharedKey) -> Option<String> {
    // The last non-empty line of the key file is the hex body.
    key.to_key_file()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_ascii_lowercase())
}

/// The 32 bytes of `key` (what the membership datagrams' seal is derived from).
pub fn key_bytes(key: PreSharedKey) -> Option<[u8; 32]> {
    let bytes = hex::decode(key_hex(key)?).ok()?;
    bytes.try_into().ok()
}

/// The one-line join token for `key`.
pub fn to_token(key: PreSharedKey) -> String {
    format!("{TOKEN_PREFIX}{}", key_hex(key).unwrap_or_default())
}

/// Parses a join token (surrounding whitespace allowed).
pub fn parse_token(token: &str) -> Result<PreSharedKey, PskError> {
    let hex_part = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(PskError::BadToken)?;
    let mut bytes = [0u8; 32];
    if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut bytes).is_err() {
        return Err(PskError::BadToken);
    }
    Ok(PreSharedKey::new(bytes))
}

/// Reads the key at `path`. `Ok(None)` when the file does not exist. Refuses a key file that
/// group or others can read: a leaked key admits anyone to the cache.
pub fn load(path: &Path) -> Result<Option<PreSharedKey>, PskError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let mode = fs::metadata(path)
        .map_err(|e| io_err(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(PskError::TooOpen {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    parse_file_text(&text)
        .map(Some)
        .ok_or_else(|| PskError::BadFile {
            path: path.to_path_buf(),
        })
}

/// Reads a key file the user named explicitly: unlike [`load`], a missing file is an error
/// ([`PskError::Missing`]), never a silent keyless peer.
pub fn load_named(path: &Path) -> Result<PreSharedKey, PskError> {
    load(path)?.ok_or_else(|| PskError::Missing {
        path: path.to_path_buf(),
    })
}

/// Writes `key` to `path` owner-only (0600), creating parent directories (0700). Replaces an
/// existing file atomically.
pub fn save(path: &Path, key: PreSharedKey) -> Result<(), PskError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("swarm.key"),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(to_file_text(key).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    Ok(())
}

/// A short, non-secret name for a key (libp2p's fingerprint), for logs and `status`.
pub fn fingerprint(key: PreSharedKey) -> String {
    key.fingerprint().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_token_round_trip() {
        let k = generate().unwrap();
        let text = to_file_text(k);
        assert!(text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
        assert!(parse_file_text(&text).unwrap() == k);
        let t = to_token(k);
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == TOKEN_PREFIX.len() + 64);
        assert!(parse_token(&t).unwrap() == k);
        assert!(parse_token("distc-mesh:zz").is_err());
        assert!(parse_token(&t[1..]).is_err());
    }

    #[test]
    fn save_is_owner_only_and_load_checks_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg").join("swarm.key");
        assert!(load(&path).unwrap().is_none());
        let e = load_named(&path).unwrap_err();
        assert!(matches!(e, PskError::Missing { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("distc mesh init")
                && msg.contains("distc mesh join"),
            "{msg}"
        );
        let k = generate().unwrap();
        save(&path, k).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(load(&path).unwrap().unwrap() == k);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&path), Err(PskError::TooOpen { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(load(&path), Err(PskError::BadFile { .. })));
    }
}
