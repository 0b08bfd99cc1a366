//! The transactions against the fake shards: every success and failure
//! path, and crashes at chosen steps. Concurrency, random streams with
//! faults and crashes, and linearizability are checked in the simulation
//! over the real shard logic (`cdcd/tests/simulation.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use wire::cdc::CdcStatus;
use wire::{InodeId, InodeType, ShardId};

use crate::commit::{CommitMode, GroupCommit};
use crate::coordinator::{Coordinator, RetryPolicy};
use crate::fake::{FakeCluster, LOSSY};
use crate::server::{Frontend, ReplySink, Submitted};
use crate::store::{ClientKey, TxnStore};
use crate::txn::{Outcome, TxnArgs};

const ROOT: u64 = InodeId::ROOT.get();
const NEW_DIR_SHARDS: [ShardId; 3] = [0, 1, 2];

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        timeout_initial: Duration::ZERO,
        timeout_max: Duration::ZERO,
        read_deadline: Duration::from_secs(3600),
    }
}

struct Harness {
    cluster: Arc<FakeCluster>,
    store: Arc<TxnStore>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(seed: u64, loss: f64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TxnStore::open(dir.path(), false).unwrap());
        Self { cluster: FakeCluster::new(3, seed, loss), store, _dir: dir }
    }

    /// A fresh coordinator over the store (a restart when called again).
    fn coordinator(&self) -> Arc<Coordinator<Arc<FakeCluster>>> {
        let commits = GroupCommit::new(self.store.clone(), CommitMode::Inline { fsync: Duration::ZERO });
        tokio::spawn(commits.clone().run());
        Arc::new(Coordinator::new(self.cluster.clone(), commits, NEW_DIR_SHARDS.to_vec(), fast_retry(), Some(1)))
    }

    /// Runs what a previous coordinator left unfinished; the outcomes.
    async fn resume(&self) -> Result<Vec<Outcome>, crate::coordinator::RunError> {
        let coordinator = self.coordinator();
        let mut outcomes = Vec::new();
        for (record, ticket) in coordinator.resume_unfinished()? {
            outcomes.push(coordinator.run_locked(ticket, record.client, record.state, true).await?);
        }
        Ok(outcomes)
    }

    async fn run(&self, args: TxnArgs) -> Outcome {
        let outcome = self.coordinator().execute(args).await.unwrap();
        let problems = self.cluster.lock().violations();
        assert!(problems.is_empty(), "{problems:#?}");
        outcome
    }

    async fn mkdir(&self, parent: u64, name: &str) -> Outcome {
        self.run(TxnArgs::MkDir { parent, name: name.into() }).await
    }

    async fn mkdir_ok(&self, parent: u64, name: &str) -> u64 {
        let outcome = self.mkdir(parent, name).await;
        assert_eq!(outcome.status, CdcStatus::Ok, "{outcome:?}");
        outcome.inode
    }

    async fn rmdir(&self, parent: u64, name: &str) -> Outcome {
        self.run(TxnArgs::RmDir { parent, name: name.into() }).await
    }

    async fn mv(&self, directory: bool, source: (u64, &str), target: (u64, &str)) -> Outcome {
        self.run(TxnArgs::Move {
            directory,
            source_parent: source.0,
            target_parent: target.0,
            source_name: source.1.into(),
            target_name: target.1.into(),
        })
        .await
    }

    fn entry(&self, dir: u64, name: &str) -> Option<u64> {
        self.cluster.lock().dir(dir)?.living.get(name).map(|e| InodeId::new(e.inode).without_owning().get())
    }

    fn parent_of(&self, dir: u64) -> Option<u64> {
        self.cluster.lock().dir(dir).map(|d| d.parent)
    }

    fn link_file(&self, dir: u64, name: &str, shard: ShardId) -> u64 {
        self.cluster.lock().link_file(dir, name, shard).unwrap()
    }
}

fn status(outcome: &Outcome) -> CdcStatus {
    outcome.status
}

