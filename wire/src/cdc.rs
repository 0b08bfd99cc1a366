//! The CDC protocol (DESIGN.md §5): the requests that touch two directories,
//! each run by the CDC as a durable transaction, and the status it answers.

use zerocopy::{Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::codec::{Blob, Name};
use crate::datagram::CDC_MAGIC;
use crate::ids::{EggsTime, InodeId};
use crate::limits::ERROR_TEXT_BYTES_MAX;

/// The outcome of a CDC transaction. Codes are part of the protocol.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, zerocopy::TryFromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(u8)]
pub enum CdcStatus {
    Ok = 0,
    GeneralError = 1,
    /// The parent is not a living directory.
    ParentInvalid = 2,
    NotFound = 3,
    BadInodeType = 4,
    BadRequest = 5,
    /// The target name exists and may not be overwritten (a directory, or
    /// an entry a transaction holds).
    CannotOverrideTarget = 6,
    /// A directory move would put a directory inside itself.
    LoopDetected = 7,
    /// rmdir of a directory with living entries.
    DirectoryNotEmpty = 8,
    /// mkdir of a name that exists.
    AlreadyExists = 9,
}

impl CdcStatus {
    /// Every status, in code order.
    pub const ALL: [CdcStatus; 10] = [
        Self::Ok,
        Self::GeneralError,
        Self::ParentInvalid,
        Self::NotFound,
        Self::BadInodeType,
        Self::BadRequest,
        Self::CannotOverrideTarget,
        Self::LoopDetected,
        Self::DirectoryNotEmpty,
        Self::AlreadyExists,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::GeneralError => "GENERAL_ERROR",
            Self::ParentInvalid => "PARENT_INVALID",
            Self::NotFound => "NOT_FOUND",
            Self::BadInodeType => "BAD_INODE_TYPE",
            Self::BadRequest => "BAD_REQUEST",
            Self::CannotOverrideTarget => "CANNOT_OVERRIDE_TARGET",
            Self::LoopDetected => "LOOP_DETECTED",
            Self::DirectoryNotEmpty => "DIRECTORY_NOT_EMPTY",
            Self::AlreadyExists => "ALREADY_EXISTS",
        }
    }
}

crate::tailed_message!(
    pub struct MkDirReq<'a>: MkDirReqHead { pub parent: InodeId }
    tail { pub name: Name<'a> }
);

crate::tailed_message!(
    pub struct RmDirReq<'a>: RmDirReqHead { pub parent: InodeId }
    tail { pub name: Name<'a> }
);

crate::tailed_message!(
    /// Moves a file (or symlink) entry to another directory.
    pub struct MvFileReq<'a>: MvFileReqHead { pub source_parent: InodeId, pub target_parent: InodeId }
    tail { pub source_name: Name<'a>, pub target_name: Name<'a> }
);

crate::tailed_message!(
    /// Moves a directory entry to another directory.
    pub struct MvDirReq<'a>: MvDirReqHead { pub source_parent: InodeId, pub target_parent: InodeId }
    tail { pub source_name: Name<'a>, pub target_name: Name<'a> }
);

crate::tailed_message!(
    /// Purges a dead owning entry whose file lives on another shard.
    pub struct PurgeRemoteFileReq<'a>: PurgeRemoteFileReqHead { pub parent: InodeId, pub creation_time: EggsTime }
    tail { pub name: Name<'a> }
);

crate::tailed_message!(
    /// The answer to every CDC request.
    pub struct CdcResp<'a>: CdcRespHead {
        pub status: CdcStatus,
        /// The new (mkdir) or moved inode; null otherwise.
        pub inode: InodeId,
    }
    tail { pub text: Blob<'a, ERROR_TEXT_BYTES_MAX> }
);

crate::message_family! {
    /// Kinds of CDC requests.
    kinds CdcKind;
    /// A request to the CDC.
    requests CdcRequest<'a>;
    /// A response from the CDC.
    responses CdcResponse;
    magic CDC_MAGIC;
    0x01 MkDir(MkDirReq<'a>) => CdcResp<'a>;
    0x02 RmDir(RmDirReq<'a>) => CdcResp<'a>;
    0x03 MvFile(MvFileReq<'a>) => CdcResp<'a>;
    0x04 MvDir(MvDirReq<'a>) => CdcResp<'a>;
    0x05 PurgeRemoteFile(PurgeRemoteFileReq<'a>) => CdcResp<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_status_once_in_code_order() {
        for (index, status) in CdcStatus::ALL.iter().enumerate() {
            assert_eq!(*status as usize, index, "{}", status.name());
        }
        // One past the last is not a status.
        let past = [CdcStatus::ALL.len() as u8];
        assert!(<CdcStatus as zerocopy::TryFromBytes>::try_read_from_bytes(&past[..]).is_err());
    }
}
