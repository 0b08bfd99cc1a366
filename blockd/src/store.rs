//! The block service's folder: its layout, its secret key, and the start-up
//! work done before any request is served (plain `std` code: it runs once,
//! before the executors start).
//!
//! ```text
//! <DIR>/secret.key           16 random bytes, mode 0600, flock'ed for the daemon's life
//! <DIR>/io-probe             4 KiB that each executor reads once with O_DIRECT (see below)
//! <DIR>/tmp/<block>.<n>.<m>  a block being written (removed at start: a crash leftover)
//! <DIR>/<hh>/<16 hex>        a block: the 16 hex digits of the block id's
//!                            little-endian bytes; <hh> is the first two of them
//! ```
//!
//! The folders are 0700 and block files 0600 (the service's user only;
//! start-up tightens what older versions made 0755/0644).
//!
//! This is the prototype's layout (DESIGN.md §6), kept so that tools which
//! look at a block service's folder keep working. The first byte of a block
//! id's little-endian form is the shard that made it, so the 256 folders
//! spread blocks by shard. The folders and `tmp/` are made (and the root
//! fsync'ed) at start, so the request path never creates a directory.
//!
//! A block file is only ever created by a rename from `tmp/` after its bytes
//! and size are durable, so a block visible under its final name is always
//! complete; a crash leaves at most a file in `tmp/`, which start-up removes.
//!
//! `io-probe` exists for glommio: the first O_DIRECT file it opens on a
//! device decides, with one read, whether the device supports io_uring
//! polling. Read from an empty temporary file, that read succeeds without
//! touching the device and wrongly enables polling (reads then fail with
//! EOPNOTSUPP on devices without poll queues), so every executor opens this
//! non-empty file first and the answer is the device's own.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wire::ids::BlockId;
use wire::mac::{KEY_BYTES, SecretKey};

/// Name of the key file inside the block service's folder.
pub const SECRET_KEY_FILE: &str = "secret.key";
/// Folder of blocks being written.
pub const TEMP_DIR: &str = "tmp";
/// The file every executor reads once at start (see the module docs).
pub const IO_PROBE_FILE: &str = "io-probe";
/// Size of the probe file: at least one O_DIRECT block of any device.
const IO_PROBE_BYTES: usize = 4096;
/// Number of block folders: one per value of a block id's low byte.
pub const BLOCK_DIR_COUNT: usize = 256;
/// A key must not start with shuckle's datagram magic: shuckle tells a
/// registration (which starts with the key) from its own headered datagrams
/// by those three bytes.
const SHUCKLE_MAGIC_PREFIX: &[u8; 3] = b"EGK";

/// Failures of the folder and the key file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is locked: another blockd serves this folder")]
    Locked { path: PathBuf },
    #[error("{path} holds {len} bytes, a key is {KEY_BYTES}")]
    BadKeyLength { path: PathBuf, len: usize },
}

fn io_error<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { operation, path: path.to_path_buf(), source }
}

/// Paths of the folder.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Index (0..256) of the folder holding `block_id`: its low byte.
    pub fn block_dir_index(block_id: BlockId) -> usize {
        (block_id.get() & 0xff) as usize
    }

    /// The folder of index `index`, two lowercase hex digits.
    pub fn block_dir(&self, index: usize) -> PathBuf {
        self.root.join(format!("{:02x}", index & 0xff))
    }

    /// The file name of a block: the hex of its little-endian bytes.
    pub fn block_file_name(block_id: BlockId) -> String {
        format!("{:016x}", block_id.get().swap_bytes())
    }

    /// The block id a file name stands for, if it is one.
    pub fn parse_block_file_name(name: &str) -> Option<BlockId> {
        if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        u64::from_str_radix(name, 16).ok().map(|le| BlockId::new(le.swap_bytes()))
    }

    pub fn block_path(&self, block_id: BlockId) -> PathBuf {
        self.block_dir(Self::block_dir_index(block_id)).join(Self::block_file_name(block_id))
    }

    pub fn temp_dir(&self) -> PathBuf {
        self.root.join(TEMP_DIR)
    }

    /// A temporary file for `block_id`; `executor` and `sequence` make it
    /// unique within this process, and `tmp/` is emptied at every start.
    pub fn temp_path(&self, block_id: BlockId, executor: usize, sequence: u64) -> PathBuf {
        self.temp_dir().join(format!("{}.{executor}.{sequence}", Self::block_file_name(block_id)))
    }

    pub fn key_path(&self) -> PathBuf {
        self.root.join(SECRET_KEY_FILE)
    }

    pub fn io_probe_path(&self) -> PathBuf {
        self.root.join(IO_PROBE_FILE)
    }
}

