//! Looking at the tree: `ls`, `stat`, `tree`, `find`, `du`.
//!
//! Listings are sorted by name (bytewise) unless `ls -U`; anything that
//! shows sizes or times stats every entry, many at a time.

use std::ffi::OsString;

use anyhow::bail;
use client::Client;
use client::client::{DirEntry, Stat};
use client::path::EggsPath;
use wire::shard::ls_flags;
use wire::{EggsTime, InodeId, InodeType};

use super::DeadFlags;
use super::glob;
use super::output::{self, Described, iso_local, size_text, type_name};

/// Entries stat'ed at once.
const STATS_IN_FLIGHT: usize = 64;

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct LsArgs {
    /// Directories or files (globs allowed); default `/`.
    pub paths: Vec<String>,
    /// Long listing: type, size, mtime (local time), inode, name.
    #[arg(short = 'l')]
    pub long: bool,
    /// Sizes in human units (1.5K, 20M) with -l.
    #[arg(short = 'h', long = "human-readable")]
    pub human: bool,
    /// Hash order, as the shard returns it (no sorting: for huge directories).
    #[arg(short = 'U')]
    pub unsorted: bool,
    /// List a directory itself, not its entries.
    #[arg(short = 'd', long)]
    pub directory: bool,
    /// One JSON array of entries (schema in `eggs --help`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dead: DeadFlags,
    /// With --dead-le/--dead-ge: also names whose version is "nothing".
    #[arg(long)]
    pub all: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// Paths (globs allowed).
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// One JSON object per path (schema in `eggs --help`).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct TreeArgs {
    /// Root of the tree; default `/`.
    #[arg(default_value = "/")]
    pub path: String,
    /// Descend at most this many levels.
    #[arg(short = 'L', long = "level")]
    pub level: Option<usize>,
    /// Nested JSON (schema in `eggs --help`).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct FindArgs {
    /// Where to start; default `/`.
    #[arg(default_value = "/")]
    pub path: String,
    /// Only names matching this glob (`-name` works too).
    #[arg(long)]
    pub name: Option<String>,
    /// Only files (`f`) or directories (`d`) (`-type` works too).
    #[arg(long = "type", value_parser = ["f", "d"])]
    pub kind: Option<String>,
    /// A JSON array of entries (schema in `eggs --help`).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct DuArgs {
    /// Trees to measure (globs allowed); default `/`.
    pub paths: Vec<String>,
    /// Only a total for each argument.
    #[arg(short = 's', long)]
    pub summarize: bool,
    /// Human units (1.5K, 20M) instead of bytes.
    #[arg(short = 'h', long = "human-readable")]
    pub human: bool,
    /// A JSON array (schema in `eggs --help`).
    #[arg(long)]
    pub json: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// find(1) habits: `-name X` and `-type f` become `--name X`, `--type f`.
pub fn find_compat(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let args: Vec<OsString> = args.into_iter().collect();
    let is_find = args.iter().skip(1).any(|arg| arg == "find");
    if !is_find {
        return args;
    }
    let mut seen_find = false;
    args.into_iter()
        .map(|arg| {
            if arg == "find" {
                seen_find = true;
            }
            match arg.to_str() {
                Some("-name") if seen_find => "--name".into(),
                Some("-type") if seen_find => "--type".into(),
                _ => arg,
            }
        })
        .collect()
}

/// Stats many inodes at once; `None` where a stat failed (a dead version
/// already purged, a "nothing" version).
pub async fn stat_many(client: &Client, inodes: &[InodeId]) -> Vec<Option<Stat>> {
    let mut out = Vec::with_capacity(inodes.len());
    for chunk in inodes.chunks(STATS_IN_FLIGHT) {
        let mut tasks = Vec::with_capacity(chunk.len());
        for &inode in chunk {
            let client = client.clone();
            tasks.push(tokio::spawn(async move { if inode.is_null() { None } else { client.stat(inode).await.ok() } }));
        }
        for task in tasks {
            out.push(task.await.ok().flatten());
        }
    }
    out
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') { format!("{dir}{name}") } else { format!("{dir}/{name}") }
}

/// Entries of a directory listing, described (stat'ed when `with_stat`).
pub async fn describe_entries(
    client: &Client,
    dir_path: &str,
    entries: Vec<DirEntry>,
    with_stat: bool,
) -> Vec<Described> {
    let inodes: Vec<InodeId> = entries.iter().map(|entry| entry.inode.without_owning()).collect();
    let stats = if with_stat { stat_many(client, &inodes).await } else { vec![None; inodes.len()] };
    entries
        .into_iter()
        .zip(stats)
        .map(|(entry, stat)| Described {
            path: join(dir_path, &entry.name),
            name: entry.name.clone(),
            inode: entry.inode.without_owning(),
            stat,
            entry: Some(entry),
        })
        .collect()
}

/// A path resolved and stat'ed.
pub async fn describe_path(client: &Client, text: &str) -> anyhow::Result<Described> {
    let path = EggsPath::parse(text)?;
    let inode = client.resolve_path(&path).await?;
    let stat = client.stat(inode).await?;
    let name = path.components().last().cloned().unwrap_or_else(|| "/".to_owned());
    Ok(Described { path: normalise(&path), name, inode, stat: Some(stat), entry: None })
}

/// `/a//b/` → `/a/b`.
pub fn normalise(path: &EggsPath) -> String {
    format!("/{}", path.components().join("/"))
}

fn sort_by_name(entries: &mut [Described]) {
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
}

fn print_long(entries: &[Described], human: bool, labels: impl Fn(&Described) -> String) -> anyhow::Result<()> {
    let width =
        entries.iter().map(|entry| entry.size().map_or(1, |size| size_text(size, human).len())).max().unwrap_or(1);
    for entry in entries {
        output::line(entry.long_line(human, width, &labels(entry)))?;
    }
    Ok(())
}

pub async fn ls(client: &Client, args: &LsArgs) -> anyhow::Result<()> {
    let (as_of, mut flags) = match (args.dead.dead_le, args.dead.dead_ge) {
        (Some(time), _) => (time, ls_flags::USE_DEAD_MAP),
        (None, Some(time)) => (time, ls_flags::USE_DEAD_MAP | ls_flags::NEWER_THAN_AS_OF),
        (None, None) => (0, 0),
    };
    if args.all {
        if flags == 0 {
            bail!("--all needs --dead-le or --dead-ge");
        }
        flags |= ls_flags::INCLUDE_NOTHING;
    }
    let given = if args.paths.is_empty() { vec!["/".to_owned()] } else { args.paths.clone() };
    let paths = glob::expand_all(client, &given).await?;
    let with_stat = args.long || args.json;
    // Files named on the command line first (as ls does), then directories.
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for text in &paths {
        let described = describe_path(client, text).await?;
        if described.is_dir() && !args.directory { dirs.push(described) } else { files.push(described) }
    }
    let mut json = Vec::new();
    if args.json {
        json.extend(files.iter().map(Described::json));
    } else if args.long {
        print_long(&files, args.human, |entry| entry.path.clone())?;
    } else {
        for file in &files {
            output::line(&file.path)?;
        }
    }
    let headers = paths.len() > 1;
    for (index, dir) in dirs.iter().enumerate() {
        let entries = client.ls_dir(dir.inode, EggsTime::new(as_of), flags).await?;
        let mut entries = describe_entries(client, &dir.path, entries, with_stat).await;
        if !args.unsorted {
            sort_by_name(&mut entries);
        }
        if args.json {
            json.extend(entries.iter().map(Described::json));
            continue;
        }
        if headers {
            if index > 0 || !files.is_empty() {
                output::line("")?;
            }
            output::line(format_args!("{}:", dir.path))?;
        }
        if args.long {
            print_long(&entries, args.human, |entry| entry.name.clone())?;
        } else {
            for entry in &entries {
                output::line(&entry.name)?;
            }
        }
    }
    if args.json {
        output::json(&serde_json::Value::Array(json))?;
    }
    Ok(())
}

pub async fn stat(client: &Client, args: &StatArgs) -> anyhow::Result<()> {
    let paths = glob::expand_all(client, &args.paths).await?;
    for text in &paths {
        let described = describe_path(client, text).await?;
        if args.json {
            let mut value = described.json();
            if let (Some(Stat::Directory { parent, policy, .. }), Some(object)) =
                (&described.stat, value.as_object_mut())
            {
                object.insert("parent".into(), parent.to_string().into());
                object.insert("opaque".into(), super::admin::hex(policy).into());
            }
            output::json(&value)?;
            continue;
        }
        output::line(format_args!("inode={}", described.inode))?;
        output::line(format_args!("type={}", type_name(described.inode)))?;
        match &described.stat {
            Some(Stat::Directory { mtime, parent, policy }) => {
                output::line(format_args!("mtime={}", iso_local(*mtime, true)))?;
                output::line(format_args!("parent={parent}"))?;
                output::line(format_args!("opaque={}", super::admin::hex(policy)))?;
            }
            Some(Stat::File { mtime, size }) => {
                output::line(format_args!("mtime={}", iso_local(*mtime, true)))?;
                output::line(format_args!("size={size}"))?;
            }
            None => {}
        }
    }
    Ok(())
}

/// One visited entry of a walk: its depth (the root is 0) and whether it
/// is the last of its siblings.
pub struct Visit<'a> {
    pub depth: usize,
    pub last: bool,
    pub entry: &'a Described,
}

