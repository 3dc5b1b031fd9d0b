//! The node: [`Node`] assembles it from the configuration and runs it
//! (`assembly.rs`); beside its sources run its telemetry (snapshots pushed
//! to Redis and an HTTP endpoint, on an interval and on change), its
//! metrics, its status server (`/health`, `/ping`, `/status`, `/metrics`,
//! `/events`), and its supervised native services.
//!
//! - [`telemetry`]: the status loop and what the status server serves;
//! - [`feed`]: the dispatcher's job observer (metrics, live events, triggers);
//! - [`metrics`]: the Prometheus registry;
//! - [`device`]: `APPLY_DEVICE_CONFIG`, the control plane configuring the node;
//! - [`events`]: the node's fleet events (`citadel:v1:events`: started,
//!   stopping, handlers, services, engines, GPUs) and heartbeats;
//! - `containers`: the node's Docker containers as services.
//!
//! [`NodeServices::start`] wires telemetry and services from the
//! configuration; the node runs them for as long as its sources run.

mod assembly;
mod containers;
pub mod device;
pub mod events;
pub mod feed;
pub mod metrics;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use citadel_collector::status::{NodeMode, ServiceHealth};
use citadel_collector::{Collector, CollectorConfig};
use citadel_transports::redis as transport;
use citadel_transports::status::{Access, HttpPublisher, HttpPublisherConfig, RedisStatusPublisher, StatusServer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use assembly::{BuildError, Node, Sources};
pub use feed::JobFeed;
pub use metrics::Metrics;
pub use telemetry::{Telemetry, Timings, identity};

use crate::capabilities::inference::Engines;
use crate::config::{Config, TelemetryConfig};
use crate::dispatch::Dispatcher;
use crate::services::{Supervisor, SupervisorSettings};
use crate::sources::redis::Worker;
use events::NodeEvents;

/// Telemetry that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The status server's address is taken or not ours.
    #[error("cannot listen on {addr} for the status server (telemetry.status_addr, --status-addr): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP publisher's spool cannot be opened.
    #[error("cannot open the status spool {} (telemetry.spool_dir): {source}", path.display())]
    Spool {
        /// The spool file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Docker API socket is unusable.
    #[error("cannot use the Docker API (docker.socket): {0}")]
    Docker(String),
    /// The services cannot be supervised.
    #[error("cannot run [[services]]: {0}")]
    Services(String),
    /// `redis_url` or `[redis]` is unusable.
    #[error(transparent)]
    Redis(#[from] transport::EndpointError),
}

/// The collector set up as `[telemetry]` says.
pub async fn collector(telemetry: &TelemetryConfig) -> Collector {
    Collector::new(CollectorConfig {
        probe_timeout: Duration::from_millis(telemetry.probe_timeout_ms),
        gpu_source: telemetry.gpu_source,
        smi: telemetry.nvidia_smi.clone(),
        key_paths: telemetry.key_paths.clone(),
        ..CollectorConfig::default()
    })
    .await
}

/// Health-check the engines every `poll` and report them as services (a
/// change publishes status at once).
async fn watch_engines(engines: Arc<Engines>, telemetry: Arc<Telemetry>, poll: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Vec<(String, ServiceHealth)> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let services = tokio::select! {
            _ = stop.cancelled() => return,
            services = engines.health() => services,
        };
        let now: Vec<(String, ServiceHealth)> = services
            .iter()
            .map(|service| (service.name.clone(), service.health))
            .collect();
        for (name, health) in &now {
            let before = last.iter().find(|(known, _)| known == name).map(|(_, health)| *health);
            if before.is_some_and(|before| before != *health) || (before.is_none() && *health != ServiceHealth::Ok) {
                tracing::warn!(engine = %name, health = health.as_str(), "inference engine health changed");
            }
        }
        last = now;
        telemetry.set_services("inference", services);
    }
}

/// Watch the GPUs for XID errors (NVML only, with fleet events on) and
/// write each as `gpu.xid`; returns the watcher's stop flag.
fn watch_xid(telemetry: &Arc<Telemetry>) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    if !telemetry.events.enabled() || telemetry.gpu_source() != "nvml" {
        return stop;
    }
    match citadel_collector::gpu::xid::watch(Arc::clone(&stop)) {
        Ok(errors) => {
            let telemetry = Arc::clone(telemetry);
            // Ends when the watcher does (its stop flag set).
            std::thread::spawn(move || {
                while let Ok(error) = errors.recv() {
                    tracing::error!(gpu = error.index, uuid = %error.uuid, xid = ?error.xid, "GPU XID error");
                    telemetry.events.gpu_xid(&error);
                }
            });
        }
        Err(reason) => tracing::info!(%reason, "GPU XID errors are not watched"),
    }
    stop
}

