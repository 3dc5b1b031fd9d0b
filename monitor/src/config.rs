//! `[monitor]`: where the monitor reads, stores and listens, how it judges
//! nodes and job types, and who may ask it. Read from the `citadel` TOML
//! file's `[monitor]` table, `CITADEL_MONITOR__*` variables and flags by
//! the CLI; validated here before anything binds, errors naming the key.

use std::net::SocketAddr;
use std::path::PathBuf;

use citadel_transports::http_guard;
use serde::{Deserialize, Serialize};

/// The monitor's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// The fleet's Redis (`redis://[user:password@]host:port/db`,
    /// `rediss://…`); the node's `redis_url` and `[redis]` when unset.
    pub redis_url: Option<String>,
    /// How to reach `redis_url` beyond the URL (TLS files, as `[redis]`).
    pub redis: citadel_transports::redis::RedisSettings,
    /// The SQLite database file.
    pub db: PathBuf,
    /// Where the API listens (loopback by default).
    pub addr: SocketAddr,
    /// Keys that may read and write everything (`x-api-key` or bearer);
    /// none: the API is open (loopback only, unless `allow_open` says so).
    pub api_keys: Vec<String>,
    /// Keys that may only ingest events (`POST /v1/events[/batch]`).
    pub ingest_keys: Vec<String>,
    /// Serve without keys on a non-loopback address.
    pub allow_open: bool,
    /// A dashboard session (an API key entered once on its login page)
    /// lasts this long, s; sessions live in memory: a restart ends them.
    pub session_ttl_s: u64,
    /// The consumer group the monitor reads the fleet's streams with.
    pub group: String,
    /// Its consumer name in that group; default: the host name.
    pub consumer: Option<String>,
    /// A node is `late` when no heartbeat came for this many of its
    /// heartbeat intervals (plus `node_grace_ms`).
    pub late_after_beats: f64,
    /// A node is `down` (alert `NODE_DOWN`) after this many.
    pub down_after_beats: f64,
    /// Slack added to both, ms (clock skew, a slow Redis).
    pub node_grace_ms: u64,
    /// A node not heard from for this long leaves the online set (it keeps
    /// its history), s.
    pub stale_after_s: u64,
    /// GPU temperature that opens `GPU_HOT`, °C, for nodes that do not
    /// say (their own `telemetry.high_temp_celsius` writes `gpu.hot`).
    pub high_temp_celsius: u32,
    /// An open `RECOVERY` closes by itself after this long, s.
    pub recovery_ttl_s: u64,
    /// Events and history older than this are deleted, days.
    pub retention_days: u32,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// A client's request headers must arrive within this, ms (slowloris).
    pub header_timeout_ms: u64,
    /// Open connections one client address may hold (each dashboard page
    /// holds one live stream). Behind a reverse proxy every client shares
    /// the proxy's address: raise it to what the proxy fans in.
    pub connections_per_client: usize,
    /// A request's body must arrive within this, ms.
    pub body_timeout_ms: u64,
    /// Most events in one `POST /v1/events/batch`.
    pub max_batch: usize,
    /// Per job type: expected cadence and what to alert on.
    pub checks: Vec<CheckConfig>,
    /// Webhook receivers of alert notifications (Alertmanager's format).
    pub notify: Vec<NotifyConfig>,
    /// A failing notification is retried this many times before it is
    /// given up (and recorded as failed).
    pub notify_attempts: u32,
    /// Jobs waiting this long in a queue that no up node serves (their job
    /// type, or their `model`) open `BACKLOG_STUCK`, s.
    pub backlog_grace_s: u64,
    /// How often the queues' backlogs are looked at, ms.
    pub backlog_poll_ms: u64,
    /// Queues (`jobs:v1:<name>`) not judged for backlogs: the device
    /// configuration queue fans out to every node, offline ones included.
    pub backlog_ignore_queues: Vec<String>,
}

