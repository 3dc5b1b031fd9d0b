//! What the world sees of a job: its events on Pub/Sub `stream:v1:{jobId}`
//! (fire-and-forget, as Citadel's protocol is), optionally the same events
//! appended to a capped, expiring stream `stream:v1:{jobId}:events` so a
//! subscriber that arrives late can replay them, and its state in
//! `job:{jobId}:status`.

use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, PubSub};
use redis::streams::StreamMaxlen;

use crate::wire::{self, EventKind, JobEvent, JobStatus, NodeMeta};

/// The replay copy of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Events kept per job (approximately: `MAXLEN ~`).
    pub max_events: usize,
    /// How long the copy lives after the job's last event.
    pub ttl: Duration,
}

/// Publishes job events and status.
#[derive(Clone)]
pub struct EventPublisher {
    conn: ConnectionManager,
    meta: NodeMeta,
    replay: Option<ReplayConfig>,
    status_ttl: Duration,
}

impl EventPublisher {
    /// A publisher stamping events with `meta`.
    pub fn new(conn: ConnectionManager, meta: NodeMeta, replay: Option<ReplayConfig>, status_ttl: Duration) -> Self {
        EventPublisher {
            conn,
            meta,
            replay,
            status_ttl,
        }
    }

    /// The node identity in every event.
    pub fn meta(&self) -> &NodeMeta {
        &self.meta
    }

    /// How long status hashes live.
    pub fn status_ttl(&self) -> Duration {
        self.status_ttl
    }

    /// Publish one event (and append it to the replay stream when enabled),
    /// in one round trip.
    pub async fn publish(&self, job_id: &str, ray_id: Option<&str>, kind: EventKind) -> redis::RedisResult<()> {
        let event = JobEvent {
            job_id,
            ray_id,
            meta: &self.meta,
            at: SystemTime::now(),
            kind,
        };
        let json = event.to_json();
        let mut conn = self.conn.clone();
        match self.replay {
            None => {
                redis::cmd("PUBLISH")
                    .arg(wire::events_channel(job_id))
                    .arg(&json)
                    .exec_async(&mut conn)
                    .await
            }
            Some(replay) => {
                let stream = wire::events_stream_key(job_id);
                redis::pipe()
                    .cmd("PUBLISH")
                    .arg(wire::events_channel(job_id))
                    .arg(&json)
                    .ignore()
                    .xadd_maxlen(
                        &stream,
                        StreamMaxlen::Approx(replay.max_events),
                        "*",
                        &[("event", &json)],
                    )
                    .ignore()
                    .expire(&stream, replay.ttl.as_secs() as i64)
                    .ignore()
                    .exec_async(&mut conn)
                    .await
            }
        }
    }

    /// Record a job's (non-final) state, e.g. `running`.
    pub async fn set_status(
        &self,
        job_id: &str,
        status: JobStatus,
        message_id: &str,
        worker_id: &str,
        extra: &[(&str, String)],
    ) -> redis::RedisResult<()> {
        let key = wire::status_key(job_id);
        let mut fields = status_fields(status, message_id, worker_id);
        fields.extend(extra.iter().map(|(name, value)| (*name, value.clone())));
        let mut conn = self.conn.clone();
        redis::pipe()
            .hset_multiple(&key, &fields)
            .ignore()
            .expire(&key, self.status_ttl.as_secs() as i64)
            .ignore()
            .exec_async(&mut conn)
            .await
    }

    /// The last error recorded for a job, if any.
    pub async fn status_error(&self, job_id: &str) -> redis::RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        redis::cmd("HGET")
            .arg(wire::status_key(job_id))
            .arg("error")
            .query_async(&mut conn)
            .await
    }

    /// A job's recorded state and the queue entry it was recorded for.
    pub async fn status(&self, job_id: &str) -> redis::RedisResult<Option<(JobStatus, String)>> {
        let mut conn = self.conn.clone();
        let (status, message_id): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(wire::status_key(job_id))
            .arg("status")
            .arg("message_id")
            .query_async(&mut conn)
            .await?;
        Ok(status
            .and_then(|status| JobStatus::parse(&status))
            .map(|status| (status, message_id.unwrap_or_default())))
    }
}

/// The fields every status write carries.
pub(crate) fn status_fields(status: JobStatus, message_id: &str, worker_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("status", status.as_str().to_string()),
        ("message_id", message_id.to_string()),
        ("worker_id", worker_id.to_string()),
        ("updated_at", wire::timestamp(SystemTime::now())),
    ]
}

/// Subscribe to a job's events (before enqueueing it, so none is missed).
pub async fn subscribe_events(client: &redis::Client, job_id: &str) -> redis::RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(wire::events_channel(job_id)).await?;
    Ok(pubsub)
}
