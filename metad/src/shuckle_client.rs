//! The shard's small shuckle client: privileged UDP requests with retries,
//! the block service listing (keys unwrapped) and the shard's registration.
//!
//! Kept small and separate; the general client library has its own.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use wire::datagram;
use wire::ids::{BlockServiceId, EggsTime, ShardId};
use wire::limits::{BLOCK_SERVICES_MAX, CLIENT_TIMEOUT_INITIAL_NS, CLIENT_TIMEOUT_MAX_NS, UDP_DATAGRAM_BYTES_MAX};
use wire::mac::{MacKey, SecretKey, block_service_id};
use wire::shuckle::{BlockServicesWithKeysReq, RegisterShardReq, ShuckleRequest, ShuckleResponse};
use wire::{Address, ErrorKind};
use zerocopy::byteorder::little_endian::U64;

use crate::block_services::BlockServiceRecord;

/// How long one shuckle request may take in total, retries included. Short:
/// the refresh thread must not hang while shuckle is down.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ShuckleError {
    #[error("shuckle at {0}: no answer")]
    TimedOut(SocketAddr),
    #[error("shuckle socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("shuckle refused: {kind}: {text}")]
    Refused { kind: ErrorKind, text: String },
    #[error("shuckle answered something unexpected")]
    Unexpected,
    #[error("shuckle sent block service {0} with a key that does not match its id")]
    BadKey(BlockServiceId),
}

pub struct ShuckleClient {
    socket: UdpSocket,
    shuckle: SocketAddr,
    key: MacKey,
}

impl ShuckleClient {
    pub fn new(shuckle: SocketAddr, cluster_key: &SecretKey) -> Result<Self, ShuckleError> {
        let bind: SocketAddr =
            if shuckle.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|_| ShuckleError::Unexpected)?;
        let socket = UdpSocket::bind(bind)?;
        Ok(Self { socket, shuckle, key: MacKey::new(cluster_key) })
    }

    /// Sends `request` until a response with its id arrives; calls `parse`
    /// on the (MAC-verified) response.
    fn call<T>(
        &self,
        request: &ShuckleRequest,
        mut parse: impl FnMut(ShuckleResponse<'_>) -> Result<T, ShuckleError>,
    ) -> Result<T, ShuckleError> {
        let request_id: u64 = rand::random();
        let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
        let len =
            datagram::encode(&mut out, request_id, request, Some(&self.key)).map_err(|_| ShuckleError::Unexpected)?;
        let started = Instant::now();
        let mut timeout = Duration::from_nanos(CLIENT_TIMEOUT_INITIAL_NS);
        let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX + 64];
        while started.elapsed() < REQUEST_DEADLINE {
            self.socket.send_to(&out[..len], self.shuckle)?;
            let wait_until = Instant::now() + timeout;
            while let Some(left) = wait_until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                self.socket.set_read_timeout(Some(left))?;
                let (got, from) = match self.socket.recv_from(&mut buf) {
                    Ok(received) => received,
                    Err(error)
                        if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                    {
                        break;
                    }
                    // ICMP port unreachable surfaces as a refused read: shuckle is down.
                    Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    Err(error) => return Err(error.into()),
                };
                if from != self.shuckle {
                    continue;
                }
                match datagram::decode::<ShuckleResponse>(&buf[..got], Some(&self.key)) {
                    // Only our kind or, for our privileged kinds, a MAC'd
                    // error: a forged plain error is ignored like noise.
                    Ok((header, response))
                        if header.request_id() == request_id
                            && datagram::response_kind_matches(request.kind() as u8, &header) =>
                    {
                        if let ShuckleResponse::Error(error) = response {
                            return Err(ShuckleError::Refused {
                                kind: error.kind,
                                text: error.text.as_str().to_string(),
                            });
                        }
                        return parse(response);
                    }
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "undecodable datagram from shuckle");
                        continue;
                    }
                }
            }
            timeout = (timeout * 2).min(Duration::from_nanos(CLIENT_TIMEOUT_MAX_NS));
        }
        Err(ShuckleError::TimedOut(self.shuckle))
    }

    /// Every block service with its key (all pages).
    pub fn block_services(&self) -> Result<Vec<BlockServiceRecord>, ShuckleError> {
        let mut services = Vec::new();
        let mut begin = BlockServiceId::new(0);
        loop {
            let nonce: u64 = rand::random();
            let request = ShuckleRequest::BlockServicesWithKeys(BlockServicesWithKeysReq {
                nonce: U64::new(nonce),
                time: EggsTime::now(),
                begin,
            });
            let next = self.call(&request, |response| {
                let ShuckleResponse::BlockServicesWithKeys(page) = response else {
                    return Err(ShuckleError::Unexpected);
                };
                for service in page.block_services.iter() {
                    let key = self.key.wrap_key(&SecretKey(service.wrapped_key), service.id, nonce);
                    if block_service_id(&key) != service.id {
                        return Err(ShuckleError::BadKey(service.id));
                    }
                    services.push(BlockServiceRecord {
                        id: service.id,
                        address: service.address,
                        storage_class: service.storage_class,
                        flags: service.flags,
                        write_weight: service.write_weight.get(),
                        key,
                        host: service.host.as_bytes().to_vec(),
                    });
                }
                Ok(page.next)
            })?;
            if next.get() == 0 || next <= begin || services.len() > BLOCK_SERVICES_MAX {
                return Ok(services);
            }
            begin = next;
        }
    }

    /// Announces this shard's address.
    pub fn register_shard(&self, shard: ShardId, address: SocketAddr) -> Result<(), ShuckleError> {
        let request = ShuckleRequest::RegisterShard(RegisterShardReq {
            shard,
            address: Address::from(address),
            time: EggsTime::now(),
        });
        self.call(&request, |response| match response {
            ShuckleResponse::RegisterShard(_) => Ok(()),
            _ => Err(ShuckleError::Unexpected),
        })
    }
}
