//! A carrier SMSC simulator (the SMPP 3.4 server side) for integration tests, benchmarks and
//! `vmnd demo`.
//!
//! It behaves like the carriers vmnd binds to: it checks binds, answers enquire_link, unbind and
//! submit_sm, sends `deliver_sm` from one shared queue to every bound receiver/transceiver session
//! within each session's window, and redelivers whatever the ESME did not acknowledge with status
//! 0 (after a temporary error status, or because the connection dropped with it in flight). It
//! speaks through the crate's own SMPP layer (`smpp::codec`, `smpp::pdu`) and nothing else of the
//! daemon, so a test of the daemon against it is a test across a real TCP connection.
//!
//! Speed: the benchmark drives 50,000+ deliver_sm/s through it on two cores. Each message is
//! encoded once at enqueue and only its sequence number is patched per send; a session takes a
//! batch of messages under one lock, writes them with one syscall where the socket allows, and
//! hands acks back once per batch of responses read.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use vmnd::sim::{Smsc, SmscConfig, mo};
//! let smsc = Smsc::start(SmscConfig::default()).await?;
//! smsc.enqueue(mo::gsm("919812345678", "56767", "JOIN summer"));
//! // ... point the daemon at smsc.addr() ...
//! smsc.wait_until(std::time::Duration::from_secs(5), |s| s.acked_ok == 1).await;
//! # Ok(()) }
//! ```

pub mod mo;
mod session;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::smpp::pdu::{self, Body, Pdu, ShortMessage, status};
use state::{Bucket, Counters, Ctrl, Inner, Msg, Queue, Records, SessionHandle, lock};

/// How the simulated carrier behaves.
#[derive(Debug, Clone)]
pub struct SmscConfig {
    /// The credentials a bind must present.
    pub system_id: String,
    pub password: String,
    /// The first N bind attempts are refused with `refuse_status`, whatever they present (a
    /// carrier having a bad minute: tests of the daemon's reconnect backoff).
    pub refuse_binds: u32,
    /// Status for the refused binds (default ESME_RINVPASWD).
    pub refuse_status: u32,
    /// deliver_sm in flight (sent, not yet answered) per session. 0 is taken as 1.
    pub window: usize,
    /// Pace deliver_sm to at most this many per second over all sessions together
    /// (None: as fast as the windows allow).
    pub rate_per_sec: Option<u32>,
    /// Send enquire_link to the ESME every this often on each bound session (None: never).
    pub enquire_link_every: Option<Duration>,
    /// Like a real carrier: a deliver_sm that was sent but not answered with status 0 (no answer
    /// before the connection dropped, or an error status like 0x64) is sent again later / on the
    /// next bind. Default true.
    pub redeliver_unacked: bool,
    /// Delay before a message answered with a non-zero status is sent again (default 1s).
    pub retry_after: Duration,
    /// Statuses the carrier treats as final: the message is dropped, not retried (counted in
    /// `SimStats::gave_up`). Default empty: every non-zero status is retried, as the brief for
    /// the simulator asks; put e.g. ESME_RX_P_APPN here to model a carrier that honours it.
    pub no_retry_statuses: Vec<u32>,
    /// Keep one `AckRecord` (with a copy of the message) per acknowledged message. A
    /// million-message benchmark turns this off and reads counters and `ack_latencies_us()`.
    pub record_acks: bool,
    /// The `system_id` the simulator names itself in bind responses.
    pub smsc_system_id: String,
    /// The first submit_sm are answered with these statuses, in order (e.g. ESME_RTHROTTLED
    /// to test the daemon's retries); the rest with ESME_ROK. Refused ones are not recorded
    /// in `submitted()`.
    pub submit_statuses: Vec<u32>,
    /// Answer like a sloppy SMSC (tests of the daemon's leniency): bind responses and
    /// submit_sm_resp carry their id without its NUL terminator, and enquire_link_resp has a
    /// stray octet for a body. Each fails a strict decode. Default false.
    pub sloppy_responses: bool,
    /// Answer every enquire_link with a submit_sm_resp of the same sequence number, like an
    /// SMSC that mixes up its answers (tests that a response settles only the request it
    /// answers). Default false.
    pub mismatched_enquire_link_resps: bool,
}

