//! Writing a file: create an eden file, then per span add → write blocks
//! (in parallel, to the D+P services the shard chose) → certify, and link
//! at the end. Nothing is visible until the link, so a failed write never
//! leaves a linked, unreadable file. A file that fits one inline span (or
//! is empty) is one request instead: create_small_file (kind 0x16) creates,
//! fills and links it in one shard transaction.
//!
//! Pipelining: the shard accepts a new span only once the previous one is
//! certified (only the last span may be dirty), so spans are written one at
//! a time, but the next spans are read from the input and encoded (CRCs,
//! Reed–Solomon) while the current one's blocks are on the wire. At most
//! [`spans_ahead`] encoded spans wait (2, or 1 for spans over 32 MiB), so
//! the write's buffers hold at most [`WRITE_BUFFER_BYTES`] of span data
//! (plus parity) whatever the input size, or 3 spans when one is larger
//! than a third of it.
//!
//! Buffers: a span is read straight into a page-aligned (2 MiB-aligned
//! for large spans) buffer, and its parity blocks are encoded into aligned
//! buffers too; all of them come from [`BufferPool`]s and go back once the
//! span's block writes have dropped them, so a long write reuses a few
//! buffers instead of faulting in (and zeroing) fresh memory per span, and
//! the kernel's copies into and out of them run at the aligned speed (see
//! `read::span_buffer`). A local file ([`write_file`]) is read with
//! `pread(2)` on the encoding thread, straight into the span buffer; any
//! other input ([`encode_input`]) through tokio, which copies once more.
//!
//! Failures: each block write is retried a few times on its service
//! ([`BLOCK_WRITE_ATTEMPTS`]). If one still fails, the span stays dirty and
//! the shard refuses a new span at the same offset; the write then fails
//! with the eden file unlinked (the shard expunges it after its deadline).
//! [`write_path`] callers with a seekable input (a local file) restart the
//! whole file in a fresh eden file (see `put` in the CLI). The services
//! whose writes failed are remembered in a [`FailedServices`] shared by the
//! attempts, and every add_eden_span sends them as its blacklist, so the
//! shard places the new spans elsewhere instead of on a service that is
//! dead but not yet stale in shuckle, or full (a blacklisted service the
//! shard still offers makes it refresh its table from shuckle at once).
//!
//! A block service whose disk is full answers `NO_SPACE` (the block
//! protocol's error answer), so a failed block says "no space left on
//! device"; and when placement then finds too few services while some of
//! the storage class are full, the write fails with
//! [`ClientError::NoSpace`] rather than "not enough block services".

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wire::limits::ADD_SPAN_BLACKLIST_MAX;
use wire::shard::{AddEdenSpanReq, AddEdenSpanReqHead, BlockCertificate, NewBlock, ShardRequest};
use wire::span::{InlineBytes, SpanBody};
use wire::{BlockServiceId, ErrorKind, InodeId, InodeType, List};
use zerocopy::byteorder::little_endian::{U32, U64};

use crate::block::write_block_bytes;
use crate::client::{Client, EdenFile};
use crate::error::{ClientError, Result};
use crate::plan::{BufferPool, EncodedSpan, SpanPayload, WritePolicy, encode_span_pooled};
use crate::read::span_buffer;

/// Encoded spans waiting while the current one is written, at most.
pub const SPANS_AHEAD: usize = 2;
/// Bytes of span data a write holds in its buffers, at most, as long as
/// that allows one span waiting: the span being written, the spans
/// waiting ([`spans_ahead`]) and the one being read and encoded, each with
/// its parity blocks, so the write's memory is `(spans_ahead + 2) × span
/// × (D+P)/D`: 96 MiB for RS 4+2 with 16 MiB spans (2 waiting), 192 MiB
/// with 32 MiB spans (2 waiting), 288 MiB with 64 MiB spans (1 waiting).
pub const WRITE_BUFFER_BYTES: u64 = 128 << 20;

