//! `bad-poll`: calls `wasi:io/poll.poll` with no pollables, which WASI
//! defines as a trap. It must be classed as the guest's `trap`, not as an
//! error of the node's.

use citadel_guest::{Guest, HandlerError, Job};

struct EmptyPoll;

impl Guest for EmptyPoll {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let ready = wasip2::io::poll::poll(&[]);
        Ok(format!("{{\"ready\":{}}}", ready.len()))
    }
}

citadel_guest::export_handler!(EmptyPoll);
