//! The monitor's HTTP API (Chief's routes, extended for the fleet):
//!
//! - `GET /v1/health` (open), `/v1/status/summary`, `/v1/status/jobs`,
//!   `/v1/status/jobs/{jobName}`;
//! - `GET /v1/nodes` (scheduling filters, answered from memory),
//!   `/v1/nodes/{id}` (latest status and its rollups);
//! - `GET /v1/events`, `/v1/alerts` (filters), `POST /v1/alerts/{id}/close`;
//! - `POST /v1/events`, `/v1/events/batch` (Chief's event shape);
//! - `GET /v1/stream` (live, Server-Sent Events), `/metrics` (Prometheus).
//!
//! Keys (`x-api-key` or a bearer token) guard everything but `/v1/health`;
//! ingest keys may only POST events. Bodies are capped, bad input is a 400
//! naming the field, and nothing of a refused request is stored.

pub(crate) mod auth;
mod ingest;
mod metrics;
mod params;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use citadel_transports::http_guard;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::alerts::{AlertStatus, AlertType};
use crate::registry::{NodeQuery, NodeState};
use crate::service::{Monitor, now_ms};
use crate::store::{AlertQuery, EventQuery, Store, StoreError};

pub use params::BadParam;

/// An API error: its status and what to tell the client.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<BadParam> for ApiError {
    fn from(err: BadParam) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        tracing::error!(error = %err, "the store failed a request");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the store failed; see the monitor's log".into(),
        )
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Run `query` on the store off the async threads.
async fn stored<T: Send + 'static>(
    monitor: &Monitor,
    query: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(monitor.store());
    tokio::task::spawn_blocking(move || query(store.as_ref()))
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the store panicked".into()))?
        .map_err(ApiError::from)
}

/// The API's routes over `monitor`.
pub fn router(monitor: Arc<Monitor>) -> Router {
    let limit = monitor.config.max_body_bytes;
    let body_timeout = Duration::from_millis(monitor.config.body_timeout_ms);
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status/summary", get(summary))
        .route("/v1/status/jobs", get(jobs))
        .route("/v1/status/jobs/{job}", get(job))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", get(node))
        .route("/v1/events", get(events).post(post_event))
        .route("/v1/events/batch", post(post_batch))
        .route("/v1/alerts", get(alerts))
        .route("/v1/alerts/{id}/close", post(close_alert))
        .route("/v1/stream", get(stream::stream))
        .route("/metrics", get(metrics::metrics))
        .merge(crate::web::router())
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&monitor), auth::check))
        .layer(axum::middleware::from_fn(crate::web::harden))
        // Gzip when the client takes it; Server-Sent Events are never held
        // back in a compressor.
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(DefaultBodyLimit::max(limit))
        // A body that trickles in is cut off (`400`, "not received within the
        // designated timeout"), not waited on forever.
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .with_state(monitor)
}

/// Serve the API on `listener` until `stop`: connections capped per client
/// (`monitor.connections_per_client`) and in all, request headers due within
/// `monitor.header_timeout_ms` (`citadel_transports::http_guard`).
pub async fn serve(monitor: Arc<Monitor>, listener: tokio::net::TcpListener, stop: CancellationToken) {
    let header_timeout = Duration::from_millis(monitor.config.header_timeout_ms);
    let guard =
        http_guard::ConnectionGuard::with_caps(monitor.config.connections_per_client, http_guard::CONNECTIONS_TOTAL);
    let app = router(monitor);
    let service = move || TowerToHyperService::new(app.clone());
    http_guard::serve(listener, guard, header_timeout, "the API server", service, stop).await;
}

async fn health(State(monitor): State<Arc<Monitor>>) -> Json<Value> {
    let (nodes, open) = monitor.read(|engine| (engine.registry().nodes().count(), engine.alerts().open().count()));
    Json(json!({
        "status": "ok",
        "nodes": nodes,
        "openAlerts": open,
        "highTempCelsius": monitor.config.high_temp_celsius,
    }))
}

