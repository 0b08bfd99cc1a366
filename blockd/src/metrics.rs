//! Counters shared by every executor, and the Prometheus text endpoint.
//!
//! The counters are relaxed atomics: no lock on the request path, and a
//! scrape or a stats answer may be a few requests behind, which is fine for
//! both. `used_bytes`/`used_blocks` are the stats answer's counters: counted
//! once at start (a walk of the folder) and updated by every write and erase,
//! so a stats request never walks the tree.
//!
//! The endpoint serves one fixed `GET` on a plain thread with blocking
//! `std::net` sockets: it is off the request path, needs no executor, and an
//! HTTP crate would bring a runtime and far more than this one response
//! needs.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::request::Refusal;
use crate::store::Usage;

/// Request kinds, in the order of [`Counters::requests`].
pub const REQUEST_KINDS: [&str; 5] = ["write", "fetch", "crc", "erase", "stats"];

/// The longest HTTP request head the endpoint reads.
const HTTP_REQUEST_BYTES_MAX: usize = 4096;
/// A scraper that sends nothing for this long is dropped.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default, Debug)]
pub struct Counters {
    pub used_bytes: AtomicU64,
    pub used_blocks: AtomicU64,
    pub requests: [AtomicU64; REQUEST_KINDS.len()],
    pub refusals: [AtomicU64; Refusal::LABELS.len()],
    pub bytes_written: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub io_errors: AtomicU64,
    pub connections: AtomicU64,
    /// New connections refused because every open one was busy.
    pub connections_refused: AtomicU64,
    /// Waiting connections closed to make room for new ones.
    pub connections_shed: AtomicU64,
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

impl Counters {
    pub fn new(usage: Usage) -> Self {
        let counters = Self::default();
        counters.used_bytes.store(usage.used_bytes, Ordering::Relaxed);
        counters.used_blocks.store(usage.used_blocks, Ordering::Relaxed);
        counters
    }

    pub fn usage(&self) -> Usage {
        Usage {
            used_bytes: self.used_bytes.load(Ordering::Relaxed),
            used_blocks: self.used_blocks.load(Ordering::Relaxed),
        }
    }

    pub fn block_added(&self, size: u64) {
        add(&self.used_bytes, size);
        add(&self.used_blocks, 1);
    }

    pub fn block_removed(&self, size: u64) {
        // Saturating: a block counted at start and changed behind our back
        // must not wrap the gauge.
        let _ = self.used_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(size)));
        let _ = self.used_blocks.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
    }

    /// `kind` indexes [`REQUEST_KINDS`].
    pub fn request(&self, kind: usize) {
        if let Some(counter) = self.requests.get(kind) {
            add(counter, 1);
        }
    }

    pub fn refusal(&self, refusal: &Refusal) {
        if let Some(counter) = self.refusals.get(refusal.label_index()) {
            add(counter, 1);
        }
    }

    pub fn written(&self, bytes: u64) {
        add(&self.bytes_written, bytes);
    }

    pub fn fetched(&self, bytes: u64) {
        add(&self.bytes_fetched, bytes);
    }

    pub fn io_error(&self) {
        add(&self.io_errors, 1);
    }

    pub fn connection(&self) {
        add(&self.connections, 1);
    }

    pub fn connection_refused(&self) {
        add(&self.connections_refused, 1);
    }

    pub fn connection_shed(&self) {
        add(&self.connections_shed, 1);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        line("blockd_requests_total", "counter", "Requests received, by kind.");
        for (kind, counter) in REQUEST_KINDS.iter().zip(&self.requests) {
            let _ = writeln!(out, "blockd_requests_total{{kind=\"{kind}\"}} {}", load(counter));
        }
        let mut line = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        line("blockd_refusals_total", "counter", "Requests refused (connection closed), by reason.");
        for (reason, counter) in Refusal::LABELS.iter().zip(&self.refusals) {
            let _ = writeln!(out, "blockd_refusals_total{{reason=\"{reason}\"}} {}", load(counter));
        }
        let single = [
            ("blockd_written_bytes_total", "counter", "Payload bytes of acknowledged writes.", &self.bytes_written),
            ("blockd_fetched_bytes_total", "counter", "Block bytes sent by fetches.", &self.bytes_fetched),
            ("blockd_io_errors_total", "counter", "Disk or socket failures that ended a connection.", &self.io_errors),
            ("blockd_connections_total", "counter", "Connections accepted.", &self.connections),
            (
                "blockd_connections_refused_total",
                "counter",
                "New connections refused: every open one was busy.",
                &self.connections_refused,
            ),
            (
                "blockd_connections_shed_total",
                "counter",
                "Idle or header-incomplete connections closed to make room.",
                &self.connections_shed,
            ),
            ("blockd_used_bytes", "gauge", "Bytes of stored blocks.", &self.used_bytes),
            ("blockd_used_blocks", "gauge", "Stored blocks.", &self.used_blocks),
        ];
        for (name, kind, help, counter) in single {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", load(counter));
        }
        out
    }
}

/// Serves `GET /metrics` forever (call on its own thread).
pub fn serve(listener: TcpListener, counters: Arc<Counters>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, &counters) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(mut stream: TcpStream, counters: &Counters) -> io::Result<()> {
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut head = [0u8; HTTP_REQUEST_BYTES_MAX];
    let mut filled = 0;
    while !head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
        if filled == head.len() {
            return write_response(&mut stream, "431 Request Header Fields Too Large", "");
        }
        let n = stream.read(&mut head[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
    let request_line = head[..filled].split(|&b| b == b'\r').next().unwrap_or_default();
    if request_line.starts_with(b"GET /metrics ") || request_line.starts_with(b"GET / ") {
        write_response(&mut stream, "200 OK", &counters.render())
    } else {
        write_response(&mut stream, "404 Not Found", "try GET /metrics\n")
    }
}

fn write_response(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ids::BlockId;

    #[test]
    fn render_has_every_counter() {
        let counters = Counters::new(Usage { used_bytes: 10, used_blocks: 2 });
        counters.request(0);
        counters.refusal(&Refusal::CrcMismatch { block_id: BlockId::new(1), expected: 0, actual: 1 });
        counters.block_removed(4);
        let text = counters.render();
        assert!(text.contains("blockd_requests_total{kind=\"write\"} 1\n"), "{text}");
        assert!(text.contains("blockd_requests_total{kind=\"stats\"} 0\n"));
        assert!(text.contains("blockd_refusals_total{reason=\"crc_mismatch\"} 1\n"));
        assert!(text.contains("blockd_used_bytes 6\n"));
        assert!(text.contains("blockd_used_blocks 1\n"));
        counters.block_removed(100);
        counters.block_removed(100);
        assert_eq!(counters.usage(), Usage { used_bytes: 0, used_blocks: 0 });
    }
}
