//! Reassembly state for concatenated messages, kept durably so a restart in the middle of a
//! long message loses nothing.
//!
//! `parts` tree keys: `<group>` + one byte. `<group>` is
//! `carrier \0 from \0 to \0 reference \0 total \0`; the last byte is 0 for the group's
//! [`GroupMeta`] and the part number (1..=total) for a [`PartRecord`]. The processor releases a
//! part's journal entry once the part is durable here; the assembled message replaces the group:
//! its record is made durable in the records database first, then one sled transaction removes
//! the parts (a crash in between only assembles the same message again).
//!
//! `assembled` tree: journal id (u64 BE) -> () for every part of a group that became a message,
//! written in that same transaction. A crash after it but before the processor released the
//! parts' journal entries replays them at the next start; without this record, a replayed part
//! would open a new group and, after the reassembly timeout, come out as a second, incomplete
//! message under another id. With it, the replay is absorbed as a duplicate. Entries go once
//! their journal entries are released ([`Store::forget_assembled`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::queue::Job;
use super::{MessageRecord, Result, Store, StoreError, decode_json, encode_json};

/// Which concatenated message a part belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey(pub Vec<u8>);

impl GroupKey {
    pub fn new(carrier: &str, from: &str, to: &str, reference: u16, total: u8) -> GroupKey {
        let mut key = Vec::with_capacity(carrier.len() + from.len() + to.len() + 16);
        for field in [carrier, from, to] {
            key.extend_from_slice(field.as_bytes());
            key.push(0);
        }
        key.extend_from_slice(reference.to_string().as_bytes());
        key.push(0);
        key.extend_from_slice(total.to_string().as_bytes());
        key.push(0);
        GroupKey(key)
    }

    fn with(&self, byte: u8) -> Vec<u8> {
        let mut key = self.0.clone();
        key.push(byte);
        key
    }
}

/// What is known about a concatenated message while its parts arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// The journal id of the first part to arrive: it becomes the message's id.
    pub first_journal_id: u64,
    /// When the first part arrived: becomes the message's `received_at`.
    pub first_received_ms: u64,
    pub total: u8,
    /// Part numbers received so far.
    pub received: Vec<u8>,
    /// The journal ids of those parts (empty in groups stored before this was kept).
    #[serde(default)]
    pub journal_ids: Vec<u64>,
}

impl GroupMeta {
    pub fn is_complete(&self) -> bool {
        self.received.len() >= usize::from(self.total)
    }

    pub fn missing(&self) -> Vec<u8> {
        (1..=self.total)
            .filter(|n| !self.received.contains(n))
            .collect()
    }
}

/// One part's payload, enough to decode it later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    pub seq: u8,
    pub data_coding: u8,
    /// User data after the UDH.
    pub user_data: Vec<u8>,
    /// Octets of the removed UDH, UDHL included (packed GSM fill bits depend on it).
    pub udh_octets: usize,
    /// The sender's address type, when not international (see `MessageRecord::from_ton_npi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ton_npi: Option<[u8; 2]>,
}

/// What adding a part did.
#[derive(Debug, Clone, PartialEq)]
pub enum PartAdded {
    /// Stored; others are still missing.
    Waiting,
    /// This part number was already there with the same content (a carrier redelivery):
    /// absorbed.
    Duplicate,
    /// This part number was already there with *other* content: the sender reused the
    /// reference (it has only 256 values) for a new message while the old one was still
    /// missing parts. Nothing was stored. The caller delivers the old group as it is
    /// (incomplete) and adds this part again, which then opens a new group.
    ReferenceReused(GroupMeta),
    /// Every part is there: assemble and call [`Store::finish_group`].
    Complete(GroupMeta),
}

