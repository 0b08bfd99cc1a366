//! Proptest strategies for every message of every family.
//!
//! Messages borrow their tails (names, lists, payloads), so each strategy
//! leaks the small buffer its value borrows and yields `'static` messages.
//! The leak is bounded by the number of generated cases (a few MB per test
//! binary) and lets proptest hold, print and shrink plain message values.
//!
//! `shard_request(kind)` and its siblings match on the kind exhaustively: a
//! kind added to `wire` without a strategy here does not compile.

use proptest::collection::vec;
use proptest::prelude::*;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{Immutable, KnownLayout, TryFromBytes};

use wire::address::Address;
use wire::cdc::{self, CdcKind, CdcRequest, CdcResponse, CdcStatus};
use wire::codec::{Blob, Decode, Encode, List, Name, Payload};
use wire::datagram::{ErrorKind, ErrorResp};
use wire::ids::{BlockServiceId, EggsTime, InodeId, InodeType};
use wire::limits::{ADD_SPAN_BLACKLIST_MAX, INLINE_SPAN_BYTES_MAX, NAME_BYTES_MAX};
use wire::shard::*;
use wire::shuckle::{self, BlockServiceStatus, ShuckleKind, ShuckleRequest, ShuckleResponse};
use wire::span::{Parity, SpanBody};

/// The leaked, `'static` backing of a generated tail.
pub fn leak<T>(items: Vec<T>) -> &'static [T] {
    Box::leak(items.into_boxed_slice())
}

/// Any fixed-layout struct from random bytes; for layouts whose every byte
/// pattern is valid (no enum fields), so the filter never rejects.
pub fn fixed<T>() -> impl Strategy<Value = T> + Clone
where
    T: TryFromBytes + KnownLayout + Immutable + Clone + core::fmt::Debug + 'static,
{
    vec(any::<u8>(), core::mem::size_of::<T>())
        .prop_filter_map("layout without enum fields", |bytes| T::try_read_from_bytes(&bytes).ok())
}

pub fn inode() -> impl Strategy<Value = InodeId> {
    any::<u64>().prop_map(InodeId::new)
}

pub fn time() -> impl Strategy<Value = EggsTime> {
    any::<u64>().prop_map(EggsTime::new)
}

pub fn block_service_id() -> impl Strategy<Value = BlockServiceId> {
    any::<u64>().prop_map(BlockServiceId::new)
}

pub fn address() -> impl Strategy<Value = Address> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| Address { ip, port: U16::new(port) })
}

pub fn mac() -> impl Strategy<Value = [u8; 8]> {
    any::<[u8; 8]>()
}

pub fn inode_type() -> impl Strategy<Value = InodeType> {
    prop_oneof![Just(InodeType::Directory), Just(InodeType::File), Just(InodeType::Symlink)]
}

pub fn resolve_mode() -> impl Strategy<Value = ResolveMode> {
    prop_oneof![Just(ResolveMode::Alive), Just(ResolveMode::DeadLe), Just(ResolveMode::DeadGe)]
}

pub fn cdc_status() -> impl Strategy<Value = CdcStatus> {
    use CdcStatus::*;
    proptest::sample::select(vec![
        Ok,
        GeneralError,
        ParentInvalid,
        NotFound,
        BadInodeType,
        BadRequest,
        CannotOverrideTarget,
        LoopDetected,
        DirectoryNotEmpty,
        AlreadyExists,
    ])
}

pub fn block_service_status() -> impl Strategy<Value = BlockServiceStatus> {
    prop_oneof![Just(BlockServiceStatus::Ok), Just(BlockServiceStatus::Drain), Just(BlockServiceStatus::Terminal)]
}

/// The text of a valid name: 1–255 bytes of UTF-8 without `/` or NUL, not
/// `.` or `..`. Mixes plain ASCII, any Unicode, and names at the length limit.
pub fn name_text() -> impl Strategy<Value = String> {
    let any_char = any::<char>().prop_filter("no / or NUL", |c| *c != '/' && *c != '\0');
    prop_oneof![
        4 => "[a-zA-Z0-9._ -]{1,40}",
        3 => vec(any_char, 1..100).prop_map(|chars| chars.into_iter().collect::<String>()),
        1 => (1usize..=NAME_BYTES_MAX).prop_map(|len| "n".repeat(len)),
        1 => Just("é".repeat(127) + "x"),
    ]
    .prop_map(|mut text| {
        while text.len() > NAME_BYTES_MAX {
            text.pop();
        }
        text
    })
    .prop_filter("not empty, `.` or `..`", |text| !text.is_empty() && text != "." && text != "..")
}

