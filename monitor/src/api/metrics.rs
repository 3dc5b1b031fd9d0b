//! `GET /metrics`: the monitor in Prometheus' text format — nodes by
//! state, open alerts by type, stream entries applied, events posted,
//! notifications delivered and failed, requests refused, the database's
//! size and events stored.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::registry::NodeState;
use crate::service::{Monitor, now_ms};

/// The handler.
pub async fn metrics(State(monitor): State<Arc<Monitor>>) -> impl IntoResponse {
    let now = now_ms();
    let states = monitor.read(|engine| {
        let registry = engine.registry();
        [NodeState::Up, NodeState::Late, NodeState::Down, NodeState::Offline].map(|state| {
            let count = registry
                .nodes()
                .filter(|node| node.state == state && !registry.is_stale(node, now))
                .count();
            (state, count)
        })
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP citadel_monitor_nodes Nodes by state (stale ones left out)."
    );
    let _ = writeln!(text, "# TYPE citadel_monitor_nodes gauge");
    for (state, count) in states {
        let _ = writeln!(text, "citadel_monitor_nodes{{state=\"{}\"}} {count}", state.as_str());
    }
    let _ = writeln!(text, "# HELP citadel_monitor_open_alerts Open alerts by type.");
    let _ = writeln!(text, "# TYPE citadel_monitor_open_alerts gauge");
    for (kind, count) in super::open_by_type(&monitor) {
        let _ = writeln!(
            text,
            "citadel_monitor_open_alerts{{type=\"{}\"}} {count}",
            kind.as_str()
        );
    }
    let store = Arc::clone(monitor.store());
    if let Ok(Ok((bytes, events))) = tokio::task::spawn_blocking(move || store.footprint()).await {
        let _ = writeln!(
            text,
            "# HELP citadel_monitor_db_bytes Size of the database (pages in use), bytes."
        );
        let _ = writeln!(text, "# TYPE citadel_monitor_db_bytes gauge");
        let _ = writeln!(text, "citadel_monitor_db_bytes {bytes}");
        let _ = writeln!(text, "# HELP citadel_monitor_events_stored Events in the database.");
        let _ = writeln!(text, "# TYPE citadel_monitor_events_stored gauge");
        let _ = writeln!(text, "citadel_monitor_events_stored {events}");
    }
    let counters = &monitor.counters;
    for (name, help, value) in [
        (
            "citadel_monitor_stream_entries_total",
            "Stream entries applied.",
            &counters.entries,
        ),
        (
            "citadel_monitor_posted_events_total",
            "Events POSTed and stored.",
            &counters.posted,
        ),
        (
            "citadel_monitor_notifications_delivered_total",
            "Alert notifications delivered.",
            &counters.delivered,
        ),
        (
            "citadel_monitor_notification_failures_total",
            "Alert notification attempts that failed.",
            &counters.delivery_failures,
        ),
        (
            "citadel_monitor_unauthorized_total",
            "Requests refused for their key.",
            &counters.unauthorized,
        ),
    ] {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} counter");
        let _ = writeln!(text, "{name} {}", value.load(Ordering::Relaxed));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}
