//! The CDC under concurrency, in the deterministic simulation (`sim/`):
//! real coordinator, real shard logic, a faulty network, crashes at any
//! moment, a virtual clock. Each randomised test prints its seed.
//!
//! The linearizability check: clients run operations in rounds; inside a
//! round they overlap (random start times, retransmissions, crashes). After
//! each round the cluster is quiet and its tree is read from the shards.
//! The round's history is accepted when some order of its operations that
//! respects real time (an operation answered before another was sent comes
//! first) gives, applied one by one to the sequential model, exactly the
//! statuses the clients received and exactly the tree the shards hold.

#[path = "common/model.rs"]
mod model;
mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use cdcd::store::ClientKey;
use cdcd::txn::{Outcome, TxnArgs};
use model::{Model, ShardCalls, Tree, mv_dir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sim::{Faults, Sim};
use wire::cdc::CdcStatus;
use wire::shard::ShardKind;
use wire::{InodeId, InodeType};

const ROOT: u64 = InodeId::ROOT.get();
const SHARDS: u8 = 3;

/// One operation of a history.
#[derive(Clone, Debug)]
struct Event {
    args: TxnArgs,
    outcome: Outcome,
    sent: tokio::time::Instant,
    answered: tokio::time::Instant,
}

/// A serial order of `events` (respecting real time) that the model
/// accepts with the same statuses and ending in `tree`; the model after it.
fn linearize(start: &Model, events: &[Event], tree: &Tree) -> Option<(Model, Vec<usize>)> {
    fn search(
        model: &Model,
        events: &[Event],
        placed: &mut Vec<usize>,
        tree: &Tree,
        explored: &mut u64,
    ) -> Option<Model> {
        *explored += 1;
        if placed.len() == events.len() {
            return (&model.entries == tree).then(|| model.clone());
        }
        for (index, event) in events.iter().enumerate() {
            if placed.contains(&index) {
                continue;
            }
            // Every operation answered before this one was sent goes first.
            let ready = events
                .iter()
                .enumerate()
                .all(|(other, e)| other == index || placed.contains(&other) || e.answered >= event.sent);
            if !ready || model.expect(&event.args) != event.outcome.status {
                continue;
            }
            let mut next = model.clone();
            if event.outcome.status == CdcStatus::Ok && !next.apply(&event.args, event.outcome.inode) {
                continue;
            }
            placed.push(index);
            if let Some(found) = search(&next, events, placed, tree, explored) {
                return Some(found);
            }
            placed.pop();
        }
        None
    }
    let mut placed = Vec::new();
    let mut explored = 0;
    search(start, events, &mut placed, tree, &mut explored).map(|model| (model, placed))
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

struct Stats {
    rounds: usize,
    ops: usize,
    statuses: BTreeMap<String, usize>,
    max_overlap: usize,
    /// mkdirs' shard requests executed: create_linked_dir (the new
    /// directory on its parent's shard) and create_unlinked_dir (another).
    linked_creates: u64,
    unlinked_creates: u64,
    /// mv files: move_file_in_shard requests executed (both parents on one
    /// shard), and mv files answered OK whose parents are on two shards
    /// (acquire, inject, kill).
    in_shard_moves: u64,
    cross_shard_moves: u64,
}

/// Runs `rounds` rounds of `clients` concurrent operations; returns stats.
async fn concurrent_history(seed: u64, faults: Faults, rounds: usize, clients: usize, crashes: bool) -> Stats {
    let sim = Sim::new(seed, SHARDS, faults);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc0ffee);
    let mut model = Model::new(SHARDS);
    let mut stats = Stats {
        rounds,
        ops: 0,
        statuses: BTreeMap::new(),
        max_overlap: 0,
        linked_creates: 0,
        unlinked_creates: 0,
        in_shard_moves: 0,
        cross_shard_moves: 0,
    };
    let mut request_id = 0u64;
    for round in 0..rounds {
        // Clients link files now and then (between rounds, outside the CDC).
        for _ in 0..rng.random_range(0..3) {
            let dir = *model.entries.keys().nth(rng.random_range(0..model.entries.len())).unwrap();
            let name = ["a", "b", "c", "d", "e"][rng.random_range(0..5)];
            if !model.entries[&dir].contains_key(name)
                && let Some(file) = sim.net.create_file(InodeId::new(dir), name)
            {
                model.entries.get_mut(&dir).unwrap().insert(name.into(), file.get());
            }
        }
        let mut tasks = Vec::new();
        for client in 0..clients {
            let args = model.random_op(&mut rng, &NAMES, true);
            request_id += 1;
            let key = ClientKey { address: format!("10.0.0.{}:1000", client + 1).parse().unwrap(), request_id };
            let delay = Duration::from_micros(rng.random_range(0..30_000));
            let sim = sim.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let sent = tokio::time::Instant::now();
                let outcome = sim.request(key, &args).await;
                Event { args, outcome, sent, answered: tokio::time::Instant::now() }
            }));
        }
        let crasher = crashes.then(|| {
            let sim = sim.clone();
            let times: Vec<u64> = (0..rng.random_range(0..3)).map(|_| rng.random_range(0..150_000)).collect::<Vec<_>>();
            tokio::spawn(async move {
                let mut sorted = times;
                sorted.sort_unstable();
                let start = tokio::time::Instant::now();
                for at in sorted {
                    tokio::time::sleep_until(start + Duration::from_micros(at)).await;
                    sim.crash().await;
                }
            })
        });
        let mut events = Vec::new();
        for task in tasks {
            events.push(task.await.unwrap());
        }
        if let Some(crasher) = crasher {
            crasher.await.unwrap();
        }
        sim.quiesce().await;
        let overlap = events
            .iter()
            .map(|e| events.iter().filter(|o| o.sent <= e.answered && o.answered >= e.sent).count())
            .max()
            .unwrap_or(0);
        stats.max_overlap = stats.max_overlap.max(overlap);
        let tree = match sim.net.check_tree() {
            Ok(tree) => tree,
            Err(violation) => panic!("seed {seed}, round {round}: {violation}\nhistory: {events:#?}"),
        };
        match linearize(&model, &events, &tree) {
            Some((next, _order)) => model = next,
            None => panic!(
                "seed {seed}, round {round}: no serial order explains the history\nmodel before: {model:#?}\nhistory: {events:#?}\ntree after: {tree:#?}"
            ),
        }
        for event in &events {
            *stats.statuses.entry(event.outcome.status.name().to_string()).or_default() += 1;
            stats.ops += 1;
            if let TxnArgs::Move { directory: false, source_parent, target_parent, .. } = &event.args
                && event.outcome.status == CdcStatus::Ok
                && InodeId::new(*source_parent).shard() != InodeId::new(*target_parent).shard()
            {
                stats.cross_shard_moves += 1;
            }
        }
    }
    // Late copies of old requests change nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tree = sim.net.check_tree().unwrap_or_else(|v| panic!("seed {seed}, after late datagrams: {v}"));
    assert_eq!(tree, model.entries, "seed {seed}: late datagrams changed the tree");
    stats.linked_creates = sim.net.executed(ShardKind::CreateLinkedDir);
    stats.unlinked_creates = sim.net.executed(ShardKind::CreateUnlinkedDir);
    stats.in_shard_moves = sim.net.executed(ShardKind::MoveFileInShard);
    eprintln!(
        "seed {seed}: {} ops in {} rounds, {} crashes, max overlap {}, statuses {:?}, mkdir creates linked {} unlinked {}, \
         mv file in one shard {} (executed), across shards {} (OK)",
        stats.ops,
        stats.rounds,
        sim.crashes.load(std::sync::atomic::Ordering::Relaxed),
        stats.max_overlap,
        stats.statuses,
        stats.linked_creates,
        stats.unlinked_creates,
        stats.in_shard_moves,
        stats.cross_shard_moves,
    );
    stats
}

