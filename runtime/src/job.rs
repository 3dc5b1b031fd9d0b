//! A job as the executor sees it, what it produces, and how it fails.
//!
//! Failures are classified by what happened, not by message text: every
//! [`JobError`] has a stable [`class`](JobError::class) (used on the wire
//! and in metrics) and says whether retrying could help.

use std::time::Duration;

use crate::capabilities::Capabilities;
use crate::sandbox::joblog::LogRecord;

/// One job to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The producer's job id.
    pub id: String,
    /// The job type.
    pub job_type: String,
    /// The tenant it runs for.
    pub tenant: String,
    /// The payload: JSON text.
    pub payload: String,
    /// The producer's trace id.
    pub ray_id: Option<String>,
    /// 1 on first delivery.
    pub attempt: u32,
    /// The job's own time budget; the tenant's `timeout_ms` caps it.
    pub timeout: Option<Duration>,
}

/// One streamed piece of output, in order (`chunk{content,index}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// 0 for the first chunk of a job, one more for each next one.
    pub index: u32,
    /// The text.
    pub content: String,
}

/// Everything a finished job leaves behind, success or not.
#[derive(Debug)]
pub struct JobReport {
    /// The result (JSON) or why there is none.
    pub outcome: Result<serde_json::Value, JobError>,
    /// Chunks streamed.
    pub chunks: u32,
    /// Bytes streamed in chunks.
    pub streamed_bytes: u64,
    /// Wall time from start of the run to its end.
    pub elapsed: Duration,
    /// The job's log: guest records and captured stdout/stderr.
    pub log: Vec<LogRecord>,
}

impl JobReport {
    /// The report of a job that ended outside the sandbox (a native
    /// handler, or refused before it ran): no chunks counted, no log.
    pub fn outside_sandbox(outcome: Result<serde_json::Value, JobError>, elapsed: Duration) -> JobReport {
        JobReport {
            outcome,
            chunks: 0,
            streamed_bytes: 0,
            elapsed,
            log: Vec::new(),
        }
    }
}

/// What a handler returned as its error (`handler-error` in WIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerErrorKind {
    /// `invalid-input`.
    InvalidInput,
    /// `failed`.
    Failed,
    /// `denied`.
    Denied,
    /// `unavailable`.
    Unavailable,
}

/// Why a component was refused before it ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It imports capabilities the tenant is not granted.
    #[error("component {component} imports {missing}, which tenant `{tenant}` is not granted")]
    NotGranted {
        /// The component's digest.
        component: String,
        /// The capabilities missing from the grant.
        missing: Capabilities,
        /// The tenant.
        tenant: String,
    },
    /// It imports capabilities this node does not implement.
    #[error("component {component} imports {missing}, which this node does not provide")]
    NotProvided {
        /// The component's digest.
        component: String,
        /// The capabilities the node lacks.
        missing: Capabilities,
    },
    /// The job pins a component it may not use.
    #[error("the job pins component {digest}, which is refused: {reason}")]
    Pin {
        /// The pinned digest, as the payload gave it.
        digest: String,
        /// Why.
        reason: String,
    },
    /// Linking failed (an import's or the export's type does not match).
    #[error("component {component} does not fit the handler world: {message}")]
    Link {
        /// The component's digest.
        component: String,
        /// wasmtime's reason.
        message: String,
    },
}

