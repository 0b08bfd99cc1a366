//! The client library's errors: one enum, with enough context (path, inode,
//! block, address) for a one-line message.

use std::net::SocketAddr;

use wire::cdc::CdcStatus;
use wire::span::SpanError;
use wire::{BlockId, ErrorKind, InodeId};

use crate::udp::RequestError;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A datagram request failed (timeout, error response, …).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A path the user gave is not usable.
    #[error("{path}: {reason}")]
    BadPath { path: String, reason: String },
    /// No entry of that name.
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    /// A path component (or the target) is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    /// A file operation on a directory.
    #[error("{path}: is a directory")]
    IsADirectory { path: String },
    /// The CDC refused or failed a transaction.
    #[error("{operation} {path}: {status}{}", if text.is_empty() { String::new() } else { format!(" ({text})") })]
    Cdc { operation: &'static str, path: String, status: &'static str, text: String },
    /// A block service failed or refused a request; `answered` is the
    /// error it answered (the block protocol's error answer, e.g.
    /// `NO_SPACE`), if it said why.
    #[error("block service {addr}, block {block_id}: {reason}")]
    Block { addr: SocketAddr, block_id: BlockId, reason: String, answered: Option<ErrorKind> },
    /// A write found no block services with space: some of the storage
    /// class's services are full, and too few others are left.
    #[error(
        "no space left on device: {full} of the {total} block services of storage class {storage_class} are full ({reason})"
    )]
    NoSpace { storage_class: u8, full: usize, total: usize, reason: String },
    /// A span could not be read or written.
    #[error("file {inode}, span at offset {offset}: {reason}")]
    Span { inode: InodeId, offset: u64, reason: String },
    /// Span layout or Reed–Solomon failure.
    #[error("span layout: {0}")]
    Layout(#[from] SpanError),
    /// Local input/output failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// A policy or option is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The metadata returned something that makes no sense.
    #[error("inconsistent metadata: {0}")]
    Inconsistent(String),
}

impl ClientError {
    /// The error kind of a shard/CDC error response, if that is what this is.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Request(request) => request.error_kind(),
            ClientError::Block { answered, .. } => *answered,
            ClientError::NoSpace { .. } => Some(ErrorKind::NoSpace),
            _ => None,
        }
    }

    /// Builds a CDC error from a status.
    pub fn cdc(operation: &'static str, path: &str, status: CdcStatus, text: &str) -> Self {
        ClientError::Cdc { operation, path: path.to_owned(), status: status.name(), text: text.to_owned() }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io { context: context.into(), source }
    }
}

/// Results of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
