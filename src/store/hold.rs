//! Journal holds: a webhook job that lives in memory only, its durable copy being the journal
//! entry of the message it came from.
//!
//! Most webhook jobs are delivered at their first attempt, a few milliseconds after the
//! message was processed. Writing each one to the `jobs` tree and removing it again right
//! after cost two sled writes per message for nothing a crash needs: until the job is settled,
//! the message's journal entry is not released, and a restart processes it again into the same
//! record and the same job (ids derive from the journal id). So the processor writes only the
//! message record and hands the job to the dispatcher with a [`JournalHold`]; the dispatcher
//! settles the hold once the job is delivered, given up on, or written to the `jobs` tree (a
//! failed first attempt, a job that waited too long, a queue over its memory cap). The
//! processor releases a journal entry when every hold on it is settled, after a flush of the
//! main database that covers what the dispatcher wrote before settling.
//!
//! A hold dropped without being settled (shutdown, a job lost to a bug) releases nothing: the
//! entry stays and is processed again at the next start. That is the safe side of promise 2
//! (at least once, with stable ids).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Where settled journal ids wait for the processor's next flush. Cloned into the processor
/// (which hands holds out and releases what was settled) and the daemon (final release).
#[derive(Clone, Default)]
pub struct HoldBook {
    settled: Arc<Mutex<Vec<u64>>>,
    /// Holds handed out and not yet settled: the `vmnd_jobs_held_in_memory` gauge.
    open: Arc<AtomicUsize>,
}

impl HoldBook {
    /// One hold per job for the `jobs` in-memory jobs of journal entry `journal_id`: the entry
    /// is settled once every one of them is.
    pub fn hold(&self, journal_id: u64, jobs: usize) -> Vec<JournalHold> {
        if jobs == 0 {
            return Vec::new();
        }
        self.open.fetch_add(jobs, Ordering::Relaxed);
        let shared = Arc::new(SharedHold {
            journal_id,
            remaining: AtomicUsize::new(jobs),
            book: self.clone(),
        });
        (0..jobs)
            .map(|_| JournalHold {
                shared: shared.clone(),
                settled: AtomicBool::new(false),
            })
            .collect()
    }

    /// The journal ids settled since the last call. Take them *before* flushing the main
    /// database: what was written before each settle is then covered by that flush.
    pub fn take_settled(&self) -> Vec<u64> {
        match self.settled.lock() {
            Ok(mut ids) => std::mem::take(&mut *ids),
            // A panic while pushing an id: what is there is still valid.
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    /// Holds handed out and not settled yet.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn push(&self, journal_id: u64) {
        match self.settled.lock() {
            Ok(mut ids) => ids.push(journal_id),
            Err(poisoned) => poisoned.into_inner().push(journal_id),
        }
    }
}

struct SharedHold {
    journal_id: u64,
    /// Holds on this entry not settled yet.
    remaining: AtomicUsize,
    book: HoldBook,
}

/// One in-memory job's claim on its journal entry. See the module header.
pub struct JournalHold {
    shared: Arc<SharedHold>,
    settled: AtomicBool,
}

impl JournalHold {
    /// The job no longer needs its journal entry: it is done, or durable elsewhere. Call only
    /// after whatever made it so was written (the flush that follows covers it). Idempotent.
    pub fn settle(&self) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.book.open.fetch_sub(1, Ordering::Relaxed);
        if self.shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.book.push(self.shared.journal_id);
        }
    }

    /// True once settled: from then on the job is in the `jobs` tree (or finished).
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for JournalHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalHold")
            .field("journal_id", &self.shared.journal_id)
            .field("settled", &self.is_settled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_settled_once_every_hold_on_it_is() {
        let book = HoldBook::default();
        let holds = book.hold(7, 3);
        assert_eq!(book.open(), 3);
        holds[0].settle();
        holds[2].settle();
        assert!(
            book.take_settled().is_empty(),
            "one job still holds entry 7"
        );
        holds[1].settle();
        assert_eq!(book.take_settled(), vec![7]);
        assert_eq!(book.open(), 0);
        assert!(book.take_settled().is_empty(), "taken once");
    }

    #[test]
    fn settling_twice_counts_once() {
        let book = HoldBook::default();
        let holds = book.hold(1, 2);
        holds[0].settle();
        holds[0].settle();
        assert!(holds[0].is_settled());
        assert!(!holds[1].is_settled());
        assert!(
            book.take_settled().is_empty(),
            "a second settle of the same hold must not stand in for the other job"
        );
        holds[1].settle();
        assert_eq!(book.take_settled(), vec![1]);
    }

    #[test]
    fn a_hold_dropped_unsettled_releases_nothing() {
        let book = HoldBook::default();
        let holds = book.hold(9, 1);
        drop(holds);
        assert!(book.take_settled().is_empty());
        assert_eq!(
            book.open(),
            1,
            "still counted: its entry stays in the journal"
        );
    }

    #[test]
    fn no_jobs_no_hold() {
        let book = HoldBook::default();
        assert!(book.hold(3, 0).is_empty());
        assert_eq!(book.open(), 0);
    }
}
