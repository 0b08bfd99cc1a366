//! The shard's state in LMDB: databases, key layouts and record encodings.
//!
//! Keys are big-endian wherever LMDB's byte order must be numeric order, so a
//! cursor walk is a listing in the protocol's order. Values are little-endian
//! (like the wire). Every record decoder is total: a malformed record is
//! [`StoreError::Corrupt`], never a panic.
//!
//! | database | key | value |
//! |---|---|---|
//! | `meta` | ASCII name (`format`, `secret`, `counter/<type>`, `last_block_id`) | see [`MetaKey`] (a `counter/<type>` bounds the ids handed out: written once per block of them, `logic::INODE_IDS_PER_COUNTER_WRITE`) |
//! | `directories` | inode BE | [`DirectoryRecord`] |
//! | `living` | dir BE ‖ name_hash BE ‖ name | [`LivingRecord`]: creation time, inode (with owning bit) |
//! | `dead` | dir BE ‖ name_hash BE ‖ name ‖ 0x00 ‖ creation_time BE | inode (with owning bit; 0 = "nothing") |
//! | `files` | inode BE | [`FileRecord`] (linked files and symlinks); a file create_small_file made also carries its [`CreateMemory`] (store format 3) |
//! | `eden` | inode BE | [`EdenRecord`] (files being written) |
//! | `spans` | inode BE ‖ byte offset BE | [`SpanRecord`] (of linked and eden files alike) |
//! | `reverse_blocks` | block service BE ‖ block id BE | file inode LE ‖ span offset LE |
//! | `block_services` | block service id BE | [`crate::block_services::BlockServiceRecord`] |
//! | `unlinked_dirs` | CDC transaction id BE (create_unlinked_dir), or id BE ‖ `i`/`a`/`d`/`m` (inject_dirent, acquire_dirent, create_linked_dir, move_file_in_shard) | inode LE; or dir LE ‖ inode LE ‖ creation time LE (the CDC requests remembered per transaction until its `forget_below` passes it: `logic::dirents`) |
//! | `small_files` | file inode BE | [`CreateMemory`]s written by a metad before store format 3 (and by the journal records it left, replayed): still honoured for [`wire::limits::SMALL_FILE_CREATE_MEMORY_NS`]; inodes grow with time, so the oldest are first and each create forgets up to two expired ones (`logic::small`); since format 3 only the memory of a file sent back to eden within it (its record gone) is written here |
//!
//! Every value is stored with a 4-byte trailer: the CRC32C of
//! `key_len u16 LE ‖ key ‖ value`, checked on every read ([`Db`]). A record
//! whose checksum does not match is never returned: the read fails as
//! [`StoreError::Corrupt`] (the request gets STORAGE_ERROR), the database
//! and key are logged, and [`checksum_mismatches`] counts it. LMDB itself
//! has no checksums, so without this a flipped bit in a page was served as
//! a wrong inode, a mangled name or a short listing. `meta/format` holds
//! [`STORE_FORMAT`]; a store without it (written before the checksums) is
//! refused, one of format 2 is stamped 3 when opened (format 3 only adds
//! the create memory to file records; the memories format 2 kept in
//! `small_files` are still read there), and one of a later format is
//! refused.
//!
//! Before LMDB maps `data.mdb`, [`Store::open`] runs `daemon::lmdb::check`:
//! the file size against LMDB's own record of its last page (a truncated
//! file would SIGBUS on first touch), and every page and node header LMDB
//! would trust on the way to a record (a flipped bit there crashed metad
//! with SIGSEGV inside LMDB the first time a request touched the page). A
//! damaged file is refused with one line naming the file and the page.
//! Damage that arrives after the start (the file changed behind metad's
//! back, a disk read error) faults inside the map: `daemon::fault`'s
//! handler, installed by the server, prints one line, exits 3 and leaves a
//! marker; [`Store::open`] refuses a marked store until `metad --verify`
//! finds it intact ([`StoreError::Faulted`]).
//!
//! A checksum covers the records LMDB hands out, not the answers it does
//! not: a flipped bit in a stored key moves the record out of place, and a
//! lookup or a walk misled by it would answer "not found" or end a listing
//! early. So a lookup that finds nothing reads both neighbours of the gap,
//! and a walk that ends reads the record that ended it and the one before
//! its start: each must be intact and in order, or the read fails as
//! corrupt ([`Db`]). A record whose (flipped) size runs past the end of the
//! file is refused before it is read ([`MapBounds`]), instead of a SIGBUS.
//!
//! `data.mdb` is longer than LMDB's pages: after each of the writer's
//! commits [`Store::after_commit`] writes zeros ahead of LMDB's last page
//! (its meta pages say where), one page per write, so that LMDB's next
//! pages land in 4 KiB folios, over blocks that exist (a checkpoint then
//! writes back only its snapshot's pages: `daemon::journal`); where the
//! journal cannot do that (not ext4) the part ahead stays a sparse hole,
//! read into the page cache.
//!
//! Living keys sort by (hash, name) — the listing order. Dead keys end the
//! name with a NUL (names never contain one) so that all versions of one name
//! are adjacent and sorted by creation time, and names of one hash still sort
//! by name.

use daemon::journal::{Effects, Mark};
use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use wire::codec::Reader;
use wire::crc::{crc32c, crc32c_append};
use wire::ids::{BlockId, BlockServiceId, EggsTime, InodeId, InodeType};
use wire::limits::{POLICY_BYTES_MAX, SPAN_BLOCKS_MAX};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("LMDB: {0}")]
    Lmdb(heed::Error),
    #[error("corrupt record in {0}")]
    Corrupt(&'static str),
    #[error("cannot create the state folder {path}: {source}")]
    Folder { path: String, source: std::io::Error },
    /// Truncated, not LMDB, or a page header LMDB would trust is damaged
    /// (`daemon::lmdb`).
    #[error(transparent)]
    Damaged(#[from] daemon::lmdb::Damage),
    #[error(
        "the store {folder} faulted while serving and is refused until checked: {line} (remove {marker} only after `metad --verify {folder}` says intact; verify removes it then)"
    )]
    Faulted { folder: String, marker: String, line: String },
    #[error("{path} is not an LMDB file metad can open: {reason}")]
    NotLmdb { path: String, reason: &'static str },
    /// The journal could not be read, restored or replayed.
    #[error(transparent)]
    Journal(#[from] daemon::journal::JournalError),
    #[error("{path} has store format {found}, which this metad cannot read (it reads formats 2 and {STORE_FORMAT})")]
    Format { path: String, found: u32 },
    /// A request applied without a nested transaction was refused after it
    /// had written (`logic::Shard::handle_mutation`): only the batch's
    /// abort can undo it.
    #[error("a request was refused after it wrote, without a nested transaction to roll it back: {0}")]
    RefusedAfterWriting(String),
}

impl From<heed::Error> for StoreError {
    /// A checksum mismatch surfaces through heed's decoding error (so that
    /// [`Db`]'s iterators keep heed's item type); it is a corrupt record.
    fn from(error: heed::Error) -> Self {
        if let heed::Error::Decoding(inner) = &error
            && let Some(mismatch) = inner.downcast_ref::<ChecksumMismatch>()
        {
            return StoreError::Corrupt(mismatch.what);
        }
        StoreError::Lmdb(error)
    }
}

/// The on-disk format: 2 = every value carries a CRC32C of key and value;
/// 3 = and a file made by create_small_file carries its create memory in
/// its file record ([`CreateMemory`]) instead of a `small_files` record.
pub const STORE_FORMAT: u32 = 3;
/// The oldest format [`Store::open`] reads (and stamps [`STORE_FORMAT`]).
pub const STORE_FORMAT_OLDEST: u32 = 2;
/// Bytes of the checksum trailer of every stored value.
pub const CHECKSUM_BYTES: usize = 4;

static CHECKSUM_MISMATCHES: AtomicU64 = AtomicU64::new(0);

/// Records refused for a checksum mismatch since the process started.
pub fn checksum_mismatches() -> u64 {
    CHECKSUM_MISMATCHES.load(Ordering::Relaxed)
}

/// The checksum stored after a value.
pub fn record_checksum(key: &[u8], value: &[u8]) -> u32 {
    let key_len = u16::try_from(key.len()).unwrap_or(u16::MAX).to_le_bytes();
    crc32c_append(crc32c_append(crc32c(&key_len), key), value)
}

/// A record whose checksum did not match (carried inside heed's error).
#[derive(Debug)]
pub struct ChecksumMismatch {
    /// "checksum of a <database> record", for [`StoreError::Corrupt`].
    pub what: &'static str,
}

impl std::fmt::Display for ChecksumMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
}

impl std::error::Error for ChecksumMismatch {}

/// One LMDB database whose values carry a checksum of key and value. Same
/// methods and item types as heed's `Database<Bytes, Bytes>`, so the logic
/// reads it like one; every value it returns has been checked and has its
/// trailer removed.
#[derive(Clone, Copy)]
pub struct Db {
    inner: Database<Bytes, Bytes>,
    /// The database's name, for logs.
    pub name: &'static str,
    what: &'static str,
    map: &'static MapBounds,
    /// Its index among [`Store::databases`]: the journal's database number.
    index: u8,
    recorder: &'static Recorder,
}

