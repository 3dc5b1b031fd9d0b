//! `[sandbox]`: engine-wide wasmtime settings (per-tenant limits live in
//! the policy).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Engine-wide sandbox settings (per-tenant limits live in the policy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// How often the epoch ticker interrupts running guests to check their
    /// deadline and let other jobs run, ms.
    pub epoch_tick_ms: u64,
    /// Component instances that can exist at once (pooling allocator slots).
    pub max_instances: u32,
    /// Largest linear memory any tenant may be given, MiB: the size of a
    /// pooling slot. Every tenant's `memory_mib` must fit in it.
    pub max_memory_mib: u32,
    /// Wasm stack per job, KiB; deeper recursion traps as a stack overflow.
    pub max_wasm_stack_kib: u32,
    /// Jobs one instance of a component serves, one after another, for one
    /// tenant before it is dropped (its memory carries over between them);
    /// 1 makes a fresh instance for every job.
    pub jobs_per_instance: u32,
    /// Where compiled components are cached (`{digest}-{engine}.cwasm`);
    /// `none` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            epoch_tick_ms: 1,
            max_instances: 64,
            max_memory_mib: 512,
            max_wasm_stack_kib: 512,
            jobs_per_instance: 100,
            cache_dir: default_cache_dir(),
        }
    }
}

/// `$XDG_CACHE_HOME/citadel/components`, else `~/.cache/citadel/components`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("citadel").join("components"))
}
