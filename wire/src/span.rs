//! Spans: the parity mode, the wire body of a span, how a span's bytes map
//! to data and parity blocks, and the Reed–Solomon coding of those blocks.
//!
//! A span of `S` bytes with parity mode `D+P` has D data blocks and P parity
//! blocks. Data block `i` holds bytes `[i·B, min((i+1)·B, S))` of the span,
//! with `B = ⌈S/D⌉`, so the data blocks' sizes add up to `S` (trailing data
//! blocks may be shorter, even empty). For coding, every data block is
//! zero-padded to the shard size `B'` = B rounded up to a multiple of 64
//! (reed-solomon-simd needs an even size; 64 keeps its SIMD loops whole), and
//! each parity block is `B'` bytes. With D = 1 the "parity" blocks are plain
//! copies (mirroring), `S` bytes each.

use core::fmt;
use core::ops::Range;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::codec::{Decode, DecodeError, Encode, List, Payload, Reader, Writer};
use crate::crc::crc32c_combine;
use crate::limits::{BLOCK_SIZE_BYTES_MAX, INLINE_SPAN_BYTES_MAX, SPAN_BLOCKS_MAX};

/// Storage class of inline spans: the bytes live in the metadata.
pub const STORAGE_CLASS_INLINE: u8 = 0;
/// Storage class of zero-fill spans: `size` zero bytes, no payload.
pub const STORAGE_CLASS_ZERO_FILL: u8 = 1;
/// The first storage class of block spans; block services use 2..=255.
pub const STORAGE_CLASS_BLOCKS_MIN: u8 = 2;

/// Shard size granularity for Reed–Solomon coding.
pub const RS_SHARD_ALIGN_BYTES: u64 = 64;
// Rounding a data block of at most the block size limit up to the alignment
// never takes a parity block over the limit, so a policy valid by its data
// block size (`Policy`) is always laid out by `SpanLayout::new`.
const _: () = assert!((BLOCK_SIZE_BYTES_MAX as u64).is_multiple_of(RS_SHARD_ALIGN_BYTES));

/// Parity mode: low nibble D data blocks, high nibble P parity blocks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(transparent)]
pub struct Parity(pub u8);

crate::fixed_wire!(Parity);

impl Parity {
    /// Blockless spans (inline and zero-fill).
    pub const NONE: Parity = Parity(0);

    /// `None` unless 1 ≤ D, D + P ≤ 16.
    pub const fn new(data_blocks: u8, parity_blocks: u8) -> Option<Self> {
        if data_blocks == 0
            || data_blocks > 15
            || parity_blocks > 15
            || data_blocks as usize + parity_blocks as usize > SPAN_BLOCKS_MAX
        {
            return None;
        }
        Some(Parity(data_blocks | (parity_blocks << 4)))
    }

    pub const fn data_blocks(self) -> usize {
        (self.0 & 0x0f) as usize
    }

    pub const fn parity_blocks(self) -> usize {
        (self.0 >> 4) as usize
    }

    pub const fn total_blocks(self) -> usize {
        self.data_blocks() + self.parity_blocks()
    }

    /// D = 1: every block is a full copy.
    pub const fn is_mirroring(self) -> bool {
        self.data_blocks() == 1
    }

    /// Valid for a block span.
    pub const fn is_valid_for_blocks(self) -> bool {
        self.data_blocks() >= 1 && self.total_blocks() <= SPAN_BLOCKS_MAX
    }
}

impl fmt::Debug for Parity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Parity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.data_blocks(), self.parity_blocks())
    }
}

impl core::str::FromStr for Parity {
    type Err = String;
    /// `"D+P"`, e.g. `"4+2"`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (d, p) = text.split_once('+').ok_or_else(|| format!("parity `{text}` is not D+P"))?;
        let d: u8 = d.trim().parse().map_err(|_| format!("bad data block count in `{text}`"))?;
        let p: u8 = p.trim().parse().map_err(|_| format!("bad parity block count in `{text}`"))?;
        Parity::new(d, p).ok_or_else(|| format!("parity `{text}` needs 1 ≤ D and D + P ≤ {SPAN_BLOCKS_MAX}"))
    }
}

/// Inline span bytes.
pub type InlineBytes<'a> = Payload<'a, INLINE_SPAN_BYTES_MAX>;

