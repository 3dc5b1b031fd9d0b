//! Control-group statistics, cgroup v1 and v2: CPU use from usage deltas
//! over wall time, memory and its limit, and I/O read/write rates from byte
//! counter deltas. A group's first sample has no rates yet (`None`, never a
//! made-up 0).
//!
//! Where the hierarchy is mounted comes from `cgroups-rs`; the counters are
//! read from the four files that hold them. (`cgroups-rs`'s controllers read
//! every file of a controller per call, some twenty for blkio, which does not
//! fit a budget of 50 ms for a thousand groups.) Every reader takes a root
//! path, so tests run on fixture trees as well as on the live system.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use procfs::FromRead;
use serde::{Deserialize, Serialize};

/// Where the controllers this module reads are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: one mount per controller.
    V1 {
        /// The `cpuacct` controller's mount.
        cpuacct: PathBuf,
        /// The `memory` controller's mount.
        memory: PathBuf,
        /// The `blkio` controller's mount.
        blkio: PathBuf,
        /// procfs (`/proc`): v1 I/O is counted per process (see [`Hierarchy::read`]).
        proc: PathBuf,
    },
    /// cgroup v2: one unified mount.
    V2 {
        /// The unified mount.
        root: PathBuf,
    },
}

/// Raw counters of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// CPU time used, ns.
    pub cpu_usage_ns: u64,
    /// Memory charged, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (`None`: unlimited).
    pub memory_limit_bytes: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
}

/// One group's statistics in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// The group, relative to the hierarchy root.
    pub path: String,
    /// cgroup version, 1 or 2.
    pub version: u8,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Memory charged, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (absent: unlimited).
    pub memory_limit_bytes: Option<u64>,
    /// Bytes read per second since the previous sample.
    pub io_read_bytes_per_s: Option<f64>,
    /// Bytes written per second since the previous sample.
    pub io_write_bytes_per_s: Option<f64>,
}

/// v1 reports "no limit" as a page-rounded `i64::MAX`.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

impl Hierarchy {
    /// The live system's hierarchy: v2 when `/sys/fs/cgroup` is a unified
    /// mount, else the v1 mounts of `cpuacct`, `memory` and `blkio` (the
    /// hybrid layout, v1 controllers beside an empty v2 mount, is v1).
    pub fn detect() -> Result<Hierarchy, String> {
        use cgroups_rs::fs::Controllers;
        use cgroups_rs::fs::hierarchies::{self, V1};
        if hierarchies::is_cgroup2_unified_mode() {
            return Ok(Hierarchy::V2 {
                root: PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT),
            });
        }
        let v1 = V1::new();
        let mount = |controller: Controllers| {
            v1.get_mount_point(controller.clone())
                .map(|(mount, _)| mount)
                .ok_or_else(|| format!("cgroup v1 controller `{controller}` is not mounted"))
        };
        Ok(Hierarchy::V1 {
            cpuacct: mount(Controllers::CpuAcct)?,
            memory: mount(Controllers::Mem)?,
            blkio: mount(Controllers::BlkIo)?,
            proc: PathBuf::from("/proc"),
        })
    }

    /// A v1 tree under `root` (`root/cpuacct`, `root/memory`, `root/blkio`,
    /// and `root/proc` for the processes' I/O).
    pub fn v1(root: &Path) -> Hierarchy {
        Hierarchy::V1 {
            cpuacct: root.join("cpuacct"),
            memory: root.join("memory"),
            blkio: root.join("blkio"),
            proc: root.join("proc"),
        }
    }

    /// A v2 tree under `root`.
    pub fn v2(root: &Path) -> Hierarchy {
        Hierarchy::V2 {
            root: root.to_path_buf(),
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self {
            Hierarchy::V1 { .. } => 1,
            Hierarchy::V2 { .. } => 2,
        }
    }

    /// Read the counters of `group` (a path relative to the root).
    ///
    /// v1 I/O: current kernels keep `blkio.throttle.io_service_bytes` only
    /// for devices with a throttle rule (and the `bfq` files only under the
    /// bfq scheduler), so unless those count something, a v1 group's I/O is
    /// the sum of its processes' `/proc/<pid>/io` storage bytes.
    pub fn read(&self, group: &str) -> Result<Counters, String> {
        let group = group.trim_start_matches('/');
        match self {
            Hierarchy::V1 {
                cpuacct,
                memory,
                blkio,
                proc,
            } => {
                let limit = read_u64(&memory.join(group).join("memory.limit_in_bytes"))?;
                let (io_read_bytes, io_write_bytes) = match blkio_bytes(&blkio.join(group))? {
                    (0, 0) => processes_io(&cpuacct.join(group), proc)?,
                    counted => counted,
                };
                Ok(Counters {
                    cpu_usage_ns: read_u64(&cpuacct.join(group).join("cpuacct.usage"))?,
                    memory_bytes: read_u64(&memory.join(group).join("memory.usage_in_bytes"))?,
                    memory_limit_bytes: (limit < V1_UNLIMITED).then_some(limit),
                    io_read_bytes,
                    io_write_bytes,
                })
            }
            Hierarchy::V2 { root } => {
                let dir = root.join(group);
                let usage_usec = keyed(&read(&dir.join("cpu.stat"))?, "usage_usec")
                    .ok_or_else(|| format!("{}: no usage_usec", dir.join("cpu.stat").display()))?;
                let max = read(&dir.join("memory.max"))?;
                let (io_read_bytes, io_write_bytes) = io_stat_bytes(&read(&dir.join("io.stat"))?);
                Ok(Counters {
                    cpu_usage_ns: usage_usec.saturating_mul(1_000),
                    memory_bytes: read_u64(&dir.join("memory.current"))?,
                    memory_limit_bytes: max.trim().parse().ok(),
                    io_read_bytes,
                    io_write_bytes,
                })
            }
        }
    }
}

