//! The request logic driven directly: no sockets, a fake clock.

use rand::SeedableRng;
use rand::rngs::StdRng;
use wire::codec::List;
use wire::crc::{crc32c, crc32c_zeros};
use wire::datagram;
use wire::ids::{BlockServiceId, EggsTime, InodeId, InodeType};
use wire::limits::{EDEN_DEADLINE_NS, NS_PER_SECOND, PURGE_AGE_MIN_NS, UDP_DATAGRAM_BYTES_MAX};
use wire::mac::{Mac, MacKey, SecretKey};
use wire::shard::*;
use wire::span::{InlineBytes, SpanBody};
use wire::{Address, ErrorKind, Name, Parity};
use zerocopy::byteorder::little_endian::{U32, U64};

use super::*;
use crate::block_services::{BlockServiceRecord, BlockServiceTable};
use crate::store::FileRecord;

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    shard: Shard,
    table: BlockServiceTable,
    now: EggsTime,
    durations: Durations,
    rng: StdRng,
    cluster: MacKey,
    next_request: u64,
    /// The last mutation asked for a block service refresh.
    refresh_wanted: bool,
}

fn service_key(id: u64) -> SecretKey {
    SecretKey([id as u8 + 1; 16])
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cluster_key = SecretKey([7; 16]);
        let now = EggsTime::now();
        let shard = Shard::open(&store, 1, &cluster_key, now).unwrap();
        let services = (0..6)
            .map(|i| BlockServiceRecord {
                id: wire::mac::block_service_id(&service_key(i)),
                address: Address::from(std::net::SocketAddr::from(([127, 0, 0, 1], 4000 + i as u16))),
                storage_class: 2,
                flags: 0,
                write_weight: 10,
                key: service_key(i),
                host: format!("host{i}").into_bytes(),
            })
            .collect();
        Self {
            _dir: dir,
            store,
            shard,
            table: BlockServiceTable::new(services),
            now,
            durations: Durations::default(),
            rng: StdRng::seed_from_u64(1),
            cluster: MacKey::new(&cluster_key),
            next_request: 1,
            refresh_wanted: false,
        }
    }

    fn advance(&mut self, ns: u64) {
        self.now = self.now.saturating_add_ns(ns);
    }

    /// Runs a request, returns the encoded response datagram.
    fn call(&mut self, request: ShardRequest<'_>) -> Vec<u8> {
        self.now = self.now.saturating_add_ns(1000);
        let request_id = self.next_request;
        self.next_request += 1;
        let env = Env { now: self.now, block_services: &self.table, durations: self.durations };
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = if request.kind().is_mutation() {
            let mut txn = self.store.write_txn().unwrap();
            let mut effects = MutationEffects::default();
            let len = self
                .shard
                .handle_mutation(
                    &self.store,
                    &mut txn,
                    &env,
                    &mut self.rng,
                    &mut effects,
                    request_id,
                    &request,
                    &mut out,
                )
                .unwrap();
            txn.commit().unwrap();
            self.refresh_wanted = effects.wants_block_service_refresh;
            len
        } else {
            let txn = self.store.read_txn().unwrap();
            self.shard.handle_read(&self.store, &txn, &env, request_id, &request, &mut out)
        };
        assert!(len <= UDP_DATAGRAM_BYTES_MAX);
        out.truncate(len);
        let (header, _) = datagram::decode::<ShardResponse>(&out, Some(&self.cluster)).unwrap();
        assert_eq!(header.request_id(), request_id);
        out
    }
}

fn decode<'a>(bytes: &'a [u8], key: &MacKey) -> ShardResponse<'a> {
    datagram::decode::<ShardResponse>(bytes, Some(key)).unwrap().1
}

macro_rules! ok {
    ($harness:expr, $variant:ident, $request:expr) => {{
        let bytes = $harness.call(ShardRequest::$variant($request));
        match decode(&bytes, &$harness.cluster) {
            ShardResponse::$variant(response) => response.clone(),
            other => panic!("expected {}: {other:?}", stringify!($variant)),
        }
    }};
}

/// Owned copies of borrowed responses (for lists).
macro_rules! with_ok {
    ($harness:expr, $variant:ident, $request:expr, |$r:ident| $body:expr) => {{
        let bytes = $harness.call(ShardRequest::$variant($request));
        match decode(&bytes, &$harness.cluster) {
            ShardResponse::$variant($r) => $body,
            other => panic!("expected {}: {other:?}", stringify!($variant)),
        }
    }};
}

fn error(harness: &mut Harness, request: ShardRequest<'_>) -> ErrorKind {
    let bytes = harness.call(request);
    match decode(&bytes, &harness.cluster) {
        ShardResponse::Error(error) => error.kind,
        other => panic!("expected an error: {other:?}"),
    }
}

fn name(text: &str) -> Name<'_> {
    Name::new(text.as_bytes()).unwrap()
}

fn resolve_req(parent: InodeId, text: &str, mode: ResolveMode, time: EggsTime) -> ResolveReq<'_> {
    ResolveReq { head: ResolveReqHead { mode, parent, creation_time: time }, name: name(text) }
}

fn inline_span(inode: InodeId, cookie: Mac, offset: u64, bytes: &[u8]) -> AddEdenSpanReq<'_> {
    AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode,
            cookie,
            offset: U64::new(offset),
            size: U32::new(bytes.len() as u32),
            crc: U32::new(crc32c(bytes)),
        },
        body: SpanBody::Inline(InlineBytes::new(bytes).unwrap()),
        blacklist: List::empty(),
    }
}

/// Creates a file with one inline span and links it; returns inode and
/// creation time.
fn create_file(h: &mut Harness, parent: InodeId, file_name: &str, contents: &[u8]) -> (InodeId, EggsTime) {
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    with_ok!(h, AddEdenSpan, inline_span(created.inode, created.cookie, 0, contents), |r| assert!(r.blocks.is_empty()));
    let link = LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent },
        name: name(file_name),
    };
    let linked = ok!(h, LinkEdenFile, link);
    (created.inode, linked.creation_time)
}

fn ls(h: &mut Harness, dir: InodeId, as_of: EggsTime, flags: u8) -> Vec<(String, InodeId, EggsTime)> {
    let mut all = Vec::new();
    let mut start = 0u64;
    loop {
        let request = LsDirReq { dir, as_of, start_hash: U64::new(start), flags };
        let (more, next) = with_ok!(h, LsDir, request, |r| {
            for entry in r.entries.iter() {
                all.push((entry.name.as_str().to_string(), entry.inode, entry.creation_time));
            }
            (r.more != 0, r.next_hash.get())
        });
        if !more {
            return all;
        }
        assert!(next >= start);
        start = next;
    }
}

/// A plain inject_dirent of `inode` as `child_name` in `dir`: non-owning,
/// not remembered for any transaction (the way tests set entries up).
fn plain_inject(dir: InodeId, inode: InodeId, child_name: &str, dry_run: bool) -> InjectDirentReq<'_> {
    InjectDirentReq {
        head: InjectDirentReqHead {
            dir,
            inode,
            dry_run: u8::from(dry_run),
            owning: 0,
            transaction_id: U64::ZERO,
            forget_below: U64::ZERO,
        },
        name: name(child_name),
    }
}

/// acquire_dirent of `child_name` in `dir` (transaction 0, nothing forgotten).
fn acquire_req(dir: InodeId, expected_type: InodeType, child_name: &str) -> AcquireDirentReq<'_> {
    AcquireDirentReq {
        head: AcquireDirentReqHead { dir, expected_type, transaction_id: U64::ZERO, forget_below: U64::ZERO },
        name: name(child_name),
    }
}

/// Releases the root's entry `from` (of `inode`), then renames it `to`,
/// as a client may between a CDC crash and its resume.
fn release_then_rename(h: &mut Harness, inode: InodeId, from: &str, to: &str) {
    let release =
        ReleaseDirentReq { head: ReleaseDirentReqHead { dir: InodeId::ROOT, inode, kill: 0 }, name: name(from) };
    ok!(h, ReleaseDirent, release);
    let rename = SameDirRenameReq {
        head: SameDirRenameReqHead { parent: InodeId::ROOT },
        old_name: name(from),
        new_name: name(to),
    };
    ok!(h, SameDirRename, rename);
}

fn names(entries: &[(String, InodeId, EggsTime)]) -> Vec<&str> {
    let mut names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort();
    names
}

#[test]
fn root_exists_on_shard_one_and_stat_answers() {
    let mut h = Harness::new();
    with_ok!(h, Stat, StatReq { inode: InodeId::ROOT }, |stat| {
        let StatResp::Directory(dir) = stat else { panic!("root is a directory") };
        assert!(dir.parent.is_null());
    });
    assert_eq!(
        error(&mut h, ShardRequest::Stat(StatReq { inode: InodeId::new(0x2020_0000_0000_0099) })),
        ErrorKind::NotFound
    );
}

#[test]
fn files_are_created_linked_resolved_and_read() {
    let mut h = Harness::new();
    let (inode, created) = create_file(&mut h, InodeId::ROOT, "hello.txt", b"hello, world");
    let resolved = ok!(h, Resolve, resolve_req(InodeId::ROOT, "hello.txt", ResolveMode::Alive, EggsTime::ZERO));
    assert_eq!(resolved.inode, inode.with_owning(true));
    assert_eq!(resolved.creation_time, created);
    with_ok!(h, Stat, StatReq { inode }, |stat| {
        let StatResp::File(stat) = stat else { panic!() };
        assert_eq!(stat.size.get(), 12);
    });
    with_ok!(h, FetchSpans, FetchSpansReq { inode, offset: U64::new(5) }, |r| {
        assert_eq!(r.next_offset.get(), 0);
        let span = r.spans.get(0).unwrap();
        assert_eq!(span.offset.get(), 0);
        let SpanBody::Inline(bytes) = span.body else { panic!() };
        assert_eq!(bytes.as_bytes(), b"hello, world");
    });
    // Zero-fill spans and a wrong CRC.
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::Symlink });
    let zero = |crc| AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode: created.inode,
            cookie: created.cookie,
            offset: U64::new(0),
            size: U32::new(1000),
            crc: U32::new(crc),
        },
        body: SpanBody::ZeroFill,
        blacklist: List::empty(),
    };
    assert_eq!(error(&mut h, ShardRequest::AddEdenSpan(zero(1))), ErrorKind::CrcMismatch);
    with_ok!(h, AddEdenSpan, zero(crc32c_zeros(1000)), |r| assert!(r.blocks.is_empty()));
    // Appends only at the end; a bad cookie is refused.
    assert_eq!(
        error(&mut h, ShardRequest::AddEdenSpan(inline_span(created.inode, created.cookie, 5, b"x"))),
        ErrorKind::BadRequest
    );
    assert_eq!(
        error(&mut h, ShardRequest::AddEdenSpan(inline_span(created.inode, [0; 8], 1000, b"x"))),
        ErrorKind::NotAuthorised
    );
    assert_eq!(
        error(&mut h, ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::Directory })),
        ErrorKind::BadInodeType
    );
}

#[test]
fn eden_deadline_refuses_late_writes() {
    let mut h = Harness::new();
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    h.advance(EDEN_DEADLINE_NS + 1);
    assert_eq!(
        error(&mut h, ShardRequest::AddEdenSpan(inline_span(created.inode, created.cookie, 0, b"late"))),
        ErrorKind::EdenDeadline
    );
}

