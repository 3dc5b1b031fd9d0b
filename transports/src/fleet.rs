//! The fleet's wire format (DESIGN §13): what nodes tell `citadel monitor`
//! besides their status snapshots.
//!
//! - **Events** on the stream [`EVENTS_STREAM`] (`citadel:v1:events`): one
//!   entry per thing that happened — a job's lifecycle, the node starting
//!   or stopping, a handler swapped, a service or engine changing state, a
//!   GPU running hot, a handler's log record. Each entry is
//!   `type <eventType> node <nodeId> event <FleetEvent JSON>`. The event is
//!   Chief's monitor event (`sourceType`, `eventType`, `level`, `message`,
//!   `jobName`, `runId`, `scriptPath`, `scheduledFor`, `meta`) with the
//!   fleet's fields added (`at`, `node`, `tenant`), so events a cron
//!   script POSTs to the monitor and events a node streams are one shape.
//! - **Heartbeats** on [`HEARTBEATS_STREAM`] (`citadel:v1:heartbeats`):
//!   `node <nodeId> at <ms since epoch> intervalMs <n> inFlight <n>`, every
//!   `telemetry.heartbeat_ms`. They are apart from events because only the
//!   latest matters: the stream can be short, and a burst of heartbeats
//!   never trims an event away before the monitor reads it.
//!
//! Pure data, no I/O; shapes are pinned by golden tests below.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The stream of fleet events.
pub const EVENTS_STREAM: &str = "citadel:v1:events";
/// Entries [`EVENTS_STREAM`] keeps by default (approximately: `MAXLEN ~`).
pub const EVENTS_STREAM_MAXLEN: usize = 100_000;
/// The stream of node heartbeats.
pub const HEARTBEATS_STREAM: &str = "citadel:v1:heartbeats";
/// Entries [`HEARTBEATS_STREAM`] keeps (approximately): only the latest
/// heartbeat of each node matters.
pub const HEARTBEATS_STREAM_MAXLEN: usize = 10_000;
/// `sourceType` of events written by citadel nodes.
pub const SOURCE_CITADEL: &str = "citadel";

/// Severity, Chief's five levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected.
    Warn,
    /// A failure.
    Error,
    /// A failure that needs someone now.
    Critical,
}

impl Level {
    /// Its name on the wire (`INFO`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    /// The level named `text` (`INFO`, any case; `WARNING` is `WARN`).
    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_uppercase().as_str() {
            "DEBUG" | "TRACE" => Some(Level::Debug),
            "INFO" => Some(Level::Info),
            "WARN" | "WARNING" => Some(Level::Warn),
            "ERROR" => Some(Level::Error),
            "CRITICAL" | "FATAL" => Some(Level::Critical),
            _ => None,
        }
    }
}

/// The event types nodes write (a monitor also takes any other type from
/// HTTP sources, as Chief's does).
pub mod event_type {
    /// A job started running on a node.
    pub const JOB_STARTED: &str = "job.started";
    /// A job succeeded.
    pub const JOB_COMPLETED: &str = "job.completed";
    /// A job failed (`meta.errorClass`; `meta.willRetry` when it will run again).
    pub const JOB_FAILED: &str = "job.failed";
    /// A job was moved to its dead-letter queue.
    pub const JOB_DEAD_LETTERED: &str = "job.dead_lettered";
    /// A job was cancelled by its producer.
    pub const JOB_CANCELLED: &str = "job.cancelled";
    /// A node started taking jobs.
    pub const NODE_STARTED: &str = "node.started";
    /// A node is shutting down cleanly.
    pub const NODE_STOPPING: &str = "node.stopping";
    /// A job type's handler was replaced.
    pub const HANDLER_SWAPPED: &str = "handler.swapped";
    /// A handler was refused (policy, signature, bad component).
    pub const HANDLER_REFUSED: &str = "handler.refused";
    /// A managed service started.
    pub const SERVICE_STARTED: &str = "service.started";
    /// A managed service exited.
    pub const SERVICE_EXITED: &str = "service.exited";
    /// A managed service was killed for memory.
    pub const SERVICE_OOM_KILLED: &str = "service.oom_killed";
    /// A managed service was restarted.
    pub const SERVICE_RESTARTED: &str = "service.restarted";
    /// A managed service fails its health check.
    pub const SERVICE_UNHEALTHY: &str = "service.unhealthy";
    /// An inference engine answers again.
    pub const ENGINE_UP: &str = "engine.up";
    /// An inference engine stopped answering.
    pub const ENGINE_DOWN: &str = "engine.down";
    /// A GPU is over the node's temperature limit.
    pub const GPU_HOT: &str = "gpu.hot";
    /// A GPU is back under the node's temperature limit.
    pub const GPU_COOLED: &str = "gpu.cooled";
    /// NVML reported an XID error.
    pub const GPU_XID: &str = "gpu.xid";
    /// A handler's log record (Chief's worker message).
    pub const WORKER_MESSAGE: &str = "worker.message";
}

