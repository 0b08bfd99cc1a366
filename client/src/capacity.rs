//! The cluster's capacity with each disk counted once (`eggs df`, shuckle's
//! UI). Several block services may share one disk (`eggs local-cluster`
//! runs six on one folder); adding their free space would count that disk
//! six times.
//!
//! The rule, until block services report a filesystem id: two services are
//! on the same disk when they are on the same host (as registered with
//! shuckle) and their free space (statvfs, from their last check) differs
//! by at most [`SAME_DISK_TOLERANCE_BYTES`] or [`SAME_DISK_TOLERANCE_PER_MILLE`]
//! ‰ of it, whichever is larger: one filesystem's free space is the same
//! number for every service on it, give or take what was written between
//! their checks. A disk's free space is the largest its services report;
//! its used space is the sum of their blocks' bytes. Terminal services are
//! left out. Known limit: two empty, identical disks on one host look like
//! one until their free space drifts apart.

/// What is known of one block service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpace {
    pub id: String,
    pub host: String,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// One disk: the services on it and its space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub host: String,
    pub services: Vec<String>,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

impl Disk {
    pub fn capacity_bytes(&self) -> u64 {
        self.used_bytes.saturating_add(self.free_bytes)
    }
}

/// Free-space difference always treated as "same disk".
pub const SAME_DISK_TOLERANCE_BYTES: u64 = 256 << 20;
/// Relative free-space difference (per mille) treated as "same disk".
pub const SAME_DISK_TOLERANCE_PER_MILLE: u64 = 5;

fn same_disk(a: u64, b: u64) -> bool {
    let tolerance = SAME_DISK_TOLERANCE_BYTES.max(a.max(b) / 1000 * SAME_DISK_TOLERANCE_PER_MILLE);
    a.abs_diff(b) <= tolerance
}

/// Groups services into disks (rule in the module documentation); disks
/// sorted by host, then by free space.
pub fn disks(services: &[ServiceSpace]) -> Vec<Disk> {
    let mut sorted: Vec<&ServiceSpace> = services.iter().collect();
    sorted.sort_by(|a, b| (&a.host, a.free_bytes, &a.id).cmp(&(&b.host, b.free_bytes, &b.id)));
    let mut disks: Vec<Disk> = Vec::new();
    // Free space of the last service joined to the last disk (chaining).
    let mut last_free = 0u64;
    for service in sorted {
        match disks.last_mut() {
            Some(disk) if disk.host == service.host && same_disk(last_free, service.free_bytes) => {
                disk.services.push(service.id.clone());
                disk.used_bytes = disk.used_bytes.saturating_add(service.used_bytes);
                disk.free_bytes = disk.free_bytes.max(service.free_bytes);
            }
            _ => disks.push(Disk {
                host: service.host.clone(),
                services: vec![service.id.clone()],
                used_bytes: service.used_bytes,
                free_bytes: service.free_bytes,
            }),
        }
        last_free = service.free_bytes;
    }
    disks
}

/// The totals over disks: (capacity, used, free).
pub fn totals(disks: &[Disk]) -> (u64, u64, u64) {
    disks.iter().fold((0, 0, 0), |(capacity, used, free), disk| {
        (capacity + disk.capacity_bytes(), used + disk.used_bytes, free + disk.free_bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(id: &str, host: &str, used: u64, free: u64) -> ServiceSpace {
        ServiceSpace { id: id.into(), host: host.into(), used_bytes: used, free_bytes: free }
    }

    #[test]
    fn six_services_on_one_disk_count_once() {
        let gib = 1u64 << 30;
        let services: Vec<_> =
            (0..6).map(|i| service(&format!("s{i}"), "local", gib, 100 * gib - i * (10 << 20))).collect();
        let disks = disks(&services);
        assert_eq!(disks.len(), 1, "{disks:?}");
        assert_eq!(disks[0].services.len(), 6);
        assert_eq!(totals(&disks), (106 * gib, 6 * gib, 100 * gib));
    }

    #[test]
    fn different_hosts_or_free_space_are_different_disks() {
        let gib = 1u64 << 30;
        let services = [
            service("a1", "a", 0, 100 * gib),
            service("a2", "a", 0, 50 * gib),
            service("b1", "b", 0, 100 * gib),
            service("a3", "a", 0, 100 * gib + (1 << 20)),
        ];
        let disks = disks(&services);
        assert_eq!(disks.len(), 3, "{disks:?}");
        assert_eq!(totals(&disks).2, 250 * gib + (1 << 20));
    }
}
