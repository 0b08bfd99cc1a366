//! CDC figures: mkdir/s and mv/s (file moves between directories), each a
//! closed loop of clients sending CDC requests over loopback UDP.
//!
//! An mv file whose source and target directories are on one shard is one
//! shard request for the CDC (move_file_in_shard); across shards it is
//! three (acquire, inject, kill). A new directory's shard follows from the
//! CDC's transaction id, so the mv figures pick their target directories
//! by placement ([`mv_targets`]) and report both kinds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wire::cdc::{CdcRequest, CdcResponse, CdcStatus, MkDirReq, MkDirReqHead, MvFileReq, MvFileReqHead};
use wire::codec::Name;
use wire::datagram::CDC_MAGIC;
use wire::ids::InodeId;

use crate::error::{PerfError, Result};
use crate::shard::ROOT;
use crate::udp::{Client, Rate, run_clients};

fn name(text: &str) -> Result<Name<'_>> {
    Name::new(text.as_bytes()).map_err(|e| PerfError::Protocol(format!("name {text:?}: {e}")))
}

fn check(what: &str, response: CdcResponse<'_>) -> Result<InodeId> {
    match response {
        CdcResponse::MkDir(resp) | CdcResponse::MvFile(resp) if resp.status == CdcStatus::Ok => Ok(resp.inode),
        CdcResponse::MkDir(resp) | CdcResponse::MvFile(resp) => {
            Err(PerfError::Protocol(format!("{what}: {} {}", resp.status.name(), resp.text.as_str())))
        }
        CdcResponse::Error(error) => {
            Err(PerfError::Protocol(format!("{what}: {} {}", error.kind, error.text.as_str())))
        }
        other => Err(PerfError::Protocol(format!("{what}: unexpected answer {:?}", other.kind()))),
    }
}

/// mkdir `/<dir_name>` through the CDC; the new directory's inode.
pub async fn mkdir(client: &mut Client, dir_name: &str) -> Result<InodeId> {
    let request = CdcRequest::MkDir(MkDirReq { head: MkDirReqHead { parent: ROOT }, name: name(dir_name)? });
    let response = client.call::<daemon::udp::Cdc>(&request, None).await?;
    check(&format!("mkdir /{dir_name}"), response)
}

/// Directories `/<prefix>-<n>` made until one lands on the root's shard
/// and one on another (the shard is in the inode id): (same, other).
pub async fn mv_targets(cdc: SocketAddr, prefix: &str) -> Result<(InodeId, InodeId)> {
    let mut client = client(cdc).await?;
    let (mut same, mut other) = (None, None);
    for n in 0..MV_TARGET_CANDIDATES_MAX {
        let dir = mkdir(&mut client, &format!("{prefix}-{n}")).await?;
        let slot = if dir.shard() == ROOT.shard() { &mut same } else { &mut other };
        slot.get_or_insert(dir);
        if let (Some(same), Some(other)) = (same, other) {
            return Ok((same, other));
        }
    }
    Err(PerfError::Protocol(format!(
        "{MV_TARGET_CANDIDATES_MAX} directories did not land on both the root's shard and another"
    )))
}

/// Most directories [`mv_targets`] makes (each lands on the root's shard
/// with probability 1/shards).
const MV_TARGET_CANDIDATES_MAX: u64 = 64;

/// A client of the CDC at `cdc`.
pub async fn client(cdc: SocketAddr) -> Result<Client> {
    Client::new(cdc, CDC_MAGIC).await
}

/// Directories made per second in the root by `clients` clients.
pub async fn mkdir_rate(cdc: SocketAddr, prefix: &str, clients: usize, duration: Duration) -> Result<Rate> {
    let next = Arc::new(AtomicU64::new(0));
    let prefix: Arc<str> = prefix.into();
    run_clients(clients, duration, move |_, deadline| {
        let next = next.clone();
        let prefix = prefix.clone();
        async move {
            let mut client = client(cdc).await?;
            let mut ops = 0;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                mkdir(&mut client, &format!("{prefix}-{n}")).await?;
                ops += 1;
            }
            Ok(ops)
        }
    })
    .await
}

/// Files moved per second from `<source>/<prefix>-<n>` (n < `count`,
/// which must exist) into the directory `target` (same names), by
/// `clients` clients; stops early when every file has moved.
#[allow(clippy::too_many_arguments)] // reason: the two directories, the files and the load
pub async fn mv_rate(
    cdc: SocketAddr,
    source: InodeId,
    prefix: &str,
    count: u64,
    target: InodeId,
    clients: usize,
    duration: Duration,
) -> Result<Rate> {
    let next = Arc::new(AtomicU64::new(0));
    let prefix: Arc<str> = prefix.into();
    run_clients(clients, duration, move |_, deadline| {
        let next = next.clone();
        let prefix = prefix.clone();
        async move {
            let mut client = client(cdc).await?;
            let mut ops = 0;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let file_name = format!("{prefix}-{n}");
                let request = CdcRequest::MvFile(MvFileReq {
                    head: MvFileReqHead { source_parent: source, target_parent: target },
                    source_name: name(&file_name)?,
                    target_name: name(&file_name)?,
                });
                let response = client.call::<daemon::udp::Cdc>(&request, None).await?;
                check(&format!("mv {source}/{file_name} {target}"), response)?;
                ops += 1;
            }
            Ok(ops)
        }
    })
    .await
}
