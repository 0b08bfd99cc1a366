//! Reads through the mount: an open file's span list (fetched once at open:
//! eggsfs files never change once linked), and one cache of span bytes
//! shared by every open file, bounded in bytes.
//!
//! A read asks the cache for the spans that cover it, and only those: a
//! random read of 4 KiB fetches one span. A read that starts where the
//! previous one on the same handle ended is sequential, and starts fetching
//! the next [`super::MountOptions::read_ahead_spans`] spans in the
//! background, so a streaming reader finds them ready (like `eggs cat`'s
//! window). Spans are read with [`client::read::read_one_span`]: blocks
//! CRC-checked, degraded spans rebuilt from parity, exactly as `eggs cat`.
//!
//! Two readers of the same span share one fetch (a `OnceCell` per span);
//! a failed fetch is not cached, so the next read tries again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use client::Client;
use client::client::FileSpan;
use client::read::read_one_span;
use tokio::sync::OnceCell;
use wire::InodeId;

/// One span's bytes, or why it could not be read.
type SpanResult = Result<Arc<Vec<u8>>, String>;

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
                        Ok(Arc::new(bytes))
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

/// Which spans a handle has read and asked for ahead.
#[derive(Default, Debug)]
struct Sequence {
    /// Index of the first span of the previous read.
    last_first: Option<usize>,
    /// Spans below this index were already asked for ahead.
    fetched_until: usize,
}

impl Sequence {
    /// Records a read of the spans `range`; returns the spans to fetch
    /// ahead. A read is sequential when it starts in the span the previous
    /// one started in or in the next one (the kernel's own read-ahead sends
    /// a few requests at once, not always in order), or at the start.
    fn next(
        &mut self,
        range: std::ops::Range<usize>,
        window: usize,
        span_count: usize,
    ) -> Option<std::ops::Range<usize>> {
        let sequential = match self.last_first {
            None => range.start == 0,
            Some(last) => range.start == last || range.start == last + 1,
        };
        self.last_first = Some(range.start);
        if !sequential || window == 0 {
            return None;
        }
        let from = self.fetched_until.max(range.end);
        let to = (range.end + window).min(span_count);
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
    /// Read-ahead state of this handle.
    sequence: Mutex<Sequence>,
}

impl ReadHandle {
    /// Lists the spans of `inode`.
    pub async fn open(client: &Client, inode: InodeId) -> client::Result<Self> {
        let (spans, size) = client::read::list_spans(client, inode).await?;
        Ok(Self { inode, size, spans, sequence: Mutex::new(Sequence::default()) })
    }

    /// The index range of the spans overlapping `offset..end`.
    fn covering(&self, offset: u64, end: u64) -> std::ops::Range<usize> {
        let first = self.spans.partition_point(|span| span.offset + u64::from(span.size) <= offset);
        let last = self.spans.partition_point(|span| span.offset < end);
        first..last.max(first)
    }

    /// Reads `size` bytes at `offset` (fewer at the end of the file).
    pub async fn read(&self, cache: &Arc<SpanCache>, offset: u64, size: u32, read_ahead_spans: usize) -> SpanResult {
        let end = offset.saturating_add(u64::from(size)).min(self.size);
        if offset >= end {
            return Ok(Arc::new(Vec::new()));
        }
        let range = self.covering(offset, end);
        let ahead = {
            let mut sequence = self.sequence.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            sequence.next(range.clone(), read_ahead_spans, self.spans.len())
        };
        if let Some(ahead) = ahead {
            for span in &self.spans[ahead] {
                let (cache, inode, span) = (cache.clone(), self.inode, span.clone());
                tokio::spawn(async move {
                    let _ = cache.span(inode, &span).await;
                });
            }
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
            let from = offset.saturating_sub(span.offset) as usize;
            let to = (end - span.offset).min(bytes.len() as u64) as usize;
            out.extend_from_slice(bytes.get(from..to).ok_or_else(|| "span shorter than listed".to_owned())?);
        }
        Ok(Arc::new(out))
    }

    /// The whole content (symlink targets).
    pub async fn read_all(&self, cache: &Arc<SpanCache>) -> SpanResult {
        let size = u32::try_from(self.size).map_err(|_| "too long".to_owned())?;
        self.read(cache, 0, size, 0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_reads_fetch_each_span_ahead_once() {
        let mut sequence = Sequence::default();
        assert_eq!(sequence.next(0..1, 3, 10), Some(1..4));
        assert_eq!(sequence.next(0..1, 3, 10), None, "same span: already asked for");
        assert_eq!(sequence.next(1..2, 3, 10), Some(4..5));
        assert_eq!(sequence.next(2..3, 3, 10), Some(5..6));
        assert_eq!(sequence.next(9..10, 3, 10), None, "a jump is random access: nothing ahead");
        assert_eq!(sequence.next(9..10, 3, 10), None, "end of file");
    }

    #[test]
    fn the_cache_drops_the_least_recently_used_spans_beyond_its_bound() {
        let inode = InodeId::compose(wire::InodeType::File, 0, 1).expect("fits");
        let mut state = State::default();
        for offset in [0u64, 10, 20] {
            let cell = state.touch((inode, offset));
            cell.set(Ok(Arc::new(vec![0; 10]))).expect("empty cell");
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
        let mut sequence = Sequence::default();
        assert_eq!(sequence.next(5..6, 3, 10), None);
        assert_eq!(sequence.next(2..3, 3, 10), None);
        assert_eq!(sequence.next(0..1, 0, 10), None, "read-ahead off");
    }
}
