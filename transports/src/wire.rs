//! Citadel's public Redis wire format (DESIGN §3): key names, job entries as
//! producers write them, the job-event envelope published on
//! `stream:v1:{jobId}`, the dead-letter entry and the job status hash.
//!
//! Pure data and parsing, no I/O, so every shape is pinned by golden tests
//! below. Producers written for Citadel work unchanged against these.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

/// Prefix of job queues: `jobs:v1:<queue>`.
pub const QUEUE_PREFIX: &str = "jobs:v1:";
/// Prefix of dead-letter queues: `dlq:v1:<queue>`.
pub const DLQ_PREFIX: &str = "dlq:v1:";
/// Envelope version of job events.
pub const EVENT_VERSION: &str = "1.0";

/// `jobs:v1:<queue>`.
pub fn queue_key(queue: &str) -> String {
    format!("{QUEUE_PREFIX}{queue}")
}

/// `dlq:v1:<queue>` for the queue stream `jobs:v1:<queue>`.
pub fn dlq_key(queue_key: &str) -> String {
    format!(
        "{DLQ_PREFIX}{}",
        queue_key.strip_prefix(QUEUE_PREFIX).unwrap_or(queue_key)
    )
}

/// Pub/Sub channel of a job's events: `stream:v1:{jobId}`.
pub fn events_channel(job_id: &str) -> String {
    format!("stream:v1:{job_id}")
}

/// Replayable copy of a job's events: `stream:v1:{jobId}:events`.
pub fn events_stream_key(job_id: &str) -> String {
    format!("stream:v1:{job_id}:events")
}

/// A job's final state: `job:{jobId}:status` (HASH).
pub fn status_key(job_id: &str) -> String {
    format!("job:{job_id}:status")
}

/// A job's cancel flag: `job:cancelled:{jobId}`.
pub fn cancel_key(job_id: &str) -> String {
    format!("job:cancelled:{job_id}")
}

/// A consumer's liveness key: `citadel:v1:consumer:{group}:{consumer}`.
pub fn liveness_key(group: &str, consumer: &str) -> String {
    format!("citadel:v1:consumer:{group}:{consumer}")
}

/// The stream every node's status is appended to.
pub const NODE_STATUS_STREAM: &str = "node:status:stream";
/// Entries kept in [`NODE_STATUS_STREAM`] (approximately) by default
/// (`telemetry.status_stream_maxlen`; Citadel's own publisher keeps ~1000).
pub const NODE_STATUS_STREAM_MAXLEN: usize = 10_000;

/// Pub/Sub channel of one node's status: `node:status:{nodeId}`.
pub fn node_status_channel(node_id: &str) -> String {
    format!("node:status:{node_id}")
}

/// `wake:v1:node:{nodeId}`: a message makes the node poll the Nexus API now.
pub fn wake_channel(node_id: &str) -> String {
    format!("wake:v1:node:{node_id}")
}

/// RFC 3339 UTC with second precision (`2026-01-02T03:04:05Z`), as Citadel
/// writes timestamps.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A job entry, parsed from the fields of a stream entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEntry {
    /// `jobId`.
    pub job_id: String,
    /// `type`, else `payload.type`.
    pub job_type: String,
    /// `payload`, as sent (JSON text of an object).
    pub payload: String,
    /// `enqueuedAt`, when sent.
    pub enqueued_at: Option<String>,
    /// `rayId`, when sent.
    pub ray_id: Option<String>,
    /// `payload.target_node`: the only node that may run the job.
    pub target_node: Option<String>,
    /// `payload.timeout_ms`: the job's own time budget.
    pub timeout_ms: Option<u64>,
    /// `payload.organizationId`, else `payload.tenant`.
    pub tenant: Option<String>,
}

/// Why a stream entry is not a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A required field is absent (or not text).
    #[error("job entry has no `{0}` field")]
    Missing(&'static str),
    /// `payload` is not a JSON object.
    #[error("payload is not a JSON object: {0}")]
    Payload(String),
    /// `payload` is larger than the node accepts.
    #[error("payload is {size} bytes, over the node's limit of {limit}")]
    TooLarge {
        /// Payload size, bytes.
        size: usize,
        /// The limit, bytes.
        limit: usize,
    },
    /// `type` is absent from both the entry and the payload.
    #[error("job entry has no `type` field and its payload no `type` key")]
    NoType,
}

/// Raw fields of a stream entry: names to text (binary-safe values are
/// decoded lossily).
pub type Fields = HashMap<String, String>;

