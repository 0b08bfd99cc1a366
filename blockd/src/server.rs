//! One executor's work: accept connections on its own listener and serve
//! their requests (DESIGN.md §6), in order, one connection per task.
//!
//! - **Listening.** Every executor owns a listening socket of its own, all
//!   bound to the same address with `SO_REUSEPORT`, so the kernel spreads
//!   new connections over the executors and no executor hands work to
//!   another. `main` makes the sockets (with socket2) before the executors
//!   start, so that the port is known and printed first and a bind failure
//!   is a clean exit; each executor adopts its descriptor with glommio's
//!   `TcpListener::from_raw_fd`.
//! - **Writes** give the temporary file its whole size first
//!   (`fallocate(2)`: no per-page delayed allocation, one extent, a full
//!   disk answered before the payload is copied), then stream the payload
//!   in [`CHUNK_BYTES`] chunks from the socket into one reused buffer, CRC
//!   them, copy them into the page cache with `pwrite(2)` on the
//!   executor's thread (a copy, no disk wait; see `stage` for why not
//!   io_uring), and start each chunk's writeback at once
//!   (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, no wait), so the disk
//!   writes while the rest arrives. On a CRC match the file is
//!   fdatasync'ed (it waits for the chunks in flight and writes the
//!   extents' metadata), renamed into place with `RENAME_NOREPLACE` (an
//!   existing block is never overwritten), and its folder fsync'ed; only
//!   then is the proof sent. Nothing is acknowledged before it is durable.
//!   The block stays in the page cache, so a cat right after a put reads
//!   it from memory.
//! - **Fetch** opens the block file on the executor's thread when its path
//!   is in the kernel's caches (`openat2(RESOLVE_CACHED)`, then `fstat`;
//!   otherwise through glommio's io_uring), yields once to the
//!   executor's other connections, and sends the block from the page cache with `splice(2)` through
//!   a 1 MiB pipe its executor keeps (see [`send_file`]): no copy through user
//!   space, no buffer per chunk. The answer's head goes with `MSG_MORE`
//!   (it leaves in the block's first segment), and a block whose first
//!   and last pages are cached skips `POSIX_FADV_WILLNEED` (see
//!   [`will_need`]). Every connection's socket send buffer is fixed at
//!   [`SEND_BUFFER_BYTES`] (the kernel's autotuned 4 MiB made large
//!   blocks fetched over many connections 2–4× slower). The client checks
//!   the bytes against the CRC the shard holds.
//! - **Crc** reads the block through the page cache (buffered io_uring
//!   reads) in [`CHUNK_BYTES`] chunks with one chunk of read-ahead, so a
//!   block is never held whole in memory. The CRC is recomputed from the
//!   stored bytes (no sidecar file: one file per block, nothing to keep in
//!   step). See "Measurements" below.
//! - **Connections** (issue 17 E, slowloris): a request header must be
//!   complete within [`HEADER_TIMEOUT`] of its first byte; a connection idle
//!   between requests is closed after [`IDLE_TIMEOUT`]; one source address
//!   holds at most [`CONNECTIONS_PER_SOURCE_MAX`] connections per executor.
//!   At a limit the oldest *waiting* connection (idle, or inside its header)
//!   is shed, so new clients always get in; only when every connection is
//!   busy serving a request is the new one refused. Both count in metrics.
//! - **Refusals** (bad MAC, out-of-window id, oversize, CRC mismatch, a
//!   conflicting existing block, an unknown block, a truncated request)
//!   close the connection after logging the reason; the temporary file of a
//!   refused write is removed.
//! - **A write the disk fails** (full, or an I/O error) is not the
//!   request's fault: its temporary file is removed, the rest of its
//!   payload is read and dropped, and it is answered with the block
//!   protocol's error ([`wire::block::BlockErrorResp`]: `NO_SPACE` or
//!   `STORAGE_ERROR`); the connection stays in step and serves on. A full
//!   disk also marks the service full ([`crate::space`]), which tells
//!   shuckle at once.
//! - **Stopping.** `main` closes this executor's end of a socket pair on
//!   SIGTERM/SIGINT; the executor then stops accepting, lets every
//!   connection finish the request it is in (a write in flight completes
//!   and is acknowledged), closes idle connections, and returns.
//!
//! # Measurements
//!
//! Quick local experiments (release build, a blocking std client over
//! loopback, 16 MiB blocks, ext4 on a virtio disk without io_uring poll
//! queues, 2 cores). Other engineers' builds kept the load average at 10–15
//! throughout, so runs of one configuration vary by 2× or more; the
//! whole-stack benchmark in `perf/` is the reference. MB/s.
//!
//! The O_DIRECT configuration of sessions 1–6 (1 MiB chunks, write-behind 2):
//!
//! | executors, connections | write | fetch, uncached | fetch, cached (2 runs) | loopback TCP, same client |
//! |---|---|---|---|---|
//! | 1, 1 | 1182 | 365 | 365, 474 | 658 |
//! | 1, 4 | 601 | 581 | 885, 1726 | 1455 |
//! | 2, 1 | 860 | 554 | 2224, 2307 | 1107 |
//! | 2, 4 | 542 | 977 | 1484, 1229 | 1056 |
//!
//! `dd bs=1M oflag=direct conv=fdatasync` on the same disk: 1.2–1.5 GB/s;
//! through the page cache (`conv=fdatasync` only): 124 MB/s. O_DIRECT was
//! then the fast way to durability, and the write path used it until
//! session 7 of issue 11, when the same disk measured the other way round
//! (load 5–9, `dd` of 1.5 GiB as 6 writers at once): O_DIRECT 1 MiB
//! 6.5–7.8 s, 4 MiB 6.6 s, through the page cache with one fdatasync
//! each 3.4–3.9 s; 6 writers of 64 files of 4 MiB, each file synced (what
//! `eggs put` asks of 6 services): O_DIRECT 9.0 s, page cache 5.1 s.
//! `eggs put` of 1 GiB RS 4+2 with buffered block writes took 0.79× the
//! wall time of O_DIRECT ones (paired runs, figures in
//! `perf/results/2026-11-27-s7-dp11.md`), hence buffered writes now.
//!
//! Fetch, page cache (as built) against O_DIRECT reads (glommio's
//! `DmaStreamReader`, 1 MiB buffers, read-ahead 2), 1 executor, 2
//! connections, 3 rounds over the same blocks, two runs each:
//! page cache 926/1640/1481 and 923/575/2091; O_DIRECT 443/483/912 and
//! 464/618/400. The page cache wins once a block has been read (typical:
//! a block is read by many clients), and is no slower the first time.
//! `sendfile` from the page cache replaced the buffered reads for fetches
//! (issue 11; figures in `perf/README.md`); registered buffers were not
//! tried. Session 7 replaced `sendfile` (whose internal pipe hands the
//! socket 64 KiB per round) with splices through 1 MiB pipes each executor
//! keeps: paired against `sendfile`, 16 connections fetched 1.17–1.47×
//! (1 MiB blocks) and 1.12–1.24× (64 MiB); one connection was mixed
//! (0.71–1.15× and 0.90–1.43×); see `perf/results/2026-11-27-s7-bd11.md`.
//! Session 8: the head with `MSG_MORE` and no `WILLNEED` for cached
//! blocks, paired against session 7 (three sets of 5 pairs, medians):
//! 1 MiB × 16 1.09–1.13× (blockd CPU per cell 0.83–0.88×), 1 MiB × 1
//! 1.07–1.32×, 64 MiB × 16 no clear change (0.88–1.14×); see
//! `perf/results/2026-11-28-s8-dp11b.md`.
//!
//! Chunk size and write-behind depth, 16 MiB blocks, 1 / 4 connections
//! (measured before the io-probe fix in [`crate::store`], while glommio
//! wrongly sent O_DIRECT I/O to its poll ring, which slowed every write;
//! only the comparison between rows means something):
//!
//! | chunk, write-behind | write | fetch, cached |
//! |---|---|---|
//! | 1 MiB, 1 | 227–336 / 297–393 | 1452–2528 / 417–2062 |
//! | 1 MiB, 4 | 234 / 371 | 344–1093 / 1140–1414 |
//! | 4 MiB, 2 | 339 / 216 | 260 / 294–304 |
//! | 256 KiB, 4 | 413 / 550 | 600–1865 / 532–659 |
//!
//! 4 MiB buffered reads were clearly slower from the cache (each read
//! allocates its buffer), so 1 MiB; write-behind depth made no difference
//! visible through the noise, and 2 keeps a connection's memory at 3 MiB.
//!
//! Session 19 (`perf/results/2026-11-29-s19-dp20b.md`): `fallocate` plus a
//! writeback started per chunk, against session 18's writes (delayed
//! allocation, all writeback in the final `fdatasync`). `eggs put` of
//! 1 GiB RS 4+2 on fresh local clusters, paired: in a quiet window (load
//! 0.7–3.7, 8 rounds per block size) 4 MiB blocks 1.16× (711 → 833 MB/s,
//! B won 8/8), 16 MiB blocks 1.29× (601 → 812 MB/s, 8/8); loaded (load
//! 1.6–9.4, 24 rounds per size) 1.06× (17/24) and 1.22× (16/24); blockd
//! CPU per put 0.82–0.85× (0.95 → 0.78 and 0.73 → 0.60 s/GiB, quiet); the first `eggs cat` after the put and later cats
//! unchanged (1.00× and 1.05×, 1.08× and 0.97×, client CPU 0.99× and
//! 1.00×). Per block (same binary, 4 puts each way): the `fdatasync`
//! after the payload fell from 14–18 ms to 9–11 ms median (4 MiB) and
//! from 41–60 ms to 18–33 ms (16 MiB). The delayed-allocation work was
//! ~18 % of blockd's executor CPU before. Dropped: 256 KiB and 4 MiB
//! chunks (no gain; 4 MiB serialises a block's receive and copy, 2.5–4.7×
//! the CPU), and skipping the folder fsync (≤ 1.14×, and not durable).

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::io::{BufferedFile, Directory, DmaFile, OpenOptions, ReadResult};
use glommio::net::{Preallocated, TcpListener, TcpStream, UnixStream};
use glommio::sync::{Gate, Semaphore};
use glommio::task::JoinHandle;
use wire::ErrorKind;
use wire::block::{
    BlockErrorResp, BlockRequest, CrcReq, CrcResp, EraseReq, EraseResp, FetchReq, FetchRespHead, REQUEST_BYTES_MAX,
    StatsReq, StatsResp, WriteReq, WriteResp, request_len,
};
use wire::crc::crc32c_append;
use wire::ids::{BlockId, EggsTime};
use wire::mac::MacKey;
use zerocopy::IntoBytes;

