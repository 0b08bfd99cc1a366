//! The FUSE filesystem: each kernel request becomes client requests.
//!
//! The dispatch threads (two, `super::DISPATCH_THREADS`) never wait on the
//! network: every request that needs the cluster is spawned on the tokio
//! runtime and answered from there, so lookups, reads and listings of many
//! programs run at once.
//! Inode numbers are eggsfs inode ids (see [`super::attrs::fuse_ino`]), so
//! the mount keeps no inode table; it remembers only the name each inode
//! was last looked up by, for `open(O_TRUNC)`, which writes a new file
//! under that name.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use client::Client;
use client::client::{Stat, probably_succeeded};
use client::plan::{DEFAULT_POLICY, WritePolicy, encode_span};
use client::write::{FailedServices, write_span};
use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle as Runtime;
use wire::shard::{LsDirReq, ResolveMode, ShardRequest, ShardResponse};
use wire::{EggsTime, InodeId, InodeType};
use zerocopy::byteorder::little_endian::U64;

use super::MountOptions;
use super::attrs::{Owner, attributes, attributes_of, eggs_inode, errno_of, fuse_ino, kind_of};
use super::cache::{ReadHandle, SpanCache};
use super::writer::{WriteHandle, killed_by_signal, still_open_elsewhere};

/// Stats of a readdirplus page run at once.
const LISTING_STATS_IN_FLIGHT: usize = 64;
/// Names remembered for open(O_TRUNC); the table is cleared beyond this.
const NAMES_MAX: usize = 1 << 20;
/// FUSE's generation: inode ids are never reused, so always 0.
const GENERATION: Generation = Generation(0);

/// One open file or directory.
enum Handle {
    Read(Arc<ReadHandle>),
    Write(Arc<WriteHandle>),
    Directory(Arc<tokio::sync::Mutex<Listing>>),
}

/// A directory being listed: the entries fetched so far, page by page from
/// the shard. Offsets the kernel gets are indexes in this list, so they
/// stay valid across pages whatever changes meanwhile.
struct Listing {
    dir: InodeId,
    entries: Vec<(String, InodeId)>,
    /// The shard's start hash of the next page; `None` when done.
    next_hash: Option<u64>,
}

struct Inner {
    client: Client,
    runtime: Runtime,
    options: MountOptions,
    owner: Owner,
    cache: Arc<SpanCache>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    /// inode → (parent, name) it was last seen under.
    names: Mutex<HashMap<InodeId, (InodeId, String)>>,
    /// Files being written, by the inode the kernel opened (their
    /// attributes come from here).
    writing: Mutex<HashMap<InodeId, Arc<WriteHandle>>>,
    notifier: Arc<OnceLock<Notifier>>,
    /// Where the mount is (to recognise a writer's other descriptors).
    mountpoint: std::path::PathBuf,
}

/// The filesystem given to fuser.
pub struct EggsFs(Arc<Inner>);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn name_of(name: &OsStr) -> Result<String, Errno> {
    let text = name.to_str().ok_or(Errno::EINVAL)?;
    if text.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(text.to_owned())
}

/// The errno of `error`, logged when the cluster (not the caller) failed.
fn failed(operation: &str, error: &client::ClientError) -> Errno {
    let (errno, log) = errno_of(error);
    if log {
        tracing::error!(operation, %error, "eggsfs request failed");
    } else {
        tracing::debug!(operation, %error, "refused");
    }
    errno
}

impl EggsFs {
    pub fn new(client: Client, runtime: Runtime, options: MountOptions, mountpoint: std::path::PathBuf) -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let owner = unsafe { Owner { uid: libc::getuid(), gid: libc::getgid() } };
        let cache = Arc::new(SpanCache::new(client.clone(), options.cache_bytes));
        Self(Arc::new(Inner {
            client,
            runtime,
            options,
            owner,
            cache,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            names: Mutex::new(HashMap::new()),
            writing: Mutex::new(HashMap::new()),
            notifier: Arc::new(OnceLock::new()),
            mountpoint,
        }))
    }

    /// Where the session's notifier goes once mounted (to drop the
    /// kernel's cached entry of a name when a file is linked over it).
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.0.notifier.clone()
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, future: F) {
        self.0.runtime.spawn(future);
    }

    /// The name a mutation creates or removes: EROFS on a read-only mount,
    /// else [`name_of`]'s checks.
    fn writable_name(&self, name: &OsStr) -> Result<String, Errno> {
        if self.0.options.read_only {
            return Err(Errno::EROFS);
        }
        name_of(name)
    }
}

