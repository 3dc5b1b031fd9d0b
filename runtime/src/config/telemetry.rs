//! `[telemetry]`: the node's status snapshot, where it is pushed (Redis,
//! an HTTP endpoint with an on-disk spool) and the status server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Stands for the node id in `telemetry.http_endpoint`.
const NODE_ID_PLACEHOLDER: &str = "{id}";

/// Node telemetry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Status is published at least this often, s.
    pub status_interval_s: u64,
    /// A change (job started or finished, GPU appeared or vanished) publishes
    /// at once, but never more often than this, ms.
    pub min_change_interval_ms: u64,
    /// How often the GPU list is checked for GPUs appearing or vanishing
    /// between snapshots, ms (NVML only: a call of a few µs).
    pub gpu_poll_ms: u64,
    /// How often the node's services (engines, `[[services]]`) are health-checked, ms;
    /// a change of state publishes status at once.
    pub service_poll_ms: u64,
    /// Longest any probe may take, ms.
    pub probe_timeout_ms: u64,
    /// GPU temperature at which `/health` turns 503 when the device
    /// configuration asks for it (`alertOnHighTemp`), °C.
    pub high_temp_celsius: u32,
    /// Filesystems reported besides `/` (any path on them).
    pub key_paths: Vec<PathBuf>,
    /// Which GPU source to read: `auto` (NVML, else `nvidia-smi`, else the
    /// driver's files), `nvml` or `nvidia-smi`.
    pub gpu_source: citadel_collector::GpuSourceChoice,
    /// The `nvidia-smi` program, used when NVML cannot be loaded (or
    /// `gpu_source` says so).
    pub nvidia_smi: String,
    /// Entries `node:status:stream` keeps (about: `MAXLEN ~`); Citadel's
    /// own publisher keeps ~1000.
    pub status_stream_maxlen: usize,
    /// POST every status message to this URL (optional); `{id}` in it is
    /// the node id (`https://api.example/api/fabric/nodes/{id}/status`).
    pub http_endpoint: Option<String>,
    /// Bearer token for `http_endpoint`.
    pub http_token: Option<String>,
    /// Messages held in memory while the endpoint is slow or down, before
    /// they spill to the spool.
    pub http_queue: usize,
    /// Per-request timeout, ms.
    pub http_timeout_ms: u64,
    /// Where the spool lives (`status-spool.jsonl`); default
    /// `$XDG_STATE_HOME/citadel` or `~/.local/state/citadel`.
    pub spool_dir: Option<PathBuf>,
    /// The spool's size cap, bytes; the oldest messages go first.
    pub spool_max_bytes: u64,
    /// Run the status server (`/health`, `/ping`, `/status`, `/metrics`, `/events`).
    pub status_server: bool,
    /// Where it listens (loopback by default; port 0: any free port).
    pub status_addr: SocketAddr,
    /// Bearer token the status server asks for on every route but
    /// `/health` and `/ping`; required when `status_addr` is not loopback.
    pub status_token: Option<String>,
    /// A client's request headers must arrive within this, ms (slowloris).
    pub status_header_timeout_ms: u64,
    /// A light heartbeat (`citadel:v1:heartbeats`) this often between full
    /// status snapshots, ms, so `citadel monitor` notices a dead node in
    /// seconds.
    pub heartbeat_ms: u64,
    /// Write the fleet's events (`citadel:v1:events`: jobs, node, handlers,
    /// services, engines, GPUs, handler log records), with Redis.
    pub events: bool,
    /// Entries `citadel:v1:events` keeps (about: `MAXLEN ~`).
    pub events_stream_maxlen: usize,
    /// Share of a job's `info` log records sent as fleet events (`warn` and
    /// `error` always are), 0.0–1.0.
    pub event_log_sample_rate: f64,
    /// The same, per tenant (overrides `event_log_sample_rate`).
    pub event_log_sample_rate_by_tenant: BTreeMap<String, f64>,
    /// Log records sent as fleet events per job, at most.
    pub event_logs_per_job: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            status_interval_s: 30,
            min_change_interval_ms: 1_000,
            gpu_poll_ms: 5_000,
            service_poll_ms: 5_000,
            probe_timeout_ms: 2_000,
            high_temp_celsius: 85,
            key_paths: Vec::new(),
            gpu_source: citadel_collector::GpuSourceChoice::Auto,
            nvidia_smi: "nvidia-smi".into(),
            status_stream_maxlen: citadel_transports::wire::NODE_STATUS_STREAM_MAXLEN,
            http_endpoint: None,
            http_token: None,
            http_queue: 256,
            http_timeout_ms: 5_000,
            spool_dir: default_state_dir(),
            spool_max_bytes: 64 << 20,
            status_server: true,
            status_addr: SocketAddr::from(([127, 0, 0, 1], 9330)),
            status_token: None,
            status_header_timeout_ms: 10_000,
            heartbeat_ms: 5_000,
            events: true,
            events_stream_maxlen: citadel_transports::fleet::EVENTS_STREAM_MAXLEN,
            event_log_sample_rate: 0.1,
            event_log_sample_rate_by_tenant: BTreeMap::new(),
            event_logs_per_job: 20,
        }
    }
}

fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local").join("state")))?;
    Some(base.join("citadel"))
}