impl Default for SmscConfig {
    fn default() -> Self {
        SmscConfig {
            system_id: "vmnd".into(),
            password: "secret".into(),
            refuse_binds: 0,
            refuse_status: status::ESME_RINVPASWD,
            window: 10,
            rate_per_sec: None,
            enquire_link_every: None,
            redeliver_unacked: true,
            retry_after: Duration::from_secs(1),
            no_retry_statuses: Vec::new(),
            record_acks: true,
            smsc_system_id: "vmnd-sim".into(),
            submit_statuses: Vec::new(),
            sloppy_responses: false,
            mismatched_enquire_link_resps: false,
        }
    }
}

/// Counters, read at once with `Smsc::stats()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages queued with `enqueue` (not raw PDUs).
    pub enqueued: u64,
    /// deliver_sm sent, redeliveries included.
    pub sent: u64,
    /// Distinct messages acknowledged with status 0.
    pub acked_ok: u64,
    /// deliver_sm_resp (or generic_nack) with a non-zero status, every one counted.
    pub acked_error: u64,
    /// Messages not yet acknowledged with status 0 (`enqueued - acked_ok`), given-up ones included.
    pub outstanding: u64,
    /// Messages dropped without an ok ack: a `no_retry_statuses` answer, or a non-ok answer or a
    /// lost connection while `redeliver_unacked` is off.
    pub gave_up: u64,
    pub binds_ok: u64,
    pub binds_refused: u64,
    /// Sessions bound right now.
    pub sessions_bound: u64,
    /// TCP connections accepted so far.
    pub connections: u64,
    pub enquire_links_received: u64,
    pub enquire_link_resps_received: u64,
    pub submits_received: u64,
    pub generic_nacks_received: u64,
    /// Raw PDUs (`enqueue_raw`) written to a session.
    pub raw_sent: u64,
}

/// One distinct message the ESME acknowledged with status 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// The sim id `enqueue` returned.
    pub id: u64,
    /// Always 0 (only ok acks are recorded); kept so callers can print it uniformly.
    pub status: u32,
    /// From the send of the attempt that succeeded to its deliver_sm_resp.
    pub latency: Duration,
    pub sm: ShortMessage,
}

/// Stops the simulator when the last `Smsc` clone goes away, so a test that forgets
/// `shutdown()` does not leave a listener behind.
struct ShutdownOnDrop(CancellationToken);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A running simulator. Clones share it; it stops on `shutdown()` or when the last clone drops.
#[derive(Clone)]
pub struct Smsc {
    inner: Arc<Inner>,
    _guard: Arc<ShutdownOnDrop>,
}

impl Smsc {
    /// Start on `127.0.0.1:0` (an ephemeral port: read it with `addr()`).
    pub async fn start(cfg: SmscConfig) -> std::io::Result<Smsc> {
        Smsc::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start on a given address (the demo may want a fixed port).
    pub async fn start_on(cfg: SmscConfig, listen: SocketAddr) -> std::io::Result<Smsc> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let queue = Queue {
            bucket: cfg.rate_per_sec.map(Bucket::new),
            ..Queue::default()
        };
        let inner = Arc::new(Inner {
            cfg,
            addr,
            queue: Mutex::new(queue),
            records: Mutex::new(Records::default()),
            counters: Counters::default(),
            sessions: Mutex::new(HashMap::new()),
            receivers_bound: AtomicUsize::new(0),
            inflight_total: AtomicUsize::new(0),
            ready_hint: AtomicUsize::new(0),
            next_msg_id: AtomicU64::new(1),
            next_submit_id: AtomicU64::new(1),
            submit_attempts: AtomicU64::new(0),
            next_session_id: AtomicU64::new(1),
            retry_wake: Notify::new(),
            cancel: cancel.clone(),
        });
        tokio::spawn(accept_loop(inner.clone(), listener));
        tokio::spawn(retry_pump(inner.clone()));
        tracing::debug!(%addr, "sim: SMSC listening");
        Ok(Smsc {
            inner,
            _guard: Arc::new(ShutdownOnDrop(cancel)),
        })
    }

