//! Why a figure could not be measured.

use std::io;

/// A measurement that failed; the text becomes the "not measured" reason in
/// the table, so it says what was tried and what happened.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// A daemon or the CLI is missing, refused to start, or died.
    #[error("{0}")]
    Component(String),
    /// A daemon answered, but not as the protocol says it should.
    #[error("{0}")]
    Protocol(String),
    /// No answer in time.
    #[error("{0}")]
    Timeout(String),
}

impl PerfError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> PerfError {
        let context = context.into();
        move |source| PerfError::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, PerfError>;
