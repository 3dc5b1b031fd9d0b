//! `citadel status`: one StatusMessage for this node, as a table or JSON.
//! Asks the running node's status server first (`telemetry.status_addr`):
//! its answer includes the worker and services. When none answers (or with
//! `--local`) the snapshot is taken here, over half a second so CPU use and
//! rates have something to measure.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use citadel_collector::status::{NodeIdentity, NodeMode, Reported, StatusMessage, SystemSection, status_message};
use citadel_transports::status::fetch_status;
use clap::Args;
use serde::Serialize;

use super::{Failure, output};
use crate::config::Config;
use crate::node;

/// How long to wait for the running node.
const ASK_NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// The window of a local snapshot's CPU figure.
const LOCAL_WINDOW: Duration = Duration::from_millis(500);

/// Arguments of `citadel status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the StatusMessage as JSON (DESIGN §3) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Do not ask a running node; take the snapshot here.
    #[arg(long)]
    pub local: bool,
    /// The running node's status server (`telemetry.status_addr`).
    #[arg(long, value_name = "ADDR")]
    pub status_addr: Option<SocketAddr>,
}

#[derive(Serialize)]
struct Overrides {
    telemetry: TelemetryOverrides,
}

#[derive(Serialize)]
struct TelemetryOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    status_addr: Option<SocketAddr>,
}

impl StatusArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        Overrides {
            telemetry: TelemetryOverrides {
                status_addr: self.status_addr,
            },
        }
    }
}

pub(super) async fn status(args: StatusArgs, config: &Config) -> Result<(), Failure> {
    let addr = config.telemetry.status_addr;
    let (message, source) = match (
        args.local,
        fetch_status(addr, config.telemetry.status_token.as_deref(), ASK_NODE_TIMEOUT).await,
    ) {
        (false, Ok(text)) => {
            let message: StatusMessage = serde_json::from_str(&text).map_err(|err| {
                Failure::job(format!(
                    "the node at {addr} sent a status this citadel cannot read ({err}); is it another version?"
                ))
            })?;
            (message, format!("from the node at http://{addr}"))
        }
        (false, Err(err)) => {
            tracing::info!(error = %err, "no node answered; taking the snapshot here");
            (
                local_snapshot(config, NodeMode::Local).await,
                format!("local snapshot (no node answered at http://{addr})"),
            )
        }
        (true, _) => (local_snapshot(config, NodeMode::Local).await, "local snapshot".into()),
    };
    if args.json {
        output::line(serde_json::to_string_pretty(&message).expect("a status message serializes"));
    } else {
        for line in table(&message) {
            output::line(line);
        }
        output::line(format!("({source})"));
    }
    Ok(())
}

/// A StatusMessage of this node taken here, reported in `mode`.
pub(super) async fn local_snapshot(config: &Config, mode: NodeMode) -> StatusMessage {
    let collector = node::collector(&config.telemetry).await;
    // The first snapshot starts the CPU and rate counters; the second reads them.
    collector.collect(&[]).await;
    tokio::time::sleep(LOCAL_WINDOW).await;
    let snapshot = collector.collect(&[]).await;
    let identity = NodeIdentity {
        started_at: snapshot.at,
        ..node::identity(config)
    };
    let reported = Reported {
        mode,
        ..Reported::default()
    };
    status_message(&identity, &snapshot, &reported)
}

/// A value for the table: as it is, absent as `-`.
fn text(value: Option<impl Display>) -> String {
    value.map_or_else(|| "-".into(), |value| value.to_string())
}

fn duration(seconds: Option<u64>) -> String {
    let Some(mut left) = seconds else {
        return "-".into();
    };
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if left >= size {
            parts.push(format!("{}{unit}", left / size));
            left %= size;
        }
    }
    if parts.len() < 2 {
        parts.push(format!("{left}s"));
    }
    parts.join(" ")
}

