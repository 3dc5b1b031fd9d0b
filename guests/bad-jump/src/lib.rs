//! `bad-jump`: calls through a function pointer made from an arbitrary
//! number, the classic way to hijack control flow natively. In wasm the call
//! goes through the function table with a type check: the job traps.

use citadel_guest::{Guest, HandlerError, Job};

struct Jump;

impl Guest for Jump {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let target = std::hint::black_box(0x0fff_ffffusize);
        // SAFETY: deliberately not; nothing lives at `target`.
        let hijack: extern "C" fn() -> u32 = unsafe { std::mem::transmute(target) };
        Ok(format!("{{\"returned\":{}}}", hijack()))
    }
}

citadel_guest::export_handler!(Jump);
