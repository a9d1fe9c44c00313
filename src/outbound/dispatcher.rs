//! Runs queued jobs: the in-memory schedule over the durable `jobs` tree.
//!
//! One queue per webhook (so an endpoint that is down never holds up another), ordered by due
//! time, with at most `concurrency` requests in flight per endpoint. Each attempt loads the job
//! and its message, builds the contract's JSON, posts it signed, and writes the outcome back:
//! done (removed), retry (new due time with exponential backoff and jitter) or dead letter
//! (after `retry_for` since the first attempt). The schedule is rebuilt from the `jobs` tree at
//! startup, so a restart resumes everything that was pending. A webhook job handed over with a
//! journal hold is in memory only: every path that finishes with it (done, retry, dead letter,
//! the memory cap, a wait of more than two seconds) writes what it must and then settles the hold
//! (see [`crate::store::hold`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::{mpsc, oneshot, watch};

use crate::actions;
use crate::clock;
use crate::config::{Config, On4xx, Webhook};
use crate::outbound::email::{self, Mailer};
use crate::outbound::sms_text;
use crate::outbound::webhook::{self, Attempt, SendOptions, WebhookClient};
use crate::outbound::webhook_format;
use crate::smpp::pdu::{self, Address, ShortMessage, status};
use crate::smpp::session::SubmitRequest;
use crate::store::hold::JournalHold;
use crate::store::outbound::{OutboundRecord, OutboundSegment};
use crate::store::queue::{AttemptRecord, DeadLetter, EMAIL_QUEUE, Job, SmsJob};
use crate::store::{self, MessageRecord, Store};

/// How long an SMS is retried (throttled, queue full, not bound) before it is dead-lettered.
const SMS_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// A job to (re)consider at a time.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub due_ms: u64,
    pub id: u64,
    pub webhook: Arc<str>,
    /// A job just committed by the processor, with its message: its first attempt needs no
    /// read of either back from sled (two gets and two JSON decodes per delivery).
    pub fresh: Option<Arc<Fresh>>,
}

/// A job and its message, as the processor handed them over.
#[derive(Debug)]
pub struct Fresh {
    pub job: Job,
    pub record: Arc<MessageRecord>,
    /// Some: the job is in memory only, its journal entry kept for it until this is settled
    /// (see [`crate::store::hold`]). None: it is in the `jobs` tree.
    pub hold: Option<JournalHold>,
    /// When it was handed over: a held job waiting longer than `HOLD_AT_MOST` is written to
    /// the `jobs` tree.
    pub since_ms: u64,
}

impl Fresh {
    /// True while the job exists nowhere but here (and in its unreleased journal entry).
    fn only_in_memory(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| !h.is_settled())
    }

    /// Writes a held job to the `jobs` tree and settles its hold; the job stays in memory too.
    fn persist(&self, store: &Store) -> store::Result<()> {
        if let Some(hold) = &self.hold {
            if !hold.is_settled() {
                store.job_update(&self.job)?;
                hold.settle();
            }
        }
        Ok(())
    }
}

/// Most fresh jobs an endpoint keeps in memory. Beyond this (an endpoint that is down while
/// messages keep coming), jobs wait in sled only and are read back when their turn comes, so a
/// backlog costs disk, not memory.
pub const MAX_FRESH: usize = 4096;

/// Longest a held job waits for its first attempt before it is written to the `jobs` tree:
/// its journal entry (and the segment holding it) is kept until then, so an endpoint whose
/// circuit is open, or a long queue, must not keep entries for long.
const HOLD_AT_MOST: Duration = Duration::from_secs(2);
/// How long a stopping dispatcher waits for the requests in flight (see `drain`).
pub const DRAIN_AT_MOST: Duration = Duration::from_secs(5);

/// Jobs the dispatcher holds (queued, scheduled for a retry, or in flight): every job in the
/// durable `jobs` tree, once the startup scan has run. Kept in memory so `/healthz`, `/metrics`
/// and the page do not scan a tree that can hold millions.
#[derive(Clone, Default, Debug)]
pub struct QueueDepth(Arc<std::sync::atomic::AtomicU64>);

impl QueueDepth {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, n: u64) {
        self.0.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where the processor announces new jobs.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Scheduled>,
    spent: Spent,
}

/// The dispatcher's side of a [`Scheduler`]: the jobs announced, and the way back for the
/// fresh jobs it is done with.
pub struct Announced {
    rx: mpsc::UnboundedReceiver<Scheduled>,
    spent: Spent,
}

impl Announced {
    pub async fn recv(&mut self) -> Option<Scheduled> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Result<Scheduled, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }

    /// Hands the fresh jobs of finished attempts back to the processor; leaves `done` empty.
    pub fn give_back(&self, done: &mut Vec<Arc<Fresh>>) {
        self.spent.give_back(done);
    }
}

/// Fresh jobs whose attempts are over, on their way back to the processor to be dropped on
/// its thread.
///
/// Why: the processor allocates a fresh job, its message record and their strings, and the
/// attempt that ends them runs on a runtime worker. mimalloc frees a block from another thread
/// by pushing it on its page's shared list, which the allocating thread must collect before it
/// can use the page again: a dozen such frees per message on one side, and the collecting on
/// the other, where the processor's allocations went through mimalloc's slow path. Dropped by
/// the processor they are local frees. In six alternating pairs of `-- quick e2e` with
/// `pipeline = 16`, the daemon's CPU per message was lower in 5 of 6 at 1 bind (medians 35.0
/// against 38.8 µs) and in 4 of 6 at 4 binds (35.3 against 36.0); see BENCHMARKS.md.
///
/// The processor drops what came back after every batch, at its durable tick (100 ms, also
/// when idle) and while it waits for the dispatcher, so what waits here is at most about
/// 100 ms of deliveries.
#[derive(Clone, Default)]
struct Spent(Arc<Mutex<Vec<Arc<Fresh>>>>);

impl Spent {
    /// Hands `done` over (one lock per batch of finished attempts); leaves it empty.
    fn give_back(&self, done: &mut Vec<Arc<Fresh>>) {
        if done.is_empty() {
            return;
        }
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_empty() {
            std::mem::swap(&mut *held, done);
        } else {
            held.append(done);
        }
    }

