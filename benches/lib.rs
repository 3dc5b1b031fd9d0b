//! Shared setup for the benches: where the guests and the binary are, and
//! executors built the way the node builds them.
//!
//! Run with `scripts/bench`, which builds the guests and the release binary
//! first and prints the README table (ratios against baselines measured in
//! the same run).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use citadel_runtime::{Allocation, ComponentStore, Executor, Policy, SandboxConfig, SandboxEngine};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_path_buf()
}

/// The built component of guest `name`.
pub fn guest(name: &str) -> PathBuf {
    let path = workspace().join("target/guests").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-guests",
        path.display()
    );
    path
}

/// The `citadel` binary of this build profile.
pub fn citadel_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("citadel");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release --bins` (scripts/bench does)",
        path.display()
    );
    path
}

/// The node's default sandbox settings, without a disk cache.
pub fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        cache_dir: None,
        ..SandboxConfig::default()
    }
}

/// An executor with the default policy on an engine using `allocation`.
pub fn executor(allocation: Allocation) -> Executor {
    let engine = SandboxEngine::new(&sandbox_config(), allocation).expect("engine");
    let store = ComponentStore::new(engine, None).expect("component store");
    Executor::new(Arc::new(store), Policy::default())
}
