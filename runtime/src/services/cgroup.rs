//! A service's cgroup (`<slice>/<group>/<name>`), v1 or v2 through
//! `cgroups-rs`: created with its CPU and memory limits before the service
//! starts, joined by the service's launcher before it execs (see
//! [`super::launch`]), emptied and removed when the service stops.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, MaxValue, hierarchies};
use rustix::process::{Pid, Signal, kill_process};

use crate::config::Limits;

/// CFS period for CPU limits, µs (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The v1 controllers a service's group is created in (the collector reads
/// `cpuacct`, `memory` and `blkio`; `cpu` holds the quota).
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];

/// The v2 controllers enabled for a service's group, those the root offers.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// A service's own cgroup.
pub struct ServiceCgroup {
    path: String,
    cgroup: Cgroup,
    version: u8,
    procs_files: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    cpu_dir: Option<PathBuf>,
    pids_dir: Option<PathBuf>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for ServiceCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCgroup")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

impl ServiceCgroup {
    /// Create (or take over) the group at `path` (relative to the hierarchy
    /// root) and set `limits` on it; processes an earlier run of the node
    /// left in it are killed first, so the limits apply to an empty group.
    /// Fails when cgroups are not writable here or a limit cannot be set;
    /// [`ServiceCgroup::warnings`] says what is not enforced as asked.
    pub fn create(path: &str, limits: Limits) -> Result<ServiceCgroup, String> {
        let hierarchy = hierarchies::auto();
        let v2 = hierarchy.v2();
        let root = hierarchy.root();
        let mut warnings = Vec::new();
        let controllers: Vec<String> = if v2 {
            let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let has = |controller: &str| available.split_whitespace().any(|known| known == controller);
            for (controller, key, asked) in [
                ("cpu", "cpu_limit", limits.cpu_percent.is_some()),
                ("memory", "memory_limit", limits.memory_bytes.is_some()),
                ("pids", "pids_limit", limits.pids_max.is_some()),
            ] {
                if asked && !has(controller) {
                    warnings.push(format!(
                        "{key} is not enforced: the cgroup v2 controller `{controller}` is not available in {}",
                        root.display()
                    ));
                }
            }
            V2_CONTROLLERS
                .into_iter()
                .filter(|controller| has(controller))
                .map(String::from)
                .collect()
        } else {
            V1_CONTROLLERS.iter().map(|controller| controller.to_string()).collect()
        };
        let cgroup = Cgroup::new_with_specified_controllers(hierarchy, path, Some(controllers))
            .map_err(|err| format!("cannot create cgroup {path}: {}", describe(&err)))?;
        let subsystem_dirs: Vec<PathBuf> = cgroup
            .subsystems()
            .iter()
            .map(|subsystem| subsystem.to_controller().path().to_path_buf())
            .collect();
        let dir_with = |file: &str| -> Option<PathBuf> {
            if v2 {
                Some(root.join(path))
            } else {
                subsystem_dirs.iter().find(|dir| dir.join(file).exists()).cloned()
            }
        };
        let group = ServiceCgroup {
            path: path.to_string(),
            version: if v2 { 2 } else { 1 },
            procs_files: if v2 {
                vec![root.join(path).join("cgroup.procs")]
            } else {
                subsystem_dirs.iter().map(|dir| dir.join("cgroup.procs")).collect()
            },
            memory_dir: dir_with("memory.limit_in_bytes"),
            cpu_dir: dir_with("cpu.cfs_quota_us"),
            pids_dir: dir_with("pids.max"),
            warnings: Vec::new(),
            cgroup,
        };
        let leftovers = group.procs();
        if !leftovers.is_empty() {
            tracing::warn!(
                cgroup = %path,
                processes = leftovers.len(),
                "killing processes left in the service's cgroup by an earlier run"
            );
            group.kill_all(Duration::from_secs(5));
        }
        if let Err(problem) = group.set_limits(limits) {
            group.remove();
            return Err(problem);
        }
        warnings.extend(group.check_limits(limits));
        Ok(ServiceCgroup { warnings, ..group })
    }

    /// Write every limit, unset ones as unlimited (a reused group may hold
    /// an older configuration's).
    fn set_limits(&self, limits: Limits) -> Result<(), String> {
        let failed = |what: &str, err: cgroups_rs::fs::error::Error| {
            format!("cannot set {what} on cgroup {}: {}", self.path, describe(&err))
        };
        if let Some(memory) = self.cgroup.controller_of::<MemController>() {
            let bytes = limits.memory_bytes.map_or(-1, |bytes| bytes as i64);
            memory.set_limit(bytes).map_err(|err| failed("memory_limit", err))?;
            self.cap_swap(limits.memory_bytes);
        }
        if let Some(cpu) = self.cgroup.controller_of::<CpuController>() {
            let quota = limits
                .cpu_percent
                .map_or(-1, |percent| (CPU_PERIOD_US * u64::from(percent) / 100) as i64);
            cpu.set_cfs_quota_and_period(Some(quota), Some(CPU_PERIOD_US))
                .map_err(|err| failed("cpu_limit", err))?;
        }
        if let Some(pids) = self.cgroup.controller_of::<PidController>() {
            let max = limits.pids_max.map_or(MaxValue::Max, |max| MaxValue::Value(max as i64));
            pids.set_pid_max(max).map_err(|err| failed("pids_limit", err))?;
        }
        Ok(())
    }

