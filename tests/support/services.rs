//! Native services for tests: shell-script services, and a private cgroup
//! slice per test ([`TestSlice`]) that is emptied and removed afterwards even
//! when the test fails or the node was killed.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citadel_runtime::config::{RestartPolicy, ServiceSettings};

/// A service running `sh -c script`.
pub fn shell_service(name: &str, script: &str) -> ServiceSettings {
    ServiceSettings {
        name: name.into(),
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: Default::default(),
        cwd: None,
        group: "services".into(),
        cpu_limit: None,
        memory_limit: None,
        port: None,
        health_path: None,
        restart: RestartPolicy::OnFailure,
        stop_timeout_ms: 5_000,
        log_max_bytes: 1 << 20,
        autostart: true,
        models: Vec::new(),
    }
}

/// A cgroup slice of its own (`citadel-test-<pid>-<nanos>.slice`).
pub struct TestSlice {
    name: String,
}

impl Default for TestSlice {
    fn default() -> Self {
        Self::new()
    }
}

impl TestSlice {
    /// A fresh slice name (created by the node when it places a service).
    pub fn new() -> TestSlice {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        TestSlice {
            name: format!("citadel-test-{}-{nanos}.slice", std::process::id()),
        }
    }

    /// The slice, as `node.cgroup_slice`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A service's cgroup path relative to the hierarchy root.
    pub fn service_path(&self, service: &str) -> String {
        format!("{}/services/{service}", self.name)
    }

    /// Whether the machine runs cgroup v2 only.
    pub fn v2() -> bool {
        std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    }

    /// The directories of `relative` in every hierarchy this machine has.
    pub fn dirs(relative: &str) -> Vec<PathBuf> {
        if Self::v2() {
            return vec![PathBuf::from("/sys/fs/cgroup").join(relative)];
        }
        ["cpu", "cpuacct", "memory", "pids", "blkio"]
            .iter()
            .map(|controller| PathBuf::from("/sys/fs/cgroup").join(controller).join(relative))
            .collect()
    }

    /// A controller file of a service's group (`cpu.stat`, `memory.max`, ...).
    pub fn read(&self, service: &str, file: &str) -> String {
        let path = self.service_path(service);
        Self::dirs(&path)
            .into_iter()
            .map(|dir| dir.join(file))
            .find(|file| file.exists())
            .and_then(|file| std::fs::read_to_string(file).ok())
            .unwrap_or_else(|| panic!("no {file} for {path}"))
    }

    /// The processes in a service's group.
    pub fn procs(&self, service: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .read(service, "cgroup.procs")
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Whether the whole slice is gone from every hierarchy.
    pub fn gone(&self) -> bool {
        Self::dirs(&self.name).iter().all(|dir| !dir.exists())
    }

    /// Whether the service's group is gone from every hierarchy.
    pub fn removed(&self, service: &str) -> bool {
        Self::dirs(&self.service_path(service)).iter().all(|dir| !dir.exists())
    }
}

impl Drop for TestSlice {
    fn drop(&mut self) {
        for root in Self::dirs(&self.name) {
            if !root.exists() {
                continue;
            }
            let mut dirs: Vec<PathBuf> = walk(&root);
            // Deepest first, so each is empty of children when removed.
            dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
            for dir in dirs {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                    for pid in procs.lines() {
                        let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
                    }
                    if std::fs::remove_dir(&dir).is_ok() || !dir.exists() || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

fn walk(dir: &PathBuf) -> Vec<PathBuf> {
    let mut found = vec![dir.clone()];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            found.extend(walk(&entry.path()));
        }
    }
    found
}
