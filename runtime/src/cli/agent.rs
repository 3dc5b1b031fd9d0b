//! `citadel agent`: the on-prem node, taking jobs from Citadel's Nexus HTTP
//! API until SIGTERM/SIGINT (the first drains, a second exits at once),
//! with the node's telemetry, status server and services beside it. With a
//! Redis URL as well, it works from Redis Streams (and reads device
//! configuration) while Redis answers, and from Nexus while it does not.

use clap::Args;
use serde::Serialize;

use super::Failure;
use super::node::{NodeArgs, run_node};
use crate::config::Config;
use crate::node::Sources;

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
    /// The node's flags.
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Serialize)]
struct AgentKeys {
    agent: NexusKeys,
}

#[derive(Serialize)]
struct NexusKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    nexus_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_interval_ms: Option<u64>,
}

#[derive(Serialize)]
struct WorkerKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
}

impl AgentArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        let agent = AgentKeys {
            agent: NexusKeys {
                nexus_url: self.nexus_url.clone(),
                token: self.token.clone(),
                poll_interval_ms: self.poll_interval_ms,
            },
        };
        let worker = WorkerKeys {
            concurrency: self.node.concurrency,
        };
        self.node.overrides(worker, agent)
    }
}

pub(super) async fn agent(config: &Config) -> Result<(), Failure> {
    run_node(config, Sources::Nexus, None).await
}
