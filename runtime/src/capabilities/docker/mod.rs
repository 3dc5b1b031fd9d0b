//! Capability `docker`: the node's containers, through the Docker Engine API
//! (Docker, or podman's Docker-compatible service).
//!
//! Checks, in order: the grant and the action (`docker.actions`; `denied`),
//! the name (a container name or id, nothing else reaches the API), then the
//! container itself: the name is resolved among the tenant's own containers
//! only (those whose real name or labels the policy allows: by exact name,
//! else by a unique id prefix), and the action runs on the resolved id.
//!
//! A container the tenant may not use is `denied`, naming the keys to change
//! (`docker.containers`, `docker.labels`), whether it exists or not: the
//! answer depends only on the policy, so it reveals nothing about other
//! tenants' containers. `not-found` is kept for names the tenant's
//! `docker.containers` globs allow but that no container has (a typo, or a
//! container not created yet). `list-containers` shows only the tenant's
//! containers. A node without a Docker API answers `unavailable`, as does
//! an API that does not answer. Mutating actions (`start`, `stop`,
//! `restart`) are logged at INFO with tenant, job and container.

pub mod policy;

use std::time::Duration;

use citadel_transports::docker::{ContainerDetails, ContainerSummary, DockerClient, DockerError};

use crate::bindings::citadel::handler::docker::{Container, Details, Error as WitError, Host};
use crate::config::DockerConfig;
use crate::policy::DockerAction;
use crate::sandbox::state::JobState;

/// Most log lines one `logs` call returns.
pub const MAX_LOG_TAIL: u32 = 10_000;

/// Longest container name or id accepted (ids are 64 hex digits).
const MAX_NAME_LEN: usize = 255;

/// What capability `docker` reaches on this node: the Engine API client
/// (none when the node has no Docker API) and the node's bounds on it.
#[derive(Clone)]
pub struct DockerAccess {
    client: Option<DockerClient>,
    stop_grace: Duration,
    max_log_bytes: usize,
}

impl Default for DockerAccess {
    /// No Docker API; the default grace period and log cap.
    fn default() -> Self {
        let config = DockerConfig::default();
        DockerAccess::new(None, Duration::from_secs(config.stop_grace_s), config.max_log_bytes)
    }
}

impl std::fmt::Debug for DockerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerAccess")
            .field("socket", &self.client.as_ref().map(DockerClient::socket))
            .field("stop_grace", &self.stop_grace)
            .field("max_log_bytes", &self.max_log_bytes)
            .finish()
    }
}

impl DockerAccess {
    /// Access through `client` (`None`: the node has no Docker API), stopping
    /// with `stop_grace` and returning at most `max_log_bytes` of logs.
    pub fn new(client: Option<DockerClient>, stop_grace: Duration, max_log_bytes: usize) -> DockerAccess {
        DockerAccess {
            client,
            stop_grace,
            max_log_bytes,
        }
    }

    /// Access as `[docker]` configures it: the configured socket, else the
    /// first default socket that exists, else none.
    pub fn from_config(config: &DockerConfig) -> Result<DockerAccess, DockerError> {
        let client = config
            .resolved_socket()
            .map(|socket| DockerClient::new(&socket, config.timeout()))
            .transpose()?;
        Ok(DockerAccess::new(
            client,
            Duration::from_secs(config.stop_grace_s),
            config.max_log_bytes,
        ))
    }

    /// The Engine API client, if the node has a Docker API.
    pub fn client(&self) -> Option<&DockerClient> {
        self.client.as_ref()
    }

    /// Grace period of `stop` and `restart`.
    pub fn stop_grace(&self) -> Duration {
        self.stop_grace
    }

    /// Most bytes one `logs` call returns.
    pub fn max_log_bytes(&self) -> usize {
        self.max_log_bytes
    }

    fn connected(&self) -> Result<&DockerClient, WitError> {
        self.client.as_ref().ok_or_else(|| {
            WitError::Unavailable(
                "no Docker API on this node: set docker.socket (or run Docker or podman's API service)".into(),
            )
        })
    }
}

