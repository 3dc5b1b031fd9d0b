//! `bad-spin`: never returns. The node must stop it at the job's deadline
//! while other jobs keep running.

use citadel_guest::{Guest, HandlerError, Job};

struct Spin;

impl Guest for Spin {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

citadel_guest::export_handler!(Spin);
