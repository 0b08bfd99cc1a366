//! The block service protocol (TCP), byte for byte the prototype's
//! (DESIGN.md §6). All integers are little-endian; a connection carries any
//! number of requests in sequence, answered in order.
//!
//! | request | layout | response |
//! |---|---|---|
//! | write | `'w'` block_id crc size certificate (25 B), then `size` bytes | `'W'` block_id proof (17 B) |
//! | fetch | `'f'` block_id (9 B) | `'F'` size (5 B), then the bytes |
//! | crc | `'c'` block_id (9 B) | `'C'` size crc (9 B) |
//! | erase | `'e'` block_id certificate (17 B) | `'E'` block_id proof (17 B) |
//! | stats | `'s'` token (9 B) | `'S'` token used_bytes free_bytes used_blocks free_blocks MAC (49 B) |
//!
//! A refused request (bad MAC, block id outside the time window, oversize,
//! CRC mismatch, unknown block) gets no response: the service closes the
//! connection, as the prototype did.
//!
//! Our one extension: a write the service could not store through no fault
//! of the request (its disk is full, or failed) is answered with an
//! [`BlockErrorResp`] (tag 0x00, 17 bytes: the length of the proof it replaces)
//! after the service has read the whole payload, and the connection stays
//! usable. A prototype client reads 17 bytes for its proof, finds a tag
//! that is not `'W'`, and fails the write, as it would on a closed
//! connection; ours says why (`NO_SPACE`: "no space left on device").

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::codec::DecodeError;
use crate::datagram::ErrorKind;
use crate::ids::BlockId;
use crate::mac::{Mac, MacKey, constant_time_eq};

pub const TAG_WRITE: u8 = b'w';
pub const TAG_WRITTEN: u8 = b'W';
pub const TAG_FETCH: u8 = b'f';
pub const TAG_FETCHED: u8 = b'F';
pub const TAG_CRC: u8 = b'c';
pub const TAG_CRC_RESP: u8 = b'C';
pub const TAG_ERASE: u8 = b'e';
pub const TAG_ERASED: u8 = b'E';
pub const TAG_STATS: u8 = b's';
pub const TAG_STATS_RESP: u8 = b'S';
/// The error answer (our extension; no request or response of the
/// prototype starts with 0x00, as no datagram kind 0x00 is a request).
pub const TAG_ERROR: u8 = 0x00;

