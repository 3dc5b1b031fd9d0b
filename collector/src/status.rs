//! The node's `StatusMessage` (DESIGN §3): Citadel's field names, exactly,
//! plus citadel's own `processes[]`, `collector_errors[]`, and per-GPU and
//! per-disk detail. Published on `node:status:stream` / `node:status:{id}`,
//! served at `/status`, and POSTed to the status endpoint.

use std::time::SystemTime;

use serde::Serialize;

use crate::{GpuInfo, Snapshot, Watched};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: u64 = 1024 * 1024;

/// Who the node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The agent's version.
    pub agent_version: String,
    /// When the agent started.
    pub started_at: SystemTime,
    /// Tags (`node.tags`).
    pub tags: Vec<String>,
    /// The device code of its device authorization (`deviceCode`), when known.
    pub device_code: Option<String>,
    /// The device configuration applied by the control plane (`node.device_config`).
    pub device_config: Option<serde_json::Value>,
}

/// A service the node runs (an engine, a container), as reported. The
/// first six fields are Citadel's; the optional rest are citadel's own and
/// absent where they do not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// Its kind (`inference`, `native`, `docker`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// `running` | `stopped` | `error`.
    pub status: String,
    /// The port it serves on.
    pub port: Option<u16>,
    /// `ok` | `degraded` | `unhealthy` | `unknown` | `starting`.
    pub health: String,
    /// Models it serves.
    pub models: Vec<String>,
    /// Where it runs: its cgroup (`citadel.slice/services/llama`), `plain`
    /// (no cgroup: see `warning`), or its container id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// Its main process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Times it has been restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// How its last run ended (`exited with status 1`, `killed by the
    /// kernel: out of memory (limit 64 MiB)`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Something the operator should know (it runs without limits because
    /// cgroups are not writable, it cannot be started, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The worker's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct WorkerStatus {
    /// Whether it is taking jobs.
    pub consuming: bool,
    /// Jobs held now.
    pub in_flight: u64,
    /// Jobs finished (with a result or an error).
    pub processed: u64,
    /// Jobs that ended with an error.
    pub failed: u64,
    /// When the last job was taken (RFC 3339).
    pub last_job_consumed_at: Option<String>,
}

/// A job type's handler (`handlers[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerStatus {
    /// The job type.
    pub job_type: String,
    /// `sha256:<hex>` of the component serving it (`null` for native ones).
    pub digest: Option<String>,
    /// `config`, `fleet` (published), `native`.
    pub source: String,
    /// A published component this node refused, and why (the handler in
    /// force is the one above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedHandler>,
}

/// A published component a node would not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedHandler {
    /// Its digest.
    pub digest: String,
    /// Why.
    pub reason: String,
}

/// Everything a status message is made of besides the snapshot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reported {
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// The worker.
    pub worker: WorkerStatus,
    /// The handlers, by job type.
    pub handlers: Vec<HandlerStatus>,
    /// The node's mode (`redis`, `agent`, `local`).
    pub mode: String,
    /// Failures of probes run outside the collector (the Docker API).
    pub errors: Vec<crate::CollectorError>,
}