/// Gathers the effects of the writer's transaction for the journal
/// (`daemon::journal`): every put, delete (of a record that was there)
/// and clear through a [`Db`], while on. One per opened store, leaked like
/// [`MapBounds`]. Only the holder of the writer's role (the writer thread, or an I/O
/// thread applying its own mutations: `server::Role`) writes once it is on, so the
/// lock is never contended; it is what lets a `Db` (shared, `Copy`) reach
/// the buffer.
pub struct Recorder {
    on: AtomicBool,
    effects: Mutex<Effects>,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Effects> {
        match self.effects.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The buffer to record into, while on.
    fn effects(&self) -> Option<std::sync::MutexGuard<'_, Effects>> {
        self.on.load(Ordering::Relaxed).then(|| self.lock())
    }
}

/// Where the environment's file is mapped, to refuse a record that LMDB
/// places beyond the file's end. A flipped bit in a node's size field
/// makes LMDB hand out a slice running past the end of `data.mdb`;
/// reading it (for its checksum) would kill the process with SIGBUS. One
/// per opened store, leaked: a store lives as long as its process.
pub struct MapBounds {
    start: usize,
    size: usize,
    file: std::fs::File,
    /// The file's length when last looked at; it only grows.
    file_bytes: AtomicU64,
}

impl MapBounds {
    /// Whether `bytes` is safe to read: outside the map (a page of the
    /// current write transaction, in memory), or inside the file.
    fn readable(&self, bytes: &[u8]) -> bool {
        let start = bytes.as_ptr() as usize;
        if start < self.start || start >= self.start.saturating_add(self.size) {
            return true;
        }
        let end = (start - self.start).saturating_add(bytes.len()) as u64;
        if end <= self.file_bytes.load(Ordering::Relaxed) {
            return true;
        }
        // The file may have grown since: look again (rare).
        let now = self.file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        self.file_bytes.fetch_max(now, Ordering::Relaxed);
        end <= now
    }
}

impl Db {
    fn check<'txn>(&self, key: &[u8], stored: &'txn [u8]) -> heed::Result<&'txn [u8]> {
        if !self.map.readable(key) || !self.map.readable(stored) {
            return Err(self.mismatch(key.get(..16).unwrap_or(key)));
        }
        if let Some(split) = stored.len().checked_sub(CHECKSUM_BYTES) {
            let (value, trailer) = stored.split_at(split);
            if trailer == record_checksum(key, value).to_le_bytes() {
                return Ok(value);
            }
        }
        Err(self.mismatch(key))
    }

    /// Counts and logs a damaged record; the error that reports it.
    fn mismatch(&self, key: &[u8]) -> heed::Error {
        let count = CHECKSUM_MISMATCHES.fetch_add(1, Ordering::Relaxed) + 1;
        let key = if self.map.readable(key) { hex(key) } else { "(beyond the end of the file)".to_string() };
        tracing::error!(database = self.name, key = %key, count, "record checksum mismatch: refusing to serve it");
        heed::Error::Decoding(Box::new(ChecksumMismatch { what: self.what }))
    }

    fn check_item<'txn>(&self, item: heed::Result<(&'txn [u8], &'txn [u8])>) -> heed::Result<(&'txn [u8], &'txn [u8])> {
        let (key, stored) = item?;
        Ok((key, self.check(key, stored)?))
    }

    /// The record of `key`. "Not found" is an answer too, and a flipped
    /// bit in a stored key hides its record from the lookup: the damaged
    /// record then sits where the key would be, so both neighbours of the
    /// gap are read and must be intact. A damaged branch key can also steer
    /// the lookup into the leaf left of the key's: the seek for the record
    /// at or above the key then steps into the right leaf and finds the key
    /// itself, so that record must lie strictly above the key.
    pub fn get<'txn>(&self, txn: &'txn RoTxn, key: &[u8]) -> heed::Result<Option<&'txn [u8]>> {
        match self.inner.get(txn, key)? {
            Some(stored) => self.check(key, stored).map(Some),
            None => {
                self.check_below(txn, key)?;
                self.check_neighbour(self.inner.get_greater_than_or_equal_to(txn, key)?, |found| found > key)?;
                Ok(None)
            }
        }
    }

    /// Checks the record just below `key`, if any: intact, and below it
    /// (a search misled by a damaged key lands among records out of order).
    fn check_below(&self, txn: &RoTxn, key: &[u8]) -> heed::Result<()> {
        self.check_neighbour(self.inner.get_lower_than(txn, key)?, |found| found < key)
    }

    /// Checks the first record at or above `key`, if any.
    fn check_at_or_above(&self, txn: &RoTxn, key: &[u8]) -> heed::Result<()> {
        self.check_neighbour(self.inner.get_greater_than_or_equal_to(txn, key)?, |found| found >= key)
    }

    /// Checks the record just above `key`, if any.
    fn check_above(&self, txn: &RoTxn, key: &[u8]) -> heed::Result<()> {
        self.check_neighbour(self.inner.get_greater_than(txn, key)?, |found| found > key)
    }

    fn check_neighbour(&self, item: Option<(&[u8], &[u8])>, in_order: impl Fn(&[u8]) -> bool) -> heed::Result<()> {
        let Some((found, stored)) = item else { return Ok(()) };
        self.check(found, stored)?;
        if in_order(found) { Ok(()) } else { Err(self.mismatch(found)) }
    }

    /// The LMDB database underneath (values with their trailers), for
    /// tests that compare raw contents.
    #[cfg(test)]
    pub(crate) fn raw(&self) -> Database<Bytes, Bytes> {
        self.inner
    }

    /// Stores `value` with its checksum (recorded for the journal as
    /// stored, trailer included).
    ///
    /// The value and its trailer are assembled in a buffer of the calling
    /// thread (the writer's), reused from put to put: no allocation per put.
    pub fn put(&self, txn: &mut RwTxn, key: &[u8], value: &[u8]) -> heed::Result<()> {
        self.put_parts(txn, key, &[value])
    }

    /// [`Db::put`] of the value `parts` make one after the other: a caller
    /// whose value is a fixed head and a borrowed body (an inline span and
    /// its bytes) stores it without assembling it in a buffer of its own.
    pub fn put_parts(&self, txn: &mut RwTxn, key: &[u8], parts: &[&[u8]]) -> heed::Result<()> {
        thread_local! {
            static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        STORED.with_borrow_mut(|stored| {
            stored.clear();
            for part in parts {
                stored.extend_from_slice(part);
            }
            let checksum = record_checksum(key, stored);
            stored.extend_from_slice(&checksum.to_le_bytes());
            let mut effects = self.recorder.effects();
            daemon::journal::put(txn, (self.index, &self.inner), key, stored, effects.as_deref_mut())
        })
    }

    pub fn delete(&self, txn: &mut RwTxn, key: &[u8]) -> heed::Result<bool> {
        let mut effects = self.recorder.effects();
        daemon::journal::delete(txn, (self.index, &self.inner), key, effects.as_deref_mut())
    }

    pub fn clear(&self, txn: &mut RwTxn) -> heed::Result<()> {
        let mut effects = self.recorder.effects();
        daemon::journal::clear(txn, (self.index, &self.inner), effects.as_deref_mut())
    }

    /// The last record at or below `key`; the record above it is checked
    /// too (a damaged key there may be the true answer).
    pub fn get_lower_than_or_equal_to<'txn>(
        &self,
        txn: &'txn RoTxn,
        key: &[u8],
    ) -> heed::Result<Option<(&'txn [u8], &'txn [u8])>> {
        let found =
            self.inner.get_lower_than_or_equal_to(txn, key)?.map(|item| self.check_item(Ok(item))).transpose()?;
        if found.is_none_or(|(found_key, _)| found_key != key) {
            self.check_above(txn, key)?;
        }
        Ok(found)
    }

    pub fn iter<'txn>(
        &self,
        txn: &'txn RoTxn,
    ) -> heed::Result<impl Iterator<Item = heed::Result<(&'txn [u8], &'txn [u8])>> + use<'txn>> {
        let db = *self;
        Ok(self.inner.iter(txn)?.map(move |item| db.check_item(item)))
    }

    /// The records in `range`, in key order. A walk that ends is proven
    /// complete: the record just before the start and the record that
    /// ended the walk are read and must be intact (a flipped bit in a key
    /// inside the range can move it out, which would end a listing early
    /// with "no more").
    pub fn range<'txn, R: RangeBounds<[u8]>>(
        &self,
        txn: &'txn RoTxn,
        range: &R,
    ) -> heed::Result<impl Iterator<Item = heed::Result<(&'txn [u8], &'txn [u8])>> + use<'txn, R>> {
        self.walk(txn, range.start_bound(), owned(range.end_bound()))
    }

    fn walk<'txn>(
        &self,
        txn: &'txn RoTxn,
        start: Bound<&[u8]>,
        end: Bound<Vec<u8>>,
    ) -> heed::Result<impl Iterator<Item = heed::Result<(&'txn [u8], &'txn [u8])>> + use<'txn>> {
        match start {
            Bound::Included(key) | Bound::Excluded(key) => self.check_below(txn, key)?,
            Bound::Unbounded => {}
        }
        let start = owned(start);
        let walk = self.inner.range(txn, &(as_ref(&start), Bound::Unbounded))?;
        let before_start = move |key: &[u8]| match &start {
            Bound::Included(start) => key < start.as_slice(),
            Bound::Excluded(start) => key <= start.as_slice(),
            Bound::Unbounded => false,
        };
        Ok(checked_walk(*self, walk, Direction::Forward, before_start, move |key| match &end {
            Bound::Included(end) => key > end.as_slice(),
            Bound::Excluded(end) => key >= end.as_slice(),
            Bound::Unbounded => false,
        }))
    }

    /// [`Db::range`] backwards.
    pub fn rev_range<'txn, R: RangeBounds<[u8]>>(
        &self,
        txn: &'txn RoTxn,
        range: &R,
    ) -> heed::Result<impl Iterator<Item = heed::Result<(&'txn [u8], &'txn [u8])>> + use<'txn, R>> {
        let start = owned(range.start_bound());
        let end = owned(range.end_bound());
        match &end {
            Bound::Included(key) => self.check_above(txn, key)?,
            Bound::Excluded(key) => self.check_at_or_above(txn, key)?,
            Bound::Unbounded => {}
        }
        let walk = self.inner.rev_range(txn, &(Bound::Unbounded, as_ref(&end)))?;
        let before_start = move |key: &[u8]| match &end {
            Bound::Included(end) => key > end.as_slice(),
            Bound::Excluded(end) => key >= end.as_slice(),
            Bound::Unbounded => false,
        };
        Ok(checked_walk(*self, walk, Direction::Backward, before_start, move |key| match &start {
            Bound::Included(start) => key < start.as_slice(),
            Bound::Excluded(start) => key <= start.as_slice(),
            Bound::Unbounded => false,
        }))
    }

    /// The records whose key starts with `prefix` ([`Db::range`]'s checks).
    pub fn prefix_iter<'txn>(
        &self,
        txn: &'txn RoTxn,
        prefix: &[u8],
    ) -> heed::Result<impl Iterator<Item = heed::Result<(&'txn [u8], &'txn [u8])>> + use<'txn>> {
        let end = match prefix_successor(prefix) {
            Some(successor) => Bound::Excluded(successor),
            None => Bound::Unbounded,
        };
        self.walk(txn, Bound::Included(prefix), end)
    }

    /// Every record, checked, without stopping at the first damage: the
    /// keys whose checksum does not match (for `metad --verify`).
    pub fn damaged_keys(&self, txn: &RoTxn) -> heed::Result<(u64, Vec<Vec<u8>>)> {
        let mut count = 0u64;
        let mut damaged = Vec::new();
        for item in self.inner.iter(txn)? {
            let (key, stored) = item?;
            count += 1;
            if !self.map.readable(key) || !self.map.readable(stored) {
                damaged.push(key.get(..16).filter(|_| self.map.readable(key)).unwrap_or_default().to_vec());
                continue;
            }
            let intact = stored.len().checked_sub(CHECKSUM_BYTES).is_some_and(|split| {
                let (value, trailer) = stored.split_at(split);
                trailer == record_checksum(key, value).to_le_bytes()
            });
            if !intact {
                damaged.push(key.to_vec());
            }
        }
        Ok((count, damaged))
    }
}

