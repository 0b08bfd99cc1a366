//! metad over real UDP: the real binary, started on port 0 in a temporary
//! folder.

mod common;

use common::*;
use std::time::Duration;
use wire::codec::List;
use wire::crc::crc32c;
use wire::datagram::{self, HEADER_BYTES};
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::mac::MacKey;
use wire::shard::*;
use wire::span::{InlineBytes, SpanBody};
use wire::{ErrorKind, Name};
use zerocopy::byteorder::little_endian::{U32, U64};

fn name(text: &str) -> Name<'_> {
    Name::new(text.as_bytes()).unwrap()
}

fn error_kind(bytes: &[u8], key: &MacKey) -> Option<ErrorKind> {
    match decode(bytes, key) {
        ShardResponse::Error(error) => Some(error.kind),
        _ => None,
    }
}

/// create_eden_file + inline span + link; returns the inode.
fn create_file(client: &mut Client, parent: InodeId, file_name: &str, contents: &[u8]) -> InodeId {
    let bytes = client.call(&ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File }));
    let ShardResponse::CreateEdenFile(created) = decode(&bytes, &client.key) else { panic!("create failed") };
    let span = inline_span(&created, contents);
    let bytes = client.call(&ShardRequest::AddEdenSpan(span));
    assert!(matches!(decode(&bytes, &client.key), ShardResponse::AddEdenSpan(_)));
    let link = LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent },
        name: name(file_name),
    };
    let bytes = client.call(&ShardRequest::LinkEdenFile(link));
    assert!(matches!(decode(&bytes, &client.key), ShardResponse::LinkEdenFile(_)), "{:?}", decode(&bytes, &client.key));
    created.inode
}

