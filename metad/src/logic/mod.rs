//! What a shard does with a request: plain code over a request, the current
//! time, the block service table and an LMDB transaction, producing the
//! encoded response datagram. No sockets, no clocks, no threads: tests drive
//! it directly.
//!
//! Reads ([`Shard::handle_read`]) run on any thread in a read transaction.
//! Mutations ([`Shard::handle_mutation`]) run in a nested transaction of the
//! writer's batch transaction: a refused request leaves no trace, an
//! accepted one becomes durable when the batch commits. create_small_file
//! (whose refusals all come before its first write) runs in the batch
//! transaction itself while the writer records effects: a nested
//! transaction costs it ~18 % of metad's CPU on a shard of 1 M files. Its
//! failure after a write (a corrupt record, an exhausted inode counter)
//! fails the whole batch instead of that request alone.
//!
//! Choices made here where DESIGN.md and the wire docs leave room:
//!
//! - Deleting, renaming away and killing (release_dirent with `kill`) write
//!   a "nothing" placeholder at the deletion time; overwriting does not (the
//!   new living entry's creation time marks the change). Creation times of
//!   one name strictly increase (now, or the newest version + 1 ns).
//! - Killed and renamed-away entries go to the dead map non-owning (the new
//!   name, or the move's target, owns the inode; a removed directory is
//!   marked by its null parent). Overwritten and deleted files stay owning.
//! - Dead-map resolves and listings look at the dead map only, like the
//!   prototype; resolve skips placeholders, listings show them only with
//!   INCLUDE_NOTHING.
//! - A dead entry's purge age counts from when it stopped being current
//!   (the next version's creation time).
//! - Writes to an eden file past its deadline: EDEN_DEADLINE. Expunging
//!   before the deadline: TOO_SOON.
//! - stat of an eden file answers like a file (size so far; mtime = deadline
//!   − 1 h). visit_inodes lists directories and linked files; eden files are
//!   listed by visit_eden.
//! - release_dirent never refuses, and purge_remote_owning_dirent of an
//!   entry already gone succeeds: the CDC retries steps blindly.
//! - create_linked_dir (ours: create_unlinked_dir and an owning inject in
//!   one, for a mkdir whose new directory lands on its parent's shard)
//!   never overwrites: any living entry of the name is ALREADY_EXISTS,
//!   where inject_dirent would move an owning file to the dead map. It is
//!   remembered per CDC transaction like inject, and an id the shard
//!   remembers for another request is refused (BAD_REQUEST) by it, and by
//!   create_unlinked_dir, inject_dirent and acquire_dirent when the id
//!   made a create_linked_dir or a move_file_in_shard.
//! - move_file_in_shard (ours: an mv file's acquire, owning inject and
//!   kill in one, for source and target directories on this shard): the
//!   source must be a living owning file or symlink (NOT_FOUND,
//!   BAD_INODE_TYPE, NOT_OWNING), the target follows inject's overwrite
//!   rules; remembered per CDC transaction like create_linked_dir.
//! - The inode ids of a type that a shard answers grow but are not dense: they
//!   come from blocks of [`INODE_IDS_PER_COUNTER_WRITE`] that the stored
//!   counter reserves, and a restart (or a rolled-back block) skips the
//!   rest of a block. The counter never falls below an id handed out.
//! - create_small_file (ours, kind 0x16: a file with its inline contents,
//!   created and linked in one transaction) links with link_eden_file's
//!   rules and answers a re-send of its client-chosen id from the file it
//!   made (`small`).

mod dirents;
mod eden;
mod read;
mod small;

use heed::{RoTxn, RwTxn};
use rand::RngCore;
use wire::datagram::{self, Header, KIND_ERROR, KIND_PRIVILEGED, PROTOCOL_VERSION, SHARD_MAGIC};
use wire::hash::HashMode;
use wire::ids::{BlockId, EggsTime, InodeId, InodeType, ShardId};
use wire::mac::{KEY_BYTES, MacKey, SecretKey};
use wire::shard::{ShardRequest, ShardResponse};
use wire::{ErrorKind, ErrorResp};
use zerocopy::byteorder::little_endian::U64;