#[tokio::test]
async fn mkdir_paths() {
    let h = Harness::new(1, 0.0);
    let a = h.mkdir_ok(ROOT, "a").await;
    assert_eq!(InodeId::new(a).inode_type(), Some(InodeType::Directory));
    assert_eq!(h.entry(ROOT, "a"), Some(a));
    assert_eq!(h.parent_of(a), Some(ROOT));
    let b = h.mkdir_ok(a, "b").await;
    assert_eq!(h.parent_of(b), Some(a));
    assert_eq!(status(&h.mkdir(ROOT, "a").await), CdcStatus::AlreadyExists);
    h.link_file(ROOT, "f", 1);
    assert_eq!(status(&h.mkdir(ROOT, "f").await), CdcStatus::AlreadyExists);
    let file = h.link_file(a, "g", 0);
    assert_eq!(status(&h.mkdir(file, "x").await), CdcStatus::ParentInvalid);
    let missing = InodeId::compose(InodeType::Directory, 0, 999).unwrap().get();
    assert_eq!(status(&h.mkdir(missing, "x").await), CdcStatus::ParentInvalid);
    assert_eq!(status(&h.rmdir(a, "b").await), CdcStatus::Ok);
    // A removed directory is not a valid parent.
    assert_eq!(status(&h.mkdir(b, "x").await), CdcStatus::ParentInvalid);
}

#[tokio::test]
async fn mkdir_spreads_new_directories_over_the_shards() {
    let h = Harness::new(2, 0.0);
    let mut shards = HashSet::new();
    for i in 0..30 {
        shards.insert(InodeId::new(h.mkdir_ok(ROOT, &format!("d{i}")).await).shard());
    }
    assert_eq!(shards, NEW_DIR_SHARDS.into_iter().collect());
}

#[tokio::test]
async fn mkdir_that_loses_a_race_for_the_name_unlinks_its_directory() {
    // A client links a file under the name between the CDC's resolve and
    // its inject: inject overwrites an owning file, so to force the
    // rollback path the racing entry is a directory made behind our back.
    let h = Harness::new(3, 0.0);
    let coordinator = h.coordinator();
    let mut state = coordinator.new_txn(TxnArgs::MkDir { parent: ROOT, name: "x".into() });
    // Run the reads by hand: stat parent, resolve.
    let context = crate::txn::Context { new_dir_shards: &NEW_DIR_SHARDS };
    state.advance(crate::shards::ShardReply::StatDirectory { parent: InodeId::NULL }, false, &context);
    state.advance(crate::shards::ShardReply::Error(wire::ErrorKind::NotFound), false, &context);
    let other = h.mkdir_ok(ROOT, "x").await;
    let outcome = coordinator.run(None, state, false).await.unwrap();
    assert_eq!(outcome.status, CdcStatus::AlreadyExists);
    assert_eq!(h.entry(ROOT, "x"), Some(other));
    // The directory created for the failed mkdir is unlinked, not orphaned.
    let lock = h.cluster.lock();
    let unlinked: Vec<_> = lock.shards.values().flat_map(|s| s.dirs.iter()).filter(|(_, d)| d.parent == 0).collect();
    assert_eq!(unlinked.len(), 2, "root and the rolled back directory");
    assert!(lock.violations().is_empty());
}

