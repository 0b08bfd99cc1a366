//! Metadata shard figures: stat and resolve rates, and durable small-file
//! creates, each a closed loop of clients over loopback UDP. A small file
//! is one create_small_file request (kind 0x16, session 11: created, filled
//! and linked in one shard transaction), the way the client library writes
//! one; [`CreateWay::ThreeRequests`] keeps the earlier way measured
//! (create_eden_file + add_eden_span with an inline span +
//! link_eden_file), so the before/after stays visible.

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
use crate::udp::{Client, Rate, run_clients};

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

/// [`create_rate`] with the files created `way`.
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
    run_clients(clients, duration, move |_, deadline| {
        let next = next.clone();
        let prefix = prefix.clone();
        async move {
            let mut client = Client::new(shard, SHARD_MAGIC).await?;
            let contents = crate::limits::pseudo_random_bytes(SMALL_FILE_BYTES, 5);
            let mut ops = 0;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count_max {
                    break;
                }
                let file_name = format!("{prefix}-{n}");
                match way {
                    CreateWay::OneRequest => create_small_file(&mut client, parent, &file_name, &contents).await?,
                    CreateWay::ThreeRequests => {
                        create_small_file_three_requests(&mut client, parent, &file_name, &contents).await?
                    }
                }
                ops += 1;
            }
            Ok(ops)
        }
    })
    .await
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
