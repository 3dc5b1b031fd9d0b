//! `citadel agent`: the on-prem node, taking jobs from Citadel's Nexus HTTP
//! API until SIGTERM/SIGINT (the first drains, a second exits at once),
//! with the node's telemetry, status server and services beside it. With a
//! Redis URL as well, it works from Redis Streams (and reads device
//! configuration) while Redis answers, and from Nexus while it does not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use citadel_transports::redis::listen_for_wake;
use clap::Args;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::up::wait_for_services;
use super::work::{
    NodeOverrides, TelemetryOverrides, device_config_reader, device_configurator, drain_on_signal, follow_fleet,
    node_dispatcher, run_workers,
};
use super::{Failure, redis_client};
use crate::config::Config;
use crate::node::NodeServices;
use crate::sources::nexus::{Agent, Source, follow_redis};
use crate::sources::redis::{Worker, WorkerError};

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
struct WorkerOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
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
    run_agent(config, None).await
}

/// Run the agent; with `wait_services`, first wait that long at most for
/// the node's services to be healthy (`citadel up`).
pub(super) async fn run_agent(config: &Config, wait_services: Option<Duration>) -> Result<(), Failure> {
    let dispatch = node_dispatcher(config)?;
    if dispatch.handlers().is_empty() && !config.handlers_can_arrive() {
        return Err(Failure::input(WorkerError::NoHandlers));
    }
    // With Redis too, the node works from Redis while it answers.
    let worker = match &config.redis_url {
        Some(_) => Some(Worker::new(Arc::clone(&dispatch), config).map_err(Failure::input)?),
        None => None,
    };
    let initial = if worker.is_some() { Source::Redis } else { Source::Nexus };
    let (source, following) = watch::channel(initial);
    let wake = Arc::new(Notify::new());
    let agent = Agent::new(Arc::clone(&dispatch), config)
        .map_err(Failure::input)?
        .switched_by(following, Arc::clone(&wake));
    let stop = CancellationToken::new();
    let services = drain_on_signal(&stop)?;
    let node = NodeServices::start(config, initial.mode(), &dispatch, worker.as_ref())
        .await
        .map_err(Failure::input)?;
    let _ = services.set(Arc::clone(&node.supervisor));
    if let Some(within) = wait_services {
        let state_dir = config.state_dir();
        let waited = tokio::select! {
            waited = wait_for_services(&node.supervisor, within, &state_dir) => waited,
            _ = stop.cancelled() => Err(Failure::job("stopped before the services were up")),
        };
        if let Err(failure) = waited {
            node.stop().await;
            return Err(failure);
        }
    }
    let agent = Arc::new(agent);
    node.telemetry.count_jobs_of(agent.stats());
    let configurator = device_configurator(config, &node, dispatch.handlers());
    follow_fleet(config, &dispatch, &node, &stop).await?;
    let Some(worker) = worker else {
        agent.run(stop).await;
        node.stop().await;
        return Ok(());
    };
    let url = config.redis_url.as_deref().unwrap_or_default();
    let client = redis_client(url)?;
    tokio::spawn(listen_for_wake(client, config.node_id(), wake, stop.clone()));
    tokio::spawn(follow_redis(
        worker.clone(),
        source,
        Arc::clone(&node.telemetry),
        stop.clone(),
    ));
    let reader = device_config_reader(config, &worker, &configurator)?;
    let (outcome, ()) = tokio::join!(run_workers(&worker, reader.as_ref(), &stop), agent.run(stop.clone()));
    node.stop().await;
    outcome.map_err(|err| Failure::job(format!("worker failed: {err}")))
}