impl Hierarchy {
    /// The processes in `group` (a path relative to the root).
    pub fn procs(&self, group: &str) -> Result<Vec<u32>, String> {
        let group = group.trim_start_matches('/');
        let dir = match self {
            Hierarchy::V1 { cpuacct, .. } => cpuacct.join(group),
            Hierarchy::V2 { root } => root.join(group),
        };
        Ok(read(&dir.join("cgroup.procs"))?
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect())
    }
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))
}

fn read_u64(path: &Path) -> Result<u64, String> {
    let text = read(path)?;
    text.trim()
        .parse()
        .map_err(|err| format!("{}: {err} in {:?}", path.display(), text.trim()))
}

/// `key value` lines (v2 `cpu.stat`): the value of `key`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
}

/// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N …` per device, summed.
fn io_stat_bytes(text: &str) -> (u64, u64) {
    let mut totals = (0, 0);
    for field in text.split_whitespace() {
        if let Some(bytes) = field.strip_prefix("rbytes=").and_then(|n| n.parse::<u64>().ok()) {
            totals.0 += bytes;
        } else if let Some(bytes) = field.strip_prefix("wbytes=").and_then(|n| n.parse::<u64>().ok()) {
            totals.1 += bytes;
        }
    }
    totals
}

/// v1 `blkio.throttle.io_service_bytes`: `MAJ:MIN Read N` / `MAJ:MIN Write N`
/// per device (and a `Total` line), summed. The throttle files count I/O of
/// every device regardless of the I/O scheduler.
fn blkio_bytes(dir: &Path) -> Result<(u64, u64), String> {
    let text = read(&dir.join("blkio.throttle.io_service_bytes"))?;
    let mut totals = (0, 0);
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(kind), Some(bytes)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let bytes: u64 = bytes.parse().unwrap_or(0);
        match kind {
            "Read" => totals.0 += bytes,
            "Write" => totals.1 += bytes,
            _ => {}
        }
    }
    Ok(totals)
}

/// Storage bytes read and written by the processes of the v1 group at
/// `dir` (from `cgroup.procs`), per `/proc/<pid>/io`. A process that exits
/// meanwhile is skipped.
fn processes_io(dir: &Path, proc: &Path) -> Result<(u64, u64), String> {
    let mut totals = (0, 0);
    for pid in read(&dir.join("cgroup.procs"))?.lines().filter(|line| !line.is_empty()) {
        let Ok(io) = procfs::process::Io::from_file(proc.join(pid).join("io")) else {
            continue;
        };
        totals.0 += io.read_bytes;
        totals.1 += io.write_bytes;
    }
    Ok(totals)
}

/// Turns successive counters into rates.
#[derive(Debug, Default)]
pub struct Rates {
    previous: HashMap<String, (Instant, Counters)>,
}

impl Rates {
    /// Statistics of `group` from `counters` read `at`, with rates against
    /// its previous sample (none on the first).
    pub fn update(&mut self, group: &str, version: u8, counters: Counters, at: Instant) -> CgroupStats {
        let previous = self.previous.insert(group.to_string(), (at, counters));
        let rates = previous.and_then(|(then, before)| {
            let seconds = at.duration_since(then).as_secs_f64();
            (seconds > 0.0).then(|| {
                let per_second = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
                (
                    per_second(counters.cpu_usage_ns, before.cpu_usage_ns) / 1e9 * 100.0,
                    per_second(counters.io_read_bytes, before.io_read_bytes),
                    per_second(counters.io_write_bytes, before.io_write_bytes),
                )
            })
        });
        CgroupStats {
            path: group.to_string(),
            version,
            cpu_percent: rates.map(|rates| rates.0),
            memory_bytes: counters.memory_bytes,
            memory_limit_bytes: counters.memory_limit_bytes,
            io_read_bytes_per_s: rates.map(|rates| rates.1),
            io_write_bytes_per_s: rates.map(|rates| rates.2),
        }
    }

