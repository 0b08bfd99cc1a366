//! Encode/decode of the hot datagrams and block-service messages.
//!
//! Every shard read (resolve, stat, fetch_spans) costs one request encode on
//! the client, one decode + one response encode on the shard, and one
//! response decode on the client; these benchmarks time each of those steps.
//! Block messages are timed with their MACs, since a write request is
//! useless without its certificate and a stats answer without its MAC.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use wire::block::{BlockRequest, BlockServiceStats, StatsResp, WriteReq};
use wire::codec::{Blob, List};
use wire::datagram::{decode, encode};
use wire::ids::{BlockId, BlockServiceId, EggsTime, InodeId, InodeType};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::mac::{MacKey, SecretKey};
use wire::shard::{
    FetchSpansReq, FetchSpansResp, FetchSpansRespHead, FetchedBlock, FetchedSpan, FetchedSpanHead, ResolveMode,
    ResolveReq, ResolveReqHead, ResolveResp, ShardRequest, ShardResponse, StatDirectory, StatDirectoryHead, StatReq,
    StatResp,
};
use wire::span::{Parity, SpanBody};
use wire::{Address, Name};
use zerocopy::byteorder::little_endian::{U32, U64};

const ROOT: InodeId = InodeId::new(0x0020_0000_0000_0000);