use crate::metrics::Counters;
use crate::request::{Refusal, check_erase, check_write, existing_block_matches};
use crate::space::{SpaceWatch, is_no_space};
use crate::store::{BLOCK_DIR_COUNT, Layout, c_path, free_space};

/// Unit of socket reads of a write's payload and of a crc request's disk
/// reads: large enough for few system calls, small enough that a
/// connection holds only one or two of them.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Bytes written through user space when a fetch's socket is full (the
/// write waits for room; splicing then resumes).
const BOUNCE_BYTES: usize = 16 << 10;

/// Default `SO_SNDBUF` asked for every connection (the kernel doubles it: 1 MiB
/// of socket send buffer, counting its overhead), which also turns off
/// the kernel's send-buffer autotuning (up to `tcp_wmem`'s 4 MiB here).
/// With autotuned buffers, blocks of 2 MiB and more fetched over 16
/// connections ran at 4.0–4.5 GB/s against 5.7–6.9 for 1 MiB blocks (a
/// cliff between 1 and 2 MiB, flat from 2 to 64 MiB), every per-byte
/// cost of the kernel's TCP path 1.3–2× higher and ~2.7× the ACKs per
/// byte; with this bound 64 MiB × 16 fetched 2.3–4.7× faster, 1 MiB × 16
/// 1.0–1.5× (`perf/results/2026-11-28-s12-dp12.md`). 1 MiB in flight per
/// connection still covers a 10 GB/s × 100 µs path; a client wanting more
/// opens more connections (eggs keeps one per block service and cat reads
/// many services at once). A path with a longer round trip wants more
/// (`blockd --send-buffer-bytes`, 0 for the kernel's autotuning).
pub const SEND_BUFFER_BYTES: libc::c_int = 512 << 10;

/// Open connections one executor serves at once. A connection holds at
/// most two chunks, so this also bounds an executor's buffer memory
/// (2 GiB at 1024 × 2 MiB, reached only if every connection reads a
/// block's CRC at once). Lowered to fit the descriptor limit (see
/// [`connection_limit`]).
const CONNECTIONS_PER_EXECUTOR_MAX: usize = 1024;

/// Open connections one executor keeps from one source address. Beyond
/// it the source's oldest waiting connection is shed (or, if all of them
/// are busy, the new one refused), so one host cannot take every slot.
pub const CONNECTIONS_PER_SOURCE_MAX: usize = 128;

/// Time a request header may take to arrive once its first byte has: a
/// header is at most 25 bytes, so only a deliberately slow client needs
/// more. Separate from the stall timeout of a transfer in progress.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection idle between requests this long is closed (clients close
/// their pooled connections sooner).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Open connections that make a burst worth giving memory back after.
const TRIM_PEAK_CONNECTIONS: usize = 256;

/// Descriptors kept free of connections (block files, folders, rings).
const DESCRIPTORS_RESERVED: usize = 384;

/// Executors running in this process (for [`connection_limit`]).
static EXECUTORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes buffered from a socket for request headers. Payload chunks are at
/// least this big, so they are read straight into their disk buffers.
const RECEIVE_BUFFER_BYTES: usize = 16 << 10;

