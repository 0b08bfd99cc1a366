//! One missing data block rebuilt from one parity block, without a
//! Reed–Solomon decode (issue 11, the degraded read).
//!
//! `reed_solomon_simd` codes over GF(2^16): each 64-byte chunk of a shard
//! holds 32 symbols, their low bytes in the chunk's first 32 bytes and
//! their high bytes in the last 32, and a parity shard's symbol at one
//! position is a linear combination of the data shards' symbols at the
//! same position: `P_j = Σ c_ji · D_i`. So a missing `D_m` is
//! `c_jm⁻¹ · P_j ⊕ Σ_{i≠m} (c_ji · c_jm⁻¹) · D_i`, with one block fewer on
//! the wire than the XOR of every parity block needs (the read path's
//! other shortcut).
//!
//! Fewer multiplies than terms: multiplying by a constant is linear over
//! GF(2), so the sum is evaluated over a basis of the constants' GF(2)
//! span that holds 1 ([`Evaluation`]): blocks whose constants share a
//! basis element are XORed first and multiplied once, and the element 1
//! needs no multiply. The library's RS 4+2 constants all lie in GF(16), so
//! a rebuild takes 2 multiplies, not 4 (RS 2+1: none; 6+3, 8+2, 10+4: 3).
//!
//! The multiply by a constant is this module's own ([`Multiplier`]): the
//! constant's products with each nibble of a symbol, 128 bytes of tables
//! made from the library's exp/log tables ([`tables::get_exp_log`],
//! 256 KiB), applied with SSSE3 or AVX2 byte shuffles where the CPU has
//! them (runtime detection), else table look-ups. Where the CPU has GFNI
//! (with AVX2), the same multiply runs as four 8×8 bit matrices over
//! GF(2) made from those tables (`vgf2p8affineqb`, 4 instructions a
//! 64-byte chunk instead of 8 shuffles and the nibble splits): 0.38× the
//! AVX2 multiply's samples in a degraded cat of 1 GiB
//! (`perf/results/2026-11-29-s18-dp19e.md`). On aarch64 the
//! library's engine multiplies (NEON), tables and all. It is the library's
//! SIMD multiply, but its engine ([`reed_solomon_simd::engine::DefaultEngine`])
//! sets up 8 MiB of tables for every constant (~2 100 fresh pages, 7+ ms
//! of CPU once per process, a large share of a degraded cat of 1 GiB
//! that takes ~185 ms), and a rebuild needs only 2 or 3 constants. The
//! XORs are the read path's. This module finds the constants `c_ji` (one
//! encode of a unit symbol per data shard) and checks, once per code, that
//! the linear model gives the library's parity for random data; both
//! encode with the library's reference engine
//! ([`reed_solomon_simd::engine::Naive`]: the same code, multiplying
//! through the exp/log tables, so no 8 MiB tables either). The work runs in
//! [`PASS_BYTES`] pieces, so each piece's sums, products and result stay
//! in the cache while it is made, and the CRC is taken as each piece is
//! made.
//!
//! Nothing here is trusted: the read path checks each block rebuilt this
//! way against the CRC it was written with, undoes the rebuild (the same
//! constants give the parity block back) and decodes with the library
//! when it does not match, so a different encoder only costs the shortcut.

use std::sync::{Arc, Mutex, OnceLock};

use reed_solomon_simd::engine::{DefaultEngine, Engine, GF_MODULUS, GfElement, Naive, tables};
use reed_solomon_simd::rate::{DefaultRateEncoder, RateEncoder};

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

    /// `self · other`.
    fn times(self, other: Factor) -> Factor {
        match (self, other) {
            (Factor::Log(a), Factor::Log(b)) => {
                Factor::Log(((u32::from(a) + u32::from(b)) % u32::from(GF_MODULUS)) as GfElement)
            }
            _ => Factor::Zero,
        }
    }

    /// The constant as the library writes a symbol (addition is XOR).
    fn value(self) -> GfElement {
        match self {
            Factor::Zero => 0,
            Factor::Log(log) => tables::get_exp_log().exp[usize::from(log)],
        }
    }

    /// The constant whose symbol is `value`.
    fn of_value(value: GfElement) -> Factor {
        if value == 0 { Factor::Zero } else { Factor::Log(tables::get_exp_log().log[usize::from(value)]) }
    }
}

/// Multiplies symbols by one constant `c`: `c · x` is the XOR of
/// `c · (n_k << 4k)` over the four nibbles `n_k` of `x`, so 16 products
/// per nibble, their low and high bytes apart (the layout of the
/// library's `Multiply128lutT`, built from the exp/log tables for this
/// constant only). With SSSE3 or AVX2 each table is one byte shuffle.
/// On aarch64, where this module has no SIMD of its own, the library's
/// engine multiplies (NEON, with its 8 MiB of tables) by the constant kept
/// here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Multiplier {
    lo: [[u8; 16]; 4],
    hi: [[u8; 16]; 4],
    /// The same multiply as bit matrices, for [`Path::Gfni`]
    /// ([`Multiplier::bit_matrices`]): made once, not per piece.
    #[cfg(target_arch = "x86_64")]
    matrices: [u64; 4],
    factor: Factor,
}

