//! Length-prefixed framing: the one place where a length goes on the wire before a message.
//!
//! A frame is a `u32` little-endian length and that many bytes. It is used on the local socket
//! ([`crate::ipc`], blocking on the client side, async on the server side) and between peers
//! ([`crate::protocol`], whose `/distc/1.1.0` framing adds a body length and reads the body with
//! [`read_body`]).
//!
//! Every length is checked against a limit before anything is read, and buffers grow only as
//! bytes arrive (at most twice what was received), so a peer that claims a large length and
//! sends nothing costs nothing.

use std::io::{self, Read, Write};

use futures::prelude::*;

/// Bytes read before a buffer grows past them: the first step of a growing read.
pub const FIRST_STEP: usize = 64 * 1024;

/// Bytes of an entry body read before its full length is reserved, and the step in which it
/// is read.
pub const BODY_STEP: usize = 1 << 20;

pub(crate) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Turns an end of input into an error that says what was cut short.
pub(crate) fn truncated(e: io::Error, what: &str, want: usize) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what} truncated: fewer than {want} bytes arrived"),
        )
    } else {
        e
    }
}

/// The length a prefix claims, refused when over `max`.
pub fn check_len(prefix: [u8; 4], max: usize) -> io::Result<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    Ok(len)
}

/// The prefix of a frame holding `body`.
pub fn prefix(body: &[u8]) -> io::Result<[u8; 4]> {
    u32::try_from(body.len())
        .map(u32::to_le_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))
}

/// The next size of a growing buffer that holds `filled` of `len` bytes.
fn next_step(filled: usize, len: usize) -> usize {
    filled.max(FIRST_STEP).saturating_mul(2).min(len)
}

/// Reads one frame from a blocking stream.
pub fn read_sync(r: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut p = [0u8; 4];
    r.read_exact(&mut p)?;
    let len = check_len(p, max)?;
    let mut buf = Vec::new();
    while buf.len() < len {
        let filled = buf.len();
        buf.resize(next_step(filled, len), 0);
        r.read_exact(&mut buf[filled..])
            .map_err(|e| truncated(e, "frame", len))?;
    }
    Ok(buf)
}

/// Writes one frame to a blocking stream (in one write, then flushes).
pub fn write_sync(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&prefix(body)?);
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads exactly `len` bytes (already checked against a limit) into a buffer that grows as
/// they arrive. `what` names them in a truncation error.
pub async fn read_growing<T: AsyncRead + Unpin>(
    io: &mut T,
    len: usize,
    what: &str,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    while buf.len() < len {
        let filled = buf.len();
        buf.resize(next_step(filled, len), 0);
        io.read_exact(&mut buf[filled..])
            .await
            .map_err(|e| truncated(e, what, len))?;
    }
    Ok(buf)
}

/// Reads one frame: length check first, then a buffer that grows only as bytes arrive.
pub async fn read<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut p = [0u8; 4];
    io.read_exact(&mut p).await?;
    let len = check_len(p, max)?;
    read_growing(io, len, "frame").await
}

/// Writes one frame and flushes.
pub async fn write<T: AsyncWrite + Unpin>(io: &mut T, body: &[u8]) -> io::Result<()> {
    io.write_all(&prefix(body)?).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// Reads an entry body of `len` bytes (already checked against the limit): the first
/// [`BODY_STEP`] bytes into a buffer of that size; only once they have arrived is the rest
/// reserved, and each step is zero-filled just before it is read into, so memory follows the
/// bytes received.
pub async fn read_body<T: AsyncRead + Unpin>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let oom = |_| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot reserve {len} bytes for an entry"),
        )
    };
    let mut buf = Vec::new();
    buf.try_reserve_exact(len.min(BODY_STEP)).map_err(oom)?;
    while buf.len() < len {
        let filled = buf.len();
        if filled >= BODY_STEP && buf.capacity() < len {
            buf.try_reserve_exact(len - filled).map_err(oom)?;
        }
        let next = filled.saturating_add(BODY_STEP).min(len);
        buf.resize(next, 0);
        io.read_exact(&mut buf[filled..next])
            .await
            .map_err(|e| truncated(e, "entry", len))?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn round_trip_sync_and_async() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut a = Vec::new();
        write_sync(&mut a, &body).unwrap();
        let mut b = Vec::new();
        block_on(write(&mut b, &body)).unwrap();
        assert_eq!(a, b, "both writers make the same frame");
        assert_eq!(read_sync(&mut &a[..], 1 << 20).unwrap(), body);
        assert_eq!(block_on(read(&mut &a[..], 1 << 20)).unwrap(), body);
    }

    #[test]
    fn frames_are_bounded() {
        let mut claim = (u32::MAX).to_le_bytes().to_vec();
        claim.extend_from_slice(&[0; 8]);
        let e = read_sync(&mut &claim[..], 1024).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = block_on(read(&mut &claim[..], 1024)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut short = 100u32.to_le_bytes().to_vec();
        short.extend_from_slice(&[0; 8]);
        let e = read_sync(&mut &short[..], 1024).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = block_on(read(&mut &short[..], 1024)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
