//! The daemon's I/O: UDP on plain threads, one writer thread with group
//! commit over a write-ahead journal, and the shuckle refresher.
//!
//! ```text
//!  I/O thread 0..N (one per core, all blocking on ONE UDP socket; while
//!  only mutations arrive, one receives and the others park: [`Receivers`])
//!    recvmmsg (every queued datagram, up to 32) → decode each (MAC for
//!    privileged kinds)
//!      read  → LMDB read txn → answer; the answers leave in one sendmmsg
//!      write → writer idle (nothing open or queued), a lane free, small
//!              commits of late: apply and commit here, as the writer would
//!      write → else bounded queue ──▶ writer thread: take everything queued, apply
//!                                it in the open write txn (its puts, deletes
//!                                and clears recorded); while the journal
//!                                could not sync a record yet, keep the txn
//!                                open for what arrives next; else hand
//!                                the record and the answers to the
//!                                journal, then commit (NO_SYNC: pages
//!                                into the page cache only; the answers
//!                                wait for it), take the next batch
//!                                ──▶ a free sync lane (daemon::journal):
//!                                take every queued record, write it with
//!                                ONE pwritev2(RWF_DSYNC), then the answers
//!                                of the durable prefix leave in one sendmmsg
//!                                ··▶ checkpoint thread: every second or at
//!                                half full, sync data.mdb at a snapshot the
//!                                writer pinned; the records before it are
//!                                free space
//! ```
//!
//! The writer's role ([`Role`]: the retransmission cache and the journal)
//! is a lock: the writer thread holds it from a batch's take to its
//! commit, and an I/O thread that finds it free, nothing queued, a sync
//! lane free and the shard not busy ([`DIRECT_BATCH_AVERAGE_MAX`])
//! applies and commits its receive's mutations itself
//! (`apply_now`, session 15): one thread hand-off fewer on a mutation's
//! path when the shard is not busy. Whoever holds it is the only writer,
//! so the journal's records stay in commit order, and LMDB's write
//! transaction begins and commits on one thread (the writer thread keeps
//! one open across its pace; an I/O thread never does).
//!
//! A mutation waits for one small sync: the journal's, which carries the
//! records of every commit made while the previous sync ran (was: the
//! commit's own fdatasync, then a second one for its meta page, and a
//! 200 µs grace). LMDB's own file is made durable by the checkpoints, and
//! at open the journal puts it back at the last one and replays the
//! records after it (`crate::store::Store::open`), after a SIGKILL or a
//! power loss alike. A journal write or sync that fails stops the process
//! (exit 1); a commit that fails writes no record and refuses the batch.
//!
//! Why plain threads on one socket (was: one glommio executor per core,
//! each with its own SO_REUSEPORT socket): a datagram server's cost is its
//! syscalls. A blocking thread pays one receive and one send per request
//! (under load fewer: [`crate::mmsg`] takes every queued datagram in one
//! receive and sends their answers, and a sync lane a sync's, in one
//! send), where the io_uring executor also paid the poll submission, the
//! ring wait and task work (about a fifth of a stat's CPU in `perf record`).
//! And one shared socket lets whichever thread is free take the next
//! datagram; SO_REUSEPORT pins a client to a thread by its address hash.
//!
//! Retransmissions: the writer remembers the responses of recent mutations
//! by (client address, request id, kind) and resends them instead of
//! executing a request twice; a retransmission of a request still queued is
//! answered from the same cache once its original has committed.
//! Privileged requests first pass the replay check of [`crate::replay`]
//! (keyed by request, not address: a replay from another port is answered
//! from the record, never executed).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::TryLockError;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use daemon::journal::{Effects, Journal, Pace};
use heed::RwTxn;
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
/// How often an idle writer looks for a snapshot the checkpoint thread
/// wants and for a block service table to save.
const WRITER_TICK: Duration = Duration::from_millis(10);
/// An I/O thread applies its own mutations ([`apply_now`]) only while the
/// writer's recent commits held fewer mutations than this on average: a
/// shard that is not busy (8 waiting clients make ~5 per commit). A busy
/// one (64 clients: ~25) keeps every mutation on the writer's queue, where
/// they gather into fewer, larger commits (session 15: I/O threads
/// committing 2–3 at a time there cut the mutations per commit 25.5 →
/// 23 and lengthened the journal's syncs, 0.83× creates/s over 6 paired
/// rounds).
const DIRECT_BATCH_AVERAGE_MAX: u64 = 12;
/// The average's weight of each new commit: 1 / this.
const BATCH_AVERAGE_DECAY: u64 = 8;
/// A parked I/O thread ([`Receivers`]) looks again after this long at
/// most (a safety net: the thread that receives calls it back when a read
/// arrives, and a thread only parks beside one that is receiving).
const PARK_MAX: Duration = Duration::from_millis(50);
/// Responses remembered for retransmitted mutations.
const RETRANSMIT_CACHE_ENTRIES: usize = 32 * 1024;
/// Receive buffer: larger than any valid datagram so oversized ones are seen
/// (and refused) rather than silently truncated.
const RECEIVE_BUFFER_BYTES: usize = UDP_DATAGRAM_BYTES_MAX + 64;
/// A flood of malformed datagrams is logged once per this many.
const MALFORMED_LOG_EVERY: u64 = 1000;
/// First retry of shuckle after a failure; doubles up to the refresh period.
const SHUCKLE_RETRY_INITIAL: Duration = Duration::from_millis(500);

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
    /// I/O threads receiving on the socket (`metad --executors`, the flag
    /// kept from when they were glommio executors).
    pub io_threads: usize,
    /// The shard's time rules (eden deadline, purge age).
    pub durations: Durations,
    /// Where requests and commits are counted.
    pub metrics: Metrics,
    /// The journal file's size when it is created (`metad --journal-mib`).
    pub journal_bytes: u64,
    /// Hold a journal sync for the clients just answered
    /// (`daemon::journal::Config::gather`).
    pub journal_gather: bool,
    /// Journal batches synced at once (`daemon::journal::Config::lanes`).
    pub journal_lanes: usize,
}

