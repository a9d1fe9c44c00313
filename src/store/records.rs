//! Message records, delivery attempts and when each contact was last seen: the three
//! collections every message writes to, kept in an LSM tree (fjall 3, in `<data_dir>/records/`)
//! beside sled. Every fjall type stays in this module.
//!
//! Why not sled: both collections only grow, under keys that only grow (journal ids, job
//! ids). sled 0.34 keeps at most 16 entries in a leaf, so with rising keys it splits the last
//! leaf every eight inserts, copying the leaf and rewriting its parent. In a profile of the
//! ingest benchmark those splits were 13% of the daemon's CPU; each of these writes cost
//! 10-30 µs of it per message, and moving both here took the median from 104 to 83 µs/msg
//! (BENCHMARKS.md, sixth session). Every leaf is also a sled page held in memory: the peak RSS
//! after a million messages went from 128-140 MiB to under 100. An LSM tree appends to a
//! memtable and writes sorted tables in the background; rising keys are its best case.
//!
//! Durability is the main database's: writes here are buffered (fjall's journal is persisted
//! by hand), and [`Records::persist`] runs in [`super::Store::flush_main`] before any journal
//! entry is released. A crash before that only means processing the entry again, which
//! writes the same record under the same key.
//!
//! Memtables are rotated here, not only by fjall: fjall 3.1 asks its worker to rotate a full
//! memtable through a bounded channel (`try_send`, 1,000 slots) and drops the request when the
//! channel is full, so while the worker is busy the active memtable keeps growing, and the
//! larger it gets the longer its flush keeps the worker busy. In the ingest benchmark that
//! was the daemon's RSS reaching 150 to 365 MiB in some runs; a plain write loop reached
//! 740 MiB for 1,000,000 records. Counting the bytes written and rotating at
//! [`MEMTABLE_BYTES`] keeps it bounded: fjall then makes writers wait (on the processor's
//! thread, off the acknowledgement path) while four memtables wait to be flushed.
//!
//! Attempt records wait in memory until that persist, which writes them in one batch. They
//! come from the dispatcher's tasks on the async runtime, one per request: a write of its own
//! for each would take fjall's journal lock once per request, and fjall makes a writer sleep
//! while its memtables wait to be flushed, which must not happen on a runtime thread. A
//! dispatcher records a job's attempts before it settles the job's hold, and the processor
//! persists before it releases settled entries, so a released entry's attempts are on disk.
//! Contacts' seen times wait the same way, for another reason: fjall hands its journal to the
//! OS after every single write (a system call each), and the processor writes one per message.
//!
//! Layout:
//! - `messages`: message id (u64 BE) -> [`super::MessageRecord`] (JSON).
//! - `attempts`: job id (u64 BE) ++ attempt (u32 BE) ++ fallback (u8) -> attempt record (binary,
//!   [`super::queue::AttemptRecord::encode`]; JSON in stores written before it),
//!   see [`super::queue`].
//! - `contacts_seen`: a contact's key in sled's `contacts` tree -> first seen (ms, u64 BE) ++
//!   last seen (ms, u64 BE). Every message from a phone number reads and writes its sender's
//!   entry; in sled that was a compare-and-swap on the `contacts` tree, 12% of the daemon's CPU
//!   in a profile of the ingest benchmark (seventh session), and a new sled leaf for every
//!   eighth new sender. sled's `contacts` now holds only what consent changes write, and
//!   [`super::consent`] lays the two over each other when it reads a contact.
//!
//! Databases from before this module kept both in sled trees of the same names; [`Records::open`]
//! moves what they hold here and drops them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Result, StoreError};

/// fjall's block cache. Records are read back only by the admin API and by the dispatcher for
/// jobs that waited in the `jobs` tree, so a small cache will do.
const CACHE_BYTES: u64 = 2 << 20;
/// Memtable size per collection. Each is flushed to a sorted table when full; two of them are
/// the bulk of what this store holds in memory. 2 MiB against 4: a peak RSS of 93-95 MiB
/// against 95-99 after 1,000,000 messages, with no CPU difference that showed.
const MEMTABLE_BYTES: u64 = 2 << 20;
/// The journal's cap (fjall's minimum): memtables are flushed when their journal reaches it.
const JOURNAL_BYTES: u64 = 64 << 20;
/// How many records a migration from sled moves per write batch.
const MIGRATION_BATCH: usize = 4096;
/// Attempt records held for the next persist before the one that adds to them writes them
/// all (the processor persists every 100 ms; this bounds the memory if it cannot).
const PENDING_ATTEMPTS_MAX: usize = 16_384;

