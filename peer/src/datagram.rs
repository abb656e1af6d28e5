//! Membership datagrams: foca's packets (probes, acks, indirect probes, gossip) over UDP.
//!
//! SWIM is a datagram protocol: a probe and its ack are a few hundred bytes each, sent to a
//! member chosen at random. Carried on libp2p streams, nearly every probe of a mesh of more
//! than [`crate::node::NodeConfig::max_connections`] members needed a new connection, and a
//! connection's Noise handshake and set-up cost more CPU than everything else membership did
//! (at 100 peers on one machine, most of it). So a peer also binds a UDP socket on the port of
//! its TCP listener, announces it in its membership record (`/ip4/A/udp/P`), and sends foca's
//! packets there; anti-entropy (whole tables), entries and compiles stay on libp2p streams,
//! and so does a packet to a member that announces no UDP address.
//!
//! What a datagram holds ([`Sealer::seal`]): a format byte, the send time (ms since the epoch,
//! by the sender's clock), the sender's public key (its protobuf encoding), the sender's
//! signature over a domain tag, the send time, that key and the packet, and the packet. The
//! receiver derives the sender's peer id from the key and checks the signature, so a datagram
//! is from the peer whose key signed it, as a stream is from the peer its Noise handshake
//! proved; membership then refuses a packet whose header names another sender. In a closed
//! mesh the whole datagram is then sealed with XChaCha20-Poly1305 under a key derived from the
//! mesh key (a random 24-byte nonce in front, the 16-byte tag behind), so only members can
//! read or write membership traffic, as only they can open a stream. Nothing in a datagram is
//! executed; foca decodes the packet with the same bounded codec as a stream's.
//!
//! Replays: a datagram sent more than [`MAX_SKEW_MS`] from the receiver's clock is dropped, so
//! a captured one cannot bring back a member forgotten since; within that window foca orders
//! every claim about a member by incarnation and identity generation, so a replayed claim
//! loses to the newer one everyone holds, and a replayed probe draws an ack to the real sender.

use std::net::{IpAddr, SocketAddr};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, identity};
use sha2::{Digest, Sha256};

/// The format byte of a datagram's plain part.
const FORMAT: u8 = 1;

/// A datagram whose signed send time is further than this from the receiver's clock is
/// dropped: a captured datagram cannot be replayed later (a member forgotten since, a
/// restarted receiver). The clocks of a mesh's machines must agree to within this; where
/// one is further off, its datagrams and those sent to it are dropped, it hears none and
/// stops announcing its socket, and membership with it goes over streams (see
/// [`crate::node`]).
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// What the sender signs before the key and packet: no other signed message of distc's can be
/// taken for a datagram.
const SIGNING_TAG: &[u8] = b"distc membership datagram v1\0";

/// Most packet bytes sent in one datagram: what fits, with the datagram's own overhead (about
/// 160 bytes: time, key, signature, nonce and tag), in one Ethernet frame (1472 bytes of UDP
/// payload), so a datagram is never fragmented on a LAN. foca's packets are sized to this
/// ([`crate::membership`]).
pub const MAX_PAYLOAD: usize = 1300;

/// The most bytes a received datagram may have.
pub const MAX_DATAGRAM: usize = 2048;

const NONCE: usize = 24;
const TAG: usize = 16;

/// Why a received datagram was dropped.
#[derive(Debug, thiserror::Error)]
pub enum DatagramError {
    #[error("not sealed with this mesh's key (a peer of another mesh, or corrupted)")]
    Unsealed,
    #[error("malformed datagram: {0}")]
    Malformed(&'static str),
    #[error("bad signature for the key it carries")]
    BadSignature,
    #[error(
        "sent {off_s} s from this machine's clock, beyond the {} s allowed (a replay, or a clock to fix)",
        MAX_SKEW_MS / 1000
    )]
    Stale { off_s: i64 },
}

/// Seals this peer's datagrams and opens others'.
pub struct Sealer {
    keypair: identity::Keypair,
    /// The sender's public key, encoded once.
    public: Vec<u8>,
    cipher: Option<XChaCha20Poly1305>,
}

impl Sealer {
    /// For a peer with `keypair`; `mesh_key` (the 32 bytes of the mesh key) closes the
    /// datagrams to the mesh.
    pub fn new(keypair: identity::Keypair, mesh_key: Option<[u8; 32]>) -> Sealer {
        let cipher = mesh_key.map(|k| {
            let mut h = Sha256::new();
            h.update(b"distc membership datagram key v1\0");
            h.update(k);
            let key: [u8; 32] = h.finalize().into();
            XChaCha20Poly1305::new(&key.into())
        });
        Sealer {
            public: keypair.public().encode_protobuf(),
            keypair,
            cipher,
        }
    }

