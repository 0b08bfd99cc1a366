//! Finding the cluster: shuckle's address from `--shuckle HOST:PORT` or
//! `EGGS_SHUCKLE` (host names resolved), else 127.0.0.1:5000; then the
//! shards' and the CDC's addresses from shuckle.
//!
//! Unlike [`client::client::discover`] (which `local-cluster` uses, and
//! which falls back to the default local ports), the CLI never guesses: if
//! shuckle does not answer within [`SHUCKLE_DEADLINE`] the command fails
//! naming shuckle and the address tried, with a hint; a shard or CDC that
//! shuckle does not know is an error when it is needed, not a default port.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail};
use client::Client;

use super::errors::Detailed;
use client::client::{Addresses, DiscoveryError, ask_shuckle, default_shuckle};
use client::udp::{ClientOptions, DatagramClient, RequestError, RetryPolicy};
use wire::limits::SHARD_COUNT;

/// How long shuckle has to answer: a missing shuckle is reported within 3 s.
pub const SHUCKLE_DEADLINE: Duration = Duration::from_millis(2500);

/// What the user should try when shuckle is not there.
pub const HINT: &str = "is a cluster running? set --shuckle or EGGS_SHUCKLE";

/// An address no daemon listens on (port 0 of the discard address), for
/// shards and a CDC shuckle does not know: requests to it fail at once.
fn unknown_address() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Shuckle's address as the user gave it (text) and resolved.
pub fn shuckle_address(given: Option<&str>) -> anyhow::Result<(String, SocketAddr)> {
    let Some(text) = given else {
        let addr = default_shuckle();
        return Ok((addr.to_string(), addr));
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((text.to_owned(), addr));
    }
    if !text.contains(':') {
        bail!("shuckle address `{text}` needs a port (HOST:PORT)");
    }
    let all: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|error| anyhow!("cannot resolve shuckle address `{text}`: {error} ({HINT})"))?
        .collect();
    // Prefer IPv4 like the daemons, which listen on IPv4.
    let addr = all
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| anyhow!("shuckle address `{text}` resolves to nothing ({HINT})"))?;
    Ok((text.to_owned(), addr))
}

/// Asks shuckle where everything is; fails fast if it does not answer.
pub async fn connect(text: &str, shuckle: SocketAddr) -> anyhow::Result<Client> {
    let udp = DatagramClient::bind_any(ClientOptions::default())?;
    let probe = RetryPolicy {
        timeout_initial: Duration::from_millis(100),
        timeout_max: Duration::from_millis(500),
        deadline: SHUCKLE_DEADLINE,
    };
    let shown = if text == shuckle.to_string() { text.to_owned() } else { format!("{text} ({shuckle})") };
    let unreachable = |error: &dyn std::fmt::Display| -> anyhow::Error {
        Detailed {
            words: format!(
                "cannot reach shuckle at {shown}: no answer within {} s ({HINT})",
                SHUCKLE_DEADLINE.as_secs_f64()
            ),
            detail: error.to_string(),
        }
        .into()
    };
    let mut addresses = Addresses { shuckle, shards: vec![unknown_address(); SHARD_COUNT], cdc: unknown_address() };
    match ask_shuckle(&udp, shuckle, probe, &mut addresses).await {
        Ok(()) => {}
        // An answer that does not decode is shuckle's fault, not its absence.
        Err(DiscoveryError::Request(error @ RequestError::Decode { .. })) => return Err(error.into()),
        Err(DiscoveryError::Request(error)) => return Err(unreachable(&error)),
        Err(DiscoveryError::Unexpected(asked)) => bail!("shuckle at {shown} answered {asked} with something else"),
    }
    tracing::debug!(?addresses, "discovered");
    Ok(Client::with_addresses(udp, addresses))
}

/// True for an address [`connect`] uses for a daemon shuckle does not know.
pub fn is_unknown(addr: SocketAddr) -> bool {
    addr == unknown_address()
}
