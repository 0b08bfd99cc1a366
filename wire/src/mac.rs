//! Keys and MACs.
//!
//! `MAC(k, m)` is AES-128 in CBC mode with a zero IV over `m` zero-padded to a
//! multiple of 16 bytes, truncated to its first 8 bytes (DESIGN.md §6). The
//! block-service messages use it exactly so, for compatibility. Our own
//! variable-length messages (privileged shard requests, authenticated shuckle
//! requests) MAC `len(m) as u32 LE ‖ m` instead: with the length in front, a
//! message can be neither extended nor padded into another one.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use core::fmt;

use crate::ids::{BlockId, BlockServiceId, InodeId};

/// Bytes of a secret key.
pub const KEY_BYTES: usize = 16;
/// Bytes of a truncated MAC.
pub const MAC_BYTES: usize = 8;

/// A truncated MAC: certificates, proofs, cookies.
pub type Mac = [u8; MAC_BYTES];

/// A 16-byte secret: a block service's key, the cluster key, a shard secret.
/// Its `Debug` never shows the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretKey(pub [u8; KEY_BYTES]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A key ready to MAC with: the AES key schedule is computed once.
#[derive(Clone)]
pub struct MacKey {
    cipher: Aes128,
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    pub fn new(key: &SecretKey) -> Self {
        Self { cipher: Aes128::new(GenericArray::from_slice(&key.0)) }
    }

    /// Encrypts one block in place (raw AES-128).
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        let block = GenericArray::from_mut_slice(block);
        self.cipher.encrypt_block(block);
    }

    /// `MAC(k, parts[0] ‖ parts[1] ‖ …)`, zero-padded, without allocating.
    pub fn mac(&self, parts: &[&[u8]]) -> Mac {
        let mut state = [0u8; 16];
        let mut filled = 0usize;
        let mut any = false;
        for part in parts {
            for &byte in *part {
                state[filled] ^= byte;
                filled += 1;
                any = true;
                if filled == 16 {
                    self.encrypt_block(&mut state);
                    filled = 0;
                }
            }
        }
        // Zero padding: XOR with zeros is a no-op, so only the final
        // encryption of a partial (or empty) block remains.
        if filled > 0 || !any {
            self.encrypt_block(&mut state);
        }
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&state[..MAC_BYTES]);
        mac
    }

    /// MAC of a variable-length message of ours: `MAC(k, len ‖ message)`.
    pub fn mac_message(&self, message: &[u8]) -> Mac {
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX).to_le_bytes();
        self.mac(&[&len, message])
    }

    /// Constant-time check of `mac_message`.
    pub fn verify_message(&self, message: &[u8], mac: &Mac) -> bool {
        constant_time_eq(&self.mac_message(message), mac)
    }

    /// The write certificate a shard hands to a client for one block:
    /// `MAC(k, 'w' ‖ block_id ‖ crc ‖ size)`.
    pub fn write_certificate(&self, block_id: BlockId, crc: u32, size: u32) -> Mac {
        self.mac(&[b"w", &block_id.get().to_le_bytes(), &crc.to_le_bytes(), &size.to_le_bytes()])
    }

    /// The write proof a block service returns: `MAC(k, 'W' ‖ block_id)`.
    pub fn write_proof(&self, block_id: BlockId) -> Mac {
        self.mac(&[b"W", &block_id.get().to_le_bytes()])
    }

    /// The erase certificate: `MAC(k, 'e' ‖ block_id)`.
    pub fn erase_certificate(&self, block_id: BlockId) -> Mac {
        self.mac(&[b"e", &block_id.get().to_le_bytes()])
    }

    /// The erase proof: `MAC(k, 'E' ‖ block_id)`.
    pub fn erase_proof(&self, block_id: BlockId) -> Mac {
        self.mac(&[b"E", &block_id.get().to_le_bytes()])
    }

    /// The cookie of an eden file, with the shard's secret: only the creator,
    /// who was handed it, can add spans to the file or link it.
    pub fn eden_cookie(&self, inode: InodeId) -> Mac {
        self.mac(&[b"cookie", &inode.get().to_le_bytes()])
    }

    /// Hides a block service key for the authenticated shard listing:
    /// `key XOR AES(cluster key, block_service_id ‖ nonce)`, a one-time pad as
    /// long as the requester never repeats a nonce. Its own inverse.
    pub fn wrap_key(&self, key: &SecretKey, block_service_id: BlockServiceId, nonce: u64) -> SecretKey {
        let mut pad = [0u8; 16];
        pad[..8].copy_from_slice(&block_service_id.get().to_le_bytes());
        pad[8..].copy_from_slice(&nonce.to_le_bytes());
        self.encrypt_block(&mut pad);
        let mut out = key.0;
        for (o, p) in out.iter_mut().zip(pad) {
            *o ^= p;
        }
        SecretKey(out)
    }
}

