//! The node's handlers: job type → component, loaded (and compiled, or
//! taken from the compiled cache) once at start-up, so a bad component
//! stops the node before it takes any job rather than failing each one;
//! or → a native handler, for the few jobs that act on the node itself
//! (`APPLY_DEVICE_CONFIG`) and so cannot run in the sandbox.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::components::{ComponentError, ComponentStore, LoadedComponent};
use crate::job::{JobError, JobSpec};

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

/// Job type → handler.
#[derive(Default, Clone)]
pub struct HandlerTable {
    by_type: BTreeMap<String, Handler>,
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
        Ok(HandlerTable { by_type })
    }

    /// A table of native handlers only.
    pub fn native(handlers: impl IntoIterator<Item = (String, Arc<dyn NativeHandler>)>) -> HandlerTable {
        HandlerTable {
            by_type: handlers
                .into_iter()
                .map(|(job_type, handler)| (job_type, Handler::Native(handler)))
                .collect(),
        }
    }

    /// The handler of `job_type`.
    pub fn get(&self, job_type: &str) -> Option<&Handler> {
        self.by_type.get(job_type)
    }

    /// The job types handled.
    pub fn types(&self) -> Vec<String> {
        self.by_type.keys().cloned().collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}
