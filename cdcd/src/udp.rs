//! The real [`Shards`]: privileged, MAC'd datagrams to the shards over UDP,
//! and the two shuckle exchanges the CDC needs (shard addresses, its own
//! registration).
//!
//! One socket, one request in flight at a time (transactions run serially).
//! A response is accepted only from the shard's address, with the request's
//! id and kind, decoding completely, and for privileged kinds with a valid
//! MAC; anything else is ignored while the attempt's timeout runs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use wire::datagram;
use wire::limits::{SHARD_PORT_BASE, UDP_DATAGRAM_BYTES_MAX};
use wire::shard::{ShardRequest, ShardResponse};
use wire::shuckle::{RegisterCdcReq, ShardsReq, ShuckleRequest, ShuckleResponse};
use wire::{Address, EggsTime, MacKey, ShardId};

use crate::shards::{ShardReply, Shards, TransportError};

/// Where each shard listens: flags first, then shuckle, then the default
/// port `SHARD_PORT_BASE + shard` on localhost.
#[derive(Debug, Default)]
pub struct AddressBook {
    overrides: HashMap<ShardId, SocketAddr>,
    registered: Mutex<HashMap<ShardId, SocketAddr>>,
}

impl AddressBook {
    pub fn new(overrides: HashMap<ShardId, SocketAddr>) -> Self {
        Self { overrides, registered: Mutex::default() }
    }

    pub fn address(&self, shard: ShardId) -> SocketAddr {
        if let Some(address) = self.overrides.get(&shard) {
            return *address;
        }
        let registered = self.registered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        registered.get(&shard).copied().unwrap_or_else(|| {
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, SHARD_PORT_BASE + u16::from(shard)))
        })
    }

    /// Replaces the addresses learnt from shuckle.
    pub fn set_registered(&self, shards: &[(ShardId, SocketAddr)]) {
        let mut registered = self.registered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *registered = shards.iter().copied().collect();
    }
}

pub struct UdpShards {
    socket: tokio::sync::Mutex<UdpSocket>,
    key: MacKey,
    addresses: std::sync::Arc<AddressBook>,
}

impl UdpShards {
    pub fn new(socket: UdpSocket, key: MacKey, addresses: std::sync::Arc<AddressBook>) -> Self {
        Self { socket: tokio::sync::Mutex::new(socket), key, addresses }
    }
}

impl Shards for UdpShards {
    async fn request(
        &self,
        shard: ShardId,
        request_id: u64,
        request: &ShardRequest<'_>,
        timeout: Duration,
    ) -> Result<ShardReply, TransportError> {
        let address = self.addresses.address(shard);
        let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = match datagram::encode(&mut buf, request_id, request, Some(&self.key)) {
            Ok(len) => len,
            Err(error) => {
                // Cannot happen: wire checks at compile time that the
                // largest CDC request fits one datagram.
                tracing::error!(%error, kind = request.kind().name(), "cannot encode a shard request");
                return Err(TransportError::Timeout(shard));
            }
        };
        let socket = self.socket.lock().await;
        let deadline = Instant::now() + timeout;
        if let Err(error) = socket.send_to(&buf[..len], address).await {
            tracing::debug!(%error, %address, "send to shard failed");
            tokio::time::sleep_until(deadline).await;
            return Err(TransportError::Timeout(shard));
        }
        let mut answer = [0u8; UDP_DATAGRAM_BYTES_MAX];
        loop {
            let (received, from) = match tokio::time::timeout_at(deadline, socket.recv_from(&mut answer)).await {
                Err(_) => return Err(TransportError::Timeout(shard)),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "receive from shard failed");
                    continue;
                }
                Ok(Ok(received)) => received,
            };
            if from != address {
                tracing::debug!(%from, %address, "datagram from an unexpected address ignored");
                continue;
            }
            let Some(bytes) = answer.get(..received) else { continue };
            let (header, response) = match datagram::decode::<ShardResponse<'_>>(bytes, Some(&self.key)) {
                Ok(decoded) => decoded,
                Err(error) => {
                    tracing::debug!(%error, %from, "undecodable shard response ignored");
                    continue;
                }
            };
            if header.request_id() != request_id {
                continue; // a late answer to an earlier request
            }
            match ShardReply::from_response(request.kind(), &response) {
                Some(reply) => return Ok(reply),
                None => tracing::warn!(%from, "shard response of the wrong kind ignored"),
            }
        }
    }
}

/// Asks shuckle once per attempt, with growing timeouts; `None` when it
/// never answered. `handle` reduces the response (or refuses it).
async fn ask_shuckle<T>(
    shuckle: SocketAddr,
    request: &ShuckleRequest,
    key: Option<&MacKey>,
    handle: impl Fn(&ShuckleResponse<'_>) -> Option<T>,
) -> Option<T> {
    let bind: SocketAddr = if shuckle.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let socket = UdpSocket::bind(bind).await.ok()?;
    let request_id: u64 = rand::random();
    let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut buf, request_id, request, key).ok()?;
    let mut answer = [0u8; UDP_DATAGRAM_BYTES_MAX];
    for attempt in 0..3u32 {
        socket.send_to(&buf[..len], shuckle).await.ok()?;
        let deadline = Instant::now() + Duration::from_millis(200 << attempt);
        while let Ok(Ok((received, from))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut answer)).await {
            let Some(bytes) = answer.get(..received) else { continue };
            if from != shuckle {
                continue;
            }
            if let Ok((header, response)) = datagram::decode::<ShuckleResponse<'_>>(bytes, key)
                && header.request_id() == request_id
            {
                return handle(&response);
            }
        }
    }
    None
}

