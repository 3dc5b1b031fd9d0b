//! The node's handlers: job type → component, loaded (and compiled, or
//! taken from the compiled cache) at start-up, so a bad configured
//! component stops the node before it takes any job rather than failing
//! each one; or → a native handler, for the few jobs that act on the node
//! itself (`APPLY_DEVICE_CONFIG`) and so cannot run in the sandbox.
//!
//! The table is shared by every clone and can be changed while jobs run
//! (components published to the fleet, `crate::fleet`): a swap replaces
//! one entry under a write lock; a job holds the `Arc` of the component it
//! started with, so it finishes on that version.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

use futures_util::future::BoxFuture;

use crate::components::{ComponentError, ComponentStore, LoadedComponent};
use crate::job::{JobError, JobSpec, Refusal};
use crate::policy::Policy;

/// A job handler built into the node.
pub trait NativeHandler: Send + Sync {
    /// Run `job`; `Ok` is its result.
    fn run(&self, job: JobSpec) -> BoxFuture<'_, Result<serde_json::Value, JobError>>;
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
    fn resolve<'a>(&'a self, job_type: &'a str, digest: &'a str)
    -> BoxFuture<'a, Result<Arc<LoadedComponent>, String>>;
}

/// Job type → handler, shared by its clones.
#[derive(Default, Clone)]
pub struct HandlerTable {
    by_type: Arc<RwLock<BTreeMap<String, Handler>>>,
    pins: Arc<OnceLock<Arc<dyn PinResolver>>>,
}

impl HandlerTable {
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
            by_type.insert(job_type.clone(), Handler::Component(component));
        }
        Ok(HandlerTable {
            by_type: Arc::new(RwLock::new(by_type)),
            pins: Arc::default(),
        })
    }

    /// A table of native handlers only.
    pub fn native(handlers: impl IntoIterator<Item = (String, Arc<dyn NativeHandler>)>) -> HandlerTable {
        let by_type = handlers
            .into_iter()
            .map(|(job_type, handler)| (job_type, Handler::Native(handler)))
            .collect();
        HandlerTable {
            by_type: Arc::new(RwLock::new(by_type)),
            pins: Arc::default(),
        }
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
        resolver.resolve(&job.job_type, &digest).await.map(Some).map_err(refuse)
    }

    /// The handler of `job_type` now.
    pub fn get(&self, job_type: &str) -> Option<Handler> {
        self.by_type
            .read()
            .expect("handler table poisoned")
            .get(job_type)
            .cloned()
    }

    /// Make `component` the handler of `job_type` from the next job on; the
    /// component it replaces, if any.
    pub fn swap(&self, job_type: &str, component: Arc<LoadedComponent>) -> Option<Handler> {
        self.by_type
            .write()
            .expect("handler table poisoned")
            .insert(job_type.to_string(), Handler::Component(component))
    }

    /// The job types handled.
    pub fn types(&self) -> Vec<String> {
        self.by_type
            .read()
            .expect("handler table poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_type.read().expect("handler table poisoned").is_empty()
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
