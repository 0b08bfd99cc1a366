//! cdcd against two real metad shards: every transaction and its failure
//! paths, client retransmissions, SIGKILL at random moments during a stream
//! of operations, and 10 % datagram loss between the CDC and the shards.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, Model, ShardCalls, lossy_proxy, mkdir, mv, rmdir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::cdc::{CdcResponse, CdcStatus};
use wire::datagram::{self, CDC_MAGIC};
use wire::{InodeId, InodeType};

#[test]
fn every_transaction_and_its_failure_paths() {
    let cluster = Cluster::start(|shards| shards.to_vec());
    let cdc = cluster.cdc_client();
    let shards = cluster.shard_client();
    let root = InodeId::ROOT;

    // mkdir: success on both shards, name taken, bad parents.
    let (status, a) = cdc.run(&mkdir(root, "a"));
    assert_eq!(status, CdcStatus::Ok);
    assert_eq!(a.inode_type(), Some(InodeType::Directory));
    let mut used_shards = std::collections::HashSet::new();
    used_shards.insert(a.shard());
    let mut subdirs = Vec::new();
    for i in 0..12 {
        let (status, dir) = cdc.run(&mkdir(a, &format!("s{i}")));
        assert_eq!(status, CdcStatus::Ok);
        used_shards.insert(dir.shard());
        subdirs.push(dir);
    }
    assert_eq!(used_shards.len(), 2, "new directories spread over shards 0 and 1");
    assert_eq!(cdc.run(&mkdir(root, "a")).0, CdcStatus::AlreadyExists);
    let file = shards.create_file(root, "f");
    assert_eq!(cdc.run(&mkdir(root, "f")).0, CdcStatus::AlreadyExists);
    assert_eq!(cdc.run(&mkdir(file, "x")).0, CdcStatus::ParentInvalid, "non-directory parent");
    let missing = InodeId::compose(InodeType::Directory, 0, 123_456).unwrap();
    assert_eq!(cdc.run(&mkdir(missing, "x")).0, CdcStatus::ParentInvalid, "missing parent");

    // rmdir: non-empty, not a directory, missing, success.
    assert_eq!(cdc.run(&rmdir(root, "a")).0, CdcStatus::DirectoryNotEmpty);
    assert_eq!(cdc.run(&rmdir(root, "f")).0, CdcStatus::BadInodeType);
    assert_eq!(cdc.run(&rmdir(root, "nope")).0, CdcStatus::NotFound);
    assert_eq!(cdc.run(&rmdir(file, "x")).0, CdcStatus::ParentInvalid);
    assert_eq!(cdc.run(&rmdir(a, "s0")), (CdcStatus::Ok, subdirs[0]));
    assert_eq!(shards.parent(subdirs[0]), Some(InodeId::NULL));
    assert_eq!(cdc.run(&mkdir(subdirs[0], "x")).0, CdcStatus::ParentInvalid, "removed parent");

    // mv file: success across shards, target is a directory, missing source,
    // source is a directory, overwrite of a file.
    let (status, b) = cdc.run(&mkdir(root, "b"));
    assert_eq!(status, CdcStatus::Ok);
    assert_eq!(cdc.run(&mv(false, (root, "f"), (subdirs[1], "g"))), (CdcStatus::Ok, file));
    assert_eq!(cdc.run(&mv(false, (subdirs[1], "g"), (a, "s2"))).0, CdcStatus::CannotOverrideTarget);
    assert_eq!(cdc.run(&mv(false, (subdirs[1], "nope"), (b, "g"))).0, CdcStatus::NotFound);
    assert_eq!(cdc.run(&mv(false, (root, "b"), (a, "g"))).0, CdcStatus::BadInodeType);
    assert_eq!(cdc.run(&mv(false, (subdirs[1], "g"), (file, "g"))).0, CdcStatus::ParentInvalid);
    let other = shards.create_file(b, "h");
    assert_eq!(cdc.run(&mv(false, (subdirs[1], "g"), (b, "h"))), (CdcStatus::Ok, file));
    assert_eq!(shards.list(b).get("h").map(|i| i.without_owning()), Some(file));
    assert_ne!(file, other);

    // mv dir: into itself, into its subtree, target exists as a directory,
    // missing source, source is a file, success.
    assert_eq!(cdc.run(&mv(true, (root, "a"), (a, "x"))).0, CdcStatus::LoopDetected);
    assert_eq!(cdc.run(&mv(true, (root, "a"), (subdirs[3], "x"))).0, CdcStatus::LoopDetected);
    assert_eq!(cdc.run(&mv(true, (a, "s3"), (root, "b"))).0, CdcStatus::CannotOverrideTarget);
    assert_eq!(cdc.run(&mv(true, (a, "nope"), (b, "x"))).0, CdcStatus::NotFound);
    assert_eq!(cdc.run(&mv(true, (b, "h"), (a, "x"))).0, CdcStatus::BadInodeType);
    assert_eq!(cdc.run(&mv(true, (a, "s3"), (b, "moved"))), (CdcStatus::Ok, subdirs[3]));
    assert_eq!(shards.parent(subdirs[3]), Some(b));
    // …and deeper: b (holding s3) under s4, then s3's subtree can't take b's parent.
    assert_eq!(cdc.run(&mv(true, (root, "b"), (subdirs[4], "b"))).0, CdcStatus::Ok);
    assert_eq!(cdc.run(&mv(true, (a, "s4"), (subdirs[3], "s4"))).0, CdcStatus::LoopDetected);

    let tree = shards.check_tree().unwrap();
    assert_eq!(tree[&b.get()].get("moved"), Some(&subdirs[3].get()));
    assert!(!tree[&root.get()].contains_key("f"));
}

