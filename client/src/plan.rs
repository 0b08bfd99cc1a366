//! Write and read planning: plain decisions over bytes and metadata, no I/O.
//!
//! - Writing: [`WritePolicy`] (storage class, parity, span size) decides how
//!   the input is cut into spans; [`encode_span`] turns one span's bytes into
//!   an [`EncodedSpan`]: inline, zero-fill, or blocks (data blocks borrowed
//!   from the span buffer, parity computed with Reed–Solomon, or none extra
//!   for mirroring, where every block is the whole span). Span and parity
//!   bytes are shared [`Bytes`]; [`encode_span_pooled`] takes the parity
//!   buffers from a [`BufferPool`], so a long write reuses a few aligned
//!   buffers instead of faulting in fresh memory for every span. The
//!   parity is `erasure::ParityEncoding`'s (the library's code, computed
//!   straight from the span's data blocks, every block's CRC taken in the
//!   same pass: 0.24–0.78× the library's encode plus the CRC passes); the
//!   thread's Reed–Solomon encoder (reset per span) only encodes a code
//!   the model does not hold for.
//! - Reading: [`BlockChoice`] decides which blocks of a span to fetch first
//!   and which to try next after failures, from the block flags the shard
//!   reported.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use wire::crc::{crc32c, crc32c_zeros};
use wire::limits::INLINE_SPAN_BYTES_MAX;
use wire::policy::Policy;
use wire::shuckle::flags;
use wire::span::{Parity, STORAGE_CLASS_BLOCKS_MIN, SpanError, SpanLayout};

use crate::erasure::ParityEncoding;

/// Spans at most this long are stored inline in the metadata (the wire
/// limit; comfortably above the 255 bytes the issue requires).
pub const INLINE_THRESHOLD_BYTES: usize = INLINE_SPAN_BYTES_MAX;

/// The policy used when no directory up to the root sets one: mirrored on
/// two block services of storage class 2, 4 MiB spans. Redundant, and needs
/// only two block services.
pub const DEFAULT_POLICY: WritePolicy =
    WritePolicy { storage_class: STORAGE_CLASS_BLOCKS_MIN, parity: Parity(0x11), span_size_bytes: 4 << 20 };

/// How a file is written: what `wire::policy::Policy` says, possibly
/// overridden on the command line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WritePolicy {
    pub storage_class: u8,
    pub parity: Parity,
    pub span_size_bytes: u32,
}

impl From<Policy> for WritePolicy {
    fn from(policy: Policy) -> Self {
        Self { storage_class: policy.storage_class, parity: policy.parity, span_size_bytes: policy.span_size_bytes }
    }
}

impl WritePolicy {
    /// Checks the combination (the same rules as a policy blob).
    pub fn validate(self) -> Result<Self, String> {
        Policy::new(self.storage_class, self.parity, self.span_size_bytes).map(Self::from).ok_or_else(|| {
            format!(
                "invalid policy: storage class {} (≥ {STORAGE_CLASS_BLOCKS_MIN}), parity {}, span size {} bytes",
                self.storage_class, self.parity, self.span_size_bytes
            )
        })
    }

    /// The policy blob form.
    pub fn to_policy(self) -> Option<Policy> {
        Policy::new(self.storage_class, self.parity, self.span_size_bytes)
    }
}

/// The payload of one span about to be added to an eden file.
#[derive(Clone, Debug)]
pub enum SpanPayload {
    /// Stored in the metadata.
    Inline,
    /// All zeros: stored as its size only.
    ZeroFill,
    /// Stored as D data + P parity blocks.
    Blocks(BlockSpan),
}

/// A span stored as blocks: the layout, the parity blocks and every block's CRC.
#[derive(Clone, Debug)]
pub struct BlockSpan {
    pub storage_class: u8,
    pub layout: SpanLayout,
    /// The P parity blocks (empty for mirroring: each copy is the span).
    pub parity_blocks: Vec<Bytes>,
    /// CRC32C of each of the D+P blocks, in block order.
    pub block_crcs: Vec<u32>,
}

/// One span ready to be written.
#[derive(Clone, Debug)]
pub struct EncodedSpan {
    /// Byte offset of the span in the file.
    pub offset: u64,
    /// The span's bytes (shared with the block writers).
    pub data: Bytes,
    /// CRC32C of the span's bytes.
    pub crc: u32,
    pub payload: SpanPayload,
}