impl Inner {
    fn entry_ttl(&self) -> Duration {
        self.options.entry_timeout
    }

    fn attr_ttl(&self) -> Duration {
        self.options.attr_timeout
    }

    fn add_handle(&self, handle: Handle) -> FileHandle {
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(id, handle);
        FileHandle(id)
    }

    /// The listing of the open directory `handle` (`None` for a file's
    /// handle or an unknown one).
    fn listing(&self, handle: FileHandle) -> Option<Arc<tokio::sync::Mutex<Listing>>> {
        match lock(&self.handles).get(&handle.0) {
            Some(Handle::Directory(listing)) => Some(listing.clone()),
            _ => None,
        }
    }

    fn remember(&self, inode: InodeId, parent: InodeId, name: &str) {
        let mut names = lock(&self.names);
        if names.len() >= NAMES_MAX {
            names.clear();
        }
        names.insert(inode.without_owning(), (parent, name.to_owned()));
    }

    /// The attributes of `inode` (a file being written answers itself).
    async fn attr(&self, inode: InodeId) -> Result<FileAttr, Errno> {
        if let Some(writer) = lock(&self.writing).get(&inode).cloned() {
            return Ok(attributes_of(inode, writer.size(), EggsTime::now(), self.owner));
        }
        let stat = self.client.stat(inode).await.map_err(|error| failed("stat", &error))?;
        Ok(attributes(inode, &stat, self.owner))
    }

    /// Resolves `parent/name` to its living inode.
    async fn resolve(&self, parent: InodeId, name: &str) -> Result<InodeId, Errno> {
        match self.client.resolve(parent, name, ResolveMode::Alive, EggsTime::ZERO).await {
            Ok(Some((inode, _))) => Ok(inode.without_owning()),
            Ok(None) => Err(Errno::ENOENT),
            Err(error) => Err(failed("resolve", &error)),
        }
    }

    async fn lookup(&self, parent: InodeId, name: &str) -> Result<FileAttr, Errno> {
        let inode = self.resolve(parent, name).await?;
        self.remember(inode, parent, name);
        self.attr(inode).await
    }

    /// The write policy of files in `dir`.
    async fn policy(&self, dir: InodeId) -> Result<WritePolicy, Errno> {
        let base = self.client.effective_policy(dir).await.map_err(|error| failed("policy", &error))?;
        Ok(base.map_or(DEFAULT_POLICY, |(policy, _)| policy.into()))
    }

    /// Starts writing a new file to be linked as `parent/name`.
    /// `replacing`: the inode the kernel opened with O_TRUNC, if any.
    async fn start_write(
        &self,
        parent: InodeId,
        name: &str,
        replacing: Option<InodeId>,
    ) -> Result<Arc<WriteHandle>, Errno> {
        let policy = self.policy(parent).await?;
        let eden = self
            .client
            .create_eden_file(parent.shard(), InodeType::File)
            .await
            .map_err(|error| failed("create_eden_file", &error))?;
        let kernel_ino = fuse_ino(replacing.unwrap_or(eden.inode)).0;
        let writer =
            Arc::new(WriteHandle::start(self.client.clone(), eden, kernel_ino, parent, name.to_owned(), policy));
        lock(&self.writing).insert(replacing.unwrap_or(eden.inode), writer.clone());
        Ok(writer)
    }

