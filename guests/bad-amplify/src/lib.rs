//! `bad-amplify`: one raw `log` call whose `fields` list has a million
//! entries, every key and value pointing at the same 64 KiB buffer: 16 MiB
//! of guest memory that would make the host copy 128 GiB. The host's
//! per-call copy budget must stop it: the job fails as `resource_limit`
//! and the node's memory stays flat.

use citadel_guest::{Guest, HandlerError, Job};

#[link(wasm_import_module = "citadel:handler/log@0.1.0")]
unsafe extern "C" {
    #[link_name = "log"]
    fn raw_log(level: i32, message: *mut u8, message_len: usize, fields: *mut u8, fields_len: usize);
}

const ENTRIES: usize = 1_000_000;
const BUFFER_BYTES: usize = 64 << 10;

struct Amplify;

impl Guest for Amplify {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let buffer = vec![b'a'; BUFFER_BYTES];
        let at = buffer.as_ptr() as usize;
        // A `tuple<string, string>` is (key ptr, key len, value ptr, value len).
        let mut fields: Vec<[usize; 4]> = vec![[at, BUFFER_BYTES, at, BUFFER_BYTES]; ENTRIES];
        let mut message = *b"amplified";
        // SAFETY: every pointer is inside linear memory; only the sizes lie.
        unsafe {
            raw_log(
                2,
                message.as_mut_ptr(),
                message.len(),
                fields.as_mut_ptr().cast(),
                ENTRIES,
            );
        }
        Ok("{\"copied\":true}".into())
    }
}

citadel_guest::export_handler!(Amplify);
