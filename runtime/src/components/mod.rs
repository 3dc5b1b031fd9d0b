//! The component store: components identified by the sha256 of their bytes,
//! validated, classified (`interface.rs`), compiled once and cached in
//! memory and on disk (`cache.rs`).
//!
//! Loading is synchronous and may compile (tens of ms): async callers run it
//! on a blocking thread.

mod cache;
mod digest;
mod interface;
pub mod signing;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::component::Component;
use wasmtime::wasmparser::Parser;

pub use cache::ArtifactCache;
pub use digest::Digest;
pub use interface::{ImportKind, Interface, InterfaceError, PACKAGE, PACKAGE_VERSION};

use crate::sandbox::engine::SandboxEngine;

/// A component that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error("component {digest:?} is not a WebAssembly binary (it starts with {head:?})")]
    NotWasm {
        /// The bytes' digest.
        digest: Digest,
        /// The first bytes, for recognising what it is instead.
        head: String,
    },
    /// A core module, not a component.
    #[error(
        "component {digest:?} is a core WebAssembly module, not a component: build handlers for wasm32-wasip2 (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule {
        /// The bytes' digest.
        digest: Digest,
    },
    /// wasmtime rejected it (malformed, invalid, or uses unsupported features).
    #[error("component {digest:?} is not a valid component: {message}")]
    Invalid {
        /// The bytes' digest.
        digest: Digest,
        /// wasmtime's reason.
        message: String,
    },
    /// Its imports or exports do not fit the handler world.
    #[error("component {digest:?} {source}")]
    Interface {
        /// The bytes' digest.
        digest: Digest,
        /// What does not fit.
        source: InterfaceError,
    },
}

/// A validated, compiled component.
pub struct LoadedComponent {
    /// The sha256 of its bytes.
    pub digest: Digest,
    /// Size of its bytes.
    pub size: usize,
    /// The compiled component.
    pub component: Component,
    /// Its imports and exports, classified.
    pub interface: Interface,
}

/// Counters that show where loads were served from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Loads that compiled the component.
    pub compiled: u64,
    /// Loads served by deserializing a cached artifact from disk.
    pub from_disk: u64,
    /// Loads served from memory (already loaded by this process).
    pub from_memory: u64,
}

/// Loads components once per process and compiles each at most once per
/// machine.
pub struct ComponentStore {
    engine: SandboxEngine,
    cache: Option<ArtifactCache>,
    loaded: Mutex<HashMap<Digest, Arc<LoadedComponent>>>,
    compiled: AtomicU64,
    from_disk: AtomicU64,
    from_memory: AtomicU64,
}

impl ComponentStore {
    /// A store compiling for `engine`, caching artifacts in `cache_dir` when
    /// given.
    pub fn new(engine: SandboxEngine, cache_dir: Option<&Path>) -> std::io::Result<ComponentStore> {
        let cache = cache_dir
            .map(|dir| ArtifactCache::open(dir, engine.compatibility()))
            .transpose()?;
        Ok(ComponentStore {
            engine,
            cache,
            loaded: Mutex::default(),
            compiled: AtomicU64::new(0),
            from_disk: AtomicU64::new(0),
            from_memory: AtomicU64::new(0),
        })
    }

    /// Read and load a component file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedComponent>, ComponentError> {
        let bytes = std::fs::read(path).map_err(|source| ComponentError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Load a component from its bytes: from memory if this process has it,
    /// else from the disk cache, else by compiling (and caching) it.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedComponent>, ComponentError> {
        let digest = Digest::of(bytes);
        if let Some(loaded) = self.loaded.lock().expect("component map poisoned").get(&digest) {
            self.from_memory.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::clone(loaded));
        }
        check_is_component(&digest, bytes)?;
        let engine = self.engine.engine();
        let component = match self.cache.as_ref().and_then(|cache| cache.load(engine, &digest)) {
            Some(component) => {
                self.from_disk.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(digest = %digest, "component loaded from compiled cache");
                component
            }
            None => {
                let started = std::time::Instant::now();
                let component = Component::new(engine, bytes).map_err(|err| ComponentError::Invalid {
                    digest,
                    message: format!("{err:#}"),
                })?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(digest = %digest, elapsed_ms = started.elapsed().as_millis() as u64, "component compiled");
                if let Some(cache) = &self.cache {
                    cache.store(&digest, &component);
                }
                component
            }
        };
        let interface =
            Interface::of(&component, engine).map_err(|source| ComponentError::Interface { digest, source })?;
        let loaded = Arc::new(LoadedComponent {
            digest,
            size: bytes.len(),
            component,
            interface,
        });
        self.loaded
            .lock()
            .expect("component map poisoned")
            .insert(digest, Arc::clone(&loaded));
        Ok(loaded)
    }

    /// Where loads have been served from so far.
    pub fn stats(&self) -> LoadStats {
        LoadStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            from_disk: self.from_disk.load(Ordering::Relaxed),
            from_memory: self.from_memory.load(Ordering::Relaxed),
        }
    }

    /// The engine components are compiled for.
    pub fn engine(&self) -> &SandboxEngine {
        &self.engine
    }
}

/// Tell "not wasm" and "a core module" apart from a broken component, so
/// each gets an error that says what to do.
fn check_is_component(digest: &Digest, bytes: &[u8]) -> Result<(), ComponentError> {
    if Parser::is_component(bytes) {
        return Ok(());
    }
    if Parser::is_core_wasm(bytes) {
        return Err(ComponentError::CoreModule { digest: *digest });
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(16)]).into_owned();
    Err(ComponentError::NotWasm { digest: *digest, head })
}
