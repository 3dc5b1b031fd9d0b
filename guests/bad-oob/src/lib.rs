//! `bad-oob`: reads a word at an address past the end of its linear memory,
//! where on a native process another tenant's data could be. The sandbox's
//! bounds check must trap the job.

use citadel_guest::{Guest, HandlerError, Job};

struct OutOfBounds;

impl Guest for OutOfBounds {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let address = std::hint::black_box(0xffff_fff0usize);
        // SAFETY: deliberately not; the address is beyond linear memory.
        let word = unsafe { std::ptr::read_volatile(address as *const u64) };
        Ok(format!("{{\"read\":{word}}}"))
    }
}

citadel_guest::export_handler!(OutOfBounds);