async fn summary(State(monitor): State<Arc<Monitor>>) -> ApiResult {
    let now = now_ms();
    let (states, gpus, open) = monitor.read(|engine| {
        let mut states: HashMap<&'static str, u64> = HashMap::new();
        let mut gpus = json!({ "total": 0, "busy": 0, "freeVramMb": 0 });
        let registry = engine.registry();
        let mut total = 0u64;
        let mut busy = 0u64;
        let mut free = 0u64;
        for node in registry.nodes() {
            let stale = registry.is_stale(node, now);
            *states
                .entry(if stale { "stale" } else { node.state.as_str() })
                .or_default() += 1;
            if node.state == NodeState::Up {
                let view = registry.view(node, now);
                total += view.gpus.len() as u64;
                busy += view
                    .gpus
                    .iter()
                    .filter(|gpu| gpu.utilization_percent.unwrap_or(0) >= 5)
                    .count() as u64;
                free += view.free_vram_mb;
            }
        }
        gpus["total"] = json!(total);
        gpus["busy"] = json!(busy);
        gpus["freeVramMb"] = json!(free);
        let mut open: HashMap<&'static str, u64> = HashMap::new();
        for alert in engine.alerts().open() {
            *open.entry(alert.alert_type.as_str()).or_default() += 1;
        }
        (states, gpus, open)
    });
    let hour = now.saturating_sub(3_600_000);
    let stats = stored(&monitor, move |store| store.job_stats(None, hour)).await?;
    let runs: u64 = stats.iter().map(|stats| stats.runs).sum();
    let failures: u64 = stats.iter().map(|stats| stats.failures).sum();
    Ok(Json(json!({
        "nodes": states,
        "gpus": gpus,
        "openAlerts": open,
        "lastHour": { "runs": runs, "failures": failures, "jobsPerSecond": runs as f64 / 3600.0 },
    })))
}

async fn jobs(State(monitor): State<Arc<Monitor>>) -> ApiResult {
    let now = now_ms();
    let views = monitor.read(|engine| engine.checks().views(now));
    let day = now.saturating_sub(86_400_000);
    let stats = stored(&monitor, move |store| store.job_stats(None, day)).await?;
    let jobs: Vec<Value> = views
        .into_iter()
        .map(|view| {
            let of = stats.iter().find(|stats| stats.job_name == view.job_name);
            let mut value = json!(view);
            value["lastDay"] = json!(of);
            value
        })
        .collect();
    Ok(Json(json!({ "jobs": jobs })))
}

async fn job(State(monitor): State<Arc<Monitor>>, Path(name): Path<String>) -> ApiResult {
    let now = now_ms();
    let view = monitor.read(|engine| {
        engine
            .checks()
            .views(now)
            .into_iter()
            .find(|view| view.job_name == name)
    });
    let Some(view) = view else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no job type {name:?} seen or checked"),
        ));
    };
    let day = now.saturating_sub(86_400_000);
    let of = name.clone();
    let stats = stored(&monitor, move |store| store.job_stats(Some(&of), day)).await?;
    let of = name.clone();
    let runs = stored(&monitor, move |store| {
        store.events(&EventQuery {
            job_name: Some(of),
            limit: 50,
            ..EventQuery::default()
        })
    })
    .await?;
    let of = name.clone();
    let alerts = stored(&monitor, move |store| {
        store.alerts(&AlertQuery {
            job_name: Some(of),
            limit: 20,
            ..AlertQuery::default()
        })
    })
    .await?;
    Ok(Json(
        json!({ "check": view, "lastDay": stats.first(), "recent": runs, "alerts": alerts }),
    ))
}

async fn nodes(State(monitor): State<Arc<Monitor>>, Query(raw): Query<HashMap<String, String>>) -> ApiResult {
    let query: NodeQuery = params::node_query(&raw)?;
    let now = now_ms();
    let nodes = monitor.read(|engine| engine.registry().query(&query, now));
    Ok(Json(json!({ "nodes": nodes })))
}

