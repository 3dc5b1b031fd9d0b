//! The running monitor: the engine behind a lock, the store, the live
//! feed, and the tasks around them — the stream reader (`ingest`), the
//! clock (node silence, missed cadences, expiring recoveries, retention),
//! the orphan finder (`orphans`), the notifier (`notify`) and the API
//! (`api`).
//!
//! Every change goes through [`Monitor::apply`]: the engine judges (a short
//! lock), the store writes the commit (one transaction, off the async
//! threads), then the live feed hears of it. Applies take turns, so
//! commits land in the order they were judged.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use citadel_transports::fleet::epoch_millis;
use citadel_transports::redis::Endpoint;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::AlertChange;
use crate::config::MonitorConfig;
use crate::engine::{Engine, FollowUp};
use crate::store::sqlite::SqliteStore;
use crate::store::{Commit, Committed, Store, StoreError, StoredEvent};
use crate::{api, ingest, notify, orphans, queues};

/// How often the clock ticks.
const TICK: Duration = Duration::from_millis(100);
/// How often old rows are pruned, and how many at a time.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: u32 = 500;
/// Items buffered for live listeners; a listener further behind is told it lagged.
const LIVE_BUFFER: usize = 4096;

/// The monitor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The database cannot be opened.
    #[error("cannot open the database {path} (monitor.db, --db): {source}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// `monitor.redis_url` or `monitor.redis` is unusable.
    #[error(transparent)]
    Redis(#[from] citadel_transports::redis::EndpointError),
    /// The API address is taken or not ours.
    #[error("cannot listen on {addr} (monitor.addr, --addr): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What live listeners (`/v1/stream`) hear.
#[derive(Debug, Clone)]
pub enum Live {
    /// An event was stored.
    Event(Arc<StoredEvent>),
    /// An alert changed.
    Alert(Arc<AlertChange>),
    /// A node changed state.
    Node(Arc<Value>),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Stream entries applied.
    pub entries: AtomicU64,
    /// Events POSTed and stored.
    pub posted: AtomicU64,
    /// Notifications delivered.
    pub delivered: AtomicU64,
    /// Notification attempts that failed.
    pub delivery_failures: AtomicU64,
    /// Requests refused for their key.
    pub unauthorized: AtomicU64,
}

/// The monitor.
pub struct Monitor {
    engine: Mutex<Engine>,
    turn: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    live: broadcast::Sender<Live>,
    /// Dashboard sessions.
    pub(crate) sessions: crate::web::session::Sessions,
    /// Rung after a commit that made notifications.
    pub(crate) deliveries: Notify,
    /// Its settings.
    pub config: MonitorConfig,
    /// The fleet's Redis.
    pub(crate) redis: Endpoint,
    /// Counters.
    pub counters: Counters,
    /// Whether the streams are read up to now (a monitor catching up, or
    /// cut off from Redis, does not take its own deafness for silent nodes).
    pub(crate) streams_current: std::sync::atomic::AtomicBool,
    /// Fired when the monitor stops: live streams end so the API can close.
    pub(crate) stopping: CancellationToken,
    /// When this monitor started, ms since the epoch.
    pub(crate) started_ms: u64,
}

/// Now, ms since the epoch.
pub fn now_ms() -> u64 {
    epoch_millis(SystemTime::now())
}

impl Monitor {
    /// The fleet's Redis.
    pub fn redis(&self) -> &Endpoint {
        &self.redis
    }

    /// Open the store and resume from it.
    pub fn open(config: MonitorConfig) -> Result<Arc<Monitor>, MonitorError> {
        config.validate()?;
        let store = SqliteStore::open(&config.db).map_err(|source| MonitorError::Store {
            path: config.db.display().to_string(),
            source,
        })?;
        let redis = Endpoint::open(config.redis_url.as_deref().unwrap_or_default(), &config.redis)?;
        let loaded = store.load().map_err(|source| MonitorError::Store {
            path: config.db.display().to_string(),
            source,
        })?;
        let sessions = store.sessions(now_ms()).map_err(|source| MonitorError::Store {
            path: config.db.display().to_string(),
            source,
        })?;
        let sessions = crate::web::session::Sessions::restore(sessions);
        let receivers = config.notify.iter().map(|receiver| receiver.url.clone()).collect();
        let engine = Engine::resume(&config, loaded, receivers, now_ms());
        Ok(Arc::new(Monitor {
            engine: Mutex::new(engine),
            turn: tokio::sync::Mutex::new(()),
            store: Arc::new(store),
            live: broadcast::channel(LIVE_BUFFER).0,
            deliveries: Notify::new(),
            sessions,
            config,
            redis,
            counters: Counters::default(),
            streams_current: std::sync::atomic::AtomicBool::new(false),
            stopping: CancellationToken::new(),
            started_ms: now_ms(),
        }))
    }

    /// The store (for queries).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Read the engine's state.
    pub fn read<T>(&self, look: impl FnOnce(&Engine) -> T) -> T {
        look(&self.engine.lock().expect("engine poisoned"))
    }

    /// Listen to what changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// Judge with `judge`, store what it changed, tell live listeners;
    /// returns what was stored and what to follow up.
    pub async fn apply(
        self: &Arc<Self>,
        judge: impl FnOnce(&mut Engine, &mut Commit, &mut FollowUp),
    ) -> Result<(Committed, FollowUp), StoreError> {
        let _turn = self.turn.lock().await;
        let mut commit = Commit::default();
        let mut follow = FollowUp::default();
        let watching = self.live.receiver_count() > 0;
        let before: HashMap<String, crate::registry::NodeState> = {
            let mut engine = self.engine.lock().expect("engine poisoned");
            let before = if watching {
                engine
                    .registry()
                    .nodes()
                    .map(|node| (node.id.clone(), node.state))
                    .collect()
            } else {
                HashMap::new()
            };
            judge(&mut engine, &mut commit, &mut follow);
            before
        };
        if commit.is_empty() {
            return Ok((Committed::default(), follow));
        }
        let alerts = commit.alerts.clone();
        let notifies = !commit.deliveries.is_empty();
        let store = Arc::clone(&self.store);
        let committed = tokio::task::spawn_blocking(move || store.commit(commit))
            .await
            .expect("the store's writer panicked")?;
        // Nobody listening costs nothing.
        if self.live.receiver_count() > 0 {
            for event in &committed.events {
                let _ = self.live.send(Live::Event(Arc::new(event.clone())));
            }
            for change in alerts {
                let _ = self.live.send(Live::Alert(Arc::new(change)));
            }
        }
        if watching {
            self.announce_nodes(&before, &follow.reported);
        }
        if notifies {
            self.deliveries.notify_one();
        }
        Ok((committed, follow))
    }

    /// Tell live listeners of nodes whose state differs from `before` or
    /// that `reported` a status.
    fn announce_nodes(&self, before: &HashMap<String, crate::registry::NodeState>, reported: &[String]) {
        if self.live.receiver_count() == 0 {
            return;
        }
        let reported: HashSet<&str> = reported.iter().map(String::as_str).collect();
        let now = now_ms();
        let changed: Vec<Value> = self.read(|engine| {
            engine
                .registry()
                .nodes()
                .filter(|node| reported.contains(node.id.as_str()) || before.get(&node.id) != Some(&node.state))
                .map(|node| json!(engine.registry().view(node, now)))
                .collect()
        });
        for view in changed {
            let _ = self.live.send(Live::Node(Arc::new(view)));
        }
    }

    /// Do what a commit asked for.
    pub(crate) fn follow_up(self: &Arc<Self>, follow: FollowUp, tasks: &TaskTracker, stop: &CancellationToken) {
        for node in follow.orphans_of {
            tasks.spawn(orphans::track(Arc::clone(self), node, stop.clone()));
        }
    }

    /// Run until `stop`: read the streams, keep time, find orphans, notify,
    /// and serve the API on `listener`.
    pub async fn run(self: Arc<Self>, listener: tokio::net::TcpListener, stop: CancellationToken) {
        let tasks = TaskTracker::new();
        tasks.spawn(ingest::run(Arc::clone(&self), tasks.clone(), stop.clone()));
        tasks.spawn(Arc::clone(&self).keep_time(tasks.clone(), stop.clone()));
        tasks.spawn(notify::run(Arc::clone(&self), stop.clone()));
        tasks.spawn(queues::run(Arc::clone(&self), stop.clone()));
        // Alerts open at start whose orphans may still be moving.
        let down: Vec<String> = self.read(|engine| {
            engine
                .alerts()
                .open()
                .filter(|alert| alert.alert_type == crate::alerts::AlertType::NodeDown)
                .filter_map(|alert| alert.node.clone())
                .collect()
        });
        for node in down {
            tasks.spawn(orphans::track(Arc::clone(&self), node, stop.clone()));
        }
        let stopping = self.stopping.clone();
        let on_stop = stop.clone();
        tasks.spawn(async move {
            on_stop.cancelled().await;
            stopping.cancel();
        });
        api::serve(Arc::clone(&self), listener, stop.clone()).await;
        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }

    async fn keep_time(self: Arc<Self>, tasks: TaskTracker, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = now_ms();
            let current = self.streams_current.load(Ordering::Relaxed);
            match self
                .apply(|engine, commit, follow| engine.tick(now, current, commit, follow))
                .await
            {
                Ok((_, follow)) => self.follow_up(follow, &tasks, &stop),
                Err(err) => tracing::error!(error = %err, "cannot store the clock's judgement; retrying next tick"),
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                self.prune().await;
            }
        }
    }

    /// Delete what is older than `retention_days`, a small batch at a time
    /// so ingest never waits long for the writer.
    async fn prune(&self) {
        let before = now_ms().saturating_sub(u64::from(self.config.retention_days) * 86_400_000);
        loop {
            let store = Arc::clone(&self.store);
            let gone = tokio::task::spawn_blocking(move || store.prune(before, PRUNE_BATCH)).await;
            match gone {
                Ok(Ok(0)) => return,
                Ok(Ok(gone)) => tracing::debug!(gone, "pruned rows past retention"),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot prune old rows");
                    return;
                }
                Err(_) => return,
            }
            tokio::task::yield_now().await;
        }
    }

    /// Count a stream entry applied.
    pub(crate) fn count_entries(&self, entries: u64) {
        self.counters.entries.fetch_add(entries, Ordering::Relaxed);
    }
}