/// One fleet event: Chief's monitor event plus where and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetEvent {
    /// Who wrote it: `citadel` for nodes, `chief`, a script's name…
    #[serde(default = "default_source")]
    pub source_type: String,
    /// What happened (`job.completed`, [`event_type`]).
    pub event_type: String,
    /// How bad.
    pub level: Level,
    /// In words.
    #[serde(default)]
    pub message: String,
    /// When, RFC 3339 with milliseconds (a monitor stamps events that lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The node it happened on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The job type (Chief: the job's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The job id (Chief: the run id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The tenant the job ran for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Chief: the script a job ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_path: Option<String>,
    /// Chief: when the run was scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    /// Anything else (`attempt`, `durationMs`, `errorClass`, `service`…).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
}

fn default_source() -> String {
    SOURCE_CITADEL.to_string()
}

impl FleetEvent {
    /// An event of `event_type` on `node`, now.
    pub fn new(event_type: &str, level: Level, node: &str, message: impl Into<String>) -> FleetEvent {
        FleetEvent {
            source_type: SOURCE_CITADEL.to_string(),
            event_type: event_type.to_string(),
            level,
            message: message.into(),
            at: Some(timestamp_millis(SystemTime::now())),
            node: Some(node.to_string()),
            job_name: None,
            run_id: None,
            tenant: None,
            script_path: None,
            scheduled_for: None,
            meta: Map::new(),
        }
    }

    /// The same, about job `run_id` of type `job_name` for `tenant`.
    pub fn for_job(mut self, job_name: &str, run_id: &str, tenant: &str) -> FleetEvent {
        self.job_name = Some(job_name.to_string());
        self.run_id = Some(run_id.to_string());
        self.tenant = Some(tenant.to_string());
        self
    }

    /// The same with `key` set in `meta`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> FleetEvent {
        self.meta.insert(key.to_string(), value.into());
        self
    }

    /// The stream entry's fields: `type`, `node`, `event`.
    pub fn entry_fields(&self) -> [(&'static str, String); 3] {
        [
            ("type", self.event_type.clone()),
            ("node", self.node.clone().unwrap_or_default()),
            ("event", serde_json::to_string(self).expect("a fleet event serializes")),
        ]
    }

    /// The event in a stream entry's fields.
    pub fn from_entry(fields: &HashMap<String, String>) -> Result<FleetEvent, String> {
        let json = fields.get("event").ok_or("the entry has no `event` field")?;
        serde_json::from_str(json).map_err(|err| format!("`event` is not a fleet event: {err}"))
    }
}

/// One heartbeat: the node is alive, and says when to expect the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The node.
    pub node: String,
    /// When it was sent, ms since the epoch.
    pub at_ms: u64,
    /// The node's heartbeat interval.
    pub interval: Duration,
    /// Jobs running on it.
    pub in_flight: u64,
}

