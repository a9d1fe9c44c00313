//! After the ack: turns journaled deliver_sm PDUs into message records and queued jobs.
//!
//! One task on its own thread, fed with the committed journal entries by the group-commit
//! writer (in memory: no read-back), and at startup with whatever the journal still holds. For
//! each entry: a receipt is parsed and indexed by the carrier's message id; a part of a
//! concatenated message (UDH or `sar_*` TLVs) goes to durable reassembly; anything else is
//! decoded, routed and stored with its jobs, per group of entries, and the jobs go to the
//! dispatcher in memory (a webhook job due now only there, held by its journal entry: see
//! [`crate::store::hold`]). At most every 100 ms the main database is flushed and the journal
//! entries behind it, and those whose held jobs were settled, are released. Reprocessing an
//! entry after a crash writes the same record and the same jobs (ids derive from the journal
//! id), so it is idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::actions;
use crate::clock;
use crate::config::Config;
use crate::guard::AutoActionGuard;
use crate::outbound::dispatcher::Scheduler;
use crate::routing::router::Router;
use crate::smpp::pdu::{self, Address, Body, ShortMessage, tlv_tag};
use crate::smpp::receipt;
use crate::smpp::text::{self, Encoding};
use crate::smpp::udh;
use crate::store::hold::HoldBook;
use crate::store::parts::{GroupKey, GroupMeta, PartAdded, PartRecord};
use crate::store::queue::Job;
use crate::store::writer::Handoff;
use crate::store::{self, JournalEntry, MessageRecord, Store, receipt_key};
use arc_swap::ArcSwap;

/// Digits only for numeric addresses (no `+`, no blanks); alphanumeric senders as received.
pub fn normalize_address(address: &Address) -> String {
    match numeric_digits(address) {
        Some(digits) => digits.to_string(),
        None => address.addr.trim().to_string(),
    }
}

