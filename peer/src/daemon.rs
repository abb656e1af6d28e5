//! `distc peer`: the process that runs a node for one `$DISTC_DIR`, and the auto-start that
//! launches it in the background.
//!
//! Files in `$DISTC_DIR`: `peer.lock` (held with `flock` while a peer runs: a second peer on
//! the same dir refuses to start), `peer.sock` (IPC), `peer.pid`, `peer.key` (the libp2p
//! identity, so the peer id survives restarts), `peer.log` (output of an auto-started peer).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use libp2p::Multiaddr;
use libp2p::identity;

use crate::ipc::{self, Handler, IpcRequest, IpcResponse};
use crate::membership::{Liveness, Timing, unix_now};
use crate::metrics::{self, WrapperSource};
use crate::node::{self, Node, NodeConfig};
use crate::offload::{self, ServeOptions, Server};
use crate::protocol::Bytes;
use crate::psk;
use crate::report::{OwnerInfo, PeerStatus, RejectedPeer, StatusReport};
use crate::store::Store;
use crate::{sandbox, slots};

/// The default TCP port of a peer that has a mesh key (config `port`).
pub const DEFAULT_PORT: u16 = 7878;

/// Everything `distc peer` needs, resolved from config file, environment and flags.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// `$DISTC_DIR`: store, socket, lock, identity.
    pub distc_dir: PathBuf,
    /// Listen addresses; empty = the default for the mode (see [`mode`]).
    pub listen: Vec<Multiaddr>,
    /// Port of the default listen address of a peer with a key (or `--open`).
    pub port: u16,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// The mesh key file (it may not exist: then the peer has no key).
    pub psk_file: Option<PathBuf>,
    /// The user named `psk_file` (flag, environment or config): then it must exist, and a
    /// missing file is an error rather than a keyless peer.
    pub psk_required: bool,
    /// Run without a key on non-loopback interfaces (a LAN the user trusts).
    pub open: bool,
    pub replication: usize,
    pub vnodes: usize,
    /// This peer's weight on the ring; 0 = a client (owns no range).
    pub weight: u32,
    pub max_entry_size: u64,
    /// Store size cap in bytes.
    pub max_size: u64,
    /// Exit after this long without any local request (auto-started keyless peers).
    pub idle_timeout: Option<Duration>,
    /// Gossip round length (tests shorten it).
    pub gossip_interval: Duration,
    /// How long a get waits for one remote peer.
    pub get_timeout: Duration,
    /// How long a get waits for one owner to start answering before also asking the next.
    pub hedge_delay: Duration,
    /// A graceful stop hands entries on for at most this long (zero: no handoff).
    pub leave_timeout: Duration,
    /// Bytes per second the handoff, and the background repair after a ring change, send at
    /// most (0: no limit).
    pub handoff_rate: u64,
    /// Serve Prometheus metrics here (`--metrics`, config `metrics_listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Allow a metrics address other than loopback (`--metrics-public`).
    pub metrics_public: bool,
    /// The wrappers' counters, read at each scrape.
    pub wrapper_counters: Option<WrapperSource>,
    /// How long a lookup for a local client may take in all before it is answered "not found"
    /// (less than the client's own deadline, so that a live peer always answers in time).
    pub lookup_timeout: Duration,
    /// Whose entries this peer accepts (config `trust`, `distrust`).
    pub trust: crate::trust::TrustPolicy,
    /// Compile for other members (config `serve_compiles`): only ever in a closed mesh.
    pub serve_compiles: bool,
    /// Serve compiles without bubblewrap where it is missing (config `serve_unsandboxed`).
    pub serve_unsandboxed: bool,
}

