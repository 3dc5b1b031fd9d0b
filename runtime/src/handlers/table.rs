//! The node's handlers: job type → component, loaded (and compiled, or
//! taken from the compiled cache) at start-up, so a bad configured
//! component stops the node before it takes any job rather than failing
//! each one; or → a native handler, for the few jobs that act on the node
//! itself (`APPLY_DEVICE_CONFIG`) and so cannot run in the sandbox.
//!
//! The table is shared by every clone and can be changed while jobs run
//! (components published to the fleet, `crate::handlers::fleet`): a swap replaces
//! one entry under a write lock; a job holds the `Arc` of the component it
//! started with, so it finishes on that version.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

use citadel_collector::status::{HandlerOrigin, HandlerStatus, RefusedHandler};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::components::{ComponentError, ComponentStore, LoadedComponent};
use crate::handlers::admission::Refused;
use crate::job::{Chunk, JobError, JobSpec, Refusal};
use crate::policy::Policy;

/// A job as a native handler gets it.
pub struct NativeJob<'a> {
    /// The job.
    pub spec: JobSpec,
    /// Where its chunks go, in order (`None`: nobody listens).
    pub chunks: Option<mpsc::Sender<Chunk>>,
    /// Fires when the job is cancelled or the node stops it.
    pub cancel: &'a CancellationToken,
}

/// A job handler built into the node.
pub trait NativeHandler: Send + Sync {
    /// Run `job`; `Ok` is its result.
    fn run<'a>(&'a self, job: NativeJob<'a>) -> BoxFuture<'a, Result<serde_json::Value, JobError>>;
}

/// What runs a job type.
#[derive(Clone)]
pub enum Handler {
    /// A Wasm component, in the sandbox.
    Component(Arc<LoadedComponent>),
    /// Code of the node itself.
    Native(Arc<dyn NativeHandler>),
}

/// A handler that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("handler for job type `{job_type}`: {source}")]
pub struct HandlerLoadError {
    /// The job type.
    pub job_type: String,
    /// Why its component is unusable.
    pub source: ComponentError,
}

/// Finds the published component a job pins (`"component": "sha256:…"`).
pub trait PinResolver: Send + Sync {
    /// Component `digest` as published for `job_type`, checked and loaded.
    fn resolve<'a>(
        &'a self,
        job_type: &'a str,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<Arc<LoadedComponent>, Refused>>;
}

#[derive(Default)]
struct Table {
    by_type: BTreeMap<String, (Handler, HandlerOrigin)>,
    /// The latest component refused for a job type, and why.
    refused: BTreeMap<String, RefusedHandler>,
}

/// Job type → handler, shared by its clones.
#[derive(Default, Clone)]
pub struct HandlerTable {
    table: Arc<RwLock<Table>>,
    pins: Arc<OnceLock<Arc<dyn PinResolver>>>,
}

