//! The durable job queue: every action of an acknowledged message is a `Job`, kept until it
//! succeeds (DESIGN.md promise 2), and moved to the `dead` tree once it has been retried for
//! its webhook's `retry_for`. A webhook job due at once is written here only if its first
//! attempt fails or waits: until then its message's journal entry is its durable copy (see
//! [`crate::store::hold`]). Every other job is written with its message.
//!
//! `jobs`: job id (u64 BE) -> [`Job`] (JSON). The due time lives in the record; the dispatcher
//! keeps the schedule in memory and rebuilds it from this tree at startup, so nothing claimed
//! but unfinished before a crash is forgotten.
//! `dead`: job id (u64 BE) -> [`DeadLetter`] (JSON).
//! `attempts` (in the records database, see `store::records`): job id (u64 BE) ++ attempt
//! number (u32 BE) ++ try (u8: 0 the `url`, 1 the `fallback_url`) -> [`AttemptRecord`] (a
//! small binary layout, `AttemptRecord::encode`; JSON in stores written before it): every
//! request a webhook job made, kept with the messages (no retention yet, like them).

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::{Result, Store, StoreError, decode_json, encode_json, key_u64};

/// One action to run for one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `message id << 8 | action index`: deterministic, so reprocessing a journal entry after a
    /// crash rewrites the same jobs instead of adding new ones.
    pub id: u64,
    pub message_id: u64,
    /// The webhook this job posts to.
    pub webhook: String,
    /// The contract's `event`: `message`, `receipt`, ...
    pub event: String,
    pub attempts: u32,
    pub created_ms: u64,
    pub due_ms: u64,
    pub first_attempt_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    /// Present for an SMS to send (then `webhook` is empty): the outbound SMS engine runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsJob>,
    /// Present for an e-mail forward (then `webhook` is empty): `outbound::email` sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailJob>,
}

/// An e-mail forward of a message. Subject and body are rendered from the message record when
/// it is sent, with `[smtp]`'s templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailJob {
    /// The rule's `email` addresses: the recipients, and the only senders whose replies are
    /// taken back.
    pub to: Vec<String>,
    /// The number the SMS was sent to, and the person who sent it: the reply goes back from
    /// the one to the other.
    pub vmn: String,
    pub msisdn: String,
    /// The reply token of `Reply-To: reply+<token>@<reply_domain>`: drawn at random at the
    /// first attempt (so planning stays deterministic) and kept here and in the store's
    /// `mail_tokens` before that attempt sends anything; every retry reuses it.
    #[serde(default)]
    pub token: Option<String>,
}

/// An SMS vmnd sends: a reply, an expiry reply, a poll answer or a forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsJob {
    /// The bind it leaves through (the number's `carrier`).
    pub carrier: String,
    /// The number it is sent from.
    pub from: String,
    /// The person (or phone) it goes to: digits, international form unless `to_ton_npi` says
    /// otherwise.
    pub to: String,
    /// The destination's type of number and numbering plan when they are not international /
    /// ISDN (1, 1): a reply to a sender who wrote from a national or unknown-type address
    /// goes back to the same kind of address (see `MessageRecord::from_ton_npi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ton_npi: Option<[u8; 2]>,
    pub text: String,
    /// `reply`, `expiry_reply`, `poll_reply`, `forward`.
    pub purpose: String,
    /// The concatenation reference used for every segment (stable across retries, so a
    /// segment re-sent after a crash joins the same message on the handset).
    pub reference: u8,
    /// Segments the carrier accepted so far (index, carrier message id): a retry sends only
    /// the rest.
    #[serde(default)]
    pub sent: Vec<(u8, String)>,
}

/// The dispatcher queue of e-mail forwards. With a ':' like `sms:<carrier>`, so that a webhook
/// simply called "email" keeps a queue of its own.
pub const EMAIL_QUEUE: &str = "email:smtp";

impl Job {
    pub fn id_for(message_id: u64, action_index: u8) -> u64 {
        (message_id << 8) | u64::from(action_index)
    }

    /// Which dispatcher queue runs it: the webhook's name, `sms:<carrier>` or `email`.
    pub fn queue_key(&self) -> String {
        match (&self.sms, &self.email) {
            (Some(sms), _) => format!("sms:{}", sms.carrier),
            (None, Some(_)) => EMAIL_QUEUE.to_string(),
            (None, None) => self.webhook.clone(),
        }
    }
}

/// A job given up on, kept for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job: Job,
    pub dead_at_ms: u64,
    pub reason: String,
}

/// One request a webhook job made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Which attempt of the job (1 = the first).
    pub attempt: u32,
    pub at_ms: u64,
    pub url: String,
    /// `delivered` or `failed`.
    pub outcome: String,
    pub status: Option<u16>,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The first byte of an attempt record in its binary layout ([`AttemptRecord::encode`]). A JSON
