//! Why a connection failed: "unreachable" (no TCP connection), "not answering" (connected, but
//! the other side never said a word) or "rejected" (the other side spoke, but the mesh key
//! handshake failed: it has another key, no key, or is not a distc peer).
//!
//! With libp2p pnet, a peer with another key still completes the TCP connection and the
//! exchange of nonces; what follows is garbage to both sides, so the failure shows up as a reset
//! *or as a timeout* later in the upgrade. The error alone cannot tell that apart from a
//! stopped peer (whose kernel accepts the connection, then nothing) or an unreachable host, so
//! the transport wraps every TCP stream in a [`Watched`] stream that records whether the other
//! side sent anything, and [`Attempts`] keeps that record per address until the swarm reports
//! how the attempt ended. [`Rejections`] is the table of refused addresses that `distc status`
//! shows, and decides when a refusal is worth a warning (rate-limited per address).
//!
//! Being the one wrapper around every TCP stream, [`Watched`] also counts the bytes each moves
//! and the connections made ([`TcpTraffic`]): what the node costs on the wire, handshakes and
//! encryption included.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

const CONNECTED: u8 = 0;
const HEARD: u8 = 1;
const CLOSED: u8 = 2;

/// How far a connection attempt got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// No TCP connection was made (refused, no route, or the connect timed out).
    NoConnection,
    /// Connected, but the other side sent nothing before the attempt ended (a stopped or hung
    /// process, or a port probe).
    Silent,
    /// Connected, and the other side closed it without sending anything.
    Closed,
    /// Connected, and the other side sent bytes: it runs a handshake we could not complete.
    Heard,
}

/// A TCP stream that records, once, whether the other side sent anything, and counts the bytes
/// it moves.
pub(crate) struct Watched<S> {
    inner: S,
    /// `None` once something was heard (nothing left to record).
    state: Option<Arc<AtomicU8>>,
    tcp: Arc<TcpTraffic>,
}

/// Every byte this node's TCP streams moved, and the TCP connections made (both directions),
/// since start.
#[derive(Debug, Default)]
pub struct TcpTraffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub connections: AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.tcp.received.fetch_add(*n as u64, Ordering::Relaxed);
        }
        if let (Poll::Ready(res), Some(state)) = (&r, &self.state) {
            let now = match res {
                Ok(n) if *n > 0 => HEARD,
                _ => CLOSED,
            };
            let _ = state.compare_exchange(CONNECTED, now, Ordering::Relaxed, Ordering::Relaxed);
            if now == HEARD {
                self.state = None;
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.tcp.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Connection attempts whose TCP connection exists but whose outcome the swarm has not
/// reported yet, by remote address (the dialed address, or the inbound send-back address).
/// Shared between the transport (which adds) and the event loop (which takes).
#[derive(Clone, Default)]
pub(crate) struct Attempts(Arc<Mutex<HashMap<Multiaddr, Attempt>>>, Arc<TcpTraffic>);

/// When the TCP connection was made, and what was heard on it since.
type Attempt = (Instant, Arc<AtomicU8>);

/// Attempts older than this are forgotten (the swarm ends every attempt well before: the
/// transport's upgrade timeout is 10 s; an address dropped because another one won the dial
/// reports nothing).
const ATTEMPT_TTL: Duration = Duration::from_secs(120);

impl Attempts {
    /// Called by the transport once TCP is connected: wraps the stream and starts the record.
    pub(crate) fn watch<S>(&self, socket: S, point: &ConnectedPoint) -> Watched<S> {
        let state = Arc::new(AtomicU8::new(CONNECTED));
        if let Ok(mut m) = self.0.lock() {
            m.insert(
                point.get_remote_address().clone(),
                (Instant::now(), state.clone()),
            );
        }
        self.1.connections.fetch_add(1, Ordering::Relaxed);
        Watched {
            inner: socket,
            state: Some(state),
            tcp: self.1.clone(),
        }
    }

    /// The byte and connection counts of every stream this transport wrapped.
    pub(crate) fn tcp(&self) -> Arc<TcpTraffic> {
        self.1.clone()
    }

    /// How far the attempt to or from `addr` got; forgets it.
    pub(crate) fn finish(&self, addr: &Multiaddr) -> Stage {
        let Some((_, state)) = self.0.lock().ok().and_then(|mut m| m.remove(addr)) else {
            return Stage::NoConnection;
        };
        match state.load(Ordering::Relaxed) {
            HEARD => Stage::Heard,
            CLOSED => Stage::Closed,
            _ => Stage::Silent,
        }
    }

    /// Drops records the swarm will never report on.
    pub(crate) fn prune(&self, now: Instant) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|_, (t, _)| now.duration_since(*t) < ATTEMPT_TTL);
        }
    }
}

