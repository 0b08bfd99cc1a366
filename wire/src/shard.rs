//! The metadata shard protocol (DESIGN.md §4): every request a shard serves
//! and its response. Privileged kinds (≥ 0x80) come only from the CDC and
//! carry the cluster-key MAC (see [`crate::datagram`]).

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::address::Address;
use crate::codec::{Blob, Decode, DecodeError, Encode, List, Name, Reader, Writer};
use crate::datagram::SHARD_MAGIC;
use crate::ids::{BlockId, BlockServiceId, EggsTime, InodeId, InodeType};
use crate::limits::POLICY_BYTES_MAX;
use crate::mac::Mac;
use crate::span::{InlineBytes, SpanBody};

/// A directory's opaque policy blob.
pub type PolicyBlob<'a> = Blob<'a, POLICY_BYTES_MAX>;

/// Which entry a resolve looks for.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, zerocopy::TryFromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(u8)]
pub enum ResolveMode {
    /// The living entry.
    Alive = 0,
    /// The dead entry with the largest creation time ≤ the given time.
    DeadLe = 1,
    /// The dead entry with the smallest creation time ≥ the given time.
    DeadGe = 2,
}

/// Flags of an ls_dir request.
pub mod ls_flags {
    /// List the dead map (as of `as_of`) instead of the living map.
    pub const USE_DEAD_MAP: u8 = 1;
    /// With the dead map: the version with the smallest creation time ≥
    /// `as_of` rather than the largest ≤.
    pub const NEWER_THAN_AS_OF: u8 = 2;
    /// With the dead map: also list names whose version is "nothing".
    pub const INCLUDE_NOTHING: u8 = 4;
    pub const ALL: u8 = USE_DEAD_MAP | NEWER_THAN_AS_OF | INCLUDE_NOTHING;
}

crate::fixed_message!(
    /// The CRC and size of a block to be written, as the client computed them.
    pub struct NewBlock {
        pub crc: U32,
        pub size: U32,
    }
);

crate::fixed_message!(
    /// Where one block goes, with the certificate the block service checks
    /// (a write certificate in add_eden_span, an erase certificate in
    /// expunge_eden_span).
    pub struct BlockCertificate {
        pub block_service_id: BlockServiceId,
        pub address: Address,
        pub block_id: BlockId,
        pub certificate: Mac,
    }
);

crate::fixed_message!(
    /// A stored block, as a reader needs it.
    pub struct FetchedBlock {
        pub block_service_id: BlockServiceId,
        /// Unknown when the shard does not know the service (flag UNKNOWN).
        pub address: Address,
        /// [`crate::shuckle::flags`]: stale, drain, terminal, unknown.
        pub flags: u8,
        pub block_id: BlockId,
        pub crc: U32,
        pub size: U32,
    }
);

// ---- public requests ----

crate::tailed_message!(
    pub struct ResolveReq<'a>: ResolveReqHead {
        pub mode: ResolveMode,
        pub parent: InodeId,
        /// Ignored for [`ResolveMode::Alive`].
        pub creation_time: EggsTime,
    }
    tail { pub name: Name<'a> }
);

crate::fixed_message!(
    pub struct ResolveResp {
        /// With the owning bit as stored in the entry.
        pub inode: InodeId,
        pub creation_time: EggsTime,
    }
);

crate::fixed_message!(
    pub struct StatReq {
        pub inode: InodeId,
    }
);

crate::tailed_message!(
    pub struct StatDirectory<'a>: StatDirectoryHead {
        pub mtime: EggsTime,
        /// Null when the directory is unlinked (removed).
        pub parent: InodeId,
        /// [`crate::hash::HashMode`] of the directory's names.
        pub hash_mode: u8,
    }
    tail { pub policy: PolicyBlob<'a> }
);

crate::fixed_message!(
    pub struct StatFile {
        pub mtime: EggsTime,
        pub size: U64,
    }
);

/// What stat answers: tag 0 directory, tag 1 file or symlink.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum StatResp<'a> {
    Directory(StatDirectory<'a>),
    File(StatFile),
}

