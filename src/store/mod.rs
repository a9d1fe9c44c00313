//! Everything vmnd keeps on disk, behind one module: the pre-ack inbound journal with group
//! commit ([`journal`], our own append-only segment files), message records and delivery
//! attempts in an LSM tree (`store::records`, fjall, in `<data_dir>/records/`) and sled 0.34 for
//! everything else (see DESIGN.md on its durability caveats): concatenation parts, receipts,
//! consent, and (in [`queue`]) the durable job queue and dead letters.
//!
//! The journal (`<data_dir>/wal/`) holds each deliver_sm exactly as received, written and
//! fdatasynced before `deliver_sm_resp` 0 goes out. Its group commit writes only journal
//! records, so its cost does not grow with what processing and delivery write meanwhile. An
//! entry is released once the processor's writes for it are flushed in the main database
//! ([`Store::flush_main`], then [`Store::release_journal`]); a crash before that only means
//! processing it again, which writes the same record and jobs (ids derive from the journal id;
//! a delivered job may then be delivered twice, which the contract's stable ids allow). Older
//! layouts kept the journal in sled (a tree of the main database, then a database of its own
//! in `<data_dir>/journal`); what they still hold is moved at open.
//!
//! The records database holds `messages`: id (u64 BE) -> [`MessageRecord`] (JSON), and the
//! delivery attempts of jobs. A message's id is the journal id of the message (of its first
//! part, for a concatenated one), so reprocessing is idempotent.
//!
//! The sled database (`<data_dir>`) holds everything else:
//! - `parts`:    reassembly state, see [`parts`].
//! - `assembled`: journal ids of parts already assembled into a message, see [`parts`].
//! - `receipts`: `"<carrier>\0<carrier message id>"` -> message id (u64 BE) of the receipt record.
//! - `jobs`, `dead`: see [`queue`].
//! - `outbound`, `outbound_ids`: SMS sent and their receipts, see [`outbound`].
//! - `votes`: poll votes, see [`polls`].
//! - `keywords`: keywords added at run time through the admin API, see [`keywords`].
//! - `consent`, `contacts`, `contact_states`, `ledger`, `ledger_index`: opt-in/opt-out state,
//!   contacts and the consent ledger, see [`consent`].
//! - `mail_tokens`, `mail_replies`: reply tokens of e-mail forwards and every e-mail that came
//!   back over LMTP, see [`mail`].

pub mod consent;
pub mod hold;
pub mod journal;
pub mod keywords;
pub mod mail;
pub mod outbound;
pub mod parts;
pub mod polls;
pub mod queue;
pub(crate) mod records;
pub mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::smpp::receipt::Receipt;

/// What can go wrong in the store. The daemon never panics on these: the session answers
/// ESME_RX_T_APPN and the carrier retries.
#[derive(Debug)]
pub enum StoreError {
    Sled(sled::Error),
    /// The records database (fjall), see `store::records` (src/store/records.rs).
    Records(String),
    Io(std::io::Error),
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sled(e) => write!(f, "sled: {e}"),
            StoreError::Records(e) => write!(f, "records store: {e}"),
            StoreError::Io(e) => write!(f, "i/o: {e}"),
            StoreError::Corrupt(e) => write!(f, "corrupt record: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How far past `since` a newest-first scan keeps looking for stragglers.
const SINCE_MARGIN_MS: u64 = 60_000;

/// A deliver_sm as it came off a bind, before anything was decoded beyond validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub carrier: String,
    pub received_at_ms: u64,
    /// The whole PDU, header included.
    pub pdu: Bytes,
}

impl JournalEntry {
    /// `[received_at_ms u64 BE][carrier len u8][carrier][pdu]`: compact, no serde on the hot path.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.carrier.len() + self.pdu.len());
        self.encode_into(&mut out);
        out
    }

