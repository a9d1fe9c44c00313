//! Wires the parts together for `vmnd run` and `vmnd demo`: store, group-commit writer,
//! processor, job dispatcher, one supervisor per carrier, the admin server and, with `[smtp]`,
//! the LMTP listener for replies by e-mail. `start` returns
//! a handle the caller stops with `shutdown`, so tests and the demo drive the same code as
//! systemd does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{self, Config, KeywordRule};
use crate::inbound_mail::{self, MailContext};
use crate::outbound::dispatcher::{self, Scheduler};
use crate::outbound::webhook::WebhookClient;
use crate::processor::Processor;
use crate::routing::router::Router;
use crate::smpp::session::{SessionContext, SubmitRequest};
use crate::smpp::supervisor::{self, CarrierState};
use crate::store::hold::HoldBook;
use crate::store::{Store, writer};
use arc_swap::ArcSwap;

/// A running daemon.
pub struct Daemon {
    pub store: Store,
    pub config: Arc<Config>,
    /// Where the admin server really listens (useful when configured with port 0).
    pub admin_addr: SocketAddr,
    /// Where the LMTP listener for e-mail replies really listens, when `[smtp]` is configured.
    pub lmtp_addr: Option<SocketAddr>,
    pub carriers: Arc<Vec<(String, Arc<CarrierState>)>>,
    shutdown: watch::Sender<bool>,
    supervisors: Vec<JoinHandle<()>>,
    /// The SMPP sessions' own runtime (see `SessionRuntime`).
    sessions: SessionRuntime,
    /// Ends once every session's journal handle is gone (the writer stops, then its channel to
    /// the processor closes); joined at shutdown so the store is really closed afterwards.
    processor: std::thread::JoinHandle<()>,
    /// Journal entries whose in-memory jobs the dispatcher settled after the processor's last
    /// flush are released at shutdown (see [`crate::store::hold`]).
    holds: HoldBook,
    /// Told to stop after the processor, whose last jobs it still takes; joined before the
    /// final release, since its drain settles holds (see `dispatcher::run`).
    dispatcher: JoinHandle<()>,
    stop_dispatcher: watch::Sender<bool>,
    others: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Opens the store, recovers what a previous run left, and starts every task.
    pub async fn start(config: Config) -> Result<Daemon, String> {
        match crate::allocator::tune() {
            crate::allocator::Tuning::Unrecognised(value) => tracing::warn!(
                value,
                "mimalloc's purge_delay option is not where mimalloc 3 keeps it; memory is returned to the system at mimalloc's pace"
            ),
            tuning => tracing::debug!(?tuning, "allocator"),
        }
        let config = Arc::new(config);
        let d = &config.daemon;
        let store = Store::open(&d.data_dir, d.cache_mb, d.fsync)
            .map_err(|e| format!("cannot open the store in {}: {e}", d.data_dir.display()))?;
        let metrics = admin::metrics_handle();
        // The outbound opt-out check answers from sled until this in-memory index is built; a
        // scan of ten million contacts takes seconds, so it runs beside startup, not before it.
        let index_store = store.clone();
        std::thread::Builder::new()
            .name("vmnd-optout-index".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match index_store.build_opt_out_index() {
                    Ok(len) => tracing::info!(
                        contacts = len,
                        ms = started.elapsed().as_millis() as u64,
                        "opt-out index built"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "cannot build the opt-out index; the check keeps asking the store"
                    ),
                }
            })
            .map_err(|e| format!("cannot start the opt-out index thread: {e}"))?;
        // Bound before any task starts, so that an address in use stops the start cleanly.
        let lmtp_listener = match &config.smtp {
            Some(smtp) => Some(inbound_mail::bind(smtp.lmtp_listen).await.map_err(|e| {
                format!("cannot listen on {} (lmtp_listen): {e}", smtp.lmtp_listen)
            })?),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);

