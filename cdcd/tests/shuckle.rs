//! cdcd with a real shuckle: it learns the shards' addresses and the shards
//! new directories go to from shuckle, and registers its own address.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{CdcClient, Daemon, binary, mkdir};
use wire::cdc::CdcStatus;
use wire::datagram::{self, SHUCKLE_MAGIC};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::shuckle::{CdcReq, ShardsReq, ShuckleRequest, ShuckleResponse};
use wire::{InodeId, ShardId};

/// One shuckle query; `read` gets the response.
fn ask<T>(shuckle: SocketAddr, request: &ShuckleRequest, read: impl FnOnce(ShuckleResponse<'_>) -> T) -> T {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let request_id: u64 = rand::random();
    let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut out, request_id, request, None).unwrap();
    let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(60), "shuckle does not answer");
        socket.send_to(&out[..len], shuckle).unwrap();
        if let Ok((received, _)) = socket.recv_from(&mut buf)
            && let Ok(header) = datagram::peek_header(&buf[..received], SHUCKLE_MAGIC)
            && header.request_id() == request_id
        {
            let (_, response) = datagram::decode::<ShuckleResponse<'_>>(&buf[..received], None).unwrap();
            return read(response);
        }
    }
}

fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(120), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn learns_shards_from_shuckle_and_registers_itself() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap().to_string();
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let shuckle = Daemon::start(
        &binary("shuckle"),
        &args(&["--data-dir", &folder, "--http", "127.0.0.1:0", "--udp", "127.0.0.1:0"]),
    );
    let shuckle_udp = shuckle.udp();
    let shuckle_text = shuckle_udp.to_string();
    let shards: Vec<Daemon> = (0..2)
        .map(|shard: ShardId| {
            Daemon::start(
                &binary("metad"),
                &args(&[&shard.to_string(), &folder, "--listen", "127.0.0.1:0", "--shuckle", &shuckle_text]),
            )
        })
        .collect();
    let listed = || {
        ask(shuckle_udp, &ShuckleRequest::Shards(ShardsReq { begin: 0 }), |response| match response {
            ShuckleResponse::Shards(page) => page.shards.iter().map(|s| (s.shard, s.address.socket_addr())).collect(),
            other => panic!("{other:?}"),
        })
    };
    let expected: Vec<(ShardId, SocketAddr)> = vec![(0, shards[0].udp()), (1, shards[1].udp())];
    poll_until("the shards to register", || {
        let mut now: Vec<(ShardId, SocketAddr)> = listed();
        now.sort();
        now == expected
    });

    // No --shards, no --shard-addr: everything comes from shuckle.
    let cdc = Daemon::start(&binary("cdcd"), &args(&[&folder, "--listen", "127.0.0.1:0", "--shuckle", &shuckle_text]));
    let client = CdcClient::new(cdc.udp());
    let mut used = std::collections::HashSet::new();
    for i in 0..10 {
        let (status, dir) = client.run(&mkdir(InodeId::ROOT, &format!("d{i}")));
        assert_eq!(status, CdcStatus::Ok);
        used.insert(dir.shard());
    }
    assert_eq!(used.len(), 2, "new directories on both registered shards");
    poll_until("the CDC to register", || {
        ask(shuckle_udp, &ShuckleRequest::Cdc(CdcReq {}), |response| match response {
            ShuckleResponse::Cdc(resp) => resp.address.socket_addr() == cdc.udp(),
            other => panic!("{other:?}"),
        })
    });
}
