//! blockd's `c` request: the CRC of a stored block, computed next to the
//! data so a scrub does not move the bytes over the network.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::BlockId;
use wire::block::{CrcReq, CrcResp, TAG_CRC_RESP};
use zerocopy::{FromBytes, IntoBytes};

/// Time to connect to a block service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Fixed part of a crc request's deadline; the service reads the whole block.
const CRC_TIMEOUT_BASE: Duration = Duration::from_secs(20);
/// Slowest disk read tolerated before a crc request times out, bytes/s.
const READ_RATE_MIN_BYTES_PER_SECOND: u64 = 4 << 20;

/// What a block service said about one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcAnswer {
    /// The block is there with this size and CRC.
    Stored { size: u32, crc: u32 },
    /// The service answered the connection but closed it without an
    /// answer: it has no such block (blockd refuses by closing).
    Missing,
}

/// Why a crc request got no answer at all (the service is down or slow):
/// nothing is concluded about the block.
#[derive(Debug, thiserror::Error)]
#[error("crc of {block_id} at {addr}: {reason}")]
pub struct Unreachable {
    pub addr: SocketAddr,
    pub block_id: BlockId,
    pub reason: String,
}

/// Asks `addr` for the CRC of `block_id` (of `expected_size` bytes, for the
/// deadline).
pub async fn block_crc(addr: SocketAddr, block_id: BlockId, expected_size: u32) -> Result<CrcAnswer, Unreachable> {
    let unreachable = |reason: String| Unreachable { addr, block_id, reason };
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|error| unreachable(format!("connect: {error}")))?;
    let deadline = CRC_TIMEOUT_BASE + Duration::from_secs(u64::from(expected_size) / READ_RATE_MIN_BYTES_PER_SECOND);
    let exchange = async {
        stream.write_all(CrcReq::new(block_id).as_bytes()).await?;
        let mut response = [0u8; size_of::<CrcResp>()];
        match stream.read_exact(&mut response).await {
            Ok(_) => Ok(Some(response)),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(error) => Err(error),
        }
    };
    let response = tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|error| unreachable(error.to_string()))?;
    let Some(bytes) = response else { return Ok(CrcAnswer::Missing) };
    let response = CrcResp::read_from_bytes(&bytes).map_err(|_| unreachable("malformed crc response".into()))?;
    if response.tag != TAG_CRC_RESP {
        return Err(unreachable(format!("unexpected response tag {:#x}", response.tag)));
    }
    Ok(CrcAnswer::Stored { size: response.size.get(), crc: response.crc.get() })
}
