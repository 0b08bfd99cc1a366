//! A checkpoint's writeback of `data.mdb`: only the pages its snapshot
//! uses (session 15).
//!
//! With the previous checkpoint's snapshot pinned for a whole period,
//! LMDB hands out no page freed since, so every page a commit writes is
//! a fresh page, and a page copied again by a later commit (a hot branch,
//! a leaf hit twice) is dead, dirty garbage by the time of the next
//! checkpoint. `fdatasync` wrote all of them back, one disk request per
//! scattered page (22 % of metad's CPU at 1 M files in session 14).
//!
//! Only the snapshot's own pages must reach the disk: every page below its
//! last page that its free list does not list (LMDB keeps the two sets
//! disjoint: `crate::lmdb::free_pages`). So, when the file system allows
//! it ([`Writeback::selective`]), a checkpoint writes those runs with
//! `sync_file_range(WAIT_BEFORE | WRITE)`, waits for every write in flight
//! below the snapshot's end, and leaves the free pages dirty: LMDB writes
//! them again when it reuses them, and a page reused by a later snapshot
//! is written back by that snapshot's checkpoint. `sync_file_range` makes
//! no file-system metadata durable and does not flush the disk's cache:
//!
//! - the pages must overwrite blocks that are allocated and durable, so
//!   the snapshot's last page must lie below [`Writeback::allocated_pages`]
//!   (pages found without holes before a full `fdatasync`); a snapshot
//!   that grew the file past it is synced in full, as before, and moves
//!   that mark up;
//! - the caller then writes the checkpoint's header and syncs the journal
//!   file, on the same file system: that `fdatasync` flushes the disk's
//!   cache (ext4 with barriers issues a flush, or waits for the journal
//!   commit that sends one), which makes the completed page writes
//!   durable before the header is;
//! - only ext4 overwrites a written block in place with no metadata (not
//!   with `data=journal`): on any other file system every checkpoint
//!   syncs in full.
//!
//! **Only the pages new since the last checkpoint** (session 17): a page
//! the previous checkpoint's snapshot also uses is on the disk already
//! (that checkpoint wrote it back) and unchanged (that snapshot stays
//! pinned until this checkpoint is durable, so LMDB wrote no page of it:
//! `crate::lmdb::FreePages::runs_used_since`; the meta pages, rewritten
//! in place, are restored from the checkpoint's copy). So after a
//! selective checkpoint the next one writes only the runs of pages its
//! snapshot uses that the previous one listed free or did not have (also
//! after a checkpoint synced in full, as a growing store's are when it
//! passes [`Writeback::allocated_pages`]); after the full sync at open,
//! every used run. At 1–2 M files that cut the `sync_file_range` calls
//! to 0.37–0.40× (a used run is a run of a fragmented file, most of them
//! clean by then) and the checkpoint thread's CPU per create to
//! 0.66–0.69× (`perf/results/2026-11-29-s17-md18b.md`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use heed::{Env, WithoutTls};

use super::{JournalError, io};
use crate::lmdb::FreePages;

/// ext4's `statfs` magic (ext2 and ext3 share it; all three overwrite
/// written blocks in place).
const EXT4_SUPER_MAGIC: i64 = 0xEF53;

/// What a checkpoint's writeback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Synced {
    /// `fdatasync` of the whole file.
    Full,
    /// Only the snapshot's pages: this many runs written, this many free
    /// pages (dirty or not) left alone.
    Used { runs: usize, free_pages: u64 },
}

/// How a checkpoint makes its snapshot's pages durable.
pub(super) struct Writeback {
    data: File,
    path: PathBuf,
    page_bytes: u64,
    /// Whether writing only the snapshot's pages is sound here (ext4
    /// without `data=journal`) and allowed by the configuration.
    selective: bool,
    /// Every page below this is an allocated block that a full sync made
    /// durable: overwriting it needs no metadata.
    allocated_pages: u64,
    /// The free pages of the snapshot the last checkpoint wrote back
    /// selectively: every page it uses is durable, and unchanged while it
    /// stays pinned (until the next checkpoint is), or that a checkpoint's
    /// full sync made durable. `None` after any other full sync.
    durable: Option<FreePages>,
}

impl Writeback {
    pub(super) fn new(data: &File, path: &Path, page_bytes: u64, allowed: bool) -> Result<Self, JournalError> {
        let data = data.try_clone().map_err(io(path, "open the LMDB file beside"))?;
        let selective = allowed && overwrites_in_place(&data, path);
        Ok(Self { data, path: path.to_path_buf(), page_bytes, selective, allocated_pages: 0, durable: None })
    }

