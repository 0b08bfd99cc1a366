//! Key files: 16 raw bytes, mode 0600, created with O_EXCL (from the OS's
//! random source) when missing. Its bytes are never printed. The one loader
//! of the cluster key for the client (`eggs local-cluster`) and cdcd.

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
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            let mut key = [0u8; KEY_BYTES];
            rand::fill(&mut key);
            file.write_all(&key).map_err(io)?;
            file.sync_all().map_err(io)?;
            return Ok(SecretKey(key));
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(io(error)),
    }
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
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(load_or_create(&path), Err(KeyFileError::BadLength { len: 5, .. })));
    }
}
