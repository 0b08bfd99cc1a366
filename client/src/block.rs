//! The block service client (TCP, `wire::block`): write a block with its
//! certificate and get the write proof; fetch a block's bytes.
//!
//! One connection per operation: the cost of a loopback/LAN connect is small
//! next to a block (megabytes), and a failed connection never poisons
//! another request. Every operation has a deadline so a hung service turns
//! into an error, and the caller falls back to parity.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::BlockId;
use wire::block::{FetchReq, FetchRespHead, TAG_FETCHED, TAG_WRITTEN, WriteReq, WriteResp};
use wire::mac::Mac;
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{ClientError, Result};

/// Time to connect to a block service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Fixed part of an operation's deadline; a per-byte allowance is added.
const OPERATION_TIMEOUT_BASE: Duration = Duration::from_secs(20);
/// Slowest transfer rate tolerated before an operation times out, bytes/s.
const TRANSFER_RATE_MIN_BYTES_PER_SECOND: u64 = 4 << 20;

fn deadline_for(bytes: usize) -> Duration {
    OPERATION_TIMEOUT_BASE + Duration::from_secs(bytes as u64 / TRANSFER_RATE_MIN_BYTES_PER_SECOND)
}

fn block_error(addr: SocketAddr, block_id: BlockId, reason: impl Into<String>) -> ClientError {
    ClientError::Block { addr, block_id, reason: reason.into() }
}

async fn connect(addr: SocketAddr, block_id: BlockId) -> Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| block_error(addr, block_id, "connect timed out"))?
        .map_err(|error| block_error(addr, block_id, format!("connect: {error}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Writes `data` as block `block_id` with the shard's write `certificate`;
/// returns the service's write proof.
pub async fn write_block(addr: SocketAddr, block_id: BlockId, crc: u32, certificate: Mac, data: &[u8]) -> Result<Mac> {
    let size = u32::try_from(data.len()).map_err(|_| block_error(addr, block_id, "block too large"))?;
    let operation = async {
        let mut stream = connect(addr, block_id).await?;
        let request = WriteReq::with_certificate(block_id, crc, size, certificate);
        let io = |error: std::io::Error| block_error(addr, block_id, format!("write: {error}"));
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        stream.write_all(data).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut response = [0u8; size_of::<WriteResp>()];
        stream.read_exact(&mut response).await.map_err(|error| {
            block_error(addr, block_id, format!("no write proof (write refused or service failed): {error}"))
        })?;
        let response = WriteResp::read_from_bytes(&response)
            .map_err(|_| block_error(addr, block_id, "malformed write response"))?;
        if response.tag != TAG_WRITTEN || response.block_id != block_id {
            return Err(block_error(addr, block_id, "write response for another block"));
        }
        Ok(response.proof)
    };
    tokio::time::timeout(deadline_for(data.len()), operation)
        .await
        .map_err(|_| block_error(addr, block_id, "write timed out"))?
}

/// Fetches block `block_id`, which must be `expected_size` bytes long.
pub async fn fetch_block(addr: SocketAddr, block_id: BlockId, expected_size: u32) -> Result<Vec<u8>> {
    let operation = async {
        let mut stream = connect(addr, block_id).await?;
        let io = |error: std::io::Error| block_error(addr, block_id, format!("fetch: {error}"));
        stream.write_all(FetchReq::new(block_id).as_bytes()).await.map_err(io)?;
        let mut head = [0u8; size_of::<FetchRespHead>()];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|error| block_error(addr, block_id, format!("fetch refused or service failed: {error}")))?;
        let head = FetchRespHead::read_from_bytes(&head)
            .map_err(|_| block_error(addr, block_id, "malformed fetch response"))?;
        if head.tag != TAG_FETCHED {
            return Err(block_error(addr, block_id, "malformed fetch response"));
        }
        if head.size.get() != expected_size {
            return Err(block_error(
                addr,
                block_id,
                format!("block has {} bytes, expected {expected_size}", head.size.get()),
            ));
        }
        let mut data = vec![0u8; expected_size as usize];
        stream.read_exact(&mut data).await.map_err(io)?;
        Ok(data)
    };
    tokio::time::timeout(deadline_for(expected_size as usize), operation)
        .await
        .map_err(|_| block_error(addr, block_id, "fetch timed out"))?
}

/// Erases block `block_id` with the shard's erase `certificate`; returns
/// the erase proof.
pub async fn erase_block(addr: SocketAddr, block_id: BlockId, certificate: Mac) -> Result<Mac> {
    let operation = async {
        let mut stream = connect(addr, block_id).await?;
        let io = |error: std::io::Error| block_error(addr, block_id, format!("erase: {error}"));
        let request = wire::block::EraseReq::with_certificate(block_id, certificate);
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut response = [0u8; size_of::<wire::block::EraseResp>()];
        stream.read_exact(&mut response).await.map_err(io)?;
        let response = wire::block::EraseResp::read_from_bytes(&response)
            .map_err(|_| block_error(addr, block_id, "malformed erase response"))?;
        if response.tag != wire::block::TAG_ERASED || response.block_id != block_id {
            return Err(block_error(addr, block_id, "erase response for another block"));
        }
        Ok(response.proof)
    };
    tokio::time::timeout(OPERATION_TIMEOUT_BASE, operation)
        .await
        .map_err(|_| block_error(addr, block_id, "erase timed out"))?
}
