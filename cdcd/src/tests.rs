//! The transactions against the fake shards: every success and failure
//! path, then random streams of operations with a lossy network and
//! crashes between any two steps, checked against a reference model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::cdc::CdcStatus;
use wire::{InodeId, InodeType, ShardId};

use crate::coordinator::{Coordinator, RetryPolicy, RunError};
use crate::fake::{FakeCluster, Faults};
use crate::shards::TransportError;
use crate::store::{Begin, ClientKey, TxnStore};
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
    fn new(seed: u64, faults: Faults) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TxnStore::open(dir.path(), false).unwrap());
        Self { cluster: FakeCluster::new(3, seed, faults), store, _dir: dir }
    }

    fn coordinator(&self) -> Coordinator<Arc<FakeCluster>, Arc<TxnStore>> {
        Coordinator::new(self.cluster.clone(), self.store.clone(), NEW_DIR_SHARDS.to_vec(), fast_retry())
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
    let h = Harness::new(1, Faults::default());
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
    let h = Harness::new(2, Faults::default());
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
    let h = Harness::new(3, Faults::default());
    let coordinator = h.coordinator();
    let Begin::New(mut state) = coordinator.begin(None, TxnArgs::MkDir { parent: ROOT, name: "x".into() }).unwrap()
    else {
        panic!()
    };
    // Run the reads by hand: stat parent, resolve.
    let context = crate::txn::Context { new_dir_shards: &NEW_DIR_SHARDS };
    state.advance(crate::shards::ShardReply::StatDirectory { parent: InodeId::NULL }, false, &context);
    state.advance(crate::shards::ShardReply::Error(wire::ErrorKind::NotFound), false, &context);
    let other = h.mkdir_ok(ROOT, "x").await;
    let outcome = coordinator.run(state, false).await.unwrap();
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
    let h = Harness::new(4, Faults::default());
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
    let h = Harness::new(5, Faults::default());
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
    let h = Harness::new(6, Faults::default());
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
    let h = Harness::new(7, Faults::default());
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
    let h = Harness::new(8, Faults::default());
    let coordinator = h.coordinator();
    let client = ClientKey { address: "127.0.0.1:999".parse().unwrap(), request_id: 42 };
    let args = TxnArgs::MkDir { parent: ROOT, name: "a".into() };
    let Begin::New(state) = coordinator.begin(Some(client), args.clone()).unwrap() else { panic!() };
    assert!(matches!(coordinator.begin(Some(client), args.clone()).unwrap(), Begin::InProgress(_)));
    let outcome = coordinator.run(state, false).await.unwrap();
    assert_eq!(coordinator.begin(Some(client), args).unwrap(), Begin::Finished(outcome.clone()));
    let dirs: usize = h.cluster.lock().shards.values().map(|s| s.dirs.len()).sum();
    assert_eq!(dirs, 2);
}

// ---- random streams with faults and crashes, against a reference model ----

/// The expected tree: living entries per linked directory.
#[derive(Default)]
struct Model {
    entries: HashMap<u64, BTreeMap<String, u64>>,
    parents: HashMap<u64, u64>,
    removed: HashSet<u64>,
}

impl Model {
    fn new() -> Self {
        let mut model = Self::default();
        model.entries.insert(ROOT, BTreeMap::new());
        model
    }

    fn is_dir(inode: u64) -> bool {
        InodeId::new(inode).inode_type() == Some(InodeType::Directory)
    }

    fn linked(&self, dir: u64) -> bool {
        Self::is_dir(dir) && self.entries.contains_key(&dir)
    }

    fn inside(&self, dir: u64, ancestor: u64) -> bool {
        let mut cursor = dir;
        loop {
            if cursor == ancestor {
                return true;
            }
            match self.parents.get(&cursor) {
                Some(parent) => cursor = *parent,
                None => return false,
            }
        }
    }

    /// The status the CDC must answer, in the CDC's order of checks.
    fn expect(&self, args: &TxnArgs) -> CdcStatus {
        match args {
            TxnArgs::MkDir { parent, name } => {
                if !self.linked(*parent) {
                    CdcStatus::ParentInvalid
                } else if self.entries[parent].contains_key(name) {
                    CdcStatus::AlreadyExists
                } else {
                    CdcStatus::Ok
                }
            }
            TxnArgs::RmDir { parent, name } => {
                if !self.linked(*parent) {
                    return CdcStatus::ParentInvalid;
                }
                match self.entries[parent].get(name) {
                    None => CdcStatus::NotFound,
                    Some(child) if !Self::is_dir(*child) => CdcStatus::BadInodeType,
                    Some(child) if !self.entries[child].is_empty() => CdcStatus::DirectoryNotEmpty,
                    Some(_) => CdcStatus::Ok,
                }
            }
            TxnArgs::Move { directory, source_parent, target_parent, source_name, target_name } => {
                if source_parent == target_parent && source_name == target_name {
                    return CdcStatus::BadRequest;
                }
                if !self.linked(*target_parent) || !self.linked(*source_parent) {
                    return CdcStatus::ParentInvalid;
                }
                let Some(source) = self.entries[source_parent].get(source_name) else {
                    return CdcStatus::NotFound;
                };
                if Self::is_dir(*source) != *directory {
                    return CdcStatus::BadInodeType;
                }
                if self.entries[target_parent].get(target_name).is_some_and(|t| Self::is_dir(*t)) {
                    return CdcStatus::CannotOverrideTarget;
                }
                if *directory && self.inside(*target_parent, *source) {
                    return CdcStatus::LoopDetected;
                }
                CdcStatus::Ok
            }
            TxnArgs::PurgeRemoteFile { .. } => unreachable!("not generated"),
        }
    }

