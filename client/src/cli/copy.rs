//! Moving bytes: `put`, `get`, `cat`, `cp`, with cp(1)'s directory rules:
//! a target that is an existing directory, or ends with `/`, receives the
//! source under its own name; several sources need a directory target;
//! `-r` copies trees. `put` and `cp` refuse to replace an existing eggsfs
//! file unless `-f` (as `hdfs dfs -put`); `get` replaces local files (as
//! cp(1)). `cp` streams: the source's spans are read (and checked) while
//! the new file's spans are written; a failed read never links a partial
//! copy.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use client::client::Stat;
use client::path::EggsPath;
use client::plan::{DEFAULT_POLICY, WritePolicy};
use client::read::{FdSink, checked_pipe, is_broken_pipe, read_file, read_file_to, read_file_to_stdout};
use client::write::{FailedServices, write_file, write_path};
use client::{Client, ClientError};
use wire::{EggsTime, InodeId, InodeType};

use super::PolicyFlags;
use super::glob;
use super::list::normalise;
use super::output::{self, Progress};

/// How many times `put` of a local file starts over in a new eden file
/// after a span could not be written (the shard then picks other services).
const PUT_ATTEMPTS: u32 = 3;
/// Bytes buffered between `cp`'s reader and writer.
const COPY_PIPE_BYTES: usize = 4 << 20;

/// The flags of the two commands that write eggsfs files, `put` and `cp`.
#[derive(clap::Args, Debug)]
pub struct WriteFlags {
    /// Copy directories and everything below them.
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,
    /// Replace existing eggsfs files.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Show progress on stderr even when it is not a terminal.
    #[arg(short = 'P', long)]
    pub progress: bool,
    #[command(flatten)]
    pub policy: PolicyFlags,
}

#[derive(clap::Args, Debug)]
pub struct PutArgs {
    /// Local files or directories (`-` for stdin), then the eggsfs target.
    #[arg(required = true, num_args = 2.., value_name = "SOURCE… TARGET")]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub write: WriteFlags,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// eggsfs files or directories (globs allowed), then the local target (`-`: stdout).
    #[arg(required = true, num_args = 2.., value_name = "SOURCE… TARGET")]
    pub paths: Vec<String>,
    /// Copy eggsfs directories and everything below them.
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,
    /// Show progress on stderr even when it is not a terminal.
    #[arg(short = 'P', long)]
    pub progress: bool,
}

#[derive(clap::Args, Debug)]
pub struct CatArgs {
    /// eggsfs files (globs allowed).
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Show progress on stderr (useful when stdout is a pipe or a file).
    #[arg(short = 'P', long)]
    pub progress: bool,
}

#[derive(clap::Args, Debug)]
pub struct CpArgs {
    /// eggsfs sources (globs allowed), then the eggsfs target.
    #[arg(required = true, num_args = 2.., value_name = "SOURCE… TARGET")]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub write: WriteFlags,
}

/// The policy for writing into `dir`: the nearest ancestor's, else the
/// default, with the flags' overrides.
pub async fn write_policy(client: &Client, dir: InodeId, flags: &PolicyFlags) -> anyhow::Result<WritePolicy> {
    let base = client.effective_policy(dir).await?.map_or(DEFAULT_POLICY, |(policy, _)| policy.into());
    let policy = WritePolicy {
        storage_class: flags.storage_class.unwrap_or(base.storage_class),
        parity: flags.parity.unwrap_or(base.parity),
        span_size_bytes: flags.span_size.unwrap_or(base.span_size_bytes),
    };
    policy.validate().map_err(|reason| anyhow!(reason))
}

/// What an eggsfs target path is now.
enum Existing {
    Nothing,
    File,
    Directory,
}

async fn existing(client: &Client, path: &EggsPath) -> anyhow::Result<Existing> {
    match client.resolve_path(path).await {
        Ok(inode) if inode.inode_type() == Some(InodeType::Directory) => Ok(Existing::Directory),
        Ok(_) => Ok(Existing::File),
        Err(ClientError::NotFound { .. }) => Ok(Existing::Nothing),
        Err(error) => Err(error.into()),
    }
}

/// Makes `path` a directory unless it is one already (a file there is an
/// error).
async fn ensure_directory(client: &Client, path: &EggsPath) -> anyhow::Result<()> {
    match existing(client, path).await? {
        Existing::Directory => Ok(()),
        Existing::File => Err(ClientError::NotADirectory { path: normalise(path) }.into()),
        Existing::Nothing => {
            let (parent, name) = client.resolve_parent(path).await?;
            client.mkdir(parent, name, path.as_str()).await?;
            Ok(())
        }
    }
}

