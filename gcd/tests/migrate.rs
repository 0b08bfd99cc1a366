//! Acceptance 3 of issue 13, on real binaries: a block service is SIGKILLed,
//! drained and terminated in shuckle; gcd moves every block it held onto
//! the healthy services. Afterwards reverse_block_query for it is empty,
//! every file reads back identical with no reconstruction, and killing two
//! *other* services still leaves every file readable (each span is whole
//! again, so it has both parity blocks to spare).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::{Cluster, Printed, scrape, test_bytes, wait_for};

/// Shuckle declares a service stale (and so terminable) this fast here.
const STALE_AFTER_SECS: &str = "2";

#[test]
fn a_terminated_block_service_is_emptied_onto_the_others() {
    // 8 services under RS 4+2: after one is gone, 7 remain for 6 places.
    // local-cluster's gcd runs with short time rules so that its write
    // probes (eden files whose blocks were never written) are collected
    // before the victim dies.
    let cluster = Cluster::start(
        8,
        &[
            "--eden-deadline-secs",
            "2",
            "--purge-age-min-secs",
            "1",
            "--gc-interval-secs",
            "1",
            "--scrub-interval-secs",
            "3600",
            "--stale-after-secs",
            STALE_AFTER_SECS,
        ],
    );
    let metrics = cluster.gcd_metrics.clone().expect("local-cluster's gcd metrics address");
    let mut files = HashMap::new();
    for index in 0..12u64 {
        let path = format!("/migrate-{index}");
        let bytes = test_bytes(60_000 + index as usize * 45_000, 700 + index);
        cluster.put(&path, &bytes);
        files.insert(path, bytes);
    }
    let services = cluster.block_services();
    let ids: Vec<String> = services.iter().map(|service| service_id(&cluster, service)).collect();
    wait_for(Duration::from_secs(60), "the write probes' blocks to be collected", || {
        (0..services.len())
            .all(|index| reverse_block_query(&cluster, &ids[index]).len() == block_count(&cluster, index))
            .then_some(())
    });
    // The victim: the service holding the most blocks.
    let (victim_index, held) = (0..services.len())
        .map(|index| (index, block_count(&cluster, index)))
        .max_by_key(|(_, count)| *count)
        .expect("block services");
    assert!(held > 0, "the victim holds blocks");
    let victim = &services[victim_index];
    let victim_id = ids[victim_index].clone();
    let migrated_before = scrape(&metrics).get("gcd_blocks_migrated").copied().unwrap_or(0.0);
    assert_eq!(migrated_before, 0.0, "nothing was migrated while every service was healthy");
    cluster.kill(victim);

    let http = cluster.shuckle_http();
    // local-cluster keeps shuckle's operator token beside the cluster key.
    let token = std::fs::read_to_string(cluster.dir.join("operator.token")).expect("operator token");
    let post = |addr: &str, path: &str| request(addr, "POST", path, token.trim());
    assert_eq!(post(&http, &format!("/api/block_services/{victim_id}/drain")).0, 200, "drain");
    assert_eq!(awaiting(&http, &victim_id), Some(held as u64), "shuckle's UI counts what awaits migration");
    wait_for(Duration::from_secs(60), "shuckle to call the killed service stale", || {
        let (status, body) = post(&http, &format!("/api/block_services/{victim_id}/terminate"));
        match status {
            200 => Some(()),
            409 => None,
            other => panic!("terminate answered {other}: {body}"),
        }
    });
    wait_for(Duration::from_secs(120), "gcd to migrate every block", || {
        let counters = scrape(&metrics);
        (counters.get("gcd_blocks_migrated").copied().unwrap_or(0.0) >= held as f64).then_some(())
    });
    assert_eq!(scrape(&metrics)["gcd_blocks_migrated"], held as f64, "exactly the victim's blocks moved");
    // The swapped-out copies wait in eden files until a collection lets
    // them go without erase proofs, once the shard has learned that their
    // service is terminal (it refreshes its block services from shuckle
    // every SHARD_REFRESH_PERIOD_NS, 60 s).
    wait_for(Duration::from_secs(150), "nothing left on the terminated service", || {
        reverse_block_query(&cluster, &victim_id).is_empty().then_some(())
    });

    assert_eq!(awaiting(&http, &victim_id), Some(0), "shuckle's UI shows nothing left to migrate");
    for (path, contents) in &files {
        let output = cluster.eggs(&["-v", "cat", path]);
        assert!(output.status.success(), "{path}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(output.stdout == *contents, "{path} reads back identical");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("reconstructed"), "{path} needs no reconstruction after migration: {stderr}");
    }

    // Two more failures are within RS 4+2 for every span now.
    let others: Vec<&Printed> =
        services.iter().enumerate().filter(|(index, _)| *index != victim_index).map(|(_, s)| s).take(2).collect();
    for service in others {
        cluster.kill(service);
    }
    for (path, contents) in &files {
        assert!(cluster.cat(path) == *contents, "{path} reads back identical with two more services dead");
    }
}

/// Blocks on disk in block service `index`'s folder.
fn block_count(cluster: &Cluster, index: usize) -> usize {
    let prefix = cluster.block_dir(index);
    cluster.block_files().keys().filter(|path| path.starts_with(&prefix)).count()
}

/// The id shuckle gives the service at the address local-cluster printed.
fn service_id(cluster: &Cluster, service: &Printed) -> String {
    let listing = String::from_utf8(cluster.ok(&["block-services"])).expect("utf-8");
    listing
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next()?;
            (words.next()? == service.addr).then(|| id.to_owned())
        })
        .unwrap_or_else(|| panic!("{} is not listed: {listing}", service.addr))
}

/// Every `block=… inode=… offset=…` line of every shard for `id`.
fn reverse_block_query(cluster: &Cluster, id: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for shard in ["0", "1"] {
        let output = String::from_utf8(cluster.ok(&["reverse-block-query", id, "--shard", shard])).expect("utf-8");
        lines.extend(output.lines().filter(|line| line.starts_with("block=")).map(str::to_owned));
    }
    lines
}

/// Shuckle's count of the blocks awaiting migration off `id`, if it
/// counts that service (and the count is whole).
fn awaiting(addr: &str, id: &str) -> Option<u64> {
    let (status, body) = request(addr, "GET", "/api/awaiting_migration", "");
    assert_eq!(status, 200, "awaiting_migration: {body}");
    let counts: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let entry = counts.get(id)?;
    assert_eq!(entry["complete"], true, "a whole count: {body}");
    entry["blocks"].as_u64()
}

/// A JSON POST to shuckle's HTTP API: (status, body).
/// One HTTP exchange; `token` (shuckle's operator token) goes as the bearer.
fn request(addr: &str, method: &str, path: &str, token: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to shuckle");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}
