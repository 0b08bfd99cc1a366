//! What the block service decides about a request, as plain code over the
//! request, the key and the current time (no I/O), and the reasons it
//! refuses one. Every refusal closes the connection without a response, as
//! the prototype did (DESIGN.md §6): the protocol has no error message.

use wire::block::{EraseReq, WriteReq};
use wire::ids::{BlockId, EggsTime};
use wire::limits::BLOCK_SIZE_BYTES_MAX;
use wire::mac::MacKey;

/// Why a request was refused (logged, counted, connection closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown request tag 0x{0:02x}")]
    UnknownTag(u8),
    #[error("connection closed inside a request header")]
    TruncatedHeader,
    #[error("connection closed inside the payload of block {0}")]
    TruncatedPayload(BlockId),
    #[error("bad write certificate for block {0}")]
    BadWriteCertificate(BlockId),
    #[error("bad erase certificate for block {0}")]
    BadEraseCertificate(BlockId),
    #[error("block {block_id} is outside the creation window (block time {block_time}, now {now})")]
    OutsideCreationWindow { block_id: BlockId, block_time: u64, now: u64 },
    #[error("block {block_id} of {size} bytes is over the limit")]
    TooLarge { block_id: BlockId, size: u32 },
    #[error("crc mismatch for block {block_id}: certificate says {expected:08x}, payload has {actual:08x}")]
    CrcMismatch { block_id: BlockId, expected: u32, actual: u32 },
    #[error("block {0} already exists with other contents")]
    Conflict(BlockId),
    #[error("block {0} not found")]
    NotFound(BlockId),
    #[error("block {0} is stored with a size over the protocol's u32")]
    StoredTooLarge(BlockId),
    #[error("request stalled past the timeout")]
    Stalled,
    #[error("request header not complete within the header timeout")]
    HeaderTimeout,
    #[error("connection shed to make room for a new one")]
    Shed,
    #[error("connection idle past the idle timeout")]
    IdleTimeout,
}

impl Refusal {
    /// A short stable name, for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnknownTag(_) => "unknown_tag",
            Self::TruncatedHeader => "truncated_header",
            Self::TruncatedPayload(_) => "truncated_payload",
            Self::BadWriteCertificate(_) | Self::BadEraseCertificate(_) => "bad_mac",
            Self::OutsideCreationWindow { .. } => "outside_window",
            Self::TooLarge { .. } => "too_large",
            Self::CrcMismatch { .. } => "crc_mismatch",
            Self::Conflict(_) => "conflict",
            Self::NotFound(_) => "not_found",
            Self::StoredTooLarge(_) => "stored_too_large",
            Self::Stalled => "stalled",
            Self::HeaderTimeout => "header_timeout",
            Self::Shed => "shed",
            Self::IdleTimeout => "idle_timeout",
        }
    }

    /// Every label, in a fixed order (metrics keep one counter each).
    pub const LABELS: [&'static str; 14] = [
        "unknown_tag",
        "truncated_header",
        "truncated_payload",
        "bad_mac",
        "outside_window",
        "too_large",
        "crc_mismatch",
        "conflict",
        "not_found",
        "stored_too_large",
        "stalled",
        "header_timeout",
        "shed",
        "idle_timeout",
    ];

    /// Index of this refusal's label in [`Self::LABELS`].
    pub fn label_index(&self) -> usize {
        let label = self.label();
        Self::LABELS.iter().position(|l| *l == label).unwrap_or(0)
    }
}

/// Checks a write's header before any of its payload is read: the
/// certificate, the block id's creation window, the size limit.
pub fn check_write(request: &WriteReq, key: &MacKey, now: EggsTime) -> Result<(), Refusal> {
    let block_id = request.block_id;
    if !request.certificate_valid(key) {
        return Err(Refusal::BadWriteCertificate(block_id));
    }
    if !block_id.in_creation_window(now) {
        return Err(Refusal::OutsideCreationWindow { block_id, block_time: block_id.time().get(), now: now.get() });
    }
    let size = request.size.get();
    if size > BLOCK_SIZE_BYTES_MAX {
        return Err(Refusal::TooLarge { block_id, size });
    }
    Ok(())
}

/// Checks an erase's certificate. Erase has no time window: old blocks are
/// exactly the ones that get erased.
pub fn check_erase(request: &EraseReq, key: &MacKey) -> Result<(), Refusal> {
    if !request.certificate_valid(key) {
        return Err(Refusal::BadEraseCertificate(request.block_id));
    }
    Ok(())
}

