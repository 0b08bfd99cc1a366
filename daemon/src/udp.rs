//! The one datagram requester: send one request of any datagram family
//! (shard, CDC, shuckle) to a daemon and wait for its response, with retries.
//! The client library, cdcd, metad's shuckle client and gcd use it; perf's
//! load generator keeps its own single-socket loop but accepts answers by
//! the same rule. The accept rule ([`accept_response`]) exists only here.
//!
//! # How it works
//!
//! - One [`DatagramClient`] owns one UDP socket and one background receive
//!   task. Any number of requests may be in flight at once, from any number of
//!   tasks (the client is `Clone` and cheap to clone): responses are
//!   demultiplexed by request id to the waiting request.
//! - Each request gets a fresh random 64-bit request id that is not in use by
//!   another in-flight request of this client, unless the caller chooses it
//!   ([`DatagramClient::request_with_id`], for the CDC's per-step ids). **The same id is reused on
//!   every retransmission**, so the daemon can recognise a retry of a request
//!   it already executed (DESIGN §4).
//! - The first attempt waits [`RetryPolicy::timeout_initial`]
//!   (default [`CLIENT_TIMEOUT_INITIAL_NS`]); each retry doubles the wait and
//!   adds up to 25% random jitter, capped at [`RetryPolicy::timeout_max`]
//!   (default [`CLIENT_TIMEOUT_MAX_NS`]). After
//!   [`RetryPolicy::deadline`] in total (default
//!   [`CLIENT_REQUEST_DEADLINE_NS`]) the request fails with
//!   [`RequestError::Timeout`].
//! - A response is accepted only if it passes [`accept_response`]: it comes
//!   from the address the request was sent to, carries the right family
//!   magic, version, request id, and either the request's kind or the error
//!   kind, decodes completely, and — when privileged — carries a valid MAC
//!   under the cluster key. A privileged request accepts only its own kind or
//!   the MAC'd error kind 0x80 ([`wire::datagram::response_kind_matches`]): a
//!   plain error, which anyone can forge, does not answer it. Anything else
//!   is logged at debug level and ignored (the request keeps waiting), so a
//!   stray or forged datagram can delay but never corrupt a request.
//! - Privileged requests (kind ≥ 0x80) are MAC'd with the cluster key given to
//!   [`ClientOptions::key`]; without a key they fail with
//!   [`RequestError::Encode`] (`MissingKey`).
//!
//! # Usage
//!
//! ```no_run
//! # async fn example() -> Result<(), daemon::udp::RequestError> {
//! use daemon::udp::{ClientOptions, DatagramClient, Shard};
//! use wire::shard::{ShardRequest, ShardResponse, StatReq, StatResp};
//! # let addr: std::net::SocketAddr = "127.0.0.1:22273".parse().unwrap();
//! # let inode = wire::InodeId::ROOT;
//! let client = DatagramClient::bind_any(ClientOptions::default())?;
//! let reply = client.request::<Shard>(addr, &ShardRequest::Stat(StatReq { inode })).await?;
//! // An error response has already become `RequestError::Response`.
//! match reply.get()? {
//!     ShardResponse::Stat(StatResp::File(file)) => println!("size {}", file.size.get()),
//!     other => return Err(reply.unexpected(&other)),
//! }
//! # Ok(()) }
//! ```
//!
//! Responses borrow the datagram they were decoded from, so a request returns
//! an owned [`Reply`] holding the datagram bytes; [`Reply::get`] decodes it
//! (cheaply, without copying) each time it is called.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use wire::cdc::{CdcKind, CdcRequest, CdcResponse};
use wire::codec::Reader;
use wire::datagram::{self, Body, HEADER_BYTES};
use wire::limits::{
    CLIENT_REQUEST_DEADLINE_NS, CLIENT_TIMEOUT_INITIAL_NS, CLIENT_TIMEOUT_MAX_NS, UDP_DATAGRAM_BYTES_MAX,
};
use wire::mac::MacKey;
use wire::shard::{ShardKind, ShardRequest, ShardResponse};
use wire::shuckle::{ShuckleKind, ShuckleRequest, ShuckleResponse};
use wire::{DecodeError, EncodeError, ErrorKind};