fn assert_varied(stats: &Stats) {
    for status in ["OK", "NOT_FOUND", "PARENT_INVALID", "ALREADY_EXISTS", "BAD_REQUEST"] {
        assert!(stats.statuses.get(status).copied().unwrap_or(0) > 0, "{status} never happened: {:?}", stats.statuses);
    }
    assert!(stats.max_overlap >= 4, "operations hardly overlapped");
    // Both mkdir chains ran: one shard request when the new directory
    // lands on its parent's shard, create and inject otherwise.
    assert!(stats.linked_creates > 0 && stats.unlinked_creates > 0, "one mkdir path never ran");
    // Both mv file chains ran: one shard request when both parents are on
    // one shard, acquire, inject and kill otherwise.
    assert!(stats.in_shard_moves > 0 && stats.cross_shard_moves > 0, "one mv file path never ran");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_operations_on_a_perfect_network_are_linearizable() {
    let seed = sim::seed("perfect network", 1);
    let stats = concurrent_history(seed, Faults::default(), 60, 6, false).await;
    assert_varied(&stats);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_operations_on_a_lossy_network_are_linearizable() {
    let seed = sim::seed("lossy network", 2);
    let stats = concurrent_history(seed, Faults::lossy(), 60, 6, false).await;
    assert_varied(&stats);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_operations_with_crashes_on_a_lossy_network_are_linearizable() {
    let seed = sim::seed("crashes on a lossy network", 3);
    let stats = concurrent_history(seed, Faults::lossy(), 80, 6, true).await;
    assert_varied(&stats);
}

/// A few more seeds with crashes (each prints its seed).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_operations_with_crashes_more_seeds() {
    for default in 10..14 {
        let seed = sim::seed("crashes, more seeds", default);
        concurrent_history(seed, Faults::lossy(), 30, 8, true).await;
        if std::env::var("SIM_SEED").is_ok() {
            break;
        }
    }
}

async fn mkdir(sim: &Sim, request_id: u64, parent: u64, name: &str) -> Outcome {
    let key = ClientKey { address: "10.0.0.9:9".parse().unwrap(), request_id };
    sim.request(key, &TxnArgs::MkDir { parent, name: name.into() }).await
}

/// `mv /a /b/x` and `mv /b /a/y` at once: exactly one wins, the other is
/// LOOP_DETECTED, whatever the interleaving.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn crossing_directory_moves_one_succeeds_the_other_detects_the_loop() {
    for seed in 0..20 {
        let faults = if seed % 2 == 0 { Faults::default() } else { Faults::lossy() };
        let sim = Sim::new(seed, SHARDS, faults);
        let a = mkdir(&sim, 1, ROOT, "a").await.inode;
        let b = mkdir(&sim, 2, ROOT, "b").await.inode;
        let (s1, s2) = (sim.clone(), sim.clone());
        let one = tokio::spawn(async move {
            let key = ClientKey { address: "10.0.0.1:1".parse().unwrap(), request_id: 10 };
            s1.request(key, &mv_dir((InodeId::ROOT, "a"), (InodeId::new(b), "x"))).await
        });
        let two = tokio::spawn(async move {
            let key = ClientKey { address: "10.0.0.2:1".parse().unwrap(), request_id: 11 };
            s2.request(key, &mv_dir((InodeId::ROOT, "b"), (InodeId::new(a), "y"))).await
        });
        let (one, two) = (one.await.unwrap().status, two.await.unwrap().status);
        let mut statuses = [one, two];
        statuses.sort_by_key(|s| *s as u8);
        assert_eq!(statuses, [CdcStatus::Ok, CdcStatus::LoopDetected], "seed {seed}");
        sim.net.check_tree().unwrap();
    }
}

/// Issue 17 A in the simulation: requests naming a shard that does not
/// exist are refused at once; a shard that is down stalls only the
/// transactions that need it, and reads of it fail by the read deadline.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_unreachable_shard_blocks_only_the_transactions_that_need_it() {
    let retry = cdcd::coordinator::RetryPolicy {
        timeout_initial: Duration::from_millis(20),
        timeout_max: Duration::from_millis(200),
        read_deadline: Duration::from_secs(5),
    };
    let sim = Sim::with_retry(7, SHARDS, Faults::default(), retry);
    let on_two = InodeId::compose(InodeType::Directory, 2, 9999).unwrap().get();
    let poison = InodeId::compose(InodeType::Directory, 5, 1).unwrap().get();
    for i in 0..100 {
        let started = tokio::time::Instant::now();
        let outcome = mkdir(&sim, 1000 + i, poison, "x").await;
        assert_eq!(outcome.status, CdcStatus::BadRequest);
        assert!(started.elapsed() < Duration::from_millis(1));
    }
    sim.net.down.lock().unwrap().insert(2);
    // A read of the dead shard: fails by the read deadline.
    let stuck = {
        let sim = sim.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let outcome = mkdir(&sim, 1, on_two, "x").await;
            (outcome, started.elapsed())
        })
    };
    // Meanwhile mkdirs in the root: those whose new directory would live on
    // shard 2 wait for it; every other one answers at once.
    let mut waiting = Vec::new();
    let mut answered = 0;
    for i in 0..30 {
        let sim2 = sim.clone();
        let task = tokio::spawn(async move { mkdir(&sim2, 100 + i, ROOT, &format!("d{i}")).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if task.is_finished() {
            assert_eq!(task.await.unwrap().status, CdcStatus::Ok);
            answered += 1;
        } else {
            waiting.push(task);
        }
    }
    assert!(answered >= 10, "only {answered} of 30 mkdirs answered while shard 2 was down");
    let (outcome, took) = stuck.await.unwrap();
    assert_eq!(outcome.status, CdcStatus::GeneralError, "{outcome:?}");
    assert!(took < Duration::from_secs(7), "the read gave up after {took:?}");
    // The shard comes back: the waiting ones finish.
    sim.net.down.lock().unwrap().clear();
    for task in waiting {
        let outcome = task.await.unwrap();
        assert_eq!(outcome.status, CdcStatus::Ok);
        assert_eq!(InodeId::new(outcome.inode).shard(), 2);
    }
    sim.net.check_tree().unwrap();
}

/// `count` mkdirs in the root (`m0`, `m1`…) sent at once; each must succeed.
async fn mkdirs_at_once(sim: &std::sync::Arc<Sim>, count: u64) {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let sim = sim.clone();
            tokio::spawn(async move { mkdir(&sim, 1 + i, ROOT, &format!("m{i}")).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status, CdcStatus::Ok);
    }
}

/// Independent mkdirs share commits: far fewer CDC commits than saves.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_transactions_share_commits() {
    let sim = Sim::new(9, SHARDS, Faults::default());
    mkdirs_at_once(&sim, 64).await;
    let frontend = sim.frontend();
    let stats = &frontend.coordinator().commits().stats;
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let records = stats.records.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{records} records in {commits} commits");
    // Two records per mkdir: the plan (before create) and the outcome
    // (queued, not waited for). No fence before the release: the shards
    // remember the create and the inject per transaction.
    assert_eq!(records, 64 * 2);
    assert!(commits * 8 <= records, "{commits} commits for {records} records");
}