pub fn name() -> impl Strategy<Value = Name<'static>> {
    name_text().prop_map(|text| Name::new(leak(text.into_bytes())).expect("the strategy makes valid names"))
}

/// Opaque bytes up to `MAX` (policy blobs, error texts, host names).
pub fn blob<const MAX: usize>() -> impl Strategy<Value = Blob<'static, MAX>> {
    vec(any::<u8>(), 0..=MAX).prop_map(|bytes| Blob::new(leak(bytes)).expect("within the limit"))
}

/// A list of up to `max` items (proptest picks short ones most of the time).
pub fn list_of<T, S>(item: S, max: usize) -> impl Strategy<Value = List<'static, T>>
where
    T: Encode + Decode<'static> + Clone + core::fmt::Debug + 'static,
    S: Strategy<Value = T>,
{
    vec(item, 0..=max).prop_map(|items| List::new(leak(items)))
}

pub fn list<T, S>(item: S) -> impl Strategy<Value = List<'static, T>>
where
    T: Encode + Decode<'static> + Clone + core::fmt::Debug + 'static,
    S: Strategy<Value = T>,
{
    list_of(item, 6)
}

/// A valid parity mode for block spans: 1 ≤ D ≤ 15, D + P ≤ 16.
pub fn parity() -> impl Strategy<Value = Parity> {
    (1u8..=15, 0u8..=15).prop_filter_map("D + P ≤ 16", |(d, p)| Parity::new(d, p))
}

/// Inline bytes, zero-fill, or blocks with exactly D+P entries.
pub fn span_body<B, S>(block: S) -> impl Strategy<Value = SpanBody<'static, B>>
where
    B: Encode + Decode<'static> + Clone + core::fmt::Debug + 'static,
    S: Strategy<Value = B> + Clone + 'static,
{
    prop_oneof![
        vec(any::<u8>(), 0..=INLINE_SPAN_BYTES_MAX)
            .prop_map(|bytes| SpanBody::Inline(Payload::new(leak(bytes)).expect("within the inline limit"))),
        Just(SpanBody::ZeroFill),
        (2u8..=255, parity()).prop_flat_map(move |(storage_class, parity)| {
            vec(block.clone(), parity.total_blocks()).prop_map(move |blocks| SpanBody::Blocks {
                storage_class,
                parity,
                blocks: List::new(leak(blocks)),
            })
        }),
    ]
}

pub fn error_resp() -> impl Strategy<Value = ErrorResp<'static>> {
    (proptest::sample::select(ErrorKind::ALL), blob()).prop_map(|(kind, text)| ErrorResp { kind, text })
}

fn ls_entry() -> impl Strategy<Value = LsEntry<'static>> {
    (fixed(), name()).prop_map(|(head, name)| LsEntry { head, name })
}

fn fetched_span() -> impl Strategy<Value = FetchedSpan<'static>> {
    (fixed(), span_body(fixed::<FetchedBlock>())).prop_map(|(head, body)| FetchedSpan { head, body })
}

