//! blockd's metrics, shared by every executor and served by the daemons'
//! shared `/metrics` endpoint (`daemon::metrics`).
//!
//! Everything here is a relaxed atomic: no lock on the request path, and a
//! scrape or a stats answer may be a few requests behind, which is fine for
//! both. `used_bytes`/`used_blocks` are the stats answer's counters: counted
//! once at start (a walk of the folder) and updated by every write and erase,
//! so a stats request never walks the tree.
//!
//! Exported (prefix `blockd_`): `requests_total{kind}`,
//! `request_errors_total{kind}` and `request_duration_seconds{kind}` per
//! block request kind (IOPS are the rates of the write and fetch counts),
//! `refusals_total{reason}`, `written_bytes_total`, `fetched_bytes_total`,
//! `io_errors_total`, `connections_total`, `connections_refused_total`,
//! `connections_shed_total`, and the gauges `used_bytes`, `used_blocks`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use daemon::metrics::{ByLabel, Counter, Gauge, Registry, Requests};

use crate::request::Refusal;
use crate::store::Usage;

/// Request kinds, in index order of [`Counters::request`].
pub const REQUEST_KINDS: [&str; 5] = ["write", "fetch", "crc", "erase", "stats"];

#[derive(Debug)]
pub struct Counters {
    pub used_bytes: Gauge<u64, AtomicU64>,
    pub used_blocks: Gauge<u64, AtomicU64>,
    pub requests: Requests,
    pub refusals: ByLabel<Counter>,
    pub bytes_written: Counter,
    pub bytes_fetched: Counter,
    pub io_errors: Counter,
    pub connections: Counter,
    /// New connections refused because every open one was busy.
    pub connections_refused: Counter,
    /// Waiting connections closed to make room for new ones.
    pub connections_shed: Counter,
}

impl Counters {
    /// Counters starting from `usage`, registered in `registry` under `blockd_`.
    pub fn new(usage: Usage, registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("blockd");
        let counters = Self {
            used_bytes: Gauge::default(),
            used_blocks: Gauge::default(),
            requests: Requests::register(registry, "request", "kind", &REQUEST_KINDS),
            refusals: ByLabel::new("reason", &Refusal::LABELS, Counter::default),
            bytes_written: Counter::default(),
            bytes_fetched: Counter::default(),
            io_errors: Counter::default(),
            connections: Counter::default(),
            connections_refused: Counter::default(),
            connections_shed: Counter::default(),
        };
        counters.used_bytes.set(usage.used_bytes);
        counters.used_blocks.set(usage.used_blocks);
        registry.register("refusals", "requests refused (connection closed), by reason", counters.refusals.clone());
        let single: [(&str, &str, &Counter); 6] = [
            ("written_bytes", "payload bytes of acknowledged writes", &counters.bytes_written),
            ("fetched_bytes", "block bytes sent by fetches", &counters.bytes_fetched),
            ("io_errors", "disk or socket failures that ended a connection", &counters.io_errors),
            ("connections", "connections accepted", &counters.connections),
            ("connections_refused", "new connections refused: every open one was busy", &counters.connections_refused),
            (
                "connections_shed",
                "idle or header-incomplete connections closed to make room",
                &counters.connections_shed,
            ),
        ];
        for (name, help, counter) in single {
            registry.register(name, help, counter.clone());
        }
        registry.register("used_bytes", "bytes of stored blocks", counters.used_bytes.clone());
        registry.register("used_blocks", "stored blocks", counters.used_blocks.clone());
        counters
    }

    pub fn usage(&self) -> Usage {
        Usage { used_bytes: self.used_bytes.get(), used_blocks: self.used_blocks.get() }
    }

    pub fn block_added(&self, size: u64) {
        self.used_bytes.inc_by(size);
        self.used_blocks.inc();
    }

    pub fn block_removed(&self, size: u64) {
        // Saturating: a block counted at start and changed behind our back
        // must not wrap the gauge.
        let saturating = |gauge: &Gauge<u64, AtomicU64>, by: u64| {
            let _ = gauge.inner().fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(by)));
        };
        saturating(&self.used_bytes, size);
        saturating(&self.used_blocks, 1);
    }

    /// Counts one request; `kind` indexes [`REQUEST_KINDS`].
    pub fn request(&self, kind: usize) {
        self.requests.arrived(kind);
    }

    /// Records a request's end: its latency, and whether it failed.
    pub fn request_done(&self, kind: usize, elapsed: Duration, ok: bool) {
        self.requests.finished(kind, elapsed, ok);
    }

    pub fn refusal(&self, refusal: &Refusal) {
        if let Some(counter) = self.refusals.get(refusal.label_index()) {
            counter.inc();
        }
    }

    pub fn written(&self, bytes: u64) {
        self.bytes_written.inc_by(bytes);
    }

    pub fn fetched(&self, bytes: u64) {
        self.bytes_fetched.inc_by(bytes);
    }

    pub fn io_error(&self) {
        self.io_errors.inc();
    }

    pub fn connection(&self) {
        self.connections.inc();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn connection_shed(&self) {
        self.connections_shed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ids::BlockId;

    #[test]
    fn every_counter_is_exported() {
        let mut registry = Registry::default();
        let counters = Counters::new(Usage { used_bytes: 10, used_blocks: 2 }, &mut registry);
        counters.request(0);
        counters.request_done(0, Duration::from_millis(3), true);
        counters.refusal(&Refusal::CrcMismatch { block_id: BlockId::new(1), expected: 0, actual: 1 });
        counters.block_removed(4);
        counters.written(1000);
        let text = daemon::metrics::render(&registry);
        assert!(text.contains("blockd_requests_total{kind=\"write\"} 1\n"), "{text}");
        assert!(text.contains("blockd_requests_total{kind=\"stats\"} 0\n"), "{text}");
        assert!(text.contains("blockd_request_duration_seconds_count{kind=\"write\"} 1\n"), "{text}");
        assert!(text.contains("blockd_refusals_total{reason=\"crc_mismatch\"} 1\n"), "{text}");
        assert!(text.contains("blockd_written_bytes_total 1000\n"), "{text}");
        assert!(text.contains("blockd_used_bytes 6\n"), "{text}");
        assert!(text.contains("blockd_used_blocks 1\n"), "{text}");
        counters.block_removed(100);
        counters.block_removed(100);
        assert_eq!(counters.usage(), Usage { used_bytes: 0, used_blocks: 0 });
    }
}
