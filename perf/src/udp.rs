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
//!
//! [`closed_loop`] runs the same clients without tokio, for the durable
//! create rows (where the load generator shares the machine's cores with
//! metad): one thread, one epoll set, each simulated client still its own
//! non-blocking socket (its own source address) with one request in
//! flight, its answers checked by [`accept_response`], resent after the
//! same doubling timeouts. Per operation it costs one `recvfrom`, one
//! `sendto` and a share of one `epoll_wait`, without a task wake-up, a
//! timer entry or a worker thread's futex per request.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    /// Requests sent again after a timeout ([`closed_loop`] counts them;
    /// [`run_clients`] leaves 0).
    pub resends: u64,
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
    Ok(Rate { ops: total, elapsed: started.elapsed(), resends: 0 })
}

/// One simulated client of [`closed_loop`]: it makes its requests and
/// takes their accepted answers; the loop sends, waits, resends and checks.
pub trait Script<F: Family>: Send {
    /// The next request, or `None` when this client is done. `stop` says
    /// the run's time is up: a script stops at its next operation's start
    /// (one made of several requests is finished first).
    fn next(&mut self, stop: bool) -> Result<Option<F::Request<'_>>>;
    /// The answer [`accept_response`] took for the last request; `true`
    /// when it completed an operation (counted in the rate).
    fn answer(&mut self, response: F::Response<'_>) -> Result<bool>;
}

/// How often [`closed_loop`] looks for requests to resend (their timeouts
/// are [`TIMEOUT_INITIAL`] and more, so a resend is late by at most this).
const RESEND_SCAN: Duration = Duration::from_millis(20);

/// One client of [`closed_loop`]: its socket, its script and its request
/// in flight.
struct Slot<S> {
    script: S,
    socket: std::net::UdpSocket,
    request: Box<[u8; UDP_DATAGRAM_BYTES_MAX]>,
    len: usize,
    /// The request in flight, if any.
    sent: Option<Sent>,
    next_request_id: u64,
    timeout: Duration,
    resend_at: Instant,
    sends: u32,
}

impl<S> Slot<S> {
    /// Sends the request in `request[..len]` (again). A full socket buffer
    /// counts as a lost datagram: the timeout resends it.
    fn send(&mut self, target: SocketAddr) -> Result<()> {
        match self.socket.send_to(&self.request[..self.len], target) {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(PerfError::io(format!("send to {target}"))(error)),
        }
    }

    /// Encodes and sends the script's next request; `false` when the
    /// script is done.
    fn issue<F: Family>(
        &mut self,
        target: SocketAddr,
        key: Option<&MacKey>,
        deadline: Instant,
        now: Instant,
    ) -> Result<bool>
    where
        S: Script<F>,
    {
        self.sent = None;
        let Some(request) = self.script.next(now >= deadline)? else { return Ok(false) };
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.len = encode(&mut self.request[..], request_id, &request, key)
            .map_err(|e| PerfError::Protocol(format!("encode request: {e}")))?;
        self.sent = Some(Sent { to: target, request_id, kind: request.kind() });
        drop(request);
        self.timeout = TIMEOUT_INITIAL;
        self.resend_at = now + self.timeout;
        self.sends = 1;
        self.send(target)?;
        Ok(true)
    }
}

/// Runs `scripts` as closed-loop clients of the daemon at `target` on the
/// calling thread (blocking) until every script is done, stopping them
/// once `duration` has passed: each its own UDP socket on 127.0.0.1 with
/// one request in flight, answers taken only when [`accept_response`]
/// accepts them (anything else is ignored), a request resent with its
/// request id after [`TIMEOUT_INITIAL`], doubled each time, and the run
/// failed after [`ATTEMPTS_MAX`] sends, as [`Client`] does.
pub fn closed_loop<F: Family, S: Script<F>>(
    target: SocketAddr,
    key: Option<&MacKey>,
    scripts: Vec<S>,
    duration: Duration,
) -> Result<Rate> {
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        return Err(PerfError::io("epoll_create1")(io::Error::last_os_error()));
    }
    // SAFETY: raw is a descriptor just created and owned by nobody else.
    let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
    let started = Instant::now();
    let mut slots = Vec::with_capacity(scripts.len());
    for (index, script) in scripts.into_iter().enumerate() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(PerfError::io("bind client socket"))?;
        socket.set_nonblocking(true).map_err(PerfError::io("non-blocking client socket"))?;
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: index as u64 };
        // SAFETY: both descriptors are open; event is a valid epoll_event.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event) } < 0 {
            return Err(PerfError::io("epoll_ctl")(io::Error::last_os_error()));
        }
        slots.push(Slot {
            script,
            socket,
            request: Box::new([0; UDP_DATAGRAM_BYTES_MAX]),
            len: 0,
            sent: None,
            next_request_id: rand::random::<u64>() >> 1,
            timeout: TIMEOUT_INITIAL,
            resend_at: started,
            sends: 0,
        });
    }
    let deadline = started + duration;
    let mut active = 0usize;
    for slot in &mut slots {
        if slot.issue::<F>(target, key, deadline, Instant::now())? {
            active += 1;
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; slots.len().max(1)];
    let mut answer = Box::new([0u8; UDP_DATAGRAM_BYTES_MAX]);
    let (mut ops, mut resends) = (0u64, 0u64);
    let mut scan_at = started + RESEND_SCAN;
    let wait_ms = RESEND_SCAN.as_millis() as libc::c_int;
    while active > 0 {
        let capacity = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: events has room for `capacity` entries.
        let ready = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), capacity, wait_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(PerfError::io("epoll_wait")(error));
        }
        for event in &events[..ready as usize] {
            let index = event.u64 as usize;
            let Some(slot) = slots.get_mut(index) else { continue };
            // One datagram per readiness: the set is level-triggered, so
            // another one waiting is reported by the next wait.
            let (len, from) = match slot.socket.recv_from(&mut answer[..]) {
                Ok(received) => received,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(PerfError::io(format!("receive from {target}"))(error)),
            };
            let Some(sent) = slot.sent else { continue };
            let Ok((_, response)) = accept_response::<F::Response<'_>>(sent, key, from, &answer[..len]) else {
                continue;
            };
            if slot.script.answer(response)? {
                ops += 1;
            }
            if !slot.issue::<F>(target, key, deadline, Instant::now())? {
                active -= 1;
            }
        }
        let now = Instant::now();
        if now >= scan_at {
            scan_at = now + RESEND_SCAN;
            for slot in slots.iter_mut().filter(|slot| slot.sent.is_some() && slot.resend_at <= now) {
                if slot.sends >= ATTEMPTS_MAX {
                    return Err(PerfError::Timeout(format!("no answer from {target} after {ATTEMPTS_MAX} sends")));
                }
                slot.sends += 1;
                slot.timeout *= 2;
                slot.resend_at = now + slot.timeout;
                resends += 1;
                slot.send(target)?;
            }
        }
    }
    Ok(Rate { ops, elapsed: started.elapsed(), resends })
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
