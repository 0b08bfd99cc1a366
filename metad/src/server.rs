//! The daemon's I/O: UDP on every core, one writer thread with group
//! commit, and the shuckle refresher.
//!
//! ```text
//!  executor 0..N (glommio, SO_REUSEPORT socket each)
//!    recv → decode (MAC for privileged kinds)
//!      read  → LMDB read txn → reply at once
//!      write → bounded queue ──▶ writer thread: drain the queue, apply every
//!                                mutation in ONE write txn, commit (one
//!                                fsync: NO_META_SYNC), reply to the previous
//!                                batch (now durable), or sync when idle
//! ```
//!
//! Retransmissions: the writer remembers the responses of recent mutations
//! by (client address, request id, kind) and resends them instead of
//! executing a request twice; a retransmission of a request still queued is
//! answered from the same cache once its original has committed.
//! Privileged requests first pass the replay check of [`crate::replay`]
//! (keyed by request, not address: a replay from another port is answered
//! from the record, never executed).

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};
use wire::codec::Reader;
use wire::datagram::{self, HEADER_BYTES, Header, KIND_PRIVILEGED, SHARD_MAGIC};
use wire::ids::{EggsTime, ShardId};
use wire::limits::{SHARD_REFRESH_PERIOD_NS, UDP_DATAGRAM_BYTES_MAX};
use wire::mac::SecretKey;
#[cfg(doc)]
use wire::shard::ShardKind;
use wire::shard::ShardRequest;
use wire::{DecodeError, ErrorKind};

use crate::block_services::{BlockServiceRecord, BlockServiceTable};
use crate::logic::{Durations, Env, MutationEffects, Shard};
use crate::metrics::Metrics;
use crate::replay::{Gate, Screen, Ticket};
use crate::shuckle_client::ShuckleClient;
use crate::store::{Store, StoreError, parse_be_u64_key};

/// Mutations waiting for the writer; a full queue answers OVERLOADED.
const WRITE_QUEUE_BOUND: usize = 8192;
/// Most mutations in one write transaction.
const BATCH_MAX: usize = 1024;
/// Responses remembered for retransmitted mutations.
const RETRANSMIT_CACHE_ENTRIES: usize = 32 * 1024;
/// Receive buffer: larger than any valid datagram so oversized ones are seen
/// (and refused) rather than silently truncated.
const RECEIVE_BUFFER_BYTES: usize = UDP_DATAGRAM_BYTES_MAX + 64;
/// A flood of malformed datagrams is logged once per this many.
const MALFORMED_LOG_EVERY: u64 = 1000;
/// First retry of shuckle after a failure; doubles up to the refresh period.
const SHUCKLE_RETRY_INITIAL: Duration = Duration::from_millis(500);
/// glommio's registered I/O memory per executor; small because we only do
/// datagram I/O and `ulimit -l` is often 8 MiB.
const EXECUTOR_IO_MEMORY_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot bind UDP {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot start: {0}")]
    Start(String),
}

pub struct Config {
    pub shard: ShardId,
    pub folder: PathBuf,
    pub listen: SocketAddr,
    /// What to register with shuckle (`daemon::address::advertised`: port 0
    /// is the bound port); `None`: the bound address.
    pub advertise: Option<SocketAddr>,
    pub shuckle: SocketAddr,
    pub cluster_key: SecretKey,
    pub executors: usize,
    /// The shard's time rules (eden deadline, purge age).
    pub durations: Durations,
    /// Where requests and commits are counted.
    pub metrics: Metrics,
}

/// State shared by the executors, the writer and the refresher.
struct Shared {
    store: Store,
    shard: Shard,
    block_services: RwLock<Arc<BlockServiceTable>>,
    refresh: (Mutex<bool>, Condvar),
    /// Replay check of privileged requests ([`crate::replay`]).
    replay: Arc<Gate>,
    durations: Durations,
    metrics: Metrics,
}

