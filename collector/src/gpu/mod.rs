//! GPUs: through NVML when the driver's `libnvidia-ml` loads (feature
//! `nvml`), else through `nvidia-smi --query-gpu … --format=csv` under a
//! timeout, else — identity only — from the driver's own files
//! (`/proc/driver/nvidia/gpus/*/information`), else none: `gpu: []` with
//! the reason, stated once, not an error on every snapshot. An unavailable
//! source is looked for again now and then, so a driver that appears later
//! is picked up (and a GPU that vanishes shows as a failing probe).
//!
//! XID errors are watched apart ([`xid`]): NVML hands them over as events.
//!
//! A process may use several GPUs (a tensor-parallel engine) and a service
//! several processes: [`GpuUsage`] sums them, with the per-GPU breakdown.

#[cfg(feature = "nvml")]
mod nvml;
mod procfs;
mod smi;
pub mod xid;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use procfs::{DRIVER_DIR, DriverFiles};
pub use smi::{SMI_APPS_QUERY, SMI_QUERY, attach_compute_apps, available as smi_available, parse_smi_csv};

/// Clock rates, MHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Clocks {
    /// Graphics clock.
    pub graphics: Option<u32>,
    /// SM clock.
    pub sm: Option<u32>,
    /// Memory clock.
    pub memory: Option<u32>,
}

/// A process using a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Its pid.
    pub pid: u32,
    /// GPU memory it holds, MiB.
    pub memory_mb: Option<u64>,
    /// Its SM utilisation in the last sample window, percent.
    pub sm_percent: Option<u32>,
}

/// One GPU. Fields the source cannot read are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Index on this node.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Framebuffer in use, MiB.
    pub memory_used_mb: Option<u64>,
    /// Framebuffer size, MiB.
    pub memory_total_mb: Option<u64>,
    /// GPU utilisation, percent.
    pub utilization_percent: Option<u32>,
    /// Memory-controller utilisation, percent.
    pub memory_utilization_percent: Option<u32>,
    /// Die temperature, °C.
    pub temperature_celsius: Option<u32>,
    /// Power draw, W.
    pub power_watts: Option<f64>,
    /// Clock rates.
    pub clocks_mhz: Clocks,
    /// Driver version.
    pub driver: String,
    /// Processes on this GPU (NVML, or `nvidia-smi --query-compute-apps`).
    pub processes: Vec<GpuProcess>,
}

/// One GPU's part in a [`GpuUsage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuShare {
    /// The GPU's index.
    pub index: u32,
    /// Its UUID.
    pub uuid: String,
    /// GPU memory the processes hold on it, MiB.
    pub memory_mb: Option<u64>,
    /// Their SM utilisation on it, percent.
    pub sm_percent: Option<u32>,
    /// The processes on it.
    pub pids: Vec<u32>,
}

/// What a group of processes (a service: its main process and everything
/// in its cgroup) uses of the node's GPUs, summed over every GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuUsage {
    /// GPU memory held on all GPUs together, MiB (absent when no source
    /// reports it).
    pub memory_mb: Option<u64>,
    /// SM utilisation summed over the GPUs, percent of one GPU (200 = two
    /// GPUs busy).
    pub sm_percent: Option<u32>,
    /// Each GPU used, in index order.
    pub gpus: Vec<GpuShare>,
}

/// `Some(sum)` of the values that are known, `None` when none is.
fn sum_known<T: std::iter::Sum<T>>(values: impl Iterator<Item = Option<T>>) -> Option<T> {
    let known: Vec<T> = values.flatten().collect();
    (!known.is_empty()).then(|| known.into_iter().sum())
}

impl GpuUsage {
    /// The use of `pids` across `gpus`; `None` when none of them is on a GPU.
    pub fn of(pids: &[u32], gpus: &[GpuInfo]) -> Option<GpuUsage> {
        let shares: Vec<GpuShare> = gpus
            .iter()
            .filter_map(|gpu| {
                let mine: Vec<&GpuProcess> = gpu
                    .processes
                    .iter()
                    .filter(|process| pids.contains(&process.pid))
                    .collect();
                (!mine.is_empty()).then(|| GpuShare {
                    index: gpu.index,
                    uuid: gpu.uuid.clone(),
                    memory_mb: sum_known(mine.iter().map(|process| process.memory_mb)),
                    sm_percent: sum_known(mine.iter().map(|process| process.sm_percent)),
                    pids: mine.iter().map(|process| process.pid).collect(),
                })
            })
            .collect();
        if shares.is_empty() {
            return None;
        }
        Some(GpuUsage {
            memory_mb: sum_known(shares.iter().map(|share| share.memory_mb)),
            sm_percent: sum_known(shares.iter().map(|share| share.sm_percent)),
            gpus: shares,
        })
    }
}

