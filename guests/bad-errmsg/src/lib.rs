//! `bad-errmsg`: fails with a 4 MiB error message, hoping to fill the
//! node's logs, the job's status hash and every reader of its events. The
//! job fails as `failed` with the message cut to a bounded length.

use citadel_guest::{Guest, HandlerError, Job};

const BYTES: usize = 4 << 20;

struct HugeError;

impl Guest for HugeError {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        Err(HandlerError::Failed(format!("bad-errmsg {}", "e".repeat(BYTES))))
    }
}

citadel_guest::export_handler!(HugeError);