/// Default of [`Shared::stall_timeout`]: a minute covers any pause of a
/// healthy client, and bounds how long a stop waits for a stuck one.
pub const STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// What every executor shares (read-only, or atomics).
pub struct Shared {
    pub layout: Layout,
    pub key: MacKey,
    pub counters: Arc<Counters>,
    /// Whether the disk is full ([`crate::space`]).
    pub space: Arc<SpaceWatch>,
    /// A request whose bytes stop coming (or whose response is not read)
    /// for this long is abandoned. Idle connections between requests have
    /// no limit.
    pub stall_timeout: Duration,
    /// `SO_SNDBUF` asked for every connection (`blockd
    /// --send-buffer-bytes`, default [`SEND_BUFFER_BYTES`]); `None`: the
    /// kernel's autotuning.
    pub send_buffer: Option<libc::c_int>,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("socket: {0}")]
    Socket(#[from] io::Error),
    #[error("{operation} {path}: {source}")]
    Storage {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A storage failure already answered with an error: the connection
    /// is still in step and serves on.
    #[error("answered {kind}: {failure}")]
    Answered { kind: ErrorKind, failure: Box<ConnectionEnd> },
}

fn storage<'a, E: Into<io::Error>>(operation: &'static str, path: &'a Path) -> impl FnOnce(E) -> ConnectionEnd + 'a {
    move |source| ConnectionEnd::Storage { operation, path: path.to_path_buf(), source: source.into() }
}

/// A failed socket read inside a request: end of stream means the request
/// was cut short, a timeout means it stalled.
fn read_failure(error: io::Error, truncated: Refusal) -> ConnectionEnd {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => ConnectionEnd::Refused(truncated),
        io::ErrorKind::TimedOut => ConnectionEnd::Refused(Refusal::Stalled),
        _ => ConnectionEnd::Socket(error),
    }
}

type Stream = TcpStream<Preallocated>;

/// One executor's state.
struct Executor {
    index: usize,
    shared: Arc<Shared>,
    /// The 256 block folders, open for fsync after a rename or an unlink.
    dirs: Vec<Directory>,
    /// Makes temporary file names unique within this executor.
    sequence: Cell<u64>,
    stopping: Cell<bool>,
    /// Never signalled, only closed: waiters wake when the executor stops.
    stop: Semaphore,
    /// The open connections, for the limits and for shedding.
    connections: std::cell::RefCell<ConnectionTable>,
    /// Empty fetch pipes kept for the next fetch (at most
    /// [`PIPES_KEPT`]), so a fetch does not make and close one.
    pipes: std::cell::RefCell<Vec<Pipe>>,
    /// Chunk buffers of finished block writes, kept for the next ones (at
    /// most [`WRITE_BUFFERS_KEPT`]), so a write does not allocate and zero
    /// a `CHUNK_BYTES` buffer of its own.
    write_buffers: std::cell::RefCell<Vec<Vec<u8>>>,
}

/// Where a connection is: waiting (idle between requests, or in the
/// middle of a request header: either may be shed) or serving a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Busy,
}

struct Tracked {
    source: std::net::IpAddr,
    phase: Phase,
    since: std::time::Instant,
    /// Closed to shed the connection: its task sees it and ends.
    shed: Rc<Semaphore>,
}

/// One executor's open connections.
#[derive(Default)]
struct ConnectionTable {
    /// Most connections open at once since memory was last given back.
    peak_since_trim: usize,
    next_id: u64,
    open: std::collections::HashMap<u64, Tracked>,
    per_source: std::collections::HashMap<std::net::IpAddr, usize>,
}

impl ConnectionTable {
    /// Takes a slot for a new connection from `source`, shedding the
    /// oldest waiting connection (of that source when the source is at its
    /// bound) if needed. `None`: every candidate is busy; refuse.
    fn admit(&mut self, source: std::net::IpAddr, limit: usize) -> Option<(u64, Rc<Semaphore>, usize)> {
        let mut shed = 0;
        if self.per_source.get(&source).copied().unwrap_or(0) >= CONNECTIONS_PER_SOURCE_MAX {
            if !self.shed_oldest(Some(source)) {
                return None;
            }
            shed += 1;
        }
        if self.open.len() >= limit {
            if !self.shed_oldest(None) {
                return None;
            }
            shed += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        let signal = Rc::new(Semaphore::new(0));
        let tracked = Tracked { source, phase: Phase::Waiting, since: std::time::Instant::now(), shed: signal.clone() };
        self.open.insert(id, tracked);
        *self.per_source.entry(source).or_default() += 1;
        self.peak_since_trim = self.peak_since_trim.max(self.open.len());
        Some((id, signal, shed))
    }

    /// Sheds the waiting connection that has waited longest (of `source`
    /// if given); false when there is none.
    fn shed_oldest(&mut self, source: Option<std::net::IpAddr>) -> bool {
        let oldest = self
            .open
            .iter()
            .filter(|(_, t)| t.phase == Phase::Waiting && source.is_none_or(|s| s == t.source))
            .min_by_key(|(_, t)| t.since)
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                if let Some(tracked) = self.remove(id) {
                    tracked.shed.close();
                }
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: u64) -> Option<Tracked> {
        let tracked = self.open.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&tracked.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_source.remove(&tracked.source);
            }
        }
        Some(tracked)
    }

    /// After a burst of connections has mostly closed, gives the freed
    /// heap back to the system (issue 17 G4: a thousand connections' buffers
    /// and tasks left RSS at its high-water mark — glibc keeps freed small
    /// allocations — not a leak: a second burst reused the same memory).
    fn trim_after_burst(&mut self) {
        if self.peak_since_trim >= TRIM_PEAK_CONNECTIONS && self.open.len() <= self.peak_since_trim / 4 {
            self.peak_since_trim = self.open.len();
            // SAFETY: malloc_trim only releases free heap pages.
            unsafe { libc::malloc_trim(0) };
        }
    }

    fn set_phase(&mut self, id: u64, phase: Phase) {
        if let Some(tracked) = self.open.get_mut(&id) {
            tracked.phase = phase;
            tracked.since = std::time::Instant::now();
        }
    }
}

/// Connections one executor may hold: [`CONNECTIONS_PER_EXECUTOR_MAX`],
/// or less when the descriptor limit shared by the executors is lower.
fn connection_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    let executors = EXECUTORS.load(std::sync::atomic::Ordering::Relaxed).max(1);
    (soft.saturating_sub(DESCRIPTORS_RESERVED) / executors).clamp(16, CONNECTIONS_PER_EXECUTOR_MAX)
}

/// Raises the soft descriptor limit to the hard one (connections are
/// descriptors; the default soft limit is often 1024).
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

impl Executor {
    fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop.close();
    }

    async fn stopped(&self) {
        let _ = self.stop.acquire(1).await;
    }

    fn next_sequence(&self) -> u64 {
        let sequence = self.sequence.get();
        self.sequence.set(sequence + 1);
        sequence
    }

    async fn sync_block_dir(&self, block_id: BlockId) -> Result<(), ConnectionEnd> {
        let index = Layout::block_dir_index(block_id);
        match self.dirs.get(index) {
            Some(dir) => dir.sync().await.map_err(storage("syncing", &self.shared.layout.block_dir(index))),
            None => Err(ConnectionEnd::Storage {
                operation: "syncing",
                path: self.shared.layout.block_dir(index),
                source: io::Error::other("block folder not open"),
            }),
        }
    }
}