impl Shared {
    fn table(&self) -> Arc<BlockServiceTable> {
        match self.block_services.read() {
            Ok(table) => table.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn request_refresh(&self) {
        let (flag, condvar) = &self.refresh;
        if let Ok(mut wanted) = flag.lock() {
            *wanted = true;
            condvar.notify_all();
        }
    }
}

/// One queued mutation.
struct Job {
    peer: SocketAddr,
    request_id: u64,
    kind: u8,
    datagram: Vec<u8>,
    socket: Arc<UdpSocket>,
    /// A privileged request's place in the replay record.
    replay: Option<Ticket>,
    /// When it arrived, and its kind's index in [`ShardKind::ALL`], for the metrics.
    arrived: Instant,
    kind_index: Option<usize>,
}

/// Opens the state, binds the sockets, prints `listening udp …` and `ready`,
/// and serves until killed.
pub fn run(config: Config) -> Result<(), ServerError> {
    let store = Store::open(&config.folder.join(format!("shard-{:03}", config.shard)))?;
    // The writer syncs the meta page itself (see `writer`): one fsync per
    // commit instead of two.
    // SAFETY: NO_META_SYNC keeps LMDB consistent after a crash (at worst the
    // last commit is undone); the writer replies only after a later sync.
    unsafe { store.env.set_flags(heed::EnvFlags::NO_META_SYNC, heed::FlagSetMode::Enable) }
        .map_err(|error| ServerError::Store(StoreError::Lmdb(error)))?;
    let shard = Shard::open(&store, config.shard, &config.cluster_key, EggsTime::now())?;
    let table = load_block_services(&store)?;
    let shared = Arc::new(Shared {
        store,
        shard,
        block_services: RwLock::new(Arc::new(table)),
        refresh: (Mutex::new(true), Condvar::new()),
        replay: Gate::new(EggsTime::now()),
        durations: config.durations,
        metrics: config.metrics,
    });
    let sockets = bind_sockets(config.listen, config.executors.max(1))?;
    let local = sockets
        .first()
        .and_then(|s| s.local_addr().ok())
        .and_then(|a| a.as_socket())
        .ok_or_else(|| ServerError::Start("no socket".into()))?;
    daemon::announce::listening(daemon::announce::Proto::Udp, local).map_err(|e| ServerError::Start(e.to_string()))?;

    let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(WRITE_QUEUE_BOUND);
    let writer_shared = shared.clone();
    std::thread::Builder::new()
        .name("metad-writer".into())
        .spawn(move || writer(writer_shared, receiver))
        .map_err(|e| ServerError::Start(e.to_string()))?;
    let refresher_shared = shared.clone();
    let (shuckle, cluster_key, shard_id) = (config.shuckle, config.cluster_key, config.shard);
    let advertised = daemon::address::advertised(config.advertise, local);
    std::thread::Builder::new()
        .name("metad-shuckle".into())
        .spawn(move || refresher(refresher_shared, shuckle, cluster_key, shard_id, advertised))
        .map_err(|e| ServerError::Start(e.to_string()))?;

    let mut handles = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let reply = socket.try_clone().map_err(|e| ServerError::Bind(local, e))?;
        let reply: Arc<UdpSocket> = Arc::new(reply.into());
        let shared = shared.clone();
        let sender = sender.clone();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("metad-io-{index}"))
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .spawn(move || async move {
                // glommio's own socket2 is an older version: hand over the fd.
                use std::os::fd::{FromRawFd, IntoRawFd};
                // SAFETY: the fd is a bound UDP socket we own and give away.
                let socket = unsafe { glommio::net::UdpSocket::from_raw_fd(socket.into_raw_fd()) };
                serve(socket, reply, shared, sender).await;
            })
            .map_err(|e| ServerError::Start(format!("executor: {e}")))?;
        handles.push(handle);
    }
    daemon::announce::ready().map_err(|e| ServerError::Start(e.to_string()))?;
    for handle in handles {
        handle.join().map_err(|e| ServerError::Start(format!("executor: {e}")))?;
    }
    Ok(())
}

fn load_block_services(store: &Store) -> Result<BlockServiceTable, StoreError> {
    let txn = store.read_txn()?;
    let mut services = Vec::new();
    for item in store.block_services.iter(&txn)? {
        let (key, value) = item?;
        let id = wire::BlockServiceId::new(parse_be_u64_key(key, "block service key")?);
        services.push(BlockServiceRecord::decode(id, value)?);
    }
    Ok(BlockServiceTable::new(services))
}

fn save_block_services(store: &Store, services: &[BlockServiceRecord]) -> Result<(), StoreError> {
    let mut txn = store.write_txn()?;
    store.block_services.clear(&mut txn)?;
    for service in services {
        store.block_services.put(&mut txn, &service.id.get().to_be_bytes(), &service.encode())?;
    }
    txn.commit()?;
    Ok(())
}

