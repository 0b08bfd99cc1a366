//! One missing data block rebuilt from one parity block, without a
//! Reed–Solomon decode (issue 11, the degraded read).
//!
//! `reed_solomon_simd` codes over GF(2^16): each 64-byte chunk of a shard
//! holds 32 symbols, their low bytes in the chunk's first 32 bytes and
//! their high bytes in the last 32, and a parity shard's symbol at one
//! position is a linear combination of the data shards' symbols at the
//! same position: `P_j = Σ c_ji · D_i`. Multiplying by a constant of the
//! field is a GF(2)-linear map of the symbol's 16 bits, a 16×16 bit
//! matrix ([`SymbolMap`]); those matrices are found by encoding one
//! symbol per bit (no knowledge of the library's field representation),
//! so a missing `D_m` is `M_m⁻¹ · (P_j ⊕ Σ_{i≠m} M_i · D_i)`: D maps
//! applied to four blocks, about as cheap as the XOR of every parity
//! block, with one block fewer on the wire than that XOR needs.
//!
//! Nothing here is trusted: the read path checks each block rebuilt this
//! way against the CRC it was written with, undoes the rebuild (the
//! forward maps give the parity block back) and decodes with the library
//! when it does not match, so a different encoder only costs the shortcut.

use std::sync::{Arc, Mutex};

/// Bytes of one chunk of 32 symbols (low bytes, then high bytes).
pub const CHUNK_BYTES: usize = 64;
const SYMBOLS_PER_CHUNK: usize = CHUNK_BYTES / 2;

/// A GF(2)-linear map of 16-bit symbols: `columns[b]` is the image of bit
/// `b`; `tables` the same as nibble lookups for `pshufb` (index
/// `2 * nibble + output byte`, nibble 0 the lowest four bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymbolMap {
    columns: [u16; 16],
    tables: [[u8; 16]; 8],
    /// The same as four 8×8 bit matrices for `gf2p8affineqb`, index
    /// `2 * output byte + input byte`: row `i` (output bit `i`) in byte
    /// `7 - i`, bit `j` set when input bit `j` flips it.
    affine: [u64; 4],
}

impl SymbolMap {
    fn new(columns: [u16; 16]) -> Self {
        let mut tables = [[0u8; 16]; 8];
        for nibble in 0..4 {
            for value in 0..16u16 {
                let image = apply_columns(&columns, value << (4 * nibble));
                tables[2 * nibble][value as usize] = image as u8;
                tables[2 * nibble + 1][value as usize] = (image >> 8) as u8;
            }
        }
        let mut affine = [0u64; 4];
        for (index, matrix) in affine.iter_mut().enumerate() {
            let (output, input) = (index / 2, index % 2);
            for row in 0..8 {
                let bits = (0..8).fold(0u8, |acc, bit| {
                    acc | ((((columns[8 * input + bit] >> (8 * output + row)) & 1) as u8) << bit)
                });
                *matrix |= u64::from(bits) << (8 * (7 - row));
            }
        }
        Self { columns, tables, affine }
    }

    #[cfg(test)]
    fn identity() -> Self {
        Self::new(std::array::from_fn(|bit| 1 << bit))
    }

    /// The image of one symbol.
    pub fn apply(&self, symbol: u16) -> u16 {
        apply_columns(&self.columns, symbol)
    }

    /// `self ∘ inner`.
    fn compose(&self, inner: &SymbolMap) -> SymbolMap {
        SymbolMap::new(std::array::from_fn(|bit| self.apply(inner.columns[bit])))
    }

    /// The inverse map, `None` when the matrix is singular (Gauss–Jordan
    /// over GF(2) on the rows).
    fn inverse(&self) -> Option<SymbolMap> {
        // rows[r]: bit c set when output bit r depends on input bit c;
        // the augmented half starts as the identity.
        let mut rows: [(u16, u16); 16] = std::array::from_fn(|row| {
            let bits = (0..16).fold(0u16, |acc, column| acc | (((self.columns[column] >> row) & 1) << column));
            (bits, 1 << row)
        });
        for column in 0..16 {
            let pivot = (column..16).find(|&row| rows[row].0 >> column & 1 == 1)?;
            rows.swap(column, pivot);
            for row in 0..16 {
                if row != column && rows[row].0 >> column & 1 == 1 {
                    rows[row].0 ^= rows[column].0;
                    rows[row].1 ^= rows[column].1;
                }
            }
        }
        // rows[r].1 is row r of the inverse; turn rows into columns.
        Some(SymbolMap::new(std::array::from_fn(|column| {
            (0..16).fold(0u16, |acc, row| acc | (((rows[row].1 >> column) & 1) << row))
        })))
    }
}

