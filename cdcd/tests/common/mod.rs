//! Helpers of the integration tests: real `metad` and `cdcd` binaries on
//! 127.0.0.1, blocking UDP clients, a lossy proxy, a tree checker and a
//! reference model of the expected tree.

#![allow(dead_code)] // reason: each test file uses a different subset

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use wire::cdc::{
    CdcRequest, CdcResponse, CdcStatus, MkDirReq, MkDirReqHead, MvDirReq, MvDirReqHead, MvFileReq, MvFileReqHead,
    RmDirReq, RmDirReqHead,
};
use wire::datagram::{self, CDC_MAGIC, SHARD_MAGIC};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::shard::{
    CreateEdenFileReq, LinkEdenFileReq, LinkEdenFileReqHead, LsDirReq, ShardRequest, ShardResponse, StatReq, StatResp,
    VisitInodesReq,
};
use wire::{EggsTime, InodeId, InodeType, MacKey, Name, SecretKey, ShardId};
use zerocopy::byteorder::little_endian::U64;

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
        let mut cluster = Cluster { dir, shards, cdc: None, key, cdc_listen, cdc_shard_addresses };
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
        let cdc = Daemon::start(&binary("cdcd"), &args);
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

    /// Living entries of `dir`: name → inode with its owning bit.
    pub fn list(&self, dir: InodeId) -> BTreeMap<String, InodeId> {
        let mut entries = BTreeMap::new();
        let mut start_hash = 0u64;
        loop {
            let request = ShardRequest::LsDir(LsDirReq {
                dir,
                as_of: EggsTime::ZERO,
                start_hash: U64::new(start_hash),
                flags: 0,
            });
            let (more, next) = self.call(dir.shard(), &request, |response| match response {
                ShardResponse::LsDir(page) => {
                    for entry in page.entries.iter() {
                        entries.insert(entry.name.as_str().to_string(), entry.inode);
                    }
                    (page.more != 0, page.next_hash.get())
                }
                other => panic!("ls_dir {dir}: {other:?}"),
            });
            if !more {
                return entries;
            }
            start_hash = next;
        }
    }

    /// A directory's parent; `None` when it is not a directory.
    pub fn parent(&self, dir: InodeId) -> Option<InodeId> {
        self.call(dir.shard(), &ShardRequest::Stat(StatReq { inode: dir }), |response| match response {
            ShardResponse::Stat(StatResp::Directory(stat)) => Some(stat.parent),
            _ => None,
        })
    }

    /// Every inode of `shard`.
    pub fn inodes(&self, shard: ShardId) -> Vec<InodeId> {
        let mut inodes = Vec::new();
        let mut begin = InodeId::NULL;
        loop {
            let next =
                self.call(shard, &ShardRequest::VisitInodes(VisitInodesReq { begin }), |response| match response {
                    ShardResponse::VisitInodes(page) => {
                        inodes.extend(page.inodes.iter());
                        page.next
                    }
                    other => panic!("visit_inodes: {other:?}"),
                });
            if next.is_null() {
                return inodes;
            }
            begin = next;
        }
    }

    /// Walks the tree from the root and checks the invariants of a quiet
    /// cluster: every living entry owning, every directory's parent is the
    /// directory holding its entry, every linked directory reachable (no
    /// orphans). Returns the tree: directory → name → inode (plain).
    pub fn check_tree(&self) -> HashMap<InodeId, BTreeMap<String, InodeId>> {
        let mut tree = HashMap::new();
        let mut queue = vec![InodeId::ROOT];
        while let Some(dir) = queue.pop() {
            let entries = self.list(dir);
            let mut plain = BTreeMap::new();
            for (name, inode) in entries {
                assert!(inode.is_owning(), "dangling non-owning entry {dir}/{name}");
                let inode = inode.without_owning();
                if inode.inode_type() == Some(InodeType::Directory) {
                    assert_eq!(self.parent(inode), Some(dir), "parent of {dir}/{name}");
                    assert!(!tree.contains_key(&inode), "{inode} linked twice");
                    queue.push(inode);
                }
                plain.insert(name, inode);
            }
            tree.insert(dir, plain);
        }
        for shard in 0..self.shards.len() as u8 {
            for inode in self.inodes(shard) {
                if inode.inode_type() != Some(InodeType::Directory) || inode == InodeId::ROOT {
                    continue;
                }
                let parent = self.parent(inode).expect("a directory");
                assert!(parent.is_null() || tree.contains_key(&inode), "orphan directory {inode} (parent {parent})");
            }
        }
        tree
    }
}

