//! Mesh policy: what this peer does with the node's two primitives (a request to one peer,
//! and the latest view of members and ring). The node ([`crate::node`]) is the mechanism — it
//! owns the libp2p swarm and knows nothing of whom to ask; this module decides it: get an
//! entry from its owners, replicate a new one, repair after the ring changed, flush, and how
//! an inbound request is answered from the local store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::key::Key;
use crate::membership::Liveness;
use crate::node::{Node, RequestError};
use crate::protocol::{self, Bytes, Request, Response};
use crate::ring::Ring;
use crate::transfer;

/// The least time a get gives a peer to start answering: it reads and checks a large entry
/// from its disk before the first byte leaves (about 100 MB per 100 ms). With hedging, this
/// bounds only how long a peer that never answers holds its place, not what it costs.
const FIRST_BYTE_MIN: Duration = Duration::from_secs(5);

/// What a put is given on top of the time its size needs (the receiver checks and writes it).
const PUT_BASE: Duration = Duration::from_secs(5);
use crate::store::{Store, StoreError};
use crate::trust::{OutgoingError, Trust};

/// The answer to an inbound request that needs the disk; runs on a blocking thread.
pub(crate) fn serve(
    store: &Store,
    trust: &Trust,
    request: Request,
    max_entry_size: u64,
) -> Response {
    match request {
        // Checked before serving: a corrupt entry of our own is removed, never sent again; one
        // made here is signed as it leaves; one whose producer is no longer trusted is dropped.
        Request::Get(key) => match store.get_checked(&key) {
            Ok(Some(e)) => match outgoing(store, trust, &key, e.raw) {
                Some(raw) => Response::Entry(Some(Bytes(raw))),
                None => Response::Entry(None),
            },
            Ok(None) => Response::Entry(None),
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::warn!(%key, "{e}");
                Response::Entry(None)
            }
            Err(e) => Response::Error(e.to_string()),
        },
        Request::Put { key, entry } => {
            if store.contains(&key) {
                return Response::Stored;
            }
            if let Err(e) = Store::verify_raw(&entry.0, &key, max_entry_size) {
                tracing::warn!(%key, "rejected entry from the mesh: {e}");
                return Response::Error(e.to_string());
            }
            if let Err(e) = trust.incoming(&entry.0, &key) {
                tracing::warn!(%key, "refused entry from the mesh: {e}");
                return Response::Error(e.to_string());
            }
            match store.put_raw(&key, &entry.0) {
                Ok(_) => Response::Stored,
                Err(e) => Response::Error(e.to_string()),
            }
        }
        Request::Offer(keys) => Response::Want(
            keys.into_iter()
                .take(protocol::MAX_OFFER)
                .filter(|k| !store.contains(k))
                .collect(),
        ),
        Request::Flush => match store.clear() {
            Ok(u) => Response::Flushed(u),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::Gossip(_) => Response::Error("gossip is served by the event loop".into()),
    }
}

/// A stored entry as this peer sends it ([`Trust::outgoing`]); `None` when it must not leave
/// (its producer is no longer trusted: it is removed here too).
pub(crate) fn outgoing(store: &Store, trust: &Trust, key: &Key, raw: Vec<u8>) -> Option<Vec<u8>> {
    match trust.outgoing(raw, key) {
        Ok(raw) => Some(raw),
        Err(e @ OutgoingError::Untrusted(_)) => {
            tracing::info!(%key, "{e}: removed");
            let _ = store.remove(key);
            None
        }
        Err(e) => {
            tracing::warn!(%key, "cannot send entry: {e}");
            None
        }
    }
}

/// The bounds of a handoff ([`Node::hand_off`]): at most `timeout` in all, and at most `rate`
/// bytes per second of entries (0 = no limit), so that a leaving laptop does not saturate a
/// slow link for the others.
#[derive(Debug, Clone, Copy)]
pub struct Handoff {
    pub timeout: Duration,
    pub rate: u64,
}

impl Handoff {
    /// No time limit of its own, no pacing.
    pub fn unlimited() -> Handoff {
        Handoff {
            timeout: Duration::from_secs(365 * 24 * 3600),
            rate: 0,
        }
    }
}

