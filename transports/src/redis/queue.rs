//! Job queues on Redis Streams, read through one consumer group.
//!
//! Delivery semantics (DESIGN §4), as this module provides them:
//! - each entry goes to one consumer of the group (`XREADGROUP … >`), and
//!   the caller asks only for as many as it has free slots;
//! - an entry stays pending until it is settled: the caller puts the job's
//!   final status and the `XACK` in one atomic [`Batch`], so a job is never
//!   acknowledged without its result being recorded, and a redelivered entry
//!   whose status is final can be recognised and skipped;
//! - pending entries can be listed with their owner, idle time and delivery
//!   count, and claimed (`XCLAIM`, which counts a delivery) by the caller's
//!   reclaim policy (liveness-based, see `liveness.rs`);
//! - a dead letter is written and acknowledged in one batch.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::Connection;
use redis::streams::{StreamPendingCountReply, StreamReadReply};
use redis::{RedisResult, Value};

use super::{Batch, Committer};
use crate::wire::{self, Fields};

/// Which streams, as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Stream keys (`jobs:v1:<queue>`).
    pub keys: Vec<String>,
    /// The consumer group.
    pub group: String,
    /// This process's consumer name (unique per process).
    pub consumer: String,
    /// How long one read blocks waiting for entries.
    pub block: Duration,
    /// A group created now starts at the stream's end (`$`) instead of its
    /// beginning (`0`).
    pub new_entries_only: bool,
}

/// One delivered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream it came from.
    pub queue: String,
    /// Its entry id.
    pub id: String,
    /// Its fields.
    pub fields: Fields,
    /// How many times it has been delivered, this time included.
    pub attempt: u64,
}

/// An entry delivered to some consumer and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// The stream.
    pub queue: String,
    /// Its entry id.
    pub id: String,
    /// The consumer that holds it.
    pub consumer: String,
    /// Time since it was last delivered.
    pub idle: Duration,
    /// Deliveries so far.
    pub deliveries: u64,
}

/// The job queues of one consumer.
#[derive(Clone)]
pub struct JobQueues {
    conn: Connection,
    reader: Connection,
    committer: Committer,
    config: QueueConfig,
}

impl JobQueues {
    /// Queues using `conn` for commands, `reader` for blocking reads and
    /// `committer` for settlements.
    pub fn new(conn: Connection, reader: Connection, committer: Committer, config: QueueConfig) -> JobQueues {
        JobQueues {
            conn,
            reader,
            committer,
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Create the consumer group on every stream (and the streams) if
    /// missing. The group starts at the beginning of the stream, so jobs
    /// enqueued before the first worker ever started are not skipped.
    pub async fn ensure_groups(&self) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        for key in &self.config.keys {
            let created: RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(&self.config.group)
                .arg(if self.config.new_entries_only { "$" } else { "0" })
                .arg("MKSTREAM")
                .exec_async(&mut conn)
                .await;
            match created {
                Err(err) if err.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Read up to `count` new entries per stream, blocking up to the
    /// configured time. A group that vanished (Redis restarted without its
    /// data) is recreated.
    pub async fn read(&self, count: usize) -> RedisResult<Vec<Delivery>> {
        match self.read_once(count).await {
            Err(err) if err.code() == Some("NOGROUP") => {
                tracing::warn!(group = %self.config.group, "consumer group missing (Redis lost its data?); recreating it");
                self.ensure_groups().await?;
                self.read_once(count).await
            }
            other => other,
        }
    }

    async fn read_once(&self, count: usize) -> RedisResult<Vec<Delivery>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(self.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.config.keys);
        for _ in &self.config.keys {
            cmd.arg(">");
        }
        let mut reader = self.reader.clone();
        let reply: Option<StreamReadReply> = cmd.query_async(&mut reader).await?;
        let mut deliveries = Vec::new();
        for stream in reply.map(|reply| reply.keys).unwrap_or_default() {
            for entry in stream.ids {
                deliveries.push(Delivery {
                    queue: stream.key.clone(),
                    id: entry.id,
                    fields: texts(entry.map),
                    attempt: 1,
                });
            }
        }
        Ok(deliveries)
    }

    /// Up to `count` pending entries of `queue` idle for at least `min_idle`.
    pub async fn pending(&self, queue: &str, min_idle: Duration, count: usize) -> RedisResult<Vec<PendingEntry>> {
        let mut conn = self.conn.clone();
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(queue)
            .arg(&self.config.group)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|pending| PendingEntry {
                queue: queue.to_string(),
                id: pending.id,
                consumer: pending.consumer,
                idle: Duration::from_millis(pending.last_delivered_ms as u64),
                deliveries: pending.times_delivered as u64,
            })
            .collect())
    }

    /// The group's consumers on `queue` that hold no pending entry.
    pub async fn idle_consumers(&self, queue: &str) -> RedisResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(queue)
            .arg(&self.config.group)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .consumers
            .into_iter()
            .filter(|consumer| consumer.pending == 0)
            .map(|consumer| consumer.name)
            .collect())
    }

    /// Remove a consumer from the group on `queue` (it holds nothing;
    /// a live one would be recreated by its next read).
    pub async fn delete_consumer(&self, queue: &str, consumer: &str) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(queue)
            .arg(&self.config.group)
            .arg(consumer)
            .exec_async(&mut conn)
            .await
    }

    /// Take over a pending entry (if it is still pending and idle for
    /// `min_idle`; another worker may have been faster). The claim counts as
    /// a delivery. An entry deleted from the stream meanwhile is dropped
    /// from the pending list and `None` is returned.
    pub async fn claim(&self, entry: &PendingEntry, min_idle: Duration) -> RedisResult<Option<Delivery>> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&entry.queue)
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(&entry.id)
            .query_async(&mut conn)
            .await?;
        match reply.ids.into_iter().next() {
            Some(claimed) if !claimed.map.is_empty() => Ok(Some(Delivery {
                queue: entry.queue.clone(),
                id: claimed.id,
                fields: texts(claimed.map),
                attempt: entry.deliveries + 1,
            })),
            _ => Ok(None),
        }
    }

    /// Keep a pending entry but restart its idle time (`XCLAIM … JUSTID`,
    /// which does not count a delivery): the entry is left for a retry that
    /// the reclaim sweep makes after the retry delay.
    pub async fn touch(&self, delivery: &Delivery) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("XCLAIM")
            .arg(&delivery.queue)
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg(0)
            .arg(&delivery.id)
            .arg("JUSTID")
            .exec_async(&mut conn)
            .await
    }

    /// Add the acknowledgement of `delivery` to `batch`. Put it in an
    /// atomic batch with the job's final status (and final event) so that a
    /// job is never acknowledged without its result being recorded.
    pub fn ack_in(&self, batch: &mut Batch, delivery: &Delivery) {
        batch.push(
            redis::cmd("XACK")
                .arg(&delivery.queue)
                .arg(&self.config.group)
                .arg(&delivery.id)
                .to_owned(),
        );
    }

    /// Add the move of `delivery` to `dlq:v1:<queue>` with `reason`, and its
    /// acknowledgement, to `batch` (make it atomic).
    pub fn dead_letter_in(&self, batch: &mut Batch, delivery: &Delivery, reason: &str) {
        let dlq = wire::dlq_key(&delivery.queue);
        let entry = wire::dlq_fields(
            &delivery.id,
            &delivery.queue,
            reason,
            &self.config.consumer,
            &delivery.fields,
            delivery.attempt,
            SystemTime::now(),
        );
        batch.push(redis::cmd("XADD").arg(&dlq).arg("*").arg(entry).to_owned());
        self.ack_in(batch, delivery);
    }

    /// Send a batch (grouped with other jobs' batches).
    pub async fn send(&self, batch: Batch) -> RedisResult<()> {
        self.committer.send(batch).await.map(drop)
    }
}

