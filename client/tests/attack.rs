//! The fault-and-attack suite's cluster-wide part (issue 17): seeded
//! garbage against every daemon of one real `eggs local-cluster`, with a
//! liveness check after each batch.
//!
//! The rest of the suite lives beside the fixes it proves (listed in
//! ARCHITECTURE.md, "Testing"): slowloris in `blockd/tests/hardening.rs`,
//! replay in `cdcd/tests/replay.rs`, the poison datagram and the full disk
//! of the CDC in `cdcd/tests/hardening.rs`, corrupted metadata in
//! `metad/tests/corruption.rs`, full block services in
//! `client/tests/disk_full.rs`.
//!
//! Every datagram comes from a seeded generator (the seed is printed;
//! `ATTACK_SEED=N` replays one run): random bytes of random lengths,
//! truncated valid requests, valid headers with random kinds and bodies,
//! valid requests with a few bytes changed, wrong protocol versions,
//! another family's magic, and privileged kinds with a forged or missing
//! MAC trailer. After each batch, every daemon's process is still alive,
//! each shard answers a stat, and a mkdir (CDC), a put and a cat (shuckle,
//! a shard, the block services) still work through the real `eggs`.

mod common;

use common::{Cluster, Printed, test_bytes};
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use testsupport::Rng;
use wire::Name;
use wire::cdc::{CdcRequest, MkDirReq, MkDirReqHead};
use wire::datagram::{self, HEADER_BYTES, KIND_PRIVILEGED, PROTOCOL_VERSION};
use wire::ids::InodeId;
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::shard::{ShardRequest, StatReq};
use wire::shuckle::{ShardsReq, ShuckleRequest};

/// Batches per daemon, and datagrams per batch.
const BATCHES: usize = 4;
const DATAGRAMS_PER_BATCH: usize = 10_000;
/// Garbage TCP connections per block service per batch.
const CONNECTIONS_PER_BATCH: usize = 100;
/// Liveness bound for one probe request (the daemon is loaded by the fuzz
/// that just ended; this is not a performance figure).
const ANSWER_BOUND: Duration = Duration::from_secs(10);

/// Mostly short lengths, sometimes up to the datagram limit.
fn length(rng: &mut Rng) -> usize {
    if rng.index(8) == 0 { rng.index(UDP_DATAGRAM_BYTES_MAX + 1) } else { rng.index(64) }
}

/// One UDP daemon under attack: where it listens, its family's magic, and
/// a valid request of that family to mutate.
struct Target {
    name: String,
    address: SocketAddr,
    magic: [u8; 3],
    template: Vec<u8>,
}

fn encode<'a, B: datagram::Body<'a>>(body: &B) -> Vec<u8> {
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut out, 1, body, None).expect("encode");
    out.truncate(len);
    out
}

fn shard_stat() -> Vec<u8> {
    encode(&ShardRequest::Stat(StatReq { inode: InodeId::ROOT }))
}

/// One seeded garbage datagram built from `target`'s template.
fn garbage(rng: &mut Rng, target: &Target) -> Vec<u8> {
    let template = &target.template;
    let mut bytes = match rng.index(7) {
        // Random bytes of a random length (often shorter than a header).
        0 => {
            let len = length(rng);
            rng.bytes(len)
        }
        // A valid request cut short.
        1 => template[..rng.index(template.len())].to_vec(),
        // A valid header, a random kind, a random body.
        2 => {
            let mut bytes = template[..HEADER_BYTES].to_vec();
            bytes[HEADER_BYTES - 1] = rng.next_u64() as u8;
            let len = length(rng);
            bytes.extend(rng.bytes(len));
            bytes
        }
        // A valid request with a few bytes changed.
        3 => {
            let mut bytes = template.clone();
            for _ in 0..1 + rng.index(4) {
                let at = rng.index(bytes.len());
                bytes[at] = rng.next_u64() as u8;
            }
            bytes
        }
        // A valid request at another protocol version.
        4 => {
            let mut bytes = template.clone();
            bytes[3] = loop {
                let version = rng.next_u64() as u8;
                if version != PROTOCOL_VERSION {
                    break version;
                }
            };
            bytes
        }
        // Another family's magic on a valid body.
        5 => {
            let mut bytes = template.clone();
            let magics = [datagram::SHARD_MAGIC, datagram::CDC_MAGIC, datagram::SHUCKLE_MAGIC];
            bytes[..3].copy_from_slice(&magics[rng.index(magics.len())]);
            bytes
        }
        // A privileged kind: the valid body with a forged trailer (send
        // time and MAC), a short trailer, or none.
        _ => {
            let mut bytes = template.clone();
            bytes[HEADER_BYTES - 1] = KIND_PRIVILEGED | rng.next_u64() as u8;
            let trailer = [0, 8, datagram::PRIVILEGED_TRAILER_BYTES][rng.index(3)];
            bytes.extend(rng.bytes(trailer));
            bytes
        }
    };
    // Random request ids: a retransmission cache must not be the only
    // thing that answers.
    if bytes.len() >= HEADER_BYTES && rng.index(2) == 0 {
        bytes[4..12].copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes
}

/// Sends `request` (id 1 in its header is replaced) until a datagram of the
/// family answers it, within ANSWER_BOUND.
fn answers(address: SocketAddr, magic: [u8; 3], request: &[u8], request_id: u64) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let mut request = request.to_vec();
    request[4..12].copy_from_slice(&request_id.to_le_bytes());
    let started = Instant::now();
    let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX + 64];
    while started.elapsed() < ANSWER_BOUND {
        socket.send_to(&request, address).expect("send");
        while let Ok((len, _)) = socket.recv_from(&mut buf) {
            if datagram::peek_header(&buf[..len], magic).is_ok_and(|header| header.request_id() == request_id) {
                return true;
            }
        }
    }
    false
}

