//! Per-job resource limits and the store limiter that enforces linear
//! memory and table growth.
//!
//! wasmtime's plain `StoreLimits` makes a memory-limit hit look like any
//! guest abort (a Rust guest turns a failed allocation into `unreachable`),
//! so this limiter records that the limit was hit and the executor reports
//! the job as a memory-limit failure, not as a generic trap.

use std::time::Duration;

use wasmtime::ResourceLimiter;

use crate::policy::TenantPolicy;

/// Table elements a job may grow its tables to.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Host resource handles (streams, responses, completions…) one job may
/// hold at once: far above what a real handler keeps open, far below what
/// would cost the node memory.
pub const MAX_RESOURCE_HANDLES: usize = 10_000;
/// Bytes one `wasi:random` call may ask for (the call allocates them on the
/// host before the guest's memory limit can apply).
pub const MAX_RANDOM_BYTES: u64 = 16 << 20;

/// The limits one job runs under, from its tenant's policy and the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Linear memory, bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget.
    pub timeout: Duration,
    /// Output (chunks and result together), bytes.
    pub max_output_bytes: u64,
    /// One chunk, bytes.
    pub max_chunk_bytes: u32,
    /// Chunks per second.
    pub max_chunks_per_second: u32,
    /// Log kept, bytes.
    pub max_log_bytes: u32,
    /// Host resource handles held at once.
    pub max_resource_handles: usize,
    /// Bytes of one `wasi:random` call.
    pub max_random_bytes: u64,
}

impl JobLimits {
    /// The tenant's limits, with the timeout shortened to the job's own
    /// `timeout` when it asks for less.
    pub fn new(policy: &TenantPolicy, timeout: Option<Duration>) -> JobLimits {
        let ceiling = Duration::from_millis(policy.timeout_ms);
        JobLimits {
            memory_bytes: policy.memory_mib as usize * 1024 * 1024,
            timeout: timeout.map_or(ceiling, |asked| asked.min(ceiling)),
            max_output_bytes: policy.max_output_bytes,
            max_chunk_bytes: policy.max_chunk_bytes,
            max_chunks_per_second: policy.max_chunks_per_second,
            max_log_bytes: policy.max_log_bytes,
            max_resource_handles: MAX_RESOURCE_HANDLES,
            max_random_bytes: MAX_RANDOM_BYTES,
        }
    }
}

/// Caps memory and table growth of one store, remembers a memory hit, and
/// whether a memory or table grew past the size it was created with (an
/// instance that grew is not kept for another job: `warm.rs`).
#[derive(Debug)]
pub struct StoreLimiter {
    memory_bytes: usize,
    memory_hit: bool,
    grew: bool,
}

impl StoreLimiter {
    /// A limiter allowing `memory_bytes` of linear memory.
    pub fn new(memory_bytes: usize) -> StoreLimiter {
        StoreLimiter {
            memory_bytes,
            memory_hit: false,
            grew: false,
        }
    }

    /// The same store's next job: allowing `memory_bytes`, no hit yet.
    pub fn begin_job(&mut self, memory_bytes: usize) {
        self.memory_bytes = memory_bytes;
        self.memory_hit = false;
    }

    /// Whether a memory or table grew after it was created.
    pub fn grew(&self) -> bool {
        self.grew
    }

    /// Whether the guest asked for more memory than allowed.
    pub fn memory_hit(&self) -> bool {
        self.memory_hit
    }

    /// The memory limit, bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // Refuse the growth (the guest sees a failed allocation and
            // usually aborts); remember why for the job's error.
            self.memory_hit = true;
            return Ok(false);
        }
        // Creating a memory is "growing" from zero.
        self.grew |= current > 0 && desired > current;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= MAX_TABLE_ELEMENTS;
        self.grew |= allowed && current > 0 && desired > current;
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_timeout_only_shortens_the_tenant_ceiling() {
        let policy = TenantPolicy {
            timeout_ms: 1_000,
            ..TenantPolicy::default()
        };
        assert_eq!(JobLimits::new(&policy, None).timeout, Duration::from_secs(1));
        assert_eq!(
            JobLimits::new(&policy, Some(Duration::from_millis(10))).timeout,
            Duration::from_millis(10)
        );
        assert_eq!(
            JobLimits::new(&policy, Some(Duration::from_secs(60))).timeout,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn limiter_refuses_and_records_growth_past_the_limit() {
        let mut limiter = StoreLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!limiter.memory_hit());
        assert!(!limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(limiter.memory_hit());
        limiter.begin_job(4 << 20);
        assert!(!limiter.memory_hit());
    }

    #[test]
    fn growth_counts_only_after_creation() {
        let mut limiter = StoreLimiter::new(4 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(limiter.table_growing(0, 10, None).unwrap());
        assert!(!limiter.grew(), "creating a memory or table is not growth");
        assert!(limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(limiter.grew());
    }
}
