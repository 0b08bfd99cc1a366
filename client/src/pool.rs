//! Block service connections: a small pool per service address, with
//! requests pipelined on each connection.
//!
//! The block protocol answers the requests of one connection in order, so a
//! connection is two tasks: a *writer* that sends each request (and a
//! write's payload) as soon as it is queued, and a *reader* that takes the
//! answers in the same order. A fetch's bytes are read straight into the
//! buffer the caller handed over (a slice of its span buffer: no copy, no
//! zero-fill) while their CRC32C is computed, in cache, as they arrive.
//! The reader sleeps until [`RECEIVE_LOW_WATER_BYTES`] of its answer are
//! in the socket (`SO_RCVLOWAT`, never above what the answer has left),
//! not until each segment: a wake-up per MiB, not per 64 KiB.
//!
//! Failures are classified so the reader of a file can act on them
//! ([`FailureKind`]): a service that refuses connections or stops sending
//! for [`STALL_TIMEOUT`] is *down* (route around it); a request that was
//! only queued behind a failed one is *retried* on a new connection; a
//! request the service itself refused (block missing, wrong size) just
//! failed.
//!
//! Idle connections close themselves after [`IDLE_CLOSE`] (below blockd's
//! idle limit), so a pooled connection is rarely one the server already
//! dropped; when it is, the request comes back as a retry.
//!
//! A file read block by block fetches *in turn* instead
//! ([`TurnConnection`]): connections of the read's own, each with a thread
//! that receives the answers with blocking reads, every request sent well
//! ahead, and a [`Gate`] that hands each answer its buffer in the read's
//! order, only as far ahead of the output as the read allows.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use wire::block::{
    BlockErrorResp, EraseReq, EraseResp, FetchReq, FetchRespHead, TAG_ERASED, TAG_ERROR, TAG_FETCHED, TAG_WRITTEN,
    WriteReq, WriteResp,
};
use wire::crc::crc32c_append;
use wire::mac::Mac;
use wire::{BlockId, ErrorKind};
use zerocopy::{FromBytes, IntoBytes};

/// Time to connect to a block service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection with a request outstanding that moves no byte for this long
/// is dropped and its service treated as down by the read that saw it. Also
/// the bound on how long a hung service delays a read before parity is used.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(4);
/// A write waits this long for its proof after its last byte is sent
/// (blockd syncs the file and its folder first).
const WRITE_PROOF_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle connection closes itself after this long.
pub const IDLE_CLOSE: Duration = Duration::from_secs(10);
/// Connections kept per block service address. Two let a service with
/// several executors serve one client in parallel, and let a request that
/// follows a large one not wait behind it.
pub const CONNECTIONS_PER_SERVICE: usize = 2;
/// Unit of socket reads and writes of block bytes (256 KiB reads cost
/// 15 % more CPU per GiB read, 4 MiB no less: `perf/results/2026-11-27-profile.md`).
const IO_CHUNK_BYTES: usize = 1 << 20;

/// A pooled connection's reader asks the kernel to wake it only once this
/// many bytes of the answer it reads are in the socket (`SO_RCVLOWAT`,
/// lowered to what is left of the answer near its end), not for every
/// segment: on loopback each wake-up is a cross-core IPI in the sender's
/// softirq and a sleep and wake of the reader, for a 64 KiB segment.
/// Paired, a lone cat of 1 GiB (spans read whole over the pool): 256 KiB
/// against none read 1.32× faster (12 rounds, all won) with 0.82× the
/// client's CPU and 0.79× blockd's; 1 MiB (one read's [`IO_CHUNK_BYTES`])
/// against 256 KiB 1.08× (8 of 10 won), client CPU 0.93×; 2 MiB against
/// 1 MiB 0.96× (`perf/results/2026-11-29-s17-dp17.md`). Fetches in turn
/// ([`TurnConnection`]) keep their blocking reads without a mark: a
/// blocking `recv` under a mark waits for its whole length while the
/// kernel's wake-up counts only the bytes not yet taken (the end of a
/// connection's last answer waited for the stall bound), and `poll` plus
/// a non-blocking `recv` instead read a 256 MiB file 0.90× as fast.
pub const RECEIVE_LOW_WATER_BYTES: usize = 1 << 20;

/// Why an operation failed, for the caller's next move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Connection refused, connect timed out, or bytes stopped coming:
    /// avoid this service for the rest of the read.
    Down,
    /// The connection ended before this request was answered, through no
    /// fault of the request (queued behind a failed one, or a pooled
    /// connection the server had closed): try again on a new connection.
    Retry,
    /// The service answered this request wrongly or refused it.
    Failed,
}

/// A failed block operation.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
    /// The error the service answered (`wire::block::BlockErrorResp`),
    /// e.g. `NO_SPACE`; `None` when it answered nothing or something else.
    pub answered: Option<ErrorKind>,
}

impl Failure {
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self { kind, reason: reason.into(), answered: None }
    }
}

/// What an error answer's kind means to a user.
pub fn answered_words(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NoSpace => "no space left on device",
        ErrorKind::StorageError => "the block service's disk failed",
        _ => "the block service refused the request",
    }
}

/// What a request expects back.
enum Expect {
    /// `size` bytes into `dst` (empty, capacity ≥ size).
    Fetch {
        size: u32,
        dst: BytesMut,
    },
    Write {
        block_id: BlockId,
    },
    Erase {
        block_id: BlockId,
    },
}

/// The answer handed back to the caller.
pub enum Answer {
    /// The buffer (holding exactly the block) and the block's CRC32C.
    Fetched {
        data: BytesMut,
        crc: u32,
    },
    Proof(Mac),
}

/// A failed fetch gives its buffer back (cleared) for the next attempt.
pub type Reply = Result<Answer, (Failure, Option<BytesMut>)>;

struct Op {
    header: [u8; 32],
    header_len: usize,
    payload: Option<Bytes>,
    expect: Expect,
    reply: oneshot::Sender<Reply>,
}

