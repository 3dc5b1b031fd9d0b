//! Starting a service's process already inside its cgroup.
//!
//! The node does not start the service's program itself: it starts its own
//! binary as a small launcher (`citadel service-exec --join <cgroup.procs>…
//! -- <program> <args>…`), which writes its pid into the service's cgroup
//! and only then execs the program. The program's first instruction runs in
//! the cgroup, so nothing it forks can escape the limits, and no `unsafe`
//! `pre_exec` hook is needed. With `--user UID:GID` (shell commands) it
//! also sets `no_new_privs` and drops to that user and group, with no
//! supplementary groups, as it execs.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use clap::Args;

use super::cgroup::ServiceCgroup;
use crate::config::ServiceSettings;

/// The hidden subcommand that joins a cgroup and execs.
pub const SUBCOMMAND: &str = "service-exec";

/// Exit status of a launcher that could not join its cgroup or exec.
pub const LAUNCH_FAILED: u8 = 127;

/// Arguments of `citadel service-exec` (used by the node, not by people).
#[derive(Debug, Args)]
pub struct ServiceExecArgs {
    /// A `cgroup.procs` file to write this process's pid to (repeatable).
    #[arg(long = "join", value_name = "FILE")]
    pub join: Vec<PathBuf>,
    /// Run the program as this user and group (`no_new_privs` set, no
    /// supplementary groups).
    #[arg(long, value_name = "UID:GID", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub program: Vec<OsString>,
}

/// Join every group, then become the program. Returns only on failure.
pub fn join_and_exec(args: &ServiceExecArgs) -> ExitCode {
    let pid = std::process::id().to_string();
    for file in &args.join {
        if let Err(err) = std::fs::write(file, &pid) {
            eprintln!("citadel service-exec: cannot join cgroup {}: {err}", file.display());
            return ExitCode::from(LAUNCH_FAILED);
        }
    }
    let (program, rest) = args.program.split_first().expect("clap requires a program");
    let mut command = std::process::Command::new(program);
    command.args(rest);
    if let Some((uid, gid)) = args.user {
        // Setuid programs and file capabilities gain nothing from here on.
        if let Err(err) = rustix::thread::set_no_new_privs(true) {
            eprintln!("citadel service-exec: cannot set no_new_privs: {err}");
            return ExitCode::from(LAUNCH_FAILED);
        }
        // std drops the supplementary groups, then sets the group and the user.
        command.uid(uid).gid(gid);
    }
    let err = command.exec();
    eprintln!(
        "citadel service-exec: cannot run {}: {err}",
        Path::new(program).display()
    );
    ExitCode::from(LAUNCH_FAILED)
}

fn parse_user(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text.split_once(':').ok_or("expected UID:GID")?;
    let number = |part: &str| part.parse::<u32>().map_err(|_| format!("{part:?} is not a number"));
    Ok((number(uid)?, number(gid)?))
}

/// The command that starts `service`: through `launcher` (the citadel
/// binary) into `cgroup` when it has one, else directly. Its own process
/// group (a terminal's Ctrl-C reaches the node, which stops services in
/// order), stdin closed, stdout and stderr piped to the node's log writers,
/// the node's environment without its `CITADEL_*` settings plus the
/// service's `env`.
pub fn command(service: &ServiceSettings, launcher: &Path, cgroup: Option<&ServiceCgroup>) -> tokio::process::Command {
    let mut command = match cgroup {
        Some(cgroup) => {
            let mut command = tokio::process::Command::new(launcher);
            command.arg(SUBCOMMAND);
            for file in cgroup.procs_files() {
                command.arg("--join").arg(file);
            }
            command.arg("--").arg(&service.command).args(&service.args);
            command
        }
        None => {
            let mut command = tokio::process::Command::new(&service.command);
            command.args(&service.args);
            command
        }
    };
    // The node's own settings (a Redis URL with its password, an HTTP
    // token) are not the service's business.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CITADEL_") {
            command.env_remove(key);
        }
    }
    command
        .envs(&service.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &service.cwd {
        command.current_dir(dir);
    }
    command
}
