//! A small Docker Engine API client: the node's managed services run as
//! containers under Docker or podman, and the agent lists, inspects, starts,
//! stops and restarts them and reads their logs. It speaks the Engine API over
//! a unix socket through `bollard`; bollard's types stay inside this module.
//!
//! The API version is negotiated once (`/version`): Docker 29 refuses
//! versions below 1.44, podman 4 speaks 1.41, and bollard asks for its newest.
//! Answers are read through lenient records of our own: bollard's closed
//! state enums refuse the `stopped` podman 4.3 reports while a container's
//! exit is being cleaned up.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, LogsOptionsBuilder, RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A client of the Engine API on one unix socket. Cheap to clone.
#[derive(Clone)]
pub struct DockerClient {
    socket: String,
    timeout: Duration,
    /// Set by the first call that reaches the engine (with the negotiated
    /// API version); connections themselves are made per request.
    connected: Arc<Mutex<Option<Docker>>>,
}

/// A container as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSummary {
    /// Full container id.
    pub id: String,
    /// Name, without Docker's leading `/`.
    pub name: String,
    /// Image the container was created from, as named at creation.
    pub image: String,
    /// `created`, `running`, `exited`… as the engine says it.
    pub state: String,
    /// Human status (`Up 5 minutes`, `Exited (0) 2 hours ago`).
    pub status: String,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
}

/// A container as inspected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerDetails {
    /// Full container id.
    pub id: String,
    /// Name, without Docker's leading `/`.
    pub name: String,
    /// Image the container was created from, as named at creation.
    pub image: String,
    /// `created`, `running`, `exited`… as the engine says it.
    pub state: String,
    /// Whether its process runs.
    pub running: bool,
    /// Exit code of the last run (0 when it never ran).
    pub exit_code: i64,
    /// When it last started (RFC 3339), `None` when it never did.
    pub started_at: Option<String>,
    /// When it last finished (RFC 3339), `None` when it never did.
    pub finished_at: Option<String>,
    /// `starting`, `healthy` or `unhealthy`; `None` without a health check.
    pub health: Option<String>,
    /// How often the engine restarted it (restart policy).
    pub restart_count: u32,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// Nothing answers on the socket: missing, refused, or no answer in time.
    #[error(
        "the Docker API at {socket} is unavailable ({detail}): is the Docker or podman API service running? \
         (docker.socket, or `podman system service`)"
    )]
    Unavailable {
        /// The socket path.
        socket: String,
        /// What went wrong.
        detail: String,
    },
    /// No container has that name or id.
    #[error("no container named {container}")]
    NotFound {
        /// The name or id asked for.
        container: String,
    },
    /// The engine answered with an error status.
    #[error("the Docker API answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
}

