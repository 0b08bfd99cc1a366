//! One missing data block rebuilt from one parity block, without a
//! Reed–Solomon decode (issue 11, the degraded read).
//!
//! `reed_solomon_simd` codes over GF(2^16): each 64-byte chunk of a shard
//! holds 32 symbols, their low bytes in the chunk's first 32 bytes and
//! their high bytes in the last 32, and a parity shard's symbol at one
//! position is a linear combination of the data shards' symbols at the
//! same position: `P_j = Σ c_ji · D_i`. So a missing `D_m` is
//! `c_jm⁻¹ · (P_j ⊕ Σ_{i≠m} c_ji · D_i)`: D − 1 multiplies by a constant
//! and one for the result, with one block fewer on the wire than the XOR
//! of every parity block needs (the read path's other shortcut).
//!
//! The arithmetic is the library's own ([`reed_solomon_simd::engine`]:
//! its engine's multiply by a constant and XOR over 64-byte chunks, with
//! the SIMD it picks for this CPU); this module only finds the constants
//! `c_ji` (one encode of a unit symbol per data shard, as logarithms in
//! the library's tables) and checks, once per code, that the linear model
//! gives the library's own parity for random data. The work runs in
//! [`PASS_BYTES`] pieces, so each source's piece is multiplied and added
//! while the result is in the cache, and the CRC is taken as each piece
//! is made.
//!
//! Nothing here is trusted: the read path checks each block rebuilt this
//! way against the CRC it was written with, undoes the rebuild (the same
//! constants give the parity block back) and decodes with the library
//! when it does not match, so a different encoder only costs the shortcut.

use std::sync::{Arc, Mutex, OnceLock};

use reed_solomon_simd::engine::{DefaultEngine, Engine, GF_MODULUS, GfElement, tables, utils};

/// Bytes of one chunk of 32 symbols (low bytes, then high bytes).
pub const CHUNK_BYTES: usize = 64;
const SYMBOLS_PER_CHUNK: usize = CHUNK_BYTES / 2;
/// Bytes of one piece of the work: a source's piece and the result's stay
/// in L1/L2 while the piece is made.
const PASS_BYTES: usize = 16 << 10;
const PASS_CHUNKS: usize = PASS_BYTES / CHUNK_BYTES;
const _: () = assert!(PASS_BYTES.is_multiple_of(CHUNK_BYTES));

/// A multiplier: the logarithm of a non-zero constant, or zero itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Factor {
    Zero,
    Log(GfElement),
}

impl Factor {
    fn inverse(self) -> Option<Factor> {
        match self {
            Factor::Zero => None,
            Factor::Log(log) => Some(Factor::Log((GF_MODULUS - log) % GF_MODULUS)),
        }
    }

    /// `chunks *= self`.
    fn apply(self, chunks: &mut [[u8; CHUNK_BYTES]]) {
        match self {
            Factor::Zero => chunks.iter_mut().for_each(|chunk| chunk.fill(0)),
            Factor::Log(log) => engine().mul(chunks, log),
        }
    }
}

fn engine() -> &'static DefaultEngine {
    static ENGINE: OnceLock<DefaultEngine> = OnceLock::new();
    ENGINE.get_or_init(DefaultEngine::new)
}

#[derive(Debug)]
pub struct SingleErasure {
    missing: usize,
    /// `c_jm` of the missing block, its inverse, and `(i, c_ji)` for every
    /// other data block.
    missing_factor: Factor,
    to_missing: Factor,
    others: Vec<(usize, Factor)>,
}

