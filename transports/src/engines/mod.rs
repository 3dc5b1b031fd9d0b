//! Clients of the node's local inference engines: OpenAI-compatible servers
//! (vLLM, llama.cpp's server: `/v1/chat/completions`, `/v1/completions`,
//! Server-Sent Events) in `openai.rs`, and Ollama (`/api/chat`,
//! `/api/generate`, newline-delimited JSON) in `ollama.rs`.
//!
//! A request becomes a [`TokenStream`] pulled token by token. Dialect
//! differences are absorbed here: a first chunk with a role and no text, a
//! finish reason and the usage in separate frames (or usage only when asked
//! for with `stream_options`), errors as JSON or as text, in the status or
//! in the stream. Whatever an engine sends, the stream is bounded: a
//! malformed frame, a stream cut short, too many bytes or too long without
//! a token each end it with a clear [`EngineError`]. Dropping the stream
//! drops the HTTP request, which stops generation on servers that notice
//! (llama.cpp, vLLM, Ollama all do).

mod backend;
mod ollama;
mod openai;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

pub use backend::Backend;

/// The wire dialect of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// OpenAI-compatible: vLLM, llama.cpp's server.
    #[serde(rename = "openai")]
    OpenAi,
    /// Ollama's native API.
    Ollama,
}

impl EngineKind {
    /// Its name in configuration.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::OpenAi => "openai",
            EngineKind::Ollama => "ollama",
        }
    }

    /// The backends an engine of this kind can be (see [`Backend`]).
    pub fn backends(self) -> &'static [Backend] {
        match self {
            EngineKind::OpenAi => &[Backend::Vllm, Backend::Sglang, Backend::Llamacpp],
            EngineKind::Ollama => &[Backend::Ollama],
        }
    }
}

/// How to reach one engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// What the node calls it.
    pub name: String,
    /// Its dialect.
    pub kind: EngineKind,
    /// Its base URL (`http://127.0.0.1:8000`).
    pub base_url: String,
    /// Longest wait for the response to start, and for each token after it.
    pub token_timeout: Duration,
    /// Most bytes an engine may send without a token before the stream is
    /// called malformed.
    pub max_bytes_without_token: usize,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A conversation (chat endpoints).
    Messages(Vec<Message>),
    /// A raw prompt (completion endpoints).
    Prompt(String),
}

/// A generation request, as every dialect understands it.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The model.
    pub model: String,
    /// Messages or prompt.
    pub input: Input,
    /// Upper bound on generated tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Sequences that end generation.
    pub stop: Vec<String>,
}

/// Token counts reported by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Finish {
    /// `stop`, `length`, … (`unknown` when the engine did not say).
    pub reason: String,
    /// Token counts, when the engine reported them.
    pub usage: Option<Usage>,
}

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot be reached or is not ready (connection refused,
    /// 5xx, still loading).
    #[error("engine {engine} unavailable: {reason}")]
    Unavailable {
        /// The engine.
        engine: String,
        /// Why.
        reason: String,
    },
    /// The engine refused the request (4xx).
    #[error("engine {engine} refused the request ({status}): {message}")]
    Rejected {
        /// The engine.
        engine: String,
        /// HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// The engine sent something unusable.
    #[error("engine {engine} sent a malformed stream: {reason}")]
    Malformed {
        /// The engine.
        engine: String,
        /// What was wrong.
        reason: String,
    },
    /// The engine reported an error in the middle of the stream.
    #[error("engine {engine} failed mid-generation: {message}")]
    Failed {
        /// The engine.
        engine: String,
        /// The engine's message.
        message: String,
    },
    /// The stream ended or broke before the generation finished.
    #[error("engine {engine} stopped mid-generation: {reason}")]
    Interrupted {
        /// The engine.
        engine: String,
        /// What happened.
        reason: String,
    },
    /// No token arrived in time.
    #[error("engine {engine} sent no token for {} ms", waited.as_millis())]
    Stalled {
        /// The engine.
        engine: String,
        /// How long it was waited for.
        waited: Duration,
    },
}

/// One parsed frame of a stream, in either dialect.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    /// Generated text.
    Token(String),
    /// Why generation stopped.
    FinishReason(String),
    /// Token counts.
    Usage(Usage),
    /// The end of the stream (`[DONE]`, Ollama's `done: true` frame).
    Done,
    /// An error reported in the stream.
    Error(String),
}

type Frames = Pin<Box<dyn Stream<Item = Result<Vec<Frame>, String>> + Send>>;

/// A client of one engine.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    client: reqwest::Client,
}

impl Engine {
    /// A client for `config` (no connection is made yet).
    pub fn new(config: EngineConfig) -> Result<Engine, String> {
        // Only the first response byte is bounded by the client; tokens are
        // bounded by `token_timeout` in `TokenStream::next`.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("citadel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(Engine { config, client })
    }