/// State shared by the I/O threads, the writer, the journal and the refresher.
struct Shared {
    store: Store,
    shard: Shard,
    block_services: RwLock<Arc<BlockServiceTable>>,
    refresh: (Mutex<bool>, Condvar),
    /// Replay check of privileged requests ([`crate::replay`]).
    replay: Arc<Gate>,
    durations: Durations,
    metrics: Metrics,
    /// A table fetched by the refresher, for the writer to save.
    block_services_to_save: Mutex<Option<Vec<BlockServiceRecord>>>,
    /// Mutations in the writer's queue, not yet taken (an I/O thread
    /// applies its own only when none wait: [`apply_now`]).
    queued: AtomicUsize,
    /// Mutations per commit, a moving average in sixteenths
    /// ([`DIRECT_BATCH_AVERAGE_MAX`]).
    batch_average: AtomicU64,
    /// The writer's role is held only to hand out a commit's answers and
    /// let go ([`commit`] sets it; whoever takes the role next clears
    /// it): an I/O thread waits for the role then rather than queue
    /// ([`take_idle_role`]).
    role_letting_go: AtomicBool,
    /// Which I/O threads wait on the socket.
    receivers: Receivers,
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

/// What the writer's queue carries.
enum Work {
    Job(Job),
    /// A journal sync lane freed up (`Journal::on_lane_free`): a writer
    /// holding its transaction open asks [`Journal::pace`] again.
    LaneFree,
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
    /// When the writer took it, its batch was applied, and its
    /// transaction's commit started and ended (the metrics' stages).
    stamps: Stamps,
}

/// A mutation's way through the writer ([`crate::metrics::Stages`]): when
/// it was taken, applied, and its commit started and ended, in
/// nanoseconds after its arrival (saturating at ~4 s; small, so that a
/// queued [`Work`] stays small).
#[derive(Clone, Copy, Default)]
struct Stamps {
    taken: u32,
    applied: u32,
    commit: u32,
    committed: u32,
}

impl Stamps {
    /// `at`, in nanoseconds after `arrived`.
    fn since(arrived: Instant, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(arrived).as_nanos()).unwrap_or(u32::MAX)
    }

    /// The stages' durations: queue, apply, hold, commit, and from the
    /// commit's end to `delivered`.
    fn stages(&self, arrived: Instant, delivered: Instant) -> [u64; 5] {
        let Self { taken, applied, commit, committed } = *self;
        let journal = u64::from(Self::since(arrived, delivered));
        [
            u64::from(taken),
            u64::from(applied.saturating_sub(taken)),
            u64::from(commit.saturating_sub(applied)),
            u64::from(committed.saturating_sub(commit)),
            journal.saturating_sub(u64::from(committed)),
        ]
    }
}