impl Op {
    fn fail(self, failure: Failure) {
        let dst = match self.expect {
            Expect::Fetch { mut dst, .. } => {
                dst.clear();
                Some(dst)
            }
            _ => None,
        };
        let _ = self.reply.send(Err((failure, dst)));
    }
}

/// One pooled connection: the queue into its writer task.
struct Connection {
    ops: mpsc::UnboundedSender<Op>,
    /// Bytes requested and not yet answered (picks the least loaded).
    outstanding: Arc<AtomicU64>,
}

/// Connections to block services, shared by every operation of a process.
#[derive(Default)]
pub struct BlockPool {
    services: Mutex<HashMap<SocketAddr, Vec<Arc<Connection>>>>,
    /// Held while a connection to the address is being opened, so that a
    /// burst of first requests opens a few connections, not one each.
    opening: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

/// The process's pool.
pub fn pool() -> &'static BlockPool {
    static POOL: OnceLock<BlockPool> = OnceLock::new();
    POOL.get_or_init(BlockPool::default)
}

impl BlockPool {
    /// A live connection to `addr`: the least loaded pooled one, or a new
    /// one while fewer than [`CONNECTIONS_PER_SERVICE`] are busy, or (with
    /// `fresh`) always a new one.
    async fn connection(&self, addr: SocketAddr, fresh: bool) -> Result<Arc<Connection>, Failure> {
        if !fresh && let Some(pooled) = self.pooled(addr) {
            return Ok(pooled);
        }
        let opening =
            self.opening.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).entry(addr).or_default().clone();
        let _opening = opening.lock().await;
        // Another request may have opened one meanwhile.
        if !fresh && let Some(pooled) = self.pooled(addr) {
            return Ok(pooled);
        }
        let connection = Arc::new(open(addr).await?);
        let mut services = self.services.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = services.entry(addr).or_default();
        list.retain(|connection| !connection.ops.is_closed());
        list.push(connection.clone());
        if list.len() > CONNECTIONS_PER_SERVICE {
            // Forget the oldest: it finishes what it has and then idles out.
            list.remove(0);
        }
        Ok(connection)
    }

    /// The least loaded pooled connection to `addr`, if it is idle or no
    /// more may be opened.
    fn pooled(&self, addr: SocketAddr) -> Option<Arc<Connection>> {
        let mut services = self.services.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = services.entry(addr).or_default();
        list.retain(|connection| !connection.ops.is_closed());
        let best = list.iter().min_by_key(|connection| connection.outstanding.load(Ordering::Relaxed)).cloned()?;
        (best.outstanding.load(Ordering::Relaxed) == 0 || list.len() >= CONNECTIONS_PER_SERVICE).then_some(best)
    }

    /// Sends `op` on a pooled connection and waits for its answer; a
    /// [`FailureKind::Retry`] is tried once more on a new connection.
    async fn run(&self, addr: SocketAddr, make: impl Fn(Option<BytesMut>) -> (Op, oneshot::Receiver<Reply>)) -> Reply {
        let mut dst = None;
        for attempt in 0..2 {
            let connection = match self.connection(addr, attempt > 0).await {
                Ok(connection) => connection,
                Err(failure) => return Err((failure, dst)),
            };
            let (op, receiver) = make(dst.take());
            let cost = op_cost(&op);
            connection.outstanding.fetch_add(cost, Ordering::Relaxed);
            if let Err(refused) = connection.ops.send(op) {
                connection.outstanding.fetch_sub(cost, Ordering::Relaxed);
                let op = refused.0;
                dst = match op.expect {
                    Expect::Fetch { dst, .. } => Some(dst),
                    _ => None,
                };
                continue;
            }
            let reply = receiver.await;
            connection.outstanding.fetch_sub(cost, Ordering::Relaxed);
            match reply {
                Ok(Err((failure, back))) if failure.kind == FailureKind::Retry && attempt == 0 => dst = back,
                Ok(reply) => return reply,
                // The connection's tasks are gone (their runtime ended).
                Err(_) if attempt == 0 => {}
                Err(_) => return Err((Failure::new(FailureKind::Retry, "connection lost"), None)),
            }
        }
        Err((Failure::new(FailureKind::Retry, "connection lost twice"), dst))
    }

    /// Fetches block `block_id` (`size` bytes) into `dst` (cleared; its
    /// capacity is grown if short). Returns the filled buffer and the CRC.
    pub async fn fetch(&self, addr: SocketAddr, block_id: BlockId, size: u32, dst: BytesMut) -> Reply {
        let first = Mutex::new(Some(dst));
        let reply = self
            .run(addr, |back| {
                let mut dst = back
                    .or_else(|| first.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take())
                    .unwrap_or_default();
                dst.clear();
                dst.reserve(size as usize);
                let (reply, receiver) = oneshot::channel();
                let mut op =
                    Op { header: [0; 32], header_len: 0, payload: None, expect: Expect::Fetch { size, dst }, reply };
                set_header(&mut op, FetchReq::new(block_id).as_bytes());
                (op, receiver)
            })
            .await;
        match reply {
            // No connection was made, so the buffer was never queued: it
            // goes back to the caller (a slice of its span buffer, which
            // must stay in one piece), not dropped.
            Err((failure, None)) => {
                let unsent = first.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
                Err((
                    failure,
                    unsent.map(|mut dst| {
                        dst.clear();
                        dst
                    }),
                ))
            }
            reply => reply,
        }
    }

    /// Writes `data` as block `block_id`; returns the write proof.
    pub async fn write(
        &self,
        addr: SocketAddr,
        block_id: BlockId,
        crc: u32,
        certificate: Mac,
        data: Bytes,
    ) -> Result<Mac, Failure> {
        let size = u32::try_from(data.len()).map_err(|_| Failure::new(FailureKind::Failed, "block too large"))?;
        let reply = self
            .run(addr, |_| {
                let (reply, receiver) = oneshot::channel();
                let mut op = Op {
                    header: [0; 32],
                    header_len: 0,
                    payload: Some(data.clone()),
                    expect: Expect::Write { block_id },
                    reply,
                };
                set_header(&mut op, WriteReq::with_certificate(block_id, crc, size, certificate).as_bytes());
                (op, receiver)
            })
            .await;
        match reply {
            Ok(Answer::Proof(proof)) => Ok(proof),
            Ok(Answer::Fetched { .. }) => Err(Failure::new(FailureKind::Failed, "answer of another kind")),
            Err((failure, _)) => Err(failure),
        }
    }

    /// Erases block `block_id` with its certificate; returns the proof.
    pub async fn erase(&self, addr: SocketAddr, block_id: BlockId, certificate: Mac) -> Result<Mac, Failure> {
        let reply = self
            .run(addr, |_| {
                let (reply, receiver) = oneshot::channel();
                let mut op =
                    Op { header: [0; 32], header_len: 0, payload: None, expect: Expect::Erase { block_id }, reply };
                set_header(&mut op, EraseReq::with_certificate(block_id, certificate).as_bytes());
                (op, receiver)
            })
            .await;
        match reply {
            Ok(Answer::Proof(proof)) => Ok(proof),
            Ok(Answer::Fetched { .. }) => Err(Failure::new(FailureKind::Failed, "answer of another kind")),
            Err((failure, _)) => Err(failure),
        }
    }
}

