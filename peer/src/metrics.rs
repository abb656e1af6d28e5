//! The peer's own counters and their Prometheus exposition (`distc peer --metrics ADDR`).
//!
//! The node and the daemon count through [`global()`], one registry per process: a peer is
//! one process, and a handle that every layer can reach keeps the counting one line at each
//! place it happens (the node's request and serve paths, the IPC handler) instead of a value
//! threaded through every constructor. Everything that already has a home elsewhere (store
//! usage and evictions, the member table, the wrappers' hit/miss counters in
//! `$DISTC_DIR/stats`) is read when a scrape comes, so no number exists twice.
//!
//! The HTTP side is deliberately tiny: `GET /metrics` over HTTP/1.1 with `Connection: close`,
//! request heads bounded in size and time, nothing else served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::node::RequestError;
use crate::protocol::{Request, Response};

/// One label (`result`, `kind`, `request`, `state`, …) and its value.
type Label = [(&'static str, String); 1];
type Timings = Family<Label, Histogram, fn() -> Histogram>;

fn label(name: &'static str, value: impl Into<String>) -> Label {
    [(name, value.into())]
}

/// Request latencies from 0.25 ms to about 8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The counters a peer process keeps. Cloning a metric clones a handle on the same value.
#[derive(Debug)]
pub struct Metrics {
    /// Gets from other peers answered, by `result` (hit / miss / error).
    served: Family<Label, Counter>,
    /// Gets for this machine's wrappers through the mesh, by `result` (hit / miss).
    fetched: Family<Label, Counter>,
    /// Entries other peers pushed here and that were stored.
    stored: Counter,
    /// Entry bytes received (remote hits fetched, entries pushed here).
    bytes_in: Counter,
    /// Entry bytes sent (hits served, entries pushed to owners).
    bytes_out: Counter,
    /// Mesh and IPC errors by `kind` (timeout, unreachable, incompatible, rejected-put, …).
    errors: Family<Label, Counter>,
    /// Requests this peer sent, by `request`: time to the answer.
    outbound: Timings,
    /// Requests from other peers, by `request`: time to serve (disk included).
    inbound: Timings,
    /// Requests from local clients over the socket, by `request`.
    ipc: Timings,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    // The results every peer has are shown from the start, at zero.
    let results = |values: &[&'static str]| {
        let f = Family::<Label, Counter>::default();
        for v in values {
            drop(f.get_or_create(&label("result", *v)));
        }
        f
    };
    GLOBAL.get_or_init(|| Metrics {
        served: results(&["hit", "miss"]),
        fetched: results(&["hit", "miss"]),
        stored: Counter::default(),
        bytes_in: Counter::default(),
        bytes_out: Counter::default(),
        errors: Family::default(),
        outbound: Family::new_with_constructor(latency_histogram),
        inbound: Family::new_with_constructor(latency_histogram),
        ipc: Family::new_with_constructor(latency_histogram),
    })
}

/// What the counters need of a request, taken before the request is consumed.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The wire name, as the `request` label shows it.
    name: &'static str,
    /// Entry bytes carried by a put.
    put_bytes: Option<u64>,
}

impl Summary {
    pub fn of(r: &Request) -> Summary {
        let (name, put_bytes) = match r {
            Request::Get(_) => ("get", None),
            Request::Put { entry, .. } => ("put", Some(entry.0.len() as u64)),
            Request::Offer(_) => ("offer", None),
            Request::Flush => ("flush", None),
            Request::Gossip(_) => ("gossip", None),
        };
        Summary { name, put_bytes }
    }
}

/// The `kind` label of a failed request.
pub fn error_kind(e: &RequestError) -> &'static str {
    match e {
        RequestError::Unreachable(_) => "unreachable",
        RequestError::Incompatible => "incompatible",
        RequestError::Timeout => "timeout",
        RequestError::Failed(_) => "request-failed",
        RequestError::Stopped => "stopped",
    }
}

