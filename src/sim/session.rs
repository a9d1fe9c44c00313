//! One SMSC-side session: a single task per TCP connection that `select!`s over reading the
//! ESME's PDUs, writing ours, control requests from the `Smsc` handle, new messages in the queue,
//! the rate limit and the enquire_link timer.
//!
//! Why one task and not a reader plus a writer: the hot loop (read a batch of deliver_sm_resp,
//! free window slots, encode the next batch, write it) then runs without a channel hop or a wakeup
//! per message. Writes use `write_buf`, which is cancel safe, so a slow reader on the ESME side
//! never stops us from reading its responses.
//!
//! Nothing the ESME sends makes this task panic: an unreadable PDU is logged and answered with
//! generic_nack or the command's error response, and the session stays bound.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::codec::FramedRead;

use super::AckRecord;
use super::state::{Ctrl, Deal, Inner, Msg, Retry, lock};
use crate::smpp::codec::{Frame, FrameCodec};
use crate::smpp::pdu::{self, Body, Header, Pdu, ShortMessage, command_id, status};

/// How long the sim waits for the ESME's answer to its unbind or enquire_link.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Stop reading while this much output is unwritten (an ESME that sends but never reads).
const MAX_OUT: usize = 1 << 20;

/// Frames handled per wakeup before the loop hands acks back and refills the window.
const MAX_DRAIN: usize = 1024;

/// Highest sequence number the sim uses for its own requests (see `Smsc::enqueue_raw`).
const MAX_SEQ: u32 = 0x3FFF_FFFF;

/// What the ESME bound as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Bound { receive: bool, transmit: bool },
}

/// A deliver_sm sent and not yet answered.
struct InFlight {
    msg: Arc<Msg>,
    sent: Instant,
}

/// Results of handling frames, handed to the shared state once per batch.
#[derive(Default)]
struct Local {
    acks: Vec<AckRecord>,
    latencies_us: Vec<u32>,
    acked_ok: u64,
    retries: Vec<Arc<Msg>>,
    raw_responses: Vec<Pdu>,
    submitted: Vec<ShortMessage>,
}

impl Local {
    fn has_records(&self) -> bool {
        self.acked_ok > 0 || !self.raw_responses.is_empty() || !self.submitted.is_empty()
    }
}

struct Session {
    inner: Arc<Inner>,
    id: u64,
    mode: Mode,
    bound_flag: Arc<AtomicBool>,
    window: usize,
    /// Last sequence number used for a sim request.
    seq: u32,
    inflight: HashMap<u32, InFlight>,
    /// Sequence numbers of raw PDUs sent and not yet answered.
    raw_pending: HashSet<u32>,
    /// Once a raw PDU went out, a response matching nothing is taken as its answer.
    raw_sent: bool,
    /// Our enquire_links awaiting an answer; `Some` when `enquire_link_all` asked.
    enquires: HashMap<u32, (Instant, Option<oneshot::Sender<bool>>)>,
    /// Our unbind awaiting an answer.
    unbind: Option<(u32, Instant, Option<oneshot::Sender<bool>>)>,
    /// Close once `out` is written (after unbind either way).
    closing: bool,
    /// Encoded PDUs not yet written.
    out: BytesMut,
    local: Local,
    /// Reused for each batch taken from the queue.
    batch: Vec<Arc<Msg>>,
    /// Take nothing from the queue before this (the rate limit, or the fair share is taken).
    take_after: Option<Instant>,
    /// This session's in-flight count as last added to `Inner::inflight_total`.
    reported_inflight: usize,
}

