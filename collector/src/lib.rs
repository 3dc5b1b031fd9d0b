//! citadel's node telemetry: what the machine is and what it runs, one
//! module per family, every probe under a timeout. A failing probe becomes
//! an entry in `collector_errors[]`; it never fails the snapshot.
//!
//! Layout:
//! - [`system`]: host, OS, CPU, memory, disks (sysinfo);
//! - [`gpu`]: GPUs via NVML, else `nvidia-smi`, else none with the reason;
//! - [`processes`]: managed processes from `/proc` (procfs);
//! - [`cgroups`]: cgroup v1/v2 CPU, memory and I/O rates;
//! - [`status`]: the `StatusMessage` published for the node (DESIGN §3);
//! - [`probe`]: running a probe under a deadline.
//!
//! Knows nothing of wasmtime or Redis: the runtime feeds it what it manages
//! ([`Watch`]) and publishes what it returns.

pub mod cgroups;
pub mod gpu;
pub mod probe;
pub mod processes;
pub mod status;
pub mod system;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

pub use cgroups::{CgroupStats, Hierarchy};
pub use gpu::{Clocks, GpuInfo, GpuProbe, GpuProcess, GpuReport, GpuShare, GpuSourceChoice, GpuUsage};
pub use probe::CollectorError;
pub use processes::{ProcReader, ProcessInfo};
pub use system::{SystemInfo, SystemProbe};

/// At most this many errors per probe are listed; the rest are counted.
const MAX_ERRORS_PER_PROBE: usize = 10;

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Longest any probe may take.
    pub probe_timeout: Duration,
    /// Which GPU source to read.
    pub gpu_source: GpuSourceChoice,
    /// The `nvidia-smi` program (fallback GPU source).
    pub smi: String,
    /// Paths whose filesystems are reported (besides `/`).
    pub key_paths: Vec<PathBuf>,
    /// The cgroup hierarchy (`None`: the live system's).
    pub cgroups: Option<Hierarchy>,
    /// The NVIDIA driver's files (`/proc/driver/nvidia`): GPU identities
    /// when no live source answers.
    pub driver_dir: PathBuf,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            probe_timeout: Duration::from_secs(2),
            gpu_source: GpuSourceChoice::Auto,
            smi: "nvidia-smi".into(),
            key_paths: Vec::new(),
            cgroups: None,
            driver_dir: PathBuf::from(gpu::DRIVER_DIR),
        }
    }
}

/// Something the node manages and wants reported: a process, its cgroup,
/// or both (the cgroup of a process is found from `/proc` when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// What the node calls it.
    pub name: String,
    /// Its main process.
    pub pid: Option<u32>,
    /// Its cgroup, relative to the hierarchy root.
    pub cgroup: Option<String>,
}

/// One watched thing in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Watched {
    /// What the node calls it.
    pub name: String,
    /// Its process.
    pub process: Option<ProcessInfo>,
    /// Its cgroup.
    pub cgroup: Option<CgroupStats>,
    /// Its use of the GPUs: its process and everything in its cgroup,
    /// summed over every GPU, with the per-GPU breakdown.
    pub gpu: Option<GpuUsage>,
}

/// Everything collected at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// When.
    #[serde(skip)]
    pub at: SystemTime,
    /// The machine (absent when its probe failed).
    pub system: Option<SystemInfo>,
    /// The GPUs.
    pub gpu: GpuReport,
    /// The watched processes and cgroups.
    pub watched: Vec<Watched>,
    /// Probes that failed.
    pub errors: Vec<CollectorError>,
    /// How long collecting took.
    #[serde(skip)]
    pub took: Duration,
}

/// Collects snapshots; keeps what rates need between them.
pub struct Collector {
    config: CollectorConfig,
    system: Arc<Mutex<Result<SystemProbe, String>>>,
    gpu: Arc<Mutex<GpuProbe>>,
    /// The GPU source in use, readable while a sample holds the probe.
    gpu_source: Arc<Mutex<&'static str>>,
    procs: Result<ProcReader, String>,
    hierarchy: Result<Hierarchy, String>,
    rates: Arc<Mutex<cgroups::Rates>>,
}

