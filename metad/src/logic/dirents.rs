//! Directory entries: link, rename, delete, purge, and the CDC's privileged
//! steps (create_unlinked_dir, set_parent, inject, acquire, release, purge
//! remote, move to eden, and create_linked_dir: a mkdir's create and owning
//! inject in one, when the new directory lands on its parent's shard; and
//! move_file_in_shard: an mv file's acquire, owning inject and kill in one,
//! when both directories are on this shard).
//!
//! The dead map keeps every version of a name by creation time. Deleting (or
//! renaming away, or killing) a name moves its living entry there under its
//! creation time and writes a "nothing" placeholder (null inode) at the
//! deletion time. Overwriting moves the old entry there without a
//! placeholder: the new living entry's creation time marks the change.
//! Creation times of one name strictly increase, so versions never collide.

use heed::{RoTxn, RwTxn};
use std::ops::Bound;
use wire::ErrorKind;
use wire::hash::HashMode;
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::limits::{CDC_FORGET_PER_REQUEST_MAX, NS_PER_SECOND};
use wire::shard::*;

use super::{HandleError, Mutation, Shard, refuse};
use crate::store::*;

/// A directory of this shard, or a refusal.
pub(crate) fn directory(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    dir: InodeId,
) -> Result<DirectoryRecord, HandleError> {
    let dir = dir.without_owning();
    if dir.inode_type() != Some(InodeType::Directory) {
        return refuse(ErrorKind::BadInodeType, format!("{dir} is not a directory"));
    }
    if dir.shard() != shard.shard {
        return refuse(ErrorKind::NotFound, format!("{dir} is not on shard {}", shard.shard));
    }
    match store.directories.get(txn, &inode_key(dir))? {
        Some(bytes) => Ok(DirectoryRecord::decode(bytes)?),
        None => refuse(ErrorKind::NotFound, format!("no directory {dir}")),
    }
}

/// A directory that is linked (not removed): new entries may go there.
pub(super) fn linked_directory(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    dir: InodeId,
) -> Result<DirectoryRecord, HandleError> {
    let record = directory(shard, store, txn, dir)?;
    if record.parent.is_null() && dir.without_owning() != InodeId::ROOT {
        return refuse(ErrorKind::NotFound, format!("directory {dir} is removed"));
    }
    Ok(record)
}

pub(crate) fn hash_of(dir: &DirectoryRecord, name: &[u8]) -> Result<u64, HandleError> {
    match HashMode::from_u8(dir.hash_mode) {
        Some(mode) => Ok(mode.hash(name)),
        None => Err(StoreError::Corrupt("directory hash mode").into()),
    }
}

pub(super) fn living(
    store: &Store,
    txn: &RoTxn,
    dir: InodeId,
    name_hash: u64,
    name: &[u8],
) -> Result<Option<LivingRecord>, HandleError> {
    match store.living.get(txn, &living_key(dir, name_hash, name))? {
        Some(bytes) => Ok(Some(LivingRecord::decode(bytes)?)),
        None => Ok(None),
    }
}

