//! `metad --verify DIR`: checks a shard's store offline and reports damage.
//!
//! `DIR` is a shard's store folder (holding `data.mdb`) or a metad state
//! folder (each `shard-NNN/` in it is checked). For each store: the file
//! size and every page and node header LMDB trusts (`daemon::lmdb::check`,
//! as metad's start does), then every record of every database against
//! its checksum. One line per damaged record (database and key in hex), or
//! one line naming a structurally damaged page; one summary line per
//! store. Exit status 0 when everything is intact, 1 when damage was
//! found, 2 when a store could not be read (truncated, not LMDB). Run it
//! on a stopped shard: it opens the store like metad does.
//!
//! A store that faulted while serving carries `daemon::fault`'s marker,
//! and metad refuses to start on it. Verify checks it all the same, and
//! removes the marker when the store is intact (saying so): the fault was
//! not in the file (a transient read error), and the store may serve again.
//!
//! Each store is walked in a child process (`metad --verify-store
//! FOLDER`): the structural check makes LMDB's walk safe, but a disk read
//! error while walking still faults (SIGBUS). The parent then reports
//! that store as damaged instead of dying with it.

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
    let store = Store::open_despite_fault(folder)?;
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
        status = status.max(run_child(&folder));
    }
    status
}

/// Checks one store in a child process; its exit status, or 1 with a
/// line of its own when LMDB crashed the child.
fn run_child(folder: &Path) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    let child = std::env::current_exe()
        .and_then(|exe| std::process::Command::new(exe).arg("--verify-store").arg(folder).status());
    match child {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(2),
            (None, signal) => {
                println!(
                    "{}: damaged: reading it faulted (signal {}); restore it from a copy",
                    folder.display(),
                    signal.unwrap_or(0)
                );
                1
            }
        },
        Err(error) => {
            println!("{}: cannot verify: cannot start the checking process: {error}", folder.display());
            2
        }
    }
}

/// Checks one store in this process and prints its report; the status.
fn run_store(folder: &Path) -> u8 {
    match verify_store(folder) {
        Ok(report) => {
            for (database, key) in &report.damaged {
                println!("damaged {} {database} key {}", folder.display(), hex(key));
            }
            println!("{}: {} records, {} damaged", folder.display(), report.records, report.damaged.len());
            if !report.damaged.is_empty() {
                return 1;
            }
            if let Some((marker, line)) = daemon::fault::marker(folder) {
                match std::fs::remove_file(&marker) {
                    Ok(()) => println!("{}: intact; removed the fault marker ({line})", folder.display()),
                    Err(error) => {
                        println!(
                            "{}: intact, but cannot remove the fault marker {}: {error}",
                            folder.display(),
                            marker.display()
                        );
                        return 2;
                    }
                }
            }
            0
        }
        Err(error @ StoreError::Damaged(daemon::lmdb::Damage::Page { .. })) => {
            println!("{}: structurally damaged: {error}", folder.display());
            1
        }
        Err(error) => {
            println!("{}: cannot verify: {error}", folder.display());
            2
        }
    }
}

/// The hook `main` calls first: `Some(exit status)` when the command line
/// is `metad --verify DIR` (or the internal `--verify-store FOLDER`).
pub fn main_hook() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    let first = args.next()?;
    let run: fn(&Path) -> u8 = if first == "--verify" {
        run
    } else if first == "--verify-store" {
        run_store
    } else {
        return None;
    };
    match (args.next(), args.next()) {
        (Some(dir), None) => Some(run(Path::new(&dir))),
        _ => {
            eprintln!("metad: usage: metad --verify DIR");
            Some(2)
        }
    }
}
