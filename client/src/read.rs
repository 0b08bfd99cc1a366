//! Reading a file: fetch_spans page by page; each span's data blocks are
//! fetched in parallel and checked (CRC per block, CRC of the span); when a
//! block service is flagged (terminal, unknown, stale), unreachable, or
//! returns wrong bytes, parity blocks are fetched and the span rebuilt
//! (mirrors: any copy). Up to [`READ_AHEAD_SPANS`] spans are fetched ahead
//! of the one being output, so output is in order with bounded memory.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::OnceCell;
use tokio::task::{JoinHandle, JoinSet};
use wire::crc::crc32c;
use wire::span::SpanLayout;
use wire::{BlockServiceId, InodeId};

use crate::block::fetch_block;
use crate::client::{Client, FileSpan, FileSpanBody};
use crate::error::{ClientError, Result};
use crate::plan::BlockChoice;

/// Spans fetched ahead of the one being written out.
pub const READ_AHEAD_SPANS: usize = 3;

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

/// A span's bytes and what went wrong on the way.
struct SpanRead {
    data: Vec<u8>,
    reconstructed: bool,
    notices: Vec<String>,
}

/// Reads the whole file `inode` into `out`. `notice` is called at once for
/// every block that could not be used (the CLI prints it with `-v`);
/// `progress` with the bytes written so far.
pub async fn read_file<W: AsyncWrite + Unpin>(
    client: &Client,
    inode: InodeId,
    out: &mut W,
    notice: &(dyn Fn(&str) + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ReadReport> {
    let mut report = ReadReport::default();
    let mut in_flight: VecDeque<(FileSpan, JoinHandle<Result<SpanRead>>)> = VecDeque::new();
    let mut pending: VecDeque<FileSpan> = VecDeque::new();
    let book = AddressBook { client: client.clone(), addresses: Arc::new(OnceCell::new()) };
    let mut next_offset = Some(0u64);
    let mut expected_offset = 0u64;
    for _ in 0..SPAN_PAGES_MAX {
        // Keep the read-ahead window full, fetching span pages as needed.
        while in_flight.len() < READ_AHEAD_SPANS {
            if pending.is_empty()
                && let Some(offset) = next_offset
            {
                let page = client.fetch_spans(inode, offset).await?;
                next_offset = (page.next_offset != 0).then_some(page.next_offset);
                if let Some(next) = next_offset
                    && next <= offset
                {
                    return Err(ClientError::Inconsistent(format!("fetch_spans of {inode} does not advance")));
                }
                pending.extend(page.spans);
            }
            let Some(span) = pending.pop_front() else { break };
            let task = tokio::spawn(read_span(book.clone(), inode, span.clone()));
            in_flight.push_back((span, task));
        }
        let Some((span, task)) = in_flight.pop_front() else { break };
        if span.offset != expected_offset {
            return Err(ClientError::Inconsistent(format!(
                "file {inode}: span at {} where {expected_offset} was expected",
                span.offset
            )));
        }
        let read = task.await.map_err(|error| ClientError::Span {
            inode,
            offset: span.offset,
            reason: format!("reader: {error}"),
        })??;
        for line in &read.notices {
            notice(line);
        }
        out.write_all(&read.data).await.map_err(|error| ClientError::io("writing the output", error))?;
        expected_offset += read.data.len() as u64;
        report.bytes += read.data.len() as u64;
        report.spans += 1;
        report.reconstructed_spans += u64::from(read.reconstructed);
        report.notices.extend(read.notices);
        progress(report.bytes);
    }
    out.flush().await.map_err(|error| ClientError::io("writing the output", error))?;
    Ok(report)
}

/// Reads one span of `inode` (as listed by `fetch_spans`): its bytes,
/// CRC-checked, rebuilt from parity when blocks are missing, and one notice
/// per block that could not be used. For random access (the FUSE mount),
/// where the caller picks which spans to read and caches them.
pub async fn read_one_span(client: &Client, inode: InodeId, span: FileSpan) -> Result<(Vec<u8>, Vec<String>)> {
    let book = AddressBook { client: client.clone(), addresses: Arc::new(OnceCell::new()) };
    let read = read_span(book, inode, span).await?;
    Ok((read.data, read.notices))
}

/// Reads one span's bytes, rebuilding from parity when needed.
async fn read_span(book: AddressBook, inode: InodeId, span: FileSpan) -> Result<SpanRead> {
    let span_error = |reason: String| ClientError::Span { inode, offset: span.offset, reason };
    let (data, reconstructed, notices) = match &span.body {
        FileSpanBody::Inline(bytes) => (bytes.clone(), false, Vec::new()),
        FileSpanBody::ZeroFill => (vec![0u8; span.size as usize], false, Vec::new()),
        FileSpanBody::Blocks { parity, blocks, .. } => {
            let layout =
                SpanLayout::new(u64::from(span.size), *parity).map_err(|error| span_error(error.to_string()))?;
            read_blocks(&book, inode, &span, &layout, blocks).await?
        }
    };
    if data.len() != span.size as usize {
        return Err(span_error(format!("{} bytes where the span has {}", data.len(), span.size)));
    }
    if crc32c(&data) != span.crc {
        return Err(span_error("span CRC mismatch after reading its blocks".into()));
    }
    Ok(SpanRead { data, reconstructed, notices })
}

async fn read_blocks(
    book: &AddressBook,
    inode: InodeId,
    span: &FileSpan,
    layout: &SpanLayout,
    blocks: &[wire::shard::FetchedBlock],
) -> Result<(Vec<u8>, bool, Vec<String>)> {
    let parity = layout.parity;
    let total = parity.total_blocks();
    let span_error = |reason: String| ClientError::Span { inode, offset: span.offset, reason };
    if blocks.len() != total {
        return Err(span_error(format!("{} blocks listed for parity {parity}", blocks.len())));
    }
    let flags: Vec<u8> = blocks.iter().map(|block| block.flags).collect();
    let known: Vec<bool> = blocks.iter().map(|block| !block.address.is_unknown()).collect();
    let mut choice = BlockChoice::new(parity, &flags, &known);
    let mut notices = Vec::new();
    for (index, block) in blocks.iter().enumerate().take(parity.data_blocks()) {
        if choice.is_flagged(index) {
            notices.push(format!(
                "block {} of span at {} on {} is flagged ({:#x}); using other blocks",
                block.block_id, span.offset, block.address, block.flags
            ));
        }
    }
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; total];
    let mut good = 0usize;
    loop {
        let batch = choice.next(good);
        if batch.is_empty() {
            break;
        }
        let mut tasks = JoinSet::new();
        for index in batch {
            let block = blocks[index];
            let expected = layout.block_size(index);
            let book = book.clone();
            tasks.spawn(async move {
                if u64::from(block.size.get()) != expected {
                    let reason = format!("listed with {} bytes, layout says {expected}", block.size.get());
                    return (index, Err(reason));
                }
                let listed = block.address.socket_addr();
                let mut fetched = fetch_checked(listed, &block).await;
                if fetched.is_err()
                    && let Some(current) = book.moved(block.block_service_id, listed).await
                {
                    fetched = fetch_checked(current, &block).await;
                }
                (index, fetched.map_err(|error| error.to_string()))
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((index, fetched)) = joined else { continue };
            match fetched {
                Ok(bytes) => {
                    slots[index] = Some(bytes);
                    good += 1;
                }
                Err(reason) => notices.push(format!(
                    "block {} (index {index}) of span at {}: {reason}; reading parity",
                    blocks[index].block_id, span.offset
                )),
            }
        }
        if good >= parity.data_blocks() {
            break;
        }
    }
    if good < parity.data_blocks() {
        return Err(span_error(format!(
            "only {good} of the {} blocks needed could be read ({})",
            parity.data_blocks(),
            notices.join("; ")
        )));
    }
    let reconstructed = slots[..parity.data_blocks()].iter().any(Option::is_none);
    if reconstructed {
        layout.reconstruct(&mut slots).map_err(|error| span_error(error.to_string()))?;
        notices.push(format!("span at {} reconstructed from parity", span.offset));
    }
    let mut data = Vec::with_capacity(span.size as usize);
    for slot in slots.iter().take(parity.data_blocks()) {
        data.extend_from_slice(slot.as_deref().unwrap_or_default());
    }
    Ok((data, reconstructed, notices))
}

/// Fetches a block and checks its CRC.
async fn fetch_checked(addr: SocketAddr, block: &wire::shard::FetchedBlock) -> Result<Vec<u8>> {
    let bytes = fetch_block(addr, block.block_id, block.size.get()).await?;
    if crc32c(&bytes) != block.crc.get() {
        return Err(ClientError::Inconsistent(format!(
            "block {} on {addr}: CRC mismatch (corrupted block)",
            block.block_id
        )));
    }
    Ok(bytes)
}
