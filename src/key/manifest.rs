//! A direct-mode manifest file, for every family: a format version and entries, newest first,
//! each mapping what a compile read to its result key. One read, one upsert, one lookup, one
//! write; what an entry holds and how it is re-checked is the family's.

use std::path::Path;

use distc_peer::Key;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Entries kept per manifest (newest first); the oldest fall off.
pub const MAX_ENTRIES: usize = 16;
/// Largest manifest read or written.
pub const MAX_MANIFEST: usize = 64 << 20;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Manifest<E> {
    pub version: u32,
    /// The manifest key it was written for: a manifest file under another key's name (a
    /// swapped or restored file), or shared for another compile, is refused.
    pub key: Key,
    pub entries: Vec<E>,
}

impl<E: Serialize + DeserializeOwned> Manifest<E> {
    pub fn new(version: u32, key: Key) -> Manifest<E> {
        Manifest {
            version,
            key,
            entries: Vec::new(),
        }
    }

    /// The manifest of `key` at `path`: `Ok(None)` when there is none or it has another
    /// version (a plain miss), `Err(why)` when the file does not hold what its name says
    /// (undecodable, or another key's manifest): corruption, for the caller to discard.
    pub fn read(path: &Path, version: u32, key: &Key) -> Result<Option<Manifest<E>>, String> {
        let Ok(bytes) = std::fs::read(path) else {
            return Ok(None);
        };
        let m: Manifest<E> =
            distc_peer::codec::decode(&bytes, MAX_MANIFEST).map_err(|e| e.to_string())?;
        if m.version != version {
            return Ok(None);
        }
        if m.key != *key {
            return Err(format!("manifest of {} under the name of {key}", m.key));
        }
        Ok(Some(m))
    }

    /// Puts `entry` first; an older entry it `replaces` goes, and the oldest beyond
    /// [`MAX_ENTRIES`] fall off.
    pub fn upsert(&mut self, entry: E, replaces: impl Fn(&E, &E) -> bool) {
        self.entries.retain(|e| !replaces(e, &entry));
        self.entries.insert(0, entry);
        self.entries.truncate(MAX_ENTRIES);
    }

    /// The first (newest) entry that `matches`.
    pub fn find(&self, matches: impl FnMut(&&E) -> bool) -> Option<&E> {
        self.entries.iter().find(matches)
    }

    /// Writes the manifest atomically; returns its bytes (what a mesh shares), `None` when it
    /// could not be encoded within [`MAX_MANIFEST`] or written.
    pub fn write(&self, path: &Path) -> Option<Vec<u8>> {
        let bytes = distc_peer::codec::encode(self)
            .ok()
            .filter(|b| b.len() <= MAX_MANIFEST)?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        crate::util::write_atomic(path, &bytes).ok()?;
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keeps_the_newest_first_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m/x");
        let key = Key([1; 32]);
        let mut m: Manifest<u32> = Manifest::new(3, key);
        for i in 0..20 {
            m.upsert(i, |a, b| a == b);
        }
        m.upsert(15, |a, b| a == b);
        assert_eq!(m.entries.len(), MAX_ENTRIES);
        assert_eq!(m.entries[..3], [15, 19, 18]);
        assert!(m.write(&p).is_some());
        let back: Manifest<u32> = Manifest::read(&p, 3, &key).unwrap().unwrap();
        assert_eq!(back.entries, m.entries);
        assert_eq!(back.find(|e| **e < 10), Some(&9));
        assert!(
            Manifest::<u32>::read(&p, 4, &key).unwrap().is_none(),
            "another version"
        );
        assert!(
            Manifest::<u32>::read(&p, 3, &Key([2; 32])).is_err(),
            "another key's"
        );
        std::fs::write(&p, b"garbage").unwrap();
        assert!(Manifest::<u32>::read(&p, 3, &key).is_err(), "undecodable");
        assert!(
            Manifest::<u32>::read(&d.path().join("none"), 3, &key)
                .unwrap()
                .is_none()
        );
    }
}