/// A webhook receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where notifications are POSTed.
    pub url: String,
    /// Sent as `Authorization: Bearer …`.
    #[serde(default)]
    pub bearer: Option<String>,
}

/// Chief's job check: a job type expected to run every `every_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// The job type (Chief: the job's name).
    pub job_type: String,
    /// It should run at least this often, s.
    #[serde(default)]
    pub every_s: Option<u64>,
    /// Or on this cron schedule, UTC (`0 3 * * *`: daily at 03:00); with
    /// neither, only failures are checked.
    #[serde(default)]
    pub schedule: Option<String>,
    /// How late it may be before `MISSED`, s.
    #[serde(default)]
    pub grace_s: u64,
    /// Alert `FAILURE` when a run fails.
    #[serde(default = "yes")]
    pub alert_on_failure: bool,
    /// Alert `MISSED` when it misses its cadence.
    #[serde(default = "yes")]
    pub alert_on_miss: bool,
}

fn yes() -> bool {
    true
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            redis_url: None,
            redis: Default::default(),
            db: PathBuf::from("monitor.sqlite"),
            addr: SocketAddr::from(([127, 0, 0, 1], 7410)),
            api_keys: Vec::new(),
            ingest_keys: Vec::new(),
            allow_open: false,
            session_ttl_s: 12 * 3600,
            group: "citadel-monitor".into(),
            consumer: None,
            late_after_beats: 1.5,
            down_after_beats: 2.5,
            node_grace_ms: 250,
            stale_after_s: 90,
            high_temp_celsius: 85,
            recovery_ttl_s: 900,
            retention_days: 30,
            max_body_bytes: 1 << 20,
            header_timeout_ms: 10_000,
            connections_per_client: 32,
            body_timeout_ms: 30_000,
            max_batch: 1000,
            checks: Vec::new(),
            notify: Vec::new(),
            notify_attempts: 10,
            backlog_grace_s: 60,
            backlog_poll_ms: 2_000,
            backlog_ignore_queues: vec!["config".into()],
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid monitor.{key}: {problem}")]
pub struct ConfigError {
    /// The key, under `monitor.`.
    pub key: String,
    /// What is wrong, and what would be right.
    pub problem: String,
}

impl MonitorConfig {
    /// Check every setting; the first wrong one is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| {
            Err(ConfigError {
                key: key.to_string(),
                problem,
            })
        };
        if self.redis_url.as_deref().is_none_or(str::is_empty) {
            return invalid(
                "redis_url",
                "is required (--redis-url, CITADEL_MONITOR__REDIS_URL)".into(),
            );
        }
        if self.late_after_beats.is_nan() || self.late_after_beats < 1.0 {
            return invalid(
                "late_after_beats",
                format!("must be at least 1, got {}", self.late_after_beats),
            );
        }
        if self.down_after_beats.is_nan() || self.down_after_beats <= self.late_after_beats {
            return invalid(
                "down_after_beats",
                format!(
                    "({}) must be more than late_after_beats ({})",
                    self.down_after_beats, self.late_after_beats
                ),
            );
        }
        if self.stale_after_s == 0 {
            return invalid("stale_after_s", "must be at least 1".into());
        }
        if self.session_ttl_s == 0 {
            return invalid("session_ttl_s", "must be at least 1".into());
        }
        if self.retention_days == 0 {
            return invalid("retention_days", "must be at least 1".into());
        }
        if !(100..=600_000).contains(&self.header_timeout_ms) {
            return invalid(
                "header_timeout_ms",
                format!("must be between 100 and 600000, got {}", self.header_timeout_ms),
            );
        }
        if !(1..=http_guard::CONNECTIONS_TOTAL).contains(&self.connections_per_client) {
            return invalid(
                "connections_per_client",
                format!(
                    "must be between 1 and {}, got {}",
                    http_guard::CONNECTIONS_TOTAL,
                    self.connections_per_client
                ),
            );
        }
        if !(100..=600_000).contains(&self.body_timeout_ms) {
            return invalid(
                "body_timeout_ms",
                format!("must be between 100 and 600000, got {}", self.body_timeout_ms),
            );
        }
        if self.max_batch == 0 || self.max_body_bytes < 1024 {
            return invalid(
                "max_batch",
                "max_batch must be at least 1 and max_body_bytes at least 1024".into(),
            );
        }
        if self.api_keys.iter().chain(&self.ingest_keys).any(|key| key.len() < 16) {
            return invalid(
                "api_keys",
                "every key must be at least 16 characters (openssl rand -base64 32)".into(),
            );
        }
        if self.api_keys.is_empty() && !self.addr.ip().is_loopback() && !self.allow_open {
            return invalid(
                "addr",
                format!(
                    "{} is not loopback and no api_keys are set: set api_keys (or allow_open = true)",
                    self.addr
                ),
            );
        }
        for receiver in &self.notify {
            if !(receiver.url.starts_with("http://") || receiver.url.starts_with("https://")) {
                return invalid(
                    "notify.url",
                    format!("{:?} must be an http:// or https:// URL", receiver.url),
                );
            }
        }
        if self.backlog_poll_ms < 100 {
            return invalid(
                "backlog_poll_ms",
                format!("must be at least 100, got {}", self.backlog_poll_ms),
            );
        }
        if self.notify_attempts == 0 {
            return invalid("notify_attempts", "must be at least 1".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for check in &self.checks {
            if check.job_type.is_empty() {
                return invalid("checks.job_type", "must name a job type".into());
            }
            if !seen.insert(&check.job_type) {
                return invalid("checks.job_type", format!("{:?} has two checks", check.job_type));
            }
            if check.every_s == Some(0) {
                return invalid("checks.every_s", format!("must be at least 1 ({})", check.job_type));
            }
            if let Some(schedule) = &check.schedule {
                if check.every_s.is_some() {
                    return invalid(
                        "checks.schedule",
                        format!("{}: give every_s or schedule, not both", check.job_type),
                    );
                }
                if let Err(err) = schedule.parse::<croner::Cron>() {
                    return invalid(
                        "checks.schedule",
                        format!("{}: {schedule:?} is not a cron schedule: {err}", check.job_type),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> MonitorConfig {
        MonitorConfig {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            ..MonitorConfig::default()
        }
    }

    #[test]
    fn defaults_with_a_redis_url_are_valid_and_wrong_values_are_named() {
        assert_eq!(valid().validate(), Ok(()));
        assert_eq!(MonitorConfig::default().validate().unwrap_err().key, "redis_url");
        let late = MonitorConfig {
            down_after_beats: 1.2,
            ..valid()
        };
        assert_eq!(late.validate().unwrap_err().key, "down_after_beats");
        let open = MonitorConfig {
            addr: "0.0.0.0:7410".parse().unwrap(),
            ..valid()
        };
        assert!(open.validate().unwrap_err().problem.contains("api_keys"));
        let short = MonitorConfig {
            api_keys: vec!["short".into()],
            ..valid()
        };
        assert_eq!(short.validate().unwrap_err().key, "api_keys");
        let twice = MonitorConfig {
            checks: vec![
                CheckConfig {
                    job_type: "etl".into(),
                    every_s: Some(60),
                    schedule: None,
                    grace_s: 0,
                    alert_on_failure: true,
                    alert_on_miss: true,
                };
                2
            ],
            ..valid()
        };
        assert!(twice.validate().unwrap_err().problem.contains("two checks"));
        let cron = MonitorConfig {
            checks: vec![CheckConfig {
                job_type: "etl".into(),
                every_s: None,
                schedule: Some("every day at noon".into()),
                grace_s: 0,
                alert_on_failure: true,
                alert_on_miss: true,
            }],
            ..valid()
        };
        assert_eq!(cron.validate().unwrap_err().key, "checks.schedule");
    }
}
