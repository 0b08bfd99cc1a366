//! Block service figures: durable write and cached fetch throughput,
//! speaking `wire::block` directly over TCP with the service's own key
//! (read from its folder's `secret.key`), so certificates are valid and the
//! client costs nothing but the socket.
//!
//! One cell = one block size × one connection count: every connection
//! writes blocks back to back for the duration (at least one each), reads
//! each block back once untimed (checking its bytes, and bringing it into
//! the page cache), then, once every connection has got that far, all
//! fetch their blocks round-robin for the duration together; finally
//! every block is erased so the folder does not grow across cells.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use wire::block::{EraseReq, EraseResp, FetchReq, FetchRespHead, TAG_FETCHED, WriteReq, WriteResp};
use wire::ids::{BlockId, EggsTime};
use wire::mac::{KEY_BYTES, MacKey, SecretKey};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{PerfError, Result};
use crate::limits::mb_per_second;
use crate::process::Daemon;

/// The key of the block service whose folder is `folder`.
pub fn read_key(folder: &Path) -> Result<SecretKey> {
    let path = folder.join("secret.key");
    let bytes = std::fs::read(&path).map_err(PerfError::io(format!("read {}", path.display())))?;
    let key: [u8; KEY_BYTES] =
        bytes.try_into().map_err(|_| PerfError::Protocol(format!("{} is not {KEY_BYTES} bytes", path.display())))?;
    Ok(SecretKey(key))
}

/// Starts `binary` (a blockd) with its data in `FOLDER/blockd` and
/// storage class 2, registering with `shuckle` (a sink is enough), and
/// returns it with the service to talk to.
pub fn start_blockd(
    binary: &Path,
    folder: &Path,
    shuckle: SocketAddr,
    ready_timeout: Duration,
) -> Result<(Daemon, BlockService)> {
    let data = folder.join("blockd");
    std::fs::create_dir_all(&data).map_err(PerfError::io(format!("create {}", data.display())))?;
    let args: Vec<String> = vec![
        data.display().to_string(),
        "--storage-class".into(),
        "2".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--shuckle".into(),
        shuckle.to_string(),
    ];
    let daemon = Daemon::start("blockd", binary, &args, &[], folder, ready_timeout)?;
    let addr = daemon.address("tcp")?;
    let key = read_key(&data)?;
    Ok((daemon, BlockService::new(addr, &key)))
}

/// A block service under test.
#[derive(Clone)]
pub struct BlockService {
    pub addr: SocketAddr,
    pub key: MacKey,
    next_block: Arc<AtomicU64>,
}

impl BlockService {
    pub fn new(addr: SocketAddr, key: &SecretKey) -> Self {
        // Ids from now on, 256 ns apart (the low byte is the shard, 0):
        // unique and well inside the service's creation window.
        let base = BlockId::compose(EggsTime::now(), 0).get();
        Self { addr, key: MacKey::new(key), next_block: Arc::new(AtomicU64::new(base)) }
    }

    fn next_block_id(&self) -> BlockId {
        BlockId::new(self.next_block.fetch_add(0x100, Ordering::Relaxed))
    }

    fn connect(&self) -> Result<TcpStream> {
        let stream =
            TcpStream::connect(self.addr).map_err(PerfError::io(format!("connect to blockd {}", self.addr)))?;
        stream.set_nodelay(true).map_err(PerfError::io("TCP_NODELAY"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(PerfError::io("read timeout"))?;
        Ok(stream)
    }

    /// Writes one block and checks its proof.
    fn write(&self, stream: &mut TcpStream, data: &[u8], crc: u32) -> Result<BlockId> {
        let block_id = self.next_block_id();
        let size = u32::try_from(data.len()).map_err(|_| PerfError::Protocol("block too large".into()))?;
        let request = WriteReq::new(&self.key, block_id, crc, size);
        let closed =
            |e| PerfError::Io { context: format!("write block {block_id} to blockd {}", self.addr), source: e };
        stream.write_all(request.as_bytes()).map_err(closed)?;
        stream.write_all(data).map_err(closed)?;
        let mut answer = [0u8; core::mem::size_of::<WriteResp>()];
        stream.read_exact(&mut answer).map_err(closed)?;
        let proof =
            WriteResp::read_from_bytes(&answer).map_err(|_| PerfError::Protocol("short write answer".into()))?;
        if proof.block_id != block_id || !proof.proof_valid(&self.key) {
            return Err(PerfError::Protocol(format!("blockd {} sent a bad write proof for {block_id}", self.addr)));
        }
        Ok(block_id)
    }

    /// Fetches one block into `storage` (resized), from its first page
    /// boundary on (see [`crate::limits::page_aligned`]); returns the block.
    fn fetch<'b>(&self, stream: &mut TcpStream, block_id: BlockId, storage: &'b mut Vec<u8>) -> Result<&'b [u8]> {
        let closed =
            |e| PerfError::Io { context: format!("fetch block {block_id} from blockd {}", self.addr), source: e };
        stream.write_all(FetchReq::new(block_id).as_bytes()).map_err(closed)?;
        let mut head = [0u8; core::mem::size_of::<FetchRespHead>()];
        stream.read_exact(&mut head).map_err(closed)?;
        let head =
            FetchRespHead::read_from_bytes(&head).map_err(|_| PerfError::Protocol("short fetch answer".into()))?;
        if head.tag != TAG_FETCHED {
            return Err(PerfError::Protocol(format!("blockd answered fetch with tag {:#04x}", head.tag)));
        }
        let size = head.size.get() as usize;
        storage.resize(size + crate::limits::PAGE_BYTES, 0);
        let buf = crate::limits::page_aligned(storage, size);
        stream.read_exact(buf).map_err(closed)?;
        Ok(buf)
    }

