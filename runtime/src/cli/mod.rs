//! The `citadel` command line: one clap definition, one module per command.
//!
//! Exit codes: 0 success; 1 the job ran and failed; 2 bad input (flags,
//! configuration, payload, component) before anything ran.

mod agent;
mod fleet;
mod init;
mod inspect;
mod monitor;
mod node;
mod output;
mod registry;
mod run;
mod status;
mod submit;
mod up;
mod work;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, NoOverrides};
use crate::services::launch::ServiceExecArgs;

pub use agent::AgentArgs;
pub use fleet::FleetCommand;
pub use init::InitArgs;
pub use inspect::InspectArgs;
pub use monitor::MonitorArgs;
pub use node::NodeArgs;
pub use run::RunArgs;
pub use status::StatusArgs;
pub use submit::SubmitArgs;
pub use up::UpArgs;
pub use work::WorkArgs;

/// What citadel is, for its users: the opening of `citadel --help`.
macro_rules! about {
    () => {
        "citadel turns a Linux GPU machine into a safe, multi-tenant job worker: jobs arrive from \
Redis Streams (`citadel work`) or Citadel's Nexus API (`citadel agent`, `citadel up`), each runs in a \
WebAssembly sandbox under hard limits and may use only what its tenant's policy grants (the node's \
inference engines, containers, outbound HTTP), and the node pushes its status (CPU, memory, GPUs, \
services) to Redis and HTTP."
    };
}

/// `citadel --help`, in full.
const LONG_ABOUT: &str = concat!(
    about!(),
    "\n\nComing from Citadel: `citadel init` onboards the node (device authorization), `citadel up` \
starts its services and takes jobs, `citadel work` joins the Redis workers; Citadel's producers, job \
types (llm_inference, extraction, model_download, APPLY_DEVICE_CONFIG, shell_command) and CITADEL_* \
variables work as they are."
);

/// The `citadel` command line.
#[derive(Debug, Parser)]
#[command(name = "citadel", version, about = about!(), long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    /// Node configuration file (TOML); `CITADEL_<SECTION>__<KEY>` variables
    /// override its keys, flags override both.
    #[arg(long, global = true, env = "CITADEL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter for the node's own log on stderr (`warn`, `info`, `debug`,
    /// or a tracing filter such as `citadel=debug`). Default: `info` for
    /// `work`, `warn` otherwise.
    #[arg(long, global = true, env = "CITADEL_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// How the node's own log is written: `text` for people, `json` (one
    /// JSON object per line) for log aggregators.
    #[arg(long, global = true, env = "CITADEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people (colours on a terminal).
    Text,
    /// One JSON object per line (tracing's JSON layer).
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one job locally through a component (no Redis needed).
    Run(RunArgs),
    /// Work jobs from Redis Streams until SIGTERM/SIGINT.
    Work(WorkArgs),
    /// Take jobs from Citadel's Nexus HTTP API (on-prem, no Redis) until
    /// SIGTERM/SIGINT.
    Agent(AgentArgs),
    /// Onboard this node: device authorization with the control plane,
    /// the credential kept, the first status published with its device code.
    Init(InitArgs),
    /// Start the node's services, wait until they are healthy, then take
    /// jobs as `agent` does (Citadel's on-prem start).
    Up(UpArgs),
    /// Enqueue a job on Redis and optionally follow its events.
    Submit(SubmitArgs),
    /// Print this node's status: the running node's, else a local snapshot.
    Status(StatusArgs),
    /// Inspect handler components, publish them to the fleet, list and
    /// roll back what is published, make signing keys.
    #[command(subcommand)]
    Component(ComponentCommand),
    /// Watch the fleet: read every node's status, events and heartbeats,
    /// keep the registry, checks, alerts and history, notify webhooks and
    /// serve the API, until SIGTERM/SIGINT.
    Monitor(MonitorArgs),
    /// Ask a monitor about the fleet: nodes, alerts, events.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Join cgroups, then exec a program: how the node starts its services
    /// (internal).
    #[command(name = "service-exec", hide = true)]
    ServiceExec(ServiceExecArgs),
}

/// `citadel component ...`.
#[derive(Debug, Subcommand)]
pub enum ComponentCommand {
    /// Print a component's digest, size, imports (and the capabilities they
    /// need) and exports.
    Inspect(InspectArgs),
    /// Make an ed25519 key pair for signing published components.
    Keygen(registry::KeygenArgs),
    /// Publish a component as a job type's handler: store its bytes on
    /// Redis, point the job type at its digest, announce it to the nodes.
    Publish(registry::PublishArgs),
    /// List the published handlers.
    List(registry::ListArgs),
    /// Point a job type back at its previous published component.
    Rollback(registry::RollbackArgs),
}

