//! Running one job: admit the component for the job's tenant (refusing
//! imports beyond the grant before anything runs), take an instance kept
//! from the same tenant's last job of the component or instantiate it from
//! a cached `InstancePre` into a fresh `Store` ([`crate::sandbox::warm`]),
//! give it the job's limits, call `handle`, and classify how it ended.
//!
//! Deadlines and cancellation: the engine's epoch ticker interrupts the
//! guest every tick; the store's epoch callback then either traps (deadline
//! passed, job cancelled) or yields, so a spinning guest never holds a
//! thread for longer than a tick, and one that keeps spinning moves to a
//! thread of its own ([`offload`]). The whole call additionally races the
//! deadline and the cancellation token, which covers time spent in host
//! calls. Either way the store is dropped: that is the cancel.
//!
//! Whose fault: our limits and interrupts are typed and classed first.
//! Host calls report the node's own faults (an engine down, Docker gone) as
//! their result, never as an error, so any other error raised while the
//! guest runs is the guest's doing — a trap, an exit, a handle it does not
//! own, data the canonical ABI forbids — and fails its job without a retry.
//! Only a failure to instantiate, before any of the job's code ran, is the
//! node's (`host_error`, retried).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wasmtime::component::ResourceTableError;
use wasmtime::{Engine, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::bindings::{HandlerError, HandlerPre, JobRecord};
use crate::capabilities::Capabilities;
use crate::capabilities::NodeResources;
use crate::capabilities::docker::DockerAccess;
use crate::capabilities::grant::Grant;
use crate::capabilities::inference::Engines;
use crate::capabilities::models::ModelStore;
use crate::capabilities::{self, PROVIDED};
use crate::components::{ComponentStore, Digest, LoadedComponent};
use crate::config::{Config, ConfigError};
use crate::job::{Chunk, HandlerErrorKind, JobError, JobReport, JobSpec, Refusal};
use crate::policy::Policy;
use crate::sandbox::capture::Captured;
use crate::sandbox::engine::{Allocation, SandboxEngine};
use crate::sandbox::joblog::{JobLog, Source};
use crate::sandbox::limits::JobLimits;
use crate::sandbox::offload;
use crate::sandbox::output::OutputLimitExceeded;
use crate::sandbox::state::JobState;
use crate::sandbox::warm::{Instance, Owner};

/// Why the epoch callback stopped a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Interrupted {
    #[error("job deadline passed")]
    Deadline,
    #[error("job cancelled")]
    Cancelled,
}

/// A job cleared to run: its component's pre-instantiation, grant, limits
/// and log, and when it started.
struct Admission {
    pre: HandlerPre<JobState>,
    grant: Grant,
    limits: JobLimits,
    log: JobLog,
    started: Instant,
}

/// How the call ended, before classification.
enum Ended {
    Returned(Result<String, HandlerError>),
    /// wasmtime could not instantiate the component for this job.
    Instantiation(wasmtime::Error),
    /// The guest's code (or a host call it made) raised an error.
    Call(wasmtime::Error),
    Deadline,
    Cancelled,
}