/// Opens the state, binds the sockets, prints `listening udp …` and `ready`,
/// and serves until killed.
pub fn run(config: Config) -> Result<(), ServerError> {
    let folder = config.folder.join(format!("shard-{:03}", config.shard));
    let store = Store::open(&folder)?;
    // From here a fault inside the map is damage that arrived after the
    // start-up check: one line, exit 3, a marker (daemon::fault).
    daemon::fault::guard("metad", &folder, Some("metad --verify"))
        .map_err(|error| ServerError::Start(format!("cannot install the store's fault guard: {error}")))?;
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
        block_services_to_save: Mutex::new(None),
        queued: AtomicUsize::new(0),
        batch_average: AtomicU64::new(0),
        role_letting_go: AtomicBool::new(false),
        receivers: Receivers::new(config.io_threads.max(1)),
    });
    let socket = bind_socket(config.listen)?;
    let local =
        socket.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| ServerError::Start("no socket".into()))?;
    let socket: UdpSocket = socket.into();
    daemon::announce::listening(daemon::announce::Proto::Udp, local).map_err(|e| ServerError::Start(e.to_string()))?;

    // From here every commit is journaled: a sync lane answers a batch
    // once its record and every earlier one is durable.
    let journal_config = daemon::journal::Config {
        bytes: config.journal_bytes,
        gather: config.journal_gather,
        lanes: config.journal_lanes,
        ..Default::default()
    };
    let metrics = shared.metrics.clone();
    let journal = Journal::start(&shared.store.env, journal_config, shared.metrics.journal.clone(), move |durable| {
        let mut answers: Answers = durable.into_iter().flatten().collect();
        reply_all(&metrics, &mut answers);
    })
    .map_err(|error| ServerError::Store(StoreError::Journal(error)))?;
    shared.store.record(true);
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Work>(WRITE_QUEUE_BOUND);
    // A writer holding its transaction open (`Journal::pace`) is woken
    // when a sync lane frees up.
    let holding = Arc::new(AtomicBool::new(false));
    let (wake, wake_holding) = (sender.clone(), holding.clone());
    journal.on_lane_free(move || {
        if wake_holding.load(Ordering::SeqCst) {
            let _ = wake.try_send(Work::LaneFree);
        }
    });
    let role = Arc::new(Mutex::new(Role { cache: RetransmitCache::default(), effects: Effects::default(), journal }));
    let (writer_shared, writer_role) = (shared.clone(), role.clone());
    std::thread::Builder::new()
        .name("metad-writer".into())
        .spawn(move || writer(writer_shared, receiver, writer_role, holding))
        .map_err(|e| ServerError::Start(e.to_string()))?;
    let refresher_shared = shared.clone();
    let (shuckle, cluster_key, shard_id) = (config.shuckle, config.cluster_key, config.shard);
    let advertised = daemon::address::advertised(config.advertise, local);
    std::thread::Builder::new()
        .name("metad-shuckle".into())
        .spawn(move || refresher(refresher_shared, shuckle, cluster_key, shard_id, advertised))
        .map_err(|e| ServerError::Start(e.to_string()))?;

    // The writer's and the journal's replies leave through a clone of the
    // same socket (sending needs no coordination with the receivers).
    let reply = Arc::new(socket.try_clone().map_err(|e| ServerError::Bind(local, e))?);
    let mut handles = Vec::new();
    for index in 0..config.io_threads.max(1) {
        let socket = socket.try_clone().map_err(|e| ServerError::Bind(local, e))?;
        let (shared, sender, reply, role) = (shared.clone(), sender.clone(), reply.clone(), role.clone());
        let handle = std::thread::Builder::new()
            .name(format!("metad-io-{index}"))
            .spawn(move || serve(index, &socket, reply, &shared, &sender, &role))
            .map_err(|e| ServerError::Start(format!("I/O thread: {e}")))?;
        handles.push(handle);
    }
    daemon::announce::ready().map_err(|e| ServerError::Start(e.to_string()))?;
    for handle in handles {
        handle.join().map_err(|_| ServerError::Start("an I/O thread panicked".into()))?;
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

/// The one socket every I/O thread receives on (bound through
/// `daemon::bind`, with its port-sharing probe). One socket rather than
/// one SO_REUSEPORT socket per thread: the kernel hands each datagram to
/// whichever thread waits, while SO_REUSEPORT pins each client to one
/// thread by its address hash, so two busy clients could share one thread
/// while the other idled (stat with 2 clients reached 47 % of the UDP echo).
fn bind_socket(listen: SocketAddr) -> Result<socket2::Socket, ServerError> {
    let (sockets, _) = daemon::bind::reuse_port(daemon::bind::Transport::Udp, listen, 1)
        .map_err(|error| ServerError::Bind(error.address, error.source))?;
    sockets.into_iter().next().ok_or_else(|| ServerError::Start("no socket".into()))
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

/// One I/O thread: a blocking batched receive ([`crate::mmsg`]: every
/// datagram queued, up to its batch), each read answered at once, every
/// answer in one batched send, then the mutations applied here when the
/// writer is idle or queued for it ([`hand_over`]).
fn serve(
    index: usize,
    socket: &UdpSocket,
    reply: Arc<UdpSocket>,
    shared: &Shared,
    writer: &SyncSender<Work>,
    role: &Mutex<Role>,
) {
    let mut batch = crate::mmsg::RecvBatch::new(RECEIVE_BUFFER_BYTES);
    let mut outs: Vec<Vec<u8>> = (0..crate::mmsg::BATCH_MAX).map(|_| vec![0u8; UDP_DATAGRAM_BYTES_MAX]).collect();
    let mut answers: Vec<(usize, usize, SocketAddr)> = Vec::with_capacity(crate::mmsg::BATCH_MAX);
    let mut jobs: Vec<Job> = Vec::with_capacity(crate::mmsg::BATCH_MAX);
    let mut scratch = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let mut malformed: u64 = 0;
    loop {
        shared.receivers.take_turn(index, &shared.metrics);
        let received = batch.receive(socket);
        shared.receivers.received(index);
        let count = match received {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(%error, "UDP receive failed");
                continue;
            }
        };
        let arrived = Instant::now();
        shared.metrics.receive_batch.observe(count as u64);
        answers.clear();
        for (index, out) in outs.iter_mut().enumerate().take(count) {
            let Some((bytes, len, Some(peer))) = batch.get(index) else { continue };
            let datagram = Datagram { bytes, len, peer, arrived };
            if let Some(answer) = serve_one(shared, &reply, &mut jobs, &datagram, out, &mut malformed) {
                answers.push((index, answer, peer));
            }
        }
        match answers.as_slice() {
            [] => {}
            // One answer: a plain send, as cheap as it gets.
            [(index, len, peer)] => {
                let bytes = outs.get(*index).and_then(|out| out.get(..*len)).unwrap_or_default();
                if let Err(error) = socket.send_to(bytes, *peer) {
                    tracing::warn!(%peer, %error, "UDP send failed");
                }
            }
            many => {
                let datagrams: Vec<(&[u8], SocketAddr)> = many
                    .iter()
                    .map(|(index, len, peer)| {
                        (outs.get(*index).and_then(|out| out.get(..*len)).unwrap_or_default(), *peer)
                    })
                    .collect();
                crate::mmsg::send_all(socket, &datagrams);
            }
        }
        shared.receivers.saw(!answers.is_empty(), &shared.metrics);
        if !jobs.is_empty() {
            hand_over(shared, writer, role, &mut jobs, &mut scratch);
        }
    }
}

/// Which I/O threads wait on the socket (session 16). While only
/// mutations arrive, an I/O thread's work per datagram is small (decode,
/// queue for the writer or commit it), and a second thread waiting on the
/// socket beside a busy one only splits the arrivals into more, smaller
/// receives, each one a sleep and a wake-up (on this VM ~20 % of metad's
/// CPU per create went to context switches at 64 clients: 2.7 datagrams
/// per receive, one sleep per receive). So, while the last receive held
/// no read, a thread that finds another receiving parks instead of
/// joining it, and the one receiving takes what queued meanwhile in one
/// receive. Paired at 8 clients (30 rounds, medians): metad's CPU per
/// create 0.74×, the load client's 0.73×, ~4.7 → ~6.8 mutations per
/// commit, creates/s 1.25× (`perf/results/2026-11-28-s16-md17.md`); at 64
/// clients, on a quiet machine (the lead's, `…-s16-lead.md`), creates/s
/// 1.08× on an empty shard (6 of 6 rounds won, metad's CPU per create
/// 0.87×) and 1.05× at 1 M files (9 of 12 won). A receive that answered
/// something at once (a read: an I/O thread's real work) calls every
/// parked thread back, and they receive beside it until a receive of
/// mutations only. Never all parked: a thread parks only
/// while another is inside (or entering) its receive, and that one comes
/// back to its receive without parking while nobody else receives
/// ([`PARK_MAX`] bounds a park all the same).
struct Receivers {
    /// Per I/O thread: inside, or about to enter, its blocking receive.
    /// Each on a cache line of its own, written by its thread only (a
    /// shared counter cost the reads' receives a cache line each way).
    receiving: Box<[Line<AtomicBool>]>,
    /// The last receive answered something at once (a read): every
    /// thread receives. Written only when it changes.
    spread: Line<AtomicBool>,
    /// Threads parked, and their call back.
    parked: Mutex<usize>,
    recall: Condvar,
}

/// A value alone on its cache line(s).
#[repr(align(128))]
#[derive(Default)]
struct Line<T>(T);

impl Receivers {
    fn new(threads: usize) -> Self {
        Self {
            receiving: (0..threads).map(|_| Line::default()).collect(),
            spread: Line::default(),
            parked: Mutex::new(0),
            recall: Condvar::new(),
        }
    }

    /// Another thread than `index` is inside (or entering) its receive.
    fn another_receiving(&self, index: usize) -> bool {
        self.receiving.iter().enumerate().any(|(other, line)| other != index && line.0.load(Ordering::SeqCst))
    }

    /// Before thread `index`'s blocking receive: parks while another
    /// thread receives and only mutations arrive, then marks it receiving.
    fn take_turn(&self, index: usize, metrics: &Metrics) {
        let mut counted = false;
        while !self.spread.0.load(Ordering::SeqCst) && self.another_receiving(index) {
            let mut parked = locked(&self.parked);
            // Under the lock: a read seen since sets `spread` before it
            // takes the lock to call parked threads back.
            if self.spread.0.load(Ordering::SeqCst) || !self.another_receiving(index) {
                break;
            }
            *parked += 1;
            // Once per park, not per look after `PARK_MAX`.
            if !counted {
                metrics.io_parked.inc();
                counted = true;
            }
            parked = match self.recall.wait_timeout(parked, PARK_MAX) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            *parked -= 1;
        }
        if let Some(line) = self.receiving.get(index) {
            line.0.store(true, Ordering::SeqCst);
        }
    }

    /// After thread `index`'s receive returned (with datagrams or an error).
    fn received(&self, index: usize) {
        if let Some(line) = self.receiving.get(index) {
            line.0.store(false, Ordering::SeqCst);
        }
    }

    /// After a receive's datagrams were served: `spread_now`, whether any
    /// was answered at once (a read). The first such receive after
    /// mutations only calls the parked threads back.
    fn saw(&self, spread_now: bool, metrics: &Metrics) {
        let spread = &self.spread.0;
        if !spread_now {
            if spread.load(Ordering::Relaxed) {
                spread.store(false, Ordering::SeqCst);
            }
            return;
        }
        if spread.load(Ordering::Relaxed) || spread.swap(true, Ordering::SeqCst) {
            return;
        }
        let parked = locked(&self.parked);
        if *parked > 0 {
            metrics.io_recalled.inc_by(*parked as u64);
            self.recall.notify_all();
        }
    }
}

/// A received datagram.
struct Datagram<'a> {
    bytes: &'a [u8],
    /// Its full length (above `bytes.len()` when it did not fit the buffer).
    len: usize,
    peer: SocketAddr,
    arrived: Instant,
}

