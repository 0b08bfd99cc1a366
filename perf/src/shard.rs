//! Metadata shard figures: stat and resolve rates, and durable small-file
//! creates, each a closed loop of clients over loopback UDP. A small file
//! is one create_small_file request (kind 0x16, session 11: created, filled
//! and linked in one shard transaction), the way the client library writes
//! one; [`CreateWay::ThreeRequests`] keeps the earlier way measured
//! (create_eden_file + add_eden_span with an inline span +
//! link_eden_file), so the before/after stays visible.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wire::codec::{List, Name};
use wire::datagram::SHARD_MAGIC;
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::shard::{
    AddEdenSpanReq, AddEdenSpanReqHead, CreateEdenFileReq, CreateSmallFileReq, CreateSmallFileReqHead, LinkEdenFileReq,
    LinkEdenFileReqHead, ResolveMode, ResolveReq, ResolveReqHead, ShardRequest, ShardResponse, StatReq,
};
use wire::span::{InlineBytes, SpanBody};
use zerocopy::byteorder::little_endian::{U32, U64};

use std::path::Path;

use crate::error::{PerfError, Result};
use crate::process::Daemon;
use crate::udp::{Client, Rate, Script, closed_loop, run_clients};

/// The root directory (shard 1).
pub const ROOT: InodeId = InodeId::new(0x0020_0000_0000_0000);

/// Bytes of each small file: well inside an inline span.
pub const SMALL_FILE_BYTES: usize = 100;

fn refused(what: &str, response: &ShardResponse<'_>) -> PerfError {
    match response {
        ShardResponse::Error(error) => PerfError::Protocol(format!("{what}: {} {}", error.kind, error.text.as_str())),
        other => PerfError::Protocol(format!("{what}: unexpected answer {:?}", other.kind())),
    }
}

fn name(text: &str) -> Result<Name<'_>> {
    Name::new(text.as_bytes()).map_err(|e| PerfError::Protocol(format!("name {text:?}: {e}")))
}

/// stat of the root directory, per second, with `clients` clients.
pub async fn stat_rate(shard: SocketAddr, clients: usize, duration: Duration) -> Result<Rate> {
    run_clients(clients, duration, move |_, deadline| async move {
        let mut client = Client::new(shard, SHARD_MAGIC).await?;
        let request = ShardRequest::Stat(StatReq { inode: ROOT });
        let mut ops = 0;
        while Instant::now() < deadline {
            match client.call::<daemon::udp::Shard>(&request, None).await? {
                ShardResponse::Stat(_) => ops += 1,
                other => return Err(refused("stat /", &other)),
            }
        }
        Ok(ops)
    })
    .await
}

/// resolve of `/<target>` (which must exist), per second.
pub async fn resolve_rate(shard: SocketAddr, target: &str, clients: usize, duration: Duration) -> Result<Rate> {
    let target: Arc<str> = target.into();
    run_clients(clients, duration, move |_, deadline| {
        let target = target.clone();
        async move {
            let mut client = Client::new(shard, SHARD_MAGIC).await?;
            let request = ShardRequest::Resolve(ResolveReq {
                head: ResolveReqHead { mode: ResolveMode::Alive, parent: ROOT, creation_time: EggsTime::ZERO },
                name: name(&target)?,
            });
            let mut ops = 0;
            while Instant::now() < deadline {
                match client.call::<daemon::udp::Shard>(&request, None).await? {
                    ShardResponse::Resolve(_) => ops += 1,
                    other => return Err(refused("resolve", &other)),
                }
            }
            Ok(ops)
        }
    })
    .await
}

/// How a small file is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateWay {
    /// create_small_file: one durable request (the client library's way).
    OneRequest,
    /// create_eden_file, add_eden_span (inline), link_eden_file: three
    /// durable requests in sequence (the way before session 11).
    ThreeRequests,
}