/// Every shard request kind.
pub fn shard_request(kind: ShardKind) -> BoxedStrategy<ShardRequest<'static>> {
    use ShardKind as K;
    use ShardRequest as R;
    match kind {
        K::Resolve => (resolve_mode(), inode(), time(), name())
            .prop_map(|(mode, parent, creation_time, name)| {
                R::Resolve(ResolveReq { head: ResolveReqHead { mode, parent, creation_time }, name })
            })
            .boxed(),
        K::Stat => fixed().prop_map(R::Stat).boxed(),
        K::LsDir => fixed().prop_map(R::LsDir).boxed(),
        K::CreateEdenFile => {
            inode_type().prop_map(|inode_type| R::CreateEdenFile(CreateEdenFileReq { inode_type })).boxed()
        }
        K::AddEdenSpan => {
            (fixed(), span_body(fixed::<NewBlock>()), list_of(block_service_id(), ADD_SPAN_BLACKLIST_MAX))
                .prop_map(|(head, body, blacklist)| R::AddEdenSpan(AddEdenSpanReq { head, body, blacklist }))
                .boxed()
        }
        K::CertifyEdenSpan => (fixed(), list(mac()))
            .prop_map(|(head, proofs)| R::CertifyEdenSpan(CertifyEdenSpanReq { head, proofs }))
            .boxed(),
        K::LinkEdenFile => {
            (fixed(), name()).prop_map(|(head, name)| R::LinkEdenFile(LinkEdenFileReq { head, name })).boxed()
        }
        K::FetchSpans => fixed().prop_map(R::FetchSpans).boxed(),
        K::SameDirRename => (fixed(), name(), name())
            .prop_map(|(head, old_name, new_name)| R::SameDirRename(SameDirRenameReq { head, old_name, new_name }))
            .boxed(),
        K::DeleteFile => (fixed(), name()).prop_map(|(head, name)| R::DeleteFile(DeleteFileReq { head, name })).boxed(),
        K::ExpungeEdenSpan => fixed().prop_map(R::ExpungeEdenSpan).boxed(),
        K::CertifyExpunge => (fixed(), list(mac()))
            .prop_map(|(head, proofs)| R::CertifyExpunge(CertifyExpungeReq { head, proofs }))
            .boxed(),
        K::ExpungeEdenFile => fixed().prop_map(R::ExpungeEdenFile).boxed(),
        K::PurgeDirent => {
            (fixed(), name()).prop_map(|(head, name)| R::PurgeDirent(PurgeDirentReq { head, name })).boxed()
        }
        K::RepairSpans => fixed().prop_map(R::RepairSpans).boxed(),
        K::RepairBlock => fixed().prop_map(R::RepairBlock).boxed(),
        K::VisitInodes => fixed().prop_map(R::VisitInodes).boxed(),
        K::VisitEden => fixed().prop_map(R::VisitEden).boxed(),
        K::ReverseBlockQuery => fixed().prop_map(R::ReverseBlockQuery).boxed(),
        K::SetDirectoryPolicy => (fixed(), blob())
            .prop_map(|(head, policy)| R::SetDirectoryPolicy(SetDirectoryPolicyReq { head, policy }))
            .boxed(),
        K::PurgeDirectory => fixed().prop_map(R::PurgeDirectory).boxed(),
        K::CreateUnlinkedDir => fixed().prop_map(R::CreateUnlinkedDir).boxed(),
        K::SetParent => fixed().prop_map(R::SetParent).boxed(),
        K::InjectDirent => {
            (fixed(), name()).prop_map(|(head, name)| R::InjectDirent(InjectDirentReq { head, name })).boxed()
        }
        K::AcquireDirent => (inode(), inode_type(), any::<u64>(), any::<u64>(), name())
            .prop_map(|(dir, expected_type, transaction_id, forget_below, name)| {
                let (transaction_id, forget_below) = (U64::new(transaction_id), U64::new(forget_below));
                let head = AcquireDirentReqHead { dir, expected_type, transaction_id, forget_below };
                R::AcquireDirent(AcquireDirentReq { head, name })
            })
            .boxed(),
        K::ReleaseDirent => {
            (fixed(), name()).prop_map(|(head, name)| R::ReleaseDirent(ReleaseDirentReq { head, name })).boxed()
        }
        K::PurgeRemoteOwningDirent => (fixed(), name())
            .prop_map(|(head, name)| R::PurgeRemoteOwningDirent(PurgeRemoteOwningDirentReq { head, name }))
            .boxed(),
        K::MoveFileToEden => fixed().prop_map(R::MoveFileToEden).boxed(),
        K::CreateLinkedDir => {
            (fixed(), name()).prop_map(|(head, name)| R::CreateLinkedDir(CreateLinkedDirReq { head, name })).boxed()
        }
        K::CreateSmallFile => {
            (inode(), any::<u64>(), any::<u32>(), inode_type(), name(), vec(any::<u8>(), 0..=INLINE_SPAN_BYTES_MAX))
                .prop_map(|(parent, create_id, crc, inode_type, name, contents)| {
                    R::CreateSmallFile(CreateSmallFileReq {
                        head: CreateSmallFileReqHead {
                            parent,
                            create_id: U64::new(create_id),
                            crc: U32::new(crc),
                            inode_type,
                        },
                        name,
                        contents: Payload::new(leak(contents)).expect("within the inline limit"),
                    })
                })
                .boxed()
        }
        K::MoveFileInShard => (fixed(), name(), name())
            .prop_map(|(head, source_name, target_name)| {
                R::MoveFileInShard(MoveFileInShardReq { head, source_name, target_name })
            })
            .boxed(),
    }
}