impl EncodedSpan {
    pub fn size(&self) -> u32 {
        u32::try_from(self.data.len()).unwrap_or(u32::MAX)
    }

    /// The bytes of block `index` (data blocks are slices of the span;
    /// mirrors are the whole span).
    pub fn block_bytes(&self, index: usize) -> &[u8] {
        let SpanPayload::Blocks(blocks) = &self.payload else { return &[] };
        let layout = &blocks.layout;
        if layout.parity.is_mirroring() {
            return &self.data;
        }
        if index < layout.parity.data_blocks() {
            let range = layout.data_block_range(index);
            return self.data.get(range.start as usize..range.end as usize).unwrap_or_default();
        }
        blocks.parity_blocks.get(index - layout.parity.data_blocks()).map(|block| &block[..]).unwrap_or_default()
    }

    /// Block `index` as shared bytes: a slice of the span (data blocks,
    /// mirrors) or a parity block; never a copy.
    pub fn shared_block(&self, index: usize) -> Bytes {
        let SpanPayload::Blocks(blocks) = &self.payload else { return Bytes::new() };
        let layout = &blocks.layout;
        if layout.parity.is_mirroring() {
            return self.data.clone();
        }
        let d = layout.parity.data_blocks();
        if index < d {
            let range = layout.data_block_range(index);
            return self.data.slice(range.start as usize..range.end as usize);
        }
        blocks.parity_blocks.get(index - d).cloned().unwrap_or_default()
    }
}

/// Buffers handed out again once every [`Bytes`] made from them is gone
/// (the block writes of a span have finished): a write keeps at most
/// `keep` of them. Fresh ones come from `alloc`, e.g. page-aligned ones,
/// and a reused buffer keeps its start.
#[derive(Clone)]
pub struct BufferPool {
    free: Arc<Mutex<Vec<BytesMut>>>,
    keep: usize,
    alloc: fn(usize) -> BytesMut,
}

impl BufferPool {
    pub fn new(keep: usize, alloc: fn(usize) -> BytesMut) -> Self {
        Self { free: Arc::new(Mutex::new(Vec::new())), keep, alloc }
    }

    /// An empty buffer with room for `size` bytes: a kept one if any fits.
    pub fn take(&self, size: usize) -> BytesMut {
        match self.pop() {
            Some(mut buffer) if buffer.capacity() >= size => {
                buffer.clear();
                buffer
            }
            _ => (self.alloc)(size),
        }
    }

    fn pop(&self) -> Option<BytesMut> {
        self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop()
    }

    /// A buffer of `size` bytes to be overwritten whole: a kept one holds
    /// whatever it held before (no memset: a kept buffer keeps the length it
    /// was shared with, all of it written then), a fresh or shorter one
    /// zeros.
    pub fn take_len(&self, size: usize) -> BytesMut {
        let mut buffer = match self.pop() {
            Some(mut buffer) if buffer.len() >= size => {
                buffer.truncate(size);
                return buffer;
            }
            Some(mut buffer) if buffer.capacity() >= size => {
                buffer.clear();
                buffer
            }
            _ => (self.alloc)(size),
        };
        buffer.resize(size, 0);
        buffer
    }

    /// `buffer` as shared bytes that come back to the pool when dropped.
    pub fn share(&self, buffer: BytesMut) -> Bytes {
        Bytes::from_owner(Pooled { buffer, pool: self.clone() })
    }

    /// Buffers kept now.
    pub fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

struct Pooled {
    buffer: BytesMut,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        let mut free = self.pool.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if free.len() < self.pool.keep {
            free.push(buffer);
        }
    }
}

/// Decides how to store `data` (the bytes at `offset`) and computes what
/// the shard and block services need: inline when small, zero-fill when
/// all zeros, else blocks by `policy`.
pub fn encode_span(offset: u64, data: Vec<u8>, policy: WritePolicy) -> Result<EncodedSpan, SpanError> {
    encode_span_pooled(offset, Bytes::from(data), policy, &BufferPool::new(0, BytesMut::with_capacity))
}