fn docker_error(err: DockerError) -> WitError {
    match err {
        DockerError::Unavailable { .. } => WitError::Unavailable(err.to_string()),
        DockerError::NotFound { .. } => WitError::NotFound(err.to_string()),
        DockerError::Api { .. } => WitError::Failed(err.to_string()),
    }
}

/// Whether `name` can be a container name or id (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`):
/// anything else could change the API path it is put into.
fn plausible_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|first| first.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn labels(labels: std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    labels.into_iter().collect()
}

fn container(summary: ContainerSummary) -> Container {
    Container {
        id: summary.id,
        name: summary.name,
        image: summary.image,
        state: summary.state,
        status: summary.status,
        labels: labels(summary.labels),
    }
}

fn details(details: ContainerDetails) -> Details {
    Details {
        id: details.id,
        name: details.name,
        image: details.image,
        state: details.state,
        running: details.running,
        exit_code: details.exit_code,
        started_at: details.started_at,
        finished_at: details.finished_at,
        health: details.health,
        restart_count: details.restart_count,
        labels: labels(details.labels),
    }
}

impl JobState {
    /// Grant and action, then the container `name` resolves to, if it is the
    /// tenant's (see the module doc for `denied` versus `not-found`).
    async fn docker_container(
        &mut self,
        action: DockerAction,
        name: &str,
    ) -> Result<(DockerClient, ContainerDetails), WitError> {
        self.grant
            .check_docker(action, &self.job_id)
            .map_err(WitError::Denied)?;
        if !plausible_name(name) {
            return Err(WitError::NotFound(format!(
                "no container named {name:?}: not a container name or id"
            )));
        }
        let client = self.node.docker.connected()?.clone();
        let policy = &self.grant.policy().docker;
        // Resolved among the tenant's own containers only: nothing about
        // the others (not even whether an id prefix matches one) shows.
        let listed = client.list(&[]).await.map_err(docker_error)?;
        let mine: Vec<&ContainerSummary> = listed
            .iter()
            .filter(|listed| policy.allows_container(&listed.name, &listed.labels))
            .collect();
        let by_prefix: Vec<&&ContainerSummary> = mine.iter().filter(|mine| mine.id.starts_with(name)).collect();
        let found = mine
            .iter()
            .find(|mine| mine.name == name)
            .or_else(|| (by_prefix.len() == 1).then(|| by_prefix[0]));
        match found {
            Some(found) => {
                let details = client.inspect(&found.id).await.map_err(docker_error)?;
                return Ok((client, details));
            }
            None if by_prefix.len() > 1 => {
                return Err(WitError::NotFound(format!(
                    "{name:?} is the start of the ids of several of your containers: give more of it"
                )));
            }
            None if policy.allows_name(name) => {
                return Err(WitError::NotFound(format!("no container named {name}")));
            }
            None => {}
        }
        let reason = format!(
            "tenant `{}` may not use container `{name}` (docker.containers, docker.labels)",
            self.grant.tenant()
        );
        self.grant.deny_once(&reason, &self.job_id);
        Err(WitError::Denied(reason))
    }

    /// `start`, `stop` or `restart` on the tenant's container `name`, logged.
    async fn docker_act(&mut self, action: DockerAction, name: &str) -> Result<(), WitError> {
        let (client, target) = self.docker_container(action, name).await?;
        let grace = self.node.docker.stop_grace();
        let done = match action {
            DockerAction::Start => client.start(&target.id).await,
            DockerAction::Stop => client.stop(&target.id, grace).await,
            DockerAction::Restart => client.restart(&target.id, grace).await,
            other => unreachable!("{other} does not change a container"),
        };
        let outcome = match &done {
            Ok(()) => "ok".to_string(),
            Err(err) => err.to_string(),
        };
        tracing::info!(
            tenant = %self.grant.tenant(),
            job_id = %self.job_id,
            container = %target.name,
            container_id = %target.id,
            action = %action,
            %outcome,
            "docker action",
        );
        done.map_err(docker_error)
    }
}

