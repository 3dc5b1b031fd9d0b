//! Citadel's engine kinds: what an `llm_inference` job's `backend` names
//! (`vllm`, `sglang`, `llamacpp`, `ollama`, or `auto` for any), as opposed
//! to an engine's own name.

use serde::{Deserialize, Serialize};

/// What Citadel's `llm_inference` jobs call an engine's kind (`backend`):
/// the server software behind it. Several speak one dialect (vLLM, SGLang
/// and llama.cpp's server are all OpenAI-compatible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// vLLM (OpenAI-compatible).
    Vllm,
    /// SGLang (OpenAI-compatible).
    Sglang,
    /// llama.cpp's server (OpenAI-compatible).
    Llamacpp,
    /// Ollama (its own API).
    Ollama,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 4] = [Backend::Vllm, Backend::Sglang, Backend::Llamacpp, Backend::Ollama];

    /// Its name in jobs and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vllm => "vllm",
            Backend::Sglang => "sglang",
            Backend::Llamacpp => "llamacpp",
            Backend::Ollama => "ollama",
        }
    }

    /// A job's `backend`: `None` for `auto` (or empty: any engine), the
    /// backend, or an error naming the ones there are.
    pub fn parse_requested(text: &str) -> Result<Option<Backend>, String> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        Backend::ALL
            .into_iter()
            .find(|backend| backend.name().eq_ignore_ascii_case(text))
            .map(Some)
            .ok_or_else(|| format!("unknown backend `{text}`: it is one of vllm, sglang, ollama, llamacpp or auto"))
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_backend_is_a_kind_or_auto() {
        assert_eq!(Backend::parse_requested("llamacpp"), Ok(Some(Backend::Llamacpp)));
        assert_eq!(Backend::parse_requested("VLLM"), Ok(Some(Backend::Vllm)));
        assert_eq!(Backend::parse_requested("auto"), Ok(None));
        assert_eq!(Backend::parse_requested(""), Ok(None));
        assert!(
            Backend::parse_requested("tgi")
                .unwrap_err()
                .contains("vllm, sglang, ollama, llamacpp or auto")
        );
    }
}
