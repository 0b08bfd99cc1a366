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
//! | `meta` | `b"format"` | [`STORE_FORMAT`], u32 little-endian |
//!
//! Every value in the three record databases ends with a 4-byte trailer:
//! the CRC32C of `key_len u16 LE ‖ key ‖ JSON`, checked on every read.
//! LMDB has no checksums of its own, so without it a flipped bit became a
//! wrong address or key of a block service. A mismatch is
//! [`StoreError::Checksum`] naming the database and key (shuckle refuses
//! to start with that one line: it reads the store only at start), is
//! logged, and counts in [`checksum_mismatches`]. Format 1 stores (plain
//! JSON values, no `meta` database) are migrated in one transaction at
//! open; a newer format is refused.
//!
//! Every put is its own transaction, committed (and so fsynced by LMDB)
//! before the caller acknowledges anything.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RwTxn};
use wire::ShardId;
use wire::crc::{crc32c, crc32c_append};

use crate::registry::{BlockServiceRecord, PeerRecord, Registry};

/// LMDB reserves address space, not disk: room for millions of records.
const MAP_SIZE_BYTES: usize = 1 << 30;
const CDC_KEY: &[u8] = b"cdc";
const FORMAT_KEY: &[u8] = b"format";
/// The on-disk format: 1 = plain JSON values (no `meta` database), 2 =
/// JSON ‖ CRC32C trailer.
pub const STORE_FORMAT: u32 = 2;
const CHECKSUM_BYTES: usize = 4;

static CHECKSUM_MISMATCHES: AtomicU64 = AtomicU64::new(0);

