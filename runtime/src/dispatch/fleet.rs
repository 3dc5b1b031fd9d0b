//! What the fleet hears of a job: its `job.*` events on
//! `citadel:v1:events` and its handler's log records as `worker.message`
//! events (`warn` and `error` always, `info` sampled per tenant, at most
//! `telemetry.event_logs_per_job` per job). A source adds them to the
//! writes the job makes anyway (Redis: the start script and the settling
//! transaction), so they cost no round trip of their own.

use std::sync::Arc;
use std::time::Duration;

use citadel_transports::fleet::{FleetEvent, Level, event_type};
use citadel_transports::redis::{Batch, FleetPublisher};

use super::JobInfo;
use crate::config::TelemetryConfig;
use crate::sandbox::joblog::{self, LogRecord};

/// How a job ended, as the fleet is told.
#[derive(Debug, Clone, Copy)]
pub enum Ended<'a> {
    /// It succeeded.
    Completed,
    /// It failed; `will_retry` when it runs again.
    Failed {
        /// The failure class (`trap`, `timeout`, `unsupported_job_type`…).
        class: &'a str,
        /// What went wrong.
        error: &'a str,
        /// Whether it will run again.
        will_retry: bool,
    },
    /// It was moved to its dead-letter queue.
    DeadLettered {
        /// The failure class of its last attempt.
        class: &'a str,
        /// Why.
        reason: &'a str,
    },
    /// Its producer cancelled it.
    Cancelled,
}

/// Writes the fleet events of this node's jobs.
#[derive(Clone)]
pub struct JobEvents {
    publisher: FleetPublisher,
    node_id: String,
    /// Log sampling (`event_log_sample_rate*`, `event_logs_per_job`).
    telemetry: Arc<TelemetryConfig>,
}

impl JobEvents {
    /// Events of node `node_id`'s jobs through `publisher`, log records
    /// sampled as `telemetry` says.
    pub fn new(publisher: FleetPublisher, node_id: &str, telemetry: &TelemetryConfig) -> JobEvents {
        JobEvents {
            publisher,
            node_id: node_id.to_string(),
            telemetry: Arc::new(telemetry.clone()),
        }
    }

    /// The publisher (for a source's own script).
    pub fn publisher(&self) -> &FleetPublisher {
        &self.publisher
    }

    fn event(&self, kind: &str, level: Level, job: &JobInfo<'_>, attempt: u32, message: String) -> FleetEvent {
        FleetEvent::new(kind, level, &self.node_id, message)
            .for_job(job.job_type, job.job_id, job.tenant)
            .with("attempt", attempt)
    }

    /// `job.started`.
    pub fn started(&self, job: &JobInfo<'_>, attempt: u32) -> FleetEvent {
        let message = format!("{} started on {}", job.job_type, self.node_id);
        self.event(event_type::JOB_STARTED, Level::Info, job, attempt, message)
    }

    /// The event of a job that ended after `took` (`None`: it never ran).
    pub fn ended(&self, job: &JobInfo<'_>, attempt: u32, ended: Ended<'_>, took: Option<Duration>) -> FleetEvent {
        let event = match ended {
            Ended::Completed => self.event(
                event_type::JOB_COMPLETED,
                Level::Info,
                job,
                attempt,
                format!("{} completed", job.job_type),
            ),
            Ended::Failed {
                class,
                error,
                will_retry,
            } => {
                let level = if will_retry { Level::Warn } else { Level::Error };
                self.event(event_type::JOB_FAILED, level, job, attempt, error.to_string())
                    .with("errorClass", class)
                    .with("willRetry", will_retry)
            }
            Ended::DeadLettered { class, reason } => self
                .event(
                    event_type::JOB_DEAD_LETTERED,
                    Level::Error,
                    job,
                    attempt,
                    reason.to_string(),
                )
                .with("errorClass", class),
            Ended::Cancelled => self.event(
                event_type::JOB_CANCELLED,
                Level::Info,
                job,
                attempt,
                format!("{} cancelled by its producer", job.job_type),
            ),
        };
        match took {
            Some(took) => event.with("durationMs", u64::try_from(took.as_millis()).unwrap_or(u64::MAX)),
            None => event,
        }
    }

