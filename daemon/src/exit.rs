//! One exit-code scheme for every daemon (ARCHITECTURE.md, "Exit codes"):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | clean stop (SIGTERM or SIGINT), or `--help`/`--version` |
//! | 1 | runtime failure: something that worked stopped working (a disk error, a failed executor, a lost socket) |
//! | 2 | usage or configuration: a bad flag, an unusable folder or key file, an address that cannot be bound, a folder locked by another daemon |
//! | 3 | the LMDB store faulted: a read inside its map failed (damage that arrived after the start-up check, or a disk read error); see [`crate::fault`] |
//!
//! A failure is one line on stderr, `PROCESS: what went wrong: why`. clap
//! already exits 2 on a bad flag and 0 for `--help`.

use std::process::ExitCode;

/// Clean stop.
pub const EXIT_CLEAN: u8 = 0;
/// Runtime failure.
pub const EXIT_RUNTIME: u8 = 1;
/// Bad usage or configuration (bind failure and folder lock included).
pub const EXIT_USAGE: u8 = 2;

/// A read inside the store's map faulted ([`crate::fault`]).
pub const EXIT_STORE_FAULT: u8 = 3;

/// Why a daemon stops other than cleanly.
#[derive(Debug)]
pub enum Failure {
    /// The operator's to fix: exit 2.
    Usage(anyhow::Error),
    /// Exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    /// A usage or configuration failure.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure::Usage(error.into())
    }

    /// The process exit code of this failure.
    pub fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Runtime(_) => EXIT_RUNTIME,
        }
    }

    /// The error, all causes on one line.
    pub fn line(&self) -> String {
        let (Failure::Usage(error) | Failure::Runtime(error)) = self;
        format!("{error:#}").replace('\n', " ")
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Runtime(error.into())
    }
}

/// Marks an error as the operator's to fix: `result.or_usage()?`.
pub trait OrUsage<T> {
    fn or_usage(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrUsage<T> for Result<T, E> {
    fn or_usage(self) -> Result<T, Failure> {
        self.map_err(Failure::usage)
    }
}

/// Runs a daemon's body and turns its outcome into the exit code, printing
/// a failure as `PROCESS: …` on stderr.
pub fn exit_with(process: &str, outcome: Result<(), Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::from(EXIT_CLEAN),
        Err(failure) => {
            tracing::debug!(code = failure.code(), "exiting");
            eprintln!("{process}: {}", failure.line());
            ExitCode::from(failure.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn usage_and_runtime_failures_have_their_codes_and_one_line() {
        let refused: Result<(), std::io::Error> = Err(std::io::Error::other("address in use"));
        let failure = refused.context("cannot bind udp 127.0.0.1:1\nsecond line").or_usage().unwrap_err();
        assert_eq!(failure.code(), EXIT_USAGE);
        assert_eq!(failure.line(), "cannot bind udp 127.0.0.1:1 second line: address in use");
        let failure = Failure::from(std::io::Error::other("disk gone"));
        assert_eq!(failure.code(), EXIT_RUNTIME);
    }
}
