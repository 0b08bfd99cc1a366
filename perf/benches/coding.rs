//! CRC32C and Reed–Solomon, the per-byte costs of every block write and read.
//!
//! CRC32C runs over buffers that fit L1/L2 (64 KiB), L3 (1 MiB) and main
//! memory (16 MiB). Reed–Solomon is timed through `wire::span::SpanLayout`,
//! exactly as the client uses it, on 4 MiB spans: encode computes the P
//! parity blocks; decode rebuilds the span's data after losing P data
//! blocks (the worst case: every lost block must be recomputed).

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use wire::crc::crc32c;
use wire::span::{Parity, SpanLayout};

const SPAN_BYTES: usize = 4 << 20;

/// Incompressible enough, and the same on every run.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    testsupport::test_bytes(len, 1)
}

fn crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for len in [64 << 10, 1 << 20, 16 << 20] {
        let bytes = pseudo_random_bytes(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(format!("{}KiB", len >> 10)), &bytes, |b, bytes| {
            b.iter(|| crc32c(black_box(bytes)))
        });
    }
    group.finish();
}

fn layouts() -> Vec<(Parity, SpanLayout)> {
    [(4u8, 2u8), (8, 3), (10, 4)]
        .into_iter()
        .map(|(d, p)| {
            let parity = Parity::new(d, p).expect("valid parity");
            (parity, SpanLayout::new(SPAN_BYTES as u64, parity).expect("valid layout"))
        })
        .collect()
}

fn data_blocks(layout: &SpanLayout, span: &[u8]) -> Vec<Option<Vec<u8>>> {
    (0..layout.parity.data_blocks())
        .map(|i| {
            let range = layout.data_block_range(i);
            Some(span[range.start as usize..range.end as usize].to_vec())
        })
        .collect()
}

fn rs_encode(c: &mut Criterion) {
    let span = pseudo_random_bytes(SPAN_BYTES);
    let mut group = c.benchmark_group("rs_encode_4MiB_span");
    group.throughput(Throughput::Bytes(SPAN_BYTES as u64));
    for (parity, layout) in layouts() {
        let mut parity_out = vec![Vec::new(); parity.parity_blocks()];
        group.bench_function(parity.to_string(), |b| {
            b.iter(|| layout.encode_parity(black_box(&span), &mut parity_out).expect("encode"))
        });
    }
    group.finish();
}

fn rs_decode(c: &mut Criterion) {
    let span = pseudo_random_bytes(SPAN_BYTES);
    let mut group = c.benchmark_group("rs_decode_4MiB_span_P_lost");
    group.throughput(Throughput::Bytes(SPAN_BYTES as u64));
    for (parity, layout) in layouts() {
        let mut parity_out = vec![Vec::new(); parity.parity_blocks()];
        layout.encode_parity(&span, &mut parity_out).expect("encode");
        let mut full = data_blocks(&layout, &span);
        full.extend(parity_out.into_iter().map(Some));
        let expected: Vec<Option<Vec<u8>>> = full[..parity.data_blocks()].to_vec();
        group.bench_function(parity.to_string(), |b| {
            b.iter_batched_ref(
                || {
                    let mut damaged = full.clone();
                    for block in damaged.iter_mut().take(parity.parity_blocks()) {
                        *block = None;
                    }
                    damaged
                },
                |damaged| layout.reconstruct(black_box(damaged)).expect("reconstruct"),
                criterion::BatchSize::LargeInput,
            )
        });
        // Check once, outside the timing, that the rebuild is right.
        let mut damaged = full.clone();
        for block in damaged.iter_mut().take(parity.parity_blocks()) {
            *block = None;
        }
        layout.reconstruct(&mut damaged).expect("reconstruct");
        assert_eq!(damaged[..parity.data_blocks()], expected[..]);
    }
    group.finish();
}

criterion_group!(benches, crc, rs_encode, rs_decode);
criterion_main!(benches);
