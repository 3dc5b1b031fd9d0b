//! `bad-greedy`: asks the node's host calls for more than any job may have —
//! `{"want":"random"}` a terabyte of random bytes in one call,
//! `{"want":"handles"}` resource handles it never drops. These are limits
//! the tenant hit, not faults of the node: the job must fail as a
//! `resource_limit` (not retried), never as a `host_error`.
//! `{"want":"leak","stdout":N,"pollables":M,"networks":K}` prints the job's
//! id to stdout and stderr, keeps N stdout handles, M clock pollables and K
//! network handles past its end and returns: the prints belong in that
//! job's log, and an instance holding more than its stdio streams must not
//! serve another job.

use citadel_guest::{Guest, HandlerError, Job};

/// More handles than the node grants one job, so the loop always ends in
/// the limit (or, on a node without one, in success and a failed test).
const HANDLES_WANTED: usize = 10_000_000;

struct Greedy;

impl Guest for Greedy {
    fn handle(job: Job) -> Result<String, HandlerError> {
        if job.payload.contains("\"leak\"") {
            let count = |key: &str| {
                let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
                payload.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
            };
            println!("stdout of job {}", job.id);
            eprintln!("stderr of job {}", job.id);
            for _ in 0..count("stdout") {
                std::mem::forget(wasip2::cli::stdout::get_stdout());
            }
            for _ in 0..count("pollables") {
                std::mem::forget(wasip2::clocks::monotonic_clock::subscribe_duration(1));
            }
            for _ in 0..count("networks") {
                std::mem::forget(wasip2::sockets::instance_network::instance_network());
            }
            return Ok(job.payload);
        }
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
