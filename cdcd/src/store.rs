//! Durable transaction state in LMDB (`<DIR>/cdc/`).
//!
//! Tables (all keys big-endian so that LMDB's order is numeric order):
//!
//! - `meta`: `b"next_txn_id"` → u64 BE. Transaction ids start at the eggs
//!   time of the store's first use and only grow, so a wiped store never
//!   reuses an id a shard still remembers (create_unlinked_dir is
//!   idempotent per transaction id).
//! - `txns`: txn id (u64 BE) → [`TxnRecord`] as JSON: the arguments, the
//!   current step with its intermediate results, the client to answer, and
//!   once done the outcome. At most [`FINISHED_TXNS_KEPT`] finished records
//!   are kept, oldest dropped first: they answer client retransmissions.
//! - `pending`: txn id (u64 BE) → empty, for every unfinished transaction.
//! - `clients`: client address (18 bytes, wire form) ‖ request id (u64 BE)
//!   → txn id (u64 BE): a retransmitted request finds its transaction.
//!
//! Every write is one LMDB transaction committed with fsync (unless the
//! store was opened non-durable, for tests), so what a write returned
//! survives SIGKILL.

use std::net::SocketAddr;
use std::path::Path;

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, RwTxn};
use serde::{Deserialize, Serialize};
use wire::{Address, EggsTime};
use zerocopy::IntoBytes;

use crate::txn::{Outcome, TxnArgs, TxnState};

/// Finished transactions kept to answer retransmissions (bounds the store).
pub const FINISHED_TXNS_KEPT: usize = 65_536;

/// LMDB map size: far above what [`FINISHED_TXNS_KEPT`] records need (each
/// is well under 2 KiB), so the map never fills.
const MAP_SIZE_BYTES: usize = 1 << 30;

const NEXT_TXN_ID_KEY: &[u8] = b"next_txn_id";

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

/// What [`TxnStore::begin`] found or made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// A new transaction, persisted, to be run.
    New(TxnState),
    /// The client's request is already being worked on.
    InProgress(u64),
    /// The client's request was answered before: send the same answer.
    Finished(Outcome),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("transaction store: {0}")]
    Lmdb(#[from] heed::Error),
    #[error("transaction store: record {txn_id} is corrupt: {reason}")]
    Corrupt { txn_id: u64, reason: String },
    #[error("transaction store: record {0} to update does not exist")]
    Missing(u64),
}

/// The LMDB store.
pub struct TxnStore {
    env: Env,
    meta: Database<Bytes, Bytes>,
    txns: Database<Bytes, Bytes>,
    pending: Database<Bytes, Bytes>,
    clients: Database<Bytes, Bytes>,
}