/// record, as stores before it hold, starts with `{`.
const ATTEMPT_LAYOUT_1: u8 = 1;

impl AttemptRecord {
    /// The record as stored: a small binary layout, little-endian:
    /// `[1][flags][outcome][attempt u32][at_ms u64][status u16][latency_ms f64][url]` then the
    /// outcome's text when it is neither `delivered` nor `failed`, then the error when flagged;
    /// each text is a u32 length and its bytes. flags: 1 = a status, 2 = an error.
    ///
    /// Why not JSON: one record is written per delivered request, and in the end-to-end bench
    /// its JSON (some 130 bytes, the latency through a float formatter) and the bytes fjall
    /// then flushed and compacted were some 10% of the daemon's CPU; a 40-byte record instead
    /// took most of that away. Reading stays as before for records stored as JSON.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let AttemptRecord {
            attempt,
            at_ms,
            url,
            outcome,
            status,
            latency_ms,
            error,
        } = self;
        let (outcome_code, outcome_text) = match outcome.as_str() {
            "delivered" => (0u8, None),
            "failed" => (1, None),
            other => (2, Some(other)),
        };
        let flags = u8::from(status.is_some()) | (u8::from(error.is_some()) << 1);
        let mut out = Vec::with_capacity(40 + url.len());
        out.push(ATTEMPT_LAYOUT_1);
        out.push(flags);
        out.push(outcome_code);
        out.extend_from_slice(&attempt.to_le_bytes());
        out.extend_from_slice(&at_ms.to_le_bytes());
        out.extend_from_slice(&status.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&latency_ms.to_le_bytes());
        let mut text = |t: &str| {
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
            out.extend_from_slice(t.as_bytes());
        };
        text(url);
        if let Some(t) = outcome_text {
            text(t);
        }
        if let Some(e) = error {
            text(e);
        }
        out
    }

    /// Reads a stored record: the binary layout, or JSON as older stores hold it. Anything
    /// else, or a record cut short, is an error, never a panic.
    pub(crate) fn decode(raw: &[u8]) -> Result<AttemptRecord> {
        if raw.first() != Some(&ATTEMPT_LAYOUT_1) {
            return decode_json(raw);
        }
        let mut read = LayoutReader(&raw[1..]);
        let [flags] = read.array::<1>()?;
        let [outcome_code] = read.array::<1>()?;
        let attempt = u32::from_le_bytes(read.array()?);
        let at_ms = u64::from_le_bytes(read.array()?);
        let status = u16::from_le_bytes(read.array()?);
        let latency_ms = f64::from_le_bytes(read.array()?);
        if flags & !3 != 0 {
            return Err(attempt_corrupt("unknown flags"));
        }
        let url = read.text()?;
        let outcome = match outcome_code {
            0 => "delivered".to_string(),
            1 => "failed".to_string(),
            2 => read.text()?,
            _ => return Err(attempt_corrupt("unknown outcome")),
        };
        let error = if flags & 2 != 0 {
            Some(read.text()?)
        } else {
            None
        };
        if !read.0.is_empty() {
            return Err(attempt_corrupt("bytes after the end"));
        }
        Ok(AttemptRecord {
            attempt,
            at_ms,
            url,
            outcome,
            status: (flags & 1 != 0).then_some(status),
            latency_ms,
            error,
        })
    }
}

fn attempt_corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("attempt record: {what}"))
}

/// Reads [`AttemptRecord::encode`]'s layout front to back; running out is an error.
struct LayoutReader<'a>(&'a [u8]);

impl LayoutReader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, tail) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| attempt_corrupt("cut short"))?;
        self.0 = tail;
        Ok(*head)
    }

    fn text(&mut self) -> Result<String> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if self.0.len() < len {
            return Err(attempt_corrupt("cut short"));
        }
        let (bytes, tail) = self.0.split_at(len);
        self.0 = tail;
        String::from_utf8(bytes.to_vec()).map_err(|_| attempt_corrupt("text is not UTF-8"))
    }
}

/// Which dead letters an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only jobs of this queue (a webhook's name, or `sms:<carrier>`).
    pub queue: Option<String>,
    /// Only letters that died at or after this time.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Paging: only job ids below this (the listing runs newest first).
    pub before: Option<u64>,
}

impl DeadLetterFilter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.queue
            .as_ref()
            .is_none_or(|q| *q == letter.job.queue_key())
            && self.since_ms.is_none_or(|t| letter.dead_at_ms >= t)
            && self.until_ms.is_none_or(|t| letter.dead_at_ms <= t)
    }
}