/// Encoded spans of `span_size` bytes that may wait while one is written:
/// [`SPANS_AHEAD`], fewer when the write's buffers would hold more than
/// [`WRITE_BUFFER_BYTES`] of span data, never none (the next span is then
/// ready when the current one is certified).
pub fn spans_ahead(span_size: u32) -> usize {
    let spans = WRITE_BUFFER_BYTES / u64::from(span_size.max(1));
    (spans.saturating_sub(2) as usize).clamp(1, SPANS_AHEAD)
}
/// Attempts of one block write before the span is given up.
pub const BLOCK_WRITE_ATTEMPTS: u32 = 3;
/// Retries of an add_eden_span refused for lack of block services.
const NOT_ENOUGH_SERVICES_RETRIES: u32 = 5;
/// First pause after such a refusal (grows linearly).
const NOT_ENOUGH_SERVICES_PAUSE: Duration = Duration::from_millis(500);
/// Pause between block write attempts.
const BLOCK_WRITE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The block services a write could not write to (after the per-block
/// retries), most recent last, at most [`ADD_SPAN_BLACKLIST_MAX`]: sent as
/// the blacklist of every add_eden_span of the write and of its restarts.
#[derive(Debug, Default)]
pub struct FailedServices {
    services: Mutex<Vec<BlockServiceId>>,
}

impl FailedServices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers a failed service; the oldest is forgotten beyond the limit.
    pub fn record(&self, service: BlockServiceId) {
        let mut services = self.services.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if services.contains(&service) {
            return;
        }
        if services.len() >= ADD_SPAN_BLACKLIST_MAX {
            services.remove(0);
        }
        services.push(service);
    }

    /// The services to avoid now.
    pub fn snapshot(&self) -> Vec<BlockServiceId> {
        self.services.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// What a finished write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    pub inode: InodeId,
    pub size: u64,
    pub spans: u64,
}

/// The span and parity buffers of one write: enough for the spans waiting
/// in the channel, the one being written and the one being encoded.
struct WriteBuffers {
    spans: BufferPool,
    parity: BufferPool,
}

impl WriteBuffers {
    fn new(policy: WritePolicy) -> Self {
        let spans = spans_ahead(policy.span_size_bytes) + 2;
        Self {
            spans: BufferPool::new(spans, span_buffer),
            parity: BufferPool::new(spans * policy.parity.parity_blocks(), span_buffer),
        }
    }
}

/// Encodes `buffer` (the bytes at `offset`) on a blocking thread.
async fn encode(offset: u64, buffer: BytesMut, policy: WritePolicy, buffers: &WriteBuffers) -> Result<EncodedSpan> {
    let (spans, parity) = (buffers.spans.clone(), buffers.parity.clone());
    let encoded =
        tokio::task::spawn_blocking(move || encode_span_pooled(offset, spans.share(buffer), policy, &parity)).await;
    match encoded {
        Ok(result) => result.map_err(ClientError::from),
        Err(error) => Err(ClientError::Invalid(format!("span encoder failed: {error}"))),
    }
}

/// Reads `input` to its end, cutting it into spans of the policy's span
/// size, and sends each encoded span to `spans` (bounded channel).
pub async fn encode_input<R: AsyncRead + Unpin>(
    mut input: R,
    policy: WritePolicy,
    spans: mpsc::Sender<Result<EncodedSpan>>,
) {
    let span_size = policy.span_size_bytes as usize;
    let buffers = WriteBuffers::new(policy);
    let mut offset = 0u64;
    loop {
        let mut buffer = buffers.spans.take(span_size);
        let read = fill(&mut input, &mut buffer, span_size).await.map(|()| buffer);
        if !hand_on(read, &mut offset, span_size, policy, &buffers, &spans).await {
            return;
        }
    }
}

/// Reads from `input` into `buffer`'s spare capacity (nothing is zeroed
/// first) until it holds `want` bytes or the input ends.
async fn fill<R: AsyncRead + Unpin>(input: &mut R, buffer: &mut BytesMut, want: usize) -> io::Result<()> {
    while buffer.len() < want {
        let room = want - buffer.len();
        if input.read_buf(&mut (&mut *buffer).limit(room)).await? == 0 {
            break;
        }
    }
    Ok(())
}

/// Encodes the span just read at `*offset` and sends it on; whether the
/// input goes on (false at its end, on a short span, or after an error,
/// which is sent on too).
async fn hand_on(
    read: io::Result<BytesMut>,
    offset: &mut u64,
    span_size: usize,
    policy: WritePolicy,
    buffers: &WriteBuffers,
    spans: &mpsc::Sender<Result<EncodedSpan>>,
) -> bool {
    let buffer = match read {
        Ok(buffer) => buffer,
        Err(error) => {
            let _ = spans.send(Err(ClientError::io("reading the input", error))).await;
            return false;
        }
    };
    let filled = buffer.len();
    if filled == 0 {
        return false;
    }
    let encoded = encode(*offset, buffer, policy, buffers).await;
    let failed = encoded.is_err();
    if spans.send(encoded).await.is_err() || failed || filled < span_size {
        return false;
    }
    *offset += filled as u64;
    true
}

/// Reads up to `want` bytes at `offset` of `fd` into `buffer`'s spare
/// capacity (nothing zeroed first); fewer only at the end of the file.
fn pread_into(fd: RawFd, buffer: &mut BytesMut, want: usize, offset: u64) -> io::Result<()> {
    buffer.reserve(want.saturating_sub(buffer.len()));
    while buffer.len() < want {
        let filled = buffer.len();
        let spare = buffer.spare_capacity_mut();
        let room = (want - filled).min(spare.len());
        let at = libc::off_t::try_from(offset + filled as u64).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the kernel writes at most `room` bytes at the start of the
        // buffer's spare capacity, which is valid for writes of that length.
        let read = unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), room, at) };
        if read < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if read == 0 {
            break;
        }
        // SAFETY: pread initialised `read` (≤ `room`) bytes past the old length.
        unsafe { buffer.set_len(filled + read as usize) };
    }
    Ok(())
}