/// The shards forget what they remember per transaction once the CDC's
/// `forget_below` passes it: after a burst of concurrent mkdirs, a few more
/// leave the records of about the transactions in flight, not of all.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn shards_forget_finished_transactions() {
    let sim = Sim::new(13, SHARDS, Faults::default());
    mkdirs_at_once(&sim, 64).await;
    let after_burst = sim.net.remembered();
    for i in 0..24 {
        assert_eq!(mkdir(&sim, 100 + i, ROOT, &format!("s{i}")).await.status, CdcStatus::Ok);
    }
    let after = sim.net.remembered();
    eprintln!("remembered: {after_burst} after the burst, {after} after 24 more mkdirs");
    // Each mkdir leaves two (its create, its inject); the last ones' stay
    // until later requests reach their shards.
    assert!(after_burst >= 64, "the burst's records: {after_burst}");
    assert!(after <= 2 * SHARDS as usize + 2, "{after} records left");
    sim.net.check_tree().unwrap();
}

/// The transaction of a crash case, after setting up the tree it needs;
/// and the rename a client attempts after the crash (directory, old, new).
async fn crash_case(sim: &Sim, case: &str) -> (TxnArgs, Option<(u64, &'static str, &'static str)>) {
    match case {
        "mkdir" => {
            assert_ne!(sim.next_new_dir_shard(), InodeId::ROOT.shard(), "the two-step mkdir");
            (TxnArgs::MkDir { parent: ROOT, name: "n".into() }, Some((ROOT, "n", "renamed")))
        }
        // The new directory lands on its parent's shard: one
        // create_linked_dir; the client renames its entry after the crash.
        "mkdir on its parent's shard" => {
            let mut parents = std::collections::HashMap::new();
            for i in 0..64 {
                let outcome = mkdir(sim, 1000 + i, ROOT, &format!("p{i}")).await;
                assert_eq!(outcome.status, CdcStatus::Ok);
                let dir = outcome.inode;
                parents.insert(InodeId::new(dir).shard(), dir);
                if parents.len() == usize::from(SHARDS) {
                    break;
                }
            }
            let parent = parents[&sim.next_new_dir_shard()];
            (TxnArgs::MkDir { parent, name: "n".into() }, Some((parent, "n", "renamed")))
        }
        // The target directory on another shard than the root's: acquire,
        // inject, kill.
        "mv file" => {
            let target = mkdir_on(sim, false).await;
            sim.net.create_file(InodeId::ROOT, "f").unwrap();
            let args = TxnArgs::Move {
                directory: false,
                source_parent: ROOT,
                target_parent: target,
                source_name: "f".into(),
                target_name: "g".into(),
            };
            (args, Some((target, "g", "renamed")))
        }
        // Two directories of the root's shard: one move_file_in_shard; the
        // client renames the target after the crash.
        "mv file between directories of one shard" => {
            let target = mkdir_on(sim, true).await;
            sim.net.create_file(InodeId::ROOT, "f").unwrap();
            (model::mv(false, (InodeId::ROOT, "f"), (InodeId::new(target), "g")), Some((target, "g", "renamed")))
        }
        // Renamed back to the source name after the crash: a re-sent
        // move_file_in_shard must leave the client's entry.
        "mv file in one directory" => {
            sim.net.create_file(InodeId::ROOT, "f").unwrap();
            (model::mv(false, (InodeId::ROOT, "f"), (InodeId::ROOT, "g")), Some((ROOT, "g", "f")))
        }
        "rmdir" => {
            mkdir_now(sim, "r").await;
            (TxnArgs::RmDir { parent: ROOT, name: "r".into() }, None)
        }
        other => unreachable!("{other}"),
    }
}

