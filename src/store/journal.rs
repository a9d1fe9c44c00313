//! The inbound journal: an append-only log of segment files in `<data_dir>/wal/`, written
//! before every acknowledgement.
//!
//! Why not sled: the group commit before `deliver_sm_resp` is the one disk wait on the ack path.
//! A sled flush there cost a page-cache serialisation, writes through sled's I/O thread pool and
//! `sync_file_range`, and an allocation-heavy tree insert per entry. Here a batch is one `write`
//! of already-encoded records and one `fdatasync`.
//!
//! Records, little-endian: `[kind u8][len u32][crc32 u32][id u64][payload: len bytes]`. The CRC
//! covers the segment's salt, then kind, len, id and payload.
//! - `SALT`: the first record of every segment, and only there: 8 random bytes, its CRC
//!   unsalted. Why: a deliver_sm's payload is bytes a stranger chose, and it can hold a whole
//!   well-formed record (a release of acknowledged entries, or a forged entry). When a crash
//!   tears the record that carries it, the reader resynchronises through those bytes; with
//!   the salt unknown to the sender, a record forged inside them fails its CRC (but for a
//!   chance of one in four billion per attempt, and each attempt needs a crash).
//! - `ENTRY`: a [`JournalEntry`], as [`JournalEntry::encode`] writes it, under its id.
//! - `RELEASE`: `len / 8` ids (u64 each) whose processing is durable in the main database.
//!
//! Segments are `seg-<n:016x>.v2.log`. Segments named `seg-<n:016x>.log`, written before
//! records were salted, are still read (unsalted) when the journal opens, and replaced like
//! any other; a `.v2.log` segment whose salt record is lost yields nothing, never unsalted
//! records. A new one starts past [`SEGMENT_BYTES`] and at every open. A
//! sealed segment is deleted once it and every older segment hold no live entry: release records
//! live in the same or newer segments than their entries, so deleting only from the oldest end
//! never resurrects a released entry. At open, every segment is read, the live entries (entries
//! minus releases) are copied into the new segment and made durable, and the old segments are
//! deleted; a segment pinned by one failed entry therefore lasts at most until the next start.
//!
//! A record that does not check out (a write torn by a crash before its fsync, or a damaged disk
//! block) is skipped: the reader resynchronises on the next record whose CRC matches. Nothing
//! acknowledged is lost by a torn tail, because an entry is acknowledged only after its fsync.
//!
//! The active segment is zero-filled a little ahead of its last record, and synced, by the
//! writer after it has answered a batch ([`Journal::fill_ahead`]). An `fdatasync` after a write
//! into blocks that already exist only flushes data; after an append it must also commit the
//! file's new size and block map through ext4's journal. On the machine measured that took the
//! commit's sync from about 360-510 µs to 215-260 µs at the median, and roughly halved its p99
//! (`fallocate` does not help: its unwritten extents need the same metadata commit). The
//! zeros are never mistaken for records: a record starts with a non-zero kind byte, and the
//! reader skips a run of zeros whole, counting a trailing one as free space, not damage.
//!
//! A release is written but not fsynced: losing one in a power cut only means processing that
//! entry again, which the processor does idempotently (ids derive from the journal id).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{JournalEntry, Result, StoreError};

/// A segment is sealed once it grows past this.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// ... and never grows past this, even within one batch (see `Journal::append_raw`).
const MAX_SEGMENT_BYTES: u64 = 2 * SEGMENT_BYTES;
/// Largest payload a record may claim; anything larger is damage, not data (a deliver_sm PDU
/// is at most a few KiB, and a release record holds at most one processor batch of ids).
const MAX_PAYLOAD: usize = 1 << 20;
const HEADER: usize = 1 + 4 + 4 + 8;
/// How far ahead of the last record the active segment is zero-filled, at most (see the module
/// header).
const FILL_AHEAD: u64 = 2 * 1024 * 1024;
/// ... in steps of this, one per batch at most: each step is a write and a sync that the next
/// batch waits behind, so it is kept short (a 2 MiB step held commits up for 8-11 ms here).
const FILL_STEPS: u64 = 8;
const ENTRY: u8 = 1;
const RELEASE: u8 = 2;
const SALT: u8 = 3;
/// Octets of a segment's `SALT` record, the first in every segment.
const SALT_RECORD: usize = HEADER + 8;

/// Where a live entry's record is: its segment and the payload's offset. The length is read
/// from the record's header (see [`Journal::entry`]), so an index slot is 16 bytes, not 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    /// The segment's number ([`start_segment`](Journal::start_segment) keeps them in 32 bits:
    /// four billion segments of 64 MiB).
    segment: u32,
    offset: u32,
}

/// Every live (unreleased) entry, in id order: 16 bytes an entry, where a hash map took about
/// 40 and twice that while it grew. A backlog of a million acknowledged messages is the case
/// this is sized for: 16 MiB of slots. They are kept in chunks of [`CHUNK_SLOTS`], not in one
/// deque, because a deque grows by doubling and copying: at 800,000 entries it held 8 MiB and
/// 16 MiB at once, and that transient set the daemon's peak RSS.
///
/// Ids only grow within a run (a batch's ids derive from sled's `generate_id`), so appends go
/// at the back; a released entry becomes a hole, and a chunk whose slots are all holes is
/// dropped, so the index spans the oldest live entry to the newest in chunks that hold some.
#[derive(Default)]
struct LiveIndex {
    /// In id order, each one's first id above the last id of the one before. Never empty
    /// and never without a live slot.
    chunks: VecDeque<Chunk>,
    live: usize,
}

/// Slots a chunk is allocated for: 64 KiB. An entry placed out of order may add one more.
const CHUNK_SLOTS: usize = 4096;

struct Chunk {
    slots: Vec<(u64, Location)>,
    /// Slots not yet released.
    live: usize,
}

/// `offset` of a released slot (no record starts there: see [`MAX_SEGMENT_BYTES`]).
const RELEASED: u32 = u32::MAX;

impl LiveIndex {
    fn insert(&mut self, id: u64, location: Location) {
        let in_order = self
            .chunks
            .back()
            .and_then(|c| c.slots.last())
            .is_none_or(|(last, _)| *last < id);
        if in_order {
            if self
                .chunks
                .back()
                .is_none_or(|c| c.slots.len() >= CHUNK_SLOTS)
            {
                self.chunks.push_back(Chunk {
                    slots: Vec::with_capacity(CHUNK_SLOTS),
                    live: 0,
                });
            }
            if let Some(chunk) = self.chunks.back_mut() {
                chunk.slots.push((id, location));
                chunk.live += 1;
                self.live += 1;
            }
            return;
        }
        // Not in order (only an entry moved from an older layout at open): keep the order by
        // placing it in the chunk whose range it falls in (or the first), or replace a slot
        // with the same id.
        let at_chunk = self.chunk_for(id).unwrap_or(0);
        let Some(chunk) = self.chunks.get_mut(at_chunk) else {
            return;
        };
        match chunk.slots.binary_search_by_key(&id, |(i, _)| *i) {
            Ok(at) => {
                if chunk.slots[at].1.offset == RELEASED {
                    chunk.live += 1;
                    self.live += 1;
                }
                chunk.slots[at].1 = location;
            }
            Err(at) => {
                chunk.slots.insert(at, (id, location));
                chunk.live += 1;
                self.live += 1;
            }
        }
    }

