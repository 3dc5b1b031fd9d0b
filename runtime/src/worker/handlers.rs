//! The node's handlers: job type → component, loaded (and compiled, or
//! taken from the compiled cache) once at start-up, so a bad component
//! stops the node before it takes any job rather than failing each one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::components::{ComponentError, ComponentStore, LoadedComponent};

/// A handler that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("handler for job type `{job_type}`: {source}")]
pub struct HandlerLoadError {
    /// The job type.
    pub job_type: String,
    /// Why its component is unusable.
    pub source: ComponentError,
}

/// Job type → loaded component.
#[derive(Default)]
pub struct HandlerTable {
    by_type: BTreeMap<String, Arc<LoadedComponent>>,
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
            by_type.insert(job_type.clone(), component);
        }
        Ok(HandlerTable { by_type })
    }

    /// The component for `job_type`.
    pub fn get(&self, job_type: &str) -> Option<&Arc<LoadedComponent>> {
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