/// [`encode_span`] of shared bytes, its parity blocks in buffers from `parity`.
pub fn encode_span_pooled(
    offset: u64,
    data: Bytes,
    policy: WritePolicy,
    parity: &BufferPool,
) -> Result<EncodedSpan, SpanError> {
    if data.len() <= INLINE_THRESHOLD_BYTES {
        let crc = crc32c(&data);
        return Ok(EncodedSpan { offset, data, crc, payload: SpanPayload::Inline });
    }
    if data.iter().all(|&byte| byte == 0) {
        let crc = crc32c_zeros(data.len() as u64);
        return Ok(EncodedSpan { offset, data, crc, payload: SpanPayload::ZeroFill });
    }
    block_span_pooled(offset, data, policy, parity)
}

/// A span stored in the metadata (`data` must fit [`INLINE_THRESHOLD_BYTES`]).
pub fn inline_span(offset: u64, data: Vec<u8>) -> EncodedSpan {
    let crc = crc32c(&data);
    EncodedSpan { offset, data: Bytes::from(data), crc, payload: SpanPayload::Inline }
}

/// A zero-fill span of `data.len()` bytes (`data` must be all zeros).
pub fn zero_fill_span(offset: u64, data: Vec<u8>) -> EncodedSpan {
    let crc = crc32c_zeros(data.len() as u64);
    EncodedSpan { offset, data: Bytes::from(data), crc, payload: SpanPayload::ZeroFill }
}

/// A span stored as blocks by `policy`: D data blocks (slices of `data`)
/// and P parity blocks (Reed–Solomon, or copies for mirroring).
pub fn block_span(offset: u64, data: Vec<u8>, policy: WritePolicy) -> Result<EncodedSpan, SpanError> {
    block_span_pooled(offset, Bytes::from(data), policy, &BufferPool::new(0, BytesMut::with_capacity))
}

/// The Reed–Solomon parity blocks of `span`, each in a buffer from `pool`,
/// encoded by the thread's encoder (reset, not built anew: its work space
/// is several blocks long).
fn encode_parity(layout: &SpanLayout, span: &[u8], pool: &BufferPool) -> Result<Vec<Bytes>, SpanError> {
    let d = layout.parity.data_blocks();
    let p = layout.parity.parity_blocks();
    let shard = layout.parity_block_size as usize;
    let rs = |error: reed_solomon_simd::Error| SpanError::ReedSolomon(error.to_string());
    thread_local! {
        static ENCODER: RefCell<Option<reed_solomon_simd::ReedSolomonEncoder>> = const { RefCell::new(None) };
    }
    ENCODER.with_borrow_mut(|slot| {
        let encoder = match slot {
            Some(encoder) => {
                encoder.reset(d, p, shard).map_err(rs)?;
                encoder
            }
            None => slot.insert(reed_solomon_simd::ReedSolomonEncoder::new(d, p, shard).map_err(rs)?),
        };
        let mut padded = Vec::new();
        for index in 0..d {
            let range = layout.data_block_range(index);
            let block = &span[range.start as usize..range.end as usize];
            if block.len() == shard {
                encoder.add_original_shard(block).map_err(rs)?;
            } else {
                padded.clear();
                padded.extend_from_slice(block);
                padded.resize(shard, 0);
                encoder.add_original_shard(&padded).map_err(rs)?;
            }
        }
        let result = encoder.encode().map_err(rs)?;
        Ok(result
            .recovery_iter()
            .map(|recovery| {
                let mut buffer = pool.take(shard);
                buffer.extend_from_slice(recovery);
                pool.share(buffer)
            })
            .collect())
    })
}

/// The parity blocks of `span` by `encoding` (straight from the span's
/// bytes: no copy into an encoder), each in a buffer from `pool`, and
/// the CRC32C of every block, taken as the encode passes over it.
fn encode_parity_own(
    encoding: &ParityEncoding,
    layout: &SpanLayout,
    span: &[u8],
    pool: &BufferPool,
) -> (Vec<Bytes>, Vec<u32>) {
    let shard = layout.parity_block_size as usize;
    let data: Vec<&[u8]> = (0..layout.parity.data_blocks())
        .map(|index| {
            let range = layout.data_block_range(index);
            &span[range.start as usize..range.end as usize]
        })
        .collect();
    let mut buffers: Vec<BytesMut> = (0..layout.parity.parity_blocks()).map(|_| pool.take_len(shard)).collect();
    let crcs = {
        let mut outs: Vec<&mut [u8]> = buffers.iter_mut().map(|buffer| &mut buffer[..]).collect();
        encoding.encode(&data, &mut outs)
    };
    (buffers.into_iter().map(|buffer| pool.share(buffer)).collect(), crcs)
}

