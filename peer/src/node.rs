//! The libp2p node, run as an actor.
//!
//! [`new`] returns a cloneable [`Node`] handle and an [`EventLoop`]. The event loop owns the
//! `Swarm`, the member table and the map of requests in flight, and runs one `select!` over
//! swarm events, commands from handles, finished inbound work, foca's timers and a housekeeping tick. Handles
//! never touch the swarm: they send a [`Command`] carrying a oneshot for the reply, and read
//! the latest [`View`] (members + ring) from a watch channel. Membership (SWIM, see
//! [`crate::membership`]) runs on its own request-response protocol ([`crate::swim`]); its
//! timers fire from the same loop. This module is the mechanism
//! only: the policy built on those two primitives (get from the owners, replicate, repair,
//! flush, how an inbound request is answered) lives in [`crate::mesh`], so the loop itself
//! never waits on anything and never decides whom to ask.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, identify, identity, mdns, noise, pnet,
    request_response, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::datagram;
use crate::handshake::{self, Attempts, Rejections, Stage};
use crate::key::Key;
use crate::membership::{self, Liveness, Membership, Timing};
use crate::metrics;
use crate::offload::{self, CompileRequest, CompileResponse, OffloadCodec};
use crate::protocol::{self, Codec, Envelope, NodeCodec, Request, Response};
use crate::ring::Ring;
use crate::slots::SlotAdvert;
use crate::store::{Store, Usage};
use crate::swim::{self, SwimCodec, SwimRequest, SwimResponse};
use crate::trust::{Trust, TrustPolicy};

/// The default hedge delay ([`NodeConfig::hedge_delay`]): well above a LAN round trip to a
/// peer serving from its disk (a few ms), well below a compile.
pub const DEFAULT_HEDGE_DELAY: Duration = Duration::from_millis(100);

/// The window `View::membership_rate` is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A view whose ring did not change is published at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// How a node is set up. Built by the daemon from the config file and flags.
#[derive(Clone)]
pub struct NodeConfig {
    /// The peer's identity (persisted by the daemon so the id survives restarts).
    pub keypair: identity::Keypair,
    /// Multiaddrs to listen on.
    pub listen: Vec<Multiaddr>,
    /// Multiaddrs to dial at start and whenever no peer is connected.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN by mDNS.
    pub mdns: bool,
    /// Mesh key: with one, every connection is wrapped in libp2p pnet.
    pub psk: Option<pnet::PreSharedKey>,
    /// Copies of each entry (R).
    pub replication: usize,
    /// Virtual nodes per member of the default weight on the ring.
    pub vnodes: usize,
    /// This peer's weight on the ring ([`crate::ring::weight_for_size`] of its store by
    /// default); 0 makes it a client: a member that owns no range and reads and writes
    /// through the owners.
    pub weight: u32,
    /// Largest entry sent or accepted, in bytes.
    pub max_entry_size: u64,
    /// Upper bound of one whole request-response exchange (libp2p's own timeout).
    pub request_timeout: Duration,
    /// How long a get waits for one peer to start answering before giving it up, at least
    /// 5 s (once its answer has started, the answer's size and the peer's throughput set the
    /// time).
    pub get_timeout: Duration,
    /// How long a get waits for one peer to start answering before also asking the next one
    /// (hedging): a stalled owner costs this, not `get_timeout`.
    pub hedge_delay: Duration,
    /// Bytes per second the background repair (entries handed to new owners after the ring
    /// changed) sends at most; 0 is no limit.
    pub repair_rate: u64,
    /// The node's housekeeping tick: store usage refresh, bootstrap redials, anti-entropy.
    pub gossip_interval: Duration,
    /// SWIM probe, suspicion and anti-entropy timing.
    pub timing: Timing,
    /// Connections without traffic are closed after this long.
    pub idle_connection_timeout: Duration,
    /// Most members a peer keeps connections to; beyond it the least recently used idle ones
    /// are closed (a member needed later is dialed again: its addresses travel with its
    /// membership record).
    pub max_connections: usize,
    /// Protocol versions spoken, preferred first ([`protocol::PROTOCOLS`]; tests and the
    /// benchmark pin one to measure or check interoperation).
    pub protocols: Vec<StreamProtocol>,
    /// Whose entries this node accepts from other peers ([`crate::trust`]).
    pub trust: TrustPolicy,
    /// Compiles for other peers, and this peer's slot advert ([`crate::offload`]); `None`
    /// advertises nothing and refuses every compile (it can still send its own).
    pub offload: Option<Arc<offload::Server>>,
    /// Membership packets over UDP beside the TCP listener ([`crate::datagram`]); off, every
    /// packet goes over a libp2p stream (benchmarks compare the two).
    pub datagrams: bool,
}

