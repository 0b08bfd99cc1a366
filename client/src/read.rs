//! Reading a file: fetch_spans page by page; each span's data blocks are
//! fetched in parallel over pooled, pipelined connections ([`crate::pool`])
//! and checked (CRC per block, computed as the bytes arrive; the span CRC
//! derived from the block CRCs as `crc32c_combine` does, with its operator
//! kept per block length: never a second pass over the bytes). A healthy
//! span of a file smaller than [`WHOLE_SPANS_FROM`] (every data block on a service neither flagged nor found down, the
//! span CRC the combine of the blocks' listed CRCs) is read and written out
//! **block by block**: each data block into a block buffer, written out in
//! order once its CRC matches the one it was written with, the buffer then
//! reused for a later block. Those blocks are fetched **in turn**
//! ([`crate::pool::TurnConnection`]): each request goes out as soon as it
//! is up to [`BLOCK_REQUESTS_BYTES`] ahead of the output, over one
//! connection per block service of the read's own (up to
//! [`TURN_CONNECTIONS_MAX`]; for files of [`TURNS_FROM`] or more, smaller
//! ones use the process's pool), whose thread receives the answers in order
//! with blocking reads; the read's [`crate::pool::Gate`] hands an answer
//! its block buffer only once the block is within the block read-ahead of
//! the output. The services always have requests queued, their bytes
//! wait in the sockets, and the read's memory stays the block read-ahead.
//! Any other span is read whole into a span
//! buffer, each block straight into its place. When a
//! block service is flagged (terminal, unknown, stale), unreachable, hung,
//! or returns wrong bytes, parity blocks are fetched and the missing data
//! blocks rebuilt into their place (mirrors: any copy); a block of a
//! healthy span that fails sends the rest of its span that way. Once a
//! span of blocks cannot be read block by block (flagged, a service down,
//! a block failed), the read reads every later span whole, as it did
//! before block-by-block reads: a degraded read keeps the spans'
//! read-ahead around its rebuilds.
//!
//! - **Read-ahead** is sized in bytes: it starts at [`READ_AHEAD_BYTES_MIN`]
//!   (at least [`READ_AHEAD_SPANS_MIN`] spans when the file's share holds
//!   that many) and doubles, up to [`READ_AHEAD_BYTES_MAX`], each time the
//!   output had to wait for the next span; output stays in order and memory
//!   bounded. A file reads ahead at most 1/[`READ_AHEAD_FILE_SHARE`] of its
//!   size (and one span at a time when that share holds fewer than two).
//!   Healthy spans' blocks have a read-ahead of their own, from
//!   [`BLOCK_READ_AHEAD_BYTES_MIN`] up to 1/[`BLOCK_READ_AHEAD_FILE_SHARE`]
//!   of the file (within the same maximum), so that the fresh memory of
//!   the read-ahead's buffers is paid for by enough bytes read: four
//!   concurrent cats of 256 MiB each faulted in 64 MiB, then 32, then one
//!   16 MiB span buffer; now two 4 MiB block buffers. A file of
//!   [`WHOLE_SPANS_FROM`] or more pays for its span buffers and is read
//!   span by span (faster alone).
//! - **Buffers** are reused: a block or span buffer goes back to the
//!   read's free list once written out; a block of a span read whole never
//!   gets a buffer of its own (parity
//!   blocks of a degraded span excepted, and those are kept for the next
//!   degraded span; the parity block of a span rebuilt from one parity
//!   block, or the first of a span rebuilt by XOR, is fetched into the
//!   missing data block's place and the block made there, so such a span
//!   takes no parity buffer, or P − 1). Span and block
//!   buffers start on a 2 MiB boundary and ask for transparent huge
//!   pages: the kernel's copy from the socket into a buffer 16 bytes off
//!   a page boundary (as `malloc` gives) cost 3× more
//!   CPU on this machine, and was most of the client's time. A
//!   degraded span missing one full-size data block, on a CPU where
//!   `crate::erasure` multiplies with SIMD, fetches one parity block, not every one, and makes the block
//!   from it and the other data blocks in its place (`crate::erasure`,
//!   `one_parity_assumed`; CRC-checked, undone and decoded on a
//!   mismatch): as many bytes on the wire as a healthy span. Otherwise a
//!   degraded span missing one data block rebuilds it by XOR in its place
//!   in the span buffer, each 16 KiB chunk written once from all its
//!   sources ([`xor_rebuild_checked`], or `xor_in_place_checked` over the
//!   parity block fetched there), when P is a power of two (assumed,
//!   `xor_assumed`; a rebuilt block that fails its CRC is decoded
//!   instead); otherwise with the thread's Reed–Solomon decoder, reset,
//!   not built anew.
//! - **Dead services** are routed around for the rest of the read: a
//!   service that refuses connections or stalls for
//!   [`crate::pool::STALL_TIMEOUT`] is tried last from then on, so a hung
//!   or dead service costs one stall per read, not one per span.
//! - **Output** goes to a [`SpanSink`]: plain `write(2)` from the span or
//!   block buffer for a file descriptor ([`FdSink`], used for stdout), or any
//!   tokio `AsyncWrite` ([`AsyncWriteSink`]).
//! - [`FileReader`] reads byte ranges of a file (for the mount).
//! - [`checked_pipe`] hands a file's bytes to a consumer that must never
//!   take a short read for the whole file (`eggs cp`, shuckle's download).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::OnceCell;
use tokio::task::{JoinHandle, JoinSet};
use wire::crc::{crc32c, crc32c_append, crc32c_zeros};
use wire::shard::FetchedBlock;
use wire::span::SpanLayout;
use wire::{BlockServiceId, InodeId};

use crate::block::fetch_block_into;
use crate::client::{Client, FileSpan, FileSpanBody, Stat};
use crate::erasure::{self, SingleErasure};
use crate::error::{ClientError, Result};
use crate::plan::BlockChoice;
use crate::pool::{Answer, Failure, FailureKind, Gate, Reply, TurnConnection};

/// Bytes fetched ahead of the output at first.
pub const READ_AHEAD_BYTES_MIN: u64 = 16 << 20;
/// The most the read-ahead grows to.
pub const READ_AHEAD_BYTES_MAX: u64 = 64 << 20;
/// Spans in flight at least, whatever their size, when the file's share
/// ([`READ_AHEAD_FILE_SHARE`]) holds that many; else one.
pub const READ_AHEAD_SPANS_MIN: usize = 2;
/// A file gets a read-ahead of at most this share of its size (1/N, but
/// never below [`READ_AHEAD_BYTES_MIN`] or one span; see
/// [`READ_AHEAD_SPANS_MIN`]). The read-ahead's buffers are fresh memory,
/// and on this machine the kernel's first touch of a fresh page (zeroing
/// it, and the hypervisor backing it) cost twice the receive copy of the
/// bytes read into it in four concurrent cats of 256 MiB (12 % and 6 % of
/// all samples): a buffer must be paid for by enough bytes. An eighth (two
/// 16 MiB spans for 256 MiB) still left `clear_page_erms` at 22 % of four
/// concurrent cats' samples; a sixteenth (one span) cut their client CPU
/// by 1.2–1.4× (`perf/results/2026-11-28-s11-dp11f.md`). A file of 1 GiB
/// or more keeps the whole [`READ_AHEAD_BYTES_MAX`].
pub const READ_AHEAD_FILE_SHARE: u64 = 16;
/// Bytes of healthy spans' blocks fetched ahead of the output at first,
/// and the least that read-ahead grows to ([`block_plans`]): two 4 MiB
/// blocks of a 16 MiB RS 4+2 span, so that the next block's fetch is
/// under way while one is written out (one block at a time saved as much
/// CPU but read 1.23× slower, paired).
pub const BLOCK_READ_AHEAD_BYTES_MIN: u64 = 8 << 20;
/// The block read-ahead of a file (smaller than [`WHOLE_SPANS_FROM`]) is
/// at most this share of its size (1/N,
/// within [`BLOCK_READ_AHEAD_BYTES_MIN`] and [`READ_AHEAD_BYTES_MAX`]):
/// 8 MiB for 256 MiB, 16 MiB for 512 MiB. Paired on this machine
/// (`perf/results/2026-11-28-s13-dp13b.md`), four concurrent cats of
/// 256 MiB used 1.08× less client CPU (and blockd 1.08× less) with two
/// 4 MiB block buffers each than with one fresh 16 MiB span buffer: fresh
/// memory is zeroed by the kernel on first touch.
pub const BLOCK_READ_AHEAD_FILE_SHARE: u64 = 32;
/// Files of this size or more are read span by span, never block by
/// block: their read-ahead's fresh memory is paid for by enough bytes, and
/// a lone cat of 1 GiB read 0.83× as fast block by block (64 MiB of blocks
/// in flight) as span by span (10 paired rounds, 0.66–1.52, with 11 % more
/// client CPU: one write and one task per 4 MiB block instead of per span;
/// `perf/results/2026-11-28-s13-lead.md`). Block by block is for the
/// smaller files, where the span buffers' first touch is the cost.
pub const WHOLE_SPANS_FROM: u64 = 1 << 30;
/// Bytes of healthy spans' blocks requested ahead of the output: the
/// requests go out this far ahead, but only the blocks the gate allows
/// (the block read-ahead, in bytes) get a buffer; the others' bytes wait
/// in the block services' sockets.
pub const BLOCK_REQUESTS_BYTES: u64 = 64 << 20;
/// Block services one read fetches from in turn, each over a connection
/// and a thread of the read's own ([`TurnConnection`]); blocks on further
/// services are requested once the gate gives them a buffer, over the
/// process's pool.
pub const TURN_CONNECTIONS_MAX: usize = 16;
/// Files smaller than this fetch their blocks over the process's pool
/// only, never over connections of the read's own: opening those (a
/// connection and a thread per block service) cost a 1 MiB cat ~0.2 ms,
/// 0.93× main's speed, while an 8 MiB cat already read 1.085× faster
/// with them and a 128 MiB one 1.12× (16 paired rounds each of five cats,
/// `perf/results/2026-11-28-s14-lead.md`).
pub const TURNS_FROM: u64 = 8 << 20;
/// Kept for callers of the first version: the old fixed window in spans.
pub const READ_AHEAD_SPANS: usize = READ_AHEAD_SPANS_MIN;

/// Bytes of parity block buffers one read keeps for reuse (degraded
/// spans): as many as the read-ahead can hold at once, so that a degraded
/// read never frees one and faults in (and the kernel zeroes) a new one.
/// Eight buffers were kept before: with 16 MiB RS 4+2 spans and 64 MiB of
/// read-ahead up to 10 are in use, and a degraded cat took 7 800 page
/// faults against a healthy one's 450.
const PARITY_BUFFER_BYTES_KEPT: usize = READ_AHEAD_BYTES_MAX as usize;

/// Guard against a span listing that does not advance.
const SPAN_PAGES_MAX: u64 = 1 << 40;

/// What a read did, beyond the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    pub bytes: u64,
    pub spans: u64,
    /// Spans rebuilt from parity (or another mirror).
    pub reconstructed_spans: u64,
    /// One line per block that could not be used, and why.
    pub notices: Vec<String>,
    /// Bytes of span and block buffers the read made: fresh memory, which
    /// the kernel zeroes on first touch (then reused from span to span and
    /// block to block). Parity buffers of degraded spans are not counted.
    pub buffer_bytes_made: u64,
}

/// Where a read's bytes go, in order. Each call gets a span's bytes, or
/// one data block's of a span written out block by block, and gives the
/// buffer back for reuse.
pub trait SpanSink: Send {
    fn write_span(&mut self, data: BytesMut) -> impl Future<Output = io::Result<BytesMut>> + Send;
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Any tokio writer.
pub struct AsyncWriteSink<'a, W>(pub &'a mut W);

impl<W: AsyncWrite + Unpin + Send> SpanSink for AsyncWriteSink<'_, W> {
    async fn write_span(&mut self, data: BytesMut) -> io::Result<BytesMut> {
        self.0.write_all(&data).await?;
        Ok(data)
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.0.flush().await
    }
}

/// A file descriptor written with plain `write(2)` from the span buffer, on
/// a blocking thread (a pipe may block), while the next spans arrive. The
/// descriptor stays the caller's (not closed).
pub struct FdSink {
    fd: RawFd,
}

impl FdSink {
    /// # Safety-free contract
    ///
    /// `fd` must stay open for the life of the sink.
    pub fn new(fd: RawFd) -> Self {
        Self { fd }
    }