async fn node(
    State(monitor): State<Arc<Monitor>>,
    Path(id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> ApiResult {
    let params = params::Params::new(&raw, &["from"])?;
    let now = now_ms();
    let from = params.time("from")?.unwrap_or(now.saturating_sub(3_600_000));
    let found = monitor.read(|engine| {
        let registry = engine.registry();
        registry
            .get(&id)
            .map(|node| (registry.view(node, now), node.status.clone()))
    });
    let Some((view, status)) = found else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no node {id:?} is known")));
    };
    let of = id.clone();
    let history = stored(&monitor, move |store| store.history(&of, from)).await?;
    let of = id.clone();
    let alerts = stored(&monitor, move |store| {
        store.alerts(&AlertQuery {
            node: Some(of),
            limit: 20,
            ..AlertQuery::default()
        })
    })
    .await?;
    let of = id.clone();
    let events = stored(&monitor, move |store| {
        store.events(&EventQuery {
            node: Some(of),
            limit: 50,
            ..EventQuery::default()
        })
    })
    .await?;
    Ok(Json(
        json!({ "node": view, "status": status, "history": history, "alerts": alerts, "events": events }),
    ))
}

async fn events(State(monitor): State<Arc<Monitor>>, Query(raw): Query<HashMap<String, String>>) -> ApiResult {
    let query = params::event_query(&raw)?;
    let events = stored(&monitor, move |store| store.events(&query)).await?;
    Ok(Json(json!({ "events": events })))
}

async fn alerts(State(monitor): State<Arc<Monitor>>, Query(raw): Query<HashMap<String, String>>) -> ApiResult {
    let query = params::alert_query(&raw)?;
    let alerts = stored(&monitor, move |store| store.alerts(&query)).await?;
    Ok(Json(json!({ "alerts": alerts })))
}

async fn close_alert(State(monitor): State<Arc<Monitor>>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let id: i64 = id
        .parse()
        .map_err(|_| bad_request("id: an alert id is a whole number"))?;
    let body: Value = serde_json::from_slice(&body).map_err(|err| bad_request(format!("body: not JSON: {err}")))?;
    let reason = match body.get("reason") {
        Some(Value::String(reason)) if !reason.trim().is_empty() && reason.len() <= 512 => reason.clone(),
        _ => return Err(bad_request("reason: required, 1 to 512 bytes")),
    };
    let now = now_ms();
    let mut closed = None;
    monitor
        .apply(|engine, commit, _| closed = engine.close(id, &reason, now, commit))
        .await?;
    match closed {
        Some(change) => Ok(Json(json!({ "alert": change.alert() }))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no open alert {id}"))),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|err| bad_request(format!("body: not JSON: {err}")))
}

async fn post_event(State(monitor): State<Arc<Monitor>>, body: Bytes) -> Result<Response, ApiError> {
    let event = ingest::event(parse_json(&body)?, None).map_err(bad_request)?;
    store_posted(&monitor, vec![event]).await
}

async fn post_batch(State(monitor): State<Arc<Monitor>>, body: Bytes) -> Result<Response, ApiError> {
    let events = ingest::batch(parse_json(&body)?, monitor.config.max_batch).map_err(bad_request)?;
    store_posted(&monitor, events).await
}

async fn store_posted(
    monitor: &Arc<Monitor>,
    events: Vec<citadel_transports::fleet::FleetEvent>,
) -> Result<Response, ApiError> {
    let count = events.len();
    let now = now_ms();
    let (committed, follow) = monitor
        .apply(|engine, commit, follow| engine.apply_posted(events, now, commit, follow))
        .await?;
    if !follow.orphans_of.is_empty() {
        tracing::debug!("a posted event cannot take a node down; nothing to follow");
    }
    monitor.counters.posted.fetch_add(count as u64, Ordering::Relaxed);
    let ids: Vec<i64> = committed.events.iter().map(|event| event.id).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": count, "ids": ids }))).into_response())
}

/// The open alert types, for `/metrics`.
fn open_by_type(monitor: &Monitor) -> Vec<(AlertType, u64)> {
    monitor.read(|engine| {
        AlertType::ALL
            .into_iter()
            .map(|kind| {
                let count = engine
                    .alerts()
                    .open()
                    .filter(|alert| alert.alert_type == kind && alert.status == AlertStatus::Open)
                    .count() as u64;
                (kind, count)
            })
            .collect()
    })
}