#[test]
fn a_retransmission_is_answered_again_not_executed_again() {
    let cluster = Cluster::start(|shards| shards.to_vec());
    let cdc = cluster.cdc_client();
    let deadline = Duration::from_secs(60);
    let first = cdc.run_with_id(77, &mkdir(InodeId::ROOT, "once"), deadline).unwrap();
    assert_eq!(first.0, CdcStatus::Ok);
    // The same id again: the same answer, not ALREADY_EXISTS, no new directory.
    assert_eq!(cdc.run_with_id(77, &mkdir(InodeId::ROOT, "once"), deadline).unwrap(), first);
    // A new id is a new request.
    assert_eq!(cdc.run_with_id(78, &mkdir(InodeId::ROOT, "once"), deadline).unwrap().0, CdcStatus::AlreadyExists);
    // After a restart the answer is still there (it is in the store).
    let mut cluster = cluster;
    cluster.kill_cdc();
    cluster.start_cdc();
    assert_eq!(cdc.run_with_id(77, &mkdir(InodeId::ROOT, "once"), deadline).unwrap(), first);
    let tree = cluster.shard_client().check_tree().unwrap();
    assert_eq!(tree.len(), 2);

    // Malformed datagrams get an error (or nothing) and the CDC keeps serving.
    let mut garbage = vec![0u8; 20];
    garbage[..3].copy_from_slice(&CDC_MAGIC);
    garbage[3] = wire::datagram::PROTOCOL_VERSION;
    garbage[12] = 0x01; // mkdir, with a truncated body
    let answer = cdc.raw(&garbage, Duration::from_secs(10)).expect("an error answer");
    let (_, response) = datagram::decode::<CdcResponse<'_>>(&answer, None).unwrap();
    assert!(matches!(response, CdcResponse::Error(_)), "{response:?}");
    assert!(cdc.raw(b"nonsense", Duration::from_millis(300)).is_none());
    assert_eq!(cdc.run(&mkdir(InodeId::ROOT, "after")).0, CdcStatus::Ok);
}

/// Runs at least `ops` random operations through `cluster`'s CDC — more,
/// up to ten times as many, while `keep_going` says so — checking each
/// answer against the model (and so that the CDC applied exactly the
/// acknowledged operations), with a few files created directly on shards.
fn random_stream(cluster: &Mutex<Cluster>, seed: u64, ops: usize, keep_going: impl Fn() -> bool) -> Model {
    let (cdc, shards) = {
        let cluster = cluster.lock().unwrap();
        (cluster.cdc_client(), cluster.shard_client())
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::new(2);
    let mut seen = std::collections::HashMap::new();
    for op_index in 0..ops * 10 {
        if op_index >= ops && !keep_going() {
            break;
        }
        if rng.random_bool(0.15) {
            let dir = model.random_dir(&mut rng, false);
            let name = format!("file{op_index}");
            let file = shards.create_file(InodeId::new(dir), &name);
            model.entries.get_mut(&dir).unwrap().insert(name, file.get());
        }
        let op = model.random_op(&mut rng, &["a", "b", "c", "d"], true);
        let expected = model.expect(&op);
        let (status, inode) = cdc.run(&op);
        assert_eq!(status, expected, "op {op_index}: {op:?}");
        *seen.entry(status.name()).or_insert(0) += 1;
        if status == CdcStatus::Ok {
            assert!(model.apply(&op, inode.get()), "op {op_index}: moved {inode}");
        }
    }
    eprintln!("statuses: {seen:?}");
    assert!(seen.get("OK").copied().unwrap_or(0) > ops / 5, "{seen:?}");
    model
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let cluster = Arc::new(Mutex::new(Cluster::start(|shards| shards.to_vec())));
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (cluster, stop, kills) = (cluster.clone(), stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(99);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
                let mut cluster = cluster.lock().unwrap();
                cluster.kill_cdc();
                kills.fetch_add(1, Ordering::Relaxed);
                cluster.start_cdc();
            }
        })
    };
    // However fast the machine, the stream lasts until the CDC was killed a
    // few times (a quiet machine once finished 200 operations in 2 kills).
    let model = random_stream(&cluster, 5, 200, || kills.load(Ordering::Relaxed) < 5);
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    let kills = kills.load(Ordering::Relaxed);
    eprintln!("{kills} SIGKILLs");
    assert!(kills >= 3, "only {kills} kills");
    assert_eq!(cluster.lock().unwrap().shard_client().check_tree().unwrap(), model.entries);
}

#[test]
fn ten_percent_loss_between_cdc_and_shards() {
    let stop = Arc::new(AtomicBool::new(false));
    let cluster = Cluster::start(|shards| shards.iter().map(|s| lossy_proxy(*s, 0.1, stop.clone())).collect());
    let cluster = Mutex::new(cluster);
    let model = random_stream(&cluster, 11, 120, || false);
    assert_eq!(cluster.lock().unwrap().shard_client().check_tree().unwrap(), model.entries);
    stop.store(true, Ordering::Relaxed);
}

/// Issue 17 G3: the CDC's lock file (which names the running process) is
/// readable by its user only, like the key and the store beside it.
#[test]
fn the_lock_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start(|shards| shards.to_vec());
    let lock = cluster.dir.path().join("cdc").join("lock");
    let mode = std::fs::metadata(&lock).expect("cdcd's lock file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", lock.display());
}