/// One datagram: the replay screen, then a read answered into `out` or a
/// mutation added to `jobs` (for [`hand_over`]). Returns the answer's
/// length in `out`, if there is one to send now.
fn serve_one(
    shared: &Shared,
    reply: &Arc<UdpSocket>,
    jobs: &mut Vec<Job>,
    datagram: &Datagram<'_>,
    out: &mut [u8],
    malformed: &mut u64,
) -> Option<usize> {
    let Datagram { bytes, len, peer, arrived } = *datagram;
    let mut ticket = match crate::replay::screen(&shared.replay, shared.shard.cluster_key(), bytes, peer, out) {
        Screen::Serve(ticket) => ticket,
        Screen::Answer(len) => return Some(len),
        Screen::Drop => return None,
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
                    stamps: Stamps::default(),
                };
                jobs.push(job);
                None
            } else {
                Some(read(shared, header.request_id(), &request, out))
            }
        }
        Err(error) => {
            shared.metrics.malformed.inc();
            *malformed += 1;
            // The first one is logged, then one in every MALFORMED_LOG_EVERY
            // (the count is in the line), so a flood cannot fill the log.
            if *malformed % MALFORMED_LOG_EVERY == 1 {
                tracing::warn!(%peer, %error, len, malformed = *malformed, "malformed datagram");
            }
            refusal(&shared.shard, bytes, error, out)
        }
    };
    if let (Some(kind), Some(len)) = (kind_index, answer) {
        shared.metrics.answered(kind, arrived.elapsed(), out.get(..len).unwrap_or_default());
    }
    if let (Some(ticket), Some(len)) = (ticket.as_mut(), answer) {
        ticket.finish(out.get(..len).unwrap_or_default());
    }
    answer
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
    /// Shared with the reply on its way (no copy per mutation).
    responses: HashMap<CacheKey, Arc<[u8]>>,
    order: VecDeque<CacheKey>,
}

impl RetransmitCache {
    fn get(&self, key: &CacheKey) -> Option<&Arc<[u8]>> {
        self.responses.get(key)
    }