    /// Drops everything handed back, on the calling thread.
    fn drop_here(&self) {
        let taken = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        drop(taken);
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Scheduler {
    pub fn channel() -> (Scheduler, Announced) {
        let (tx, rx) = mpsc::unbounded_channel();
        let spent = Spent::default();
        (
            Scheduler {
                tx,
                spent: spent.clone(),
            },
            Announced { rx, spent },
        )
    }

    /// Drops the fresh jobs the dispatcher is done with (see `Spent`). The processor calls
    /// this on its own thread.
    pub fn drop_spent(&self) {
        self.spent.drop_here();
    }

    /// Fresh jobs handed back and not dropped yet.
    pub fn spent_waiting(&self) -> usize {
        self.spent.len()
    }

    /// Announces a job the dispatcher will read from sled when its turn comes.
    pub fn schedule(&self, job: &Job) {
        let _ = self.tx.send(Scheduled {
            due_ms: job.due_ms,
            id: job.id,
            webhook: Arc::from(job.queue_key().as_str()),
            fresh: None,
        });
    }

    /// Announces a job with its message, handing both over in memory: a job the processor
    /// wrote (`hold` None), or one that exists only here until the dispatcher settles `hold`.
    pub fn schedule_fresh(&self, job: Job, record: Arc<MessageRecord>, hold: Option<JournalHold>) {
        let _ = self.tx.send(Scheduled {
            due_ms: job.due_ms,
            id: job.id,
            webhook: Arc::from(job.queue_key().as_str()),
            fresh: Some(Arc::new(Fresh {
                job,
                record,
                hold,
                since_ms: clock::now_ms(),
            })),
        });
    }
}

pub use crate::outbound::webhook_format::payload;

/// Where a queue's jobs go.
#[derive(Clone)]
enum Target {
    /// Shared by every attempt's task: cloning the config for each was measurable.
    Webhook(Arc<WebhookTarget>),
    /// The outbound SMS engine: submit_sm on this carrier's bind.
    Sms {
        carrier: String,
        sender: mpsc::Sender<SubmitRequest>,
        response_timeout: Duration,
    },
    /// E-mail forwards through `[smtp]` (see `outbound::email`).
    Email { mailer: Arc<Mailer> },
}

/// A webhook as the dispatcher uses it.
struct WebhookTarget {
    config: Webhook,
    uri: Option<ParsedUrl>,
    fallback: Option<ParsedUrl>,
    /// This webhook's client: the shared one, or its own when it trusts a private CA or
    /// pipelines (`pipeline`).
    client: WebhookClient,
    /// Its metrics' handles, looked up once rather than for every request.
    meters: WebhookMeters,
}

/// The endpoints by queue name. Fx hashing: the keys are the operator's names and our own job
/// ids, nothing a sender controls, and SipHash on every enqueue and finished attempt was 1%
/// of the daemon's CPU.
type Endpoints = FxHashMap<Arc<str>, Endpoint>;

struct Endpoint {
    target: Target,
    /// Requests in flight at most: the webhook's `concurrency`, the carrier's `window`.
    concurrency: usize,
    /// How long a job is retried before it becomes a dead letter.
    retry_for: Duration,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    /// Job ids queued or in flight: a job announced twice (recovery announces the jobs it
    /// writes, and the startup scan of the jobs tree finds them too) runs once.
    known: FxHashSet<u64>,
    /// Known jobs announced again from the store while they were known: run once more when
    /// their attempt ends. A dead letter replayed while its last attempt was still being
    /// booked is such a job; folded away, it would sit in the jobs tree until a restart.
    announced_again: FxHashSet<u64>,
    /// Jobs handed over in memory, until their first attempt (at most [`MAX_FRESH`]).
    fresh: FxHashMap<u64, Arc<Fresh>>,
    in_flight: usize,
    /// A webhook's circuit breaker (`None` for SMS queues and `breaker_failures = 0`).
    breaker: Option<Breaker>,
    /// `vmnd_queue_depth{queue}`: the handle, so the loop does not look it up each turn.
    depth_gauge: metrics::Gauge,
}

/// Stops hammering an endpoint that keeps failing: after `open_after` consecutive failed
/// requests to its `url`, jobs no longer try it; one job probes it every `probe`, and the
/// first success closes the circuit. With a `fallback_url`, jobs go straight there while the
/// circuit is open; without one they wait in the queue (nothing is lost, nothing dead-letters
/// for an outage it was never allowed to try through).
#[derive(Debug)]
struct Breaker {
    open_after: u32,
    probe: Duration,
    consecutive_failures: u32,
    /// Some: open, and the next probe may start at this time.
    next_probe_ms: Option<u64>,
    /// A probe is running: at most one at a time, whatever goes to the fallback meanwhile.
    probing: bool,
    has_fallback: bool,
}

impl Breaker {
    fn is_open(&self) -> bool {
        self.next_probe_ms.is_some()
    }

    /// A request to the `url` answered (`true`) or failed as an outage (`false`).
    fn observe(&mut self, name: &str, ok: bool, now: u64) {
        if ok {
            self.consecutive_failures = 0;
            if self.next_probe_ms.take().is_some() {
                tracing::info!(webhook = name, "circuit closed: the endpoint answers again");
                metrics::gauge!("vmnd_webhook_circuit_open", "webhook" => name.to_string())
                    .set(0.0);
            }
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.next_probe_ms.is_none() && self.consecutive_failures >= self.open_after {
            tracing::warn!(
                webhook = name,
                failures = self.consecutive_failures,
                probe_every = ?self.probe,
                "circuit open: the endpoint keeps failing; probing it instead of sending everything"
            );
            metrics::counter!("vmnd_webhook_circuit_opened_total", "webhook" => name.to_string())
                .increment(1);
            metrics::gauge!("vmnd_webhook_circuit_open", "webhook" => name.to_string()).set(1.0);
            self.next_probe_ms = Some(now.saturating_add(self.probe.as_millis() as u64));
        }
    }
}

/// How one job may use its webhook's `url` right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The `url` (then the fallback if it fails).
    Primary,
    /// Straight to the `fallback_url`: the circuit is open.
    FallbackOnly,
}

/// What an attempt task reports back.
struct Finished {
    webhook: Arc<str>,
    id: u64,
    /// Some: retry at this time.
    retry_at: Option<u64>,
    /// How the webhook's `url` did, for its circuit breaker: `Some(true)` it answered,
    /// `Some(false)` an outage (no answer, 5xx, 408, 429), `None` not tried or not telling.
    primary_ok: Option<bool>,
    /// The job was the open circuit's probe.
    probe: bool,
    /// A held job whose attempt could not record its outcome (the store failed): it exists
    /// only in memory still, so its retry must get it back.
    unsettled: Option<Arc<Fresh>>,
    /// The attempt's fresh job, to go back to the processor (see [`Spent`]).
    spent: Option<Arc<Fresh>>,
}

/// Runs jobs until `shutdown` turns true, then drains (see `drain`).
pub async fn run(
    store: Store,
    config: Arc<Config>,
    client: WebhookClient,
    submit_senders: Arc<HashMap<String, mpsc::Sender<SubmitRequest>>>,
    mut incoming: Announced,
    mut shutdown: watch::Receiver<bool>,
    depth: QueueDepth,
) {
    let mut endpoints = Endpoints::default();
    for w in &config.webhooks {
        let client = match &w.ca_file {
            None => client.clone(),
            Some(path) => WebhookClient::with_ca_file(path).unwrap_or_else(|e| {
                // Checked when the config was read; a file changed since then shows up as
                // certificate errors on this webhook's attempts.
                tracing::error!(webhook = %w.name, error = %e, "cannot use `ca_file`; trusting the public roots only");
                client.clone()
            }),
        }
        .pipelined(w.pipeline, w.concurrency);
        // The config refused URLs that do not parse, so both are Some.
        let fallback = w.fallback_url.as_deref().and_then(ParsedUrl::parse);
        let has_fallback = fallback.is_some();
        let target = Target::Webhook(Arc::new(WebhookTarget {
            meters: WebhookMeters::new(&w.name),
            config: w.clone(),
            uri: ParsedUrl::parse(&w.url),
            fallback,
            client,
        }));
        let mut endpoint = Endpoint::new(&w.name, target, w.concurrency, w.retry_for);
        if w.breaker_failures > 0 {
            endpoint.breaker = Some(Breaker {
                open_after: w.breaker_failures,
                probe: w.breaker_probe,
                consecutive_failures: 0,
                next_probe_ms: None,
                probing: false,
                has_fallback,
            });
        }
        endpoints.insert(Arc::from(w.name.as_str()), endpoint);
    }
    for c in &config.carriers {
        let Some(sender) = submit_senders.get(&c.name) else {
            continue;
        };
        let target = Target::Sms {
            carrier: c.name.clone(),
            sender: sender.clone(),
            response_timeout: c.response_timeout,
        };
        let name = format!("sms:{}", c.name);
        let endpoint = Endpoint::new(&name, target, c.window.max(1) as usize, SMS_RETRY_FOR);
        endpoints.insert(Arc::from(name.as_str()), endpoint);
    }
    if let Some(smtp) = &config.smtp {
        match Mailer::new(smtp) {
            Ok(mailer) => {
                let target = Target::Email {
                    mailer: Arc::new(mailer),
                };
                endpoints.insert(
                    Arc::from(EMAIL_QUEUE),
                    Endpoint::new(EMAIL_QUEUE, target, smtp.concurrency, smtp.retry_for),
                );
            }
            // Without the queue its jobs become dead letters with this reason nearby in the log.
            Err(e) => tracing::error!(error = %e, "cannot set up e-mail forwarding"),
        }
    }
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
                        fresh: None,
                    },
                );
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the job queue; pending jobs wait for the next start")
        }
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    // Fresh jobs of finished attempts, for the processor to drop (see `Spent`).
    let mut spent = Vec::new();
    let mut hold_sweep = tokio::time::interval(HOLD_AT_MOST / 2);
    hold_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Wakes the loop when the earliest waiting job falls due. One timer, reset only when that
    // time changes: a new `sleep` on every pass registered and removed a timer entry per batch
    // of announcements and finished attempts.
    let due_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(due_timer);
    let mut armed_for: Option<u64> = None;
    loop {
        let mut total = 0;
        for ep in endpoints.values() {
            let held = ep.known.len();
            total += held as u64;
            ep.depth_gauge.set(held as f64);
        }
        depth.set(total);
        let now = clock::now_ms();
        let mut next_due: Option<u64> = None;
        for (name, ep) in endpoints.iter_mut() {
            while ep.in_flight < ep.concurrency {
                let Some(Reverse((due, id))) = ep.queue.peek().copied() else {
                    break;
                };
                if due > now {
                    next_due = Some(next_due.map_or(due, |n| n.min(due)));
                    break;
                }
                let mut probe = false;
                let route = match &mut ep.breaker {
                    Some(b) if b.is_open() => {
                        let probe_at = b.next_probe_ms.unwrap_or(now);
                        if probe_at <= now && !b.probing {
                            // This job is the probe: it tries the `url` first.
                            b.next_probe_ms = Some(now.saturating_add(b.probe.as_millis() as u64));
                            b.probing = true;
                            probe = true;
                            Route::Primary
                        } else if b.has_fallback {
                            Route::FallbackOnly
                        } else {
                            next_due = Some(next_due.map_or(probe_at, |n| n.min(probe_at)));
                            break;
                        }
                    }
                    _ => Route::Primary,
                };
                ep.queue.pop();
                ep.in_flight += 1;
                let fresh = ep.fresh.remove(&id);
                let task = AttemptTask {
                    fresh,
                    store: store.clone(),
                    target: ep.target.clone(),
                    retry_for: ep.retry_for,
                    name: name.clone(),
                    id,
                    route,
                    probe,
                    done: done_tx.clone(),
                };
                tokio::spawn(task.run());
            }
        }
        if let Some(due) = next_due
            && armed_for != Some(due)
        {
            let wait = Duration::from_millis(due.saturating_sub(now).max(1));
            due_timer.as_mut().reset(tokio::time::Instant::now() + wait);
            armed_for = Some(due);
        }
        tokio::select! {
            Some(s) = incoming.recv() => {
                enqueue(&store, &mut endpoints, s);
                while let Ok(s) = incoming.try_recv() {
                    enqueue(&store, &mut endpoints, s);
                }
            }
            Some(f) = done_rx.recv() => {
                spent.extend(finished(&mut endpoints, f));
                while let Ok(f) = done_rx.try_recv() {
                    spent.extend(finished(&mut endpoints, f));
                }
                incoming.give_back(&mut spent);
            }
            _ = &mut due_timer, if armed_for.is_some() => armed_for = None,
            _ = hold_sweep.tick() => {
                persist_held(&store, waiting_holds(&endpoints), "waited for its first attempt").await;
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    drain(&store, &mut endpoints, &mut incoming, &mut done_rx).await;
                    return;
                }
            }
        }
    }
}

