//! The simulator's shared state: the message queue every session deals from, the retry heap,
//! counters and the records tests read back.
//!
//! Sessions touch this once per batch (one lock to take a batch of messages, one to hand back
//! acks and retries), never once per message, so the benchmark path stays cheap.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{AckRecord, SimStats, SmscConfig};
use crate::smpp::pdu::{Pdu, ShortMessage};

/// Lock a mutex even if a panicking thread poisoned it: the data is counters and queues that
/// stay consistent between statements, and a test harness should see them rather than panic.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One queued message, shared between the queue, a session's in-flight map and the retry heap.
pub(super) struct Msg {
    /// The sim id: assigned at enqueue, stable across redeliveries.
    pub id: u64,
    /// The whole deliver_sm, encoded once at enqueue with sequence_number 0; a send copies it
    /// and patches octets 12..16 with the session's sequence number.
    pub pdu: Bytes,
    /// Kept only when `record_acks` is on (it goes into the `AckRecord`).
    pub sm: Option<ShortMessage>,
    /// Set by the first status-0 answer, so a message the ESME acknowledges twice (a redelivery
    /// after an ack lost with the connection) is counted once and never retried again.
    pub acked: AtomicBool,
}

/// A message waiting for its retry time after a non-zero `deliver_sm_resp`.
pub(super) struct Retry {
    pub due: Instant,
    pub msg: Arc<Msg>,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Retry {
    /// Reversed so `BinaryHeap` (a max-heap) pops the earliest due time, then the oldest id.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .due
            .cmp(&self.due)
            .then_with(|| other.msg.id.cmp(&self.msg.id))
    }
}

/// A token bucket shared by every session, so `rate_per_sec` bounds the carrier as a whole.
pub(super) struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate_per_sec: u32) -> Bucket {
        let rate = f64::from(rate_per_sec.max(1));
        // A 20 ms burst keeps sends smooth while still letting a session write a batch at once.
        let capacity = (rate * 0.02).max(1.0);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// How many of `want` may go now, or when the next one may.
    fn take(&mut self, want: usize, now: Instant) -> Result<usize, Instant> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        let n = (self.tokens.floor() as usize).min(want);
        if n == 0 {
            let wait = (1.0 - self.tokens) / self.rate;
            return Err(now + std::time::Duration::from_secs_f64(wait.max(0.0)));
        }
        self.tokens -= n as f64;
        Ok(n)
    }
}

/// What a session tells `Queue::take` about how work is spread.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deal {
    /// Sessions bound to receive now (the taker included).
    pub receivers: usize,
    /// deliver_sm in flight over all sessions, as last reported.
    pub inflight_total: usize,
    /// deliver_sm in flight on the taking session.
    pub mine: usize,
}

/// What sessions deal from.
#[derive(Default)]
pub(super) struct Queue {
    /// Messages ready to send; redeliveries go to the front.
    pub ready: VecDeque<Arc<Msg>>,
    /// Raw PDUs for `enqueue_raw`, sent before anything in `ready`, outside window and rate.
    pub raw: VecDeque<Bytes>,
    /// Messages answered with a non-zero status, waiting for `retry_after`.
    pub retries: BinaryHeap<Retry>,
    pub bucket: Option<Bucket>,
}

impl Queue {
    /// Move up to `max` ready messages into `out`, for a session that has `mine` in flight.
    ///
    /// With several receiving sessions a session takes no more than its fair share of all
    /// undelivered work (queued plus in flight everywhere), so a short queue is dealt round-robin
    /// instead of going whole to whichever session runs first; with one session the share is the
    /// whole queue. `Err` carries when to look again: the rate limit's next token, or shortly
    /// when this session has its share already.
    pub fn take(
        &mut self,
        max: usize,
        deal: Deal,
        now: Instant,
        out: &mut Vec<Arc<Msg>>,
    ) -> Result<(), Instant> {
        let len = self.ready.len();
        if len == 0 || max == 0 {
            return Ok(());
        }
        let total = len + deal.inflight_total.max(deal.mine);
        let share = total
            .div_ceil(deal.receivers.max(1))
            .saturating_sub(deal.mine);
        if share == 0 {
            // Another session is due this work; it was woken when it arrived. Look again soon
            // in case that session is gone or stuck (counts between syncs are a little stale).
            return Err(now + std::time::Duration::from_millis(2));
        }
        let mut n = max.min(share).min(len);
        if let Some(bucket) = &mut self.bucket {
            n = bucket.take(n, now)?;
        }
        out.extend(self.ready.drain(..n));
        Ok(())
    }

    /// Put messages back at the front in id order (oldest first), as a carrier redelivers.
    pub fn requeue_front(&mut self, mut msgs: Vec<Arc<Msg>>) {
        msgs.sort_by_key(|m| m.id);
        for m in msgs.into_iter().rev() {
            self.ready.push_front(m);
        }
    }