impl Encode for StatResp<'_> {
    fn encoded_len(&self) -> usize {
        1 + match self {
            StatResp::Directory(d) => d.encoded_len(),
            StatResp::File(f) => f.encoded_len(),
        }
    }
    fn encode(&self, writer: &mut Writer<'_>) {
        match self {
            StatResp::Directory(d) => {
                writer.put_u8(0);
                d.encode(writer);
            }
            StatResp::File(f) => {
                writer.put_u8(1);
                f.encode(writer);
            }
        }
    }
}

impl<'a> Decode<'a> for StatResp<'a> {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            0 => Ok(StatResp::Directory(StatDirectory::decode(reader)?)),
            1 => Ok(StatResp::File(StatFile::decode(reader)?)),
            _ => Err(DecodeError::InvalidField("stat tag")),
        }
    }
}

crate::fixed_message!(
    pub struct LsDirReq {
        pub dir: InodeId,
        /// For dead-map listings: the time the listing is "as of".
        pub as_of: EggsTime,
        /// List names whose hash is ≥ this (0 for the first page).
        pub start_hash: U64,
        /// [`ls_flags`].
        pub flags: u8,
    }
);

crate::tailed_message!(
    pub struct LsEntry<'a>: LsEntryHead {
        pub name_hash: U64,
        /// With its owning bit; null for a "nothing" version.
        pub inode: InodeId,
        pub creation_time: EggsTime,
    }
    tail { pub name: Name<'a> }
);

crate::tailed_message!(
    pub struct LsDirResp<'a>: LsDirRespHead {
        /// The start hash of the next page; meaningful when `more`.
        pub next_hash: U64,
        pub more: u8,
    }
    tail { pub entries: List<'a, LsEntry<'a>> }
);

crate::fixed_message!(
    pub struct CreateEdenFileReq {
        /// File or symlink.
        pub inode_type: InodeType,
    }
);

crate::fixed_message!(
    pub struct CreateEdenFileResp {
        pub inode: InodeId,
        pub cookie: Mac,
    }
);

crate::tailed_message!(
    pub struct AddEdenSpanReq<'a>: AddEdenSpanReqHead {
        pub inode: InodeId,
        pub cookie: Mac,
        /// Must equal the eden file's current size (append only).
        pub offset: U64,
        pub size: U32,
        /// CRC32C of the span's bytes.
        pub crc: U32,
    }
    tail {
        pub body: SpanBody<'a, NewBlock>,
        /// Block services the client could not write to; placement avoids
        /// them (at most `ADD_SPAN_BLACKLIST_MAX`).
        pub blacklist: List<'a, BlockServiceId>,
    }
);

crate::tailed_message!(
    pub struct AddEdenSpanResp<'a>: AddEdenSpanRespHead {}
    tail {
        /// One per block, data blocks first; empty for blockless spans.
        pub blocks: List<'a, BlockCertificate> }
);

crate::tailed_message!(
    pub struct CertifyEdenSpanReq<'a>: CertifyEdenSpanReqHead {
        pub inode: InodeId,
        pub cookie: Mac,
        pub offset: U64,
    }
    tail {
        /// One write proof per block, in block order.
        pub proofs: List<'a, Mac> }
);

crate::tailed_message!(
    pub struct LinkEdenFileReq<'a>: LinkEdenFileReqHead {
        pub inode: InodeId,
        pub cookie: Mac,
        pub parent: InodeId,
    }
    tail { pub name: Name<'a> }
);

crate::fixed_message!(
    pub struct LinkEdenFileResp {
        pub creation_time: EggsTime,
    }
);

crate::tailed_message!(
    /// Kind 0x16: a small file in one durable request. Creates a file (or
    /// symlink) holding `contents` as one inline span (none when empty) and
    /// links it as `name` in `parent`, in one shard transaction: what
    /// create_eden_file, add_eden_span with an inline body and
    /// link_eden_file do in three.
    pub struct CreateSmallFileReq<'a>: CreateSmallFileReqHead {
        /// A linked directory of this shard.
        pub parent: InodeId,
        /// Chosen at random by the client for this file and kept over its
        /// retransmissions: the shard remembers which file an id made
        /// (`SMALL_FILE_CREATE_MEMORY_NS`), so a re-send is answered with
        /// that file, never a second one.
        pub create_id: U64,
        /// CRC32C of `contents`.
        pub crc: U32,
        /// File or symlink.
        pub inode_type: InodeType,
    }
    tail { pub name: Name<'a>, pub contents: InlineBytes<'a> }
);