impl NodeConfig {
    /// Sensible defaults around an identity; tests and the daemon override fields.
    pub fn new(keypair: identity::Keypair) -> NodeConfig {
        NodeConfig {
            keypair,
            listen: vec![
                Multiaddr::empty()
                    .with(libp2p::multiaddr::Protocol::Ip4(
                        std::net::Ipv4Addr::LOCALHOST,
                    ))
                    .with(libp2p::multiaddr::Protocol::Tcp(0)),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            psk: None,
            replication: 2,
            vnodes: crate::ring::DEFAULT_VNODES,
            weight: crate::ring::DEFAULT_WEIGHT,
            max_entry_size: 256 << 20,
            request_timeout: Duration::from_secs(30),
            get_timeout: Duration::from_secs(2),
            hedge_delay: DEFAULT_HEDGE_DELAY,
            repair_rate: 0,
            gossip_interval: Duration::from_millis(500),
            timing: Timing::default(),
            // Connections live while used (probes, anti-entropy, fetches) and close after
            // this long idle, so a peer holds a dozen or so, not one per member; a member it
            // needs is dialed on demand (its address travels with its membership record).
            idle_connection_timeout: Duration::from_secs(10),
            max_connections: 16,
            protocols: protocol::PROTOCOLS.to_vec(),
            trust: TrustPolicy::default(),
            offload: None,
            datagrams: true,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot set up encryption (noise): {0}")]
    Noise(#[from] noise::Error),
    #[error("cannot start mDNS discovery: {0}")]
    Mdns(std::io::Error),
    #[error("cannot listen on {addr}: {reason} (is another program using that port?)")]
    Listen { addr: Multiaddr, reason: String },
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
}

/// Why a request to another peer failed. Every one of them is a miss to the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("peer speaks another distc protocol version")]
    Incompatible,
    #[error("peer did not answer in time")]
    Timeout,
    #[error("request failed: {0}")]
    Failed(String),
    #[error("the local node has stopped")]
    Stopped,
}

/// A member as the handle sees it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub id: PeerId,
    pub addrs: Vec<Multiaddr>,
    /// Its weight on the ring; 0 for a client.
    pub weight: u32,
    pub liveness: Liveness,
    pub last_seen_unix: u64,
    pub usage: Usage,
    pub connected: bool,
}

/// A snapshot of the node's state, published after every change.
#[derive(Debug, Clone)]
pub struct View {
    pub me: PeerId,
    pub listen: Vec<Multiaddr>,
    pub usage: Usage,
    /// Shared with the event loop and every earlier view until the member set changes.
    pub ring: Arc<Ring>,
    pub members: Vec<MemberView>,
    pub replication: usize,
    /// Addresses whose connections failed the mesh key handshake lately.
    pub rejected: Vec<handshake::Rejection>,
    /// Membership protocol bytes this node has sent and received since start, and its
    /// membership requests that failed.
    pub membership_sent: u64,
    pub membership_received: u64,
    pub membership_failed: u64,
    /// Membership datagrams accepted, and dropped (unsealed, unsigned or malformed), since
    /// start ([`crate::datagram`]).
    pub datagrams_received: u64,
    pub datagrams_dropped: u64,
    /// Bytes on this node's TCP connections (every protocol, handshakes and encryption
    /// included) and TCP connections made, since start.
    pub tcp_sent: u64,
    pub tcp_received: u64,
    pub tcp_connections: u64,
    /// Membership bytes per second (sent + received) over the last ten seconds or so.
    pub membership_rate: f64,
    /// The latest compile-slot advert of every member that sent one, and this peer's own.
    pub slots: Vec<(PeerId, SlotAdvert)>,
    /// How many times slower than configured this peer probes and suspects just now, because
    /// its timers fire late (1 = on time; see [`Membership::slowdown`]).
    pub slowdown: u32,
    /// Members connected with nothing in flight either way for a second: what
    /// `max_connections` bounds.
    pub idle_connections: usize,
}

impl View {
    pub fn member(&self, id: &PeerId) -> Option<&MemberView> {
        self.members.iter().find(|m| m.id == *id)
    }

    /// Worth asking right now (not believed down).
    pub fn routable(&self, id: &PeerId) -> bool {
        self.member(id)
            .is_some_and(|m| m.liveness != Liveness::Down)
    }
}

enum Command {
    Request {
        peer: PeerId,
        request: Request,
        /// Where the codec reports the answer's header (size), if the caller watches it.
        progress: Option<Arc<crate::transfer::Progress>>,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Unreachable(PeerId),
    Leave(oneshot::Sender<()>),
    Compile {
        peer: PeerId,
        request: Box<CompileRequest>,
        reply: oneshot::Sender<Result<CompileResponse, RequestError>>,
    },
}

enum Pending {
    Client(oneshot::Sender<Result<Response, RequestError>>),
}

/// A membership request in flight.
enum SwimPending {
    Packet,
    /// An anti-entropy exchange; `pushed` if our table went with it.
    Sync {
        pushed: bool,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    rr: request_response::Behaviour<NodeCodec>,
    swim: request_response::Behaviour<SwimCodec>,
    compile: request_response::Behaviour<OffloadCodec>,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The handle. Cheap to clone; all clones talk to the same event loop.
#[derive(Clone)]
pub struct Node {
    cmd: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<View>>,
    pub(crate) store: Store,
    pub(crate) max_entry_size: u64,
    pub(crate) get_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// Entries peers sent for a key that failed the check (another key's, or corrupt), since
    /// start: shown by `distc status`.
    pub(crate) bad_entries: Arc<std::sync::atomic::AtomicU64>,
    /// Signs what this node sends, checks what it receives, holds the policy.
    pub(crate) trust: Arc<Trust>,
    /// Throughput measured to each peer, for transfer timeouts ([`crate::transfer`]).
    pub(crate) throughput: Arc<crate::transfer::Throughput>,
    /// How long a get waits for one peer to start answering before also asking the next.
    pub(crate) hedge_delay: Duration,
    /// Bytes per second the background repair sends at most (0: no limit).
    pub(crate) repair_rate: u64,
}

/// The actor: owns the swarm. Run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    cmd_rx: mpsc::Receiver<Command>,
    done_tx: mpsc::UnboundedSender<(request_response::ResponseChannel<Response>, Response)>,
    done_rx: mpsc::UnboundedReceiver<(request_response::ResponseChannel<Response>, Response)>,
    view_tx: watch::Sender<Arc<View>>,
    membership: Membership,
    pending: HashMap<request_response::OutboundRequestId, Pending>,
    swim_pending: HashMap<request_response::OutboundRequestId, SwimPending>,
    /// Compiles sent to other peers, waiting for their answer.
    compile_pending: HashMap<
        request_response::OutboundRequestId,
        oneshot::Sender<Result<CompileResponse, RequestError>>,
    >,
    /// Guests' compiles finished, to be answered.
    compiled_tx: mpsc::UnboundedSender<(
        request_response::ResponseChannel<CompileResponse>,
        CompileResponse,
    )>,
    compiled_rx: mpsc::UnboundedReceiver<(
        request_response::ResponseChannel<CompileResponse>,
        CompileResponse,
    )>,
    /// The serving side, when this peer serves.
    offload: Option<Arc<offload::Server>>,
    /// The last advert sent (what it said, and when).
    advertised: Option<(u32, Vec<crate::toolchain::ToolchainId>, Instant)>,
    /// Membership bytes moved (shown by `distc status`).
    traffic: Arc<swim::Traffic>,
    /// What the datagram socket is bound from: the configured listen addresses, and the
    /// sealer, until it is bound (`None` when datagrams are off).
    udp_setup: Option<(Vec<Multiaddr>, datagram::Sealer)>,
    /// The membership datagram socket, once bound.
    udp: Option<Udp>,
    /// Bytes and connections on the wire, every protocol.
    tcp: Arc<handshake::TcpTraffic>,
    /// Membership bytes moved as of a moment at least [`RATE_WINDOW`] ago, and the rate
    /// measured since the one before.
    rate_mark: (Instant, u64),
    membership_rate: f64,
    next_sync: Instant,
    store: Store,
    /// For the inbound requests the store answers ([`crate::mesh::serve`]).
    trust: Arc<Trust>,
    /// Peers that do not speak our protocol version: never asked anything.
    incompatible: HashSet<PeerId>,
    /// The protocol versions we speak.
    protocols: Vec<StreamProtocol>,
    /// Bootstrap addresses and, once dialed, the peer behind each.
    bootstrap: Vec<(Multiaddr, Option<PeerId>)>,
    /// Addresses of peers found by mDNS/identify that are not members yet.
    hints: HashMap<PeerId, Vec<Multiaddr>>,
    listen_addrs: Vec<Multiaddr>,
    /// The members (with weights) the ring was last built from.
    ring_members: Vec<(PeerId, u32)>,
    ring: Arc<Ring>,
    /// When the view was last published (at most every [`PUBLISH_EVERY`] unless the ring
    /// changed: with hundreds of members a view is not free).
    published: Instant,
    replication: usize,
    vnodes: usize,
    max_entry_size: u64,
    gossip_interval: Duration,
    ticks: u64,
    dirty: bool,
    /// Whether this node has a mesh key (changes what a failed handshake means).
    keyed: bool,
    /// When we last sent a request to or got one from each peer, and how many requests to it
    /// (and entry requests from it) are in flight: what decides which connections to close
    /// past `max_connections`.
    used: HashMap<PeerId, (Instant, u32)>,
    /// Members whose connections `trim_connections` closed and that have not reported closed
    /// yet: neither counted against the bound nor closed twice.
    closing: HashSet<PeerId>,
    max_connections: usize,
    /// Connection attempts past TCP connect, shared with the transport ([`handshake`]).
    attempts: Attempts,
    /// Addresses refused at the key handshake: warned about, shown by `distc status`.
    rejections: Rejections,
}

fn build_transport(
    keypair: &identity::Keypair,
    psk: Option<pnet::PreSharedKey>,
    attempts: Attempts,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NodeError> {
    let noise = noise::Config::new(keypair)?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let mut yamux_cfg = yamux::Config::default();
    yamux_cfg.set_max_num_streams(512);
    let upgrade_timeout = Duration::from_secs(10);
    Ok(match psk {
        Some(psk) => tcp
            .and_then(move |socket, point| {
                pnet::PnetConfig::new(psk).handshake(attempts.watch(socket, &point))
            })
            .upgrade(upgrade::Version::V1)
            .authenticate(noise)
            .multiplex(yamux_cfg)
            .timeout(upgrade_timeout)
            .boxed(),
        None => tcp
            .and_then(move |socket, point| {
                futures::future::ok::<_, std::io::Error>(attempts.watch(socket, &point))
            })
            .upgrade(upgrade::Version::V1)
            .authenticate(noise)
            .multiplex(yamux_cfg)
            .timeout(upgrade_timeout)
            .boxed(),
    })
}

/// `addr` without its trailing `/p2p/ID`, and that id.
pub fn strip_p2p(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut a = addr.clone();
    match a.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(id)) => (a, Some(id)),
        Some(p) => {
            a.push(p);
            (a, None)
        }
        None => (a, None),
    }
}

/// True if a dial tried at least one address and every one refused the connection (the host
/// answered that nothing listens there): what a crashed peer's address says, unlike a host that
/// is asleep, cut off or too busy to answer (its kernel still accepts, or nothing answers).
fn refused_everywhere(tried: &[(Multiaddr, libp2p::TransportError<std::io::Error>)]) -> bool {
    !tried.is_empty()
        && tried.iter().all(|(_, e)| match e {
            libp2p::TransportError::Other(e) => is_refusal(e),
            libp2p::TransportError::MultiaddrNotSupported(_) => false,
        })
}

/// True if `e`, or an error it wraps, is a refused connection. The transport's error comes
/// wrapped in `Either`s whose `source` skips the error they hold, so the chain may never reach
/// the `io::Error` itself: its rendering (`kind: ConnectionRefused`) is the last resort.
fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    is_refusal_in_chain(e) || format!("{e:?}").contains("kind: ConnectionRefused")
}

fn is_refusal_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
            // An io::Error's `source` skips the error it wraps: look at that one too.
            if let Some(inner) = io.get_ref()
                && is_refusal_in_chain(inner)
            {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// Creates a node: binds the listen addresses and returns the handle and its event loop.
pub fn new(cfg: NodeConfig, store: Store) -> Result<(Node, EventLoop), NodeError> {
    let me = cfg.keypair.public().to_peer_id();
    let trust = Arc::new(Trust::new(&cfg.keypair, cfg.trust.clone())?);
    let attempts = Attempts::default();
    let keyed = cfg.psk.is_some();
    let transport = build_transport(&cfg.keypair, cfg.psk, attempts.clone())?;
    let rr = request_response::Behaviour::with_codec(
        NodeCodec(Codec::new(cfg.max_entry_size)),
        cfg.protocols
            .iter()
            .map(|p| (p.clone(), request_response::ProtocolSupport::Full)),
        // The node bounds every request itself, by size and throughput ([`crate::transfer`]):
        // libp2p's own limit is only the longest any transfer may take.
        request_response::Config::default()
            .with_request_timeout(crate::transfer::MAX_TRANSFER.max(cfg.request_timeout))
            .with_max_concurrent_streams(256),
    );
    let swim_codec = SwimCodec::default();
    let traffic = swim_codec.traffic.clone();
    let swim = request_response::Behaviour::with_codec(
        swim_codec,
        [(swim::PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(cfg.timing.probe_period.max(Duration::from_secs(5)))
            .with_max_concurrent_streams(256),
    );
    let compile = request_response::Behaviour::with_codec(
        OffloadCodec,
        [(offload::PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(600))
            .with_max_concurrent_streams(256),
    );
    let identify = identify::Behaviour::new(identify::Config::new(
        "/distc/id/1.0.0".to_string(),
        cfg.keypair.public(),
    ));
    let mdns = if cfg.mdns {
        let mcfg = mdns::Config {
            ttl: Duration::from_secs(60),
            query_interval: Duration::from_secs(2),
            ..Default::default()
        };
        Some(mdns::tokio::Behaviour::new(mcfg, me).map_err(NodeError::Mdns)?)
    } else {
        None
    };
    let behaviour = Behaviour {
        rr,
        swim,
        compile,
        identify,
        mdns: Toggle::from(mdns),
    };
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        me,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(cfg.idle_connection_timeout),
    );
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NodeError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let weight = cfg.weight.min(crate::ring::MAX_WEIGHT);
    let ring = Arc::new(Ring::weighted([(me, weight)], cfg.vnodes));
    let view = Arc::new(View {
        me,
        listen: Vec::new(),
        usage: store.usage().unwrap_or_default(),
        ring: ring.clone(),
        members: Vec::new(),
        replication: cfg.replication,
        rejected: Vec::new(),
        membership_sent: 0,
        membership_received: 0,
        membership_failed: 0,
        datagrams_received: 0,
        datagrams_dropped: 0,
        tcp_sent: 0,
        tcp_received: 0,
        tcp_connections: 0,
        membership_rate: 0.0,
        slots: Vec::new(),
        slowdown: 1,
        idle_connections: 0,
    });
    let (view_tx, view_rx) = watch::channel(view);
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (compiled_tx, compiled_rx) = mpsc::unbounded_channel();
    let node = Node {
        cmd: cmd_tx,
        view: view_rx,
        store: store.clone(),
        max_entry_size: cfg.max_entry_size,
        get_timeout: cfg.get_timeout,
        request_timeout: cfg.request_timeout,
        bad_entries: Arc::default(),
        trust: trust.clone(),
        throughput: Arc::default(),
        hedge_delay: cfg.hedge_delay,
        repair_rate: cfg.repair_rate,
    };
    let ev = EventLoop {
        swarm,
        cmd_rx,
        done_tx,
        done_rx,
        view_tx,
        membership: Membership::with_weight(me, cfg.timing, weight),
        pending: HashMap::new(),
        swim_pending: HashMap::new(),
        compile_pending: HashMap::new(),
        compiled_tx,
        compiled_rx,
        offload: cfg.offload.clone(),
        advertised: None,
        traffic,
        udp_setup: match (cfg.datagrams, cfg.psk.map(crate::psk::key_bytes)) {
            (false, _) => None,
            // A closed mesh whose key cannot seal datagrams sends none (never unsealed ones).
            (true, Some(None)) => {
                tracing::warn!(
                    "the mesh key cannot seal membership datagrams: membership goes over TCP streams"
                );
                None
            }
            (true, key) => Some((
                cfg.listen.clone(),
                datagram::Sealer::new(cfg.keypair.clone(), key.flatten()),
            )),
        },
        udp: None,
        tcp: attempts.tcp(),
        rate_mark: (Instant::now(), 0),
        membership_rate: 0.0,
        next_sync: Instant::now(),
        store,
        trust,
        incompatible: HashSet::new(),
        protocols: cfg.protocols.clone(),
        bootstrap: cfg.bootstrap.iter().map(strip_p2p).collect(),
        hints: HashMap::new(),
        listen_addrs: Vec::new(),
        ring_members: vec![(me, weight)],
        ring,
        published: Instant::now(),
        replication: cfg.replication.max(1),
        vnodes: cfg.vnodes,
        max_entry_size: cfg.max_entry_size,
        gossip_interval: cfg.gossip_interval,
        ticks: 0,
        dirty: true,
        keyed,
        used: HashMap::new(),
        closing: HashSet::new(),
        max_connections: cfg.max_connections.max(1),
        attempts,
        rejections: Rejections::default(),
    };
    Ok((node, ev))
}

/// The membership datagram socket ([`crate::datagram`]).
struct Udp {
    socket: tokio::net::UdpSocket,
    bound: std::net::SocketAddr,
    sealer: datagram::Sealer,
    /// Whether members are told of it (see [`UDP_SILENCE`]).
    announced: bool,
    /// Whether a datagram has arrived yet. Until one has (while the socket is announced),
    /// each packet goes both as a datagram and over a stream, whose answer comes back the same
    /// way: a peer whose firewall drops inbound UDP would otherwise miss every ack to its
    /// probes and take its members for dead.
    heard_any: bool,
    /// Where each member's newest datagram came from (its send time, the source address):
    /// where datagrams to it go, which also finds a member behind NAT or on several
    /// addresses. Older datagrams (replays) change nothing.
    sources: HashMap<PeerId, (u64, std::net::SocketAddr)>,
    /// When a datagram last arrived (or the socket was bound, or the process woke up).
    heard: Instant,
    /// The last [`EventLoop::check_udp_silence`].
    checked: Instant,
}

/// With members that announce datagram sockets and no datagram from any of them for this
/// long, a peer's inbound UDP is blocked (a firewall that passes its TCP port only, an address
/// others reach only through a proxy): in a mesh of any size a peer is probed about once a
/// second. It stops announcing its socket, so members reach it over streams, and says so.
const UDP_SILENCE: Duration = Duration::from_secs(15);

/// The next datagram on `udp` (never, without a socket); `None` on a receive error.
async fn recv_datagram(udp: Option<&Udp>, buf: &mut [u8]) -> Option<(usize, std::net::SocketAddr)> {
    match udp {
        Some(u) => u.socket.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

/// The host and port of an `/ip4|ip6/A/tcp/P` address.
fn ip_tcp(a: &Multiaddr) -> Option<(std::net::IpAddr, u16)> {
    use libp2p::multiaddr::Protocol;
    let mut it = a.iter();
    let ip: std::net::IpAddr = match it.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(p) => Some((ip, p)),
        _ => None,
    }
}

impl EventLoop {
    /// Runs until every handle is dropped or [`Node::leave`] is called.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.gossip_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Know our own addresses before anyone learns of us: they are part of our membership
        // identity, and each change is a new generation the mesh has to learn.
        let listening = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut settle: Option<tokio::time::Instant> = None;
        loop {
            let until = settle.unwrap_or(listening).min(listening);
            match tokio::time::timeout_at(until, self.swarm.select_next_some()).await {
                Ok(ev) => self.on_swarm_event(ev),
                Err(_) => break,
            }
            if self.dirty {
                self.publish();
            }
            if settle.is_none() && !self.listen_addrs.is_empty() {
                // One address per interface arrives in a burst: take the whole burst.
                settle = Some(tokio::time::Instant::now() + Duration::from_millis(50));
            }
        }
        self.bind_udp();
        self.publish();
        for i in 0..self.bootstrap.len() {
            self.dial_bootstrap(i);
        }
        let mut datagram = vec![0u8; datagram::MAX_DATAGRAM];
        loop {
            let timer = self
                .membership
                .next_timer()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = tokio::time::sleep_until(timer.into()) => {
                    // What already arrived (an ack) counts before a timer says it did not.
                    for _ in 0..256 {
                        match futures::FutureExt::now_or_never(self.swarm.select_next_some()) {
                            Some(ev) => self.on_swarm_event(ev),
                            None => break,
                        }
                    }
                    self.membership.fire_timers(Instant::now());
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Leave(reply)) => {
                        self.leave().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(c) => self.on_command(c),
                    None => return,
                },
                Some((channel, response)) = self.done_rx.recv() => {
                    let _ = self.swarm.behaviour_mut().rr.send_response(channel, response);
                }
                Some((channel, response)) = self.compiled_rx.recv() => {
                    let _ = self.swarm.behaviour_mut().compile.send_response(channel, response);
                }
                _ = tick.tick() => self.on_tick(),
                got = recv_datagram(self.udp.as_ref(), &mut datagram) => {
                    if let Some((n, from)) = got {
                        self.on_datagram(&datagram[..n], from);
                    }
                    // What else has arrived, without waiting.
                    for _ in 0..64 {
                        let Some(u) = &self.udp else { break };
                        let Ok((n, from)) = u.socket.try_recv_from(&mut datagram) else {
                            break;
                        };
                        self.on_datagram(&datagram[..n], from);
                    }
                }
            }
            self.flush_outbox();
            if self.membership.take_changed() {
                self.dirty = true;
            }
            if self.dirty {
                self.maybe_publish();
            }
        }
    }

    /// Tells a few members we are leaving (they spread it), then gives the messages a moment
    /// to go out.
    async fn leave(&mut self) {
        self.swim_pending.clear();
        self.membership.leave();
        self.flush_outbox();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !self.swim_pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(ev) => self.on_swarm_event(ev),
                Err(_) => break,
            }
        }
    }

    /// Publishes the view if the ring changed or the last one is old enough; otherwise leaves
    /// it dirty for later.
    fn maybe_publish(&mut self) {
        self.publish_view(false);
    }

    fn publish(&mut self) {
        self.publish_view(true);
    }

    fn publish_view(&mut self, force: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.dirty = false;
        let now = Instant::now();
        // Connections go idle as time passes, not on an event: close those beyond the bound
        // before saying how many there are.
        self.trim_connections(now);
        let ring_members = self.membership.ring_weights();
        if ring_members != self.ring_members {
            let named = |list: &[(PeerId, u32)], p: &PeerId| list.iter().any(|m| m.0 == *p);
            let describe = |(p, w): &(PeerId, u32)| match w {
                0 => format!("{p} (client)"),
                w => format!("{p} (weight {w})"),
            };
            let joined: Vec<String> = ring_members
                .iter()
                .filter(|m| !named(&self.ring_members, &m.0))
                .map(describe)
                .collect();
            let left: Vec<String> = self
                .ring_members
                .iter()
                .filter(|m| !named(&ring_members, &m.0))
                .map(|m| m.0.to_string())
                .collect();
            let reweighted: Vec<String> = ring_members
                .iter()
                .filter(|m| named(&self.ring_members, &m.0) && !self.ring_members.contains(m))
                .map(describe)
                .collect();
            tracing::info!(
                members = ring_members.len(),
                "ring changed: joined [{}], left [{}], reweighted [{}]",
                joined.join(", "),
                left.join(", "),
                reweighted.join(", ")
            );
            self.ring = Arc::new(self.ring.rebuilt(ring_members.iter().copied(), self.vnodes));
            self.ring_members = ring_members;
        } else if !force && now.duration_since(self.published) < PUBLISH_EVERY {
            // Nothing the ring depends on changed: the rest can wait for the next tick.
            self.dirty = true;
            return;
        }
        self.published = now;
        // What the view says about connections holds the bound: idle ones past it close now.
        self.trim_connections(now);
        let members = self
            .membership
            .members()
            .into_iter()
            .map(|m| MemberView {
                id: m.id,
                addrs: m.addrs.clone(),
                weight: m.weight,
                liveness: self.membership.liveness(&m, now),
                last_seen_unix: m.last_seen_unix,
                usage: m.usage,
                connected: self.swarm.is_connected(&m.id),
            })
            .collect();
        let view = View {
            me: self.membership.me(),
            listen: self.listen_addrs.clone(),
            usage: self.membership.local_usage(),
            ring: self.ring.clone(),
            members,
            replication: self.replication,
            rejected: self.rejections.list(),
            membership_sent: self.traffic.sent.load(Relaxed),
            membership_received: self.traffic.received.load(Relaxed),
            membership_failed: self.traffic.failed.load(Relaxed),
            datagrams_received: self.traffic.datagrams.load(Relaxed),
            datagrams_dropped: self.traffic.dropped.load(Relaxed),
            tcp_sent: self.tcp.sent.load(Relaxed),
            tcp_received: self.tcp.received.load(Relaxed),
            tcp_connections: self.tcp.connections.load(Relaxed),
            membership_rate: self.membership_rate,
            slots: self.membership.slots().current(),
            slowdown: self.membership.slowdown(),
            idle_connections: self.idle_connections(now).len(),
        };
        self.view_tx.send_replace(Arc::new(view));
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Request {
                peer,
                request,
                progress,
                reply,
            } => {
                if peer == self.membership.me() {
                    let _ = reply.send(Err(RequestError::Failed("request to self".into())));
                    return;
                }
                let addrs = self.addrs_of(&peer);
                let envelope = Envelope {
                    msg: request,
                    progress,
                };
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_request_with_addresses(&peer, envelope, addrs);
                self.pending.insert(id, Pending::Client(reply));
                self.touch(peer, 1);
            }
            Command::Unreachable(peer) => {
                self.membership.set_unreachable(&peer, Instant::now());
                self.dirty = true;
            }
            Command::Compile {
                peer,
                request,
                reply,
            } => {
                if peer == self.membership.me() {
                    let _ = reply.send(Err(RequestError::Failed("request to self".into())));
                    return;
                }
                let addrs = self.addrs_of(&peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .compile
                    .send_request_with_addresses(&peer, *request, addrs);
                self.compile_pending.insert(id, reply);
            }
            Command::Leave(_) => {}
        }
    }

    fn addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self
            .membership
            .get(peer)
            .map(|m| datagram::stream_addrs(&m.addrs))
            .unwrap_or_default();
        if let Some(h) = self.hints.get(peer) {
            addrs.extend(h.iter().cloned());
        }
        addrs
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let now = Instant::now();
        self.membership.tick();
        self.check_udp_silence(now);
        self.attempts.prune(now);
        self.rejections.expire(now);
        if let Ok(u) = self.store.usage() {
            self.membership.set_local_usage(u);
        }
        self.advertise_slots(now);
        // Anti-entropy with one random member.
        if now >= self.next_sync {
            self.next_sync = now + self.membership.timing().sync_interval;
            if let Some((peer, addrs)) = self.membership.sync_target() {
                self.send_sync(peer, addrs, false);
            }
        }
        // Peers found by mDNS or identify that are not members yet: connect, and the
        // connection starts a join. The peer with the smaller id dials first; the other waits
        // a few rounds, so two peers rarely dial each other at once.
        let me = self.membership.me();
        let late = self.ticks.is_multiple_of(4);
        // A member's addresses are in its record: its hint has done its job.
        let membership = &self.membership;
        self.hints.retain(|p, _| membership.get(p).is_none());
        let hinted: Vec<PeerId> = self.hints.keys().copied().collect();
        for peer in hinted {
            if me < peer || late {
                self.dial(peer);
            }
        }
        // Alone: join through the bootstrap peers (push our table to those we are connected
        // to, dial the others), every other tick until one answers; and now and then anyway,
        // to heal a partition, those that are not active members here.
        let alone = self.membership.num_active() == 0;
        if (alone && self.ticks.is_multiple_of(2)) || self.ticks.is_multiple_of(20) {
            for i in 0..self.bootstrap.len() {
                match self.bootstrap[i].1 {
                    Some(p) if alone && self.swarm.is_connected(&p) => {
                        self.send_sync(p, Vec::new(), true)
                    }
                    Some(p)
                        if !alone
                            && self
                                .membership
                                .get(&p)
                                .is_some_and(|m| m.state != Liveness::Down) => {}
                    _ => self.dial_bootstrap(i),
                }
            }
        }
        self.trim_connections(now);
        let elapsed = now.duration_since(self.rate_mark.0);
        if elapsed >= RATE_WINDOW {
            use std::sync::atomic::Ordering::Relaxed;
            let moved = self.traffic.sent.load(Relaxed) + self.traffic.received.load(Relaxed);
            self.membership_rate =
                moved.saturating_sub(self.rate_mark.1) as f64 / elapsed.as_secs_f64();
            self.rate_mark = (now, moved);
        }
        self.dirty = true;
    }

    /// Binds the membership datagram socket on the host and port of the first IP listener
    /// (see [`crate::datagram`]) and announces it. Without one (the port taken for UDP, no IP
    /// listener) membership packets go over streams, as to members that announce no socket.
    fn bind_udp(&mut self) {
        let Some((listen, sealer)) = self.udp_setup.take() else {
            return;
        };
        for want in &listen {
            let Some((ip, port)) = ip_tcp(want) else {
                continue;
            };
            // Port 0 was configured: the one the listener got, on that host.
            let port =
                if port != 0 {
                    port
                } else {
                    match self.listen_addrs.iter().filter_map(ip_tcp).find(|(a, _)| {
                        a.is_ipv4() == ip.is_ipv4() && (ip.is_unspecified() || *a == ip)
                    }) {
                        Some((_, p)) => p,
                        None => continue,
                    }
                };
            let bound = std::net::UdpSocket::bind((ip, port)).and_then(|s| {
                s.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(s)
            });
            match bound {
                Ok(socket) => {
                    let bound = match socket.local_addr() {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("membership datagram socket has no address: {e}");
                            continue;
                        }
                    };
                    tracing::info!(%bound, "membership datagrams on UDP");
                    self.udp = Some(Udp {
                        socket,
                        bound,
                        sealer,
                        announced: true,
                        heard_any: false,
                        sources: HashMap::new(),
                        heard: Instant::now(),
                        checked: Instant::now(),
                    });
                    self.announce_addrs();
                    return;
                }
                Err(e) => tracing::warn!(
                    %ip,
                    port,
                    "cannot bind UDP for membership datagrams ({e}): membership goes over TCP \
                     streams, which costs a connection per probe in a large mesh; free UDP \
                     port {port} to use datagrams"
                ),
            }
        }
    }