    fn apply(&mut self, args: &TxnArgs, outcome: &Outcome) {
        match args {
            TxnArgs::MkDir { parent, name } => {
                self.entries.get_mut(parent).unwrap().insert(name.clone(), outcome.inode);
                self.entries.insert(outcome.inode, BTreeMap::new());
                self.parents.insert(outcome.inode, *parent);
            }
            TxnArgs::RmDir { parent, name } => {
                let child = self.entries.get_mut(parent).unwrap().remove(name).unwrap();
                self.entries.remove(&child);
                self.parents.remove(&child);
                self.removed.insert(child);
            }
            TxnArgs::Move { directory, source_parent, target_parent, source_name, target_name } => {
                let moved = self.entries.get_mut(source_parent).unwrap().remove(source_name).unwrap();
                assert_eq!(moved, outcome.inode);
                self.entries.get_mut(target_parent).unwrap().insert(target_name.clone(), moved);
                if *directory {
                    self.parents.insert(moved, *target_parent);
                }
            }
            TxnArgs::PurgeRemoteFile { .. } => unreachable!(),
        }
    }

    fn check_against(&self, cluster: &FakeCluster) {
        let lock = cluster.lock();
        for (dir, expected) in &self.entries {
            let actual: BTreeMap<String, u64> = lock
                .dir(*dir)
                .unwrap()
                .living
                .iter()
                .map(|(name, e)| (name.clone(), InodeId::new(e.inode).without_owning().get()))
                .collect();
            assert_eq!(&actual, expected, "directory {dir:#x}");
        }
        for dir in &self.removed {
            assert_eq!(lock.dir(*dir).unwrap().parent, 0);
        }
        let problems = lock.violations();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}

fn random_args(rng: &mut StdRng, model: &Model) -> TxnArgs {
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    let mut dirs: Vec<u64> = model.entries.keys().copied().collect();
    dirs.sort_unstable();
    let pick_dir = |rng: &mut StdRng| -> u64 {
        match rng.random_range(0..20) {
            0 => InodeId::compose(InodeType::Directory, 2, 9999).unwrap().get(),
            1 if !model.removed.is_empty() => *model.removed.iter().min().unwrap(),
            2 => model.entries.values().flat_map(|m| m.values()).copied().find(|i| !Model::is_dir(*i)).unwrap_or(ROOT),
            _ => dirs[rng.random_range(0..dirs.len())],
        }
    };
    let name = |rng: &mut StdRng| NAMES[rng.random_range(0..NAMES.len())].to_string();
    match rng.random_range(0..10) {
        0..=3 => TxnArgs::MkDir { parent: pick_dir(rng), name: name(rng) },
        4..=5 => TxnArgs::RmDir { parent: pick_dir(rng), name: name(rng) },
        kind => TxnArgs::Move {
            directory: kind >= 8,
            source_parent: pick_dir(rng),
            target_parent: pick_dir(rng),
            source_name: name(rng),
            target_name: name(rng),
        },
    }
}

/// Runs `ops` random operations; with `crashes`, the coordinator is dropped
/// at a random shard call of most operations and rebuilt from the store.
async fn random_stream(seed: u64, faults: Faults, ops: usize, crashes: bool) {
    let h = Harness::new(seed, faults);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut model = Model::new();
    let mut statuses: HashMap<CdcStatus, usize> = HashMap::new();
    let mut crash_count = 0;
    for op in 0..ops {
        // Clients link files now and then (between transactions).
        if rng.random_bool(0.2) {
            let mut dirs: Vec<u64> = model.entries.keys().copied().collect();
            dirs.sort_unstable();
            let dir = dirs[rng.random_range(0..dirs.len())];
            let name = ["a", "b", "c", "d", "e"][rng.random_range(0..5)];
            let shard = rng.random_range(0..3);
            if let Some(file) = h.cluster.lock().link_file(dir, name, shard) {
                model.entries.get_mut(&dir).unwrap().insert(name.into(), file);
            }
        }
        let args = random_args(&mut rng, &model);
        let expected = model.expect(&args);
        let client = ClientKey { address: "10.0.0.1:1000".parse().unwrap(), request_id: op as u64 };
        if crashes && rng.random_bool(0.7) {
            let calls = h.cluster.lock().calls;
            h.cluster.lock().crash_at = Some(calls + rng.random_range(1..8));
        }
        let coordinator = h.coordinator();
        let result = match coordinator.begin(Some(client), args.clone()).unwrap() {
            Begin::New(state) => coordinator.run(state, false).await,
            other => panic!("{other:?}"),
        };
        drop(coordinator);
        if let Err(error) = result {
            assert!(matches!(error, RunError::Transport(TransportError::Shutdown)), "{error}");
            crash_count += 1;
            // Restart (perhaps crashing again) until nothing is left.
            loop {
                if rng.random_bool(0.3) {
                    let calls = h.cluster.lock().calls;
                    h.cluster.lock().crash_at = Some(calls + rng.random_range(1..6));
                }
                match h.coordinator().resume_unfinished().await {
                    Ok(_) => break,
                    Err(RunError::Transport(TransportError::Shutdown)) => crash_count += 1,
                    Err(error) => panic!("{error}"),
                }
            }
        }
        h.cluster.lock().crash_at = None;
        // The client's retransmission finds the answer.
        let outcome = match h.store.begin(Some(client), args.clone()).unwrap() {
            Begin::Finished(outcome) => outcome,
            other => panic!("op {op}: {other:?}"),
        };
        assert_eq!(outcome.status, expected, "op {op}: {args:?} → {outcome:?}");
        *statuses.entry(outcome.status).or_default() += 1;
        if outcome.status == CdcStatus::Ok {
            model.apply(&args, &outcome);
            if let TxnArgs::MkDir { .. } = args {
                assert!(NEW_DIR_SHARDS.contains(&InodeId::new(outcome.inode).shard()));
            }
        }
        model.check_against(&h.cluster);
    }
    // Late copies of old requests change nothing.
    h.cluster.lock().deliver_delayed();
    model.check_against(&h.cluster);
    // The stream exercised the interesting paths.
    for status in [CdcStatus::Ok, CdcStatus::NotFound, CdcStatus::ParentInvalid, CdcStatus::AlreadyExists] {
        assert!(statuses.get(&status).copied().unwrap_or(0) > 0, "{status:?} never happened: {statuses:?}");
    }
    if crashes {
        assert!(crash_count > ops / 5, "only {crash_count} crashes");
    }
}

#[tokio::test]
async fn random_operations_on_a_perfect_network() {
    for seed in 0..4 {
        random_stream(seed, Faults::default(), 300, false).await;
    }
}

#[tokio::test]
async fn random_operations_on_a_lossy_network() {
    for seed in 10..14 {
        random_stream(seed, Faults::lossy(), 300, false).await;
    }
}

#[tokio::test]
async fn random_operations_with_crashes_between_any_two_steps() {
    for seed in 20..24 {
        random_stream(seed, Faults::default(), 300, true).await;
    }
}

#[tokio::test]
async fn random_operations_with_crashes_on_a_lossy_network() {
    for seed in 30..34 {
        random_stream(seed, Faults::lossy(), 300, true).await;
    }
}

// Regression: a transaction resumed at a read step skipped the save before
// its first mutation (the stored state was still the read step). A second
// crash right after the shard executed that mutation then resumed from the
// read step, found its own acquired entry non-owning, answered "held by
// another transaction" and left the entry non-owning for good.
#[tokio::test]
async fn a_transaction_resumed_at_a_read_saves_before_its_first_mutation() {
    for seed in 0..16 {
        let h = Harness::new(200 + seed, Faults::default());
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
        let Begin::New(state) = h.coordinator().begin(None, args).unwrap() else { panic!() };
        assert!(h.coordinator().run(state, false).await.is_err());
        // Resumed, it reads (stat, stat, resolve) and acquires: crash on the
        // acquire, which the shard executes or not (the fake flips a coin).
        let calls = h.cluster.lock().calls;
        h.cluster.lock().crash_at = Some(calls + 4);
        assert!(h.coordinator().resume_unfinished().await.is_err());
        let finished = h.coordinator().resume_unfinished().await.unwrap();
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].outcome, Outcome::ok(InodeId::new(file)), "seed {seed}");
        assert_eq!(h.entry(target, "a"), Some(file));
        assert_eq!(h.entry(ROOT, "a"), None);
        let problems = h.cluster.lock().violations();
        assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
    }
}

#[tokio::test]
async fn a_crash_mid_purge_resumes_and_finishes() {
    for seed in 0..20 {
        let h = Harness::new(100 + seed, Faults::lossy());
        let remote = h.link_file(ROOT, "r", 0);
        let time = h.cluster.lock().delete_file(ROOT, "r").unwrap();
        let calls = h.cluster.lock().calls;
        h.cluster.lock().crash_at = Some(calls + 1 + seed % 4);
        let args = TxnArgs::PurgeRemoteFile { parent: ROOT, creation_time: time, name: "r".into() };
        let coordinator = h.coordinator();
        let Begin::New(state) = coordinator.begin(None, args).unwrap() else { panic!() };
        let outcome = match coordinator.run(state, false).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let finished = h.coordinator().resume_unfinished().await.unwrap();
                assert_eq!(finished.len(), 1);
                finished[0].outcome.clone()
            }
        };
        assert_eq!(outcome, Outcome::ok(InodeId::new(remote)), "seed {seed}");
        assert!(h.cluster.lock().shards[&0].eden.contains(&remote));
    }
}
