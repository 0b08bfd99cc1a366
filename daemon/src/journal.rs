//! A write-ahead journal under an LMDB environment: a mutation waits for
//! one small sync of the journal instead of LMDB's commit syncs.
//!
//! **Records are effects.** A record is what ONE committed LMDB write
//! transaction did, as a list of [`Op`]s (put, delete, clear by the
//! caller's database index), gathered by the caller into an [`Effects`]
//! buffer while it writes. Replaying a record does exactly what the
//! transaction did; requests are never re-executed (they would draw new
//! random ids and times).
//!
//! **LMDB runs with `MDB_NOSYNC`** ([`Journal::start`] sets it): a commit
//! only writes pages into the page cache. After a commit the writer hands
//! its record to the journal ([`Journal::append`]) and wakes a free sync
//! lane, which takes every queued record into one batch, writes it and
//! makes it durable in one `pwritev2(RWF_DSYNC)`, then hands the records'
//! payloads (the callers' answers) to `deliver`, in commit order. A
//! SIGKILL loses nothing: the page cache outlives the process.
//!
//! **Lanes** ([`Config::lanes`], [`SYNC_LANES`] by default): batches are
//! placed one after another at take time, and up to that many are written
//! and synced at once, each by its own thread. With a single lane a commit
//! that arrives while a sync runs waits for the end of that sync before
//! its own can start. This disk (a virtio disk: one 4 KiB write and
//! flush per thread, measured in session 9) completed 2–4 concurrent
//! flushes in about the time of one. A batch is durable when its own sync
//! ends, but it counts (and its answers go out) only once every earlier
//! batch is durable too: the durable prefix. After a power loss a later
//! batch may be on disk while an earlier one is not; the replay stops at
//! the first record that does not check, so the later ones are never
//! replayed, and nobody was answered for them.
//!
//! **No thread between the writer and the lanes** (session 13): a lane
//! takes its batch itself, and the lane whose sync completes the durable
//! prefix delivers it itself; one lane delivers at a time, in order
//! (`State::delivering`), while another goes on taking and syncing. There
//! is one lane thread more than [`Config::lanes`] (at most that many
//! batches are in flight), so one can deliver while that many sync. Was:
//! a journal thread that took each batch, woke a lane for it and was
//! woken again to deliver, three sleeps and wake-ups per sync on a
//! create's path instead of one, and ~14 % more of metad's CPU per create
//! at 8 clients (`perf/results/2026-11-28-s13-md14.md`).
//!
//! **Handed over before the commit** ([`Journal::append_before_commit`],
//! session 14): the writer may hand a transaction's record over just
//! before LMDB's commit, so a lane writes and syncs it while the commit
//! writes its pages; its payload (and every later one) waits for
//! [`Journal::committed`]. A commit that then fails
//! ([`Journal::uncommit`]) takes its record back if no lane took it yet,
//! else appends a void record after it (flag [`RECORD_VOIDS_PREVIOUS`]):
//! the replay applies neither, and what the caller appends next (its
//! refusals) is delivered only once the void is durable. So nobody is
//! answered for a record that was not committed, and nobody told of a
//! failure is undone by a replay. The writer appends nothing and hands
//! no snapshot between the two calls, so no checkpoint covers an
//! uncommitted record. At 8 clients the commit (~40 µs) left every
//! create's path.
//!
//! **The writer's pace** ([`Journal::pace`], session 10): a commit the
//! journal cannot sync yet (every lane busy, or the gather waiting for
//! more weight) would only queue, so the writer may keep its write
//! transaction open and apply what arrives meanwhile, and commit when a
//! lane frees up ([`Journal::on_lane_free`] wakes it). Each LMDB commit
//! writes every page it touched (with the checkpoint's pinned snapshot,
//! always fresh pages), and the checkpoints write back those still in use
//! (all of them where only `fdatasync` is sound) while the
//! journal's small syncs wait behind that writeback; commits about as
//! many as syncs write each hot page once per sync. Nothing else changes:
//! a record is still one committed transaction, appended right after its
//! commit, and the snapshot hand-off still happens between two commits.
//!
//! **The file** (`FOLDER/journal`, [`FILE_NAME`]) is preallocated by
//! writing zeros ([`JOURNAL_BYTES`] by default), so a sync overwrites
//! blocks that exist and commits no file-system metadata. Two 4 KiB header
//! slots hold alternating checkpoints (each with a CRC32C); then comes a
//! circular record area. A record is `magic u32 | payload length u32 |
//! epoch u64 | sequence u64 | LMDB txn id u64 | crc32c u32 | flags u32 |
//! payload`, the CRC over all of it (with its own field zero); the only
//! flag voids the record before it (below; session 14: the field was
//! always 0, so older journals read the same). Each sync
//! writes whole pages from a page boundary (the last page padded with
//! zeros), so a sync never rewrites a page that holds acknowledged
//! records, and a batch never wraps: one that does not fit before the
//! area's end starts at its beginning.
//!
//! **Checkpoints** make LMDB's own file trustworthy after power loss. With
//! NOSYNC, writeback may put a newer meta page on disk before its
//! transaction's data pages, so `data.mdb` is trusted only as of a
//! checkpoint C: right after committing C (before commit C+2 overwrites
//! meta slot C % 2) the writer opens a read transaction, which pins every
//! page of snapshot C (LMDB never reuses a page a reader can see), and
//! reads meta page C's bytes ([`Journal::after_commit`]). The checkpoint
//! thread then makes every page of C durable (`fdatasync` of `data.mdb`;
//! on ext4 only the pages C uses, written with `sync_file_range` and made
//! durable by the header's sync below: `writeback`, session 15), writes {C,
//! meta page C, the sequence number and position where the records after
//! C start, a CRC} into the other header slot, syncs the journal, and only
//! then drops the previous checkpoint's read transaction. Records before
//! the new position are free space. A checkpoint is taken when the record
//! area is more than half used, every [`CHECKPOINT_PERIOD`] while there
//! are records, and at once when a batch does not fit. Records still
//! queued that a checkpoint covers are never written: they are durable
//! once the checkpoint is.
//!
//! **Recovery** ([`restore`], then [`Restored::replay`]) runs at open,
//! before LMDB maps the file (and before `crate::lmdb::check`): it writes
//! checkpoint C's meta bytes into meta slot C % 2, and into the other slot
//! the same bytes with that slot's page number and txn id C - 1 (so it
//! loses), and syncs, so LMDB opens at exactly C, whose pages are intact.
//! Then every record after C is replayed in order, each as one write
//! transaction, while each is valid (magic, length, CRC) AND carries the
//! checkpoint's epoch and the next expected sequence number (stale records
//! of earlier laps fail that test, a torn tail fails the CRC); at a record
//! that does not check, the scan tries the next page boundary and the
//! area's start, where the writer may have put the next batch. The store
//! is synced and a new checkpoint, of a new epoch, is written. The epoch
//! (a design fix over a plain sequence check): after a recovery that
//! stopped at a torn record, records of the old run beyond it may still
//! check; the new run reuses their sequence numbers, so only the epoch
//! tells them apart. The same path after a SIGKILL restores C and replays
//! up to the last record written.
//!
//! **Failures.** A failed journal write or sync, or a failed checkpoint
//! sync (a failed `sync_file_range` falls back to `fdatasync`), stops
//! the process ([`Config::on_failure`]: one line, exit 1): nothing is
//! answered after it, and LMDB never runs on ahead of a journal
//! that cannot keep up with it. A failed LMDB commit is the caller's: it
//! appends no record.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, Env, RoTxn, WithoutTls};
use wire::crc::{crc32c, crc32c_append};

use crate::lmdb::META_COPY_BYTES;
use crate::metrics::{Counter, Histogram, Registry};
use writeback::{Synced, Writeback};

