//! Starting a service's process inside its cgroup (`service_launch`): from
//! spawn to the program's exit, for a program that exits at once
//! (`/bin/true`), so what is measured is the start-up path.
//!
//! - `direct`: spawn the program, no cgroup (the floor);
//! - `shell_join`: `sh -c 'echo $$ > cgroup.procs…; exec true'`, the usual
//!   way to join before exec without a `pre_exec` hook;
//! - `citadel_launcher`: `citadel service-exec --join cgroup.procs… --
//!   true`, what the node runs (the binary of this profile: release under
//!   `scripts/bench`).
//!
//! Needs root and a writable cgroup tree; elsewhere the group is skipped
//! with a note.

use std::path::PathBuf;
use std::process::Command;

use citadel_benches::citadel_bin;
use citadel_runtime::config::Limits;
use citadel_runtime::services::cgroup::ServiceCgroup;
use criterion::{Criterion, criterion_group, criterion_main};

fn run(command: &mut Command) {
    let status = command.status().expect("spawn");
    assert!(status.success(), "{command:?} failed: {status}");
}

fn launch(c: &mut Criterion) {
    let path = format!("citadel-bench-{}.slice/services/launch", std::process::id());
    let group = match ServiceCgroup::create(&path, Limits::default()) {
        Ok(group) => group,
        Err(err) => {
            eprintln!("service_launch skipped: {err}");
            return;
        }
    };
    let joins: Vec<PathBuf> = group.procs_files().to_vec();
    let shell: String = joins
        .iter()
        .map(|file| format!("echo $$ > {}; ", file.display()))
        .chain(["exec /bin/true".to_string()])
        .collect();
    let citadel = citadel_bin();
    let mut bench = c.benchmark_group("service_launch");
    bench.bench_function("direct", |b| b.iter(|| run(&mut Command::new("/bin/true"))));
    bench.bench_function("shell_join", |b| {
        b.iter(|| run(Command::new("sh").arg("-c").arg(&shell)))
    });
    bench.bench_function("citadel_launcher", |b| {
        b.iter(|| {
            let mut command = Command::new(&citadel);
            command.arg("service-exec");
            for file in &joins {
                command.arg("--join").arg(file);
            }
            run(command.args(["--", "/bin/true"]))
        })
    });
    bench.finish();
    group.remove();
}

criterion_group!(benches, launch);
criterion_main!(benches);
