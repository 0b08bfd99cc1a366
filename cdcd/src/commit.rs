//! Group commit of the transaction store.
//!
//! A transaction's state must be durable before its next mutation goes to a
//! shard. With many transactions running at once, each waiting for "my
//! state is on disk", one committer task takes every record queued since
//! its last commit and writes them all in one LMDB commit (one fsync), then
//! wakes each waiter. Nobody waits for a timer: a commit starts as soon as
//! the previous one ends, so the batch is whatever arrived during it.
//!
//! # One sync per commit under load
//!
//! An LMDB commit used to cost two fdatasyncs: one for its data pages, then
//! one for its meta page (written through an O_DSYNC descriptor). The store
//! now runs with NO_META_SYNC ([`crate::store`]): a commit fdatasyncs its
//! data pages and writes its meta page unsynced. That meta page is on disk
//! once any fdatasync of the file that *started after it was written* has
//! returned. The committer therefore wakes a batch's waiters only
//!
//! - after the *next* commit, whose data fdatasync starts after this
//!   batch's meta page was written and so covers it, when records were
//!   queued meanwhile (under load, always); or
//! - after one explicit fdatasync ([`TxnStore::sync`]) when nothing is
//!   queued (an idle CDC, or a lone client: still two syncs, as before).
//!   Waiting a little for a record before that sync was tried and dropped:
//!   the record then made a small commit of its own, and the syncs per
//!   operation stayed the same.
//!
//! So "durable before the step goes out" holds exactly as before: a
//! waiter is woken after its record's data pages and the meta page that
//! makes them current are both on disk. A crash (even a power loss)
//! between a commit and the sync that covers it can undo that last
//! commit, never part of it; nobody was told about it. Under load a commit
//! now pays one sync instead of two (the profile in
//! `perf/results/2026-11-27-s6-cdc-profile.md`: a sync cost cdcd about
//! 0.1 ms of CPU, a sixth of its CPU per mkdir). A batch waits for one more
//! commit's write and data sync where it used to wait for its meta sync:
//! about the same time.
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
    /// Time of one commit (write and fsync), failed attempts included.
    pub duration: Histogram,
    /// Explicit syncs (nothing was queued to cover the last commit), and
    /// their time.
    pub sync: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            commits: AtomicU64::new(0),
            records: AtomicU64::new(0),
            failures: Counter::default(),
            batch_size: Histogram::sizes(),
            duration: Histogram::seconds(),
            sync: Histogram::seconds(),
        }
    }
}

type Waiter = (TxnRecord, oneshot::Sender<()>);

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
        // Waiters of the last commit: written, its meta page not yet synced.
        let mut unsynced: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let batch: Vec<Waiter> =
                std::mem::take(&mut *self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            if batch.is_empty() {
                if unsynced.is_empty() {
                    self.wake.notified().await;
                } else {
                    // Nothing to commit that would cover the last commit.
                    self.retrying(|| self.sync()).await;
                    wake(&mut unsynced);
                }
                continue;
            }
            let (records, waiters): (Vec<TxnRecord>, Vec<oneshot::Sender<()>>) = batch.into_iter().unzip();
            self.stats.batch_size.observe(records.len() as u64);
            self.retrying(|| self.commit(&records)).await;
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats.records.fetch_add(records.len() as u64, Ordering::Relaxed);
            // This commit's data fdatasync started after the previous
            // commit's meta page was written: that commit is durable.
            wake(&mut unsynced);
            unsynced = waiters;
        }
    }

    /// Runs `attempt` (a commit or a sync, timed into the matching
    /// histogram) until it succeeds, with backoff; unhealthy meanwhile.
    async fn retrying<F: Future<Output = Result<(), String>>>(&self, attempt: impl Fn() -> F) {
        let mut wait = RETRY_INITIAL;
        loop {
            match attempt().await {
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
    }

    /// One fdatasync covering every commit so far.
    async fn sync(&self) -> Result<(), String> {
        let started = std::time::Instant::now();
        let synced = match self.mode {
            CommitMode::Inline { fsync } => {
                tokio::time::sleep(fsync).await;
                self.store.sync().map_err(|e| e.to_string())
            }
            CommitMode::Blocking => {
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.sync()).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(join) => Err(join.to_string()),
                }
            }
        };
        self.stats.sync.observe_duration(started.elapsed());
        synced
    }

    async fn commit(&self, records: &[TxnRecord]) -> Result<(), String> {
        let started = std::time::Instant::now();
        let committed = match self.mode {
            CommitMode::Inline { fsync } => {
                tokio::time::sleep(fsync).await;
                self.store.write_batch(records).map_err(|e| e.to_string())
            }
            CommitMode::Blocking => {
                let store = self.store.clone();
                let records = records.to_vec();
                match tokio::task::spawn_blocking(move || store.write_batch(&records)).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(join) => Err(join.to_string()),
                }
            }
        };
        self.stats.duration.observe_duration(started.elapsed());
        committed
    }
}

/// Tells each waiter its record is durable.
fn wake(waiters: &mut Vec<oneshot::Sender<()>>) {
    for waiter in waiters.drain(..) {
        let _ = waiter.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ClientKey;
    use crate::txn::TxnArgs;

    fn record(store: &TxnStore, request_id: u64) -> TxnRecord {
        let args = TxnArgs::MkDir { parent: wire::InodeId::ROOT.get(), name: format!("d{request_id}") };
        let client = ClientKey { address: "127.0.0.1:4000".parse().unwrap(), request_id };
        TxnRecord { client: Some(client), state: store.new_txn(args) }
    }

    fn committer(dir: &std::path::Path) -> Arc<GroupCommit> {
        let store = Arc::new(TxnStore::open(dir, true).unwrap());
        let commits = GroupCommit::new(store, CommitMode::Blocking);
        tokio::spawn(commits.clone().run());
        commits
    }

    /// A lone record: its commit leaves the meta page unsynced, so it is
    /// acknowledged only after the explicit sync that follows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_is_acknowledged_only_once_a_sync_covers_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let commits = committer(dir.path());
        for round in 1..=3u64 {
            let record = record(commits.store(), round);
            commits.save(record).await.unwrap();
            assert_eq!(
                commits.store().syncs(),
                2 * round,
                "round {round}: its commit's data sync and then the sync that covers its meta page"
            );
            assert_eq!(commits.stats.commits.load(Ordering::Relaxed), round);
        }
    }

    /// Back-to-back commits cover each other: with records arriving all
    /// the time (a thread queues one every ~50 µs, faster than an fsync),
    /// a commit always finds the next batch queued, and only the last one
    /// needs a sync of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_load_the_next_commit_covers_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let commits = committer(dir.path());
        let producer = {
            let commits = commits.clone();
            std::thread::spawn(move || {
                (0..400u64)
                    .map(|n| {
                        let durable = commits.queue_record(record(commits.store(), n));
                        std::thread::sleep(Duration::from_micros(50));
                        durable
                    })
                    .collect::<Vec<_>>()
            })
        };
        for durable in tokio::task::spawn_blocking(move || producer.join().unwrap()).await.unwrap() {
            durable.await.unwrap();
        }
        let commits_made = commits.stats.commits.load(Ordering::Relaxed);
        let syncs = commits.stats.sync.count();
        println!("commits {commits_made}, explicit syncs {syncs}, store syncs {}", commits.store().syncs());
        assert!(commits_made >= 3, "{commits_made} commits: the records did not spread over several");
        assert!(
            syncs * 4 <= commits_made,
            "{syncs} explicit syncs for {commits_made} commits: commits do not cover each other"
        );
    }
}
