//! One SMPP session with one carrier, from bind to unbind.
//!
//! The loop `select!`s over: frames from the SMSC, acknowledgements coming back from the group
//! commit, the idle timer (enquire_link, response timeouts) and shutdown. Every inbound PDU is
//! answered: a deliver_sm only once the journal says it is durable; a body that does not decode
//! with an error response carrying its sequence number; an unknown command with generic_nack.
//! None of those end the session: only the peer closing, an unbind, a dead link, or shutdown do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;

use crate::clock;
use crate::config::{BindMode, Carrier};
use crate::smpp::codec::{self, Frame, FrameCodec};
use crate::smpp::pdu::{self, Bind, Body, Pdu, ShortMessage, command_id, status};
use crate::smpp::supervisor::CarrierState;
use crate::store::JournalEntry;
use crate::store::writer::{AckOutcome, JournalRequest, JournalWriter};

/// Why a session ended; the supervisor decides what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The SMSC refused the bind with this status.
    BindRefused(u32),
    /// Either side unbound cleanly.
    Unbound,
    /// The SMSC closed the connection.
    Closed,
    /// I/O error or a response that never came.
    Failed(String),
    /// We were asked to stop and unbound.
    Shutdown,
}

/// What a session needs from the daemon.
#[derive(Clone)]
pub struct SessionContext {
    pub carrier: Carrier,
    /// Shared carrier name for journal entries (cloned per PDU).
    pub carrier_name: Arc<str>,
    pub journal: JournalWriter,
    pub state: Arc<CarrierState>,
}

/// A request of ours that awaits its response.
struct Pending {
    command_id: u32,
    sent: Instant,
    /// For submit_sm: who waits for the outcome.
    reply: Option<oneshot::Sender<SubmitOutcome>>,
}

/// One submit_sm to send on this carrier's bind.
pub struct SubmitRequest {
    pub sm: ShortMessage,
    pub reply: oneshot::Sender<SubmitOutcome>,
    /// The session sends it only until then; later it drops it unsent (the sender sees the
    /// reply dropped and retries). The sender waits for the answer past this by more than
    /// the session waits for a response, so a request sent is never given up on before its
    /// answer or the session's end: given up on after it was sent, it would be sent again
    /// and the handset would get the SMS twice.
    pub send_by: Instant,
}

impl SubmitRequest {
    /// The sender gave up on it, or it waited too long for the bind to send it.
    pub fn is_stale(&self) -> bool {
        self.reply.is_closed() || Instant::now() >= self.send_by
    }
}

/// What the SMSC answered to a submit_sm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOutcome {
    pub status: u32,
    /// The carrier's message id (empty on errors): receipts refer to it.
    pub message_id: String,
}

/// submit_sm pacing: a token bucket refilled at `submit_per_second`, holding at most one
/// second's worth so a quiet bind cannot burst past the carrier's limit.
struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        let per_second = f64::from(per_second.max(1));
        RateLimit {
            per_second,
            tokens: per_second.min(1.0),
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second.max(1.0));
    }

    fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    fn next_token_in(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.per_second)
    }
}

struct Session {
    ctx: SessionContext,
    writer: BufWriter<OwnedWriteHalf>,
    out: BytesMut,
    next_sequence: u32,
    pending: HashMap<u32, Pending>,
    last_heard: Instant,
    acks_tx: mpsc::UnboundedSender<AckOutcome>,
    /// deliver_sm journaled but not yet answered.
    unanswered: usize,
    /// When the stop began. From then a new deliver_sm is answered with a temporary error
    /// (the carrier sends it again later) instead of journaled, and the unbind waits, at
    /// most `response_timeout`, for the acks of what was journaled (SMPP 3.4 2.3: no unbind
    /// while operations are outstanding). An SMSC may close once it answers the unbind, and
    /// a message journaled but never acknowledged would be processed now and again when the
    /// carrier resends it.
    stopping: Option<Instant>,
    /// Handles of the per-message metrics, looked up once per session, not per PDU.
    meters: SessionMeters,
}

/// The metrics every deliver_sm touches.
struct SessionMeters {
    /// `vmnd_deliver_sm_received_total{carrier}`.
    received: metrics::Counter,
    /// `vmnd_deliver_sm_acked_total{carrier, status}`: `ok`, `tempfail`.
    acked_ok: metrics::Counter,
    acked_tempfail: metrics::Counter,
    /// `vmnd_ack_latency_seconds`.
    ack_latency: metrics::Histogram,
}