    /// [`JournalEntry::encode`], appending to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let carrier = self.carrier.as_bytes();
        let carrier = &carrier[..carrier.len().min(255)];
        out.extend_from_slice(&self.received_at_ms.to_be_bytes());
        out.push(carrier.len() as u8);
        out.extend_from_slice(carrier);
        out.extend_from_slice(&self.pdu);
    }

    pub fn decode(raw: &[u8]) -> Result<JournalEntry> {
        let corrupt = || StoreError::Corrupt("journal entry too short".into());
        let at: [u8; 8] = raw
            .get(..8)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?;
        let len = *raw.get(8).ok_or_else(corrupt)? as usize;
        let carrier = raw.get(9..9 + len).ok_or_else(corrupt)?;
        let pdu = raw.get(9 + len..).ok_or_else(corrupt)?;
        Ok(JournalEntry {
            carrier: String::from_utf8_lossy(carrier).into_owned(),
            received_at_ms: u64::from_be_bytes(at),
            pdu: Bytes::copy_from_slice(pdu),
        })
    }
}

/// One stored message (or receipt) as operators and the webhook see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Stable id, assigned when the (first part of the) message was journaled.
    pub id: String,
    /// `message` or `receipt`.
    pub event: String,
    pub to: String,
    pub from: String,
    /// The sender's type of number and numbering plan (`source_addr_ton`, `_npi`) when they are
    /// not international / ISDN (1, 1): a reply goes back as the same kind of address, since
    /// national digits sent as international would reach another subscriber. None for
    /// international senders (and records stored before this was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ton_npi: Option<[u8; 2]>,
    /// Decoded text; hex of the payload when `encoding` is `binary`.
    pub text: String,
    pub encoding: String,
    pub keyword: Option<String>,
    pub inbox: Option<String>,
    pub args: Option<String>,
    pub carrier: String,
    pub received_at: String,
    pub received_at_ms: u64,
    pub parts: u32,
    /// False when a concatenated message was delivered after the reassembly timeout.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_parts: Vec<u8>,
    /// False when the destination is not a number vmnd serves (stored, counted, never forwarded).
    pub routed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// The webhooks this message was queued for.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Set when the message changed the sender's consent (an `optin`/`optout` event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentInfo>,
    /// Automatic actions the guard held back (`"rate: reply to 9198.."`), see [`crate::guard`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guarded: Vec<String>,
}