crate::fixed_message!(
    pub struct CreateSmallFileResp {
        /// The new file (no owning bit).
        pub inode: InodeId,
        /// The creation time of its entry, as link_eden_file answers.
        pub creation_time: EggsTime,
    }
);

crate::fixed_message!(
    pub struct FetchSpansReq {
        pub inode: InodeId,
        pub offset: U64,
    }
);

crate::tailed_message!(
    pub struct FetchedSpan<'a>: FetchedSpanHead {
        pub offset: U64,
        pub size: U32,
        pub crc: U32,
    }
    tail { pub body: SpanBody<'a, FetchedBlock> }
);

crate::tailed_message!(
    pub struct FetchSpansResp<'a>: FetchSpansRespHead {
        /// Offset of the first span not returned; 0 when none is left.
        pub next_offset: U64,
    }
    tail { pub spans: List<'a, FetchedSpan<'a>> }
);

crate::tailed_message!(
    pub struct SameDirRenameReq<'a>: SameDirRenameReqHead {
        pub parent: InodeId,
    }
    tail { pub old_name: Name<'a>, pub new_name: Name<'a> }
);

crate::fixed_message!(
    pub struct SameDirRenameResp {
        pub creation_time: EggsTime,
    }
);

crate::tailed_message!(
    pub struct DeleteFileReq<'a>: DeleteFileReqHead { pub parent: InodeId }
    tail { pub name: Name<'a> }
);

crate::fixed_message!(
    pub struct ExpungeEdenSpanReq {
        pub inode: InodeId,
    }
);

crate::tailed_message!(
    pub struct ExpungeEdenSpanResp<'a>: ExpungeEdenSpanRespHead {
        /// Offset of the condemned span.
        pub offset: U64,
    }
    tail {
        /// Erase certificates; empty when the span was blockless (dropped at once).
        pub blocks: List<'a, BlockCertificate> }
);

crate::tailed_message!(
    pub struct CertifyExpungeReq<'a>: CertifyExpungeReqHead {
        pub inode: InodeId,
        pub offset: U64,
    }
    tail {
        /// One erase proof per block, in block order.
        pub proofs: List<'a, Mac> }
);

crate::fixed_message!(
    pub struct ExpungeEdenFileReq {
        pub inode: InodeId,
    }
);

crate::tailed_message!(
    pub struct PurgeDirentReq<'a>: PurgeDirentReqHead {
        pub parent: InodeId,
        pub creation_time: EggsTime,
    }
    tail { pub name: Name<'a> }
);

crate::fixed_message!(
    /// Removes a removed directory's record for good: refused unless the
    /// directory is unlinked (null parent, not the root), has no living and
    /// no dead entries (its dead versions are purged first, through
    /// purge_dirent, so their files' blocks are collected), and was removed
    /// at least the shard's purge age ago.
    pub struct PurgeDirectoryReq {
        pub dir: InodeId,
    }
);

crate::fixed_message!(
    /// Replaces the spans of `inode` from `offset` on by the (clean) spans of
    /// the eden file `source_inode`, which must have the same sizes and CRCs;
    /// the source file is consumed. For migrating files off a failed disk.
    pub struct RepairSpansReq {
        pub inode: InodeId,
        pub offset: U64,
        pub source_inode: InodeId,
        pub source_cookie: Mac,
    }
);

crate::fixed_message!(
    /// Replaces block `block_index` of the span at `offset` of `inode` by
    /// the single block of the eden file `source_inode` (one clean mirrored
    /// span, D=1, P=0), whose CRC and size must match; the source is consumed.
    pub struct RepairBlockReq {
        pub inode: InodeId,
        pub offset: U64,
        pub block_index: u8,
        pub source_inode: InodeId,
        pub source_cookie: Mac,
    }
);

crate::fixed_message!(
    pub struct VisitInodesReq {
        pub begin: InodeId,
    }
);

crate::tailed_message!(
    pub struct VisitInodesResp<'a>: VisitInodesRespHead {
        /// Where the next page starts; null when done.
        pub next: InodeId,
    }
    tail { pub inodes: List<'a, InodeId> }
);

crate::fixed_message!(
    pub struct VisitEdenReq {
        pub begin: InodeId,
    }
);

crate::fixed_message!(
    pub struct EdenEntry {
        pub inode: InodeId,
        pub deadline: EggsTime,
    }
);

crate::tailed_message!(
    pub struct VisitEdenResp<'a>: VisitEdenRespHead { pub next: InodeId }
    tail { pub entries: List<'a, EdenEntry> }
);

crate::fixed_message!(
    pub struct ReverseBlockQueryReq {
        pub block_service_id: BlockServiceId,
        pub begin: BlockId,
    }
);

crate::fixed_message!(
    pub struct ReverseBlockEntry {
        pub block_id: BlockId,
        pub inode: InodeId,
        pub span_offset: U64,
    }
);

crate::tailed_message!(
    pub struct ReverseBlockQueryResp<'a>: ReverseBlockQueryRespHead {
        /// Where the next page starts; zero when done.
        pub next: BlockId,
    }
    tail { pub entries: List<'a, ReverseBlockEntry> }
);

crate::tailed_message!(
    pub struct SetDirectoryPolicyReq<'a>: SetDirectoryPolicyReqHead { pub dir: InodeId }
    tail { pub policy: PolicyBlob<'a> }
);

// ---- privileged requests (CDC only) ----

crate::fixed_message!(
    /// Creates a directory with no entry pointing to it yet. Idempotent per
    /// `transaction_id`: a retry returns the same inode.
    pub struct CreateUnlinkedDirReq {
        pub transaction_id: U64,
        /// The parent it is being created for (recorded as its parent).
        pub parent: InodeId,
        /// The CDC will never again send a request of a transaction below
        /// this id: the shard forgets what it remembers for them.
        pub forget_below: U64,
    }
);

crate::fixed_message!(
    pub struct CreateUnlinkedDirResp {
        pub inode: InodeId,
    }
);

crate::fixed_message!(
    /// Sets a directory's parent. Setting it to null (removal) fails with
    /// DIRECTORY_NOT_EMPTY while the directory has living entries.
    pub struct SetParentReq {
        pub dir: InodeId,
        pub parent: InodeId,
    }
);

crate::tailed_message!(
    /// Adds a non-owning living entry `name → inode`. An owning file entry of
    /// that name moves to the dead map; a directory or a non-owning entry is
    /// never overwritten (CANNOT_OVERRIDE_TARGET). An identical existing
    /// entry is success (retry). `dry_run` checks without changing anything.
    /// `owning` ≠ 0 makes the entry owning at once (inject and release in
    /// one). Remembered per `transaction_id` (≠ 0) until `forget_below`
    /// passes it: the same transaction's inject again answers as the first
    /// did, and changes nothing, whatever happened to the entry since.
    pub struct InjectDirentReq<'a>: InjectDirentReqHead {
        pub dir: InodeId,
        pub inode: InodeId,
        pub dry_run: u8,
        pub owning: u8,
        pub transaction_id: U64,
        pub forget_below: U64,
    }
    tail { pub name: Name<'a> }
);

crate::fixed_message!(
    pub struct InjectDirentResp {
        pub creation_time: EggsTime,
    }
);

crate::tailed_message!(
    /// create_unlinked_dir and an owning inject_dirent in one shard
    /// transaction, for a mkdir whose new directory lands on its parent's
    /// shard (ours, not the prototype's). Creates a directory (parent
    /// `dir`, empty policy: as create_unlinked_dir) and links it owning as
    /// `name` in `dir`, which must be a linked directory of this shard with
    /// no living entry `name` (ALREADY_EXISTS; it never overwrites). A
    /// refusal changes nothing. Remembered per `transaction_id` like
    /// inject_dirent: the same transaction's request again answers as the
    /// first did and changes nothing; another request under that id (or
    /// this one with another `dir`) is BAD_REQUEST.
    pub struct CreateLinkedDirReq<'a>: CreateLinkedDirReqHead {
        pub dir: InodeId,
        pub transaction_id: U64,
        pub forget_below: U64,
    }
    tail { pub name: Name<'a> }
);

crate::fixed_message!(
    pub struct CreateLinkedDirResp {
        pub inode: InodeId,
        pub creation_time: EggsTime,
    }
);

crate::tailed_message!(
    /// An mv file whose source and target directories are both on this
    /// shard, in one shard transaction (ours, not the prototype's): the
    /// living owning file or symlink entry `source_name` in `source_dir`
    /// becomes the owning entry `target_name` in `target_dir`, and the
    /// source entry is killed (moved to the dead map, non-owning, with a
    /// placeholder). Both directories must be linked directories of this
    /// shard (NOT_FOUND); the source must exist (NOT_FOUND), not be a
    /// directory (BAD_INODE_TYPE) and be owning (NOT_OWNING); the target
    /// name follows inject_dirent's overwrite rules (an owning file is
    /// overwritten; a directory or a non-owning entry is
    /// CANNOT_OVERRIDE_TARGET). A refusal changes nothing. Remembered per
    /// `transaction_id` like create_linked_dir: the same transaction's
    /// request again answers as the first did and changes nothing; another
    /// request under that id (or this one with another `target_dir`) is
    /// BAD_REQUEST.
    pub struct MoveFileInShardReq<'a>: MoveFileInShardReqHead {
        pub source_dir: InodeId,
        pub target_dir: InodeId,
        pub transaction_id: U64,
        pub forget_below: U64,
    }
    tail { pub source_name: Name<'a>, pub target_name: Name<'a> }
);

crate::fixed_message!(
    pub struct MoveFileInShardResp {
        /// The moved file.
        pub inode: InodeId,
        /// The target entry's creation time.
        pub creation_time: EggsTime,
    }
);

crate::tailed_message!(
    /// Makes a living entry non-owning, checking its type. Already
    /// non-owning is success (retry).
    pub struct AcquireDirentReq<'a>: AcquireDirentReqHead {
        pub dir: InodeId,
        pub expected_type: InodeType,
        /// Remembered like inject_dirent's.
        pub transaction_id: U64,
        pub forget_below: U64,
    }
    tail { pub name: Name<'a> }
);

crate::fixed_message!(
    pub struct AcquireDirentResp {
        pub inode: InodeId,
        pub creation_time: EggsTime,
    }
);

crate::tailed_message!(
    /// Makes the entry `name → inode` owning again, or with `kill` moves it
    /// to the dead map (soft delete). Never fails: an entry already released
    /// or killed is success.
    pub struct ReleaseDirentReq<'a>: ReleaseDirentReqHead {
        pub dir: InodeId,
        pub inode: InodeId,
        pub kill: u8,
    }
    tail { pub name: Name<'a> }
);

crate::tailed_message!(
    /// Purges an owning dead entry pointing to another shard's file.
    pub struct PurgeRemoteOwningDirentReq<'a>: PurgeRemoteOwningDirentReqHead {
        pub dir: InodeId,
        pub creation_time: EggsTime,
    }
    tail { pub name: Name<'a> }
);

crate::fixed_message!(
    /// Sends a linked file of this shard back to eden, deadline now, so its
    /// blocks are collected.
    pub struct MoveFileToEdenReq {
        pub inode: InodeId,
    }
);

pub use crate::shuckle::EmptyResp;

crate::message_family! {
    /// Kinds of shard requests.
    kinds ShardKind;
    /// A request to a metadata shard.
    requests ShardRequest<'a>;
    /// A response from a metadata shard.
    responses ShardResponse;
    magic SHARD_MAGIC;
    0x01 Resolve(ResolveReq<'a>) => ResolveResp;
    0x02 Stat(StatReq) => StatResp<'a>;
    0x03 LsDir(LsDirReq) => LsDirResp<'a>;
    0x04 CreateEdenFile(CreateEdenFileReq) => CreateEdenFileResp;
    0x05 AddEdenSpan(AddEdenSpanReq<'a>) => AddEdenSpanResp<'a>;
    0x06 CertifyEdenSpan(CertifyEdenSpanReq<'a>) => EmptyResp;
    0x07 LinkEdenFile(LinkEdenFileReq<'a>) => LinkEdenFileResp;
    0x08 FetchSpans(FetchSpansReq) => FetchSpansResp<'a>;
    0x09 SameDirRename(SameDirRenameReq<'a>) => SameDirRenameResp;
    0x0a DeleteFile(DeleteFileReq<'a>) => EmptyResp;
    0x0b ExpungeEdenSpan(ExpungeEdenSpanReq) => ExpungeEdenSpanResp<'a>;
    0x0c CertifyExpunge(CertifyExpungeReq<'a>) => EmptyResp;
    0x0d ExpungeEdenFile(ExpungeEdenFileReq) => EmptyResp;
    0x0e PurgeDirent(PurgeDirentReq<'a>) => EmptyResp;
    0x0f RepairSpans(RepairSpansReq) => EmptyResp;
    0x10 RepairBlock(RepairBlockReq) => EmptyResp;
    0x11 VisitInodes(VisitInodesReq) => VisitInodesResp<'a>;
    0x12 VisitEden(VisitEdenReq) => VisitEdenResp<'a>;
    0x13 ReverseBlockQuery(ReverseBlockQueryReq) => ReverseBlockQueryResp<'a>;
    0x14 SetDirectoryPolicy(SetDirectoryPolicyReq<'a>) => EmptyResp;
    0x15 PurgeDirectory(PurgeDirectoryReq) => EmptyResp;
    0x16 CreateSmallFile(CreateSmallFileReq<'a>) => CreateSmallFileResp;
    0x81 CreateUnlinkedDir(CreateUnlinkedDirReq) => CreateUnlinkedDirResp;
    0x82 SetParent(SetParentReq) => EmptyResp;
    0x83 InjectDirent(InjectDirentReq<'a>) => InjectDirentResp;
    0x84 AcquireDirent(AcquireDirentReq<'a>) => AcquireDirentResp;
    0x85 ReleaseDirent(ReleaseDirentReq<'a>) => EmptyResp;
    0x86 PurgeRemoteOwningDirent(PurgeRemoteOwningDirentReq<'a>) => EmptyResp;
    0x87 MoveFileToEden(MoveFileToEdenReq) => EmptyResp;
    0x88 CreateLinkedDir(CreateLinkedDirReq<'a>) => CreateLinkedDirResp;
    0x89 MoveFileInShard(MoveFileInShardReq<'a>) => MoveFileInShardResp;
}

impl ShardKind {
    /// Whether the request changes state (and so must be durable before
    /// its response, and is never executed twice for one request id).
    pub const fn is_mutation(self) -> bool {
        !matches!(
            self,
            ShardKind::Resolve
                | ShardKind::Stat
                | ShardKind::LsDir
                | ShardKind::FetchSpans
                | ShardKind::VisitInodes
                | ShardKind::VisitEden
                | ShardKind::ReverseBlockQuery
        )
    }
}

/// Bytes of an ls_dir response before its entries (header, head, count).
pub const LS_DIR_RESP_FIXED_BYTES: usize = crate::datagram::HEADER_BYTES + core::mem::size_of::<LsDirRespHead>() + 2;
/// Bytes of a fetch_spans response before its spans.
pub const FETCH_SPANS_RESP_FIXED_BYTES: usize =
    crate::datagram::HEADER_BYTES + core::mem::size_of::<FetchSpansRespHead>() + 2;
/// Bytes of a visit/reverse-query response before its entries.
pub const VISIT_RESP_FIXED_BYTES: usize = crate::datagram::HEADER_BYTES + 8 + 2;

const _: () = {
    use crate::limits::{
        ADD_SPAN_BLACKLIST_MAX, INLINE_SPAN_BYTES_MAX, NAME_BYTES_MAX, SPAN_BLOCKS_MAX, UDP_DATAGRAM_BYTES_MAX,
    };
    // A span with the most blocks fits one fetch_spans page.
    assert!(
        FETCH_SPANS_RESP_FIXED_BYTES
            + core::mem::size_of::<FetchedSpanHead>()
            + 1
            + 1
            + 2
            + SPAN_BLOCKS_MAX * core::mem::size_of::<FetchedBlock>()
            <= UDP_DATAGRAM_BYTES_MAX
    );
    // The largest inline span with a full blacklist fits one add_eden_span
    // request, and the largest inline span fits one page.
    assert!(
        crate::datagram::HEADER_BYTES
            + core::mem::size_of::<AddEdenSpanReqHead>()
            + 1
            + 2
            + INLINE_SPAN_BYTES_MAX
            + 2
            + ADD_SPAN_BLACKLIST_MAX * core::mem::size_of::<BlockServiceId>()
            <= UDP_DATAGRAM_BYTES_MAX
    );
    // The largest small file with the longest name fits one create_small_file.
    assert!(
        crate::datagram::HEADER_BYTES
            + core::mem::size_of::<CreateSmallFileReqHead>()
            + 1
            + NAME_BYTES_MAX
            + 2
            + INLINE_SPAN_BYTES_MAX
            <= UDP_DATAGRAM_BYTES_MAX
    );
    // A span with the most blocks and a full blacklist fits one request.
    assert!(
        crate::datagram::HEADER_BYTES
            + core::mem::size_of::<AddEdenSpanReqHead>()
            + 1
            + 1
            + 2
            + SPAN_BLOCKS_MAX * core::mem::size_of::<NewBlock>()
            + 2
            + ADD_SPAN_BLACKLIST_MAX * core::mem::size_of::<BlockServiceId>()
            <= UDP_DATAGRAM_BYTES_MAX
    );
    assert!(
        FETCH_SPANS_RESP_FIXED_BYTES + core::mem::size_of::<FetchedSpanHead>() + 1 + 2 + INLINE_SPAN_BYTES_MAX
            <= UDP_DATAGRAM_BYTES_MAX
    );
    // An ls entry with the longest name fits one page.
    assert!(
        LS_DIR_RESP_FIXED_BYTES + core::mem::size_of::<LsEntryHead>() + 1 + NAME_BYTES_MAX <= UDP_DATAGRAM_BYTES_MAX
    );
    // Add-span certificates for a full span fit one response.
    assert!(
        crate::datagram::HEADER_BYTES + 2 + SPAN_BLOCKS_MAX * core::mem::size_of::<BlockCertificate>()
            <= UDP_DATAGRAM_BYTES_MAX
    );
    // Privileged requests with the longest names and their MAC fit.
    assert!(
        crate::datagram::HEADER_BYTES + core::mem::size_of::<InjectDirentReqHead>() + 1 + NAME_BYTES_MAX + 8
            <= UDP_DATAGRAM_BYTES_MAX
    );
    assert!(
        crate::datagram::HEADER_BYTES
            + core::mem::size_of::<MoveFileInShardReqHead>()
            + 2 * (1 + NAME_BYTES_MAX)
            + crate::datagram::PRIVILEGED_TRAILER_BYTES
            <= UDP_DATAGRAM_BYTES_MAX
    );
};
