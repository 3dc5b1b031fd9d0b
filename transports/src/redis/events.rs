//! What the world sees of a job: its events on Pub/Sub `stream:v1:{jobId}`
//! (fire-and-forget, as Citadel's protocol is), optionally the same events
//! appended to a capped, expiring stream `stream:v1:{jobId}:events` so a
//! subscriber that arrives late can replay them, and its state in
//! `job:{jobId}:status`.
//!
//! Events and status writes can be added to a [`Batch`] so that a job's
//! `claimed`/`start` or its final event, status and acknowledgement each
//! cost one round trip.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use redis::Value;
use redis::aio::PubSub;

use super::Connection;

use super::{Batch, Committer, Endpoint, FleetPublisher};
use crate::fleet::{self, FleetEvent};
use crate::wire::{self, EventKind, JobEvent, JobStatus, NodeMeta};

/// The replay copy of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Events kept per job (approximately: `MAXLEN ~`).
    pub max_events: usize,
    /// How long the copy lives after the job's last event.
    pub ttl: Duration,
}

/// Starts a job in one round trip unless its cancel flag is set: publishes
/// `claimed`, records `running`, publishes `start` (and appends both events
/// to the replay stream when enabled), and appends the fleet's
/// `job.started` when given. Returns 1 when the flag was set and nothing
/// was done.
///
/// KEYS: cancel flag, status hash, replay stream, fleet event stream. ARGV:
/// channel, claimed JSON, start JSON, status TTL (s), replay length (0 =
/// off), replay TTL (s), fleet stream length (0 = no fleet event), the
/// fleet entry's `type`, `node` and `event`, then the status fields as
/// name/value pairs.
const START_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local replay = tonumber(ARGV[5]) > 0
local function emit(event)
  redis.call('PUBLISH', ARGV[1], event)
  if replay then redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', event) end
end
emit(ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 11))
redis.call('EXPIRE', KEYS[2], ARGV[4])
emit(ARGV[3])
if replay then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
if tonumber(ARGV[7]) > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'type', ARGV[8], 'node', ARGV[9], 'event', ARGV[10])
end
return 0
";

/// What a worker checks before running a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCheck {
    /// The recorded status and the queue entry it was recorded for.
    pub status: Option<(JobStatus, String)>,
    /// The last recorded error.
    pub error: Option<String>,
}

/// Publishes job events and status.
#[derive(Clone)]
pub struct EventPublisher {
    conn: Connection,
    committer: Committer,
    /// Shared by the publisher's clones: a rename reaches them all. Events
    /// take the `Arc` (no string copies per chunk).
    meta: Arc<RwLock<Arc<NodeMeta>>>,
    replay: Option<ReplayConfig>,
    status_ttl: Duration,
    start_script: redis::Script,
}

impl EventPublisher {
    /// A publisher stamping events with `meta`: chunks go straight out on
    /// `conn` (lowest latency), batches through `committer`.
    pub fn new(
        conn: Connection,
        committer: Committer,
        meta: NodeMeta,
        replay: Option<ReplayConfig>,
        status_ttl: Duration,
    ) -> Self {
        EventPublisher {
            conn,
            committer,
            meta: Arc::new(RwLock::new(Arc::new(meta))),
            replay,
            status_ttl,
            start_script: redis::Script::new(START_SCRIPT),
        }
    }

    /// Stamp events with this display name from now on (device
    /// configuration renamed the node).
    pub fn rename(&self, node_name: &str) {
        let mut meta = self.meta.write().expect("node meta poisoned");
        *meta = Arc::new(NodeMeta {
            node_id: meta.node_id.clone(),
            node_name: node_name.to_string(),
        });
    }

    /// The node as events name it now.
    pub fn meta(&self) -> Arc<NodeMeta> {
        Arc::clone(&self.meta.read().expect("node meta poisoned"))
    }

    /// Add one event (and its replay copy, when enabled) to `batch`.
    pub fn publish_in(&self, batch: &mut Batch, job_id: &str, ray_id: Option<&str>, kind: EventKind) {
        let meta = self.meta();
        let event = JobEvent {
            job_id,
            ray_id,
            meta: &meta,
            at: SystemTime::now(),
            kind,
        };
        let json = event.to_json();
        if let Some(replay) = self.replay {
            let stream = wire::events_stream_key(job_id);
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(replay.max_events)
                .arg("*")
                .arg("event")
                .arg(&json);
            batch.push(xadd);
            batch.push(redis::cmd("EXPIRE").arg(&stream).arg(replay.ttl.as_secs()).to_owned());
        }
        batch.push(
            redis::cmd("PUBLISH")
                .arg(wire::events_channel(job_id))
                .arg(json)
                .to_owned(),
        );
    }

    /// Add a status write (`status`, entry, worker, time and `extra`
    /// fields, with the status TTL) to `batch`.
    pub fn status_in(
        &self,
        batch: &mut Batch,
        job_id: &str,
        status: JobStatus,
        message_id: &str,
        worker_id: &str,
        extra: &[(&str, String)],
    ) {
        let key = wire::status_key(job_id);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg(status_fields(status, message_id, worker_id))
            .arg(extra);
        batch.push(hset);
        batch.push(redis::cmd("EXPIRE").arg(&key).arg(self.status_ttl.as_secs()).to_owned());
    }