fn apply_columns(columns: &[u16; 16], symbol: u16) -> u16 {
    (0..16).filter(|bit| symbol >> bit & 1 == 1).fold(0, |acc, bit| acc ^ columns[bit])
}

/// How one missing data block is made from one parity block and the other
/// data blocks, and back.
#[derive(Debug)]
pub struct SingleErasure {
    /// Applied to the parity block (the place's first contents).
    parity_map: SymbolMap,
    /// `(data block index, map)` for every data block but the missing one.
    data_maps: Vec<(usize, SymbolMap)>,
    /// The forward maps: the missing block's, then as `data_maps`, to undo.
    missing_forward: SymbolMap,
    data_forward: Vec<(usize, SymbolMap)>,
}

impl SingleErasure {
    /// The plan for data block `missing` of D+P, from parity block
    /// `parity_index` (0-based among the parity blocks); kept per
    /// combination. `None` when the library cannot encode D+P or the
    /// probe does not give an invertible map (the caller decodes instead).
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
        let forward = forward_maps(d, p, parity_index)?;
        let inverse = forward[missing].inverse()?;
        let others = (0..d).filter(|&index| index != missing);
        Some(Self {
            parity_map: inverse,
            data_maps: others.clone().map(|index| (index, inverse.compose(&forward[index]))).collect(),
            missing_forward: forward[missing],
            data_forward: others.map(|index| (index, forward[index])).collect(),
        })
    }

    /// The data blocks (by index) the rebuild reads.
    pub fn sources(&self) -> impl Iterator<Item = usize> + '_ {
        self.data_maps.iter().map(|(index, _)| *index)
    }

    /// `place` holds the parity block; afterwards it holds the missing
    /// data block (its full shard: the caller truncates). `data` gives the
    /// other data blocks by index (a shorter one is zero-padded). Returns
    /// the CRC32C of `place`'s first `crc_bytes`, taken chunk by chunk as
    /// they are made, while they are in the cache.
    pub fn rebuild<'a>(&self, place: &mut [u8], data: impl Fn(usize) -> &'a [u8], crc_bytes: usize) -> u32 {
        let sources: Vec<(&[u8], &SymbolMap)> = self.data_maps.iter().map(|(index, map)| (data(*index), map)).collect();
        map_in_place_checked(place, &self.parity_map, &sources, crc_bytes)
    }

    /// Undoes [`Self::rebuild`]: `place` holds the parity block again.
    pub fn undo<'a>(&self, place: &mut [u8], data: impl Fn(usize) -> &'a [u8]) {
        let sources: Vec<(&[u8], &SymbolMap)> =
            self.data_forward.iter().map(|(index, map)| (data(*index), map)).collect();
        map_in_place_checked(place, &self.missing_forward, &sources, 0);
    }
}

/// `M_i` for parity shard `parity_index`: each data shard alone holds the
/// 16 unit symbols at positions 0..16, so one encode per data shard.
fn forward_maps(d: usize, p: usize, parity_index: usize) -> Option<Vec<SymbolMap>> {
    let mut maps = Vec::with_capacity(d);
    for shard in 0..d {
        let mut data = vec![vec![0u8; CHUNK_BYTES]; d];
        for bit in 0..16 {
            let unit = 1u16 << bit;
            data[shard][bit] = unit as u8;
            data[shard][SYMBOLS_PER_CHUNK + bit] = (unit >> 8) as u8;
        }
        let parity = reed_solomon_simd::encode(d, p, &data).ok()?;
        let out = parity.get(parity_index)?;
        if out.len() != CHUNK_BYTES {
            return None;
        }
        maps.push(SymbolMap::new(std::array::from_fn(|bit| {
            u16::from(out[bit]) | u16::from(out[SYMBOLS_PER_CHUNK + bit]) << 8
        })));
    }
    Some(maps)
}

/// Bytes between CRC updates: small enough to stay in L1/L2 once made.
const PASS_BYTES: usize = 16 << 10;

