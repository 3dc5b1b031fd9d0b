//! `citadel fleet nodes|alerts|events`: the monitor's API from a terminal
//! — tables for people, `--json` for scripts.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::Failure;
use super::output::line;

/// `citadel fleet ...`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Nodes and their state (scheduling filters as the API's).
    Nodes(NodesArgs),
    /// Alerts, newest first.
    Alerts(AlertsArgs),
    /// Events, newest first.
    Events(EventsArgs),
}

/// Where the monitor is.
#[derive(Debug, Args)]
pub struct MonitorClient {
    /// The monitor's URL.
    #[arg(
        long = "monitor",
        value_name = "URL",
        env = "CITADEL_MONITOR_URL",
        default_value = "http://127.0.0.1:7410"
    )]
    pub url: String,
    /// An API key of the monitor.
    #[arg(long, value_name = "KEY", env = "CITADEL_MONITOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `citadel fleet nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Only nodes in this state (up, late, down, offline).
    #[arg(long)]
    pub state: Option<String>,
    /// Only idle nodes (no job, GPUs under 5 %).
    #[arg(long)]
    pub idle: bool,
    /// Only nodes serving this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only nodes with an engine of this backend.
    #[arg(long)]
    pub backend: Option<String>,
    /// Only nodes with a GPU having this much free, MiB.
    #[arg(long, value_name = "MIB")]
    pub min_free_vram_mb: Option<u64>,
    /// Only nodes with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Include nodes that left the online set.
    #[arg(long)]
    pub stale: bool,
    /// The monitor.
    #[command(flatten)]
    pub client: MonitorClient,
}

/// `citadel fleet alerts`.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// OPEN or CLOSED.
    #[arg(long)]
    pub status: Option<String>,
    /// Alert type (NODE_DOWN, FAILURE, ...).
    #[arg(long = "type")]
    pub alert_type: Option<String>,
    /// Only alerts about this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only alerts about this job type.
    #[arg(long)]
    pub job: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// The monitor.
    #[command(flatten)]
    pub client: MonitorClient,
}

/// `citadel fleet events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this job type.
    #[arg(long)]
    pub job: Option<String>,
    /// Only events of this type (`job.failed`, ...).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only events of this level (DEBUG ... CRITICAL).
    #[arg(long)]
    pub level: Option<String>,
    /// Only events of this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only events of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// From this time (RFC 3339 or ms since the epoch).
    #[arg(long)]
    pub from: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// The monitor.
    #[command(flatten)]
    pub client: MonitorClient,
}

async fn get(client: &MonitorClient, path: &str, query: &[(&str, Option<String>)]) -> Result<Value, Failure> {
    let http = citadel_transports::http::client(Duration::from_secs(10)).map_err(Failure::input)?;
    let query: Vec<(&str, String)> = query
        .iter()
        .filter_map(|(name, value)| value.clone().map(|value| (*name, value)))
        .collect();
    let base = format!("{}{path}", client.url.trim_end_matches('/'));
    let mut url = reqwest::Url::parse(&base)
        .map_err(|err| Failure::input(format!("--monitor {:?} is not a URL: {err}", client.url)))?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(&query);
    }
    let mut request = http.get(url);
    if let Some(key) = &client.api_key {
        request = request.header("x-api-key", key);
    }
    let response = request
        .send()
        .await
        .map_err(|err| Failure::job(format!("cannot reach the monitor at {}: {err}", client.url)))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|err| Failure::job(format!("the monitor's answer is not JSON: {err}")))?;
    if !status.is_success() {
        let error = body["error"].as_str().unwrap_or("no reason given");
        return Err(Failure::input(format!("the monitor answered {status}: {error}")));
    }
    Ok(body)
}