/// The storage-class-dependent part of a span on the wire. The storage class
/// byte is the tag: 0 inline (u16-prefixed bytes), 1 zero-fill (nothing),
/// ≥ 2 blocks (parity mode, then a list of exactly D+P `B`).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum SpanBody<'a, B: Encode + Decode<'a> + Clone> {
    Inline(InlineBytes<'a>),
    ZeroFill,
    Blocks { storage_class: u8, parity: Parity, blocks: List<'a, B> },
}

impl<'a, B: Encode + Decode<'a> + Clone> SpanBody<'a, B> {
    pub fn storage_class(&self) -> u8 {
        match self {
            SpanBody::Inline(_) => STORAGE_CLASS_INLINE,
            SpanBody::ZeroFill => STORAGE_CLASS_ZERO_FILL,
            SpanBody::Blocks { storage_class, .. } => *storage_class,
        }
    }

    pub fn parity(&self) -> Parity {
        match self {
            SpanBody::Blocks { parity, .. } => *parity,
            _ => Parity::NONE,
        }
    }
}

impl<'a, B: Encode + Decode<'a> + Clone> Encode for SpanBody<'a, B> {
    fn encoded_len(&self) -> usize {
        1 + match self {
            SpanBody::Inline(bytes) => bytes.encoded_len(),
            SpanBody::ZeroFill => 0,
            SpanBody::Blocks { blocks, .. } => 1 + blocks.encoded_len(),
        }
    }
    fn encode(&self, writer: &mut Writer<'_>) {
        writer.put_u8(self.storage_class());
        match self {
            SpanBody::Inline(bytes) => bytes.encode(writer),
            SpanBody::ZeroFill => {}
            SpanBody::Blocks { parity, blocks, .. } => {
                parity.encode(writer);
                blocks.encode(writer);
            }
        }
    }
}

impl<'a, B: Encode + Decode<'a> + Clone> Decode<'a> for SpanBody<'a, B> {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            STORAGE_CLASS_INLINE => Ok(SpanBody::Inline(InlineBytes::decode(reader)?)),
            STORAGE_CLASS_ZERO_FILL => Ok(SpanBody::ZeroFill),
            storage_class => {
                let parity = Parity::decode(reader)?;
                if !parity.is_valid_for_blocks() {
                    return Err(DecodeError::InvalidField("parity mode"));
                }
                let blocks = List::decode(reader)?;
                if blocks.len() != parity.total_blocks() {
                    return Err(DecodeError::InvalidField("block count ≠ D+P"));
                }
                Ok(SpanBody::Blocks { storage_class, parity, blocks })
            }
        }
    }
}

/// Why a span cannot be laid out or coded.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum SpanError {
    #[error("span size {0} is out of range for parity {1}")]
    BadSize(u64, Parity),
    #[error("parity mode {0} is not valid for blocks")]
    BadParity(Parity),
    #[error("block {index} has {got} bytes, expected {expected}")]
    BadBlockSize { index: usize, got: usize, expected: usize },
    #[error("only {available} of the {needed} blocks needed are available")]
    NotEnoughBlocks { available: usize, needed: usize },
    #[error("Reed–Solomon: {0}")]
    ReedSolomon(String),
}

/// How a span of `span_size` bytes maps onto its blocks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpanLayout {
    pub span_size: u64,
    pub parity: Parity,
    /// B = ⌈S/D⌉, the size of the largest data block.
    pub data_block_size: u64,
    /// B' (Reed–Solomon) or S (mirroring): the size of each parity block.
    pub parity_block_size: u64,
}

impl SpanLayout {
    pub fn new(span_size: u64, parity: Parity) -> Result<Self, SpanError> {
        if !parity.is_valid_for_blocks() {
            return Err(SpanError::BadParity(parity));
        }
        let d = parity.data_blocks() as u64;
        let data_block_size = span_size.div_ceil(d);
        let parity_block_size = if parity.is_mirroring() {
            span_size
        } else {
            data_block_size.div_ceil(RS_SHARD_ALIGN_BYTES) * RS_SHARD_ALIGN_BYTES
        };
        if span_size == 0 || parity_block_size > BLOCK_SIZE_BYTES_MAX as u64 {
            return Err(SpanError::BadSize(span_size, parity));
        }
        Ok(Self { span_size, parity, data_block_size, parity_block_size })
    }