impl SessionMeters {
    fn new(carrier: &str) -> SessionMeters {
        let acked = |status: &'static str| metrics::counter!("vmnd_deliver_sm_acked_total", "carrier" => carrier.to_string(), "status" => status);
        SessionMeters {
            received: metrics::counter!("vmnd_deliver_sm_received_total", "carrier" => carrier.to_string()),
            acked_ok: acked("ok"),
            acked_tempfail: acked("tempfail"),
            ack_latency: metrics::histogram!("vmnd_ack_latency_seconds"),
        }
    }
}

/// Binds over `stream` and serves the session until it ends.
pub async fn run(
    ctx: SessionContext,
    stream: TcpStream,
    submits: &mut mpsc::Receiver<SubmitRequest>,
    mut shutdown: watch::Receiver<bool>,
) -> SessionEnd {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let mut reader = FramedRead::with_capacity(read_half, FrameCodec, 64 * 1024);
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel();
    let mut s = Session {
        meters: SessionMeters::new(&ctx.carrier_name),
        ctx,
        writer: BufWriter::with_capacity(64 * 1024, write_half),
        out: BytesMut::with_capacity(4096),
        next_sequence: 1,
        pending: HashMap::new(),
        last_heard: Instant::now(),
        acks_tx,
        unanswered: 0,
        stopping: None,
    };
    if let Err(end) = s.bind(&mut reader).await {
        return end;
    }
    let carrier = s.ctx.carrier_name.to_string();
    s.ctx.state.set_bound(true);
    metrics::gauge!("vmnd_bind_up", "carrier" => carrier.clone()).set(1.0);
    tracing::info!(carrier = %carrier, "bound");
    let end = s
        .serve(&mut reader, &mut acks_rx, submits, &mut shutdown)
        .await;
    s.ctx.state.set_bound(false);
    metrics::gauge!("vmnd_bind_up", "carrier" => carrier.clone()).set(0.0);
    let _ = s.flush().await;
    end
}

type Reader = FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>;

impl Session {
    fn sequence(&mut self) -> u32 {
        let seq = self.next_sequence;
        // Sequence numbers run 0x00000001..=0x7FFFFFFF (SMPP 3.4 5.1.1.4).
        self.next_sequence = if seq >= 0x7FFF_FFFF { 1 } else { seq + 1 };
        seq
    }

    /// Writes one PDU (into the write buffer; to the socket when the buffer fills).
    ///
    /// Every write is bounded by `response_timeout`: an SMSC that keeps the connection open
    /// but stops reading would otherwise hold the session in a write for good, with nothing
    /// else running (no acks, no timeouts, no enquire_link) and the bind looking up.
    async fn send(&mut self, pdu: &Pdu) -> Result<(), SessionEnd> {
        self.out.clear();
        pdu::encode(pdu, &mut self.out);
        let limit = self.ctx.carrier.response_timeout;
        bounded_write(limit, self.writer.write_all(&self.out)).await
    }

    async fn flush(&mut self) -> Result<(), SessionEnd> {
        let limit = self.ctx.carrier.response_timeout;
        bounded_write(limit, self.writer.flush()).await
    }

    async fn request(&mut self, body: Body) -> Result<u32, SessionEnd> {
        self.request_with_reply(body, None).await
    }

    async fn request_with_reply(
        &mut self,
        body: Body,
        reply: Option<oneshot::Sender<SubmitOutcome>>,
    ) -> Result<u32, SessionEnd> {
        let sequence_number = self.sequence();
        let pdu = Pdu {
            command_status: status::ESME_ROK,
            sequence_number,
            body,
        };
        self.pending.insert(
            sequence_number,
            Pending {
                command_id: pdu.command_id(),
                sent: Instant::now(),
                reply,
            },
        );
        self.send(&pdu).await?;
        self.flush().await?;
        Ok(sequence_number)
    }