/// The buffers of one read's fetches in turn ([`TurnConnection`]),
/// handed out in the read's order: place `seq` gets one once the read has
/// allowed it ([`Gate::allow`]), so the read holds only as many block
/// buffers as it allows (fresh memory, which the kernel zeroes on first
/// touch), while its requests go out further ahead and their bytes wait
/// in the services' sockets.
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    /// Bytes of fresh buffers made.
    made: AtomicU64,
    /// A connection of the read failed ([`Gate::broken`]).
    broken: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct GateState {
    /// Places below this may take a buffer.
    allowed: u64,
    closed: bool,
    free: Vec<BytesMut>,
    /// Threads waiting for their place to be allowed: each is woken alone
    /// (not every waiter on every step).
    waiting: Vec<(u64, std::thread::Thread)>,
}

impl Gate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A buffer of at least `size` bytes for place `seq` now, if the gate
    /// allows that place (`Some(None)` once the gate is closed); `None`
    /// when the place has to wait.
    fn take_now(&self, seq: u64, size: usize) -> Option<Option<BytesMut>> {
        let mut state = self.state();
        if state.closed {
            return Some(None);
        }
        if seq >= state.allowed {
            return None;
        }
        let reused =
            state.free.iter().position(|buffer| buffer.capacity() >= size).map(|at| state.free.swap_remove(at));
        drop(state);
        Some(Some(reused.unwrap_or_else(|| {
            self.made.fetch_add(size as u64, Ordering::Relaxed);
            crate::read::span_buffer(size)
        })))
    }

    /// A buffer of at least `size` bytes for place `seq`, once allowed
    /// (the calling thread sleeps until then); `None` once the gate is
    /// closed (the read was given up).
    pub fn take_blocking(&self, seq: u64, size: usize) -> Option<BytesMut> {
        loop {
            if let Some(taken) = self.take_now(seq, size) {
                return taken;
            }
            {
                let mut state = self.state();
                // Allowed or closed since `take_now` looked: look again.
                if state.closed || seq < state.allowed {
                    continue;
                }
                state.waiting.push((seq, std::thread::current()));
            }
            // Woken by `allow` or `close` (or spuriously: checked again).
            std::thread::park();
        }
    }

    /// [`Gate::take_blocking`] for a task: at once when the place is
    /// allowed (a block of a file read over the pool usually is), else the
    /// wait is on a blocking thread.
    pub async fn take(self: &Arc<Self>, seq: u64, size: usize) -> Option<BytesMut> {
        if let Some(taken) = self.take_now(seq, size) {
            return taken;
        }
        let gate = self.clone();
        tokio::task::spawn_blocking(move || gate.take_blocking(seq, size)).await.ok().flatten()
    }

    /// Takes `buffer` back for a later place.
    pub fn give_back(&self, mut buffer: BytesMut) {
        if buffer.capacity() == 0 {
            return;
        }
        buffer.clear();
        self.state().free.push(buffer);
    }

    /// Places below `through` may take a buffer.
    pub fn allow(&self, through: u64) {
        let mut state = self.state();
        if through <= state.allowed {
            return;
        }
        state.allowed = through;
        let mut index = 0;
        while index < state.waiting.len() {
            if state.waiting[index].0 < through {
                let (_, thread) = state.waiting.swap_remove(index);
                thread.unpark();
            } else {
                index += 1;
            }
        }
    }

    /// No place gets a buffer any more: the fetches waiting fail.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        for (_, thread) in state.waiting.drain(..) {
            thread.unpark();
        }
    }

    /// Bytes of fresh buffers made so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// True once one of the read's [`TurnConnection`]s failed (until
    /// [`Gate::mend`]): the read should request nothing more in turn
    /// until its blocks in flight are through, rather than send more
    /// requests ahead that it may have to give up.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// The read has dealt with its failed connections.
    pub fn mend(&self) {
        self.broken.store(false, Ordering::Release);
    }
}

