//! `bad-trap`: panics. The job must fail as a guest trap carrying the panic
//! message, and the node must carry on.

use citadel_guest::{Guest, HandlerError, Job};

struct Trap;

impl Guest for Trap {
    fn handle(job: Job) -> Result<String, HandlerError> {
        panic!("bad-trap was asked to fail on job {}", job.id);
    }
}

citadel_guest::export_handler!(Trap);
