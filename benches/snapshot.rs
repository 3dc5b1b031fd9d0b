//! Telemetry cost.
//! - `snapshot_{10,100,1000}`: one `Collector::collect` over N managed
//!   processes, each in its own cgroup (v1 here: cpuacct, memory, blkio),
//!   against reading the same processes and groups with `cgroups-rs`'s
//!   controller API (every file of each controller; the groups loaded once,
//!   outside the measured loop), the straightforward way to get the same
//!   figures; and the floor: the same files the
//!   collector reads, each read whole by one thread (what the kernel
//!   charges for them).
//! - `snapshot_cpu`: CPU time (not wall time) of one node snapshot with 10
//!   managed processes, against `sysinfo`'s `refresh_all` (what a generic
//!   system agent samples); at a 1 s status interval, CPU time per snapshot
//!   ÷ 1 s is the collector's share of a core.
//!
//! - `gpu_sample`: one sample of every GPU through NVML against one
//!   `nvidia-smi --query-gpu` call (only where NVML loads and `nvidia-smi`
//!   is on PATH: the GPU machine).
//!
//! Needs root and a writable cgroup v1 tree (as the test machines have);
//! elsewhere the cgroup groups are skipped with a note. Processes and groups
//! come from the test harness (`citadel_tests::TestCgroups`).

use std::path::Path;
use std::time::Duration;

use cgroups_rs::fs::Cgroup;
use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::MemController;
use citadel_collector::gpu::Smi;
use citadel_collector::{Collector, CollectorConfig, GpuProbe, Hierarchy, ProcReader, Watch};
use citadel_tests::TestCgroups;
use cpu_time::ProcessTime;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// N processes, each asleep in its own cgroup, and their watches.
fn managed_processes(hierarchy: &Hierarchy, count: usize) -> (TestCgroups, Vec<Watch>) {
    let mut groups = TestCgroups::new(hierarchy);
    let watches = (0..count)
        .map(|n| {
            let name = format!("p{n}");
            let pid = groups.spawn(&name, "exec sleep 3600");
            Watch {
                pid: Some(pid),
                cgroup: Some(groups.path(&name)),
                name,
            }
        })
        .collect();
    groups.wait_joined(Duration::from_secs(60));
    (groups, watches)
}

/// The floor: the files the collector reads per watch in steady state
/// (v1), each read whole with `std::fs::read`, one thread.
fn read_the_files(hierarchy: &Hierarchy, watches: &[Watch]) -> usize {
    let Hierarchy::V1 {
        cpuacct, memory, blkio, ..
    } = hierarchy
    else {
        unreachable!("v1 only")
    };
    let mut bytes = 0;
    for watch in watches {
        let pid = watch.pid.unwrap();
        let group = watch.cgroup.as_ref().unwrap();
        for file in [
            format!("/proc/{pid}/stat"),
            format!("{}/{group}/cpuacct.usage", cpuacct.display()),
            format!("{}/{group}/memory.usage_in_bytes", memory.display()),
            format!("{}/{group}/memory.limit_in_bytes", memory.display()),
            format!("{}/{group}/blkio.throttle.io_service_bytes", blkio.display()),
            format!("{}/{group}/cgroup.procs", cpuacct.display()),
            format!("/proc/{pid}/io"),
        ] {
            bytes += std::fs::read(file).expect("readable").len();
        }
    }
    bytes
}

/// Each watch's group through `cgroups-rs`, loaded once (as a long-running
/// agent would keep them: the hierarchies' mount table is parsed here, not
/// per read).
fn load_with_cgroups_rs(watches: &[Watch]) -> Vec<Cgroup> {
    watches
        .iter()
        .map(|watch| Cgroup::load(cgroups_rs::fs::hierarchies::auto(), watch.cgroup.as_ref().unwrap()))
        .collect()
}

/// The same figures through `cgroups-rs` (and the same procfs reads).
fn read_with_cgroups_rs(procs: &ProcReader, watches: &[Watch], groups: &[Cgroup]) -> u64 {
    let mut total = 0;
    for (watch, group) in watches.iter().zip(groups) {
        let process = procs.read(watch.pid.unwrap()).expect("managed process");
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
    if !matches!(hierarchy, Hierarchy::V1 { .. }) {
        eprintln!("snapshot benches skipped: they place processes in cgroup v1 groups");
        return;
    }
    for count in [10, 100, 1000] {
        let (_groups, watches) = managed_processes(&hierarchy, count);
        let mut group = c.benchmark_group(format!("snapshot_{count}"));
        group.sample_size(if count == 1000 { 20 } else { 50 });
        group.bench_function(BenchmarkId::from_parameter("collector"), |b| {
            b.iter(|| {
                let snapshot = runtime.block_on(collector.collect(&watches));
                assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
                snapshot
            })
        });
        group.bench_function(BenchmarkId::from_parameter("file_floor"), |b| {
            b.iter(|| read_the_files(&hierarchy, &watches))
        });
        let loaded = load_with_cgroups_rs(&watches);
        group.bench_function(BenchmarkId::from_parameter("cgroups_rs"), |b| {
            b.iter(|| read_with_cgroups_rs(&procs, &watches, &loaded))
        });
        group.finish();
    }

    // CPU time per snapshot, measured as process CPU time.
    let (_groups, watches) = managed_processes(&hierarchy, 10);
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

fn gpu_samples(c: &mut Criterion) {
    let timeout = Duration::from_secs(5);
    let mut probe = GpuProbe::new(
        citadel_collector::GpuSourceChoice::Auto,
        "nvidia-smi",
        Path::new(citadel_collector::gpu::DRIVER_DIR),
    );
    if probe.source() != "nvml" || !citadel_collector::gpu::smi_available("nvidia-smi") {
        eprintln!(
            "gpu_sample skipped: needs NVML and nvidia-smi (source here: {})",
            probe.source()
        );
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let smi = Smi::new("nvidia-smi", timeout);
    let mut group = c.benchmark_group("gpu_sample");
    group.bench_function("nvml", |b| b.iter(|| probe.sample_blocking().expect("NVML sample")));
    group.sample_size(20);
    group.bench_function("nvidia_smi", |b| {
        b.iter(|| runtime.block_on(smi.sample()).expect("nvidia-smi sample"))
    });
    group.finish();
}

criterion_group!(benches, snapshots, gpu_samples);
criterion_main!(benches);
