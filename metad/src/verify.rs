//! `metad --verify DIR`: checks a shard's store offline and reports damage.
//!
//! `DIR` is a shard's store folder (holding `data.mdb`) or a metad state
//! folder (each `shard-NNN/` in it is checked). For each store: the file
//! size against LMDB's metadata, then every record of every database
//! against its checksum. One line per damaged record (database and key in
//! hex), one summary line per store. Exit status 0 when everything is
//! intact, 1 when damage was found, 2 when a store could not be read.
//! Run it on a stopped shard: it opens the store like metad does.

use std::path::{Path, PathBuf};

use crate::store::{Store, StoreError, hex};

/// What one store's check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Records walked.
    pub records: u64,
    /// (database, key) of each record whose checksum did not match.
    pub damaged: Vec<(&'static str, Vec<u8>)>,
}

/// Checks the store in `folder`. `Err` when it cannot be opened or walked
/// (truncated, not LMDB, an LMDB error while walking).
pub fn verify_store(folder: &Path) -> Result<Report, StoreError> {
    if !folder.join("data.mdb").exists() {
        return Err(StoreError::NotLmdb { path: folder.display().to_string(), reason: "no data.mdb in it" });
    }
    let store = Store::open(folder)?;
    let txn = store.read_txn()?;
    let mut report = Report::default();
    for database in store.databases() {
        let (records, damaged) = database.damaged_keys(&txn)?;
        report.records += records;
        report.damaged.extend(damaged.into_iter().map(|key| (database.name, key)));
    }
    Ok(report)
}

/// The stores under `dir`: itself if it holds `data.mdb`, else its
/// `shard-*` folders in order.
fn stores_under(dir: &Path) -> Vec<PathBuf> {
    if dir.join("data.mdb").exists() {
        return vec![dir.to_path_buf()];
    }
    let mut stores: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("shard-"))
                })
                .collect()
        })
        .unwrap_or_default();
    stores.sort();
    stores
}

/// Runs the check over `dir` and prints the report; the exit status.
pub fn run(dir: &Path) -> u8 {
    let stores = stores_under(dir);
    if stores.is_empty() {
        eprintln!("metad: no store in {} (expected data.mdb or shard-NNN folders)", dir.display());
        return 2;
    }
    let mut status = 0;
    for folder in stores {
        match verify_store(&folder) {
            Ok(report) => {
                for (database, key) in &report.damaged {
                    println!("damaged {} {database} key {}", folder.display(), hex(key));
                }
                println!("{}: {} records, {} damaged", folder.display(), report.records, report.damaged.len());
                if !report.damaged.is_empty() {
                    status = status.max(1);
                }
            }
            Err(error) => {
                println!("{}: cannot verify: {error}", folder.display());
                status = 2;
            }
        }
    }
    status
}

/// The hook `main` calls first: `Some(exit status)` when the command line
/// is `metad --verify DIR`.
pub fn main_hook() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != "--verify" {
        return None;
    }
    match (args.next(), args.next()) {
        (Some(dir), None) => Some(run(Path::new(&dir))),
        _ => {
            eprintln!("metad: usage: metad --verify DIR");
            Some(2)
        }
    }
}