impl HandlerTable {
    fn of(by_type: BTreeMap<String, (Handler, HandlerOrigin)>) -> HandlerTable {
        HandlerTable {
            table: Arc::new(RwLock::new(Table {
                by_type,
                refused: BTreeMap::new(),
            })),
            pins: Arc::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().expect("handler table poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().expect("handler table poisoned")
    }

    /// Load every configured handler.
    pub fn load(
        store: &ComponentStore,
        handlers: &BTreeMap<String, PathBuf>,
    ) -> Result<HandlerTable, HandlerLoadError> {
        let mut by_type = BTreeMap::new();
        for (job_type, path) in handlers {
            let component = store.load_file(path).map_err(|source| HandlerLoadError {
                job_type: job_type.clone(),
                source,
            })?;
            by_type.insert(job_type.clone(), (Handler::Component(component), HandlerOrigin::Config));
        }
        Ok(HandlerTable::of(by_type))
    }

    /// A table of native handlers only.
    pub fn native(handlers: impl IntoIterator<Item = (String, Arc<dyn NativeHandler>)>) -> HandlerTable {
        HandlerTable::of(
            handlers
                .into_iter()
                .map(|(job_type, handler)| (job_type, (Handler::Native(handler), HandlerOrigin::Native)))
                .collect(),
        )
    }

    /// Resolve jobs' pins with `resolver` (set once, by the fleet follower).
    pub fn resolve_pins_with(&self, resolver: Arc<dyn PinResolver>) {
        let _ = self.pins.set(resolver);
    }

    /// The component `job`'s payload pins, if it pins one: checked against
    /// the tenant's `allow_pin` and resolved among the job type's
    /// published components.
    pub async fn pinned(&self, job: &JobSpec, policy: &Policy) -> Result<Option<Arc<LoadedComponent>>, Refusal> {
        let Some(digest) = pinned_digest(&job.payload) else {
            return Ok(None);
        };
        let refuse = |reason: String| Refusal::Pin {
            digest: digest.clone(),
            reason,
        };
        let (tenant, tenant_policy) = policy.tenant(&job.tenant);
        if !tenant_policy.allow_pin {
            return Err(refuse(format!("tenant `{tenant}` may not pin components (allow_pin)")));
        }
        let resolver = self.pins.get().ok_or_else(|| {
            refuse("this node does not follow the published handlers (redis_url, components.fleet)".into())
        })?;
        resolver
            .resolve(&job.job_type, &digest)
            .await
            .map(Some)
            .map_err(|refused| refuse(refused.to_string()))
    }

    /// The handler of `job_type` now.
    pub fn get(&self, job_type: &str) -> Option<Handler> {
        self.read().by_type.get(job_type).map(|(handler, _)| handler.clone())
    }

    /// Make `component` (from `source`) the handler of `job_type` from the
    /// next job on, clearing a refusal; the handler it replaces, if any.
    pub fn swap(&self, job_type: &str, component: Arc<LoadedComponent>, source: HandlerOrigin) -> Option<Handler> {
        let mut table = self.write();
        table.refused.remove(job_type);
        table
            .by_type
            .insert(job_type.to_string(), (Handler::Component(component), source))
            .map(|(handler, _)| handler)
    }

    /// Put `handler` back as the handler of `job_type` (what the
    /// configuration says), clearing a refusal.
    pub fn restore(&self, job_type: &str, handler: Handler) {
        let source = match handler {
            Handler::Component(_) => HandlerOrigin::Config,
            Handler::Native(_) => HandlerOrigin::Native,
        };
        let mut table = self.write();
        table.refused.remove(job_type);
        table.by_type.insert(job_type.to_string(), (handler, source));
    }

    /// Stop handling `job_type` (its jobs fail as unsupported from now on).
    pub fn remove(&self, job_type: &str) -> Option<Handler> {
        let mut table = self.write();
        table.refused.remove(job_type);
        table.by_type.remove(job_type).map(|(handler, _)| handler)
    }

    /// Record that a component for `job_type` was refused (status
    /// `handlers[].refused`); the handler in force stays.
    pub fn refuse(&self, job_type: &str, digest: &str, reason: &str) {
        self.write().refused.insert(
            job_type.to_string(),
            RefusedHandler {
                digest: digest.to_string(),
                reason: reason.to_string(),
            },
        );
    }

    /// The job types handled.
    pub fn types(&self) -> Vec<String> {
        self.read().by_type.keys().cloned().collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.read().by_type.is_empty()
    }

    /// Every job type's handler (and refusal), for status `handlers[]`.
    pub fn statuses(&self) -> Vec<HandlerStatus> {
        let table = self.read();
        let mut types: Vec<&String> = table.by_type.keys().chain(table.refused.keys()).collect();
        types.sort();
        types.dedup();
        types
            .into_iter()
            .map(|job_type| {
                let (digest, source) = match table.by_type.get(job_type) {
                    Some((Handler::Component(component), source)) => (Some(component.digest.to_string()), *source),
                    Some((Handler::Native(_), source)) => (None, *source),
                    None => (None, HandlerOrigin::None),
                };
                HandlerStatus {
                    job_type: job_type.clone(),
                    digest,
                    source,
                    refused: table.refused.get(job_type).cloned(),
                }
            })
            .collect()
    }
}

/// `payload.component`, when the payload is an object that has one (the
/// payload is parsed only when it mentions the key).
fn pinned_digest(payload: &str) -> Option<String> {
    if !payload.contains("\"component\"") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    value.get("component")?.as_str().map(String::from)
}
