//! The lines a daemon prints on stdout, and nothing else goes there
//! (ARCHITECTURE.md, "Addresses"): one `listening <proto> <ip:port>` per
//! socket once it is bound, then `ready` when the daemon serves. Tests and
//! `eggs local-cluster` read them to learn the ports chosen at run time.
//! Each line is flushed at once: the reader may be a pipe.

use std::io::Write;
use std::net::SocketAddr;

/// What a `listening` line's socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Block service traffic.
    Tcp,
    /// Datagram requests (shards, CDC, shuckle).
    Udp,
    /// Shuckle's web UI and JSON API.
    Http,
    /// The Prometheus `/metrics` endpoint (HTTP).
    Metrics,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Http => "http",
            Proto::Metrics => "metrics",
        }
    }
}

/// Prints `listening <proto> <address>`.
pub fn listening(proto: Proto, address: SocketAddr) -> std::io::Result<()> {
    line(&format!("listening {} {address}", proto.as_str()))
}

/// Prints `ready`: every socket is bound and the daemon serves.
pub fn ready() -> std::io::Result<()> {
    line("ready")
}

fn line(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()
}

/// Parses a `listening <proto> <address>` line (for readers of the lines).
pub fn parse_listening(line: &str) -> Option<(&str, SocketAddr)> {
    let mut words = line.split_whitespace();
    let (Some("listening"), Some(proto), Some(address), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    Some((proto, address.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_parse_back() {
        assert_eq!(
            parse_listening("listening metrics 127.0.0.1:9100"),
            Some(("metrics", "127.0.0.1:9100".parse().expect("address")))
        );
        assert_eq!(parse_listening("listening udp nowhere"), None);
        assert_eq!(parse_listening("ready"), None);
    }
}