/// The node's sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration or policy is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// wasmtime refused the engine settings.
    #[error("cannot create the wasmtime engine: {0}")]
    Engine(String),
    /// An inference engine's client cannot be built.
    #[error("cannot set up the inference engines: {0}")]
    Engines(String),
    /// The Docker Engine API client cannot be built.
    #[error("cannot set up the Docker API client: {0}")]
    Docker(String),
    /// The compiled-component cache directory is unusable.
    #[error("cannot use component cache {}: {source} (set sandbox.cache_dir to a private directory)", .dir.display())]
    Cache {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs jobs on components under tenant policy.
pub struct Executor {
    components: Arc<ComponentStore>,
    policy: Policy,
    resources: NodeResources,
    prepared: Mutex<HashMap<(Digest, Capabilities), HandlerPre<JobState>>>,
}

impl Executor {
    /// An executor for components of `components`, under `policy`.
    pub fn new(components: Arc<ComponentStore>, policy: Policy) -> Executor {
        Executor {
            components,
            policy,
            resources: NodeResources::default(),
            prepared: Mutex::default(),
        }
    }

    /// The same executor, giving capability `inference` these engines.
    pub fn with_engines(mut self, engines: Arc<Engines>) -> Executor {
        self.resources.inference = engines;
        self
    }

    /// The node's inference engines.
    pub fn engines(&self) -> &Arc<Engines> {
        &self.resources.inference
    }

    /// The same executor, giving capability `docker` this Docker API (by
    /// default the node has none: every call is `unavailable`).
    pub fn with_docker(mut self, docker: Arc<DockerAccess>) -> Executor {
        self.resources.docker = docker;
        self
    }

    /// The same executor, giving capability `models` this directory (by
    /// default the node has none: `begin` fails with `io`).
    pub fn with_models(mut self, models: Arc<ModelStore>) -> Executor {
        self.resources.models = Some(models);
        self
    }

    /// The node's Docker API, as capability `docker` reaches it.
    pub fn docker(&self) -> &Arc<DockerAccess> {
        &self.resources.docker
    }

    /// Build the engine, component store, policy, inference engines,
    /// Docker API client and models directory `config` describes.
    pub fn from_config(config: &Config, allocation: Allocation) -> Result<Executor, SetupError> {
        let policy = config.load_policy()?;
        let engine =
            SandboxEngine::new(&config.sandbox, allocation).map_err(|err| SetupError::Engine(format!("{err:#}")))?;
        let cache_dir = config.sandbox.cache_dir.as_deref();
        let components = ComponentStore::new(engine, cache_dir).map_err(|source| SetupError::Cache {
            dir: cache_dir.map(PathBuf::from).unwrap_or_default(),
            source,
        })?;
        let engines = Engines::from_config(&config.engines).map_err(SetupError::Engines)?;
        let docker = DockerAccess::from_config(&config.docker).map_err(|err| SetupError::Docker(err.to_string()))?;
        let models = ModelStore::new(config.models_dir(), config.models.max_bytes());
        Ok(Executor::new(Arc::new(components), policy)
            .with_engines(Arc::new(engines))
            .with_docker(Arc::new(docker))
            .with_models(Arc::new(models)))
    }

    /// The component store.
    pub fn components(&self) -> &Arc<ComponentStore> {
        &self.components
    }

    /// The tenant policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Run `job` on `component`, streaming chunks to `chunks` (when given),
    /// until it returns, fails, runs out of time or `cancel` fires.
    pub async fn run(
        &self,
        component: &LoadedComponent,
        job: JobSpec,
        chunks: Option<mpsc::Sender<Chunk>>,
        cancel: &CancellationToken,
    ) -> JobReport {
        let started = Instant::now();
        let grant = Grant::for_tenant(&self.policy, &job.tenant);
        let limits = JobLimits::new(grant.policy(), job.timeout);
        let log = JobLog::new(limits.max_log_bytes as usize);
        let span = tracing::debug_span!(
            "job.run",
            job_id = %job.id,
            job_type = %job.job_type,
            tenant = %grant.tenant(),
            component = %component.digest.short(),
        );
        let pre = match self.admit(component, &grant) {
            Ok(pre) => pre,
            Err(refusal) => {
                span.in_scope(|| tracing::debug!(error = %refusal, "component refused"));
                return JobReport {
                    outcome: Err(refusal),
                    chunks: 0,
                    streamed_bytes: 0,
                    elapsed: started.elapsed(),
                    log: log.snapshot(),
                };
            }
        };
        let owner = Owner {
            digest: component.digest,
            tenant: grant.tenant().to_string(),
            capabilities: grant.capabilities(),
        };
        let admission = Admission {
            pre,
            grant,
            limits,
            log,
            started,
        };
        let sandbox = self.components.engine();
        let instances = sandbox.instances();
        let _running = instances.running();
        let kept = instances.take(&owner);
        // Whatever ends this call (a dropped job included) ends the guest.
        let stop = cancel.child_token();
        let _stop_when_dropped = stop.clone().drop_guard();
        let guest = execute(
            sandbox.engine().clone(),
            self.resources.clone(),
            admission,
            kept,
            job,
            chunks,
            stop,
        );
        let Executed { report, returned } = offload::run(guest.instrument(span)).await;
        if let Some(instance) = returned {
            instances.keep(owner, instance);
        }
        report
    }

    /// Check the component's imports against the grant and what the node
    /// provides, and return its (cached) pre-instantiation.
    fn admit(&self, component: &LoadedComponent, grant: &Grant) -> Result<HandlerPre<JobState>, JobError> {
        let required = component.interface.required;
        let missing = required.missing_from(grant.capabilities());
        if !missing.is_empty() {
            return Err(JobError::Refused(Refusal::NotGranted {
                component: component.digest.to_string(),
                missing,
                tenant: grant.tenant().to_string(),
            }));
        }
        let unprovided = required.missing_from(PROVIDED);
        if !unprovided.is_empty() {
            return Err(JobError::Refused(Refusal::NotProvided {
                component: component.digest.to_string(),
                missing: unprovided,
            }));
        }
        let key = (component.digest, grant.capabilities());
        if let Some(pre) = self.prepared.lock().expect("prepared map poisoned").get(&key) {
            return Ok(pre.clone());
        }
        let link = |err: wasmtime::Error| {
            JobError::Refused(Refusal::Link {
                component: component.digest.to_string(),
                message: format!("{err:#}"),
            })
        };
        let engine = self.components.engine().engine();
        let linker =
            capabilities::linker(engine, grant.capabilities()).map_err(|err| JobError::Host(format!("{err:#}")))?;
        let pre = linker.instantiate_pre(&component.component).map_err(link)?;
        let pre = HandlerPre::new(pre).map_err(link)?;
        self.prepared
            .lock()
            .expect("prepared map poisoned")
            .insert(key, pre.clone());
        Ok(pre)
    }
}

/// What [`execute`] hands back: the job's report, and its instance when
/// the guest's call returned (only then may it serve another job).
struct Executed {
    report: JobReport,
    returned: Option<Instance>,
}

/// Call the admitted component, on the kept instance when there is one,
/// else in a fresh store (owning everything it uses, so that it can move to
/// a thread of its own: [`offload`]); the instance comes back with the
/// report.
async fn execute(
    engine: Engine,
    resources: NodeResources,
    admission: Admission,
    kept: Option<Instance>,
    job: JobSpec,
    chunks: Option<mpsc::Sender<Chunk>>,
    cancel: CancellationToken,
) -> Executed {
    let cancel = &cancel;
    let Admission {
        pre,
        grant,
        limits,
        log,
        started,
    } = admission;
    let deadline = started + limits.timeout;
    let job_id = Arc::from(job.id.as_str());
    let mut instance = match kept {
        Some(mut kept) => {
            kept.stdout.redirect(log.clone());
            kept.stderr.redirect(log.clone());
            kept.store
                .data_mut()
                .begin_job(job_id, grant, &limits, log.clone(), chunks, resources);
            kept
        }
        None => fresh_instance(&engine, job_id, grant, &limits, &log, chunks, resources),
    };
    let store = &mut instance.store;
    let interrupt = cancel.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if interrupt.is_cancelled() {
            return Err(Interrupted::Cancelled.into());
        }
        if Instant::now() >= deadline {
            return Err(Interrupted::Deadline.into());
        }
        if offload::on_own_thread() {
            // Nothing else runs on this thread: no need to yield, only to
            // check again at the next tick.
            return Ok(UpdateDeadline::Continue(1));
        }
        Ok(UpdateDeadline::Yield(1))
    });
    let record = JobRecord {
        id: job.id,
        job_type: job.job_type,
        tenant: job.tenant,
        payload: job.payload,
        ray_id: job.ray_id,
        attempt: job.attempt,
        deadline_ms: limits.timeout.as_millis() as u64,
    };
    // A host call copies at most as much from the guest as the guest's
    // memory may hold (wasmtime's default is 128 MiB a call): a list of
    // entries all pointing at one buffer cannot make the node allocate
    // more than that.
    store.set_hostcall_fuel(limits.memory_bytes.max(MIN_HOSTCALL_FUEL));
    let ended = {
        let Instance { store, handler, .. } = &mut instance;
        let call = async {
            let handler = match handler {
                Some(handler) => handler,
                None => match pre.instantiate_async(&mut *store).await {
                    Ok(instantiated) => handler.insert(instantiated),
                    Err(error) => return Ended::Instantiation(error),
                },
            };
            match handler.call_handle(&mut *store, &record).await {
                Ok(returned) => Ended::Returned(returned),
                Err(error) => Ended::Call(error),
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ended::Cancelled,
            _ = tokio::time::sleep_until(deadline.into()) => Ended::Deadline,
            ended = call => ended,
        }
    };
    instance.stdout.flush_partial();
    instance.stderr.flush_partial();
    let returned = matches!(ended, Ended::Returned(_));
    let state = instance.store.data_mut();
    let outcome = classify(ended, state, &limits);
    if let Err(err) = &outcome {
        tracing::debug!(class = err.class(), error = %err, "job failed");
    }
    let report = JobReport {
        outcome,
        chunks: state.stream.chunks(),
        streamed_bytes: state.stream.bytes(),
        elapsed: started.elapsed(),
        log: log.snapshot(),
    };
    Executed {
        report,
        returned: returned.then_some(instance),
    }
}

