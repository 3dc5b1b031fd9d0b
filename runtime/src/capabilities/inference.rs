//! Capability `inference`: generations on the node's configured engines.
//!
//! Checks, in order: the grant (`denied`), the request (`invalid-request`),
//! the engine the request names or the first serving its model (an engine
//! this node does not have is `denied`: a guest reaches configured engines
//! and nothing else), the tenant's engine and model allowlists (`denied`,
//! each logged once per job), then the engine's concurrency slot (the call
//! waits its turn). `complete` hands the guest a resource to pull tokens
//! from; `complete-to-stream` splices every token straight into the job's
//! `chunk` events (so it also needs `stream`). Dropping the completion,
//! the job's deadline or its cancellation drops the HTTP request, which
//! stops the engine. Usage and time to first token are metered per tenant.

use citadel_transports::engines::{EngineError, Finish, GenerationRequest, Input, Message};
use wasmtime::component::Resource;

use crate::bindings::citadel::handler::inference::{
    self as wit, Error as InferenceError, Host, HostCompletion, Request, Summary, Usage as WitUsage,
};
use crate::capability::Capability;
use crate::inference::{Generation, Metered, Unrouted};
use crate::output::SendError;
use crate::state::JobState;

/// A generation a guest is pulling from (`completion` resource).
pub struct ActiveCompletion {
    generation: Generation,
    metered: Metered,
    content: String,
    summary: Option<Summary>,
}

fn engine_error(err: EngineError) -> InferenceError {
    match err {
        EngineError::Unavailable { .. } => InferenceError::Unavailable(err.to_string()),
        EngineError::Rejected { .. } => InferenceError::InvalidRequest(err.to_string()),
        _ => InferenceError::Engine(err.to_string()),
    }
}

fn generation_request(request: Request) -> Result<(Option<String>, GenerationRequest), InferenceError> {
    if request.model.trim().is_empty() {
        return Err(InferenceError::InvalidRequest("model is empty".into()));
    }
    let input = match request.input {
        wit::Input::Messages(messages) if messages.is_empty() => {
            return Err(InferenceError::InvalidRequest("messages is empty".into()));
        }
        wit::Input::Messages(messages) => Input::Messages(
            messages
                .into_iter()
                .map(|message| Message {
                    role: message.role,
                    content: message.content,
                })
                .collect(),
        ),
        wit::Input::Prompt(prompt) => Input::Prompt(prompt),
    };
    Ok((
        request.engine,
        GenerationRequest {
            model: request.model,
            input,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            stop: request.stop,
        },
    ))
}

fn summary(content: String, finish: Finish, metered: &Metered) -> Summary {
    let usage = finish.usage.unwrap_or_default();
    Summary {
        content,
        finish_reason: finish.reason,
        usage: WitUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        },
        time_to_first_token_ms: metered.time_to_first_token_ms(),
    }
}

impl JobState {
    /// Grant, request, route, allowlists; then wait for the engine's slot.
    async fn start_generation(&mut self, request: Request) -> Result<(Generation, Metered), InferenceError> {
        if let Err(denied) = self.grant.check(Capability::Inference, &self.job_id) {
            return Err(InferenceError::Denied(denied.to_string()));
        }
        let (engine, request) = generation_request(request)?;
        let slot = match self.engines.route(engine.as_deref(), &request.model) {
            Ok(slot) => slot,
            Err(unrouted @ Unrouted::NoSuchEngine(_)) => {
                let reason = unrouted.to_string();
                self.grant.deny_once(&reason, &self.job_id);
                return Err(InferenceError::Denied(reason));
            }
            Err(unrouted) => return Err(InferenceError::Unavailable(unrouted.to_string())),
        };
        let engine = slot.settings().name.clone();
        let tenant = self.grant.tenant().to_string();
        let allowlist = &self.grant.policy().inference;
        let refusal = if !allowlist.allows_engine(&engine) {
            Some(format!(
                "tenant `{tenant}` may not use engine `{engine}` (inference.engines)"
            ))
        } else if !allowlist.allows_model(&request.model) {
            Some(format!(
                "tenant `{tenant}` may not use model `{}` (inference.models)",
                request.model
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.grant.deny_once(&reason, &self.job_id);
            return Err(InferenceError::Denied(reason));
        }
        let mut metered = Metered::start(&self.engines, &tenant, &engine, &request.model);
        match slot.generate(&request).await {
            Ok(generation) => Ok((generation, metered)),
            Err(err) => {
                metered.failed(&err);
                Err(engine_error(err))
            }
        }
    }
}

impl Host for JobState {
    async fn complete(
        &mut self,
        request: Request,
    ) -> wasmtime::Result<Result<Resource<ActiveCompletion>, InferenceError>> {
        let (generation, metered) = match self.start_generation(request).await {
            Ok(started) => started,
            Err(err) => return Ok(Err(err)),
        };
        let completion = ActiveCompletion {
            generation,
            metered,
            content: String::new(),
            summary: None,
        };
        Ok(Ok(self.table.push(completion)?))
    }

    async fn complete_to_stream(&mut self, request: Request) -> wasmtime::Result<Result<Summary, InferenceError>> {
        if let Err(denied) = self.grant.check(Capability::Stream, &self.job_id) {
            return Ok(Err(InferenceError::Denied(format!(
                "complete-to-stream emits chunks: {denied}"
            ))));
        }
        let (mut generation, mut metered) = match self.start_generation(request).await {
            Ok(started) => started,
            Err(err) => return Ok(Err(err)),
        };
        let mut content = String::new();
        loop {
            match generation.stream.next().await {
                Ok(Some(token)) => {
                    metered.token(generation.stream.time_to_first_token());
                    self.output.spend(token.len())?;
                    content.push_str(&token);
                    if let Err(SendError::Closed) = self.stream.send(token).await {
                        return Ok(Err(InferenceError::Engine("the job's stream was closed".into())));
                    }
                }
                Ok(None) => {
                    let finish = generation.stream.finish().unwrap_or_default();
                    metered.finished(&finish);
                    return Ok(Ok(summary(content, finish, &metered)));
                }
                Err(err) => {
                    metered.failed(&err);
                    return Ok(Err(engine_error(err)));
                }
            }
        }
    }
}

impl HostCompletion for JobState {
    async fn next(
        &mut self,
        completion: Resource<ActiveCompletion>,
    ) -> wasmtime::Result<Result<Option<String>, InferenceError>> {
        let active = self.table.get_mut(&completion)?;
        if active.summary.is_some() {
            return Ok(Ok(None));
        }
        match active.generation.stream.next().await {
            Ok(Some(token)) => {
                active.metered.token(active.generation.stream.time_to_first_token());
                active.content.push_str(&token);
                Ok(Ok(Some(token)))
            }
            Ok(None) => {
                let finish = active.generation.stream.finish().unwrap_or_default();
                active.metered.finished(&finish);
                active.summary = Some(summary(std::mem::take(&mut active.content), finish, &active.metered));
                Ok(Ok(None))
            }
            Err(err) => {
                active.metered.failed(&err);
                Ok(Err(engine_error(err)))
            }
        }
    }

    async fn summary(&mut self, completion: Resource<ActiveCompletion>) -> wasmtime::Result<Option<Summary>> {
        Ok(self.table.get(&completion)?.summary.clone())
    }

    async fn drop(&mut self, completion: Resource<ActiveCompletion>) -> wasmtime::Result<()> {
        self.table.delete(completion)?;
        Ok(())
    }
}
