//! `[agent]`: the on-prem mode, `citadel agent`, which takes jobs from
//! Citadel's Nexus HTTP API instead of Redis.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The Nexus polling agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The Nexus API (`https://nexus.example`).
    pub nexus_url: Option<String>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// How long to wait after `204 No Content` before asking again, ms
    /// (after a job it asks again at once).
    pub poll_interval_ms: u64,
    /// Longest one call to the API may take, ms.
    pub request_timeout_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            nexus_url: None,
            token: None,
            poll_interval_ms: 5_000,
            request_timeout_ms: 10_000,
        }
    }
}

impl AgentConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String| Err(ConfigError::Invalid { key, problem });
        if let Some(url) = &self.nexus_url {
            let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            if host.is_none_or(|host| host.trim_matches('/').is_empty()) {
                return invalid("agent.nexus_url", format!("{url:?} must be an http:// or https:// URL"));
            }
        }
        if !(10..=3_600_000).contains(&self.poll_interval_ms) {
            return invalid(
                "agent.poll_interval_ms",
                format!("must be between 10 and 3600000, got {}", self.poll_interval_ms),
            );
        }
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            return invalid(
                "agent.request_timeout_ms",
                format!("must be between 100 and 600000, got {}", self.request_timeout_ms),
            );
        }
        Ok(())
    }
}
