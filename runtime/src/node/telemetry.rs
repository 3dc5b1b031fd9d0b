//! The status loop: snapshot → StatusMessage → Redis, HTTP, `/events` — every
//! `status_interval_s`, and soon after a change (a job started or finished,
//! a GPU appeared or vanished, a service changed state), never more often
//! than `min_change_interval_ms`. Also what the status server serves: the
//! latest status, health with its reasons, metrics and the live feed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use citadel_collector::status::{
    HandlerStatus, NodeIdentity, NodeMode, Reported, ServiceStatus, StatusMessage, WorkerStatus, status_message,
};
use citadel_collector::{Collector, CollectorError, Snapshot, Watch};
use citadel_transports::backoff::{Backoff, worth_logging};
use citadel_transports::status::{Health, HttpPublisher, NodeState, RedisStatusPublisher, ServerEvent, StatusSource};
use citadel_transports::wire;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::events::NodeEvents;
use super::feed::JobFeed;
use crate::config::Config;
use crate::sources::redis::Worker;

/// Probes whose failure makes the node unhealthy (a process that exited,
/// by contrast, is the business of its service's health).
const NODE_PROBES: [&str; 2] = ["system", "gpu"];

/// Timings of the loop.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Publish at least this often.
    pub interval: Duration,
    /// Publish changes no more often than this.
    pub min_change_interval: Duration,
    /// Check the GPU list this often.
    pub gpu_poll: Duration,
    /// Longest a probe or a Redis publish may take.
    pub probe_timeout: Duration,
}

/// The GPUs as last seen: their UUIDs, or `None` when the probe failed.
type GpuFingerprint = Option<Vec<String>>;

#[derive(Default)]
struct Latest {
    status: Option<Arc<str>>,
    at: Option<Instant>,
    failing_probes: Vec<CollectorError>,
    gpus: GpuFingerprint,
    redis_failing: Option<(Instant, String)>,
    redis_failures: u32,
    /// GPUs too hot, in words (when `alertOnHighTemp` is on).
    hot_gpus: Vec<String>,
}

/// The node's telemetry.
pub struct Telemetry {
    pub(super) identity: Mutex<NodeIdentity>,
    /// Failing probes run outside the collector, by probe (`docker`).
    pub(super) probe_errors: Mutex<BTreeMap<&'static str, CollectorError>>,
    /// GPU temperature that makes `/health` 503 (`alertOnHighTemp`), °C.
    pub(super) high_temp_alert: Mutex<Option<u32>>,
    pub(super) timings: Timings,
    pub(super) mode: Mutex<NodeMode>,
    pub(super) collector: Collector,
    pub(super) feed: Arc<JobFeed>,
    pub(super) worker: Option<Worker>,
    pub(super) redis: Option<RedisStatusPublisher>,
    pub(super) http: Mutex<Option<HttpPublisher>>,
    pub(super) watches: Mutex<Vec<Watch>>,
    /// Services by who reports them (`inference`, `native`, `docker`).
    pub(super) services: Mutex<BTreeMap<&'static str, Vec<ServiceStatus>>>,
    /// Job sources besides the Redis worker (the Nexus agent).
    other_jobs: Mutex<Vec<Arc<dyn JobCounts>>>,
    /// The handlers, as last reported.
    handlers: Mutex<Vec<HandlerStatus>>,
    /// What the fleet is told of changes.
    pub(super) events: NodeEvents,
    latest: Mutex<Latest>,
}

/// Jobs a node takes from somewhere besides its Redis worker (the Nexus
/// agent), added into status `worker{}`.
pub trait JobCounts: Send + Sync {
    /// The source's counters, in status form.
    fn counts(&self) -> WorkerStatus;
}

/// `a` and `b` together: either consuming, counters added, the later
/// `last_job_consumed_at` (RFC 3339 strings of one format sort by time).
fn merged(a: WorkerStatus, b: WorkerStatus) -> WorkerStatus {
    WorkerStatus {
        consuming: a.consuming || b.consuming,
        in_flight: a.in_flight + b.in_flight,
        processed: a.processed + b.processed,
        failed: a.failed + b.failed,
        last_job_consumed_at: a.last_job_consumed_at.max(b.last_job_consumed_at),
    }
}