/// The digits of a numeric address (TON not alphanumeric, nothing but digits after an
/// optional `+`); None for an alphanumeric one.
fn numeric_digits(address: &Address) -> Option<&str> {
    let trimmed = address.addr.trim();
    let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
    (address.ton != 5 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(digits)
}

/// The sender's (TON, NPI) when a reply cannot assume international / ISDN (1, 1); None for
/// those and for alphanumeric senders, who cannot be answered by SMS.
fn reply_address_type(address: &Address) -> Option<[u8; 2]> {
    match (address.ton, address.npi) {
        (1, 1) => None,
        (ton, npi) => numeric_digits(address).map(|_| [ton, npi]),
    }
}

/// Everything the processor needs; built once per config.
pub struct Processor {
    store: Store,
    /// The routing snapshot, swapped whole when the config changes (no lock to read it).
    router: Arc<ArcSwap<Router>>,
    gsm_packed: HashMap<String, bool>,
    reassembly_timeout: Duration,
    dedup_window: Option<Duration>,
    /// Payload hash -> (first seen ms, message id); only with `dedup_window`.
    recent: HashMap<u64, (u64, u64)>,
    scheduler: Scheduler,
    /// Messages processed but not yet committed: one transaction per batch.
    finished: Vec<(u64, Arc<MessageRecord>, Vec<Job>)>,
    /// Caps on automatic replies and forwards per sender (see [`crate::guard`]).
    guard: AutoActionGuard,
    /// Journal ids processed since the last flush (written, or in `finished`): released from
    /// the journal after the next flush of the main database (see `make_durable`).
    processed: Vec<u64>,
    /// Journal entries whose webhook jobs the dispatcher holds in memory; released once
    /// settled (see [`crate::store::hold`]).
    holds: HoldBook,
    /// In [`Processor::recover`]: jobs are written, not handed over.
    recovering: bool,
    /// A group was assembled since the `assembled` records were last tidied (see
    /// [`Store::forget_assembled`]).
    assembled_since_tidy: bool,
    last_durable: std::time::Instant,
    /// `vmnd_messages_processed_total{carrier}` by carrier: the handle, not a registry lookup
    /// per message.
    processed_counters: HashMap<String, metrics::Counter>,
}

/// What became of one journal entry.
enum Processed {
    /// Stored (or nothing to store): its entry goes with the next flush.
    Written,
    /// Waiting in `finished` for the batch write, which decides (see `write_finished`).
    Finishing,
}

/// A webhook job due within this long is handed to the dispatcher in memory only, held by its
/// journal entry (see [`crate::store::hold`]); one due later is written to the `jobs` tree, so
/// that a far-off job never keeps a journal segment alive.
const IN_MEMORY_DUE_WITHIN_MS: u64 = 1_000;

/// Journal entries the processor takes at a time.
const BATCH: usize = 1024;

/// Held jobs in memory at which the processor waits for the dispatcher (see
/// `keep_pace_with_the_dispatcher`): the dispatcher's own cap per endpoint, less one batch, so
/// the batch after the wait fits under the cap too (with the whole cap, up to a batch of jobs
/// went over it, each written to the `jobs` tree, read back and removed).
const MAX_HELD: usize = crate::outbound::dispatcher::MAX_FRESH - BATCH;
const _: () = assert!(MAX_HELD + BATCH <= crate::outbound::dispatcher::MAX_FRESH);
/// ... as long as the dispatcher settles at least [`PACE_MIN_SETTLES`] of them per
/// [`PACE_WINDOW`] (2,000 a second). Below that rate (an endpoint that hangs, is slow, or sits
/// behind an open circuit) the processor goes on: one slow endpoint must not set the pace for
/// every other webhook, reply and record; its jobs past the cap go to the `jobs` tree.
///
/// Why 50 ms and not shorter: the window must outlast the time a busy machine can keep the
/// dispatcher's thread off the CPU. With one main-runtime worker on two cores, a 10 ms window
/// saw "too few settles" whenever that worker waited out other threads' time slices during an
/// ack burst; the processor then went on, jobs past the cap went through the `jobs` tree, and
/// a 1,000,000-message run took 132 µs/msg and peaked at 152 MiB instead of 84 µs and 66 MiB
/// (BENCHMARKS.md, eighth session). A hung endpoint costs the other endpoints one window per
/// batch of [`BATCH`] while it hangs.
const PACE_WINDOW: Duration = Duration::from_millis(50);
const PACE_MIN_SETTLES: usize = 100;

/// After a batch smaller than this, the processor waits [`LINGER`] before the next one.
const LINGER_BELOW: usize = 32;
const LINGER: Duration = Duration::from_millis(2);

/// How often processed work is made durable and its journal entries released, at most.
const DURABLE_INTERVAL: Duration = Duration::from_millis(100);
/// ... or sooner, once this many entries wait for it (bounds what a crash makes us redo).
const DURABLE_ENTRIES: usize = 8192;

impl Processor {
    pub fn new(
        store: Store,
        config: &Arc<Config>,
        router: Arc<ArcSwap<Router>>,
        scheduler: Scheduler,
    ) -> Processor {
        Processor {
            store,
            router,
            gsm_packed: config
                .carriers
                .iter()
                .map(|c| (c.name.clone(), c.gsm_packed))
                .collect(),
            reassembly_timeout: config.daemon.reassembly_timeout,
            dedup_window: config.daemon.dedup_window,
            recent: HashMap::new(),
            scheduler,
            finished: Vec::new(),
            guard: AutoActionGuard::default(),
            processed: Vec::new(),
            holds: HoldBook::default(),
            recovering: false,
            // Records left by a previous run are tidied after the first release.
            assembled_since_tidy: true,
            last_durable: std::time::Instant::now(),
            processed_counters: HashMap::new(),
        }
    }

    /// The holds this processor hands out with in-memory jobs: the daemon releases the last
    /// settled ones at shutdown, after the processor's final flush.
    pub fn holds(&self) -> HoldBook {
        self.holds.clone()
    }

    /// Processes what a previous run journaled but did not finish, and groups that completed
    /// or timed out meanwhile. Call before the sessions start.
    ///
    /// The dispatcher is not running yet: every job is written to the `jobs` tree, where its
    /// startup scan finds it, and none is handed over in memory (a backlog of a million
    /// entries would otherwise wait in the scheduler's channel, records and all).
    pub fn recover(&mut self) -> store::Result<usize> {
        let ids = self.store.pending_journal_ids()?;
        let n = ids.len();
        self.recovering = true;
        for chunk in ids.chunks(BATCH) {
            for &id in chunk {
                self.process(id, None);
            }
            self.flush();
        }
        self.sweep_groups(clock::now_ms());
        self.recovering = false;
        Ok(n)
    }

    /// Runs until the writer's channel closes.
    pub async fn run(mut self, mut handoff: Handoff) {
        let sweep_every =
            (self.reassembly_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut durable_tick = tokio::time::interval(DURABLE_INTERVAL);
        durable_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            self.keep_pace_with_the_dispatcher().await;
            // Entries that did not fit in memory, read back from the journal (see
            // `writer::Handoff`); only once the channel's older entries are done.
            let spilled = handoff.take_spilled(BATCH);
            if !spilled.is_empty() {
                for id in spilled {
                    self.process(id, None);
                }
                self.after_batch();
                continue;
            }
            tokio::select! {
                n = handoff.rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        self.flush();
                        let left = handoff.spilled_left();
                        if left > 0 {
                            tracing::info!(entries = left, "stopping with acknowledged messages not yet processed; they stay in the journal and are processed at the next start");
                        }
                        return;
                    }
                    for committed in batch.drain(..) {
                        self.process(committed.id, Some((committed.entry, committed.decoded)));
                    }
                    self.after_batch();
                    if n < LINGER_BELOW {
                        // A light load hands over a message or two per wake-up, and each
                        // wake-up and sled write costs more than the message itself: let a few
                        // gather (webhooks go out up to LINGER later; acks are not affected).
                        tokio::time::sleep(LINGER).await;
                    }
                }
                () = handoff.spill.notified() => {}
                _ = durable_tick.tick() => {
                    self.scheduler.drop_spent();
                    if self.last_durable.elapsed() >= DURABLE_INTERVAL {
                        self.make_durable();
                    }
                }
                _ = sweep.tick() => {
                    self.sweep_groups(clock::now_ms());
                    self.expire_recent(clock::now_ms());
                    self.guard.expire(clock::now_ms());
                }
            }
        }
    }

    /// Waits while the dispatcher holds [`MAX_HELD`] jobs in memory and keeps settling them:
    /// an endpoint that is busy but answering then sets the pace, and the backlog stays in the
    /// journal (already on disk, read back in order) instead of going through the `jobs` tree
    /// (a write, a read and a removal per job). A dispatcher settling fewer than
    /// [`PACE_MIN_SETTLES`] per [`PACE_WINDOW`] does not hold processing up.
    async fn keep_pace_with_the_dispatcher(&mut self) {
        let holds = self.holds.clone();
        wait_for_settles(&holds, MAX_HELD, PACE_WINDOW, PACE_MIN_SETTLES, || {
            // What the dispatcher settles meanwhile comes back to be dropped here.
            self.scheduler.drop_spent();
            if self.last_durable.elapsed() >= DURABLE_INTERVAL {
                self.make_durable();
            }
        })
        .await;
    }

    /// After each batch: write it, and make it durable when due.
    fn after_batch(&mut self) {
        self.scheduler.drop_spent();
        self.write_finished();
        if self.processed.len() >= DURABLE_ENTRIES
            || self.last_durable.elapsed() >= DURABLE_INTERVAL
        {
            self.make_durable();
        }
    }

    /// Processes one journal entry. Errors are logged and counted; the entry stays in the
    /// journal and is retried at the next start (nothing acknowledged is dropped).
    /// `entry` is the journal entry when the writer hands it over; `None` reads it from the
    /// journal (recovery).
    /// `entry` comes with the session's decode of its PDU when there was one.
    fn process(
        &mut self,
        journal_id: u64,
        entry: Option<(JournalEntry, Option<Box<ShortMessage>>)>,
    ) {
        match self.try_process(journal_id, entry) {
            Ok(Processed::Written) => self.processed.push(journal_id),
            // `write_finished` decides when its journal entry can go.
            Ok(Processed::Finishing) => {}
            Err(e) => self.process_failed(journal_id, e),
        }
    }

    fn process_failed(&mut self, journal_id: u64, e: store::StoreError) {
        metrics::counter!("vmnd_processing_errors_total").increment(1);
        tracing::error!(journal_id, error = %e, "processing failed; entry stays in the journal");
    }

    fn try_process(
        &mut self,
        journal_id: u64,
        entry: Option<(JournalEntry, Option<Box<ShortMessage>>)>,
    ) -> store::Result<Processed> {
        let (entry, decoded) = match entry {
            Some(handed) => handed,
            // Recovery. An entry may have been processed already, the crash coming before its
            // release from the journal was durable: processing it again rewrites the same record
            // and jobs (a stored record alone does not prove its jobs were stored with it).
            None => match self.store.journal_entry(journal_id)? {
                Some(entry) => (entry, None),
                None => return Ok(Processed::Written), // already processed
            },
        };
        let decoded = match decoded {
            Some(sm) => Ok(pdu::Pdu {
                command_status: 0,
                sequence_number: 0,
                body: Body::DeliverSm(sm),
            }),
            None => pdu::decode(&entry.pdu),
        };
        let sm = match decoded {
            Ok(pdu::Pdu {
                body: Body::DeliverSm(sm),
                ..
            }) => sm,
            other => {
                // Validated before the ack, so only a changed decoder gets here: keep the bytes.
                tracing::warn!(
                    journal_id,
                    ?other,
                    "journaled PDU no longer decodes; kept as binary"
                );
                let record = self.record_base(journal_id, &entry, "", "", entry.received_at_ms);
                let record = MessageRecord {
                    text: hex::encode(&entry.pdu),
                    encoding: Encoding::Binary.as_str().to_string(),
                    routed: false,
                    ..record
                };
                self.store.finish_message(journal_id, &record, &[], None)?;
                return Ok(Processed::Written);
            }
        };
        let from = normalize_address(&sm.source);
        let to = normalize_address(&sm.dest);
        let from_ton_npi = reply_address_type(&sm.source);
        match self.processed_counters.get(&entry.carrier) {
            Some(counter) => counter.increment(1),
            None => {
                let counter = metrics::counter!("vmnd_messages_processed_total", "carrier" => entry.carrier.clone());
                counter.increment(1);
                self.processed_counters
                    .insert(entry.carrier.clone(), counter);
            }
        }
        if sm.is_receipt() {
            self.finish_receipt(journal_id, &entry, &sm, from, to)?;
            return Ok(Processed::Written);
        }
        if self.is_duplicate(&entry, &sm, &from, &to) {
            metrics::counter!("vmnd_messages_deduplicated_total").increment(1);
            // Nothing to store: its journal entry is released with the batch's.
            return Ok(Processed::Written);
        }
        let gsm_packed = self
            .gsm_packed
            .get(&entry.carrier)
            .copied()
            .unwrap_or(false);
        let user_data = sm.user_data().clone();
        let (body, udh_octets, concat) = if sm.has_udh() {
            match udh::parse_udh(&user_data) {
                Ok((header, rest)) => (
                    rest.to_vec(),
                    header.len,
                    header.concat().map(|c| (c.reference, c.total, c.seq)),
                ),
                Err(e) => {
                    // Keep the message: forwarded as binary rather than refused (a refusal
                    // would make the carrier retry forever or drop it).
                    tracing::warn!(journal_id, error = ?e, "bad UDH; message kept as binary");
                    metrics::counter!("vmnd_bad_udh_total").increment(1);
                    let decoded = text::DecodedText {
                        text: hex::encode(&user_data),
                        encoding: Encoding::Binary,
                    };
                    self.finish_single(journal_id, &entry, from, to, from_ton_npi, decoded)?;
                    return Ok(Processed::Finishing);
                }
            }
        } else {
            (user_data.to_vec(), 0, sm.sar())
        };
        match concat {
            Some((reference, total, seq)) if total > 1 => {
                let group = GroupKey::new(&entry.carrier, &from, &to, reference, total);
                let part = PartRecord {
                    seq,
                    data_coding: sm.data_coding,
                    user_data: body,
                    udh_octets,
                    from_ton_npi,
                };
                let mut added =
                    self.store
                        .add_part(journal_id, entry.received_at_ms, &group, total, &part)?;
                if let PartAdded::ReferenceReused(old) = added {
                    // A new message under a reference still open: the old one will get no
                    // more parts that could be told from the new one's, so it goes now as it
                    // is, and this part starts the new group.
                    tracing::info!(journal_id, part = seq, missing = ?old.missing(), "concatenation reference reused; the open message is delivered incomplete");
                    metrics::counter!("vmnd_parts_reference_reused_total").increment(1);
                    self.finish_group(&group, &old, false)?;
                    added = self.store.add_part(
                        journal_id,
                        entry.received_at_ms,
                        &group,
                        total,
                        &part,
                    )?;
                }
                match added {
                    PartAdded::Waiting => {}
                    PartAdded::Duplicate => {
                        metrics::counter!("vmnd_parts_duplicate_total").increment(1);
                    }
                    PartAdded::Complete(meta) => self.finish_group(&group, &meta, true)?,
                    // The old group was removed in one transaction just above.
                    PartAdded::ReferenceReused(_) => {
                        return Err(store::StoreError::Corrupt(format!(
                            "part {seq} of a reused reference still conflicts after its old group was delivered"
                        )));
                    }
                }
                Ok(Processed::Written)
            }
            _ => {
                let decoded = text::decode_text(sm.data_coding, &body, gsm_packed, udh_octets);
                self.finish_single(journal_id, &entry, from, to, from_ton_npi, decoded)?;
                Ok(Processed::Finishing)
            }
        }
    }

    fn record_base(
        &self,
        id: u64,
        entry: &JournalEntry,
        from: &str,
        to: &str,
        received_at_ms: u64,
    ) -> MessageRecord {
        MessageRecord {
            id: store::format_id(id),
            event: "message".to_string(),
            to: to.to_string(),
            from: from.to_string(),
            from_ton_npi: None,
            text: String::new(),
            encoding: Encoding::Gsm7.as_str().to_string(),
            keyword: None,
            inbox: None,
            args: None,
            carrier: entry.carrier.clone(),
            received_at: clock::rfc3339_ms(received_at_ms),
            received_at_ms,
            parts: 1,
            complete: true,
            missing_parts: Vec::new(),
            routed: false,
            receipt: None,
            webhooks: Vec::new(),
            consent: None,
            guarded: Vec::new(),
        }
    }

    /// Routes a message and plans its jobs (see [`crate::actions`]), then lets the guard hold
    /// back automatic actions this sender has had enough of.
    fn route(&mut self, record: &mut MessageRecord) -> store::Result<Vec<Job>> {
        let router = self.router.load();
        let matchable = record.encoding != Encoding::Binary.as_str();
        let mut jobs = actions::plan(Some(&self.store), &router, record, matchable)?;
        if let Some(number) = router.number(&record.to) {
            let held = self.guard.apply(
                &number.guard,
                &record.to,
                &record.from,
                &record.text,
                &mut jobs,
                record.received_at_ms,
            );
            for (reason, what) in held {
                metrics::counter!("vmnd_auto_actions_held_total", "reason" => reason.as_str())
                    .increment(1);
                tracing::info!(
                    message = %record.id,
                    from = %record.from,
                    to = %record.to,
                    reason = reason.as_str(),
                    action = %what,
                    "automatic action held by the guard"
                );
                record.guarded.push(format!("{}: {what}", reason.as_str()));
            }
        }
        Ok(jobs)
    }

    fn finish_single(
        &mut self,
        journal_id: u64,
        entry: &JournalEntry,
        from: String,
        to: String,
        from_ton_npi: Option<[u8; 2]>,
        decoded: text::DecodedText,
    ) -> store::Result<()> {
        let mut record = self.record_base(journal_id, entry, &from, &to, entry.received_at_ms);
        record.from_ton_npi = from_ton_npi;
        record.text = decoded.text;
        record.encoding = decoded.encoding.as_str().to_string();
        let jobs = self.route(&mut record)?;
        // Committed with the rest of the batch (see `flush`). Shared from here on: the record
        // is some 400 bytes, and it was copied at every move on its way to the dispatcher.
        self.finished.push((journal_id, Arc::new(record), jobs));
        Ok(())
    }

    /// Writes what was processed and makes it durable at once (recovery's path).
    fn flush(&mut self) {
        self.write_finished();
        self.make_durable();
    }

    /// Writes the messages finished since the last call and hands their jobs to the dispatcher
    /// in memory. Not yet durable: their journal entries stay until [`Processor::make_durable`],
    /// so a crash before it means processing them again into the same records and jobs (a job
    /// delivered meanwhile may then be delivered twice, which the stable ids allow).
    ///
    /// A webhook job due now is not written at all: the dispatcher gets it with a hold on the
    /// journal entry, which stays until the job is delivered or written by the dispatcher (see
    /// [`crate::store::hold`]). Other jobs (SMS, e-mail, later ones) go to the `jobs` tree.
    /// On failure the entries stay and are processed again at the next start.
    fn write_finished(&mut self) {
        // The next batch gets room for as many: growing from empty copied every record again
        // at each doubling (1% of the CPU at full load).
        let room = self.finished.len();
        let mut batch = std::mem::replace(&mut self.finished, Vec::with_capacity(room));
        if batch.is_empty() {
            return;
        }
        let now = clock::now_ms();
        let recovering = self.recovering;
        if recovering {
            // Reprocessed after a crash: an SMS a previous run already took up is not queued
            // again from its first segment (a reply, or an opt-out confirmation, sent twice).
            for (_, _, jobs) in &mut batch {
                jobs.retain(|job| !self.sms_taken_up(job));
            }
        }
        let mut in_memory: Vec<Vec<Job>> = Vec::with_capacity(batch.len());
        let in_memory_now = |job: &Job| {
            !recovering && is_webhook_job(job) && job.due_ms <= now + IN_MEMORY_DUE_WITHIN_MS
        };
        for (_, _, jobs) in &mut batch {
            // Usually all of a message's jobs go the same way (one webhook, held): the Vec
            // moves whole then, with no new Vec and no copy of each job.
            let held = if jobs.iter().all(in_memory_now) {
                std::mem::take(jobs)
            } else if !jobs.iter().any(in_memory_now) {
                Vec::new()
            } else {
                let (held, stored) = std::mem::take(jobs).into_iter().partition(in_memory_now);
                *jobs = stored;
                held
            };
            in_memory.push(held);
        }
        if let Err(e) = self.store.finish_messages(&batch) {
            metrics::counter!("vmnd_processing_errors_total").increment(batch.len() as u64);
            tracing::error!(error = %e, messages = batch.len(), "cannot store processed messages; they stay in the journal");
            return;
        }
        if recovering {
            // The dispatcher's startup scan of the jobs tree finds them.
            self.processed.extend(batch.iter().map(|(id, _, _)| *id));
            return;
        }
        // The dispatcher gets each job with its message in memory.
        for ((id, record, stored), held) in batch.into_iter().zip(in_memory) {
            if held.is_empty() {
                self.processed.push(id);
            }
            let holds = self.holds.hold(id, held.len());
            for (job, hold) in held.into_iter().zip(holds) {
                self.scheduler
                    .schedule_fresh(job, record.clone(), Some(hold));
            }
            for job in stored {
                self.scheduler.schedule_fresh(job, record.clone(), None);
            }
        }
    }

    /// True for an SMS job whose outbound record exists: a previous run attempted it. Its job
    /// is then still queued with its progress (segments already accepted), or it is done,
    /// dead or suppressed; either way, writing it afresh would send it again.
    fn sms_taken_up(&self, job: &Job) -> bool {
        job.sms.is_some() && matches!(self.store.outbound(job.id), Ok(Some(_)))
    }

    /// Makes everything processed durable (a flush and fsync of the main database, off the
    /// acknowledgement path), then releases the journal entries it came from, with those whose
    /// in-memory jobs were settled. Run on a timer and after large batches, not after every
    /// batch: at a low rate each batch is a message or two, and a main-database fsync for each
    /// would compete with the journal's for the disk.
    fn make_durable(&mut self) {
        self.last_durable = std::time::Instant::now();
        // Before the flush: what the dispatcher wrote before settling is then covered by it.
        let settled = self.holds.take_settled();
        metrics::gauge!("vmnd_jobs_held_in_memory").set(self.holds.open() as f64);
        // Attempt records of jobs that never had a hold (retries from the `jobs` tree) are
        // written by the flush too.
        if self.processed.is_empty() && settled.is_empty() && !self.store.has_unwritten_records() {
            return;
        }
        self.processed.extend(settled);
        let started = std::time::Instant::now();
        let durable = self
            .store
            .flush_main()
            .and_then(|()| self.store.release_journal(&self.processed));
        metrics::histogram!("vmnd_store_processed_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        match durable {
            Ok(()) if self.assembled_since_tidy => {
                // Parts whose entries are now released can no longer be replayed, once the
                // releases are on disk: they are written without a sync, and a power cut that
                // kept the removal but lost a release would bring the replay back unguarded.
                let store = self.store.clone();
                match store
                    .flush_journal()
                    .and_then(|()| store.forget_assembled(|id| store.journal_entry_is_live(id)))
                {
                    Ok(_) => self.assembled_since_tidy = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot tidy the records of assembled parts")
                    }
                }
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, entries = self.processed.len(), "cannot make processed messages durable; their journal entries stay and are processed again at the next start");
            }
        }
        self.processed.clear();
    }

    fn finish_receipt(
        &mut self,
        journal_id: u64,
        entry: &JournalEntry,
        sm: &ShortMessage,
        from: String,
        to: String,
    ) -> store::Result<()> {
        let gsm_packed = self
            .gsm_packed
            .get(&entry.carrier)
            .copied()
            .unwrap_or(false);
        let decoded = text::decode_text(sm.data_coding, sm.user_data(), gsm_packed, 0);
        let mut parsed = receipt::parse_receipt(&decoded.text).unwrap_or_default();
        // The TLVs, when present, are authoritative over the text (SMPP 3.4 5.3.2.12).
        if let Some(id) = sm.tlv(tlv_tag::RECEIPTED_MESSAGE_ID) {
            let id = String::from_utf8_lossy(id);
            let id = id.trim_end_matches('\0');
            // An empty one says nothing: the text's id stands.
            if !id.is_empty() {
                parsed.id = id.to_string();
            }
        }
        if parsed.stat.is_empty() {
            if let Some(state) = sm.tlv(tlv_tag::MESSAGE_STATE).and_then(|v| v.first()) {
                parsed.stat = message_state_name(*state).to_string();
            }
        }
        metrics::counter!("vmnd_receipts_total", "stat" => parsed.stat.clone()).increment(1);
        let mut record = self.record_base(journal_id, entry, &from, &to, entry.received_at_ms);
        record.event = "receipt".to_string();
        record.text = decoded.text;
        record.encoding = decoded.encoding.as_str().to_string();
        // A receipt comes from the handset's side to our number: `to` is ours.
        let index = (!parsed.id.is_empty()).then(|| receipt_key(&entry.carrier, &parsed.id));
        // A receipt for an SMS we sent: its state becomes visible on the outbound record.
        if !parsed.id.is_empty() {
            match self.store.apply_receipt(
                &entry.carrier,
                &parsed.id,
                &parsed.stat,
                clock::now_ms(),
            )? {
                Some(outbound) => {
                    tracing::debug!(sms = %outbound.id, state = %outbound.state, "receipt correlated");
                    metrics::counter!("vmnd_receipts_correlated_total").increment(1);
                }
                None => metrics::counter!("vmnd_receipts_uncorrelated_total").increment(1),
            }
        }
        record.receipt = Some(parsed);
        let jobs = self.route(&mut record)?;
        self.store
            .finish_message(journal_id, &record, &jobs, index.as_deref())?;
        self.schedule(&jobs);
        Ok(())
    }

    /// Assembles a group (complete, or timed out with `complete == false`) into one message.
    fn finish_group(
        &mut self,
        group: &GroupKey,
        meta: &GroupMeta,
        complete: bool,
    ) -> store::Result<()> {
        let parts = self.store.group_parts(group, meta)?;
        let (carrier, from, to) = group_fields(group);
        let gsm_packed = self.gsm_packed.get(&carrier).copied().unwrap_or(false);
        let part_data: Vec<text::PartData<'_>> = parts
            .iter()
            .map(|part| text::PartData {
                seq: part.seq,
                data_coding: part.data_coding,
                user_data: &part.user_data,
                udh_octets: part.udh_octets,
            })
            .collect();
        let decoded = text::decode_parts(&part_data, gsm_packed);
        let entry = JournalEntry {
            carrier,
            received_at_ms: meta.first_received_ms,
            pdu: bytes::Bytes::new(),
        };
        let mut record = self.record_base(
            meta.first_journal_id,
            &entry,
            &from,
            &to,
            meta.first_received_ms,
        );
        record.text = decoded.text;
        record.encoding = decoded.encoding.as_str().to_string();
        record.from_ton_npi = parts.first().and_then(|p| p.from_ton_npi);
        record.parts = u32::from(meta.total);
        record.complete = complete;
        record.missing_parts = meta.missing();
        if !complete {
            metrics::counter!("vmnd_messages_incomplete_total").increment(1);
        }
        let jobs = self.route(&mut record)?;
        self.store.finish_group(group, meta, &record, &jobs)?;
        self.assembled_since_tidy = true;
        self.schedule(&jobs);
        Ok(())
    }

    /// Delivers complete groups left by a crash and groups past the reassembly timeout.
    fn sweep_groups(&mut self, now_ms: u64) {
        let groups = match self.store.open_groups() {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot read reassembly state");
                return;
            }
        };
        let timeout = self.reassembly_timeout.as_millis() as u64;
        for (group, meta) in groups {
            let complete = meta.is_complete();
            if complete || now_ms.saturating_sub(meta.first_received_ms) >= timeout {
                if let Err(e) = self.finish_group(&group, &meta, complete) {
                    tracing::error!(error = %e, "cannot deliver concatenated message");
                }
            }
        }
    }

    /// True when this message repeats the last one the same sender sent the same number
    /// over the same carrier, within `dedup_window` of it: a redelivery of something we
    /// acknowledged. Only the last message of each conversation is remembered, so a repeat
    /// after anything else from that sender is a message of its own: STOP, START, STOP is
    /// three changes of mind, not one STOP and a redelivery.
    fn is_duplicate(
        &mut self,
        entry: &JournalEntry,
        sm: &ShortMessage,
        from: &str,
        to: &str,
    ) -> bool {
        let Some(window) = self.dedup_window else {
            return false;
        };
        use std::hash::{Hash, Hasher};
        let mut conversation = std::collections::hash_map::DefaultHasher::new();
        (&entry.carrier, from, to).hash(&mut conversation);
        let conversation = conversation.finish();
        let mut payload = std::collections::hash_map::DefaultHasher::new();
        (
            sm.data_coding,
            sm.esm_class,
            &sm.short_message,
            &sm.tlvs
                .iter()
                .map(|t| (t.tag, &t.value))
                .collect::<Vec<_>>(),
        )
            .hash(&mut payload);
        let payload = payload.finish();
        let now = entry.received_at_ms;
        match self.recent.get(&conversation) {
            Some(&(last, seen))
                if last == payload && now.saturating_sub(seen) <= window.as_millis() as u64 =>
            {
                true
            }
            _ => {
                self.recent.insert(conversation, (payload, now));
                false
            }
        }
    }

    fn expire_recent(&mut self, now_ms: u64) {
        if let Some(window) = self.dedup_window {
            let window = window.as_millis() as u64;
            self.recent
                .retain(|_, (_, seen)| now_ms.saturating_sub(*seen) <= window);
        }
    }

    fn schedule(&self, jobs: &[Job]) {
        for job in jobs {
            self.scheduler.schedule(job);
        }
    }
}

