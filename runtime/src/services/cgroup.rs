//! A service's cgroup (`<slice>/<group>/<name>`), v1 or v2 through
//! `cgroups-rs`: created with its CPU and memory limits before the service
//! starts, joined by the service's launcher before it execs (see
//! [`super::launch`]), emptied and removed when the service stops.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cgroups_rs::fs::cgroup_builder::CgroupBuilder;
use cgroups_rs::fs::{Cgroup, hierarchies};
use rustix::process::{Pid, Signal, kill_process};

use crate::config::Limits;

/// CFS period for CPU limits, µs (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The v1 controllers a service's group is created in (the collector reads
/// `cpuacct`, `memory` and `blkio`; `cpu` holds the quota).
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];

/// A service's own cgroup.
pub struct ServiceCgroup {
    path: String,
    cgroup: Cgroup,
    version: u8,
    procs_files: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
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
    /// root) with `limits`. Processes left in it by an earlier run of the
    /// node are killed first. Fails when cgroups are not writable here.
    pub fn create(path: &str, limits: Limits) -> Result<ServiceCgroup, String> {
        let hierarchy = hierarchies::auto();
        let v2 = hierarchy.v2();
        let root = hierarchy.root();
        let controllers: Vec<String> = if v2 {
            let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            ["cpu", "memory", "pids", "io"]
                .into_iter()
                .filter(|controller| available.split_whitespace().any(|known| known == *controller))
                .map(String::from)
                .collect()
        } else {
            V1_CONTROLLERS.iter().map(|controller| controller.to_string()).collect()
        };
        let mut builder = CgroupBuilder::new(path).set_specified_controllers(controllers);
        if let Some(percent) = limits.cpu_percent {
            builder = builder
                .cpu()
                .period(CPU_PERIOD_US)
                .quota((CPU_PERIOD_US * u64::from(percent) / 100) as i64)
                .done();
        }
        if let Some(bytes) = limits.memory_bytes {
            builder = builder.memory().memory_hard_limit(bytes as i64).done();
        }
        let cgroup = builder
            .build(hierarchy)
            .map_err(|err| format!("cannot create cgroup {path}: {}", describe(&err)))?;
        let procs_files: Vec<PathBuf> = if v2 {
            vec![root.join(path).join("cgroup.procs")]
        } else {
            cgroup
                .subsystems()
                .iter()
                .map(|subsystem| subsystem.to_controller().path().join("cgroup.procs"))
                .collect()
        };
        let memory_dir = if v2 {
            Some(root.join(path))
        } else {
            cgroup
                .subsystems()
                .iter()
                .map(|subsystem| subsystem.to_controller().path().to_path_buf())
                .find(|dir| dir.join("memory.oom_control").exists())
        };
        let group = ServiceCgroup {
            path: path.to_string(),
            cgroup,
            version: if v2 { 2 } else { 1 },
            procs_files,
            memory_dir,
        };
        if limits.memory_bytes.is_some() {
            group.no_swap_beyond_limit(limits.memory_bytes.unwrap_or_default());
        }
        let leftovers = group.procs();
        if !leftovers.is_empty() {
            tracing::warn!(
                cgroup = %path,
                processes = leftovers.len(),
                "killing processes left in the service's cgroup by an earlier run"
            );
            group.kill_all(Duration::from_secs(5));
        }
        Ok(group)
    }

    /// Swap would let a service exceed its memory limit without being
    /// OOM-killed: cap memory+swap at the limit where the kernel accounts it.
    fn no_swap_beyond_limit(&self, bytes: u64) {
        let Some(dir) = &self.memory_dir else { return };
        let (file, value) = if self.version == 2 {
            (dir.join("memory.swap.max"), "0".to_string())
        } else {
            (dir.join("memory.memsw.limit_in_bytes"), bytes.to_string())
        };
        if file.exists()
            && let Err(err) = std::fs::write(&file, value)
        {
            tracing::warn!(file = %file.display(), error = %err, "cannot cap the service's swap");
        }
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

/// A cgroups-rs error by its cause (`Permission denied (os error 13)`)
/// when it has one: its own `Display` prints the cause's `Debug`.
fn describe(err: &cgroups_rs::fs::error::Error) -> String {
    use std::error::Error as _;
    match err.source() {
        Some(cause) => cause.to_string(),
        None => err.to_string(),
    }
}