#[test]
fn files_and_privileged_requests_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let mut client = Client::new(daemon.address("udp"), &key);

    let inode = create_file(&mut client, InodeId::ROOT, "hello.txt", b"hello, world");
    let resolve = ResolveReq {
        head: ResolveReqHead { mode: ResolveMode::Alive, parent: InodeId::ROOT, creation_time: EggsTime::ZERO },
        name: name("hello.txt"),
    };
    let bytes = client.call(&ShardRequest::Resolve(resolve));
    let ShardResponse::Resolve(resolved) = decode(&bytes, &client.key) else { panic!() };
    assert_eq!(resolved.inode, inode.with_owning(true));
    let bytes = client.call(&ShardRequest::Stat(StatReq { inode }));
    let ShardResponse::Stat(StatResp::File(stat)) = decode(&bytes, &client.key) else { panic!() };
    assert_eq!(stat.size.get(), 12);

    // The prototype README's ls_dead_ge: mkdir /c/d, rmdir /c/d, ls dead ≥ ts.
    let before = EggsTime::now();
    let create = |transaction: u64, parent| {
        ShardRequest::CreateUnlinkedDir(CreateUnlinkedDirReq {
            transaction_id: U64::new(transaction),
            parent,
            forget_below: U64::ZERO,
        })
    };
    let bytes = client.call(&create(1, InodeId::ROOT));
    let ShardResponse::CreateUnlinkedDir(c) = decode(&bytes, &client.key) else { panic!() };
    let bytes = client.call(&create(2, c.inode));
    let ShardResponse::CreateUnlinkedDir(d) = decode(&bytes, &client.key) else { panic!() };
    for (parent, child, child_name) in [(InodeId::ROOT, c.inode, "c"), (c.inode, d.inode, "d")] {
        let inject = InjectDirentReq {
            head: InjectDirentReqHead {
                dir: parent,
                inode: child,
                dry_run: 0,
                owning: 0,
                transaction_id: U64::ZERO,
                forget_below: U64::ZERO,
            },
            name: name(child_name),
        };
        assert!(matches!(
            decode(&client.call(&ShardRequest::InjectDirent(inject)), &client.key),
            ShardResponse::InjectDirent(_)
        ));
        let release = ReleaseDirentReq {
            head: ReleaseDirentReqHead { dir: parent, inode: child, kill: 0 },
            name: name(child_name),
        };
        assert!(matches!(
            decode(&client.call(&ShardRequest::ReleaseDirent(release)), &client.key),
            ShardResponse::ReleaseDirent(_)
        ));
    }
    let acquire = AcquireDirentReq {
        head: AcquireDirentReqHead {
            dir: c.inode,
            expected_type: InodeType::Directory,
            transaction_id: U64::ZERO,
            forget_below: U64::ZERO,
        },
        name: name("d"),
    };
    assert!(matches!(
        decode(&client.call(&ShardRequest::AcquireDirent(acquire)), &client.key),
        ShardResponse::AcquireDirent(_)
    ));
    let unlink = ShardRequest::SetParent(SetParentReq { dir: d.inode, parent: InodeId::NULL });
    assert!(matches!(decode(&client.call(&unlink), &client.key), ShardResponse::SetParent(_)));
    let kill =
        ReleaseDirentReq { head: ReleaseDirentReqHead { dir: c.inode, inode: d.inode, kill: 1 }, name: name("d") };
    assert!(matches!(
        decode(&client.call(&ShardRequest::ReleaseDirent(kill)), &client.key),
        ShardResponse::ReleaseDirent(_)
    ));
    let ls = |flags, as_of| ShardRequest::LsDir(LsDirReq { dir: c.inode, as_of, start_hash: U64::new(0), flags });
    let bytes = client.call(&ls(0, EggsTime::ZERO));
    let ShardResponse::LsDir(living) = decode(&bytes, &client.key) else { panic!() };
    assert!(living.entries.is_empty());
    let bytes = client.call(&ls(ls_flags::USE_DEAD_MAP | ls_flags::NEWER_THAN_AS_OF, before));
    let ShardResponse::LsDir(dead) = decode(&bytes, &client.key) else { panic!() };
    let dead_names: Vec<&str> = dead.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(dead_names, vec!["d"]);

    // Privileged requests without a MAC, or with a MAC of another key.
    let request = create(3, InodeId::ROOT);
    let id = client.fresh_id();
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut out, id, &request, Some(&client.key)).unwrap();
    let unmacd = client.raw(&out[..len - 8], id, Duration::from_secs(10)).expect("answer");
    assert_eq!(error_kind(&unmacd, &client.key), Some(ErrorKind::NotAuthorised));
    let other = MacKey::new(&wire::SecretKey([0x55; 16]));
    let id = client.fresh_id();
    let len = datagram::encode(&mut out, id, &request, Some(&other)).unwrap();
    let wrong = client.raw(&out[..len], id, Duration::from_secs(10)).expect("answer");
    assert_eq!(error_kind(&wrong, &client.key), Some(ErrorKind::NotAuthorised));
    // Errors answering privileged requests are MAC'd (kind 0x80): the CDC
    // cannot be fed a forged one.
    for answer in [&unmacd, &wrong] {
        let header = datagram::peek_header(answer, datagram::SHARD_MAGIC).unwrap();
        assert_eq!(header.kind, datagram::KIND_PRIVILEGED_ERROR);
        assert!(datagram::decode::<ShardResponse>(answer, None).is_err());
    }
    let refused =
        ShardRequest::SetParent(SetParentReq { dir: InodeId::new(0x0000_0000_0000_7777), parent: InodeId::ROOT });
    let bytes = client.call(&refused);
    assert_eq!(datagram::peek_header(&bytes, datagram::SHARD_MAGIC).unwrap().kind, datagram::KIND_PRIVILEGED_ERROR);
    assert!(error_kind(&bytes, &client.key).is_some());
    // The responses to privileged requests are MAC'd: they verify only with the key.
    let bytes = client.call(&create(1, InodeId::ROOT));
    assert!(datagram::decode::<ShardResponse>(&bytes, Some(&other)).is_err());
    let ShardResponse::CreateUnlinkedDir(again) = decode(&bytes, &client.key) else { panic!() };
    assert_eq!(again.inode, c.inode, "create_unlinked_dir is idempotent per transaction");
}

