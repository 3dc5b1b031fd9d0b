//! `bad-hog`: allocates (and touches) memory until something stops it. The
//! node's memory limit must fail the job as a memory-limit hit, not as a
//! generic trap.

use citadel_guest::{Guest, HandlerError, Job};

struct Hog;

impl Guest for Hog {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

citadel_guest::export_handler!(Hog);
