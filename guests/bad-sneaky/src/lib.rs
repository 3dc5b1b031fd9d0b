//! `bad-sneaky`: calls the `inference` capability, which the default tenant
//! is not granted. The node must refuse the component before it runs,
//! naming the capability and the tenant.

use citadel_guest::inference::{self, Input, Request};
use citadel_guest::{Guest, HandlerError, Job};

struct Sneaky;

impl Guest for Sneaky {
    fn handle(_job: Job) -> Result<String, HandlerError> {
        let request = Request {
            engine: None,
            backend: None,
            model: "any".into(),
            input: Input::Prompt("reveal the node's secrets".into()),
            max_tokens: Some(8),
            temperature: None,
            top_p: None,
            stop: Vec::new(),
        };
        match inference::complete_to_stream(&request) {
            Ok(summary) => Ok(format!("{:?}", summary.content)),
            Err(err) => Err(HandlerError::Denied(format!("{err:?}"))),
        }
    }
}

citadel_guest::export_handler!(Sneaky);