/// One datagram protocol family: ties a request enum to its response enum.
///
/// Implemented by the marker types [`Shard`], [`Cdc`] and [`Shuckle`].
pub trait Family: Send + Sync + 'static {
    /// The family's request enum (e.g. [`ShardRequest`]).
    type Request<'a>: Body<'a>;
    /// The family's response enum (e.g. [`ShardResponse`]).
    type Response<'a>: Body<'a> + fmt::Debug;
    /// Human name, for errors and logs.
    const NAME: &'static str;
    /// The error kind and text if `response` is an error response.
    fn error_of(response: &Self::Response<'_>) -> Option<(ErrorKind, String)>;
    /// The name of a request kind, for messages.
    fn kind_name(kind: u8) -> &'static str;
}

/// The metadata shard family ([`ShardRequest`] → [`ShardResponse`]).
pub struct Shard;
/// The CDC family ([`CdcRequest`] → [`CdcResponse`]).
pub struct Cdc;
/// Shuckle's datagram family ([`ShuckleRequest`] → [`ShuckleResponse`]).
pub struct Shuckle;

impl Family for Shard {
    type Request<'a> = ShardRequest<'a>;
    type Response<'a> = ShardResponse<'a>;
    const NAME: &'static str = "shard";
    fn kind_name(kind: u8) -> &'static str {
        ShardKind::from_u8(kind).map_or("unknown", ShardKind::name)
    }
    fn error_of(response: &ShardResponse<'_>) -> Option<(ErrorKind, String)> {
        match response {
            ShardResponse::Error(error) => Some((error.kind, error.text.as_str().to_owned())),
            _ => None,
        }
    }
}

impl Family for Cdc {
    type Request<'a> = CdcRequest<'a>;
    type Response<'a> = CdcResponse<'a>;
    const NAME: &'static str = "CDC";
    fn kind_name(kind: u8) -> &'static str {
        CdcKind::from_u8(kind).map_or("unknown", CdcKind::name)
    }
    fn error_of(response: &CdcResponse<'_>) -> Option<(ErrorKind, String)> {
        match response {
            CdcResponse::Error(error) => Some((error.kind, error.text.as_str().to_owned())),
            _ => None,
        }
    }
}

