//! The writer's pace (`metad::server`'s writer and
//! `daemon::journal::Journal::pace`): with 8 clients each waiting for its
//! durable answer, the writer keeps its write transaction open while the
//! journal could not sync a record yet, so it commits about once per
//! journal sync, not once per small batch (was ~2.5 mutations per commit
//! and several commits per sync). One sync lane (`--journal-lanes 1`):
//! the lane is busy most of the time, which is when holding matters (with
//! the writer committing every batch it took, as before, this load made
//! 1.8–1.9 commits per sync in the debug build, against 1.1–1.3 now).
//! What it asserts is counted by metad itself (`/metrics`), never timed.

mod common;

use common::*;
use std::time::{Duration, Instant};
use wire::ids::InodeType;
use wire::shard::*;

const CLIENTS: usize = 8;
const CREATES_PER_CLIENT: usize = 250;

/// `(commits, mutations committed, journal syncs)` from `/metrics`.
fn counts(daemon: &Daemon) -> (u64, u64, u64) {
    let metrics = Metrics::scrape(daemon);
    let value = |name| metrics.value(name) as u64;
    (value("metad_commit_batch_size_count"), value("metad_commit_batch_size_sum"), value("metad_journal_syncs_total"))
}

#[test]
fn eight_waiting_clients_commit_about_once_per_journal_sync() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad_with(1, dir.path(), None, &["--metrics", "127.0.0.1:0", "--journal-lanes", "1"]);
    let key = cluster_key(dir.path());
    let (commits_before, mutations_before, syncs_before) = counts(&daemon);
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut client = Client::new(daemon.address("udp"), &key);
            std::thread::spawn(move || {
                for _ in 0..CREATES_PER_CLIENT {
                    let request = ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File });
                    let bytes = client.call(&request);
                    let ShardResponse::CreateEdenFile(_) = decode(&bytes, &client.key) else { panic!("refused") };
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(300));
    let (commits, mutations, syncs) = counts(&daemon);
    let (commits, mutations, syncs) = (commits - commits_before, mutations - mutations_before, syncs - syncs_before);
    eprintln!(
        "{mutations} mutations in {commits} commits ({:.2} per commit), {syncs} journal syncs ({:.2} commits per sync)",
        mutations as f64 / commits.max(1) as f64,
        commits as f64 / syncs.max(1) as f64
    );
    assert!(mutations >= (CLIENTS * CREATES_PER_CLIENT) as u64, "every create committed");
    // A commit made while a lane was free can still share its sync with
    // the one before it (a lane was delivering): allow half a
    // commit more per sync, and the odd commit around the measurement.
    assert!(
        commits * 2 <= syncs * 3 + 10,
        "{commits} commits for {syncs} journal syncs: the writer committed while it could have kept collecting"
    );
}

/// Session 15: a mutation that finds the writer idle (nothing open,
/// nothing queued) and a sync lane free is applied and committed by the
/// I/O thread that received it, without the hand-off to the writer
/// thread. A lone client waiting for each answer finds it so every time
/// but the odd one (a block service refresh saved by the writer, say).
#[test]
fn a_lone_clients_mutations_are_applied_by_the_thread_that_received_them() {
    const CREATES: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad_with(1, dir.path(), None, &["--metrics", "127.0.0.1:0"]);
    let key = cluster_key(dir.path());
    let applied = |daemon: &Daemon| Metrics::scrape(daemon).value("metad_applied_on_receive_total") as u64;
    let before = applied(&daemon);
    let mut client = Client::new(daemon.address("udp"), &key);
    let mut inodes = std::collections::HashSet::new();
    for _ in 0..CREATES {
        let request = ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File });
        let bytes = client.call(&request);
        let ShardResponse::CreateEdenFile(created) = decode(&bytes, &client.key) else { panic!("refused") };
        assert!(inodes.insert(created.inode), "one inode per create");
    }
    let on_receive = applied(&daemon) - before;
    eprintln!("{on_receive} of {CREATES} creates applied by the receiving thread");
    assert!(on_receive * 10 >= CREATES * 9, "{on_receive} of {CREATES} creates skipped the hand-off to the writer");
}
