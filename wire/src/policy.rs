//! The directory policy blob: how clients write files below a directory.
//!
//! Shards store the blob opaquely (DESIGN.md §3); clients take it from the
//! nearest ancestor that sets one. Version 1 layout, 8 bytes:
//!
//! ```text
//! version u8 = 1 | storage_class u8 | parity u8 | reserved u8 = 0 | span_size_bytes u32
//! ```

use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::limits::BLOCK_SIZE_BYTES_MAX;
use crate::span::{Parity, STORAGE_CLASS_BLOCKS_MIN};

pub const POLICY_VERSION: u8 = 1;

/// A decoded, valid policy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Policy {
    pub storage_class: u8,
    pub parity: Parity,
    /// Largest span the client writes; a multiple of D keeps blocks equal.
    pub span_size_bytes: u32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct PolicyV1 {
    version: u8,
    storage_class: u8,
    parity: u8,
    reserved: u8,
    span_size_bytes: U32,
}

pub const POLICY_V1_BYTES: usize = 8;
const _: () = assert!(core::mem::size_of::<PolicyV1>() == POLICY_V1_BYTES);
const _: () = assert!(POLICY_V1_BYTES <= crate::limits::POLICY_BYTES_MAX);

impl Policy {
    /// `None` for an invalid combination.
    pub fn new(storage_class: u8, parity: Parity, span_size_bytes: u32) -> Option<Self> {
        let policy = Self { storage_class, parity, span_size_bytes };
        policy.is_valid().then_some(policy)
    }

    fn is_valid(&self) -> bool {
        self.storage_class >= STORAGE_CLASS_BLOCKS_MIN
            && self.parity.is_valid_for_blocks()
            && self.span_size_bytes > 0
            && (self.span_size_bytes as u64).div_ceil(self.parity.data_blocks() as u64) <= BLOCK_SIZE_BYTES_MAX as u64
    }

    pub fn encode(&self) -> [u8; POLICY_V1_BYTES] {
        let v1 = PolicyV1 {
            version: POLICY_VERSION,
            storage_class: self.storage_class,
            parity: self.parity.0,
            reserved: 0,
            span_size_bytes: U32::new(self.span_size_bytes),
        };
        let mut out = [0u8; POLICY_V1_BYTES];
        out.copy_from_slice(v1.as_bytes());
        out
    }

    /// `None` for an empty blob (no policy) or one we do not understand.
    pub fn decode(blob: &[u8]) -> Option<Self> {
        let v1 = PolicyV1::read_from_bytes(blob).ok()?;
        if v1.version != POLICY_VERSION || v1.reserved != 0 {
            return None;
        }
        Policy::new(v1.storage_class, Parity(v1.parity), v1.span_size_bytes.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let policy = Policy::new(2, Parity::new(4, 2).unwrap(), 4 << 20).unwrap();
        assert_eq!(policy.encode(), [1, 2, 0x24, 0, 0, 0, 0x40, 0]);
        assert_eq!(Policy::decode(&policy.encode()), Some(policy));
        assert_eq!(Policy::decode(b""), None);
        assert_eq!(Policy::decode(&[2, 2, 0x24, 0, 0, 0, 0x40, 0]), None);
        assert!(Policy::new(1, Parity::new(4, 2).unwrap(), 1).is_none());
        assert!(Policy::new(2, Parity::new(1, 0).unwrap(), u32::MAX).is_none());
    }
}