impl Family for Shuckle {
    type Request<'a> = ShuckleRequest;
    type Response<'a> = ShuckleResponse<'a>;
    const NAME: &'static str = "shuckle";
    fn kind_name(kind: u8) -> &'static str {
        ShuckleKind::from_u8(kind).map_or("unknown", ShuckleKind::name)
    }
    fn error_of(response: &ShuckleResponse<'_>) -> Option<(ErrorKind, String)> {
        match response {
            ShuckleResponse::Error(error) => Some((error.kind, error.text.as_str().to_owned())),
            _ => None,
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No acceptable response before the deadline (the daemon is down,
    /// unreachable, or every response was malformed).
    #[error("{family} request {kind} to {addr} timed out after {attempts} attempts ({elapsed_ms} ms)")]
    Timeout { family: &'static str, kind: &'static str, addr: SocketAddr, attempts: u32, elapsed_ms: u64 },
    /// The daemon answered with an error response. `attempts` is how many
    /// times the request was sent: more than one means an earlier
    /// transmission may have been executed (see
    /// [`RequestError::maybe_retried`]).
    #[error("{family} at {addr}: {kind}{}", if text.is_empty() { String::new() } else { format!(": {text}") })]
    Response { family: &'static str, addr: SocketAddr, kind: ErrorKind, text: String, attempts: u32 },
    /// The daemon answered with a response of the right kind whose content
    /// does not make sense for the request (e.g. the wrong variant).
    #[error("{family} at {addr}: unexpected response: {detail}")]
    Unexpected { family: &'static str, addr: SocketAddr, detail: String },
    /// The request could not be encoded (too long, or privileged without a key).
    #[error("cannot encode {family} request: {source}")]
    Encode { family: &'static str, source: EncodeError },
    /// A stored response failed to decode (never happens: responses are
    /// validated on receipt; kept so decoding stays total).
    #[error("{family} response from {addr} does not decode: {source}")]
    Decode { family: &'static str, addr: SocketAddr, source: DecodeError },
    /// [`DatagramClient::request_with_id`] was given an id that another
    /// request of this client is using.
    #[error("request id {request_id} is already in flight")]
    IdInUse { request_id: u64 },
    /// The socket failed.
    #[error("datagram socket: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    /// The error kind of an error response, if this is one.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            RequestError::Response { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// True for an error response to a request sent more than once: an
    /// earlier transmission may have succeeded and this is the answer to
    /// the retry (e.g. NOT_FOUND for a link whose eden file is gone).
    pub fn maybe_retried(&self) -> bool {
        matches!(self, RequestError::Response { attempts, .. } if *attempts > 1)
    }

    /// True for [`RequestError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, RequestError::Timeout { .. })
    }
}

/// Timeouts and retries of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first transmission.
    pub timeout_initial: Duration,
    /// Longest wait after any one transmission.
    pub timeout_max: Duration,
    /// Total time before giving up.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            timeout_initial: Duration::from_nanos(CLIENT_TIMEOUT_INITIAL_NS),
            timeout_max: Duration::from_nanos(CLIENT_TIMEOUT_MAX_NS),
            deadline: Duration::from_nanos(CLIENT_REQUEST_DEADLINE_NS),
        }
    }
}

impl RetryPolicy {
    /// The wait after transmission number `attempt` (0-based), before jitter.
    pub fn base_timeout(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.timeout_initial.saturating_mul(factor).min(self.timeout_max)
    }

    /// The wait after transmission `attempt`, with `jitter` in `[0, 1)` adding
    /// up to 25%, still capped at `timeout_max`.
    pub fn timeout(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self.base_timeout(attempt);
        base.saturating_add(base.mul_f64(jitter.clamp(0.0, 1.0) * 0.25)).min(self.timeout_max)
    }
}

/// An owned, validated response datagram of family `F`.
pub struct Reply<F: Family> {
    bytes: Vec<u8>,
    body_end: usize,
    kind: u8,
    addr: SocketAddr,
    family: PhantomData<F>,
}

impl<F: Family> Reply<F> {
    /// Decodes the response (no copy; the result borrows `self`). Never an
    /// error response: those become [`RequestError::Response`].
    pub fn get(&self) -> Result<F::Response<'_>, RequestError> {
        let body = self.bytes.get(HEADER_BYTES..self.body_end).unwrap_or_default();
        let mut reader = Reader::new(body);
        let decoded = F::Response::decode_body(self.kind, &mut reader)
            .and_then(|response| reader.finish().map(|()| response))
            .map_err(|source| RequestError::Decode { family: F::NAME, addr: self.addr, source })?;
        Ok(decoded)
    }

    /// The whole datagram as received (header, body, MAC if any).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The daemon that answered.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An [`RequestError::Unexpected`] describing `response`, for a caller
    /// that got a variant it did not ask for.
    pub fn unexpected(&self, response: &F::Response<'_>) -> RequestError {
        RequestError::Unexpected { family: F::NAME, addr: self.addr, detail: format!("{response:?}") }
    }
}

impl<F: Family> fmt::Debug for Reply<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply").field("family", &F::NAME).field("addr", &self.addr).field("kind", &self.kind).finish()
    }
}

/// What a request was: where it went, under which id, of which kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub to: SocketAddr,
    pub request_id: u64,
    pub kind: u8,
}

/// Why a received datagram does not answer a request (it is ignored, and
/// the request keeps waiting).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("from {from}, not from {expected}")]
    OtherAddress { from: SocketAddr, expected: SocketAddr },
    #[error("does not decode: {0}")]
    Malformed(DecodeError),
    #[error("answers request id {got}, not {expected}")]
    OtherRequest { got: u64, expected: u64 },
    #[error("of kind {got:#04x}, which does not answer kind {expected:#04x}")]
    OtherKind { got: u8, expected: u8 },
}

/// **The accept rule** for a datagram answering the request `sent`, the one
/// place it is written (every requester calls it). The datagram must come
/// from the address the request went to; carry the response family's magic
/// and version; decode completely (so a truncated or padded datagram is
/// refused), with a valid MAC under `key` when it is privileged; carry the
/// request's id; and be of the request's kind or an error kind that may
/// answer it ([`datagram::response_kind_matches`]: a privileged request
/// takes only the MAC'd error kind 0x80, never a forgeable plain error).
///
/// An accepted error response is returned like any other: the caller
/// decides what an error means.
pub fn accept_response<'a, R: Body<'a>>(
    sent: Sent,
    key: Option<&MacKey>,
    from: SocketAddr,
    datagram: &'a [u8],
) -> Result<(datagram::Header, R), Refusal> {
    if from != sent.to {
        return Err(Refusal::OtherAddress { from, expected: sent.to });
    }
    let (header, response) = datagram::decode::<R>(datagram, key).map_err(Refusal::Malformed)?;
    if header.request_id() != sent.request_id {
        return Err(Refusal::OtherRequest { got: header.request_id(), expected: sent.request_id });
    }
    if !datagram::response_kind_matches(sent.kind, &header) {
        return Err(Refusal::OtherKind { got: header.kind, expected: sent.kind });
    }
    Ok((header, response))
}

