//! `citadel work`: the node on Redis Streams until SIGTERM/SIGINT (the
//! first drains, a second exits at once), with its telemetry, status
//! server, services and the reader of device configuration beside it.

use clap::Args;
use serde::Serialize;

use super::Failure;
use super::node::{NodeArgs, run_node};
use crate::config::Config;
use crate::node::Sources;

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
    /// The node's flags.
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Serialize)]
struct WorkerKeys {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    queues: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
}

#[derive(Serialize)]
struct RedisKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
}

impl WorkArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        let worker = WorkerKeys {
            queues: self.queues.clone(),
            group: self.group.clone(),
            concurrency: self.node.concurrency,
        };
        let redis = RedisKeys {
            redis_url: self.redis_url.clone(),
        };
        self.node.overrides(worker, redis)
    }
}

pub(super) async fn work(config: &Config) -> Result<(), Failure> {
    run_node(config, Sources::Redis, None).await
}
