//! The language-neutral parts of a key: labelled inputs hashed into a [`Key`] ([`Inputs`]),
//! and a file as an input with its trust rule ([`file`]). Each compiler family decides which
//! inputs its keys have (`crate::compiler::{c,rust}::key`).

pub mod file;
pub mod manifest;

use distc_peer::Key;
use sha2::{Digest, Sha256};

/// One labelled input of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub label: String,
    pub digest: [u8; 32],
}

/// The labelled inputs of a key, in order (see the module docs for the list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub items: Vec<Input>,
}

impl Inputs {
    pub fn push(&mut self, label: impl Into<String>, bytes: &[u8]) {
        self.push_digest(label, Sha256::digest(bytes).into());
    }

    pub fn push_digest(&mut self, label: impl Into<String>, digest: [u8; 32]) {
        self.items.push(Input {
            label: label.into(),
            digest,
        });
    }

    /// The key: SHA-256 over every (label, digest) pair in order.
    pub fn key(&self) -> Key {
        let mut h = Sha256::new();
        for i in &self.items {
            h.update((i.label.len() as u32).to_le_bytes());
            h.update(i.label.as_bytes());
            h.update(i.digest);
        }
        Key(h.finalize().into())
    }

    /// `(label, hex digest)` pairs, for `distc inspect`.
    pub fn listing(&self) -> Vec<(String, String)> {
        self.items
            .iter()
            .map(|i| (i.label.clone(), hex::encode(i.digest)))
            .collect()
    }
}

/// SHA-256 of a length-prefixed concatenation, so `["ab","c"]` and `["a","bc"]` differ.
pub fn hash_list<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for it in items {
        h.update((it.len() as u64).to_le_bytes());
        h.update(it);
    }
    h.finalize().into()
}
