//! `bad-utf8`: returns a result string holding bytes that are not UTF-8,
//! which the component model forbids. The host must refuse to lift it: the
//! job fails as a `trap` (the guest broke the ABI), not as a node fault.

use citadel_guest::{Guest, HandlerError, Job};

struct BadUtf8;

impl Guest for BadUtf8 {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let bytes = vec![b'"', 0xff, 0xfe, 0xc0, b'"'];
        // SAFETY: deliberately not; this guest breaks the string invariant
        // to see that the host, not the guest, enforces it.
        Ok(unsafe { String::from_utf8_unchecked(bytes) })
    }
}

citadel_guest::export_handler!(BadUtf8);