    /// The job's log records the fleet hears of: `warn` and `error`
    /// always, `info` sampled at the tenant's rate, `trace`/`debug` never;
    /// at most the per-job cap, the last one saying how many were left out.
    pub fn log_records(&self, job: &JobInfo<'_>, records: &[LogRecord]) -> Vec<FleetEvent> {
        let config = &self.telemetry;
        let rate = config.event_log_sample_rate_of(job.tenant);
        let cap = config.event_logs_per_job as usize;
        let mut kept = Vec::new();
        let mut left_out = 0usize;
        for record in records {
            let level = match record.level {
                joblog::Level::Trace | joblog::Level::Debug => continue,
                joblog::Level::Info if rate < 1.0 && rand::random::<f64>() >= rate => continue,
                joblog::Level::Info => Level::Info,
                joblog::Level::Warn => Level::Warn,
                joblog::Level::Error => Level::Error,
            };
            if kept.len() == cap {
                left_out += 1;
                continue;
            }
            let mut event = FleetEvent::new(event_type::WORKER_MESSAGE, level, &self.node_id, record.message.clone())
                .for_job(job.job_type, job.job_id, job.tenant)
                .with("source", record.source.as_str());
            for (key, value) in &record.fields {
                event.meta.insert(key.clone(), value.clone().into());
            }
            kept.push(event);
        }
        if left_out > 0
            && let Some(last) = kept.last_mut()
        {
            last.meta.insert("recordsLeftOut".into(), left_out.into());
        }
        kept
    }

    /// Add `events` to `batch`.
    pub fn add_to(&self, batch: &mut Batch, events: &[FleetEvent]) {
        for event in events {
            self.publisher.event_in(batch, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::joblog::Source;

    fn record(level: joblog::Level, message: &str) -> LogRecord {
        LogRecord {
            level,
            source: Source::Guest,
            message: message.into(),
            fields: vec![("step".into(), "load".into())],
        }
    }

    async fn events(config: TelemetryConfig) -> JobEvents {
        // A publisher that never connects: these tests only build events.
        let redis = citadel_transports::redis::Endpoint::open("redis://127.0.0.1:1", &Default::default()).unwrap();
        let conn = redis.command_connection();
        JobEvents::new(FleetPublisher::start(conn, 1000), "gpu-7", &config)
    }

    const JOB: JobInfo<'static> = JobInfo {
        job_id: "job-1",
        job_type: "etl",
        tenant: "acme",
    };

    #[tokio::test]
    async fn warnings_and_errors_always_pass_info_is_sampled_and_the_cap_holds() {
        let none = TelemetryConfig {
            event_log_sample_rate: 0.0,
            ..TelemetryConfig::default()
        };
        let records = [
            record(joblog::Level::Debug, "d"),
            record(joblog::Level::Info, "i"),
            record(joblog::Level::Warn, "w"),
            record(joblog::Level::Error, "e"),
        ];
        let kept = events(none).await.log_records(&JOB, &records);
        let messages: Vec<_> = kept.iter().map(|event| event.message.as_str()).collect();
        assert_eq!(messages, ["w", "e"]);
        assert_eq!(kept[0].level, Level::Warn);
        assert_eq!(kept[0].meta["step"], "load");
        assert_eq!(kept[0].run_id.as_deref(), Some("job-1"));

        let mut all = TelemetryConfig {
            event_log_sample_rate: 0.0,
            event_logs_per_job: 3,
            ..TelemetryConfig::default()
        };
        all.event_log_sample_rate_by_tenant.insert("acme".into(), 1.0);
        let many: Vec<_> = (0..10).map(|_| record(joblog::Level::Info, "i")).collect();
        let kept = events(all).await.log_records(&JOB, &many);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[2].meta["recordsLeftOut"], 7);
    }

    #[tokio::test]
    async fn a_tenth_of_info_records_is_about_a_tenth() {
        let sampled = events(TelemetryConfig {
            event_logs_per_job: 100_000,
            ..TelemetryConfig::default()
        })
        .await;
        let many: Vec<_> = (0..20_000).map(|_| record(joblog::Level::Info, "i")).collect();
        let kept = sampled.log_records(&JOB, &many).len();
        assert!((1_500..2_500).contains(&kept), "kept {kept} of 20000 at 0.1");
    }

    #[tokio::test]
    async fn ended_events_carry_class_retry_and_duration() {
        let events = events(TelemetryConfig::default()).await;
        let failed = Ended::Failed {
            class: "trap",
            error: "boom",
            will_retry: true,
        };
        let event = events.ended(&JOB, 2, failed, Some(Duration::from_millis(1500)));
        assert_eq!(event.event_type, "job.failed");
        assert_eq!(event.level, Level::Warn);
        assert_eq!(event.meta["errorClass"], "trap");
        assert_eq!(event.meta["willRetry"], true);
        assert_eq!(event.meta["durationMs"], 1500);
        assert_eq!(event.meta["attempt"], 2);
        assert_eq!(event.job_name.as_deref(), Some("etl"));
        let event = events.ended(&JOB, 1, Ended::Completed, None);
        assert_eq!(event.event_type, "job.completed");
        assert!(!event.meta.contains_key("durationMs"));
    }
}