#[test]
fn link_overwrites_owning_files_but_never_directories() {
    let mut h = Harness::new();
    let (first, first_time) = create_file(&mut h, InodeId::ROOT, "f", b"1");
    let (second, _) = create_file(&mut h, InodeId::ROOT, "f", b"2");
    let resolved = ok!(h, Resolve, resolve_req(InodeId::ROOT, "f", ResolveMode::Alive, EggsTime::ZERO));
    assert_eq!(resolved.inode.without_owning(), second);
    // The old version is in the dead map, owning.
    let dead = ok!(h, Resolve, resolve_req(InodeId::ROOT, "f", ResolveMode::DeadLe, h.now));
    assert_eq!(dead.inode, first.with_owning(true));
    assert_eq!(dead.creation_time, first_time);
    // A directory entry is never overwritten.
    let dir = ok!(
        h,
        CreateUnlinkedDir,
        CreateUnlinkedDirReq { transaction_id: U64::new(1), parent: InodeId::ROOT, forget_below: U64::ZERO }
    );
    let inject = plain_inject(InodeId::ROOT, dir.inode, "d", false);
    ok!(h, InjectDirent, inject);
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let link = LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent: InodeId::ROOT },
        name: name("d"),
    };
    assert_eq!(error(&mut h, ShardRequest::LinkEdenFile(link)), ErrorKind::CannotOverrideTarget);
    // Linking the same eden file twice: the retry finds nothing in eden.
    let (_, _) = create_file(&mut h, InodeId::ROOT, "g", b"g");
    let link = LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: second, cookie: h.shard.cookie(second), parent: InodeId::ROOT },
        name: name("f"),
    };
    assert_eq!(error(&mut h, ShardRequest::LinkEdenFile(link)), ErrorKind::NotFound);
}

#[test]
fn dead_map_across_delete_overwrite_and_rename_with_as_of_listings() {
    let mut h = Harness::new();
    let (a1, t_a1) = create_file(&mut h, InodeId::ROOT, "a", b"a1");
    let (b, t_b) = create_file(&mut h, InodeId::ROOT, "b", b"b");
    let after_create = h.now;
    let (a2, t_a2) = create_file(&mut h, InodeId::ROOT, "a", b"a2"); // overwrite
    let after_overwrite = h.now;
    ok!(h, DeleteFile, DeleteFileReq { head: DeleteFileReqHead { parent: InodeId::ROOT }, name: name("a") });
    let after_delete = h.now;
    let rename = SameDirRenameReq {
        head: SameDirRenameReqHead { parent: InodeId::ROOT },
        old_name: name("b"),
        new_name: name("c"),
    };
    let renamed = ok!(h, SameDirRename, rename);
    assert!(renamed.creation_time > t_b);

    assert_eq!(names(&ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0)), vec!["c"]);
    // Dead map as of just after the first creation: a → a1 (b was not dead yet,
    // but its version ≤ as_of is b itself).
    let dead = ls(&mut h, InodeId::ROOT, after_create, ls_flags::USE_DEAD_MAP);
    let a = dead.iter().find(|e| e.0 == "a").unwrap();
    assert_eq!((a.1.without_owning(), a.2), (a1, t_a1));
    let b_entry = dead.iter().find(|e| e.0 == "b").unwrap();
    assert_eq!(b_entry.1, b.with_owning(false)); // renamed away: not owning
    // As of after the overwrite: a → a2.
    let dead = ls(&mut h, InodeId::ROOT, after_overwrite, ls_flags::USE_DEAD_MAP);
    let a = dead.iter().find(|e| e.0 == "a").unwrap();
    assert_eq!((a.1.without_owning(), a.2), (a2, t_a2));
    // As of after the delete, "a" is nothing: hidden unless asked for.
    let dead = ls(&mut h, InodeId::ROOT, after_delete, ls_flags::USE_DEAD_MAP);
    assert!(dead.iter().all(|e| e.0 != "a"));
    let dead = ls(&mut h, InodeId::ROOT, after_delete, ls_flags::USE_DEAD_MAP | ls_flags::INCLUDE_NOTHING);
    let a = dead.iter().find(|e| e.0 == "a").unwrap();
    assert!(a.1.is_null());
    // Newer than: the first version at or after the time.
    let dead =
        ls(&mut h, InodeId::ROOT, t_a1.saturating_add_ns(1), ls_flags::USE_DEAD_MAP | ls_flags::NEWER_THAN_AS_OF);
    let a = dead.iter().find(|e| e.0 == "a").unwrap();
    assert_eq!(a.1.without_owning(), a2);
    // Resolve in the dead map skips placeholders.
    let le = ok!(h, Resolve, resolve_req(InodeId::ROOT, "a", ResolveMode::DeadLe, h.now));
    assert_eq!(le.inode.without_owning(), a2);
    let ge = ok!(h, Resolve, resolve_req(InodeId::ROOT, "a", ResolveMode::DeadGe, EggsTime::ZERO));
    assert_eq!(ge.inode.without_owning(), a1);
    let now = h.now;
    assert_eq!(
        error(&mut h, ShardRequest::Resolve(resolve_req(InodeId::ROOT, "a", ResolveMode::DeadGe, now))),
        ErrorKind::NotFound
    );
    assert_eq!(
        error(&mut h, ShardRequest::Resolve(resolve_req(InodeId::ROOT, "a", ResolveMode::Alive, EggsTime::ZERO))),
        ErrorKind::NotFound
    );
    // Deleting again: nothing there.
    let delete = DeleteFileReq { head: DeleteFileReqHead { parent: InodeId::ROOT }, name: name("a") };
    assert_eq!(error(&mut h, ShardRequest::DeleteFile(delete)), ErrorKind::NotFound);
}

/// The prototype README: mkdir /c/d, rmdir /c/d, `ls_dead_ge /c ts` → d.
#[test]
fn prototype_readme_ls_dead_ge() {
    let mut h = Harness::new();
    let before = h.now;
    let c = ok!(
        h,
        CreateUnlinkedDir,
        CreateUnlinkedDirReq { transaction_id: U64::new(1), parent: InodeId::ROOT, forget_below: U64::ZERO }
    )
    .inode;
    // The retried creation returns the same directory.
    let again = ok!(
        h,
        CreateUnlinkedDir,
        CreateUnlinkedDirReq { transaction_id: U64::new(1), parent: InodeId::ROOT, forget_below: U64::ZERO }
    );
    assert_eq!(again.inode, c);
    let d = ok!(
        h,
        CreateUnlinkedDir,
        CreateUnlinkedDirReq { transaction_id: U64::new(2), parent: c, forget_below: U64::ZERO }
    )
    .inode;
    for (parent, child, child_name) in [(InodeId::ROOT, c, "c"), (c, d, "d")] {
        let dry = plain_inject(parent, child, child_name, true);
        ok!(h, InjectDirent, dry);
        let inject = plain_inject(parent, child, child_name, false);
        ok!(h, InjectDirent, inject);
        let release = ReleaseDirentReq {
            head: ReleaseDirentReqHead { dir: parent, inode: child, kill: 0 },
            name: name(child_name),
        };
        ok!(h, ReleaseDirent, release);
    }
    assert_eq!(names(&ls(&mut h, c, EggsTime::ZERO, 0)), vec!["d"]);
    // rmdir /c/d: acquire, unlink (parent null), kill.
    let acquire = acquire_req(c, InodeType::Directory, "d");
    let acquired = ok!(h, AcquireDirent, acquire);
    assert_eq!(acquired.inode, d);
    // A non-owning entry cannot be renamed or deleted by ordinary requests.
    let rename =
        SameDirRenameReq { head: SameDirRenameReqHead { parent: c }, old_name: name("d"), new_name: name("e") };
    assert_eq!(error(&mut h, ShardRequest::SameDirRename(rename)), ErrorKind::NotOwning);
    // c is not empty.
    let unlink_c = SetParentReq { dir: c, parent: InodeId::NULL };
    assert_eq!(error(&mut h, ShardRequest::SetParent(unlink_c)), ErrorKind::DirectoryNotEmpty);
    ok!(h, SetParent, SetParentReq { dir: d, parent: InodeId::NULL });
    let kill = ReleaseDirentReq { head: ReleaseDirentReqHead { dir: c, inode: d, kill: 1 }, name: name("d") };
    ok!(h, ReleaseDirent, kill);
    // Releasing again never fails.
    ok!(h, ReleaseDirent, kill);
    assert!(ls(&mut h, c, EggsTime::ZERO, 0).is_empty());
    let dead = ls(&mut h, c, before, ls_flags::USE_DEAD_MAP | ls_flags::NEWER_THAN_AS_OF);
    assert_eq!(names(&dead), vec!["d"]);
    assert_eq!(dead[0].1.without_owning(), d);
    // The removed directory takes no new entries.
    let inject = plain_inject(d, c, "x", false);
    assert_eq!(error(&mut h, ShardRequest::InjectDirent(inject)), ErrorKind::NotFound);
    let acquire = acquire_req(InodeId::ROOT, InodeType::File, "c");
    assert_eq!(error(&mut h, ShardRequest::AcquireDirent(acquire)), ErrorKind::BadInodeType);
}

#[test]
fn ten_thousand_entries_paginate_within_a_datagram() {
    let mut h = Harness::new();
    let dir = ok!(
        h,
        CreateUnlinkedDir,
        CreateUnlinkedDirReq { transaction_id: U64::new(9), parent: InodeId::ROOT, forget_below: U64::ZERO }
    )
    .inode;
    let target = InodeId::compose(InodeType::File, 3, 1).unwrap();
    let env_now = h.now;
    {
        // Bulk insert in one transaction (10 000 separate commits are slow).
        let env = Env { now: env_now, block_services: &h.table, durations: Default::default() };
        let mut txn = h.store.write_txn().unwrap();
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        for i in 0..10_000 {
            let text = format!("entry-{i:05}-{}", "x".repeat(i % 40));
            let request = ShardRequest::InjectDirent(InjectDirentReq {
                head: InjectDirentReqHead {
                    dir,
                    inode: target,
                    dry_run: 0,
                    owning: 0,
                    transaction_id: U64::ZERO,
                    forget_below: U64::ZERO,
                },
                name: Name::new(text.as_bytes()).unwrap(),
            });
            let mut effects = MutationEffects::default();
            h.shard.handle_mutation(&h.store, &mut txn, &env, &mut h.rng, &mut effects, 1, &request, &mut out).unwrap();
        }
        txn.commit().unwrap();
    }
    let all = ls(&mut h, dir, EggsTime::ZERO, 0);
    assert_eq!(all.len(), 10_000);
    let mut unique = names(&all);
    unique.dedup();
    assert_eq!(unique.len(), 10_000);
    let hashes: Vec<u64> = all.iter().map(|(n, _, _)| wire::hash::HashMode::Md5Prefix.hash(n.as_bytes())).collect();
    assert!(hashes.windows(2).all(|w| w[0] <= w[1]), "listing is in hash order");
}

fn add_block_span(
    h: &mut Harness,
    inode: InodeId,
    cookie: Mac,
    offset: u64,
    data: &[u8],
    parity: Parity,
) -> Vec<BlockCertificate> {
    let layout = wire::SpanLayout::new(data.len() as u64, parity).unwrap();
    let blocks: Vec<NewBlock> = (0..parity.total_blocks())
        .map(|i| {
            let crc = if i < parity.data_blocks() {
                let range = layout.data_block_range(i);
                crc32c(&data[range.start as usize..range.end as usize])
            } else {
                crc32c(data) // mirrors only in these tests
            };
            NewBlock { crc: U32::new(crc), size: U32::new(layout.block_size(i) as u32) }
        })
        .collect();
    let request = AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode,
            cookie,
            offset: U64::new(offset),
            size: U32::new(data.len() as u32),
            crc: U32::new(crc32c(data)),
        },
        body: SpanBody::Blocks { storage_class: 2, parity, blocks: List::new(&blocks) },
        blacklist: List::empty(),
    };
    with_ok!(h, AddEdenSpan, request, |r| r.blocks.iter().collect())
}

fn service_mac(h: &Harness, id: BlockServiceId) -> MacKey {
    h.table.get(id).unwrap().1.clone()
}