#[tokio::test]
async fn rmdir_paths() {
    let h = Harness::new(4, 0.0);
    let a = h.mkdir_ok(ROOT, "a").await;
    h.mkdir_ok(a, "b").await;
    h.link_file(ROOT, "f", 1);
    assert_eq!(status(&h.rmdir(ROOT, "a").await), CdcStatus::DirectoryNotEmpty);
    assert_eq!(h.entry(ROOT, "a"), Some(a), "a failed rmdir leaves the entry owning (checked by violations)");
    assert_eq!(status(&h.rmdir(ROOT, "f").await), CdcStatus::BadInodeType);
    assert_eq!(status(&h.rmdir(ROOT, "nope").await), CdcStatus::NotFound);
    let file = h.link_file(a, "g", 0);
    assert_eq!(status(&h.rmdir(file, "x").await), CdcStatus::ParentInvalid);
    assert_eq!(status(&h.rmdir(a, "b").await), CdcStatus::Ok);
    assert_eq!(status(&h.rmdir(ROOT, "a").await), CdcStatus::DirectoryNotEmpty, "g is still there");
    h.cluster.lock().delete_file(a, "g");
    let outcome = h.rmdir(ROOT, "a").await;
    assert_eq!(outcome, Outcome::ok(InodeId::new(a)));
    assert_eq!(h.entry(ROOT, "a"), None);
    assert_eq!(h.parent_of(a), Some(0));
    // The killed entry is in the dead map, non-owning.
    let lock = h.cluster.lock();
    let dead = &lock.dir(ROOT).unwrap().dead;
    assert!(dead.iter().any(|d| d.name == "a" && d.inode == a));
}

#[tokio::test]
async fn mv_file_paths() {
    let h = Harness::new(5, 0.0);
    let a = h.mkdir_ok(ROOT, "a").await;
    let b = h.mkdir_ok(ROOT, "b").await;
    let f = h.link_file(a, "f", 0);
    let outcome = h.mv(false, (a, "f"), (b, "g")).await;
    assert_eq!(outcome, Outcome::ok(InodeId::new(f)));
    assert_eq!(h.entry(a, "f"), None);
    assert_eq!(h.entry(b, "g"), Some(f));
    // Overwriting a file: the old one goes to the dead map, still owned there.
    let old = h.link_file(a, "h", 2);
    assert_eq!(status(&h.mv(false, (b, "g"), (a, "h")).await), CdcStatus::Ok);
    assert_eq!(h.entry(a, "h"), Some(f));
    assert!(h.cluster.lock().dir(a).unwrap().dead.iter().any(|d| d.inode == InodeId::new(old).with_owning(true).get()));
    // Target is a directory.
    h.mkdir_ok(b, "d").await;
    assert_eq!(status(&h.mv(false, (a, "h"), (b, "d")).await), CdcStatus::CannotOverrideTarget);
    assert_eq!(h.entry(a, "h"), Some(f), "the source stays, owning again");
    // Missing source, directory source, bad parents, same entry.
    assert_eq!(status(&h.mv(false, (a, "nope"), (b, "x")).await), CdcStatus::NotFound);
    assert_eq!(status(&h.mv(false, (ROOT, "a"), (b, "x")).await), CdcStatus::BadInodeType);
    assert_eq!(status(&h.mv(false, (a, "h"), (f, "x")).await), CdcStatus::ParentInvalid);
    let missing = InodeId::compose(InodeType::Directory, 2, 999).unwrap().get();
    assert_eq!(status(&h.mv(false, (missing, "h"), (b, "x")).await), CdcStatus::ParentInvalid);
    assert_eq!(status(&h.mv(false, (a, "h"), (a, "h")).await), CdcStatus::BadRequest);
    // A rename within one directory also works through the CDC.
    assert_eq!(status(&h.mv(false, (a, "h"), (a, "i")).await), CdcStatus::Ok);
    assert_eq!(h.entry(a, "i"), Some(f));
}

