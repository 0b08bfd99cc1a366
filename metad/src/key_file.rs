//! Key files: exactly 16 random bytes, mode 0600, created with `O_EXCL` when
//! missing so that two processes starting together agree on one key.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use wire::mac::{KEY_BYTES, SecretKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key file {path} has {len} bytes, expected {KEY_BYTES}")]
    BadLength { path: String, len: usize },
}

/// Reads the key at `path`, creating it (random, 0600) if it does not exist.
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
    // Another process may have just created it: retry briefly until the
    // 16 bytes are there.
    for _ in 0..50 {
        let mut bytes = Vec::with_capacity(KEY_BYTES + 1);
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io)?;
        if bytes.len() == KEY_BYTES {
            let mut key = [0u8; KEY_BYTES];
            key.copy_from_slice(&bytes);
            return Ok(SecretKey(key));
        }
        if bytes.len() > KEY_BYTES {
            return Err(KeyFileError::BadLength { path: path.display().to_string(), len: bytes.len() });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let len = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
    Err(KeyFileError::BadLength { path: path.display().to_string(), len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_once_then_reads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let first = load_or_create(&path).unwrap();
        let second = load_or_create(&path).unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, b"short").unwrap();
        assert!(load_or_create(&path).is_err());
    }
}
