//! `citadel status`: one StatusMessage for this node, as a table or JSON.
//! Asks the running node's status server first (`telemetry.status_addr`):
//! its answer includes the worker and services. When none answers (or with
//! `--local`) the snapshot is taken here, over half a second so CPU use and
//! rates have something to measure.

use std::net::SocketAddr;
use std::time::Duration;

use citadel_collector::status::{NodeIdentity, Reported, status_message};
use citadel_transports::status::fetch_status;
use clap::Args;
use serde::Serialize;
use serde_json::Value;

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
    let (message, source) = match (args.local, fetch_status(addr, ASK_NODE_TIMEOUT).await) {
        (false, Ok(text)) => {
            let message: Value = serde_json::from_str(&text)
                .map_err(|err| Failure::job(format!("the node at {addr} sent a status that is not JSON: {err}")))?;
            (message, format!("from the node at http://{addr}"))
        }
        (false, Err(err)) => {
            tracing::info!(error = %err, "no node answered; taking the snapshot here");
            (
                local_snapshot(config, "local").await,
                format!("local snapshot (no node answered at http://{addr})"),
            )
        }
        (true, _) => (local_snapshot(config, "local").await, "local snapshot".into()),
    };
    if args.json {
        output::line(serde_json::to_string_pretty(&message).expect("JSON values serialize"));
    } else {
        for line in table(&message) {
            output::line(line);
        }
        output::line(format!("({source})"));
    }
    Ok(())
}

/// A StatusMessage of this node taken here, reported in `mode`.
pub(super) async fn local_snapshot(config: &Config, mode: &str) -> Value {
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
        mode: mode.into(),
        ..Reported::default()
    };
    status_message(&identity, &snapshot, &reported)
}

/// A value for the table: numbers and strings as they are, absent as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn duration(seconds: &Value) -> String {
    let Some(mut left) = seconds.as_u64() else {
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
fn table(message: &Value) -> Vec<String> {
    let status = &message["status"];
    let node = &status["node"];
    let system = &status["system"];
    let mut rows: Vec<(String, String)> = vec![
        (
            "node".into(),
            format!(
                "{} (id {}) · citadel {} · mode {} · up {}",
                text(&node["name"]),
                text(&node["id"]),
                text(&status["version"]),
                text(&node["mode"]),
                duration(&node["uptime_seconds"])
            ),
        ),
        (
            "host".into(),
            format!(
                "{} · {} · {} · up {}",
                text(&node["hostname"]),
                text(&node["os"]),
                text(&node["arch"]),
                duration(&node["machine_uptime_seconds"])
            ),
        ),
        (
            "cpu".into(),
            format!(
                "{} % of {} × {}",
                text(&system["cpu_percent"]),
                text(&node["cpu_cores"]),
                text(&node["cpu_model"])
            ),
        ),
        (
            "memory".into(),
            format!(
                "{} / {} GiB ({} %)",
                text(&system["memory_used_gb"]),
                text(&system["memory_total_gb"]),
                text(&system["memory_percent"])
            ),
        ),
    ];
    for disk in system["disks"].as_array().into_iter().flatten() {
        rows.push((
            format!("disk {}", text(&disk["mount"])),
            format!(
                "{} / {} GiB ({} %)",
                text(&disk["used_gb"]),
                text(&disk["total_gb"]),
                text(&disk["percent"])
            ),
        ));
    }
    let tags: Vec<String> = status["node"]["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    if !tags.is_empty() {
        rows.push(("tags".into(), tags.join(", ")));
    }
    let gpus = status["gpu"].as_array().cloned().unwrap_or_default();
    if gpus.is_empty() {
        rows.push((
            "gpus".into(),
            format!("none: {}", text(&status["gpu_unavailable_reason"])),
        ));
    }
    for gpu in &gpus {
        rows.push((
            format!("gpu {}", text(&gpu["index"])),
            format!(
                "{} · {} · util {} % · mem {} / {} MiB · {} °C · {} W · driver {} ({})",
                text(&gpu["name"]),
                text(&gpu["uuid"]),
                text(&gpu["utilization_percent"]),
                text(&gpu["memory_used_mb"]),
                text(&gpu["memory_total_mb"]),
                text(&gpu["temperature_celsius"]),
                text(&gpu["power_watts"]),
                text(&gpu["driver"]),
                text(&status["gpu_source"])
            ),
        ));
    }
    let worker = &status["worker"];
    rows.push((
        "worker".into(),
        format!(
            "{} · {} in flight · {} processed · {} failed · last job {}",
            if worker["consuming"] == Value::Bool(true) {
                "consuming"
            } else {
                "not consuming"
            },
            text(&worker["in_flight"]),
            text(&worker["processed"]),
            text(&worker["failed"]),
            text(&worker["last_job_consumed_at"])
        ),
    ));
    for handler in status["handlers"].as_array().into_iter().flatten() {
        let refused = &handler["refused"];
        rows.push((
            format!("handler {}", text(&handler["job_type"])),
            format!(
                "{} · {}{}",
                text(&handler["digest"]),
                text(&handler["source"]),
                refused["digest"]
                    .as_str()
                    .map(|digest| format!(" · refused {digest}: {}", text(&refused["reason"])))
                    .unwrap_or_default()
            ),
        ));
    }
    for service in status["services"].as_array().into_iter().flatten() {
        rows.push((
            format!("service {}", text(&service["name"])),
            format!(
                "{} · {} · health {} · port {}{}",
                text(&service["type"]),
                text(&service["status"]),
                text(&service["health"]),
                text(&service["port"]),
                service["placement"]
                    .as_str()
                    .map(|placement| format!(" · {placement}"))
                    .unwrap_or_default()
            ),
        ));
    }
    for process in status["processes"].as_array().into_iter().flatten() {
        let cgroup = &process["cgroup"];
        rows.push((
            format!("process {}", text(&process["name"])),
            format!(
                "pid {} · model {} · rss {} MiB · cpu {} % · cgroup {}",
                text(&process["pid"]),
                text(&process["model"]),
                text(&process["rss_mb"]),
                text(&cgroup["cpu_percent"]),
                text(&cgroup["path"])
            ),
        ));
    }
    for error in status["collector_errors"].as_array().into_iter().flatten() {
        rows.push((format!("error {}", text(&error["probe"])), text(&error["error"])));
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
        assert_eq!(duration(&Value::from(42)), "42s");
        assert_eq!(duration(&Value::from(3_725)), "1h 2m");
        assert_eq!(duration(&Value::from(90_061)), "1d 1h 1m");
        assert_eq!(duration(&Value::Null), "-");
    }

    #[test]
    fn a_node_without_gpus_says_why() {
        let message =
            serde_json::json!({"status": {"gpu": [], "gpu_unavailable_reason": "no NVIDIA driver", "worker": {}}});
        let lines = table(&message);
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("gpus") && line.ends_with("none: no NVIDIA driver")),
            "{lines:?}"
        );
    }
}
