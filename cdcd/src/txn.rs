//! The transactions of DESIGN.md §5 as plain state machines.
//!
//! A transaction is a [`TxnState`]: its arguments, the step it is at (with
//! the intermediate results it needs, e.g. the inode it acquired) and the
//! sequence number of its next mutation. [`TxnState::action`] says which
//! shard request the step sends; [`TxnState::advance`] moves to the next
//! step given the shard's reply. Nothing here does I/O, so every path is
//! unit-tested; the driver ([`crate::coordinator`]) persists the state at
//! the fences its module doc explains, so that a restarted CDC re-sends the
//! same requests (same ids) from the stored step and reaches the same step.
//!
//! The steps, with the rollback path of each failure:
//!
//! ```text
//! mkdir   the new directory's shard (from the transaction id) is the
//!         parent's: stat parent → create_linked_dir (the name's check,
//!         create and owning inject in one shard transaction) → OK + inode;
//!         refused → report (nothing to roll back)
//!         another shard: stat parent ‖ resolve name (must be free; the two
//!         sent at once) → create_unlinked_dir → inject (owning) → OK + inode
//!         inject fails → set_parent(new, null), report
//!         (records of older runs may be at a release step: inject
//!         non-owning, then release)
//! rmdir   stat parent → acquire (directory) → set_parent(child, null)
//!         → release kill → OK
//!         set_parent fails (not empty) → release, report
//! mv      file, both parents on one shard: stat target parent ‖ stat source
//!         parent (sent at once) → move_file_in_shard (the source's checks
//!         as resolve and acquire make them, owning inject and kill in one
//!         shard transaction) → OK + inode; refused → report (nothing to
//!         roll back)
//!         otherwise: stat target parent ‖ stat source parent ‖ resolve
//!         source (type; the three sent at once) → [dir: dry-run inject]
//!         → acquire → [dir: loop check, walking the target's ancestors to
//!         the root] → inject target (a file's owning)
//!         → [dir: release target] → release kill source
//!         → [dir: set_parent(dir, target parent)] → OK
//!         loop / inject fails → release source, report
//!         (records of older runs at a same-shard file's acquire resume
//!         through the long chain)
//! purge   resolve the dead entry → purge_remote_owning_dirent
//!         → move_file_to_eden on the file's shard → OK
//! ```
//!
//! Step invariant: a step that follows a mutation never fails in a way that
//! leaves an entry non-owning; release and set_parent are retried until they
//! succeed (they are idempotent and "never fail" on a healthy shard).

use serde::{Deserialize, Serialize};
use wire::cdc::CdcRequest;
use wire::cdc::CdcStatus;
use wire::shard::{
    AcquireDirentReq, AcquireDirentReqHead, CreateLinkedDirReq, CreateLinkedDirReqHead, CreateUnlinkedDirReq,
    InjectDirentReq, InjectDirentReqHead, MoveFileInShardReq, MoveFileInShardReqHead, MoveFileToEdenReq,
    PurgeRemoteOwningDirentReq, PurgeRemoteOwningDirentReqHead, ReleaseDirentReq, ReleaseDirentReqHead, ResolveMode,
    ResolveReq, ResolveReqHead, SetParentReq, ShardRequest, StatReq,
};
use wire::{EggsTime, ErrorKind, InodeId, InodeType, Name, ShardId};
use zerocopy::byteorder::little_endian::U64;

use crate::shards::ShardReply;

/// Most ancestors the loop check walks before giving up: deeper than any
/// real tree, and a bound on a corrupted (cyclic) parent chain.
pub const LOOP_CHECK_HOPS_MAX: u32 = 4096;

/// What a client asked for, owned and persistable. Ids are raw u64s.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnArgs {
    MkDir {
        parent: u64,
        name: String,
    },
    RmDir {
        parent: u64,
        name: String,
    },
    /// mv file (`directory` false) or mv dir (true).
    Move {
        directory: bool,
        source_parent: u64,
        target_parent: u64,
        source_name: String,
        target_name: String,
    },
    PurgeRemoteFile {
        parent: u64,
        creation_time: u64,
        name: String,
    },
}

impl TxnArgs {
    pub fn from_request(request: &CdcRequest<'_>) -> Self {
        let id = |inode: InodeId| inode.without_owning().get();
        match request {
            CdcRequest::MkDir(req) => TxnArgs::MkDir { parent: id(req.parent), name: req.name.as_str().to_owned() },
            CdcRequest::RmDir(req) => TxnArgs::RmDir { parent: id(req.parent), name: req.name.as_str().to_owned() },
            CdcRequest::MvFile(req) => TxnArgs::Move {
                directory: false,
                source_parent: id(req.source_parent),
                target_parent: id(req.target_parent),
                source_name: req.source_name.as_str().to_owned(),
                target_name: req.target_name.as_str().to_owned(),
            },
            CdcRequest::MvDir(req) => TxnArgs::Move {
                directory: true,
                source_parent: id(req.source_parent),
                target_parent: id(req.target_parent),
                source_name: req.source_name.as_str().to_owned(),
                target_name: req.target_name.as_str().to_owned(),
            },
            CdcRequest::PurgeRemoteFile(req) => TxnArgs::PurgeRemoteFile {
                parent: id(req.parent),
                creation_time: req.creation_time.get(),
                name: req.name.as_str().to_owned(),
            },
        }
    }

