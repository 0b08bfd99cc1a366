//! The requests that only read: resolve, stat, ls_dir, fetch_spans and the
//! visits.

use heed::RoTxn;
use std::ops::Bound;
use wire::codec::{Encode, List, PageBudget};
use wire::ids::{BlockId, EggsTime, InodeId, InodeType};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::shard::*;
use wire::shuckle::flags;
use wire::span::{InlineBytes, SpanBody};
use wire::{Address, ErrorKind, Name};
use zerocopy::byteorder::little_endian::{U32, U64};

use super::dirents::{directory, hash_of, version_as_of};
use super::{Env, HandleError, Shard, refuse};
use crate::store::*;

pub(super) fn handle(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    env: &Env<'_>,
    request_id: u64,
    request: &ShardRequest<'_>,
    out: &mut [u8],
) -> Result<usize, HandleError> {
    let response = match request {
        ShardRequest::Resolve(req) => ShardResponse::Resolve(resolve(shard, store, txn, req)?),
        ShardRequest::Stat(req) => {
            let mut policy = Vec::new();
            let stat = stat(shard, store, txn, env, req, &mut policy)?;
            return Ok(shard.encode(out, request_id, &ShardResponse::Stat(stat.into_resp(&policy)?)));
        }
        ShardRequest::LsDir(req) => return ls_dir(shard, store, txn, request_id, req, out),
        ShardRequest::FetchSpans(req) => return fetch_spans(shard, store, txn, env, request_id, req, out),
        ShardRequest::VisitInodes(req) => return visit_inodes(shard, store, txn, request_id, req, out),
        ShardRequest::VisitEden(req) => return visit_eden(shard, store, txn, request_id, req, out),
        ShardRequest::ReverseBlockQuery(req) => return reverse_block_query(shard, store, txn, request_id, req, out),
        _ => return refuse(ErrorKind::LogicError, "not a read"),
    };
    Ok(shard.encode(out, request_id, &response))
}

fn resolve(shard: &Shard, store: &Store, txn: &RoTxn, req: &ResolveReq<'_>) -> Result<ResolveResp, HandleError> {
    let dir = directory(shard, store, txn, req.parent)?;
    let name = req.name.as_bytes();
    let name_hash = hash_of(&dir, name)?;
    match req.mode {
        ResolveMode::Alive => match store.living.get(txn, &living_key(req.parent, name_hash, name))? {
            Some(bytes) => {
                let record = LivingRecord::decode(bytes)?;
                Ok(ResolveResp { inode: record.inode, creation_time: record.creation_time })
            }
            None => refuse(ErrorKind::NotFound, format!("no entry {:?} in {}", req.name, req.parent)),
        },
        ResolveMode::DeadLe | ResolveMode::DeadGe => {
            let newer = req.mode == ResolveMode::DeadGe;
            match version_as_of(store, txn, req.parent, name_hash, name, req.creation_time, newer, true)? {
                Some((creation_time, inode)) => Ok(ResolveResp { inode, creation_time }),
                None => refuse(ErrorKind::NotFound, format!("no dead entry {:?} in {}", req.name, req.parent)),
            }
        }
    }
}

enum Stat {
    Directory { mtime: EggsTime, parent: InodeId, hash_mode: u8 },
    File(StatFile),
}

impl Stat {
    fn into_resp(self, policy: &[u8]) -> Result<StatResp<'_>, HandleError> {
        Ok(match self {
            Stat::Directory { mtime, parent, hash_mode } => StatResp::Directory(StatDirectory {
                head: StatDirectoryHead { mtime, parent, hash_mode },
                policy: PolicyBlob::new(policy).map_err(|_| StoreError::Corrupt("policy"))?,
            }),
            Stat::File(file) => StatResp::File(file),
        })
    }
}