/// Report the supervised services (and watch their processes and cgroups)
/// whenever one changes.
async fn watch_services(supervisor: Arc<Supervisor>, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    let mut changes = supervisor.subscribe();
    loop {
        telemetry.set_services("native", supervisor.statuses());
        telemetry.set_watches(supervisor.watches());
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// The node's telemetry and services, running.
pub struct NodeServices {
    /// The telemetry (latest status, health, metrics, feed).
    pub telemetry: Arc<Telemetry>,
    /// The native services (`[[services]]`).
    pub supervisor: Arc<Supervisor>,
    /// Where the status server listens, when it runs.
    pub status_addr: Option<SocketAddr>,
    publishing: CancellationToken,
    status_loop: tokio::task::JoinHandle<()>,
    /// Stops the GPU XID watcher (when there is one).
    xid_stop: Arc<AtomicBool>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl NodeServices {
    /// Start telemetry for a node in `mode` running jobs through `dispatch`
    /// (observed from now on), from Redis with `worker`: the status loop,
    /// its publishers and the status server.
    pub async fn start(
        config: &Config,
        mode: NodeMode,
        dispatch: &Dispatcher,
        worker: Option<&Worker>,
    ) -> Result<NodeServices, NodeError> {
        let engines = Arc::clone(dispatch.executor().engines());
        let settings = &config.telemetry;
        let node_id = config.node_id();
        let redis = config.redis()?.map(|redis| {
            RedisStatusPublisher::new(
                redis.command_connection(),
                &node_id,
                config.device_code.clone(),
                settings.status_stream_maxlen,
            )
        });
        let http = match (settings.http_endpoint_for(&node_id), settings.spool_file()) {
            (Some(endpoint), Some(spool)) => {
                let publisher = HttpPublisher::start(HttpPublisherConfig {
                    endpoint,
                    token: settings.http_token.clone(),
                    queue: settings.http_queue,
                    spool: spool.clone(),
                    spool_max_bytes: settings.spool_max_bytes,
                    timeout: Duration::from_millis(settings.http_timeout_ms),
                })
                .map_err(|source| NodeError::Spool { path: spool, source })?;
                Some(publisher)
            }
            _ => None,
        };
        let server = if settings.status_server {
            let addr = settings.status_addr;
            Some(
                StatusServer::bind(
                    addr,
                    Access {
                        token: settings.status_token.clone(),
                        header_timeout: Duration::from_millis(settings.status_header_timeout_ms),
                    },
                )
                .await
                .map_err(|source| NodeError::Bind { addr, source })?,
            )
        } else {
            None
        };
        let timings = Timings {
            interval: Duration::from_secs(settings.status_interval_s),
            min_change_interval: Duration::from_millis(settings.min_change_interval_ms),
            gpu_poll: Duration::from_millis(settings.gpu_poll_ms),
            probe_timeout: Duration::from_millis(settings.probe_timeout_ms),
        };
        let identity = identity(config);
        let collector = collector(settings).await;
        let events = NodeEvents::new(
            worker.and_then(Worker::fleet_events).cloned(),
            &node_id,
            settings.high_temp_celsius,
        );
        let telemetry = Arc::new(Telemetry::new(
            identity,
            timings,
            mode,
            collector,
            worker.cloned(),
            redis,
            http,
            events,
        ));
        dispatch.observe(telemetry.job_feed());
        let high_temp_alert = config.device.as_ref().is_some_and(|device| device.alert_on_high_temp);
        telemetry.alert_on_high_temp(high_temp_alert.then_some(settings.high_temp_celsius));
        engines.observe(telemetry.job_feed());
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let supervisor = Arc::new(Supervisor::start(
            &config.services,
            SupervisorSettings::from_config(config).map_err(NodeError::Services)?,
        ));
        if !supervisor.is_empty() {
            tasks.spawn(watch_services(
                Arc::clone(&supervisor),
                Arc::clone(&telemetry),
                stop.clone(),
            ));
        }
        match config.docker.resolved_socket() {
            Some(socket) => {
                let client = citadel_transports::docker::DockerClient::new(&socket, config.docker.timeout())
                    .map_err(|err| NodeError::Docker(err.to_string()))?;
                let report = config
                    .docker
                    .report
                    .iter()
                    .filter_map(|pattern| glob::Pattern::new(pattern).ok())
                    .collect();
                let poll = Duration::from_millis(settings.service_poll_ms);
                tasks.spawn(containers::watch_containers(
                    client,
                    report,
                    Arc::clone(&telemetry),
                    poll,
                    stop.clone(),
                ));
            }
            None => tracing::info!(
                "no Docker API socket (docker.socket, /var/run/docker.sock, /run/podman/podman.sock): containers are not reported"
            ),
        }
        // Publishing (status loop, heartbeats) stops first at shutdown, so
        // that the `stopping` status is the run's last word.
        let publishing = stop.child_token();
        let status_loop = tokio::spawn(Arc::clone(&telemetry).run(publishing.clone()));
        let beating = Arc::clone(&telemetry);
        let heartbeat = Duration::from_millis(settings.heartbeat_ms);
        let beat_stop = publishing.clone();
        tasks.spawn(async move {
            let feed = beating.job_feed();
            beating.events.beat(heartbeat, || feed.running(), beat_stop).await;
        });
        if !engines.is_empty() {
            let poll = Duration::from_millis(settings.service_poll_ms);
            tasks.spawn(watch_engines(engines, Arc::clone(&telemetry), poll, stop.clone()));
        }
        let mut status_addr = None;
        if let Some(server) = server {
            let addr = server.local_addr().map_err(|source| NodeError::Bind {
                addr: settings.status_addr,
                source,
            })?;
            tracing::info!(addr = %format!("http://{addr}"), "status server listening");
            status_addr = Some(addr);
            tasks.spawn(server.serve(telemetry.clone(), stop.clone()));
        }
        tasks.close();
        let xid_stop = watch_xid(&telemetry);
        telemetry.events.started(mode.as_str(), env!("CARGO_PKG_VERSION"));
        Ok(NodeServices {
            telemetry,
            supervisor,
            status_addr,
            publishing,
            status_loop,
            xid_stop,
            stop,
            tasks,
        })
    }

    /// Stop publishing (status loop, heartbeats), stop the services
    /// (gracefully; their events still go out), say the node is stopping
    /// (`node.stopping`, then the last status entry, `stopping`), then stop
    /// serving; the HTTP backlog goes to the spool.
    pub async fn stop(self) {
        self.xid_stop.store(true, Ordering::Relaxed);
        self.publishing.cancel();
        let _ = self.status_loop.await;
        self.supervisor.stop().await;
        self.telemetry.events.stopping().await;
        self.telemetry.publish_stopping().await;
        self.telemetry.close_http().await;
        self.stop.cancel();
        self.tasks.wait().await;
    }
}