#[test]
fn malformed_datagrams_are_answered_or_dropped_and_serving_continues() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let mut client = Client::new(daemon.address("udp"), &key);
    let quick = Duration::from_millis(500);

    // Garbage without our magic: dropped.
    for garbage in [&b""[..], b"x", &[0xff; 100], &[0u8; 2000]] {
        assert!(client.raw(garbage, 0, quick).is_none());
    }
    // Our header with a bad body: DECODE_ERROR with the request id.
    let id = client.fresh_id();
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut out, id, &ShardRequest::Stat(StatReq { inode: InodeId::ROOT }), None).unwrap();
    let truncated = client.raw(&out[..len - 3], id, Duration::from_secs(10)).expect("answer");
    assert_eq!(error_kind(&truncated, &client.key), Some(ErrorKind::DecodeError));
    let mut trailing = out[..len].to_vec();
    trailing.push(0);
    let answer = client.raw(&trailing, id, Duration::from_secs(10)).expect("answer");
    assert_eq!(error_kind(&answer, &client.key), Some(ErrorKind::DecodeError));
    // Unknown kind, bad version, an over-long datagram.
    let mut unknown = out[..len].to_vec();
    unknown[HEADER_BYTES - 1] = 0x7e;
    let answer = client.raw(&unknown, id, Duration::from_secs(10)).expect("answer");
    assert_eq!(error_kind(&answer, &client.key), Some(ErrorKind::DecodeError));
    let mut version = out[..len].to_vec();
    version[3] = 99;
    let answer = client.raw(&version, id, Duration::from_secs(10)).expect("answer");
    assert_eq!(error_kind(&answer, &client.key), Some(ErrorKind::UnsupportedVersion));
    let mut long = out[..len].to_vec();
    long.resize(1600, 0);
    let answer = client.raw(&long, id, Duration::from_secs(10)).expect("answer");
    assert_eq!(error_kind(&answer, &client.key), Some(ErrorKind::DecodeError));
    // An invalid name inside a mutation.
    let mut bad_name = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let delete =
        ShardRequest::DeleteFile(DeleteFileReq { head: DeleteFileReqHead { parent: InodeId::ROOT }, name: name("ab") });
    let len = datagram::encode(&mut bad_name, id, &delete, None).unwrap();
    bad_name[len - 1] = b'/';
    let answer = client.raw(&bad_name[..len], id, Duration::from_secs(10)).expect("answer");
    assert_eq!(error_kind(&answer, &client.key), Some(ErrorKind::DecodeError));

    // Still serving.
    let bytes = client.call(&ShardRequest::Stat(StatReq { inode: InodeId::ROOT }));
    assert!(matches!(decode(&bytes, &client.key), ShardResponse::Stat(StatResp::Directory(_))));
    create_file(&mut client, InodeId::ROOT, "after", b"still here");
}

#[test]
fn a_retransmitted_mutation_is_executed_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let mut client = Client::new(daemon.address("udp"), &key);
    let request = ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File });
    let id = client.fresh_id();
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut out, id, &request, None).unwrap();
    // Three copies back to back (some still queued when the first commits),
    // then one more later.
    for _ in 0..3 {
        client.socket.send_to(&out[..len], client.server).unwrap();
    }
    let first = client.raw(&out[..len], id, Duration::from_secs(10)).expect("answer");
    std::thread::sleep(Duration::from_millis(100));
    let later = client.raw(&out[..len], id, Duration::from_secs(10)).expect("answer");
    let ShardResponse::CreateEdenFile(a) = decode(&first, &client.key) else { panic!() };
    let ShardResponse::CreateEdenFile(b) = decode(&later, &client.key) else { panic!() };
    assert_eq!(a.inode, b.inode);
    // A new request id gets the very next inode: nothing was created twice.
    let bytes = client.call(&request);
    let ShardResponse::CreateEdenFile(c) = decode(&bytes, &client.key) else { panic!() };
    assert_eq!(c.inode.counter(), a.inode.counter() + 1);
}

