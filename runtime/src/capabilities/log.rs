//! Capability `log`: structured records from the guest into the job's log
//! (and the node's trace at DEBUG, within the job's span).
//!
//! Host-call data caps: a message is cut at [`MAX_MESSAGE_BYTES`], at most
//! [`MAX_FIELDS`] fields of at most [`MAX_FIELD_BYTES`] each are kept; the
//! job's whole log is capped by the tenant's `max_log_bytes` (`joblog.rs`).
//! `log` has no error result, so a denied call is dropped (and the denial
//! logged once by the grant).

use super::truncate;
use crate::bindings::citadel::handler::log::{Host, Level as WitLevel};
use crate::capabilities::Capability;
use crate::sandbox::joblog::{Level, LogRecord, Source};
use crate::sandbox::state::JobState;

/// Longest message kept, bytes.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Most fields kept per record.
const MAX_FIELDS: usize = 32;
/// Longest field key or value kept, bytes.
const MAX_FIELD_BYTES: usize = 256;

impl Host for JobState {
    #[tracing::instrument(name = "cap.log.log", level = "debug", skip_all)]
    async fn log(&mut self, level: WitLevel, message: String, fields: Vec<(String, String)>) -> wasmtime::Result<()> {
        if self.grant.check(Capability::Log, &self.job_id).is_err() {
            return Ok(());
        }
        let level = match level {
            WitLevel::Trace => Level::Trace,
            WitLevel::Debug => Level::Debug,
            WitLevel::Info => Level::Info,
            WitLevel::Warn => Level::Warn,
            WitLevel::Error => Level::Error,
        };
        let message = truncate(message, MAX_MESSAGE_BYTES);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(key, value)| (truncate(key, MAX_FIELD_BYTES), truncate(value, MAX_FIELD_BYTES)))
            .collect();
        tracing::debug!(target: "citadel::guest", ?level, ?fields, "{message}");
        self.log.push(LogRecord {
            level,
            source: Source::Guest,
            message,
            fields,
        });
        Ok(())
    }
}
