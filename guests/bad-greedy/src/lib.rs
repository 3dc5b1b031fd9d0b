//! `bad-greedy`: asks the node's host calls for more than any job may have —
//! `{"want":"random"}` a terabyte of random bytes in one call,
//! `{"want":"handles"}` resource handles it never drops. These are limits
//! the tenant hit, not faults of the node: the job must fail as a
//! `resource_limit` (not retried), never as a `host_error`.

use citadel_guest::{Guest, HandlerError, Job};

/// More handles than the node grants one job, so the loop always ends in
/// the limit (or, on a node without one, in success and a failed test).
const HANDLES_WANTED: usize = 10_000_000;

struct Greedy;

impl Guest for Greedy {
    fn handle(job: Job) -> Result<String, HandlerError> {
        if job.payload.contains("\"handles\"") {
            for _ in 0..HANDLES_WANTED {
                // Each call is a new handle; forgetting it keeps it held.
                std::mem::forget(wasip2::cli::stdout::get_stdout());
            }
            return Ok(format!("{{\"held\":{HANDLES_WANTED}}}"));
        }
        let bytes = wasip2::random::random::get_random_bytes(1 << 40);
        Ok(format!("{{\"random_bytes\":{}}}", bytes.len()))
    }
}

citadel_guest::export_handler!(Greedy);