    fn erase(&self, stream: &mut TcpStream, block_id: BlockId) -> Result<()> {
        let closed =
            |e| PerfError::Io { context: format!("erase block {block_id} on blockd {}", self.addr), source: e };
        stream.write_all(EraseReq::new(&self.key, block_id).as_bytes()).map_err(closed)?;
        let mut answer = [0u8; core::mem::size_of::<EraseResp>()];
        stream.read_exact(&mut answer).map_err(closed)?;
        let proof =
            EraseResp::read_from_bytes(&answer).map_err(|_| PerfError::Protocol("short erase answer".into()))?;
        if !proof.proof_valid(&self.key) {
            return Err(PerfError::Protocol(format!("blockd {} sent a bad erase proof", self.addr)));
        }
        Ok(())
    }
}

/// Write and fetch throughput of one cell, in MB/s.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    pub write_mb_per_second: f64,
    pub fetch_mb_per_second: f64,
    /// Distinct blocks the fetch phase cycled through (all connections):
    /// with their size, the page cache the fetches read from.
    pub blocks: usize,
    /// When the fetch phase began and ended (for profiles of that phase only).
    pub fetch_window: (Instant, Instant),
}

/// What one connection did in one cell.
struct Worked {
    write: (Instant, Instant, u64),
    fetch: (Instant, Instant, u64),
    blocks: Vec<BlockId>,
}

/// Bytes over the span from the earliest start to the latest end.
fn aggregate(phases: impl Iterator<Item = (Instant, Instant, u64)>) -> f64 {
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut bytes = 0;
    for (start, end, n) in phases {
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
        bytes += n;
    }
    match (first, last) {
        (Some(first), Some(last)) if last > first => mb_per_second(bytes, last - first),
        _ => 0.0,
    }
}

/// Runs one cell: `connections` connections, blocks of `data.len()` bytes.
/// The connections start together and run each phase for `duration`. The
/// timed fetches start together once every connection has written and
/// checked its blocks, so no connection's fetches overlap another's writes
/// (with 64 MiB blocks a connection's last write can end seconds after
/// another's); a connection that fails still reaches that meeting point,
/// so it never wedges the others. A phase's rate is its bytes over the
/// span from the first start to the last end.
pub fn write_and_fetch(
    service: &BlockService,
    data: Arc<Vec<u8>>,
    connections: usize,
    duration: Duration,
) -> Result<Cell> {
    let crc = wire::crc::crc32c(&data);
    let fetch_together = Arc::new(Barrier::new(connections));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let service = service.clone();
        let data = data.clone();
        let fetch_together = fetch_together.clone();
        workers.push(std::thread::spawn(move || -> Result<Worked> {
            let prepared = (|| -> Result<_> {
                let mut stream = service.connect()?;
                let write_start = Instant::now();
                let mut blocks = Vec::new();
                while blocks.is_empty() || write_start.elapsed() < duration {
                    blocks.push(service.write(&mut stream, &data, crc)?);
                }
                let write = (write_start, Instant::now(), blocks.len() as u64 * data.len() as u64);
                // Untimed pass: checks every block's bytes and brings it
                // into the page cache (a block just written may already
                // have been evicted).
                let mut buf = Vec::new();
                for block_id in &blocks {
                    let block = service.fetch(&mut stream, *block_id, &mut buf)?;
                    if block.len() != data.len() || wire::crc::crc32c(block) != crc {
                        return Err(PerfError::Protocol(format!("blockd returned wrong bytes for {block_id}")));
                    }
                }
                Ok((stream, write, blocks, buf))
            })();
            // Reached on failure too, so a failed connection never wedges
            // the others.
            fetch_together.wait();
            let (mut stream, write, blocks, mut buf) = prepared?;
            let fetch_start = Instant::now();
            let mut fetched = 0u64;
            for (round, block_id) in blocks.iter().cycle().enumerate() {
                if round > 0 && fetch_start.elapsed() >= duration {
                    break;
                }
                fetched += service.fetch(&mut stream, *block_id, &mut buf)?.len() as u64;
            }
            Ok(Worked { write, fetch: (fetch_start, Instant::now(), fetched), blocks })
        }));
    }
    let mut results = Vec::new();
    for worker in workers {
        results.push(worker.join().map_err(|_| PerfError::Component("block worker panicked".into()))??);
    }
    let cell = Cell {
        write_mb_per_second: aggregate(results.iter().map(|r| r.write)),
        fetch_mb_per_second: aggregate(results.iter().map(|r| r.fetch)),
        blocks: results.iter().map(|r| r.blocks.len()).sum(),
        fetch_window: (
            results.iter().map(|r| r.fetch.0).min().unwrap_or_else(Instant::now),
            results.iter().map(|r| r.fetch.1).max().unwrap_or_else(Instant::now),
        ),
    };
    // Erase everything so the folder does not grow from cell to cell.
    let mut stream = service.connect()?;
    for block_id in results.iter().flat_map(|r| r.blocks.iter()) {
        service.erase(&mut stream, *block_id)?;
    }
    Ok(cell)
}