/// Records whose checksum did not match, since start (for `/metrics`).
pub fn checksum_mismatches() -> u64 {
    CHECKSUM_MISMATCHES.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {source}")]
    Open { path: PathBuf, source: heed::Error },
    #[error("store {operation} failed: {source}")]
    Lmdb { operation: &'static str, source: heed::Error },
    #[error("corrupt {what} record in the store: {source}")]
    Corrupt { what: &'static str, source: serde_json::Error },
    #[error(
        "damaged record in the store: database {database}, key {key_hex} (checksum mismatch); restore the data folder from a copy or remove the record"
    )]
    Checksum { database: &'static str, key_hex: String },
    #[error("the store is format {found}; this shuckle reads formats 1 and {STORE_FORMAT}")]
    Format { found: u32 },
    /// Truncated, or a page header LMDB would trust is damaged: refused
    /// before LMDB maps it (`daemon::lmdb`).
    #[error(transparent)]
    Structure(#[from] daemon::lmdb::Damage),
}

/// `key_len u16 LE ‖ key ‖ value`'s CRC32C.
fn record_checksum(key: &[u8], value: &[u8]) -> u32 {
    let key_len = u16::try_from(key.len()).unwrap_or(u16::MAX).to_le_bytes();
    crc32c_append(crc32c_append(crc32c(&key_len), key), value)
}

fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(value.len() + CHECKSUM_BYTES);
    sealed.extend_from_slice(value);
    sealed.extend_from_slice(&record_checksum(key, value).to_le_bytes());
    sealed
}

/// The value of a sealed record, or [`StoreError::Checksum`] (logged and
/// counted) when its trailer does not match.
fn unseal<'a>(database: &'static str, key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], StoreError> {
    let split = stored.len().checked_sub(CHECKSUM_BYTES);
    if let Some(split) = split {
        let (value, trailer) = stored.split_at(split);
        if trailer == record_checksum(key, value).to_le_bytes() {
            return Ok(value);
        }
    }
    let key_hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
    CHECKSUM_MISMATCHES.fetch_add(1, Ordering::Relaxed);
    tracing::error!(database, key = %key_hex, "checksum mismatch in the store");
    Err(StoreError::Checksum { database, key_hex })
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
        daemon::lmdb::check(dir)?;
        // SAFETY: heed requires that the environment is opened once per
        // process and that its files are not modified by other means; the
        // data folder is shuckle's own and opened only here.
        let env = unsafe { EnvOpenOptions::new().map_size(MAP_SIZE_BYTES).max_dbs(4).open(dir) }.map_err(open_error)?;
        let mut txn = env.write_txn().map_err(lmdb("begin"))?;
        let block_services = env.create_database(&mut txn, Some("block_services")).map_err(lmdb("create"))?;
        let shards = env.create_database(&mut txn, Some("shards")).map_err(lmdb("create"))?;
        let cdc = env.create_database(&mut txn, Some("cdc")).map_err(lmdb("create"))?;
        let store = Self { env: env.clone(), block_services, shards, cdc };
        store.check_format(&mut txn)?;
        txn.commit().map_err(lmdb("commit"))?;
        Ok(store)
    }

    /// Brings the store to [`STORE_FORMAT`] inside the opening transaction:
    /// a store without a `meta` database is format 1 (or new), and each of
    /// its plain JSON values gains its trailer.
    fn check_format(&self, txn: &mut RwTxn) -> Result<(), StoreError> {
        let meta: Database<Bytes, Bytes> = self.env.create_database(txn, Some("meta")).map_err(lmdb("create"))?;
        let found = match meta.get(txn, FORMAT_KEY).map_err(lmdb("get"))? {
            None => 1,
            Some(bytes) => u32::from_le_bytes(bytes.try_into().map_err(|_| StoreError::Format { found: 0 })?),
        };
        match found {
            STORE_FORMAT => return Ok(()),
            1 => {}
            found => return Err(StoreError::Format { found }),
        }
        for database in [self.block_services, self.shards, self.cdc] {
            let records: Vec<(Vec<u8>, Vec<u8>)> = database
                .iter(txn)
                .map_err(lmdb("iterate"))?
                .map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())))
                .collect::<Result<_, _>>()
                .map_err(lmdb("iterate"))?;
            for (key, value) in records {
                database.put(txn, &key, &seal(&key, &value)).map_err(lmdb("put"))?;
            }
        }
        meta.put(txn, FORMAT_KEY, &STORE_FORMAT.to_le_bytes()).map_err(lmdb("put"))
    }

    fn put(&self, database: Database<Bytes, Bytes>, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut txn = self.env.write_txn().map_err(lmdb("begin"))?;
        database.put(&mut txn, key, &seal(key, value)).map_err(lmdb("put"))?;
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

    /// Everything stored, as a registry. A damaged record fails the load
    /// (never a registry with a wrong or missing record).
    pub fn load(&self, stale_after_ns: u64) -> Result<Registry, StoreError> {
        let mut registry = Registry::new(stale_after_ns);
        let txn = self.env.read_txn().map_err(lmdb("begin"))?;
        for entry in self.block_services.iter(&txn).map_err(lmdb("iterate"))? {
            let (key, value) = entry.map_err(lmdb("iterate"))?;
            let value = unseal("block_services", key, value)?;
            let record: BlockServiceRecord = serde_json::from_slice(value)
                .map_err(|source| StoreError::Corrupt { what: "block service", source })?;
            registry.insert(record);
        }
        for entry in self.shards.iter(&txn).map_err(lmdb("iterate"))? {
            let (key, value) = entry.map_err(lmdb("iterate"))?;
            let value = unseal("shards", key, value)?;
            let record: PeerRecord =
                serde_json::from_slice(value).map_err(|source| StoreError::Corrupt { what: "shard", source })?;
            if let [shard] = key {
                registry.insert_shard(*shard, record);
            }
        }
        if let Some(value) = self.cdc.get(&txn, CDC_KEY).map_err(lmdb("get"))? {
            let value = unseal("cdc", CDC_KEY, value)?;
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

    fn shard_record() -> PeerRecord {
        PeerRecord { addr: SocketAddr::from(([10, 0, 0, 2], 22272)), last_seen_ns: 5 }
    }

    #[test]
    fn a_flipped_bit_in_a_record_is_a_checksum_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let shard = shard_record();
        Store::open(dir.path()).unwrap().put_shard(7, &shard).unwrap();
        // Flip one bit of the JSON in the file: the address's last digit.
        let path = dir.path().join("data.mdb");
        let mut bytes = std::fs::read(&path).unwrap();
        let json = serde_json::to_vec(&shard).unwrap();
        let at = bytes.windows(json.len()).position(|window| window == json).expect("record in the file");
        let digit = at + json.windows(5).position(|window| window == b"22272").unwrap() + 4;
        bytes[digit] ^= 1; // '2' → '3': still valid JSON, a wrong port
        std::fs::write(&path, &bytes).unwrap();
        let before = checksum_mismatches();
        let error = Store::open(dir.path()).unwrap().load(1).unwrap_err();
        assert!(matches!(&error, StoreError::Checksum { database: "shards", key_hex } if key_hex == "07"), "{error}");
        assert!(error.to_string().contains("database shards, key 07"), "{error}");
        assert!(checksum_mismatches() > before);
    }

    #[test]
    fn a_format_1_store_is_migrated_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let shard = shard_record();
        {
            // A format 1 store: plain JSON values, no `meta` database.
            let env = unsafe { EnvOpenOptions::new().map_size(1 << 20).max_dbs(3).open(dir.path()) }.unwrap();
            let mut txn = env.write_txn().unwrap();
            let shards: Database<Bytes, Bytes> = env.create_database(&mut txn, Some("shards")).unwrap();
            shards.put(&mut txn, &[9], &serde_json::to_vec(&shard).unwrap()).unwrap();
            txn.commit().unwrap();
        }
        let registry = Store::open(dir.path()).unwrap().load(1).unwrap();
        assert_eq!(registry.shards_from(0).collect::<Vec<_>>(), vec![(9, &shard)]);
        // Migrated once: reopening reads the sealed record as it is.
        let registry = Store::open(dir.path()).unwrap().load(1).unwrap();
        assert_eq!(registry.shards_from(0).collect::<Vec<_>>(), vec![(9, &shard)]);
    }

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
