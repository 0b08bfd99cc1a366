//! What the kernel sees of an eggsfs inode: its FUSE number, its attributes,
//! and the errno a client error becomes. Plain functions, unit tested.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use client::ClientError;
use client::client::Stat;
use fuser::{Errno, FileAttr, FileType, INodeNo};
use wire::{EggsTime, ErrorKind, InodeId, InodeType};

/// Block size reported by `stat` (what `cp` and `cat` size their buffers by).
pub const REPORTED_BLOCK_SIZE: u32 = 1 << 20;

/// The FUSE number of an inode. FUSE wants the root at 1; eggsfs's root is
/// `InodeId::ROOT`. The two numbers swap places (the eggsfs id 1, a
/// directory of shard 0, takes the root's id), so the mapping is a
/// bijection and its own inverse.
pub fn fuse_ino(inode: InodeId) -> INodeNo {
    INodeNo(swap_root(inode.without_owning().get()))
}

/// The eggsfs inode of a FUSE number.
pub fn eggs_inode(ino: INodeNo) -> InodeId {
    InodeId::new(swap_root(ino.0))
}

fn swap_root(raw: u64) -> u64 {
    if raw == InodeId::ROOT.get() {
        INodeNo::ROOT.0
    } else if raw == INodeNo::ROOT.0 {
        InodeId::ROOT.get()
    } else {
        raw
    }
}

