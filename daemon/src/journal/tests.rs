use super::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

const DATABASES: [&str; 3] = ["alpha", "beta", "gamma"];

type Model = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

fn open_env(dir: &Path) -> (Env<WithoutTls>, Vec<Database<Bytes, Bytes>>) {
    let mut options = heed::EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(1 << 30).max_dbs(4);
    let env = unsafe { options.open(dir) }.unwrap();
    let mut txn = env.write_txn().unwrap();
    let dbs = DATABASES.iter().map(|name| env.create_database(&mut txn, Some(name)).unwrap()).collect();
    txn.commit().unwrap();
    (env, dbs)
}

fn contents(env: &Env<WithoutTls>, dbs: &[Database<Bytes, Bytes>]) -> Model {
    let txn = env.read_txn().unwrap();
    dbs.iter()
        .map(|db| db.iter(&txn).unwrap().map(|item| item.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec())).collect())
        .collect()
}

/// The batch whose last record has this sequence number sleeps
/// [`SLOW_SYNC`] before its write and sync (0: none does).
static SLOW_BATCH: AtomicU64 = AtomicU64::new(0);
const SLOW_SYNC: Duration = Duration::from_millis(300);

/// The same for [`pace_holds_the_writer_while_every_lane_is_busy`] (its
/// own, so that the tests running at once do not reset each other's).
static HELD_BATCH: AtomicU64 = AtomicU64::new(0);

/// Called by a sync lane before it writes a batch.
pub(super) fn before_sync(last: u64) {
    if last != 0 && (SLOW_BATCH.load(Ordering::Relaxed) == last || HELD_BATCH.load(Ordering::Relaxed) == last) {
        std::thread::sleep(SLOW_SYNC);
    }
}

