//! citadel's transports: how jobs reach a node and how results, tokens and
//! status leave it. Knows nothing of wasmtime; the runtime drives it.
//!
//! Layout:
//! - [`wire`]: Citadel's Redis wire format (keys, job entries, event
//!   envelope, dead letters, status hash), pure and golden-tested;
//! - [`fleet`]: the fleet's wire format (events, heartbeats) read by
//!   `citadel monitor`, pure and golden-tested;
//! - [`redis`]: Streams consumer groups, events, liveness, cancel flags;
//! - [`status`]: the node's status pushed to Redis and HTTP (with a spool),
//!   and served by the status server (`/health`, `/metrics`, `/events`…);
//! - [`http`]: the outbound HTTP client;
//! - [`http_guard`]: caps and deadlines every HTTP server here applies to
//!   its clients (connections per client, header timeout and size);
//! - [`engines`]: clients of local inference engines (OpenAI-compatible,
//!   Ollama), streaming tokens;
//! - [`docker`]: the Docker Engine API client (Docker or podman, unix
//!   socket) for managed service containers;
//! - [`nexus`]: Citadel's Nexus HTTP API (jobs polled, outcomes reported);
//! - [`device_auth`]: device authorization with the control plane (RFC
//!   8628), for `citadel init`;
//! - [`backoff`]: the one jittered retry policy every transport uses.

pub mod backoff;
pub mod device_auth;
pub mod docker;
pub mod engines;
pub mod fleet;
pub mod http;
pub mod http_guard;
pub mod nexus;
pub mod redis;
pub mod status;
pub mod wire;
