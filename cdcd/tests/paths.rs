//! Every success and failure path of the transactions, and crashes at
//! chosen calls, over the real shard logic: metad's request handlers on
//! temporary LMDB environments, in-process, behind the simulation's
//! network (`sim/`), in virtual time. These tests used to run against a
//! hand-written fake shard, which could drift from metad; the invariants
//! they check after every transaction are the simulation's tree check (no
//! dangling non-owning entry, no orphan directory, every directory's parent
//! the one holding its entry). Concurrency, random streams with faults and
//! crashes, and linearizability are in `simulation.rs`.

#[path = "common/model.rs"]
mod model;
mod sim;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cdcd::commit::{CommitMode, GroupCommit};
use cdcd::coordinator::{Coordinator, RunError};
use cdcd::server::{Frontend, ReplySink, Submitted};
use cdcd::shards::{Attempt, ShardReply, Shards, TransportError};
use cdcd::store::{ClientKey, TxnStore};
use cdcd::txn::{Context, Outcome, TxnArgs};
use model::ShardCalls;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sim::{Clock, Faults, NetShards, SimNet};
use wire::cdc::CdcStatus;
use wire::shard::{
    DeleteFileReq, DeleteFileReqHead, LsDirReq, SameDirRenameReq, SameDirRenameReqHead, ShardRequest, ShardResponse,
    VisitEdenReq, ls_flags,
};
use wire::{EggsTime, ErrorKind, InodeId, InodeType, Name, ShardId};
use zerocopy::byteorder::little_endian::U64;

const ROOT: u64 = InodeId::ROOT.get();
const SHARDS: u8 = 3;
const NEW_DIR_SHARDS: [ShardId; 3] = [0, 1, 2];

/// The fake's crash: at call number `at` (counting every attempt the
/// coordinator makes), the shard executes the request or not (a coin flip
/// of the seeded rng), and the coordinator stops there
/// ([`TransportError::Shutdown`]), as a SIGKILL would stop it.
struct CrashPlan {
    calls: AtomicU64,
    at: AtomicU64,
    rng: Mutex<StdRng>,
}

/// The simulation's shards, with a [`CrashPlan`].
#[derive(Clone)]
struct CrashingShards {
    net: NetShards,
    plan: Arc<CrashPlan>,
}

impl Shards for CrashingShards {
    fn knows(&self, shard: ShardId) -> bool {
        self.net.knows(shard)
    }

    async fn request(&self, attempt: Attempt<'_, '_>) -> Result<ShardReply, TransportError> {
        let call = self.plan.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if call == self.plan.at.load(Ordering::Relaxed) {
            if self.plan.rng.lock().unwrap().random_bool(0.5) {
                let _ = self.net.request(attempt).await;
            }
            return Err(TransportError::Shutdown);
        }
        self.net.request(attempt).await
    }
}

/// A move's arguments: `source` = (parent, name), `target` likewise.
fn move_args(directory: bool, source: (u64, &str), target: (u64, &str)) -> TxnArgs {
    TxnArgs::Move {
        directory,
        source_parent: source.0,
        target_parent: target.0,
        source_name: source.1.into(),
        target_name: target.1.into(),
    }
}

struct Harness {
    net: Arc<SimNet>,
    store: Arc<TxnStore>,
    plan: Arc<CrashPlan>,
    clients: AtomicU64,
    clock: Clock,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Must run inside the (paused) runtime: the clock reads tokio's.
    fn new(test: &str, default_seed: u64, faults: Faults) -> Self {
        let seed = sim::seed(test, default_seed);
        let clock = Clock::new();
        let net = SimNet::new(SHARDS, seed, faults, clock.clone());
        let dir = tempfile::tempdir().unwrap();
        let store_clock = clock.clone();
        let store =
            Arc::new(TxnStore::open(dir.path(), false).unwrap().with_clock(Arc::new(move || store_clock.now())));
        let plan = Arc::new(CrashPlan {
            calls: AtomicU64::new(0),
            at: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        });
        Self { net, store, plan, clients: AtomicU64::new(0), clock, _dir: dir }
    }

    /// A fresh coordinator over the store (a restart when called again).
    fn coordinator(&self) -> Arc<Coordinator<CrashingShards>> {
        let commits = GroupCommit::new(self.store.clone(), CommitMode::Inline { fsync: sim::COMMIT_FSYNC });
        tokio::spawn(commits.clone().run());
        let shards = CrashingShards { net: NetShards(self.net.clone()), plan: self.plan.clone() };
        Arc::new(Coordinator::new(shards, commits, NEW_DIR_SHARDS.to_vec(), sim::sim_retry(), Some(1)))
    }

