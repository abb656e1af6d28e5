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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    pub role: Role,
    /// Shared: a hit's outputs are slices of the one buffer its store entry was read into
    /// ([`Bundle::decode_shared`]; for a large one, a mapping of the entry file), so a large object or executable is never copied on its way
    /// to the file it is replayed into.
    #[serde(serialize_with = "bytes::serialize")]
    pub data: ::bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bundle {
    pub version: u32,
    pub outputs: Vec<Output>,
    #[serde(serialize_with = "bytes::serialize")]
    pub stdout: Vec<u8>,
    #[serde(serialize_with = "bytes::serialize")]
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// [`Bundle`] as it is encoded, borrowing its byte strings from the encoded bytes.
#[derive(Deserialize)]
struct BundleView<'a> {
    version: u32,
    #[serde(borrow)]
    outputs: Vec<OutputView<'a>>,
    #[serde(borrow)]
    stdout: &'a [u8],
    #[serde(borrow)]
    stderr: &'a [u8],
    exit_code: i32,
}

#[derive(Deserialize)]
struct OutputView<'a> {
    role: Role,
    #[serde(borrow)]
    data: &'a [u8],
}

/// Serialise a byte buffer as one byte string (compact and fast), not a sequence of integers:
/// what every encoded byte buffer of the wrapper uses (`#[serde(serialize_with = …)]`), read
/// back borrowed (`&[u8]`) in one piece, never byte by byte (a sequence visitor costs a call
/// per byte: megabytes of a Rust hit's outputs).
pub(crate) mod bytes {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
}

impl Bundle {
    pub fn encode(&self) -> Result<Vec<u8>, distc_peer::codec::CodecError> {
        distc_peer::codec::encode(self)
    }

    /// Decodes `shared` and checks the version; any mismatch is an error (= a miss, never a
    /// wrong hit). The outputs are slices of `shared`, not copies (stdout and stderr, small,
    /// are copied).
    pub fn decode_shared(shared: ::bytes::Bytes) -> Result<Bundle, String> {
        let v: BundleView<'_> =
            distc_peer::codec::decode(&shared, MAX_BUNDLE).map_err(|e| e.to_string())?;
        if v.version != BUNDLE_VERSION {
            return Err(format!(
                "bundle version {} (expected {BUNDLE_VERSION})",
                v.version
            ));
        }
        Ok(Bundle {
            version: v.version,
            outputs: v
                .outputs
                .iter()
                .map(|o| Output {
                    role: o.role,
                    data: shared.slice_ref(o.data),
                })
                .collect(),
            stdout: v.stdout.to_vec(),
            stderr: v.stderr.to_vec(),
            exit_code: v.exit_code,
        })
    }

    pub fn output(&self, role: Role) -> Option<&[u8]> {
        self.outputs
            .iter()
            .find(|o| o.role == role)
            .map(|o| &o.data[..])
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
                    data: vec![0x7f, b'E', b'L', b'F'].into(),
                },
                Output {
                    role: Role::DepFile,
                    data: b"a.o: a.c\n".to_vec().into(),
                },
            ],
            stdout: vec![],
            stderr: b"warning\n".to_vec(),
            exit_code: 0,
        };
        let enc = b.encode().unwrap();
        assert!(Bundle::decode_shared(enc[..enc.len() - 1].to_vec().into()).is_err());
        // Decoded from an owned payload, the outputs point into it.
        let start = enc.as_ptr() as usize;
        let end = start + enc.len();
        let owned = Bundle::decode_shared(enc.into()).unwrap();
        assert_eq!(owned, b);
        for o in &owned.outputs {
            let at = o.data.as_ptr() as usize;
            assert!(at >= start && at < end, "{:?} was copied", o.role);
        }
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
