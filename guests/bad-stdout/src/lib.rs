//! `bad-stdout`: writes 32 MiB to stdout in one `write` call without asking
//! `check-write` first, hoping the host splits it into lines with the guest's
//! time frozen. Writing past the permit breaks the WASI stream contract: the
//! job traps at once.

use citadel_guest::{Guest, HandlerError, Job};

const BYTES: usize = 32 << 20;

struct StdoutFlood;

impl Guest for StdoutFlood {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let stdout = wasip2::cli::stdout::get_stdout();
        let wrote = stdout.write(&vec![b'x'; BYTES]);
        Ok(format!("{{\"wrote\":{}}}", wrote.is_ok()))
    }
}

citadel_guest::export_handler!(StdoutFlood);