    /// Every name is a valid entry name (they come from a decoded request,
    /// but a persisted record is re-checked: it is input from the disk).
    fn names_valid(&self) -> bool {
        let ok = |name: &str| Name::new(name.as_bytes()).is_ok();
        match self {
            TxnArgs::MkDir { name, .. } | TxnArgs::RmDir { name, .. } | TxnArgs::PurgeRemoteFile { name, .. } => {
                ok(name)
            }
            TxnArgs::Move { source_name, target_name, .. } => ok(source_name) && ok(target_name),
        }
    }

    /// The directory ids the client named.
    pub fn parents(&self) -> Vec<u64> {
        match self {
            TxnArgs::MkDir { parent, .. } | TxnArgs::RmDir { parent, .. } | TxnArgs::PurgeRemoteFile { parent, .. } => {
                vec![*parent]
            }
            TxnArgs::Move { source_parent, target_parent, .. } => vec![*source_parent, *target_parent],
        }
    }

    /// The kind's name, for logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            TxnArgs::MkDir { .. } => "mkdir",
            TxnArgs::RmDir { .. } => "rmdir",
            TxnArgs::Move { directory: false, .. } => "mv_file",
            TxnArgs::Move { directory: true, .. } => "mv_dir",
            TxnArgs::PurgeRemoteFile { .. } => "purge_remote_file",
        }
    }
}

/// The end of a transaction, as the client receives it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    #[serde(with = "status_code")]
    pub status: CdcStatus,
    /// The new or moved inode; 0 otherwise.
    pub inode: u64,
    /// Human-readable detail (empty on success).
    pub text: String,
}

impl Outcome {
    pub fn ok(inode: InodeId) -> Self {
        Self { status: CdcStatus::Ok, inode: inode.get(), text: String::new() }
    }

    pub fn failed(status: CdcStatus, text: impl Into<String>) -> Self {
        Self { status, inode: 0, text: text.into() }
    }
}

/// CdcStatus persisted as its protocol code.
mod status_code {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use wire::cdc::CdcStatus;

    pub const ALL: [CdcStatus; 10] = CdcStatus::ALL;

    pub fn serialize<S: Serializer>(status: &CdcStatus, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(*status as u8)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<CdcStatus, D::Error> {
        let code = u8::deserialize(deserializer)?;
        ALL.into_iter().find(|s| *s as u8 == code).ok_or_else(|| D::Error::custom("unknown CDC status"))
    }
}

/// Where a transaction is. Ids are raw u64s (persisted as JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    // mkdir
    MkDirStatParent,
    MkDirResolve,
    MkDirCreate {
        shard: ShardId,
    },
    /// The new directory's shard is the parent's: create it and link it
    /// owning in one request (create_linked_dir).
    MkDirCreateLinked,
    MkDirInject {
        dir: u64,
    },
    MkDirRelease {
        dir: u64,
    },
    /// Rollback: the new directory got no entry; unlink it.
    MkDirUnlinkCreated {
        dir: u64,
        failure: Outcome,
    },
    // rmdir
    RmDirStatParent,
    RmDirAcquire,
    RmDirUnlink {
        dir: u64,
    },
    RmDirKill {
        dir: u64,
    },
    // mv file / mv dir
    MoveStatTargetParent,
    MoveStatSourceParent,
    MoveResolveSource,
    MoveDryRun {
        inode: u64,
    },
    /// A file whose source and target parents are on one shard: acquire,
    /// owning inject and kill in one request (move_file_in_shard).
    MoveFileInShard,
    MoveAcquire {
        inode_type: u8,
    },
    MoveLoopCheck {
        inode: u64,
        cursor: u64,
        hops: u32,
    },
    MoveInject {
        inode: u64,
    },
    MoveReleaseTarget {
        inode: u64,
    },
    MoveKillSource {
        inode: u64,
    },
    MoveSetParent {
        inode: u64,
    },
    // purge remote file
    PurgeResolve,
    PurgeDirent {
        inode: u64,
    },
    PurgeMoveToEden {
        inode: u64,
    },
    /// Rollback of rmdir and moves: make the acquired source entry owning again.
    ReleaseSource {
        inode: u64,
        failure: Outcome,
    },
    Done(Outcome),
}

/// A transaction: persisted as a whole before each of its mutations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TxnState {
    pub txn_id: u64,
    pub args: TxnArgs,
    pub step: Step,
    /// Counts the mutations sent so far; with the transaction id it makes
    /// the request id of the next mutation ([`TxnState::mutation_request_id`]).
    pub mutation_seq: u32,
}

/// What the transaction wants next.
#[derive(Debug)]
pub enum Action<'a> {
    Send { shard: ShardId, request: ShardRequest<'a> },
    Done(&'a Outcome),
}

/// What a reply did to the transaction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Advance {
    /// The transaction moved to another step.
    Moved,
    /// The step must be sent again (after a backoff).
    Retry,
}

/// The transaction's environment.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Shards new directories may be created on (never empty).
    pub new_dir_shards: &'a [ShardId],
}

/// A stored record that cannot drive a transaction (bad names).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("transaction {0} has invalid arguments")]
pub struct InvalidTxn(pub u64);

fn inode(raw: u64) -> InodeId {
    InodeId::new(raw)
}

fn name(text: &str) -> Result<Name<'_>, ()> {
    Name::new(text.as_bytes()).map_err(|_| ())
}

