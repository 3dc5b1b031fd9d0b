//! Who may ask: a key in `x-api-key` or `Authorization: Bearer`, compared
//! in constant time (digests of equal length, so neither the content nor
//! the length of a key leaks through timing). `/v1/health` is open; ingest
//! keys may only POST events; with no key configured the API is open (and
//! the configuration then allows only a loopback address).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::service::Monitor;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Nothing,
    Ingest,
    Read,
}

fn need(method: &Method, path: &str) -> Need {
    match (method, path) {
        (_, "/v1/health") => Need::Nothing,
        (&Method::POST, "/v1/events" | "/v1/events/batch") => Need::Ingest,
        _ => Need::Read,
    }
}

fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|value| value.to_str().ok()) {
        return Some(key);
    }
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

/// Whether `key` is one of `keys`, comparing every one in constant time.
fn matches(key: &str, keys: &[String]) -> bool {
    let presented = Sha256::digest(key.as_bytes());
    keys.iter().fold(false, |found, known| {
        let known = Sha256::digest(known.as_bytes());
        found | bool::from(presented.ct_eq(&known))
    })
}

/// The middleware.
pub async fn check(State(monitor): State<Arc<Monitor>>, request: Request, next: Next) -> Response {
    let config = &monitor.config;
    let open = config.api_keys.is_empty() && config.ingest_keys.is_empty();
    let need = need(request.method(), request.uri().path());
    if open || need == Need::Nothing {
        return next.run(request).await;
    }
    let allowed = presented(request.headers()).is_some_and(|key| {
        matches(key, &config.api_keys) || (need == Need::Ingest && matches(key, &config.ingest_keys))
    });
    if allowed {
        return next.run(request).await;
    }
    monitor.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
    let message = if presented(request.headers()).is_some() {
        "this key may not do that"
    } else {
        "an API key is required: send it in x-api-key (or Authorization: Bearer)"
    };
    (StatusCode::UNAUTHORIZED, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly_and_routes_need_what_they_should() {
        let keys = vec!["0123456789abcdef".to_string(), "fedcba9876543210".to_string()];
        assert!(matches("fedcba9876543210", &keys));
        assert!(!matches("fedcba987654321", &keys));
        assert!(!matches("", &keys));
        assert_eq!(need(&Method::GET, "/v1/health"), Need::Nothing);
        assert_eq!(need(&Method::POST, "/v1/events/batch"), Need::Ingest);
        assert_eq!(need(&Method::GET, "/v1/events"), Need::Read);
        assert_eq!(need(&Method::POST, "/v1/alerts/1/close"), Need::Read);
    }
}
