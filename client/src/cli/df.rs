//! `eggs df`: the cluster's capacity from shuckle, each disk counted once
//! (the rule is [`client::capacity`]'s).

use client::Client;
use client::capacity::{self, ServiceSpace};
use client::udp::Shuckle;
use wire::BlockServiceId;
use wire::shuckle::{BlockServiceStatus, BlockServicesReq, ShuckleRequest, ShuckleResponse};

use super::output::{self, size_text};

/// Guard against a listing that never ends.
const PAGES_MAX: usize = 1 << 16;

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct DfArgs {
    /// Human units (1.5K, 20M) instead of bytes.
    #[arg(short = 'h', long = "human-readable")]
    pub human: bool,
    /// One line per disk too.
    #[arg(long)]
    pub disks: bool,
    /// One JSON object (schema in `eggs --help`).
    #[arg(long)]
    pub json: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Every block service that is not terminal, with its host and space.
pub async fn service_spaces(client: &Client) -> anyhow::Result<Vec<ServiceSpace>> {
    let mut spaces = Vec::new();
    let mut begin = BlockServiceId::new(0);
    for _ in 0..PAGES_MAX {
        let request = ShuckleRequest::BlockServices(BlockServicesReq { begin });
        let reply = client.datagram_client().request::<Shuckle>(client.addresses().shuckle, &request).await?;
        let response = reply.get()?;
        let ShuckleResponse::BlockServices(page) = &response else {
            return Err(reply.unexpected(&response).into());
        };
        for info in page.block_services.iter() {
            if info.status == BlockServiceStatus::Terminal {
                continue;
            }
            spaces.push(ServiceSpace {
                id: info.id.to_string(),
                host: info.host.as_str().to_owned(),
                used_bytes: info.used_bytes.get(),
                free_bytes: info.free_bytes.get(),
            });
        }
        if page.next.get() == 0 {
            break;
        }
        begin = page.next;
    }
    Ok(spaces)
}

pub async fn df(client: &Client, args: &DfArgs) -> anyhow::Result<()> {
    let services = service_spaces(client).await?;
    let disks = capacity::disks(&services);
    let (capacity, used, free) = capacity::totals(&disks);
    if args.json {
        let per_disk: Vec<_> = disks
            .iter()
            .map(|disk| {
                serde_json::json!({
                    "host": disk.host, "block_services": disk.services,
                    "used_bytes": disk.used_bytes, "free_bytes": disk.free_bytes,
                })
            })
            .collect();
        return output::json(&serde_json::json!({
            "capacity_bytes": capacity, "used_bytes": used, "free_bytes": free,
            "disks": disks.len(), "block_services": services.len(), "per_disk": per_disk,
        }));
    }
    let size = |bytes: u64| size_text(bytes, args.human);
    let percent = if capacity == 0 { 0 } else { (used as u128 * 100).div_ceil(capacity as u128) };
    output::line(format_args!(
        "{:>14} {:>14} {:>14} {:>5} {:>6} {:>14}",
        "Size", "Used", "Avail", "Use%", "Disks", "Block services"
    ))?;
    output::line(format_args!(
        "{:>14} {:>14} {:>14} {:>4}% {:>6} {:>14}",
        size(capacity),
        size(used),
        size(free),
        percent,
        disks.len(),
        services.len()
    ))?;
    if args.disks {
        for disk in &disks {
            output::line(format_args!(
                "{:>14} {:>14} {:>14}  {} ({} block service{})",
                size(disk.capacity_bytes()),
                size(disk.used_bytes),
                size(disk.free_bytes),
                disk.host,
                disk.services.len(),
                if disk.services.len() == 1 { "" } else { "s" }
            ))?;
        }
    }
    Ok(())
}
