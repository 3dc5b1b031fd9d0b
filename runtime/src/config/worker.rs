//! `[worker]`: the Redis Streams worker — queues, consumer group,
//! concurrency, delivery and reclaim timings, event retention.

use serde::{Deserialize, Serialize};

use super::{ConfigError, SandboxConfig};

/// How workers share queues.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// One consumer group for all nodes: each job runs on one node.
    #[default]
    Shared,
    /// One group per node (`<group>-<node id>`): every node sees every job
    /// and runs those whose `target_node` names it (Citadel's fan-out).
    PerNode,
}

/// The Redis Streams worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Queues to consume (`jobs:v1:<queue>`).
    pub queues: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Shared group or one per node.
    pub group_mode: GroupMode,
    /// Jobs run at once on this node.
    pub concurrency: u32,
    /// Deliveries of one job before it goes to the dead-letter queue.
    pub max_attempts: u32,
    /// How long one read waits for new jobs, ms.
    pub block_ms: u64,
    /// Lifetime of this worker's liveness key, ms; its jobs are reclaimed
    /// by others once it has been dead this long.
    pub liveness_ttl_ms: u64,
    /// How often pending jobs of dead workers are looked for, ms.
    pub reclaim_interval_ms: u64,
    /// Wait before a recoverable failure is retried, ms.
    pub retry_delay_ms: u64,
    /// Backstop: a job pending this long is reclaimed even from a live
    /// worker (a wedged one), ms.
    pub abandon_after_ms: u64,
    /// On SIGTERM/SIGINT, how long running jobs may take to finish, ms.
    pub shutdown_grace_ms: u64,
    /// How often running jobs' cancel flags are checked, ms.
    pub cancel_poll_ms: u64,
    /// Lifetime of `job:{jobId}:status`, s.
    pub status_ttl_s: u64,
    /// Largest payload accepted, bytes (larger entries are dead-lettered).
    pub max_payload_bytes: usize,
    /// Also append every event to `stream:v1:{jobId}:events` for replay.
    pub events_stream: bool,
    /// Events kept in that stream (approximately).
    pub events_stream_max: usize,
    /// Lifetime of that stream, s.
    pub events_stream_ttl_s: u64,
    /// The queue of device configuration jobs (`APPLY_DEVICE_CONFIG`), read
    /// through a consumer group of this node's own so every node sees every
    /// one; empty: not read.
    pub config_queue: String,
    /// That group's name (`<config_group>-<node id>`).
    pub config_group: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec!["gpu-general".into()],
            group: "citadel-workers".into(),
            group_mode: GroupMode::Shared,
            concurrency: 8,
            max_attempts: 3,
            block_ms: 2_000,
            liveness_ttl_ms: 5_000,
            reclaim_interval_ms: 1_000,
            retry_delay_ms: 1_000,
            abandon_after_ms: 2 * 60 * 60 * 1000,
            shutdown_grace_ms: 30_000,
            cancel_poll_ms: 250,
            status_ttl_s: 24 * 60 * 60,
            max_payload_bytes: 1 << 20,
            events_stream: false,
            events_stream_max: 1_000,
            events_stream_ttl_s: 60 * 60,
            config_queue: "config".into(),
            config_group: "citadel-config".into(),
        }
    }
}

impl WorkerConfig {
    pub(super) fn validate(&self, sandbox: &SandboxConfig) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String| Err(ConfigError::Invalid { key, problem });
        if self.queues.is_empty() {
            return invalid("worker.queues", "must name at least one queue".into());
        }
        if let Some(queue) = self
            .queues
            .iter()
            .find(|queue| queue.is_empty() || queue.contains(char::is_whitespace))
        {
            return invalid("worker.queues", format!("{queue:?} is not a queue name"));
        }
        if self.group.is_empty() {
            return invalid("worker.group", "must not be empty".into());
        }
        if self.concurrency == 0 {
            return invalid("worker.concurrency", "must be at least 1".into());
        }
        if self.concurrency > sandbox.max_instances {
            return invalid(
                "worker.concurrency",
                format!(
                    "({}) exceeds sandbox.max_instances ({}): raise the pool or lower the concurrency",
                    self.concurrency, sandbox.max_instances
                ),
            );
        }
        if self.max_attempts == 0 {
            return invalid("worker.max_attempts", "must be at least 1".into());
        }
        if self.liveness_ttl_ms < 1_000 {
            return invalid(
                "worker.liveness_ttl_ms",
                format!("must be at least 1000, got {}", self.liveness_ttl_ms),
            );
        }
        if self.reclaim_interval_ms == 0 || self.reclaim_interval_ms >= self.liveness_ttl_ms {
            return invalid(
                "worker.reclaim_interval_ms",
                format!(
                    "must be between 1 and worker.liveness_ttl_ms ({}), got {}",
                    self.liveness_ttl_ms, self.reclaim_interval_ms
                ),
            );
        }
        if self.block_ms == 0 || self.cancel_poll_ms == 0 {
            return invalid(
                "worker.block_ms",
                "block_ms and cancel_poll_ms must be at least 1".into(),
            );
        }
        if self.abandon_after_ms < self.liveness_ttl_ms {
            return invalid(
                "worker.abandon_after_ms",
                "must not be shorter than worker.liveness_ttl_ms".into(),
            );
        }
        Ok(())
    }
}
