//! How long a transfer to or from a peer may take: timeouts that scale with the entry's size
//! and the throughput measured to that peer, so a large entry over a slow link is not
//! abandoned half way, while a peer that sends nothing is given up quickly.
//!
//! - [`transfer_timeout`]: `base + 3 × size / rate`, capped at [`MAX_TRANSFER`], where `rate`
//!   is the throughput measured to the peer ([`Throughput`]), or [`ASSUMED_RATE`] (1 MiB/s,
//!   about 8 Mbit/s) before anything was measured, and never below [`MIN_RATE`].
//! - [`Progress`]: what the codec has read of one response so far (when its header arrived,
//!   how large its body is), so that a get waits for the first byte only a short time and then
//!   for as long as the size it announced needs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// The rate assumed for a peer nothing was measured from yet: 1 MiB/s (about 8 Mbit/s).
pub const ASSUMED_RATE: f64 = (1 << 20) as f64;

/// The lowest rate a timeout is computed for (64 KiB/s), whatever was measured.
pub const MIN_RATE: f64 = (64 << 10) as f64;

/// How many times the time the size needs at the rate a transfer is given.
pub const SLACK: f64 = 3.0;

/// No transfer is given longer than this.
pub const MAX_TRANSFER: Duration = Duration::from_secs(3600);

/// Transfers smaller than this say little about a link's throughput (latency dominates).
pub const MEASURE_MIN_BYTES: u64 = 256 << 10;

/// The time a transfer of `size` bytes at `rate` bytes per second (None: not measured) is
/// given: `base + SLACK × size / rate`, the rate at least [`MIN_RATE`], capped at
/// [`MAX_TRANSFER`] (and never below `base`).
pub fn transfer_timeout(base: Duration, size: u64, rate: Option<f64>) -> Duration {
    let rate = rate.unwrap_or(ASSUMED_RATE).max(MIN_RATE);
    let need =
        Duration::from_secs_f64((SLACK * size as f64 / rate).min(MAX_TRANSFER.as_secs_f64()));
    (base + need).min(MAX_TRANSFER.max(base))
}

/// Measured throughput per peer: an exponentially weighted mean of the rates of recent
/// transfers of at least [`MEASURE_MIN_BYTES`].
#[derive(Debug, Default)]
pub struct Throughput {
    rates: Mutex<HashMap<PeerId, f64>>,
}

impl Throughput {
    /// Records a transfer of `bytes` to or from `peer` that took `elapsed`.
    pub fn record(&self, peer: PeerId, bytes: u64, elapsed: Duration) {
        if bytes < MEASURE_MIN_BYTES || elapsed.is_zero() {
            return;
        }
        let rate = bytes as f64 / elapsed.as_secs_f64();
        if let Ok(mut m) = self.rates.lock() {
            let r = m.entry(peer).or_insert(rate);
            *r = 0.7 * *r + 0.3 * rate;
            if m.len() > 4096 {
                m.clear();
            }
        }
    }

    /// The rate measured to `peer`, in bytes per second.
    pub fn rate(&self, peer: &PeerId) -> Option<f64> {
        self.rates.lock().ok().and_then(|m| m.get(peer).copied())
    }
}

/// How long the codec may wait for what has not arrived of one exchange, past the deadline
/// the caller computes: the caller gives up first, and says why.
pub const CODEC_GRACE: Duration = Duration::from_secs(1);

/// What has arrived of one response, written by the codec as it reads; and, once
/// [`Progress::bound`], how long the codec itself waits for it, so that a stream whose caller
/// gave up (a hedge won, the compile went on) ends instead of holding its connection for
/// libp2p's hour-long limit.
#[derive(Debug, Default)]
pub struct Progress {
    header: OnceLock<Instant>,
    body_len: AtomicU64,
    /// Time to the header, and the rate the body's time is computed for.
    limit: OnceLock<(Duration, Option<f64>)>,
}