/// Waits while `holds` has `limit` or more holds open, calling `meanwhile` every millisecond;
/// gives up after a `window` in which fewer than `min_settles` were settled (nothing else adds
/// holds meanwhile, so the open count only falls). True if the count fell below `limit`.
async fn wait_for_settles(
    holds: &HoldBook,
    limit: usize,
    window: Duration,
    min_settles: usize,
    mut meanwhile: impl FnMut(),
) -> bool {
    let mut window_started = std::time::Instant::now();
    let mut open_at_window_start = holds.open();
    loop {
        let open = holds.open();
        if open < limit {
            return true;
        }
        if window_started.elapsed() >= window {
            if open_at_window_start.saturating_sub(open) < min_settles {
                return false;
            }
            window_started = std::time::Instant::now();
            open_at_window_start = open;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        meanwhile();
    }
}

/// A job that POSTs to a webhook (not an SMS, not an e-mail): the only kind held in memory,
/// since its attempt writes nothing to the `jobs` tree until it fails.
fn is_webhook_job(job: &Job) -> bool {
    job.sms.is_none() && job.email.is_none()
}

/// carrier, from, to back out of a group key.
fn group_fields(group: &GroupKey) -> (String, String, String) {
    let mut fields = group
        .0
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let carrier = fields.next().unwrap_or_default();
    let from = fields.next().unwrap_or_default();
    let to = fields.next().unwrap_or_default();
    (carrier, from, to)
}

/// message_state TLV values (SMPP 3.4 5.2.28) as receipt `stat` words.
fn message_state_name(state: u8) -> &'static str {
    match state {
        1 => "ENROUTE",
        2 => "DELIVRD",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIV",
        6 => "ACCEPTD",
        8 => "REJECTD",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hold::JournalHold;

    /// Settles `per_tick` holds every `tick` until none is left.
    fn settler(
        holds: Vec<JournalHold>,
        per_tick: usize,
        tick: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for chunk in holds.chunks(per_tick) {
                tokio::time::sleep(tick).await;
                chunk.iter().for_each(JournalHold::settle);
            }
        })
    }

    /// What the dispatcher hands back is dropped by the processor even when no message comes:
    /// its durable tick runs while idle, so deliveries do not pile up there.
    #[tokio::test]
    async fn an_idle_processor_drops_what_the_dispatcher_handed_back() {
        use crate::outbound::dispatcher::Fresh;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 16, false).unwrap();
        let text = format!("[daemon]\ndata_dir = \"{}\"\n", dir.path().display());
        let (config, _) = crate::config::parse(&text, "test.toml", &|_| None).unwrap();
        let router = Arc::new(ArcSwap::from_pointee(Router::new(&config)));
        let (scheduler, announced) = Scheduler::channel();
        let watch = scheduler.clone();
        let processor = Processor::new(store, &Arc::new(config), router, scheduler);
        let (writer_side, handoff) = crate::store::writer::handoff(16);
        let running = tokio::spawn(processor.run(handoff));
        let record = Arc::new(crate::store::tests::sample_message(1));
        let watched = Arc::downgrade(&record);
        let job = Job {
            id: 1 << 8,
            message_id: 1,
            webhook: "crm".into(),
            event: "message".into(),
            attempts: 1,
            created_ms: 1,
            due_ms: 1,
            first_attempt_ms: Some(1),
            last_error: None,
            last_status: None,
            sms: None,
            email: None,
        };
        let fresh = Arc::new(Fresh {
            job,
            record,
            hold: None,
            since_ms: 1,
        });
        announced.give_back(&mut vec![fresh]);
        assert_eq!(watch.spent_waiting(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while watch.spent_waiting() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(watch.spent_waiting(), 0, "dropped without a message coming");
        assert!(watched.upgrade().is_none());
        drop(writer_side);
        running.await.unwrap();
    }

    /// A crash after a reply went out but before its message's journal entry was released:
    /// recovery processes the message again, and must not queue the reply again (nor
    /// overwrite a reply still queued with the segments it has already sent).
    #[test]
    fn recovery_does_not_queue_again_an_sms_already_taken_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 16, false).unwrap();
        let text = format!(
            "[daemon]\ndata_dir = \"{}\"\n\n[[carrier]]\nname = \"sim\"\nhost = \"127.0.0.1\"\nport = 9\nsystem_id = \"vmnd\"\npassword = \"secret\"\n\n[[number]]\nvmn = \"567678\"\ncarrier = \"sim\"\ndefault = {{ reply = \"Thanks\" }}\n",
            dir.path().display()
        );
        let (config, _) = crate::config::parse(&text, "test.toml", &|_| None).unwrap();
        let config = Arc::new(config);
        let journal = |text: &str| {
            let pdu = pdu::encode_to_bytes(&pdu::Pdu {
                command_status: 0,
                sequence_number: 1,
                body: Body::DeliverSm(Box::new(crate::sim::mo::gsm(
                    "919800000011",
                    "567678",
                    text,
                ))),
            });
            let ids = store
                .journal(&[JournalEntry {
                    carrier: "sim".into(),
                    received_at_ms: clock::now_ms(),
                    pdu,
                }])
                .unwrap();
            store.flush_journal().unwrap();
            ids[0]
        };
        let (sent, queued, fresh) = (journal("hello"), journal("again"), journal("new"));
        let reply = |id: u64| Job::id_for(id, 0);
        // As a previous run left them before its crash: the first message's reply sent (its
        // job done), the second's half sent (its job queued with that progress).
        let outbound = |id: u64, state: &str| crate::store::outbound::OutboundRecord {
            id: store::format_id(reply(id)),
            message_id: store::format_id(id),
            purpose: "reply".into(),
            carrier: "sim".into(),
            from: "567678".into(),
            to: "919800000011".into(),
            text: "Thanks".into(),
            state: state.into(),
            segments: Vec::new(),
            error: None,
            created_ms: 1,
            updated_ms: 1,
        };
        store
            .update_outbound(reply(sent), &outbound(sent, "sent"), |_| {})
            .unwrap();
        store
            .update_outbound(reply(queued), &outbound(queued, "queued"), |_| {})
            .unwrap();
        let half = Job {
            id: reply(queued),
            message_id: queued,
            webhook: String::new(),
            event: "message".into(),
            attempts: 1,
            created_ms: 1,
            due_ms: 1,
            first_attempt_ms: Some(1),
            last_error: None,
            last_status: None,
            sms: Some(crate::store::queue::SmsJob {
                carrier: "sim".into(),
                from: "567678".into(),
                to: "919800000011".into(),
                text: "Thanks".into(),
                purpose: "reply".into(),
                reference: 9,
                sent: vec![(0, "c-1".into())],
                to_ton_npi: None,
            }),
            email: None,
        };
        store.job_update(&half).unwrap();
        let router = Arc::new(ArcSwap::from_pointee(Router::new(&config)));
        let (scheduler, _announced) = Scheduler::channel();
        let mut processor = Processor::new(store.clone(), &config, router, scheduler);
        assert_eq!(processor.recover().unwrap(), 3);
        assert_eq!(store.job(reply(sent)).unwrap(), None, "sent once already");
        assert_eq!(
            store.job(reply(queued)).unwrap(),
            Some(half),
            "progress kept"
        );
        let new = store
            .job(reply(fresh))
            .unwrap()
            .expect("never attempted: queued");
        assert!(new.sms.is_some_and(|s| s.sent.is_empty()));
    }

    #[tokio::test]
    async fn the_processor_waits_for_a_dispatcher_that_settles_fast() {
        let book = HoldBook::default();
        // 50 every 2 ms: far above 20 per window even if the machine stalls this task a while.
        let settling = settler(book.hold(1, 1000), 50, Duration::from_millis(2));
        let mut turns = 0;
        let below = wait_for_settles(&book, 300, Duration::from_secs(2), 20, || turns += 1).await;
        assert!(
            below,
            "the dispatcher kept settling: wait until under the limit"
        );
        assert!(book.open() < 300);
        assert!(turns > 0, "durability upkeep runs while waiting");
        settling.await.unwrap();
    }

    #[tokio::test]
    async fn a_slow_dispatcher_does_not_set_the_processor_pace() {
        let book = HoldBook::default();
        // One every 20 ms: progress, but far below 20 per 50 ms.
        let settling = settler(book.hold(1, 100), 1, Duration::from_millis(20));
        let below = wait_for_settles(&book, 50, Duration::from_millis(50), 20, || {}).await;
        assert!(!below, "gives up on a dispatcher settling too slowly");
        assert!(
            book.open() > 90,
            "it gave up early, not after waiting for most of them"
        );
        settling.abort();
    }

    #[tokio::test]
    async fn a_dispatcher_that_settles_nothing_does_not_hold_the_processor_up() {
        let book = HoldBook::default();
        let _stuck = book.hold(1, 3);
        let below = wait_for_settles(&book, 2, Duration::from_millis(20), 1, || {}).await;
        assert!(!below, "gives up once nothing is settled for a window");
        assert!(
            wait_for_settles(&book, 4, Duration::from_millis(20), 1, || {}).await,
            "under the limit: no wait"
        );
    }
}