/// How [`Multiplier::apply`] runs: the widest the CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    Scalar,
    /// The library's engine ([`DefaultEngine`]): chosen on aarch64 only
    /// (elsewhere only the tests run it).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Library,
    #[cfg(target_arch = "x86_64")]
    Ssse3,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// GFNI's 8×8 bit-matrix multiply (`vgf2p8affineqb`) on AVX
    /// registers: 4 instructions a 64-byte chunk where AVX2 takes 8
    /// shuffles and the nibble splits.
    #[cfg(target_arch = "x86_64")]
    Gfni,
}

impl Path {
    /// Every path this CPU runs natively, narrowest first: the last is
    /// the one [`Multiplier::apply`] takes.
    fn available() -> Vec<Path> {
        #[allow(unused_mut)]
        let mut paths = vec![Path::Scalar];
        #[cfg(target_arch = "aarch64")]
        paths.push(Path::Library);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("ssse3") {
                paths.push(Path::Ssse3);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                paths.push(Path::Avx2);
                if std::arch::is_x86_feature_detected!("gfni") {
                    paths.push(Path::Gfni);
                }
            }
        }
        paths
    }

    /// The widest path, found once per process.
    fn best() -> Path {
        static BEST: OnceLock<Path> = OnceLock::new();
        *BEST.get_or_init(|| Path::available().last().copied().unwrap_or(Path::Scalar))
    }

    /// Every path this CPU can run (for the tests): the native ones and
    /// the library's engine.
    #[cfg(test)]
    fn all() -> Vec<Path> {
        let mut paths = Path::available();
        if !paths.contains(&Path::Library) {
            paths.insert(1, Path::Library);
        }
        paths
    }
}

impl Multiplier {
    fn new(factor: Factor) -> Self {
        let exp_log = tables::get_exp_log();
        let mut multiplier = Multiplier {
            lo: [[0; 16]; 4],
            hi: [[0; 16]; 4],
            #[cfg(target_arch = "x86_64")]
            matrices: [0; 4],
            factor,
        };
        if let Factor::Log(log) = factor {
            for nibble in 0..4 {
                for n in 0..16 {
                    let product = tables::mul((n << (4 * nibble)) as GfElement, log, &exp_log.exp, &exp_log.log);
                    multiplier.lo[nibble][n] = product as u8;
                    multiplier.hi[nibble][n] = (product >> 8) as u8;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            multiplier.matrices = multiplier.bit_matrices();
        }
        multiplier
    }

    /// `chunks *= c`.
    fn apply(&self, chunks: &mut [[u8; CHUNK_BYTES]]) {
        self.apply_with(Path::best(), chunks);
    }

    fn apply_with(&self, path: Path, chunks: &mut [[u8; CHUNK_BYTES]]) {
        match path {
            Path::Scalar => self.apply_scalar(chunks),
            Path::Library => match self.factor {
                Factor::Zero => chunks.iter_mut().for_each(|chunk| chunk.fill(0)),
                Factor::Log(log) => library_engine().mul(chunks, log),
            },
            // SAFETY: `Path::available` (behind `best` and `all`) gives
            // these paths only where the CPU has the feature.
            #[cfg(target_arch = "x86_64")]
            Path::Ssse3 => unsafe { self.apply_ssse3(chunks) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { self.apply_avx2(chunks) },
            #[cfg(target_arch = "x86_64")]
            Path::Gfni => unsafe { self.apply_gfni(chunks) },
        }
    }

    fn apply_scalar(&self, chunks: &mut [[u8; CHUNK_BYTES]]) {
        let (lo, hi) = (&self.lo, &self.hi);
        for chunk in chunks {
            for i in 0..SYMBOLS_PER_CHUNK {
                let (x_lo, x_hi) = (usize::from(chunk[i]), usize::from(chunk[i + SYMBOLS_PER_CHUNK]));
                let (n0, n1, n2, n3) = (x_lo & 15, x_lo >> 4, x_hi & 15, x_hi >> 4);
                chunk[i] = lo[0][n0] ^ lo[1][n1] ^ lo[2][n2] ^ lo[3][n3];
                chunk[i + SYMBOLS_PER_CHUNK] = hi[0][n0] ^ hi[1][n1] ^ hi[2][n2] ^ hi[3][n3];
            }
        }
    }

    /// Each 16-byte half of the chunk's low bytes with the matching half
    /// of its high bytes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "ssse3")]
    fn apply_ssse3(&self, chunks: &mut [[u8; CHUNK_BYTES]]) {
        use std::arch::x86_64::*;
        // SAFETY (every load and store): 16 bytes within a table or a
        // 64-byte chunk, unaligned accesses.
        let table = |bytes: &[u8; 16]| unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        let (lo, hi) = (self.lo.map(|t| table(&t)), self.hi.map(|t| table(&t)));
        let mask = _mm_set1_epi8(0x0f);
        for chunk in chunks {
            let at = chunk.as_mut_ptr().cast::<__m128i>();
            for half in 0..2 {
                unsafe {
                    let x_lo = _mm_loadu_si128(at.add(half));
                    let x_hi = _mm_loadu_si128(at.add(half + 2));
                    let nibbles = [
                        _mm_and_si128(x_lo, mask),
                        _mm_and_si128(_mm_srli_epi64(x_lo, 4), mask),
                        _mm_and_si128(x_hi, mask),
                        _mm_and_si128(_mm_srli_epi64(x_hi, 4), mask),
                    ];
                    let (mut p_lo, mut p_hi) = (_mm_setzero_si128(), _mm_setzero_si128());
                    for k in 0..4 {
                        p_lo = _mm_xor_si128(p_lo, _mm_shuffle_epi8(lo[k], nibbles[k]));
                        p_hi = _mm_xor_si128(p_hi, _mm_shuffle_epi8(hi[k], nibbles[k]));
                    }
                    _mm_storeu_si128(at.add(half), p_lo);
                    _mm_storeu_si128(at.add(half + 2), p_hi);
                }
            }
        }
    }

    /// The chunk's 32 low bytes and 32 high bytes, one register each.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn apply_avx2(&self, chunks: &mut [[u8; CHUNK_BYTES]]) {
        use std::arch::x86_64::*;
        // SAFETY (every load and store): 16 bytes of a table or 32 of a
        // 64-byte chunk, unaligned accesses.
        let table = |bytes: &[u8; 16]| unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(bytes.as_ptr().cast())) };
        let (lo, hi) = (self.lo.map(|t| table(&t)), self.hi.map(|t| table(&t)));
        let mask = _mm256_set1_epi8(0x0f);
        for chunk in chunks {
            let at = chunk.as_mut_ptr().cast::<__m256i>();
            unsafe {
                let x_lo = _mm256_loadu_si256(at);
                let x_hi = _mm256_loadu_si256(at.add(1));
                let nibbles = [
                    _mm256_and_si256(x_lo, mask),
                    _mm256_and_si256(_mm256_srli_epi64(x_lo, 4), mask),
                    _mm256_and_si256(x_hi, mask),
                    _mm256_and_si256(_mm256_srli_epi64(x_hi, 4), mask),
                ];
                let (mut p_lo, mut p_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for k in 0..4 {
                    p_lo = _mm256_xor_si256(p_lo, _mm256_shuffle_epi8(lo[k], nibbles[k]));
                    p_hi = _mm256_xor_si256(p_hi, _mm256_shuffle_epi8(hi[k], nibbles[k]));
                }
                _mm256_storeu_si256(at, p_lo);
                _mm256_storeu_si256(at.add(1), p_hi);
            }
        }
    }
}

impl Multiplier {
    /// The multiply as four 8×8 bit matrices over GF(2), in
    /// `vgf2p8affineqb`'s layout (row `i`, the input bits whose XOR is
    /// output bit `i`, in byte `7 − i`): low bytes to low, high bytes to
    /// low, low to high, high to high. Multiplying by a constant is linear
    /// over GF(2), so input bit `j`'s column is the product of the
    /// constant with `1 << j`, which the nibble tables hold.
    #[cfg(target_arch = "x86_64")]
    fn bit_matrices(&self) -> [u64; 4] {
        let column = |bit: usize| {
            let n = 1usize << (bit % 4);
            (self.lo[bit / 4][n], self.hi[bit / 4][n])
        };
        let matrix = |from_high: bool, to_high: bool| {
            let mut rows = 0u64;
            for out in 0..8 {
                let mut row = 0u8;
                for input in 0..8 {
                    let (lo, hi) = column(input + if from_high { 8 } else { 0 });
                    let product = if to_high { hi } else { lo };
                    row |= ((product >> out) & 1) << input;
                }
                rows |= u64::from(row) << (8 * (7 - out));
            }
            rows
        };
        [matrix(false, false), matrix(true, false), matrix(false, true), matrix(true, true)]
    }

