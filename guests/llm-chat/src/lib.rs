//! `llm-chat`: Citadel's `llm_inference` job. Payload
//! `{model, prompt | messages, max_tokens, temperature, top_p, stream,
//! backend, stop}`; with `stream` (the default) every token becomes a
//! `chunk` through the host's splice path (`complete-to-stream`), otherwise
//! tokens are pulled (`complete`) and only the result carries the text.
//! Result: `{content, finish_reason, model, usage: {prompt_tokens,
//! completion_tokens, total_tokens}, time_to_first_token_ms}`.

use citadel_guest::inference::{self, Error, Input, Message, Request, Summary};
use citadel_guest::{Guest, HandlerError, Job};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct Payload {
    model: String,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    #[serde(default = "streams")]
    stream: bool,
    /// Citadel's name for the engine to use.
    backend: Option<String>,
    stop: Option<Stop>,
}

fn streams() -> bool {
    true
}

fn handler_error(err: Error) -> HandlerError {
    match err {
        Error::Denied(reason) => HandlerError::Denied(reason),
        Error::Unavailable(reason) => HandlerError::Unavailable(reason),
        Error::InvalidRequest(reason) => HandlerError::InvalidInput(reason),
        Error::Engine(reason) => HandlerError::Failed(reason),
    }
}

struct LlmChat;

impl Guest for LlmChat {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|err| HandlerError::InvalidInput(format!("llm_inference payload: {err}")))?;
        let input = match (payload.messages, payload.prompt) {
            (Some(messages), None) => Input::Messages(
                messages
                    .into_iter()
                    .map(|message| Message {
                        role: message.role,
                        content: message.content,
                    })
                    .collect(),
            ),
            (None, Some(prompt)) => Input::Prompt(prompt),
            _ => {
                return Err(HandlerError::InvalidInput(
                    "give exactly one of `prompt` and `messages`".into(),
                ));
            }
        };
        let request = Request {
            engine: payload
                .backend
                .filter(|backend| !backend.is_empty() && backend != "auto"),
            model: payload.model.clone(),
            input,
            max_tokens: payload.max_tokens,
            temperature: payload.temperature,
            top_p: payload.top_p,
            stop: match payload.stop {
                None => Vec::new(),
                Some(Stop::One(stop)) => vec![stop],
                Some(Stop::Many(stops)) => stops,
            },
        };
        let summary = if payload.stream {
            inference::complete_to_stream(&request)
        } else {
            pull(&request)
        }
        .map_err(handler_error)?;
        let usage = summary.usage;
        Ok(json!({
            "content": summary.content,
            "finish_reason": summary.finish_reason,
            "model": payload.model,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
            "time_to_first_token_ms": summary.time_to_first_token_ms,
        })
        .to_string())
    }
}

/// Pull every token, then the summary.
fn pull(request: &Request) -> Result<Summary, Error> {
    let completion = inference::complete(request)?;
    while completion.next()?.is_some() {}
    completion
        .summary()
        .ok_or_else(|| Error::Engine("the generation ended without a summary".into()))
}

citadel_guest::export_handler!(LlmChat);
