//! The last GPU source, when neither NVML nor `nvidia-smi` answers: the
//! driver's own files, `/proc/driver/nvidia/gpus/<bus>/information` (model,
//! UUID, minor number) and `/proc/driver/nvidia/version` (driver version).
//! They say which GPUs the node has, not how busy they are: every figure a
//! live source would give is absent (`null`), never made up.

use std::path::{Path, PathBuf};

use super::{Clocks, GpuInfo};

/// Where the driver's files are on a live system.
pub const DRIVER_DIR: &str = "/proc/driver/nvidia";

/// Reads GPU identities from a driver directory (`/proc/driver/nvidia`, or
/// a fixture tree in tests).
#[derive(Debug, Clone)]
pub struct DriverFiles {
    dir: PathBuf,
}

impl DriverFiles {
    /// The driver files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> DriverFiles {
        DriverFiles { dir: dir.into() }
    }

    /// Whether the driver lists any GPU there.
    pub fn present(&self) -> bool {
        std::fs::read_dir(self.dir.join("gpus")).is_ok_and(|mut entries| entries.next().is_some())
    }

    /// Every GPU the driver lists, ordered by minor number (the index
    /// `nvidia-smi` would give on a default `CUDA_DEVICE_ORDER`).
    pub fn read(&self) -> Result<Vec<GpuInfo>, String> {
        let gpus_dir = self.dir.join("gpus");
        let entries =
            std::fs::read_dir(&gpus_dir).map_err(|err| format!("cannot list {}: {err}", gpus_dir.display()))?;
        let driver = driver_version(&self.dir.join("version")).unwrap_or_default();
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let file = entry.path().join("information");
            let text =
                std::fs::read_to_string(&file).map_err(|err| format!("cannot read {}: {err}", file.display()))?;
            let info = Information::parse(&text);
            found.push((info.minor.unwrap_or(u32::MAX), info, entry.file_name()));
        }
        found.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(position, (minor, info, _))| GpuInfo {
                index: if minor == u32::MAX { position as u32 } else { minor },
                name: info.model,
                uuid: info.uuid,
                memory_used_mb: None,
                memory_total_mb: None,
                utilization_percent: None,
                memory_utilization_percent: None,
                temperature_celsius: None,
                power_watts: None,
                clocks_mhz: Clocks::default(),
                driver: driver.clone(),
                processes: Vec::new(),
            })
            .collect())
    }
}

/// One GPU's `information` file: `Key: \t value` lines.
#[derive(Debug, Default, PartialEq)]
struct Information {
    model: String,
    uuid: String,
    minor: Option<u32>,
}

impl Information {
    fn parse(text: &str) -> Information {
        let mut info = Information::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "Model" => info.model = value.to_string(),
                "GPU UUID" => info.uuid = value.to_string(),
                "Device Minor" => info.minor = value.parse().ok(),
                _ => {}
            }
        }
        info
    }
}

/// The version in `NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Wed …`.
fn driver_version(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|line| line.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|word| word.contains('.') && word.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(dir: &Path, bus: &str, model: &str, uuid: &str, minor: u32) {
        let gpu = dir.join("gpus").join(bus);
        std::fs::create_dir_all(&gpu).unwrap();
        std::fs::write(
            gpu.join("information"),
            format!(
                "Model: \t\t {model}\nIRQ:   \t\t 0\nGPU UUID: \t {uuid}\nVideo BIOS: \t 96.00.99.00.01\n\
                 Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\n\
                 Bus Location: \t {bus}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn reads_identity_from_the_driver_files() {
        let dir = tempfile::tempdir().unwrap();
        let driver = DriverFiles::new(dir.path());
        assert!(!driver.present(), "no gpus/ directory");
        gpu(dir.path(), "0000:41:00.0", "NVIDIA H100 80GB HBM3", "GPU-bbbb", 1);
        gpu(dir.path(), "0000:01:00.0", "NVIDIA H100 80GB HBM3", "GPU-aaaa", 0);
        std::fs::write(
            dir.path().join("version"),
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Wed Oct  1 00:00:00 UTC 2025\n\
             GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
        )
        .unwrap();
        assert!(driver.present());
        let gpus = driver.read().unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!((gpus[0].index, gpus[0].uuid.as_str()), (0, "GPU-aaaa"));
        assert_eq!((gpus[1].index, gpus[1].uuid.as_str()), (1, "GPU-bbbb"));
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[0].driver, "580.159.04");
        assert_eq!(gpus[0].memory_total_mb, None, "the driver files give no live figures");
        assert_eq!(gpus[0].utilization_percent, None);
    }
}