/// Creates `parent/file_name` holding `contents` as one inline span, the
/// way a client writes a small file: one create_small_file. Durable when
/// this returns.
pub async fn create_small_file(client: &mut Client, parent: InodeId, file_name: &str, contents: &[u8]) -> Result<()> {
    let request = ShardRequest::CreateSmallFile(CreateSmallFileReq {
        head: CreateSmallFileReqHead {
            parent,
            create_id: U64::new(rand::random::<u64>()),
            crc: U32::new(wire::crc::crc32c(contents)),
            inode_type: InodeType::File,
        },
        name: name(file_name)?,
        contents: InlineBytes::new(contents).map_err(|e| PerfError::Protocol(format!("small file: {e}")))?,
    });
    match client.call::<daemon::udp::Shard>(&request, None).await? {
        ShardResponse::CreateSmallFile(_) => Ok(()),
        other => Err(refused("create_small_file", &other)),
    }
}

/// [`create_small_file`] the way before session 11: create_eden_file,
/// add_eden_span with the contents inline, link_eden_file, each durable.
pub async fn create_small_file_three_requests(
    client: &mut Client,
    parent: InodeId,
    file_name: &str,
    contents: &[u8],
) -> Result<()> {
    let created = match client
        .call::<daemon::udp::Shard>(
            &ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File }),
            None,
        )
        .await?
    {
        ShardResponse::CreateEdenFile(created) => created,
        other => return Err(refused("create_eden_file", &other)),
    };
    let size = u32::try_from(contents.len()).map_err(|_| PerfError::Protocol("small file too large".into()))?;
    let add = ShardRequest::AddEdenSpan(AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode: created.inode,
            cookie: created.cookie,
            offset: U64::new(0),
            size: U32::new(size),
            crc: U32::new(wire::crc::crc32c(contents)),
        },
        body: SpanBody::Inline(
            InlineBytes::new(contents).map_err(|e| PerfError::Protocol(format!("inline span: {e}")))?,
        ),
        blacklist: List::empty(),
    });
    match client.call::<daemon::udp::Shard>(&add, None).await? {
        ShardResponse::AddEdenSpan(_) => {}
        other => return Err(refused("add_eden_span (inline)", &other)),
    }
    let link = ShardRequest::LinkEdenFile(LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent },
        name: name(file_name)?,
    });
    match client.call::<daemon::udp::Shard>(&link, None).await? {
        ShardResponse::LinkEdenFile(_) => Ok(()),
        other => Err(refused("link_eden_file", &other)),
    }
}

/// Small files created per second by `clients` clients in `parent`, until
/// `duration` passes or `count_max` files were made (whichever is first).
/// Names are `<prefix>-<n>` with n counting from 0 across the clients.
pub async fn create_rate(
    shard: SocketAddr,
    parent: InodeId,
    prefix: &str,
    clients: usize,
    duration: Duration,
    count_max: u64,
) -> Result<Rate> {
    create_rate_by(CreateWay::OneRequest, shard, parent, prefix, clients, duration, count_max).await
}

/// [`create_rate`] with the files created `way`. The clients run on one
/// blocking thread ([`crate::udp::closed_loop`]), not as tokio tasks: on a
/// two-core machine the load generator's own CPU per create is taken from
/// metad's.
pub async fn create_rate_by(
    way: CreateWay,
    shard: SocketAddr,
    parent: InodeId,
    prefix: &str,
    clients: usize,
    duration: Duration,
    count_max: u64,
) -> Result<Rate> {
    let next = Arc::new(AtomicU64::new(0));
    let prefix: Arc<str> = prefix.into();
    let contents: Arc<[u8]> = crate::limits::pseudo_random_bytes(SMALL_FILE_BYTES, 5).into();
    let crc = wire::crc::crc32c(&contents);
    let scripts: Vec<Creates> = (0..clients)
        .map(|_| Creates {
            way,
            parent,
            prefix: prefix.clone(),
            next: next.clone(),
            count_max,
            contents: contents.clone(),
            crc,
            name: String::new(),
            step: CreateStep::Start,
        })
        .collect();
    tokio::task::spawn_blocking(move || closed_loop::<daemon::udp::Shard, _>(shard, None, scripts, duration))
        .await
        .map_err(|join| PerfError::Component(format!("create clients: {join}")))?
}

/// Where a [`Creates`] client is in its file.
#[derive(Clone, Copy, Debug)]
enum CreateStep {
    /// Before a file: the next request starts one.
    Start,
    /// [`CreateWay::ThreeRequests`]: the eden file exists, its span is next.
    AddSpan { inode: InodeId, cookie: wire::mac::Mac },
    /// [`CreateWay::ThreeRequests`]: the span is in, the link is next.
    Link { inode: InodeId, cookie: wire::mac::Mac },
}

