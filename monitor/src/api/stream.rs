//! `GET /v1/stream`: what changes, live, as Server-Sent Events — `event`
//! (a stored event, its id the event's id), `alert` (an alert opened,
//! updated or closed), `node` (a node changed state). A client that
//! reconnects with `Last-Event-ID` (or, opening a new stream, the
//! `lastEventId` query parameter) first gets the events it missed, from
//! the store. A client too slow to keep up gets a `lagged` marker and
//! skips ahead: it never holds the monitor or another client up. Nobody
//! listening costs nothing.

use std::convert::Infallible;
use std::sync::Arc;

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::service::{Live, Monitor};
use crate::store::EventQuery;

/// Events replayed to a reconnecting client, at most.
const REPLAY: u32 = 1000;

fn of(live: &Live) -> Event {
    match live {
        Live::Event(event) => Event::default()
            .event("event")
            .id(event.id.to_string())
            .data(json!(event.as_ref()).to_string()),
        Live::Alert(change) => {
            let kind = match change.as_ref() {
                crate::alerts::AlertChange::Opened(_) => "opened",
                crate::alerts::AlertChange::Updated(_) => "updated",
                crate::alerts::AlertChange::Closed(_) => "closed",
            };
            Event::default()
                .event("alert")
                .data(json!({ "change": kind, "alert": change.alert() }).to_string())
        }
        Live::Node(view) => Event::default().event("node").data(view.to_string()),
    }
}

/// The handler.
pub async fn stream(
    State(monitor): State<Arc<Monitor>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before reading the store, so nothing falls in between.
    let mut live = monitor.subscribe();
    let after: Option<i64> = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .or(query.get("lastEventId").map(String::as_str))
        .and_then(|value| value.parse().ok());
    let missed = match after {
        Some(after) => {
            let store = Arc::clone(monitor.store());
            tokio::task::spawn_blocking(move || {
                store.events(&EventQuery {
                    after_id: Some(after),
                    limit: REPLAY,
                    ascending: true,
                    ..EventQuery::default()
                })
            })
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
        }
        None => Vec::new(),
    };
    let mut last_sent = missed.last().map(|event| event.id).or(after).unwrap_or(0);
    // The channel's small bound keeps a slow client's backlog in the
    // broadcast (where it lags), not in memory here; a client gone ends
    // the feeder at its next send.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(16);
    let stopping = monitor.stopping.clone();
    tokio::spawn(async move {
        for event in missed {
            if sender.send(of(&Live::Event(Arc::new(event)))).await.is_err() {
                return;
            }
        }
        loop {
            let received = tokio::select! {
                // The monitor stops: the stream ends, so the server can close.
                _ = stopping.cancelled() => return,
                received = live.recv() => received,
            };
            let next = match received {
                Ok(Live::Event(event)) if event.id <= last_sent => continue,
                Ok(item) => {
                    if let Live::Event(event) = &item {
                        last_sent = event.id;
                    }
                    of(&item)
                }
                Err(RecvError::Lagged(skipped)) => Event::default()
                    .event("lagged")
                    .data(json!({ "skipped": skipped }).to_string()),
                Err(RecvError::Closed) => return,
            };
            if sender.send(next).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
