//! `bad-bigalloc`: asks for 1 GiB in a single allocation (one `memory.grow`
//! far past its tenant's limit, where `bad-hog` creeps up). The job fails as
//! `memory_limit`; the node never commits the memory.

use citadel_guest::{Guest, HandlerError, Job};

const BYTES: usize = 1 << 30;

struct BigAlloc;

impl Guest for BigAlloc {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let block = vec![1u8; std::hint::black_box(BYTES)];
        Ok(format!("{{\"allocated\":{}}}", block.len()))
    }
}

citadel_guest::export_handler!(BigAlloc);