/// Contacts' seen times held for the next persist before the one that adds to them writes
/// them all (as [`PENDING_ATTEMPTS_MAX`]).
const PENDING_SEEN_MAX: usize = 16_384;

/// A key and its value.
type Pair = (Vec<u8>, Vec<u8>);

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Records(e.to_string())
    }
}

/// A keyspace and the bytes written to it since its memtable was last rotated here.
struct Collection {
    keyspace: fjall::Keyspace,
    unrotated: AtomicU64,
}

impl Collection {
    fn new(keyspace: fjall::Keyspace) -> Collection {
        Collection {
            keyspace,
            unrotated: AtomicU64::new(0),
        }
    }

    /// Counts `bytes` just written and rotates the memtable once they reach
    /// [`MEMTABLE_BYTES`] (see the module header).
    fn wrote(&self, bytes: u64) -> Result<()> {
        let total = self.unrotated.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total >= MEMTABLE_BYTES {
            self.unrotated.store(0, Ordering::Relaxed);
            self.keyspace.rotate_memtable()?;
        }
        Ok(())
    }
}

/// Bytes a key and value take in a memtable, near enough for [`Collection::wrote`].
fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len() + 32) as u64
}

/// When a contact was first and last seen (ms since the epoch), as `contacts_seen` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) first_ms: u64,
    pub(crate) last_ms: u64,
}

impl Seen {
    fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.first_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.last_ms.to_be_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Result<Seen> {
        let (first, last) = raw
            .split_first_chunk::<8>()
            .and_then(|(first, rest)| Some((first, <[u8; 8]>::try_from(rest).ok()?)))
            .ok_or_else(|| {
                StoreError::Corrupt(format!("a seen entry of {} bytes, not 16", raw.len()))
            })?;
        Ok(Seen {
            first_ms: u64::from_be_bytes(*first),
            last_ms: u64::from_be_bytes(last),
        })
    }
}

/// The records database. Cheap to share: fjall's handles are reference-counted.
pub(crate) struct Records {
    db: fjall::Database,
    messages: Collection,
    attempts: Collection,
    seen: Collection,
    /// Seen times not yet written to `contacts_seen`. Held, like attempts, for one batch at
    /// [`Records::persist`]: fjall hands its journal to the OS after every single write, a
    /// system call per message that was 6% of the daemon's CPU. The lock also makes
    /// [`Records::touch_seen`]'s read and write one step: two messages from one sender must
    /// not both read the old entry and the later write lose the earlier's time.
    pending_seen: Mutex<HashMap<Vec<u8>, Seen>>,
    /// Attempt records not yet written to `attempts`, in the order they came.
    pending_attempts: Mutex<Vec<Pair>>,
    /// `SyncData` when the daemon fsyncs (`fsync = true`), else only to the OS.
    persist_mode: fjall::PersistMode,
}

