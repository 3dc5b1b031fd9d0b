//! One job's run on this node, the same for every source. A source (Redis
//! Streams: `crate::sources::redis`; the Nexus API: `crate::sources::nexus`) translates a job
//! into a [`JobSpec`], then:
//!
//! 1. [`Dispatcher::admit`]: the job type's handler, or [`Unsupported`]
//!    naming what this node handles; then a slot of the job's tenant
//!    (`max_in_flight`, or a fair share of the node: [`tenants`]), waited for;
//! 2. the source does what it must before the run (Redis: `claimed` and
//!    `start` in one round trip, honouring a cancel flag set meanwhile);
//! 3. [`Dispatcher::run`]: the component the job pins (checked against the
//!    tenant's `allow_pin`) or the handler's, in the sandbox — or the native
//!    handler — with chunks to the source's sink; observers told of the
//!    start and the end; the [`JobOutcome`] decided once, here;
//! 4. the source settles the outcome its own way (Redis: one transaction
//!    with the `XACK`; Nexus: a report kept on disk until taken), with the
//!    job's fleet events ([`fleet`]) in the same writes.

pub mod fleet;
mod outcome;
pub mod tenants;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use outcome::{JobOutcome, Recovery};
use tenants::{TenantSlot, TenantSlots};

use crate::handlers::{Handler, HandlerTable, NativeJob};
use crate::job::{Chunk, JobReport, JobSpec};
use crate::sandbox::executor::Executor;

/// A job, as observers see it.
#[derive(Debug, Clone, Copy)]
pub struct JobInfo<'a> {
    /// The job id.
    pub job_id: &'a str,
    /// The job type.
    pub job_type: &'a str,
    /// The tenant.
    pub tenant: &'a str,
}

/// What observers are told of a job whose spec has moved into its run.
struct ObservedJob {
    id: String,
    job_type: String,
    tenant: String,
}

impl ObservedJob {
    fn of(spec: &JobSpec) -> ObservedJob {
        ObservedJob {
            id: spec.id.clone(),
            job_type: spec.job_type.clone(),
            tenant: spec.tenant.clone(),
        }
    }

    fn info(&self) -> JobInfo<'_> {
        JobInfo {
            job_id: &self.id,
            job_type: &self.job_type,
            tenant: &self.tenant,
        }
    }
}

