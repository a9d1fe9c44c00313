//! Group commit: the one task that writes the inbound journal.
//!
//! Sessions hand it deliver_sm PDUs; it takes whatever has queued up (up to a batch), writes
//! them, makes them durable with one flush (and fsync), and only then tells each session to send
//! `deliver_sm_resp` 0. While one flush runs the next batch gathers, so the flush cost is shared
//! by everything that arrived meanwhile. If the store fails, every PDU of the batch is answered
//! ESME_RX_T_APPN so the carrier retries (DESIGN.md promise 1).

use std::time::Instant;

use tokio::sync::mpsc;

use super::{JournalEntry, Store};
use crate::smpp::pdu::status;

/// Most PDUs in one group commit.
const MAX_BATCH: usize = 4096;

/// A PDU to journal, and where to report the outcome.
pub struct JournalRequest {
    pub entry: JournalEntry,
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

/// Committed journal entries, handed to the processor in memory so it need not read back what
/// was just written.
pub type Committed = (u64, JournalEntry);

/// Starts the writer. Committed entries go to `processed` for decoding after the ack.
pub fn spawn(store: Store, processed: mpsc::UnboundedSender<Committed>) -> JournalWriter {
    let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
    tokio::spawn(run(store, rx, processed));
    JournalWriter { tx }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<JournalRequest>,
    processed: mpsc::UnboundedSender<Committed>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut entries = Vec::with_capacity(MAX_BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return; // every session and the daemon dropped their handles
        }
        entries.clear();
        entries.extend(batch.iter().map(|r| r.entry.clone()));
        let started = Instant::now();
        let outcome = match store.journal(&entries) {
            Ok(ids) => store.commit_journal().await.map(|()| ids),
            Err(e) => Err(e),
        };
        metrics::histogram!("vmnd_store_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("vmnd_store_batch_size").record(batch.len() as f64);
        match outcome {
            Ok(ids) => {
                for (request, id) in batch.drain(..).zip(ids) {
                    // A session that went away just misses its ack: the carrier redelivers and
                    // the message is already safe.
                    let _ = request.reply.send(AckOutcome {
                        sequence_number: request.sequence_number,
                        received: request.received,
                        status: status::ESME_ROK,
                        id: Some(id),
                    });
                    let _ = processed.send((id, request.entry));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "journal commit failed; answering ESME_RX_T_APPN");
                metrics::counter!("vmnd_store_commit_failures_total").increment(1);
                for request in &batch {
                    let _ = request.reply.send(AckOutcome {
                        sequence_number: request.sequence_number,
                        received: request.received,
                        status: status::ESME_RX_T_APPN,
                        id: None,
                    });
                }
            }
        }
    }
}