/// [`block_span`] of shared bytes, its parity blocks in buffers from `parity`.
pub fn block_span_pooled(
    offset: u64,
    data: Bytes,
    policy: WritePolicy,
    parity: &BufferPool,
) -> Result<EncodedSpan, SpanError> {
    let layout = SpanLayout::new(data.len() as u64, policy.parity)?;
    let reed_solomon = !layout.parity.is_mirroring() && layout.parity.parity_blocks() > 0;
    let own = if reed_solomon {
        ParityEncoding::plan(layout.parity.data_blocks(), layout.parity.parity_blocks())
    } else {
        None
    };
    let (parity_blocks, own_crcs) = match own {
        Some(encoding) => {
            let (blocks, crcs) = encode_parity_own(&encoding, &layout, &data, parity);
            (blocks, Some(crcs))
        }
        None if reed_solomon => (encode_parity(&layout, &data, parity)?, None),
        None => (Vec::new(), None),
    };
    let mut span = EncodedSpan {
        offset,
        data,
        crc: 0,
        payload: SpanPayload::Blocks(BlockSpan {
            storage_class: policy.storage_class,
            layout,
            parity_blocks,
            block_crcs: Vec::new(),
        }),
    };
    let total = layout.parity.total_blocks();
    let crcs: Vec<u32> = if let Some(crcs) = own_crcs {
        crcs
    } else if layout.parity.is_mirroring() {
        vec![crc32c(&span.data); total]
    } else {
        (0..total).map(|index| crc32c(span.block_bytes(index))).collect()
    };
    span.crc = layout.span_crc(&crcs);
    if let SpanPayload::Blocks(blocks) = &mut span.payload {
        blocks.block_crcs = crcs;
    }
    Ok(span)
}

/// Which blocks of a span to read, given the flags the shard reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockChoice {
    parity: Parity,
    /// Per block: never to be read (terminal, or no known address).
    excluded: Vec<bool>,
    /// Per block: readable but suspect (stale): tried only when needed.
    suspect: Vec<bool>,
    /// Per block: already tried.
    tried: Vec<bool>,
}

impl BlockChoice {
    /// `block_flags[i]` are the [`flags`] of block i; `address_known[i]`
    /// whether the shard knows where it lives.
    pub fn new(parity: Parity, block_flags: &[u8], address_known: &[bool]) -> Self {
        let total = parity.total_blocks();
        let flag = |index: usize| block_flags.get(index).copied().unwrap_or(flags::UNKNOWN);
        let excluded = (0..total)
            .map(|index| {
                flag(index) & (flags::TERMINAL | flags::UNKNOWN) != 0
                    || !address_known.get(index).copied().unwrap_or(false)
            })
            .collect();
        let suspect = (0..total).map(|index| flag(index) & flags::STALE != 0).collect();
        Self { parity, excluded, suspect, tried: vec![false; total] }
    }

    /// The blocks to fetch next so that, with `good` blocks already in hand,
    /// D blocks could be available: data blocks first (no decoding needed),
    /// healthy before suspect. Marks them tried. Empty when nothing is left
    /// to try.
    pub fn next(&mut self, good: usize) -> Vec<usize> {
        let needed = self.parity.data_blocks().saturating_sub(good);
        let total = self.parity.total_blocks();
        let mut order: Vec<usize> = (0..total).filter(|&index| !self.tried[index] && !self.excluded[index]).collect();
        // Stable: healthy data, healthy parity, suspect data, suspect parity.
        order.sort_by_key(|&index| self.suspect[index]);
        let chosen: Vec<usize> = order.into_iter().take(needed).collect();
        for &index in &chosen {
            self.tried[index] = true;
        }
        chosen
    }

