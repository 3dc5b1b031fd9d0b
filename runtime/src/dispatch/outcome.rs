//! How a job ended on this node, as one typed value for every consumer —
//! the source that settles it, metrics, live events and status — instead of
//! each deriving its own string from the error.

use crate::job::JobError;

/// What the source does with a recoverable failure (the node is at fault or
/// something it depends on is down, so running the job again may succeed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Leave it for another attempt (Redis: attempts left).
    Retry,
    /// Give up and dead-letter it (Redis: attempts spent).
    DeadLetter,
    /// Report it failed; whoever handed it out decides on a retry (Nexus).
    Report,
}

/// How a job ended on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// It returned a result.
    Completed,
    /// It failed for good on this attempt, with its failure class.
    Failed {
        /// [`JobError::class`].
        class: &'static str,
    },
    /// Cancelled by request.
    Cancelled,
    /// A recoverable failure, left for another attempt.
    Retrying,
    /// A recoverable failure with no attempts left: dead-lettered.
    DeadLettered,
    /// Stopped by the node's shutdown: left for another worker, not settled.
    Interrupted,
}

impl JobOutcome {
    /// The outcome of `result`: `interrupted` when the node's shutdown
    /// stopped the job, `recovery` what its source does with a recoverable
    /// failure.
    pub fn of(result: &Result<serde_json::Value, JobError>, interrupted: bool, recovery: Recovery) -> JobOutcome {
        match result {
            Ok(_) => JobOutcome::Completed,
            Err(JobError::Cancelled { .. }) if interrupted => JobOutcome::Interrupted,
            Err(JobError::Cancelled { .. }) => JobOutcome::Cancelled,
            Err(err) if err.recoverable() && recovery == Recovery::Retry => JobOutcome::Retrying,
            Err(err) if err.recoverable() && recovery == Recovery::DeadLetter => JobOutcome::DeadLettered,
            Err(err) => JobOutcome::Failed { class: err.class() },
        }
    }

    /// Its name in metrics labels and live events: `ok`, the failure class,
    /// `cancelled`, `retrying`, `dead_lettered` or `interrupted`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Completed => "ok",
            JobOutcome::Failed { class } => class,
            JobOutcome::Cancelled => "cancelled",
            JobOutcome::Retrying => "retrying",
            JobOutcome::DeadLettered => "dead_lettered",
            JobOutcome::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recoverable_failures_follow_the_sources_recovery() {
        let down = Err(JobError::Host("engine socket vanished".into()));
        assert_eq!(JobOutcome::of(&down, false, Recovery::Retry), JobOutcome::Retrying);
        assert_eq!(
            JobOutcome::of(&down, false, Recovery::DeadLetter),
            JobOutcome::DeadLettered
        );
        assert_eq!(
            JobOutcome::of(&down, false, Recovery::Report),
            JobOutcome::Failed { class: "host_error" }
        );
        let trapped = Err(JobError::Trap {
            message: "panic".into(),
        });
        assert_eq!(
            JobOutcome::of(&trapped, false, Recovery::Retry),
            JobOutcome::Failed { class: "trap" },
            "a guest fault is never retried"
        );
    }

    #[test]
    fn cancellation_is_interruption_only_when_the_node_stops() {
        let cancelled = Err(JobError::Cancelled { reason: "asked".into() });
        assert_eq!(
            JobOutcome::of(&cancelled, true, Recovery::Retry),
            JobOutcome::Interrupted
        );
        assert_eq!(
            JobOutcome::of(&cancelled, false, Recovery::Retry),
            JobOutcome::Cancelled
        );
        assert_eq!(
            JobOutcome::of(&Ok(serde_json::json!({})), true, Recovery::Retry).as_str(),
            "ok"
        );
    }
}