/// The secret key, and the locked key file: the lock lasts as long as this
/// value, i.e. the daemon's life.
pub struct KeyHolder {
    pub key: SecretKey,
    _locked_file: File,
}

/// Opens (creating at first start) and locks the key file.
///
/// A new key is written to a private file first and then hard-linked to its
/// name, so the key file appears complete or not at all, even when two
/// daemons start at once on an empty folder; the loser of the lock exits.
pub fn open_key(layout: &Layout) -> Result<KeyHolder, StoreError> {
    let path = layout.key_path();
    loop {
        match File::open(&path) {
            Ok(file) => return lock_and_read_key(file, &path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_key(layout, &path)?,
            Err(e) => return Err(io_error("opening", &path)(e)),
        }
    }
}

fn lock_and_read_key(mut file: File, path: &Path) -> Result<KeyHolder, StoreError> {
    // SAFETY: flock on a descriptor we own; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(StoreError::Locked { path: path.to_path_buf() });
        }
        return Err(io_error("locking", path)(e));
    }
    let mut bytes = Vec::with_capacity(KEY_BYTES + 1);
    Read::by_ref(&mut file).take(KEY_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io_error("reading", path))?;
    let key: [u8; KEY_BYTES] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::BadKeyLength { path: path.to_path_buf(), len: bytes.len() })?;
    Ok(KeyHolder { key: SecretKey(key), _locked_file: file })
}

fn create_key(layout: &Layout, path: &Path) -> Result<(), StoreError> {
    let staging = layout.root().join(format!("{SECRET_KEY_FILE}.new.{}", std::process::id()));
    let _ = fs::remove_file(&staging);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .map_err(io_error("creating", &staging))?;
    let key = new_key();
    let written = file.write_all(&key.0).and_then(|()| file.sync_all());
    let linked = written.and_then(|()| match fs::hard_link(&staging, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = fs::remove_file(&staging);
    linked.map_err(io_error("creating", path))?;
    sync_dir(layout.root())
}

/// 16 random bytes that do not start with shuckle's magic.
pub fn new_key() -> SecretKey {
    loop {
        let key: [u8; KEY_BYTES] = rand::random();
        if !key.starts_with(SHUCKLE_MAGIC_PREFIX) {
            return SecretKey(key);
        }
    }
}

/// fsync of a folder, so that entries made or removed in it are durable.
pub fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|dir| dir.sync_all()).map_err(io_error("syncing", path))
}

/// Bytes and blocks stored, as found at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub used_blocks: u64,
}

/// Mode of block files: readable and writable by the service only.
pub const BLOCK_FILE_MODE: u32 = 0o600;
/// Mode of the service's folder, `tmp/` and the block folders.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its parents) if missing, and makes it [`DIR_MODE`].
fn make_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
    let mode = fs::metadata(dir).map_err(io_error("reading", dir))?.permissions().mode();
    if mode & 0o777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io_error("restricting", dir))?;
    }
    Ok(())
}

