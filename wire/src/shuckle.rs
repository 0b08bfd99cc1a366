//! Shuckle's datagram protocols.
//!
//! Shuckle's UDP port takes two kinds of datagram:
//!
//! - the block service **registration**, byte for byte the prototype's 19
//!   bytes (DESIGN.md §7), optionally followed by a u8-prefixed host name
//!   (the failure domain; without it the source IP is the host);
//! - headered datagrams of the shuckle family ([`ShuckleRequest`]), never 19
//!   or 20+len bytes long with a valid registration shape (they start with
//!   the magic `EGK`, and are told apart first by that and then by length).
//!
//! The privileged requests (kind ≥ 0x80) carry the cluster-key MAC, and so do
//! their responses. Block service secret keys leave shuckle only in the
//! privileged listing, wrapped with the cluster key
//! ([`crate::mac::MacKey::wrap_key`]) under the requester's fresh nonce.

use zerocopy::byteorder::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::address::Address;
use crate::codec::{Blob, Decode, DecodeError, List, Reader};
use crate::datagram::SHUCKLE_MAGIC;
use crate::ids::{BlockServiceId, EggsTime, ShardId};
use crate::limits::HOST_NAME_BYTES_MAX;
use crate::mac::SecretKey;

/// The prototype's registration datagram: a block service announcing itself.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Registration {
    pub secret_key: [u8; 16],
    pub port: U16,
    pub storage_class: u8,
}

pub const REGISTRATION_BYTES: usize = 19;
const _: () = assert!(core::mem::size_of::<Registration>() == REGISTRATION_BYTES);

impl core::fmt::Debug for Registration {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registration")
            .field("port", &self.port.get())
            .field("storage_class", &self.storage_class)
            .finish_non_exhaustive()
    }
}

/// A host name (failure domain).
pub type HostName<'a> = Blob<'a, HOST_NAME_BYTES_MAX>;

/// A registration as received: the fixed 19 bytes and the optional host.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RegistrationDatagram<'a> {
    pub registration: Registration,
    pub host: Option<HostName<'a>>,
}

impl<'a> RegistrationDatagram<'a> {
    pub fn secret_key(&self) -> SecretKey {
        SecretKey(self.registration.secret_key)
    }

    /// Decodes a registration; storage classes 0 and 1 are refused.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let registration: Registration = reader.fixed()?;
        if registration.storage_class < crate::span::STORAGE_CLASS_BLOCKS_MIN {
            return Err(DecodeError::InvalidField("storage class"));
        }
        let host = if reader.remaining() > 0 { Some(HostName::decode(&mut reader)?) } else { None };
        reader.finish()?;
        Ok(Self { registration, host })
    }

    /// Encodes into `buf` (at least 19 + 1 + 64 bytes).
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, crate::codec::EncodeError> {
        let mut writer = crate::codec::Writer::new(buf);
        writer.put(self.registration.as_bytes());
        if let Some(host) = &self.host {
            crate::codec::Encode::encode(host, &mut writer);
        }
        writer.finish()
    }
}

/// True when a datagram to shuckle's UDP port is a registration rather than
/// a headered request.
pub fn is_registration(bytes: &[u8]) -> bool {
    bytes.len() >= REGISTRATION_BYTES && !bytes.starts_with(&SHUCKLE_MAGIC) || bytes.len() == REGISTRATION_BYTES
}

/// Flags of a block service, as shards and clients see them.
pub mod flags {
    /// No good check for [`crate::limits::BLOCK_SERVICE_STALE_AFTER_NS`].
    pub const STALE: u8 = 1;
    /// An operator asked for no new writes; still readable.
    pub const DRAIN: u8 = 2;
    /// Declared dead: never read or written again.
    pub const TERMINAL: u8 = 4;
    /// Not in the shard's table (a block on a service it does not know).
    pub const UNKNOWN: u8 = 8;
}

/// Operator status of a block service.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, zerocopy::TryFromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(u8)]
pub enum BlockServiceStatus {
    Ok = 0,
    Drain = 1,
    Terminal = 2,
}

impl BlockServiceStatus {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Drain => "drain",
            Self::Terminal => "terminal",
        }
    }
}

crate::fixed_message!(
    /// One page of shards, starting at `begin`.
    pub struct ShardsReq {
        pub begin: u8,
    }
);

crate::fixed_message!(
    pub struct ShardInfo {
        pub shard: ShardId,
        pub address: Address,
        pub last_seen: EggsTime,
    }
);

crate::tailed_message!(
    pub struct ShardsResp<'a>: ShardsRespHead {
        /// The shard to ask for next; 0 when the listing is complete.
        pub next: u8,
    }
    tail { pub shards: List<'a, ShardInfo> }
);

crate::fixed_message!(
    pub struct CdcReq {}
);