/// A mirrored 1+2 span of one byte on a fresh eden file, avoiding `blacklist`.
fn add_avoiding(h: &mut Harness, blacklist: &[BlockServiceId]) -> Result<Vec<BlockCertificate>, ErrorKind> {
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let crc = crc32c(b"x");
    let blocks = [NewBlock { crc: U32::new(crc), size: U32::new(1) }; 3];
    let request = AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode: created.inode,
            cookie: created.cookie,
            offset: U64::new(0),
            size: U32::new(1),
            crc: U32::new(crc),
        },
        body: SpanBody::Blocks { storage_class: 2, parity: Parity::new(1, 2).unwrap(), blocks: List::new(&blocks) },
        blacklist: List::new(blacklist),
    };
    let bytes = h.call(ShardRequest::AddEdenSpan(request));
    match decode(&bytes, &h.cluster) {
        ShardResponse::AddEdenSpan(r) => Ok(r.blocks.iter().collect()),
        ShardResponse::Error(e) => Err(e.kind),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn placement_avoids_blacklisted_block_services() {
    let mut h = Harness::new();
    let ids: Vec<BlockServiceId> = (0..6).map(|i| wire::mac::block_service_id(&service_key(i))).collect();
    // Three of six excluded (plus an unknown id): every span lands on the
    // other three.
    let blacklist = [ids[0], ids[2], ids[4], BlockServiceId::new(12345)];
    for _ in 0..30 {
        let certificates = add_avoiding(&mut h, &blacklist).unwrap();
        let mut chosen: Vec<_> = certificates.iter().map(|c| c.block_service_id).collect();
        chosen.sort();
        let mut expected = vec![ids[1], ids[3], ids[5]];
        expected.sort();
        assert_eq!(chosen, expected);
    }
    // Without a blacklist the excluded ones are used again.
    let mut used = std::collections::HashSet::new();
    for _ in 0..30 {
        used.extend(add_avoiding(&mut h, &[]).unwrap().iter().map(|c| c.block_service_id));
    }
    assert_eq!(used.len(), 6);
    // Four excluded leave two for three blocks.
    assert_eq!(add_avoiding(&mut h, &ids[..4]), Err(ErrorKind::NotEnoughBlockServices));
    // A blacklist longer than the limit is a bad request.
    let too_long = vec![BlockServiceId::new(1); wire::limits::ADD_SPAN_BLACKLIST_MAX + 1];
    assert_eq!(add_avoiding(&mut h, &too_long), Err(ErrorKind::BadRequest));
    let longest = vec![BlockServiceId::new(1); wire::limits::ADD_SPAN_BLACKLIST_MAX];
    assert!(add_avoiding(&mut h, &longest).is_ok());
}

#[test]
fn a_blacklisted_service_the_table_still_offers_asks_for_a_refresh() {
    let mut h = Harness::new();
    let ids: Vec<BlockServiceId> = (0..6).map(|i| wire::mac::block_service_id(&service_key(i))).collect();
    add_avoiding(&mut h, &[]).unwrap();
    assert!(!h.refresh_wanted, "no blacklist, no refresh");
    add_avoiding(&mut h, &[BlockServiceId::new(12345)]).unwrap();
    assert!(!h.refresh_wanted, "a service the table does not offer: nothing to learn");
    // A client could not write to a service this table offers (down, or
    // full): shuckle may know better, so the table is refreshed now.
    add_avoiding(&mut h, &[ids[1]]).unwrap();
    assert!(h.refresh_wanted);
}

#[test]
fn block_spans_certificates_proofs_and_expunge() {
    let mut h = Harness::new();
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let (inode, cookie) = (created.inode, created.cookie);
    let mirrored = Parity::new(1, 2).unwrap();
    let data = b"some block data";
    let certificates = add_block_span(&mut h, inode, cookie, 0, data, mirrored);
    assert_eq!(certificates.len(), 3);
    let mut services: Vec<_> = certificates.iter().map(|c| c.block_service_id).collect();
    services.sort();
    services.dedup();
    assert_eq!(services.len(), 3, "distinct block services");
    for certificate in &certificates {
        let key = service_mac(&h, certificate.block_service_id);
        assert_eq!(
            certificate.certificate,
            key.write_certificate(certificate.block_id, crc32c(data), data.len() as u32)
        );
        assert_eq!(certificate.block_id.shard(), 1);
    }
    // The retried add gets the same answer.
    assert_eq!(add_block_span(&mut h, inode, cookie, 0, data, mirrored), certificates);
    // Another span cannot follow an uncertified one; a link neither.
    assert_eq!(
        error(&mut h, ShardRequest::AddEdenSpan(inline_span(inode, cookie, data.len() as u64, b"x"))),
        ErrorKind::BadSpanState
    );
    let link =
        LinkEdenFileReq { head: LinkEdenFileReqHead { inode, cookie, parent: InodeId::ROOT }, name: name("blocks") };
    assert_eq!(error(&mut h, ShardRequest::LinkEdenFile(link)), ErrorKind::BadSpanState);
    // Wrong proofs, then the right ones.
    let mut proofs: Vec<Mac> =
        certificates.iter().map(|c| service_mac(&h, c.block_service_id).write_proof(c.block_id)).collect();
    fn certify_req(inode: InodeId, cookie: Mac, proofs: &[Mac]) -> CertifyEdenSpanReq<'_> {
        CertifyEdenSpanReq {
            head: CertifyEdenSpanReqHead { inode, cookie, offset: U64::new(0) },
            proofs: List::new(proofs),
        }
    }
    let certify = |proofs| certify_req(inode, cookie, proofs);
    let good = proofs.clone();
    proofs[1][0] ^= 1;
    assert_eq!(error(&mut h, ShardRequest::CertifyEdenSpan(certify(&proofs))), ErrorKind::NotAuthorised);
    assert_eq!(error(&mut h, ShardRequest::CertifyEdenSpan(certify(&good[..2]))), ErrorKind::BadRequest);
    ok!(h, CertifyEdenSpan, certify(&good));
    ok!(h, CertifyEdenSpan, certify(&good)); // idempotent
    // fetch_spans lists the blocks with addresses; the reverse index finds them.
    with_ok!(h, FetchSpans, FetchSpansReq { inode, offset: U64::new(0) }, |r| {
        let span = r.spans.get(0).unwrap();
        let SpanBody::Blocks { blocks, .. } = span.body else { panic!() };
        for (block, certificate) in blocks.iter().zip(&certificates) {
            assert_eq!(block.block_id, certificate.block_id);
            assert_eq!(block.address, certificate.address);
            assert_eq!(block.flags, 0);
        }
    });
    let first = certificates[0];
    with_ok!(
        h,
        ReverseBlockQuery,
        ReverseBlockQueryReq { block_service_id: first.block_service_id, begin: wire::BlockId::new(0) },
        |r| {
            let entry = r.entries.get(0).unwrap();
            assert_eq!((entry.block_id, entry.inode, entry.span_offset.get()), (first.block_id, inode, 0));
        }
    );
    // Seven mirrored blocks need seven services; there are six.
    let created2 = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let crc = crc32c(b"x");
    let blocks = [NewBlock { crc: U32::new(crc), size: U32::new(1) }; 7];
    let too_many = AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode: created2.inode,
            cookie: created2.cookie,
            offset: U64::new(0),
            size: U32::new(1),
            crc: U32::new(crc),
        },
        body: SpanBody::Blocks { storage_class: 2, parity: Parity::new(1, 6).unwrap(), blocks: List::new(&blocks) },
        blacklist: List::empty(),
    };
    assert_eq!(error(&mut h, ShardRequest::AddEdenSpan(too_many)), ErrorKind::NotEnoughBlockServices);

    // Expunge: too soon, then condemn, erase proofs, remove.
    let expunge = ExpungeEdenSpanReq { inode };
    assert_eq!(error(&mut h, ShardRequest::ExpungeEdenSpan(expunge)), ErrorKind::TooSoon);
    h.advance(EDEN_DEADLINE_NS + NS_PER_SECOND);
    let erase: Vec<BlockCertificate> = with_ok!(h, ExpungeEdenSpan, expunge, |r| {
        assert_eq!(r.offset.get(), 0);
        r.blocks.iter().collect()
    });
    for certificate in &erase {
        assert_eq!(
            certificate.certificate,
            service_mac(&h, certificate.block_service_id).erase_certificate(certificate.block_id)
        );
    }
    let wrong: Vec<Mac> = erase.iter().map(|c| service_mac(&h, c.block_service_id).write_proof(c.block_id)).collect();
    fn certify_expunge_req(inode: InodeId, proofs: &[Mac]) -> CertifyExpungeReq<'_> {
        CertifyExpungeReq { head: CertifyExpungeReqHead { inode, offset: U64::new(0) }, proofs: List::new(proofs) }
    }
    let certify_expunge = |proofs| certify_expunge_req(inode, proofs);
    assert_eq!(error(&mut h, ShardRequest::CertifyExpunge(certify_expunge(&wrong))), ErrorKind::NotAuthorised);
    assert_eq!(error(&mut h, ShardRequest::ExpungeEdenFile(ExpungeEdenFileReq { inode })), ErrorKind::BadRequest);
    let right: Vec<Mac> = erase.iter().map(|c| service_mac(&h, c.block_service_id).erase_proof(c.block_id)).collect();
    ok!(h, CertifyExpunge, certify_expunge(&right));
    with_ok!(
        h,
        ReverseBlockQuery,
        ReverseBlockQueryReq { block_service_id: first.block_service_id, begin: wire::BlockId::new(0) },
        |r| assert!(r.entries.is_empty())
    );
    with_ok!(h, VisitEden, VisitEdenReq { begin: InodeId::NULL }, |r| assert!(
        r.entries.iter().any(|e| e.inode == inode)
    ));
    ok!(h, ExpungeEdenFile, ExpungeEdenFileReq { inode });
    with_ok!(h, VisitEden, VisitEdenReq { begin: InodeId::NULL }, |r| assert!(
        r.entries.iter().all(|e| e.inode != inode)
    ));
}

#[test]
fn a_thousand_spans_paginate_in_fetch_spans() {
    let mut h = Harness::new();
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let env_now = h.now;
    {
        let env = Env { now: env_now, block_services: &h.table, durations: Default::default() };
        let mut txn = h.store.write_txn().unwrap();
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        for i in 0..1000u64 {
            let bytes = [i as u8; 10];
            let request = ShardRequest::AddEdenSpan(inline_span(created.inode, created.cookie, i * 10, &bytes));
            let mut effects = MutationEffects::default();
            let len = h
                .shard
                .handle_mutation(&h.store, &mut txn, &env, &mut h.rng, &mut effects, 1, &request, &mut out)
                .unwrap();
            assert!(matches!(decode(&out[..len], &h.cluster), ShardResponse::AddEdenSpan(_)));
        }
        txn.commit().unwrap();
    }
    let mut offset = 0u64;
    let mut seen = 0u64;
    let mut pages = 0;
    loop {
        let next = with_ok!(h, FetchSpans, FetchSpansReq { inode: created.inode, offset: U64::new(offset) }, |r| {
            for span in r.spans.iter() {
                assert_eq!(span.offset.get(), seen * 10);
                let SpanBody::Inline(bytes) = span.body else { panic!() };
                assert_eq!(bytes.as_bytes(), &[seen as u8; 10]);
                seen += 1;
            }
            r.next_offset.get()
        });
        pages += 1;
        if next == 0 {
            break;
        }
        offset = next;
    }
    assert_eq!(seen, 1000);
    assert!(pages > 1);
}

#[test]
fn purge_waits_an_hour_and_sends_owned_files_to_eden() {
    let mut h = Harness::new();
    let (inode, created) = create_file(&mut h, InodeId::ROOT, "p", b"p");
    ok!(h, DeleteFile, DeleteFileReq { head: DeleteFileReqHead { parent: InodeId::ROOT }, name: name("p") });
    let purge =
        PurgeDirentReq { head: PurgeDirentReqHead { parent: InodeId::ROOT, creation_time: created }, name: name("p") };
    assert_eq!(error(&mut h, ShardRequest::PurgeDirent(purge)), ErrorKind::TooSoon);
    h.advance(PURGE_AGE_MIN_NS);
    ok!(h, PurgeDirent, purge);
    assert_eq!(error(&mut h, ShardRequest::PurgeDirent(purge)), ErrorKind::NotFound);
    // The file is in eden with a passed deadline; the lone placeholder went too.
    with_ok!(h, VisitEden, VisitEdenReq { begin: InodeId::NULL }, |r| assert!(
        r.entries.iter().any(|e| e.inode == inode)
    ));
    let now = h.now;
    let dead = ls(&mut h, InodeId::ROOT, now, ls_flags::USE_DEAD_MAP | ls_flags::INCLUDE_NOTHING);
    assert!(dead.is_empty(), "{dead:?}");
    with_ok!(h, VisitInodes, VisitInodesReq { begin: InodeId::NULL }, |r| {
        assert_eq!(r.inodes.iter().collect::<Vec<_>>(), vec![InodeId::ROOT]);
    });
}

