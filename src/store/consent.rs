//! Consent per sender and number (DESIGN.md promise 3): the state the outbound SMS engine checks
//! before every message, the opt-in database of contacts, and the ledger that proves every change.
//!
//! Trees (addresses are normalised by [`normalize_address`] everywhere, so "+91 98123-45678" and
//! "919812345678" are one contact):
//! - `consent`: [`address_key`]`(vmn)` ++ [`address_key`]`(msisdn)` -> 1 byte of state, or for
//!   `pending` 1 + 8 (deadline, ms BE) + 1 (the state to fall back to when the deadline passes).
//!   The hot path: one get, no JSON. Absent means `unknown`, so ten million contacts that never
//!   opted anything cost nothing here.
//! - `contacts`: `address_key(vmn)` ++ msisdn bytes -> [`Contact`] (JSON), in msisdn order, for
//!   contacts with a consent history. When a contact was first and last seen is kept under the
//!   same key in the records store's `contacts_seen` (an LSM write per message, not a sled one:
//!   see `records`); reads lay the two over each other, and someone only seen is `unknown`.
//! - `contact_states`: `address_key(vmn)` ++ state byte ++ msisdn bytes -> (): pages of one state
//!   without reading every contact of the number. Contacts whose recorded state is `unknown`
//!   are not in it: most contacts are, and every first message from someone would otherwise
//!   cost a write. A page of unknown contacts is read from `contacts` and `contacts_seen`
//!   merged, skipping the others (few, on a number where most people never opted anything).
//! - `ledger`: id (u64 BE, from [`Store::next_id`]) -> [`LedgerEntry`] (JSON), in record order.
//! - `ledger_index`: `n` ++ `address_key(vmn)` ++ id -> () (a number's ledger),
//!   `c` ++ `address_key(vmn)` ++ `address_key(msisdn)` ++ id -> () (one contact's ledger),
//!   `m` ++ `address_key(vmn)` ++ `address_key(msisdn)` ++ message id -> ledger id (u64 BE):
//!   makes [`Store::apply_consent`] idempotent per message and finds the entry whose
//!   confirmation went out.
//!
//! A change writes all of these in one sled transaction: a crash leaves either the whole change or
//! none of it, so the hot tree never disagrees with the evidence.
//!
//! In memory, only the opt-out index ([`Store::build_opt_out_index`], [`Store::is_opted_out`]):
//! a hash set of the `consent` keys of opted-out contacts, 8 bytes each plus the table's slack,
//! rebuilt from the `consent` tree at startup. It exists because a sled get at ten million
//! contacts costs 5-10 µs at the median and tens of µs at p99 on the machines measured (see
//! BENCHMARKS.md), and waits behind every sled transaction in the process; the check every
//! outbound SMS makes must not.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::records::Seen;
use super::{Result, Store, StoreError, decode_json, encode_json, key_u64};

/// Where one person stands with one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    /// Never opted in or out (also: never heard of).
    Unknown,
    OptedIn,
    /// Nothing but the one confirmation may be sent (promise 3).
    OptedOut,
    /// Double opt-in asked, not yet confirmed; falls back to the earlier state at the deadline.
    Pending,
}

impl ConsentState {
    /// The byte stored in the `consent` and `contact_states` trees.
    pub fn code(self) -> u8 {
        match self {
            ConsentState::Unknown => 0,
            ConsentState::OptedIn => 1,
            ConsentState::OptedOut => 2,
            ConsentState::Pending => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<ConsentState> {
        match code {
            0 => Some(ConsentState::Unknown),
            1 => Some(ConsentState::OptedIn),
            2 => Some(ConsentState::OptedOut),
            3 => Some(ConsentState::Pending),
            _ => None,
        }
    }

    /// The name used in JSON, CSV and query strings (`opted_out`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Unknown => "unknown",
            ConsentState::OptedIn => "opted_in",
            ConsentState::OptedOut => "opted_out",
            ConsentState::Pending => "pending",
        }
    }

    /// Parses [`ConsentState::as_str`]'s names.
    pub fn parse(text: &str) -> Option<ConsentState> {
        [
            ConsentState::Unknown,
            ConsentState::OptedIn,
            ConsentState::OptedOut,
            ConsentState::Pending,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A contact of one number (the opt-in database).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub vmn: String,
    pub msisdn: String,
    /// The state in force: a pending contact whose deadline passed shows its earlier state.
    pub state: ConsentState,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// The keyword that opted them in (or asked them to confirm).
    pub source_keyword: Option<String>,
    /// Values captured from `args` of the keyword that opted them in (e.g. {"args": "summer"}).
    pub attributes: BTreeMap<String, String>,
    /// Double opt-in: pending until.
    pub pending_until_ms: Option<u64>,
    /// When the state last changed.
    pub updated_ms: u64,
}

/// One change of state, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub at_ms: u64,
    pub vmn: String,
    pub msisdn: String,
    pub from: ConsentState,
    /// Equal to `from` when the message changed nothing (a repeated STOP).
    pub to: ConsentState,
    /// The raw text of the message (or `"import: <file line>"`).
    pub text: String,
    /// The word or phrase that matched ("STOP", "please stop texting me", "JOIN").
    pub matched: String,
    pub message_id: Option<String>,
    /// `sms` | `import` | `api`.
    pub source: String,
    pub confirmation_sent: bool,
}

/// A change to apply: what the processor (or an import) saw.
#[derive(Debug, Clone, Copy)]
pub struct ConsentChange<'a> {
    pub vmn: &'a str,
    pub msisdn: &'a str,
    pub to: ConsentState,
    /// When it happened: the message's time (also the "now" that decides whether a pending
    /// contact's deadline has passed).
    pub at_ms: u64,
    pub text: &'a str,
    pub matched: &'a str,
    pub message_id: Option<&'a str>,
    pub source: &'a str,
    /// The keyword that opts in (kept as the contact's `source_keyword`).
    pub keyword: Option<&'a str>,
    /// Merged into the contact's attributes on a change to opted in or pending.
    pub attributes: &'a [(String, String)],
    /// With `to: Pending`: when the ask lapses (`None`: never).
    pub pending_until_ms: Option<u64>,
}