/// One read's connection to one block service for its fetches *in turn*:
/// every request goes out as soon as it is queued ([`TurnConnection::fetch`],
/// from the read's task), and a thread of the connection's own receives
/// the answers in order with blocking reads, each into a buffer the read's
/// [`Gate`] hands out when that answer is next (what the floor reader of
/// `perf/examples/cat_floor.rs` does: no task wake-up, readiness poll or
/// timer per read). A connection's fetches are queued in the read's
/// order, so the lowest place not yet written out is always at the head
/// of its connection and the gate cannot hold it up. No stall goes
/// unnoticed: a read that gets no byte for [`STALL_TIMEOUT`] fails the
/// connection as down.
pub struct TurnConnection {
    /// For the requests (the thread has its own handle, for the answers).
    stream: std::net::TcpStream,
    ops: std::sync::mpsc::Sender<TurnOp>,
    /// Cleared when the connection's thread ends.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

struct TurnOp {
    size: u32,
    seq: u64,
    reply: oneshot::Sender<Reply>,
}

impl TurnConnection {
    /// Connects to `addr` and starts the connection's thread.
    pub async fn open(addr: SocketAddr, gate: Arc<Gate>) -> Result<Self, Failure> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Err(_) => return Err(Failure::new(FailureKind::Down, "connect timed out")),
            Ok(Err(error)) => return Err(Failure::new(FailureKind::Down, format!("connect: {error}"))),
            Ok(Ok(stream)) => stream,
        };
        let set_up = |stream: TcpStream| -> io::Result<(std::net::TcpStream, std::net::TcpStream)> {
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(STALL_TIMEOUT))?;
            stream.set_write_timeout(Some(STALL_TIMEOUT))?;
            let reader = stream.try_clone()?;
            Ok((stream, reader))
        };
        let (stream, reader) =
            set_up(stream).map_err(|error| Failure::new(FailureKind::Failed, format!("socket: {error}")))?;
        let (ops, queue) = std::sync::mpsc::channel();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        std::thread::Builder::new()
            .name("eggs-fetch".into())
            .spawn({
                let alive = alive.clone();
                move || {
                    turn_reader(reader, queue, &gate);
                    alive.store(false, Ordering::Release);
                }
            })
            .map_err(|error| Failure::new(FailureKind::Failed, format!("fetch thread: {error}")))?;
        Ok(Self { stream, ops, alive })
    }

    /// False once the connection's thread has ended (the connection failed,
    /// or its read was given up).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Sends the fetch of block `block_id` (`size` bytes), place `seq` of
    /// the read, at once; its answer comes on the receiver.
    pub fn fetch(&mut self, block_id: BlockId, size: u32, seq: u64) -> oneshot::Receiver<Reply> {
        let (reply, receiver) = oneshot::channel();
        // Queued for the thread before the request goes out, so answers
        // and requests stay in the same order.
        if let Err(refused) = self.ops.send(TurnOp { size, seq, reply }) {
            let _ = refused.0.reply.send(Err((Failure::new(FailureKind::Retry, "connection closed"), None)));
            return receiver;
        }
        if std::io::Write::write_all(&mut self.stream, FetchReq::new(block_id).as_bytes()).is_err() {
            // The thread sees the end of the connection and fails what is queued.
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        receiver
    }
}

