//! Helpers shared by the integration tests: start real binaries, talk UDP.

#![allow(dead_code)] // reason: each test file uses a different subset

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};
use wire::datagram;
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::mac::{MacKey, SecretKey};
use wire::shard::{ShardRequest, ShardResponse};

pub use testsupport::{Daemon, binary};

/// Starts metad for `shard` on `dir` (port 0, no shuckle unless given).
pub fn start_metad(shard: u8, dir: &Path, shuckle: Option<SocketAddr>) -> Daemon {
    start_metad_with(shard, dir, shuckle, &[])
}

/// [`start_metad`] with more flags.
pub fn start_metad_with(shard: u8, dir: &Path, shuckle: Option<SocketAddr>, flags: &[&str]) -> Daemon {
    let shuckle = shuckle.map_or_else(|| "127.0.0.1:9".to_string(), |a| a.to_string());
    let shard = shard.to_string();
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec![shard.as_str(), dir, "--listen", "127.0.0.1:0", "--shuckle", &shuckle];
    args.extend_from_slice(flags);
    Daemon::start(&binary("metad"), &args)
}

pub fn cluster_key(dir: &Path) -> SecretKey {
    let bytes = std::fs::read(dir.join("cluster.key")).expect("cluster key");
    SecretKey(bytes.try_into().expect("16 bytes"))
}

/// A UDP client that retries with the same request id until answered.
pub struct Client {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub key: MacKey,
    next_id: u64,
    /// Give up after this long without an answer.
    pub deadline: Duration,
}

impl Client {
    pub fn new(server: SocketAddr, key: &SecretKey) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        Client {
            socket,
            server,
            key: MacKey::new(key),
            next_id: rand::random::<u32>() as u64,
            deadline: Duration::from_secs(30),
        }
    }

    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends raw bytes, returns the first datagram answering `request_id`
    /// (or None after `wait`).
    pub fn raw(&self, bytes: &[u8], request_id: u64, wait: Duration) -> Option<Vec<u8>> {
        let started = Instant::now();
        let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX + 100];
        self.socket.send_to(bytes, self.server).expect("send");
        let mut resend = Duration::from_millis(300);
        let mut last_send = Instant::now();
        while started.elapsed() < wait {
            self.socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            if let Ok((len, _)) = self.socket.recv_from(&mut buf)
                && let Ok(header) = datagram::peek_header(&buf[..len], datagram::SHARD_MAGIC)
                && header.request_id() == request_id
            {
                return Some(buf[..len].to_vec());
            }
            if last_send.elapsed() > resend {
                let _ = self.socket.send_to(bytes, self.server);
                last_send = Instant::now();
                resend = (resend * 2).min(Duration::from_secs(2));
            }
        }
        None
    }

    /// Encodes and sends `request` (MAC'd if privileged), retrying; the
    /// response datagram, or None after the deadline.
    pub fn try_call_with_id(&self, request_id: u64, request: &ShardRequest<'_>) -> Option<Vec<u8>> {
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = datagram::encode(&mut out, request_id, request, Some(&self.key)).expect("encode");
        self.raw(&out[..len], request_id, self.deadline)
    }

    pub fn call(&mut self, request: &ShardRequest<'_>) -> Vec<u8> {
        let id = self.fresh_id();
        self.try_call_with_id(id, request).expect("no answer from metad")
    }
}

pub fn decode<'a>(bytes: &'a [u8], key: &MacKey) -> ShardResponse<'a> {
    datagram::decode::<ShardResponse>(bytes, Some(key)).expect("decodable response").1
}

/// Sends many encoded requests (id, datagram) with up to `window` in flight,
/// resending the unanswered ones; returns the responses by request order.
pub fn pipeline(client: &Client, requests: &[(u64, Vec<u8>)], window: usize) -> Vec<Vec<u8>> {
    use std::collections::HashMap;
    let index: HashMap<u64, usize> = requests.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
    let mut responses: Vec<Option<Vec<u8>>> = vec![None; requests.len()];
    let mut sent_at: Vec<Option<Instant>> = vec![None; requests.len()];
    let mut answered = 0;
    let mut next = 0;
    let started = Instant::now();
    let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX + 100];
    client.socket.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
    while answered < requests.len() {
        assert!(started.elapsed() < Duration::from_secs(600), "pipeline stalled");
        let in_flight = sent_at.iter().zip(&responses).filter(|(s, r)| s.is_some() && r.is_none()).count();
        for _ in in_flight..window {
            if next >= requests.len() {
                break;
            }
            client.socket.send_to(&requests[next].1, client.server).expect("send");
            sent_at[next] = Some(Instant::now());
            next += 1;
        }
        while let Ok((len, _)) = client.socket.recv_from(&mut buf) {
            if let Ok(header) = datagram::peek_header(&buf[..len], datagram::SHARD_MAGIC)
                && let Some(&i) = index.get(&header.request_id())
                && responses[i].is_none()
            {
                responses[i] = Some(buf[..len].to_vec());
                answered += 1;
            }
        }
        for i in 0..next {
            if responses[i].is_none() && sent_at[i].is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                let _ = client.socket.send_to(&requests[i].1, client.server);
                sent_at[i] = Some(Instant::now());
            }
        }
    }
    responses.into_iter().map(|r| r.expect("answered")).collect()
}

/// add_eden_span of `contents` as the one inline span of the eden file
/// `created` (offset 0): the request every workload here builds.
pub fn inline_span<'a>(
    created: &wire::shard::CreateEdenFileResp,
    contents: &'a [u8],
) -> wire::shard::AddEdenSpanReq<'a> {
    use zerocopy::byteorder::little_endian::{U32, U64};
    wire::shard::AddEdenSpanReq {
        head: wire::shard::AddEdenSpanReqHead {
            inode: created.inode,
            cookie: created.cookie,
            offset: U64::new(0),
            size: U32::new(contents.len() as u32),
            crc: U32::new(wire::crc::crc32c(contents)),
        },
        body: wire::span::SpanBody::Inline(wire::span::InlineBytes::new(contents).unwrap()),
        blacklist: wire::codec::List::empty(),
    }
}

/// metad's `/metrics` page, read once.
pub struct Metrics(String);

impl Metrics {
    pub fn scrape(daemon: &Daemon) -> Self {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(daemon.address("metrics")).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        Self(text)
    }

    /// The value of the unlabelled sample `name`; panics naming it (and
    /// showing the page) when it is not there.
    pub fn value(&self, name: &str) -> f64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {}", self.0))
    }
}
