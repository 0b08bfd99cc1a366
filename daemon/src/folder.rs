//! A daemon's folder: made absolute, created, and locked for the daemon's life.
//!
//! **Absolute before anything opens it.** glommio cannot open directories
//! given by a relative path on some kernels (glommio issue #637: `Bad file
//! descriptor` opening `./eggsfs-data/blocks/0/00`), so every folder flag goes
//! through [`prepare`] before a daemon hands it to anything.
//!
//! **One daemon per folder.** [`FolderLock`] takes an exclusive `flock` on
//! `FOLDER/lock` and holds it until dropped (in practice: until the process
//! exits, when the kernel releases it, also after SIGKILL). The holder writes
//! its pid and process name into the file (`1234 metad`), so a second daemon
//! on the same folder can say who holds it. That line is informative only:
//! the lock is the `flock`, never the file's contents, so a stale line from
//! a killed daemon does no harm. The file is created 0600.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside a locked folder.
pub const LOCK_FILE: &str = "lock";
/// Most bytes read from a lock file to find the holder's pid.
const LOCK_FILE_BYTES_MAX: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The folder cannot be made absolute, created or locked.
    #[error("{folder}: cannot {action}: {source}")]
    Io { folder: PathBuf, action: &'static str, source: std::io::Error },
    /// Another process holds the folder's lock.
    #[error("{folder} is in use by {} (lock file {folder}/{LOCK_FILE})", holder(*pid, process.as_deref()))]
    Locked { folder: PathBuf, pid: Option<u32>, process: Option<String> },
}

fn holder(pid: Option<u32>, process: Option<&str>) -> String {
    let process = process.unwrap_or("process");
    match pid {
        Some(pid) => format!("another {process} (pid {pid})"),
        None => format!("another {process}"),
    }
}

/// `path` made absolute against the current folder (not canonicalised:
/// symbolic links stay as given).
pub fn absolute(path: &Path) -> Result<PathBuf, FolderError> {
    std::path::absolute(path).map_err(|source| FolderError::Io {
        folder: path.to_path_buf(),
        action: "make the path absolute",
        source,
    })
}

/// `path` made absolute and created (with its parents) if missing.
pub fn prepare(path: &Path) -> Result<PathBuf, FolderError> {
    let folder = absolute(path)?;
    std::fs::create_dir_all(&folder).map_err(|source| FolderError::Io {
        folder: folder.clone(),
        action: "create the folder",
        source,
    })?;
    Ok(folder)
}

/// An exclusive lock on a folder, held while this value lives.
#[derive(Debug)]
pub struct FolderLock {
    folder: PathBuf,
    _file: File,
}

impl FolderLock {
    /// Locks `folder` (which must exist) for `process` (its name, recorded
    /// with the pid), or says who holds it.
    pub fn acquire(folder: &Path, process: &str) -> Result<Self, FolderError> {
        let folder = absolute(folder)?;
        let io = |action, source| FolderError::Io { folder: folder.clone(), action, source };
        let path = folder.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("open its lock file", e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                let (pid, process) = recorded_holder(&mut file);
                return Err(FolderError::Locked { pid, process, folder });
            }
            return Err(io("lock it", error));
        }
        let recorded = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{} {process}", std::process::id()));
        recorded.map_err(|e| io("write its lock file", e))?;
        Ok(Self { folder, _file: file })
    }

    /// The locked folder (absolute).
    pub fn folder(&self) -> &Path {
        &self.folder
    }
}

/// The pid and process name the holder wrote, as far as they can be read.
fn recorded_holder(file: &mut File) -> (Option<u32>, Option<String>) {
    let mut text = String::new();
    if file.take(LOCK_FILE_BYTES_MAX).read_to_string(&mut text).is_err() {
        return (None, None);
    }
    let mut words = text.split_whitespace();
    let pid = words.next().and_then(|word| word.parse().ok());
    let process = words.next().filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    (pid, process.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_folder_and_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = FolderLock::acquire(dir.path(), "metad").expect("first lock");
        assert_eq!(lock.folder(), dir.path());
        // flock locks belong to the open file description: a second open in
        // the same process conflicts like another process would.
        let error = FolderLock::acquire(dir.path(), "metad").expect_err("second lock");
        match &error {
            FolderError::Locked { folder, pid, process } => {
                assert_eq!(folder, dir.path());
                assert_eq!(*pid, Some(std::process::id()));
                assert_eq!(process.as_deref(), Some("metad"));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        let line = error.to_string();
        assert!(line.contains(&dir.path().display().to_string()), "{line}");
        assert!(line.contains(&format!("another metad (pid {})", std::process::id())), "{line}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(LOCK_FILE)).expect("lock file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(lock);
        FolderLock::acquire(dir.path(), "shuckle").expect("free again once dropped");
    }

    #[test]
    fn relative_folders_become_absolute_and_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let relative = Path::new("./a/b");
        let prepared = prepare(&dir.path().join(relative)).expect("prepare");
        assert!(prepared.is_absolute() && prepared.is_dir());
        let made = absolute(Path::new("./eggsfs-data/blocks/0")).expect("absolute");
        assert!(made.is_absolute(), "{}", made.display());
        assert!(made.ends_with("eggsfs-data/blocks/0"), "{}", made.display());
        assert!(!made.to_string_lossy().contains("/./"), "no `.` component left: {}", made.display());
    }
}
