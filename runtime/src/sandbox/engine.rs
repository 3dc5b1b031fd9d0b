//! The one place wasmtime is configured: the node's `Engine` (component
//! model, Cranelift, pooling allocator sized from config, wasm stack limit,
//! epoch interruption) and the epoch ticker thread that drives deadlines.
//!
//! Every job runs in its own `Store` on this engine; see [`super::executor`].

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::SandboxConfig;
use crate::sandbox::warm::InstancePool;

/// Guard pages and host frames need room beyond the wasm stack on the fiber
/// each job runs on.
const HOST_STACK_HEADROOM: usize = 1 << 20;

/// Dirty linear-memory bytes reset in place (memset) when a pooling slot is
/// reused, instead of being dropped with `madvise` and faulted back in by the
/// next job. With `PAGEMAP_SCAN` (Linux 6.7+) only pages the guest actually
/// wrote are reset; on a 2-core VM this halves the per-job cost of a small
/// handler (page faults and TLB shootdowns dominate otherwise).
const MEMORY_KEEP_RESIDENT: usize = 1 << 20;
/// The same for tables.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Pre-reserved slots (the node's default: instantiation is a slot reuse).
    Pooling,
    /// mmap per instance (slower; used as a benchmark baseline).
    OnDemand,
}

/// The node's wasmtime engine, what is needed to key artifacts compiled by
/// it, and the instances kept between jobs on it.
#[derive(Clone)]
pub struct SandboxEngine {
    engine: Engine,
    compatibility: String,
    instances: Arc<InstancePool>,
}

impl SandboxEngine {
    /// Build the engine and start its epoch ticker. The ticker thread ends
    /// by itself when the last clone of the engine is dropped.
    pub fn new(config: &SandboxConfig, allocation: Allocation) -> wasmtime::Result<SandboxEngine> {
        let mut wasm = Config::new();
        let max_wasm_stack = config.max_wasm_stack_kib as usize * 1024;
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(max_wasm_stack)
            .async_stack_size(max_wasm_stack + HOST_STACK_HEADROOM)
            .parallel_compilation(true);
        if allocation == Allocation::Pooling {
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(config)));
        }
        let engine = Engine::new(&wasm)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compatibility = format!("{:016x}", hasher.finish());
        let tick = Duration::from_millis(config.epoch_tick_ms);
        spawn_ticker(&engine, tick)?;
        let slots = (allocation == Allocation::Pooling).then_some(config.max_instances);
        let instances = Arc::new(InstancePool::new(config.jobs_per_instance, slots));
        Ok(SandboxEngine {
            engine,
            compatibility,
            instances,
        })
    }

    /// The instances kept between jobs (`warm.rs`).
    pub fn instances(&self) -> &InstancePool {
        &self.instances
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A short hash of everything that makes compiled artifacts of this
    /// engine incompatible with another's (wasmtime version, settings).
    pub fn compatibility(&self) -> &str {
        &self.compatibility
    }
}

/// Pool sizes: every component instance a job creates takes one component
/// slot, a handful of core-instance slots (the guest module plus
/// canonical-ABI shims), and at most a couple of memories and tables.
fn pooling(config: &SandboxConfig) -> PoolingAllocationConfig {
    let instances = config.max_instances;
    let mut pooling = PoolingAllocationConfig::new();
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances * 16)
        .max_core_instances_per_component(16)
        .total_memories(instances * 2)
        .max_memories_per_component(2)
        .total_tables(instances * 4)
        .max_tables_per_component(4)
        .total_stacks(instances)
        .max_memory_size(config.max_memory_mib as usize * 1024 * 1024)
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT);
    pooling
}

/// Increment the engine's epoch every `tick` until the engine is gone.
fn spawn_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    thread::Builder::new()
        .name("citadel-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(tick);
            }
        })
        .map(drop)
}
