//! Telemetry cost.
//! - `snapshot_{10,100,1000}`: one `Collector::collect` over N managed
//!   processes, each in its own cgroup (v1 here: cpuacct, memory, blkio),
//!   against reading the same processes and groups with `cgroups-rs`'s
//!   controller API (every file of each controller), the straightforward
//!   way to get the same figures.
//! - `snapshot_cpu`: CPU time (not wall time) of one node snapshot with 10
//!   managed processes, against `sysinfo`'s `refresh_all` (what a generic
//!   system agent samples); at a 1 s status interval, CPU time per snapshot
//!   ÷ 1 s is the collector's share of a core.
//!
//! Needs root and a writable cgroup v1 tree (as the test machines have);
//! elsewhere the cgroup groups are skipped with a note.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cgroups_rs::fs::Cgroup;
use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::MemController;
use citadel_collector::{Collector, CollectorConfig, Hierarchy, ProcReader, Watch};
use cpu_time::ProcessTime;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// N processes, each asleep in its own cgroup; removed on drop.
struct ManagedProcesses {
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
    watches: Vec<Watch>,
}

impl ManagedProcesses {
    fn start(hierarchy: &Hierarchy, count: usize) -> Result<ManagedProcesses, String> {
        let Hierarchy::V1 {
            cpuacct, memory, blkio, ..
        } = hierarchy
        else {
            return Err("this bench places processes in cgroup v1 groups".into());
        };
        let mut managed = ManagedProcesses {
            dirs: Vec::new(),
            children: Vec::new(),
            watches: Vec::new(),
        };
        for n in 0..count {
            let group = format!("citadel-bench/p{n}");
            let dirs: Vec<PathBuf> = [cpuacct, memory, blkio]
                .iter()
                .map(|mount| mount.join(&group))
                .collect();
            for dir in &dirs {
                std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
            }
            let joins: String = dirs
                .iter()
                .map(|dir| format!("echo $$ > {}/cgroup.procs; ", dir.display()))
                .collect();
            let child = Command::new("sh")
                .arg("-c")
                .arg(format!("{joins}exec sleep 3600"))
                .spawn()
                .map_err(|err| err.to_string())?;
            managed.watches.push(Watch {
                name: format!("p{n}"),
                pid: Some(child.id()),
                cgroup: Some(group),
            });
            managed.children.push(child);
            managed.dirs.extend(dirs);
        }
        // Every process has joined its groups (and exec'd) before measuring.
        let procs = ProcReader::live()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        for watch in &managed.watches {
            while procs
                .read(watch.pid.unwrap())
                .map(|process| process.cmdline[0] != "sleep")
                .unwrap_or(true)
            {
                if Instant::now() > deadline {
                    return Err("managed processes did not start".into());
                }
                std::thread::yield_now();
            }
        }
        Ok(managed)
    }
}

impl Drop for ManagedProcesses {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        for dir in self.dirs.iter().filter_map(|dir| dir.parent()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The same figures through `cgroups-rs` (and the same procfs reads).
fn read_with_cgroups_rs(procs: &ProcReader, watches: &[Watch]) -> u64 {
    let mut total = 0;
    for watch in watches {
        let process = procs.read(watch.pid.unwrap()).expect("managed process");
        let group = Cgroup::load(cgroups_rs::fs::hierarchies::auto(), watch.cgroup.as_ref().unwrap());
        let cpu = group
            .controller_of::<CpuAcctController>()
            .expect("cpuacct")
            .cpuacct()
            .usage;
        let memory = group
            .controller_of::<MemController>()
            .expect("memory")
            .memory_stat()
            .usage_in_bytes;
        let io = group
            .controller_of::<BlkIoController>()
            .expect("blkio")
            .blkio()
            .throttle
            .io_service_bytes_total;
        total += process.rss_bytes + cpu + memory + io;
    }
    total
}

fn snapshots(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let collector = runtime.block_on(Collector::new(CollectorConfig::default()));
    let procs = ProcReader::live().expect("procfs");
    let hierarchy = match Hierarchy::detect() {
        Ok(hierarchy) => hierarchy,
        Err(err) => {
            eprintln!("snapshot benches skipped: {err}");
            return;
        }
    };
    for count in [10, 100, 1000] {
        let managed = match ManagedProcesses::start(&hierarchy, count) {
            Ok(managed) => managed,
            Err(err) => {
                eprintln!("snapshot_{count} skipped: {err}");
                continue;
            }
        };
        let mut group = c.benchmark_group(format!("snapshot_{count}"));
        group.sample_size(if count == 1000 { 20 } else { 50 });
        group.bench_function(BenchmarkId::from_parameter("collector"), |b| {
            b.iter(|| {
                let snapshot = runtime.block_on(collector.collect(&managed.watches));
                assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
                snapshot
            })
        });
        group.bench_function(BenchmarkId::from_parameter("cgroups_rs"), |b| {
            b.iter(|| read_with_cgroups_rs(&procs, &managed.watches))
        });
        group.finish();
    }

    // CPU time per snapshot, measured as process CPU time.
    let managed = ManagedProcesses::start(&hierarchy, 10).ok();
    let watches = managed
        .as_ref()
        .map(|managed| managed.watches.clone())
        .unwrap_or_default();
    let mut group = c.benchmark_group("snapshot_cpu");
    group.bench_function("node_snapshot", |b| {
        b.iter_custom(|iters| {
            let started = ProcessTime::now();
            for _ in 0..iters {
                runtime.block_on(collector.collect(&watches));
            }
            started.elapsed()
        })
    });
    let mut system = sysinfo::System::new().expect("sysinfo");
    group.bench_function("sysinfo_refresh_all", |b| {
        b.iter_custom(|iters| {
            let started = ProcessTime::now();
            for _ in 0..iters {
                system.refresh_all();
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, snapshots);
criterion_main!(benches);
