//! Helpers of the integration tests: real `metad` and `cdcd` binaries on
//! 127.0.0.1, blocking UDP clients, a lossy proxy, a tree checker and a
//! reference model of the expected tree.

#![allow(dead_code)] // reason: each test file uses a different subset

pub mod model;

#[allow(unused_imports)] // reason: each test file uses a different subset
pub use model::{Model, ShardCalls, Tree, mkdir, mv, mv_dir, rmdir};

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cdcd::txn::TxnArgs;
use rand::Rng;
use wire::cdc::{
    CdcRequest, CdcResponse, CdcStatus, MkDirReq, MkDirReqHead, MvDirReq, MvDirReqHead, MvFileReq, MvFileReqHead,
    RmDirReq, RmDirReqHead,
};
use wire::datagram::{self, CDC_MAGIC, SHARD_MAGIC};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::shard::{CreateEdenFileReq, LinkEdenFileReq, LinkEdenFileReqHead, ShardRequest, ShardResponse};
use wire::{InodeId, InodeType, MacKey, Name, SecretKey, ShardId};

pub use testsupport::{Daemon, binary};

/// Two shards and a CDC in one temporary folder.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub shards: Vec<Daemon>,
    pub cdc: Option<Daemon>,
    pub key: SecretKey,
    /// Where the CDC listens (the same port across restarts).
    pub cdc_listen: SocketAddr,
    /// The shard addresses the CDC is given (maybe proxies).
    pub cdc_shard_addresses: Vec<SocketAddr>,
    /// More flags for the CDC's next starts.
    pub cdc_flags: Vec<String>,
}

impl Cluster {
    /// Starts shards 0 and 1 and a CDC; `route` maps the shards' addresses
    /// to the ones the CDC uses (identity, or a proxy).
    pub fn start(route: impl FnOnce(&[SocketAddr]) -> Vec<SocketAddr>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().to_str().expect("utf-8").to_string();
        let mut shards = Vec::new();
        for shard in 0..2 {
            let args = vec![
                shard.to_string(),
                folder.clone(),
                "--listen".to_string(),
                "127.0.0.1:0".to_string(),
                "--shuckle".to_string(),
                "127.0.0.1:9".to_string(),
            ];
            shards.push(Daemon::start(&binary("metad"), &args));
        }
        let key_bytes = std::fs::read(dir.path().join("cluster.key")).expect("cluster key");
        let key = SecretKey(key_bytes.try_into().expect("16 bytes"));
        let shard_addresses: Vec<SocketAddr> = shards.iter().map(Daemon::udp).collect();
        let cdc_shard_addresses = route(&shard_addresses);
        // A fixed port, so that clients keep talking to a restarted CDC.
        let cdc_listen = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port");
        let mut cluster =
            Cluster { dir, shards, cdc: None, key, cdc_listen, cdc_shard_addresses, cdc_flags: Vec::new() };
        cluster.start_cdc();
        cluster
    }

    pub fn start_cdc(&mut self) {
        let folder = self.dir.path().to_str().expect("utf-8").to_string();
        let mut args = vec![
            folder,
            "--listen".to_string(),
            self.cdc_listen.to_string(),
            "--shuckle".to_string(),
            "127.0.0.1:9".to_string(),
            "--shards".to_string(),
            "0,1".to_string(),
        ];
        for (shard, address) in self.cdc_shard_addresses.iter().enumerate() {
            args.push("--shard-addr".to_string());
            args.push(format!("{shard}={address}"));
        }
        args.extend(self.cdc_flags.iter().cloned());
        let cdc = Daemon::start(&binary("cdcd"), &args);
        // Port 0 asks for any free port: the one the CDC got is its address from now on.
        if self.cdc_listen.port() == 0 {
            self.cdc_listen = cdc.udp();
        }
        assert_eq!(cdc.udp(), self.cdc_listen);
        self.cdc = Some(cdc);
    }