    /// Standard output.
    pub fn stdout() -> Self {
        Self { fd: libc::STDOUT_FILENO }
    }
}

fn write_all_fd(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid, initialised slice for the whole call.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[written as usize..];
    }
    Ok(())
}

impl SpanSink for FdSink {
    async fn write_span(&mut self, data: BytesMut) -> io::Result<BytesMut> {
        let fd = self.fd;
        tokio::task::spawn_blocking(move || write_all_fd(fd, &data).map(|()| data))
            .await
            .unwrap_or_else(|error| Err(io::Error::other(format!("output thread: {error}"))))
    }

    async fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// True when `error` is the output's reader having gone away (EPIPE), as
/// with `eggs cat | head -c 1`: the read stopped, nothing went wrong.
pub fn is_broken_pipe(error: &ClientError) -> bool {
    matches!(error, ClientError::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
}

/// Block service addresses as shuckle knows them now, fetched once per
/// read on the first block that cannot be fetched at the address the shard
/// gave (the shard's table may predate a block service moving).
#[derive(Clone)]
struct AddressBook {
    client: Client,
    addresses: Arc<OnceCell<HashMap<BlockServiceId, SocketAddr>>>,
}

impl AddressBook {
    /// The current address of `id` if shuckle knows a different one than `listed`.
    async fn moved(&self, id: BlockServiceId, listed: SocketAddr) -> Option<SocketAddr> {
        let addresses = self
            .addresses
            .get_or_init(|| async {
                match self.client.block_services().await {
                    Ok(services) => services.into_iter().map(|(id, addr, _, _)| (id, addr)).collect(),
                    Err(error) => {
                        tracing::debug!(%error, "cannot list block services");
                        HashMap::new()
                    }
                }
            })
            .await;
        addresses.get(&id).copied().filter(|addr| *addr != listed && addr.port() != 0)
    }
}

/// What one read shares between its span tasks.
#[derive(Clone)]
struct ReadState {
    book: AddressBook,
    /// Services that refused connections or stalled during this read:
    /// tried last from then on.
    avoid: Arc<Mutex<HashSet<BlockServiceId>>>,
    /// Parity block buffers of degraded spans, kept for the next ones.
    parity_buffers: ParityBuffers,
}

/// Parity block buffers of one read's degraded spans, kept for the next
/// ones (up to [`PARITY_BUFFER_BYTES_KEPT`]).
#[derive(Clone, Default)]
struct ParityBuffers(Arc<Mutex<Vec<BytesMut>>>);

impl ParityBuffers {
    /// A buffer for a parity block of `size` bytes: a kept one if any.
    fn take(&self, size: usize) -> BytesMut {
        let kept = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        match kept {
            Some(mut buffer) if buffer.capacity() >= size => {
                buffer.clear();
                buffer
            }
            _ => span_buffer(size),
        }
    }

    /// Keeps `buffer` for the next degraded span (up to
    /// [`PARITY_BUFFER_BYTES_KEPT`] in all).
    fn give_back(&self, buffer: BytesMut) {
        let mut kept = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let held: usize = kept.iter().map(BytesMut::capacity).sum();
        if held + buffer.capacity() <= PARITY_BUFFER_BYTES_KEPT {
            kept.push(buffer);
        }
    }
}

impl ReadState {
    fn new(client: &Client) -> Self {
        Self {
            book: AddressBook { client: client.clone(), addresses: Arc::new(OnceCell::new()) },
            avoid: Arc::new(Mutex::new(HashSet::new())),
            parity_buffers: ParityBuffers::default(),
        }
    }

    fn parity_buffer(&self, size: usize) -> BytesMut {
        self.parity_buffers.take(size)
    }

    fn return_parity_buffer(&self, buffer: BytesMut) {
        self.parity_buffers.give_back(buffer);
    }

    fn avoided(&self, id: BlockServiceId) -> bool {
        self.avoid.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&id)
    }

    fn mark_down(&self, id: BlockServiceId) {
        self.avoid.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id);
    }
}

/// A span's bytes and what went wrong on the way.
struct SpanRead {
    data: BytesMut,
    reconstructed: bool,
    notices: Vec<String>,
}