/// The journal's file in the store's folder.
pub const FILE_NAME: &str = "journal";
/// The journal file's size when it is created ([`Config::bytes`]).
pub const JOURNAL_BYTES: u64 = 16 << 20;
/// A checkpoint at least this often while there are records.
pub const CHECKPOINT_PERIOD: Duration = Duration::from_secs(1);
/// A checkpoint once the record area is more than this fraction used.
const CHECKPOINT_FILL_NUMERATOR: u64 = 1;
const CHECKPOINT_FILL_DENOMINATOR: u64 = 2;
/// The unit of the journal's writes: every sync writes whole pages.
const PAGE: u64 = 4096;
/// One checkpoint slot; the record area follows the two slots.
const SLOT_BYTES: u64 = PAGE;
const AREA_START: u64 = 2 * SLOT_BYTES;
/// The smallest journal file: the slots and a few pages of records.
const JOURNAL_BYTES_MIN: u64 = AREA_START + 16 * PAGE;
/// Most bytes of records written by one sync.
const SYNC_BYTES_MAX: usize = 4 << 20;
const RECORD_MAGIC: u32 = 0x4a52_4543; // "JREC"
const CHECKPOINT_MAGIC: u32 = 0x4a43_4b50; // "JCKP"
const FORMAT_VERSION: u32 = 1;
const RECORD_HEADER_BYTES: usize = 40;
/// A record's flags (its header's last u32, under its CRC): this record
/// voids the one before it, whose LMDB commit failed after it was handed
/// to the journal ([`Journal::uncommit`]); the replay applies neither.
const RECORD_VOIDS_PREVIOUS: u32 = 1;
const RECORD_FLAGS_KNOWN: u32 = RECORD_VOIDS_PREVIOUS;
/// magic, version, counter, epoch, txn, next sequence, position, area
/// bytes, page bytes, meta bytes, crc.
const CHECKPOINT_BYTES: usize = 4 + 4 + 8 * 6 + 4 + META_COPY_BYTES + 4;
const _: () = assert!(CHECKPOINT_BYTES as u64 <= SLOT_BYTES);
/// Batches written and synced at once by default ([`Config::lanes`]).
pub const SYNC_LANES: usize = 2;
/// The most lanes a journal runs.
pub const SYNC_LANES_MAX: usize = 8;
/// The longest a sync is held back to gather ([`Config::gather`]).
pub const GATHER_MAX: Duration = Duration::from_millis(1);
/// The longest [`Journal::pace`] tells a writer to hold its transaction
/// open while every lane is busy (it is woken by [`Journal::on_lane_free`]
/// long before; this bounds a writer that installed no wake-up).
pub const HOLD_MAX: Duration = Duration::from_millis(10);
/// How long the checkpoint thread waits for the writer's snapshot before
/// looking again (the writer hands one after its next commit, or within
/// its idle tick).
const SNAPSHOT_WAIT: Duration = Duration::from_millis(20);

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: cannot {what}: {source}")]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("malformed journal record: {0}")]
    Malformed(&'static str),
    #[error(
        "journal {0} has no valid checkpoint (both header slots fail their check); the LMDB file beside it cannot be trusted as of any point: restore the store from a copy"
    )]
    NoCheckpoint(PathBuf),
    #[error("journal {path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("LMDB: {0}")]
    Lmdb(#[from] heed::Error),
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io { path, what, source }
}

// ---- effects ----

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_CLEAR: u8 = 3;

/// One effect of a write transaction; `db` is the caller's index of its
/// named database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Put { db: u8, key: &'a [u8], value: &'a [u8] },
    Delete { db: u8, key: &'a [u8] },
    Clear { db: u8 },
}

/// The effects of one write transaction, encoded as they happen into one
/// reused buffer: `put: 1 | db | key_len u32 | value_len u32 | key |
/// value`, `delete: 2 | db | key_len u32 | key`, `clear: 3 | db`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    bytes: Vec<u8>,
    ops: usize,
}

/// A place in an [`Effects`] buffer to roll back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    bytes: usize,
    ops: usize,
}

impl Effects {
    pub fn put(&mut self, db: u8, key: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(&[OP_PUT, db]);
        self.bytes.extend_from_slice(&len_u32(key).to_le_bytes());
        self.bytes.extend_from_slice(&len_u32(value).to_le_bytes());
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.ops += 1;
    }

    pub fn delete(&mut self, db: u8, key: &[u8]) {
        self.bytes.extend_from_slice(&[OP_DELETE, db]);
        self.bytes.extend_from_slice(&len_u32(key).to_le_bytes());
        self.bytes.extend_from_slice(key);
        self.ops += 1;
    }

    pub fn clear(&mut self, db: u8) {
        self.bytes.extend_from_slice(&[OP_CLEAR, db]);
        self.ops += 1;
    }

    /// Where the buffer is now.
    pub fn mark(&self) -> Mark {
        Mark { bytes: self.bytes.len(), ops: self.ops }
    }

    /// Drops every op recorded after `mark` (a rolled-back nested
    /// transaction's).
    pub fn truncate_to(&mut self, mark: Mark) {
        if mark.bytes <= self.bytes.len() {
            self.bytes.truncate(mark.bytes);
            self.ops = mark.ops.min(self.ops);
        }
    }

    /// Empties the buffer, keeping its capacity.
    pub fn reset(&mut self) {
        self.bytes.clear();
        self.ops = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Ops recorded.
    pub fn len(&self) -> usize {
        self.ops
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The ops, decoded.
    pub fn ops(&self) -> Ops<'_> {
        decode(&self.bytes)
    }
}

fn len_u32(bytes: &[u8]) -> u32 {
    // Keys and values are LMDB's (≤ its map); a 4 GiB value cannot be
    // committed, so this never saturates in practice.
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

/// The ops of an encoded effects buffer. Total: malformed bytes give one
/// [`JournalError::Malformed`] and end the walk; lengths are checked
/// against the bytes left before anything is sliced, so nothing is ever
/// allocated from them.
pub fn decode(bytes: &[u8]) -> Ops<'_> {
    Ops { rest: bytes, failed: false }
}

pub struct Ops<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Ops<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.rest.len() < len {
            return None;
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<usize> {
        let bytes = self.take(4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    }

    fn next_op(&mut self) -> Option<Op<'a>> {
        let head = self.take(2)?;
        let (kind, db) = (head[0], head[1]);
        match kind {
            OP_PUT => {
                let (key_len, value_len) = (self.u32()?, self.u32()?);
                let key = self.take(key_len)?;
                let value = self.take(value_len)?;
                Some(Op::Put { db, key, value })
            }
            OP_DELETE => {
                let key_len = self.u32()?;
                Some(Op::Delete { db, key: self.take(key_len)? })
            }
            OP_CLEAR => Some(Op::Clear { db }),
            _ => None,
        }
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = Result<Op<'a>, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match self.next_op() {
            Some(op) => Some(Ok(op)),
            None => {
                self.failed = true;
                Some(Err(JournalError::Malformed("an op is cut short or of an unknown kind")))
            }
        }
    }
}

/// Applies one record's ops in `txn`.
/// Puts `key` → `value` into `db` (the caller's database `index`) and
/// records the put in `effects`, when the store is journaled.
pub fn put(
    txn: &mut heed::RwTxn,
    (index, db): (u8, &Database<Bytes, Bytes>),
    key: &[u8],
    value: &[u8],
    effects: Option<&mut Effects>,
) -> heed::Result<()> {
    db.put(txn, key, value)?;
    if let Some(effects) = effects {
        effects.put(index, key, value);
    }
    Ok(())
}

/// Deletes `key` from `db` and records the delete in `effects` only when a
/// record was there (a replay then deletes exactly what was deleted).
pub fn delete(
    txn: &mut heed::RwTxn,
    (index, db): (u8, &Database<Bytes, Bytes>),
    key: &[u8],
    effects: Option<&mut Effects>,
) -> heed::Result<bool> {
    let deleted = db.delete(txn, key)?;
    if deleted && let Some(effects) = effects {
        effects.delete(index, key);
    }
    Ok(deleted)
}

/// Empties `db` and records it in `effects`.
pub fn clear(
    txn: &mut heed::RwTxn,
    (index, db): (u8, &Database<Bytes, Bytes>),
    effects: Option<&mut Effects>,
) -> heed::Result<()> {
    db.clear(txn)?;
    if let Some(effects) = effects {
        effects.clear(index);
    }
    Ok(())
}

fn apply(txn: &mut heed::RwTxn, dbs: &[Database<Bytes, Bytes>], payload: &[u8]) -> Result<(), JournalError> {
    let db = |index: u8| dbs.get(usize::from(index)).ok_or(JournalError::Malformed("an op names an unknown database"));
    for op in decode(payload) {
        match op? {
            Op::Put { db: index, key, value } => db(index)?.put(txn, key, value)?,
            Op::Delete { db: index, key } => {
                db(index)?.delete(txn, key)?;
            }
            Op::Clear { db: index } => db(index)?.clear(txn)?,
        }
    }
    Ok(())
}

// ---- the file: checkpoints and records ----