    /// The chunk's 32 low bytes and 32 high bytes, one register each:
    /// `lo' = A·lo ⊕ B·hi`, `hi' = C·lo ⊕ D·hi`, byte by byte.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "gfni,avx2")]
    fn apply_gfni(&self, chunks: &mut [[u8; CHUNK_BYTES]]) {
        use std::arch::x86_64::*;
        let [a, b, c, d] = self.matrices.map(|rows| _mm256_set1_epi64x(rows as i64));
        for chunk in chunks {
            let at = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY (every load and store): 32 bytes of a 64-byte chunk,
            // unaligned accesses.
            unsafe {
                let x_lo = _mm256_loadu_si256(at);
                let x_hi = _mm256_loadu_si256(at.add(1));
                let p_lo = _mm256_xor_si256(
                    _mm256_gf2p8affine_epi64_epi8::<0>(x_lo, a),
                    _mm256_gf2p8affine_epi64_epi8::<0>(x_hi, b),
                );
                let p_hi = _mm256_xor_si256(
                    _mm256_gf2p8affine_epi64_epi8::<0>(x_lo, c),
                    _mm256_gf2p8affine_epi64_epi8::<0>(x_hi, d),
                );
                _mm256_storeu_si256(at, p_lo);
                _mm256_storeu_si256(at.add(1), p_hi);
            }
        }
    }
}

/// The library's engine, for [`Path::Library`] (its tables are set up on
/// first use).
fn library_engine() -> &'static DefaultEngine {
    static ENGINE: OnceLock<DefaultEngine> = OnceLock::new();
    ENGINE.get_or_init(DefaultEngine::new)
}

