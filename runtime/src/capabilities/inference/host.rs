//! Capability `inference`: generations on the node's configured engines.
//!
//! Checks, in order: the grant (`denied`), the request (`invalid-request`,
//! an unknown `backend` included), the tenant's model allowlist (`denied`),
//! then the route (`crate::capabilities::inference::Route`): the engine the request names,
//! else the first engine that is the `backend` asked for (Citadel's engine
//! kind; `auto` or none: any), serves the model and is in the tenant's
//! engine allowlist. An engine, backend or grant this node does not have
//! is `denied` (a guest reaches configured engines and nothing else, and
//! the reason says what the node does serve); a model no engine here serves
//! is `unavailable` (another node may). Refusals are logged once per job.
//! Then the engine's concurrency slot (the call waits its turn). `complete` hands the guest a resource to pull tokens
//! from; `complete-to-stream` splices every token straight into the job's
//! `chunk` events (so it also needs `stream`). Dropping the completion,
//! the job's deadline or its cancellation drops the HTTP request, which
//! stops the engine. Usage and time to first token are metered per tenant.

use citadel_transports::engines::{Backend, EngineError, Finish, GenerationRequest, Input, Message};
use wasmtime::component::Resource;

use crate::bindings::citadel::handler::inference::{
    self as wit, Error as InferenceError, Host, HostCompletion, Request, Summary, Usage as WitUsage,
};
use crate::capabilities::Capability;
use crate::capabilities::inference::{Generation, Metered, Route};
use crate::sandbox::output::SendError;
use crate::sandbox::state::JobState;

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

/// The request's engine and backend, and the request for the engine.
struct Requested {
    engine: Option<String>,
    backend: Option<Backend>,
    request: GenerationRequest,
}

fn generation_request(request: Request) -> Result<Requested, InferenceError> {
    if request.model.trim().is_empty() {
        return Err(InferenceError::InvalidRequest("model is empty".into()));
    }
    let backend = match request.backend.as_deref() {
        Some(text) => Backend::parse_requested(text).map_err(InferenceError::InvalidRequest)?,
        None => None,
    };
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
    Ok(Requested {
        engine: request.engine.filter(|engine| !engine.is_empty()),
        backend,
        request: GenerationRequest {
            model: request.model,
            input,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            stop: request.stop,
        },
    })
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
    /// Grant, request, model allowlist, route; then wait for the engine's slot.
    async fn start_generation(&mut self, request: Request) -> Result<(Generation, Metered), InferenceError> {
        if let Err(denied) = self.grant.check(Capability::Inference, &self.job_id) {
            return Err(InferenceError::Denied(denied.to_string()));
        }
        let Requested {
            engine,
            backend,
            request,
        } = generation_request(request)?;
        let tenant = self.grant.tenant().to_string();
        let allowlist = &self.grant.policy().inference;
        if !allowlist.allows_model(&request.model) {
            let reason = format!(
                "tenant `{tenant}` may not use model `{}` (inference.models)",
                request.model
            );
            self.grant.deny_once(&reason, &self.job_id);
            return Err(InferenceError::Denied(reason));
        }
        let route = Route {
            engine: engine.as_deref(),
            backend,
            model: &request.model,
        };
        let slot = match self
            .node
            .inference
            .route(route, &tenant, |engine| allowlist.allows_engine(engine))
        {
            Ok(slot) => slot,
            Err(unrouted) if unrouted.may_pass() => return Err(InferenceError::Unavailable(unrouted.to_string())),
            Err(unrouted) => {
                let reason = unrouted.to_string();
                self.grant.deny_once(&reason, &self.job_id);
                return Err(InferenceError::Denied(reason));
            }
        };
        let engine = slot.settings().name.clone();
        let mut metered = Metered::start(&self.node.inference, &tenant, &engine, &request.model);
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
    #[tracing::instrument(name = "cap.inference.complete", level = "debug", skip_all)]
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

    #[tracing::instrument(name = "cap.inference.complete-to-stream", level = "debug", skip_all)]
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
    #[tracing::instrument(name = "cap.inference.next", level = "debug", skip_all)]
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

    #[tracing::instrument(name = "cap.inference.summary", level = "debug", skip_all)]
    async fn summary(&mut self, completion: Resource<ActiveCompletion>) -> wasmtime::Result<Option<Summary>> {
        Ok(self.table.get(&completion)?.summary.clone())
    }

    async fn drop(&mut self, completion: Resource<ActiveCompletion>) -> wasmtime::Result<()> {
        self.table.delete(completion)?;
        Ok(())
    }
}
