//! The job's log: records from the `log` capability and the guest's
//! captured stdout/stderr, in the order they happened, kept within the
//! tenant's `max_log_bytes`. What does not fit is counted, not kept, and the
//! count is reported at the end, so a chatty guest can neither exhaust host
//! memory nor hide that it was cut.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Severity of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected.
    Warn,
    /// A failure.
    Error,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        })
    }
}

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The `log` capability.
    Guest,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// The node, about the log itself.
    Node,
}

impl Source {
    /// Its name (`guest`, `stdout`, `stderr`, `node`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Guest => "guest",
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
            Source::Node => "node",
        }
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// Origin.
    pub source: Source,
    /// The text.
    pub message: String,
    /// Structured fields (`log` capability only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

/// What a record costs the log beyond its text (its level, source and the
/// space the node keeps it in), so that empty records are not free.
const RECORD_OVERHEAD_BYTES: usize = 64;

impl LogRecord {
    fn size(&self) -> usize {
        RECORD_OVERHEAD_BYTES
            + self.message.len()
            + self
                .fields
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum::<usize>()
    }
}

#[derive(Debug)]
struct Buffer {
    records: Vec<LogRecord>,
    used: usize,
    limit: usize,
    dropped_records: usize,
    dropped_bytes: usize,
}

/// A job's log, shared by the `log` capability and the stdout/stderr
/// capture (and readable after the job's store is gone).
#[derive(Debug, Clone)]
pub struct JobLog(Arc<Mutex<Buffer>>);

impl JobLog {
    /// An empty log keeping at most `limit_bytes` of messages and fields.
    pub fn new(limit_bytes: usize) -> JobLog {
        JobLog(Arc::new(Mutex::new(Buffer {
            records: Vec::new(),
            used: 0,
            limit: limit_bytes,
            dropped_records: 0,
            dropped_bytes: 0,
        })))
    }

    /// Append a record if it fits; otherwise count it as dropped.
    pub fn push(&self, record: LogRecord) {
        let mut buffer = self.0.lock().expect("job log poisoned");
        let size = record.size();
        if buffer.used + size > buffer.limit {
            buffer.dropped_records += 1;
            buffer.dropped_bytes += size;
            return;
        }
        buffer.used += size;
        buffer.records.push(record);
    }

    /// The records so far, followed by a note of what was dropped, if anything.
    pub fn snapshot(&self) -> Vec<LogRecord> {
        let buffer = self.0.lock().expect("job log poisoned");
        let mut records = buffer.records.clone();
        if buffer.dropped_records > 0 {
            records.push(LogRecord {
                level: Level::Warn,
                source: Source::Node,
                message: format!(
                    "log cut: {} records ({} bytes) over the tenant's max_log_bytes ({}) were dropped",
                    buffer.dropped_records, buffer.dropped_bytes, buffer.limit
                ),
                fields: Vec::new(),
            });
        }
        records
    }

    /// What the guest said on stderr about its failure: the panic message
    /// when there is one ("panicked at <place>: <message>"), else its last
    /// stderr line.
    pub fn stderr_summary(&self) -> Option<String> {
        let buffer = self.0.lock().expect("job log poisoned");
        let stderr: Vec<&str> = buffer
            .records
            .iter()
            .filter(|record| record.source == Source::Stderr)
            .map(|record| record.message.as_str())
            .collect();
        if let Some(at) = stderr.iter().position(|line| line.contains("panicked at")) {
            let mut summary = stderr[at].trim().to_string();
            if let Some(next) = stderr.get(at + 1).filter(|next| !next.starts_with("note:")) {
                summary.push(' ');
                summary.push_str(next.trim());
            }
            return Some(summary);
        }
        stderr
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map(|line| line.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> LogRecord {
        LogRecord {
            level: Level::Info,
            source: Source::Guest,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    #[test]
    fn keeps_what_fits_and_reports_the_rest() {
        let log = JobLog::new(2 * RECORD_OVERHEAD_BYTES + 10);
        log.push(record("12345"));
        log.push(record("1234567"));
        log.push(record("123"));
        let records = log.snapshot();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1].message, "123");
        assert_eq!(records[2].source, Source::Node);
        assert!(
            records[2]
                .message
                .contains(&format!("1 records ({} bytes)", RECORD_OVERHEAD_BYTES + 7)),
            "{}",
            records[2].message
        );
    }

    #[test]
    fn empty_records_are_not_free() {
        let log = JobLog::new(10 * RECORD_OVERHEAD_BYTES);
        for _ in 0..1_000 {
            log.push(record(""));
        }
        let records = log.snapshot();
        assert_eq!(records.len(), 11, "ten kept and the note");
        assert!(records[10].message.contains("990 records"), "{}", records[10].message);
    }

    #[test]
    fn stderr_summary_prefers_the_panic_message() {
        let log = JobLog::new(1 << 20);
        for line in [
            "starting",
            "thread '<unnamed>' panicked at src/lib.rs:11:9:",
            "boom on job 7",
            "note: run with `RUST_BACKTRACE=1`",
        ] {
            log.push(LogRecord {
                level: Level::Warn,
                source: Source::Stderr,
                message: line.into(),
                fields: Vec::new(),
            });
        }
        assert_eq!(
            log.stderr_summary().as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:11:9: boom on job 7")
        );
    }
}