/// A stopping dispatcher starts nothing new. It waits up to [`DRAIN_AT_MOST`] for the webhook
/// and e-mail requests in flight to end, so a delivery the endpoint has taken is settled, not made again at the
/// next start. Then it writes every job still held in memory to the `jobs` tree. So the
/// daemon can release their journal entries, and at the next start these jobs run as they
/// were planned, not re-planned from the message under whatever config that start has.
/// What is still in flight after the wait keeps its hold: its entry is processed again at the
/// next start (at least once, DESIGN.md promise 2).
async fn drain(
    store: &Store,
    endpoints: &mut Endpoints,
    incoming: &mut Announced,
    done_rx: &mut mpsc::UnboundedReceiver<Finished>,
) {
    let deadline = tokio::time::Instant::now() + DRAIN_AT_MOST;
    // Not for SMS: the sessions stopped before this, so a submit_sm in flight can only time out
    // (its job is in the `jobs` tree and runs again at the next start).
    let waited_for = |ep: &Endpoint| ep.in_flight > 0 && !matches!(ep.target, Target::Sms { .. });
    while endpoints.values().any(waited_for) {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            // Stopping: what the processor would drop is dropped here.
            Ok(Some(f)) => drop(finished(endpoints, f)),
            Ok(None) => break,
            Err(_) => {
                let in_flight: usize = endpoints
                    .values()
                    .filter(|ep| waited_for(ep))
                    .map(|ep| ep.in_flight)
                    .sum();
                tracing::warn!(
                    in_flight,
                    "stopping with requests still in flight: at the next start they run again (a first webhook attempt from its message's journal entry, anything else from the queue)"
                );
                break;
            }
        }
    }
    while let Ok(s) = incoming.try_recv() {
        enqueue(store, endpoints, s);
    }
    persist_held(store, held_jobs_since(endpoints, u64::MAX), "stopping").await;
}

impl Endpoint {
    fn new(name: &str, target: Target, concurrency: usize, retry_for: Duration) -> Endpoint {
        Endpoint {
            depth_gauge: metrics::gauge!("vmnd_queue_depth", "queue" => name.to_string()),
            target,
            concurrency: concurrency.max(1),
            retry_for,
            queue: BinaryHeap::new(),
            known: FxHashSet::default(),
            announced_again: FxHashSet::default(),
            fresh: FxHashMap::default(),
            in_flight: 0,
            breaker: None,
        }
    }
}

fn enqueue(store: &Store, endpoints: &mut Endpoints, s: Scheduled) {
    match endpoints.get_mut(&s.webhook) {
        Some(ep) => {
            if !ep.known.insert(s.id) {
                // Announced twice (a crash left the job in the `jobs` tree and its journal
                // entry unreleased): the copy already known is durable or held itself.
                match s.fresh.as_ref() {
                    Some(fresh) => {
                        if let Some(hold) = &fresh.hold {
                            hold.settle();
                        }
                    }
                    // From the store: if the known copy is the attempt now ending, this one
                    // runs after it (an attempt that finds the job gone does nothing).
                    None => {
                        ep.announced_again.insert(s.id);
                    }
                }
                return;
            }
            ep.queue.push(Reverse((s.due_ms, s.id)));
            let Some(fresh) = s.fresh else {
                return;
            };
            if ep.fresh.len() < MAX_FRESH {
                ep.fresh.insert(s.id, fresh);
                return;
            }
            // Over the cap: the job waits in sled only. A held one is written there first.
            if let Err(e) = fresh.persist(store) {
                tracing::error!(job = s.id, error = %e, "cannot write a job to the queue; kept in memory");
                ep.fresh.insert(s.id, fresh);
            }
        }
        None => {
            // The config that queued it named a webhook this config lacks: keep it for an
            // operator instead of dropping it.
            let job = match &s.fresh {
                Some(fresh) => fresh.job.clone(),
                None => match store.job(s.id) {
                    Ok(Some(job)) => job,
                    _ => return,
                },
            };
            let letter = DeadLetter {
                job,
                dead_at_ms: clock::now_ms(),
                reason: format!("{:?} is no longer configured", s.webhook),
            };
            match store.job_dead(&letter) {
                Ok(()) => {
                    if let Some(hold) = s.fresh.as_ref().and_then(|f| f.hold.as_ref()) {
                        hold.settle();
                    }
                    // An SMS that will not go: its record says so, as an attempt's would.
                    if let Err(e) = mark_sms_failed(store, &letter.job, &letter.reason) {
                        tracing::error!(job = letter.job.id, error = %e, "cannot mark the SMS failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot dead-letter job"),
            }
        }
    }
}

/// The held jobs that have waited [`HOLD_AT_MOST`] for their first attempt (a queue behind a
/// slow endpoint, an open circuit): to be written to the `jobs` tree, so their journal entries
/// can go.
fn waiting_holds(endpoints: &Endpoints) -> Vec<Arc<Fresh>> {
    let oldest_allowed = clock::now_ms().saturating_sub(HOLD_AT_MOST.as_millis() as u64);
    held_jobs_since(endpoints, oldest_allowed)
}

/// Jobs still held only in memory that were handed over at or before `at_most_ms`.
fn held_jobs_since(endpoints: &Endpoints, at_most_ms: u64) -> Vec<Arc<Fresh>> {
    endpoints
        .values()
        .flat_map(|ep| ep.fresh.values())
        .filter(|f| f.since_ms <= at_most_ms && f.only_in_memory())
        .cloned()
        .collect()
}

/// Writes held jobs to the `jobs` tree, on the blocking pool: up to [`MAX_FRESH`] sled inserts
/// per endpoint must not stall the runtime thread that the HTTP connections also run on.
async fn persist_held(store: &Store, held: Vec<Arc<Fresh>>, why: &'static str) {
    if held.is_empty() {
        return;
    }
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        for fresh in &held {
            if let Err(e) = fresh.persist(&store) {
                tracing::error!(job = fresh.job.id, error = %e, why, "cannot write a held job to the queue; its message's journal entry stays, to be processed again at the next start");
                return;
            }
        }
    })
    .await;
    if let Err(e) = written {
        tracing::error!(error = %e, why, "writing held jobs to the queue failed");
    }
}