fn owned(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    bound.map(<[u8]>::to_vec)
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The smallest key above every key that starts with `prefix` (none when
/// the prefix is all 0xff).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last < u8::MAX {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
}

/// Walks `walk`, checking every record, until `past` says a key is beyond
/// the range: that record is checked too (and its damage reported) before
/// the walk ends.
/// Which way a [`checked_walk`] goes.
#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Backward,
}

/// Checks every record of `walk` until the first one `past` the range
/// (checked too, then the walk ends). A damaged branch page can steer the
/// cursor's seek or its steps: a key on the wrong side of the range's
/// start (`before_start`) or not strictly after the previous one in the
/// walk's direction is damage, refused like a checksum mismatch, never a
/// listing that silently starts in the wrong place.
fn checked_walk<'txn, I>(
    db: Db,
    walk: I,
    direction: Direction,
    before_start: impl Fn(&[u8]) -> bool,
    past: impl Fn(&[u8]) -> bool,
) -> impl Iterator<Item = heed::Result<(&'txn [u8], &'txn [u8])>>
where
    I: Iterator<Item = heed::Result<(&'txn [u8], &'txn [u8])>>,
{
    let mut ended = false;
    let mut previous: Option<&'txn [u8]> = None;
    walk.map_while(move |item| {
        if ended {
            return None;
        }
        let (key, stored) = match item {
            Ok(item) => item,
            Err(error) => return Some(Err(error)),
        };
        let value = match db.check(key, stored) {
            Ok(value) => value,
            Err(error) => {
                ended = true;
                return Some(Err(error));
            }
        };
        let in_order = match (previous, direction) {
            (None, _) => !before_start(key),
            (Some(previous), Direction::Forward) => key > previous,
            (Some(previous), Direction::Backward) => key < previous,
        };
        if !in_order {
            ended = true;
            return Some(Err(db.mismatch(key)));
        }
        if past(key) {
            ended = true;
            return None;
        }
        previous = Some(key);
        Some(Ok((key, value)))
    })
}

/// Lower-case hex of a key, for logs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The LMDB map size: address space only (the file grows as needed).
const MAP_SIZE_BYTES: usize = 1 << 40;
/// Named databases in the environment.
const DATABASES_MAX: u32 = 16;

/// The environment and its databases.
pub struct Store {
    pub env: Env<WithoutTls>,
    pub meta: Db,
    pub directories: Db,
    pub living: Db,
    pub dead: Db,
    pub files: Db,
    pub eden: Db,
    pub spans: Db,
    pub reverse_blocks: Db,
    pub block_services: Db,
    pub unlinked_dirs: Db,
    pub small_files: Db,
    /// Small page-cache folios ahead of LMDB's last page ([`Store::after_commit`]).
    ahead: Mutex<Ahead>,
}

/// Bytes of `data.mdb` past LMDB's last page kept in 4 KiB page-cache
/// folios and written ([`Store::after_commit`]). Session 15: 64 MiB (was
/// 8): a checkpoint whose snapshot grew the file past the part a full sync
/// made durable syncs in full, and an empty shard under 64 clients grows
/// by more than 8 MiB between two checkpoints (with 8 MiB 1 of 7
/// checkpoints wrote back only their pages, with 32 MiB 5 of 9, with 64
/// MiB 6 of 8; perf/results/2026-11-28-s15-md16.md).
const AHEAD_BYTES: u64 = 64 << 20;
/// Refilled when fewer than `AHEAD_BYTES − AHEAD_REFILL_BYTES` are left.
const AHEAD_REFILL_BYTES: u64 = 4 << 20;
/// Most zeros one [`Store::after_commit`] writes (64 pages, ~0.3 ms): the
/// part ahead is filled over many commits, never in one. Written at once,
/// the first 64 MiB of a new store took ~100 ms of 4 KiB writes on the
/// first mutation's path (a client retransmits after 100 ms), and each
/// 4 MiB refill ~8 ms. A commit grows the file by far less than this.
const AHEAD_STEP_BYTES: u64 = 256 << 10;
const _: () = assert!(AHEAD_STEP_BYTES <= AHEAD_REFILL_BYTES && AHEAD_REFILL_BYTES < AHEAD_BYTES);
/// One `POSIX_FADV_WILLNEED` where the part ahead stays a hole (the kernel
/// reads at most the device's read-ahead window per call).
const AHEAD_CALL_BYTES: u64 = 128 << 10;

/// `data.mdb`, written by [`Store::after_commit`], and how far its page
/// cache is known to be in small folios.
struct Ahead {
    file: Option<std::fs::File>,
    ready_to: u64,
    /// Where the refill under way ends (`ready_to` below it: more steps
    /// to write, [`AHEAD_STEP_BYTES`] per call).
    goal: u64,
    /// Written with zeros (where the journal's checkpoints write back only
    /// their snapshot's pages: `daemon::journal::writes_back_used_pages_only`);
    /// elsewhere a sparse hole read in, as in session 13.
    zeros: bool,
}

impl Store {
    /// Opens (creating if needed) the environment in `folder`. Commits are
    /// synchronous (no NO_SYNC flags): a committed transaction is on disk.
    /// Refused: a store whose last run faulted inside its map (the marker
    /// of `daemon::fault`), and a damaged file (`daemon::lmdb::check`,
    /// before LMDB maps it).
    pub fn open(folder: &Path) -> Result<Self, StoreError> {
        if let Some((marker, line)) = daemon::fault::marker(folder) {
            let folder = folder.display().to_string();
            return Err(StoreError::Faulted { folder, marker: marker.display().to_string(), line });
        }
        Self::open_despite_fault(folder)
    }