/// One socket per executor on the same address (SO_REUSEPORT, with the
/// port-sharing probe of `daemon::bind`).
fn bind_sockets(listen: SocketAddr, count: usize) -> Result<Vec<socket2::Socket>, ServerError> {
    let (sockets, _) = daemon::bind::reuse_port(daemon::bind::Transport::Udp, listen, count)
        .map_err(|error| ServerError::Bind(error.address, error.source))?;
    Ok(sockets)
}

/// The error answer to a datagram that did not decode, if its header can be
/// read (otherwise it is dropped).
fn refusal(shard: &Shard, bytes: &[u8], error: DecodeError, out: &mut [u8]) -> Option<usize> {
    let header: Header = Reader::new(bytes).fixed().ok()?;
    if header.magic != SHARD_MAGIC {
        return None;
    }
    let kind = match error {
        DecodeError::BadMac => ErrorKind::NotAuthorised,
        DecodeError::UnsupportedVersion(_) => ErrorKind::UnsupportedVersion,
        _ => ErrorKind::DecodeError,
    };
    let text = error.to_string();
    Some(shard.encode_error(out, header.request_id(), header.is_privileged(), kind, &text))
}

async fn serve(socket: glommio::net::UdpSocket, reply: Arc<UdpSocket>, shared: Arc<Shared>, writer: SyncSender<Job>) {
    let mut buf = vec![0u8; RECEIVE_BUFFER_BYTES];
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let mut malformed: u64 = 0;
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "UDP receive failed");
                continue;
            }
        };
        let arrived = Instant::now();
        let bytes = buf.get(..len).unwrap_or_default();
        let mut ticket = match crate::replay::screen(&shared.replay, shared.shard.cluster_key(), bytes, peer, &mut out)
        {
            Screen::Serve(ticket) => ticket,
            Screen::Answer(len) => {
                if let Err(error) = socket.send_to(out.get(..len).unwrap_or_default(), peer).await {
                    tracing::warn!(%peer, %error, "UDP send failed");
                }
                continue;
            }
            Screen::Drop => continue,
        };
        let mut kind_index = None;
        let answer = match datagram::decode::<ShardRequest>(bytes, Some(shared.shard.cluster_key())) {
            Ok((header, request)) => {
                kind_index = Metrics::kind_index(header.kind);
                if let Some(kind) = kind_index {
                    shared.metrics.arrived(kind);
                }
                if request.kind().is_mutation() {
                    let job = Job {
                        peer,
                        request_id: header.request_id(),
                        kind: header.kind,
                        datagram: bytes.to_vec(),
                        socket: reply.clone(),
                        replay: ticket.take(),
                        arrived,
                        kind_index,
                    };
                    match writer.try_send(job) {
                        Ok(()) => None,
                        Err(TrySendError::Full(_)) => {
                            let len = shared.shard.encode_error(
                                &mut out,
                                header.request_id(),
                                header.is_privileged(),
                                ErrorKind::Overloaded,
                                "write queue full",
                            );
                            Some(len)
                        }
                        Err(TrySendError::Disconnected(_)) => {
                            tracing::error!("writer thread is gone");
                            let len = shared.shard.encode_error(
                                &mut out,
                                header.request_id(),
                                header.is_privileged(),
                                ErrorKind::StorageError,
                                "writer stopped",
                            );
                            Some(len)
                        }
                    }
                } else {
                    Some(read(&shared, header.request_id(), &request, &mut out))
                }
            }
            Err(error) => {
                shared.metrics.malformed.inc();
                malformed += 1;
                // The first one is logged, then one in every MALFORMED_LOG_EVERY
                // (the count is in the line), so a flood cannot fill the log.
                if malformed % MALFORMED_LOG_EVERY == 1 {
                    tracing::warn!(%peer, %error, len, malformed, "malformed datagram");
                }
                refusal(&shared.shard, bytes, error, &mut out)
            }
        };
        if let (Some(kind), Some(len)) = (kind_index, answer) {
            shared.metrics.answered(kind, arrived.elapsed(), out.get(..len).unwrap_or_default());
        }
        if let (Some(ticket), Some(len)) = (ticket.as_mut(), answer) {
            ticket.finish(out.get(..len).unwrap_or_default());
        }
        if let Some(len) = answer
            && let Err(error) = socket.send_to(out.get(..len).unwrap_or_default(), peer).await
        {
            tracing::warn!(%peer, %error, "UDP send failed");
        }
    }
}