/// Build the StatusMessage JSON.
pub fn status_message(node: &NodeIdentity, snapshot: &Snapshot, reported: &Reported) -> serde_json::Value {
    let timestamp = humantime_rfc3339(snapshot.at);
    let system = snapshot.system.as_ref();
    let root_disk = system.and_then(|system| system.disks.first());
    let gb = |bytes: u64| round2(bytes as f64 / GIB);
    let percent = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            round2(part as f64 * 100.0 / whole as f64)
        }
    };
    let uptime = snapshot
        .at
        .duration_since(node.started_at)
        .unwrap_or_default()
        .as_secs();
    let mut message = serde_json::json!({
        "version": "1.0",
        "timestamp": timestamp,
        "nodeId": node.id,
        "status": {
            "version": node.agent_version,
            "timestamp": timestamp,
            "node": {
                "name": node.name,
                "id": node.id,
                "tags": node.tags,
                "device_config": node.device_config,
                "uptime_seconds": uptime,
                "mode": reported.mode,
                "hostname": system.map(|system| system.hostname.as_str()),
                "os": system.map(|system| system.os.as_str()),
                "arch": system.map(|system| system.arch.as_str()),
                "cpu_model": system.map(|system| system.cpu_model.as_str()),
                "cpu_cores": system.map(|system| system.cpu_cores),
                "machine_uptime_seconds": system.map(|system| system.uptime_seconds),
            },
            "system": system.map(|system| serde_json::json!({
                "cpu_percent": round2(system.cpu_percent),
                "memory_used_gb": gb(system.memory_used_bytes),
                "memory_total_gb": gb(system.memory_total_bytes),
                "memory_percent": percent(system.memory_used_bytes, system.memory_total_bytes),
                "memory_available_gb": gb(system.memory_available_bytes),
                "disk_used_gb": root_disk.map_or(0.0, |disk| gb(disk.used_bytes)),
                "disk_total_gb": root_disk.map_or(0.0, |disk| gb(disk.total_bytes)),
                "disk_available_gb": root_disk.map_or(0.0, |disk| gb(disk.available_bytes)),
                "disk_percent": root_disk.map_or(0.0, |disk| percent(disk.used_bytes, disk.total_bytes)),
                "disks": system.disks.iter().map(|disk| serde_json::json!({
                    "path": disk.path,
                    "mount": disk.mount,
                    "used_gb": gb(disk.used_bytes),
                    "total_gb": gb(disk.total_bytes),
                    "available_gb": gb(disk.available_bytes),
                    "percent": percent(disk.used_bytes, disk.total_bytes),
                })).collect::<Vec<_>>(),
            })),
            "gpu": snapshot.gpu.gpus.iter().map(gpu_entry).collect::<Vec<_>>(),
            "gpu_source": snapshot.gpu.source,
            "gpu_unavailable_reason": snapshot.gpu.unavailable,
            "services": reported.services,
            "worker": reported.worker,
            "handlers": reported.handlers,
            "processes": snapshot.watched.iter().map(process_entry).collect::<Vec<_>>(),
            "collector_errors": snapshot.errors.iter().chain(&reported.errors).collect::<Vec<_>>(),
        }
    });
    if let Some(code) = &node.device_code {
        message["deviceCode"] = code.as_str().into();
    }
    message
}

fn gpu_entry(gpu: &GpuInfo) -> serde_json::Value {
    serde_json::json!({
        "index": gpu.index,
        "name": gpu.name,
        "uuid": gpu.uuid,
        "memory_used_mb": gpu.memory_used_mb,
        "memory_total_mb": gpu.memory_total_mb,
        "memory_free_mb": gpu.memory_total_mb.zip(gpu.memory_used_mb).map(|(total, used)| total.saturating_sub(used)),
        "utilization_percent": gpu.utilization_percent,
        "memory_utilization_percent": gpu.memory_utilization_percent,
        "temperature_celsius": gpu.temperature_celsius,
        "power_watts": gpu.power_watts.map(round2),
        "clocks_mhz": gpu.clocks_mhz,
        "driver": gpu.driver,
        "processes": gpu.processes,
    })
}

fn process_entry(watched: &Watched) -> serde_json::Value {
    let process = watched.process.as_ref();
    serde_json::json!({
        "name": watched.name,
        "pid": process.map(|process| process.pid),
        "cmdline": process.map(|process| process.cmdline.join(" ")),
        "model": process.and_then(|process| process.model.as_deref()),
        "uptime_seconds": process.map(|process| process.uptime_seconds),
        "rss_mb": process.map(|process| process.rss_bytes / MIB),
        "cgroup": watched.cgroup,
        "gpu": watched.gpu,
    })
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// RFC 3339 UTC to the second, as every other citadel timestamp.
fn humantime_rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}
