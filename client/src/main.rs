//! `eggs`: the eggsfs command-line client, and `eggs local-cluster`.
//!
//! This file is the table of commands (flags and which function runs each);
//! the commands themselves live in `cli/` (see `cli/mod.rs`). Paths are
//! absolute eggsfs paths; `*`, `?` and `[…]` in them are expanded by `eggs`
//! (quote them so the shell does not). Errors are one line on stderr in the
//! user's words (`-v` adds the protocol detail) and a non-zero exit (1
//! runtime, 2 usage); a closed stdout (`eggs ls / | head -1`) ends the
//! command quietly with status 0, as coreutils do.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wire::ShardId;

mod cli;
mod local_cluster;
mod mount;

use cli::{Context, DeadFlags};
use local_cluster::ClusterConfig;

/// The schema of every `--json` output, shown at the end of `eggs --help`.
const JSON_HELP: &str = "\
JSON output (--json on ls, stat, find, tree, du, df) is stable:
  entry (ls, find, stat): {\"path\": \"/a/f\", \"name\": \"f\", \"inode\": \"0x…\",
    \"type\": \"FILE\"|\"DIRECTORY\"|\"SYMLINK\"|\"NOTHING\", \"size\": bytes|null (directories: null),
    \"mtime\": \"2026-01-02T03:04:05.123456789Z\"|null, \"mtime_unix_ns\": n|null}
    ls adds \"owning\" and \"creation_time\" (ISO-8601, UTC); ls and find print an array;
  tree: an entry with \"children\": [tree…] for directories;
  du: [{\"path\": …, \"bytes\": n, \"files\": n, \"directories\": n}];
  df: {\"capacity_bytes\", \"used_bytes\", \"free_bytes\", \"disks\", \"block_services\",
    \"per_disk\": [{\"host\", \"block_services\": [\"0x…\"], \"used_bytes\", \"free_bytes\"}]}.
Times in human output are ISO-8601 in local time.
Shuckle: --shuckle HOST:PORT or EGGS_SHUCKLE (default 127.0.0.1:5000).";

#[derive(Parser, Debug)]
#[command(name = "eggs", version, about = "eggsfs client: files and directories on an eggsfs cluster", after_help = JSON_HELP)]
pub struct Cli {
    /// Shuckle's address, HOST:PORT (where the shards and the CDC are found).
    #[arg(long, global = true, env = client::client::SHUCKLE_ENV, value_name = "HOST:PORT")]
    shuckle: Option<String>,
    /// Say more on stderr (protocol detail of errors, blocks read from parity, …).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Give up on the whole command after this many seconds.
    #[arg(long, global = true, value_name = "SECONDS")]
    timeout: Option<f64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List directories (sorted by name), or show files.
    Ls(cli::list::LsArgs),
    /// Show an inode: `key=value` lines (or --json).
    Stat(cli::list::StatArgs),
    /// Print a directory tree.
    Tree(cli::list::TreeArgs),
    /// Find entries under a directory by name.
    Find(cli::list::FindArgs),
    /// Sum the sizes of trees.
    Du(cli::list::DuArgs),
    /// The cluster's capacity (each disk counted once).
    Df(cli::df::DfArgs),
    /// Create directories (through the CDC).
    Mkdir(cli::tree_ops::MkdirArgs),
    /// Remove empty directories (soft delete: they stay in the dead map).
    Rmdir {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Remove files, or trees with -r (soft delete: they stay in the dead map).
    Rm(cli::tree_ops::RmArgs),
    /// Move or rename a file or directory (into DIR when the target is a directory).
    Mv { source: String, target: String },
    /// Copy eggsfs files within eggsfs (into DIR when the target is a directory).
    Cp(cli::copy::CpArgs),
    /// Write local files (or `-` for stdin) to eggsfs.
    Put(cli::copy::PutArgs),
    /// Read eggsfs files into local files (or `-` for stdout).
    Get(cli::copy::GetArgs),
    /// Write files' contents to stdout.
    Cat(cli::copy::CatArgs),
    /// Show or set a directory's write and retention policy
    /// (`eggs policy PATH [FLAGS]`: shows it, or sets the flags given).
    #[command(args_conflicts_with_subcommands = true)]
    Policy {
        #[command(subcommand)]
        action: Option<cli::admin::PolicyAction>,
        path: Option<String>,
        #[command(flatten)]
        policy: cli::PolicyFlags,
        #[command(flatten)]
        retention: cli::admin::RetentionFlags,
    },
    /// Print a shell completion script: `eggs completions bash > …` (see README).
    Completions { shell: clap_complete::Shell },
    /// Print the man page, or write every page into a folder with --dir.
    Man {
        /// Write eggs.1 and eggs-COMMAND.1 here (e.g. ~/.local/share/man/man1).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Create the prototype's three-span test file (`hello, world` and ten NULs).
    CreateTestFile { path: String },
    /// Resolve a path to its inode (living, or a dead version).
    Resolve {
        path: String,
        #[command(flatten)]
        dead: DeadFlags,
    },
    /// Create an empty eden file; prints its inode and cookie.
    CreateEdenFile {
        /// Shard to create it on.
        #[arg(long, default_value_t = 0)]
        shard: ShardId,
        /// Make it a symlink rather than a file.
        #[arg(long)]
        symlink: bool,
    },
    /// Expunge the last span of an eden file past its deadline (erasing its blocks).
    ExpungeSpan { inode: String },
    /// Expunge an empty eden file past its deadline.
    ExpungeFile { inode: String },
    /// List every inode of a shard.
    VisitInodes {
        #[arg(long, default_value_t = 0)]
        shard: ShardId,
    },
    /// List every eden file of a shard, with its deadline.
    VisitEden {
        #[arg(long, default_value_t = 0)]
        shard: ShardId,
    },
    /// List the blocks a shard has on one block service.
    ReverseBlockQuery {
        /// Block service id (hex `0x…` or decimal).
        block_service: String,
        #[arg(long, default_value_t = 0)]
        shard: ShardId,
    },
    /// List the block services shuckle knows: id, address, storage class, flags.
    BlockServices,
    /// Drain, resume or terminate a block service (needs shuckle's operator token).
    BlockService(cli::operator::BlockServiceArgs),
    /// Run a whole cluster on this machine as child processes.
    LocalCluster(ClusterConfig),
    /// Mount the cluster's namespace as a local filesystem (FUSE).
    Mount(mount::MountArgs),
}

fn main() -> ExitCode {
    cli::main(Cli::parse_from(cli::list::find_compat(std::env::args_os())))
}

/// Runs one command (after connecting, for those that need a cluster).
async fn run(command: Command, context: &Context) -> anyhow::Result<()> {
    use cli::*;
    match command {
        // Commands that need no cluster.
        Command::LocalCluster(config) => local_cluster::run(config).await,
        Command::Completions { shell } => shell::completions(shell),
        Command::Man { dir } => shell::man(dir.as_deref()),
        Command::Mount(args) => mount::run(args, context.shuckle_address()?).await,
        // Everything else talks to the cluster.
        Command::Ls(args) => list::ls(&context.client().await?, &args).await,
        Command::Stat(args) => list::stat(&context.client().await?, &args).await,
        Command::Tree(args) => list::tree(&context.client().await?, &args).await,
        Command::Find(args) => list::find(&context.client().await?, &args).await,
        Command::Du(args) => list::du(&context.client().await?, &args).await,
        Command::Df(args) => df::df(&context.client().await?, &args).await,
        Command::Mkdir(args) => tree_ops::mkdir(&context.client().await?, &args, context.verbose).await,
        Command::Rmdir { paths } => tree_ops::rmdir(&context.client().await?, &paths).await,
        Command::Rm(args) => tree_ops::rm(&context.client().await?, &args, context.verbose).await,
        Command::Mv { source, target } => tree_ops::mv(&context.client().await?, &source, &target).await,
        Command::Cp(args) => copy::cp(&context.client().await?, &args, context.verbose).await,
        Command::Put(args) => copy::put(&context.client().await?, &args, context.verbose).await,
        Command::Get(args) => copy::get(&context.client().await?, &args, context.verbose).await,
        Command::Cat(args) => copy::cat(&context.client().await?, &args, context.verbose).await,
        Command::Policy { action, path, policy, retention } => {
            let action = match (action, path) {
                (Some(action), _) => action,
                (None, Some(path)) => admin::PolicyAction::from_path(path, policy, retention),
                (None, None) => {
                    return Err(anyhow::anyhow!("eggs policy: give a PATH (or `get PATH` / `set PATH FLAGS`)"));
                }
            };
            admin::policy(&context.client().await?, action).await
        }
        Command::CreateTestFile { path } => admin::create_test_file(&context.client().await?, &path).await,
        Command::Resolve { path, dead } => admin::resolve(&context.client().await?, &path, &dead).await,
        Command::CreateEdenFile { shard, symlink } => {
            admin::create_eden_file(&context.client().await?, shard, symlink).await
        }
        Command::ExpungeSpan { inode } => admin::expunge_span(&context.client().await?, &inode).await,
        Command::ExpungeFile { inode } => admin::expunge_file(&context.client().await?, &inode).await,
        Command::VisitInodes { shard } => admin::visit_inodes(&context.client().await?, shard).await,
        Command::VisitEden { shard } => admin::visit_eden(&context.client().await?, shard).await,
        Command::ReverseBlockQuery { block_service, shard } => {
            admin::reverse_block_query(&context.client().await?, &block_service, shard).await
        }
        Command::BlockServices => admin::block_services(&context.client().await?).await,
        Command::BlockService(args) => operator::block_service(&args, context.shuckle()).await,
    }
}
