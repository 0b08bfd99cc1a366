//! create_small_file (kind 0x16): a small file in one durable request.
//!
//! One shard transaction does what create_eden_file, add_eden_span with an
//! inline body and link_eden_file do in three: a new file (or symlink)
//! holding the contents as one clean inline span (no span when empty),
//! linked as the name with link_eden_file's rules (an owning file of the
//! name goes to the dead map owning; a directory or a name locked by the
//! CDC is CANNOT_OVERRIDE_TARGET; the directory's mtime is touched). The
//! CRC is checked as add_eden_span checks an inline span's.
//!
//! **Re-sends.** The request carries a client-chosen random `create_id`,
//! kept over its retransmissions. The shard remembers, per file it made,
//! the id and the contents' CRC ([`CreateMemory`], in the file's record,
//! honoured for [`SMALL_FILE_CREATE_MEMORY_NS`], longer than a client
//! re-sends; a store written before format 3 kept them in `small_files`,
//! still read, where a file sent back to eden leaves its memory too). A
//! request whose name's living entry, or one of its dead versions younger
//! than that memory, is a file this id made is answered with that file and
//! its entry's creation time and changes nothing: the in-memory replay
//! cache answers most re-sends, this one also those after a restart of the
//! shard or an eviction, and those after another client replaced or
//! deleted the name meanwhile. The same id with other contents is
//! BAD_REQUEST. The memory is part of the file's record so that a create
//! writes two B-trees keyed by the new inode (`files`, `spans`), not three:
//! fewer pages per commit. The `small_files` records of an older store
//! expire as before: inodes grow with time, so the oldest memories come
//! first, and each create forgets up to [`FORGET_PER_CREATE`] expired ones.

use heed::{RoTxn, RwTxn};
use std::ops::Bound;
use wire::ErrorKind;
use wire::crc::crc32c;
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::limits::SMALL_FILE_CREATE_MEMORY_NS;
use wire::shard::{CreateSmallFileReq, CreateSmallFileResp};

use super::dirents::{Slot, hash_of, linked_directory, living, time_after};
use super::{HandleError, Mutation, refuse};
use crate::store::*;

/// Expired memories a create forgets: more than the one it adds, so the
/// table shrinks again after a burst.
const FORGET_PER_CREATE: usize = 2;

/// Dead versions of the name looked at for a re-send after the name was
/// replaced or deleted.
const DEAD_VERSIONS_CHECKED: usize = 8;

impl Mutation<'_, '_> {
    pub(super) fn create_small_file(
        &mut self,
        txn: &mut RwTxn,
        req: &CreateSmallFileReq<'_>,
    ) -> Result<CreateSmallFileResp, HandleError> {
        if !matches!(req.inode_type, InodeType::File | InodeType::Symlink) {
            return refuse(ErrorKind::BadInodeType, "small files are files or symlinks");
        }
        let contents = req.contents.as_bytes();
        let crc = req.crc.get();
        if crc32c(contents) != crc {
            return refuse(ErrorKind::CrcMismatch, "small file CRC mismatch");
        }
        let dir = linked_directory(self.shard, self.store, txn, req.parent)?;
        let name = req.name.as_bytes();
        let slot = Slot { dir: req.parent, name_hash: hash_of(&dir, name)?, name };
        // One look at the name: its living entry and its newest dead
        // versions serve the re-send check, the overwrite and the new
        // entry's creation time (put_living would look both up again).
        let existing = living(self.store, txn, slot.dir, slot.name_hash, slot.name)?;
        let (newest_dead, made) = self.made_by_id(txn, &slot, existing, req.create_id.get(), crc)?;
        if let Some(made) = made {
            return Ok(made);
        }
        // After the overwrite the living entry (if any) is a dead version
        // under its creation time.
        let mut newest = newest_dead;
        if let Some(existing) = existing {
            self.overwrite(txn, &slot, false)?;
            newest = newest.max(Some(existing.creation_time));
        }
        let inode = self.next_inode(txn, req.inode_type)?;
        // ≤ INLINE_SPAN_BYTES_MAX (the decoder's bound), so it fits a u32.
        let size = contents.len() as u32;
        if size > 0 {
            // A clean inline span, stored from the request's bytes as they are.
            self.store.spans.put_parts(txn, &span_key(inode, 0), &[&SpanRecord::inline_head(size, crc), contents])?;
        }
        let creation_time = time_after(self.env.now, newest);
        self.put_living_at(txn, &slot, inode.with_owning(true), creation_time)?;
        let file = FileRecord { mtime: self.env.now, size: u64::from(size), inode_type: req.inode_type };
        let memory = CreateMemory { create_id: req.create_id.get(), crc, created: self.env.now };
        self.store.files.put(txn, &inode_key(inode), &file.encode_with_memory(&memory))?;
        self.touch_as_read(txn, req.parent, dir)?;
        self.forget_expired_small_files(txn)?;
        Ok(CreateSmallFileResp { inode, creation_time })
    }