impl TxnStore {
    /// Opens (creating) the store in `dir`. `durable` false skips fsync
    /// (tests only: a crash of the machine could lose commits).
    pub fn open(dir: &Path, durable: bool) -> Result<Self, StoreError> {
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_SIZE_BYTES).max_dbs(4);
        if !durable {
            // SAFETY: NO_SYNC only weakens durability against machine
            // crashes; asked for by tests.
            unsafe {
                options.flags(EnvFlags::NO_SYNC);
            }
        }
        // SAFETY: the CDC holds an exclusive lock on its directory, so the
        // environment is opened once per process and never by two
        // processes for writing.
        let env = unsafe { options.open(dir)? };
        let mut wtxn = env.write_txn()?;
        let meta = env.create_database(&mut wtxn, Some("meta"))?;
        let txns = env.create_database(&mut wtxn, Some("txns"))?;
        let pending = env.create_database(&mut wtxn, Some("pending"))?;
        let clients = env.create_database(&mut wtxn, Some("clients"))?;
        wtxn.commit()?;
        Ok(Self { env, meta, txns, pending, clients })
    }

    /// Starts the transaction for `client`'s request, unless that request
    /// is known already. A transaction refused without asking a shard (bad
    /// arguments) is stored finished at once.
    pub fn begin(&self, client: Option<ClientKey>, args: TxnArgs) -> Result<Begin, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        if let Some(client) = &client
            && let Some(txn_id) = self.clients.get(&wtxn, &client.key_bytes())?
        {
            let txn_id = be_u64(txn_id);
            let record = self.read(&wtxn, txn_id)?.ok_or(StoreError::Missing(txn_id))?;
            return Ok(match record.state.outcome() {
                Some(outcome) => Begin::Finished(outcome.clone()),
                None => Begin::InProgress(txn_id),
            });
        }
        let stored = self.meta.get(&wtxn, NEXT_TXN_ID_KEY)?.map(be_u64).unwrap_or(0);
        let txn_id = stored.max(EggsTime::now().get()).max(1);
        self.meta.put(&mut wtxn, NEXT_TXN_ID_KEY, &(txn_id + 1).to_be_bytes())?;
        let state = TxnState::new(txn_id, args);
        if let Some(client) = &client {
            self.clients.put(&mut wtxn, &client.key_bytes(), &txn_id.to_be_bytes())?;
        }
        self.write(&mut wtxn, &TxnRecord { client, state: state.clone() })?;
        if state.outcome().is_some() {
            self.prune(&mut wtxn)?;
        }
        wtxn.commit()?;
        Ok(Begin::New(state))
    }

    /// Persists the transaction's current state (before a mutation, and
    /// when it is done).
    pub fn save(&self, state: &TxnState) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let mut record = self.read(&wtxn, state.txn_id)?.ok_or(StoreError::Missing(state.txn_id))?;
        record.state = state.clone();
        self.write(&mut wtxn, &record)?;
        if state.outcome().is_some() {
            self.prune(&mut wtxn)?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// One record.
    pub fn get(&self, txn_id: u64) -> Result<Option<TxnRecord>, StoreError> {
        let rtxn = self.env.read_txn()?;
        self.read(&rtxn, txn_id)
    }

    /// The transaction that answers `client`, if any.
    pub fn find_client(&self, client: &ClientKey) -> Result<Option<TxnRecord>, StoreError> {
        let rtxn = self.env.read_txn()?;
        match self.clients.get(&rtxn, &client.key_bytes())? {
            Some(txn_id) => self.read(&rtxn, be_u64(txn_id)),
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
            records.push(self.read(&rtxn, txn_id)?.ok_or(StoreError::Missing(txn_id))?);
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
        let Some(bytes) = self.txns.get(txn, &txn_id.to_be_bytes())? else {
            return Ok(None);
        };
        let record: TxnRecord =
            serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt { txn_id, reason: error.to_string() })?;
        if record.state.txn_id != txn_id {
            return Err(StoreError::Corrupt { txn_id, reason: format!("holds txn {}", record.state.txn_id) });
        }
        Ok(Some(record))
    }

    fn write(&self, wtxn: &mut RwTxn<'_>, record: &TxnRecord) -> Result<(), StoreError> {
        let txn_id = record.state.txn_id;
        let bytes =
            serde_json::to_vec(record).map_err(|error| StoreError::Corrupt { txn_id, reason: error.to_string() })?;
        let key = txn_id.to_be_bytes();
        self.txns.put(wtxn, &key, &bytes)?;
        if record.state.outcome().is_some() {
            self.pending.delete(wtxn, &key)?;
        } else {
            self.pending.put(wtxn, &key, &[])?;
        }
        Ok(())
    }

    /// Drops the oldest finished records beyond [`FINISHED_TXNS_KEPT`].
    fn prune(&self, wtxn: &mut RwTxn<'_>) -> Result<(), StoreError> {
        let finished = self.txns.len(wtxn)?.saturating_sub(self.pending.len(wtxn)?);
        let mut excess = finished.saturating_sub(FINISHED_TXNS_KEPT as u64);
        while excess > 0 {
            let Some((key, bytes)) = self.txns.first(wtxn)? else { break };
            let txn_id = be_u64(key);
            let record: Option<TxnRecord> = serde_json::from_slice(bytes).ok();
            if record.as_ref().is_some_and(|r| r.state.outcome().is_none()) {
                // The oldest is still running: nothing older to drop.
                break;
            }
            if let Some(client) = record.and_then(|r| r.client) {
                self.clients.delete(wtxn, &client.key_bytes())?;
            }
            self.txns.delete(wtxn, &txn_id.to_be_bytes())?;
            excess -= 1;
        }
        Ok(())
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
    use crate::txn::Step;
    use wire::InodeId;
    use wire::cdc::CdcStatus;

    fn mkdir(name: &str) -> TxnArgs {
        TxnArgs::MkDir { parent: InodeId::ROOT.get(), name: name.into() }
    }

    fn client(request_id: u64) -> ClientKey {
        ClientKey { address: "127.0.0.1:4000".parse().unwrap(), request_id }
    }

    #[test]
    fn a_retransmission_finds_its_transaction_and_then_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let Begin::New(mut state) = store.begin(Some(client(7)), mkdir("a")).unwrap() else { panic!() };
        assert_eq!(store.begin(Some(client(7)), mkdir("a")).unwrap(), Begin::InProgress(state.txn_id));
        // Another request id of the same client is another transaction.
        let Begin::New(other) = store.begin(Some(client(8)), mkdir("b")).unwrap() else { panic!() };
        assert!(other.txn_id > state.txn_id);
        state.step = Step::Done(Outcome::ok(InodeId::new(5)));
        store.save(&state).unwrap();
        assert_eq!(store.begin(Some(client(7)), mkdir("a")).unwrap(), Begin::Finished(Outcome::ok(InodeId::new(5))));
        let unfinished = store.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].state.txn_id, other.txn_id);
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let txn_id;
        {
            let store = TxnStore::open(dir.path(), true).unwrap();
            let Begin::New(mut state) = store.begin(Some(client(1)), mkdir("a")).unwrap() else { panic!() };
            state.step = Step::MkDirInject { dir: 99 };
            state.mutation_seq = 1;
            store.save(&state).unwrap();
            txn_id = state.txn_id;
        }
        let store = TxnStore::open(dir.path(), true).unwrap();
        let unfinished = store.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].state.step, Step::MkDirInject { dir: 99 });
        assert_eq!(unfinished[0].client, Some(client(1)));
        // Ids keep growing after a reopen.
        let Begin::New(next) = store.begin(None, mkdir("b")).unwrap() else { panic!() };
        assert!(next.txn_id > txn_id);
    }

    #[test]
    fn refused_at_once_is_stored_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let file_parent = InodeId::new(0x2020_0000_0000_0003).get();
        let Begin::New(state) =
            store.begin(Some(client(3)), TxnArgs::MkDir { parent: file_parent, name: "x".into() }).unwrap()
        else {
            panic!()
        };
        assert_eq!(state.outcome().unwrap().status, CdcStatus::ParentInvalid);
        assert!(store.unfinished().unwrap().is_empty());
        assert!(matches!(store.begin(Some(client(3)), mkdir("x")).unwrap(), Begin::Finished(_)));
    }

    #[test]
    fn finished_records_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let bad_parent = InodeId::new(0x2020_0000_0000_0003).get();
        for request_id in 0..(FINISHED_TXNS_KEPT as u64 + 10) {
            store.begin(Some(client(request_id)), TxnArgs::RmDir { parent: bad_parent, name: "x".into() }).unwrap();
        }
        assert_eq!(store.len().unwrap(), FINISHED_TXNS_KEPT as u64);
        // The oldest are forgotten (a new transaction), the newest remembered.
        assert!(store.find_client(&client(0)).unwrap().is_none());
        assert!(store.find_client(&client(FINISHED_TXNS_KEPT as u64 + 9)).unwrap().is_some());
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = TxnStore::open(dir.path(), false).unwrap();
        let mut wtxn = store.env.write_txn().unwrap();
        store.txns.put(&mut wtxn, &5u64.to_be_bytes(), b"{not json").unwrap();
        store.pending.put(&mut wtxn, &5u64.to_be_bytes(), &[]).unwrap();
        wtxn.commit().unwrap();
        assert!(matches!(store.unfinished(), Err(StoreError::Corrupt { txn_id: 5, .. })));
    }
}