use crate::block_services::BlockServiceTable;
use crate::store::{DirectoryRecord, MetaKey, Store, StoreError, decode_u64, inode_key};

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The request is refused; the client gets this error kind and text.
    #[error("{kind}: {text}")]
    Refused { kind: ErrorKind, text: String },
    /// The store failed: the whole batch is abandoned.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<heed::Error> for HandleError {
    fn from(error: heed::Error) -> Self {
        HandleError::Store(StoreError::from(error))
    }
}

pub(crate) fn refuse<T>(kind: ErrorKind, text: impl Into<String>) -> Result<T, HandleError> {
    Err(HandleError::Refused { kind, text: text.into() })
}

/// Everything a request may look at besides the store.
pub struct Env<'a> {
    pub now: EggsTime,
    pub block_services: &'a BlockServiceTable,
    pub durations: Durations,
}

/// The shard's time rules, cluster configuration (`metad --eden-deadline-secs`,
/// `--purge-age-min-secs`) so that tests run them in seconds; the defaults
/// are the production values of `wire::limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durations {
    /// An eden file's deadline after its last write step.
    pub eden_deadline_ns: u64,
    /// How long a dead entry must have been dead before purge_dirent takes it.
    pub purge_age_min_ns: u64,
}

impl Default for Durations {
    fn default() -> Self {
        Self { eden_deadline_ns: wire::limits::EDEN_DEADLINE_NS, purge_age_min_ns: wire::limits::PURGE_AGE_MIN_NS }
    }
}

/// What the writer needs to know after a mutation besides its response.
#[derive(Default, Debug)]
pub struct MutationEffects {
    /// A placement found too few block services, or a client reported a
    /// service the table still offers as one it could not write to:
    /// refresh the table now.
    pub wants_block_service_refresh: bool,
}

/// Inode ids of one type stored as used at a time: the `counter/<type>`
/// record holds the end of a block of ids, which are then handed out
/// without writing it again (`Mutation::next_inode`). A create then
/// writes the counter once per block instead of once per create: a put,
/// and ~31 bytes of journal, fewer per create. The record keeps its
/// meaning for every metad: no id above it was ever handed out. A restart
/// (or an aborted write of a block) leaves the rest of a block unused: a
/// gap, never a repeat.
pub const INODE_IDS_PER_COUNTER_WRITE: u64 = 256;

/// The block of ids of one inode type handed out from memory: `next` up
/// to `end`, valid while the stored counter reads `end`.
#[derive(Clone, Copy, Default)]
struct IdBlock {
    next: u64,
    end: u64,
}

/// One shard's identity and keys.
pub struct Shard {
    pub shard: ShardId,
    cookie_key: MacKey,
    cluster_key: MacKey,
    /// Per inode type (by its bits): the ids left of the block the stored
    /// counter reserves. Only the holder of the writer's role applies
    /// mutations, so the lock is never contended.
    id_blocks: std::sync::Mutex<[Option<IdBlock>; 3]>,
}

impl Shard {
    /// Loads (creating on first start) the shard secret, and on shard 1 the
    /// root directory.
    pub fn open(store: &Store, shard: ShardId, cluster_key: &SecretKey, now: EggsTime) -> Result<Self, StoreError> {
        let mut wtxn = store.write_txn()?;
        let secret = match store.meta.get(&wtxn, MetaKey::SECRET)? {
            Some(bytes) => {
                SecretKey(<[u8; KEY_BYTES]>::try_from(bytes).map_err(|_| StoreError::Corrupt("shard secret"))?)
            }
            None => {
                let mut secret = [0u8; KEY_BYTES];
                rand::rng().fill_bytes(&mut secret);
                store.meta.put(&mut wtxn, MetaKey::SECRET, &secret)?;
                SecretKey(secret)
            }
        };
        if shard == InodeId::ROOT.shard() && store.directories.get(&wtxn, &inode_key(InodeId::ROOT))?.is_none() {
            let root = DirectoryRecord {
                parent: InodeId::NULL,
                mtime: now,
                hash_mode: HashMode::Md5Prefix as u8,
                policy: Vec::new(),
            };
            store.directories.put(&mut wtxn, &inode_key(InodeId::ROOT), &root.encode())?;
        }
        wtxn.commit()?;
        Ok(Self {
            shard,
            cookie_key: MacKey::new(&secret),
            cluster_key: MacKey::new(cluster_key),
            id_blocks: std::sync::Mutex::new([None; 3]),
        })
    }

