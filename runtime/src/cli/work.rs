//! `citadel work`: run the Redis Streams worker until SIGTERM/SIGINT. The
//! first signal drains (stop reading, let running jobs finish within
//! `worker.shutdown_grace_ms`, leave the rest pending) and exits 0; a second
//! signal exits at once. Beside the worker run the node's telemetry: status
//! pushed to Redis (and HTTP when configured) and the status server, the
//! node's `[[services]]`, and the reader of device configuration jobs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use citadel_collector::status::NodeMode;
use citadel_transports::redis::registry::Registry;

use super::{Failure, redis_client};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::handlers::dir::HandlerDir;
use crate::handlers::fleet::FleetHandlers;
use crate::handlers::{Handler, HandlerTable, NativeHandler};
use crate::node::NodeServices;
use crate::node::device::{APPLY_DEVICE_CONFIG, DeviceConfigurator};
use crate::sandbox::engine::Allocation;
use crate::sandbox::executor::Executor;
use crate::services::Supervisor;
use crate::shell::{SHELL_COMMAND, ShellHandler, ShellSettings};
use crate::sources::redis::{Worker, WorkerError};

/// Arguments of `citadel work` (each overrides its config key).
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Redis URL (`redis_url`).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// A queue to consume, `jobs:v1:<QUEUE>` (`worker.queues`; repeatable).
    #[arg(long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Consumer group (`worker.group`).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Jobs run at once (`worker.concurrency`).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// A handler: job type and component (`[handlers]`; repeatable).
    #[arg(long = "handler", value_name = "TYPE=FILE.wasm", value_parser = parse_handler)]
    pub handlers: Vec<(String, PathBuf)>,
    /// Tenant policy file (`policy`).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Node id (`node.id`).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Status server address (`telemetry.status_addr`; port 0: any free port).
    #[arg(long, value_name = "ADDR")]
    pub status_addr: Option<SocketAddr>,
}

pub(super) fn parse_handler(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((job_type, file)) if !job_type.is_empty() && !file.is_empty() => Ok((job_type.to_string(), file.into())),
        _ => Err(format!("expected TYPE=FILE.wasm, got {text:?}")),
    }
}

#[derive(Serialize)]
struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PathBuf>,
    node: NodeOverrides,
    worker: WorkerOverrides,
    handlers: BTreeMap<String, PathBuf>,
    telemetry: TelemetryOverrides,
}

/// `[telemetry]` keys set by flags (shared with `citadel agent`).
#[derive(Serialize)]
pub(super) struct TelemetryOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) status_addr: Option<SocketAddr>,
}

/// `[node]` keys set by flags (shared with `citadel agent`).
#[derive(Serialize)]
pub(super) struct NodeOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
}

#[derive(Serialize)]
struct WorkerOverrides {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    queues: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
}

impl WorkArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        Overrides {
            redis_url: self.redis_url.clone(),
            policy: self.policy.clone(),
            node: NodeOverrides {
                id: self.node_id.clone(),
            },
            worker: WorkerOverrides {
                queues: self.queues.clone(),
                group: self.group.clone(),
                concurrency: self.concurrency,
            },
            handlers: self.handlers.iter().cloned().collect(),
            telemetry: TelemetryOverrides {
                status_addr: self.status_addr,
            },
        }
    }
}

pub(super) async fn work(config: &Config) -> Result<(), Failure> {
    let dispatch = node_dispatcher(config)?;
    let worker = Worker::new(Arc::clone(&dispatch), config).map_err(Failure::input)?;
    let stop = CancellationToken::new();
    let services = drain_on_signal(&stop)?;
    let node = NodeServices::start(config, NodeMode::Redis, &dispatch, Some(&worker))
        .await
        .map_err(Failure::input)?;
    let _ = services.set(Arc::clone(&node.supervisor));
    let configurator = device_configurator(config, &node, dispatch.handlers());
    follow_fleet(config, &dispatch, &node, &stop).await?;
    let reader = device_config_reader(config, &worker, &configurator)?;
    let outcome = run_workers(&worker, reader.as_ref(), &stop).await;
    node.stop().await;
    outcome.map_err(|err| Failure::job(format!("worker failed: {err}")))
}

/// The node's dispatcher: its executor and its handlers, every component
/// loaded (a bad one stops the node before it takes a job), and
/// `shell_command` where the policy grants it to a tenant.
pub(super) fn node_dispatcher(config: &Config) -> Result<Arc<Dispatcher>, Failure> {
    let executor = Executor::from_config(config, Allocation::Pooling).map_err(Failure::input)?;
    let handlers =
        HandlerTable::load(executor.components(), &config.handlers_with_defaults()).map_err(Failure::input)?;
    if ShellHandler::granted_by(executor.policy()) && handlers.get(SHELL_COMMAND).is_none() {
        let settings = ShellSettings {
            launcher: std::env::current_exe()
                .map_err(|err| Failure::input(format!("cannot find the citadel binary for shell_command: {err}")))?,
            slice: config.cgroup_slice().to_string(),
        };
        let shell = ShellHandler::new(executor.policy().clone(), settings);
        handlers.restore(SHELL_COMMAND, Handler::Native(Arc::new(shell)));
        if !rustix::process::geteuid().is_root() {
            tracing::warn!(
                "shell_command is granted but the node does not run as root: its jobs fail until it does (each command runs as an unprivileged user in a cgroup of its own)"
            );
        }
    }
    Ok(Arc::new(Dispatcher::new(Arc::new(executor), handlers)))
}