#[tokio::test]
async fn mv_dir_paths() {
    let h = Harness::new(6, 0.0);
    let a = h.mkdir_ok(ROOT, "a").await;
    let b = h.mkdir_ok(a, "b").await;
    let c = h.mkdir_ok(b, "c").await;
    let d = h.mkdir_ok(ROOT, "d").await;
    // Into itself and into its own subtree.
    assert_eq!(status(&h.mv(true, (ROOT, "a"), (a, "x")).await), CdcStatus::LoopDetected);
    assert_eq!(status(&h.mv(true, (ROOT, "a"), (c, "x")).await), CdcStatus::LoopDetected);
    assert_eq!(h.entry(ROOT, "a"), Some(a));
    // Target exists as a directory.
    assert_eq!(status(&h.mv(true, (a, "b"), (ROOT, "d")).await), CdcStatus::CannotOverrideTarget);
    // Wrong types, missing source, bad parents.
    let f = h.link_file(ROOT, "f", 1);
    assert_eq!(status(&h.mv(true, (ROOT, "f"), (d, "f")).await), CdcStatus::BadInodeType);
    assert_eq!(status(&h.mv(true, (ROOT, "nope"), (d, "x")).await), CdcStatus::NotFound);
    assert_eq!(status(&h.mv(true, (ROOT, "a"), (f, "x")).await), CdcStatus::ParentInvalid);
    // Success: b (with c inside) moves under d.
    let outcome = h.mv(true, (a, "b"), (d, "b2")).await;
    assert_eq!(outcome, Outcome::ok(InodeId::new(b)));
    assert_eq!(h.entry(a, "b"), None);
    assert_eq!(h.entry(d, "b2"), Some(b));
    assert_eq!(h.parent_of(b), Some(d));
    assert_eq!(h.parent_of(c), Some(b));
    // Now a may go under c's old ancestors' sibling… and d may not go under c.
    assert_eq!(status(&h.mv(true, (ROOT, "d"), (c, "d")).await), CdcStatus::LoopDetected);
    assert_eq!(status(&h.mv(true, (ROOT, "a"), (c, "a")).await), CdcStatus::Ok);
    assert_eq!(h.parent_of(a), Some(c));
    // A removed directory is no target.
    assert_eq!(status(&h.rmdir(c, "a").await), CdcStatus::Ok);
    h.mkdir_ok(ROOT, "e").await;
    assert_eq!(status(&h.mv(true, (ROOT, "e"), (a, "e")).await), CdcStatus::ParentInvalid);
    // A directory may overwrite a file entry (the file goes to the dead map).
    assert_eq!(status(&h.mv(true, (ROOT, "e"), (ROOT, "f")).await), CdcStatus::Ok);
}

#[tokio::test]
async fn purge_remote_file_paths() {
    let h = Harness::new(7, 0.0);
    // Root is on shard 1; a file of shard 0 linked in it, then deleted.
    let remote = h.link_file(ROOT, "r", 0);
    let remote_time = h.cluster.lock().delete_file(ROOT, "r").unwrap();
    let local = h.link_file(ROOT, "l", 1);
    let local_time = h.cluster.lock().delete_file(ROOT, "l").unwrap();
    let purge =
        |name: &str, creation_time: u64| TxnArgs::PurgeRemoteFile { parent: ROOT, creation_time, name: name.into() };
    assert_eq!(status(&h.run(purge("l", local_time)).await), CdcStatus::BadRequest);
    assert_eq!(status(&h.run(purge("r", remote_time + 1)).await), CdcStatus::NotFound);
    assert_eq!(status(&h.run(purge("nope", remote_time)).await), CdcStatus::NotFound);
    let outcome = h.run(purge("r", remote_time)).await;
    assert_eq!(outcome, Outcome::ok(InodeId::new(remote)));
    let lock = h.cluster.lock();
    assert!(lock.shards[&0].eden.contains(&remote));
    assert!(!lock.shards[&0].files.contains(&remote));
    assert!(
        !lock
            .dir(ROOT)
            .unwrap()
            .dead
            .iter()
            .any(|d| d.inode != 0 && InodeId::new(d.inode).without_owning().get() == remote)
    );
    assert!(lock.shards[&1].files.contains(&local));
}

