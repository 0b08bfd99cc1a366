//! The CDC's view of the shards: "send this request to shard N and tell me
//! what it answered". The transaction driver is generic over [`Shards`], so
//! the same logic runs over real UDP ([`crate::udp::UdpShards`]) and over
//! the simulation's in-process network to metad's request logic
//! (`tests/sim`).

use std::future::Future;
use std::time::Duration;

use wire::shard::{ShardKind, ShardRequest, ShardResponse, StatResp};
use wire::{EggsTime, ErrorKind, InodeId, ShardId};

/// What a shard answered, reduced to what the transactions read. Owned, so
/// it outlives the datagram it was decoded from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ShardReply {
    /// An error response.
    Error(ErrorKind),
    Resolve {
        inode: InodeId,
        creation_time: EggsTime,
    },
    StatDirectory {
        parent: InodeId,
    },
    StatFile,
    CreateUnlinkedDir {
        inode: InodeId,
    },
    InjectDirent,
    CreateLinkedDir {
        inode: InodeId,
    },
    AcquireDirent {
        inode: InodeId,
    },
    MoveFileInShard {
        inode: InodeId,
    },
    /// set_parent, release_dirent, purge_remote_owning_dirent,
    /// move_file_to_eden.
    Empty,
}

impl ShardReply {
    /// Reduces a decoded response to the request `kind`; `None` when the
    /// response answers another kind (a confused or hostile peer).
    pub fn from_response(kind: ShardKind, response: &ShardResponse<'_>) -> Option<Self> {
        let reply = match response {
            ShardResponse::Error(error) => return Some(ShardReply::Error(error.kind)),
            ShardResponse::Resolve(resp) => {
                ShardReply::Resolve { inode: resp.inode, creation_time: resp.creation_time }
            }
            ShardResponse::Stat(StatResp::Directory(dir)) => ShardReply::StatDirectory { parent: dir.parent },
            ShardResponse::Stat(StatResp::File(_)) => ShardReply::StatFile,
            ShardResponse::CreateUnlinkedDir(resp) => ShardReply::CreateUnlinkedDir { inode: resp.inode },
            ShardResponse::InjectDirent(_) => ShardReply::InjectDirent,
            ShardResponse::CreateLinkedDir(resp) => ShardReply::CreateLinkedDir { inode: resp.inode },
            ShardResponse::AcquireDirent(resp) => ShardReply::AcquireDirent { inode: resp.inode },
            ShardResponse::MoveFileInShard(resp) => ShardReply::MoveFileInShard { inode: resp.inode },
            ShardResponse::SetParent(_)
            | ShardResponse::ReleaseDirent(_)
            | ShardResponse::PurgeRemoteOwningDirent(_)
            | ShardResponse::MoveFileToEden(_) => ShardReply::Empty,
            _ => return None,
        };
        (response.kind() == Some(kind)).then_some(reply)
    }
}

/// Why a request got no answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum TransportError {
    /// No (valid) answer within the attempt's timeout: the request may or
    /// may not have been executed.
    #[error("shard {0} did not answer in time")]
    Timeout(ShardId),
    /// The coordinator is stopping: abandon the transaction where it is (it
    /// resumes from its persisted state at the next start). Also how the
    /// tests simulate a crash.
    #[error("coordinator shutting down")]
    Shutdown,
}

/// One attempt of a request to a shard.
///
/// `request_id` is chosen by the caller and is the same on every attempt of
/// one transaction step (also across restarts), so a shard recognises a
/// retransmission of a mutation it already executed. Privileged requests
/// are MAC'd by the implementation.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a, 'r> {
    pub shard: ShardId,
    pub request_id: u64,
    pub request: &'a ShardRequest<'r>,
    /// How long to wait for the answer.
    pub timeout: Duration,
}

/// Sends attempts of requests to the shards.
pub trait Shards: Send + Sync {
    fn request(&self, attempt: Attempt<'_, '_>) -> impl Future<Output = Result<ShardReply, TransportError>> + Send;

    /// Whether `shard` exists, as far as the implementation knows: a
    /// transaction naming another shard is refused before it starts.
    fn knows(&self, _shard: ShardId) -> bool {
        true
    }
}

/// Error kinds that say "not now" rather than "no": the step is retried.
/// A storage error is one: the shard applied nothing (it is durable before
/// it answers), and giving up half way through a transaction is worse than
/// waiting for the disk to come back.
pub fn is_transient(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Overloaded | ErrorKind::TimedOut | ErrorKind::NetworkError | ErrorKind::StorageError)
}
