//! `bad-flood`: ignores every output cap. Payload `{"mode": "chunks"}`
//! (default) streams 64 KiB chunks forever and, when one is refused as too
//! large, a flood of small ones; `{"mode": "output"}` returns an 8 MiB result;
//! `{"mode": "stdout"}` prints 8 MiB to stdout and then succeeds (the job's
//! log keeps what fits and says how much was cut).

use citadel_guest::{Guest, HandlerError, Job, stream};

struct Flood;

impl Guest for Flood {
    fn handle(job: Job) -> Result<String, HandlerError> {
        if job.payload.contains("\"stdout\"") {
            let line = "z".repeat(1023);
            for _ in 0..(8 << 10) {
                println!("{line}");
            }
            return Ok("\"printed\"".to_string());
        }
        if job.payload.contains("\"output\"") {
            return Ok(format!("\"{}\"", "x".repeat(8 << 20)));
        }
        let big = "x".repeat(64 << 10);
        let small = "y".repeat(512);
        loop {
            if stream::emit(&big).is_err() {
                let _ = stream::emit(&small);
            }
        }
    }
}

citadel_guest::export_handler!(Flood);
