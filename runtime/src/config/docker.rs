//! `[docker]`: the node's Docker Engine API (Docker, or podman's
//! Docker-compatible service), whose containers are reported in status
//! `services[]` and reachable by jobs through the `docker` capability.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Where Docker and podman (as root) serve the API.
const DEFAULT_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/podman/podman.sock"];

/// The Docker Engine API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// Its unix socket (`/var/run/docker.sock`, `unix:///run/podman/podman.sock`).
    /// Default: the first of those two that exists when the node starts;
    /// with neither, the node has no Docker API (and says so in status).
    pub socket: Option<String>,
    /// Longest API call (stops and restarts get their grace period on top), ms.
    pub timeout_ms: u64,
    /// Containers reported in status `services[]`, by name glob (`*`: all).
    pub report: Vec<String>,
    /// Grace period of `stop` and `restart` before the engine kills, s.
    pub stop_grace_s: u64,
    /// Most bytes of logs a job may read in one `logs` call.
    pub max_log_bytes: usize,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: None,
            timeout_ms: 5_000,
            report: vec!["*".into()],
            stop_grace_s: 10,
            max_log_bytes: 256 << 10,
        }
    }
}

impl DockerConfig {
    /// The socket to use: `socket`, else the first default that exists.
    pub fn resolved_socket(&self) -> Option<String> {
        self.socket.clone().or_else(|| {
            DEFAULT_SOCKETS
                .iter()
                .find(|path| std::path::Path::new(path).exists())
                .map(|path| path.to_string())
        })
    }

    /// The call timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String| Err(ConfigError::Invalid { key, problem });
        if let Some(socket) = &self.socket
            && !socket.strip_prefix("unix://").unwrap_or(socket).starts_with('/')
        {
            return invalid(
                "docker.socket",
                format!("{socket:?} must be the path of a unix socket (or unix:///path)"),
            );
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return invalid(
                "docker.timeout_ms",
                format!("must be between 100 and 600000, got {}", self.timeout_ms),
            );
        }
        if let Some(pattern) = self.report.iter().find(|pattern| glob::Pattern::new(pattern).is_err()) {
            return invalid("docker.report", format!("{pattern:?} is not a glob"));
        }
        if !(1..=16 << 20).contains(&self.max_log_bytes) {
            return invalid("docker.max_log_bytes", "must be between 1 and 16777216".into());
        }
        Ok(())
    }
}