    /// [`Store::open`] without the fault marker's refusal, for `metad
    /// --verify` (which checks the store the marker points at).
    pub fn open_despite_fault(folder: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(folder)
            .map_err(|source| StoreError::Folder { path: folder.display().to_string(), source })?;
        // Before LMDB maps the file (and before the check, which must see
        // what LMDB will): put it back at the journal's checkpoint.
        let restored = daemon::journal::restore(folder)?;
        daemon::lmdb::check(folder)?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(MAP_SIZE_BYTES).max_dbs(DATABASES_MAX).max_readers(1024);
        // SAFETY: heed requires that one process does not open the same
        // environment twice; the daemon opens its folder exactly once.
        let env = unsafe { options.flags(EnvFlags::NO_READ_AHEAD).open(folder)? };
        let data = folder.join("data.mdb");
        let file = std::fs::File::open(&data)
            .map_err(|source| StoreError::Folder { path: data.display().to_string(), source })?;
        let (start, size) = daemon::fault::mapping_of(&data).unwrap_or((0, 0));
        let map: &'static MapBounds = Box::leak(Box::new(MapBounds {
            start,
            size,
            file_bytes: AtomicU64::new(file.metadata().map(|metadata| metadata.len()).unwrap_or(0)),
            file,
        }));
        let recorder: &'static Recorder =
            Box::leak(Box::new(Recorder { on: AtomicBool::new(false), effects: Mutex::new(Effects::default()) }));
        let mut wtxn = env.write_txn()?;
        let mut index = 0u8;
        let mut create = |name: &'static str, what: &'static str| -> Result<Db, StoreError> {
            let inner = env.create_database::<Bytes, Bytes>(&mut wtxn, Some(name))?;
            index += 1;
            Ok(Db { inner, name, what, map, index: index - 1, recorder })
        };
        let store = Store {
            meta: create("meta", "checksum of a meta record")?,
            directories: create("directories", "checksum of a directory record")?,
            living: create("living", "checksum of a living entry")?,
            dead: create("dead", "checksum of a dead entry")?,
            files: create("files", "checksum of a file record")?,
            eden: create("eden", "checksum of an eden record")?,
            spans: create("spans", "checksum of a span record")?,
            reverse_blocks: create("reverse_blocks", "checksum of a reverse block record")?,
            block_services: create("block_services", "checksum of a block service record")?,
            unlinked_dirs: create("unlinked_dirs", "checksum of an unlinked directory record")?,
            small_files: create("small_files", "checksum of a small-file create record")?,
            env: env.clone(),
            ahead: {
                let file = std::fs::OpenOptions::new().read(true).write(true).open(&data).ok();
                let zeros = file.as_ref().is_some_and(|file| daemon::journal::writes_back_used_pages_only(file, &data));
                Mutex::new(Ahead { file, ready_to: 0, goal: 0, zeros })
            },
        };
        store.check_format(&mut wtxn, folder)?;
        wtxn.commit()?;
        if let Some(restored) = restored {
            let inner: Vec<Database<Bytes, Bytes>> = store.databases().iter().map(|db| db.inner).collect();
            let replayed = restored.replay(&store.env, &inner)?;
            tracing::info!(
                checkpoint = replayed.checkpoint_txn,
                records = replayed.records,
                last = replayed.last_txn,
                "store restored to its journal's checkpoint and the records after it replayed"
            );
        }
        Ok(store)
    }

    /// Starts (or stops) gathering the effects of writes for the journal.
    pub fn record(&self, on: bool) {
        self.meta.recorder.on.store(on, Ordering::Relaxed);
    }

    /// Moves the effects gathered so far into `into` (emptied first),
    /// leaving the recorder empty: after a commit.
    pub fn take_effects(&self, into: &mut Effects) {
        into.reset();
        std::mem::swap(&mut *self.meta.recorder.lock(), into);
    }

    /// After the writer's commit: keeps the page cache of `data.mdb` past
    /// LMDB's last page in 4 KiB folios, [`AHEAD_BYTES`] ahead, and, where
    /// the journal's checkpoints write back only their snapshot's pages
    /// (ext4), that part of the file written (zeros), not a hole.
    ///
    /// LMDB writes a run of new pages at its end in one `writev`, and for
    /// pages not yet cached the kernel (ext4, 6.x) makes one large folio
    /// sized by that write. Each later 4 KiB write of a page in it walks
    /// the buffer heads of the whole folio (`ext4_block_write_begin`):
    /// 3.6 × the CPU per create when the whole file is in large folios
    /// (perf/results s12-md13b). So the part ahead is written first, one
    /// page per write, which makes folios of one page; LMDB's writes then
    /// land in them. Session 13 extended the file sparse and read the hole
    /// in with `POSIX_FADV_WILLNEED` (clean folios, nothing to write back);
    /// since session 15 the part is written, so that the pages LMDB adds
    /// there overwrite blocks that exist: once a full sync has made them
    /// durable, a checkpoint may write back only the pages its snapshot
    /// uses with no metadata to sync (`daemon::journal`'s `writeback`; a
    /// hole below a snapshot's end makes every checkpoint a full
    /// `fdatasync`). The zeros cost one write-back of each page ahead, and
    /// disk space: elsewhere (tmpfs, other file systems) the part ahead
    /// stays a sparse hole read in with `POSIX_FADV_WILLNEED` (clean
    /// folios), as in session 13.
    /// LMDB does not read the file's size (only its meta pages say where
    /// its pages end), and `daemon::lmdb::check` only needs the file to
    /// reach its last page. Past that page nothing of LMDB's is live (a
    /// restore leaves later pages there), so the zeros overwrite nothing.
    /// Called between write transactions only (LMDB writes past its last
    /// page only inside one). The zeros are written [`AHEAD_STEP_BYTES`]
    /// per call at most, so a commit's answer never waits for more.
    /// Best effort: a failure costs speed, not correctness.
    pub fn after_commit(&self) {
        let Ok(mut ahead) = self.ahead.lock() else { return };
        let info = self.env.info();
        // LMDB's page is the OS page.
        let page = 4096u64;
        let end = (info.last_page_number as u64 + 1) * page;
        if ahead.ready_to >= ahead.goal {
            if ahead.ready_to >= end + AHEAD_BYTES - AHEAD_REFILL_BYTES {
                return;
            }
            ahead.goal = end + AHEAD_BYTES;
        }
        let target = ahead.goal;
        let mut at = ahead.ready_to.max(end);
        let Some(file) = ahead.file.as_ref() else { return };
        if ahead.zeros {
            let zeros = [0u8; 4096];
            let stop = target.min(at + AHEAD_STEP_BYTES);
            while at < stop {
                if std::os::unix::fs::FileExt::write_all_at(file, &zeros, at).is_err() {
                    return;
                }
                at += page;
            }
        } else {
            let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
            if size < target && file.set_len(target).is_err() {
                return;
            }
            while at < target {
                let len = AHEAD_CALL_BYTES.min(target - at);
                // SAFETY: an advice on our own descriptor; no memory is passed.
                unsafe {
                    libc::posix_fadvise(
                        std::os::fd::AsRawFd::as_raw_fd(file),
                        at as libc::off_t,
                        len as libc::off_t,
                        libc::POSIX_FADV_WILLNEED,
                    );
                }
                at += len;
            }
        }
        ahead.ready_to = at;
    }

    /// Drops the effects gathered so far: after a transaction was aborted.
    pub fn discard_effects(&self) {
        self.meta.recorder.lock().reset();
    }

    /// Whether the effects of writes are being recorded ([`Store::record`]).
    pub fn recording(&self) -> bool {
        self.meta.recorder.on.load(Ordering::Relaxed)
    }

    /// Where the effects stand, to drop a nested transaction's on abort
    /// (and to tell whether a request wrote: `logic::Shard::handle_mutation`).
    pub fn effects_mark(&self) -> Mark {
        self.meta.recorder.lock().mark()
    }

    /// Drops the effects gathered after `mark` (an aborted nested
    /// transaction's).
    pub fn effects_truncate(&self, mark: Mark) {
        self.meta.recorder.lock().truncate_to(mark);
    }

    /// Every database, for walks over all records. Its order is the
    /// journal's database numbering: append new databases at the end.
    pub fn databases(&self) -> [Db; 11] {
        [
            self.meta,
            self.directories,
            self.living,
            self.dead,
            self.files,
            self.eden,
            self.spans,
            self.reverse_blocks,
            self.block_services,
            self.unlinked_dirs,
            self.small_files,
        ]
    }

    /// Stamps a new store with [`STORE_FORMAT`]; refuses one written by a
    /// metad before the checksums (values without them would all read as
    /// damage) or by a later format; stamps a format-2 store 3: format 3
    /// reads every format-2 record as it was (a file record without a
    /// create memory, the memories in `small_files`), while a metad of
    /// format 2 would not find the memories of the files made since.
    fn check_format(&self, wtxn: &mut RwTxn, folder: &Path) -> Result<(), StoreError> {
        let path = folder.display().to_string();
        match self.meta.inner.get(wtxn, MetaKey::FORMAT)? {
            Some(_) => {
                let stored = self.meta.get(wtxn, MetaKey::FORMAT)?.ok_or(StoreError::Corrupt("store format"))?;
                let found =
                    stored.try_into().map(u32::from_le_bytes).map_err(|_| StoreError::Corrupt("store format"))?;
                if !(STORE_FORMAT_OLDEST..=STORE_FORMAT).contains(&found) {
                    return Err(StoreError::Format { path, found });
                }
                if found != STORE_FORMAT {
                    self.meta.put(wtxn, MetaKey::FORMAT, &STORE_FORMAT.to_le_bytes())?;
                }
            }
            None if self.meta.inner.len(wtxn)? > 0 => return Err(StoreError::Format { path, found: 1 }),
            None => self.meta.put(wtxn, MetaKey::FORMAT, &STORE_FORMAT.to_le_bytes())?,
        }
        Ok(())
    }

    pub fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>, StoreError> {
        Ok(self.env.read_txn()?)
    }

    pub fn write_txn(&self) -> Result<RwTxn<'_>, StoreError> {
        Ok(self.env.write_txn()?)
    }
}

// ---- keys ----

/// Keys of the `meta` database.
pub struct MetaKey;

impl MetaKey {
    /// The 16-byte per-shard secret that derives eden cookies.
    pub const SECRET: &'static [u8] = b"secret";
    /// The last block id handed out (u64 LE).
    pub const LAST_BLOCK_ID: &'static [u8] = b"last_block_id";
    /// The store format (u32 LE), [`STORE_FORMAT`].
    pub const FORMAT: &'static [u8] = b"format";

    /// The inode counter of a type (u64 LE): no id above it was handed
    /// out. Since session 16 it is the end of the block of ids metad hands
    /// out from memory (`logic::INODE_IDS_PER_COUNTER_WRITE`), written once
    /// per block; before, the last id used (written per create).
    pub fn counter(inode_type: InodeType) -> [u8; 9] {
        let mut key = *b"counter/\0";
        key[8] = inode_type as u8;
        key
    }
}

