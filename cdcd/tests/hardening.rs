//! The CDC against what the fault and attack probe found (issue 17 A and C)
//! and SIGKILL under concurrent clients (issue 12), with the real binaries.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdcd::txn::TxnArgs;
use common::{Cluster, Model, ShardCalls, Tree, mkdir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::cdc::{CdcRequest, CdcResponse, CdcStatus, MkDirReq, MkDirReqHead};
use wire::datagram;
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::{ErrorKind, InodeId, InodeType, Name};

/// The shards of [`Cluster`].
const SHARDS: u8 = 2;

fn mkdir_datagram(request_id: u64, parent: InodeId, name: &str) -> Vec<u8> {
    let request =
        CdcRequest::MkDir(MkDirReq { head: MkDirReqHead { parent }, name: Name::new(name.as_bytes()).unwrap() });
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut out, request_id, &request, None).unwrap();
    out.truncate(len);
    out
}

/// Issue 17 A: a request whose parent lives on a shard that does not exist
/// blocked the serial CDC for ~30 s per datagram. Now it is refused at once
/// (BAD_REQUEST), and it could not block unrelated transactions anyway.
#[test]
fn a_poison_datagram_does_not_stall_the_cdc() {
    let cluster = Cluster::start(|shards| shards.to_vec());
    let cdc = cluster.cdc_client();
    let poisons = [InodeId::new(5 << 53), InodeId::compose(InodeType::Directory, 5, 1).unwrap()];
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..100u64 {
        let parent = poisons[(i % 2) as usize];
        // Sent and not waited for, like the probe.
        attacker.send_to(&mkdir_datagram(1_000_000 + i, parent, "x"), cluster.cdc_listen).unwrap();
    }
    // Each poison gets a refusal, never OK.
    let answer = cdc.raw(&mkdir_datagram(7, poisons[1], "x"), Duration::from_secs(5)).expect("an answer");
    let (_, response) = datagram::decode::<CdcResponse<'_>>(&answer, None).unwrap();
    match response {
        CdcResponse::MkDir(resp) => assert_eq!(resp.status, CdcStatus::BadRequest, "{}", resp.text.as_str()),
        other => panic!("{other:?}"),
    }
    // The stall this guards against was ~30 s per poison datagram (100 of
    // them queued), so 5 s per mkdir tells a stall apart from a slow disk:
    // under CI the other tests of this file (8 SIGKILLed clients, a full
    // disk) run beside this one, and one mkdir there once took over 1 s.
    let bound = Duration::from_secs(5);
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let started = Instant::now();
        let (status, _) = cdc
            .run_with_id(5000 + i, &mkdir(InodeId::ROOT, &format!("after-{i}")), bound)
            .unwrap_or_else(|| panic!("mkdir {i} got no answer within {bound:?} of the poison"));
        assert_eq!(status, CdcStatus::Ok);
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest mkdir after the poison: {slowest:?}");
}

fn umount(dir: &Path) {
    let _ = std::process::Command::new("umount").arg("-l").arg(dir).status();
}

