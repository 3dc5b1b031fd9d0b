//! `slow`: a long job. Payload `{"ms": N, "chunks": K}` (defaults 1000, 4):
//! sleeps N ms in K steps, emitting chunk `step i` after each, then returns
//! `{"slept_ms": N, "attempt": <delivery>}`. Sleeping is a WASI clock wait
//! (the host awaits it), so a slow job holds no thread.

use std::time::Duration;

use citadel_guest::{Guest, HandlerError, Job, stream};
use serde_json::{Value, json};

struct Slow;

impl Guest for Slow {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let payload: Value = serde_json::from_str(&job.payload)
            .map_err(|err| HandlerError::InvalidInput(format!("payload is not JSON: {err}")))?;
        let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(1000);
        let steps = payload.get("chunks").and_then(Value::as_u64).unwrap_or(4).max(1);
        for step in 0..steps {
            std::thread::sleep(Duration::from_millis(ms / steps));
            stream::emit(&format!("step {step}")).map_err(|err| HandlerError::Failed(format!("emit: {err:?}")))?;
        }
        Ok(json!({"slept_ms": ms, "attempt": job.attempt}).to_string())
    }
}

citadel_guest::export_handler!(Slow);
