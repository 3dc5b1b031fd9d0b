//! `citadel work`: the Redis Streams worker. It reads jobs from
//! `jobs:v1:<queue>` through a consumer group, runs each in the sandbox and
//! publishes its events, with these guarantees (DESIGN §4):
//!
//! - **each job to one worker**, and only as many read as there are free
//!   slots (node-wide `worker.concurrency`, per tenant `max_in_flight`);
//! - **settled means recorded**: a job's final status and its `XACK` are one
//!   `MULTI`; a redelivered entry whose status is already final is skipped;
//! - **dead workers' jobs resume in seconds, live workers' jobs never run
//!   twice**: every worker keeps a liveness key; the sweeper reclaims pending
//!   entries only from consumers whose key is gone (plus a long backstop for
//!   wedged ones);
//! - **poison jobs end in the DLQ**: an entry delivered more than
//!   `worker.max_attempts` times, or one that is not a job at all, is moved
//!   to `dlq:v1:<queue>` with the reason;
//! - **recoverable failures are retried** after `worker.retry_delay_ms`;
//! - **shutdown loses nothing**: on SIGTERM the worker stops reading, lets
//!   running jobs finish within the grace period, leaves the rest pending
//!   (never acknowledged) and retires its liveness key so others take them at
//!   once;
//! - **Redis outages are ridden out**: reads, beats and settlements retry with
//!   the shared backoff while running jobs carry on.
//!
//! `reading.rs` is the read loop and the tasks beside it (liveness beat,
//! cancel flags), `delivery.rs` one entry's life from its read to its
//! settlement (the run itself is `crate::dispatch`'s), `slots.rs` the
//! backpressure, `sweep.rs` the reclaiming of pending jobs.

mod delivery;
mod reading;
mod slots;
mod sweep;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use citadel_transports::backoff::{Backoff, RetryError, retry};
use citadel_transports::redis::{
    self as transport, CancelFlags, Committer, EventPublisher, FleetPublisher, JobQueues, Liveness, QueueConfig,
    ReplayConfig,
};
use citadel_transports::wire::{self, NodeMeta};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use slots::Slots;

use crate::config::{Config, GroupMode, WorkerConfig};
use crate::dispatch::Dispatcher;
use crate::dispatch::fleet::JobEvents;
use crate::handlers::HandlerTable;

/// The worker's version, in `claimed` events.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Pending entries younger than this are never reclaimed (they were just
/// delivered, and a concurrent claim by another worker resets to zero).
const RECLAIM_MIN_IDLE: Duration = Duration::from_millis(250);
/// Pending entries looked at per queue and sweep.
const RECLAIM_BATCH: usize = 64;
/// Every this many sweeps, consumers of dead workers that hold nothing are
/// removed from the group (each process has its own consumer name, so they
/// would otherwise pile up).
const FORGET_DEAD_EVERY: u32 = 30;
/// After the grace period, how long interrupted jobs get to record that.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

/// The worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No Redis URL is configured.
    #[error("no Redis URL: give --redis-url or set redis_url in the config")]
    NoRedisUrl,
    /// `redis_url` or `[redis]` is unusable.
    #[error(transparent)]
    Redis(#[from] transport::EndpointError),
    /// Redis refused to create the consumer groups (not a connection problem).
    #[error("cannot create consumer groups: {0}")]
    Groups(transport::RedisError),
}

/// The worker's state, for status and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerHealth {
    /// Whether it is taking jobs.
    pub consuming: bool,
    /// Jobs held now.
    pub in_flight: usize,
    /// Jobs that ended with a result.
    pub completed: u64,
    /// Jobs that ended with an error.
    pub failed: u64,
    /// When it last took a job.
    pub last_job_consumed_at: Option<SystemTime>,
    /// How long Redis has been unreachable, if it is.
    pub redis_down_for: Option<Duration>,
    /// How long its read loop has made no progress while it had free slots.
    pub stalled_for: Option<Duration>,
}

/// Progress of the read loop.
#[derive(Debug)]
struct Progress {
    consuming: bool,
    last_beat: Instant,
    redis_down_since: Option<Instant>,
    last_consumed: Option<SystemTime>,
}

/// Counters of what the worker has done.
#[derive(Debug, Default)]
pub struct Stats {
    /// Jobs that ended with a result.
    pub completed: AtomicU64,
    /// Jobs that ended with an error (including dead-lettered ones).
    pub failed: AtomicU64,
}

/// Durations and limits derived from the configuration.
#[derive(Debug, Clone)]
struct Settings {
    max_attempts: u64,
    liveness_ttl: Duration,
    reclaim_interval: Duration,
    retry_delay: Duration,
    abandon_after: Duration,
    shutdown_grace: Duration,
    cancel_poll: Duration,
    status_ttl: Duration,
    max_payload_bytes: usize,
    concurrency: usize,
    /// This worker reads device configuration, not jobs for handlers.
    device_config: bool,
}

