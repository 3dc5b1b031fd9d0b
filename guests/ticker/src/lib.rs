//! `ticker`: emits `payload.chunks` chunks (default 100), `interval_us`
//! apart (default 1000), each carrying the wall-clock time of its emit in
//! nanoseconds since the Unix epoch — so a subscriber on the same machine can
//! tell how long a chunk took to reach it. Returns `{"chunks": N}`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citadel_guest::{Guest, HandlerError, Job, stream};
use serde_json::{Value, json};

struct Ticker;

impl Guest for Ticker {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let payload: Value = serde_json::from_str(&job.payload).unwrap_or(Value::Null);
        let chunks = payload.get("chunks").and_then(Value::as_u64).unwrap_or(100);
        let interval = Duration::from_micros(payload.get("interval_us").and_then(Value::as_u64).unwrap_or(1000));
        for _ in 0..chunks {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            stream::emit(&now.to_string()).map_err(|err| HandlerError::Failed(format!("emit: {err:?}")))?;
            std::thread::sleep(interval);
        }
        Ok(json!({"chunks": chunks}).to_string())
    }
}

citadel_guest::export_handler!(Ticker);
