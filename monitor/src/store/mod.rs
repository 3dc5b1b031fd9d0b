//! Where the monitor keeps what it knows: events, alerts and their
//! deliveries, the nodes' latest state, per-minute rollups of node status
//! for charts, job checks, and how far it has read each stream — behind
//! the one narrow [`Store`] interface, so that a shared SQL server can
//! replace the embedded SQLite ([`sqlite`]) without the monitor noticing.
//!
//! Everything a batch of input changes goes in one [`Commit`], written in
//! one transaction together with the stream position it reached: after a
//! crash the monitor re-reads from there, and what was committed is never
//! applied twice.

pub mod sqlite;

use citadel_transports::fleet::FleetEvent;
use serde::Serialize;

use crate::alerts::{Alert, AlertChange, AlertStatus, AlertType, Severity};
use crate::registry::NodeState;

/// A store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// What is stored cannot be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The stream entry it came from (`None`: posted over HTTP).
    pub stream_id: Option<String>,
    /// When it happened, ms since the epoch.
    pub at_ms: u64,
    /// The event.
    pub event: FleetEvent,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    /// Its id (increasing; the live stream's event id).
    pub id: i64,
    /// When it happened, ms since the epoch.
    pub at_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: FleetEvent,
}

/// A node's row.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: NodeState,
    /// Last heard from.
    pub last_seen_ms: u64,
    /// First heard from.
    pub first_seen_ms: u64,
    /// Its heartbeat interval.
    pub interval_ms: u64,
    /// Its latest status (JSON), when there is one.
    pub status: Option<String>,
    /// When that status was written.
    pub status_at_ms: Option<u64>,
    /// When it last stopped cleanly.
    pub stopped_at_ms: Option<u64>,
}

/// One status snapshot's numbers, added into its minute.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The node.
    pub node: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// CPU busy, %.
    pub cpu_percent: Option<f64>,
    /// Memory used, %.
    pub memory_percent: Option<f64>,
    /// Each GPU.
    pub gpus: Vec<GpuSample>,
}

/// One GPU's numbers in a [`Sample`].
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    /// Its index.
    pub index: u32,
    /// Busy, %.
    pub utilization_percent: Option<f64>,
    /// °C.
    pub temperature_celsius: Option<f64>,
    /// MiB used.
    pub memory_used_mb: Option<f64>,
    /// MiB in all.
    pub memory_total_mb: Option<f64>,
    /// W.
    pub power_watts: Option<f64>,
}

/// A minute of a node's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollup {
    /// The minute's start, ms since the epoch.
    pub minute_ms: u64,
    /// Mean CPU busy, %.
    pub cpu_percent: Option<f64>,
    /// Mean memory used, %.
    pub memory_percent: Option<f64>,
    /// Each GPU's means.
    pub gpus: Vec<GpuRollup>,
}

/// A minute of one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuRollup {
    /// Its index.
    pub index: u32,
    /// Mean busy, %.
    pub utilization_percent: Option<f64>,
    /// Mean °C.
    pub temperature_celsius: Option<f64>,
    /// Mean MiB used.
    pub memory_used_mb: Option<f64>,
    /// MiB in all.
    pub memory_total_mb: Option<f64>,
    /// Mean W.
    pub power_watts: Option<f64>,
}

/// A job type's check state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRow {
    /// The job type.
    pub job_name: String,
    /// Its last run (started, finished), ms since the epoch.
    pub last_run_ms: Option<u64>,
    /// Its last success.
    pub last_success_ms: Option<u64>,
    /// Its last failure.
    pub last_failure_ms: Option<u64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

/// A notification to send (one per receiver per alert change).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Its id.
    pub id: i64,
    /// The alert.
    pub alert_id: i64,
    /// `firing` or `resolved`.
    pub change: String,
    /// Which receiver (`monitor.notify[].url`).
    pub receiver: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// The alert as it was at the change (JSON).
    pub alert: String,
}

/// Everything one batch of input changed, written at once.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// New events (a stream entry already stored is skipped).
    pub events: Vec<NewEvent>,
    /// Alerts opened, updated, closed.
    pub alerts: Vec<AlertChange>,
    /// Notifications to send: (alert change index in `alerts`, receiver).
    pub deliveries: Vec<(usize, String)>,
    /// Nodes changed.
    pub nodes: Vec<NodeRow>,
    /// Status numbers for the rollups.
    pub samples: Vec<Sample>,
    /// Job checks changed.
    pub checks: Vec<CheckRow>,
    /// How far each stream has been applied: (stream, entry id).
    pub cursors: Vec<(String, String)>,
}

