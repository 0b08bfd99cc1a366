//! metad's metrics (prefix `metad_`), served by `daemon::metrics`:
//!
//! - `requests_total{kind}`, `request_errors_total{kind}`,
//!   `request_duration_seconds{kind}` per shard request kind (a mutation's
//!   duration runs from its arrival to its durable answer);
//! - `request_error_codes_total{kind,code}`: error answers by kind and code;
//! - `malformed_datagrams_total`: datagrams that did not decode;
//! - the writer's group commit: `commit_batch_size` (mutations per write
//!   transaction), `commit_duration_seconds` (apply and commit of one
//!   write transaction, without the time it was held open waiting for the
//!   journal: `crate::server`'s writer);
//! - the journal (`daemon::journal`): `journal_syncs_total`,
//!   `journal_bytes_total`, `journal_records_per_sync` (write transactions
//!   made durable by one fdatasync), `journal_sync_duration_seconds`,
//!   `journal_checkpoint_duration_seconds` (its count: checkpoints taken);
//! - `receive_batch_size`: datagrams per batched receive of an I/O thread
//!   (1 while the server keeps up; more once datagrams queue).
//!
//! Labels are [`ShardKind`] and [`ErrorKind`] names. Every update is a
//! relaxed atomic (no lock, no allocation per request).

use std::time::Duration;

use daemon::metrics::{Counter, Histogram, Pairs, Registry, Requests, response_error_code};
use wire::ErrorKind;
use wire::shard::ShardKind;

#[derive(Clone, Debug)]
pub struct Metrics {
    pub requests: Requests,
    pub error_codes: Pairs,
    pub malformed: Counter,
    pub batch_size: Histogram,
    pub commit: Histogram,
    pub journal: daemon::journal::JournalMetrics,
    pub receive_batch: Histogram,
}

impl Metrics {
    /// The metrics, registered in `registry` under `metad_`.
    pub fn new(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("metad");
        let kinds: Vec<&'static str> = ShardKind::ALL.iter().map(|kind| kind.name()).collect();
        let codes: Vec<&'static str> = ErrorKind::ALL.iter().map(|kind| kind.name()).collect();
        let metrics = Self {
            requests: Requests::register(registry, "request", "kind", &kinds),
            error_codes: Pairs::new(("kind", "code"), &kinds, &codes),
            malformed: Counter::default(),
            batch_size: Histogram::sizes(),
            commit: Histogram::seconds(),
            journal: daemon::journal::JournalMetrics::new(),
            receive_batch: Histogram::sizes(),
        };
        registry.register(
            "request_error_codes",
            "error answers, by request kind and error code",
            metrics.error_codes.clone(),
        );
        registry.register("malformed_datagrams", "datagrams that did not decode", metrics.malformed.clone());
        registry.register("commit_batch_size", "mutations per write transaction", metrics.batch_size.clone());
        registry.register(
            "commit_duration_seconds",
            "apply and commit of one write transaction (not the time it was held open)",
            metrics.commit.clone(),
        );
        metrics.journal.register(registry);
        registry.register("receive_batch_size", "datagrams per batched receive", metrics.receive_batch.clone());
        registry.register(
            "store_checksum_mismatches",
            "stored records refused because their CRC32C did not match (answered STORAGE_ERROR)",
            daemon::metrics::ReadCounter(crate::store::checksum_mismatches),
        );
        metrics
    }

    /// Metrics registered nowhere (tests, and a daemon without `--metrics`
    /// still counts into these).
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    /// The index of a datagram kind byte among [`ShardKind::ALL`].
    pub fn kind_index(kind: u8) -> Option<usize> {
        ShardKind::ALL.iter().position(|k| *k as u8 == kind)
    }

    /// Counts one request of kind index `kind` arriving.
    pub fn arrived(&self, kind: usize) {
        self.requests.arrived(kind);
    }

    /// Records the answer `response` to a request of kind index `kind`,
    /// `elapsed` after it arrived.
    pub fn answered(&self, kind: usize, elapsed: Duration, response: &[u8]) {
        let code = response_error_code(response);
        self.requests.finished(kind, elapsed, code.is_none());
        if let Some(code) = code.and_then(ErrorKind::from_u16)
            && let Some(column) = ErrorKind::ALL.iter().position(|k| *k == code)
        {
            self.error_codes.inc(kind, column);
        }
    }
}
