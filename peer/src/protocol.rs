//! What peers say to each other, and how it is framed on a libp2p stream.
//!
//! One request-response protocol, versioned in its name ([`PROTOCOL`]). A peer of another
//! version does not speak it: negotiation fails and the caller treats that as a miss.
//!
//! Framing: `u32` little-endian length, then the message encoded by [`crate::codec`]. Reading
//! is split in two, like every frame reader here: first the length is checked against the
//! limit (`max_entry_size` plus a small overhead), then at most that many bytes are read into a
//! buffer that grows with the bytes actually received — a peer that claims a huge length and
//! sends nothing costs nothing.

use std::io;

use futures::prelude::*;
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::key::Key;
use crate::store::Usage;

/// The protocol name. Bump the version when a wire type changes incompatibly.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/distc/1.0.0");

/// Room for everything in a frame that is not the entry itself.
pub const FRAME_OVERHEAD: usize = 64 * 1024;

/// Most keys in one [`Request::Offer`].
pub const MAX_OFFER: usize = 2048;

/// A byte buffer serialised as one length-prefixed block (not a sequence of `u8`s).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte buffer")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// One member as a peer describes it in gossip. `(incarnation, heartbeat)` orders records of
/// the same peer: the larger pair is newer. Only the member itself raises them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// libp2p peer id bytes.
    pub peer: Bytes,
    /// Multiaddr bytes the member listens on (as the member itself reports them).
    pub addrs: Vec<Bytes>,
    /// Start time of the member process (ms since the epoch): a restart outranks old records.
    pub incarnation: u64,
    /// Raised by the member once per gossip round while it is alive.
    pub heartbeat: u64,
    /// The member's store usage, for `distc status`.
    pub usage: Usage,
    /// The member announced it is shutting down.
    pub left: bool,
}

/// A request from one peer to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Push-pull gossip: here is my member table, send me yours.
    Gossip(Vec<MemberRecord>),
    /// The raw entry for a key, if held.
    Get(Key),
    /// Store this raw entry (verified by the receiver before it is written).
    Put { key: Key, entry: Bytes },
    /// Which of these keys do you lack? (handoff and re-replication)
    Offer(Vec<Key>),
    /// Empty your store (`distc flush`).
    Flush,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Gossip(Vec<MemberRecord>),
    Entry(Option<Bytes>),
    Stored,
    Want(Vec<Key>),
    Flushed(Usage),
    /// The request was understood but failed (bad entry, disk error...).
    Error(String),
}

/// The request-response codec: bounded length-prefixed frames.
#[derive(Debug, Clone)]
pub struct Codec {
    /// Largest frame accepted, in bytes (length prefix excluded).
    pub max_frame: usize,
}

impl Codec {
    /// A codec that accepts entries up to `max_entry_size` bytes.
    pub fn new(max_entry_size: u64) -> Codec {
        Codec {
            max_frame: usize::try_from(max_entry_size)
                .unwrap_or(usize::MAX - FRAME_OVERHEAD)
                .saturating_add(FRAME_OVERHEAD)
                .min(u32::MAX as usize),
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one frame: length check first, then a buffer that grows only as bytes arrive.
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max_frame: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max_frame {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the limit of {max_frame} bytes"
        )));
    }
    // Grow geometrically as bytes arrive (at most twice what was received), zero-filling
    // each byte once and reading straight into place.
    let mut buf = Vec::new();
    while buf.len() < len {
        let filled = buf.len();
        let next = filled.max(FRAME_OVERHEAD).saturating_mul(2).min(len);
        buf.resize(next, 0);
        if let Err(e) = io.read_exact(&mut buf[filled..]).await {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("frame truncated: fewer than {next} of {len} bytes"),
                )
            } else {
                e
            });
        }
    }
    Ok(buf)
}

/// Writes one frame.
pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| invalid("frame too large".into()))?;
    io.write_all(&len.to_le_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

async fn read_msg<T, M>(io: &mut T, max_frame: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: serde::de::DeserializeOwned,
{
    let buf = read_frame(io, max_frame).await?;
    codec::decode(&buf, max_frame).map_err(|e| invalid(e.to_string()))
}

async fn write_msg<T, M>(io: &mut T, msg: &M) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    let body = codec::encode(msg).map_err(|e| invalid(e.to_string()))?;
    write_frame(io, &body).await
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_msg(io, self.max_frame).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_msg(io, self.max_frame).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_msg(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_msg(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use libp2p::request_response::Codec as _;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn round_trip_put() {
        let mut c = Codec::new(1 << 20);
        let mut buf = Vec::new();
        let req = Request::Put {
            key: Key::digest(b"k"),
            entry: Bytes(vec![7; 5000]),
        };
        block_on(c.write_request(&PROTOCOL, &mut buf, req)).unwrap();
        // A byte buffer costs its length plus a small prefix, not a byte per element.
        assert!(buf.len() < 5000 + 64, "{}", buf.len());
        let back = block_on(c.read_request(&PROTOCOL, &mut &buf[..])).unwrap();
        match back {
            Request::Put { key, entry } => {
                assert_eq!(key, Key::digest(b"k"));
                assert_eq!(entry.0, vec![7; 5000]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_claim_rejected_before_reading() {
        let mut c = Codec::new(1024);
        // Claims 4 GiB - 1 and carries nothing: rejected on the length alone.
        let bytes = u32::MAX.to_le_bytes().to_vec();
        let r = block_on(c.read_request(&PROTOCOL, &mut &bytes[..]));
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn truncated_and_malformed_frames_are_errors() {
        let mut c = Codec::new(1 << 20);
        // Length within the limit but body missing.
        let bytes = 1000u32.to_le_bytes().to_vec();
        assert!(block_on(c.read_request(&PROTOCOL, &mut &bytes[..])).is_err());
        // Garbage bodies of every small size.
        for n in 0..200u32 {
            let body: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
            let _ = block_on(c.read_request(&PROTOCOL, &mut &frame(&body)[..]));
            let _ = block_on(c.read_response(&PROTOCOL, &mut &frame(&body)[..]));
        }
        // A Put whose entry claims far more bytes than the frame holds.
        let mut body = vec![2u8]; // variant index of Put
        body.extend_from_slice(&[0u8; 32]);
        body.push(253);
        body.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
        assert!(block_on(c.read_request(&PROTOCOL, &mut &frame(&body)[..])).is_err());
    }
}