/// A store for a job on no kept instance: nothing inherited (no env,
/// args, preopened dirs or network; stdin closed), stdout/stderr into the
/// job's log.
fn fresh_instance(
    engine: &Engine,
    job_id: Arc<str>,
    grant: Grant,
    limits: &JobLimits,
    log: &JobLog,
    chunks: Option<mpsc::Sender<Chunk>>,
    resources: NodeResources,
) -> Instance {
    let stdout = Captured::new(log.clone(), Source::Stdout);
    let stderr = Captured::new(log.clone(), Source::Stderr);
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .max_random_size(limits.max_random_bytes)
        .build();
    let state = JobState::new(job_id, grant, limits, log.clone(), chunks, resources, wasi);
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    Instance::new(store, stdout, stderr)
}

/// A host call refused because the guest asked for more than a job may
/// have: the job's fault, with one line naming the limit.
fn resource_limit(error: &wasmtime::Error, limits: &JobLimits) -> Option<JobError> {
    if let Some(ResourceTableError::Full) = error.downcast_ref::<ResourceTableError>() {
        return Some(JobError::ResourceLimit {
            reason: format!(
                "the guest held more than {} host resource handles at once (streams, responses, completions it never dropped)",
                limits.max_resource_handles
            ),
        });
    }
    // wasmtime and wasmtime-wasi refuse these without a public type to
    // downcast to; their wording is matched here, next to the limits we set.
    let messages: Vec<String> = error.chain().map(ToString::to_string).collect();
    if messages
        .iter()
        .any(|message| message.contains("fuel allocated for hostcalls has been exhausted"))
    {
        return Some(JobError::ResourceLimit {
            reason: format!(
                "one host call would have copied more than {} MiB out of the guest (the job's memory limit)",
                limits.memory_bytes.max(MIN_HOSTCALL_FUEL) >> 20
            ),
        });
    }
    if messages
        .iter()
        .any(|message| message.contains("store handle limit exceeded"))
    {
        return Some(JobError::ResourceLimit {
            reason: "the guest held more component handles at once than wasmtime allows a store".into(),
        });
    }
    let refused = messages.iter().find(|message| {
        message.starts_with("requested len") && message.ends_with(&format!("exceeds limit {}", limits.max_random_bytes))
    })?;
    let asked = refused.split_whitespace().nth(2).unwrap_or("?");
    Some(JobError::ResourceLimit {
        reason: format!(
            "the guest asked wasi:random for {asked} bytes in one call; a job may ask for {} at most",
            limits.max_random_bytes
        ),
    })
}

