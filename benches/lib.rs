//! Shared setup for the benches: executors built the way the node builds
//! them. The guests and the binary are found by the test harness
//! (`citadel-tests`), which the benches reuse.
//!
//! Run with `scripts/bench`, which builds the guests and the release binary
//! first and prints the README tables (ratios against baselines measured in
//! the same run).

use std::sync::Arc;

use citadel_runtime::{Allocation, ComponentStore, Executor, Policy, SandboxConfig, SandboxEngine};
pub use citadel_tests::{citadel_bin, guest};

/// The node's default sandbox settings, without a disk cache.
pub fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        cache_dir: None,
        ..SandboxConfig::default()
    }
}

/// An executor with the default policy on an engine using `allocation`.
pub fn executor(allocation: Allocation) -> Executor {
    executor_keeping(allocation, SandboxConfig::default().jobs_per_instance)
}

/// The same, an instance serving at most `jobs_per_instance` jobs.
pub fn executor_keeping(allocation: Allocation, jobs_per_instance: u32) -> Executor {
    let config = SandboxConfig {
        jobs_per_instance,
        ..sandbox_config()
    };
    let engine = SandboxEngine::new(&config, allocation).expect("engine");
    let store = ComponentStore::new(engine, None).expect("component store");
    Executor::new(Arc::new(store), Policy::default())
}
