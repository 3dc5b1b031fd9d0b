//! GPUs: through NVML when the driver's `libnvidia-ml` loads (feature
//! `nvml`), else through `nvidia-smi --query-gpu … --format=csv` under a
//! timeout, else none — `gpu: []` with the reason, stated once, not an error
//! on every snapshot. An unavailable source is looked for again now and then,
//! so a driver that appears later is picked up (and a GPU that vanishes
//! shows as a failing probe).

#[cfg(feature = "nvml")]
mod nvml;
mod smi;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use smi::{SMI_QUERY, available as smi_available, parse_smi_csv};

/// Clock rates, MHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Clocks {
    /// Graphics clock.
    pub graphics: Option<u32>,
    /// SM clock.
    pub sm: Option<u32>,
    /// Memory clock.
    pub memory: Option<u32>,
}

/// A process using a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    /// Its pid.
    pub pid: u32,
    /// GPU memory it holds, MiB.
    pub memory_mb: Option<u64>,
    /// Its SM utilisation in the last sample window, percent.
    pub sm_percent: Option<u32>,
}

/// One GPU. Fields the source cannot read are `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Processes on this GPU (NVML only).
    pub processes: Vec<GpuProcess>,
}

/// What the GPU family reports in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct GpuReport {
    /// The GPUs (empty without a source).
    pub gpus: Vec<GpuInfo>,
    /// Where they were read from: `nvml`, `nvidia-smi`, or `none`.
    pub source: &'static str,
    /// Why there is no source, when there is none.
    pub unavailable: Option<String>,
}

enum Source {
    #[cfg(feature = "nvml")]
    Nvml(Box<nvml::NvmlSource>),
    Smi,
    None(String),
}

/// How often an unavailable GPU source is looked for again.
const RETRY_SOURCE_AFTER: Duration = Duration::from_secs(60);

/// The GPU family's probe.
pub struct GpuProbe {
    source: Source,
    looked_at: Instant,
    smi: String,
    timeout: Duration,
}

impl GpuProbe {
    /// Find a source: NVML, else `smi` (the `nvidia-smi` program), else none.
    /// Blocking (NVML initialisation); `timeout` bounds `nvidia-smi` calls.
    pub fn new(smi: &str, timeout: Duration) -> GpuProbe {
        GpuProbe {
            source: find_source(smi),
            looked_at: Instant::now(),
            smi: smi.to_string(),
            timeout,
        }
    }

    /// The source in use.
    pub fn source(&self) -> &'static str {
        match self.source {
            #[cfg(feature = "nvml")]
            Source::Nvml(_) => "nvml",
            Source::Smi => "nvidia-smi",
            Source::None(_) => "none",
        }
    }

    /// The `nvidia-smi` source, when that is the one in use (it is sampled
    /// asynchronously: a child process awaited with a timeout).
    pub fn smi(&self) -> Option<Smi> {
        matches!(self.source, Source::Smi).then(|| Smi {
            program: self.smi.clone(),
            timeout: self.timeout,
        })
    }

    /// Sample NVML (blocking), or report why there is no source. Looks for
    /// a source again when none was found a while ago.
    pub fn sample_blocking(&mut self) -> Result<GpuReport, String> {
        if matches!(self.source, Source::None(_)) && self.looked_at.elapsed() >= RETRY_SOURCE_AFTER {
            self.source = find_source(&self.smi);
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

fn find_source(smi: &str) -> Source {
    #[cfg(feature = "nvml")]
    let nvml_error = match nvml::NvmlSource::init() {
        Ok(source) => return Source::Nvml(Box::new(source)),
        Err(err) => err,
    };
    #[cfg(not(feature = "nvml"))]
    let nvml_error = "built without NVML support".to_string();
    if smi::available(smi) {
        tracing::info!(nvml = %nvml_error, "NVML unavailable; reading GPUs with nvidia-smi");
        return Source::Smi;
    }
    let reason = format!("no NVIDIA driver: NVML unavailable ({nvml_error}) and no `{smi}` on PATH");
    tracing::info!(%reason, "no GPUs reported");
    Source::None(reason)
}
