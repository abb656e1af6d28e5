//! libp2p private networks ("pnet"), wire-compatible with `libp2p::pnet`, with a faster cipher.
//!
//! The protocol is libp2p's: right after TCP connects, each side sends a random 24-byte nonce,
//! then everything each side writes is XSalsa20-encrypted with the mesh key and its own nonce.
//! A peer with another key (or none) produces garbage and the Noise handshake that follows
//! fails. `libp2p::pnet` generates the keystream one 64-byte block at a time in portable code,
//! which on loopback costs more CPU than the rest of a transfer together; here four blocks are
//! computed side by side (the compiler turns the lanes into SIMD) and writes are encrypted in
//! chunks of up to [`WRITE_CHUNK`] bytes. The tests check the keystream against the reference
//! implementation and a handshake against `libp2p::pnet` itself.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::prelude::*;

/// Nonce length (XSalsa20).
pub const NONCE_SIZE: usize = 24;
/// Most bytes taken from one `poll_write` (encrypted into the write buffer at once).
pub const WRITE_CHUNK: usize = 64 * 1024;

/// Keystream blocks computed per refill.
const LANES: usize = 8;
const BATCH: usize = 64 * LANES;
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

#[inline(always)]
fn qr(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[b] ^= x[a].wrapping_add(x[d]).rotate_left(7);
    x[c] ^= x[b].wrapping_add(x[a]).rotate_left(9);
    x[d] ^= x[c].wrapping_add(x[b]).rotate_left(13);
    x[a] ^= x[d].wrapping_add(x[c]).rotate_left(18);
}

/// Salsa20's 20 rounds (10 double rounds) on one state, without the final addition.
fn rounds(x: &mut [u32; 16]) {
    for _ in 0..10 {
        qr(x, 0, 4, 8, 12);
        qr(x, 5, 9, 13, 1);
        qr(x, 10, 14, 2, 6);
        qr(x, 15, 3, 7, 11);
        qr(x, 0, 1, 2, 3);
        qr(x, 5, 6, 7, 4);
        qr(x, 10, 11, 8, 9);
        qr(x, 15, 12, 13, 14);
    }
}

/// `n` keystream blocks from block `counter` on, one at a time (portable fallback).
fn blocks_scalar(state: &[u32; 16], counter: u64, out: &mut [u8]) {
    for (i, block) in out.chunks_exact_mut(64).enumerate() {
        let c = counter.wrapping_add(i as u64);
        let mut input = *state;
        input[8] = c as u32;
        input[9] = (c >> 32) as u32;
        let mut x = input;
        rounds(&mut x);
        for (w, chunk) in block.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&x[w].wrapping_add(input[w]).to_le_bytes());
        }
    }
}

