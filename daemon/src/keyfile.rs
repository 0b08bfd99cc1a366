//! Key files: exactly 16 random bytes, mode 0600. The one loader of the
//! cluster key, for shuckle, the shards, the CDC and `eggs local-cluster`.
//!
//! A missing key is created atomically: the bytes go to a staging file of
//! this process, are synced, and the staging file is hard-linked to the key's
//! name, which fails if another process got there first. Two daemons started
//! together on one folder (as `eggs local-cluster` does) therefore agree on
//! one key, and nobody ever reads a half-written key file. The key's bytes
//! are never printed.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use wire::SecretKey;
use wire::mac::KEY_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key file {path}: holds {len} bytes, a key is exactly {KEY_BYTES}")]
    BadLength { path: String, len: usize },
}

/// Reads the key at `path`, creating it when it does not exist.
pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.display().to_string(), source };
    match read(path) {
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let staging = path.with_extension(format!("staging.{}.{:016x}", std::process::id(), rand::random::<u64>()));
    let created = write_staging(&staging).and_then(|()| match std::fs::hard_link(&staging, path) {
        Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => Err(error),
        // Linked, or another process linked its key first: either way the
        // key at `path` is complete.
        _ => Ok(()),
    });
    let _ = std::fs::remove_file(&staging);
    created.map_err(io)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent).and_then(|dir| dir.sync_all()).map_err(io)?;
    }
    read(path)
}

fn write_staging(staging: &Path) -> std::io::Result<()> {
    let mut key = [0u8; KEY_BYTES];
    rand::fill(&mut key);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(staging)?;
    file.write_all(&key)?;
    file.sync_all()
}

fn read(path: &Path) -> Result<SecretKey, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.display().to_string(), source };
    let mut bytes = Vec::with_capacity(KEY_BYTES + 1);
    std::fs::File::open(path).map_err(io)?.take(KEY_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    let key: [u8; KEY_BYTES] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyFileError::BadLength { path: path.display().to_string(), len: bytes.len() })?;
    Ok(SecretKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let first = load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), first);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no staging file is left behind");
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(load_or_create(&path), Err(KeyFileError::BadLength { len: 5, .. })));
    }

    // Regression: daemons started together on one folder each made their
    // own key when creation and reading raced.
    #[test]
    fn concurrent_creators_agree_on_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cluster.key");
            let keys: Vec<SecretKey> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| load_or_create(&path).unwrap())).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(keys.iter().all(|key| *key == keys[0]));
        }
    }

    #[test]
    fn a_missing_folder_is_a_clear_error() {
        let error = load_or_create(Path::new("/nonexistent-eggsfs-folder/cluster.key")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent-eggsfs-folder/cluster.key"));
    }
}