    /// The chunk whose first id is the greatest at or below `id`.
    fn chunk_for(&self, id: u64) -> Option<usize> {
        self.chunks
            .partition_point(|c| c.slots.first().is_some_and(|(first, _)| *first <= id))
            .checked_sub(1)
    }

    /// Chunk and slot of `id`.
    fn find(&self, id: u64) -> Option<(usize, usize)> {
        let at_chunk = self.chunk_for(id)?;
        let at = self.chunks[at_chunk]
            .slots
            .binary_search_by_key(&id, |(i, _)| *i)
            .ok()?;
        Some((at_chunk, at))
    }

    fn get(&self, id: u64) -> Option<Location> {
        let (at_chunk, at) = self.find(id)?;
        let location = self.chunks[at_chunk].slots[at].1;
        (location.offset != RELEASED).then_some(location)
    }

    /// Marks an entry released; returns where it was, if it was live.
    fn remove(&mut self, id: u64) -> Option<Location> {
        let (at_chunk, at) = self.find(id)?;
        let chunk = &mut self.chunks[at_chunk];
        let location = chunk.slots[at].1;
        if location.offset == RELEASED {
            return None;
        }
        chunk.slots[at].1.offset = RELEASED;
        chunk.live -= 1;
        self.live -= 1;
        if chunk.live == 0 {
            // Its memory goes back now; the chunks around it keep their order.
            self.chunks.remove(at_chunk);
        }
        Some(location)
    }

    fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.slots.iter())
            .filter(|(_, l)| l.offset != RELEASED)
            .map(|(id, _)| *id)
    }

    /// Slots held, live or released (what the index costs in memory, over 16 bytes).
    #[cfg(test)]
    fn slots_held(&self) -> usize {
        self.chunks.iter().map(|c| c.slots.len()).sum()
    }

    /// Drops the live entries of `segment` at or past `offset` (a write that failed there).
    fn forget_from(&mut self, segment: u32, offset: u32) -> u64 {
        let mut forgotten = 0;
        for chunk in self.chunks.iter_mut() {
            for (_, location) in chunk.slots.iter_mut() {
                if location.segment == segment
                    && location.offset >= offset
                    && location.offset != RELEASED
                {
                    location.offset = RELEASED;
                    chunk.live -= 1;
                    forgotten += 1;
                }
            }
            // Released slots at the back would hold the next append's id below theirs.
            while chunk
                .slots
                .last()
                .is_some_and(|(_, l)| l.offset == RELEASED)
            {
                chunk.slots.pop();
            }
        }
        self.live -= forgotten as usize;
        self.chunks.retain(|c| c.live > 0);
        forgotten
    }
}

struct Segment {
    file: Arc<File>,
    /// Seeds the CRC of every record after the first (see the module header).
    salt: u64,
    /// Entries in this segment not yet released.
    live: u64,
}

struct State {
    /// By segment number; the last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    active: u64,
    active_len: u64,
    /// Bytes of the active segment zero-filled and synced ahead of `active_len` ends.
    filled: u64,
    /// Every live (unreleased) entry.
    live: LiveIndex,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// Segments written since their last sync, oldest first: usually just the active one. A
    /// failed write starts a new segment between a batch's append and its sync; the sync must
    /// still reach the segment that holds the batch, or the batch would be acknowledged with
    /// nothing making it durable.
    unsynced: Vec<u64>,
}

impl State {
    /// A segment's file. Every live entry's segment and the active one are kept open, so a
    /// miss is a bug in this module, reported as an error rather than a panic.
    fn segment_file(&self, n: u64) -> Result<Arc<File>> {
        self.segments
            .get(&n)
            .map(|s| s.file.clone())
            .ok_or_else(|| StoreError::Corrupt(format!("journal segment {n} is not open")))
    }

    /// The salt of the active segment, which every record written now is checksummed with.
    fn active_salt(&self) -> Result<u64> {
        self.segments
            .get(&self.active)
            .map(|s| s.salt)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("journal segment {} is not open", self.active))
            })
    }
}

/// The journal. Appends come from one writer (the group commit); releases from the processor.
pub struct Journal {
    dir: PathBuf,
    fsync: bool,
    /// [`SEGMENT_BYTES`] and [`MAX_SEGMENT_BYTES`]; smaller in tests.
    segment_bytes: u64,
    max_segment_bytes: u64,
    state: Mutex<State>,
    /// Held through a whole [`Journal::sync`]: a sync that finds nothing left to do must not
    /// return while another one (the processor's, say) is still syncing the segment that
    /// holds its batch.
    syncing: Mutex<()>,
}

/// What recovery found, for the log at open.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    pub segments_read: usize,
    pub live_entries: usize,
    /// Bytes skipped because a record did not check out (torn tail or damage).
    pub skipped_bytes: u64,
}

/// How a segment's records are checksummed, as its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `seg-<n>.log`: records checksummed without a salt (written by earlier versions).
    Unsalted,
    /// `seg-<n>.v2.log`: a `SALT` record first, and every later record salted with it.
    Salted,
}

/// The path of segment `n`, as this version writes it ([`Format::Salted`]).
fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:016x}.v2.log"))
}

/// The path of segment `n` in `format`.
fn segment_path_in(dir: &Path, n: u64, format: Format) -> PathBuf {
    match format {
        Format::Salted => segment_path(dir, n),
        Format::Unsalted => dir.join(format!("seg-{n:016x}.log")),
    }
}

/// A segment's number and format from its file name.
fn segment_name(name: &str) -> Option<(u64, Format)> {
    let rest = name.strip_prefix("seg-")?;
    let (hex, format) = match rest.strip_suffix(".v2.log") {
        Some(hex) => (hex, Format::Salted),
        None => (rest.strip_suffix(".log")?, Format::Unsalted),
    };
    let n = (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())??;
    Some((n, format))
}

/// A salt for a new segment: unpredictable to anyone outside the process (SipHash keyed from
/// the OS's randomness, as std's hash maps are).
fn new_salt(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(n);
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}

