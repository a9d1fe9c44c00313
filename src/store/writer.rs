//! Group commit: the one task that writes the inbound journal.
//!
//! Sessions hand it deliver_sm PDUs; it takes whatever has queued up (up to a batch), writes
//! them, makes them durable with one flush (and fsync), and only then tells each session to send
//! `deliver_sm_resp` 0. While one flush runs the next batch gathers, so the flush cost is shared
//! by everything that arrived meanwhile. If the store fails, every PDU of the batch is answered
//! ESME_RX_T_APPN so the carrier retries (DESIGN.md promise 1).
//!
//! Committed entries go on to the processor through a [`Handoff`]: in memory while it keeps up,
//! and as bare ids once it is `backlog_in_memory` entries behind, for it to read back from the
//! journal.
//! So a burst that the carrier's windows deliver faster than processing runs is absorbed by the
//! journal on disk, and memory stays bounded, without slowing acknowledgements.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};

use super::{JournalEntry, Store};
use crate::smpp::pdu::{ShortMessage, status};

/// Most PDUs in one group commit.
const MAX_BATCH: usize = 4096;

/// A PDU to journal, and where to report the outcome.
pub struct JournalRequest {
    pub entry: JournalEntry,
    /// The session's decode of the PDU (its validation before the ack), handed on with the
    /// committed entry so the processor does not decode the same bytes again.
    pub decoded: Option<Box<ShortMessage>>,
    pub sequence_number: u32,
    /// When the PDU came off the socket, for the ack latency histogram.
    pub received: Instant,
    pub reply: mpsc::UnboundedSender<AckOutcome>,
}

/// What the session answers: status 0 once durable, ESME_RX_T_APPN if the store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckOutcome {
    pub sequence_number: u32,
    pub received: Instant,
    pub status: u32,
    /// The journal id (None when the write failed).
    pub id: Option<u64>,
}

/// The sessions' handle on the writer task.
#[derive(Clone)]
pub struct JournalWriter {
    tx: mpsc::Sender<JournalRequest>,
}

impl JournalWriter {
    /// Queues a PDU; waits only when the writer is far behind (back-pressure on the bind).
    pub async fn submit(&self, request: JournalRequest) -> Result<(), JournalRequest> {
        self.tx.send(request).await.map_err(|e| e.0)
    }
}

/// A committed journal entry, handed to the processor in memory so it need not read back what
/// was just written.
pub struct Committed {
    pub id: u64,
    pub entry: JournalEntry,
    /// See [`JournalRequest::decoded`].
    pub decoded: Option<Box<ShortMessage>>,
}

/// The writer's side of the way to the processor: see [`Handoff`].
pub struct HandoffSender {
    tx: mpsc::Sender<Committed>,
    shared: Arc<HandoffShared>,
}

/// The processor's side: committed entries in memory, in journal order, then the ids of those
/// that did not fit, to be read back from the journal.
pub struct Handoff {
    pub rx: mpsc::Receiver<Committed>,
    pub spill: SpillReader,
}

/// The processor's view of the spilled ids.
pub struct SpillReader {
    shared: Arc<HandoffShared>,
}

struct HandoffShared {
    spill: Mutex<Spill>,
    /// Wakes the processor when ids are spilled (nothing arrives on the channel then).
    spilled: Notify,
}

#[derive(Default)]
struct Spill {
    /// Set while entries go by id: from the first entry that did not fit until the processor
    /// has taken every spilled id. The channel then holds only entries older than them.
    active: bool,
    ids: VecDeque<u64>,
}

/// A bounded way from the writer to the processor.
pub fn handoff(capacity: usize) -> (HandoffSender, Handoff) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(HandoffShared {
        spill: Mutex::new(Spill::default()),
        spilled: Notify::new(),
    });
    (
        HandoffSender {
            tx,
            shared: shared.clone(),
        },
        Handoff {
            rx,
            spill: SpillReader { shared },
        },
    )
}

impl HandoffSender {
    /// Hands committed entries over; never waits (the acknowledgements must not).
    pub fn send(&self, committed: impl IntoIterator<Item = Committed>) {
        let mut spill = self.shared.spill.lock().unwrap_or_else(|e| e.into_inner());
        let before = spill.ids.len();
        for committed in committed {
            if spill.active {
                spill.ids.push_back(committed.id);
                continue;
            }
            match self.tx.try_send(committed) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(committed)) => {
                    spill.active = true;
                    spill.ids.push_back(committed.id);
                }
                // The processor is gone (shutdown): the entries stay in the journal.
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if spill.ids.len() > before {
            metrics::counter!("vmnd_backlog_spilled_total")
                .increment((spill.ids.len() - before) as u64);
            drop(spill);
            self.shared.spilled.notify_one();
        }
    }
}

