//! What the CDC's tests expect, shared by the tests of the real binaries
//! (`common`) and the simulation (`sim`, which includes this file by path):
//! the sequential model of the tree and its statuses, random operations over
//! it, the operations' constructors, and the checker that reads the tree
//! from the shards.

#![allow(dead_code)] // reason: each test file uses a different subset

use std::collections::{BTreeMap, BTreeSet};

use cdcd::txn::TxnArgs;
use rand::Rng;
use wire::cdc::CdcStatus;
use wire::shard::{LsDirReq, ShardRequest, ShardResponse, StatReq, StatResp, VisitInodesReq};
use wire::{EggsTime, InodeId, InodeType, ShardId};
use zerocopy::byteorder::little_endian::U64;

/// A tree as read from the shards or kept by the model: directory → name →
/// inode (plain ids, owning bit cleared).
pub type Tree = BTreeMap<u64, BTreeMap<String, u64>>;

const ROOT: u64 = InodeId::ROOT.get();

pub fn mkdir(parent: InodeId, name: &str) -> TxnArgs {
    TxnArgs::MkDir { parent: parent.get(), name: name.into() }
}

pub fn rmdir(parent: InodeId, name: &str) -> TxnArgs {
    TxnArgs::RmDir { parent: parent.get(), name: name.into() }
}

pub fn mv(directory: bool, source: (InodeId, &str), target: (InodeId, &str)) -> TxnArgs {
    TxnArgs::Move {
        directory,
        source_parent: source.0.get(),
        target_parent: target.0.get(),
        source_name: source.1.into(),
        target_name: target.1.into(),
    }
}

pub fn mv_dir(source: (InodeId, &str), target: (InodeId, &str)) -> TxnArgs {
    mv(true, source, target)
}

pub fn is_dir(inode: u64) -> bool {
    InodeId::new(inode).inode_type() == Some(InodeType::Directory)
}

/// The sequential model: living entries per linked directory.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Model {
    pub entries: Tree,
    pub parents: BTreeMap<u64, u64>,
    pub removed: BTreeSet<u64>,
    /// Shards of the cluster: a parent on another one is BAD_REQUEST.
    shards: u8,
}

impl Model {
    pub fn new(shards: u8) -> Self {
        Self { entries: [(ROOT, BTreeMap::new())].into(), parents: BTreeMap::new(), removed: BTreeSet::new(), shards }
    }

    fn linked(&self, dir: u64) -> bool {
        is_dir(dir) && self.entries.contains_key(&dir)
    }

    fn inside(&self, dir: u64, ancestor: u64) -> bool {
        let mut cursor = dir;
        loop {
            if cursor == ancestor {
                return true;
            }
            match self.parents.get(&cursor) {
                Some(parent) => cursor = *parent,
                None => return false,
            }
        }
    }

    fn bad_shard(&self, dir: u64) -> bool {
        InodeId::new(dir).shard() >= self.shards
    }

    /// The status the CDC must answer, in the CDC's order of checks.
    pub fn expect(&self, args: &TxnArgs) -> CdcStatus {
        let parents = args.parents();
        if let TxnArgs::Move { source_parent, target_parent, source_name, target_name, .. } = args
            && source_parent == target_parent
            && source_name == target_name
        {
            return CdcStatus::BadRequest;
        }
        if !parents.iter().all(|p| is_dir(*p)) {
            return CdcStatus::ParentInvalid;
        }
        if parents.iter().any(|p| self.bad_shard(*p)) {
            return CdcStatus::BadRequest;
        }
        if !parents.iter().all(|p| self.linked(*p)) {
            return CdcStatus::ParentInvalid;
        }
        match args {
            TxnArgs::MkDir { parent, name } if self.entries[parent].contains_key(name) => CdcStatus::AlreadyExists,
            TxnArgs::MkDir { .. } => CdcStatus::Ok,
            TxnArgs::RmDir { parent, name } => match self.entries[parent].get(name) {
                None => CdcStatus::NotFound,
                Some(child) if !is_dir(*child) => CdcStatus::BadInodeType,
                Some(child) if !self.entries[child].is_empty() => CdcStatus::DirectoryNotEmpty,
                Some(_) => CdcStatus::Ok,
            },
            TxnArgs::Move { directory, source_parent, target_parent, source_name, target_name } => {
                let Some(source) = self.entries[source_parent].get(source_name) else {
                    return CdcStatus::NotFound;
                };
                if is_dir(*source) != *directory {
                    return CdcStatus::BadInodeType;
                }
                if self.entries[target_parent].get(target_name).is_some_and(|t| is_dir(*t)) {
                    return CdcStatus::CannotOverrideTarget;
                }
                if *directory && self.inside(*target_parent, *source) {
                    return CdcStatus::LoopDetected;
                }
                CdcStatus::Ok
            }
            TxnArgs::PurgeRemoteFile { .. } => unreachable!("not generated"),
        }
    }

