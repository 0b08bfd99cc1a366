//! The persistent store: one LMDB environment in the data folder.
//!
//! Databases and key layouts (values are JSON of the [`crate::registry`]
//! records, so a human with `mdb_dump` can read them, keys excepted):
//!
//! | database | key | value |
//! |---|---|---|
//! | `block_services` | block service id, u64 big-endian (id order) | [`BlockServiceRecord`] |
//! | `shards` | shard id, 1 byte | [`PeerRecord`] |
//! | `cdc` | `b"cdc"` | [`PeerRecord`] |
//!
//! Every put is its own transaction, committed (and so fsynced by LMDB)
//! before the caller acknowledges anything.

use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use wire::ShardId;

use crate::registry::{BlockServiceRecord, PeerRecord, Registry};

/// LMDB reserves address space, not disk: room for millions of records.
const MAP_SIZE_BYTES: usize = 1 << 30;
const CDC_KEY: &[u8] = b"cdc";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {source}")]
    Open { path: PathBuf, source: heed::Error },
    #[error("store {operation} failed: {source}")]
    Lmdb { operation: &'static str, source: heed::Error },
    #[error("corrupt {what} record in the store: {source}")]
    Corrupt { what: &'static str, source: serde_json::Error },
}

pub struct Store {
    env: Env,
    block_services: Database<Bytes, Bytes>,
    shards: Database<Bytes, Bytes>,
    cdc: Database<Bytes, Bytes>,
}

fn lmdb(operation: &'static str) -> impl FnOnce(heed::Error) -> StoreError {
    move |source| StoreError::Lmdb { operation, source }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open { path: dir.to_owned(), source };
        // SAFETY: heed requires that the environment is opened once per
        // process and that its files are not modified by other means; the
        // data folder is shuckle's own and opened only here.
        let env = unsafe { EnvOpenOptions::new().map_size(MAP_SIZE_BYTES).max_dbs(3).open(dir) }.map_err(open_error)?;
        let mut txn = env.write_txn().map_err(lmdb("begin"))?;
        let block_services = env.create_database(&mut txn, Some("block_services")).map_err(lmdb("create"))?;
        let shards = env.create_database(&mut txn, Some("shards")).map_err(lmdb("create"))?;
        let cdc = env.create_database(&mut txn, Some("cdc")).map_err(lmdb("create"))?;
        txn.commit().map_err(lmdb("commit"))?;
        Ok(Self { env, block_services, shards, cdc })
    }

    fn put(&self, database: Database<Bytes, Bytes>, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut txn = self.env.write_txn().map_err(lmdb("begin"))?;
        database.put(&mut txn, key, value).map_err(lmdb("put"))?;
        txn.commit().map_err(lmdb("commit"))
    }

    pub fn put_block_service(&self, record: &BlockServiceRecord) -> Result<(), StoreError> {
        let value =
            serde_json::to_vec(record).map_err(|source| StoreError::Corrupt { what: "block service", source })?;
        self.put(self.block_services, &record.id().get().to_be_bytes(), &value)
    }

    pub fn put_shard(&self, shard: ShardId, record: &PeerRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt { what: "shard", source })?;
        self.put(self.shards, &[shard], &value)
    }

    pub fn put_cdc(&self, record: &PeerRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt { what: "cdc", source })?;
        self.put(self.cdc, CDC_KEY, &value)
    }

    /// Everything stored, as a registry.
    pub fn load(&self, stale_after_ns: u64) -> Result<Registry, StoreError> {
        let mut registry = Registry::new(stale_after_ns);
        let txn = self.env.read_txn().map_err(lmdb("begin"))?;
        for entry in self.block_services.iter(&txn).map_err(lmdb("iterate"))? {
            let (_, value) = entry.map_err(lmdb("iterate"))?;
            let record: BlockServiceRecord = serde_json::from_slice(value)
                .map_err(|source| StoreError::Corrupt { what: "block service", source })?;
            registry.insert(record);
        }
        for entry in self.shards.iter(&txn).map_err(lmdb("iterate"))? {
            let (key, value) = entry.map_err(lmdb("iterate"))?;
            let record: PeerRecord =
                serde_json::from_slice(value).map_err(|source| StoreError::Corrupt { what: "shard", source })?;
            if let [shard] = key {
                registry.insert_shard(*shard, record);
            }
        }
        if let Some(value) = self.cdc.get(&txn, CDC_KEY).map_err(lmdb("get"))? {
            let record: PeerRecord =
                serde_json::from_slice(value).map_err(|source| StoreError::Corrupt { what: "cdc", source })?;
            registry.set_cdc(record);
        }
        Ok(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{CheckTarget, Status, StatusAction};
    use std::net::SocketAddr;
    use wire::EggsTime;
    use wire::block::BlockServiceStats;
    use wire::mac::SecretKey;

    #[test]
    fn everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let target = CheckTarget {
            secret_key: SecretKey([3; 16]),
            addr: SocketAddr::from(([10, 0, 0, 1], 4000)),
            host: "rack1".to_owned(),
            storage_class: 2,
            from_registration: true,
        };
        let now = EggsTime::new(123_456_789);
        let stats = BlockServiceStats { used_bytes: 1, free_bytes: 2, used_blocks: 3, free_blocks: 4 };
        let shard = PeerRecord { addr: SocketAddr::from(([10, 0, 0, 2], 22272)), last_seen_ns: 5 };
        let cdc = PeerRecord { addr: SocketAddr::from(([10, 0, 0, 3], 36137)), last_seen_ns: 6 };
        {
            let store = Store::open(dir.path()).unwrap();
            let registry = store.load(1).unwrap();
            let record = registry.after_good_check(&target, stats, now).unwrap();
            store.put_block_service(&record).unwrap();
            let mut registry = store.load(1).unwrap();
            registry.insert(record);
            let drained = registry.after_status_action(target.id(), StatusAction::Drain, now).unwrap();
            store.put_block_service(&drained).unwrap();
            store.put_shard(7, &shard).unwrap();
            store.put_cdc(&cdc).unwrap();
        }
        let registry = Store::open(dir.path()).unwrap().load(1).unwrap();
        let record = registry.block_service(target.id()).unwrap();
        assert_eq!(record.status, Status::Drain);
        assert_eq!(record.secret_key, SecretKey([3; 16]));
        assert_eq!(record.stats(), stats);
        assert_eq!(record.last_check(), now);
        assert_eq!(record.host, "rack1");
        assert_eq!(registry.shards_from(0).collect::<Vec<_>>(), vec![(7, &shard)]);
        assert_eq!(registry.cdc(), Some(&cdc));
    }
}