fn stat(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    env: &Env<'_>,
    req: &StatReq,
    policy: &mut Vec<u8>,
) -> Result<Stat, HandleError> {
    let inode = req.inode.without_owning();
    if inode.inode_type() == Some(InodeType::Directory) {
        let dir = directory(shard, store, txn, inode)?;
        *policy = dir.policy;
        return Ok(Stat::Directory { mtime: dir.mtime, parent: dir.parent, hash_mode: dir.hash_mode });
    }
    if inode.shard() != shard.shard {
        return refuse(ErrorKind::NotFound, format!("{inode} is not on shard {}", shard.shard));
    }
    if let Some(bytes) = store.files.get(txn, &inode_key(inode))? {
        let file = FileRecord::decode(bytes)?;
        return Ok(Stat::File(StatFile { mtime: file.mtime, size: U64::new(file.size) }));
    }
    if let Some(bytes) = store.eden.get(txn, &inode_key(inode))? {
        // An eden file's mtime is the start of its deadline window.
        let eden = EdenRecord::decode(bytes)?;
        let mtime = eden.deadline.saturating_sub_ns(env.durations.eden_deadline_ns);
        return Ok(Stat::File(StatFile { mtime, size: U64::new(eden.size) }));
    }
    refuse(ErrorKind::NotFound, format!("no inode {inode}"))
}

/// One listed entry before it is encoded (the name borrows the store).
struct Listed<'t> {
    name_hash: u64,
    inode: InodeId,
    creation_time: EggsTime,
    name: &'t [u8],
}

/// Collects a page of `Listed` entries in order, never splitting the names
/// of one hash across pages. Returns (entries, next_hash, more).
struct Pager<'t> {
    budget: PageBudget,
    entries: Vec<Listed<'t>>,
    /// Index in `entries` where the current hash group starts.
    group_start: usize,
    full: Option<(u64, bool)>,
}

impl<'t> Pager<'t> {
    fn new() -> Self {
        Self {
            budget: PageBudget::new(UDP_DATAGRAM_BYTES_MAX, LS_DIR_RESP_FIXED_BYTES),
            entries: Vec::new(),
            group_start: 0,
            full: None,
        }
    }

    /// False once the page is full (then stop feeding it).
    fn push(&mut self, entry: Listed<'t>) -> bool {
        if self.entries.last().is_none_or(|last| last.name_hash != entry.name_hash) {
            self.group_start = self.entries.len();
        }
        let len = core::mem::size_of::<LsEntryHead>() + 1 + entry.name.len();
        if self.budget.admit(len) {
            self.entries.push(entry);
            return true;
        }
        if self.group_start > 0 {
            // Give the whole group to the next page.
            let hash = self.entries.get(self.group_start).map_or(entry.name_hash, |e| e.name_hash);
            self.entries.truncate(self.group_start);
            self.full = Some((hash, true));
        } else {
            // One hash's names overflow a whole page (needs ~6 colliding
            // 64-bit hashes of long names): skip the rest of the group.
            self.full = Some((entry.name_hash.wrapping_add(1), entry.name_hash != u64::MAX));
        }
        false
    }
}

fn ls_dir(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    request_id: u64,
    req: &LsDirReq,
    out: &mut [u8],
) -> Result<usize, HandleError> {
    directory(shard, store, txn, req.dir)?;
    if req.flags & !ls_flags::ALL != 0 {
        return refuse(ErrorKind::BadRequest, "unknown ls flags");
    }
    let start = hash_prefix(req.dir, req.start_hash.get());
    let end = hash_prefix(req.dir, u64::MAX);
    let mut end_key = end.to_vec();
    end_key.push(0xff);
    let range = (Bound::Included(&start[..]), Bound::Excluded(&end_key[..]));
    let mut pager = Pager::new();
    if req.flags & ls_flags::USE_DEAD_MAP == 0 {
        for item in store.living.range(txn, &range)? {
            let (key, value) = item?;
            let key = parse_living_key(key)?;
            let record = LivingRecord::decode(value)?;
            let entry = Listed {
                name_hash: key.name_hash,
                inode: record.inode,
                creation_time: record.creation_time,
                name: key.name,
            };
            if !pager.push(entry) {
                break;
            }
        }
    } else {
        list_dead(store, txn, req, &range, &mut pager)?;
    }
    let (next_hash, more) = pager.full.unwrap_or((0, false));
    let mut entries = Vec::with_capacity(pager.entries.len());
    for listed in &pager.entries {
        let name = Name::new(listed.name).map_err(|_| StoreError::Corrupt("entry name"))?;
        entries.push(LsEntry {
            head: LsEntryHead {
                name_hash: U64::new(listed.name_hash),
                inode: listed.inode,
                creation_time: listed.creation_time,
            },
            name,
        });
    }
    let response = LsDirResp {
        head: LsDirRespHead { next_hash: U64::new(next_hash), more: u8::from(more) },
        entries: List::new(&entries),
    };
    Ok(shard.encode(out, request_id, &ShardResponse::LsDir(response)))
}