impl Records {
    /// Opens (or creates) the records database in `dir`. Like sled's, fjall's lock may still be
    /// held for a moment by a database just closed in this process: wait up to five seconds.
    pub(crate) fn open(dir: &Path, fsync: bool) -> Result<Records> {
        let started = Instant::now();
        let db = loop {
            let opened = fjall::Database::builder(dir)
                .cache_size(CACHE_BYTES)
                // Persisted by `persist`, before journal entries are released: a flush to the
                // OS after every write would be a system call per message.
                .manual_journal_persist(true)
                .max_journaling_size(JOURNAL_BYTES)
                // One background worker: two spent more CPU waking each other than they saved.
                .worker_threads(1)
                .open();
            match opened {
                Err(fjall::Error::Locked) if started.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let options = || fjall::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let messages = db.keyspace("messages", options)?;
        let attempts = db.keyspace("attempts", options)?;
        let seen = db.keyspace("contacts_seen", options)?;
        Ok(Records {
            db,
            messages: Collection::new(messages),
            attempts: Collection::new(attempts),
            seen: Collection::new(seen),
            pending_seen: Mutex::new(HashMap::new()),
            pending_attempts: Mutex::new(Vec::new()),
            persist_mode: if fsync {
                fjall::PersistMode::SyncData
            } else {
                fjall::PersistMode::Buffer
            },
        })
    }

    /// Writes the attempt records held in memory, then makes every write so far durable (or,
    /// without fsync, hands it to the OS).
    pub(crate) fn persist(&self) -> Result<()> {
        self.write_pending_attempts()?;
        self.write_pending_seen()?;
        Ok(self.db.persist(self.persist_mode)?)
    }

    /// True when attempt records or seen times wait for [`Records::persist`].
    pub(crate) fn has_pending_writes(&self) -> bool {
        !self.pending().is_empty() || !self.pending_seen().is_empty()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pair>> {
        // A panic while the lock was held left a whole Vec behind: keep using it.
        self.pending_attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_pending_attempts(&self) -> Result<()> {
        let pairs = std::mem::take(&mut *self.pending());
        if pairs.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        let mut bytes = 0;
        for (key, value) in &pairs {
            batch.insert(&self.attempts.keyspace, key.as_slice(), value.as_slice());
            bytes += entry_bytes(key, value);
        }
        batch.commit().inspect_err(|_| {
            // Kept for the next persist, ahead of what came meanwhile.
            let mut pending = self.pending();
            let newer = std::mem::replace(&mut *pending, pairs);
            pending.extend(newer);
        })?;
        self.attempts.wrote(bytes)
    }

    /// Writes message records in one batch (one journal write for all of them).
    pub(crate) fn put_messages(
        &self,
        records: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<()> {
        let mut batch = self.db.batch();
        let mut bytes = 0;
        for (id, value) in records {
            bytes += entry_bytes(&id.to_be_bytes(), &value);
            batch.insert(&self.messages.keyspace, id.to_be_bytes(), value);
        }
        batch.commit()?;
        self.messages.wrote(bytes)
    }

    /// The stored record of message `id`.
    pub(crate) fn message(&self, id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .messages
            .keyspace
            .get(id.to_be_bytes())?
            .map(|v| v.to_vec()))
    }

    /// Records with ids below `upper`, newest first.
    pub(crate) fn messages_below(&self, upper: u64) -> impl Iterator<Item = Result<Vec<u8>>> {
        self.messages
            .keyspace
            .range(..upper.to_be_bytes())
            .rev()
            .map(|guard| Ok(guard.value()?.to_vec()))
    }

    /// How many records are stored: a scan of the keys, for tests and the operators' page.
    pub(crate) fn message_count(&self) -> Result<usize> {
        Ok(self.messages.keyspace.len()?)
    }

    /// Holds an attempt record for the next [`Records::persist`] (see the module header). If
    /// [`PENDING_ATTEMPTS_MAX`] are already held (the processor has not persisted for a while),
    /// this call writes them all itself.
    pub(crate) fn put_attempt(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        let mut pending = self.pending();
        pending.push((key, value));
        let full = pending.len() >= PENDING_ATTEMPTS_MAX;
        drop(pending);
        if full {
            self.write_pending_attempts()?;
        }
        Ok(())
    }

    /// Attempt records whose key starts with `prefix`, written or pending, in key order.
    pub(crate) fn attempts_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut found: Vec<Pair> = self
            .pending()
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .cloned()
            .collect();
        for guard in self.attempts.keyspace.prefix(prefix) {
            let (key, value) = guard.into_inner()?;
            // A pending record replaces a written one of the same key.
            if !found.iter().any(|(k, _)| k.as_slice() == &*key) {
                found.push((key.to_vec(), value.to_vec()));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, value)| value).collect())
    }

    /// Records that the contact under `key` sent a message at `at_ms`: the entry's first and
    /// last times widen to include it. An entry that does not decode is replaced (it holds
    /// only these two times, and refusing the message over them would hold up the number).
    /// Held for the next [`Records::persist`]; past [`PENDING_SEEN_MAX`] contacts held, written
    /// at once.
    pub(crate) fn touch_seen(&self, key: &[u8], at_ms: u64) -> Result<()> {
        let mut pending = self.pending_seen();
        if let Some(held) = pending.get_mut(key) {
            held.first_ms = held.first_ms.min(at_ms);
            held.last_ms = held.last_ms.max(at_ms);
            return Ok(());
        }
        let stored = match self.seen.keyspace.get(key)? {
            Some(raw) => Seen::decode(&raw)
                .inspect_err(|e| tracing::warn!(error = %e, "replacing a contact's seen times"))
                .ok(),
            None => None,
        };
        let seen = match stored {
            Some(s) if s.first_ms <= at_ms && at_ms <= s.last_ms => return Ok(()),
            Some(s) => Seen {
                first_ms: s.first_ms.min(at_ms),
                last_ms: s.last_ms.max(at_ms),
            },
            None => Seen {
                first_ms: at_ms,
                last_ms: at_ms,
            },
        };
        pending.insert(key.to_vec(), seen);
        if pending.len() >= PENDING_SEEN_MAX {
            self.write_seen(&mut pending)?;
        }
        Ok(())
    }

    fn pending_seen(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Seen>> {
        // A panic while the lock was held left a whole map behind: keep using it.
        self.pending_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_pending_seen(&self) -> Result<()> {
        self.write_seen(&mut self.pending_seen())
    }

    /// Writes the held seen times in one batch; they stay held if it fails.
    fn write_seen(&self, pending: &mut HashMap<Vec<u8>, Seen>) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        let mut bytes = 0;
        for (key, seen) in pending.iter() {
            let value = seen.encode();
            bytes += entry_bytes(key, &value);
            batch.insert(&self.seen.keyspace, key.as_slice(), value);
        }
        batch.commit()?;
        pending.clear();
        self.seen.wrote(bytes)
    }

    /// The seen times of the contact under `key`.
    pub(crate) fn seen(&self, key: &[u8]) -> Result<Option<Seen>> {
        if let Some(held) = self.pending_seen().get(key) {
            return Ok(Some(*held));
        }
        self.seen
            .keyspace
            .get(key)?
            .map(|raw| Seen::decode(&raw))
            .transpose()
    }

    /// Seen entries whose keys start with `prefix` and sort after `start` (`start` itself too
    /// when `inclusive`), in key order.
    pub(crate) fn seen_from(
        &self,
        prefix: Vec<u8>,
        start: Vec<u8>,
        inclusive: bool,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Seen)>> {
        // Listings are rare (the admin API): the held times are written first, so one ordered
        // read sees them.
        let written = self.write_pending_seen();
        let lower = if inclusive {
            std::ops::Bound::Included(start)
        } else {
            std::ops::Bound::Excluded(start)
        };
        let entries = self
            .seen
            .keyspace
            .range::<Vec<u8>, _>((lower, std::ops::Bound::Unbounded))
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                Ok((key.to_vec(), Seen::decode(&value)?))
            })
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)));
        written.err().map(Err).into_iter().chain(entries)
    }

    /// Moves the sled trees `messages` and `attempts` of an older layout here, then drops them.
    /// A crash midway moves the same records again at the next start: a tree is dropped only
    /// once what it held here is durable.
    pub(crate) fn migrate_from_sled(&self, db: &sled::Db) -> Result<()> {
        for (name, collection) in [("messages", &self.messages), ("attempts", &self.attempts)] {
            let keyspace = &collection.keyspace;
            if !db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == name.as_bytes())
            {
                continue;
            }
            let tree = db.open_tree(name)?;
            let mut moved = 0usize;
            let mut batch = self.db.batch();
            let mut in_batch = 0;
            for kv in tree.iter() {
                let (k, v) = kv?;
                batch.insert(keyspace, k.to_vec(), v.to_vec());
                in_batch += 1;
                moved += 1;
                if in_batch == MIGRATION_BATCH {
                    std::mem::replace(&mut batch, self.db.batch()).commit()?;
                    in_batch = 0;
                }
            }
            batch.commit()?;
            self.db.persist(fjall::PersistMode::SyncAll)?;
            drop(tree);
            db.drop_tree(name)?;
            if moved > 0 {
                tracing::info!(
                    tree = name,
                    records = moved,
                    "moved from sled to the records store"
                );
            }
        }
        Ok(())
    }
}

