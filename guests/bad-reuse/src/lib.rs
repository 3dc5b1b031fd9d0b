//! `bad-reuse`: drops its stdout handle, then writes through the same
//! handle number again (a use after free). The host must trap the job.

use citadel_guest::{Guest, HandlerError, Job};
use wasip2::io::streams::OutputStream;

struct Reuse;

impl Guest for Reuse {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let stdout = wasip2::cli::stdout::get_stdout();
        let number = stdout.handle();
        drop(stdout);
        // SAFETY: deliberately not; the handle was dropped above.
        let stale = unsafe { OutputStream::from_handle(number) };
        let wrote = stale.blocking_write_and_flush(b"written after free\n");
        Ok(format!("{{\"wrote\":{}}}", wrote.is_ok()))
    }
}

citadel_guest::export_handler!(Reuse);