/// `XADD` a job entry (the producer side, used by `citadel submit` and the
/// tests); returns the entry id.
pub async fn enqueue(conn: &mut Connection, queue_key: &str, fields: &[(&str, &str)]) -> RedisResult<String> {
    redis::cmd("XADD")
        .arg(queue_key)
        .arg("*")
        .arg(fields)
        .query_async(conn)
        .await
}

/// Entry field values as text (binary values are decoded lossily).
fn texts(map: HashMap<String, Value>) -> Fields {
    map.into_iter()
        .map(|(name, value)| {
            let text = match value {
                Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Value::SimpleString(text) => text,
                Value::Int(number) => number.to_string(),
                other => format!("{other:?}"),
            };
            (name, text)
        })
        .collect()
}

#[cfg(test)]
mod properties {
    //! Entries as a producer — or anyone with write access to the queue —
    //! may write them: any field names, binary values, invalid UTF-8, huge
    //! and deeply nested payloads. Decoding and parsing never panic, stay
    //! within the size cap before any JSON is parsed, and say what is wrong.

    use proptest::prelude::*;

    use super::*;
    use crate::wire::{EntryError, JobEntry};

    const LIMIT: usize = 64 * 1024;

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("jobId".to_string()),
            Just("type".to_string()),
            Just("payload".to_string()),
            Just("rayId".to_string()),
            Just("enqueuedAt".to_string()),
            ".{0,12}",
        ]
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Arbitrary bytes, invalid UTF-8 included.
            proptest::collection::vec(any::<u8>(), 0..256),
            // JSON objects with random keys and values.
            proptest::collection::btree_map(".{0,8}", ".{0,16}", 0..8)
                .prop_map(|map| serde_json::to_vec(&map).unwrap()),
            // Deep nesting (serde_json's recursion limit, not the stack).
            (1usize..5000)
                .prop_map(|depth| format!("{{\"a\":{}1{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
            // Over the cap.
            (LIMIT..LIMIT * 4).prop_map(|size| {
                let mut text = b"{\"pad\":\"".to_vec();
                text.resize(size, b'x');
                text.extend_from_slice(b"\"}");
                text
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_entry_is_a_job_or_a_named_refusal(
            extra in proptest::collection::vec((field_name(), proptest::collection::vec(any::<u8>(), 0..64)), 0..6),
            job_id in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            job_type in proptest::option::of(".{0,20}"),
            body in proptest::option::of(payload()),
        ) {
            let mut map: HashMap<String, Value> = extra
                .into_iter()
                .map(|(name, bytes)| (name, Value::BulkString(bytes)))
                .collect();
            if let Some(id) = job_id {
                map.insert("jobId".into(), Value::BulkString(id));
            }
            if let Some(job_type) = job_type {
                map.insert("type".into(), Value::SimpleString(job_type));
            }
            if let Some(body) = &body {
                map.insert("payload".into(), Value::BulkString(body.clone()));
            }
            let fields = texts(map);
            match JobEntry::parse(&fields, LIMIT) {
                Ok(job) => {
                    prop_assert!(!job.job_id.is_empty());
                    prop_assert!(fields["payload"].len() <= LIMIT);
                }
                Err(EntryError::TooLarge { size, limit }) => prop_assert!(size > limit),
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            }
        }
    }
}