/// Encodes then decodes `$body` (a `$family` datagram), benchmarking both
/// halves; `$check` must accept the decoded message. A macro because the
/// decoded message borrows the datagram and so has a shorter lifetime than
/// the one encoded.
macro_rules! bench_datagram {
    ($c:expr, $name:expr, $body:expr, $family:ident, $check:expr) => {{
        let body = $body;
        let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = encode(&mut buf, 42, body, None).expect("benchmark message fits a datagram");
        let mut group = $c.benchmark_group($name);
        group.throughput(Throughput::Elements(1));
        group.bench_function("encode", |b| {
            b.iter(|| encode(black_box(&mut buf), black_box(42), black_box(body), None).expect("fits"))
        });
        let bytes = buf[..len].to_vec();
        group.bench_function("decode", |b| {
            b.iter(|| {
                let (_, decoded) = decode::<$family<'_>>(black_box(&bytes), None).expect("valid datagram");
                let check: fn(&$family<'_>) -> bool = $check;
                assert!(check(&decoded));
            })
        });
        group.finish();
    }};
}

fn resolve(c: &mut Criterion) {
    let name = Name::new(b"training-data-shard-000042.tar").expect("valid name");
    let request = ShardRequest::Resolve(ResolveReq {
        head: ResolveReqHead { mode: ResolveMode::Alive, parent: ROOT, creation_time: EggsTime::ZERO },
        name,
    });
    bench_datagram!(c, "shard/resolve_req", &request, ShardRequest, |r| matches!(r, ShardRequest::Resolve(_)));
    let response = ShardResponse::Resolve(ResolveResp {
        inode: InodeId::new(0xa020_0000_0000_1234),
        creation_time: EggsTime::now(),
    });
    bench_datagram!(c, "shard/resolve_resp", &response, ShardResponse, |r| matches!(r, ShardResponse::Resolve(_)));
}

fn stat(c: &mut Criterion) {
    let request = ShardRequest::Stat(StatReq { inode: ROOT });
    bench_datagram!(c, "shard/stat_req", &request, ShardRequest, |r| matches!(r, ShardRequest::Stat(_)));
    let policy = wire::policy::Policy::new(2, Parity::new(4, 2).expect("4+2"), 4 << 20).expect("valid policy");
    let policy_bytes = policy.encode();
    let response = ShardResponse::Stat(StatResp::Directory(StatDirectory {
        head: StatDirectoryHead { mtime: EggsTime::now(), parent: InodeId::new(0), hash_mode: 0 },
        policy: Blob::new(&policy_bytes).expect("policy fits"),
    }));
    // The response borrows `policy_bytes`, which outlives the benchmark.
    bench_datagram!(c, "shard/stat_dir_resp", &response, ShardResponse, |r| matches!(r, ShardResponse::Stat(_)));
}

fn fetch_spans(c: &mut Criterion) {
    let request =
        ShardRequest::FetchSpans(FetchSpansReq { inode: InodeId::new(0x2020_0000_0000_0007), offset: U64::new(0) });
    bench_datagram!(c, "shard/fetch_spans_req", &request, ShardRequest, |r| matches!(r, ShardRequest::FetchSpans(_)));
    // A page of 4+2 spans, as many as fit one datagram: the common read path.
    let address = Address::from(std::net::SocketAddr::from(([127, 0, 0, 1], 40_000)));
    let blocks: Vec<FetchedBlock> = (0..6u64)
        .map(|i| FetchedBlock {
            block_service_id: BlockServiceId::new(0x1000 + i),
            address,
            flags: 0,
            block_id: BlockId::new(0x0123_4567_0000_0001 + (i << 8)),
            crc: U32::new(0xdead_beef),
            size: U32::new(1 << 20),
        })
        .collect();
    let spans: Vec<FetchedSpan<'_>> = (0..4u64)
        .map(|i| FetchedSpan {
            head: FetchedSpanHead { offset: U64::new(i << 22), size: U32::new(4 << 20), crc: U32::new(0x1234_5678) },
            body: SpanBody::Blocks {
                storage_class: 2,
                parity: Parity::new(4, 2).expect("4+2"),
                blocks: List::new(&blocks),
            },
        })
        .collect();
    let response = ShardResponse::FetchSpans(FetchSpansResp {
        head: FetchSpansRespHead { next_offset: U64::new(16 << 20) },
        spans: List::new(&spans),
    });
    bench_datagram!(c, "shard/fetch_spans_resp_4x(4+2)", &response, ShardResponse, |r| match r {
        // Walk every block, as a reader does.
        ShardResponse::FetchSpans(resp) => {
            resp.spans
                .iter()
                .map(|span| match span.body {
                    SpanBody::Blocks { blocks, .. } => blocks.iter().count(),
                    _ => 0,
                })
                .sum::<usize>()
                == 24
        }
        _ => false,
    });
}

fn block_messages(c: &mut Criterion) {
    let key = MacKey::new(&SecretKey([0x5a; 16]));
    let block_id = BlockId::compose(EggsTime::now(), 1);
    let mut group = c.benchmark_group("block/write_req");
    group.throughput(Throughput::Elements(1));
    group.bench_function("build_with_certificate", |b| {
        b.iter(|| WriteReq::new(black_box(&key), black_box(block_id), 0xdead_beef, 1 << 20))
    });
    let request = WriteReq::new(&key, block_id, 0xdead_beef, 1 << 20);
    let bytes = zerocopy::IntoBytes::as_bytes(&request).to_vec();
    group.bench_function("decode_and_check_certificate", |b| {
        b.iter(|| match BlockRequest::decode(black_box(&bytes)) {
            Ok(BlockRequest::Write(write)) => assert!(write.certificate_valid(&key)),
            other => panic!("unexpected {other:?}"),
        })
    });
    group.finish();

    let mut group = c.benchmark_group("block/stats_resp");
    group.throughput(Throughput::Elements(1));
    let stats =
        BlockServiceStats { used_bytes: 1 << 40, free_bytes: 1 << 41, used_blocks: 1 << 20, free_blocks: 1 << 30 };
    group.bench_function("build_with_mac", |b| b.iter(|| StatsResp::new(black_box(&key), [7; 8], stats)));
    let response = StatsResp::new(&key, [7; 8], stats);
    let bytes = zerocopy::IntoBytes::as_bytes(&response).to_vec();
    group.bench_function("decode_and_verify", |b| {
        b.iter(|| {
            let decoded = <StatsResp as zerocopy::FromBytes>::read_from_bytes(black_box(&bytes)).expect("49 bytes");
            assert_eq!(decoded.verify(&key, [7; 8]), Some(stats));
        })
    });
    group.finish();
}

/// Keeps the inode type import honest: create_eden_file is the other hot
/// write-path request, and the cheapest message there is.
fn create_eden_file(c: &mut Criterion) {
    let request = ShardRequest::CreateEdenFile(wire::shard::CreateEdenFileReq { inode_type: InodeType::File });
    bench_datagram!(c, "shard/create_eden_file_req", &request, ShardRequest, |r| matches!(
        r,
        ShardRequest::CreateEdenFile(_)
    ));
}

criterion_group!(benches, resolve, stat, fetch_spans, block_messages, create_eden_file);
criterion_main!(benches);