fn attempt_key(job_id: u64, attempt: u32, fallback: bool) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..8].copy_from_slice(&job_id.to_be_bytes());
    key[8..12].copy_from_slice(&attempt.to_be_bytes());
    key[12] = u8::from(fallback);
    key
}

impl Store {
    /// Every queued job's `(due_ms, id, queue key)`, for the dispatcher's schedule at startup.
    ///
    /// A record that does not decode (a damaged disk block) is logged, counted
    /// (`vmnd_jobs_unreadable_total`) and left where it is for an operator: one bad record
    /// must not keep every other pending job from running.
    pub fn job_schedule(&self) -> Result<Vec<(u64, u64, String)>> {
        let mut out = Vec::new();
        for kv in self.trees().jobs.iter() {
            let (k, v) = kv?;
            let job: Job = match decode_json(&v) {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!(key = %hex::encode(&k), error = %e, "a job record does not decode; left in the queue, not run");
                    metrics::counter!("vmnd_jobs_unreadable_total").increment(1);
                    continue;
                }
            };
            out.push((job.due_ms, key_u64(&k)?, job.queue_key()));
        }
        Ok(out)
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>> {
        match self.trees().jobs.get(id.to_be_bytes())? {
            Some(raw) => Ok(Some(decode_json(&raw)?)),
            None => Ok(None),
        }
    }

    /// The job succeeded: forget it.
    pub fn job_done(&self, id: u64) -> Result<()> {
        self.trees().jobs.remove(id.to_be_bytes())?;
        Ok(())
    }

    /// The job failed and will be retried: keep its new state.
    pub fn job_update(&self, job: &Job) -> Result<()> {
        self.trees()
            .jobs
            .insert(job.id.to_be_bytes(), encode_json(job))?;
        Ok(())
    }

    /// The job is given up on: move it to the dead letters in one transaction.
    pub fn job_dead(&self, letter: &DeadLetter) -> Result<()> {
        let t = self.trees();
        let key = letter.job.id.to_be_bytes();
        let value = encode_json(letter);
        let replaced = (t.jobs, t.dead).transaction(|(jobs, dead)| {
            jobs.remove(&key)?;
            let old = dead.insert(&key, value.as_slice())?;
            Ok::<bool, sled::transaction::ConflictableTransactionError<super::StoreError>>(
                old.is_some(),
            )
        })?;
        if !replaced {
            self.inner
                .dead_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Dead letters, newest job first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.dead_letters_matching(&DeadLetterFilter::default(), limit)
    }

    /// Dead letters that pass `filter`, newest job first, at most `limit`.
    pub fn dead_letters_matching(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let dead = self.trees().dead;
        let range = match filter.before {
            Some(id) => dead.range(..id.to_be_bytes()),
            None => dead.range::<&[u8], _>(..),
        };
        let mut out = Vec::new();
        for kv in range.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = kv?;
            let letter: DeadLetter = decode_json(&v)?;
            if filter.matches(&letter) {
                out.push(letter);
            }
        }
        Ok(out)
    }