    pub fn kill_cdc(&mut self) {
        if let Some(mut cdc) = self.cdc.take() {
            cdc.kill();
        }
    }

    pub fn shard_client(&self) -> ShardClient {
        ShardClient::new(self.shards.iter().map(Daemon::udp).collect(), &self.key)
    }

    pub fn cdc_client(&self) -> CdcClient {
        CdcClient::new(self.cdc_listen)
    }
}

/// Sends `bytes` and waits for the datagram answering `request_id` of
/// family `magic`, resending with backoff; `None` after `deadline`.
fn exchange(
    socket: &UdpSocket,
    server: SocketAddr,
    bytes: &[u8],
    magic: [u8; 3],
    request_id: u64,
    deadline: Duration,
) -> Option<Vec<u8>> {
    let started = Instant::now();
    let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let mut resend = Duration::from_millis(200);
    let mut last_send = Instant::now();
    let _ = socket.send_to(bytes, server);
    socket.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
    while started.elapsed() < deadline {
        if let Ok((len, from)) = socket.recv_from(&mut buf)
            && from == server
            && let Ok(header) = datagram::peek_header(&buf[..len], magic)
            && header.request_id() == request_id
        {
            return Some(buf[..len].to_vec());
        }
        if last_send.elapsed() > resend {
            let _ = socket.send_to(bytes, server);
            last_send = Instant::now();
            resend = (resend * 2).min(Duration::from_secs(2));
        }
    }
    None
}

/// Public and privileged requests to the shards (MAC'd with the key).
pub struct ShardClient {
    socket: UdpSocket,
    shards: Vec<SocketAddr>,
    key: MacKey,
}

impl ShardClient {
    pub fn new(shards: Vec<SocketAddr>, key: &SecretKey) -> Self {
        Self { socket: UdpSocket::bind("127.0.0.1:0").expect("bind"), shards, key: MacKey::new(key) }
    }

    /// The response to `request`, handed to `read` (it borrows the datagram).
    pub fn call<T>(&self, shard: ShardId, request: &ShardRequest<'_>, read: impl FnOnce(ShardResponse<'_>) -> T) -> T {
        let request_id: u64 = rand::random();
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = datagram::encode(&mut out, request_id, request, Some(&self.key)).expect("encode");
        let server = self.shards[shard as usize];
        let bytes = exchange(&self.socket, server, &out[..len], SHARD_MAGIC, request_id, Duration::from_secs(60))
            .expect("shard answered");
        let (_, response) = datagram::decode::<ShardResponse<'_>>(&bytes, Some(&self.key)).expect("decodable");
        read(response)
    }

    /// Creates an empty file and links it as `parent/name`.
    pub fn create_file(&self, parent: InodeId, name: &str) -> InodeId {
        let shard = parent.shard();
        let (inode, cookie) = self.call(
            shard,
            &ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File }),
            |response| match response {
                ShardResponse::CreateEdenFile(resp) => (resp.inode, resp.cookie),
                other => panic!("create_eden_file: {other:?}"),
            },
        );
        let head = LinkEdenFileReqHead { inode, cookie, parent };
        let request = ShardRequest::LinkEdenFile(LinkEdenFileReq { head, name: Name::new(name.as_bytes()).unwrap() });
        self.call(shard, &request, |response| match response {
            ShardResponse::LinkEdenFile(_) => {}
            other => panic!("link_eden_file: {other:?}"),
        });
        inode
    }
}

impl ShardCalls for ShardClient {
    fn call<T>(&self, shard: ShardId, request: &ShardRequest<'_>, read: impl FnOnce(ShardResponse<'_>) -> T) -> T {
        ShardClient::call(self, shard, request, read)
    }

    fn shard_count(&self) -> u8 {
        self.shards.len() as u8
    }
}

/// A CDC client: one socket, the same request id on every resend.
pub struct CdcClient {
    socket: UdpSocket,
    cdc: SocketAddr,
}