#[test]
fn ten_thousand_entries_over_udp_with_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let mut client = Client::new(daemon.address("udp"), &key);
    let bytes = client.call(&ShardRequest::CreateUnlinkedDir(CreateUnlinkedDirReq {
        transaction_id: U64::new(77),
        parent: InodeId::ROOT,
        forget_below: U64::ZERO,
    }));
    let ShardResponse::CreateUnlinkedDir(created) = decode(&bytes, &client.key) else { panic!() };
    let target = InodeId::compose(InodeType::File, 4, 1).unwrap();
    let texts: Vec<String> = (0..10_000).map(|i| format!("file-{i:05}")).collect();
    let requests: Vec<(u64, Vec<u8>)> = texts
        .iter()
        .map(|text| {
            let id = client.fresh_id();
            let request = ShardRequest::InjectDirent(InjectDirentReq {
                head: InjectDirentReqHead {
                    dir: created.inode,
                    inode: target,
                    dry_run: 0,
                    owning: 0,
                    transaction_id: U64::ZERO,
                    forget_below: U64::ZERO,
                },
                name: Name::new(text.as_bytes()).unwrap(),
            });
            let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
            let len = datagram::encode(&mut out, id, &request, Some(&client.key)).unwrap();
            out.truncate(len);
            (id, out)
        })
        .collect();
    for response in pipeline(&client, &requests, 256) {
        assert!(matches!(decode(&response, &client.key), ShardResponse::InjectDirent(_)));
    }
    let mut listed = Vec::new();
    let mut start = 0;
    let mut pages = 0;
    loop {
        let ls = ShardRequest::LsDir(LsDirReq {
            dir: created.inode,
            as_of: EggsTime::ZERO,
            start_hash: U64::new(start),
            flags: 0,
        });
        let bytes = client.call(&ls);
        assert!(bytes.len() <= UDP_DATAGRAM_BYTES_MAX);
        let ShardResponse::LsDir(page) = decode(&bytes, &client.key) else { panic!() };
        pages += 1;
        listed.extend(page.entries.iter().map(|e| e.name.as_str().to_string()));
        if page.more == 0 {
            break;
        }
        start = page.next_hash.get();
    }
    assert!(pages > 10);
    listed.sort();
    assert_eq!(listed, texts);
    let _ = List::<u8>::empty();
}

#[test]
fn without_shuckle_the_shard_serves_but_places_no_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let mut client = Client::new(daemon.address("udp"), &key);
    let bytes = client.call(&ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File }));
    let ShardResponse::CreateEdenFile(created) = decode(&bytes, &client.key) else { panic!() };
    let crc = crc32c(b"x");
    let blocks = [NewBlock { crc: U32::new(crc), size: U32::new(1) }; 2];
    let add = ShardRequest::AddEdenSpan(AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode: created.inode,
            cookie: created.cookie,
            offset: U64::new(0),
            size: U32::new(1),
            crc: U32::new(crc),
        },
        body: SpanBody::Blocks {
            storage_class: 2,
            parity: wire::Parity::new(1, 1).unwrap(),
            blocks: List::new(&blocks),
        },
        blacklist: List::empty(),
    });
    let bytes = client.call(&add);
    assert_eq!(error_kind(&bytes, &client.key), Some(ErrorKind::NotEnoughBlockServices));
    // Inline data still works.
    create_file(&mut client, InodeId::ROOT, "inline", b"no blocks needed");
}

/// The response's kind, or its error kind.
fn outcome(bytes: &[u8], key: &MacKey) -> Result<ShardKind, ErrorKind> {
    match decode(bytes, key) {
        ShardResponse::Error(error) => Err(error.kind),
        response => Ok(response.kind().expect("kind")),
    }
}

