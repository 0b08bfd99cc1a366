//! Decoders never allocate: decoded names, payloads and lists are views of
//! the datagram, so a count or length field cannot make a decoder reserve
//! memory beyond the input. A counting global allocator (per thread) checks
//! that decoding — valid, invalid, huge-count — performs zero allocations.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

use common::exercise::cluster_key;
use common::strategies::{shard_request, shard_response};
use wire::block::BlockRequest;
use wire::codec::DecodeError;
use wire::datagram::{self, PROTOCOL_VERSION, SHARD_MAGIC};
use wire::policy::Policy;
use wire::shard::{ShardKind, ShardRequest, ShardResponse};
use wire::shuckle::{RegistrationDatagram, ShuckleResponse};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts allocations of the calling thread.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made by `f` on this thread.
fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn encoded_samples() -> Vec<Vec<u8>> {
    let key = cluster_key();
    let mut runner = TestRunner::deterministic();
    let mut out = Vec::new();
    for &kind in ShardKind::ALL {
        for _ in 0..4 {
            let mut buf = vec![0u8; 1 << 16];
            let request = shard_request(kind).new_tree(&mut runner).unwrap().current();
            let len = datagram::encode(&mut buf, 1, &request, Some(&key)).unwrap();
            out.push(buf[..len].to_vec());
            let response = shard_response(kind).new_tree(&mut runner).unwrap().current();
            let len = datagram::encode(&mut buf, 1, &response, Some(&key)).unwrap();
            out.push(buf[..len].to_vec());
        }
    }
    out
}

#[test]
fn decoding_valid_datagrams_allocates_nothing() {
    let key = cluster_key();
    let samples = encoded_samples();
    for bytes in &samples {
        let allocations = allocations_during(|| {
            let request = datagram::decode::<ShardRequest>(bytes, Some(&key));
            let response = datagram::decode::<ShardResponse>(bytes, Some(&key));
            assert!(request.is_ok() || response.is_ok());
            // Walking the lists decodes elements lazily, in place.
            if let Ok((_, ShardResponse::FetchSpans(resp))) = response {
                for span in resp.spans.iter() {
                    if let wire::span::SpanBody::Blocks { blocks, .. } = span.body {
                        assert_eq!(blocks.iter().count(), blocks.len());
                    }
                }
            }
        });
        assert_eq!(allocations, 0, "decoding {bytes:02x?} allocated");
    }
}

#[test]
fn huge_counts_in_short_datagrams_are_refused_without_allocating() {
    // visit_inodes response: header, next inode, then a u16 count of 65535
    // followed by only two inodes.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&SHARD_MAGIC);
    bytes.push(PROTOCOL_VERSION);
    bytes.extend_from_slice(&7u64.to_le_bytes());
    bytes.push(ShardKind::VisitInodes as u8);
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&u16::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0xaa; 16]);
    let mut result = None;
    let allocations = allocations_during(|| result = Some(datagram::decode::<ShardResponse>(&bytes, None)));
    assert_eq!(allocations, 0);
    assert_eq!(result.unwrap().err(), Some(DecodeError::Truncated));

    // A name length of 255 with 3 bytes behind it.
    let mut bytes = bytes[..13].to_vec();
    bytes[12] = ShardKind::DeleteFile as u8;
    bytes.extend_from_slice(&[1; 8]);
    bytes.extend_from_slice(&[255, b'a', b'b', b'c']);
    let mut result = None;
    let allocations = allocations_during(|| result = Some(datagram::decode::<ShardRequest>(&bytes, None)));
    assert_eq!(allocations, 0);
    assert_eq!(result.unwrap().err(), Some(DecodeError::Truncated));
}

#[test]
fn other_decoders_allocate_nothing() {
    let registration = [[3u8; 16].as_slice(), &[0xa0, 0x0f, 2, 4], b"host"].concat();
    let shuckle = [b"EGK\x01".as_slice(), &[0; 8], &[3], &[0; 8], &[0xff, 0xff], &[0; 40]].concat();
    let allocations = allocations_during(|| {
        assert!(RegistrationDatagram::decode(&registration).is_ok());
        assert!(Policy::decode(&[1, 2, 0x24, 0, 0, 0, 0x40, 0]).is_some());
        assert!(BlockRequest::decode(b"f12345678").is_ok());
        assert!(datagram::decode::<ShuckleResponse>(&shuckle, None).is_err());
    });
    assert_eq!(allocations, 0);
}