/// Writes lane `l` of word `w` as bytes `l * 64 + w * 4..` (block `l`, word `w`).
#[cfg(target_arch = "x86_64")]
fn scatter<const N: usize>(words: &[[u32; N]; 16], out: &mut [u8]) {
    for (w, lanes) in words.iter().enumerate() {
        for (l, v) in lanes.iter().enumerate() {
            let at = l * 64 + w * 4;
            out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Salsa20 on several blocks side by side: each vector holds one state word of every block.
#[cfg(target_arch = "x86_64")]
macro_rules! salsa_lanes {
    ($name:ident, $feature:literal, $ty:ty, $n:literal, $set1:ident, $add:ident, $xor:ident,
     $or:ident, $sll:ident, $srl:ident, $store:ident) => {
        #[target_feature(enable = $feature)]
        fn $name(state: &[u32; 16], counter: u64, out: &mut [u8]) {
            use std::arch::x86_64::*;
            let mut x: [$ty; 16] = [$set1(0); 16];
            for (v, s) in x.iter_mut().zip(state) {
                *v = $set1(*s as i32);
            }
            let mut lo = [0u32; $n];
            let mut hi = [0u32; $n];
            for l in 0..$n {
                let c = counter.wrapping_add(l as u64);
                lo[l] = c as u32;
                hi[l] = (c >> 32) as u32;
            }
            let load = |a: &[u32; $n]| -> $ty {
                let mut v = $set1(0);
                // SAFETY: `a` is exactly one vector wide; unaligned load of initialised memory.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        a.as_ptr().cast::<u8>(),
                        (&mut v as *mut $ty).cast::<u8>(),
                        std::mem::size_of::<$ty>(),
                    );
                }
                v
            };
            x[8] = load(&lo);
            x[9] = load(&hi);
            let input = x;
            macro_rules! rotl {
                ($v:expr, $r:literal, $rr:literal) => {
                    $or($sll::<$r>($v), $srl::<$rr>($v))
                };
            }
            macro_rules! qr {
                ($a:literal, $b:literal, $c:literal, $d:literal) => {
                    x[$b] = $xor(x[$b], rotl!($add(x[$a], x[$d]), 7, 25));
                    x[$c] = $xor(x[$c], rotl!($add(x[$b], x[$a]), 9, 23));
                    x[$d] = $xor(x[$d], rotl!($add(x[$c], x[$b]), 13, 19));
                    x[$a] = $xor(x[$a], rotl!($add(x[$d], x[$c]), 18, 14));
                };
            }
            for _ in 0..10 {
                qr!(0, 4, 8, 12);
                qr!(5, 9, 13, 1);
                qr!(10, 14, 2, 6);
                qr!(15, 3, 7, 11);
                qr!(0, 1, 2, 3);
                qr!(5, 6, 7, 4);
                qr!(10, 11, 8, 9);
                qr!(15, 12, 13, 14);
            }
            let mut words = [[0u32; $n]; 16];
            for (w, lanes) in words.iter_mut().enumerate() {
                let v = $add(x[w], input[w]);
                // SAFETY: `lanes` is exactly one vector wide; unaligned store.
                unsafe { $store(lanes.as_mut_ptr().cast(), v) };
            }
            scatter(&words, out);
        }
    };
}

#[cfg(target_arch = "x86_64")]
salsa_lanes!(
    blocks_avx2,
    "avx2",
    __m256i,
    8,
    _mm256_set1_epi32,
    _mm256_add_epi32,
    _mm256_xor_si256,
    _mm256_or_si256,
    _mm256_slli_epi32,
    _mm256_srli_epi32,
    _mm256_storeu_si256
);
#[cfg(target_arch = "x86_64")]
salsa_lanes!(
    blocks_sse2,
    "sse2",
    __m128i,
    4,
    _mm_set1_epi32,
    _mm_add_epi32,
    _mm_xor_si128,
    _mm_or_si128,
    _mm_slli_epi32,
    _mm_srli_epi32,
    _mm_storeu_si128
);

#[derive(Clone, Copy)]
enum Engine {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[allow(dead_code)]
    Scalar,
}

impl Engine {
    fn detect() -> Engine {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Engine::Avx2;
            }
            Engine::Sse2
        }
        #[cfg(not(target_arch = "x86_64"))]
        Engine::Scalar
    }

    /// [`LANES`] keystream blocks from block `counter` on into `out` (`BATCH` bytes).
    fn blocks(self, state: &[u32; 16], counter: u64, out: &mut [u8; BATCH]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only when the CPU reports AVX2.
            Engine::Avx2 => unsafe { blocks_avx2(state, counter, out) },
            #[cfg(target_arch = "x86_64")]
            Engine::Sse2 => {
                let (a, b) = out.split_at_mut(BATCH / 2);
                // SAFETY: SSE2 is part of every x86_64 CPU.
                unsafe {
                    blocks_sse2(state, counter, a);
                    blocks_sse2(state, counter.wrapping_add(4), b);
                }
            }
            Engine::Scalar => blocks_scalar(state, counter, out),
        }
    }
}

fn read_u32s<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut out = [0u32; N];
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    out
}

/// The XSalsa20 stream cipher (20 rounds), keystream generated [`LANES`] blocks at a time.
#[derive(Clone)]
pub struct XSalsa20 {
    /// Salsa20 input state for the derived subkey; words 8 and 9 (the counter) are set per block.
    state: [u32; 16],
    counter: u64,
    ks: [u8; BATCH],
    /// Bytes of `ks` already used.
    pos: usize,
    engine: Engine,
}

impl XSalsa20 {
    pub fn new(key: &[u8; 32], nonce: &[u8; NONCE_SIZE]) -> XSalsa20 {
        let k: [u32; 8] = read_u32s(key);
        let n: [u32; 6] = read_u32s(nonce);
        // HSalsa20(key, nonce[..16]) gives the subkey.
        let mut h = [
            SIGMA[0], k[0], k[1], k[2], k[3], SIGMA[1], n[0], n[1], n[2], n[3], SIGMA[2], k[4],
            k[5], k[6], k[7], SIGMA[3],
        ];
        rounds(&mut h);
        let sub = [h[0], h[5], h[10], h[15], h[6], h[7], h[8], h[9]];
        let state = [
            SIGMA[0], sub[0], sub[1], sub[2], sub[3], SIGMA[1], n[4], n[5], 0, 0, SIGMA[2], sub[4],
            sub[5], sub[6], sub[7], SIGMA[3],
        ];
        XSalsa20 {
            state,
            counter: 0,
            ks: [0; BATCH],
            pos: BATCH,
            engine: Engine::detect(),
        }
    }

    fn refill(&mut self) {
        self.engine.blocks(&self.state, self.counter, &mut self.ks);
        self.counter = self.counter.wrapping_add(LANES as u64);
        self.pos = 0;
    }

    /// Encrypts or decrypts `data` in place.
    pub fn apply_keystream(&mut self, mut data: &mut [u8]) {
        while !data.is_empty() {
            if self.pos == BATCH {
                self.refill();
            }
            let n = (BATCH - self.pos).min(data.len());
            let (head, rest) = data.split_at_mut(n);
            for (d, k) in head.iter_mut().zip(&self.ks[self.pos..self.pos + n]) {
                *d ^= k;
            }
            self.pos += n;
            data = rest;
        }
    }
}