impl Commit {
    /// Whether it writes nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.alerts.is_empty()
            && self.nodes.is_empty()
            && self.samples.is_empty()
            && self.checks.is_empty()
            && self.cursors.is_empty()
    }
}

/// What a commit stored.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// The new events with their ids (duplicates left out).
    pub events: Vec<StoredEvent>,
}

/// What the monitor resumes from.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Open alerts.
    pub open_alerts: Vec<Alert>,
    /// The highest alert id used.
    pub last_alert_id: i64,
    /// Every node.
    pub nodes: Vec<NodeRow>,
    /// Every job check.
    pub checks: Vec<CheckRow>,
    /// How far each stream was applied.
    pub cursors: Vec<(String, String)>,
}

/// `GET /v1/events` filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Job type.
    pub job_name: Option<String>,
    /// Chief's script path.
    pub script_path: Option<String>,
    /// Level (exact).
    pub level: Option<String>,
    /// Event type.
    pub event_type: Option<String>,
    /// Node.
    pub node: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Job id.
    pub run_id: Option<String>,
    /// From (inclusive), ms since the epoch.
    pub from_ms: Option<u64>,
    /// To (exclusive).
    pub to_ms: Option<u64>,
    /// Only events with an id above this (the live stream's resume).
    pub after_id: Option<i64>,
    /// Most rows.
    pub limit: u32,
    /// Rows skipped.
    pub offset: u32,
    /// Oldest first (default newest first).
    pub ascending: bool,
}

/// `GET /v1/alerts` filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertQuery {
    /// Job type.
    pub job_name: Option<String>,
    /// Node.
    pub node: Option<String>,
    /// Open or closed.
    pub status: Option<AlertStatus>,
    /// Type.
    pub alert_type: Option<AlertType>,
    /// Severity.
    pub severity: Option<Severity>,
    /// Most rows.
    pub limit: u32,
    /// Rows skipped.
    pub offset: u32,
}

/// A job type's numbers over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStats {
    /// The job type.
    pub job_name: String,
    /// Runs that ended.
    pub runs: u64,
    /// Of which failed (for good) or were dead-lettered.
    pub failures: u64,
    /// Median duration, ms.
    pub p50_ms: Option<u64>,
    /// 95th percentile duration, ms.
    pub p95_ms: Option<u64>,
}

/// The monitor's storage.
pub trait Store: Send + Sync + 'static {
    /// Write `commit` in one transaction.
    fn commit(&self, commit: Commit) -> Result<Committed, StoreError>;
    /// What to resume from.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Events matching `query`.
    fn events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;
    /// Alerts matching `query`, newest first.
    fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>, StoreError>;
    /// A node's rollups from `from_ms`.
    fn history(&self, node: &str, from_ms: u64) -> Result<Vec<Rollup>, StoreError>;
    /// Job types' numbers since `from_ms` (one type, or all).
    fn job_stats(&self, job_name: Option<&str>, from_ms: u64) -> Result<Vec<JobStats>, StoreError>;
    /// Notifications not yet delivered (oldest first, at most `limit`).
    fn pending_deliveries(&self, limit: u32) -> Result<Vec<Delivery>, StoreError>;
    /// Record an attempt of delivery `id`: delivered, or failed with `error`
    /// (`give_up`: no more attempts).
    fn delivery_attempted(&self, id: i64, error: Option<&str>, give_up: bool) -> Result<(), StoreError>;
    /// Every delivery of alert `alert_id`.
    fn deliveries(&self, alert_id: i64) -> Result<Vec<Delivery>, StoreError>;
    /// Delete at most `batch` rows older than `before_ms`; how many went.
    fn prune(&self, before_ms: u64, batch: u32) -> Result<u64, StoreError>;
    /// Size of the database on disk, bytes, and events stored.
    fn footprint(&self) -> Result<(u64, u64), StoreError>;
    /// Keep a dashboard session (its token's digest) until `expires_ms`.
    fn session_opened(&self, digest: &[u8; 32], expires_ms: u64) -> Result<(), StoreError>;
    /// Forget a dashboard session.
    fn session_closed(&self, digest: &[u8; 32]) -> Result<(), StoreError>;
    /// The dashboard sessions live at `now_ms`: (digest, expires).
    fn sessions(&self, now_ms: u64) -> Result<Vec<([u8; 32], u64)>, StoreError>;
}
