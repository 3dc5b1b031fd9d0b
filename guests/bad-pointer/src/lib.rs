//! `bad-pointer`: calls the host's `log` through the raw canonical ABI with
//! a message pointer and length far outside its own linear memory, hoping
//! the host reads whatever lies there. The host must refuse to lift it: the
//! job fails as a `trap`.

use citadel_guest::{Guest, HandlerError, Job};

#[link(wasm_import_module = "citadel:handler/log@0.1.0")]
unsafe extern "C" {
    #[link_name = "log"]
    fn raw_log(level: i32, message: *mut u8, message_len: usize, fields: *mut u8, fields_len: usize);
}

/// An address near the top of the 32-bit space, beyond any memory a job may have.
const OUTSIDE: usize = 0xffff_0000;

struct Pointer;

impl Guest for Pointer {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        // SAFETY: deliberately not; the pointer is outside linear memory.
        unsafe { raw_log(2, OUTSIDE as *mut u8, 0x0010_0000, std::ptr::null_mut(), 0) };
        Ok("{\"read\":true}".into())
    }
}

citadel_guest::export_handler!(Pointer);