/// Characters dropped from numeric addresses: people and spreadsheets write them.
fn is_address_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '-' | '.' | '(' | ')' | '+')
}

/// The form an address is stored under: digits only when it is a phone number written with
/// separators or a `+` ("+91 98123-45678" -> "919812345678"); anything else (an alphanumeric
/// sender) trimmed but as written.
pub fn normalize_address(address: &str) -> String {
    let trimmed = address.trim();
    let mut digits = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else if !is_address_separator(c) {
            return trimmed.to_string();
        }
    }
    if digits.is_empty() {
        trimmed.to_string()
    } else {
        digits
    }
}

/// Longest digit string stored packed; longer ones (none are real phone numbers) go raw.
const MAX_PACKED_DIGITS: usize = 64;
/// First byte of a raw (non-numeric) address in a key; packed ones start with their length.
const RAW_ADDRESS: u8 = 0xff;

/// Longest packed form: the count byte and two digits a byte.
const MAX_PACKED_BYTES: usize = 1 + MAX_PACKED_DIGITS / 2;

/// Packs a phone number (digits and separators only, 1..=64 digits) as `[digit count][two
/// digits a byte]` into `out`, normalising on the way without allocating (this runs on the hot
/// path); the length written, or `None` for anything else.
fn pack_digits(address: &str, out: &mut [u8]) -> Option<usize> {
    let trimmed = address.trim();
    let mut count = 0usize;
    for c in trimmed.chars() {
        if c.is_ascii_digit() {
            count += 1;
        } else if !is_address_separator(c) {
            return None;
        }
    }
    if !(1..=MAX_PACKED_DIGITS).contains(&count) {
        return None;
    }
    let len = 1 + count.div_ceil(2);
    let out = out.get_mut(..len)?;
    out[0] = count as u8;
    for (i, d) in trimmed
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .enumerate()
    {
        let byte = &mut out[1 + i / 2];
        *byte = if i % 2 == 0 {
            (d << 4) | 0x0f
        } else {
            (*byte & 0xf0) | d
        };
    }
    Some(len)
}

/// Appends the compact, prefix-free key form of an address to `out`: packed digits for phone
/// numbers (see `pack_digits`), `[0xff][length u32 BE][bytes]` for anything else.
pub fn push_address_key(out: &mut Vec<u8>, address: &str) {
    let mut packed = [0u8; MAX_PACKED_BYTES];
    if let Some(len) = pack_digits(address, &mut packed) {
        out.extend_from_slice(&packed[..len]);
        return;
    }
    let raw = normalize_address(address);
    out.push(RAW_ADDRESS);
    out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    out.extend_from_slice(raw.as_bytes());
}

/// [`push_address_key`] into a new vector.
pub fn address_key(address: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    push_address_key(&mut out, address);
    out
}

/// Calls `f` with the `consent` key of a contact, built on the stack for phone numbers (the
/// hot path) and on the heap only for other addresses.
fn with_hot_key<R>(vmn: &str, msisdn: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut key = [0u8; 2 * MAX_PACKED_BYTES];
    match pack_digits(vmn, &mut key).and_then(|n| Some(n + pack_digits(msisdn, &mut key[n..])?)) {
        Some(len) => f(&key[..len]),
        None => f(&hot_key(vmn, msisdn)),
    }
}

/// The `consent` tree's key of a contact.
fn hot_key(vmn: &str, msisdn: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    push_address_key(&mut key, vmn);
    push_address_key(&mut key, msisdn);
    key
}

fn contact_key(vmn: &str, msisdn: &str) -> Vec<u8> {
    let mut key = address_key(vmn);
    key.extend_from_slice(msisdn.as_bytes());
    key
}

fn state_prefix(vmn: &str, state: ConsentState) -> Vec<u8> {
    let mut key = address_key(vmn);
    key.push(state.code());
    key
}

fn state_key(vmn: &str, state: ConsentState, msisdn: &str) -> Vec<u8> {
    let mut key = state_prefix(vmn, state);
    key.extend_from_slice(msisdn.as_bytes());
    key
}

fn number_ledger_prefix(vmn: &str) -> Vec<u8> {
    let mut key = vec![b'n'];
    push_address_key(&mut key, vmn);
    key
}

fn contact_ledger_prefix(kind: u8, vmn: &str, msisdn: &str) -> Vec<u8> {
    let mut key = vec![kind];
    push_address_key(&mut key, vmn);
    push_address_key(&mut key, msisdn);
    key
}

fn message_key(vmn: &str, msisdn: &str, message_id: &str) -> Vec<u8> {
    let mut key = contact_ledger_prefix(b'm', vmn, msisdn);
    key.extend_from_slice(message_id.as_bytes());
    key
}

/// A `consent` value, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hot {
    /// As stored (`Pending` even after its deadline).
    stored: ConsentState,
    /// For `Pending`: the deadline and the state it falls back to.
    pending: Option<(u64, ConsentState)>,
}

impl Hot {
    const UNKNOWN: Hot = Hot {
        stored: ConsentState::Unknown,
        pending: None,
    };