    /// Links a written file: waits for its last span and the link.
    async fn finish_write(&self, writer: &WriteHandle, pid: u32) -> Result<(), Errno> {
        let killed = killed_by_signal(pid);
        if !killed {
            let ino = writer.kernel_ino;
            let mountpoint = self.mountpoint.clone();
            let elsewhere =
                tokio::task::spawn_blocking(move || still_open_elsewhere(pid, &mountpoint, ino)).await.unwrap_or(false);
            if elsewhere {
                // A duplicate descriptor was closed; the file is not done.
                return Ok(());
            }
        }
        let task = match writer.close(killed) {
            Ok(Some(task)) => task,
            Ok(None) => {
                if killed {
                    tracing::warn!(inode = %writer.eden.inode, name = %writer.name, pid,
                        "writer killed by a signal: file abandoned (an eden file the shard will expunge)");
                    self.abandoned(writer);
                }
                return Ok(());
            }
            Err(errno) => return Err(errno),
        };
        let result = match task.await {
            Ok(Ok(_size)) => Ok(()),
            Ok(Err(error)) => Err(failed("write", &error)),
            Err(error) => {
                tracing::error!(%error, "writer task failed");
                Err(Errno::EIO)
            }
        };
        writer.finished(result.err());
        lock(&self.writing).remove(&eggs_inode(INodeNo(writer.kernel_ino)));
        if result.is_ok() {
            self.remember(writer.eden.inode, writer.parent, &writer.name);
            // A file linked over an older one is a new inode: drop the
            // kernel's entry so the name resolves again.
            if let Some(notifier) = self.notifier.get() {
                let _ = notifier.inval_entry(fuse_ino(writer.parent), OsStr::new(&writer.name));
            }
        }
        result
    }

    /// Forgets an abandoned file, and the kernel's entry for its name (it
    /// was never linked, so the name is what it was before).
    fn abandoned(&self, writer: &WriteHandle) {
        lock(&self.writing).remove(&eggs_inode(INodeNo(writer.kernel_ino)));
        if let Some(notifier) = self.notifier.get() {
            let _ = notifier.inval_entry(fuse_ino(writer.parent), OsStr::new(&writer.name));
        }
    }

    /// Fetches listing pages until entry `index` exists or the listing ends.
    async fn fill_listing(&self, listing: &mut Listing, index: usize) -> Result<(), Errno> {
        while listing.entries.len() <= index {
            let Some(start_hash) = listing.next_hash else { return Ok(()) };
            let request = ShardRequest::LsDir(LsDirReq {
                dir: listing.dir,
                as_of: EggsTime::ZERO,
                start_hash: U64::new(start_hash),
                flags: 0,
            });
            let reply =
                self.client.shard_request(listing.dir.shard(), &request).await.map_err(|error| failed("ls", &error))?;
            let response = reply.get().map_err(|error| failed("ls", &error.into()))?;
            let ShardResponse::LsDir(page) = &response else {
                tracing::error!(dir = %listing.dir, "ls_dir: unexpected response");
                return Err(Errno::EIO);
            };
            listing.entries.extend(
                page.entries.iter().map(|entry| (entry.name.as_str().to_owned(), entry.inode.without_owning())),
            );
            let next = page.next_hash.get();
            listing.next_hash = (page.more != 0 && next > start_hash).then_some(next);
        }
        Ok(())
    }
}

/// How the kernel reads a file of `size` bytes opened read-only.
///
/// Up to `kernel_cache_max` bytes through its page cache, kept across opens
/// (`FOPEN_KEEP_CACHE`: a linked file never changes), so re-reads and small
/// reads never reach the mount. Larger files with direct I/O
/// (`FOPEN_DIRECT_IO`): each `read` becomes one request of the reader's own
/// size (1 MiB for `cat`, which sizes its buffer by `st_blksize`), and the
/// kernel copies the reply straight into the reader's buffer. Through the
/// page cache the reply is copied into cache pages, which the reader then
/// copies out again, and a gigabyte of pages is allocated and reclaimed:
/// that cost the reader 0.6 CPU seconds per GiB, against 0.1 with direct
/// I/O, and held `cat` at 46-61 % of `eggs cat`. The mount's span cache and
/// read-ahead do the caching and read-ahead instead; `mmap` still works
/// (`FUSE_DIRECT_IO_ALLOW_MMAP`: mapped pages go through the page cache).
fn read_flags(size: u64, kernel_cache_max: u64) -> FopenFlags {
    if size > kernel_cache_max { FopenFlags::FOPEN_DIRECT_IO } else { FopenFlags::FOPEN_KEEP_CACHE }
}