/// Appends one record to `buf`, its CRC seeded with `salt` (None: a `SALT` record, or the
/// unsalted format of old segments).
fn encode_record(buf: &mut Vec<u8>, kind: u8, id: u64, payload: &[u8], salt: Option<u64>) {
    let len = payload.len() as u32;
    let mut crc = crc32fast::Hasher::new();
    if let Some(salt) = salt {
        crc.update(&salt.to_le_bytes());
    }
    crc.update(&[kind]);
    crc.update(&len.to_le_bytes());
    crc.update(&id.to_le_bytes());
    crc.update(payload);
    buf.push(kind);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// One record read back: kind, id, and the payload's range in the segment.
struct RawRecord {
    kind: u8,
    id: u64,
    payload: std::ops::Range<usize>,
}

/// The record at `at`, if it is whole and its CRC (seeded with `salt`) matches. `SALT`
/// records are read by [`read_salt`] only.
fn parse_record(data: &[u8], at: usize, salt: Option<u64>) -> Option<RawRecord> {
    let header = data.get(at..at + HEADER)?;
    let kind = header[0];
    if kind != ENTRY && kind != RELEASE {
        return None;
    }
    parse_checked(data, at, kind, salt)
}

/// The salt of a salted segment: its first record, if whole and checked.
fn read_salt(data: &[u8]) -> Option<u64> {
    if data.first() != Some(&SALT) {
        return None;
    }
    let record = parse_checked(data, 0, SALT, None)?;
    let salt = data.get(record.payload)?;
    Some(u64::from_le_bytes(salt.try_into().ok()?))
}

/// The record of `kind` at `at`, if whole and its CRC matches.
fn parse_checked(data: &[u8], at: usize, kind: u8, salt: Option<u64>) -> Option<RawRecord> {
    let header = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[1..5].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD || (kind == RELEASE && len % 8 != 0) {
        return None;
    }
    let crc = u32::from_le_bytes(header[5..9].try_into().ok()?);
    let id = u64::from_le_bytes(header[9..17].try_into().ok()?);
    let payload = at + HEADER..at + HEADER + len;
    let body = data.get(payload.clone())?;
    let mut check = crc32fast::Hasher::new();
    if let Some(salt) = salt {
        check.update(&salt.to_le_bytes());
    }
    check.update(&[kind]);
    check.update(&header[1..5]);
    check.update(&header[9..17]);
    check.update(body);
    (check.finalize() == crc).then_some(RawRecord { kind, id, payload })
}

/// Calls `f(kind, id, payload)` for every entry and release record of a segment in `format`
/// that checks out, in order, and returns how many bytes it skipped to resynchronise (a torn
/// tail, or damage).
fn scan_records(data: &[u8], format: Format, mut f: impl FnMut(u8, u64, &[u8])) -> u64 {
    let (salt, start) = match format {
        Format::Unsalted => (None, 0),
        Format::Salted => match read_salt(data) {
            Some(salt) => (Some(salt), SALT_RECORD),
            // Without its salt nothing in the segment can be told from forged bytes.
            None => {
                let end = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                return end as u64;
            }
        },
    };
    let mut skipped = 0;
    let mut at = start;
    while at < data.len() {
        if data[at] == 0 {
            // No record starts with a zero byte: skip the run whole. At the end of the file it
            // is the zero-filled space ahead of the last record, not damage.
            match data[at..].iter().position(|b| *b != 0) {
                None => break,
                Some(run) => {
                    skipped += run as u64;
                    at += run;
                    continue;
                }
            }
        }
        match parse_record(data, at, salt) {
            Some(record) => {
                f(record.kind, record.id, &data[record.payload.clone()]);
                at = record.payload.end;
            }
            None => {
                skipped += 1;
                at += 1;
            }
        }
    }
    skipped
}

/// fsyncs a directory, so a file created or deleted in it stays so after a power cut.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl Journal {
    /// Opens the journal in `dir` (created if missing), recovers what older segments hold into
    /// a fresh segment, and deletes them. `fsync`: fdatasync on every [`Journal::sync`].
    pub fn open(dir: &Path, fsync: bool) -> Result<(Journal, OpenReport)> {
        std::fs::create_dir_all(dir)?;
        let mut numbers: Vec<(u64, Format)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(found) = entry.file_name().to_str().and_then(segment_name) {
                numbers.push(found);
            }
        }
        numbers.sort_unstable_by_key(|(n, _)| *n);
        let mut report = OpenReport {
            segments_read: numbers.len(),
            ..OpenReport::default()
        };
        // Two passes, so a large backlog is never held in memory whole: first which ids are
        // live (entries minus releases, in log order), then those entries copied over.
        let mut live: HashSet<u64> = HashSet::new();
        for &(n, format) in &numbers {
            let data = std::fs::read(segment_path_in(dir, n, format))?;
            report.skipped_bytes += scan_records(&data, format, |kind, id, payload| {
                if kind == ENTRY {
                    live.insert(id);
                } else {
                    for id in payload.chunks_exact(8) {
                        // chunks_exact(8) yields 8-byte slices.
                        live.remove(&u64::from_le_bytes(id.try_into().unwrap_or_default()));
                    }
                }
            });
        }
        if report.skipped_bytes > 0 {
            tracing::warn!(
                bytes = report.skipped_bytes,
                "journal: skipped bytes that are not whole records (a write torn by a crash before its fsync, or damage)"
            );
        }
        report.live_entries = live.len();
        let first = numbers.last().map_or(0, |(n, _)| n.saturating_add(1));
        let journal = Journal {
            dir: dir.to_path_buf(),
            fsync,
            segment_bytes: SEGMENT_BYTES,
            max_segment_bytes: MAX_SEGMENT_BYTES,
            state: Mutex::new(State {
                segments: BTreeMap::new(),
                active: first,
                active_len: 0,
                filled: 0,
                live: LiveIndex::default(),
                buf: Vec::new(),
                unsynced: Vec::new(),
            }),
            syncing: Mutex::new(()),
        };
        {
            let mut state = journal.lock();
            journal.start_segment(&mut state, first)?;
            for &(n, format) in &numbers {
                if live.is_empty() {
                    break;
                }
                let data = std::fs::read(segment_path_in(dir, n, format))?;
                let mut copied = Ok(());
                scan_records(&data, format, |kind, id, payload| {
                    // `remove`: an entry found twice (a copy whose original outlived a crash)
                    // is copied once.
                    if kind == ENTRY && copied.is_ok() && live.remove(&id) {
                        copied = journal.append_raw(&mut state, id, payload);
                    }
                });
                copied?;
                journal.write_buffered(&mut state)?;
            }
            // The last segment the copies went to (earlier ones, past the hard cap, were synced
            // as they were sealed).
            let file = state.segment_file(state.active)?;
            drop(state);
            // The copies must be durable before the originals go.
            file.sync_data()?;
        }
        for &(n, format) in &numbers {
            std::fs::remove_file(segment_path_in(dir, n, format))?;
        }
        if !numbers.is_empty() {
            sync_dir(dir)?;
        }
        Ok((journal, report))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping would: keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_segment(&self, state: &mut State, n: u64) -> Result<()> {
        let path = segment_path(&self.dir, n);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let salt = new_salt(n);
        let mut first = Vec::with_capacity(SALT_RECORD);
        encode_record(&mut first, SALT, 0, &salt.to_le_bytes(), None);
        (&file).write_all(&first)?;
        sync_dir(&self.dir)?;
        state.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                salt,
                live: 0,
            },
        );
        state.active = n;
        state.active_len = SALT_RECORD as u64;
        state.filled = 0;
        // Synced with the first batch (a commit syncs every segment written since its last).
        if !state.unsynced.contains(&n) {
            state.unsynced.push(n);
        }
        Ok(())
    }

    /// Encodes an entry record into the buffer and notes where it will land. A segment never
    /// grows past [`MAX_SEGMENT_BYTES`] (offsets are kept in 32 bits): a batch, or a recovery,
    /// that would take it further continues in a new one.
    fn append_raw(&self, state: &mut State, id: u64, payload: &[u8]) -> Result<()> {
        let record_len = (HEADER + payload.len()) as u64;
        if state.active_len + state.buf.len() as u64 + record_len > self.max_segment_bytes {
            self.write_buffered(state)?;
            if self.fsync {
                // What this segment holds is acknowledged only after the commit's sync, and
                // that sync will see the next segment: make this one durable now.
                state.segment_file(state.active)?.sync_data()?;
            }
            let next = state.active + 1;
            self.start_segment(state, next)?;
        }
        let offset = state.active_len + state.buf.len() as u64 + HEADER as u64;
        let salt = state.active_salt()?;
        let mut buf = std::mem::take(&mut state.buf);
        encode_record(&mut buf, ENTRY, id, payload, Some(salt));
        state.buf = buf;
        let active = state.active;
        let segment = u32::try_from(active).map_err(|_| {
            StoreError::Corrupt(format!("journal segment number {active} is past 32 bits"))
        })?;
        state.live.insert(
            id,
            Location {
                segment,
                // Below MAX_SEGMENT_BYTES, checked above.
                offset: offset as u32,
            },
        );
        if let Some(segment) = state.segments.get_mut(&active) {
            segment.live += 1;
        }
        Ok(())
    }

    /// Writes the buffer to the active segment. On failure the entries it held are forgotten
    /// (their writer answers ESME_RX_T_APPN), and the segment is sealed: what follows must not
    /// land after a partial write.
    fn write_buffered(&self, state: &mut State) -> Result<()> {
        if state.buf.is_empty() {
            return Ok(());
        }
        let active = state.active;
        let file = state.segment_file(active)?;
        // At `active_len`, not at the file's cursor: after a write that failed part-way the
        // cursor is past the last whole record, and if no new segment could be started the
        // next batch would land there while its index entries point at `active_len`.
        let written = file.write_all_at(&state.buf, state.active_len);
        let len = state.buf.len() as u64;
        state.buf.clear();
        match written {
            Ok(()) => {
                state.active_len += len;
                if !state.unsynced.contains(&active) {
                    state.unsynced.push(active);
                }
                Ok(())
            }
            Err(e) => {
                let start = state.active_len as u32;
                // A segment past 32 bits never got an entry (`append_raw`).
                let lost = u32::try_from(active).map_or(0, |s| state.live.forget_from(s, start));
                if let Some(s) = state.segments.get_mut(&active) {
                    s.live = s.live.saturating_sub(lost);
                }
                // Best effort: a new segment, so the next batch does not follow the torn one.
                if let Err(e2) = self.start_segment(state, active + 1) {
                    tracing::error!(error = %e2, "journal: cannot start a new segment");
                }
                Err(StoreError::Io(e))
            }
        }
    }

    /// Appends entries under `first_id`, `first_id + 1`, ... (written to the file, not yet
    /// durable: see [`Journal::sync`]). Returns their ids.
    pub fn append(&self, first_id: u64, entries: &[JournalEntry]) -> Result<Vec<u64>> {
        let mut state = self.lock();
        if state.active_len >= self.segment_bytes {
            // Sealed durably: its last entries were synced by their own commit, but a release
            // written after that commit would otherwise never be (once a segment, cheap).
            if self.fsync {
                state.segment_file(state.active)?.sync_data()?;
            }
            let next = state.active + 1;
            self.start_segment(&mut state, next)?;
            self.drop_released_segments(&mut state)?;
        }
        let mut ids = Vec::with_capacity(entries.len());
        let mut payload = Vec::new();
        let mut appended = Ok(());
        for (i, entry) in entries.iter().enumerate() {
            let id = first_id + i as u64;
            payload.clear();
            entry.encode_into(&mut payload);
            appended = self.append_raw(&mut state, id, &payload);
            if appended.is_err() {
                break;
            }
            ids.push(id);
        }
        if let Err(e) = appended.and_then(|()| self.write_buffered(&mut state)) {
            self.withdraw(&mut state, &ids);
            return Err(e);
        }
        Ok(ids)
    }

    /// Takes back the entries of a batch that failed: the whole batch is refused (the carrier
    /// sends it again), so none of it may also be processed. Entries written to a segment
    /// sealed part-way through the batch are on disk and would come back at the next start:
    /// they are released (best effort; if that fails too, the next start processes them and
    /// the carrier's resend makes a duplicate, never a loss).
    fn withdraw(&self, state: &mut State, ids: &[u64]) {
        // Records encoded but not written belong to the refused batch.
        state.buf.clear();
        let mut payload = Vec::new();
        for id in ids {
            if let Some(location) = state.live.remove(*id) {
                if let Some(segment) = state.segments.get_mut(&u64::from(location.segment)) {
                    segment.live = segment.live.saturating_sub(1);
                }
                payload.extend_from_slice(&id.to_le_bytes());
            }
        }
        if payload.is_empty() {
            return;
        }
        let released = state.active_salt().and_then(|salt| {
            let mut buf = std::mem::take(&mut state.buf);
            for chunk in payload.chunks(MAX_PAYLOAD) {
                encode_record(&mut buf, RELEASE, 0, chunk, Some(salt));
            }
            state.buf = buf;
            self.write_buffered(state)
        });
        if let Err(e) = released {
            tracing::warn!(error = %e, entries = payload.len() / 8, "journal: cannot release the entries of a refused batch; the next start processes them");
        }
    }

    /// Makes everything appended so far durable: an fdatasync of every segment written since
    /// its last sync (the active one, and after a failed write the one before it too);
    /// nothing when the journal was opened without fsync. Runs without holding the journal's
    /// lock.
    pub fn sync(&self) -> Result<()> {
        if !self.fsync {
            return Ok(());
        }
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let files: Vec<(u64, Arc<File>)> = {
            let mut state = self.lock();
            let unsynced = std::mem::take(&mut state.unsynced);
            unsynced
                .into_iter()
                // A segment deleted meanwhile held nothing live: nothing to make durable.
                .filter_map(|n| state.segments.get(&n).map(|s| (n, s.file.clone())))
                .collect()
        };
        for (i, (_, file)) in files.iter().enumerate() {
            if let Err(e) = file.sync_data() {
                // Not durable: the next sync tries these again.
                let mut state = self.lock();
                for (n, _) in &files[i..] {
                    if !state.unsynced.contains(n) {
                        state.unsynced.push(*n);
                    }
                }
                return Err(StoreError::Io(e));
            }
        }
        Ok(())
    }

    /// Zero-fills the active segment one step further ahead of its last record, and syncs the
    /// zeros, when less than `FILL_AHEAD` (2 MiB) is filled (see the module header). The writer
    /// calls it after answering a batch, so no ack waits for it; it holds the lock throughout,
    /// so no record is written while the zeros are (the next commit waits for it instead: a
    /// 256 KiB write and sync, every 256 KiB of records). Nothing to do without fsync.
    pub fn fill_ahead(&self) -> Result<()> {
        if !self.fsync {
            return Ok(());
        }
        let mut state = self.lock();
        let ahead = (self.segment_bytes / 32).clamp(4096, FILL_AHEAD);
        let step = (ahead / FILL_STEPS).max(4096);
        if state.filled + step > state.active_len + ahead || state.active_len >= self.segment_bytes
        {
            // Enough left, or the segment is sealed at the next append.
            return Ok(());
        }
        let start = state.filled.max(state.active_len);
        let end = (start + step).min(self.max_segment_bytes);
        let file = state.segment_file(state.active)?;
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let filled = (|| {
            let mut at = start;
            while at < end {
                let n = (end - at).min(ZEROS.len() as u64) as usize;
                file.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
            file.sync_data()
        })();
        match filled {
            Ok(()) => {
                state.filled = end;
                Ok(())
            }
            Err(e) => {
                // Not again in this segment (a full disk would fail every batch): its commits
                // go on as appends. Zeros written before the failure are harmless.
                state.filled = self.max_segment_bytes;
                Err(StoreError::Io(e))
            }
        }
    }

    /// Marks entries processed: written at once (not fsynced, see the module header). Unknown
    /// ids (released before, or never journaled) are ignored.
    pub fn release(&self, ids: &[u64]) -> Result<()> {
        let mut state = self.lock();
        let mut payload = Vec::with_capacity(ids.len() * 8);
        for id in ids {
            if let Some(location) = state.live.remove(*id) {
                if let Some(segment) = state.segments.get_mut(&u64::from(location.segment)) {
                    segment.live = segment.live.saturating_sub(1);
                }
                payload.extend_from_slice(&id.to_le_bytes());
            }
        }
        let salt = state.active_salt()?;
        for chunk in payload.chunks(MAX_PAYLOAD) {
            let mut buf = std::mem::take(&mut state.buf);
            encode_record(&mut buf, RELEASE, 0, chunk, Some(salt));
            state.buf = buf;
        }
        self.write_buffered(&mut state)?;
        self.drop_released_segments(&mut state)
    }

    /// Deletes sealed segments from the oldest end while they hold no live entry.
    fn drop_released_segments(&self, state: &mut State) -> Result<()> {
        let mut dropped = false;
        while let Some((&n, segment)) = state.segments.first_key_value() {
            if n == state.active || segment.live > 0 {
                break;
            }
            state.segments.remove(&n);
            std::fs::remove_file(segment_path(&self.dir, n))?;
            dropped = true;
        }
        if dropped {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// A live entry, read back from its segment (recovery; fresh entries reach the processor
    /// in memory).
    pub fn entry(&self, id: u64) -> Result<Option<JournalEntry>> {
        let (file, salt, location) = {
            let state = self.lock();
            let Some(location) = state.live.get(id) else {
                return Ok(None);
            };
            let segment = u64::from(location.segment);
            let salt = state
                .segments
                .get(&segment)
                .map(|s| s.salt)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("journal segment {segment} is not open"))
                })?;
            (state.segment_file(segment)?, salt, location)
        };
        // The index keeps no length: the header before the payload has it (and the CRC, so the
        // record is checked as at open).
        let damaged = || StoreError::Corrupt(format!("journal entry {id} does not check out"));
        let start = u64::from(location.offset)
            .checked_sub(HEADER as u64)
            .ok_or_else(damaged)?;
        let mut record = vec![0; HEADER];
        file.read_exact_at(&mut record, start)?;
        let len = u32::from_le_bytes([record[1], record[2], record[3], record[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(damaged());
        }
        record.resize(HEADER + len, 0);
        file.read_exact_at(&mut record[HEADER..], u64::from(location.offset))?;
        match parse_record(&record, 0, Some(salt)) {
            Some(r) if r.kind == ENTRY && r.id == id => {
                Ok(Some(JournalEntry::decode(&record[r.payload])?))
            }
            _ => Err(damaged()),
        }
    }

    /// True while entry `id` is not released.
    pub fn is_live(&self, id: u64) -> bool {
        self.lock().live.get(id).is_some()
    }

    /// Ids of every live entry, oldest first.
    pub fn live_ids(&self) -> Vec<u64> {
        self.lock().live.ids().collect()
    }

    /// Number of live entries.
    pub fn depth(&self) -> usize {
        self.lock().live.live
    }

    /// Number of segment files (for tests and the log).
    pub fn segment_count(&self) -> usize {
        self.lock().segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(n: u32) -> JournalEntry {
        JournalEntry {
            carrier: format!("carrier-{}", n % 3),
            received_at_ms: 1_700_000_000_000 + u64::from(n),
            pdu: Bytes::from(n.to_be_bytes().repeat(5 + (n % 7) as usize)),
        }
    }

    #[test]
    fn an_index_slot_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<(u64, Location)>(), 16);
    }

    #[test]
    fn an_entry_read_back_is_checked_against_its_header_and_crc() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), false).unwrap();
        let entries = [entry(1), entry(2), entry(3)];
        let ids = journal.append(7, &entries).unwrap();
        for (id, e) in ids.iter().zip(&entries) {
            assert_eq!(journal.entry(*id).unwrap().as_ref(), Some(e));
        }
        // Damage one byte of the second entry's payload on disk.
        let location = journal.lock().live.get(ids[1]).unwrap();
        let file = journal
            .lock()
            .segment_file(u64::from(location.segment))
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, u64::from(location.offset) + 3)
            .unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], u64::from(location.offset) + 3)
            .unwrap();
        assert!(
            matches!(journal.entry(ids[1]), Err(StoreError::Corrupt(_))),
            "a damaged entry is an error, not a different message"
        );
        assert_eq!(journal.entry(ids[2]).unwrap().as_ref(), Some(&entries[2]));
        assert_eq!(journal.entry(99).unwrap(), None, "never journaled");
    }

    /// A release whose write fails (a full disk, an I/O error) starts a new segment. If that
    /// happens between a batch's append and its sync, the sync must still reach the segment
    /// that holds the batch: it syncs every segment written since its last sync.
    #[test]
    fn a_failed_write_between_append_and_sync_does_not_leave_the_batch_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), true).unwrap();
        let released = journal.append(1, &[entry(1)]).unwrap();
        journal.sync().unwrap();
        let batch = journal.append(10, &[entry(2)]).unwrap();
        let holding = journal.lock().active;
        // The batch's segment now fails every write, like a full disk.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let real = {
            let mut state = journal.lock();
            let segment = state.segments.get_mut(&holding).unwrap();
            std::mem::replace(&mut segment.file, Arc::new(full))
        };
        assert!(journal.release(&released).is_err());
        assert_ne!(journal.lock().active, holding, "a new segment was started");
        assert!(
            journal.lock().unsynced.contains(&holding),
            "the batch's segment still waits for its sync"
        );
        journal.lock().segments.get_mut(&holding).unwrap().file = real;
        journal.sync().unwrap();
        assert!(journal.lock().unsynced.is_empty());
        assert_eq!(journal.entry(batch[0]).unwrap(), Some(entry(2)));
    }

    /// A write that failed part-way leaves bytes past the last whole record, and the file's
    /// cursor after them. The next batch must still land where its index entries say.
    #[test]
    fn records_land_where_the_index_says_after_a_partial_write() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), true).unwrap();
        journal.append(1, &[entry(1)]).unwrap();
        {
            let state = journal.lock();
            let file = state.segment_file(state.active).unwrap();
            file.write_all_at(b"torn", state.active_len).unwrap();
            (&*file)
                .seek(SeekFrom::Start(state.active_len + 4))
                .unwrap();
        }
        journal.append(2, &[entry(2)]).unwrap();
        journal.sync().unwrap();
        assert_eq!(journal.entry(1).unwrap(), Some(entry(1)));
        assert_eq!(journal.entry(2).unwrap(), Some(entry(2)));
        drop(journal);
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(journal.live_ids(), vec![1, 2]);
        assert_eq!(
            report.skipped_bytes, 0,
            "the partial bytes were written over"
        );
    }

    fn entry_with(pdu: Vec<u8>) -> JournalEntry {
        JournalEntry {
            carrier: "sim".into(),
            received_at_ms: 1,
            pdu: bytes::Bytes::from(pdu),
        }
    }

    /// An SMS whose payload holds a well-formed record (as `salt` would checksum it), in a
    /// batch torn by a crash before its sync: the reader resynchronises through the payload.
    fn torn_batch_carrying(dir: &Path, acked: Option<u64>, forged: impl Fn(u64) -> Vec<u8>) {
        let (journal, _) = Journal::open(dir, true).unwrap();
        if let Some(id) = acked {
            journal.append(id, &[entry_with(vec![7; 40])]).unwrap();
            journal.sync().unwrap(); // acknowledged
        }
        let salt = journal.lock().active_salt().unwrap();
        let mut sms = forged(salt);
        sms.extend(std::iter::repeat_n(b'x', 4000));
        journal.append(101 << 12, &[entry_with(sms)]).unwrap();
        drop(journal);
        // Killed before this batch's sync: its tail never reached the file.
        let file = segment_files(dir).pop().unwrap();
        let len = std::fs::metadata(&file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 2000)
            .unwrap();
    }

    /// A sender who knew the format but not the segment's salt (an unsalted CRC, or a guess)
    /// cannot release an acknowledged entry with the bytes of an SMS.
    #[test]
    fn a_release_forged_inside_a_torn_sms_releases_nothing() {
        for guess in [None, Some(0), Some(u64::MAX)] {
            let dir = tempfile::tempdir().unwrap();
            torn_batch_carrying(dir.path(), Some(100 << 12), |_| {
                let mut forged = Vec::new();
                encode_record(
                    &mut forged,
                    RELEASE,
                    0,
                    &(100u64 << 12).to_le_bytes(),
                    guess,
                );
                forged
            });
            let (journal, report) = Journal::open(dir.path(), true).unwrap();
            assert_eq!(
                journal.live_ids(),
                vec![100 << 12],
                "salt guessed: {guess:?}"
            );
            assert!(report.skipped_bytes > 0);
        }
        // The test is a test: with the segment's own salt, the same bytes would release it.
        let dir = tempfile::tempdir().unwrap();
        torn_batch_carrying(dir.path(), Some(100 << 12), |salt| {
            let mut forged = Vec::new();
            encode_record(
                &mut forged,
                RELEASE,
                0,
                &(100u64 << 12).to_le_bytes(),
                Some(salt),
            );
            forged
        });
        let (journal, _) = Journal::open(dir.path(), true).unwrap();
        assert!(journal.live_ids().is_empty());
    }

    /// Nor can it make the journal recover a message nobody acknowledged.
    #[test]
    fn an_entry_forged_inside_a_torn_sms_is_not_recovered() {
        for guess in [None, Some(0)] {
            let dir = tempfile::tempdir().unwrap();
            torn_batch_carrying(dir.path(), None, |_| {
                let mut payload = Vec::new();
                entry_with(b"FORGED STOP".to_vec()).encode_into(&mut payload);
                let mut forged = Vec::new();
                encode_record(&mut forged, ENTRY, 0x4242, &payload, guess);
                forged
            });
            let (journal, _) = Journal::open(dir.path(), true).unwrap();
            assert!(journal.live_ids().is_empty(), "salt guessed: {guess:?}");
            assert_eq!(journal.entry(0x4242).unwrap(), None);
        }
    }

    /// Segments an earlier version wrote (unsalted, `seg-<n>.log`) are read at open, their
    /// live entries carried into a salted segment, and the old files removed.
    #[test]
    fn unsalted_segments_of_an_earlier_version_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        for (id, n) in [(1u64, 1u32), (2, 2), (3, 3)] {
            let mut payload = Vec::new();
            entry(n).encode_into(&mut payload);
            encode_record(&mut old, ENTRY, id, &payload, None);
        }
        encode_record(&mut old, RELEASE, 0, &2u64.to_le_bytes(), None);
        std::fs::write(segment_path_in(dir.path(), 4, Format::Unsalted), &old).unwrap();
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!((report.live_entries, report.skipped_bytes), (2, 0));
        assert_eq!(journal.live_ids(), vec![1, 3]);
        assert_eq!(journal.entry(3).unwrap(), Some(entry(3)));
        assert_eq!(segment_files(dir.path()), vec![segment_path(dir.path(), 5)]);
        drop(journal);
        let (journal, _) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(
            journal.live_ids(),
            vec![1, 3],
            "and again from the salted copy"
        );
    }

    /// A salted segment whose salt record was lost (a power cut kept later pages but not the
    /// first) yields nothing, not its records read without a salt.
    #[test]
    fn a_salted_segment_without_its_salt_yields_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; SALT_RECORD];
        let mut payload = Vec::new();
        entry(1).encode_into(&mut payload);
        encode_record(&mut data, ENTRY, 1, &payload, None);
        std::fs::write(segment_path(dir.path(), 3), &data).unwrap();
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert!(journal.live_ids().is_empty());
        assert_eq!(report.skipped_bytes, data.len() as u64);
    }

    /// The salt a segment file starts with.
    fn salt_of(file: &Path) -> u64 {
        read_salt(&std::fs::read(file).unwrap()).expect("a salted segment")
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn entries_survive_a_reopen_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let (journal, report) = Journal::open(dir.path(), true).unwrap();
            assert_eq!(report, OpenReport::default());
            let ids = journal
                .append(100, &[entry(1), entry(2), entry(3)])
                .unwrap();
            assert_eq!(ids, vec![100, 101, 102]);
            journal.sync().unwrap();
            journal.release(&[101]).unwrap();
            // Releasing twice, or an id never journaled, changes nothing.
            journal.release(&[101, 999]).unwrap();
            assert_eq!(journal.depth(), 2);
            ids
        };
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(report.live_entries, 2);
        assert_eq!(report.skipped_bytes, 0);
        assert_eq!(journal.live_ids(), vec![ids[0], ids[2]]);
        assert_eq!(journal.entry(ids[0]).unwrap(), Some(entry(1)));
        assert_eq!(journal.entry(ids[2]).unwrap(), Some(entry(3)));
        assert_eq!(journal.entry(ids[1]).unwrap(), None);
        // Recovery copied the live entries into one fresh segment and deleted the old one.
        assert_eq!(segment_files(dir.path()).len(), 1);
        journal.release(&journal.live_ids()).unwrap();
        drop(journal);
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(report.live_entries, 0);
        assert_eq!(journal.depth(), 0);
    }

    #[test]
    fn zeros_filled_ahead_are_written_over_and_read_back_as_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), true).unwrap();
        let mut expected = Vec::new();
        let step = FILL_AHEAD / FILL_STEPS;
        let mut filled_before = 0;
        for batch in 0..40u32 {
            let entries: Vec<JournalEntry> = (0..50).map(|i| entry(batch * 50 + i)).collect();
            let ids = journal.append(u64::from(batch) * 50, &entries).unwrap();
            journal.sync().unwrap();
            journal.fill_ahead().unwrap();
            let state = journal.lock();
            assert!(
                state.filled > state.active_len,
                "zero-filled ahead of the records after batch {batch}"
            );
            // One short step per batch, so no commit waits behind a long fill; never further
            // ahead than FILL_AHEAD.
            let zeros = state.filled - filled_before.max(state.active_len);
            assert!(
                zeros <= step,
                "batch {batch} filled {zeros} bytes in one go"
            );
            assert!(state.filled <= state.active_len + FILL_AHEAD);
            filled_before = state.filled;
            let on_disk = state
                .segment_file(state.active)
                .unwrap()
                .metadata()
                .unwrap()
                .len();
            assert_eq!(on_disk, state.filled, "the file holds the zeros too");
            drop(state);
            expected.extend(ids.into_iter().zip(entries));
        }
        journal.release(&[0, 1]).unwrap();
        drop(journal);
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(
            report.skipped_bytes, 0,
            "a zero tail is free space, not damage"
        );
        assert_eq!(report.live_entries, expected.len() - 2);
        for (id, entry) in &expected[2..] {
            assert_eq!(
                journal.entry(*id).unwrap().as_ref(),
                Some(entry),
                "entry {id}"
            );
        }
    }

    #[test]
    fn without_fsync_nothing_is_filled() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), false).unwrap();
        journal.append(1, &[entry(1)]).unwrap();
        journal.fill_ahead().unwrap();
        let state = journal.lock();
        assert_eq!(state.filled, 0);
    }

    #[test]
    fn a_fill_that_fails_is_not_retried_in_the_same_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), true).unwrap();
        journal.append(1, &[entry(1)]).unwrap();
        {
            // A disk that is full: every write fails with ENOSPC.
            let mut state = journal.lock();
            let active = state.active;
            let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
            state.segments.get_mut(&active).unwrap().file = Arc::new(full);
        }
        assert!(
            journal.fill_ahead().is_err(),
            "the failure is reported once"
        );
        assert!(
            journal.fill_ahead().is_ok(),
            "and not retried at every batch"
        );
        assert_eq!(journal.lock().filled, journal.max_segment_bytes);
    }

    #[test]
    fn a_run_of_zeros_between_records_is_skipped_whole() {
        let mut data = Vec::new();
        encode_record(&mut data, ENTRY, 1, b"first", None);
        data.extend(std::iter::repeat_n(0u8, 3 * 1024 * 1024));
        encode_record(&mut data, ENTRY, 2, b"second", None);
        data.extend(std::iter::repeat_n(0u8, 4096));
        let mut found = Vec::new();
        let skipped = scan_records(&data, Format::Unsalted, |kind, id, payload| {
            found.push((kind, id, payload.to_vec()));
        });
        assert_eq!(
            found,
            vec![
                (ENTRY, 1, b"first".to_vec()),
                (ENTRY, 2, b"second".to_vec())
            ]
        );
        assert_eq!(
            skipped,
            3 * 1024 * 1024,
            "the hole counts, the zero tail does not"
        );
    }

    #[test]
    fn a_torn_tail_is_skipped_and_everything_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _) = Journal::open(dir.path(), true).unwrap();
            journal.append(1, &[entry(1), entry(2)]).unwrap();
            journal.sync().unwrap();
        }
        let file = segment_files(dir.path()).pop().unwrap();
        // A third record cut short mid-payload, as a crash during its write leaves it.
        let mut torn = Vec::new();
        let mut payload = Vec::new();
        entry(3).encode_into(&mut payload);
        encode_record(&mut torn, ENTRY, 3, &payload, Some(salt_of(&file)));
        torn.truncate(torn.len() - 4);
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(journal.live_ids(), vec![1, 2]);
        assert_eq!(report.skipped_bytes, torn.len() as u64);
        assert_eq!(journal.entry(2).unwrap(), Some(entry(2)));
    }

    #[test]
    fn a_damaged_record_is_skipped_and_the_records_after_it_found() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _) = Journal::open(dir.path(), true).unwrap();
            journal.append(1, &[entry(1), entry(2), entry(3)]).unwrap();
            journal.sync().unwrap();
        }
        let file = segment_files(dir.path()).pop().unwrap();
        let mut data = std::fs::read(&file).unwrap();
        // Flip a byte inside the second record's payload: its CRC no longer matches.
        let mut first = Vec::new();
        let mut payload = Vec::new();
        entry(1).encode_into(&mut payload);
        encode_record(&mut first, ENTRY, 1, &payload, None);
        data[SALT_RECORD + first.len() + HEADER + 3] ^= 0xff;
        std::fs::write(&file, &data).unwrap();
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(journal.live_ids(), vec![1, 3]);
        assert!(report.skipped_bytes > 0);
        assert_eq!(journal.entry(3).unwrap(), Some(entry(3)));
    }

    #[test]
    fn garbage_and_zeros_in_a_segment_never_panic_and_never_invent_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let mut junk = vec![0u8; 4096];
        let mut seed = 7u64;
        for b in junk.iter_mut().skip(1000) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (seed >> 56) as u8;
        }
        // A header claiming a huge payload, and a release record of a ragged length.
        junk[10] = ENTRY;
        junk[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
        junk[40] = RELEASE;
        junk[41..45].copy_from_slice(&7u32.to_le_bytes());
        std::fs::write(segment_path_in(dir.path(), 5, Format::Unsalted), &junk).unwrap();
        std::fs::write(segment_path(dir.path(), 6), b"").unwrap();
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(journal.depth(), 0);
        assert_eq!(report.skipped_bytes, 4096);
        assert_eq!(report.segments_read, 2);
        // The new segment follows the highest number found; the junk is gone.
        assert_eq!(segment_files(dir.path()), vec![segment_path(dir.path(), 7)]);
    }

    #[test]
    fn sealed_segments_go_only_from_the_oldest_end_once_fully_released() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), false).unwrap();
        // Force rotation by pretending the active segment is full.
        let a = journal.append(10, &[entry(1), entry(2)]).unwrap();
        journal.lock().active_len = SEGMENT_BYTES;
        let b = journal.append(20, &[entry(3)]).unwrap();
        journal.lock().active_len = SEGMENT_BYTES;
        let c = journal.append(30, &[entry(4)]).unwrap();
        assert_eq!(journal.segment_count(), 3);
        // The middle segment is fully released, but the oldest still holds entry 10: both stay,
        // or a restart would see 10's segment without the release records of the middle one.
        journal.release(&b).unwrap();
        assert_eq!(journal.segment_count(), 3);
        journal.release(&a[..1]).unwrap();
        assert_eq!(journal.segment_count(), 3);
        journal.release(&a[1..]).unwrap();
        // Both sealed segments are released now; the active one stays.
        assert_eq!(journal.segment_count(), 1);
        assert_eq!(journal.live_ids(), c);
        drop(journal);
        let (journal, _) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(journal.live_ids(), c);
        assert_eq!(journal.entry(30).unwrap(), Some(entry(4)));
    }

    #[test]
    fn many_batches_round_trip_through_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Vec::new();
        {
            let (journal, _) = Journal::open(dir.path(), false).unwrap();
            for batch in 0..50u32 {
                let entries: Vec<JournalEntry> = (0..40).map(|i| entry(batch * 40 + i)).collect();
                let ids = journal.append(u64::from(batch) << 12, &entries).unwrap();
                // Release all but every seventh entry.
                let (keep, go): (Vec<_>, Vec<_>) =
                    ids.iter().zip(&entries).partition(|(id, _)| **id % 7 == 0);
                journal
                    .release(&go.iter().map(|(id, _)| **id).collect::<Vec<_>>())
                    .unwrap();
                kept.extend(keep.into_iter().map(|(id, e)| (*id, e.clone())));
            }
        }
        let (journal, report) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(report.live_entries, kept.len());
        assert_eq!(
            journal.live_ids(),
            kept.iter().map(|(id, _)| *id).collect::<Vec<_>>()
        );
        for (id, e) in &kept {
            assert_eq!(journal.entry(*id).unwrap().as_ref(), Some(e));
        }
    }

    fn at(segment: u32, offset: u32) -> Location {
        Location { segment, offset }
    }

    #[test]
    fn the_live_index_keeps_id_order_and_places_stragglers() {
        let mut index = LiveIndex::default();
        for id in [10, 11, 12, 13] {
            index.insert(id, at(1, id as u32));
        }
        // An id below the newest (an entry moved from an older layout) goes in its place.
        index.insert(5, at(0, 5));
        assert_eq!(index.ids().collect::<Vec<_>>(), vec![5, 10, 11, 12, 13]);
        assert_eq!(index.get(11).map(|l| l.offset), Some(11));
        assert!(index.remove(11).is_some());
        assert!(index.remove(11).is_none(), "released twice");
        assert!(index.get(11).is_none());
        assert!(index.remove(99).is_none(), "never there");
        assert_eq!(index.live, 4);
        // Released slots stay as holes until their whole chunk is released.
        index.remove(5);
        index.remove(10);
        assert_eq!(index.slots_held(), 5);
        assert_eq!(index.ids().collect::<Vec<_>>(), vec![12, 13]);
        // A failed write forgets what it would have held.
        index.insert(14, at(2, 0));
        index.insert(15, at(2, 40));
        assert_eq!(index.forget_from(2, 40), 1);
        assert_eq!(index.ids().collect::<Vec<_>>(), vec![12, 13, 14]);
        assert_eq!(index.live, 3);
    }

    #[test]
    fn the_live_index_grows_and_shrinks_a_chunk_at_a_time() {
        let mut index = LiveIndex::default();
        let n = 3 * CHUNK_SLOTS as u64 + 10;
        for id in 1..=n {
            index.insert(id, at(1, id as u32));
        }
        assert_eq!(index.chunks.len(), 4);
        assert!(
            index
                .chunks
                .iter()
                .all(|c| c.slots.capacity() == CHUNK_SLOTS)
        );
        for id in [1, CHUNK_SLOTS as u64, CHUNK_SLOTS as u64 + 1, n] {
            assert_eq!(index.get(id).map(|l| l.offset), Some(id as u32), "id {id}");
        }
        assert!(index.get(n + 1).is_none());
        assert!(index.get(0).is_none());
        // The whole second chunk released: it goes, and lookups on both sides still work.
        for id in CHUNK_SLOTS as u64 + 1..=2 * CHUNK_SLOTS as u64 {
            assert!(index.remove(id).is_some());
        }
        assert_eq!(index.chunks.len(), 3);
        assert!(index.get(CHUNK_SLOTS as u64 + 5).is_none());
        assert!(index.remove(CHUNK_SLOTS as u64 + 5).is_none());
        assert_eq!(
            index.get(2 * CHUNK_SLOTS as u64 + 1).map(|l| l.offset),
            Some(2 * CHUNK_SLOTS as u32 + 1)
        );
        assert_eq!(
            index.get(CHUNK_SLOTS as u64).map(|l| l.offset),
            Some(CHUNK_SLOTS as u32)
        );
        // A straggler below the newest id lands in the chunk whose range holds it.
        assert!(index.remove(7).is_some());
        index.insert(7, at(0, 7));
        assert_eq!(index.get(7), Some(at(0, 7)));
        assert_eq!(index.live, n as usize - CHUNK_SLOTS);
        assert_eq!(index.ids().count(), index.live);
        // Everything released: nothing held.
        for id in 1..=n {
            index.remove(id);
        }
        assert_eq!(index.live, 0);
        assert!(index.chunks.is_empty());
        // And it starts again from nothing.
        index.insert(n + 1, at(2, 0));
        assert_eq!(index.ids().collect::<Vec<_>>(), vec![n + 1]);
    }

    #[test]
    fn a_batch_that_would_outgrow_the_segment_continues_in_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path(), true).unwrap();
        // Records here are 40-70 bytes: a 100-entry batch cannot fit under a 1,000-byte cap.
        journal.segment_bytes = 500;
        journal.max_segment_bytes = 1_000;
        let entries: Vec<JournalEntry> = (0..100).map(entry).collect();
        let ids = journal.append(1_000, &entries).unwrap();
        journal.sync().unwrap();
        assert!(journal.segment_count() >= 5, "{}", journal.segment_count());
        for file in segment_files(dir.path()) {
            let len = std::fs::metadata(&file).unwrap().len();
            assert!(len <= 1_000, "{} has {len} bytes", file.display());
        }
        for (id, e) in ids.iter().zip(&entries) {
            assert_eq!(journal.entry(*id).unwrap().as_ref(), Some(e));
        }
        drop(journal);
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(report.live_entries, 100);
        assert_eq!(journal.live_ids(), ids);
        assert_eq!(journal.entry(ids[99]).unwrap().as_ref(), Some(&entries[99]));
    }

    /// A batch that fails after part of it went into a segment sealed on the way is refused
    /// whole (the carrier sends it again): the part on disk must not be processed as well.
    #[test]
    fn a_batch_refused_part_way_leaves_nothing_to_process() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path(), true).unwrap();
        journal.segment_bytes = 500;
        journal.max_segment_bytes = 1_000;
        journal.append(1, &[entry(1)]).unwrap();
        journal.sync().unwrap();
        // The segment the batch would continue in cannot be created.
        let next = journal.lock().active + 1;
        std::fs::write(segment_path(dir.path(), next), b"").unwrap();
        let entries: Vec<JournalEntry> = (0..40).map(entry).collect();
        assert!(journal.append(100, &entries).is_err());
        assert_eq!(
            journal.live_ids(),
            vec![1],
            "none of the refused batch is live"
        );
        drop(journal);
        std::fs::remove_file(segment_path(dir.path(), next)).unwrap();
        let (journal, _) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(journal.live_ids(), vec![1], "nor after a restart");
    }

    #[test]
    fn an_entry_found_in_two_segments_is_recovered_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _) = Journal::open(dir.path(), true).unwrap();
            journal.append(1, &[entry(1), entry(2)]).unwrap();
            journal.sync().unwrap();
        }
        // A crash after recovery copied a segment but before it deleted the original.
        let original = segment_files(dir.path()).pop().unwrap();
        std::fs::copy(&original, segment_path(dir.path(), 1_000)).unwrap();
        let (journal, report) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(report.live_entries, 2);
        assert_eq!(journal.live_ids(), vec![1, 2]);
        assert_eq!(journal.depth(), 2);
        journal.release(&[1, 2]).unwrap();
        drop(journal);
        let (journal, _) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(journal.depth(), 0);
    }
}
