//! `bad-orphan`: drops a stream while a pollable it handed out is still
//! alive, the order the WASI resource rules forbid. The host refuses the
//! drop: the job traps, and the host's resource table stays consistent.

use citadel_guest::{Guest, HandlerError, Job};

struct Orphan;

impl Guest for Orphan {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let stdout = wasip2::cli::stdout::get_stdout();
        let ready = stdout.subscribe();
        drop(stdout);
        ready.block();
        Ok("{\"orphaned\":true}".into())
    }
}

citadel_guest::export_handler!(Orphan);
