//! Who may ask: a key in `x-api-key` or `Authorization: Bearer`, compared
//! in constant time (digests of equal length, so neither the content nor
//! the length of a key leaks through timing), or a dashboard session's
//! cookie. `/v1/health`, the login page and the dashboard's static files
//! are open; ingest keys may only POST events; with no key configured the
//! API is open (and the configuration then allows only a loopback
//! address). A dashboard page asked for without a session redirects to
//! the login page; an API call is refused with 401.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Redirect, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::service::{Monitor, now_ms};
use crate::web::session;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Nothing,
    Ingest,
    Read,
    /// A dashboard page: without a session, the login page instead.
    Page,
}

fn need(method: &Method, path: &str) -> Need {
    match (method, path) {
        (_, "/v1/health" | "/login" | "/logout") => Need::Nothing,
        (_, path) if path.starts_with("/assets/") => Need::Nothing,
        (&Method::POST, "/v1/events" | "/v1/events/batch") => Need::Ingest,
        (_, path) if path.starts_with("/v1/") || path == "/metrics" => Need::Read,
        _ => Need::Page,
    }
}

/// Whether a request that carries a session cookie came from our own
/// pages: `SameSite=Strict` keeps the cookie off other sites' requests
/// already; a changing request's `Origin`, when sent, must be this host.
fn same_origin(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD) {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some() && origin_host == host
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
pub(crate) fn matches(key: &str, keys: &[String]) -> bool {
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
    let in_session = !allowed
        && session::token(request.headers()).is_some_and(|token| monitor.sessions.valid(token, now_ms()))
        && same_origin(request.method(), request.headers());
    if allowed || in_session {
        return next.run(request).await;
    }
    if need == Need::Page {
        let next = request.uri().path_and_query().map_or("/", |path| path.as_str());
        let query: String = url_encode(next);
        return Redirect::to(&format!("/login?next={query}")).into_response();
    }
    monitor.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
    let message = if presented(request.headers()).is_some() {
        "this key may not do that"
    } else {
        "an API key is required: send it in x-api-key (or Authorization: Bearer)"
    };
    (StatusCode::UNAUTHORIZED, Json(json!({ "error": message }))).into_response()
}

/// `text` as a query value.
fn url_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
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
        assert_eq!(need(&Method::GET, "/metrics"), Need::Read);
        assert_eq!(need(&Method::GET, "/nodes/n1"), Need::Page);
        assert_eq!(need(&Method::GET, "/assets/js/app.js"), Need::Nothing);
        assert_eq!(
            url_encode("/nodes?state=down&tag=a b"),
            "/nodes%3Fstate%3Ddown%26tag%3Da%20b"
        );
    }

    #[test]
    fn a_session_may_change_things_only_from_this_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:7410".parse().unwrap());
        assert!(
            same_origin(&Method::POST, &headers),
            "no Origin: a same-origin form or a tool"
        );
        headers.insert(header::ORIGIN, "http://127.0.0.1:7410".parse().unwrap());
        assert!(same_origin(&Method::POST, &headers));
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&Method::POST, &headers));
        assert!(same_origin(&Method::GET, &headers));
    }
}