    /// Its configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    /// Whether the engine answers its health route (`/health` for
    /// OpenAI-compatible servers, `/api/version` for Ollama).
    pub async fn health(&self) -> Result<(), EngineError> {
        let path = match self.config.kind {
            EngineKind::OpenAi => "/health",
            EngineKind::Ollama => "/api/version",
        };
        let response = tokio::time::timeout(self.config.token_timeout, self.client.get(self.url(path)).send())
            .await
            .map_err(|_| {
                self.unavailable(format!(
                    "no answer from {path} in {} ms",
                    self.config.token_timeout.as_millis()
                ))
            })?
            .map_err(|err| self.unavailable(describe(&err)))?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            status => {
                let message = error_message(&read_capped(response).await);
                Err(self.unavailable(format!("{path} answered {status}: {message}")))
            }
        }
    }

    /// Start a generation.
    pub async fn generate(&self, request: &GenerationRequest) -> Result<TokenStream, EngineError> {
        let (path, body) = match self.config.kind {
            EngineKind::OpenAi => openai::request(request),
            EngineKind::Ollama => ollama::request(request),
        };
        let started = Instant::now();
        let url = self.url(path);
        let send = async {
            match self.client.post(&url).json(&body).send().await {
                // The engine closed the kept-alive connection as the request
                // went out: nothing was answered, so the request goes again
                // on a fresh connection.
                Err(err) if closed_before_answering(&err) => {
                    tracing::debug!(engine = %self.config.name, error = %describe(&err), "stale connection; sending again");
                    self.client.post(&url).json(&body).send().await
                }
                sent => sent,
            }
        };
        let response = tokio::time::timeout(self.config.token_timeout, send)
            .await
            .map_err(|_| EngineError::Stalled {
                engine: self.config.name.clone(),
                waited: self.config.token_timeout,
            })?
            .map_err(|err| self.unavailable(describe(&err)))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let message = error_message(&read_capped(response).await);
            return Err(if status == 408 || status == 429 || status >= 500 {
                self.unavailable(format!("{path} answered {status}: {message}"))
            } else {
                EngineError::Rejected {
                    engine: self.config.name.clone(),
                    status,
                    message,
                }
            });
        }
        // Bytes since the last token, counted before any parsing, so that
        // an engine sending without end (or one endless line) is stopped
        // without buffering it.
        let unread = Arc::new(AtomicUsize::new(0));
        let max = self.config.max_bytes_without_token;
        let bytes = {
            let unread = Arc::clone(&unread);
            response
                .bytes_stream()
                .map(move |chunk: Result<Bytes, reqwest::Error>| match chunk {
                    Ok(chunk) if unread.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len() > max => {
                        Err(ByteFault::Flood(max))
                    }
                    Ok(chunk) => Ok(chunk),
                    Err(err) => Err(ByteFault::Transport(describe(&err))),
                })
        };
        let frames: Frames = match self.config.kind {
            EngineKind::OpenAi => Box::pin(openai::frames(bytes)),
            EngineKind::Ollama => Box::pin(ollama::frames(bytes)),
        };
        Ok(TokenStream {
            engine: self.config.name.clone(),
            frames,
            pending: Vec::new(),
            finish: Finish::default(),
            finished: false,
            done: false,
            token_timeout: self.config.token_timeout,
            bytes_since_token: unread,
            started,
            first_token: None,
        })
    }

    fn unavailable(&self, reason: String) -> EngineError {
        EngineError::Unavailable {
            engine: self.config.name.clone(),
            reason,
        }
    }
}

/// A transport error in words (reqwest's own omit the cause).
/// Whether the connection closed before any of the response arrived: the
/// race of reusing a kept-alive connection the server has just closed.
fn closed_before_answering(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return hyper.is_incomplete_message();
        }
        source = cause.source();
    }
    false
}

fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// At most this much of an error body is read.
const ERROR_BODY_CAP: usize = 4096;

async fn read_capped(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_CAP {
            body.truncate(ERROR_BODY_CAP);
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The message of an error body: `{"error":{"message":…}}` (OpenAI, vLLM,
/// llama.cpp), `{"error":"…"}` (Ollama), `{"message":…}`, or the text itself.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|value| {
        value["error"]["message"]
            .as_str()
            .or_else(|| value["error"].as_str())
            .or_else(|| value["message"].as_str())
            .or_else(|| value["detail"].as_str())
            .map(str::to_string)
    });
    let text = message.unwrap_or_else(|| body.trim().to_string());
    if text.is_empty() {
        "(empty body)".into()
    } else {
        clip(&text, 300)
    }
}

/// A token count from an engine's JSON (0 when absent, saturating).
fn count(value: &serde_json::Value) -> u32 {
    value
        .as_u64()
        .map_or(0, |count| u32::try_from(count).unwrap_or(u32::MAX))
}

/// `text` cut to `max` characters, marked when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A generation in progress.
pub struct TokenStream {
    engine: String,
    frames: Frames,
    pending: Vec<Frame>,
    finish: Finish,
    finished: bool,
    done: bool,
    token_timeout: Duration,
    bytes_since_token: Arc<AtomicUsize>,
    started: Instant,
    first_token: Option<Duration>,
}