/// A received datagram and who sent it.
type Delivery = (SocketAddr, Vec<u8>);

/// How many datagrams may queue for one request (duplicates of the response
/// to retransmissions, strays); more are dropped.
const DELIVERIES_PER_REQUEST_MAX: usize = 4;

/// A request's mailbox: the datagrams the receive task found under its id,
/// and the wake-up of the request waiting for them. The receive task
/// pushes into it directly (no channel per request: a tokio channel
/// allocates a block of 32 slots per request, for the one answer most
/// requests get).
#[derive(Default)]
struct Mailbox {
    deliveries: Mutex<Vec<Delivery>>,
    /// Keeps one permit when nobody waits, so an arrival between a look
    /// into `deliveries` and the wait is not missed.
    arrived: Notify,
}

impl Mailbox {
    /// Queues a datagram; false when the mailbox is full.
    fn push(&self, delivery: Delivery) -> bool {
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if deliveries.len() >= DELIVERIES_PER_REQUEST_MAX {
            return false;
        }
        deliveries.push(delivery);
        drop(deliveries);
        self.arrived.notify_one();
        true
    }

    /// Everything queued so far.
    fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Requests in flight, by request id.
type Pending = Arc<Mutex<HashMap<u64, Arc<Mailbox>>>>;

struct Inner {
    socket: Arc<UdpSocket>,
    pending: Pending,
    key: Option<MacKey>,
    retry: RetryPolicy,
    receiver: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// How a [`DatagramClient`] is set up.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The cluster key: needed to send privileged requests and to accept
    /// their (MAC'd) responses. `None` for ordinary clients.
    pub key: Option<MacKey>,
    /// Timeouts and retries.
    pub retry: RetryPolicy,
}

/// Sends datagram requests and waits for their responses; see the module
/// documentation. Clones share the socket and the in-flight table.
#[derive(Clone)]
pub struct DatagramClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for DatagramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramClient").field("local", &self.inner.socket.local_addr().ok()).finish()
    }
}

/// Socket buffer size asked of the kernel: room for many responses in flight
/// while the receive task is busy.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