/// The StatusMessage as aligned `label  value` lines.
fn table(message: &StatusMessage) -> Vec<String> {
    let status = &message.status;
    let node = &status.node;
    let system = status.system.as_ref();
    let figure = |read: fn(&SystemSection) -> f64| text(system.map(read));
    let mut rows: Vec<(String, String)> = vec![
        (
            "node".into(),
            format!(
                "{} (id {}) · citadel {} · mode {} · up {}",
                node.name,
                node.id,
                status.version,
                node.mode.as_str(),
                duration(Some(node.uptime_seconds))
            ),
        ),
        (
            "host".into(),
            format!(
                "{} · {} · {} · up {}",
                text(node.hostname.as_ref()),
                text(node.os.as_ref()),
                text(node.arch.as_ref()),
                duration(node.machine_uptime_seconds)
            ),
        ),
        (
            "cpu".into(),
            format!(
                "{} % of {} × {}",
                figure(|system| system.cpu_percent),
                text(node.cpu_cores),
                text(node.cpu_model.as_ref())
            ),
        ),
        (
            "memory".into(),
            format!(
                "{} / {} GiB ({} %)",
                figure(|system| system.memory_used_gb),
                figure(|system| system.memory_total_gb),
                figure(|system| system.memory_percent)
            ),
        ),
    ];
    for disk in system.map(|system| system.disks.as_slice()).unwrap_or_default() {
        rows.push((
            format!("disk {}", disk.mount),
            format!("{} / {} GiB ({} %)", disk.used_gb, disk.total_gb, disk.percent),
        ));
    }
    if !node.tags.is_empty() {
        rows.push(("tags".into(), node.tags.join(", ")));
    }
    if status.gpu.is_empty() {
        rows.push((
            "gpus".into(),
            format!("none: {}", text(status.gpu_unavailable_reason.as_ref())),
        ));
    }
    for gpu in status.gpu.iter().map(|entry| &entry.gpu) {
        rows.push((
            format!("gpu {}", gpu.index),
            format!(
                "{} · {} · util {} % · mem {} / {} MiB · {} °C · {} W · driver {} ({})",
                gpu.name,
                gpu.uuid,
                text(gpu.utilization_percent),
                text(gpu.memory_used_mb),
                text(gpu.memory_total_mb),
                text(gpu.temperature_celsius),
                text(gpu.power_watts),
                gpu.driver,
                status.gpu_source
            ),
        ));
    }
    let worker = &status.worker;
    rows.push((
        "worker".into(),
        format!(
            "{} · {} in flight · {} processed · {} failed · last job {}",
            if worker.consuming { "consuming" } else { "not consuming" },
            worker.in_flight,
            worker.processed,
            worker.failed,
            text(worker.last_job_consumed_at.as_ref())
        ),
    ));
    for handler in &status.handlers {
        rows.push((
            format!("handler {}", handler.job_type),
            format!(
                "{} · {}{}",
                text(handler.digest.as_ref()),
                handler.source.as_str(),
                handler
                    .refused
                    .as_ref()
                    .map(|refused| format!(" · refused {}: {}", refused.digest, refused.reason))
                    .unwrap_or_default()
            ),
        ));
    }
    for service in &status.services {
        rows.push((
            format!("service {}", service.name),
            format!(
                "{} · {} · health {} · port {}{}",
                service.kind,
                service.status.as_str(),
                service.health.as_str(),
                text(service.port),
                service
                    .placement
                    .as_ref()
                    .map(|placement| format!(" · {placement}"))
                    .unwrap_or_default()
            ),
        ));
    }
    for process in &status.processes {
        let cgroup = process.cgroup.as_ref();
        rows.push((
            format!("process {}", process.name),
            format!(
                "pid {} · model {} · rss {} MiB · cpu {} % · cgroup {}",
                text(process.pid),
                text(process.model.as_ref()),
                text(process.rss_mb),
                text(cgroup.and_then(|cgroup| cgroup.cpu_percent)),
                text(cgroup.map(|cgroup| &cgroup.path))
            ),
        ));
    }
    for error in &status.collector_errors {
        rows.push((format!("error {}", error.probe), error.error.clone()));
    }
    let width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0);
    rows.into_iter()
        .map(|(label, value)| format!("{label:<width$}  {value}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_two_largest_units() {
        assert_eq!(duration(Some(42)), "42s");
        assert_eq!(duration(Some(3_725)), "1h 2m");
        assert_eq!(duration(Some(90_061)), "1d 1h 1m");
        assert_eq!(duration(None), "-");
    }

    #[test]
    fn a_node_without_gpus_says_why() {
        let message: StatusMessage = serde_json::from_value(serde_json::json!({
            "version": "1.0", "timestamp": "2026-12-07T00:00:00Z", "nodeId": "n1",
            "status": {
                "version": "0.1.0", "timestamp": "2026-12-07T00:00:00Z",
                "node": {"name": "n1", "id": "n1", "tags": [], "device_config": null, "uptime_seconds": 5,
                         "mode": "local", "hostname": null, "os": null, "arch": null, "cpu_model": null,
                         "cpu_cores": null, "machine_uptime_seconds": null},
                "system": null, "gpu": [], "gpu_source": "none",
                "gpu_unavailable_reason": "no NVIDIA driver", "services": [],
                "worker": {"consuming": false, "in_flight": 0, "processed": 0, "failed": 0,
                           "last_job_consumed_at": null}
            }
        }))
        .unwrap();
        let lines = table(&message);
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("gpus") && line.ends_with("none: no NVIDIA driver")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("cpu") && line.contains("- % of - × -")),
            "{lines:?}"
        );
    }
}