/// One header slot's content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checkpoint {
    /// Increases by one per checkpoint; the valid slot with the higher one
    /// is current.
    counter: u64,
    /// Changes at every start: records of another epoch are never replayed.
    epoch: u64,
    /// The LMDB transaction this checkpoint made durable.
    txn: u64,
    /// The sequence number of the first record after `txn`.
    next_seq: u64,
    /// Where that record starts (a logical position: it only grows; the
    /// file offset is `AREA_START + position % area`).
    position: u64,
    area: u64,
    page_bytes: u32,
    meta: [u8; META_COPY_BYTES],
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_BYTES);
        out.extend_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for field in [self.counter, self.epoch, self.txn, self.next_seq, self.position, self.area] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&self.page_bytes.to_le_bytes());
        out.extend_from_slice(&self.meta);
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..CHECKPOINT_BYTES)?;
        let (body, crc) = bytes.split_at(CHECKPOINT_BYTES - 4);
        if crc32c(body).to_le_bytes() != crc || u32_at(body, 0) != CHECKPOINT_MAGIC || u32_at(body, 4) != FORMAT_VERSION
        {
            return None;
        }
        let field = |index: usize| u64_at(body, 8 + index * 8);
        let meta_at = 8 + 6 * 8 + 4;
        Some(Self {
            counter: field(0),
            epoch: field(1),
            txn: field(2),
            next_seq: field(3),
            position: field(4),
            area: field(5),
            page_bytes: u32_at(body, 8 + 6 * 8),
            meta: body.get(meta_at..meta_at + META_COPY_BYTES)?.try_into().ok()?,
        })
    }

    fn slot_offset(&self) -> u64 {
        (self.counter % 2) * SLOT_BYTES
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn align_up(position: u64, unit: u64) -> u64 {
    position.div_ceil(unit).saturating_mul(unit)
}

/// Appends one record to `out`.
fn encode_record(out: &mut Vec<u8>, epoch: u64, seq: u64, txn: u64, flags: u32, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&len_u32(payload).to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&txn.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c(&out[start..]);
    out[start + 32..start + 36].copy_from_slice(&crc.to_le_bytes());
}

fn record_bytes(payload: usize) -> u64 {
    (RECORD_HEADER_BYTES + payload) as u64
}

/// A record read back.
struct ReadRecord {
    seq: u64,
    txn: u64,
    /// [`RECORD_VOIDS_PREVIOUS`].
    flags: u32,
    payload: Vec<u8>,
}

/// The open journal file and its geometry.
struct JournalFile {
    path: PathBuf,
    file: File,
    area: u64,
}

impl JournalFile {
    fn open(path: &Path) -> Result<Option<Self>, JournalError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io(path, "open")(source)),
        };
        let size = file.metadata().map_err(io(path, "read the size of"))?.len();
        if size < JOURNAL_BYTES_MIN || !size.is_multiple_of(PAGE) {
            let what = format!("its size {size} is not a whole number of pages of at least {JOURNAL_BYTES_MIN} bytes");
            return Err(JournalError::Invalid { path: path.to_path_buf(), what });
        }
        Ok(Some(Self { path: path.to_path_buf(), file, area: size - AREA_START }))
    }

    /// Creates the file of `bytes` bytes, zero-filled and synced, under a
    /// temporary name renamed into place (so a journal file always holds a
    /// checkpoint once it exists: the caller writes one before renaming).
    fn create(path: &Path, bytes: u64) -> Result<(Self, PathBuf), JournalError> {
        let bytes = align_up(bytes.max(JOURNAL_BYTES_MIN), PAGE);
        let staged = path.with_extension("new");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&staged)
            .map_err(io(&staged, "create"))?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < bytes {
            let len = (bytes - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..len], at).map_err(io(&staged, "zero-fill"))?;
            at += len as u64;
        }
        file.sync_all().map_err(io(&staged, "sync"))?;
        Ok((Self { path: staged.clone(), file, area: bytes - AREA_START }, staged))
    }

    fn offset(&self, position: u64) -> u64 {
        AREA_START + position % self.area
    }

    /// The current checkpoint: the valid slot with the higher counter.
    fn checkpoint(&self) -> Result<Checkpoint, JournalError> {
        let mut slots = vec![0u8; 2 * SLOT_BYTES as usize];
        self.file.read_exact_at(&mut slots, 0).map_err(io(&self.path, "read the checkpoints of"))?;
        let (first, second) = slots.split_at(SLOT_BYTES as usize);
        let valid = |cp: &Checkpoint| cp.area == self.area;
        match (Checkpoint::decode(first).filter(valid), Checkpoint::decode(second).filter(valid)) {
            (Some(a), Some(b)) => Ok(if b.counter > a.counter { b } else { a }),
            (Some(cp), None) | (None, Some(cp)) => Ok(cp),
            (None, None) => Err(JournalError::NoCheckpoint(self.path.clone())),
        }
    }

    fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), JournalError> {
        let mut slot = checkpoint.encode();
        slot.resize(SLOT_BYTES as usize, 0);
        self.file.write_all_at(&slot, checkpoint.slot_offset()).map_err(io(&self.path, "write a checkpoint to"))?;
        self.file.sync_data().map_err(io(&self.path, "sync a checkpoint of"))
    }

    /// The record at `position` if it is whole and valid, of `epoch`, with
    /// sequence `seq`, and ends within a lap of `start`.
    fn record_at(&self, position: u64, start: u64, epoch: u64, seq: u64) -> Option<ReadRecord> {
        let in_lap = position % self.area;
        if in_lap + RECORD_HEADER_BYTES as u64 > self.area {
            return None;
        }
        let mut header = [0u8; RECORD_HEADER_BYTES];
        self.file.read_exact_at(&mut header, self.offset(position)).ok()?;
        let len = u32_at(&header, 4) as u64;
        let end = position.checked_add(record_bytes(len as usize))?;
        if u32_at(&header, 0) != RECORD_MAGIC
            || u64_at(&header, 8) != epoch
            || u64_at(&header, 16) != seq
            || in_lap + record_bytes(len as usize) > self.area
            || end - start > self.area
        {
            return None;
        }
        let mut payload = vec![0u8; len as usize];
        self.file.read_exact_at(&mut payload, self.offset(position) + RECORD_HEADER_BYTES as u64).ok()?;
        let stored = u32_at(&header, 32);
        header[32..36].fill(0);
        if crc32c_append(crc32c(&header), &payload) != stored {
            return None;
        }
        Some(ReadRecord { seq, txn: u64_at(&header, 24), flags: u32_at(&header, 36), payload })
    }

    /// Every valid record after `checkpoint`, in order, and the position
    /// after the last one.
    fn scan(&self, checkpoint: &Checkpoint) -> (Vec<ReadRecord>, u64) {
        let mut records = Vec::new();
        let mut position = checkpoint.position;
        let mut seq = checkpoint.next_seq;
        loop {
            // Where the next record may be: right here, after the padding
            // to the page's end, or at the area's start (a batch that did
            // not fit before the end).
            let candidates = [position, align_up(position, PAGE), align_up(position, self.area)];
            let found = candidates.iter().enumerate().find_map(|(index, &at)| {
                if index > 0 && candidates[..index].contains(&at) {
                    return None;
                }
                self.record_at(at, checkpoint.position, checkpoint.epoch, seq).map(|record| (at, record))
            });
            let Some((at, record)) = found else { break };
            position = at + record_bytes(record.payload.len());
            seq += 1;
            records.push(record);
        }
        (records, position)
    }
}

/// Reads meta page `txn % 2` of `data` and checks it is `txn`'s.
fn read_meta(data: &File, page_bytes: u64, txn: u64) -> Option<[u8; META_COPY_BYTES]> {
    let mut meta = [0u8; META_COPY_BYTES];
    data.read_exact_at(&mut meta, (txn % 2) * page_bytes).ok()?;
    (crate::lmdb::meta_txnid(&meta) == Some(txn)).then_some(meta)
}

fn data_path(folder: &Path) -> PathBuf {
    folder.join("data.mdb")
}

fn sync_folder(folder: &Path) -> Result<(), JournalError> {
    File::open(folder).and_then(|dir| dir.sync_all()).map_err(io(folder, "sync the folder of"))
}

// ---- recovery ----

/// What [`restore`] found: LMDB's file is back at the checkpoint, and
/// these records follow it.
pub struct Restored {
    journal: JournalFile,
    checkpoint: Checkpoint,
    records: Vec<ReadRecord>,
    end: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The LMDB transaction LMDB opened at (the checkpoint's).
    pub checkpoint_txn: u64,
    /// Records replayed, each one write transaction.
    pub records: usize,
    /// LMDB's last transaction after the replay.
    pub last_txn: u64,
}

/// Run before LMDB maps `FOLDER/data.mdb`: when `FOLDER/journal` exists,
/// puts LMDB's file back at the journal's checkpoint (meta slot C % 2 gets
/// C's meta page, the other slot a copy that loses) and reads the records
/// that follow it. `None`: no journal (a new store, or one written before
/// the journal); LMDB opens as it is.
pub fn restore(folder: &Path) -> Result<Option<Restored>, JournalError> {
    let Some(journal) = JournalFile::open(&folder.join(FILE_NAME))? else { return Ok(None) };
    let checkpoint = journal.checkpoint()?;
    let path = data_path(folder);
    let data = OpenOptions::new().write(true).open(&path).map_err(io(&path, "open the LMDB file beside"))?;
    let page_bytes = u64::from(checkpoint.page_bytes);
    let own = checkpoint.txn % 2;
    let mut loser = checkpoint.meta;
    crate::lmdb::set_meta_identity(&mut loser, 1 - own, checkpoint.txn.saturating_sub(1));
    data.write_all_at(&checkpoint.meta, own * page_bytes).map_err(io(&path, "restore a meta page of"))?;
    data.write_all_at(&loser, (1 - own) * page_bytes).map_err(io(&path, "restore a meta page of"))?;
    data.sync_data().map_err(io(&path, "sync the restored meta pages of"))?;
    let (records, end) = journal.scan(&checkpoint);
    Ok(Some(Restored { journal, checkpoint, records, end }))
}

impl Restored {
    /// The LMDB transaction the store was put back at.
    pub fn checkpoint_txn(&self) -> u64 {
        self.checkpoint.txn
    }