/// Books a finished attempt; returns its fresh job, for the processor to drop.
fn finished(endpoints: &mut Endpoints, f: Finished) -> Option<Arc<Fresh>> {
    if let Some(ep) = endpoints.get_mut(&f.webhook) {
        ep.in_flight = ep.in_flight.saturating_sub(1);
        if let Some(breaker) = &mut ep.breaker {
            if f.probe {
                breaker.probing = false;
            }
            if let Some(ok) = f.primary_ok {
                breaker.observe(&f.webhook, ok, clock::now_ms());
            }
        }
        match f.retry_at {
            Some(due) => {
                // Queued again anyway: the new announcement is this retry.
                ep.announced_again.remove(&f.id);
                ep.queue.push(Reverse((due, f.id)));
                if let Some(fresh) = f.unsettled {
                    ep.fresh.insert(f.id, fresh);
                }
            }
            None if ep.announced_again.remove(&f.id) => {
                ep.queue.push(Reverse((clock::now_ms(), f.id)));
            }
            None => {
                ep.known.remove(&f.id);
            }
        }
    }
    f.spent
}

struct AttemptTask {
    /// The job and its message when handed over in memory (first attempt only).
    fresh: Option<Arc<Fresh>>,
    store: Store,
    target: Target,
    retry_for: Duration,
    name: Arc<str>,
    id: u64,
    route: Route,
    /// This job probes an open circuit.
    probe: bool,
    done: mpsc::UnboundedSender<Finished>,
}

/// How one attempt went, whatever the target.
enum Outcome {
    Done,
    /// Worth another try later.
    Retry {
        error: String,
        status: Option<u16>,
    },
    /// Will never work (a carrier's permanent refusal, a webhook's 4xx): dead-letter now.
    GiveUp {
        error: String,
        /// The HTTP status that refused it, for the dead letter.
        status: Option<u16>,
    },
}

impl AttemptTask {
    async fn run(self) {
        let mut primary_ok = None;
        let mut unsettled = None;
        // Boxed: the attempt's future is kilobytes (an HTTP exchange, an SMS submit or an
        // e-mail), and a task's future is moved into place when it is spawned; the small one
        // moves, the large one is allocated where it stays.
        let retry_at = match Box::pin(self.attempt(&mut primary_ok)).await {
            Ok(r) => {
                // Done, dead-lettered or written for its retry: whatever it needed is stored.
                if let Some(hold) = self.fresh.as_ref().and_then(|f| f.hold.as_ref()) {
                    hold.settle();
                }
                r
            }
            Err(e) => {
                // The store failed: try again later rather than lose the job. A job held in
                // memory goes back with its hold, since the store may not have it.
                tracing::error!(job = self.id, error = %e, "job bookkeeping failed; will retry");
                unsettled = self.fresh.clone().filter(|f| f.only_in_memory());
                Some(clock::now_ms() + BASE_BACKOFF.as_millis() as u64 * 5)
            }
        };
        let _ = self.done.send(Finished {
            webhook: self.name,
            id: self.id,
            retry_at,
            primary_ok,
            probe: self.probe,
            unsettled,
            spent: self.fresh,
        });
    }