impl SingleErasure {
    /// The plan for data block `missing` of D+P, from parity block
    /// `parity_index` (0-based among the parity blocks); kept per
    /// combination. `None` when the library cannot encode D+P, the
    /// missing block's constant is zero, or the model does not give the
    /// library's parity (the caller decodes instead).
    pub fn plan(data_blocks: usize, parity_blocks: usize, parity_index: usize, missing: usize) -> Option<Arc<Self>> {
        type Key = (usize, usize, usize, usize);
        static KNOWN: Mutex<Vec<(Key, Option<Arc<SingleErasure>>)>> = Mutex::new(Vec::new());
        let key = (data_blocks, parity_blocks, parity_index, missing);
        let mut known = KNOWN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, plan)) = known.iter().find(|(k, _)| *k == key) {
            return plan.clone();
        }
        let plan = Self::probe(data_blocks, parity_blocks, parity_index, missing).map(Arc::new);
        known.push((key, plan.clone()));
        plan
    }

    fn probe(d: usize, p: usize, parity_index: usize, missing: usize) -> Option<Self> {
        if missing >= d || parity_index >= p {
            return None;
        }
        let factors = factors(d, p, parity_index)?;
        if !model_holds(d, p, parity_index, &factors) {
            return None;
        }
        let missing_factor = factors[missing];
        let to_missing = missing_factor.inverse()?;
        let others = (0..d).filter(|&index| index != missing).map(|index| (index, factors[index])).collect();
        Some(Self { missing, missing_factor, to_missing, others })
    }

    /// The data blocks (by index) the rebuild reads.
    pub fn sources(&self) -> impl Iterator<Item = usize> + '_ {
        self.others.iter().map(|(index, _)| *index)
    }

    /// `place` holds the parity block (whole chunks); afterwards it holds
    /// the missing data block (its full shard: the caller truncates).
    /// `data` gives the other data blocks by index (a shorter one is
    /// zero-padded). Returns the CRC32C of `place`'s first `crc_bytes`,
    /// taken piece by piece as they are made, while they are in the cache.
    pub fn rebuild<'a>(&self, place: &mut [u8], data: impl Fn(usize) -> &'a [u8], crc_bytes: usize) -> u32 {
        combine(place, None, &self.sources_with(data), Some(self.to_missing), crc_bytes)
    }

    /// Undoes [`Self::rebuild`]: `place` holds the parity block again.
    pub fn undo<'a>(&self, place: &mut [u8], data: impl Fn(usize) -> &'a [u8]) {
        combine(place, Some(self.missing_factor), &self.sources_with(data), None, 0);
    }

    fn sources_with<'a>(&self, data: impl Fn(usize) -> &'a [u8]) -> Vec<(&'a [u8], Factor)> {
        debug_assert!(self.others.iter().all(|(index, _)| *index != self.missing));
        self.others.iter().map(|(index, factor)| (data(*index), *factor)).collect()
    }
}

/// `c_ji` for parity shard `parity_index`, by encoding the unit symbol
/// at position 0 of each data shard alone: `P_j = c_ji · 1`.
fn factors(d: usize, p: usize, parity_index: usize) -> Option<Vec<Factor>> {
    let log = &tables::get_exp_log().log;
    let unit_log = log[1];
    let mut factors = Vec::with_capacity(d);
    for shard in 0..d {
        let mut data = vec![vec![0u8; CHUNK_BYTES]; d];
        data[shard][0] = 1;
        let parity = reed_solomon_simd::encode(d, p, &data).ok()?;
        let out = parity.get(parity_index).filter(|out| out.len() == CHUNK_BYTES)?;
        let value = u16::from(out[0]) | u16::from(out[SYMBOLS_PER_CHUNK]) << 8;
        factors.push(if value == 0 {
            Factor::Zero
        } else {
            Factor::Log(
                ((u32::from(log[usize::from(value)]) + u32::from(GF_MODULUS) - u32::from(unit_log))
                    % u32::from(GF_MODULUS)) as GfElement,
            )
        });
    }
    Some(factors)
}

/// Whether `P_j = Σ c_ji · D_i` gives the library's own parity shard for
/// pseudo-random data (a few chunks, every symbol position).
fn model_holds(d: usize, p: usize, parity_index: usize, factors: &[Factor]) -> bool {
    let chunks = 4;
    let data = probe_shards(d, chunks * CHUNK_BYTES);
    let Ok(parity) = reed_solomon_simd::encode(d, p, &data) else { return false };
    let Some(expected) = parity.get(parity_index) else { return false };
    let mut sum = vec![[0u8; CHUNK_BYTES]; chunks];
    let sources: Vec<(&[u8], Factor)> = data.iter().map(|shard| &shard[..]).zip(factors.iter().copied()).collect();
    let bytes = sum.as_flattened_mut();
    combine(bytes, None, &sources, None, 0);
    *bytes == expected[..]
}

/// `count` shards of `len` pseudo-random bytes (xorshift64, always the
/// same): what a probe of the library's code encodes.
pub(crate) fn probe_shards(count: usize, len: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..count)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect()
}