/// Turn how the call ended into the job's result or error class.
fn classify(ended: Ended, state: &mut JobState, limits: &JobLimits) -> Result<serde_json::Value, JobError> {
    match ended {
        Ended::Cancelled => Err(JobError::Cancelled {
            reason: "cancel requested".into(),
        }),
        Ended::Deadline => Err(JobError::Deadline {
            timeout: limits.timeout,
        }),
        Ended::Returned(Ok(result)) => {
            state.output.spend(result.len()).map_err(output_limit)?;
            serde_json::from_str(&result).map_err(|err| JobError::BadOutput {
                reason: err.to_string(),
            })
        }
        Ended::Returned(Err(error)) => Err(handler_error(error)),
        Ended::Instantiation(error) => Err(classify_trap(&error, state, limits).unwrap_or_else(|| {
            // Nothing of the guest's ran yet that could explain it: the
            // node could not set the job up (retried elsewhere).
            JobError::Host(format!("{error:#}"))
        })),
        Ended::Call(error) => Err(classify_trap(&error, state, limits).unwrap_or_else(|| broke_the_abi(&error))),
    }
}

fn output_limit(exceeded: OutputLimitExceeded) -> JobError {
    JobError::OutputLimit {
        limit: exceeded.limit,
        attempted: exceeded.attempted,
    }
}

