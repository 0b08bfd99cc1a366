//! Identifiers: inodes, shards, blocks, block services, and eggs time.
//!
//! Ids are stored little-endian and unaligned (`zerocopy` byte-order types),
//! so the same type is both the in-memory value and its wire form.

use core::fmt;
use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::limits::NS_PER_SECOND;

macro_rules! u64_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(transparent)]
        pub struct $name(U64);

        impl $name {
            pub const fn new(value: u64) -> Self {
                Self(U64::new(value))
            }
            pub const fn get(self) -> u64 {
                self.0.get()
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> core::cmp::Ordering {
                self.get().cmp(&other.get())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(0x{:016x})", stringify!($name), self.get())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "0x{:016x}", self.get())
            }
        }
    };
}

/// Type of an inode, bits 62–61 of its id.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, zerocopy::TryFromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(u8)]
pub enum InodeType {
    Directory = 0,
    File = 1,
    Symlink = 2,
}

impl InodeType {
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Directory),
            1 => Some(Self::File),
            2 => Some(Self::Symlink),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Directory => "DIRECTORY",
            Self::File => "FILE",
            Self::Symlink => "SYMLINK",
        }
    }
}

/// A metadata shard, 0..=255: the shard owning an inode is encoded in its id.
pub type ShardId = u8;

u64_id!(
    /// An inode id: bit 63 owning flag (only inside directory entries), bits
    /// 62–61 type, bits 60–53 shard, bits 52–0 a per-shard, per-type counter.
    /// Zero is the null inode ("no parent", "nothing" in the dead map).
    InodeId
);

const INODE_OWNING_BIT: u64 = 1 << 63;
const INODE_TYPE_SHIFT: u32 = 61;
const INODE_SHARD_SHIFT: u32 = 53;
/// Largest per-shard inode counter (53 bits).
pub const INODE_COUNTER_MAX: u64 = (1 << INODE_SHARD_SHIFT) - 1;

impl InodeId {
    pub const NULL: InodeId = InodeId::new(0);
    /// The root directory: type directory, shard 1, counter 0.
    pub const ROOT: InodeId = InodeId::new(0x0020_0000_0000_0000);

    /// Builds an id; `None` when the counter does not fit in 53 bits.
    pub const fn compose(inode_type: InodeType, shard: ShardId, counter: u64) -> Option<Self> {
        if counter > INODE_COUNTER_MAX {
            return None;
        }
        Some(Self::new(((inode_type as u64) << INODE_TYPE_SHIFT) | ((shard as u64) << INODE_SHARD_SHIFT) | counter))
    }

    pub const fn is_null(self) -> bool {
        self.get() == 0
    }

    /// Type bits; `None` for the reserved type 3.
    pub const fn inode_type(self) -> Option<InodeType> {
        InodeType::from_bits(((self.get() >> INODE_TYPE_SHIFT) & 0b11) as u8)
    }

    pub const fn shard(self) -> ShardId {
        ((self.get() >> INODE_SHARD_SHIFT) & 0xff) as u8
    }

    pub const fn counter(self) -> u64 {
        self.get() & INODE_COUNTER_MAX
    }

    pub const fn is_owning(self) -> bool {
        self.get() & INODE_OWNING_BIT != 0
    }

    /// This id with the owning bit set or cleared.
    pub const fn with_owning(self, owning: bool) -> Self {
        if owning { Self::new(self.get() | INODE_OWNING_BIT) } else { Self::new(self.get() & !INODE_OWNING_BIT) }
    }

    /// The plain id, without the owning bit.
    pub const fn without_owning(self) -> Self {
        self.with_owning(false)
    }
}

u64_id!(
    /// A block id: unique per shard and time based. The low byte is the shard
    /// that made it; the rest is at least the eggs time of its creation.
    BlockId
);

impl BlockId {
    /// The id for a block made by `shard` at `time`.
    pub const fn compose(time: EggsTime, shard: ShardId) -> Self {
        Self::new((time.get() & !0xff) | shard as u64)
    }

    pub const fn shard(self) -> ShardId {
        (self.get() & 0xff) as u8
    }

    /// The creation time embedded in the id (rounded down to 256 ns).
    pub const fn time(self) -> EggsTime {
        EggsTime::new(self.get() & !0xff)
    }

    /// Whether a block service with clock `now` may create this block.
    pub const fn in_creation_window(self, now: EggsTime) -> bool {
        let t = self.time().get();
        let now = now.get();
        t.saturating_add(crate::limits::BLOCK_ID_PAST_WINDOW_NS) >= now
            && t <= now.saturating_add(crate::limits::BLOCK_ID_FUTURE_WINDOW_NS)
    }