    fn insert(&mut self, key: CacheKey, response: Arc<[u8]>) {
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

/// A committed batch's jobs with their answers.
type Answers = Vec<(Job, Arc<[u8]>)>;

/// The writer's open write transaction: what it applied and has not
/// committed yet.
struct Open<'s> {
    txn: RwTxn<'s>,
    /// Each applied job with `Some(new response)`, or `None` for a
    /// retransmission (answered from the cache once the original's
    /// response is in it, at the commit).
    jobs: Vec<(Job, Option<Arc<[u8]>>)>,
    /// The requests applied in it, by (client, request id, kind).
    keys: HashSet<CacheKey>,
    outcome: MutationEffects,
    /// Time spent applying (not holding).
    busy: Duration,
}

/// The writer thread: batches, group commit, the journal. (An I/O thread
/// takes its role for a batch of its own when it is idle: [`apply_now`].)
///
/// The environment runs with NO_SYNC (`daemon::journal`): a commit writes
/// its pages into the page cache and nothing else. The writer takes
/// everything queued and applies it in its open write transaction (every
/// put, delete and clear recorded by the store's
/// [`crate::store::Recorder`]). Then it asks the journal
/// ([`Journal::pace`]) whether to commit now: while every sync lane is
/// busy, or the journal's gather waits for more clients than the
/// transaction holds, a record would only queue, so the writer keeps the
/// transaction open and applies whatever arrives meanwhile, and commits
/// once a lane frees up (the lane's wake-up, [`Work::LaneFree`]) or the
/// gather's time is up. So the commits are about as many as the journal's
/// syncs, each as large as what one sync carries: every hot page (the
/// B-trees' leaves and branches, the free list, the counters) is written
/// into `data.mdb` once per sync rather than once per small batch, and
/// the checkpoints have that much less to write back while the journal
/// syncs (session 10: was ~2.5 mutations per commit and ~6 commits per
/// sync at 8 clients). Just before the commit the writer hands its effects
/// with the answers to the journal (`Journal::append_before_commit`;
/// session 14, was after it), whose free sync lane writes the records of
/// every commit queued meanwhile with one sync while the commit runs, then
/// sends their answers once the commit is done too (`Journal::committed`;
/// a failed commit's record is voided and its refusals wait for that). So a
/// mutation still waits for one small sync, "durable before the reply"
/// and commit order hold, and reads (other threads' read transactions)
/// see only committed state. After each commit, and every [`WRITER_TICK`]
/// when idle (never while a transaction is open), the writer hands the
/// checkpoint thread the snapshot it asked for (it must be taken between
/// two commits), and saves a block service table the refresher left for
/// it (all writes are the role holder's: the journal's records are in commit
/// order).
fn writer(shared: Arc<Shared>, receiver: Receiver<Work>, role: Arc<Mutex<Role>>, holding: Arc<AtomicBool>) {
    let mut rng = rand::rng();
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH_MAX);
    let mut open: Option<Open<'_>> = None;
    // The writer's role, held from the batch's take to its commit: while
    // it is held an I/O thread queues its mutations; while nothing is
    // open it is let go, and an I/O thread may apply and commit its own
    // (`apply_now`).
    let mut held: Option<MutexGuard<'_, Role>> = None;
    loop {
        let wait = match (&open, held.as_mut()) {
            (Some(pending), Some(role)) => {
                // Before asking: a lane that frees up after the answer
                // sends the wake-up (the journal's lock orders the two).
                holding.store(true, Ordering::SeqCst);
                let pace = if pending.jobs.len() >= BATCH_MAX {
                    Pace::Now
                } else {
                    role.journal.pace(pending.jobs.len() as u64)
                };
                match pace {
                    Pace::Now => {
                        holding.store(false, Ordering::SeqCst);
                        if let Some(pending) = open.take() {
                            let Role { cache, effects, journal } = &mut **role;
                            commit(&shared, journal, cache, effects, &mut out, pending);
                        }
                        continue;
                    }
                    Pace::Until(at) => at.saturating_duration_since(Instant::now()),
                }
            }
            _ => {
                held = None;
                save_refreshed_block_services(&shared, &role);
                WRITER_TICK
            }
        };
        let first = match receiver.recv_timeout(wait) {
            Ok(Work::Job(job)) => job,
            Ok(Work::LaneFree) => continue,
            Err(RecvTimeoutError::Timeout) => {
                if open.is_none() {
                    lock_role(&shared, &role).journal.after_commit();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                if let (Some(pending), Some(role)) = (open.take(), held.as_mut()) {
                    let Role { cache, effects, journal } = &mut **role;
                    commit(&shared, journal, cache, effects, &mut out, pending);
                }
                break;
            }
        };
        batch.push(first);
        let room = BATCH_MAX.saturating_sub(open.as_ref().map_or(0, |pending| pending.jobs.len()));
        while batch.len() < room {
            match receiver.try_recv() {
                Ok(Work::Job(job)) => batch.push(job),
                Ok(Work::LaneFree) => {}
                Err(_) => break,
            }
        }
        shared.queued.fetch_sub(batch.len(), Ordering::SeqCst);
        let role = held.get_or_insert_with(|| lock_role(&shared, &role));
        let taken = Instant::now();
        for job in &mut batch {
            job.stamps.taken = Stamps::since(job.arrived, taken);
        }
        let mut pending = match open.take() {
            Some(pending) => pending,
            None => match shared.store.write_txn() {
                Ok(txn) => Open::new(txn, batch.len()),
                Err(error) => {
                    tracing::error!(%error, jobs = batch.len(), "cannot open a write transaction");
                    refuse(&shared, &mut out, batch.drain(..));
                    continue;
                }
            },
        };
        match apply_timed(&shared, &mut pending, &mut batch, &role.cache, &mut rng, &mut out) {
            Ok(()) => open = Some(pending),
            Err((error, rest)) => {
                holding.store(false, Ordering::SeqCst);
                fail(&shared, &mut out, pending, rest, &error);
            }
        }
    }
}

/// The writer's role: whoever holds it (the writer thread, or an I/O
/// thread in [`apply_now`]) is the only one writing to the store and
/// appending to the journal, so the records stay in commit order.
struct Role {
    cache: RetransmitCache,
    effects: Effects,
    journal: Journal<Answers>,
}

/// The writer's role for the writer thread (waits for it).
fn lock_role<'r>(shared: &Shared, role: &'r Mutex<Role>) -> MutexGuard<'r, Role> {
    let guard = locked(role);
    shared.role_letting_go.store(false, Ordering::SeqCst);
    guard
}

/// `mutex`'s guard, also when a thread panicked holding it (every value
/// kept under these locks stays whole between statements).
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl<'s> Open<'s> {
    fn new(txn: RwTxn<'s>, jobs: usize) -> Self {
        Self {
            txn,
            jobs: Vec::with_capacity(jobs),
            keys: HashSet::new(),
            outcome: MutationEffects::default(),
            busy: Duration::ZERO,
        }
    }
}