/// Where a new file at `destination` goes, and its write policy: refuses a
/// directory there, and an existing file unless `--force`.
async fn file_target<'a>(
    client: &Client,
    destination: &'a EggsPath,
    flags: &WriteFlags,
) -> anyhow::Result<(InodeId, &'a str, WritePolicy)> {
    let (parent, name) = client.resolve_parent(destination).await?;
    match existing(client, destination).await? {
        Existing::Nothing => {}
        Existing::File if flags.force => {}
        Existing::File => bail!("file exists (use -f to overwrite): {}", normalise(destination)),
        Existing::Directory => return Err(ClientError::IsADirectory { path: normalise(destination) }.into()),
    }
    let policy = write_policy(client, parent, &flags.policy).await?;
    Ok((parent, name, policy))
}

fn eggs_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn local_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{}: has no usable file name", path.display()))
}

/// Where a source goes, given the target (cp(1) rules): `into_dir` when
/// the target is an existing directory or ends with `/`.
async fn eggs_target(client: &Client, target: &str, sources: usize) -> anyhow::Result<(EggsPath, bool)> {
    let path = EggsPath::parse(target)?;
    match existing(client, &path).await? {
        Existing::Directory => Ok((path, true)),
        _ if target.ends_with('/') => Err(ClientError::NotFound { path: normalise(&path) }.into()),
        _ if sources > 1 => Err(ClientError::NotADirectory { path: normalise(&path) }.into()),
        _ => Ok((path, false)),
    }
}

pub async fn put(client: &Client, args: &PutArgs, verbose: bool) -> anyhow::Result<()> {
    let (target, sources) = args.paths.split_last().ok_or_else(|| anyhow!("put needs a source and a target"))?;
    let (target_path, into_dir) = eggs_target(client, target, sources.len()).await?;
    for source in sources {
        let destination = if into_dir {
            if source == "-" {
                bail!("put - needs a file name as the target, not the directory {}", normalise(&target_path));
            }
            EggsPath::parse(&eggs_join(target_path.as_str(), &local_name(Path::new(source))?))?
        } else {
            target_path.clone()
        };
        if source != "-" && Path::new(source).is_dir() {
            if !args.write.recursive {
                bail!("{source}: is a directory (use put -r)");
            }
            put_tree(client, args, Path::new(source), &destination, verbose).await?;
        } else {
            put_file(client, args, source, &destination, verbose).await?;
        }
    }
    Ok(())
}

/// `put -r`: the local tree under `local` becomes `destination`.
async fn put_tree(
    client: &Client,
    args: &PutArgs,
    local: &Path,
    destination: &EggsPath,
    verbose: bool,
) -> anyhow::Result<()> {
    let mut stack = vec![(local.to_path_buf(), destination.clone())];
    while let Some((dir, eggs_dir)) = stack.pop() {
        ensure_directory(client, &eggs_dir).await?;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: cannot list", dir.display()))?;
        entries.sort();
        for entry in entries.into_iter().rev() {
            let child = EggsPath::parse(&eggs_join(eggs_dir.as_str(), &local_name(&entry)?))?;
            if entry.is_dir() {
                stack.push((entry, child));
            } else {
                let text = entry.to_str().ok_or_else(|| anyhow!("{}: not UTF-8", entry.display()))?;
                put_file(client, args, text, &child, verbose).await?;
            }
        }
    }
    Ok(())
}