/// Run one connection to its end, then hand its in-flight messages back for redelivery.
pub(super) async fn run(
    inner: Arc<Inner>,
    stream: TcpStream,
    id: u64,
    mut ctrl: mpsc::UnboundedReceiver<Ctrl>,
    notify: Arc<Notify>,
    bound_flag: Arc<AtomicBool>,
) {
    // deliver_sm are small and latency is measured: never let Nagle hold one back.
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut reader = FramedRead::with_capacity(rd, FrameCodec, 64 * 1024);
    let window = inner.cfg.window.max(1);
    let mut s = Session {
        inner: inner.clone(),
        id,
        mode: Mode::Open,
        bound_flag,
        window,
        seq: 0,
        inflight: HashMap::with_capacity(window),
        raw_pending: HashSet::new(),
        raw_sent: false,
        enquires: HashMap::new(),
        unbind: None,
        closing: false,
        out: BytesMut::with_capacity(64 * 1024),
        local: Local::default(),
        batch: Vec::with_capacity(window),
        take_after: None,
        reported_inflight: 0,
    };
    let mut ticker: Option<Interval> = None;
    let far = || Instant::now() + Duration::from_secs(3600);

    loop {
        s.sync_shared();
        if s.closing && s.out.is_empty() {
            break;
        }
        if ticker.is_none() && s.mode != Mode::Open {
            if let Some(every) = inner.cfg.enquire_link_every {
                let start = tokio::time::Instant::now() + every;
                let mut t = tokio::time::interval_at(start, every);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ticker = Some(t);
            }
        }
        let can_read = s.out.len() < MAX_OUT && !s.closing;
        let wait_queue = s.wants_messages() && s.take_after.is_none();
        // The earliest of: rate limit, unbind timeout, enquire_link_all timeouts.
        let deadline = [
            s.take_after,
            s.unbind.as_ref().map(|u| u.1),
            s.enquires.values().map(|e| e.0).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep_to = tokio::time::Instant::from_std(deadline.unwrap_or_else(far));

        tokio::select! {
            biased;
            _ = inner.cancel.cancelled() => break,
            c = ctrl.recv() => match c {
                Some(Ctrl::Drop) | None => {
                    // Abrupt: RST instead of FIN, as a carrier's box falling over looks.
                    let _ = wr.as_ref().set_zero_linger();
                    tracing::debug!(session = id, "sim: dropping connection");
                    break;
                }
                Some(Ctrl::Enquire(tx)) => s.send_enquire(Some(tx)),
                Some(Ctrl::Unbind(tx)) => s.send_unbind(tx),
            },
            r = wr.write_buf(&mut s.out), if !s.out.is_empty() => match r {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(session = id, error = %e, "sim: write failed");
                    break;
                }
            },
            f = reader.next(), if can_read => {
                if !s.on_read(f) {
                    break;
                }
                // Handle whatever else is already buffered before touching shared state.
                let mut eof = false;
                for _ in 0..MAX_DRAIN {
                    match reader.next().now_or_never() {
                        Some(f) => {
                            if !s.on_read(f) {
                                eof = true;
                                break;
                            }
                        }
                        None => break,
                    }
                    if s.out.len() >= MAX_OUT || s.closing {
                        break;
                    }
                }
                if eof {
                    break;
                }
            },
            _ = notify.notified(), if wait_queue => {}
            _ = tick(&mut ticker), if s.mode != Mode::Open && !s.closing => s.send_enquire(None),
            _ = tokio::time::sleep_until(sleep_to), if deadline.is_some() => s.on_deadline(),
        }
    }

    // Whatever the ESME wrote after our last write is lost with the connection; try to get our
    // last answers (say, its unbind_resp) out, without waiting on a peer that stopped reading.
    if !s.out.is_empty() && !inner.cancel.is_cancelled() {
        let _ = tokio::time::timeout(Duration::from_millis(200), wr.write_all(&s.out)).await;
    }
    s.finish();
    tracing::debug!(session = id, "sim: session closed");
}