impl Telemetry {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        identity: NodeIdentity,
        timings: Timings,
        mode: NodeMode,
        collector: Collector,
        worker: Option<Worker>,
        redis: Option<RedisStatusPublisher>,
        http: Option<HttpPublisher>,
        events: NodeEvents,
    ) -> Telemetry {
        Telemetry {
            identity: Mutex::new(identity),
            high_temp_alert: Mutex::default(),
            probe_errors: Mutex::default(),
            timings,
            mode: Mutex::new(mode),
            collector,
            feed: Arc::default(),
            worker,
            redis,
            http: Mutex::new(http),
            watches: Mutex::default(),
            services: Mutex::default(),
            other_jobs: Mutex::default(),
            handlers: Mutex::default(),
            events,
            latest: Mutex::default(),
        }
    }

    /// The worker's job observer.
    pub fn job_feed(&self) -> Arc<JobFeed> {
        Arc::clone(&self.feed)
    }

    /// Report the handlers (`handlers[]`); a change publishes at once.
    pub fn set_handlers(&self, handlers: Vec<HandlerStatus>) {
        let mut current = self.handlers.lock().expect("handlers poisoned");
        if *current != handlers {
            self.events.handlers_changed(&current, &handlers);
            *current = handlers;
            self.feed.changed();
        }
    }

    /// Count `source`'s jobs in status `worker{}` too.
    pub fn count_jobs_of(&self, source: Arc<dyn JobCounts>) {
        self.other_jobs.lock().expect("job sources poisoned").push(source);
    }

    /// Report where the node takes jobs from (`redis`, `nexus`); a change
    /// publishes at once.
    pub fn set_mode(&self, mode: NodeMode) {
        let mut current = self.mode.lock().expect("mode poisoned");
        if *current != mode {
            *current = mode;
            self.feed.changed();
        }
    }

    /// Report the node under this name, with these tags and device
    /// configuration, from the next status on.
    pub fn set_identity(&self, name: String, tags: Vec<String>, device_config: Option<serde_json::Value>) {
        let mut identity = self.identity.lock().expect("identity poisoned");
        identity.name = name;
        identity.tags = tags;
        identity.device_config = device_config;
    }

    /// Record whether `probe` (run outside the collector) fails; a failure
    /// shows in `collector_errors[]` and `/health`, a change publishes at once.
    pub fn set_probe_error(&self, probe: &'static str, error: Option<String>) {
        let mut errors = self.probe_errors.lock().expect("probe errors poisoned");
        let changed = match error {
            Some(error) => {
                let error = CollectorError::new(probe, error);
                errors.insert(probe, error.clone()) != Some(error)
            }
            None => errors.remove(probe).is_some(),
        };
        if changed {
            self.feed.changed();
        }
    }

    /// Answer 503 on `/health` while a GPU is at or above `celsius` (`None`: never).
    pub fn alert_on_high_temp(&self, celsius: Option<u32>) {
        *self.high_temp_alert.lock().expect("alert poisoned") = celsius;
    }

    /// Report these services of `source` from now on; a change publishes at once.
    pub fn set_services(&self, source: &'static str, services: Vec<ServiceStatus>) {
        let mut current = self.services.lock().expect("services poisoned");
        if current.get(source) != Some(&services) {
            let before = current.get(source).map_or(&[][..], Vec::as_slice);
            self.events.services_changed(source, before, &services);
            current.insert(source, services);
            self.feed.changed();
        }
    }

    /// Watch these processes and cgroups (`processes[]`) from now on.
    pub fn set_watches(&self, watches: Vec<Watch>) {
        let mut current = self.watches.lock().expect("watches poisoned");
        if *current != watches {
            *current = watches;
            self.feed.changed();
        }
    }

    /// The GPU source in use (`nvml`, `nvidia-smi`, `none`).
    pub fn gpu_source(&self) -> &'static str {
        self.collector.gpu_source()
    }

    /// Publish until `stop` (the HTTP backlog is handed to the spool by
    /// [`Telemetry::close_http`], after the last status).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let timings = self.timings;
        let mut next_periodic = tokio::time::Instant::now();
        let mut last: Option<tokio::time::Instant> = None;
        let mut redis_retries = Backoff::DEFAULT.start();
        let mut gpu_poll = tokio::time::interval(timings.gpu_poll);
        gpu_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        gpu_poll.tick().await;
        loop {
            let periodic = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(next_periodic) => true,
                _ = self.feed.changed.notified() => false,
                _ = gpu_poll.tick() => {
                    if !self.gpus_changed().await {
                        continue;
                    }
                    tracing::info!("the GPUs changed; publishing status");
                    false
                }
            };
            if !periodic && let Some(last) = last {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(last + timings.min_change_interval) => {}
                }
            }
            self.publish_once().await;
            let now = tokio::time::Instant::now();
            last = Some(now);
            next_periodic = now + timings.interval;
            // Status that did not reach Redis is sent again soon, with the
            // shared backoff, rather than at the next interval or change.
            if self
                .latest
                .lock()
                .expect("latest status poisoned")
                .redis_failing
                .is_some()
            {
                next_periodic = next_periodic.min(now + redis_retries.next_delay());
            } else {
                redis_retries.reset();
            }
        }
    }

    /// Hand the HTTP publisher's backlog to the spool (after the last status).
    pub async fn close_http(&self) {
        let http = self.http.lock().expect("http publisher poisoned").take();
        if let Some(http) = http {
            http.shutdown().await;
        }
    }

    /// Whether the GPU list differs from the last snapshot's. Only with
    /// NVML (a few µs); `nvidia-smi` is too dear to poll between snapshots.
    async fn gpus_changed(&self) -> bool {
        if self.collector.gpu_source() == "nvidia-smi" {
            return false;
        }
        let now = fingerprint(&self.collector.gpus().await.map(|report| report.gpus).ok());
        now != self.latest.lock().expect("latest status poisoned").gpus
    }

    /// Take a snapshot and publish it everywhere.
    pub async fn publish_once(&self) -> Arc<str> {
        self.publish(NodeState::Online, &[]).await
    }

    /// Collect and publish now, confirming that device configuration job
    /// `job_id` has been applied: the status stream entry carries `status
    /// configured` and `jobId`.
    pub async fn publish_configured(&self, job_id: &str) -> Arc<str> {
        self.publish(NodeState::Configured, &[("jobId", job_id)]).await
    }

    /// Publish the last status of a clean shutdown (`status stopping`).
    pub async fn publish_stopping(&self) -> Arc<str> {
        self.publish(NodeState::Stopping, &[]).await
    }

    async fn publish(&self, state: NodeState, extra: &[(&str, &str)]) -> Arc<str> {
        let watches = self.watches.lock().expect("watches poisoned").clone();
        let snapshot = self.collector.collect(&watches).await;
        self.feed.metrics.observe(&snapshot);
        self.events.gpus_seen(&snapshot.gpu.gpus);
        let status = serde_json::to_string(&self.status_of(&snapshot)).expect("a status message serializes");
        let status: Arc<str> = status.into();
        {
            let mut latest = self.latest.lock().expect("latest status poisoned");
            latest.status = Some(Arc::clone(&status));
            latest.at = Some(Instant::now());
            latest.failing_probes = snapshot
                .errors
                .iter()
                .filter(|err| NODE_PROBES.contains(&err.probe.as_str()))
                .cloned()
                .collect();
            let threshold = *self.high_temp_alert.lock().expect("alert poisoned");
            latest.hot_gpus = snapshot
                .gpu
                .gpus
                .iter()
                .filter_map(|gpu| {
                    let celsius = gpu.temperature_celsius?;
                    (celsius >= threshold?).then(|| {
                        format!(
                            "gpu {}: {celsius} °C, at or above {} °C (alertOnHighTemp; telemetry.high_temp_celsius)",
                            gpu.index,
                            threshold.unwrap_or_default()
                        )
                    })
                })
                .collect();
            let gpu_failed = snapshot.errors.iter().any(|err| err.probe == "gpu");
            latest.gpus = if gpu_failed {
                None
            } else {
                fingerprint(&Some(snapshot.gpu.gpus.clone()))
            };
        }
        self.feed.send("status", status.to_string());
        if let Some(http) = self.http.lock().expect("http publisher poisoned").as_ref() {
            http.submit(&status);
        }
        if let Some(redis) = &self.redis {
            let outcome =
                match tokio::time::timeout(self.timings.probe_timeout, redis.publish(&status, state, extra)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_) => Err(format!(
                        "no answer within {} ms",
                        self.timings.probe_timeout.as_millis()
                    )),
                };
            self.redis_outcome(outcome);
        }
        status
    }

    fn redis_outcome(&self, outcome: Result<(), String>) {
        let mut latest = self.latest.lock().expect("latest status poisoned");
        match outcome {
            Ok(()) => {
                latest.redis_failures = 0;
                if latest.redis_failing.take().is_some() {
                    tracing::info!("publishing status on Redis again");
                }
            }
            Err(err) => {
                self.feed.metrics.publish_failed("redis");
                if worth_logging(latest.redis_failures) {
                    tracing::warn!(error = %err, "cannot publish status on Redis; will try again at the next status");
                }
                let since = latest
                    .redis_failing
                    .as_ref()
                    .map_or_else(Instant::now, |(since, _)| *since);
                latest.redis_failing = Some((since, err));
                latest.redis_failures += 1;
            }
        }
    }

    /// The StatusMessage for `snapshot`.
    pub fn status_of(&self, snapshot: &Snapshot) -> StatusMessage {
        let worker = self.worker.as_ref().map(|worker| {
            let health = worker.health();
            WorkerStatus {
                consuming: health.consuming,
                in_flight: health.in_flight as u64,
                processed: health.completed + health.failed,
                failed: health.failed,
                last_job_consumed_at: health.last_job_consumed_at.map(wire::timestamp),
            }
        });
        let reported = Reported {
            services: self
                .services
                .lock()
                .expect("services poisoned")
                .values()
                .flatten()
                .cloned()
                .collect(),
            worker: self
                .other_jobs
                .lock()
                .expect("job sources poisoned")
                .iter()
                .fold(worker.unwrap_or_default(), |total, source| {
                    merged(total, source.counts())
                }),
            mode: *self.mode.lock().expect("mode poisoned"),
            handlers: self.handlers.lock().expect("handlers poisoned").clone(),
            errors: self
                .probe_errors
                .lock()
                .expect("probe errors poisoned")
                .values()
                .cloned()
                .collect(),
        };
        let identity = self.identity.lock().expect("identity poisoned").clone();
        status_message(&identity, snapshot, &reported)
    }
}

