//! The Prometheus `/metrics` endpoint every daemon serves (`--metrics
//! ADDR`), and the metric types the daemons update on their request paths.
//!
//! **Metrics.** Each daemon builds one [`Registry`] (prometheus-client) at
//! start, with its metrics under its own prefix (`blockd_`, `metad_`,
//! `cdcd_`, `shuckle_`, `gcd_`). The hot-path types here are relaxed
//! atomics with their label values fixed at start, so updating one takes no
//! lock and allocates nothing (prometheus-client's own `Family` takes a
//! lock per lookup and its `Histogram` a mutex per observation):
//!
//! - [`ByLabel`]: one metric per value of one label (a request kind, an
//!   HTTP route), chosen by index;
//! - [`Histogram`]: fixed buckets, atomic counts ([`Histogram::seconds`]
//!   for latencies, [`Histogram::sizes`] for batch sizes);
//! - [`Pairs`]: counters over two labels (request kind × error code), only
//!   the non-zero ones exported;
//! - [`Requests`]: requests, errors and a latency histogram per kind.
//!
//! Label values are the daemons' enums (request kinds, error codes, storage
//! classes), never ids or addresses from the network: the number of series
//! is fixed by the code.
//!
//! **Endpoint.** [`serve`] binds the address, prints `listening metrics
//! ADDR` and answers on a plain thread with blocking sockets, away from the
//! daemons' executors and runtimes. It answers `GET /metrics` (and `HEAD`)
//! with the OpenMetrics text of the registry; anything else gets 400, 404,
//! 405 or 431, never a crash. The request head is bounded
//! ([`METRICS_REQUEST_HEAD_BYTES_MAX`]) and so is the time to send it and
//! take the answer ([`METRICS_IO_TIMEOUT_NS`]); at most
//! [`METRICS_CONNECTIONS_MAX`] connections are served at once (more get
//! 503), so a slow client cannot stop the scrapes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use wire::datagram::{HEADER_BYTES, KIND_ERROR, KIND_PRIVILEGED};
use wire::limits::{METRICS_CONNECTIONS_MAX, METRICS_IO_TIMEOUT_NS, METRICS_REQUEST_HEAD_BYTES_MAX};

/// The crate itself, for collectors (one version for every daemon).
pub use prometheus_client;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;

use crate::announce::{self, Proto};
use crate::exit::{Failure, OrUsage};

