//! The `citadel` binary: parse the command line, set up the node's own log,
//! run the command on a tokio runtime, exit with its code. Everything else
//! lives in the library (`cli` for the commands).

use std::process::ExitCode;

use citadel_runtime::cli::{Cli, Failure, exit_code};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(err) => {
            return exit_code(Err(Failure::input(format!(
                "--log {:?} is not a log filter: {err}",
                cli.log
            ))));
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return exit_code(Err(Failure::input(format!("cannot start the async runtime: {err}")))),
    };
    exit_code(runtime.block_on(cli.execute()))
}
