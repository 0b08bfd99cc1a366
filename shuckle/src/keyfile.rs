//! The cluster key file: exactly 16 random bytes, mode 0600, created with
//! `O_EXCL` when missing so two processes never both create one.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use wire::mac::{KEY_BYTES, SecretKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create key file {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("key file {path} has {len} bytes, not {KEY_BYTES}")]
    BadLength { path: PathBuf, len: usize },
}

/// Reads the key at `path`, creating it with fresh random bytes if missing.
pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyFileError> {
    let create_error = |source| KeyFileError::Create { path: path.to_owned(), source };
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            let key: [u8; KEY_BYTES] = rand::random();
            file.write_all(&key).map_err(create_error)?;
            file.sync_all().map_err(create_error)?;
            Ok(SecretKey(key))
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(source) => Err(create_error(source)),
    }
}

fn read(path: &Path) -> Result<SecretKey, KeyFileError> {
    let read_error = |source| KeyFileError::Read { path: path.to_owned(), source };
    let mut bytes = Vec::with_capacity(KEY_BYTES + 1);
    let file = std::fs::File::open(path).map_err(read_error)?;
    file.take(KEY_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    let key: [u8; KEY_BYTES] =
        bytes.as_slice().try_into().map_err(|_| KeyFileError::BadLength { path: path.to_owned(), len: bytes.len() })?;
    Ok(SecretKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_mode_0600_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let first = load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_BYTES);
        assert_eq!(load_or_create(&path).unwrap(), first);
    }

    #[test]
    fn wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.key");
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(load_or_create(&path), Err(KeyFileError::BadLength { len: 5, .. })));
    }
}