/// Issue 17 C: with its disk full cdcd exited. Now it answers STORAGE_ERROR
/// to new transactions, keeps serving, and resumes by itself when space
/// returns. Needs root (tmpfs): skipped with a message elsewhere, never
/// under CI.
#[test]
fn a_full_disk_answers_storage_error_and_recovers_by_itself() {
    let mut cluster = Cluster::start(|shards| shards.to_vec());
    cluster.kill_cdc();
    let state = cluster.dir.path().join("cdc");
    let _ = std::fs::remove_dir_all(&state);
    if !testsupport::mount_tmpfs(&state, 8 << 20) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run the disk-full test (needs root)");
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            umount(self.0);
        }
    }
    let _unmount = Unmount(&state);
    // A journal of 1 MiB: the default 64 MiB would not fit the tmpfs.
    cluster.cdc_flags = vec!["--journal-mib".into(), "1".into()];
    // A new port: the old one was free while the tmpfs was mounted, and the
    // other tests' clients (ephemeral UDP ports) may have taken it (seen
    // once in CI: "cannot bind udp …: Address already in use").
    cluster.cdc_listen.set_port(0);
    cluster.start_cdc();
    let cdc = cluster.cdc_client();
    assert_eq!(cdc.run(&mkdir(InodeId::ROOT, "before")).0, CdcStatus::Ok);
    testsupport::fill_filesystem(&state);
    // New transactions are refused with STORAGE_ERROR once a commit failed
    // (LMDB reuses the pages its file already has, so the first commits
    // after the disk filled may still succeed; the one that fails waits).
    let mut refused = 0;
    let mut stuck = Vec::new();
    let mut done_before = 0;
    for i in 0..5000u64 {
        if refused >= 20 {
            break;
        }
        let answer = cdc.raw(&mkdir_datagram(100 + i, InodeId::ROOT, &format!("full-{i}")), Duration::from_millis(500));
        let answer = answer.filter(|bytes| {
            datagram::peek_header(bytes, wire::datagram::CDC_MAGIC).is_ok_and(|h| h.request_id() == 100 + i)
        });
        match answer.map(|bytes| {
            let (_, response) = datagram::decode::<CdcResponse<'_>>(&bytes, None).unwrap();
            match response {
                CdcResponse::Error(error) => Some(error.kind),
                CdcResponse::MkDir(resp) if resp.status == CdcStatus::Ok && refused == 0 => None,
                CdcResponse::MkDir(resp) => panic!("mkdir {i} answered {:?} after a refusal", resp.status),
                other => panic!("{other:?}"),
            }
        }) {
            Some(Some(ErrorKind::StorageError)) => refused += 1,
            Some(None) => done_before += 1,
            Some(other) => panic!("unexpected answer {other:?}"),
            None => {
                // Unanswered: accepted and waiting for the store, unless
                // the CDC died (it used to exit when a commit failed).
                let exited = cluster.cdc.as_mut().unwrap().child.try_wait().unwrap();
                assert!(exited.is_none(), "cdcd exited with the disk full: {exited:?}");
                stuck.push(100 + i);
                // Only transactions accepted before a commit failed wait; the
                // ones after are refused (each unanswered one costs 0.5 s).
                assert!(stuck.len() < 60, "{} requests unanswered, {refused} refused with STORAGE_ERROR", stuck.len());
            }
        }
    }
    assert!(refused >= 20, "only {refused} refused with STORAGE_ERROR ({done_before} done before)");
    let pid = cluster.cdc.as_mut().unwrap().child.try_wait().unwrap();
    assert!(pid.is_none(), "cdcd exited with the disk full: {pid:?}");
    // Space returns: the CDC serves again by itself, and the transactions it
    // had accepted before it noticed finish.
    std::fs::remove_file(state.join("filler")).unwrap();
    let started = Instant::now();
    // One request, retransmitted (a refused one was not started).
    let request_id = 90_000;
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "still refused 30 s after space returned");
        let answer = cdc.raw(&mkdir_datagram(request_id, InodeId::ROOT, "after"), Duration::from_millis(500));
        let Some(bytes) = answer else { continue };
        let (header, response) = datagram::decode::<CdcResponse<'_>>(&bytes, None).unwrap();
        if header.request_id() != request_id {
            // A late answer to an earlier request (one that waited).
            continue;
        }
        match response {
            CdcResponse::MkDir(resp) => {
                assert_eq!(resp.status, CdcStatus::Ok);
                break;
            }
            CdcResponse::Error(error) => {
                assert_eq!(error.kind, ErrorKind::StorageError);
                std::thread::sleep(Duration::from_millis(100));
            }
            other => panic!("{other:?}"),
        }
    }
    eprintln!("served again {:?} after space returned; {refused} refused, {} waited", started.elapsed(), stuck.len());
    for request_id in stuck {
        let i = request_id - 100;
        let (status, _) = cdc
            .run_with_id(request_id, &mkdir(InodeId::ROOT, &format!("full-{i}")), Duration::from_secs(30))
            .expect("an accepted transaction finishes");
        assert_eq!(status, CdcStatus::Ok);
    }
    let tree = cluster.shard_client().check_tree().unwrap();
    assert!(tree[&InodeId::ROOT.get()].contains_key("after"));
}