/// One create client of [`create_rate_by`]: files `<prefix>-<n>`, n drawn
/// from `next` (shared by the clients) below `count_max`.
struct Creates {
    way: CreateWay,
    parent: InodeId,
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
    count_max: u64,
    contents: Arc<[u8]>,
    crc: u32,
    /// The current file's name (reused: no allocation per file).
    name: String,
    step: CreateStep,
}

impl Script<daemon::udp::Shard> for Creates {
    fn next(&mut self, stop: bool) -> Result<Option<ShardRequest<'_>>> {
        let contents = InlineBytes::new(&self.contents).map_err(|e| PerfError::Protocol(format!("small file: {e}")))?;
        let request = match self.step {
            CreateStep::Start => {
                if stop {
                    return Ok(None);
                }
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                if n >= self.count_max {
                    return Ok(None);
                }
                self.name.clear();
                write!(self.name, "{}-{n}", self.prefix).map_err(|_| PerfError::Protocol("file name".into()))?;
                match self.way {
                    CreateWay::OneRequest => ShardRequest::CreateSmallFile(CreateSmallFileReq {
                        head: CreateSmallFileReqHead {
                            parent: self.parent,
                            create_id: U64::new(rand::random::<u64>()),
                            crc: U32::new(self.crc),
                            inode_type: InodeType::File,
                        },
                        name: name(&self.name)?,
                        contents,
                    }),
                    CreateWay::ThreeRequests => {
                        ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File })
                    }
                }
            }
            CreateStep::AddSpan { inode, cookie } => ShardRequest::AddEdenSpan(AddEdenSpanReq {
                head: AddEdenSpanReqHead {
                    inode,
                    cookie,
                    offset: U64::new(0),
                    size: U32::new(self.contents.len() as u32),
                    crc: U32::new(self.crc),
                },
                body: SpanBody::Inline(contents),
                blacklist: List::empty(),
            }),
            CreateStep::Link { inode, cookie } => ShardRequest::LinkEdenFile(LinkEdenFileReq {
                head: LinkEdenFileReqHead { inode, cookie, parent: self.parent },
                name: name(&self.name)?,
            }),
        };
        Ok(Some(request))
    }

    fn answer(&mut self, response: ShardResponse<'_>) -> Result<bool> {
        match (self.step, response) {
            (CreateStep::Start, ShardResponse::CreateSmallFile(_)) if self.way == CreateWay::OneRequest => Ok(true),
            (CreateStep::Start, ShardResponse::CreateEdenFile(created)) if self.way == CreateWay::ThreeRequests => {
                self.step = CreateStep::AddSpan { inode: created.inode, cookie: created.cookie };
                Ok(false)
            }
            (CreateStep::AddSpan { inode, cookie }, ShardResponse::AddEdenSpan(_)) => {
                self.step = CreateStep::Link { inode, cookie };
                Ok(false)
            }
            (CreateStep::Link { .. }, ShardResponse::LinkEdenFile(_)) => {
                self.step = CreateStep::Start;
                Ok(true)
            }
            (step, other) => Err(refused(&format!("{:?} at {step:?}", self.way), &other)),
        }
    }
}