/// An enquire_link timer tick, or never when none is configured.
async fn tick(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Session {
    /// True when this session is bound to receive and has window room.
    fn wants_messages(&self) -> bool {
        matches!(self.mode, Mode::Bound { receive: true, .. })
            && !self.closing
            && self.unbind.is_none()
            && self.out.len() < MAX_OUT
    }

    /// The next sequence number for a sim request, skipping any still in use.
    fn next_seq(&mut self) -> u32 {
        loop {
            self.seq = if self.seq >= MAX_SEQ { 1 } else { self.seq + 1 };
            let s = self.seq;
            if !self.inflight.contains_key(&s)
                && !self.raw_pending.contains(&s)
                && !self.enquires.contains_key(&s)
            {
                return s;
            }
        }
    }

    fn push(&mut self, pdu: &Pdu) {
        let start = self.out.len();
        pdu::encode(pdu, &mut self.out);
        if self.inner.cfg.sloppy_responses {
            make_sloppy(pdu, &mut self.out, start);
        }
    }

    /// Hand records and retries to the shared state, then take raw PDUs and messages to fill the
    /// window: at most one lock of each mutex per call.
    fn sync_shared(&mut self) {
        let inner = self.inner.clone();
        let c = &inner.counters;
        if self.local.has_records() {
            let l = &mut self.local;
            {
                let mut r = lock(&inner.records);
                r.acked.append(&mut l.acks);
                r.latencies_us.append(&mut l.latencies_us);
                r.raw_responses.append(&mut l.raw_responses);
                r.submitted.append(&mut l.submitted);
            }
            // Counted after the records are visible, so a test that waited for the count
            // finds the records.
            c.acked_ok.fetch_add(l.acked_ok, Ordering::AcqRel);
            l.acked_ok = 0;
        }
        let retries = !self.local.retries.is_empty();
        let free = self.window.saturating_sub(self.inflight.len());
        let take = self.wants_messages()
            && self.take_after.is_none()
            && inner.ready_hint.load(Ordering::Acquire) > 0
            && free > 0;
        if !retries && !take {
            self.report_inflight(self.inflight.len());
            return;
        }

        let now = Instant::now();
        let mut raws: Vec<Bytes> = Vec::new();
        let more_left = {
            let mut q = lock(&inner.queue);
            if retries {
                let due = now + inner.cfg.retry_after;
                for msg in self.local.retries.drain(..) {
                    q.retries.push(Retry { due, msg });
                }
            }
            if take {
                raws.extend(q.raw.drain(..));
                let deal = Deal {
                    receivers: inner.receivers_bound.load(Ordering::Acquire),
                    inflight_total: inner.inflight_total.load(Ordering::Acquire),
                    mine: self.inflight.len(),
                };
                if let Err(until) = q.take(free, deal, now, &mut self.batch) {
                    self.take_after = Some(until);
                }
                inner.ready_hint.store(q.ready_len(), Ordering::Release);
                // Report before the lock goes, so the next taker sees this batch as in flight.
                self.report_inflight(self.inflight.len() + self.batch.len());
            }
            q.ready_len() > 0
        };
        if retries {
            inner.retry_wake.notify_one();
        }
        if !take {
            return;
        }

        for raw in raws {
            if raw.len() >= 16 {
                let seq = u32::from_be_bytes([raw[12], raw[13], raw[14], raw[15]]);
                self.raw_pending.insert(seq);
            }
            self.raw_sent = true;
            self.out.extend_from_slice(&raw);
            c.raw_sent.fetch_add(1, Ordering::AcqRel);
        }
        let n = self.batch.len();
        let mut batch = std::mem::take(&mut self.batch);
        for msg in batch.drain(..) {
            let seq = self.next_seq();
            let start = self.out.len();
            self.out.extend_from_slice(&msg.pdu);
            // Octets 12..16 of the header are the sequence number (SMPP 3.4 section 3.2).
            self.out[start + 12..start + 16].copy_from_slice(&seq.to_be_bytes());
            self.inflight.insert(seq, InFlight { msg, sent: now });
        }
        self.batch = batch;
        if n > 0 {
            c.sent.fetch_add(n as u64, Ordering::AcqRel);
        }
        // Let the other sessions take their share of what is left.
        if n > 0 && more_left && inner.receivers_bound.load(Ordering::Acquire) > 1 {
            inner.wake_sessions(Some(self.id));
        }
    }

    /// Bring this session's share of `Inner::inflight_total` to `now`.
    fn report_inflight(&mut self, now: usize) {
        let total = &self.inner.inflight_total;
        if now > self.reported_inflight {
            total.fetch_add(now - self.reported_inflight, Ordering::AcqRel);
        } else if now < self.reported_inflight {
            total.fetch_sub(self.reported_inflight - now, Ordering::AcqRel);
        }
        self.reported_inflight = now;
    }

    /// Handle one item from the reader; false when the connection is over.
    fn on_read(&mut self, f: Option<Result<Frame, std::io::Error>>) -> bool {
        match f {
            None => {
                tracing::debug!(session = self.id, "sim: ESME closed the connection");
                false
            }
            Some(Err(e)) => {
                tracing::debug!(session = self.id, error = %e, "sim: read failed");
                false
            }
            Some(Ok(frame)) => {
                self.on_frame(frame);
                true
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::BadLength {
                command_length,
                command_id,
                sequence_number,
            } => {
                tracing::warn!(
                    session = self.id,
                    command_length,
                    command_id,
                    sequence_number,
                    "sim: ESME sent a PDU with a bad command_length"
                );
                self.nack(status::ESME_RINVCMDLEN, sequence_number);
            }
            Frame::Pdu(bytes) => match pdu::header(&bytes) {
                None => {
                    tracing::warn!(
                        session = self.id,
                        len = bytes.len(),
                        "sim: unreadable header"
                    );
                    self.nack(status::ESME_RINVCMDLEN, 0);
                }
                Some(h) if h.command_id & command_id::RESPONSE_BIT != 0 => {
                    self.on_response(&h, &bytes)
                }
                Some(h) => self.on_request(&h, &bytes),
            },
        }
    }

    fn nack(&mut self, command_status: u32, sequence_number: u32) {
        self.push(&Pdu {
            command_status,
            sequence_number,
            body: Body::GenericNack,
        });
    }

    /// A response from the ESME: only the header matters for the ones we track.
    fn on_response(&mut self, h: &Header, bytes: &Bytes) {
        let c = &self.inner.counters;
        let seq = h.sequence_number;
        let nack = h.command_id == command_id::GENERIC_NACK;
        if nack {
            c.generic_nacks_received.fetch_add(1, Ordering::AcqRel);
        }
        if self.raw_pending.remove(&seq) {
            self.record_raw_response(bytes);
            return;
        }
        if (h.command_id == command_id::DELIVER_SM_RESP || nack)
            && let Some(f) = self.inflight.remove(&seq)
        {
            self.on_ack(f, h.command_status);
            return;
        }
        if (h.command_id == command_id::ENQUIRE_LINK_RESP || nack)
            && let Some((_, tx)) = self.enquires.remove(&seq)
        {
            if !nack {
                c.enquire_link_resps_received.fetch_add(1, Ordering::AcqRel);
            }
            if let Some(tx) = tx {
                let _ = tx.send(!nack);
            }
            return;
        }
        if (h.command_id == command_id::UNBIND_RESP || nack)
            && self.unbind.as_ref().is_some_and(|u| u.0 == seq)
        {
            if let Some((_, _, Some(tx))) = self.unbind.take() {
                let _ = tx.send(!nack);
            }
            self.closing = true;
            return;
        }
        if self.raw_sent {
            self.record_raw_response(bytes);
        } else {
            tracing::debug!(
                session = self.id,
                command_id = h.command_id,
                seq,
                "sim: response to nothing we sent"
            );
        }
    }

    fn record_raw_response(&mut self, bytes: &Bytes) {
        match pdu::decode(bytes) {
            Ok(p) => self.local.raw_responses.push(p),
            Err(e) => tracing::warn!(
                session = self.id,
                error = ?e,
                "sim: unreadable answer to a raw PDU"
            ),
        }
    }

    /// The ESME answered one of our deliver_sm.
    fn on_ack(&mut self, f: InFlight, command_status: u32) {
        let inner = &self.inner;
        if command_status == status::ESME_ROK {
            // A second ok for the same message (a redelivery after a lost ack) counts once.
            if f.msg.acked.swap(true, Ordering::AcqRel) {
                return;
            }
            let latency = f.sent.elapsed();
            let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
            self.local.latencies_us.push(us);
            self.local.acked_ok += 1;
            if inner.cfg.record_acks {
                self.local.acks.push(AckRecord {
                    id: f.msg.id,
                    status: command_status,
                    latency,
                    sm: f.msg.sm.clone().unwrap_or_default(),
                });
            }
            return;
        }
        inner.counters.acked_error.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(
            session = self.id,
            id = f.msg.id,
            status = %pdu::status_name(command_status),
            "sim: deliver_sm answered with an error"
        );
        if f.msg.acked.load(Ordering::Acquire) {
            return;
        }
        if inner.cfg.redeliver_unacked && !inner.cfg.no_retry_statuses.contains(&command_status) {
            self.local.retries.push(f.msg);
        } else {
            inner.counters.gave_up.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A request from the ESME.
    fn on_request(&mut self, h: &Header, bytes: &Bytes) {
        let p = match pdu::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    session = self.id,
                    command_id = h.command_id,
                    seq = h.sequence_number,
                    error = ?e,
                    "sim: undecodable PDU from the ESME"
                );
                self.push(&pdu::error_response(&e));
                return;
            }
        };
        let c = &self.inner.counters;
        match &p.body {
            Body::BindReceiver(b) => {
                self.on_bind(&p, b.system_id.clone(), b.password.clone(), true, false)
            }
            Body::BindTransmitter(b) => {
                self.on_bind(&p, b.system_id.clone(), b.password.clone(), false, true)
            }
            Body::BindTransceiver(b) => {
                self.on_bind(&p, b.system_id.clone(), b.password.clone(), true, true)
            }
            Body::EnquireLink => {
                c.enquire_links_received.fetch_add(1, Ordering::AcqRel);
                if self.inner.cfg.mismatched_enquire_link_resps {
                    self.push(&Pdu {
                        command_status: status::ESME_ROK,
                        sequence_number: p.sequence_number,
                        body: Body::SubmitSmResp {
                            message_id: String::new(),
                        },
                    });
                } else {
                    self.respond(&p, status::ESME_ROK);
                }
            }
            Body::Unbind => {
                // Answer, stop sending, close once the answer is written; in-flight messages
                // go back to the queue when the session ends.
                self.respond(&p, status::ESME_ROK);
                self.closing = true;
            }
            Body::SubmitSm(sm) => {
                if !matches!(self.mode, Mode::Bound { transmit: true, .. }) {
                    self.respond(&p, status::ESME_RINVBNDSTS);
                    return;
                }
                c.submits_received.fetch_add(1, Ordering::AcqRel);
                let attempt = self.inner.submit_attempts.fetch_add(1, Ordering::AcqRel) as usize;
                if let Some(&scripted) = self.inner.cfg.submit_statuses.get(attempt) {
                    if scripted != status::ESME_ROK {
                        self.respond(&p, scripted);
                        return;
                    }
                }
                let n = self.inner.next_submit_id.fetch_add(1, Ordering::Relaxed);
                self.local.submitted.push((**sm).clone());
                self.push(&Pdu {
                    command_status: status::ESME_ROK,
                    sequence_number: p.sequence_number,
                    body: Body::SubmitSmResp {
                        message_id: format!("sim-{n}"),
                    },
                });
            }
            Body::DeliverSm(_) => {
                // An ESME does not deliver to the SMSC.
                self.respond(&p, status::ESME_RINVCMDID);
            }
            _ => self.nack(status::ESME_RINVCMDID, p.sequence_number),
        }
    }

    /// The command's own response with `status`, or generic_nack when it has none.
    fn respond(&mut self, p: &Pdu, command_status: u32) {
        match p.response(command_status) {
            Some(r) => self.push(&r),
            None => self.nack(command_status, p.sequence_number),
        }
    }

    fn on_bind(
        &mut self,
        p: &Pdu,
        system_id: String,
        password: String,
        receive: bool,
        transmit: bool,
    ) {
        let inner = self.inner.clone();
        let (cfg, c) = (&inner.cfg, &inner.counters);
        let result = if self.mode != Mode::Open {
            status::ESME_RALYBND
        } else if c.bind_attempts.fetch_add(1, Ordering::AcqRel) < u64::from(cfg.refuse_binds) {
            cfg.refuse_status
        } else if system_id != cfg.system_id {
            status::ESME_RINVSYSID
        } else if password != cfg.password {
            status::ESME_RINVPASWD
        } else {
            status::ESME_ROK
        };
        if result != status::ESME_ROK {
            tracing::debug!(
                session = self.id,
                system_id,
                status = %pdu::status_name(result),
                "sim: bind refused"
            );
            c.binds_refused.fetch_add(1, Ordering::AcqRel);
            self.respond(p, result);
            return;
        }
        let system_id = cfg.smsc_system_id.clone();
        let body = match (receive, transmit) {
            (true, false) => Body::BindReceiverResp { system_id },
            (false, true) => Body::BindTransmitterResp { system_id },
            _ => Body::BindTransceiverResp { system_id },
        };
        self.push(&Pdu {
            command_status: status::ESME_ROK,
            sequence_number: p.sequence_number,
            body,
        });
        self.mode = Mode::Bound { receive, transmit };
        self.bound_flag.store(true, Ordering::Release);
        if receive {
            inner.receivers_bound.fetch_add(1, Ordering::AcqRel);
        }
        c.sessions_bound.fetch_add(1, Ordering::AcqRel);
        c.binds_ok.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(session = self.id, receive, transmit, "sim: bound");
    }

    fn send_enquire(&mut self, tx: Option<oneshot::Sender<bool>>) {
        if self.closing {
            if let Some(tx) = tx {
                let _ = tx.send(false);
            }
            return;
        }
        let seq = self.next_seq();
        self.enquires
            .insert(seq, (Instant::now() + ANSWER_TIMEOUT, tx));
        self.push(&Pdu {
            command_status: 0,
            sequence_number: seq,
            body: Body::EnquireLink,
        });
    }

    fn send_unbind(&mut self, tx: oneshot::Sender<bool>) {
        if self.closing || self.unbind.is_some() || self.mode == Mode::Open {
            let _ = tx.send(false);
            return;
        }
        let seq = self.next_seq();
        self.unbind = Some((seq, Instant::now() + ANSWER_TIMEOUT, Some(tx)));
        self.push(&Pdu {
            command_status: 0,
            sequence_number: seq,
            body: Body::Unbind,
        });
    }

    /// A timer fired: clear the rate wait, give up on late answers.
    fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.take_after.is_some_and(|t| t <= now) {
            self.take_after = None;
        }
        if self.unbind.as_ref().is_some_and(|u| u.1 <= now) {
            tracing::debug!(session = self.id, "sim: no unbind_resp in time; closing");
            // Dropping the sender answers false; close without waiting further.
            self.unbind = None;
            self.closing = true;
            self.out.clear();
        }
        // Unanswered in time: enquire_link_all counts it as false (the sender drops).
        self.enquires.retain(|_, (due, _)| *due > now);
    }

    /// The connection is over: records out, in-flight messages back to the queue.
    fn finish(mut self) {
        // Nothing more will be taken; hand back what this session learned.
        self.closing = true;
        self.sync_shared();
        let inner = self.inner.clone();
        let c = &inner.counters;
        if self.bound_flag.swap(false, Ordering::AcqRel) {
            c.sessions_bound.fetch_sub(1, Ordering::AcqRel);
            if matches!(self.mode, Mode::Bound { receive: true, .. }) {
                inner.receivers_bound.fetch_sub(1, Ordering::AcqRel);
            }
        }
        lock(&inner.sessions).remove(&self.id);
        self.report_inflight(0);
        let unacked: Vec<Arc<Msg>> = self
            .inflight
            .drain()
            .map(|(_, f)| f.msg)
            .filter(|m| !m.acked.load(Ordering::Acquire))
            .collect();
        if unacked.is_empty() {
            return;
        }
        if inner.cfg.redeliver_unacked {
            tracing::debug!(
                session = self.id,
                n = unacked.len(),
                "sim: requeueing in-flight messages"
            );
            {
                let mut q = lock(&inner.queue);
                q.requeue_front(unacked);
                inner.ready_hint.store(q.ready_len(), Ordering::Release);
            }
            inner.wake_sessions(None);
        } else {
            c.gave_up.fetch_add(unacked.len() as u64, Ordering::AcqRel);
        }
    }
}

/// Rewrites the PDU encoded at `out[start..]` as a sloppy SMSC writes it (see
/// `SmscConfig::sloppy_responses`): an id response loses its id's NUL terminator, an
/// enquire_link_resp gains a stray octet. Other PDUs stay as they are.
fn make_sloppy(pdu: &Pdu, out: &mut BytesMut, start: usize) {
    match &pdu.body {
        Body::BindReceiverResp { .. }
        | Body::BindTransmitterResp { .. }
        | Body::BindTransceiverResp { .. }
        | Body::SubmitSmResp { .. }
            if out.last() == Some(&0) =>
        {
            out.truncate(out.len() - 1);
        }
        Body::EnquireLinkResp => out.extend_from_slice(&[0]),
        _ => return,
    }
    let length = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
}