impl Store {
    /// Stores one part (its journal entry is released by the processor once this is durable).
    pub fn add_part(
        &self,
        journal_id: u64,
        received_at_ms: u64,
        group: &GroupKey,
        total: u8,
        part: &PartRecord,
    ) -> Result<PartAdded> {
        let t = self.trees();
        let meta_key = group.with(0);
        let part_key = group.with(part.seq);
        let part_value = encode_json(part);
        if t.assembled.contains_key(journal_id.to_be_bytes())? {
            // Replayed after a crash: this part is already in an assembled message.
            return Ok(PartAdded::Duplicate);
        }
        let outcome = t.parts.transaction(|parts| {
            let mut meta = match parts.get(&meta_key)? {
                Some(raw) => {
                    decode_json::<GroupMeta>(&raw).map_err(ConflictableTransactionError::Abort)?
                }
                None => GroupMeta {
                    first_journal_id: journal_id,
                    first_received_ms: received_at_ms,
                    total,
                    received: Vec::new(),
                    journal_ids: Vec::new(),
                },
            };
            if meta.received.contains(&part.seq) {
                let stored = match parts.get(&part_key)? {
                    Some(raw) => Some(
                        decode_json::<PartRecord>(&raw)
                            .map_err(ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                // The UDH may differ between redeliveries (an 8-bit or a 16-bit reference);
                // the text may not.
                let same = stored.is_none_or(|stored| {
                    stored.data_coding == part.data_coding && stored.user_data == part.user_data
                });
                return Ok(if same {
                    PartAdded::Duplicate
                } else {
                    PartAdded::ReferenceReused(meta)
                });
            }
            meta.received.push(part.seq);
            meta.journal_ids.push(journal_id);
            parts.insert(part_key.as_slice(), part_value.as_slice())?;
            parts.insert(meta_key.as_slice(), encode_json(&meta))?;
            Ok::<_, ConflictableTransactionError<StoreError>>(if meta.is_complete() {
                PartAdded::Complete(meta)
            } else {
                PartAdded::Waiting
            })
        })?;
        Ok(outcome)
    }

    /// The parts received so far, in part-number order.
    pub fn group_parts(&self, group: &GroupKey, meta: &GroupMeta) -> Result<Vec<PartRecord>> {
        let mut seqs = meta.received.clone();
        seqs.sort_unstable();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(raw) = self.trees().parts.get(group.with(seq))? {
                out.push(decode_json(&raw)?);
            }
        }
        Ok(out)
    }

    /// Every group still waiting, with its meta (for the timeout sweep and restart recovery).
    pub fn open_groups(&self) -> Result<Vec<(GroupKey, GroupMeta)>> {
        let mut out = Vec::new();
        for kv in self.trees().parts.iter() {
            let (k, v) = kv?;
            if k.last() == Some(&0) {
                let group = GroupKey(k[..k.len() - 1].to_vec());
                out.push((group, decode_json(&v)?));
            }
        }
        Ok(out)
    }

    /// Replaces a group by its assembled message and the message's jobs. The record is
    /// persisted before the parts go: once the transaction below is on disk, the parts whose
    /// journal entries were released earlier exist nowhere else. That is one journal sync of
    /// the records database per concatenated message (off the acknowledgement path).
    pub fn finish_group(
        &self,
        group: &GroupKey,
        meta: &GroupMeta,
        message: &MessageRecord,
        jobs: &[Job],
    ) -> Result<()> {
        let t = self.trees();
        let id = meta.first_journal_id;
        self.inner.records.put_messages([(id, message.encode())])?;
        self.inner.records.persist()?;
        let job_values: Vec<(u64, Vec<u8>)> = jobs.iter().map(|j| (j.id, encode_json(j))).collect();
        let mut part_keys = vec![group.with(0)];
        part_keys.extend(meta.received.iter().map(|seq| group.with(*seq)));
        (t.parts, t.jobs, t.assembled).transaction(|(parts, jobs_tree, assembled)| {
            for key in &part_keys {
                parts.remove(key.as_slice())?;
            }
            for journal_id in &meta.journal_ids {
                assembled.insert(&journal_id.to_be_bytes(), &[] as &[u8])?;
            }
            for (job_id, value) in &job_values {
                jobs_tree.insert(&job_id.to_be_bytes(), value.as_slice())?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Drops the `assembled` records of parts whose journal entries `is_live` says are gone
    /// (released: they can no longer be replayed). Returns how many went.
    pub fn forget_assembled(&self, is_live: impl Fn(u64) -> bool) -> Result<usize> {
        let tree = self.trees().assembled;
        let mut forgotten = 0;
        for key in tree.iter().keys() {
            let key = key?;
            if !is_live(super::key_u64(&key)?) {
                tree.remove(key)?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// How many `assembled` records are kept (parts whose entries may still be replayed).
    pub fn assembled_records(&self) -> usize {
        self.trees().assembled.len()
    }

    /// Stores a whole message (or receipt) and its jobs; the processor releases its journal
    /// entry once this is durable. `receipt_index` maps the carrier's
    /// message id to this record.
    pub fn finish_message(
        &self,
        journal_id: u64,
        message: &MessageRecord,
        jobs: &[Job],
        receipt_index: Option<&[u8]>,
    ) -> Result<()> {
        let t = self.trees();
        if let Some(key) = receipt_index {
            t.receipts.insert(key, &journal_id.to_be_bytes())?;
        }
        self.finish_messages(&[(journal_id, Arc::new(message.clone()), jobs.to_vec())])
    }

    /// Stores many messages and their jobs (their journal entries are released later) with
    /// plain inserts: the processor's batch path.
    pub fn finish_messages(&self, batch: &[(u64, Arc<MessageRecord>, Vec<Job>)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Not atomic, and need not be: the journal entries stay until the processor has flushed
        // these and releases them, so a crash in between only means processing them again into
        // the same record and jobs (ids derive from the journal id). The records go in one
        // write batch of the records database; jobs are plain sled inserts, neither a sled
        // transaction nor a sled batch: in sled 0.34 each of those seals and writes its I/O
        // buffer twice (through its thread pool, which wakes every worker), and at a low rate,
        // where a batch is one or two messages, that was most of the processor's cost.
        // Jobs first: a record that can be read means its jobs are queued (the admin API and
        // the tests read it that way).
        let t = self.trees();
        for (_, _, jobs) in batch {
            for job in jobs {
                t.jobs.insert(job.id.to_be_bytes(), encode_json(job))?;
            }
        }
        self.inner
            .records
            .put_messages(batch.iter().map(|(id, message, _)| (*id, message.encode())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(seq: u8) -> PartRecord {
        PartRecord {
            seq,
            data_coding: 0,
            user_data: vec![b'a' + seq],
            udh_octets: 6,
            from_ton_npi: None,
        }
    }

    /// A store holding one message assembled from parts 1-3 (journal ids 10-12) of group
    /// `reference`.
    fn assembled(reference: u16) -> (tempfile::TempDir, Store, GroupKey) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let group = GroupKey::new("sim", "919800000011", "567678", reference, 3);
        for (journal_id, seq) in [(10, 1), (11, 2)] {
            assert_eq!(
                store
                    .add_part(journal_id, u64::from(seq), &group, 3, &part(seq))
                    .unwrap(),
                PartAdded::Waiting
            );
        }
        let PartAdded::Complete(meta) = store.add_part(12, 3, &group, 3, &part(3)).unwrap() else {
            panic!("three of three parts make a complete group");
        };
        assert_eq!(meta.journal_ids, vec![10, 11, 12]);
        store
            .finish_group(&group, &meta, &super::super::tests::sample_message(10), &[])
            .unwrap();
        (dir, store, group)
    }

    #[test]
    fn a_part_replayed_after_its_group_was_assembled_is_absorbed() {
        let (_dir, store, group) = assembled(7);
        // The crash came after the assembled message was durable, before the last part's
        // journal entry was released: it is processed again.
        assert_eq!(
            store.add_part(12, 3, &group, 3, &part(3)).unwrap(),
            PartAdded::Duplicate
        );
        assert!(
            store.open_groups().unwrap().is_empty(),
            "no second group was opened"
        );
        // A new message reusing the reference is a new group (new journal ids).
        assert_eq!(
            store.add_part(20, 4, &group, 3, &part(1)).unwrap(),
            PartAdded::Waiting
        );
    }

    #[test]
    fn a_part_number_seen_again_is_a_duplicate_only_with_the_same_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let group = GroupKey::new("sim", "919800000011", "567678", 9, 3);
        assert_eq!(
            store.add_part(30, 1, &group, 3, &part(1)).unwrap(),
            PartAdded::Waiting
        );
        // Redelivered under another UDH (a 16-bit reference is one octet longer): the same.
        let redelivered = PartRecord {
            udh_octets: 7,
            ..part(1)
        };
        assert_eq!(
            store.add_part(31, 2, &group, 3, &redelivered).unwrap(),
            PartAdded::Duplicate
        );
        // Other text under the same part number: a new message reusing the reference.
        let other = PartRecord {
            user_data: b"other".to_vec(),
            ..part(1)
        };
        let PartAdded::ReferenceReused(old) = store.add_part(32, 3, &group, 3, &other).unwrap()
        else {
            panic!("other text under part 1 is not a redelivery");
        };
        assert_eq!((old.first_journal_id, old.journal_ids), (30, vec![30]));
        // Nothing of the new part was stored: the old group still holds its own text.
        let (_, meta) = store.open_groups().unwrap().remove(0);
        assert_eq!(store.group_parts(&group, &meta).unwrap(), vec![part(1)]);
        // Other coding with the same octets is other text too.
        let recoded = PartRecord {
            data_coding: 8,
            ..part(1)
        };
        assert!(matches!(
            store.add_part(33, 4, &group, 3, &recoded).unwrap(),
            PartAdded::ReferenceReused(_)
        ));
    }

    #[test]
    fn records_of_released_parts_are_forgotten_and_live_ones_kept() {
        let (_dir, store, group) = assembled(8);
        assert_eq!(store.forget_assembled(|id| id == 12).unwrap(), 2);
        assert_eq!(
            store.add_part(12, 3, &group, 3, &part(3)).unwrap(),
            PartAdded::Duplicate
        );
        assert_eq!(store.forget_assembled(|_| false).unwrap(), 1);
        assert_eq!(store.assembled_records(), 0);
    }
}