/// Upper bounds of the latency buckets, in nanoseconds: 10 µs to 10 s,
/// 1–2.5–5 steps.
pub const LATENCY_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the batch-size buckets: 1 to 4096, powers of two.
pub const SIZE_BOUNDS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// A histogram with fixed buckets and atomic counts. Clones share the
/// counts (register one clone, keep the other).
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds, ascending, in observation units; `+Inf` is implicit.
    bounds: &'static [u64],
    /// Exported value of one observation unit (1e-9: nanoseconds as seconds).
    scale: f64,
    /// One count per bound, then the overflow.
    buckets: Box<[AtomicU64]>,
    /// Sum of the observations, in units (wraps after 584 years of seconds).
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64], scale: f64) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramInner { bounds, scale, buckets, sum: AtomicU64::new(0) }))
    }

    /// Durations, exported in seconds ([`LATENCY_BOUNDS_NS`]).
    pub fn seconds() -> Self {
        Self::new(&LATENCY_BOUNDS_NS, 1e-9)
    }

    /// Counts such as batch sizes ([`SIZE_BOUNDS`]).
    pub fn sizes() -> Self {
        Self::new(&SIZE_BOUNDS, 1.0)
    }

    /// Records one observation of `value` units.
    pub fn observe(&self, value: u64) {
        let inner = &*self.0;
        let index = inner.bounds.partition_point(|&bound| bound < value);
        if let Some(bucket) = inner.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        inner.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Records a duration (for [`Histogram::seconds`]).
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .map(|&bound| bound as f64 * inner.scale)
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = inner.sum.load(Ordering::Relaxed) as f64 * inner.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One metric per value of one label, fixed at start and chosen by index.
#[derive(Clone, Debug)]
pub struct ByLabel<M> {
    key: &'static str,
    values: Arc<[&'static str]>,
    metrics: Arc<[M]>,
}

impl<M> ByLabel<M> {
    /// `key="value"` for each of `values`, each metric made by `make`.
    pub fn new(key: &'static str, values: &[&'static str], make: impl Fn() -> M) -> Self {
        Self { key, values: values.into(), metrics: values.iter().map(|_| make()).collect() }
    }

    /// The metric of the `index`th value (`None` past the end).
    pub fn get(&self, index: usize) -> Option<&M> {
        self.metrics.get(index)
    }

    /// The index of `value`.
    pub fn index_of(&self, value: &str) -> Option<usize> {
        self.values.iter().position(|v| *v == value)
    }
}

impl<M: TypedMetric> TypedMetric for ByLabel<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for ByLabel<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, metric) in self.values.iter().zip(self.metrics.iter()) {
            let labels = [(self.key, *value)];
            metric.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// Counters over two labels (e.g. request kind × error code). Every pair
/// has its atomic from the start; only pairs that counted are exported.
#[derive(Clone, Debug)]
pub struct Pairs {
    keys: (&'static str, &'static str),
    rows: Arc<[&'static str]>,
    columns: Arc<[&'static str]>,
    counts: Arc<[AtomicU64]>,
}

impl Pairs {
    pub fn new(keys: (&'static str, &'static str), rows: &[&'static str], columns: &[&'static str]) -> Self {
        let counts = (0..rows.len() * columns.len()).map(|_| AtomicU64::new(0)).collect();
        Self { keys, rows: rows.into(), columns: columns.into(), counts }
    }

    /// Counts one at (`row`, `column`); out-of-range indexes are ignored.
    pub fn inc(&self, row: usize, column: usize) {
        if row < self.rows.len()
            && column < self.columns.len()
            && let Some(count) = self.counts.get(row * self.columns.len() + column)
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count at (`row`, `column`).
    pub fn get(&self, row: usize, column: usize) -> u64 {
        if row >= self.rows.len() || column >= self.columns.len() {
            return 0;
        }
        self.counts.get(row * self.columns.len() + column).map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

/// A counter kept elsewhere (a process-wide atomic of another crate), read
/// when scraped: `ReadCounter(store::checksum_mismatches)`.
#[derive(Clone, Copy)]
pub struct ReadCounter(pub fn() -> u64);

impl std::fmt::Debug for ReadCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadCounter({})", (self.0)())
    }
}

impl TypedMetric for ReadCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ReadCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&(self.0)(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl TypedMetric for Pairs {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Pairs {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (r, row) in self.rows.iter().enumerate() {
            for (c, column) in self.columns.iter().enumerate() {
                let value = self.get(r, c);
                if value == 0 {
                    continue;
                }
                let labels = [(self.keys.0, *row), (self.keys.1, *column)];
                encoder.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Requests, failed requests and latency per kind: `NAMEs_total{LABEL}`,
/// `NAME_errors_total{LABEL}`, `NAME_duration_seconds{LABEL}`.
#[derive(Clone, Debug)]
pub struct Requests {
    pub total: ByLabel<Counter>,
    pub errors: ByLabel<Counter>,
    pub duration: ByLabel<Histogram>,
}

impl Requests {
    /// Registers the three families in `registry` (whose prefix they get).
    /// `name` is singular (`request`, `http_request`), `label` the label
    /// key (`kind`, `route`), `values` its values in index order.
    pub fn register(registry: &mut Registry, name: &str, label: &'static str, values: &[&'static str]) -> Self {
        let this = Self {
            total: ByLabel::new(label, values, Counter::default),
            errors: ByLabel::new(label, values, Counter::default),
            duration: ByLabel::new(label, values, Histogram::seconds),
        };
        registry.register(format!("{name}s"), format!("{name}s received, by {label}"), this.total.clone());
        registry.register(
            format!("{name}_errors"),
            format!("{name}s answered with an error or refused, by {label}"),
            this.errors.clone(),
        );
        registry.register(
            format!("{name}_duration_seconds"),
            format!("time from a {name}'s arrival to its answer, by {label}"),
            this.duration.clone(),
        );
        this
    }

    /// Counts one request of the `kind`th value.
    pub fn arrived(&self, kind: usize) {
        if let Some(counter) = self.total.get(kind) {
            counter.inc();
        }
    }

    /// Records the end of one request of the `kind`th value.
    pub fn finished(&self, kind: usize, elapsed: Duration, ok: bool) {
        if let Some(histogram) = self.duration.get(kind) {
            histogram.observe_duration(elapsed);
        }
        if !ok && let Some(counter) = self.errors.get(kind) {
            counter.inc();
        }
    }

    /// [`Requests::arrived`] and [`Requests::finished`] at once.
    pub fn observe(&self, kind: usize, elapsed: Duration, ok: bool) {
        self.arrived(kind);
        self.finished(kind, elapsed, ok);
    }
}

/// The error code of an encoded datagram response, if it is an error
/// response (kind 0x00 or 0x80, the code in the two bytes after the
/// header). `None` for a success, or bytes too short to tell.
pub fn response_error_code(response: &[u8]) -> Option<u16> {
    let kind = *response.get(HEADER_BYTES - 1)?;
    if kind & !KIND_PRIVILEGED != KIND_ERROR {
        return None;
    }
    let code = response.get(HEADER_BYTES..HEADER_BYTES + 2)?;
    Some(u16::from_le_bytes([code[0], code[1]]))
}

/// The OpenMetrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 << 10);
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    text
}

/// Binds `address`, prints `listening metrics ADDR` and serves `registry`
/// on its own thread for the life of the process. A bind failure is a usage
/// failure (exit 2) naming `--metrics`. Returns the bound address.
pub fn serve(address: SocketAddr, registry: Registry, process: &str) -> Result<SocketAddr, Failure> {
    let listener =
        TcpListener::bind(address).with_context(|| format!("--metrics {address}: cannot bind")).or_usage()?;
    let bound = listener.local_addr()?;
    announce::listening(Proto::Metrics, bound)?;
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name(format!("{process}-metrics"))
        .spawn(move || accept_forever(&listener, &registry))?;
    Ok(bound)
}

/// Connections being answered (at most [`METRICS_CONNECTIONS_MAX`]).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

fn accept_forever(listener: &TcpListener, registry: &Arc<Registry>) {
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // Usually out of descriptors: back off instead of spinning.
                tracing::warn!(%error, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if ACTIVE.fetch_add(1, Ordering::AcqRel) >= METRICS_CONNECTIONS_MAX {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = respond(&mut stream, "503 Service Unavailable", "too many metrics connections\n", false);
            continue;
        }
        let registry = registry.clone();
        let spawned = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || {
            if let Err(error) = answer(stream, &registry) {
                tracing::debug!(%error, "metrics request failed");
            }
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(error) = spawned {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%error, "cannot start a metrics connection thread");
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    BadRequest,
}

/// Reads one bounded request head and answers it.
fn answer(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    let timeout = Duration::from_nanos(METRICS_IO_TIMEOUT_NS);
    let deadline = Instant::now() + timeout;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = vec![0u8; METRICS_REQUEST_HEAD_BYTES_MAX];
    let mut filled = 0;
    let end = loop {
        if let Some(end) = head_end(&head[..filled]) {
            break end;
        }
        if filled == head.len() {
            return respond(&mut stream, "431 Request Header Fields Too Large", "request head too long\n", false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(&mut stream, "408 Request Timeout", "request head too slow\n", false);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut head[filled..]) {
            Ok(n) => n,
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return respond(&mut stream, "408 Request Timeout", "request head too slow\n", false);
            }
            Err(error) => return Err(error),
        };
        if n == 0 {
            // Closed before a whole head: nobody to answer.
            return Ok(());
        }
        filled += n;
    };
    match parse_head(&head[..end]) {
        Asked::Metrics { head_only } => respond(&mut stream, "200 OK", &render(registry), head_only),
        Asked::NotFound => respond(&mut stream, "404 Not Found", "only /metrics is served\n", false),
        Asked::BadMethod => respond(&mut stream, "405 Method Not Allowed", "only GET and HEAD\n", false),
        Asked::BadRequest => respond(&mut stream, "400 Bad Request", "not an HTTP/1 request\n", false),
    }
}

/// The length of the head (through its blank line), once it is complete.
fn head_end(bytes: &[u8]) -> Option<usize> {
    if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(at + 4);
    }
    bytes.windows(2).position(|w| w == b"\n\n").map(|at| at + 2)
}

fn parse_head(head: &[u8]) -> Asked {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else { return Asked::BadRequest };
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (words.next(), words.next(), words.next(), words.next())
    else {
        return Asked::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Asked::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Asked::BadMethod,
    };
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" { Asked::Metrics { head_only } } else { Asked::NotFound }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str, head_only: bool) -> io::Result<()> {
    let content_type = if status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()?;
    // Let the client read everything before the close (unread request
    // bytes would otherwise turn the close into a reset).
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 512];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_classified() {
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Asked::Metrics { head_only: false });
        assert_eq!(parse_head(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"), Asked::Metrics { head_only: true });
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), Asked::BadMethod);
        assert_eq!(parse_head(b"\x16\x03\x01garbage\r\n\r\n"), Asked::BadRequest);
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), Asked::BadRequest);
        assert_eq!(parse_head(b"GET /metrics SPDY/3\r\n\r\n"), Asked::BadRequest);
        assert_eq!(parse_head(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Asked::BadRequest);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
    }

    #[test]
    fn histograms_bucket_and_encode() {
        let histogram = Histogram::seconds();
        histogram.observe_duration(Duration::from_micros(5));
        histogram.observe_duration(Duration::from_micros(10));
        histogram.observe_duration(Duration::from_secs(100));
        assert_eq!(histogram.count(), 3);
        let mut registry = Registry::with_prefix("t");
        registry.register("latency_seconds", "test", histogram.clone());
        let text = render(&registry);
        assert!(text.contains("t_latency_seconds_bucket{le=\"0.00001\"} 2\n"), "{text}");
        assert!(text.contains("t_latency_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("t_latency_seconds_count 3\n"), "{text}");
    }

    #[test]
    fn requests_and_pairs_encode_by_label() {
        let mut registry = Registry::with_prefix("t");
        let requests = Requests::register(&mut registry, "request", "kind", &["read", "write"]);
        let errors = Pairs::new(("kind", "code"), &["read", "write"], &["A", "B"]);
        registry.register("request_error_codes", "test", errors.clone());
        requests.observe(1, Duration::from_millis(1), false);
        requests.observe(7, Duration::from_millis(1), false);
        errors.inc(1, 0);
        errors.inc(2, 0);
        let text = render(&registry);
        assert!(text.contains("t_requests_total{kind=\"write\"} 1\n"), "{text}");
        assert!(text.contains("t_requests_total{kind=\"read\"} 0\n"), "{text}");
        assert!(text.contains("t_request_errors_total{kind=\"write\"} 1\n"), "{text}");
        assert!(text.contains("t_request_duration_seconds_count{kind=\"write\"} 1\n"), "{text}");
        assert!(text.contains("t_request_error_codes_total{kind=\"write\",code=\"A\"} 1\n"), "{text}");
        assert!(!text.contains("code=\"B\""), "zero pairs are left out: {text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn error_codes_are_read_from_responses() {
        let mut response = [0u8; HEADER_BYTES + 4];
        response[HEADER_BYTES - 1] = KIND_PRIVILEGED;
        response[HEADER_BYTES] = 9;
        assert_eq!(response_error_code(&response), Some(9));
        response[HEADER_BYTES - 1] = 3;
        assert_eq!(response_error_code(&response), None);
        assert_eq!(response_error_code(&response[..3]), None);
    }
}
