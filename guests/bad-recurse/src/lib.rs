//! `bad-recurse`: recursion without a base case. The frames live in wasm
//! locals (nothing is address-taken, so nothing goes to the linear-memory
//! shadow stack) and the work after the call is not associative, so the
//! optimiser can neither drop the frames nor turn the recursion into a loop:
//! the node's wasm stack limit must stop it.

use citadel_guest::{Guest, HandlerError, Job};

struct Recurse;

#[inline(never)]
fn descend(depth: u64, a: u64, b: u64, c: u64) -> u64 {
    if depth == u64::MAX {
        return a;
    }
    let below = descend(depth + 1, b ^ depth, c.rotate_left(7), a.wrapping_mul(31));
    below.rotate_left((a & 63) as u32) ^ b
}

impl Guest for Recurse {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let seed = job.payload.len() as u64;
        Ok(descend(0, seed, seed ^ 0x9e37_79b9, seed.wrapping_mul(7)).to_string())
    }
}

citadel_guest::export_handler!(Recurse);