/// The library's encode of `data` (D shards of equal length) into `p`
/// parity shards, with its reference engine ([`Naive`]): the same code as
/// `reed_solomon_simd::encode`, without the SIMD engines' 8 MiB tables.
fn encode_naive(p: usize, data: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let len = data.first()?.len();
    let mut encoder = DefaultRateEncoder::<Naive>::new(data.len(), p, len, Naive::new(), None).ok()?;
    for shard in data {
        encoder.add_original_shard(shard).ok()?;
    }
    let result = encoder.encode().ok()?;
    Some(result.recovery_iter().map(<[u8]>::to_vec).collect())
}

#[derive(Debug)]
pub struct SingleErasure {
    missing: usize,
    /// The other data blocks, by index.
    others: Vec<usize>,
    /// `D_m = c_jm⁻¹ · P_j ⊕ Σ (c_ji · c_jm⁻¹) · D_i`: the rebuild, as
    /// evaluated (the output's own bytes are the parity block's).
    forward: Evaluation,
    /// `P_j = c_jm · D_m ⊕ Σ c_ji · D_i`: the undo.
    backward: Evaluation,
}

impl SingleErasure {
    /// The plan for data block `missing` of D+P, from parity block
    /// `parity_index` (0-based among the parity blocks); kept per
    /// combination. `None` when the library cannot encode D+P, the
    /// missing block's constant is zero, or the model does not give the
    /// library's parity (the caller decodes instead).
    pub fn plan(data_blocks: usize, parity_blocks: usize, parity_index: usize, missing: usize) -> Option<Arc<Self>> {
        static KNOWN: Known<(usize, usize, usize, usize), SingleErasure> = Mutex::new(Vec::new());
        kept(&KNOWN, (data_blocks, parity_blocks, parity_index, missing), || {
            Self::probe(data_blocks, parity_blocks, parity_index, missing)
        })
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
        let others: Vec<usize> = (0..d).filter(|&index| index != missing).collect();
        let forward: Vec<Factor> =
            std::iter::once(to_missing).chain(others.iter().map(|&index| factors[index].times(to_missing))).collect();
        let backward: Vec<Factor> =
            std::iter::once(missing_factor).chain(others.iter().map(|&index| factors[index])).collect();
        Some(Self { missing, others, forward: Evaluation::new(&forward), backward: Evaluation::new(&backward) })
    }

    /// The data blocks (by index) the rebuild reads.
    pub fn sources(&self) -> impl Iterator<Item = usize> + '_ {
        self.others.iter().copied()
    }

    /// Multiplies per piece of the rebuild (fewer than D when the
    /// constants allow it).
    pub fn multiplies(&self) -> usize {
        self.forward.terms.len()
    }

    /// `place` holds the parity block (whole chunks); afterwards it holds
    /// the missing data block (its full shard: the caller truncates).
    /// `data` gives the other data blocks by index (a shorter one is
    /// zero-padded). Returns the CRC32C of `place`'s first `crc_bytes`,
    /// taken piece by piece as they are made, while they are in the cache.
    pub fn rebuild<'a>(&self, place: &mut [u8], data: impl Fn(usize) -> &'a [u8], crc_bytes: usize) -> u32 {
        combine(place, &self.forward, &self.sources_with(data), crc_bytes)
    }

    /// Undoes [`Self::rebuild`]: `place` holds the parity block again.
    pub fn undo<'a>(&self, place: &mut [u8], data: impl Fn(usize) -> &'a [u8]) {
        combine(place, &self.backward, &self.sources_with(data), 0);
    }

    fn sources_with<'a>(&self, data: impl Fn(usize) -> &'a [u8]) -> Vec<&'a [u8]> {
        debug_assert!(self.others.iter().all(|index| *index != self.missing));
        self.others.iter().map(|index| data(*index)).collect()
    }
}

/// Bytes of each block a [`ParityEncoding`] works on at a time: the D
/// data windows and the P parity windows (384 KiB for RS 4+2) stay in the
/// cache while every parity window is made and every window's CRC taken.
const ENCODE_WINDOW_BYTES: usize = 4 * PASS_BYTES;

/// The parity blocks of D+P straight from the span's data blocks:
/// `P_j = Σ c_ji · D_i`, each evaluated as [`Evaluation`] says (RS 4+2:
/// one parity block is the XOR of the data blocks, the other takes 2
/// multiplies a chunk), window by window, with the CRC32C of every data
/// and parity block taken while its window is in the cache. The
/// library's encoder instead copies the data blocks into its own work
/// buffer and runs its transform over them. The constants are the
/// library's ([`factors`]), checked once per code against its encode
/// ([`model_holds`]); the tests check the parity against
/// `reed_solomon_simd::encode` for every D+P a policy allows.
#[derive(Debug)]
pub struct ParityEncoding {
    data_blocks: usize,
    /// Per parity block: `P_j` from its own (ignored) bytes and the data blocks.
    parities: Vec<Evaluation>,
}

impl ParityEncoding {
    /// The encoding of D+P, kept per code; `None` when the library cannot
    /// encode D+P or the model does not give its parity (the caller
    /// encodes with the library).
    pub fn plan(data_blocks: usize, parity_blocks: usize) -> Option<Arc<Self>> {
        static KNOWN: Known<(usize, usize), ParityEncoding> = Mutex::new(Vec::new());
        kept(&KNOWN, (data_blocks, parity_blocks), || Self::probe(data_blocks, parity_blocks))
    }

