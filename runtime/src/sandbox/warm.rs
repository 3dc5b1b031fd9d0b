//! Instances kept between jobs of one component and one tenant.
//!
//! A fresh instance per job costs more than a small handler's own work: a
//! new store, WASI context and import table, then resetting the memory slot
//! when it is dropped (most of `benches/dispatch.rs`'s `echo_job`). So a
//! job that *returned* (its result or its handler's error) leaves its
//! instance here, and the same tenant's next job of the same component runs
//! on it. That job gets everything host-side anew — id, grant, limits, log,
//! output budget, chunk sink, HTTP state, deadline — while the guest's own
//! memory (its globals, its heap) carries over, as a long-lived process's
//! would. Nothing crosses tenants, components or grants. An instance is
//! kept only:
//! - after a job that returned: never after a trap, a deadline, a cancel or
//!   a limit (the store is dropped, as it always was);
//! - while no memory or table has grown past the size it was created with,
//!   so a job on a kept instance has its whole memory limit, and a guest
//!   that leaks starts afresh;
//! - while the guest holds no host handles but WASI streams and pollables
//!   (what a guest's libc keeps for stdout and stderr), and no more of
//!   those than after its first job: nothing of a job's — an inference
//!   stream, a download, an HTTP response, a socket — outlives it (a
//!   pollable of anything else is that thing's child, and its parent
//!   stays in the table with it);
//! - for at most `sandbox.jobs_per_instance` jobs (1: a fresh instance for
//!   every job), and at most [`IDLE_FOR`] without one;
//! - while kept instances and running jobs fit the instance pool: a job
//!   that needs a fresh instance first drops the oldest kept ones.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable};

use crate::bindings::Handler;
use crate::capabilities::Capabilities;
use crate::components::Digest;
use crate::sandbox::capture::Captured;
use crate::sandbox::state::JobState;

/// How long a kept instance waits for its next job before it is dropped.
pub const IDLE_FOR: Duration = Duration::from_secs(60);

/// Whose jobs an instance may serve: one component, one tenant, one grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    pub(crate) digest: Digest,
    pub(crate) tenant: String,
    pub(crate) capabilities: Capabilities,
}

/// An instance (with its store and captured stdio), between jobs or
/// serving one.
pub(crate) struct Instance {
    pub(crate) store: Store<JobState>,
    /// `None` until the first job instantiates the component.
    pub(crate) handler: Option<Handler>,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
    /// Jobs it has served.
    jobs: u32,
    /// Handles the guest held after its first job.
    handles_at_rest: Option<usize>,
}

impl Instance {
    /// A store not yet holding an instance, with its stdio captured.
    pub(crate) fn new(store: Store<JobState>, stdout: Captured, stderr: Captured) -> Instance {
        Instance {
            store,
            handler: None,
            stdout,
            stderr,
            jobs: 0,
            handles_at_rest: None,
        }
    }

    /// The job that ran on it returned: the instance back, if it may serve
    /// another (see the module's rules), `None` when it is to be dropped.
    fn after_job(mut self, jobs_per_instance: u32) -> Option<Instance> {
        self.jobs += 1;
        let state = self.store.data_mut();
        state.end_job();
        if self.handler.is_none() || state.limiter.grew() || self.jobs >= jobs_per_instance {
            return None;
        }
        let handles = stdio_handles(state)?;
        let at_rest = *self.handles_at_rest.get_or_insert(handles);
        (handles <= at_rest).then_some(self)
    }
}

/// How many handles the guest holds, if all are WASI streams and pollables.
fn stdio_handles(state: &mut JobState) -> Option<usize> {
    let mut count = 0;
    for entry in state.table.iter_mut() {
        if !(entry.is::<DynOutputStream>() || entry.is::<DynInputStream>() || entry.is::<DynPollable>()) {
            return None;
        }
        count += 1;
    }
    Some(count)
}

/// An instance waiting for its owner's next job.
struct Idle {
    owner: Owner,
    instance: Instance,
    since: Instant,
}

/// How many jobs ran on a fresh instance and how many on a kept one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstanceCounts {
    /// Jobs that made a fresh instance.
    pub fresh: u64,
    /// Jobs that ran on a kept instance.
    pub reused: u64,
    /// Instances kept now, waiting for a job.
    pub idle: usize,
}

/// The node's kept instances, and the count of jobs running (each holds an
/// instance the pool cannot give to another).
pub struct InstancePool {
    jobs_per_instance: u32,
    /// Instances the engine's pooling allocator holds at most (`None`: it
    /// allocates on demand).
    slots: Option<usize>,
    idle: Mutex<VecDeque<Idle>>,
    running: AtomicUsize,
    fresh: AtomicU64,
    reused: AtomicU64,
}

/// A running job's place in the count; given back when dropped.
pub(crate) struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InstancePool {
    /// A pool keeping an instance for up to `jobs_per_instance` jobs, on an
    /// engine with `slots` instance slots (`None`: unbounded).
    pub fn new(jobs_per_instance: u32, slots: Option<u32>) -> InstancePool {
        InstancePool {
            jobs_per_instance: jobs_per_instance.max(1),
            slots: slots.map(|slots| slots as usize),
            idle: Mutex::default(),
            running: AtomicUsize::new(0),
            fresh: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// Count a job as running until the guard is dropped.
    pub(crate) fn running(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(&self.running)
    }

    /// The newest instance kept for `owner`; `None` when the job is to make
    /// a fresh one (room for it is made first).
    pub(crate) fn take(&self, owner: &Owner) -> Option<Instance> {
        let mut dropped = Vec::new();
        let taken = {
            let mut idle = self.idle.lock().expect("instance pool poisoned");
            while idle.front().is_some_and(|oldest| oldest.since.elapsed() >= IDLE_FOR) {
                dropped.extend(idle.pop_front());
            }
            let newest = idle.iter().rposition(|kept| &kept.owner == owner);
            let taken = newest.and_then(|index| idle.remove(index)).map(|kept| kept.instance);
            if taken.is_none()
                && let Some(slots) = self.slots
            {
                // The fresh instance needs a slot of its own.
                while !idle.is_empty() && idle.len() + self.running.load(Ordering::Relaxed) > slots {
                    dropped.extend(idle.pop_front());
                }
            }
            taken
        };
        // Dropping a store resets its memory: outside the lock.
        drop(dropped);
        let counter = if taken.is_some() { &self.reused } else { &self.fresh };
        counter.fetch_add(1, Ordering::Relaxed);
        taken
    }

    /// Keep `instance`, whose job returned, for `owner`'s next job if it
    /// may serve another (see the module's rules); drop it otherwise.
    pub(crate) fn keep(&self, owner: Owner, instance: Instance) {
        let Some(instance) = instance.after_job(self.jobs_per_instance) else {
            return;
        };
        let mut idle = self.idle.lock().expect("instance pool poisoned");
        idle.push_back(Idle {
            owner,
            instance,
            since: Instant::now(),
        });
        let most = self.slots.map_or(MAX_IDLE, |slots| (slots / 2).max(1));
        let surplus = idle.len().saturating_sub(most);
        let dropped: Vec<Idle> = idle.drain(..surplus).collect();
        drop(idle);
        drop(dropped);
    }

    /// Fresh and reused jobs so far, and instances kept now.
    pub fn counts(&self) -> InstanceCounts {
        InstanceCounts {
            fresh: self.fresh.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            idle: self.idle.lock().expect("instance pool poisoned").len(),
        }
    }
}

/// Kept instances at most when the engine allocates on demand.
const MAX_IDLE: usize = 32;
