//! The cache key: a SHA-256 digest naming one cached result.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A 32-byte SHA-256 digest. Displayed and parsed as 64 lowercase hex characters, which is
/// also how it appears in file names, logs and on the command line.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key(pub [u8; 32]);

/// Why a string is not a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a cache key: expected 64 hexadecimal characters, got {0:?}")]
pub struct KeyParseError(pub String);

impl Key {
    /// The key of arbitrary bytes (SHA-256).
    pub fn digest(bytes: &[u8]) -> Key {
        use sha2::Digest;
        Key(sha2::Sha256::digest(bytes).into())
    }

    /// Lowercase hex form (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        // Cannot fail: the buffer is exactly twice the digest length.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl FromStr for Key {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Key, KeyParseError> {
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(KeyParseError(s.to_string()));
        }
        Ok(Key(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let k = Key::digest(b"hello");
        let s = k.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, k.to_hex());
        assert_eq!(s.parse::<Key>().unwrap(), k);
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("abc".parse::<Key>().is_err());
        assert!("zz".repeat(32).parse::<Key>().is_err());
        assert!("a".repeat(66).parse::<Key>().is_err());
    }
}
