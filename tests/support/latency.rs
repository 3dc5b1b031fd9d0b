//! Another tenant's view of a node under attack: trivial jobs sent one at a
//! time, each timed from its `XADD` to its `end` event on the job's channel,
//! and the percentiles the tests and `scripts/bench` report.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};

use crate::{RedisServer, enqueue_fields};

/// A tenant sending trivial `echo` jobs to a node and timing each.
pub struct Victim {
    tenant: String,
    conn: redis::Connection,
    events: BoxStream<'static, redis::Msg>,
    sent: usize,
}

impl Victim {
    /// Jobs of `tenant` on the queue of `redis`, watching every job's events.
    pub async fn new(redis: &RedisServer, tenant: &str) -> Victim {
        let mut pubsub = redis.client().get_async_pubsub().await.expect("pubsub");
        pubsub.psubscribe("stream:v1:*").await.expect("PSUBSCRIBE");
        Victim {
            tenant: tenant.to_string(),
            conn: redis.conn(),
            events: pubsub.into_on_message().boxed(),
            sent: 0,
        }
    }

    /// Send one job and wait for its `end`: its enqueue-to-end time.
    pub async fn round_trip(&mut self) -> Duration {
        self.sent += 1;
        let job_id = format!("{}-{}", self.tenant, self.sent);
        let payload = json!({"text": "hi", "tenant": self.tenant}).to_string();
        let started = Instant::now();
        enqueue_fields(
            &mut self.conn,
            &[("jobId", &job_id), ("type", "echo"), ("payload", &payload)],
        );
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.events.next())
                .await
                .unwrap_or_else(|_| panic!("{job_id} did not end within a minute"))
                .expect("pubsub open");
            let event: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
            if event["jobId"] != job_id.as_str() {
                continue;
            }
            match event["type"].as_str() {
                Some("end") => return started.elapsed(),
                Some("error") => panic!("{job_id} failed: {event}"),
                _ => {}
            }
        }
    }

    /// `jobs` round trips, one after another.
    pub async fn round_trips(&mut self, jobs: usize) -> Vec<Duration> {
        let mut took = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            took.push(self.round_trip().await);
        }
        took
    }
}

/// The `at` quantile (0–1) of `samples`, nearest rank.
pub fn percentile(samples: &[Duration], at: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64 * at).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `{"jobs", "p50_ms", "p99_ms"}` of `samples`.
pub fn latency_summary(samples: &[Duration]) -> Value {
    let ms = |duration: Duration| (duration.as_secs_f64() * 1e5).round() / 100.0;
    json!({
        "jobs": samples.len(),
        "p50_ms": ms(percentile(samples, 0.50)),
        "p99_ms": ms(percentile(samples, 0.99)),
    })
}

/// Write `report` as `<$var>/<name>.json` when the variable `var` names a
/// directory (how `scripts/bench` collects a test's measurements).
pub fn save_report(var: &str, name: &str, report: &Value) {
    if let Ok(dir) = std::env::var(var) {
        std::fs::create_dir_all(&dir).expect("report directory");
        let path = std::path::Path::new(&dir).join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(report).expect("JSON")).expect("report written");
    }
}