impl MessageRecord {
    /// The record as stored: serde_json's bytes for it, written by hand (see
    /// [`crate::json_write`]) because every message is encoded once; the tests hold it to
    /// serde's. Reading it back is serde's.
    pub(crate) fn encode(&self) -> Vec<u8> {
        use crate::json_write::{optional_string, string, strings, unsigned, unsigneds};
        // Every field, by name: a field added to the struct does not compile here until it is
        // written (serde would write it; this must too, or the store would lose it).
        let MessageRecord {
            id,
            event,
            to,
            from,
            from_ton_npi,
            text,
            encoding,
            keyword,
            inbox,
            args,
            carrier,
            received_at,
            received_at_ms,
            parts,
            complete,
            missing_parts,
            routed,
            receipt,
            webhooks,
            consent,
            guarded,
        } = self;
        let mut out = Vec::with_capacity(384 + text.len());
        out.extend_from_slice(b"{\"id\":");
        string(&mut out, id);
        out.extend_from_slice(b",\"event\":");
        string(&mut out, event);
        out.extend_from_slice(b",\"to\":");
        string(&mut out, to);
        out.extend_from_slice(b",\"from\":");
        string(&mut out, from);
        if let Some(ton_npi) = from_ton_npi {
            out.extend_from_slice(b",\"from_ton_npi\":");
            unsigneds(&mut out, ton_npi);
        }
        out.extend_from_slice(b",\"text\":");
        string(&mut out, text);
        out.extend_from_slice(b",\"encoding\":");
        string(&mut out, encoding);
        out.extend_from_slice(b",\"keyword\":");
        optional_string(&mut out, keyword.as_deref());
        out.extend_from_slice(b",\"inbox\":");
        optional_string(&mut out, inbox.as_deref());
        out.extend_from_slice(b",\"args\":");
        optional_string(&mut out, args.as_deref());
        out.extend_from_slice(b",\"carrier\":");
        string(&mut out, carrier);
        out.extend_from_slice(b",\"received_at\":");
        string(&mut out, received_at);
        out.extend_from_slice(b",\"received_at_ms\":");
        unsigned(&mut out, *received_at_ms);
        out.extend_from_slice(b",\"parts\":");
        unsigned(&mut out, u64::from(*parts));
        out.extend_from_slice(if *complete {
            b",\"complete\":true"
        } else {
            b",\"complete\":false"
        });
        if !missing_parts.is_empty() {
            out.extend_from_slice(b",\"missing_parts\":");
            unsigneds(&mut out, missing_parts);
        }
        out.extend_from_slice(if *routed {
            b",\"routed\":true"
        } else {
            b",\"routed\":false"
        });
        // Rare and nested: serde_json writes them (plain structs: writing into a Vec cannot
        // fail).
        if let Some(receipt) = receipt {
            out.extend_from_slice(b",\"receipt\":");
            let _ = serde_json::to_writer(&mut out, receipt);
        }
        out.extend_from_slice(b",\"webhooks\":");
        strings(&mut out, webhooks);
        if let Some(consent) = consent {
            out.extend_from_slice(b",\"consent\":");
            let _ = serde_json::to_writer(&mut out, consent);
        }
        if !guarded.is_empty() {
            out.extend_from_slice(b",\"guarded\":");
            strings(&mut out, guarded);
        }
        out.push(b'}');
        out
    }
}

/// How a message changed its sender's consent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentInfo {
    pub previous: consent::ConsentState,
    pub state: consent::ConsentState,
    /// The word or phrase that matched.
    pub matched: String,
}

/// Formats a numeric id the way every API and payload shows it.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Parses an id as [`format_id`] writes it.
pub fn parse_id(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// Filters of `GET /api/messages`.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub to: Option<String>,
    pub from: Option<String>,
    pub keyword: Option<String>,
    pub inbox: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Newest first, starting strictly before this id (the previous page's `next`).
    pub before: Option<u64>,
    pub limit: usize,
}

impl MessageFilter {
    fn matches(&self, m: &MessageRecord) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let eq_opt = |want: &Option<String>, have: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| have.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        eq(&self.to, &m.to)
            && eq(&self.from, &m.from)
            && eq_opt(&self.keyword, &m.keyword)
            && eq_opt(&self.inbox, &m.inbox)
            && self.since_ms.is_none_or(|s| m.received_at_ms >= s)
            && self.until_ms.is_none_or(|u| m.received_at_ms < u)
    }
}

/// The open database and its trees. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// The pre-ack journal, see [`journal`].
    journal: journal::Journal,
    /// Message records and delivery attempts, see [`records`].
    records: records::Records,
    parts: sled::Tree,
    assembled: sled::Tree,
    receipts: sled::Tree,
    jobs: sled::Tree,
    dead: sled::Tree,
    outbound: sled::Tree,
    outbound_ids: sled::Tree,
    votes: sled::Tree,
    keywords: sled::Tree,
    consent: sled::Tree,
    contacts: sled::Tree,
    contact_states: sled::Tree,
    ledger: sled::Tree,
    ledger_index: sled::Tree,
    mail_tokens: sled::Tree,
    mail_replies: sled::Tree,
    /// sled's main file, opened by us so a commit can fsync it (sled uses sync_file_range).
    db_file: Option<File>,
    dir: PathBuf,
    /// When set, every commit fails: lets tests (and a drill on a staging box) prove that a
    /// failing store answers ESME_RX_T_APPN instead of acknowledging.
    fail_commits: std::sync::atomic::AtomicBool,
    /// Who is opted out, in memory for the outbound check: see [`consent`].
    opt_out_index: consent::OptOutIndex,
    /// Dead letters held: counted once at open, then kept by `job_dead` and replays, so
    /// `/metrics` and the page need no scan of a tree that can hold millions.
    dead_count: std::sync::atomic::AtomicU64,
}

