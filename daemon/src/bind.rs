//! The SO_REUSEPORT bind: one socket per executor on the same address, so
//! the kernel spreads connections or datagrams over the executors.
//!
//! SO_REUSEPORT would also let a second daemon of the same user share a port
//! that another one already serves (requests would then split between two
//! disks or two shards, silently). So before binding a fixed port we probe
//! it with a plain socket that does not share: if that bind fails, the port
//! is taken and start-up stops with exit 2. With port 0 the first socket
//! picks a free port and the others join it; for UDP that pick is made
//! without SO_REUSEPORT: the kernel's UDP autobind counts a port that other
//! SO_REUSEPORT sockets of the same user hold as free (about 3 % of 2 000
//! binds landed on a taken port on this machine; TCP's autobind does not),
//! so two metads started on port 0 could share one and split its
//! datagrams, which a concurrent CI run once showed as a CDC's requests
//! failing another cluster's MAC.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog of each TCP socket.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Receive buffer asked for each UDP socket: room for bursts from many
/// clients while an executor is busy (the kernel may clamp it).
pub const UDP_RECEIVE_BUFFER_BYTES: usize = 8 << 20;

/// TCP (listening) or UDP sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// The address cannot be bound (in use, not local, not permitted): the
/// operator's to fix.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {transport} {address}")]
pub struct BindError {
    pub transport: Transport,
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `count` (≥ 1) SO_REUSEPORT sockets of `transport` on `listen`
/// (TCP ones listening); returns them and the address they share.
pub fn reuse_port(
    transport: Transport,
    listen: SocketAddr,
    count: usize,
) -> Result<(Vec<Socket>, SocketAddr), BindError> {
    let error = |source| BindError { transport, address: listen, source };
    if transport == Transport::Udp && listen.port() == 0 {
        // A port nobody holds, picked by a socket that shares nothing.
        let exclusive = new_socket(transport, listen).map_err(error)?;
        exclusive.bind(&listen.into()).map_err(error)?;
        let address = local_address(&exclusive).map_err(error)?;
        if count <= 1 {
            return Ok((vec![exclusive], address));
        }
        // Several sockets must share it: free it and bind them there as
        // on a fixed port (whose probe refuses a port taken meanwhile).
        let mut last = None;
        for _ in 0..UDP_AUTOBIND_ATTEMPTS {
            let exclusive = new_socket(transport, listen).map_err(error)?;
            exclusive.bind(&listen.into()).map_err(error)?;
            let address = local_address(&exclusive).map_err(error)?;
            drop(exclusive);
            match reuse_port(transport, address, count) {
                Ok(bound) => return Ok(bound),
                Err(failure) => last = Some(failure),
            }
        }
        return Err(last.unwrap_or_else(|| error(std::io::Error::other("no free port"))));
    }
    if listen.port() != 0 {
        probe(transport, listen).map_err(error)?;
    }
    let mut sockets = Vec::with_capacity(count.max(1));
    let mut address = listen;
    for _ in 0..count.max(1) {
        let socket = new_socket(transport, address).map_err(error)?;
        socket.set_reuse_port(true).map_err(error)?;
        socket.bind(&address.into()).map_err(error)?;
        if transport == Transport::Tcp {
            socket.listen(LISTEN_BACKLOG).map_err(error)?;
        }
        address = local_address(&socket).map_err(error)?;
        sockets.push(socket);
    }
    Ok((sockets, address))
}

/// Tries at picking a free UDP port for several sockets before giving up
/// (each fails only if another socket takes the port within microseconds).
const UDP_AUTOBIND_ATTEMPTS: usize = 8;

fn local_address(socket: &Socket) -> std::io::Result<SocketAddr> {
    socket.local_addr()?.as_socket().ok_or_else(|| std::io::Error::other("bound socket has no IP address"))
}

/// Binds one socket that does not share its port, then closes it.
fn probe(transport: Transport, listen: SocketAddr) -> std::io::Result<()> {
    let socket = new_socket(transport, listen)?;
    socket.bind(&listen.into())
}

fn new_socket(transport: Transport, address: SocketAddr) -> std::io::Result<Socket> {
    let socket = match transport {
        Transport::Tcp => {
            let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
            // Restarting on the same port must not wait for TIME_WAIT.
            socket.set_reuse_address(true)?;
            socket
        }
        Transport::Udp => {
            let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP))?;
            // An optimisation only: the kernel may refuse or clamp it.
            let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER_BYTES);
            socket
        }
    };
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_every_socket() {
        for transport in [Transport::Tcp, Transport::Udp] {
            let (sockets, address) = reuse_port(transport, "127.0.0.1:0".parse().expect("address"), 3).expect("bind");
            assert_eq!(sockets.len(), 3);
            assert_ne!(address.port(), 0);
            for socket in &sockets {
                assert_eq!(socket.local_addr().expect("local").as_socket(), Some(address));
            }
        }
    }

    /// Port 0 never lands on a port that other SO_REUSEPORT sockets of this
    /// user hold (the kernel's UDP autobind would: ~3 % of binds here).
    #[test]
    fn port_zero_is_a_port_nobody_else_holds() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let held: Vec<std::net::UdpSocket> = (0..1000)
            .map(|_| {
                let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
                socket.set_reuse_port(true).expect("reuseport");
                socket.bind(&any.into()).expect("bind");
                socket.into()
            })
            .collect();
        let held_ports: std::collections::HashSet<u16> =
            held.iter().map(|socket| socket.local_addr().expect("local").port()).collect();
        let mut ours = Vec::new();
        for count in [1, 1, 1, 2] {
            for _ in 0..100 {
                let (sockets, address) = reuse_port(Transport::Udp, any, count).expect("bind");
                assert_eq!(sockets.len(), count);
                assert!(!held_ports.contains(&address.port()), "port {} is shared", address.port());
                ours.push(sockets);
            }
        }
    }

    // Regression: a second metad on the same port started silently
    // (SO_REUSEPORT let it share) and took half the datagrams.
    #[test]
    fn a_port_another_daemon_serves_is_refused() {
        for transport in [Transport::Tcp, Transport::Udp] {
            let (_first, address) = reuse_port(transport, "127.0.0.1:0".parse().expect("address"), 2).expect("bind");
            let error = reuse_port(transport, address, 2).expect_err("port in use");
            assert_eq!(error.address, address);
            assert_eq!(error.source.kind(), std::io::ErrorKind::AddrInUse, "{error}");
            assert!(error.to_string().starts_with(&format!("cannot bind {transport} {address}")), "{error}");
        }
    }
}
