//! Error lines in the user's words: `no such file or directory: /nope`,
//! `directory not empty: /d`. With `-v` the protocol detail (daemon,
//! address, error kind) follows in brackets.

use client::ClientError;
use client::udp::RequestError;
use wire::ErrorKind;

/// An error whose user line and protocol detail are known apart: the
/// detail is shown with `-v` only.
#[derive(Debug, thiserror::Error)]
#[error("{words}")]
pub struct Detailed {
    pub words: String,
    pub detail: String,
}

/// What a shard error kind means to a user.
fn kind_words(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "no such file or directory",
        ErrorKind::AlreadyExists => "file exists",
        ErrorKind::NameTooLong => "file name too long",
        ErrorKind::DirectoryNotEmpty => "directory not empty",
        ErrorKind::BadInodeType => "wrong type (a file where a directory is needed, or the other way)",
        ErrorKind::CannotOverrideTarget => "the target exists and cannot be replaced",
        ErrorKind::NotEnoughBlockServices => "not enough block services to write (too few are up)",
        ErrorKind::StorageError => "the metadata store failed",
        ErrorKind::Overloaded => "the cluster is busy; try again",
        // The shard's time rules: an eden file before its deadline, a dead
        // entry younger than the purge age.
        ErrorKind::TooSoon => "too soon: its deadline has not passed yet",
        ErrorKind::EdenDeadline => "the file being written expired",
        ErrorKind::NotAuthorised => "not allowed",
        ErrorKind::CrcMismatch => "data does not match its checksum",
        _ => "the cluster refused the request",
    }
}

/// What a CDC status name means to a user.
fn cdc_words(status: &str) -> &'static str {
    match status {
        "NOT_FOUND" => "no such file or directory",
        "PARENT_INVALID" => "the parent directory does not exist",
        "BAD_INODE_TYPE" => "wrong type (a file where a directory is needed, or the other way)",
        "CANNOT_OVERRIDE_TARGET" => "the target exists and cannot be replaced",
        "LOOP_DETECTED" => "cannot move a directory into itself",
        "DIRECTORY_NOT_EMPTY" => "directory not empty",
        "ALREADY_EXISTS" => "file exists",
        _ => "the cluster refused the request",
    }
}

fn request_words(error: &RequestError) -> String {
    match error {
        RequestError::Timeout { family, addr, elapsed_ms, .. } => {
            if super::connect::is_unknown(*addr) {
                format!("shuckle does not know where this {family} is (is it registered?)")
            } else {
                format!("the {family} at {addr} did not answer within {:.1} s", *elapsed_ms as f64 / 1000.0)
            }
        }
        RequestError::Response { kind, .. } => kind_words(*kind).to_owned(),
        RequestError::Io(_) => "a shard or the CDC is not reachable (not registered with shuckle?)".to_owned(),
        other => other.to_string(),
    }
}

/// The user's line for a client error; `None` if its own text is fine.
fn client_words(error: &ClientError) -> Option<String> {
    Some(match error {
        ClientError::NotFound { path } => format!("no such file or directory: {path}"),
        ClientError::NotADirectory { path } => format!("not a directory: {path}"),
        ClientError::IsADirectory { path } => format!("is a directory: {path}"),
        ClientError::BadPath { path, reason } => format!("{reason}: {path}"),
        ClientError::Cdc { operation, path, status, .. } => format!("{operation}: {}: {path}", cdc_words(status)),
        ClientError::Request(request) => request_words(request),
        ClientError::NoSpace { storage_class, full, total, .. } => {
            format!(
                "no space left on device: {full} of the {total} block services of storage class {storage_class} are full"
            )
        }
        _ => return None,
    })
}

/// The one line `eggs` prints for a failed command (after `eggs: `).
pub fn describe(error: &anyhow::Error, verbose: bool) -> String {
    if let Some(detailed) = error.chain().find_map(|cause| cause.downcast_ref::<Detailed>()) {
        return if verbose { format!("{} [{}]", detailed.words, detailed.detail) } else { detailed.words.clone() };
    }
    let detail = one_line(error);
    let client = error.chain().find_map(|cause| cause.downcast_ref::<ClientError>());
    let words = client.and_then(client_words).map(|words| {
        // Keep what our own contexts said before the client error.
        let outer: Vec<String> = error
            .chain()
            .take_while(|cause| cause.downcast_ref::<ClientError>().is_none())
            .map(ToString::to_string)
            .collect();
        if outer.is_empty() { words } else { format!("{}: {words}", outer.join(": ")) }
    });
    match words {
        Some(words) if verbose && words != detail => format!("{words} [{detail}]"),
        Some(words) => words,
        None => detail,
    }
}

/// The error and its causes on one line.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text.replace('\n', " ")
}