/// Why a job produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Refused before it ran.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The handler returned an error.
    #[error("handler returned {}: {message}", handler_kind_name(*.kind))]
    Handler {
        /// Which `handler-error` case.
        kind: HandlerErrorKind,
        /// The handler's message.
        message: String,
    },
    /// The job ran out of time.
    #[error("deadline exceeded: the job ran for its whole budget of {} ms", .timeout.as_millis())]
    Deadline {
        /// The budget it had.
        timeout: Duration,
    },
    /// The guest asked for more linear memory than its tenant allows.
    #[error("memory limit exceeded: the guest tried to grow past {limit_mib} MiB")]
    MemoryLimit {
        /// The limit, MiB.
        limit_mib: u64,
    },
    /// The guest overflowed its wasm stack (runaway recursion).
    #[error("stack overflow: the guest exhausted its wasm stack")]
    StackOverflow,
    /// The guest output more than its tenant allows.
    #[error("output limit exceeded: the job tried to output more than {limit} bytes ({attempted} attempted)")]
    OutputLimit {
        /// The limit, bytes.
        limit: u64,
        /// Bytes the job tried to output in all.
        attempted: u64,
    },
    /// The guest asked a host call for more than a job may have (resource
    /// handles held at once, bytes in one call): a limit the tenant hit,
    /// deterministic, so never retried and never blamed on the node.
    #[error("resource limit exceeded: {reason}")]
    ResourceLimit {
        /// One line naming the limit and what the guest asked for.
        reason: String,
    },
    /// The guest trapped (a panic, `unreachable`, a bad memory access...).
    #[error("guest trapped: {message}")]
    Trap {
        /// The trap and, when the guest printed one, its last stderr line.
        message: String,
    },
    /// The handler returned something that is not JSON.
    #[error("bad output: handler result is not JSON ({reason})")]
    BadOutput {
        /// The JSON parser's complaint.
        reason: String,
    },
    /// The job was cancelled.
    #[error("cancelled: {reason}")]
    Cancelled {
        /// Why.
        reason: String,
    },
    /// No instance slot is free right now (every pooling slot is in use).
    #[error("node at capacity: {0}")]
    Capacity(String),
    /// The host failed to set the job up.
    #[error("host error: {0}")]
    Host(String),
}

fn handler_kind_name(kind: HandlerErrorKind) -> &'static str {
    match kind {
        HandlerErrorKind::InvalidInput => "invalid-input",
        HandlerErrorKind::Failed => "failed",
        HandlerErrorKind::Denied => "denied",
        HandlerErrorKind::Unavailable => "unavailable",
    }
}

impl JobError {
    /// A stable, snake_case name of the failure class.
    pub fn class(&self) -> &'static str {
        match self {
            JobError::Refused(_) => "capability_refused",
            JobError::Handler {
                kind: HandlerErrorKind::InvalidInput,
                ..
            } => "invalid_input",
            JobError::Handler {
                kind: HandlerErrorKind::Failed,
                ..
            } => "failed",
            JobError::Handler {
                kind: HandlerErrorKind::Denied,
                ..
            } => "denied",
            JobError::Handler {
                kind: HandlerErrorKind::Unavailable,
                ..
            } => "unavailable",
            JobError::Deadline { .. } => "deadline",
            JobError::MemoryLimit { .. } => "memory_limit",
            JobError::StackOverflow => "stack_overflow",
            JobError::OutputLimit { .. } => "output_limit",
            JobError::ResourceLimit { .. } => "resource_limit",
            JobError::Trap { .. } => "trap",
            JobError::BadOutput { .. } => "bad_output",
            JobError::Cancelled { .. } => "cancelled",
            JobError::Capacity(_) => "capacity",
            JobError::Host(_) => "host_error",
        }
    }

    /// Whether running the same job again later could succeed.
    pub fn recoverable(&self) -> bool {
        matches!(
            self,
            JobError::Handler {
                kind: HandlerErrorKind::Unavailable,
                ..
            } | JobError::Capacity(_)
                | JobError::Host(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_classes() {
        let err = JobError::Handler {
            kind: HandlerErrorKind::InvalidInput,
            message: "no content".into(),
        };
        assert_eq!(err.to_string(), "handler returned invalid-input: no content");
        assert_eq!(err.class(), "invalid_input");
        assert!(!err.recoverable());
        let err = JobError::Deadline {
            timeout: Duration::from_millis(250),
        };
        assert_eq!(
            err.to_string(),
            "deadline exceeded: the job ran for its whole budget of 250 ms"
        );
        assert!(JobError::Capacity("pool full".into()).recoverable());
        let err = JobError::ResourceLimit {
            reason: "held more than 10 handles".into(),
        };
        assert_eq!(err.class(), "resource_limit");
        assert!(!err.recoverable(), "a limit the guest hit is not the node's fault");
    }
}