/// splitmix64: a bijective mixer, to turn (transaction, sequence) into
/// request ids that look random to shards and other clients.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The CDC status for a shard's refusal.
pub fn status_for(kind: ErrorKind) -> CdcStatus {
    match kind {
        ErrorKind::NotFound => CdcStatus::NotFound,
        ErrorKind::BadInodeType => CdcStatus::BadInodeType,
        ErrorKind::CannotOverrideTarget => CdcStatus::CannotOverrideTarget,
        ErrorKind::DirectoryNotEmpty => CdcStatus::DirectoryNotEmpty,
        ErrorKind::AlreadyExists => CdcStatus::AlreadyExists,
        ErrorKind::BadRequest
        | ErrorKind::NameTooLong
        | ErrorKind::TooSoon
        | ErrorKind::NotOwning
        | ErrorKind::BadRequestIdempotentHint => CdcStatus::BadRequest,
        _ => CdcStatus::GeneralError,
    }
}

/// The outcome of a mkdir whose link of the new name (`what`) the
/// parent's shard refused: a name taken meanwhile is ALREADY_EXISTS.
fn mkdir_link_refused(what: &str, kind: ErrorKind) -> Outcome {
    match kind {
        ErrorKind::CannotOverrideTarget | ErrorKind::AlreadyExists => {
            Outcome::failed(CdcStatus::AlreadyExists, "the name exists")
        }
        kind => refused(what, kind),
    }
}

fn refused(what: &str, kind: ErrorKind) -> Outcome {
    Outcome::failed(status_for(kind), format!("{what}: shard answered {kind}"))
}

fn unexpected(what: &str, reply: &ShardReply) -> Outcome {
    Outcome::failed(CdcStatus::GeneralError, format!("{what}: unexpected shard reply {reply:?}"))
}

/// The outcome of a parent check: `None` when `reply` says `parent` is a
/// living directory (the root, or a directory with a parent).
fn parent_check(parent: InodeId, reply: &ShardReply, which: &str) -> Option<Outcome> {
    match reply {
        ShardReply::StatDirectory { parent: grandparent } if grandparent.is_null() && parent != InodeId::ROOT => {
            Some(Outcome::failed(CdcStatus::ParentInvalid, format!("{which} directory was removed")))
        }
        ShardReply::StatDirectory { .. } => None,
        ShardReply::StatFile => Some(Outcome::failed(CdcStatus::ParentInvalid, format!("{which} is not a directory"))),
        ShardReply::Error(ErrorKind::NotFound) => {
            Some(Outcome::failed(CdcStatus::ParentInvalid, format!("{which} directory not found")))
        }
        ShardReply::Error(kind) => Some(refused(&format!("stat {which}"), *kind)),
        other => Some(unexpected(&format!("stat {which}"), other)),
    }
}

fn is_directory_id(raw: u64) -> bool {
    inode(raw).inode_type() == Some(InodeType::Directory)
}

impl TxnState {
    /// A new transaction; arguments that can be refused without asking a
    /// shard end it at once.
    pub fn new(txn_id: u64, args: TxnArgs) -> Self {
        let step = Self::first_step(&args);
        Self { txn_id, args, step, mutation_seq: 0 }
    }

    fn first_step(args: &TxnArgs) -> Step {
        let parent_invalid = |which: &str| {
            Step::Done(Outcome::failed(CdcStatus::ParentInvalid, format!("{which} is not a directory inode")))
        };
        if !args.names_valid() {
            return Step::Done(Outcome::failed(CdcStatus::BadRequest, "invalid name"));
        }
        match args {
            TxnArgs::MkDir { parent, .. } if !is_directory_id(*parent) => parent_invalid("parent"),
            TxnArgs::MkDir { .. } => Step::MkDirStatParent,
            TxnArgs::RmDir { parent, .. } if !is_directory_id(*parent) => parent_invalid("parent"),
            TxnArgs::RmDir { .. } => Step::RmDirStatParent,
            TxnArgs::Move { source_parent, target_parent, source_name, target_name, .. } => {
                if source_parent == target_parent && source_name == target_name {
                    Step::Done(Outcome::failed(CdcStatus::BadRequest, "source and target are the same entry"))
                } else if !is_directory_id(*target_parent) {
                    parent_invalid("target parent")
                } else if !is_directory_id(*source_parent) {
                    parent_invalid("source parent")
                } else {
                    Step::MoveStatTargetParent
                }
            }
            TxnArgs::PurgeRemoteFile { parent, .. } if !is_directory_id(*parent) => parent_invalid("parent"),
            TxnArgs::PurgeRemoteFile { .. } => Step::PurgeResolve,
        }
    }