    /// Our listen addresses, with the datagram endpoint beside each TCP one, as members learn
    /// them.
    fn announce_addrs(&mut self) {
        let mut addrs = self.listen_addrs.clone();
        if let Some(u) = self.udp.as_ref().filter(|u| u.announced) {
            let udp: Vec<Multiaddr> = self
                .listen_addrs
                .iter()
                .filter_map(|a| datagram::beside(a, u.bound))
                .collect();
            addrs.extend(udp);
        }
        self.membership.set_local_addrs(addrs);
    }

    /// Stops announcing the datagram socket when nothing has arrived on it for
    /// [`UDP_SILENCE`] while there were members to hear from.
    fn check_udp_silence(&mut self, now: Instant) {
        if let Some(u) = &mut self.udp
            && u.sources.len() > self.membership.num_active() + 64
        {
            let membership = &self.membership;
            u.sources.retain(|p, _| membership.get(p).is_some());
        }
        let senders = self.membership.active_with_endpoint();
        let Some(u) = self.udp.as_mut().filter(|u| u.announced) else {
            return;
        };
        // No member that sends datagrams, or this process was not running (a laptop asleep,
        // a stopped process): the silence says nothing about the port.
        if !senders || now.duration_since(u.checked) > Duration::from_secs(5) {
            u.heard = now;
        }
        u.checked = now;
        if now.duration_since(u.heard) < UDP_SILENCE {
            return;
        }
        u.announced = false;
        let port = u.bound.port();
        tracing::warn!(
            "no membership datagram has arrived on UDP port {port} for {} s although members \
             that send them are up: a firewall passes TCP but not UDP there (or members reach \
             this peer only through a proxy or NAT). Membership goes over TCP streams to this \
             peer from now on (a connection per probe in a large mesh); open UDP port {port} \
             beside the TCP one and restart the peer to use datagrams",
            UDP_SILENCE.as_secs()
        );
        self.announce_addrs();
    }