impl TokenStream {
    /// The next piece of generated text; `None` once generation finished.
    pub async fn next(&mut self) -> Result<Option<String>, EngineError> {
        let deadline = tokio::time::Instant::now() + self.token_timeout;
        loop {
            if self.done {
                return Ok(None);
            }
            if self.pending.is_empty() {
                let frames = match tokio::time::timeout_at(deadline, self.frames.next()).await {
                    Err(_) => {
                        return Err(EngineError::Stalled {
                            engine: self.engine.clone(),
                            waited: self.token_timeout,
                        });
                    }
                    Ok(None) if self.finished => {
                        // Ended after its finish reason, without a `[DONE]`: accepted.
                        self.done = true;
                        return Ok(None);
                    }
                    Ok(None) => return Err(self.interrupted("the stream ended before the generation finished")),
                    Ok(Some(Err(err))) => return Err(self.malformed_or_cut(err)),
                    Ok(Some(Ok(frames))) => frames,
                };
                self.pending = frames;
                self.pending.reverse();
                // A stream that is always ready (frames without tokens, as
                // fast as they come) never lets the timeout fire by itself.
                if tokio::time::Instant::now() >= deadline
                    && !self.pending.iter().any(|frame| matches!(frame, Frame::Token(_)))
                {
                    return Err(EngineError::Stalled {
                        engine: self.engine.clone(),
                        waited: self.token_timeout,
                    });
                }
                continue;
            }
            match self.pending.pop().expect("pending is not empty") {
                Frame::Token(text) => {
                    self.bytes_since_token.store(0, Ordering::Relaxed);
                    self.first_token.get_or_insert_with(|| self.started.elapsed());
                    return Ok(Some(text));
                }
                Frame::FinishReason(reason) => {
                    self.finish.reason = reason;
                    self.finished = true;
                }
                Frame::Usage(usage) => self.finish.usage = Some(usage),
                Frame::Done => self.done = true,
                Frame::Error(message) => {
                    return Err(EngineError::Failed {
                        engine: self.engine.clone(),
                        message: clip(&message, 300),
                    });
                }
            }
        }
    }

    /// How it ended (once [`TokenStream::next`] has returned `None`).
    pub fn finish(&self) -> Option<Finish> {
        self.done.then(|| {
            let mut finish = self.finish.clone();
            if finish.reason.is_empty() {
                finish.reason = "unknown".into();
            }
            finish
        })
    }

    /// Time from the request to the first token, once there was one.
    pub fn time_to_first_token(&self) -> Option<Duration> {
        self.first_token
    }

    fn interrupted(&self, reason: &str) -> EngineError {
        EngineError::Interrupted {
            engine: self.engine.clone(),
            reason: reason.into(),
        }
    }

    fn malformed_or_cut(&self, err: String) -> EngineError {
        match err.strip_prefix(CUT) {
            Some(reason) => self.interrupted(reason),
            None => EngineError::Malformed {
                engine: self.engine.clone(),
                reason: err,
            },
        }
    }
}

/// Prefix of frame errors that are a broken connection, not bad content.
const CUT: &str = "cut: ";

/// What can go wrong below the parser.
#[derive(Debug, thiserror::Error)]
enum ByteFault {
    /// The connection broke.
    #[error("{0}")]
    Transport(String),
    /// This many bytes came without a token.
    #[error("more than {0} bytes without a token")]
    Flood(usize),
}

/// Frames of `body` cut into pieces at `cuts` (test helper for the
/// parsers' properties: where a body is split must not change its frames).
#[cfg(test)]
fn frames_of_pieces<F, S>(frames: F, body: &[u8], cuts: &[usize]) -> Vec<Result<Vec<Frame>, String>>
where
    F: FnOnce(futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, ByteFault>>>) -> S,
    S: Stream<Item = Result<Vec<Frame>, String>>,
{
    use futures_util::StreamExt;
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (body.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain([body.len()]) {
        if point > start {
            pieces.push(Ok(Bytes::copy_from_slice(&body[start..point])));
            start = point;
        }
    }
    let stream = frames(futures_util::stream::iter(pieces));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(stream.collect())
}

/// The frame error for a fault below the parser.
fn fault_error(fault: ByteFault) -> String {
    match fault {
        ByteFault::Transport(err) => format!("{CUT}the connection broke: {err}"),
        flood @ ByteFault::Flood(_) => flood.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_in_every_dialect() {
        assert_eq!(
            error_message(r#"{"error":{"code":400,"message":"Expected 'messages' to be an array"}}"#),
            "Expected 'messages' to be an array"
        );
        assert_eq!(
            error_message(r#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(error_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_message("Internal Server Error\n"), "Internal Server Error");
        assert_eq!(error_message(""), "(empty body)");
        assert_eq!(error_message(&"x".repeat(400)).chars().count(), 301);
    }
}
