//! `bad-logspam`: logs 200 000 empty records, each costing the host a
//! record of its own however short the message. The job's log must stay
//! within its tenant's `max_log_bytes` (counting each record, not only its
//! text) and the job completes.

use citadel_guest::log::{Level, log};
use citadel_guest::{Guest, HandlerError, Job};

const RECORDS: u32 = 200_000;

struct LogSpam;

impl Guest for LogSpam {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        for _ in 0..RECORDS {
            log(Level::Info, "", &[]);
        }
        Ok(format!("{{\"logged\":{RECORDS}}}"))
    }
}

citadel_guest::export_handler!(LogSpam);