impl Filesystem for EggsFs {
    fn init(&mut self, _request: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open (a file is replaced, never cut);
        // readdirplus gives `ls -l` its sizes in the listing; parallel
        // directory operations let many lookups run at once; files read
        // with direct I/O can still be mapped (`read_flags`).
        let wanted = InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        let _ = config.add_capabilities(wanted & config.capabilities());
        // Large requests: 1 MiB writes, and reads of up to 1 MiB (fuser
        // answers `max_pages` from the larger of the two). The kernel
        // offers its default read-ahead, 128 KiB, and takes no more: the
        // mount raises it afterwards (`super::widen_kernel_read_ahead`).
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20).or_else(|nearest| config.set_max_readahead(nearest));
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(errno) => return reply.error(errno),
        };
        let inner = self.0.clone();
        self.spawn(async move {
            match inner.lookup(eggs_inode(parent), &name).await {
                Ok(attr) => reply.entry(&inner.entry_ttl(), &attr, GENERATION),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn getattr(&self, _request: &Request, ino: INodeNo, _handle: Option<FileHandle>, reply: ReplyAttr) {
        let inner = self.0.clone();
        self.spawn(async move {
            match inner.attr(eggs_inode(ino)).await {
                Ok(attr) => reply.attr(&inner.attr_ttl(), &attr),
                Err(errno) => reply.error(errno),
            }
        });
    }

    /// eggsfs keeps no modes, owners or times of its own choosing: a change
    /// to what the inode already reports is refused (EPERM), setting it to
    /// the same value succeeds (so `cp -p`, `rsync -a` and `tar x` work
    /// when nothing changes). Times are accepted and not kept (eggsfs sets
    /// mtime at link; `tar x` and `rsync -a` set times on every file), which
    /// the README says. A size is accepted only as 0 on a file being
    /// written and still empty (the O_TRUNC of a new file).
    fn setattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _handle: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let inner = self.0.clone();
        self.spawn(async move {
            let inode = eggs_inode(ino);
            let attr = match inner.attr(inode).await {
                Ok(attr) => attr,
                Err(errno) => return reply.error(errno),
            };
            if inner.options.read_only {
                return reply.error(Errno::EROFS);
            }
            if lock(&inner.writing).contains_key(&inode) && size.is_none_or(|size| size == attr.size) {
                // A file being written has no mode or owner of its own yet;
                // mkstemp (rsync's temporary files) fchmods it to 0600 at
                // once. Answered, and not kept: linked files are 0644.
                let mut attr = attr;
                if let Some(mode) = mode {
                    attr.perm = (mode & 0o7777) as u16;
                }
                return reply.attr(&inner.attr_ttl(), &attr);
            }
            if mode.is_some_and(|mode| (mode & 0o7777) as u16 != attr.perm) {
                return reply.error(Errno::EPERM);
            }
            if uid.is_some_and(|uid| uid != attr.uid) || gid.is_some_and(|gid| gid != attr.gid) {
                return reply.error(Errno::EPERM);
            }
            if let Some(size) = size
                && size != attr.size
            {
                // Only a file being written can change, and only by writing.
                let errno = if attr.kind == FileType::Directory { Errno::EISDIR } else { Errno::EPERM };
                return reply.error(errno);
            }
            reply.attr(&inner.attr_ttl(), &attr);
        });
    }

    fn readlink(&self, _request: &Request, ino: INodeNo, reply: ReplyData) {
        let inner = self.0.clone();
        self.spawn(async move {
            let inode = eggs_inode(ino);
            if inode.inode_type() != Some(InodeType::Symlink) {
                return reply.error(Errno::EINVAL);
            }
            let handle = match ReadHandle::open(&inner.client, inode, inner.options.read_ahead_bytes).await {
                Ok(handle) => handle,
                Err(error) => return reply.error(failed("readlink", &error)),
            };
            match handle.read_all(&inner.cache).await {
                Ok(bytes) => reply.data(&bytes),
                Err(_) => reply.error(Errno::EIO),
            }
        });
    }

    fn mknod(
        &self,
        _request: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files come through create; devices, fifos and sockets
        // have no eggsfs form.
        let _ = mode;
        reply.error(if self.0.options.read_only { Errno::EROFS } else { Errno::EPERM });
    }

    fn mkdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let name = match self.writable_name(name) {
            Ok(name) => name,
            Err(errno) => return reply.error(errno),
        };
        let inner = self.0.clone();
        self.spawn(async move {
            let parent = eggs_inode(parent);
            let inode = match inner.client.mkdir(parent, &name, &name).await {
                Ok(inode) => inode.without_owning(),
                Err(error) => return reply.error(failed("mkdir", &error)),
            };
            inner.remember(inode, parent, &name);
            match inner.attr(inode).await {
                Ok(attr) => reply.entry(&inner.entry_ttl(), &attr, GENERATION),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn unlink(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match self.writable_name(name) {
            Ok(name) => name,
            Err(errno) => return reply.error(errno),
        };
        let inner = self.0.clone();
        self.spawn(async move {
            let parent = eggs_inode(parent);
            match inner.resolve(parent, &name).await {
                Ok(inode) if inode.inode_type() == Some(InodeType::Directory) => return reply.error(Errno::EISDIR),
                Ok(_) => {}
                Err(errno) => return reply.error(errno),
            }
            match inner.client.delete_file(parent, &name).await {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(failed("unlink", &error)),
            }
        });
    }

    fn rmdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match self.writable_name(name) {
            Ok(name) => name,
            Err(errno) => return reply.error(errno),
        };
        let inner = self.0.clone();
        self.spawn(async move {
            match inner.client.rmdir(eggs_inode(parent), &name, &name).await {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(failed("rmdir", &error)),
            }
        });
    }

    fn symlink(&self, _request: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let name = match self.writable_name(link_name) {
            Ok(name) => name,
            Err(errno) => return reply.error(errno),
        };
        let target = target.as_os_str().as_encoded_bytes().to_vec();
        let inner = self.0.clone();
        self.spawn(async move {
            let parent = eggs_inode(parent);
            match inner.resolve(parent, &name).await {
                Ok(_) => return reply.error(Errno::EEXIST),
                Err(Errno::ENOENT) => {}
                Err(errno) => return reply.error(errno),
            }
            let result = async {
                let policy = inner.policy(parent).await?;
                let eden = inner
                    .client
                    .create_eden_file(parent.shard(), InodeType::Symlink)
                    .await
                    .map_err(|error| failed("symlink", &error))?;
                let size = target.len() as u64;
                if !target.is_empty() {
                    let span = encode_span(0, target, policy).map_err(|error| failed("symlink", &error.into()))?;
                    write_span(&inner.client, eden, &span, &FailedServices::new())
                        .await
                        .map_err(|error| failed("symlink", &error))?;
                }
                let mtime = inner
                    .client
                    .link_eden_file(eden, parent, &name)
                    .await
                    .map_err(|error| failed("symlink", &error))?;
                inner.remember(eden.inode, parent, &name);
                Ok::<_, Errno>(attributes_of(eden.inode, size, mtime, inner.owner))
            }
            .await;
            match result {
                Ok(attr) => reply.entry(&inner.entry_ttl(), &attr, GENERATION),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn rename(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if self.0.options.read_only {
            return reply.error(Errno::EROFS);
        }
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let (name, new_name) = match (name_of(name), name_of(new_name)) {
            (Ok(name), Ok(new_name)) => (name, new_name),
            (Err(errno), _) | (_, Err(errno)) => return reply.error(errno),
        };
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let inner = self.0.clone();
        self.spawn(async move {
            let (source, target) = (eggs_inode(parent), eggs_inode(new_parent));
            let inode = match inner.resolve(source, &name).await {
                Ok(inode) => inode,
                Err(errno) => return reply.error(errno),
            };
            let is_dir = inode.inode_type() == Some(InodeType::Directory);
            match inner.resolve(target, &new_name).await {
                Ok(existing) if existing == inode => return reply.ok(),
                Ok(_) if no_replace => return reply.error(Errno::EEXIST),
                Ok(existing) => {
                    let existing_dir = existing.inode_type() == Some(InodeType::Directory);
                    if existing_dir && !is_dir {
                        return reply.error(Errno::EISDIR);
                    }
                    if is_dir && !existing_dir {
                        return reply.error(Errno::ENOTDIR);
                    }
                    if existing_dir {
                        // eggsfs does not replace directories: an empty
                        // target is removed first, as rename(2) would.
                        if let Err(error) = inner.client.rmdir(target, &new_name, &new_name).await {
                            return reply.error(failed("rename", &error));
                        }
                    }
                }
                Err(Errno::ENOENT) => {}
                Err(errno) => return reply.error(errno),
            }
            let label = format!("{name} → {new_name}");
            let result = if source == target {
                inner.client.same_dir_rename(source, &name, &new_name).await.map(|()| inode)
            } else if is_dir {
                inner.client.mv_dir((source, &name), (target, &new_name), &label).await
            } else {
                inner.client.mv_file((source, &name), (target, &new_name), &label).await
            };
            match result {
                Ok(_) => {
                    inner.remember(inode, target, &new_name);
                    reply.ok()
                }
                Err(error) if probably_succeeded(&error) => reply.ok(),
                Err(error) => reply.error(failed("rename", &error)),
            }
        });
    }

    fn link(&self, _request: &Request, _ino: INodeNo, _new_parent: INodeNo, _new_name: &OsStr, reply: ReplyEntry) {
        // eggsfs has one name per file.
        reply.error(if self.0.options.read_only { Errno::EROFS } else { Errno::EPERM });
    }

    fn open(&self, request: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let inner = self.0.clone();
        let _ = request;
        self.spawn(async move {
            let inode = eggs_inode(ino);
            if inode.inode_type() == Some(InodeType::Directory) {
                return reply.error(Errno::EISDIR);
            }
            if flags.acc_mode() != OpenAccMode::O_RDONLY {
                if inner.options.read_only {
                    return reply.error(Errno::EROFS);
                }
                // A linked file never changes: only replacing it entirely
                // (O_TRUNC, a new file under the same name) is a write.
                if flags.0 & libc::O_TRUNC == 0 || flags.acc_mode() == OpenAccMode::O_RDWR {
                    return reply.error(Errno::EPERM);
                }
                let Some((parent, name)) = lock(&inner.names).get(&inode).cloned() else {
                    tracing::warn!(%inode, "open(O_TRUNC) of a file whose name the mount does not know");
                    return reply.error(Errno::EPERM);
                };
                return match inner.start_write(parent, &name, Some(inode)).await {
                    Ok(writer) => {
                        let handle = inner.add_handle(Handle::Write(writer));
                        reply.opened(handle, FopenFlags::FOPEN_DIRECT_IO)
                    }
                    Err(errno) => reply.error(errno),
                };
            }
            match ReadHandle::open(&inner.client, inode, inner.options.read_ahead_bytes).await {
                Ok(read) => {
                    let flags = read_flags(read.size, inner.options.kernel_cache_max_bytes);
                    let handle = inner.add_handle(Handle::Read(Arc::new(read)));
                    reply.opened(handle, flags)
                }
                Err(error) => reply.error(failed("open", &error)),
            }
        });
    }

    fn read(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let read = match lock(&self.0.handles).get(&handle.0) {
            Some(Handle::Read(read)) => read.clone(),
            Some(_) => return reply.error(Errno::EBADF),
            None => return reply.error(Errno::EBADF),
        };
        let inner = self.0.clone();
        if let Some(result) = read.read_ready(&inner.cache, &inner.runtime, offset, size) {
            return match result {
                Ok(bytes) => reply.data(&bytes),
                Err(reason) => {
                    tracing::error!(inode = %read.inode, offset, %reason, "read failed");
                    reply.error(Errno::EIO)
                }
            };
        }
        self.spawn(async move {
            match read.read(&inner.cache, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(reason) => {
                    tracing::error!(inode = %read.inode, offset, %reason, "read failed");
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn write(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match lock(&self.0.handles).get(&handle.0) {
            Some(Handle::Write(writer)) => writer.write(offset, data, reply),
            _ => reply.error(Errno::EBADF),
        }
    }

    fn flush(&self, request: &Request, _ino: INodeNo, handle: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let writer = match lock(&self.0.handles).get(&handle.0) {
            Some(Handle::Write(writer)) => writer.clone(),
            _ => return reply.ok(),
        };
        let inner = self.0.clone();
        let pid = request.pid();
        self.spawn(async move {
            match inner.finish_write(&writer, pid).await {
                Ok(()) => reply.ok(),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn release(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let removed = lock(&self.0.handles).remove(&handle.0);
        if let Some(Handle::Write(writer)) = removed {
            // Closed without a flush that linked it (the writer died):
            // abandoned, an eden file for the shard to expunge.
            if let Ok(None) = writer.close(true) {
                let inner = self.0.clone();
                self.spawn(async move { inner.abandoned(&writer) });
            }
        }
        reply.ok();
    }

    fn fsync(&self, _request: &Request, _ino: INodeNo, handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Spans are durable once certified; the file becomes visible at
        // close. An fsync of an open writer cannot make it more durable
        // without linking it, so it succeeds only for readers.
        match lock(&self.0.handles).get(&handle.0) {
            Some(Handle::Write(_)) => reply.error(Errno::ENOTSUP),
            _ => reply.ok(),
        }
    }

    fn opendir(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let inner = self.0.clone();
        self.spawn(async move {
            let dir = eggs_inode(ino);
            let parent = match inner.client.stat(dir).await {
                Ok(Stat::Directory { parent, .. }) => {
                    if parent.is_null() {
                        dir
                    } else {
                        parent.without_owning()
                    }
                }
                Ok(Stat::File { .. }) => return reply.error(Errno::ENOTDIR),
                Err(error) => return reply.error(failed("opendir", &error)),
            };
            let listing = Listing { dir, entries: vec![(".".into(), dir), ("..".into(), parent)], next_hash: Some(0) };
            let handle = inner.add_handle(Handle::Directory(Arc::new(tokio::sync::Mutex::new(listing))));
            reply.opened(handle, FopenFlags::empty());
        });
    }

    fn readdir(&self, _request: &Request, _ino: INodeNo, handle: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(listing) = self.0.listing(handle) else { return reply.error(Errno::EBADF) };
        let inner = self.0.clone();
        self.spawn(async move {
            let mut listing = listing.lock().await;
            let mut index = offset as usize;
            loop {
                if let Err(errno) = inner.fill_listing(&mut listing, index).await {
                    return reply.error(errno);
                }
                let Some((name, inode)) = listing.entries.get(index) else { break };
                if reply.add(fuse_ino(*inode), index as u64 + 1, kind_of(*inode), name) {
                    break;
                }
                index += 1;
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(listing) = self.0.listing(handle) else { return reply.error(Errno::EBADF) };
        let inner = self.0.clone();
        self.spawn(async move {
            let mut listing = listing.lock().await;
            let mut index = offset as usize;
            'pages: loop {
                // Stat a batch of entries at once, then add them in order
                // until the kernel's buffer is full.
                if let Err(errno) = inner.fill_listing(&mut listing, index + LISTING_STATS_IN_FLIGHT - 1).await {
                    return reply.error(errno);
                }
                let batch: Vec<(String, InodeId)> =
                    listing.entries.iter().skip(index).take(LISTING_STATS_IN_FLIGHT).cloned().collect();
                if batch.is_empty() {
                    break;
                }
                let mut stats = Vec::with_capacity(batch.len());
                for (_, inode) in &batch {
                    let (inner, inode) = (inner.clone(), *inode);
                    stats.push(tokio::spawn(async move { inner.attr(inode).await }));
                }
                for ((name, inode), stat) in batch.iter().zip(stats) {
                    let attr = match stat.await {
                        Ok(Ok(attr)) => attr,
                        // Gone since the listing: skip it.
                        Ok(Err(Errno::ENOENT)) => {
                            index += 1;
                            continue;
                        }
                        Ok(Err(errno)) => return reply.error(errno),
                        Err(_) => return reply.error(Errno::EIO),
                    };
                    if name != "." && name != ".." {
                        inner.remember(*inode, listing.dir, name);
                    }
                    let ttl = inner.entry_ttl();
                    if reply.add(fuse_ino(*inode), index as u64 + 1, name, &ttl, &attr, GENERATION) {
                        break 'pages;
                    }
                    index += 1;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(&self, _request: &Request, _ino: INodeNo, handle: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.0.handles).remove(&handle.0);
        reply.ok();
    }

    fn fsyncdir(&self, _request: &Request, _ino: INodeNo, _handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory changes are durable when acknowledged.
        reply.ok();
    }

    fn statfs(&self, _request: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Capacity is the block services' and not known here; report a
        // large nominal size so tools that check free space proceed.
        const NOMINAL_BLOCKS: u64 = 1 << 40;
        reply.statfs(NOMINAL_BLOCKS, NOMINAL_BLOCKS, NOMINAL_BLOCKS, 1 << 40, 1 << 40, 4096, 255, 4096);
    }

    fn setxattr(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn getxattr(&self, _request: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOTSUP);
    }

    fn listxattr(&self, _request: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        // No attributes: an empty list.
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn removexattr(&self, _request: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOTSUP);
    }

    fn access(&self, _request: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.0.options.read_only && mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        reply.ok();
    }

    fn create(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if self.0.options.read_only {
            return reply.error(Errno::EROFS);
        }
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        if flags & libc::O_ACCMODE == libc::O_RDWR {
            // Nothing written can be read back before close.
            tracing::debug!("create with O_RDWR: writing only");
        }
        let name = match name_of(name) {
            Ok(name) => name,
            Err(errno) => return reply.error(errno),
        };
        let inner = self.0.clone();
        self.spawn(async move {
            let parent = eggs_inode(parent);
            match inner.resolve(parent, &name).await {
                Ok(_) if flags & libc::O_EXCL != 0 => return reply.error(Errno::EEXIST),
                Ok(existing) if existing.inode_type() == Some(InodeType::Directory) => {
                    return reply.error(Errno::EISDIR);
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(errno) => return reply.error(errno),
            }
            match inner.start_write(parent, &name, None).await {
                Ok(writer) => {
                    let attr = attributes_of(writer.eden.inode, 0, EggsTime::now(), inner.owner);
                    let handle = inner.add_handle(Handle::Write(writer));
                    // Direct I/O: writes go straight to the writer in
                    // order, never through the page cache.
                    reply.created(&inner.entry_ttl(), &attr, GENERATION, handle, FopenFlags::FOPEN_DIRECT_IO);
                }
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn fallocate(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _handle: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_are_read_with_direct_io_small_ones_through_the_page_cache() {
        const MIB: u64 = 1 << 20;
        assert_eq!(read_flags(0, 4 * MIB), FopenFlags::FOPEN_KEEP_CACHE);
        assert_eq!(read_flags(4 * MIB, 4 * MIB), FopenFlags::FOPEN_KEEP_CACHE);
        assert_eq!(read_flags(4 * MIB + 1, 4 * MIB), FopenFlags::FOPEN_DIRECT_IO);
        assert_eq!(read_flags(1, 0), FopenFlags::FOPEN_DIRECT_IO, "0: every non-empty file");
        assert_eq!(read_flags(1 << 40, u64::MAX), FopenFlags::FOPEN_KEEP_CACHE, "a large bound: none");
    }
}