/// The shards registered with shuckle (every page); `None` when shuckle did
/// not answer.
pub async fn registered_shards(shuckle: SocketAddr) -> Option<Vec<(ShardId, SocketAddr)>> {
    let mut shards = Vec::new();
    let mut begin = 0u8;
    // At most one page per possible shard: a bound against a looping peer.
    for _ in 0..wire::limits::SHARD_COUNT {
        let request = ShuckleRequest::Shards(ShardsReq { begin });
        let page = ask_shuckle(shuckle, &request, None, |response| match response {
            ShuckleResponse::Shards(page) => Some((
                page.next,
                page.shards
                    .iter()
                    .filter(|info| !info.address.is_unknown())
                    .map(|info| (info.shard, info.address.socket_addr()))
                    .collect::<Vec<_>>(),
            )),
            _ => None,
        })
        .await?;
        shards.extend(page.1);
        if page.0 == 0 || page.0 <= begin {
            break;
        }
        begin = page.0;
    }
    Some(shards)
}

/// Announces the CDC's address to shuckle (privileged). True when shuckle
/// acknowledged.
pub async fn register_with_shuckle(shuckle: SocketAddr, key: &MacKey, address: SocketAddr) -> bool {
    let request =
        ShuckleRequest::RegisterCdc(RegisterCdcReq { address: Address::from(address), time: EggsTime::now() });
    ask_shuckle(shuckle, &request, Some(key), |response| match response {
        ShuckleResponse::RegisterCdc(_) => Some(()),
        ShuckleResponse::Error(error) => {
            tracing::warn!(kind = %error.kind, text = error.text.as_str(), "shuckle refused the registration");
            None
        }
        _ => None,
    })
    .await
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::shard::{EmptyResp, ReleaseDirentReq, ReleaseDirentReqHead, StatReq};
    use wire::{InodeId, Name, SecretKey};

    /// A shard stand-in answering `answers(request)` for each datagram.
    async fn fake_shard(key: MacKey, answers: usize, wrong_first: bool) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
            for _ in 0..answers {
                let (len, from) = socket.recv_from(&mut buf).await.unwrap();
                let (header, request) = datagram::decode::<ShardRequest<'_>>(&buf[..len], Some(&key)).unwrap();
                assert!(matches!(request, ShardRequest::ReleaseDirent(_)));
                let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
                if wrong_first {
                    // Garbage, a wrong id, and a bad MAC first: all ignored.
                    socket.send_to(b"junk", from).await.unwrap();
                    let n = datagram::encode(
                        &mut out,
                        header.request_id() + 1,
                        &ShardResponse::ReleaseDirent(EmptyResp {}),
                        Some(&key),
                    )
                    .unwrap();
                    socket.send_to(&out[..n], from).await.unwrap();
                    let other = MacKey::new(&SecretKey([9; 16]));
                    let n = datagram::encode(
                        &mut out,
                        header.request_id(),
                        &ShardResponse::ReleaseDirent(EmptyResp {}),
                        Some(&other),
                    )
                    .unwrap();
                    socket.send_to(&out[..n], from).await.unwrap();
                }
                let n = datagram::encode(
                    &mut out,
                    header.request_id(),
                    &ShardResponse::ReleaseDirent(EmptyResp {}),
                    Some(&key),
                )
                .unwrap();
                socket.send_to(&out[..n], from).await.unwrap();
            }
        });
        address
    }

    #[tokio::test]
    async fn accepts_only_the_right_authenticated_answer() {
        let key = MacKey::new(&SecretKey([3; 16]));
        let address = fake_shard(key.clone(), 1, true).await;
        let book = std::sync::Arc::new(AddressBook::new([(0, address)].into_iter().collect()));
        let shards = UdpShards::new(UdpSocket::bind("127.0.0.1:0").await.unwrap(), key, book);
        let name = Name::new(b"x").unwrap();
        let head = ReleaseDirentReqHead { dir: InodeId::ROOT, inode: InodeId::new(5), kill: 0 };
        let request = ShardRequest::ReleaseDirent(ReleaseDirentReq { head, name });
        let reply = shards.request(0, 77, &request, Duration::from_secs(5)).await.unwrap();
        assert_eq!(reply, ShardReply::Empty);
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let book = std::sync::Arc::new(AddressBook::new([(4, silent.local_addr().unwrap())].into_iter().collect()));
        let key = MacKey::new(&SecretKey([3; 16]));
        let shards = UdpShards::new(UdpSocket::bind("127.0.0.1:0").await.unwrap(), key, book);
        let request = ShardRequest::Stat(StatReq { inode: InodeId::ROOT });
        let result = shards.request(4, 1, &request, Duration::from_millis(50)).await;
        assert_eq!(result, Err(TransportError::Timeout(4)));
    }

    #[test]
    fn default_addresses() {
        let book = AddressBook::new(HashMap::new());
        assert_eq!(book.address(3).port(), SHARD_PORT_BASE + 3);
        book.set_registered(&[(3, "10.0.0.1:9".parse().unwrap())]);
        assert_eq!(book.address(3), "10.0.0.1:9".parse().unwrap());
    }
}