    fn decode(raw: Option<&[u8]>) -> Result<Hot> {
        let corrupt = || StoreError::Corrupt(format!("consent value {raw:?}"));
        let Some(raw) = raw else {
            return Ok(Hot::UNKNOWN);
        };
        let stored = raw
            .first()
            .and_then(|c| ConsentState::from_code(*c))
            .ok_or_else(corrupt)?;
        if stored != ConsentState::Pending {
            return Ok(Hot {
                stored,
                pending: None,
            });
        }
        let deadline: [u8; 8] = raw
            .get(1..9)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(corrupt)?;
        let fallback = raw
            .get(9)
            .and_then(|c| ConsentState::from_code(*c))
            .filter(|s| *s != ConsentState::Pending)
            .ok_or_else(corrupt)?;
        Ok(Hot {
            stored,
            pending: Some((u64::from_be_bytes(deadline), fallback)),
        })
    }

    fn encode(self) -> Vec<u8> {
        let mut out = vec![self.stored.code()];
        if let Some((deadline, fallback)) = self.pending {
            out.extend_from_slice(&deadline.to_be_bytes());
            out.push(fallback.code());
        }
        out
    }

    /// The state in force at `now_ms`.
    fn effective(self, now_ms: u64) -> ConsentState {
        match self.pending {
            Some((deadline, fallback)) if now_ms >= deadline => fallback,
            _ => self.stored,
        }
    }
}

/// What the opt-out index knows of one contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Not opted out (absent from the index).
    Clear,
    OptedOut,
    /// Pending a double opt-in that falls back to opted out at its deadline: asked of sled.
    Lapsing,
}

impl Mark {
    fn of(hot: Hot) -> Mark {
        match (hot.stored, hot.pending) {
            (ConsentState::OptedOut, _) => Mark::OptedOut,
            (_, Some((_, ConsentState::OptedOut))) => Mark::Lapsing,
            _ => Mark::Clear,
        }
    }
}

/// 64-bit hash of a `consent` key. Two contacts sharing one (odds about n / 2^64 per lookup,
/// n the opted-out contacts) would make the second look opted out: the safe direction.
fn key_hash(key: &[u8]) -> u64 {
    use std::hash::Hasher;
    // SipHash with fixed keys: stable within the process, which is all the index needs.
    let mut h = std::hash::DefaultHasher::new();
    h.write(key);
    h.finish()
}

/// The keys are already hashes: use them as they are.
#[derive(Default, Clone, Copy)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type HashSet64 = std::collections::HashSet<u64, std::hash::BuildHasherDefault<IdentityHasher>>;

/// The two sets of the index: 8 bytes (plus the table's slack) per opted-out contact, nothing
/// for anyone else, so ten million contacts stay in sled and only the answer the outbound path
/// needs is in memory.
#[derive(Default)]
struct IndexSets {
    opted_out: HashSet64,
    lapsing: HashSet64,
}

impl IndexSets {
    fn set(&mut self, hash: u64, mark: Mark) {
        match mark {
            Mark::Clear => {
                self.opted_out.remove(&hash);
                self.lapsing.remove(&hash);
            }
            Mark::OptedOut => {
                self.lapsing.remove(&hash);
                self.opted_out.insert(hash);
            }
            Mark::Lapsing => {
                self.opted_out.remove(&hash);
                self.lapsing.insert(hash);
            }
        }
    }
}

#[derive(Default)]
struct IndexState {
    ready: bool,
    building: bool,
    sets: IndexSets,
    /// Changes committed while a build scans, applied over its result (they are final values,
    /// so one the scan already saw is applied twice to the same effect).
    during_build: Vec<(u64, Mark)>,
}

/// The in-memory opt-out index behind [`Store::is_opted_out`]; empty and unused until
/// [`Store::build_opt_out_index`] runs.
#[derive(Default)]
pub(crate) struct OptOutIndex {
    state: std::sync::RwLock<IndexState>,
    /// Held by a writer from its transaction until its marks are recorded: two changes of one
    /// contact committed in one order must reach the index in that order, not the other.
    writers: std::sync::Mutex<()>,
}

impl OptOutIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        // A panic elsewhere while holding the lock leaves sets that are still each valid.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(opted out)` when the index can answer alone.
    fn lookup(&self, hash: u64) -> Option<bool> {
        let state = self.read();
        if !state.ready || state.sets.lapsing.contains(&hash) {
            return None;
        }
        Some(state.sets.opted_out.contains(&hash))
    }

    /// Called after each committed change.
    fn record(&self, marks: impl Iterator<Item = (u64, Mark)>) {
        let mut marks = marks.peekable();
        if marks.peek().is_none() {
            return;
        }
        let mut state = self.write();
        if state.building {
            state.during_build.extend(marks);
        } else if state.ready {
            for (hash, mark) in marks {
                state.sets.set(hash, mark);
            }
        }
    }

    fn begin_build(&self) -> bool {
        let mut state = self.write();
        if state.ready || state.building {
            return false;
        }
        state.building = true;
        true
    }

    fn abandon_build(&self) {
        let mut state = self.write();
        state.building = false;
        state.during_build = Vec::new();
    }

    fn finish_build(&self, mut built: IndexSets) -> usize {
        let mut state = self.write();
        for (hash, mark) in std::mem::take(&mut state.during_build) {
            built.set(hash, mark);
        }
        state.sets = built;
        state.building = false;
        state.ready = true;
        state.sets.opted_out.len() + state.sets.lapsing.len()
    }

    /// Serialises consent writers (see `writers`).
    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        let state = self.read();
        state.sets.opted_out.len() + state.sets.lapsing.len()
    }
}

/// The trees one change touches, inside a transaction.
struct Tx<'a> {
    consent: &'a TransactionalTree,
    contacts: &'a TransactionalTree,
    states: &'a TransactionalTree,
    ledger: &'a TransactionalTree,
    ledger_index: &'a TransactionalTree,
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(r: Result<T>) -> TxResult<T> {
    r.map_err(ConflictableTransactionError::Abort)
}

