//! The fleet dashboard: web pages served by `citadel monitor` at `/`,
//! made of embedded plain HTML, CSS and JavaScript modules (`assets`).
//! Every page is the same document; its script reads the path, asks the
//! monitor's JSON API for what the page shows and keeps it current from
//! one `EventSource` on `/v1/stream`. Logging in turns an API key into a
//! session cookie (`session`). Every response carries a strict
//! Content-Security-Policy: scripts only from the monitor's own files,
//! nothing inline, nothing from elsewhere.

pub mod assets;
pub mod session;

use std::sync::Arc;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Router, routing::post};
use serde::Deserialize;

use crate::api::auth;
use crate::service::{Monitor, now_ms};

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes.
pub fn router() -> Router<Arc<Monitor>> {
    Router::new()
        .route("/", get(page))
        .route("/nodes", get(page))
        .route("/nodes/{id}", get(page))
        .route("/jobs", get(page))
        .route("/jobs/{job}", get(page))
        .route("/alerts", get(page))
        .route("/events", get(page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/{*path}", get(asset))
}

/// Security headers on everything the monitor answers.
pub async fn harden(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn page(headers: HeaderMap) -> Response {
    assets::serve(&assets::INDEX, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match assets::find(&path) {
        Some(asset) => assets::serve(asset, &headers),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// Where to go after logging in: a path of this site only.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => next,
        _ => "/",
    }
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The login page, returning to `next`, saying `message` (escaped both).
fn login_body(next: &str, message: &str) -> String {
    let template = std::str::from_utf8(assets::LOGIN.body).expect("the login page is UTF-8");
    template
        .replace("{{next}}", &escape(next))
        .replace("{{message}}", &escape(message))
        .replace("{{message_hidden}}", if message.is_empty() { "hidden" } else { "" })
}

fn render_login(status: StatusCode, next: &str, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        login_body(next, message),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct NextParam {
    next: Option<String>,
}

async fn login_page(State(monitor): State<Arc<Monitor>>, Query(query): Query<NextParam>) -> Response {
    let next = safe_next(query.next.as_deref());
    if monitor.config.api_keys.is_empty() {
        // An open monitor (loopback, no keys): there is nothing to log in to.
        return Redirect::to(next).into_response();
    }
    render_login(StatusCode::OK, next, "")
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    key: String,
    next: Option<String>,
}

async fn login(State(monitor): State<Arc<Monitor>>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref()).to_string();
    let config = &monitor.config;
    if config.api_keys.is_empty() {
        return Redirect::to(&next).into_response();
    }
    if !auth::matches(form.key.trim(), &config.api_keys) {
        monitor
            .counters
            .unauthorized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("a dashboard login with a key that is not an API key was refused");
        return render_login(
            StatusCode::UNAUTHORIZED,
            &next,
            "That is not an API key of this monitor (monitor.api_keys). Ingest keys cannot log in.",
        );
    }
    let now = now_ms();
    let ttl_s = config.session_ttl_s;
    let expires = now.saturating_add(ttl_s.saturating_mul(1000));
    let token = monitor.sessions.open(now, expires);
    let digest = session::digest(&token);
    let store = Arc::clone(monitor.store());
    let kept = tokio::task::spawn_blocking(move || store.session_opened(&digest, expires)).await;
    if !matches!(kept, Ok(Ok(()))) {
        // Still a session until this monitor stops; only a restart ends it.
        tracing::warn!("a dashboard session could not be stored: it ends when the monitor restarts");
    }
    let cookie = session::set_cookie(&token, ttl_s, session::over_tls(&headers));
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

async fn logout(State(monitor): State<Arc<Monitor>>, headers: HeaderMap) -> Response {
    if let Some(token) = session::token(&headers) {
        monitor.sessions.close(token);
        let digest = session::digest(token);
        let store = Arc::clone(monitor.store());
        match tokio::task::spawn_blocking(move || store.session_closed(&digest)).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!("a closed dashboard session could not be removed from the store"),
        }
    }
    let cookie = session::clear_cookie(session::over_tls(&headers));
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_this_site_are_followed_after_login() {
        assert_eq!(safe_next(Some("/nodes?state=down")), "/nodes?state=down");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_login_page_escapes_what_it_echoes() {
        let page = login_body("/\"><script>x</script>", "<img src=x onerror=alert(1)>");
        assert!(
            page.contains("value=\"/&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""),
            "{page}"
        );
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<script>x") && !page.contains("<img src=x"));
        assert!(!page.contains("{{"), "every placeholder is filled");
        assert!(login_body("/", "").contains("role=\"alert\" hidden>"));
    }
}