/// The dead version of a name as of `time`: the largest creation time ≤
/// `time`, or with `newer` the smallest ≥ `time`; `skip_nothing` passes over
/// placeholders.
#[allow(clippy::too_many_arguments)] // reason: a dead-map address (dir, hash, name) and the query
pub(crate) fn version_as_of(
    store: &Store,
    txn: &RoTxn,
    dir: InodeId,
    name_hash: u64,
    name: &[u8],
    time: EggsTime,
    newer: bool,
    skip_nothing: bool,
) -> Result<Option<(EggsTime, InodeId)>, HandleError> {
    let low = dead_key(dir, name_hash, name, if newer { time } else { EggsTime::ZERO });
    let high = dead_key(dir, name_hash, name, if newer { EggsTime::new(u64::MAX) } else { time });
    let range = (Bound::Included(&low[..]), Bound::Included(&high[..]));
    let pick = |item: heed::Result<(&[u8], &[u8])>| -> Result<Option<(EggsTime, InodeId)>, HandleError> {
        let (key, value) = item?;
        let inode = InodeId::new(decode_u64(value, "dead record")?);
        if skip_nothing && inode.is_null() {
            return Ok(None);
        }
        Ok(Some((parse_dead_key(key)?.creation_time, inode)))
    };
    if newer {
        for item in store.dead.range(txn, &range)? {
            if let Some(found) = pick(item)? {
                return Ok(Some(found));
            }
        }
    } else {
        for item in store.dead.rev_range(txn, &range)? {
            if let Some(found) = pick(item)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// A creation time for a new version of `name`: now, or just after the
/// newest existing version if the clock has not moved past it.
fn entry_time(
    store: &Store,
    txn: &RoTxn,
    dir: InodeId,
    name_hash: u64,
    name: &[u8],
    now: EggsTime,
) -> Result<EggsTime, HandleError> {
    let living = living(store, txn, dir, name_hash, name)?.map(|record| record.creation_time);
    let dead = version_as_of(store, txn, dir, name_hash, name, EggsTime::new(u64::MAX), false, false)?;
    Ok(time_after(now, living.max(dead.map(|(newest, _)| newest))))
}

/// A new version's creation time: `now`, or just after `newest` (the
/// name's newest version, living or dead) if that is not earlier.
pub(super) fn time_after(now: EggsTime, newest: Option<EggsTime>) -> EggsTime {
    newest.map_or(now, |newest| now.max(EggsTime::new(newest.get().saturating_add(1))))
}

/// The name's living entry is the address (dir, hash, name).
pub(super) struct Slot<'n> {
    pub(super) dir: InodeId,
    pub(super) name_hash: u64,
    pub(super) name: &'n [u8],
}

impl Mutation<'_, '_> {
    /// Moves the living entry of `slot` to the dead map under its creation
    /// time, with its owning bit set to `owning`, and a placeholder at
    /// `nothing_at` if given.
    fn bury(
        &self,
        txn: &mut RwTxn,
        slot: &Slot<'_>,
        record: LivingRecord,
        owning: bool,
        nothing_at: Option<EggsTime>,
    ) -> Result<(), HandleError> {
        let store = self.store;
        store.living.delete(txn, &living_key(slot.dir, slot.name_hash, slot.name))?;
        let dead = dead_key(slot.dir, slot.name_hash, slot.name, record.creation_time);
        store.dead.put(txn, &dead, &record.inode.with_owning(owning).get().to_le_bytes())?;
        if let Some(time) = nothing_at {
            let nothing = dead_key(slot.dir, slot.name_hash, slot.name, time);
            store.dead.put(txn, &nothing, &0u64.to_le_bytes())?;
        }
        Ok(())
    }

    /// Clears the way for a new entry at `slot`: an owning file entry goes to
    /// the dead map; a directory or non-owning entry cannot be overwritten.
    pub(super) fn overwrite(&self, txn: &mut RwTxn, slot: &Slot<'_>, dry_run: bool) -> Result<(), HandleError> {
        let Some(existing) = living(self.store, txn, slot.dir, slot.name_hash, slot.name)? else {
            return Ok(());
        };
        if existing.inode.inode_type() == Some(InodeType::Directory) {
            return refuse(ErrorKind::CannotOverrideTarget, "the target is a directory");
        }
        if !existing.inode.is_owning() {
            return refuse(ErrorKind::CannotOverrideTarget, "the target is locked by the CDC (not owning)");
        }
        if dry_run {
            return Ok(());
        }
        self.bury(txn, slot, existing, true, None)
    }

    pub(super) fn touch(&self, txn: &mut RwTxn, dir: InodeId, mut record: DirectoryRecord) -> Result<(), HandleError> {
        record.mtime = record.mtime.max(self.env.now);
        self.store.directories.put(txn, &inode_key(dir), &record.encode())?;
        Ok(())
    }

    /// [`Self::touch`] of a record exactly as read from the store (the
    /// caller changed nothing in it): when its mtime is already at or past
    /// now, the put would write the bytes that are there, so it is left
    /// out. The creates of one batch share their `now`, so in one
    /// directory only the first writes the record: a put (and ~40 bytes of
    /// journal) fewer per create after it.
    pub(super) fn touch_as_read(
        &self,
        txn: &mut RwTxn,
        dir: InodeId,
        record: DirectoryRecord,
    ) -> Result<(), HandleError> {
        if record.mtime >= self.env.now {
            return Ok(());
        }
        self.touch(txn, dir, record)
    }

    /// Makes `inode` (its owning bit as given) the living entry at `slot`,
    /// created after every earlier version of the name; returns its
    /// creation time.
    pub(super) fn put_living(&self, txn: &mut RwTxn, slot: &Slot<'_>, inode: InodeId) -> Result<EggsTime, HandleError> {
        let creation_time = entry_time(self.store, txn, slot.dir, slot.name_hash, slot.name, self.env.now)?;
        self.put_living_at(txn, slot, inode, creation_time)?;
        Ok(creation_time)
    }

    /// [`Self::put_living`] with the creation time already worked out (by
    /// a caller that has looked at the name's versions itself).
    pub(super) fn put_living_at(
        &self,
        txn: &mut RwTxn,
        slot: &Slot<'_>,
        inode: InodeId,
        creation_time: EggsTime,
    ) -> Result<(), HandleError> {
        let record = LivingRecord { creation_time, inode };
        self.store.living.put(txn, &living_key(slot.dir, slot.name_hash, slot.name), &record.encode())?;
        Ok(())
    }

    /// Moves the living entry `entry` of `from` to `to` (an owning entry
    /// there, overwriting as [`Self::overwrite`] allows; `from` buried as
    /// a rename buries it); returns the new entry's creation time.
    fn move_living(
        &self,
        txn: &mut RwTxn,
        from: &Slot<'_>,
        entry: LivingRecord,
        to: &Slot<'_>,
    ) -> Result<EggsTime, HandleError> {
        self.overwrite(txn, to, false)?;
        let gone_at = entry_time(self.store, txn, from.dir, from.name_hash, from.name, self.env.now)?;
        self.bury(txn, from, entry, false, Some(gone_at))?;
        self.put_living(txn, to, entry.inode.with_owning(true))
    }

    /// A new, empty directory whose parent is `parent` (empty policy: it
    /// inherits its parents').
    fn new_directory(&mut self, txn: &mut RwTxn, parent: InodeId) -> Result<InodeId, HandleError> {
        let inode = self.next_inode(txn, InodeType::Directory)?;
        let record =
            DirectoryRecord { parent, mtime: self.env.now, hash_mode: HashMode::Md5Prefix as u8, policy: Vec::new() };
        self.store.directories.put(txn, &inode_key(inode), &record.encode())?;
        Ok(inode)
    }

    pub(super) fn link_eden_file(
        &mut self,
        txn: &mut RwTxn,
        req: &LinkEdenFileReq<'_>,
    ) -> Result<LinkEdenFileResp, HandleError> {
        let inode = req.inode.without_owning();
        let eden = self.eden_for_write(txn, inode, &req.cookie, "link")?;
        if let Some((_, span)) = self.last_span(txn, inode)?
            && span.state != SpanState::Clean
        {
            return refuse(ErrorKind::BadSpanState, "the last span is not certified");
        }
        let dir = linked_directory(self.shard, self.store, txn, req.parent)?;
        let name = req.name.as_bytes();
        let slot = Slot { dir: req.parent, name_hash: hash_of(&dir, name)?, name };
        self.overwrite(txn, &slot, false)?;
        let creation_time = self.put_living(txn, &slot, inode.with_owning(true))?;
        self.store.eden.delete(txn, &inode_key(inode))?;
        let file = FileRecord { mtime: self.env.now, size: eden.size, inode_type: eden.inode_type };
        self.store.files.put(txn, &inode_key(inode), &file.encode())?;
        self.touch_as_read(txn, req.parent, dir)?;
        Ok(LinkEdenFileResp { creation_time })
    }

    pub(super) fn same_dir_rename(
        &mut self,
        txn: &mut RwTxn,
        req: &SameDirRenameReq<'_>,
    ) -> Result<SameDirRenameResp, HandleError> {
        let dir = linked_directory(self.shard, self.store, txn, req.parent)?;
        let old =
            Slot { dir: req.parent, name_hash: hash_of(&dir, req.old_name.as_bytes())?, name: req.old_name.as_bytes() };
        let new =
            Slot { dir: req.parent, name_hash: hash_of(&dir, req.new_name.as_bytes())?, name: req.new_name.as_bytes() };
        let Some(source) = living(self.store, txn, old.dir, old.name_hash, old.name)? else {
            return refuse(ErrorKind::NotFound, format!("no entry {:?}", req.old_name));
        };
        if !source.inode.is_owning() {
            return refuse(ErrorKind::NotOwning, "the source is locked by the CDC (not owning)");
        }
        if old.name == new.name {
            return Ok(SameDirRenameResp { creation_time: source.creation_time });
        }
        let creation_time = self.move_living(txn, &old, source, &new)?;
        self.touch_as_read(txn, req.parent, dir)?;
        Ok(SameDirRenameResp { creation_time })
    }

    pub(super) fn delete_file(&mut self, txn: &mut RwTxn, req: &DeleteFileReq<'_>) -> Result<EmptyResp, HandleError> {
        let dir = directory(self.shard, self.store, txn, req.parent)?;
        let slot = Slot { dir: req.parent, name_hash: hash_of(&dir, req.name.as_bytes())?, name: req.name.as_bytes() };
        let Some(record) = living(self.store, txn, slot.dir, slot.name_hash, slot.name)? else {
            return refuse(ErrorKind::NotFound, format!("no entry {:?}", req.name));
        };
        if record.inode.inode_type() == Some(InodeType::Directory) {
            return refuse(ErrorKind::BadInodeType, "a directory is removed through the CDC (rmdir)");
        }
        if !record.inode.is_owning() {
            return refuse(ErrorKind::NotOwning, "the entry is locked by the CDC (not owning)");
        }
        let gone_at = entry_time(self.store, txn, slot.dir, slot.name_hash, slot.name, self.env.now)?;
        self.bury(txn, &slot, record, true, Some(gone_at))?;
        self.touch_as_read(txn, req.parent, dir)?;
        Ok(EmptyResp {})
    }

    /// When the version at `creation_time` stopped being current: the next
    /// version's creation time (dead or living).
    fn death_time(&self, txn: &RoTxn, slot: &Slot<'_>, creation_time: EggsTime) -> Result<EggsTime, HandleError> {
        let after = EggsTime::new(creation_time.get().saturating_add(1));
        if let Some((time, _)) =
            version_as_of(self.store, txn, slot.dir, slot.name_hash, slot.name, after, true, false)?
        {
            return Ok(time);
        }
        match living(self.store, txn, slot.dir, slot.name_hash, slot.name)? {
            Some(record) => Ok(record.creation_time),
            None => Ok(creation_time),
        }
    }

    /// Removes one dead version, then drops a placeholder left with nothing
    /// (or another placeholder) before it, so placeholders never touch.
    fn remove_dead(&self, txn: &mut RwTxn, slot: &Slot<'_>, creation_time: EggsTime) -> Result<(), HandleError> {
        self.store.dead.delete(txn, &dead_key(slot.dir, slot.name_hash, slot.name, creation_time))?;
        let after = EggsTime::new(creation_time.get().saturating_add(1));
        let next = version_as_of(self.store, txn, slot.dir, slot.name_hash, slot.name, after, true, false)?;
        let Some((next_time, next_inode)) = next else { return Ok(()) };
        if !next_inode.is_null() {
            return Ok(());
        }
        let before = version_as_of(self.store, txn, slot.dir, slot.name_hash, slot.name, creation_time, false, false)?;
        if before.is_none_or(|(_, inode)| inode.is_null()) {
            self.store.dead.delete(txn, &dead_key(slot.dir, slot.name_hash, slot.name, next_time))?;
        }
        Ok(())
    }

    /// The dead entry (dir, name, creation_time), old enough to purge.
    fn purgeable(&self, txn: &RoTxn, slot: &Slot<'_>, creation_time: EggsTime) -> Result<Option<InodeId>, HandleError> {
        let key = dead_key(slot.dir, slot.name_hash, slot.name, creation_time);
        let Some(value) = self.store.dead.get(txn, &key)? else { return Ok(None) };
        let inode = InodeId::new(decode_u64(value, "dead record")?);
        if inode.is_null() {
            return refuse(ErrorKind::BadRequest, "a placeholder is not purged on its own");
        }
        let died = self.death_time(txn, slot, creation_time)?;
        let age_min_ns = self.env.durations.purge_age_min_ns;
        if self.env.now.get() < died.get().saturating_add(age_min_ns) {
            return refuse(
                ErrorKind::TooSoon,
                format!("dead entries are purged only {} s after they died", age_min_ns / NS_PER_SECOND),
            );
        }
        Ok(Some(inode))
    }

    pub(super) fn purge_dirent(&mut self, txn: &mut RwTxn, req: &PurgeDirentReq<'_>) -> Result<EmptyResp, HandleError> {
        let dir = directory(self.shard, self.store, txn, req.parent)?;
        let slot = Slot { dir: req.parent, name_hash: hash_of(&dir, req.name.as_bytes())?, name: req.name.as_bytes() };
        let Some(inode) = self.purgeable(txn, &slot, req.creation_time)? else {
            return refuse(ErrorKind::NotFound, format!("no dead entry {:?} at {}", req.name, req.creation_time.get()));
        };
        let plain = inode.without_owning();
        if inode.is_owning() && plain.inode_type() != Some(InodeType::Directory) {
            if plain.shard() != self.shard.shard {
                return refuse(ErrorKind::BadRequest, "owning entry of another shard's file: purge through the CDC");
            }
            self.send_to_eden(txn, plain)?;
        }
        self.remove_dead(txn, &slot, req.creation_time)?;
        Ok(EmptyResp {})
    }

    /// gcd's directory collection: the record of a removed directory, once
    /// it holds nothing (no living, no dead entries) and was removed at least
    /// the purge age ago. Its mtime is the removal time: set_parent to null
    /// touched it last, and a removed directory takes no new entries.
    pub(super) fn purge_directory(
        &mut self,
        txn: &mut RwTxn,
        req: &PurgeDirectoryReq,
    ) -> Result<EmptyResp, HandleError> {
        let dir_inode = req.dir.without_owning();
        let dir = directory(self.shard, self.store, txn, dir_inode)?;
        if dir_inode == InodeId::ROOT {
            return refuse(ErrorKind::BadRequest, "the root is never purged");
        }
        if !dir.parent.is_null() {
            return refuse(
                ErrorKind::BadRequest,
                format!("{dir_inode} is linked (parent {}), not removed", dir.parent),
            );
        }
        let prefix = inode_key(dir_inode);
        if self.store.living.prefix_iter(txn, &prefix)?.next().is_some() {
            return refuse(ErrorKind::DirectoryNotEmpty, format!("{dir_inode} has living entries"));
        }
        if self.store.dead.prefix_iter(txn, &prefix)?.next().is_some() {
            return refuse(ErrorKind::DirectoryNotEmpty, format!("{dir_inode} has dead entries: purge them first"));
        }
        let age_min_ns = self.env.durations.purge_age_min_ns;
        if self.env.now.get() < dir.mtime.get().saturating_add(age_min_ns) {
            return refuse(
                ErrorKind::TooSoon,
                format!("removed directories are purged only {} s after their removal", age_min_ns / NS_PER_SECOND),
            );
        }
        self.store.directories.delete(txn, &prefix)?;
        Ok(EmptyResp {})
    }

    /// A linked file back to eden with deadline now (its blocks get
    /// collected). False when the file is not linked here.
    fn send_to_eden(&self, txn: &mut RwTxn, inode: InodeId) -> Result<bool, HandleError> {
        let Some(bytes) = self.store.files.get(txn, &inode_key(inode))? else { return Ok(false) };
        let (file, memory) = FileRecord::decode_with_memory(bytes)?;
        if let Some(memory) = memory {
            // The create's memory outlives the record in `small_files`, so
            // a late re-send is still answered with this file (and expires
            // there as before: `logic::small`).
            self.store.small_files.put(txn, &inode_key(inode), &memory.encode())?;
        }
        self.store.files.delete(txn, &inode_key(inode))?;
        let eden = EdenRecord { deadline: self.env.now, size: file.size, inode_type: file.inode_type };
        self.store.eden.put(txn, &inode_key(inode), &eden.encode())?;
        Ok(true)
    }

    pub(super) fn set_directory_policy(
        &mut self,
        txn: &mut RwTxn,
        req: &SetDirectoryPolicyReq<'_>,
    ) -> Result<EmptyResp, HandleError> {
        let mut dir = directory(self.shard, self.store, txn, req.dir)?;
        dir.policy = req.policy.as_bytes().to_vec();
        self.touch(txn, req.dir.without_owning(), dir)?;
        Ok(EmptyResp {})
    }

    pub(super) fn create_unlinked_dir(
        &mut self,
        txn: &mut RwTxn,
        req: &CreateUnlinkedDirReq,
    ) -> Result<CreateUnlinkedDirResp, HandleError> {
        self.forget_transactions(txn, req.forget_below.get())?;
        let transaction = req.transaction_id.get().to_be_bytes();
        if let Some(bytes) = self.store.unlinked_dirs.get(txn, &transaction)? {
            return Ok(CreateUnlinkedDirResp { inode: InodeId::new(decode_u64(bytes, "unlinked dir")?) });
        }
        self.refuse_one_request_transaction(txn, req.transaction_id.get())?;
        let inode = self.new_directory(txn, req.parent.without_owning())?;
        self.store.unlinked_dirs.put(txn, &transaction, &inode.get().to_le_bytes())?;
        Ok(CreateUnlinkedDirResp { inode })
    }

    /// Drops the per-transaction records (see [`Remembered`]) of
    /// transactions below `forget_below`, at most
    /// [`CDC_FORGET_PER_REQUEST_MAX`] of them: the CDC sends none of their
    /// requests again. Their keys start with the transaction id (BE), so
    /// they are the table's first.
    fn forget_transactions(&self, txn: &mut RwTxn, forget_below: u64) -> Result<(), HandleError> {
        let end = forget_below.to_be_bytes();
        // The keys are 8 or 9 bytes (see `Remembered`): collected on the
        // stack, since the range borrows the transaction the deletes need.
        let mut keys = [([0u8; REMEMBERED_KEY_BYTES], 0usize); CDC_FORGET_PER_REQUEST_MAX];
        let mut count = 0;
        for item in self.store.unlinked_dirs.range(txn, &(Bound::Unbounded, Bound::Excluded(&end[..])))? {
            let Some((bytes, len)) = keys.get_mut(count) else { break };
            let key = item?.0;
            bytes
                .get_mut(..key.len())
                .ok_or(crate::store::StoreError::Corrupt("unlinked dir key"))?
                .copy_from_slice(key);
            *len = key.len();
            count += 1;
        }
        for (bytes, len) in &keys[..count] {
            self.store.unlinked_dirs.delete(txn, &bytes[..*len])?;
        }
        Ok(())
    }

    /// What this shard answered the transaction's `what` request, if it
    /// remembers it.
    fn remembered(&self, txn: &RoTxn, what: Remembered, transaction: u64) -> Result<Option<[u64; 3]>, HandleError> {
        if transaction == 0 {
            return Ok(None);
        }
        let Some(bytes) = self.store.unlinked_dirs.get(txn, &what.key(transaction))? else { return Ok(None) };
        let word = |i: usize| bytes.get(i * 8..i * 8 + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        match (bytes.len(), word(0), word(1), word(2)) {
            (24, Some(a), Some(b), Some(c)) => Ok(Some([a, b, c])),
            _ => Err(HandleError::Store(crate::store::StoreError::Corrupt("remembered cdc answer"))),
        }
    }

    fn remember(
        &self,
        txn: &mut RwTxn,
        what: Remembered,
        transaction: u64,
        words: [u64; 3],
    ) -> Result<(), HandleError> {
        if transaction == 0 {
            return Ok(());
        }
        let mut value = [0u8; 24];
        for (chunk, word) in value.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        self.store.unlinked_dirs.put(txn, &what.key(transaction), &value)?;
        Ok(())
    }

    pub(super) fn set_parent(&mut self, txn: &mut RwTxn, req: &SetParentReq) -> Result<EmptyResp, HandleError> {
        let dir_inode = req.dir.without_owning();
        let mut dir = directory(self.shard, self.store, txn, dir_inode)?;
        if dir_inode == InodeId::ROOT {
            return refuse(ErrorKind::BadRequest, "the root has no parent");
        }
        if req.parent.is_null() {
            let prefix = inode_key(dir_inode);
            if self.store.living.prefix_iter(txn, &prefix)?.next().is_some() {
                return refuse(ErrorKind::DirectoryNotEmpty, format!("{dir_inode} has living entries"));
            }
        }
        dir.parent = req.parent.without_owning();
        self.touch(txn, dir_inode, dir)?;
        Ok(EmptyResp {})
    }

    pub(super) fn inject_dirent(
        &mut self,
        txn: &mut RwTxn,
        req: &InjectDirentReq<'_>,
    ) -> Result<InjectDirentResp, HandleError> {
        let target = req.inode.without_owning();
        if target.is_null() || target.inode_type().is_none() {
            return refuse(ErrorKind::BadRequest, "not an inode");
        }
        let dry_run = req.dry_run != 0;
        let transaction = if dry_run { 0 } else { req.transaction_id.get() };
        self.forget_transactions(txn, req.forget_below.get())?;
        // Asked again by the same transaction: the first answer, whatever
        // clients did to the entry since (they may have renamed it).
        if let Some([dir, inode, creation_time]) = self.remembered(txn, Remembered::Inject, transaction)? {
            if dir != req.dir.without_owning().get() || inode != target.get() {
                return refuse(ErrorKind::BadRequest, "another inject of the same transaction");
            }
            return Ok(InjectDirentResp { creation_time: EggsTime::new(creation_time) });
        }
        self.refuse_one_request_transaction(txn, transaction)?;
        let dir = linked_directory(self.shard, self.store, txn, req.dir)?;
        let slot = Slot { dir: req.dir, name_hash: hash_of(&dir, req.name.as_bytes())?, name: req.name.as_bytes() };
        let answered = |creation_time: EggsTime| [req.dir.without_owning().get(), target.get(), creation_time.get()];
        let owning = req.owning != 0 && !dry_run;
        if let Some(mut existing) = living(self.store, txn, slot.dir, slot.name_hash, slot.name)?
            && existing.inode.without_owning() == target
        {
            if owning && !existing.inode.is_owning() {
                existing.inode = target.with_owning(true);
                self.store.living.put(txn, &living_key(slot.dir, slot.name_hash, slot.name), &existing.encode())?;
            }
            self.remember(txn, Remembered::Inject, transaction, answered(existing.creation_time))?;
            return Ok(InjectDirentResp { creation_time: existing.creation_time });
        }
        self.overwrite(txn, &slot, dry_run)?;
        if dry_run {
            return Ok(InjectDirentResp { creation_time: self.env.now });
        }
        let creation_time = self.put_living(txn, &slot, target.with_owning(owning))?;
        self.touch_as_read(txn, req.dir.without_owning(), dir)?;
        self.remember(txn, Remembered::Inject, transaction, answered(creation_time))?;
        Ok(InjectDirentResp { creation_time })
    }

    /// A transaction's id that already made a one-request step
    /// (create_linked_dir, move_file_in_shard) is not reused for another
    /// request.
    fn refuse_one_request_transaction(&self, txn: &RoTxn, transaction: u64) -> Result<(), HandleError> {
        if transaction == 0 {
            return Ok(());
        }
        for (what, name) in
            [(Remembered::LinkedDir, "create_linked_dir"), (Remembered::MoveInShard, "move_file_in_shard")]
        {
            if self.store.unlinked_dirs.get(txn, &what.key(transaction))?.is_some() {
                return refuse(ErrorKind::BadRequest, format!("the transaction made a {name}"));
            }
        }
        Ok(())
    }

    /// Any record of the transaction (its keys start with its id): the id
    /// was used for another request.
    fn refuse_used_transaction(&self, txn: &RoTxn, transaction: u64) -> Result<(), HandleError> {
        if transaction != 0 && self.store.unlinked_dirs.prefix_iter(txn, &transaction.to_be_bytes())?.next().is_some() {
            return refuse(ErrorKind::BadRequest, "the transaction id was used for another request");
        }
        Ok(())
    }

    /// create_unlinked_dir and an owning inject_dirent in one: a new
    /// directory (parent `dir`, empty policy) linked owning as `name` in
    /// `dir`. Never overwrites (ALREADY_EXISTS); a refusal is rolled back
    /// with the request's nested transaction, so it leaves nothing behind.
    /// Remembered per transaction ([`Remembered::LinkedDir`]).
    pub(super) fn create_linked_dir(
        &mut self,
        txn: &mut RwTxn,
        req: &CreateLinkedDirReq<'_>,
    ) -> Result<CreateLinkedDirResp, HandleError> {
        let transaction = req.transaction_id.get();
        let parent = req.dir.without_owning();
        self.forget_transactions(txn, req.forget_below.get())?;
        // Asked again by the same transaction: the first answer, whatever
        // clients did to the entry since.
        if let Some([dir, inode, creation_time]) = self.remembered(txn, Remembered::LinkedDir, transaction)? {
            if dir != parent.get() {
                return refuse(ErrorKind::BadRequest, "another create_linked_dir of the same transaction");
            }
            return Ok(CreateLinkedDirResp { inode: InodeId::new(inode), creation_time: EggsTime::new(creation_time) });
        }
        self.refuse_used_transaction(txn, transaction)?;
        let record = linked_directory(self.shard, self.store, txn, parent)?;
        let slot = Slot { dir: parent, name_hash: hash_of(&record, req.name.as_bytes())?, name: req.name.as_bytes() };
        if living(self.store, txn, slot.dir, slot.name_hash, slot.name)?.is_some() {
            return refuse(ErrorKind::AlreadyExists, format!("{:?} exists", req.name));
        }
        let inode = self.new_directory(txn, parent)?;
        let creation_time = self.put_living(txn, &slot, inode.with_owning(true))?;
        self.touch_as_read(txn, parent, record)?;
        self.remember(txn, Remembered::LinkedDir, transaction, [parent.get(), inode.get(), creation_time.get()])?;
        Ok(CreateLinkedDirResp { inode, creation_time })
    }

    /// An mv file whose directories are both on this shard, in one shard
    /// transaction: checks as acquire_dirent (source) and inject_dirent
    /// (target, its overwrite rules) would, links the file owning as the
    /// target and kills the source (dead, non-owning, with a placeholder,
    /// as release_dirent's kill). A refusal is rolled back with the
    /// request's nested transaction. Remembered per transaction
    /// ([`Remembered::MoveInShard`]).
    pub(super) fn move_file_in_shard(
        &mut self,
        txn: &mut RwTxn,
        req: &MoveFileInShardReq<'_>,
    ) -> Result<MoveFileInShardResp, HandleError> {
        let transaction = req.transaction_id.get();
        let (source_dir, target_dir) = (req.source_dir.without_owning(), req.target_dir.without_owning());
        self.forget_transactions(txn, req.forget_below.get())?;
        // Asked again by the same transaction: the first answer, whatever
        // clients did to either entry since.
        if let Some([dir, inode, creation_time]) = self.remembered(txn, Remembered::MoveInShard, transaction)? {
            if dir != target_dir.get() {
                return refuse(ErrorKind::BadRequest, "another move_file_in_shard of the same transaction");
            }
            return Ok(MoveFileInShardResp { inode: InodeId::new(inode), creation_time: EggsTime::new(creation_time) });
        }
        self.refuse_used_transaction(txn, transaction)?;
        let same_dir = source_dir == target_dir;
        if same_dir && req.source_name.as_bytes() == req.target_name.as_bytes() {
            return refuse(ErrorKind::BadRequest, "source and target are the same entry");
        }
        let source_record = linked_directory(self.shard, self.store, txn, source_dir)?;
        let source_name = req.source_name.as_bytes();
        let source = Slot { dir: source_dir, name_hash: hash_of(&source_record, source_name)?, name: source_name };
        let Some(entry) = living(self.store, txn, source.dir, source.name_hash, source.name)? else {
            return refuse(ErrorKind::NotFound, format!("no entry {:?}", req.source_name));
        };
        if !matches!(entry.inode.inode_type(), Some(InodeType::File | InodeType::Symlink)) {
            return refuse(ErrorKind::BadInodeType, format!("{:?} is not a file", req.source_name));
        }
        if !entry.inode.is_owning() {
            return refuse(ErrorKind::NotOwning, "the source is locked by the CDC (not owning)");
        }
        let target_record =
            if same_dir { source_record.clone() } else { linked_directory(self.shard, self.store, txn, target_dir)? };
        let target_name = req.target_name.as_bytes();
        let target = Slot { dir: target_dir, name_hash: hash_of(&target_record, target_name)?, name: target_name };
        let inode = entry.inode.without_owning();
        let creation_time = self.move_living(txn, &source, entry, &target)?;
        self.touch_as_read(txn, source_dir, source_record)?;
        if !same_dir {
            self.touch_as_read(txn, target_dir, target_record)?;
        }
        self.remember(txn, Remembered::MoveInShard, transaction, [target_dir.get(), inode.get(), creation_time.get()])?;
        Ok(MoveFileInShardResp { inode, creation_time })
    }

    pub(super) fn acquire_dirent(
        &mut self,
        txn: &mut RwTxn,
        req: &AcquireDirentReq<'_>,
    ) -> Result<AcquireDirentResp, HandleError> {
        let transaction = req.transaction_id.get();
        self.forget_transactions(txn, req.forget_below.get())?;
        if let Some([dir, inode, creation_time]) = self.remembered(txn, Remembered::Acquire, transaction)? {
            if dir != req.dir.without_owning().get() {
                return refuse(ErrorKind::BadRequest, "another acquire of the same transaction");
            }
            return Ok(AcquireDirentResp { inode: InodeId::new(inode), creation_time: EggsTime::new(creation_time) });
        }
        self.refuse_one_request_transaction(txn, transaction)?;
        let dir = directory(self.shard, self.store, txn, req.dir)?;
        let slot = Slot { dir: req.dir, name_hash: hash_of(&dir, req.name.as_bytes())?, name: req.name.as_bytes() };
        let Some(mut record) = living(self.store, txn, slot.dir, slot.name_hash, slot.name)? else {
            return refuse(ErrorKind::NotFound, format!("no entry {:?}", req.name));
        };
        if record.inode.inode_type() != Some(req.expected_type) {
            return refuse(ErrorKind::BadInodeType, format!("{:?} is not a {}", req.name, req.expected_type.name()));
        }
        if record.inode.is_owning() {
            record.inode = record.inode.with_owning(false);
            self.store.living.put(txn, &living_key(slot.dir, slot.name_hash, slot.name), &record.encode())?;
        }
        let inode = record.inode.without_owning();
        let answered = [req.dir.without_owning().get(), inode.get(), record.creation_time.get()];
        self.remember(txn, Remembered::Acquire, transaction, answered)?;
        Ok(AcquireDirentResp { inode, creation_time: record.creation_time })
    }

    /// Never refuses: an entry already released or killed (or never there)
    /// is success, so the CDC can retry blindly.
    pub(super) fn release_dirent(
        &mut self,
        txn: &mut RwTxn,
        req: &ReleaseDirentReq<'_>,
    ) -> Result<EmptyResp, HandleError> {
        let dir = match directory(self.shard, self.store, txn, req.dir) {
            Ok(dir) => dir,
            Err(HandleError::Refused { .. }) => return Ok(EmptyResp {}),
            Err(error) => return Err(error),
        };
        let slot = Slot { dir: req.dir, name_hash: hash_of(&dir, req.name.as_bytes())?, name: req.name.as_bytes() };
        let Some(mut record) = living(self.store, txn, slot.dir, slot.name_hash, slot.name)? else {
            return Ok(EmptyResp {});
        };
        if record.inode.without_owning() != req.inode.without_owning() {
            return Ok(EmptyResp {});
        }
        if req.kill != 0 {
            // Only an entry the transaction acquired (non-owning) is
            // killed: an owning one is a client's again (a re-sent kill
            // after a client renamed the moved file back must not bury it).
            if record.inode.is_owning() {
                return Ok(EmptyResp {});
            }
            // The killed entry is not owning: after a move the target owns
            // the inode; after rmdir the directory's own (null) parent marks it.
            let gone_at = entry_time(self.store, txn, slot.dir, slot.name_hash, slot.name, self.env.now)?;
            self.bury(txn, &slot, record, false, Some(gone_at))?;
            self.touch_as_read(txn, req.dir.without_owning(), dir)?;
        } else if !record.inode.is_owning() {
            record.inode = record.inode.with_owning(true);
            self.store.living.put(txn, &living_key(slot.dir, slot.name_hash, slot.name), &record.encode())?;
        }
        Ok(EmptyResp {})
    }

    pub(super) fn purge_remote_owning_dirent(
        &mut self,
        txn: &mut RwTxn,
        req: &PurgeRemoteOwningDirentReq<'_>,
    ) -> Result<EmptyResp, HandleError> {
        let dir = directory(self.shard, self.store, txn, req.dir)?;
        let slot = Slot { dir: req.dir, name_hash: hash_of(&dir, req.name.as_bytes())?, name: req.name.as_bytes() };
        let Some(inode) = self.purgeable(txn, &slot, req.creation_time)? else {
            // Already purged: a retry.
            return Ok(EmptyResp {});
        };
        if !inode.is_owning() || inode.without_owning().shard() == self.shard.shard {
            return refuse(ErrorKind::BadRequest, "not an owning entry of another shard's inode");
        }
        self.remove_dead(txn, &slot, req.creation_time)?;
        Ok(EmptyResp {})
    }

    pub(super) fn move_file_to_eden(
        &mut self,
        txn: &mut RwTxn,
        req: &MoveFileToEdenReq,
    ) -> Result<EmptyResp, HandleError> {
        let inode = req.inode.without_owning();
        if self.send_to_eden(txn, inode)? || self.store.eden.get(txn, &inode_key(inode))?.is_some() {
            return Ok(EmptyResp {});
        }
        refuse(ErrorKind::NotFound, format!("no file {inode}"))
    }
}

/// The deadline of an eden file after a successful write step at `now`.
pub(crate) fn eden_deadline(env: &super::Env<'_>) -> EggsTime {
    env.now.saturating_add_ns(env.durations.eden_deadline_ns)
}

/// A CDC request a shard remembers per transaction, in `unlinked_dirs`
/// next to create_unlinked_dir's records (key: transaction id BE, then a
/// tag; value: dir LE ‖ inode LE ‖ creation time LE). Forgotten when the
/// CDC's `forget_below` passes the transaction (the CDC's module doc in
/// `cdcd/src/coordinator.rs` argues when that is safe).
#[derive(Clone, Copy)]
enum Remembered {
    Inject,
    Acquire,
    /// create_linked_dir: parent, new directory, creation time.
    LinkedDir,
    /// move_file_in_shard: target directory, moved file, the target
    /// entry's creation time.
    MoveInShard,
}

/// The longest key of `unlinked_dirs`: a transaction id and a tag.
const REMEMBERED_KEY_BYTES: usize = 9;

impl Remembered {
    fn key(self, transaction: u64) -> [u8; REMEMBERED_KEY_BYTES] {
        let mut key = [0u8; REMEMBERED_KEY_BYTES];
        key[..8].copy_from_slice(&transaction.to_be_bytes());
        key[8] = match self {
            Remembered::Inject => b'i',
            Remembered::Acquire => b'a',
            Remembered::LinkedDir => b'd',
            Remembered::MoveInShard => b'm',
        };
        key
    }
}