impl DockerClient {
    /// Connect lazily to the API at `socket` (a path to a unix socket;
    /// `unix:///path` is accepted too). Every call is bounded by `timeout`
    /// (stop and restart by `timeout` plus their grace period).
    pub fn new(socket: &str, timeout: Duration) -> Result<DockerClient, DockerError> {
        let path = socket.strip_prefix("unix://").unwrap_or(socket);
        if !path.starts_with('/') {
            return Err(DockerError::Unavailable {
                socket: socket.to_string(),
                detail: "not an absolute path to a unix socket".into(),
            });
        }
        Ok(DockerClient {
            socket: path.to_string(),
            timeout,
            connected: Arc::default(),
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// Check that the engine answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.call(
            None,
            self.timeout,
            |docker| async move { docker.ping().await.map(drop) },
        )
        .await
    }

    /// Containers, running or not; `labels` are `key` or `key=value` filters
    /// (all must match).
    pub async fn list(&self, labels: &[String]) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = HashMap::from([("label", labels.to_vec())]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let listed: Vec<Listed> = self
            .call_lenient(
                None,
                |docker| async move { docker.list_containers(Some(options)).await },
            )
            .await?;
        Ok(listed.into_iter().map(Listed::into_summary).collect())
    }

    /// One container's details.
    pub async fn inspect(&self, name_or_id: &str) -> Result<ContainerDetails, DockerError> {
        let inspected: Inspected = self
            .call_lenient(Some(name_or_id), |docker| async move {
                docker.inspect_container(name_or_id, None).await
            })
            .await?;
        Ok(inspected.into_details())
    }

    /// Start a container; one already running is fine.
    pub async fn start(&self, name_or_id: &str) -> Result<(), DockerError> {
        self.call(Some(name_or_id), self.timeout, |docker| async move {
            docker.start_container(name_or_id, None).await
        })
        .await
    }

    /// Stop a container (SIGTERM, then SIGKILL after `grace`, in whole
    /// seconds rounded up); one already stopped is fine.
    pub async fn stop(&self, name_or_id: &str, grace: Duration) -> Result<(), DockerError> {
        let options = StopContainerOptionsBuilder::new().t(whole_seconds(grace)).build();
        self.call(Some(name_or_id), self.timeout + grace, |docker| async move {
            docker.stop_container(name_or_id, Some(options)).await
        })
        .await
    }

    /// Restart a container (stopping it as [`DockerClient::stop`] does).
    pub async fn restart(&self, name_or_id: &str, grace: Duration) -> Result<(), DockerError> {
        let options = RestartContainerOptionsBuilder::new().t(whole_seconds(grace)).build();
        self.call(Some(name_or_id), self.timeout + grace, |docker| async move {
            docker.restart_container(name_or_id, Some(options)).await
        })
        .await
    }

    /// Last `tail` lines of stdout+stderr, at most `max_bytes` (keep the
    /// newest bytes when longer), UTF-8 lossy.
    pub async fn logs(&self, name_or_id: &str, tail: u32, max_bytes: usize) -> Result<String, DockerError> {
        let tail = tail.to_string();
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&tail).build();
        let bytes = self
            .call(Some(name_or_id), self.timeout, |docker| async move {
                let mut frames = docker.logs(name_or_id, Some(options));
                let mut bytes = Vec::new();
                while let Some(frame) = frames.next().await {
                    bytes.extend_from_slice(frame?.as_ref());
                    keep_newest(&mut bytes, max_bytes);
                }
                Ok(bytes)
            })
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Run `op` on a connected client within `within`, mapping errors
    /// (`container` names what a 404 is about).
    async fn call<T, F, Fut>(&self, container: Option<&str>, within: Duration, op: F) -> Result<T, DockerError>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, BollardError>>,
    {
        self.call_raw(container, within, op).await.map_err(DockerError::from)
    }

    /// [`DockerClient::call`] for an answer read as `L`: bollard's typed
    /// answer re-read, or the body its closed enums refused.
    async fn call_lenient<T, L, F, Fut>(&self, container: Option<&str>, op: F) -> Result<L, DockerError>
    where
        T: Serialize,
        L: DeserializeOwned,
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, BollardError>>,
    {
        let read = match self.call_raw(container, self.timeout, op).await {
            Ok(typed) => serde_json::to_value(typed).and_then(serde_json::from_value),
            Err(Refused::Json(body)) => serde_json::from_str(&body),
            Err(Refused::Error(err)) => return Err(err),
        };
        read.map_err(|err| DockerError::Api {
            status: 200,
            message: format!("unreadable answer: {err}"),
        })
    }

    /// [`DockerClient::call`], handing back a body bollard could not decode.
    async fn call_raw<T, F, Fut>(&self, container: Option<&str>, within: Duration, op: F) -> Result<T, Refused>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, BollardError>>,
    {
        let work = async {
            // bollard's own request timeout (whole seconds) only backs ours up.
            let docker = self.connect().await?.with_timeout(within + Duration::from_secs(1));
            op(docker).await.map_err(|err| self.refused(err, container))
        };
        tokio::time::timeout(within, work)
            .await
            .unwrap_or_else(|_| Err(self.unavailable(format!("no answer within {within:?}")).into()))
    }

    /// The connected client, negotiating the API version on first use.
    async fn connect(&self) -> Result<Docker, Refused> {
        if let Some(docker) = self.connected.lock().expect("docker client lock").clone() {
            return Ok(docker);
        }
        let secs = self.timeout.as_secs() + 1;
        let docker = Docker::connect_with_unix(&self.socket, secs, API_DEFAULT_VERSION)
            .map_err(|err| self.refused(err, None))?
            .negotiate_version()
            .await
            .map_err(|err| self.refused(err, None))?;
        *self.connected.lock().expect("docker client lock") = Some(docker.clone());
        Ok(docker)
    }

    fn unavailable(&self, detail: String) -> DockerError {
        DockerError::Unavailable {
            socket: self.socket.clone(),
            detail,
        }
    }

    fn refused(&self, err: BollardError, container: Option<&str>) -> Refused {
        match err {
            BollardError::DockerResponseServerError { status_code, message } => match (status_code, container) {
                (404, Some(container)) => DockerError::NotFound {
                    container: container.to_string(),
                },
                (status, _) => DockerError::Api { status, message },
            }
            .into(),
            BollardError::JsonDataError { contents, .. } => Refused::Json(contents),
            other => self.unavailable(chain(&other)).into(),
        }
    }
}

/// A failed call: an error, or a body bollard could not decode.
enum Refused {
    Error(DockerError),
    Json(String),
}

impl From<DockerError> for Refused {
    fn from(err: DockerError) -> Refused {
        Refused::Error(err)
    }
}

impl From<Refused> for DockerError {
    fn from(refused: Refused) -> DockerError {
        match refused {
            Refused::Error(err) => err,
            Refused::Json(contents) => DockerError::Api {
                status: 200,
                message: format!("unexpected answer: {}", truncate(&contents, 200)),
            },
        }
    }
}

// The fields read from answers. bollard decodes states into closed enums,
// which refuse podman 4.3's `stopped` (between a process's exit and its
// cleanup): answers are read through these lenient records instead.

/// A listed container.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listed {
    id: Option<String>,
    names: Option<Vec<String>>,
    image: Option<String>,
    state: Option<String>,
    status: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

impl Listed {
    fn into_summary(self) -> ContainerSummary {
        ContainerSummary {
            id: self.id.unwrap_or_default(),
            name: own_name(self.names.unwrap_or_default()),
            image: self.image.unwrap_or_default(),
            state: docker_state(self.state.unwrap_or_default()),
            status: self.status.unwrap_or_default(),
            labels: self.labels.unwrap_or_default(),
        }
    }
}

/// An inspected container.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    id: Option<String>,
    name: Option<String>,
    /// The image's id; `Config.Image` names it as given at creation.
    image: Option<String>,
    state: Option<InspectedState>,
    config: Option<InspectedConfig>,
    restart_count: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectedState {
    status: Option<String>,
    running: Option<bool>,
    exit_code: Option<i64>,
    started_at: Option<String>,
    finished_at: Option<String>,
    health: Option<InspectedHealth>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedHealth {
    status: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectedConfig {
    image: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

impl Inspected {
    fn into_details(self) -> ContainerDetails {
        let state = self.state.unwrap_or_default();
        let config = self.config.unwrap_or_default();
        ContainerDetails {
            id: self.id.unwrap_or_default(),
            name: strip_slash(self.name.unwrap_or_default()),
            image: config.image.or(self.image).unwrap_or_default(),
            state: docker_state(state.status.unwrap_or_default()),
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code.unwrap_or(0),
            started_at: real_time(state.started_at),
            finished_at: real_time(state.finished_at),
            // Empty or `none` without a health check.
            health: state
                .health
                .and_then(|h| h.status)
                .filter(|s| !s.is_empty() && s != "none"),
            restart_count: u32::try_from(self.restart_count.unwrap_or(0).max(0)).unwrap_or(u32::MAX),
            labels: config.labels.unwrap_or_default(),
        }
    }
}

/// Docker's name for a state: podman 4.3 says `stopped` for `exited`.
fn docker_state(state: String) -> String {
    if state == "stopped" { "exited".into() } else { state }
}

/// A container's own name among its `Names`: with legacy links Docker also
/// lists aliases (`/app/db`) for it, in no fixed order; the own one has no
/// `/` after the leading one.
fn own_name(names: Vec<String>) -> String {
    let own = names
        .iter()
        .position(|name| !name.trim_start_matches('/').contains('/'))
        .unwrap_or(0);
    names.into_iter().nth(own).map(strip_slash).unwrap_or_default()
}

/// Docker names start with `/`.
fn strip_slash(name: String) -> String {
    match name.strip_prefix('/') {
        Some(stripped) => stripped.to_string(),
        None => name,
    }
}

/// A timestamp, or `None` for empty and Go's zero time (`0001-01-01T00:00:00Z`).
fn real_time(time: Option<String>) -> Option<String> {
    time.filter(|t| !t.is_empty() && !t.starts_with("0001-01-01"))
}

/// Seconds for the engine's `t` parameter, rounded up.
fn whole_seconds(grace: Duration) -> i32 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// Drop the oldest bytes beyond `max`, and any partial UTF-8 character left
/// at the new start.
fn keep_newest(bytes: &mut Vec<u8>, max: usize) {
    if bytes.len() <= max {
        return;
    }
    let mut cut = bytes.len() - max;
    while cut < bytes.len() && cut < bytes.len() - max + 3 && (bytes[cut] & 0b1100_0000) == 0b1000_0000 {
        cut += 1;
    }
    bytes.drain(..cut);
}

/// An error with its sources (`client error (Connect): … : No such file…`).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_is_named_by_its_own_name_not_a_link_alias() {
        assert_eq!(own_name(vec!["/app/db".into(), "/db".into()]), "db");
        assert_eq!(own_name(vec!["/db".into(), "/app/db".into()]), "db");
        assert_eq!(own_name(Vec::new()), "");
    }

    #[test]
    fn names_lose_the_leading_slash() {
        assert_eq!(strip_slash("/web".into()), "web");
        assert_eq!(strip_slash("web".into()), "web");
        assert_eq!(strip_slash(String::new()), "");
    }

    #[test]
    fn zero_times_are_none() {
        assert_eq!(real_time(Some("0001-01-01T00:00:00Z".into())), None);
        assert_eq!(real_time(Some(String::new())), None);
        assert_eq!(real_time(None), None);
        let t = "2026-11-23T03:00:30.108363428Z".to_string();
        assert_eq!(real_time(Some(t.clone())), Some(t));
    }

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
        assert_eq!(whole_seconds(Duration::from_millis(10_500)), 11);
    }

    #[test]
    fn logs_keep_the_newest_bytes_on_character_boundaries() {
        let mut bytes = b"line1\nline2\n".to_vec();
        keep_newest(&mut bytes, 100);
        assert_eq!(bytes, b"line1\nline2\n");
        keep_newest(&mut bytes, 6);
        assert_eq!(bytes, b"line2\n");
        // "é" is two bytes: cutting inside it drops its tail too.
        let mut bytes = "aé\n".as_bytes().to_vec();
        keep_newest(&mut bytes, 2);
        assert_eq!(bytes, b"\n");
        let mut bytes = b"abc".to_vec();
        keep_newest(&mut bytes, 0);
        assert!(bytes.is_empty());
    }

    #[test]
    fn podman_answers_decode_leniently() {
        let body = r#"[{"Id":"abc","Names":["/c1"],"Image":"busybox","State":"stopped",
            "Status":"Exited (3) 1 second ago","Labels":{"a":"b"}},{"Id":"def","Names":["/c2"],"State":"running"}]"#;
        let listed: Vec<ContainerSummary> = serde_json::from_str::<Vec<Listed>>(body)
            .unwrap()
            .into_iter()
            .map(Listed::into_summary)
            .collect();
        assert_eq!(listed[0].name, "c1");
        assert_eq!(listed[0].state, "exited");
        assert_eq!(listed[0].labels, BTreeMap::from([("a".to_string(), "b".to_string())]));
        assert_eq!(listed[1].state, "running");
        assert!(listed[1].labels.is_empty());

