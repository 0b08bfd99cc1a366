//! A consumer that stops reading for longer than blockd's stall limit
//! (`eggs cat f | less`, left alone): the requests the read sent ahead
//! wait in their connections, blockd gives up on them and closes those
//! connections, and the read must still hand over every byte, with no
//! error and no notice, once the consumer reads again (`client::read`: the
//! cut answers are asked again on the process's pool). Real binaries on
//! loopback, with `eggs local-cluster --block-stall-timeout-secs 1`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use common::{Cluster, test_bytes};

const MIB: usize = 1 << 20;
/// Each block service's stall limit in this test.
const STALL_LIMIT_SECS: u64 = 1;

/// `blockd_io_errors_total` plus `blockd_refusals_total`, summed over the
/// cluster's block services: the connections blockd ended on a failure.
fn connections_blockd_ended(cluster: &Cluster) -> u64 {
    let mut total = 0;
    for (name, url) in &cluster.metrics {
        if !name.starts_with("block-") {
            continue;
        }
        let addr = url.trim_start_matches("http://").trim_end_matches("/metrics");
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: eggs\r\nConnection: close\r\n\r\n").expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("metrics");
        total += text
            .lines()
            .filter(|line| line.starts_with("blockd_io_errors_total") || line.starts_with("blockd_refusals_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

#[test]
fn a_reader_paused_past_blockds_stall_limit_still_gets_every_byte() {
    let limit = STALL_LIMIT_SECS.to_string();
    let cluster = Cluster::start_with(6, &["--block-stall-timeout-secs", &limit]);
    // Larger than the read-ahead and the sockets' buffers together, so
    // blockd has answers it cannot send while the reader sleeps.
    let data = test_bytes(160 * MIB + 5, 41);
    let scratch = tempfile::tempdir().expect("tempdir");
    let local = scratch.path().join("paused");
    std::fs::write(&local, &data).expect("write");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/paused", "--parity", "4+2"]);
    let ended_before = connections_blockd_ended(&cluster);

    let mut child = cluster.spawn_eggs(&["-v", "cat", "/paused"], Stdio::null());
    let mut stdout = child.stdout.take().expect("stdout");
    let mut read = vec![0u8; data.len()];
    stdout.read_exact(&mut read[..MIB]).expect("the first MiB");
    std::thread::sleep(Duration::from_secs(STALL_LIMIT_SECS * 4));
    stdout.read_exact(&mut read[MIB..]).expect("the rest");
    let mut more = Vec::new();
    stdout.read_to_end(&mut more).expect("end of output");
    let output = child.wait_with_output().expect("eggs cat");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cat failed: {stderr}");
    assert!(more.is_empty(), "{} bytes past the file's end", more.len());
    assert!(read == data, "cat returned other bytes");
    // `-v` tells of every block read from parity instead: the pause must
    // cost none (the answers blockd gave up on are asked again).
    assert!(stderr.is_empty(), "no parity read, no error noise: {stderr}");
    // The pause did cut connections (else this test tests nothing).
    let ended = connections_blockd_ended(&cluster) - ended_before;
    assert!(ended >= 1, "blockd closed no connection during a pause of 4 stall limits");
}
