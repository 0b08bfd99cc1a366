//! The block service client (TCP, `wire::block`): write a block with its
//! certificate and get the write proof; fetch a block's bytes; erase.
//!
//! Every operation goes through the process's connection pool
//! ([`crate::pool`]): connections are reused and requests pipelined, and a
//! hung service turns into an error within a bounded time (no byte for
//! [`crate::pool::STALL_TIMEOUT`] while a fetch is outstanding; a write's
//! proof within a deadline), so the caller can fall back to parity.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use wire::BlockId;
use wire::mac::Mac;

use crate::error::{ClientError, Result};
use crate::pool::{Answer, Failure, pool};

fn block_error(addr: SocketAddr, block_id: BlockId, failure: Failure) -> ClientError {
    ClientError::Block { addr, block_id, reason: failure.reason, answered: failure.answered }
}

/// Writes `data` as block `block_id` with the shard's write `certificate`;
/// returns the service's write proof. `data` is shared, not copied.
pub async fn write_block_bytes(
    addr: SocketAddr,
    block_id: BlockId,
    crc: u32,
    certificate: Mac,
    data: Bytes,
) -> Result<Mac> {
    pool().write(addr, block_id, crc, certificate, data).await.map_err(|failure| block_error(addr, block_id, failure))
}

/// Writes `data` as block `block_id` (a copy of `data` is queued; see
/// [`write_block_bytes`] to share a buffer instead).
pub async fn write_block(addr: SocketAddr, block_id: BlockId, crc: u32, certificate: Mac, data: &[u8]) -> Result<Mac> {
    write_block_bytes(addr, block_id, crc, certificate, Bytes::copy_from_slice(data)).await
}

/// Fetches block `block_id`, which must be `expected_size` bytes long, into
/// `dst` (cleared first; grown if its capacity is short). Returns the
/// filled buffer and its CRC32C, computed as the bytes arrived.
pub async fn fetch_block_into(
    addr: SocketAddr,
    block_id: BlockId,
    expected_size: u32,
    dst: BytesMut,
) -> Result<(BytesMut, u32), (ClientError, Failure, Option<BytesMut>)> {
    match pool().fetch(addr, block_id, expected_size, dst).await {
        Ok(Answer::Fetched { data, crc }) => Ok((data, crc)),
        Ok(Answer::Proof(_)) => {
            let failure = Failure::new(crate::pool::FailureKind::Failed, "answer of another kind");
            let error = ClientError::Block { addr, block_id, reason: failure.reason.clone(), answered: None };
            Err((error, failure, None))
        }
        Err((failure, dst)) => {
            let error =
                ClientError::Block { addr, block_id, reason: failure.reason.clone(), answered: failure.answered };
            Err((error, failure, dst))
        }
    }
}

/// Fetches block `block_id`, which must be `expected_size` bytes long.
pub async fn fetch_block(addr: SocketAddr, block_id: BlockId, expected_size: u32) -> Result<Vec<u8>> {
    let dst = BytesMut::with_capacity(expected_size as usize);
    match fetch_block_into(addr, block_id, expected_size, dst).await {
        Ok((data, _)) => Ok(Vec::from(data)),
        Err((error, _, _)) => Err(error),
    }
}

/// Erases block `block_id` with the shard's erase `certificate`; returns
/// the erase proof.
pub async fn erase_block(addr: SocketAddr, block_id: BlockId, certificate: Mac) -> Result<Mac> {
    pool().erase(addr, block_id, certificate).await.map_err(|failure| block_error(addr, block_id, failure))
}