    /// Where the simulator listens.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Queue a deliver_sm. The sim assigns sequence numbers per session. Returns the message's
    /// sim id, stable across redeliveries.
    pub fn enqueue(&self, sm: ShortMessage) -> u64 {
        self.enqueue_many(std::iter::once(sm)).start
    }

    /// Queue many deliver_sm under one lock (benchmarks); returns their consecutive sim ids.
    pub fn enqueue_many(&self, sms: impl IntoIterator<Item = ShortMessage>) -> Range<u64> {
        // Encode outside the lock; reserve a contiguous id range for the batch.
        let sms: Vec<ShortMessage> = sms.into_iter().collect();
        let n = sms.len() as u64;
        let first = self.inner.next_msg_id.fetch_add(n, Ordering::Relaxed);
        let record = self.inner.cfg.record_acks;
        let msgs: Vec<Arc<Msg>> = sms
            .into_iter()
            .zip(first..)
            .map(|(sm, id)| {
                let pdu = Pdu {
                    command_status: 0,
                    sequence_number: 0,
                    body: Body::DeliverSm(Box::new(sm)),
                };
                let bytes = pdu::encode_to_bytes(&pdu);
                let sm = match pdu.body {
                    Body::DeliverSm(sm) if record => Some(*sm),
                    _ => None,
                };
                Arc::new(Msg {
                    id,
                    pdu: bytes,
                    sm,
                    acked: AtomicBool::new(false),
                })
            })
            .collect();
        let was_empty = {
            let mut q = lock(&self.inner.queue);
            let was_empty = q.ready_len() == 0;
            q.ready.extend(msgs);
            self.inner
                .ready_hint
                .store(q.ready_len(), Ordering::Release);
            was_empty
        };
        self.inner.counters.enqueued.fetch_add(n, Ordering::AcqRel);
        // Sessions that found the queue empty are asleep; the others refill on their own acks.
        if was_empty && n > 0 {
            self.inner.wake_sessions(None);
        }
        first..first + n
    }

    /// Queue raw PDU bytes, sent as-is (before any queued message, outside window and rate) to
    /// the next bound receiver/transceiver session: for malformed-input tests. The ESME's answer
    /// is recorded in `raw_responses()` in order: a response whose sequence number matches the
    /// raw PDU's (octets 12..16), or any response matching nothing the simulator sent. The sim
    /// numbers its own requests from 1 upwards; give raw PDUs sequence numbers from 0x4000_0000
    /// up so the two never collide.
    pub fn enqueue_raw(&self, bytes: Bytes) {
        let was_empty = {
            let mut q = lock(&self.inner.queue);
            let was_empty = q.ready_len() == 0;
            q.raw.push_back(bytes);
            self.inner
                .ready_hint
                .store(q.ready_len(), Ordering::Release);
            was_empty
        };
        if was_empty {
            self.inner.wake_sessions(None);
        }
    }

    /// The counters now.
    pub fn stats(&self) -> SimStats {
        self.inner.counters.snapshot()
    }

    /// One record per distinct message acked with status 0, in ack order (empty when
    /// `record_acks` is off). A record is visible before `stats().acked_ok` counts it.
    pub fn acked(&self) -> Vec<AckRecord> {
        lock(&self.inner.records).acked.clone()
    }

    /// Latency in microseconds (send of the successful attempt to its ok ack, saturating at
    /// u32::MAX) of every distinct message acked with status 0, in ack order. Complete, not
    /// sampled, whatever `record_acks` says: four octets per message, 4 MB for a million.
    pub fn ack_latencies_us(&self) -> Vec<u32> {
        lock(&self.inner.records).latencies_us.clone()
    }