fn read(shared: &Shared, request_id: u64, request: &ShardRequest<'_>, out: &mut [u8]) -> usize {
    let table = shared.table();
    let env = Env { now: EggsTime::now(), block_services: &table, durations: shared.durations };
    match shared.store.read_txn() {
        Ok(txn) => shared.shard.handle_read(&shared.store, &txn, &env, request_id, request, out),
        Err(error) => {
            tracing::error!(%error, "cannot open a read transaction");
            shared.shard.encode_error(out, request_id, false, ErrorKind::StorageError, "storage error")
        }
    }
}

type CacheKey = (SocketAddr, u64, u8);

/// Responses of recent mutations, bounded, oldest evicted first.
#[derive(Default)]
struct RetransmitCache {
    responses: HashMap<CacheKey, Vec<u8>>,
    order: VecDeque<CacheKey>,
}

impl RetransmitCache {
    fn get(&self, key: &CacheKey) -> Option<&Vec<u8>> {
        self.responses.get(key)
    }

    fn insert(&mut self, key: CacheKey, response: Vec<u8>) {
        if self.responses.insert(key, response).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > RETRANSMIT_CACHE_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.responses.remove(&old);
            }
        }
    }
}

fn send(metrics: &Metrics, job: &mut Job, bytes: &[u8]) {
    if let Some(ticket) = job.replay.as_mut() {
        ticket.finish(bytes);
    }
    if let Some(kind) = job.kind_index {
        metrics.answered(kind, job.arrived.elapsed(), bytes);
    }
    for _ in 0..100 {
        match job.socket.send_to(bytes, job.peer) {
            Ok(_) => return,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(error) => {
                tracing::warn!(peer = %job.peer, %error, "UDP send failed");
                return;
            }
        }
    }
}

/// The single writer: batches, group commit, replies once durable.
///
/// The environment runs with NO_META_SYNC: a commit fsyncs its data pages
/// once and writes the meta page without a second fsync. The meta page of
/// commit N becomes durable with the data fsync of commit N+1 (same file),
/// or with an explicit sync when nothing else is queued. So the replies of
/// batch N go out after commit N+1, or after the sync if the queue is
/// empty: one fsync per commit under load (was two), durable before every
/// reply as before.
fn writer(shared: Arc<Shared>, receiver: Receiver<Job>) {
    let mut cache = RetransmitCache::default();
    let mut rng = rand::rng();
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH_MAX);
    // Committed, meta page not yet synced: replies wait.
    let mut unsynced: Vec<(Job, Vec<u8>)> = Vec::new();
    loop {
        let first = if unsynced.is_empty() {
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        } else {
            match receiver.try_recv() {
                Ok(job) => job,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    let started = Instant::now();
                    let synced = shared.store.env.force_sync();
                    shared.metrics.sync.observe_duration(started.elapsed());
                    match synced {
                        Ok(()) => reply_all(&shared.metrics, &mut unsynced),
                        // Not answered: the clients retransmit, and the
                        // retransmissions are answered after a later commit.
                        Err(error) => {
                            tracing::error!(%error, "sync failed");
                            unsynced.clear();
                        }
                    }
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            }
        };
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut effects = MutationEffects::default();
        shared.metrics.batch_size.observe(batch.len() as u64);
        let started = Instant::now();
        let applied = apply_batch(&shared, &batch, &cache, &mut rng, &mut effects, &mut out);
        shared.metrics.commit.observe_duration(started.elapsed());
        let answers = match applied {
            Ok(answers) => answers,
            Err(error) => {
                tracing::error!(%error, jobs = batch.len(), "write batch failed");
                for job in &mut batch {
                    let privileged = job.kind & KIND_PRIVILEGED != 0;
                    let len = shared.shard.encode_error(
                        &mut out,
                        job.request_id,
                        privileged,
                        ErrorKind::StorageError,
                        "storage error",
                    );
                    send(&shared.metrics, job, out.get(..len).unwrap_or_default());
                }
                batch.clear();
                continue;
            }
        };
        // This commit's data fsync made the previous batch's meta durable.
        reply_all(&shared.metrics, &mut unsynced);
        for (job, answer) in batch.drain(..).zip(answers) {
            let key = (job.peer, job.request_id, job.kind);
            let bytes = match answer {
                Some(bytes) => {
                    cache.insert(key, bytes);
                    cache.get(&key).cloned().unwrap_or_default()
                }
                None => cache.get(&key).cloned().unwrap_or_default(),
            };
            unsynced.push((job, bytes));
        }
        if effects.wants_block_service_refresh {
            shared.request_refresh();
        }
    }
}