/// [`apply_batch`] with the metrics' stamps and the time it took.
fn apply_timed(
    shared: &Shared,
    pending: &mut Open<'_>,
    batch: &mut Vec<Job>,
    cache: &RetransmitCache,
    rng: &mut dyn rand::RngCore,
    out: &mut [u8],
) -> Result<(), (StoreError, Vec<Job>)> {
    let (started, before) = (Instant::now(), pending.jobs.len());
    let applied = apply_batch(shared, pending, batch, cache, rng, out);
    let done = Instant::now();
    pending.busy += done - started;
    for (job, _) in pending.jobs.iter_mut().skip(before) {
        job.stamps.applied = Stamps::since(job.arrived, done);
    }
    applied
}

/// A batch failed to apply: nothing committed, no record, and everything
/// the transaction held (and `rest`, not applied) is refused.
fn fail(shared: &Shared, out: &mut [u8], pending: Open<'_>, rest: Vec<Job>, error: &StoreError) {
    let Open { txn, jobs, .. } = pending;
    drop(txn);
    shared.store.discard_effects();
    tracing::error!(%error, jobs = jobs.len() + rest.len(), "write batch failed");
    refuse(shared, out, jobs.into_iter().map(|(job, _)| job).chain(rest));
}

/// The mutations of one receive: applied and committed on this I/O
/// thread when the shard is not busy (nothing queued, small commits of
/// late: [`DIRECT_BATCH_AVERAGE_MAX`]), the writer is idle and a sync
/// lane would take the record at once ([`apply_now`]); else queued for
/// the writer (a full queue answers OVERLOADED).
fn hand_over(shared: &Shared, writer: &SyncSender<Work>, role: &Mutex<Role>, jobs: &mut Vec<Job>, out: &mut [u8]) {
    if shared.queued.load(Ordering::SeqCst) == 0
        && not_busy(shared.batch_average.load(Ordering::Relaxed))
        && let Some(mut role) = take_idle_role(shared, role)
        && role.journal.pace(jobs.len() as u64) == Pace::Now
    {
        apply_now(shared, &mut role, jobs, out);
        return;
    }
    for job in jobs.drain(..) {
        shared.queued.fetch_add(1, Ordering::SeqCst);
        let (mut job, kind, text) = match writer.try_send(Work::Job(job)) {
            Ok(()) => continue,
            Err(TrySendError::Full(work)) => (work, ErrorKind::Overloaded, "write queue full"),
            Err(TrySendError::Disconnected(work)) => {
                tracing::error!("writer thread is gone");
                (work, ErrorKind::StorageError, "writer stopped")
            }
        };
        shared.queued.fetch_sub(1, Ordering::SeqCst);
        let Work::Job(job) = &mut job else { continue };
        let privileged = job.kind & KIND_PRIVILEGED != 0;
        let len = shared.shard.encode_error(out, job.request_id, privileged, kind, text);
        send(&shared.metrics, job, out.get(..len).unwrap_or_default());
    }
}

/// The writer's role for an I/O thread's [`apply_now`]: taken when free,
/// and waited for (yielding the core) while its holder has committed and
/// is only handing out the answers ([`Shared::role_letting_go`]); `None`
/// when it is held for anything else. The answers leave while the role is
/// still held (the journal delivers them as soon as the commit is done),
/// so a lone client's next mutation often arrives at another I/O thread
/// before the role is let go; on a loaded machine, where the holder can
/// be preempted right there, one in eight such mutations went to the
/// writer's queue (CI, session 16).
fn take_idle_role<'r>(shared: &Shared, role: &'r Mutex<Role>) -> Option<MutexGuard<'r, Role>> {
    loop {
        match role.try_lock() {
            Ok(guard) => {
                shared.role_letting_go.store(false, Ordering::SeqCst);
                return Some(guard);
            }
            Err(TryLockError::WouldBlock) if shared.role_letting_go.load(Ordering::SeqCst) => std::thread::yield_now(),
            Err(_) => return None,
        }
    }
}

/// The moving average of mutations per commit (in sixteenths) after a
/// commit of `batch_size`.
fn batch_average_after(average: u64, batch_size: usize) -> u64 {
    average - average / BATCH_AVERAGE_DECAY + (batch_size as u64).saturating_mul(16) / BATCH_AVERAGE_DECAY
}

/// Recent commits were small enough for an I/O thread to commit its own
/// mutations ([`DIRECT_BATCH_AVERAGE_MAX`]).
fn not_busy(average: u64) -> bool {
    average < DIRECT_BATCH_AVERAGE_MAX * 16
}

/// Applies and commits `jobs` (emptied) on the calling I/O thread, which
/// holds the writer's role while the writer thread has nothing open and
/// nothing queued: exactly what the writer would do with them, without
/// the hand-off to it (session 15: the queue stage, ~45–55 µs of a
/// create's path at 8 clients, was mostly the writer's wake-up). LMDB's
/// write transaction begins and commits on this thread; the role is let
/// go only after the commit, so no transaction stays open for later.
fn apply_now(shared: &Shared, role: &mut Role, jobs: &mut Vec<Job>, out: &mut [u8]) {
    let taken = Instant::now();
    for job in jobs.iter_mut() {
        job.stamps.taken = Stamps::since(job.arrived, taken);
    }
    let mut pending = match shared.store.write_txn() {
        Ok(txn) => Open::new(txn, jobs.len()),
        Err(error) => {
            tracing::error!(%error, jobs = jobs.len(), "cannot open a write transaction");
            refuse(shared, out, jobs.drain(..));
            return;
        }
    };
    shared.metrics.applied_on_receive.inc_by(jobs.len() as u64);
    let Role { cache, effects, journal } = role;
    match apply_timed(shared, &mut pending, jobs, cache, &mut rand::rng(), out) {
        Ok(()) => commit(shared, journal, cache, effects, out, pending),
        Err((error, rest)) => fail(shared, out, pending, rest, &error),
    }
}