    fn probe(d: usize, p: usize) -> Option<Self> {
        if d < 2 || p == 0 {
            return None;
        }
        let mut parities = Vec::with_capacity(p);
        for parity_index in 0..p {
            let factors = factors(d, p, parity_index)?;
            if !model_holds(d, p, parity_index, &factors) {
                return None;
            }
            let coefficients: Vec<Factor> = std::iter::once(Factor::Zero).chain(factors).collect();
            parities.push(Evaluation::new(&coefficients));
        }
        Some(Self { data_blocks: d, parities })
    }

    /// Multiplies per chunk of the whole encode (all parity blocks).
    pub fn multiplies(&self) -> usize {
        self.parities.iter().map(|evaluation| evaluation.terms.len()).sum()
    }

    /// Writes parity block j into `parity[j]` (each the shard's length,
    /// whole chunks; what they held is overwritten) from the D `data`
    /// blocks (each at most the shard's length; a shorter one counts as
    /// zero-padded, as the library's caller pads it). Returns the CRC32C
    /// of every data block (its own length) and then of every parity block.
    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Vec<u32> {
        assert_eq!(data.len(), self.data_blocks, "one slice per data block");
        assert_eq!(parity.len(), self.parities.len(), "one buffer per parity block");
        let shard = parity.first().map_or(0, |block| block.len());
        assert!(parity.iter().all(|block| block.len() == shard), "parity blocks of one length");
        assert!(data.iter().all(|block| block.len() <= shard), "data blocks within the shard");
        let mut crcs = vec![0u32; data.len() + parity.len()];
        let mut scratch = Vec::new();
        let mut window: Vec<&[u8]> = Vec::with_capacity(data.len());
        let mut at = 0;
        while at < shard {
            let end = (at + ENCODE_WINDOW_BYTES).min(shard);
            window.clear();
            window.extend(data.iter().map(|block| block.get(at..end.min(block.len())).unwrap_or_default()));
            for (crc, bytes) in crcs.iter_mut().zip(&window) {
                *crc = wire::crc::crc32c_append(*crc, bytes);
            }
            for ((evaluation, block), crc) in self.parities.iter().zip(parity.iter_mut()).zip(&mut crcs[data.len()..]) {
                let out = &mut block[at..end];
                combine_in(out, evaluation, &window, 0, &mut scratch);
                *crc = wire::crc::crc32c_append(*crc, out);
            }
            at = end;
        }
        crcs
    }
}

/// Plans made so far, per key (a code, or a code and its erasure),
/// including the keys that have none: each is probed once per process.
type Known<K, V> = Mutex<Vec<(K, Option<Arc<V>>)>>;

/// `key`'s plan from `known`, probed (and kept) the first time it is asked for.
fn kept<K: PartialEq, V>(known: &Known<K, V>, key: K, probe: impl FnOnce() -> Option<V>) -> Option<Arc<V>> {
    let mut known = known.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, plan)) = known.iter().find(|(k, _)| *k == key) {
        return plan.clone();
    }
    let plan = probe().map(Arc::new);
    known.push((key, plan.clone()));
    plan
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
        let parity = encode_naive(p, &data)?;
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
    let Some(parity) = encode_naive(p, &data) else { return false };
    let Some(expected) = parity.get(parity_index) else { return false };
    let mut sum = vec![[0u8; CHUNK_BYTES]; chunks];
    let sources: Vec<&[u8]> = data.iter().map(|shard| &shard[..]).collect();
    let evaluation = Evaluation::new(&std::iter::once(Factor::Zero).chain(factors.iter().copied()).collect::<Vec<_>>());
    let bytes = sum.as_flattened_mut();
    combine(bytes, &evaluation, &sources, 0);
    *bytes == expected[..]
}

/// `count` shards of `len` pseudo-random bytes (rand's `StdRng` from a
/// fixed seed, always the same): what a probe of the library's code
/// encodes.
pub(crate) fn probe_shards(count: usize, len: usize) -> Vec<Vec<u8>> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    (0..count)
        .map(|_| {
            let mut shard = vec![0u8; len];
            rng.fill_bytes(&mut shard);
            shard
        })
        .collect()
}

/// How `out ← Σ_s k_s · S_s` is computed (`S_0` is `out`'s own bytes,
/// `S_{i+1}` source i): as `⊕_j b_j · (⊕_{s ∈ G_j} S_s)`, over a basis
/// `{b_j}` of the GF(2)-span of the `k_s` that holds 1, each `k_s` being
/// the sum of the `b_j` whose group holds `s`. Multiplying by a constant
/// is linear over GF(2), so that is the same sum, with as many multiplies
/// as the span's rank (less one when 1 is in it: the term with `b = 1`
/// needs none), the fewest any such grouping can have. Among the bases
/// drawn from the constants themselves, the one with the fewest XORs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Evaluation {
    /// `(b_j, G_j)` for every `b_j ≠ 1`.
    terms: Vec<(Factor, Vec<usize>)>,
    /// `G` of `b = 1`.
    ones: Vec<usize>,
    /// Each term's multiply (by its `b_j`).
    multipliers: Vec<Multiplier>,
}

/// Coefficient sets up to this many are searched for the basis with the
/// fewest XORs (every subset); larger ones take the first basis found.
const BASIS_SEARCH_MAX: usize = 12;