fn seeded() -> StdRng {
    let seed = rand::rng().next_u64();
    eprintln!("seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// The journal's side of a test: what was delivered, in order.
struct Harness {
    env: Env<WithoutTls>,
    dbs: Vec<Database<Bytes, Bytes>>,
    journal: Journal<u64>,
    delivered: Arc<Mutex<Vec<u64>>>,
    model: Model,
    /// The model after each commit (index = commit number).
    history: Vec<Model>,
    effects: Effects,
    commits: u64,
    /// Commits that wrote a record (some change nothing: deletes of
    /// missing keys only).
    records: u64,
    /// The commit number of each record, in order (the first record of a
    /// new journal has sequence number 1).
    record_commits: Vec<u64>,
}

static FAILURES: AtomicU64 = AtomicU64::new(0);

fn count_failure(error: &JournalError) {
    eprintln!("journal failure: {error}");
    FAILURES.fetch_add(1, Ordering::Relaxed);
}

impl Harness {
    fn new(dir: &Path, bytes: u64, period: Duration) -> Self {
        Self::with_gather(dir, bytes, period, false)
    }

    fn with_gather(dir: &Path, bytes: u64, period: Duration, gather: bool) -> Self {
        let config =
            Config { bytes, checkpoint_period: period, gather, on_failure: count_failure, ..Config::default() };
        Self::with_config(dir, config, JournalMetrics::new())
    }

    /// A journal of `bytes` whose period never passes during a test: it
    /// checkpoints when asked, or when its record area passes half used.
    fn checkpointing_on_demand(dir: &Path, bytes: u64) -> (Self, JournalMetrics) {
        let metrics = JournalMetrics::new();
        let config = Config {
            bytes,
            checkpoint_period: Duration::from_secs(3600),
            on_failure: count_failure,
            ..Config::default()
        };
        (Self::with_config(dir, config, metrics.clone()), metrics)
    }

    fn with_config(dir: &Path, config: Config, metrics: JournalMetrics) -> Self {
        let (env, dbs) = open_env(dir);
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let sink = delivered.clone();
        let journal = Journal::start(&env, config, metrics, move |payloads: Vec<u64>| {
            sink.lock().unwrap().extend(payloads);
        })
        .unwrap();
        let model = vec![BTreeMap::new(); DATABASES.len()];
        Self {
            env,
            dbs,
            journal,
            delivered,
            history: vec![model.clone()],
            model,
            effects: Effects::default(),
            commits: 0,
            records: 0,
            record_commits: Vec::new(),
        }
    }

    /// One write transaction of a few random ops, journaled.
    fn commit(&mut self, rng: &mut StdRng) {
        let mut txn = self.env.write_txn().unwrap();
        for _ in 0..rng.random_range(1..8) {
            let index = rng.random_range(0..DATABASES.len());
            let db = self.dbs[index];
            let key = rng.random_range(0u32..300).to_be_bytes().to_vec();
            match rng.random_range(0..100) {
                0 if index == 2 => {
                    db.clear(&mut txn).unwrap();
                    self.effects.clear(index as u8);
                    self.model[index].clear();
                }
                1..30 => {
                    if db.delete(&mut txn, &key).unwrap() {
                        self.effects.delete(index as u8, &key);
                    }
                    self.model[index].remove(&key);
                }
                _ => {
                    let len =
                        if rng.random_ratio(1, 20) { rng.random_range(2500..9000) } else { rng.random_range(1..200) };
                    let mut value = vec![0u8; len];
                    rng.fill_bytes(&mut value);
                    db.put(&mut txn, &key, &value).unwrap();
                    self.effects.put(index as u8, &key, &value);
                    self.model[index].insert(key, value);
                }
            }
        }
        txn.commit().unwrap();
        self.commits += 1;
        if !self.effects.is_empty() {
            self.records += 1;
            self.record_commits.push(self.commits);
        }
        self.history.push(self.model.clone());
        self.journal.append(&mut self.effects, self.commits);
        self.journal.after_commit();
    }

    /// Whether the last commit wrote a record.
    fn effects_of_last_commit(&self) -> bool {
        self.history.len() >= 2 && self.history[self.history.len() - 1] != self.history[self.history.len() - 2]
    }

    /// Waits until every commit is delivered (durable).
    fn wait_durable(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.delivered.lock().unwrap().len() < self.commits as usize {
            assert!(Instant::now() < deadline, "commits not made durable");
            self.journal.after_commit();
            std::thread::sleep(Duration::from_millis(1));
        }
        let delivered = self.delivered.lock().unwrap();
        assert!(delivered.iter().copied().eq(1..=self.commits), "delivered in commit order");
    }
}

/// Copies the store's two files into a new folder: the disk as the next
/// start sees it.
fn disk_copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for name in ["data.mdb", FILE_NAME] {
        std::fs::copy(from.join(name), to.path().join(name)).unwrap();
    }
    to
}

/// Restores, checks, opens and replays the store in `dir`.
fn recover(dir: &Path) -> (Model, Replayed) {
    let restored = restore(dir).unwrap().expect("a journal");
    crate::lmdb::check(dir).unwrap_or_else(|damage| panic!("after the restore: {damage}"));
    let (env, dbs) = open_env(dir);
    let replayed = restored.replay(&env, &dbs).unwrap();
    (contents(&env, &dbs), replayed)
}

#[test]
fn effects_round_trip_and_a_rolled_back_mutation_leaves_none() {
    let mut effects = Effects::default();
    effects.put(0, b"key", b"value");
    effects.delete(2, b"gone");
    let mark = effects.mark();
    effects.put(1, b"rolled", b"back");
    effects.clear(1);
    effects.truncate_to(mark);
    effects.clear(7);
    effects.put(3, b"", &[9u8; 5000]);
    let ops: Vec<Op<'_>> = effects.ops().map(Result::unwrap).collect();
    assert_eq!(
        ops,
        vec![
            Op::Put { db: 0, key: b"key", value: b"value" },
            Op::Delete { db: 2, key: b"gone" },
            Op::Clear { db: 7 },
            Op::Put { db: 3, key: b"", value: &[9u8; 5000] },
        ]
    );
    assert_eq!(effects.len(), 4);
    effects.reset();
    assert!(effects.is_empty() && effects.ops().next().is_none());
}

#[test]
fn garbage_decodes_to_an_error_never_a_panic() {
    let mut effects = Effects::default();
    effects.put(0, b"key", b"value");
    effects.delete(1, b"k");
    let bytes = effects.as_bytes().to_vec();
    // Every cut of a valid buffer ends in an error (or is whole).
    for len in (1..bytes.len()).filter(|&len| len != 2 + 8 + 3 + 5) {
        let ops: Vec<_> = decode(&bytes[..len]).collect();
        assert!(ops.last().unwrap().is_err(), "cut at {len}: {ops:?}");
        assert_eq!(ops.iter().filter(|op| op.is_err()).count(), 1);
    }
    // An unknown kind; a length of 4 GiB (checked, not allocated).
    assert!(decode(&[9, 0]).next().unwrap().is_err());
    assert!(decode(&[OP_PUT, 0, 255, 255, 255, 255, 0, 0, 0, 0]).next().unwrap().is_err());
    let mut rng = seeded();
    for _ in 0..20_000 {
        let mut garbage = vec![0u8; rng.random_range(0..64)];
        rng.fill_bytes(&mut garbage);
        let ops: Vec<_> = decode(&garbage).collect();
        assert!(ops.iter().rev().skip(1).all(Result::is_ok), "only the last item may be an error");
    }
}

// A SIGKILL: the page cache (the files as written) survives. The restart
// restores the checkpoint and replays up to the last record.
#[test]
fn a_restart_after_a_kill_replays_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(dir.path(), 1 << 20, Duration::from_secs(3600));
    let mut rng = seeded();
    for _ in 0..40 {
        harness.commit(&mut rng);
    }
    harness.journal.checkpoint_now();
    let before = harness.records;
    for _ in 0..60 {
        harness.commit(&mut rng);
    }
    harness.wait_durable();
    let disk = disk_copy(dir.path());
    let (state, replayed) = recover(disk.path());
    assert_eq!(replayed.records as u64, harness.records - before, "the records after the checkpoint");
    assert!(state == harness.model, "the store equals the model");
    // The recovered store opens again as it is (its journal checkpointed).
    let (state, replayed) = recover(disk.path());
    assert_eq!(replayed.records, 0);
    assert!(state == harness.model);
}