#[test]
fn every_remaining_request_kind_answers_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let mut client = Client::new(daemon.address("udp"), &key);
    let file = create_file(&mut client, InodeId::ROOT, "a", b"aaa");
    let bytes = client.call(&ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File }));
    let ShardResponse::CreateEdenFile(eden) = decode(&bytes, &client.key) else { panic!() };
    let policy = [1u8, 2];
    let no_proofs: [wire::mac::Mac; 0] = [];
    let remote = InodeId::compose(InodeType::File, 7, 1).unwrap();
    let cases: Vec<(ShardRequest<'_>, Result<ShardKind, ErrorKind>)> = vec![
        (ShardRequest::VisitInodes(VisitInodesReq { begin: InodeId::NULL }), Ok(ShardKind::VisitInodes)),
        (ShardRequest::VisitEden(VisitEdenReq { begin: InodeId::NULL }), Ok(ShardKind::VisitEden)),
        (
            ShardRequest::ReverseBlockQuery(ReverseBlockQueryReq {
                block_service_id: wire::BlockServiceId::new(1),
                begin: wire::BlockId::new(0),
            }),
            Ok(ShardKind::ReverseBlockQuery),
        ),
        (
            ShardRequest::SetDirectoryPolicy(SetDirectoryPolicyReq {
                head: SetDirectoryPolicyReqHead { dir: InodeId::ROOT },
                policy: PolicyBlob::new(&policy).unwrap(),
            }),
            Ok(ShardKind::SetDirectoryPolicy),
        ),
        (
            ShardRequest::SetDirectoryPolicy(SetDirectoryPolicyReq {
                head: SetDirectoryPolicyReqHead { dir: file },
                policy: PolicyBlob::new(&policy).unwrap(),
            }),
            Err(ErrorKind::BadInodeType),
        ),
        (
            ShardRequest::CertifyEdenSpan(CertifyEdenSpanReq {
                head: CertifyEdenSpanReqHead { inode: eden.inode, cookie: eden.cookie, offset: U64::new(0) },
                proofs: List::new(&no_proofs),
            }),
            Err(ErrorKind::NotFound),
        ),
        (
            ShardRequest::SameDirRename(SameDirRenameReq {
                head: SameDirRenameReqHead { parent: InodeId::ROOT },
                old_name: name("a"),
                new_name: name("b"),
            }),
            Ok(ShardKind::SameDirRename),
        ),
        (
            ShardRequest::DeleteFile(DeleteFileReq {
                head: DeleteFileReqHead { parent: InodeId::ROOT },
                name: name("b"),
            }),
            Ok(ShardKind::DeleteFile),
        ),
        (ShardRequest::ExpungeEdenSpan(ExpungeEdenSpanReq { inode: eden.inode }), Err(ErrorKind::TooSoon)),
        (
            ShardRequest::CertifyExpunge(CertifyExpungeReq {
                head: CertifyExpungeReqHead { inode: eden.inode, offset: U64::new(0) },
                proofs: List::new(&no_proofs),
            }),
            Err(ErrorKind::NotFound),
        ),
        (ShardRequest::ExpungeEdenFile(ExpungeEdenFileReq { inode: eden.inode }), Err(ErrorKind::TooSoon)),
        (
            ShardRequest::PurgeDirent(PurgeDirentReq {
                head: PurgeDirentReqHead { parent: InodeId::ROOT, creation_time: EggsTime::new(1) },
                name: name("a"),
            }),
            Err(ErrorKind::NotFound),
        ),
        (
            ShardRequest::RepairSpans(RepairSpansReq {
                inode: file,
                offset: U64::new(0),
                source_inode: eden.inode,
                source_cookie: eden.cookie,
            }),
            Err(ErrorKind::BadRequest),
        ),
        (
            ShardRequest::RepairBlock(RepairBlockReq {
                inode: file,
                offset: U64::new(0),
                block_index: 0,
                source_inode: eden.inode,
                source_cookie: [0; 8],
            }),
            Err(ErrorKind::NotAuthorised),
        ),
        (
            ShardRequest::PurgeRemoteOwningDirent(PurgeRemoteOwningDirentReq {
                head: PurgeRemoteOwningDirentReqHead { dir: InodeId::ROOT, creation_time: EggsTime::new(1) },
                name: name("gone"),
            }),
            Ok(ShardKind::PurgeRemoteOwningDirent),
        ),
        (
            ShardRequest::InjectDirent(InjectDirentReq {
                head: InjectDirentReqHead {
                    dir: InodeId::ROOT,
                    inode: remote,
                    dry_run: 0,
                    owning: 0,
                    transaction_id: U64::ZERO,
                    forget_below: U64::ZERO,
                },
                name: name("remote"),
            }),
            Ok(ShardKind::InjectDirent),
        ),
        (
            ShardRequest::DeleteFile(DeleteFileReq {
                head: DeleteFileReqHead { parent: InodeId::ROOT },
                name: name("remote"),
            }),
            Err(ErrorKind::NotOwning),
        ),
        (ShardRequest::MoveFileToEden(MoveFileToEdenReq { inode: file }), Ok(ShardKind::MoveFileToEden)),
        (ShardRequest::Stat(StatReq { inode: remote }), Err(ErrorKind::NotFound)),
    ];
    for (request, expected) in cases {
        let kind = request.kind();
        let bytes = client.call(&request);
        assert_eq!(outcome(&bytes, &client.key), expected, "{kind:?}");
    }
}

