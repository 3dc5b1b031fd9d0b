//! Starting a process the node manages, for a program that exits at once
//! (`/bin/true`), so what is measured is the start-up path.
//!
//! `service_launch`: a service's process inside its cgroup, from spawn to
//! the program's exit.
//!
//! - `direct`: spawn the program, no cgroup (the floor);
//! - `shell_join`: `sh -c 'echo $$ > cgroup.procs…; exec true'`, the usual
//!   way to join before exec without a `pre_exec` hook;
//! - `citadel_launcher`: `citadel service-exec --join cgroup.procs… --
//!   true`, what the node runs (the binary of this profile: release under
//!   `scripts/bench`).
//!
//! `shell_command`: one whole `shell_command` run, start to end.
//!
//! - `direct`: spawn the program as root, no cgroup (the floor);
//! - `setpriv`: `setpriv --reuid … --regid … --clear-groups -- true`, the
//!   usual way to run a program as another user (no cgroup, no limits);
//! - `citadel`: what the node does per command: a cgroup of its own with
//!   CPU, memory and pids limits (each read back), the launcher joining
//!   it, `no_new_privs` and the user switch, the wait, then emptying and
//!   removing the group.
//!
//! Needs root and a writable cgroup tree (and the `citadel-shell` user for
//! `shell_command`); elsewhere a group is skipped with a note.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use citadel_benches::citadel_bin;
use citadel_runtime::config::Limits;
use citadel_runtime::services::cgroup::ServiceCgroup;
use citadel_runtime::shell::{CommandRun, ShellSettings};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

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

/// `id -u citadel-shell` and `id -g citadel-shell`, when the user exists.
fn shell_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, "citadel-shell"]).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn shell_command(c: &mut Criterion) {
    let Some((uid, gid)) = shell_user() else {
        eprintln!("shell_command skipped: no citadel-shell user (scripts/test creates it)");
        return;
    };
    let settings = ShellSettings {
        launcher: citadel_bin(),
        slice: format!("citadel-bench-{}.slice", std::process::id()),
    };
    let command = CommandRun {
        job_id: "bench".into(),
        program: "/bin/true".into(),
        args: Vec::new(),
        uid,
        gid,
        env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
        cwd: "/".into(),
        cpu_percent: 100,
        memory_bytes: 256 << 20,
        pids_max: 64,
        timeout: Duration::from_secs(30),
        stop_grace: Duration::from_secs(2),
        max_output_bytes: 1 << 20,
        max_chunk_bytes: 64 << 10,
        max_chunks_per_second: 1000,
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cancel = CancellationToken::new();
    let run_command = || runtime.block_on(command.clone().run(&settings, None, &cancel));
    if let Err(err) = run_command() {
        eprintln!("shell_command skipped: {err}");
        return;
    }
    let (user, group) = (uid.to_string(), gid.to_string());
    let mut bench = c.benchmark_group("shell_command");
    bench.bench_function("direct", |b| b.iter(|| run(&mut Command::new("/bin/true"))));
    bench.bench_function("setpriv", |b| {
        b.iter(|| {
            run(Command::new("setpriv").args([
                "--reuid",
                &user,
                "--regid",
                &group,
                "--clear-groups",
                "--",
                "/bin/true",
            ]))
        })
    });
    bench.bench_function("citadel", |b| {
        b.iter(|| {
            let finished = run_command().expect("shell command");
            assert_eq!(finished.exit_code, Some(0));
        })
    });
    // Each run removed its group and, once empty, the bench's slice.
    bench.finish();
}

criterion_group!(benches, launch, shell_command);
criterion_main!(benches);