#[test]
fn a_torn_last_record_is_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(dir.path(), 1 << 20, Duration::from_secs(3600));
    let mut rng = seeded();
    while harness.records < 30 || !harness.effects_of_last_commit() {
        harness.commit(&mut rng);
    }
    harness.wait_durable();
    let disk = disk_copy(dir.path());
    tear_last_record(disk.path(), &mut rng);
    let (state, replayed) = recover(disk.path());
    assert_eq!(replayed.records as u64, harness.records - 1);
    let before_last = harness.history.len() - 2;
    assert!(state == harness.history[before_last], "every whole record, not the torn one");
}

/// Overwrites the second half of the journal's last record with garbage.
fn tear_last_record(dir: &Path, rng: &mut StdRng) {
    let journal = JournalFile::open(&dir.join(FILE_NAME)).unwrap().unwrap();
    let checkpoint = journal.checkpoint().unwrap();
    let (records, end) = journal.scan(&checkpoint);
    let last = records.last().expect("records");
    let size = record_bytes(last.payload.len());
    let start = end - size;
    let mut garbage = vec![0u8; (size / 2) as usize];
    rng.fill_bytes(&mut garbage);
    journal.file.write_all_at(&garbage, journal.offset(start + size - size / 2)).unwrap();
}

// A small journal, checkpoints every few milliseconds: the records wrap
// around the area many times, and the area holds stale records of earlier
// laps (and of the epoch before the restart) right after the last current
// one; the values change on every commit, so replaying one would show.
#[test]
fn records_wrap_around_and_stale_laps_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    // (With gathering on: it holds syncs, never loses or reorders them.)
    let mut harness = Harness::with_gather(dir.path(), JOURNAL_BYTES_MIN, Duration::from_millis(5), true);
    let mut rng = seeded();
    let area = JOURNAL_BYTES_MIN - AREA_START;
    for round in 0..1500 {
        harness.commit(&mut rng);
        if round % 50 == 0 {
            harness.wait_durable();
        }
    }
    harness.wait_durable();
    let written = harness.journal.shared.lock().head;
    assert!(written > 5 * area, "the records wrapped around ({written} bytes in a {area}-byte area)");
    assert!(harness.journal.checkpoints() > 5);
    let disk = disk_copy(dir.path());
    let (state, _) = recover(disk.path());
    assert!(state == harness.model);
}

// With checkpoints only on demand (an hour apart), a journal of a few
// pages fills: a sync lane forces a checkpoint and waits for it,
// and every commit is still made durable, in order.
#[test]
fn a_full_journal_forces_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(dir.path(), JOURNAL_BYTES_MIN, Duration::from_secs(3600));
    let mut rng = seeded();
    for _ in 0..400 {
        harness.commit(&mut rng);
    }
    harness.wait_durable();
    assert!(harness.journal.checkpoints() >= 2, "checkpoints: {}", harness.journal.checkpoints());
    assert_eq!(FAILURES.load(Ordering::Relaxed), 0);
    let disk = disk_copy(dir.path());
    let (state, _) = recover(disk.path());
    assert!(state == harness.model);
}

/// A power loss after a checkpoint, as LMDB's file may show it: every page
/// past the two meta pages that differs from `synced` (the file as the
/// checkpoint left it) or that `kept` refuses (by page number) holds
/// garbage, and both meta slots hold the newest meta page (meta ahead of
/// data, the worst case). Returns the pages garbled.
fn lose_power(path: &Path, synced: &[u8], kept: impl Fn(u64) -> bool, rng: &mut StdRng) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let page = PAGE as usize;
    let mut garbled = 0;
    for (number, chunk) in bytes.chunks_mut(page).enumerate().skip(2) {
        let at = number * page;
        if !kept(number as u64) || synced.get(at..at + page) != Some(&chunk[..]) {
            rng.fill_bytes(chunk);
            garbled += 1;
        }
    }
    let metas = [&bytes[..META_COPY_BYTES], &bytes[page..page + META_COPY_BYTES]];
    let txnids = metas.map(|meta| crate::lmdb::meta_txnid(meta).unwrap());
    let newest: Vec<u8> = bytes[if txnids[1] > txnids[0] { page } else { 0 }..][..page].to_vec();
    for slot in 0..2 {
        bytes[slot * page..(slot + 1) * page].copy_from_slice(&newest);
        crate::lmdb::set_meta_identity(&mut bytes[slot * page..], slot as u64, txnids[0].max(txnids[1]));
    }
    std::fs::write(path, &bytes).unwrap();
    garbled
}

