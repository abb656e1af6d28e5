//! A cached result: every output file, stdout, stderr and the exit status of one compile.
//!
//! Outputs are tagged by role, never by absolute path: the same bundle is replayed into
//! whatever paths the hitting command line names (another checkout, another machine).

use serde::{Deserialize, Serialize};

/// Bump when the layout changes; an old bundle then decodes as an error, i.e. a miss.
pub const BUNDLE_VERSION: u32 = 1;

/// Largest bundle we ever decode (objects of huge TUs fit comfortably).
pub const MAX_BUNDLE: usize = 1 << 30;

/// What an output file is for; the hitting command line says where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Object,
    DepFile,
    /// Every file a rustc compile wrote for its crate, named relative to its output directory
    /// (`.rlib`, `.rmeta`, `.d`, binaries, `.so`): encoded by `crate::pipeline::rust`.
    RustFiles,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub role: Role,
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub version: u32,
    pub outputs: Vec<Output>,
    #[serde(with = "bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "bytes")]
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Serialise `Vec<u8>` as one byte string (compact and fast), not a sequence of integers, and
/// read it back in one piece (a sequence visitor costs a call per byte: megabytes of a Rust
/// hit's outputs). Used with `#[serde(with = …)]` by every encoded byte buffer of the wrapper.
pub(crate) mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl Bundle {
    pub fn encode(&self) -> Result<Vec<u8>, distc_peer::codec::CodecError> {
        distc_peer::codec::encode(self)
    }

    /// Decodes and checks the version; any mismatch is an error (= a miss, never a wrong hit).
    pub fn decode(bytes: &[u8]) -> Result<Bundle, String> {
        let b: Bundle = distc_peer::codec::decode(bytes, MAX_BUNDLE).map_err(|e| e.to_string())?;
        if b.version != BUNDLE_VERSION {
            return Err(format!(
                "bundle version {} (expected {BUNDLE_VERSION})",
                b.version
            ));
        }
        Ok(b)
    }

    pub fn output(&self, role: Role) -> Option<&[u8]> {
        self.outputs
            .iter()
            .find(|o| o.role == role)
            .map(|o| o.data.as_slice())
    }
}

/// `text` without the SGR and erase-line sequences (`ESC [ 01;31 m`, `ESC [ K`) that gcc and
/// clang colour diagnostics with; every other byte is kept.
pub fn strip_ansi_colours(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == 0x1b && text.get(i + 1) == Some(&b'[') {
            let params = text[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_digit() || **c == b';')
                .count();
            if let Some(b'm' | b'K') = text.get(i + 2 + params) {
                i += 3 + params;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let b = Bundle {
            version: BUNDLE_VERSION,
            outputs: vec![
                Output {
                    role: Role::Object,
                    data: vec![0x7f, b'E', b'L', b'F'],
                },
                Output {
                    role: Role::DepFile,
                    data: b"a.o: a.c\n".to_vec(),
                },
            ],
            stdout: vec![],
            stderr: b"warning\n".to_vec(),
            exit_code: 0,
        };
        let enc = b.encode().unwrap();
        assert_eq!(Bundle::decode(&enc).unwrap(), b);
        assert!(Bundle::decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn colours_stripped() {
        let coloured =
            b"\x1b[01m\x1b[Ka.c:1:5:\x1b[m\x1b[K \x1b[01;35m\x1b[Kwarning: \x1b[m\x1b[Kx\n\x1b[2J";
        assert_eq!(
            strip_ansi_colours(coloured),
            b"a.c:1:5: warning: x\n\x1b[2J".to_vec()
        );
        assert_eq!(strip_ansi_colours(b"plain \x1b"), b"plain \x1b".to_vec());
    }
}
