//! The real [`Shards`]: privileged, MAC'd datagrams to the shards over UDP,
//! and the two shuckle exchanges the CDC needs (shard addresses, its own
//! registration).
//!
//! Both go through the one datagram requester
//! ([`daemon::udp::DatagramClient`]), which owns the socket, the timeouts and
//! the acceptance rules: a response counts only from the address asked, with
//! the request's id, decoding completely, of the request's kind or the error
//! kind allowed for it (a privileged request accepts only the MAC'd error
//! 0x80, never a forgeable plain one), with a valid MAC when privileged.
//! What is the CDC's own lives here and in the coordinator: the request id of
//! a step is the caller's (the same on every attempt, across restarts), and
//! [`UdpShards::request`] makes exactly one attempt per call, because the
//! coordinator decides how long to keep trying (mutations until answered).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Duration;

use daemon::udp::{DatagramClient, RequestError, RetryPolicy, Shard, Shuckle};
use wire::limits::SHARD_PORT_BASE;
use wire::shuckle::{RegisterCdcReq, ShardsReq, ShuckleRequest, ShuckleResponse};
use wire::{Address, EggsTime, ShardId};

use crate::shards::{Attempt, ShardReply, Shards, TransportError};

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

    /// Whether `shard` is known to exist: named by a flag or registered
    /// with shuckle. With neither (shuckle never answered), every shard is
    /// assumed to exist.
    pub fn knows(&self, shard: ShardId) -> bool {
        if self.overrides.contains_key(&shard) {
            return true;
        }
        let registered = self.registered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        registered.contains_key(&shard) || (registered.is_empty() && self.overrides.is_empty())
    }

    /// Replaces the addresses learnt from shuckle.
    pub fn set_registered(&self, shards: &[(ShardId, SocketAddr)]) {
        let mut registered = self.registered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *registered = shards.iter().copied().collect();
    }
}

/// Sends the CDC's shard requests. The [`DatagramClient`] must hold the
/// cluster key (every CDC step but stat and resolve is privileged).
pub struct UdpShards {
    client: DatagramClient,
    addresses: std::sync::Arc<AddressBook>,
}

impl UdpShards {
    pub fn new(client: DatagramClient, addresses: std::sync::Arc<AddressBook>) -> Self {
        Self { client, addresses }
    }
}

/// One transmission, waiting `timeout` for its answer.
fn single_attempt(timeout: Duration) -> RetryPolicy {
    RetryPolicy { timeout_initial: timeout, timeout_max: timeout, deadline: timeout }
}

impl Shards for UdpShards {
    fn knows(&self, shard: ShardId) -> bool {
        self.addresses.knows(shard)
    }

    async fn request(&self, attempt: Attempt<'_, '_>) -> Result<ShardReply, TransportError> {
        let Attempt { shard, request_id, request, timeout } = attempt;
        let address = self.addresses.address(shard);
        let reply =
            match self.client.request_with_id::<Shard>(address, request_id, request, single_attempt(timeout)).await {
                Ok(reply) => reply,
                Err(RequestError::Response { kind, .. }) => return Ok(ShardReply::Error(kind)),
                Err(RequestError::Timeout { .. }) => return Err(TransportError::Timeout(shard)),
                Err(error) => {
                    // Cannot encode (wire checks at compile time that every
                    // CDC request fits a datagram), id in use (one request in
                    // flight at a time), or a socket failure: like a lost
                    // datagram, the coordinator tries again.
                    tracing::error!(%error, shard, kind = request.kind().name(), "shard request failed");
                    tokio::time::sleep(timeout).await;
                    return Err(TransportError::Timeout(shard));
                }
            };
        let response = match reply.get() {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, shard, "shard response does not decode");
                return Err(TransportError::Timeout(shard));
            }
        };
        match ShardReply::from_response(request.kind(), &response) {
            Some(reply) => Ok(reply),
            None => {
                // The requester checked the kind, so this is a variant the
                // CDC never reads (e.g. a stat of another shape).
                tracing::warn!(shard, ?response, "shard response the CDC cannot use");
                Err(TransportError::Timeout(shard))
            }
        }
    }
}

/// How long to wait for shuckle: a few growing attempts, then give up (the
/// announce loop asks again later).
fn shuckle_retry() -> RetryPolicy {
    RetryPolicy {
        timeout_initial: Duration::from_millis(200),
        timeout_max: Duration::from_millis(800),
        deadline: Duration::from_millis(1400),
    }
}

/// The shards registered with shuckle (every page); `None` when shuckle did
/// not answer.
pub async fn registered_shards(client: &DatagramClient, shuckle: SocketAddr) -> Option<Vec<(ShardId, SocketAddr)>> {
    let mut shards = Vec::new();
    let mut begin = 0u8;
    // At most one page per possible shard: a bound against a looping peer.
    for _ in 0..wire::limits::SHARD_COUNT {
        let request = ShuckleRequest::Shards(ShardsReq { begin });
        let reply = match client.request_with::<Shuckle>(shuckle, &request, shuckle_retry()).await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::debug!(%error, "shard list from shuckle");
                return None;
            }
        };
        let next = match reply.get().ok()? {
            ShuckleResponse::Shards(page) => {
                shards.extend(
                    page.shards
                        .iter()
                        .filter(|info| !info.address.is_unknown())
                        .map(|info| (info.shard, info.address.socket_addr())),
                );
                page.next
            }
            _ => return None,
        };
        if next == 0 || next <= begin {
            break;
        }
        begin = next;
    }
    Some(shards)
}

