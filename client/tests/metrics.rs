//! Every daemon's Prometheus endpoint, on a real `eggs local-cluster`
//! (issue 14): each child is announced as `metrics NAME http://ADDR/metrics`;
//! after some operations each `/metrics` body is parsed with a Prometheus
//! text parser (`prometheus-parse`; every sample line must parse, none is
//! skipped) and the counters the operations should move have moved. Bad
//! HTTP requests get an error status and the endpoint keeps serving.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Cluster, test_bytes};
use prometheus_parse::{LineInfo, Scrape, Value};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` as is, closes the sending side, and returns the whole
/// answer (the server closes too).
fn exchange(addr: &str, request: &[u8]) -> String {
    exchange_with(addr, request, true)
}

/// As [`exchange`]; `close_sending`: whether to close the sending side
/// after the request (hyper drops a half-closed connection unanswered).
fn exchange_with(addr: &str, request: &[u8], close_sending: bool) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.write_all(request).expect("send request");
    if close_sending {
        stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET /metrics`, checked and parsed: every line is a comment, blank, or a
/// sample the parser reads (a line it would skip fails the test), and the
/// body ends with `# EOF`.
fn scrape(addr: &str) -> Scrape {
    let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: eggs\r\nConnection: close\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head from {addr}: {answer}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{addr}: {head}");
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{addr}: {head}");
    assert!(body.ends_with("# EOF\n"), "{addr}: the body does not end with # EOF");
    for line in body.lines() {
        let parsed = LineInfo::parse(line);
        assert!(
            parsed != LineInfo::Ignored || line.starts_with("# UNIT ") || line == "# EOF",
            "{addr}: the parser cannot read {line:?}"
        );
    }
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("parse")
}