#[test]
fn repair_block_swaps_in_a_matching_block() {
    let mut h = Harness::new();
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let data = b"repair me";
    let parity = Parity::new(1, 1).unwrap();
    let certificates = add_block_span(&mut h, created.inode, created.cookie, 0, data, parity);
    let proofs: Vec<Mac> =
        certificates.iter().map(|c| service_mac(&h, c.block_service_id).write_proof(c.block_id)).collect();
    ok!(
        h,
        CertifyEdenSpan,
        CertifyEdenSpanReq {
            head: CertifyEdenSpanReqHead { inode: created.inode, cookie: created.cookie, offset: U64::new(0) },
            proofs: List::new(&proofs)
        }
    );
    let link = LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent: InodeId::ROOT },
        name: name("r"),
    };
    ok!(h, LinkEdenFile, link);
    // The source: one 1+0 span with the same bytes.
    let source = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let new = add_block_span(&mut h, source.inode, source.cookie, 0, data, Parity::new(1, 0).unwrap());
    let repair = RepairBlockReq {
        inode: created.inode,
        offset: U64::new(0),
        block_index: 1,
        source_inode: source.inode,
        source_cookie: source.cookie,
    };
    assert_eq!(error(&mut h, ShardRequest::RepairBlock(repair)), ErrorKind::BadRequest, "source not certified");
    let proof = [service_mac(&h, new[0].block_service_id).write_proof(new[0].block_id)];
    ok!(
        h,
        CertifyEdenSpan,
        CertifyEdenSpanReq {
            head: CertifyEdenSpanReqHead { inode: source.inode, cookie: source.cookie, offset: U64::new(0) },
            proofs: List::new(&proof)
        }
    );
    ok!(h, RepairBlock, repair);
    with_ok!(h, FetchSpans, FetchSpansReq { inode: created.inode, offset: U64::new(0) }, |r| {
        let SpanBody::Blocks { blocks, .. } = r.spans.get(0).unwrap().body else { panic!() };
        assert_eq!(blocks.get(1).unwrap().block_id, new[0].block_id);
        assert_eq!(blocks.get(0).unwrap().block_id, certificates[0].block_id);
    });
    with_ok!(
        h,
        ReverseBlockQuery,
        ReverseBlockQueryReq { block_service_id: new[0].block_service_id, begin: new[0].block_id },
        |r| {
            assert_eq!(r.entries.get(0).unwrap().inode, created.inode);
        }
    );
    // The swapped-out block is still listed, in the source eden file, due
    // now: eden collection erases it with a certificate.
    with_ok!(
        h,
        ReverseBlockQuery,
        ReverseBlockQueryReq { block_service_id: certificates[1].block_service_id, begin: certificates[1].block_id },
        |r| {
            let entry = r.entries.get(0).unwrap();
            assert_eq!((entry.block_id, entry.inode), (certificates[1].block_id, source.inode));
        }
    );
    with_ok!(h, ExpungeEdenSpan, ExpungeEdenSpanReq { inode: source.inode }, |r| {
        let certificate = r.blocks.get(0).unwrap();
        assert_eq!(certificate.block_id, certificates[1].block_id, "the old block is the one to erase");
    });
    // A retried repair finds its source spent: the file keeps the new block.
    assert_eq!(error(&mut h, ShardRequest::RepairBlock(repair)), ErrorKind::EdenDeadline);
    with_ok!(h, FetchSpans, FetchSpansReq { inode: created.inode, offset: U64::new(0) }, |r| {
        let SpanBody::Blocks { blocks, .. } = r.spans.get(0).unwrap().body else { panic!() };
        assert_eq!(blocks.get(1).unwrap().block_id, new[0].block_id);
    });
    // RepairSpans: a whole-span replacement with a mismatching CRC is refused.
    let source = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    with_ok!(h, AddEdenSpan, inline_span(source.inode, source.cookie, 0, b"different"), |_r| ());
    let repair = RepairSpansReq {
        inode: created.inode,
        offset: U64::new(0),
        source_inode: source.inode,
        source_cookie: source.cookie,
    };
    assert_eq!(error(&mut h, ShardRequest::RepairSpans(repair)), ErrorKind::CrcMismatch);
    let source = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    with_ok!(h, AddEdenSpan, inline_span(source.inode, source.cookie, 0, data), |_r| ());
    let repair = RepairSpansReq {
        inode: created.inode,
        offset: U64::new(0),
        source_inode: source.inode,
        source_cookie: source.cookie,
    };
    ok!(h, RepairSpans, repair);
    with_ok!(h, FetchSpans, FetchSpansReq { inode: created.inode, offset: U64::new(0) }, |r| {
        assert!(matches!(r.spans.get(0).unwrap().body, SpanBody::Inline(_)));
    });
}

#[test]
fn policy_move_to_eden_and_remote_purge() {
    let mut h = Harness::new();
    let policy = [1u8, 2, 3];
    ok!(
        h,
        SetDirectoryPolicy,
        SetDirectoryPolicyReq {
            head: SetDirectoryPolicyReqHead { dir: InodeId::ROOT },
            policy: PolicyBlob::new(&policy).unwrap()
        }
    );
    let bytes = h.call(ShardRequest::Stat(StatReq { inode: InodeId::ROOT }));
    let ShardResponse::Stat(StatResp::Directory(dir)) = decode(&bytes, &h.cluster) else { panic!() };
    assert_eq!(dir.policy.as_bytes(), &policy);
    let (inode, _) = create_file(&mut h, InodeId::ROOT, "m", b"m");
    ok!(h, MoveFileToEden, MoveFileToEdenReq { inode });
    ok!(h, MoveFileToEden, MoveFileToEdenReq { inode }); // retry
    assert_eq!(
        error(
            &mut h,
            ShardRequest::MoveFileToEden(MoveFileToEdenReq {
                inode: InodeId::compose(InodeType::File, 1, 999).unwrap()
            })
        ),
        ErrorKind::NotFound
    );
    // A remote owning entry: injected non-owning, released owning, killed... the
    // CDC path leaves it non-owning, so build one by overwrite instead.
    let remote = InodeId::compose(InodeType::File, 9, 1).unwrap();
    let inject = plain_inject(InodeId::ROOT, remote, "r", false);
    let injected = ok!(h, InjectDirent, inject);
    ok!(
        h,
        ReleaseDirent,
        ReleaseDirentReq { head: ReleaseDirentReqHead { dir: InodeId::ROOT, inode: remote, kill: 0 }, name: name("r") }
    );
    create_file(&mut h, InodeId::ROOT, "r", b"new"); // overwrites: remote entry dead, owning
    let purge = PurgeDirentReq {
        head: PurgeDirentReqHead { parent: InodeId::ROOT, creation_time: injected.creation_time },
        name: name("r"),
    };
    h.advance(PURGE_AGE_MIN_NS);
    assert_eq!(error(&mut h, ShardRequest::PurgeDirent(purge)), ErrorKind::BadRequest);
    let remote_purge = PurgeRemoteOwningDirentReq {
        head: PurgeRemoteOwningDirentReqHead { dir: InodeId::ROOT, creation_time: injected.creation_time },
        name: name("r"),
    };
    ok!(h, PurgeRemoteOwningDirent, remote_purge);
    ok!(h, PurgeRemoteOwningDirent, remote_purge); // retry
}

/// Valid datagrams of many kinds, to be mutated by the fuzz test.
fn seed_datagrams(h: &mut Harness) -> Vec<Vec<u8>> {
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let (file, _) = create_file(h, InodeId::ROOT, "seed", b"seed");
    let mut requests: Vec<ShardRequest<'static>> = vec![
        ShardRequest::Resolve(resolve_req(InodeId::ROOT, "seed", ResolveMode::Alive, EggsTime::ZERO)),
        ShardRequest::Stat(StatReq { inode: file }),
        ShardRequest::LsDir(LsDirReq { dir: InodeId::ROOT, as_of: h.now, start_hash: U64::new(0), flags: 7 }),
        ShardRequest::FetchSpans(FetchSpansReq { inode: file, offset: U64::new(0) }),
        ShardRequest::AddEdenSpan(inline_span(created.inode, created.cookie, 0, b"fuzz")),
        ShardRequest::SameDirRename(SameDirRenameReq {
            head: SameDirRenameReqHead { parent: InodeId::ROOT },
            old_name: name("seed"),
            new_name: name("seed2"),
        }),
        ShardRequest::DeleteFile(DeleteFileReq {
            head: DeleteFileReqHead { parent: InodeId::ROOT },
            name: name("seed"),
        }),
        ShardRequest::ExpungeEdenSpan(ExpungeEdenSpanReq { inode: created.inode }),
        ShardRequest::VisitInodes(VisitInodesReq { begin: InodeId::NULL }),
        ShardRequest::CreateUnlinkedDir(CreateUnlinkedDirReq {
            transaction_id: U64::new(5),
            parent: InodeId::ROOT,
            forget_below: U64::ZERO,
        }),
        ShardRequest::SetParent(SetParentReq { dir: InodeId::ROOT, parent: InodeId::NULL }),
        ShardRequest::MoveFileToEden(MoveFileToEdenReq { inode: file }),
        // Without a nested transaction (Shard::handle_mutation): a new
        // name, and an overwrite of "seed".
        ShardRequest::CreateSmallFile(small_file(InodeId::ROOT, 11, "small", b"small")),
        ShardRequest::CreateSmallFile(small_file(InodeId::ROOT, 12, "seed", b"")),
    ];
    requests.push(ShardRequest::InjectDirent(plain_inject(InodeId::ROOT, file, "inj", false)));
    requests
        .iter()
        .map(|request| {
            let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
            let len = datagram::encode(&mut out, 1, request, Some(&h.cluster)).unwrap();
            out.truncate(len);
            out
        })
        .collect()
}

struct Fuzz {
    harness: Harness,
    seeds: Vec<Vec<u8>>,
}

fn fuzz_state() -> &'static std::sync::Mutex<Fuzz> {
    static STATE: std::sync::OnceLock<std::sync::Mutex<Fuzz>> = std::sync::OnceLock::new();
    STATE.get_or_init(|| {
        let mut harness = Harness::new();
        let seeds = seed_datagrams(&mut harness);
        std::sync::Mutex::new(Fuzz { harness, seeds })
    })
}

proptest::proptest! {
    /// Mutated datagrams never panic the shard: each one that decodes is
    /// handled and answered with a response that fits a datagram.
    #[test]
    fn mutated_requests_are_handled_without_panics(
        seed in 0usize..64,
        flips in proptest::collection::vec((0usize..1500, proptest::prelude::any::<u8>()), 0..6),
        cut in 0usize..1600,
        resign in proptest::prelude::any::<bool>(),
    ) {
        let mut state = fuzz_state().lock().unwrap_or_else(|p| p.into_inner());
        let Fuzz { harness, seeds } = &mut *state;
        let mut bytes = seeds[seed % seeds.len()].clone();
        for (at, value) in flips {
            let len = bytes.len();
            bytes[at % len] ^= value;
        }
        bytes.truncate(cut.max(1));
        if resign && bytes.len() >= datagram::HEADER_BYTES + 8 && bytes[datagram::HEADER_BYTES - 1] & 0x80 != 0 {
            // Re-MAC so mutations reach the privileged handlers too.
            let end = bytes.len() - 8;
            let mac = harness.cluster.mac_message(&bytes[..end]);
            bytes[end..].copy_from_slice(&mac);
        }
        if let Ok((header, request)) = datagram::decode::<ShardRequest>(&bytes, Some(&harness.cluster)) {
            let env = Env { now: harness.now, block_services: &harness.table, durations: Default::default() };
            let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
            let len = if request.kind().is_mutation() {
                let mut txn = harness.store.write_txn().unwrap();
                let mut effects = MutationEffects::default();
                let len = harness.shard.handle_mutation(&harness.store, &mut txn, &env, &mut harness.rng, &mut effects, header.request_id(), &request, &mut out).unwrap();
                txn.commit().unwrap();
                len
            } else {
                let txn = harness.store.read_txn().unwrap();
                harness.shard.handle_read(&harness.store, &txn, &env, header.request_id(), &request, &mut out)
            };
            proptest::prop_assert!(len > 0 && len <= UDP_DATAGRAM_BYTES_MAX);
            proptest::prop_assert!(datagram::decode::<ShardResponse>(&out[..len], Some(&harness.cluster)).is_ok());
        }
    }
}

