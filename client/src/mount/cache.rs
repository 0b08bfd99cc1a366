//! Reads through the mount: an open file's span list (fetched once at open:
//! eggsfs files never change once linked), and one cache of span bytes
//! shared by every open file, bounded in bytes.
//!
//! A read asks the cache for the spans that cover it, and only those: a
//! random read of 4 KiB fetches one span. A read that starts where the
//! previous one on the same handle ended is sequential, and starts fetching
//! the spans ahead of it in the background, so a streaming reader finds
//! them ready. The read-ahead is sized in bytes, as `eggs cat`'s: it starts
//! at [`client::read::READ_AHEAD_BYTES_MIN`] (at least
//! [`client::read::READ_AHEAD_SPANS_MIN`] spans) and doubles, up to
//! [`super::MountOptions::read_ahead_bytes`], each time a sequential read
//! had to wait for its span. Spans are read with
//! [`client::read::read_one_span`]: blocks CRC-checked, degraded spans
//! rebuilt from parity, exactly as `eggs cat`. A read within one span is
//! answered from the cached span's bytes without a copy, and when that
//! span is already cached, at once on the FUSE dispatch thread that took the request
//! ([`ReadHandle::read_ready`]).
//!
//! Two readers of the same span share one fetch (a `OnceCell` per span);
//! a failed fetch is not cached, so the next read tries again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use client::Client;
use client::client::FileSpan;
use client::read::{READ_AHEAD_BYTES_MIN, READ_AHEAD_SPANS_MIN, read_one_span};
use tokio::runtime::Handle as Runtime;
use tokio::sync::OnceCell;
use wire::InodeId;

/// One span's bytes (shared, not copied), or why it could not be read.
pub type SpanResult = Result<Bytes, String>;

struct Entry {
    cell: Arc<OnceCell<SpanResult>>,
    /// Position in the recency order.
    tick: u64,
    /// Bytes counted against the budget (0 until fetched).
    bytes: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<(InodeId, u64), Entry>,
    /// tick → key, oldest first.
    order: BTreeMap<u64, (InodeId, u64)>,
    next_tick: u64,
    used_bytes: u64,
}

impl State {
    fn touch(&mut self, key: (InodeId, u64)) -> Arc<OnceCell<SpanResult>> {
        let tick = self.next_tick;
        self.next_tick += 1;
        let entry =
            self.entries.entry(key).or_insert_with(|| Entry { cell: Arc::new(OnceCell::new()), tick, bytes: 0 });
        self.order.remove(&entry.tick);
        entry.tick = tick;
        self.order.insert(tick, key);
        entry.cell.clone()
    }

    fn remove(&mut self, key: (InodeId, u64)) {
        if let Some(entry) = self.entries.remove(&key) {
            self.order.remove(&entry.tick);
            self.used_bytes -= entry.bytes;
        }
    }

    /// Drops the least recently used fetched spans until within `capacity`.
    /// Spans still being fetched stay (their readers hold them anyway).
    fn evict(&mut self, capacity: u64) {
        let mut skipped = Vec::new();
        while self.used_bytes > capacity {
            let Some((tick, key)) = self.order.pop_first() else { break };
            let fetched = self.entries.get(&key).is_some_and(|entry| entry.cell.initialized());
            if fetched {
                if let Some(entry) = self.entries.remove(&key) {
                    self.used_bytes -= entry.bytes;
                }
            } else {
                skipped.push((tick, key));
            }
        }
        self.order.extend(skipped);
    }
}

/// The span cache of a mount.
pub struct SpanCache {
    client: Client,
    capacity_bytes: u64,
    state: Mutex<State>,
}