/// What the GPU family reports in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct GpuReport {
    /// The GPUs (empty without a source).
    pub gpus: Vec<GpuInfo>,
    /// Where they were read from: `nvml`, `nvidia-smi`, `driver` (the
    /// driver's files: identity only), or `none`.
    pub source: &'static str,
    /// Why there is no source, when there is none.
    pub unavailable: Option<String>,
}

enum Source {
    #[cfg(feature = "nvml")]
    Nvml(Box<nvml::NvmlSource>),
    Smi,
    Driver(DriverFiles),
    None(String),
}

/// Which GPU source the node reads (`telemetry.gpu_source`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuSourceChoice {
    /// NVML, else `nvidia-smi`, else the driver's files, else none.
    #[default]
    Auto,
    /// NVML only.
    Nvml,
    /// `nvidia-smi` only (when NVML misbehaves on a machine, or to test
    /// the fallback where NVML loads).
    NvidiaSmi,
}

/// How often an unavailable GPU source is looked for again.
const RETRY_SOURCE_AFTER: Duration = Duration::from_secs(60);

/// The GPU family's probe.
pub struct GpuProbe {
    choice: GpuSourceChoice,
    source: Source,
    looked_at: Instant,
    smi: String,
    driver: PathBuf,
}

impl GpuProbe {
    /// Find the source `choice` allows: NVML, else `smi` (the `nvidia-smi`
    /// program), else the driver's files under `driver`
    /// (`/proc/driver/nvidia`), else none. Blocking (NVML initialisation).
    pub fn new(choice: GpuSourceChoice, smi: &str, driver: &Path) -> GpuProbe {
        GpuProbe {
            choice,
            source: find_source(choice, smi, driver),
            looked_at: Instant::now(),
            smi: smi.to_string(),
            driver: driver.to_path_buf(),
        }
    }

    /// The source in use.
    pub fn source(&self) -> &'static str {
        match self.source {
            #[cfg(feature = "nvml")]
            Source::Nvml(_) => "nvml",
            Source::Smi => "nvidia-smi",
            Source::Driver(_) => "driver",
            Source::None(_) => "none",
        }
    }

    /// Sample NVML (blocking), or report why there is no source. Looks for
    /// a source again when none was found a while ago.
    pub fn sample_blocking(&mut self) -> Result<GpuReport, String> {
        let lacking = matches!(self.source, Source::None(_) | Source::Driver(_));
        if lacking && self.looked_at.elapsed() >= RETRY_SOURCE_AFTER {
            self.source = find_source(self.choice, &self.smi, &self.driver);
            self.looked_at = Instant::now();
        }
        match &mut self.source {
            #[cfg(feature = "nvml")]
            Source::Nvml(nvml) => nvml.sample().map(|gpus| GpuReport {
                gpus,
                source: "nvml",
                unavailable: None,
            }),
            Source::Smi => Err("GPUs are read with nvidia-smi, asynchronously".into()),
            Source::Driver(files) => files.read().map(|gpus| GpuReport {
                gpus,
                source: "driver",
                unavailable: Some(
                    "neither NVML nor nvidia-smi answers: GPU identities from the driver's files only, no live figures"
                        .into(),
                ),
            }),
            Source::None(reason) => Ok(GpuReport {
                gpus: Vec::new(),
                source: "none",
                unavailable: Some(reason.clone()),
            }),
        }
    }
}

/// The `nvidia-smi` fallback source.
#[derive(Debug, Clone)]
pub struct Smi {
    program: String,
    timeout: Duration,
}

impl Smi {
    /// `program` (an `nvidia-smi`), each call bounded by `timeout`.
    pub fn new(program: &str, timeout: Duration) -> Smi {
        Smi {
            program: program.to_string(),
            timeout,
        }
    }