impl Metrics {
    /// A request from another peer was served in `took`.
    pub fn inbound(&self, request: Summary, response: &Response, took: Duration) {
        self.inbound
            .get_or_create(&label("request", request.name))
            .observe(took.as_secs_f64());
        match (request.name, response) {
            ("get", Response::Entry(Some(b))) => {
                self.served.get_or_create(&label("result", "hit")).inc();
                self.bytes_out.inc_by(b.0.len() as u64);
            }
            ("get", Response::Entry(None)) => {
                self.served.get_or_create(&label("result", "miss")).inc();
            }
            ("get", _) => {
                self.served.get_or_create(&label("result", "error")).inc();
            }
            ("put", Response::Stored) => {
                self.stored.inc();
                self.bytes_in.inc_by(request.put_bytes.unwrap_or(0));
            }
            ("put", _) => self.error("rejected-put"),
            _ => {}
        }
    }

    /// A request to another peer ended after `took` with this answer or error.
    pub fn outbound(
        &self,
        request: Summary,
        answer: Result<&Response, &RequestError>,
        took: Duration,
    ) {
        self.outbound
            .get_or_create(&label("request", request.name))
            .observe(took.as_secs_f64());
        match answer {
            Ok(response) => {
                if let Response::Entry(Some(b)) = response {
                    self.bytes_in.inc_by(b.0.len() as u64);
                }
                if let (Response::Stored, Some(n)) = (response, request.put_bytes) {
                    self.bytes_out.inc_by(n);
                }
            }
            Err(e) => self.error(error_kind(e)),
        }
    }

    /// A local client's request took `took`.
    pub fn ipc(&self, request: &'static str, took: Duration) {
        self.ipc
            .get_or_create(&label("request", request))
            .observe(took.as_secs_f64());
    }

    /// A mesh get for a local wrapper found the entry (`hit`) or not.
    pub fn fetched(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.fetched.get_or_create(&label("result", result)).inc();
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&label("kind", kind)).inc();
    }

    /// The counters `distc top` shows for this peer.
    pub fn snapshot(&self) -> PeerCounters {
        let get = |f: &Family<Label, Counter>, v: &str| {
            f.get(&label("result", v)).map(|c| c.get()).unwrap_or(0)
        };
        PeerCounters {
            served_hits: get(&self.served, "hit"),
            served_misses: get(&self.served, "miss"),
            fetched_hits: get(&self.fetched, "hit"),
            fetched_misses: get(&self.fetched, "miss"),
            stored: self.stored.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
        }
    }
}

/// The peer's own counters since it started, as `distc top` receives them over IPC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounters {
    /// Gets from other peers answered with an entry / without one.
    pub served_hits: u64,
    pub served_misses: u64,
    /// Mesh gets for local wrappers that found the entry / did not.
    pub fetched_hits: u64,
    pub fetched_misses: u64,
    /// Entries pushed here by other peers and stored.
    pub stored: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The wrappers' counters (kept by the `distc` package in `$DISTC_DIR/stats`), handed to the
/// exposition at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrapperCounters {
    pub local_hits: u64,
    pub remote_hits: u64,
    pub misses: u64,
    /// Reason label -> count.
    pub uncacheable: BTreeMap<String, u64>,
    /// Error kind -> count.
    pub errors: BTreeMap<String, u64>,
    /// Producer peer id -> re-verified hits of its entries that differed from the local
    /// compile.
    pub mismatches: BTreeMap<String, u64>,
}

/// Reads the wrappers' counters when a scrape comes (`None` when they cannot be read).
#[derive(Clone)]
pub struct WrapperSource(pub Arc<dyn Fn() -> Option<WrapperCounters> + Send + Sync>);

impl std::fmt::Debug for WrapperSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrapperSource")
    }
}

/// What a scrape reads from elsewhere: the store, the member table, the wrappers.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub evictions: u64,
    /// Entries from peers that failed verification (the node counts them).
    pub bad_entries: u64,
    /// Received entries refused as unsigned, wrongly signed or untrusted.
    pub refused: crate::trust::Refusals,
    /// Members by state (`self`, `up`, `suspect`, `down`), the answering peer included.
    pub members: BTreeMap<String, u64>,
    pub wrapper: Option<WrapperCounters>,
}

fn counter(n: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(n);
    c
}

fn gauge(n: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(n).unwrap_or(i64::MAX));
    g
}

