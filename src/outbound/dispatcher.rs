//! Runs queued jobs: the in-memory schedule over the durable `jobs` tree.
//!
//! One queue per webhook (so an endpoint that is down never holds up another), ordered by due
//! time, with at most `concurrency` requests in flight per endpoint. Each attempt loads the job
//! and its message, builds the contract's JSON, posts it signed, and writes the outcome back:
//! done (removed), retry (new due time with exponential backoff and jitter) or dead letter
//! (after `retry_for` since the first attempt). The schedule is rebuilt from the `jobs` tree at
//! startup, so a restart resumes everything that was pending.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::clock;
use crate::config::{Config, Webhook};
use crate::outbound::webhook::{self, Attempt, WebhookClient};
use crate::store::queue::{DeadLetter, Job};
use crate::store::{self, MessageRecord, Store};

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// A job to (re)consider at a time.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub due_ms: u64,
    pub id: u64,
    pub webhook: Arc<str>,
}

/// Where the processor announces new jobs.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Scheduled>,
}

impl Scheduler {
    pub fn channel() -> (Scheduler, mpsc::UnboundedReceiver<Scheduled>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Scheduler { tx }, rx)
    }

    pub fn schedule(&self, job: &Job) {
        let _ = self.tx.send(Scheduled {
            due_ms: job.due_ms,
            id: job.id,
            webhook: Arc::from(job.webhook.as_str()),
        });
    }
}

/// The webhook body, exactly the contract's fields (plus `complete`/`missing_parts` for a
/// concatenated message delivered incomplete, and `receipt` for receipts).
#[derive(Serialize)]
struct Payload<'a> {
    event: &'a str,
    id: &'a str,
    to: &'a str,
    from: &'a str,
    text: &'a str,
    keyword: Option<&'a str>,
    inbox: Option<&'a str>,
    args: Option<&'a str>,
    carrier: &'a str,
    received_at: &'a str,
    parts: u32,
    encoding: &'a str,
    #[serde(skip_serializing_if = "is_true")]
    complete: bool,
    #[serde(skip_serializing_if = "<[u8]>::is_empty")]
    missing_parts: &'a [u8],
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<&'a crate::smpp::receipt::Receipt>,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The JSON body for a message record and event.
pub fn payload(record: &MessageRecord, event: &str) -> Vec<u8> {
    let p = Payload {
        event,
        id: &record.id,
        to: &record.to,
        from: &record.from,
        text: &record.text,
        keyword: record.keyword.as_deref(),
        inbox: record.inbox.as_deref(),
        args: record.args.as_deref(),
        carrier: &record.carrier,
        received_at: &record.received_at,
        parts: record.parts,
        encoding: &record.encoding,
        complete: record.complete,
        missing_parts: &record.missing_parts,
        receipt: record.receipt.as_ref(),
    };
    serde_json::to_vec(&p).unwrap_or_default()
}

struct Endpoint {
    config: Webhook,
    uri: Option<hyper::Uri>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    /// Job ids queued or in flight: a job announced twice (recovery announces the jobs it
    /// writes, and the startup scan of the jobs tree finds them too) runs once.
    known: HashSet<u64>,
    in_flight: usize,
}

/// What an attempt task reports back.
struct Finished {
    webhook: Arc<str>,
    id: u64,
    /// Some: retry at this time.
    retry_at: Option<u64>,
}