    /// Swap would let a service exceed its memory limit without being
    /// OOM-killed: cap memory+swap at the limit where the kernel accounts it.
    fn cap_swap(&self, bytes: Option<u64>) {
        let Some(dir) = &self.memory_dir else { return };
        let (file, value) = match (self.version, bytes) {
            (2, Some(_)) => (dir.join("memory.swap.max"), "0".to_string()),
            (2, None) => (dir.join("memory.swap.max"), "max".to_string()),
            (_, Some(bytes)) => (dir.join("memory.memsw.limit_in_bytes"), bytes.to_string()),
            (_, None) => (dir.join("memory.memsw.limit_in_bytes"), "-1".to_string()),
        };
        if file.exists()
            && let Err(err) = std::fs::write(&file, value)
        {
            tracing::warn!(file = %file.display(), error = %err, "cannot cap the service's swap");
        }
    }

    /// Read the limits back: what the kernel does not hold as asked.
    fn check_limits(&self, limits: Limits) -> Vec<String> {
        let mut problems = Vec::new();
        let read = |dir: &Option<PathBuf>, file: &str| {
            dir.as_ref()
                .and_then(|dir| std::fs::read_to_string(dir.join(file)).ok())
                .map(|text| text.trim().to_string())
        };
        if let Some(bytes) = limits.memory_bytes {
            let file = if self.version == 2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            let held = read(&self.memory_dir, file);
            // The kernel rounds the limit down to whole pages.
            let expected = bytes - bytes % 4096;
            if held.as_deref().and_then(|held| held.parse::<u64>().ok()) != Some(expected) {
                problems.push(format!(
                    "memory_limit is not enforced: {file} holds {} instead of {expected}",
                    held.as_deref().unwrap_or("nothing")
                ));
            }
            if self.version == 1 && read(&self.memory_dir, "memory.memsw.limit_in_bytes").is_none() && swap_configured()
            {
                problems.push(
                    "swap is not accounted in this cgroup v1 hierarchy (no memory.memsw.limit_in_bytes): \
                     the service can swap beyond memory_limit"
                        .into(),
                );
            }
        }
        if let Some(max) = limits.pids_max {
            let held = read(&self.pids_dir, "pids.max");
            if held.as_deref() != Some(max.to_string().as_str()) {
                problems.push(format!(
                    "pids_limit is not enforced: pids.max holds {} instead of {max}",
                    held.as_deref().unwrap_or("nothing")
                ));
            }
        }
        if let Some(percent) = limits.cpu_percent {
            let quota = CPU_PERIOD_US * u64::from(percent) / 100;
            let (file, expected) = if self.version == 2 {
                ("cpu.max", format!("{quota} {CPU_PERIOD_US}"))
            } else {
                ("cpu.cfs_quota_us", quota.to_string())
            };
            let held = read(&self.cpu_dir, file);
            if held.as_deref() != Some(expected.as_str()) {
                problems.push(format!(
                    "cpu_limit is not enforced: {file} holds {} instead of {expected}",
                    held.as_deref().unwrap_or("nothing")
                ));
            }
        }
        problems
    }

    /// What is not enforced as configured (missing controllers, limits the
    /// kernel does not hold).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The group, relative to the hierarchy root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// cgroup version, 1 or 2.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> &[PathBuf] {
        &self.procs_files
    }

    /// The processes in the group.
    pub fn procs(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.cgroup.procs().into_iter().map(|pid| pid.pid as u32).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Processes the kernel has OOM-killed in this group so far.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory_dir else { return 0 };
        let file = if self.version == 2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL every process in the group until it is empty or `within`
    /// has passed (processes forked while this runs are caught by the next
    /// round).
    pub fn kill_all(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let pids = self.procs();
            if pids.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                tracing::error!(cgroup = %self.path, left = ?pids, "processes survived SIGKILL");
                return;
            }
            for pid in pids {
                if let Some(pid) = Pid::from_raw(pid as i32) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Remove the (empty) group, and its parents (`<slice>/<group>`) when
    /// no other service is left in them.
    pub fn remove(&self) {
        if let Err(err) = self.cgroup.delete() {
            tracing::warn!(cgroup = %self.path, error = %describe(&err), "cannot remove the service's cgroup");
            return;
        }
        let parents = self.path.matches('/').count();
        for file in &self.procs_files {
            let mut dir = file.parent().and_then(std::path::Path::parent);
            for _ in 0..parents {
                // Fails while another service's group is still in it.
                match dir {
                    Some(parent) if std::fs::remove_dir(parent).is_ok() => dir = parent.parent(),
                    _ => break,
                }
            }
        }
    }
}

/// Whether the machine has swap at all.
fn swap_configured() -> bool {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("SwapTotal:"))
        .is_some_and(|total| total.split_whitespace().next() != Some("0"))
}

/// A cgroups-rs error as `<what failed>: <cause>` (`fs error: Permission
/// denied (os error 13)`, `unable to write to a control group file
/// memory.max value 4096: Device or resource busy (os error 16)`): its own
/// `Display` prints the cause's `Debug`.
fn describe(err: &cgroups_rs::fs::error::Error) -> String {
    use std::error::Error as _;
    match err.source() {
        Some(cause) => format!("{}: {cause}", err.kind()),
        None => err.to_string(),
    }
}