pub fn inode_key(inode: InodeId) -> [u8; 8] {
    inode.get().to_be_bytes()
}

/// Longest living key: dir, hash, name.
pub const LIVING_KEY_BYTES_MAX: usize = 16 + wire::limits::NAME_BYTES_MAX;
/// Longest dead key: dir, hash, name, NUL, creation time.
pub const DEAD_KEY_BYTES_MAX: usize = LIVING_KEY_BYTES_MAX + 1 + 8;
// LMDB's default key size limit is 511 bytes.
const _: () = assert!(DEAD_KEY_BYTES_MAX <= 511);

/// `dir ‖ hash` — the prefix of every entry of one hash in a directory.
pub fn hash_prefix(dir: InodeId, name_hash: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&dir.get().to_be_bytes());
    key[8..].copy_from_slice(&name_hash.to_be_bytes());
    key
}

/// A living or dead key built on the stack (keys are built on every
/// request; no allocation).
#[derive(Clone, Copy)]
pub struct KeyBuf {
    bytes: [u8; DEAD_KEY_BYTES_MAX],
    len: usize,
}

impl KeyBuf {
    fn new() -> Self {
        Self { bytes: [0; DEAD_KEY_BYTES_MAX], len: 0 }
    }

    /// Appends; the callers' inputs are bounded (names ≤ 255 bytes) so the
    /// buffer cannot overflow, and an overflow would be cut, not a panic.
    fn push(&mut self, part: &[u8]) {
        let end = (self.len + part.len()).min(DEAD_KEY_BYTES_MAX);
        let take = end - self.len;
        if let (Some(target), Some(source)) = (self.bytes.get_mut(self.len..end), part.get(..take)) {
            target.copy_from_slice(source);
        }
        self.len = end;
    }
}

impl std::ops::Deref for KeyBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Living-map key.
pub fn living_key(dir: InodeId, name_hash: u64, name: &[u8]) -> KeyBuf {
    let mut key = KeyBuf::new();
    key.push(&hash_prefix(dir, name_hash));
    key.push(name);
    key
}

/// Prefix of every dead-map key of one name: `dir ‖ hash ‖ name ‖ 0x00`.
pub fn dead_name_prefix(dir: InodeId, name_hash: u64, name: &[u8]) -> KeyBuf {
    let mut key = living_key(dir, name_hash, name);
    key.push(&[0]);
    key
}

/// Dead-map key of one version of a name.
pub fn dead_key(dir: InodeId, name_hash: u64, name: &[u8], creation_time: EggsTime) -> KeyBuf {
    let mut key = dead_name_prefix(dir, name_hash, name);
    key.push(&creation_time.get().to_be_bytes());
    key
}

/// A living or dead key split into its parts.
pub struct EntryKey<'a> {
    pub dir: InodeId,
    pub name_hash: u64,
    pub name: &'a [u8],
    /// Dead keys only.
    pub creation_time: EggsTime,
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

pub fn parse_living_key(key: &[u8]) -> Result<EntryKey<'_>, StoreError> {
    let corrupt = StoreError::Corrupt("living key");
    let dir = be_u64(key).ok_or(StoreError::Corrupt("living key"))?;
    let name_hash = key.get(8..).and_then(be_u64).ok_or(corrupt)?;
    let name = key.get(16..).unwrap_or_default();
    Ok(EntryKey { dir: InodeId::new(dir), name_hash, name, creation_time: EggsTime::ZERO })
}

pub fn parse_dead_key(key: &[u8]) -> Result<EntryKey<'_>, StoreError> {
    let corrupt = || StoreError::Corrupt("dead key");
    if key.len() < 16 + 1 + 1 + 8 {
        return Err(corrupt());
    }
    let dir = be_u64(key).ok_or_else(corrupt)?;
    let name_hash = key.get(8..).and_then(be_u64).ok_or_else(corrupt)?;
    let split = key.len() - 8;
    let name = key.get(16..split - 1).ok_or_else(corrupt)?;
    let creation_time = key.get(split..).and_then(be_u64).ok_or_else(corrupt)?;
    Ok(EntryKey { dir: InodeId::new(dir), name_hash, name, creation_time: EggsTime::new(creation_time) })
}

pub fn span_key(inode: InodeId, offset: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&inode.get().to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

pub fn parse_span_key(key: &[u8]) -> Result<(InodeId, u64), StoreError> {
    let corrupt = || StoreError::Corrupt("span key");
    let inode = be_u64(key).ok_or_else(corrupt)?;
    let offset = key.get(8..).and_then(be_u64).ok_or_else(corrupt)?;
    Ok((InodeId::new(inode), offset))
}

pub fn reverse_key(block_service: BlockServiceId, block: BlockId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&block_service.get().to_be_bytes());
    key[8..].copy_from_slice(&block.get().to_be_bytes());
    key
}

pub fn parse_be_u64_key(key: &[u8], what: &'static str) -> Result<u64, StoreError> {
    be_u64(key).ok_or(StoreError::Corrupt(what))
}

// ---- records ----

fn reader_u64(reader: &mut Reader<'_>, what: &'static str) -> Result<u64, StoreError> {
    reader.u64().map_err(|_| StoreError::Corrupt(what))
}

fn reader_u32(reader: &mut Reader<'_>, what: &'static str) -> Result<u32, StoreError> {
    reader.u32().map_err(|_| StoreError::Corrupt(what))
}

fn reader_u8(reader: &mut Reader<'_>, what: &'static str) -> Result<u8, StoreError> {
    reader.u8().map_err(|_| StoreError::Corrupt(what))
}

pub fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt(what))?;
    Ok(u64::from_le_bytes(array))
}

/// A directory: `parent u64 | mtime u64 | hash_mode u8 | policy_len u8 | policy`.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectoryRecord {
    /// Null when unlinked (removed), except for the root which has none.
    pub parent: InodeId,
    pub mtime: EggsTime,
    pub hash_mode: u8,
    pub policy: Vec<u8>,
}

impl DirectoryRecord {
    pub fn encode(&self) -> Vec<u8> {
        let policy = &self.policy[..self.policy.len().min(POLICY_BYTES_MAX)];
        let mut out = Vec::with_capacity(18 + policy.len());
        out.extend_from_slice(&self.parent.get().to_le_bytes());
        out.extend_from_slice(&self.mtime.get().to_le_bytes());
        out.push(self.hash_mode);
        out.push(policy.len() as u8);
        out.extend_from_slice(policy);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        const WHAT: &str = "directory record";
        let mut reader = Reader::new(bytes);
        let parent = InodeId::new(reader_u64(&mut reader, WHAT)?);
        let mtime = EggsTime::new(reader_u64(&mut reader, WHAT)?);
        let hash_mode = reader_u8(&mut reader, WHAT)?;
        let len = reader_u8(&mut reader, WHAT)? as usize;
        let policy = reader.take(len).map_err(|_| StoreError::Corrupt(WHAT))?.to_vec();
        Ok(Self { parent, mtime, hash_mode, policy })
    }
}

/// A living entry: `creation_time u64 | inode u64` (inode with owning bit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LivingRecord {
    pub creation_time: EggsTime,
    pub inode: InodeId,
}

impl LivingRecord {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.creation_time.get().to_le_bytes());
        out[8..].copy_from_slice(&self.inode.get().to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        const WHAT: &str = "living record";
        let mut reader = Reader::new(bytes);
        let creation_time = EggsTime::new(reader_u64(&mut reader, WHAT)?);
        let inode = InodeId::new(reader_u64(&mut reader, WHAT)?);
        Ok(Self { creation_time, inode })
    }
}

/// A linked file: `mtime u64 | size u64 | type u8`, then for a file
/// create_small_file made (store format 3) its [`CreateMemory`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FileRecord {
    pub mtime: EggsTime,
    pub size: u64,
    pub inode_type: InodeType,
}

fn decode_file_type(value: u8, what: &'static str) -> Result<InodeType, StoreError> {
    match InodeType::from_bits(value) {
        Some(t @ (InodeType::File | InodeType::Symlink)) => Ok(t),
        _ => Err(StoreError::Corrupt(what)),
    }
}

impl FileRecord {
    /// Bytes of a record without a create memory.
    pub const BYTES: usize = 17;

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..8].copy_from_slice(&self.mtime.get().to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        out[16] = self.inode_type as u8;
        out
    }

    /// The record of a file create_small_file made: `memory` after it.
    pub fn encode_with_memory(&self, memory: &CreateMemory) -> [u8; Self::BYTES + CreateMemory::BYTES] {
        let mut out = [0u8; Self::BYTES + CreateMemory::BYTES];
        out[..Self::BYTES].copy_from_slice(&self.encode());
        out[Self::BYTES..].copy_from_slice(&memory.encode());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        Self::decode_with_memory(bytes).map(|(record, _)| record)
    }

    /// The record and its create memory, if it has one. Any other length
    /// than the two is corrupt.
    pub fn decode_with_memory(bytes: &[u8]) -> Result<(Self, Option<CreateMemory>), StoreError> {
        const WHAT: &str = "file record";
        let (head, memory) = match bytes.len() {
            Self::BYTES => (bytes, None),
            n if n == Self::BYTES + CreateMemory::BYTES => {
                let (head, memory) = bytes.split_at(Self::BYTES);
                (head, Some(CreateMemory::decode(memory)?))
            }
            _ => return Err(StoreError::Corrupt(WHAT)),
        };
        let mut reader = Reader::new(head);
        let mtime = EggsTime::new(reader_u64(&mut reader, WHAT)?);
        let size = reader_u64(&mut reader, WHAT)?;
        let inode_type = decode_file_type(reader_u8(&mut reader, WHAT)?, WHAT)?;
        Ok((Self { mtime, size, inode_type }, memory))
    }
}