    /// The span bytes held by data block `index` (< D).
    pub fn data_block_range(&self, index: usize) -> Range<u64> {
        let start = (index as u64 * self.data_block_size).min(self.span_size);
        let end = ((index as u64 + 1) * self.data_block_size).min(self.span_size);
        start..end
    }

    /// Size of block `index` (< D+P): data blocks first, then parity.
    pub fn block_size(&self, index: usize) -> u64 {
        if index < self.parity.data_blocks() {
            let range = self.data_block_range(index);
            range.end - range.start
        } else {
            self.parity_block_size
        }
    }

    /// The span's CRC from its data blocks' CRCs (in order).
    pub fn span_crc(&self, data_block_crcs: &[u32]) -> u32 {
        let mut crc = 0u32;
        for (index, block_crc) in data_block_crcs.iter().enumerate().take(self.parity.data_blocks()) {
            crc = crc32c_combine(crc, *block_crc, self.block_size(index));
        }
        crc
    }

    /// Computes the parity blocks of `span` (all S bytes) into `parity_out`
    /// (P buffers, each resized to the parity block size).
    pub fn encode_parity(&self, span: &[u8], parity_out: &mut [Vec<u8>]) -> Result<(), SpanError> {
        let p = self.parity.parity_blocks();
        if span.len() as u64 != self.span_size {
            return Err(SpanError::BadBlockSize { index: 0, got: span.len(), expected: self.span_size as usize });
        }
        if parity_out.len() != p {
            return Err(SpanError::NotEnoughBlocks { available: parity_out.len(), needed: p });
        }
        if p == 0 {
            return Ok(());
        }
        if self.parity.is_mirroring() {
            for copy in parity_out.iter_mut() {
                copy.clear();
                copy.extend_from_slice(span);
            }
            return Ok(());
        }
        let shard = self.parity_block_size as usize;
        let mut encoder =
            reed_solomon_simd::ReedSolomonEncoder::new(self.parity.data_blocks(), p, shard).map_err(rs_error)?;
        let mut padded = Vec::new();
        for index in 0..self.parity.data_blocks() {
            let range = self.data_block_range(index);
            let block = &span[range.start as usize..range.end as usize];
            encoder.add_original_shard(pad(block, shard, &mut padded)).map_err(rs_error)?;
        }
        let result = encoder.encode().map_err(rs_error)?;
        for (out, recovery) in parity_out.iter_mut().zip(result.recovery_iter()) {
            out.clear();
            out.extend_from_slice(recovery);
        }
        Ok(())
    }

    /// Fills in the missing data blocks of `blocks` (D+P entries, data first;
    /// `None` = unavailable) from any D available ones. Present blocks must
    /// have their exact sizes.
    pub fn reconstruct(&self, blocks: &mut [Option<Vec<u8>>]) -> Result<(), SpanError> {
        let d = self.parity.data_blocks();
        let total = self.parity.total_blocks();
        if blocks.len() != total {
            return Err(SpanError::NotEnoughBlocks { available: blocks.len(), needed: total });
        }
        for (index, block) in blocks.iter().enumerate() {
            if let Some(block) = block
                && block.len() as u64 != self.block_size(index)
            {
                return Err(SpanError::BadBlockSize {
                    index,
                    got: block.len(),
                    expected: self.block_size(index) as usize,
                });
            }
        }
        let available = blocks.iter().filter(|b| b.is_some()).count();
        if available < d {
            return Err(SpanError::NotEnoughBlocks { available, needed: d });
        }
        if blocks[..d].iter().all(Option::is_some) {
            return Ok(());
        }
        if self.parity.is_mirroring() {
            let copy = blocks.iter().flatten().next().cloned();
            blocks[0] = copy;
            return Ok(());
        }
        let shard = self.parity_block_size as usize;
        let mut decoder = reed_solomon_simd::ReedSolomonDecoder::new(d, total - d, shard).map_err(rs_error)?;
        let mut padded = Vec::new();
        for (index, block) in blocks.iter().enumerate() {
            let Some(block) = block else { continue };
            if index < d {
                decoder.add_original_shard(index, pad(block, shard, &mut padded)).map_err(rs_error)?;
            } else {
                decoder.add_recovery_shard(index - d, block).map_err(rs_error)?;
            }
        }
        let result = decoder.decode().map_err(rs_error)?;
        for (index, restored) in result.restored_original_iter() {
            let size = self.block_size(index) as usize;
            blocks[index] = Some(restored[..size].to_vec());
        }
        Ok(())
    }
}

