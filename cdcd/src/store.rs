//! Durable transaction state in LMDB (`<DIR>/cdc/`).
//!
//! Tables (all keys big-endian so that LMDB's order is numeric order):
//!
//! - `meta`: `b"next_txn_id"` → u64 BE, written by stores before session
//!   7 and still read at open. Transaction ids start at the eggs time of
//!   the store's first use and only grow, so a wiped store never reuses an
//!   id a shard still remembers (create_unlinked_dir is idempotent per
//!   transaction id). The next id is now derived at open from the newest
//!   `txns` key (pruning drops the oldest records, never the newest), so a
//!   commit no longer rewrites `meta`.
//! - `txns`: txn id (u64 BE) → [`TxnRecord`] as JSON: the arguments, the
//!   current step with its intermediate results, the client to answer, and
//!   once done the outcome. At most [`FINISHED_TXNS_KEPT`] finished records
//!   are kept, oldest dropped first: they answer client retransmissions.
//! - `pending`: txn id (u64 BE) → empty, for every unfinished transaction.
//! - `clients`: client address (18 bytes, wire form) ‖ request id (u64 BE)
//!   → txn id (u64 BE): a retransmitted request finds its transaction.
//!
//! A commit writes only the B-trees it changes: a transaction's later
//! records find its `clients` and `pending` entries already there and
//! leave those trees alone (every tree a commit touches costs its path of
//! page copies and page writes).
//!
//! Every value is sealed: CRC32C (u32 LE) of the key ‖ payload, then the
//! payload. A value whose CRC does not match is [`StoreError::Corrupt`],
//! naming the table and key: never a wrong answer.
//!
//! A transaction is written the first time just before its first mutation
//! (a transaction that only read is lost in a crash, and its client's
//! retransmission starts it again), then at its fences and once done (see
//! [`crate::coordinator`]). Writes come in batches:
//! [`TxnStore::commit_then`] writes many transactions' records in one LMDB
//! commit; [`crate::commit::GroupCommit`] collects them.
//!
//! # Durability: the journal
//!
//! A durable store runs on `daemon::journal`: LMDB commits with NO_SYNC
//! (pages into the page cache only), and each commit's effects (every put
//! and delete, by table index: `meta` 0, `txns` 1, `pending` 2, `clients`
//! 3) go to the journal, whose thread makes many commits durable with one
//! small `fdatasync` of a preallocated file and then runs each commit's
//! `on_durable`. A record thus waits for one sync instead of LMDB's two
//! (data pages, then the meta page), and the committer starts the next
//! commit while the journal syncs. Checkpoints (a pinned snapshot, LMDB's
//! file synced, its meta page copied into the journal's header) bound the
//! journal; at open, [`TxnStore::open`] puts LMDB's file back at the last
//! checkpoint and replays the records after it, so neither a SIGKILL nor
//! a power loss (writeback may put a meta page on disk before its data)
//! loses or corrupts a record that was reported durable. A store opened
//! non-durable (tests, the simulation) has no journal and commits with
//! NO_SYNC.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use daemon::journal::{self, Effects, Journal, JournalMetrics};
use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, RwTxn, WithoutTls};
use serde::{Deserialize, Serialize};
use wire::{Address, EggsTime};
use zerocopy::IntoBytes;

use crate::txn::{TxnArgs, TxnState};

/// Finished transactions kept to answer retransmissions (bounds the store).
pub const FINISHED_TXNS_KEPT: usize = 65_536;

/// LMDB map size: far above what [`FINISHED_TXNS_KEPT`] records need (each
/// is well under 2 KiB), so the map never fills.
const MAP_SIZE_BYTES: usize = 1 << 30;

const NEXT_TXN_ID_KEY: &[u8] = b"next_txn_id";
const CRC_BYTES: usize = 4;

/// The tables' indices in journal records (and in the replay's list).
const META_DB: u8 = 0;
const TXNS_DB: u8 = 1;
const PENDING_DB: u8 = 2;
const CLIENTS_DB: u8 = 3;

