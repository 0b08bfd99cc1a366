//! CRC32C (Castagnoli), the checksum of blocks and spans.
//!
//! On the wire a CRC is 4 bytes: the u32 in little-endian order. The `crc32c`
//! crate uses the SSE4.2 / ARMv8 CRC instructions where present; buffers of
//! [`FOLDING_BYTES_MIN`] and more go through `crc-fast`, which folds with
//! carry-less multiplies (VPCLMULQDQ where the CPU has it) beside those
//! instructions: 2.2× `crc32c`'s rate on this machine's cores (31–39
//! against 15–18 GB/s a core, 16 KiB to 4 MiB buffers), where the client's
//! block checks were 12–18 % of its CPU (issue 11, session 12).

use crc_fast::CrcAlgorithm::Crc32Iscsi;

/// Below this many bytes `crc32c`'s instructions alone are as fast (the
/// folding's setup is not paid back).
pub const FOLDING_BYTES_MIN: usize = 1024;

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    if bytes.len() < FOLDING_BYTES_MIN {
        return crc32c::crc32c(bytes);
    }
    // CRC-32/ISCSI is CRC32C; a 32-bit CRC fits its u64.
    crc_fast::checksum(Crc32Iscsi, bytes) as u32
}

/// CRC32C of `previous ‖ bytes`, given `crc` = CRC32C of `previous`.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    if bytes.len() < FOLDING_BYTES_MIN {
        return crc32c::crc32c_append(crc, bytes);
    }
    // The digest's state is the register before the final inversion.
    let mut digest = crc_fast::Digest::new_with_init_state(Crc32Iscsi, u64::from(!crc));
    digest.update(bytes);
    digest.finalize() as u32
}

/// CRC32C of `a ‖ b` from `crc_a` = CRC32C(a), `crc_b` = CRC32C(b) and the
/// length of `b`. Lets a reader check a span's CRC from its blocks' CRCs.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    crc32c::crc32c_combine(crc_a, crc_b, len_b as usize)
}

/// CRC32C of `len` zero bytes (the CRC of a zero-fill span), in
/// O(log len) time.
pub fn crc32c_zeros(len: u64) -> u32 {
    const CHUNK: usize = 4096;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    if len <= CHUNK as u64 {
        return crc32c(&ZEROS[..len as usize]);
    }
    // Double a run of zeros until it covers len: crc(z‖z) = combine(crc(z), crc(z), |z|).
    let mut result: Option<(u32, u64)> = None;
    let mut run_crc = crc32c(&ZEROS[..1]);
    let mut run_len = 1u64;
    let mut remaining = len;
    while remaining > 0 {
        if remaining & 1 == 1 {
            result = Some(match result {
                None => (run_crc, run_len),
                Some((crc, l)) => (crc32c_combine(crc, run_crc, run_len), l + run_len),
            });
        }
        remaining >>= 1;
        if remaining > 0 {
            run_crc = crc32c_combine(run_crc, run_crc, run_len);
            run_len *= 2;
        }
    }
    result.map_or(0, |(crc, _)| crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3720, appendix B.4, with the CRC shown as the little-endian bytes
    // that travel on the wire.
    #[test]
    fn rfc3720_vectors() {
        assert_eq!(crc32c(&[0u8; 32]).to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(crc32c(&[0xffu8; 32]).to_le_bytes(), [0x43, 0xab, 0xa8, 0x62]);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending).to_le_bytes(), [0x4e, 0x79, 0xdd, 0x46]);
        let descending: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&descending).to_le_bytes(), [0x5c, 0xdb, 0x3f, 0x11]);
    }

    #[test]
    fn combine_matches_concatenation() {
        let a = b"hello, ";
        let b = b"world and more bytes";
        let whole = [&a[..], &b[..]].concat();
        assert_eq!(crc32c_combine(crc32c(a), crc32c(b), b.len() as u64), crc32c(&whole));
        assert_eq!(crc32c_append(crc32c(a), b), crc32c(&whole));
    }

    /// Both paths (short buffers through `crc32c`, long ones folded) give
    /// the `crc32c` crate's CRC, whole and appended at every split.
    #[test]
    fn folded_and_short_paths_agree() {
        let bytes: Vec<u8> = (0..(3 * FOLDING_BYTES_MIN + 77)).map(|i| (i * 131 % 251) as u8).collect();
        for len in [0, 1, FOLDING_BYTES_MIN - 1, FOLDING_BYTES_MIN, bytes.len()] {
            assert_eq!(crc32c(&bytes[..len]), crc32c::crc32c(&bytes[..len]), "len {len}");
        }
        for split in [0, 5, FOLDING_BYTES_MIN - 1, FOLDING_BYTES_MIN + 3, 2 * FOLDING_BYTES_MIN + 1, bytes.len()] {
            let (a, b) = bytes.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c::crc32c(&bytes), "split {split}");
        }
    }

    #[test]
    fn zeros() {
        for len in [0u64, 1, 10, 4096, 4097, 100_000, 1 << 20] {
            assert_eq!(crc32c_zeros(len), crc32c(&vec![0u8; len as usize]), "len {len}");
        }
    }
}
