//! Shuckle's metrics (prefix `shuckle_`), served by `daemon::metrics`:
//!
//! - `requests_total{kind}`, `request_errors_total{kind}`,
//!   `request_duration_seconds{kind}` per UDP request kind
//!   ([`ShuckleKind`] names, and `Registration` for block services'
//!   registrations); errors are error answers and dropped datagrams;
//! - `malformed_datagrams_total`;
//! - `http_requests_total{route}`, `http_request_errors_total{route}`
//!   (4xx and 5xx answers), `http_request_duration_seconds{route}` per
//!   HTTP route (the route's pattern, parameters as `:id` and `*path`,
//!   `unmatched` for any other path);
//! - shuckle's view of the block services, read from the registry at each
//!   scrape: `block_services{status,stale}` (how many), and
//!   `block_services_free_bytes{storage_class}` /
//!   `block_services_used_bytes{storage_class}` (of those not terminal).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use daemon::metrics::prometheus_client::collector::Collector;
use daemon::metrics::prometheus_client::encoding::DescriptorEncoder;
use daemon::metrics::prometheus_client::metrics::MetricType;
use daemon::metrics::{Counter, Registry, Requests, response_error_code};
use wire::EggsTime;
use wire::datagram::{SHUCKLE_MAGIC, peek_header};
use wire::shuckle::{ShuckleKind, is_registration};

use crate::registry::Status;
use crate::service::{DatagramOutcome, Shuckle};

/// The HTTP routes, as registered in [`crate::http::router`] and
/// [`crate::browse::routes`]; the last value is for everything else.
const HTTP_PATTERNS: [&str; 12] = [
    "/",
    "/api/block_services",
    "/api/shards",
    "/api/cdc",
    "/api/block_services/{id}/{action}",
    "/browse",
    "/browse/",
    "/browse/{*path}",
    "/download/{*path}",
    "/eden",
    "/api/capacity",
    "unmatched",
];

/// The `route` label of each of [`HTTP_PATTERNS`]: the same with `:name`
/// and `*name` for the parameters (braces in label values trip up some
/// text parsers).
pub const HTTP_ROUTES: [&str; 12] = [
    "/",
    "/api/block_services",
    "/api/shards",
    "/api/cdc",
    "/api/block_services/:id/:action",
    "/browse",
    "/browse/",
    "/browse/*path",
    "/download/*path",
    "/eden",
    "/api/capacity",
    "unmatched",
];

/// The label value of registrations.
const REGISTRATION: &str = "Registration";

#[derive(Clone, Debug)]
pub struct Metrics {
    pub udp: Requests,
    pub malformed: Counter,
    pub http: Requests,
}

impl Metrics {
    /// The metrics, registered in `registry` under `shuckle_`, with the
    /// block service view of `shuckle`.
    pub fn new(registry: &mut Registry, shuckle: Arc<Shuckle>) -> Self {
        let registry = registry.sub_registry_with_prefix("shuckle");
        let metrics = Self::register(registry);
        registry.register_collector(Box::new(BlockServiceView { shuckle }));
        registry.register(
            "store_checksum_mismatches",
            "stored records refused at load because their CRC32C did not match",
            daemon::metrics::ReadCounter(crate::store::checksum_mismatches),
        );
        metrics
    }

