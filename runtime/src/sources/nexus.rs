//! `citadel agent`: the on-prem node. It asks Citadel's Nexus HTTP API for
//! jobs (`GET /api/v1/jobs/next`; after a job at once, after `204` every
//! `agent.poll_interval_ms`), runs each through the node's dispatcher
//! (`crate::dispatch`: the same handlers, tenant slots and observers as
//! `citadel work`; up to `worker.concurrency` at once), and reports each
//! outcome (`POST /api/v1/jobs/{id}/status`).
//!
//! A job runs once. Its outcome is written to the state directory before it
//! is reported and removed once the API has taken it, and a report that
//! fails is retried with the shared backoff — through outages and across
//! restarts of the node — never by running the job again.
//!
//! With Redis configured as well, the node works from Redis Streams while
//! Redis answers ([`follow_redis`] switches the [`Source`]): the agent then
//! polls Nexus only when a `wake:v1:node:{nodeId}` message asks it to
//! (`citadel_transports::redis::listen_for_wake`), and takes over polling
//! while Redis is down.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use citadel_collector::status::{NodeMode, WorkerStatus};
use citadel_transports::backoff::{Backoff, RetryError, retry, worth_logging};
use citadel_transports::nexus::{NexusClient, NexusJob, Outcome};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dispatch::{Admission, Dispatcher, JobControl, JobOutcome, Recovery};
use crate::job::JobSpec;
use crate::node::Telemetry;
use crate::node::telemetry::JobCounts;
use crate::policy::DEFAULT_TENANT;
use crate::sources::redis::Worker;

/// Where the node takes jobs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Redis Streams (`citadel work`'s worker); Nexus only when woken.
    Redis,
    /// Polling the Nexus API.
    Nexus,
}

impl Source {
    /// As status reports it (`node.mode`).
    pub fn mode(self) -> NodeMode {
        match self {
            Source::Redis => NodeMode::Redis,
            Source::Nexus => NodeMode::Nexus,
        }
    }
}

/// Redis unreachable this long: take jobs from Nexus.
const FALLBACK_AFTER: Duration = Duration::from_secs(2);

/// Waits between attempts to report an outcome.
const REPORT_BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(200),
    max: Duration::from_secs(30),
};

/// An agent that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No Nexus API is configured.
    #[error("no Nexus API: give --nexus-url or set agent.nexus_url")]
    NoNexusUrl,
    /// The client cannot be built.
    #[error("{0}")]
    Client(String),
    /// Unreported outcomes cannot be kept.
    #[error("cannot keep unreported outcomes in {}: {source}", path.display())]
    Pending {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters, also shown in status `worker{}` (added to the Redis
/// worker's in adaptive mode).
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Jobs taken from the API.
    pub taken: AtomicU64,
    /// Outcomes the API has taken.
    pub reported: AtomicU64,
    /// Jobs running now.
    pub in_flight: AtomicU64,
    /// Jobs that ended (with a result or an error).
    pub processed: AtomicU64,
    /// Jobs that ended with an error.
    pub failed: AtomicU64,
    /// When the last job was taken.
    pub last_taken_at: Mutex<Option<SystemTime>>,
}

impl JobCounts for AgentStats {
    fn counts(&self) -> WorkerStatus {
        WorkerStatus {
            consuming: true,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_job_consumed_at: self
                .last_taken_at
                .lock()
                .expect("stats poisoned")
                .map(citadel_transports::wire::timestamp),
        }
    }
}

/// Outcomes not yet taken by the API, one file per job in
/// `<state_dir>/nexus-pending/`.
#[derive(Debug, Clone)]
struct PendingReports {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct PendingReport {
    id: String,
    outcome: Outcome,
}

impl PendingReports {
    fn open(dir: PathBuf) -> std::io::Result<PendingReports> {
        std::fs::create_dir_all(&dir)?;
        Ok(PendingReports { dir })
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", hex::encode(Sha256::digest(id.as_bytes()))))
    }

    /// Keep `outcome` until the API has it (temp file + rename).
    fn keep(&self, id: &str, outcome: &Outcome) -> std::io::Result<()> {
        let file = self.file(id);
        let temporary = file.with_extension("tmp");
        let report = PendingReport {
            id: id.to_string(),
            outcome: outcome.clone(),
        };
        std::fs::write(&temporary, serde_json::to_vec(&report).map_err(std::io::Error::other)?)?;
        std::fs::rename(&temporary, &file)
    }

    fn forget(&self, id: &str) {
        let _ = std::fs::remove_file(self.file(id));
    }

    /// Every kept outcome (damaged files are reported and skipped).
    fn all(&self) -> Vec<(String, Outcome)> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            match std::fs::read(&path).map(|bytes| serde_json::from_slice::<PendingReport>(&bytes)) {
                Ok(Ok(report)) => found.push((report.id, report.outcome)),
                _ => tracing::error!(file = %path.display(), "an unreported outcome is unreadable; skipping it"),
            }
        }
        found
    }
}