impl Heartbeat {
    /// The stream entry's fields.
    pub fn entry_fields(&self) -> [(&'static str, String); 4] {
        [
            ("node", self.node.clone()),
            ("at", self.at_ms.to_string()),
            ("intervalMs", self.interval.as_millis().to_string()),
            ("inFlight", self.in_flight.to_string()),
        ]
    }

    /// The heartbeat in a stream entry's fields.
    pub fn from_entry(fields: &HashMap<String, String>) -> Result<Heartbeat, String> {
        let node = fields
            .get("node")
            .filter(|node| !node.is_empty())
            .ok_or("the heartbeat has no `node`")?;
        let number = |field: &str| -> Result<u64, String> {
            fields
                .get(field)
                .ok_or(format!("the heartbeat has no `{field}`"))?
                .parse()
                .map_err(|_| format!("the heartbeat's `{field}` is not a number"))
        };
        Ok(Heartbeat {
            node: node.clone(),
            at_ms: number("at")?,
            interval: Duration::from_millis(number("intervalMs")?),
            in_flight: number("inFlight").unwrap_or(0),
        })
    }
}

/// Milliseconds since the epoch.
pub fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 UTC with milliseconds (`2026-01-02T03:04:05.678Z`).
pub fn timestamp_millis(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, String)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect()
    }

    #[test]
    fn a_job_event_has_chiefs_shape_plus_the_fleets_fields() {
        let mut event = FleetEvent::new(event_type::JOB_FAILED, Level::Error, "gpu-7", "boom")
            .for_job("llm_inference", "job-1", "acme")
            .with("attempt", 2)
            .with("errorClass", "trap");
        event.at = Some("2026-01-02T03:04:05.678Z".into());
        let json: Value = serde_json::from_str(&event.entry_fields()[2].1).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sourceType": "citadel",
                "eventType": "job.failed",
                "level": "ERROR",
                "message": "boom",
                "at": "2026-01-02T03:04:05.678Z",
                "node": "gpu-7",
                "jobName": "llm_inference",
                "runId": "job-1",
                "tenant": "acme",
                "meta": {"attempt": 2, "errorClass": "trap"}
            })
        );
        let [(_, kind), (_, node), _] = event.entry_fields();
        assert_eq!((kind.as_str(), node.as_str()), ("job.failed", "gpu-7"));
        assert_eq!(FleetEvent::from_entry(&fields(&event.entry_fields())).unwrap(), event);
    }

    #[test]
    fn a_chief_event_reads_with_defaults() {
        let chief = r#"{"sourceType":"chief","eventType":"job.started","level":"INFO","message":"Job started","jobName":"etl","runId":"demo-1"}"#;
        let event: FleetEvent = serde_json::from_str(chief).unwrap();
        assert_eq!(event.source_type, "chief");
        assert_eq!(event.job_name.as_deref(), Some("etl"));
        assert_eq!(event.at, None);
        let bad = r#"{"eventType":"x","level":"LOUD"}"#;
        assert!(serde_json::from_str::<FleetEvent>(bad).is_err());
    }

    #[test]
    fn levels_parse_in_any_case() {
        assert_eq!(Level::parse("warning"), Some(Level::Warn));
        assert_eq!(Level::parse("Critical"), Some(Level::Critical));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Warn > Level::Info);
    }

    #[test]
    fn heartbeats_round_trip_and_name_what_is_missing() {
        let beat = Heartbeat {
            node: "gpu-7".into(),
            at_ms: 1_700_000_000_123,
            interval: Duration::from_millis(5000),
            in_flight: 3,
        };
        assert_eq!(Heartbeat::from_entry(&fields(&beat.entry_fields())).unwrap(), beat);
        let err = Heartbeat::from_entry(&fields(&[("node", "n".into())])).unwrap_err();
        assert!(err.contains("`at`"), "{err}");
    }
}
