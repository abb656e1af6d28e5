//! What peers say to each other, and how it is framed on a libp2p stream.
//!
//! One request-response protocol, versioned in its name. A peer speaks [`PROTOCOL`]
//! (`/distc/1.1.0`) and still answers and asks in [`PROTOCOL_1_0`] (`/distc/1.0.0`), so older
//! peers keep interoperating; stream negotiation picks the newest both sides speak. A peer that
//! speaks neither does not speak distc: negotiation fails and the caller treats that as a miss.
//!
//! Framing of `/distc/1.0.0`: one [`crate::frame`] (`u32` little-endian length) holding the
//! message encoded by [`crate::codec`]. An entry travels inside the message, so the sender copies it into the
//! encoding and the receiver copies it out again.
//!
//! Framing of `/distc/1.1.0`: a 12-byte prefix — `u32` LE header length, `u64` LE body length —
//! then the header (the message encoded by [`crate::codec`], with the entry left empty), then
//! the body: the raw entry bytes of a [`Request::Put`] or [`Response::Entry`], written straight
//! from the buffer that holds them. Other messages carry an empty body.
//!
//! Every length is checked before anything is read into memory: header and body against the
//! limit (`max_entry_size` plus a small overhead). The header is read into a buffer that grows
//! only as bytes arrive. The body is read in 1 MiB steps: its full (already checked) length is
//! reserved only once the first MiB has arrived, and memory is touched only as bytes arrive, so
//! a peer that claims a large length and sends nothing costs nothing.

use std::io;

use std::sync::Arc;

use futures::prelude::*;
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::frame::{self, invalid};
use crate::key::Key;
use crate::store::Usage;
use crate::transfer::Progress;

/// The protocol name this version prefers. Bump the version when a wire type or the framing
/// changes incompatibly, and keep answering the previous one while it is cheap to.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/distc/1.1.0");

/// The previous protocol: the whole message in one frame (entries copied into it).
pub const PROTOCOL_1_0: StreamProtocol = StreamProtocol::new("/distc/1.0.0");

/// Every protocol this peer speaks, preferred first.
pub const PROTOCOLS: [StreamProtocol; 2] = [PROTOCOL, PROTOCOL_1_0];

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
    /// Told when the answer's header has arrived and how large its body is (one stream's
    /// codec, set by [`NodeCodec`] as it writes the request).
    progress: Option<Arc<Progress>>,
}

impl Codec {
    /// A codec that accepts entries up to `max_entry_size` bytes.
    pub fn new(max_entry_size: u64) -> Codec {
        Codec {
            max_frame: usize::try_from(max_entry_size)
                .unwrap_or(usize::MAX - FRAME_OVERHEAD)
                .saturating_add(FRAME_OVERHEAD)
                .min(u32::MAX as usize),
            progress: None,
        }
    }

    /// Reads one message within what `progress` allows (its first-byte limit until the header
    /// has arrived, then the time the announced size needs); `what` names it in the error.
    async fn read_bounded<T, M>(
        &self,
        progress: &Progress,
        p: &StreamProtocol,
        io: &mut T,
        what: &str,
    ) -> io::Result<M>
    where
        T: AsyncRead + Unpin + Send,
        M: serde::de::DeserializeOwned + WithBody,
    {
        let start = std::time::Instant::now();
        let read = self.read_msg(p, io);
        futures::pin_mut!(read);
        loop {
            let Some(deadline) = progress.deadline(start) else {
                return read.await;
            };
            if let Ok(r) = tokio::time::timeout_at(deadline.into(), &mut read).await {
                return r;
            }
            if progress.deadline(start).is_none_or(|d| d <= deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} did not arrive in the time its size allows"),
                ));
            }
        }
    }

    fn started(&self, body_len: usize) {
        if let Some(p) = &self.progress {
            p.header(body_len as u64);
        }
    }
}

/// A request as the node hands it to libp2p: the message, and where the codec reports what
/// has arrived of its answer ([`Progress`]), so the node can give a transfer that has started
/// the time its size needs and race a peer that has not started against another.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub msg: Request,
    pub progress: Option<Arc<Progress>>,
}

/// The node's codec: [`Codec`] with [`Envelope`]s for requests. libp2p uses one clone of it
/// per stream, writing the request and then reading the answer, so the progress the request
/// carries is the one its answer reports to.
#[derive(Debug, Clone)]
pub struct NodeCodec(pub Codec);