/// `out = map(out) ⊕ Σ source_map(source)`, symbol by symbol over 64-byte
/// chunks (`out.len()` a multiple of 64; a source shorter than `out`
/// counts as zero-padded, a longer one is cut); the CRC32C of the first
/// `crc_bytes` of the result.
pub fn map_in_place_checked(out: &mut [u8], map: &SymbolMap, sources: &[(&[u8], &SymbolMap)], crc_bytes: usize) -> u32 {
    assert!(out.len().is_multiple_of(CHUNK_BYTES), "a shard is whole chunks");
    let mut crc = 0u32;
    let mut at = 0;
    while at < out.len() {
        let end = (at + PASS_BYTES).min(out.len());
        map_range(out, at, end, map, sources);
        if at < crc_bytes {
            crc = wire::crc::crc32c_append(crc, &out[at..end.min(crc_bytes)]);
        }
        at = end;
    }
    crc
}

/// [`map_in_place_checked`]'s work on `out[at..end]` (chunk-aligned).
fn map_range(out: &mut [u8], at: usize, end: usize, map: &SymbolMap, sources: &[(&[u8], &SymbolMap)]) {
    // Sources whole over the range go through the fast kernel; a source
    // that ends inside it is applied chunk by chunk from a padded copy.
    let whole: Vec<(&[u8], &SymbolMap)> =
        sources.iter().filter(|(source, _)| source.len() >= end).map(|(source, m)| (&source[at..end], *m)).collect();
    kernel(&mut out[at..end], map, &whole);
    for (source, source_map) in sources.iter().filter(|(source, _)| source.len() < end) {
        let mut chunk = at;
        while chunk < end && chunk < source.len() {
            let mut padded = [0u8; CHUNK_BYTES];
            let available = (source.len() - chunk).min(CHUNK_BYTES);
            padded[..available].copy_from_slice(&source[chunk..chunk + available]);
            let mut contribution = [0u8; CHUNK_BYTES];
            scalar_chunk(&mut contribution, &padded, source_map);
            for (byte, add) in out[chunk..chunk + CHUNK_BYTES].iter_mut().zip(contribution) {
                *byte ^= add;
            }
            chunk += CHUNK_BYTES;
        }
    }
}

/// `out = map(out) ⊕ Σ source_map(source)` over whole chunks, every
/// source as long as `out`.
fn kernel(out: &mut [u8], map: &SymbolMap, sources: &[(&[u8], &SymbolMap)]) {
    #[cfg(target_arch = "x86_64")]
    {
        if gfni() {
            // SAFETY: GFNI and AVX2 are present (checked at run time).
            unsafe { x86::kernel_gfni(out, map, sources) };
            return;
        }
        if avx2() {
            // SAFETY: AVX2 is present (checked at run time).
            unsafe { x86::kernel_avx2(out, map, sources) };
            return;
        }
    }
    kernel_scalar(out, map, sources);
}

fn kernel_scalar(out: &mut [u8], map: &SymbolMap, sources: &[(&[u8], &SymbolMap)]) {
    let mut accumulated = [0u8; CHUNK_BYTES];
    for chunk in (0..out.len()).step_by(CHUNK_BYTES) {
        let range = chunk..chunk + CHUNK_BYTES;
        let own: [u8; CHUNK_BYTES] = out[range.clone()].try_into().expect("a whole chunk");
        scalar_chunk(&mut accumulated, &own, map);
        for (source, source_map) in sources {
            let mut contribution = [0u8; CHUNK_BYTES];
            scalar_chunk(&mut contribution, &source[range.clone()], source_map);
            for (byte, add) in accumulated.iter_mut().zip(contribution) {
                *byte ^= add;
            }
        }
        out[range].copy_from_slice(&accumulated);
    }
}

/// `out = map(chunk)` for one 64-byte chunk.
fn scalar_chunk(out: &mut [u8; CHUNK_BYTES], chunk: &[u8], map: &SymbolMap) {
    for position in 0..SYMBOLS_PER_CHUNK {
        let symbol = u16::from(chunk[position]) | u16::from(chunk[SYMBOLS_PER_CHUNK + position]) << 8;
        let image = map.apply(symbol);
        out[position] = image as u8;
        out[SYMBOLS_PER_CHUNK + position] = (image >> 8) as u8;
    }
}