    pub fn cluster_key(&self) -> &MacKey {
        &self.cluster_key
    }

    /// The cookie of an eden file.
    pub fn cookie(&self, inode: InodeId) -> wire::mac::Mac {
        self.cookie_key.eden_cookie(inode)
    }

    /// Encodes a response (MAC'd when it answers a privileged request).
    pub fn encode(&self, out: &mut [u8], request_id: u64, response: &ShardResponse<'_>) -> usize {
        match datagram::encode(out, request_id, response, Some(&self.cluster_key)) {
            Ok(len) => len,
            Err(error) => {
                // Responses are built to fit (page budgets, limits); this is
                // a bug, reported to the client rather than crashing.
                tracing::error!(%error, "response does not fit a datagram");
                let privileged = response.kind().is_some_and(|kind| kind.is_privileged());
                self.encode_error(out, request_id, privileged, ErrorKind::LogicError, "response too large")
            }
        }
    }

    /// Encodes an error response. One answering a privileged request is
    /// MAC'd (kind 0x80), so the CDC can trust it as much as a success.
    pub fn encode_error(
        &self,
        out: &mut [u8],
        request_id: u64,
        privileged: bool,
        kind: ErrorKind,
        text: &str,
    ) -> usize {
        let response = ShardResponse::Error(ErrorResp::new(kind, text));
        let request = Header {
            magic: SHARD_MAGIC,
            version: PROTOCOL_VERSION,
            request_id: U64::new(request_id),
            kind: if privileged { KIND_PRIVILEGED } else { KIND_ERROR },
        };
        datagram::encode_response(out, &request, &response, Some(&self.cluster_key)).unwrap_or(0)
    }

    fn finish(
        &self,
        out: &mut [u8],
        request_id: u64,
        privileged: bool,
        result: Result<usize, HandleError>,
    ) -> Result<usize, StoreError> {
        match result {
            Ok(len) => Ok(len),
            Err(HandleError::Refused { kind, text }) => Ok(self.encode_error(out, request_id, privileged, kind, &text)),
            Err(HandleError::Store(error)) => Err(error),
        }
    }

    /// Serves a non-mutating request. A store failure is answered with
    /// STORAGE_ERROR.
    pub fn handle_read(
        &self,
        store: &Store,
        rtxn: &RoTxn,
        env: &Env<'_>,
        request_id: u64,
        request: &ShardRequest<'_>,
        out: &mut [u8],
    ) -> usize {
        let result = read::handle(self, store, rtxn, env, request_id, request, out);
        match self.finish(out, request_id, false, result) {
            Ok(len) => len,
            Err(error) => {
                tracing::error!(%error, "read failed");
                self.encode_error(out, request_id, false, ErrorKind::StorageError, "storage error")
            }
        }
    }

    /// Applies a mutation inside `parent` (the batch transaction), in its own
    /// nested transaction so a refusal changes nothing. `Err` means the store
    /// failed and the batch must be aborted.
    ///
    /// Except a request that [`refuses_before_writing`], while the store
    /// records its effects (the writer's): it is applied in `parent`
    /// itself. An LMDB nested write transaction copies every page the
    /// batch already dirtied that the request touches, and merges its
    /// dirty list into the parent's at its commit; a create pays ~6 µs of
    /// CPU for it on a shard of 1 M files (perf/results s12-md13b). The
    /// recorded effects tell whether it wrote: a refusal (or a corrupt
    /// record) met before its first write changes nothing and is answered
    /// as before; one met after it cannot be rolled back alone, so it
    /// fails the batch (`Err`, every request of the batch refused with
    /// STORAGE_ERROR, nothing committed).
    #[allow(clippy::too_many_arguments)] // reason: the request's whole context, each distinct
    pub fn handle_mutation(
        &self,
        store: &Store,
        parent: &mut RwTxn,
        env: &Env<'_>,
        rng: &mut dyn RngCore,
        effects: &mut MutationEffects,
        request_id: u64,
        request: &ShardRequest<'_>,
        out: &mut [u8],
    ) -> Result<usize, StoreError> {
        let privileged = request.kind().is_privileged();
        let mark = store.effects_mark();
        // Without a nested transaction: the effects recorded since `mark`
        // are what the request wrote into the batch.
        if refuses_before_writing(request) && store.recording() {
            let mut context = Mutation { shard: self, store, env, rng, effects };
            return match context.apply(parent, request_id, request, out) {
                Ok(len) => Ok(len),
                Err(error) if store.effects_mark() != mark => {
                    tracing::error!(%error, request_id, "a request failed after it wrote: the batch is refused");
                    Err(match error {
                        HandleError::Store(error) => error,
                        HandleError::Refused { kind, text } => {
                            StoreError::RefusedAfterWriting(format!("{kind}: {text}"))
                        }
                    })
                }
                Err(error) => self.refused(out, request_id, privileged, error),
            };
        }
        // A refused request's writes are rolled back with its nested
        // transaction: so are their effects for the journal.
        let mut txn = store.env.nested_write_txn(parent)?;
        let mut context = Mutation { shard: self, store, env, rng, effects };
        let result = context.apply(&mut txn, request_id, request, out);
        match result {
            Ok(len) => {
                txn.commit()?;
                Ok(len)
            }
            Err(error) => {
                txn.abort();
                store.effects_truncate(mark);
                self.refused(out, request_id, privileged, error)
            }
        }
    }

