//! SWIM membership on the wire: foca's identity and codec, and distc's membership protocol.
//!
//! Membership runs [foca](https://docs.rs/foca) (SWIM with Lifeguard-style extensions) over
//! its own libp2p request-response protocol, [`PROTOCOL`] (`/distc/swim/1.1.0`), separate from
//! the entry protocol so each can change on its own. A request is one of:
//!
//! - [`SwimRequest::Packet`]: one foca packet (probe, ack, indirect probe, gossip) where no
//!   datagram goes ([`crate::datagram`]: a member without a UDP socket, the ask of a suspect,
//!   a leave), answered by an empty [`SwimResponse::Ack`]. foca itself tolerates loss; the
//!   ack only closes the stream.
//! - [`SwimRequest::Sync`]: anti-entropy. The asker sends a digest of the member set it derives
//!   its ring from (and, when it joins, its whole table); the answerer sends its whole table
//!   back only if its own digest differs. See [`crate::membership`].
//!
//! Every message is one [`crate::frame`] holding a value encoded by [`crate::codec`], and is
//! refused over [`MAX_MESSAGE`] bytes before anything is read into memory.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BufMut};
use futures::prelude::*;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::frame::{self, invalid};
use crate::protocol::Bytes;
use crate::store::Usage;

/// The membership protocol's name.
/// 1.1: packets of at most [`crate::datagram::MAX_PAYLOAD`] bytes, most of them as datagrams;
/// a 1.0 peer (packets of up to 4 KB, no datagrams) does not share membership with a 1.1 one
/// (upgrade every peer of a mesh together).
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/distc/swim/1.1.0");

/// Most bytes in one membership message (a full table of [`MAX_MEMBERS`] members fits).
pub const MAX_MESSAGE: usize = 4 << 20;

/// Most members accepted from one table, and most addresses per member.
pub const MAX_MEMBERS: usize = 16384;
pub const MAX_ADDRS: usize = 16;

/// A member's identity as foca knows it: the peer, a generation number, the addresses it
/// can be dialed at and its weight on the ring. foca keeps one record per peer id (its `Addr`);
/// when a peer restarts or its addresses or weight change it takes a higher generation, which
/// wins over the old identity.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SwimId {
    pub peer: PeerId,
    /// Start time in ms since the epoch, raised by one on every renewal.
    pub generation: u64,
    pub addrs: Vec<Multiaddr>,
    /// Its share of the ring relative to a default peer's 100 ([`crate::ring::points_for`]);
    /// 0 for a client, which owns no range.
    pub weight: u32,
}

impl std::fmt::Debug for SwimId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}w{}", self.peer, self.generation, self.weight)
    }
}

/// The wire form of a [`SwimId`]: raw peer id and multiaddr bytes, and the weight.
#[derive(Serialize, Deserialize)]
struct WireId(Bytes, u64, Vec<Bytes>, u32);

impl Serialize for SwimId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireId(
            Bytes(self.peer.to_bytes()),
            self.generation,
            self.addrs.iter().map(|a| Bytes(a.to_vec())).collect(),
            self.weight,
        )
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SwimId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SwimId, D::Error> {
        let WireId(peer, generation, addrs, weight) = WireId::deserialize(d)?;
        let peer = PeerId::from_bytes(&peer.0).map_err(serde::de::Error::custom)?;
        if addrs.len() > MAX_ADDRS {
            return Err(serde::de::Error::custom("too many addresses"));
        }
        let addrs = addrs
            .into_iter()
            .map(|a| Multiaddr::try_from(a.0).map_err(serde::de::Error::custom))
            .collect::<Result<_, _>>()?;
        Ok(SwimId {
            peer,
            generation,
            addrs,
            weight: weight.min(crate::ring::MAX_WEIGHT),
        })
    }
}

impl foca::Identity for SwimId {
    type Addr = PeerId;