#[test]
fn durations_from_the_flags_set_the_eden_deadline_and_the_purge_age() {
    let mut h = Harness::new();
    h.durations = Durations { eden_deadline_ns: 2 * NS_PER_SECOND, purge_age_min_ns: 3 * NS_PER_SECOND };
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let expunge = ExpungeEdenFileReq { inode: created.inode };
    h.advance(NS_PER_SECOND);
    assert_eq!(error(&mut h, ShardRequest::ExpungeEdenFile(expunge)), ErrorKind::TooSoon, "before the 2 s deadline");
    h.advance(NS_PER_SECOND);
    ok!(h, ExpungeEdenFile, expunge);
    // A file deleted now may be purged 3 s later, not before.
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let link = LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent: InodeId::ROOT },
        name: name("d"),
    };
    let linked = ok!(h, LinkEdenFile, link);
    ok!(h, DeleteFile, DeleteFileReq { head: DeleteFileReqHead { parent: InodeId::ROOT }, name: name("d") });
    let purge = || PurgeDirentReq {
        head: PurgeDirentReqHead { parent: InodeId::ROOT, creation_time: linked.creation_time },
        name: name("d"),
    };
    h.advance(2 * NS_PER_SECOND);
    assert_eq!(error(&mut h, ShardRequest::PurgeDirent(purge())), ErrorKind::TooSoon);
    h.advance(NS_PER_SECOND);
    ok!(h, PurgeDirent, purge());
}

#[test]
fn a_terminal_block_service_needs_no_erase_proof_and_a_live_one_does() {
    let mut h = Harness::new();
    let created = ok!(h, CreateEdenFile, CreateEdenFileReq { inode_type: InodeType::File });
    let certificates = add_block_span(&mut h, created.inode, created.cookie, 0, b"doomed", Parity::new(1, 1).unwrap());
    h.advance(EDEN_DEADLINE_NS + NS_PER_SECOND);
    // The first block's service is declared dead by an operator.
    let services: Vec<BlockServiceRecord> = h
        .table
        .services()
        .iter()
        .map(|service| {
            let mut service = service.clone();
            if service.id == certificates[0].block_service_id {
                service.flags |= wire::shuckle::flags::TERMINAL;
            }
            service
        })
        .collect();
    h.table = BlockServiceTable::new(services);
    let inode = created.inode;
    let erase: Vec<BlockCertificate> =
        with_ok!(h, ExpungeEdenSpan, ExpungeEdenSpanReq { inode }, |r| r.blocks.iter().collect());
    assert!(erase[0].address.is_unknown() && erase[0].certificate == [0; 8], "no certificate for a dead disk");
    assert!(!erase[1].address.is_unknown());
    let request = |proofs: &[Mac]| {
        let proofs = proofs.to_vec();
        move |h: &mut Harness| {
            let request = ShardRequest::CertifyExpunge(CertifyExpungeReq {
                head: CertifyExpungeReqHead { inode, offset: U64::new(0) },
                proofs: List::new(&proofs),
            });
            h.call(request)
        }
    };
    // Without the live service's proof: refused, the span stays.
    let refused = request(&[[0; 8], [0; 8]])(&mut h);
    assert!(matches!(decode(&refused, &h.cluster), ShardResponse::Error(e) if e.kind == ErrorKind::NotAuthorised));
    let live_proof = service_mac(&h, erase[1].block_service_id).erase_proof(erase[1].block_id);
    let accepted = request(&[[0; 8], live_proof])(&mut h);
    assert!(matches!(decode(&accepted, &h.cluster), ShardResponse::CertifyExpunge(_)));
    ok!(h, ExpungeEdenFile, ExpungeEdenFileReq { inode });
}

/// A directory `child_name` made under `parent` the CDC's way (create,
/// inject, release).
fn make_directory(h: &mut Harness, transaction: u64, parent: InodeId, child_name: &str) -> InodeId {
    let create = CreateUnlinkedDirReq { transaction_id: U64::new(transaction), parent, forget_below: U64::ZERO };
    let child = ok!(h, CreateUnlinkedDir, create).inode;
    let inject = plain_inject(parent, child, child_name, false);
    ok!(h, InjectDirent, inject);
    let release =
        ReleaseDirentReq { head: ReleaseDirentReqHead { dir: parent, inode: child, kill: 0 }, name: name(child_name) };
    ok!(h, ReleaseDirent, release);
    child
}

/// rmdir's shard steps: acquire the child's entry, unlink the child, kill
/// the entry in the parent.
fn remove_directory(h: &mut Harness, parent: InodeId, child: InodeId, child_name: &str) {
    let head = AcquireDirentReqHead {
        dir: parent,
        expected_type: InodeType::Directory,
        transaction_id: U64::ZERO,
        forget_below: U64::ZERO,
    };
    ok!(h, AcquireDirent, AcquireDirentReq { head, name: name(child_name) });
    ok!(h, SetParent, SetParentReq { dir: child, parent: InodeId::NULL });
    let kill =
        ReleaseDirentReq { head: ReleaseDirentReqHead { dir: parent, inode: child, kill: 1 }, name: name(child_name) };
    ok!(h, ReleaseDirent, kill);
}

#[test]
fn purge_directory_takes_only_removed_empty_directories_past_the_purge_age() {
    let mut h = Harness::new();
    let purge = |dir| ShardRequest::PurgeDirectory(PurgeDirectoryReq { dir });
    let full = make_directory(&mut h, 1, InodeId::ROOT, "full");
    let empty = make_directory(&mut h, 2, InodeId::ROOT, "empty");
    let (file, file_created) = create_file(&mut h, full, "f", b"bytes");
    // Linked directories, the root and non-directories are never purged.
    assert_eq!(error(&mut h, purge(full)), ErrorKind::BadRequest, "linked, with an entry");
    assert_eq!(error(&mut h, purge(empty)), ErrorKind::BadRequest, "linked, empty");
    assert_eq!(error(&mut h, purge(InodeId::ROOT)), ErrorKind::BadRequest, "the root");
    assert_eq!(error(&mut h, purge(file)), ErrorKind::BadInodeType, "a file");
    // Removed: `full` keeps its file's dead version, which owns the file.
    ok!(h, DeleteFile, DeleteFileReq { head: DeleteFileReqHead { parent: full }, name: name("f") });
    remove_directory(&mut h, InodeId::ROOT, full, "full");
    remove_directory(&mut h, InodeId::ROOT, empty, "empty");
    assert_eq!(error(&mut h, purge(empty)), ErrorKind::TooSoon, "removed just now");
    h.advance(PURGE_AGE_MIN_NS);
    assert_eq!(error(&mut h, purge(full)), ErrorKind::DirectoryNotEmpty, "a dead version is left");
    ok!(h, PurgeDirectory, PurgeDirectoryReq { dir: empty });
    assert_eq!(error(&mut h, ShardRequest::Stat(StatReq { inode: empty })), ErrorKind::NotFound);
    assert_eq!(error(&mut h, purge(empty)), ErrorKind::NotFound, "a retry finds it gone");
    // Once its dead version is purged (the file goes to eden), `full` goes.
    let purge_file =
        PurgeDirentReq { head: PurgeDirentReqHead { parent: full, creation_time: file_created }, name: name("f") };
    ok!(h, PurgeDirent, purge_file);
    ok!(h, PurgeDirectory, PurgeDirectoryReq { dir: full });
    assert_eq!(error(&mut h, ShardRequest::Stat(StatReq { inode: full })), ErrorKind::NotFound);
    let eden = with_ok!(h, VisitEden, VisitEdenReq { begin: InodeId::NULL }, |r| r.entries.iter().count());
    assert_eq!(eden, 1, "the purged version's file waits in eden for collection");
    // The root's dead entries of the removed directories are untouched.
    let dead = ls(&mut h, InodeId::ROOT, EggsTime::ZERO, ls_flags::USE_DEAD_MAP | ls_flags::NEWER_THAN_AS_OF);
    assert_eq!(names(&dead).len(), 2);
}

type RawModel = Vec<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>;

fn raw_contents(store: &Store) -> RawModel {
    let txn = store.read_txn().unwrap();
    store
        .databases()
        .iter()
        .map(|db| {
            db.raw().iter(&txn).unwrap().map(|item| item.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
        })
        .collect()
}

// The journal's records are the store's changes exactly: every put,
// delete and clear of a mutation is recorded, and none of a refused one
// (its nested transaction is rolled back, so are its effects). Random
// mutations of valid requests (the fuzz seeds) are applied in batches of
// a few, like the writer's; the recorded effects applied to a copy of the
// starting contents must give the final contents.
#[test]
fn recorded_effects_replay_to_the_store_contents() {
    use rand::Rng;
    let mut h = Harness::new();
    let seeds = seed_datagrams(&mut h);
    let mut model = raw_contents(&h.store);
    h.store.record(true);
    let seed = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut refused, mut applied) = (0, 0);
    let mut effects = daemon::journal::Effects::default();
    for _ in 0..300 {
        let mut txn = h.store.write_txn().unwrap();
        for _ in 0..rng.random_range(1..5) {
            let mut bytes = seeds[rng.random_range(0..seeds.len())].clone();
            if rng.random_ratio(1, 2) {
                let at = rng.random_range(datagram::HEADER_BYTES..bytes.len());
                bytes[at] ^= rng.random::<u8>();
                let end = bytes.len() - 8;
                if bytes[datagram::HEADER_BYTES - 1] & 0x80 != 0 {
                    let mac = h.cluster.mac_message(&bytes[..end]);
                    bytes[end..].copy_from_slice(&mac);
                }
            }
            let Ok((header, request)) = datagram::decode::<ShardRequest>(&bytes, Some(&h.cluster)) else { continue };
            if !request.kind().is_mutation() {
                continue;
            }
            h.now = h.now.saturating_add_ns(1000);
            let env = Env { now: h.now, block_services: &h.table, durations: h.durations };
            let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
            let mut outcome = MutationEffects::default();
            let len = h
                .shard
                .handle_mutation(
                    &h.store,
                    &mut txn,
                    &env,
                    &mut h.rng,
                    &mut outcome,
                    header.request_id(),
                    &request,
                    &mut out,
                )
                .unwrap();
            match datagram::decode::<ShardResponse>(&out[..len], Some(&h.cluster)) {
                Ok((_, ShardResponse::Error(_))) => refused += 1,
                _ => applied += 1,
            }
        }
        txn.commit().unwrap();
        h.store.take_effects(&mut effects);
        for op in effects.ops() {
            match op.unwrap() {
                daemon::journal::Op::Put { db, key, value } => {
                    model[usize::from(db)].insert(key.to_vec(), value.to_vec());
                }
                daemon::journal::Op::Delete { db, key } => {
                    model[usize::from(db)].remove(key);
                }
                daemon::journal::Op::Clear { db } => model[usize::from(db)].clear(),
            }
        }
    }
    eprintln!("{applied} mutations applied, {refused} refused");
    assert!(applied > 20 && refused > 20, "{applied} applied, {refused} refused");
    assert!(raw_contents(&h.store) == model, "the recorded effects are the store's changes");
}

