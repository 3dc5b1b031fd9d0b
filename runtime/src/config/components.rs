//! `[components]`: handlers published to the fleet (`citadel component
//! publish`) and whose signatures this node accepts.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::components::signing::TrustedKeys;

/// Published handlers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentsConfig {
    /// Follow the handlers published on Redis (`citadel:v1:handlers`) when
    /// `redis_url` is set: they replace the configured handler of their job
    /// type, and change while the node runs.
    pub fleet: bool,
    /// Ed25519 public keys (hex, as `citadel component keygen` writes them)
    /// whose signatures this node accepts. When any is set, unsigned
    /// components and other signers are refused.
    pub trusted_keys: Vec<String>,
    /// A watched directory of components: `<job type>.wasm` serves that job
    /// type, changes apply while the node runs (single nodes, no Redis
    /// needed).
    pub dir: Option<std::path::PathBuf>,
    /// How often the directory is looked at, ms.
    pub dir_poll_ms: u64,
}

impl Default for ComponentsConfig {
    fn default() -> Self {
        ComponentsConfig {
            fleet: true,
            trusted_keys: Vec::new(),
            dir: None,
            dir_poll_ms: 1000,
        }
    }
}

impl ComponentsConfig {
    /// The trusted keys, parsed (validation has accepted them).
    pub fn trusted(&self) -> TrustedKeys {
        TrustedKeys::parse(&self.trusted_keys).unwrap_or_default()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(50..=3_600_000).contains(&self.dir_poll_ms) {
            return Err(ConfigError::Invalid {
                key: "components.dir_poll_ms",
                problem: format!("must be between 50 and 3600000, got {}", self.dir_poll_ms),
            });
        }
        TrustedKeys::parse(&self.trusted_keys)
            .map(drop)
            .map_err(|problem| ConfigError::Invalid {
                key: "components.trusted_keys",
                problem,
            })
    }
}