impl DatagramClient {
    /// A client on an IPv4 socket bound to any local address and port.
    /// Must be called inside a tokio runtime.
    pub fn bind_any(options: ClientOptions) -> Result<Self, RequestError> {
        Self::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), options)
    }

    /// A client on a socket bound to `local` (port 0 = any). Must be called
    /// inside a tokio runtime (it spawns the receive task).
    pub fn bind(local: SocketAddr, options: ClientOptions) -> Result<Self, RequestError> {
        let domain = if local.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        // Larger buffers are an optimisation; the kernel may clamp them.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        socket.set_nonblocking(true)?;
        socket.bind(&local.into())?;
        let socket = Arc::new(UdpSocket::from_std(socket.into())?);
        let pending: Pending = Arc::default();
        let receiver = tokio::spawn(receive_loop(socket.clone(), pending.clone()));
        let ClientOptions { key, retry } = options;
        Ok(Self { inner: Arc::new(Inner { socket, pending, key, retry, receiver }) })
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> Result<SocketAddr, RequestError> {
        Ok(self.inner.socket.local_addr()?)
    }

    /// The retry policy in use.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    /// True if this client holds the cluster key.
    pub fn has_key(&self) -> bool {
        self.inner.key.is_some()
    }

    /// Sends `request` to `addr` and waits for its response, retrying with
    /// the same request id until [`RetryPolicy::deadline`]. An error
    /// response becomes [`RequestError::Response`]. Cancel-safe: dropping
    /// the future forgets the request.
    pub async fn request<F: Family>(
        &self,
        addr: SocketAddr,
        request: &F::Request<'_>,
    ) -> Result<Reply<F>, RequestError> {
        self.request_with::<F>(addr, request, self.inner.retry).await
    }

    /// [`DatagramClient::request`] with another retry policy for this one
    /// request (e.g. a short deadline to probe whether a daemon is up).
    pub async fn request_with<F: Family>(
        &self,
        addr: SocketAddr,
        request: &F::Request<'_>,
        retry: RetryPolicy,
    ) -> Result<Reply<F>, RequestError> {
        let (request_id, mailbox, guard) = self.register();
        self.exchange::<F>(addr, request_id, request, retry, mailbox, guard).await
    }

    /// [`DatagramClient::request_with`] under a request id chosen by the
    /// caller rather than a fresh random one.
    ///
    /// For requesters that must reuse one id across calls, not only across
    /// the retransmissions of one call: the CDC sends each mutation of a
    /// transaction step under an id derived from the persisted transaction,
    /// so that its retries — even after a CDC restart — are recognised by
    /// the shard as retransmissions. The caller must keep its ids distinct
    /// from the random ones of concurrent requests on this client (a 64-bit
    /// random collision is negligible); an id already in flight on this
    /// client fails at once with [`RequestError::IdInUse`].
    pub async fn request_with_id<F: Family>(
        &self,
        addr: SocketAddr,
        request_id: u64,
        request: &F::Request<'_>,
        retry: RetryPolicy,
    ) -> Result<Reply<F>, RequestError> {
        let (mailbox, guard) = self.register_id(request_id).ok_or(RequestError::IdInUse { request_id })?;
        self.exchange::<F>(addr, request_id, request, retry, mailbox, guard).await
    }

    /// Sends `request` under `request_id` (whose mailbox is `mailbox`)
    /// until an acceptable response or the deadline.
    async fn exchange<F: Family>(
        &self,
        addr: SocketAddr,
        request_id: u64,
        request: &F::Request<'_>,
        retry: RetryPolicy,
        mailbox: Arc<Mailbox>,
        _guard: PendingGuard,
    ) -> Result<Reply<F>, RequestError> {
        let mut buffer = [0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = datagram::encode(&mut buffer, request_id, request, self.inner.key.as_ref())
            .map_err(|source| RequestError::Encode { family: F::NAME, source })?;
        let kind = request.kind();
        let sent = Sent { to: addr, request_id, kind };
        let datagram = buffer.get(..len).unwrap_or_default();
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let elapsed = started.elapsed();
            if elapsed >= retry.deadline {
                return Err(RequestError::Timeout {
                    family: F::NAME,
                    kind: F::kind_name(kind),
                    addr,
                    attempts: attempt,
                    elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                });
            }
            if let Err(error) = self.inner.socket.send_to(datagram, addr).await {
                // An unreachable destination (ICMP) surfaces on some later
                // socket call on Linux; treat it like a lost datagram.
                tracing::debug!(%addr, %error, "datagram send failed");
            }
            let jitter = rand::rng().random::<f64>();
            let wait = retry.timeout(attempt, jitter).min(retry.deadline - elapsed);
            attempt += 1;
            let attempt_deadline = tokio::time::Instant::now() + wait;
            loop {
                for (from, bytes) in mailbox.take() {
                    if let Some(reply) = self.accept::<F>(sent, from, bytes, attempt)? {
                        return Ok(reply);
                    }
                }
                if tokio::time::timeout_at(attempt_deadline, mailbox.arrived.notified()).await.is_err() {
                    break;
                }
            }
            // This attempt timed out: retransmit (same id).
        }
    }

    /// Validates a received datagram: `Ok(None)` means "ignore it and keep
    /// waiting", `Err` is an error response.
    fn accept<F: Family>(
        &self,
        sent: Sent,
        from: SocketAddr,
        bytes: Vec<u8>,
        attempts: u32,
    ) -> Result<Option<Reply<F>>, RequestError> {
        let header = match accept_response::<F::Response<'_>>(sent, self.inner.key.as_ref(), from, &bytes) {
            Ok((header, response)) => {
                if let Some((kind, text)) = F::error_of(&response) {
                    return Err(RequestError::Response { family: F::NAME, addr: sent.to, kind, text, attempts });
                }
                header
            }
            Err(refusal) => {
                tracing::debug!(%from, %refusal, family = F::NAME, "ignoring a datagram");
                return Ok(None);
            }
        };
        let body_end = datagram::body_end(&header, bytes.len());
        Ok(Some(Reply { bytes, body_end, kind: header.kind, addr: sent.to, family: PhantomData }))
    }

    /// Picks an unused random request id and registers a mailbox for it.
    fn register(&self) -> (u64, Arc<Mailbox>, PendingGuard) {
        let mailbox = Arc::new(Mailbox::default());
        let mut rng = rand::rng();
        let mut pending = self.inner.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let request_id = loop {
            let candidate: u64 = rng.random();
            if !pending.contains_key(&candidate) {
                break candidate;
            }
        };
        pending.insert(request_id, mailbox.clone());
        (request_id, mailbox, PendingGuard { pending: self.inner.pending.clone(), request_id })
    }

    /// Registers a mailbox for the caller's `request_id`; `None` when that
    /// id is already in flight on this client.
    fn register_id(&self, request_id: u64) -> Option<(Arc<Mailbox>, PendingGuard)> {
        let mailbox = Arc::new(Mailbox::default());
        let mut pending = self.inner.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.contains_key(&request_id) {
            return None;
        }
        pending.insert(request_id, mailbox.clone());
        Some((mailbox, PendingGuard { pending: self.inner.pending.clone(), request_id }))
    }
}