#[tokio::test]
async fn a_retransmitted_client_request_gets_the_same_answer_and_no_second_directory() {
    let h = Harness::new(8, 0.0);
    let answers: Arc<std::sync::Mutex<Vec<Outcome>>> = Arc::default();
    let sink: ReplySink = {
        let answers = answers.clone();
        Arc::new(move |_, _, outcome| answers.lock().unwrap().push(outcome.clone()))
    };
    let frontend = Frontend::new(h.coordinator(), sink);
    let client = ClientKey { address: "127.0.0.1:999".parse().unwrap(), request_id: 42 };
    let args = TxnArgs::MkDir { parent: ROOT, name: "a".into() };
    assert!(matches!(frontend.submit(client, args.clone()), Submitted::Started(_)));
    assert_eq!(frontend.submit(client, args.clone()), Submitted::Running);
    while frontend.in_flight() > 0 {
        tokio::task::yield_now().await;
    }
    let outcome = answers.lock().unwrap()[0].clone();
    assert_eq!(outcome.status, CdcStatus::Ok);
    assert_eq!(frontend.submit(client, args.clone()), Submitted::Answer(outcome.clone()));
    // Also after a restart.
    let frontend = Frontend::new(h.coordinator(), Arc::new(|_, _, _| {}));
    assert_eq!(frontend.resume().unwrap(), 0);
    assert_eq!(frontend.submit(client, args), Submitted::Answer(outcome));
    let dirs: usize = h.cluster.lock().shards.values().map(|s| s.dirs.len()).sum();
    assert_eq!(dirs, 2);
}

// Regression: a transaction resumed at a read step skipped the save before
// its first mutation (the stored state was still the read step). A second
// crash right after the shard executed that mutation then resumed from the
// read step, found its own acquired entry non-owning, answered "held by
// another transaction" and left the entry non-owning for good. (Records are
// now first written before the first mutation, so a crash during the reads
// leaves nothing to resume: the client's retransmission starts it again.)
#[tokio::test]
async fn a_transaction_resumed_at_a_read_saves_before_its_first_mutation() {
    for seed in 0..16 {
        let h = Harness::new(200 + seed, 0.0);
        let target = h.mkdir_ok(ROOT, "t").await;
        let file = h.link_file(ROOT, "a", 1);
        let args = TxnArgs::Move {
            directory: false,
            source_parent: ROOT,
            target_parent: target,
            source_name: "a".into(),
            target_name: "a".into(),
        };
        // First crash on the first call (a read: stat of the target parent).
        let calls = h.cluster.lock().calls;
        h.cluster.lock().crash_at = Some(calls + 1);
        let coordinator = h.coordinator();
        assert!(coordinator.run(None, coordinator.new_txn(args.clone()), false).await.is_err());
        assert!(h.resume().await.unwrap().is_empty(), "nothing was written before the first mutation");
        // Started again, it reads (stat, stat, resolve) and acquires: crash
        // on the acquire, which the shard executes or not (the fake flips a coin).
        let calls = h.cluster.lock().calls;
        h.cluster.lock().crash_at = Some(calls + 4);
        let coordinator = h.coordinator();
        assert!(coordinator.run(None, coordinator.new_txn(args), false).await.is_err());
        let finished = h.resume().await.unwrap();
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0], Outcome::ok(InodeId::new(file)), "seed {seed}");
        assert_eq!(h.entry(target, "a"), Some(file));
        assert_eq!(h.entry(ROOT, "a"), None);
        let problems = h.cluster.lock().violations();
        assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
    }
}

#[tokio::test]
async fn a_crash_mid_purge_resumes_and_finishes() {
    for seed in 0..20 {
        let h = Harness::new(100 + seed, LOSSY);
        let remote = h.link_file(ROOT, "r", 0);
        let time = h.cluster.lock().delete_file(ROOT, "r").unwrap();
        let calls = h.cluster.lock().calls;
        h.cluster.lock().crash_at = Some(calls + 1 + seed % 4);
        let args = TxnArgs::PurgeRemoteFile { parent: ROOT, creation_time: time, name: "r".into() };
        let coordinator = h.coordinator();
        let outcome = match coordinator.run(None, coordinator.new_txn(args.clone()), false).await {
            Ok(outcome) => outcome,
            Err(_) => match h.resume().await.unwrap().pop() {
                Some(outcome) => outcome,
                // Crashed before its first mutation: nothing to resume, run again.
                None => h.coordinator().execute(args).await.unwrap(),
            },
        };
        assert_eq!(outcome, Outcome::ok(InodeId::new(remote)), "seed {seed}");
        assert!(h.cluster.lock().shards[&0].eden.contains(&remote));
    }
}