impl Host for JobState {
    #[tracing::instrument(name = "cap.docker.list-containers", level = "debug", skip_all)]
    async fn list_containers(&mut self) -> wasmtime::Result<Result<Vec<Container>, WitError>> {
        if let Err(reason) = self.grant.check_docker(DockerAction::List, &self.job_id) {
            return Ok(Err(WitError::Denied(reason)));
        }
        let client = match self.node.docker.connected() {
            Ok(client) => client.clone(),
            Err(err) => return Ok(Err(err)),
        };
        let listed = match client.list(&[]).await {
            Ok(listed) => listed,
            Err(err) => return Ok(Err(docker_error(err))),
        };
        let policy = &self.grant.policy().docker;
        Ok(Ok(listed
            .into_iter()
            .filter(|listed| policy.allows_container(&listed.name, &listed.labels))
            .map(container)
            .collect()))
    }

    #[tracing::instrument(name = "cap.docker.inspect", level = "debug", skip_all)]
    async fn inspect(&mut self, name: String) -> wasmtime::Result<Result<Details, WitError>> {
        Ok(self
            .docker_container(DockerAction::Inspect, &name)
            .await
            .map(|(_, found)| details(found)))
    }

    #[tracing::instrument(name = "cap.docker.start", level = "debug", skip_all)]
    async fn start(&mut self, name: String) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.docker_act(DockerAction::Start, &name).await)
    }

    #[tracing::instrument(name = "cap.docker.stop", level = "debug", skip_all)]
    async fn stop(&mut self, name: String) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.docker_act(DockerAction::Stop, &name).await)
    }

    #[tracing::instrument(name = "cap.docker.restart", level = "debug", skip_all)]
    async fn restart(&mut self, name: String) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.docker_act(DockerAction::Restart, &name).await)
    }

    #[tracing::instrument(name = "cap.docker.logs", level = "debug", skip_all)]
    async fn logs(&mut self, name: String, tail: u32) -> wasmtime::Result<Result<String, WitError>> {
        let (client, target) = match self.docker_container(DockerAction::Logs, &name).await {
            Ok(found) => found,
            Err(err) => return Ok(Err(err)),
        };
        let max_bytes = self.node.docker.max_log_bytes();
        Ok(client
            .logs(&target.id, tail.min(MAX_LOG_TAIL), max_bytes)
            .await
            .map_err(docker_error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_and_ids_reach_the_api() {
        for name in ["vllm", "llama-3.2_b", "a", "0123abcdef", &"f".repeat(64)] {
            assert!(plausible_name(name), "{name}");
        }
        for name in [
            "",
            "-rm",
            ".hidden",
            "x/../../images/json",
            "x?force=1",
            "a b",
            "é",
            "x%2F",
            &"a".repeat(256),
        ] {
            assert!(!plausible_name(name), "{name}");
        }
    }

    #[test]
    fn client_errors_map_to_the_interface() {
        let unavailable = docker_error(DockerError::Unavailable {
            socket: "/run/docker.sock".into(),
            detail: "refused".into(),
        });
        assert!(matches!(unavailable, WitError::Unavailable(ref text) if text.contains("/run/docker.sock")));
        assert!(matches!(
            docker_error(DockerError::NotFound { container: "x".into() }),
            WitError::NotFound(_)
        ));
        assert!(matches!(
            docker_error(DockerError::Api {
                status: 500,
                message: "boom".into()
            }),
            WitError::Failed(ref text) if text.contains("boom")
        ));
    }

    #[test]
    fn a_node_without_docker_is_unavailable() {
        let none = DockerAccess::default();
        assert!(none.client().is_none());
        assert!(matches!(none.connected(), Err(WitError::Unavailable(ref text)) if text.contains("docker.socket")));
        let config = DockerConfig {
            socket: Some("unix:///nowhere/docker.sock".into()),
            stop_grace_s: 3,
            ..DockerConfig::default()
        };
        let configured = DockerAccess::from_config(&config).unwrap();
        assert_eq!(
            configured.client().map(DockerClient::socket),
            Some("/nowhere/docker.sock")
        );
        assert_eq!(configured.stop_grace(), Duration::from_secs(3));
    }
}