/// Commits the open transaction and hands its effects and answers to the
/// journal (or refuses every job in it when the commit fails).
fn commit(
    shared: &Shared,
    journal: &Journal<Answers>,
    cache: &mut RetransmitCache,
    effects: &mut Effects,
    out: &mut [u8],
    pending: Open<'_>,
) {
    let Open { txn, jobs, outcome, busy, .. } = pending;
    let started = Instant::now();
    // The answers, before the commit: a retransmission applied in this
    // transaction is answered with its original's new response (the
    // cache learns those only once the commit succeeded).
    let mut fresh: Vec<(CacheKey, Arc<[u8]>)> = Vec::new();
    let mut durable_later = Vec::with_capacity(jobs.len());
    for (mut job, answer) in jobs {
        job.stamps.commit = Stamps::since(job.arrived, started);
        job.stamps.committed = job.stamps.commit;
        let key = (job.peer, job.request_id, job.kind);
        let bytes = match answer {
            Some(bytes) => {
                fresh.push((key, bytes.clone()));
                bytes
            }
            None => cache
                .get(&key)
                .or_else(|| fresh.iter().rev().find(|(fresh_key, _)| *fresh_key == key).map(|(_, bytes)| bytes))
                .cloned()
                .unwrap_or_else(|| Arc::from(&[][..])),
        };
        durable_later.push((job, bytes));
    }
    let batch_size = durable_later.len();
    let average = batch_average_after(shared.batch_average.load(Ordering::Relaxed), batch_size);
    shared.batch_average.store(average, Ordering::Relaxed);
    shared.store.take_effects(effects);
    // The record goes to the journal before LMDB's commit (session 14):
    // a lane writes and syncs it while the commit writes its pages, and
    // the answers leave once both are done. Was: commit, then append, the
    // commit's ~40 µs on every create's path at 8 clients.
    let early = !effects.is_empty();
    if early {
        journal.append_before_commit(effects, durable_later, batch_size as u64);
        durable_later = Vec::new();
    }
    let committed = txn.commit();
    let ended = Instant::now();
    shared.metrics.commit.observe_duration(busy + (ended - started));
    shared.metrics.batch_size.observe(batch_size as u64);
    if let Err(error) = committed {
        // Nothing committed: the record, if handed over, is voided, and
        // the batch is refused once that is durable.
        shared.store.discard_effects();
        if early {
            durable_later = journal.uncommit().unwrap_or_default();
        }
        tracing::error!(%error, jobs = batch_size, "write batch failed");
        let refusals = refusals(shared, out, durable_later.into_iter().map(|(job, _)| job));
        journal.append(effects, refusals);
        return;
    }
    for (key, bytes) in fresh {
        cache.insert(key, bytes);
    }
    shared.store.after_commit();
    // From here the answers may leave (the next mutation of a client
    // answered may arrive while the role is still held: [`take_idle_role`]).
    shared.role_letting_go.store(true, Ordering::SeqCst);
    if early {
        journal.committed();
    } else {
        journal.append_weighted(effects, durable_later, batch_size as u64);
    }
    journal.after_commit();
    if outcome.wants_block_service_refresh {
        shared.request_refresh();
    }
}

/// Each of `jobs` with a STORAGE_ERROR answer (their transaction failed),
/// for the journal to deliver once its void record is durable.
fn refusals(shared: &Shared, out: &mut [u8], jobs: impl Iterator<Item = Job>) -> Answers {
    jobs.map(|job| {
        let privileged = job.kind & KIND_PRIVILEGED != 0;
        let len = shared.shard.encode_error(out, job.request_id, privileged, ErrorKind::StorageError, "storage error");
        (job, Arc::from(out.get(..len).unwrap_or_default()))
    })
    .collect()
}

/// Answers each of `jobs` STORAGE_ERROR (their transaction failed).
fn refuse(shared: &Shared, out: &mut [u8], jobs: impl Iterator<Item = Job>) {
    for mut job in jobs {
        let privileged = job.kind & KIND_PRIVILEGED != 0;
        let len = shared.shard.encode_error(out, job.request_id, privileged, ErrorKind::StorageError, "storage error");
        send(&shared.metrics, &mut job, out.get(..len).unwrap_or_default());
    }
}

/// Saves the table the refresher fetched, if any, in a transaction of its
/// own (journaled like a batch, with no answers), holding the writer's
/// role for it.
fn save_refreshed_block_services(shared: &Shared, role: &Mutex<Role>) {
    let services = locked(&shared.block_services_to_save).take();
    let Some(services) = services else { return };
    let mut role = lock_role(shared, role);
    match save_block_services(&shared.store, &services) {
        Ok(()) => {
            shared.store.take_effects(&mut role.effects);
            let Role { effects, journal, .. } = &mut *role;
            journal.append(effects, Vec::new());
            journal.after_commit();
        }
        Err(error) => {
            shared.store.discard_effects();
            tracing::warn!(%error, "cannot persist block services");
        }
    }
}

/// Answers every job of durable batches, in as few batched sends
/// ([`crate::mmsg::send_all`]) as there are runs of jobs sharing a socket
/// (all of them, in the daemon: the one reply socket).
fn reply_all(metrics: &Metrics, durable: &mut Answers) {
    let delivered = Instant::now();
    let stages = &metrics.stages;
    for (job, bytes) in durable.iter_mut() {
        let [queue, apply, hold, commit, journal] = job.stamps.stages(job.arrived, delivered);
        stages.queue.observe(queue);
        stages.apply.observe(apply);
        stages.hold.observe(hold);
        stages.commit.observe(commit);
        stages.journal.observe(journal);
        if let Some(ticket) = job.replay.as_mut() {
            ticket.finish(bytes);
        }
        if let Some(kind) = job.kind_index {
            metrics.answered(kind, job.arrived.elapsed(), bytes);
        }
    }
    let mut rest = durable.as_slice();
    while let Some((first, _)) = rest.first() {
        let run = rest.iter().take_while(|(job, _)| Arc::ptr_eq(&job.socket, &first.socket)).count().max(1);
        let (now, later) = rest.split_at(run);
        let datagrams: Vec<(&[u8], SocketAddr)> = now.iter().map(|(job, bytes)| (&bytes[..], job.peer)).collect();
        crate::mmsg::send_all(&first.socket, &datagrams);
        rest = later;
    }
    if !durable.is_empty() {
        stages.reply.observe_duration(delivered.elapsed());
    }
    durable.clear();
}

