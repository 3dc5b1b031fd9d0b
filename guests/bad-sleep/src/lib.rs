//! `bad-sleep`: blocks inside a host call (`wasi:clocks` for an hour), where
//! the epoch interrupt that stops a spinning guest cannot reach it. The job
//! must still end at its deadline, as `deadline`.

use citadel_guest::{Guest, HandlerError, Job};

/// One hour, in nanoseconds.
const HOUR_NS: u64 = 3_600 * 1_000_000_000;

struct Sleep;

impl Guest for Sleep {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        wasip2::clocks::monotonic_clock::subscribe_duration(HOUR_NS).block();
        Ok("{\"slept\":true}".into())
    }
}

citadel_guest::export_handler!(Sleep);
