//! citadel's node: runs untrusted, multi-tenant job handlers (WebAssembly
//! components written against `wit/`) under hard limits, with
//! capability-gated host calls, for jobs from Redis Streams or Nexus.
//!
//! One job's path, by folder: a producer's `XADD` → [`sources`] (`redis`
//! reads it, `nexus` polls it) → [`dispatch`] (handler, tenant slot,
//! outcome) → [`handlers`] (which component or native code runs the type)
//! → [`sandbox`] (one `Store`, limits, deadline) → [`capabilities`] (the
//! host calls the tenant is granted) → back to the source, which settles it.
//!
//! Layout:
//! - [`job`]: what a job is, what it produces, how it fails (the shared
//!   vocabulary);
//! - [`sources`]: where jobs come from — [`sources::redis`] (`citadel
//!   work`), [`sources::nexus`] (`citadel agent`, on-prem);
//! - [`dispatch`]: one job's run, the same for every source; tenant slots,
//!   observers, the typed [`dispatch::JobOutcome`];
//! - [`handlers`]: job type → handler, the fleet's published handlers, the
//!   watched directory;
//! - [`sandbox`]: the wasmtime engine, the executor, store state, limits,
//!   output, log capture;
//! - [`capabilities`]: the host side of each WIT interface, with its
//!   policy and its node-side resource (inference engines, models store,
//!   Docker access, HTTP egress), the grant and the linker;
//! - [`components`]: components by digest, validated, compiled once,
//!   cached, signed;
//! - [`policy`]: tenants and what each may use;
//! - [`config`]: the node's configuration (file, `CITADEL_*` env, flags);
//! - [`shell`]: `shell_command`, commands an operator allows a tenant, each
//!   as an unprivileged user in a cgroup of its own;
//! - [`services`]: native services in cgroups (`[[services]]`);
//! - [`node`]: telemetry beside the sources: status publishing, metrics,
//!   the status server, device configuration;
//! - [`bindings`]: the one `bindgen!`;
//! - [`cli`]: the `citadel` command line (`main.rs` is its table of contents).

pub mod bindings;
pub mod capabilities;
pub mod cli;
pub mod components;
pub mod config;
pub mod dispatch;
pub mod handlers;
pub mod job;
pub mod node;
pub mod policy;
pub mod sandbox;
pub mod services;
pub mod shell;
pub mod sources;

pub use capabilities::{Capabilities, Capability};
pub use components::{ComponentError, ComponentStore, Digest, LoadedComponent};
pub use config::{Config, SandboxConfig};
pub use job::{Chunk, JobError, JobReport, JobSpec};
pub use policy::Policy;
pub use sandbox::{Allocation, Executor, SandboxEngine};
