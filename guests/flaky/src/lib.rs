//! `flaky`: a handler whose backend is down. Payload
//! `{"succeed_on_attempt": N}`: fails with `unavailable` on deliveries before
//! the N-th, then succeeds with `{"attempt": N}`; without the key it never
//! succeeds (a poison job for the dead-letter queue).

use citadel_guest::{Guest, HandlerError, Job};
use serde_json::{Value, json};

struct Flaky;

impl Guest for Flaky {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let payload: Value = serde_json::from_str(&job.payload).unwrap_or(Value::Null);
        match payload.get("succeed_on_attempt").and_then(Value::as_u64) {
            Some(attempt) if u64::from(job.attempt) >= attempt => Ok(json!({"attempt": job.attempt}).to_string()),
            _ => Err(HandlerError::Unavailable(format!(
                "backend still down on attempt {}",
                job.attempt
            ))),
        }
    }
}

citadel_guest::export_handler!(Flaky);