    /// Records to replay.
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// Replays every record on `env` (opened after [`restore`]; `dbs` by
    /// the index the records use), syncs, and writes a checkpoint of a new
    /// epoch at the result. The snapshot LMDB opened at stays pinned until
    /// that checkpoint is durable, so a crash during the replay finds the
    /// same checkpoint intact. Commits run with NO_SYNC during the replay
    /// (the flag is put back as it was).
    pub fn replay(self, env: &Env<WithoutTls>, dbs: &[Database<Bytes, Bytes>]) -> Result<Replayed, JournalError> {
        let pin = env.clone().static_read_txn()?;
        let opened_at = pin.id() as u64;
        let no_sync = env.get_flags()? & heed::EnvFlags::NO_SYNC.bits() != 0;
        // SAFETY: set from the opening thread before any other thread uses
        // the environment; durability comes from the sync below.
        unsafe { env.set_flags(heed::EnvFlags::NO_SYNC, heed::FlagSetMode::Enable)? };
        let replayed = self.apply_all(env, dbs);
        if !no_sync {
            unsafe { env.set_flags(heed::EnvFlags::NO_SYNC, heed::FlagSetMode::Disable)? };
        }
        replayed?;
        env.force_sync()?;
        let last_txn = env.info().last_txn_id as u64;
        let data = File::open(data_path(env.path())).map_err(io(env.path(), "open the LMDB file in"))?;
        let meta =
            read_meta(&data, u64::from(self.checkpoint.page_bytes), last_txn).ok_or_else(|| JournalError::Invalid {
                path: self.journal.path.clone(),
                what: format!("LMDB's meta page of transaction {last_txn} does not hold it after the replay"),
            })?;
        let next_seq = self.checkpoint.next_seq + self.records.len() as u64;
        let checkpoint = Checkpoint {
            counter: self.checkpoint.counter + 1,
            epoch: self.checkpoint.epoch + 1,
            txn: last_txn,
            next_seq,
            position: align_up(self.end, PAGE),
            area: self.journal.area,
            page_bytes: self.checkpoint.page_bytes,
            meta,
        };
        self.journal.write_checkpoint(&checkpoint)?;
        drop(pin);
        Ok(Replayed { checkpoint_txn: opened_at, records: self.records.len(), last_txn })
    }

    fn apply_all(&self, env: &Env<WithoutTls>, dbs: &[Database<Bytes, Bytes>]) -> Result<(), JournalError> {
        for (index, record) in self.records.iter().enumerate() {
            if record.flags & !RECORD_FLAGS_KNOWN != 0 {
                return Err(JournalError::Malformed("a record carries flags this version does not know"));
            }
            // A void record changes nothing, and the record before it was
            // never committed (nobody was answered for it).
            let voided = self.records.get(index + 1).is_some_and(|next| next.flags & RECORD_VOIDS_PREVIOUS != 0);
            if record.flags & RECORD_VOIDS_PREVIOUS != 0 || voided {
                tracing::debug!(seq = record.seq, "journal record voided, not replayed");
                continue;
            }
            let mut txn = env.write_txn()?;
            apply(&mut txn, dbs, &record.payload)?;
            txn.commit()?;
            tracing::debug!(seq = record.seq, txn = record.txn, "journal record replayed");
        }
        Ok(())
    }
}

// ---- the running journal ----

/// The journal's settings.
#[derive(Clone, Copy)]
pub struct Config {
    /// The file's size when it is created (an existing file keeps its own).
    pub bytes: u64,
    pub checkpoint_period: Duration,
    /// Gather: having just answered commits of weight W (see
    /// [`Journal::append_weighted`]; the caller's clients), hold the next
    /// sync until W more has been appended since, or for at most the last
    /// sync's duration (and [`GATHER_MAX`]). Clients that each wait for
    /// their answer otherwise split into two groups that alternate, each
    /// sync carrying one of them while the other group's next requests
    /// queue; waiting for the answered group to come back puts both in
    /// one sync.
    pub gather: bool,
    /// How many batches may be written and synced at once ([`SYNC_LANES`]
    /// by default; at least 1). With one, a commit that arrives while a
    /// sync runs waits for that sync to end before its own starts: on
    /// average half a sync more than the sync it needs. The disk takes
    /// concurrent flushes (see the module doc), so the next batch starts
    /// at once on a free lane; answers still go out in commit order.
    pub lanes: usize,
    /// A checkpoint writes back only the pages its snapshot uses, where
    /// the file system allows it (`writeback`'s doc; true by default);
    /// false: `fdatasync` of the whole file, as before session 15.
    pub writeback_used_only: bool,
    /// Called (from a sync lane or the checkpoint thread) when a journal write or sync, or a
    /// checkpoint, failed: must not return to serving. The default logs
    /// one line and exits 1 ([`exit_on_failure`]).
    pub on_failure: fn(&JournalError),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bytes: JOURNAL_BYTES,
            checkpoint_period: CHECKPOINT_PERIOD,
            gather: false,
            lanes: SYNC_LANES,
            writeback_used_only: true,
            on_failure: exit_on_failure,
        }
    }
}

/// The default failure: one line on stderr (and in the log), exit 1
/// ([`crate::exit::EXIT_RUNTIME`]). Answers after a lost journal write
/// would be lies, and LMDB must not run on ahead of the journal.
pub fn exit_on_failure(error: &JournalError) {
    tracing::error!(%error, "journal failed; stopping");
    let process = std::env::args().next().map(PathBuf::from);
    let name = process.as_deref().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
    eprintln!("{}: the journal failed, stopping: {error}", name.unwrap_or_else(|| "daemon".into()));
    std::process::exit(i32::from(crate::exit::EXIT_RUNTIME));
}

/// The journal's metrics (register them under the daemon's prefix).
#[derive(Clone, Debug)]
pub struct JournalMetrics {
    /// fdatasyncs of records.
    pub syncs: Counter,
    /// Bytes written by those syncs (whole pages).
    pub bytes: Counter,
    pub records_per_sync: Histogram,
    pub sync: Histogram,
    /// Duration of each checkpoint (LMDB's sync and the header's).
    pub checkpoint: Histogram,
    /// Checkpoints that wrote back only their snapshot's pages
    /// ([`Config::writeback_used_only`]), and the free pages they left.
    pub checkpoints_used_only: Counter,
    pub checkpoint_free_pages_left: Counter,
    /// Where a record's time goes before and after its sync (issue 12's
    /// breakdown of a durable request): from its append to a sync lane
    /// taking it into a batch (one per record),
    pub take_wait: Histogram,
    /// from the take to the lane starting the batch's write (one per
    /// batch; the lane that takes a batch writes it at once since session
    /// 13, so this is about zero),
    pub lane_wait: Histogram,
    /// and from the sync that completed the durable prefix to a lane
    /// handing the payloads to `deliver` (one per delivery).
    pub deliver_wait: Histogram,
}

impl JournalMetrics {
    pub fn new() -> Self {
        Self {
            syncs: Counter::default(),
            bytes: Counter::default(),
            records_per_sync: Histogram::sizes(),
            sync: Histogram::seconds(),
            checkpoint: Histogram::seconds(),
            checkpoints_used_only: Counter::default(),
            checkpoint_free_pages_left: Counter::default(),
            take_wait: Histogram::seconds(),
            lane_wait: Histogram::seconds(),
            deliver_wait: Histogram::seconds(),
        }
    }

