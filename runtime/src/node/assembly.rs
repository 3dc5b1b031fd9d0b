//! The whole node, assembled once from its configuration and run until it
//! is told to stop — what `citadel work`, `agent` and `up` run, and what
//! the tests start in-process.
//!
//! [`Node::build`] makes, in this order: the dispatcher (executor, the
//! configured and built-in handlers, `shell_command` where the policy grants
//! it); the sources the command asks for ([`Sources`]); telemetry and the
//! `[[services]]` (started now, so `citadel up` can wait for them);
//! `APPLY_DEVICE_CONFIG` and its reader; the watched directory and the
//! fleet's published handlers (prepared, not yet read). [`Node::run`] reads
//! the handlers once before the first job, runs the sources until `stop`,
//! lets them drain (each within `worker.shutdown_grace_ms`), then stops its
//! own tasks (one tracker), and last the telemetry and services. Nothing
//! here parses flags or handles signals: that is `cli/`'s.

use std::sync::Arc;
use std::time::Duration;

use citadel_collector::status::NodeMode;
use citadel_transports::redis::registry::Registry;
use citadel_transports::redis::{self as transport, listen_for_wake};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::device::{APPLY_DEVICE_CONFIG, DeviceConfigurator};
use super::{NodeError, NodeServices};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::handlers::dir::HandlerDir;
use crate::handlers::fleet::FleetHandlers;
use crate::handlers::{Handler, HandlerLoadError, HandlerTable, NativeHandler};
use crate::sandbox::executor::SetupError;
use crate::sandbox::{Allocation, Executor};
use crate::services::Supervisor;
use crate::shell::{SHELL_COMMAND, ShellHandler, ShellSettings};
use crate::sources::nexus::{Agent, AgentError, Source, follow_redis};
use crate::sources::redis::{Worker, WorkerError};

/// Where the node takes its jobs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// Redis Streams (`citadel work`).
    Redis,
    /// The Nexus API (`citadel agent`, `citadel up`) — and Redis Streams
    /// while Redis answers, when `redis_url` is set.
    Nexus,
}