impl Settings {
    fn from(config: &WorkerConfig) -> Settings {
        Settings {
            max_attempts: u64::from(config.max_attempts),
            liveness_ttl: Duration::from_millis(config.liveness_ttl_ms),
            reclaim_interval: Duration::from_millis(config.reclaim_interval_ms),
            retry_delay: Duration::from_millis(config.retry_delay_ms),
            abandon_after: Duration::from_millis(config.abandon_after_ms),
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            cancel_poll: Duration::from_millis(config.cancel_poll_ms),
            status_ttl: Duration::from_secs(config.status_ttl_s),
            max_payload_bytes: config.max_payload_bytes,
            concurrency: config.concurrency as usize,
            device_config: false,
        }
    }
}

/// A job this process holds: running, or waiting for a slot.
struct Held {
    job_id: Option<String>,
    cancel: CancellationToken,
}

/// Tokens that end jobs at shutdown.
#[derive(Clone, Default)]
struct Lifecycle {
    /// Interrupt running jobs (grace period over); they stay pending.
    abort: CancellationToken,
    /// Stop retrying settlements (the process is about to exit).
    give_up: CancellationToken,
}

/// State shared by the worker's tasks.
struct Shared {
    dispatch: Arc<Dispatcher>,
    queues: JobQueues,
    events: EventPublisher,
    /// The fleet's events of this worker's jobs (`telemetry.events`).
    fleet: Option<JobEvents>,
    liveness: Liveness,
    cancel_flags: CancelFlags,
    settings: Settings,
    node_id: String,
    consumer: String,
    slots: Slots,
    held: Mutex<HashMap<String, Held>>,
    stats: Stats,
    progress: Mutex<Progress>,
}

