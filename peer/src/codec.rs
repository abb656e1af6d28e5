//! The one place where values become bytes and back (bincode 2 with serde).
//!
//! Every decode is bounded: a frame that claims a length larger than the bytes it carries can
//! never make us allocate that claim. bincode's limit is a compile-time constant, so the decoder
//! is chosen from a ladder of limits — the smallest rung that still fits the input. A claimed
//! length beyond the input size is always a lie, so the allocation is bounded by about the
//! size of the frame itself, which the transport has already bounded.

use bincode::config;
use serde::Deserialize;
use serde::Serialize;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed message: {0} trailing bytes after the value")]
    Trailing(usize),
}

/// Encodes `v` in the project's wire format.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(v, config::standard())?)
}

/// Decodes a whole value from `bytes`, refusing inputs over `limit` bytes, trailing bytes, and
/// any claimed length that would allocate more than the input could hold. The value may
/// borrow from `bytes` (`&[u8]`, `&str` fields are then not copied).
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], limit: usize) -> Result<T, CodecError> {
    let (v, used) = decode_prefix(bytes, limit)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(v)
}

/// Decodes one value from the start of `bytes` (more may follow) and says how many bytes it
/// used; bounded like [`decode`].
pub fn decode_prefix<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    limit: usize,
) -> Result<(T, usize), CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    // bincode counts every decoded value at its in-memory size (a `u64` claims 8 bytes for its
    // 1-byte varint, a `char` 4), never more than 16 times what it read; byte buffers and
    // containers claim their length. So a limit of 16 times the input never refuses an
    // honest value, and bounds what a lying length can make us allocate by the same factor.
    let need = bytes.len().saturating_mul(CLAIM_FACTOR);
    macro_rules! ladder {
        ($($rung:literal),*) => {
            $(
                if need <= $rung {
                    return Ok(bincode::serde::borrow_decode_from_slice(
                        bytes,
                        config::standard().with_limit::<$rung>(),
                    )?);
                }
            )*
        };
    }
    ladder!(65536, 1048576, 16777216, 268435456, 4294967296, 68719476736);
    Err(CodecError::TooLarge {
        len: bytes.len(),
        limit: 68719476736 / CLAIM_FACTOR,
    })
}

/// Largest ratio between what bincode claims for a value and the bytes it was decoded from.
const CLAIM_FACTOR: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        id: u64,
        #[serde(with = "serde_bytes_compat")]
        body: Vec<u8>,
    }

    // Vec<u8> as a byte buffer, not a sequence of u8.
    mod serde_bytes_compat {
        use serde::{Deserialize, Deserializer, Serializer};
        pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            <Vec<u8>>::deserialize(d)
        }
    }

    #[test]
    fn round_trip() {
        let m = Msg {
            id: 7,
            body: vec![1, 2, 3],
        };
        let bytes = encode(&m).unwrap();
        assert_eq!(decode::<Msg>(&bytes, 1024).unwrap(), m);
    }

    #[test]
    fn borrowed_fields_point_into_the_input() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct View<'a> {
            name: &'a str,
            #[serde(borrow)]
            data: &'a [u8],
        }
        let v = View {
            name: "crate",
            data: &[9; 300],
        };
        let bytes = encode(&v).unwrap();
        let back: View<'_> = decode(&bytes, 1024).unwrap();
        assert_eq!(back, v);
        let range = bytes.as_ptr_range();
        assert!(range.contains(&back.data.as_ptr()) && range.contains(&back.name.as_ptr()));
        assert!(decode::<View<'_>>(&bytes[..bytes.len() - 1], 1024).is_err());
    }

    #[test]
    fn over_limit_is_refused() {
        let m = Msg {
            id: 7,
            body: vec![0; 100],
        };
        let bytes = encode(&m).unwrap();
        assert!(matches!(
            decode::<Msg>(&bytes, 10),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn lying_length_does_not_allocate_the_claim() {
        // id = 1, then a byte-buffer length claiming u64::MAX / 2 bytes (varint 253 + u64).
        let mut bytes = vec![1u8, 253];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let r = decode::<Msg>(&bytes, 1 << 20);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn integer_heavy_values_decode_at_every_size() {
        // Varints of small numbers: 1 byte on the wire, 8 bytes of claim each.
        for n in [0usize, 1, 100, 511, 512, 4000, 8191, 8192, 70_000, 140_000] {
            let v: Vec<u64> = (0..n as u64).map(|i| i % 100).collect();
            let bytes = encode(&v).unwrap();
            assert_eq!(
                decode::<Vec<u64>>(&bytes, usize::MAX).unwrap(),
                v,
                "n = {n}"
            );
            let c: Vec<char> = "a".repeat(n).chars().collect();
            let bytes = encode(&c).unwrap();
            assert_eq!(
                decode::<Vec<char>>(&bytes, usize::MAX).unwrap(),
                c,
                "n = {n}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in 0..64u8 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(250))
                .collect();
            let _ = decode::<Msg>(&bytes, 1 << 20);
        }
    }
}