    /// A membership datagram arrived from `from`.
    fn on_datagram(&mut self, bytes: &[u8], from: std::net::SocketAddr) {
        let Some(u) = &mut self.udp else {
            return;
        };
        match u.sealer.open(bytes, membership::unix_now_ms()) {
            Ok(o) if o.from != self.membership.me() => {
                use std::sync::atomic::Ordering::Relaxed;
                u.heard = Instant::now();
                u.heard_any = true;
                let newer = u.sources.get(&o.from).is_none_or(|(t, _)| o.sent_ms > *t);
                if newer {
                    u.sources.insert(o.from, (o.sent_ms, from));
                }
                self.traffic.received.fetch_add(bytes.len() as u64, Relaxed);
                self.traffic.datagrams.fetch_add(1, Relaxed);
                self.membership.handle_packet(o.from, &o.packet);
            }
            Ok(_) => {}
            Err(e) => {
                self.traffic
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%from, "membership datagram dropped: {e}");
            }
        }
    }

    /// Sends what foca queued: as a datagram where the member has a socket and the packet
    /// fits, else over a stream.
    fn flush_outbox(&mut self) {
        for out in self.membership.take_outbox() {
            if self.incompatible.contains(&out.to) {
                continue;
            }
            if !out.stream
                && let Some(u) = &self.udp
                // Only to a member that announces a socket (it stops when none reach it).
                && let Some(to) = out
                    .udp
                    .map(|announced| u.sources.get(&out.to).map_or(announced, |s| s.1))
                && out.packet.len() <= datagram::MAX_PAYLOAD
                && let Some(d) = u.sealer.seal(&out.packet, membership::unix_now_ms())
            {
                let unproven = u.announced && !u.heard_any;
                match u.socket.try_send_to(&d, to) {
                    Ok(n) => {
                        self.traffic
                            .sent
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        if !unproven {
                            continue;
                        }
                    }
                    // A full socket buffer or no route: the stream still may get through.
                    Err(e) => tracing::debug!(peer = %out.to, %to, "datagram not sent: {e}"),
                }
            }
            let mut addrs = datagram::stream_addrs(&out.addrs);
            if let Some(h) = self.hints.get(&out.to) {
                addrs.extend(h.iter().cloned());
            }
            let id = self.swarm.behaviour_mut().swim.send_request_with_addresses(
                &out.to,
                SwimRequest::Packet(protocol::Bytes(out.packet)),
                addrs,
            );
            self.swim_pending.insert(id, SwimPending::Packet);
            self.touch(out.to, 1);
        }
    }

    /// Starts an anti-entropy exchange with `peer`, with our whole table if `push`.
    fn send_sync(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>, push: bool) {
        if peer == self.membership.me() || self.incompatible.contains(&peer) {
            return;
        }
        addrs.retain(datagram::is_stream_addr);
        if let Some(h) = self.hints.get(&peer) {
            addrs.extend(h.iter().cloned());
        }
        let request = self.membership.sync_request(push);
        let id = self
            .swarm
            .behaviour_mut()
            .swim
            .send_request_with_addresses(&peer, request, addrs);
        self.swim_pending
            .insert(id, SwimPending::Sync { pushed: push });
        self.touch(peer, 1);
    }

    fn dial(&mut self, peer: PeerId) {
        if peer == self.membership.me()
            || self.swarm.is_connected(&peer)
            || self.incompatible.contains(&peer)
        {
            return;
        }
        let addrs = self.addrs_of(&peer);
        if addrs.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "dial not started: {e}");
        }
    }

    fn dial_bootstrap(&mut self, i: usize) {
        let (addr, peer) = self.bootstrap[i].clone();
        if let Some(p) = peer
            && (self.swarm.is_connected(&p) || p == self.membership.me())
        {
            return;
        }
        if self.listen_addrs.contains(&addr) {
            return;
        }
        let opts = match peer {
            Some(p) => DialOpts::peer_id(p)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%addr, "bootstrap dial not started: {e}");
        }
    }

    /// A connection attempt failed in the transport. If the other side spoke but the
    /// handshake failed, it is a peer without this mesh's key (or not a distc peer): filed,
    /// and warned about (rate-limited). No TCP connection, or silence, is only unreachable.
    fn on_failed_attempt(
        &mut self,
        addr: &Multiaddr,
        peer: Option<PeerId>,
        inbound: bool,
        error: &str,
    ) {
        let stage = self.attempts.finish(addr);
        // Inbound, a connection that closes unheard is a port probe, not a peer.
        let refused = match stage {
            Stage::Heard => true,
            Stage::Closed => !inbound,
            Stage::Silent | Stage::NoConnection => false,
        };
        if !refused {
            tracing::debug!(%addr, ?stage, "connection attempt failed, not at the key handshake");
            return;
        }
        let peer = peer.or_else(|| strip_p2p(addr).1);
        let filed = handshake::rejection_addr(addr, inbound);
        let reason = handshake::reason(self.keyed, inbound);
        tracing::debug!(%addr, ?stage, "key handshake failed: {error}");
        if let Some(msg) = self.rejections.record(
            filed,
            peer,
            inbound,
            reason,
            Instant::now(),
            membership::unix_now(),
        ) {
            tracing::warn!("{msg}");
        }
        self.dirty = true;
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.announce_addrs();
                self.dirty = true;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.announce_addrs();
                self.dirty = true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let remote = endpoint.get_remote_address();
                self.attempts.finish(remote);
                if endpoint.is_dialer() {
                    self.rejections
                        .clear(&handshake::rejection_addr(remote, false), &peer_id);
                }
                if endpoint.is_dialer() {
                    let (addr, _) = strip_p2p(remote);
                    for b in self.bootstrap.iter_mut() {
                        if b.0 == addr {
                            b.1 = Some(peer_id);
                        }
                    }
                }
                self.membership.set_connected(&peer_id, true);
                tracing::debug!(%peer_id, %remote, "connected");
                // A new connection is in use (an inbound one is about to carry a request):
                // make room for it now, not at the next tick, so at most `max_connections`
                // stay open but for those in use.
                if num_established.get() == 1 {
                    self.closing.remove(&peer_id);
                    self.touch(peer_id, 0);
                    self.trim_connections(Instant::now());
                }
                // A peer we reached (bootstrap, mDNS) that is not a member yet: join through
                // it by pushing our table; it answers with its own.
                if num_established.get() == 1
                    && !self.incompatible.contains(&peer_id)
                    && self.membership.get(&peer_id).is_none()
                {
                    self.send_sync(peer_id, Vec::new(), true);
                }
                self.dirty = true;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, "disconnected");
                self.closing.remove(&peer_id);
                self.membership.set_connected(&peer_id, false);
                self.dirty = true;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
                let mut refused = false;
                if let libp2p::swarm::DialError::Transport(tried) = &error {
                    for (addr, e) in tried {
                        self.on_failed_attempt(addr, peer_id, false, &e.to_string());
                    }
                    refused = refused_everywhere(tried);
                }
                if let Some(p) = peer_id {
                    let now = Instant::now();
                    self.membership.set_unreachable(&p, now);
                    if refused {
                        self.membership.set_refused(&p, now);
                    }
                    self.dirty = true;
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(%send_back_addr, "incoming connection failed: {error}");
                if let libp2p::swarm::ListenError::Transport(e) = &error {
                    self.on_failed_attempt(&send_back_addr, None, true, &e.to_string());
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.on_rr_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Swim(ev)) => self.on_swim_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Compile(ev)) => self.on_compile_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if !self.protocols.iter().any(|p| info.protocols.contains(p)) {
                    if self.incompatible.insert(peer_id) {
                        tracing::warn!(
                            %peer_id,
                            agent = %info.agent_version,
                            "peer speaks none of {:?}: ignored (its entries are misses)",
                            self.protocols
                        );
                    }
                } else if self.membership.get(&peer_id).is_none() {
                    let addrs: Vec<Multiaddr> = info
                        .listen_addrs
                        .into_iter()
                        .take(membership::MAX_ADDRS)
                        .collect();
                    self.hints.insert(peer_id, addrs);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                let me = self.membership.me();
                let mut found: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
                for (peer, addr) in list {
                    found.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in found {
                    if peer == me || self.swarm.is_connected(&peer) {
                        continue;
                    }
                    tracing::info!(%peer, "found by mDNS");
                    let h = self.hints.entry(peer).or_default();
                    for a in addrs {
                        if !h.contains(&a) && h.len() < membership::MAX_ADDRS {
                            h.push(a);
                        }
                    }
                    if me < peer {
                        self.dial(peer);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_swim_event(&mut self, ev: request_response::Event<SwimRequest, SwimResponse>) {
        use request_response::{Event, Message, OutboundFailure};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.touch(peer, 0);
                let response = self.membership.answer(peer, request);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .swim
                    .send_response(channel, response);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.done_with(peer);
                if let Some(SwimPending::Sync { pushed }) = self.swim_pending.remove(&request_id)
                    && self.membership.on_sync_answer(peer, pushed, response)
                {
                    self.send_sync(peer, Vec::new(), true);
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.traffic
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.done_with(peer);
                if let Some(SwimPending::Sync { .. }) = self.swim_pending.remove(&request_id) {
                    tracing::debug!(%peer, "anti-entropy exchange failed: {error}");
                }
                match error {
                    OutboundFailure::UnsupportedProtocols => {
                        self.incompatible.insert(peer);
                    }
                    OutboundFailure::DialFailure | OutboundFailure::ConnectionClosed => {
                        self.membership.set_unreachable(&peer, Instant::now());
                        self.dirty = true;
                    }
                    _ => tracing::debug!(%peer, "membership request failed: {error}"),
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound membership request failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Spreads this peer's slot advert when what it says changed, and every
    /// [`crate::slots::REFRESH`] anyway (so a newcomer learns it).
    fn advertise_slots(&mut self, now: Instant) {
        let Some(server) = self.offload.clone() else {
            return;
        };
        if !server.enabled() {
            return;
        }
        let me = self.membership.me();
        let advert = server.advert(&me, membership::unix_now_ms());
        let fresh = match &self.advertised {
            Some((free, tools, at)) => {
                *free == advert.free
                    && *tools == advert.toolchains
                    && now.duration_since(*at) < crate::slots::REFRESH
            }
            None => false,
        };
        if fresh {
            return;
        }
        match advert.encode() {
            Ok(bytes) => {
                self.advertised = Some((advert.free, advert.toolchains.clone(), now));
                self.membership.advertise(&bytes);
            }
            Err(e) => tracing::debug!("slot advert not encoded: {e}"),
        }
    }

    fn on_compile_event(&mut self, ev: request_response::Event<CompileRequest, CompileResponse>) {
        use request_response::{Event, Message, OutboundFailure};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let Some(server) = self.offload.clone() else {
                    let refused = CompileResponse::Refused(offload::Refusal::NotServing);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .compile
                        .send_response(channel, refused);
                    return;
                };
                let done = self.compiled_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let response = server.serve(&peer, request);
                    let _ = done.send((channel, response));
                });
                // The guest's slot is taken now: say so before the next tick.
                self.advertised = None;
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.compile_pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let err = match &error {
                    OutboundFailure::UnsupportedProtocols => RequestError::Incompatible,
                    OutboundFailure::DialFailure | OutboundFailure::ConnectionClosed => {
                        self.membership.set_unreachable(&peer, Instant::now());
                        self.dirty = true;
                        RequestError::Unreachable(error.to_string())
                    }
                    OutboundFailure::Timeout => RequestError::Timeout,
                    OutboundFailure::Io(e) => RequestError::Failed(e.to_string()),
                };
                if let Some(reply) = self.compile_pending.remove(&request_id) {
                    let _ = reply.send(Err(err));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound compile request failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_rr_event(&mut self, ev: request_response::Event<Envelope, Response>) {
        use request_response::{Event, Message, OutboundFailure};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => match request.msg {
                Request::Gossip(_) => {
                    // Table swapping of peers before SWIM: membership moved to its own
                    // protocol, so such a peer learns nothing here.
                    tracing::debug!(%peer, "ignored table-swap gossip from an older peer");
                    // In flight until its (empty) answer is sent, like every inbound request:
                    // `ResponseSent` or `InboundFailure` ends it.
                    self.touch(peer, 1);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rr
                        .send_response(channel, Response::Gossip(Vec::new()));
                }
                other => {
                    self.touch(peer, 1);
                    let store = self.store.clone();
                    let trust = self.trust.clone();
                    let done = self.done_tx.clone();
                    let max = self.max_entry_size;
                    tokio::task::spawn_blocking(move || {
                        let (summary, started) = (metrics::Summary::of(&other), Instant::now());
                        let response = crate::mesh::serve(&store, &trust, other, max);
                        metrics::global().inbound(summary, &response, started.elapsed());
                        let _ = done.send((channel, response));
                    });
                }
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.done_with(peer);
                if let Some(Pending::Client(reply)) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let err = match &error {
                    OutboundFailure::UnsupportedProtocols => {
                        self.incompatible.insert(peer);
                        RequestError::Incompatible
                    }
                    OutboundFailure::DialFailure | OutboundFailure::ConnectionClosed => {
                        self.membership.set_unreachable(&peer, Instant::now());
                        self.dirty = true;
                        RequestError::Unreachable(error.to_string())
                    }
                    OutboundFailure::Timeout => RequestError::Timeout,
                    OutboundFailure::Io(e) => RequestError::Failed(e.to_string()),
                };
                self.done_with(peer);
                if let Some(Pending::Client(reply)) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(err));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound request failed: {error}");
                self.done_with(peer);
            }
            Event::ResponseSent { peer, .. } => self.done_with(peer),
        }
    }

    /// `peer` was just used; `started` more requests to or from it are now in flight.
    fn touch(&mut self, peer: PeerId, started: u32) {
        let u = self.used.entry(peer).or_insert((Instant::now(), 0));
        u.0 = Instant::now();
        u.1 += started;
    }

    /// A request to or from `peer` ended.
    fn done_with(&mut self, peer: PeerId) {
        if let Some(u) = self.used.get_mut(&peer) {
            u.0 = Instant::now();
            u.1 = u.1.saturating_sub(1);
        }
    }

    /// Keeps connections to at most `max_connections` members: beyond that, closes the least
    /// recently used of those idle (see [`EventLoop::idle_connections`]). Runs every tick and
    /// whenever a connection opens. Bootstrap peers are not spared: the mesh knows their
    /// addresses like any member's.
    fn trim_connections(&mut self, now: Instant) {
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        self.used
            .retain(|p, u| u.1 > 0 || connected.contains(p) || now.duration_since(u.0) < IDLE);
        self.closing.retain(|p| connected.contains(p));
        let open = connected.len() - self.closing.len();
        let Some(excess) = open.checked_sub(self.max_connections) else {
            return;
        };
        for (_, p) in self.idle_connections(now).into_iter().take(excess) {
            tracing::trace!(peer = %p, "closing the least recently used connection");
            if self.swarm.disconnect_peer_id(p).is_ok() {
                self.closing.insert(p);
            }
        }
    }

    /// Connected members with no request in flight either way and unused for [`IDLE`], least
    /// recently used first (not those being closed).
    fn idle_connections(&self, now: Instant) -> Vec<(Instant, PeerId)> {
        let mut idle: Vec<(Instant, PeerId)> = self
            .swarm
            .connected_peers()
            .filter(|p| !self.closing.contains(p))
            .filter_map(|p| match self.used.get(p) {
                Some((_, n)) if *n > 0 => None,
                Some((t, _)) if now.duration_since(*t) < IDLE => None,
                Some((t, _)) => Some((*t, *p)),
                None => Some((now - IDLE, *p)),
            })
            .collect();
        idle.sort();
        idle
    }
}

/// A connection unused this long (and with nothing in flight) may be closed to keep the bound.
const IDLE: Duration = Duration::from_secs(1);

impl Node {
    /// The latest snapshot of members and ring.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// Waits until `pred` holds for the view, or `timeout` passes. True if it held.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&View) -> bool) -> bool {
        let mut rx = self.view.clone();
        let fut = async {
            loop {
                if pred(&rx.borrow_and_update()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.unwrap_or(false)
    }

    /// True once the event loop has stopped.
    pub fn is_stopped(&self) -> bool {
        self.view.has_changed().is_err()
    }

    /// The local store this node serves.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How many entries peers sent that failed the check (wrong key, corrupt), since start.
    pub fn bad_entries(&self) -> u64 {
        self.bad_entries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The node's signer, trust policy and refusal counters.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Sends one request and waits at most `timeout` for the answer.
    pub async fn request(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RequestError> {
        let (summary, started) = (metrics::Summary::of(&request), Instant::now());
        let result = self.request_once(peer, request, timeout).await;
        metrics::global().outbound(summary, result.as_ref(), started.elapsed());
        result
    }

    async fn request_once(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RequestError> {
        let (tx, rx) = oneshot::channel();
        // The stream ends by itself too once the caller has given up.
        let progress = Arc::new(crate::transfer::Progress::default());
        progress.bound(timeout, None);
        self.cmd
            .send(Command::Request {
                peer,
                request,
                progress: Some(progress),
                reply: tx,
            })
            .await
            .map_err(|_| RequestError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RequestError::Stopped),
            Err(_) => {
                let _ = self.cmd.try_send(Command::Unreachable(peer));
                Err(RequestError::Timeout)
            }
        }
    }

    /// Sends `request` to `peer` and waits for the answer: at most `first_byte` for it to
    /// start, then as long as the size its header announced needs at the throughput measured
    /// to that peer ([`crate::transfer::transfer_timeout`], with `first_byte` as the base).
    /// `progress` shows the caller whether the answer has started. A peer that does not start
    /// answering in time is skipped for a few seconds, like one that cannot be reached.
    pub async fn request_sized(
        &self,
        peer: PeerId,
        request: Request,
        first_byte: Duration,
        progress: Arc<crate::transfer::Progress>,
    ) -> Result<Response, RequestError> {
        let (summary, started) = (metrics::Summary::of(&request), Instant::now());
        let result = self
            .request_sized_once(peer, request, first_byte, progress)
            .await;
        metrics::global().outbound(summary, result.as_ref(), started.elapsed());
        result
    }

    async fn request_sized_once(
        &self,
        peer: PeerId,
        request: Request,
        first_byte: Duration,
        progress: Arc<crate::transfer::Progress>,
    ) -> Result<Response, RequestError> {
        let (tx, mut rx) = oneshot::channel();
        progress.bound(first_byte, self.throughput.rate(&peer));
        self.cmd
            .send(Command::Request {
                peer,
                request,
                progress: Some(progress.clone()),
                reply: tx,
            })
            .await
            .map_err(|_| RequestError::Stopped)?;
        let mut deadline = Instant::now() + first_byte;
        loop {
            match tokio::time::timeout_at(deadline.into(), &mut rx).await {
                Ok(Ok(r)) => {
                    if let (Ok(Response::Entry(Some(e))), Some((at, _))) = (&r, progress.started())
                    {
                        self.throughput.record(peer, e.0.len() as u64, at.elapsed());
                    }
                    return r;
                }
                Ok(Err(_)) => return Err(RequestError::Stopped),
                Err(_) => match progress.started() {
                    None => {
                        let _ = self.cmd.try_send(Command::Unreachable(peer));
                        return Err(RequestError::Timeout);
                    }
                    Some((at, len)) => {
                        let rate = self.throughput.rate(&peer);
                        let until = at + crate::transfer::transfer_timeout(first_byte, len, rate);
                        if until <= deadline {
                            tracing::debug!(%peer, len, "transfer slower than its size allows");
                            return Err(RequestError::Timeout);
                        }
                        deadline = until;
                    }
                },
            }
        }
    }

    /// Sends a compile to `peer` and waits at most `timeout` for its answer. A peer that
    /// does not answer in time is routed around for a while, like one that misses a get.
    pub async fn compile(
        &self,
        peer: PeerId,
        request: CompileRequest,
        timeout: Duration,
    ) -> Result<CompileResponse, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Compile {
                peer,
                request: Box::new(request),
                reply: tx,
            })
            .await
            .map_err(|_| RequestError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RequestError::Stopped),
            Err(_) => {
                let _ = self.cmd.try_send(Command::Unreachable(peer));
                Err(RequestError::Timeout)
            }
        }
    }

    /// The owners of `key`, primary first.
    pub fn owners(&self, key: &Key) -> Vec<PeerId> {
        let v = self.view();
        v.ring.owners(key, v.replication)
    }

    /// Tells the other peers we leave, then stops the event loop.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn spawn(
        protocols: &[StreamProtocol],
        bootstrap: Vec<Multiaddr>,
    ) -> (Node, tokio::task::JoinHandle<()>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store"), 1 << 30).expect("store");
        let mut cfg = NodeConfig::new(identity::Keypair::generate_ed25519());
        cfg.bootstrap = bootstrap;
        cfg.gossip_interval = Duration::from_millis(100);
        cfg.protocols = protocols.to_vec();
        let (node, ev) = new(cfg, store).expect("node");
        let task = tokio::spawn(ev.run());
        assert!(
            node.wait_for(Duration::from_secs(5), |v| !v.listen.is_empty())
                .await,
            "node never listened"
        );
        (node, task, dir)
    }

    /// A peer that speaks only `/distc/1.0.0` and one that prefers 1.1.0 form one ring and
    /// fetch each other's entries (1.0.0 is negotiated).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_and_new_protocol_versions_interoperate() {
        let (old, old_task, _d1) = spawn(&[protocol::PROTOCOL_1_0], vec![]).await;
        let v = old.view();
        let addr = v.listen[0]
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(v.me));
        let (new_, new_task, _d2) = spawn(&protocol::PROTOCOLS, vec![addr]).await;
        for n in [&old, &new_] {
            assert!(
                n.wait_for(Duration::from_secs(10), |v| v.ring.len() == 2)
                    .await,
                "no ring of two"
            );
        }
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let k1 = Key::digest(&payload);
        old.store().put(&k1, &payload).expect("put");
        let got = new_
            .get(&k1)
            .await
            .expect("new peer fetches from the old one");
        assert_eq!(
            Store::verify_raw(&got, &k1, 1 << 30).expect("valid"),
            payload
        );
        let k2 = Key::digest(b"the other way");
        new_.store().put(&k2, b"the other way").expect("put");
        assert!(
            old.get(&k2).await.is_some(),
            "old peer fetches from the new one"
        );
        // An entry of the serving peer's own that sits under another key's name (a swapped or
        // restored file) is never served under that name, and the server drops it.
        let k3 = Key::digest(b"a third key");
        let path = |s: &Store, k: &Key| {
            let hex = k.to_hex();
            s.root().join(&hex[..2]).join(&hex[2..])
        };
        let planted = path(old.store(), &k3);
        std::fs::create_dir_all(planted.parent().expect("fan-out dir")).expect("mkdir");
        std::fs::copy(path(old.store(), &k1), &planted).expect("plant");
        assert!(new_.get(&k3).await.is_none(), "served another key's entry");
        assert!(!planted.exists(), "the serving peer kept its corrupt entry");
        old_task.abort();
        new_task.abort();
    }
}