/// How long an inbound request may take to begin (its prefix and header) before its stream is
/// dropped; its body then gets the time its announced size needs at
/// [`crate::transfer::MIN_RATE`] ([`crate::transfer::transfer_timeout`]).
pub const INBOUND_FIRST_BYTE: std::time::Duration = std::time::Duration::from_secs(10);

/// A message whose entry travels as the body of a `/distc/1.1.0` frame.
trait WithBody: Sized {
    /// Moves the entry out (leaving it empty); empty if the message carries none.
    fn take_body(&mut self) -> Vec<u8>;
    /// Puts a received body back; `false` if the message carries no entry.
    fn set_body(&mut self, body: Vec<u8>) -> bool;
}

impl WithBody for Request {
    fn take_body(&mut self) -> Vec<u8> {
        match self {
            Request::Put { entry, .. } => std::mem::take(&mut entry.0),
            _ => Vec::new(),
        }
    }
    fn set_body(&mut self, body: Vec<u8>) -> bool {
        match self {
            Request::Put { entry, .. } if entry.0.is_empty() => {
                entry.0 = body;
                true
            }
            _ => false,
        }
    }
}

impl WithBody for Response {
    fn take_body(&mut self) -> Vec<u8> {
        match self {
            Response::Entry(Some(entry)) => std::mem::take(&mut entry.0),
            _ => Vec::new(),
        }
    }
    fn set_body(&mut self, body: Vec<u8>) -> bool {
        match self {
            Response::Entry(Some(entry)) if entry.0.is_empty() => {
                entry.0 = body;
                true
            }
            _ => false,
        }
    }
}

impl Codec {
    async fn read_msg<T, M>(&self, protocol: &StreamProtocol, io: &mut T) -> io::Result<M>
    where
        T: AsyncRead + Unpin + Send,
        M: serde::de::DeserializeOwned + WithBody,
    {
        if *protocol == PROTOCOL_1_0 {
            let mut p = [0u8; 4];
            io.read_exact(&mut p).await?;
            let len = frame::check_len(p, self.max_frame)?;
            self.started(len);
            let buf = frame::read_growing(io, len, "frame").await?;
            return codec::decode(&buf, self.max_frame).map_err(|e| invalid(e.to_string()));
        }
        let mut prefix = [0u8; 12];
        io.read_exact(&mut prefix).await?;
        let [h0, h1, h2, h3, body_len @ ..] = prefix;
        let head_len = u32::from_le_bytes([h0, h1, h2, h3]) as usize;
        let body_len = u64::from_le_bytes(body_len);
        if head_len > self.max_frame {
            return Err(invalid(format!(
                "message header of {head_len} bytes exceeds the limit of {} bytes",
                self.max_frame
            )));
        }
        let body_len = match usize::try_from(body_len) {
            Ok(n) if n <= self.max_frame => n,
            _ => {
                return Err(invalid(format!(
                    "entry of {body_len} bytes exceeds the limit of {} bytes",
                    self.max_frame
                )));
            }
        };
        self.started(body_len);
        let head = frame::read_growing(io, head_len, "message header").await?;
        let mut msg: M =
            codec::decode(&head, self.max_frame).map_err(|e| invalid(e.to_string()))?;
        if body_len > 0 {
            // Check the header before reading (and reserving) anything for the body.
            if !msg.set_body(Vec::new()) {
                return Err(invalid(format!(
                    "message carries a body of {body_len} bytes it has no place for"
                )));
            }
            let body = frame::read_body(io, body_len).await?;
            msg.set_body(body);
        }
        Ok(msg)
    }