/// The CDC crashes at every point of one transaction: right after each of
/// its mutations reached a shard, and right after its answer (commits take
/// virtual time, so the outcome's record is not durable yet). The shards
/// forget their replay records (a long outage), so the restarted CDC's
/// re-sent steps run the real handlers again, and between the crash and the
/// restart a client renames the entry the transaction made owning, if it
/// can: re-sending the inject of an entry once released would then link
/// the directory twice. The transaction must end with the outcome it would
/// have had, the tree must be whole, and the answer stored for the client
/// must be that outcome.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_crash_at_any_step_resumes_to_the_same_outcome() {
    // Each case and how many mutations its transaction sends.
    let cases = [
        ("mkdir", 2),
        ("mkdir on its parent's shard", 1),
        ("mv file", 3),
        ("mv file between directories of one shard", 1),
        ("mv file in one directory", 1),
        ("rmdir", 3),
    ];
    for (case, mutations) in cases {
        for crash_after in 1..=mutations + 1 {
            let sim = Sim::new(100 + crash_after, SHARDS, Faults::default());
            let (args, rename) = crash_case(&sim, case).await;
            let before = sim.net.executed_mutations.load(std::sync::atomic::Ordering::Relaxed);
            let kinds = || {
                let executed = |kind| sim.net.executed(kind);
                [
                    ShardKind::CreateLinkedDir,
                    ShardKind::InjectDirent,
                    ShardKind::MoveFileInShard,
                    ShardKind::AcquireDirent,
                ]
                .map(executed)
            };
            let kinds_before = kinds();
            let on_answer = crash_after > mutations;
            if !on_answer {
                sim.net.trip_at.store(before + crash_after, std::sync::atomic::Ordering::Relaxed);
            }
            let key = ClientKey { address: "10.0.0.7:7".parse().unwrap(), request_id: 77 };
            let request = {
                let (sim, args) = (sim.clone(), args.clone());
                tokio::spawn(async move { sim.request(key, &args).await })
            };
            if on_answer {
                sim.answers().given.notified().await;
            } else {
                sim.net.tripped.notified().await;
            }
            sim.crash_forgetting(true).await;
            let renamed = rename.is_some_and(|(dir, old, new)| sim.net.rename(InodeId::new(dir), old, new));
            let outcome = request.await.unwrap();
            sim.quiesce().await;
            let context = format!("{case} crashed after step {crash_after}, renamed: {renamed}");
            assert_eq!(outcome.status, CdcStatus::Ok, "{context}: {outcome:?}");
            let tree = sim.net.check_tree().unwrap_or_else(|violation| panic!("{context}: {violation}"));
            // The answer stored for the client is the one it got.
            assert_eq!(sim.request(key, &args).await, outcome, "{context}");
            let linked: Vec<(&u64, &String)> = tree
                .iter()
                .flat_map(|(dir, entries)| {
                    entries.iter().filter(|(_, i)| **i == outcome.inode).map(move |(n, _)| (dir, n))
                })
                .collect();
            let [linked_dirs, injects, in_shard, acquires] = {
                let (now, before) = (kinds(), kinds_before);
                [0, 1, 2, 3].map(|i| now[i] - before[i])
            };
            if case == "mkdir on its parent's shard" {
                assert!(
                    linked_dirs > 0 && injects == 0,
                    "{context}: create_linked_dir {linked_dirs}, inject {injects}"
                );
            }
            if case.starts_with("mv file") {
                let one_request = case != "mv file";
                assert_eq!(
                    (in_shard > 0, acquires > 0 || injects > 0),
                    (one_request, !one_request),
                    "{context}: move_file_in_shard {in_shard}, acquire {acquires}, inject {injects}"
                );
            }
            match &args {
                TxnArgs::RmDir { .. } => assert!(linked.is_empty(), "{context}: {linked:?}"),
                _ => assert_eq!(linked.len(), 1, "{context}: linked {linked:?}"),
            }
        }
    }
}

