//! citadel's wasmtime host: runs untrusted, multi-tenant job handlers
//! (WebAssembly components written against `wit/`) under hard limits, with
//! capability-gated host calls.
//!
//! Layout:
//! - [`config`]: the node's configuration (file, `CITADEL_*` env, flags);
//! - [`policy`], [`capability`], [`grant`]: which tenant may use what;
//!   [`egress`]: where its handlers may connect (capability `http`);
//! - [`engine`]: the one wasmtime `Engine` and its epoch ticker;
//! - [`components`]: components by digest, validated, compiled once, cached;
//! - [`executor`]: one job = one `Store`, limits, deadline, classification;
//! - [`capabilities`]: host sides of the WIT interfaces (`log`, `stream`);
//! - [`job`], [`joblog`], [`output`], [`limits`], [`capture`], [`state`]:
//!   what a job is, logs, output accounting, limits, stdio capture, store data;
//! - [`inference`]: the node's inference engines (routing, concurrency,
//!   health);
//! - [`worker`]: the Redis Streams worker (`citadel work`);
//! - [`agent`]: the Nexus polling agent (`citadel agent`, on-prem);
//! - [`services`]: native services in cgroups (`[[services]]`);
//! - [`shell`]: `shell_command`, commands an operator allows a tenant, each
//!   as an unprivileged user in a cgroup of its own;
//! - [`node`]: telemetry beside the worker: status publishing, metrics,
//!   the status server;
//! - [`bindings`]: the one `bindgen!`;
//! - [`cli`]: the `citadel` command line (`main.rs` is its table of contents).

pub mod agent;
pub mod bindings;
pub mod capabilities;
pub mod capability;
pub mod capture;
pub mod cli;
pub mod components;
pub mod config;
pub mod dispatch;
pub mod egress;
pub mod engine;
pub mod executor;
pub mod fleet;
pub mod grant;
pub mod handler_dir;
pub mod inference;
pub mod job;
pub mod joblog;
pub mod limits;
pub mod models;
pub mod node;
pub mod output;
pub mod policy;
pub mod services;
pub mod shell;
pub mod state;
pub mod worker;

pub use capability::{Capabilities, Capability};
pub use components::{ComponentError, ComponentStore, Digest, LoadedComponent};
pub use config::{Config, SandboxConfig};
pub use engine::{Allocation, SandboxEngine};
pub use executor::Executor;
pub use job::{Chunk, JobError, JobReport, JobSpec};
pub use policy::Policy;
