//! Citadel's Nexus HTTP API, for nodes without Redis (on-prem):
//! `GET {nexus}/api/v1/jobs/next` hands out one job (`204 No Content`: none)
//! and `POST {nexus}/api/v1/jobs/{id}/status` takes its outcome
//! (`{"status":"SUCCESS","output":…}` or `{"status":"FAILURE","error":…}`),
//! with a bearer token when one is configured.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backoff::Retriable;

/// A Nexus API that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NexusError {
    /// Nothing answered, or the answer broke off (retried).
    #[error("cannot reach the Nexus API at {url}: {detail}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why.
        detail: String,
    },
    /// It answered with an error status.
    #[error("the Nexus API answered {status} to {url}: {body}")]
    Status {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// It handed out something that is not a job (not retried).
    #[error("the Nexus API handed out an unusable job: {0}")]
    BadJob(String),
}

impl Retriable for NexusError {
    fn is_retriable(&self) -> bool {
        match self {
            NexusError::Unreachable { .. } => true,
            // Server trouble, rate limits and timeouts pass; other client
            // errors (a bad token, an unknown job) do not.
            NexusError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            NexusError::BadJob(_) => false,
        }
    }
}

/// A job as the Nexus API hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct NexusJob {
    /// Its id (`id` or `jobId`).
    pub id: String,
    /// Its type (`type`, else `payload.type`).
    pub job_type: String,
    /// The payload, as JSON text.
    pub payload: String,
    /// The tenant (`tenant` or `organizationId`, at the top or in the payload).
    pub tenant: Option<String>,
    /// Its budget, ms (`timeout_ms`, at the top or in the payload).
    pub timeout_ms: Option<u64>,
    /// A trace id carried through (`rayId`).
    pub ray_id: Option<String>,
}

#[derive(Deserialize)]
struct RawJob {
    id: Option<String>,
    #[serde(rename = "jobId")]
    job_id: Option<String>,
    #[serde(rename = "type")]
    job_type: Option<String>,
    #[serde(default)]
    payload: Value,
    tenant: Option<String>,
    #[serde(rename = "organizationId")]
    organization_id: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(rename = "rayId")]
    ray_id: Option<String>,
}

impl NexusJob {
    /// Parse the body of `GET /jobs/next`.
    pub fn parse(body: &[u8]) -> Result<NexusJob, String> {
        let raw: RawJob = serde_json::from_slice(body).map_err(|err| format!("not a job object: {err}"))?;
        let payload = match raw.payload {
            Value::String(text) => serde_json::from_str(&text).map_err(|err| format!("payload is not JSON: {err}"))?,
            Value::Null => Value::Object(Default::default()),
            other => other,
        };
        if !payload.is_object() {
            return Err("payload is not a JSON object".into());
        }
        let id = raw
            .id
            .or(raw.job_id)
            .filter(|id| !id.is_empty())
            .ok_or("it has no `id`")?;
        let text = |key: &str| payload.get(key).and_then(Value::as_str).map(String::from);
        let job_type = raw
            .job_type
            .or_else(|| text("type"))
            .filter(|job_type| !job_type.is_empty())
            .ok_or_else(|| format!("job {id} has no `type`"))?;
        Ok(NexusJob {
            tenant: raw
                .tenant
                .or(raw.organization_id)
                .or_else(|| text("tenant"))
                .or_else(|| text("organizationId")),
            timeout_ms: raw
                .timeout_ms
                .or_else(|| payload.get("timeout_ms").and_then(Value::as_u64)),
            ray_id: raw.ray_id,
            payload: payload.to_string(),
            id,
            job_type,
        })
    }
}

/// A job's outcome, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "UPPERCASE")]
pub enum Outcome {
    /// It ran and returned `output`.
    Success {
        /// The handler's result.
        output: Value,
    },
    /// It failed.
    Failure {
        /// Why.
        error: String,
    },
}