/// Every shard response kind (errors: [`error_resp`]).
pub fn shard_response(kind: ShardKind) -> BoxedStrategy<ShardResponse<'static>> {
    use ShardKind as K;
    use ShardResponse as R;
    let empty = || Just(EmptyResp {});
    match kind {
        K::Resolve => fixed().prop_map(R::Resolve).boxed(),
        K::Stat => prop_oneof![
            (fixed(), blob()).prop_map(|(head, policy)| StatResp::Directory(StatDirectory { head, policy })),
            fixed().prop_map(StatResp::File),
        ]
        .prop_map(R::Stat)
        .boxed(),
        K::LsDir => {
            (fixed(), list(ls_entry())).prop_map(|(head, entries)| R::LsDir(LsDirResp { head, entries })).boxed()
        }
        K::CreateEdenFile => fixed().prop_map(R::CreateEdenFile).boxed(),
        K::AddEdenSpan => list_of(fixed(), 16)
            .prop_map(|blocks| R::AddEdenSpan(AddEdenSpanResp { head: AddEdenSpanRespHead {}, blocks }))
            .boxed(),
        K::CertifyEdenSpan => empty().prop_map(R::CertifyEdenSpan).boxed(),
        K::LinkEdenFile => fixed().prop_map(R::LinkEdenFile).boxed(),
        K::FetchSpans => (fixed(), list_of(fetched_span(), 3))
            .prop_map(|(head, spans)| R::FetchSpans(FetchSpansResp { head, spans }))
            .boxed(),
        K::SameDirRename => fixed().prop_map(R::SameDirRename).boxed(),
        K::DeleteFile => empty().prop_map(R::DeleteFile).boxed(),
        K::ExpungeEdenSpan => (fixed(), list_of(fixed(), 16))
            .prop_map(|(head, blocks)| R::ExpungeEdenSpan(ExpungeEdenSpanResp { head, blocks }))
            .boxed(),
        K::CertifyExpunge => empty().prop_map(R::CertifyExpunge).boxed(),
        K::ExpungeEdenFile => empty().prop_map(R::ExpungeEdenFile).boxed(),
        K::PurgeDirent => empty().prop_map(R::PurgeDirent).boxed(),
        K::RepairSpans => empty().prop_map(R::RepairSpans).boxed(),
        K::RepairBlock => empty().prop_map(R::RepairBlock).boxed(),
        // Up to 300 entries, so counts above 255 exercise the u16's high byte.
        K::VisitInodes => (fixed(), list_of(inode(), 300))
            .prop_map(|(head, inodes)| R::VisitInodes(VisitInodesResp { head, inodes }))
            .boxed(),
        K::VisitEden => {
            (fixed(), list(fixed())).prop_map(|(head, entries)| R::VisitEden(VisitEdenResp { head, entries })).boxed()
        }
        K::ReverseBlockQuery => (fixed(), list(fixed()))
            .prop_map(|(head, entries)| R::ReverseBlockQuery(ReverseBlockQueryResp { head, entries }))
            .boxed(),
        K::SetDirectoryPolicy => empty().prop_map(R::SetDirectoryPolicy).boxed(),
        K::PurgeDirectory => empty().prop_map(R::PurgeDirectory).boxed(),
        K::CreateUnlinkedDir => fixed().prop_map(R::CreateUnlinkedDir).boxed(),
        K::SetParent => empty().prop_map(R::SetParent).boxed(),
        K::InjectDirent => fixed().prop_map(R::InjectDirent).boxed(),
        K::AcquireDirent => fixed().prop_map(R::AcquireDirent).boxed(),
        K::ReleaseDirent => empty().prop_map(R::ReleaseDirent).boxed(),
        K::PurgeRemoteOwningDirent => empty().prop_map(R::PurgeRemoteOwningDirent).boxed(),
        K::MoveFileToEden => empty().prop_map(R::MoveFileToEden).boxed(),
        K::CreateLinkedDir => fixed().prop_map(R::CreateLinkedDir).boxed(),
        K::CreateSmallFile => fixed().prop_map(R::CreateSmallFile).boxed(),
        K::MoveFileInShard => fixed().prop_map(R::MoveFileInShard).boxed(),
    }
}

