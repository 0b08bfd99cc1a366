//! What machine the figures were measured on, from /proc.

use std::fs;
use std::path::Path;

/// The machine's description, written beside every result.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    /// File system type and device of the data folder.
    pub data_filesystem: String,
    /// /proc/loadavg at the start of the run: the machine is shared.
    pub load_average: String,
}

impl Machine {
    pub fn describe(data_folder: &Path) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let memory_bytes = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    line.strip_prefix("MemTotal:")
                        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
            })
            .map_or(0, |kib| kib * 1024);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let load_average = fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
        Self { cpu_model, cores, memory_bytes, kernel, data_filesystem: filesystem_of(data_folder), load_average }
    }

    pub fn markdown(&self) -> String {
        format!(
            "- CPU: {} ({} cores visible)\n- memory: {:.1} GiB\n- kernel: Linux {}\n- data folder: {}\n- load average at start: {}\n",
            self.cpu_model,
            self.cores,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.kernel,
            self.data_filesystem,
            self.load_average
        )
    }
}

/// The mount (device and type) holding `path`: the longest mount point that
/// prefixes it in /proc/mounts.
fn filesystem_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, mount_point, fs_type, ..] = fields[..] else { continue };
        if path.starts_with(mount_point) && best.as_ref().is_none_or(|(len, _)| mount_point.len() > *len) {
            best = Some((
                mount_point.len(),
                format!("{} ({fs_type} on {device}, mounted at {mount_point})", path.display()),
            ));
        }
    }
    best.map_or_else(|| path.display().to_string(), |(_, text)| text)
}