/// Runs one executor until it is told to stop through `stop`. `listener` is
/// a bound, listening TCP socket; `stop` one end of a socket pair whose
/// other end `main` closes to stop the executor. `ready` is called once
/// the executor accepts connections.
///
/// # Safety
///
/// `listener` and `stop` must be a listening TCP socket and a connected Unix
/// stream socket, owned by nobody else.
pub async unsafe fn run(
    index: usize,
    shared: Arc<Shared>,
    listener: OwnedFd,
    stop: OwnedFd,
    ready: impl FnOnce(),
) -> io::Result<()> {
    // SAFETY: the caller hands us sockets of the right kinds, owned by us.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    // SAFETY: as above.
    let mut stop_stream = unsafe { UnixStream::from_raw_fd(stop.into_raw_fd()) };
    // Settles glommio's per-device polling probe on real data (store docs).
    let probe = shared.layout.io_probe_path();
    DmaFile::open(&probe).await?.close().await?;
    let mut dirs = Vec::with_capacity(BLOCK_DIR_COUNT);
    for dir_index in 0..BLOCK_DIR_COUNT {
        dirs.push(Directory::open(shared.layout.block_dir(dir_index)).await?);
    }
    let executor = Rc::new(Executor {
        index,
        shared,
        dirs,
        sequence: Cell::new(0),
        stopping: Cell::new(false),
        stop: Semaphore::new(0),
        connections: std::cell::RefCell::new(ConnectionTable::default()),
        pipes: std::cell::RefCell::new(Vec::new()),
        write_buffers: std::cell::RefCell::new(Vec::new()),
    });
    raise_descriptor_limit();
    EXECUTORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let watcher = executor.clone();
    glommio::spawn_local(async move {
        let mut byte = [0u8; 1];
        let _ = stop_stream.read(&mut byte).await;
        watcher.begin_stop();
    })
    .detach();
    ready();

    let connections = Gate::new();
    let limit = connection_limit();
    loop {
        // Always accept: at the limit the oldest waiting connection is
        // shed, so slow or idle clients cannot lock new ones out.
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            executor.stopped().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                let source = stream.peer_addr().map(|addr| addr.ip()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
                let admitted = executor.connections.borrow_mut().admit(source, limit);
                let Some((id, shed, shed_count)) = admitted else {
                    executor.shared.counters.connection_refused();
                    tracing::debug!(%source, "every connection busy; new connection refused");
                    drop(stream);
                    continue;
                };
                for _ in 0..shed_count {
                    executor.shared.counters.connection_shed();
                }
                executor.shared.counters.connection();
                let connection = serve_connection(executor.clone(), stream, id, shed);
                match connections.spawn(connection) {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(_) => break,
                }
            }
            Some(Err(e)) => {
                // Usually out of descriptors: back off instead of spinning.
                tracing::warn!(error = %e, executor = index, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracing::info!(executor = index, "stopped accepting; finishing requests in flight");
    let _ = connections.close().await;
    Ok(())
}

async fn serve_connection(executor: Rc<Executor>, stream: TcpStream, id: u64, shed: Rc<Semaphore>) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(executor.shared.stall_timeout));
    // SAFETY: `stream` owns the descriptor and outlives this borrow.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let socket = socket2::SockRef::from(&socket);
    // Non-blocking, for `splice` (glommio's own calls never block anyway).
    let _ = socket.set_nonblocking(true);
    if let Some(bytes) = executor.shared.send_buffer {
        set_send_buffer(&socket, bytes);
    }
    let mut stream = stream.buffered_with(Preallocated::new(RECEIVE_BUFFER_BYTES));
    loop {
        match serve_request(&executor, &mut stream, id, &shed).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(ConnectionEnd::Answered { kind, failure }) => {
                tracing::warn!(?peer, error = %failure, %kind, "write failed on the disk; answered with an error");
                executor.shared.counters.io_error();
            }
            Err(ConnectionEnd::Refused(refusal)) => {
                match refusal {
                    // Expected under load or attack: not worth a warning each.
                    Refusal::HeaderTimeout | Refusal::Shed | Refusal::IdleTimeout => {
                        tracing::debug!(?peer, %refusal, "closing the connection")
                    }
                    _ => tracing::warn!(?peer, %refusal, "request refused; closing the connection"),
                }
                executor.shared.counters.refusal(&refusal);
                break;
            }
            Err(failure) => {
                tracing::warn!(?peer, error = %failure, "connection failed");
                executor.shared.counters.io_error();
                break;
            }
        }
    }
    let _ = stream.close().await;
    drop(stream);
    let mut table = executor.connections.borrow_mut();
    table.remove(id);
    table.trim_after_burst();
}

/// [`Shared::send_buffer`]; a refusal leaves the kernel's autotuning
/// (slower, still correct) and is logged once per process.
fn set_send_buffer(socket: &socket2::SockRef<'_>, bytes: libc::c_int) {
    static REFUSAL_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let result = socket.set_send_buffer_size(usize::try_from(bytes).unwrap_or(0));
    if let Err(error) = result
        && !REFUSAL_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(%error, bytes, "SO_SNDBUF refused: connections keep the kernel's send buffer");
    }
}

/// How waiting for a request ended early.
enum Wait {
    Stopped,
    Shed,
    TimedOut,
}

/// Waits for `operation`, unless the executor stops, the connection is
/// shed, or `limit` passes.
async fn guarded<T>(
    executor: &Executor,
    shed: &Semaphore,
    limit: Duration,
    operation: impl Future<Output = T>,
) -> Result<T, Wait> {
    future::or(async { Ok(operation.await) }, async {
        future::or(
            async {
                executor.stopped().await;
                Wait::Stopped
            },
            future::or(
                async {
                    let _ = shed.acquire(1).await;
                    Wait::Shed
                },
                async {
                    glommio::timer::sleep(limit).await;
                    Wait::TimedOut
                },
            ),
        )
        .await
        .into_err()
    })
    .await
}

trait IntoErr<T> {
    fn into_err(self) -> Result<T, Self>
    where
        Self: Sized;
}

impl<T> IntoErr<T> for Wait {
    fn into_err(self) -> Result<T, Self> {
        Err(self)
    }
}