    /// Checks a record read back from the store.
    pub fn validate(&self) -> Result<(), InvalidTxn> {
        if self.args.names_valid() { Ok(()) } else { Err(InvalidTxn(self.txn_id)) }
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.step {
            Step::Done(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// The request id of the current mutation: the same for every attempt
    /// of it, across restarts, and different for every other mutation.
    pub fn mutation_request_id(&self) -> u64 {
        mix64(mix64(self.txn_id) ^ u64::from(self.mutation_seq))
    }

    /// The request the current step sends, or the outcome.
    pub fn action(&self) -> Result<Action<'_>, InvalidTxn> {
        self.build_action().map_err(|()| InvalidTxn(self.txn_id))
    }

    fn build_action(&self) -> Result<Action<'_>, ()> {
        if let Step::Done(outcome) = &self.step {
            return Ok(Action::Done(outcome));
        }
        let (shard, request) = match &self.args {
            TxnArgs::MkDir { parent, name: entry } => self.mkdir_request(inode(*parent), name(entry)?),
            TxnArgs::RmDir { parent, name: entry } => self.rmdir_request(inode(*parent), name(entry)?),
            TxnArgs::Move { source_parent, target_parent, source_name, target_name, .. } => {
                self.move_request(inode(*source_parent), inode(*target_parent), name(source_name)?, name(target_name)?)
            }
            TxnArgs::PurgeRemoteFile { parent, creation_time, name: entry } => {
                self.purge_request(inode(*parent), EggsTime::new(*creation_time), name(entry)?)
            }
        }
        .ok_or(())?;
        Ok(Action::Send { shard, request })
    }

    /// The step this transaction moves to when its current request gets
    /// the answer that lets it go on, if that step's request does not
    /// depend on the answer's contents: the coordinator may then send both
    /// at once ([`crate::coordinator`]'s "Sending ahead"). Only two kinds of
    /// chains qualify:
    ///
    /// - the reads before the plan (mkdir: stat parent, resolve; moves: stat
    ///   target parent, stat source parent, resolve source): a read changes
    ///   nothing, and an answer that was not needed is dropped;
    /// - the tail of a file or directory move after its fence (release
    ///   target, kill source, set_parent): every one of them answers "done"
    ///   however often and in whatever order it is sent, and the stored
    ///   record (at the release) re-sends all of them after a crash.
    ///
    /// The answer "that lets it go on" of a read is any answer (the chain's
    /// later answers are only used while the transaction is on the step
    /// they were sent for); of a tail mutation it is `Empty`.
    pub fn next_if_answered(&self, context: &Context<'_>) -> Option<Step> {
        let directory = matches!(self.args, TxnArgs::Move { directory: true, .. });
        let same_parents =
            matches!(&self.args, TxnArgs::Move { source_parent, target_parent, .. } if source_parent == target_parent);
        match &self.step {
            Step::MkDirStatParent => Some(self.after_mkdir_stat(context)),
            Step::MoveStatTargetParent if same_parents => Some(self.after_move_stats()),
            Step::MoveStatTargetParent => Some(Step::MoveStatSourceParent),
            Step::MoveStatSourceParent => Some(self.after_move_stats()),
            Step::MoveReleaseTarget { inode: moved } => Some(Step::MoveKillSource { inode: *moved }),
            Step::MoveKillSource { inode: moved } if directory => Some(Step::MoveSetParent { inode: *moved }),
            _ => None,
        }
    }

    /// Moves on with the reply to the current step's request. `uncertain`:
    /// an earlier copy of this request may have been executed (a timeout or
    /// a restart happened since it was first sent).
    pub fn advance(&mut self, reply: ShardReply, uncertain: bool, context: &Context<'_>) -> Advance {
        let next = match self.args.clone() {
            TxnArgs::MkDir { parent, .. } => self.mkdir_next(inode(parent), reply, context),
            TxnArgs::RmDir { parent, .. } => self.rmdir_next(inode(parent), reply),
            TxnArgs::Move { directory, source_parent, target_parent, .. } => {
                self.move_next(directory, inode(source_parent), inode(target_parent), reply)
            }
            TxnArgs::PurgeRemoteFile { .. } => self.purge_next(reply, uncertain),
        };
        match next {
            Some(step) => {
                self.step = step;
                Advance::Moved
            }
            None => Advance::Retry,
        }
    }

    // ---- requests ----

    fn stat(dir: InodeId) -> (ShardId, ShardRequest<'static>) {
        (dir.shard(), ShardRequest::Stat(StatReq { inode: dir }))
    }

    fn release(dir: InodeId, target: u64, kill: bool, entry: Name<'_>) -> (ShardId, ShardRequest<'_>) {
        let head = ReleaseDirentReqHead { dir, inode: inode(target), kill: u8::from(kill) };
        (dir.shard(), ShardRequest::ReleaseDirent(ReleaseDirentReq { head, name: entry }))
    }

    /// The shard remembers a (not dry-run) inject per transaction: see the
    /// coordinator's fence rules. `forget_below` is set when it is sent.
    /// `owning`: the entry is made owning at once (mkdir, mv file: no
    /// release step follows).
    fn inject<'a>(
        &self,
        dir: InodeId,
        target: u64,
        dry_run: bool,
        owning: bool,
        entry: Name<'a>,
    ) -> (ShardId, ShardRequest<'a>) {
        let head = InjectDirentReqHead {
            dir,
            inode: inode(target),
            dry_run: u8::from(dry_run),
            owning: u8::from(owning),
            transaction_id: U64::new(self.txn_id),
            forget_below: U64::ZERO,
        };
        (dir.shard(), ShardRequest::InjectDirent(InjectDirentReq { head, name: entry }))
    }

    fn set_parent(dir: u64, parent: InodeId) -> (ShardId, ShardRequest<'static>) {
        (inode(dir).shard(), ShardRequest::SetParent(SetParentReq { dir: inode(dir), parent }))
    }

