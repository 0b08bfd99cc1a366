//! The directory name hash.
//!
//! Directory entries are ordered by `(hash(name), name)` and listing
//! continuation keys are hashes, so a hash function, once used by a
//! directory, is part of the on-disk and on-wire format forever. A directory
//! records its [`HashMode`]; new modes may be added, existing ones never change.

use md5::{Digest, Md5};

/// How a directory hashes its entry names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum HashMode {
    /// The first 8 bytes of MD5(name), read as a little-endian u64 — the
    /// prototype's function, kept so prototype listings order identically.
    Md5Prefix = 0,
}

impl HashMode {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Md5Prefix),
            _ => None,
        }
    }

    pub fn hash(self, name: &[u8]) -> u64 {
        match self {
            Self::Md5Prefix => {
                let digest = Md5::digest(name);
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&digest[..8]);
                u64::from_le_bytes(prefix)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // MD5("") = d41d8cd98f00b204e9800998ecf8427e, MD5("abc") = 900150983cd24fb0…
    #[test]
    fn md5_prefix_vectors() {
        assert_eq!(HashMode::Md5Prefix.hash(b""), u64::from_le_bytes([0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04]));
        assert_eq!(
            HashMode::Md5Prefix.hash(b"abc"),
            u64::from_le_bytes([0x90, 0x01, 0x50, 0x98, 0x3c, 0xd2, 0x4f, 0xb0])
        );
    }
}