/// Whether the fast kernel runs on this CPU: the read path prefers the
/// one-parity rebuild only then (the scalar kernel is slower than
/// fetching every parity block and XORing).
pub fn fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// GFNI's bit-matrix multiply of bytes (`gf2p8affineqb`): four per source
/// and 64 bytes, against eight table lookups and their nibble masks with
/// AVX2 alone (2.5× the XOR of every parity block's time on this machine;
/// see `perf/results/2026-11-28-s12-dp12.md`).
#[cfg(target_arch = "x86_64")]
fn gfni() -> bool {
    avx2() && std::arch::is_x86_feature_detected!("gfni") && std::arch::is_x86_feature_detected!("avx")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{CHUNK_BYTES, SymbolMap};

    /// One map's eight nibble tables, each in both 128-bit lanes.
    struct Tables([__m256i; 8]);

    impl Tables {
        #[target_feature(enable = "avx2")]
        fn new(map: &SymbolMap) -> Self {
            Tables(std::array::from_fn(|index| {
                // SAFETY: a 16-byte table read unaligned.
                let table = unsafe { _mm_loadu_si128(map.tables[index].as_ptr().cast()) };
                _mm256_broadcastsi128_si256(table)
            }))
        }

        /// The map of 32 symbols given as their low and high bytes.
        #[target_feature(enable = "avx2")]
        fn apply(&self, low: __m256i, high: __m256i) -> (__m256i, __m256i) {
            let mask = _mm256_set1_epi8(0x0f);
            let nibbles = [
                _mm256_and_si256(low, mask),
                _mm256_and_si256(_mm256_srli_epi16(low, 4), mask),
                _mm256_and_si256(high, mask),
                _mm256_and_si256(_mm256_srli_epi16(high, 4), mask),
            ];
            let mut out_low = _mm256_setzero_si256();
            let mut out_high = _mm256_setzero_si256();
            for (nibble, index) in nibbles.into_iter().zip(0..) {
                out_low = _mm256_xor_si256(out_low, _mm256_shuffle_epi8(self.0[2 * index], nibble));
                out_high = _mm256_xor_si256(out_high, _mm256_shuffle_epi8(self.0[2 * index + 1], nibble));
            }
            (out_low, out_high)
        }
    }

    /// One map as its four 8×8 bit matrices, each in every 64-bit lane.
    struct Affine([__m256i; 4]);

    impl Affine {
        #[target_feature(enable = "avx2")]
        fn new(map: &SymbolMap) -> Self {
            Affine(std::array::from_fn(|index| _mm256_set1_epi64x(map.affine[index] as i64)))
        }

        /// The map of 32 symbols given as their low and high bytes.
        #[target_feature(enable = "avx2,gfni")]
        fn apply(&self, low: __m256i, high: __m256i) -> (__m256i, __m256i) {
            let out_low = _mm256_xor_si256(
                _mm256_gf2p8affine_epi64_epi8::<0>(low, self.0[0]),
                _mm256_gf2p8affine_epi64_epi8::<0>(high, self.0[1]),
            );
            let out_high = _mm256_xor_si256(
                _mm256_gf2p8affine_epi64_epi8::<0>(low, self.0[2]),
                _mm256_gf2p8affine_epi64_epi8::<0>(high, self.0[3]),
            );
            (out_low, out_high)
        }
    }

    /// [`super::kernel`] with GFNI bit-matrix multiplies.
    #[target_feature(enable = "avx2,gfni")]
    pub(super) fn kernel_gfni(out: &mut [u8], map: &SymbolMap, sources: &[(&[u8], &SymbolMap)]) {
        let own = Affine::new(map);
        let matrices: Vec<(&[u8], Affine)> = sources.iter().map(|(source, m)| (*source, Affine::new(m))).collect();
        for chunk in (0..out.len()).step_by(CHUNK_BYTES) {
            // SAFETY: as in `kernel_avx2`.
            unsafe {
                let at = out.as_mut_ptr().add(chunk);
                let (mut low, mut high) =
                    own.apply(_mm256_loadu_si256(at.cast()), _mm256_loadu_si256(at.add(32).cast()));
                for (source, source_matrices) in &matrices {
                    let from = source.as_ptr().add(chunk);
                    let (l, h) =
                        source_matrices.apply(_mm256_loadu_si256(from.cast()), _mm256_loadu_si256(from.add(32).cast()));
                    low = _mm256_xor_si256(low, l);
                    high = _mm256_xor_si256(high, h);
                }
                _mm256_storeu_si256(at.cast(), low);
                _mm256_storeu_si256(at.add(32).cast(), high);
            }
        }
    }

    /// [`super::kernel`] with AVX2 nibble lookups (`vpshufb`).
    #[target_feature(enable = "avx2")]
    pub(super) fn kernel_avx2(out: &mut [u8], map: &SymbolMap, sources: &[(&[u8], &SymbolMap)]) {
        let own = Tables::new(map);
        let tables: Vec<(&[u8], Tables)> = sources.iter().map(|(source, m)| (*source, Tables::new(m))).collect();
        for chunk in (0..out.len()).step_by(CHUNK_BYTES) {
            // SAFETY: `chunk + 64 <= out.len()` and every source is as
            // long as `out` (the caller's contract); unaligned accesses.
            unsafe {
                let at = out.as_mut_ptr().add(chunk);
                let (mut low, mut high) =
                    own.apply(_mm256_loadu_si256(at.cast()), _mm256_loadu_si256(at.add(32).cast()));
                for (source, source_tables) in &tables {
                    let from = source.as_ptr().add(chunk);
                    let (l, h) =
                        source_tables.apply(_mm256_loadu_si256(from.cast()), _mm256_loadu_si256(from.add(32).cast()));
                    low = _mm256_xor_si256(low, l);
                    high = _mm256_xor_si256(high, h);
                }
                _mm256_storeu_si256(at.cast(), low);
                _mm256_storeu_si256(at.add(32).cast(), high);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn maps_invert_and_compose() {
        let forward = forward_maps(4, 2, 0).expect("maps");
        for map in &forward {
            let inverse = map.inverse().expect("invertible");
            assert_eq!(inverse.compose(map), SymbolMap::identity());
            assert_eq!(map.compose(&inverse), SymbolMap::identity());
        }
        assert_eq!(SymbolMap::new([0; 16]).inverse(), None);
    }

    /// Every missing block of several codes, from every parity block, over
    /// a shard of many chunks with a short last data block: the rebuild is
    /// the block (and its CRC), the undo gives the parity block back; the
    /// scalar and the fast kernel agree.
    #[test]
    fn one_parity_block_rebuilds_any_one_data_block() {
        for (d, p) in [(4, 2), (2, 1), (6, 3), (10, 4), (3, 5)] {
            let shard = 64 * 97;
            let mut data: Vec<Vec<u8>> = (0..d).map(|i| random(shard, 7 + i as u64)).collect();
            // The last data block is short (zero-padded for the encoder).
            let short = shard - 64 * 3 - 10;
            data[d - 1][short..].fill(0);
            let parity = reed_solomon_simd::encode(d, p, &data).expect("encode");
            let lengths: Vec<usize> = (0..d).map(|i| if i == d - 1 { short } else { shard }).collect();
            for missing in 0..d {
                for (parity_index, parity_block) in parity.iter().enumerate() {
                    let plan = SingleErasure::plan(d, p, parity_index, missing).expect("plan");
                    assert!(plan.sources().all(|index| index != missing));
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
        let plan = SingleErasure::plan(4, 2, 1, 2).expect("plan");
        let mut fast_out = random(64 * 40, 1);
        let mut scalar_out = fast_out.clone();
        let sources: Vec<Vec<u8>> = (0..3).map(|i| random(64 * 40, 2 + i)).collect();
        let pairs: Vec<(&[u8], &SymbolMap)> =
            sources.iter().zip(&plan.data_maps).map(|(s, (_, m))| (&s[..], m)).collect();
        kernel(&mut fast_out, &plan.parity_map, &pairs);
        kernel_scalar(&mut scalar_out, &plan.parity_map, &pairs);
        assert_eq!(fast_out, scalar_out);
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            let mut avx2_out = random(64 * 40, 1);
            // SAFETY: AVX2 checked above.
            unsafe { x86::kernel_avx2(&mut avx2_out, &plan.parity_map, &pairs) };
            assert_eq!(avx2_out, scalar_out, "AVX2 kernel");
        }
        #[cfg(target_arch = "x86_64")]
        if gfni() {
            let mut gfni_out = random(64 * 40, 1);
            // SAFETY: GFNI checked above.
            unsafe { x86::kernel_gfni(&mut gfni_out, &plan.parity_map, &pairs) };
            assert_eq!(gfni_out, scalar_out, "GFNI kernel");
        }
        assert!(SingleErasure::plan(4, 2, 2, 0).is_none() && SingleErasure::plan(4, 2, 0, 4).is_none());
    }
}