/// Reads the whole file `inode` into `out`. `notice` is called at once for
/// every block that could not be used (the CLI prints it with `-v`);
/// `progress` with the bytes written so far.
pub async fn read_file<W: AsyncWrite + Unpin + Send>(
    client: &Client,
    inode: InodeId,
    out: &mut W,
    notice: &(dyn Fn(&str) + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ReadReport> {
    read_file_to(client, inode, &mut AsyncWriteSink(out), notice, progress).await
}

/// Reads the whole file `inode` to standard output with `write(2)`. An
/// output closed by its reader comes back as an error that
/// [`is_broken_pipe`] recognises.
pub async fn read_file_to_stdout(
    client: &Client,
    inode: InodeId,
    notice: &(dyn Fn(&str) + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ReadReport> {
    read_file_to(client, inode, &mut FdSink::stdout(), notice, progress).await
}

/// One unit of the read-ahead: a whole span, or one data block of a
/// healthy span, written out on its own once checked.
enum Ahead {
    Span(JoinHandle<Result<SpanRead>>),
    Block(BlockAhead, JoinHandle<Fetched>),
}

/// A data block of a healthy span, to be fetched into a block buffer and
/// written out on its own ([`block_plans`]).
#[derive(Clone)]
struct BlockAhead {
    span: Arc<FileSpan>,
    index: usize,
    block: FetchedBlock,
    /// Where the block's bytes start in the span.
    start: u64,
    last: bool,
    /// Its place in the read's order of blocks ([`Gate`]), once queued.
    seq: u64,
}

impl Ahead {
    fn is_finished(&self) -> bool {
        match self {
            Self::Span(task) => task.is_finished(),
            Self::Block(_, task) => task.is_finished(),
        }
    }

    fn abort(&self) {
        match self {
            Self::Span(task) => task.abort(),
            Self::Block(_, task) => task.abort(),
        }
    }
}

/// The data blocks of `span` to fetch and write out one by one, in order,
/// when the span is healthy: made of blocks (Reed–Solomon, not mirrored),
/// every data block non-empty, of its layout's size, on a service that is
/// neither flagged nor found down by this read and whose address is known,
/// and the span CRC the `crc32c_combine` of the data blocks' listed CRCs.
/// Each block is then checked against its listed CRC as it arrives, which
/// checks the span CRC too, before any of its bytes are written out. Any
/// other span is read whole ([`read_span`]).
fn block_plans(state: &ReadState, span: &FileSpan) -> Option<Vec<BlockAhead>> {
    let FileSpanBody::Blocks { parity, blocks, .. } = &span.body else { return None };
    if parity.is_mirroring() || blocks.len() != parity.total_blocks() {
        return None;
    }
    let layout = SpanLayout::new(u64::from(span.size), *parity).ok()?;
    let d = parity.data_blocks();
    let unhealthy = wire::shuckle::flags::STALE | wire::shuckle::flags::TERMINAL | wire::shuckle::flags::UNKNOWN;
    let healthy = blocks.iter().enumerate().take(d).all(|(index, block)| {
        let size = u64::from(block.size.get());
        size > 0
            && size == layout.block_size(index)
            && block.flags & unhealthy == 0
            && !block.address.is_unknown()
            && !state.avoided(block.block_service_id)
    });
    let listed: Vec<u32> = blocks.iter().take(d).map(|block| block.crc.get()).collect();
    if !healthy || span_crc_from_blocks(&listed, &layout) != span.crc {
        return None;
    }
    let span = Arc::new(span.clone());
    Some(
        (0..d)
            .map(|index| BlockAhead {
                span: span.clone(),
                index,
                block: blocks[index],
                start: layout.data_block_range(index).start,
                last: index + 1 == d,
                seq: 0,
            })
            .collect(),
    )
}

/// A buffer for `span`, read whole: one a span read before gave back, else
/// (for a span of blocks, when that one is too small) a fresh span buffer,
/// made here rather than by `read_blocks` so that `made` counts it.
fn whole_span_buffer(free: &mut Vec<BytesMut>, made: &mut u64, span: &FileSpan) -> BytesMut {
    let buffer = free.pop().unwrap_or_default();
    if matches!(span.body, FileSpanBody::Blocks { .. }) && buffer.capacity() < span.size as usize {
        *made += u64::from(span.size);
        return span_buffer(span.size as usize);
    }
    buffer
}

/// Closes a read's [`Gate`] when the read ends, however it ends: its
/// fetches still queued fail instead of waiting for a buffer.
struct CloseGate(Arc<Gate>);

impl Drop for CloseGate {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Lets the gate hand buffers to the blocks in flight from the first, up
/// to `window` bytes of them (the first always).
fn allow_blocks(gate: &Gate, in_flight: &VecDeque<(Arc<FileSpan>, u64, Ahead)>, window: u64) {
    let mut bytes = 0u64;
    let mut through = None;
    for (_, size, ahead) in in_flight {
        let Ahead::Block(plan, _) = ahead else { continue };
        bytes += size;
        if bytes > window && through.is_some() {
            break;
        }
        through = Some(plan.seq);
    }
    if let Some(seq) = through {
        gate.allow(seq + 1);
    }
}

/// Reads the whole file `inode` into `sink`, in order: a healthy span
/// block by block (each data block written out once its CRC matches, its
/// buffer reused for a later block), any other span whole.
pub async fn read_file_to<S: SpanSink>(
    client: &Client,
    inode: InodeId,
    sink: &mut S,
    notice: &(dyn Fn(&str) + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ReadReport> {
    let mut report = ReadReport::default();
    // (span, the unit's bytes, the unit)
    let mut in_flight: VecDeque<(Arc<FileSpan>, u64, Ahead)> = VecDeque::new();
    let mut in_flight_bytes = 0u64;
    let mut window = READ_AHEAD_BYTES_MIN;
    let mut window_max = READ_AHEAD_BYTES_MAX;
    // Healthy spans' blocks have a read-ahead of their own.
    let mut block_window = BLOCK_READ_AHEAD_BYTES_MIN;
    let mut block_window_max = READ_AHEAD_BYTES_MAX;
    // Set once a span of blocks cannot be read block by block (a block
    // flagged, its service down, or a block that failed): a degraded read
    // reads every later span whole, with the spans' read-ahead, so that
    // its rebuilds overlap the fetches of what follows as before (mixing
    // in block-by-block spans made a degraded cat 12 % slower).
    let mut whole_spans = false;
    let mut spans_min = READ_AHEAD_SPANS_MIN;
    let mut pending: VecDeque<FileSpan> = VecDeque::new();
    // Data blocks of the span being queued, not yet in flight.
    let mut queued: VecDeque<BlockAhead> = VecDeque::new();
    let mut free: Vec<BytesMut> = Vec::new();
    // Bytes of fresh whole-span buffers made.
    let mut made = 0u64;
    // Healthy spans' blocks are fetched in turn, on connections of this
    // read's own, their buffers handed out by the gate in the read's order.
    // (None: the service could not be reached; its later blocks fail at
    // once, not after another connect.)
    let mut turns: HashMap<SocketAddr, Option<TurnConnection>> = HashMap::new();
    // Connections of the read's own: none until the file is known to be
    // [`TURNS_FROM`] or larger.
    let mut turn_connections_max = 0;
    let gate = Arc::new(Gate::default());
    let _close = CloseGate(gate.clone());
    let mut next_seq = 0u64;
    // A block whose service could not be reached, not yet written out:
    // until it is, no more blocks are requested in turn (a degraded read
    // asked for 64 MiB of blocks it then read again whole, at 1.5x the
    // block services' CPU). The same while a connection that failed
    // mid-read has blocks in flight (`Gate::broken`).
    let mut unreachable: Option<u64> = None;
    let state = ReadState::new(client);
    let mut next_offset = Some(0u64);
    let mut expected_offset = 0u64;
    for _ in 0..SPAN_PAGES_MAX {
        // Keep the read-ahead window full, fetching span pages as needed.
        loop {
            let limit = if queued.is_empty() { window } else { BLOCK_REQUESTS_BYTES.max(block_window) };
            let room = in_flight.len() < spans_min || in_flight_bytes < limit;
            if !room {
                break;
            }
            if gate.broken() && !in_flight.iter().any(|(_, _, ahead)| matches!(ahead, Ahead::Block(..))) {
                // The blocks of the failed connection are through (written
                // out, or the read went whole span): it is opened again
                // when next needed.
                turns.retain(|_, turn| turn.as_ref().is_none_or(TurnConnection::is_alive));
                gate.mend();
            }
            if (unreachable.is_some() || gate.broken()) && !queued.is_empty() {
                break;
            }
            if let Some(mut plan) = queued.pop_front() {
                let size = plan.block.size.get();
                plan.seq = next_seq;
                next_seq += 1;
                let block = plan.block;
                let addr = block.address.socket_addr();
                if !turns.contains_key(&addr) && turns.len() < turn_connections_max {
                    let opened = TurnConnection::open(addr, gate.clone()).await;
                    if let Err(failure) = &opened {
                        tracing::debug!(%addr, reason = failure.reason, "cannot connect");
                    }
                    turns.insert(addr, opened.ok());
                }
                let pending = match turns.get_mut(&addr) {
                    Some(Some(turn)) => Some(Ok(turn.fetch(block.block_id, size, plan.seq))),
                    Some(None) => Some(Err(Failure::new(FailureKind::Down, format!("cannot connect to {addr}")))),
                    // Past the read's own connections: fetched over the
                    // process's pool once the gate gives it a buffer.
                    None => None,
                };
                if matches!(pending, Some(Err(_))) {
                    unreachable = Some(plan.seq);
                }
                let task =
                    tokio::spawn(fetch_in_turn(state.clone(), plan.index, block, pending, gate.clone(), plan.seq));
                in_flight_bytes += u64::from(size);
                in_flight.push_back((plan.span.clone(), u64::from(size), Ahead::Block(plan, task)));
                continue;
            }
            if pending.is_empty()
                && let Some(offset) = next_offset
            {
                let page = client.fetch_spans(inode, offset).await?;
                if offset == 0 {
                    // The file's size bounds the read-ahead: the first page's
                    // spans when they are the whole file, else the shard's
                    // stat (a file of several pages is large enough that one
                    // more round trip does not count).
                    let size = if page.next_offset == 0 {
                        Some(page.spans.iter().map(|span| u64::from(span.size)).sum())
                    } else {
                        match client.stat(inode).await {
                            Ok(Stat::File { size, .. }) => Some(size),
                            _ => None,
                        }
                    };
                    window_max = read_ahead_max(size);
                    block_window_max = block_read_ahead_max(size);
                    // A large file (or one of unknown size) is read span by span.
                    whole_spans |= size.is_none_or(|size| size >= WHOLE_SPANS_FROM);
                    if size.is_some_and(|size| size >= TURNS_FROM) {
                        turn_connections_max = TURN_CONNECTIONS_MAX;
                    }
                    let span_size = page.spans.iter().map(|span| u64::from(span.size)).max().unwrap_or(0);
                    spans_min = read_ahead_spans_min(size, span_size);
                }
                next_offset = (page.next_offset != 0).then_some(page.next_offset);
                if let Some(next) = next_offset
                    && next <= offset
                {
                    return Err(ClientError::Inconsistent(format!("fetch_spans of {inode} does not advance")));
                }
                pending.extend(page.spans);
            }
            let Some(span) = pending.pop_front() else { break };
            if !whole_spans {
                match block_plans(&state, &span) {
                    Some(plans) => {
                        queued.extend(plans);
                        continue;
                    }
                    None => {
                        whole_spans =
                            matches!(&span.body, FileSpanBody::Blocks { parity, .. } if !parity.is_mirroring());
                    }
                }
            }
            let buffer = whole_span_buffer(&mut free, &mut made, &span);
            let bytes = u64::from(span.size);
            in_flight_bytes += bytes;
            let span = Arc::new(span);
            let task = tokio::spawn(read_span(state.clone(), inode, (*span).clone(), buffer));
            in_flight.push_back((span, bytes, Ahead::Span(task)));
        }
        allow_blocks(&gate, &in_flight, block_window);
        let Some((span, bytes, ahead)) = in_flight.pop_front() else { break };
        in_flight_bytes -= bytes;
        if let Ahead::Block(plan, _) = &ahead
            && unreachable == Some(plan.seq)
        {
            unreachable = None;
        }
        let unit_offset = match &ahead {
            Ahead::Span(_) => span.offset,
            Ahead::Block(plan, _) => span.offset + plan.start,
        };
        if unit_offset != expected_offset {
            return Err(ClientError::Inconsistent(format!(
                "file {inode}: span at {} where {expected_offset} was expected",
                span.offset
            )));
        }
        // The output waits for the network: fetch further ahead.
        if !ahead.is_finished() {
            match ahead {
                Ahead::Span(_) => window = (window * 2).min(window_max.max(spans_min as u64 * bytes)),
                Ahead::Block(..) => block_window = (block_window * 2).min(block_window_max.max(bytes)),
            }
        }
        let reader_error = |error: tokio::task::JoinError| ClientError::Span {
            inode,
            offset: span.offset,
            reason: format!("reader: {error}"),
        };
        let read = match ahead {
            Ahead::Span(task) => task.await.map_err(reader_error)??,
            Ahead::Block(plan, task) => {
                let fetched = task.await.map_err(reader_error)?;
                match fetched.result {
                    Ok(_) => {
                        // Checked against its listed CRC in `fetch_one`.
                        let length = fetched.buffer.len() as u64;
                        let buffer = sink
                            .write_span(fetched.buffer)
                            .await
                            .map_err(|error| ClientError::io("writing the output", error))?;
                        gate.give_back(buffer);
                        expected_offset += length;
                        report.bytes += length;
                        report.spans += u64::from(plan.last);
                        progress(report.bytes);
                        continue;
                    }
                    Err((kind, reason)) => {
                        whole_spans = true;
                        // The read's fetches in turn are all given up
                        // (below); none waits for a buffer any more.
                        gate.close();
                        gate.give_back(fetched.buffer);
                        if kind == FailureKind::Down {
                            state.mark_down(plan.block.block_service_id);
                        }
                        let line = format!(
                            "block {} (index {}) of span at {}: {reason}; reading parity",
                            plan.block.block_id, plan.index, span.offset
                        );
                        notice(&line);
                        report.notices.push(line);
                        // The rest of the span is read whole, as any
                        // unhealthy span is; its blocks still queued or in
                        // flight are dropped.
                        queued.retain(|queued| queued.span.offset != span.offset);
                        while let Some((next, bytes, ahead)) = in_flight.front()
                            && next.offset == span.offset
                        {
                            ahead.abort();
                            in_flight_bytes -= bytes;
                            in_flight.pop_front();
                        }
                        // Later spans queued or in flight block by block
                        // (none of their bytes written yet) are read whole
                        // too, in their place.
                        let mut kept = VecDeque::with_capacity(in_flight.len());
                        let mut respawned: Option<u64> = None;
                        for (next, bytes, ahead) in in_flight.drain(..) {
                            let Ahead::Block(_, task) = ahead else {
                                kept.push_back((next, bytes, ahead));
                                continue;
                            };
                            task.abort();
                            in_flight_bytes -= bytes;
                            if respawned == Some(next.offset) {
                                continue;
                            }
                            respawned = Some(next.offset);
                            let buffer = whole_span_buffer(&mut free, &mut made, &next);
                            let bytes = u64::from(next.size);
                            in_flight_bytes += bytes;
                            let task = tokio::spawn(read_span(state.clone(), inode, (*next).clone(), buffer));
                            kept.push_back((next, bytes, Ahead::Span(task)));
                        }
                        in_flight = kept;
                        let mut back: Vec<FileSpan> = Vec::new();
                        for queued in queued.drain(..) {
                            if respawned != Some(queued.span.offset)
                                && back.last().is_none_or(|last| last.offset != queued.span.offset)
                            {
                                back.push((*queued.span).clone());
                            }
                        }
                        for later in back.into_iter().rev() {
                            pending.push_front(later);
                        }
                        let mut read = read_span(state.clone(), inode, (*span).clone(), BytesMut::new()).await?;
                        read.data = read.data.split_off(plan.start as usize);
                        read
                    }
                }
            }
        };
        for line in &read.notices {
            notice(line);
        }
        let length = read.data.len() as u64;
        let mut buffer =
            sink.write_span(read.data).await.map_err(|error| ClientError::io("writing the output", error))?;
        buffer.clear();
        free.push(buffer);
        expected_offset += length;
        report.bytes += length;
        report.spans += 1;
        report.reconstructed_spans += u64::from(read.reconstructed);
        report.notices.extend(read.notices);
        progress(report.bytes);
    }
    report.buffer_bytes_made = made + gate.made();
    sink.finish().await.map_err(|error| ClientError::io("writing the output", error))?;
    Ok(report)
}

/// Spans the read-ahead of a file of `size` bytes (if known) holds at
/// least, whatever the bytes: [`READ_AHEAD_SPANS_MIN`] when the file's share
/// (1/[`READ_AHEAD_FILE_SHARE`]) holds that many spans of `span_size`
/// bytes, else one.
fn read_ahead_spans_min(size: Option<u64>, span_size: u64) -> usize {
    match size {
        Some(size) if span_size > 0 => {
            (size / READ_AHEAD_FILE_SHARE / span_size).clamp(1, READ_AHEAD_SPANS_MIN as u64) as usize
        }
        _ => READ_AHEAD_SPANS_MIN,
    }
}

/// The most the read-ahead of a file of `size` bytes (if known) grows to:
/// 1/[`READ_AHEAD_FILE_SHARE`] of it, within [`READ_AHEAD_BYTES_MIN`] and
/// [`READ_AHEAD_BYTES_MAX`].
fn read_ahead_max(size: Option<u64>) -> u64 {
    size.map_or(READ_AHEAD_BYTES_MAX, |size| {
        (size / READ_AHEAD_FILE_SHARE).clamp(READ_AHEAD_BYTES_MIN, READ_AHEAD_BYTES_MAX)
    })
}

/// The most the block read-ahead of a file of `size` bytes (if known)
/// grows to: 1/[`BLOCK_READ_AHEAD_FILE_SHARE`] of it, within
/// [`BLOCK_READ_AHEAD_BYTES_MIN`] and [`READ_AHEAD_BYTES_MAX`].
fn block_read_ahead_max(size: Option<u64>) -> u64 {
    size.map_or(READ_AHEAD_BYTES_MAX, |size| {
        (size / BLOCK_READ_AHEAD_FILE_SHARE).clamp(BLOCK_READ_AHEAD_BYTES_MIN, READ_AHEAD_BYTES_MAX)
    })
}

/// Reads one span of `inode` (as listed by `fetch_spans`): its bytes,
/// CRC-checked, rebuilt from parity when blocks are missing, and one notice
/// per block that could not be used. For random access (the FUSE mount),
/// where the caller picks which spans to read and caches them.
/// The bytes come back shared (`Bytes`): the span buffer itself, no copy.
pub async fn read_one_span(client: &Client, inode: InodeId, span: FileSpan) -> Result<(Bytes, Vec<String>)> {
    let read = read_span(ReadState::new(client), inode, span, BytesMut::new()).await?;
    Ok((read.data.freeze(), read.notices))
}

/// Reads one span's bytes into `buffer` (reused), rebuilding from parity
/// when needed, and checks the span's CRC.
async fn read_span(state: ReadState, inode: InodeId, span: FileSpan, mut buffer: BytesMut) -> Result<SpanRead> {
    let span_error = |reason: String| ClientError::Span { inode, offset: span.offset, reason };
    buffer.clear();
    match &span.body {
        FileSpanBody::Inline(bytes) => {
            buffer.extend_from_slice(bytes);
            if crc32c(&buffer) != span.crc {
                return Err(span_error(format!("{CORRUPTED}: inline span CRC mismatch")));
            }
            check_size(&buffer, &span).map_err(span_error)?;
            Ok(SpanRead { data: buffer, reconstructed: false, notices: Vec::new() })
        }
        FileSpanBody::ZeroFill => {
            if crc32c_zeros(u64::from(span.size)) != span.crc {
                return Err(span_error(format!("{CORRUPTED}: zero-fill span CRC mismatch")));
            }
            buffer.resize(span.size as usize, 0);
            Ok(SpanRead { data: buffer, reconstructed: false, notices: Vec::new() })
        }
        FileSpanBody::Blocks { parity, blocks, .. } => {
            let layout =
                SpanLayout::new(u64::from(span.size), *parity).map_err(|error| span_error(error.to_string()))?;
            let read = read_blocks(&state, inode, &span, &layout, blocks, buffer).await?;
            check_size(&read.data, &span).map_err(span_error)?;
            Ok(read)
        }
    }
}

fn check_size(data: &[u8], span: &FileSpan) -> std::result::Result<(), String> {
    if data.len() != span.size as usize {
        return Err(format!("{} bytes where the span has {}", data.len(), span.size));
    }
    Ok(())
}

/// How a block whose bytes do not match their CRC is named in errors.
const CORRUPTED: &str = "corrupted data";

/// One block fetch's outcome, with the buffer back either way.
struct Fetched {
    index: usize,
    buffer: BytesMut,
    result: std::result::Result<u32, (FailureKind, String)>,
}

/// Fetches block `index` into `dst`, at its listed address and, if that
/// fails, at the address shuckle knows now; checks its CRC.
async fn fetch_one(state: ReadState, index: usize, block: FetchedBlock, dst: BytesMut) -> Fetched {
    let attempt = fetch_block_into(block.address.socket_addr(), block.block_id, block.size.get(), dst).await;
    fetch_checked(state, index, block, attempt).await
}

/// The answer of block `index` queued in turn ([`TurnConnection::fetch`]),
/// as [`fetch_one`] gives it: a connection lost before the answer (not the
/// block's fault) is tried once more on the process's pool, into a buffer
/// of the gate for the same place.
async fn fetch_in_turn(
    state: ReadState,
    index: usize,
    block: FetchedBlock,
    pending: Option<std::result::Result<tokio::sync::oneshot::Receiver<Reply>, Failure>>,
    gate: Arc<Gate>,
    seq: u64,
) -> Fetched {
    let listed = block.address.socket_addr();
    let size = block.size.get();
    let reply = match pending {
        Some(Ok(pending)) => {
            pending.await.unwrap_or_else(|_| Err((Failure::new(FailureKind::Retry, "connection lost"), None)))
        }
        Some(Err(failure)) => Err((failure, None)),
        None => {
            let Some(dst) = gate.take(seq, size as usize).await else {
                let failure = Failure::new(FailureKind::Failed, "the read was given up");
                let buffer = BytesMut::new();
                return Fetched { index, buffer, result: Err((failure.kind, failure.reason)) };
            };
            return fetch_one(state, index, block, dst).await;
        }
    };
    let block_error = |failure: &Failure| ClientError::Block {
        addr: listed,
        block_id: block.block_id,
        reason: failure.reason.clone(),
        answered: failure.answered,
    };
    let mut attempt = match reply {
        Ok(Answer::Fetched { data, crc }) => Ok((data, crc)),
        Ok(Answer::Proof(_)) => {
            let failure = Failure::new(FailureKind::Failed, "answer of another kind");
            Err((block_error(&failure), failure, None))
        }
        Err((failure, back)) => Err((block_error(&failure), failure, back)),
    };
    if let Err((_, failure, back)) = &mut attempt
        && failure.kind == FailureKind::Retry
    {
        let dst = match back.take() {
            Some(buffer) if buffer.capacity() >= size as usize => Some(buffer),
            other => {
                if let Some(buffer) = other {
                    gate.give_back(buffer);
                }
                gate.take(seq, size as usize).await
            }
        };
        if let Some(dst) = dst {
            attempt = fetch_block_into(listed, block.block_id, size, dst).await;
        }
    }
    fetch_checked(state, index, block, attempt).await
}

/// A block fetch's outcome, tried again at the address shuckle knows now
/// when the listed one failed, and checked against the block's CRC.
async fn fetch_checked(
    state: ReadState,
    index: usize,
    block: FetchedBlock,
    mut attempt: std::result::Result<(BytesMut, u32), (ClientError, Failure, Option<BytesMut>)>,
) -> Fetched {
    let listed = block.address.socket_addr();
    let size = block.size.get();
    if let Err((_, failure, dst)) = &mut attempt
        && matches!(failure.kind, FailureKind::Down | FailureKind::Retry)
        && let Some(current) = state.book.moved(block.block_service_id, listed).await
    {
        let dst = dst.take().unwrap_or_default();
        attempt = fetch_block_into(current, block.block_id, size, dst).await;
    }
    match attempt {
        Ok((buffer, crc)) if crc == block.crc.get() => Fetched { index, buffer, result: Ok(crc) },
        Ok((mut buffer, crc)) => {
            buffer.clear();
            let reason =
                format!("{CORRUPTED} on {listed}: CRC {crc:08x}, the block was written with {:08x}", block.crc.get());
            Fetched { index, buffer, result: Err((FailureKind::Failed, reason)) }
        }
        Err((error, failure, dst)) => {
            let buffer = dst.unwrap_or_default();
            Fetched { index, buffer, result: Err((failure.kind, error.to_string())) }
        }
    }
}

async fn read_blocks(
    state: &ReadState,
    inode: InodeId,
    span: &FileSpan,
    layout: &SpanLayout,
    blocks: &[FetchedBlock],
    mut buffer: BytesMut,
) -> Result<SpanRead> {
    let parity = layout.parity;
    let total = parity.total_blocks();
    let d = parity.data_blocks();
    let mirroring = parity.is_mirroring();
    let span_error = |reason: String| ClientError::Span { inode, offset: span.offset, reason };
    if blocks.len() != total {
        return Err(span_error(format!("{} blocks listed for parity {parity}", blocks.len())));
    }
    for (index, block) in blocks.iter().enumerate() {
        let expected = layout.block_size(index);
        if u64::from(block.size.get()) != expected {
            return Err(span_error(format!(
                "block {index} listed with {} bytes, layout says {expected}",
                block.size.get()
            )));
        }
    }
    // Services this read found down count as stale: tried only when needed.
    let flags: Vec<u8> = blocks
        .iter()
        .map(|block| {
            let avoided = state.avoided(block.block_service_id);
            block.flags | if avoided { wire::shuckle::flags::STALE } else { 0 }
        })
        .collect();
    let known: Vec<bool> = blocks.iter().map(|block| !block.address.is_unknown()).collect();
    let mut choice = BlockChoice::new(parity, &flags, &known);
    let mut notices = Vec::new();
    for (index, block) in blocks.iter().enumerate().take(d) {
        if choice.is_flagged(index) && !mirroring {
            notices.push(format!(
                "block {} of span at {} on {} is flagged ({:#x}) or its service is down; using other blocks",
                block.block_id, span.offset, block.address, flags[index]
            ));
        }
    }

    // Carve the span buffer into the data blocks' places (capacity only:
    // nothing is zeroed). With mirroring every copy is the whole span.
    let size = span.size as usize;
    buffer.clear();
    // A reused buffer that an inline or zero-fill span grew (plain
    // allocation, not aligned) is not used for blocks.
    let aligned = (buffer.spare_capacity_mut().as_ptr() as usize).is_multiple_of(PAGE_BYTES);
    if buffer.capacity() < size || !aligned {
        buffer = span_buffer(size);
    }
    let mut pieces: Vec<Option<BytesMut>> = Vec::with_capacity(d);
    let mut rest = buffer;
    for index in 0..d {
        let piece_size = if mirroring { size } else { layout.block_size(index) as usize };
        let tail = rest.split_off(piece_size);
        pieces.push(Some(rest));
        rest = tail;
    }
    let tail = rest;
    let mut parity_blocks: Vec<Option<BytesMut>> = vec![None; total - d];
    let mut crcs = vec![0u32; d];
    let mut have = vec![false; d];
    let mut good = 0usize;
    // Blocks whose bytes did not match the CRC they were written with.
    let mut corrupted = 0usize;
    let mut mirror_used = None;
    // A parity block fetched into the place of the one data block that
    // will be missing: (its index, the data block's index).
    let mut in_place: Option<(usize, usize)> = None;
    loop {
        let mut batch = choice.next(good);
        if batch.is_empty() {
            break;
        }
        // The data block whose place holds a parity block is fetched after
        // all (a later batch): the parity block moves to a buffer of its own.
        if let Some((parity_index, missing)) = in_place
            && batch.contains(&missing)
        {
            in_place = None;
            move_parity_out(&mut pieces[missing], &mut parity_blocks[parity_index - d]);
        }
        // One data block will be missing: when this parity rebuilds it by
        // XOR, fetch every parity block along (one block more on the wire,
        // no Reed–Solomon decode), the first of them straight into the
        // missing block's place in the span buffer, where the XOR then
        // rebuilds the block in place: a degraded span takes one parity
        // buffer, not P.
        //
        // Where `erasure` is fast on this CPU and the missing block is full-size,
        // the one parity block the batch already holds is enough: it is
        // fetched into the missing block's place and the block is made
        // from it and the other data blocks there (`rebuild`), so a
        // degraded span moves as many bytes as a healthy one.
        let missing_after: Vec<usize> = (0..d).filter(|&index| !have[index] && !batch.contains(&index)).collect();
        let full_size_missing = missing_after.len() == 1
            && layout.block_size(missing_after[0]) == layout.parity_block_size
            && (layout.parity_block_size as usize).is_multiple_of(erasure::CHUNK_BYTES);
        let one_parity = !mirroring && full_size_missing && one_parity_assumed(parity);
        let mut all_parity = false;
        if !mirroring
            && !one_parity
            && missing_after.len() == 1
            && xor_assumed(parity)
            && let Some(more) = choice.take_healthy_parity()
        {
            batch.extend(more);
            all_parity = true;
        }
        if one_parity || all_parity {
            let missing = missing_after[0];
            let parity_size = layout.parity_block_size as usize;
            if in_place.is_none()
                && layout.block_size(missing) == layout.parity_block_size
                && pieces[missing].as_ref().is_some_and(|place| place.capacity() >= parity_size)
                && let Some(&parity_index) = batch.iter().find(|&&index| index >= d)
            {
                in_place = Some((parity_index, missing));
            }
        }
        let mut tasks = JoinSet::new();
        for index in batch {
            let dst = if mirroring {
                pieces[0].take().unwrap_or_default()
            } else if index < d {
                pieces[index].take().unwrap_or_default()
            } else if let Some((parity_index, missing)) = in_place
                && parity_index == index
            {
                pieces[missing].take().unwrap_or_default()
            } else {
                state.parity_buffer(layout.parity_block_size as usize)
            };
            tasks.spawn(fetch_one(state.clone(), index, blocks[index], dst));
        }
        while let Some(joined) = tasks.join_next().await {
            let fetched = joined.map_err(|error| span_error(format!("block reader: {error}")))?;
            let index = fetched.index;
            let slot = if mirroring { 0 } else { index };
            match fetched.result {
                Ok(crc) => {
                    good += 1;
                    mirror_used = Some(index);
                    if slot < d {
                        pieces[slot] = Some(fetched.buffer);
                        crcs[slot] = crc;
                        have[slot] = true;
                    } else {
                        parity_blocks[slot - d] = Some(fetched.buffer);
                    }
                }
                Err((kind, reason)) => {
                    if kind == FailureKind::Down {
                        state.mark_down(blocks[index].block_service_id);
                    }
                    if reason.starts_with(CORRUPTED) {
                        corrupted += 1;
                    }
                    notices.push(format!(
                        "block {} (index {index}) of span at {}: {reason}; reading parity",
                        blocks[index].block_id, span.offset
                    ));
                    if slot < d {
                        pieces[slot] = Some(fetched.buffer);
                    } else if let Some((parity_index, missing)) = in_place
                        && parity_index == index
                    {
                        // The place is the data block's again.
                        in_place = None;
                        pieces[missing] = Some(fetched.buffer);
                    }
                }
            }
        }
        if good >= d {
            break;
        }
    }
    if good < d {
        // Corruption is said first: it is damaged data, not a service down
        // or a metadata problem.
        let what = if corrupted > 0 {
            format!("{CORRUPTED}: {corrupted} blocks do not match their CRC; ")
        } else {
            String::new()
        };
        return Err(span_error(format!(
            "{what}only {good} of the {d} blocks needed could be read ({})",
            notices.join("; ")
        )));
    }
    let reconstructed = if mirroring {
        // Another copy than the first was used.
        mirror_used.is_some_and(|index| index != 0)
    } else {
        have.iter().any(|&present| !present)
    };
    if !mirroring && reconstructed {
        // On a blocking thread: the fetches of the next spans go on meanwhile.
        let written: Vec<u32> = blocks.iter().map(|block| block.crc.get()).collect();
        let (layout_owned, have_owned) = (*layout, have.clone());
        let in_place = in_place.map(|(parity_index, missing)| (parity_index - d, missing));
        let rebuilt = tokio::task::spawn_blocking(move || {
            let result =
                rebuild(&layout_owned, &written, &mut pieces, &mut crcs, &have_owned, &mut parity_blocks, in_place);
            (result, pieces, crcs, parity_blocks)
        })
        .await
        .map_err(|error| span_error(format!("rebuilding: {error}")))?;
        let (result, rebuilt_pieces, rebuilt_crcs, rebuilt_parity) = rebuilt;
        let how = result.map_err(span_error)?;
        (pieces, crcs, parity_blocks) = (rebuilt_pieces, rebuilt_crcs, rebuilt_parity);
        tracing::debug!(offset = span.offset, how = how.as_str(), "span rebuilt");
        notices.push(format!("span at {} reconstructed from parity ({})", span.offset, how.as_str()));
    }
    // The span CRC from the block CRCs: no second pass over the bytes.
    let span_crc = if mirroring { crcs[0] } else { span_crc_from_blocks(&crcs, layout) };
    if span_crc != span.crc {
        return Err(span_error(format!(
            "{CORRUPTED}: span CRC {span_crc:08x} from its blocks, the span was written with {:08x}",
            span.crc
        )));
    }
    for buffer in parity_blocks.into_iter().flatten() {
        state.return_parity_buffer(buffer);
    }
    // Join the pieces back into one buffer: contiguous, so no copy.
    let mut data = BytesMut::new();
    for piece in pieces.into_iter().flatten() {
        data.unsplit(piece);
    }
    data.unsplit(tail);
    data.truncate(size);
    Ok(SpanRead { data, reconstructed, notices })
}

/// The span CRC from its blocks' CRCs: `crc32c_combine` over the blocks,
/// with the operator that appends a block's length of zero bytes built
/// once per length and kept ([`ZerosOperator`]), not built anew on every
/// call: the `crc32c` crate's combine squares a 32×32 bit matrix some 25
/// times per call (for 4 MiB), about 3 % of a healthy cat's client CPU for
/// four calls per span.
fn span_crc_from_blocks(crcs: &[u32], layout: &SpanLayout) -> u32 {
    thread_local! {
        static KEPT: RefCell<Vec<ZerosOperator>> = const { RefCell::new(Vec::new()) };
    }
    KEPT.with_borrow_mut(|kept| {
        let mut crc = 0u32;
        for (index, block_crc) in crcs.iter().enumerate() {
            let len = layout.block_size(index);
            let operator = match kept.iter().position(|operator| operator.len == len) {
                Some(found) => &kept[found],
                None => {
                    if kept.len() >= ZEROS_OPERATORS_KEPT {
                        kept.remove(0);
                    }
                    kept.push(ZerosOperator::new(len));
                    &kept[kept.len() - 1]
                }
            };
            crc = operator.combine(crc, *block_crc);
        }
        crc
    })
}

/// Block lengths whose [`ZerosOperator`] a thread keeps (a span has at
/// most two: its full blocks' and its last block's).
const ZEROS_OPERATORS_KEPT: usize = 4;

/// The linear map that appends `len` zero bytes to a CRC32C register, as a
/// 32×32 bit matrix (column i: the image of bit i), so that
/// `crc32c_combine(a, b, len)` is `combine(a, b)`: the map applied to `a`,
/// XORed with `b`.
struct ZerosOperator {
    len: u64,
    columns: [u32; 32],
}

impl ZerosOperator {
    fn new(len: u64) -> Self {
        // One zero bit: shift right, folding the polynomial in.
        let mut power = [0u32; 32];
        power[0] = 0x82F6_3B78;
        for (bit, column) in power.iter_mut().enumerate().skip(1) {
            *column = 1 << (bit - 1);
        }
        // One zero byte.
        for _ in 0..3 {
            power = compose(&power, &power);
        }
        let mut columns: [u32; 32] = std::array::from_fn(|bit| 1 << bit);
        let mut rest = len;
        while rest > 0 {
            if rest & 1 == 1 {
                columns = compose(&power, &columns);
            }
            rest >>= 1;
            if rest > 0 {
                power = compose(&power, &power);
            }
        }
        Self { len, columns }
    }

    /// `crc32c_combine(a, b, self.len)`.
    fn combine(&self, a: u32, b: u32) -> u32 {
        if self.len == 0 {
            return a;
        }
        apply(&self.columns, a) ^ b
    }
}

fn apply(columns: &[u32; 32], mut vector: u32) -> u32 {
    let mut sum = 0;
    let mut bit = 0;
    while vector != 0 {
        if vector & 1 == 1 {
            sum ^= columns[bit];
        }
        vector >>= 1;
        bit += 1;
    }
    sum
}

/// The map `outer ∘ inner`.
fn compose(outer: &[u32; 32], inner: &[u32; 32]) -> [u32; 32] {
    std::array::from_fn(|bit| apply(outer, inner[bit]))
}

/// Span buffers of at least this many bytes start on a boundary of it and
/// ask for transparent huge pages (see [`span_buffer`]).
const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Smaller span buffers start on a page boundary.
const PAGE_BYTES: usize = 4 << 10;

/// A new span buffer of `size` bytes' capacity, nothing written (so not
/// yet backed by memory), starting on a 2 MiB boundary with its pages
/// marked for transparent huge pages (where the kernel leaves that to the
/// program), or on a page boundary when it is smaller than a huge page.
///
/// Both matter to the kernel's copy from the socket, the client's largest
/// cost. The block bytes come from the sender's page cache, page-aligned;
/// a destination 16 bytes past a page start (what `malloc` returns for a
/// large allocation) made that copy 1.7× (a C receiver) to 3.3× (`eggs
/// cat`) slower per byte on this machine's AMD cores; huge pages spare it TLB misses, and an aligned start lets every
/// page of the buffer be huge. Figures in `perf/results/2026-11-27-profile-2.md`.
pub(crate) fn span_buffer(size: usize) -> BytesMut {
    let align = if size >= HUGE_PAGE_BYTES { HUGE_PAGE_BYTES } else { PAGE_BYTES };
    let mut allocation = BytesMut::with_capacity(size + align);
    let start = allocation.spare_capacity_mut().as_ptr() as usize;
    // The buffer proper starts at the first boundary; the padding before
    // it is never touched (so never backed by memory) and goes with the
    // allocation when the last piece of the buffer is dropped.
    let mut buffer = allocation.split_off(start.next_multiple_of(align) - start);
    let start = buffer.spare_capacity_mut().as_ptr() as usize;
    assert_eq!(start % align, 0, "span buffers start on a boundary");
    let end = (start + size) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if align == HUGE_PAGE_BYTES && end > start {
        // SAFETY: the range lies within the buffer's own allocation;
        // madvise only changes how its pages will be backed.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
    buffer
}

/// How a degraded span's missing data was rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rebuilt {
    /// One data block, as the XOR of every parity block and the other data blocks.
    Xor,
    /// The same, in its place in the span buffer, where the first parity
    /// block was fetched.
    XorInPlace,
    /// One data block from one parity block and the other data blocks
    /// (`erasure`), in its place in the span buffer, where that parity
    /// block was fetched.
    ParityInPlace,
    /// A Reed–Solomon decode.
    Decode,
}

impl Rebuilt {
    fn as_str(self) -> &'static str {
        match self {
            Self::Xor => "xor",
            Self::XorInPlace => "xor in place",
            Self::ParityInPlace => "one parity block in place",
            Self::Decode => "decode",
        }
    }
}

/// True when, for `parity`, the XOR of all P parity blocks equals the XOR
/// of all D data blocks (zero-padded to the parity block size), so that a
/// span missing one data block rebuilds it with XORs alone, about 50×
/// cheaper than `reed_solomon_simd`'s decode (2.3 ms against 155 ms for a
/// 4 MiB block of RS 4+2 on this machine, under load). That holds for the
/// library's code when P is a power of two (RS D+1, D+2, D+4, D+8 for
/// the D tried) and not otherwise (D+3, and D+5..7 for D ≥ 5). It is
/// found out once per parity by encoding a small probe, not assumed, so a
/// different encoder only loses the shortcut (gcd's rebuild relies on
/// that). The read path uses `xor_assumed` instead.
pub fn xor_rebuilds(parity: wire::span::Parity) -> bool {
    static KNOWN: Mutex<Vec<(u8, bool)>> = Mutex::new(Vec::new());
    if parity.is_mirroring() || parity.parity_blocks() == 0 {
        return false;
    }
    let mut known = KNOWN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&(_, holds)) = known.iter().find(|(code, _)| *code == parity.0) {
        return holds;
    }
    let holds = xor_identity_holds(parity.data_blocks(), parity.parity_blocks());
    known.push((parity.0, holds));
    holds
}

/// The read path's [`xor_rebuilds`], assumed from P (a power of two), not
/// probed: the probe's encode set up the library's tables, 0.4–1 % of a
/// degraded cat's samples. Safe because every block the read path rebuilds
/// by XOR is checked against the CRC it was written with and decoded
/// instead when it does not match ([`rebuild`]): a different encoder would
/// only cost a wasted XOR and parity fetch per span. The unit tests check
/// that the assumption is [`xor_rebuilds`]'s answer for this encoder.
fn xor_assumed(parity: wire::span::Parity) -> bool {
    !parity.is_mirroring() && parity.parity_blocks().is_power_of_two()
}

/// True when a span missing one full-size data block reads one parity
/// block, not every one: where `erasure` multiplies with SIMD
/// (`erasure::fast`), the rebuild from one parity block costs about what
/// the XOR of every parity block does, and one block less is fetched, received and
/// CRC-checked (a degraded RS 4+2 span moves 16 MiB, not 20). Safe for
/// the same reason as [`xor_assumed`]: the rebuilt block is checked
/// against the CRC it was written with and decoded otherwise.
fn one_parity_assumed(parity: wire::span::Parity) -> bool {
    !parity.is_mirroring() && parity.parity_blocks() >= 1 && erasure::fast()
}

/// Encodes D pseudo-random 128-byte shards and compares the XOR of the
/// parity shards with the XOR of the data shards.
fn xor_identity_holds(d: usize, p: usize) -> bool {
    const PROBE_BYTES: usize = 128;
    let data = erasure::probe_shards(d, PROBE_BYTES);
    let Ok(parity) = reed_solomon_simd::encode(d, p, &data) else { return false };
    let mut sum = [0u8; PROBE_BYTES];
    for shard in data.iter().map(Vec::as_slice).chain(parity.iter().map(Vec::as_slice)) {
        xor_into(&mut sum, shard);
    }
    sum.iter().all(|&byte| byte == 0)
}

/// `dst ^= src` over `dst`'s length (`src` at least as long).
fn xor_into(dst: &mut [u8], src: &[u8]) {
    xor_add(dst, &[src]);
}

/// Bytes XORed at a time by [`xor_rebuild`]: small enough that the
/// destination stays in the L1 cache while every source is added in and
/// its CRC taken.
const XOR_CHUNK_BYTES: usize = 16 << 10;
/// Bytes XORed as one value: one AVX2 register where the CPU has AVX2
/// (`with_widest_vectors`), else two SSE2 registers (the only vector
/// width every x86-64 has, so one build serves every host); LLVM
/// vectorises either from plain array code.
const XOR_LANE_BYTES: usize = 32;
/// Sources XORed in one pass over the destination: an RS 4+2 rebuild's five
/// (three data blocks, two parity) in one, so every destination byte is
/// written once and never read back.
const XOR_GROUP_MAX: usize = 6;

/// Puts into each byte of `dst` (with `put`) the XOR of the sources' bytes
/// at that place, a lane of [`XOR_LANE_BYTES`] at a time (each source at
/// least as long as `dst`).
#[inline(always)]
fn xor_lanes<T, const N: usize>(dst: &mut [T], sources: [&[u8]; N], put: impl Fn(&mut T, u8)) {
    let len = dst.len();
    let sources = sources.map(|source| source[..len].as_chunks::<XOR_LANE_BYTES>());
    let (dst_lanes, dst_tail) = dst.as_chunks_mut::<XOR_LANE_BYTES>();
    for (index, out) in dst_lanes.iter_mut().enumerate() {
        let mut lane = [0u8; XOR_LANE_BYTES];
        for (source_lanes, _) in &sources {
            for (byte, from) in lane.iter_mut().zip(&source_lanes[index]) {
                *byte ^= from;
            }
        }
        for (out, byte) in out.iter_mut().zip(lane) {
            put(out, byte);
        }
    }
    for (index, out) in dst_tail.iter_mut().enumerate() {
        put(out, sources.iter().fold(0, |byte, (_, tail)| byte ^ tail[index]));
    }
}

/// [`xor_lanes`] for 1 to [`XOR_GROUP_MAX`] sources, each at least as
/// long as the destination.
macro_rules! xor_group {
    ($dst:expr, $sources:expr, $put:expr) => {
        match *$sources {
            [] => {}
            [a] => xor_lanes($dst, [a], $put),
            [a, b] => xor_lanes($dst, [a, b], $put),
            [a, b, c] => xor_lanes($dst, [a, b, c], $put),
            [a, b, c, d] => xor_lanes($dst, [a, b, c, d], $put),
            [a, b, c, d, e] => xor_lanes($dst, [a, b, c, d, e], $put),
            [a, b, c, d, e, f, ref rest @ ..] => {
                debug_assert!(rest.is_empty(), "at most {XOR_GROUP_MAX} sources in a group");
                xor_lanes($dst, [a, b, c, d, e, f], $put)
            }
        }
    };
}

/// Runs `$body` (XOR code over [`xor_lanes`], inlined) compiled for AVX2
/// when the CPU has it (one 32-byte lane a register instead of two), else
/// as built for every x86-64 (SSE2). Paired on this machine, a cat of
/// 1 GiB with one block service down (one-parity rebuilds, whose XOR of
/// the data blocks was a fifth of the client's samples) read 1.04× as
/// fast with 0.94× the client's CPU (16 rounds, 13 won;
/// `perf/results/2026-11-29-s17-dp17.md`).
macro_rules! with_widest_vectors {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            fn avx2<R>(body: impl FnOnce() -> R) -> R {
                body()
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                unsafe { avx2(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

/// Writes into every byte of `dst` the XOR of `sources` (1 to
/// [`XOR_GROUP_MAX`], none shorter than `dst`): `dst` is only written.
fn xor_write(dst: &mut [MaybeUninit<u8>], sources: &[&[u8]]) {
    with_widest_vectors!(xor_group!(&mut *dst, sources, |out: &mut MaybeUninit<u8>, byte| {
        out.write(byte);
    }))
}

/// Writes into every byte of `dst` the XOR of `sources` (at least one,
/// none shorter than `dst`): [`xor_write`] over initialised bytes, for
/// `crate::erasure`.
pub(crate) fn xor_set(dst: &mut [u8], sources: &[&[u8]]) {
    let (first, rest) = sources.split_at(sources.len().min(XOR_GROUP_MAX));
    with_widest_vectors!(xor_group!(&mut *dst, first, |out: &mut u8, byte| *out = byte));
    xor_add(dst, rest);
}

/// `dst ^=` the XOR of `sources` (at most [`XOR_GROUP_MAX`] a pass).
pub(crate) fn xor_add(dst: &mut [u8], sources: &[&[u8]]) {
    for group in sources.chunks(XOR_GROUP_MAX) {
        with_widest_vectors!(xor_group!(&mut *dst, group, |out: &mut u8, byte| *out ^= byte))
    }
}

/// Writes into `out` (cleared) the first `size` bytes of the XOR of
/// `first` and `sources`, each zero-padded to `size` (`first` must be at
/// least `size` long: a parity block). One pass over the output.
pub fn xor_rebuild(out: &mut BytesMut, size: usize, first: &[u8], sources: &[&[u8]]) {
    xor_rebuild_chunks(out, size, first, sources, |_| {});
}

/// [`xor_rebuild`], returning the CRC32C of the bytes written to `out`,
/// computed chunk by chunk right after each chunk is made, while it is
/// still in the L1 cache: the rebuilt bytes themselves are checked, with no
/// second pass over them from memory.
pub fn xor_rebuild_checked(out: &mut BytesMut, size: usize, first: &[u8], sources: &[&[u8]]) -> u32 {
    let mut crc = 0u32;
    xor_rebuild_chunks(out, size, first, sources, |chunk| crc = crc32c_append(crc, chunk));
    crc
}

/// Each chunk of the output is written once, as the XOR of up to
/// [`XOR_GROUP_MAX`] whole sources read side by side (no copy of the first
/// source and read-modify-write per source, as before: 1.5× the CPU per
/// block, `perf/results/2026-11-28-s10-dp11e.md`); further sources, and
/// the part of a short one that reaches into the chunk, are added to it
/// while it is in the L1 cache.
fn xor_rebuild_chunks(out: &mut BytesMut, size: usize, first: &[u8], sources: &[&[u8]], mut made: impl FnMut(&[u8])) {
    let first = &first[..size];
    out.clear();
    out.reserve(size);
    let mut whole: Vec<&[u8]> = Vec::with_capacity(sources.len() + 1);
    let mut at = 0;
    while at < size {
        let end = (at + XOR_CHUNK_BYTES).min(size);
        whole.clear();
        whole.push(&first[at..end]);
        whole.extend(sources.iter().filter(|source| source.len() >= end).map(|source| &source[at..end]));
        let (written, added) = whole.split_at(whole.len().min(XOR_GROUP_MAX));
        xor_write(&mut out.spare_capacity_mut()[..end - at], written);
        // SAFETY: `xor_write` wrote every byte of `at..end` (the spare
        // capacity from the length `at` on, of `end - at` bytes: at least
        // one source, `first`, covers the whole chunk).
        unsafe { out.set_len(end) };
        let chunk = &mut out[at..end];
        xor_add(chunk, added);
        for source in sources.iter().filter(|source| source.len() > at && source.len() < end) {
            xor_into(&mut chunk[..source.len() - at], &source[at..]);
        }
        made(chunk);
        at = end;
    }
}

/// Moves a parity block that was fetched into a data block's place
/// (`place`) to a buffer of its own (a copy; only when a degraded span
/// does not go as planned), and leaves the place empty for the data block.
fn move_parity_out(place: &mut Option<BytesMut>, parity_block: &mut Option<BytesMut>) {
    if let Some(mut bytes) = parity_block.take() {
        *parity_block = Some(BytesMut::from(&bytes[..]));
        bytes.clear();
        *place = Some(bytes);
    }
}

/// `out ^=` the XOR of `sources`, each zero-padded to `out`'s length (a
/// longer one is cut), chunk by chunk; returns the CRC32C of the result,
/// each chunk's taken right after it is made, while it is in the L1 cache.
/// `out` holds a parity block received into the missing block's place, so
/// the pass reads it and the sources once and writes each byte once, as
/// [`xor_rebuild_checked`] does with a separate first source. Applied
/// twice with the same sources it gives `out` back.
fn xor_in_place_checked(out: &mut [u8], sources: &[&[u8]]) -> u32 {
    let size = out.len();
    let mut crc = 0u32;
    let mut whole: Vec<&[u8]> = Vec::with_capacity(sources.len());
    let mut at = 0;
    while at < size {
        let end = (at + XOR_CHUNK_BYTES).min(size);
        whole.clear();
        whole.extend(sources.iter().filter(|source| source.len() >= end).map(|source| &source[at..end]));
        let chunk = &mut out[at..end];
        xor_add(chunk, &whole);
        for source in sources.iter().filter(|source| source.len() > at && source.len() < end) {
            xor_into(&mut chunk[..source.len() - at], &source[at..]);
        }
        crc = crc32c_append(crc, chunk);
        at = end;
    }
    crc
}

/// Rebuilds the missing data blocks (`have[i]` false) into their pieces from
/// the present data blocks and parity blocks, and checks each rebuilt
/// block against the CRC it was written with. One missing block with every
/// parity block at hand is rebuilt by XOR when the parity allows it
/// (`xor_assumed`), in place in its piece of the span buffer; else, or
/// when the XOR's CRC does not match, Reed–Solomon decodes.
///
/// `in_place`: parity block `.0` was fetched into the place of data block
/// `.1` (see `read_blocks`). The XOR then rebuilds that block in place;
/// if it is not taken, or its CRC does not match, the parity block moves
/// to a buffer of its own (the XOR undone first) and the place is the
/// data block's again.
fn rebuild(
    layout: &SpanLayout,
    written: &[u32],
    pieces: &mut [Option<BytesMut>],
    crcs: &mut [u32],
    have: &[bool],
    parity_blocks: &mut [Option<BytesMut>],
    in_place: Option<(usize, usize)>,
) -> std::result::Result<Rebuilt, String> {
    let d = layout.parity.data_blocks();
    let p = layout.parity.parity_blocks();
    let missing: Vec<usize> = (0..d).filter(|&index| !have[index]).collect();
    let mut xor_refused: Option<String> = None;
    let xor = missing.len() == 1 && parity_blocks.iter().all(Option::is_some) && xor_assumed(layout.parity);
    if let Some((slot, place)) = in_place {
        let fits = parity_blocks[slot].as_ref().is_some_and(|block| block.len() as u64 == layout.block_size(place));
        let one_parity = missing.len() == 1
            && parity_blocks.iter().enumerate().all(|(index, block)| block.is_some() == (index == slot))
            && fits
            && (layout.parity_block_size as usize).is_multiple_of(erasure::CHUNK_BYTES);
        let plan = if one_parity && missing[0] == place { SingleErasure::plan(d, p, slot, place) } else { None };
        if let Some(plan) = plan {
            let Some(mut out) = parity_blocks[slot].take() else { return Err("no parity block".into()) };
            let size = layout.block_size(place) as usize;
            let block = |index: usize| pieces[index].as_deref().unwrap_or_default();
            let crc = plan.rebuild(&mut out, block, size);
            if crc == written[place] {
                out.truncate(size);
                pieces[place] = Some(out);
                crcs[place] = crc;
                return Ok(Rebuilt::ParityInPlace);
            }
            // Undone: the parity block again, for the decode.
            plan.undo(&mut out, block);
            parity_blocks[slot] = Some(out);
            xor_refused = Some(format!("from one parity block it has CRC {crc:08x}; "));
        } else if xor && missing[0] == place && fits {
            let Some(mut out) = parity_blocks[slot].take() else { return Err("no parity block".into()) };
            let parity_present = parity_blocks.iter().flatten().map(|block| &block[..]);
            let data_present = pieces.iter().flatten().map(|piece| &piece[..]);
            let sources: Vec<&[u8]> = parity_present.chain(data_present).collect();
            let crc = xor_in_place_checked(&mut out, &sources);
            if crc == written[place] {
                pieces[place] = Some(out);
                crcs[place] = crc;
                return Ok(Rebuilt::XorInPlace);
            }
            // Undone (XOR is its own inverse): the parity block again, for the decode.
            xor_in_place_checked(&mut out, &sources);
            parity_blocks[slot] = Some(out);
            xor_refused = Some(format!("by XOR it has CRC {crc:08x}; "));
        }
        move_parity_out(&mut pieces[place], &mut parity_blocks[slot]);
    } else if xor {
        let index = missing[0];
        let size = layout.block_size(index) as usize;
        let mut parity_present = parity_blocks.iter().flatten().map(|block| &block[..]);
        let Some(first) = parity_present.next() else { return Err("no parity block".into()) };
        if first.len() < size {
            return Err(format!("parity block of {} bytes for a block of {size}", first.len()));
        }
        let mut out = pieces[index].take().unwrap_or_default();
        let data_present = pieces.iter().flatten().map(|piece| &piece[..]);
        let sources: Vec<&[u8]> = parity_present.chain(data_present).collect();
        let crc = xor_rebuild_checked(&mut out, size, first, &sources);
        pieces[index] = Some(out);
        if crc == written[index] {
            crcs[index] = crc;
            return Ok(Rebuilt::Xor);
        }
        // The XOR identity is assumed (`xor_assumed`): decode instead.
        xor_refused = Some(format!("by XOR it has CRC {crc:08x}; "));
    }
    // The missing blocks' buffers are taken out while the others are lent
    // to the decoder, and filled from what it restores.
    let mut outs: Vec<(usize, BytesMut)> =
        (0..d).filter(|&index| !have[index]).map(|index| (index, pieces[index].take().unwrap_or_default())).collect();
    let data: Vec<Option<&[u8]>> = pieces.iter().map(|piece| piece.as_deref()).collect();
    let parity: Vec<Option<&[u8]>> = parity_blocks.iter().map(|block| block.as_deref()).collect();
    let decoded = decode_missing_data(layout, &data[..d], &parity[..p], |index, bytes| {
        let Some((_, out)) = outs.iter_mut().find(|(missing, _)| *missing == index) else {
            return Err(format!("block {index} restored but not missing"));
        };
        out.clear();
        out.extend_from_slice(bytes);
        Ok(())
    });
    for (index, out) in outs {
        pieces[index] = Some(out);
    }
    decoded?;
    for index in missing {
        let piece = pieces[index].as_deref().unwrap_or_default();
        if piece.len() as u64 != layout.block_size(index) {
            return Err(format!("block {index} could not be rebuilt"));
        }
        let crc = crc32c(piece);
        if crc != written[index] {
            let xor = xor_refused.as_deref().unwrap_or_default();
            return Err(format!(
                "{CORRUPTED}: rebuilt block {index} has CRC {crc:08x} ({xor}decoded), written with {:08x}",
                written[index]
            ));
        }
        crcs[index] = crc;
    }
    Ok(Rebuilt::Decode)
}

/// Rebuilds the missing data blocks of a Reed–Solomon span with this
/// thread's decoder, reset for each span (its work space, several shards
/// long, is allocated and zeroed once per thread, not once per span). The
/// read path and gcd's rebuild both decode through here.
///
/// `data` holds the D data blocks and `parity` the P parity blocks, `None`
/// where missing; a present data block has exactly its layout size (the
/// last one may be shorter than a parity block: it is zero-padded for the
/// decoder), a present parity block the parity block size. As many parity
/// blocks as data blocks are missing are used, the first present ones.
/// `restored` gets each rebuilt data block's index and bytes (its layout
/// size, not the padded shard); nothing is checked against CRCs here.
pub fn decode_missing_data(
    layout: &SpanLayout,
    data: &[Option<&[u8]>],
    parity: &[Option<&[u8]>],
    mut restored: impl FnMut(usize, &[u8]) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    thread_local! {
        static DECODER: RefCell<Option<reed_solomon_simd::ReedSolomonDecoder>> = const { RefCell::new(None) };
    }
    let (d, p) = (layout.parity.data_blocks(), layout.parity.parity_blocks());
    let shard = layout.parity_block_size as usize;
    if layout.parity.is_mirroring() || data.len() != d || parity.len() != p {
        return Err(format!("{} data and {} parity blocks for parity {}", data.len(), parity.len(), layout.parity));
    }
    for (index, block) in data.iter().enumerate() {
        if let Some(block) = block
            && block.len() as u64 != layout.block_size(index)
        {
            return Err(format!("block {index} is {} bytes, not {}", block.len(), layout.block_size(index)));
        }
    }
    if let Some((index, block)) =
        parity.iter().enumerate().find(|(_, block)| block.is_some_and(|block| block.len() != shard))
    {
        return Err(format!("parity block {index} is {} bytes, not {shard}", block.map_or(0, <[u8]>::len)));
    }
    let missing = data.iter().filter(|block| block.is_none()).count();
    if missing == 0 {
        return Ok(());
    }
    let rs = |error: reed_solomon_simd::Error| format!("Reed–Solomon: {error}");
    DECODER.with_borrow_mut(|slot| {
        let decoder = match slot {
            Some(decoder) => {
                decoder.reset(d, p, shard).map_err(rs)?;
                decoder
            }
            None => slot.insert(reed_solomon_simd::ReedSolomonDecoder::new(d, p, shard).map_err(rs)?),
        };
        let mut padded = Vec::new();
        for (index, block) in data.iter().enumerate() {
            let Some(block) = block else { continue };
            if block.len() == shard {
                decoder.add_original_shard(index, block).map_err(rs)?;
            } else {
                padded.clear();
                padded.extend_from_slice(block);
                padded.resize(shard, 0);
                decoder.add_original_shard(index, &padded).map_err(rs)?;
            }
        }
        let present = parity.iter().enumerate().filter_map(|(index, block)| Some((index, (*block)?)));
        for (index, block) in present.take(missing) {
            decoder.add_recovery_shard(index, block).map_err(rs)?;
        }
        let result = decoder.decode().map_err(rs)?;
        for (index, bytes) in result.restored_original_iter() {
            let size = layout.block_size(index) as usize;
            restored(index, bytes.get(..size).unwrap_or(bytes))?;
        }
        Ok(())
    })
}

/// Every span of `inode` in offset order, checked to cover `0..size`
/// without gaps, and the file's size.
pub async fn list_spans(client: &Client, inode: InodeId) -> Result<(Vec<FileSpan>, u64)> {
    let mut spans: Vec<FileSpan> = Vec::new();
    let mut offset = 0u64;
    for _ in 0..SPAN_PAGES_MAX {
        let page = client.fetch_spans(inode, offset).await?;
        spans.extend(page.spans);
        if page.next_offset == 0 {
            break;
        }
        if page.next_offset <= offset {
            return Err(ClientError::Inconsistent(format!("fetch_spans of {inode} does not advance")));
        }
        offset = page.next_offset;
    }
    let mut size = 0u64;
    for span in &spans {
        if span.offset != size {
            return Err(ClientError::Inconsistent(format!(
                "file {inode}: span at {} where {size} was expected",
                span.offset
            )));
        }
        size += u64::from(span.size);
    }
    Ok((spans, size))
}

/// Reads byte ranges of one file: the span list is fetched once, the last
/// span read is kept, so sequential small reads (a FUSE mount's) fetch each
/// span once.
pub struct FileReader {
    client: Client,
    inode: InodeId,
    spans: Vec<FileSpan>,
    size: u64,
    state: ReadState,
    cached: Option<(usize, BytesMut)>,
}

impl FileReader {
    /// Lists the spans of `inode`.
    pub async fn open(client: &Client, inode: InodeId) -> Result<Self> {
        let (spans, size) = list_spans(client, inode).await?;
        Ok(Self { client: client.clone(), inode, spans, size, state: ReadState::new(client), cached: None })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the file, none
    /// past it), every byte CRC-checked.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = self.spans.partition_point(|span| span.offset + u64::from(span.size) <= at);
            let Some(span) = self.spans.get(index).cloned() else { break };
            if self.cached.as_ref().is_none_or(|(cached, _)| *cached != index) {
                let buffer = self.cached.take().map(|(_, buffer)| buffer).unwrap_or_default();
                let read = read_span(self.state.clone(), self.inode, span.clone(), buffer).await?;
                self.cached = Some((index, read.data));
            }
            let Some((_, data)) = &self.cached else { break };
            let from = (at - span.offset) as usize;
            let to = ((end - span.offset) as usize).min(data.len());
            out.extend_from_slice(&data[from..to]);
            at = span.offset + to as u64;
        }
        let _ = &self.client;
        Ok(out)
    }
}

/// The reading side's outcome, seen by the consumer at end of input.
const PIPE_READ_RUNNING: u8 = 0;
const PIPE_READ_OK: u8 = 1;
const PIPE_READ_FAILED: u8 = 2;

/// A bounded in-memory pipe whose end of input is an error unless the
/// producer declared the whole file read and checked: a consumer that
/// writes a new file (`eggs cp`) or an HTTP body (shuckle's download) then
/// fails instead of taking a truncated read for the whole file.
pub fn checked_pipe(capacity_bytes: usize) -> (PipeSource, CheckedPipe) {
    let (writer, reader) = tokio::io::duplex(capacity_bytes);
    let state = Arc::new(AtomicU8::new(PIPE_READ_RUNNING));
    (PipeSource { writer, state: Arc::clone(&state) }, CheckedPipe { inner: reader, state })
}

/// The producer's end of a [`checked_pipe`].
pub struct PipeSource {
    /// Where the file's bytes go ([`read_file`] writes here).
    pub writer: DuplexStream,
    state: Arc<AtomicU8>,
}

impl PipeSource {
    /// Ends the input: `complete` when every byte of the file was read and
    /// checked, otherwise the consumer's next read at the end fails.
    pub fn finish(self, complete: bool) {
        self.state.store(if complete { PIPE_READ_OK } else { PIPE_READ_FAILED }, Ordering::SeqCst);
    }
}

/// The consumer's end of a [`checked_pipe`].
pub struct CheckedPipe {
    inner: DuplexStream,
    state: Arc<AtomicU8>,
}

impl AsyncRead for CheckedPipe {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() == before
            && self.state.load(Ordering::SeqCst) != PIPE_READ_OK
        {
            return Poll::Ready(Err(io::Error::other("the source file could not be read to its end")));
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::crc::crc32c_combine;
    use wire::span::Parity;

    /// Every data block of a span (the last one short, so zero-padded in
    /// the code) is rebuilt exactly from the others: by XOR when the
    /// parity allows it and every parity block is there, by decoding when
    /// one parity block is missing too or the parity does not allow XOR.
    #[test]
    fn a_missing_data_block_is_rebuilt_by_xor_or_decode() {
        let mut state = 7u64;
        let span: Vec<u8> = (0..1_000_003)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect();
        for (d, p, xor) in [(4, 2, true), (3, 1, true), (10, 4, true), (4, 3, false), (2, 2, true)] {
            assert_eq!(xor_rebuilds(Parity::new(d, p).expect("parity")), xor, "{d}+{p}");
            // What the read path assumes is what the encoder does.
            assert_eq!(xor_assumed(Parity::new(d, p).expect("parity")), xor, "{d}+{p}: assumed as probed");
            let layout = SpanLayout::new(span.len() as u64, Parity::new(d, p).expect("parity")).expect("layout");
            let mut parity = vec![Vec::new(); p as usize];
            layout.encode_parity(&span, &mut parity).expect("encode");
            let data: Vec<&[u8]> = (0..d as usize)
                .map(|index| {
                    let range = layout.data_block_range(index);
                    &span[range.start as usize..range.end as usize]
                })
                .collect();
            let written: Vec<u32> =
                data.iter().map(|block| crc32c(block)).chain(parity.iter().map(|b| crc32c(b))).collect();
            for lost in 0..d as usize {
                for parity_lost in [None, Some(0)] {
                    if parity_lost.is_some() && p < 2 {
                        continue;
                    }
                    let mut pieces: Vec<Option<BytesMut>> = data
                        .iter()
                        .enumerate()
                        .map(|(index, block)| Some(BytesMut::from(if index == lost { &b"stale"[..] } else { block })))
                        .collect();
                    let have: Vec<bool> = (0..d as usize).map(|index| index != lost).collect();
                    let mut parity_blocks: Vec<Option<BytesMut>> = parity
                        .iter()
                        .enumerate()
                        .map(|(index, block)| (Some(index) != parity_lost).then(|| BytesMut::from(&block[..])))
                        .collect();
                    let mut crcs: Vec<u32> = written[..d as usize].to_vec();
                    crcs[lost] = 0;
                    let how = rebuild(&layout, &written, &mut pieces, &mut crcs, &have, &mut parity_blocks, None)
                        .unwrap_or_else(|error| panic!("{d}+{p}, block {lost} lost: {error}"));
                    let expected = if xor && parity_lost.is_none() { Rebuilt::Xor } else { Rebuilt::Decode };
                    assert_eq!(how, expected, "{d}+{p}, block {lost} lost, parity {parity_lost:?} lost");
                    assert!(pieces[lost].as_deref() == Some(data[lost]), "{d}+{p}: block {lost} rebuilt exactly");
                    assert_eq!(crcs[lost], written[lost]);
                }
            }
        }
    }

    /// The kept operators give what `crc32c_combine` gives, for lengths
    /// of one byte to beyond 4 GiB and registers with few and many bits
    /// set, and a span's CRC from its blocks is the CRC of its bytes.
    #[test]
    fn zeros_operators_combine_as_crc32c_combine() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        for len in [0u64, 1, 2, 3, 7, 8, 255, 4096, 65_537, 4 << 20, (4 << 20) + 3, 5 << 30] {
            let operator = ZerosOperator::new(len);
            for a in [0u32, 1, 0x8000_0000, u32::MAX, next(), next(), next()] {
                let b = next();
                assert_eq!(operator.combine(a, b), crc32c_combine(a, b, len), "len {len}, a {a:08x}");
            }
        }
        let span: Vec<u8> = (0..1_000_003u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let layout = SpanLayout::new(span.len() as u64, Parity::new(4, 2).expect("parity")).expect("layout");
        let crcs: Vec<u32> = (0..4)
            .map(|index| {
                let range = layout.data_block_range(index);
                crc32c(&span[range.start as usize..range.end as usize])
            })
            .collect();
        for _ in 0..2 {
            assert_eq!(span_crc_from_blocks(&crcs, &layout), crc32c(&span), "from new and from kept operators");
        }
    }

    /// The read-ahead of a small file stays a sixteenth of it, and one span
    /// when that holds fewer than two (four cats of 256 MiB each fault in
    /// 16 MiB of buffers, not 64 or 32), not below the minimum; a large or
    /// unknown file's grows to the maximum, two spans at least.
    #[test]
    fn the_read_ahead_is_bounded_by_the_file_size() {
        const MIB: u64 = 1 << 20;
        assert_eq!(read_ahead_max(Some(256 * MIB)), 16 * MIB);
        assert_eq!(read_ahead_max(Some(512 * MIB)), 32 * MIB);
        assert_eq!(read_ahead_max(Some(10 * MIB)), READ_AHEAD_BYTES_MIN);
        assert_eq!(read_ahead_max(Some(1 << 30)), READ_AHEAD_BYTES_MAX);
        assert_eq!(read_ahead_max(None), READ_AHEAD_BYTES_MAX);
        // Four cats of 256 MiB in 16 MiB spans: one span each in flight.
        assert_eq!(read_ahead_spans_min(Some(256 * MIB), 16 * MIB), 1);
        assert_eq!(read_ahead_spans_min(Some(10 * MIB), 16 * MIB), 1);
        assert_eq!(read_ahead_spans_min(Some(1 << 30), 16 * MIB), READ_AHEAD_SPANS_MIN);
        assert_eq!(read_ahead_spans_min(Some(512 * MIB), 16 * MIB), READ_AHEAD_SPANS_MIN);
        assert_eq!(read_ahead_spans_min(None, 16 * MIB), READ_AHEAD_SPANS_MIN);
        assert_eq!(read_ahead_spans_min(Some(256 * MIB), 0), READ_AHEAD_SPANS_MIN);
    }

    /// `xor_rebuild` equals a byte-by-byte XOR of its inputs, each
    /// zero-padded, for sizes across chunk boundaries, sources shorter than
    /// the output (also shorter than a whole chunk's start), and none.
    #[test]
    fn xor_rebuild_is_the_padded_xor_of_its_inputs() {
        let bytes = |len: usize, seed: u8| -> Vec<u8> {
            (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left(u32::from(seed % 7))).collect()
        };
        let size = 3 * XOR_CHUNK_BYTES + 77;
        let first = bytes(size + 9, 1);
        // More sources than one pass takes (`XOR_GROUP_MAX`), some longer
        // than the output, some ending inside a chunk or a lane.
        let lengths = [size, size - 5, XOR_CHUNK_BYTES + 3, 10, 0, size + 40, size, 2 * XOR_CHUNK_BYTES + 33, size];
        for count in 0..=lengths.len() {
            let sources: Vec<Vec<u8>> =
                lengths[..count].iter().enumerate().map(|(i, &len)| bytes(len, i as u8 + 2)).collect();
            let views: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
            let mut expected = first[..size].to_vec();
            for source in &sources {
                for (out, byte) in expected.iter_mut().zip(source) {
                    *out ^= byte;
                }
            }
            let mut out = BytesMut::new();
            xor_rebuild(&mut out, size, &first, &views);
            assert_eq!(&out[..], &expected[..], "{count} sources");
            // Again into a reused, dirty buffer, with the CRC of what it made.
            let crc = xor_rebuild_checked(&mut out, size, &first, &views);
            assert_eq!(&out[..], &expected[..], "{count} sources, reused buffer");
            assert_eq!(crc, crc32c(&expected), "{count} sources: the CRC of the rebuilt bytes");
        }
    }

    /// The parity buffers of as many degraded RS 4+2 spans of 16 MiB as the
    /// read-ahead holds (10 blocks of 4 MiB) all come back for reuse: none
    /// is freed and made anew (8 were kept before, 2 made anew each round).
    #[test]
    fn parity_buffers_of_a_full_read_ahead_are_all_reused() {
        let buffers = ParityBuffers::default();
        let block = 4 << 20;
        let taken: Vec<BytesMut> = (0..10).map(|_| buffers.take(block)).collect();
        let mut starts: Vec<usize> = taken.iter().map(|buffer| buffer.as_ptr() as usize).collect();
        for buffer in taken {
            buffers.give_back(buffer);
        }
        assert_eq!(buffers.0.lock().expect("lock").len(), 10, "every buffer is kept");
        let again: Vec<BytesMut> = (0..10).map(|_| buffers.take(block)).collect();
        let mut again: Vec<usize> = again.iter().map(|buffer| buffer.as_ptr() as usize).collect();
        starts.sort_unstable();
        again.sort_unstable();
        assert_eq!(again, starts, "the kept buffers are the ones handed out again");
    }

    /// `span` as RS 4+2: its layout, its two parity blocks and the CRCs of
    /// its four data blocks.
    fn rs_4_2(span: &[u8]) -> (SpanLayout, Vec<Vec<u8>>, Vec<u32>) {
        let layout = SpanLayout::new(span.len() as u64, Parity::new(4, 2).expect("parity")).expect("layout");
        let mut parity = vec![Vec::new(); 2];
        layout.encode_parity(span, &mut parity).expect("encode");
        let written = data_blocks(&layout, span).iter().map(|block| crc32c(block)).collect();
        (layout, parity, written)
    }

    /// The data blocks of `span` laid out by `layout`.
    fn data_blocks<'a>(layout: &SpanLayout, span: &'a [u8]) -> Vec<&'a [u8]> {
        (0..layout.parity.data_blocks())
            .map(|index| {
                let range = layout.data_block_range(index);
                &span[range.start as usize..range.end as usize]
            })
            .collect()
    }

    /// A block rebuilt by XOR that does not match the CRC it was written
    /// with (the XOR identity is assumed, not probed) is decoded instead,
    /// exactly; a decoded block that does not match either is refused, not
    /// handed out.
    #[test]
    fn a_wrong_xor_rebuild_is_decoded_and_a_wrong_decode_refused() {
        let span: Vec<u8> = (0..64 * 1024 + 5u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let (layout, parity, written) = rs_4_2(&span);
        let data = data_blocks(&layout, &span);
        let have = [false, true, true, true];
        for corrupt_first in [false, true] {
            // The second parity block is wrong (the XOR uses it, the
            // decode only the first), then the first as well.
            let mut parity = parity.clone();
            parity[1][10] ^= 1;
            if corrupt_first {
                parity[0][20] ^= 1;
            }
            let mut pieces: Vec<Option<BytesMut>> = data.iter().map(|block| Some(BytesMut::from(*block))).collect();
            let mut parity_blocks: Vec<Option<BytesMut>> =
                parity.iter().map(|block| Some(BytesMut::from(&block[..]))).collect();
            let mut crcs = written.clone();
            crcs[0] = 0;
            let result = rebuild(&layout, &written, &mut pieces, &mut crcs, &have, &mut parity_blocks, None);
            if corrupt_first {
                let error = result.expect_err("refused");
                assert!(error.starts_with(CORRUPTED), "{error}");
            } else {
                assert_eq!(result, Ok(Rebuilt::Decode));
                assert!(pieces[0].as_deref() == Some(data[0]), "decoded exactly");
                assert_eq!(crcs[0], written[0]);
            }
        }
    }

    /// A parity block fetched into the missing data block's place is
    /// turned into that block there (no other buffer), exactly, with its
    /// CRC; when the XOR is wrong it is undone, the parity block moves to a
    /// buffer of its own and the block is decoded into the same place.
    #[test]
    fn a_parity_block_in_the_missing_place_becomes_the_block() {
        let span: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        let (layout, parity, written) = rs_4_2(&span);
        let data = data_blocks(&layout, &span);
        for (lost, wrong_second_parity) in [(0, false), (2, false), (3, false), (1, true)] {
            let mut parity = parity.clone();
            if wrong_second_parity {
                parity[1][10] ^= 1;
            }
            let have: Vec<bool> = (0..4).map(|index| index != lost).collect();
            let mut pieces: Vec<Option<BytesMut>> =
                data.iter().enumerate().map(|(index, block)| (index != lost).then(|| BytesMut::from(*block))).collect();
            let place = BytesMut::from(&parity[0][..]);
            let place_start = place.as_ptr() as usize;
            let mut parity_blocks = vec![Some(place), Some(BytesMut::from(&parity[1][..]))];
            let mut crcs = written.clone();
            crcs[lost] = 0;
            let how = rebuild(&layout, &written, &mut pieces, &mut crcs, &have, &mut parity_blocks, Some((0, lost)))
                .unwrap_or_else(|error| panic!("block {lost}: {error}"));
            let rebuilt = pieces[lost].as_deref().expect("rebuilt");
            assert!(rebuilt == data[lost], "block {lost} rebuilt exactly");
            assert_eq!(rebuilt.as_ptr() as usize, place_start, "block {lost} rebuilt in its place");
            assert_eq!(crcs[lost], written[lost]);
            if wrong_second_parity {
                assert_eq!(how, Rebuilt::Decode);
                let first = parity_blocks[0].as_deref().expect("the first parity block, moved out");
                assert!(first == &parity[0][..], "the XOR undone: the parity block again");
                assert_ne!(first.as_ptr() as usize, place_start);
            } else {
                assert_eq!(how, Rebuilt::XorInPlace);
                assert!(parity_blocks[0].is_none(), "the parity block became the data block");
            }
        }
    }

    /// With one parity block (either) in the missing block's place and no
    /// other parity block, the block is made there from that parity block
    /// (`erasure`); a wrong parity block gives a wrong CRC, the rebuild is
    /// undone (the parity block moves out intact) and the decode refuses.
    #[test]
    fn one_parity_block_in_the_missing_place_becomes_the_block() {
        if !erasure::fast() {
            return;
        }
        let span: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        let (layout, parity, written) = rs_4_2(&span);
        let data = data_blocks(&layout, &span);
        for (lost, slot, wrong) in [(0, 0, false), (1, 1, false), (2, 0, false), (3, 1, false), (2, 1, true)] {
            let mut parity_block = parity[slot].clone();
            if wrong {
                parity_block[100] ^= 4;
            }
            let have: Vec<bool> = (0..4).map(|index| index != lost).collect();
            let mut pieces: Vec<Option<BytesMut>> =
                data.iter().enumerate().map(|(index, block)| (index != lost).then(|| BytesMut::from(*block))).collect();
            let place = BytesMut::from(&parity_block[..]);
            let place_start = place.as_ptr() as usize;
            let mut parity_blocks = vec![None, None];
            parity_blocks[slot] = Some(place);
            let mut crcs = written.clone();
            crcs[lost] = 0;
            let result =
                rebuild(&layout, &written, &mut pieces, &mut crcs, &have, &mut parity_blocks, Some((slot, lost)));
            if wrong {
                let error = result.expect_err("a wrong parity block is refused");
                assert!(error.contains("from one parity block"), "{error}");
                let moved = parity_blocks[slot].as_deref().expect("the parity block, moved out");
                assert!(moved == &parity_block[..], "the rebuild undone: the parity block again");
                assert_ne!(moved.as_ptr() as usize, place_start);
                continue;
            }
            assert_eq!(result, Ok(Rebuilt::ParityInPlace), "block {lost} from parity {slot}");
            let rebuilt = pieces[lost].as_deref().expect("rebuilt");
            assert!(rebuilt == data[lost], "block {lost} rebuilt exactly");
            assert_eq!(rebuilt.as_ptr() as usize, place_start, "block {lost} rebuilt in its place");
            assert_eq!(crcs[lost], written[lost]);
            assert!(parity_blocks.iter().all(Option::is_none), "the parity block became the data block");
        }
    }

    /// Span buffers and the block pieces carved from them start aligned,
    /// hold the capacity asked for, and keep their start when reused.
    #[test]
    fn span_buffers_start_aligned_and_keep_their_start() {
        for (size, align) in
            [(16 << 20, HUGE_PAGE_BYTES), (4 << 20, HUGE_PAGE_BYTES), (300_000, PAGE_BYTES), (1, PAGE_BYTES)]
        {
            let mut buffer = span_buffer(size);
            assert!(buffer.capacity() >= size, "{size}");
            let start = buffer.spare_capacity_mut().as_ptr() as usize;
            assert_eq!(start % align, 0, "{size}");
            // Filled, carved into pieces and joined again, as a span read does.
            buffer.extend_from_slice(&vec![7u8; size]);
            let half = buffer.split_off(size / 2);
            buffer.unsplit(half);
            assert_eq!(buffer.len(), size);
            buffer.clear();
            assert_eq!(buffer.spare_capacity_mut().as_ptr() as usize, start, "{size}: reused in place");
            assert!(buffer.capacity() >= size);
        }
    }
}