/// A CDC operation, owned.
#[derive(Clone, Debug)]
pub enum Op {
    MkDir { parent: InodeId, name: String },
    RmDir { parent: InodeId, name: String },
    Mv { directory: bool, source_parent: InodeId, target_parent: InodeId, source_name: String, target_name: String },
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
    pub fn run(&self, op: &Op) -> (CdcStatus, InodeId) {
        self.run_with_id(rand::random(), op, Duration::from_secs(120)).expect("the CDC answered")
    }

    pub fn run_with_id(&self, request_id: u64, op: &Op, deadline: Duration) -> Option<(CdcStatus, InodeId)> {
        fn name(text: &str) -> Name<'_> {
            Name::new(text.as_bytes()).expect("name")
        }
        let request = match op {
            Op::MkDir { parent, name: entry } => {
                CdcRequest::MkDir(MkDirReq { head: MkDirReqHead { parent: *parent }, name: name(entry) })
            }
            Op::RmDir { parent, name: entry } => {
                CdcRequest::RmDir(RmDirReq { head: RmDirReqHead { parent: *parent }, name: name(entry) })
            }
            Op::Mv { directory: false, source_parent, target_parent, source_name, target_name } => {
                CdcRequest::MvFile(MvFileReq {
                    head: MvFileReqHead { source_parent: *source_parent, target_parent: *target_parent },
                    source_name: name(source_name),
                    target_name: name(target_name),
                })
            }
            Op::Mv { directory: true, source_parent, target_parent, source_name, target_name } => {
                CdcRequest::MvDir(MvDirReq {
                    head: MvDirReqHead { source_parent: *source_parent, target_parent: *target_parent },
                    source_name: name(source_name),
                    target_name: name(target_name),
                })
            }
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

/// The expected tree, built from acknowledged operations.
#[derive(Default)]
pub struct Model {
    pub entries: HashMap<InodeId, BTreeMap<String, InodeId>>,
    pub parents: HashMap<InodeId, InodeId>,
    pub removed: HashSet<InodeId>,
}

impl Model {
    pub fn new() -> Self {
        let mut model = Self::default();
        model.entries.insert(InodeId::ROOT, BTreeMap::new());
        model
    }

    fn is_dir(inode: InodeId) -> bool {
        inode.inode_type() == Some(InodeType::Directory)
    }

    fn linked(&self, dir: InodeId) -> bool {
        Self::is_dir(dir) && self.entries.contains_key(&dir)
    }

    fn inside(&self, dir: InodeId, ancestor: InodeId) -> bool {
        let mut cursor = dir;
        loop {
            if cursor == ancestor {
                return true;
            }
            match self.parents.get(&cursor) {
                Some(parent) => cursor = *parent,
                None => return false,
            }
        }
    }

    /// The status the CDC must answer (in its order of checks).
    pub fn expect(&self, op: &Op) -> CdcStatus {
        match op {
            Op::MkDir { parent, name } => {
                if !self.linked(*parent) {
                    CdcStatus::ParentInvalid
                } else if self.entries[parent].contains_key(name) {
                    CdcStatus::AlreadyExists
                } else {
                    CdcStatus::Ok
                }
            }
            Op::RmDir { parent, name } => {
                if !self.linked(*parent) {
                    return CdcStatus::ParentInvalid;
                }
                match self.entries[parent].get(name) {
                    None => CdcStatus::NotFound,
                    Some(child) if !Self::is_dir(*child) => CdcStatus::BadInodeType,
                    Some(child) if !self.entries[child].is_empty() => CdcStatus::DirectoryNotEmpty,
                    Some(_) => CdcStatus::Ok,
                }
            }
            Op::Mv { directory, source_parent, target_parent, source_name, target_name } => {
                if source_parent == target_parent && source_name == target_name {
                    return CdcStatus::BadRequest;
                }
                if !self.linked(*target_parent) || !self.linked(*source_parent) {
                    return CdcStatus::ParentInvalid;
                }
                let Some(source) = self.entries[source_parent].get(source_name) else {
                    return CdcStatus::NotFound;
                };
                if Self::is_dir(*source) != *directory {
                    return CdcStatus::BadInodeType;
                }
                if self.entries[target_parent].get(target_name).is_some_and(|t| Self::is_dir(*t)) {
                    return CdcStatus::CannotOverrideTarget;
                }
                if *directory && self.inside(*target_parent, *source) {
                    return CdcStatus::LoopDetected;
                }
                CdcStatus::Ok
            }
        }
    }

    /// Applies an operation the CDC acknowledged with OK.
    pub fn apply(&mut self, op: &Op, inode: InodeId) {
        match op {
            Op::MkDir { parent, name } => {
                self.entries.get_mut(parent).expect("parent").insert(name.clone(), inode);
                self.entries.insert(inode, BTreeMap::new());
                self.parents.insert(inode, *parent);
            }
            Op::RmDir { parent, name } => {
                let child = self.entries.get_mut(parent).expect("parent").remove(name).expect("child");
                self.entries.remove(&child);
                self.parents.remove(&child);
                self.removed.insert(child);
            }
            Op::Mv { directory, source_parent, target_parent, source_name, target_name } => {
                let moved = self.entries.get_mut(source_parent).expect("source").remove(source_name).expect("entry");
                assert_eq!(moved, inode, "the moved inode");
                self.entries.get_mut(target_parent).expect("target").insert(target_name.clone(), moved);
                if *directory {
                    self.parents.insert(moved, *target_parent);
                }
            }
        }
    }

    /// A random operation over a few names, mostly on valid parents.
    pub fn random_op(&self, rng: &mut impl Rng) -> Op {
        const NAMES: [&str; 4] = ["a", "b", "c", "d"];
        let mut dirs: Vec<InodeId> = self.entries.keys().copied().collect();
        dirs.sort_unstable();
        let pick_dir = |rng: &mut dyn rand::RngCore| -> InodeId {
            match rng.random_range(0..20) {
                0 if !self.removed.is_empty() => *self.removed.iter().min().expect("one"),
                1 => self
                    .entries
                    .values()
                    .flat_map(|m| m.values())
                    .copied()
                    .find(|i| !Self::is_dir(*i))
                    .unwrap_or(InodeId::ROOT),
                _ => dirs[rng.random_range(0..dirs.len())],
            }
        };
        let name = |rng: &mut dyn rand::RngCore| NAMES[rng.random_range(0..NAMES.len())].to_string();
        match rng.random_range(0..10) {
            0..=3 => Op::MkDir { parent: pick_dir(rng), name: name(rng) },
            4..=5 => Op::RmDir { parent: pick_dir(rng), name: name(rng) },
            kind => Op::Mv {
                directory: kind >= 8,
                source_parent: pick_dir(rng),
                target_parent: pick_dir(rng),
                source_name: name(rng),
                target_name: name(rng),
            },
        }
    }

    /// Asserts the real tree equals the model.
    pub fn assert_matches(&self, tree: &HashMap<InodeId, BTreeMap<String, InodeId>>) {
        assert_eq!(tree.len(), self.entries.len(), "linked directories");
        for (dir, expected) in &self.entries {
            assert_eq!(tree.get(dir), Some(expected), "entries of {dir}");
        }
    }
}
