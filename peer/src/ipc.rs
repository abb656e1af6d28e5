//! The local socket through which wrapper processes and CLI commands reach their machine's
//! peer: `$DISTC_DIR/peer.sock`, owner-only (0600).
//!
//! Frames ([`crate::frame`]) hold a [`crate::codec`] message, the same framing as between
//! peers. The client ([`IpcClient`]) is synchronous and std-only so the wrapper's hot
//! path needs no async runtime; connecting fails at once when no peer is running.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::frame;
use crate::key::Key;
use crate::metrics::PeerCounters;
use crate::protocol::Bytes;
use crate::report::{FlushReport, OwnerInfo, StatusReport};

/// Socket file name inside `$DISTC_DIR`.
pub const SOCKET_NAME: &str = "peer.sock";
/// Version of the local protocol; a mismatch makes the client treat the peer as absent.
/// 2: the status report names the trust policy and refused entries; `SetTrust`.
pub const IPC_VERSION: u32 = 5;
/// Largest frame either side accepts. The socket is owner-only, but a frame is still
/// length-checked and read into a buffer that grows with the bytes received.
pub const MAX_FRAME: usize = 1 << 30;

/// The socket path for a cache directory.
pub fn socket_path(distc_dir: &Path) -> PathBuf {
    distc_dir.join(SOCKET_NAME)
}

/// The marker file that exists while the local peer is in a mesh with at least one other
/// peer that is not believed down. Wrappers check it with one `stat` to decide whether asking
/// the mesh can help: a peer alone (the usual keyless, loopback-only case) can only answer
/// "no", so its wrappers skip the question and the preprocessor run that computes the
/// mesh-wide key.
pub fn mesh_marker_path(distc_dir: &Path) -> PathBuf {
    distc_dir.join(MESH_MARKER_NAME)
}

/// True when the local peer reports other live members (see [`mesh_marker_path`]).
pub fn mesh_active(distc_dir: &Path) -> bool {
    mesh_marker_path(distc_dir).exists()
}

const MESH_MARKER_NAME: &str = "peer.mesh";

/// The marker a wrapper leaves when the local peer missed its deadline (stopped with Ctrl-Z or
/// `kill -STOP`, or hung): while it is younger than [`UNRESPONSIVE_BACKOFF`], wrappers skip
/// the peer without a connect, so a hung peer costs a build one budget, not one per compile.
/// The first wrapper after the back-off tries again and removes it when the peer answers.
pub fn unresponsive_marker_path(distc_dir: &Path) -> PathBuf {
    distc_dir.join("peer.unresponsive")
}

/// How long wrappers skip a local peer that missed a deadline.
pub const UNRESPONSIVE_BACKOFF: Duration = Duration::from_secs(60);

/// How long ago a wrapper found the local peer unresponsive, if a marker exists.
pub fn unresponsive_for(distc_dir: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(unresponsive_marker_path(distc_dir))
        .and_then(|m| m.modified())
        .ok()?;
    Some(modified.elapsed().unwrap_or_default())
}

/// Records that the local peer missed a deadline now (see [`unresponsive_marker_path`]).
pub fn mark_unresponsive(distc_dir: &Path) -> io::Result<()> {
    std::fs::write(unresponsive_marker_path(distc_dir), b"")
}

/// Removes the marker: the peer answered.
pub fn clear_unresponsive(distc_dir: &Path) {
    let _ = std::fs::remove_file(unresponsive_marker_path(distc_dir));
}

/// True for the errors of a peer that did not answer in time (a read or connect timeout, a
/// full accept queue), as opposed to one that is not there (refused, no socket).
pub fn is_timeout(e: &IpcError) -> bool {
    matches!(e, IpcError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// What a local client asks its peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IpcRequest {
    /// Version handshake.
    Hello {
        version: u32,
    },
    /// Fetch the raw entry for a key from the mesh.
    Get(Key),
    /// "I stored this key locally; replicate it." Answered at once.
    Announce(Key),
    Status,
    Flush,
    /// The ring owners of a key.
    Owners(Key),
    /// Stop the peer.
    Shutdown,
    /// The peer's own counters since it started (`distc top`).
    Counters,
    /// Replace the trust policy (`distc mesh trust|distrust`); the peer drops the entries of
    /// producers it no longer accepts.
    SetTrust(crate::trust::TrustPolicy),
    /// Have a member compile this ([`crate::offload`]); answered when it is compiled, refused,
    /// every try failed, or the wait for a slot ended.
    Compile(Box<crate::offload::Ask>),
    /// Compile slots here and in the mesh (`distc slots`).
    Slots,
}

impl IpcRequest {
    /// The request's name, as the metrics label it.
    pub fn name(&self) -> &'static str {
        match self {
            IpcRequest::Hello { .. } => "hello",
            IpcRequest::Get(_) => "get",
            IpcRequest::Announce(_) => "announce",
            IpcRequest::Status => "status",
            IpcRequest::Flush => "flush",
            IpcRequest::Owners(_) => "owners",
            IpcRequest::Shutdown => "shutdown",
            IpcRequest::Counters => "counters",
            IpcRequest::SetTrust(_) => "set-trust",
            IpcRequest::Compile(_) => "compile",
            IpcRequest::Slots => "slots",
        }
    }
}

