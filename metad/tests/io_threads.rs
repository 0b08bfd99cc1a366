//! Which I/O threads wait on the socket (`metad::server`'s `Receivers`,
//! session 16): while only mutations arrive, one I/O thread receives and
//! the others park (a second thread waiting beside a busy one only split
//! the arrivals into more receives, each a sleep and a wake-up); the
//! first receive that answers a read at once calls the parked ones back.
//! What it asserts is counted by metad itself (`/metrics`), never timed.

mod common;

use common::*;
use wire::ids::{InodeId, InodeType};
use wire::shard::*;

/// Requests sent, one at a time, before a park or a call back must have
/// been counted (each takes a few of them at most: the thread that served
/// a request parks once it finds another receiving).
const TRIES: usize = 50;

/// The first of at most [`TRIES`] tries (counted from 1) after which
/// `step` says it saw what it waits for.
fn tries_until(mut step: impl FnMut() -> bool) -> Option<usize> {
    (1..=TRIES).find(|_| step())
}

fn counts(daemon: &Daemon) -> (u64, u64) {
    let metrics = Metrics::scrape(daemon);
    (metrics.value("metad_io_parked_total") as u64, metrics.value("metad_io_recalled_total") as u64)
}

#[test]
fn io_threads_park_while_only_mutations_arrive_and_a_read_calls_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad_with(1, dir.path(), None, &["--metrics", "127.0.0.1:0", "--executors", "2"]);
    let key = cluster_key(dir.path());
    let mut client = Client::new(daemon.address("udp"), &key);
    let create = |client: &mut Client| {
        let request = ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File });
        let bytes = client.call(&request);
        let ShardResponse::CreateEdenFile(_) = decode(&bytes, &client.key) else { panic!("create refused") };
    };
    let stat = |client: &mut Client| {
        let bytes = client.call(&ShardRequest::Stat(StatReq { inode: InodeId::ROOT }));
        let ShardResponse::Stat(_) = decode(&bytes, &client.key) else { panic!("stat refused") };
    };
    for round in 0..5 {
        // A create leaves a thread parked (the one that served it, when
        // the other was receiving; else the other already was); the stat
        // after it calls it back.
        let (_, recalled) = counts(&daemon);
        let tries = tries_until(|| {
            create(&mut client);
            stat(&mut client);
            counts(&daemon).1 > recalled
        })
        .unwrap_or_else(|| panic!("round {round}: no parked I/O thread called back after {TRIES} creates and stats"));
        eprintln!("round {round}: called back after {tries} create(s) and stat(s)");
        // A stat has every thread receive; the create after it parks one.
        let (parked, _) = counts(&daemon);
        let tries = tries_until(|| {
            stat(&mut client);
            create(&mut client);
            counts(&daemon).0 > parked
        })
        .unwrap_or_else(|| panic!("round {round}: no I/O thread parked after {TRIES} stats and creates"));
        eprintln!("round {round}: an I/O thread parked after {tries} stat(s) and create(s)");
    }
    // Reads from many clients at once, every one answered, after creates
    // left a thread parked.
    create(&mut client);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let mut client = Client::new(daemon.address("udp"), &key);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    stat(&mut client);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}