/// inject_dirent and acquire_dirent of a CDC transaction are remembered:
/// asked again (a CDC resumed after a crash), they answer as the first time
/// and change nothing, also after a client renamed the entry; once the
/// CDC's `forget_below` passes the transaction, the records are gone.
#[test]
fn injects_and_acquires_are_remembered_per_transaction_until_forgotten() {
    let mut h = Harness::new();
    let create = |transaction: u64, forget_below: u64| CreateUnlinkedDirReq {
        transaction_id: U64::new(transaction),
        parent: InodeId::ROOT,
        forget_below: U64::new(forget_below),
    };
    let dir = ok!(h, CreateUnlinkedDir, create(7, 0)).inode;
    let inject = |transaction: u64, forget_below: u64| InjectDirentReq {
        head: InjectDirentReqHead {
            dir: InodeId::ROOT,
            inode: dir,
            dry_run: 0,
            owning: 0,
            transaction_id: U64::new(transaction),
            forget_below: U64::new(forget_below),
        },
        name: name("d"),
    };
    let first = ok!(h, InjectDirent, inject(7, 0)).creation_time;
    release_then_rename(&mut h, dir, "d", "e");
    h.advance(1);
    // The same transaction again: the first answer, and no second entry.
    assert_eq!(ok!(h, InjectDirent, inject(7, 0)).creation_time, first);
    assert_eq!(names(&ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0)), ["e"]);
    // Another inject under the same transaction id is refused.
    let mut other = inject(7, 0);
    other.head.inode = InodeId::ROOT;
    assert_eq!(error(&mut h, ShardRequest::InjectDirent(other)), ErrorKind::BadRequest);
    // Acquire: remembered the same way.
    let acquire = |transaction: u64, forget_below: u64| AcquireDirentReq {
        head: AcquireDirentReqHead {
            dir: InodeId::ROOT,
            expected_type: InodeType::Directory,
            transaction_id: U64::new(transaction),
            forget_below: U64::new(forget_below),
        },
        name: name("e"),
    };
    assert_eq!(ok!(h, AcquireDirent, acquire(8, 0)).inode, dir);
    release_then_rename(&mut h, dir, "e", "f");
    assert_eq!(ok!(h, AcquireDirent, acquire(8, 0)).inode, dir, "answered from memory: `e` is gone");
    let entries = ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0);
    assert!(entries.iter().all(|(_, inode, _)| inode.is_owning()), "the renamed entry was not acquired again");
    // forget_below passes 7 and 8: their records go, so the requests act
    // again (acquire finds no `e`; the create makes a new directory).
    assert_eq!(error(&mut h, ShardRequest::AcquireDirent(acquire(8, 9))), ErrorKind::NotFound);
    assert_ne!(ok!(h, CreateUnlinkedDir, create(7, 9)).inode, dir);
}

/// create_linked_dir (a mkdir whose new directory lands on its parent's
/// shard): one mutation that creates the directory and links it owning;
/// a refusal leaves the store byte for byte as it was; the same
/// transaction's request again answers from memory and touches nothing,
/// also after a client renamed the entry; its id is not reused by another
/// request; `forget_below` past it forgets it.
#[test]
fn create_linked_dir_is_one_mutation_remembered_per_transaction_until_forgotten() {
    let mut h = Harness::new();
    let linked = |dir: InodeId, transaction: u64, forget_below: u64, entry: &'static str| CreateLinkedDirReq {
        head: CreateLinkedDirReqHead {
            dir,
            transaction_id: U64::new(transaction),
            forget_below: U64::new(forget_below),
        },
        name: name(entry),
    };
    // Applied: a directory of this shard, parent recorded, linked owning.
    let made = ok!(h, CreateLinkedDir, linked(InodeId::ROOT, 5, 0, "d"));
    assert_eq!(made.inode.inode_type(), Some(InodeType::Directory));
    assert_eq!(made.inode.shard(), 1);
    with_ok!(h, Stat, StatReq { inode: made.inode }, |stat| {
        let StatResp::Directory(dir) = stat else { panic!("a directory") };
        assert_eq!(dir.parent, InodeId::ROOT);
    });
    let entries = ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0);
    assert_eq!(entries, [("d".to_string(), made.inode.with_owning(true), made.creation_time)]);

    // Refused, nothing left behind (not even a used-up inode id): the name
    // exists (a file or a directory), the parent is removed, or is not a
    // directory of this shard.
    create_file(&mut h, InodeId::ROOT, "f", b"x");
    let removed = make_directory(&mut h, 3, InodeId::ROOT, "gone");
    remove_directory(&mut h, InodeId::ROOT, removed, "gone");
    let before = raw_contents(&h.store);
    let refusals = [
        (linked(InodeId::ROOT, 6, 0, "f"), ErrorKind::AlreadyExists),
        (linked(InodeId::ROOT, 6, 0, "d"), ErrorKind::AlreadyExists),
        (linked(removed, 6, 0, "x"), ErrorKind::NotFound),
        (linked(InodeId::compose(InodeType::Directory, 2, 9).unwrap(), 6, 0, "x"), ErrorKind::NotFound),
    ];
    for (request, kind) in refusals {
        assert_eq!(error(&mut h, ShardRequest::CreateLinkedDir(request)), kind);
        assert!(raw_contents(&h.store) == before, "a refused create_linked_dir changed the store");
    }

    // Re-sent after a client renamed the entry: the first answer, no
    // second directory, nothing touched.
    let rename = SameDirRenameReq {
        head: SameDirRenameReqHead { parent: InodeId::ROOT },
        old_name: name("d"),
        new_name: name("e"),
    };
    ok!(h, SameDirRename, rename);
    h.advance(1);
    let before = raw_contents(&h.store);
    assert_eq!(ok!(h, CreateLinkedDir, linked(InodeId::ROOT, 5, 0, "d")), made);
    assert!(raw_contents(&h.store) == before, "a re-sent create_linked_dir changed the store");

    // The id is not reused: not by this request for another parent, nor by
    // create_unlinked_dir or inject_dirent; and create_linked_dir refuses
    // an id another request used (transaction 3's create and inject).
    assert_eq!(error(&mut h, ShardRequest::CreateLinkedDir(linked(made.inode, 5, 0, "d"))), ErrorKind::BadRequest);
    let create = CreateUnlinkedDirReq { transaction_id: U64::new(5), parent: InodeId::ROOT, forget_below: U64::ZERO };
    assert_eq!(error(&mut h, ShardRequest::CreateUnlinkedDir(create)), ErrorKind::BadRequest);
    let mut inject = plain_inject(InodeId::ROOT, made.inode, "z", false);
    inject.head.transaction_id = U64::new(5);
    assert_eq!(error(&mut h, ShardRequest::InjectDirent(inject)), ErrorKind::BadRequest);
    assert_eq!(error(&mut h, ShardRequest::CreateLinkedDir(linked(InodeId::ROOT, 3, 0, "y"))), ErrorKind::BadRequest);
    assert!(raw_contents(&h.store) == before, "a refused reuse changed the store");

    // forget_below passes 5: forgotten, so the request acts again ("d" is
    // free since the rename: a new directory).
    let again = ok!(h, CreateLinkedDir, linked(InodeId::ROOT, 5, 6, "d"));
    assert_ne!(again.inode, made.inode);
    assert_eq!(names(&ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0)), ["d", "e", "f"]);
}

fn small_file<'a>(parent: InodeId, create_id: u64, file_name: &'a str, contents: &'a [u8]) -> CreateSmallFileReq<'a> {
    CreateSmallFileReq {
        head: CreateSmallFileReqHead {
            parent,
            create_id: U64::new(create_id),
            crc: U32::new(crc32c(contents)),
            inode_type: InodeType::File,
        },
        name: name(file_name),
        contents: InlineBytes::new(contents).unwrap(),
    }
}

/// The contents of a linked file, span by span.
fn contents_of(h: &mut Harness, inode: InodeId) -> Vec<u8> {
    with_ok!(h, FetchSpans, FetchSpansReq { inode, offset: U64::ZERO }, |r| {
        assert_eq!(r.next_offset.get(), 0);
        let mut all = Vec::new();
        for span in r.spans.iter() {
            let SpanBody::Inline(bytes) = span.body else { panic!("an inline span") };
            assert_eq!(crc32c(bytes.as_bytes()), span.crc.get());
            all.extend_from_slice(bytes.as_bytes());
        }
        all
    })
}

/// create_small_file: one mutation makes a linked file with its inline
/// contents (no eden file left), answers its inode and its entry's
/// creation time; an empty file has no span.
#[test]
fn create_small_file_creates_and_links_in_one_mutation() {
    let mut h = Harness::new();
    let made = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 1, "a", b"hello"));
    assert_eq!(made.inode.inode_type(), Some(InodeType::File));
    assert!(!made.inode.is_owning());
    let found = ok!(h, Resolve, resolve_req(InodeId::ROOT, "a", ResolveMode::Alive, EggsTime::ZERO));
    assert_eq!((found.inode, found.creation_time), (made.inode.with_owning(true), made.creation_time));
    with_ok!(h, Stat, StatReq { inode: made.inode }, |stat| {
        let StatResp::File(file) = stat else { panic!("a file") };
        assert_eq!(file.size.get(), 5);
    });
    assert_eq!(contents_of(&mut h, made.inode), b"hello");
    with_ok!(h, VisitEden, VisitEdenReq { begin: InodeId::NULL }, |r| assert!(r.entries.is_empty()));

    let empty = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 2, "empty", b""));
    assert_eq!(contents_of(&mut h, empty.inode), b"");
    with_ok!(h, Stat, StatReq { inode: empty.inode }, |stat| {
        let StatResp::File(file) = stat else { panic!("a file") };
        assert_eq!(file.size.get(), 0);
    });
    let largest = vec![7u8; wire::limits::INLINE_SPAN_BYTES_MAX];
    let big = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 3, "big", &largest));
    assert_eq!(contents_of(&mut h, big.inode), largest);
    assert_eq!(names(&ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0)).len(), 3);
}

/// Refusals change nothing (not even a used-up inode id): a CRC that does
/// not match the contents, a parent that is not a linked directory of this
/// shard, a name held by a directory or locked by the CDC, a directory
/// type.
#[test]
fn create_small_file_refusals_change_nothing() {
    let mut h = Harness::new();
    let (file, _) = create_file(&mut h, InodeId::ROOT, "f", b"x");
    let dir = make_directory(&mut h, 3, InodeId::ROOT, "d");
    let removed = make_directory(&mut h, 4, InodeId::ROOT, "gone");
    remove_directory(&mut h, InodeId::ROOT, removed, "gone");
    create_file(&mut h, InodeId::ROOT, "locked", b"y");
    let acquire = acquire_req(InodeId::ROOT, InodeType::File, "locked");
    ok!(h, AcquireDirent, acquire);
    let before = raw_contents(&h.store);
    let mut bad_crc = small_file(InodeId::ROOT, 9, "new", b"abc");
    bad_crc.head.crc = U32::new(crc32c(b"abd"));
    let mut directory_type = small_file(InodeId::ROOT, 9, "new", b"abc");
    directory_type.head.inode_type = InodeType::Directory;
    let refusals = [
        (bad_crc, ErrorKind::CrcMismatch),
        (directory_type, ErrorKind::BadInodeType),
        (small_file(file, 9, "new", b"abc"), ErrorKind::BadInodeType),
        (small_file(removed, 9, "new", b"abc"), ErrorKind::NotFound),
        (small_file(InodeId::compose(InodeType::Directory, 2, 9).unwrap(), 9, "new", b"abc"), ErrorKind::NotFound),
        (small_file(InodeId::ROOT, 9, "d", b"abc"), ErrorKind::CannotOverrideTarget),
        (small_file(InodeId::ROOT, 9, "locked", b"abc"), ErrorKind::CannotOverrideTarget),
    ];
    for (request, kind) in refusals {
        assert_eq!(error(&mut h, ShardRequest::CreateSmallFile(request)), kind);
        assert!(raw_contents(&h.store) == before, "a refused create_small_file changed the store");
    }
    // A new file in a subdirectory is fine.
    ok!(h, CreateSmallFile, small_file(dir, 9, "new", b"abc"));
}

/// An existing name: exactly what link_eden_file does. An owning file goes
/// to the dead map owning (its creation time kept), the new entry's
/// creation time is later, and the directory's dead listing shows both.
#[test]
fn create_small_file_overwrites_like_link_eden_file() {
    let mut h = Harness::new();
    let (by_link, _) = create_file(&mut h, InodeId::ROOT, "a", b"one");
    let (by_small, _) = create_file(&mut h, InodeId::ROOT, "b", b"one");
    let linked = create_file(&mut h, InodeId::ROOT, "a", b"two");
    let made = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 1, "b", b"two"));
    let dead = ls(&mut h, InodeId::ROOT, EggsTime::new(u64::MAX), ls_flags::USE_DEAD_MAP | ls_flags::INCLUDE_NOTHING);
    let shape = |entries: &[(String, InodeId, EggsTime)], entry: &str| -> Vec<bool> {
        entries.iter().filter(|(n, _, _)| n == entry).map(|(_, inode, _)| inode.is_owning()).collect()
    };
    assert_eq!(shape(&dead, "a"), shape(&dead, "b"), "the same dead map as link_eden_file");
    assert!(dead.iter().any(|(n, inode, _)| n == "a" && inode.without_owning() == by_link));
    assert!(dead.iter().any(|(n, inode, _)| n == "b" && inode.without_owning() == by_small));
    let living = ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0);
    assert_eq!(living.len(), 2);
    assert!(living.contains(&("a".to_string(), linked.0.with_owning(true), linked.1)));
    assert!(living.contains(&("b".to_string(), made.inode.with_owning(true), made.creation_time)));
    assert_eq!(contents_of(&mut h, made.inode), b"two");
}

