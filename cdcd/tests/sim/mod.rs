//! A deterministic simulation of a cluster: the real CDC (frontend,
//! coordinator, locks, group commit, LMDB store) and real shards (metad's
//! request logic on temporary LMDB environments, in-process), joined by a
//! seeded network that drops, delays, duplicates and reorders datagrams,
//! with a virtual clock (tokio's paused time on one thread) and crashes of
//! the CDC at any moment.
//!
//! Everything runs on one thread in virtual time, so a seed replays the same
//! run: every randomised test prints its seed, and `SIM_SEED=N` reruns one.
//!
//! What a crash is: every CDC task is dropped where it stands and the CDC
//! restarts from its LMDB store (what was committed survives, what was
//! queued for the next commit is lost), exactly like SIGKILL. Datagrams
//! already in the network keep arriving at the shards.

#![allow(dead_code)] // each test file uses a part of the bed

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::model::ShardCalls;
use cdcd::commit::{CommitMode, GroupCommit};
use cdcd::coordinator::{Coordinator, RetryPolicy};
use cdcd::server::{Frontend, ReplySink, Submitted};
use cdcd::shards::{Attempt, ShardReply, Shards, TransportError};
use cdcd::store::{ClientKey, TxnStore};
use cdcd::txn::{Outcome, TxnArgs};
use metad::block_services::BlockServiceTable;
use metad::logic::{Env, MutationEffects, Shard};
use metad::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::datagram;
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::shard::{
    CreateEdenFileReq, LinkEdenFileReq, LinkEdenFileReqHead, SameDirRenameReq, SameDirRenameReqHead, ShardRequest,
    ShardResponse,
};
use wire::{EggsTime, InodeId, InodeType, MacKey, Name, SecretKey, ShardId};

/// The seed of a randomised test: `SIM_SEED` if set, else `default`.
/// Printed, so a failure can be replayed.
pub fn seed(test: &str, default: u64) -> u64 {
    let seed = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    eprintln!("{test}: seed {seed} (replay with SIM_SEED={seed})");
    seed
}

/// Network faults, each a probability per datagram.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub drop_request: f64,
    pub drop_response: f64,
    pub duplicate: f64,
    /// Delivered late (possibly after the CDC gave up on it and resent).
    pub delay: f64,
}

impl Faults {
    pub fn lossy() -> Self {
        Self { drop_request: 0.1, drop_response: 0.1, duplicate: 0.1, delay: 0.15 }
    }
}

