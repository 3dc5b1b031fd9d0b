//! The node's containers in status `services[]` (type `docker`), read from
//! the Docker Engine API (Docker or podman) every `telemetry.service_poll_ms`.
//! An unreachable API is a `docker` entry in `collector_errors[]` and a
//! `/health` reason, never a crash; the containers reappear when it returns.

use std::sync::Arc;
use std::time::Duration;

use citadel_collector::status::{ServiceHealth, ServiceState, ServiceStatus};
use citadel_transports::docker::{ContainerSummary, DockerClient};
use tokio_util::sync::CancellationToken;

use super::Telemetry;

/// Label listing the models a container serves (`citadel.models=a,b`).
const MODELS_LABEL: &str = "citadel.models";
/// Label naming the port a container serves on (`citadel.port=8000`).
const PORT_LABEL: &str = "citadel.port";

/// Report the containers matching `report` (name globs) until `stop`.
pub(super) async fn watch_containers(
    client: DockerClient,
    report: Vec<glob::Pattern>,
    telemetry: Arc<Telemetry>,
    poll: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let listed = tokio::select! {
            _ = stop.cancelled() => return,
            listed = client.list(&[]) => listed,
        };
        match listed {
            Ok(containers) => {
                if failing {
                    tracing::info!(socket = %client.socket(), "the Docker API answers again");
                    failing = false;
                }
                let services = containers
                    .iter()
                    .filter(|container| report.iter().any(|pattern| pattern.matches(&container.name)))
                    .map(container_status)
                    .collect();
                telemetry.set_probe_error("docker", None);
                telemetry.set_services("docker", services);
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, "cannot list containers; reporting none until the Docker API answers");
                    failing = true;
                }
                telemetry.set_probe_error("docker", Some(err.to_string()));
                telemetry.set_services("docker", Vec::new());
            }
        }
    }
}

/// A container as a service: `running` | `stopped` | `error`, health from
/// its health check when it has one.
fn container_status(container: &ContainerSummary) -> ServiceStatus {
    let status = match container.state.as_str() {
        "running" => ServiceState::Running,
        "created" | "exited" | "stopped" | "paused" => ServiceState::Stopped,
        _ => ServiceState::Error,
    };
    let summary = container.status.to_ascii_lowercase();
    let health = if status != ServiceState::Running {
        ServiceHealth::Unknown
    } else if summary.contains("(healthy)") {
        ServiceHealth::Ok
    } else if summary.contains("(unhealthy)") {
        ServiceHealth::Unhealthy
    } else if summary.contains("starting") {
        ServiceHealth::Starting
    } else {
        ServiceHealth::Unknown
    };
    ServiceStatus {
        name: container.name.clone(),
        kind: "docker".into(),
        status,
        port: container.labels.get(PORT_LABEL).and_then(|port| port.parse().ok()),
        health,
        models: container
            .labels
            .get(MODELS_LABEL)
            .map(|models| {
                models
                    .split(',')
                    .map(str::trim)
                    .filter(|model| !model.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        placement: Some(format!("container {}", container.id.get(..12).unwrap_or(&container.id))),
        last_exit: (status != ServiceState::Running).then(|| container.status.clone()),
        ..ServiceStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: &str, status: &str) -> ContainerSummary {
        ContainerSummary {
            id: "0123456789abcdef0123".into(),
            name: "vllm".into(),
            image: "vllm/vllm-openai".into(),
            state: state.into(),
            status: status.into(),
            labels: [
                (MODELS_LABEL.to_string(), "llama-3.2-1b, qwen".to_string()),
                (PORT_LABEL.to_string(), "8000".to_string()),
            ]
            .into(),
        }
    }

    #[test]
    fn containers_map_to_citadel_service_states() {
        let running = container_status(&container("running", "Up 5 minutes (healthy)"));
        assert_eq!(
            (running.kind.as_str(), running.status.as_str(), running.health.as_str()),
            ("docker", "running", "ok")
        );
        assert_eq!(running.port, Some(8000));
        assert_eq!(running.models, ["llama-3.2-1b", "qwen"]);
        assert_eq!(running.placement.as_deref(), Some("container 0123456789ab"));
        assert_eq!(running.last_exit, None);
        let unhealthy = container_status(&container("running", "Up 1 hour (unhealthy)"));
        assert_eq!(unhealthy.health, ServiceHealth::Unhealthy);
        let plain = container_status(&container("running", "Up 2 seconds"));
        assert_eq!(plain.health, ServiceHealth::Unknown);
        let exited = container_status(&container("exited", "Exited (137) 3 seconds ago"));
        assert_eq!((exited.status.as_str(), exited.health.as_str()), ("stopped", "unknown"));
        assert_eq!(exited.last_exit.as_deref(), Some("Exited (137) 3 seconds ago"));
        assert_eq!(container_status(&container("dead", "Dead")).status, ServiceState::Error);
    }
}