fn counters<'a>(
    name: &'static str,
    items: impl IntoIterator<Item = (&'a String, &'a u64)>,
) -> Family<Label, Counter> {
    let f = Family::<Label, Counter>::default();
    for (k, v) in items {
        f.get_or_create(&label(name, k.clone())).inc_by(*v);
    }
    f
}

/// The OpenMetrics text of this process's metrics plus `scrape`.
pub fn render(scrape: &Scrape) -> String {
    let m = global();
    let mut r = Registry::with_prefix("distc");
    if let Some(w) = &scrape.wrapper {
        let hits = Family::<Label, Counter>::default();
        hits.get_or_create(&label("tier", "local"))
            .inc_by(w.local_hits);
        hits.get_or_create(&label("tier", "remote"))
            .inc_by(w.remote_hits);
        r.register(
            "hits",
            "Wrapped compiles served from the cache, by tier (local store or a peer)",
            hits,
        );
        r.register(
            "misses",
            "Cacheable compiles that ran and were stored",
            counter(w.misses),
        );
        r.register(
            "uncacheable",
            "Compiles run without the cache, by reason",
            counters("reason", &w.uncacheable),
        );
        r.register(
            "wrapper_errors",
            "Cache faults in wrapped compiles (each degraded to a compile), by kind",
            counters("kind", &w.errors),
        );
        r.register(
            "verify_mismatches",
            "Re-verified hits whose entry differed from this machine's compile, by producer",
            counters("producer", &w.mismatches),
        );
    }
    r.register(
        "store_entries",
        "Entries in the local store",
        gauge(scrape.entries),
    );
    r.register(
        "store_bytes",
        "Bytes in the local store",
        gauge(scrape.bytes),
    );
    r.register(
        "store_max_bytes",
        "Size cap of the local store",
        gauge(scrape.max_bytes),
    );
    r.register(
        "store_evictions",
        "Entries evicted from the local store to keep it under its cap",
        counter(scrape.evictions),
    );
    let members = Family::<Label, Gauge>::default();
    for state in ["self", "up", "suspect", "down"] {
        let n = scrape.members.get(state).copied().unwrap_or(0);
        members.get_or_create(&label("state", state)).set(n as i64);
    }
    r.register("members", "Known mesh members by state", members);
    r.register(
        "served",
        "Gets from other peers answered, by result",
        m.served.clone(),
    );
    r.register(
        "fetched",
        "Mesh gets for this machine's compiles, by result",
        m.fetched.clone(),
    );
    r.register(
        "received_entries",
        "Entries other peers pushed here and that were stored",
        m.stored.clone(),
    );
    r.register(
        "received_bytes",
        "Entry bytes received from peers",
        m.bytes_in.clone(),
    );
    r.register(
        "sent_bytes",
        "Entry bytes sent to peers",
        m.bytes_out.clone(),
    );
    r.register(
        "peer_errors",
        "Mesh and IPC errors by kind",
        m.errors.clone(),
    );
    r.register(
        "bad_entries",
        "Entries from peers that failed verification (another key's, or corrupt)",
        counter(scrape.bad_entries),
    );
    let refused = Family::<Label, Counter>::default();
    for (reason, n) in [
        ("unsigned", scrape.refused.unsigned),
        ("bad-signature", scrape.refused.bad_signature),
        ("untrusted", scrape.refused.untrusted),
    ] {
        refused.get_or_create(&label("reason", reason)).inc_by(n);
    }
    r.register(
        "refused_entries",
        "Entries from peers refused: unsigned, wrongly signed, or from a producer not trusted here",
        refused,
    );
    r.register(
        "peer_request_duration_seconds",
        "Requests sent to other peers: time to the answer, by request",
        m.outbound.clone(),
    );
    r.register(
        "serve_duration_seconds",
        "Requests from other peers: time to serve, by request",
        m.inbound.clone(),
    );
    r.register(
        "ipc_request_duration_seconds",
        "Requests from this machine's wrappers and commands, by request",
        m.ipc.clone(),
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &r) {
        tracing::warn!("cannot encode the metrics: {e}");
    }
    out
}