#[test]
fn a_thousand_spans_page_through_fetch_spans_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let mut client = Client::new(daemon.address("udp"), &key);
    let bytes = client.call(&ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File }));
    let ShardResponse::CreateEdenFile(eden) = decode(&bytes, &client.key) else { panic!() };
    for i in 0..1000u64 {
        let contents = [i as u8; 7];
        let span = AddEdenSpanReq {
            head: AddEdenSpanReqHead {
                inode: eden.inode,
                cookie: eden.cookie,
                offset: U64::new(i * 7),
                size: U32::new(7),
                crc: U32::new(crc32c(&contents)),
            },
            body: SpanBody::Inline(InlineBytes::new(&contents).unwrap()),
            blacklist: List::empty(),
        };
        let bytes = client.call(&ShardRequest::AddEdenSpan(span));
        assert_eq!(outcome(&bytes, &client.key), Ok(ShardKind::AddEdenSpan));
    }
    let link = LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: eden.inode, cookie: eden.cookie, parent: InodeId::ROOT },
        name: name("big"),
    };
    assert_eq!(outcome(&client.call(&ShardRequest::LinkEdenFile(link)), &client.key), Ok(ShardKind::LinkEdenFile));
    let (mut offset, mut seen, mut pages) = (0u64, 0u64, 0);
    loop {
        let bytes =
            client.call(&ShardRequest::FetchSpans(FetchSpansReq { inode: eden.inode, offset: U64::new(offset) }));
        assert!(bytes.len() <= UDP_DATAGRAM_BYTES_MAX);
        let ShardResponse::FetchSpans(page) = decode(&bytes, &client.key) else { panic!() };
        pages += 1;
        for span in page.spans.iter() {
            assert_eq!(span.offset.get(), seen * 7);
            let SpanBody::Inline(contents) = span.body else { panic!() };
            assert_eq!(contents.as_bytes(), &[seen as u8; 7]);
            seen += 1;
        }
        if page.next_offset.get() == 0 {
            break;
        }
        offset = page.next_offset.get();
    }
    assert_eq!((seen, pages > 10), (1000, true));
}