impl Drop for Records {
    /// A clean stop writes what is held; fjall persists its journal when it closes.
    fn drop(&mut self) {
        if let Err(e) = self.write_pending_attempts() {
            tracing::warn!(error = %e, "attempt records could not be written at close");
        }
        if let Err(e) = self.write_pending_seen() {
            tracing::warn!(error = %e, "contacts' seen times could not be written at close");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_after_persist_and_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let records = Records::open(dir.path(), true).unwrap();
            records
                .put_messages((1..=5u64).map(|id| (id, format!("m{id}").into_bytes())))
                .unwrap();
            hold_attempt(&records, 9, 1, b"a1");
            hold_attempt(&records, 9, 2, b"a2");
            hold_attempt(&records, 10, 1, b"b1");
            records.persist().unwrap();
        }
        let records = Records::open(dir.path(), true).unwrap();
        assert_eq!(records.message(3).unwrap(), Some(b"m3".to_vec()));
        assert_eq!(records.message(6).unwrap(), None);
        assert_eq!(records.message_count().unwrap(), 5);
        let below_4: Vec<Vec<u8>> = records.messages_below(4).map(|r| r.unwrap()).collect();
        assert_eq!(
            below_4,
            vec![b"m3".to_vec(), b"m2".to_vec(), b"m1".to_vec()]
        );
        let of_9 = records.attempts_with_prefix(&9u64.to_be_bytes()).unwrap();
        assert_eq!(of_9, vec![b"a1".to_vec(), b"a2".to_vec()]);
    }