/// Serves one request; `false` when the connection is done (closed by the
/// peer between requests, or the executor is stopping).
async fn serve_request(
    executor: &Executor,
    stream: &mut Stream,
    id: u64,
    shed: &Semaphore,
) -> Result<bool, ConnectionEnd> {
    if executor.stopping.get() {
        return Ok(false);
    }
    let mut header = [0u8; REQUEST_BYTES_MAX];
    stream.set_read_timeout(None).map_err(io::Error::from)?;
    let first = guarded(executor, shed, IDLE_TIMEOUT, stream.read(&mut header[..1])).await;
    match first {
        Err(Wait::Stopped) | Ok(Ok(0)) => return Ok(false),
        Err(Wait::Shed) => return Err(Refusal::Shed.into()),
        Err(Wait::TimedOut) => return Err(Refusal::IdleTimeout.into()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(ConnectionEnd::Socket(e)),
    }
    let tag = header[0];
    let len = request_len(tag).ok_or(Refusal::UnknownTag(tag))?;
    let rest = header.get_mut(1..len).ok_or(Refusal::UnknownTag(tag))?;
    // The whole header within HEADER_TIMEOUT, however it trickles in.
    match guarded(executor, shed, HEADER_TIMEOUT, stream.read_exact(rest)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(read_failure(e, Refusal::TruncatedHeader)),
        Err(Wait::Shed) => return Err(Refusal::Shed.into()),
        Err(Wait::Stopped) | Err(Wait::TimedOut) => return Err(Refusal::HeaderTimeout.into()),
    }
    stream.set_read_timeout(Some(executor.shared.stall_timeout)).map_err(io::Error::from)?;
    executor.connections.borrow_mut().set_phase(id, Phase::Busy);
    let served = serve_decoded(executor, stream, &header[..len], tag).await;
    executor.connections.borrow_mut().set_phase(id, Phase::Waiting);
    served.map(|()| true)
}

async fn serve_decoded(executor: &Executor, stream: &mut Stream, bytes: &[u8], tag: u8) -> Result<(), ConnectionEnd> {
    let request = BlockRequest::decode(bytes).ok().ok_or(Refusal::UnknownTag(tag))?;
    // Index in metrics::REQUEST_KINDS.
    let kind = match &request {
        BlockRequest::Write(_) => 0,
        BlockRequest::Fetch(_) => 1,
        BlockRequest::Crc(_) => 2,
        BlockRequest::Erase(_) => 3,
        BlockRequest::Stats(_) => 4,
    };
    let counters = &executor.shared.counters;
    counters.request(kind);
    let started = Instant::now();
    let served = match request {
        BlockRequest::Write(request) => write(executor, stream, &request).await,
        BlockRequest::Fetch(request) => fetch(executor, stream, &request).await,
        BlockRequest::Crc(request) => crc(executor, stream, &request).await,
        BlockRequest::Erase(request) => erase(executor, stream, &request).await,
        BlockRequest::Stats(request) => stats(executor, stream, &request).await,
    };
    counters.request_done(kind, started.elapsed(), served.is_ok());
    served
}

async fn write(executor: &Executor, stream: &mut Stream, request: &WriteReq) -> Result<(), ConnectionEnd> {
    check_write(request, &executor.shared.key, EggsTime::now())?;
    let block_id = request.block_id;
    let temp = executor.shared.layout.temp_path(block_id, executor.index, executor.next_sequence());
    let mut received = 0u64;
    let staged = stage(executor, stream, request, &temp, &mut received).await;
    let published = match staged {
        Ok(()) => publish(executor, request, &temp).await,
        Err(end) => Err(end),
    };
    if let Err(end) = published {
        discard(&temp).await;
        return match end {
            ConnectionEnd::Storage { .. } => answer_storage_failure(executor, stream, request, received, end).await,
            end => Err(end),
        };
    }
    let size = u64::from(request.size.get());
    executor.shared.counters.written(size);
    tracing::debug!(%block_id, size, "block written");
    stream.write_all(WriteResp::new(&executor.shared.key, block_id).as_bytes()).await?;
    Ok(())
}

/// Answers a write whose bytes the disk did not take (`failure`, a
/// [`ConnectionEnd::Storage`]; the temporary file is already gone): reads
/// and drops the rest of the payload (`received` of it was read), marks
/// the service full if the disk is, and sends the error answer. `Ok` is
/// never returned: the result is [`ConnectionEnd::Answered`] when the
/// answer went out (the connection serves on), else the failure that
/// ended it.
async fn answer_storage_failure(
    executor: &Executor,
    stream: &mut Stream,
    request: &WriteReq,
    received: u64,
    failure: ConnectionEnd,
) -> Result<(), ConnectionEnd> {
    let block_id = request.block_id;
    let size = u64::from(request.size.get());
    let kind = match &failure {
        ConnectionEnd::Storage { source, .. } if is_no_space(source) => {
            let root = executor.shared.layout.root();
            let available_bytes = free_space(root).map(|(bytes, _)| bytes).unwrap_or(0);
            executor.shared.space.no_space(available_bytes, size);
            ErrorKind::NoSpace
        }
        _ => ErrorKind::StorageError,
    };
    let mut rest = size.saturating_sub(received);
    let mut sink = vec![0u8; RECEIVE_BUFFER_BYTES];
    while rest > 0 {
        let length = rest.min(sink.len() as u64) as usize;
        let read = stream.read(&mut sink[..length]).await;
        match read {
            Ok(0) => return Err(Refusal::TruncatedPayload(block_id).into()),
            Ok(read) => rest -= read as u64,
            Err(e) => return Err(read_failure(e, Refusal::TruncatedPayload(block_id))),
        }
    }
    stream.write_all(BlockErrorResp::new(block_id, kind).as_bytes()).await?;
    Err(ConnectionEnd::Answered { kind, failure: Box::new(failure) })
}

/// Streams the payload into `temp`, checks its CRC, and makes the file
/// durable at its exact size. `received` counts the payload bytes read
/// from the socket (all of them once this returns `Ok`).
///
/// The file is first given its whole size with `fallocate(2)` (see
/// [`allocate`]). The chunks go through the page cache, so the block is
/// cached for the reads that follow a put (session 18: O_DIRECT writes
/// made the first cat 4× and cached cats 25 % slower), and each chunk's
/// writeback is started as soon as it is copied (see [`start_writeback`]),
/// so the disk writes while the next chunks arrive and the final
/// `fdatasync` waits only for the tail. The copy into the page cache is a
/// plain `pwrite(2)` on this thread: the same writes through glommio's
/// buffered io_uring file took 5.3 blockd CPU seconds per `eggs put` of
/// 1 GiB RS 4+2 (new 1 MiB `Vec` per chunk, copies on io-wq workers)
/// against 4.0 for `pwrite` and 1.5 for O_DIRECT. Few pages are ever
/// dirty (each chunk is sent to the disk at once), so `pwrite` is seldom
/// throttled.
async fn stage(
    executor: &Executor,
    stream: &mut Stream,
    request: &WriteReq,
    temp: &Path,
    received: &mut u64,
) -> Result<(), ConnectionEnd> {
    let block_id = request.block_id;
    let size = u64::from(request.size.get());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(crate::store::BLOCK_FILE_MODE as libc::mode_t)
        .buffered_open(temp)
        .await
        .map_err(storage("creating", temp))?;
    // SAFETY: the descriptor stays open (owned by `file`) while this
    // borrowed handle lives; ManuallyDrop never closes it.
    let plain = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(file.as_raw_fd()) });
    allocate(&plain, size).map_err(storage("allocating", temp))?;
    let mut buffer = executor.write_buffers.borrow_mut().pop().unwrap_or_default();
    buffer.resize((size.min(CHUNK_BYTES as u64)) as usize, 0);
    let copied = copy_payload(stream, &plain, &mut buffer, block_id, size, temp, received).await;
    {
        let mut kept = executor.write_buffers.borrow_mut();
        if kept.len() < WRITE_BUFFERS_KEPT {
            kept.push(buffer);
        }
    }
    let crc = copied?;
    if crc != request.crc.get() {
        return Err(Refusal::CrcMismatch { block_id, expected: request.crc.get(), actual: crc }.into());
    }
    file.fdatasync().await.map_err(storage("syncing", temp))?;
    file.close().await.map_err(storage("closing", temp))?;
    Ok(())
}