    /// The parity blocks not tried yet, marked tried, when every one of
    /// them is healthy (neither excluded nor suspect); `None` (and nothing
    /// marked) otherwise. A span missing one data block fetches them all
    /// when its parity allows rebuilding that block by XOR (see
    /// `read::xor_rebuilds`): one more block on the wire instead of a
    /// Reed–Solomon decode.
    pub fn take_healthy_parity(&mut self) -> Option<Vec<usize>> {
        let d = self.parity.data_blocks();
        let total = self.parity.total_blocks();
        let untried: Vec<usize> = (d..total).filter(|&index| !self.tried[index]).collect();
        if untried.iter().any(|&index| self.excluded[index] || self.suspect[index]) {
            return None;
        }
        for &index in &untried {
            self.tried[index] = true;
        }
        Some(untried)
    }

    /// True if block `index` was passed over at first (flagged).
    pub fn is_flagged(&self, index: usize) -> bool {
        self.excluded.get(index).copied().unwrap_or(true) || self.suspect.get(index).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::crc::crc32c;

    fn rs_policy(d: u8, p: u8, span: u32) -> WritePolicy {
        WritePolicy { storage_class: 2, parity: Parity::new(d, p).expect("parity"), span_size_bytes: span }
    }

    #[test]
    fn small_spans_are_inline_and_zero_spans_zero_fill() {
        let policy = rs_policy(4, 2, 1 << 20);
        for len in [0usize, 1, 255, INLINE_THRESHOLD_BYTES] {
            let span = encode_span(0, vec![7; len], policy).expect("encode");
            assert!(matches!(span.payload, SpanPayload::Inline), "{len} bytes inline");
            assert_eq!(span.crc, crc32c(&vec![7; len]));
        }
        let zeros = encode_span(10, vec![0; 5000], policy).expect("encode");
        assert!(matches!(zeros.payload, SpanPayload::ZeroFill));
        assert_eq!(zeros.crc, crc32c(&[0; 5000]));
        // Small zero spans are inline (inline wins), as the prototype's test file does with zero-fill only by choice.
        assert!(matches!(encode_span(0, vec![0; 10], policy).expect("encode").payload, SpanPayload::Inline));
    }

    #[test]
    fn reed_solomon_span_blocks_add_up_and_crc_matches() {
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 31 % 251) as u8).collect();
        let span = encode_span(4096, data.clone(), rs_policy(4, 2, 1 << 20)).expect("encode");
        let SpanPayload::Blocks(blocks) = &span.payload else { panic!("blocks expected") };
        assert_eq!(span.crc, crc32c(&data));
        assert_eq!(blocks.block_crcs.len(), 6);
        let mut joined = Vec::new();
        for index in 0..4 {
            assert_eq!(blocks.block_crcs[index], crc32c(span.block_bytes(index)));
            joined.extend_from_slice(span.block_bytes(index));
        }
        assert_eq!(joined, data);
        for index in 4..6 {
            assert_eq!(span.block_bytes(index).len() as u64, blocks.layout.parity_block_size);
        }
        // Lose two blocks and rebuild from the rest.
        let mut available: Vec<Option<Vec<u8>>> = (0..6).map(|i| Some(span.block_bytes(i).to_vec())).collect();
        available[0] = None;
        available[2] = None;
        blocks.layout.reconstruct(&mut available).expect("reconstruct");
        assert_eq!(available[0].as_deref(), Some(span.block_bytes(0)));
        assert_eq!(available[2].as_deref(), Some(span.block_bytes(2)));
    }

    #[test]
    fn mirrored_span_blocks_are_the_whole_span() {
        let data = vec![5u8; 3000];
        let span = encode_span(0, data.clone(), rs_policy(1, 2, 1 << 20)).expect("encode");
        let SpanPayload::Blocks(blocks) = &span.payload else { panic!("blocks expected") };
        for index in 0..3 {
            assert_eq!(span.block_bytes(index), &data[..]);
            assert_eq!(blocks.block_crcs[index], crc32c(&data));
        }
        assert_eq!(span.crc, crc32c(&data));
    }

    #[test]
    fn block_choice_prefers_healthy_data_blocks() {
        let parity = Parity::new(4, 2).expect("parity");
        let known = [true; 6];
        let mut choice = BlockChoice::new(parity, &[0; 6], &known);
        assert_eq!(choice.next(0), vec![0, 1, 2, 3]);
        // Blocks 1 and 3 failed: two more needed, the parity blocks.
        assert_eq!(choice.next(2), vec![4, 5]);
        assert!(choice.next(4).is_empty(), "nothing left to try");
    }

    #[test]
    fn block_choice_skips_terminal_and_defers_stale() {
        let parity = Parity::new(4, 2).expect("parity");
        let mut flags_of = [0u8; 6];
        flags_of[0] = flags::TERMINAL;
        flags_of[1] = flags::STALE;
        let mut known = [true; 6];
        known[5] = false;
        let mut choice = BlockChoice::new(parity, &flags_of, &known);
        assert_eq!(choice.next(0), vec![2, 3, 4, 1]);
        assert!(choice.is_flagged(0) && choice.is_flagged(1) && !choice.is_flagged(2));
        assert!(choice.next(3).is_empty(), "0 terminal, 5 unknown: nothing else");
    }

    #[test]
    fn block_choice_hands_out_the_other_parity_blocks_only_when_all_are_healthy() {
        let parity = Parity::new(4, 2).expect("parity");
        let known = [true; 6];
        let mut flags_of = [0u8; 6];
        flags_of[1] = flags::STALE;
        let mut choice = BlockChoice::new(parity, &flags_of, &known);
        assert_eq!(choice.next(0), vec![0, 2, 3, 4]);
        assert_eq!(choice.take_healthy_parity(), Some(vec![5]));
        assert_eq!(choice.take_healthy_parity(), Some(vec![]), "nothing left untried");
        // A suspect parity block: not fetched along (it may stall).
        flags_of[5] = flags::STALE;
        let mut choice = BlockChoice::new(parity, &flags_of, &known);
        assert_eq!(choice.next(0), vec![0, 2, 3, 4]);
        assert_eq!(choice.take_healthy_parity(), None);
        assert_eq!(choice.next(3), vec![1], "the suspect data block before the suspect parity");
    }

    /// Parity blocks encoded into reused pool buffers, span after span of
    /// different sizes and contents, are exactly what wire's encoder makes,
    /// and the buffers come back to the pool once the spans are dropped.
    #[test]
    fn pooled_parity_is_exact_and_its_buffers_are_reused() {
        let pool = BufferPool::new(4, BytesMut::with_capacity);
        let policy = rs_policy(4, 2, 1 << 20);
        let mut first_parity_start = None;
        for (round, len) in [1 << 20, 300_001, 1 << 20, 4097].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|i| (i * (round + 3) % 253) as u8 + 1).collect();
            let span = encode_span_pooled(64, Bytes::from(data.clone()), policy, &pool).expect("encode");
            let SpanPayload::Blocks(blocks) = &span.payload else { panic!("blocks expected") };
            let mut expected = vec![Vec::new(); 2];
            blocks.layout.encode_parity(&data, &mut expected).expect("wire's encoder");
            for (index, parity) in expected.iter().enumerate() {
                assert!(span.block_bytes(4 + index) == &parity[..], "round {round}: parity {index}");
                assert_eq!(span.shared_block(4 + index), &parity[..]);
                assert_eq!(blocks.block_crcs[4 + index], crc32c(parity));
            }
            assert_eq!(span.crc, crc32c(&data));
            let start = span.block_bytes(4).as_ptr();
            if round == 2 {
                assert!(
                    first_parity_start.is_some_and(|first| first == start || span.block_bytes(5).as_ptr() == first),
                    "reused"
                );
            }
            first_parity_start.get_or_insert(start);
            let shared = span.shared_block(4);
            drop(span);
            assert!(pool.kept() <= 1, "a block still shared keeps its buffer out");
            drop(shared);
            assert_eq!(pool.kept(), 2, "both parity buffers back");
        }
    }

    #[test]
    fn policy_validation() {
        assert!(rs_policy(4, 2, 4 << 20).validate().is_ok());
        assert!(WritePolicy { storage_class: 1, ..rs_policy(4, 2, 4 << 20) }.validate().is_err());
        assert!(DEFAULT_POLICY.validate().is_ok());
    }
}