fn alive(daemon: &Printed) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the pid exists.
    unsafe { libc::kill(daemon.pid as libc::pid_t, 0) == 0 }
}

fn address(daemon: &Printed) -> SocketAddr {
    daemon.addr.parse().unwrap_or_else(|_| panic!("{} address {}", daemon.name, daemon.addr))
}

/// Every daemon lives, every shard answers a stat, and the file system
/// works end to end.
fn check_liveness(cluster: &Cluster, round: &str, shards: &[&Printed]) {
    for daemon in &cluster.daemons {
        assert!(alive(daemon), "{round}: {} (pid {}) died", daemon.name, daemon.pid);
    }
    for (index, shard) in shards.iter().enumerate() {
        let request_id = 0x5eed_0000 + index as u64;
        assert!(
            answers(address(shard), datagram::SHARD_MAGIC, &shard_stat(), request_id),
            "{round}: {} does not answer a stat",
            shard.name
        );
    }
    let dir = format!("/{round}");
    cluster.ok(&["mkdir", &dir]);
    let contents = test_bytes(300_000, round.len() as u64);
    let path = format!("{dir}/file");
    let put = cluster.eggs_with_input(&["put", "-", &path], Some(&contents));
    assert!(put.status.success(), "{round}: put: {}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(cluster.ok(&["cat", &path]), contents, "{round}: the file reads back");
}

fn fuzz_udp(rng: &mut Rng, target: &Target) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Never read: the daemons' answers to garbage are dropped by our
    // kernel once the buffer is full.
    for _ in 0..DATAGRAMS_PER_BATCH {
        let bytes = garbage(rng, target);
        let _ = socket.send_to(&bytes, target.address);
    }
}

fn fuzz_tcp(rng: &mut Rng, block_service: SocketAddr) {
    for _ in 0..CONNECTIONS_PER_BATCH {
        let Ok(mut stream) = TcpStream::connect(block_service) else { continue };
        let len = length(rng);
        let _ = stream.write_all(&rng.bytes(len));
        // Half close abruptly, half leave it to the server to cut off.
        if rng.index(2) == 0 {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn seeded_garbage_against_every_daemon_leaves_the_cluster_serving() {
    let seed = std::env::var("ATTACK_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or_else(rand_seed);
    eprintln!("attack seed {seed} (ATTACK_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let cluster = Cluster::start(6);
    let by_name =
        |name: &'static str| cluster.daemons.iter().filter(move |daemon| daemon.name == name && daemon.proto == "udp");
    let shards: Vec<&Printed> =
        cluster.daemons.iter().filter(|d| d.name.starts_with("shard ") && d.proto == "udp").collect();
    assert!(!shards.is_empty(), "local-cluster printed its shards: {:?}", cluster.daemons);
    let mut targets: Vec<Target> = shards
        .iter()
        .map(|shard| Target {
            name: shard.name.clone(),
            address: address(shard),
            magic: datagram::SHARD_MAGIC,
            template: shard_stat(),
        })
        .collect();
    let name = Name::new(b"fuzzed").unwrap();
    targets.extend(by_name("cdc").map(|cdc| Target {
        name: cdc.name.clone(),
        address: address(cdc),
        magic: datagram::CDC_MAGIC,
        template: encode(&CdcRequest::MkDir(MkDirReq { head: MkDirReqHead { parent: InodeId::ROOT }, name })),
    }));
    targets.extend(by_name("shuckle").map(|shuckle| Target {
        name: shuckle.name.clone(),
        address: address(shuckle),
        magic: datagram::SHUCKLE_MAGIC,
        template: encode(&ShuckleRequest::Shards(ShardsReq { begin: 0 })),
    }));
    assert_eq!(targets.len(), shards.len() + 2, "shards, the CDC and shuckle: {:?}", cluster.daemons);
    let block_services: Vec<SocketAddr> = cluster.block_services().iter().map(address).collect();
    assert_eq!(block_services.len(), 6);

    check_liveness(&cluster, "before", &shards);
    for batch in 0..BATCHES {
        for target in &targets {
            fuzz_udp(&mut rng, target);
            assert!(
                answers(target.address, target.magic, &target.template, 0xa11e_0000 + batch as u64),
                "{} does not answer a valid request after batch {batch} of garbage (seed {seed})",
                target.name
            );
        }
        for &block_service in &block_services {
            fuzz_tcp(&mut rng, block_service);
        }
        check_liveness(&cluster, &format!("after-batch-{batch}"), &shards);
    }
    eprintln!(
        "{} datagrams to each of {} UDP daemons and {} garbage connections to each of {} block services; all serving",
        BATCHES * DATAGRAMS_PER_BATCH,
        targets.len(),
        BATCHES * CONNECTIONS_PER_BATCH,
        block_services.len()
    );
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}