impl PeerOptions {
    /// Defaults for `distc_dir`; callers fill in config values.
    pub fn new(distc_dir: PathBuf) -> PeerOptions {
        PeerOptions {
            distc_dir,
            listen: Vec::new(),
            port: DEFAULT_PORT,
            bootstrap: Vec::new(),
            mdns: true,
            psk_file: None,
            psk_required: false,
            open: false,
            replication: 2,
            vnodes: crate::ring::DEFAULT_VNODES,
            weight: crate::ring::DEFAULT_WEIGHT,
            max_entry_size: 256 << 20,
            max_size: 10 << 30,
            idle_timeout: None,
            gossip_interval: Duration::from_millis(500),
            get_timeout: Duration::from_secs(2),
            hedge_delay: node::DEFAULT_HEDGE_DELAY,
            leave_timeout: Duration::from_secs(30),
            handoff_rate: 32 << 20,
            metrics_listen: None,
            metrics_public: false,
            wrapper_counters: None,
            lookup_timeout: Duration::from_secs(4),
            trust: crate::trust::TrustPolicy::default(),
            serve_compiles: true,
            serve_unsandboxed: false,
        }
    }
}

/// Why the peer could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "another distc peer (pid {pid}) is already running for {dir}; check it with `distc status` \
         or stop it first (each peer needs its own DISTC_DIR)"
    )]
    AlreadyRunning { pid: String, dir: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Psk(#[from] psk::PskError),
    #[error(
        "refusing to listen on {0} without a mesh key: anyone on that network could read and \
         write this cache. Create a mesh with `distc mesh init`, join one with `distc mesh join \
         TOKEN`, or pass --open on a network you trust"
    )]
    KeylessListen(Multiaddr),
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("peer identity {path} is unreadable ({reason}); delete it to create a new one")]
    Identity { path: PathBuf, reason: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// An exclusive `flock` on `$DISTC_DIR/peer.lock`, released when dropped (or the process dies).
pub struct PeerLock {
    _file: File,
}

/// Takes the peer lock, or says who holds it.
pub fn lock(distc_dir: &Path) -> Result<PeerLock, DaemonError> {
    fs::create_dir_all(distc_dir).map_err(io_err("cannot create", distc_dir))?;
    let path = distc_dir.join("peer.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("cannot open", &path))?;
    if !crate::lockfile::try_lock(&file).map_err(io_err("cannot lock", &path))? {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(DaemonError::AlreadyRunning {
            pid: pid.trim().to_string(),
            dir: distc_dir.to_path_buf(),
        });
    }
    file.set_len(0).map_err(io_err("cannot write", &path))?;
    write!(file, "{}", std::process::id()).map_err(io_err("cannot write", &path))?;
    Ok(PeerLock { _file: file })
}

/// True when a peer holds the lock of `distc_dir` (running or starting).
pub fn is_running(distc_dir: &Path) -> bool {
    let path = distc_dir.join("peer.lock");
    let Ok(file) = File::open(&path) else {
        return false;
    };
    crate::lockfile::is_locked(&file)
}

/// Starts `exe peer --auto-started` in the background for `distc_dir` unless a peer already
/// runs there. Never waits for it: returns as soon as the process is spawned. Its output goes
/// to `$DISTC_DIR/peer.log`. Returns whether a peer was spawned.
///
/// The wrapper calls this (when `auto_start = true`) after finding no socket.
pub fn ensure_started(distc_dir: &Path, exe: &Path) -> io::Result<bool> {
    if ipc::socket_path(distc_dir).exists() && is_running(distc_dir) {
        return Ok(false);
    }
    if is_running(distc_dir) {
        return Ok(false);
    }
    // A peer that fails at start (bad config, port taken) must not cost every compile a
    // spawn: try at most once per AUTOSTART_BACKOFF.
    let marker = distc_dir.join("peer.autostart");
    if let Ok(age) = fs::metadata(&marker)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default())
        && age < AUTOSTART_BACKOFF
    {
        return Ok(false);
    }
    fs::create_dir_all(distc_dir)?;
    fs::write(&marker, b"")?;
    let log_path = distc_dir.join("peer.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)?;
    let mut cmd = Command::new(exe);
    cmd.arg("peer")
        .arg("--auto-started")
        .env("DISTC_DIR", distc_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the peer from the caller's session so
    // a Ctrl-C in the build's terminal does not stop it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // Reap it if this process lives long enough to see it exit; otherwise init does.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(true)
}

/// How often auto-start may try to spawn a peer for one directory.
pub const AUTOSTART_BACKOFF: Duration = Duration::from_secs(30);

/// The wrapper's one call: when no peer runs for `distc_dir`, start `distc peer` (this very
/// executable) in the background. Never fails and never waits; problems are logged at debug.
pub fn auto_start(distc_dir: &Path) {
    let r = std::env::current_exe().and_then(|exe| ensure_started(distc_dir, &exe));
    match r {
        Ok(true) => tracing::debug!("started a peer for {}", distc_dir.display()),
        Ok(false) => {}
        Err(e) => tracing::debug!("cannot auto-start a peer: {e}"),
    }
}

/// The peer's persistent identity in `$DISTC_DIR/peer.key` (created on first start, 0600).
pub fn identity(distc_dir: &Path) -> Result<identity::Keypair, DaemonError> {
    let path = distc_dir.join("peer.key");
    match fs::read(&path) {
        Ok(bytes) => {
            identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| DaemonError::Identity {
                path: path.clone(),
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let kp = identity::Keypair::generate_ed25519();
            let bytes = kp
                .to_protobuf_encoding()
                .map_err(|e| DaemonError::Identity {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err("cannot create", &path))?;
            f.write_all(&bytes).map_err(io_err("cannot write", &path))?;
            Ok(kp)
        }
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

/// How the peer will run, decided from the key and the options.
#[derive(Debug, Clone, PartialEq)]
pub struct Mode {
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    pub keyed: bool,
}

/// Applies the trust rules: with a key, listen everywhere on the default port; without one,
/// loopback only (mDNS off) unless `open`.
pub fn mode(opts: &PeerOptions, keyed: bool) -> Result<Mode, DaemonError> {
    let loopback_only = !keyed && !opts.open;
    let listen = if opts.listen.is_empty() {
        let tcp = |ip: std::net::Ipv4Addr, port: u16| {
            Multiaddr::empty()
                .with(libp2p::multiaddr::Protocol::Ip4(ip))
                .with(libp2p::multiaddr::Protocol::Tcp(port))
        };
        if loopback_only {
            vec![tcp(std::net::Ipv4Addr::LOCALHOST, 0)]
        } else {
            vec![tcp(std::net::Ipv4Addr::UNSPECIFIED, opts.port)]
        }
    } else {
        opts.listen.clone()
    };
    if loopback_only {
        for a in &listen {
            if !crate::membership::is_loopback(a)
                || a.iter().any(|p| {
                    matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified())
                        || matches!(p, libp2p::multiaddr::Protocol::Ip6(ip) if ip.is_unspecified())
                })
            {
                return Err(DaemonError::KeylessListen(a.clone()));
            }
        }
    }
    Ok(Mode {
        listen,
        mdns: opts.mdns && !loopback_only,
        keyed,
    })
}

struct PeerHandler {
    node: Node,
    mesh_key: Option<String>,
    /// Bootstrap addresses this peer will not dial ([`undialable_bootstrap`]), for `status`.
    not_dialed: Vec<RejectedPeer>,
    shutdown: tokio::sync::mpsc::Sender<()>,
    /// [`PeerOptions::lookup_timeout`].
    lookup_timeout: Duration,
    /// The serving side of remote compiles, and the asking side.
    server: Arc<Server>,
    router: Arc<offload::Router>,
    /// Keys whose fetch outlived the lookup that asked and goes on in the background.
    finishing: Arc<std::sync::Mutex<std::collections::HashSet<crate::key::Key>>>,
}

/// Why a peer without a key does not dial bootstrap addresses (a closed mesh would refuse it,
/// and it serves only this machine), or `None` when it dials them.
pub fn undialable_bootstrap(opts: &PeerOptions, keyed: bool) -> Option<String> {
    (!keyed && !opts.open && !opts.bootstrap.is_empty()).then(|| {
        "this peer has no mesh key, so it serves only this machine and does not dial bootstrap          addresses: run `distc mesh join TOKEN` here (TOKEN from `distc mesh token` on a          machine of the mesh), or pass --open for a keyless mesh on a network you trust"
            .to_string()
    })
}

/// Builds `distc status`'s report from the node's view.
pub fn status_report(node: &Node, mesh_key: Option<String>) -> StatusReport {
    let v = node.view();
    let shares = v.ring.shares();
    let share = |id| (shares.get(id).copied().unwrap_or(0.0) * 10_000.0).round() / 100.0;
    let role = |w: u32| if w == 0 { "client" } else { "owner" }.to_string();
    let my_weight = v.ring.weight(&v.me).unwrap_or(0);
    let mut peers = vec![PeerStatus {
        weight: my_weight,
        role: role(my_weight),
        id: v.me.to_string(),
        addrs: v.listen.iter().map(|a| a.to_string()).collect(),
        state: "self".into(),
        last_seen: unix_now(),
        entries: v.usage.entries,
        bytes: v.usage.bytes,
        ring_share: share(&v.me),
        connected: true,
    }];
    for m in &v.members {
        peers.push(PeerStatus {
            weight: m.weight,
            role: role(m.weight),
            id: m.id.to_string(),
            addrs: m.addrs.iter().map(|a| a.to_string()).collect(),
            state: m.liveness.to_string(),
            last_seen: m.last_seen_unix,
            entries: m.usage.entries,
            bytes: m.usage.bytes,
            ring_share: share(&m.id),
            connected: m.connected,
        });
    }
    StatusReport {
        id: v.me.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        listen: v.listen.iter().map(|a| a.to_string()).collect(),
        replication: v.replication as u32,
        mesh_key,
        peers,
        bad_entries: node.bad_entries(),
        trust: node.trust().policy().describe(),
        refused: node.trust().refusals(),
        rejected: v
            .rejected
            .iter()
            .map(|r| RejectedPeer {
                addr: r.addr.to_string(),
                peer: r.peer.map(|p| p.to_string()),
                direction: if r.inbound { "inbound" } else { "dial" }.into(),
                reason: r.reason.clone(),
                attempts: r.attempts,
                last_seen: r.last_unix,
            })
            .collect(),
        membership_rate: v.membership_rate,
        connections: v.members.iter().filter(|m| m.connected).count() as u64,
    }
}

impl Handler for PeerHandler {
    async fn handle(&self, req: IpcRequest) -> IpcResponse {
        let (name, started) = (req.name(), std::time::Instant::now());
        let response = self.answer(req).await;
        metrics::global().ipc(name, started.elapsed());
        response
    }
}

impl PeerHandler {
    /// A fetch that outlived the compile's budget (a large entry over a slow link) is not
    /// abandoned: it runs to its own limits ([`Node::get`]) and what arrives is kept in the
    /// local store, so the next compile of that key hits here. One per key at a time.
    fn finish_in_background(
        &self,
        key: crate::key::Key,
        fetch: tokio::task::JoinHandle<Option<Vec<u8>>>,
    ) {
        let Ok(mut set) = self.finishing.lock() else {
            return;
        };
        if !set.insert(key) {
            fetch.abort();
            return;
        }
        drop(set);
        let (store, finishing) = (self.node.store().clone(), self.finishing.clone());
        tokio::spawn(async move {
            if let Ok(Some(raw)) = fetch.await {
                let k = key;
                let kept = tokio::task::spawn_blocking(move || store.put_raw(&k, &raw)).await;
                match kept {
                    Ok(Ok(_)) => {
                        tracing::info!(%key, "a fetch that outlived its compile arrived: kept")
                    }
                    Ok(Err(e)) => tracing::warn!(%key, "cannot keep a fetched entry: {e}"),
                    Err(_) => {}
                }
            }
            if let Ok(mut set) = finishing.lock() {
                set.remove(&key);
            }
        });
    }

    async fn answer(&self, req: IpcRequest) -> IpcResponse {
        match req {
            IpcRequest::Hello { .. } => IpcResponse::Hello {
                version: ipc::IPC_VERSION,
            },
            IpcRequest::Get(key) => {
                let node = self.node.clone();
                let mut fetch = tokio::spawn(async move { node.get(&key).await });
                let entry = match tokio::time::timeout(self.lookup_timeout, &mut fetch).await {
                    Ok(r) => r.ok().flatten(),
                    Err(_) => {
                        self.finish_in_background(key, fetch);
                        None
                    }
                };
                metrics::global().fetched(entry.is_some());
                IpcResponse::Entry(entry.map(Bytes))
            }
            IpcRequest::Counters => IpcResponse::Counters(metrics::global().snapshot()),
            IpcRequest::Announce(key) => {
                let node = self.node.clone();
                tokio::spawn(async move {
                    let r = node.replicate(&key).await;
                    tracing::debug!(%key, holders = r.holders.len(), "replicated");
                });
                IpcResponse::Ok
            }
            IpcRequest::Status => {
                let mut s = status_report(&self.node, self.mesh_key.clone());
                s.rejected.extend(self.not_dialed.iter().cloned());
                if let Ok(u) = self.node.store().usage() {
                    s.peers[0].entries = u.entries;
                    s.peers[0].bytes = u.bytes;
                }
                IpcResponse::Status(s)
            }
            IpcRequest::Flush => IpcResponse::Flushed(self.node.flush_all().await),
            IpcRequest::Owners(key) => {
                let v = self.node.view();
                IpcResponse::Owners(
                    v.ring
                        .owners(&key, v.replication)
                        .into_iter()
                        .enumerate()
                        .map(|(rank, id)| OwnerInfo {
                            id: id.to_string(),
                            state: if id == v.me {
                                "self".into()
                            } else {
                                v.member(&id)
                                    .map(|m| m.liveness)
                                    .unwrap_or(Liveness::Down)
                                    .to_string()
                            },
                            rank: rank as u32,
                        })
                        .collect(),
                )
            }
            IpcRequest::SetTrust(policy) => {
                if let Err(e) = self.node.trust().set_policy(policy) {
                    return IpcResponse::Error(e.to_string());
                }
                purge_untrusted(&self.node).await;
                IpcResponse::Ok
            }
            IpcRequest::Shutdown => {
                let _ = self.shutdown.try_send(());
                IpcResponse::Ok
            }
            IpcRequest::Compile(ask) => {
                let (peer, response) = self
                    .router
                    .compile(&self.node, self.server.distc_dir(), *ask)
                    .await;
                IpcResponse::Compiled {
                    peer: peer.map(|p| p.to_string()),
                    response,
                }
            }
            IpcRequest::Slots => {
                IpcResponse::Slots(offload::report(&self.node, Some(&self.server)))
            }
        }
    }
}

/// Whether and how this peer serves compiles: only with `serve_compiles`, only in a closed
/// mesh (a key, and not `--open`), and only in bubblewrap unless `serve_unsandboxed`.
pub fn serve_options(opts: &PeerOptions, keyed: bool) -> Server {
    let bwrap = sandbox::find_bwrap();
    let why_not = if !opts.serve_compiles {
        Some("no (serve_compiles = false)".to_string())
    } else if !keyed || opts.open {
        Some("no (only a closed mesh serves compiles: distc mesh init / join)".to_string())
    } else if bwrap.is_none() && !opts.serve_unsandboxed {
        Some(
            "no (bubblewrap (bwrap) is not installed or does not work here; install it, or \
             set serve_unsandboxed = true to serve without a sandbox)"
                .to_string(),
        )
    } else {
        None
    };
    if let Some(why) = &why_not {
        tracing::info!("serving compiles: {why}");
    } else if bwrap.is_none() {
        tracing::warn!(
            "serving compiles WITHOUT a sandbox (serve_unsandboxed = true): members' compiles \
             can read files this user can read"
        );
    }
    Server::new(ServeOptions {
        distc_dir: opts.distc_dir.clone(),
        enabled: why_not.is_none(),
        isolation: bwrap.map_or(sandbox::Isolation::None, sandbox::Isolation::Bwrap),
        limits: sandbox::Limits::default(),
        cores: slots::cores(),
        path: std::env::var_os("PATH").unwrap_or_default(),
        why_not,
    })
}

/// Runs the peer in the foreground until SIGINT/SIGTERM, an IPC shutdown, or (if set) the
/// idle timeout. Blocking: builds its own async runtime, so callers need none.
pub fn run(opts: PeerOptions) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("cannot start the async runtime in", &opts.distc_dir))?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: PeerOptions) -> Result<(), DaemonError> {
    let dir = opts.distc_dir.clone();
    let _lock = lock(&dir)?;
    let key = match &opts.psk_file {
        Some(p) if opts.psk_required => Some(psk::load_named(p)?),
        Some(p) => psk::load(p)?,
        None => None,
    };
    let mode = mode(&opts, key.is_some())?;
    match (key.is_some(), opts.open) {
        (true, _) => tracing::info!(
            "mesh key {} loaded: closed mesh",
            key.map(psk::fingerprint).unwrap_or_default()
        ),
        (false, true) => tracing::warn!(
            "running an OPEN mesh without a key: anyone on this network can read and write \
             this cache. Use `distc mesh init` for a closed mesh"
        ),
        (false, false) => tracing::info!(
            "no mesh key: serving this machine only (loopback). Create a mesh with `distc mesh \
             init`, or join one with `distc mesh join TOKEN`"
        ),
    }
    // Bound before anything else starts, so a taken port or a refused address stops the
    // peer with a clear error instead of a peer without the metrics it was asked for.
    let metrics_listener = match opts.metrics_listen {
        Some(addr) => Some(metrics::bind(addr, opts.metrics_public).await?),
        None => None,
    };
    let store = Store::open(&dir.join("store"), opts.max_size)?;
    let mut cfg = NodeConfig::new(identity(&dir)?);
    cfg.listen = mode.listen.clone();
    let mut not_dialed = Vec::new();
    match undialable_bootstrap(&opts, key.is_some()) {
        Some(why) => {
            let list: Vec<String> = opts.bootstrap.iter().map(|a| a.to_string()).collect();
            tracing::warn!(
                "not dialing bootstrap address(es) {}: {why}",
                list.join(", ")
            );
            not_dialed = opts
                .bootstrap
                .iter()
                .map(|a| {
                    let (addr, peer) = node::strip_p2p(a);
                    RejectedPeer {
                        addr: addr.to_string(),
                        peer: peer.map(|p| p.to_string()),
                        direction: "not dialed".into(),
                        reason: why.clone(),
                        attempts: 0,
                        last_seen: 0,
                    }
                })
                .collect();
        }
        None => cfg.bootstrap = opts.bootstrap.clone(),
    }
    cfg.mdns = mode.mdns;
    cfg.psk = key;
    cfg.replication = opts.replication.max(1);
    cfg.vnodes = opts.vnodes.max(1);
    cfg.weight = opts.weight;
    cfg.max_entry_size = opts.max_entry_size;
    cfg.gossip_interval = opts.gossip_interval;
    cfg.get_timeout = opts.get_timeout;
    cfg.hedge_delay = opts.hedge_delay;
    cfg.repair_rate = opts.handoff_rate;
    cfg.trust = opts.trust.clone();
    cfg.timing = Timing::default();
    let server = Arc::new(serve_options(&opts, key.is_some()));
    cfg.offload = Some(server.clone());
    let (node, event_loop) = node::new(cfg, store)?;
    match opts.weight {
        0 => tracing::info!(peer = %node.view().me, "peer starting as a client (owns no range)"),
        w => tracing::info!(peer = %node.view().me, weight = w, "peer starting"),
    }
    let ev_task = tokio::spawn(event_loop.run());
    // Entries of producers the policy refuses (it may have changed while the peer was down)
    // are dropped before they are served; the scan reads headers only.
    tokio::spawn({
        let node = node.clone();
        async move { purge_untrusted(&node).await }
    });
    let repair = tokio::spawn(
        node.clone()
            .repair_loop(opts.gossip_interval * 3, Duration::from_secs(60)),
    );
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::mpsc::channel(1);
    let router = Arc::new(offload::Router::default());
    let handler = Arc::new(PeerHandler {
        node: node.clone(),
        mesh_key: key.map(psk::fingerprint),
        not_dialed,
        shutdown: shutdown_tx,
        lookup_timeout: opts.lookup_timeout,
        server: server.clone(),
        router: router.clone(),
        finishing: Arc::default(),
    });
    let slots_marker = tokio::spawn(offload::keep_slots_marker(
        node.clone(),
        server.clone(),
        router,
    ));
    // A serving peer's compilers: found before it answers anyone (identifying a new one runs
    // it), then every minute (a new install is served; unchanged ones are memoised by stat).
    if server.enabled() {
        let s = server.clone();
        let _ = tokio::task::spawn_blocking(move || s.refresh_toolchains()).await;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let s = server.clone();
                let _ = tokio::task::spawn_blocking(move || s.refresh_toolchains()).await;
            }
        });
    }
    let listener = ipc::bind(&dir).map_err(io_err("cannot create socket in", &dir))?;
    let activity = Arc::new(AtomicU64::new(unix_now()));
    let ipc_task = tokio::spawn(ipc::serve(listener, handler, activity.clone()));
    let marker = tokio::spawn(keep_mesh_marker(node.clone(), dir.clone()));
    let metrics_task = metrics_listener.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!("serving metrics on http://{addr}/metrics");
        }
        tokio::spawn(metrics::serve(
            l,
            scraper(node.clone(), opts.max_size, opts.wrapper_counters.clone()),
        ))
    });
    let pid_path = dir.join("peer.pid");
    fs::write(&pid_path, format!("{}\n", std::process::id()))
        .map_err(io_err("cannot write", &pid_path))?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io_err("cannot handle signals for", &dir))?;
    let idle = async {
        match opts.idle_timeout {
            None => std::future::pending::<()>().await,
            Some(t) => loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let last = activity.load(Ordering::Relaxed);
                if unix_now().saturating_sub(last) >= t.as_secs() {
                    tracing::info!("no local activity for {}s: exiting", t.as_secs());
                    return;
                }
            },
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: leaving the mesh"),
        _ = sigterm.recv() => tracing::info!("terminated: leaving the mesh"),
        _ = shutdown_rx.recv() => tracing::info!("asked to stop: leaving the mesh"),
        _ = idle => {}
    }
    ipc_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    repair.abort();
    marker.abort();
    slots_marker.abort();
    let _ = fs::remove_file(dir.join(offload::SLOTS_MARKER));
    let _ = fs::remove_file(ipc::mesh_marker_path(&dir));
    let _ = fs::remove_file(ipc::socket_path(&dir));
    // Still a member while it hands its entries on: gets keep being served meanwhile, and the
    // others learn of the leave only once the new owners hold what this peer held.
    if !opts.leave_timeout.is_zero() {
        let limits = crate::mesh::Handoff {
            timeout: opts.leave_timeout,
            rate: opts.handoff_rate,
        };
        let bound = opts.leave_timeout + Duration::from_secs(5);
        if tokio::time::timeout(bound, node.hand_off(&limits))
            .await
            .is_err()
        {
            tracing::warn!(
                "handoff did not finish within {}s: leaving anyway",
                bound.as_secs()
            );
        }
    }
    let _ = fs::remove_file(&pid_path);
    let _ = tokio::time::timeout(Duration::from_secs(2), node.leave()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ev_task).await;
    Ok(())
}

