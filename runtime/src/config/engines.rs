//! `[[engines]]`: the local inference engines this node may connect to. The
//! host connects to these and nothing else; a guest names an engine (or
//! just a model) and never an address.

use std::time::Duration;

use citadel_transports::engines::{Backend, EngineConfig, EngineKind};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// One engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// What jobs and status call it (`^[a-zA-Z0-9._-]{1,64}$`).
    pub name: String,
    /// `openai` (vLLM, SGLang, llama.cpp's server) or `ollama`.
    pub kind: EngineKind,
    /// Which of Citadel's backends it is (`vllm`, `sglang` or `llamacpp`
    /// for `openai`; `ollama`): jobs naming a `backend` go to engines that
    /// are it. Unset: every backend its kind can be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Where it listens (`http://127.0.0.1:8000`).
    pub base_url: String,
    /// The models it serves (a request naming only a model goes to the
    /// first engine listing it).
    pub models: Vec<String>,
    /// Requests sent to it at once; more wait their turn.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Longest wait for the first token, and between tokens, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_max_concurrency() -> u32 {
    4
}

fn default_timeout_ms() -> u64 {
    60_000
}

/// Most bytes an engine may stream without a token.
const MAX_BYTES_WITHOUT_TOKEN: usize = 1 << 20;

impl EngineSettings {
    /// The backends it answers for: its `backend`, else every one its kind can be.
    pub fn backends(&self) -> &[Backend] {
        match &self.backend {
            Some(backend) => std::slice::from_ref(backend),
            None => self.kind.backends(),
        }
    }

    /// The client configuration.
    pub fn client_config(&self) -> EngineConfig {
        EngineConfig {
            name: self.name.clone(),
            kind: self.kind,
            base_url: self.base_url.clone(),
            token_timeout: Duration::from_millis(self.timeout_ms),
            max_bytes_without_token: MAX_BYTES_WITHOUT_TOKEN,
        }
    }
}

/// Check every engine and that names are unique.
pub(super) fn validate(engines: &[EngineSettings]) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, problem: String| Err(ConfigError::Invalid { key, problem });
    for (index, engine) in engines.iter().enumerate() {
        let which = format!("engines[{index}] ({:?})", engine.name);
        if !super::valid_node_id(&engine.name) {
            return invalid("engines.name", format!("{which}: must match ^[a-zA-Z0-9._-]{{1,64}}$"));
        }
        if engines[..index].iter().any(|other| other.name == engine.name) {
            return invalid("engines.name", format!("{which}: another engine has this name"));
        }
        let url = engine.base_url.as_str();
        let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if host.is_none_or(|host| host.trim_matches('/').is_empty()) {
            return invalid(
                "engines.base_url",
                format!("{which}: {url:?} must be an http:// or https:// URL"),
            );
        }
        if let Some(backend) = engine.backend
            && !engine.kind.backends().contains(&backend)
        {
            let can: Vec<&str> = engine.kind.backends().iter().map(|backend| backend.name()).collect();
            return invalid(
                "engines.backend",
                format!(
                    "{which}: an engine of kind {} cannot be {backend}: it is one of {}",
                    engine.kind.name(),
                    can.join(", ")
                ),
            );
        }
        if engine.models.is_empty() || engine.models.iter().any(|model| model.trim().is_empty()) {
            return invalid("engines.models", format!("{which}: must list the models it serves"));
        }
        if !(1..=1024).contains(&engine.max_concurrency) {
            return invalid(
                "engines.max_concurrency",
                format!("{which}: must be between 1 and 1024, got {}", engine.max_concurrency),
            );
        }
        if !(100..=3_600_000).contains(&engine.timeout_ms) {
            return invalid(
                "engines.timeout_ms",
                format!("{which}: must be between 100 and 3600000, got {}", engine.timeout_ms),
            );
        }
    }
    Ok(())
}