/// The Nexus polling agent.
pub struct Agent {
    client: NexusClient,
    dispatch: Arc<Dispatcher>,
    pending: PendingReports,
    poll_interval: Duration,
    concurrency: usize,
    shutdown_grace: Duration,
    stats: Arc<AgentStats>,
    source: watch::Receiver<Source>,
    wake: Arc<Notify>,
}

impl Agent {
    /// An agent for `config` running its jobs through `dispatch`.
    pub fn new(dispatch: Arc<Dispatcher>, config: &Config) -> Result<Agent, AgentError> {
        let agent = &config.agent;
        let url = agent.nexus_url.as_deref().ok_or(AgentError::NoNexusUrl)?;
        let client = NexusClient::new(
            url,
            agent.token.clone(),
            Duration::from_millis(agent.request_timeout_ms),
        )
        .map_err(AgentError::Client)?;
        let dir = config.state_dir().join("nexus-pending");
        let pending = PendingReports::open(dir.clone()).map_err(|source| AgentError::Pending { path: dir, source })?;
        Ok(Agent {
            client,
            dispatch,
            pending,
            poll_interval: Duration::from_millis(agent.poll_interval_ms),
            concurrency: config.worker.concurrency as usize,
            shutdown_grace: Duration::from_millis(config.worker.shutdown_grace_ms),
            stats: Arc::default(),
            source: watch::channel(Source::Nexus).1,
            wake: Arc::default(),
        })
    }