/// Announces the CDC's address to shuckle (privileged: `client` must hold
/// the cluster key). True when shuckle acknowledged.
pub async fn register_with_shuckle(client: &DatagramClient, shuckle: SocketAddr, address: SocketAddr) -> bool {
    let request =
        ShuckleRequest::RegisterCdc(RegisterCdcReq { address: Address::from(address), time: EggsTime::now() });
    match client.request_with::<Shuckle>(shuckle, &request, shuckle_retry()).await {
        Ok(reply) => matches!(reply.get(), Ok(ShuckleResponse::RegisterCdc(_))),
        Err(RequestError::Response { kind, text, .. }) => {
            tracing::warn!(%kind, text, "shuckle refused the registration");
            false
        }
        Err(error) => {
            tracing::debug!(%error, "registration with shuckle");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemon::udp::ClientOptions;
    use tokio::net::UdpSocket;
    use wire::datagram;
    use wire::limits::UDP_DATAGRAM_BYTES_MAX;
    use wire::shard::{EmptyResp, ReleaseDirentReq, ReleaseDirentReqHead, ShardRequest, ShardResponse, StatReq};
    use wire::{ErrorKind, ErrorResp, InodeId, MacKey, Name, SecretKey};

    fn udp_shards(key: MacKey, book: std::sync::Arc<AddressBook>) -> UdpShards {
        let client = DatagramClient::bind_any(ClientOptions { key: Some(key), ..ClientOptions::default() }).unwrap();
        UdpShards::new(client, book)
    }

    fn release_dirent() -> ShardRequest<'static> {
        let name = Name::new(b"x").unwrap();
        let head = ReleaseDirentReqHead { dir: InodeId::ROOT, inode: InodeId::new(5), kill: 0 };
        ShardRequest::ReleaseDirent(ReleaseDirentReq { head, name })
    }

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
        let shards = udp_shards(key, book);
        let reply = shards
            .request(Attempt { shard: 0, request_id: 77, request: &release_dirent(), timeout: Duration::from_secs(5) })
            .await
            .unwrap();
        assert_eq!(reply, ShardReply::Empty);
    }

    /// A shard stand-in that answers one request with a plain error (which
    /// anyone can forge), then, if `then_macd`, with the MAC'd error 0x80.
    async fn forging_shard(key: MacKey, then_macd: bool) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
            let (len, from) = socket.recv_from(&mut buf).await.unwrap();
            let (header, _) = datagram::decode::<ShardRequest<'_>>(&buf[..len], Some(&key)).unwrap();
            let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
            let forged = ShardResponse::Error(ErrorResp::new(ErrorKind::NotFound, "forged"));
            let n = datagram::encode(&mut out, header.request_id(), &forged, None).unwrap();
            socket.send_to(&out[..n], from).await.unwrap();
            if then_macd {
                let real = ShardResponse::Error(ErrorResp::new(ErrorKind::DirectoryNotEmpty, "real"));
                let n = datagram::encode_response(&mut out, &header, &real, Some(&key)).unwrap();
                socket.send_to(&out[..n], from).await.unwrap();
            }
        });
        address
    }

    #[tokio::test]
    async fn a_forged_plain_error_does_not_answer_a_privileged_step() {
        let key = MacKey::new(&SecretKey([3; 16]));
        let address = forging_shard(key.clone(), true).await;
        let book = std::sync::Arc::new(AddressBook::new([(0, address)].into_iter().collect()));
        let shards = udp_shards(key.clone(), book);
        let reply = shards
            .request(Attempt { shard: 0, request_id: 78, request: &release_dirent(), timeout: Duration::from_secs(5) })
            .await
            .unwrap();
        assert_eq!(reply, ShardReply::Error(ErrorKind::DirectoryNotEmpty), "the MAC'd error, not the forged one");

        let address = forging_shard(key.clone(), false).await;
        let book = std::sync::Arc::new(AddressBook::new([(1, address)].into_iter().collect()));
        let shards = udp_shards(key, book);
        let result = shards
            .request(Attempt {
                shard: 1,
                request_id: 79,
                request: &release_dirent(),
                timeout: Duration::from_millis(300),
            })
            .await;
        assert_eq!(result, Err(TransportError::Timeout(1)), "only a forged error: no answer");
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let book = std::sync::Arc::new(AddressBook::new([(4, silent.local_addr().unwrap())].into_iter().collect()));
        let key = MacKey::new(&SecretKey([3; 16]));
        let shards = udp_shards(key, book);
        let request = ShardRequest::Stat(StatReq { inode: InodeId::ROOT });
        let result = shards
            .request(Attempt { shard: 4, request_id: 1, request: &request, timeout: Duration::from_millis(50) })
            .await;
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
