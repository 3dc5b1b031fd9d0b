//! `bad-json`: returns a result that is not JSON. The job must fail as
//! `bad_output`: the handler's contract is a JSON result.

use citadel_guest::{Guest, HandlerError, Job};

struct NotJson;

impl Guest for NotJson {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        Ok("{\"unterminated\": ".into())
    }
}

citadel_guest::export_handler!(NotJson);
