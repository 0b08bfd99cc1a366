//! The low-level commands: directory policies, path resolution with dead
//! versions, eden files and their expunging, shard visits, block services.

use anyhow::{Context as _, anyhow};
use client::path::EggsPath;
use client::plan::{DEFAULT_POLICY, WritePolicy, block_span, inline_span, zero_fill_span};
use client::write::{FailedServices, write_spans};
use client::{Client, ClientError, block};
use tokio::sync::mpsc;
use wire::policy::Retention;
use wire::shard::ResolveMode;
use wire::span::Parity;
use wire::{BlockServiceId, EggsTime, InodeId, InodeType, ShardId};

use super::copy::write_policy;
use super::output::line;
use super::{DeadFlags, PolicyFlags};

#[derive(clap::Subcommand, Debug)]
pub enum PolicyAction {
    /// The effective policy of a directory (its own or inherited).
    Get { path: String },
    /// Set a directory's policy (unspecified fields keep their current values).
    Set {
        path: String,
        #[command(flatten)]
        policy: PolicyFlags,
        #[command(flatten)]
        retention: RetentionFlags,
    },
}

/// How long gcd keeps dead versions under a directory (part of its policy,
/// inherited like the write policy).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RetentionFlags {
    /// Keep dead versions at least this many seconds after they died (gcd purges them later).
    #[arg(long)]
    pub retention_secs: Option<u64>,
    /// Also keep this many newest dead versions of each name, however old (0: no count rule).
    #[arg(long)]
    pub retention_versions: Option<u32>,
}

impl PolicyAction {
    /// `eggs policy PATH [FLAGS]`: shows the policy, or sets the flags given.
    pub fn from_path(path: String, policy: PolicyFlags, retention: RetentionFlags) -> Self {
        let nothing_set = policy.parity.is_none()
            && policy.storage_class.is_none()
            && policy.span_size.is_none()
            && retention.retention_secs.is_none()
            && retention.retention_versions.is_none();
        if nothing_set { PolicyAction::Get { path } } else { PolicyAction::Set { path, policy, retention } }
    }
}

pub fn parse_u64(text: &str) -> anyhow::Result<u64> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| anyhow!("`{text}` is not a number (decimal or 0x…)"))
}

fn parse_inode(text: &str) -> anyhow::Result<InodeId> {
    Ok(InodeId::new(parse_u64(text).context("inode")?))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn directory(client: &Client, text: &str) -> anyhow::Result<InodeId> {
    let path = EggsPath::parse(text)?;
    let dir = client.resolve_path(&path).await?;
    if dir.inode_type() != Some(InodeType::Directory) {
        return Err(ClientError::NotADirectory { path: path.to_string() }.into());
    }
    Ok(dir)
}

pub async fn policy(client: &Client, action: PolicyAction) -> anyhow::Result<()> {
    match action {
        PolicyAction::Get { path } => {
            let dir = directory(client, &path).await?;
            let (policy, retention, from) = match client.effective_policy(dir).await? {
                Some((policy, from)) => (WritePolicy::from(policy), policy.retention, from.to_string()),
                None => (DEFAULT_POLICY, Retention::DEFAULT, "default".to_owned()),
            };
            line(format_args!("storage_class={}", policy.storage_class))?;
            line(format_args!("parity={}", policy.parity))?;
            line(format_args!("span_size={}", policy.span_size_bytes))?;
            line(format_args!("retention_secs={}", retention.secs))?;
            line(format_args!("retention_versions={}", retention.versions))?;
            line(format_args!("from={from}"))?;
        }
        PolicyAction::Set { path, policy, retention } => {
            let dir = directory(client, &path).await?;
            let new = write_policy(client, dir, &policy).await?;
            let inherited =
                client.effective_policy(dir).await?.map_or(Retention::DEFAULT, |(policy, _)| policy.retention);
            let retention = Retention {
                secs: retention.retention_secs.unwrap_or(inherited.secs),
                versions: retention.retention_versions.unwrap_or(inherited.versions),
            };
            let blob = new.to_policy().ok_or_else(|| anyhow!("invalid policy"))?.with_retention(retention).encode();
            client.set_directory_policy(dir, &blob).await?;
        }
    }
    Ok(())
}

pub async fn resolve(client: &Client, path: &str, dead: &DeadFlags) -> anyhow::Result<()> {
    let path = EggsPath::parse(path)?;
    let (mode, time) = match (dead.dead_le, dead.dead_ge) {
        (Some(time), _) => (ResolveMode::DeadLe, time),
        (None, Some(time)) => (ResolveMode::DeadGe, time),
        (None, None) => (ResolveMode::Alive, 0),
    };
    if path.is_root() {
        return line(format_args!("inode={}", InodeId::ROOT));
    }
    let (parent, name) = client.resolve_parent(&path).await?;
    match client.resolve(parent, name, mode, EggsTime::new(time)).await? {
        Some((inode, creation_time)) => {
            line(format_args!("inode={}", inode.without_owning()))?;
            line(format_args!("owning={}", inode.is_owning()))?;
            line(format_args!("creation_time={}", creation_time.get()))
        }
        None => Err(ClientError::NotFound { path: path.to_string() }.into()),
    }
}

pub async fn create_test_file(client: &Client, path: &str) -> anyhow::Result<()> {
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

pub async fn create_eden_file(client: &Client, shard: ShardId, symlink: bool) -> anyhow::Result<()> {
    let inode_type = if symlink { InodeType::Symlink } else { InodeType::File };
    let eden = client.create_eden_file(shard, inode_type).await?;
    line(format_args!("inode={}", eden.inode))?;
    line(format_args!("cookie={}", hex(&eden.cookie)))
}

pub async fn expunge_span(client: &Client, inode: &str) -> anyhow::Result<()> {
    let inode = parse_inode(inode)?;
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
    line(format_args!("expunged span at offset {offset} ({} blocks)", certificates.len()))
}

pub async fn expunge_file(client: &Client, inode: &str) -> anyhow::Result<()> {
    Ok(client.expunge_eden_file(parse_inode(inode)?).await?)
}

pub async fn visit_inodes(client: &Client, shard: ShardId) -> anyhow::Result<()> {
    let mut begin = InodeId::NULL;
    loop {
        let (inodes, next) = client.visit_inodes(shard, begin).await?;
        for inode in inodes {
            line(inode)?;
        }
        if next.is_null() || next <= begin {
            return Ok(());
        }
        begin = next;
    }
}

pub async fn visit_eden(client: &Client, shard: ShardId) -> anyhow::Result<()> {
    let mut begin = InodeId::NULL;
    loop {
        let (entries, next) = client.visit_eden(shard, begin).await?;
        for entry in entries {
            line(format_args!("{} deadline={}", entry.inode, entry.deadline.get()))?;
        }
        if next.is_null() || next <= begin {
            return Ok(());
        }
        begin = next;
    }
}

pub async fn reverse_block_query(client: &Client, block_service: &str, shard: ShardId) -> anyhow::Result<()> {
    let id = BlockServiceId::new(parse_u64(block_service).context("block service id")?);
    let mut blocks = client.reverse_blocks(shard, id);
    while let Some(page) = blocks.next_page().await {
        for entry in page? {
            line(format_args!("block={} inode={} offset={}", entry.block_id, entry.inode, entry.span_offset.get()))?;
        }
    }
    Ok(())
}

pub async fn block_services(client: &Client) -> anyhow::Result<()> {
    for (id, addr, storage_class, flags) in client.block_services().await? {
        line(format_args!("{id} {addr} storage_class={storage_class} flags={flags:#x}"))?;
    }
    Ok(())
}