        let (scheduler, scheduled) = Scheduler::channel();
        let mail_scheduler = scheduler.clone();
        let runtime = runtime_keywords(&store, &config)?;
        let router = Arc::new(ArcSwap::from_pointee(Router::with_runtime(
            &config, &runtime,
        )));
        let admin_scheduler = scheduler.clone();
        let mut processor = Processor::new(store.clone(), &config, router.clone(), scheduler);
        let holds = processor.holds();
        let recovered = processor
            .recover()
            .map_err(|e| format!("cannot recover the journal: {e}"))?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "processed journal entries left by the previous run"
            );
        }
        // One submit_sm queue per carrier: the outbound SMS engine sends, the carrier's
        // current session takes.
        let mut submit_senders = HashMap::new();
        let mut submit_receivers = Vec::new();
        for carrier in &config.carriers {
            let (tx, rx) = mpsc::channel::<SubmitRequest>(carrier.window.max(1) as usize * 4);
            // A receiver bind never sends: without a sender its SMS jobs (queued while the
            // config still made it a transceiver) become dead letters instead of waiting on
            // a queue nobody takes from.
            if carrier.bind == crate::config::BindMode::Transceiver {
                submit_senders.insert(carrier.name.clone(), tx);
            }
            submit_receivers.push(rx);
        }
        let (journal_ids_tx, journal_ids_rx) = writer::handoff(config.daemon.backlog_in_memory);
        let journal = writer::spawn(store.clone(), journal_ids_tx);
        // The processor does blocking sled work in bursts of up to a thousand messages: on its
        // own thread it cannot hold up the sessions' acknowledgements or the dispatcher.
        let processor_thread = std::thread::Builder::new()
            .name("vmnd-processor".into())
            .spawn(move || {
                crate::thread_priority::yield_cpu_to_acknowledgements();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(processor.run(journal_ids_rx)),
                    Err(e) => tracing::error!(error = %e, "cannot start the processor's runtime"),
                }
            })
            .map_err(|e| format!("cannot start the processor thread: {e}"))?;
        let mut others = Vec::new();
        // Histogram samples wait in the recorder until they are folded into buckets, which
        // only a scrape of /metrics or this upkeep does: without it, a daemon nobody scrapes
        // would keep every latency sample it ever recorded.
        let upkeep = metrics.clone();
        let mut upkeep_shutdown = shutdown_rx.clone();
        others.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => upkeep.run_upkeep(),
                    _ = upkeep_shutdown.changed() => {
                        if *upkeep_shutdown.borrow() {
                            return;
                        }
                    }
                }
            }
        }));
        let queue_depth = dispatcher::QueueDepth::default();
        let (stop_dispatcher, stop_dispatcher_rx) = watch::channel(false);
        let dispatcher = tokio::spawn(dispatcher::run(
            store.clone(),
            config.clone(),
            WebhookClient::new(),
            Arc::new(submit_senders),
            scheduled,
            stop_dispatcher_rx,
            queue_depth.clone(),
        ));

        let listener = admin::bind(d.admin_listen)
            .await
            .map_err(|e| format!("cannot listen on {} (admin_listen): {e}", d.admin_listen))?;
        let admin_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let lmtp_addr = match lmtp_listener {
            Some(listener) => {
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                others.push(tokio::spawn(inbound_mail::prune_tokens(
                    store.clone(),
                    inbound_mail::PRUNE_TOKENS_EVERY,
                    shutdown_rx.clone(),
                )));
                let ctx = Arc::new(MailContext {
                    store: store.clone(),
                    config: config.clone(),
                    scheduler: mail_scheduler,
                });
                others.push(tokio::spawn(inbound_mail::serve(
                    listener,
                    ctx,
                    shutdown_rx.clone(),
                )));
                Some(addr)
            }
            None => None,
        };

        let carriers: Arc<Vec<(String, Arc<CarrierState>)>> = Arc::new(
            config
                .carriers
                .iter()
                .map(|c| (c.name.clone(), Arc::new(CarrierState::default())))
                .collect(),
        );
        let sessions = SessionRuntime::start()?;
        let mut supervisors = Vec::new();
        for ((carrier, (_, state)), submits) in config
            .carriers
            .iter()
            .zip(carriers.iter())
            .zip(submit_receivers)
        {
            let ctx = SessionContext {
                carrier: carrier.clone(),
                carrier_name: Arc::from(carrier.name.as_str()),
                journal: journal.clone(),
                state: state.clone(),
            };
            supervisors.push(sessions.spawn(supervisor::supervise(
                ctx,
                submits,
                shutdown_rx.clone(),
            )));
        }
        let admin_state = AdminState {
            store: store.clone(),
            config: config.clone(),
            router: router.clone(),
            carriers: carriers.clone(),
            token: d.admin_token.clone(),
            metrics,
            keyword_changes: Arc::default(),
            scheduler: admin_scheduler,
            queue_depth,
        };
        others.push(tokio::spawn(admin::serve(
            listener,
            admin_state,
            shutdown_rx.clone(),
        )));
        tracing::info!(admin = %admin_addr, carriers = config.carriers.len(), "vmnd started");
        Ok(Daemon {
            store,
            config,
            admin_addr,
            lmtp_addr,
            carriers,
            shutdown,
            supervisors,
            sessions,
            processor: processor_thread,
            holds,
            dispatcher,
            stop_dispatcher,
            others,
        })
    }

    /// Unbinds every session, stops the workers and makes the store durable.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for s in self.supervisors {
            let _ = s.await;
        }
        // With the sessions gone the writer stops, and then the processor: wait for it, so
        // what was acknowledged is processed and the store is closed when this returns.
        // Joined from a thread of its own, not the blocking pool: a pool task that outlives
        // the timeout would hold the runtime's drop, and the process, until it ends.
        let processor = self.processor;
        let (joined_tx, joined) = tokio::sync::oneshot::channel();
        let joiner = std::thread::Builder::new()
            .name("vmnd-join".into())
            .spawn(move || {
                let _ = joined_tx.send(processor.join());
            });
        if joiner.is_err()
            || tokio::time::timeout(std::time::Duration::from_secs(30), joined)
                .await
                .is_err()
        {
            tracing::error!("the processor did not stop within 30 s");
        }
        // The processor's last jobs are with the dispatcher now: let it finish the requests
        // in flight and write down what it still holds.
        let _ = self.stop_dispatcher.send(true);
        let grace = dispatcher::DRAIN_AT_MOST + std::time::Duration::from_secs(5);
        if tokio::time::timeout(grace, self.dispatcher).await.is_err() {
            tracing::error!("the dispatcher did not stop within {grace:?}");
        }
        // Taken before the flush, which then covers what was written before each settle.
        let settled = self.holds.take_settled();
        match self.store.commit().await {
            Ok(()) => {
                if let Err(e) = self.store.release_journal(&settled) {
                    tracing::warn!(error = %e, "cannot release settled journal entries; they are processed again at the next start");
                }
            }
            Err(e) => tracing::error!(error = %e, "final flush failed"),
        }
        for t in self.others {
            t.abort();
        }
        drop(self.sessions);
        tracing::info!("vmnd stopped");
    }
}