    async fn bind(&mut self, reader: &mut Reader) -> Result<(), SessionEnd> {
        let c = &self.ctx.carrier;
        let bind = Bind {
            system_id: c.system_id.clone(),
            password: c.password.clone(),
            system_type: c.system_type.clone(),
            interface_version: 0x34,
            addr_ton: 0,
            addr_npi: 0,
            address_range: String::new(),
        };
        let body = match c.bind {
            BindMode::Transceiver => Body::BindTransceiver(bind),
            BindMode::Receiver => Body::BindReceiver(bind),
        };
        let timeout = c.response_timeout;
        let seq = self.request(body).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, reader.next()).await {
                Err(_) => return Err(SessionEnd::Failed("no answer to bind".into())),
                Ok(None) => return Err(SessionEnd::Closed),
                Ok(Some(Err(e))) => return Err(SessionEnd::Failed(format!("read: {e}"))),
                Ok(Some(Ok(frame))) => frame,
            };
            let Frame::Pdu(bytes) = frame else { continue };
            // A sloppy answer to our bind (an unterminated or overlong system_id) still
            // answers it: its status decides, and vmnd never reads the system_id.
            let decoded = pdu::decode(&bytes).or_else(|e| {
                pdu::salvage_response(&bytes)
                    .filter(|p| p.sequence_number == seq)
                    .ok_or(e)
            });
            match decoded {
                Ok(p) if p.sequence_number == seq && is_bind_resp(p.command_id()) => {
                    self.pending.remove(&seq);
                    if p.command_status != status::ESME_ROK {
                        return Err(SessionEnd::BindRefused(p.command_status));
                    }
                    return Ok(());
                }
                Ok(Pdu {
                    body: Body::GenericNack,
                    command_status,
                    sequence_number,
                    ..
                }) if sequence_number == seq => {
                    return Err(SessionEnd::BindRefused(command_status));
                }
                Ok(p) => {
                    // Before the bind completes nothing else is valid (SMPP 3.4 2.3).
                    if let Some(resp) = p.response(status::ESME_RINVBNDSTS) {
                        self.send(&resp).await?;
                        self.flush().await?;
                    }
                }
                Err(e) => {
                    self.send(&pdu::error_response(&e)).await?;
                    self.flush().await?;
                }
            }
        }
    }

    async fn serve(
        &mut self,
        reader: &mut Reader,
        acks: &mut mpsc::UnboundedReceiver<AckOutcome>,
        submits: &mut mpsc::Receiver<SubmitRequest>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let enquire_every = self.ctx.carrier.enquire_link;
        let response_timeout = self.ctx.carrier.response_timeout;
        let tick = (enquire_every.min(response_timeout) / 4).max(Duration::from_millis(20));
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unbind_sent: Option<Instant> = None;
        // Only a transceiver bind may send submit_sm (a receiver bind's SMSC would refuse it).
        let sends = self.ctx.carrier.bind == BindMode::Transceiver;
        let window = self.ctx.carrier.window as usize;
        let mut rate = RateLimit::new(self.ctx.carrier.submit_per_second);
        let mut submits_open = true;
        loop {
            let may_submit =
                sends && submits_open && unbind_sent.is_none() && self.pending.len() < window;
            rate.refill();
            let has_token = rate.tokens >= 1.0;
            let step = tokio::select! {
                biased;
                Some(ack) = acks.recv() => self.on_ack(ack, acks).await,
                request = submits.recv(), if may_submit && has_token => match request {
                    // Stale ones cost no token: after an outage they would slow the rest.
                    Some(request) if request.is_stale() => Ok(()),
                    Some(request) => {
                        rate.try_take();
                        self.submit(request).await
                    }
                    None => {
                        submits_open = false;
                        Ok(())
                    }
                },
                _ = tokio::time::sleep(rate.next_token_in()), if may_submit && !has_token => Ok(()),
                frame = reader.next() => match frame {
                    None => Err(SessionEnd::Closed),
                    Some(Err(e)) => Err(SessionEnd::Failed(format!("read: {e}"))),
                    Some(Ok(frame)) => {
                        let r = self.on_frame(frame).await;
                        // Replies to frames read together go out together; once no whole
                        // frame is left, they go now (the peer may wait for them before it
                        // sends the rest of a PDU already begun).
                        if r.is_ok() && !codec::holds_frame(reader.read_buffer()) {
                            self.flush().await
                        } else {
                            r
                        }
                    }
                },
                _ = timer.tick() => self.on_tick(enquire_every, response_timeout).await,
                changed = shutdown.changed(), if self.stopping.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.stopping = Some(Instant::now());
                    }
                    Ok(())
                }
            };
            if let Err(end) = step {
                return end;
            }
            if let (Some(since), None) = (self.stopping, unbind_sent) {
                if self.unanswered == 0 || since.elapsed() > response_timeout {
                    unbind_sent = Some(Instant::now());
                    if let Err(end) = self.request(Body::Unbind).await {
                        return end;
                    }
                }
            }
            if let Some(sent) = unbind_sent {
                let answered = !self
                    .pending
                    .values()
                    .any(|p| p.command_id == command_id::UNBIND);
                if answered || sent.elapsed() > response_timeout {
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    /// Sends a request the loop found not stale (see `SubmitRequest::is_stale`).
    async fn submit(&mut self, request: SubmitRequest) -> Result<(), SessionEnd> {
        metrics::counter!("vmnd_submit_sm_sent_total", "carrier" => self.ctx.carrier_name.to_string()).increment(1);
        self.request_with_reply(Body::SubmitSm(Box::new(request.sm)), Some(request.reply))
            .await?;
        Ok(())
    }

    async fn on_ack(
        &mut self,
        first: AckOutcome,
        acks: &mut mpsc::UnboundedReceiver<AckOutcome>,
    ) -> Result<(), SessionEnd> {
        let mut next = Some(first);
        while let Some(ack) = next {
            self.unanswered = self.unanswered.saturating_sub(1);
            let resp = Pdu {
                command_status: ack.status,
                sequence_number: ack.sequence_number,
                body: Body::DeliverSmResp {
                    message_id: String::new(),
                },
            };
            self.send(&resp).await?;
            if ack.status == status::ESME_ROK {
                self.meters.acked_ok.increment(1);
            } else {
                self.meters.acked_tempfail.increment(1);
            }
            self.meters
                .ack_latency
                .record(ack.received.elapsed().as_secs_f64());
            next = acks.try_recv().ok();
        }
        self.flush().await
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), SessionEnd> {
        self.last_heard = Instant::now();
        let bytes = match frame {
            Frame::Pdu(bytes) => bytes,
            Frame::BadLength {
                command_length,
                sequence_number,
                ..
            } => {
                tracing::warn!(carrier = %self.ctx.carrier_name, command_length, "PDU with invalid command_length; generic_nack");
                metrics::counter!("vmnd_pdu_errors_total", "carrier" => self.ctx.carrier_name.to_string(), "kind" => "bad_length").increment(1);
                let nack = Pdu {
                    command_status: status::ESME_RINVCMDLEN,
                    sequence_number,
                    body: Body::GenericNack,
                };
                return self.send(&nack).await;
            }
        };
        let p = match pdu::decode(&bytes) {
            Ok(p) => p,
            Err(e) => match pdu::salvage_response(&bytes) {
                // A response is never answered; one that does not decode is read leniently
                // so that the request it answers is settled (see `salvage_response`).
                Some(p) => {
                    tracing::warn!(carrier = %self.ctx.carrier_name, error = ?e, "response does not decode; read leniently");
                    metrics::counter!("vmnd_pdu_errors_total", "carrier" => self.ctx.carrier_name.to_string(), "kind" => "bad_response").increment(1);
                    p
                }
                None => {
                    tracing::warn!(carrier = %self.ctx.carrier_name, error = ?e, "PDU does not decode; answered with an error");
                    metrics::counter!("vmnd_pdu_errors_total", "carrier" => self.ctx.carrier_name.to_string(), "kind" => "bad_body").increment(1);
                    return self.send(&pdu::error_response(&e)).await;
                }
            },
        };
        match p.body {
            Body::DeliverSm(sm) => {
                self.meters.received.increment(1);
                if self.stopping.is_some() {
                    let resp = Pdu {
                        command_status: status::ESME_RX_T_APPN,
                        sequence_number: p.sequence_number,
                        body: Body::DeliverSmResp {
                            message_id: String::new(),
                        },
                    };
                    return self.send(&resp).await;
                }
                let request = JournalRequest {
                    entry: JournalEntry {
                        carrier: self.ctx.carrier_name.to_string(),
                        received_at_ms: clock::now_ms(),
                        pdu: bytes,
                    },
                    decoded: Some(sm),
                    sequence_number: p.sequence_number,
                    received: Instant::now(),
                    reply: self.acks_tx.clone(),
                };
                self.unanswered += 1;
                if self.ctx.journal.submit(request).await.is_err() {
                    // The writer is gone (daemon stopping): a temporary error makes the
                    // carrier retry later.
                    let resp = Pdu {
                        command_status: status::ESME_RX_T_APPN,
                        sequence_number: p.sequence_number,
                        body: Body::DeliverSmResp {
                            message_id: String::new(),
                        },
                    };
                    self.send(&resp).await?;
                }
                Ok(())
            }
            Body::EnquireLink => {
                let resp = Pdu {
                    command_status: status::ESME_ROK,
                    sequence_number: p.sequence_number,
                    body: Body::EnquireLinkResp,
                };
                self.send(&resp).await
            }
            Body::Unbind => {
                tracing::info!(carrier = %self.ctx.carrier_name, "SMSC unbinds");
                let resp = Pdu {
                    command_status: status::ESME_ROK,
                    sequence_number: p.sequence_number,
                    body: Body::UnbindResp,
                };
                self.send(&resp).await?;
                self.flush().await?;
                Err(SessionEnd::Unbound)
            }
            Body::EnquireLinkResp
            | Body::SubmitSmResp { .. }
            | Body::UnbindResp
            | Body::GenericNack
            | Body::BindReceiverResp { .. }
            | Body::BindTransmitterResp { .. }
            | Body::BindTransceiverResp { .. }
            | Body::DeliverSmResp { .. } => {
                match self.pending.remove(&p.sequence_number) {
                    // The sequence number of one request, the command of another: it settles
                    // nothing (an enquire_link_resp must not mark a submit_sm accepted).
                    Some(pending) if !pdu::answers(p.command_id(), pending.command_id) => {
                        tracing::warn!(carrier = %self.ctx.carrier_name, seq = p.sequence_number, response = p.command_id(), request = pending.command_id, "response does not answer the request with its sequence number; ignored");
                        metrics::counter!("vmnd_pdu_errors_total", "carrier" => self.ctx.carrier_name.to_string(), "kind" => "mismatched_response").increment(1);
                        self.pending.insert(p.sequence_number, pending);
                    }
                    Some(pending) => {
                        // generic_nack means "not understood", whatever its status says.
                        let answer = match (&p.body, p.command_status) {
                            (Body::GenericNack, status::ESME_ROK) => status::ESME_RUNKNOWNERR,
                            (_, s) => s,
                        };
                        if answer != status::ESME_ROK {
                            tracing::warn!(carrier = %self.ctx.carrier_name, command_id = pending.command_id, status = %pdu::status_name(answer), "request refused");
                        }
                        if let Some(reply) = pending.reply {
                            let message_id = match &p.body {
                                Body::SubmitSmResp { message_id } => message_id.clone(),
                                _ => String::new(),
                            };
                            let _ = reply.send(SubmitOutcome {
                                status: answer,
                                message_id,
                            });
                        }
                    }
                    None => {
                        tracing::debug!(carrier = %self.ctx.carrier_name, seq = p.sequence_number, "response to nothing we sent; ignored")
                    }
                }
                Ok(())
            }
            Body::SubmitSm(_)
            | Body::BindReceiver(_)
            | Body::BindTransmitter(_)
            | Body::BindTransceiver(_) => {
                // Requests an SMSC must not send to an ESME: refuse, stay bound.
                match p.response(status::ESME_RINVBNDSTS) {
                    Some(resp) => self.send(&resp).await,
                    None => Ok(()),
                }
            }
        }
    }

    async fn on_tick(
        &mut self,
        enquire_every: Duration,
        response_timeout: Duration,
    ) -> Result<(), SessionEnd> {
        if let Some((seq, p)) = self
            .pending
            .iter()
            .find(|(_, p)| p.sent.elapsed() > response_timeout)
        {
            return Err(SessionEnd::Failed(format!(
                "no response to command 0x{:08x} (sequence {seq}) within {response_timeout:?}",
                p.command_id
            )));
        }
        let window = self.ctx.carrier.window as usize;
        if self.last_heard.elapsed() >= enquire_every
            && self.pending.len() < window
            && !self
                .pending
                .values()
                .any(|p| p.command_id == command_id::ENQUIRE_LINK)
        {
            self.request(Body::EnquireLink).await?;
        }
        Ok(())
    }
}

/// A write to the SMSC that ends within `limit`, or the session does.
async fn bounded_write(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), SessionEnd> {
    match tokio::time::timeout(limit, write).await {
        Ok(written) => written.map_err(|e| SessionEnd::Failed(format!("write: {e}"))),
        Err(_) => Err(SessionEnd::Failed(format!(
            "write: the SMSC has not read what was sent for {limit:?}"
        ))),
    }
}

fn is_bind_resp(id: u32) -> bool {
    matches!(
        id,
        command_id::BIND_RECEIVER_RESP
            | command_id::BIND_TRANSCEIVER_RESP
            | command_id::BIND_TRANSMITTER_RESP
    )
}
