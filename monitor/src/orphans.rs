//! The jobs a dead node held, and where they went. When a node goes
//! down, the monitor looks through every job queue (`jobs:v1:*`) for
//! entries pending on that node's consumers (`<node id>-<pid>-<tag>`),
//! then follows each until it is settled: still waiting on the dead
//! consumer, reclaimed by another worker (named), or finished (its status
//! and who finished it). The `NODE_DOWN` alert's details carry the list as
//! it is now. Redis is asked only while such an alert is open.

use std::sync::Arc;
use std::time::Duration;

use citadel_transports::redis::Connection;
use citadel_transports::wire;
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertType;
use crate::service::Monitor;

/// How often the orphans of an open `NODE_DOWN` are looked at again.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// How long they are followed at most.
const FOLLOW_FOR: Duration = Duration::from_secs(600);
/// Entries looked at per consumer, at most.
const MAX_ORPHANS: usize = 1000;

/// A job a dead node held.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Orphan {
    /// The queue stream.
    pub queue: String,
    /// The consumer group.
    pub group: String,
    /// The entry id.
    pub entry_id: String,
    /// The job id (`jobId`).
    pub job_id: Option<String>,
    /// The job type.
    pub job_type: Option<String>,
    /// The dead consumer that held it.
    pub consumer: String,
    /// Where it is now: `waiting`, `reclaimed`, `settled`, `gone`.
    pub now: String,
    /// Who holds or settled it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Its recorded status, once settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Find what `node` held, then follow it while its `NODE_DOWN` is open.
pub async fn track(monitor: Arc<Monitor>, node: String, stop: CancellationToken) {
    let mut conn = monitor.redis.command_connection();
    let mut orphans = match find(&mut conn, &node).await {
        Ok(orphans) => orphans,
        Err(err) => {
            tracing::warn!(node = %node, error = %err, "cannot look for the jobs a dead node held");
            Vec::new()
        }
    };
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    loop {
        if let Err(err) = locate(&mut conn, &mut orphans).await {
            tracing::debug!(node = %node, error = %err, "cannot follow the jobs a dead node held");
        }
        let details = json!(orphans);
        let node_for = node.clone();
        if let Err(err) = monitor
            .apply(|engine, commit, _| engine.orphans_found(&node_for, details, commit))
            .await
        {
            tracing::warn!(error = %err, "cannot store where a dead node's jobs went");
        }
        let open = monitor.read(|engine| {
            engine
                .alerts()
                .get(AlertType::NodeDown, &format!("node:{node}"))
                .is_some()
        });
        let settled = orphans
            .iter()
            .all(|orphan| orphan.now == "settled" || orphan.now == "gone");
        if !open || settled || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// Whether `consumer` is one of `node`'s (`<node>-<pid>-<hex>`).
fn belongs_to(consumer: &str, node: &str) -> bool {
    let Some(rest) = consumer.strip_prefix(node).and_then(|rest| rest.strip_prefix('-')) else {
        return false;
    };
    let mut parts = rest.split('-');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(pid), Some(tag), None) if pid.chars().all(|c| c.is_ascii_digit()) && tag.chars().all(|c| c.is_ascii_hexdigit())
    )
}

/// The entries pending on `node`'s consumers in every queue.
async fn find(conn: &mut Connection, node: &str) -> redis::RedisResult<Vec<Orphan>> {
    let mut orphans = Vec::new();
    for queue in crate::queues::streams(conn, wire::QUEUE_PREFIX).await? {
        let groups: redis::streams::StreamInfoGroupsReply = conn.xinfo_groups(&queue).await?;
        for group in groups.groups {
            let consumers: redis::streams::StreamInfoConsumersReply = conn.xinfo_consumers(&queue, &group.name).await?;
            for consumer in consumers.consumers.iter().filter(|c| belongs_to(&c.name, node)) {
                let pending: redis::streams::StreamPendingCountReply = conn
                    .xpending_consumer_count(&queue, &group.name, "-", "+", MAX_ORPHANS, &consumer.name)
                    .await?;
                for entry in pending.ids {
                    let fields: redis::streams::StreamRangeReply = conn.xrange(&queue, &entry.id, &entry.id).await?;
                    let field = |name: &str| -> Option<String> {
                        fields.ids.first().and_then(|found| found.get::<String>(name))
                    };
                    orphans.push(Orphan {
                        queue: queue.clone(),
                        group: group.name.clone(),
                        entry_id: entry.id.clone(),
                        job_id: field("jobId"),
                        job_type: field("type"),
                        consumer: consumer.name.clone(),
                        now: "waiting".into(),
                        by: Some(consumer.name.clone()),
                        status: None,
                    });
                }
            }
        }
    }
    Ok(orphans)
}

/// Where each orphan is now.
async fn locate(conn: &mut Connection, orphans: &mut [Orphan]) -> redis::RedisResult<()> {
    for orphan in orphans.iter_mut().filter(|orphan| orphan.now != "settled") {
        let pending: redis::streams::StreamPendingCountReply = conn
            .xpending_count(&orphan.queue, &orphan.group, &orphan.entry_id, &orphan.entry_id, 1)
            .await?;
        match pending.ids.first() {
            Some(holder) if holder.consumer == orphan.consumer => {
                orphan.now = "waiting".into();
                orphan.by = Some(holder.consumer.clone());
            }
            Some(holder) => {
                orphan.now = "reclaimed".into();
                orphan.by = Some(holder.consumer.clone());
            }
            None => {
                let Some(job) = &orphan.job_id else {
                    orphan.now = "gone".into();
                    continue;
                };
                let (status, worker): (Option<String>, Option<String>) = redis::cmd("HMGET")
                    .arg(wire::status_key(job))
                    .arg("status")
                    .arg("worker_id")
                    .query_async(conn)
                    .await?;
                orphan.now = if status.is_some() { "settled" } else { "gone" }.into();
                orphan.status = status;
                orphan.by = worker;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_consumers_are_told_apart_from_a_longer_named_nodes() {
        assert!(belongs_to("gpu-7-4242-00af", "gpu-7"));
        assert!(!belongs_to("gpu-7-1-4242-00af", "gpu-7"), "node gpu-7-1's consumer");
        assert!(!belongs_to("gpu-70-4242-00af", "gpu-7"));
        assert!(!belongs_to("gpu-7", "gpu-7"));
    }
}