/// Chunk buffers one executor keeps between block writes: one per
/// connection writing at once, up to this many (1 MiB each).
const WRITE_BUFFERS_KEPT: usize = 8;

/// Reads `size` payload bytes from `stream` through `buffer` into `file`'s
/// page cache, chunk by chunk; returns their CRC32C.
async fn copy_payload(
    stream: &mut Stream,
    file: &std::fs::File,
    buffer: &mut [u8],
    block_id: BlockId,
    size: u64,
    temp: &Path,
    received: &mut u64,
) -> Result<u32, ConnectionEnd> {
    let mut crc = 0u32;
    let mut position = 0u64;
    while position < size {
        let length = (size - position).min(CHUNK_BYTES as u64) as usize;
        let chunk = &mut buffer[..length];
        stream.read_exact(chunk).await.map_err(|e| read_failure(e, Refusal::TruncatedPayload(block_id)))?;
        *received += length as u64;
        crc = crc32c_append(crc, chunk);
        // Into the page cache: a copy, on this thread (no disk wait).
        std::os::unix::fs::FileExt::write_all_at(file, chunk, position).map_err(storage("writing", temp))?;
        start_writeback(file, position, length);
        position += length as u64;
    }
    Ok(crc)
}

/// Gives a new block file its whole `size` up front (`fallocate(2)`, mode
/// 0: the file's size becomes `size`, its extents unwritten until the
/// chunks land), so the chunks' copies into the page cache do no
/// delayed-allocation work per 4 KiB page (ext4's reservation, extent
/// status and quota calls were ~18 % of blockd's CPU in a put), the block
/// gets one contiguous extent however many blocks are written at once,
/// and a full disk is answered before any payload is copied. A filesystem
/// without `fallocate` (`EOPNOTSUPP`) just allocates as it writes.
/// Durability is untouched: the `fdatasync` after the payload writes the
/// extents' conversion to written with the data, as it writes delayed
/// allocations.
fn allocate(file: &std::fs::File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    let length = libc::off_t::try_from(size).map_err(io::Error::other)?;
    // SAFETY: a plain system call on a descriptor `file` keeps open.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(error),
    }
}

/// Starts the disk write of `length` bytes at `position`, just copied into
/// `file`'s page cache (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: it
/// queues the pages' writeback and returns without waiting for it), so a
/// block's bytes reach the disk while its next chunks arrive instead of
/// all at once in the final `fdatasync`. The pages stay in the page cache
/// (they are clean once written). The call does not wait for the disk,
/// but like `pwrite` it can block the executor while the block layer
/// throttles writeback: in a 1 GiB put of 16 MiB blocks its 1 536 calls
/// took 1.08 s in all across six services (median 0.05 ms, p99 14 ms,
/// longest 20 ms). Moving them to a thread of each executor's own was a
/// tie on the put (session 19), so they stay here. A failure here is not
/// reported: the `fdatasync` that follows writes whatever is left and
/// reports any I/O error, and it alone decides whether the block is
/// durable.
fn start_writeback(file: &std::fs::File, position: u64, length: usize) {
    let (Ok(offset), Ok(length)) = (libc::off_t::try_from(position), libc::off_t::try_from(length)) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor `file` keeps open.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset, length, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Moves a durable temporary file to its block's name, never replacing an
/// existing block, and makes the new name durable.
async fn publish(executor: &Executor, request: &WriteReq, temp: &Path) -> Result<(), ConnectionEnd> {
    let block_id = request.block_id;
    let target = executor.shared.layout.block_path(block_id);
    let (from, to) = (temp.to_path_buf(), target.clone());
    let renamed = glommio::executor()
        .spawn_blocking(move || rename_no_replace(&from, &to))
        .await
        .map_err(storage("renaming to", &target))?;
    if renamed {
        executor.sync_block_dir(block_id).await?;
        executor.shared.counters.block_added(u64::from(request.size.get()));
        return Ok(());
    }
    // The block exists: a retry of a write that succeeded is answered again,
    // anything else is refused. The stored block is never touched.
    let stored = read_block(&target, |_| Ok(())).await?;
    discard(temp).await;
    match stored {
        Some((size, crc)) if existing_block_matches(size, crc, request) => {
            // The earlier write may not have synced the folder yet.
            executor.sync_block_dir(block_id).await
        }
        Some(_) => Err(Refusal::Conflict(block_id).into()),
        // Erased between the rename and the read: refuse, the client retries.
        None => Err(Refusal::Conflict(block_id).into()),
    }
}

/// `rename(from, to)` unless `to` exists: `Ok(false)` then.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    let (c_from, c_to) = (c_path(from)?, c_path(to)?);
    // SAFETY: two valid C strings; no memory is shared with the kernel after the call.
    let result = unsafe {
        libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if result == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        // A filesystem without RENAME_NOREPLACE: link is exclusive too.
        Some(libc::EINVAL) => match std::fs::hard_link(from, to) {
            Ok(()) => std::fs::remove_file(from).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        _ => Err(error),
    }
}

/// Removes a temporary file; failures are only logged (start-up removes
/// whatever is left).
async fn discard(temp: &Path) {
    match glommio::io::remove(temp).await {
        Ok(()) => {}
        Err(e) => {
            let e = io::Error::from(e);
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %temp.display(), error = %e, "cannot remove a temporary file");
            }
        }
    }
}

/// A stored block read in chunks, one chunk ahead of its consumer.
struct BlockReader {
    file: Rc<BufferedFile>,
    path: PathBuf,
    size: u64,
    position: u64,
    ahead: Option<JoinHandle<glommio::Result<ReadResult, ()>>>,
}

impl BlockReader {
    /// `None` when the block does not exist.
    async fn open(path: &Path) -> Result<Option<Self>, ConnectionEnd> {
        let file = match BufferedFile::open(path).await {
            Ok(file) => file,
            Err(e) => {
                let e = io::Error::from(e);
                if e.kind() == io::ErrorKind::NotFound {
                    return Ok(None);
                }
                return Err(storage("opening", path)(e));
            }
        };
        let size = file.file_size().await.map_err(storage("reading the size of", path))?;
        let mut reader = Self { file: Rc::new(file), path: path.to_path_buf(), size, position: 0, ahead: None };
        reader.read_ahead();
        Ok(Some(reader))
    }

    fn read_ahead(&mut self) {
        if self.position < self.size {
            let file = self.file.clone();
            let (at, length) = (self.position, (self.size - self.position).min(CHUNK_BYTES as u64) as usize);
            self.ahead = Some(glommio::spawn_local(async move { file.read_at(at, length).await }).detach());
        }
    }

    /// The next chunk, `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<ReadResult>, ConnectionEnd> {
        let Some(read) = self.ahead.take() else { return Ok(None) };
        let chunk = match read.await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(storage("reading", &self.path)(e)),
            None => return Err(storage("reading", &self.path)(io::Error::other("read task cancelled"))),
        };
        if chunk.is_empty() {
            return Err(storage("reading", &self.path)(io::Error::other("block shorter than its size")));
        }
        self.position += chunk.len() as u64;
        self.read_ahead();
        Ok(Some(chunk))
    }
}