    /// Metrics registered nowhere (a shuckle without `--metrics`).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    fn register(registry: &mut Registry) -> Self {
        let kinds: Vec<&'static str> =
            ShuckleKind::ALL.iter().map(|kind| kind.name()).chain(std::iter::once(REGISTRATION)).collect();
        let metrics = Self {
            udp: Requests::register(registry, "request", "kind", &kinds),
            malformed: Counter::default(),
            http: Requests::register(registry, "http_request", "route", &HTTP_ROUTES),
        };
        registry.register("malformed_datagrams", "UDP datagrams that did not decode", metrics.malformed.clone());
        metrics
    }

    /// Records one datagram handled in `elapsed`, with its outcome and the
    /// reply bytes (if any).
    pub fn datagram(&self, bytes: &[u8], elapsed: Duration, outcome: &DatagramOutcome, reply: &[u8]) {
        let index = if is_registration(bytes) {
            ShuckleKind::ALL.len()
        } else {
            match peek_header(bytes, SHUCKLE_MAGIC).ok().and_then(|header| ShuckleKind::from_u8(header.kind)) {
                Some(kind) => ShuckleKind::ALL.iter().position(|k| *k == kind).unwrap_or(usize::MAX),
                None => {
                    self.malformed.inc();
                    return;
                }
            }
        };
        let ok = match outcome {
            DatagramOutcome::Reply(_) => response_error_code(reply).is_none(),
            DatagramOutcome::Check(_) => true,
            // A registration with nothing new is ignored as it should be.
            DatagramOutcome::Ignore => index == ShuckleKind::ALL.len(),
        };
        self.udp.observe(index, elapsed, ok);
    }

    /// The axum middleware counting every HTTP request by route.
    pub async fn http_layer(self, request: Request, next: Next) -> Response {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|path| HTTP_PATTERNS.iter().position(|pattern| *pattern == path.as_str()))
            .unwrap_or(HTTP_ROUTES.len() - 1);
        let started = Instant::now();
        let response = next.run(request).await;
        let status = response.status();
        self.http.observe(route, started.elapsed(), !(status.is_client_error() || status.is_server_error()));
        response
    }
}

/// Gauges computed from the registry at each scrape.
struct BlockServiceView {
    shuckle: Arc<Shuckle>,
}

impl std::fmt::Debug for BlockServiceView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockServiceView")
    }
}

/// Storage class label values ("0" to "255"), without allocation per scrape.
fn class_label(class: u8) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LABELS.get_or_init(|| (0..=u8::MAX).map(|class| class.to_string()).collect())[usize::from(class)].as_str()
}

impl Collector for BlockServiceView {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = EggsTime::now();
        let mut counts: BTreeMap<(&'static str, bool), u64> = BTreeMap::new();
        for status in [Status::Ok, Status::Drain, Status::Terminal] {
            for stale in [false, true] {
                counts.insert((status.name(), stale), 0);
            }
        }
        let mut space: BTreeMap<u8, (u64, u64)> = BTreeMap::new();
        {
            let registry = self.shuckle.registry();
            for record in registry.block_services_from(wire::BlockServiceId::new(0)) {
                let stale = registry.is_stale(record, now);
                *counts.entry((record.status.name(), stale)).or_default() += 1;
                if record.status != Status::Terminal {
                    let entry = space.entry(record.storage_class).or_default();
                    entry.0 = entry.0.saturating_add(record.free_bytes);
                    entry.1 = entry.1.saturating_add(record.used_bytes);
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "block_services",
            "block services known, by operator status and staleness (no good check lately)",
            None,
            MetricType::Gauge,
        )?;
        for ((status, stale), count) in &counts {
            let labels = [("status", *status), ("stale", if *stale { "true" } else { "false" })];
            family.encode_family(&labels)?.encode_gauge(count)?;
        }
        let mut free = encoder.encode_descriptor(
            "block_services_free_bytes",
            "free bytes of the block services not terminal, by storage class",
            None,
            MetricType::Gauge,
        )?;
        for (class, (free_bytes, _)) in &space {
            free.encode_family(&[("storage_class", class_label(*class))])?.encode_gauge(free_bytes)?;
        }
        let mut used = encoder.encode_descriptor(
            "block_services_used_bytes",
            "used bytes of the block services not terminal, by storage class",
            None,
            MetricType::Gauge,
        )?;
        for (class, (_, used_bytes)) in &space {
            used.encode_family(&[("storage_class", class_label(*class))])?.encode_gauge(used_bytes)?;
        }
        Ok(())
    }
}