/// What the shard remembers of one create_small_file, to answer its
/// re-sends: `create_id u64 | crc u32 | created u64`, little-endian. In
/// the file's record (store format 3), or in `small_files` (format 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateMemory {
    pub create_id: u64,
    /// The contents' CRC.
    pub crc: u32,
    /// When the create was applied.
    pub created: EggsTime,
}

impl CreateMemory {
    pub const BYTES: usize = 20;

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..8].copy_from_slice(&self.create_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.crc.to_le_bytes());
        out[12..].copy_from_slice(&self.created.get().to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        const WHAT: &str = "small file create record";
        if bytes.len() != Self::BYTES {
            return Err(StoreError::Corrupt(WHAT));
        }
        let mut reader = Reader::new(bytes);
        let create_id = reader_u64(&mut reader, WHAT)?;
        let crc = reader_u32(&mut reader, WHAT)?;
        let created = EggsTime::new(reader_u64(&mut reader, WHAT)?);
        Ok(Self { create_id, crc, created })
    }
}

/// An eden file: `deadline u64 | size u64 | type u8`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdenRecord {
    /// After this, the file may be expunged.
    pub deadline: EggsTime,
    /// Bytes of spans added so far (the offset of the next span).
    pub size: u64,
    pub inode_type: InodeType,
}

impl EdenRecord {
    pub fn encode(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[..8].copy_from_slice(&self.deadline.get().to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        out[16] = self.inode_type as u8;
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        const WHAT: &str = "eden record";
        let mut reader = Reader::new(bytes);
        let deadline = EggsTime::new(reader_u64(&mut reader, WHAT)?);
        let size = reader_u64(&mut reader, WHAT)?;
        let inode_type = decode_file_type(reader_u8(&mut reader, WHAT)?, WHAT)?;
        Ok(Self { deadline, size, inode_type })
    }
}

/// State of an eden file's last span (spans of linked files are clean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SpanState {
    Clean = 0,
    /// Blocks assigned, not yet certified.
    Dirty = 1,
    /// Being expunged: erase certificates handed out.
    Condemned = 2,
}

/// One block of a stored span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoredBlock {
    pub block_service_id: BlockServiceId,
    pub block_id: BlockId,
    pub crc: u32,
    pub size: u32,
}

const STORED_BLOCK_BYTES: usize = 24;

/// What a span holds.
#[derive(Clone, Debug, PartialEq)]
pub enum SpanPayload {
    Inline(Vec<u8>),
    ZeroFill,
    Blocks { storage_class: u8, parity: wire::Parity, blocks: Vec<StoredBlock> },
}

/// A span: `size u32 | crc u32 | state u8 | storage_class u8 | parity u8 |
/// payload` where the payload is the inline bytes, nothing (zero-fill), or
/// D+P × `block_service u64 | block_id u64 | crc u32 | size u32`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub size: u32,
    pub crc: u32,
    pub state: SpanState,
    pub payload: SpanPayload,
}

impl SpanRecord {
    /// Bytes before the payload: size, crc, state, storage class, parity.
    pub const HEAD_BYTES: usize = 11;

