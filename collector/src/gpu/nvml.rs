//! GPUs through NVML (`nvml-wrapper`; the driver's `libnvidia-ml.so` is
//! loaded at run time, so nodes without a driver run the same binary).

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use super::{Clocks, GpuInfo, GpuProcess};

const MIB: u64 = 1024 * 1024;

/// An initialised NVML.
pub struct NvmlSource {
    nvml: Nvml,
    /// NVML timestamp of the last process-utilisation sample seen.
    last_seen: u64,
}

impl NvmlSource {
    /// Load and initialise NVML.
    pub fn init() -> Result<NvmlSource, String> {
        Nvml::init()
            .map(|nvml| NvmlSource { nvml, last_seen: 0 })
            .map_err(|err| err.to_string())
    }

    /// Read every GPU.
    pub fn sample(&mut self) -> Result<Vec<GpuInfo>, String> {
        let count = self.nvml.device_count().map_err(|err| format!("device count: {err}"))?;
        let driver = self.nvml.sys_driver_version().unwrap_or_default();
        let mut gpus = Vec::new();
        let mut newest = self.last_seen;
        for index in 0..count {
            let device = self
                .nvml
                .device_by_index(index)
                .map_err(|err| format!("GPU {index}: {err}"))?;
            let memory = device.memory_info().ok();
            let utilization = device.utilization_rates().ok();
            let mut processes: Vec<GpuProcess> = device
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .chain(device.running_graphics_processes().unwrap_or_default())
                .map(|process| GpuProcess {
                    pid: process.pid,
                    memory_mb: match process.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes / MIB),
                        UsedGpuMemory::Unavailable => None,
                    },
                    sm_percent: None,
                })
                .collect();
            processes.sort_by_key(|process| process.pid);
            processes.dedup_by_key(|process| process.pid);
            // NotFound means no process has run since `last_seen`: no samples.
            match device.process_utilization_stats(self.last_seen) {
                Ok(samples) => {
                    for sample in samples {
                        newest = newest.max(sample.timestamp);
                        if let Some(process) = processes.iter_mut().find(|process| process.pid == sample.pid) {
                            process.sm_percent = Some(sample.sm_util);
                        }
                    }
                }
                Err(NvmlError::NotFound) => {}
                Err(err) => tracing::debug!(gpu = index, error = %err, "no process utilisation"),
            }
            gpus.push(GpuInfo {
                index,
                name: device.name().unwrap_or_default(),
                uuid: device.uuid().unwrap_or_default(),
                memory_used_mb: memory.as_ref().map(|memory| memory.used / MIB),
                memory_total_mb: memory.as_ref().map(|memory| memory.total / MIB),
                utilization_percent: utilization.as_ref().map(|rates| rates.gpu),
                memory_utilization_percent: utilization.as_ref().map(|rates| rates.memory),
                temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
                power_watts: device
                    .power_usage()
                    .ok()
                    .map(|milliwatts| f64::from(milliwatts) / 1000.0),
                clocks_mhz: Clocks {
                    graphics: device.clock_info(Clock::Graphics).ok(),
                    sm: device.clock_info(Clock::SM).ok(),
                    memory: device.clock_info(Clock::Memory).ok(),
                },
                driver: driver.clone(),
                processes,
            });
        }
        self.last_seen = newest;
        Ok(gpus)
    }
}