impl Progress {
    /// Bounds the exchange: `first_byte` for the answer to start (and for the request to be
    /// written), then what the size it announces needs at `rate` ([`transfer_timeout`]),
    /// plus [`CODEC_GRACE`]. Only the first call counts.
    pub fn bound(&self, first_byte: Duration, rate: Option<f64>) {
        let _ = self.limit.set((first_byte, rate));
    }

    /// The time the exchange's stream may wait for `first_byte` (writing the request,
    /// waiting for the answer's header), if bounded.
    pub fn first_byte(&self) -> Option<Duration> {
        self.limit.get().map(|(f, _)| *f + CODEC_GRACE)
    }

    /// When the codec, reading an answer since `start`, gives up (None: not bounded): the
    /// first-byte limit until the header has arrived, then the time its size needs.
    pub fn deadline(&self, start: Instant) -> Option<Instant> {
        let (first_byte, rate) = *self.limit.get()?;
        let header = start + first_byte + CODEC_GRACE;
        Some(match self.started() {
            None => header,
            Some((at, len)) => {
                header.max(at + transfer_timeout(first_byte, len, rate) + CODEC_GRACE)
            }
        })
    }

    /// The response's header has arrived, announcing a body of `body_len` bytes.
    pub fn header(&self, body_len: u64) {
        self.body_len.store(body_len, Ordering::Relaxed);
        let _ = self.header.set(Instant::now());
    }

    /// When the header arrived and the body length it announced.
    pub fn started(&self) -> Option<(Instant, u64)> {
        self.header
            .get()
            .map(|t| (*t, self.body_len.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn a_large_entry_over_a_slow_link_gets_the_time_it_needs() {
        let base = Duration::from_millis(200);
        // 200 MB over 20 Mbit/s (2.5 MB/s) takes 80 s: measured, it is given 3 × that.
        let t = transfer_timeout(base, 200 * MB, Some(2.5e6));
        assert!(t >= Duration::from_secs(240), "{t:?}");
        assert!(t <= Duration::from_secs(241), "{t:?}");
        // Not measured yet: 1 MiB/s is assumed, still more than the 80 s it needs.
        let t = transfer_timeout(base, 200 * MB, None);
        assert!(
            t > Duration::from_secs(500) && t < Duration::from_secs(600),
            "{t:?}"
        );
        // A fast link: a 50 MB entry at 250 MB/s is given 0.8 s on top of the base.
        let t = transfer_timeout(base, 50 * MB, Some(250e6));
        assert_eq!(t.as_millis(), 800);
        // Small entries get the base; the time grows with the size, and is bounded.
        assert_eq!(transfer_timeout(base, 0, None), base);
        let mut last = Duration::ZERO;
        for size in [1, MB, 10 * MB, 100 * MB, 1000 * MB] {
            let t = transfer_timeout(base, size, Some(1e6));
            assert!(t > last);
            last = t;
        }
        // A measured rate below the floor counts as the floor; nothing exceeds the cap.
        assert_eq!(
            transfer_timeout(base, MB, Some(1.0)),
            transfer_timeout(base, MB, Some(MIN_RATE))
        );
        assert_eq!(transfer_timeout(base, u64::MAX, Some(1.0)), MAX_TRANSFER);
    }

    #[test]
    fn throughput_is_a_mean_of_large_transfers_per_peer() {
        let t = Throughput::default();
        let p = PeerId::random();
        assert_eq!(t.rate(&p), None);
        t.record(p, 1000, Duration::from_millis(1));
        assert_eq!(
            t.rate(&p),
            None,
            "a small transfer measures latency, not throughput"
        );
        t.record(p, 10 * MB, Duration::from_secs(1));
        assert_eq!(t.rate(&p), Some(10e6));
        t.record(p, 10 * MB, Duration::from_secs(10));
        let r = t.rate(&p).unwrap_or(0.0);
        assert!((r - 7.3e6).abs() < 1.0, "{r}");
        assert_eq!(t.rate(&PeerId::random()), None);
    }
}
