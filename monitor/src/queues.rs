//! What waits in the job queues. Backlogs nobody can serve: jobs waiting in a queue while no up node
//! handles their type — or, for jobs naming a `model`, serves that model.
//! Every `backlog_poll_ms` the monitor looks at each job queue
//! (`jobs:v1:*`, found by `SCAN`) for entries no consumer has been given
//! yet (past the group's last delivered id), by job type and model, with
//! the age of the oldest; the engine then weighs them against the
//! registry: waiting longer than `backlog_grace_s` with nobody able to
//! serve them opens `BACKLOG_STUCK`; served or drained closes it.
//!
//! Beside it, the dead-letter queues (`dlq:v1:*`): an entry that appears
//! there — moved by a worker that writes no fleet events, such as
//! Citadel's own — opens `DEAD_LETTER`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use citadel_transports::redis::Connection;
use citadel_transports::wire;
use redis::AsyncCommands;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::engine::entry_id;
use crate::ingest::text_fields;
use crate::service::Monitor;

/// Undelivered entries looked at per queue, at most.
const SAMPLE: usize = 200;

/// Jobs of one type (and model) waiting in one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The queue stream.
    pub queue: String,
    /// Their job type.
    pub job_type: String,
    /// The model they ask for, if any.
    pub model: Option<String>,
    /// How many (of those looked at).
    pub count: u64,
    /// When the oldest was enqueued, ms since the epoch.
    pub oldest_ms: u64,
}

impl Waiting {
    /// The alert subject.
    pub fn subject(&self) -> String {
        match &self.model {
            Some(model) => format!("queue:{}/{}/{model}", self.queue, self.job_type),
            None => format!("queue:{}/{}", self.queue, self.job_type),
        }
    }
}

/// Look at the backlogs every `backlog_poll_ms` until `stop`.
pub async fn run(monitor: Arc<Monitor>, stop: CancellationToken) {
    let mut conn = monitor.redis.command_connection();
    let mut ticks = tokio::time::interval(Duration::from_millis(monitor.config.backlog_poll_ms));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ignored: Vec<String> = monitor
        .config
        .backlog_ignore_queues
        .iter()
        .map(|queue| wire::queue_key(queue))
        .collect();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let waiting = match look(&mut conn, &ignored).await {
            Ok(waiting) => waiting,
            Err(err) => {
                tracing::debug!(error = %err, "cannot look at the queues' backlogs");
                continue;
            }
        };
        if let Err(err) = dead_letters(&monitor, &mut conn).await {
            tracing::debug!(error = %err, "cannot look at the dead-letter queues");
        }
        let now = crate::service::now_ms();
        let grace = monitor.config.backlog_grace_s * 1000;
        if let Err(err) = monitor
            .apply(|engine, commit, _| engine.backlog(&waiting, grace, now, commit))
            .await
        {
            tracing::warn!(error = %err, "cannot store the backlog's judgement");
        }
    }
}

/// New entries of every dead-letter queue (`dlq:v1:*`), to the engine.
async fn dead_letters(monitor: &Arc<Monitor>, conn: &mut Connection) -> redis::RedisResult<()> {
    for key in streams(conn, wire::DLQ_PREFIX).await? {
        let newest: redis::streams::StreamRangeReply = conn.xrevrange_count(&key, "+", "-", 1).await?;
        let Some(last) = newest.ids.first().map(|entry| entry.id.clone()) else {
            continue;
        };
        // First sight: what was there before this monitor started is not new.
        let cursor = monitor
            .read(|engine| engine.dead_letter_cursor(&key))
            .unwrap_or_else(|| format!("{}-0", monitor.started_ms));
        if entry_id(&last) <= entry_id(&cursor) {
            continue;
        }
        let found: redis::streams::StreamRangeReply =
            conn.xrange_count(&key, format!("({cursor}"), "+", SAMPLE).await?;
        let entries: Vec<(String, std::collections::HashMap<String, String>)> = found
            .ids
            .into_iter()
            .map(|entry| {
                let fields = text_fields(&entry.map);
                (entry.id, fields)
            })
            .collect();
        let now = crate::service::now_ms();
        let applied = monitor
            .apply(|engine, commit, _| engine.dead_letters(&key, &entries, &last, now, commit))
            .await;
        if let Err(err) = applied {
            tracing::warn!(error = %err, "cannot store the dead letters' judgement");
        }
    }
    Ok(())
}

/// Every stream whose key starts with `prefix`.
pub(crate) async fn streams(conn: &mut Connection, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The undelivered jobs of every queue but `ignored`, by type and model.
async fn look(conn: &mut Connection, ignored: &[String]) -> redis::RedisResult<Vec<Waiting>> {
    let mut waiting = Vec::new();
    for queue in streams(conn, wire::QUEUE_PREFIX).await? {
        if ignored.contains(&queue) {
            continue;
        }
        let groups: redis::streams::StreamInfoGroupsReply = conn.xinfo_groups(&queue).await?;
        // What the furthest-behind group has not been given yet (no group:
        // everything).
        let from = groups
            .groups
            .iter()
            .map(|group| group.last_delivered_id.clone())
            .min_by_key(|id| entry_id(id).unwrap_or_default())
            .unwrap_or_else(|| "0-0".into());
        let entries: redis::streams::StreamRangeReply =
            conn.xrange_count(&queue, format!("({from}"), "+", SAMPLE).await?;
        let mut by: BTreeMap<(String, Option<String>), (u64, u64)> = BTreeMap::new();
        for entry in entries.ids {
            let at = entry_id(&entry.id).map_or(0, |(ms, _)| ms);
            let payload: Option<Value> = entry
                .get::<String>("payload")
                .and_then(|payload| serde_json::from_str(&payload).ok());
            let job_type = entry
                .get::<String>("type")
                .or_else(|| {
                    payload
                        .as_ref()
                        .and_then(|payload| payload["type"].as_str().map(str::to_string))
                })
                .unwrap_or_default();
            let model = payload
                .as_ref()
                .and_then(|payload| payload["model"].as_str().map(str::to_string));
            let slot = by.entry((job_type, model)).or_insert((0, at));
            slot.0 += 1;
            slot.1 = slot.1.min(at);
        }
        waiting.extend(by.into_iter().map(|((job_type, model), (count, oldest_ms))| Waiting {
            queue: queue.clone(),
            job_type,
            model,
            count,
            oldest_ms,
        }));
    }
    Ok(waiting)
}
