//! `llm-chat`: Citadel's `llm_inference` job. Payload
//! `{model, prompt | messages, max_tokens, temperature, top_p, stream,
//! backend, engine, stop}`: `backend` is the kind of engine (`vllm`,
//! `sglang`, `llamacpp`, `ollama`, `auto`), `engine` one of the node's
//! engines by name; the node routes the request. With `stream` (the
//! default) every token becomes a
//! `chunk` through the host's splice path (`complete-to-stream`), otherwise
//! tokens are pulled (`complete`) and only the result carries the text.
//! `splice: false` streams through the guest instead: each pulled token is
//! emitted by the guest (the path a handler that edits tokens takes).
//! Result: `{content, finish_reason, model, usage: {prompt_tokens,
//! completion_tokens, total_tokens}, time_to_first_token_ms}`.

use citadel_guest::inference::{self, Error, Input, Message, Request, Summary};
use citadel_guest::{Guest, HandlerError, Job, stream};
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
    #[serde(default = "streams")]
    splice: bool,
    /// Citadel's kind of engine: `vllm`, `sglang`, `llamacpp`, `ollama`, `auto`.
    backend: Option<String>,
    /// One of the node's engines, by name.
    engine: Option<String>,
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
            engine: payload.engine,
            backend: payload.backend,
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
        let summary = match (payload.stream, payload.splice) {
            (true, true) => inference::complete_to_stream(&request),
            (true, false) => pull(&request, true),
            (false, _) => pull(&request, false),
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

/// Pull every token (emitting each when `emit`), then the summary.
fn pull(request: &Request, emit: bool) -> Result<Summary, Error> {
    let completion = inference::complete(request)?;
    while let Some(token) = completion.next()? {
        if emit {
            stream::emit(&token).map_err(|err| Error::Engine(format!("emit: {err:?}")))?;
        }
    }
    completion
        .summary()
        .ok_or_else(|| Error::Engine("the generation ended without a summary".into()))
}

citadel_guest::export_handler!(LlmChat);