/// `block` zero-padded to `shard` bytes, copying only when it is short.
fn pad<'b>(block: &'b [u8], shard: usize, scratch: &'b mut Vec<u8>) -> &'b [u8] {
    if block.len() == shard {
        return block;
    }
    scratch.clear();
    scratch.extend_from_slice(block);
    scratch.resize(shard, 0);
    scratch
}

fn rs_error(error: reed_solomon_simd::Error) -> SpanError {
    SpanError::ReedSolomon(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crc::crc32c;

    fn span_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn blocks_of(layout: &SpanLayout, span: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut parity = vec![Vec::new(); layout.parity.parity_blocks()];
        layout.encode_parity(span, &mut parity).unwrap();
        let mut blocks: Vec<Option<Vec<u8>>> = (0..layout.parity.data_blocks())
            .map(|i| {
                let r = layout.data_block_range(i);
                Some(span[r.start as usize..r.end as usize].to_vec())
            })
            .collect();
        blocks.extend(parity.into_iter().map(Some));
        blocks
    }

    #[test]
    fn parity_nibbles() {
        let parity = Parity::new(4, 2).unwrap();
        assert_eq!(parity.0, 0x24);
        assert_eq!(parity.to_string(), "4+2");
        assert_eq!("10+4".parse::<Parity>().unwrap(), Parity::new(10, 4).unwrap());
        assert!(Parity::new(0, 2).is_none());
        assert!(Parity::new(15, 2).is_none());
        assert!("4-2".parse::<Parity>().is_err());
    }

    #[test]
    fn data_blocks_cover_the_span_exactly() {
        for (size, d) in [(1u64, 4u8), (10, 3), (4096, 4), (1_000_001, 10), (5, 8)] {
            let layout = SpanLayout::new(size, Parity::new(d, 2).unwrap()).unwrap();
            let total: u64 = (0..d as usize).map(|i| layout.block_size(i)).sum();
            assert_eq!(total, size);
            assert!(layout.parity_block_size.is_multiple_of(RS_SHARD_ALIGN_BYTES));
        }
    }

    #[test]
    fn any_d_blocks_rebuild_the_span() {
        for (size, d, p) in [(1_000_003usize, 4u8, 2u8), (333, 8, 3), (64 * 10, 10, 4), (7, 3, 2)] {
            let layout = SpanLayout::new(size as u64, Parity::new(d, p).unwrap()).unwrap();
            let span = span_bytes(size);
            let full = blocks_of(&layout, &span);
            // Lose the first P data blocks (the worst case for data).
            let mut damaged = full.clone();
            for block in damaged.iter_mut().take(p as usize) {
                *block = None;
            }
            layout.reconstruct(&mut damaged).unwrap();
            assert_eq!(damaged[..d as usize], full[..d as usize]);
            // One more loss is too many.
            let mut hopeless = full.clone();
            for block in hopeless.iter_mut().take(p as usize + 1) {
                *block = None;
            }
            assert!(matches!(layout.reconstruct(&mut hopeless), Err(SpanError::NotEnoughBlocks { .. })));
        }
    }

    #[test]
    fn mirroring_copies() {
        let layout = SpanLayout::new(6, Parity::new(1, 2).unwrap()).unwrap();
        let mut blocks = blocks_of(&layout, b" world");
        assert_eq!(blocks[2].as_deref(), Some(&b" world"[..]));
        blocks[0] = None;
        blocks[1] = None;
        layout.reconstruct(&mut blocks).unwrap();
        assert_eq!(blocks[0].as_deref(), Some(&b" world"[..]));
    }

    #[test]
    fn span_crc_combines_block_crcs() {
        let layout = SpanLayout::new(1000, Parity::new(3, 1).unwrap()).unwrap();
        let span = span_bytes(1000);
        let crcs: Vec<u32> = (0..3)
            .map(|i| {
                let r = layout.data_block_range(i);
                crc32c(&span[r.start as usize..r.end as usize])
            })
            .collect();
        assert_eq!(layout.span_crc(&crcs), crc32c(&span));
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(SpanLayout::new(0, Parity::new(4, 2).unwrap()).is_err());
        assert!(SpanLayout::new(1 << 40, Parity::new(4, 2).unwrap()).is_err());
        assert!(SpanLayout::new(10, Parity::NONE).is_err());
    }
}