/// Every CDC request kind.
pub fn cdc_request(kind: CdcKind) -> BoxedStrategy<CdcRequest<'static>> {
    use CdcKind as K;
    use CdcRequest as R;
    match kind {
        K::MkDir => (fixed(), name()).prop_map(|(head, name)| R::MkDir(cdc::MkDirReq { head, name })).boxed(),
        K::RmDir => (fixed(), name()).prop_map(|(head, name)| R::RmDir(cdc::RmDirReq { head, name })).boxed(),
        K::MvFile => (fixed(), name(), name())
            .prop_map(|(head, source_name, target_name)| R::MvFile(cdc::MvFileReq { head, source_name, target_name }))
            .boxed(),
        K::MvDir => (fixed(), name(), name())
            .prop_map(|(head, source_name, target_name)| R::MvDir(cdc::MvDirReq { head, source_name, target_name }))
            .boxed(),
        K::PurgeRemoteFile => (fixed(), name())
            .prop_map(|(head, name)| R::PurgeRemoteFile(cdc::PurgeRemoteFileReq { head, name }))
            .boxed(),
    }
}

/// Every CDC response kind: all answer with a status, an inode and a text.
pub fn cdc_response(kind: CdcKind) -> BoxedStrategy<CdcResponse<'static>> {
    (cdc_status(), inode(), blob())
        .prop_map(move |(status, inode, text)| {
            let resp = cdc::CdcResp { head: cdc::CdcRespHead { status, inode }, text };
            match kind {
                CdcKind::MkDir => CdcResponse::MkDir(resp),
                CdcKind::RmDir => CdcResponse::RmDir(resp),
                CdcKind::MvFile => CdcResponse::MvFile(resp),
                CdcKind::MvDir => CdcResponse::MvDir(resp),
                CdcKind::PurgeRemoteFile => CdcResponse::PurgeRemoteFile(resp),
            }
        })
        .boxed()
}

/// Every shuckle request kind.
pub fn shuckle_request(kind: ShuckleKind) -> BoxedStrategy<ShuckleRequest> {
    use ShuckleKind as K;
    use ShuckleRequest as R;
    match kind {
        K::Shards => fixed().prop_map(R::Shards).boxed(),
        K::Cdc => Just(R::Cdc(shuckle::CdcReq {})).boxed(),
        K::BlockServices => fixed().prop_map(R::BlockServices).boxed(),
        K::BlockServicesWithKeys => fixed().prop_map(R::BlockServicesWithKeys).boxed(),
        K::RegisterShard => fixed().prop_map(R::RegisterShard).boxed(),
        K::RegisterCdc => fixed().prop_map(R::RegisterCdc).boxed(),
    }
}

fn block_service_info() -> impl Strategy<Value = shuckle::BlockServiceInfo<'static>> {
    (
        (block_service_id(), address(), any::<u8>(), any::<u8>(), block_service_status()),
        (any::<[u64; 5]>(), time()),
        blob(),
    )
        .prop_map(|((id, address, storage_class, flags, status), (counts, last_check), host)| {
            shuckle::BlockServiceInfo {
                head: shuckle::BlockServiceInfoHead {
                    id,
                    address,
                    storage_class,
                    flags,
                    status,
                    write_weight: U64::new(counts[0]),
                    used_bytes: U64::new(counts[1]),
                    free_bytes: U64::new(counts[2]),
                    used_blocks: U64::new(counts[3]),
                    last_check,
                },
                host,
            }
        })
}

/// Every shuckle response kind.
pub fn shuckle_response(kind: ShuckleKind) -> BoxedStrategy<ShuckleResponse<'static>> {
    use ShuckleKind as K;
    use ShuckleResponse as R;
    match kind {
        K::Shards => {
            (fixed(), list(fixed())).prop_map(|(head, shards)| R::Shards(shuckle::ShardsResp { head, shards })).boxed()
        }
        K::Cdc => fixed().prop_map(R::Cdc).boxed(),
        K::BlockServices => (fixed(), list(block_service_info()))
            .prop_map(|(head, block_services)| R::BlockServices(shuckle::BlockServicesResp { head, block_services }))
            .boxed(),
        K::BlockServicesWithKeys => {
            (fixed(), list((fixed(), blob()).prop_map(|(head, host)| shuckle::BlockServiceWithKey { head, host })))
                .prop_map(|(head, block_services)| {
                    R::BlockServicesWithKeys(shuckle::BlockServicesWithKeysResp { head, block_services })
                })
                .boxed()
        }
        K::RegisterShard => Just(R::RegisterShard(EmptyResp {})).boxed(),
        K::RegisterCdc => Just(R::RegisterCdc(EmptyResp {})).boxed(),
    }
}