impl Evaluation {
    fn new(coefficients: &[Factor]) -> Self {
        let one = Factor::Log(0).value();
        let values: Vec<GfElement> = coefficients.iter().map(|factor| factor.value()).collect();
        let candidates: Vec<usize> = (0..values.len()).filter(|&s| values[s] != 0).collect();
        // Bases: 1 and a subset of the constants; the one that spans them
        // all with the fewest XORs (every valid basis has the same size).
        let try_basis = |subset: &[usize]| -> Option<(usize, Vec<u32>)> {
            let mut basis = vec![one];
            basis.extend(subset.iter().map(|&s| values[s]));
            let rows = echelon(&basis)?;
            let reprs: Vec<u32> = values
                .iter()
                .map(|&value| if value == 0 { Some(0) } else { represent(&rows, value) })
                .collect::<Option<_>>()?;
            let xors = reprs.iter().map(|repr| repr.count_ones() as usize).sum();
            Some((xors, reprs))
        };
        let mut best: Option<(usize, Vec<u16>, Vec<u32>)> = None;
        if candidates.len() <= BASIS_SEARCH_MAX {
            for mask in 0u32..1 << candidates.len() {
                let subset: Vec<usize> =
                    candidates.iter().enumerate().filter(|(bit, _)| mask >> bit & 1 == 1).map(|(_, &s)| s).collect();
                if let Some((xors, reprs)) = try_basis(&subset) {
                    let better =
                        best.as_ref().is_none_or(|(cost, basis, _)| (subset.len(), xors) < (basis.len() - 1, *cost));
                    if better {
                        let basis = std::iter::once(one).chain(subset.iter().map(|&s| values[s])).collect();
                        best = Some((xors, basis, reprs));
                    }
                }
            }
        }
        let (_, basis, reprs) = best.unwrap_or_else(|| {
            // Greedy: 1, then each constant not yet spanned.
            let mut basis = vec![one];
            for &s in &candidates {
                let mut with = basis.clone();
                with.push(values[s]);
                if echelon(&with).is_some() {
                    basis = with;
                }
            }
            let rows = echelon(&basis).unwrap_or_default();
            let reprs = values.iter().map(|&value| represent(&rows, value).unwrap_or(0)).collect();
            (0, basis, reprs)
        });
        let members = |j: usize| -> Vec<usize> { (0..values.len()).filter(|&s| reprs[s] >> j & 1 == 1).collect() };
        let terms: Vec<(Factor, Vec<usize>)> =
            (1..basis.len()).map(|j| (Factor::of_value(basis[j]), members(j))).filter(|(_, g)| !g.is_empty()).collect();
        let multipliers = terms.iter().map(|(factor, _)| Multiplier::new(*factor)).collect();
        Self { terms, ones: members(0), multipliers }
    }
}

/// Row echelon form of `vectors` over GF(2) (16-bit), each row with the
/// set of input vectors it sums (a bit mask); `None` when they are not
/// linearly independent.
fn echelon(vectors: &[GfElement]) -> Option<Vec<(GfElement, u32)>> {
    let mut rows: Vec<(GfElement, u32)> = Vec::with_capacity(vectors.len());
    for (index, &vector) in vectors.iter().enumerate() {
        let (mut value, mut sum) = (vector, 1u32 << index);
        for &(row, row_sum) in &rows {
            if value & (1 << (15 - row.leading_zeros())) != 0 {
                value ^= row;
                sum ^= row_sum;
            }
        }
        if value == 0 {
            return None;
        }
        rows.push((value, sum));
    }
    Some(rows)
}

/// Which of the basis vectors behind `rows` sum to `value` (a bit mask),
/// if any.
fn represent(rows: &[(GfElement, u32)], value: GfElement) -> Option<u32> {
    let (mut value, mut sum) = (value, 0u32);
    for &(row, row_sum) in rows {
        if value & (1 << (15 - row.leading_zeros())) != 0 {
            value ^= row;
            sum ^= row_sum;
        }
    }
    (value == 0).then_some(sum)
}

/// `out ← Σ_s k_s · S_s` as `evaluation` says (`out.len()` a multiple of
/// [`CHUNK_BYTES`]; a source shorter than `out` counts as zero-padded, a
/// longer one is cut), piece by piece: each term's sources XORed into a
/// scratch piece in one pass and multiplied there, then the pieces and
/// the sources of `b = 1` XORed into the output; the CRC32C of the first
/// `crc_bytes` of the result, each piece's taken as it is made.
fn combine(out: &mut [u8], evaluation: &Evaluation, sources: &[&[u8]], crc_bytes: usize) -> u32 {
    combine_in(out, evaluation, sources, crc_bytes, &mut Vec::new())
}

