//! The one place where values become bytes and back (bincode 2 with serde).
//!
//! Every decode is bounded: a frame that claims a length larger than the bytes it carries can
//! never make us allocate that claim. bincode's limit is a compile-time constant, so the decoder
//! is chosen from a ladder of limits — the smallest rung that still fits the input. A claimed
//! length beyond the input size is always a lie, so the allocation is bounded by about the
//! size of the frame itself, which the transport has already bounded.

use bincode::config;
use serde::Serialize;
use serde::de::DeserializeOwned;

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
/// any claimed length that would allocate more than the input could hold.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    macro_rules! ladder {
        ($($rung:literal),*) => {
            $(
                if bytes.len() <= $rung {
                    return finish(bytes.len(), bincode::serde::decode_from_slice(
                        bytes,
                        config::standard().with_limit::<$rung>(),
                    ));
                }
            )*
        };
    }
    ladder!(
        4096, 65536, 1048576, 16777216, 268435456, 1073741824, 4294967296
    );
    Err(CodecError::TooLarge {
        len: bytes.len(),
        limit: 1 << 32,
    })
}

fn finish<T>(
    total: usize,
    r: Result<(T, usize), bincode::error::DecodeError>,
) -> Result<T, CodecError> {
    let (v, used) = r?;
    if used != total {
        return Err(CodecError::Trailing(total - used));
    }
    Ok(v)
}

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
    fn garbage_is_an_error_not_a_panic() {
        for len in 0..64u8 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(250))
                .collect();
            let _ = decode::<Msg>(&bytes, 1 << 20);
        }
    }
}
