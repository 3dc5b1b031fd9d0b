//! A real HTTP endpoint for the status publisher to POST to: hyper on a
//! loopback port, answering as the test tells it (`200`, `503`, `400`, or
//! not at all), recording the bodies it accepted in arrival order.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use tokio::task::JoinHandle;

use crate::serve_loopback;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `200`, and the body is recorded.
    Accept,
    /// `503` (a retriable outage).
    Unavailable,
    /// `400` (the message is refused for good).
    Reject,
    /// Read the request, then never answer (a hung endpoint).
    Hang,
}

#[derive(Default)]
struct State {
    answer: Option<Answer>,
    accepted: Vec<String>,
    attempts: u64,
    authorization: Vec<Option<String>>,
    paths: Vec<String>,
}

/// The endpoint; stops when dropped.
pub struct StatusReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl StatusReceiver {
    /// Listen on a free loopback port, answering `answer`.
    pub async fn start(answer: Answer) -> StatusReceiver {
        let state = Arc::new(Mutex::new(State {
            answer: Some(answer),
            ..State::default()
        }));
        let (addr, task) = serve_loopback({
            let state = Arc::clone(&state);
            move |request| answer_request(request, Arc::clone(&state))
        })
        .await;
        StatusReceiver { addr, state, task }
    }

    /// The URL to POST to.
    pub fn url(&self) -> String {
        format!("{}/api/v1/nodes/status", self.base())
    }

    /// Its base URL (any path is answered the same).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The path of each request.
    pub fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().paths.clone()
    }

    /// Answer `answer` from now on.
    pub fn answer(&self, answer: Answer) {
        self.state.lock().unwrap().answer = Some(answer);
    }

    /// Bodies accepted so far, in order.
    pub fn accepted(&self) -> Vec<String> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Requests received so far (any answer).
    pub fn attempts(&self) -> u64 {
        self.state.lock().unwrap().attempts
    }

    /// The `Authorization` header of each request.
    pub fn authorization(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().authorization.clone()
    }
}

impl Drop for StatusReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer_request(
    request: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let path = request.uri().path().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let status = {
        let mut state = state.lock().unwrap();
        state.attempts += 1;
        state.authorization.push(authorization);
        state.paths.push(path);
        match state.answer.expect("an answer") {
            Answer::Accept => {
                state.accepted.push(String::from_utf8_lossy(&body).into_owned());
                Some(StatusCode::OK)
            }
            Answer::Unavailable => Some(StatusCode::SERVICE_UNAVAILABLE),
            Answer::Reject => Some(StatusCode::BAD_REQUEST),
            Answer::Hang => None,
        }
    };
    let Some(status) = status else {
        return std::future::pending().await;
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap())
}