/// `out = after · (before · out ⊕ Σ factor · source)` (`out.len()` a
/// multiple of [`CHUNK_BYTES`]; a source shorter than `out` counts as
/// zero-padded, a longer one is cut), piece by piece; the CRC32C of the
/// first `crc_bytes` of the result.
fn combine(
    out: &mut [u8],
    before: Option<Factor>,
    sources: &[(&[u8], Factor)],
    after: Option<Factor>,
    crc_bytes: usize,
) -> u32 {
    assert!(out.len().is_multiple_of(CHUNK_BYTES), "a shard is whole chunks");
    let mut scratch = vec![[0u8; CHUNK_BYTES]; PASS_CHUNKS];
    let mut crc = 0u32;
    let mut at = 0;
    while at < out.len() {
        let end = (at + PASS_BYTES).min(out.len());
        let (piece, _) = out[at..end].as_chunks_mut::<CHUNK_BYTES>();
        if let Some(factor) = before {
            factor.apply(piece);
        }
        for (source, factor) in sources {
            if *factor == Factor::Zero || source.len() <= at {
                continue;
            }
            let product = &mut scratch[..piece.len()];
            let available = source.len().min(end) - at;
            let bytes = product.as_flattened_mut();
            bytes[..available].copy_from_slice(&source[at..at + available]);
            bytes[available..].fill(0);
            factor.apply(product);
            utils::xor(piece, product);
        }
        if let Some(factor) = after {
            factor.apply(piece);
        }
        if at < crc_bytes {
            crc = wire::crc::crc32c_append(crc, &out[at..end.min(crc_bytes)]);
        }
        at = end;
    }
    crc
}

/// Whether the library multiplies with SIMD on this CPU: the read path
/// prefers the one-parity rebuild only then (without SIMD a multiply
/// costs more than fetching every parity block and XORing).
pub fn fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") || std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testsupport::test_bytes;

    /// Every missing block of several codes, from every parity block, over
    /// a shard of more than one piece with a short last data block: the
    /// rebuild is the block (and its CRC), the undo gives the parity block
    /// back.
    #[test]
    fn one_parity_block_rebuilds_any_one_data_block() {
        for (d, p) in [(4, 2), (2, 1), (6, 3), (10, 4), (3, 5)] {
            let shard = PASS_BYTES + 64 * 97;
            let mut data: Vec<Vec<u8>> = (0..d).map(|i| test_bytes(shard, 7 + i as u64)).collect();
            // The last data block is short (zero-padded for the encoder),
            // ending in the second piece.
            let short = shard - 64 * 3 - 10;
            data[d - 1][short..].fill(0);
            let parity = reed_solomon_simd::encode(d, p, &data).expect("encode");
            let lengths: Vec<usize> = (0..d).map(|i| if i == d - 1 { short } else { shard }).collect();
            for missing in 0..d {
                for (parity_index, parity_block) in parity.iter().enumerate() {
                    let plan = SingleErasure::plan(d, p, parity_index, missing).expect("plan");
                    assert!(plan.sources().all(|index| index != missing));
                    assert_eq!(plan.sources().count(), d - 1);
                    let mut place = parity_block.clone();
                    let block = |index: usize| &data[index][..lengths[index]];
                    let crc = plan.rebuild(&mut place, block, lengths[missing]);
                    assert_eq!(&place[..lengths[missing]], &data[missing][..lengths[missing]], "{d}+{p} m{missing}");
                    assert_eq!(crc, wire::crc::crc32c(&data[missing][..lengths[missing]]));
                    plan.undo(&mut place, block);
                    assert_eq!(&place, parity_block, "undo {d}+{p} m{missing} p{parity_index}");
                }
            }
        }
        assert!(SingleErasure::plan(4, 2, 2, 0).is_none() && SingleErasure::plan(4, 2, 0, 4).is_none());
    }

    /// The model check refuses constants that do not give the library's
    /// parity: one wrong constant is caught.
    #[test]
    fn a_wrong_constant_fails_the_model_check() {
        let mut factors = factors(4, 2, 0).expect("factors");
        assert!(model_holds(4, 2, 0, &factors));
        factors[2] = match factors[2] {
            Factor::Log(log) => Factor::Log((log + 1) % GF_MODULUS),
            Factor::Zero => Factor::Log(0),
        };
        assert!(!model_holds(4, 2, 0, &factors));
    }
}