macro_rules! block_message {
    ($(#[$meta:meta])* $name:ident = $bytes:literal { $( $(#[$fmeta:meta])* $field:ident : $ftype:ty ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C)]
        pub struct $name {
            pub tag: u8,
            $( $(#[$fmeta])* pub $field: $ftype, )*
        }
        const _: () = assert!(core::mem::size_of::<$name>() == $bytes);
    };
}

block_message!(
    /// Followed by `size` bytes of data.
    WriteReq = 25 { block_id: BlockId, crc: U32, size: U32, certificate: Mac }
);
block_message!(
    /// The write proof: the block is durable.
    WriteResp = 17 { block_id: BlockId, proof: Mac }
);
block_message!(FetchReq = 9 { block_id: BlockId });
block_message!(
    /// Followed by `size` bytes of data.
    FetchRespHead = 5 { size: U32 }
);
block_message!(CrcReq = 9 { block_id: BlockId });
block_message!(CrcResp = 9 { size: U32, crc: U32 });
block_message!(EraseReq = 17 { block_id: BlockId, certificate: Mac });
block_message!(
    /// The erase proof: the block is gone for good.
    EraseResp = 17 { block_id: BlockId, proof: Mac }
);
block_message!(
    /// `token` is fresh and random, so the MAC of the answer proves the
    /// answerer holds the key now.
    StatsReq = 9 { token: [u8; 8] }
);
block_message!(StatsResp = 49 {
    token: [u8; 8],
    used_bytes: U64,
    free_bytes: U64,
    used_blocks: U64,
    free_blocks: U64,
    /// MAC of every byte before it.
    mac: Mac,
});

block_message!(
    /// The service could not do what a well-formed, authorised request
    /// asked (tag [`TAG_ERROR`]); `error_kind` is a code of the datagram
    /// protocol's table (PROTOCOL.md §4): `NO_SPACE` when the disk is full,
    /// `STORAGE_ERROR` when it failed otherwise. `reserved` is zero. Not
    /// MAC'd: it gives nothing (an on-path attacker can as well cut the
    /// connection), and a writing client holds no key to check one.
    BlockErrorResp = 17 { block_id: BlockId, error_kind: U16, reserved: [u8; 6] }
);

impl BlockErrorResp {
    pub fn new(block_id: BlockId, kind: ErrorKind) -> Self {
        Self { tag: TAG_ERROR, block_id, error_kind: U16::new(kind as u16), reserved: [0; 6] }
    }

    /// Decodes 17 bytes known to start with [`TAG_ERROR`]: the error kind,
    /// or `None` for an unknown code or nonzero reserved bytes.
    pub fn decode(bytes: &[u8]) -> Option<(BlockId, ErrorKind)> {
        let response = Self::read_from_bytes(bytes).ok()?;
        if response.tag != TAG_ERROR || response.reserved != [0; 6] {
            return None;
        }
        Some((response.block_id, ErrorKind::from_u16(response.error_kind.get())?))
    }
}

const _: () = assert!(core::mem::size_of::<BlockErrorResp>() == core::mem::size_of::<WriteResp>());
const _: () = assert!(core::mem::size_of::<BlockErrorResp>() == core::mem::size_of::<EraseResp>());

/// One request read from a connection (without a write's payload).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockRequest {
    Write(WriteReq),
    Fetch(FetchReq),
    Crc(CrcReq),
    Erase(EraseReq),
    Stats(StatsReq),
}

/// The fixed length of the request starting with `tag`, tag included.
pub const fn request_len(tag: u8) -> Option<usize> {
    match tag {
        TAG_WRITE => Some(25),
        TAG_FETCH | TAG_CRC | TAG_STATS => Some(9),
        TAG_ERASE => Some(17),
        _ => None,
    }
}

/// Longest fixed request (a server's read buffer needs no more).
pub const REQUEST_BYTES_MAX: usize = 25;

impl BlockRequest {
    /// Decodes exactly one request's fixed bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let tag = *bytes.first().ok_or(DecodeError::Truncated)?;
        let len = request_len(tag).ok_or(DecodeError::UnknownKind(tag))?;
        if bytes.len() < len {
            return Err(DecodeError::Truncated);
        }
        if bytes.len() > len {
            return Err(DecodeError::TrailingBytes(bytes.len() - len));
        }
        // Sizes match by construction; `read_from_bytes` cannot fail here.
        Ok(match tag {
            TAG_WRITE => Self::Write(WriteReq::read_from_bytes(bytes).map_err(|_| DecodeError::Truncated)?),
            TAG_FETCH => Self::Fetch(FetchReq::read_from_bytes(bytes).map_err(|_| DecodeError::Truncated)?),
            TAG_CRC => Self::Crc(CrcReq::read_from_bytes(bytes).map_err(|_| DecodeError::Truncated)?),
            TAG_ERASE => Self::Erase(EraseReq::read_from_bytes(bytes).map_err(|_| DecodeError::Truncated)?),
            _ => Self::Stats(StatsReq::read_from_bytes(bytes).map_err(|_| DecodeError::Truncated)?),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Write(r) => r.as_bytes(),
            Self::Fetch(r) => r.as_bytes(),
            Self::Crc(r) => r.as_bytes(),
            Self::Erase(r) => r.as_bytes(),
            Self::Stats(r) => r.as_bytes(),
        }
    }
}

impl WriteReq {
    pub fn new(key: &MacKey, block_id: BlockId, crc: u32, size: u32) -> Self {
        Self::with_certificate(block_id, crc, size, key.write_certificate(block_id, crc, size))
    }

    pub fn with_certificate(block_id: BlockId, crc: u32, size: u32, certificate: Mac) -> Self {
        Self { tag: TAG_WRITE, block_id, crc: U32::new(crc), size: U32::new(size), certificate }
    }

    pub fn certificate_valid(&self, key: &MacKey) -> bool {
        constant_time_eq(&key.write_certificate(self.block_id, self.crc.get(), self.size.get()), &self.certificate)
    }
}

impl WriteResp {
    pub fn new(key: &MacKey, block_id: BlockId) -> Self {
        Self { tag: TAG_WRITTEN, block_id, proof: key.write_proof(block_id) }
    }

    pub fn proof_valid(&self, key: &MacKey) -> bool {
        self.tag == TAG_WRITTEN && constant_time_eq(&key.write_proof(self.block_id), &self.proof)
    }
}

impl FetchReq {
    pub fn new(block_id: BlockId) -> Self {
        Self { tag: TAG_FETCH, block_id }
    }
}

impl FetchRespHead {
    pub fn new(size: u32) -> Self {
        Self { tag: TAG_FETCHED, size: U32::new(size) }
    }
}

impl CrcReq {
    pub fn new(block_id: BlockId) -> Self {
        Self { tag: TAG_CRC, block_id }
    }
}

impl CrcResp {
    pub fn new(size: u32, crc: u32) -> Self {
        Self { tag: TAG_CRC_RESP, size: U32::new(size), crc: U32::new(crc) }
    }
}

impl EraseReq {
    pub fn new(key: &MacKey, block_id: BlockId) -> Self {
        Self::with_certificate(block_id, key.erase_certificate(block_id))
    }

    pub fn with_certificate(block_id: BlockId, certificate: Mac) -> Self {
        Self { tag: TAG_ERASE, block_id, certificate }
    }

    pub fn certificate_valid(&self, key: &MacKey) -> bool {
        constant_time_eq(&key.erase_certificate(self.block_id), &self.certificate)
    }
}

impl EraseResp {
    pub fn new(key: &MacKey, block_id: BlockId) -> Self {
        Self { tag: TAG_ERASED, block_id, proof: key.erase_proof(block_id) }
    }

    pub fn proof_valid(&self, key: &MacKey) -> bool {
        self.tag == TAG_ERASED && constant_time_eq(&key.erase_proof(self.block_id), &self.proof)
    }
}

impl StatsReq {
    pub fn new(token: [u8; 8]) -> Self {
        Self { tag: TAG_STATS, token }
    }
}

/// Space and block counts a block service reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlockServiceStats {
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub used_blocks: u64,
    pub free_blocks: u64,
}

impl StatsResp {
    const MAC_INPUT_BYTES: usize = 41;

    pub fn new(key: &MacKey, token: [u8; 8], stats: BlockServiceStats) -> Self {
        let mut resp = Self {
            tag: TAG_STATS_RESP,
            token,
            used_bytes: U64::new(stats.used_bytes),
            free_bytes: U64::new(stats.free_bytes),
            used_blocks: U64::new(stats.used_blocks),
            free_blocks: U64::new(stats.free_blocks),
            mac: [0; 8],
        };
        resp.mac = key.mac(&[&resp.as_bytes()[..Self::MAC_INPUT_BYTES]]);
        resp
    }

    /// Checks tag, token and MAC; the stats when all hold.
    pub fn verify(&self, key: &MacKey, token: [u8; 8]) -> Option<BlockServiceStats> {
        let mac = key.mac(&[&self.as_bytes()[..Self::MAC_INPUT_BYTES]]);
        if self.tag != TAG_STATS_RESP || !constant_time_eq(&self.token, &token) || !constant_time_eq(&mac, &self.mac) {
            return None;
        }
        Some(BlockServiceStats {
            used_bytes: self.used_bytes.get(),
            free_bytes: self.free_bytes.get(),
            used_blocks: self.used_blocks.get(),
            free_blocks: self.free_blocks.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::SecretKey;

    fn key() -> MacKey {
        MacKey::new(&SecretKey([7; 16]))
    }

    #[test]
    fn write_request_bytes() {
        let k = key();
        let block_id = BlockId::new(0x1122_3344_5566_7788);
        let req = WriteReq::new(&k, block_id, 0xa1b2_c3d4, 0x0102_0304);
        let bytes = req.as_bytes();
        assert_eq!(
            &bytes[..17],
            &[b'w', 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xd4, 0xc3, 0xb2, 0xa1, 0x04, 0x03, 0x02, 0x01]
        );
        // The certificate is the MAC of the first 17 bytes, exactly.
        assert_eq!(&bytes[17..], &k.mac(&[&bytes[..17]]));
        assert!(req.certificate_valid(&k));
        assert_eq!(BlockRequest::decode(bytes), Ok(BlockRequest::Write(req)));
    }

    #[test]
    fn response_bytes() {
        let k = key();
        let block_id = BlockId::new(1);
        let written = WriteResp::new(&k, block_id);
        assert_eq!(&written.as_bytes()[..9], &[b'W', 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&written.as_bytes()[9..], &k.mac(&[&written.as_bytes()[..9]]));
        assert!(written.proof_valid(&k));
        let erased = EraseResp::new(&k, block_id);
        assert_eq!(&erased.as_bytes()[9..], &k.mac(&[b"E\x01\0\0\0\0\0\0\0"]));
        assert_eq!(FetchRespHead::new(258).as_bytes(), &[b'F', 2, 1, 0, 0]);
        assert_eq!(CrcResp::new(3, 0x0a0b0c0d).as_bytes(), &[b'C', 3, 0, 0, 0, 0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(FetchReq::new(block_id).as_bytes(), &[b'f', 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(CrcReq::new(block_id).as_bytes(), &[b'c', 1, 0, 0, 0, 0, 0, 0, 0]);
        let erase = EraseReq::new(&k, block_id);
        assert_eq!(&erase.as_bytes()[9..], &k.mac(&[b"e\x01\0\0\0\0\0\0\0"]));
    }

    #[test]
    fn stats_bytes_and_verification() {
        let k = key();
        let stats = BlockServiceStats { used_bytes: 1, free_bytes: 2, used_blocks: 3, free_blocks: 4 };
        let resp = StatsResp::new(&k, [9; 8], stats);
        let bytes = resp.as_bytes();
        assert_eq!(bytes[0], b'S');
        assert_eq!(&bytes[1..9], &[9; 8]);
        assert_eq!(&bytes[9..17], &1u64.to_le_bytes());
        assert_eq!(&bytes[33..41], &4u64.to_le_bytes());
        assert_eq!(&bytes[41..], &k.mac(&[&bytes[..41]]));
        assert_eq!(resp.verify(&k, [9; 8]), Some(stats));
        assert_eq!(resp.verify(&k, [8; 8]), None);
        assert_eq!(resp.verify(&MacKey::new(&SecretKey([1; 16])), [9; 8]), None);
        assert_eq!(StatsReq::new([5; 8]).as_bytes(), &[b's', 5, 5, 5, 5, 5, 5, 5, 5]);
    }

    #[test]
    fn error_answer_bytes() {
        let error = BlockErrorResp::new(BlockId::new(0x0102), ErrorKind::NoSpace);
        let bytes = error.as_bytes();
        assert_eq!(bytes, &[0, 2, 1, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(BlockErrorResp::decode(bytes), Some((BlockId::new(0x0102), ErrorKind::NoSpace)));
        let mut unknown = bytes.to_vec();
        unknown[9] = 0xff;
        assert_eq!(BlockErrorResp::decode(&unknown), None);
        let mut reserved = bytes.to_vec();
        reserved[16] = 1;
        assert_eq!(BlockErrorResp::decode(&reserved), None);
        assert_eq!(BlockErrorResp::decode(&bytes[..16]), None);
    }

    #[test]
    fn decode_refuses_bad_input() {
        assert_eq!(BlockRequest::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(BlockRequest::decode(b"x"), Err(DecodeError::UnknownKind(b'x')));
        assert_eq!(BlockRequest::decode(b"f1234567"), Err(DecodeError::Truncated));
        assert_eq!(BlockRequest::decode(b"f123456789"), Err(DecodeError::TrailingBytes(1)));
    }
}