/// Reads a whole block, handing each chunk to `each`; its size and CRC, or
/// `None` when it does not exist.
async fn read_block(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), ConnectionEnd>,
) -> Result<Option<(u64, u32)>, ConnectionEnd> {
    let Some(mut reader) = BlockReader::open(path).await? else { return Ok(None) };
    let mut crc = 0u32;
    while let Some(chunk) = reader.next_chunk().await? {
        crc = crc32c_append(crc, &chunk);
        each(&chunk)?;
    }
    Ok(Some((reader.size, crc)))
}

async fn fetch(executor: &Executor, stream: &mut Stream, request: &FetchReq) -> Result<(), ConnectionEnd> {
    let block_id = request.block_id;
    let path = executor.shared.layout.block_path(block_id);
    let not_found = |e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            return ConnectionEnd::from(Refusal::NotFound(block_id));
        }
        storage("opening", &path)(e)
    };
    let file = match open_cached(&path) {
        Ok(Some(file)) => FetchFile::Cached(file),
        Ok(None) => FetchFile::Glommio(BufferedFile::open(&path).await.map_err(|e| not_found(e.into()))?),
        Err(e) => return Err(not_found(e)),
    };
    let fd = file.as_raw_fd();
    // The io_uring open let the executor's other connections run while it
    // was in flight; without this turn, four concurrent cats (several
    // fetches queued per executor) read 0.87–0.96× as fast as with
    // glommio's open, with it 1.07–1.22× (paired, session 17).
    future::yield_now().await;
    let size = file_size(fd).map_err(storage("reading the size of", &path))?;
    let size = u32::try_from(size).map_err(|_| Refusal::StoredTooLarge(block_id))?;
    send_head(stream, FetchRespHead::new(size).as_bytes(), size > 0).await?;
    send_file(executor, stream, fd, u64::from(size), &path).await?;
    if let FetchFile::Glommio(file) = file {
        let _ = file.close().await;
    }
    executor.shared.counters.fetched(u64::from(size));
    Ok(())
}

/// A fetch's block file: opened on the executor's thread when its path is
/// in the kernel's caches ([`open_cached`]), else by glommio.
enum FetchFile {
    Cached(OwnedFd),
    Glommio(BufferedFile),
}

impl FetchFile {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Cached(file) => file.as_raw_fd(),
            Self::Glommio(file) => file.as_raw_fd(),
        }
    }
}

/// Opens `path` read-only with `openat2(RESOLVE_CACHED)`: only when every
/// component of the path is in the kernel's dentry cache, so the call never
/// waits for the disk and is fine on the executor's thread; `None` when it
/// would have to (the caller then opens through glommio's io_uring). A
/// fetch used to open, `statx` twice (glommio's open asks for the inode,
/// then the size) and close through io_uring: four submissions and two
/// trips through io_uring's worker threads (`statx` always goes there),
/// each a wake-up of a worker and of the executor, for every block sent.
fn open_cached(path: &Path) -> io::Result<Option<OwnedFd>> {
    let name = c_path(path)?;
    // SAFETY: open_how is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    loop {
        // SAFETY: `name` is a valid C string and `how` a valid open_how of
        // the size passed; the descriptor returned is ours alone.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, name.as_ptr(), &raw const how, size_of::<libc::open_how>())
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }));
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Not all in the caches, or a kernel without openat2/RESOLVE_CACHED.
            Some(libc::EAGAIN | libc::ENOSYS | libc::EINVAL | libc::E2BIG) => return Ok(None),
            _ => return Err(error),
        }
    }
}

/// The size of the open file `fd` (`fstat`: the inode is in memory while
/// the file is open, so this never waits for the disk).
fn file_size(fd: RawFd) -> io::Result<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `stat` has room for one struct stat; `fd` is open.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

/// Sends a fetch answer's head. When the block follows (`more`), the head
/// goes with `MSG_MORE`, so the kernel holds it for the block's first
/// segment instead of sending (TCP_NODELAY) a 5-byte segment of its own:
/// one packet, and one wake-up of the client, fewer per fetch. A full
/// socket (rare: the head is the first thing of an answer) falls back to
/// the ordinary write, which waits for room.
async fn send_head(stream: &mut Stream, head: &[u8], more: bool) -> Result<(), ConnectionEnd> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: `head` is valid for its length; the socket is open.
    let sent = unsafe { libc::send(stream.as_raw_fd(), head.as_ptr().cast(), head.len(), flags) };
    let sent = usize::try_from(sent).unwrap_or(0);
    if sent < head.len() {
        stream.write_all(&head[sent..]).await?;
    }
    Ok(())
}

/// Whether the block's first and last pages are in the page cache: a
/// one-byte `preadv2(RWF_NOWAIT)` at each end, which fails with `EAGAIN`
/// instead of reading the disk. A cached block then skips
/// `POSIX_FADV_WILLNEED`, which looks up every page of the block (2–3 % of
/// blockd's samples with 16 connections fetching cached blocks).
fn cached(file: RawFd, size: u64) -> bool {
    let mut byte = 0u8;
    [0, size.saturating_sub(1)].into_iter().all(|offset| {
        let vector = libc::iovec { iov_base: (&raw mut byte).cast(), iov_len: 1 };
        // SAFETY: one iovec over one writable byte; the file is open.
        unsafe { libc::preadv2(file, &vector, 1, offset as libc::off_t, libc::RWF_NOWAIT) == 1 }
    })
}

/// Asks the kernel to read the block into the page cache unless it is
/// there already (see [`cached`]).
fn will_need(file: RawFd, size: u64) {
    if size > 0 && !cached(file, size) {
        // SAFETY: plain advisory call on a descriptor we hold open.
        unsafe { libc::posix_fadvise(file, 0, size as libc::off_t, libc::POSIX_FADV_WILLNEED) };
    }
}

/// Capacity asked of a fetch pipe (`F_SETPIPE_SZ`; the kernel's
/// default `pipe-max-size` allows it). `sendfile(2)` splices through a
/// pipe of the default 64 KiB, so each of its rounds hands the socket at
/// most 64 KiB; a 1 MiB pipe hands it up to 1 MiB per call.
const PIPE_BYTES: usize = 1 << 20;

/// Empty fetch pipes one executor keeps between fetches (each holds no
/// pages while empty, only its ring and two descriptors).
const PIPES_KEPT: usize = 16;

/// A pipe's two ends, closed on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on a descriptor we own. A refusal (a lower
        // pipe-max-size, or the user over pipe-user-pages-soft with many
        // fetches in flight) leaves the pipe smaller, which F_GETPIPE_SZ
        // reports: slower, still correct.
        let capacity = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES as libc::c_int);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(capacity).unwrap_or(0).max(4096);
        Ok(Self { read, write, capacity })
    }
}