impl Drop for TurnConnection {
    fn drop(&mut self) {
        // Unblocks the thread if it still waits for bytes of a fetch nobody
        // wants any more; once its queue is empty it ends anyway.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The thread of a [`TurnConnection`]: takes the answers in order. On the
/// first failure the connection is done: the fetch at the head fails, the
/// ones behind it are retried (or down, after a stall).
fn turn_reader(mut stream: std::net::TcpStream, queue: std::sync::mpsc::Receiver<TurnOp>, gate: &Gate) {
    let mut behind = FailureKind::Retry;
    while let Ok(op) = queue.recv() {
        match turn_answer(&mut stream, gate, op.seq, op.size) {
            Ok(answer) => {
                let _ = op.reply.send(Ok(answer));
            }
            Err((failure, dst)) => {
                if failure.kind == FailureKind::Down {
                    behind = FailureKind::Down;
                }
                gate.broken.store(true, Ordering::Release);
                let _ = op.reply.send(Err((failure, dst)));
                break;
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    while let Ok(op) = queue.try_recv() {
        let _ = op.reply.send(Err((Failure::new(behind, "an earlier request on the connection failed"), None)));
    }
}

/// Reads one fetch answer with blocking reads (the socket's read timeout
/// is [`STALL_TIMEOUT`]) into a buffer from `gate` for place `seq`.
fn turn_answer(
    stream: &mut std::net::TcpStream,
    gate: &Gate,
    seq: u64,
    size: u32,
) -> Result<Answer, (Failure, Option<BytesMut>)> {
    let Some(mut dst) = gate.take_blocking(seq, size as usize) else {
        return Err((Failure::new(FailureKind::Failed, "the read was given up"), None));
    };
    let stalled = |error: &io::Error| matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
    let mut head = [0u8; size_of::<FetchRespHead>()];
    let mut filled = 0;
    while filled < head.len() {
        match std::io::Read::read(stream, &mut head[filled..]) {
            Ok(0) => {
                let error = io::Error::from(io::ErrorKind::UnexpectedEof);
                return Err((no_answer(filled > 0, error, "fetch"), Some(dst)));
            }
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if stalled(&error) => {
                let error = io::Error::new(io::ErrorKind::TimedOut, "stalled");
                return Err((no_answer(filled > 0, error, "fetch"), Some(dst)));
            }
            Err(error) => return Err((no_answer(filled > 0, error, "fetch"), Some(dst))),
        }
    }
    if let Err(failure) = check_fetch_head(&head, size) {
        return Err((failure, Some(dst)));
    }
    let size = size as usize;
    dst.clear();
    dst.reserve(size);
    let mut crc = 0u32;
    while dst.len() < size {
        let before = dst.len();
        let want = (size - before).min(IO_CHUNK_BYTES);
        let spare = &mut dst.spare_capacity_mut()[..want];
        // SAFETY: `spare` is writable memory of `want` bytes owned by
        // `dst`; recv writes at most that many and says how many.
        let read = unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(stream), spare.as_mut_ptr().cast(), want, 0) };
        if read < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let reason = if stalled(&error) {
                Failure::new(FailureKind::Down, format!("fetch stalled after {before} of {size} bytes"))
            } else if error.kind() == io::ErrorKind::ConnectionReset {
                // The service's own stall bound, as below, when it closed
                // the connection with requests still unread in it (the
                // kernel then resets it): worth one more try too.
                Failure::new(FailureKind::Retry, format!("connection reset after {before} of {size} bytes"))
            } else {
                Failure::new(FailureKind::Failed, format!("fetch: {error}"))
            };
            return Err((reason, Some(dst)));
        }
        if read == 0 {
            // Most likely the service's own stall bound: its answer waited
            // in the socket while the read's output caught up. Worth one
            // more try (the caller's), not parity.
            let reason = format!("connection closed after {before} of {size} bytes");
            return Err((Failure::new(FailureKind::Retry, reason), Some(dst)));
        }
        // SAFETY: recv initialised `read` more bytes after the current end.
        unsafe { dst.set_len(before + read as usize) };
        crc = crc32c_append(crc, &dst[before..]);
    }
    Ok(Answer::Fetched { data: dst, crc })
}

fn set_header(op: &mut Op, bytes: &[u8]) {
    op.header_len = bytes.len().min(op.header.len());
    op.header[..op.header_len].copy_from_slice(&bytes[..op.header_len]);
}

fn op_cost(op: &Op) -> u64 {
    match &op.expect {
        Expect::Fetch { size, .. } => u64::from(*size) + 1,
        _ => op.payload.as_ref().map_or(1, |payload| payload.len() as u64 + 1),
    }
}

/// Connects and starts the connection's writer and reader tasks.
async fn open(addr: SocketAddr) -> Result<Connection, Failure> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => return Err(Failure::new(FailureKind::Down, "connect timed out")),
        Ok(Err(error)) => return Err(Failure::new(FailureKind::Down, format!("connect: {error}"))),
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let (ops, queue) = mpsc::unbounded_channel();
    let (sent, answers) = mpsc::unbounded_channel();
    tokio::spawn(writer(write, queue, sent));
    tokio::spawn(reader(read, answers));
    Ok(Connection { ops, outstanding: Arc::new(AtomicU64::new(0)) })
}

/// Sends each queued request, then hands it to the reader. Ends after
/// [`IDLE_CLOSE`] without requests, or when the socket or reader fails.
async fn writer(mut socket: OwnedWriteHalf, mut queue: mpsc::UnboundedReceiver<Op>, sent: mpsc::UnboundedSender<Op>) {
    loop {
        let op = match tokio::time::timeout(IDLE_CLOSE, queue.recv()).await {
            Ok(Some(op)) => op,
            Ok(None) => return,
            Err(_) => {
                // Idle: stop taking requests; those raced in are retried.
                queue.close();
                while let Ok(op) = queue.try_recv() {
                    op.fail(Failure::new(FailureKind::Retry, "connection idled out"));
                }
                return;
            }
        };
        let header = op.header;
        let header_len = op.header_len;
        let payload = op.payload.clone();
        // Queued for an answer before the request goes out, so answers and
        // requests stay in the same order.
        if let Err(refused) = sent.send(op) {
            refused.0.fail(Failure::new(FailureKind::Retry, "connection closed"));
            break;
        }
        if send(&mut socket, &header[..header_len], payload.as_deref()).await.is_err() {
            // The reader sees the end of the connection and fails what is queued.
            break;
        }
    }
    queue.close();
    while let Ok(op) = queue.try_recv() {
        op.fail(Failure::new(FailureKind::Retry, "connection closed"));
    }
}

async fn send(socket: &mut OwnedWriteHalf, header: &[u8], payload: Option<&[u8]>) -> io::Result<()> {
    let timed = |result: Result<io::Result<()>, tokio::time::error::Elapsed>| {
        result.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "send stalled")))
    };
    match payload {
        None => timed(tokio::time::timeout(STALL_TIMEOUT, socket.write_all(header)).await),
        Some(payload) => {
            timed(tokio::time::timeout(STALL_TIMEOUT, socket.write_all(header)).await)?;
            for chunk in payload.chunks(IO_CHUNK_BYTES) {
                timed(tokio::time::timeout(STALL_TIMEOUT, socket.write_all(chunk)).await)?;
            }
            Ok(())
        }
    }
}

/// Takes the answers in order. On the first failure the connection is
/// done: the request at the head fails, the ones behind it are retried.
async fn reader(mut socket: OwnedReadHalf, mut answers: mpsc::UnboundedReceiver<Op>) {
    // A service that stalled is down for the requests behind too.
    let mut behind = FailureKind::Retry;
    let mut low_water = LowWater::new(std::os::fd::AsRawFd::as_raw_fd(socket.as_ref()));
    while let Some(mut op) = answers.recv().await {
        let expect = std::mem::replace(&mut op.expect, Expect::Write { block_id: BlockId::new(0) });
        match answer(&mut socket, &mut low_water, expect).await {
            Ok(answer) => {
                let _ = op.reply.send(Ok(answer));
            }
            Err((failure, dst)) => {
                if failure.kind == FailureKind::Down {
                    behind = FailureKind::Down;
                }
                let dst = dst.map(|mut dst| {
                    dst.clear();
                    dst
                });
                let _ = op.reply.send(Err((failure, dst)));
                break;
            }
        }
    }
    answers.close();
    while let Ok(op) = answers.try_recv() {
        op.fail(Failure::new(behind, "an earlier request on the connection failed"));
    }
}

/// A socket's receive low-water mark (`SO_RCVLOWAT`) as its reader last
/// set it: the reader is woken once that many bytes are in, so it must
/// never exceed the bytes the reader still expects of the answer it reads
/// (or it would sleep until [`STALL_TIMEOUT`]); [`LowWater::expect`] keeps
/// it at most that, and at most [`RECEIVE_LOW_WATER_BYTES`].
struct LowWater {
    fd: std::os::fd::RawFd,
    bytes: usize,
}