    fn acquire<'a>(&self, dir: InodeId, expected_type: InodeType, entry: Name<'a>) -> (ShardId, ShardRequest<'a>) {
        let head =
            AcquireDirentReqHead { dir, expected_type, transaction_id: U64::new(self.txn_id), forget_below: U64::ZERO };
        (dir.shard(), ShardRequest::AcquireDirent(AcquireDirentReq { head, name: entry }))
    }

    fn resolve(mode: ResolveMode, parent: InodeId, time: EggsTime, entry: Name<'_>) -> (ShardId, ShardRequest<'_>) {
        let head = ResolveReqHead { mode, parent, creation_time: time };
        (parent.shard(), ShardRequest::Resolve(ResolveReq { head, name: entry }))
    }

    fn mkdir_request<'a>(&self, parent: InodeId, entry: Name<'a>) -> Option<(ShardId, ShardRequest<'a>)> {
        Some(match &self.step {
            Step::MkDirStatParent => Self::stat(parent),
            Step::MkDirResolve => Self::resolve(ResolveMode::Alive, parent, EggsTime::ZERO, entry),
            Step::MkDirCreate { shard } => (
                *shard,
                ShardRequest::CreateUnlinkedDir(CreateUnlinkedDirReq {
                    transaction_id: U64::new(self.txn_id),
                    parent,
                    forget_below: U64::ZERO,
                }),
            ),
            Step::MkDirCreateLinked => {
                let head = CreateLinkedDirReqHead {
                    dir: parent,
                    transaction_id: U64::new(self.txn_id),
                    forget_below: U64::ZERO,
                };
                (parent.shard(), ShardRequest::CreateLinkedDir(CreateLinkedDirReq { head, name: entry }))
            }
            Step::MkDirInject { dir } => self.inject(parent, *dir, false, true, entry),
            Step::MkDirRelease { dir } => Self::release(parent, *dir, false, entry),
            Step::MkDirUnlinkCreated { dir, .. } => Self::set_parent(*dir, InodeId::NULL),
            _ => return None,
        })
    }

    fn rmdir_request<'a>(&self, parent: InodeId, entry: Name<'a>) -> Option<(ShardId, ShardRequest<'a>)> {
        Some(match &self.step {
            Step::RmDirStatParent => Self::stat(parent),
            Step::RmDirAcquire => self.acquire(parent, InodeType::Directory, entry),
            Step::RmDirUnlink { dir } => Self::set_parent(*dir, InodeId::NULL),
            Step::RmDirKill { dir } => Self::release(parent, *dir, true, entry),
            Step::ReleaseSource { inode: dir, .. } => Self::release(parent, *dir, false, entry),
            _ => return None,
        })
    }

    fn move_request<'a>(
        &self,
        source_parent: InodeId,
        target_parent: InodeId,
        source_name: Name<'a>,
        target_name: Name<'a>,
    ) -> Option<(ShardId, ShardRequest<'a>)> {
        Some(match &self.step {
            Step::MoveStatTargetParent => Self::stat(target_parent),
            Step::MoveStatSourceParent => Self::stat(source_parent),
            Step::MoveResolveSource => Self::resolve(ResolveMode::Alive, source_parent, EggsTime::ZERO, source_name),
            Step::MoveDryRun { inode: moved } => self.inject(target_parent, *moved, true, false, target_name),
            Step::MoveFileInShard => {
                let head = MoveFileInShardReqHead {
                    source_dir: source_parent,
                    target_dir: target_parent,
                    transaction_id: U64::new(self.txn_id),
                    forget_below: U64::ZERO,
                };
                (
                    source_parent.shard(),
                    ShardRequest::MoveFileInShard(MoveFileInShardReq { head, source_name, target_name }),
                )
            }
            Step::MoveAcquire { inode_type } => {
                self.acquire(source_parent, InodeType::from_bits(*inode_type)?, source_name)
            }
            Step::MoveLoopCheck { cursor, .. } => Self::stat(inode(*cursor)),
            Step::MoveInject { inode: moved } => {
                let directory = matches!(self.args, TxnArgs::Move { directory: true, .. });
                self.inject(target_parent, *moved, false, !directory, target_name)
            }
            Step::MoveReleaseTarget { inode: moved } => Self::release(target_parent, *moved, false, target_name),
            Step::MoveKillSource { inode: moved } => Self::release(source_parent, *moved, true, source_name),
            Step::MoveSetParent { inode: moved } => Self::set_parent(*moved, target_parent),
            Step::ReleaseSource { inode: moved, .. } => Self::release(source_parent, *moved, false, source_name),
            _ => return None,
        })
    }

    fn purge_request<'a>(
        &self,
        parent: InodeId,
        creation_time: EggsTime,
        entry: Name<'a>,
    ) -> Option<(ShardId, ShardRequest<'a>)> {
        Some(match &self.step {
            Step::PurgeResolve => Self::resolve(ResolveMode::DeadLe, parent, creation_time, entry),
            Step::PurgeDirent { .. } => {
                let head = PurgeRemoteOwningDirentReqHead { dir: parent, creation_time };
                (
                    parent.shard(),
                    ShardRequest::PurgeRemoteOwningDirent(PurgeRemoteOwningDirentReq { head, name: entry }),
                )
            }
            Step::PurgeMoveToEden { inode: file } => {
                (inode(*file).shard(), ShardRequest::MoveFileToEden(MoveFileToEdenReq { inode: inode(*file) }))
            }
            _ => return None,
        })
    }

    // ---- transitions; `None` = send the step again ----

    fn mkdir_next(&self, parent: InodeId, reply: ShardReply, context: &Context<'_>) -> Option<Step> {
        let done = |outcome| Some(Step::Done(outcome));
        match (&self.step, reply) {
            (Step::MkDirStatParent, reply) => match parent_check(parent, &reply, "parent") {
                Some(failure) => done(failure),
                None => Some(self.after_mkdir_stat(context)),
            },
            (Step::MkDirResolve, ShardReply::Resolve { .. }) => {
                done(Outcome::failed(CdcStatus::AlreadyExists, "the name exists"))
            }
            (Step::MkDirResolve, ShardReply::Error(ErrorKind::NotFound)) => {
                let shard = self.new_dir_shard(context);
                // The placement is not biased: only the request differs.
                if shard == parent.shard() { Some(Step::MkDirCreateLinked) } else { Some(Step::MkDirCreate { shard }) }
            }
            (Step::MkDirResolve, ShardReply::Error(kind)) => done(refused("resolve", kind)),
            (Step::MkDirCreate { .. }, ShardReply::CreateUnlinkedDir { inode: dir }) => {
                Some(Step::MkDirInject { dir: dir.without_owning().get() })
            }
            (Step::MkDirCreate { .. }, ShardReply::Error(kind)) => done(refused("create_unlinked_dir", kind)),
            // One shard transaction: a refusal left nothing to roll back.
            (Step::MkDirCreateLinked, ShardReply::CreateLinkedDir { inode: dir }) => {
                done(Outcome::ok(dir.without_owning()))
            }
            (Step::MkDirCreateLinked, ShardReply::Error(kind)) => done(mkdir_link_refused("create_linked_dir", kind)),
            // Injected owning: done (MkDirRelease is left for records of
            // older runs, whose inject made the entry non-owning).
            (Step::MkDirInject { dir }, ShardReply::InjectDirent) => done(Outcome::ok(inode(*dir))),
            (Step::MkDirInject { dir }, ShardReply::Error(kind)) => {
                Some(Step::MkDirUnlinkCreated { dir: *dir, failure: mkdir_link_refused("inject_dirent", kind) })
            }
            (Step::MkDirRelease { dir }, ShardReply::Empty) => done(Outcome::ok(inode(*dir))),
            (Step::MkDirUnlinkCreated { failure, .. }, ShardReply::Empty) => done(failure.clone()),
            (Step::MkDirRelease { .. } | Step::MkDirUnlinkCreated { .. }, _) => None,
            (step, reply) => self.confused(step, &reply),
        }
    }

    fn rmdir_next(&self, parent: InodeId, reply: ShardReply) -> Option<Step> {
        let done = |outcome| Some(Step::Done(outcome));
        match (&self.step, reply) {
            (Step::RmDirStatParent, reply) => match parent_check(parent, &reply, "parent") {
                Some(failure) => done(failure),
                None => Some(Step::RmDirAcquire),
            },
            (Step::RmDirAcquire, ShardReply::AcquireDirent { inode: dir }) => {
                Some(Step::RmDirUnlink { dir: dir.without_owning().get() })
            }
            (Step::RmDirAcquire, ShardReply::Error(ErrorKind::BadInodeType)) => {
                done(Outcome::failed(CdcStatus::BadInodeType, "not a directory"))
            }
            (Step::RmDirAcquire, ShardReply::Error(kind)) => done(refused("acquire_dirent", kind)),
            (Step::RmDirUnlink { dir }, ShardReply::Empty) => Some(Step::RmDirKill { dir: *dir }),
            (Step::RmDirUnlink { dir }, ShardReply::Error(kind)) => {
                let failure = match kind {
                    ErrorKind::DirectoryNotEmpty => {
                        Outcome::failed(CdcStatus::DirectoryNotEmpty, "the directory has living entries")
                    }
                    kind => refused("set_parent", kind),
                };
                Some(Step::ReleaseSource { inode: *dir, failure })
            }
            (Step::RmDirKill { dir }, ShardReply::Empty) => done(Outcome::ok(inode(*dir))),
            (Step::ReleaseSource { failure, .. }, ShardReply::Empty) => done(failure.clone()),
            (Step::RmDirKill { .. } | Step::ReleaseSource { .. }, _) => None,
            (step, reply) => self.confused(step, &reply),
        }
    }

    fn move_next(
        &self,
        directory: bool,
        source_parent: InodeId,
        target_parent: InodeId,
        reply: ShardReply,
    ) -> Option<Step> {
        let done = |outcome| Some(Step::Done(outcome));
        let rollback = |moved: u64, failure| Some(Step::ReleaseSource { inode: moved, failure });
        match (&self.step, reply) {
            (Step::MoveStatTargetParent, reply) => match parent_check(target_parent, &reply, "target parent") {
                Some(failure) => done(failure),
                None if source_parent == target_parent => Some(self.after_move_stats()),
                None => Some(Step::MoveStatSourceParent),
            },
            (Step::MoveStatSourceParent, reply) => match parent_check(source_parent, &reply, "source parent") {
                Some(failure) => done(failure),
                None => Some(self.after_move_stats()),
            },
            (Step::MoveResolveSource, ShardReply::Resolve { inode: found, .. }) => {
                let found_type = found.inode_type();
                if !found.is_owning() {
                    done(Outcome::failed(CdcStatus::GeneralError, "the source entry is held by another transaction"))
                } else if directory && found_type != Some(InodeType::Directory) {
                    done(Outcome::failed(CdcStatus::BadInodeType, "the source is not a directory"))
                } else if directory {
                    Some(Step::MoveDryRun { inode: found.without_owning().get() })
                } else {
                    match found_type {
                        // Both parents on one shard: one request.
                        Some(InodeType::File | InodeType::Symlink)
                            if source_parent.shard() == target_parent.shard() =>
                        {
                            Some(Step::MoveFileInShard)
                        }
                        Some(kind @ (InodeType::File | InodeType::Symlink)) => {
                            Some(Step::MoveAcquire { inode_type: kind as u8 })
                        }
                        _ => done(Outcome::failed(CdcStatus::BadInodeType, "the source is a directory")),
                    }
                }
            }
            (Step::MoveResolveSource, ShardReply::Error(ErrorKind::NotFound)) => {
                done(Outcome::failed(CdcStatus::NotFound, "the source does not exist"))
            }
            (Step::MoveResolveSource, ShardReply::Error(kind)) => done(refused("resolve source", kind)),
            // One shard transaction: a refusal left nothing to roll back.
            (Step::MoveFileInShard, ShardReply::MoveFileInShard { inode: moved }) => {
                done(Outcome::ok(moved.without_owning()))
            }
            // As the resolve of the long chain would have judged it.
            (Step::MoveFileInShard, ShardReply::Error(ErrorKind::NotFound)) => {
                done(Outcome::failed(CdcStatus::NotFound, "the source does not exist or the target parent was removed"))
            }
            (Step::MoveFileInShard, ShardReply::Error(ErrorKind::BadInodeType)) => {
                done(Outcome::failed(CdcStatus::BadInodeType, "the source is a directory"))
            }
            (Step::MoveFileInShard, ShardReply::Error(ErrorKind::NotOwning)) => {
                done(Outcome::failed(CdcStatus::GeneralError, "the source entry is held by another transaction"))
            }
            (Step::MoveFileInShard, ShardReply::Error(kind)) => done(refused("move_file_in_shard", kind)),
            (Step::MoveDryRun { .. }, ShardReply::InjectDirent) => {
                Some(Step::MoveAcquire { inode_type: InodeType::Directory as u8 })
            }
            (Step::MoveDryRun { .. }, ShardReply::Error(kind)) => done(refused("target", kind)),
            (Step::MoveAcquire { .. }, ShardReply::AcquireDirent { inode: acquired }) => {
                let moved = acquired.without_owning();
                if directory {
                    Some(Self::loop_check(moved, target_parent, 0))
                } else {
                    Some(Step::MoveInject { inode: moved.get() })
                }
            }
            (Step::MoveAcquire { .. }, ShardReply::Error(kind)) => done(refused("acquire source", kind)),
            (Step::MoveLoopCheck { inode: moved, cursor, hops }, reply) => match reply {
                ShardReply::StatDirectory { parent } if parent.is_null() => rollback(
                    *moved,
                    Outcome::failed(CdcStatus::ParentInvalid, "the target directory is not linked to the root"),
                ),
                ShardReply::StatDirectory { parent } => Some(Self::loop_check(inode(*moved), parent, hops + 1)),
                ShardReply::Error(ErrorKind::NotFound) => rollback(
                    *moved,
                    Outcome::failed(CdcStatus::ParentInvalid, format!("loop check: ancestor {cursor:#x} not found")),
                ),
                ShardReply::Error(kind) => rollback(*moved, refused("loop check", kind)),
                other => rollback(
                    *moved,
                    Outcome::failed(CdcStatus::GeneralError, format!("loop check: bad ancestor ({other:?})")),
                ),
            },
            // A directory's target entry stays non-owning until its
            // release; a file's was injected owning.
            (Step::MoveInject { inode: moved }, ShardReply::InjectDirent) if directory => {
                Some(Step::MoveReleaseTarget { inode: *moved })
            }
            (Step::MoveInject { inode: moved }, ShardReply::InjectDirent) => {
                Some(Step::MoveKillSource { inode: *moved })
            }
            (Step::MoveInject { inode: moved }, ShardReply::Error(kind)) => rollback(*moved, refused("target", kind)),
            (Step::MoveReleaseTarget { inode: moved }, ShardReply::Empty) => {
                Some(Step::MoveKillSource { inode: *moved })
            }
            (Step::MoveKillSource { inode: moved }, ShardReply::Empty) if directory => {
                Some(Step::MoveSetParent { inode: *moved })
            }
            (Step::MoveKillSource { inode: moved } | Step::MoveSetParent { inode: moved }, ShardReply::Empty) => {
                done(Outcome::ok(inode(*moved)))
            }
            (Step::ReleaseSource { failure, .. }, ShardReply::Empty) => done(failure.clone()),
            (
                Step::MoveReleaseTarget { .. }
                | Step::MoveKillSource { .. }
                | Step::MoveSetParent { .. }
                | Step::ReleaseSource { .. },
                _,
            ) => None,
            (step, reply) => self.confused(step, &reply),
        }
    }

    /// The shard of the directory this mkdir makes: from the transaction id
    /// alone (not biased by the parent's shard).
    fn new_dir_shard(&self, context: &Context<'_>) -> ShardId {
        let shards = context.new_dir_shards;
        let index = (mix64(self.txn_id) % shards.len().max(1) as u64) as usize;
        shards.get(index).copied().unwrap_or(0)
    }

    /// A mkdir's step after the parent's stat: when the new directory lands
    /// on the parent's shard, create_linked_dir at once (it refuses an
    /// existing name itself, ALREADY_EXISTS, in the same transaction: no
    /// resolve); otherwise the resolve first, so that no directory is made
    /// for a name that is taken.
    fn after_mkdir_stat(&self, context: &Context<'_>) -> Step {
        match &self.args {
            TxnArgs::MkDir { parent, .. } if self.new_dir_shard(context) == inode(*parent).shard() => {
                Step::MkDirCreateLinked
            }
            _ => Step::MkDirResolve,
        }
    }

    /// A move's step after its parents' stats: a file whose parents are on
    /// one shard goes straight to move_file_in_shard (the shard judges the
    /// source there, in the same transaction: no resolve); anything else
    /// resolves the source first.
    fn after_move_stats(&self) -> Step {
        match &self.args {
            TxnArgs::Move { directory: false, source_parent, target_parent, .. }
                if inode(*source_parent).shard() == inode(*target_parent).shard() =>
            {
                Step::MoveFileInShard
            }
            _ => Step::MoveResolveSource,
        }
    }

    /// The next loop-check step with `cursor` the next ancestor to look at.
    fn loop_check(moved: InodeId, cursor: InodeId, hops: u32) -> Step {
        if cursor == moved {
            let failure = Outcome::failed(CdcStatus::LoopDetected, "the target is inside the moved directory");
            Step::ReleaseSource { inode: moved.get(), failure }
        } else if cursor == InodeId::ROOT {
            Step::MoveInject { inode: moved.get() }
        } else if hops >= LOOP_CHECK_HOPS_MAX {
            let failure = Outcome::failed(CdcStatus::GeneralError, "loop check: the target is too deep");
            Step::ReleaseSource { inode: moved.get(), failure }
        } else {
            Step::MoveLoopCheck { inode: moved.get(), cursor: cursor.get(), hops }
        }
    }

    fn purge_next(&self, reply: ShardReply, uncertain: bool) -> Option<Step> {
        let done = |outcome| Some(Step::Done(outcome));
        let (parent, creation_time) = match &self.args {
            TxnArgs::PurgeRemoteFile { parent, creation_time, .. } => (inode(*parent), *creation_time),
            _ => return None,
        };
        match (&self.step, reply) {
            (Step::PurgeResolve, ShardReply::Resolve { inode: found, creation_time: found_time }) => {
                if found_time.get() != creation_time || found.is_null() {
                    done(Outcome::failed(CdcStatus::NotFound, "no dead entry with that creation time"))
                } else if !found.is_owning() {
                    done(Outcome::failed(CdcStatus::BadRequest, "the dead entry does not own its file"))
                } else if found.inode_type() == Some(InodeType::Directory) {
                    done(Outcome::failed(CdcStatus::BadInodeType, "the dead entry is a directory"))
                } else if found.shard() == parent.shard() {
                    done(Outcome::failed(CdcStatus::BadRequest, "the file is on the directory's shard: purge it there"))
                } else {
                    Some(Step::PurgeDirent { inode: found.without_owning().get() })
                }
            }
            (Step::PurgeResolve, ShardReply::Error(kind)) => done(refused("resolve dead entry", kind)),
            (Step::PurgeDirent { inode: file }, ShardReply::Empty) => Some(Step::PurgeMoveToEden { inode: *file }),
            // A retry of a purge that was executed finds nothing left.
            (Step::PurgeDirent { inode: file }, ShardReply::Error(ErrorKind::NotFound)) if uncertain => {
                Some(Step::PurgeMoveToEden { inode: *file })
            }
            (Step::PurgeDirent { .. }, ShardReply::Error(kind)) => done(refused("purge_remote_owning_dirent", kind)),
            (Step::PurgeMoveToEden { inode: file }, ShardReply::Empty) => done(Outcome::ok(inode(*file))),
            (Step::PurgeMoveToEden { inode: file }, ShardReply::Error(ErrorKind::NotFound)) if uncertain => {
                done(Outcome::ok(inode(*file)))
            }
            (Step::PurgeMoveToEden { .. }, ShardReply::Error(kind)) => {
                tracing::error!(txn = self.txn_id, %kind, "dead entry purged but its file could not go to eden");
                done(refused("entry purged, but move_file_to_eden", kind))
            }
            (step, reply) => self.confused(step, &reply),
        }
    }

    /// A reply that does not answer the step (a shard bug): a read step
    /// fails the transaction, anything else is sent again.
    fn confused(&self, step: &Step, reply: &ShardReply) -> Option<Step> {
        tracing::warn!(txn = self.txn_id, ?step, ?reply, "shard reply does not fit the step");
        match step {
            Step::MkDirStatParent
            | Step::MkDirResolve
            | Step::RmDirStatParent
            | Step::MoveStatTargetParent
            | Step::MoveStatSourceParent
            | Step::MoveResolveSource
            | Step::MoveDryRun { .. }
            | Step::PurgeResolve => Some(Step::Done(unexpected("lookup", reply))),
            _ => None,
        }
    }
}