    async fn write_msg<T, M>(
        &self,
        protocol: &StreamProtocol,
        io: &mut T,
        mut msg: M,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
        M: Serialize + WithBody,
    {
        if *protocol == PROTOCOL_1_0 {
            let whole = codec::encode(&msg).map_err(|e| invalid(e.to_string()))?;
            return frame::write(io, &whole).await;
        }
        let body = msg.take_body();
        let head = codec::encode(&msg).map_err(|e| invalid(e.to_string()))?;
        let head_len =
            u32::try_from(head.len()).map_err(|_| invalid("message header too large".into()))?;
        let mut out = Vec::with_capacity(12 + head.len());
        out.extend_from_slice(&head_len.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&head);
        io.write_all(&out).await?;
        if !body.is_empty() {
            io.write_all(&body).await?;
        }
        io.flush().await
    }
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_msg(p, io).await
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_msg(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_msg(p, io, req).await
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_msg(p, io, res).await
    }
}

impl libp2p::request_response::Codec for NodeCodec {
    type Protocol = StreamProtocol;
    type Request = Envelope;
    type Response = Response;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Envelope>
    where
        T: AsyncRead + Unpin + Send,
    {
        // An inbound request is bounded like an answer: it must start within
        // [`INBOUND_FIRST_BYTE`], and its body then gets the time its announced size needs at
        // the slowest rate a transfer is allowed; libp2p's own limit is an hour, so a peer that
        // opened a stream and went quiet would otherwise hold it (and its buffer) that long.
        let progress = Arc::new(Progress::default());
        progress.bound(INBOUND_FIRST_BYTE, Some(crate::transfer::MIN_RATE));
        self.0.progress = Some(progress.clone());
        let msg = self.0.read_bounded(&progress, p, io, "the request").await;
        self.0.progress = None;
        Ok(Envelope {
            msg: msg?,
            progress: None,
        })
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let Some(progress) = self.0.progress.clone() else {
            return self.0.read_msg(p, io).await;
        };
        // Bounded here too, not only by the caller: a caller that gave up does not end the
        // stream, and libp2p's own limit is an hour.
        self.0.read_bounded(&progress, p, io, "the answer").await
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: Envelope,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.0.progress = req.progress;
        let write = self.0.write_msg(p, io, req.msg);
        match self.0.progress.as_ref().and_then(|p| p.first_byte()) {
            Some(limit) => tokio::time::timeout(limit, write).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request could not be sent in the time allowed",
                )
            })?,
            None => write.await,
        }
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.0.write_msg(p, io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::BODY_STEP;
    use futures::executor::block_on;
    use libp2p::request_response::Codec as _;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Records the largest single allocation each thread asks for, so a test can show that a
    /// claimed length was never allocated.
    struct Largest;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for Largest {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOC: Largest = Largest;

    /// Runs `f` and returns its result with the largest allocation it made on this thread.
    fn largest_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
        LARGEST.with(|l| l.set(0));
        let r = f();
        (r, LARGEST.with(Cell::get))
    }

    /// A `/distc/1.0.0` frame.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// A `/distc/1.1.0` frame with lengths as given (they may lie).
    fn frame11(head_len: u32, body_len: u64, rest: &[u8]) -> Vec<u8> {
        let mut v = head_len.to_le_bytes().to_vec();
        v.extend_from_slice(&body_len.to_le_bytes());
        v.extend_from_slice(rest);
        v
    }

    fn put(len: usize) -> Request {
        Request::Put {
            key: Key::digest(b"k"),
            entry: Bytes((0..len).map(|i| (i * 7 + i / 251) as u8).collect()),
        }
    }

    #[test]
    fn round_trip_put_in_both_versions() {
        let mut c = Codec::new(16 << 20);
        // Larger than one body step, so the body is read in several steps.
        let len = 3 * BODY_STEP + 12345;
        let Request::Put { entry: want, .. } = put(len) else {
            unreachable!()
        };
        for p in PROTOCOLS {
            let mut buf = Vec::new();
            block_on(c.write_request(&p, &mut buf, put(len))).unwrap();
            // A byte buffer costs its length plus a small prefix, not a byte per element.
            assert!(buf.len() < len + 64, "{p}: {}", buf.len());
            match block_on(c.read_request(&p, &mut &buf[..])).unwrap() {
                Request::Put { key, entry } => {
                    assert_eq!(key, Key::digest(b"k"));
                    assert!(entry == want, "{p}: entry differs");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn round_trip_responses_in_both_versions() {
        let mut c = Codec::new(1 << 20);
        for p in PROTOCOLS {
            for res in [
                Response::Entry(Some(Bytes(vec![9; 70_000]))),
                Response::Entry(Some(Bytes(Vec::new()))),
                Response::Entry(None),
                Response::Want(vec![Key::digest(b"a")]),
                Response::Error("disk full".into()),
            ] {
                let want = format!("{res:?}");
                let mut buf = Vec::new();
                block_on(c.write_response(&p, &mut buf, res)).unwrap();
                let back = block_on(c.read_response(&p, &mut &buf[..])).unwrap();
                assert_eq!(format!("{back:?}"), want, "{p}");
            }
        }
        // The body itself round-trips byte for byte.
        let body: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        let mut buf = Vec::new();
        let res = Response::Entry(Some(Bytes(body.clone())));
        block_on(c.write_response(&PROTOCOL, &mut buf, res)).unwrap();
        match block_on(c.read_response(&PROTOCOL, &mut &buf[..])).unwrap() {
            Response::Entry(Some(b)) => assert!(b.0 == body),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_claim_rejected_before_reading() {
        let mut c = Codec::new(1024);
        // Claims 4 GiB - 1 and carries nothing: rejected on the length alone.
        let bytes = u32::MAX.to_le_bytes().to_vec();
        let r = block_on(c.read_request(&PROTOCOL_1_0, &mut &bytes[..]));
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // The same for a 1.1.0 header or body: the prefix alone is enough to refuse it (had
        // the reader gone on, it would have hit the end of input instead).
        for bytes in [frame11(u32::MAX, 0, &[]), frame11(10, u64::MAX, &[])] {
            let e = block_on(c.read_request(&PROTOCOL, &mut &bytes[..])).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            let e = block_on(c.read_response(&PROTOCOL, &mut &bytes[..])).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
    }

    #[test]
    fn lying_body_length_is_not_allocated() {
        // The limit allows 256 MiB entries; the frame claims 200 MiB and carries 100 bytes.
        let mut c = Codec::new(256 << 20);
        let mut head = Vec::new();
        block_on(c.write_response(&PROTOCOL, &mut head, Response::Entry(Some(Bytes(vec![])))))
            .unwrap();
        let head_len = u32::from_le_bytes(head[..4].try_into().unwrap());
        let mut bytes = frame11(head_len, 200 << 20, &head[12..]);
        bytes.extend_from_slice(&[5u8; 100]);
        let (r, largest) = largest_alloc(|| block_on(c.read_response(&PROTOCOL, &mut &bytes[..])));
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(
            largest <= BODY_STEP + 4096,
            "allocated {largest} bytes for a body that sent 100"
        );
        // Over the limit by one byte: refused before the header is even read.
        let limit = c.max_frame as u64;
        let bytes = frame11(head_len, limit + 1, &head[12..]);
        let e = block_on(c.read_response(&PROTOCOL, &mut &bytes[..])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn body_on_a_message_without_one_is_refused_before_reading_it() {
        let mut c = Codec::new(1 << 20);
        for (msg, is_request) in [
            (codec::encode(&Request::Flush).unwrap(), true),
            (
                codec::encode(&Request::Get(Key::digest(b"k"))).unwrap(),
                true,
            ),
            (codec::encode(&Response::Entry(None)).unwrap(), false),
            (codec::encode(&Response::Stored).unwrap(), false),
            // An entry in the header and a body as well.
            (
                codec::encode(&Response::Entry(Some(Bytes(vec![1, 2, 3])))).unwrap(),
                false,
            ),
        ] {
            // Claims a body but carries none: the error names the body, not a truncation.
            let bytes = frame11(msg.len() as u32, 1000, &msg);
            let r = if is_request {
                block_on(c.read_request(&PROTOCOL, &mut &bytes[..])).map(|_| ())
            } else {
                block_on(c.read_response(&PROTOCOL, &mut &bytes[..])).map(|_| ())
            };
            let e = r.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
    }

    #[test]
    fn truncated_and_malformed_frames_are_errors() {
        let mut c = Codec::new(1 << 20);
        // Length within the limit but body missing.
        let bytes = 1000u32.to_le_bytes().to_vec();
        assert!(block_on(c.read_request(&PROTOCOL_1_0, &mut &bytes[..])).is_err());
        assert!(block_on(c.read_request(&PROTOCOL, &mut &frame11(1000, 0, &[])[..])).is_err());
        // Garbage bodies of every small size, in both framings.
        for n in 0..200u32 {
            let body: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
            let _ = block_on(c.read_request(&PROTOCOL_1_0, &mut &frame(&body)[..]));
            let _ = block_on(c.read_response(&PROTOCOL_1_0, &mut &frame(&body)[..]));
            let _ = block_on(c.read_request(&PROTOCOL, &mut &body[..]));
            let _ = block_on(c.read_response(&PROTOCOL, &mut &body[..]));
            for body_len in [0, 1, u64::from(n)] {
                let f = frame11(n, body_len, &body);
                let _ = block_on(c.read_request(&PROTOCOL, &mut &f[..]));
                let _ = block_on(c.read_response(&PROTOCOL, &mut &f[..]));
            }
        }
        // A Put whose entry claims far more bytes than the frame holds.
        let mut body = vec![2u8]; // variant index of Put
        body.extend_from_slice(&[0u8; 32]);
        body.push(253);
        body.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
        assert!(block_on(c.read_request(&PROTOCOL_1_0, &mut &frame(&body)[..])).is_err());
        let f = frame11(body.len() as u32, 0, &body);
        assert!(block_on(c.read_request(&PROTOCOL, &mut &f[..])).is_err());
    }

    /// A peer that has stopped: its stream never yields another byte.
    struct Stalled;

    impl futures::AsyncRead for Stalled {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Pending
        }
    }

    /// A node codec whose stream carries a request bounded by `first_byte` at `rate`.
    fn bounded(first_byte: std::time::Duration, rate: Option<f64>) -> (NodeCodec, Arc<Progress>) {
        let mut c = NodeCodec(Codec::new(64 << 20));
        let progress = Arc::new(Progress::default());
        progress.bound(first_byte, rate);
        let req = Envelope {
            msg: Request::Get(Key::digest(b"k")),
            progress: Some(progress.clone()),
        };
        block_on(c.write_request(&PROTOCOL, &mut Vec::new(), req)).unwrap();
        (c, progress)
    }

    #[tokio::test]
    async fn a_stalled_answer_ends_its_stream_even_when_nobody_waits_for_it() {
        use std::time::{Duration, Instant};
        let first_byte = Duration::from_millis(100);
        let limit = first_byte + crate::transfer::CODEC_GRACE;
        // Nothing arrives: the stream ends after the first-byte limit (plus the grace).
        let (mut c, progress) = bounded(first_byte, None);
        let t = Instant::now();
        let e = c.read_response(&PROTOCOL, &mut Stalled).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            t.elapsed() >= limit && t.elapsed() < limit * 3,
            "{:?}",
            t.elapsed()
        );
        assert!(progress.started().is_none());

        // The header arrives, announcing 4 MB at 1 GB/s, then nothing: it ends at the same
        // limit (the size needs 12 ms), having seen the header.
        let mut head = Vec::new();
        let res = Response::Entry(Some(Bytes(vec![7; 4_000_000])));
        block_on(c.0.write_response(&PROTOCOL, &mut head, res)).unwrap();
        let (mut c, progress) = bounded(first_byte, Some(1e9));
        let mut io = futures::AsyncReadExt::chain(&head[..1000], Stalled);
        let t = Instant::now();
        let e = c.read_response(&PROTOCOL, &mut io).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            t.elapsed() >= limit && t.elapsed() < limit * 3,
            "{:?}",
            t.elapsed()
        );
        assert_eq!(progress.started().map(|(_, len)| len), Some(4_000_000));

        // A header announcing a size a slow link needs minutes for moves the limit that far.
        let (_, slow) = bounded(first_byte, Some(crate::transfer::MIN_RATE));
        let start = Instant::now();
        slow.header(40_000_000);
        let until = slow.deadline(start).unwrap();
        assert!(
            until > start + Duration::from_secs(600),
            "{:?}",
            until - start
        );
        assert!(Progress::default().deadline(start).is_none(), "unbounded");

        // A whole answer is read as before.
        let (mut c, _) = bounded(first_byte, None);
        match c.read_response(&PROTOCOL, &mut &head[..]).await.unwrap() {
            Response::Entry(Some(b)) => assert_eq!(b.0.len(), 4_000_000),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_that_never_arrives_ends_its_stream_after_the_first_byte_limit() {
        use std::time::Instant;
        let limit = INBOUND_FIRST_BYTE + crate::transfer::CODEC_GRACE;
        // A peer opened the stream and sent nothing.
        let mut c = NodeCodec(Codec::new(64 << 20));
        let t = Instant::now();
        let e = c.read_request(&PROTOCOL, &mut Stalled).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            t.elapsed() >= limit && t.elapsed() < limit * 2,
            "{:?}",
            t.elapsed()
        );
        assert!(e.to_string().contains("the request"), "{e}");
        assert!(
            c.0.progress.is_none(),
            "the bound does not outlive the request"
        );

        // A request that arrives whole is read as before, and leaves no bound behind for the
        // answer written on the same stream.
        let mut f = Vec::new();
        let req = Envelope {
            msg: Request::Get(Key::digest(b"k")),
            progress: None,
        };
        block_on(NodeCodec(Codec::new(64 << 20)).write_request(&PROTOCOL, &mut f, req)).unwrap();
        let got = c.read_request(&PROTOCOL, &mut &f[..]).await.unwrap();
        assert!(matches!(got.msg, Request::Get(_)), "{:?}", got.msg);
        assert!(c.0.progress.is_none());
    }
}