crate::fixed_message!(
    /// An unknown address with time zero when no CDC ever registered.
    pub struct CdcResp {
        pub address: Address,
        pub last_seen: EggsTime,
    }
);

crate::fixed_message!(
    pub struct BlockServicesReq {
        pub begin: BlockServiceId,
    }
);

crate::tailed_message!(
    /// A block service as clients and humans see it: never its key.
    pub struct BlockServiceInfo<'a>: BlockServiceInfoHead {
        pub id: BlockServiceId,
        pub address: Address,
        pub storage_class: u8,
        pub flags: u8,
        pub status: BlockServiceStatus,
        pub write_weight: U64,
        pub used_bytes: U64,
        pub free_bytes: U64,
        pub used_blocks: U64,
        pub last_check: EggsTime,
    }
    tail { pub host: HostName<'a> }
);

crate::tailed_message!(
    pub struct BlockServicesResp<'a>: BlockServicesRespHead {
        /// Where the next page starts; zero when complete.
        pub next: BlockServiceId,
    }
    tail { pub block_services: List<'a, BlockServiceInfo<'a>> }
);

crate::fixed_message!(
    /// Privileged: a page of block services with their wrapped keys. `nonce`
    /// must be fresh; `time` within the skew limit of shuckle's clock.
    pub struct BlockServicesWithKeysReq {
        pub nonce: U64,
        pub time: EggsTime,
        pub begin: BlockServiceId,
    }
);

crate::tailed_message!(
    /// A block service as a shard needs it.
    pub struct BlockServiceWithKey<'a>: BlockServiceWithKeyHead {
        pub id: BlockServiceId,
        pub address: Address,
        pub storage_class: u8,
        pub flags: u8,
        /// Bytes this service should receive next, relative to the others.
        pub write_weight: U64,
        /// The secret key XOR AES(cluster key, id ‖ nonce).
        pub wrapped_key: [u8; 16],
    }
    tail { pub host: HostName<'a> }
);

crate::tailed_message!(
    pub struct BlockServicesWithKeysResp<'a>: BlockServicesWithKeysRespHead {
        pub next: BlockServiceId,
    }
    tail { pub block_services: List<'a, BlockServiceWithKey<'a>> }
);

crate::fixed_message!(
    /// Privileged: a shard announces its address.
    pub struct RegisterShardReq {
        pub shard: ShardId,
        pub address: Address,
        pub time: EggsTime,
    }
);

crate::fixed_message!(
    /// Privileged: the CDC announces its address.
    pub struct RegisterCdcReq {
        pub address: Address,
        pub time: EggsTime,
    }
);

crate::fixed_message!(
    /// An empty response body.
    pub struct EmptyResp {}
);

crate::message_family! {
    /// Kinds of shuckle datagrams.
    kinds ShuckleKind;
    /// A request to shuckle.
    requests ShuckleRequest;
    /// A response from shuckle.
    responses ShuckleResponse;
    magic SHUCKLE_MAGIC;
    0x01 Shards(ShardsReq) => ShardsResp<'a>;
    0x02 Cdc(CdcReq) => CdcResp;
    0x03 BlockServices(BlockServicesReq) => BlockServicesResp<'a>;
    0x81 BlockServicesWithKeys(BlockServicesWithKeysReq) => BlockServicesWithKeysResp<'a>;
    0x82 RegisterShard(RegisterShardReq) => EmptyResp;
    0x83 RegisterCdc(RegisterCdcReq) => EmptyResp;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_bytes() {
        let mut bytes = [0u8; 19];
        bytes[..16].copy_from_slice(&[0xab; 16]);
        bytes[16..18].copy_from_slice(&4000u16.to_le_bytes());
        bytes[18] = 2;
        let datagram = RegistrationDatagram::decode(&bytes).unwrap();
        assert_eq!(datagram.registration.port.get(), 4000);
        assert_eq!(datagram.registration.storage_class, 2);
        assert_eq!(datagram.secret_key(), SecretKey([0xab; 16]));
        assert!(datagram.host.is_none());
        let mut out = [0u8; 100];
        let len = datagram.encode(&mut out).unwrap();
        assert_eq!(&out[..len], &bytes);
        assert!(is_registration(&bytes));
    }

    #[test]
    fn registration_with_host_and_bad_ones() {
        let mut bytes = vec![1u8; 16];
        bytes.extend_from_slice(&[0x10, 0x00, 3, 5]);
        bytes.extend_from_slice(b"host1");
        let datagram = RegistrationDatagram::decode(&bytes).unwrap();
        assert_eq!(datagram.host.unwrap().as_str(), "host1");
        bytes[18] = 1;
        assert!(RegistrationDatagram::decode(&bytes).is_err());
        assert!(RegistrationDatagram::decode(&bytes[..18]).is_err());
    }
}