/// With the clock behind the name's versions (the living one, and a dead
/// one newer than it after a delete), a create_small_file's entry is
/// created just after the newest of them, as put_living does: the create
/// looks the name up once and must count the living entry it buries and
/// the dead map's newest version (a placeholder included).
#[test]
fn create_small_file_is_created_after_the_names_newest_version() {
    let mut h = Harness::new();
    let start = h.now;
    h.advance(10_000_000_000);
    let first = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 1, "a", b"one"));
    // The clock goes back: the living entry is newer than now.
    h.now = start;
    let second = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 2, "a", b"two"));
    assert_eq!(second.creation_time.get(), first.creation_time.get() + 1, "just after the buried living entry");
    // A delete leaves a placeholder in the dead map, newer than any file.
    h.advance(20_000_000_000);
    ok!(h, DeleteFile, DeleteFileReq { head: DeleteFileReqHead { parent: InodeId::ROOT }, name: name("a") });
    let dead = ls(&mut h, InodeId::ROOT, EggsTime::new(u64::MAX), ls_flags::USE_DEAD_MAP | ls_flags::INCLUDE_NOTHING);
    let newest = dead.iter().filter(|(n, _, _)| n == "a").map(|(_, _, time)| time.get()).max().unwrap();
    assert!(newest > second.creation_time.get());
    h.now = start;
    let third = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 3, "a", b"three"));
    assert_eq!(third.creation_time.get(), newest + 1, "just after the dead map's newest version");
    let living = ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0);
    assert_eq!(living, [("a".to_string(), third.inode.with_owning(true), third.creation_time)]);
}

/// A re-send (same create id) is answered with the file it made and
/// changes nothing: at once, after another client replaced the name, and
/// after the name was deleted. The same id with other contents is refused;
/// another id makes a new version. A memory older than
/// SMALL_FILE_CREATE_MEMORY_NS no longer answers; it is kept in the
/// file's record, never in `small_files`.
#[test]
fn create_small_file_resent_is_answered_without_a_second_file() {
    let mut h = Harness::new();
    let made = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello"));
    let before = raw_contents(&h.store);
    assert_eq!(ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello")), made);
    assert!(raw_contents(&h.store) == before, "a re-sent create_small_file changed the store");
    assert_eq!(
        error(&mut h, ShardRequest::CreateSmallFile(small_file(InodeId::ROOT, 77, "a", b"other"))),
        ErrorKind::BadRequest
    );

    // Another client replaces the name, then the re-send arrives.
    let other = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 78, "a", b"hello"));
    assert_ne!(other.inode, made.inode);
    let before = raw_contents(&h.store);
    assert_eq!(ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello")), made);
    assert!(raw_contents(&h.store) == before, "a re-send after a replacement changed the store");
    let living = ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0);
    assert_eq!(living, [("a".to_string(), other.inode.with_owning(true), other.creation_time)]);

    // Deleted meanwhile: still answered, nothing created.
    ok!(h, DeleteFile, DeleteFileReq { head: DeleteFileReqHead { parent: InodeId::ROOT }, name: name("a") });
    let before = raw_contents(&h.store);
    assert_eq!(ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 78, "a", b"hello")), other);
    assert!(raw_contents(&h.store) == before, "a re-send after a delete changed the store");
    assert!(ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0).is_empty());

    // Past the memory: two creates forget the two memories, and the old id
    // acts again.
    h.advance(wire::limits::SMALL_FILE_CREATE_MEMORY_NS + NS_PER_SECOND);
    ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 1, "x", b"1"));
    let again = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello"));
    assert_ne!(again.inode, made.inode);
    assert_ne!(again.inode, other.inode);
    let txn = h.store.read_txn().unwrap();
    assert_eq!(h.store.small_files.raw().len(&txn).unwrap(), 0, "the memories are in the file records");
    let record = h.store.files.get(&txn, &inode_key(again.inode)).unwrap().unwrap();
    let memory = FileRecord::decode_with_memory(record).unwrap().1.expect("the file record carries its memory");
    assert_eq!((memory.create_id, memory.created), (77, h.now));
    drop(txn);

    // The memory in a living file's record expires too.
    let kept = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 90, "b", b"hello"));
    h.advance(wire::limits::SMALL_FILE_CREATE_MEMORY_NS + NS_PER_SECOND);
    let later = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 90, "b", b"hello"));
    assert_ne!(later.inode, kept.inode, "a memory past SMALL_FILE_CREATE_MEMORY_NS answers no re-send");
}

/// A store of format 2 kept the memories in `small_files`: a re-send of a
/// create it made is still answered from there, within the memory; past
/// it, expired memories are forgotten by later creates and the id acts
/// again.
#[test]
fn create_small_file_memories_an_older_store_kept_are_honoured() {
    let mut h = Harness::new();
    let made = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello"));
    // Rewrite as format 2 left it: the file record without the memory,
    // the memory in small_files.
    {
        let mut txn = h.store.write_txn().unwrap();
        let record = h.store.files.get(&txn, &inode_key(made.inode)).unwrap().unwrap();
        let (file, memory) = FileRecord::decode_with_memory(record).unwrap();
        let memory = memory.unwrap();
        h.store.files.put(&mut txn, &inode_key(made.inode), &file.encode()).unwrap();
        h.store.small_files.put(&mut txn, &inode_key(made.inode), &memory.encode()).unwrap();
        txn.commit().unwrap();
    }
    let before = raw_contents(&h.store);
    assert_eq!(ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello")), made);
    assert!(raw_contents(&h.store) == before, "a re-send answered from small_files changed the store");
    assert_eq!(
        error(&mut h, ShardRequest::CreateSmallFile(small_file(InodeId::ROOT, 77, "a", b"other"))),
        ErrorKind::BadRequest
    );
    h.advance(wire::limits::SMALL_FILE_CREATE_MEMORY_NS + NS_PER_SECOND);
    let again = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello"));
    assert_ne!(again.inode, made.inode, "past the memory the id makes a new file");
    let txn = h.store.read_txn().unwrap();
    assert_eq!(h.store.small_files.raw().len(&txn).unwrap(), 0, "the expired memory was forgotten");
}

/// A small file deleted and sent back to eden (its file record gone)
/// within the memory: a re-send of its create is still answered with it
/// and makes nothing (the memory moved to `small_files` with the record).
#[test]
fn create_small_file_resent_after_the_file_went_to_eden_is_answered() {
    let mut h = Harness::new();
    let made = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello"));
    ok!(h, DeleteFile, DeleteFileReq { head: DeleteFileReqHead { parent: InodeId::ROOT }, name: name("a") });
    ok!(h, MoveFileToEden, MoveFileToEdenReq { inode: made.inode });
    let before = raw_contents(&h.store);
    assert_eq!(ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 77, "a", b"hello")), made);
    assert!(raw_contents(&h.store) == before, "a re-send after the file went to eden changed the store");
    assert!(ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0).is_empty());
}

/// The decoder refuses a body longer than INLINE_SPAN_BYTES_MAX (no
/// request reaches the logic).
#[test]
fn create_small_file_over_long_body_is_refused_by_the_decoder() {
    let h = Harness::new();
    let largest = vec![1u8; wire::limits::INLINE_SPAN_BYTES_MAX];
    let request = ShardRequest::CreateSmallFile(small_file(InodeId::ROOT, 1, "a", &largest));
    let mut bytes = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut bytes, 1, &request, None).unwrap();
    bytes.truncate(len);
    assert!(datagram::decode::<ShardRequest>(&bytes, Some(&h.cluster)).is_ok());
    // The u16 length just before the contents says one more byte, which follows.
    let at = len - wire::limits::INLINE_SPAN_BYTES_MAX - 2;
    let longer = u16::try_from(wire::limits::INLINE_SPAN_BYTES_MAX + 1).unwrap();
    bytes[at..at + 2].copy_from_slice(&longer.to_le_bytes());
    bytes.push(1);
    assert!(datagram::decode::<ShardRequest>(&bytes, Some(&h.cluster)).is_err());
}