    /// Runs the job once and records what happened; Some(time) to retry at.
    async fn attempt(&self, primary_ok: &mut Option<bool>) -> store::Result<Option<u64>> {
        let mut job = match &self.fresh {
            Some(fresh) => fresh.job.clone(),
            None => match self.store.job(self.id) {
                Ok(Some(job)) => job,
                Ok(None) => return Ok(None), // done meanwhile (e.g. scheduled twice)
                // Damaged on disk: retrying would read the same bytes every few seconds for
                // ever. Left for an operator, like the startup scan leaves it.
                Err(store::StoreError::Corrupt(e)) => {
                    tracing::error!(job = self.id, error = %e, "a job record does not decode; left in the queue, not run");
                    metrics::counter!("vmnd_jobs_unreadable_total").increment(1);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            },
        };
        let now = clock::now_ms();
        job.first_attempt_ms.get_or_insert(now);
        job.attempts += 1;
        let outcome = match &self.target {
            Target::Webhook(target) => self.post_webhook(&job, target, primary_ok).await?,
            Target::Sms {
                carrier,
                sender,
                response_timeout,
            } => {
                self.send_sms(&mut job, carrier, sender, *response_timeout)
                    .await?
            }
            Target::Email { mailer } => {
                let record = self.fresh.as_ref().map(|f| f.record.clone());
                match mailer.attempt(&self.store, &mut job, record).await? {
                    email::Sent::Done => Outcome::Done,
                    email::Sent::Retry(error) => Outcome::Retry {
                        error,
                        status: None,
                    },
                    email::Sent::GiveUp(error) => Outcome::GiveUp {
                        error,
                        status: None,
                    },
                }
            }
        };
        let name = self.name.to_string();
        match outcome {
            Outcome::Done => {
                // A job held in memory was never written: nothing to remove.
                if !self.fresh.as_ref().is_some_and(|f| f.only_in_memory()) {
                    self.store.job_done(job.id)?;
                }
                Ok(None)
            }
            Outcome::GiveUp { error, status } => {
                metrics::counter!("vmnd_jobs_dead_total", "queue" => name).increment(1);
                job.last_status = status;
                job.last_error = Some(error.clone());
                self.dead_letter(job, format!("refused: {error}"))?;
                Ok(None)
            }
            Outcome::Retry { error, status } => {
                tracing::debug!(job = job.id, queue = %name, ?status, %error, "attempt failed");
                job.last_error = Some(error);
                job.last_status = status;
                let now = clock::now_ms();
                let first = job.first_attempt_ms.unwrap_or(now);
                let retry_for = self.retry_for.as_millis() as u64;
                let delay =
                    webhook::backoff(job.attempts, BASE_BACKOFF, MAX_BACKOFF).as_millis() as u64;
                if now.saturating_sub(first) >= retry_for {
                    metrics::counter!("vmnd_jobs_dead_total", "queue" => name).increment(1);
                    let reason = format!(
                        "gave up after {} attempts over {} ms: {}",
                        job.attempts,
                        now.saturating_sub(first),
                        job.last_error.as_deref().unwrap_or("")
                    );
                    self.dead_letter(job, reason)?;
                    Ok(None)
                } else {
                    // Never retry later than the deadline; the last try lands on it.
                    job.due_ms = now
                        .saturating_add(delay)
                        .min(first.saturating_add(retry_for));
                    self.store.job_update(&job)?;
                    Ok(Some(job.due_ms))
                }
            }
        }
    }

    fn dead_letter(&self, job: Job, reason: String) -> store::Result<()> {
        tracing::warn!(job = job.id, %reason, "dead letter");
        if job.sms.is_some() {
            mark_sms_failed(&self.store, &job, &reason)?;
        }
        self.store.job_dead(&DeadLetter {
            job,
            dead_at_ms: clock::now_ms(),
            reason,
        })
    }

    /// Delivers a webhook job: to the `url` (unless the circuit is open), then to the
    /// `fallback_url` if the `url` had an outage. Records every request it made.
    async fn post_webhook(
        &self,
        job: &Job,
        target: &WebhookTarget,
        primary_ok: &mut Option<bool>,
    ) -> store::Result<Outcome> {
        let WebhookTarget {
            config,
            client,
            meters,
            ..
        } = target;
        let urls = WebhookUrls {
            primary: target.uri.as_ref(),
            fallback: target.fallback.as_ref(),
        };
        let record = match &self.fresh {
            Some(fresh) => fresh.record.clone(),
            None => match self.store.message(job.message_id)? {
                Some(record) => Arc::new(record),
                None => {
                    return Ok(Outcome::GiveUp {
                        error: "message record missing".into(),
                        status: None,
                    });
                }
            },
        };
        let options = SendOptions {
            event_id: &record.id,
            secret: config.secret.as_deref(),
            auth: config.auth.as_ref(),
            headers: &config.headers,
            timeout: config.timeout,
        };
        let mut tries: Vec<(bool, String, Attempt)> = Vec::with_capacity(2);
        let targets = match self.route {
            Route::Primary => [
                urls.primary.map(|u| (false, u)),
                urls.fallback.map(|u| (true, u)),
            ],
            Route::FallbackOnly => [urls.fallback.map(|u| (true, u)), None],
        };
        if urls.primary.is_none() && self.route == Route::Primary {
            tries.push((
                false,
                config.url.clone(),
                Attempt::Failed {
                    status: None,
                    latency: Duration::ZERO,
                    error: format!("invalid url {:?}", config.url),
                },
            ));
        }
        // A request that cannot be built (a GET whose query would pass http's length limit)
        // fails the same way at every attempt: not an outage, and not worth retrying.
        let mut unsendable = None;
        for (fallback, url) in targets.into_iter().flatten() {
            let attempt = match webhook_format::request(config, &url.uri, &record, &job.event) {
                Ok(request) => client.send(&request, &options).await,
                Err(error) => {
                    unsendable = Some(error.clone());
                    tries.push((
                        fallback,
                        url.text.clone(),
                        Attempt::Failed {
                            status: None,
                            latency: Duration::ZERO,
                            error,
                        },
                    ));
                    break;
                }
            };
            let outage = is_outage(&attempt);
            meters.attempts[usize::from(fallback)][usize::from(attempt.is_delivered())]
                .increment(1);
            meters.latency.record(attempt.latency().as_secs_f64());
            if !fallback {
                *primary_ok = match (&attempt, outage) {
                    (Attempt::Delivered { .. }, _) => Some(true),
                    (_, true) => Some(false),
                    // A 4xx: the endpoint is up and refuses this request.
                    (_, false) => None,
                };
            }
            tries.push((fallback, url.text.clone(), attempt));
            // Only an outage sends the request on to the fallback; a 4xx would be refused there
            // too (same request) and is the tenant's to fix.
            if !outage {
                break;
            }
        }
        let delivered = tries.iter().any(|(_, _, a)| a.is_delivered());
        let now = clock::now_ms();
        for (fallback, url, attempt) in &tries {
            let record = AttemptRecord {
                attempt: job.attempts,
                at_ms: now,
                url: url.clone(),
                outcome: if attempt.is_delivered() {
                    "delivered"
                } else {
                    "failed"
                }
                .to_string(),
                status: attempt.status(),
                latency_ms: attempt.latency().as_secs_f64() * 1000.0,
                error: match attempt {
                    Attempt::Failed { error, .. } => Some(error.clone()),
                    Attempt::Delivered { .. } => None,
                },
            };
            self.store.record_attempt(job.id, *fallback, &record)?;
        }
        if delivered {
            return Ok(Outcome::Done);
        }
        if let Some(error) = unsendable {
            return Ok(Outcome::GiveUp {
                error: format!("cannot build the request: {error}"),
                status: None,
            });
        }
        let Some((fallback, _, Attempt::Failed { status, error, .. })) = tries.last() else {
            // Circuit open, no fallback configured: the dispatcher does not start such a job.
            return Ok(Outcome::Retry {
                error: "circuit open".into(),
                status: None,
            });
        };
        // `on_4xx` is about the endpoint refusing the request. The fallback is only tried when
        // the endpoint had an outage (or its circuit is open): a 4xx from the fallback, whose
        // service may take other credentials, is no refusal by the endpoint, which may take
        // the request once it is back.
        let refused =
            !fallback && status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429);
        if refused && config.on_4xx == On4xx::DeadLetter {
            return Ok(Outcome::GiveUp {
                error: error.clone(),
                status: *status,
            });
        }
        Ok(Outcome::Retry {
            error: error.clone(),
            status: *status,
        })
    }

    /// Sends the segments not yet accepted, one submit_sm each, through the carrier's bind.
    async fn send_sms(
        &self,
        job: &mut Job,
        carrier: &str,
        sender: &mpsc::Sender<SubmitRequest>,
        response_timeout: Duration,
    ) -> store::Result<Outcome> {
        let Some(sms) = job.sms.clone() else {
            return Ok(Outcome::GiveUp {
                error: "not an SMS job".into(),
                status: None,
            });
        };
        let segments = sms_text::segments(&sms.text, sms.reference);
        // The record as it starts, written at the first change. Every change below is a
        // compare-and-swap on the stored record (`Store::update_outbound`): receipts for the
        // segments already accepted may come back while later ones are sent.
        let initial = OutboundRecord {
            error: truncation(&sms.text),
            ..new_outbound_record(job, &sms)
        };
        if let (Some(note), true) = (&initial.error, sms.sent.is_empty()) {
            tracing::warn!(job = job.id, to = %sms.to, "{note}");
            metrics::counter!("vmnd_sms_truncated_total", "purpose" => sms.purpose.clone())
                .increment(1);
        }
        // DESIGN.md promise 3: nothing reaches a person who opted out of the number but the
        // one confirmation. Checked at send time, so replies queued or scheduled before the
        // opt-out are cancelled too.
        if !actions::CONSENT_EXEMPT_PURPOSES.contains(&sms.purpose.as_str())
            && self.store.is_opted_out(&sms.from, &sms.to)?
        {
            metrics::counter!("vmnd_sms_suppressed_total", "purpose" => sms.purpose.clone())
                .increment(1);
            tracing::info!(job = job.id, to = %sms.to, from = %sms.from, "SMS suppressed: the recipient opted out");
            self.store.update_outbound(job.id, &initial, |record| {
                record.state = "suppressed".to_string();
                record.error = Some(format!("{} opted out of {}", sms.to, sms.from));
                record.updated_ms = clock::now_ms();
            })?;
            return Ok(Outcome::Done);
        }
        for (index, segment) in segments.iter().enumerate() {
            let index = index as u8;
            if sms.sent.iter().any(|(i, _)| *i == index) {
                continue;
            }
            let [ton, npi] = sms.to_ton_npi.unwrap_or([1, 1]);
            let sm = ShortMessage {
                source: source_address(&sms.from),
                dest: Address {
                    ton,
                    npi,
                    addr: sms.to.clone(),
                },
                esm_class: segment.esm_class,
                data_coding: segment.data_coding,
                // Ask for a delivery receipt: it is correlated back to this record.
                registered_delivery: 1,
                short_message: Bytes::from(segment.short_message.clone()),
                ..Default::default()
            };
            let (reply, answer) = oneshot::channel();
            // The session sends it within one response_timeout of now or not at all, and
            // ends itself one response_timeout (and a tick) after sending it unanswered: three
            // are enough to hear back either way, so a request sent is never abandoned here.
            let queued = tokio::time::Instant::now();
            let request = SubmitRequest {
                sm,
                reply,
                send_by: (queued + response_timeout).into_std(),
            };
            // The queue is full while the carrier is not bound: wait no longer than the
            // session would take the request, so the job retries and, in the end, dead-letters.
            match tokio::time::timeout_at(queued + response_timeout, sender.send(request)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Ok(Outcome::Retry {
                        error: format!("carrier {carrier} is not running"),
                        status: None,
                    });
                }
                Err(_) => {
                    return Ok(Outcome::Retry {
                        error: format!("carrier {carrier}: not bound (its submit queue is full)"),
                        status: None,
                    });
                }
            }
            let outcome = match tokio::time::timeout_at(queued + response_timeout * 3, answer).await
            {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => {
                    return Ok(Outcome::Retry {
                        error: format!(
                            "carrier {carrier}: not sent (not bound in time) or the session ended before submit_sm_resp"
                        ),
                        status: None,
                    });
                }
                Err(_) => {
                    return Ok(Outcome::Retry {
                        error: format!("carrier {carrier}: not bound or no submit_sm_resp in time"),
                        status: None,
                    });
                }
            };
            metrics::counter!("vmnd_submit_sm_resp_total", "carrier" => carrier.to_string(), "status" => pdu::status_name(outcome.status)).increment(1);
            match outcome.status {
                status::ESME_ROK => {
                    self.store
                        .index_carrier_message_id(carrier, &outcome.message_id, job.id)?;
                    if let Some(sms) = job.sms.as_mut() {
                        sms.sent.push((index, outcome.message_id.clone()));
                    }
                    // Both before the next segment: a crash now re-sends only what is left.
                    self.store.job_update(job)?;
                    self.store.update_outbound(job.id, &initial, |record| {
                        record.segments.retain(|s| s.seq != index);
                        record.segments.push(OutboundSegment {
                            seq: index,
                            carrier_message_id: outcome.message_id.clone(),
                            receipt: None,
                        });
                        record.updated_ms = clock::now_ms();
                    })?;
                }
                s if is_transient_submit_error(s) => {
                    self.store.update_outbound(job.id, &initial, |_| {})?;
                    return Ok(Outcome::Retry {
                        error: format!("carrier {carrier}: {}", pdu::status_name(s)),
                        status: None,
                    });
                }
                s => {
                    self.store.update_outbound(job.id, &initial, |_| {})?;
                    return Ok(Outcome::GiveUp {
                        error: format!(
                            "carrier {carrier} refused submit_sm: {}",
                            pdu::status_name(s)
                        ),
                        status: None,
                    });
                }
            }
        }
        self.store.update_outbound(job.id, &initial, |record| {
            // Receipts of the segments sent first may be back already.
            record.state = store::outbound::receipt_state(&record.segments)
                .unwrap_or("sent")
                .to_string();
            record.updated_ms = clock::now_ms();
        })?;
        metrics::counter!("vmnd_sms_sent_total", "carrier" => carrier.to_string(), "purpose" => sms.purpose.clone()).increment(1);
        Ok(Outcome::Done)
    }
}

