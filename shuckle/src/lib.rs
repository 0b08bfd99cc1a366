//! `shuckle`: the registry of eggsfs (DESIGN.md §7).
//!
//! Shuckle knows every block service ever seen (its key, address, storage
//! class, host, operator status, last good check, space and block counts),
//! the shards' and the CDC's addresses, and keeps all of it in LMDB.
//!
//! - [`registry`]: what shuckle knows and the rules for changing it — plain
//!   code over inputs and the current time (staleness, drain / resume /
//!   terminate, which check results count);
//! - [`weights`]: write weights by water-filling;
//! - [`store`]: the LMDB store (the cluster key file is loaded with
//!   `daemon::keyfile`);
//! - [`service`]: the state and what each UDP datagram does (registrations,
//!   paginated listings, privileged requests MAC'd with the cluster key);
//! - [`checker`]: the TCP stats checks (at once for new or changed
//!   registrations, round-robin for all);
//! - [`http`]: the JSON API and the web UI (`ui/index.html`, embedded);
//!   operator actions need the operator token (`operator.token`, created
//!   0600 at first start) and a same-site JSON request;
//! - [`metrics`]: UDP and HTTP requests per kind and route, and the block
//!   services' states and space, for `--metrics ADDR`;
//! - [`browse`]: the web UI's file browser, eden files and per-disk
//!   capacity (shuckle acting as a client through the `client` library).
//!
//! `main.rs` only parses flags, binds sockets and calls [`serve`].

pub mod browse;
pub mod checker;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod service;
pub mod store;
pub mod weights;

use std::sync::Arc;
use std::time::Duration;

use daemon::keyfile::OperatorToken;
use tokio::net::{TcpListener, UdpSocket};
use wire::EggsTime;
use wire::limits::UDP_DATAGRAM_BYTES_MAX;

use crate::checker::Checker;
use crate::metrics::Metrics;
use crate::service::{DatagramOutcome, Shuckle};

/// How the background work is paced.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Each known service is checked about once per this period.
    pub check_period: Duration,
    /// A check without a full answer in this time failed.
    pub check_timeout: Duration,
}

/// Serves datagrams on `udp` and HTTP on `http` until an I/O error.
/// Requests are counted into `metrics`.
/// Operator actions over HTTP need `operator`'s token ([`http`]).
pub async fn serve(
    shuckle: Arc<Shuckle>,
    udp: UdpSocket,
    http: TcpListener,
    timing: Timing,
    metrics: Metrics,
    operator: OperatorToken,
) -> std::io::Result<()> {
    let checker = Checker::new(Arc::clone(&shuckle), timing.check_timeout);
    tokio::spawn(Arc::clone(&checker).round_robin(timing.check_period));
    let layer = metrics.clone();
    let app = http::router(Arc::clone(&shuckle), operator)
        .layer(axum::middleware::from_fn(move |request, next| layer.clone().http_layer(request, next)));
    let http_server = tokio::spawn(async move { axum::serve(http, app).await });
    tokio::select! {
        result = serve_udp(&shuckle, &checker, udp, &metrics) => result,
        result = http_server => result.map_err(std::io::Error::other)?,
    }
}

async fn serve_udp(
    shuckle: &Shuckle,
    checker: &Arc<Checker>,
    udp: UdpSocket,
    metrics: &Metrics,
) -> std::io::Result<()> {
    // One byte more than the limit, so an oversized datagram is seen as
    // such (and refused by the decoders) rather than silently cut to fit.
    let mut input = [0u8; UDP_DATAGRAM_BYTES_MAX + 1];
    let mut output = [0u8; UDP_DATAGRAM_BYTES_MAX];
    loop {
        let (len, source) = match udp.recv_from(&mut input).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors from earlier sends surface here; not fatal.
                tracing::debug!(%error, "udp receive failed");
                continue;
            }
        };
        let Some(bytes) = input.get(..len) else { continue };
        let started = std::time::Instant::now();
        let outcome = shuckle.handle_datagram(bytes, source, EggsTime::now(), &mut output);
        let reply = match outcome {
            DatagramOutcome::Reply(len) => output.get(..len).unwrap_or_default(),
            _ => &[],
        };
        metrics.datagram(bytes, started.elapsed(), &outcome, reply);
        match outcome {
            DatagramOutcome::Reply(len) => {
                if let Some(reply) = output.get(..len)
                    && let Err(error) = udp.send_to(reply, source).await
                {
                    tracing::debug!(%error, %source, "cannot send a reply");
                }
            }
            DatagramOutcome::Check(target) => checker.spawn(target),
            DatagramOutcome::Ignore => {}
        }
    }
}