/// Runs jobs until `shutdown` turns true.
pub async fn run(
    store: Store,
    config: Arc<Config>,
    client: WebhookClient,
    mut incoming: mpsc::UnboundedReceiver<Scheduled>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut endpoints: HashMap<Arc<str>, Endpoint> = config
        .webhooks
        .iter()
        .map(|w| {
            let uri = w.url.parse::<hyper::Uri>().ok();
            (
                Arc::from(w.name.as_str()),
                Endpoint {
                    config: w.clone(),
                    uri,
                    queue: BinaryHeap::new(),
                    known: HashSet::new(),
                    in_flight: 0,
                },
            )
        })
        .collect();
    // Startup: everything in the jobs tree is pending (claims live only in memory).
    match store.job_schedule() {
        Ok(jobs) => {
            for (due, id, webhook) in jobs {
                enqueue(
                    &store,
                    &mut endpoints,
                    Scheduled {
                        due_ms: due,
                        id,
                        webhook: Arc::from(webhook.as_str()),
                    },
                );
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the job queue; pending jobs wait for the next start")
        }
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    loop {
        let now = clock::now_ms();
        let mut next_due: Option<u64> = None;
        for (name, ep) in endpoints.iter_mut() {
            while ep.in_flight < ep.config.concurrency {
                let Some(Reverse((due, id))) = ep.queue.peek().copied() else {
                    break;
                };
                if due > now {
                    next_due = Some(next_due.map_or(due, |n| n.min(due)));
                    break;
                }
                ep.queue.pop();
                ep.in_flight += 1;
                let task = AttemptTask {
                    store: store.clone(),
                    client: client.clone(),
                    webhook: ep.config.clone(),
                    uri: ep.uri.clone(),
                    name: name.clone(),
                    id,
                    done: done_tx.clone(),
                };
                tokio::spawn(task.run());
            }
        }
        let sleep = match next_due {
            Some(due) => Duration::from_millis(due.saturating_sub(now).max(1)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            Some(s) = incoming.recv() => {
                enqueue(&store, &mut endpoints, s);
                while let Ok(s) = incoming.try_recv() {
                    enqueue(&store, &mut endpoints, s);
                }
            }
            Some(f) = done_rx.recv() => {
                finished(&mut endpoints, f);
                while let Ok(f) = done_rx.try_recv() {
                    finished(&mut endpoints, f);
                }
            }
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

fn enqueue(store: &Store, endpoints: &mut HashMap<Arc<str>, Endpoint>, s: Scheduled) {
    match endpoints.get_mut(&s.webhook) {
        Some(ep) => {
            if ep.known.insert(s.id) {
                ep.queue.push(Reverse((s.due_ms, s.id)));
            }
        }
        None => {
            // The config that queued it named a webhook this config lacks: keep it for an
            // operator instead of dropping it.
            let Ok(Some(job)) = store.job(s.id) else {
                return;
            };
            let letter = DeadLetter {
                job,
                dead_at_ms: clock::now_ms(),
                reason: format!("webhook {:?} is no longer configured", s.webhook),
            };
            if let Err(e) = store.job_dead(&letter) {
                tracing::error!(error = %e, "cannot dead-letter job");
            }
        }
    }
}

fn finished(endpoints: &mut HashMap<Arc<str>, Endpoint>, f: Finished) {
    if let Some(ep) = endpoints.get_mut(&f.webhook) {
        ep.in_flight = ep.in_flight.saturating_sub(1);
        match f.retry_at {
            Some(due) => ep.queue.push(Reverse((due, f.id))),
            None => {
                ep.known.remove(&f.id);
            }
        }
    }
}

struct AttemptTask {
    store: Store,
    client: WebhookClient,
    webhook: Webhook,
    uri: Option<hyper::Uri>,
    name: Arc<str>,
    id: u64,
    done: mpsc::UnboundedSender<Finished>,
}

impl AttemptTask {
    async fn run(self) {
        let retry_at = match self.attempt().await {
            Ok(r) => r,
            Err(e) => {
                // The store failed: try again later rather than lose the job.
                tracing::error!(job = self.id, error = %e, "job bookkeeping failed; will retry");
                Some(clock::now_ms() + BASE_BACKOFF.as_millis() as u64 * 5)
            }
        };
        let _ = self.done.send(Finished {
            webhook: self.name,
            id: self.id,
            retry_at,
        });
    }

    async fn attempt(&self) -> store::Result<Option<u64>> {
        let Some(mut job) = self.store.job(self.id)? else {
            return Ok(None); // done meanwhile (e.g. scheduled twice)
        };
        let Some(record) = self.store.message(job.message_id)? else {
            let letter = DeadLetter {
                job,
                dead_at_ms: clock::now_ms(),
                reason: "message record missing".into(),
            };
            self.store.job_dead(&letter)?;
            return Ok(None);
        };
        let body = Bytes::from(payload(&record, &job.event));
        let now = clock::now_ms();
        job.first_attempt_ms.get_or_insert(now);
        job.attempts += 1;
        let outcome = match &self.uri {
            Some(uri) => {
                self.client
                    .post(
                        uri,
                        &record.id,
                        self.webhook.secret.as_deref(),
                        body,
                        self.webhook.timeout,
                    )
                    .await
            }
            None => Attempt::Failed {
                status: None,
                latency: Duration::ZERO,
                error: format!("invalid url {:?}", self.webhook.url),
            },
        };
        let name = self.webhook.name.clone();
        match outcome {
            Attempt::Delivered { latency, .. } => {
                metrics::counter!("vmnd_webhook_attempts_total", "webhook" => name.clone(), "outcome" => "delivered").increment(1);
                metrics::histogram!("vmnd_webhook_latency_seconds", "webhook" => name)
                    .record(latency.as_secs_f64());
                self.store.job_done(job.id)?;
                Ok(None)
            }
            Attempt::Failed {
                status,
                latency,
                error,
            } => {
                metrics::counter!("vmnd_webhook_attempts_total", "webhook" => name.clone(), "outcome" => "failed").increment(1);
                metrics::histogram!("vmnd_webhook_latency_seconds", "webhook" => name.clone())
                    .record(latency.as_secs_f64());
                tracing::debug!(job = job.id, webhook = %name, ?status, %error, "webhook attempt failed");
                job.last_error = Some(error);
                job.last_status = status;
                let now = clock::now_ms();
                let first = job.first_attempt_ms.unwrap_or(now);
                let retry_for = self.webhook.retry_for.as_millis() as u64;
                let delay =
                    webhook::backoff(job.attempts, BASE_BACKOFF, MAX_BACKOFF).as_millis() as u64;
                if now.saturating_sub(first) >= retry_for {
                    metrics::counter!("vmnd_webhook_attempts_total", "webhook" => name, "outcome" => "dead").increment(1);
                    let reason = format!(
                        "gave up after {} attempts over {} ms: {}",
                        job.attempts,
                        now.saturating_sub(first),
                        job.last_error.as_deref().unwrap_or("")
                    );
                    tracing::warn!(job = job.id, %reason, "dead letter");
                    self.store.job_dead(&DeadLetter {
                        job,
                        dead_at_ms: now,
                        reason,
                    })?;
                    Ok(None)
                } else {
                    // Never retry later than the deadline; the last try lands on it.
                    job.due_ms = (now + delay).min(first + retry_for);
                    self.store.job_update(&job)?;
                    Ok(Some(job.due_ms))
                }
            }
        }
    }
}
