//! `echo`: returns the payload unchanged, emitting each word of
//! `payload.text` as a chunk. The smallest real handler; benchmarks use it to
//! measure per-job overhead.

use citadel_guest::{Guest, HandlerError, Job, stream};

struct Echo;

impl Guest for Echo {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let payload: serde_json::Value = serde_json::from_str(&job.payload)
            .map_err(|err| HandlerError::InvalidInput(format!("payload is not JSON: {err}")))?;
        if let Some(text) = payload.get("text").and_then(|text| text.as_str()) {
            for word in text.split_whitespace() {
                stream::emit(word).map_err(|err| HandlerError::Failed(format!("emit: {err:?}")))?;
            }
        }
        Ok(job.payload)
    }
}

citadel_guest::export_handler!(Echo);