    pub fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        match self.trees().dead.get(id.to_be_bytes())? {
            Some(raw) => Ok(Some(decode_json(&raw)?)),
            None => Ok(None),
        }
    }

    /// Puts a dead letter back in the queue as a fresh job due at `now_ms` (attempts and
    /// deadline start again). Returns the job to schedule, or `None` if there is no such
    /// letter. The job is written before the letter is removed: a crash in between leaves
    /// both, and replaying again rewrites the same job.
    pub fn replay_dead_letter(&self, id: u64, now_ms: u64) -> Result<Option<Job>> {
        let Some(letter) = self.dead_letter(id)? else {
            return Ok(None);
        };
        let job = Job {
            attempts: 0,
            due_ms: now_ms,
            first_attempt_ms: None,
            last_error: None,
            last_status: None,
            ..letter.job
        };
        let t = self.trees();
        t.jobs.insert(id.to_be_bytes(), encode_json(&job))?;
        if t.dead.remove(id.to_be_bytes())?.is_some() {
            self.inner
                .dead_count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Some(job))
    }

    /// Records one request of a webhook job (see the module header for which are kept). Held
    /// in memory until the next [`Store::flush_main`], which writes it (see `store::records`).
    pub fn record_attempt(
        &self,
        job_id: u64,
        fallback: bool,
        record: &AttemptRecord,
    ) -> Result<()> {
        self.inner.records.put_attempt(
            attempt_key(job_id, record.attempt, fallback).to_vec(),
            record.encode(),
        )
    }

    /// The recorded requests of a job, in order.
    pub fn attempts(&self, job_id: u64) -> Result<Vec<AttemptRecord>> {
        let mut out = Vec::new();
        for v in self
            .inner
            .records
            .attempts_with_prefix(&job_id.to_be_bytes())?
        {
            out.push(AttemptRecord::decode(&v)?);
        }
        Ok(out)
    }

    /// Dead letters held (a counter, not a scan: see `Inner::dead_count`).
    pub fn dead_letter_count(&self) -> usize {
        self.inner
            .dead_count
            .load(std::sync::atomic::Ordering::Relaxed) as usize
    }

    /// Jobs waiting (due or not), counted by a scan of the `jobs` tree: exact, and O(n) in
    /// sled 0.34, so for tests and tools. A running daemon's dispatcher keeps the same figure
    /// in memory ([`crate::outbound::dispatcher::QueueDepth`]).
    pub fn queue_depth(&self) -> usize {
        self.trees().jobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<AttemptRecord> {
        vec![
            AttemptRecord {
                attempt: 1,
                at_ms: 1_764_419_187_123,
                url: "http://127.0.0.1:8080/sms".into(),
                outcome: "delivered".into(),
                status: Some(200),
                latency_ms: 0.8125,
                error: None,
            },
            AttemptRecord {
                attempt: u32::MAX,
                at_ms: u64::MAX,
                url: "https://crm.example/hooks/ümlaut?key=1&x=\"y\"".into(),
                outcome: "failed".into(),
                status: None,
                latency_ms: 30_000.0,
                error: Some("timeout: no answer in 30s 😀".into()),
            },
            AttemptRecord {
                attempt: 3,
                at_ms: 0,
                url: String::new(),
                outcome: "refused by the tenant".into(),
                status: Some(0),
                latency_ms: f64::MIN_POSITIVE,
                error: Some(String::new()),
            },
        ]
    }

    #[test]
    fn a_damaged_job_record_does_not_hold_up_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let good = Job {
            id: 2 << 8,
            message_id: 2,
            webhook: "crm".into(),
            event: "message".into(),
            attempts: 0,
            created_ms: 1,
            due_ms: 5,
            first_attempt_ms: None,
            last_error: None,
            last_status: None,
            sms: None,
            email: None,
        };
        store
            .trees()
            .jobs
            .insert((1u64 << 8).to_be_bytes(), b"{bad".as_slice())
            .unwrap();
        store.job_update(&good).unwrap();
        assert_eq!(
            store.job_schedule().unwrap(),
            vec![(5, 2 << 8, "crm".to_string())]
        );
        assert!(store.job(1 << 8).is_err(), "kept for an operator");
    }

    #[test]
    fn attempt_records_round_trip_through_the_binary_layout() {
        for record in samples() {
            let raw = record.encode();
            assert_eq!(raw[0], ATTEMPT_LAYOUT_1);
            assert_eq!(AttemptRecord::decode(&raw).unwrap(), record);
            assert!(
                raw.len() < encode_json(&record).len(),
                "smaller than its JSON"
            );
        }
    }

    #[test]
    fn attempt_records_stored_as_json_still_read() {
        for record in samples() {
            assert_eq!(
                AttemptRecord::decode(&encode_json(&record)).unwrap(),
                record
            );
        }
    }

    #[test]
    fn a_damaged_attempt_record_is_an_error_never_a_panic() {
        for record in samples() {
            let raw = record.encode();
            // Every cut short, and every byte after the end.
            for n in 1..raw.len() {
                assert!(AttemptRecord::decode(&raw[..n]).is_err(), "cut at {n}");
            }
            let mut longer = raw.clone();
            longer.push(0);
            assert!(AttemptRecord::decode(&longer).is_err());
            // Unknown flags or outcome.
            let mut flags = raw.clone();
            flags[1] |= 0x80;
            assert!(AttemptRecord::decode(&flags).is_err());
            let mut outcome = raw.clone();
            outcome[2] = 9;
            assert!(AttemptRecord::decode(&outcome).is_err());
            // A text that is not UTF-8 (the url's first byte, when there is one).
            if !record.url.is_empty() {
                let mut bad = raw.clone();
                bad[1 + 1 + 1 + 4 + 8 + 2 + 8 + 4] = 0xff;
                assert!(AttemptRecord::decode(&bad).is_err());
            }
        }
        // A length that claims more than there is.
        let mut huge = samples()[0].encode();
        let at = 1 + 1 + 1 + 4 + 8 + 2 + 8;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(AttemptRecord::decode(&huge).is_err());
        // Garbage of every length, from a fixed seed, behind the layout's first byte.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let mut raw = vec![ATTEMPT_LAYOUT_1];
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                raw.push(state as u8);
            }
            let _ = AttemptRecord::decode(&raw);
        }
        assert!(AttemptRecord::decode(b"").is_err());
        assert!(AttemptRecord::decode(b"{not json").is_err());
    }
}