    /// Applies an operation answered OK with `inode`; `false` when that
    /// cannot be this operation's answer (a move of another inode).
    pub fn apply(&mut self, args: &TxnArgs, inode: u64) -> bool {
        match args {
            TxnArgs::MkDir { parent, name } => {
                self.entries.get_mut(parent).expect("parent").insert(name.clone(), inode);
                self.entries.insert(inode, BTreeMap::new());
                self.parents.insert(inode, *parent);
            }
            TxnArgs::RmDir { parent, name } => {
                let child = self.entries.get_mut(parent).expect("parent").remove(name).expect("child");
                self.entries.remove(&child);
                self.parents.remove(&child);
                self.removed.insert(child);
            }
            TxnArgs::Move { directory, source_parent, target_parent, source_name, target_name } => {
                let moved = self.entries.get_mut(source_parent).expect("source").remove(source_name).expect("entry");
                if moved != inode {
                    return false;
                }
                self.entries.get_mut(target_parent).expect("target").insert(target_name.clone(), moved);
                if *directory {
                    self.parents.insert(moved, *target_parent);
                }
            }
            TxnArgs::PurgeRemoteFile { .. } => unreachable!("not generated"),
        }
        true
    }

    /// A linked directory, at random; with `odd`, now and then a parent
    /// that is not one: missing, on a shard that does not exist (issue 17
    /// A), removed, or a file.
    pub fn random_dir(&self, rng: &mut impl Rng, odd: bool) -> u64 {
        let dirs: Vec<u64> = self.entries.keys().copied().collect();
        let choice = if odd { rng.random_range(0..30) } else { 30 };
        match choice {
            0 => InodeId::compose(InodeType::Directory, self.shards - 1, 9999).expect("an id").get(),
            1 => InodeId::compose(InodeType::Directory, 5.max(self.shards), 1).expect("an id").get(),
            2 if !self.removed.is_empty() => *self.removed.iter().next().expect("one"),
            3 => self.entries.values().flat_map(|m| m.values()).copied().find(|i| !is_dir(*i)).unwrap_or(ROOT),
            _ => dirs[rng.random_range(0..dirs.len())],
        }
    }

    /// A random operation over `names`: mkdir 3 in 10, rmdir 1, mv file 4,
    /// mv dir 2; parents as [`Model::random_dir`].
    pub fn random_op(&self, rng: &mut impl Rng, names: &[&str], odd: bool) -> TxnArgs {
        let name = |rng: &mut dyn rand::RngCore| names[rng.random_range(0..names.len())].to_string();
        match rng.random_range(0..10) {
            0..=2 => TxnArgs::MkDir { parent: self.random_dir(rng, odd), name: name(rng) },
            3 => TxnArgs::RmDir { parent: self.random_dir(rng, odd), name: name(rng) },
            kind => TxnArgs::Move {
                directory: kind >= 8,
                source_parent: self.random_dir(rng, odd),
                target_parent: self.random_dir(rng, odd),
                source_name: name(rng),
                target_name: name(rng),
            },
        }
    }
}