impl Handoff {
    /// Up to `max` spilled ids, oldest first, once the channel is empty (its entries are older).
    /// Ends the spill when none are left.
    ///
    /// None once the writer has gone (the daemon is stopping): a spilled backlog can be a
    /// million entries, and processing it all would hold the stop up for minutes, past
    /// systemd's stop timeout. Those entries stay in the journal, which the next start
    /// processes first ([`crate::processor::Processor::recover`]). What the channel holds is
    /// bounded by `backlog_in_memory` and is still processed.
    pub fn take_spilled(&self, max: usize) -> Vec<u64> {
        if self.rx.is_closed() {
            return Vec::new();
        }
        // The channel is looked at under the spill's lock, which the sender holds for a whole
        // hand-over: checked before the lock, a hand-over could fill the channel and spill
        // newer ids in between, and those would be processed before the channel's older
        // ones (a STOP after a START, a concatenated message under a later part's id).
        self.spill.take_once(max, || self.rx.is_empty())
    }

    /// Spilled ids not taken: at a stop, the entries left in the journal for the next start.
    pub fn spilled_left(&self) -> usize {
        self.spill.len()
    }
}

impl SpillReader {
    /// Up to `max` spilled ids, oldest first, if `ready()` holds while no hand-over runs.
    fn take_once(&self, max: usize, ready: impl FnOnce() -> bool) -> Vec<u64> {
        let mut spill = self.shared.spill.lock().unwrap_or_else(|e| e.into_inner());
        if !ready() {
            return Vec::new();
        }
        let n = spill.ids.len().min(max);
        let ids: Vec<u64> = spill.ids.drain(..n).collect();
        if spill.ids.is_empty() {
            spill.active = false;
        }
        ids
    }

    /// Waits until ids are spilled.
    pub async fn notified(&self) {
        self.shared.spilled.notified().await
    }

    /// True when no spilled id waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spilled ids not yet taken.
    pub fn len(&self) -> usize {
        self.shared
            .spill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .len()
    }
}

/// Starts the writer. Committed entries go to the processor through `processed`.
pub fn spawn(store: Store, processed: HandoffSender) -> JournalWriter {
    let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
    // A thread of its own, not a task: the write and the fdatasync block, and a task would
    // hop to tokio's blocking pool and back for every commit (two more thread wake-ups on the
    // acknowledgement path, and on a busy two-core machine each can wait behind other work).
    let spawned = std::thread::Builder::new()
        .name("vmnd-journal".into())
        .spawn(move || run(store, rx, processed));
    if let Err(e) = spawned {
        // Without the writer every deliver_sm gets ESME_RX_T_APPN (its channel is closed), so
        // the carrier retries; the daemon does not pretend to take messages.
        tracing::error!(error = %e, "cannot start the journal writer thread");
    }
    JournalWriter { tx }
}