impl CdcClient {
    pub fn new(cdc: SocketAddr) -> Self {
        Self { socket: UdpSocket::bind("127.0.0.1:0").expect("bind"), cdc }
    }

    /// Runs `op` with a fresh request id; (status, inode).
    pub fn run(&self, op: &TxnArgs) -> (CdcStatus, InodeId) {
        self.run_with_id(rand::random(), op, Duration::from_secs(120)).expect("the CDC answered")
    }

    pub fn run_with_id(&self, request_id: u64, op: &TxnArgs, deadline: Duration) -> Option<(CdcStatus, InodeId)> {
        fn name(text: &str) -> Name<'_> {
            Name::new(text.as_bytes()).expect("name")
        }
        let id = InodeId::new;
        let request = match op {
            TxnArgs::MkDir { parent, name: entry } => {
                CdcRequest::MkDir(MkDirReq { head: MkDirReqHead { parent: id(*parent) }, name: name(entry) })
            }
            TxnArgs::RmDir { parent, name: entry } => {
                CdcRequest::RmDir(RmDirReq { head: RmDirReqHead { parent: id(*parent) }, name: name(entry) })
            }
            TxnArgs::Move { directory: false, source_parent, target_parent, source_name, target_name } => {
                CdcRequest::MvFile(MvFileReq {
                    head: MvFileReqHead { source_parent: id(*source_parent), target_parent: id(*target_parent) },
                    source_name: name(source_name),
                    target_name: name(target_name),
                })
            }
            TxnArgs::Move { directory: true, source_parent, target_parent, source_name, target_name } => {
                CdcRequest::MvDir(MvDirReq {
                    head: MvDirReqHead { source_parent: id(*source_parent), target_parent: id(*target_parent) },
                    source_name: name(source_name),
                    target_name: name(target_name),
                })
            }
            TxnArgs::PurgeRemoteFile { .. } => panic!("purge is not sent by these tests"),
        };
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = datagram::encode(&mut out, request_id, &request, None).expect("encode");
        let bytes = exchange(&self.socket, self.cdc, &out[..len], CDC_MAGIC, request_id, deadline)?;
        let (_, response) = datagram::decode::<CdcResponse<'_>>(&bytes, None).expect("decodable CDC response");
        let resp = match response {
            CdcResponse::MkDir(r) | CdcResponse::RmDir(r) | CdcResponse::MvFile(r) | CdcResponse::MvDir(r) => r,
            other => panic!("unexpected CDC response {other:?}"),
        };
        Some((resp.status, resp.inode))
    }

    /// Sends raw bytes to the CDC; the first datagram back within `wait`.
    pub fn raw(&self, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        self.socket.send_to(bytes, self.cdc).expect("send");
        self.socket.set_read_timeout(Some(wait)).expect("timeout");
        self.socket.recv_from(&mut buf).ok().map(|(len, _)| buf[..len].to_vec())
    }
}

/// A UDP proxy in front of `server` that drops `loss` of the datagrams in
/// each direction. Returns its address; it runs until `stop`.
pub fn lossy_proxy(server: SocketAddr, loss: f64, stop: Arc<AtomicBool>) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let back = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let address = front.local_addr().expect("address");
    front.set_read_timeout(Some(Duration::from_millis(2))).expect("timeout");
    back.set_read_timeout(Some(Duration::from_millis(2))).expect("timeout");
    std::thread::spawn(move || {
        let mut rng = rand::rng();
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            while let Ok((len, from)) = front.recv_from(&mut buf) {
                client = Some(from);
                if !rng.random_bool(loss) {
                    let _ = back.send_to(&buf[..len], server);
                }
            }
            while let Ok((len, _)) = back.recv_from(&mut buf) {
                if let Some(client) = client
                    && !rng.random_bool(loss)
                {
                    let _ = front.send_to(&buf[..len], client);
                }
            }
        }
    });
    address
}