/// Sends `size` bytes of the file `file` on `stream` from the page cache,
/// with no copy through user space: `splice(2)` file → a pipe
/// ([`PIPE_BYTES`], reused from the executor's [`PIPES_KEPT`]) → socket.
///
/// The socket is non-blocking (see [`serve_connection`]), so a splice never
/// blocks the executor on a slow client: when the socket is full it says
/// so, and the next [`BOUNCE_BYTES`] in the pipe are read out and go
/// through an ordinary write, which waits (under the stall timeout) for
/// room like any other. The file is asked into the page cache first
/// (`POSIX_FADV_WILLNEED`), so a block read for the first time is mostly
/// being read by the kernel while the first chunks are sent.
async fn send_file(
    executor: &Executor,
    stream: &mut Stream,
    file: RawFd,
    size: u64,
    path: &Path,
) -> Result<(), ConnectionEnd> {
    let socket = stream.as_raw_fd();
    will_need(file, size);
    let kept = executor.pipes.borrow_mut().pop();
    let pipe = match kept.map_or_else(Pipe::new, Ok) {
        Ok(pipe) => pipe,
        // Out of descriptors (each fetch in flight needs two more for its
        // pipe): send as before, through the kernel's own pipe.
        Err(error) => {
            tracing::debug!(%error, "no pipe for a fetch; using sendfile");
            return send_file_direct(stream, file, size, path).await;
        }
    };
    let mut offset: libc::loff_t = 0;
    let mut in_pipe = 0usize;
    let mut bounce: Vec<u8> = Vec::new();
    while (offset as u64) < size || in_pipe > 0 {
        if in_pipe == 0 {
            let want = ((size - offset as u64) as usize).min(pipe.capacity);
            // SAFETY: both descriptors are open; `offset` is a valid, exclusive pointer.
            let moved = unsafe {
                libc::splice(
                    file,
                    &mut offset,
                    pipe.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    want,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            if moved == 0 {
                return Err(storage("reading", path)(io::Error::other("block shorter than its size")));
            }
            if moved < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(storage("reading", path)(error));
            }
            in_pipe = moved as usize;
        }
        // SAFETY: both descriptors are open; no offsets (a pipe and a socket).
        let sent = unsafe {
            libc::splice(
                pipe.read.as_raw_fd(),
                std::ptr::null_mut(),
                socket,
                std::ptr::null_mut(),
                in_pipe,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if sent > 0 {
            in_pipe -= sent as usize;
            continue;
        }
        let error = if sent == 0 { io::Error::from(io::ErrorKind::WriteZero) } else { io::Error::last_os_error() };
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                let length = in_pipe.min(BOUNCE_BYTES);
                bounce.resize(length, 0);
                // SAFETY: `bounce` holds `length` writable bytes; the pipe
                // holds at least `length` bytes, so this read does not wait.
                let read = unsafe { libc::read(pipe.read.as_raw_fd(), bounce.as_mut_ptr().cast(), length) };
                if read <= 0 {
                    let error =
                        if read == 0 { io::Error::other("pipe ended early") } else { io::Error::last_os_error() };
                    return Err(ConnectionEnd::Socket(error));
                }
                stream.write_all(&bounce[..read as usize]).await?;
                in_pipe -= read as usize;
            }
            _ => return Err(ConnectionEnd::Socket(error)),
        }
    }
    // Empty now (a failed fetch drops its pipe with whatever it held).
    let mut pipes = executor.pipes.borrow_mut();
    if pipes.len() < PIPES_KEPT {
        pipes.push(pipe);
    }
    Ok(())
}

/// [`send_file`] with `sendfile(2)`, which splices through the kernel's
/// own 64 KiB pipe: the fallback when no pipe can be made (descriptors
/// exhausted). A full socket is handled as in [`send_file`], with the next
/// [`BOUNCE_BYTES`] read from the file.
async fn send_file_direct(stream: &mut Stream, file: RawFd, size: u64, path: &Path) -> Result<(), ConnectionEnd> {
    let socket = stream.as_raw_fd();
    will_need(file, size);
    let mut offset: libc::off_t = 0;
    let mut bounce: Vec<u8> = Vec::new();
    while (offset as u64) < size {
        let want = ((size - offset as u64) as usize).min(CHUNK_BYTES);
        // SAFETY: both descriptors are open; `offset` is a valid, exclusive pointer.
        let sent = unsafe { libc::sendfile(socket, file, &mut offset, want) };
        if sent > 0 {
            continue;
        }
        if sent == 0 {
            return Err(storage("reading", path)(io::Error::other("block shorter than its size")));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                let length = ((size - offset as u64) as usize).min(BOUNCE_BYTES);
                bounce.resize(length, 0);
                // SAFETY: `bounce` holds `length` writable bytes.
                let read = unsafe { libc::pread(file, bounce.as_mut_ptr().cast(), length, offset) };
                if read <= 0 {
                    let error = if read == 0 {
                        io::Error::other("block shorter than its size")
                    } else {
                        io::Error::last_os_error()
                    };
                    return Err(storage("reading", path)(error));
                }
                stream.write_all(&bounce[..read as usize]).await?;
                offset += read as libc::off_t;
            }
            _ => return Err(ConnectionEnd::Socket(error)),
        }
    }
    Ok(())
}

async fn crc(executor: &Executor, stream: &mut Stream, request: &CrcReq) -> Result<(), ConnectionEnd> {
    let block_id = request.block_id;
    let path = executor.shared.layout.block_path(block_id);
    let (size, crc) = read_block(&path, |_| Ok(())).await?.ok_or(Refusal::NotFound(block_id))?;
    let size = u32::try_from(size).map_err(|_| Refusal::StoredTooLarge(block_id))?;
    stream.write_all(CrcResp::new(size, crc).as_bytes()).await?;
    Ok(())
}

async fn erase(executor: &Executor, stream: &mut Stream, request: &EraseReq) -> Result<(), ConnectionEnd> {
    check_erase(request, &executor.shared.key)?;
    let block_id = request.block_id;
    let path = executor.shared.layout.block_path(block_id);
    let target = path.clone();
    let removed =
        glommio::executor().spawn_blocking(move || remove_block(&target)).await.map_err(storage("removing", &path))?;
    // Also when the block was already gone: an earlier erase may not have
    // synced the folder yet.
    executor.sync_block_dir(block_id).await?;
    if let Some(size) = removed {
        executor.shared.counters.block_removed(size);
        tracing::debug!(%block_id, size, "block erased");
    }
    stream.write_all(EraseResp::new(&executor.shared.key, block_id).as_bytes()).await?;
    Ok(())
}

/// Removes a block file; its size, or `None` when there was none.
fn remove_block(path: &Path) -> io::Result<Option<u64>> {
    let size = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match std::fs::remove_file(path) {
        Ok(()) => Ok(Some(size)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn stats(executor: &Executor, stream: &mut Stream, request: &StatsReq) -> Result<(), ConnectionEnd> {
    let root = executor.shared.layout.root();
    let (available_bytes, free_blocks) = free_space(root).map_err(storage("statvfs", root))?;
    let usage = executor.shared.counters.usage();
    let stats = wire::block::BlockServiceStats {
        used_bytes: usage.used_bytes,
        // Above the reserve, and 0 while full (`crate::space`).
        free_bytes: executor.shared.space.free_for_blocks(available_bytes),
        used_blocks: usage.used_blocks,
        free_blocks,
    };
    stream.write_all(StatsResp::new(&executor.shared.key, request.token, stats).as_bytes()).await?;
    Ok(())
}