fn fingerprint(gpus: &Option<Vec<citadel_collector::GpuInfo>>) -> GpuFingerprint {
    gpus.as_ref()
        .map(|gpus| gpus.iter().map(|gpu| gpu.uuid.clone()).collect())
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

impl StatusSource for Telemetry {
    fn health(&self) -> Health {
        let mut reasons = Vec::new();
        if let Some(worker) = &self.worker {
            let health = worker.health();
            if let Some(down) = health.redis_down_for {
                reasons.push(format!(
                    "redis: unreachable for {}; no jobs are being read (reconnecting with backoff)",
                    seconds(down)
                ));
            }
            if let Some(stalled) = health.stalled_for {
                reasons.push(format!(
                    "worker: no progress reading jobs for {} although it has free slots",
                    seconds(stalled)
                ));
            }
        }
        let latest = self.latest.lock().expect("latest status poisoned");
        if let Some((since, err)) = &latest.redis_failing {
            reasons.push(format!(
                "redis: cannot publish status for {}: {err}",
                seconds(since.elapsed())
            ));
        }
        // Allow one interval plus the slowest snapshot before calling it stale.
        let stale_after = self.timings.interval * 2 + self.timings.probe_timeout * 2;
        match latest.at {
            None => reasons.push("collector: no snapshot taken yet".into()),
            Some(at) if at.elapsed() > stale_after => {
                reasons.push(format!("collector: no snapshot for {}", seconds(at.elapsed())))
            }
            Some(_) => {}
        }
        reasons.extend(latest.hot_gpus.iter().cloned());
        for err in self.probe_errors.lock().expect("probe errors poisoned").values() {
            reasons.push(format!("{}: {}", err.probe, err.error));
        }
        for err in &latest.failing_probes {
            reasons.push(format!("collector: {} probe failing: {}", err.probe, err.error));
        }
        Health { reasons }
    }

    fn status(&self) -> Option<String> {
        self.latest
            .lock()
            .expect("latest status poisoned")
            .status
            .as_deref()
            .map(str::to_string)
    }

    fn metrics(&self) -> String {
        if let Some(http) = self.http.lock().expect("http publisher poisoned").as_ref() {
            self.feed.metrics.observe_http(http.stats(), http.backlog());
        }
        self.feed.metrics.encode()
    }

    fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.feed.events.subscribe()
    }
}

/// Who the node is, as configured (device configuration included); it
/// started now (for `uptime_seconds`).
pub fn identity(config: &Config) -> NodeIdentity {
    NodeIdentity {
        id: config.node_id(),
        name: config.node_name(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        started_at: SystemTime::now(),
        tags: config.node.tags.clone(),
        device_code: config.device_code.clone(),
        device_config: config
            .device
            .as_ref()
            .and_then(|device| serde_json::to_value(device).ok()),
    }
}