    /// Poll only while `source` says `Nexus`, and when `wake` is notified.
    pub fn switched_by(self, source: watch::Receiver<Source>, wake: Arc<Notify>) -> Agent {
        Agent { source, wake, ..self }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<AgentStats> {
        Arc::clone(&self.stats)
    }

    /// Report what an earlier run left unreported, then take and run jobs
    /// until `stop`; running jobs get `worker.shutdown_grace_ms` to finish.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let tracker = TaskTracker::new();
        for (id, outcome) in self.pending.all() {
            tracing::info!(job_id = %id, "reporting an outcome an earlier run could not");
            let agent = Arc::clone(&self);
            let stop = stop.clone();
            tracker.spawn(async move { agent.report(&id, outcome, &stop).await });
        }
        tracing::info!(
            nexus = %self.client.base(),
            handlers = ?self.dispatch.handlers().types(),
            concurrency = self.concurrency,
            "agent ready"
        );
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let abort = CancellationToken::new();
        let mut failures = 0u32;
        let mut waits = Backoff::DEFAULT.start();
        let mut source = self.source.clone();
        // Woken while on Redis: poll until Nexus has nothing more.
        let mut woken = false;
        loop {
            if *source.borrow_and_update() == Source::Redis && !woken {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.wake.notified() => woken = true,
                    _ = source.changed() => {}
                }
                continue;
            }
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                permit = Arc::clone(&slots).acquire_owned() => permit.expect("slots are never closed"),
            };
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = self.client.next() => next,
            };
            match next {
                Ok(Some(job)) => {
                    if failures > 0 {
                        tracing::info!(failures, "the Nexus API answers again");
                    }
                    failures = 0;
                    waits.reset();
                    self.stats.taken.fetch_add(1, Ordering::Relaxed);
                    *self.stats.last_taken_at.lock().expect("stats poisoned") = Some(SystemTime::now());
                    let agent = Arc::clone(&self);
                    let (stop, abort) = (stop.clone(), abort.clone());
                    tracker.spawn(async move {
                        agent.handle(job, &stop, &abort).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    failures = 0;
                    waits.reset();
                    woken = false;
                    if *source.borrow() == Source::Nexus {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(self.poll_interval) => {}
                            _ = self.wake.notified() => {}
                            _ = source.changed() => {}
                        }
                    }
                }
                Err(err) => {
                    drop(permit);
                    woken = false;
                    if worth_logging(failures) {
                        tracing::warn!(error = %err, "cannot take a job from the Nexus API; retrying with backoff");
                    }
                    failures += 1;
                    let delay = waits.next_delay().max(self.poll_interval.min(Duration::from_secs(1)));
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracker.close();
        if !tracker.is_empty() {
            tracing::info!(running = tracker.len(), grace = ?self.shutdown_grace, "stopping: letting running jobs finish");
        }
        if tokio::time::timeout(self.shutdown_grace, tracker.wait()).await.is_err() {
            tracing::warn!("shutdown grace over: interrupting the jobs still running (they are not reported)");
            abort.cancel();
            tracker.wait().await;
        }
        tracing::info!(
            taken = self.stats.taken.load(Ordering::Relaxed),
            reported = self.stats.reported.load(Ordering::Relaxed),
            "agent stopped"
        );
    }

    /// Run one job and report its outcome.
    async fn handle(&self, job: NexusJob, stop: &CancellationToken, abort: &CancellationToken) {
        let spec = JobSpec {
            id: job.id,
            job_type: job.job_type,
            tenant: job.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_string()),
            payload: job.payload,
            ray_id: job.ray_id,
            attempt: 1,
            timeout: job.timeout_ms.map(Duration::from_millis),
        };
        let id = spec.id.clone();
        let admitted = match self.dispatch.admit(&spec, abort).await {
            Admission::Admitted(admitted) => admitted,
            Admission::Unsupported(unsupported) => {
                let error = unsupported.to_string();
                return self.report(&id, Outcome::Failure { error }, stop).await;
            }
            Admission::Stopped => {
                tracing::warn!(job_id = %id, "stopped while waiting for its tenant's slot: not reported (the Nexus API decides when to hand it out again)");
                return;
            }
        };
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let control = JobControl {
            cancel: abort,
            interrupt: abort,
            recovery: Recovery::Report,
        };
        let ran = self.dispatch.run(admitted, spec, None, control).await;
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let outcome = match (ran.outcome, ran.report.outcome) {
            (JobOutcome::Interrupted, _) => {
                tracing::warn!(job_id = %id, "interrupted by shutdown: not reported (the Nexus API decides when to hand it out again)");
                return;
            }
            (_, Ok(output)) => Outcome::Success { output },
            (_, Err(err)) => Outcome::Failure {
                error: format!("{} ({})", err, err.class()),
            },
        };
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Outcome::Failure { .. }) {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.report(&id, outcome, stop).await;
    }

    /// Keep `outcome` on disk, then report it until the API takes it (or
    /// refuses it for good); on shutdown it stays for the next run.
    async fn report(&self, id: &str, outcome: Outcome, stop: &CancellationToken) {
        if let Err(err) = self.pending.keep(id, &outcome) {
            tracing::warn!(job_id = %id, error = %err, "cannot keep the outcome on disk; reporting it from memory only");
        }
        let what = format!("report job {id}");
        match retry(&what, REPORT_BACKOFF, stop, || self.client.report(id, &outcome)).await {
            Ok(()) => {
                self.pending.forget(id);
                self.stats.reported.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(job_id = %id, "outcome reported");
            }
            Err(RetryError::Permanent(err)) => {
                self.pending.forget(id);
                tracing::error!(job_id = %id, error = %err, "the Nexus API refused the outcome; dropping it");
            }
            Err(RetryError::Stopped(err)) => {
                tracing::warn!(job_id = %id, error = %err, "stopping with the outcome unreported; it is reported when the node starts again");
            }
        }
    }
}

/// Follow Redis's reachability, as the worker sees it: Nexus once Redis has
/// been unreachable for [`FALLBACK_AFTER`], Redis again as soon as the
/// worker reads from it. Switches are logged and shown in status
/// (`node.mode`).
pub async fn follow_redis(
    worker: Worker,
    source: watch::Sender<Source>,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let down_for = worker.health().redis_down_for;
        let now = match (*source.borrow(), down_for) {
            (Source::Redis, Some(down)) if down >= FALLBACK_AFTER => Source::Nexus,
            (Source::Nexus, None) => Source::Redis,
            (current, _) => current,
        };
        if source.send_if_modified(|current| std::mem::replace(current, now) != now) {
            match now {
                Source::Nexus => {
                    tracing::warn!(down_for = ?down_for.unwrap_or_default(), "Redis is unreachable: taking jobs from the Nexus API")
                }
                Source::Redis => tracing::info!("Redis answers again: taking jobs from Redis Streams"),
            }
            telemetry.set_mode(now.mode());
        }
    }
}