impl Collector {
    /// Set up every probe (finding the GPU source may load NVML).
    pub async fn new(config: CollectorConfig) -> Collector {
        let smi = config.smi.clone();
        let driver = config.driver_dir.clone();
        let choice = config.gpu_source;
        let gpu = tokio::task::spawn_blocking(move || GpuProbe::new(choice, &smi, &driver))
            .await
            .expect("GPU probe set-up");
        let key_paths = config.key_paths.clone();
        let system = SystemProbe::new(&key_paths);
        let hierarchy = match &config.cgroups {
            Some(hierarchy) => Ok(hierarchy.clone()),
            None => Hierarchy::detect(),
        };
        Collector {
            system: Arc::new(Mutex::new(system)),
            gpu_source: Arc::new(Mutex::new(gpu.source())),
            gpu: Arc::new(Mutex::new(gpu)),
            procs: ProcReader::live(),
            hierarchy,
            rates: Arc::default(),
            config,
        }
    }

    /// The GPU source in use (`nvml`, `nvidia-smi`, `none`).
    pub fn gpu_source(&self) -> &'static str {
        *self.gpu_source.lock().expect("gpu source poisoned")
    }

    /// Take a snapshot of the machine and of `watches`.
    pub async fn collect(&self, watches: &[Watch]) -> Snapshot {
        let started = Instant::now();
        let (system, gpu, watched) = tokio::join!(self.system(), self.gpus(), self.watched(watches.to_vec()));
        let mut errors = Vec::new();
        let system = system.map_err(|err| errors.push(err)).ok();
        let gpu = gpu.unwrap_or_else(|err| {
            errors.push(err);
            self.driver_identities()
        });
        let (mut watched, watch_errors) = watched.unwrap_or_else(|err| (Vec::new(), vec![err]));
        errors.extend(watch_errors);
        if gpu.gpus.iter().any(|gpu| !gpu.processes.is_empty()) {
            for entry in &mut watched {
                let pids = self.pids_of(entry);
                entry.gpu = GpuUsage::of(&pids, &gpu.gpus);
            }
        }
        Snapshot {
            at: SystemTime::now(),
            system,
            gpu,
            watched,
            errors,
            took: started.elapsed(),
        }
    }

    /// GPU identities from the driver's files, when the GPU probe failed
    /// (its error is reported besides).
    fn driver_identities(&self) -> GpuReport {
        let files = gpu::DriverFiles::new(&self.config.driver_dir);
        match files.present().then(|| files.read()) {
            Some(Ok(gpus)) => GpuReport {
                gpus,
                source: "driver",
                unavailable: Some(
                    "the GPU probe failed (see collector_errors): identities from the driver's files only".into(),
                ),
            },
            _ => GpuReport {
                gpus: Vec::new(),
                source: "none",
                unavailable: None,
            },
        }
    }

    /// A watched thing's processes: its main one and, when it has a cgroup,
    /// everything in it (an engine's workers on other GPUs).
    fn pids_of(&self, watched: &Watched) -> Vec<u32> {
        let mut pids: Vec<u32> = watched.process.iter().map(|process| process.pid).collect();
        if let (Some(cgroup), Ok(hierarchy)) = (&watched.cgroup, &self.hierarchy) {
            pids.extend(hierarchy.procs(&cgroup.path).unwrap_or_default());
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    async fn system(&self) -> Result<SystemInfo, CollectorError> {
        let system = Arc::clone(&self.system);
        probe::blocking("system", self.config.probe_timeout, move || {
            let mut guard = system
                .try_lock()
                .map_err(|_| "the previous system probe is still running".to_string())?;
            match guard.as_mut() {
                Ok(probe) => probe.sample(),
                Err(err) => Err(err.clone()),
            }
        })
        .await
    }

    /// Sample the GPUs alone (cheap with NVML: a few µs per GPU).
    pub async fn gpus(&self) -> Result<GpuReport, CollectorError> {
        if self.gpu_source() == "nvidia-smi" {
            let smi = gpu::Smi::new(&self.config.smi, self.config.probe_timeout);
            return smi.sample().await.map_err(|err| CollectorError::new("gpu", err));
        }
        let gpu = Arc::clone(&self.gpu);
        let source = Arc::clone(&self.gpu_source);
        probe::blocking("gpu", self.config.probe_timeout, move || {
            // A GPU probe still hung from an earlier snapshot is reported,
            // not waited for (nor joined by another blocked thread).
            let mut probe = gpu
                .try_lock()
                .map_err(|_| "the previous GPU probe is still running (driver hung?)".to_string())?;
            let sampled = probe.sample_blocking();
            // Sampling may have found a source that was missing before.
            *source.lock().expect("gpu source poisoned") = probe.source();
            sampled
        })
        .await
    }

    async fn watched(&self, watches: Vec<Watch>) -> Result<(Vec<Watched>, Vec<CollectorError>), CollectorError> {
        if watches.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let procs = self.procs.clone();
        let hierarchy = self.hierarchy.clone();
        let rates = Arc::clone(&self.rates);
        probe::blocking("processes", self.config.probe_timeout, move || {
            Ok(read_watches(&watches, procs.as_ref(), hierarchy.as_ref(), &rates))
        })
        .await
    }
}

/// What one watch read, before rates.
struct Reading {
    process: Option<Result<ProcessInfo, String>>,
    /// The group and its counters (or why they could not be read).
    cgroup: Option<(String, Result<cgroups::Counters, String>)>,
    hierarchy_error: Option<String>,
}

/// Watches per reading thread: below this, one thread reads them all.
const WATCHES_PER_THREAD: usize = 64;

/// Read every watch; errors are collected (and capped) per probe.
///
/// A snapshot of many managed processes is a few thousand small reads of
/// `/proc` and cgroupfs, dominated by system calls: they are spread over
/// the cores, then turned into rates in order, under the lock.
fn read_watches(
    watches: &[Watch],
    procs: Result<&ProcReader, &String>,
    hierarchy: Result<&Hierarchy, &String>,
    rates: &Mutex<cgroups::Rates>,
) -> (Vec<Watched>, Vec<CollectorError>) {
    let read = |watch: &Watch| read_watch(watch, procs, hierarchy);
    let threads = std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .min(8);
    let per_thread = watches.len().div_ceil(threads).max(WATCHES_PER_THREAD);
    let readings: Vec<Reading> = if watches.len() <= WATCHES_PER_THREAD {
        watches.iter().map(read).collect()
    } else {
        std::thread::scope(|scope| {
            let parts: Vec<_> = watches
                .chunks(per_thread)
                .map(|part| scope.spawn(move || part.iter().map(read).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|part| part.join().expect("watch reader panicked"))
                .collect()
        })
    };

    let mut errors = ErrorList::default();
    let mut watched = Vec::with_capacity(watches.len());
    let mut groups = Vec::new();
    let mut read_now: std::collections::HashMap<String, CgroupStats> = std::collections::HashMap::new();
    let mut rates = rates.lock().expect("cgroup rates poisoned");
    let now = Instant::now();
    for (watch, reading) in watches.iter().zip(readings) {
        let process = reading
            .process
            .and_then(|process| process.map_err(|err| errors.push("processes", &watch.name, err)).ok());
        if let Some(err) = reading.hierarchy_error {
            errors.push("cgroups", &watch.name, err);
        }
        let cgroup = reading.cgroup.and_then(|(group, counters)| {
            // Two watches of one group (a service and its process) share
            // one reading: a second delta microseconds later would be noise.
            if let Some(stats) = read_now.get(&group) {
                return Some(stats.clone());
            }
            let counters = counters.map_err(|err| errors.push("cgroups", &watch.name, err)).ok()?;
            let version = hierarchy.map_or(0, Hierarchy::version);
            let stats = rates.update(&group, version, counters, now);
            groups.push(group.clone());
            read_now.insert(group, stats.clone());
            Some(stats)
        });
        watched.push(Watched {
            name: watch.name.clone(),
            process,
            cgroup,
            gpu: None,
        });
    }
    rates.retain(&groups);
    (watched, errors.finish())
}

/// Read one watch's process and cgroup counters.
fn read_watch(watch: &Watch, procs: Result<&ProcReader, &String>, hierarchy: Result<&Hierarchy, &String>) -> Reading {
    let process = watch.pid.map(|pid| match procs {
        Ok(procs) => procs.read(pid),
        Err(err) => Err(err.clone()),
    });
    match hierarchy {
        Ok(hierarchy) => {
            let group = match (&watch.cgroup, watch.pid, procs) {
                (Some(group), _, _) => Some(group.clone()),
                (None, Some(pid), Ok(procs)) => procs.cgroup_of(pid, hierarchy.version()).ok(),
                _ => None,
            };
            let cgroup = group.map(|group| {
                let counters = hierarchy.read(&group);
                (group, counters)
            });
            Reading {
                process,
                cgroup,
                hierarchy_error: None,
            }
        }
        Err(err) => Reading {
            process,
            cgroup: None,
            hierarchy_error: watch.cgroup.is_some().then(|| err.clone()),
        },
    }
}

/// Errors of the watch probes, at most [`MAX_ERRORS_PER_PROBE`] listed each.
#[derive(Default)]
struct ErrorList {
    errors: Vec<CollectorError>,
    dropped: std::collections::BTreeMap<&'static str, usize>,
}

impl ErrorList {
    fn push(&mut self, probe: &'static str, name: &str, error: String) {
        if self.errors.iter().filter(|err| err.probe == probe).count() < MAX_ERRORS_PER_PROBE {
            self.errors.push(CollectorError::new(probe, format!("{name}: {error}")));
        } else {
            *self.dropped.entry(probe).or_default() += 1;
        }
    }

    fn finish(mut self) -> Vec<CollectorError> {
        for (probe, count) in self.dropped {
            self.errors
                .push(CollectorError::new(probe, format!("… and {count} more errors")));
        }
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_service_uses_the_gpus_of_every_process_in_its_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let group = root.path().join("citadel.slice/services/vllm");
        std::fs::create_dir_all(&group).unwrap();
        std::fs::write(group.join("cgroup.procs"), "100\n101\n102\n").unwrap();
        let collector = Collector::new(CollectorConfig {
            cgroups: Some(Hierarchy::v2(root.path())),
            smi: "/nonexistent/nvidia-smi".into(),
            driver_dir: root.path().join("no-driver"),
            ..CollectorConfig::default()
        })
        .await;
        let watched = Watched {
            name: "vllm".into(),
            process: None,
            cgroup: Some(CgroupStats {
                path: "citadel.slice/services/vllm".into(),
                version: 2,
                cpu_percent: None,
                memory_bytes: 0,
                memory_limit_bytes: None,
                io_read_bytes_per_s: None,
                io_write_bytes_per_s: None,
            }),
            gpu: None,
        };
        assert_eq!(collector.pids_of(&watched), [100, 101, 102]);
    }

    #[tokio::test]
    async fn a_failing_gpu_probe_still_names_the_gpus_the_driver_lists() {
        let root = tempfile::tempdir().unwrap();
        let gpu = root.path().join("gpus/0000:01:00.0");
        std::fs::create_dir_all(&gpu).unwrap();
        std::fs::write(
            gpu.join("information"),
            "Model: \t\t NVIDIA H100 80GB HBM3\nGPU UUID: \t GPU-aaaa\nDevice Minor: \t 0\n",
        )
        .unwrap();
        let collector = Collector::new(CollectorConfig {
            smi: "/nonexistent/nvidia-smi".into(),
            driver_dir: root.path().to_path_buf(),
            ..CollectorConfig::default()
        })
        .await;
        let report = collector.driver_identities();
        assert_eq!((report.source, report.gpus.len()), ("driver", 1));
        assert_eq!(report.gpus[0].uuid, "GPU-aaaa");
        assert_eq!(
            collector.gpu_source(),
            "driver",
            "no NVML, no nvidia-smi: the driver's files"
        );
    }

    #[test]
    fn many_watches_are_read_in_parallel_and_reported_in_order() {
        let root = tempfile::tempdir().unwrap();
        let watches: Vec<Watch> = (0..300)
            .map(|n| {
                let dir = root.path().join(format!("g{n}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("cpu.stat"), format!("usage_usec {n}\n")).unwrap();
                std::fs::write(dir.join("memory.current"), format!("{}\n", n * 4096)).unwrap();
                std::fs::write(dir.join("memory.max"), "max\n").unwrap();
                std::fs::write(dir.join("io.stat"), "").unwrap();
                Watch {
                    name: format!("w{n}"),
                    pid: None,
                    cgroup: Some(format!("g{n}")),
                }
            })
            .collect();
        // One watch names a group that does not exist: an error, not a failed snapshot.
        let mut watches = watches;
        watches.push(Watch {
            name: "gone".into(),
            pid: None,
            cgroup: Some("nope".into()),
        });
        let hierarchy = Hierarchy::v2(root.path());
        let rates = Mutex::new(cgroups::Rates::default());
        let (watched, errors) = read_watches(&watches, Err(&"no procfs".to_string()), Ok(&hierarchy), &rates);
        assert_eq!(watched.len(), 301);
        for (n, entry) in watched.iter().take(300).enumerate() {
            assert_eq!(entry.name, format!("w{n}"));
            assert_eq!(entry.cgroup.as_ref().unwrap().memory_bytes, n as u64 * 4096);
        }
        assert!(watched[300].cgroup.is_none());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].error.starts_with("gone: "), "{errors:?}");
    }
}