/// [`encode_input`] for a local file: each span is read with `pread(2)`
/// on a blocking thread straight into its aligned buffer (no copy through
/// tokio's own buffer), from the start of the file to its end.
pub async fn encode_file(file: std::fs::File, policy: WritePolicy, spans: mpsc::Sender<Result<EncodedSpan>>) {
    let span_size = policy.span_size_bytes as usize;
    let buffers = WriteBuffers::new(policy);
    let file = Arc::new(file);
    let mut offset = 0u64;
    loop {
        let buffer = buffers.spans.take(span_size);
        let reader = Arc::clone(&file);
        let read = tokio::task::spawn_blocking(move || {
            let mut buffer = buffer;
            pread_into(reader.as_raw_fd(), &mut buffer, span_size, offset).map(|()| buffer)
        })
        .await
        .unwrap_or_else(|error| Err(io::Error::other(format!("input thread: {error}"))));
        if !hand_on(read, &mut offset, span_size, policy, &buffers, &spans).await {
            return;
        }
    }
}

/// [`write_path`] from a local file, read with `pread(2)` ([`encode_file`])
/// when it is a regular file.
pub async fn write_file(
    client: &Client,
    parent: InodeId,
    name: &str,
    file: std::fs::File,
    policy: WritePolicy,
    failed: &FailedServices,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteOutcome> {
    let (sender, receiver) = mpsc::channel(spans_ahead(policy.span_size_bytes));
    // A pipe or a device cannot be read at offsets: read it as a stream.
    let regular = file.metadata().is_ok_and(|metadata| metadata.is_file());
    let producer = if regular {
        tokio::spawn(encode_file(file, policy, sender))
    } else {
        tokio::spawn(encode_input(tokio::fs::File::from_std(file), policy, sender))
    };
    let result = write_spans(client, parent, name, receiver, failed, progress).await;
    producer.abort();
    result
}

/// Writes a whole file from `input` as `parent/name` (overwriting an
/// existing file of that name, which moves to the dead map).
/// `progress` is called with the bytes written so far. Placement avoids the
/// services in `failed`, and block services that fail are added to it.
pub async fn write_path<R: AsyncRead + Unpin + Send + 'static>(
    client: &Client,
    parent: InodeId,
    name: &str,
    input: R,
    policy: WritePolicy,
    failed: &FailedServices,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteOutcome> {
    let (sender, receiver) = mpsc::channel(spans_ahead(policy.span_size_bytes));
    let producer = tokio::spawn(encode_input(input, policy, sender));
    let result = write_spans(client, parent, name, receiver, failed, progress).await;
    producer.abort();
    result
}

/// Writes the spans from `spans` into a new eden file on `parent`'s shard,
/// then links it as `parent/name`, avoiding and extending `failed`.
pub async fn write_spans(
    client: &Client,
    parent: InodeId,
    name: &str,
    mut spans: mpsc::Receiver<Result<EncodedSpan>>,
    failed: &FailedServices,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteOutcome> {
    // A file that fits one inline span (or is empty) is one request:
    // create_small_file creates, fills and links it in one shard
    // transaction, one durable commit instead of three.
    let mut pending = Vec::with_capacity(2);
    let first = spans.recv().await.transpose()?;
    let small = match &first {
        None => true,
        Some(span) => span.offset == 0 && matches!(span.payload, SpanPayload::Inline),
    };
    pending.extend(first);
    if small {
        match spans.recv().await.transpose()? {
            None => {
                let spans = pending.len() as u64;
                let contents = pending.pop().map(|span| span.data).unwrap_or_default();
                let (inode, _) = client.create_small_file(parent, name, InodeType::File, &contents).await?;
                progress(contents.len() as u64);
                return Ok(WriteOutcome { inode, size: contents.len() as u64, spans });
            }
            Some(second) => pending.push(second),
        }
    }
    let mut pending = pending.into_iter();
    let eden = client.create_eden_file(parent.shard(), InodeType::File).await?;
    let mut size = 0u64;
    let mut count = 0u64;
    loop {
        let span = match pending.next() {
            Some(span) => span,
            None => match spans.recv().await {
                Some(span) => span?,
                None => break,
            },
        };
        if span.offset != size {
            return Err(ClientError::Invalid(format!("span at {} after {size} bytes", span.offset)));
        }
        write_span(client, eden, &span, failed).await?;
        size += span.data.len() as u64;
        count += 1;
        progress(size);
    }
    client.link_eden_file(eden, parent, name).await?;
    Ok(WriteOutcome { inode: eden.inode, size, spans: count })
}

/// Adds one span to an eden file (avoiding the services in `failed`),
/// writes its blocks (recording the services that fail in `failed`),
/// certifies it.
pub async fn write_span(client: &Client, eden: EdenFile, span: &EncodedSpan, failed: &FailedServices) -> Result<()> {
    let avoid = failed.snapshot();
    let certificates = match add_span(client, eden, span, &avoid).await {
        Ok(certificates) => certificates,
        Err(error) if error.error_kind() == Some(ErrorKind::NotEnoughBlockServices) => {
            return Err(explain_too_few_services(client, span, error).await);
        }
        Err(error) => return Err(error),
    };
    let proofs = write_blocks(eden.inode, span, &certificates, failed).await?;
    client.certify_eden_span(eden, span.offset, &proofs).await
}

/// A span found too few block services (`error`): when some of its
/// storage class are full (shuckle lists them with no free space), that is
/// the reason the user needs to hear, "no space left on device", rather
/// than "too few are up". Otherwise, or if shuckle cannot say, `error`.
async fn explain_too_few_services(client: &Client, span: &EncodedSpan, error: ClientError) -> ClientError {
    let SpanPayload::Blocks(blocks) = &span.payload else { return error };
    let storage_class = blocks.storage_class;
    let Ok(services) = client.block_service_summaries().await else { return error };
    let of_class: Vec<_> = services.iter().filter(|service| service.storage_class == storage_class).collect();
    let full = of_class.iter().filter(|service| service.is_full()).count();
    if full == 0 {
        return error;
    }
    ClientError::NoSpace { storage_class, full, total: of_class.len(), reason: error.to_string() }
}

/// add_eden_span for `span`, placed on none of the services in `avoid`
/// (at most [`ADD_SPAN_BLACKLIST_MAX`] are sent): returns where each of its
/// blocks goes.
pub async fn add_span(
    client: &Client,
    eden: EdenFile,
    span: &EncodedSpan,
    avoid: &[BlockServiceId],
) -> Result<Vec<BlockCertificate>> {
    let new_blocks: Vec<NewBlock> = match &span.payload {
        SpanPayload::Blocks(blocks) => (0..blocks.layout.parity.total_blocks())
            .map(|index| NewBlock {
                crc: U32::new(blocks.block_crcs.get(index).copied().unwrap_or(0)),
                size: U32::new(span.block_bytes(index).len() as u32),
            })
            .collect(),
        _ => Vec::new(),
    };
    let body = match &span.payload {
        SpanPayload::Inline => SpanBody::Inline(
            InlineBytes::new(&span.data).map_err(|error| ClientError::Invalid(format!("inline span: {error}")))?,
        ),
        SpanPayload::ZeroFill => SpanBody::ZeroFill,
        SpanPayload::Blocks(blocks) => SpanBody::Blocks {
            storage_class: blocks.storage_class,
            parity: blocks.layout.parity,
            blocks: List::new(&new_blocks),
        },
    };
    let request = ShardRequest::AddEdenSpan(AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode: eden.inode,
            cookie: eden.cookie,
            offset: U64::new(span.offset),
            size: U32::new(span.size()),
            crc: U32::new(span.crc),
        },
        body,
        blacklist: List::new(avoid.get(..ADD_SPAN_BLACKLIST_MAX).unwrap_or(avoid)),
    });
    let certificates = add_with_patience(client, &request, eden.inode).await?;
    if certificates.len() != new_blocks.len() {
        return Err(ClientError::Inconsistent(format!(
            "add_eden_span returned {} blocks for {}",
            certificates.len(),
            new_blocks.len()
        )));
    }
    Ok(certificates)
}

