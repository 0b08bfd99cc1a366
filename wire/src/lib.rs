//! `wire`: everything eggsfs daemons and clients say to each other, and
//! nothing else — no I/O, no runtime, no database.
//!
//! - [`ids`]: inode, block, block service ids; eggs time.
//! - [`limits`]: every limit, named, with compile-time checks of relations.
//! - [`codec`]: total decoding and allocation-free encoding ([`codec::Name`],
//!   [`codec::List`], …) over `zerocopy` fixed layouts.
//! - [`datagram`]: the UDP envelope (header, kinds, MACs, send times, error kinds).
//! - [`replay`]: the freshness window and record that refuse replayed
//!   privileged datagrams.
//! - [`shard`], [`cdc`], [`shuckle`]: the datagram protocol families.
//! - [`block`]: the block service TCP protocol, byte-exact.
//! - [`crc`], [`mac`], [`hash`]: CRC32C, AES-128 CBC-MAC, name hash.
//! - [`span`]: parity modes, span bodies, span → block layout, Reed–Solomon.
//! - [`policy`]: the directory policy blob clients interpret.
//!
//! `PROTOCOL.md` beside this crate documents every byte.

pub mod address;
pub mod block;
pub mod cdc;
pub mod codec;
pub mod crc;
pub mod datagram;
pub mod hash;
pub mod ids;
pub mod limits;
pub mod mac;
pub mod policy;
pub mod replay;
pub mod shard;
pub mod shuckle;
pub mod span;

pub use address::Address;
pub use codec::{DecodeError, EncodeError, List, Name};
pub use datagram::{ErrorKind, ErrorResp, Header};
pub use ids::{BlockId, BlockServiceId, EggsTime, InodeId, InodeType, ShardId};
pub use mac::{MacKey, SecretKey};
pub use span::{Parity, SpanLayout};