/// Simulated power loss. The disk keeps what was synced: `data.mdb` as of
/// the checkpoint's sync, except that every page written since may hold
/// anything (here: garbage) and the meta pages are the newest one (meta
/// ahead of data, the worst case); the journal's last record is torn.
/// Recovery must give exactly the state of every whole record.
#[test]
fn power_loss_after_a_checkpoint_recovers_every_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(dir.path(), 4 << 20, Duration::from_secs(3600));
    let mut rng = seeded();
    for _ in 0..60 {
        harness.commit(&mut rng);
    }
    harness.journal.checkpoint_now();
    let before = harness.records;
    // The test is the only writer and waited for the checkpoint: the file
    // is what the checkpoint's sync wrote.
    let synced = std::fs::read(dir.path().join("data.mdb")).unwrap();
    while harness.commits < 460 || !harness.effects_of_last_commit() {
        harness.commit(&mut rng);
    }
    harness.wait_durable();
    let disk = disk_copy(dir.path());
    let garbled = lose_power(&disk.path().join("data.mdb"), &synced, |_| true, &mut rng);
    assert!(garbled > 20, "pages written after the checkpoint: {garbled}");
    tear_last_record(disk.path(), &mut rng);
    let (state, replayed) = recover(disk.path());
    assert_eq!(replayed.records as u64, harness.records - before - 1, "every whole record after the checkpoint");
    let expected = &harness.history[harness.history.len() - 2];
    assert!(state == *expected, "the store equals the state of every whole record");
    // The recovered store opens again as it is (its journal checkpointed).
    let (state, replayed) = recover(disk.path());
    assert_eq!(replayed.records, 0);
    assert!(state == *expected);
}

// Two lanes: the first batch's sync is slow, the second's (a later commit)
// finishes first. The later commit's answer waits for the earlier one:
// answers go out in commit order and only once everything before them is
// durable.
#[test]
fn a_later_batch_synced_first_waits_for_the_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = JournalMetrics::new();
    let config = Config { bytes: 1 << 20, checkpoint_period: Duration::from_secs(3600), lanes: 2, ..Config::default() };
    let mut harness = Harness::with_config(dir.path(), config, metrics.clone());
    let mut rng = seeded();
    // The first commit that writes a record is record 1: its batch is slow.
    SLOW_BATCH.store(1, Ordering::Relaxed);
    while harness.records < 1 {
        harness.commit(&mut rng);
    }
    // Its slow sync cannot end before this plus SLOW_SYNC.
    let appended = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    let first = harness.commits;
    while harness.records < 2 {
        harness.commit(&mut rng);
    }
    // The second batch went to the other lane and is synced…
    let deadline = Instant::now() + SLOW_SYNC / 2;
    while metrics.syncs.get() < 1 {
        assert!(Instant::now() < deadline, "the second batch was not synced while the first one's sync ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    // …and nothing is answered before the first batch is durable, except
    // commits before it that changed nothing.
    let delivered = harness.delivered.lock().unwrap().clone();
    // (On a machine so busy that the first batch's slow sync could have
    // ended by now, the order is not observable: no verdict.)
    if appended.elapsed() < SLOW_SYNC {
        assert!(
            delivered.iter().all(|&commit| commit < first),
            "answered before an earlier record was durable: {delivered:?}"
        );
    } else {
        eprintln!("the machine was too slow to observe the order this time");
    }
    harness.wait_durable();
    SLOW_BATCH.store(0, Ordering::Relaxed);
    assert_eq!(metrics.syncs.get(), 2);
}

// A batch that never reached the disk while a later one did (two lanes,
// then a power loss): the replay stops at the hole, and the later records
// are never replayed, then or after the next start.
#[test]
fn a_hole_before_later_records_stops_the_replay_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(dir.path(), 4 << 20, Duration::from_secs(3600));
    let mut rng = seeded();
    while harness.records < 60 {
        harness.commit(&mut rng);
        if rng.random_ratio(1, 4) {
            harness.wait_durable();
        }
    }
    harness.wait_durable();
    let disk = disk_copy(dir.path());
    let journal = JournalFile::open(&disk.path().join(FILE_NAME)).unwrap().unwrap();
    let checkpoint = journal.checkpoint().unwrap();
    assert_eq!(checkpoint.next_seq, 1, "no checkpoint since the start");
    // Find record `hole`'s position by scanning, then garble its header.
    let hole = rng.random_range(2..=harness.records) as usize;
    let mut position = checkpoint.position;
    for seq in 1..hole as u64 {
        let candidates = [position, align_up(position, PAGE)];
        let (at, record) = candidates
            .iter()
            .find_map(|&at| journal.record_at(at, checkpoint.position, checkpoint.epoch, seq).map(|r| (at, r)))
            .expect("the records before the hole");
        position = at + record_bytes(record.payload.len());
    }
    let at = [position, align_up(position, PAGE)]
        .into_iter()
        .find(|&at| journal.record_at(at, checkpoint.position, checkpoint.epoch, hole as u64).is_some())
        .expect("the hole's record");
    let mut garbage = vec![0u8; RECORD_HEADER_BYTES];
    rng.fill_bytes(&mut garbage);
    journal.file.write_all_at(&garbage, journal.offset(at)).unwrap();
    drop(journal);
    let (state, replayed) = recover(disk.path());
    assert_eq!(replayed.records, hole - 1, "the records before the hole (record {hole} of {})", harness.records);
    let before_hole = harness.record_commits[hole - 1] as usize - 1;
    assert!(state == harness.history[before_hole], "the state of every record before the hole");
    let (state, replayed) = recover(disk.path());
    assert_eq!(replayed.records, 0);
    assert!(state == harness.history[before_hole]);
}