/// The virtual clock: eggs time = a fixed base + tokio's (paused) clock.
#[derive(Clone)]
pub struct Clock {
    base: u64,
    start: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl Clock {
    pub fn new() -> Self {
        Self { base: 1_700_000_000_000_000_000, start: tokio::time::Instant::now(), last: Arc::default() }
    }

    /// What [`Clock::now`] would answer next (without taking it).
    pub fn peek(&self) -> u64 {
        let now = self.base + self.start.elapsed().as_nanos() as u64;
        now.max(self.last.load(Ordering::Relaxed) + 1)
    }

    /// Strictly increasing eggs time (ns).
    pub fn now(&self) -> u64 {
        let now = self.base + self.start.elapsed().as_nanos() as u64;
        let last = self.last.fetch_max(now, Ordering::Relaxed);
        if now > last { now } else { self.last.fetch_add(1, Ordering::Relaxed) + 1 }
    }
}

/// One real shard: metad's logic over its own LMDB, plus the retransmission
/// cache metad's writer keeps (keyed like metad's: request id and kind; the
/// CDC is the only sender).
pub struct SimShard {
    _dir: tempfile::TempDir,
    store: Store,
    shard: Shard,
    cache: Mutex<HashMap<(u64, u8), Vec<u8>>>,
}

pub struct SimNet {
    shards: Vec<SimShard>,
    key: MacKey,
    rng: Mutex<StdRng>,
    pub faults: Mutex<Faults>,
    clock: Clock,
    table: BlockServiceTable,
    /// Datagrams delivered, and how many of them executed a mutation.
    pub delivered: AtomicU64,
    pub late: AtomicU64,
    /// Shards that answer nothing (a dead host).
    pub down: Mutex<std::collections::HashSet<ShardId>>,
    /// Mutations executed (not answered from a replay record).
    pub executed_mutations: AtomicU64,
    /// Mutations executed (not answered from the replay record), by kind.
    executed_kinds: Mutex<HashMap<u8, u64>>,
    /// When `executed_mutations` reaches this (0: never), `tripped` is
    /// notified: a test crashes the CDC right after a chosen step.
    pub trip_at: AtomicU64,
    pub tripped: tokio::sync::Notify,
    /// Requests the CDC has in flight now, and the most it had at once.
    pub in_flight: AtomicU64,
    pub most_in_flight: AtomicU64,
    /// Counts [`SimNet::forget_replies`]: a datagram sent before the last
    /// one arrives stale and is dropped, as metad's replay guard drops a
    /// datagram sent before its floor or outside its window.
    epoch: AtomicU64,
}

fn temp_dir() -> tempfile::TempDir {
    // tmpfs when there is one: the shards fsync every commit.
    tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap()
}

impl SimNet {
    pub fn new(shards: u8, seed: u64, faults: Faults, clock: Clock) -> Arc<Self> {
        let secret = SecretKey([0x5a; 16]);
        let shards = (0..shards)
            .map(|id| {
                let dir = temp_dir();
                let store = Store::open(dir.path()).unwrap();
                let shard = Shard::open(&store, id, &secret, EggsTime::new(clock.now())).unwrap();
                SimShard { _dir: dir, store, shard, cache: Mutex::default() }
            })
            .collect();
        Arc::new(Self {
            shards,
            key: MacKey::new(&secret),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            faults: Mutex::new(faults),
            clock,
            table: BlockServiceTable::new(Vec::new()),
            delivered: AtomicU64::new(0),
            late: AtomicU64::new(0),
            down: Mutex::default(),
            executed_mutations: AtomicU64::new(0),
            executed_kinds: Mutex::default(),
            trip_at: AtomicU64::new(0),
            tripped: tokio::sync::Notify::new(),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
        })
    }