/// Visits `root` and everything below it in sorted pre-order, down to
/// `max_depth` levels below the root. Entries are stat'ed (sizes, times).
pub async fn walk(
    client: &Client,
    root: Described,
    max_depth: Option<usize>,
    visit: &mut dyn FnMut(Visit<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stack = vec![(0usize, true, root)];
    while let Some((depth, last, entry)) = stack.pop() {
        visit(Visit { depth, last, entry: &entry })?;
        if !entry.is_dir() || max_depth.is_some_and(|max| depth >= max) {
            continue;
        }
        let entries = client.ls_dir(entry.inode, EggsTime::ZERO, 0).await?;
        let mut children = describe_entries(client, &entry.path, entries, true).await;
        sort_by_name(&mut children);
        let count = children.len();
        for (index, child) in children.into_iter().enumerate().rev() {
            stack.push((depth + 1, index + 1 == count, child));
        }
    }
    Ok(())
}

pub async fn tree(client: &Client, args: &TreeArgs) -> anyhow::Result<()> {
    let root = describe_path(client, &args.path).await?;
    if args.json {
        // Collect, then nest: (depth, entry) in pre-order.
        let mut flat: Vec<(usize, Described)> = Vec::new();
        walk(client, root, args.level, &mut |visit| {
            flat.push((visit.depth, visit.entry.clone()));
            Ok(())
        })
        .await?;
        let mut index = 0;
        let value = nest(&flat, &mut index);
        return output::json(&value);
    }
    let mut lasts: Vec<bool> = Vec::new();
    let (mut dirs, mut files) = (0u64, 0u64);
    walk(client, root, args.level, &mut |visit| {
        if visit.depth == 0 {
            return output::line(&visit.entry.path);
        }
        if visit.entry.is_dir() {
            dirs += 1
        } else {
            files += 1
        }
        lasts.truncate(visit.depth - 1);
        let mut prefix: String = lasts.iter().map(|&last| if last { "    " } else { "│   " }).collect();
        prefix.push_str(if visit.last { "└── " } else { "├── " });
        lasts.push(visit.last);
        output::line(format_args!("{prefix}{}", visit.entry.name))
    })
    .await?;
    output::line("")?;
    output::line(format_args!(
        "{dirs} director{}, {files} file{}",
        if dirs == 1 { "y" } else { "ies" },
        if files == 1 { "" } else { "s" }
    ))
}

fn nest(flat: &[(usize, Described)], index: &mut usize) -> serde_json::Value {
    let (depth, entry) = &flat[*index];
    *index += 1;
    let mut value = entry.json();
    if entry.is_dir() {
        let mut children = Vec::new();
        while *index < flat.len() && flat[*index].0 > *depth {
            children.push(nest(flat, index));
        }
        if let Some(object) = value.as_object_mut() {
            object.insert("children".into(), serde_json::Value::Array(children));
        }
    }
    value
}

pub async fn find(client: &Client, args: &FindArgs) -> anyhow::Result<()> {
    let root = describe_path(client, &args.path).await?;
    let mut json = Vec::new();
    walk(client, root, None, &mut |visit| {
        let entry = visit.entry;
        if let Some(pattern) = &args.name
            && !glob::matches(pattern, &entry.name)
        {
            return Ok(());
        }
        match args.kind.as_deref() {
            Some("f") if entry.inode.inode_type() != Some(InodeType::File) => return Ok(()),
            Some("d") if !entry.is_dir() => return Ok(()),
            _ => {}
        }
        if args.json {
            json.push(entry.json());
            Ok(())
        } else {
            output::line(&entry.path)
        }
    })
    .await?;
    if args.json {
        output::json(&serde_json::Value::Array(json))?;
    }
    Ok(())
}

/// Sizes of one directory and everything below it.
#[derive(Default, Clone, Debug)]
struct Usage {
    path: String,
    bytes: u64,
    files: u64,
    directories: u64,
}

pub async fn du(client: &Client, args: &DuArgs) -> anyhow::Result<()> {
    let given = if args.paths.is_empty() { vec!["/".to_owned()] } else { args.paths.clone() };
    let paths = glob::expand_all(client, &given).await?;
    let mut json = Vec::new();
    for text in &paths {
        let root = describe_path(client, text).await?;
        // Open directories from the root down; a visit at depth d closes
        // every open directory deeper than d - 1 (post-order output).
        let mut open: Vec<Usage> = Vec::new();
        let mut report: Vec<Usage> = Vec::new();
        let close = |open: &mut Vec<Usage>, report: &mut Vec<Usage>| {
            if let Some(done) = open.pop() {
                if let Some(parent) = open.last_mut() {
                    parent.bytes += done.bytes;
                    parent.files += done.files;
                    parent.directories += done.directories;
                }
                if open.is_empty() || !args.summarize {
                    report.push(done);
                }
            }
        };
        walk(client, root, None, &mut |visit| {
            while open.len() > visit.depth {
                close(&mut open, &mut report);
            }
            let entry = visit.entry;
            if entry.is_dir() {
                if let Some(parent) = open.last_mut() {
                    parent.directories += 1;
                }
                open.push(Usage { path: entry.path.clone(), ..Usage::default() });
            } else if let Some(parent) = open.last_mut() {
                parent.bytes += entry.size().unwrap_or(0);
                parent.files += 1;
            } else {
                // du of a file: just the file.
                report.push(Usage {
                    path: entry.path.clone(),
                    bytes: entry.size().unwrap_or(0),
                    files: 1,
                    directories: 0,
                });
            }
            Ok(())
        })
        .await?;
        while !open.is_empty() {
            close(&mut open, &mut report);
        }
        for usage in report {
            if args.json {
                json.push(serde_json::json!({
                    "path": usage.path, "bytes": usage.bytes, "files": usage.files, "directories": usage.directories,
                }));
            } else {
                output::line(format_args!("{}\t{}", size_text(usage.bytes, args.human), usage.path))?;
            }
        }
    }
    if args.json {
        output::json(&serde_json::Value::Array(json))?;
    }
    Ok(())
}