/// Makes the block folders and `tmp/`, removes what a crash left in `tmp/`,
/// and counts the stored blocks. Files in block folders whose names are not
/// block names are left alone and not counted (logged).
pub fn prepare(layout: &Layout) -> Result<Usage, StoreError> {
    let temp_dir = layout.temp_dir();
    make_private_dir(layout.root())?;
    make_private_dir(&temp_dir)?;
    let mut removed = 0usize;
    for entry in fs::read_dir(&temp_dir).map_err(io_error("listing", &temp_dir))? {
        let entry = entry.map_err(io_error("listing", &temp_dir))?;
        let path = entry.path();
        fs::remove_file(&path).map_err(io_error("removing", &path))?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(removed, "removed temporary files left by an earlier run");
        sync_dir(&temp_dir)?;
    }
    let mut usage = Usage::default();
    for index in 0..BLOCK_DIR_COUNT {
        let dir = layout.block_dir(index);
        make_private_dir(&dir)?;
        for entry in fs::read_dir(&dir).map_err(io_error("listing", &dir))? {
            let entry = entry.map_err(io_error("listing", &dir))?;
            let name = entry.file_name();
            let block_id = name.to_str().and_then(Layout::parse_block_file_name);
            match block_id {
                Some(block_id) if Layout::block_dir_index(block_id) == index => {
                    let metadata = entry.metadata().map_err(io_error("reading", &entry.path()))?;
                    // Blocks written by older versions were 0644.
                    if metadata.permissions().mode() & 0o077 != 0 {
                        let path = entry.path();
                        fs::set_permissions(&path, fs::Permissions::from_mode(BLOCK_FILE_MODE))
                            .map_err(io_error("restricting", &path))?;
                    }
                    usage.used_bytes += metadata.len();
                    usage.used_blocks += 1;
                }
                _ => tracing::warn!(path = %entry.path().display(), "not a block file; ignored"),
            }
        }
    }
    let probe = layout.io_probe_path();
    if fs::metadata(&probe).map(|m| m.len() != IO_PROBE_BYTES as u64).unwrap_or(true) {
        fs::write(&probe, [0u8; IO_PROBE_BYTES]).map_err(io_error("creating", &probe))?;
    }
    sync_dir(layout.root())?;
    Ok(usage)
}

/// `path` as a C string for a system call (`InvalidInput` if it holds a
/// NUL byte).
pub(crate) fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with NUL"))
}

/// Free bytes (for an unprivileged writer) and free inodes of the folder's
/// filesystem.
pub fn free_space(path: &Path) -> io::Result<(u64, u64)> {
    let c_path = c_path(path)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: valid C string and a properly sized out-parameter.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast, reason = "field widths differ between libc targets")]
    let free_bytes = (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64);
    #[allow(clippy::unnecessary_cast, reason = "field widths differ between libc targets")]
    let free_inodes = stat.f_favail as u64;
    Ok((free_bytes, free_inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_are_the_little_endian_hex() {
        let block_id = BlockId::new(0x1122_3344_5566_7788);
        assert_eq!(Layout::block_file_name(block_id), "8877665544332211");
        assert_eq!(Layout::block_dir_index(block_id), 0x88);
        let layout = Layout::new("/d");
        assert_eq!(layout.block_path(block_id), Path::new("/d/88/8877665544332211"));
        assert_eq!(Layout::parse_block_file_name("8877665544332211"), Some(block_id));
        assert_eq!(Layout::parse_block_file_name("8877665544332211.0.1"), None);
        assert_eq!(Layout::parse_block_file_name("8877665544332G11"), None);
        assert_eq!(Layout::parse_block_file_name("8877665544332A11"), None);
        assert_eq!(Layout::parse_block_file_name("+877665544332211"), None);
    }

    #[test]
    fn key_is_created_once_and_locked() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let first = open_key(&layout).unwrap();
        assert!(matches!(open_key(&layout), Err(StoreError::Locked { .. })));
        let key = first.key;
        drop(first);
        assert_eq!(open_key(&layout).unwrap().key, key);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(layout.key_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no staging file left");
    }

    #[test]
    fn short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fs::write(layout.key_path(), [1u8; 5]).unwrap();
        assert!(matches!(open_key(&layout), Err(StoreError::BadKeyLength { len: 5, .. })));
    }

    #[test]
    fn new_keys_never_start_with_the_shuckle_magic() {
        for _ in 0..1000 {
            assert!(!new_key().0.starts_with(SHUCKLE_MAGIC_PREFIX));
        }
    }

    #[test]
    fn prepare_cleans_temporaries_and_counts_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(prepare(&layout).unwrap(), Usage::default());
        let block_id = BlockId::new(0x0102_0304_0506_0708);
        fs::write(layout.block_path(block_id), [7u8; 10]).unwrap();
        fs::write(layout.temp_path(block_id, 0, 1), [7u8; 3]).unwrap();
        fs::write(layout.block_dir(0).join("junk"), [7u8; 3]).unwrap();
        // A block name in the wrong folder is not a block.
        fs::write(layout.block_dir(1).join(Layout::block_file_name(block_id)), [7u8; 3]).unwrap();
        assert_eq!(prepare(&layout).unwrap(), Usage { used_bytes: 10, used_blocks: 1 });
        assert_eq!(fs::read_dir(layout.temp_dir()).unwrap().count(), 0);
        assert_eq!(fs::metadata(layout.io_probe_path()).unwrap().len(), IO_PROBE_BYTES as u64);
    }
}
