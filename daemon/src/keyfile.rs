//! Key files: exactly 16 random bytes, mode 0600. The one loader of the
//! cluster key, for shuckle, the shards, the CDC and `eggs local-cluster`;
//! and shuckle's operator token (`operator.token`: the same 16 random bytes
//! as 32 lowercase hex digits and a newline, so an operator can paste it into
//! the web UI and scripts can send it as `Authorization: Bearer …`).
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
    #[error("token file {path}: not a token ({TOKEN_HEX_DIGITS} hex digits on one line)")]
    BadToken { path: String },
}

/// Hex digits of an operator token: [`KEY_BYTES`] random bytes.
pub const TOKEN_HEX_DIGITS: usize = 2 * KEY_BYTES;

/// Shuckle's operator token, as the text an operator sends. Its `Debug`
/// hides the value so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken(String);

impl OperatorToken {
    /// The token's text (32 lowercase hex digits).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `offered` is this token, comparing every byte whatever the
    /// first difference (no timing hint of how much of a guess was right).
    pub fn matches(&self, offered: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if offered.len() != expected.len() {
            return false;
        }
        let difference = expected.iter().zip(offered).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("OperatorToken(…)")
    }
}

/// Reads the operator token at `path`, creating it (0600, staged and
/// hard-linked like a key) when it does not exist.
pub fn load_or_create_token(path: &Path) -> Result<OperatorToken, KeyFileError> {
    match read_token(path) {
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut bytes = [0u8; KEY_BYTES];
    rand::fill(&mut bytes);
    let mut text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    text.push('\n');
    create_once(path, text.as_bytes())?;
    read_token(path)
}

/// Reads an existing operator token (what `eggs block-service` does).
pub fn read_token(path: &Path) -> Result<OperatorToken, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.display().to_string(), source };
    let mut bytes = Vec::with_capacity(TOKEN_HEX_DIGITS + 2);
    // A little more than a token with its line end: anything longer is not one.
    std::fs::File::open(path).map_err(io)?.take(TOKEN_HEX_DIGITS as u64 + 3).read_to_end(&mut bytes).map_err(io)?;
    let text = std::str::from_utf8(&bytes).map(str::trim_end).unwrap_or("");
    if text.len() != TOKEN_HEX_DIGITS || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(KeyFileError::BadToken { path: path.display().to_string() });
    }
    Ok(OperatorToken(text.to_ascii_lowercase()))
}

/// Reads the key at `path`, creating it when it does not exist.
pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyFileError> {
    match read(path) {
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut key = [0u8; KEY_BYTES];
    rand::fill(&mut key);
    create_once(path, &key)?;
    read(path)
}

/// Creates `path` holding `contents` unless it exists: staged, synced,
/// hard-linked (the first creator wins), then the folder synced.
fn create_once(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.display().to_string(), source };
    let staging = path.with_extension(format!("staging.{}.{:016x}", std::process::id(), rand::random::<u64>()));
    let created = write_staging(&staging, contents).and_then(|()| match std::fs::hard_link(&staging, path) {
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
    Ok(())
}

fn write_staging(staging: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(staging)?;
    file.write_all(contents)?;
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
    fn token_is_created_once_as_hex_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", token.as_str()));
        assert_eq!(token.as_str().len(), TOKEN_HEX_DIGITS);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        assert_eq!(read_token(&path).unwrap(), token);
        assert!(token.matches(token.as_str().as_bytes()));
        let mut wrong = token.as_str().as_bytes().to_vec();
        wrong[31] ^= 1;
        assert!(!token.matches(&wrong));
        assert!(!token.matches(&token.as_str().as_bytes()[..31]));
        assert!(!format!("{token:?}").contains(token.as_str()), "Debug hides the token");
        std::fs::write(&path, b"not a token\n").unwrap();
        assert!(matches!(read_token(&path), Err(KeyFileError::BadToken { .. })));
    }

    #[test]
    fn a_missing_folder_is_a_clear_error() {
        let error = load_or_create(Path::new("/nonexistent-eggsfs-folder/cluster.key")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent-eggsfs-folder/cluster.key"));
    }
}