fn reply_all(metrics: &Metrics, durable: &mut Vec<(Job, Vec<u8>)>) {
    for (mut job, bytes) in durable.drain(..) {
        send(metrics, &mut job, &bytes);
    }
}

/// Applies a batch in one transaction. Each answer is `Some(new response)`
/// or `None` for a retransmission (answered from the cache, which by then
/// holds the original's response).
fn apply_batch(
    shared: &Shared,
    batch: &[Job],
    cache: &RetransmitCache,
    rng: &mut dyn rand::RngCore,
    effects: &mut MutationEffects,
    out: &mut [u8],
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let table = shared.table();
    let env = Env { now: EggsTime::now(), block_services: &table, durations: shared.durations };
    let mut txn = shared.store.write_txn()?;
    let mut answers = Vec::with_capacity(batch.len());
    let mut in_batch: HashMap<CacheKey, ()> = HashMap::new();
    for job in batch {
        let key = (job.peer, job.request_id, job.kind);
        if cache.get(&key).is_some() || in_batch.contains_key(&key) {
            answers.push(None);
            continue;
        }
        let len = match datagram::decode::<ShardRequest>(&job.datagram, Some(shared.shard.cluster_key())) {
            Ok((_, request)) => shared.shard.handle_mutation(
                &shared.store,
                &mut txn,
                &env,
                rng,
                effects,
                job.request_id,
                &request,
                out,
            )?,
            Err(error) => shared.shard.encode_error(
                out,
                job.request_id,
                job.kind & KIND_PRIVILEGED != 0,
                ErrorKind::DecodeError,
                &error.to_string(),
            ),
        };
        in_batch.insert(key, ());
        answers.push(Some(out.get(..len).unwrap_or_default().to_vec()));
    }
    txn.commit()?;
    Ok(answers)
}

/// Keeps the block service table fresh and the shard registered.
fn refresher(shared: Arc<Shared>, shuckle: SocketAddr, cluster_key: SecretKey, shard: ShardId, advertised: SocketAddr) {
    let period = Duration::from_nanos(SHARD_REFRESH_PERIOD_NS);
    // From the advertised IP (any port): shuckle and firewalls see the
    // address the shard registers.
    let client = match ShuckleClient::new(shuckle, daemon::address::source(advertised), &cluster_key) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "no shuckle client; serving without block services");
            return;
        }
    };
    let mut wait = Duration::ZERO;
    loop {
        {
            let (flag, condvar) = &shared.refresh;
            let Ok(mut wanted) = flag.lock() else { return };
            if !*wanted {
                wanted = match condvar.wait_timeout(wanted, wait) {
                    Ok((guard, _)) => guard,
                    Err(_) => return,
                };
            }
            *wanted = false;
        }
        let fetched = client.block_services();
        let registered = client.register_shard(shard, advertised);
        // Until shuckle lists a writable service (right after a cluster
        // starts, before shuckle has checked any), keep asking at the short
        // pace rather than leaving the shard unable to place for a period.
        let writable = fetched
            .as_ref()
            .is_ok_and(|services| services.iter().any(|service| service.flags == 0 && service.write_weight > 0));
        match (&fetched, &registered) {
            (Ok(_), Ok(())) if writable => wait = period,
            _ => wait = (wait * 2).clamp(SHUCKLE_RETRY_INITIAL, period),
        }
        match fetched {
            Ok(services) => {
                tracing::info!(count = services.len(), "block services refreshed from shuckle");
                if let Err(error) = save_block_services(&shared.store, &services) {
                    tracing::warn!(%error, "cannot persist block services");
                }
                let table = Arc::new(BlockServiceTable::new(services));
                match shared.block_services.write() {
                    Ok(mut slot) => *slot = table,
                    Err(poisoned) => *poisoned.into_inner() = table,
                }
            }
            Err(error) => tracing::warn!(%error, "block service refresh failed"),
        }
        if let Err(error) = registered {
            tracing::warn!(%error, "shard registration failed");
        }
        // A burst of placement failures must not hammer shuckle.
        std::thread::sleep(Duration::from_millis(200));
    }
}

const _: () = assert!(HEADER_BYTES < RECEIVE_BUFFER_BYTES);