// The writer's pace (session 10): while every sync lane is busy a record
// would only queue, so the writer is told to keep its transaction open
// (and apply what arrives meanwhile); the end of the sync wakes it, and
// then it is told to commit.
#[test]
fn pace_holds_the_writer_while_every_lane_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { bytes: 1 << 20, checkpoint_period: Duration::from_secs(3600), lanes: 1, ..Config::default() };
    let mut harness = Harness::with_config(dir.path(), config, JournalMetrics::new());
    let wakes = Arc::new(AtomicU64::new(0));
    let counted = wakes.clone();
    harness.journal.on_lane_free(move || {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    let mut rng = seeded();
    assert_eq!(harness.journal.pace(1), Pace::Now, "an idle journal takes a record at once");
    // Record 3's batch (alone: everything before it is durable) syncs slowly.
    HELD_BATCH.store(3, Ordering::Relaxed);
    while harness.records < 2 {
        harness.commit(&mut rng);
    }
    harness.wait_durable();
    let woken = wakes.load(Ordering::SeqCst);
    assert!(woken >= 1, "each sync's end wakes the writer");
    while harness.records < 3 {
        harness.commit(&mut rng);
    }
    // Once a lane has taken it, its one lane is busy.
    let deadline = Instant::now() + SLOW_SYNC / 2;
    let held = loop {
        match harness.journal.pace(1) {
            Pace::Until(at) => break at,
            Pace::Now => {
                assert!(Instant::now() < deadline, "the writer was told to commit while the only lane was busy");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    assert!(held > Instant::now() && held <= Instant::now() + HOLD_MAX, "held for at most HOLD_MAX");
    assert_eq!(wakes.load(Ordering::SeqCst), woken, "no wake-up while the sync runs");
    harness.wait_durable();
    HELD_BATCH.store(0, Ordering::Relaxed);
    assert!(wakes.load(Ordering::SeqCst) > woken, "the end of the sync woke the writer");
    assert_eq!(harness.journal.pace(1), Pace::Now, "a free lane: commit now");
}

// The lanes deliver (session 13: no journal thread between the writer and
// the lanes): while one lane thread hands payloads to a slow `deliver`
// (answers being sent), another takes and syncs the records appended
// meanwhile, so a delivery never holds back the next sync; with one lane
// too (there is a lane thread more than lanes).
#[test]
fn a_slow_delivery_does_not_hold_back_the_next_sync() {
    slow_delivery_with_lanes(2);
}

#[test]
fn a_slow_delivery_does_not_hold_back_the_next_sync_with_one_lane() {
    slow_delivery_with_lanes(1);
}

fn slow_delivery_with_lanes(lanes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (env, dbs) = open_env(dir.path());
    let metrics = JournalMetrics::new();
    let config = Config { bytes: 1 << 20, checkpoint_period: Duration::from_secs(3600), lanes, ..Config::default() };
    // The first delivery blocks until `release` is set.
    let gate = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
    let sink = gate.clone();
    let journal = Journal::start(&env, config, metrics.clone(), move |payloads: Vec<u64>| {
        let (lock, condvar) = &*sink;
        let mut guard = lock.lock().unwrap();
        let first = guard.0.is_empty();
        guard.0.extend(payloads);
        condvar.notify_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while first && !guard.1 && Instant::now() < deadline {
            guard = condvar.wait_timeout(guard, Duration::from_millis(10)).unwrap().0;
        }
    })
    .unwrap();
    let mut effects = Effects::default();
    let mut commit = |number: u64| {
        let mut txn = env.write_txn().unwrap();
        let key = number.to_be_bytes();
        dbs[0].put(&mut txn, &key, b"value").unwrap();
        effects.put(0, &key, b"value");
        txn.commit().unwrap();
        journal.append(&mut effects, number);
        journal.after_commit();
    };
    let (lock, condvar) = &*gate;
    commit(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut guard = lock.lock().unwrap();
    while guard.0.is_empty() {
        assert!(Instant::now() < deadline, "the first commit was never delivered");
        guard = condvar.wait_timeout(guard, Duration::from_millis(10)).unwrap().0;
    }
    drop(guard);
    // The first delivery is now blocked; the next records still get synced.
    commit(2);
    commit(3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !journal.is_durable() {
        assert!(Instant::now() < deadline, "records appended during a delivery were not synced until it ended");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(lock.lock().unwrap().0, vec![1], "nothing else delivered while the first delivery runs");
    lock.lock().unwrap().1 = true;
    condvar.notify_all();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock.lock().unwrap().0.len() < 3 {
        assert!(Instant::now() < deadline, "the later commits were never delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(lock.lock().unwrap().0, vec![1, 2, 3], "delivered in commit order");
    assert!(metrics.syncs.get() >= 2);
}

/// Waits (at most 20 s) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// Session 14: a record handed over before its transaction's commit is
// written and synced at once, but its answer waits for the commit.
#[test]
fn a_record_appended_before_its_commit_is_answered_only_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(dir.path(), 1 << 20, Duration::from_secs(3600));
    let mut txn = harness.env.write_txn().unwrap();
    harness.dbs[0].put(&mut txn, b"key", b"value").unwrap();
    harness.effects.put(0, b"key", b"value");
    harness.journal.append_before_commit(&mut harness.effects, 1, 1);
    wait_until("the record synced", || harness.journal.is_durable());
    std::thread::sleep(Duration::from_millis(50));
    assert!(harness.delivered.lock().unwrap().is_empty(), "answered before its transaction committed");
    txn.commit().unwrap();
    harness.journal.committed();
    wait_until("the answer delivered", || !harness.delivered.lock().unwrap().is_empty());
    assert_eq!(*harness.delivered.lock().unwrap(), vec![1]);
}

// Session 14: a transaction whose commit fails after its record was
// handed over is never replayed, whether a lane had taken (and synced)
// its record or not; what follows it is.
#[test]
fn a_failed_commit_after_its_append_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(dir.path(), 1 << 20, Duration::from_secs(3600));
    let mut rng = seeded();
    for _ in 0..10 {
        harness.commit(&mut rng);
    }
    harness.wait_durable();
    let rounds = 20u64;
    for round in 0..rounds {
        let key = format!("voided-{round}");
        let mut txn = harness.env.write_txn().unwrap();
        harness.dbs[1].put(&mut txn, key.as_bytes(), b"never committed").unwrap();
        harness.effects.put(1, key.as_bytes(), b"never committed");
        harness.journal.append_before_commit(&mut harness.effects, 1000 + round, 1);
        if round % 2 == 0 {
            // Taken and synced: the void record's path.
            wait_until("the record synced", || harness.journal.is_durable());
        }
        drop(txn);
        assert_eq!(harness.journal.uncommit(), Some(1000 + round), "the payload back");
        // The refusals, delivered once the void is durable.
        harness.journal.append(&mut Effects::default(), 2000 + round);
        harness.commit(&mut rng);
    }
    let expected = 10 + 2 * rounds as usize;
    wait_until("every payload delivered", || harness.delivered.lock().unwrap().len() >= expected);
    let delivered = harness.delivered.lock().unwrap().clone();
    assert!(delivered.iter().all(|payload| !(1000..2000).contains(payload)), "a failed commit was answered");
    assert_eq!(delivered.len(), expected);
    let disk = disk_copy(dir.path());
    let (state, _) = recover(disk.path());
    assert!(state[1].keys().all(|key| !key.starts_with(b"voided-")), "a voided record was replayed");
    assert!(state == harness.model, "the store equals the model (every later record replayed)");
}

// Session 14: the checkpoint thread is no longer woken after every sync,
// only when a take moves the record area past half used (and at its
// period, when full, when asked): a journal past half is checkpointed
// long before its period.
#[test]
fn a_journal_past_half_used_is_checkpointed_before_its_period() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = 1 << 20;
    let (mut harness, metrics) = Harness::checkpointing_on_demand(dir.path(), bytes);
    let half = (bytes - AREA_START) * CHECKPOINT_FILL_NUMERATOR / CHECKPOINT_FILL_DENOMINATOR;
    let mut rng = seeded();
    // One sync per commit: the pages written are the area used.
    while metrics.bytes.get() <= half {
        assert_eq!(harness.journal.checkpoints(), 0, "a checkpoint before the area was half used");
        harness.commit(&mut rng);
        harness.wait_durable();
    }
    wait_until("a checkpoint once the area is past half used", || {
        harness.journal.after_commit();
        harness.journal.checkpoints() > 0
    });
    assert_eq!(FAILURES.load(Ordering::Relaxed), 0);
}

/// `cachestat(2)` of a byte range of `file`: (pages cached, dirty, under
/// writeback).
fn cache_state(file: &File, offset: u64, bytes: u64) -> (u64, u64, u64) {
    #[repr(C)]
    struct Range {
        offset: u64,
        bytes: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { offset, bytes };
    let mut stat = Stat::default();
    // SAFETY: both pointers are valid for the call; the kernel writes `stat`.
    let done = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            std::os::fd::AsRawFd::as_raw_fd(file),
            &range as *const Range,
            &mut stat as *mut Stat,
            0,
        )
    };
    assert_eq!(done, 0, "cachestat: {}", std::io::Error::last_os_error());
    (stat.cache, stat.dirty, stat.writeback)
}

/// Commits and checkpoints until a checkpoint wrote back only its
/// snapshot's pages (once LMDB's file stops growing: a snapshot past the
/// pages a full sync made durable is synced in full); its checkpoint.
/// `None` where the file system does not allow it (not ext4).
fn until_a_used_only_checkpoint(
    harness: &mut Harness,
    metrics: &JournalMetrics,
    rng: &mut StdRng,
) -> Option<Checkpoint> {
    let data = File::open(harness.env.path().join("data.mdb")).unwrap();
    if !writeback::overwrites_in_place(&data, harness.env.path()) {
        eprintln!("not ext4: every checkpoint syncs in full; nothing to test here");
        return None;
    }
    for _ in 0..200 {
        let before = metrics.checkpoints_used_only.get();
        for _ in 0..30 {
            harness.commit(rng);
        }
        harness.journal.checkpoint_now();
        if metrics.checkpoints_used_only.get() > before {
            let journal = JournalFile::open(&harness.env.path().join(FILE_NAME)).unwrap().unwrap();
            return Some(journal.checkpoint().unwrap());
        }
    }
    panic!("no checkpoint wrote back only its pages in 200 rounds");
}

/// A checkpoint that writes back only the pages its snapshot uses leaves
/// the free pages written since dirty (what it must write back is checked
/// by `used_only_checkpoints_write_back_every_page_not_on_the_disk_yet`).
#[test]
fn a_used_only_checkpoint_leaves_free_pages_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut harness, metrics) = Harness::checkpointing_on_demand(dir.path(), Config::default().bytes);
    let mut rng = seeded();
    let Some(checkpoint) = until_a_used_only_checkpoint(&mut harness, &metrics, &mut rng) else { return };
    // The test is the only writer: nothing was written since.
    let path = dir.path().join("data.mdb");
    let data = File::open(&path).unwrap();
    let free = crate::lmdb::free_pages(&data, &path, &checkpoint.meta).unwrap();
    let page = u64::from(checkpoint.page_bytes);
    let (_, dirty, _) = cache_state(&data, 0, free.pages * page);
    assert!(dirty > 0, "free pages written since the last checkpoint were left dirty");
    assert!(metrics.checkpoint_free_pages_left.get() > 0);
    assert_eq!(FAILURES.load(Ordering::Relaxed), 0);
}

/// Every used-only checkpoint writes back each page its snapshot uses that
/// is not on the disk yet. The first one after the open (whose full sync
/// is no checkpoint) writes every page its snapshot uses: none is left
/// dirty or in flight. One after another checkpoint, used-only or synced
/// in full (the file grew), writes only the pages its snapshot uses that
/// the previous one did not: each of those is left clean, and every tree
/// page both use holds the bytes it held at the previous checkpoint,
/// which wrote it back (the page cache tracks dirt per folio, and a large
/// folio may be dirty for a free neighbour's sake: so the bytes, not the
/// dirt, are checked). LMDB rewrites its meta pages in place in every
/// commit, and recovery writes both from the checkpoint: pages from 2 on.
#[test]
fn used_only_checkpoints_write_back_every_page_not_on_the_disk_yet() {
    let dir = tempfile::tempdir().unwrap();
    let (mut harness, metrics) = Harness::checkpointing_on_demand(dir.path(), Config::default().bytes);
    let mut rng = seeded();
    let path = dir.path().join("data.mdb");
    let data = File::open(&path).unwrap();
    if !writeback::overwrites_in_place(&data, dir.path()) {
        eprintln!("not ext4: every checkpoint syncs in full; nothing to test here");
        return;
    }
    let mut previous: Option<(Checkpoint, Vec<u8>)> = None;
    let (mut first, mut followed) = (0, 0);
    for _ in 0..400 {
        let (used_before, all_before) = (metrics.checkpoints_used_only.get(), harness.journal.checkpoints());
        for _ in 0..30 {
            harness.commit(&mut rng);
        }
        harness.journal.checkpoint_now();
        assert_eq!(harness.journal.checkpoints(), all_before + 1, "one checkpoint per round");
        let journal = JournalFile::open(&dir.path().join(FILE_NAME)).unwrap().unwrap();
        let checkpoint = journal.checkpoint().unwrap();
        let now = std::fs::read(&path).unwrap();
        if metrics.checkpoints_used_only.get() == used_before {
            previous = Some((checkpoint, now));
            continue;
        }
        let free = crate::lmdb::free_pages(&data, &path, &checkpoint.meta).unwrap();
        let page = u64::from(checkpoint.page_bytes);
        let earlier =
            previous.as_ref().map(|(earlier, _)| crate::lmdb::free_pages(&data, &path, &earlier.meta).unwrap());
        let (mut fresh, mut kept) = (0, 0);
        for number in (2..free.pages).filter(|&number| !free.is_free(number)) {
            let new = earlier.as_ref().is_none_or(|earlier| number >= earlier.pages || earlier.is_free(number));
            if new {
                let (_, dirty, writeback) = cache_state(&data, number * page, page);
                assert_eq!((dirty, writeback), (0, 0), "new page {number} of the snapshot after its checkpoint");
                fresh += 1;
            } else {
                let image = &previous.as_ref().unwrap().1;
                let bytes = (number * page) as usize..((number + 1) * page) as usize;
                assert!(now[bytes.clone()] == image[bytes], "page {number}, used by both snapshots, was rewritten");
                kept += 1;
            }
        }
        assert!(fresh > 0, "new pages {fresh}, pages kept {kept}");
        if earlier.is_none() {
            first += 1;
        } else {
            assert!(kept > 0, "new pages {fresh}, pages kept {kept}");
            followed += 1;
        }
        previous = Some((checkpoint, now));
        if followed >= 5 {
            break;
        }
    }
    eprintln!("used-only checkpoints: {first} first after the open, {followed} after another");
    assert!(first <= 1 && followed == 5, "five used-only checkpoints after another ({first}, {followed})");
    assert_eq!(FAILURES.load(Ordering::Relaxed), 0);
}

/// Power loss after a checkpoint that wrote back only its snapshot's pages:
/// the disk holds those pages as the checkpoint left them, and every other
/// page (the free pages it left dirty, every page written since) may hold
/// anything (here: garbage), with the newest meta pages and a torn last
/// record. Recovery must give exactly the state of every whole record.
#[test]
fn power_loss_after_a_used_only_checkpoint_recovers_every_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = JournalMetrics::new();
    let config = Config {
        bytes: 4 << 20,
        checkpoint_period: Duration::from_secs(3600),
        on_failure: count_failure,
        ..Config::default()
    };
    let mut harness = Harness::with_config(dir.path(), config, metrics.clone());
    let mut rng = seeded();
    let Some(checkpoint) = until_a_used_only_checkpoint(&mut harness, &metrics, &mut rng) else { return };
    let before = harness.records;
    let path = dir.path().join("data.mdb");
    let free = crate::lmdb::free_pages(&File::open(&path).unwrap(), &path, &checkpoint.meta).unwrap();
    let synced = std::fs::read(&path).unwrap();
    let target = harness.commits + 400;
    while harness.commits < target || !harness.effects_of_last_commit() {
        harness.commit(&mut rng);
    }
    harness.wait_durable();
    let disk = disk_copy(dir.path());
    let kept = |number: u64| number < free.pages && !free.is_free(number);
    let garbled = lose_power(&disk.path().join("data.mdb"), &synced, kept, &mut rng);
    assert!(free.count > 20 && garbled > free.count as usize, "free pages {} garbled {garbled}", free.count);
    tear_last_record(disk.path(), &mut rng);
    let (state, replayed) = recover(disk.path());
    assert_eq!(replayed.records as u64, harness.records - before - 1, "every whole record after the checkpoint");
    let expected = &harness.history[harness.history.len() - 2];
    assert!(state == *expected, "the store equals the state of every whole record");
    assert_eq!(FAILURES.load(Ordering::Relaxed), 0);
}
