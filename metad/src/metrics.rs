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
//!   journal: `crate::server`'s writer); `applied_on_receive_total`
//!   (mutations applied and committed by the I/O thread that received
//!   them, the writer being idle: `crate::server`'s `apply_now`);
//! - the journal (`daemon::journal`): `journal_syncs_total`,
//!   `journal_bytes_total`, `journal_records_per_sync` (write transactions
//!   made durable by one fdatasync), `journal_sync_duration_seconds`,
//!   `journal_checkpoint_duration_seconds` (its count: checkpoints taken);
//! - `receive_batch_size`: datagrams per batched receive of an I/O thread
//!   (1 while the server keeps up; more once datagrams queue);
//!   `io_parked_total` (an I/O thread parked instead of waiting on the
//!   socket beside another, while only mutations arrive) and
//!   `io_recalled_total` (parked I/O threads called back by a read):
//!   `crate::server`'s `Receivers`;
//! - where a mutation's time goes from its arrival to its durable answer
//!   (issue 12), one observation per mutation: `stage_queue_seconds` (the
//!   I/O thread's receive to the writer taking it), `stage_apply_seconds`
//!   (to the end of applying the batch it came in), `stage_hold_seconds`
//!   (held in the open transaction until the commit starts),
//!   `stage_commit_seconds` (the commit starting to its record handed to
//!   the journal: since session 14 the record goes first and LMDB's
//!   commit runs while the journal syncs, so this is the answers' making,
//!   about zero), `stage_journal_seconds` (from
//!   there to the journal's hand-off of
//!   its answer, the overlapped commit included; the journal's own `journal_take_wait_seconds`,
//!   `journal_lane_wait_seconds`, `journal_sync_duration_seconds` and
//!   `journal_deliver_wait_seconds` split it), and per delivery
//!   `stage_reply_seconds` (sending a delivery's answers). `perf`'s
//!   `shard_load` example prints their means.
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
    pub applied_on_receive: Counter,
    pub journal: daemon::journal::JournalMetrics,
    pub receive_batch: Histogram,
    pub io_parked: Counter,
    pub io_recalled: Counter,
    pub stages: Stages,
}

/// Where a mutation's time goes (see the module doc).
#[derive(Clone, Debug)]
pub struct Stages {
    pub queue: Histogram,
    pub apply: Histogram,
    pub hold: Histogram,
    pub commit: Histogram,
    pub journal: Histogram,
    pub reply: Histogram,
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
            applied_on_receive: Counter::default(),
            journal: daemon::journal::JournalMetrics::new(),
            receive_batch: Histogram::sizes(),
            io_parked: Counter::default(),
            io_recalled: Counter::default(),
            stages: Stages {
                queue: Histogram::seconds(),
                apply: Histogram::seconds(),
                hold: Histogram::seconds(),
                commit: Histogram::seconds(),
                journal: Histogram::seconds(),
                reply: Histogram::seconds(),
            },
        };
        registry.register(
            "request_error_codes",
            "error answers, by request kind and error code",
            metrics.error_codes.clone(),
        );
        registry.register("malformed_datagrams", "datagrams that did not decode", metrics.malformed.clone());
        registry.register("commit_batch_size", "mutations per write transaction", metrics.batch_size.clone());
        registry.register(
            "applied_on_receive",
            "mutations applied and committed by the I/O thread that received them (the writer idle)",
            metrics.applied_on_receive.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "apply and commit of one write transaction (not the time it was held open)",
            metrics.commit.clone(),
        );
        metrics.journal.register(registry);
        registry.register("receive_batch_size", "datagrams per batched receive", metrics.receive_batch.clone());
        registry.register(
            "io_parked",
            "an I/O thread parked instead of waiting on the socket beside another (mutations only)",
            metrics.io_parked.clone(),
        );
        registry.register("io_recalled", "parked I/O threads called back by a read", metrics.io_recalled.clone());
        let stages = &metrics.stages;
        for (name, help, histogram) in [
            ("stage_queue_seconds", "a mutation's receive to the writer taking it", &stages.queue),
            ("stage_apply_seconds", "the writer taking a mutation to its batch applied", &stages.apply),
            ("stage_hold_seconds", "a mutation applied to its transaction's commit starting", &stages.hold),
            (
                "stage_commit_seconds",
                "a mutation's commit starting to its record handed to the journal (LMDB's commit runs after, during the sync)",
                &stages.commit,
            ),
            (
                "stage_journal_seconds",
                "a mutation's record handed to the journal to the journal handing its answer over (the commit overlapped)",
                &stages.journal,
            ),
            ("stage_reply_seconds", "sending one delivery's answers", &stages.reply),
        ] {
            registry.register(name, help, histogram.clone());
        }
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
