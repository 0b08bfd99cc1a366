//! Rough throughput figures (not a benchmark suite — that lives in `perf/`;
//! no timed assertions). Run with
//! `cargo test --release -p metad --test measure -- --ignored --nocapture`.

mod common;

use common::*;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wire::Name;
use wire::datagram;
use wire::ids::{InodeId, InodeType};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::shard::*;

const RUN: Duration = Duration::from_secs(3);

fn fsyncs_per_second(dir: &std::path::Path) -> f64 {
    let mut file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        file.write_all(&[0u8; 4096]).unwrap();
        file.sync_data().unwrap();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// `clients` threads, each keeping `window` stat requests in flight.
fn stats_per_second(server: std::net::SocketAddr, key: &wire::SecretKey, clients: usize, window: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (done, stop, client) = (done.clone(), stop.clone(), Client::new(server, key));
            std::thread::spawn(move || {
                let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
                let len =
                    datagram::encode(&mut out, 1, &ShardRequest::Stat(StatReq { inode: InodeId::ROOT }), None).unwrap();
                client.socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                let mut buf = vec![0u8; 2048];
                for _ in 0..window {
                    client.socket.send_to(&out[..len], server).unwrap();
                }
                while !stop.load(Ordering::Relaxed) {
                    match client.socket.recv_from(&mut buf) {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            client.socket.send_to(&out[..len], server).unwrap();
                        }
                        Err(_) => {
                            // A lost datagram: put one back in flight.
                            client.socket.send_to(&out[..len], server).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let before = done.load(Ordering::Relaxed);
    std::thread::sleep(RUN);
    let count = done.load(Ordering::Relaxed) - before;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    rate
}

/// `clients` threads each creating small files (create, inline span, link)
/// one after the other.
fn creates_per_second(server: std::net::SocketAddr, key: &wire::SecretKey, clients: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|index| {
            let (done, stop, mut client) = (done.clone(), stop.clone(), Client::new(server, key));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let bytes =
                        client.call(&ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File }));
                    let ShardResponse::CreateEdenFile(created) = decode(&bytes, &client.key) else { panic!() };
                    let contents = b"small file";
                    let span = inline_span(&created, contents);
                    client.call(&ShardRequest::AddEdenSpan(span));
                    let file_name = format!("f-{index}-{i}");
                    let link = LinkEdenFileReq {
                        head: LinkEdenFileReqHead {
                            inode: created.inode,
                            cookie: created.cookie,
                            parent: InodeId::ROOT,
                        },
                        name: Name::new(file_name.as_bytes()).unwrap(),
                    };
                    let bytes = client.call(&ShardRequest::LinkEdenFile(link));
                    assert!(matches!(decode(&bytes, &client.key), ShardResponse::LinkEdenFile(_)));
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(RUN);
    let count = done.load(Ordering::Relaxed);
    let rate = count as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    rate
}

#[test]
#[ignore = "prints throughput figures; run by hand"]
fn measure_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_metad(1, dir.path(), None);
    let key = cluster_key(dir.path());
    let server = daemon.address("udp");
    eprintln!("fsync/s (4 KiB write + fdatasync, same folder): {:.0}", fsyncs_per_second(dir.path()));
    for (clients, window) in [(1, 1), (1, 32), (4, 32), (16, 16), (64, 4)] {
        eprintln!(
            "stat ops/s, {clients} clients × {window} in flight: {:.0}",
            stats_per_second(server, &key, clients, window)
        );
    }
    for clients in [1, 16, 64] {
        eprintln!(
            "durable small-file creates/s (3 requests each), {clients} clients: {:.0}",
            creates_per_second(server, &key, clients)
        );
    }
}