/// Why the metrics endpoint cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "refusing to serve metrics on {0}, which is not a loopback address: the page shows this \
         machine's build activity and the mesh's peers to whoever can reach it. Use \
         127.0.0.1:PORT, or pass --metrics-public to mean it"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot serve metrics on {addr}: {source} (is the port in use? pick another)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the metrics address: loopback unless `public`.
pub async fn bind(addr: SocketAddr, public: bool) -> Result<tokio::net::TcpListener, MetricsError> {
    if !addr.ip().is_loopback() && !public {
        return Err(MetricsError::NotLoopback(addr));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Largest request head read; anything longer is answered 431 and closed.
const MAX_HEAD: usize = 8 * 1024;
/// A client gets this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` forever; `scrape` gathers the numbers read elsewhere
/// (it may block: it runs on a blocking thread).
pub async fn serve(
    listener: tokio::net::TcpListener,
    scrape: Arc<dyn Fn() -> Scrape + Send + Sync>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, scrape).await {
                tracing::debug!(%peer, "metrics request failed: {e}");
            }
        });
    }
}

/// The request line of a head, once the head is complete (`None` while more is needed).
fn request_line(head: &[u8]) -> Option<&str> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&head[..end]).ok()?;
    head.lines().next()
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    scrape: Arc<dyn Fn() -> Scrape + Send + Sync>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read_head = async {
        let mut buf = [0u8; 1024];
        loop {
            if request_line(&head).is_some() || head.len() > MAX_HEAD {
                return Ok::<_, std::io::Error>(());
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
    };
    if tokio::time::timeout(HEAD_TIMEOUT, read_head).await.is_err() {
        return Ok(());
    }
    let line = request_line(&head).unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if head.len() > MAX_HEAD && line.is_empty() {
        (
            "431 Request Header Fields Too Large",
            "text/plain",
            String::new(),
        )
    } else if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
        )
    } else if path == "/metrics" {
        let body = tokio::task::spawn_blocking(move || render(&scrape()))
            .await
            .unwrap_or_default();
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "distc serves GET /metrics\n".into(),
        )
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Bytes;

    #[test]
    fn counts_show_in_the_exposition() {
        let m = global();
        let key = crate::Key([7; 32]);
        let get = Request::Get(key);
        let get = Summary::of(&get);
        m.inbound(
            get,
            &Response::Entry(Some(Bytes(vec![0; 10]))),
            Duration::from_millis(2),
        );
        m.inbound(get, &Response::Entry(None), Duration::from_millis(1));
        m.outbound(get, Err(&RequestError::Timeout), Duration::from_secs(2));
        m.fetched(true);
        let mut scrape = Scrape {
            entries: 3,
            bytes: 300,
            max_bytes: 1000,
            evictions: 2,
            ..Scrape::default()
        };
        scrape.members.insert("self".into(), 1);
        scrape.members.insert("up".into(), 2);
        scrape.wrapper = Some(WrapperCounters {
            local_hits: 5,
            misses: 4,
            uncacheable: [("linking".to_string(), 2)].into(),
            ..WrapperCounters::default()
        });
        let text = render(&scrape);
        for line in [
            "distc_hits_total{tier=\"local\"} 5",
            "distc_misses_total 4",
            "distc_uncacheable_total{reason=\"linking\"} 2",
            "distc_store_entries 3",
            "distc_store_evictions_total 2",
            "distc_bad_entries_total 0",
            "distc_refused_entries_total{reason=\"untrusted\"} 0",
            "distc_members{state=\"up\"} 2",
            "distc_members{state=\"suspect\"} 0",
            "distc_peer_errors_total{kind=\"timeout\"}",
            "distc_serve_duration_seconds_count{request=\"get\"}",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        let s = m.snapshot();
        assert!(s.served_hits >= 1 && s.served_misses >= 1 && s.fetched_hits >= 1);
        assert!(s.bytes_out >= 10);
    }

    #[test]
    fn request_heads() {
        assert_eq!(request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("GET /metrics HTTP/1.1")
        );
    }

    #[tokio::test]
    async fn public_addresses_need_the_flag() {
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            bind(any, false).await,
            Err(MetricsError::NotLoopback(_))
        ));
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(bind(lo, false).await.is_ok());
    }
}
