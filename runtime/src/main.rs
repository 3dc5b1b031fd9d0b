//! The `citadel` binary: parse the command line, set up the node's own log,
//! run the command on a tokio runtime, exit with its code. Everything else
//! lives in the library (`cli` for the commands).

use std::io::IsTerminal;
use std::process::ExitCode;

use citadel_runtime::cli::{Cli, Command, Failure, LogFormat, exit_code};
use citadel_runtime::services::launch;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc: a busy node allocates per job on every thread, where glibc's
/// malloc spent a fifth of the worker's CPU (`benches/queues`, perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A service's launcher: no log, no runtime, straight to exec.
    if let Command::ServiceExec(args) = &cli.command {
        return launch::join_and_exec(args);
    }
    let log = cli.log_filter();
    let filter = match EnvFilter::try_new(&log) {
        Ok(filter) => filter,
        Err(err) => return exit_code(Err(Failure::input(format!("--log {log:?} is not a log filter: {err}")))),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => log.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return exit_code(Err(Failure::input(format!("cannot start the async runtime: {err}")))),
    };
    exit_code(runtime.block_on(cli.execute()))
}
