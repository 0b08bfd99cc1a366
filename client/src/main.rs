//! `eggs`: the eggsfs command-line client, and `eggs local-cluster`.
//!
//! Every command is one invocation; paths are absolute. Errors are one line
//! on stderr and a non-zero exit (1 runtime, 2 usage).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use client::client::{Client, DirEntry, SHUCKLE_ENV, Stat, default_shuckle};
use client::path::EggsPath;
use client::plan::{DEFAULT_POLICY, WritePolicy, block_span, inline_span, zero_fill_span};
use client::read::read_file;
use client::write::{FailedServices, write_path, write_spans};
use client::{ClientError, block};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use wire::shard::{ResolveMode, ls_flags};
use wire::span::Parity;
use wire::{BlockId, BlockServiceId, EggsTime, InodeId, InodeType, ShardId};

mod local_cluster;
mod mount;

use local_cluster::ClusterConfig;

#[derive(Parser, Debug)]
#[command(name = "eggs", version, about = "eggsfs client: files and directories on an eggsfs cluster")]
struct Cli {
    /// Shuckle's address (where the shards and the CDC are found).
    #[arg(long, global = true, env = SHUCKLE_ENV, default_value_t = default_shuckle())]
    shuckle: SocketAddr,
    /// Say more on stderr (blocks read from parity, …).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

/// Overrides of the directory's write policy.
#[derive(clap::Args, Debug, Clone, Default)]
struct PolicyFlags {
    /// Data and parity blocks per span, `D+P` (D = 1: mirroring).
    #[arg(long)]
    parity: Option<Parity>,
    /// Storage class of the block services to use (≥ 2).
    #[arg(long)]
    storage_class: Option<u8>,
    /// Largest span, in bytes.
    #[arg(long)]
    span_size: Option<u32>,
}

/// Which version of a name to look at.
#[derive(clap::Args, Debug, Clone, Default)]
struct DeadFlags {
    /// The dead version with the largest creation time ≤ TS (eggs ns).
    #[arg(long, value_name = "TS", conflicts_with = "dead_ge")]
    dead_le: Option<u64>,
    /// The dead version with the smallest creation time ≥ TS (eggs ns).
    #[arg(long, value_name = "TS")]
    dead_ge: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a directory (through the CDC).
    Mkdir { path: String },
    /// Remove an empty directory (soft delete: it stays in the dead map).
    Rmdir { path: String },
    /// Show an inode: `key=value` lines.
    Stat {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Move or rename a file or directory.
    Mv { source: String, target: String },
    /// List a directory, one name per line.
    Ls {
        path: String,
        #[command(flatten)]
        dead: DeadFlags,
        /// With --dead-le/--dead-ge: also names whose version is "nothing".
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a file (soft delete: it stays in the dead map).
    Rm { path: String },
    /// Write a file's contents to stdout.
    Cat { path: String },
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
    /// Write a local file (or `-` for stdin) to an eggsfs path.
    Put {
        local: String,
        path: String,
        #[command(flatten)]
        policy: PolicyFlags,
    },
    /// Read an eggsfs file into a local file (or `-` for stdout).
    Get { path: String, local: String },
    /// Show or set a directory's write policy.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Run a whole cluster on this machine as child processes.
    LocalCluster(ClusterConfig),
    /// Mount the cluster's namespace as a local filesystem (FUSE).
    Mount(mount::MountArgs),
}

#[derive(Subcommand, Debug)]
enum PolicyAction {
    /// The effective policy of a directory (its own or inherited).
    Get { path: String },
    /// Set a directory's policy (unspecified fields keep their current values).
    Set {
        path: String,
        #[command(flatten)]
        policy: PolicyFlags,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("eggs: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eggs: {}", one_line(&error));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line.
fn one_line(error: &anyhow::Error) -> String {
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let verbose = cli.verbose;
    if let Command::LocalCluster(config) = cli.command {
        return local_cluster::run(config).await;
    }
    if let Command::Mount(args) = cli.command {
        return mount::run(args, cli.shuckle).await;
    }
    let client = Client::connect(cli.shuckle).await?;
    match cli.command {
        Command::Mkdir { path } => {
            let path = EggsPath::parse(&path)?;
            let (parent, name) = client.resolve_parent(&path).await?;
            let inode = client.mkdir(parent, name, path.as_str()).await?;
            if verbose {
                eprintln!("created {path} as {inode}");
            }
        }
        Command::Rmdir { path } => {
            let path = EggsPath::parse(&path)?;
            let (parent, name) = client.resolve_parent(&path).await?;
            client.rmdir(parent, name, path.as_str()).await?;
        }
        Command::Stat { path, json } => stat(&client, &path, json).await?,
        Command::Mv { source, target } => mv(&client, &source, &target).await?,
        Command::Ls { path, dead, all, json } => ls(&client, &path, &dead, all, json).await?,
        Command::Rm { path } => {
            let path = EggsPath::parse(&path)?;
            let (parent, name) = client.resolve_parent(&path).await?;
            let inode = client.resolve_path(&path).await?;
            if inode.inode_type() == Some(InodeType::Directory) {
                return Err(ClientError::IsADirectory { path: path.to_string() }.into());
            }
            client.delete_file(parent, name).await?;
        }
        Command::Cat { path } => get(&client, &path, "-", verbose).await?,
        Command::Get { path, local } => get(&client, &path, &local, verbose).await?,
        Command::Put { local, path, policy } => put(&client, &local, &path, &policy, verbose).await?,
        Command::CreateTestFile { path } => create_test_file(&client, &path).await?,
        Command::Resolve { path, dead } => resolve(&client, &path, &dead).await?,
        Command::CreateEdenFile { shard, symlink } => {
            let inode_type = if symlink { InodeType::Symlink } else { InodeType::File };
            let eden = client.create_eden_file(shard, inode_type).await?;
            println!("inode={}", eden.inode);
            println!("cookie={}", hex(&eden.cookie));
        }
        Command::ExpungeSpan { inode } => expunge_span(&client, parse_inode(&inode)?).await?,
        Command::ExpungeFile { inode } => client.expunge_eden_file(parse_inode(&inode)?).await?,
        Command::VisitInodes { shard } => {
            let mut begin = InodeId::NULL;
            loop {
                let (inodes, next) = client.visit_inodes(shard, begin).await?;
                for inode in inodes {
                    println!("{inode}");
                }
                if next.is_null() || next <= begin {
                    break;
                }
                begin = next;
            }
        }
        Command::VisitEden { shard } => {
            let mut begin = InodeId::NULL;
            loop {
                let (entries, next) = client.visit_eden(shard, begin).await?;
                for entry in entries {
                    println!("{} deadline={}", entry.inode, entry.deadline.get());
                }
                if next.is_null() || next <= begin {
                    break;
                }
                begin = next;
            }
        }
        Command::ReverseBlockQuery { block_service, shard } => {
            let id = BlockServiceId::new(parse_u64(&block_service).context("block service id")?);
            let mut begin = BlockId::new(0);
            loop {
                let (entries, next) = client.reverse_block_query(shard, id, begin).await?;
                for entry in entries {
                    println!("block={} inode={} offset={}", entry.block_id, entry.inode, entry.span_offset.get());
                }
                if next.get() == 0 || next <= begin {
                    break;
                }
                begin = next;
            }
        }
        Command::Policy { action } => policy(&client, action).await?,
        Command::BlockServices => {
            for (id, addr, storage_class, flags) in client.block_services().await? {
                println!("{id} {addr} storage_class={storage_class} flags={flags:#x}");
            }
        }
        Command::LocalCluster(_) | Command::Mount(_) => unreachable_local_cluster()?,
    }
    Ok(())
}

fn unreachable_local_cluster() -> anyhow::Result<()> {
    bail!("local-cluster is handled before connecting")
}

fn parse_u64(text: &str) -> anyhow::Result<u64> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| anyhow!("`{text}` is not a number (decimal or 0x…)"))
}

fn parse_inode(text: &str) -> anyhow::Result<InodeId> {
    Ok(InodeId::new(parse_u64(text).context("inode")?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn type_name(inode: InodeId) -> &'static str {
    inode.inode_type().map_or("UNKNOWN", InodeType::name)
}

async fn stat(client: &Client, path: &str, json: bool) -> anyhow::Result<()> {
    let path = EggsPath::parse(path)?;
    let inode = client.resolve_path(&path).await?;
    let stat = client.stat(inode).await?;
    if json {
        let value = match &stat {
            Stat::Directory { mtime, parent, policy } => serde_json::json!({
                "inode": inode.to_string(), "type": type_name(inode), "mtime": mtime.get(),
                "parent": parent.to_string(), "opaque": hex(policy),
            }),
            Stat::File { mtime, size } => serde_json::json!({
                "inode": inode.to_string(), "type": type_name(inode), "mtime": mtime.get(), "size": size,
            }),
        };
        println!("{value}");
        return Ok(());
    }
    println!("inode={inode}");
    println!("type={}", type_name(inode));
    match stat {
        Stat::Directory { mtime, parent, policy } => {
            println!("mtime={}", mtime.get());
            println!("parent={parent}");
            println!("opaque={}", hex(&policy));
        }
        Stat::File { mtime, size } => {
            println!("mtime={}", mtime.get());
            println!("size={size}");
        }
    }
    Ok(())
}

async fn mv(client: &Client, source: &str, target: &str) -> anyhow::Result<()> {
    let source = EggsPath::parse(source)?;
    let mut target = EggsPath::parse(target)?;
    let (source_parent, source_name) = client.resolve_parent(&source).await?;
    let inode = client.resolve_path(&source).await?;
    // `mv x /dir` moves x into an existing directory, like mv(1).
    if let Ok(existing) = client.resolve_path(&target).await
        && existing.inode_type() == Some(InodeType::Directory)
        && existing != inode
    {
        target = EggsPath::parse(&format!("{}/{source_name}", target.as_str().trim_end_matches('/')))?;
    }
    let (target_parent, target_name) = client.resolve_parent(&target).await?;
    let label = format!("{source} → {target}");
    if source_parent == target_parent {
        client.same_dir_rename(source_parent, source_name, target_name).await?;
    } else if inode.inode_type() == Some(InodeType::Directory) {
        client.mv_dir((source_parent, source_name), (target_parent, target_name), &label).await?;
    } else {
        client.mv_file((source_parent, source_name), (target_parent, target_name), &label).await?;
    }
    Ok(())
}

async fn ls(client: &Client, path: &str, dead: &DeadFlags, all: bool, json: bool) -> anyhow::Result<()> {
    let path = EggsPath::parse(path)?;
    let dir = client.resolve_path(&path).await?;
    if dir.inode_type() != Some(InodeType::Directory) {
        return Err(ClientError::NotADirectory { path: path.to_string() }.into());
    }
    let (as_of, mut flags) = match (dead.dead_le, dead.dead_ge) {
        (Some(time), _) => (time, ls_flags::USE_DEAD_MAP),
        (None, Some(time)) => (time, ls_flags::USE_DEAD_MAP | ls_flags::NEWER_THAN_AS_OF),
        (None, None) => (0, 0),
    };
    if all {
        if flags == 0 {
            bail!("--all needs --dead-le or --dead-ge");
        }
        flags |= ls_flags::INCLUDE_NOTHING;
    }
    let entries = client.ls_dir(dir, EggsTime::new(as_of), flags).await?;
    if json {
        let list: Vec<_> = entries.iter().map(entry_json).collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    for entry in entries {
        println!("{}", entry.name);
    }
    Ok(())
}

fn entry_json(entry: &DirEntry) -> serde_json::Value {
    let inode = entry.inode.without_owning();
    serde_json::json!({
        "name": entry.name,
        "inode": inode.to_string(),
        "type": if inode.is_null() { "NOTHING" } else { type_name(inode) },
        "owning": entry.inode.is_owning(),
        "creation_time": entry.creation_time.get(),
    })
}

async fn resolve(client: &Client, path: &str, dead: &DeadFlags) -> anyhow::Result<()> {
    let path = EggsPath::parse(path)?;
    let (mode, time) = match (dead.dead_le, dead.dead_ge) {
        (Some(time), _) => (ResolveMode::DeadLe, time),
        (None, Some(time)) => (ResolveMode::DeadGe, time),
        (None, None) => (ResolveMode::Alive, 0),
    };
    if path.is_root() {
        println!("inode={}", InodeId::ROOT);
        return Ok(());
    }
    let (parent, name) = client.resolve_parent(&path).await?;
    match client.resolve(parent, name, mode, EggsTime::new(time)).await? {
        Some((inode, creation_time)) => {
            println!("inode={}", inode.without_owning());
            println!("owning={}", inode.is_owning());
            println!("creation_time={}", creation_time.get());
            Ok(())
        }
        None => Err(ClientError::NotFound { path: path.to_string() }.into()),
    }
}

/// The policy for writing into `dir`: the nearest ancestor's, else the
/// default, with the flags' overrides.
async fn write_policy(client: &Client, dir: InodeId, flags: &PolicyFlags) -> anyhow::Result<WritePolicy> {
    let base = client.effective_policy(dir).await?.map_or(DEFAULT_POLICY, |(policy, _)| policy.into());
    let policy = WritePolicy {
        storage_class: flags.storage_class.unwrap_or(base.storage_class),
        parity: flags.parity.unwrap_or(base.parity),
        span_size_bytes: flags.span_size.unwrap_or(base.span_size_bytes),
    };
    policy.validate().map_err(|reason| anyhow!(reason))
}

fn progress_bar(total: Option<u64>) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template("{bytes}/{total_bytes} {bar:40} {binary_bytes_per_sec} {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// How many times `put` of a local file starts over in a new eden file
/// after a span could not be written (the shard then picks other services).
const PUT_ATTEMPTS: u32 = 3;

async fn put(client: &Client, local: &str, path: &str, flags: &PolicyFlags, verbose: bool) -> anyhow::Result<()> {
    let path = EggsPath::parse(path)?;
    let (parent, name) = client.resolve_parent(&path).await?;
    if let Ok(existing) = client.resolve_path(&path).await
        && existing.inode_type() == Some(InodeType::Directory)
    {
        return Err(ClientError::IsADirectory { path: path.to_string() }.into());
    }
    let policy = write_policy(client, parent, flags).await?;
    if local == "-" {
        let bar = progress_bar(None);
        let progress = |bytes: u64| {
            if let Some(bar) = &bar {
                bar.set_position(bytes);
            }
        };
        let failed = FailedServices::new();
        let outcome = write_path(client, parent, name, tokio::io::stdin(), policy, &failed, &progress).await?;
        finish(bar, verbose, &format!("wrote {} bytes in {} spans as {}", outcome.size, outcome.spans, outcome.inode));
        return Ok(());
    }
    // Shared by the attempts: a restart avoids the services that failed.
    let failed = FailedServices::new();
    let mut attempt = 1;
    loop {
        let file = tokio::fs::File::open(local).await.with_context(|| format!("{local}: cannot open"))?;
        let size = file.metadata().await.ok().map(|metadata| metadata.len());
        let bar = progress_bar(size);
        let progress = |bytes: u64| {
            if let Some(bar) = &bar {
                bar.set_position(bytes);
            }
        };
        match write_path(client, parent, name, file, policy, &failed, &progress).await {
            Ok(outcome) => {
                let text = format!("wrote {} bytes in {} spans as {}", outcome.size, outcome.spans, outcome.inode);
                finish(bar, verbose, &text);
                return Ok(());
            }
            Err(error @ ClientError::Span { .. }) if attempt < PUT_ATTEMPTS => {
                if let Some(bar) = bar {
                    bar.abandon();
                }
                if verbose {
                    eprintln!("eggs: {error}; writing the file again in a new eden file");
                }
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

fn finish(bar: Option<ProgressBar>, verbose: bool, text: &str) {
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if verbose {
        eprintln!("{text}");
    }
}

async fn get(client: &Client, path: &str, local: &str, verbose: bool) -> anyhow::Result<()> {
    let path = EggsPath::parse(path)?;
    let inode = client.resolve_path(&path).await?;
    let size = match client.stat(inode).await? {
        Stat::File { size, .. } => size,
        Stat::Directory { .. } => return Err(ClientError::IsADirectory { path: path.to_string() }.into()),
    };
    let bar = if local == "-" { None } else { progress_bar(Some(size)) };
    let progress = |bytes: u64| {
        if let Some(bar) = &bar {
            bar.set_position(bytes);
        }
    };
    let notice = |line: &str| {
        if verbose {
            eprintln!("eggs: {line}");
        }
    };
    let report = if local == "-" {
        let mut out = tokio::io::stdout();
        read_file(client, inode, &mut out, &notice, &progress).await?
    } else {
        let mut out = tokio::fs::File::create(local).await.with_context(|| format!("{local}: cannot create"))?;
        match read_file(client, inode, &mut out, &notice, &progress).await {
            Ok(report) => {
                out.sync_all().await.with_context(|| format!("{local}: cannot sync"))?;
                report
            }
            Err(error) => {
                // Leave no partial copy that could be mistaken for the file.
                drop(out);
                let _ = tokio::fs::remove_file(local).await;
                return Err(error.into());
            }
        }
    };
    if report.bytes != size {
        bail!("{path}: read {} bytes, the file has {size}", report.bytes);
    }
    finish(
        bar,
        verbose && report.reconstructed_spans > 0,
        &format!("{} spans reconstructed", report.reconstructed_spans),
    );
    Ok(())
}

async fn create_test_file(client: &Client, path: &str) -> anyhow::Result<()> {
    let path = EggsPath::parse(path)?;
    let (parent, name) = client.resolve_parent(&path).await?;
    let base = write_policy(client, parent, &PolicyFlags::default()).await?;
    // Mirrored: one data block and at least one copy.
    let mirrored = WritePolicy {
        parity: Parity::new(1, base.parity.parity_blocks().max(1) as u8).unwrap_or(Parity(0x11)),
        ..base
    };
    let spans = vec![
        inline_span(0, b"hello,".to_vec()),
        block_span(6, b" world".to_vec(), mirrored)?,
        zero_fill_span(12, vec![0; 10]),
    ];
    let (sender, receiver) = mpsc::channel(spans.len());
    for span in spans {
        sender.send(Ok(span)).await.map_err(|_| anyhow!("span channel closed"))?;
    }
    drop(sender);
    write_spans(client, parent, name, receiver, &FailedServices::new(), &|_| {}).await?;
    Ok(())
}

async fn expunge_span(client: &Client, inode: InodeId) -> anyhow::Result<()> {
    let (offset, certificates) = client.expunge_eden_span(inode).await?;
    let mut proofs = Vec::with_capacity(certificates.len());
    for certificate in &certificates {
        let proof =
            block::erase_block(certificate.address.socket_addr(), certificate.block_id, certificate.certificate)
                .await?;
        proofs.push(proof);
    }
    if !certificates.is_empty() {
        client.certify_expunge(inode, offset, &proofs).await?;
    }
    println!("expunged span at offset {offset} ({} blocks)", certificates.len());
    Ok(())
}

async fn policy(client: &Client, action: PolicyAction) -> anyhow::Result<()> {
    match action {
        PolicyAction::Get { path } => {
            let path = EggsPath::parse(&path)?;
            let dir = client.resolve_path(&path).await?;
            if dir.inode_type() != Some(InodeType::Directory) {
                return Err(ClientError::NotADirectory { path: path.to_string() }.into());
            }
            let (policy, from) = match client.effective_policy(dir).await? {
                Some((policy, from)) => (WritePolicy::from(policy), from.to_string()),
                None => (DEFAULT_POLICY, "default".to_owned()),
            };
            println!("storage_class={}", policy.storage_class);
            println!("parity={}", policy.parity);
            println!("span_size={}", policy.span_size_bytes);
            println!("from={from}");
        }
        PolicyAction::Set { path, policy } => {
            let path = EggsPath::parse(&path)?;
            let dir = client.resolve_path(&path).await?;
            if dir.inode_type() != Some(InodeType::Directory) {
                return Err(ClientError::NotADirectory { path: path.to_string() }.into());
            }
            let new = write_policy(client, dir, &policy).await?;
            let blob = new.to_policy().ok_or_else(|| anyhow!("invalid policy"))?.encode();
            client.set_directory_policy(dir, &blob).await?;
        }
    }
    Ok(())
}
