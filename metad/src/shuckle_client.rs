//! The shard's shuckle client: the block service listing (keys unwrapped)
//! and the shard's registration, as privileged requests through the one
//! datagram requester (`daemon::udp`), driven from the refresher thread.

use std::net::SocketAddr;
use std::time::Duration;

use daemon::udp::{ClientOptions, DatagramClient, RequestError, RetryPolicy, Shuckle};
use wire::ids::{BlockServiceId, EggsTime, ShardId};
use wire::limits::BLOCK_SERVICES_MAX;
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
    #[error("shuckle answered something unexpected: {0}")]
    Unexpected(String),
    #[error("shuckle sent block service {0} with a key that does not match its id")]
    BadKey(BlockServiceId),
}

impl From<RequestError> for ShuckleError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Timeout { addr, .. } => ShuckleError::TimedOut(addr),
            RequestError::Response { kind, text, .. } => ShuckleError::Refused { kind, text },
            RequestError::Io(error) => ShuckleError::Io(error),
            other => ShuckleError::Unexpected(other.to_string()),
        }
    }
}

/// Blocking: each call runs the requester on this client's own
/// single-threaded runtime (the shard's I/O threads are plain blocking
/// threads; only the refresher thread talks to shuckle).
pub struct ShuckleClient {
    runtime: tokio::runtime::Runtime,
    requester: DatagramClient,
    shuckle: SocketAddr,
    key: MacKey,
    retry: RetryPolicy,
}

impl ShuckleClient {
    /// A client of `shuckle` whose socket is bound to `local` (the
    /// advertised address's IP and port 0, so shuckle and firewalls see the
    /// shard's own address; the wildcard when none is set).
    pub fn new(shuckle: SocketAddr, local: SocketAddr, cluster_key: &SecretKey) -> Result<Self, ShuckleError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let key = MacKey::new(cluster_key);
        let options = ClientOptions { key: Some(key.clone()), ..ClientOptions::default() };
        let requester = runtime.block_on(async { DatagramClient::bind(local, options) })?;
        let retry = RetryPolicy { deadline: REQUEST_DEADLINE, ..RetryPolicy::default() };
        Ok(Self { runtime, requester, shuckle, key, retry })
    }

    /// Sends `request` (privileged, MAC'd) and hands the accepted answer to
    /// `parse`; an error answer is [`ShuckleError::Refused`].
    fn call<T>(
        &self,
        request: &ShuckleRequest,
        parse: impl FnOnce(ShuckleResponse<'_>) -> Result<T, ShuckleError>,
    ) -> Result<T, ShuckleError> {
        let reply = self.runtime.block_on(self.requester.request_with::<Shuckle>(self.shuckle, request, self.retry))?;
        parse(reply.get()?)
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
                    return Err(ShuckleError::Unexpected(format!("{response:?}")));
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
            other => Err(ShuckleError::Unexpected(format!("{other:?}"))),
        })
    }
}