/// What the record says of a text longer than [`sms_text::MAX_SEGMENTS`] segments can carry:
/// only their worth is sent (a forward of a very long message, or a long template).
fn truncation(text: &str) -> Option<String> {
    let plan = sms_text::plan(text);
    plan.is_truncated().then(|| {
        format!(
            "the text needs {} segments; only the first {} were sent",
            plan.segments,
            sms_text::MAX_SEGMENTS
        )
    })
}

/// Marks an SMS job's record failed (creating it if the job never got as far), for a job
/// that becomes a dead letter. Nothing for other jobs.
fn mark_sms_failed(store: &Store, job: &Job, reason: &str) -> store::Result<()> {
    if let Some(sms) = &job.sms {
        store.update_outbound(job.id, &new_outbound_record(job, sms), |record| {
            record.state = "failed".to_string();
            record.error = Some(reason.to_string());
            record.updated_ms = clock::now_ms();
        })?;
    }
    Ok(())
}

fn new_outbound_record(job: &Job, sms: &SmsJob) -> OutboundRecord {
    OutboundRecord {
        id: store::format_id(job.id),
        message_id: store::format_id(job.message_id),
        purpose: sms.purpose.clone(),
        carrier: sms.carrier.clone(),
        from: sms.from.clone(),
        to: sms.to.clone(),
        text: sms.text.clone(),
        state: "queued".to_string(),
        segments: Vec::new(),
        error: None,
        created_ms: job.created_ms,
        updated_ms: clock::now_ms(),
    }
}

/// The handles of a webhook's metrics.
struct WebhookMeters {
    /// `vmnd_webhook_attempts_total{webhook, target, outcome}`, by target (`url`,
    /// `fallback`), then outcome (`failed`, `delivered`).
    attempts: [[metrics::Counter; 2]; 2],
    /// `vmnd_webhook_latency_seconds{webhook}`.
    latency: metrics::Histogram,
}

impl WebhookMeters {
    fn new(name: &str) -> WebhookMeters {
        let attempts = |target: &'static str, outcome: &'static str| metrics::counter!("vmnd_webhook_attempts_total", "webhook" => name.to_string(), "outcome" => outcome, "target" => target);
        WebhookMeters {
            attempts: [
                [attempts("url", "failed"), attempts("url", "delivered")],
                [
                    attempts("fallback", "failed"),
                    attempts("fallback", "delivered"),
                ],
            ],
            latency: metrics::histogram!("vmnd_webhook_latency_seconds", "webhook" => name.to_string()),
        }
    }
}

/// The `url` and `fallback_url` of a webhook job.
#[derive(Clone, Copy)]
struct WebhookUrls<'a> {
    primary: Option<&'a ParsedUrl>,
    fallback: Option<&'a ParsedUrl>,
}

/// A webhook URL parsed once, with the text its attempt records show.
struct ParsedUrl {
    uri: hyper::Uri,
    text: String,
}

impl ParsedUrl {
    fn parse(url: &str) -> Option<ParsedUrl> {
        let uri: hyper::Uri = url.parse().ok()?;
        Some(ParsedUrl {
            text: uri.to_string(),
            uri,
        })
    }
}

/// A failure that says the endpoint is down or overloaded (no answer, 5xx, 408, 429), as
/// opposed to one refusing this request (another 4xx) or a success.
fn is_outage(attempt: &Attempt) -> bool {
    match attempt {
        Attempt::Delivered { .. } => false,
        Attempt::Failed { status, .. } => {
            status.is_none_or(|s| s >= 500 || s == 408 || s == 429 || s < 400)
        }
    }
}

/// Statuses after which the same submit_sm may succeed later (SMPP 3.4 5.1.3; throttling and
/// a full queue are the carrier asking us to slow down).
fn is_transient_submit_error(status: u32) -> bool {
    matches!(
        status,
        status::ESME_RTHROTTLED
            | status::ESME_RMSGQFUL
            | status::ESME_RSYSERR
            | status::ESME_RX_T_APPN
    )
}

