//! `components.dir`: a watched directory of components, the single node's
//! way to change handlers without a restart (and without Redis).
//!
//! `<job type>.wasm` serves job type `<job type>`. The directory is scanned
//! at start (before the first job) and every `components.dir_poll_ms`: a
//! file that is new or changed (modification time or size) is read, and if
//! its digest is new it gets the checks of a published component — valid,
//! fits the handler world, provided capabilities, granted to some tenant —
//! and is swapped in between jobs (running jobs finish on the component
//! they started with). A file failing a check is refused (log line, status
//! `handlers[].refused`) and the handler in force stays. A removed file
//! gives its job type back to the configured handler, or removes it. The
//! directory is trusted as the node's configuration is: no signatures here
//! (`trusted_keys` applies to the fleet's registry). Write files atomically
//! (write elsewhere, then rename) so a scan never reads half a file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::components::{ComponentStore, Digest};
use crate::handlers::admission;
use citadel_collector::status::HandlerOrigin;

use crate::handlers::{Handler, HandlerTable};
use crate::node::Telemetry;
use crate::policy::Policy;

/// What a scan saw of one file.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    digest: Digest,
}

/// The watcher of one directory.
pub struct HandlerDir {
    dir: PathBuf,
    poll: Duration,
    store: Arc<ComponentStore>,
    policy: Policy,
    table: HandlerTable,
    /// The configured handlers, restored when their file goes away.
    configured: BTreeMap<String, Handler>,
    seen: Mutex<BTreeMap<String, Seen>>,
}

impl HandlerDir {
    /// A watcher of `dir` swapping its components into `table` (whose
    /// current handlers are the configured ones).
    pub fn new(
        dir: PathBuf,
        poll: Duration,
        store: Arc<ComponentStore>,
        policy: Policy,
        table: HandlerTable,
    ) -> HandlerDir {
        let configured = table
            .types()
            .into_iter()
            .filter_map(|job_type| Some((job_type.clone(), table.get(&job_type)?)))
            .collect();
        HandlerDir {
            dir,
            poll,
            store,
            policy,
            table,
            configured,
            seen: Mutex::default(),
        }
    }

    /// Look at the directory once and apply what changed. Blocking (it
    /// reads files and may compile).
    pub fn scan(&self) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(dir = %self.dir.display(), error = %err, "cannot read the components directory");
                return;
            }
        };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(job_type) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".wasm"))
                .filter(|job_type| !job_type.is_empty() && !job_type.starts_with('.'))
                .map(String::from)
            else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            present.push(job_type.clone());
            let (modified, len) = (meta.modified().ok(), meta.len());
            let known = self.seen.lock().expect("seen poisoned").get(&job_type).cloned();
            if known
                .as_ref()
                .is_some_and(|seen| seen.modified == modified && seen.len == len)
            {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "cannot read a component in the components directory");
                    continue;
                }
            };
            let digest = Digest::of(&bytes);
            self.seen
                .lock()
                .expect("seen poisoned")
                .insert(job_type.clone(), Seen { modified, len, digest });
            if known.is_some_and(|seen| seen.digest == digest) {
                continue;
            }
            match admission::admit(&self.store, &self.policy, &bytes) {
                Ok(component) => {
                    self.table.swap(&job_type, component, HandlerOrigin::Dir);
                    tracing::info!(job_type, %digest, file = %path.display(), "handler swapped: the next job of this type runs the directory's component");
                }
                Err(refused) => {
                    let reason = refused.to_string();
                    tracing::error!(job_type, %digest, file = %path.display(), reason, "component in the components directory refused; the handler in force stays");
                    self.table.refuse(&job_type, &digest.to_string(), &reason);
                }
            }
        }
        let gone: Vec<String> = self
            .seen
            .lock()
            .expect("seen poisoned")
            .keys()
            .filter(|job_type| !present.contains(job_type))
            .cloned()
            .collect();
        for job_type in gone {
            self.seen.lock().expect("seen poisoned").remove(&job_type);
            match self.configured.get(&job_type) {
                Some(handler) => {
                    self.table.restore(&job_type, handler.clone());
                    tracing::info!(job_type, "component file removed: back to the configured handler");
                }
                None => {
                    self.table.remove(&job_type);
                    tracing::info!(job_type, "component file removed: the job type is no longer handled");
                }
            }
        }
    }

    /// Scan every poll interval until `stop`, reporting the handlers to
    /// `telemetry` after each scan.
    pub async fn watch(self: Arc<Self>, telemetry: Arc<Telemetry>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
            let scanner = Arc::clone(&self);
            if tokio::task::spawn_blocking(move || scanner.scan()).await.is_err() {
                tracing::error!("the components directory scan failed");
            }
            telemetry.set_handlers(self.table.statuses());
        }
    }
}