/// A client of one Nexus API.
#[derive(Clone)]
pub struct NexusClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl NexusClient {
    /// A client of the API at `base` (`https://nexus.example`), sending
    /// `token` as a bearer token, each call bounded by `timeout`.
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<NexusClient, String> {
        Ok(NexusClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: crate::http::client(timeout)?,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The next job, if there is one.
    pub async fn next(&self) -> Result<Option<NexusJob>, NexusError> {
        let url = format!("{}/api/v1/jobs/next", self.base);
        let response = self.send(&url, self.authorized(self.http.get(&url))).await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body = response.bytes().await.map_err(|err| unreachable(&url, &err))?;
        NexusJob::parse(&body).map(Some).map_err(NexusError::BadJob)
    }

    /// Report job `id`'s outcome.
    pub async fn report(&self, id: &str, outcome: &Outcome) -> Result<(), NexusError> {
        let url = format!("{}/api/v1/jobs/{id}/status", self.base);
        let request = self.authorized(self.http.post(&url).json(outcome));
        self.send(&url, request).await.map(drop)
    }

    async fn send(&self, url: &str, request: reqwest::RequestBuilder) -> Result<reqwest::Response, NexusError> {
        let response = request.send().await.map_err(|err| unreachable(url, &err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(NexusError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        })
    }
}

fn unreachable(url: &str, err: &reqwest::Error) -> NexusError {
    use std::error::Error as _;
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    NexusError::Unreachable {
        url: url.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_parse_from_either_spelling() {
        let job = NexusJob::parse(
            br#"{"id":"j1","type":"echo","payload":{"text":"hi","organizationId":"acme","timeout_ms":500}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                job.id.as_str(),
                job.job_type.as_str(),
                job.tenant.as_deref(),
                job.timeout_ms
            ),
            ("j1", "echo", Some("acme"), Some(500))
        );
        assert_eq!(serde_json::from_str::<Value>(&job.payload).unwrap()["text"], "hi");
        let job = NexusJob::parse(br#"{"jobId":"j2","payload":"{\"type\":\"extract\"}","rayId":"r"}"#).unwrap();
        assert_eq!((job.id.as_str(), job.job_type.as_str()), ("j2", "extract"));
        assert_eq!(job.ray_id.as_deref(), Some("r"));
        assert!(NexusJob::parse(br#"{"type":"echo"}"#).unwrap_err().contains("no `id`"));
        assert!(NexusJob::parse(br#"{"id":"j3"}"#).unwrap_err().contains("no `type`"));
        assert!(NexusJob::parse(br#"{"id":"j4","type":"x","payload":[1]}"#).is_err());
    }

    #[test]
    fn outcomes_serialize_as_the_api_expects() {
        let success = Outcome::Success {
            output: serde_json::json!({"n": 1}),
        };
        assert_eq!(
            serde_json::to_value(&success).unwrap(),
            serde_json::json!({"status": "SUCCESS", "output": {"n": 1}})
        );
        let failure = Outcome::Failure { error: "boom".into() };
        assert_eq!(
            serde_json::to_value(&failure).unwrap(),
            serde_json::json!({"status": "FAILURE", "error": "boom"})
        );
    }

    #[test]
    fn server_trouble_is_retried_client_errors_are_not() {
        let status = |status| NexusError::Status {
            url: "u".into(),
            status,
            body: String::new(),
        };
        assert!(status(503).is_retriable());
        assert!(status(429).is_retriable());
        assert!(!status(401).is_retriable());
        assert!(!status(404).is_retriable());
        assert!(
            NexusError::Unreachable {
                url: "u".into(),
                detail: "refused".into()
            }
            .is_retriable()
        );
    }
}

#[cfg(test)]
mod properties {
    //! Whatever a Nexus API answers for a job: a job or a named refusal.

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    proptest! {
        #[test]
        fn any_body_is_a_job_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Err(err) = NexusJob::parse(&body) {
                prop_assert!(!err.is_empty());
            }
        }

        #[test]
        fn any_job_shaped_object_is_a_job_or_an_error(
            id in proptest::option::of(".{0,12}"),
            job_type in proptest::option::of(".{0,12}"),
            payload in prop_oneof![
                Just(json!(null)),
                ".{0,40}".prop_map(Value::from),
                proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4).prop_map(|map| json!(map)),
                any::<i64>().prop_map(Value::from),
            ],
        ) {
            let mut object = json!({"payload": payload});
            if let Some(id) = id {
                object["id"] = json!(id);
            }
            if let Some(job_type) = job_type {
                object["type"] = json!(job_type);
            }
            let body = serde_json::to_vec(&object).unwrap();
            if let Ok(job) = NexusJob::parse(&body) {
                prop_assert!(serde_json::from_str::<Value>(&job.payload).is_ok());
            }
        }
    }
}
