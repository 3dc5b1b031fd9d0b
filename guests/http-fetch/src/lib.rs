//! `http-fetch`: one HTTP request through capability `http`.
//!
//! Payload `{"url", "method"?: "GET", "headers"?: {name: value}, "body"?:
//! text, "max_redirects"?: 5, "max_body_bytes"?: 1048576, "hold_open"?: 0}`
//! (`hold_open`: responses to `hold_url`, default `url`, kept open and
//! unread before the real request). Redirects
//! (301/302/303/307/308) are followed here, each hop a new request the node
//! checks against the tenant's egress rules. Result `{"status", "url"
//! (the last one asked), "redirects", "content_type", "bytes", "body"
//! (text, lossy UTF-8)}`. A refusal by the node's policy is a `denied`
//! error naming the `wasi:http` error code.

use std::collections::BTreeMap;

use citadel_guest::http::{self, Url};
use citadel_guest::{Guest, HandlerError, Job};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fetch {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default = "five")]
    max_redirects: u32,
    #[serde(default = "one_mib")]
    max_body_bytes: usize,
    /// Hold this many responses open before reading the last one (tests
    /// the node's per-job connection cap).
    #[serde(default)]
    hold_open: usize,
    /// Where the held requests go (default: `url`).
    #[serde(default)]
    hold_url: Option<String>,
}

fn get() -> String {
    "GET".into()
}

fn five() -> u32 {
    5
}

fn one_mib() -> usize {
    1 << 20
}

struct HttpFetch;

impl Guest for HttpFetch {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let fetch: Fetch =
            serde_json::from_str(&job.payload).map_err(|err| HandlerError::InvalidInput(format!("payload: {err}")))?;
        let mut url = Url::parse(&fetch.url).map_err(HandlerError::InvalidInput)?;
        let headers: Vec<(&str, &str)> = fetch
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let mut method = fetch.method.clone();
        let mut body = fetch.body.as_deref().map(str::as_bytes);
        let hold_url = match &fetch.hold_url {
            Some(hold_url) => Url::parse(hold_url).map_err(HandlerError::InvalidInput)?,
            None => url.clone(),
        };
        let mut held = Vec::new();
        for _ in 0..fetch.hold_open {
            held.push(http::send("GET", &hold_url, &[], None).map_err(http::HttpFailure::into_handler_error)?);
        }
        let mut redirects = 0;
        loop {
            let mut response =
                http::send(&method, &url, &headers, body).map_err(http::HttpFailure::into_handler_error)?;
            let location = response.header("location").map(str::to_string);
            if let (301 | 302 | 303 | 307 | 308, Some(location)) = (response.status, location) {
                if redirects == fetch.max_redirects {
                    return Err(HandlerError::Failed(format!(
                        "{url}: more than {} redirects",
                        fetch.max_redirects
                    )));
                }
                redirects += 1;
                if response.status == 303 || (response.status != 307 && response.status != 308 && method == "POST") {
                    method = "GET".into();
                    body = None;
                }
                url = http::resolve(&url, &location).map_err(HandlerError::Failed)?;
                continue;
            }
            let bytes = response
                .read_to_end(fetch.max_body_bytes)
                .map_err(http::HttpFailure::into_handler_error)?;
            let result = serde_json::json!({
                "status": response.status,
                "url": url.to_string(),
                "redirects": redirects,
                "content_type": response.header("content-type"),
                "bytes": bytes.len(),
                "body": String::from_utf8_lossy(&bytes),
                "held_open": held.len(),
            });
            return Ok(result.to_string());
        }
    }
}

citadel_guest::export_handler!(HttpFetch);