    /// `fdatasync` of the whole file. Pages with no hole below them when
    /// it starts are allocated and durable once it returns: they are
    /// overwritten in place from then on.
    pub(super) fn sync_full(&mut self, env: &Env<WithoutTls>) -> Result<Synced, JournalError> {
        let written_below = self.first_hole_page();
        self.durable = None;
        env.force_sync()?;
        self.allocated_pages = self.allocated_pages.max(written_below);
        Ok(Synced::Full)
    }

    /// [`Writeback::sync_full`] of the pinned snapshot whose free pages are
    /// `free`: every page it uses is durable once the caller's journal
    /// sync returns, so the next checkpoint writes only the pages new
    /// since (a growing store syncs in full every time it passes
    /// [`Writeback::allocated_pages`]).
    fn sync_full_of(&mut self, env: &Env<WithoutTls>, free: FreePages) -> Result<Synced, JournalError> {
        let synced = self.sync_full(env)?;
        self.durable = Some(free);
        Ok(synced)
    }

    /// Makes every page of the snapshot whose meta page's first bytes are
    /// `meta` durable once the caller's next journal sync returns (the
    /// snapshot pinned). Falls back to [`Writeback::sync_full`] whenever
    /// the selective way does not apply or fails.
    pub(super) fn sync(&mut self, env: &Env<WithoutTls>, meta: &[u8]) -> Result<Synced, JournalError> {
        if !self.selective {
            return self.sync_full(env);
        }
        let Some(pages) = crate::lmdb::meta_pages(meta) else { return self.sync_full(env) };
        let free = match crate::lmdb::free_pages(&self.data, &self.path, meta) {
            Ok(free) => free,
            Err(damage) => {
                tracing::warn!(%damage, "cannot read the snapshot's free list; checkpoint synced in full");
                return self.sync_full(env);
            }
        };
        if pages > self.allocated_pages {
            return self.sync_full_of(env, free);
        }
        // Pages the previous checkpoint's snapshot also uses are on the
        // disk already, as they are in this one.
        let runs = match &self.durable {
            Some(earlier) => free.runs_used_since(earlier),
            None => free.used_runs(),
        };
        let fd = self.data.as_raw_fd();
        let range = |first: u64, count: u64, flags: libc::c_uint| {
            let (offset, bytes) = (first * self.page_bytes, count * self.page_bytes);
            // SAFETY: a range of our own descriptor; no memory is passed.
            unsafe { libc::sync_file_range(fd, offset as libc::off64_t, bytes as libc::off64_t, flags) == 0 }
        };
        let write = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE;
        let written = runs.iter().all(|&(first, count)| range(first, count, write));
        let waited = written && range(0, pages, libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WAIT_AFTER);
        if !waited {
            // fdatasync reports the failed write, or makes up for it.
            return self.sync_full_of(env, free);
        }
        let free_pages = free.count;
        self.durable = Some(free);
        Ok(Synced::Used { runs: runs.len(), free_pages })
    }

    /// The first page at or after which the file has a hole (`SEEK_HOLE`:
    /// a page not yet written back counts as data, and the full sync that
    /// follows writes it). 0 when it cannot tell.
    fn first_hole_page(&self) -> u64 {
        // SAFETY: a seek of our own descriptor (pread/pwrite users keep
        // their own offsets).
        let hole = unsafe { libc::lseek(self.data.as_raw_fd(), 0, libc::SEEK_HOLE) };
        if hole < 0 { 0 } else { hole as u64 / self.page_bytes }
    }
}

/// Whether the file system under `file` overwrites a written block in
/// place with no metadata and flushes the disk's cache in `fdatasync`:
/// ext4 (statfs) mounted without `data=journal` (`/proc/self/mountinfo`,
/// the entries of its device).
pub(super) fn overwrites_in_place(file: &File, path: &Path) -> bool {
    // SAFETY: `statfs` is plain data; all zeros is a valid value.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `stats` is a valid out-pointer for the call.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) } != 0 || stats.f_type as i64 != EXT4_SUPER_MAGIC {
        return false;
    }
    let Ok(metadata) = file.metadata() else { return false };
    let device = std::os::unix::fs::MetadataExt::dev(&metadata);
    let (major, minor) = (libc::major(device), libc::minor(device));
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let wanted = format!("{major}:{minor}");
    let mut found = false;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(2) != Some(&wanted.as_str()) {
            continue;
        }
        // After the " - " separator: type, source, super options.
        let Some(dash) = fields.iter().position(|field| *field == "-") else { return false };
        let (kind, options) = (fields.get(dash + 1), fields.get(dash + 3));
        if !matches!(kind, Some(&("ext4" | "ext3" | "ext2"))) {
            return false;
        }
        if options.is_none_or(|options| options.split(',').any(|option| option == "data=journal")) {
            return false;
        }
        found = true;
    }
    if !found {
        tracing::info!(path = %path.display(), "no mount entry for the store's device; checkpoints sync in full");
    }
    found
}