    /// The newest dead version's creation time of the name (placeholders
    /// count, as for put_living), and the file an earlier
    /// create_small_file with `create_id` made as this name, if
    /// remembered: the living entry `existing`, or a dead version younger
    /// than the memory (the name replaced, deleted or renamed away since).
    fn made_by_id(
        &self,
        txn: &RoTxn,
        slot: &Slot<'_>,
        existing: Option<LivingRecord>,
        create_id: u64,
        crc: u32,
    ) -> Result<(Option<EggsTime>, Option<CreateSmallFileResp>), HandleError> {
        // Newest first over all of the name's dead versions: the first is
        // the newest; those not older than the memory come first, so the
        // first DEAD_VERSIONS_CHECKED of them are those of the range from
        // `since` up.
        let since = EggsTime::new(self.env.now.get().saturating_sub(SMALL_FILE_CREATE_MEMORY_NS));
        let low = dead_key(slot.dir, slot.name_hash, slot.name, EggsTime::ZERO);
        let high = dead_key(slot.dir, slot.name_hash, slot.name, EggsTime::new(u64::MAX));
        let range = (Bound::Included(&low[..]), Bound::Included(&high[..]));
        let mut newest = None;
        let mut versions = Vec::new();
        for item in self.store.dead.rev_range(txn, &range)?.take(DEAD_VERSIONS_CHECKED) {
            let (key, value) = item?;
            let creation_time = parse_dead_key(key)?.creation_time;
            newest = newest.max(Some(creation_time));
            if creation_time < since {
                break;
            }
            let inode = InodeId::new(decode_u64(value, "dead record")?);
            if !inode.is_null() {
                versions.push((creation_time, inode));
            }
        }
        if let Some(record) = existing
            && let Some(made) = self.made_by(txn, record.inode, record.creation_time, create_id, crc)?
        {
            return Ok((newest, Some(made)));
        }
        for (creation_time, inode) in versions {
            if let Some(made) = self.made_by(txn, inode, creation_time, create_id, crc)? {
                return Ok((newest, Some(made)));
            }
        }
        Ok((newest, None))
    }

    /// `inode` (an entry created at `creation_time`) if `create_id` made it
    /// within [`SMALL_FILE_CREATE_MEMORY_NS`]: the memory in its file
    /// record, or else one an older store kept in `small_files`.
    fn made_by(
        &self,
        txn: &RoTxn,
        inode: InodeId,
        creation_time: EggsTime,
        create_id: u64,
        crc: u32,
    ) -> Result<Option<CreateSmallFileResp>, HandleError> {
        let inode = inode.without_owning();
        let in_record = match self.store.files.get(txn, &inode_key(inode))? {
            Some(bytes) => FileRecord::decode_with_memory(bytes)?.1,
            None => None,
        };
        let memory = match in_record {
            Some(memory) => memory,
            None => match self.store.small_files.get(txn, &inode_key(inode))? {
                Some(bytes) => CreateMemory::decode(bytes)?,
                None => return Ok(None),
            },
        };
        let since = self.env.now.get().saturating_sub(SMALL_FILE_CREATE_MEMORY_NS);
        if memory.create_id != create_id || memory.created.get() < since {
            return Ok(None);
        }
        if memory.crc != crc {
            return refuse(ErrorKind::BadRequest, "this create id made a file with other contents");
        }
        Ok(Some(CreateSmallFileResp { inode, creation_time }))
    }

    /// Forgets up to [`FORGET_PER_CREATE`] memories older than
    /// [`SMALL_FILE_CREATE_MEMORY_NS`] (the oldest come first).
    fn forget_expired_small_files(&self, txn: &mut RwTxn) -> Result<(), HandleError> {
        let horizon = self.env.now.get().saturating_sub(SMALL_FILE_CREATE_MEMORY_NS);
        let mut expired = [[0u8; 8]; FORGET_PER_CREATE];
        let mut count = 0;
        for item in self.store.small_files.iter(txn)? {
            let (key, value) = item?;
            if count == FORGET_PER_CREATE || CreateMemory::decode(value)?.created.get() >= horizon {
                break;
            }
            if let (Some(slot), Ok(key)) = (expired.get_mut(count), <[u8; 8]>::try_from(key)) {
                *slot = key;
                count += 1;
            } else {
                return Err(StoreError::Corrupt("small file create key").into());
            }
        }
        for key in expired.iter().take(count) {
            self.store.small_files.delete(txn, key)?;
        }
        Ok(())
    }
}
