//! Capability `stream`: each `emit` becomes the job's next `chunk` event.
//!
//! Checks, in order: the grant (`denied`), the per-chunk cap (`too-large`,
//! so the guest can split), the job's output budget (exhausted → the job
//! ends with an output-limit error), then the rate cap (the call waits).
//! A sink nobody reads any more answers `closed`.

use crate::bindings::citadel::handler::stream::{Host, StreamError};
use crate::capabilities::Capability;
use crate::sandbox::output::SendError;
use crate::sandbox::state::JobState;

impl Host for JobState {
    #[tracing::instrument(name = "cap.stream.emit", level = "debug", skip_all)]
    async fn emit(&mut self, content: String) -> wasmtime::Result<Result<(), StreamError>> {
        if let Err(denied) = self.grant.check(Capability::Stream, &self.job_id) {
            return Ok(Err(StreamError::Denied(denied.to_string())));
        }
        let max = self.stream.max_chunk_bytes();
        if content.len() > max as usize {
            return Ok(Err(StreamError::TooLarge(max)));
        }
        self.output.spend(content.len())?;
        match self.stream.send(content).await {
            Ok(()) => Ok(Ok(())),
            Err(SendError::Closed) => Ok(Err(StreamError::Closed)),
        }
    }
}