/// The keywords added through the admin API (kept in the store) that still fit `config`, as
/// (VMN, rule) for [`Router::with_runtime`]. One that no longer does (the config changed under
/// it: a webhook renamed, a number's carrier removed, a config keyword that now takes its
/// word) is logged and skipped, not fatal; it stays stored, so fixing the config brings it
/// back, and the admin API lists, replaces or deletes it.
fn runtime_keywords(store: &Store, config: &Config) -> Result<Vec<(String, KeywordRule)>, String> {
    let kept = store
        .runtime_keywords()
        .map_err(|e| format!("cannot read the keywords added through the admin API: {e}"))?;
    let mut accepted: Vec<(String, KeywordRule)> = Vec::new();
    // The store lists a number's keywords together: each is checked against those of its
    // number accepted before it.
    let mut current_vmn = String::new();
    let mut of_number: Vec<KeywordRule> = Vec::new();
    for kept in kept {
        let skip = |problems: &[String]| {
            tracing::warn!(
                vmn = %kept.vmn,
                keyword = %kept.name,
                problems = %problems.join("; "),
                "a keyword added through the admin API no longer fits the config; not routed"
            );
        };
        let Some(number) = config.number(&kept.vmn) else {
            skip(&["the number is no longer served".to_string()]);
            continue;
        };
        if current_vmn != number.vmn {
            current_vmn.clone_from(&number.vmn);
            of_number.clear();
        }
        let table = match config::keyword_table_from_json(&kept.table) {
            Ok(table) => table,
            Err(problems) => {
                skip(&problems);
                continue;
            }
        };
        match config::validate_keyword_table(config, number, &table, &of_number) {
            Ok(rule) => {
                of_number.push(rule.clone());
                accepted.push((number.vmn.clone(), rule));
            }
            Err(problems) => skip(&problems),
        }
    }
    if !accepted.is_empty() {
        tracing::info!(
            keywords = accepted.len(),
            "routing keywords added through the admin API"
        );
    }
    Ok(accepted)
}

/// `vmnd run`: until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), String> {
    // Before anything starts: from here on SIGTERM and SIGHUP are ours, not their default
    // actions (which end the process with no unbind).
    let signals = Signals::register();
    let daemon = Daemon::start(config).await?;
    signals.wait().await;
    tracing::info!("signal received; unbinding");
    daemon.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (see [`Signals`]).
pub async fn wait_for_signal() {
    Signals::register().wait().await
}

/// SIGTERM and SIGHUP, taken over from their default actions when registered. SIGINT is
/// tokio's `ctrl_c`. SIGHUP is logged and ignored: the config is read at start only.
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn register() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            hangup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Resolves on SIGINT or SIGTERM.
    pub async fn wait(mut self) {
        let hangups = async {
            if let Some(hangup) = self.hangup.as_mut() {
                while hangup.recv().await.is_some() {
                    tracing::warn!(
                        "SIGHUP ignored: vmnd reads its config at start only; restart it to apply a change"
                    );
                }
            }
            std::future::pending::<()>().await
        };
        let term = async {
            match self.term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
            () = hangups => {}
        }
    }
}

/// A runtime with one worker thread of its own ("vmnd-smpp") for the carriers' sessions. The
/// acknowledgement path then never waits in a run queue behind the dispatcher's and the admin's
/// tasks: on two cores, a burst of webhook work on the main runtime's workers was where the
/// ack latency's tail came from. Sessions need little CPU (a few µs a PDU), so one worker
/// serves every bind.
struct SessionRuntime(Option<tokio::runtime::Runtime>);

impl SessionRuntime {
    fn start() -> Result<SessionRuntime, String> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vmnd-smpp")
            .on_thread_start(crate::thread_priority::prefer_low_latency)
            .enable_all()
            .build()
            .map(|rt| SessionRuntime(Some(rt)))
            .map_err(|e| format!("cannot start the sessions' runtime: {e}"))
    }

    fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(rt) => rt.spawn(task),
            // Only after drop, which takes the runtime; never reached.
            None => tokio::spawn(task),
        }
    }
}

impl Drop for SessionRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which is not allowed inside another
        // runtime (a daemon is dropped in async code): let its thread wind down on its own.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