/// For each name of the dead map, its version as of `as_of`.
fn list_dead<'t>(
    store: &Store,
    txn: &'t RoTxn,
    req: &LsDirReq,
    range: &(Bound<&[u8]>, Bound<&[u8]>),
    pager: &mut Pager<'t>,
) -> Result<(), HandleError> {
    let newer = req.flags & ls_flags::NEWER_THAN_AS_OF != 0;
    let include_nothing = req.flags & ls_flags::INCLUDE_NOTHING != 0;
    let as_of = req.as_of;
    // The chosen version of the current name: (hash, name, creation, inode).
    let mut current: Option<(u64, &'t [u8])> = None;
    let mut chosen: Option<(EggsTime, InodeId)> = None;
    let mut flush = |current: Option<(u64, &'t [u8])>, chosen: Option<(EggsTime, InodeId)>| -> bool {
        match (current, chosen) {
            (Some((name_hash, name)), Some((creation_time, inode))) if include_nothing || !inode.is_null() => {
                pager.push(Listed { name_hash, inode, creation_time, name })
            }
            _ => true,
        }
    };
    for item in store.dead.range(txn, range)? {
        let (key, value) = item?;
        let key = parse_dead_key(key)?;
        let inode = InodeId::new(decode_u64(value, "dead record")?);
        if current.is_none_or(|(hash, name)| hash != key.name_hash || name != key.name) {
            if !flush(current, chosen) {
                return Ok(());
            }
            current = Some((key.name_hash, key.name));
            chosen = None;
        }
        let t = key.creation_time;
        if newer {
            if t >= as_of && chosen.is_none() {
                chosen = Some((t, inode));
            }
        } else if t <= as_of {
            chosen = Some((t, inode));
        }
    }
    flush(current, chosen);
    Ok(())
}

/// Encoded length of a fetched span with `blocks` blocks or `inline` bytes.
fn fetched_span_len(record: &SpanRecord) -> usize {
    core::mem::size_of::<FetchedSpanHead>()
        + 1
        + match &record.payload {
            SpanPayload::Inline(bytes) => 2 + bytes.len(),
            SpanPayload::ZeroFill => 0,
            SpanPayload::Blocks { blocks, .. } => 1 + 2 + blocks.len() * core::mem::size_of::<FetchedBlock>(),
        }
}

fn fetched_block(env: &Env<'_>, block: &StoredBlock) -> FetchedBlock {
    let (address, flags) = match env.block_services.get(block.block_service_id) {
        Some((service, _)) => (service.address, service.flags),
        None => (Address::UNKNOWN, flags::UNKNOWN),
    };
    FetchedBlock {
        block_service_id: block.block_service_id,
        address,
        flags,
        block_id: block.block_id,
        crc: U32::new(block.crc),
        size: U32::new(block.size),
    }
}

fn fetch_spans(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    env: &Env<'_>,
    request_id: u64,
    req: &FetchSpansReq,
    out: &mut [u8],
) -> Result<usize, HandleError> {
    let inode = req.inode.without_owning();
    let key = inode_key(inode);
    if store.files.get(txn, &key)?.is_none() && store.eden.get(txn, &key)?.is_none() {
        return refuse(ErrorKind::NotFound, format!("no file {inode}"));
    }
    let offset = req.offset.get();
    // The span containing `offset` starts at or before it.
    let first = match store.spans.get_lower_than_or_equal_to(txn, &span_key(inode, offset))? {
        Some((key, _)) => match parse_span_key(key)? {
            (found, start) if found == inode => start,
            _ => offset,
        },
        None => offset,
    };
    let mut budget = PageBudget::new(UDP_DATAGRAM_BYTES_MAX, FETCH_SPANS_RESP_FIXED_BYTES);
    let mut spans: Vec<(u64, SpanRecord)> = Vec::new();
    let mut next_offset = 0;
    let range = (Bound::Included(span_key(inode, first)), Bound::Included(span_key(inode, u64::MAX)));
    let range = (range.0.as_ref().map(|k| &k[..]), range.1.as_ref().map(|k| &k[..]));
    for item in store.spans.range(txn, &range)? {
        let (key, value) = item?;
        let (_, start) = parse_span_key(key)?;
        let record = SpanRecord::decode(value)?;
        if start + u64::from(record.size) <= offset {
            continue;
        }
        if !budget.admit(fetched_span_len(&record)) {
            next_offset = start;
            break;
        }
        spans.push((start, record));
    }
    let blocks: Vec<Vec<FetchedBlock>> =
        spans.iter().map(|(_, record)| record.blocks().iter().map(|b| fetched_block(env, b)).collect()).collect();
    let mut fetched = Vec::with_capacity(spans.len());
    for ((start, record), blocks) in spans.iter().zip(&blocks) {
        let body = match &record.payload {
            SpanPayload::Inline(bytes) => {
                SpanBody::Inline(InlineBytes::new(bytes).map_err(|_| StoreError::Corrupt("inline span"))?)
            }
            SpanPayload::ZeroFill => SpanBody::ZeroFill,
            SpanPayload::Blocks { storage_class, parity, .. } => {
                SpanBody::Blocks { storage_class: *storage_class, parity: *parity, blocks: List::new(blocks) }
            }
        };
        fetched.push(FetchedSpan {
            head: FetchedSpanHead { offset: U64::new(*start), size: U32::new(record.size), crc: U32::new(record.crc) },
            body,
        });
    }
    let response =
        FetchSpansResp { head: FetchSpansRespHead { next_offset: U64::new(next_offset) }, spans: List::new(&fetched) };
    debug_assert!(response.encoded_len() + FETCH_SPANS_RESP_FIXED_BYTES <= UDP_DATAGRAM_BYTES_MAX + 2 + 8);
    Ok(shard.encode(out, request_id, &ShardResponse::FetchSpans(response)))
}

/// The key (a BE u64) of the next item, without consuming it.
fn peek_key<'t, I>(iter: &mut std::iter::Peekable<I>) -> Result<Option<u64>, HandleError>
where
    I: Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>>,
{
    match iter.peek() {
        Some(Ok((key, _))) => Ok(Some(parse_be_u64_key(key, "inode key")?)),
        Some(Err(_)) => match iter.next() {
            Some(Err(error)) => Err(error.into()),
            _ => Ok(None),
        },
        None => Ok(None),
    }
}

fn range_from(begin: &[u8]) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (Bound::Included(begin), Bound::Unbounded)
}