    /// How many per-transaction records (create_unlinked_dir, inject,
    /// acquire) every shard holds.
    pub fn remembered(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let txn = shard.store.read_txn().unwrap();
                shard.store.unlinked_dirs.iter(&txn).unwrap().count()
            })
            .sum()
    }

    pub fn shard_count(&self) -> u8 {
        self.shards.len() as u8
    }

    /// How many requests of `kind` the shards executed (refused ones too).
    pub fn executed(&self, kind: wire::shard::ShardKind) -> u64 {
        self.executed_kinds.lock().unwrap().get(&(kind as u8)).copied().unwrap_or(0)
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap().random_bool(p.min(1.0))
    }

    fn random_below(&self, ns: u64) -> Duration {
        Duration::from_nanos(self.rng.lock().unwrap().random_range(0..ns.max(1)))
    }

    /// Executes one datagram at a shard; the response datagram.
    pub fn execute(&self, shard: ShardId, bytes: &[u8]) -> Vec<u8> {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let sim = &self.shards[usize::from(shard)];
        let (header, request) = datagram::decode::<ShardRequest<'_>>(bytes, Some(&self.key)).expect("sim datagram");
        let env =
            Env { now: EggsTime::new(self.clock.now()), block_services: &self.table, durations: Default::default() };
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        if request.kind().is_mutation() {
            let key = (header.request_id(), header.kind);
            if let Some(cached) = sim.cache.lock().unwrap().get(&key) {
                return cached.clone();
            }
            let mut txn = sim.store.write_txn().unwrap();
            let mut rng = StdRng::seed_from_u64(header.request_id());
            let mut effects = MutationEffects::default();
            let len = sim
                .shard
                .handle_mutation(
                    &sim.store,
                    &mut txn,
                    &env,
                    &mut rng,
                    &mut effects,
                    header.request_id(),
                    &request,
                    &mut out,
                )
                .unwrap();
            txn.commit().unwrap();
            out.truncate(len);
            sim.cache.lock().unwrap().insert(key, out.clone());
            *self.executed_kinds.lock().unwrap().entry(header.kind).or_default() += 1;
            let executed = self.executed_mutations.fetch_add(1, Ordering::Relaxed) + 1;
            if executed == self.trip_at.load(Ordering::Relaxed) {
                self.tripped.notify_one();
            }
        } else {
            let txn = sim.store.read_txn().unwrap();
            let len = sim.shard.handle_read(&sim.store, &txn, &env, header.request_id(), &request, &mut out);
            out.truncate(len);
        }
        out
    }

    /// Every shard forgets the answers it recorded: a retransmission is
    /// executed again, as after a shard restart or an outage longer than
    /// metad's replay window.
    pub fn forget_replies(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        for shard in &self.shards {
            shard.cache.lock().unwrap().clear();
        }
    }

    /// Delivers a datagram sent in `epoch` late, unless it is stale by then.
    fn deliver_late(&self, epoch: u64, shard: ShardId, bytes: &[u8]) {
        self.late.fetch_add(1, Ordering::Relaxed);
        if self.epoch.load(Ordering::Relaxed) == epoch {
            self.execute(shard, bytes);
        }
    }

    /// A client's rename within `dir` (a shard-local request); whether the
    /// shard did it.
    pub fn rename(&self, dir: InodeId, old: &str, new: &str) -> bool {
        let head = SameDirRenameReqHead { parent: dir };
        let request = ShardRequest::SameDirRename(SameDirRenameReq {
            head,
            old_name: Name::new(old.as_bytes()).unwrap(),
            new_name: Name::new(new.as_bytes()).unwrap(),
        });
        self.call(dir.shard(), &request, |response| matches!(response, ShardResponse::SameDirRename(_)))
    }

    fn encode(&self, request_id: u64, request: &ShardRequest<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = datagram::encode(&mut buf, request_id, request, Some(&self.key)).unwrap();
        buf.truncate(len);
        buf
    }

    /// A request outside the fault model (clients' own shard calls, checks).
    pub fn call<T>(&self, shard: ShardId, request: &ShardRequest<'_>, read: impl FnOnce(ShardResponse<'_>) -> T) -> T {
        let request_id = self.rng.lock().unwrap().random();
        let response = self.execute(shard, &self.encode(request_id, request));
        let (_, decoded) = datagram::decode::<ShardResponse<'_>>(&response, Some(&self.key)).unwrap();
        read(decoded)
    }

    /// Creates and links a file `parent/name` (as a client would); its inode,
    /// or `None` when the name is taken.
    pub fn create_file(&self, parent: InodeId, name: &str) -> Option<InodeId> {
        let shard = parent.shard();
        let request = ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File });
        let (inode, cookie) = self.call(shard, &request, |response| match response {
            ShardResponse::CreateEdenFile(resp) => (resp.inode, resp.cookie),
            other => panic!("create_eden_file: {other:?}"),
        });
        let head = LinkEdenFileReqHead { inode, cookie, parent };
        let request = ShardRequest::LinkEdenFile(LinkEdenFileReq { head, name: Name::new(name.as_bytes()).unwrap() });
        self.call(shard, &request, |response| matches!(response, ShardResponse::LinkEdenFile(_))).then_some(inode)
    }
}

impl ShardCalls for SimNet {
    fn call<T>(&self, shard: ShardId, request: &ShardRequest<'_>, read: impl FnOnce(ShardResponse<'_>) -> T) -> T {
        SimNet::call(self, shard, request, read)
    }

    fn shard_count(&self) -> u8 {
        SimNet::shard_count(self)
    }
}

/// The CDC's shard requests through the faulty network.
#[derive(Clone)]
pub struct NetShards(pub Arc<SimNet>);

impl Shards for NetShards {
    fn knows(&self, shard: ShardId) -> bool {
        shard < self.0.shard_count()
    }

