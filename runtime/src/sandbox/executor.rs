//! Running one job: admit the component for the job's tenant (refusing
//! imports beyond the grant before anything runs), instantiate it from a
//! cached `InstancePre` into a fresh `Store` with the job's limits, call
//! `handle`, and classify how it ended.
//!
//! Deadlines and cancellation: the engine's epoch ticker interrupts the
//! guest every tick; the store's epoch callback then either traps (deadline
//! passed, job cancelled) or yields to the async executor, so a spinning
//! guest never holds a thread. The whole call additionally races the
//! deadline and the cancellation token, which covers time spent in host
//! calls. Either way the store is dropped: that is the cancel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wasmtime::component::ResourceTableError;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

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
use crate::sandbox::output::OutputLimitExceeded;
use crate::sandbox::state::JobState;

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
    Returned(wasmtime::Result<Result<String, HandlerError>>),
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
        let admission = Admission {
            pre,
            grant,
            limits,
            log,
            started,
        };
        self.execute(admission, job, chunks, cancel).instrument(span).await
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

    /// Instantiate and call the admitted component in a fresh store.
    async fn execute(
        &self,
        admission: Admission,
        job: JobSpec,
        chunks: Option<mpsc::Sender<Chunk>>,
        cancel: &CancellationToken,
    ) -> JobReport {
        let Admission {
            pre,
            grant,
            limits,
            log,
            started,
        } = admission;
        let deadline = started + limits.timeout;
        let stdout = Captured::new(log.clone(), Source::Stdout);
        let stderr = Captured::new(log.clone(), Source::Stderr);
        // Nothing inherited: no env, args, preopened dirs or network; stdin
        // closed; stdout/stderr into the job's log.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .max_random_size(limits.max_random_bytes)
            .build();
        let state = JobState::new(
            Arc::from(job.id.as_str()),
            grant,
            &limits,
            log.clone(),
            chunks,
            self.resources.clone(),
            wasi,
        );
        let mut store = Store::new(self.components.engine().engine(), state);
        store.limiter(|state| &mut state.limiter);
        let interrupt = cancel.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if interrupt.is_cancelled() {
                return Err(Interrupted::Cancelled.into());
            }
            if Instant::now() >= deadline {
                return Err(Interrupted::Deadline.into());
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
        let ended = {
            let call = async {
                let handler = pre.instantiate_async(&mut store).await?;
                handler.call_handle(&mut store, &record).await
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Ended::Cancelled,
                _ = tokio::time::sleep_until(deadline.into()) => Ended::Deadline,
                returned = call => Ended::Returned(returned),
            }
        };
        stdout.flush_partial();
        stderr.flush_partial();
        let state = store.data_mut();
        let outcome = classify(ended, state, &limits);
        if let Err(err) = &outcome {
            tracing::debug!(class = err.class(), error = %err, "job failed");
        }
        JobReport {
            outcome,
            chunks: state.stream.chunks(),
            streamed_bytes: state.stream.bytes(),
            elapsed: started.elapsed(),
            log: log.snapshot(),
        }
    }
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
    // wasmtime-wasi refuses an oversized `wasi:random` call with an untyped
    // error, the one host-call refusal without a type to downcast to; its
    // wording is matched here, next to the limit we configure for it.
    let refused = error.chain().map(ToString::to_string).find(|message| {
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
        Ended::Returned(Ok(Ok(result))) => {
            state.output.spend(result.len()).map_err(output_limit)?;
            serde_json::from_str(&result).map_err(|err| JobError::BadOutput {
                reason: err.to_string(),
            })
        }
        Ended::Returned(Ok(Err(error))) => Err(handler_error(error)),
        Ended::Returned(Err(error)) => Err(classify_trap(&error, state, limits)),
    }
}

fn output_limit(exceeded: OutputLimitExceeded) -> JobError {
    JobError::OutputLimit {
        limit: exceeded.limit,
        attempted: exceeded.attempted,
    }
}

fn handler_error(error: HandlerError) -> JobError {
    let (kind, message) = match error {
        HandlerError::InvalidInput(message) => (HandlerErrorKind::InvalidInput, message),
        HandlerError::Failed(message) => (HandlerErrorKind::Failed, message),
        HandlerError::Denied(message) => (HandlerErrorKind::Denied, message),
        HandlerError::Unavailable(message) => (HandlerErrorKind::Unavailable, message),
    };
    JobError::Handler { kind, message }
}

/// Classify an error raised while instantiating or running the guest: our
/// own interrupts and limits first, then what wasmtime reports.
fn classify_trap(error: &wasmtime::Error, state: &JobState, limits: &JobLimits) -> JobError {
    let timeout = limits.timeout;
    if let Some(interrupted) = error.downcast_ref::<Interrupted>() {
        return match interrupted {
            Interrupted::Deadline => JobError::Deadline { timeout },
            Interrupted::Cancelled => JobError::Cancelled {
                reason: "cancel requested".into(),
            },
        };
    }
    if let Some(exceeded) = error.downcast_ref::<OutputLimitExceeded>() {
        return output_limit(*exceeded);
    }
    if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return JobError::Capacity(format!("{error:#}"));
    }
    if state.limiter.memory_hit() {
        return JobError::MemoryLimit {
            limit_mib: (state.limiter.memory_bytes() >> 20) as u64,
        };
    }
    if let Some(exceeded) = resource_limit(error, limits) {
        return exceeded;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => JobError::StackOverflow,
        Some(Trap::Interrupt) => JobError::Deadline { timeout },
        Some(trap) => {
            let message = match state.log.stderr_summary() {
                Some(said) => format!("{trap} ({said})"),
                None => trap.to_string(),
            };
            JobError::Trap { message }
        }
        None => JobError::Host(format!("{error:#}")),
    }
}