/// move_file_in_shard (an mv file whose directories are both on this
/// shard): one mutation that links the file owning as the target
/// (overwriting an owning file, as inject does) and kills the source; every
/// refusal leaves the store byte for byte as it was; the same transaction's
/// request again answers from memory and touches nothing, also after a
/// client renamed the target; its id is not reused by another request;
/// `forget_below` past it forgets it.
#[test]
fn move_file_in_shard_is_one_mutation_remembered_per_transaction_until_forgotten() {
    let mut h = Harness::new();
    let mv = |transaction: u64,
              forget_below: u64,
              (source_dir, source): (InodeId, &'static str),
              (target_dir, target): (InodeId, &'static str)| MoveFileInShardReq {
        head: MoveFileInShardReqHead {
            source_dir,
            target_dir,
            transaction_id: U64::new(transaction),
            forget_below: U64::new(forget_below),
        },
        source_name: name(source),
        target_name: name(target),
    };
    let a = make_directory(&mut h, 1, InodeId::ROOT, "a");
    let b = make_directory(&mut h, 2, InodeId::ROOT, "b");
    let sub = make_directory(&mut h, 3, b, "sub");
    let (file, _) = create_file(&mut h, a, "x", b"moved");
    let (old, _) = create_file(&mut h, b, "y", b"overwritten");
    let (held, _) = create_file(&mut h, b, "held", b"held");
    let acquire = AcquireDirentReqHead {
        dir: b,
        expected_type: InodeType::File,
        transaction_id: U64::ZERO,
        forget_below: U64::ZERO,
    };
    assert_eq!(ok!(h, AcquireDirent, AcquireDirentReq { head: acquire, name: name("held") }).inode, held);
    let gone = make_directory(&mut h, 4, InodeId::ROOT, "gone");
    remove_directory(&mut h, InodeId::ROOT, gone, "gone");
    let elsewhere = InodeId::compose(InodeType::Directory, 2, 9).unwrap();

    // Refused, nothing left behind: the source missing, a directory or
    // held by the CDC; the target a directory or held; either directory
    // removed or not of this shard; the same entry.
    let before = raw_contents(&h.store);
    let refusals = [
        (mv(20, 0, (a, "nope"), (b, "z")), ErrorKind::NotFound),
        (mv(20, 0, (b, "sub"), (a, "z")), ErrorKind::BadInodeType),
        (mv(20, 0, (b, "held"), (a, "z")), ErrorKind::NotOwning),
        (mv(20, 0, (a, "x"), (b, "sub")), ErrorKind::CannotOverrideTarget),
        (mv(20, 0, (a, "x"), (b, "held")), ErrorKind::CannotOverrideTarget),
        (mv(20, 0, (a, "x"), (gone, "z")), ErrorKind::NotFound),
        (mv(20, 0, (a, "x"), (elsewhere, "z")), ErrorKind::NotFound),
        (mv(20, 0, (gone, "x"), (a, "z")), ErrorKind::NotFound),
        (mv(20, 0, (a, "x"), (a, "x")), ErrorKind::BadRequest),
    ];
    for (request, kind) in refusals {
        assert_eq!(error(&mut h, ShardRequest::MoveFileInShard(request)), kind);
        assert!(raw_contents(&h.store) == before, "a refused move_file_in_shard changed the store");
    }

    // Applied: the file is `y` in b (owning), the overwritten file is
    // dead and owning there, and `x` in a is dead, not owning, then
    // nothing.
    h.advance(1);
    let before_move = h.now;
    h.advance(1);
    let moved = ok!(h, MoveFileInShard, mv(10, 0, (a, "x"), (b, "y")));
    assert_eq!(moved.inode, file);
    let living_b = ls(&mut h, b, EggsTime::ZERO, 0);
    assert_eq!(names(&living_b), ["held", "sub", "y"]);
    let y = living_b.iter().find(|e| e.0 == "y").unwrap();
    assert_eq!((y.1, y.2), (file.with_owning(true), moved.creation_time));
    assert!(living_b.iter().any(|e| e.0 == "sub" && e.1.without_owning() == sub));
    assert!(ls(&mut h, a, EggsTime::ZERO, 0).is_empty());
    let dead_b = ls(&mut h, b, before_move, ls_flags::USE_DEAD_MAP);
    assert_eq!(dead_b.iter().find(|e| e.0 == "y").unwrap().1, old.with_owning(true));
    let dead_a = ls(&mut h, a, before_move, ls_flags::USE_DEAD_MAP);
    assert_eq!(dead_a.iter().find(|e| e.0 == "x").unwrap().1, file.with_owning(false));
    let now = h.now;
    let dead_a = ls(&mut h, a, now, ls_flags::USE_DEAD_MAP | ls_flags::INCLUDE_NOTHING);
    assert!(dead_a.iter().find(|e| e.0 == "x").unwrap().1.is_null(), "the source has its placeholder");

    // Re-sent after a client renamed the target: the first answer,
    // nothing touched (no second move, the renamed entry left alone).
    let rename =
        SameDirRenameReq { head: SameDirRenameReqHead { parent: b }, old_name: name("y"), new_name: name("w") };
    ok!(h, SameDirRename, rename);
    h.advance(1);
    let before = raw_contents(&h.store);
    assert_eq!(ok!(h, MoveFileInShard, mv(10, 0, (a, "x"), (b, "y"))), moved);
    assert!(raw_contents(&h.store) == before, "a re-sent move_file_in_shard changed the store");

    // The id is not reused: not by this request for another target
    // directory, nor by inject, acquire, create_unlinked_dir or
    // create_linked_dir; and move_file_in_shard refuses an id another
    // request used (transaction 1's create_unlinked_dir).
    assert_eq!(error(&mut h, ShardRequest::MoveFileInShard(mv(10, 0, (a, "x"), (a, "y")))), ErrorKind::BadRequest);
    let mut inject = plain_inject(a, file, "i", false);
    inject.head.transaction_id = U64::new(10);
    assert_eq!(error(&mut h, ShardRequest::InjectDirent(inject)), ErrorKind::BadRequest);
    let acquire = AcquireDirentReqHead {
        dir: b,
        expected_type: InodeType::File,
        transaction_id: U64::new(10),
        forget_below: U64::ZERO,
    };
    let acquire = AcquireDirentReq { head: acquire, name: name("w") };
    assert_eq!(error(&mut h, ShardRequest::AcquireDirent(acquire)), ErrorKind::BadRequest);
    let create = CreateUnlinkedDirReq { transaction_id: U64::new(10), parent: InodeId::ROOT, forget_below: U64::ZERO };
    assert_eq!(error(&mut h, ShardRequest::CreateUnlinkedDir(create)), ErrorKind::BadRequest);
    let linked = CreateLinkedDirReq {
        head: CreateLinkedDirReqHead { dir: a, transaction_id: U64::new(10), forget_below: U64::ZERO },
        name: name("l"),
    };
    assert_eq!(error(&mut h, ShardRequest::CreateLinkedDir(linked)), ErrorKind::BadRequest);
    assert_eq!(error(&mut h, ShardRequest::MoveFileInShard(mv(1, 0, (b, "w"), (a, "v")))), ErrorKind::BadRequest);
    assert!(raw_contents(&h.store) == before, "a refused reuse changed the store");

    // Transaction 20's refusals were not remembered: it moves within one
    // directory.
    let renamed = ok!(h, MoveFileInShard, mv(20, 0, (b, "w"), (b, "v")));
    assert_eq!(renamed.inode, file);
    assert_eq!(names(&ls(&mut h, b, EggsTime::ZERO, 0)), ["held", "sub", "v"]);

    // forget_below passes 10: forgotten, so the request acts again (`x`
    // in a is gone: NOT_FOUND).
    assert_eq!(error(&mut h, ShardRequest::MoveFileInShard(mv(10, 21, (a, "x"), (b, "y")))), ErrorKind::NotFound);
}

/// While the store records (the writer), create_small_file runs in the
/// batch transaction itself, without a nested transaction of its own
/// (`Shard::handle_mutation`). A refusal met before its first write
/// changes nothing and is answered, and the batch goes on; a failure met
/// after it (here a corrupt inode counter, read once the overwrite has
/// buried the name's old entry) cannot be rolled back alone, so it fails
/// the batch instead of being answered while its writes stay.
#[test]
fn create_small_file_without_a_nested_transaction_fails_the_batch_after_a_write() {
    let mut h = Harness::new();
    let first = ok!(h, CreateSmallFile, small_file(InodeId::ROOT, 1, "a", b"one"));
    h.store.record(true);
    let env = Env { now: h.now.saturating_add_ns(1000), block_services: &h.table, durations: h.durations };
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let mut outcome = MutationEffects::default();
    let mut txn = h.store.write_txn().unwrap();
    let mark = h.store.effects_mark();
    // Refused before writing (its CRC does not match): answered.
    let mut bad = small_file(InodeId::ROOT, 2, "b", b"two");
    bad.head.crc = U32::new(bad.head.crc.get() ^ 1);
    let request = ShardRequest::CreateSmallFile(bad);
    let len =
        h.shard.handle_mutation(&h.store, &mut txn, &env, &mut h.rng, &mut outcome, 2, &request, &mut out).unwrap();
    let Ok((_, ShardResponse::Error(error))) = datagram::decode::<ShardResponse>(&out[..len], Some(&h.cluster)) else {
        panic!("a CRC mismatch is refused")
    };
    assert_eq!(error.kind, ErrorKind::CrcMismatch);
    assert!(h.store.effects_mark() == mark, "the refused create wrote nothing");
    // The inode counter made corrupt (a value without its checksum).
    h.store.meta.raw().put(&mut txn, &MetaKey::counter(InodeType::File), b"garbage!").unwrap();
    let request = ShardRequest::CreateSmallFile(small_file(InodeId::ROOT, 3, "a", b"three"));
    let failed = h.shard.handle_mutation(&h.store, &mut txn, &env, &mut h.rng, &mut outcome, 3, &request, &mut out);
    assert!(
        matches!(failed, Err(StoreError::Corrupt(_))),
        "a corrupt record met after the overwrite's write fails the batch: {failed:?}"
    );
    drop(txn);
    h.store.discard_effects();
    h.store.record(false);
    // The batch was dropped: "a" is still the first file, and alone.
    let entries = ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0);
    assert_eq!(names(&entries), ["a"]);
    assert_eq!(entries[0].1.without_owning(), first.inode);
}

/// The creates of one batch share their `now`: the first writes the
/// directory's mtime, the others would write the same bytes again and
/// leave the record alone (no put, nothing journaled); a batch at a later
/// time writes it again. The contents are the same either way.
#[test]
fn creates_of_one_batch_write_their_directory_record_once() {
    let mut h = Harness::new();
    h.store.record(true);
    let mut effects = daemon::journal::Effects::default();
    let root = crate::store::inode_key(InodeId::ROOT);
    let mut batch = |h: &mut Harness, at: EggsTime, names: &[&str]| -> usize {
        let env = Env { now: at, block_services: &h.table, durations: h.durations };
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        let mut outcome = MutationEffects::default();
        let mut txn = h.store.write_txn().unwrap();
        for (id, file_name) in names.iter().enumerate() {
            let request = ShardRequest::CreateSmallFile(small_file(InodeId::ROOT, id as u64 + 10, file_name, b"x"));
            let len = h
                .shard
                .handle_mutation(&h.store, &mut txn, &env, &mut h.rng, &mut outcome, id as u64, &request, &mut out)
                .unwrap();
            let Ok((_, ShardResponse::CreateSmallFile(_))) =
                datagram::decode::<ShardResponse>(&out[..len], Some(&h.cluster))
            else {
                panic!("{file_name} is created")
            };
        }
        txn.commit().unwrap();
        h.store.take_effects(&mut effects);
        let directory_puts = effects
            .ops()
            .filter(|op| {
                matches!(op, Ok(daemon::journal::Op::Put { db, key, .. })
                    if usize::from(*db) == 1 && *key == root.as_slice())
            })
            .count();
        let txn = h.store.read_txn().unwrap();
        let record = DirectoryRecord::decode(h.store.directories.get(&txn, &root).unwrap().unwrap()).unwrap();
        assert_eq!(record.mtime, at, "the directory's mtime is the batch's time");
        directory_puts
    };
    let first = h.now.saturating_add_ns(NS_PER_SECOND);
    assert_eq!(batch(&mut h, first, &["a", "b", "c"]), 1, "one directory put for three creates at one time");
    assert_eq!(batch(&mut h, first, &["d"]), 0, "the mtime is already this batch's time");
    let later = first.saturating_add_ns(1000);
    assert_eq!(batch(&mut h, later, &["e", "f"]), 1, "a later batch moves the mtime once");
    h.store.record(false);
    assert_eq!(names(&ls(&mut h, InodeId::ROOT, EggsTime::ZERO, 0)), ["a", "b", "c", "d", "e", "f"]);
}

/// Inode ids come from a block the stored counter reserves: batches of
/// creates, some aborted (their block write rolled back with them), and
/// restarts (a new `Shard` on the same store, its blocks forgotten) never
/// hand out an id twice among the committed files, and the stored counter
/// is at or above every one of them; the counter is written once per block.
#[test]
fn inode_ids_from_reserved_blocks_are_unique_over_aborts_and_restarts() {
    use rand::Rng;
    let mut h = Harness::new();
    let seed = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    h.store.record(true);
    let mut effects = daemon::journal::Effects::default();
    let counter_key = MetaKey::counter(InodeType::File);
    let (mut committed, mut counter_puts, mut named) = (std::collections::HashSet::new(), 0usize, 0u64);
    for _ in 0..200 {
        if rng.random_ratio(1, 10) {
            h.shard = Shard::open(&h.store, 1, &SecretKey([7; 16]), h.now).unwrap();
        }
        h.now = h.now.saturating_add_ns(1000);
        let env = Env { now: h.now, block_services: &h.table, durations: h.durations };
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        let mut outcome = MutationEffects::default();
        let mut txn = h.store.write_txn().unwrap();
        let mut made = Vec::new();
        for _ in 0..rng.random_range(1..40) {
            named += 1;
            let file_name = format!("f{named}");
            let request = ShardRequest::CreateSmallFile(small_file(InodeId::ROOT, named, &file_name, b"x"));
            let len = h
                .shard
                .handle_mutation(&h.store, &mut txn, &env, &mut h.rng, &mut outcome, named, &request, &mut out)
                .unwrap();
            let Ok((_, ShardResponse::CreateSmallFile(resp))) =
                datagram::decode::<ShardResponse>(&out[..len], Some(&h.cluster))
            else {
                panic!("{file_name} is created")
            };
            made.push(resp.inode.counter());
        }
        if rng.random_ratio(1, 4) {
            drop(txn);
            h.store.discard_effects();
            continue;
        }
        txn.commit().unwrap();
        h.store.take_effects(&mut effects);
        counter_puts += effects
            .ops()
            .filter(
                |op| matches!(op, Ok(daemon::journal::Op::Put { db: 0, key, .. }) if *key == counter_key.as_slice()),
            )
            .count();
        for id in made {
            assert!(committed.insert(id), "inode counter {id} handed out twice");
        }
        let txn = h.store.read_txn().unwrap();
        let stored = decode_u64(h.store.meta.get(&txn, &counter_key).unwrap().unwrap(), "counter").unwrap();
        assert!(committed.iter().all(|&id| id <= stored), "an id above the stored counter {stored}");
    }
    h.store.record(false);
    let most = committed.iter().max().copied().unwrap_or(0);
    eprintln!("{} files committed, counter written {counter_puts} times, highest id {most}", committed.len());
    assert!(committed.len() > 1000, "{} files", committed.len());
    assert!(
        counter_puts * 10 < committed.len(),
        "the counter is written once per block, not per create: {counter_puts} writes for {} files",
        committed.len()
    );
}
