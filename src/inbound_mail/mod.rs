//! Replies by e-mail come back as SMS. The operator's MTA hands mail for `[smtp] reply_domain`
//! to an LMTP listener on loopback (`lmtp_listen`); each recipient `reply+<token>@reply_domain`
//! names, through the token a forward carried in its `Reply-To` (see `outbound::email`), the
//! person who texted and the number they texted. The reply's own text then leaves from that
//! number through the outbound SMS engine, where consent is enforced like for any reply.
//!
//! - [`lmtp`]: the protocol (RFC 2033), one task per connection;
//! - [`reply`]: what the reply says, without quoted history and signatures;
//! - this module: the decisions (which recipients are accepted, whether the sender may answer,
//!   the SMS job) and the record of every e-mail, accepted or rejected (`store::mail`).
//!
//! As in mini-redis, [`serve`] takes the listener and the shutdown signal so tests drive it;
//! a connection's failure is logged where its task is spawned and never stops the listener.

pub mod lmtp;
pub mod reply;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::clock;
use crate::config::Config;
use crate::outbound::dispatcher::Scheduler;
use crate::outbound::email::is_reply_token;
use crate::store::mail::{MailReply, ReplyToken};
use crate::store::queue::{Job, SmsJob};
use crate::store::{self, Store};

/// Connections served at once; one more is told to come back later (421).
const MAX_CONNECTIONS: usize = 32;

/// The longest SMS a reply becomes, in characters (about six concatenated GSM segments); the
/// rest is cut with an ellipsis, and the record says so.
pub const MAX_REPLY_CHARS: usize = 900;

/// An LMTP reply: code, enhanced status code (RFC 3463) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            text: text.into(),
        }
    }

    /// The reply as sent: `CODE STATUS TEXT\r\n` (the text kept to one line).
    pub fn line(&self) -> String {
        let text: String = self
            .text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("{} {} {}\r\n", self.code, self.status, text)
    }
}

/// A recipient refused at `RCPT TO`: the reply, a label for the metric, the token if any.
struct Refusal {
    reply: Reply,
    label: &'static str,
    token: Option<String>,
}

/// A recipient accepted at `RCPT TO`.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub rcpt: String,
    pub token: String,
    pub record: ReplyToken,
}

/// What the listener works with.
pub struct MailContext {
    pub store: Store,
    pub config: Arc<Config>,
    pub scheduler: Scheduler,
}