/// How long shuckle or metad may take to say `ready`.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Shuckle on port 0 with the run's cluster key (`folder/cluster.key`), its
/// data in `folder/shuckle`.
pub fn start_shuckle(folder: &Path) -> Result<Daemon> {
    let shuckle = crate::process::binary("shuckle")?;
    let args: Vec<String> = vec![
        "--data-dir".into(),
        folder.join("shuckle").display().to_string(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--udp".into(),
        "127.0.0.1:0".into(),
        "--key-file".into(),
        folder.join("cluster.key").display().to_string(),
    ];
    Daemon::start("shuckle", &shuckle, &args, &[], folder, DAEMON_READY_TIMEOUT)
}

/// `metad` (the binary at `metad`) as shard 1 on port 0, its data in
/// `folder/shard-1`, registering with `shuckle`, plus `extra` flags.
pub fn start_metad(metad: &Path, folder: &Path, shuckle: SocketAddr, extra: &[&str]) -> Result<Daemon> {
    let mut args: Vec<String> = vec![
        "1".into(),
        folder.join("shard-1").display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--shuckle".into(),
        shuckle.to_string(),
        "--key-file".into(),
        folder.join("cluster.key").display().to_string(),
    ];
    args.extend(extra.iter().map(|flag| (*flag).to_owned()));
    Daemon::start("metad", metad, &args, &[], folder, DAEMON_READY_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::net::UdpSocket;
    use std::sync::Mutex;

    use wire::datagram::{decode, encode_response};
    use wire::shard::{
        AddEdenSpanResp, AddEdenSpanRespHead, CreateEdenFileResp, CreateSmallFileResp, LinkEdenFileResp,
    };

    use super::*;

    /// The inode the fake shard's stray answers carry.
    const STRAY_INODE: InodeId = InodeId::new(0x0020_0000_dead_0000);

    /// What the fake shard saw.
    #[derive(Default)]
    struct Seen {
        /// Files linked or created, by name.
        names: Vec<String>,
        /// Datagrams received from each client address.
        per_source: HashMap<SocketAddr, u64>,
        /// A client sent a new request before its last one was answered.
        overlapped: bool,
    }

    /// A fake shard on loopback for the create clients: it drops the first
    /// request of every client (so each must resend it), and answers every
    /// other one first with two strays the client must ignore (another
    /// request id; the right one from another address), then with the
    /// answer. Runs until `stop` is set.
    fn fake_shard(
        seen: Arc<Mutex<Seen>>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = socket.local_addr().unwrap();
        let elsewhere = UdpSocket::bind("127.0.0.1:0").unwrap();
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut out = [0u8; 2048];
            // The request id each client has outstanding (answered: removed).
            let mut outstanding: HashMap<SocketAddr, u64> = HashMap::new();
            let mut next_inode = 0x0020_0000_0000_1000u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
                let (header, request) = decode::<ShardRequest<'_>>(&buf[..len], None).unwrap();
                let mut seen = seen.lock().unwrap();
                let count = seen.per_source.entry(from).or_default();
                *count += 1;
                if *count == 1 {
                    outstanding.insert(from, header.request_id());
                    continue;
                }
                match outstanding.get(&from) {
                    Some(id) if *id != header.request_id() => seen.overlapped = true,
                    _ => {}
                }
                let response = match request {
                    ShardRequest::CreateSmallFile(create) => {
                        seen.names.push(String::from_utf8_lossy(create.name.as_bytes()).into_owned());
                        ShardResponse::CreateSmallFile(CreateSmallFileResp {
                            inode: InodeId::new(next_inode),
                            creation_time: EggsTime::ZERO,
                        })
                    }
                    ShardRequest::CreateEdenFile(_) => ShardResponse::CreateEdenFile(CreateEdenFileResp {
                        inode: InodeId::new(next_inode),
                        cookie: [7; 8],
                    }),
                    ShardRequest::AddEdenSpan(_) => ShardResponse::AddEdenSpan(AddEdenSpanResp {
                        head: AddEdenSpanRespHead {},
                        blocks: List::empty(),
                    }),
                    ShardRequest::LinkEdenFile(link) => {
                        seen.names.push(String::from_utf8_lossy(link.name.as_bytes()).into_owned());
                        ShardResponse::LinkEdenFile(LinkEdenFileResp { creation_time: EggsTime::ZERO })
                    }
                    other => panic!("unexpected request {:?}", other.kind()),
                };
                next_inode += 1;
                drop(seen);
                // Strays, each marked with STRAY_INODE where the answer has
                // an inode: another request id from the shard's address,
                // and the right request id from another address.
                let stray = match response {
                    ShardResponse::CreateSmallFile(created) => {
                        ShardResponse::CreateSmallFile(CreateSmallFileResp { inode: STRAY_INODE, ..created })
                    }
                    ShardResponse::CreateEdenFile(created) => {
                        ShardResponse::CreateEdenFile(CreateEdenFileResp { inode: STRAY_INODE, ..created })
                    }
                    ref other => other.clone(),
                };
                let mut other_id = header;
                other_id.request_id = U64::new(header.request_id().wrapping_add(1000));
                let n = encode_response(&mut out, &other_id, &stray, None).unwrap();
                socket.send_to(&out[..n], from).unwrap();
                let n = encode_response(&mut out, &header, &stray, None).unwrap();
                elsewhere.send_to(&out[..n], from).unwrap();
                let n = encode_response(&mut out, &header, &response, None).unwrap();
                socket.send_to(&out[..n], from).unwrap();
                outstanding.remove(&from);
            }
        });
        (addr, handle)
    }

    fn run(way: CreateWay, clients: usize, files: u64) -> (Rate, Seen) {
        run_with(|addr| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(create_rate_by(way, addr, ROOT, "t", clients, Duration::from_secs(60), files)).unwrap()
        })
    }

    /// Runs `load` against a fake shard: what it returned and what the
    /// shard saw.
    fn run_with<T>(load: impl FnOnce(SocketAddr) -> T) -> (T, Seen) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (addr, server) = fake_shard(seen.clone(), stop.clone());
        let result = load(addr);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        (result, seen)
    }

    fn expected_names(files: u64) -> HashSet<String> {
        (0..files).map(|n| format!("t-{n}")).collect()
    }

    /// Creates through [`closed_loop`], keeping the inode of every answer
    /// it was handed.
    struct Recording {
        inner: Creates,
        inodes: Arc<Mutex<Vec<InodeId>>>,
    }

    impl Script<daemon::udp::Shard> for Recording {
        fn next(&mut self, stop: bool) -> Result<Option<ShardRequest<'_>>> {
            self.inner.next(stop)
        }

        fn answer(&mut self, response: ShardResponse<'_>) -> Result<bool> {
            if let ShardResponse::CreateSmallFile(created) = &response {
                self.inodes.lock().unwrap().push(created.inode);
            }
            self.inner.answer(response)
        }
    }

    #[test]
    fn the_loop_hands_a_script_only_the_answers_the_accept_rule_takes() {
        let inodes = Arc::new(Mutex::new(Vec::new()));
        let scripts: Vec<Recording> = (0..2)
            .map(|_| Recording {
                inner: Creates {
                    way: CreateWay::OneRequest,
                    parent: ROOT,
                    prefix: "t".into(),
                    next: Arc::new(AtomicU64::new(0)),
                    count_max: 5,
                    contents: vec![1; 10].into(),
                    crc: wire::crc::crc32c(&[1; 10]),
                    name: String::new(),
                    step: CreateStep::Start,
                },
                inodes: inodes.clone(),
            })
            .collect();
        let (rate, seen) = run_with(|addr| {
            closed_loop::<daemon::udp::Shard, _>(addr, None, scripts, Duration::from_secs(60)).unwrap()
        });
        assert_eq!(rate.ops, 10);
        let inodes = inodes.lock().unwrap();
        assert_eq!(inodes.len(), 10);
        assert!(!inodes.contains(&STRAY_INODE), "a stray was taken as an answer: {inodes:?}");
        assert!(!seen.overlapped);
    }

    #[test]
    fn create_clients_each_own_a_socket_resend_once_and_ignore_strays() {
        let (rate, seen) = run(CreateWay::OneRequest, 4, 20);
        assert_eq!(rate.ops, 20);
        assert_eq!(seen.names.iter().cloned().collect::<HashSet<_>>(), expected_names(20));
        assert_eq!(seen.names.len(), 20, "a file was created twice: {:?}", seen.names);
        assert_eq!(seen.per_source.len(), 4, "one source address per client");
        assert_eq!(rate.resends, 4, "each client resent its first request once");
        assert!(!seen.overlapped, "a client had two requests in flight");
    }

    #[test]
    fn three_request_clients_finish_each_file_in_order() {
        let (rate, seen) = run(CreateWay::ThreeRequests, 3, 9);
        assert_eq!(rate.ops, 9);
        assert_eq!(seen.names.iter().cloned().collect::<HashSet<_>>(), expected_names(9));
        assert_eq!(seen.per_source.len(), 3);
        assert_eq!(rate.resends, 3);
        assert!(!seen.overlapped);
    }
}