/// Run once a commit is durable (on the journal's sync lane that delivers it).
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// Which client request a transaction answers.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ClientKey {
    pub address: SocketAddr,
    pub request_id: u64,
}

impl ClientKey {
    fn key_bytes(&self) -> [u8; 26] {
        let mut key = [0u8; 26];
        key[..18].copy_from_slice(Address::from(self.address).as_bytes());
        key[18..].copy_from_slice(&self.request_id.to_be_bytes());
        key
    }
}

/// One transaction as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    pub client: Option<ClientKey>,
    pub state: TxnState,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("transaction store: {0}")]
    Lmdb(#[from] heed::Error),
    #[error("transaction store: record {txn_id} is corrupt: {reason}")]
    Corrupt { txn_id: u64, reason: String },
    #[error("transaction store: table {table}, key {key}: CRC mismatch (damaged value)")]
    Damaged { table: &'static str, key: String },
    /// Truncated, or a page header LMDB would trust is damaged: refused
    /// before LMDB maps it (`daemon::lmdb`).
    #[error("transaction store: {0}")]
    Structure(#[from] daemon::lmdb::Damage),
    #[error("transaction store: {0}")]
    Journal(#[from] daemon::journal::JournalError),
    /// The journal's threads are gone (the process is stopping).
    #[error("transaction store: the journal stopped before the commit was durable")]
    JournalGone,
}

/// `crc32c(key ‖ payload)` ‖ payload.
fn seal(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let crc = wire::crc::crc32c_append(wire::crc::crc32c(key), payload);
    let mut sealed = Vec::with_capacity(CRC_BYTES + payload.len());
    sealed.extend_from_slice(&crc.to_le_bytes());
    sealed.extend_from_slice(payload);
    sealed
}

/// The payload of a sealed value, if its CRC matches.
fn unseal<'a>(table: &'static str, key: &[u8], value: &'a [u8]) -> Result<&'a [u8], StoreError> {
    let damaged = || StoreError::Damaged { table, key: key.iter().map(|b| format!("{b:02x}")).collect() };
    let (crc, payload) = value.split_at_checked(CRC_BYTES).ok_or_else(damaged)?;
    let stored = u32::from_le_bytes(crc.try_into().map_err(|_| damaged())?);
    if wire::crc::crc32c_append(wire::crc::crc32c(key), payload) != stored {
        tracing::error!(table, key = ?key, "CRC mismatch in the transaction store");
        return Err(damaged());
    }
    Ok(payload)
}

/// The LMDB store.
pub struct TxnStore {
    env: Env<WithoutTls>,
    txns: Database<Bytes, Bytes>,
    pending: Database<Bytes, Bytes>,
    clients: Database<Bytes, Bytes>,
    /// Makes commits durable (a durable store); `None`: commits are
    /// NO_SYNC and durable for no one (tests, the simulation).
    journal: Option<Journal<OnDurable>>,
    journal_metrics: JournalMetrics,
    /// The one writer's effects buffer. Its lock also keeps each commit,
    /// its journal append and the journal's snapshot in commit order.
    writer: Mutex<Effects>,
    /// The next transaction id to hand out (ids of transactions never
    /// written may be reused after a restart: no shard ever saw them).
    next_txn_id: AtomicU64,
    /// Eggs time in ns (replaced by the simulation's virtual clock).
    clock: Clock,
}

/// A source of the current eggs time in ns.
pub type Clock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

impl TxnStore {
    /// Opens (creating) the store in `dir`. `durable`: on the journal
    /// (after putting LMDB's file back at the journal's checkpoint and
    /// replaying the records after it); false: commits with NO_SYNC and no
    /// journal (tests only: nothing survives a crash of the machine).
    pub fn open(dir: &Path, durable: bool) -> Result<Self, StoreError> {
        Self::open_with(dir, durable, daemon::journal::Config::default())
    }

    /// [`TxnStore::open`] with the journal's settings.
    pub fn open_with(dir: &Path, durable: bool, journal_config: daemon::journal::Config) -> Result<Self, StoreError> {
        // Before LMDB or the structural check reads the file: a meta page
        // written back ahead of its data must not be trusted.
        let restored = if durable { daemon::journal::restore(dir)? } else { None };
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(MAP_SIZE_BYTES).max_dbs(4);
        if !durable {
            // SAFETY: NO_SYNC only weakens durability against machine
            // crashes; asked for by tests.
            unsafe {
                options.flags(EnvFlags::NO_SYNC);
            }
        }
        daemon::lmdb::check(dir)?;
        // SAFETY: the CDC holds an exclusive lock on its directory, so the
        // environment is opened once per process and never by two
        // processes for writing.
        let env = unsafe { options.open(dir)? };
        let mut wtxn = env.write_txn()?;
        let meta: Database<Bytes, Bytes> = env.create_database(&mut wtxn, Some("meta"))?;
        let txns = env.create_database(&mut wtxn, Some("txns"))?;
        let pending = env.create_database(&mut wtxn, Some("pending"))?;
        let clients = env.create_database(&mut wtxn, Some("clients"))?;
        wtxn.commit()?;
        if let Some(restored) = restored {
            let mut dbs = [meta; 4];
            dbs[usize::from(META_DB)] = meta;
            dbs[usize::from(TXNS_DB)] = txns;
            dbs[usize::from(PENDING_DB)] = pending;
            dbs[usize::from(CLIENTS_DB)] = clients;
            let replayed = restored.replay(&env, &dbs)?;
            tracing::info!(
                checkpoint = replayed.checkpoint_txn,
                records = replayed.records,
                "transaction store: journal replayed"
            );
        }
        let rtxn = env.read_txn()?;
        let stored = match meta.get(&rtxn, NEXT_TXN_ID_KEY)? {
            Some(value) => be_u64(unseal("meta", NEXT_TXN_ID_KEY, value)?),
            None => 0,
        };
        let newest = txns.last(&rtxn)?.map_or(0, |(key, _)| be_u64(key).saturating_add(1));
        let stored = stored.max(newest);
        drop(rtxn);
        let journal_metrics = JournalMetrics::new();
        let journal = if durable {
            let deliver = |done: Vec<OnDurable>| done.into_iter().for_each(|on_durable| on_durable());
            Some(Journal::start(&env, journal_config, journal_metrics.clone(), deliver)?)
        } else {
            None
        };
        let clock: Clock = std::sync::Arc::new(|| EggsTime::now().get());
        Ok(Self {
            env,
            txns,
            pending,
            clients,
            journal,
            journal_metrics,
            writer: Mutex::new(Effects::default()),
            next_txn_id: AtomicU64::new(stored),
            clock,
        })
    }

    /// The journal's metrics (register them with the daemon's).
    pub fn journal_metrics(&self) -> &JournalMetrics {
        &self.journal_metrics
    }

    /// The same store reading time from `clock` (the simulation).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Every id [`TxnStore::allocate_txn_id`] hands out from now on is at
    /// least this.
    pub fn next_txn_id(&self) -> u64 {
        self.next_txn_id.load(Ordering::Relaxed)
    }

    /// A new transaction id: at least the current eggs time, above every id
    /// handed out or stored before.
    pub fn allocate_txn_id(&self) -> u64 {
        let now = (self.clock)().max(1);
        let mut current = self.next_txn_id.load(Ordering::Relaxed);
        loop {
            let id = current.max(now);
            match self.next_txn_id.compare_exchange_weak(current, id + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return id,
                Err(seen) => current = seen,
            }
        }
    }

    /// Persists `records` (later records of one transaction win) in one
    /// LMDB commit and returns once it is durable (a non-durable store:
    /// once committed).
    pub fn write_batch(&self, records: &[TxnRecord]) -> Result<(), StoreError> {
        let (done, durable) = std::sync::mpsc::channel();
        self.commit_then(
            records,
            Box::new(move || {
                let _ = done.send(());
            }),
        )?;
        durable.recv().map_err(|_| StoreError::JournalGone)
    }

    /// Writes `records` in one LMDB commit and returns once it is
    /// committed (visible to readers); `on_durable` runs once it is
    /// durable, in commit order (a non-durable store: at once). A failed
    /// commit changes nothing, appends nothing, and drops `on_durable`.
    pub fn commit_then(&self, records: &[TxnRecord], on_durable: OnDurable) -> Result<(), StoreError> {
        let mut effects = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        effects.reset();
        let mut wtxn = self.env.write_txn()?;
        let mut recorded = self.journal.is_some().then_some(&mut *effects);
        let mut finished = false;
        for record in records {
            self.write(&mut wtxn, recorded.as_deref_mut(), record)?;
            finished |= record.state.outcome().is_some();
        }
        if finished {
            self.prune(&mut wtxn, recorded)?;
        }
        wtxn.commit()?;
        match &self.journal {
            Some(journal) => {
                journal.append(&mut effects, on_durable);
                journal.after_commit();
            }
            None => on_durable(),
        }
        Ok(())
    }

    /// The committer, while it has nothing to commit: lets the journal
    /// take the snapshot a checkpoint waits for (a checkpoint needs one
    /// between commits).
    pub fn idle(&self) {
        if let Some(journal) = &self.journal {
            let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            journal.after_commit();
        }
    }

    /// One record.
    pub fn get(&self, txn_id: u64) -> Result<Option<TxnRecord>, StoreError> {
        let rtxn = self.env.read_txn()?;
        self.read(&rtxn, txn_id)
    }

    /// The transaction that answers `client`, if any.
    pub fn find_client(&self, client: &ClientKey) -> Result<Option<TxnRecord>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let key = client.key_bytes();
        match self.clients.get(&rtxn, &key)? {
            Some(value) => self.read(&rtxn, be_u64(unseal("clients", &key, value)?)),
            None => Ok(None),
        }
    }

    /// Unfinished transactions, oldest first: resumed at start.
    pub fn unfinished(&self) -> Result<Vec<TxnRecord>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let mut records = Vec::new();
        for entry in self.pending.iter(&rtxn)? {
            let (key, _) = entry?;
            let txn_id = be_u64(key);
            records.push(
                self.read(&rtxn, txn_id)?
                    .ok_or(StoreError::Corrupt { txn_id, reason: "pending without a record".into() })?,
            );
        }
        Ok(records)
    }

    /// Number of records (finished and not).
    pub fn len(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.txns.len(&rtxn)?)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    fn read(&self, txn: &heed::RoTxn<'_>, txn_id: u64) -> Result<Option<TxnRecord>, StoreError> {
        let key = txn_id.to_be_bytes();
        let Some(value) = self.txns.get(txn, &key)? else {
            return Ok(None);
        };
        let bytes = unseal("txns", &key, value)?;
        let record: TxnRecord =
            serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt { txn_id, reason: error.to_string() })?;
        if record.state.txn_id != txn_id {
            return Err(StoreError::Corrupt { txn_id, reason: format!("holds txn {}", record.state.txn_id) });
        }
        Ok(Some(record))
    }

    /// Writes `record`, recording its puts and deletes in `effects` (a
    /// journaled store).
    fn write(
        &self,
        wtxn: &mut RwTxn<'_>,
        mut effects: Option<&mut Effects>,
        record: &TxnRecord,
    ) -> Result<(), StoreError> {
        let txn_id = record.state.txn_id;
        let bytes =
            serde_json::to_vec(record).map_err(|error| StoreError::Corrupt { txn_id, reason: error.to_string() })?;
        let key = txn_id.to_be_bytes();
        journal::put(wtxn, (TXNS_DB, &self.txns), &key, &seal(&key, &bytes), effects.as_deref_mut())?;
        if let Some(client) = &record.client {
            let client_key = client.key_bytes();
            let sealed = seal(&client_key, &key);
            // A later record of the transaction finds its entry: a put
            // would copy and write the tree's pages for nothing.
            if self.clients.get(wtxn, &client_key)? != Some(sealed.as_slice()) {
                journal::put(wtxn, (CLIENTS_DB, &self.clients), &client_key, &sealed, effects.as_deref_mut())?;
            }
        }
        if record.state.outcome().is_some() {
            journal::delete(wtxn, (PENDING_DB, &self.pending), &key, effects)?;
        } else if self.pending.get(wtxn, &key)?.is_none() {
            journal::put(wtxn, (PENDING_DB, &self.pending), &key, &[], effects)?;
        }
        Ok(())
    }

    /// Drops the oldest finished records beyond [`FINISHED_TXNS_KEPT`].
    fn prune(&self, wtxn: &mut RwTxn<'_>, mut effects: Option<&mut Effects>) -> Result<(), StoreError> {
        let finished = self.txns.len(wtxn)?.saturating_sub(self.pending.len(wtxn)?);
        let mut excess = finished.saturating_sub(FINISHED_TXNS_KEPT as u64);
        while excess > 0 {
            let Some((key, value)) = self.txns.first(wtxn)? else { break };
            let txn_id = be_u64(key);
            // A damaged oldest record is dropped like any other.
            let record: Option<TxnRecord> =
                unseal("txns", key, value).ok().and_then(|bytes| serde_json::from_slice(bytes).ok());
            if record.as_ref().is_some_and(|r| r.state.outcome().is_none()) {
                // The oldest is still running: nothing older to drop.
                break;
            }
            if let Some(client) = record.and_then(|r| r.client) {
                journal::delete(wtxn, (CLIENTS_DB, &self.clients), &client.key_bytes(), effects.as_deref_mut())?;
            }
            journal::delete(wtxn, (TXNS_DB, &self.txns), &txn_id.to_be_bytes(), effects.as_deref_mut())?;
            excess -= 1;
        }
        Ok(())
    }

    /// A new transaction for `args` (not written: see the module doc).
    pub fn new_txn(&self, args: TxnArgs) -> TxnState {
        TxnState::new(self.allocate_txn_id(), args)
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let len = bytes.len().min(8);
    word[..len].copy_from_slice(&bytes[..len]);
    u64::from_be_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::{Outcome, Step};
    use wire::InodeId;

    fn mkdir(name: &str) -> TxnArgs {
        TxnArgs::MkDir { parent: InodeId::ROOT.get(), name: name.into() }
    }

    fn client(request_id: u64) -> ClientKey {
        ClientKey { address: "127.0.0.1:4000".parse().unwrap(), request_id }
    }

    fn record(store: &TxnStore, request_id: u64, args: TxnArgs) -> TxnRecord {
        TxnRecord { client: Some(client(request_id)), state: store.new_txn(args) }
    }

    #[test]
    fn a_client_finds_its_transaction_and_then_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let mut first = record(&store, 7, mkdir("a"));
        let other = record(&store, 8, mkdir("b"));
        assert!(other.state.txn_id > first.state.txn_id);
        assert!(store.find_client(&client(7)).unwrap().is_none(), "nothing written yet");
        store.write_batch(&[first.clone(), other.clone()]).unwrap();
        assert_eq!(store.find_client(&client(7)).unwrap().unwrap().state, first.state);
        first.state.step = Step::Done(Outcome::ok(InodeId::new(5)));
        store.write_batch(&[first.clone()]).unwrap();
        let found = store.find_client(&client(7)).unwrap().unwrap();
        assert_eq!(found.state.outcome(), Some(&Outcome::ok(InodeId::new(5))));
        let unfinished = store.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].state.txn_id, other.state.txn_id);
    }

    #[test]
    fn state_survives_reopening_and_ids_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let txn_id;
        {
            let store = TxnStore::open(dir.path(), true).unwrap();
            let mut first = record(&store, 1, mkdir("a"));
            first.state.step = Step::MkDirInject { dir: 99 };
            first.state.mutation_seq = 1;
            // The id is far in the future: reopening must still go above it.
            first.state.txn_id = u64::MAX / 2;
            store.write_batch(&[first.clone()]).unwrap();
            txn_id = first.state.txn_id;
        }
        let store = TxnStore::open(dir.path(), true).unwrap();
        let unfinished = store.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].state.step, Step::MkDirInject { dir: 99 });
        assert_eq!(unfinished[0].client, Some(client(1)));
        assert!(store.allocate_txn_id() > txn_id);
    }

    /// The next id comes from the newest stored transaction, not from a
    /// `meta` entry rewritten by every commit.
    #[test]
    fn ids_stay_above_the_newest_stored_transaction_without_a_meta_entry() {
        let dir = tempfile::tempdir().unwrap();
        let newest = u64::MAX / 2;
        {
            let store = TxnStore::open(dir.path(), true).unwrap();
            let mut first = record(&store, 1, mkdir("a"));
            first.state.txn_id = newest;
            store.write_batch(&[first]).unwrap();
            // As a store written by this version: no `meta` entry.
            let mut wtxn = store.env.write_txn().unwrap();
            let meta: Database<Bytes, Bytes> = store.env.create_database(&mut wtxn, Some("meta")).unwrap();
            meta.clear(&mut wtxn).unwrap();
            wtxn.commit().unwrap();
        }
        let store = TxnStore::open(dir.path(), true).unwrap();
        assert!(store.allocate_txn_id() > newest);
    }

    /// A transaction's later records leave its `clients` and `pending`
    /// entries as they are, and the outcome still clears `pending`.
    #[test]
    fn later_records_of_a_transaction_keep_its_index_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let mut first = record(&store, 7, mkdir("a"));
        store.write_batch(std::slice::from_ref(&first)).unwrap();
        first.state.step = Step::MkDirInject { dir: 99 };
        store.write_batch(std::slice::from_ref(&first)).unwrap();
        assert_eq!(store.find_client(&client(7)).unwrap().unwrap().state, first.state);
        assert_eq!(store.unfinished().unwrap().len(), 1);
        first.state.step = Step::Done(Outcome::ok(InodeId::new(5)));
        store.write_batch(std::slice::from_ref(&first)).unwrap();
        assert!(store.unfinished().unwrap().is_empty());
        assert_eq!(store.find_client(&client(7)).unwrap().unwrap().state, first.state);
    }

    #[test]
    fn finished_records_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let batch: Vec<TxnRecord> = (0..(FINISHED_TXNS_KEPT as u64 + 10))
            .map(|request_id| {
                let mut r = record(&store, request_id, mkdir("x"));
                r.state.step = Step::Done(Outcome::ok(InodeId::new(5)));
                r
            })
            .collect();
        store.write_batch(&batch).unwrap();
        assert_eq!(store.len().unwrap(), FINISHED_TXNS_KEPT as u64);
        // The oldest are forgotten (a new transaction), the newest remembered.
        assert!(store.find_client(&client(0)).unwrap().is_none());
        assert!(store.find_client(&client(FINISHED_TXNS_KEPT as u64 + 9)).unwrap().is_some());
    }

    /// Every table's entries and a CRC of their keys and values, for
    /// comparing two stores.
    fn contents(store: &TxnStore) -> Vec<(&'static str, u64, u32)> {
        let rtxn = store.env.read_txn().unwrap();
        let table = |name, db: &Database<Bytes, Bytes>| {
            let (mut entries, mut crc) = (0, 0);
            for item in db.iter(&rtxn).unwrap() {
                let (key, value) = item.unwrap();
                crc = wire::crc::crc32c_append(wire::crc::crc32c_append(crc, key), value);
                entries += 1;
            }
            (name, entries, crc)
        };
        vec![table("txns", &store.txns), table("pending", &store.pending), table("clients", &store.clients)]
    }

    /// A durable store's commits are recorded whole in its journal: with
    /// LMDB's file put back to what it held when the store opened (every
    /// page written since lost, as a power loss may), reopening replays
    /// them to the same contents: puts, deletes of `pending` and the
    /// pruning of old records included.
    #[test]
    fn a_durable_store_recovers_its_commits_from_the_journal_alone() {
        let dir = tempfile::tempdir().unwrap();
        // No checkpoint but the opening one: the file as it was then is
        // what the journal's header points at.
        let config = daemon::journal::Config {
            bytes: 128 << 20,
            checkpoint_period: std::time::Duration::from_secs(3600),
            ..daemon::journal::Config::default()
        };
        let (before, expected) = {
            let store = TxnStore::open_with(dir.path(), true, config).unwrap();
            // What the disk held at the store's opening checkpoint.
            let before = std::fs::read(dir.path().join("data.mdb")).unwrap();
            let mut running = record(&store, 1, mkdir("a"));
            store.write_batch(std::slice::from_ref(&running)).unwrap();
            running.state.step = Step::MkDirInject { dir: 99 };
            store.write_batch(std::slice::from_ref(&running)).unwrap();
            let finished: Vec<TxnRecord> = (10..(FINISHED_TXNS_KEPT as u64 + 20))
                .map(|request_id| {
                    let mut r = record(&store, request_id, mkdir("x"));
                    r.state.step = Step::Done(Outcome::ok(InodeId::new(5)));
                    r
                })
                .collect();
            for chunk in finished.chunks(4096) {
                store.write_batch(chunk).unwrap();
            }
            running.state.step = Step::Done(Outcome::ok(InodeId::new(99)));
            store.write_batch(std::slice::from_ref(&running)).unwrap();
            let another = record(&store, 2, mkdir("b"));
            store.write_batch(std::slice::from_ref(&another)).unwrap();
            assert_eq!(store.journal.as_ref().unwrap().checkpoints(), 0);
            (before, contents(&store))
        };
        std::fs::write(dir.path().join("data.mdb"), &before).unwrap();
        let store = TxnStore::open_with(dir.path(), true, config).unwrap();
        assert_eq!(contents(&store), expected);
        assert_eq!(store.unfinished().unwrap().len(), 1);
        assert_eq!(store.unfinished().unwrap()[0].client, Some(client(2)));
        let newest = client(FINISHED_TXNS_KEPT as u64 + 19);
        assert_eq!(store.find_client(&newest).unwrap().unwrap().state.outcome(), Some(&Outcome::ok(InodeId::new(5))));
        // The oldest, finished last, went with the pruning before the crash.
        assert!(store.find_client(&client(1)).unwrap().is_none());
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let mut wtxn = store.env.write_txn().unwrap();
        let key = 5u64.to_be_bytes();
        store.txns.put(&mut wtxn, &key, &seal(&key, b"{not json")).unwrap();
        store.pending.put(&mut wtxn, &key, &[]).unwrap();
        wtxn.commit().unwrap();
        assert!(matches!(store.unfinished(), Err(StoreError::Corrupt { txn_id: 5, .. })));
    }

    #[test]
    fn a_flipped_bit_in_a_value_is_a_crc_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let first = record(&store, 3, mkdir("abc"));
        store.write_batch(std::slice::from_ref(&first)).unwrap();
        let key = first.state.txn_id.to_be_bytes();
        let mut wtxn = store.env.write_txn().unwrap();
        let mut value = store.txns.get(&wtxn, &key).unwrap().unwrap().to_vec();
        // Flip a bit inside the name: the JSON still parses, the CRC does not match.
        let at = value.windows(3).position(|w| w == b"abc").unwrap();
        value[at] ^= 0x02;
        store.txns.put(&mut wtxn, &key, &value).unwrap();
        wtxn.commit().unwrap();
        match store.get(first.state.txn_id) {
            Err(StoreError::Damaged { table: "txns", key: named }) => {
                assert!(named.ends_with(&format!("{:02x}", key[7])))
            }
            other => panic!("expected a CRC error, got {other:?}"),
        }
        assert!(matches!(store.find_client(&client(3)), Err(StoreError::Damaged { .. })));
    }
}
