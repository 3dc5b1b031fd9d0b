//! The machine itself (via `sysinfo`): host, OS, architecture, CPU model and
//! cores, uptime, CPU use since the previous sample, memory, and the disks
//! holding the node's key paths.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sysinfo::{Disks, System};

/// Usage of the filesystem holding one key path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskUsage {
    /// The key path asked about.
    pub path: String,
    /// Where its filesystem is mounted.
    pub mount: String,
    /// Filesystem size, bytes.
    pub total_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes an unprivileged user may still write.
    pub available_bytes: u64,
}

/// One sample of the machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemInfo {
    /// Host name.
    pub hostname: String,
    /// Operating system and version.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_cores: usize,
    /// Machine uptime, seconds.
    pub uptime_seconds: u64,
    /// CPU use across all cores since the previous sample, percent (0–100).
    pub cpu_percent: f64,
    /// Memory, bytes.
    pub memory_total_bytes: u64,
    /// Memory in use (total − available), bytes.
    pub memory_used_bytes: u64,
    /// Memory available to start new work without swapping (the kernel's
    /// `MemAvailable`), bytes.
    pub memory_available_bytes: u64,
    /// The filesystems of the key paths, first the root's.
    pub disks: Vec<DiskUsage>,
}

/// Samples the machine; keeps state between samples (CPU use is a delta).
pub struct SystemProbe {
    system: System,
    disks: Disks,
    key_paths: Vec<PathBuf>,
}

impl SystemProbe {
    /// A probe reporting the filesystems of `/` and `key_paths`.
    pub fn new(key_paths: &[PathBuf]) -> Result<SystemProbe, String> {
        let mut system = System::new().map_err(|err| format!("cannot read system information: {err}"))?;
        system.refresh_cpu_usage();
        let disks = Disks::new().map_err(|err| format!("cannot list disks: {err}"))?;
        let mut paths = vec![PathBuf::from("/")];
        paths.extend(
            key_paths
                .iter()
                .filter(|path| path.as_path() != Path::new("/"))
                .cloned(),
        );
        Ok(SystemProbe {
            system,
            disks,
            key_paths: paths,
        })
    }

    /// Take a sample.
    pub fn sample(&mut self) -> Result<SystemInfo, String> {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        let cpus = self.system.cpus();
        let disks = self.key_paths.iter().filter_map(|path| self.disk_of(path)).collect();
        Ok(SystemInfo {
            hostname: System::host_name().unwrap_or_default(),
            os: System::long_os_version().unwrap_or_default(),
            arch: System::cpu_arch(),
            cpu_model: cpus
                .first()
                .map(|cpu| cpu.brand().trim().to_string())
                .unwrap_or_default(),
            cpu_cores: cpus.len(),
            uptime_seconds: System::uptime().unwrap_or_default(),
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_total_bytes: self.system.total_memory(),
            memory_used_bytes: self.system.used_memory(),
            memory_available_bytes: self.system.available_memory(),
            disks,
        })
    }

    /// The disk whose mount point is the longest prefix of `path`.
    fn disk_of(&self, path: &Path) -> Option<DiskUsage> {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        self.disks
            .iter()
            .filter(|disk| path.starts_with(disk.mount_point()))
            .max_by_key(|disk| disk.mount_point().as_os_str().len())
            .map(|disk| DiskUsage {
                path: path.display().to_string(),
                mount: disk.mount_point().display().to_string(),
                total_bytes: disk.total_space(),
                used_bytes: disk.total_space().saturating_sub(disk.available_space()),
                available_bytes: disk.available_space(),
            })
    }
}