    /// The ESME's answers to raw PDUs (see `enqueue_raw`), in order.
    pub fn raw_responses(&self) -> Vec<Pdu> {
        lock(&self.inner.records).raw_responses.clone()
    }

    /// Every submit_sm received (each answered ESME_ROK with message_id `sim-<n>`, n from 1).
    pub fn submitted(&self) -> Vec<ShortMessage> {
        lock(&self.inner.records).submitted.clone()
    }

    /// Drop every TCP connection abruptly (RST, no unbind): in-flight messages stay unacked and
    /// are redelivered. Takes effect within milliseconds, asynchronously; wait on
    /// `stats().sessions_bound` when a test needs them gone.
    pub fn drop_connections(&self) {
        for s in lock(&self.inner.sessions).values() {
            let _ = s.ctrl.send(Ctrl::Drop);
        }
    }

    /// SMSC-initiated unbind on every bound session; resolves when each answered unbind_resp
    /// (or 5 s passed), and each is closed. Returns how many answered.
    pub async fn unbind_all(&self) -> usize {
        self.ask_bound(Ctrl::Unbind).await
    }

    /// Send enquire_link on every bound session now; returns how many answered within 5 s.
    pub async fn enquire_link_all(&self) -> usize {
        self.ask_bound(Ctrl::Enquire).await
    }

    /// Send one request to every bound session and count the `true` answers.
    async fn ask_bound(&self, make: fn(oneshot::Sender<bool>) -> Ctrl) -> usize {
        let answers: Vec<oneshot::Receiver<bool>> = lock(&self.inner.sessions)
            .values()
            .filter(|s| s.bound.load(Ordering::Acquire))
            .filter_map(|s| {
                let (tx, rx) = oneshot::channel();
                s.ctrl.send(make(tx)).ok().map(|()| rx)
            })
            .collect();
        // Sessions give up after 5 s themselves; the extra second only guards against a bug.
        let deadline = Instant::now() + session::ANSWER_TIMEOUT + Duration::from_secs(1);
        let mut n = 0;
        for rx in answers {
            if let Ok(Ok(true)) = tokio::time::timeout_at(deadline, rx).await {
                n += 1;
            }
        }
        n
    }

    /// Poll `stats()` every few ms until `pred` is true or `timeout` passed; returns pred's last
    /// value.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&SimStats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if Instant::now() >= deadline {
                return pred(&self.stats());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop listening and close every session (as `drop_connections`, but for good).
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
    }
}

/// Accept connections until shutdown; each gets its own session task.
async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                inner.counters.connections.fetch_add(1, Ordering::AcqRel);
                let id = inner.next_session_id.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::unbounded_channel();
                let notify = Arc::new(Notify::new());
                let bound = Arc::new(AtomicBool::new(false));
                lock(&inner.sessions).insert(
                    id,
                    SessionHandle {
                        ctrl: tx,
                        notify: notify.clone(),
                        bound: bound.clone(),
                    },
                );
                tracing::debug!(%peer, session = id, "sim: connection accepted");
                tokio::spawn(session::run(inner.clone(), stream, id, rx, notify, bound));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "sim: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Move retries to the front of the queue when they fall due, and wake the sessions.
async fn retry_pump(inner: Arc<Inner>) {
    loop {
        let next = {
            let mut q = lock(&inner.queue);
            let moved = q.promote_due(std::time::Instant::now());
            if moved > 0 {
                inner.ready_hint.store(q.ready_len(), Ordering::Release);
            }
            let next = q.retries.peek().map(|r| r.due);
            drop(q);
            if moved > 0 {
                inner.wake_sessions(None);
            }
            next
        };
        let sleep_to = next
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            _ = inner.retry_wake.notified() => {}
            _ = tokio::time::sleep_until(sleep_to) => {}
        }
    }
}