/// One change inside a transaction (see [`Store::apply_consent`]); `vmn`/`msisdn` normalised.
fn apply_in(
    tx: &Tx<'_>,
    change: &ConsentChange<'_>,
    vmn: &str,
    msisdn: &str,
    ledger_id: u64,
) -> TxResult<Applied> {
    // The same message again (reprocessed after a crash): answer as the first time, add nothing.
    if let Some(message_id) = change.message_id {
        if let Some(raw) = tx.ledger_index.get(message_key(vmn, msisdn, message_id))? {
            let id = abort(key_u64(&raw))?;
            if let Some(raw) = tx.ledger.get(id.to_be_bytes())? {
                let entry: LedgerEntry = abort(decode_json(&raw))?;
                return Ok(Applied {
                    previous: entry.from,
                    changed: entry.from != entry.to,
                    hot: None,
                });
            }
        }
    }

    let hkey = hot_key(vmn, msisdn);
    let hot = abort(Hot::decode(tx.consent.get(&hkey)?.as_deref()))?;
    let previous = hot.effective(change.at_ms);
    let changed = previous != change.to;

    let ckey = contact_key(vmn, msisdn);
    let existing: Option<Contact> = match tx.contacts.get(&ckey)? {
        Some(raw) => Some(abort(decode_json(&raw))?),
        None => None,
    };
    let indexed = existing.as_ref().map(|c| c.state);
    // A change dated before the contact's last one never undoes an opt-out: a concatenated
    // opt-in completes when its last part arrives but is dated by its first, which may be
    // before a STOP the sender sent in between; an import may carry an old date.
    if changed
        && previous == ConsentState::OptedOut
        && change.to != ConsentState::OptedOut
        && existing
            .as_ref()
            .is_some_and(|c| change.at_ms < c.updated_ms)
    {
        return Ok(Applied {
            previous,
            changed: false,
            hot: None,
        });
    }
    let mut contact = existing.unwrap_or_else(|| Contact {
        vmn: vmn.to_string(),
        msisdn: msisdn.to_string(),
        state: ConsentState::Unknown,
        first_seen_ms: change.at_ms,
        last_seen_ms: change.at_ms,
        source_keyword: None,
        attributes: BTreeMap::new(),
        pending_until_ms: None,
        updated_ms: change.at_ms,
    });
    if change.source == "sms" {
        contact.first_seen_ms = contact.first_seen_ms.min(change.at_ms);
        contact.last_seen_ms = contact.last_seen_ms.max(change.at_ms);
    }

    // A lapsed pending is settled now too, so the stored state is the one in force.
    let new_hot = if changed {
        contact.state = change.to;
        contact.updated_ms = change.at_ms;
        if matches!(change.to, ConsentState::OptedIn | ConsentState::Pending) {
            if let Some(keyword) = change.keyword {
                contact.source_keyword = Some(keyword.to_string());
            }
            contact.attributes.extend(change.attributes.iter().cloned());
        }
        if change.to == ConsentState::Pending {
            let deadline = change.pending_until_ms.unwrap_or(u64::MAX);
            contact.pending_until_ms = Some(deadline);
            Some(Hot {
                stored: ConsentState::Pending,
                pending: Some((deadline, previous)),
            })
        } else {
            contact.pending_until_ms = None;
            Some(Hot {
                stored: change.to,
                pending: None,
            })
        }
    } else if hot.stored != previous {
        contact.state = previous;
        contact.pending_until_ms = None;
        Some(Hot {
            stored: previous,
            pending: None,
        })
    } else {
        // Unchanged (a pending ask keeps its first deadline), but the contact's record may
        // predate a lapse settled elsewhere: keep it equal to the hot tree.
        contact.state = hot.stored;
        None
    };
    if let Some(new_hot) = new_hot {
        if new_hot.stored == ConsentState::Unknown {
            tx.consent.remove(hkey.as_slice())?;
        } else {
            tx.consent.insert(hkey.as_slice(), new_hot.encode())?;
        }
    }
    if indexed != Some(contact.state) {
        if let Some(old) = indexed {
            // Also for `unknown`: databases written before it went unindexed hold such keys.
            tx.states.remove(state_key(vmn, old, msisdn))?;
        }
        if contact.state != ConsentState::Unknown {
            tx.states
                .insert(state_key(vmn, contact.state, msisdn), &[] as &[u8])?;
        }
    }
    tx.contacts.insert(ckey, encode_json(&contact))?;

    let entry = LedgerEntry {
        at_ms: change.at_ms,
        vmn: vmn.to_string(),
        msisdn: msisdn.to_string(),
        from: previous,
        to: if changed { change.to } else { previous },
        text: change.text.to_string(),
        matched: change.matched.to_string(),
        message_id: change.message_id.map(str::to_string),
        source: change.source.to_string(),
        confirmation_sent: false,
    };
    let id = ledger_id.to_be_bytes();
    tx.ledger.insert(&id, encode_json(&entry))?;
    let mut key = number_ledger_prefix(vmn);
    key.extend_from_slice(&id);
    tx.ledger_index.insert(key, &[] as &[u8])?;
    let mut key = contact_ledger_prefix(b'c', vmn, msisdn);
    key.extend_from_slice(&id);
    tx.ledger_index.insert(key, &[] as &[u8])?;
    if let Some(message_id) = change.message_id {
        tx.ledger_index
            .insert(message_key(vmn, msisdn, message_id), &id)?;
    }
    Ok(Applied {
        previous,
        changed,
        hot: new_hot.map(|h| (hkey, h)),
    })
}

/// What [`apply_in`] did: the caller's answer, and the `consent` value it wrote (for the
/// opt-out index, updated once the transaction has committed).
struct Applied {
    previous: ConsentState,
    changed: bool,
    hot: Option<(Vec<u8>, Hot)>,
}