    /// The answer to a mutation that failed without changing the batch
    /// transaction.
    fn refused(
        &self,
        out: &mut [u8],
        request_id: u64,
        privileged: bool,
        error: HandleError,
    ) -> Result<usize, StoreError> {
        match error {
            // A corrupt record refuses this request only; the batch
            // transaction is intact (the request's writes, if any, were
            // rolled back with its nested transaction).
            HandleError::Store(StoreError::Corrupt(what)) => {
                tracing::error!(what, request_id, "corrupt record");
                Ok(self.encode_error(out, request_id, privileged, ErrorKind::StorageError, "corrupt record"))
            }
            error => self.finish(out, request_id, privileged, Err(error)),
        }
    }
}

/// Whether every refusal of `request` comes before its first write, so that
/// it needs no nested transaction of its own ([`Shard::handle_mutation`]).
/// create_small_file: its checks (type, CRC, directory, re-send, the
/// target an overwrite may replace) all run before it writes; after that
/// only a corrupt record, an LMDB failure or an exhausted inode counter
/// can stop it, and those fail the batch.
fn refuses_before_writing(request: &ShardRequest<'_>) -> bool {
    matches!(request, ShardRequest::CreateSmallFile(_))
}

/// The context of one mutation.
pub(crate) struct Mutation<'a, 'e> {
    pub shard: &'a Shard,
    pub store: &'a Store,
    pub env: &'a Env<'e>,
    pub rng: &'a mut dyn RngCore,
    pub effects: &'a mut MutationEffects,
}