    /// Registers them as `journal_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "journal_syncs",
            "journal fdatasyncs (each makes a batch of records durable)",
            self.syncs.clone(),
        );
        registry.register("journal_bytes", "bytes written to the journal (whole pages)", self.bytes.clone());
        registry.register(
            "journal_records_per_sync",
            "records (write transactions) per journal sync",
            self.records_per_sync.clone(),
        );
        registry.register(
            "journal_sync_duration_seconds",
            "write and fdatasync of one batch of records",
            self.sync.clone(),
        );
        registry.register(
            "journal_checkpoint_duration_seconds",
            "checkpoints: LMDB's sync and the checkpoint header's",
            self.checkpoint.clone(),
        );
        registry.register(
            "journal_checkpoints_used_only",
            "checkpoints that wrote back only the pages their snapshot uses",
            self.checkpoints_used_only.clone(),
        );
        registry.register(
            "journal_checkpoint_free_pages_left",
            "free pages those checkpoints did not write back (dirty or not)",
            self.checkpoint_free_pages_left.clone(),
        );
        registry.register(
            "journal_take_wait_seconds",
            "from a record's append to a sync lane taking it into a batch",
            self.take_wait.clone(),
        );
        registry.register(
            "journal_lane_wait_seconds",
            "from a batch's take to a sync lane starting its write",
            self.lane_wait.clone(),
        );
        registry.register(
            "journal_deliver_wait_seconds",
            "from the sync completing the durable prefix to the hand-off of its answers",
            self.deliver_wait.clone(),
        );
    }
}

impl Default for JournalMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A snapshot handed by the writer for the next checkpoint.
struct Snapshot {
    pin: RoTxn<'static, WithoutTls>,
    txn: u64,
    meta: [u8; META_COPY_BYTES],
    /// The last record appended at or before `txn`.
    seq: u64,
}

/// An appended commit: its record (none when it changed nothing) and its
/// payload, delivered once it and everything before it is durable.
struct Entry<T> {
    /// Its own sequence number, or the last one before it.
    seq: u64,
    /// Its number among all appends ([`State::uncommitted`]).
    id: u64,
    /// [`Journal::append_weighted`].
    weight: u64,
    /// (LMDB txn id, effects, flags).
    record: Option<(u64, Vec<u8>, u32)>,
    /// None for a void record ([`Journal::uncommit`]).
    payload: Option<T>,
    /// When it was appended ([`JournalMetrics::take_wait`]).
    appended: Instant,
}

struct State<T> {
    /// Appended, not yet taken by a lane.
    queue: VecDeque<Entry<T>>,
    /// The last sequence number handed out.
    last_seq: u64,
    epoch: u64,
    /// Logical positions: the next batch goes at `head`; the current
    /// checkpoint's records start at `tail`.
    head: u64,
    tail: u64,
    /// Records placed (being written or written) and not yet covered by a
    /// durable checkpoint: (sequence, start).
    placed: VecDeque<(u64, u64)>,
    /// Every record up to here is placed, or skipped.
    placed_through: u64,
    /// Records the pending checkpoint covers that were never written:
    /// durable once it is.
    skipped: Option<(u64, u64)>,
    /// The durable checkpoint covers every record up to here.
    covered_through: u64,
    /// The lanes synced every placed record up to here.
    synced_through: u64,
    /// Batches taken, in order, not yet durable: (their last sequence,
    /// synced). `synced_through` advances over the synced prefix only.
    in_flight: VecDeque<(u64, bool)>,
    /// Taken, waiting to be durable, in order.
    waiting: VecDeque<Waiting<T>>,
    /// Appends so far (the last [`Entry::id`]).
    appended: u64,
    /// The entry appended before its transaction's commit, until the
    /// writer says how the commit went ([`Journal::append_before_commit`]):
    /// its payload, and every later one, is not delivered yet.
    uncommitted: Option<u64>,
    /// A lane is handing payloads to `deliver` ([`deliver_durable`]).
    delivering: bool,
    /// Lanes asleep on [`Shared::work`]: an append wakes one only when
    /// one sleeps (a lane awake looks at the queue before it sleeps).
    sleeping: usize,
    /// Batch buffers the lanes have written, for the next batches.
    batch_buffers: Vec<Vec<u8>>,
    /// The last sync's duration (for the gather).
    last_sync: Duration,
    /// When `synced_through` last advanced ([`JournalMetrics::deliver_wait`]).
    synced_at: Instant,
    /// Gathering ([`Config::gather`]): the weight to wait for (0: not
    /// gathering), until when.
    owed: u64,
    gather_until: Instant,
    snapshot_wanted: bool,
    snapshot: Option<Snapshot>,
    /// The lanes wait for space.
    full: bool,
    /// A caller waits for a checkpoint ([`Journal::checkpoint_now`]).
    forced: bool,
    checkpoints: u64,
    last_checkpoint: Instant,
    closed: bool,
    /// Written records' buffers, emptied, for the next appends.
    spare: Vec<Vec<u8>>,
}

/// A taken entry waiting to be durable.
struct Waiting<T> {
    seq: u64,
    id: u64,
    weight: u64,
    /// It wrote a record (else `seq` is the record's before it).
    record: bool,
    payload: Option<T>,
}

/// Record buffers kept for reuse ([`State::spare`]).
const SPARE_BUFFERS: usize = 4;

impl<T> State<T> {
    /// Every record up to the returned sequence is durable (synced or
    /// covered by a durable checkpoint).
    fn durable_through(&self) -> u64 {
        let synced = match self.skipped {
            Some((low, _)) => self.synced_through.min(low - 1),
            None => self.synced_through,
        };
        synced.max(self.covered_through)
    }

    /// This taken entry may be delivered: durable, and its transaction
    /// committed.
    fn ready(&self, waiting: &Waiting<T>, durable: u64) -> bool {
        waiting.seq <= durable && self.uncommitted != Some(waiting.id)
    }

    /// Payloads are durable and no lane is delivering yet.
    fn deliverable(&self) -> bool {
        !self.delivering && self.waiting.front().is_some_and(|front| self.ready(front, self.durable_through()))
    }
}

/// A batch of records taken for one write and sync: whole pages from a
/// page boundary.
struct Batch {
    /// Logical position of its first byte.
    start: u64,
    bytes: Vec<u8>,
    records: u64,
    /// Its last record's sequence number.
    last: u64,
    /// When a lane took it ([`JournalMetrics::lane_wait`]).
    taken: Instant,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// The sync lanes' wake-up: an append, a checkpoint's end, closing.
    work: Condvar,
    /// The checkpoint thread's (and a waiting `checkpoint_now`'s).
    checkpoint: Condvar,
    /// The writer's wake-up when a sync ends ([`Journal::on_lane_free`]).
    lane_free: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The caller's `deliver`: only the lane that set `State::delivering`
    /// calls it ([`deliver_durable`]), so this lock is never contended.
    deliver: Mutex<Deliver<T>>,
}

type Deliver<T> = Box<dyn FnMut(Vec<T>) + Send>;

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The running journal of one LMDB environment. `T` is what the caller
/// gets back, in commit order, once a commit is durable.
pub struct Journal<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    env: Env<WithoutTls>,
    data: File,
    page_bytes: u64,
    lanes: usize,
    threads: Vec<JoinHandle<()>>,
}

/// When a writer should commit what it has applied ([`Journal::pace`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Commit and append now: the journal would take the record at once.
    Now,
    /// Keep the transaction open and apply what arrives meanwhile; ask
    /// again at this instant, when more arrives, or when
    /// [`Journal::on_lane_free`]'s wake-up runs.
    Until(Instant),
}