/// Keys of `tree` that start with `prefix` and sort after `prefix ++ after` (all of them when
/// `after` is `None`), in order.
fn keys_after<'t>(
    tree: &'t sled::Tree,
    prefix: &'t [u8],
    after: Option<&[u8]>,
) -> impl Iterator<Item = Result<sled::IVec>> + 't {
    let start = match after {
        Some(after) => {
            let mut start = prefix.to_vec();
            start.extend_from_slice(after);
            Bound::Excluded(start)
        }
        None => Bound::Included(prefix.to_vec()),
    };
    tree.range::<Vec<u8>, _>((start, Bound::Unbounded))
        .keys()
        .map(|k| k.map_err(StoreError::from))
        .take_while(move |k| k.as_ref().map_or(true, |k| k.starts_with(prefix)))
}

/// A contact as sled holds it, with the seen times of the records store laid over it (sled's
/// own are those of its consent changes, and of messages before `contacts_seen` existed).
fn with_seen(mut contact: Contact, seen: Option<Seen>) -> Contact {
    if let Some(seen) = seen {
        contact.first_seen_ms = contact.first_seen_ms.min(seen.first_ms);
        contact.last_seen_ms = contact.last_seen_ms.max(seen.last_ms);
    }
    contact
}

/// A contact who sent messages and never changed a consent: `unknown`, known since first seen.
fn unseen_contact(vmn: String, msisdn: String, seen: Seen) -> Contact {
    Contact {
        vmn,
        msisdn,
        state: ConsentState::Unknown,
        first_seen_ms: seen.first_ms,
        last_seen_ms: seen.last_ms,
        source_keyword: None,
        attributes: BTreeMap::new(),
        pending_until_ms: None,
        updated_ms: seen.first_ms,
    }
}

impl Store {
    /// Hot path (every outbound SMS checks it): one sled get on a compact key -> 1-byte
    /// (+deadline) value, no JSON. `Unknown` when absent. An error means "cannot tell": the
    /// caller must not send.
    pub fn consent_state(&self, vmn: &str, msisdn: &str) -> Result<ConsentState> {
        let hot = self.hot(vmn, msisdn)?;
        // The clock is read only for a pending ask, the rare case.
        Ok(match hot.pending {
            Some(_) => hot.effective(crate::clock::now_ms()),
            None => hot.stored,
        })
    }

    /// [`Store::consent_state`] with an explicit "now" (decides whether a pending ask lapsed).
    pub fn consent_state_at(&self, vmn: &str, msisdn: &str, now_ms: u64) -> Result<ConsentState> {
        Ok(self.hot(vmn, msisdn)?.effective(now_ms))
    }

    /// The `consent` value of a contact.
    fn hot(&self, vmn: &str, msisdn: &str) -> Result<Hot> {
        let raw = with_hot_key(vmn, msisdn, |key| self.trees().consent.get(key))?;
        Hot::decode(raw.as_deref())
    }

    /// Applies a change atomically (contact + ledger entry in one sled transaction). Returns the
    /// previous state (the one in force at `at_ms`) and whether it changed. When it does not (a
    /// repeated STOP) the ledger still records the message but `changed` is false, so the caller
    /// sends no second confirmation. Applying the same `message_id` again (reprocessing after a
    /// crash) records nothing new and returns what the first call returned.
    pub fn apply_consent(&self, change: &ConsentChange) -> Result<(ConsentState, bool)> {
        let mut out = self.apply_consents(std::slice::from_ref(change))?;
        out.pop()
            .ok_or_else(|| StoreError::Corrupt("no outcome for a consent change".into()))
    }

    /// Several changes in one transaction (imports, bulk loads), applied in order: a later
    /// change of the same contact sees the earlier one. Keep batches to a few hundred: sled
    /// holds a process-wide write lock while a transaction commits, and every read (the hot
    /// path too) waits for it.
    pub fn apply_consents(&self, changes: &[ConsentChange]) -> Result<Vec<(ConsentState, bool)>> {
        let normalised: Vec<(String, String, u64)> = changes
            .iter()
            .map(|c| {
                Ok((
                    normalize_address(c.vmn),
                    normalize_address(c.msisdn),
                    self.next_id()?,
                ))
            })
            .collect::<Result<_>>()?;
        let t = self.trees();
        let _writer = self.inner.opt_out_index.writer();
        let outcome = (
            t.consent,
            t.contacts,
            t.contact_states,
            t.ledger,
            t.ledger_index,
        )
            .transaction(|(consent, contacts, states, ledger, ledger_index)| {
                let tx = Tx {
                    consent,
                    contacts,
                    states,
                    ledger,
                    ledger_index,
                };
                changes
                    .iter()
                    .zip(&normalised)
                    .map(|(change, (vmn, msisdn, id))| apply_in(&tx, change, vmn, msisdn, *id))
                    .collect::<TxResult<Vec<_>>>()
            })?;
        self.inner.opt_out_index.record(
            outcome
                .iter()
                .filter_map(|a| a.hot.as_ref())
                .map(|(key, hot)| (key_hash(key), Mark::of(*hot))),
        );
        Ok(outcome
            .into_iter()
            .map(|a| (a.previous, a.changed))
            .collect())
    }

    /// The enforcement check of the outbound path: is this person opted out of this number
    /// now? Answered from the in-memory opt-out index once [`Store::build_opt_out_index`] has
    /// run (a hash lookup, no sled call), from the `consent` tree before that, and from the tree
    /// for the few contacts whose pending double opt-in falls back to opted out. An error means
    /// "cannot tell": do not send.
    pub fn is_opted_out(&self, vmn: &str, msisdn: &str) -> Result<bool> {
        let indexed = with_hot_key(vmn, msisdn, |key| {
            self.inner.opt_out_index.lookup(key_hash(key))
        });
        match indexed {
            Some(answer) => Ok(answer),
            None => Ok(self.consent_state(vmn, msisdn)? == ConsentState::OptedOut),
        }
    }