/// The value of every sample of `metric` whose labels include `labels`,
/// summed (a histogram counts its observations).
fn sum(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| labels.iter().all(|(key, value)| sample.labels.get(key) == Some(*value)))
        .map(|sample| match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

fn has(scrape: &Scrape, metric: &str) -> bool {
    scrape.samples.iter().any(|sample| sample.metric == metric) || scrape.docs.contains_key(metric)
}

#[test]
fn every_daemon_serves_metrics_that_count_the_operations() {
    let cluster = Cluster::start(3);
    let urls: BTreeMap<String, String> = cluster.metrics.iter().cloned().collect();
    let names: Vec<&str> = urls.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["block-0", "block-1", "block-2", "cdc", "gcd", "shard-0", "shard-1", "shuckle"],
        "one `metrics NAME URL` line per child"
    );
    let addr = |name: &str| -> String {
        let url = &urls[name];
        url.strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("{name}: not http://ADDR/metrics: {url}"))
            .to_owned()
    };

    let data = test_bytes(300_000, 14);
    let file = cluster.dir.join("input");
    std::fs::write(&file, &data).expect("write input");
    cluster.ok(&["mkdir", "/m"]);
    cluster.ok(&["put", file.to_str().expect("utf-8"), "/m/f"]);
    assert_eq!(cluster.ok(&["cat", "/m/f"]), data);
    let http = cluster.daemons.iter().find(|d| d.name == "shuckle" && d.proto == "http").expect("shuckle http");
    let request = b"GET /api/block_services HTTP/1.1\r\nHost: eggs\r\nConnection: close\r\n\r\n";
    let json = exchange_with(&http.addr, request, false);
    assert!(json.starts_with("HTTP/1.1 200"), "{json}");

    let blocks: Vec<Scrape> = ["block-0", "block-1", "block-2"].iter().map(|name| scrape(&addr(name))).collect();
    let total = |metric: &str, labels: &[(&str, &str)]| blocks.iter().map(|s| sum(s, metric, labels)).sum::<f64>();
    assert!(total("blockd_written_bytes_total", &[]) >= data.len() as f64, "the put's blocks were counted");
    assert!(total("blockd_requests_total", &[("kind", "write")]) >= 1.0);
    assert!(total("blockd_requests_total", &[("kind", "fetch")]) >= 1.0, "the cat fetched blocks");
    assert!(total("blockd_fetched_bytes_total", &[]) > 0.0);
    assert!(total("blockd_request_duration_seconds", &[("kind", "write")]) >= 1.0, "write latencies observed");
    assert!(total("blockd_used_blocks", &[]) >= 1.0);

    let shards: Vec<Scrape> = ["shard-0", "shard-1"].iter().map(|name| scrape(&addr(name))).collect();
    let total = |metric: &str, labels: &[(&str, &str)]| shards.iter().map(|s| sum(s, metric, labels)).sum::<f64>();
    for kind in ["CreateEdenFile", "AddEdenSpan", "CertifyEdenSpan", "LinkEdenFile", "FetchSpans", "Resolve"] {
        assert!(total("metad_requests_total", &[("kind", kind)]) >= 1.0, "metad counted {kind}");
    }
    assert!(total("metad_request_duration_seconds", &[("kind", "LinkEdenFile")]) >= 1.0);
    assert!(total("metad_commit_batch_size", &[]) >= 1.0, "group commits observed");
    assert!(total("metad_commit_duration_seconds", &[]) >= 1.0);
    assert!(shards.iter().all(|s| has(s, "metad_request_errors_total") && has(s, "metad_request_error_codes")));
    // Issue 17 F: a checksum mismatch counts in metrics (none here).
    assert!(shards.iter().all(|s| has(s, "metad_store_checksum_mismatches_total")));

    let cdc = scrape(&addr("cdc"));
    assert_eq!(sum(&cdc, "cdcd_requests_total", &[("kind", "MkDir")]), 1.0);
    assert_eq!(sum(&cdc, "cdcd_request_statuses_total", &[("kind", "MkDir"), ("status", "OK")]), 1.0);
    assert!(sum(&cdc, "cdcd_commit_batch_size", &[]) >= 1.0, "the mkdir was committed");
    assert!(has(&cdc, "cdcd_transactions_in_flight"));

    let shuckle = scrape(&addr("shuckle"));
    assert_eq!(sum(&shuckle, "shuckle_block_services", &[]), 3.0, "three block services known");
    assert!(sum(&shuckle, "shuckle_block_services_free_bytes", &[("storage_class", "2")]) > 0.0);
    assert!(sum(&shuckle, "shuckle_requests_total", &[("kind", "Registration")]) >= 3.0);
    assert_eq!(sum(&shuckle, "shuckle_store_checksum_mismatches_total", &[]), 0.0, "a sound store");
    assert!(has(&shuckle, "shuckle_store_checksum_mismatches_total"));
    assert!(sum(&shuckle, "shuckle_requests_total", &[("kind", "Shards")]) >= 1.0, "clients asked for shards");
    assert!(sum(&shuckle, "shuckle_http_requests_total", &[("route", "/api/block_services")]) >= 1.0);

    let gcd = scrape(&addr("gcd"));
    assert!(has(&gcd, "gcd_cycles_total") || has(&gcd, "gcd_cycles"), "gcd's counters are served");
}

#[test]
fn bad_requests_to_a_metrics_port_get_errors_and_the_port_keeps_serving() {
    let cluster = Cluster::start(1);
    assert_eq!(cluster.metrics.len(), 6, "shuckle, 2 shards, the CDC, 1 block service, gcd: {:?}", cluster.metrics);
    for (name, url) in &cluster.metrics {
        let addr = url.trim_start_matches("http://").trim_end_matches("/metrics");
        // A slow client holding a connection open does not stop the others.
        let idle = TcpStream::connect(addr).expect("idle connection");
        let garbage = exchange(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400"), "{name}: {garbage}");
        let not_found = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n");
        assert!(not_found.starts_with("HTTP/1.1 404"), "{name}: {not_found}");
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405"), "{name}: {post}");
        let huge = vec![b'a'; 64 << 10];
        let too_long = exchange(addr, &huge);
        assert!(too_long.starts_with("HTTP/1.1 431"), "{name}: {}", &too_long[..too_long.len().min(200)]);
        let closed = exchange(addr, b"GET /met");
        assert_eq!(closed, "", "{name}: a head cut short is not answered");
        let scraped = scrape(addr);
        assert!(!scraped.samples.is_empty(), "{name} still serves after bad requests");
        drop(idle);
    }
}