fn ago(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else { return "-".into() };
    let now = citadel_transports::fleet::epoch_millis(std::time::SystemTime::now());
    let seconds = now.saturating_sub(ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds}s ago"),
        120..=7199 => format!("{}m ago", seconds / 60),
        _ => format!("{}h ago", seconds / 3600),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.chars().filter(|c| !c.is_control()).collect(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print(json: bool, body: &Value, rows: impl FnOnce(&Value)) {
    if json {
        line(serde_json::to_string_pretty(body).unwrap_or_default());
    } else {
        rows(body);
    }
}

/// Run a `citadel fleet` command.
pub async fn fleet(command: FleetCommand) -> Result<(), Failure> {
    match command {
        FleetCommand::Nodes(args) => {
            let query = [
                ("state", args.state.clone()),
                ("idle", args.idle.then(|| "true".to_string())),
                ("model", args.model.clone()),
                ("backend", args.backend.clone()),
                ("min_free_vram_mb", args.min_free_vram_mb.map(|mb| mb.to_string())),
                ("tag", args.tag.clone()),
                ("stale", args.stale.then(|| "true".to_string())),
            ];
            let body = get(&args.client, "/v1/nodes", &query).await?;
            print(args.client.json, &body, |body| {
                line(format!(
                    "{:<24} {:<8} {:<6} {:>4} {:>10} {:>8} {:<10} MODELS",
                    "NODE", "STATE", "MODE", "GPUS", "FREE MiB", "IN-FLT", "SEEN"
                ));
                for node in body["nodes"].as_array().into_iter().flatten() {
                    let models: Vec<String> = node["models"].as_array().into_iter().flatten().map(text).collect();
                    line(format!(
                        "{:<24} {:<8} {:<6} {:>4} {:>10} {:>8} {:<10} {}",
                        text(&node["id"]),
                        text(&node["state"]),
                        text(&node["mode"]),
                        node["gpus"].as_array().map_or(0, Vec::len),
                        text(&node["freeVramMb"]),
                        text(&node["inFlight"]),
                        ago(&node["lastSeenMs"]),
                        models.join(",")
                    ));
                }
            });
        }
        FleetCommand::Alerts(args) => {
            let query = [
                ("status", args.status.clone()),
                ("alertType", args.alert_type.clone()),
                ("node", args.node.clone()),
                ("jobName", args.job.clone()),
                ("limit", Some(args.limit.to_string())),
            ];
            let body = get(&args.client, "/v1/alerts", &query).await?;
            print(args.client.json, &body, |body| {
                line(format!(
                    "{:>6} {:<14} {:<7} {:<9} {:<28} {:<10} MESSAGE",
                    "ID", "TYPE", "STATUS", "SEVERITY", "SUBJECT", "OPENED"
                ));
                for alert in body["alerts"].as_array().into_iter().flatten() {
                    line(format!(
                        "{:>6} {:<14} {:<7} {:<9} {:<28} {:<10} {}",
                        text(&alert["id"]),
                        text(&alert["alertType"]),
                        text(&alert["status"]),
                        text(&alert["severity"]),
                        text(&alert["subject"]),
                        ago(&alert["openedAtMs"]),
                        text(&alert["message"])
                    ));
                }
            });
        }
        FleetCommand::Events(args) => {
            let query = [
                ("jobName", args.job.clone()),
                ("eventType", args.event_type.clone()),
                ("level", args.level.clone()),
                ("node", args.node.clone()),
                ("tenant", args.tenant.clone()),
                ("from", args.from.clone()),
                ("limit", Some(args.limit.to_string())),
            ];
            let body = get(&args.client, "/v1/events", &query).await?;
            print(args.client.json, &body, |body| {
                line(format!(
                    "{:<10} {:<8} {:<18} {:<20} {:<16} MESSAGE",
                    "WHEN", "LEVEL", "TYPE", "NODE", "JOB"
                ));
                for event in body["events"].as_array().into_iter().flatten() {
                    line(format!(
                        "{:<10} {:<8} {:<18} {:<20} {:<16} {}",
                        ago(&event["atMs"]),
                        text(&event["level"]),
                        text(&event["eventType"]),
                        text(&event["node"]),
                        text(&event["jobName"]),
                        text(&event["message"])
                    ));
                }
            });
        }
    }
    Ok(())
}
