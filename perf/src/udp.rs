//! A datagram client and a closed-loop load generator.
//!
//! Each simulated client is one task with its own UDP socket (so a daemon
//! using SO_REUSEPORT sees distinct source addresses) and one request in
//! flight: it sends, waits for the answer with the same request id, and
//! sends the next. Lost datagrams are resent with the same request id after
//! a timeout that doubles, as the real client does.
//!
//! Answers are accepted by the one accept rule of every requester,
//! [`daemon::udp::accept_response`] (address, family, complete decode, MAC,
//! id, kind); anything else is ignored and the client keeps waiting. The
//! load generator keeps its own socket and loop rather than
//! [`daemon::udp::DatagramClient`] so that each simulated client is one
//! socket with no receive task in between: the figures measure the daemon.
//! Only the echo baseline checks less (address and id): the echo server
//! returns the request itself, which is no answer of the family.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use daemon::udp::{Family, Sent, accept_response};
use tokio::net::UdpSocket;
use wire::datagram::{Body, encode, peek_header};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::mac::MacKey;

use crate::error::{PerfError, Result};

/// First wait for an answer; doubled on every resend.
const TIMEOUT_INITIAL: Duration = Duration::from_millis(500);
/// Sends of one request before giving up (0.5 + 1 + 2 + 4 + 8 s).
const ATTEMPTS_MAX: u32 = 5;

/// One client socket talking to one daemon.
pub struct Client {
    socket: UdpSocket,
    target: SocketAddr,
    magic: [u8; 3],
    next_request_id: u64,
    send_buf: Box<[u8; UDP_DATAGRAM_BYTES_MAX]>,
    recv_buf: Box<[u8; UDP_DATAGRAM_BYTES_MAX]>,
    /// Requests sent again after a timeout.
    pub resends: u64,
}

impl Client {
    /// A client of the daemon at `target` speaking the family `magic`.
    pub async fn new(target: SocketAddr, magic: [u8; 3]) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(PerfError::io("bind client socket"))?;
        Ok(Self {
            socket,
            target,
            magic,
            next_request_id: rand::random::<u64>() >> 1,
            send_buf: Box::new([0; UDP_DATAGRAM_BYTES_MAX]),
            recv_buf: Box::new([0; UDP_DATAGRAM_BYTES_MAX]),
            resends: 0,
        })
    }

    /// Sends `request` of the family `F` and returns the first answer the
    /// accept rule takes (which may be an error response: the caller
    /// matches on it).
    pub async fn call<'s, F: Family>(
        &'s mut self,
        request: &F::Request<'_>,
        key: Option<&MacKey>,
    ) -> Result<F::Response<'s>> {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let len = encode(&mut self.send_buf[..], request_id, request, key)
            .map_err(|e| PerfError::Protocol(format!("encode request: {e}")))?;
        let sent = Sent { to: self.target, request_id, kind: request.kind() };
        let accept =
            |from: SocketAddr, bytes: &[u8]| accept_response::<F::Response<'_>>(sent, key, from, bytes).is_ok();
        let answer_len = self.round_trip(len, accept).await?;
        // Accepted above; decoded again here because the answer borrows the
        // buffer for the caller.
        accept_response::<F::Response<'s>>(sent, key, self.target, &self.recv_buf[..answer_len])
            .map(|(_, response)| response)
            .map_err(|refusal| PerfError::Protocol(format!("answer from {}: {refusal}", self.target)))
    }

    /// Sends `request` and only checks that a datagram with its request id
    /// comes back (the echo baseline: same encoding work, no decoding).
    pub async fn echo<'r, Req: Body<'r>>(&mut self, request: &Req) -> Result<()> {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let len = encode(&mut self.send_buf[..], request_id, request, None)
            .map_err(|e| PerfError::Protocol(format!("encode request: {e}")))?;
        let (target, magic) = (self.target, self.magic);
        let echoed = |from: SocketAddr, bytes: &[u8]| {
            from == target && peek_header(bytes, magic).is_ok_and(|header| header.request_id() == request_id)
        };
        self.round_trip(len, echoed).await.map(|_| ())
    }

    /// Sends `send_buf[..len]` until a datagram `accept` takes arrives;
    /// returns its length in `recv_buf`. Late answers to earlier attempts
    /// and strays are skipped.
    async fn round_trip(&mut self, len: usize, accept: impl Fn(SocketAddr, &[u8]) -> bool) -> Result<usize> {
        let mut timeout = TIMEOUT_INITIAL;
        for attempt in 0..ATTEMPTS_MAX {
            if attempt > 0 {
                self.resends += 1;
            }
            self.socket
                .send_to(&self.send_buf[..len], self.target)
                .await
                .map_err(PerfError::io(format!("send to {}", self.target)))?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let received = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut self.recv_buf[..])).await;
                let Ok(received) = received else { break };
                let (answer_len, from) = received.map_err(PerfError::io(format!("receive from {}", self.target)))?;
                if accept(from, &self.recv_buf[..answer_len]) {
                    return Ok(answer_len);
                }
            }
            timeout *= 2;
        }
        Err(PerfError::Timeout(format!("no answer from {} after {ATTEMPTS_MAX} sends", self.target)))
    }
}

/// Operations completed over a wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub ops: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `clients` workers concurrently until `duration` has passed; each
/// worker gets its index and the deadline and returns how many operations
/// it completed.
pub async fn run_clients<F, Fut>(clients: usize, duration: Duration, worker: F) -> Result<Rate>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: Future<Output = Result<u64>> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..clients).map(|index| tokio::spawn(worker(index, deadline))).collect();
    let mut total = 0u64;
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(ops)) => total += ops,
            Ok(Err(error)) => first_error = first_error.or(Some(error)),
            Err(join) => first_error = first_error.or(Some(PerfError::Component(format!("client task: {join}")))),
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    Ok(Rate { ops: total, elapsed: started.elapsed() })
}

/// The echo baseline: `clients` closed-loop clients sending a stat-sized
/// shard datagram to the echo server at `target`.
pub async fn echo_rate(target: SocketAddr, clients: usize, duration: Duration) -> Result<f64> {
    run_clients(clients, duration, move |_, deadline| async move {
        let mut client = Client::new(target, wire::datagram::SHARD_MAGIC).await?;
        let request = wire::shard::ShardRequest::Stat(wire::shard::StatReq { inode: crate::shard::ROOT });
        let mut ops = 0;
        while Instant::now() < deadline {
            client.echo(&request).await?;
            ops += 1;
        }
        Ok(ops)
    })
    .await
    .map(|rate| rate.per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_request_comes_back_from_the_echo_server() {
        let server = crate::limits::EchoServer::start(1).unwrap();
        let result = runtime().block_on(async {
            let mut client = Client::new(server.addr, wire::datagram::SHARD_MAGIC).await?;
            let request = wire::shard::ShardRequest::Stat(wire::shard::StatReq { inode: crate::shard::ROOT });
            client.echo(&request).await?;
            client.echo(&request).await
        });
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn run_clients_adds_up_every_worker() {
        let rate = runtime()
            .block_on(run_clients(3, Duration::from_millis(1), |index, _| async move { Ok(index as u64 + 1) }))
            .unwrap();
        assert_eq!(rate.ops, 6);
    }

    #[test]
    fn a_failing_worker_fails_the_run() {
        let result = runtime().block_on(run_clients(2, Duration::from_millis(1), |index, _| async move {
            if index == 1 { Err(PerfError::Protocol("refused".into())) } else { Ok(1) }
        }));
        assert!(matches!(result, Err(PerfError::Protocol(_))), "{result:?}");
    }
}