/// One address whose connections failed the mesh key handshake, as `distc status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The dialed address, or for inbound connections the remote IP address only (its port
    /// changes with every connection).
    pub addr: Multiaddr,
    /// The peer we meant to reach, when the address named one.
    pub peer: Option<PeerId>,
    /// It connected to us (true) or we dialed it (false).
    pub inbound: bool,
    /// Why, in words (what is wrong and what to do).
    pub reason: String,
    /// Failed attempts since the first one.
    pub attempts: u64,
    /// When the last one failed (seconds since the epoch).
    pub last_unix: u64,
}

struct Entry {
    shown: Rejection,
    last: Instant,
    warned: Instant,
    /// Attempts since the last warning.
    unwarned: u64,
}

/// How often one address is warned about at most.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(60);
/// An address not refused again for this long leaves the table.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The refused addresses, and the rate limit of their warnings.
#[derive(Default)]
pub(crate) struct Rejections {
    by_addr: BTreeMap<Multiaddr, Entry>,
}

/// The address a rejection is filed under: the IP alone for inbound connections.
pub(crate) fn rejection_addr(remote: &Multiaddr, inbound: bool) -> Multiaddr {
    let mut out = Multiaddr::empty();
    for p in remote.iter() {
        match p {
            Protocol::P2p(_) => break,
            Protocol::Tcp(_) if inbound => break,
            p => out.push(p),
        }
    }
    out
}

/// What `keyed` peer says about an address that failed its handshake.
pub(crate) fn reason(keyed: bool, inbound: bool) -> String {
    match (keyed, inbound) {
        (true, false) => "does not have this mesh's key (the key handshake failed): run `distc \
                          mesh join TOKEN` there, with the TOKEN `distc mesh token` prints here"
            .into(),
        (true, true) => "connected without this mesh's key (the key handshake failed): run \
                         `distc mesh join TOKEN` on that machine, with the TOKEN `distc mesh \
                         token` prints here"
            .into(),
        (false, _) => "has a mesh key and this peer has none (the handshake failed): run `distc \
                       mesh join TOKEN` here, with the TOKEN `distc mesh token` prints there"
            .into(),
    }
}

impl Rejections {
    /// Files one refused attempt. Returns the warning to log, unless this address was warned
    /// about less than [`WARN_EVERY`] ago.
    pub(crate) fn record(
        &mut self,
        addr: Multiaddr,
        peer: Option<PeerId>,
        inbound: bool,
        reason: String,
        now: Instant,
        now_unix: u64,
    ) -> Option<String> {
        let what = if inbound {
            format!("a peer at {addr}")
        } else {
            match peer {
                Some(p) => format!("{addr} (peer {p})"),
                None => addr.to_string(),
            }
        };
        match self.by_addr.get_mut(&addr) {
            None => {
                let msg = format!("{what} {reason}");
                self.by_addr.insert(
                    addr.clone(),
                    Entry {
                        shown: Rejection {
                            addr,
                            peer,
                            inbound,
                            reason,
                            attempts: 1,
                            last_unix: now_unix,
                        },
                        last: now,
                        warned: now,
                        unwarned: 0,
                    },
                );
                Some(msg)
            }
            Some(e) => {
                e.shown.attempts += 1;
                e.shown.last_unix = now_unix;
                e.shown.reason = reason;
                e.shown.peer = peer.or(e.shown.peer);
                e.last = now;
                e.unwarned += 1;
                if now.duration_since(e.warned) < WARN_EVERY {
                    return None;
                }
                let msg = format!(
                    "{what} {} ({} attempts refused in the last {} s)",
                    e.shown.reason,
                    e.unwarned,
                    now.duration_since(e.warned).as_secs()
                );
                e.warned = now;
                e.unwarned = 0;
                Some(msg)
            }
        }
    }