        let body = r#"{"Id":"abc","Name":"/c1","Image":"sha256:d3dd","RestartCount":2,
            "State":{"Status":"stopped","Running":false,"ExitCode":3,"StartedAt":"2026-11-23T03:00:30.1Z",
                "FinishedAt":"2026-11-23T03:00:31.2Z","Health":{"Status":""}},
            "Config":{"Image":"localhost/busybox:latest","Labels":{"a":"b"}}}"#;
        let details = serde_json::from_str::<Inspected>(body).unwrap().into_details();
        assert_eq!(
            (details.name.as_str(), details.image.as_str()),
            ("c1", "localhost/busybox:latest")
        );
        assert_eq!(
            (details.state.as_str(), details.running, details.exit_code),
            ("exited", false, 3)
        );
        assert_eq!(details.finished_at.as_deref(), Some("2026-11-23T03:00:31.2Z"));
        assert_eq!((details.health, details.restart_count), (None, 2));
        let healthy = r#"{"State":{"Status":"running","Running":true,"StartedAt":"0001-01-01T00:00:00Z",
            "Health":{"Status":"healthy"}}}"#;
        let details = serde_json::from_str::<Inspected>(healthy).unwrap().into_details();
        assert_eq!((details.health.as_deref(), details.started_at), (Some("healthy"), None));
    }

    #[test]
    fn socket_paths_and_urls_are_accepted() {
        let timeout = Duration::from_secs(1);
        assert_eq!(
            DockerClient::new("/run/docker.sock", timeout).unwrap().socket(),
            "/run/docker.sock"
        );
        assert_eq!(
            DockerClient::new("unix:///run/docker.sock", timeout).unwrap().socket(),
            "/run/docker.sock"
        );
        assert!(matches!(
            DockerClient::new("tcp://localhost:2375", timeout),
            Err(DockerError::Unavailable { .. })
        ));
    }

    #[test]
    fn unavailable_says_what_to_do() {
        let err = DockerError::Unavailable {
            socket: "/run/docker.sock".into(),
            detail: "connection refused".into(),
        };
        let text = err.to_string();
        assert!(text.contains("/run/docker.sock") && text.contains("is the Docker or podman API service running"));
    }
}

#[cfg(test)]
mod properties {
    //! Whatever a Docker or podman API answers, any JSON with the fields we
    //! read holding values of any type: decoded or refused, never a panic.

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|number| json!(number)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("Id".to_string()),
                        Just("Name".to_string()),
                        Just("Names".to_string()),
                        Just("State".to_string()),
                        Just("Status".to_string()),
                        Just("Health".to_string()),
                        Just("Config".to_string()),
                        Just("Labels".to_string()),
                        Just("ExitCode".to_string()),
                        Just("StartedAt".to_string()),
                        Just("RestartCount".to_string()),
                        ".{0,6}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_container_list_or_inspection_decodes_or_is_refused(body in any_json()) {
            if let Ok(listed) = serde_json::from_value::<Vec<Listed>>(body.clone()) {
                let _: Vec<ContainerSummary> = listed.into_iter().map(Listed::into_summary).collect();
            }
            if let Ok(inspected) = serde_json::from_value::<Inspected>(body) {
                let _ = inspected.into_details();
            }
        }
    }
}