/// The peer's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IpcResponse {
    Hello {
        version: u32,
    },
    Entry(Option<Bytes>),
    Ok,
    Status(StatusReport),
    Flushed(FlushReport),
    Owners(Vec<OwnerInfo>),
    Error(String),
    Counters(PeerCounters),
    /// Who compiled it (peer id), and the answer.
    Compiled {
        peer: Option<String>,
        response: crate::offload::CompileResponse,
    },
    Slots(crate::offload::SlotsReport),
}

/// Why a local request failed. The wrapper treats every one of them as a miss.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("local peer socket: {0}")]
    Io(#[from] io::Error),
    #[error("local peer sent an unreadable message: {0}")]
    Codec(#[from] CodecError),
    #[error("local peer: {0}")]
    Peer(String),
    #[error("local peer gave an unexpected answer")]
    Unexpected,
}

/// A synchronous connection to the local peer.
pub struct IpcClient {
    stream: UnixStream,
}

impl IpcClient {
    /// Connects to the peer of `distc_dir`. Fails at once when no socket exists or nobody
    /// listens on it; the connect never blocks (a stopped peer's full accept queue is a
    /// timeout error at once, not a hang); `timeout` bounds every later read and write.
    pub fn connect(distc_dir: &Path, timeout: Duration) -> io::Result<IpcClient> {
        let path = socket_path(distc_dir);
        // A Unix socket connect never waits when non-blocking: it succeeds (the peer's accept
        // queue has room, even when the peer is stopped) or fails with EAGAIN (queue full).
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&socket2::SockAddr::unix(&path)?) {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::EINPROGRESS) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: the peer does not accept connections", path.display()),
                ));
            }
            Err(e) => return Err(e),
        }
        socket.set_nonblocking(false)?;
        let stream = UnixStream::from(socket);
        let timeout = Some(timeout.max(Duration::from_millis(1)));
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Ok(IpcClient { stream })
    }

    /// Changes the timeout of later calls (status and flush may want longer than a get).
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let timeout = Some(timeout.max(Duration::from_millis(1)));
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    fn call(&mut self, req: &IpcRequest) -> Result<IpcResponse, IpcError> {
        frame::write_sync(&mut self.stream, &codec::encode(req)?)?;
        let body = frame::read_sync(&mut self.stream, MAX_FRAME)?;
        match codec::decode(&body, MAX_FRAME)? {
            IpcResponse::Error(e) => Err(IpcError::Peer(e)),
            r => Ok(r),
        }
    }

    /// Checks that the peer speaks this client's IPC version.
    pub fn hello(&mut self) -> Result<(), IpcError> {
        match self.call(&IpcRequest::Hello {
            version: IPC_VERSION,
        })? {
            IpcResponse::Hello { version } if version == IPC_VERSION => Ok(()),
            IpcResponse::Hello { version } => Err(IpcError::Peer(format!(
                "local peer speaks IPC version {version}, this distc speaks {IPC_VERSION}; restart the peer"
            ))),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// The raw entry for `key` (in `Store::get_raw` form) from the mesh, or `None`. The caller
    /// verifies it (`Store::verify_raw`) and keeps a local copy (`Store::put_raw`).
    pub fn get(&mut self, key: &Key) -> Result<Option<Vec<u8>>, IpcError> {
        match self.call(&IpcRequest::Get(*key))? {
            IpcResponse::Entry(e) => Ok(e.map(|b| b.0)),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// Tells the peer that `key` was stored locally; it replicates it in the background.
    /// Never waits: the request is written without blocking and the answer is not read, so a
    /// stopped peer costs nothing here.
    pub fn announce(&mut self, key: &Key) -> Result<(), IpcError> {
        self.stream.set_nonblocking(true)?;
        frame::write_sync(
            &mut self.stream,
            &codec::encode(&IpcRequest::Announce(*key))?,
        )?;
        Ok(())
    }

    /// Every known peer, as the local peer sees the mesh.
    pub fn status(&mut self) -> Result<StatusReport, IpcError> {
        match self.call(&IpcRequest::Status)? {
            IpcResponse::Status(s) => Ok(s),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// The peer's own counters (hits served, bytes in and out) since it started. A peer
    /// older than this request answers with an error.
    pub fn counters(&mut self) -> Result<PeerCounters, IpcError> {
        match self.call(&IpcRequest::Counters)? {
            IpcResponse::Counters(c) => Ok(c),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// Empties every reachable peer's store.
    pub fn flush(&mut self) -> Result<FlushReport, IpcError> {
        match self.call(&IpcRequest::Flush)? {
            IpcResponse::Flushed(r) => Ok(r),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// The ring owners of `key`, primary first.
    pub fn owners(&mut self, key: &Key) -> Result<Vec<OwnerInfo>, IpcError> {
        match self.call(&IpcRequest::Owners(*key))? {
            IpcResponse::Owners(o) => Ok(o),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// Replaces the running peer's trust policy; it answers once it has dropped the entries
    /// of producers it no longer accepts.
    pub fn set_trust(&mut self, policy: crate::trust::TrustPolicy) -> Result<(), IpcError> {
        match self.call(&IpcRequest::SetTrust(policy))? {
            IpcResponse::Ok => Ok(()),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// Has a member compile `ask.request`; the timeout of this call must cover the wait for
    /// a slot and a remote compile ([`crate::offload::REMOTE_TIMEOUT`]).
    pub fn compile(
        &mut self,
        ask: crate::offload::Ask,
    ) -> Result<(Option<String>, crate::offload::CompileResponse), IpcError> {
        match self.call(&IpcRequest::Compile(Box::new(ask)))? {
            IpcResponse::Compiled { peer, response } => Ok((peer, response)),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// Compile slots here and in the mesh.
    pub fn slots(&mut self) -> Result<crate::offload::SlotsReport, IpcError> {
        match self.call(&IpcRequest::Slots)? {
            IpcResponse::Slots(r) => Ok(r),
            _ => Err(IpcError::Unexpected),
        }
    }

    /// Asks the peer to stop (it tells the mesh it leaves).
    pub fn shutdown(&mut self) -> Result<(), IpcError> {
        match self.call(&IpcRequest::Shutdown)? {
            IpcResponse::Ok => Ok(()),
            _ => Err(IpcError::Unexpected),
        }
    }
}

/// What the server needs from the rest of the peer.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: IpcRequest) -> impl std::future::Future<Output = IpcResponse> + Send;
}

/// Binds `$DISTC_DIR/peer.sock` (replacing a stale one: the caller holds the peer lock) and
/// makes it owner-only.
pub fn bind(distc_dir: &Path) -> io::Result<tokio::net::UnixListener> {
    let path = socket_path(distc_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves local clients until the listener fails. `activity` is set to the current unix time
/// (seconds) on every request, for the idle timeout.
pub async fn serve<H: Handler>(
    listener: tokio::net::UnixListener,
    handler: Arc<H>,
    activity: Arc<AtomicU64>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("local socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let activity = activity.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(stream, handler, activity).await
                && e.kind() != io::ErrorKind::UnexpectedEof
            {
                tracing::debug!("local client: {e}");
            }
        });
    }
}

/// Requests are small (a key at most) but for a compile to hand to a member (a preprocessed
/// source): larger frames are refused.
const MAX_REQUEST: usize = crate::offload::MAX_REQUEST + 64 * 1024;

async fn serve_conn<H: Handler>(
    stream: tokio::net::UnixStream,
    handler: Arc<H>,
    activity: Arc<AtomicU64>,
) -> io::Result<()> {
    use tokio_util::compat::TokioAsyncReadCompatExt;
    let mut stream = stream.compat();
    loop {
        let body = frame::read(&mut stream, MAX_REQUEST).await?;
        activity.store(crate::membership::unix_now(), Ordering::Relaxed);
        let response = match codec::decode::<IpcRequest>(&body, MAX_REQUEST) {
            Ok(req) => handler.handle(req).await,
            Err(e) => IpcResponse::Error(format!("malformed request: {e}")),
        };
        let out = codec::encode(&response).map_err(|e| io::Error::other(e.to_string()))?;
        frame::write(&mut stream, &out).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_without_socket_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        assert!(IpcClient::connect(dir.path(), Duration::from_secs(5)).is_err());
        // A stale socket file with nobody listening also fails at once.
        let l = std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        drop(l);
        assert!(IpcClient::connect(dir.path(), Duration::from_secs(5)).is_err());
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