    /// Query every GPU, killing `nvidia-smi` when it overruns.
    pub async fn sample(&self) -> Result<GpuReport, String> {
        let gpus = smi::query(&self.program, self.timeout).await?;
        Ok(GpuReport {
            gpus,
            source: "nvidia-smi",
            unavailable: None,
        })
    }
}

/// NVML, or why not.
fn try_nvml() -> Result<Source, String> {
    #[cfg(feature = "nvml")]
    return nvml::NvmlSource::init().map(|source| Source::Nvml(Box::new(source)));
    #[cfg(not(feature = "nvml"))]
    Err("built without NVML support".to_string())
}

fn find_source(choice: GpuSourceChoice, smi: &str, driver: &Path) -> Source {
    let nvml_error = match choice {
        GpuSourceChoice::NvidiaSmi => "not tried: telemetry.gpu_source = \"nvidia-smi\"".to_string(),
        GpuSourceChoice::Auto | GpuSourceChoice::Nvml => match try_nvml() {
            Ok(source) => return source,
            Err(err) => err,
        },
    };
    if choice == GpuSourceChoice::Nvml {
        let reason = format!("telemetry.gpu_source = \"nvml\", and NVML is unavailable ({nvml_error})");
        tracing::warn!(%reason, "no GPUs reported");
        return Source::None(reason);
    }
    if smi::available(smi) {
        tracing::info!(nvml = %nvml_error, "NVML unavailable; reading GPUs with nvidia-smi");
        return Source::Smi;
    }
    if choice == GpuSourceChoice::NvidiaSmi {
        let reason = format!("telemetry.gpu_source = \"nvidia-smi\", and `{smi}` does not answer");
        tracing::warn!(%reason, "no GPUs reported");
        return Source::None(reason);
    }
    let files = DriverFiles::new(driver);
    if files.present() {
        tracing::warn!(nvml = %nvml_error, smi, driver = %driver.display(), "neither NVML nor nvidia-smi answers: reporting GPU identities from the driver's files only");
        return Source::Driver(files);
    }
    let reason = format!("no NVIDIA driver: NVML unavailable ({nvml_error}) and no `{smi}` on PATH");
    tracing::info!(%reason, "no GPUs reported");
    Source::None(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, processes: &[(u32, Option<u64>, Option<u32>)]) -> GpuInfo {
        GpuInfo {
            index,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: format!("GPU-{index}"),
            memory_used_mb: None,
            memory_total_mb: Some(81559),
            utilization_percent: None,
            memory_utilization_percent: None,
            temperature_celsius: None,
            power_watts: None,
            clocks_mhz: Clocks::default(),
            driver: String::new(),
            processes: processes
                .iter()
                .map(|&(pid, memory_mb, sm_percent)| GpuProcess {
                    pid,
                    memory_mb,
                    sm_percent,
                })
                .collect(),
        }
    }

    #[test]
    fn usage_is_summed_over_every_gpu_and_process() {
        // A tensor-parallel engine: main process 100 on GPU 0, worker 101 on
        // GPU 1, and both on GPU 1 for a moment; 999 is someone else's.
        let gpus = [
            gpu(0, &[(100, Some(40_000), Some(60)), (999, Some(1_000), Some(5))]),
            gpu(1, &[(101, Some(39_000), Some(55)), (100, Some(500), None)]),
            gpu(2, &[(999, Some(2_000), Some(1))]),
        ];
        let usage = GpuUsage::of(&[100, 101], &gpus).unwrap();
        assert_eq!(usage.memory_mb, Some(79_500));
        assert_eq!(usage.sm_percent, Some(115));
        assert_eq!(usage.gpus.len(), 2, "GPU 2 is not used");
        assert_eq!(
            (usage.gpus[1].index, usage.gpus[1].memory_mb, usage.gpus[1].sm_percent),
            (1, Some(39_500), Some(55))
        );
        assert_eq!(usage.gpus[1].pids, [101, 100]);
        assert_eq!(GpuUsage::of(&[7], &gpus), None);
        let unknown = GpuUsage::of(&[5], &[gpu(0, &[(5, None, None)])]).unwrap();
        assert_eq!(
            (unknown.memory_mb, unknown.sm_percent),
            (None, None),
            "unknown stays unknown"
        );
    }
}