/// Requests to the shards, from a test: the real ones over UDP or the
/// simulated ones in-process. The tree checker is written once, on it.
pub trait ShardCalls {
    /// The response to `request`, handed to `read` (it borrows the datagram).
    fn call<T>(&self, shard: ShardId, request: &ShardRequest<'_>, read: impl FnOnce(ShardResponse<'_>) -> T) -> T;

    fn shard_count(&self) -> u8;

    /// Living entries of `dir`: name → inode with its owning bit.
    fn list(&self, dir: InodeId) -> BTreeMap<String, InodeId> {
        let mut entries = BTreeMap::new();
        let mut start_hash = 0u64;
        loop {
            let request = ShardRequest::LsDir(LsDirReq {
                dir,
                as_of: EggsTime::ZERO,
                start_hash: U64::new(start_hash),
                flags: 0,
            });
            let (more, next) = self.call(dir.shard(), &request, |response| match response {
                ShardResponse::LsDir(page) => {
                    for entry in page.entries.iter() {
                        entries.insert(entry.name.as_str().to_string(), entry.inode);
                    }
                    (page.more != 0, page.next_hash.get())
                }
                other => panic!("ls_dir {dir}: {other:?}"),
            });
            if !more {
                return entries;
            }
            start_hash = next;
        }
    }

    /// A directory's parent; `None` when it is not a directory.
    fn parent(&self, dir: InodeId) -> Option<InodeId> {
        self.call(dir.shard(), &ShardRequest::Stat(StatReq { inode: dir }), |response| match response {
            ShardResponse::Stat(StatResp::Directory(stat)) => Some(stat.parent),
            _ => None,
        })
    }

    /// Every inode of `shard`.
    fn inodes(&self, shard: ShardId) -> Vec<InodeId> {
        let mut inodes = Vec::new();
        let mut begin = InodeId::NULL;
        loop {
            let next =
                self.call(shard, &ShardRequest::VisitInodes(VisitInodesReq { begin }), |response| match response {
                    ShardResponse::VisitInodes(page) => {
                        inodes.extend(page.inodes.iter());
                        page.next
                    }
                    other => panic!("visit_inodes: {other:?}"),
                });
            if next.is_null() {
                return inodes;
            }
            begin = next;
        }
    }

    /// Walks the tree from the root and checks the invariants of a quiet
    /// cluster: every living entry owning (no dangling non-owning entry),
    /// every directory's parent is the directory holding its entry, no
    /// directory linked twice, every directory with a parent reachable (no
    /// orphans). Returns the tree, or the first violation.
    fn check_tree(&self) -> Result<Tree, String> {
        let mut tree = Tree::new();
        let mut queue = vec![InodeId::ROOT];
        while let Some(dir) = queue.pop() {
            let mut plain = BTreeMap::new();
            for (name, inode) in self.list(dir) {
                if !inode.is_owning() {
                    return Err(format!("dangling non-owning entry {dir}/{name}"));
                }
                let inode = inode.without_owning();
                if inode.inode_type() == Some(InodeType::Directory) {
                    if self.parent(inode) != Some(dir) {
                        return Err(format!("parent of {dir}/{name} is {:?}", self.parent(inode)));
                    }
                    if tree.contains_key(&inode.get()) || queue.contains(&inode) {
                        return Err(format!("{inode} linked twice"));
                    }
                    queue.push(inode);
                }
                plain.insert(name, inode.get());
            }
            tree.insert(dir.get(), plain);
        }
        for shard in 0..self.shard_count() {
            for inode in self.inodes(shard) {
                if inode.inode_type() != Some(InodeType::Directory) || inode == InodeId::ROOT {
                    continue;
                }
                let parent = self.parent(inode).ok_or(format!("{inode} is not a directory"))?;
                if !parent.is_null() && !tree.contains_key(&inode.get()) {
                    return Err(format!("orphan directory {inode} (parent {parent})"));
                }
            }
        }
        Ok(tree)
    }
}
