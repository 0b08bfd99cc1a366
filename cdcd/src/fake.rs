//! An in-memory model of the shards' privileged semantics (wire/src/shard.rs
//! doc comments), behind a network that drops, delays, duplicates and
//! reorders requests, and that can "crash" the coordinator at a chosen call.
//! Requests really go through the wire encoding and its MAC.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::datagram;
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::shard::{ResolveMode, ShardRequest};
use wire::{ErrorKind, InodeId, InodeType, MacKey, SecretKey, ShardId};

use crate::shards::{Attempt, ShardReply, Shards, TransportError};

/// The fake's one fault knob: each of a request's faults (dropped, late,
/// duplicated, its answer dropped) happens with this probability. The
/// simulation over the real shards (`cdcd/tests/sim`) has the detailed
/// fault model.
pub const LOSSY: f64 = 0.1;

#[derive(Clone, Debug)]
pub struct Entry {
    /// With the owning bit.
    pub inode: u64,
    pub creation_time: u64,
}

#[derive(Clone, Debug)]
pub struct DeadEntry {
    pub name: String,
    pub creation_time: u64,
    /// With the owning bit; 0 for "nothing".
    pub inode: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Dir {
    pub parent: u64,
    pub living: BTreeMap<String, Entry>,
    pub dead: Vec<DeadEntry>,
}

#[derive(Default)]
pub struct FakeShard {
    pub dirs: BTreeMap<u64, Dir>,
    pub files: BTreeSet<u64>,
    pub eden: BTreeSet<u64>,
    by_txn: HashMap<u64, u64>,
    counters: [u64; 3],
    /// Mutation replies by request id: a retransmission is never executed twice.
    replies: HashMap<u64, ShardReply>,
}

pub struct Inner {
    pub shards: BTreeMap<ShardId, FakeShard>,
    clock: u64,
    rng: StdRng,
    /// Probability of each fault per request ([`LOSSY`] or 0).
    pub loss: f64,
    delayed: Vec<(ShardId, Vec<u8>)>,
    pub calls: u64,
    /// Crash (return Shutdown) at this call number.
    pub crash_at: Option<u64>,
    key: MacKey,
}

pub struct FakeCluster {
    pub inner: Mutex<Inner>,
}

pub const KEY: SecretKey = SecretKey([7; 16]);

fn owning(inode: u64) -> u64 {
    InodeId::new(inode).with_owning(true).get()
}

fn plain(inode: u64) -> u64 {
    InodeId::new(inode).without_owning().get()
}

impl FakeCluster {
    /// Shards `0..shard_count` (at least 2); the root lives on shard 1.
    pub fn new(shard_count: u8, seed: u64, loss: f64) -> Arc<Self> {
        let mut shards = BTreeMap::new();
        for shard in 0..shard_count.max(2) {
            shards.insert(shard, FakeShard::default());
        }
        if let Some(root_shard) = shards.get_mut(&1) {
            root_shard.dirs.insert(InodeId::ROOT.get(), Dir::default());
        }
        Arc::new(Self {
            inner: Mutex::new(Inner {
                shards,
                clock: 1_000,
                rng: StdRng::seed_from_u64(seed),
                loss,
                delayed: Vec::new(),
                calls: 0,
                crash_at: None,
                key: MacKey::new(&KEY),
            }),
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn now(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn new_inode(&mut self, shard: ShardId, inode_type: InodeType) -> u64 {
        let counters = &mut self.shards.get_mut(&shard).expect("shard exists").counters;
        counters[inode_type as usize] += 1;
        InodeId::compose(inode_type, shard, counters[inode_type as usize]).expect("counter fits").get()
    }

    fn dir_mut(&mut self, dir: u64) -> Option<&mut Dir> {
        self.shards.get_mut(&InodeId::new(dir).shard())?.dirs.get_mut(&dir)
    }

    pub fn dir(&self, dir: u64) -> Option<&Dir> {
        self.shards.get(&InodeId::new(dir).shard())?.dirs.get(&dir)
    }

    /// A client links a new file (of `file_shard`) as `dir/name`, like
    /// link_eden_file: an owning file entry is overwritten, anything else is
    /// refused. Returns the file's inode.
    pub fn link_file(&mut self, dir: u64, name: &str, file_shard: ShardId) -> Option<u64> {
        let existing = self.dir(dir)?.living.get(name).cloned();
        if let Some(entry) = &existing
            && (!InodeId::new(entry.inode).is_owning()
                || InodeId::new(entry.inode).inode_type() == Some(InodeType::Directory))
        {
            return None;
        }
        let file = self.new_inode(file_shard, InodeType::File);
        self.shards.get_mut(&file_shard)?.files.insert(file);
        let now = self.now();
        let target = self.dir_mut(dir)?;
        if let Some(entry) = existing {
            target.dead.push(DeadEntry { name: name.into(), creation_time: entry.creation_time, inode: entry.inode });
            target.dead.push(DeadEntry { name: name.into(), creation_time: now, inode: 0 });
        }
        target.living.insert(name.into(), Entry { inode: owning(file), creation_time: now });
        Some(file)
    }

    /// A client deletes a file entry (delete_file): it moves, owning, to
    /// the dead map. Returns its creation time.
    pub fn delete_file(&mut self, dir: u64, name: &str) -> Option<u64> {
        let now = self.now();
        let target = self.dir_mut(dir)?;
        let entry = target.living.remove(name)?;
        target.dead.push(DeadEntry { name: name.into(), creation_time: entry.creation_time, inode: entry.inode });
        target.dead.push(DeadEntry { name: name.into(), creation_time: now, inode: 0 });
        Some(entry.creation_time)
    }

    /// Delivers every delayed request now.
    pub fn deliver_delayed(&mut self) {
        while let Some((shard, bytes)) = self.delayed.pop() {
            self.deliver(shard, &bytes);
        }
    }

    fn deliver(&mut self, shard: ShardId, bytes: &[u8]) -> Option<ShardReply> {
        let key = self.key.clone();
        let (header, request) =
            datagram::decode::<ShardRequest<'_>>(bytes, Some(&key)).expect("the CDC sends valid datagrams");
        let request_id = header.request_id();
        let mutation = request.kind().is_mutation();
        if mutation && let Some(reply) = self.shards.get(&shard)?.replies.get(&request_id) {
            return Some(*reply);
        }
        let reply = self.execute(shard, &request);
        if mutation {
            self.shards.get_mut(&shard)?.replies.insert(request_id, reply);
        }
        Some(reply)
    }

    fn execute(&mut self, shard: ShardId, request: &ShardRequest<'_>) -> ShardReply {
        use ShardReply::Error;
        let not_found = Error(ErrorKind::NotFound);
        let on_shard = |inode: InodeId| inode.shard() == shard;
        match request {
            ShardRequest::Stat(req) => {
                let Some(state) = self.shards.get(&shard) else { return not_found };
                if !on_shard(req.inode) {
                    return Error(ErrorKind::BadRequest);
                }
                if let Some(dir) = state.dirs.get(&req.inode.get()) {
                    ShardReply::StatDirectory { parent: InodeId::new(dir.parent) }
                } else if state.files.contains(&req.inode.get()) {
                    ShardReply::StatFile
                } else {
                    not_found
                }
            }
            ShardRequest::Resolve(req) => {
                let Some(dir) = self.dir(req.parent.get()) else { return not_found };
                let name = req.name.as_str();
                match req.mode {
                    ResolveMode::Alive => match dir.living.get(name) {
                        Some(entry) => ShardReply::Resolve {
                            inode: InodeId::new(entry.inode),
                            creation_time: wire::EggsTime::new(entry.creation_time),
                        },
                        None => not_found,
                    },
                    ResolveMode::DeadLe => dir
                        .dead
                        .iter()
                        .filter(|d| d.name == name && d.inode != 0 && d.creation_time <= req.creation_time.get())
                        .max_by_key(|d| d.creation_time)
                        .map_or(not_found, |d| ShardReply::Resolve {
                            inode: InodeId::new(d.inode),
                            creation_time: wire::EggsTime::new(d.creation_time),
                        }),
                    ResolveMode::DeadGe => Error(ErrorKind::BadRequest),
                }
            }
            ShardRequest::CreateUnlinkedDir(req) => {
                let txn = req.transaction_id.get();
                if let Some(existing) = self.shards.get(&shard).and_then(|s| s.by_txn.get(&txn)) {
                    return ShardReply::CreateUnlinkedDir { inode: InodeId::new(*existing) };
                }
                let dir = self.new_inode(shard, InodeType::Directory);
                let state = self.shards.get_mut(&shard).expect("shard exists");
                state.by_txn.insert(txn, dir);
                state.dirs.insert(dir, Dir { parent: req.parent.get(), ..Dir::default() });
                ShardReply::CreateUnlinkedDir { inode: InodeId::new(dir) }
            }
            ShardRequest::SetParent(req) => {
                let Some(dir) = self.dir_mut(req.dir.get()) else { return not_found };
                if req.parent.is_null() && !dir.living.is_empty() {
                    return Error(ErrorKind::DirectoryNotEmpty);
                }
                dir.parent = req.parent.get();
                ShardReply::Empty
            }
            ShardRequest::InjectDirent(req) => {
                let now = self.now();
                let Some(dir) = self.dir_mut(req.dir.get()) else { return not_found };
                let name = req.name.as_str();
                let injected = plain(req.inode.get());
                if let Some(entry) = dir.living.get(name) {
                    let existing = InodeId::new(entry.inode);
                    if existing.without_owning().get() == injected {
                        return ShardReply::InjectDirent;
                    }
                    if !existing.is_owning() || existing.inode_type() == Some(InodeType::Directory) {
                        return Error(ErrorKind::CannotOverrideTarget);
                    }
                }
                if req.dry_run != 0 {
                    return ShardReply::InjectDirent;
                }
                if let Some(entry) = dir.living.remove(name) {
                    dir.dead.push(DeadEntry {
                        name: name.into(),
                        creation_time: entry.creation_time,
                        inode: entry.inode,
                    });
                    dir.dead.push(DeadEntry { name: name.into(), creation_time: now, inode: 0 });
                }
                dir.living.insert(name.into(), Entry { inode: injected, creation_time: now });
                ShardReply::InjectDirent
            }
            ShardRequest::AcquireDirent(req) => {
                let Some(dir) = self.dir_mut(req.dir.get()) else { return not_found };
                let Some(entry) = dir.living.get_mut(req.name.as_str()) else { return not_found };
                if InodeId::new(entry.inode).inode_type() != Some(req.expected_type) {
                    return Error(ErrorKind::BadInodeType);
                }
                entry.inode = plain(entry.inode);
                ShardReply::AcquireDirent { inode: InodeId::new(entry.inode) }
            }
            ShardRequest::ReleaseDirent(req) => {
                let now = self.now();
                let Some(dir) = self.dir_mut(req.dir.get()) else { return ShardReply::Empty };
                let name = req.name.as_str();
                let matches = dir.living.get(name).is_some_and(|e| plain(e.inode) == plain(req.inode.get()));
                if matches {
                    if req.kill != 0 {
                        let entry = dir.living.remove(name).expect("checked");
                        dir.dead.push(DeadEntry {
                            name: name.into(),
                            creation_time: entry.creation_time,
                            inode: entry.inode,
                        });
                        dir.dead.push(DeadEntry { name: name.into(), creation_time: now, inode: 0 });
                    } else if let Some(entry) = dir.living.get_mut(name) {
                        entry.inode = owning(entry.inode);
                    }
                }
                ShardReply::Empty
            }
            ShardRequest::PurgeRemoteOwningDirent(req) => {
                let Some(dir) = self.dir_mut(req.dir.get()) else { return not_found };
                let name = req.name.as_str();
                let position = dir.dead.iter().position(|d| {
                    d.name == name
                        && d.creation_time == req.creation_time.get()
                        && InodeId::new(d.inode).is_owning()
                        && InodeId::new(d.inode).shard() != shard
                });
                match position {
                    Some(index) => {
                        dir.dead.remove(index);
                        ShardReply::Empty
                    }
                    None => not_found,
                }
            }
            ShardRequest::MoveFileToEden(req) => {
                let Some(state) = self.shards.get_mut(&shard) else { return not_found };
                if state.files.remove(&req.inode.get()) {
                    state.eden.insert(req.inode.get());
                    ShardReply::Empty
                } else {
                    not_found
                }
            }
            _ => Error(ErrorKind::BadRequest),
        }
    }

    /// Invariants of a quiet cluster (no transaction running). Returns the
    /// violations.
    pub fn violations(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut pointing: HashMap<u64, Vec<(u64, String)>> = HashMap::new();
        let mut owners: HashMap<u64, usize> = HashMap::new();
        for state in self.shards.values() {
            for (dir_id, dir) in &state.dirs {
                for (name, entry) in &dir.living {
                    if !InodeId::new(entry.inode).is_owning() {
                        problems.push(format!("dangling non-owning entry {dir_id:#x}/{name}"));
                    }
                    pointing.entry(plain(entry.inode)).or_default().push((*dir_id, name.clone()));
                    *owners.entry(plain(entry.inode)).or_default() += 1;
                    if self.dir(plain(entry.inode)).is_none()
                        && !self.shards.values().any(|s| s.files.contains(&plain(entry.inode)))
                    {
                        problems.push(format!("entry {dir_id:#x}/{name} points to nothing"));
                    }
                }
                for dead in &dir.dead {
                    if dead.inode != 0 && InodeId::new(dead.inode).is_owning() {
                        *owners.entry(plain(dead.inode)).or_default() += 1;
                    }
                }
            }
        }
        for (inode, count) in &owners {
            if *count > 1 && InodeId::new(*inode).inode_type() != Some(InodeType::Directory) {
                problems.push(format!("file {inode:#x} has {count} owning entries"));
            }
        }
        for state in self.shards.values() {
            for (dir_id, dir) in &state.dirs {
                if *dir_id == InodeId::ROOT.get() {
                    continue;
                }
                let entries = pointing.get(dir_id).map_or(&[][..], |v| v.as_slice());
                if dir.parent == 0 {
                    if !entries.is_empty() {
                        problems.push(format!("removed directory {dir_id:#x} still has entries {entries:?}"));
                    }
                    continue;
                }
                if entries.len() != 1 || entries[0].0 != dir.parent {
                    problems
                        .push(format!("directory {dir_id:#x} (parent {:#x}) is pointed to by {entries:?}", dir.parent));
                }
                let mut cursor = dir.parent;
                let mut hops = 0;
                while cursor != InodeId::ROOT.get() {
                    hops += 1;
                    match self.dir(cursor) {
                        Some(ancestor) if hops < 10_000 && ancestor.parent != 0 => cursor = ancestor.parent,
                        _ => {
                            problems.push(format!("directory {dir_id:#x} is not reachable from the root"));
                            break;
                        }
                    }
                }
            }
        }
        problems
    }
}

impl Shards for Arc<FakeCluster> {
    async fn request(&self, attempt: Attempt<'_, '_>) -> Result<ShardReply, TransportError> {
        let Attempt { shard, request_id, request, .. } = attempt;
        let mut inner = self.lock();
        inner.calls += 1;
        if !inner.delayed.is_empty() && inner.rng.random_bool(0.3) {
            let pending = inner.delayed.len();
            let index = inner.rng.random_range(0..pending);
            let (delayed_shard, bytes) = inner.delayed.swap_remove(index);
            inner.deliver(delayed_shard, &bytes);
        }
        let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
        let key = inner.key.clone();
        let len = datagram::encode(&mut buf, request_id, request, Some(&key)).expect("requests fit a datagram");
        let bytes = &buf[..len];
        if inner.crash_at == Some(inner.calls) {
            inner.crash_at = None;
            if inner.rng.random_bool(0.5) {
                inner.deliver(shard, bytes);
            }
            return Err(TransportError::Shutdown);
        }
        let loss = inner.loss;
        if inner.rng.random_bool(loss) {
            return Err(TransportError::Timeout(shard));
        }
        if inner.rng.random_bool(loss) {
            inner.delayed.push((shard, bytes.to_vec()));
            return Err(TransportError::Timeout(shard));
        }
        let Some(reply) = inner.deliver(shard, bytes) else { return Err(TransportError::Timeout(shard)) };
        if inner.rng.random_bool(loss) {
            inner.deliver(shard, bytes);
        }
        if inner.rng.random_bool(loss) {
            return Err(TransportError::Timeout(shard));
        }
        Ok(reply)
    }
}