    /// Builds the in-memory opt-out index [`Store::is_opted_out`] answers from: one scan of the
    /// `consent` tree (seconds at ten million contacts: run it on a blocking thread at
    /// startup). Changes made during the scan are applied once it ends. Returns how many
    /// contacts it holds. Calling it again once built does nothing.
    pub fn build_opt_out_index(&self) -> Result<usize> {
        let index = &self.inner.opt_out_index;
        if !index.begin_build() {
            return Ok(index.len());
        }
        let mut built = IndexSets::default();
        for kv in self.trees().consent.iter() {
            let (key, value) = match kv {
                Ok(kv) => kv,
                Err(e) => {
                    index.abandon_build();
                    return Err(e.into());
                }
            };
            match Hot::decode(Some(&value)) {
                Ok(hot) => built.set(key_hash(&key), Mark::of(hot)),
                Err(e) => {
                    index.abandon_build();
                    return Err(e);
                }
            }
        }
        Ok(index.finish_build(built))
    }

    /// Marks the ledger entry of `message_id` as having had its confirmation sent (called when
    /// the confirmation is queued). Does nothing when no entry of that contact has that id.
    pub fn set_confirmation_sent(&self, vmn: &str, msisdn: &str, message_id: &str) -> Result<()> {
        let (vmn, msisdn) = (normalize_address(vmn), normalize_address(msisdn));
        let t = self.trees();
        let Some(raw) = t.ledger_index.get(message_key(&vmn, &msisdn, message_id))? else {
            return Ok(());
        };
        let id = key_u64(&raw)?;
        let mut failure = None;
        t.ledger.fetch_and_update(id.to_be_bytes(), |old| {
            let old = old?;
            match decode_json::<LedgerEntry>(old) {
                Ok(mut entry) => {
                    entry.confirmation_sent = true;
                    Some(encode_json(&entry))
                }
                Err(e) => {
                    failure = Some(e);
                    Some(old.to_vec())
                }
            }
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// First/last seen for any message from a contact (who becomes an `unknown` contact when
    /// new). Written to the records store's `contacts_seen`, not to sled (see `records`): one
    /// LSM write per message instead of a sled compare-and-swap, and no sled write at all for
    /// a message that changes no consent.
    pub fn touch_contact(&self, vmn: &str, msisdn: &str, at_ms: u64) -> Result<()> {
        let key = contact_key(&normalize_address(vmn), &normalize_address(msisdn));
        self.inner.records.touch_seen(&key, at_ms)
    }

    /// One contact, with the state in force now.
    pub fn contact(&self, vmn: &str, msisdn: &str) -> Result<Option<Contact>> {
        let (vmn, msisdn) = (normalize_address(vmn), normalize_address(msisdn));
        let key = contact_key(&vmn, &msisdn);
        let seen = self.inner.records.seen(&key)?;
        let contact = match (self.trees().contacts.get(&key)?, seen) {
            (Some(raw), seen) => with_seen(decode_json(&raw)?, seen),
            (None, Some(seen)) => unseen_contact(vmn, msisdn, seen),
            (None, None) => return Ok(None),
        };
        Ok(Some(self.settle(contact, crate::clock::now_ms())?))
    }
    /// A contact as read, with a lapsed pending ask shown as the state it fell back to.
    fn settle(&self, mut contact: Contact, now_ms: u64) -> Result<Contact> {
        if contact.state == ConsentState::Pending {
            contact.state = self.consent_state_at(&contact.vmn, &contact.msisdn, now_ms)?;
        }
        Ok(contact)
    }

    /// Contacts of a number in msisdn order after `after`, optional state filter (the state in
    /// force now), at most `limit`.
    pub fn contacts(
        &self,
        vmn: &str,
        state: Option<ConsentState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>> {
        self.contacts_at(vmn, state, after, limit, crate::clock::now_ms())
    }

    /// [`Store::contacts`] with an explicit "now".
    pub fn contacts_at(
        &self,
        vmn: &str,
        state: Option<ConsentState>,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<Contact>> {
        let vmn = normalize_address(vmn);
        let after = after.map(normalize_address);
        let after = after.as_deref().map(str::as_bytes);
        let t = self.trees();
        let state = match state {
            Some(state) if state != ConsentState::Unknown => state,
            // Everyone, or the unknown ones (not indexed: see the module header): from
            // `contacts` itself.
            only => return self.all_contacts_at(&vmn, only, after, limit, now_ms),
        };
        // Contacts filed under `state`, and (for any other state) pending ones whose ask lapsed
        // back to it: two sorted runs of the state index, merged as they are read. Each
        // candidate is checked against its record, so an index entry left behind by a race
        // (a first touch and a first change of one contact at once) is skipped, not listed.
        let own = state_prefix(&vmn, state);
        let pending = state_prefix(&vmn, ConsentState::Pending);
        let mut runs = vec![keys_after(t.contact_states, &own, after).peekable()];
        let mut prefixes = vec![own.len()];
        if state != ConsentState::Pending {
            runs.push(keys_after(t.contact_states, &pending, after).peekable());
            prefixes.push(pending.len());
        }
        let mut out = Vec::new();
        while out.len() < limit {
            // The run whose next msisdn sorts first.
            let mut best: Option<(usize, Vec<u8>)> = None;
            for (i, run) in runs.iter_mut().enumerate() {
                let msisdn = match run.peek() {
                    None => continue,
                    Some(Err(_)) => {
                        return Err(run
                            .next()
                            .and_then(|r| r.err())
                            .unwrap_or_else(|| StoreError::Corrupt("index scan".into())));
                    }
                    Some(Ok(key)) => key.get(prefixes[i]..).unwrap_or_default().to_vec(),
                };
                if best.as_ref().is_none_or(|(_, b)| msisdn < *b) {
                    best = Some((i, msisdn));
                }
            }
            let Some((i, msisdn)) = best else {
                break;
            };
            runs[i].next();
            let mut key = address_key(&vmn);
            key.extend_from_slice(&msisdn);
            let Some(raw) = t.contacts.get(&key)? else {
                continue;
            };
            let seen = self.inner.records.seen(&key)?;
            let contact = self.settle(with_seen(decode_json(&raw)?, seen), now_ms)?;
            if contact.state == state {
                out.push(contact);
            }
        }
        Ok(out)
    }

    /// Every contact of `vmn` after `after` in msisdn order, or only those in state `only`:
    /// sled's `contacts` (those with a consent history) and the records store's seen entries
    /// (everyone who sent a message), two sorted runs merged as they are read. Unknown
    /// contacts are not indexed by state (see the module header), so they are found here.
    fn all_contacts_at(
        &self,
        vmn: &str,
        only: Option<ConsentState>,
        after: Option<&[u8]>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<Contact>> {
        use std::cmp::Ordering;
        let prefix = address_key(vmn);
        let (start, inclusive) = match after {
            Some(a) => ([prefix.as_slice(), a].concat(), false),
            None => (prefix.clone(), true),
        };
        let lower = if inclusive {
            Bound::Included(start.clone())
        } else {
            Bound::Excluded(start.clone())
        };
        let mut stored = self
            .trees()
            .contacts
            .range::<Vec<u8>, _>((lower, Bound::Unbounded))
            .map(|kv| kv.map_err(StoreError::from))
            .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .peekable();
        let mut seen = self
            .inner
            .records
            .seen_from(prefix.clone(), start, inclusive)
            .peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            if let Some(Err(e)) = stored.next_if(Result::is_err) {
                return Err(e);
            }
            if let Some(Err(e)) = seen.next_if(Result::is_err) {
                return Err(e);
            }
            // Errors were taken above: what is left is a key or the end of a run.
            let order = match (stored.peek(), seen.peek()) {
                (Some(Ok((a, _))), Some(Ok((b, _)))) => a.as_ref().cmp(b.as_slice()),
                (Some(Ok(_)), None) => Ordering::Less,
                (None, Some(Ok(_))) => Ordering::Greater,
                _ => break,
            };
            let from_sled = (order != Ordering::Greater)
                .then(|| stored.next())
                .flatten();
            let from_seen = (order != Ordering::Less).then(|| seen.next()).flatten();
            let contact = match (from_sled.transpose()?, from_seen.transpose()?) {
                (Some((_, raw)), seen) => with_seen(decode_json(&raw)?, seen.map(|(_, s)| s)),
                (None, Some((key, seen))) => {
                    let msisdn = String::from_utf8(key[prefix.len()..].to_vec()).map_err(|_| {
                        StoreError::Corrupt("a seen entry's msisdn is not UTF-8".into())
                    })?;
                    unseen_contact(vmn.to_string(), msisdn, seen)
                }
                (None, None) => continue,
            };
            let contact = self.settle(contact, now_ms)?;
            if only.is_none_or(|state| contact.state == state) {
                out.push(contact);
            }
        }
        Ok(out)
    }

    /// Ledger entries of a number (optionally one msisdn), oldest first after the id `after`,
    /// at most `limit`, with their ids.
    pub fn ledger(
        &self,
        vmn: &str,
        msisdn: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, LedgerEntry)>> {
        let vmn = normalize_address(vmn);
        let prefix = match msisdn {
            Some(m) => contact_ledger_prefix(b'c', &vmn, &normalize_address(m)),
            None => number_ledger_prefix(&vmn),
        };
        let t = self.trees();
        let after = after.map(u64::to_be_bytes);
        let mut out = Vec::new();
        for key in keys_after(
            t.ledger_index,
            &prefix,
            after.as_ref().map(|a| a.as_slice()),
        ) {
            if out.len() >= limit {
                break;
            }
            let key = key?;
            let id = key_u64(&key[prefix.len()..])?;
            if let Some(raw) = t.ledger.get(id.to_be_bytes())? {
                out.push((id, decode_json(&raw)?));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change dated before the contact's last one (a concatenated opt-in whose parts
    /// straddle a STOP: it is dated by its first part) does not undo the opt-out. A later one
    /// does, and an older opt-out still applies.
    #[test]
    fn an_opt_in_dated_before_a_later_opt_out_does_not_undo_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let change = |to, at_ms, message_id| ConsentChange {
            vmn: "56767",
            msisdn: "919800000011",
            to,
            at_ms,
            text: "x",
            matched: "x",
            message_id: Some(message_id),
            source: "sms",
            keyword: None,
            attributes: &[],
            pending_until_ms: None,
        };
        let stop = store
            .apply_consent(&change(ConsentState::OptedOut, 2_000, "m-stop"))
            .unwrap();
        assert_eq!(stop, (ConsentState::Unknown, true));
        let late_club = store
            .apply_consent(&change(ConsentState::OptedIn, 1_000, "m-club"))
            .unwrap();
        assert_eq!(late_club, (ConsentState::OptedOut, false));
        assert!(store.is_opted_out("56767", "919800000011").unwrap());
        let start = store
            .apply_consent(&change(ConsentState::OptedIn, 3_000, "m-start"))
            .unwrap();
        assert_eq!(start, (ConsentState::OptedOut, true));
        let old_stop = store
            .apply_consent(&change(ConsentState::OptedOut, 2_500, "m-old-stop"))
            .unwrap();
        assert_eq!(
            old_stop,
            (ConsentState::OptedIn, true),
            "opting out is never stale"
        );
    }

    #[test]
    fn unknown_contacts_cost_no_sled_write_and_are_listed_from_their_seen_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let vmn = "56767";
        for n in 0..6u64 {
            store
                .touch_contact(vmn, &format!("9198000000{n:02}"), 1_000 + n)
                .unwrap();
        }
        assert_eq!(
            (
                store.trees().contacts.len(),
                store.trees().contact_states.len()
            ),
            (0, 0),
            "a first message writes its seen entry only"
        );
        // One opts in, one out; and a contact as databases from before `contacts_seen` and the
        // unindexed `unknown` hold it: in sled, with an index key.
        let change = |msisdn, to| ConsentChange {
            vmn,
            msisdn,
            to,
            at_ms: 2_000,
            text: "x",
            matched: "x",
            message_id: None,
            source: "api",
            keyword: None,
            attributes: &[],
            pending_until_ms: None,
        };
        store
            .apply_consent(&change("919800000001", ConsentState::OptedIn))
            .unwrap();
        store
            .apply_consent(&change("919800000004", ConsentState::OptedOut))
            .unwrap();
        store
            .trees()
            .contact_states
            .insert(
                state_key(vmn, ConsentState::Unknown, "919800000002"),
                &[] as &[u8],
            )
            .unwrap();
        let legacy = Contact {
            vmn: vmn.into(),
            msisdn: "919800000002".into(),
            state: ConsentState::Unknown,
            first_seen_ms: 500,
            last_seen_ms: 600,
            source_keyword: None,
            attributes: BTreeMap::new(),
            pending_until_ms: None,
            updated_ms: 500,
        };
        store
            .trees()
            .contacts
            .insert(contact_key(vmn, "919800000002"), encode_json(&legacy))
            .unwrap();
        assert_eq!(store.trees().contact_states.len(), 3);
        // Its seen times are both places' widest.
        let merged = store.contact(vmn, "919800000002").unwrap().unwrap();
        assert_eq!((merged.first_seen_ms, merged.last_seen_ms), (500, 1_002));
        let only_seen = store.contact(vmn, "919800000003").unwrap().unwrap();
        assert_eq!(only_seen.state, ConsentState::Unknown);
        assert_eq!(
            (only_seen.first_seen_ms, only_seen.last_seen_ms),
            (1_003, 1_003)
        );
        assert_eq!(store.contact(vmn, "919800000099").unwrap(), None);
        let msisdns = |state, after: Option<&str>, limit| {
            store
                .contacts_at(vmn, state, after, limit, 3_000)
                .unwrap()
                .into_iter()
                .map(|c| c.msisdn)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            msisdns(Some(ConsentState::Unknown), None, 10),
            [
                "919800000000",
                "919800000002",
                "919800000003",
                "919800000005"
            ]
        );
        // Paged, skipping the known ones between pages.
        assert_eq!(
            msisdns(Some(ConsentState::Unknown), None, 2),
            ["919800000000", "919800000002"]
        );
        assert_eq!(
            msisdns(Some(ConsentState::Unknown), Some("919800000002"), 2),
            ["919800000003", "919800000005"]
        );
        assert_eq!(
            msisdns(Some(ConsentState::OptedIn), None, 10),
            ["919800000001"]
        );
        assert_eq!(msisdns(None, None, 10).len(), 6);
        // Back to unknown (an operator's change): out of the index, legacy key and all.
        store
            .apply_consent(&change("919800000004", ConsentState::Unknown))
            .unwrap();
        assert!(msisdns(Some(ConsentState::OptedOut), None, 10).is_empty());
        assert_eq!(msisdns(Some(ConsentState::Unknown), None, 10).len(), 5);
        store
            .apply_consent(&change("919800000002", ConsentState::OptedIn))
            .unwrap();
        assert_eq!(
            store.trees().contact_states.len(),
            2,
            "the opted-in two only"
        );
    }

    #[test]
    fn addresses_normalise_and_pack() {
        assert_eq!(normalize_address(" +91 98123-45678 "), "919812345678");
        assert_eq!(normalize_address("(0)1.2"), "012");
        assert_eq!(normalize_address("ACME-Shop"), "ACME-Shop");
        assert_eq!(normalize_address("+"), "+");
        assert_eq!(address_key("+91 98123-45678"), address_key("919812345678"));
        assert_eq!(
            address_key("919812345678"),
            vec![12, 0x91, 0x98, 0x12, 0x34, 0x56, 0x78]
        );
        assert_eq!(address_key("123"), vec![3, 0x12, 0x3f]);
        assert_eq!(address_key("AB"), vec![0xff, 0, 0, 0, 2, b'A', b'B']);
        // Prefix-free: "1" + "23" and "12" + "3" are different contacts.
        assert_ne!(hot_key("1", "23"), hot_key("12", "3"));
        let long = "1".repeat(65);
        assert_eq!(address_key(&long)[0], RAW_ADDRESS);
    }

    #[test]
    fn hot_values_round_trip_and_lapse() {
        let pending = Hot {
            stored: ConsentState::Pending,
            pending: Some((1000, ConsentState::OptedOut)),
        };
        let decoded = Hot::decode(Some(&pending.encode())).expect("decodes");
        assert_eq!(decoded, pending);
        assert_eq!(decoded.effective(999), ConsentState::Pending);
        assert_eq!(decoded.effective(1000), ConsentState::OptedOut);
        assert_eq!(
            Hot::decode(None).expect("absent").stored,
            ConsentState::Unknown
        );
        for bad in [&[][..], &[9], &[3, 0, 0], &[3, 0, 0, 0, 0, 0, 0, 0, 0, 3]] {
            assert!(Hot::decode(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