fn visit_inodes(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    request_id: u64,
    req: &VisitInodesReq,
    out: &mut [u8],
) -> Result<usize, HandleError> {
    let begin = inode_key(req.begin.without_owning());
    let mut budget = PageBudget::new(UDP_DATAGRAM_BYTES_MAX, VISIT_RESP_FIXED_BYTES);
    let mut directories = store.directories.range(txn, &range_from(&begin))?.peekable();
    let mut files = store.files.range(txn, &range_from(&begin))?.peekable();
    let mut inodes = Vec::new();
    let mut next = InodeId::NULL;
    loop {
        let directory = peek_key(&mut directories)?;
        let file = peek_key(&mut files)?;
        let smallest = match (directory, file) {
            (Some(d), Some(f)) => d.min(f),
            (Some(d), None) => d,
            (None, Some(f)) => f,
            (None, None) => break,
        };
        if !budget.admit(8) {
            next = InodeId::new(smallest);
            break;
        }
        inodes.push(InodeId::new(smallest));
        if directory == Some(smallest) {
            directories.next();
        } else {
            files.next();
        }
    }
    let response = VisitInodesResp { head: VisitInodesRespHead { next }, inodes: List::new(&inodes) };
    Ok(shard.encode(out, request_id, &ShardResponse::VisitInodes(response)))
}

