//! `bad-enum`: calls the host's `log` through the raw canonical ABI with a
//! `level` discriminant the enum does not have. The host must refuse to
//! lift it: the job fails as a `trap`.

use citadel_guest::{Guest, HandlerError, Job};

#[link(wasm_import_module = "citadel:handler/log@0.1.0")]
unsafe extern "C" {
    #[link_name = "log"]
    fn raw_log(level: i32, message: *mut u8, message_len: usize, fields: *mut u8, fields_len: usize);
}

/// `level` has five cases (0–4).
const NO_SUCH_LEVEL: i32 = 200;

struct BadEnum;

impl Guest for BadEnum {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let mut message = *b"which level is this?";
        // SAFETY: deliberately not; the discriminant is out of range.
        unsafe {
            raw_log(
                NO_SUCH_LEVEL,
                message.as_mut_ptr(),
                message.len(),
                std::ptr::null_mut(),
                0,
            );
        }
        Ok("{\"logged\":true}".into())
    }
}

citadel_guest::export_handler!(BadEnum);