/// A transaction alone sends the steps that do not wait for each other's
/// answers together: a move's three reads, and its release target, kill
/// source (and set_parent) after the fence; mkdir's stat and resolve.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn independent_steps_of_one_transaction_are_in_flight_together() {
    let sim = Sim::new(11, SHARDS, Faults::default());
    let most = |sim: &Sim| sim.net.most_in_flight.swap(0, std::sync::atomic::Ordering::Relaxed);
    let linked = sim.next_new_dir_shard() == InodeId::ROOT.shard();
    let a = mkdir_now(&sim, "a").await;
    if linked {
        assert_eq!(most(&sim), 1, "mkdir on its parent's shard: the stat, then create_linked_dir");
    } else {
        assert_eq!(most(&sim), 2, "mkdir: stat parent and resolve");
    }
    assert_eq!(mkdir(&sim, 2, ROOT, "b").await.status, CdcStatus::Ok);
    sim.net.create_file(InodeId::ROOT, "f").unwrap();
    most(&sim);
    let key = ClientKey { address: "10.0.0.9:9".parse().unwrap(), request_id: 90 };
    let mv = model::mv(false, (InodeId::ROOT, "f"), (InodeId::new(a), "g"));
    assert_eq!(sim.request(key, &mv).await.status, CdcStatus::Ok);
    if InodeId::new(a).shard() == InodeId::ROOT.shard() {
        assert_eq!(most(&sim), 2, "mv file in one shard: two stats");
    } else {
        assert_eq!(most(&sim), 3, "mv file: two stats and a resolve");
    }
    // Both parents the same directory: one stat, then one
    // move_file_in_shard.
    let same = model::mv(false, (InodeId::new(a), "g"), (InodeId::new(a), "h"));
    let key = ClientKey { address: "10.0.0.9:9".parse().unwrap(), request_id: 91 };
    let executed = sim.net.executed_mutations.load(std::sync::atomic::Ordering::Relaxed);
    sim.net.most_in_flight.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(sim.request(key, &same).await.status, CdcStatus::Ok);
    assert_eq!(sim.net.executed_mutations.load(std::sync::atomic::Ordering::Relaxed) - executed, 1);
    assert_eq!(most(&sim), 1, "mv file in one directory: one stat, then the move");
    // A directory renamed in its parent: reads two at a time, the tail
    // three (release, kill, set_parent).
    let key = ClientKey { address: "10.0.0.9:9".parse().unwrap(), request_id: 92 };
    let mv = mv_dir((InodeId::ROOT, "b"), (InodeId::ROOT, "c"));
    assert_eq!(sim.request(key, &mv).await.status, CdcStatus::Ok);
    assert_eq!(most(&sim), 3, "mv dir in one directory: release, kill and set_parent");
    sim.net.check_tree().unwrap();
}

