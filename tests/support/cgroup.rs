//! Real cgroups for tests and benches: groups under one parent in this
//! machine's hierarchy (v1: a directory in each of the cpuacct, memory and
//! blkio trees; v2: one directory), and processes that move themselves in
//! before they start working. Dropping it kills the processes and removes
//! the groups. Needs root and a writable cgroup tree (the test machines
//! have both).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citadel_collector::Hierarchy;

/// Groups under `citadel-test-<pid>-<nanos>`, with their processes.
pub struct TestCgroups {
    parent: String,
    mounts: Vec<PathBuf>,
    groups: Vec<String>,
    children: Vec<Child>,
}

impl TestCgroups {
    /// A fresh parent group in `hierarchy`.
    pub fn new(hierarchy: &Hierarchy) -> TestCgroups {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let parent = format!("citadel-test-{}-{nanos}", std::process::id());
        let mounts = match hierarchy {
            Hierarchy::V1 {
                cpuacct, memory, blkio, ..
            } => vec![cpuacct.clone(), memory.clone(), blkio.clone()],
            Hierarchy::V2 { root } => {
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory +io");
                vec![root.clone()]
            }
        };
        TestCgroups {
            parent,
            mounts,
            groups: Vec::new(),
            children: Vec::new(),
        }
    }

    /// `group`'s path relative to the hierarchy root (as a `Watch` names it).
    pub fn path(&self, group: &str) -> String {
        format!("{}/{group}", self.parent)
    }

    fn dirs(&self, group: &str) -> Vec<PathBuf> {
        self.mounts.iter().map(|mount| mount.join(self.path(group))).collect()
    }

    /// Run `script` with `sh` in `group` (created if new): the shell moves
    /// itself into the group first, so everything it runs or forks is in it.
    pub fn spawn(&mut self, group: &str, script: &str) -> u32 {
        if !self.groups.iter().any(|known| known == group) {
            for dir in self.dirs(group) {
                std::fs::create_dir_all(&dir).unwrap_or_else(|err| {
                    panic!(
                        "cannot create {} (needs root and a writable cgroup tree): {err}",
                        dir.display()
                    )
                });
            }
            self.groups.push(group.to_string());
        }
        let joins: String = self
            .dirs(group)
            .iter()
            .map(|dir| format!("echo $$ > {}/cgroup.procs; ", dir.display()))
            .collect();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{joins}{script}"))
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Wait until every spawned process is in its group.
    pub fn wait_joined(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for child in &self.children {
            let file = format!("/proc/{}/cgroup", child.id());
            while !std::fs::read_to_string(&file)
                .unwrap_or_default()
                .contains(&self.parent)
            {
                assert!(
                    Instant::now() < deadline,
                    "process {} did not join its cgroup",
                    child.id()
                );
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A group can be removed once its (reaped) processes have left it.
        let mut dirs: Vec<PathBuf> = self.groups.iter().flat_map(|group| self.dirs(group)).collect();
        dirs.extend(self.mounts.iter().map(|mount| mount.join(&self.parent)));
        for dir in dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() && std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
    }
}