/// Watch `components.dir` (scanned once before the first job) and follow
/// the handlers published to the fleet (`components.fleet`, with Redis):
/// one sync before the first job — a node that was down during a publish
/// starts on the current handler — then on every announcement until
/// `stop`. Status lists the handlers either way.
pub(super) async fn follow_fleet(
    config: &Config,
    dispatch: &Dispatcher,
    node: &NodeServices,
    stop: &CancellationToken,
) -> Result<(), Failure> {
    let (executor, handlers) = (dispatch.executor(), dispatch.handlers());
    if let Some(dir) = &config.components.dir {
        let watcher = Arc::new(HandlerDir::new(
            dir.clone(),
            Duration::from_millis(config.components.dir_poll_ms),
            Arc::clone(executor.components()),
            executor.policy().clone(),
            handlers.clone(),
        ));
        let scanner = Arc::clone(&watcher);
        tokio::task::spawn_blocking(move || scanner.scan())
            .await
            .map_err(|err| Failure::input(format!("cannot scan components.dir: {err}")))?;
        tokio::spawn(watcher.watch(Arc::clone(&node.telemetry), stop.clone()));
    }
    let Some(url) = config.redis_url.as_deref().filter(|_| config.components.fleet) else {
        node.telemetry.set_handlers(handlers.statuses());
        return Ok(());
    };
    let client = redis_client(url)?;
    let registry = Registry::new(&client).map_err(|err| Failure::input(format!("invalid redis_url {url:?}: {err}")))?;
    let fleet = Arc::new(FleetHandlers::new(
        registry,
        Arc::clone(executor.components()),
        executor.policy().clone(),
        config.components.trusted(),
        handlers.clone(),
    ));
    if let Err(err) = fleet.sync().await {
        tracing::warn!(error = %err, "cannot read the published handlers yet: starting with the configured ones");
    }
    fleet.report_to(Arc::clone(&node.telemetry));
    handlers.resolve_pins_with(fleet.clone());
    tokio::spawn(fleet.follow(client, stop.clone()));
    Ok(())
}

/// On SIGTERM/SIGINT fire `stop` (drain); on a second, kill the services
/// (once they are set in the returned cell) and exit 130.
pub(super) fn drain_on_signal(stop: &CancellationToken) -> Result<Arc<OnceLock<Arc<Supervisor>>>, Failure> {
    let mut terminate = signal(SignalKind::terminate()).map_err(Failure::input)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Failure::input)?;
    let on_signal = stop.clone();
    let services: Arc<OnceLock<Arc<Supervisor>>> = Arc::default();
    let services_on_signal = Arc::clone(&services);
    tokio::spawn(async move {
        tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
        tracing::info!("signal received: draining (send it again to exit at once)");
        on_signal.cancel();
        tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
        eprintln!(
            "citadel: second signal: killing the services and exiting without draining; unfinished jobs stay pending"
        );
        if let Some(supervisor) = services_on_signal.get() {
            supervisor.kill_now();
        }
        std::process::exit(130);
    });
    Ok(services)
}

/// The node's device configurator, acting on `node`; it also serves
/// `APPLY_DEVICE_CONFIG` jobs that arrive among the other jobs (a Nexus
/// job, a job queue) through `handlers`.
pub(super) fn device_configurator(
    config: &Config,
    node: &NodeServices,
    handlers: &HandlerTable,
) -> Arc<DeviceConfigurator> {
    let configurator = Arc::new(DeviceConfigurator::new(
        config,
        Arc::clone(&node.supervisor),
        Arc::clone(&node.telemetry),
    ));
    if handlers.get(APPLY_DEVICE_CONFIG).is_none() {
        handlers.restore(APPLY_DEVICE_CONFIG, Handler::Native(configurator.clone()));
    }
    configurator
}

/// The reader of `APPLY_DEVICE_CONFIG` jobs beside `worker`, applying them
/// with `configurator` (renaming both workers' events).
pub(super) fn device_config_reader(
    config: &Config,
    worker: &Worker,
    configurator: &Arc<DeviceConfigurator>,
) -> Result<Option<Worker>, Failure> {
    configurator.renames(worker);
    let handler: Arc<dyn NativeHandler> = configurator.clone();
    let device_handlers = HandlerTable::native([(APPLY_DEVICE_CONFIG.to_string(), handler)]);
    let reader = worker
        .device_config_reader(device_handlers, config)
        .map_err(Failure::input)?;
    if let Some(reader) = &reader {
        configurator.renames(reader);
    }
    Ok(reader)
}

/// Run the job worker and the device configuration reader until `stop`;
/// either failing stops both (a node without its job worker, or deaf to
/// device configuration, must not run on silently).
pub(super) async fn run_workers(
    worker: &Worker,
    reader: Option<&Worker>,
    stop: &CancellationToken,
) -> Result<(), WorkerError> {
    let Some(reader) = reader else {
        return worker.run(stop.clone()).await;
    };
    let jobs = async {
        let outcome = worker.run(stop.clone()).await;
        if outcome.is_err() {
            stop.cancel();
        }
        outcome
    };
    let device = async {
        let outcome = reader.run(stop.clone()).await;
        if let Err(err) = &outcome {
            tracing::error!(error = %err, "the device configuration reader failed; stopping the node");
            stop.cancel();
        }
        outcome
    };
    let (jobs, device) = tokio::join!(jobs, device);
    jobs.and(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_flags_are_type_equals_file() {
        assert_eq!(
            parse_handler("echo=guests/echo.wasm").unwrap(),
            ("echo".into(), PathBuf::from("guests/echo.wasm"))
        );
        assert!(parse_handler("echo").is_err());
        assert!(parse_handler("=x.wasm").is_err());
    }
}