/// The tail of a directory move in the other order: the kill of the source
/// executes while the target's shard is down (its release cannot), then
/// the CDC crashes; restarted, it sends the release again and the directory
/// ends owned by the target entry alone. (A file's move has no release: its
/// inject makes the target owning.)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_move_whose_kill_ran_before_its_release_resumes_whole() {
    use std::sync::atomic::Ordering::Relaxed;
    let sim = Sim::new(12, SHARDS, Faults::default());
    // A target directory on another shard than the root's.
    let mut target = 0;
    for i in 0..32 {
        let dir = mkdir(&sim, 100 + i, ROOT, &format!("t{i}")).await.inode;
        if InodeId::new(dir).shard() != InodeId::ROOT.shard() {
            target = dir;
            break;
        }
    }
    assert_ne!(target, 0, "no directory off the root's shard");
    let file = InodeId::new(mkdir(&sim, 200, ROOT, "f").await.inode);
    let args = mv_dir((InodeId::ROOT, "f"), (InodeId::new(target), "g"));
    let key = ClientKey { address: "10.0.0.7:8".parse().unwrap(), request_id: 78 };
    // The dry run, the acquire (root's shard) and the inject (target's
    // shard) execute; then the target's shard goes down before the
    // release, and the kill (root's shard) or set_parent executes first.
    let before = sim.net.executed_mutations.load(Relaxed);
    sim.net.trip_at.store(before + 3, Relaxed);
    let request = {
        let (sim, args) = (sim.clone(), args.clone());
        tokio::spawn(async move { sim.request(key, &args).await })
    };
    sim.net.tripped.notified().await;
    sim.net.down.lock().unwrap().insert(InodeId::new(target).shard());
    sim.net.trip_at.store(before + 4, Relaxed);
    sim.net.tripped.notified().await;
    sim.crash_forgetting(true).await;
    sim.net.down.lock().unwrap().clear();
    let outcome = request.await.unwrap();
    sim.quiesce().await;
    assert_eq!(outcome.status, CdcStatus::Ok, "{outcome:?}");
    assert_eq!(outcome.inode, file.get());
    let tree = sim.net.check_tree().unwrap_or_else(|violation| panic!("{violation}"));
    let linked: Vec<(&u64, &String)> = tree
        .iter()
        .flat_map(|(dir, entries)| entries.iter().filter(|(_, i)| **i == file.get()).map(move |(n, _)| (dir, n)))
        .collect();
    assert_eq!(linked, vec![(&target, &"g".to_string())]);
}

/// A directory made in the root (outside any crash) on the root's shard
/// (`same`) or on another.
async fn mkdir_on(sim: &Sim, same: bool) -> u64 {
    for i in 0..64 {
        let dir = mkdir(sim, 500 + i, ROOT, &format!("t{i}")).await;
        assert_eq!(dir.status, CdcStatus::Ok);
        if (InodeId::new(dir.inode).shard() == InodeId::ROOT.shard()) == same {
            return dir.inode;
        }
    }
    panic!("no directory {} the root's shard", if same { "on" } else { "off" });
}

/// A mkdir in the root outside any crash; the new directory.
async fn mkdir_now(sim: &Sim, name: &str) -> u64 {
    let outcome = mkdir(sim, 1, ROOT, name).await;
    assert_eq!(outcome.status, CdcStatus::Ok);
    outcome.inode
}
