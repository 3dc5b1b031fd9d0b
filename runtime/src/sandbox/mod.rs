//! The sandbox: one job = one wasmtime `Store`, under hard limits.
//!
//! - [`engine`]: the one wasmtime `Engine`, its epoch ticker and pooling;
//! - [`executor`]: admits a component for the job's tenant, instantiates
//!   it with the job's limits, calls `handle`, classifies how it ended;
//! - [`state`]: the store's data, everything a job's host calls can touch;
//! - [`limits`]: the job's limits and the store limiter enforcing them;
//! - [`output`]: the output budget and the chunk stream's pacing;
//! - [`joblog`], [`capture`]: the job's log and its captured stdout/stderr;
//! - [`offload`]: a guest that proves CPU-bound moves off the I/O threads.

pub mod capture;
pub mod engine;
pub mod executor;
pub mod joblog;
pub mod limits;
pub mod offload;
pub mod output;
pub mod state;

pub use engine::{Allocation, SandboxEngine};
pub use executor::Executor;