/// What to do when a write's block already exists under its final name:
/// the same size and CRC mean a retry of a write that succeeded (answer the
/// proof again); anything else is a conflict, and the stored block wins.
pub fn existing_block_matches(stored_size: u64, stored_crc: u32, request: &WriteReq) -> bool {
    stored_size == u64::from(request.size.get()) && stored_crc == request.crc.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::limits::{BLOCK_ID_FUTURE_WINDOW_NS, BLOCK_ID_PAST_WINDOW_NS, NS_PER_SECOND};
    use wire::mac::SecretKey;

    fn key() -> MacKey {
        MacKey::new(&SecretKey([3; 16]))
    }

    const NOW: EggsTime = EggsTime::new(1000 * 3600 * NS_PER_SECOND);

    #[test]
    fn write_checks() {
        let k = key();
        let block_id = BlockId::compose(NOW, 7);
        assert_eq!(check_write(&WriteReq::new(&k, block_id, 5, 10), &k, NOW), Ok(()));
        let forged = WriteReq::new(&MacKey::new(&SecretKey([4; 16])), block_id, 5, 10);
        assert_eq!(check_write(&forged, &k, NOW), Err(Refusal::BadWriteCertificate(block_id)));
        let mut altered = WriteReq::new(&k, block_id, 5, 10);
        altered.size = zerocopy::byteorder::little_endian::U32::new(11);
        assert_eq!(check_write(&altered, &k, NOW), Err(Refusal::BadWriteCertificate(block_id)));
        let size = BLOCK_SIZE_BYTES_MAX + 1;
        assert_eq!(
            check_write(&WriteReq::new(&k, block_id, 5, size), &k, NOW),
            Err(Refusal::TooLarge { block_id, size })
        );
        assert_eq!(check_write(&WriteReq::new(&k, block_id, 5, BLOCK_SIZE_BYTES_MAX), &k, NOW), Ok(()));
    }

    #[test]
    fn write_window() {
        let k = key();
        let check = |time: EggsTime| check_write(&WriteReq::new(&k, BlockId::compose(time, 1), 0, 0), &k, NOW);
        assert_eq!(check(NOW.saturating_sub_ns(BLOCK_ID_PAST_WINDOW_NS)), Ok(()));
        assert_eq!(check(NOW.saturating_add_ns(BLOCK_ID_FUTURE_WINDOW_NS)), Ok(()));
        assert!(matches!(
            check(NOW.saturating_sub_ns(BLOCK_ID_PAST_WINDOW_NS + 1000)),
            Err(Refusal::OutsideCreationWindow { .. })
        ));
        assert!(matches!(
            check(NOW.saturating_add_ns(BLOCK_ID_FUTURE_WINDOW_NS + 1000)),
            Err(Refusal::OutsideCreationWindow { .. })
        ));
    }

    #[test]
    fn erase_checks() {
        let k = key();
        let old = BlockId::compose(EggsTime::new(1), 1);
        assert_eq!(check_erase(&EraseReq::new(&k, old), &k), Ok(()));
        assert_eq!(
            check_erase(&EraseReq::new(&MacKey::new(&SecretKey([9; 16])), old), &k),
            Err(Refusal::BadEraseCertificate(old))
        );
    }

    #[test]
    fn existing_blocks() {
        let k = key();
        let request = WriteReq::new(&k, BlockId::new(1), 0xabcd, 10);
        assert!(existing_block_matches(10, 0xabcd, &request));
        assert!(!existing_block_matches(11, 0xabcd, &request));
        assert!(!existing_block_matches(10, 0xabce, &request));
    }

    #[test]
    fn labels_are_complete() {
        let refusals = [
            Refusal::UnknownTag(0),
            Refusal::TruncatedHeader,
            Refusal::TruncatedPayload(BlockId::new(0)),
            Refusal::BadEraseCertificate(BlockId::new(0)),
            Refusal::OutsideCreationWindow { block_id: BlockId::new(0), block_time: 0, now: 0 },
            Refusal::TooLarge { block_id: BlockId::new(0), size: 0 },
            Refusal::CrcMismatch { block_id: BlockId::new(0), expected: 0, actual: 0 },
            Refusal::Conflict(BlockId::new(0)),
            Refusal::NotFound(BlockId::new(0)),
            Refusal::StoredTooLarge(BlockId::new(0)),
            Refusal::Stalled,
        ];
        for (index, refusal) in refusals.iter().enumerate() {
            assert_eq!(refusal.label_index(), index);
        }
    }
}