/// A handler's own error message is kept up to this many bytes: it travels
/// in the job's status, its `error` event and the node's log.
const MAX_HANDLER_MESSAGE_BYTES: usize = 4096;

/// The least a host call may copy from the guest, however small its memory.
const MIN_HOSTCALL_FUEL: usize = 1 << 20;

fn handler_error(error: HandlerError) -> JobError {
    let (kind, message) = match error {
        HandlerError::InvalidInput(message) => (HandlerErrorKind::InvalidInput, message),
        HandlerError::Failed(message) => (HandlerErrorKind::Failed, message),
        HandlerError::Denied(message) => (HandlerErrorKind::Denied, message),
        HandlerError::Unavailable(message) => (HandlerErrorKind::Unavailable, message),
    };
    JobError::Handler {
        kind,
        message: capabilities::truncate(message, MAX_HANDLER_MESSAGE_BYTES),
    }
}

/// Classify an error raised while instantiating or running the guest: our
/// own interrupts and limits first, then what wasmtime and WASI report.
/// `None`: nothing says whose fault it was (the caller decides by when it
/// happened).
fn classify_trap(error: &wasmtime::Error, state: &JobState, limits: &JobLimits) -> Option<JobError> {
    let timeout = limits.timeout;
    if let Some(interrupted) = error.downcast_ref::<Interrupted>() {
        return Some(match interrupted {
            Interrupted::Deadline => JobError::Deadline { timeout },
            Interrupted::Cancelled => JobError::Cancelled {
                reason: "cancel requested".into(),
            },
        });
    }
    if let Some(exceeded) = error.downcast_ref::<OutputLimitExceeded>() {
        return Some(output_limit(*exceeded));
    }
    if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return Some(JobError::Capacity(format!("{error:#}")));
    }
    if state.limiter.memory_hit() {
        return Some(JobError::MemoryLimit {
            limit_mib: (state.limiter.memory_bytes() >> 20) as u64,
        });
    }
    if let Some(exceeded) = resource_limit(error, limits) {
        return Some(exceeded);
    }
    if let Some(I32Exit(status)) = error.downcast_ref::<I32Exit>() {
        return Some(JobError::Trap {
            message: format!("the guest called wasi:cli/exit (status {status}) instead of returning a result"),
        });
    }
    if let Some(misused) = error.downcast_ref::<ResourceTableError>() {
        return Some(JobError::Trap {
            message: format!("the guest misused a host resource handle: {misused}"),
        });
    }
    match error.downcast_ref::<Trap>()? {
        Trap::StackOverflow => Some(JobError::StackOverflow),
        Trap::Interrupt => Some(JobError::Deadline { timeout }),
        trap => {
            let message = match state.log.stderr_summary() {
                Some(said) => format!("{trap} ({said})"),
                None => trap.to_string(),
            };
            Some(JobError::Trap { message })
        }
    }
}

/// An error raised during the guest's call that is none of the above:
/// wasmtime refusing what the guest handed it (a string that is not UTF-8,
/// a pointer outside its memory, an enum case that does not exist, a handle
/// it does not own) or a WASI call the guest made in a way WASI defines as
/// a trap. Host calls report the node's own faults as the call's result
/// (`unavailable`, never an error), so this is the guest's doing.
fn broke_the_abi(error: &wasmtime::Error) -> JobError {
    // The root cause says what was refused; the contexts above it are
    // wasmtime's backtrace.
    let cause = error.root_cause().to_string();
    let first_line = cause.lines().next().unwrap_or_default();
    JobError::Trap {
        message: format!("the guest broke the component model's rules: {first_line}"),
    }
}