    /// A connection to `addr` (or with `peer`) succeeded: it is no longer refused.
    pub(crate) fn clear(&mut self, addr: &Multiaddr, peer: &PeerId) -> bool {
        let before = self.by_addr.len();
        self.by_addr
            .retain(|a, e| !(a == addr || (!e.shown.inbound && e.shown.peer == Some(*peer))));
        self.by_addr.len() != before
    }

    /// Forgets addresses not refused for a while. True if any went.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let before = self.by_addr.len();
        self.by_addr
            .retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        self.by_addr.len() != before
    }

    /// The table, for the view.
    pub(crate) fn list(&self) -> Vec<Rejection> {
        self.by_addr.values().map(|e| e.shown.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_rejections_are_filed_by_ip_and_warnings_are_rate_limited() {
        let remote: Multiaddr = "/ip4/10.1.2.3/tcp/54321".parse().unwrap();
        let a = rejection_addr(&remote, true);
        assert_eq!(a.to_string(), "/ip4/10.1.2.3");
        let dialed: Multiaddr =
            "/ip4/10.1.2.3/tcp/7878/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
                .parse()
                .unwrap();
        assert_eq!(
            rejection_addr(&dialed, false).to_string(),
            "/ip4/10.1.2.3/tcp/7878"
        );
        let mut r = Rejections::default();
        let t0 = Instant::now();
        let first = r.record(a.clone(), None, true, reason(true, true), t0, 1);
        assert!(
            first
                .as_deref()
                .is_some_and(|m| m.contains("/ip4/10.1.2.3") && m.contains("distc mesh join")),
            "{first:?}"
        );
        for i in 1..10 {
            let again = r.record(
                a.clone(),
                None,
                true,
                reason(true, true),
                t0 + Duration::from_secs(i),
                1 + i,
            );
            assert!(again.is_none(), "warned twice within a minute");
        }
        let later = r.record(
            a.clone(),
            None,
            true,
            reason(true, true),
            t0 + WARN_EVERY,
            99,
        );
        assert!(
            later.as_deref().is_some_and(|m| m.contains("10 attempts")),
            "{later:?}"
        );
        let list = r.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].attempts, 11);
        assert_eq!(list[0].last_unix, 99);
        assert!(!r.expire(t0 + WARN_EVERY + Duration::from_secs(1)));
        assert!(r.expire(t0 + WARN_EVERY + FORGET_AFTER));
        assert!(r.list().is_empty());
    }

    #[test]
    fn attempts_tell_silence_from_speech() {
        use futures::AsyncReadExt;
        let attempts = Attempts::default();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let point = ConnectedPoint::Listener {
            local_addr: "/ip4/127.0.0.1/tcp/2".parse().unwrap(),
            send_back_addr: addr.clone(),
        };
        assert_eq!(attempts.finish(&addr), Stage::NoConnection);
        let _silent = attempts.watch(futures::io::Cursor::new(Vec::<u8>::new()), &point);
        assert_eq!(attempts.finish(&addr), Stage::Silent);
        let mut closed = attempts.watch(futures::io::Cursor::new(Vec::<u8>::new()), &point);
        let mut buf = [0u8; 4];
        futures::executor::block_on(closed.read(&mut buf)).unwrap();
        assert_eq!(attempts.finish(&addr), Stage::Closed);
        let mut heard = attempts.watch(futures::io::Cursor::new(b"nonce".to_vec()), &point);
        futures::executor::block_on(heard.read(&mut buf)).unwrap();
        assert_eq!(attempts.finish(&addr), Stage::Heard);
    }
}