    /// The next id after `previous` for `shard` at `now`: strictly increasing
    /// even when the clock stands still or steps back.
    pub const fn next(previous: BlockId, now: EggsTime, shard: ShardId) -> Self {
        let candidate = Self::compose(now, shard);
        if candidate.get() > previous.get() {
            candidate
        } else {
            Self::new(((previous.get() & !0xff) + 0x100) | shard as u64)
        }
    }
}

u64_id!(
    /// A block service's id, derived from its secret key
    /// ([`crate::mac::block_service_id`]) so that a disk keeps its id across
    /// restarts and address changes.
    BlockServiceId
);

u64_id!(
    /// Nanoseconds since the eggs epoch, 2020-01-01T00:00:00Z.
    EggsTime
);

/// The eggs epoch in Unix nanoseconds.
pub const EGGS_EPOCH_UNIX_NS: u64 = 1_577_836_800_000_000_000;

impl EggsTime {
    pub const ZERO: EggsTime = EggsTime::new(0);

    /// `None` before 2020.
    pub const fn from_unix_ns(unix_ns: u64) -> Option<Self> {
        match unix_ns.checked_sub(EGGS_EPOCH_UNIX_NS) {
            Some(ns) => Some(Self::new(ns)),
            None => None,
        }
    }

    pub const fn unix_ns(self) -> u64 {
        self.get().saturating_add(EGGS_EPOCH_UNIX_NS)
    }

    /// The wall clock now (zero if the clock is before 2020).
    pub fn now() -> Self {
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
            .unwrap_or(0);
        Self::from_unix_ns(unix_ns).unwrap_or(Self::ZERO)
    }

    pub const fn saturating_add_ns(self, ns: u64) -> Self {
        Self::new(self.get().saturating_add(ns))
    }

    pub const fn saturating_sub_ns(self, ns: u64) -> Self {
        Self::new(self.get().saturating_sub(ns))
    }

    /// Human-readable UTC form, `2024-05-01T12:00:00.000000001Z`.
    pub fn human(self) -> String {
        format!("{}.{:09}Z", self.utc_seconds(), self.unix_ns() % NS_PER_SECOND)
    }

    /// The same to the second, `2024-05-01T12:00:00Z`.
    pub fn human_seconds(self) -> String {
        format!("{}Z", self.utc_seconds())
    }

    /// `2024-05-01T12:00:00`: the UTC date and time of day, to the second.
    fn utc_seconds(self) -> String {
        let seconds = self.unix_ns() / NS_PER_SECOND;
        let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
        let second_of_day = seconds % 86_400;
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            second_of_day / 3600,
            (second_of_day / 60) % 60,
            second_of_day % 60
        )
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_inode_layout() {
        let root = InodeId::ROOT;
        assert_eq!(root.inode_type(), Some(InodeType::Directory));
        assert_eq!(root.shard(), 1);
        assert_eq!(root.counter(), 0);
        assert_eq!(InodeId::compose(InodeType::Directory, 1, 0), Some(root));
        assert!(!root.is_owning());
        assert_eq!(root.with_owning(true).without_owning(), root);
    }

    #[test]
    fn prototype_readme_inode_is_a_file_on_shard_1() {
        let inode = InodeId::new(0x2020_0000_0000_0003);
        assert_eq!(inode.inode_type(), Some(InodeType::File));
        assert_eq!(inode.shard(), 1);
        assert_eq!(inode.counter(), 3);
    }

    #[test]
    fn inode_counter_overflow_is_refused() {
        assert!(InodeId::compose(InodeType::File, 0, INODE_COUNTER_MAX + 1).is_none());
    }

    #[test]
    fn block_ids_strictly_increase_when_the_clock_stalls() {
        let now = EggsTime::new(1_000_000);
        let first = BlockId::next(BlockId::new(0), now, 7);
        let second = BlockId::next(first, now, 7);
        assert!(second > first);
        assert_eq!(second.shard(), 7);
        assert!(first.in_creation_window(now));
    }

    #[test]
    fn block_id_window() {
        let now = EggsTime::new(100 * 3600 * NS_PER_SECOND);
        let old = BlockId::compose(now.saturating_sub_ns(23 * 3600 * NS_PER_SECOND), 0);
        let future = BlockId::compose(now.saturating_add_ns(3 * 3600 * NS_PER_SECOND), 0);
        assert!(!old.in_creation_window(now));
        assert!(!future.in_creation_window(now));
    }

    #[test]
    fn human_time() {
        assert_eq!(EggsTime::ZERO.human(), "2020-01-01T00:00:00.000000000Z");
        // 2024-02-29T12:34:56.5Z, a leap day.
        let t = EggsTime::from_unix_ns(1_709_210_096_500_000_000).unwrap();
        assert_eq!(t.human(), "2024-02-29T12:34:56.500000000Z");
        assert_eq!(t.human_seconds(), "2024-02-29T12:34:56Z");
    }
}