impl LowWater {
    fn new(fd: std::os::fd::RawFd) -> Self {
        Self { fd, bytes: 1 }
    }

    /// The reader waits next for part of `remaining` bytes: wake it once
    /// [`RECEIVE_LOW_WATER_BYTES`] of them (or all, if fewer) are in.
    fn expect(&mut self, remaining: usize) {
        self.set(remaining.clamp(1, RECEIVE_LOW_WATER_BYTES));
    }

    fn set(&mut self, bytes: usize) {
        if bytes == self.bytes {
            return;
        }
        // A refusal leaves the mark where it was: 1 (wake on every
        // segment) if it never took, else a value this reader checked.
        if set_receive_low_water(self.fd, bytes) {
            self.bytes = bytes;
        } else if self.bytes > bytes {
            // Never leave a mark above what is expected.
            self.bytes = 1;
            set_receive_low_water(self.fd, 1);
        }
    }

    /// The stall bound passed with the reader asleep: a stall only if no
    /// byte came at all. Bytes that came but stayed under the mark (a
    /// service trickling) are read, the mark back at one byte, and the
    /// bound starts again, as it did without the mark.
    fn stalled(&mut self) -> bool {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int; the socket is open.
        let asked = unsafe { libc::ioctl(self.fd, libc::FIONREAD, &raw mut queued) };
        if asked == 0 && queued > 0 {
            self.set(1);
            return false;
        }
        true
    }
}

/// Sets the socket `fd`'s `SO_RCVLOWAT` to `bytes`; whether it took.
fn set_receive_low_water(fd: std::os::fd::RawFd, bytes: usize) -> bool {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: plain setsockopt with a valid c_int on a socket the caller holds open.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    result == 0
}