/// add_eden_span, waiting a little when the shard has too few block
/// services: a refused add makes it refresh its table from shuckle.
async fn add_with_patience(
    client: &Client,
    request: &ShardRequest<'_>,
    inode: InodeId,
) -> Result<Vec<BlockCertificate>> {
    let mut attempt = 0;
    loop {
        match client.add_eden_span(request, inode).await {
            Err(error)
                if error.error_kind() == Some(ErrorKind::NotEnoughBlockServices)
                    && attempt < NOT_ENOUGH_SERVICES_RETRIES =>
            {
                attempt += 1;
                tokio::time::sleep(NOT_ENOUGH_SERVICES_PAUSE * attempt).await;
            }
            result => return result,
        }
    }
}

/// Writes every block of `span` in parallel; returns the proofs in order.
async fn write_blocks(
    inode: InodeId,
    span: &EncodedSpan,
    certificates: &[BlockCertificate],
    failed: &FailedServices,
) -> Result<Vec<wire::mac::Mac>> {
    let SpanPayload::Blocks(blocks) = &span.payload else { return Ok(Vec::new()) };
    let mut tasks = JoinSet::new();
    for (index, certificate) in certificates.iter().copied().enumerate() {
        let data = span.shared_block(index);
        let crc = blocks.block_crcs.get(index).copied().unwrap_or(0);
        tasks.spawn(async move {
            let addr = certificate.address.socket_addr();
            let mut last_error = None;
            for attempt in 0..BLOCK_WRITE_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(BLOCK_WRITE_RETRY_PAUSE * attempt).await;
                }
                match write_block_bytes(addr, certificate.block_id, crc, certificate.certificate, data.clone()).await {
                    Ok(proof) => return (index, Ok(proof)),
                    Err(error) => {
                        tracing::debug!(%error, attempt, "block write failed");
                        // A full disk stays full for the next attempt.
                        let full = error.error_kind() == Some(ErrorKind::NoSpace);
                        last_error = Some(error);
                        if full {
                            break;
                        }
                    }
                }
            }
            (index, Err(last_error.unwrap_or(ClientError::Invalid("no attempt".into()))))
        });
    }
    let mut proofs = vec![[0u8; 8]; certificates.len()];
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(proof))) => {
                if let Some(slot) = proofs.get_mut(index) {
                    *slot = proof;
                }
            }
            Ok((index, Err(error))) => {
                if let Some(certificate) = certificates.get(index) {
                    failed.record(certificate.block_service_id);
                }
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(ClientError::Invalid(format!("block writer failed: {error}")));
            }
        }
    }
    match first_error {
        None => Ok(proofs),
        Some(error) => {
            Err(ClientError::Span { inode, offset: span.offset, reason: format!("block write failed: {error}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two spans wait up to 32 MiB spans, one beyond (the buffers then
    /// hold three spans, the least that keeps the next span ready), and
    /// the span data held stays within the bound while two can wait.
    #[test]
    fn the_spans_waiting_are_bounded_in_bytes() {
        const MIB: u32 = 1 << 20;
        for (span, waiting) in [(MIB, 2), (16 * MIB, 2), (32 * MIB, 2), (32 * MIB + 1, 1), (64 * MIB, 1), (u32::MAX, 1)]
        {
            assert_eq!(spans_ahead(span), waiting, "{span}-byte spans");
        }
        assert_eq!(spans_ahead(0), SPANS_AHEAD);
        for span in [MIB, 8 * MIB, 32 * MIB] {
            assert!((spans_ahead(span) as u64 + 2) * u64::from(span) <= WRITE_BUFFER_BYTES, "{span}");
        }
    }
}