    /// Crashes at the `n`th call from now.
    fn crash_in(&self, n: u64) {
        self.plan.at.store(self.plan.calls.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// Runs what a previous coordinator left unfinished; the outcomes.
    async fn resume(&self) -> Result<Vec<Outcome>, RunError> {
        let coordinator = self.coordinator();
        let mut outcomes = Vec::new();
        for (record, ticket) in coordinator.resume_unfinished()? {
            outcomes.push(coordinator.run_locked(ticket, record.client, record.state, true).await?);
        }
        Ok(outcomes)
    }

    /// [`Harness::resume`] after a crash; for odd seeds the shards first
    /// forget the answers they recorded (as after a shard restart), so the
    /// re-sent steps run metad's handlers again instead of being answered
    /// from the replay record.
    async fn resume_after_crash(&self, seed: u64) -> Result<Vec<Outcome>, RunError> {
        if seed % 2 == 1 {
            self.net.forget_replies();
        }
        self.resume().await
    }

    fn check(&self) {
        if let Err(violation) = self.net.check_tree() {
            panic!("{violation}");
        }
    }

    async fn run(&self, args: TxnArgs) -> Outcome {
        let outcome = self.coordinator().execute(args).await.unwrap();
        self.check();
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
        self.run(move_args(directory, source, target)).await
    }

    /// The living entry `dir/name`, without its owning bit.
    fn entry(&self, dir: u64, name: &str) -> Option<u64> {
        self.net.list(InodeId::new(dir)).get(name).map(|inode| inode.without_owning().get())
    }

    /// A directory's parent (0 once unlinked).
    fn parent_of(&self, dir: u64) -> Option<u64> {
        self.net.parent(InodeId::new(dir)).map(InodeId::get)
    }

    /// A file created and linked as `dir/name` by a client (on `dir`'s shard).
    fn link_file(&self, dir: u64, name: &str) -> u64 {
        self.net.create_file(InodeId::new(dir), name).expect("name free").get()
    }

    /// A file of `shard` linked as `dir/name`: made in a directory of that
    /// shard, then moved through the CDC when `dir` is on another.
    async fn link_file_of(&self, shard: ShardId, dir: u64, name: &str) -> u64 {
        if InodeId::new(dir).shard() == shard {
            return self.link_file(dir, name);
        }
        let mut staging = 0;
        for i in 0..64 {
            let made = self.mkdir_ok(ROOT, &format!("staging-{shard}-{i}")).await;
            if InodeId::new(made).shard() == shard {
                staging = made;
                break;
            }
        }
        assert_ne!(staging, 0, "no directory on shard {shard}");
        let file = self.link_file(staging, name);
        assert_eq!(self.mv(false, (staging, name), (dir, name)).await, Outcome::ok(InodeId::new(file)));
        file
    }

    /// A client deletes `dir/name` (a file); the creation time of the dead
    /// entry it leaves.
    fn delete_file(&self, dir: u64, name: &str) -> u64 {
        let parent = InodeId::new(dir);
        let request = ShardRequest::DeleteFile(DeleteFileReq {
            head: DeleteFileReqHead { parent },
            name: Name::new(name.as_bytes()).unwrap(),
        });
        let creation_time = self.creation_time(dir, name);
        let deleted =
            self.net.call(parent.shard(), &request, |response| matches!(response, ShardResponse::DeleteFile(_)));
        assert!(deleted, "delete {name}");
        creation_time
    }

    /// A client renames `dir/old` to `dir/new` on `dir`'s shard; whether
    /// the shard did (it refuses a non-owning entry, one a transaction holds).
    fn rename(&self, dir: u64, old: &str, new: &str) -> bool {
        let parent = InodeId::new(dir);
        let request = ShardRequest::SameDirRename(SameDirRenameReq {
            head: SameDirRenameReqHead { parent },
            old_name: Name::new(old.as_bytes()).unwrap(),
            new_name: Name::new(new.as_bytes()).unwrap(),
        });
        self.net.call(parent.shard(), &request, |response| matches!(response, ShardResponse::SameDirRename(_)))
    }

    /// Runs `args` with a crash at its `call`th shard call (executed or not:
    /// the seed's coin), then `meanwhile` (clients acting while the CDC is
    /// down), then the resumed run; its outcome.
    async fn crash_then(&self, seed: u64, args: TxnArgs, call: u64, meanwhile: impl FnOnce(&Self)) -> Outcome {
        self.crash_in(call);
        let coordinator = self.coordinator();
        assert!(coordinator.run(None, coordinator.new_txn(args), false).await.is_err(), "crashed");
        meanwhile(self);
        let mut finished = self.resume_after_crash(seed).await.unwrap();
        assert_eq!(finished.len(), 1, "seed {seed}: resumed");
        self.check();
        finished.pop().unwrap()
    }

    /// The creation time of the living entry `dir/name`.
    fn creation_time(&self, dir: u64, name: &str) -> u64 {
        self.listing(dir, EggsTime::ZERO, 0).remove(name).expect("a living entry").1
    }

    /// The dead map of `dir` as of `as_of` (each name's newest version
    /// created then or before): inode (with its owning bit) and creation
    /// time.
    fn dead(&self, dir: u64, as_of: u64) -> BTreeMap<String, (u64, u64)> {
        self.listing(dir, EggsTime::new(as_of), ls_flags::USE_DEAD_MAP)
    }

    fn listing(&self, dir: u64, as_of: EggsTime, flags: u8) -> BTreeMap<String, (u64, u64)> {
        let dir = InodeId::new(dir);
        let mut dead = BTreeMap::new();
        let mut start_hash = 0u64;
        loop {
            let request = ShardRequest::LsDir(LsDirReq { dir, as_of, start_hash: U64::new(start_hash), flags });
            let (more, next) = self.net.call(dir.shard(), &request, |response| match response {
                ShardResponse::LsDir(page) => {
                    for entry in page.entries.iter() {
                        dead.insert(entry.name.as_str().to_string(), (entry.inode.get(), entry.creation_time.get()));
                    }
                    (page.more != 0, page.next_hash.get())
                }
                other => panic!("ls_dir dead {dir}: {other:?}"),
            });
            if !more {
                return dead;
            }
            start_hash = next;
        }
    }

    /// Every directory inode of every shard whose parent is null.
    fn unlinked_dirs(&self) -> Vec<InodeId> {
        (0..SHARDS)
            .flat_map(|shard| self.net.inodes(shard))
            .filter(|inode| inode.inode_type() == Some(InodeType::Directory))
            .filter(|inode| self.net.parent(*inode).is_some_and(|parent| parent.is_null()))
            .collect()
    }

    fn dirs(&self) -> usize {
        (0..SHARDS)
            .flat_map(|shard| self.net.inodes(shard))
            .filter(|inode| inode.inode_type() == Some(InodeType::Directory))
            .count()
    }

    /// The eden files of `shard`.
    fn eden(&self, shard: ShardId) -> Vec<u64> {
        let request = ShardRequest::VisitEden(VisitEdenReq { begin: InodeId::NULL });
        self.net.call(shard, &request, |response| match response {
            ShardResponse::VisitEden(page) => {
                assert!(page.next.is_null(), "one page");
                page.entries.iter().map(|entry| entry.inode.get()).collect()
            }
            other => panic!("visit_eden: {other:?}"),
        })
    }

    fn next_client(&self) -> ClientKey {
        let request_id = self.clients.fetch_add(1, Ordering::Relaxed) + 1;
        ClientKey { address: "127.0.0.1:999".parse().unwrap(), request_id }
    }
}

/// Lets virtual time pass until today's dead entries may be purged.
async fn let_dead_entries_age() {
    tokio::time::sleep(std::time::Duration::from_nanos(wire::limits::PURGE_AGE_MIN_NS + 1)).await;
}

fn status(outcome: &Outcome) -> CdcStatus {
    outcome.status
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn mkdir_paths() {
    let h = Harness::new("mkdir_paths", 1, Faults::default());
    let a = h.mkdir_ok(ROOT, "a").await;
    assert_eq!(InodeId::new(a).inode_type(), Some(InodeType::Directory));
    assert_eq!(h.entry(ROOT, "a"), Some(a));
    assert_eq!(h.parent_of(a), Some(ROOT));
    let b = h.mkdir_ok(a, "b").await;
    assert_eq!(h.parent_of(b), Some(a));
    assert_eq!(status(&h.mkdir(ROOT, "a").await), CdcStatus::AlreadyExists);
    h.link_file(ROOT, "f");
    assert_eq!(status(&h.mkdir(ROOT, "f").await), CdcStatus::AlreadyExists);
    let file = h.link_file(a, "g");
    assert_eq!(status(&h.mkdir(file, "x").await), CdcStatus::ParentInvalid);
    let missing = InodeId::compose(InodeType::Directory, 0, 999).unwrap().get();
    assert_eq!(status(&h.mkdir(missing, "x").await), CdcStatus::ParentInvalid);
    assert_eq!(status(&h.rmdir(a, "b").await), CdcStatus::Ok);
    // A removed directory is not a valid parent.
    assert_eq!(status(&h.mkdir(b, "x").await), CdcStatus::ParentInvalid);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn mkdir_spreads_new_directories_over_the_shards() {
    let h = Harness::new("mkdir_spreads_new_directories_over_the_shards", 2, Faults::default());
    let mut shards = HashSet::new();
    for i in 0..30 {
        shards.insert(InodeId::new(h.mkdir_ok(ROOT, &format!("d{i}")).await).shard());
    }
    assert_eq!(shards, NEW_DIR_SHARDS.into_iter().collect());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn mkdir_that_loses_a_race_for_the_name_unlinks_its_directory() {
    // Another directory takes the name between the CDC's resolve and its
    // inject (a file there would be overwritten by the inject, so the
    // racing entry is a directory made behind the transaction's back).
    let h = Harness::new("mkdir_that_loses_a_race_for_the_name_unlinks_its_directory", 3, Faults::default());
    let coordinator = h.coordinator();
    let mut state = coordinator.new_txn(TxnArgs::MkDir { parent: ROOT, name: "x".into() });
    // Run the reads by hand: stat parent, resolve.
    let context = Context { new_dir_shards: &NEW_DIR_SHARDS };
    state.advance(ShardReply::StatDirectory { parent: InodeId::NULL }, false, &context);
    state.advance(ShardReply::Error(ErrorKind::NotFound), false, &context);
    let other = h.mkdir_ok(ROOT, "x").await;
    let outcome = coordinator.run(None, state, false).await.unwrap();
    assert_eq!(outcome.status, CdcStatus::AlreadyExists);
    assert_eq!(h.entry(ROOT, "x"), Some(other));
    // The directory created for the failed mkdir is unlinked, not orphaned.
    assert_eq!(h.unlinked_dirs().len(), 2, "root and the rolled back directory");
    h.check();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn rmdir_paths() {
    let h = Harness::new("rmdir_paths", 4, Faults::default());
    let a = h.mkdir_ok(ROOT, "a").await;
    h.mkdir_ok(a, "b").await;
    h.link_file(ROOT, "f");
    assert_eq!(status(&h.rmdir(ROOT, "a").await), CdcStatus::DirectoryNotEmpty);
    assert_eq!(h.entry(ROOT, "a"), Some(a), "a failed rmdir leaves the entry owning (checked by the tree check)");
    assert_eq!(status(&h.rmdir(ROOT, "f").await), CdcStatus::BadInodeType);
    assert_eq!(status(&h.rmdir(ROOT, "nope").await), CdcStatus::NotFound);
    let file = h.link_file(a, "g");
    assert_eq!(status(&h.rmdir(file, "x").await), CdcStatus::ParentInvalid);
    assert_eq!(status(&h.rmdir(a, "b").await), CdcStatus::Ok);
    assert_eq!(status(&h.rmdir(ROOT, "a").await), CdcStatus::DirectoryNotEmpty, "g is still there");
    h.delete_file(a, "g");
    let created = h.creation_time(ROOT, "a");
    let outcome = h.rmdir(ROOT, "a").await;
    assert_eq!(outcome, Outcome::ok(InodeId::new(a)));
    assert_eq!(h.entry(ROOT, "a"), None);
    assert_eq!(h.parent_of(a), Some(0));
    // The killed entry is in the dead map, non-owning.
    assert_eq!(h.dead(ROOT, created).get("a").map(|(inode, _)| *inode), Some(a));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn mv_file_paths() {
    let h = Harness::new("mv_file_paths", 5, Faults::default());
    let a = h.mkdir_ok(ROOT, "a").await;
    let b = h.mkdir_ok(ROOT, "b").await;
    let f = h.link_file(a, "f");
    let outcome = h.mv(false, (a, "f"), (b, "g")).await;
    assert_eq!(outcome, Outcome::ok(InodeId::new(f)));
    assert_eq!(h.entry(a, "f"), None);
    assert_eq!(h.entry(b, "g"), Some(f));
    // Overwriting a file: the old one goes to the dead map, still owned there.
    let old = h.link_file(a, "h");
    let created = h.creation_time(a, "h");
    assert_eq!(status(&h.mv(false, (b, "g"), (a, "h")).await), CdcStatus::Ok);
    assert_eq!(h.entry(a, "h"), Some(f));
    assert_eq!(h.dead(a, created).get("h").map(|(inode, _)| *inode), Some(InodeId::new(old).with_owning(true).get()));
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

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn mv_dir_paths() {
    let h = Harness::new("mv_dir_paths", 6, Faults::default());
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
    let f = h.link_file(ROOT, "f");
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
    // d may not go under c (now inside d); a may.
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

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn purge_remote_file_paths() {
    let h = Harness::new("purge_remote_file_paths", 7, Faults::default());
    // The root is on shard 1; a file of shard 0 linked in it, then deleted.
    assert_eq!(InodeId::ROOT.shard(), 1);
    let remote = h.link_file_of(0, ROOT, "r").await;
    let remote_time = h.delete_file(ROOT, "r");
    let local = h.link_file(ROOT, "l");
    let local_time = h.delete_file(ROOT, "l");
    // metad purges a dead entry only once it has been dead long enough (the
    // fake these tests ran on had no such rule).
    let_dead_entries_age().await;
    let purge =
        |name: &str, creation_time: u64| TxnArgs::PurgeRemoteFile { parent: ROOT, creation_time, name: name.into() };
    assert_eq!(status(&h.run(purge("l", local_time)).await), CdcStatus::BadRequest);
    assert_eq!(status(&h.run(purge("r", remote_time + 1)).await), CdcStatus::NotFound);
    assert_eq!(status(&h.run(purge("nope", remote_time)).await), CdcStatus::NotFound);
    let outcome = h.run(purge("r", remote_time)).await;
    assert_eq!(outcome, Outcome::ok(InodeId::new(remote)));
    assert!(h.eden(0).contains(&remote));
    assert!(!h.net.inodes(0).contains(&InodeId::new(remote)));
    assert!(
        !h.dead(ROOT, remote_time)
            .values()
            .any(|(inode, _)| *inode != 0 && InodeId::new(*inode).without_owning().get() == remote)
    );
    assert!(h.net.inodes(1).contains(&InodeId::new(local)));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retransmitted_client_request_gets_the_same_answer_and_no_second_directory() {
    let h = Harness::new(
        "a_retransmitted_client_request_gets_the_same_answer_and_no_second_directory",
        8,
        Faults::default(),
    );
    let answers: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let sink: ReplySink = {
        let answers = answers.clone();
        Arc::new(move |_, _, outcome| answers.lock().unwrap().push(outcome.clone()))
    };
    let frontend = Frontend::new(h.coordinator(), sink);
    let client = h.next_client();
    let args = TxnArgs::MkDir { parent: ROOT, name: "a".into() };
    assert!(matches!(frontend.submit(client, args.clone()), Submitted::Started(_)));
    assert_eq!(frontend.submit(client, args.clone()), Submitted::Running);
    while frontend.in_flight() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let outcome = answers.lock().unwrap()[0].clone();
    assert_eq!(outcome.status, CdcStatus::Ok);
    assert_eq!(frontend.submit(client, args.clone()), Submitted::Answer(outcome.clone()));
    // Also after a restart.
    let frontend = Frontend::new(h.coordinator(), Arc::new(|_, _, _| {}));
    assert_eq!(frontend.resume().unwrap(), 0);
    assert_eq!(frontend.submit(client, args), Submitted::Answer(outcome));
    assert_eq!(h.dirs(), 2, "the root and one new directory");
    h.check();
}

// Regression: a transaction resumed at a read step skipped the save before
// its first mutation (the stored state was still the read step). A second
// crash right after the shard executed that mutation then resumed from the
// read step, found its own acquired entry non-owning, answered "held by
// another transaction" and left the entry non-owning for good. (Records are
// now first written before the first mutation, so a crash during the reads
// leaves nothing to resume: the client's retransmission starts it again.)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_transaction_resumed_at_a_read_saves_before_its_first_mutation() {
    for seed in 0..16 {
        let h = Harness::new(
            "a_transaction_resumed_at_a_read_saves_before_its_first_mutation",
            200 + seed,
            Faults::default(),
        );
        let target = h.mkdir_ok(ROOT, "t").await;
        let file = h.link_file(ROOT, "a");
        let args = move_args(false, (ROOT, "a"), (target, "a"));
        // First crash on the first call (a read: stat of the target parent).
        h.crash_in(1);
        let coordinator = h.coordinator();
        assert!(coordinator.run(None, coordinator.new_txn(args.clone()), false).await.is_err());
        assert!(h.resume().await.unwrap().is_empty(), "nothing was written before the first mutation");
        // Started again, it reads (stat, stat, resolve) and acquires: crash
        // on the acquire, which the shard executes or not (a coin flip).
        h.crash_in(4);
        let coordinator = h.coordinator();
        assert!(coordinator.run(None, coordinator.new_txn(args), false).await.is_err());
        let finished = h.resume_after_crash(seed).await.unwrap();
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0], Outcome::ok(InodeId::new(file)), "seed {seed}");
        assert_eq!(h.entry(target, "a"), Some(file));
        assert_eq!(h.entry(ROOT, "a"), None);
        h.check();
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_crash_mid_purge_resumes_and_finishes() {
    for seed in 0..20 {
        let h = Harness::new("a_crash_mid_purge_resumes_and_finishes", 100 + seed, Faults::lossy());
        let remote = h.link_file_of(0, ROOT, "r").await;
        let time = h.delete_file(ROOT, "r");
        let_dead_entries_age().await;
        h.crash_in(1 + seed % 4);
        let args = TxnArgs::PurgeRemoteFile { parent: ROOT, creation_time: time, name: "r".into() };
        let coordinator = h.coordinator();
        let outcome = match coordinator.run(None, coordinator.new_txn(args.clone()), false).await {
            Ok(outcome) => outcome,
            Err(_) => match h.resume_after_crash(seed).await.unwrap().pop() {
                Some(outcome) => outcome,
                // Crashed before its first mutation: nothing to resume, run again.
                None => h.coordinator().execute(args).await.unwrap(),
            },
        };
        assert_eq!(outcome, Outcome::ok(InodeId::new(remote)), "seed {seed}");
        assert!(h.eden(0).contains(&remote), "seed {seed}");
        h.check();
    }
}

// Fence 3 is gone for mkdir and mv file (the coordinator's module doc): a
// crash after the release resumes from the plan and re-sends create and
// inject. By then a client may have renamed the new entry; the shard
// answers the re-sent inject from what it remembers for the transaction
// instead of linking the directory a second time.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_mkdir_resumed_after_its_release_does_not_link_the_directory_again() {
    let mut renamed = 0;
    for seed in 0..16 {
        let h = Harness::new(
            "a_mkdir_resumed_after_its_release_does_not_link_the_directory_again",
            300 + seed,
            Faults::default(),
        );
        // Calls: stat, resolve, create, inject (owning; the crash).
        let args = TxnArgs::MkDir { parent: ROOT, name: "d".into() };
        let mut moved = false;
        let outcome = h.crash_then(seed, args, 4, |h| moved = h.rename(ROOT, "d", "e")).await;
        let (dir, other) = if moved { ("e", "d") } else { ("d", "e") };
        renamed += u32::from(moved);
        assert_eq!(outcome.status, CdcStatus::Ok, "seed {seed}: {outcome:?}");
        assert_eq!(h.entry(ROOT, dir), Some(outcome.inode), "seed {seed}");
        assert_eq!(h.entry(ROOT, other), None, "seed {seed}: linked once");
    }
    assert!(renamed > 0 && renamed < 16, "both coins came up: {renamed} of 16 renamed");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_move_resumed_after_its_release_does_not_link_the_file_again() {
    let mut renamed = 0;
    for seed in 0..16 {
        let h = Harness::new(
            "a_move_resumed_after_its_release_does_not_link_the_file_again",
            400 + seed,
            Faults::default(),
        );
        // The target on another shard than the root's: the cross-shard chain.
        let parents = h.parents().await;
        let target = parents[&((InodeId::ROOT.shard() + 1) % SHARDS)];
        let file = h.link_file(ROOT, "a");
        let args = move_args(false, (ROOT, "a"), (target, "b"));
        // Calls: stat, stat, resolve, acquire, inject (owning), kill
        // source (the crash).
        let mut moved = false;
        let outcome = h.crash_then(seed, args, 6, |h| moved = h.rename(target, "b", "c")).await;
        renamed += u32::from(moved);
        assert_eq!(outcome, Outcome::ok(InodeId::new(file)), "seed {seed}");
        assert_eq!(h.entry(ROOT, "a"), None, "seed {seed}");
        let (name, other) = if moved { ("c", "b") } else { ("b", "c") };
        assert_eq!(h.entry(target, name), Some(file), "seed {seed}");
        assert_eq!(h.entry(target, other), None, "seed {seed}: linked once");
    }
    assert!(renamed == 16, "the inject always went out before the crash: {renamed} of 16 renamed");
}

// A move within one directory through the CDC (one move_file_in_shard),
// re-sent after a client renamed the file back to the source name: the
// shard answers from what it remembers for the transaction and moves
// nothing again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_move_in_one_shard_resent_after_the_file_was_renamed_back_leaves_it() {
    let mut renamed = 0;
    for seed in 0..16 {
        let h = Harness::new(
            "a_move_in_one_shard_resent_after_the_file_was_renamed_back_leaves_it",
            500 + seed,
            Faults::default(),
        );
        let file = h.link_file(ROOT, "a");
        let args = move_args(false, (ROOT, "a"), (ROOT, "b"));
        // Calls: stat (one parent), move_file_in_shard (the crash:
        // executed or not, the seed's coin).
        let mut back = false;
        let outcome = h.crash_then(seed, args, 2, |h| back = h.rename(ROOT, "b", "a")).await;
        renamed += u32::from(back);
        assert_eq!(outcome, Outcome::ok(InodeId::new(file)), "seed {seed}");
        let (name, other) = if back { ("a", "b") } else { ("b", "a") };
        assert_eq!(h.entry(ROOT, name), Some(file), "seed {seed}: the file keeps its name");
        assert_eq!(h.entry(ROOT, other), None, "seed {seed}");
    }
    assert!(renamed > 0 && renamed < 16, "both coins came up: {renamed} of 16 renamed back");
}

impl Harness {
    /// The shard the next transaction's mkdir creates its directory on
    /// (the coordinator's placement: [`cdcd::txn::mix64`] of its id; ids
    /// are at least the clock's time, which stands still until the test
    /// awaits).
    fn next_new_dir_shard(&self) -> ShardId {
        let txn = self.store.next_txn_id().max(self.clock.peek().max(1));
        NEW_DIR_SHARDS[(cdcd::txn::mix64(txn) % NEW_DIR_SHARDS.len() as u64) as usize]
    }

    /// A directory in the root on every shard, by shard.
    async fn parents(&self) -> BTreeMap<ShardId, u64> {
        let mut parents = BTreeMap::new();
        for i in 0..64 {
            let dir = self.mkdir_ok(ROOT, &format!("p{i}")).await;
            parents.entry(InodeId::new(dir).shard()).or_insert(dir);
            if parents.len() == NEW_DIR_SHARDS.len() {
                return parents;
            }
        }
        panic!("no directory on some shard: {parents:?}");
    }
}

// When the new directory lands on its parent's shard, a mkdir sends one
// shard mutation (create_linked_dir) after the parent's stat (no resolve:
// the request checks the name itself); otherwise two (create_unlinked_dir,
// inject) after stat and resolve. The placement itself is the same.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_mkdir_on_its_parents_shard_sends_one_mutation() {
    let h = Harness::new("a_mkdir_on_its_parents_shard_sends_one_mutation", 6, Faults::default());
    let parents = h.parents().await;
    let (mut linked, mut two_step) = (0, 0);
    for i in 0..24 {
        let shard = h.next_new_dir_shard();
        // Every other mkdir goes into the parent on the new directory's
        // shard, the others into the next shard's.
        let parent_shard = if i % 2 == 0 { shard } else { (shard + 1) % SHARDS };
        let parent = parents[&parent_shard];
        let calls = h.plan.calls.load(Ordering::Relaxed);
        let dir = h.mkdir_ok(parent, &format!("d{i}")).await;
        let calls = h.plan.calls.load(Ordering::Relaxed) - calls;
        assert_eq!(InodeId::new(dir).shard(), shard, "the placement is unchanged");
        assert_eq!(h.entry(parent, &format!("d{i}")), Some(dir));
        assert_eq!(h.parent_of(dir), Some(parent));
        if parent_shard == shard {
            assert_eq!(calls, 2, "mkdir {i}: stat, create_linked_dir (no resolve)");
            linked += 1;
        } else {
            assert_eq!(calls, 4, "mkdir {i}: stat, resolve, create, inject");
            two_step += 1;
        }
    }
    assert_eq!((linked, two_step), (12, 12));
}

// The same-shard mkdir loses a race for its name (another directory takes
// it between the resolve and the create_linked_dir): ALREADY_EXISTS, and
// nothing is left behind (no directory to unlink).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_same_shard_mkdir_that_loses_a_race_for_the_name_leaves_nothing() {
    let h = Harness::new("a_same_shard_mkdir_that_loses_a_race_for_the_name_leaves_nothing", 7, Faults::default());
    let parents = h.parents().await;
    let parent = parents[&h.next_new_dir_shard()];
    let coordinator = h.coordinator();
    let mut state = coordinator.new_txn(TxnArgs::MkDir { parent, name: "x".into() });
    let context = Context { new_dir_shards: &NEW_DIR_SHARDS };
    state.advance(ShardReply::StatDirectory { parent: InodeId::ROOT }, false, &context);
    assert_eq!(state.step, cdcd::txn::Step::MkDirCreateLinked, "no resolve");
    let other = h.mkdir_ok(parent, "x").await;
    let dirs = h.dirs();
    let outcome = coordinator.run(None, state, false).await.unwrap();
    assert_eq!(outcome.status, CdcStatus::AlreadyExists);
    assert_eq!(h.entry(parent, "x"), Some(other));
    assert_eq!(h.dirs(), dirs, "no directory made for the refused mkdir");
    assert_eq!(h.unlinked_dirs().len(), 1, "only the root has no parent");
    h.check();
}

// A crash right when the shard got the create_linked_dir (executed or not:
// the seed's coin); meanwhile a client renames the new entry if it is
// there. The resumed mkdir re-sends the request, which the shard answers
// from what it remembers for the transaction: the same directory, linked
// once, under whatever name the client gave it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_same_shard_mkdir_resumed_after_the_shard_applied_it_links_once() {
    let mut renamed = 0;
    for seed in 0..16 {
        let h = Harness::new(
            "a_same_shard_mkdir_resumed_after_the_shard_applied_it_links_once",
            600 + seed,
            Faults::default(),
        );
        let parents = h.parents().await;
        let parent = parents[&h.next_new_dir_shard()];
        let dirs = h.dirs();
        // Calls: stat, create_linked_dir (the crash).
        let args = TxnArgs::MkDir { parent, name: "d".into() };
        let mut moved = false;
        let outcome = h.crash_then(seed, args, 2, |h| moved = h.rename(parent, "d", "e")).await;
        renamed += u32::from(moved);
        assert_eq!(outcome.status, CdcStatus::Ok, "seed {seed}: {outcome:?}");
        let (name, other) = if moved { ("e", "d") } else { ("d", "e") };
        assert_eq!(h.entry(parent, name), Some(outcome.inode), "seed {seed}");
        assert_eq!(h.entry(parent, other), None, "seed {seed}: linked once");
        assert_eq!(h.dirs(), dirs + 1, "seed {seed}: one directory made");
    }
    assert!(renamed > 0 && renamed < 16, "both coins came up: {renamed} of 16 renamed");
}

// A plan stored by an older CDC (before create_linked_dir) at the
// two-step create on the parent's own shard resumes through that chain:
// create_unlinked_dir, then inject.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_older_two_step_plan_on_the_parents_shard_resumes_through_it() {
    for seed in 0..8 {
        let h = Harness::new(
            "an_older_two_step_plan_on_the_parents_shard_resumes_through_it",
            700 + seed,
            Faults::default(),
        );
        let parents = h.parents().await;
        let shard = h.next_new_dir_shard();
        let parent = parents[&shard];
        let coordinator = h.coordinator();
        let mut state = coordinator.new_txn(TxnArgs::MkDir { parent, name: "d".into() });
        state.step = cdcd::txn::Step::MkDirCreate { shard };
        // The plan is stored before the create goes out; the crash comes
        // with the create (executed or not) or with the inject.
        h.crash_in(1 + seed % 2);
        assert!(coordinator.run(None, state, false).await.is_err(), "crashed");
        let calls = h.plan.calls.load(Ordering::Relaxed);
        let mut finished = h.resume_after_crash(seed).await.unwrap();
        assert_eq!(h.plan.calls.load(Ordering::Relaxed) - calls, 2, "seed {seed}: create and inject again");
        let outcome = finished.pop().unwrap();
        assert_eq!(outcome.status, CdcStatus::Ok, "seed {seed}: {outcome:?}");
        assert_eq!(h.entry(parent, "d"), Some(outcome.inode), "seed {seed}");
        assert_eq!(InodeId::new(outcome.inode).shard(), shard);
        h.check();
    }
}

// mv file between two directories of one shard: one shard mutation
// (move_file_in_shard) after the parents' two stats; across shards three
// reads, then acquire, inject and kill. Refusals (the target a directory, the source gone)
// leave the tree as it was.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_file_move_within_one_shard_sends_one_mutation() {
    let h = Harness::new("a_file_move_within_one_shard_sends_one_mutation", 8, Faults::default());
    let parents = h.parents().await;
    let here = InodeId::ROOT.shard();
    let (near, far) = (parents[&here], parents[&((here + 1) % SHARDS)]);
    let file = h.link_file(ROOT, "f");
    let calls = |h: &Harness| h.plan.calls.load(Ordering::Relaxed);
    let before = calls(&h);
    assert_eq!(h.mv(false, (ROOT, "f"), (near, "g")).await, Outcome::ok(InodeId::new(file)));
    assert_eq!(calls(&h) - before, 3, "stat, stat, move_file_in_shard (no resolve)");
    assert_eq!((h.entry(ROOT, "f"), h.entry(near, "g")), (None, Some(file)));
    let before = calls(&h);
    assert_eq!(h.mv(false, (near, "g"), (far, "h")).await, Outcome::ok(InodeId::new(file)));
    assert_eq!(calls(&h) - before, 6, "stat, stat, resolve, acquire, inject, kill");
    assert_eq!((h.entry(near, "g"), h.entry(far, "h")), (None, Some(file)));
    // Within one shard: overwrites an owning file, refuses a directory or
    // a missing source, and a refusal leaves the tree as it was.
    let other = h.link_file(ROOT, "f2");
    h.link_file(near, "o");
    assert_eq!(h.mv(false, (ROOT, "f2"), (near, "o")).await, Outcome::ok(InodeId::new(other)));
    assert_eq!(h.entry(near, "o"), Some(other));
    let sub = h.mkdir_ok(near, "sub").await;
    let tree = h.net.check_tree().unwrap();
    assert_eq!(status(&h.mv(false, (near, "o"), (near, "sub")).await), CdcStatus::CannotOverrideTarget);
    assert_eq!(status(&h.mv(false, (near, "gone"), (ROOT, "x")).await), CdcStatus::NotFound);
    assert_eq!(h.net.check_tree().unwrap(), tree);
    assert_eq!((h.entry(near, "o"), h.entry(near, "sub")), (Some(other), Some(sub)));
    h.check();
}

// A plan stored by an older CDC (before move_file_in_shard) at the acquire
// of an mv file whose parents share a shard resumes through that chain:
// acquire, inject, kill, whichever of them the crash came with.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_older_plan_of_a_move_within_one_shard_resumes_through_acquire_inject_kill() {
    for seed in 0..6 {
        let h = Harness::new(
            "an_older_plan_of_a_move_within_one_shard_resumes_through_acquire_inject_kill",
            800 + seed,
            Faults::default(),
        );
        let file = h.link_file(ROOT, "a");
        let coordinator = h.coordinator();
        let mut state = coordinator.new_txn(move_args(false, (ROOT, "a"), (ROOT, "b")));
        state.step = cdcd::txn::Step::MoveAcquire { inode_type: InodeType::File as u8 };
        // The plan is stored before the acquire goes out; the crash comes
        // with the acquire (executed or not), the inject or the kill.
        h.crash_in(1 + seed % 3);
        assert!(coordinator.run(None, state, false).await.is_err(), "crashed");
        let calls = h.plan.calls.load(Ordering::Relaxed);
        let mut finished = h.resume_after_crash(seed).await.unwrap();
        assert_eq!(h.plan.calls.load(Ordering::Relaxed) - calls, 3, "seed {seed}: acquire, inject and kill again");
        assert_eq!(finished.pop().unwrap(), Outcome::ok(InodeId::new(file)), "seed {seed}");
        assert_eq!((h.entry(ROOT, "a"), h.entry(ROOT, "b")), (None, Some(file)), "seed {seed}");
        h.check();
    }
}