impl<T: Send + 'static> Journal<T> {
    /// Opens (or creates, zero-filled, [`Config::bytes`]) `FOLDER/journal`
    /// beside the environment, sets the environment's NO_SYNC flag, takes a
    /// checkpoint of a new epoch at the environment's current state, and
    /// starts the sync lanes and the checkpoint thread. `deliver` runs on
    /// a sync lane (one lane at a time) with the payloads of commits made
    /// durable, in commit order. The environment must not be written by anyone but
    /// the caller of [`Journal::append`] from here on, and an existing
    /// journal must have been [`restore`]d and replayed first (this refuses
    /// a journal whose checkpoint is followed by records).
    pub fn start(
        env: &Env<WithoutTls>,
        config: Config,
        metrics: JournalMetrics,
        deliver: impl FnMut(Vec<T>) + Send + 'static,
    ) -> Result<Self, JournalError> {
        let folder = env.path().to_path_buf();
        let path = folder.join(FILE_NAME);
        let data_path = data_path(&folder);
        let data = File::open(&data_path).map_err(io(&data_path, "open the LMDB file beside"))?;
        let mut head = [0u8; META_COPY_BYTES];
        data.read_exact_at(&mut head, 0).map_err(io(&data_path, "read the meta page of"))?;
        let page_bytes = crate::lmdb::meta_page_bytes(&head).ok_or_else(|| JournalError::Invalid {
            path: data_path.clone(),
            what: "its first page is not an LMDB meta page".into(),
        })?;
        // SAFETY: the journal makes commits durable from here on; set before
        // the caller's writer starts.
        unsafe { env.set_flags(heed::EnvFlags::NO_SYNC, heed::FlagSetMode::Enable)? };
        let (journal, previous, staged) = match JournalFile::open(&path)? {
            Some(journal) => {
                let previous = journal.checkpoint()?;
                if !journal.scan(&previous).0.is_empty() {
                    return Err(JournalError::Invalid {
                        path,
                        what: "records follow its checkpoint: the store must be restored and replayed first".into(),
                    });
                }
                (journal, Some(previous), None)
            }
            None => {
                let (journal, staged) = JournalFile::create(&path, config.bytes)?;
                (journal, None, Some(staged))
            }
        };
        let pin = env.clone().static_read_txn()?;
        let txn = pin.id() as u64;
        let mut writeback = Writeback::new(&data, &data_path, page_bytes, config.writeback_used_only)?;
        writeback.sync_full(env)?;
        let meta = read_meta(&data, page_bytes, txn).ok_or_else(|| JournalError::Invalid {
            path: data_path.clone(),
            what: format!("its meta page {} does not hold transaction {txn}", txn % 2),
        })?;
        let position = previous.as_ref().map_or(0, |cp| align_up(cp.position, PAGE));
        let checkpoint = Checkpoint {
            counter: previous.as_ref().map_or(1, |cp| cp.counter + 1),
            epoch: previous.as_ref().map_or(1, |cp| cp.epoch + 1),
            txn,
            next_seq: previous.as_ref().map_or(1, |cp| cp.next_seq),
            position,
            area: journal.area,
            page_bytes: page_bytes as u32,
            meta,
        };
        journal.write_checkpoint(&checkpoint)?;
        let mut journal = journal;
        if let Some(staged) = staged {
            std::fs::rename(&staged, &path).map_err(io(&path, "rename into place"))?;
            sync_folder(&folder)?;
            journal.path = path.clone();
        }
        let state = State {
            queue: VecDeque::new(),
            last_seq: checkpoint.next_seq - 1,
            epoch: checkpoint.epoch,
            head: position,
            tail: position,
            placed: VecDeque::new(),
            placed_through: checkpoint.next_seq - 1,
            skipped: None,
            covered_through: checkpoint.next_seq - 1,
            synced_through: checkpoint.next_seq - 1,
            in_flight: VecDeque::new(),
            waiting: VecDeque::new(),
            appended: 0,
            uncommitted: None,
            delivering: false,
            sleeping: 0,
            batch_buffers: Vec::new(),
            last_sync: Duration::ZERO,
            synced_at: Instant::now(),
            owed: 0,
            gather_until: Instant::now(),
            snapshot_wanted: false,
            snapshot: None,
            full: false,
            forced: false,
            checkpoints: 0,
            last_checkpoint: Instant::now(),
            closed: false,
            spare: Vec::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            work: Condvar::new(),
            checkpoint: Condvar::new(),
            lane_free: OnceLock::new(),
            deliver: Mutex::new(Box::new(deliver)),
        });
        let journal = Arc::new(journal);
        let lanes = config.lanes.clamp(1, SYNC_LANES_MAX);
        let mut threads = Vec::new();
        let spawned = (|| {
            // One thread more than lanes: one can deliver while `lanes`
            // batches sync.
            for lane in 0..=lanes {
                let (shared, journal, metrics) = (shared.clone(), journal.clone(), metrics.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("journal-sync-{lane}"))
                        .spawn(move || lane_loop(&shared, &journal, &metrics, config))?,
                );
            }
            let (shared, env) = (shared.clone(), env.clone());
            threads.push(std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
                let outset = Outset { checkpoint, pin, writeback };
                checkpoint_loop(&shared, &journal, &env, &metrics, config, outset)
            })?);
            Ok(())
        })();
        if let Err(error) = spawned {
            // Stop the threads that did start before reporting.
            drop(Self { shared, env: env.clone(), data, page_bytes, lanes, threads });
            return Err(io(&path, "start the threads of")(error));
        }
        Ok(Self { shared, env: env.clone(), data, page_bytes, lanes, threads })
    }

    /// Hands over the effects of the transaction just committed (taking
    /// them: `effects` is left empty) with the payload to deliver once it
    /// is durable. Called by the one writer, in commit order, right after
    /// each commit (an empty `effects`, a commit that changed nothing, is
    /// delivered once everything before it is durable).
    pub fn append(&self, effects: &mut Effects, payload: T) {
        self.append_weighted(effects, payload, 1);
    }

    /// [`Journal::append`] with a weight: how many of the caller's clients
    /// wait for this payload, for [`Config::gather`].
    pub fn append_weighted(&self, effects: &mut Effects, payload: T, weight: u64) {
        let txn = self.env.info().last_txn_id as u64;
        self.push(effects, payload, weight, txn, false);
    }

    /// [`Journal::append_weighted`] for the transaction the writer is
    /// about to commit (session 14): its record goes to a lane at once,
    /// so its write and sync run while LMDB commits, and a create no
    /// longer waits for the commit and then for the sync. Its payload
    /// (and every later one) is held back until the writer calls
    /// [`Journal::committed`], or [`Journal::uncommit`] when the commit
    /// failed; the writer appends nothing else, and hands no snapshot
    /// ([`Journal::after_commit`]), before that call.
    pub fn append_before_commit(&self, effects: &mut Effects, payload: T, weight: u64) {
        let txn = self.env.info().last_txn_id as u64 + 1;
        self.push(effects, payload, weight, txn, true);
    }

    fn push(&self, effects: &mut Effects, payload: T, weight: u64, txn: u64, uncommitted: bool) {
        let mut state = self.shared.lock();
        // The record's bytes go to a lane; the caller's buffer
        // gets one the thread has written already (no allocation per commit).
        let record = (!effects.is_empty()).then(|| {
            let spare = state.spare.pop().unwrap_or_default();
            effects.ops = 0;
            (txn, std::mem::replace(&mut effects.bytes, spare), 0)
        });
        if record.is_some() {
            state.last_seq += 1;
        }
        let seq = state.last_seq;
        state.appended += 1;
        let id = state.appended;
        if uncommitted {
            state.uncommitted = Some(id);
        }
        state.queue.push_back(Entry { seq, id, weight, record, payload: Some(payload), appended: Instant::now() });
        self.wake_a_lane(state);
    }

    /// After an append: a lane awake looks at the queue before it sleeps;
    /// one asleep while a batch may start is woken (none: the lane whose
    /// sync ends takes it). Session 14: was a wake-up per append, taken
    /// or not.
    fn wake_a_lane(&self, state: MutexGuard<'_, State<T>>) {
        let wake = state.sleeping > 0 && state.in_flight.len() < self.lanes;
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// The transaction of the last [`Journal::append_before_commit`]
    /// committed: its payload is delivered once its record is durable.
    pub fn committed(&self) {
        let mut state = self.shared.lock();
        if state.uncommitted.take().is_none() {
            return;
        }
        // Its sync may have ended first: then a sleeping lane delivers it
        // (one awake looks before it sleeps).
        let wake = state.deliverable() && state.sleeping > 0;
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// The transaction of the last [`Journal::append_before_commit`]
    /// failed to commit: gives its payload back (`None` when there is
    /// none pending) and makes sure its record is never replayed. A record
    /// no lane took yet is dropped (its sequence number is handed out
    /// again); one already written or being written is followed by a void
    /// record ([`RECORD_VOIDS_PREVIOUS`]). Whatever the caller appends
    /// next (its refusals, say) is delivered only once that void record
    /// is durable, so nobody is told of a failure a replay would undo.
    pub fn uncommit(&self) -> Option<T> {
        let mut state = self.shared.lock();
        let id = state.uncommitted.take()?;
        if state.queue.back().is_some_and(|entry| entry.id == id) {
            let entry = state.queue.pop_back()?;
            if let Some((_, mut bytes, _)) = entry.record {
                state.last_seq -= 1;
                if state.spare.len() < SPARE_BUFFERS {
                    bytes.clear();
                    state.spare.push(bytes);
                }
            }
            return entry.payload;
        }
        let position = state.waiting.iter().rposition(|waiting| waiting.id == id)?;
        let taken = state.waiting.remove(position)?;
        if taken.record {
            let txn = self.env.info().last_txn_id as u64 + 1;
            state.last_seq += 1;
            state.appended += 1;
            let (seq, id) = (state.last_seq, state.appended);
            let record = Some((txn, Vec::new(), RECORD_VOIDS_PREVIOUS));
            state.queue.push_back(Entry { seq, id, weight: 0, record, payload: None, appended: Instant::now() });
            self.wake_a_lane(state);
        }
        taken.payload
    }

    /// The writer, after each commit's [`Journal::append`] and when idle:
    /// hands the checkpoint thread the snapshot it asked for (pinned, with
    /// its meta page's bytes). Must run before the next commit.
    pub fn after_commit(&self) {
        let wanted = {
            let state = self.shared.lock();
            state.snapshot_wanted && state.snapshot.is_none()
        };
        if !wanted {
            return;
        }
        let Ok(pin) = self.env.clone().static_read_txn() else { return };
        let txn = pin.id() as u64;
        let Some(meta) = read_meta(&self.data, self.page_bytes, txn) else {
            tracing::warn!(txn, "the meta page does not hold the last commit; no snapshot this time");
            return;
        };
        let mut state = self.shared.lock();
        let seq = state.last_seq;
        state.snapshot = Some(Snapshot { pin, txn, meta, seq });
        state.snapshot_wanted = false;
        drop(state);
        self.shared.checkpoint.notify_all();
    }

    /// Takes a checkpoint now and waits until it is durable (the caller
    /// is the writer: it hands the snapshot itself). For tests and tools.
    pub fn checkpoint_now(&self) {
        let done = {
            let mut state = self.shared.lock();
            state.forced = true;
            state.checkpoints
        };
        self.shared.checkpoint.notify_all();
        loop {
            self.after_commit();
            let state = self.shared.lock();
            if state.checkpoints > done || state.closed {
                return;
            }
            let _ = self.shared.checkpoint.wait_timeout(state, Duration::from_millis(1));
        }
    }

    /// Whether the writer should commit now what it has applied in its
    /// open write transaction (for `weight` of its clients, as
    /// [`Journal::append_weighted`]), or keep applying into it: fewer,
    /// larger commits. A commit writes every page it touched into
    /// `data.mdb`'s page cache (leaf, branches, the free list; with the
    /// checkpoint's pinned snapshot always fresh pages), and that is what
    /// the next checkpoint writes back while the journal's small syncs
    /// wait behind it; so a commit the journal could not sync yet is
    /// better made later and larger. [`Pace::Until`] while every sync
    /// lane is busy (the record would only queue; the writer holds until
    /// a lane frees, [`Journal::on_lane_free`]), and while the gather
    /// ([`Config::gather`]) would hold the record back for more weight
    /// than `weight` brings; [`Pace::Now`] otherwise, and always while
    /// the journal is full (a checkpoint needs the writer's commits) or
    /// closed.
    pub fn pace(&self, weight: u64) -> Pace {
        let state = self.shared.lock();
        let now = Instant::now();
        if state.closed || state.full {
            return Pace::Now;
        }
        if state.in_flight.len() >= self.lanes {
            return Pace::Until(now + HOLD_MAX);
        }
        if state.owed > 0 && now < state.gather_until {
            let queued: u64 = state.queue.iter().map(|entry| entry.weight).sum();
            if queued + weight < state.owed {
                return Pace::Until(state.gather_until);
            }
        }
        Pace::Now
    }

    /// Installs the writer's wake-up for [`Journal::pace`]: run on a sync
    /// lane's thread each time a sync ends (so it must be cheap and must
    /// not block). Only the first call counts.
    pub fn on_lane_free(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.shared.lane_free.set(Box::new(wake));
    }

    /// Checkpoints taken since the start (not counting the start's).
    pub fn checkpoints(&self) -> u64 {
        self.shared.lock().checkpoints
    }

    /// Every record appended so far is durable.
    pub fn is_durable(&self) -> bool {
        let state = self.shared.lock();
        state.queue.is_empty() && state.durable_through() >= state.last_seq
    }
}

impl<T: Send + 'static> Drop for Journal<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        self.shared.checkpoint.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A sync lane (every lane thread runs this, one more than `lanes`;
/// there is no thread between the writer and the lanes): delivers what
/// became durable, in order; else, while fewer than `lanes` batches are
/// in flight and unless the gather holds it, takes every queued record
/// that fits, places it from `head` in whole pages, writes the batch and
/// makes it durable itself ([`sync_batch`]); else sleeps until an append,
/// a sync's end or a checkpoint. Lanes run at once; a later batch synced first
/// waits, undelivered, for the earlier ones (the lane that completes the
/// durable prefix delivers it).
fn lane_loop<T: Send>(shared: &Shared<T>, journal: &JournalFile, metrics: &JournalMetrics, config: Config) {
    let lanes = config.lanes.clamp(1, SYNC_LANES_MAX);
    let mut state = shared.lock();
    loop {
        if state.deliverable() {
            state = deliver_durable(shared, state, metrics, config);
            continue;
        }
        if state.closed {
            return;
        }
        if state.owed > 0 && !state.full {
            let queued: u64 = state.queue.iter().map(|entry| entry.weight).sum();
            let now = Instant::now();
            if queued > 0 && queued < state.owed && now < state.gather_until {
                let wait = state.gather_until - now;
                state.sleeping += 1;
                state = match shared.work.wait_timeout(state, wait) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
                state.sleeping -= 1;
                continue;
            }
        }
        let mut buffer = Vec::new();
        if state.in_flight.len() < lanes {
            buffer = state.batch_buffers.pop().unwrap_or_else(|| Vec::with_capacity(SYNC_BYTES_MAX));
            buffer.clear();
        }
        if state.in_flight.len() < lanes
            && let Some(batch) = take(&mut state, journal, metrics, buffer)
        {
            state.owed = 0;
            state.in_flight.push_back((batch.last, false));
            // The checkpoint thread is woken when the area passes half
            // used, not at every sync (session 14: was a wake-up per
            // sync, a fifth of a sleep per create at 8 clients).
            let half = journal.area * CHECKPOINT_FILL_NUMERATOR / CHECKPOINT_FILL_DENOMINATOR;
            let crossed = batch.start.saturating_sub(state.tail) <= half && state.head - state.tail > half;
            drop(state);
            if crossed {
                shared.checkpoint.notify_all();
            }
            if !sync_batch(shared, journal, metrics, config, batch) {
                return;
            }
            state = shared.lock();
            continue;
        }
        if state.full {
            shared.checkpoint.notify_all();
        }
        if state.deliverable() {
            continue;
        }
        state.sleeping += 1;
        state = match shared.work.wait(state) {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        state.sleeping -= 1;
    }
}

/// Hands every payload that is durable (its record and every earlier one)
/// to `deliver`, in commit order, and sets the gather's weight. One lane
/// delivers at a time ([`State::delivering`]): another that finds
/// payloads durable meanwhile goes on taking and syncing, and the
/// delivering lane looks again when it is done.
fn deliver_durable<'a, T: Send>(
    shared: &'a Shared<T>,
    mut state: MutexGuard<'a, State<T>>,
    metrics: &JournalMetrics,
    config: Config,
) -> MutexGuard<'a, State<T>> {
    let durable = state.durable_through();
    let mut ready = Vec::new();
    let mut answered = 0;
    while state.waiting.front().is_some_and(|front| state.ready(front, durable)) {
        if let Some(Waiting { weight, payload, .. }) = state.waiting.pop_front() {
            ready.extend(payload);
            answered += weight;
        }
    }
    metrics.deliver_wait.observe_duration(state.synced_at.elapsed());
    if config.gather {
        state.owed = answered + state.queue.iter().map(|entry| entry.weight).sum::<u64>();
        state.gather_until = Instant::now() + state.last_sync.min(GATHER_MAX);
    }
    state.delivering = true;
    drop(state);
    {
        let mut deliver = match shared.deliver.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        (*deliver)(ready);
    }
    let mut state = shared.lock();
    state.delivering = false;
    state
}