/// [`combine`] with its per-term scratch pieces in `scratch`, grown as
/// needed and overwritten (so a caller that combines many times, as
/// [`ParityEncoding::encode`] does per window, allocates them once).
fn combine_in(
    out: &mut [u8],
    evaluation: &Evaluation,
    sources: &[&[u8]],
    crc_bytes: usize,
    scratch: &mut Vec<[u8; CHUNK_BYTES]>,
) -> u32 {
    assert!(out.len().is_multiple_of(CHUNK_BYTES), "a shard is whole chunks");
    let terms = evaluation.terms.len();
    if scratch.len() < PASS_CHUNKS * terms {
        scratch.resize(PASS_CHUNKS * terms, [0u8; CHUNK_BYTES]);
    }
    let scratch = &mut scratch[..PASS_CHUNKS * terms];
    let mut crc = 0u32;
    let mut at = 0;
    while at < out.len() {
        let end = (at + PASS_BYTES).min(out.len());
        let piece = &mut out[at..end];
        let terms_with = evaluation.terms.iter().zip(&evaluation.multipliers);
        for (((_, members), multiplier), product) in terms_with.zip(scratch.chunks_mut(PASS_CHUNKS)) {
            let product = &mut product[..piece.len() / CHUNK_BYTES];
            let (mut full, mut partial) = (Vec::with_capacity(members.len()), Vec::new());
            for &member in members {
                let bytes = if member == 0 { &piece[..] } else { sources[member - 1] };
                slice_of(bytes, member == 0, at, end, &mut full, &mut partial);
            }
            xor_members(product.as_flattened_mut(), false, &full, &partial);
            multiplier.apply(product);
        }
        let (mut full, mut partial) = (Vec::with_capacity(terms + evaluation.ones.len()), Vec::new());
        full.extend(scratch.chunks(PASS_CHUNKS).map(|product| &product.as_flattened()[..piece.len()]));
        for &member in evaluation.ones.iter().filter(|&&member| member != 0) {
            slice_of(sources[member - 1], false, at, end, &mut full, &mut partial);
        }
        xor_members(piece, evaluation.ones.contains(&0), &full, &partial);
        if at < crc_bytes {
            crc = wire::crc::crc32c_append(crc, &out[at..end.min(crc_bytes)]);
        }
        at = end;
    }
    crc
}

/// A member's bytes in the piece `at..end`: whole (`own`: the piece
/// itself), or the prefix a shorter source reaches into it, or nothing.
fn slice_of<'a>(
    bytes: &'a [u8],
    own: bool,
    at: usize,
    end: usize,
    full: &mut Vec<&'a [u8]>,
    partial: &mut Vec<&'a [u8]>,
) {
    if own {
        full.push(bytes);
    } else if bytes.len() >= end {
        full.push(&bytes[at..end]);
    } else if bytes.len() > at {
        partial.push(&bytes[at..]);
    }
}

/// `dst ←` (or `^=`, when `add`) the XOR of `full` (each `dst`'s length)
/// and of `partial` (each shorter, zero-padded), one pass over `dst` for
/// the whole ones.
fn xor_members(dst: &mut [u8], add: bool, full: &[&[u8]], partial: &[&[u8]]) {
    if add {
        crate::read::xor_add(dst, full);
    } else if full.is_empty() {
        dst.fill(0);
    } else {
        crate::read::xor_set(dst, full);
    }
    for bytes in partial {
        crate::read::xor_add(&mut dst[..bytes.len()], &[bytes]);
    }
}

