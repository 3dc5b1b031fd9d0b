//! The dispatcher's [`JobObserver`] (and the engines' [`InferenceObserver`])
//! for telemetry: counts and times jobs and generations into the metrics, sends each start and finish to `/events` listeners, and
//! nudges the status loop (a job starting or finishing is a change). All of
//! it is a few atomic updates and a non-blocking broadcast: it never holds
//! a job up.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use citadel_transports::status::ServerEvent;
use citadel_transports::wire;
use serde_json::json;
use tokio::sync::{Notify, broadcast};

use super::metrics::Metrics;
use crate::capabilities::inference::{GenerationRecord, InferenceObserver};
use crate::dispatch::{JobInfo, JobObserver, JobOutcome};

/// Events buffered for `/events` listeners; a listener further behind gets
/// a `lagged` event and skips ahead.
const EVENT_BUFFER: usize = 1024;

/// Job lifecycle → metrics, live events and status triggers.
pub struct JobFeed {
    pub(super) metrics: Metrics,
    pub(super) events: broadcast::Sender<ServerEvent>,
    pub(super) changed: Notify,
    running: AtomicI64,
}

impl Default for JobFeed {
    fn default() -> Self {
        JobFeed {
            metrics: Metrics::new(),
            events: broadcast::channel(EVENT_BUFFER).0,
            changed: Notify::new(),
            running: AtomicI64::new(0),
        }
    }
}

impl JobFeed {
    /// Tell `/events` listeners (if any).
    pub(super) fn send(&self, kind: &'static str, data: String) {
        let _ = self.events.send(ServerEvent {
            kind,
            data: data.into(),
        });
    }

    /// Jobs running now.
    pub fn running(&self) -> u64 {
        u64::try_from(self.running.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Something reported in the status changed: publish soon.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    fn job_event(&self, event: &str, job: &JobInfo<'_>, extra: serde_json::Value) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let mut data = json!({
            "event": event,
            "jobId": job.job_id,
            "type": job.job_type,
            "tenant": job.tenant,
            "timestamp": wire::timestamp(SystemTime::now()),
        });
        if let (Some(data), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        self.send("job", data.to_string());
    }
}

impl InferenceObserver for JobFeed {
    fn generation(&self, record: &GenerationRecord<'_>) {
        self.metrics.generation(record);
    }
}

impl JobObserver for JobFeed {
    fn started(&self, job: &JobInfo<'_>) {
        self.metrics.job_started(job.job_type);
        let running = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.set_in_flight(running.max(0) as usize);
        self.job_event("started", job, json!({}));
        self.changed();
    }

    fn first_chunk(&self, job: &JobInfo<'_>, after: Duration) {
        self.metrics.first_chunk(job.job_type, after);
    }

    fn finished(&self, job: &JobInfo<'_>, outcome: JobOutcome, took: Duration) {
        self.metrics.job_finished(job.job_type, outcome.as_str(), took);
        let running = self.running.fetch_sub(1, Ordering::Relaxed) - 1;
        self.metrics.set_in_flight(running.max(0) as usize);
        self.job_event(
            "finished",
            job,
            json!({"outcome": outcome.as_str(), "duration_ms": took.as_secs_f64() * 1000.0}),
        );
        self.changed();
    }

    fn consuming(&self, _consuming: bool) {
        self.changed();
    }
}