/// A Redis Streams worker.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker for `config`, running its jobs through `dispatch`.
    /// Nothing connects yet: Redis may come up after the worker. Must be
    /// called within a tokio runtime (it starts the group-commit task).
    pub fn new(dispatch: Arc<Dispatcher>, config: &Config) -> Result<Worker, WorkerError> {
        let consumer = format!(
            "{}-{}-{:04x}",
            config.node_id(),
            std::process::id(),
            rand::random::<u16>()
        );
        Self::build(dispatch, config, consumer, false)
    }

    fn build(
        dispatch: Arc<Dispatcher>,
        config: &Config,
        consumer: String,
        device_config: bool,
    ) -> Result<Worker, WorkerError> {
        let redis = config.redis()?.ok_or(WorkerError::NoRedisUrl)?;
        let conn = redis.command_connection();
        let block = Duration::from_millis(config.worker.block_ms);
        let reader = redis.blocking_connection(block);
        let node_id = config.node_id();
        let meta = NodeMeta {
            node_id: node_id.clone(),
            node_name: config.node_name(),
        };
        let worker = &config.worker;
        let group = match worker.group_mode {
            GroupMode::Shared => worker.group.clone(),
            GroupMode::PerNode => format!("{}-{node_id}", worker.group),
        };
        let keys = worker.queues.iter().map(|queue| wire::queue_key(queue)).collect();
        let committer = Committer::start(conn.clone());
        let queue_config = QueueConfig {
            keys,
            group: group.clone(),
            consumer: consumer.clone(),
            block,
            // A node joining the fleet takes device configuration from now
            // on, not the queue's whole history (its applied one is on disk).
            new_entries_only: device_config,
        };
        let queues = JobQueues::new(conn.clone(), reader, committer.clone(), queue_config);
        let settings = Settings {
            device_config,
            ..Settings::from(worker)
        };
        let replay = worker.events_stream.then(|| ReplayConfig {
            max_events: worker.events_stream_max,
            ttl: Duration::from_secs(worker.events_stream_ttl_s),
        });
        // Device configuration jobs are the control plane's, not the fleet's.
        let fleet = (config.telemetry.events && !device_config).then(|| {
            let publisher = FleetPublisher::start(conn.clone(), config.telemetry.events_stream_maxlen);
            JobEvents::new(publisher, &node_id, &config.telemetry)
        });
        Ok(Worker {
            shared: Arc::new(Shared {
                events: EventPublisher::new(conn.clone(), committer, meta, replay, settings.status_ttl),
                fleet,
                liveness: Liveness::new(conn.clone(), &group, &consumer, settings.liveness_ttl),
                cancel_flags: CancelFlags::new(conn),
                slots: Slots::new(settings.concurrency),
                dispatch,
                queues,
                settings,
                node_id: node_id.clone(),
                consumer,
                held: Mutex::default(),
                stats: Stats::default(),
                progress: Mutex::new(Progress {
                    consuming: false,
                    last_beat: Instant::now(),
                    redis_down_since: None,
                    last_consumed: None,
                }),
            }),
        })
    }

    /// The reader of device configuration (`worker.config_queue`) for
    /// `handlers`: a worker of its own on that queue alone, in this node's
    /// own group (`<worker.config_group>-<node id>`) so that every node sees
    /// every configuration job, under this worker's consumer name; `None`
    /// when `worker.config_queue` is empty.
    pub fn device_config_reader(&self, handlers: HandlerTable, config: &Config) -> Result<Option<Worker>, WorkerError> {
        if config.worker.config_queue.is_empty() {
            return Ok(None);
        }
        let mut config = config.clone();
        let worker = &mut config.worker;
        worker.queues = vec![worker.config_queue.clone()];
        worker.group = worker.config_group.clone();
        worker.group_mode = GroupMode::PerNode;
        worker.concurrency = 1;
        let dispatch = Arc::new(Dispatcher::new(
            Arc::clone(self.shared.dispatch.executor()),
            handlers,
            1,
        ));
        Worker::build(dispatch, &config, self.shared.consumer.clone(), true).map(Some)
    }

    /// Where the node's fleet events go (`telemetry.events`), when they do.
    pub fn fleet_events(&self) -> Option<&FleetPublisher> {
        self.shared.fleet.as_ref().map(JobEvents::publisher)
    }

    /// Name the node `node_name` in job events from now on.
    pub fn rename(&self, node_name: &str) {
        self.shared.events.rename(node_name);
    }

    /// This process's consumer name (`{nodeId}-{pid}-{rand}`).
    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Jobs held right now (running or waiting for a slot).
    pub fn in_flight(&self) -> usize {
        self.shared.held.lock().expect("held jobs poisoned").len()
    }

    /// The worker's state. The read loop counts as stalled when it has made
    /// no progress for three read timeouts (at least 10 s) while slots were
    /// free.
    pub fn health(&self) -> WorkerHealth {
        let shared = &self.shared;
        let in_flight = self.in_flight();
        let progress = shared.progress.lock().expect("worker progress poisoned");
        let quiet = progress.last_beat.elapsed();
        let limit = (shared.queues.config().block * 3).max(Duration::from_secs(10));
        WorkerHealth {
            consuming: progress.consuming,
            in_flight,
            completed: shared.stats.completed.load(Ordering::Relaxed),
            failed: shared.stats.failed.load(Ordering::Relaxed),
            last_job_consumed_at: progress.last_consumed,
            redis_down_for: progress.redis_down_since.map(|since| since.elapsed()),
            stalled_for: (progress.consuming && quiet > limit && in_flight < shared.settings.concurrency)
                .then_some(quiet),
        }
    }

    /// Work until `stop` fires, then drain: running jobs get the grace
    /// period to finish, the rest are interrupted and left pending.
    pub async fn run(&self, stop: CancellationToken) -> Result<(), WorkerError> {
        let shared = &self.shared;
        match retry("create consumer groups", Backoff::DEFAULT, &stop, || {
            shared.queues.ensure_groups()
        })
        .await
        {
            Ok(()) => {}
            Err(RetryError::Stopped(_)) => return Ok(()),
            Err(RetryError::Permanent(err)) => return Err(WorkerError::Groups(err)),
        }
        let lifecycle = Lifecycle::default();
        let background = CancellationToken::new();
        let tracker = TaskTracker::new();
        let liveness = tokio::spawn(Arc::clone(shared).keep_alive(background.clone()));
        let watcher = tokio::spawn(Arc::clone(shared).watch_cancel_flags(background.clone()));
        let sweeper = tokio::spawn(Arc::clone(shared).sweep_loop(stop.clone(), tracker.clone(), lifecycle.clone()));
        let config = shared.queues.config();
        if shared.settings.device_config {
            tracing::info!(
                consumer = %shared.consumer,
                group = %config.group,
                queues = ?config.keys,
                "reading device configuration"
            );
        } else {
            tracing::info!(
                consumer = %shared.consumer,
                group = %config.group,
                queues = ?config.keys,
                handlers = ?shared.dispatch.handlers().types(),
                concurrency = shared.settings.concurrency,
                "worker ready"
            );
        }

        Arc::clone(shared).read_loop(&stop, &tracker, &lifecycle).await;

        let _ = sweeper.await;
        tracker.close();
        if !tracker.is_empty() {
            tracing::info!(running = tracker.len(), grace = ?shared.settings.shutdown_grace, "stopping: letting running jobs finish");
        }
        if tokio::time::timeout(shared.settings.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                interrupted = tracker.len(),
                "grace period over: interrupting running jobs; they stay pending for another worker"
            );
            lifecycle.abort.cancel();
            if tokio::time::timeout(SETTLE_GRACE, tracker.wait()).await.is_err() {
                lifecycle.give_up.cancel();
                tracker.wait().await;
            }
        }
        background.cancel();
        let _ = liveness.await;
        let _ = watcher.await;
        if let Err(err) = shared.liveness.retire().await {
            tracing::warn!(error = %err, "could not remove the liveness key; other workers take this one's jobs when it expires");
        }
        let (completed, failed) = (
            shared.stats.completed.load(Ordering::Relaxed),
            shared.stats.failed.load(Ordering::Relaxed),
        );
        if shared.settings.device_config {
            tracing::info!(
                applied = completed,
                rejected = failed,
                "stopped reading device configuration"
            );
        } else {
            tracing::info!(completed, failed, "worker stopped");
        }
        Ok(())
    }
}