    /// Move every retry that is due to the front of `ready`; returns how many moved.
    pub fn promote_due(&mut self, now: Instant) -> usize {
        let mut due = Vec::new();
        while self.retries.peek().is_some_and(|r| r.due <= now) {
            if let Some(r) = self.retries.pop() {
                due.push(r.msg);
            }
        }
        let n = due.len();
        if n > 0 {
            self.requeue_front(due);
        }
        n
    }

    /// What sessions can take now; kept in `Inner::ready_hint` so idle checks skip the lock.
    pub fn ready_len(&self) -> usize {
        self.ready.len() + self.raw.len()
    }
}

/// What tests and benches read back.
#[derive(Default)]
pub(super) struct Records {
    pub acked: Vec<AckRecord>,
    pub latencies_us: Vec<u32>,
    pub raw_responses: Vec<Pdu>,
    pub submitted: Vec<ShortMessage>,
}

/// Counters behind `SimStats`; atomics so `stats()` never waits on a session.
#[derive(Default)]
pub(super) struct Counters {
    pub enqueued: AtomicU64,
    pub sent: AtomicU64,
    pub acked_ok: AtomicU64,
    pub acked_error: AtomicU64,
    pub gave_up: AtomicU64,
    pub bind_attempts: AtomicU64,
    pub binds_ok: AtomicU64,
    pub binds_refused: AtomicU64,
    pub sessions_bound: AtomicU64,
    pub connections: AtomicU64,
    pub enquire_links_received: AtomicU64,
    pub enquire_link_resps_received: AtomicU64,
    pub submits_received: AtomicU64,
    pub generic_nacks_received: AtomicU64,
    pub raw_sent: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> SimStats {
        let g = |a: &AtomicU64| a.load(Ordering::Acquire);
        let enqueued = g(&self.enqueued);
        let acked_ok = g(&self.acked_ok);
        SimStats {
            enqueued,
            sent: g(&self.sent),
            acked_ok,
            acked_error: g(&self.acked_error),
            outstanding: enqueued.saturating_sub(acked_ok),
            gave_up: g(&self.gave_up),
            binds_ok: g(&self.binds_ok),
            binds_refused: g(&self.binds_refused),
            sessions_bound: g(&self.sessions_bound),
            connections: g(&self.connections),
            enquire_links_received: g(&self.enquire_links_received),
            enquire_link_resps_received: g(&self.enquire_link_resps_received),
            submits_received: g(&self.submits_received),
            generic_nacks_received: g(&self.generic_nacks_received),
            raw_sent: g(&self.raw_sent),
        }
    }
}

/// Requests from the `Smsc` handle to one session task.
pub(super) enum Ctrl {
    /// Close the TCP connection now, without unbind (RST).
    Drop,
    /// Send enquire_link; answer true when the enquire_link_resp arrives.
    Enquire(oneshot::Sender<bool>),
    /// Send unbind; answer true when the unbind_resp arrives, then close.
    Unbind(oneshot::Sender<bool>),
}

/// The handle's view of one connected session.
pub(super) struct SessionHandle {
    pub ctrl: mpsc::UnboundedSender<Ctrl>,
    /// Wakes the session when messages arrive in an empty queue.
    pub notify: Arc<Notify>,
    /// Set once the session is bound (any kind), cleared when it unbinds.
    pub bound: Arc<AtomicBool>,
}

/// Everything the handle, the accept loop, the retry pump and the sessions share.
pub(super) struct Inner {
    pub cfg: SmscConfig,
    pub addr: SocketAddr,
    pub queue: Mutex<Queue>,
    pub records: Mutex<Records>,
    pub counters: Counters,
    pub sessions: Mutex<HashMap<u64, SessionHandle>>,
    /// Sessions bound as receiver or transceiver now (for the round-robin share).
    pub receivers_bound: AtomicUsize,
    /// deliver_sm in flight over all sessions, each session reporting its count when it syncs.
    pub inflight_total: AtomicUsize,
    /// `Queue::ready_len()` as of the last change, read without the lock.
    pub ready_hint: AtomicUsize,
    pub next_msg_id: AtomicU64,
    pub next_submit_id: AtomicU64,
    /// submit_sm received so far, to pick the scripted status (`submit_statuses`).
    pub submit_attempts: AtomicU64,
    pub next_session_id: AtomicU64,
    /// Wakes the retry pump when a session schedules a retry.
    pub retry_wake: Notify,
    pub cancel: CancellationToken,
}

impl Inner {
    /// Wake every session (they take from the queue if they can, or go back to sleep).
    pub fn wake_sessions(&self, except: Option<u64>) {
        for (id, s) in lock(&self.sessions).iter() {
            if Some(*id) != except {
                s.notify.notify_one();
            }
        }
    }
}
