//! The CDC's metrics (prefix `cdcd_`), served by `daemon::metrics`:
//!
//! - `requests_total{kind}`, `request_errors_total{kind}`,
//!   `request_duration_seconds{kind}` per CDC request kind (errors: any
//!   status but OK, and refusals; duration: from arrival to the answer);
//! - `request_statuses_total{kind,status}`: answers by kind and status;
//! - `transactions_in_flight`: transactions running or waiting for locks;
//! - the group commit: `commit_batch_size` (records per commit),
//!   `commit_duration_seconds`, `commit_failures_total`;
//! - the store's journal (`daemon::journal::JournalMetrics`, registered by
//!   `main.rs`): `journal_syncs_total`, `journal_bytes_total`,
//!   `journal_records_per_sync`, `journal_sync_duration_seconds`,
//!   `journal_checkpoint_duration_seconds`.
//!
//! Labels are [`CdcKind`] and [`CdcStatus`] names. Every update is a
//! relaxed atomic.

use std::time::Duration;

use daemon::metrics::{Gauge, Pairs, Registry, Requests};
use wire::cdc::{CdcKind, CdcStatus};

use crate::commit::CommitStats;

/// Every status, in the order of the `status` label.
const STATUSES: [CdcStatus; 10] = CdcStatus::ALL;

#[derive(Clone, Debug)]
pub struct Metrics {
    pub requests: Requests,
    pub statuses: Pairs,
    pub in_flight: Gauge,
}

impl Metrics {
    /// The metrics, registered in `registry` under `cdcd_`, with the group
    /// commit's `stats`.
    pub fn new(registry: &mut Registry, stats: &CommitStats) -> Self {
        let registry = registry.sub_registry_with_prefix("cdcd");
        let kinds: Vec<&'static str> = CdcKind::ALL.iter().map(|kind| kind.name()).collect();
        let statuses: Vec<&'static str> = STATUSES.iter().map(|status| status.name()).collect();
        let metrics = Self {
            requests: Requests::register(registry, "request", "kind", &kinds),
            statuses: Pairs::new(("kind", "status"), &kinds, &statuses),
            in_flight: Gauge::default(),
        };
        registry.register("request_statuses", "answers, by request kind and status", metrics.statuses.clone());
        registry.register(
            "transactions_in_flight",
            "transactions running or waiting for locks",
            metrics.in_flight.clone(),
        );
        registry.register("commit_batch_size", "transaction records per commit", stats.batch_size.clone());
        registry.register(
            "commit_duration_seconds",
            "one group commit (LMDB's; the journal's sync is journal_sync_duration_seconds)",
            stats.duration.clone(),
        );
        registry.register("commit_failures", "failed commits (retried)", stats.failures.clone());
        metrics
    }

    /// Metrics registered nowhere (tests and the simulation).
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default(), &CommitStats::default())
    }

    fn kind_index(kind: CdcKind) -> usize {
        CdcKind::ALL.iter().position(|k| *k == kind).unwrap_or(usize::MAX)
    }

    /// Counts one request of `kind` arriving.
    pub fn arrived(&self, kind: CdcKind) {
        self.requests.arrived(Self::kind_index(kind));
    }

    /// Records the answer to a request of `kind`: `status`, or `None` for a
    /// refusal without a status (storage error, too busy).
    pub fn answered(&self, kind: CdcKind, elapsed: Duration, status: Option<CdcStatus>) {
        let index = Self::kind_index(kind);
        self.requests.finished(index, elapsed, status == Some(CdcStatus::Ok));
        if let Some(column) = status.and_then(|status| STATUSES.iter().position(|s| *s == status)) {
            self.statuses.inc(index, column);
        }
    }
}
