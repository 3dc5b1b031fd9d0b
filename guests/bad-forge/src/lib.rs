//! `bad-forge`: writes to an output-stream handle it was never given, a
//! number picked in the hope of reaching another job's (or the node's)
//! stream. Handles are per instance: the write must trap this job only.

use citadel_guest::{Guest, HandlerError, Job};
use wasip2::io::streams::OutputStream;

/// A handle number no call ever returned to this instance.
const FORGED: u32 = 0x5eed;

struct Forge;

impl Guest for Forge {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        // SAFETY: deliberately not; the handle is forged.
        let stream = unsafe { OutputStream::from_handle(FORGED) };
        let wrote = stream.blocking_write_and_flush(b"hello from a forged handle\n");
        Ok(format!("{{\"wrote\":{}}}", wrote.is_ok()))
    }
}

citadel_guest::export_handler!(Forge);