/// Removes a request's mailbox when the request ends (or is cancelled).
struct PendingGuard {
    pending: Pending,
    request_id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.remove(&self.request_id);
    }
}

/// Reads datagrams and hands each to the request waiting for its id. Runs
/// until the last client handle is dropped (which aborts it).
async fn receive_loop(socket: Arc<UdpSocket>, pending: Pending) {
    // One byte more than the largest datagram, to recognise oversized ones.
    let mut buffer = vec![0u8; UDP_DATAGRAM_BYTES_MAX + 1];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((len, from)) => deliver(&pending, &buffer, len, from),
            Err(error) => {
                // ICMP port unreachable surfaces here on Linux; harmless.
                tracing::debug!(%error, "datagram receive failed");
            }
        }
    }
}

fn deliver(pending: &Pending, buffer: &[u8], len: usize, from: SocketAddr) {
    if len > UDP_DATAGRAM_BYTES_MAX {
        tracing::debug!(%from, "dropping oversized datagram");
        return;
    }
    let Some(datagram) = buffer.get(..len) else { return };
    let Some(id_bytes) = datagram.get(4..12) else {
        tracing::debug!(%from, len, "dropping truncated datagram");
        return;
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(id_bytes);
    let request_id = u64::from_le_bytes(id);
    let pending = pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match pending.get(&request_id) {
        Some(mailbox) => {
            if !mailbox.push((from, datagram.to_vec())) {
                tracing::debug!(%from, request_id, "dropping datagram: request mailbox full");
            }
        }
        None => tracing::debug!(%from, request_id, "dropping datagram for no request in flight"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::shuckle::{CdcReq, EmptyResp, RegisterCdcReq};
    use wire::{Address, EggsTime, ErrorResp, SecretKey};

    #[test]
    fn timeouts_double_and_cap() {
        let retry = RetryPolicy::default();
        assert_eq!(retry.base_timeout(0), Duration::from_nanos(CLIENT_TIMEOUT_INITIAL_NS));
        assert_eq!(retry.base_timeout(1), Duration::from_nanos(2 * CLIENT_TIMEOUT_INITIAL_NS));
        assert_eq!(retry.base_timeout(40), Duration::from_nanos(CLIENT_TIMEOUT_MAX_NS));
        assert!(retry.timeout(0, 0.999) > retry.base_timeout(0));
        assert!(retry.timeout(0, 0.999) <= retry.base_timeout(0).mul_f64(1.25));
        assert_eq!(retry.timeout(100, 0.999), Duration::from_nanos(CLIENT_TIMEOUT_MAX_NS));
    }

    fn short_retry() -> RetryPolicy {
        RetryPolicy {
            timeout_initial: Duration::from_millis(20),
            timeout_max: Duration::from_millis(100),
            deadline: Duration::from_millis(400),
        }
    }

    /// A fake shuckle that drops the first `drop_first` datagrams, answers
    /// garbage once, then answers properly; reports the ids it saw.
    async fn flaky_server(drop_first: usize) -> (SocketAddr, tokio::task::JoinHandle<Vec<u64>>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let handle = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut buffer = [0u8; 2048];
            loop {
                let (len, from) = socket.recv_from(&mut buffer).await.expect("recv");
                let header = datagram::peek_header(&buffer[..len], wire::datagram::SHUCKLE_MAGIC).expect("header");
                ids.push(header.request_id());
                if ids.len() <= drop_first {
                    continue;
                }
                // A garbage datagram with the right id first: must be ignored.
                let mut garbage = buffer[..HEADER_BYTES].to_vec();
                garbage.push(0xff);
                socket.send_to(&garbage, from).await.expect("send");
                let response = ShuckleResponse::Error(ErrorResp::new(ErrorKind::NotFound, "no such thing"));
                let mut out = [0u8; 256];
                let len = datagram::encode(&mut out, header.request_id(), &response, None).expect("encode");
                socket.send_to(&out[..len], from).await.expect("send");
                return ids;
            }
        });
        (addr, handle)
    }

    fn some_request() -> ShuckleRequest {
        ShuckleRequest::Cdc(CdcReq {})
    }

    #[tokio::test]
    async fn retries_with_the_same_id_and_ignores_garbage() {
        let (addr, server) = flaky_server(2).await;
        let client = DatagramClient::bind_any(ClientOptions { key: None, retry: short_retry() }).expect("bind");
        let result = client.request::<Shuckle>(addr, &some_request()).await;
        match result {
            Err(RequestError::Response { kind: ErrorKind::NotFound, text, .. }) => assert_eq!(text, "no such thing"),
            other => panic!("expected NOT_FOUND, got {other:?}"),
        }
        let ids = server.await.expect("server");
        assert_eq!(ids.len(), 3, "two dropped + one answered");
        let error = RequestError::Response {
            family: "shuckle",
            addr,
            kind: ErrorKind::NotFound,
            text: String::new(),
            attempts: 3,
        };
        assert!(error.maybe_retried());
        assert!(ids.iter().all(|id| *id == ids[0]), "retries reuse the request id: {ids:?}");
        assert!(client.inner.pending.lock().expect("lock").is_empty(), "mailbox removed");
    }

    #[tokio::test]
    async fn times_out_when_nobody_answers() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let client = DatagramClient::bind_any(ClientOptions { key: None, retry: short_retry() }).expect("bind");
        let error = client.request::<Shuckle>(addr, &some_request()).await.expect_err("no answer");
        match error {
            RequestError::Timeout { attempts, .. } => assert!(attempts >= 3, "retried: {attempts}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    fn privileged_request() -> ShuckleRequest {
        ShuckleRequest::RegisterCdc(RegisterCdcReq { address: Address::UNKNOWN, time: EggsTime::default() })
    }

    #[tokio::test]
    async fn privileged_request_without_key_is_refused() {
        let client = DatagramClient::bind_any(ClientOptions::default()).expect("bind");
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let error = client.request::<Shuckle>(addr, &privileged_request()).await.expect_err("no key");
        assert!(matches!(error, RequestError::Encode { source: EncodeError::MissingKey, .. }), "{error:?}");
    }

    #[tokio::test]
    async fn privileged_responses_need_a_valid_mac() {
        let key = MacKey::new(&SecretKey([7; 16]));
        let wrong_key = MacKey::new(&SecretKey([8; 16]));
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let server_key = key.clone();
        let server = tokio::spawn(async move {
            let mut buffer = [0u8; 2048];
            let (len, from) = socket.recv_from(&mut buffer).await.expect("recv");
            let (header, _) = datagram::decode::<ShuckleRequest>(&buffer[..len], Some(&server_key)).expect("MAC ok");
            let response = ShuckleResponse::RegisterCdc(EmptyResp {});
            let mut out = [0u8; 256];
            // First a response MAC'd with the wrong key (must be ignored), then the right one.
            for mac_key in [&wrong_key, &server_key] {
                let len = datagram::encode(&mut out, header.request_id(), &response, Some(mac_key)).expect("encode");
                socket.send_to(&out[..len], from).await.expect("send");
            }
        });
        let options = ClientOptions { key: Some(key), retry: short_retry() };
        let client = DatagramClient::bind_any(options).expect("bind");
        let reply = client.request::<Shuckle>(addr, &privileged_request()).await.expect("answered");
        assert!(matches!(reply.get().expect("decodes"), ShuckleResponse::RegisterCdc(_)));
        server.await.expect("server");
    }

    /// A fake shuckle that answers the first request with a plain (forgeable)
    /// error, then, if `then_macd`, with the MAC'd error kind 0x80.
    async fn forging_server(key: MacKey, then_macd: bool) -> (SocketAddr, tokio::task::JoinHandle<u64>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let handle = tokio::spawn(async move {
            let mut buffer = [0u8; 2048];
            let (len, from) = socket.recv_from(&mut buffer).await.expect("recv");
            let (header, _) = datagram::decode::<ShuckleRequest>(&buffer[..len], Some(&key)).expect("MAC ok");
            let mut out = [0u8; 256];
            let forged = ShuckleResponse::Error(ErrorResp::new(ErrorKind::NotFound, "forged"));
            let len = datagram::encode(&mut out, header.request_id(), &forged, None).expect("encode");
            socket.send_to(&out[..len], from).await.expect("send");
            if then_macd {
                let real = ShuckleResponse::Error(ErrorResp::new(ErrorKind::BadRequest, "real"));
                let len = datagram::encode_response(&mut out, &header, &real, Some(&key)).expect("encode");
                assert_eq!(out[HEADER_BYTES - 1], datagram::KIND_PRIVILEGED_ERROR);
                socket.send_to(&out[..len], from).await.expect("send");
            }
            header.request_id()
        });
        (addr, handle)
    }

    #[tokio::test]
    async fn privileged_request_ignores_a_forged_plain_error() {
        let key = MacKey::new(&SecretKey([7; 16]));
        let (addr, server) = forging_server(key.clone(), true).await;
        let client =
            DatagramClient::bind_any(ClientOptions { key: Some(key.clone()), retry: short_retry() }).expect("bind");
        let error = client.request::<Shuckle>(addr, &privileged_request()).await.expect_err("error response");
        match error {
            RequestError::Response { kind: ErrorKind::BadRequest, text, .. } => assert_eq!(text, "real"),
            other => panic!("expected the MAC'd BAD_REQUEST, got {other:?}"),
        }
        server.await.expect("server");

        // With only the forged error, the request times out.
        let (addr, server) = forging_server(key.clone(), false).await;
        let error = client.request::<Shuckle>(addr, &privileged_request()).await.expect_err("no answer");
        assert!(error.is_timeout(), "{error:?}");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn caller_chosen_ids_are_used_and_exclusive() {
        let key = MacKey::new(&SecretKey([7; 16]));
        let (addr, server) = forging_server(key.clone(), true).await;
        let client = DatagramClient::bind_any(ClientOptions { key: Some(key), retry: short_retry() }).expect("bind");
        let request_id = 0x1234_5678_9abc_def0;
        let error = client
            .request_with_id::<Shuckle>(addr, request_id, &privileged_request(), short_retry())
            .await
            .expect_err("error response");
        assert_eq!(error.error_kind(), Some(ErrorKind::BadRequest));
        assert_eq!(server.await.expect("server"), request_id, "sent under the caller's id");
        // An id in flight cannot be taken by a second request.
        let _held = client.register_id(request_id).expect("free again");
        let error = client
            .request_with_id::<Shuckle>(addr, request_id, &privileged_request(), short_retry())
            .await
            .expect_err("in use");
        assert!(matches!(error, RequestError::IdInUse { request_id: id } if id == request_id), "{error:?}");
    }

    /// Many requests in flight on one socket get their own responses, even
    /// when the server answers them in reverse order.
    #[tokio::test]
    async fn concurrent_requests_are_demultiplexed_by_id() {
        const REQUESTS: usize = 64;
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut buffer = [0u8; 2048];
            while received.len() < REQUESTS {
                let (len, from) = socket.recv_from(&mut buffer).await.expect("recv");
                let (header, request) = datagram::decode::<ShuckleRequest>(&buffer[..len], None).expect("decode");
                let ShuckleRequest::Shards(shards) = request else { panic!("unexpected request") };
                if !received.iter().any(|(id, _, _)| *id == header.request_id()) {
                    received.push((header.request_id(), shards.begin, from));
                }
            }
            for (request_id, begin, from) in received.into_iter().rev() {
                // Echo `begin` back as `next`, so each requester can check it got its own answer.
                let response = ShuckleResponse::Shards(wire::shuckle::ShardsResp {
                    head: wire::shuckle::ShardsRespHead { next: begin },
                    shards: wire::List::empty(),
                });
                let mut out = [0u8; 256];
                let len = datagram::encode(&mut out, request_id, &response, None).expect("encode");
                socket.send_to(&out[..len], from).await.expect("send");
            }
        });
        let retry = RetryPolicy { timeout_initial: Duration::from_secs(2), ..RetryPolicy::default() };
        let client = DatagramClient::bind_any(ClientOptions { key: None, retry }).expect("bind");
        let mut tasks = tokio::task::JoinSet::new();
        for begin in 0..REQUESTS as u8 {
            let client = client.clone();
            tasks.spawn(async move {
                let request = ShuckleRequest::Shards(wire::shuckle::ShardsReq { begin });
                let reply = client.request::<Shuckle>(addr, &request).await.expect("answered");
                match reply.get().expect("decodes") {
                    ShuckleResponse::Shards(page) => assert_eq!(page.next, begin, "own response"),
                    other => panic!("unexpected {other:?}"),
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("requester");
        }
        server.await.expect("server");
    }
}