    fn renew(&self) -> Option<Self> {
        Some(SwimId {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> PeerId {
        self.peer
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// foca's packet codec: headers and member records in the project's wire format.
#[derive(Debug, Default, Clone, Copy)]
pub struct FocaCodec;

impl FocaCodec {
    fn put<T: Serialize>(v: &T, mut buf: impl BufMut) -> Result<(), CodecError> {
        let bytes = codec::encode(v)?;
        if bytes.len() > buf.remaining_mut() {
            return Err(CodecError::TooLarge {
                len: bytes.len(),
                limit: buf.remaining_mut(),
            });
        }
        buf.put_slice(&bytes);
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
        let (v, used) = codec::decode_prefix(buf.chunk(), MAX_MESSAGE)?;
        buf.advance(used);
        Ok(v)
    }
}

impl foca::Codec<SwimId> for FocaCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &foca::Header<SwimId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<foca::Header<SwimId>, CodecError> {
        Self::get(buf)
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<SwimId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<foca::Member<SwimId>, CodecError> {
        Self::get(buf)
    }
}

/// A membership request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SwimRequest {
    /// One foca datagram.
    Packet(Bytes),
    /// Anti-entropy: the asker's digest and usage, and its whole table when it has reason to
    /// think the other side lacks it (a join, or a digest that still differs after a pull).
    Sync {
        digest: [u8; 32],
        usage: Usage,
        table: Option<Vec<foca::Member<SwimId>>>,
    },
}

/// The answer to a [`SwimRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SwimResponse {
    Ack,
    /// The answerer's digest and usage, and its whole table if the digests differed.
    Sync {
        digest: [u8; 32],
        usage: Usage,
        table: Option<Vec<foca::Member<SwimId>>>,
    },
}

/// Membership bytes sent and received by this node (message bodies and frame prefixes), and
/// membership requests that failed (no connection, no answer in time).
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub failed: AtomicU64,
    /// Membership datagrams accepted and dropped ([`crate::datagram`]; their bytes are in
    /// `sent` and `received`).
    pub datagrams: AtomicU64,
    pub dropped: AtomicU64,
}

/// The request-response codec of [`PROTOCOL`]; counts what it moves in [`Traffic`].
#[derive(Debug, Clone, Default)]
pub struct SwimCodec {
    pub traffic: Arc<Traffic>,
}

impl SwimCodec {
    async fn read<T, M>(&self, io: &mut T) -> io::Result<M>
    where
        T: AsyncRead + Unpin + Send,
        M: serde::de::DeserializeOwned,
    {
        let buf = frame::read(io, MAX_MESSAGE).await?;
        self.traffic
            .received
            .fetch_add(buf.len() as u64 + 4, Ordering::Relaxed);
        codec::decode(&buf, MAX_MESSAGE).map_err(|e| invalid(e.to_string()))
    }

    async fn write<T, M>(&self, io: &mut T, msg: &M) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
        M: Serialize,
    {
        let buf = codec::encode(msg).map_err(|e| invalid(e.to_string()))?;
        if buf.len() > MAX_MESSAGE {
            return Err(invalid(format!(
                "membership message of {} bytes exceeds the limit of {MAX_MESSAGE} bytes",
                buf.len()
            )));
        }
        self.traffic
            .sent
            .fetch_add(buf.len() as u64 + 4, Ordering::Relaxed);
        frame::write(io, &buf).await
    }
}

impl libp2p::request_response::Codec for SwimCodec {
    type Protocol = StreamProtocol;
    type Request = SwimRequest;
    type Response = SwimResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SwimRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SwimResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SwimRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SwimResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec as _;

    #[test]
    fn identities_and_records_round_trip_and_bad_ones_are_refused() {
        let id = SwimId {
            peer: PeerId::random(),
            generation: 7,
            addrs: vec!["/ip4/10.0.0.1/tcp/4100".parse().unwrap()],
            weight: 250,
        };
        let m = foca::Member::new(id.clone(), 3, foca::State::Suspect);
        let mut buf = Vec::new();
        FocaCodec.encode_member(&m, &mut buf).unwrap();
        buf.extend_from_slice(b"rest");
        let mut slice = &buf[..];
        assert_eq!(FocaCodec.decode_member(&mut slice).unwrap(), m);
        assert_eq!(slice, b"rest");
        // A record that does not fit the packet is an error, not a panic.
        let mut small = Vec::new();
        let limited = (&mut small).limit(4);
        assert!(FocaCodec.encode_member(&m, limited).is_err());
        // A garbage peer id is refused.
        let bad = codec::encode(&WireId(Bytes(vec![1, 2, 3]), 1, vec![], 100)).unwrap();
        assert!(FocaCodec.decode_member(&bad[..]).is_err());
        // A renewed identity wins over the one it replaces.
        use foca::Identity;
        let renewed = id.renew().unwrap();
        assert!(renewed.win_addr_conflict(&id));
        assert_eq!(renewed.addr(), id.addr());
    }
}