    #[test]
    fn sled_trees_of_the_old_layout_are_moved_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .unwrap();
        let old = db.open_tree("messages").unwrap();
        for id in 0..(MIGRATION_BATCH as u64 + 10) {
            old.insert(id.to_be_bytes(), format!("old{id}").as_bytes())
                .unwrap();
        }
        db.open_tree("attempts")
            .unwrap()
            .insert(attempt_key(7, 1), b"att".as_slice())
            .unwrap();
        drop(old);
        let records = Records::open(&dir.path().join("records"), false).unwrap();
        records.migrate_from_sled(&db).unwrap();
        assert_eq!(records.message_count().unwrap(), MIGRATION_BATCH + 10);
        assert_eq!(records.message(4100).unwrap(), Some(b"old4100".to_vec()));
        let moved = records.attempts_with_prefix(&7u64.to_be_bytes()).unwrap();
        assert_eq!(moved, vec![b"att".to_vec()]);
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"messages"));
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"attempts"));
        // A second open finds nothing left to move.
        records.migrate_from_sled(&db).unwrap();
        assert_eq!(records.message_count().unwrap(), MIGRATION_BATCH + 10);
    }

    #[test]
    fn attempts_wait_in_memory_until_persist_and_are_read_from_both_places() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path(), false).unwrap();
        hold_attempt(&records, 5, 1, b"first");
        records.persist().unwrap();
        hold_attempt(&records, 5, 3, b"third");
        hold_attempt(&records, 5, 2, b"second");
        hold_attempt(&records, 6, 1, b"other");
        assert!(records.has_pending_writes());
        // Not in fjall yet: one written record for job 5.
        assert_eq!(
            records.attempts.keyspace.prefix(5u64.to_be_bytes()).count(),
            1
        );
        let want = vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()];
        assert_eq!(
            records.attempts_with_prefix(&5u64.to_be_bytes()).unwrap(),
            want
        );
        records.persist().unwrap();
        assert!(!records.has_pending_writes());
        assert_eq!(
            records.attempts.keyspace.prefix(5u64.to_be_bytes()).count(),
            3
        );
        assert_eq!(
            records.attempts_with_prefix(&5u64.to_be_bytes()).unwrap(),
            want
        );
    }

    #[test]
    fn a_full_buffer_of_attempts_is_written_by_the_record_that_fills_it() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path(), false).unwrap();
        for job in 0..PENDING_ATTEMPTS_MAX as u64 {
            records
                .put_attempt(attempt_key(job, 1), b"a".to_vec())
                .unwrap();
        }
        assert!(!records.has_pending_writes());
        assert_eq!(
            records.attempts.keyspace.len().unwrap(),
            PENDING_ATTEMPTS_MAX
        );
    }

    #[test]
    fn attempts_held_at_a_clean_close_are_written() {
        let dir = tempfile::tempdir().unwrap();
        {
            let records = Records::open(dir.path(), false).unwrap();
            hold_attempt(&records, 8, 1, b"held");
        }
        let records = Records::open(dir.path(), false).unwrap();
        assert_eq!(
            records.attempts_with_prefix(&8u64.to_be_bytes()).unwrap(),
            vec![b"held".to_vec()]
        );
    }

    #[test]
    fn memory_in_memtables_stays_bounded_under_a_fast_writer() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path(), false).unwrap();
        let value = vec![b'x'; 1000];
        let per_batch = 250u64;
        let batch_bytes = per_batch * entry_bytes(&[0; 8], &value);
        let batches = 24 * MEMTABLE_BYTES / batch_bytes;
        let mut most = 0;
        for b in 0..batches {
            records
                .put_messages((0..per_batch).map(|i| (b * per_batch + i, value.clone())))
                .unwrap();
            most = most.max(records.db.write_buffer_size());
        }
        // fjall halts writers while four memtables wait for a flush: one active and four
        // sealed, each rotated within a batch of its size. Without the rotation here the
        // active memtable took most of what was written (fjall dropped its own requests).
        let bound = 5 * (MEMTABLE_BYTES + batch_bytes);
        assert!(
            most <= bound,
            "memtables held {most} bytes (bound {bound}) of {} written",
            batches * batch_bytes
        );
        assert_eq!(
            records.message_count().unwrap(),
            (batches * per_batch) as usize
        );
    }

    #[test]
    fn seen_times_widen_survive_a_reopen_and_list_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let records = Records::open(dir.path(), true).unwrap();
            records.touch_seen(b"a1", 500).unwrap();
            records.touch_seen(b"a1", 300).unwrap();
            records.touch_seen(b"a1", 900).unwrap();
            // Inside what is stored: nothing written.
            records.touch_seen(b"a1", 400).unwrap();
            records.touch_seen(b"a2", 7).unwrap();
            records.touch_seen(b"b1", 8).unwrap();
            // Held until the persist, and read from where they are held.
            assert!(records.has_pending_writes());
            assert_eq!(records.seen.keyspace.get(b"a1").unwrap(), None);
            assert_eq!(
                records.seen(b"a1").unwrap(),
                Some(Seen {
                    first_ms: 300,
                    last_ms: 900
                })
            );
            records.persist().unwrap();
            assert!(!records.has_pending_writes());
            // Written, then widened again from what is written.
            records.touch_seen(b"a1", 1_000).unwrap();
            records.touch_seen(b"a1", 200).unwrap();
            // A damaged entry is replaced, not an error for the message that finds it.
            records.seen.keyspace.insert(b"a3", b"xyz").unwrap();
            assert!(records.seen(b"a3").is_err());
            records.touch_seen(b"a3", 42).unwrap();
            records.persist().unwrap();
        }
        let records = Records::open(dir.path(), true).unwrap();
        let seen = |first_ms, last_ms| Seen { first_ms, last_ms };
        assert_eq!(records.seen(b"a1").unwrap(), Some(seen(200, 1_000)));
        assert_eq!(records.seen(b"a3").unwrap(), Some(seen(42, 42)));
        assert_eq!(records.seen(b"zz").unwrap(), None);
        let listed = |start: &[u8], inclusive| {
            records
                .seen_from(b"a".to_vec(), start.to_vec(), inclusive)
                .map(|r| r.unwrap().0)
                .collect::<Vec<_>>()
        };
        assert_eq!(listed(b"a", true), [b"a1", b"a2", b"a3"]);
        assert_eq!(listed(b"a1", false), [b"a2", b"a3"]);
        assert_eq!(listed(b"a1", true), [b"a1", b"a2", b"a3"]);
        assert!(listed(b"a3", false).is_empty());
    }

    #[test]
    fn held_seen_times_are_listed_written_when_too_many_and_at_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            let records = Records::open(dir.path(), false).unwrap();
            records.touch_seen(b"k1", 5).unwrap();
            let listed: Vec<_> = records
                .seen_from(b"k".to_vec(), b"k".to_vec(), true)
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(
                listed,
                [(
                    b"k1".to_vec(),
                    Seen {
                        first_ms: 5,
                        last_ms: 5
                    }
                )]
            );
            for n in 0..PENDING_SEEN_MAX as u64 {
                records.touch_seen(&n.to_be_bytes(), n).unwrap();
            }
            assert!(records.pending_seen().len() < PENDING_SEEN_MAX);
            records.touch_seen(b"k2", 6).unwrap();
            assert!(records.has_pending_writes());
        }
        let records = Records::open(dir.path(), false).unwrap();
        assert_eq!(records.seen(b"k2").unwrap().map(|s| s.last_ms), Some(6));
        assert_eq!(records.seen.keyspace.len().unwrap(), PENDING_SEEN_MAX + 2);
    }

    /// Holds attempt `attempt` of job `job` with `value` for the next persist.
    fn hold_attempt(records: &Records, job: u64, attempt: u32, value: &[u8]) {
        records
            .put_attempt(attempt_key(job, attempt), value.to_vec())
            .unwrap();
    }

    fn attempt_key(job: u64, attempt: u32) -> Vec<u8> {
        let mut key = job.to_be_bytes().to_vec();
        key.extend_from_slice(&attempt.to_be_bytes());
        key.push(0);
        key
    }
}