/// One client's operation for the concurrent SIGKILL test: its own names,
/// in directories every client shares.
fn client_op(model: &Model, rng: &mut StdRng, client: usize) -> TxnArgs {
    let names: Vec<String> = (0..4).map(|n| format!("c{client}-{n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    model.random_op(rng, &names, false)
}

/// Issue 12: 8 clients at once doing mkdir, rmdir, mv file and mv dir over
/// shared directories while the CDC is SIGKILLed at random moments (≥ 20
/// times). Each client uses its own names, so its answers are checked
/// against its own sequential model, and the final tree must equal the
/// union of the clients' models: nothing acknowledged lost, nothing
/// unacknowledged applied, no orphan, no dangling entry.
#[test]
fn sigkill_under_eight_concurrent_clients_loses_nothing_acknowledged() {
    const CLIENTS: usize = 8;
    const KILLS: usize = 20;
    let seed: u64 = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(42);
    eprintln!("seed {seed} (replay with SIM_SEED={seed})");
    let cluster = Arc::new(Mutex::new(Cluster::start(|shards| shards.to_vec())));
    let (cdc, shards) = {
        let cluster = cluster.lock().unwrap();
        (cluster.cdc_client(), cluster.shard_client())
    };
    let shared: Vec<InodeId> = (0..3).map(|i| cdc.run(&mkdir(InodeId::ROOT, &format!("shared-{i}"))).1).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (cluster, stop, kills) = (cluster.clone(), stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) && kills.load(Ordering::Relaxed) < KILLS {
                std::thread::sleep(Duration::from_millis(rng.random_range(50..300)));
                let mut cluster = cluster.lock().unwrap();
                cluster.kill_cdc();
                kills.fetch_add(1, Ordering::Relaxed);
                cluster.start_cdc();
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (cluster, kills, shared) = (cluster.clone(), kills.clone(), shared.clone());
            std::thread::spawn(move || {
                let (cdc, shards) = {
                    let cluster = cluster.lock().unwrap();
                    (cluster.cdc_client(), cluster.shard_client())
                };
                let mut model = Model::new(SHARDS);
                for (i, dir) in shared.iter().enumerate() {
                    model.apply(&mkdir(InodeId::ROOT, &format!("shared-{i}")), dir.get());
                }
                let mut rng = StdRng::seed_from_u64(seed * 100 + client as u64);
                let mut ops = 0;
                let mut statuses = BTreeMap::new();
                while ops < 30 || kills.load(Ordering::Relaxed) < KILLS {
                    if rng.random_bool(0.1) {
                        let dir = model.random_dir(&mut rng, false);
                        let name = format!("c{client}-f{ops}");
                        let file = shards.create_file(InodeId::new(dir), &name);
                        model.entries.get_mut(&dir).unwrap().insert(name, file.get());
                    }
                    let op = client_op(&model, &mut rng, client);
                    let expected = model.expect(&op);
                    let (status, inode) = cdc.run(&op);
                    assert_eq!(status, expected, "client {client}, op {ops}: {op:?}");
                    *statuses.entry(status.name()).or_insert(0) += 1;
                    if status == CdcStatus::Ok {
                        assert!(model.apply(&op, inode.get()), "client {client}, op {ops}: moved {inode}");
                    }
                    ops += 1;
                    assert!(ops < 100_000, "the killer never reached {KILLS} kills");
                }
                eprintln!("client {client}: {ops} ops, {statuses:?}");
                model
            })
        })
        .collect();
    let models: Vec<Model> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    let kills = kills.load(Ordering::Relaxed);
    eprintln!("{kills} SIGKILLs");
    assert!(kills >= KILLS, "only {kills} kills");
    // The union of the clients' models.
    let mut union = Tree::new();
    for model in &models {
        for (dir, entries) in &model.entries {
            union.entry(*dir).or_default().extend(entries.iter().map(|(n, i)| (n.clone(), *i)));
        }
    }
    assert_eq!(shards.check_tree().unwrap(), union);
}