/// Binds `lmtp_listen` (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How often expired reply tokens are removed while the daemon runs (they only take room: a
/// reply to one is refused either way).
pub const PRUNE_TOKENS_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes expired reply tokens now and then every `every`, until `shutdown` turns true. The
/// scan runs on the blocking pool: a busy number can hold millions of tokens.
pub async fn prune_tokens(
    store: Store,
    every: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let store = store.clone();
                let pruned = tokio::task::spawn_blocking(move || {
                    store.prune_reply_tokens(clock::now_ms())
                })
                .await;
                match pruned {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(removed = n, "expired e-mail reply tokens removed"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune e-mail reply tokens"),
                    Err(e) => tracing::warn!(error = %e, "reply token pruning stopped unexpectedly"),
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Accepts LMTP connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<MailContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "LMTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(async move {
                            if let Err(e) = lmtp::session(stream, &ctx, shutdown).await {
                                tracing::debug!(%peer, error = %e, "LMTP connection ended");
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tokio::spawn(lmtp::refuse(stream));
                    }
                }
            }
            changed = shutdown.changed() => {
                // A dropped sender means the daemon is gone: stop too rather than spin.
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

impl MailContext {
    /// Decides on `RCPT TO:<rcpt>`: a known, unexpired token at the reply domain.
    /// Rejections are recorded and counted here.
    pub fn check_recipient(&self, envelope_from: &str, rcpt: &str) -> Result<Recipient, Reply> {
        self.recipient(rcpt).map_err(|refusal| {
            self.record_rejection(
                envelope_from,
                rcpt,
                refusal.token,
                None,
                &refusal.reply,
                refusal.label,
            );
            refusal.reply
        })
    }

    fn recipient(&self, rcpt: &str) -> Result<Recipient, Refusal> {
        let Some(smtp) = &self.config.smtp else {
            return Err(Refusal {
                reply: Reply::new(550, "5.1.1", "e-mail replies are not configured"),
                label: "unknown_token",
                token: None,
            });
        };
        let (local, domain) = rcpt.rsplit_once('@').unwrap_or((rcpt, ""));
        if !domain.eq_ignore_ascii_case(&smtp.reply_domain) {
            return Err(Refusal {
                reply: Reply::new(
                    550,
                    "5.1.2",
                    format!(
                        "<{rcpt}>: this server takes replies for {} only",
                        smtp.reply_domain
                    ),
                ),
                label: "wrong_domain",
                token: None,
            });
        }
        let local = local.to_ascii_lowercase();
        let token = local.strip_prefix("reply+").unwrap_or("");
        if !is_reply_token(token) {
            return Err(Refusal {
                reply: Reply::new(
                    550,
                    "5.1.1",
                    format!("<{rcpt}>: no such reply address (expected reply+<token>)"),
                ),
                label: "unknown_token",
                token: None,
            });
        }
        let record = match self.store.reply_token(token) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Err(Refusal {
                    reply: Reply::new(550, "5.1.1", format!("<{rcpt}>: unknown reply address")),
                    label: "unknown_token",
                    token: Some(token.to_string()),
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read reply tokens");
                return Err(Refusal {
                    reply: Reply::new(451, "4.3.0", "temporary failure of the message store"),
                    label: "store_error",
                    token: Some(token.to_string()),
                });
            }
        };
        if record.expires_ms <= clock::now_ms() {
            return Err(Refusal {
                reply: Reply::new(
                    550,
                    "5.1.1",
                    format!(
                        "<{rcpt}>: this reply address expired at {}; the customer's message is too old to answer by e-mail",
                        clock::rfc3339_ms(record.expires_ms)
                    ),
                ),
                label: "expired_token",
                token: Some(token.to_string()),
            });
        }
        Ok(Recipient {
            rcpt: rcpt.to_string(),
            token: token.to_string(),
            record,
        })
    }

    /// The reply for one accepted recipient at the end of `DATA`: the SMS is queued (durably,
    /// before 250 goes out), or the reason it is not.
    pub async fn deliver(
        &self,
        envelope_from: &str,
        recipient: &Recipient,
        parsed: Option<&reply::ParsedReply>,
    ) -> Reply {
        let token = Some(recipient.token.clone());
        let reject = |reply: Reply, label: &'static str, from: Option<String>| {
            self.record_rejection(
                envelope_from,
                &recipient.rcpt,
                token.clone(),
                from,
                &reply,
                label,
            );
            reply
        };
        let Some(parsed) = parsed else {
            return reject(
                Reply::new(554, "5.6.0", "the message has no readable headers"),
                "unreadable",
                None,
            );
        };
        let record = &recipient.record;
        // The From: header is who wrote it (an MTA may rewrite the envelope sender for
        // forwarding or bounces); the envelope is the fallback when there is no header.
        let sender = parsed
            .from
            .clone()
            .unwrap_or_else(|| envelope_from.to_ascii_lowercase());
        if !record
            .allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&sender))
        {
            return reject(
                Reply::new(
                    550,
                    "5.7.1",
                    format!("<{sender}> may not answer this conversation"),
                ),
                "foreign_sender",
                Some(sender),
            );
        }
        let from = Some(sender.clone());
        if let Some(marker) = &parsed.automatic {
            // An out-of-office notice answering the forward must not reach the customer; taken
            // (a refusal would only bounce back to a responder) and recorded, not texted.
            let reply = Reply::new(
                250,
                "2.6.0",
                format!("automatic reply ({marker}): recorded, not texted"),
            );
            self.record(
                envelope_from,
                recipient,
                from,
                &reply,
                "ignored",
                "automatic",
            );
            return reply;
        }
        let number = self.config.number(&record.vmn);
        let Some(carrier) = number.and_then(|n| n.carrier.clone()) else {
            return reject(
                Reply::new(
                    550,
                    "5.3.0",
                    format!(
                        "number {} no longer sends SMS (not served, or no carrier)",
                        record.vmn
                    ),
                ),
                "unserved",
                from,
            );
        };
        if record.msisdn.is_empty() || !record.msisdn.bytes().all(|b| b.is_ascii_digit()) {
            return reject(
                Reply::new(
                    550,
                    "5.1.1",
                    format!("the original sender {:?} cannot receive SMS", record.msisdn),
                ),
                "unreachable",
                from,
            );
        }
        if parsed.text.is_empty() {
            return reject(
                Reply::new(
                    550,
                    "5.6.0",
                    "the reply has no text of its own once quoted history and signature are removed",
                ),
                "empty",
                from,
            );
        }
        let mut text: String = parsed.text.chars().take(MAX_REPLY_CHARS).collect();
        if text.len() < parsed.text.len() {
            text.pop();
            text.push('…');
        }
        match self
            .queue_sms(envelope_from, recipient, &sender, &carrier, &text)
            .await
        {
            Ok(job_id) => {
                metrics::counter!("vmnd_email_replies_total", "outcome" => "accepted", "reason" => "accepted").increment(1);
                Reply::new(
                    250,
                    "2.1.5",
                    format!("reply queued as SMS {}", store::format_id(job_id)),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot queue an e-mail reply");
                metrics::counter!("vmnd_email_replies_total", "outcome" => "deferred", "reason" => "store_error").increment(1);
                Reply::new(451, "4.3.0", "temporary failure of the message store")
            }
        }
    }

    /// Writes the SMS job with the record of the reply, makes both durable, then schedules it.
    async fn queue_sms(
        &self,
        envelope_from: &str,
        recipient: &Recipient,
        sender: &str,
        carrier: &str,
        text: &str,
    ) -> store::Result<u64> {
        let record = &recipient.record;
        // An id of its own from the journal's id space (as a batch base, so no journal entry
        // ever has it), as action 0.
        let base = self.store.next_id()? << 12;
        let now = clock::now_ms();
        let job = Job {
            id: Job::id_for(base, 0),
            message_id: store::parse_id(&record.message_id).unwrap_or(0),
            webhook: String::new(),
            event: "email_reply".to_string(),
            attempts: 0,
            created_ms: now,
            due_ms: now,
            first_attempt_ms: None,
            last_error: None,
            last_status: None,
            sms: Some(SmsJob {
                carrier: carrier.to_string(),
                from: record.vmn.clone(),
                to: record.msisdn.clone(),
                text: text.to_string(),
                purpose: "email_reply".to_string(),
                reference: (base >> 12) as u8,
                sent: Vec::new(),
                // The reply token keeps the digits only: international, as forwards are.
                to_ton_npi: None,
            }),
            email: None,
        };
        let mut reply = MailReply {
            id: String::new(),
            received_at: clock::rfc3339_ms(now),
            received_at_ms: now,
            envelope_from: envelope_from.to_string(),
            from: Some(sender.to_string()),
            rcpt: recipient.rcpt.clone(),
            token: Some(recipient.token.clone()),
            outcome: "accepted".to_string(),
            code: 250,
            reason: "reply queued as SMS".to_string(),
            vmn: Some(record.vmn.clone()),
            msisdn: Some(record.msisdn.clone()),
            job_id: Some(store::format_id(job.id)),
            text: Some(text.to_string()),
        };
        self.store.record_mail_reply(&mut reply, Some(&job))?;
        self.store.commit().await?;
        self.scheduler.schedule(&job);
        tracing::info!(job = job.id, vmn = %record.vmn, to = %record.msisdn, "e-mail reply queued as SMS");
        Ok(job.id)
    }

    /// Records and counts a message taken but not texted (`outcome` "ignored").
    fn record(
        &self,
        envelope_from: &str,
        recipient: &Recipient,
        from: Option<String>,
        reply: &Reply,
        outcome: &'static str,
        label: &'static str,
    ) {
        self.record_outcome(
            envelope_from,
            &recipient.rcpt,
            Some(recipient.token.clone()),
            from,
            reply,
            (outcome, label),
        );
    }

    /// Records and counts a rejection (a failure to record is logged: the answer stands).
    fn record_rejection(
        &self,
        envelope_from: &str,
        rcpt: &str,
        token: Option<String>,
        from: Option<String>,
        reply: &Reply,
        label: &'static str,
    ) {
        self.record_outcome(envelope_from, rcpt, token, from, reply, ("rejected", label));
    }

    /// `(outcome, label)`: what the record says and the metric's `reason`.
    fn record_outcome(
        &self,
        envelope_from: &str,
        rcpt: &str,
        token: Option<String>,
        from: Option<String>,
        reply: &Reply,
        (outcome, label): (&'static str, &'static str),
    ) {
        metrics::counter!("vmnd_email_replies_total", "outcome" => outcome, "reason" => label)
            .increment(1);
        tracing::info!(%rcpt, from = %envelope_from, code = reply.code, reason = %reply.text, outcome, "e-mail reply not texted");
        let (vmn, msisdn) = token
            .as_deref()
            .and_then(|t| self.store.reply_token(t).ok().flatten())
            .map(|r| (Some(r.vmn), Some(r.msisdn)))
            .unwrap_or((None, None));
        let now = clock::now_ms();
        let mut record = MailReply {
            id: String::new(),
            received_at: clock::rfc3339_ms(now),
            received_at_ms: now,
            envelope_from: envelope_from.to_string(),
            from,
            rcpt: rcpt.to_string(),
            token,
            outcome: outcome.to_string(),
            code: reply.code,
            reason: reply.text.clone(),
            vmn,
            msisdn,
            job_id: None,
            text: None,
        };
        if let Err(e) = self.store.record_mail_reply(&mut record, None) {
            tracing::error!(error = %e, "cannot record a rejected e-mail reply");
        }
    }

    /// Records a message refused as a whole (too big, unreadable) for every recipient.
    pub fn reject_message(
        &self,
        envelope_from: &str,
        recipient: &Recipient,
        reply: &Reply,
        label: &'static str,
    ) {
        self.record_rejection(
            envelope_from,
            &recipient.rcpt,
            Some(recipient.token.clone()),
            None,
            reply,
            label,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mail::tests::token;
    use std::time::Duration;

    #[tokio::test]
    async fn tokens_that_expire_while_running_are_pruned_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let now = clock::now_ms();
        store.put_reply_token("old", &token(now - 1)).unwrap();
        store.put_reply_token("soon", &token(now + 150)).unwrap();
        store
            .put_reply_token("later", &token(now + 3_600_000))
            .unwrap();
        let (stop, shutdown) = watch::channel(false);
        let pruner = tokio::spawn(prune_tokens(
            store.clone(),
            Duration::from_millis(50),
            shutdown,
        ));
        let started = std::time::Instant::now();
        while store.reply_token("soon").unwrap().is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "a token that expired after the start was never pruned"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.reply_token("old").unwrap(), None);
        assert!(
            store.reply_token("later").unwrap().is_some(),
            "unexpired tokens stay"
        );
        stop.send(true).unwrap();
        pruner.await.unwrap();
    }
}
