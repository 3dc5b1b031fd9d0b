//! A **fake** of the control plane's device authorization endpoints (the
//! real one is remote; RFC 8628 as the OAuth 2.0 Device Authorization
//! Grant describes it): `POST /oauth/device/code` hands out a device code,
//! `POST /oauth/token` answers each poll as the test scripts it
//! (`authorization_pending`, `slow_down`, `access_denied`,
//! `expired_token`, or the token), recording when each poll came and what
//! it sent.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::serve_loopback;

/// The device code the fake hands out.
pub const DEVICE_CODE: &str = "GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS";
/// The user code.
pub const USER_CODE: &str = "WDJB-MJHT";
/// The access token it grants.
pub const ACCESS_TOKEN: &str = "node-token-7f3a";

/// How the token endpoint answers one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAnswer {
    /// `400 {"error":"authorization_pending"}`.
    Pending,
    /// `400 {"error":"slow_down"}`.
    SlowDown,
    /// `400 {"error":"access_denied"}`.
    Denied,
    /// `400 {"error":"expired_token"}`.
    Expired,
    /// `200` with the token.
    Grant,
}

/// One poll of the token endpoint as the fake saw it.
#[derive(Debug, Clone)]
pub struct TokenPoll {
    /// When it came.
    pub at: Instant,
    /// Its form fields.
    pub form: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    interval_s: u64,
    answers: VecDeque<TokenAnswer>,
    code_requests: Vec<Vec<(String, String)>>,
    polls: Vec<TokenPoll>,
}

/// The fake control plane; stops when dropped.
pub struct FakeControlPlane {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl FakeControlPlane {
    /// Listen on a free loopback port, asking for a poll every
    /// `interval_s` and answering the polls with `answers` in order (the
    /// last one repeats).
    pub async fn start(interval_s: u64, answers: &[TokenAnswer]) -> FakeControlPlane {
        let state = Arc::new(Mutex::new(State {
            interval_s,
            answers: answers.iter().copied().collect(),
            ..State::default()
        }));
        let (addr, task) = serve_loopback({
            let state = Arc::clone(&state);
            move |request| answer(request, Arc::clone(&state))
        })
        .await;
        FakeControlPlane { addr, state, task }
    }

    /// Its base URL (`auth.url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The polls of the token endpoint so far.
    pub fn polls(&self) -> Vec<TokenPoll> {
        self.state.lock().unwrap().polls.clone()
    }

    /// The form fields of each device code request.
    pub fn code_requests(&self) -> Vec<Vec<(String, String)>> {
        self.state.lock().unwrap().code_requests.clone()
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, body: Value) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let mut state = state.lock().unwrap();
    match (method, path.as_str()) {
        (Method::POST, "/oauth/device/code") => {
            state.code_requests.push(form(&body));
            let base = "http://citadel.example/device";
            reply(
                StatusCode::OK,
                json!({
                    "device_code": DEVICE_CODE,
                    "user_code": USER_CODE,
                    "verification_uri": base,
                    "verification_uri_complete": format!("{base}?user_code={USER_CODE}"),
                    "expires_in": 900,
                    "interval": state.interval_s,
                }),
            )
        }
        (Method::POST, "/oauth/token") => {
            state.polls.push(TokenPoll {
                at: Instant::now(),
                form: form(&body),
            });
            let next = if state.answers.len() > 1 {
                state.answers.pop_front()
            } else {
                state.answers.front().copied()
            };
            let error = |code: &str| reply(StatusCode::BAD_REQUEST, json!({ "error": code }));
            match next.unwrap_or(TokenAnswer::Pending) {
                TokenAnswer::Pending => error("authorization_pending"),
                TokenAnswer::SlowDown => error("slow_down"),
                TokenAnswer::Denied => error("access_denied"),
                TokenAnswer::Expired => error("expired_token"),
                TokenAnswer::Grant => reply(
                    StatusCode::OK,
                    json!({
                        "access_token": ACCESS_TOKEN,
                        "token_type": "Bearer",
                        "expires_in": 86400,
                        "scope": "node",
                    }),
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": "no such route" })),
    }
}