    /// The datagram carrying `packet`, sent at `now_ms` (ms since the epoch); `None` when
    /// this key type cannot sign.
    pub fn seal(&self, packet: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        let signature = self
            .keypair
            .sign(&signed(now_ms, &self.public, packet))
            .ok()?;
        let (Ok(klen), Ok(slen)) = (
            u8::try_from(self.public.len()),
            u8::try_from(signature.len()),
        ) else {
            return None;
        };
        let mut plain = Vec::with_capacity(11 + self.public.len() + signature.len() + packet.len());
        plain.push(FORMAT);
        plain.extend_from_slice(&now_ms.to_le_bytes());
        plain.push(klen);
        plain.extend_from_slice(&self.public);
        plain.push(slen);
        plain.extend_from_slice(&signature);
        plain.extend_from_slice(packet);
        let Some(cipher) = &self.cipher else {
            return Some(plain);
        };
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher.encrypt(&nonce, plain.as_slice()).ok()?;
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// The sender, its send time and the packet of a received datagram, checked (also
    /// against `now_ms`, the receiver's clock).
    pub fn open(&self, datagram: &[u8], now_ms: u64) -> Result<Opened, DatagramError> {
        let plain;
        let bytes = match &self.cipher {
            Some(cipher) => {
                if datagram.len() < NONCE + TAG {
                    return Err(DatagramError::Unsealed);
                }
                let (nonce, sealed) = datagram.split_at(NONCE);
                plain = cipher
                    .decrypt(XNonce::from_slice(nonce), sealed)
                    .map_err(|_| DatagramError::Unsealed)?;
                plain.as_slice()
            }
            None => datagram,
        };
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], DatagramError> {
            if rest.len() < n {
                return Err(DatagramError::Malformed("truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(1)? != [FORMAT] {
            return Err(DatagramError::Malformed("unknown format"));
        }
        let mut sent = [0u8; 8];
        sent.copy_from_slice(take(8)?);
        let sent_ms = u64::from_le_bytes(sent);
        let klen = take(1)?[0] as usize;
        let public = take(klen)?;
        let slen = take(1)?[0] as usize;
        let signature = take(slen)?;
        let packet = rest;
        let key = identity::PublicKey::try_decode_protobuf(public)
            .map_err(|_| DatagramError::Malformed("not a public key"))?;
        if !key.verify(&signed(sent_ms, public, packet), signature) {
            return Err(DatagramError::BadSignature);
        }
        if sent_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(DatagramError::Stale {
                off_s: (sent_ms as i64 - now_ms as i64) / 1000,
            });
        }
        Ok(Opened {
            from: key.to_peer_id(),
            sent_ms,
            packet: packet.to_vec(),
        })
    }
}

/// A datagram that passed [`Sealer::open`].
#[derive(Debug)]
pub struct Opened {
    pub from: PeerId,
    /// When the sender sealed it, by its clock (ms since the epoch).
    pub sent_ms: u64,
    pub packet: Vec<u8>,
}

fn signed(sent_ms: u64, public: &[u8], packet: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_TAG.len() + 8 + public.len() + packet.len());
    m.extend_from_slice(SIGNING_TAG);
    m.extend_from_slice(&sent_ms.to_le_bytes());
    m.extend_from_slice(public);
    m.extend_from_slice(packet);
    m
}

/// The UDP endpoint a member announces (its first `/ip4|ip6/A/udp/P` address without a
/// protocol above UDP), if any.
pub fn endpoint(addrs: &[Multiaddr]) -> Option<SocketAddr> {
    addrs.iter().find_map(|a| {
        let mut it = a.iter();
        let ip: IpAddr = match it.next()? {
            Protocol::Ip4(ip) => ip.into(),
            Protocol::Ip6(ip) => ip.into(),
            _ => return None,
        };
        let Protocol::Udp(port) = it.next()? else {
            return None;
        };
        match it.next() {
            None | Some(Protocol::P2p(_)) => Some(SocketAddr::new(ip, port)),
            _ => None,
        }
    })
}

/// True for an address libp2p streams can be opened to: not a datagram endpoint.
pub fn is_stream_addr(a: &Multiaddr) -> bool {
    !a.iter().any(|p| matches!(p, Protocol::Udp(_)))
}

/// `addrs` without the datagram endpoints.
pub fn stream_addrs(addrs: &[Multiaddr]) -> Vec<Multiaddr> {
    addrs
        .iter()
        .filter(|a| is_stream_addr(a))
        .cloned()
        .collect()
}

/// The datagram endpoint beside a TCP listen address: the same host, `/udp/port` for
/// `/tcp/port`, when a socket bound to `bound` serves that host on that port (the same port;
/// the same address, or any address of its family when bound to the unspecified one).
pub fn beside(tcp: &Multiaddr, bound: SocketAddr) -> Option<Multiaddr> {
    let mut it = tcp.iter();
    let host = it.next()?;
    let ip: IpAddr = match host {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let serves = if bound.ip().is_unspecified() {
        ip.is_ipv4() == bound.ip().is_ipv4()
    } else {
        ip == bound.ip()
    };
    match it.next()? {
        Protocol::Tcp(p) if p == bound.port() && serves => {}
        _ => return None,
    }
    Some(
        Multiaddr::empty()
            .with(host)
            .with(Protocol::Udp(bound.port())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000_000;

    fn sealer(key: Option<[u8; 32]>) -> Sealer {
        Sealer::new(identity::Keypair::generate_ed25519(), key)
    }

    #[test]
    fn round_trip_names_the_sender() {
        for key in [None, Some([7u8; 32])] {
            let a = sealer(key);
            let b = sealer(key);
            let d = a.seal(b"probe", NOW).unwrap();
            let o = b.open(&d, NOW + 1000).unwrap();
            assert_eq!(o.from, a.keypair.public().to_peer_id());
            assert_eq!((o.packet.as_slice(), o.sent_ms), (&b"probe"[..], NOW));
        }
    }

    #[test]
    fn another_mesh_or_a_tampered_datagram_is_refused() {
        let a = sealer(Some([1; 32]));
        let other = sealer(Some([2; 32]));
        let open = sealer(None);
        let d = a.seal(b"probe", NOW).unwrap();
        assert!(matches!(other.open(&d, NOW), Err(DatagramError::Unsealed)));
        assert!(open.open(&d, NOW).is_err());
        let mut t = d.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(matches!(
            sealer(Some([1; 32])).open(&t, NOW),
            Err(DatagramError::Unsealed)
        ));
        // Open mesh: a changed packet fails the signature, a truncated one the parse.
        let d = open.seal(b"probe", NOW).unwrap();
        let mut t = d.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(matches!(a.open(&t, NOW), Err(DatagramError::Unsealed)));
        assert!(matches!(
            sealer(None).open(&t, NOW),
            Err(DatagramError::BadSignature)
        ));
        assert!(sealer(None).open(&d[..10], NOW).is_err());
        assert!(sealer(None).open(&[], NOW).is_err());
        // A changed send time fails the signature too.
        let mut t = d.clone();
        t[1] ^= 1;
        assert!(matches!(
            sealer(None).open(&t, NOW),
            Err(DatagramError::BadSignature)
        ));
    }

    #[test]
    fn a_datagram_too_old_or_from_too_far_ahead_is_refused() {
        let a = sealer(Some([3; 32]));
        let b = sealer(Some([3; 32]));
        let d = a.seal(b"probe", NOW).unwrap();
        assert!(b.open(&d, NOW + MAX_SKEW_MS).is_ok());
        assert!(matches!(
            b.open(&d, NOW + MAX_SKEW_MS + 1),
            Err(DatagramError::Stale { .. })
        ));
        assert!(matches!(
            b.open(&d, NOW - MAX_SKEW_MS - 1),
            Err(DatagramError::Stale { .. })
        ));
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        // Key of one peer, signature of another: the datagram cannot speak for the first.
        let a = sealer(None);
        let b = sealer(None);
        let da = a.seal(b"x", NOW).unwrap();
        let db = b.seal(b"x", NOW).unwrap();
        let klen = da[9] as usize;
        let mut forged = da[..10 + klen].to_vec();
        forged.extend_from_slice(&db[10 + klen..]);
        assert!(matches!(
            sealer(None).open(&forged, NOW),
            Err(DatagramError::BadSignature)
        ));
    }

    #[test]
    fn endpoints_and_stream_addresses() {
        let tcp: Multiaddr = "/ip4/10.0.0.5/tcp/4100".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:4100".parse().unwrap();
        let udp = beside(&tcp, any).unwrap();
        assert_eq!(udp.to_string(), "/ip4/10.0.0.5/udp/4100");
        assert!(beside(&tcp, "0.0.0.0:4101".parse().unwrap()).is_none());
        assert!(beside(&tcp, "10.0.0.6:4100".parse().unwrap()).is_none());
        assert!(beside(&tcp, "10.0.0.5:4100".parse().unwrap()).is_some());
        let v6: Multiaddr = "/ip6/fd00::5/tcp/4100".parse().unwrap();
        assert!(
            beside(&v6, any).is_none(),
            "an IPv4 socket serves no IPv6 address"
        );
        let quic: Multiaddr = "/ip4/10.0.0.6/udp/4100/quic-v1".parse().unwrap();
        let addrs = vec![tcp.clone(), quic, udp];
        assert_eq!(
            endpoint(&addrs),
            Some("10.0.0.5:4100".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(stream_addrs(&addrs), vec![tcp.clone()]);
        assert_eq!(endpoint(&[tcp]), None);
    }
}