fn visit_eden(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    request_id: u64,
    req: &VisitEdenReq,
    out: &mut [u8],
) -> Result<usize, HandleError> {
    let begin = inode_key(req.begin.without_owning());
    let mut budget = PageBudget::new(UDP_DATAGRAM_BYTES_MAX, VISIT_RESP_FIXED_BYTES);
    let mut entries = Vec::new();
    let mut next = InodeId::NULL;
    for item in store.eden.range(txn, &range_from(&begin))? {
        let (key, value) = item?;
        let inode = InodeId::new(parse_be_u64_key(key, "eden key")?);
        if !budget.admit(core::mem::size_of::<EdenEntry>()) {
            next = inode;
            break;
        }
        entries.push(EdenEntry { inode, deadline: EdenRecord::decode(value)?.deadline });
    }
    let response = VisitEdenResp { head: VisitEdenRespHead { next }, entries: List::new(&entries) };
    Ok(shard.encode(out, request_id, &ShardResponse::VisitEden(response)))
}

fn reverse_block_query(
    shard: &Shard,
    store: &Store,
    txn: &RoTxn,
    request_id: u64,
    req: &ReverseBlockQueryReq,
    out: &mut [u8],
) -> Result<usize, HandleError> {
    let begin = reverse_key(req.block_service_id, req.begin);
    let end = reverse_key(req.block_service_id, BlockId::new(u64::MAX));
    let range = (Bound::Included(&begin[..]), Bound::Included(&end[..]));
    let mut budget = PageBudget::new(UDP_DATAGRAM_BYTES_MAX, VISIT_RESP_FIXED_BYTES);
    let mut entries = Vec::new();
    let mut next = BlockId::new(0);
    for item in store.reverse_blocks.range(txn, &range)? {
        let (key, value) = item?;
        let block_id = BlockId::new(key.get(8..).map_or(Ok(0), |k| parse_be_u64_key(k, "reverse key"))?);
        if !budget.admit(core::mem::size_of::<ReverseBlockEntry>()) {
            next = block_id;
            break;
        }
        let (inode, offset) = decode_reverse(value)?;
        entries.push(ReverseBlockEntry { block_id, inode, span_offset: U64::new(offset) });
    }
    let response = ReverseBlockQueryResp { head: ReverseBlockQueryRespHead { next }, entries: List::new(&entries) };
    Ok(shard.encode(out, request_id, &ShardResponse::ReverseBlockQuery(response)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name_hash: u64, name: &[u8]) -> Listed<'_> {
        Listed { name_hash, inode: InodeId::ROOT, creation_time: EggsTime::ZERO, name }
    }

    #[test]
    fn a_page_never_splits_the_names_of_one_hash() {
        let long = [b'n'; 255];
        let mut pager = Pager::new();
        // Four long names of hash 1 fill most of the page; then three names
        // sharing hash 2 do not all fit: the whole hash-2 group moves on.
        for _ in 0..4 {
            assert!(pager.push(entry(1, &long)));
        }
        let mut pushed = 0;
        while pager.push(entry(2, &long[..200])) {
            pushed += 1;
        }
        assert!(pushed >= 1, "some of the group fitted before the overflow");
        assert_eq!(pager.entries.len(), 4, "the partial group was taken back");
        assert_eq!(pager.full, Some((2, true)));
    }

    #[test]
    fn a_group_larger_than_a_page_is_cut_not_looped_on() {
        let long = [b'n'; 255];
        let mut pager = Pager::new();
        while pager.push(entry(9, &long)) {}
        assert!(!pager.entries.is_empty());
        assert_eq!(pager.full, Some((10, true)), "the next page starts after the group");
    }
}