/// The I/O threads take every queued datagram in one batched receive and
/// answer in one batched send: a burst from several senders, stats and
/// creates mixed, gets every request answered once, each to its sender,
/// and `metad_receive_batch_size` counts every datagram, some of them
/// several to a receive.
#[test]
fn a_burst_of_queued_datagrams_is_answered_each_to_its_sender() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    let daemon = Daemon::start(
        &binary("metad"),
        &["1", folder, "--listen", "127.0.0.1:0", "--shuckle", "127.0.0.1:9", "--metrics", "127.0.0.1:0"],
    );
    let key = cluster_key(dir.path());
    let mut clients: Vec<Client> = (0..4).map(|_| Client::new(daemon.address("udp"), &key)).collect();
    const PER_CLIENT: usize = 48;
    let mut sent: Vec<Vec<u64>> = Vec::new();
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    for client in &mut clients {
        let mut ids = Vec::new();
        for n in 0..PER_CLIENT {
            let id = client.fresh_id();
            let request = if n % 4 == 3 {
                ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File })
            } else {
                ShardRequest::Stat(StatReq { inode: InodeId::ROOT })
            };
            let len = datagram::encode(&mut out, id, &request, None).unwrap();
            client.socket.send_to(&out[..len], client.server).unwrap();
            ids.push(id);
        }
        sent.push(ids);
    }
    let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX + 100];
    for (client, ids) in clients.iter().zip(&sent) {
        client.socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answered = Vec::new();
        while answered.len() < ids.len() {
            let (len, from) = client.socket.recv_from(&mut buf).expect("every request answered");
            assert_eq!(from, client.server);
            let header: datagram::Header = wire::codec::Reader::new(&buf[..len]).fixed().unwrap();
            assert!(
                matches!(decode(&buf[..len], &client.key), ShardResponse::Stat(_) | ShardResponse::CreateEdenFile(_)),
                "{:?}",
                decode(&buf[..len], &client.key)
            );
            answered.push(header.request_id());
        }
        answered.sort_unstable();
        let mut expected = ids.clone();
        expected.sort_unstable();
        assert_eq!(answered, expected, "each request of this sender answered once, to it");
    }
    let metrics = Metrics::scrape(&daemon);
    let (receives, datagrams) =
        (metrics.value("metad_receive_batch_size_count"), metrics.value("metad_receive_batch_size_sum"));
    assert!(datagrams >= (4 * PER_CLIENT) as f64, "every datagram counted: {datagrams}");
    assert!(receives < datagrams, "some receive took several queued datagrams: {receives} receives, {datagrams}");
}

/// A create_small_file whose answer was lost in a SIGKILL: the same
/// datagram re-sent to the restarted shard (its in-memory retransmission
/// cache gone) is answered with the same file, and nothing is created
/// twice.
#[test]
fn a_small_file_resent_after_a_sigkill_is_answered_without_a_second_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let client = Client::new(daemon.address("udp"), &key);
    let contents = b"small and durable";
    let request = ShardRequest::CreateSmallFile(CreateSmallFileReq {
        head: CreateSmallFileReqHead {
            parent: InodeId::ROOT,
            create_id: U64::new(0x5eed_1234_5678_9abc),
            crc: U32::new(crc32c(contents)),
            inode_type: InodeType::File,
        },
        name: name("small"),
        contents: InlineBytes::new(contents).unwrap(),
    });
    let id = 4242;
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut out, id, &request, None).unwrap();
    let first = client.raw(&out[..len], id, Duration::from_secs(10)).expect("answer");
    let ShardResponse::CreateSmallFile(made) = decode(&first, &client.key) else { panic!("no answer") };
    daemon.kill();
    drop(daemon);
    let daemon = start_metad(1, dir.path(), None);
    let mut client = Client::new(daemon.address("udp"), &key);
    let again = client.raw(&out[..len], id, Duration::from_secs(10)).expect("answer after the restart");
    let ShardResponse::CreateSmallFile(answered) = decode(&again, &client.key) else { panic!("no answer") };
    assert_eq!(answered, made, "the re-send is answered with the file the first one made");
    let ls = LsDirReq { dir: InodeId::ROOT, as_of: EggsTime::ZERO, start_hash: U64::ZERO, flags: 0 };
    let bytes = client.call(&ShardRequest::LsDir(ls));
    let ShardResponse::LsDir(listing) = decode(&bytes, &client.key) else { panic!("ls") };
    assert_eq!(listing.entries.len(), 1, "one file");
    // A new create gets the first inode of the block after the one the
    // stored counter reserved before the kill (a restart leaves the rest
    // of a block unused): nothing was made twice.
    let mut fresh = request;
    if let ShardRequest::CreateSmallFile(req) = &mut fresh {
        req.head.create_id = U64::new(1);
        req.name = name("other");
    }
    let bytes = client.call(&fresh);
    let ShardResponse::CreateSmallFile(next) = decode(&bytes, &client.key) else { panic!("create") };
    let block = metad::logic::INODE_IDS_PER_COUNTER_WRITE;
    assert_eq!(next.inode.counter(), made.inode.counter().next_multiple_of(block) + 1);
}