    /// The head of a clean inline span whose payload is `size` bytes with
    /// `crc`: followed by those bytes it is the record [`SpanRecord::encode`]
    /// makes of it (for [`Db::put_parts`], without copying the bytes into
    /// a record first).
    pub fn inline_head(size: u32, crc: u32) -> [u8; Self::HEAD_BYTES] {
        let mut out = [0u8; Self::HEAD_BYTES];
        out[..4].copy_from_slice(&size.to_le_bytes());
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out[8] = SpanState::Clean as u8;
        out[9] = wire::span::STORAGE_CLASS_INLINE;
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEAD_BYTES + SPAN_BLOCKS_MAX * STORED_BLOCK_BYTES);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.push(self.state as u8);
        match &self.payload {
            SpanPayload::Inline(bytes) => {
                out.push(wire::span::STORAGE_CLASS_INLINE);
                out.push(0);
                out.extend_from_slice(bytes);
            }
            SpanPayload::ZeroFill => {
                out.push(wire::span::STORAGE_CLASS_ZERO_FILL);
                out.push(0);
            }
            SpanPayload::Blocks { storage_class, parity, blocks } => {
                out.push(*storage_class);
                out.push(parity.0);
                for block in blocks {
                    out.extend_from_slice(&block.block_service_id.get().to_le_bytes());
                    out.extend_from_slice(&block.block_id.get().to_le_bytes());
                    out.extend_from_slice(&block.crc.to_le_bytes());
                    out.extend_from_slice(&block.size.to_le_bytes());
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        const WHAT: &str = "span record";
        let mut reader = Reader::new(bytes);
        let size = reader_u32(&mut reader, WHAT)?;
        let crc = reader_u32(&mut reader, WHAT)?;
        let state = match reader_u8(&mut reader, WHAT)? {
            0 => SpanState::Clean,
            1 => SpanState::Dirty,
            2 => SpanState::Condemned,
            _ => return Err(StoreError::Corrupt(WHAT)),
        };
        let storage_class = reader_u8(&mut reader, WHAT)?;
        let parity = wire::Parity(reader_u8(&mut reader, WHAT)?);
        let payload = match storage_class {
            wire::span::STORAGE_CLASS_INLINE => SpanPayload::Inline(reader.rest().to_vec()),
            wire::span::STORAGE_CLASS_ZERO_FILL => SpanPayload::ZeroFill,
            _ => {
                let rest = reader.rest();
                if rest.len() != parity.total_blocks() * STORED_BLOCK_BYTES || !parity.is_valid_for_blocks() {
                    return Err(StoreError::Corrupt(WHAT));
                }
                let mut blocks = Vec::with_capacity(parity.total_blocks());
                for _ in 0..parity.total_blocks() {
                    blocks.push(StoredBlock {
                        block_service_id: BlockServiceId::new(reader_u64(&mut reader, WHAT)?),
                        block_id: BlockId::new(reader_u64(&mut reader, WHAT)?),
                        crc: reader_u32(&mut reader, WHAT)?,
                        size: reader_u32(&mut reader, WHAT)?,
                    });
                }
                SpanPayload::Blocks { storage_class, parity, blocks }
            }
        };
        Ok(Self { size, crc, state, payload })
    }

    pub fn blocks(&self) -> &[StoredBlock] {
        match &self.payload {
            SpanPayload::Blocks { blocks, .. } => blocks,
            _ => &[],
        }
    }
}

/// Reverse index value: `inode u64 | span offset u64`.
pub fn encode_reverse(inode: InodeId, offset: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&inode.get().to_le_bytes());
    out[8..].copy_from_slice(&offset.to_le_bytes());
    out
}

pub fn decode_reverse(bytes: &[u8]) -> Result<(InodeId, u64), StoreError> {
    const WHAT: &str = "reverse block record";
    let mut reader = Reader::new(bytes);
    Ok((InodeId::new(reader_u64(&mut reader, WHAT)?), reader_u64(&mut reader, WHAT)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inline span stored from its head and its bytes
    /// ([`SpanRecord::inline_head`], [`Db::put_parts`]) is the record
    /// [`SpanRecord::encode`] makes, checksum and all.
    #[test]
    fn an_inline_span_put_in_parts_is_the_encoded_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for bytes in [&b"x"[..], &[0xa5; 100][..], &[7; wire::limits::INLINE_SPAN_BYTES_MAX][..]] {
            let crc = crc32c(bytes);
            let span = SpanRecord {
                size: bytes.len() as u32,
                crc,
                state: SpanState::Clean,
                payload: SpanPayload::Inline(bytes.to_vec()),
            };
            let (whole, parts) = (span_key(InodeId::new(1), 0), span_key(InodeId::new(2), 0));
            let mut txn = store.write_txn().unwrap();
            store.spans.put(&mut txn, &whole, &span.encode()).unwrap();
            let head = SpanRecord::inline_head(bytes.len() as u32, crc);
            store.spans.put_parts(&mut txn, &parts, &[&head, bytes]).unwrap();
            txn.commit().unwrap();
            let txn = store.read_txn().unwrap();
            let stored = store.spans.get(&txn, &parts).unwrap().unwrap();
            assert_eq!(stored, store.spans.get(&txn, &whole).unwrap().unwrap());
            assert_eq!(SpanRecord::decode(stored).unwrap(), span);
        }
    }

    // A damaged branch page can steer a range walk's seek before the
    // range's start, or its steps out of order (seen in the corruption
    // test's random flips: a listing that began below its start hash). The
    // walk refuses such a key as damage instead of returning it.
    // A damaged branch key can steer a point lookup to the leaf left of
    // the one holding the key: the lookup misses, and the first record at
    // or above the key is then the key itself, intact (the seek steps from
    // the wrong leaf into the right one). That is damage, not "not found"
    // (seen once in the corruption test's random flips: a Stat answered
    // NOT_FOUND for a file that was there).
    #[test]
    fn a_lookup_steered_past_its_record_by_a_damaged_branch_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<[u8; 8]> = (1000..3000u64).map(|n| n.to_be_bytes()).collect();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut txn = store.write_txn().unwrap();
            for key in &keys {
                store.files.put(&mut txn, key, b"a file record").unwrap();
            }
            txn.commit().unwrap();
        }
        // Raise one separator key of a branch page by one: searches for the
        // key it separates now go to the leaf on its left.
        let path = dir.path().join("data.mdb");
        let mut bytes = std::fs::read(&path).unwrap();
        const PAGE: usize = 4096;
        const BRANCH: u16 = 0x01;
        let mut steered = None;
        'pages: for page in (0..bytes.len() / PAGE).map(|n| n * PAGE) {
            let flags = u16::from_le_bytes([bytes[page + 10], bytes[page + 11]]);
            if flags & BRANCH == 0 {
                continue;
            }
            for key in &keys {
                if let Some(at) = bytes[page..page + PAGE].windows(8).position(|window| window == key) {
                    bytes[page + at + 7] += 1;
                    steered = Some(*key);
                    break 'pages;
                }
            }
        }
        let key = steered.expect("a branch page with a separator key");
        std::fs::write(&path, &bytes).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.read_txn().unwrap();
        assert!(store.files.inner.get(&txn, &key).unwrap().is_none(), "the damaged separator steers LMDB's lookup");
        assert!(store.files.get(&txn, &key).is_err(), "a lookup that missed a present record is damage");
        let next = (u64::from_be_bytes(key) + 1).to_be_bytes();
        assert!(store.files.get(&txn, &next).unwrap().is_some(), "the key now separating the leaves is found");
    }

    // What the writer's batch does with a refused mutation: its nested
    // transaction is aborted and its effects dropped back to the mark, so
    // the batch's journal record holds the accepted mutations only.
    #[test]
    fn an_aborted_nested_transaction_leaves_no_effects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.record(true);
        let mut txn = store.write_txn().unwrap();
        store.files.put(&mut txn, b"kept", b"1").unwrap();
        let mark = store.effects_mark();
        let mut nested = store.env.nested_write_txn(&mut txn).unwrap();
        store.files.put(&mut nested, b"refused", b"2").unwrap();
        store.living.clear(&mut nested).unwrap();
        nested.abort();
        store.effects_truncate(mark);
        let mut nested = store.env.nested_write_txn(&mut txn).unwrap();
        store.eden.put(&mut nested, b"accepted", b"3").unwrap();
        assert!(store.files.delete(&mut nested, b"kept").unwrap());
        assert!(!store.files.delete(&mut nested, b"never there").unwrap());
        nested.commit().unwrap();
        txn.commit().unwrap();
        let mut effects = Effects::default();
        store.take_effects(&mut effects);
        let ops: Vec<(u8, Vec<u8>)> = effects
            .ops()
            .map(|op| match op.unwrap() {
                daemon::journal::Op::Put { db, key, .. } => (db, key.to_vec()),
                daemon::journal::Op::Delete { db, key } => (db + 100, key.to_vec()),
                daemon::journal::Op::Clear { db } => (db + 200, Vec::new()),
            })
            .collect();
        let (files, eden) = (store.files.index, store.eden.index);
        assert_eq!(ops, vec![(files, b"kept".to_vec()), (eden, b"accepted".to_vec()), (files + 100, b"kept".to_vec())]);
        let indices: Vec<u8> = store.databases().iter().map(|db| db.index).collect();
        assert_eq!(indices, (0..11).collect::<Vec<u8>>(), "the journal's numbering is the order of databases()");
    }

    #[test]
    fn a_walk_refuses_keys_before_its_start_or_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = [&b"a"[..], b"b", b"c", b"d"]
            .iter()
            .map(|key| {
                let mut stored = b"value".to_vec();
                stored.extend_from_slice(&record_checksum(key, b"value").to_le_bytes());
                (key.to_vec(), stored)
            })
            .collect();
        let walk = |order: &[usize], direction: Direction, start: &'static [u8], end: &'static [u8]| {
            let items: Vec<heed::Result<(&[u8], &[u8])>> =
                order.iter().map(|&i| Ok((records[i].0.as_slice(), records[i].1.as_slice()))).collect();
            type KeyTest = Box<dyn Fn(&[u8]) -> bool>;
            let (before_start, past): (KeyTest, KeyTest) = match direction {
                Direction::Forward => (Box::new(move |key| key < start), Box::new(move |key| key > end)),
                Direction::Backward => (Box::new(move |key| key > start), Box::new(move |key| key < end)),
            };
            checked_walk(store.files, items.into_iter(), direction, before_start, past)
                .map(|item| item.map(|(key, _)| key.to_vec()).map_err(|_| ()))
                .collect::<Vec<_>>()
        };
        let keys = |keys: &[&[u8]]| keys.iter().map(|key| Ok(key.to_vec())).collect::<Vec<_>>();
        // In order: every key up to the end, the one past it ends the walk.
        assert_eq!(walk(&[1, 2, 3], Direction::Forward, b"b", b"c"), keys(&[b"b", b"c"]));
        assert_eq!(walk(&[2, 1, 0], Direction::Backward, b"c", b"b"), keys(&[b"c", b"b"]));
        // The seek landed before the start.
        assert_eq!(walk(&[0, 1, 2], Direction::Forward, b"b", b"d"), vec![Err(())]);
        assert_eq!(walk(&[3, 2], Direction::Backward, b"c", b"a"), vec![Err(())]);
        // A step went backwards (or repeated a key).
        let mut refused = keys(&[b"b", b"c"]);
        refused.push(Err(()));
        assert_eq!(walk(&[1, 2, 0, 3], Direction::Forward, b"b", b"d"), refused);
        assert_eq!(walk(&[1, 2, 2], Direction::Forward, b"b", b"d"), refused);
        let mut refused = keys(&[b"c", b"b"]);
        refused.push(Err(()));
        assert_eq!(walk(&[2, 1, 3], Direction::Backward, b"c", b"a"), refused);
    }

    // A flipped bit in a stored key or value is refused as corrupt, never
    // returned; the truncated file is refused at open with one line.
    #[test]
    fn damaged_records_are_refused_and_truncation_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.write_txn().unwrap();
        store.files.put(&mut txn, b"key-1", b"value").unwrap();
        store.files.inner.put(&mut txn, b"key-2", b"valuf\0\0\0\0").unwrap();
        let mut flipped = b"value".to_vec();
        flipped.extend_from_slice(&record_checksum(b"key-3", b"value").to_le_bytes());
        flipped[1] ^= 4;
        store.files.inner.put(&mut txn, b"key-3", &flipped).unwrap();
        txn.commit().unwrap();
        let txn = store.read_txn().unwrap();
        assert_eq!(store.files.get(&txn, b"key-1").unwrap(), Some(&b"value"[..]));
        for key in [&b"key-2"[..], b"key-3"] {
            let error = StoreError::from(store.files.get(&txn, key).unwrap_err());
            assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
        }
        let items: Vec<_> = store.files.iter(&txn).unwrap().collect();
        assert!(items[0].is_ok() && items[1].is_err() && items[2].is_err());
        let (records, damaged) = store.files.damaged_keys(&txn).unwrap();
        assert_eq!((records, damaged), (3, vec![b"key-2".to_vec(), b"key-3".to_vec()]));
        drop(txn);
        drop(store);
        let data = dir.path().join("data.mdb");
        let len = std::fs::metadata(&data).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len / 2).unwrap();
        let error = Store::open(dir.path()).err().expect("a truncated store is refused");
        assert!(matches!(error, StoreError::Damaged(daemon::lmdb::Damage::Truncated { .. })), "{error}");
    }

    /// Writes `format` as the store's `meta/format` (a stamp an older or a
    /// later metad would have left).
    fn stamp(folder: &Path, format: u32) {
        let store = Store::open(folder).unwrap();
        let mut txn = store.write_txn().unwrap();
        store.meta.put(&mut txn, MetaKey::FORMAT, &format.to_le_bytes()).unwrap();
        txn.commit().unwrap();
    }

    fn format_of(folder: &Path) -> u32 {
        let store = Store::open(folder).unwrap();
        let txn = store.read_txn().unwrap();
        u32::from_le_bytes(store.meta.get(&txn, MetaKey::FORMAT).unwrap().unwrap().try_into().unwrap())
    }

    // Format 2 (create memories in `small_files`) is read and stamped 3 at
    // open, its records kept as they were; a later format is refused, and
    // so is a store without a stamp (before the checksums).
    #[test]
    fn a_format_2_store_is_stamped_3_and_a_later_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(format_of(dir.path()), STORE_FORMAT);
        stamp(dir.path(), 2);
        {
            let store = Store::open(dir.path()).unwrap();
            let mut txn = store.write_txn().unwrap();
            let memory = CreateMemory { create_id: 5, crc: 6, created: EggsTime::new(7) };
            store.small_files.put(&mut txn, &inode_key(InodeId::new(9)), &memory.encode()).unwrap();
            txn.commit().unwrap();
        }
        stamp(dir.path(), 2);
        assert_eq!(format_of(dir.path()), 3, "a format-2 store is stamped 3 when opened");
        let store = Store::open(dir.path()).unwrap();
        let txn = store.read_txn().unwrap();
        let kept = store.small_files.get(&txn, &inode_key(InodeId::new(9))).unwrap().unwrap();
        assert_eq!(CreateMemory::decode(kept).unwrap().create_id, 5, "its records are kept");
        drop(txn);
        drop(store);
        stamp(dir.path(), STORE_FORMAT + 1);
        let error = Store::open(dir.path()).err().expect("a later format is refused");
        assert!(matches!(error, StoreError::Format { found, .. } if found == STORE_FORMAT + 1), "{error}");
        let unstamped = tempfile::tempdir().unwrap();
        {
            let store = Store::open(unstamped.path()).unwrap();
            let mut txn = store.write_txn().unwrap();
            store.meta.delete(&mut txn, MetaKey::FORMAT).unwrap();
            store.meta.put(&mut txn, MetaKey::SECRET, &[1; 16]).unwrap();
            txn.commit().unwrap();
        }
        let error = Store::open(unstamped.path()).err().expect("a store without a stamp is refused");
        assert!(matches!(error, StoreError::Format { found: 1, .. }), "{error}");
    }

    #[test]
    fn file_records_with_and_without_a_create_memory_round_trip() {
        let file = FileRecord { mtime: EggsTime::new(3), size: 100, inode_type: InodeType::File };
        let memory = CreateMemory { create_id: u64::MAX, crc: 0xdead_beef, created: EggsTime::new(11) };
        assert_eq!(FileRecord::decode_with_memory(&file.encode()).unwrap(), (file, None));
        let with = file.encode_with_memory(&memory);
        assert_eq!(FileRecord::decode_with_memory(&with).unwrap(), (file, Some(memory)));
        assert_eq!(FileRecord::decode(&with).unwrap(), file);
        for len in [0, FileRecord::BYTES - 1, FileRecord::BYTES + 1, with.len() - 1, with.len() + 1] {
            let mut bytes = with.to_vec();
            bytes.resize(len, 0);
            assert!(FileRecord::decode_with_memory(&bytes).is_err(), "{len} bytes");
        }
        assert!(CreateMemory::decode(&memory.encode()[1..]).is_err());
    }

    #[test]
    fn dead_keys_of_one_name_are_adjacent_and_time_ordered() {
        let dir = InodeId::ROOT;
        let a1 = dead_key(dir, 7, b"a", EggsTime::new(5));
        let a2 = dead_key(dir, 7, b"a", EggsTime::new(u64::MAX));
        let ab = dead_key(dir, 7, b"ab", EggsTime::new(0));
        assert!(*a1 < *a2 && *a2 < *ab);
        let parsed = parse_dead_key(&a2).unwrap();
        assert_eq!(parsed.name, b"a");
        assert_eq!(parsed.creation_time, EggsTime::new(u64::MAX));
        assert_eq!(parsed.name_hash, 7);
    }

    #[test]
    fn records_round_trip_and_corruption_is_an_error() {
        let span = SpanRecord {
            size: 10,
            crc: 3,
            state: SpanState::Dirty,
            payload: SpanPayload::Blocks {
                storage_class: 2,
                parity: wire::Parity::new(1, 1).unwrap(),
                blocks: vec![
                    StoredBlock {
                        block_service_id: BlockServiceId::new(1),
                        block_id: BlockId::new(2),
                        crc: 3,
                        size: 10
                    };
                    2
                ],
            },
        };
        let bytes = span.encode();
        assert_eq!(SpanRecord::decode(&bytes).unwrap(), span);
        for len in 0..bytes.len() {
            assert!(SpanRecord::decode(&bytes[..len]).is_err());
        }
        let dir = DirectoryRecord { parent: InodeId::ROOT, mtime: EggsTime::new(9), hash_mode: 0, policy: vec![1, 2] };
        assert_eq!(DirectoryRecord::decode(&dir.encode()).unwrap(), dir);
        assert!(DirectoryRecord::decode(&dir.encode()[..17]).is_err());
        assert!(FileRecord::decode(&[0; 17]).is_err());
    }

    /// The folio order of each 4 KiB page of `file` in `range` (bytes),
    /// from the page tables of a mapping of it: `Some(true)` for a page in
    /// a folio of one page, `None` when the kernel does not tell this
    /// process page frames (not root).
    fn small_folios(file: &std::fs::File, range: std::ops::Range<u64>) -> Option<bool> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::fd::AsRawFd;
        const PAGE: u64 = 4096;
        const PRESENT: u64 = 1 << 63;
        const PFN_MASK: u64 = (1 << 55) - 1;
        const COMPOUND: u64 = (1 << 15) | (1 << 16); // KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL
        let len = (range.end - range.start) as usize;
        // SAFETY: a read-only shared mapping of our own file, unmapped below;
        // only read through volatile loads of bytes inside it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                range.start as libc::off_t,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "map data.mdb");
        let look = || -> Option<bool> {
            let mut pagemap = std::fs::File::open("/proc/self/pagemap").ok()?;
            let mut flags = std::fs::File::open("/proc/kpageflags").ok()?;
            let mut all_small = true;
            for page in 0..len as u64 / PAGE {
                // SAFETY: inside the mapping made above.
                let address = unsafe { map.cast::<u8>().add((page * PAGE) as usize) };
                // SAFETY: a byte of the mapping (faults the page in).
                unsafe { std::ptr::read_volatile(address) };
                let mut entry = [0u8; 8];
                pagemap.seek(SeekFrom::Start(address as u64 / PAGE * 8)).ok()?;
                pagemap.read_exact(&mut entry).ok()?;
                let entry = u64::from_le_bytes(entry);
                let frame = entry & PFN_MASK;
                if entry & PRESENT == 0 || frame == 0 {
                    return None;
                }
                let mut bits = [0u8; 8];
                flags.seek(SeekFrom::Start(frame * 8)).ok()?;
                flags.read_exact(&mut bits).ok()?;
                all_small &= u64::from_le_bytes(bits) & COMPOUND == 0;
            }
            Some(all_small)
        };
        let all_small = look();
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(map, len) };
        all_small
    }

    // LMDB writes a run of new pages at its end in one writev; pages not
    // yet cached then become one large folio, and every later 4 KiB write
    // into it walks the whole folio's buffer heads (3.6 x the CPU per
    // create, perf/results s12-md13b). After a commit the store keeps
    // the file's page cache ahead of LMDB's end in small folios, so a run
    // written there lands in them, and the store still opens and reads
    // as before with the longer file.
    // A checkpoint writes back only its snapshot's pages while they lie
    // over blocks a full sync made durable (`daemon::journal`); pages LMDB
    // adds into a hole would need the file system's metadata synced too,
    // so every checkpoint that follows would sync in full.
    /// As many commits' worth of [`Store::after_commit`] as fill the part
    /// ahead of LMDB's end.
    fn fill_ahead(store: &Store) {
        for _ in 0..=AHEAD_BYTES / AHEAD_STEP_BYTES {
            store.after_commit();
        }
    }

    #[test]
    fn the_part_of_the_file_ahead_of_lmdb_is_written_not_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for round in 0..3u64 {
            let mut txn = store.write_txn().unwrap();
            for n in 0..400u64 {
                store.spans.put(&mut txn, &(round * 1000 + n).to_be_bytes(), &[9u8; 3000]).unwrap();
            }
            txn.commit().unwrap();
            let end = (store.env.info().last_page_number as u64 + 1) * 4096;
            let before = store.ahead.lock().unwrap().ready_to;
            store.after_commit();
            let file = std::fs::File::open(dir.path().join("data.mdb")).unwrap();
            if !store.ahead.lock().unwrap().zeros {
                eprintln!("not ext4: the part ahead stays a hole here; nothing to test");
                return;
            }
            // One commit writes a step of zeros at most (its answer waits
            // for them); the commits that follow fill the rest.
            let ready = store.ahead.lock().unwrap().ready_to;
            assert!(ready <= before.max(end) + AHEAD_STEP_BYTES, "round {round}: one call wrote up to {ready}");
            assert!(round > 0 || ready > end, "the new store's first commit starts the zeros");
            fill_ahead(&store);
            // SAFETY: a seek of our own descriptor.
            let hole = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), 0, libc::SEEK_HOLE) };
            assert!(
                hole as u64 >= end + AHEAD_BYTES - AHEAD_REFILL_BYTES,
                "round {round}: a hole at {hole}, LMDB ends at {end}"
            );
        }
    }

    #[test]
    fn pages_lmdb_adds_at_its_end_land_in_small_folios() {
        let dir = tempfile::tempdir().unwrap();
        let page = 4096u64;
        let end = |store: &Store| (store.env.info().last_page_number as u64 + 1) * page;
        let value = vec![7u8; 3 * page as usize];
        let (before, after) = {
            let store = Store::open(dir.path()).unwrap();
            let mut txn = store.write_txn().unwrap();
            store.files.put(&mut txn, b"first", b"1").unwrap();
            txn.commit().unwrap();
            fill_ahead(&store);
            let before = end(&store);
            let size = std::fs::metadata(dir.path().join("data.mdb")).unwrap().len();
            assert!(size >= before + AHEAD_BYTES, "the file reaches {AHEAD_BYTES} bytes past LMDB's end: {size}");
            // Values of 3 pages: a run of new overflow pages, written by
            // LMDB's commit in one writev.
            let mut txn = store.write_txn().unwrap();
            for n in 0..64u64 {
                store.spans.put(&mut txn, &n.to_be_bytes(), &value).unwrap();
            }
            txn.commit().unwrap();
            store.after_commit();
            let after = end(&store);
            assert!(after >= before + 64 * 3 * page, "the commit added a run of pages at the end");
            let file = std::fs::File::open(dir.path().join("data.mdb")).unwrap();
            match small_folios(&file, before..after) {
                Some(small) => assert!(small, "the pages LMDB added are in folios of one page"),
                None => eprintln!("page frames not visible to this process: folio sizes not checked"),
            }
            (before, after)
        };
        // The longer file opens, passes the start-up check, and reads.
        let store = Store::open(dir.path()).unwrap();
        let txn = store.read_txn().unwrap();
        assert_eq!(store.files.get(&txn, b"first").unwrap(), Some(&b"1"[..]));
        for n in 0..64u64 {
            assert_eq!(store.spans.get(&txn, &n.to_be_bytes()).unwrap(), Some(&value[..]));
        }
        assert!(end(&store) >= after && after > before);
    }
}