impl JobEntry {
    /// Parse a job entry; `max_payload_bytes` caps the payload.
    pub fn parse(fields: &Fields, max_payload_bytes: usize) -> Result<JobEntry, EntryError> {
        let job_id = fields
            .get("jobId")
            .filter(|id| !id.is_empty())
            .ok_or(EntryError::Missing("jobId"))?;
        let payload = fields.get("payload").ok_or(EntryError::Missing("payload"))?;
        if payload.len() > max_payload_bytes {
            return Err(EntryError::TooLarge {
                size: payload.len(),
                limit: max_payload_bytes,
            });
        }
        let parsed: Value = serde_json::from_str(payload).map_err(|err| EntryError::Payload(err.to_string()))?;
        let Value::Object(object) = parsed else {
            return Err(EntryError::Payload(format!("found {}", json_kind(&parsed))));
        };
        let job_type = fields
            .get("type")
            .filter(|kind| !kind.is_empty())
            .cloned()
            .or_else(|| text(&object, "type"))
            .ok_or(EntryError::NoType)?;
        Ok(JobEntry {
            job_id: job_id.clone(),
            job_type,
            payload: payload.clone(),
            enqueued_at: fields.get("enqueuedAt").cloned(),
            ray_id: fields.get("rayId").filter(|ray| !ray.is_empty()).cloned(),
            target_node: text(&object, "target_node"),
            timeout_ms: object.get("timeout_ms").and_then(Value::as_u64),
            tenant: text(&object, "organizationId").or_else(|| text(&object, "tenant")),
        })
    }
}

fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
        .map(str::to_string)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The node identity carried in every event (`data.meta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeMeta {
    /// The node id.
    pub node_id: String,
    /// The node's display name.
    pub node_name: String,
}

/// What happened to a job: the `type` and `data` of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// The worker took the job off the queue.
    Claimed {
        /// The worker's version.
        agent_version: String,
    },
    /// The handler is starting.
    Start {
        /// A human-readable note.
        message: String,
    },
    /// A piece of streamed output.
    Chunk {
        /// The text.
        content: String,
        /// 0, 1, 2… per job.
        index: u32,
    },
    /// The job succeeded.
    End {
        /// The handler's result.
        result: Value,
    },
    /// The job failed.
    Error {
        /// What went wrong.
        error: String,
        /// Whether retrying could help.
        recoverable: bool,
        /// Extra keys merged into `data` (e.g. `error_class`,
        /// `unsupported_job_type`, `job_type`, `supported_types`).
        details: Map<String, Value>,
    },
    /// The job was cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
}

impl EventKind {
    /// The event's `type`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Claimed { .. } => "claimed",
            EventKind::Start { .. } => "start",
            EventKind::Chunk { .. } => "chunk",
            EventKind::End { .. } => "end",
            EventKind::Error { .. } => "error",
            EventKind::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether no event follows this one.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::End { .. } | EventKind::Error { .. } | EventKind::Cancelled { .. }
        )
    }

    fn data(&self) -> Map<String, Value> {
        let mut data = Map::new();
        match self {
            EventKind::Claimed { agent_version } => {
                data.insert("agent_version".into(), agent_version.clone().into());
            }
            EventKind::Start { message } => {
                data.insert("message".into(), message.clone().into());
            }
            EventKind::Chunk { content, index } => {
                data.insert("content".into(), content.clone().into());
                data.insert("index".into(), (*index).into());
            }
            EventKind::End { result } => {
                data.insert("result".into(), result.clone());
            }
            EventKind::Error {
                error,
                recoverable,
                details,
            } => {
                data.insert("error".into(), error.clone().into());
                data.insert("recoverable".into(), (*recoverable).into());
                data.extend(details.clone());
            }
            EventKind::Cancelled { reason } => {
                data.insert("reason".into(), reason.clone().into());
            }
        }
        data
    }
}

/// One job event, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent<'a> {
    /// The job.
    pub job_id: &'a str,
    /// The producer's trace id.
    pub ray_id: Option<&'a str>,
    /// The node that publishes it.
    pub meta: &'a NodeMeta,
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

impl JobEvent<'_> {
    /// The envelope as JSON text:
    /// `{"version","type","jobId","rayId"?,"timestamp","data":{…,"meta"}}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Envelope<'a> {
            version: &'static str,
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(rename = "jobId")]
            job_id: &'a str,
            #[serde(rename = "rayId", skip_serializing_if = "Option::is_none")]
            ray_id: Option<&'a str>,
            timestamp: String,
            data: Map<String, Value>,
        }
        let mut data = self.kind.data();
        data.insert(
            "meta".into(),
            serde_json::to_value(self.meta).expect("node meta serializes"),
        );
        let envelope = Envelope {
            version: EVENT_VERSION,
            kind: self.kind.name(),
            job_id: self.job_id,
            ray_id: self.ray_id,
            timestamp: timestamp(self.at),
            data,
        };
        serde_json::to_string(&envelope).expect("event serializes")
    }
}