/// Told about each job's life on this node (metrics, live events, status
/// triggers). Called on the job's task: keep it quick and non-blocking.
pub trait JobObserver: Send + Sync {
    /// The job's handler is starting.
    fn started(&self, job: &JobInfo<'_>);
    /// The job streamed its first chunk, `after` its start.
    fn first_chunk(&self, job: &JobInfo<'_>, after: Duration);
    /// The job ended on this node.
    fn finished(&self, job: &JobInfo<'_>, outcome: JobOutcome, took: Duration);
    /// The node started or stopped taking jobs.
    fn consuming(&self, consuming: bool);
}

/// No handler for the job's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported job type `{job_type}`; this node handles {}", supported.join(", "))]
pub struct Unsupported {
    /// The job's type.
    pub job_type: String,
    /// The types this node handles.
    pub supported: Vec<String>,
}

/// A job cleared to run: its handler and its tenant's slot.
pub struct Admitted {
    handler: Handler,
    _tenant_slot: TenantSlot,
}

/// The job's tenant has no slot free now (its handler, kept for the wait).
pub struct Busy(Handler);

/// Whether a job may run.
pub enum Admission {
    /// It may: run it.
    Admitted(Admitted),
    /// Nothing here handles its type.
    Unsupported(Unsupported),
    /// The node stopped while it waited for its tenant's slot.
    Stopped,
}

/// How the source runs a job.
#[derive(Debug, Clone, Copy)]
pub struct JobControl<'a> {
    /// Fires when the job must stop (cancelled by request, or interrupted).
    pub cancel: &'a CancellationToken,
    /// Fires when the node's shutdown interrupts running jobs: a job it
    /// stops is [`JobOutcome::Interrupted`], not cancelled.
    pub interrupt: &'a CancellationToken,
    /// What the source does with a recoverable failure.
    pub recovery: Recovery,
}

/// A job that ran. It still holds its tenant's slot: the source drops it
/// once the outcome is settled, so the tenant's next job never starts (and
/// says so) before this one's end is written.
pub struct Ran {
    /// What it left behind.
    pub report: JobReport,
    /// How it ended.
    pub outcome: JobOutcome,
    _tenant_slot: TenantSlot,
}

/// Runs the node's jobs, whatever their source: handlers, tenant slots,
/// observers.
pub struct Dispatcher {
    executor: Arc<Executor>,
    handlers: HandlerTable,
    tenants: TenantSlots,
    observer: OnceLock<Arc<dyn JobObserver>>,
}

impl Dispatcher {
    /// Jobs run on `executor` by `handlers`, on a node with `node_slots`
    /// job slots (`worker.concurrency`) that tenants share.
    pub fn new(executor: Arc<Executor>, handlers: HandlerTable, node_slots: usize) -> Dispatcher {
        Dispatcher {
            executor,
            handlers,
            tenants: TenantSlots::new(node_slots),
            observer: OnceLock::new(),
        }
    }

    /// Tell `observer` about every job's life (set once, before jobs run).
    pub fn observe(&self, observer: Arc<dyn JobObserver>) {
        let _ = self.observer.set(observer);
    }

    /// The observer, if one is set.
    pub fn observer(&self) -> Option<&Arc<dyn JobObserver>> {
        self.observer.get()
    }

    /// The handlers.
    pub fn handlers(&self) -> &HandlerTable {
        &self.handlers
    }

    /// The executor.
    pub fn executor(&self) -> &Arc<Executor> {
        &self.executor
    }

    /// Whether `spec` may run: its handler, then a slot of its tenant
    /// (waited for until `stop`).
    pub async fn admit(&self, spec: &JobSpec, stop: &CancellationToken) -> Admission {
        match self.try_admit(spec) {
            Ok(admission) => admission,
            Err(busy) => self.wait_for_slot(spec, busy, stop).await,
        }
    }

    /// After [`Dispatcher::try_admit`] found the job's tenant busy: wait
    /// for its slot until `stop`.
    pub async fn wait_for_slot(&self, spec: &JobSpec, Busy(handler): Busy, stop: &CancellationToken) -> Admission {
        let limit = self.executor.policy().tenant(&spec.tenant).1.max_in_flight;
        match self.tenants.take(&spec.tenant, limit, stop).await {
            Some(slot) => Admission::Admitted(Admitted {
                handler,
                _tenant_slot: slot,
            }),
            None => Admission::Stopped,
        }
    }

    /// [`Dispatcher::admit`] without waiting: [`Busy`] when the job's
    /// tenant has no slot free now.
    pub fn try_admit(&self, spec: &JobSpec) -> Result<Admission, Busy> {
        let Some(handler) = self.handlers.get(&spec.job_type) else {
            return Ok(Admission::Unsupported(Unsupported {
                job_type: spec.job_type.clone(),
                supported: self.handlers.types(),
            }));
        };
        let limit = self.executor.policy().tenant(&spec.tenant).1.max_in_flight;
        match self.tenants.try_take(&spec.tenant, limit) {
            Some(slot) => Ok(Admission::Admitted(Admitted {
                handler,
                _tenant_slot: slot,
            })),
            None => Err(Busy(handler)),
        }
    }

    /// Run an admitted job, its chunks to `sink`; the tenant's slot is
    /// held until the returned [`Ran`] is dropped.
    pub async fn run(
        &self,
        admitted: Admitted,
        spec: JobSpec,
        sink: Option<mpsc::Sender<Chunk>>,
        control: JobControl<'_>,
    ) -> Ran {
        // The spec moves into the run: keep what observers are told (only
        // when someone observes: nothing is copied per job otherwise).
        let observed = self.observer.get().map(|observer| (observer, ObservedJob::of(&spec)));
        if let Some((observer, job)) = &observed {
            observer.started(&job.info());
        }
        let started = Instant::now();
        let Admitted { handler, _tenant_slot } = admitted;
        let report = match handler {
            Handler::Component(component) => match self.handlers.pinned(&spec, self.executor.policy()).await {
                Ok(pinned) => {
                    let component = pinned.as_ref().unwrap_or(&component);
                    self.executor.run(component, spec, sink, control.cancel).await
                }
                Err(refusal) => JobReport::outside_sandbox(Err(refusal.into()), started.elapsed()),
            },
            Handler::Native(native) => {
                let job = NativeJob {
                    spec,
                    chunks: sink,
                    cancel: control.cancel,
                };
                let outcome = native.run(job).await;
                JobReport::outside_sandbox(outcome, started.elapsed())
            }
        };
        let outcome = JobOutcome::of(&report.outcome, control.interrupt.is_cancelled(), control.recovery);
        if let Some((observer, job)) = &observed {
            observer.finished(&job.info(), outcome, started.elapsed());
        }
        Ran {
            report,
            outcome,
            _tenant_slot,
        }
    }
}