/// The number an SMS leaves from: a 6-digit short code is network-specific (TON 3, NPI 0), a
/// 10-digit long code a national number (TON 2, NPI 1 E.164).
pub fn source_address(vmn: &str) -> Address {
    let (ton, npi) = if vmn.len() <= 8 { (3, 0) } else { (2, 1) };
    Address {
        ton,
        npi,
        addr: vmn.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hold::HoldBook;

    fn job(id: u64, webhook: &str) -> Job {
        Job {
            id,
            message_id: id >> 8,
            webhook: webhook.to_string(),
            event: "message".to_string(),
            attempts: 0,
            created_ms: 1,
            due_ms: 1,
            first_attempt_ms: None,
            last_error: None,
            last_status: None,
            sms: None,
            email: None,
        }
    }

    fn record() -> Arc<MessageRecord> {
        Arc::new(crate::store::tests::sample_message(1))
    }

    /// A held job announced to `webhook` just now.
    fn held(book: &HoldBook, id: u64, webhook: &str) -> (Scheduled, Arc<Fresh>) {
        held_since(book, id, webhook, clock::now_ms())
    }

    /// A held job announced to `webhook` at `since_ms`.
    fn held_since(
        book: &HoldBook,
        id: u64,
        webhook: &str,
        since_ms: u64,
    ) -> (Scheduled, Arc<Fresh>) {
        let hold = book.hold(id >> 8, 1).pop();
        let fresh = Arc::new(Fresh {
            job: job(id, webhook),
            record: record(),
            hold,
            since_ms,
        });
        let s = Scheduled {
            due_ms: 1,
            id,
            webhook: Arc::from(webhook),
            fresh: Some(fresh.clone()),
        };
        (s, fresh)
    }

    fn endpoints() -> Endpoints {
        let (sender, _) = mpsc::channel(1);
        let target = Target::Sms {
            carrier: "sim".into(),
            sender,
            response_timeout: Duration::from_secs(1),
        };
        let mut map = Endpoints::default();
        map.insert(
            Arc::from("crm"),
            Endpoint::new("crm", target, 1, Duration::from_secs(60)),
        );
        map
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 16, false).unwrap();
        (dir, store)
    }

    #[test]
    fn a_held_job_past_the_memory_cap_is_written_before_its_hold_is_settled() {
        let (_dir, store) = store();
        let book = HoldBook::default();
        let mut eps = endpoints();
        let mut kept = Vec::new();
        for n in 0..MAX_FRESH as u64 {
            let (s, fresh) = held(&book, (n + 1) << 8, "crm");
            enqueue(&store, &mut eps, s);
            kept.push(fresh);
        }
        assert!(kept.iter().all(|f| f.only_in_memory()));
        assert_eq!(
            store.job(1 << 8).unwrap(),
            None,
            "within the cap: memory only"
        );
        let over = ((MAX_FRESH as u64) + 1) << 8;
        let (s, fresh) = held(&book, over, "crm");
        enqueue(&store, &mut eps, s);
        assert_eq!(store.job(over).unwrap(), Some(fresh.job.clone()));
        assert!(!fresh.only_in_memory());
        assert_eq!(book.take_settled(), vec![MAX_FRESH as u64 + 1]);
        assert_eq!(eps["crm"].queue.len(), MAX_FRESH + 1, "still queued");
    }

    #[test]
    fn a_job_announced_twice_runs_once_and_the_second_hold_is_settled() {
        let (_dir, store) = store();
        let book = HoldBook::default();
        let mut eps = endpoints();
        let (first, first_fresh) = held(&book, 5 << 8, "crm");
        enqueue(&store, &mut eps, first);
        let (again, again_fresh) = held(&book, 5 << 8, "crm");
        enqueue(&store, &mut eps, again);
        assert_eq!(eps["crm"].queue.len(), 1);
        assert!(first_fresh.only_in_memory(), "the first copy still holds");
        assert!(!again_fresh.only_in_memory());
    }

    #[test]
    fn a_held_job_for_a_webhook_no_longer_configured_is_dead_lettered_from_memory() {
        let (_dir, store) = store();
        let book = HoldBook::default();
        let mut eps = endpoints();
        let (s, fresh) = held(&book, 9 << 8, "gone");
        enqueue(&store, &mut eps, s);
        let letter = store.dead_letter(9 << 8).unwrap().expect("dead letter");
        assert_eq!(letter.job, fresh.job);
        assert!(letter.reason.contains("no longer configured"));
        assert_eq!(book.take_settled(), vec![9]);
    }

    /// A dead letter replayed while the attempt that dead-lettered it was still being booked:
    /// the replay's announcement finds the job known (in flight) and must not be folded away.
    #[test]
    fn a_job_announced_again_while_its_attempt_ends_runs_again() {
        let (_dir, store) = store();
        let mut eps = endpoints();
        let id = 4 << 8;
        let durable = || Scheduled {
            due_ms: 1,
            id,
            webhook: Arc::from("crm"),
            fresh: None,
        };
        enqueue(&store, &mut eps, durable());
        // Taken for its attempt.
        let ep = eps.get_mut("crm").unwrap();
        ep.queue.pop();
        ep.in_flight = 1;
        // The replay announces it while the attempt's end is not booked yet.
        enqueue(&store, &mut eps, durable());
        let ended = || Finished {
            webhook: Arc::from("crm"),
            id,
            retry_at: None,
            primary_ok: None,
            probe: false,
            unsettled: None,
            spent: None,
        };
        finished(&mut eps, ended());
        let ep = &eps["crm"];
        assert_eq!(ep.queue.len(), 1, "queued to run again");
        assert!(ep.known.contains(&id));
        // That run ends: forgotten as usual.
        let ep = eps.get_mut("crm").unwrap();
        ep.queue.pop();
        ep.in_flight = 1;
        finished(&mut eps, ended());
        assert!(eps["crm"].queue.is_empty() && !eps["crm"].known.contains(&id));
    }

    /// On a paused clock: waiting for the submit_sm would move it to the drain's deadline.
    #[tokio::test(start_paused = true)]
    async fn a_stop_writes_held_jobs_and_does_not_wait_for_an_sms_in_flight() {
        let (_dir, store) = store();
        let book = HoldBook::default();
        let mut eps = endpoints(); // "crm" is an SMS queue here
        let (s, fresh) = held(&book, 3 << 8, "crm");
        enqueue(&store, &mut eps, s);
        eps.get_mut("crm").unwrap().in_flight = 1;
        let (_scheduler, mut incoming) = Scheduler::channel();
        let (_done_tx, mut done_rx) = mpsc::unbounded_channel();
        let started = tokio::time::Instant::now();
        drain(&store, &mut eps, &mut incoming, &mut done_rx).await;
        assert!(
            started.elapsed() < DRAIN_AT_MOST,
            "waited {:?} for a submit_sm whose session is gone",
            started.elapsed()
        );
        assert!(!fresh.only_in_memory(), "settled by being written");
        assert_eq!(store.job(3 << 8).unwrap(), Some(fresh.job.clone()));
        assert_eq!(book.take_settled(), vec![3]);
    }

    #[tokio::test]
    async fn only_held_jobs_that_waited_too_long_are_written() {
        let (_dir, store) = store();
        let book = HoldBook::default();
        let mut eps = endpoints();
        let (s, young) = held(&book, 1 << 8, "crm");
        enqueue(&store, &mut eps, s);
        let waited = clock::now_ms() - HOLD_AT_MOST.as_millis() as u64 - 1;
        let (s, old) = held_since(&book, 2 << 8, "crm", waited);
        enqueue(&store, &mut eps, s);
        persist_held(&store, waiting_holds(&eps), "test").await;
        assert!(young.only_in_memory());
        assert_eq!(store.job(1 << 8).unwrap(), None);
        assert!(!old.only_in_memory());
        assert_eq!(store.job(2 << 8).unwrap(), Some(old.job.clone()));
        assert_eq!(book.take_settled(), vec![2]);
        assert!(
            eps["crm"].fresh.contains_key(&(2 << 8)),
            "kept for its attempt"
        );
    }

    /// The dispatcher on a config with carrier "sim" (response_timeout [`SMS_RT`]), its submit
    /// queue of `capacity` read by the test instead of a session. Returns the queue's sender too
    /// (to fill it) and the stop switch (the dispatcher stops when it is dropped).
    fn sms_dispatcher(
        capacity: usize,
    ) -> (
        tempfile::TempDir,
        Store,
        Scheduler,
        mpsc::Receiver<SubmitRequest>,
        mpsc::Sender<SubmitRequest>,
        watch::Sender<bool>,
    ) {
        let (dir, store) = store();
        let text = format!(
            "[daemon]\ndata_dir = \"{}\"\n\n[[carrier]]\nname = \"sim\"\nhost = \"127.0.0.1\"\nport = 9\nsystem_id = \"vmnd\"\npassword = \"secret\"\nresponse_timeout = \"{}ms\"\n",
            dir.path().display(),
            SMS_RT.as_millis()
        );
        let (config, _) = crate::config::parse(&text, "test.toml", &|_| None).unwrap();
        let (tx, rx) = mpsc::channel(capacity);
        let senders = Arc::new(HashMap::from([("sim".to_string(), tx.clone())]));
        let (scheduler, announced) = Scheduler::channel();
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(run(
            store.clone(),
            Arc::new(config),
            WebhookClient::new(),
            senders,
            announced,
            stop_rx,
            QueueDepth::default(),
        ));
        (dir, store, scheduler, rx, tx, stop)
    }

    const SMS_RT: Duration = Duration::from_millis(300);

    /// An SMS job for carrier "sim", written to the jobs tree (as the processor writes them)
    /// and announced.
    fn schedule_sms(store: &Store, scheduler: &Scheduler, id: u64) {
        let job = Job {
            sms: Some(SmsJob {
                carrier: "sim".into(),
                from: "567678".into(),
                to: "919800000011".into(),
                text: "hello".into(),
                purpose: "reply".into(),
                reference: 1,
                sent: Vec::new(),
                to_ton_npi: None,
            }),
            ..job(id, "")
        };
        store.job_update(&job).unwrap();
        scheduler.schedule_fresh(job, record(), None);
    }

    /// Polls (for up to 5 s) until the job's last error is set; returns it.
    async fn last_error(store: &Store, id: u64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(error) = store.job(id).unwrap().and_then(|j| j.last_error) {
                return error;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the attempt never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// While the carrier is not bound, its submit queue fills up. An attempt waits for room
    /// no longer than a session would take the request, then retries; so, in the end, the
    /// job dead-letters instead of waiting for good with its slot taken.
    #[tokio::test]
    async fn an_attempt_does_not_wait_for_good_on_a_full_submit_queue() {
        let (_dir, store, scheduler, _rx, tx, _stop) = sms_dispatcher(1);
        let (reply, _answer) = oneshot::channel();
        tx.try_send(SubmitRequest {
            sm: ShortMessage::default(),
            reply,
            send_by: std::time::Instant::now(),
        })
        .expect("room for one");
        schedule_sms(&store, &scheduler, 7 << 8);
        let error = last_error(&store, 7 << 8).await;
        assert!(error.contains("submit queue is full"), "{error}");
    }

    /// A request carries the time until which a session may still send it, one
    /// response_timeout after it was queued; the dispatcher waits for the answer two more
    /// past that, longer than a session waits for a response before it ends. A request
    /// taken late is therefore dropped unsent (and retried), never sent after the dispatcher
    /// gave up on it, which would send the SMS twice.
    #[tokio::test]
    async fn a_request_is_sent_only_while_its_sender_still_waits_for_the_answer() {
        let (_dir, store, scheduler, mut rx, _tx, _stop) = sms_dispatcher(4);
        schedule_sms(&store, &scheduler, 8 << 8);
        let request = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a request in time")
            .expect("the queue is open");
        assert!(!request.is_stale());
        assert!(request.send_by <= std::time::Instant::now() + SMS_RT);
        let send_by = tokio::time::Instant::from_std(request.send_by);
        tokio::time::sleep_until(send_by).await;
        assert!(request.is_stale(), "a session could still send it");
        // Taken just before `send_by`, it would be answered within a response_timeout (and
        // a tick) or its session would end: the dispatcher is still waiting then.
        tokio::time::sleep_until(send_by + SMS_RT * 2 - Duration::from_millis(100)).await;
        assert!(
            !request.reply.is_closed(),
            "the dispatcher gave up too soon"
        );
        let SubmitRequest { reply, .. } = request;
        reply
            .send(crate::smpp::session::SubmitOutcome {
                status: status::ESME_ROK,
                message_id: "m1".into(),
            })
            .expect("still waited for");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.job(8 << 8).unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let record = store.outbound(8 << 8).unwrap().expect("its record");
        assert_eq!(record.state, "sent");
        assert_eq!(record.segments[0].carrier_message_id, "m1");
        assert!(rx.try_recv().is_err(), "sent once");
    }

    /// A text longer than 255 segments can carry is sent as far as they go, and its record
    /// says so (it used to be cut without a word).
    #[tokio::test]
    async fn a_text_past_255_segments_is_cut_and_the_record_says_so() {
        let (_dir, store, scheduler, mut rx, _tx, _stop) = sms_dispatcher(4);
        let job = Job {
            sms: Some(SmsJob {
                carrier: "sim".into(),
                from: "567678".into(),
                to: "919800000011".into(),
                text: "a".repeat(255 * 153 + 1),
                purpose: "forward".into(),
                reference: 1,
                sent: Vec::new(),
                to_ton_npi: None,
            }),
            ..job(9 << 8, "")
        };
        store.job_update(&job).unwrap();
        scheduler.schedule_fresh(job, record(), None);
        for n in 0..255 {
            let request = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a request in time")
                .expect("open");
            let _ = request.reply.send(crate::smpp::session::SubmitOutcome {
                status: status::ESME_ROK,
                message_id: format!("m{n}"),
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.job(9 << 8).unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rx.try_recv().is_err(), "no 256th segment");
        let record = store.outbound(9 << 8).unwrap().expect("its record");
        assert_eq!(
            (record.state.as_str(), record.segments.len()),
            ("sent", 255)
        );
        assert_eq!(
            record.error.as_deref(),
            Some("the text needs 256 segments; only the first 255 were sent")
        );
    }

    /// The fresh job of a finished attempt is not dropped on the runtime's worker: it waits
    /// for the processor, which drops it on its own thread (see `Spent`).
    #[tokio::test]
    async fn a_delivered_fresh_job_goes_back_to_be_dropped_by_the_processor() {
        use crate::http_sink::{HttpSink, SinkMode};
        let sink = HttpSink::start(SinkMode::Ok).await.unwrap();
        let (dir, store) = store();
        let text = format!(
            "[daemon]\ndata_dir = \"{}\"\n\n[[webhook]]\nname = \"crm\"\nurl = \"{}\"\nretry_for = \"1h\"\n",
            dir.path().display(),
            sink.url("/sms")
        );
        let (config, _) = crate::config::parse(&text, "test.toml", &|_| None).unwrap();
        let (scheduler, announced) = Scheduler::channel();
        let (stop, stop_rx) = watch::channel(false);
        let dispatcher = tokio::spawn(run(
            store.clone(),
            Arc::new(config),
            WebhookClient::new(),
            Arc::new(HashMap::new()),
            announced,
            stop_rx,
            QueueDepth::default(),
        ));
        let book = HoldBook::default();
        let hold = book.hold(1, 1).pop();
        let record = record();
        let watched = Arc::downgrade(&record);
        scheduler.schedule_fresh(job(1 << 8, "crm"), record, hold);
        assert!(sink.wait_for(1, Duration::from_secs(10)).await, "delivered");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while scheduler.spent_waiting() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(scheduler.spent_waiting(), 1, "handed back once booked");
        assert!(
            watched.upgrade().is_some(),
            "the message record is still alive, waiting for the processor"
        );
        scheduler.drop_spent();
        assert_eq!(scheduler.spent_waiting(), 0);
        assert!(watched.upgrade().is_none(), "dropped by drop_spent");
        assert_eq!(book.take_settled(), vec![1], "the hold was settled");
        stop.send(true).unwrap();
        dispatcher.await.unwrap();
    }

    #[test]
    fn a_held_job_whose_bookkeeping_failed_comes_back_for_its_retry() {
        let book = HoldBook::default();
        let mut eps = endpoints();
        let (_, fresh) = held(&book, 3 << 8, "crm");
        eps.get_mut("crm").unwrap().in_flight = 1;
        finished(
            &mut eps,
            Finished {
                webhook: Arc::from("crm"),
                id: 3 << 8,
                retry_at: Some(10),
                primary_ok: None,
                probe: false,
                unsettled: Some(fresh),
                spent: None,
            },
        );
        let ep = &eps["crm"];
        assert_eq!(ep.in_flight, 0);
        assert!(ep.fresh.contains_key(&(3 << 8)));
        assert_eq!(ep.queue.peek(), Some(&Reverse((10, 3 << 8))));
    }
}