/// A job's state in `job:{jobId}:status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Handler running.
    Running,
    /// Failed recoverably; left pending for another attempt.
    Retrying,
    /// Stopped by a worker shutdown; left pending for another worker.
    Interrupted,
    /// Succeeded (`result` holds the result).
    Completed,
    /// Failed (`error` holds why).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Moved to the dead-letter queue.
    DeadLettered,
}

impl JobStatus {
    /// The `status` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Interrupted => "interrupted",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::DeadLettered => "dead_lettered",
        }
    }

    /// Parse a `status` value.
    pub fn parse(text: &str) -> Option<JobStatus> {
        [
            JobStatus::Running,
            JobStatus::Retrying,
            JobStatus::Interrupted,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::DeadLettered,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    /// Whether the job is settled: a redelivery of the same entry must not
    /// run it again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::DeadLettered
        )
    }
}

/// The fields of a dead-letter entry, in the documented order.
pub fn dlq_fields(
    original_message_id: &str,
    original_queue: &str,
    reason: &str,
    worker_id: &str,
    fields: &Fields,
    attempts: u64,
    at: SystemTime,
) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("original_message_id", original_message_id.to_string()),
        ("original_queue", original_queue.to_string()),
        ("reason", reason.to_string()),
        ("moved_at", timestamp(at)),
        ("worker_id", worker_id.to_string()),
        ("jobId", fields.get("jobId").cloned().unwrap_or_default()),
    ];
    if let Some(enqueued_at) = fields.get("enqueuedAt") {
        out.push(("enqueuedAt", enqueued_at.clone()));
    }
    out.push(("payload", fields.get("payload").cloned().unwrap_or_default()));
    out.push(("attempts", attempts.to_string()));
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_323_045) // 2026-01-02T03:04:05Z
    }

    fn meta() -> NodeMeta {
        NodeMeta {
            node_id: "gpu-7".into(),
            node_name: "rack 2 / gpu 7".into(),
        }
    }

    fn golden(kind: EventKind, ray_id: Option<&str>) -> Value {
        let meta = meta();
        let event = JobEvent {
            job_id: "job-1",
            ray_id,
            meta: &meta,
            at: at(),
            kind,
        };
        serde_json::from_str(&event.to_json()).unwrap()
    }

    #[test]
    fn keys() {
        assert_eq!(queue_key("gpu-general"), "jobs:v1:gpu-general");
        assert_eq!(dlq_key("jobs:v1:gpu-general"), "dlq:v1:gpu-general");
        assert_eq!(dlq_key("jobs:v1:tag:gpu:h100"), "dlq:v1:tag:gpu:h100");
        assert_eq!(events_channel("j"), "stream:v1:j");
        assert_eq!(events_stream_key("j"), "stream:v1:j:events");
        assert_eq!(status_key("j"), "job:j:status");
        assert_eq!(cancel_key("j"), "job:cancelled:j");
        assert_eq!(liveness_key("g", "c"), "citadel:v1:consumer:g:c");
        assert_eq!(node_status_channel("gpu-7"), "node:status:gpu-7");
        assert_eq!(timestamp(at()), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn golden_event_envelopes() {
        let meta = json!({"node_id": "gpu-7", "node_name": "rack 2 / gpu 7"});
        assert_eq!(
            golden(
                EventKind::Claimed {
                    agent_version: "0.1.0".into()
                },
                Some("ray-9")
            ),
            json!({"version": "1.0", "type": "claimed", "jobId": "job-1", "rayId": "ray-9",
                   "timestamp": "2026-01-02T03:04:05Z", "data": {"agent_version": "0.1.0", "meta": meta}})
        );
        assert_eq!(
            golden(
                EventKind::Start {
                    message: "running echo".into()
                },
                None
            ),
            json!({"version": "1.0", "type": "start", "jobId": "job-1", "timestamp": "2026-01-02T03:04:05Z",
                   "data": {"message": "running echo", "meta": meta}})
        );
        assert_eq!(
            golden(
                EventKind::Chunk {
                    content: "tok".into(),
                    index: 3
                },
                None
            )["data"],
            json!({"content": "tok", "index": 3, "meta": meta})
        );
        assert_eq!(
            golden(
                EventKind::End {
                    result: json!({"text": "hi"})
                },
                None
            )["data"],
            json!({"result": {"text": "hi"}, "meta": meta})
        );
        let mut details = Map::new();
        details.insert("error_class".into(), "deadline".into());
        assert_eq!(
            golden(
                EventKind::Error {
                    error: "deadline exceeded".into(),
                    recoverable: false,
                    details
                },
                None
            )["data"],
            json!({"error": "deadline exceeded", "recoverable": false, "error_class": "deadline", "meta": meta})
        );
        assert_eq!(
            golden(
                EventKind::Cancelled {
                    reason: "cancelled by request".into()
                },
                None
            )["data"],
            json!({"reason": "cancelled by request", "meta": meta})
        );
        let meta = self::meta();
        let raw = JobEvent {
            job_id: "j",
            ray_id: None,
            meta: &meta,
            at: at(),
            kind: EventKind::Start { message: "m".into() },
        }
        .to_json();
        assert!(!raw.contains("rayId"), "absent rayId is omitted, not null: {raw}");
    }

    #[test]
    fn parses_citadel_job_entries() {
        let entry = JobEntry::parse(
            &fields(&[
                ("jobId", "j-1"),
                ("type", "echo"),
                (
                    "payload",
                    r#"{"text":"hi","organizationId":"acme","target_node":"gpu-7","timeout_ms":1500}"#,
                ),
                ("enqueuedAt", "2026-01-02T03:04:05Z"),
                ("rayId", "ray-1"),
            ]),
            1024,
        )
        .unwrap();
        assert_eq!(entry.job_id, "j-1");
        assert_eq!(entry.job_type, "echo");
        assert_eq!(entry.tenant.as_deref(), Some("acme"));
        assert_eq!(entry.target_node.as_deref(), Some("gpu-7"));
        assert_eq!(entry.timeout_ms, Some(1500));
        assert_eq!(entry.ray_id.as_deref(), Some("ray-1"));
        assert_eq!(entry.enqueued_at.as_deref(), Some("2026-01-02T03:04:05Z"));

        let entry = JobEntry::parse(
            &fields(&[("jobId", "j"), ("payload", r#"{"type":"extract","tenant":"t"}"#)]),
            1024,
        )
        .unwrap();
        assert_eq!(
            (entry.job_type.as_str(), entry.tenant.as_deref()),
            ("extract", Some("t"))
        );
    }

    #[test]
    fn rejects_malformed_entries() {
        let parse = |pairs: &[(&str, &str)]| JobEntry::parse(&fields(pairs), 16);
        assert_eq!(
            parse(&[("type", "echo"), ("payload", "{}")]),
            Err(EntryError::Missing("jobId"))
        );
        assert_eq!(
            parse(&[("jobId", "j"), ("type", "echo")]),
            Err(EntryError::Missing("payload"))
        );
        assert!(matches!(
            parse(&[("jobId", "j"), ("type", "e"), ("payload", "{nope")]),
            Err(EntryError::Payload(_))
        ));
        assert_eq!(
            parse(&[("jobId", "j"), ("type", "e"), ("payload", "[1]")]),
            Err(EntryError::Payload("found an array".into()))
        );
        assert_eq!(parse(&[("jobId", "j"), ("payload", "{}")]), Err(EntryError::NoType));
        assert_eq!(
            parse(&[
                ("jobId", "j"),
                ("type", "e"),
                ("payload", r#"{"x":"0123456789abcdef"}"#)
            ]),
            Err(EntryError::TooLarge { size: 24, limit: 16 })
        );
    }

    #[test]
    fn dead_letter_fields() {
        let entry = fields(&[("jobId", "j"), ("payload", "{}"), ("enqueuedAt", "e")]);
        let names: Vec<&str> = dlq_fields("1-0", "jobs:v1:q", "why", "w", &entry, 3, at())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [
                "original_message_id",
                "original_queue",
                "reason",
                "moved_at",
                "worker_id",
                "jobId",
                "enqueuedAt",
                "payload",
                "attempts"
            ]
        );
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            "running",
            "retrying",
            "interrupted",
            "completed",
            "failed",
            "cancelled",
            "dead_lettered",
        ] {
            assert_eq!(JobStatus::parse(status).unwrap().as_str(), status);
        }
        assert!(JobStatus::Completed.is_final() && !JobStatus::Retrying.is_final());
    }
}
