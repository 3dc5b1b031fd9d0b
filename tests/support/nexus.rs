//! A **fake** of Citadel's remote Nexus API (nothing real can run here):
//! hyper on a loopback port, handing out the jobs the test queues on `GET
//! /api/v1/jobs/next` (`204` when none) and recording the outcomes POSTed to
//! `/api/v1/jobs/{id}/status` — or refusing them with `503` (or for good,
//! `422`) as many times as the test says, to inject a failing report
//! endpoint.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::serve_loopback;

#[derive(Default)]
struct State {
    jobs: VecDeque<Value>,
    polls: u64,
    handed_out: Vec<String>,
    reports: Vec<(String, Value)>,
    report_attempts: u64,
    refuse_reports: u64,
    reject_reports: u64,
    token: Option<String>,
    unauthorized: u64,
}

/// The fake Nexus API; stops when dropped.
pub struct FakeNexus {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl FakeNexus {
    /// Listen on a free loopback port; with `token`, every call must carry
    /// it as a bearer token (else `401`).
    pub async fn start(token: Option<&str>) -> FakeNexus {
        let state = Arc::new(Mutex::new(State {
            token: token.map(String::from),
            ..State::default()
        }));
        let (addr, task) = serve_loopback({
            let state = Arc::clone(&state);
            move |request| answer(request, Arc::clone(&state))
        })
        .await;
        FakeNexus { addr, state, task }
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue a job (handed out once).
    pub fn push(&self, job: Value) {
        self.state.lock().unwrap().jobs.push_back(job);
    }

    /// Answer the next `times` reports with `503`.
    pub fn refuse_reports(&self, times: u64) {
        self.state.lock().unwrap().refuse_reports = times;
    }

    /// Refuse the next `times` reports for good (`422`).
    pub fn reject_reports(&self, times: u64) {
        self.state.lock().unwrap().reject_reports = times;
    }

    /// Job ids handed out so far, in order.
    pub fn handed_out(&self) -> Vec<String> {
        self.state.lock().unwrap().handed_out.clone()
    }

    /// Reports accepted so far: job id and body.
    pub fn reports(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().reports.clone()
    }

    /// Report requests received (accepted or refused).
    pub fn report_attempts(&self) -> u64 {
        self.state.lock().unwrap().report_attempts
    }

    /// `GET /api/v1/jobs/next` requests answered so far.
    pub fn polls(&self) -> u64 {
        self.state.lock().unwrap().polls
    }

    /// Calls refused for a missing or wrong token.
    pub fn unauthorized(&self) -> u64 {
        self.state.lock().unwrap().unauthorized
    }
}

impl Drop for FakeNexus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap())
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let mut state = state.lock().unwrap();
    if let Some(token) = &state.token
        && authorization.as_deref() != Some(&format!("Bearer {token}"))
    {
        state.unauthorized += 1;
        return reply(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#);
    }
    if method == Method::GET && path == "/api/v1/jobs/next" {
        state.polls += 1;
        return match state.jobs.pop_front() {
            Some(job) => {
                let id = job["id"]
                    .as_str()
                    .or(job["jobId"].as_str())
                    .unwrap_or_default()
                    .to_string();
                state.handed_out.push(id);
                reply(StatusCode::OK, job.to_string())
            }
            None => reply(StatusCode::NO_CONTENT, ""),
        };
    }
    let report = path
        .strip_prefix("/api/v1/jobs/")
        .and_then(|rest| rest.strip_suffix("/status"));
    if let (true, Some(id)) = (method == Method::POST, report) {
        state.report_attempts += 1;
        if state.refuse_reports > 0 {
            state.refuse_reports -= 1;
            return reply(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"try later"}"#);
        }
        if state.reject_reports > 0 {
            state.reject_reports -= 1;
            return reply(StatusCode::UNPROCESSABLE_ENTITY, r#"{"error":"no such job"}"#);
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        state.reports.push((id.to_string(), body));
        return reply(StatusCode::OK, "{}");
    }
    reply(StatusCode::NOT_FOUND, r#"{"error":"no such route"}"#)
}