    async fn request(&self, attempt: Attempt<'_, '_>) -> Result<ShardReply, TransportError> {
        let Attempt { shard, request_id, request, timeout } = attempt;
        let net = &self.0;
        let now = net.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        net.most_in_flight.fetch_max(now, Ordering::Relaxed);
        let _leaving = InFlight(net);
        if shard >= net.shard_count() || net.down.lock().unwrap().contains(&shard) {
            // Nobody listens there.
            tokio::time::sleep(timeout).await;
            return Err(TransportError::Timeout(shard));
        }
        let faults = *net.faults.lock().unwrap();
        let bytes = net.encode(request_id, request);
        // Half a millisecond of network each way, plus jitter.
        let one_way = Duration::from_micros(500) + net.random_below(500_000);
        let epoch = net.epoch.load(Ordering::Relaxed);
        if net.chance(faults.duplicate) {
            let (copy, net2) = (bytes.clone(), net.clone());
            let later = net.random_below(timeout.as_nanos() as u64 * 3 + 1);
            tokio::spawn(async move {
                tokio::time::sleep(later).await;
                net2.deliver_late(epoch, shard, &copy);
            });
        }
        if net.chance(faults.drop_request) {
            tokio::time::sleep(timeout).await;
            return Err(TransportError::Timeout(shard));
        }
        if net.chance(faults.delay) {
            // Arrives after the attempt timed out: executed late, answer lost.
            let late = timeout + net.random_below(timeout.as_nanos() as u64 * 2 + 1);
            let net2 = net.clone();
            tokio::spawn(async move {
                tokio::time::sleep(late).await;
                net2.deliver_late(epoch, shard, &bytes);
            });
            tokio::time::sleep(timeout).await;
            return Err(TransportError::Timeout(shard));
        }
        tokio::time::sleep(one_way.min(timeout)).await;
        let response = net.execute(shard, &bytes);
        if net.chance(faults.drop_response) || one_way * 2 > timeout {
            tokio::time::sleep(timeout.saturating_sub(one_way)).await;
            return Err(TransportError::Timeout(shard));
        }
        tokio::time::sleep(one_way).await;
        let (_, decoded) = datagram::decode::<ShardResponse<'_>>(&response, Some(&net.key))
            .map_err(|_| TransportError::Timeout(shard))?;
        ShardReply::from_response(request.kind(), &decoded).ok_or(TransportError::Timeout(shard))
    }
}

/// Counts a request out of [`SimNet::in_flight`] however it ends.
struct InFlight<'a>(&'a SimNet);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The virtual time one commit of the CDC's store takes (its fsync).
pub const COMMIT_FSYNC: Duration = Duration::from_micros(700);

/// Retries at simulation pace: fast, and a read deadline long enough that
/// a lossy network does not fail transactions.
pub fn sim_retry() -> RetryPolicy {
    RetryPolicy {
        timeout_initial: Duration::from_millis(20),
        timeout_max: Duration::from_millis(200),
        read_deadline: Duration::from_secs(600),
    }
}

/// Answers the CDC gave, by client request.
#[derive(Default)]
pub struct Answers {
    outcomes: Mutex<HashMap<ClientKey, Outcome>>,
    /// Notified at every answer the CDC gives.
    pub given: tokio::sync::Notify,
}

/// A running CDC incarnation.
struct Incarnation {
    frontend: Arc<Frontend<NetShards>>,
    committer: tokio::task::JoinHandle<()>,
}

/// The simulated cluster.
pub struct Sim {
    pub net: Arc<SimNet>,
    pub clock: Clock,
    store: Arc<TxnStore>,
    _cdc_dir: tempfile::TempDir,
    answers: Arc<Answers>,
    cdc: Mutex<Option<Incarnation>>,
    seed: u64,
    pub crashes: AtomicU64,
    retry: RetryPolicy,
}

impl Sim {
    pub fn new(seed: u64, shards: u8, faults: Faults) -> Arc<Self> {
        Self::with_retry(seed, shards, faults, sim_retry())
    }