/// Writes a taken batch and makes it durable (one `pwritev2(RWF_DSYNC)`:
/// the write and a sync of its own range), then advances
/// `synced_through` over the prefix of batches that are synced. `false`
/// when the write failed (the journal is closed).
fn sync_batch<T: Send>(
    shared: &Shared<T>,
    journal: &JournalFile,
    metrics: &JournalMetrics,
    config: Config,
    batch: Batch,
) -> bool {
    #[cfg(test)]
    tests::before_sync(batch.last);
    let started = Instant::now();
    metrics.lane_wait.observe_duration(started.saturating_duration_since(batch.taken));
    if let Err(error) = write_durably(journal, &batch.bytes, journal.offset(batch.start)) {
        (config.on_failure)(&error);
        shared.lock().closed = true;
        shared.work.notify_all();
        return false;
    }
    let took = started.elapsed();
    metrics.sync.observe_duration(took);
    metrics.syncs.inc();
    metrics.bytes.inc_by(batch.bytes.len() as u64);
    metrics.records_per_sync.observe(batch.records);
    let mut state = shared.lock();
    state.last_sync = took;
    if let Some(entry) = state.in_flight.iter_mut().find(|(last, _)| *last == batch.last) {
        entry.1 = true;
    }
    while let Some(&(last, true)) = state.in_flight.front() {
        state.synced_through = state.synced_through.max(last);
        state.in_flight.pop_front();
        state.synced_at = Instant::now();
    }
    if state.batch_buffers.len() < SYNC_LANES_MAX {
        state.batch_buffers.push(batch.bytes);
    }
    // Records queued while every lane was busy: a sleeping thread may
    // take them now, while this one delivers.
    let wake = !state.queue.is_empty() && state.sleeping > 0;
    drop(state);
    if wake {
        shared.work.notify_one();
    }
    if let Some(wake) = shared.lane_free.get() {
        wake();
    }
    true
}

