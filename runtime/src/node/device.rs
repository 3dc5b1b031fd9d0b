//! `APPLY_DEVICE_CONFIG` jobs (queue `jobs:v1:config`): the control plane
//! configures the node. A job's configuration is validated against this
//! node, written atomically to the state directory (the previous version
//! kept), then applied at once — display name and tags in status and job
//! events, which
//! services run, health probing, the high-temperature alert — and confirmed
//! with a status entry carrying `status configured`. An invalid one is an
//! `error` event and changes nothing.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::Telemetry;
use crate::config::{Config, DeviceConfig, DeviceStore};
use crate::handlers::{NativeHandler, NativeJob};
use crate::job::{HandlerErrorKind, JobError, JobSpec};
use crate::services::Supervisor;
use crate::sources::redis::Worker;

/// The job type.
pub const APPLY_DEVICE_CONFIG: &str = "APPLY_DEVICE_CONFIG";

/// Applies device configuration to this node.
pub struct DeviceConfigurator {
    store: DeviceStore,
    /// Workers whose job events carry the node's name.
    workers: Mutex<Vec<Worker>>,
    high_temp_celsius: u32,
    supervisor: Arc<Supervisor>,
    telemetry: Arc<Telemetry>,
}

impl DeviceConfigurator {
    /// The configurator of the node `config` describes, acting on its
    /// running services and telemetry.
    pub fn new(config: &Config, supervisor: Arc<Supervisor>, telemetry: Arc<Telemetry>) -> DeviceConfigurator {
        DeviceConfigurator {
            store: DeviceStore::new(&config.state_dir()),
            workers: Mutex::default(),
            high_temp_celsius: config.telemetry.high_temp_celsius,
            supervisor,
            telemetry,
        }
    }

    /// Rename `worker`'s job events too when the device name changes.
    pub fn renames(&self, worker: &Worker) {
        self.workers.lock().expect("workers poisoned").push(worker.clone());
    }

    async fn apply(&self, job: JobSpec) -> Result<Value, JobError> {
        let invalid = |message: String| JobError::Handler {
            kind: HandlerErrorKind::InvalidInput,
            message,
        };
        let payload: Value =
            serde_json::from_str(&job.payload).map_err(|err| invalid(format!("the payload is not JSON: {err}")))?;
        let device = DeviceConfig::from_payload(&payload).map_err(invalid)?;
        let services = self.supervisor.names();
        device.validate(&services).map_err(invalid)?;
        let (store, saved) = (self.store.clone(), device.clone());
        let written = tokio::task::spawn_blocking(move || store.save(&saved))
            .await
            .unwrap_or_else(|err| Err(std::io::Error::other(err)));
        written.map_err(|err| JobError::Handler {
            kind: HandlerErrorKind::Failed,
            message: format!(
                "cannot write {} (node.state_dir): {err}; the node keeps its previous configuration",
                self.store.path().display()
            ),
        })?;
        let (running, stopped): (Vec<String>, Vec<String>) =
            services.into_iter().partition(|service| device.runs(service));
        self.supervisor.set_running(&running);
        self.supervisor.set_health_checks(device.health_monitoring_enabled);
        self.telemetry
            .alert_on_high_temp(device.alert_on_high_temp.then_some(self.high_temp_celsius));
        for worker in self.workers.lock().expect("workers poisoned").iter() {
            worker.rename(&device.device_name);
        }
        let reported = serde_json::to_value(&device).ok();
        self.telemetry
            .set_identity(device.device_name.clone(), device.custom_tags.clone(), reported);
        tracing::info!(
            job_id = %job.id,
            device_name = %device.device_name,
            tags = ?device.custom_tags,
            running = ?running,
            stopped = ?stopped,
            file = %self.store.path().display(),
            "device configuration applied"
        );
        self.telemetry.publish_configured(&job.id).await;
        Ok(json!({
            "status": "configured",
            "deviceName": device.device_name,
            "services": { "running": running, "stopped": stopped },
            "file": self.store.path(),
        }))
    }
}

impl NativeHandler for DeviceConfigurator {
    fn run<'a>(&'a self, job: NativeJob<'a>) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(self.apply(job.spec))
    }
}
