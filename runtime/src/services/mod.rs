//! Native services the node runs (`[[services]]`): each started inside its
//! own cgroup with its limits, its output in capped log files, health-checked
//! over HTTP, restarted with backoff by its restart policy, and stopped
//! gracefully (SIGTERM, then SIGKILL to everything left in its group) when
//! the node stops or device configuration says so.
//!
//! - [`cgroup`]: the service's cgroup (v1 or v2);
//! - [`launch`]: the launcher that joins the cgroup before exec;
//! - [`logs`]: size-capped stdout/stderr files;
//! - [`supervise`]: one service's lifecycle.
//!
//! When cgroups are not writable (not root, a read-only hierarchy), services
//! start without limits and their status and the log say so.

pub mod cgroup;
pub mod launch;
pub mod logs;
mod supervise;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use citadel_collector::Watch;
use citadel_collector::status::{ServiceHealth, ServiceState, ServiceStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::cgroup::ServiceCgroup;
use crate::config::{Config, ServiceSettings};

/// How services run on this node.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// The citadel binary, started as each service's launcher.
    pub launcher: PathBuf,
    /// The cgroup services go under (`<slice>/<group>/<name>`).
    pub slice: String,
    /// Where service logs go.
    pub log_dir: PathBuf,
    /// How often health is probed.
    pub health_poll: Duration,
    /// Longest health probe.
    pub probe_timeout: Duration,
    /// Whether health is probed at all (`healthMonitoringEnabled`).
    pub health_checks: bool,
}

impl SupervisorSettings {
    /// From the node's configuration, with the running binary as launcher.
    pub fn from_config(config: &Config) -> Result<SupervisorSettings, String> {
        let launcher = std::env::current_exe()
            .map_err(|err| format!("cannot find the citadel binary to launch services with: {err}"))?;
        Ok(SupervisorSettings {
            launcher,
            slice: config.cgroup_slice().to_string(),
            log_dir: config.state_dir().join("services"),
            health_poll: Duration::from_millis(config.telemetry.service_poll_ms),
            probe_timeout: Duration::from_millis(config.telemetry.probe_timeout_ms),
            health_checks: config
                .device
                .as_ref()
                .is_none_or(|device| device.health_monitoring_enabled),
        })
    }
}

/// What one service is doing, as status reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RunState {
    status: ServiceState,
    health: ServiceHealth,
    pid: Option<u32>,
    cgroup: Option<String>,
    restarts: u32,
    last_exit: Option<String>,
    warning: Option<String>,
}

/// One supervised service.
struct Service {
    settings: ServiceSettings,
    state: Mutex<RunState>,
    /// Its cgroup, once placed.
    placed: OnceLock<Arc<ServiceCgroup>>,
    /// Whether it should run (device configuration can change it).
    wanted: watch::Sender<bool>,
}

impl Service {
    fn status(&self) -> ServiceStatus {
        let state = self.state.lock().expect("service state poisoned").clone();
        ServiceStatus {
            name: self.settings.name.clone(),
            kind: "native".into(),
            status: state.status,
            port: self.settings.port,
            health: state.health,
            models: self.settings.models.clone(),
            placement: Some(state.cgroup.clone().unwrap_or_else(|| "plain".into())),
            pid: state.pid,
            restarts: Some(state.restarts),
            last_exit: state.last_exit,
            warning: state.warning,
            backends: Vec::new(),
        }
    }
}

/// The node's services, supervised.
pub struct Supervisor {
    services: Vec<Arc<Service>>,
    health_checks: Arc<AtomicBool>,
    changed: watch::Sender<()>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Supervisor {
    /// Start supervising `services` (those with `autostart` start now).
    pub fn start(services: &[ServiceSettings], settings: SupervisorSettings) -> Supervisor {
        let (changed, _) = watch::channel(());
        let health_checks = Arc::new(AtomicBool::new(settings.health_checks));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let settings = Arc::new(settings);
        let services: Vec<Arc<Service>> = services
            .iter()
            .map(|service| {
                Arc::new(Service {
                    settings: service.clone(),
                    state: Mutex::new(RunState::default()),
                    placed: OnceLock::new(),
                    wanted: watch::Sender::new(service.autostart),
                })
            })
            .collect();
        for service in &services {
            tasks.spawn(supervise::supervise(
                Arc::clone(service),
                Arc::clone(&settings),
                changed.clone(),
                stop.clone(),
                Arc::clone(&health_checks),
            ));
        }
        tasks.close();
        Supervisor {
            services,
            health_checks,
            changed,
            stop,
            tasks,
        }
    }

    /// Whether there is anything to supervise.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The services' names.
    pub fn names(&self) -> Vec<String> {
        self.services
            .iter()
            .map(|service| service.settings.name.clone())
            .collect()
    }

    /// The services that should be running now.
    pub fn wanted(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|service| *service.wanted.borrow())
            .map(|service| service.settings.name.clone())
            .collect()
    }

    /// Every service as status reports it.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.services.iter().map(|service| service.status()).collect()
    }

    /// What the collector should watch: each running service's process and cgroup.
    pub fn watches(&self) -> Vec<Watch> {
        self.services
            .iter()
            .filter_map(|service| {
                let state = service.state.lock().expect("service state poisoned");
                state.pid.map(|pid| Watch {
                    name: service.settings.name.clone(),
                    pid: Some(pid),
                    cgroup: state.cgroup.clone(),
                })
            })
            .collect()
    }

    /// Fires whenever a service's state changes.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Have exactly the services in `running` run (the others stop);
    /// unknown names are the caller's to reject first.
    pub fn set_running(&self, running: &[String]) {
        for service in &self.services {
            // Always announced: a wanted service that exited (and is not
            // restarted by its policy) starts again.
            service.wanted.send_replace(running.contains(&service.settings.name));
        }
    }

    /// Probe the services' health (or stop probing: health `unknown`).
    pub fn set_health_checks(&self, on: bool) {
        self.health_checks.store(on, Ordering::Relaxed);
    }

    /// Kill every service now, without grace (the node is exiting at once).
    pub fn kill_now(&self) {
        for service in &self.services {
            match service.placed.get() {
                Some(cgroup) => cgroup.kill_all(Duration::from_secs(1)),
                None => {
                    let pid = service.state.lock().expect("service state poisoned").pid;
                    if let Some(group) = pid.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
                        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                    }
                }
            }
        }
    }

    /// Stop every service gracefully and wait for them.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}