/// A failure with its exit code and one-line reason.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: u8,
    /// The reason, printed as `citadel: <reason>`.
    pub reason: String,
}

impl Failure {
    /// Bad input: exit 2.
    pub fn input(reason: impl std::fmt::Display) -> Failure {
        Failure {
            code: 2,
            reason: reason.to_string(),
        }
    }

    /// The job failed: exit 1.
    pub fn job(reason: impl std::fmt::Display) -> Failure {
        Failure {
            code: 1,
            reason: reason.to_string(),
        }
    }
}

impl Cli {
    /// The log filter to use.
    pub fn log_filter(&self) -> String {
        let default = if matches!(
            self.command,
            Command::Work(_) | Command::Agent(_) | Command::Up(_) | Command::Monitor(_)
        ) {
            "info"
        } else {
            "warn"
        };
        self.log.clone().unwrap_or_else(|| default.to_string())
    }

    /// Run the chosen command.
    pub async fn execute(self) -> Result<(), Failure> {
        match self.command {
            Command::Run(args) => {
                let config = Config::load(self.config.as_deref(), args.overrides()).map_err(Failure::input)?;
                run::run(args, &config).await
            }
            Command::Work(args) => {
                let config = Config::load(self.config.as_deref(), args.overrides()).map_err(Failure::input)?;
                work::work(&config).await
            }
            Command::Agent(args) => {
                let config = Config::load(self.config.as_deref(), args.overrides()).map_err(Failure::input)?;
                agent::agent(&config).await
            }
            Command::Init(args) => {
                let config = Config::load(self.config.as_deref(), args.overrides()).map_err(Failure::input)?;
                init::init(args, &config).await
            }
            Command::Up(args) => {
                let config = Config::load(self.config.as_deref(), args.overrides()).map_err(Failure::input)?;
                up::up(args, &config).await
            }
            Command::Submit(args) => {
                let config = Config::load(self.config.as_deref(), args.overrides()).map_err(Failure::input)?;
                submit::submit(args, &config).await
            }
            Command::Status(args) => {
                let config = Config::load(self.config.as_deref(), args.overrides()).map_err(Failure::input)?;
                status::status(args, &config).await
            }
            Command::Component(ComponentCommand::Inspect(args)) => {
                let config = Config::load(self.config.as_deref(), NoOverrides {}).map_err(Failure::input)?;
                inspect::inspect(args, &config)
            }
            Command::Component(ComponentCommand::Keygen(args)) => registry::keygen(args),
            Command::Component(ComponentCommand::Publish(args)) => {
                let config = Config::load(self.config.as_deref(), args.registry.overrides()).map_err(Failure::input)?;
                registry::publish(args, &config).await
            }
            Command::Component(ComponentCommand::List(args)) => {
                let config = Config::load(self.config.as_deref(), args.registry.overrides()).map_err(Failure::input)?;
                registry::list(args, &config).await
            }
            Command::Component(ComponentCommand::Rollback(args)) => {
                let config = Config::load(self.config.as_deref(), args.registry.overrides()).map_err(Failure::input)?;
                registry::rollback(args, &config).await
            }
            Command::Monitor(args) => {
                let config = Config::load(self.config.as_deref(), args.overrides()).map_err(Failure::input)?;
                monitor::monitor(&config).await
            }
            Command::Fleet(command) => fleet::fleet(command).await,
            Command::ServiceExec(_) => Err(Failure::input("service-exec runs before the async runtime (main.rs)")),
        }
    }
}

/// The `--redis-url` flag of the commands that talk to Redis.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis URL (`redis_url`).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

#[derive(Serialize)]
struct RedisOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
}

impl RedisArgs {
    /// The config keys these flags set.
    fn overrides(&self) -> impl Serialize + use<> {
        RedisOverrides {
            redis_url: self.redis_url.clone(),
        }
    }
}

/// The configured Redis (no connection yet), or a failure saying how to
/// give one or what is wrong with it.
fn required_redis(config: &Config) -> Result<citadel_transports::redis::Endpoint, Failure> {
    config
        .redis()
        .map_err(|err| Failure::input(err.to_string()))?
        .ok_or_else(|| Failure::input("no Redis URL: give --redis-url or set redis_url"))
}

/// Exit code for a result of [`Cli::execute`], printing the reason.
pub fn exit_code(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("citadel: {}", failure.reason);
            ExitCode::from(failure.code)
        }
    }
}