async fn put_file(
    client: &Client,
    args: &PutArgs,
    local: &str,
    destination: &EggsPath,
    verbose: bool,
) -> anyhow::Result<()> {
    let shown = normalise(destination);
    let (parent, name, policy) = file_target(client, destination, &args.write).await?;
    if local == "-" {
        // Unknown size: a spinner with bytes and rate.
        let progress = Progress::new(None, args.write.progress, &shown);
        let failed = FailedServices::new();
        let outcome =
            write_path(client, parent, name, tokio::io::stdin(), policy, &failed, &|bytes| progress.set(bytes)).await?;
        progress.finish();
        if verbose {
            eprintln!("wrote {} bytes in {} spans as {} ({shown})", outcome.size, outcome.spans, outcome.inode);
        }
        return Ok(());
    }
    // Shared by the attempts: a restart avoids the services that failed.
    let failed = FailedServices::new();
    let mut attempt = 1;
    loop {
        let file = std::fs::File::open(local).with_context(|| format!("{local}: cannot open"))?;
        let size = file.metadata().ok().map(|metadata| metadata.len());
        let progress = Progress::new(size, args.write.progress, &shown);
        match write_file(client, parent, name, file, policy, &failed, &|bytes| progress.set(bytes)).await {
            Ok(outcome) => {
                progress.finish();
                if verbose {
                    eprintln!("wrote {} bytes in {} spans as {} ({shown})", outcome.size, outcome.spans, outcome.inode);
                }
                return Ok(());
            }
            Err(error @ ClientError::Span { .. }) if attempt < PUT_ATTEMPTS => {
                progress.abandon();
                if verbose {
                    eprintln!("eggs: {error}; writing the file again in a new eden file");
                }
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// A regular eggsfs file's inode and size.
async fn eggs_file(client: &Client, text: &str) -> anyhow::Result<(String, InodeId, u64, EggsTime)> {
    let path = EggsPath::parse(text)?;
    let shown = normalise(&path);
    let inode = client.resolve_path(&path).await?;
    match client.stat(inode).await? {
        Stat::File { size, mtime } => Ok((shown, inode, size, mtime)),
        Stat::Directory { .. } => Err(ClientError::IsADirectory { path: shown }.into()),
    }
}

pub async fn cat(client: &Client, args: &CatArgs, verbose: bool) -> anyhow::Result<()> {
    let paths = glob::expand_all(client, &args.paths).await?;
    for text in &paths {
        let (shown, inode, size, _) = eggs_file(client, text).await?;
        let progress = Progress::new(Some(size), args.progress, &shown);
        // Plain write(2) from each span buffer: no copy into a stdout buffer.
        let report = read_file_to_stdout(client, inode, &|line| notice(verbose, line), &|bytes| progress.set(bytes))
            .await
            .map_err(|error| {
                if is_broken_pipe(&error) {
                    output::stdout_error(std::io::ErrorKind::BrokenPipe.into())
                } else {
                    error.into()
                }
            })?;
        progress.finish();
        check_report(&shown, size, &report, verbose)?;
    }
    Ok(())
}

fn notice(verbose: bool, line: &str) {
    if verbose {
        eprintln!("eggs: {line}");
    }
}

fn check_report(shown: &str, size: u64, report: &client::read::ReadReport, verbose: bool) -> anyhow::Result<()> {
    if report.bytes != size {
        bail!("{shown}: read {} bytes, the file has {size}", report.bytes);
    }
    if verbose && report.reconstructed_spans > 0 {
        eprintln!("eggs: {shown}: {} spans reconstructed", report.reconstructed_spans);
    }
    Ok(())
}

pub async fn get(client: &Client, args: &GetArgs, verbose: bool) -> anyhow::Result<()> {
    let (target, given) = args.paths.split_last().ok_or_else(|| anyhow!("get needs a source and a target"))?;
    let sources = glob::expand_all(client, given).await?;
    if target == "-" {
        return cat(client, &CatArgs { paths: sources, progress: args.progress }, verbose).await;
    }
    let target_path = PathBuf::from(target);
    let into_dir = target_path.is_dir();
    if !into_dir && target.ends_with('/') {
        bail!("{target}: no such local directory");
    }
    if !into_dir && sources.len() > 1 {
        bail!("{target}: not a directory (several sources need a directory target)");
    }
    for source in &sources {
        let path = EggsPath::parse(source)?;
        let name = path.components().last().cloned().unwrap_or_else(|| "root".to_owned());
        let local = if into_dir { target_path.join(&name) } else { target_path.clone() };
        let inode = client.resolve_path(&path).await?;
        if inode.inode_type() == Some(InodeType::Directory) {
            if !args.recursive {
                bail!("is a directory (use get -r): {}", normalise(&path));
            }
            get_tree(client, args, &normalise(&path), &local, verbose).await?;
        } else {
            get_file(client, args, source, &local, verbose).await?;
        }
    }
    Ok(())
}

async fn get_tree(client: &Client, args: &GetArgs, eggs_dir: &str, local: &Path, verbose: bool) -> anyhow::Result<()> {
    let mut stack = vec![(eggs_dir.to_owned(), local.to_path_buf())];
    while let Some((dir, local_dir)) = stack.pop() {
        std::fs::create_dir_all(&local_dir).with_context(|| format!("{}: cannot create", local_dir.display()))?;
        let path = EggsPath::parse(&dir)?;
        let inode = client.resolve_path(&path).await?;
        let mut entries = client.ls_dir(inode, EggsTime::ZERO, 0).await?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in entries.into_iter().rev() {
            let child = eggs_join(&dir, &entry.name);
            let local_child = local_dir.join(&entry.name);
            if entry.inode.without_owning().inode_type() == Some(InodeType::Directory) {
                stack.push((child, local_child));
            } else {
                get_file(client, args, &child, &local_child, verbose).await?;
            }
        }
    }
    Ok(())
}

async fn get_file(client: &Client, args: &GetArgs, source: &str, local: &Path, verbose: bool) -> anyhow::Result<()> {
    let (shown, inode, size, _) = eggs_file(client, source).await?;
    let progress = Progress::new(Some(size), args.progress, &shown);
    let out = std::fs::File::create(local).with_context(|| format!("{}: cannot create", local.display()))?;
    // Plain write(2) from each span buffer: no copy into a file buffer.
    let mut sink = FdSink::new(out.as_raw_fd());
    let result =
        read_file_to(client, inode, &mut sink, &|line| notice(verbose, line), &|bytes| progress.set(bytes)).await;
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            // Leave no partial copy that could be mistaken for the file.
            drop(out);
            let _ = std::fs::remove_file(local);
            return Err(error.into());
        }
    };
    out.sync_all().with_context(|| format!("{}: cannot sync", local.display()))?;
    progress.finish();
    check_report(&shown, size, &report, verbose)
}

pub async fn cp(client: &Client, args: &CpArgs, verbose: bool) -> anyhow::Result<()> {
    let (target, given) = args.paths.split_last().ok_or_else(|| anyhow!("cp needs a source and a target"))?;
    let sources = glob::expand_all(client, given).await?;
    let (target_path, into_dir) = eggs_target(client, target, sources.len()).await?;
    for source in &sources {
        let path = EggsPath::parse(source)?;
        let Some(name) = path.components().last() else { bail!("cannot copy the root directory; copy its entries") };
        let destination =
            if into_dir { EggsPath::parse(&eggs_join(target_path.as_str(), name))? } else { target_path.clone() };
        let inode = client.resolve_path(&path).await?;
        if inode.inode_type() == Some(InodeType::Directory) {
            if !args.write.recursive {
                bail!("is a directory (use cp -r): {}", normalise(&path));
            }
            cp_tree(client, args, &normalise(&path), &destination, verbose).await?;
        } else {
            cp_file(client, args, source, &destination, verbose).await?;
        }
    }
    Ok(())
}

async fn cp_tree(
    client: &Client,
    args: &CpArgs,
    source: &str,
    destination: &EggsPath,
    verbose: bool,
) -> anyhow::Result<()> {
    if normalise(destination).starts_with(&format!("{}/", source.trim_end_matches('/'))) {
        bail!("cannot copy a directory into itself: {source} → {}", normalise(destination));
    }
    let mut stack = vec![(source.to_owned(), destination.clone())];
    while let Some((dir, target_dir)) = stack.pop() {
        ensure_directory(client, &target_dir).await?;
        let inode = client.resolve_path(&EggsPath::parse(&dir)?).await?;
        let mut entries = client.ls_dir(inode, EggsTime::ZERO, 0).await?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in entries.into_iter().rev() {
            let child = eggs_join(&dir, &entry.name);
            let target_child = EggsPath::parse(&eggs_join(target_dir.as_str(), &entry.name))?;
            if entry.inode.without_owning().inode_type() == Some(InodeType::Directory) {
                stack.push((child, target_child));
            } else {
                cp_file(client, args, &child, &target_child, verbose).await?;
            }
        }
    }
    Ok(())
}

async fn cp_file(
    client: &Client,
    args: &CpArgs,
    source: &str,
    destination: &EggsPath,
    verbose: bool,
) -> anyhow::Result<()> {
    let (shown_source, inode, size, _) = eggs_file(client, source).await?;
    let shown = normalise(destination);
    let (parent, name, policy) = file_target(client, destination, &args.write).await?;
    let progress = Progress::new(Some(size), args.write.progress, &shown);
    let (mut source, input) = checked_pipe(COPY_PIPE_BYTES);
    let read = async move {
        let result = read_file(client, inode, &mut source.writer, &|line| notice(verbose, line), &|_| {}).await;
        source.finish(matches!(&result, Ok(report) if report.bytes == size));
        result
    };
    let failed = FailedServices::new();
    let report_progress = |bytes: u64| progress.set(bytes);
    let write = write_path(client, parent, name, input, policy, &failed, &report_progress);
    let (read, write) = tokio::join!(read, write);
    let report = read?;
    check_report(&shown_source, size, &report, verbose)?;
    let outcome = write?;
    progress.finish();
    if verbose {
        eprintln!(
            "copied {shown_source} to {shown}: {} bytes in {} spans as {}",
            outcome.size, outcome.spans, outcome.inode
        );
    }
    Ok(())
}
