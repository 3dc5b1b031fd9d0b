//! The node's status server (hyper, HTTP/1.1; binds loopback by default).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /health` | `200 {"status":"ok"}`, or `503 {"status":"unhealthy","reasons":[…]}` (Redis down, collector failing, worker stalled…) |
//! | `GET /ping` | `200 pong` (text/plain, as Citadel documents it) |
//! | `GET /status` | `200` the latest StatusMessage (`503` before the first) |
//! | `GET /metrics` | `200` Prometheus text exposition |
//! | `GET /events` | Server-Sent Events: `status` snapshots and `job` lifecycle events as they happen |
//!
//! Anything else is a `404`, another method a `405`, both with a JSON body.
//! With a token ([`Access::token`]: required when it listens beyond
//! loopback) every route but `/health` and `/ping` (probes) asks for
//! `Authorization: Bearer <token>` and answers `401` without it: status,
//! metrics and events name tenants' job types, services and handlers.
//! Connections are capped per client and in all, and a client that does
//! not finish its request headers in time is dropped (`crate::http_guard`).
//! An `/events` client too slow to keep up is not disconnected and holds
//! nobody up: it gets a `lagged` event saying how many events it missed and
//! continues from the newest. Idle streams get a comment every 15 s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::http_guard;

/// Frames buffered per `/events` client before it counts as slow.
const SSE_BUFFER: usize = 32;
/// Comment sent on idle `/events` streams.
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// Whether the node is healthy, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    /// Reasons the node is unhealthy (none: healthy).
    pub reasons: Vec<String>,
}

/// One `/events` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEvent {
    /// The SSE event name (`status`, `job`).
    pub kind: &'static str,
    /// Its data (JSON).
    pub data: Arc<str>,
}

/// What the status server serves; implemented by the node.
pub trait StatusSource: Send + Sync + 'static {
    /// Current health.
    fn health(&self) -> Health;
    /// The latest StatusMessage (JSON), once there is one.
    fn status(&self) -> Option<String>;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
    /// A feed of events for `/events`.
    fn subscribe(&self) -> broadcast::Receiver<ServerEvent>;
}

type Body = BoxBody<Bytes, Infallible>;

/// Who may ask, and how long a request's headers may take.
#[derive(Debug, Clone)]
pub struct Access {
    /// The bearer token every route but `/health` and `/ping` requires.
    pub token: Option<String>,
    /// Request headers must arrive within this.
    pub header_timeout: Duration,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            token: None,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound status server.
pub struct StatusServer {
    listener: TcpListener,
    access: Access,
}

impl StatusServer {
    /// Bind `addr` (port 0: any free port), served as `access` says.
    pub async fn bind(addr: SocketAddr, access: Access) -> std::io::Result<StatusServer> {
        Ok(StatusServer {
            listener: TcpListener::bind(addr).await?,
            access,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve `source` until `stop` fires.
    pub async fn serve(self, source: Arc<dyn StatusSource>, stop: CancellationToken) {
        let token: Option<Arc<str>> = self.access.token.as_deref().map(Arc::from);
        let service = {
            let stop = stop.clone();
            move || {
                let (source, stop, token) = (Arc::clone(&source), stop.clone(), token.clone());
                service_fn(move |request| {
                    let allowed = allowed(&request, token.as_deref());
                    respond(request, allowed, Arc::clone(&source), stop.clone())
                })
            }
        };
        http_guard::serve(
            self.listener,
            http_guard::ConnectionGuard::new(),
            self.access.header_timeout,
            "status server",
            service,
            stop,
        )
        .await;
    }
}

/// Whether `request` may be answered: probes always, the rest with the
/// token when there is one (compared in constant time).
fn allowed(request: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    if matches!(request.uri().path(), "/health" | "/ping") {
        return true;
    }
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

async fn respond(
    request: Request<Incoming>,
    allowed: bool,
    source: Arc<dyn StatusSource>,
    stop: CancellationToken,
) -> Result<Response<Body>, Infallible> {
    if request.method() != Method::GET {
        return Ok(json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "only GET is served"}),
        ));
    }
    if !allowed {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "this status server needs Authorization: Bearer <telemetry.status_token>"}),
        );
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return Ok(response);
    }
    Ok(match request.uri().path() {
        "/health" => {
            let health = source.health();
            if health.reasons.is_empty() {
                json_response(StatusCode::OK, json!({"status": "ok"}))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "unhealthy", "reasons": health.reasons}),
                )
            }
        }
        "/ping" => response(StatusCode::OK, "text/plain; charset=utf-8", "pong".into()),
        "/status" => match source.status() {
            Some(status) => response(StatusCode::OK, "application/json", status),
            None => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "no status collected yet"}),
            ),
        },
        "/metrics" => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            source.metrics(),
        ),
        "/events" => events(source, stop),
        path => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no route {path}"), "routes": ["/health", "/ping", "/status", "/metrics", "/events"]}),
        ),
    })
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    response(status, "application/json", body.to_string())
}

/// One SSE frame; multi-line data is split into several `data:` lines.
fn frame(event: &str, data: &str) -> Bytes {
    let mut text = format!("event: {event}\n");
    for line in data.lines() {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    Bytes::from(text)
}

fn events(source: Arc<dyn StatusSource>, stop: CancellationToken) -> Response<Body> {
    let (frames, receiver) = mpsc::channel::<Bytes>(SSE_BUFFER);
    let mut feed = source.subscribe();
    let initial = source.status();
    tokio::spawn(async move {
        if let Some(status) = initial
            && frames.send(frame("status", &status)).await.is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(SSE_KEEPALIVE);
        keepalive.tick().await;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                _ = frames.closed() => return,
                _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                received = feed.recv() => match received {
                    Ok(event) => frame(event.kind, &event.data),
                    Err(broadcast::error::RecvError::Lagged(missed)) => frame("lagged", &json!({"missed": missed}).to_string()),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if frames.send(next).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), receiver))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames() {
        assert_eq!(
            frame("job", r#"{"a":1}"#),
            Bytes::from("event: job\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(
            frame("x", "one\ntwo"),
            Bytes::from("event: x\ndata: one\ndata: two\n\n")
        );
    }
}