/// Drops the stored entries whose producer the node's policy no longer accepts.
async fn purge_untrusted(node: &Node) {
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.trust().purge(n.store())).await {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => {
            tracing::info!(
                removed,
                "dropped entries of producers this machine does not trust"
            )
        }
        Ok(Err(e)) => tracing::warn!("cannot drop untrusted entries: {e}"),
        Err(e) => tracing::warn!("cannot drop untrusted entries: {e}"),
    }
}

/// What a metrics scrape reads besides the process's counters: store, members, wrappers.
fn scraper(
    node: Node,
    max_size: u64,
    wrapper: Option<WrapperSource>,
) -> Arc<dyn Fn() -> metrics::Scrape + Send + Sync> {
    Arc::new(move || {
        let usage = node.store().usage().unwrap_or_default();
        let view = node.view();
        let mut members = std::collections::BTreeMap::new();
        members.insert("self".to_string(), 1);
        for m in view.members.iter().filter(|m| m.id != view.me) {
            *members.entry(m.liveness.to_string()).or_insert(0) += 1;
        }
        metrics::Scrape {
            entries: usage.entries,
            bytes: usage.bytes,
            max_bytes: max_size,
            evictions: node.store().evictions(),
            bad_entries: node.bad_entries(),
            refused: node.trust().refusals(),
            members,
            wrapper: wrapper.as_ref().and_then(|w| (w.0)()),
        }
    })
}