/// Applies `batch` (emptied) in the open transaction, each job with
/// `Some(new response)` or `None` for a retransmission (answered from the
/// cache, which by the commit holds the original's response). An error
/// comes with the jobs not applied (the failed one and those after it).
fn apply_batch(
    shared: &Shared,
    open: &mut Open<'_>,
    batch: &mut Vec<Job>,
    cache: &RetransmitCache,
    rng: &mut dyn rand::RngCore,
    out: &mut [u8],
) -> Result<(), (StoreError, Vec<Job>)> {
    let table = shared.table();
    let env = Env { now: EggsTime::now(), block_services: &table, durations: shared.durations };
    let mut jobs = batch.drain(..);
    while let Some(job) = jobs.next() {
        let key = (job.peer, job.request_id, job.kind);
        if cache.get(&key).is_some() || open.keys.contains(&key) {
            open.jobs.push((job, None));
            continue;
        }
        let len = match datagram::decode::<ShardRequest>(&job.datagram, Some(shared.shard.cluster_key())) {
            Ok((_, request)) => shared.shard.handle_mutation(
                &shared.store,
                &mut open.txn,
                &env,
                rng,
                &mut open.outcome,
                job.request_id,
                &request,
                out,
            ),
            Err(error) => Ok(shared.shard.encode_error(
                out,
                job.request_id,
                job.kind & KIND_PRIVILEGED != 0,
                ErrorKind::DecodeError,
                &error.to_string(),
            )),
        };
        match len {
            Ok(len) => {
                open.keys.insert(key);
                open.jobs.push((job, Some(Arc::from(out.get(..len).unwrap_or_default()))));
            }
            Err(error) => return Err((error, std::iter::once(job).chain(jobs).collect())),
        }
    }
    Ok(())
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
                let table = Arc::new(BlockServiceTable::new(services.clone()));
                // The writer saves it (all writes are the writer role's).
                *locked(&shared.block_services_to_save) = Some(services);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutations_stages_add_up_to_its_time_and_saturate() {
        let arrived = Instant::now();
        let at = |micros: u64| arrived + Duration::from_micros(micros);
        let stamps = Stamps {
            taken: Stamps::since(arrived, at(40)),
            applied: Stamps::since(arrived, at(75)),
            commit: Stamps::since(arrived, at(95)),
            committed: Stamps::since(arrived, at(140)),
        };
        let stages = stamps.stages(arrived, at(460));
        assert_eq!(stages, [40_000, 35_000, 20_000, 45_000, 320_000]);
        assert_eq!(stages.iter().sum::<u64>(), 460_000, "the stages cover the whole time");
        // Before its arrival: 0; past ~4 s: the most a stamp holds.
        assert_eq!(Stamps::since(at(10), arrived), 0);
        assert_eq!(Stamps::since(arrived, arrived + Duration::from_secs(5)), u32::MAX);
    }

    #[test]
    fn an_io_thread_parks_only_beside_a_receiving_one_until_a_read() {
        let metrics = Metrics::new(&mut daemon::metrics::Registry::default());
        let receivers = Arc::new(Receivers::new(2));
        // Nobody else receiving: no park, whatever arrived.
        receivers.saw(false, &metrics);
        receivers.take_turn(0, &metrics);
        assert_eq!(metrics.io_parked.get(), 0, "the only thread receiving never parks");
        // Thread 0 receives; thread 1, with only mutations arriving, parks
        // (past several looks of PARK_MAX) until a receive that answered
        // a read calls it back; twice.
        for why in ["a read", "another read"] {
            let (sender, done) = std::sync::mpsc::channel();
            let (parking, thread_metrics) = (receivers.clone(), metrics.clone());
            let thread = std::thread::spawn(move || {
                parking.take_turn(1, &thread_metrics);
                let _ = sender.send(());
            });
            std::thread::sleep(PARK_MAX * 3);
            assert!(done.try_recv().is_err(), "thread 1 receives beside thread 0 before {why}");
            receivers.saw(false, &metrics);
            assert!(done.try_recv().is_err(), "mutations only do not call it back");
            receivers.saw(true, &metrics);
            done.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{why} calls it back"));
            thread.join().unwrap();
            // Thread 1 is receiving now, and comes back from it.
            receivers.received(1);
            receivers.saw(false, &metrics);
        }
        assert_eq!(metrics.io_parked.get(), 2, "one park counted each time, not each look");
        assert_eq!(metrics.io_recalled.get(), 2);
        // While it spreads, nobody parks.
        receivers.saw(true, &metrics);
        receivers.take_turn(1, &metrics);
        assert_eq!(metrics.io_parked.get(), 2);
    }

    #[test]
    fn io_threads_commit_their_own_mutations_only_while_commits_are_small() {
        let settle = |mut average: u64, batch_size: usize| {
            for _ in 0..64 {
                average = batch_average_after(average, batch_size);
            }
            average
        };
        // Idle, then 8 waiting clients (~5 per commit): not busy.
        assert!(not_busy(0));
        let eight = settle(0, 5);
        assert!(not_busy(eight), "{eight}");
        // 64 clients (~25 per commit): busy; a few small commits among
        // large ones do not flip it back.
        let sixty_four = settle(eight, 25);
        assert!(!not_busy(sixty_four), "{sixty_four}");
        assert!(!not_busy(batch_average_after(batch_average_after(sixty_four, 3), 2)));
        // The load falls: not busy again.
        assert!(not_busy(settle(sixty_four, 4)));
        // No overflow at the largest batch.
        assert!(!not_busy(settle(0, BATCH_MAX)));
    }
}
