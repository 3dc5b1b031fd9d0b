//! Citadel's job types that a node serves with its built-in handler
//! components (found in `guests_dir`) whenever `[handlers]` does not name
//! them, so a Citadel producer needs no handler mapping: `extraction` (and
//! citadel's older name `extract`), `llm_inference` and `model_download`.
//! (`APPLY_DEVICE_CONFIG` and `shell_command` are native handlers: see
//! `node::device` and `shell`.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Config;

/// Citadel's document extraction job type.
pub const EXTRACTION: &str = "extraction";

/// citadel's earlier name for `extraction`, still served.
pub const EXTRACT: &str = "extract";

/// The job type Citadel sends to inference handlers.
pub const LLM_INFERENCE: &str = "llm_inference";

/// The job type that stores a model file in the node's models directory.
pub const MODEL_DOWNLOAD: &str = "model_download";

/// Job type → the built-in component serving it (in `guests_dir`).
pub const BUILT_IN: [(&str, &str); 4] = [
    (EXTRACTION, "extract.wasm"),
    (EXTRACT, "extract.wasm"),
    (LLM_INFERENCE, "llm-chat.wasm"),
    (MODEL_DOWNLOAD, "model-download.wasm"),
];

impl Config {
    /// Where the built-in handler components are: `guests_dir`, else
    /// `guests/` beside the binary's directory (`target/guests` in a checkout).
    pub fn built_in_dir(&self) -> Option<PathBuf> {
        self.guests_dir.clone().or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("guests"))
        })
    }

    /// The handlers to load: `[handlers]`, plus the built-in component of
    /// each of Citadel's job types `[handlers]` does not name (when it is
    /// found; a missing one is logged, and that type is not served).
    pub fn handlers_with_defaults(&self) -> BTreeMap<String, PathBuf> {
        let mut handlers = self.handlers.clone();
        let dir = self.built_in_dir();
        for (job_type, file) in BUILT_IN {
            if handlers.contains_key(job_type) {
                continue;
            }
            match dir.as_ref().map(|dir| dir.join(file)) {
                Some(component) if component.is_file() => {
                    handlers.insert(job_type.into(), component);
                }
                component => tracing::warn!(
                    job_type,
                    looked_at = ?component,
                    "no built-in handler for this job type: set guests_dir (or [handlers] {job_type})"
                ),
            }
        }
        if handlers.contains_key(LLM_INFERENCE) && self.engines.is_empty() {
            tracing::info!(
                "no [[engines]] are configured: llm_inference jobs are refused (`this node has no inference engines`)"
            );
        }
        handlers
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn built_in_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (_, file) in BUILT_IN {
            std::fs::write(dir.path().join(file), b"").unwrap();
        }
        dir
    }

    #[test]
    fn citadel_job_types_are_served_without_a_mapping() {
        let dir = built_in_dir();
        let mut config = Config {
            guests_dir: Some(dir.path().to_path_buf()),
            ..Config::default()
        };
        let handlers = config.handlers_with_defaults();
        let file = |name: &str| dir.path().join(name);
        assert_eq!(handlers[EXTRACTION], file("extract.wasm"));
        assert_eq!(handlers[EXTRACT], file("extract.wasm"), "the older name stays");
        assert_eq!(handlers[LLM_INFERENCE], file("llm-chat.wasm"));
        assert_eq!(handlers[MODEL_DOWNLOAD], file("model-download.wasm"));
        config.handlers.insert(LLM_INFERENCE.into(), "mine.wasm".into());
        assert_eq!(
            config.handlers_with_defaults()[LLM_INFERENCE],
            Path::new("mine.wasm"),
            "a named handler wins"
        );
    }

    #[test]
    fn a_missing_built_in_component_is_not_served() {
        let dir = built_in_dir();
        std::fs::remove_file(dir.path().join("model-download.wasm")).unwrap();
        let config = Config {
            guests_dir: Some(dir.path().to_path_buf()),
            ..Config::default()
        };
        let handlers = config.handlers_with_defaults();
        assert!(!handlers.contains_key(MODEL_DOWNLOAD));
        assert!(handlers.contains_key(EXTRACTION));
    }
}