/// Keeps `peer.mesh` present exactly while some other member is routable, so wrappers know
/// with one `stat` whether the mesh can answer (see [`ipc::mesh_marker_path`]).
async fn keep_mesh_marker(node: Node, dir: PathBuf) {
    fn others(view: &node::View) -> bool {
        view.members
            .iter()
            .any(|m| m.id != view.me && view.routable(&m.id))
    }
    let path = ipc::mesh_marker_path(&dir);
    // A marker left by a peer that was killed is stale until we know better.
    let _ = fs::remove_file(&path);
    let mut present = false;
    loop {
        let want = others(&node.view());
        if want != present {
            let r = if want {
                fs::write(&path, b"")
            } else {
                fs::remove_file(&path)
            };
            match r {
                Ok(()) => present = want,
                Err(e) => tracing::warn!("cannot update {}: {e}", path.display()),
            }
        }
        // Wakes on every published view; the timeout re-checks liveness that ages silently.
        node.wait_for(Duration::from_secs(1), |v| others(v) != present)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = lock(dir.path()).unwrap();
        assert!(is_running(dir.path()));
        let e = lock(dir.path()).err().expect("second lock must fail");
        let msg = e.to_string();
        assert!(msg.contains("already running"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(l);
        assert!(!is_running(dir.path()));
        assert!(lock(dir.path()).is_ok());
    }

    #[test]
    fn keyless_peer_is_loopback_only_unless_open() {
        let mut o = PeerOptions::new("/nonexistent".into());
        let m = mode(&o, false).unwrap();
        assert!(m.listen.iter().all(crate::membership::is_loopback));
        assert!(!m.mdns);
        o.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()];
        assert!(matches!(
            mode(&o, false),
            Err(DaemonError::KeylessListen(_))
        ));
        o.open = true;
        assert!(mode(&o, false).unwrap().mdns);
        o.open = false;
        o.listen.clear();
        let m = mode(&o, true).unwrap();
        assert_eq!(
            m.listen[0].to_string(),
            format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}")
        );
        assert!(m.mdns);
    }

    #[test]
    fn identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = identity(dir.path()).unwrap().public().to_peer_id();
        let b = identity(dir.path()).unwrap().public().to_peer_id();
        assert_eq!(a, b);
    }
}