impl SpanCache {
    pub fn new(client: Client, capacity_bytes: u64) -> Self {
        Self { client, capacity_bytes, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bytes of `span` of `inode`, fetched once and kept while the
    /// budget allows.
    pub async fn span(&self, inode: InodeId, span: &FileSpan) -> SpanResult {
        let key = (inode, span.offset);
        let cell = self.lock().touch(key);
        let result = cell
            .get_or_init(|| async {
                match read_one_span(&self.client, inode, span.clone()).await {
                    Ok((bytes, notices)) => {
                        for notice in notices {
                            tracing::warn!(%inode, "{notice}");
                        }
                        Ok(bytes)
                    }
                    Err(error) => {
                        tracing::error!(%inode, offset = span.offset, %error, "span unreadable");
                        Err(error.to_string())
                    }
                }
            })
            .await
            .clone();
        let mut state = self.lock();
        match &result {
            Ok(bytes) => {
                // Count the bytes once, if the entry is still this fetch's.
                let still_ours = state.entries.get(&key).is_some_and(|entry| Arc::ptr_eq(&entry.cell, &cell));
                if still_ours
                    && let Some(entry) = state.entries.get_mut(&key)
                    && entry.bytes == 0
                {
                    entry.bytes = bytes.len() as u64;
                    state.used_bytes += bytes.len() as u64;
                }
                state.evict(self.capacity_bytes);
            }
            Err(_) => {
                if state.entries.get(&key).is_some_and(|entry| Arc::ptr_eq(&entry.cell, &cell)) {
                    state.remove(key);
                }
            }
        }
        result
    }
}

impl SpanCache {
    /// True when span `offset` of `inode` is fetched and cached.
    fn is_ready(&self, inode: InodeId, offset: u64) -> bool {
        self.lock().entries.get(&(inode, offset)).is_some_and(|entry| entry.cell.initialized())
    }

    /// The bytes of span `offset` of `inode` if they are fetched and
    /// cached (then it becomes the most recently used), without waiting.
    fn ready(&self, inode: InodeId, offset: u64) -> Option<Bytes> {
        let mut state = self.lock();
        let bytes = match state.entries.get(&(inode, offset))?.cell.get()? {
            Ok(bytes) => bytes.clone(),
            Err(_) => return None,
        };
        state.touch((inode, offset));
        Some(bytes)
    }
}

/// Which spans a handle has read and asked for ahead.
#[derive(Debug)]
struct Sequence {
    /// Index of the first span of the previous read.
    last_first: Option<usize>,
    /// Spans below this index were already asked for ahead.
    fetched_until: usize,
    /// Bytes to keep fetched ahead of the reader now.
    window: u64,
    /// The most `window` grows to (0: no read-ahead).
    window_max: u64,
}

impl Sequence {
    fn new(window_max: u64) -> Self {
        Self { last_first: None, fetched_until: 0, window: READ_AHEAD_BYTES_MIN.min(window_max), window_max }
    }

    /// Records a read of the spans `range` (`sizes`: every span's size);
    /// `waited` when the read found its first span not yet fetched, which
    /// doubles the window. Returns the spans to fetch ahead. A read is
    /// sequential when it starts in the span the previous one started in
    /// or in the next one (the kernel's own read-ahead sends a few requests
    /// at once, not always in order), or at the start.
    fn next(&mut self, range: std::ops::Range<usize>, sizes: &[u64], waited: bool) -> Option<std::ops::Range<usize>> {
        let sequential = match self.last_first {
            None => range.start == 0,
            Some(last) => range.start == last || range.start == last + 1,
        };
        let moved_on = self.last_first != Some(range.start);
        self.last_first = Some(range.start);
        if !sequential || self.window_max == 0 {
            return None;
        }
        if waited && moved_on && range.start > 0 {
            self.window = (self.window * 2).min(self.window_max);
        }
        let mut to = range.end;
        let mut ahead = 0u64;
        while to < sizes.len() && (to - range.end < READ_AHEAD_SPANS_MIN || ahead < self.window) {
            ahead += sizes[to];
            to += 1;
        }
        let from = self.fetched_until.max(range.end);
        (from < to).then(|| {
            self.fetched_until = to;
            from..to
        })
    }
}

/// An open file being read.
pub struct ReadHandle {
    pub inode: InodeId,
    pub size: u64,
    /// Every span, in offset order, covering 0..size.
    spans: Vec<FileSpan>,
    /// Their sizes.
    sizes: Vec<u64>,
    /// Read-ahead state of this handle.
    sequence: Mutex<Sequence>,
}

impl ReadHandle {
    /// Lists the spans of `inode`; a sequential reader gets up to
    /// `read_ahead_bytes` fetched ahead.
    pub async fn open(client: &Client, inode: InodeId, read_ahead_bytes: u64) -> client::Result<Self> {
        let (spans, size) = client::read::list_spans(client, inode).await?;
        let sizes = spans.iter().map(|span| u64::from(span.size)).collect();
        Ok(Self { inode, size, spans, sizes, sequence: Mutex::new(Sequence::new(read_ahead_bytes)) })
    }

    /// The index range of the spans overlapping `offset..end`.
    fn covering(&self, offset: u64, end: u64) -> std::ops::Range<usize> {
        let first = self.spans.partition_point(|span| span.offset + u64::from(span.size) <= offset);
        let last = self.spans.partition_point(|span| span.offset < end);
        first..last.max(first)
    }

    /// The byte range `offset..end` a read of `size` bytes at `offset`
    /// covers (shorter at the end of the file; empty past it).
    fn bounds(&self, offset: u64, size: u32) -> (u64, u64) {
        (offset, offset.saturating_add(u64::from(size)).min(self.size))
    }

    /// Records a read of the spans `range` and starts fetching the spans
    /// to read ahead of it, if it is sequential.
    fn read_ahead(&self, cache: &Arc<SpanCache>, runtime: &Runtime, range: std::ops::Range<usize>, waited: bool) {
        let ahead = {
            let mut sequence = self.sequence.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            sequence.next(range, &self.sizes, waited)
        };
        if let Some(ahead) = ahead {
            for span in &self.spans[ahead] {
                let (cache, inode, span) = (cache.clone(), self.inode, span.clone());
                runtime.spawn(async move {
                    let _ = cache.span(inode, &span).await;
                });
            }
        }
    }

    /// Answers a read at once when it needs one span and that span is
    /// cached (what a streaming reader finds, thanks to the read-ahead): a
    /// slice of the cached span. `None` when the read must wait or cross
    /// spans: then [`Self::read`]. Called on the FUSE dispatch thread, so
    /// a ready read costs no hand-over to the runtime.
    pub fn read_ready(&self, cache: &Arc<SpanCache>, runtime: &Runtime, offset: u64, size: u32) -> Option<SpanResult> {
        let (offset, end) = self.bounds(offset, size);
        if offset >= end {
            return Some(Ok(Bytes::new()));
        }
        let range = self.covering(offset, end);
        if range.len() != 1 {
            return None;
        }
        let span = &self.spans[range.start];
        let bytes = cache.ready(self.inode, span.offset)?;
        self.read_ahead(cache, runtime, range, false);
        Some(slice_of(&bytes, span, offset, end))
    }

    /// Reads `size` bytes at `offset` (fewer at the end of the file). A
    /// read within one span is a slice of the cached span, not a copy.
    pub async fn read(&self, cache: &Arc<SpanCache>, offset: u64, size: u32) -> SpanResult {
        let (offset, end) = self.bounds(offset, size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let range = self.covering(offset, end);
        let Some(first) = self.spans.get(range.start) else {
            return Err("span list shorter than the file".to_owned());
        };
        let waited = !cache.is_ready(self.inode, first.offset);
        self.read_ahead(cache, &Runtime::current(), range.clone(), waited);
        if range.len() == 1 {
            let bytes = cache.span(self.inode, first).await?;
            return slice_of(&bytes, first, offset, end);
        }
        // Fetch every span the read needs at once (a read may cross spans).
        let mut fetches = Vec::with_capacity(range.len());
        for span in &self.spans[range.clone()] {
            let (cache, inode, span) = (cache.clone(), self.inode, span.clone());
            fetches.push(tokio::spawn(async move { cache.span(inode, &span).await }));
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (span, fetch) in self.spans[range].iter().zip(fetches) {
            let bytes = fetch.await.map_err(|error| format!("span reader: {error}"))??;
            out.extend_from_slice(&slice_of(&bytes, span, offset, end)?);
        }
        Ok(Bytes::from(out))
    }

    /// The whole content (symlink targets).
    pub async fn read_all(&self, cache: &Arc<SpanCache>) -> SpanResult {
        let size = u32::try_from(self.size).map_err(|_| "too long".to_owned())?;
        self.read(cache, 0, size).await
    }
}

/// The part of `span`'s `bytes` inside `offset..end` (a slice, no copy).
fn slice_of(bytes: &Bytes, span: &FileSpan, offset: u64, end: u64) -> SpanResult {
    let from = offset.saturating_sub(span.offset) as usize;
    let to = (end.saturating_sub(span.offset)).min(bytes.len() as u64) as usize;
    if from > to {
        return Err("span shorter than listed".to_owned());
    }
    Ok(bytes.slice(from..to))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sequential_reads_fetch_each_span_ahead_once() {
        // 16 MiB spans, window 16 MiB at first: the minimum of 2 spans.
        let sizes = [16 * MIB; 10];
        let mut sequence = Sequence::new(64 * MIB);
        assert_eq!(sequence.next(0..1, &sizes, true), Some(1..3));
        assert_eq!(sequence.next(0..1, &sizes, false), None, "same span: already asked for");
        assert_eq!(sequence.next(1..2, &sizes, false), Some(3..4));
        assert_eq!(sequence.next(2..3, &sizes, false), Some(4..5));
        assert_eq!(sequence.next(9..10, &sizes, false), None, "a jump is random access: nothing ahead");
        assert_eq!(sequence.next(9..10, &sizes, false), None, "end of file");
    }

    #[test]
    fn the_read_ahead_is_sized_in_bytes_and_grows_when_the_reader_waits() {
        // 1 MiB spans: 16 of them make the first window.
        let sizes = [MIB; 200];
        let mut sequence = Sequence::new(64 * MIB);
        assert_eq!(sequence.next(0..1, &sizes, true), Some(1..17), "16 MiB ahead, not 2 spans");
        assert_eq!(sequence.next(1..2, &sizes, true), Some(17..34), "waited: 32 MiB ahead");
        assert_eq!(sequence.next(2..3, &sizes, true), Some(34..67), "waited: 64 MiB ahead");
        assert_eq!(sequence.next(3..4, &sizes, true), Some(67..68), "at its bound");
        assert_eq!(sequence.next(4..5, &sizes, false), Some(68..69));
        assert_eq!(sequence.window, 64 * MIB);
        // A bound below the starting window is the window.
        let mut small = Sequence::new(4 * MIB);
        assert_eq!(small.next(0..1, &sizes, true), Some(1..5));
    }

    #[test]
    fn the_cache_drops_the_least_recently_used_spans_beyond_its_bound() {
        let inode = InodeId::compose(wire::InodeType::File, 0, 1).expect("fits");
        let mut state = State::default();
        for offset in [0u64, 10, 20] {
            let cell = state.touch((inode, offset));
            cell.set(Ok(Bytes::from(vec![0; 10]))).expect("empty cell");
            state.entries.get_mut(&(inode, offset)).expect("entry").bytes = 10;
            state.used_bytes += 10;
        }
        let pending = state.touch((inode, 30));
        state.touch((inode, 0));
        state.evict(15);
        let mut kept: Vec<u64> = state.entries.keys().map(|(_, offset)| *offset).collect();
        kept.sort();
        assert_eq!(kept, [0, 30], "10 and 20 were oldest; a span being fetched stays");
        assert_eq!(state.used_bytes, 10);
        assert!(!pending.initialized());
    }

    #[test]
    fn random_reads_fetch_nothing_ahead() {
        let sizes = [16 * MIB; 10];
        let mut sequence = Sequence::new(64 * MIB);
        assert_eq!(sequence.next(5..6, &sizes, true), None);
        assert_eq!(sequence.next(2..3, &sizes, true), None);
        let mut off = Sequence::new(0);
        assert_eq!(off.next(0..1, &sizes, true), None, "read-ahead off");
    }
}