impl Mutation<'_, '_> {
    fn apply(
        &mut self,
        txn: &mut RwTxn,
        request_id: u64,
        request: &ShardRequest<'_>,
        out: &mut [u8],
    ) -> Result<usize, HandleError> {
        use ShardRequest as R;
        let response = match request {
            R::CreateEdenFile(req) => ShardResponse::CreateEdenFile(self.create_eden_file(txn, req)?),
            R::AddEdenSpan(req) => return self.add_eden_span(txn, request_id, req, out),
            R::CertifyEdenSpan(req) => ShardResponse::CertifyEdenSpan(self.certify_eden_span(txn, req)?),
            R::LinkEdenFile(req) => ShardResponse::LinkEdenFile(self.link_eden_file(txn, req)?),
            R::CreateSmallFile(req) => ShardResponse::CreateSmallFile(self.create_small_file(txn, req)?),
            R::SameDirRename(req) => ShardResponse::SameDirRename(self.same_dir_rename(txn, req)?),
            R::DeleteFile(req) => ShardResponse::DeleteFile(self.delete_file(txn, req)?),
            R::ExpungeEdenSpan(req) => return self.expunge_eden_span(txn, request_id, req, out),
            R::CertifyExpunge(req) => ShardResponse::CertifyExpunge(self.certify_expunge(txn, req)?),
            R::ExpungeEdenFile(req) => ShardResponse::ExpungeEdenFile(self.expunge_eden_file(txn, req)?),
            R::PurgeDirent(req) => ShardResponse::PurgeDirent(self.purge_dirent(txn, req)?),
            R::PurgeDirectory(req) => ShardResponse::PurgeDirectory(self.purge_directory(txn, req)?),
            R::RepairSpans(req) => ShardResponse::RepairSpans(self.repair_spans(txn, req)?),
            R::RepairBlock(req) => ShardResponse::RepairBlock(self.repair_block(txn, req)?),
            R::SetDirectoryPolicy(req) => ShardResponse::SetDirectoryPolicy(self.set_directory_policy(txn, req)?),
            R::CreateUnlinkedDir(req) => ShardResponse::CreateUnlinkedDir(self.create_unlinked_dir(txn, req)?),
            R::SetParent(req) => ShardResponse::SetParent(self.set_parent(txn, req)?),
            R::InjectDirent(req) => ShardResponse::InjectDirent(self.inject_dirent(txn, req)?),
            R::AcquireDirent(req) => ShardResponse::AcquireDirent(self.acquire_dirent(txn, req)?),
            R::ReleaseDirent(req) => ShardResponse::ReleaseDirent(self.release_dirent(txn, req)?),
            R::PurgeRemoteOwningDirent(req) => {
                ShardResponse::PurgeRemoteOwningDirent(self.purge_remote_owning_dirent(txn, req)?)
            }
            R::MoveFileToEden(req) => ShardResponse::MoveFileToEden(self.move_file_to_eden(txn, req)?),
            R::CreateLinkedDir(req) => ShardResponse::CreateLinkedDir(self.create_linked_dir(txn, req)?),
            R::MoveFileInShard(req) => ShardResponse::MoveFileInShard(self.move_file_in_shard(txn, req)?),
            R::Resolve(_)
            | R::Stat(_)
            | R::LsDir(_)
            | R::FetchSpans(_)
            | R::VisitInodes(_)
            | R::VisitEden(_)
            | R::ReverseBlockQuery(_) => return refuse(ErrorKind::LogicError, "not a mutation"),
        };
        Ok(self.shard.encode(out, request_id, &response))
    }

    /// A new inode id of `inode_type` (counters per type start at 1),
    /// above every id handed out before.
    ///
    /// The stored counter is read every time, and ids are handed out from
    /// memory only while it reads the end of their block in this
    /// transaction: so an id handed out is at or below the counter this
    /// transaction commits with. A block whose write was rolled back (a
    /// nested transaction refused, a batch failed) no longer matches the
    /// stored counter; a new block then starts right after the stored
    /// value (the ids handed out meanwhile were in the rolled-back
    /// transaction, never answered).
    pub(crate) fn next_inode(&mut self, txn: &mut RwTxn, inode_type: InodeType) -> Result<InodeId, HandleError> {
        let key = MetaKey::counter(inode_type);
        let stored = match self.store.meta.get(txn, &key)? {
            Some(bytes) => decode_u64(bytes, "inode counter")?,
            None => 0,
        };
        let mut blocks = match self.shard.id_blocks.lock() {
            Ok(blocks) => blocks,
            Err(poisoned) => poisoned.into_inner(),
        };
        let slot = blocks.get_mut(inode_type as usize).ok_or(StoreError::Corrupt("inode type"))?;
        let block = match *slot {
            Some(block) if block.end == stored && block.next <= block.end => block,
            _ => IdBlock { next: stored.saturating_add(1), end: stored },
        };
        let Some(inode) = InodeId::compose(inode_type, self.shard.shard, block.next) else {
            return refuse(ErrorKind::LogicError, "inode counter exhausted");
        };
        let end = if block.next > block.end {
            let end = block.end.saturating_add(INODE_IDS_PER_COUNTER_WRITE).min(wire::ids::INODE_COUNTER_MAX);
            self.store.meta.put(txn, &key, &end.to_le_bytes())?;
            end
        } else {
            block.end
        };
        *slot = Some(IdBlock { next: block.next + 1, end });
        Ok(inode)
    }

    /// A new block id, strictly after every one handed out before.
    pub(crate) fn next_block_id(&mut self, txn: &mut RwTxn) -> Result<BlockId, HandleError> {
        let last = match self.store.meta.get(txn, MetaKey::LAST_BLOCK_ID)? {
            Some(bytes) => BlockId::new(decode_u64(bytes, "last block id")?),
            None => BlockId::new(0),
        };
        let next = BlockId::next(last, self.env.now, self.shard.shard);
        self.store.meta.put(txn, MetaKey::LAST_BLOCK_ID, &next.get().to_le_bytes())?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests;