fn run(store: Store, mut rx: mpsc::Receiver<JournalRequest>, processed: HandoffSender) {
    crate::thread_priority::prefer_low_latency();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The batch split in two, so the entries are journaled and then handed on without a copy.
    let mut entries = Vec::with_capacity(MAX_BATCH);
    let mut decoded = Vec::with_capacity(MAX_BATCH);
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    loop {
        batch.clear();
        if rx.blocking_recv_many(&mut batch, MAX_BATCH) == 0 {
            return; // every session and the daemon dropped their handles
        }
        entries.clear();
        decoded.clear();
        waiting.clear();
        for request in batch.drain(..) {
            entries.push(request.entry);
            decoded.push(request.decoded);
            waiting.push((request.sequence_number, request.received, request.reply));
        }
        let started = Instant::now();
        let outcome = store
            .journal(&entries)
            .and_then(|ids| store.commit_journal_blocking().map(|()| ids));
        metrics::histogram!("vmnd_store_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("vmnd_store_batch_size").record(entries.len() as f64);
        let ids = match outcome {
            Ok(ids) => ids.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::error!(error = %e, batch = entries.len(), "journal commit failed; answering ESME_RX_T_APPN");
                metrics::counter!("vmnd_store_commit_failures_total").increment(1);
                vec![None; entries.len()]
            }
        };
        for ((sequence_number, received, reply), id) in waiting.drain(..).zip(&ids) {
            // A session that went away just misses its ack: the carrier redelivers and the
            // message is already safe (or, on a failed commit, never was).
            let _ = reply.send(AckOutcome {
                sequence_number,
                received,
                status: if id.is_some() {
                    status::ESME_ROK
                } else {
                    status::ESME_RX_T_APPN
                },
                id: *id,
            });
        }
        if ids.first().is_some_and(Option::is_some) {
            let entries = entries.drain(..).zip(decoded.drain(..));
            processed.send(
                ids.into_iter()
                    .flatten()
                    .zip(entries)
                    .map(|(id, (entry, decoded))| Committed { id, entry, decoded }),
            );
        }
        // After the acks: a fill delays the next batch, never this one.
        if let Err(e) = store.fill_journal_ahead() {
            tracing::warn!(error = %e, "journal: cannot zero-fill ahead; commits go on, with slower syncs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn committed(id: u64) -> Committed {
        let entry = JournalEntry {
            carrier: "sim".into(),
            received_at_ms: id,
            pdu: Bytes::from_static(b"pdu"),
        };
        Committed {
            id,
            entry,
            decoded: None,
        }
    }

    #[tokio::test]
    async fn once_the_writer_is_gone_the_spilled_ids_are_left_for_the_next_start() {
        let (tx, mut rx) = handoff(2);
        tx.send((1..=5).map(committed));
        assert_eq!(rx.spill.len(), 3);
        drop(tx);
        // What is in memory is still handed over; the spilled ids are not.
        let mut got = Vec::new();
        rx.rx.recv_many(&mut got, 10).await;
        assert_eq!(got.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(rx.take_spilled(10).is_empty());
        assert_eq!(rx.spilled_left(), 3);
        assert_eq!(rx.rx.recv().await.map(|c| c.id), None, "the channel ends");
    }

    #[tokio::test]
    async fn entries_beyond_the_capacity_go_by_id_in_order_after_the_ones_in_memory() {
        let (tx, mut rx) = handoff(3);
        tx.send((1..=2).map(committed));
        assert!(rx.take_spilled(10).is_empty());
        // 3 fits; 4 and 5 do not, and once spilling, 6 follows them even though 1 was taken.
        tx.send((3..=5).map(committed));
        assert_eq!(rx.rx.recv().await.map(|c| c.id), Some(1));
        tx.send([committed(6)]);
        assert_eq!(rx.spill.len(), 3);
        // While older entries wait in memory, the spilled ones wait behind them.
        assert!(rx.take_spilled(10).is_empty());
        let mut got = Vec::new();
        rx.rx.recv_many(&mut got, 10).await;
        assert_eq!(got.iter().map(|c| c.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(rx.take_spilled(2), vec![4, 5]);
        // Still spilling until the last one is taken: 7 goes by id too.
        tx.send([committed(7)]);
        assert_eq!(rx.take_spilled(10), vec![6, 7]);
        assert!(rx.spill.is_empty());
        // The spill is over: back to memory.
        tx.send([committed(8)]);
        assert_eq!(rx.rx.recv().await.map(|c| c.id), Some(8));
        assert!(rx.take_spilled(10).is_empty());
    }

    /// The processor looks at the channel while holding the spill's lock, so no hand-over can
    /// fill the channel and spill newer ids between its look and its take.
    #[tokio::test]
    async fn the_channel_is_checked_while_no_hand_over_runs() {
        let (tx, rx) = handoff(1);
        tx.send([committed(1), committed(2)]);
        let mut got = Vec::new();
        let mut channel = rx.rx;
        channel.recv_many(&mut got, 10).await;
        assert_eq!(got.len(), 1);
        let tx = std::sync::Arc::new(tx);
        let mut hand_over = None;
        let taken = rx.spill.take_once(10, || {
            // A hand-over started now must wait for the take to end.
            let sender = tx.clone();
            let started = std::thread::spawn(move || sender.send([committed(3)]));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!started.is_finished(), "a hand-over ran during the check");
            hand_over = Some(started);
            channel.is_empty()
        });
        hand_over.expect("started").join().expect("handed over");
        assert_eq!(taken, vec![2]);
        // The spill ended with that take: 3 went to the channel.
        assert_eq!(channel.recv().await.map(|c| c.id), Some(3));
    }

    #[tokio::test]
    async fn a_spill_wakes_the_processor() {
        let (tx, rx) = handoff(1);
        tx.send([committed(1)]);
        let waiter = tokio::spawn(async move {
            rx.spill.notified().await;
            rx.spill.len()
        });
        tx.send([committed(2)]);
        let spilled = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(spilled, 1);
    }

    #[tokio::test]
    async fn a_closed_processor_side_does_not_fail_the_writer() {
        let (tx, rx) = handoff(4);
        drop(rx);
        tx.send((1..=10).map(committed));
    }
}
