//! The sandbox: a job runs in a wasmtime `Store` of its own at a time,
//! under hard limits.
//!
//! - [`engine`]: the one wasmtime `Engine`, its epoch ticker and pooling;
//! - [`executor`]: admits a component for the job's tenant, instantiates
//!   it with the job's limits, calls `handle`, classifies how it ended;
//! - [`state`]: the store's data, everything a job's host calls can touch;
//! - [`limits`]: the job's limits and the store limiter enforcing them;
//! - [`output`]: the output budget and the chunk stream's pacing;
//! - [`joblog`], [`capture`]: the job's log and its captured stdout/stderr;
//! - [`offload`]: a guest that proves CPU-bound moves off the I/O threads;
//! - [`warm`]: instances kept between jobs of one component and tenant.

pub mod capture;
pub mod engine;
pub mod executor;
pub mod joblog;
pub mod limits;
pub mod offload;
pub mod output;
pub mod state;
pub mod warm;

pub use engine::{Allocation, SandboxEngine};
pub use executor::Executor;