/// A node that cannot be assembled (its configuration is wrong or a
/// resource it names is unusable); nothing has taken a job.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The sandbox (engine, policy, engines, Docker, models) cannot be set up.
    #[error(transparent)]
    Sandbox(#[from] SetupError),
    /// A configured handler's component is unusable.
    #[error(transparent)]
    Handler(#[from] HandlerLoadError),
    /// No handlers, and none can arrive while the node runs.
    #[error(
        "no handlers: give --handler TYPE=FILE.wasm, a [handlers] table or components.dir, or leave components.fleet on to take published ones"
    )]
    NoHandlers,
    /// `shell_command` is granted but the node cannot find its own binary.
    #[error("cannot find the citadel binary for shell_command: {0}")]
    ShellLauncher(std::io::Error),
    /// The Redis source cannot be made.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// Redis refused the node's credentials or certificates.
    #[error(transparent)]
    RedisRefused(#[from] transport::Refused),
    /// The Nexus source cannot be made.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Telemetry or services cannot start.
    #[error(transparent)]
    Services(#[from] NodeError),
}

/// The Nexus source and what switches it.
struct NexusSource {
    agent: Arc<Agent>,
    /// Where jobs come from now (Redis while it answers, else Nexus).
    source: watch::Sender<Source>,
    /// Rung by a `wake:v1:node:{id}` message.
    wake: Arc<Notify>,
    /// Where wake-up messages come from (with Redis).
    wake_from: Option<transport::Endpoint>,
}

/// The handlers that can change while the node runs.
struct Followed {
    dir: Option<Arc<HandlerDir>>,
    fleet: Option<(Arc<FleetHandlers>, transport::Endpoint)>,
}

/// The node, assembled.
pub struct Node {
    dispatch: Arc<Dispatcher>,
    worker: Option<Worker>,
    device_reader: Option<Worker>,
    nexus: Option<NexusSource>,
    followed: Followed,
    services: NodeServices,
    node_id: String,
    tasks: TaskTracker,
}

impl Node {
    /// Assemble the node `config` describes, taking jobs from `sources`.
    pub async fn build(config: &Config, sources: Sources) -> Result<Node, BuildError> {
        let executor = Executor::from_config(config, Allocation::Pooling)?;
        Node::build_on(config, sources, executor).await
    }

    /// [`Node::build`] on an executor of the caller's (one whose component
    /// store is shared, as the tests do).
    pub async fn build_on(config: &Config, sources: Sources, executor: Executor) -> Result<Node, BuildError> {
        check_redis(config).await?;
        let dispatch = Arc::new(dispatcher(config, executor)?);
        // Handlers may also arrive while the node runs (published to the
        // fleet, or dropped in the watched directory).
        if dispatch.handlers().is_empty() && !config.handlers_can_arrive() {
            return Err(BuildError::NoHandlers);
        }
        let worker = match (sources, &config.redis_url) {
            (Sources::Redis, _) | (Sources::Nexus, Some(_)) => Some(Worker::new(Arc::clone(&dispatch), config)?),
            (Sources::Nexus, None) => None,
        };
        let nexus = match sources {
            Sources::Redis => None,
            Sources::Nexus => {
                let initial = if worker.is_some() { Source::Redis } else { Source::Nexus };
                let (source, following) = watch::channel(initial);
                let wake = Arc::new(Notify::new());
                let agent = Agent::new(Arc::clone(&dispatch), config)?.switched_by(following, Arc::clone(&wake));
                let wake_from = config.redis().map_err(WorkerError::from)?;
                Some(NexusSource {
                    agent: Arc::new(agent),
                    source,
                    wake,
                    wake_from,
                })
            }
        };
        let mode = match &nexus {
            Some(nexus) => nexus.source.borrow().mode(),
            None => NodeMode::Redis,
        };
        let services = NodeServices::start(config, mode, &dispatch, worker.as_ref()).await?;
        if let Some(nexus) = &nexus {
            services.telemetry.count_jobs_of(nexus.agent.stats());
        }
        let configurator = Arc::new(DeviceConfigurator::new(
            config,
            Arc::clone(&services.supervisor),
            Arc::clone(&services.telemetry),
        ));
        // A configuration job may also arrive among the other jobs (from
        // Nexus, or on a job queue).
        if dispatch.handlers().get(APPLY_DEVICE_CONFIG).is_none() {
            dispatch
                .handlers()
                .restore(APPLY_DEVICE_CONFIG, Handler::Native(configurator.clone()));
        }
        let device_reader = match &worker {
            Some(worker) => device_config_reader(config, worker, &configurator)?,
            None => None,
        };
        Ok(Node {
            followed: followed(config, &dispatch)?,
            dispatch,
            worker,
            device_reader,
            nexus,
            services,
            node_id: config.node_id(),
            tasks: TaskTracker::new(),
        })
    }

    /// The node's native services (to kill them at once on a second signal,
    /// or wait until they are healthy).
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.services.supervisor
    }

    /// Its telemetry and status server.
    pub fn services(&self) -> &NodeServices {
        &self.services
    }

    /// Its Redis source, when it has one.
    pub fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// Stop before taking any job: telemetry says so, services stop.
    pub async fn abandon(self) {
        self.services.stop().await;
    }

    /// Read the handlers once, then take and run jobs until `stop`; drain,
    /// stop the node's tasks, then its telemetry and services. A source
    /// that fails stops the node (one without its job worker, or deaf to
    /// device configuration, must not run on silently).
    pub async fn run(self, stop: CancellationToken) -> Result<(), WorkerError> {
        let tasks_stop = CancellationToken::new();
        self.follow_handlers(&tasks_stop).await;
        if let Some(nexus) = &self.nexus
            && let Some(worker) = &self.worker
        {
            if let Some(client) = nexus.wake_from.clone() {
                self.tasks.spawn(listen_for_wake(
                    client,
                    self.node_id.clone(),
                    Arc::clone(&nexus.wake),
                    tasks_stop.clone(),
                ));
            }
            self.tasks.spawn(follow_redis(
                worker.clone(),
                nexus.source.clone(),
                Arc::clone(&self.services.telemetry),
                tasks_stop.clone(),
            ));
        }
        let redis = run_workers(self.worker.as_ref(), self.device_reader.as_ref(), &stop);
        let agent = async {
            if let Some(nexus) = &self.nexus {
                Arc::clone(&nexus.agent).run(stop.clone()).await;
            }
        };
        let (outcome, ()) = tokio::join!(redis, agent);
        tasks_stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.services.stop().await;
        outcome
    }

    /// Scan the watched directory and sync the published handlers (a node
    /// that was down during a publish starts on the current handler), then
    /// follow both until `stop`. Status lists the handlers either way.
    async fn follow_handlers(&self, stop: &CancellationToken) {
        let telemetry = &self.services.telemetry;
        if let Some(dir) = &self.followed.dir {
            let scanner = Arc::clone(dir);
            if let Err(err) = tokio::task::spawn_blocking(move || scanner.scan()).await {
                tracing::error!(error = %err, "the first scan of components.dir failed; watching it from now on");
            }
            self.tasks
                .spawn(Arc::clone(dir).watch(Arc::clone(telemetry), stop.clone()));
        }
        let Some((fleet, client)) = &self.followed.fleet else {
            telemetry.set_handlers(self.dispatch.handlers().statuses());
            return;
        };
        if let Err(err) = fleet.sync().await {
            tracing::warn!(error = %err, "cannot read the published handlers yet: starting with the configured ones");
        }
        fleet.report_to(Arc::clone(telemetry));
        self.dispatch.handlers().resolve_pins_with(fleet.clone());
        self.tasks.spawn(Arc::clone(fleet).follow(client.clone(), stop.clone()));
    }
}

