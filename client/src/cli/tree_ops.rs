//! Changing the tree: `mkdir [-p]`, `rmdir`, `rm [-r] [-f]`, `mv`.
//!
//! `rm -r` removes depth-first: a directory's files through its shard
//! (delete_file, many at once), its subdirectories the same way, then the
//! directory itself through the CDC (rmdir). Everything removed stays in
//! the dead map (`ls --dead-ge 0`). A tree directly under `/` (or `/`'s
//! whole content) is only removed with `--yes-top-level`.

use std::future::Future;
use std::pin::Pin;

use anyhow::bail;
use client::path::EggsPath;
use client::{Client, ClientError};
use wire::{EggsTime, InodeId, InodeType};

use super::glob;
use super::list::normalise;

/// Files deleted at once within one directory.
const DELETES_IN_FLIGHT: usize = 32;

#[derive(clap::Args, Debug)]
pub struct MkdirArgs {
    /// Directories to create.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Create missing parents too; no error if the directory exists.
    #[arg(short = 'p', long)]
    pub parents: bool,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Files (or trees with -r) to remove; globs allowed.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Remove directories and everything below them.
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,
    /// No error for paths that do not exist.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Confirm `rm -r` of a tree directly under `/`, or of `/`'s whole content.
    #[arg(long)]
    pub yes_top_level: bool,
}

pub async fn mkdir(client: &Client, args: &MkdirArgs, verbose: bool) -> anyhow::Result<()> {
    for text in &args.paths {
        let path = EggsPath::parse(text)?;
        if !args.parents {
            let (parent, name) = client.resolve_parent(&path).await?;
            let inode = client.mkdir(parent, name, path.as_str()).await?;
            if verbose {
                eprintln!("created {path} as {inode}");
            }
            continue;
        }
        let mut dir = InodeId::ROOT;
        let mut walked = String::new();
        for component in path.components() {
            walked.push('/');
            walked.push_str(component);
            let existing = client.resolve(dir, component, wire::shard::ResolveMode::Alive, EggsTime::ZERO).await?;
            dir = match existing {
                Some((inode, _)) => inode.without_owning(),
                None => match client.mkdir(dir, component, &walked).await {
                    Ok(inode) => {
                        if verbose {
                            eprintln!("created {walked} as {inode}");
                        }
                        inode
                    }
                    // Someone else created it meanwhile: use theirs.
                    Err(ClientError::Cdc { status: "ALREADY_EXISTS" | "CANNOT_OVERRIDE_TARGET", .. }) => client
                        .resolve(dir, component, wire::shard::ResolveMode::Alive, EggsTime::ZERO)
                        .await?
                        .map(|(inode, _)| inode.without_owning())
                        .ok_or_else(|| ClientError::NotFound { path: walked.clone() })?,
                    Err(error) => return Err(error.into()),
                },
            };
            if dir.inode_type() != Some(InodeType::Directory) {
                return Err(ClientError::NotADirectory { path: walked }.into());
            }
        }
    }
    Ok(())
}

pub async fn rmdir(client: &Client, paths: &[String]) -> anyhow::Result<()> {
    for text in paths {
        let path = EggsPath::parse(text)?;
        let (parent, name) = client.resolve_parent(&path).await?;
        // Resolve first, so a missing or wrong-type path is named.
        let inode = client.resolve_path(&path).await?;
        if inode.inode_type() != Some(InodeType::Directory) {
            return Err(ClientError::NotADirectory { path: normalise(&path) }.into());
        }
        client.rmdir(parent, name, &normalise(&path)).await?;
    }
    Ok(())
}

pub async fn rm(client: &Client, args: &RmArgs, verbose: bool) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    for text in &args.paths {
        match glob::expand(client, text).await {
            Ok(expanded) => paths.extend(expanded),
            Err(_) if args.force => {}
            Err(error) => return Err(error),
        }
    }
    for text in &paths {
        let path = EggsPath::parse(text)?;
        let shown = normalise(&path);
        let inode = match client.resolve_path(&path).await {
            Ok(inode) => inode,
            Err(ClientError::NotFound { .. }) if args.force => continue,
            Err(error) => return Err(error.into()),
        };
        if inode.inode_type() != Some(InodeType::Directory) {
            let (parent, name) = client.resolve_parent(&path).await?;
            client.delete_file(parent, name).await?;
            if verbose {
                eprintln!("removed {shown}");
            }
            continue;
        }
        if !args.recursive {
            bail!("is a directory (use rm -r): {shown}");
        }
        if path.components().len() <= 1 && !args.yes_top_level {
            bail!("refusing to remove {shown} and everything below it without --yes-top-level");
        }
        let removed = remove_content(client, inode, shown.clone(), verbose).await?;
        if !path.is_root() {
            let (parent, name) = client.resolve_parent(&path).await?;
            client.rmdir(parent, name, &shown).await?;
        }
        if verbose {
            eprintln!("removed {shown} ({removed} entries below it)");
        }
    }
    Ok(())
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + 'a>>;

/// Removes everything inside `dir`; returns how many entries went.
fn remove_content(client: &Client, dir: InodeId, path: String, verbose: bool) -> Boxed<'_, u64> {
    Box::pin(async move {
        let entries = client.ls_dir(dir, EggsTime::ZERO, 0).await?;
        let mut removed = 0u64;
        let (dirs, files): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|entry| entry.inode.without_owning().inode_type() == Some(InodeType::Directory));
        for chunk in files.chunks(DELETES_IN_FLIGHT) {
            let mut tasks = Vec::new();
            for entry in chunk {
                let client = client.clone();
                let name = entry.name.clone();
                tasks.push(tokio::spawn(async move { client.delete_file(dir, &name).await }));
            }
            for (task, entry) in tasks.into_iter().zip(chunk) {
                let child = format!("{}/{}", path.trim_end_matches('/'), entry.name);
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(anyhow::Error::new(error).context(format!("removing {child}"))),
                    Err(panic) => bail!("removing {child}: {panic}"),
                }
                if verbose {
                    eprintln!("removed {child}");
                }
                removed += 1;
            }
        }
        for entry in dirs {
            let child = format!("{}/{}", path.trim_end_matches('/'), entry.name);
            removed += remove_content(client, entry.inode.without_owning(), child.clone(), verbose).await?;
            client.rmdir(dir, &entry.name, &child).await?;
            if verbose {
                eprintln!("removed {child}");
            }
            removed += 1;
        }
        Ok(removed)
    })
}

pub async fn mv(client: &Client, source: &str, target: &str) -> anyhow::Result<()> {
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