/// The kind of file an inode id says it is.
pub fn kind_of(inode: InodeId) -> FileType {
    match inode.inode_type() {
        Some(InodeType::Directory) => FileType::Directory,
        Some(InodeType::Symlink) => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

/// Wall-clock time of an eggs time.
pub fn system_time(time: EggsTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(time.unix_ns())
}

/// Who owns every file: the user that mounted (eggsfs has no owners).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The mode bits every inode reports: eggsfs has no permissions, so files
/// are 0644, directories 0755, symlinks 0777.
pub fn permissions(kind: FileType) -> u16 {
    match kind {
        FileType::Directory => 0o755,
        FileType::Symlink => 0o777,
        _ => 0o644,
    }
}

/// The attributes of `inode` from its stat.
pub fn attributes(inode: InodeId, stat: &Stat, owner: Owner) -> FileAttr {
    let (size, mtime) = match stat {
        // A directory reports one block, like most filesystems; its mtime is
        // the last change of its entries.
        Stat::Directory { mtime, .. } => (4096, *mtime),
        Stat::File { mtime, size } => (*size, *mtime),
    };
    attributes_of(inode, size, mtime, owner)
}

/// The attributes of `inode` with a known size and mtime.
pub fn attributes_of(inode: InodeId, size: u64, mtime: EggsTime, owner: Owner) -> FileAttr {
    let kind = kind_of(inode);
    let time = system_time(mtime);
    FileAttr {
        ino: fuse_ino(inode),
        size,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind,
        perm: permissions(kind),
        // Directories say 1: "unknown number of subdirectories", which
        // makes find(1) read every directory instead of trusting the
        // link count (as on btrfs); eggsfs has no hard links.
        nlink: 1,
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: REPORTED_BLOCK_SIZE,
        flags: 0,
    }
}

/// The errno for a failed client operation, and whether it is worth
/// logging (true when the cluster failed rather than the caller).
pub fn errno_of(error: &ClientError) -> (Errno, bool) {
    let quiet = |errno| (errno, false);
    match error {
        ClientError::Request(request) => match request.error_kind() {
            Some(ErrorKind::NotFound) => quiet(Errno::ENOENT),
            Some(ErrorKind::AlreadyExists) | Some(ErrorKind::CannotOverrideTarget) => quiet(Errno::EEXIST),
            Some(ErrorKind::NameTooLong) => quiet(Errno::ENAMETOOLONG),
            Some(ErrorKind::DirectoryNotEmpty) => quiet(Errno::ENOTEMPTY),
            Some(ErrorKind::BadInodeType) => quiet(Errno::ENOTDIR),
            Some(ErrorKind::NotEnoughBlockServices) => (Errno::ENOSPC, true),
            _ => (Errno::EIO, true),
        },
        ClientError::NotFound { .. } => quiet(Errno::ENOENT),
        ClientError::NotADirectory { .. } => quiet(Errno::ENOTDIR),
        ClientError::IsADirectory { .. } => quiet(Errno::EISDIR),
        ClientError::BadPath { reason, .. } if reason.contains("long") => quiet(Errno::ENAMETOOLONG),
        ClientError::BadPath { .. } => quiet(Errno::EINVAL),
        ClientError::Cdc { status, .. } => match *status {
            "NOT_FOUND" | "PARENT_INVALID" => quiet(Errno::ENOENT),
            "ALREADY_EXISTS" | "CANNOT_OVERRIDE_TARGET" => quiet(Errno::EEXIST),
            "DIRECTORY_NOT_EMPTY" => quiet(Errno::ENOTEMPTY),
            "BAD_INODE_TYPE" => quiet(Errno::ENOTDIR),
            "LOOP_DETECTED" => quiet(Errno::EINVAL),
            _ => (Errno::EIO, true),
        },
        ClientError::NoSpace { .. } => (Errno::ENOSPC, true),
        _ => (Errno::EIO, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::udp::RequestError;

    #[test]
    fn root_swaps_with_inode_one_and_others_map_to_themselves() {
        assert_eq!(fuse_ino(InodeId::ROOT), INodeNo::ROOT);
        assert_eq!(eggs_inode(INodeNo::ROOT), InodeId::ROOT);
        let one = InodeId::new(1);
        assert_eq!(fuse_ino(one).0, InodeId::ROOT.get());
        assert_eq!(eggs_inode(fuse_ino(one)), one);
        let file = InodeId::compose(InodeType::File, 7, 42).expect("fits");
        assert_eq!(eggs_inode(fuse_ino(file)), file);
        assert_eq!(fuse_ino(file.with_owning(true)), fuse_ino(file), "the owning bit is not part of the number");
    }

    #[test]
    fn attributes_carry_size_time_kind_and_mode() {
        let file = InodeId::compose(InodeType::File, 3, 9).expect("fits");
        let mtime = EggsTime::from_unix_ns(1_700_000_000_123_456_789).expect("after the epoch");
        let owner = Owner { uid: 10, gid: 20 };
        let attr = attributes(file, &Stat::File { mtime, size: 1000 }, owner);
        assert_eq!(
            (attr.size, attr.blocks, attr.kind, attr.perm, attr.uid, attr.gid),
            (1000, 2, FileType::RegularFile, 0o644, 10, 20)
        );
        assert_eq!(attr.mtime.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos(), 1_700_000_000_123_456_789);
        let dir =
            attributes(InodeId::ROOT, &Stat::Directory { mtime, parent: InodeId::NULL, policy: Vec::new() }, owner);
        assert_eq!((dir.kind, dir.perm, dir.nlink, dir.ino), (FileType::Directory, 0o755, 1, INodeNo::ROOT));
        let link = InodeId::compose(InodeType::Symlink, 0, 5).expect("fits");
        assert_eq!(attributes_of(link, 3, mtime, owner).kind, FileType::Symlink);
    }

    #[test]
    fn errors_map_to_the_errno_programs_expect() {
        let cdc = |status| ClientError::cdc("x", "/p", status, "");
        use wire::cdc::CdcStatus;
        assert_eq!(errno_of(&cdc(CdcStatus::DirectoryNotEmpty)), (Errno::ENOTEMPTY, false));
        assert_eq!(errno_of(&cdc(CdcStatus::AlreadyExists)), (Errno::EEXIST, false));
        assert_eq!(errno_of(&cdc(CdcStatus::NotFound)), (Errno::ENOENT, false));
        assert_eq!(errno_of(&cdc(CdcStatus::BadInodeType)), (Errno::ENOTDIR, false));
        assert_eq!(errno_of(&cdc(CdcStatus::GeneralError)), (Errno::EIO, true));
        assert_eq!(errno_of(&ClientError::NotFound { path: "/a".into() }), (Errno::ENOENT, false));
        assert_eq!(errno_of(&ClientError::IsADirectory { path: "/a".into() }), (Errno::EISDIR, false));
        assert_eq!(errno_of(&ClientError::NotADirectory { path: "/a".into() }), (Errno::ENOTDIR, false));
        let span = ClientError::Span { inode: InodeId::ROOT, offset: 0, reason: "gone".into() };
        assert_eq!(errno_of(&span), (Errno::EIO, true), "unreadable spans are EIO and logged");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let timeout = RequestError::Timeout { family: "shard", kind: "STAT", addr, attempts: 3, elapsed_ms: 1 };
        assert_eq!(errno_of(&ClientError::Request(timeout)), (Errno::EIO, true));
        let missing = RequestError::Response {
            family: "shard",
            addr,
            kind: ErrorKind::NotFound,
            text: String::new(),
            attempts: 1,
        };
        assert_eq!(errno_of(&ClientError::Request(missing)), (Errno::ENOENT, false));
    }
}