/// Takes every queued entry that fits into one batch written from `head`:
/// records are placed in `buffer` (padded to whole pages), entries without
/// a record to write pass straight to [`State::waiting`]. `None` (the
/// buffer kept for later) when no record was taken.
fn take<T>(
    state: &mut State<T>,
    journal: &JournalFile,
    metrics: &JournalMetrics,
    mut buffer: Vec<u8>,
) -> Option<Batch> {
    let mut start = state.head;
    let mut records = 0u64;
    let mut last = 0u64;
    loop {
        let (seq, size) = match state.queue.front() {
            None => break,
            Some(entry) => (entry.seq, entry.record.as_ref().map(|(_, payload, _)| record_bytes(payload.len()))),
        };
        // A commit that changed nothing, or a record the pending
        // checkpoint covers (never written): delivered in turn.
        let Some(size) = size.filter(|_| seq > state.placed_through) else {
            if let Some(entry) = state.queue.pop_front() {
                let Entry { seq, id, weight, record, payload, .. } = entry;
                state.waiting.push_back(Waiting { seq, id, weight, record: record.is_some(), payload });
            }
            continue;
        };
        if records > 0 && buffer.len() as u64 + size > SYNC_BYTES_MAX as u64 {
            break;
        }
        if records == 0 {
            start = state.head;
            if start % journal.area + size > journal.area {
                start = align_up(start, journal.area);
            }
        }
        let end = align_up(start + buffer.len() as u64 + size, PAGE);
        if start % journal.area + (end - start) > journal.area || end - state.tail > journal.area {
            if records == 0 {
                state.full = true;
            }
            break;
        }
        let Some(entry) = state.queue.pop_front() else { break };
        metrics.take_wait.observe_duration(entry.appended.elapsed());
        let Some((txn, payload, flags)) = entry.record else { break };
        state.placed.push_back((seq, start + buffer.len() as u64));
        encode_record(&mut buffer, state.epoch, seq, txn, flags, &payload);
        if state.spare.len() < SPARE_BUFFERS && payload.capacity() <= SYNC_BYTES_MAX {
            let mut payload = payload;
            payload.clear();
            state.spare.push(payload);
        }
        state.placed_through = seq;
        let (id, weight, payload) = (entry.id, entry.weight, entry.payload);
        state.waiting.push_back(Waiting { seq, id, weight, record: true, payload });
        records += 1;
        last = seq;
    }
    if records == 0 {
        if state.batch_buffers.len() < SYNC_LANES_MAX {
            state.batch_buffers.push(buffer);
        }
        return None;
    }
    state.head = align_up(start + buffer.len() as u64, PAGE);
    buffer.resize(align_up(buffer.len() as u64, PAGE) as usize, 0);
    Some(Batch { start, bytes: buffer, records, last, taken: Instant::now() })
}

/// Writes `bytes` at `offset` and makes them durable: `pwritev2` with
/// `RWF_DSYNC` (the range's data and a cache flush, like `fdatasync` of
/// that range, in one system call), or a write and `fdatasync` where the
/// kernel refuses the flag.
fn write_durably(journal: &JournalFile, bytes: &[u8], offset: u64) -> Result<(), JournalError> {
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        let iov = libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() };
        let at = i64::try_from(offset + done as u64).unwrap_or(i64::MAX);
        // SAFETY: one iovec over a live slice; the file descriptor is open
        // for writing for as long as `journal` lives.
        let written = unsafe { libc::pwritev2(journal.file.as_raw_fd(), &iov, 1, at, libc::RWF_DSYNC) };
        if written < 0 {
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) if done == 0 => {
                    journal.file.write_all_at(bytes, offset).map_err(io(&journal.path, "write records to"))?;
                    return journal.file.sync_data().map_err(io(&journal.path, "sync records of"));
                }
                _ => return Err(io(&journal.path, "write records to")(error)),
            }
        }
        if written == 0 {
            let error = std::io::Error::new(std::io::ErrorKind::WriteZero, "pwritev2 wrote nothing");
            return Err(io(&journal.path, "write records to")(error));
        }
        done += written as usize;
    }
    Ok(())
}

/// Whether a checkpoint of the store whose `data.mdb` is `data` (at
/// `path`) can write back only its snapshot's pages (`writeback`: ext4
/// without `data=journal`). Its owner then keeps the part of the file
/// ahead of LMDB's end written, not a hole (metad's `Store::after_commit`).
pub fn writes_back_used_pages_only(data: &File, path: &Path) -> bool {
    writeback::overwrites_in_place(data, path)
}

/// What the checkpoint thread starts from: the checkpoint [`Journal::start`]
/// wrote, its snapshot's pin, and the writeback state.
struct Outset {
    checkpoint: Checkpoint,
    pin: RoTxn<'static, WithoutTls>,
    writeback: Writeback,
}

/// The checkpoint thread: when the area is half used, every period while
/// there are records, or when asked, takes the writer's snapshot, makes its
/// pages durable (`writeback`), writes the next header slot, syncs it, and
/// lets go of the previous checkpoint's pinned snapshot.
fn checkpoint_loop<T: Send>(
    shared: &Shared<T>,
    journal: &JournalFile,
    env: &Env<WithoutTls>,
    metrics: &JournalMetrics,
    config: Config,
    outset: Outset,
) {
    let Outset { checkpoint: mut current, mut pin, mut writeback } = outset;
    let half = journal.area * CHECKPOINT_FILL_NUMERATOR / CHECKPOINT_FILL_DENOMINATOR;
    loop {
        let mut state = shared.lock();
        loop {
            if state.closed {
                return;
            }
            let records = state.last_seq > state.covered_through;
            let due = state.full
                || state.forced
                || state.head - state.tail > half
                || (records && state.last_checkpoint.elapsed() >= config.checkpoint_period);
            if due {
                break;
            }
            let wait = config.checkpoint_period.saturating_sub(state.last_checkpoint.elapsed()).max(SNAPSHOT_WAIT);
            state = match shared.checkpoint.wait_timeout(state, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.snapshot_wanted = true;
        let snapshot = loop {
            if state.closed {
                return;
            }
            if let Some(snapshot) = state.snapshot.take() {
                break snapshot;
            }
            state = match shared.checkpoint.wait_timeout(state, SNAPSHOT_WAIT) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        };
        drop(state);
        let started = Instant::now();
        // The snapshot's pages, written and waited for; durable once the
        // header's sync below returns (it flushes the disk's cache).
        match writeback.sync(env, &snapshot.meta) {
            Ok(Synced::Full) => {}
            Ok(Synced::Used { free_pages, .. }) => {
                metrics.checkpoints_used_only.inc();
                metrics.checkpoint_free_pages_left.inc_by(free_pages);
            }
            Err(error) => {
                (config.on_failure)(&error);
                shared.lock().closed = true;
                return;
            }
        }
        // Where the records after the snapshot start: the next placed one,
        // or the head; records up to it not yet placed are never written.
        let mut state = shared.lock();
        if state.placed_through < snapshot.seq {
            state.skipped = Some((state.placed_through + 1, snapshot.seq));
            state.placed_through = snapshot.seq;
        }
        let position = state.placed.iter().find(|(seq, _)| *seq > snapshot.seq).map_or(state.head, |(_, at)| *at);
        drop(state);
        let checkpoint = Checkpoint {
            counter: current.counter + 1,
            epoch: current.epoch,
            txn: snapshot.txn,
            next_seq: snapshot.seq + 1,
            position,
            area: current.area,
            page_bytes: current.page_bytes,
            meta: snapshot.meta,
        };
        if let Err(error) = journal.write_checkpoint(&checkpoint) {
            (config.on_failure)(&error);
            shared.lock().closed = true;
            return;
        }
        let mut state = shared.lock();
        state.tail = position;
        state.covered_through = state.covered_through.max(snapshot.seq);
        if state.skipped.is_some_and(|(_, high)| high <= snapshot.seq) {
            state.skipped = None;
        }
        while state.placed.front().is_some_and(|(seq, _)| *seq <= snapshot.seq) {
            state.placed.pop_front();
        }
        state.full = false;
        state.forced = false;
        state.checkpoints += 1;
        state.last_checkpoint = Instant::now();
        drop(state);
        shared.work.notify_all();
        shared.checkpoint.notify_all();
        // The new checkpoint is durable: the previous one's pages may go.
        drop(std::mem::replace(&mut pin, snapshot.pin));
        current = checkpoint;
        metrics.checkpoint.observe_duration(started.elapsed());
    }
}

#[cfg(test)]
mod tests;
mod writeback;
