//! `citadel monitor`: the fleet's monitor (`citadel-monitor`) until
//! SIGTERM/SIGINT — it reads every node's status, events and heartbeats
//! from Redis, keeps the registry, checks and alerts, stores the history,
//! notifies webhooks and serves the API.

use clap::Args;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::config::Config;

/// Arguments of `citadel monitor` (each overrides its `[monitor]` key).
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The fleet's Redis (`monitor.redis_url`, else `redis_url`).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// The SQLite database file (`monitor.db`).
    #[arg(long, value_name = "FILE")]
    pub db: Option<std::path::PathBuf>,
    /// Where the API listens (`monitor.addr`; loopback by default).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<std::net::SocketAddr>,
    /// A key that may read and write everything (`monitor.api_keys`;
    /// repeatable).
    #[arg(long = "api-key", value_name = "KEY", env = "CITADEL_MONITOR_API_KEY")]
    pub api_keys: Vec<String>,
}

#[derive(Serialize)]
struct Overrides {
    monitor: Map<String, Value>,
}

impl MonitorArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        let mut monitor = Map::new();
        if let Some(url) = &self.redis_url {
            monitor.insert("redis_url".into(), url.clone().into());
        }
        if let Some(db) = &self.db {
            monitor.insert("db".into(), db.display().to_string().into());
        }
        if let Some(addr) = &self.addr {
            monitor.insert("addr".into(), addr.to_string().into());
        }
        if !self.api_keys.is_empty() {
            monitor.insert("api_keys".into(), self.api_keys.clone().into());
        }
        Overrides { monitor }
    }
}

/// Run the monitor.
pub async fn monitor(config: &Config) -> Result<(), Failure> {
    let mut settings = config.monitor.clone();
    if settings.redis_url.is_none() {
        settings.redis_url = config.redis_url.clone();
        settings.redis = config.redis.clone();
    }
    let addr = settings.addr;
    let monitor = citadel_monitor::service::Monitor::open(settings).map_err(Failure::input)?;
    if let Err(err) = monitor.redis().check().await.map_err(Failure::input)? {
        tracing::warn!(redis = %monitor.redis().shown_url(), error = %err, "Redis does not answer yet; the monitor keeps trying");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Failure::input(citadel_monitor::service::MonitorError::Bind { addr, source }))?;
    let local = listener.local_addr().map_err(Failure::input)?;
    tracing::info!(addr = %format!("http://{local}"), db = %monitor.config.db.display(), "monitor ready");
    let stop = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).map_err(Failure::input)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Failure::input)?;
    let on_signal = stop.clone();
    tokio::spawn(async move {
        tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
        tracing::info!("signal received: stopping the monitor");
        on_signal.cancel();
    });
    monitor.run(listener, stop).await;
    Ok(())
}