    /// Forget groups not in `keep` (gone services).
    pub fn retain(&mut self, keep: &[String]) {
        self.previous.retain(|group, _| keep.contains(group));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_a_v2_fixture_tree() {
        let root = tempfile::tempdir().unwrap();
        let group = "citadel.slice/engines/llama";
        write(
            root.path(),
            &format!("{group}/cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        );
        write(root.path(), &format!("{group}/memory.current"), "104857600\n");
        write(root.path(), &format!("{group}/memory.max"), "4294967296\n");
        write(
            root.path(),
            &format!("{group}/io.stat"),
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n259:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
        );
        let counters = Hierarchy::v2(root.path()).read(group).unwrap();
        assert_eq!(
            counters,
            Counters {
                cpu_usage_ns: 2_500_000_000,
                memory_bytes: 104_857_600,
                memory_limit_bytes: Some(4_294_967_296),
                io_read_bytes: 4196,
                io_write_bytes: 8192
            }
        );
        write(root.path(), &format!("{group}/memory.max"), "max\n");
        assert_eq!(Hierarchy::v2(root.path()).read(group).unwrap().memory_limit_bytes, None);
    }

    #[test]
    fn reads_a_v1_fixture_tree() {
        let root = tempfile::tempdir().unwrap();
        let group = "citadel.slice/engines/llama";
        write(root.path(), &format!("cpuacct/{group}/cpuacct.usage"), "123456789\n");
        write(root.path(), &format!("memory/{group}/memory.usage_in_bytes"), "2048\n");
        write(
            root.path(),
            &format!("memory/{group}/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            root.path(),
            &format!("blkio/{group}/blkio.throttle.io_service_bytes"),
            "8:0 Read 512\n8:0 Write 1024\n8:0 Sync 0\n8:0 Async 1536\n8:0 Total 1536\nTotal 1536\n",
        );
        let counters = Hierarchy::v1(root.path()).read(group).unwrap();
        assert_eq!(counters.cpu_usage_ns, 123_456_789);
        assert_eq!(counters.memory_limit_bytes, None, "v1's unlimited");
        assert_eq!((counters.io_read_bytes, counters.io_write_bytes), (512, 1024));

        // No throttle rule, nothing counted there: the processes' own I/O.
        write(
            root.path(),
            &format!("blkio/{group}/blkio.throttle.io_service_bytes"),
            "Total 0\n",
        );
        write(root.path(), &format!("cpuacct/{group}/cgroup.procs"), "41\n42\n43\n");
        let io = |read: u64, written: u64| {
            format!(
                "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: {read}\nwrite_bytes: {written}\ncancelled_write_bytes: 0\n"
            )
        };
        write(root.path(), "proc/41/io", &io(4096, 8192));
        write(root.path(), "proc/42/io", &io(100, 0));
        // 43 exited between the two reads: skipped.
        let counters = Hierarchy::v1(root.path()).read(group).unwrap();
        assert_eq!((counters.io_read_bytes, counters.io_write_bytes), (4196, 8192));
    }

    #[test]
    fn missing_files_name_the_file() {
        let root = tempfile::tempdir().unwrap();
        let err = Hierarchy::v2(root.path()).read("nope").unwrap_err();
        assert!(err.contains("nope/cpu.stat"), "{err}");
    }

    #[test]
    fn rates_come_from_deltas_and_not_before_two_samples() {
        let mut rates = Rates::default();
        let start = Instant::now();
        let first = Counters {
            cpu_usage_ns: 1_000_000_000,
            io_write_bytes: 0,
            ..Counters::default()
        };
        let stats = rates.update("g", 2, first, start);
        assert_eq!((stats.cpu_percent, stats.io_write_bytes_per_s), (None, None));
        let second = Counters {
            cpu_usage_ns: 1_500_000_000,
            io_write_bytes: 2_000_000,
            ..Counters::default()
        };
        let stats = rates.update("g", 2, second, start + Duration::from_secs(2));
        assert_eq!(stats.cpu_percent, Some(25.0));
        assert_eq!(stats.io_write_bytes_per_s, Some(1_000_000.0));
        rates.retain(&[]);
        assert_eq!(
            rates.update("g", 2, second, start + Duration::from_secs(3)).cpu_percent,
            None
        );
    }
}
