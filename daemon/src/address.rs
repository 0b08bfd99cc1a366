//! Address flags: host names resolved once at start, the advertised address
//! (what a daemon registers with shuckle and tells clients), and the source
//! address of outgoing requests.
//!
//! A daemon listening on a wildcard address (0.0.0.0 or ::) cannot know
//! which of its addresses the others can reach, so it must be told with
//! `--advertise`: registering 0.0.0.0 would send every client to itself.
//! That is a start-up error (exit 2), checked before anything is bound.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use anyhow::anyhow;

use crate::exit::Failure;

/// `text` (`HOST:PORT`, an IP literal or a host name) as one socket
/// address, for the flag `flag`. A name resolving to several addresses
/// gives its first IPv4 one (the daemons' defaults are IPv4), else its first.
/// A name that does not resolve is a usage failure naming the flag.
pub fn resolve(flag: &str, text: &str) -> Result<SocketAddr, Failure> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    if !text.contains(':') {
        return Err(Failure::usage(anyhow!("{flag} {text}: needs a port (HOST:PORT)")));
    }
    let all: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|error| Failure::usage(anyhow!("{flag} {text}: does not resolve: {error}")))?
        .collect();
    all.iter()
        .find(|address| address.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| Failure::usage(anyhow!("{flag} {text}: resolves to no address")))
}

/// The `--advertise` flag: `HOST:PORT`, or `HOST` alone (or port 0) for the
/// port the daemon binds. Port 0 in the result stands for "the bound port"
/// ([`advertised`] fills it in). A wildcard is refused: it is what
/// `--advertise` exists to replace.
pub fn parse_advertise(text: &str) -> Result<SocketAddr, Failure> {
    let address = if let Ok(ip) = text.parse::<IpAddr>() {
        SocketAddr::new(ip, 0)
    } else if text.contains(':') {
        resolve("--advertise", text)?
    } else {
        // A host name without a port.
        resolve("--advertise", &format!("{text}:0"))?
    };
    if address.ip().is_unspecified() {
        return Err(Failure::usage(anyhow!(
            "--advertise {text}: a wildcard address cannot be reached; give an address of this host"
        )));
    }
    Ok(address)
}

/// Refuses a wildcard listen address (0.0.0.0 or ::) without `--advertise`:
/// the daemon would otherwise register an address nobody can send to.
/// `listen_flag` names the flag in the error line.
pub fn check_listen(listen_flag: &str, listen: SocketAddr, advertise: Option<SocketAddr>) -> Result<(), Failure> {
    if listen.ip().is_unspecified() && advertise.is_none() {
        return Err(Failure::usage(anyhow!(
            "{listen_flag} {listen} listens on every interface; say which address others reach this daemon at \
             with --advertise HOST[:PORT]"
        )));
    }
    Ok(())
}

/// The address registered with shuckle and given to clients: `advertise`
/// (its port 0 meaning the bound port), else the bound address, which
/// [`check_listen`] has made sure is specific.
pub fn advertised(advertise: Option<SocketAddr>, bound: SocketAddr) -> SocketAddr {
    match advertise {
        Some(address) if address.port() == 0 => SocketAddr::new(address.ip(), bound.port()),
        Some(address) => address,
        None => bound,
    }
}

/// Where outgoing requests are sent from (any port): the advertised IP, so
/// shuckle, the shards and firewalls see the address the daemon registered
/// (issue 17 G5). Binding it fails if that IP is not one of this host's.
pub fn source(advertised: SocketAddr) -> SocketAddr {
    SocketAddr::new(advertised.ip(), 0)
}

/// Refuses an advertised IP that is not this host's: outgoing requests are
/// sent from it ([`source`]), and shuckle records a block service's
/// registration source as its address.
pub fn check_local(advertise: SocketAddr) -> Result<(), Failure> {
    std::net::UdpSocket::bind(source(advertise)).map(drop).map_err(|error| {
        Failure::usage(anyhow!("--advertise {}: not an address of this host: {error}", advertise.ip()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_localhost_resolve() {
        assert_eq!(resolve("--shuckle", "10.1.2.3:5000").unwrap(), "10.1.2.3:5000".parse().unwrap());
        assert_eq!(resolve("--shuckle", "localhost:5000").unwrap(), "127.0.0.1:5000".parse().unwrap());
    }

    #[test]
    fn an_unresolvable_name_is_a_usage_failure_naming_the_flag() {
        let failure = resolve("--shuckle", "no-such-host.invalid:5000").unwrap_err();
        assert_eq!(failure.code(), crate::exit::EXIT_USAGE);
        assert!(
            failure.line().starts_with("--shuckle no-such-host.invalid:5000: does not resolve"),
            "{}",
            failure.line()
        );
        let failure = resolve("--shuckle", "localhost").unwrap_err();
        assert!(failure.line().contains("needs a port"), "{}", failure.line());
    }

    #[test]
    fn advertise_takes_the_bound_port_when_none_is_given() {
        let bound: SocketAddr = "0.0.0.0:4321".parse().unwrap();
        assert_eq!(advertised(Some(parse_advertise("10.0.0.7").unwrap()), bound), "10.0.0.7:4321".parse().unwrap());
        assert_eq!(advertised(Some(parse_advertise("10.0.0.7:0").unwrap()), bound), "10.0.0.7:4321".parse().unwrap());
        assert_eq!(advertised(Some(parse_advertise("10.0.0.7:99").unwrap()), bound), "10.0.0.7:99".parse().unwrap());
        assert_eq!(advertised(Some(parse_advertise("localhost").unwrap()), bound), "127.0.0.1:4321".parse().unwrap());
        assert_eq!(advertised(Some(parse_advertise("::1").unwrap()), bound), "[::1]:4321".parse().unwrap());
        let specific: SocketAddr = "10.0.0.8:1".parse().unwrap();
        assert_eq!(advertised(None, specific), specific);
    }

    #[test]
    fn a_wildcard_is_never_advertised() {
        assert!(parse_advertise("0.0.0.0:5").is_err());
        assert!(parse_advertise("::").is_err());
        let wildcard: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let failure = check_listen("--listen", wildcard, None).unwrap_err();
        assert_eq!(failure.code(), crate::exit::EXIT_USAGE);
        assert!(failure.line().contains("--advertise"), "{}", failure.line());
        assert!(check_listen("--listen", wildcard, Some("10.0.0.1:0".parse().unwrap())).is_ok());
        assert!(check_listen("--listen", "10.0.0.1:0".parse().unwrap(), None).is_ok());
    }
}
