//! `citadel agent`: the on-prem node, taking jobs from Citadel's Nexus HTTP
//! API until SIGTERM/SIGINT (the first drains, a second exits at once),
//! with the node's telemetry, status server and services beside it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::agent::Agent;
use crate::config::Config;
use crate::engine::Allocation;
use crate::executor::Executor;
use crate::node::NodeServices;
use crate::worker::HandlerTable;

/// Arguments of `citadel agent` (each overrides its config key).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The Nexus API (`agent.nexus_url`).
    #[arg(long, value_name = "URL")]
    pub nexus_url: Option<String>,
    /// Bearer token for it (`agent.token`; prefer the config file or
    /// `CITADEL_AGENT__TOKEN` over the command line).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Wait after an empty poll, ms (`agent.poll_interval_ms`).
    #[arg(long, value_name = "MS")]
    pub poll_interval_ms: Option<u64>,
    /// Jobs run at once (`worker.concurrency`).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// A handler: job type and component (`[handlers]`; repeatable).
    #[arg(long = "handler", value_name = "TYPE=FILE.wasm", value_parser = super::work::parse_handler)]
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

#[derive(Serialize)]
struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PathBuf>,
    agent: AgentOverrides,
    node: NodeOverrides,
    worker: WorkerOverrides,
    handlers: BTreeMap<String, PathBuf>,
    telemetry: TelemetryOverrides,
}

#[derive(Serialize)]
struct AgentOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    nexus_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_interval_ms: Option<u64>,
}

#[derive(Serialize)]
struct NodeOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

#[derive(Serialize)]
struct WorkerOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
}

#[derive(Serialize)]
struct TelemetryOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    status_addr: Option<SocketAddr>,
}

impl AgentArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        Overrides {
            policy: self.policy.clone(),
            agent: AgentOverrides {
                nexus_url: self.nexus_url.clone(),
                token: self.token.clone(),
                poll_interval_ms: self.poll_interval_ms,
            },
            node: NodeOverrides {
                id: self.node_id.clone(),
            },
            worker: WorkerOverrides {
                concurrency: self.concurrency,
            },
            handlers: self.handlers.iter().cloned().collect(),
            telemetry: TelemetryOverrides {
                status_addr: self.status_addr,
            },
        }
    }
}

pub(super) async fn agent(config: &Config) -> Result<(), Failure> {
    let executor = Executor::from_config(config, Allocation::Pooling).map_err(Failure::input)?;
    let handlers =
        HandlerTable::load(executor.components(), &config.handlers_with_defaults()).map_err(Failure::input)?;
    if handlers.is_empty() {
        return Err(Failure::input(
            "no handlers: give --handler TYPE=FILE.wasm or a [handlers] table in the config",
        ));
    }
    let engines = Arc::clone(executor.engines());
    let agent = Arc::new(Agent::new(Arc::new(executor), handlers, config).map_err(Failure::input)?);
    let stop = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).map_err(Failure::input)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Failure::input)?;
    let node = NodeServices::start(config, "agent", None, engines)
        .await
        .map_err(Failure::input)?;
    let supervisor = Arc::clone(&node.supervisor);
    let on_signal = stop.clone();
    tokio::spawn(async move {
        tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
        tracing::info!("signal received: draining (send it again to exit at once)");
        on_signal.cancel();
        tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
        eprintln!("citadel: second signal: killing the services and exiting without draining");
        supervisor.kill_now();
        std::process::exit(130);
    });
    agent.run(stop).await;
    node.stop().await;
    Ok(())
}