impl TelemetryConfig {
    /// The HTTP endpoint for node `node_id` (its template filled in).
    pub fn http_endpoint_for(&self, node_id: &str) -> Option<String> {
        self.http_endpoint
            .as_ref()
            .map(|endpoint| endpoint.replace(NODE_ID_PLACEHOLDER, node_id))
    }

    /// Share of `tenant`'s `info` log records sent as fleet events.
    pub fn event_log_sample_rate_of(&self, tenant: &str) -> f64 {
        self.event_log_sample_rate_by_tenant
            .get(tenant)
            .copied()
            .unwrap_or(self.event_log_sample_rate)
    }

    /// The spool file.
    pub fn spool_file(&self) -> Option<PathBuf> {
        self.spool_dir.as_ref().map(|dir| dir.join("status-spool.jsonl"))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String| Err(ConfigError::Invalid { key, problem });
        if !(1..=3600).contains(&self.status_interval_s) {
            return invalid(
                "telemetry.status_interval_s",
                format!("must be between 1 and 3600, got {}", self.status_interval_s),
            );
        }
        if self.min_change_interval_ms > self.status_interval_s * 1000 {
            return invalid(
                "telemetry.min_change_interval_ms",
                format!(
                    "({}) must not exceed telemetry.status_interval_s ({} s)",
                    self.min_change_interval_ms, self.status_interval_s
                ),
            );
        }
        if self.gpu_poll_ms < 100 {
            return invalid(
                "telemetry.gpu_poll_ms",
                format!("must be at least 100, got {}", self.gpu_poll_ms),
            );
        }
        if self.service_poll_ms < 100 {
            return invalid(
                "telemetry.service_poll_ms",
                format!("must be at least 100, got {}", self.service_poll_ms),
            );
        }
        if !(10..=60_000).contains(&self.probe_timeout_ms) {
            return invalid(
                "telemetry.probe_timeout_ms",
                format!("must be between 10 and 60000, got {}", self.probe_timeout_ms),
            );
        }
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            return invalid(
                "telemetry.heartbeat_ms",
                format!("must be between 100 and 60000, got {}", self.heartbeat_ms),
            );
        }
        if self.events_stream_maxlen < 100 {
            return invalid(
                "telemetry.events_stream_maxlen",
                format!("must be at least 100, got {}", self.events_stream_maxlen),
            );
        }
        let rates = std::iter::once(("*", self.event_log_sample_rate)).chain(
            self.event_log_sample_rate_by_tenant
                .iter()
                .map(|(tenant, rate)| (tenant.as_str(), *rate)),
        );
        for (tenant, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                let key = if tenant == "*" {
                    "telemetry.event_log_sample_rate"
                } else {
                    "telemetry.event_log_sample_rate_by_tenant"
                };
                return invalid(
                    key,
                    format!("must be between 0.0 and 1.0, got {rate} (tenant {tenant})"),
                );
            }
        }
        if !(100..=600_000).contains(&self.status_header_timeout_ms) {
            return invalid(
                "telemetry.status_header_timeout_ms",
                format!("must be between 100 and 600000, got {}", self.status_header_timeout_ms),
            );
        }
        match &self.status_token {
            Some(token) if token.len() < 16 => {
                return invalid(
                    "telemetry.status_token",
                    format!("must be at least 16 characters, got {}", token.len()),
                );
            }
            None if self.status_server && !self.status_addr.ip().is_loopback() => {
                return invalid(
                    "telemetry.status_token",
                    format!(
                        "is required when the status server listens beyond loopback (telemetry.status_addr = {}): \
                         its /status, /metrics and /events name tenants' job types, services and handlers; \
                         set a token (CITADEL_TELEMETRY__STATUS_TOKEN) or listen on 127.0.0.1",
                        self.status_addr
                    ),
                );
            }
            _ => {}
        }
        if self.nvidia_smi.trim().is_empty() {
            return invalid("telemetry.nvidia_smi", "must name a program".into());
        }
        if let Some(endpoint) = &self.http_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return invalid(
                    "telemetry.http_endpoint",
                    format!("{endpoint:?} must be an http:// or https:// URL"),
                );
            }
            let without_id = endpoint.replace(NODE_ID_PLACEHOLDER, "");
            if without_id.contains('{') || without_id.contains('}') {
                return invalid(
                    "telemetry.http_endpoint",
                    format!("{endpoint:?}: the only placeholder is {NODE_ID_PLACEHOLDER} (the node id)"),
                );
            }
            if self.spool_dir.is_none() {
                return invalid(
                    "telemetry.spool_dir",
                    "must be set when telemetry.http_endpoint is (no $HOME to default to)".into(),
                );
            }
        }
        if !(1..=100_000_000).contains(&self.status_stream_maxlen) {
            return invalid(
                "telemetry.status_stream_maxlen",
                format!("must be between 1 and 100000000, got {}", self.status_stream_maxlen),
            );
        }
        if self.http_queue == 0 {
            return invalid("telemetry.http_queue", "must be at least 1".into());
        }
        if self.http_timeout_ms == 0 {
            return invalid("telemetry.http_timeout_ms", "must be at least 1".into());
        }
        if self.spool_max_bytes < 4096 {
            return invalid(
                "telemetry.spool_max_bytes",
                format!("must be at least 4096, got {}", self.spool_max_bytes),
            );
        }
        Ok(())
    }
}