/// The id of the block service whose key is `key`: knowing an id reveals
/// nothing of the key.
pub fn block_service_id(key: &SecretKey) -> BlockServiceId {
    BlockServiceId::new(u64::from_le_bytes(MacKey::new(key).mac(&[b"eggsfs block service id"])))
}

/// Compares MACs without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn key(s: &str) -> SecretKey {
        SecretKey(hex(s).try_into().unwrap())
    }

    // FIPS-197 appendix C.1 (AES-128) and appendix B.
    #[test]
    fn fips197_aes128() {
        let k = MacKey::new(&key("000102030405060708090a0b0c0d0e0f"));
        let mut block: [u8; 16] = hex("00112233445566778899aabbccddeeff").try_into().unwrap();
        k.encrypt_block(&mut block);
        assert_eq!(block.to_vec(), hex("69c4e0d86a7b0430d8cdb78070b4c55a"));

        let k = MacKey::new(&key("2b7e151628aed2a6abf7158809cf4f3c"));
        let mut block: [u8; 16] = hex("3243f6a8885a308d313198a2e0370734").try_into().unwrap();
        k.encrypt_block(&mut block);
        assert_eq!(block.to_vec(), hex("3925841d02dc09fbdc118597196a0b32"));
    }

    // One block: the MAC is the first 8 bytes of AES(k, m).
    #[test]
    fn mac_of_one_block_is_truncated_aes() {
        let k = MacKey::new(&key("000102030405060708090a0b0c0d0e0f"));
        let mac = k.mac(&[&hex("00112233445566778899aabbccddeeff")]);
        assert_eq!(mac.to_vec(), hex("69c4e0d86a7b0430"));
    }

    // Two blocks: CBC chaining, then zero padding of a short tail. Expected
    // values are from NIST SP 800-38A F.2.1 (CBC-AES128 with the IV moved
    // into the first plaintext block).
    #[test]
    fn mac_chains_and_pads() {
        let k = MacKey::new(&key("2b7e151628aed2a6abf7158809cf4f3c"));
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let p1 = hex("6bc1bee22e409f96e93d7e117393172a");
        let first: Vec<u8> = p1.iter().zip(&iv).map(|(a, b)| a ^ b).collect();
        let p2 = hex("ae2d8a571e03ac9c9eb76fac45af8e51");
        // c2 = 5086cb9b507219ee95db113a917678b2 in the standard.
        assert_eq!(k.mac(&[&first, &p2]).to_vec(), hex("5086cb9b507219ee"));
        // Splitting the input differently gives the same MAC.
        assert_eq!(k.mac(&[&first[..5], &first[5..], &p2]).to_vec(), hex("5086cb9b507219ee"));
        // A short message equals the same message with explicit zero padding.
        assert_eq!(k.mac(&[b"abc"]), k.mac(&[b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0"]));
    }

    #[test]
    fn block_protocol_macs_are_distinct_and_stable() {
        let k = MacKey::new(&key("00000000000000000000000000000001"));
        let block = BlockId::new(0x0123_4567_89ab_cdef);
        let certificate = k.write_certificate(block, 0xdead_beef, 42);
        let expected = k.mac(&[&hex("77efcdab8967452301efbeadde2a000000")]);
        assert_eq!(certificate, expected);
        assert_ne!(k.write_proof(block), k.erase_proof(block));
        assert_ne!(k.erase_certificate(block), k.erase_proof(block));
    }

    #[test]
    fn wrap_key_round_trips_and_hides() {
        let cluster = MacKey::new(&key("0f0e0d0c0b0a09080706050403020100"));
        let secret = key("00112233445566778899aabbccddeeff");
        let id = block_service_id(&secret);
        let wrapped = cluster.wrap_key(&secret, id, 99);
        assert_ne!(wrapped, secret);
        assert_eq!(cluster.wrap_key(&wrapped, id, 99), secret);
        assert_ne!(cluster.wrap_key(&secret, id, 100), wrapped);
    }

    #[test]
    fn message_mac_binds_length() {
        let k = MacKey::new(&key("00000000000000000000000000000002"));
        assert_ne!(k.mac_message(b"ab"), k.mac_message(b"ab\0"));
        assert!(k.verify_message(b"ab", &k.mac_message(b"ab")));
    }

    #[test]
    fn secrets_are_not_printed() {
        let secret = key("00112233445566778899aabbccddeeff");
        assert!(!format!("{secret:?}").contains("11"));
    }
}