    pub fn with_retry(seed: u64, shards: u8, faults: Faults, retry: RetryPolicy) -> Arc<Self> {
        let clock = Clock::new();
        let net = SimNet::new(shards, seed, faults, clock.clone());
        let dir = temp_dir();
        let clock_for_store = clock.clone();
        let store =
            Arc::new(TxnStore::open(dir.path(), false).unwrap().with_clock(Arc::new(move || clock_for_store.now())));
        let sim = Arc::new(Self {
            net,
            clock,
            store,
            _cdc_dir: dir,
            answers: Arc::default(),
            cdc: Mutex::new(None),
            seed,
            crashes: AtomicU64::new(0),
            retry,
        });
        sim.start_cdc();
        sim
    }

    fn start_cdc(&self) {
        let commits = GroupCommit::new(self.store.clone(), CommitMode::Inline { fsync: COMMIT_FSYNC });
        let committer = tokio::spawn(commits.clone().run());
        let shards: Vec<ShardId> = (0..self.net.shard_count()).collect();
        let seed = self.seed ^ self.crashes.load(Ordering::Relaxed);
        let coordinator =
            Arc::new(Coordinator::new(NetShards(self.net.clone()), commits, shards, self.retry, Some(seed)));
        let answers = self.answers.clone();
        let sink: ReplySink = Arc::new(move |client, _args, outcome| {
            answers.outcomes.lock().unwrap().insert(*client, outcome.clone());
            answers.given.notify_one();
        });
        let frontend = Frontend::new(coordinator, sink);
        frontend.resume().unwrap();
        *self.cdc.lock().unwrap() = Some(Incarnation { frontend, committer });
    }

    /// SIGKILL and restart: every CDC task stops where it is (records
    /// queued for a commit that has not ended are lost). Half the crashes,
    /// by the seed, also make the shards forget their replay records, as a
    /// long outage would: the restarted CDC's retransmissions then run the
    /// real handlers again.
    pub async fn crash(&self) {
        let forget = self.net.chance(0.5);
        self.crash_forgetting(forget).await;
    }

    /// [`Sim::crash`], choosing whether the shards forget their replies.
    pub async fn crash_forgetting(&self, forget: bool) {
        if let Some(old) = self.cdc.lock().unwrap().take() {
            old.frontend.abort_all();
            old.committer.abort();
        }
        if forget {
            self.net.forget_replies();
        }
        // Let the aborted tasks drop (their locks and queued commits go).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        self.crashes.fetch_add(1, Ordering::Relaxed);
        self.start_cdc();
    }

    /// Notified at every answer the CDC gives.
    pub fn answers(&self) -> &Answers {
        &self.answers
    }

    pub fn frontend(&self) -> Arc<Frontend<NetShards>> {
        self.cdc.lock().unwrap().as_ref().unwrap().frontend.clone()
    }

    /// Sends `args` as `client` until it is answered (retransmitting every
    /// `resend`), like a client over UDP.
    pub async fn request(&self, client: ClientKey, args: &TxnArgs) -> Outcome {
        let resend = Duration::from_millis(300);
        loop {
            // No frontend while the CDC restarts: like a datagram lost.
            let frontend = self.cdc.lock().unwrap().as_ref().map(|cdc| cdc.frontend.clone());
            match frontend.map(|frontend| frontend.submit(client, args.clone())) {
                Some(Submitted::Answer(outcome)) => return outcome,
                Some(Submitted::Running | Submitted::Started(_) | Submitted::Busy | Submitted::StorageError(_))
                | None => {}
            }
            let waited = tokio::time::Instant::now();
            while waited.elapsed() < resend {
                if let Some(outcome) = self.answers.outcomes.lock().unwrap().remove(&client) {
                    return outcome;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// The shard the next transaction's mkdir would create its directory
    /// on (the coordinator's placement, with every shard a new-directory
    /// shard).
    pub fn next_new_dir_shard(&self) -> ShardId {
        // Ids are at least the clock's time (standing still until the
        // caller awaits).
        let txn = self.store.next_txn_id().max(self.clock.peek().max(1));
        (cdcd::txn::mix64(txn) % u64::from(self.net.shard_count())) as ShardId
    }

    /// Waits until the CDC has nothing running.
    pub async fn quiesce(&self) {
        while self.frontend().in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
