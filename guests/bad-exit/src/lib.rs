//! `bad-exit`: calls `wasi:cli/exit` in the middle of its job instead of
//! returning a result. Only the job ends, as a `trap` naming the exit; the
//! node (which shares no process with the guest) carries on.

use citadel_guest::{Guest, HandlerError, Job};

struct Exit;

impl Guest for Exit {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        std::process::exit(3)
    }
}

citadel_guest::export_handler!(Exit);