/// A connection after the pnet handshake: reads are decrypted, writes encrypted.
pub struct PnetStream<S> {
    inner: S,
    read_cipher: XSalsa20,
    write_cipher: XSalsa20,
    /// Encrypted bytes accepted from the caller but not yet written to `inner`.
    wbuf: Vec<u8>,
    wpos: usize,
}

fn random_nonce() -> io::Result<[u8; NONCE_SIZE]> {
    let mut n = [0u8; NONCE_SIZE];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// Runs the pnet handshake on a fresh connection (both sides do the same thing).
pub async fn handshake<S>(key: [u8; 32], mut socket: S) -> io::Result<PnetStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let local = random_nonce()?;
    socket.write_all(&local).await?;
    socket.flush().await?;
    let mut remote = [0u8; NONCE_SIZE];
    socket.read_exact(&mut remote).await?;
    Ok(PnetStream {
        inner: socket,
        read_cipher: XSalsa20::new(&key, &remote),
        write_cipher: XSalsa20::new(&key, &local),
        wbuf: Vec::new(),
        wpos: 0,
    })
}

impl<S: AsyncWrite + Unpin> PnetStream<S> {
    /// Writes out the buffered bytes; `Ready(Ok)` means the buffer is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "connection accepted no more bytes",
                    )));
                }
                Poll::Ready(Ok(n)) => self.wpos += n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PnetStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read_cipher.apply_keystream(&mut buf[..n]);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PnetStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(WRITE_CHUNK);
        this.wbuf.extend_from_slice(&buf[..n]);
        this.write_cipher.apply_keystream(&mut this.wbuf);
        // Start sending now; if the socket is full the bytes wait in the buffer (the caller
        // flushes eventually, and the waker is registered).
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salsa20::cipher::{KeyIvInit, StreamCipher};

    fn reference(key: &[u8; 32], nonce: &[u8; 24], data: &mut [u8]) {
        let mut c = salsa20::XSalsa20::new(key.into(), nonce.into());
        c.apply_keystream(data);
    }

    #[test]
    fn keystream_matches_the_reference_in_any_piece_sizes() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 7 + 1) as u8);
        let nonce: [u8; 24] = std::array::from_fn(|i| (i * 13 + 5) as u8);
        let plain: Vec<u8> = (0..5000u32).map(|i| (i * 31) as u8).collect();
        let mut want = plain.clone();
        reference(&key, &nonce, &mut want);
        for piece in [1usize, 3, 63, 64, 65, 255, 256, 257, 1000, 5000] {
            let mut c = XSalsa20::new(&key, &nonce);
            let mut got = plain.clone();
            for chunk in got.chunks_mut(piece) {
                c.apply_keystream(chunk);
            }
            assert_eq!(got, want, "piece size {piece}");
        }
    }

    #[test]
    fn every_engine_matches_the_scalar_blocks() {
        let state: [u32; 16] = std::array::from_fn(|i| (i as u32).wrapping_mul(0x9e37_79b9));
        let start = (1u64 << 32) - 3;
        let mut want = [0u8; BATCH];
        blocks_scalar(&state, start, &mut want);
        let mut engines = vec![Engine::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            engines.push(Engine::Sse2);
            if std::arch::is_x86_feature_detected!("avx2") {
                engines.push(Engine::Avx2);
            }
        }
        for e in engines {
            let mut got = [0u8; BATCH];
            e.blocks(&state, start, &mut got);
            assert!(got == want);
        }
    }

    #[test]
    fn keystream_matches_across_the_32_bit_counter() {
        // Blocks 2^32 - 2 .. 2^32 + 2: the counter's high word must carry.
        let key = [9u8; 32];
        let nonce = [4u8; 24];
        let mut ours = XSalsa20::new(&key, &nonce);
        ours.counter = (1u64 << 32) - 2;
        let mut got = vec![0u8; 64 * 8];
        ours.apply_keystream(&mut got);
        let mut want = vec![0u8; 64 * 8];
        let mut r = salsa20::XSalsa20::new((&key).into(), (&nonce).into());
        use salsa20::cipher::StreamCipherSeek;
        r.seek(((1u64 << 32) - 2) * 64);
        r.apply_keystream(&mut want);
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn talks_to_libp2p_pnet() {
        use libp2p::pnet::{PnetConfig, PreSharedKey};
        use libp2p::tcp::tokio::TcpStream;
        let key = [0x5au8; 32];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let stock = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = PnetConfig::new(PreSharedKey::new(key))
                .handshake(TcpStream(s))
                .await
                .unwrap();
            let mut got = vec![0u8; expect.len()];
            s.read_exact(&mut got).await.unwrap();
            assert!(got == expect, "stock pnet read other bytes than were sent");
            s.write_all(&got).await.unwrap();
            s.flush().await.unwrap();
        });
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = handshake(key, TcpStream(s)).await.unwrap();
        s.write_all(&data).await.unwrap();
        s.flush().await.unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await.unwrap();
        assert!(back == data, "echo through stock pnet differs");
        stock.await.unwrap();
    }
}