/// What a handoff did.
#[derive(Debug, Clone, Default)]
pub struct HandoffReport {
    /// Keys in the local store.
    pub keys: usize,
    /// Keys offered to owners (a key counts once per owner).
    pub offered: usize,
    /// Entries the owners lacked and stored.
    pub sent: usize,
    pub bytes: u64,
    /// Owners offered to.
    pub owners: usize,
    /// Offers and puts that failed.
    pub failed: usize,
    /// The time limit ended it before every key was offered.
    pub unfinished: bool,
}

/// Paces sends to a rate in bytes per second: after each send, sleeps until the bytes sent so
/// far are not ahead of the rate (never past the deadline).
struct Pacer {
    rate: u64,
    started: Instant,
    bytes: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    async fn sent(&mut self, bytes: u64, deadline: Instant) {
        self.bytes += bytes;
        if self.rate == 0 {
            return;
        }
        let due = self.started + Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let until = due.min(deadline);
        if until > Instant::now() {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// What happened to a key pushed to its owners.
#[derive(Debug, Clone, Default)]
pub struct Replicated {
    /// Peers that now hold it (including this one when it is an owner).
    pub holders: Vec<PeerId>,
}

/// Why a received entry is not used.
enum Bad {
    Corrupt(StoreError),
    Refused(crate::trust::Refusal),
}

impl Node {
    /// Fetches the raw entry for `key` from the mesh: the ring owners in order, then the next
    /// peers on the ring, until one has it or R+1 peers have answered "no". Hedged: when the
    /// peer asked has not started answering within the hedge delay, the next one is asked too
    /// (at most two in flight), and the first good answer wins — so a stalled owner costs the
    /// hedge delay, not a timeout. An answer that has started is given the time its size needs
    /// ([`Node::request_sized`]). Entries that fail verification are discarded and the next
    /// peer is asked. Owners that missed while a later peer hit get a copy (read repair).
    pub async fn get(&self, key: &Key) -> Option<Vec<u8>> {
        use futures::StreamExt;
        use futures::stream::FuturesUnordered;

        let view = self.view();
        let want_answers = view.replication + 1;
        let mut order = view.ring.owners(key, usize::MAX).into_iter().enumerate();
        let mut answered = 0usize;
        let mut missed: Vec<PeerId> = Vec::new();
        let mut inflight = FuturesUnordered::new();
        // The progress of each request in flight, to tell a stalled peer from a slow transfer.
        let mut watching: Vec<(usize, Arc<transfer::Progress>)> = Vec::new();
        let mut next_hedge = Instant::now() + self.hedge_delay;
        loop {
            // Ask one more peer: the next routable one in ring order (this peer's own store
            // counts as an answer; the wrapper has looked there).
            let mut launch = |answered: &mut usize,
                              inflight: &mut FuturesUnordered<_>,
                              watching: &mut Vec<(usize, Arc<transfer::Progress>)>|
             -> bool {
                for (rank, peer) in order.by_ref() {
                    if *answered >= want_answers {
                        return false;
                    }
                    if peer == view.me {
                        *answered += 1;
                        continue;
                    }
                    if !view.routable(&peer) {
                        continue;
                    }
                    let progress = Arc::new(transfer::Progress::default());
                    watching.push((rank, progress.clone()));
                    let node = self.clone();
                    let key = *key;
                    inflight.push(async move {
                        let first_byte = node.get_timeout.max(FIRST_BYTE_MIN);
                        let r = node
                            .request_sized(peer, Request::Get(key), first_byte, progress)
                            .await;
                        (rank, peer, r)
                    });
                    return true;
                }
                false
            };
            if inflight.is_empty() {
                if answered >= want_answers || !launch(&mut answered, &mut inflight, &mut watching)
                {
                    return None;
                }
                next_hedge = Instant::now() + self.hedge_delay;
                continue;
            }
            let done = tokio::select! {
                d = inflight.next() => d,
                _ = tokio::time::sleep_until(next_hedge.into()) => {
                    // Hedge only against peers that have not started answering (a transfer under
                    // way is not duplicated), and one at a time: at most two requests in flight.
                    if inflight.len() < 2 && watching.iter().all(|(_, p)| p.started().is_none()) {
                        let before = inflight.len();
                        launch(&mut answered, &mut inflight, &mut watching);
                        if inflight.len() > before {
                            tracing::debug!(%key, "no answer within the hedge delay: asking the next peer too");
                        }
                    }
                    next_hedge = Instant::now() + self.hedge_delay;
                    continue;
                }
            };
            let Some((rank, peer, result)) = done else {
                continue;
            };
            watching.retain(|(r, _)| *r != rank);
            match result {
                Ok(Response::Entry(Some(entry))) => match self.check(peer, key, entry).await {
                    Some(entry) => {
                        tracing::debug!(%peer, %key, rank, "remote hit");
                        if !missed.is_empty() {
                            let node = self.clone();
                            let entry = entry.clone();
                            let key = *key;
                            tokio::spawn(async move {
                                for p in missed {
                                    let _ = node.put_to(p, key, entry.clone()).await;
                                }
                            });
                        }
                        return Some(entry.0);
                    }
                    None => answered += 1,
                },
                Ok(Response::Entry(None)) => {
                    answered += 1;
                    if rank < view.replication {
                        missed.push(peer);
                    }
                }
                Ok(other) => {
                    tracing::debug!(%peer, "unexpected answer to get: {other:?}");
                    answered += 1;
                }
                Err(e) => tracing::debug!(%peer, %key, "get failed: {e}"),
            }
            // An answer without the entry: ask the next peer at once.
            if answered < want_answers && launch(&mut answered, &mut inflight, &mut watching) {
                next_hedge = Instant::now() + self.hedge_delay;
            }
        }
    }

    /// Checks an entry `peer` sent for `key` (digest, key, signature, trust); `None` (logged
    /// and counted) when it is not the entry asked for.
    async fn check(&self, peer: PeerId, key: &Key, entry: Bytes) -> Option<Bytes> {
        // Decompressing and hashing a large entry takes milliseconds: off the async workers,
        // which also run the connections.
        let max = self.max_entry_size;
        let k = *key;
        let trust = self.trust.clone();
        let (entry, verdict) = match tokio::task::spawn_blocking(move || {
            let verdict = match Store::verify_raw(&entry.0, &k, max) {
                Ok(_) => trust.incoming(&entry.0, &k).map_err(Bad::Refused),
                Err(e) => Err(Bad::Corrupt(e)),
            };
            (entry, verdict)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%key, "entry check did not finish: {e}");
                return None;
            }
        };
        match verdict {
            Ok(_) => Some(entry),
            Err(Bad::Corrupt(e)) => {
                // A wrong answer (another key's entry, or a corrupt one): that peer is no
                // source for this key; the next one is asked.
                tracing::warn!(%peer, %key, "peer sent a bad entry, asking the next one: {e}");
                self.bad_entries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
            Err(Bad::Refused(e)) => {
                // Unsigned, forged or from a producer not trusted here (counted by the trust
                // module): routed around like a wrong answer.
                tracing::warn!(%peer, %key, "refused the entry a peer sent, asking the next one: {e}");
                None
            }
        }
    }

    /// The time a transfer of `size` bytes to or from `peer` is given: the base plus what its
    /// size needs at the throughput measured to that peer ([`transfer::transfer_timeout`]).
    pub fn transfer_timeout(&self, peer: &PeerId, size: u64) -> Duration {
        transfer::transfer_timeout(PUT_BASE, size, self.throughput.rate(peer))
    }

    async fn put_to(&self, peer: PeerId, key: Key, entry: Bytes) -> Result<(), RequestError> {
        let len = entry.0.len() as u64;
        let started = Instant::now();
        let timeout = self.transfer_timeout(&peer, len);
        match self
            .request(peer, Request::Put { key, entry }, timeout)
            .await?
        {
            Response::Stored => {
                self.throughput.record(peer, len, started.elapsed());
                Ok(())
            }
            Response::Error(e) => Err(RequestError::Failed(e)),
            other => Err(RequestError::Failed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Pushes the local entry for `key` to its R owners, walking on along the ring past
    /// owners that cannot be reached so that R peers hold it.
    pub async fn replicate(&self, key: &Key) -> Replicated {
        let mut out = Replicated::default();
        let (store, trust) = (self.store.clone(), self.trust.clone());
        let k = *key;
        let entry = match tokio::task::spawn_blocking(move || {
            store
                .get_raw(&k)
                .map(|e| e.and_then(|e| outgoing(&store, &trust, &k, e)))
        })
        .await
        {
            Ok(Ok(Some(e))) => Bytes(e),
            Ok(Ok(None)) => return out,
            Ok(Err(e)) => {
                tracing::warn!(%key, "cannot read entry to replicate: {e}");
                return out;
            }
            Err(_) => return out,
        };
        if entry.0.len() as u64 > self.max_entry_size + protocol::FRAME_OVERHEAD as u64 {
            tracing::info!(%key, size = entry.0.len(), "entry larger than max_entry_size: kept local");
            return out;
        }
        let view = self.view();
        for peer in view.ring.owners(key, usize::MAX) {
            if out.holders.len() >= view.replication {
                break;
            }
            if peer == view.me {
                out.holders.push(peer);
                continue;
            }
            if !view.routable(&peer) {
                continue;
            }
            match self.put_to(peer, *key, entry.clone()).await {
                Ok(()) => out.holders.push(peer),
                Err(e) => tracing::debug!(%peer, %key, "replication failed: {e}"),
            }
        }
        out
    }

    /// Brings every key this peer holds to its current owners (after a join or a leave):
    /// offers the keys, sends those the owner lacks, paced to [`NodeConfig::repair_rate`]
    /// bytes per second. Returns the number of entries sent.
    ///
    /// [`NodeConfig::repair_rate`]: crate::node::NodeConfig::repair_rate
    pub async fn repair(&self) -> usize {
        let view = self.view();
        let limits = Handoff {
            rate: self.repair_rate,
            ..Handoff::unlimited()
        };
        let r = self.push_to_owners(&view.ring, &limits, false).await;
        if r.sent > 0 {
            tracing::info!(sent = r.sent, "repair: entries handed to their owners");
        }
        r.sent
    }

    /// A graceful leave's handoff: every key this peer holds is offered to its owners on the
    /// ring *without* this peer (the owners it will have once the leave is known), and the
    /// entries they lack are sent, within `limits` (time, bytes per second), with progress in
    /// the log. Run it while still a member, before [`Node::leave`], so that gets keep being
    /// served meanwhile.
    pub async fn hand_off(&self, limits: &Handoff) -> HandoffReport {
        let view = self.view();
        let after = view.ring.without(&view.me);
        let started = Instant::now();
        tracing::info!(
            members = after.len(),
            timeout_secs = limits.timeout.as_secs(),
            "leaving: handing entries to their new owners"
        );
        let r = self.push_to_owners(&after, limits, true).await;
        tracing::info!(
            keys = r.keys,
            offered = r.offered,
            sent = r.sent,
            bytes = r.bytes,
            owners = r.owners,
            failed = r.failed,
            finished = !r.unfinished,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "handoff {}",
            if r.unfinished {
                "stopped at its time limit"
            } else {
                "done"
            }
        );
        r
    }

    /// Offers every key in the local store to its owners on `ring` (except this peer) and
    /// sends what each lacks, paced and bounded by `limits`.
    async fn push_to_owners(&self, ring: &Ring, limits: &Handoff, progress: bool) -> HandoffReport {
        let deadline = Instant::now() + limits.timeout;
        let mut report = HandoffReport::default();
        let store = self.store.clone();
        let keys = match tokio::task::spawn_blocking(move || store.keys()).await {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => {
                tracing::warn!("cannot list the store to hand entries on: {e}");
                return report;
            }
            Err(_) => return report,
        };
        report.keys = keys.len();
        let view = self.view();
        let mut by_owner: BTreeMap<PeerId, Vec<Key>> = BTreeMap::new();
        for k in keys {
            for o in ring.owners(&k, view.replication) {
                if o != view.me && view.routable(&o) {
                    by_owner.entry(o).or_default().push(k);
                }
            }
        }
        report.owners = by_owner.len();
        let mut pace = Pacer::new(limits.rate);
        let mut last_log = Instant::now();
        'owners: for (owner, keys) in by_owner {
            for chunk in keys.chunks(protocol::MAX_OFFER) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    report.unfinished = true;
                    break 'owners;
                }
                let want = match self
                    .request(
                        owner,
                        Request::Offer(chunk.to_vec()),
                        self.request_timeout.min(left),
                    )
                    .await
                {
                    Ok(Response::Want(w)) => w,
                    Ok(other) => {
                        tracing::debug!(%owner, "unexpected answer to an offer: {other:?}");
                        report.failed += 1;
                        continue 'owners;
                    }
                    Err(e) => {
                        tracing::debug!(%owner, "offer failed: {e}");
                        report.failed += 1;
                        continue 'owners;
                    }
                };
                report.offered += chunk.len();
                for k in want.into_iter().filter(|k| chunk.contains(k)) {
                    let (store, trust) = (self.store.clone(), self.trust.clone());
                    let entry = match tokio::task::spawn_blocking(move || {
                        store
                            .get_raw(&k)
                            .map(|e| e.and_then(|e| outgoing(&store, &trust, &k, e)))
                    })
                    .await
                    {
                        Ok(Ok(Some(e))) => e,
                        _ => continue,
                    };
                    let len = entry.len() as u64;
                    if Instant::now() >= deadline {
                        report.unfinished = true;
                        break 'owners;
                    }
                    // Given the time its size needs at the throughput measured to the owner.
                    match self.put_to(owner, k, Bytes(entry)).await {
                        Ok(()) => {
                            report.sent += 1;
                            report.bytes += len;
                        }
                        Err(e) => {
                            tracing::debug!(%owner, key = %k, "put failed: {e}");
                            report.failed += 1;
                        }
                    }
                    pace.sent(len, deadline).await;
                    if progress && last_log.elapsed() >= Duration::from_secs(2) {
                        last_log = Instant::now();
                        tracing::info!(
                            offered = report.offered,
                            sent = report.sent,
                            bytes = report.bytes,
                            "handoff in progress"
                        );
                    }
                }
            }
        }
        report
    }

    /// Runs [`Node::repair`] (a full scan of the local store) when the ring's member set has
    /// changed and then stayed the same for `settle`, and every `period`. Gossip updates the
    /// view every round; only a change of the ring's members counts. Ends when the node stops.
    pub async fn repair_loop(self, settle: Duration, period: Duration) {
        let poll = (settle / 4).max(Duration::from_millis(10));
        let mut done_for: Vec<PeerId> = vec![self.view().me];
        let mut seen = done_for.clone();
        let mut stable_since = Instant::now();
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(poll).await;
            if self.is_stopped() {
                return; // the event loop has stopped
            }
            let members = self.view().ring.members().to_vec();
            if members != seen {
                seen = members;
                stable_since = Instant::now();
                continue;
            }
            if stable_since.elapsed() < settle {
                continue;
            }
            if members != done_for || last.elapsed() >= period {
                self.repair().await;
                done_for = members;
                last = Instant::now();
            }
        }
    }

    /// Empties every reachable peer's store and this one's. Unreachable peers are listed.
    pub async fn flush_all(&self) -> crate::report::FlushReport {
        use crate::report::{FlushReport, FlushedPeer};
        let view = self.view();
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || store.clear()).await;
        let mut peers = vec![match local {
            Ok(Ok(u)) => FlushedPeer {
                id: view.me.to_string(),
                removed: Some((u.entries, u.bytes)),
                error: None,
            },
            Ok(Err(e)) => FlushedPeer {
                id: view.me.to_string(),
                removed: None,
                error: Some(e.to_string()),
            },
            Err(e) => FlushedPeer {
                id: view.me.to_string(),
                removed: None,
                error: Some(e.to_string()),
            },
        }];
        let futs = view.members.iter().map(|m| {
            let id = m.id;
            let down = m.liveness == Liveness::Down;
            async move {
                if down {
                    return FlushedPeer {
                        id: id.to_string(),
                        removed: None,
                        error: Some("peer is down".into()),
                    };
                }
                match self.request(id, Request::Flush, self.get_timeout * 2).await {
                    Ok(Response::Flushed(u)) => FlushedPeer {
                        id: id.to_string(),
                        removed: Some((u.entries, u.bytes)),
                        error: None,
                    },
                    Ok(other) => FlushedPeer {
                        id: id.to_string(),
                        removed: None,
                        error: Some(format!("unexpected answer {other:?}")),
                    },
                    Err(e) => FlushedPeer {
                        id: id.to_string(),
                        removed: None,
                        error: Some(e.to_string()),
                    },
                }
            }
        });
        peers.extend(futures::future::join_all(futs).await);
        FlushReport { peers }
    }
}
