//! The `eggs` commands. `main.rs` holds the table of commands; here:
//!
//! - [`connect`]: shuckle's address (`--shuckle HOST:PORT`, `EGGS_SHUCKLE`)
//!   and discovery that fails fast, naming shuckle, never falling back to
//!   default ports;
//! - [`errors`]: error lines in the user's words, the protocol detail behind
//!   `-v`;
//! - [`output`]: stdout that ends quietly when the reader goes away, human
//!   sizes, ISO-8601 times, the JSON entry schema, progress bars;
//! - [`glob`]: `*`, `?`, `[…]` in eggsfs paths, expanded by `eggs`;
//! - [`list`]: `ls`, `stat`, `tree`, `find`, `du`;
//! - [`tree_ops`]: `mkdir -p`, `rmdir`, `rm -r`, `mv`;
//! - [`copy`]: `put`, `get`, `cat`, `cp` (cp(1) semantics for directories);
//! - [`df`]: capacity from shuckle, each disk counted once
//!   ([`client::capacity`]);
//! - [`shell`]: completions and man pages;
//! - [`admin`]: the low-level commands (policy, eden files, visits);
//! - [`operator`]: `block-service drain|resume|terminate` through shuckle's
//!   HTTP API with the operator token.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use client::Client;
use tokio::sync::OnceCell;
use wire::span::Parity;

pub mod admin;
pub mod connect;
pub mod copy;
pub mod df;
pub mod errors;
pub mod glob;
pub mod list;
pub mod operator;
pub mod output;
pub mod shell;
pub mod tree_ops;

/// Overrides of the directory's write policy.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PolicyFlags {
    /// Data and parity blocks per span, `D+P` (D = 1: mirroring).
    #[arg(long)]
    pub parity: Option<Parity>,
    /// Storage class of the block services to use (≥ 2).
    #[arg(long)]
    pub storage_class: Option<u8>,
    /// Largest span, in bytes.
    #[arg(long)]
    pub span_size: Option<u32>,
}

/// Which version of a name to look at.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeadFlags {
    /// The dead version with the largest creation time ≤ TS (eggs ns).
    #[arg(long, value_name = "TS", conflicts_with = "dead_ge")]
    pub dead_le: Option<u64>,
    /// The dead version with the smallest creation time ≥ TS (eggs ns).
    #[arg(long, value_name = "TS")]
    pub dead_ge: Option<u64>,
}

/// What every command may need: the cluster, connected on first use.
pub struct Context {
    shuckle: Option<String>,
    pub verbose: bool,
    client: OnceCell<Client>,
}

impl Context {
    /// Shuckle's address as given (`--shuckle`, `EGGS_SHUCKLE`) or the default.
    pub fn shuckle_address(&self) -> anyhow::Result<SocketAddr> {
        Ok(connect::shuckle_address(self.shuckle.as_deref())?.1)
    }

    /// Shuckle's address as given, if it was.
    pub fn shuckle(&self) -> Option<&str> {
        self.shuckle.as_deref()
    }

    /// The client, discovering the cluster through shuckle the first time.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let (text, addr): (String, SocketAddr) = connect::shuckle_address(self.shuckle.as_deref())?;
                connect::connect(&text, addr).await
            })
            .await?;
        Ok(client.clone())
    }
}

/// Runs the parsed command line; the process's exit code.
pub fn main(cli: crate::Cli) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let verbose = cli.verbose;
    let timeout = match cli.timeout.map(timeout_duration).transpose() {
        Ok(timeout) => timeout,
        Err(error) => {
            eprintln!("eggs: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("eggs: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let context = Context { shuckle: cli.shuckle, verbose, client: OnceCell::new() };
    let result = runtime.block_on(async {
        let work = crate::run(cli.command, &context);
        match timeout {
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("timed out after {} (--timeout)", seconds(limit))),
            },
            None => work.await,
        }
    });
    // Do not wait for background work (a hung request) after the answer.
    runtime.shutdown_background();
    match result {
        Ok(()) => output::flush_stdout(),
        Err(error) if output::is_stdout_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = output::flush_stdout();
            eprintln!("eggs: {}", errors::describe(&error, verbose));
            ExitCode::from(1)
        }
    }
}

fn timeout_duration(seconds: f64) -> anyhow::Result<Duration> {
    if seconds.is_nan() || seconds <= 0.0 || seconds.is_infinite() {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| anyhow::anyhow!("--timeout {seconds} is too large"))
}

fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}