/// Whether [`Multiplier`] multiplies with SIMD on this CPU (SSSE3, AVX2
/// or GFNI, or the library's NEON on aarch64): the read path prefers the
/// one-parity rebuild only then (without SIMD a multiply costs more than
/// fetching every parity block and XORing).
pub fn fast() -> bool {
    Path::best() != Path::Scalar
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

    /// Each multiply path gives the library's own engine's product
    /// (`DefaultEngine::mul`, whatever SIMD it picks, and `Naive`) for
    /// random constants (0, 1 and the largest logarithm among them) over
    /// random chunks.
    #[test]
    fn the_multiply_is_the_librarys_on_every_path() {
        let library = DefaultEngine::new();
        let data: Vec<[u8; CHUNK_BYTES]> = test_bytes(CHUNK_BYTES * 37, 11).as_chunks::<CHUNK_BYTES>().0.to_vec();
        let mut logs: Vec<GfElement> = vec![0, 1, GF_MODULUS - 1];
        let mut state = 0x9e37_79b9_u32;
        logs.extend((0..40).map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 16) as GfElement % GF_MODULUS
        }));
        let paths = Path::all();
        assert!(paths.contains(&Path::best()));
        for log in logs {
            let mut expected = data.clone();
            library.mul(&mut expected, log);
            let mut naive = data.clone();
            Naive::new().mul(&mut naive, log);
            assert_eq!(naive, expected, "log {log}");
            let multiplier = Multiplier::new(Factor::Log(log));
            for &path in &paths {
                let mut product = data.clone();
                multiplier.apply_with(path, &mut product);
                assert_eq!(product, expected, "log {log}, {path:?}");
            }
        }
        for &path in &paths {
            let mut product = data.clone();
            Multiplier::new(Factor::Zero).apply_with(path, &mut product);
            assert!(product.as_flattened().iter().all(|&byte| byte == 0), "{path:?}");
        }
    }

    /// The own encode gives `reed_solomon_simd::encode`'s parity, byte for
    /// byte, for every D+P a block span allows (D ≥ 2, P ≥ 1, D+P ≤ 16),
    /// over random shard lengths (one chunk to several windows) with a
    /// short last data block, and the CRC32C of every block.
    #[test]
    fn the_own_encode_is_the_librarys_for_every_code() {
        use wire::limits::SPAN_BLOCKS_MAX;
        let mut state = 0x853c_49e6_748f_ea9b_u64;
        let mut next = move |bound: usize| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % bound
        };
        for d in 2..SPAN_BLOCKS_MAX {
            for p in 1..=SPAN_BLOCKS_MAX - d {
                let encoding = ParityEncoding::plan(d, p).unwrap_or_else(|| panic!("{d}+{p} has a plan"));
                for round in 0..3 {
                    let chunks = match round {
                        0 => 1,
                        1 => 1 + next(PASS_CHUNKS),
                        _ => ENCODE_WINDOW_BYTES / CHUNK_BYTES + 1 + next(4 * PASS_CHUNKS),
                    };
                    let shard = chunks * CHUNK_BYTES;
                    let short = shard - next(CHUNK_BYTES.min(shard - 1) + 1).min(shard - 1);
                    let seed = (d * 100 + p * 10 + round) as u64;
                    let mut data: Vec<Vec<u8>> = (0..d).map(|i| test_bytes(shard, seed * 31 + i as u64)).collect();
                    data[d - 1][short..].fill(0);
                    let expected = reed_solomon_simd::encode(d, p, &data).expect("library encode");
                    let lengths: Vec<usize> = (0..d).map(|i| if i == d - 1 { short } else { shard }).collect();
                    let blocks: Vec<&[u8]> = data.iter().zip(&lengths).map(|(block, &len)| &block[..len]).collect();
                    let mut parity: Vec<Vec<u8>> = (0..p).map(|j| vec![0xa5 ^ j as u8; shard]).collect();
                    let crcs = {
                        let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|block| &mut block[..]).collect();
                        encoding.encode(&blocks, &mut outs)
                    };
                    assert_eq!(parity, expected, "{d}+{p}, {shard}-byte shards, last data block {short}");
                    let want: Vec<u32> = blocks
                        .iter()
                        .copied()
                        .chain(parity.iter().map(|block| &block[..]))
                        .map(wire::crc::crc32c)
                        .collect();
                    assert_eq!(crcs, want, "{d}+{p} CRCs");
                }
            }
        }
        assert!(ParityEncoding::plan(1, 1).is_none() && ParityEncoding::plan(4, 0).is_none());
    }

    /// The reference engine's encode (the probes') is the library's
    /// `encode`, byte for byte.
    #[test]
    fn the_probes_encode_as_the_library_does() {
        for (d, p) in [(4, 2), (2, 1), (6, 3), (10, 4)] {
            let data = probe_shards(d, CHUNK_BYTES * 5);
            assert_eq!(encode_naive(p, &data), reed_solomon_simd::encode(d, p, &data).ok(), "{d}+{p}");
        }
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

    /// Each evaluation adds up to its coefficients (`k_s` is the sum of
    /// the `b_j` whose group holds `s`), with no more multiplies than the
    /// GF(2) rank allows: random sets of 1 to 16 constants, with zeros,
    /// repeats and 1 among them, searched and greedy alike.
    #[test]
    fn an_evaluation_sums_to_its_coefficients_with_the_fewest_multiplies() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..400 {
            let count = 1 + (round % 16);
            let coefficients: Vec<Factor> = (0..count)
                .map(|_| match next() % 8 {
                    0 => Factor::Zero,
                    1 => Factor::Log(0),
                    // Few distinct constants, so some sets have a low rank.
                    2 | 3 => Factor::Log((next() % 4) as GfElement * 4369),
                    _ => Factor::Log((next() % u64::from(GF_MODULUS)) as GfElement),
                })
                .collect();
            let evaluation = Evaluation::new(&coefficients);
            let one = Factor::Log(0).value();
            for (s, coefficient) in coefficients.iter().enumerate() {
                let mut sum = if evaluation.ones.contains(&s) { one } else { 0 };
                for (factor, members) in &evaluation.terms {
                    if members.contains(&s) {
                        sum ^= factor.value();
                    }
                }
                assert_eq!(sum, coefficient.value(), "{coefficients:?}: {evaluation:?}");
            }
            let mut spanned = vec![one];
            for coefficient in &coefficients {
                let mut with = spanned.clone();
                with.push(coefficient.value());
                if coefficient.value() != 0 && echelon(&with).is_some() {
                    spanned = with;
                }
            }
            assert_eq!(evaluation.terms.len(), spanned.len() - 1, "{coefficients:?}: {evaluation:?}");
            assert!(evaluation.terms.iter().all(|(factor, members)| *factor != Factor::Log(0) && !members.is_empty()));
        }
    }

    /// The library's RS 4+2 constants lie in GF(16): a rebuild from either
    /// parity block takes 2 multiplies, not 4; RS 2+1 none (its parity is
    /// the XOR); the larger codes 3.
    #[test]
    fn the_rebuild_takes_fewer_multiplies_than_blocks() {
        for (d, p, multiplies) in [(4, 2, 2), (2, 1, 0), (6, 3, 3), (8, 2, 3), (10, 4, 3)] {
            for parity_index in 0..p {
                for missing in 0..d {
                    let plan = SingleErasure::plan(d, p, parity_index, missing).expect("plan");
                    assert_eq!(plan.multiplies(), multiplies, "{d}+{p} p{parity_index} m{missing}");
                }
            }
        }
    }
}