/// The node's dispatcher: its executor and handlers, every component
/// loaded (a bad one stops the node before it takes a job), and
/// `shell_command` where the policy grants it to a tenant.
fn dispatcher(config: &Config, executor: Executor) -> Result<Dispatcher, BuildError> {
    let handlers = HandlerTable::load(executor.components(), &config.handlers_with_defaults())?;
    if ShellHandler::granted_by(executor.policy()) && handlers.get(SHELL_COMMAND).is_none() {
        let settings = ShellSettings {
            launcher: std::env::current_exe().map_err(BuildError::ShellLauncher)?,
            slice: config.cgroup_slice().to_string(),
        };
        let shell = ShellHandler::new(executor.policy().clone(), settings);
        handlers.restore(SHELL_COMMAND, Handler::Native(Arc::new(shell)));
        if !rustix::process::geteuid().is_root() {
            tracing::warn!(
                "shell_command is granted but the node does not run as root: its jobs fail until it does (each command runs as an unprivileged user in a cgroup of its own)"
            );
        }
    }
    Ok(Dispatcher::new(
        Arc::new(executor),
        handlers,
        config.worker.concurrency as usize,
    ))
}

/// The watched directory (`components.dir`) and the fleet's published
/// handlers (`components.fleet`, with Redis), prepared.
/// Stop at once when Redis refuses the node (a wrong password or CA: no
/// retry will fix it); go on when it is only not up yet (every connection
/// keeps trying).
async fn check_redis(config: &Config) -> Result<(), BuildError> {
    let Some(redis) = config.redis().map_err(WorkerError::from)? else {
        return Ok(());
    };
    if let Err(err) = redis.check().await? {
        tracing::warn!(
            redis = %redis.shown_url(),
            error = %err,
            "Redis does not answer yet; the node starts and keeps trying"
        );
    }
    Ok(())
}

fn followed(config: &Config, dispatch: &Dispatcher) -> Result<Followed, BuildError> {
    let (executor, handlers) = (dispatch.executor(), dispatch.handlers());
    let dir = config.components.dir.as_ref().map(|dir| {
        Arc::new(HandlerDir::new(
            dir.clone(),
            Duration::from_millis(config.components.dir_poll_ms),
            Arc::clone(executor.components()),
            executor.policy().clone(),
            handlers.clone(),
        ))
    });
    let fleet = match config
        .redis()
        .map_err(WorkerError::from)?
        .filter(|_| config.components.fleet)
    {
        Some(redis) => {
            let registry = Registry::new(&redis);
            let fleet = Arc::new(FleetHandlers::new(
                registry,
                Arc::clone(executor.components()),
                executor.policy().clone(),
                config.components.trusted(),
                handlers.clone(),
            ));
            Some((fleet, redis))
        }
        None => None,
    };
    Ok(Followed { dir, fleet })
}

/// The reader of `APPLY_DEVICE_CONFIG` jobs beside `worker`, applying them
/// with `configurator` (which renames both workers' events).
fn device_config_reader(
    config: &Config,
    worker: &Worker,
    configurator: &Arc<DeviceConfigurator>,
) -> Result<Option<Worker>, WorkerError> {
    configurator.renames(worker);
    let handler: Arc<dyn NativeHandler> = configurator.clone();
    let handlers = HandlerTable::native([(APPLY_DEVICE_CONFIG.to_string(), handler)]);
    let reader = worker.device_config_reader(handlers, config)?;
    if let Some(reader) = &reader {
        configurator.renames(reader);
    }
    Ok(reader)
}

/// Run the job worker and the device configuration reader until `stop`;
/// either failing stops the node.
async fn run_workers(
    worker: Option<&Worker>,
    reader: Option<&Worker>,
    stop: &CancellationToken,
) -> Result<(), WorkerError> {
    let jobs = async {
        let Some(worker) = worker else {
            return Ok(());
        };
        let outcome = worker.run(stop.clone()).await;
        if let Err(err) = &outcome {
            tracing::error!(error = %err, "the job worker failed; stopping the node");
            stop.cancel();
        }
        outcome
    };
    let device = async {
        let Some(reader) = reader else {
            return Ok(());
        };
        let outcome = reader.run(stop.clone()).await;
        if let Err(err) = &outcome {
            tracing::error!(error = %err, "the device configuration reader failed; stopping the node");
            stop.cancel();
        }
        outcome
    };
    let (jobs, device) = tokio::join!(jobs, device);
    jobs.and(device)
}
