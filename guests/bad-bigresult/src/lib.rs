//! `bad-bigresult`: returns one valid JSON string of 8 MiB, far over its
//! tenant's output budget, through the result rather than chunks. The job
//! fails as `output_limit`.

use citadel_guest::{Guest, HandlerError, Job};

const BYTES: usize = 8 << 20;

struct BigResult;

impl Guest for BigResult {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        Ok(format!("\"{}\"", "a".repeat(BYTES)))
    }
}

citadel_guest::export_handler!(BigResult);