/// Reads `buffer.len()` bytes with the stall bound on each read.
async fn read_exact_stalling(
    socket: &mut OwnedReadHalf,
    low_water: &mut LowWater,
    buffer: &mut [u8],
) -> Result<(), (bool, io::Error)> {
    let mut filled = 0;
    while filled < buffer.len() {
        match tokio::time::timeout(STALL_TIMEOUT, socket.read(&mut buffer[filled..])).await {
            Err(_) if !low_water.stalled() => {}
            Err(_) => return Err((filled > 0, io::Error::new(io::ErrorKind::TimedOut, "stalled"))),
            Ok(Ok(0)) => return Err((filled > 0, io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(read)) => filled += read,
            Ok(Err(error)) => return Err((filled > 0, error)),
        }
    }
    Ok(())
}

/// The failure of a request whose answer did not come: a stall means the
/// service is down; the end of the stream before any byte of the answer is
/// worth one retry on a new connection (a pooled connection the server
/// closed looks like that; a refusal fails again on the retry).
fn no_answer(started: bool, error: io::Error, what: &str) -> Failure {
    if error.kind() == io::ErrorKind::TimedOut {
        return Failure::new(FailureKind::Down, format!("{what}: no byte for {} s", STALL_TIMEOUT.as_secs()));
    }
    if !started && matches!(error.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) {
        return Failure::new(
            FailureKind::Retry,
            format!("{what}: connection closed (request refused or service failed)"),
        );
    }
    Failure::new(FailureKind::Failed, format!("{what}: {error}"))
}

/// Checks a fetch answer's head: well formed, a FETCHED tag, and the
/// block's `size` bytes announced.
fn check_fetch_head(head: &[u8], size: u32) -> Result<(), Failure> {
    let Ok(head) = FetchRespHead::read_from_bytes(head) else {
        return Err(Failure::new(FailureKind::Failed, "malformed fetch response"));
    };
    if head.tag != TAG_FETCHED {
        return Err(Failure::new(FailureKind::Failed, "malformed fetch response"));
    }
    if head.size.get() != size {
        return Err(Failure::new(FailureKind::Failed, format!("block has {} bytes, expected {size}", head.size.get())));
    }
    Ok(())
}

async fn answer(
    socket: &mut OwnedReadHalf,
    low_water: &mut LowWater,
    expect: Expect,
) -> Result<Answer, (Failure, Option<BytesMut>)> {
    match expect {
        Expect::Fetch { size, mut dst } => {
            let mut head = [0u8; size_of::<FetchRespHead>()];
            // The head and the block come together (blockd sends the head
            // with MSG_MORE), unless the answer is an error: then the
            // connection ends, which wakes the reader whatever the mark.
            low_water.expect(head.len() + size as usize);
            if let Err((started, error)) = read_exact_stalling(socket, low_water, &mut head).await {
                return Err((no_answer(started, error, "fetch"), Some(dst)));
            }
            if let Err(failure) = check_fetch_head(&head, size) {
                return Err((failure, Some(dst)));
            }
            let size = size as usize;
            dst.reserve(size);
            let mut crc = 0u32;
            while dst.len() < size {
                let before = dst.len();
                let want = (size - before).min(IO_CHUNK_BYTES);
                low_water.expect(size - before);
                let mut limited = (&mut dst).limit(want);
                match tokio::time::timeout(STALL_TIMEOUT, socket.read_buf(&mut limited)).await {
                    Err(_) if !low_water.stalled() => {}
                    Err(_) => {
                        let reason = format!("fetch stalled after {before} of {size} bytes");
                        return Err((Failure::new(FailureKind::Down, reason), Some(dst)));
                    }
                    Ok(Ok(0)) => {
                        let reason = format!("connection closed after {before} of {size} bytes");
                        return Err((Failure::new(FailureKind::Failed, reason), Some(dst)));
                    }
                    Ok(Ok(_)) => crc = crc32c_append(crc, &dst[before..]),
                    Ok(Err(error)) => {
                        return Err((Failure::new(FailureKind::Failed, format!("fetch: {error}")), Some(dst)));
                    }
                }
            }
            Ok(Answer::Fetched { data: dst, crc })
        }
        Expect::Write { block_id } => {
            let mut response = [0u8; size_of::<WriteResp>()];
            low_water.expect(response.len());
            // No stall bound here: blockd syncs the file and its folder
            // before it answers, which may take a while on a busy disk.
            let read = tokio::time::timeout(WRITE_PROOF_TIMEOUT, socket.read_exact(&mut response)).await;
            match read {
                Err(_) => return Err((Failure::new(FailureKind::Down, "no write proof in time"), None)),
                Ok(Err(error)) => {
                    let failure = no_answer(false, error, "no write proof (write refused or service failed)");
                    return Err((failure, None));
                }
                Ok(Ok(_)) => {}
            }
            // The error answer has the proof's length (wire::block).
            if response[0] == TAG_ERROR {
                let failure = match BlockErrorResp::decode(&response) {
                    Some((answered_block, kind)) if answered_block == block_id => Failure {
                        kind: FailureKind::Failed,
                        reason: format!("{} ({kind})", answered_words(kind)),
                        answered: Some(kind),
                    },
                    _ => Failure::new(FailureKind::Failed, "malformed error answer to a write"),
                };
                return Err((failure, None));
            }
            let Ok(response) = WriteResp::read_from_bytes(&response) else {
                return Err((Failure::new(FailureKind::Failed, "malformed write response"), None));
            };
            if response.tag != TAG_WRITTEN || response.block_id != block_id {
                return Err((Failure::new(FailureKind::Failed, "write response for another block"), None));
            }
            Ok(Answer::Proof(response.proof))
        }
        Expect::Erase { block_id } => {
            let mut response = [0u8; size_of::<EraseResp>()];
            low_water.expect(response.len());
            let read = tokio::time::timeout(WRITE_PROOF_TIMEOUT, socket.read_exact(&mut response)).await;
            match read {
                Err(_) => return Err((Failure::new(FailureKind::Down, "no erase proof in time"), None)),
                Ok(Err(error)) => return Err((no_answer(false, error, "erase"), None)),
                Ok(Ok(_)) => {}
            }
            let Ok(response) = EraseResp::read_from_bytes(&response) else {
                return Err((Failure::new(FailureKind::Failed, "malformed erase response"), None));
            };
            if response.tag != TAG_ERASED || response.block_id != block_id {
                return Err((Failure::new(FailureKind::Failed, "erase response for another block"), None));
            }
            Ok(Answer::Proof(response.proof))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fetches in turn send every request at once, while the gate hands
    /// out one buffer: a fake service sees all the requests before the
    /// read allows more than the first answer; the second answer is not
    /// taken (it waits in the socket) until allowed, then every answer
    /// comes in order with its bytes and CRC, and a fetch waiting for its
    /// place fails once the gate is closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_in_turn_are_all_requested_but_take_buffers_only_when_allowed() {
        use std::io::{Read, Write};
        const SIZE: usize = 64 << 10;
        let blocks: Vec<Vec<u8>> =
            (0..4u8).map(|seed| (0..SIZE).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()).collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let (requested, all_requested) = std::sync::mpsc::channel();
        let answers = blocks.clone();
        let service = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut request = [0u8; size_of::<FetchReq>()];
            for _ in 0..5 {
                stream.read_exact(&mut request).expect("a request");
            }
            requested.send(()).expect("tell");
            for block in &answers {
                stream.write_all(FetchRespHead::new(SIZE as u32).as_bytes()).expect("head");
                stream.write_all(block).expect("bytes");
            }
            // Held open until the client is done.
            let _ = stream.read(&mut request);
        });
        let gate = Arc::new(Gate::default());
        gate.allow(1);
        let mut turn = TurnConnection::open(addr, gate.clone()).await.expect("connect");
        let mut answers: Vec<_> = (0..5u64).map(|seq| turn.fetch(BlockId::new(seq + 1), SIZE as u32, seq)).collect();
        let all_requested = tokio::task::spawn_blocking(move || all_requested.recv_timeout(Duration::from_secs(10)));
        all_requested.await.expect("join").expect("all five requests sent before any but the first is allowed");
        let check = |reply: Reply, index: usize| -> BytesMut {
            let Ok(Answer::Fetched { data, crc }) = reply else { panic!("fetch {index} failed") };
            assert!(data[..] == blocks[index][..], "fetch {index}: its block's bytes");
            assert_eq!(crc, wire::crc::crc32c(&blocks[index]), "fetch {index}: its CRC");
            data
        };
        let first = check((&mut answers[0]).await.expect("answer"), 0);
        assert_eq!(gate.made(), SIZE as u64, "one buffer made");
        let waiting = tokio::time::timeout(Duration::from_millis(200), &mut answers[1]).await;
        assert!(waiting.is_err(), "the second answer waits for its place");
        gate.give_back(first);
        gate.allow(4);
        for (index, answer) in answers.drain(..4).enumerate().skip(1) {
            check(answer.await.expect("answer"), index);
        }
        gate.close();
        let given_up = answers.pop().expect("the fifth").await.expect("answer");
        assert!(matches!(given_up, Err((Failure { kind: FailureKind::Failed, .. }, _))), "a closed gate fails it");
        drop(turn);
        service.join().expect("service");
    }

    /// A turn connection whose service closes it mid-read fails the fetch
    /// it was on (a retry: no byte of that answer came), marks the read's
    /// gate broken so that the read stops requesting in turn, and ends its
    /// thread; `mend` clears the mark.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_turn_connection_marks_the_gate_broken() {
        use std::io::{Read, Write};
        const SIZE: usize = 4096;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let service = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; size_of::<FetchReq>()];
            for _ in 0..2 {
                stream.read_exact(&mut request).expect("a request");
            }
            stream.write_all(FetchRespHead::new(SIZE as u32).as_bytes()).expect("head");
            stream.write_all(&[7u8; SIZE]).expect("bytes");
            // Gone before the second answer.
        });
        let gate = Arc::new(Gate::default());
        gate.allow(2);
        let mut turn = TurnConnection::open(addr, gate.clone()).await.expect("connect");
        let first = turn.fetch(BlockId::new(1), SIZE as u32, 0);
        let second = turn.fetch(BlockId::new(2), SIZE as u32, 1);
        assert!(matches!(first.await.expect("answer"), Ok(Answer::Fetched { .. })));
        let failed = second.await.expect("answer");
        assert!(matches!(failed, Err((Failure { kind: FailureKind::Retry, .. }, _))), "a retry");
        assert!(gate.broken(), "the gate says a connection failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while turn.is_alive() {
            assert!(std::time::Instant::now() < deadline, "the connection's thread ends");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gate.mend();
        assert!(!gate.broken());
        service.join().expect("service");
    }

    /// A pooled fetch's reader sleeps under a low-water mark
    /// ([`RECEIVE_LOW_WATER_BYTES`]): a service that trickles its answer,
    /// fewer bytes per [`STALL_TIMEOUT`] than the mark, is still no stall
    /// (bytes came), and the block arrives whole with its CRC; a service
    /// that then sends nothing more is one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickling_service_under_the_low_water_mark_is_no_stall() {
        use std::io::{Read, Write};
        const SIZE: usize = 2 << 20;
        let block: Vec<u8> = (0..SIZE).map(|i| (i as u8).wrapping_mul(13)).collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let sent = block.clone();
        let service = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; size_of::<FetchReq>()];
            stream.read_exact(&mut request).expect("the first request");
            stream.write_all(FetchRespHead::new(SIZE as u32).as_bytes()).expect("head");
            // A first megabyte at once, then 64 KiB every 3 s (under the
            // stall bound, far under the mark) for two steps, then the rest.
            stream.write_all(&sent[..1 << 20]).expect("bytes");
            let mut at = 1 << 20;
            for _ in 0..2 {
                std::thread::sleep(STALL_TIMEOUT - Duration::from_secs(1));
                stream.write_all(&sent[at..at + (64 << 10)]).expect("bytes");
                at += 64 << 10;
            }
            stream.write_all(&sent[at..]).expect("bytes");
            // The second request gets half its answer, then nothing.
            stream.read_exact(&mut request).expect("the second request");
            stream.write_all(FetchRespHead::new(SIZE as u32).as_bytes()).expect("head");
            stream.write_all(&sent[..SIZE / 2]).expect("bytes");
            let _ = stream.read(&mut request);
        });
        let pool = BlockPool::default();
        let reply = pool.fetch(addr, BlockId::new(1), SIZE as u32, BytesMut::new()).await;
        let (data, crc) = match reply {
            Ok(Answer::Fetched { data, crc }) => (data, crc),
            Ok(_) => panic!("an answer of another kind"),
            Err((failure, _)) => panic!("the trickled fetch failed: {}", failure.reason),
        };
        assert!(data[..] == block[..], "the block's bytes");
        assert_eq!(crc, wire::crc::crc32c(&block), "its CRC");
        let started = std::time::Instant::now();
        let reply = pool.fetch(addr, BlockId::new(2), SIZE as u32, BytesMut::new()).await;
        let Err((failure, _)) = reply else { panic!("half an answer succeeded") };
        assert_eq!(failure.kind, FailureKind::Down, "{}", failure.reason);
        assert!(started.elapsed() < STALL_TIMEOUT * 2, "found stalled within the bound: {:?}", started.elapsed());
        drop(pool);
        service.join().expect("service");
    }

    /// The mark follows what the reader still expects: at most
    /// [`RECEIVE_LOW_WATER_BYTES`], never more than the rest of the answer
    /// (the socket's own `SO_RCVLOWAT` says so), and back to one byte when
    /// the bound passes with bytes under the mark.
    #[test]
    fn the_low_water_mark_never_exceeds_what_is_expected() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let stream = std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let asked = || {
            let mut value: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt of one c_int into a c_int on an open socket.
            let result = unsafe {
                libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, (&raw mut value).cast(), &raw mut len)
            };
            assert_eq!(result, 0);
            value as usize
        };
        let mut low_water = LowWater::new(fd);
        low_water.expect(4 << 20);
        assert_eq!(asked(), RECEIVE_LOW_WATER_BYTES);
        low_water.expect(5);
        assert_eq!(asked(), 5);
        low_water.expect(0);
        assert_eq!(asked(), 1);
        low_water.expect(RECEIVE_LOW_WATER_BYTES + 1);
        assert!(low_water.stalled(), "nothing came: a stall");
        assert_eq!(asked(), RECEIVE_LOW_WATER_BYTES);
        std::io::Write::write_all(&mut peer, b"some").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!low_water.stalled(), "bytes under the mark: no stall");
        assert_eq!(asked(), 1, "and the mark back at one byte");
    }

    /// A fetch from a service that refuses connections gives the caller's
    /// buffer back, the same allocation, emptied: the reader's span buffer
    /// stays in one piece for the block rebuilt into its place (a dropped
    /// piece made the rebuild allocate a new buffer and the span's pieces
    /// be copied into another when joined).
    #[tokio::test]
    async fn a_refused_fetch_gives_the_buffer_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let size = 1 << 16;
        let mut dst = BytesMut::with_capacity(size);
        dst.extend_from_slice(b"old bytes");
        let start = dst.as_ptr() as usize;
        let reply = BlockPool::default().fetch(addr, BlockId::new(1), size as u32, dst).await;
        let Err((failure, back)) = reply else { panic!("a fetch from a closed port succeeded") };
        assert_eq!(failure.kind, FailureKind::Down, "{}", failure.reason);
        let back = back.expect("the buffer comes back");
        assert_eq!(back.as_ptr() as usize, start, "the same allocation");
        assert!(back.is_empty() && back.capacity() >= size);
    }
}