    /// Send a batch (grouped with other jobs' batches).
    pub async fn send(&self, batch: Batch) -> redis::RedisResult<()> {
        self.committer.send(batch).await.map(drop)
    }

    /// Publish one event right away, on its own (chunks: no grouping delay).
    pub async fn publish(&self, job_id: &str, ray_id: Option<&str>, kind: EventKind) -> redis::RedisResult<()> {
        self.publish_all(job_id, ray_id, std::iter::once(kind)).await
    }

    /// Publish events right away, in order, in one pipelined write.
    pub async fn publish_all(
        &self,
        job_id: &str,
        ray_id: Option<&str>,
        kinds: impl IntoIterator<Item = EventKind>,
    ) -> redis::RedisResult<()> {
        let mut batch = Batch::new();
        for kind in kinds {
            self.publish_in(&mut batch, job_id, ray_id, kind);
        }
        batch.send(&self.conn).await.map(drop)
    }

    /// Record a job's state on its own.
    pub async fn set_status(
        &self,
        job_id: &str,
        status: JobStatus,
        message_id: &str,
        worker_id: &str,
        extra: &[(&str, String)],
    ) -> redis::RedisResult<()> {
        let mut batch = Batch::new();
        self.status_in(&mut batch, job_id, status, message_id, worker_id, extra);
        self.send(batch).await
    }

    /// Unless the job's cancel flag is set: publish `claimed`, record the
    /// job as `running` for `message_id`, publish `start` and append the
    /// fleet's `started` event (when given) — one round trip (a server-side
    /// script). Returns `false` when the flag was set (and nothing was
    /// published or recorded).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        &self,
        job_id: &str,
        ray_id: Option<&str>,
        claimed: EventKind,
        start: EventKind,
        message_id: &str,
        worker_id: &str,
        started: Option<(&FleetPublisher, &FleetEvent)>,
    ) -> redis::RedisResult<bool> {
        let mut batch = Batch::new();
        self.start_in(
            &mut batch, job_id, ray_id, claimed, start, message_id, worker_id, started,
        );
        let replies = match self.committer.send(batch.clone()).await {
            // Redis restarted (or flushed its scripts): load it and go again.
            Err(err) if err.code() == Some("NOSCRIPT") => {
                let mut load = Batch::new();
                load.push(Self::load_start_script());
                load.append(batch);
                self.committer.send(load).await?.split_off(1)
            }
            other => other?,
        };
        let cancelled: i64 = redis::from_redis_value(replies.into_iter().next().unwrap_or(Value::Nil))?;
        Ok(cancelled == 0)
    }

    /// Add what [`EventPublisher::start`] sends to `batch` (its one reply:
    /// 0 started, 1 cancel flag set). The script must be loaded: a reply
    /// `NOSCRIPT` asks for [`EventPublisher::load_start_script`] first.
    #[allow(clippy::too_many_arguments)]
    pub fn start_in(
        &self,
        batch: &mut Batch,
        job_id: &str,
        ray_id: Option<&str>,
        claimed: EventKind,
        start: EventKind,
        message_id: &str,
        worker_id: &str,
        started: Option<(&FleetPublisher, &FleetEvent)>,
    ) {
        let now = SystemTime::now();
        let meta = self.meta();
        let claimed = JobEvent {
            job_id,
            ray_id,
            meta: &meta,
            at: now,
            kind: claimed,
        }
        .to_json();
        let start = JobEvent {
            job_id,
            ray_id,
            meta: &meta,
            at: now,
            kind: start,
        }
        .to_json();
        let (replay_max, replay_ttl) = self
            .replay
            .map_or((0, 0), |replay| (replay.max_events, replay.ttl.as_secs()));
        let (fleet_max, fleet_fields) = match started {
            Some((fleet, event)) => fleet.event_args(event),
            None => (0, Default::default()),
        };
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(self.start_script.get_hash())
            .arg(4)
            .arg(wire::cancel_key(job_id))
            .arg(wire::status_key(job_id))
            .arg(wire::events_stream_key(job_id))
            .arg(fleet::EVENTS_STREAM)
            .arg(wire::events_channel(job_id))
            .arg(claimed)
            .arg(start)
            .arg(self.status_ttl.as_secs())
            .arg(replay_max)
            .arg(replay_ttl)
            .arg(fleet_max)
            .arg(&fleet_fields[..])
            .arg(status_fields(JobStatus::Running, message_id, worker_id));
        batch.push(evalsha);
    }

    /// `SCRIPT LOAD` of the start script.
    pub fn load_start_script() -> redis::Cmd {
        redis::cmd("SCRIPT").arg("LOAD").arg(START_SCRIPT).to_owned()
    }

    /// A job's recorded status and last error.
    pub async fn check(&self, job_id: &str) -> redis::RedisResult<JobCheck> {
        let mut conn = self.conn.clone();
        let (status, message_id, error): (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(wire::status_key(job_id))
            .arg("status")
            .arg("message_id")
            .arg("error")
            .query_async(&mut conn)
            .await?;
        let status = status
            .and_then(|status| JobStatus::parse(&status))
            .map(|status| (status, message_id.unwrap_or_default()));
        Ok(JobCheck { status, error })
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
pub async fn subscribe_events(endpoint: &Endpoint, job_id: &str) -> redis::RedisResult<PubSub> {
    let mut pubsub = endpoint.pubsub().await?;
    pubsub.subscribe(wire::events_channel(job_id)).await?;
    Ok(pubsub)
}
