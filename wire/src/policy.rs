//! The directory policy blob: how clients write files below a directory, and
//! how long dead versions below it are kept.
//!
//! Shards store the blob opaquely (DESIGN.md §3); clients and gcd take it
//! from the nearest ancestor that sets one. Version 1 layout, 8 bytes:
//!
//! ```text
//! version u8 = 1 | storage_class u8 | parity u8 | reserved u8 = 0 | span_size_bytes u32
//! ```
//!
//! Version 2 adds the retention of dead versions, 20 bytes:
//!
//! ```text
//! version u8 = 2 | storage_class u8 | parity u8 | reserved u8 = 0 | span_size_bytes u32
//!   | retention_secs u64 | retention_versions u32
//! ```
//!
//! A policy whose retention is the default is encoded as version 1, so
//! blobs written before retention existed keep their exact bytes and mean
//! the same thing.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::limits::{BLOCK_SIZE_BYTES_MAX, NS_PER_SECOND};
use crate::span::{Parity, STORAGE_CLASS_BLOCKS_MIN};

pub const POLICY_VERSION: u8 = 1;
pub const POLICY_VERSION_RETENTION: u8 = 2;

/// Dead versions are kept at least this long after they died unless a
/// directory says otherwise: a week to notice a mistaken delete.
pub const RETENTION_SECS_DEFAULT: u64 = 7 * 24 * 3600;

/// How long dead versions below a directory are kept (gcd purges the rest).
///
/// A dead version is purged only when it died more than `secs` ago **and**
/// it is not among the `versions` newest dead versions of its name
/// (`versions` = 0: no count rule).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Retention {
    pub secs: u64,
    pub versions: u32,
}

impl Retention {
    pub const DEFAULT: Retention = Retention { secs: RETENTION_SECS_DEFAULT, versions: 0 };

    pub fn ns(&self) -> u64 {
        self.secs.saturating_mul(NS_PER_SECOND)
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A decoded, valid policy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Policy {
    pub storage_class: u8,
    pub parity: Parity,
    /// Largest span the client writes; a multiple of D keeps blocks equal.
    pub span_size_bytes: u32,
    pub retention: Retention,
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

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct PolicyV2 {
    v1: PolicyV1,
    retention_secs: U64,
    retention_versions: U32,
}

pub const POLICY_V1_BYTES: usize = 8;
pub const POLICY_V2_BYTES: usize = 20;
const _: () = assert!(core::mem::size_of::<PolicyV1>() == POLICY_V1_BYTES);
const _: () = assert!(core::mem::size_of::<PolicyV2>() == POLICY_V2_BYTES);
const _: () = assert!(POLICY_V2_BYTES <= crate::limits::POLICY_BYTES_MAX);

impl Policy {
    /// `None` for an invalid combination. Retention is the default.
    pub fn new(storage_class: u8, parity: Parity, span_size_bytes: u32) -> Option<Self> {
        let policy = Self { storage_class, parity, span_size_bytes, retention: Retention::DEFAULT };
        policy.is_valid().then_some(policy)
    }

    /// The same policy with another retention.
    pub fn with_retention(self, retention: Retention) -> Self {
        Self { retention, ..self }
    }

    fn is_valid(&self) -> bool {
        self.storage_class >= STORAGE_CLASS_BLOCKS_MIN
            && self.parity.is_valid_for_blocks()
            && self.span_size_bytes > 0
            && (self.span_size_bytes as u64).div_ceil(self.parity.data_blocks() as u64) <= BLOCK_SIZE_BYTES_MAX as u64
    }

    fn v1(&self, version: u8) -> PolicyV1 {
        PolicyV1 {
            version,
            storage_class: self.storage_class,
            parity: self.parity.0,
            reserved: 0,
            span_size_bytes: U32::new(self.span_size_bytes),
        }
    }

    /// Version 1 bytes when the retention is the default, else version 2.
    pub fn encode(&self) -> Vec<u8> {
        if self.retention == Retention::DEFAULT {
            return self.v1(POLICY_VERSION).as_bytes().to_vec();
        }
        let v2 = PolicyV2 {
            v1: self.v1(POLICY_VERSION_RETENTION),
            retention_secs: U64::new(self.retention.secs),
            retention_versions: U32::new(self.retention.versions),
        };
        v2.as_bytes().to_vec()
    }

    /// `None` for an empty blob (no policy) or one we do not understand.
    pub fn decode(blob: &[u8]) -> Option<Self> {
        let (v1, retention) = match blob.len() {
            POLICY_V1_BYTES => (PolicyV1::read_from_bytes(blob).ok()?, Retention::DEFAULT),
            POLICY_V2_BYTES => {
                let v2 = PolicyV2::read_from_bytes(blob).ok()?;
                let retention = Retention { secs: v2.retention_secs.get(), versions: v2.retention_versions.get() };
                if v2.v1.version != POLICY_VERSION_RETENTION || retention == Retention::DEFAULT {
                    // The default is always written as version 1: one
                    // policy, one encoding.
                    return None;
                }
                (v2.v1, retention)
            }
            _ => return None,
        };
        let expected_version = if blob.len() == POLICY_V1_BYTES { POLICY_VERSION } else { POLICY_VERSION_RETENTION };
        if v1.version != expected_version || v1.reserved != 0 {
            return None;
        }
        Some(Policy::new(v1.storage_class, Parity(v1.parity), v1.span_size_bytes.get())?.with_retention(retention))
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

    #[test]
    fn retention_round_trips_as_version_2() {
        let policy = Policy::new(2, Parity::new(4, 2).unwrap(), 4 << 20)
            .unwrap()
            .with_retention(Retention { secs: 60, versions: 3 });
        let bytes = policy.encode();
        assert_eq!(
            bytes,
            [2, 2, 0x24, 0, 0, 0, 0x40, 0, 60, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0],
            "version 2, retention after the v1 fields"
        );
        assert_eq!(Policy::decode(&bytes), Some(policy));
        // A version 2 blob that spells the default retention, or a v1
        // version byte in a 20-byte blob, is not one we write.
        let mut default_v2 = bytes.clone();
        default_v2[8..16].copy_from_slice(&RETENTION_SECS_DEFAULT.to_le_bytes());
        default_v2[16..20].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Policy::decode(&default_v2), None);
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 1;
        assert_eq!(Policy::decode(&wrong_version), None);
        assert_eq!(Policy::decode(&bytes[..19]), None);
    }
}
