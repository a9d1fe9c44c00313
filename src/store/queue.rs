//! The durable job queue: every action of an acknowledged message is a `Job` written in the
//! same transaction as the message (DESIGN.md promise 2), kept until it succeeds, and moved to
//! the `dead` tree once it has been retried for its webhook's `retry_for`.
//!
//! `jobs`: job id (u64 BE) -> [`Job`] (JSON). The due time lives in the record; the dispatcher
//! keeps the schedule in memory and rebuilds it from this tree at startup, so nothing claimed
//! but unfinished before a crash is forgotten.
//! `dead`: job id (u64 BE) -> [`DeadLetter`] (JSON).

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::{Result, Store, decode_json, encode_json, key_u64};

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
    /// The person (or phone) it goes to: digits, international form.
    pub to: String,
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

impl Store {
    /// Every queued job's `(due_ms, id, queue key)`, for the dispatcher's schedule at startup.
    pub fn job_schedule(&self) -> Result<Vec<(u64, u64, String)>> {
        let mut out = Vec::new();
        for kv in self.trees().jobs.iter() {
            let (k, v) = kv?;
            let job: Job = decode_json(&v)?;
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
        (t.jobs, t.dead).transaction(|(jobs, dead)| {
            jobs.remove(&key)?;
            dead.insert(&key, value.as_slice())?;
            Ok::<(), sled::transaction::ConflictableTransactionError<super::StoreError>>(())
        })?;
        Ok(())
    }

    /// Dead letters, newest job first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        for kv in self.trees().dead.iter().rev().take(limit) {
            let (_, v) = kv?;
            out.push(decode_json(&v)?);
        }
        Ok(out)
    }

    pub fn dead_letter_count(&self) -> usize {
        self.trees().dead.len()
    }

    /// Jobs waiting (due or not).
    pub fn queue_depth(&self) -> usize {
        self.trees().jobs.len()
    }
}
