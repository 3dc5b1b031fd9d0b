//! What `citadel work`, `agent` and `up` share: the node's flags (one
//! struct, flattened into each command) and running the node until a
//! signal. The node itself is assembled by `crate::node::Node`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::Failure;
use super::up::wait_for_services;
use crate::config::Config;
use crate::node::{Node, Sources};
use crate::services::Supervisor;

/// The flags of every command that runs the node (each overrides its
/// config key).
#[derive(Debug, Args)]
pub struct NodeArgs {
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

fn parse_handler(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((job_type, file)) if !job_type.is_empty() && !file.is_empty() => Ok((job_type.to_string(), file.into())),
        _ => Err(format!("expected TYPE=FILE.wasm, got {text:?}")),
    }
}

/// The config keys a node command's flags set: the shared ones, the
/// command's `[worker]` keys and its own (`extra`, flattened in).
#[derive(Serialize)]
pub(super) struct NodeOverrides<W: Serialize, E: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PathBuf>,
    node: NodeKeys,
    worker: W,
    handlers: BTreeMap<String, PathBuf>,
    telemetry: TelemetryKeys,
    #[serde(flatten)]
    extra: E,
}

/// `[node]` keys set by flags (shared with `citadel init`).
#[derive(Serialize)]
pub(super) struct NodeKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
}

#[derive(Serialize)]
struct TelemetryKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    status_addr: Option<SocketAddr>,
}

impl NodeArgs {
    /// The keys these flags set, with the command's `worker` keys and its
    /// own `extra` ones.
    pub(super) fn overrides<W: Serialize, E: Serialize>(&self, worker: W, extra: E) -> NodeOverrides<W, E> {
        NodeOverrides {
            policy: self.policy.clone(),
            node: NodeKeys {
                id: self.node_id.clone(),
            },
            worker,
            handlers: self.handlers.iter().cloned().collect(),
            telemetry: TelemetryKeys {
                status_addr: self.status_addr,
            },
            extra,
        }
    }
}

/// Build the node taking jobs from `sources`, wait (with `wait_services`)
/// for its services to be healthy, then run it until SIGTERM/SIGINT: the
/// first drains (stop taking jobs, let running ones finish within
/// `worker.shutdown_grace_ms`, leave the rest for others) and exits 0; a
/// second kills the services and exits at once.
pub(super) async fn run_node(
    config: &Config,
    sources: Sources,
    wait_services: Option<Duration>,
) -> Result<(), Failure> {
    let stop = CancellationToken::new();
    let services = drain_on_signal(&stop)?;
    let node = Node::build(config, sources).await.map_err(Failure::input)?;
    let _ = services.set(Arc::clone(node.supervisor()));
    if let Some(within) = wait_services {
        let state_dir = config.state_dir();
        let waited = tokio::select! {
            waited = wait_for_services(node.supervisor(), within, &state_dir) => waited,
            _ = stop.cancelled() => Err(Failure::job("stopped before the services were up")),
        };
        if let Err(failure) = waited {
            node.abandon().await;
            return Err(failure);
        }
    }
    // On the runtime's workers, not the thread blocked on the command: the
    // tasks the node wakes are then woken from a worker, without a
    // cross-thread hand-off (and a futex wake-up) each.
    let ran = tokio::spawn(node.run(stop))
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
    ran.map_err(|err| Failure::job(format!("worker failed: {err}")))
}

/// On SIGTERM/SIGINT fire `stop` (drain); on a second, kill the services
/// (once they are set in the returned cell) and exit 130.
fn drain_on_signal(stop: &CancellationToken) -> Result<Arc<OnceLock<Arc<Supervisor>>>, Failure> {
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
