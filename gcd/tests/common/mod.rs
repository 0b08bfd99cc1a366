//! Test harness: the workspace's shared local cluster (`testsupport`), a
//! gcd the test can start and SIGKILL, and its metrics.
//! The binaries are the ones built beside this test (`target/<profile>/`):
//! `cargo build -p gcd -p client -p metad -p blockd -p cdcd -p shuckle`.

#![allow(dead_code, unused_imports)] // reason: each test binary uses a different part of the harness

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

pub use testsupport::{Daemon, Printed, binary, test_bytes, wait_for};

/// A cluster from `eggs local-cluster` (children stay down when killed).
pub struct Cluster(testsupport::Cluster);

impl std::ops::Deref for Cluster {
    type Target = testsupport::Cluster;

    fn deref(&self) -> &testsupport::Cluster {
        &self.0
    }
}

impl Cluster {
    /// A fresh cluster of 2 shards, `block_services` block services and
    /// the given extra `local-cluster` flags.
    pub fn start(block_services: usize, flags: &[&str]) -> Self {
        Self(testsupport::Cluster::start_with(block_services, flags))
    }

    /// Starts a gcd of our own against this cluster.
    pub fn start_gcd(&self, flags: &[&str]) -> Gcd {
        let mut command = Command::new(binary("gcd"));
        command.args(["--shuckle", &self.shuckle, "--metrics", "127.0.0.1:0"]).args(flags);
        let daemon = Daemon::spawn("gcd", command);
        let metrics = daemon.address_text("metrics");
        Gcd { daemon, metrics }
    }
}

/// A gcd the test started, SIGKILLed on drop.
pub struct Gcd {
    pub daemon: Daemon,
    /// Its `listening metrics ADDR`.
    pub metrics: String,
}

impl Gcd {
    pub fn sigkill(&mut self) {
        self.daemon.kill();
    }
}

/// GET /metrics at `addr`: counter name (without `_total`) → value.
pub fn scrape(addr: &str) -> HashMap<String, f64> {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "metrics answer: {text}");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.trim_end_matches("_total").to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}