/// Opens one sled database. A process that just exited (or, in tests, a daemon just shut down
/// in this process) may hold sled's file lock for a moment longer while its background flusher
/// winds down: wait up to five seconds for it rather than fail the start.
fn open_db(dir: &Path, cache_mb: u64) -> Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
            // We flush explicitly; the background flush only bounds the work left for the
            // next explicit one.
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            // sled wraps the lock's EWOULDBLOCK in an error of its own wording.
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock"))
                    && started.elapsed() < std::time::Duration::from_secs(5) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

/// Makes sure no id this run hands out can be handed out again after a crash.
///
/// Every id that must be unique across restarts (journal entries, and through them message
/// records and jobs; mail replies; ledger entries) comes from sled's `generate_id`. sled
/// writes its counter every million ids and, when it recovers, starts two million past the
/// last counter it finds on disk. But the first counter a run writes is not flushed: a crash
/// before sled's next flush finds the old counter again, and the run after it hands out the
/// same ids. Two SIGKILLs within a second of each other did that: the third run's messages
/// took the ids of the second run's, replaced their records, and their jobs were dropped as
/// already known (`tests/crash.rs` caught it on a loaded machine). Taking one id and flushing
/// here puts that first counter on disk before any id is used.
fn make_id_counter_durable(db: &sled::Db, db_file: Option<&File>) -> Result<()> {
    db.generate_id()?;
    db.flush()?;
    if let Some(f) = db_file {
        f.sync_data()?;
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the database in `dir` with a page cache of `cache_mb` MiB.
    /// `fsync`: fdatasync the journal at each commit and fsync sled's file after each flush
    /// (sled issue #1452).
    pub fn open(dir: &Path, cache_mb: u64, fsync: bool) -> Result<Store> {
        std::fs::create_dir_all(dir)?;
        let db = open_db(dir, cache_mb)?;
        // sled's lock on `dir` (taken just now) also guards the journal against a second daemon.
        let (journal, report) = journal::Journal::open(&dir.join("wal"), fsync)?;
        if report.live_entries > 0 || report.skipped_bytes > 0 {
            tracing::info!(
                entries = report.live_entries,
                segments = report.segments_read,
                skipped_bytes = report.skipped_bytes,
                "journal recovered"
            );
        }
        migrate_sled_journal(&db, dir, &journal, cache_mb)?;
        let records = records::Records::open(&dir.join("records"), fsync)?;
        records.migrate_from_sled(&db)?;
        let db_file = if fsync {
            Some(File::open(dir.join("db"))?)
        } else {
            None
        };
        make_id_counter_durable(&db, db_file.as_ref())?;
        let dead = db.open_tree("dead")?;
        let dead_count = std::sync::atomic::AtomicU64::new(dead.len() as u64);
        Ok(Store {
            inner: Arc::new(Inner {
                journal,
                records,
                parts: db.open_tree("parts")?,
                assembled: db.open_tree("assembled")?,
                receipts: db.open_tree("receipts")?,
                jobs: db.open_tree("jobs")?,
                dead,
                outbound: db.open_tree("outbound")?,
                outbound_ids: db.open_tree("outbound_ids")?,
                votes: db.open_tree("votes")?,
                keywords: db.open_tree("keywords")?,
                consent: db.open_tree("consent")?,
                contacts: db.open_tree("contacts")?,
                contact_states: db.open_tree("contact_states")?,
                ledger: db.open_tree("ledger")?,
                ledger_index: db.open_tree("ledger_index")?,
                mail_tokens: db.open_tree("mail_tokens")?,
                mail_replies: db.open_tree("mail_replies")?,
                db,
                db_file,
                dir: dir.to_path_buf(),
                fail_commits: std::sync::atomic::AtomicBool::new(false),
                opt_out_index: Default::default(),
                dead_count,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A new id, unique and increasing across restarts.
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.inner.db.generate_id()?)
    }

    /// Writes journal entries (not yet durable: see [`Store::commit_journal`]) and returns ids.
    pub fn journal(&self, entries: &[JournalEntry]) -> Result<Vec<u64>> {
        // One sled id per batch, not per entry: the batch's entries are `base << 12 | index`,
        // unique and increasing across restarts like the base.
        debug_assert!(entries.len() <= 1 << 12);
        let base = self.next_id()? << 12;
        self.inner.journal.append(base, entries)
    }

    fn check_injected_failure(&self) -> Result<()> {
        if self
            .inner
            .fail_commits
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Io(std::io::Error::other(
                "commit failure injected",
            )));
        }
        Ok(())
    }

    /// Makes the journal durable: the group commit before acknowledgements (one fdatasync of
    /// the journal's segment, off the async workers).
    pub async fn commit_journal(&self) -> Result<()> {
        self.check_injected_failure()?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_journal())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// [`Store::commit_journal`] on the calling thread (the journal writer's own).
    pub(crate) fn commit_journal_blocking(&self) -> Result<()> {
        self.check_injected_failure()?;
        self.flush_journal()
    }

    /// Zero-fills the journal's active segment ahead of its records (see `journal`'s module
    /// header), so the next commits' syncs flush data only. Blocking; the writer calls it
    /// between batches.
    pub(crate) fn fill_journal_ahead(&self) -> Result<()> {
        self.inner.journal.fill_ahead()
    }

    /// The journal's fsync, blocking.
    pub(crate) fn flush_journal(&self) -> Result<()> {
        self.inner.journal.sync()
    }

    /// The records database's persist, then the main database's flush and fsync, blocking:
    /// what processing wrote is durable after it, so the journal entries it came from may go.
    pub fn flush_main(&self) -> Result<()> {
        self.check_injected_failure()?;
        self.inner.records.persist()?;
        self.inner.db.flush()?;
        if let Some(f) = &self.inner.db_file {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Makes everything written so far durable, in both databases.
    pub async fn commit(&self) -> Result<()> {
        self.check_injected_failure()?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.flush_main()?;
            store.flush_journal()
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Drops journal entries whose processing is durable (after [`Store::flush_main`]). The
    /// release is written at once but not fsynced: a power cut may only bring an entry back
    /// for processing again.
    pub fn release_journal(&self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.inner.journal.release(ids)
    }

    /// Makes every following commit fail (true) or work again (false). See `fail_commits`.
    pub fn inject_commit_failure(&self, on: bool) {
        self.inner
            .fail_commits
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// A journal entry by id, if it has not been processed yet.
    pub fn journal_entry(&self, id: u64) -> Result<Option<JournalEntry>> {
        self.inner.journal.entry(id)
    }

    /// Ids of every journal entry not yet processed (restart recovery), oldest first.
    pub fn pending_journal_ids(&self) -> Result<Vec<u64>> {
        Ok(self.inner.journal.live_ids())
    }

    /// True while journal entry `id` is not released.
    pub fn journal_entry_is_live(&self, id: u64) -> bool {
        self.inner.journal.is_live(id)
    }

    /// True when attempt records or contacts' seen times wait in memory for the next
    /// [`Store::flush_main`].
    pub fn has_unwritten_records(&self) -> bool {
        self.inner.records.has_pending_writes()
    }

    /// Number of journal entries not yet processed.
    pub fn journal_depth(&self) -> usize {
        self.inner.journal.depth()
    }

    /// A stored message by id.
    pub fn message(&self, id: u64) -> Result<Option<MessageRecord>> {
        match self.inner.records.message(id)? {
            Some(raw) => Ok(Some(decode_json(&raw)?)),
            None => Ok(None),
        }
    }

    /// Messages matching the filter, newest first, at most `filter.limit`.
    pub fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<MessageRecord>> {
        let upper = filter.before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for raw in self.inner.records.messages_below(upper) {
            let raw = raw?;
            let m: MessageRecord = decode_json(&raw)?;
            // Ids grow with the journal and so, nearly, with `received_at` (sessions stamp
            // their own PDUs and clocks step): stop only well past `since`.
            if filter
                .since_ms
                .is_some_and(|s| m.received_at_ms.saturating_add(SINCE_MARGIN_MS) < s)
            {
                break;
            }
            if filter.matches(&m) {
                out.push(m);
                if out.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Number of stored messages.
    pub fn message_count(&self) -> Result<usize> {
        self.inner.records.message_count()
    }

    /// The receipt record id for a carrier's message id.
    pub fn receipt_for(&self, carrier: &str, carrier_message_id: &str) -> Result<Option<u64>> {
        let key = receipt_key(carrier, carrier_message_id);
        match self.inner.receipts.get(key)? {
            Some(raw) => Ok(Some(key_u64(&raw)?)),
            None => Ok(None),
        }
    }

    /// True when sled answers: for /healthz.
    pub fn healthy(&self) -> bool {
        self.inner.db.get(b"health-probe").is_ok()
    }

    pub(crate) fn trees(&self) -> Trees<'_> {
        Trees {
            parts: &self.inner.parts,
            assembled: &self.inner.assembled,
            receipts: &self.inner.receipts,
            jobs: &self.inner.jobs,
            dead: &self.inner.dead,
            outbound: &self.inner.outbound,
            outbound_ids: &self.inner.outbound_ids,
            votes: &self.inner.votes,
            keywords: &self.inner.keywords,
            consent: &self.inner.consent,
            contacts: &self.inner.contacts,
            contact_states: &self.inner.contact_states,
            ledger: &self.inner.ledger,
            ledger_index: &self.inner.ledger_index,
            mail_tokens: &self.inner.mail_tokens,
            mail_replies: &self.inner.mail_replies,
        }
    }
}

/// Moves what older layouts left in a sled journal into [`journal`]: the `inbound` tree of the
/// main database (first layout), then the sled database in `<data_dir>/journal` (second).
/// The entries keep their ids; the old copies go only once the new ones are durable.
fn migrate_sled_journal(
    db: &sled::Db,
    dir: &Path,
    journal: &journal::Journal,
    cache_mb: u64,
) -> Result<()> {
    let mut moved = 0usize;
    let mut move_tree = |tree: &sled::Tree| -> Result<()> {
        for kv in tree.iter() {
            let (k, v) = kv?;
            journal.append(key_u64(&k)?, &[JournalEntry::decode(&v)?])?;
            moved += 1;
        }
        journal.sync()
    };
    if db.tree_names().iter().any(|n| n.as_ref() == b"inbound") {
        let old = db.open_tree("inbound")?;
        move_tree(&old)?;
        drop(old);
        db.drop_tree("inbound")?;
        db.flush()?;
    }
    let old_dir = dir.join("journal");
    if old_dir.join("conf").exists() || old_dir.join("db").exists() {
        {
            let old_db = open_db(&old_dir, cache_mb.clamp(4, 64))?;
            move_tree(&old_db.open_tree("inbound")?)?;
        }
        std::fs::remove_dir_all(&old_dir)?;
    }
    if moved > 0 {
        tracing::info!(
            entries = moved,
            "moved unprocessed entries from an older sled journal"
        );
    }
    Ok(())
}

/// Borrowed trees for the other store submodules.
pub(crate) struct Trees<'a> {
    pub parts: &'a sled::Tree,
    pub assembled: &'a sled::Tree,
    pub receipts: &'a sled::Tree,
    pub jobs: &'a sled::Tree,
    pub dead: &'a sled::Tree,
    pub outbound: &'a sled::Tree,
    pub outbound_ids: &'a sled::Tree,
    pub votes: &'a sled::Tree,
    pub keywords: &'a sled::Tree,
    pub consent: &'a sled::Tree,
    pub contacts: &'a sled::Tree,
    pub contact_states: &'a sled::Tree,
    pub ledger: &'a sled::Tree,
    pub ledger_index: &'a sled::Tree,
    pub mail_tokens: &'a sled::Tree,
    pub mail_replies: &'a sled::Tree,
}

pub fn receipt_key(carrier: &str, carrier_message_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(carrier.len() + 1 + carrier_message_id.len());
    key.extend_from_slice(carrier.as_bytes());
    key.push(0);
    key.extend_from_slice(carrier_message_id.as_bytes());
    key
}

pub(crate) fn key_u64(raw: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("key of {} bytes, want 8", raw.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // A message record is 400-600 bytes, a webhook's payload 300-500: room for either up
    // front, where `to_vec` would start at 128 and grow up to three times.
    let mut out = Vec::with_capacity(512);
    // Serialising our own plain structs to a Vec cannot fail.
    match serde_json::to_writer(&mut out, value) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A routed GSM message record with id `id`, for tests that need one to store or send.
    pub(crate) fn sample_message(id: u64) -> MessageRecord {
        serde_json::from_value(serde_json::json!({
            "id": format_id(id), "event": "message", "to": "567678", "from": "919800000011",
            "text": "hi", "encoding": "gsm7", "carrier": "sim",
            "received_at": "2026-11-28T00:00:00.000Z", "received_at_ms": 1,
            "keyword": null, "inbox": null, "args": null, "parts": 1, "complete": true,
            "missing_parts": [], "routed": true, "receipt": null, "webhooks": ["crm"],
            "consent": null, "guarded": [],
        }))
        .unwrap()
    }

    #[test]
    fn a_record_is_encoded_byte_for_byte_as_serde_json_would() {
        let plain = sample_message(1);
        let mut full = sample_message(2);
        full.text = "a \"quoted\" \\ text\nwith € and 😀 and \u{1}".into();
        full.keyword = Some("JOIN".into());
        full.inbox = Some("summer".into());
        full.args = Some("x\ty".into());
        full.parts = 3;
        full.complete = false;
        full.missing_parts = vec![2, 3];
        full.routed = false;
        full.receipt = Some(crate::smpp::receipt::Receipt {
            id: "m1".into(),
            stat: "DELIVRD".into(),
            err: Some("000".into()),
            ..Default::default()
        });
        full.webhooks = vec!["crm".into(), "b\"i".into()];
        full.consent = Some(ConsentInfo {
            previous: consent::ConsentState::Unknown,
            state: consent::ConsentState::OptedIn,
            matched: "START".into(),
        });
        full.guarded = vec!["rate: reply to 9198..".into(), "loop".into()];
        full.from_ton_npi = Some([2, 1]);
        let mut bare = sample_message(3);
        bare.webhooks.clear();
        bare.received_at_ms = u64::MAX;
        for record in [plain, full, bare] {
            let ours = record.encode();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&encode_json(&record))
            );
            let back: MessageRecord = decode_json(&ours).unwrap();
            assert_eq!(back, record);
        }
    }

    /// Copies a directory tree: what a SIGKILL at this moment would leave on disk (the files
    /// as the kernel has them), without stopping the store that writes there.
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for item in std::fs::read_dir(from).unwrap() {
            let item = item.unwrap();
            let target = to.join(item.file_name());
            if item.file_type().unwrap().is_dir() {
                copy_tree(&item.path(), &target);
            } else {
                std::fs::copy(item.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn ids_are_not_handed_out_again_after_two_quick_crashes() {
        let root = tempfile::tempdir().unwrap();
        let first = root.path().join("first");
        // A run that ends cleanly, so the next open recovers a counter.
        drop(Store::open(&first, 8, true).unwrap());
        // The next run journals a batch and is killed at once, before any flush of its own.
        let running = Store::open(&first, 8, true).unwrap();
        let ids = running.journal(&[entry(1)]).unwrap();
        running.flush_journal().unwrap();
        let killed = root.path().join("killed");
        copy_tree(&first, &killed);
        // The run after it (on what the kill left) must not take those ids again.
        let after = Store::open(&killed, 8, true).unwrap();
        assert_eq!(after.pending_journal_ids().unwrap(), ids);
        let new_ids = after.journal(&[entry(2)]).unwrap();
        assert!(
            new_ids[0] > ids[0],
            "id {:x} handed out again after the crash ({:x} before it)",
            new_ids[0],
            ids[0]
        );
        drop(running);
    }

    fn entry(n: u8) -> JournalEntry {
        JournalEntry {
            carrier: "sim".into(),
            received_at_ms: 1_000 + u64::from(n),
            pdu: Bytes::from(vec![n; 20]),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn a_journal_left_in_the_main_database_by_an_older_layout_is_moved_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let old = db.open_tree("inbound").unwrap();
            old.insert(7u64.to_be_bytes(), entry(7).encode()).unwrap();
            old.insert(9u64.to_be_bytes(), entry(9).encode()).unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path(), 8, true).unwrap();
        assert_eq!(store.pending_journal_ids().unwrap(), vec![7, 9]);
        assert_eq!(store.journal_entry(9).unwrap(), Some(entry(9)));
        drop(store);
        // Moved once: the main database's old tree is gone now.
        let store = Store::open(dir.path(), 8, true).unwrap();
        assert_eq!(store.pending_journal_ids().unwrap(), vec![7, 9]);
        assert!(
            !store
                .inner
                .db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"inbound")
        );
    }

    #[test]
    fn a_journal_left_in_its_own_sled_database_is_moved_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("journal")).unwrap();
            let old = db.open_tree("inbound").unwrap();
            old.insert(3u64.to_be_bytes(), entry(3).encode()).unwrap();
            old.insert(4u64.to_be_bytes(), entry(4).encode()).unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path(), 8, true).unwrap();
        assert_eq!(store.pending_journal_ids().unwrap(), vec![3, 4]);
        assert_eq!(store.journal_entry(3).unwrap(), Some(entry(3)));
        assert!(!dir.path().join("journal").exists());
        // New entries join the moved ones (ids come from the main database, as before).
        let new = store.journal(&[entry(5)]).unwrap();
        rt().block_on(store.commit_journal()).unwrap();
        drop(store);
        let store = Store::open(dir.path(), 8, true).unwrap();
        let mut want = vec![3, 4, new[0]];
        want.sort_unstable();
        assert_eq!(store.pending_journal_ids().unwrap(), want);
        assert_eq!(store.journal_entry(new[0]).unwrap(), Some(entry(5)));
    }

    #[test]
    fn released_entries_are_gone_after_a_reopen_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ids = {
            let store = Store::open(dir.path(), 8, true).unwrap();
            let ids = store.journal(&[entry(1), entry(2), entry(3)]).unwrap();
            rt.block_on(store.commit_journal()).unwrap();
            store.flush_main().unwrap();
            store.release_journal(&ids[..2]).unwrap();
            ids
        };
        let store = Store::open(dir.path(), 8, true).unwrap();
        assert_eq!(store.pending_journal_ids().unwrap(), vec![ids[2]]);
        assert_eq!(store.journal_depth(), 1);
        // A failing store refuses both kinds of flush.
        store.inject_commit_failure(true);
        assert!(rt.block_on(store.commit_journal()).is_err());
        assert!(store.flush_main().is_err());
    }
}
