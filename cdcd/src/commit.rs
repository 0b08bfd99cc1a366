//! Group commit of the transaction store.
//!
//! A transaction's state must be durable before its next mutation goes to a
//! shard. With many transactions running at once, each waiting for "my
//! state is on disk", one committer task takes every record queued since
//! its last commit and writes them all in one LMDB commit, then hands the
//! waiters to the store's journal, which wakes them once the commit is
//! durable (its thread syncs every commit made meanwhile at once; see
//! [`crate::store`]). The committer does not wait for that sync: it
//! starts the next commit at once. Nobody waits for a timer: the batch is
//! whatever arrived during the previous commit.
//!
//! When a commit fails (disk full, I/O error) the committer keeps the
//! records and tries again with backoff, for as long as it takes; meanwhile
//! [`GroupCommit::healthy`] is false, and the server refuses new
//! transactions with STORAGE_ERROR instead of accepting work it cannot
//! record. Transactions already running simply wait: none is lost, and all
//! continue once space returns.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use daemon::metrics::{Counter, Histogram};
use tokio::sync::{Notify, oneshot};

use crate::store::{TxnRecord, TxnStore};

/// How long an idle committer waits before letting the journal take a
/// checkpoint's snapshot (it needs one between commits).
const IDLE_SNAPSHOT_PERIOD: Duration = daemon::journal::CHECKPOINT_PERIOD;

/// First wait after a failed commit; doubled up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// How commits run: on tokio's blocking pool (the daemon), or inline in the
/// committer task (the deterministic simulation: no other thread), there
/// after a pause of tokio's (virtual) time that stands for the fsync, so
/// that records queue up behind a commit and a crash can fall between a
/// record's queueing and its durability.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CommitMode {
    Blocking,
    Inline { fsync: std::time::Duration },
}

/// Counts, for the metrics and the perf reading.
#[derive(Debug)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub records: AtomicU64,
    /// Failed commits (each retried).
    pub failures: Counter,
    /// Records per commit.
    pub batch_size: Histogram,
    /// Time of one commit (LMDB's, without the journal's sync), failed
    /// attempts included.
    pub duration: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            commits: AtomicU64::new(0),
            records: AtomicU64::new(0),
            failures: Counter::default(),
            batch_size: Histogram::sizes(),
            duration: Histogram::seconds(),
        }
    }
}

type Waker = oneshot::Sender<()>;
type Waiter = (TxnRecord, Waker);

pub struct GroupCommit {
    store: Arc<TxnStore>,
    queue: Mutex<Vec<Waiter>>,
    wake: Notify,
    healthy: AtomicBool,
    mode: CommitMode,
    pub stats: CommitStats,
}

impl GroupCommit {
    /// The committer; run [`GroupCommit::run`] on a task.
    pub fn new(store: Arc<TxnStore>, mode: CommitMode) -> Arc<Self> {
        Arc::new(Self {
            store,
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            healthy: AtomicBool::new(true),
            mode,
            stats: CommitStats::default(),
        })
    }

    pub fn store(&self) -> &Arc<TxnStore> {
        &self.store
    }

    /// False while the last commit failed (the disk is full or failing).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Returns once `record` is durable. Waits as long as the disk fails.
    /// `None` when the committer is gone (shutting down).
    pub async fn save(&self, record: TxnRecord) -> Option<()> {
        self.queue_record(record).await.ok()
    }

    /// Queues `record` for the next commit at once (so it is committed with
    /// or before anything queued after this call) without waiting: the
    /// receiver fires once it is durable (an error when the committer is
    /// gone).
    pub fn queue_record(&self, record: TxnRecord) -> oneshot::Receiver<()> {
        let (done, durable) = oneshot::channel();
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((record, done));
        self.wake.notify_one();
        durable
    }

    /// The committer loop: never returns.
    pub async fn run(self: Arc<Self>) {
        loop {
            let batch: Vec<Waiter> =
                std::mem::take(&mut *self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            if batch.is_empty() {
                match self.mode {
                    CommitMode::Blocking => {
                        if tokio::time::timeout(IDLE_SNAPSHOT_PERIOD, self.wake.notified()).await.is_err() {
                            // A read transaction and one cached page's pread.
                            self.store.idle();
                        }
                    }
                    CommitMode::Inline { .. } => self.wake.notified().await,
                }
                continue;
            }
            let (records, waiters): (Vec<TxnRecord>, Vec<oneshot::Sender<()>>) = batch.into_iter().unzip();
            // Taken by the commit that succeeds (a failed one leaves them).
            let waiters = Arc::new(Mutex::new(Some(waiters)));
            let mut wait = RETRY_INITIAL;
            self.stats.batch_size.observe(records.len() as u64);
            loop {
                let started = std::time::Instant::now();
                let committed = self.commit(&records, &waiters).await;
                self.stats.duration.observe_duration(started.elapsed());
                match committed {
                    Ok(()) => break,
                    Err(error) => {
                        if self.healthy.swap(false, Ordering::Relaxed) {
                            tracing::error!(%error, "transaction store commit failed; refusing new transactions and retrying");
                        }
                        self.stats.failures.inc();
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
            if !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::warn!("transaction store commits again; accepting new transactions");
            }
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats.records.fetch_add(records.len() as u64, Ordering::Relaxed);
        }
    }

    async fn commit(&self, records: &[TxnRecord], waiters: &Arc<Mutex<Option<Vec<Waker>>>>) -> Result<(), String> {
        let waiters = waiters.clone();
        let on_durable = Box::new(move || {
            let taken = waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            for waiter in taken.into_iter().flatten() {
                let _ = waiter.send(());
            }
        });
        match self.mode {
            CommitMode::Inline { fsync } => {
                tokio::time::sleep(fsync).await;
                self.store.commit_then(records, on_durable).map_err(|e| e.to_string())
            }
            CommitMode::Blocking => {
                let store = self.store.clone();
                let records = records.to_vec();
                match tokio::task::spawn_blocking(move || store.commit_then(&records, on_durable)).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(join) => Err(join.to_string()),
                }
            }
        }
    }
}
