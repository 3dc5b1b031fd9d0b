//! The node's `StatusMessage` (DESIGN §3): Citadel's field names, exactly,
//! plus citadel's own `processes[]`, `collector_errors[]`, and per-GPU and
//! per-disk detail. Published on `node:status:stream` / `node:status:{id}`,
//! served at `/status`, and POSTed to the status endpoint.
//!
//! `message.rs` holds the types (read and written with serde); this file
//! builds one from a snapshot and what the node reports besides it.

use std::time::SystemTime;

mod message;

pub use message::{
    DiskEntry, GpuEntry, HandlerOrigin, HandlerStatus, MESSAGE_VERSION, NodeMode, NodeSection, NodeStatus,
    ProcessEntry, RefusedHandler, ServiceHealth, ServiceState, ServiceStatus, StatusMessage, SystemSection,
    WorkerStatus,
};

use crate::{GpuInfo, Snapshot, SystemInfo, Watched};

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

/// Everything a status message is made of besides the snapshot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reported {
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// The worker.
    pub worker: WorkerStatus,
    /// The handlers, by job type.
    pub handlers: Vec<HandlerStatus>,
    /// Where the node takes jobs from.
    pub mode: NodeMode,
    /// Failures of probes run outside the collector (the Docker API).
    pub errors: Vec<crate::CollectorError>,
}

/// Build the StatusMessage.
pub fn status_message(node: &NodeIdentity, snapshot: &Snapshot, reported: &Reported) -> StatusMessage {
    let timestamp = humantime_rfc3339(snapshot.at);
    let system = snapshot.system.as_ref();
    let uptime = snapshot
        .at
        .duration_since(node.started_at)
        .unwrap_or_default()
        .as_secs();
    StatusMessage {
        version: MESSAGE_VERSION.into(),
        timestamp: timestamp.clone(),
        node_id: node.id.clone(),
        device_code: node.device_code.clone(),
        status: NodeStatus {
            version: node.agent_version.clone(),
            timestamp,
            node: NodeSection {
                name: node.name.clone(),
                id: node.id.clone(),
                tags: node.tags.clone(),
                device_config: node.device_config.clone(),
                uptime_seconds: uptime,
                mode: reported.mode,
                hostname: system.map(|system| system.hostname.clone()),
                os: system.map(|system| system.os.clone()),
                arch: system.map(|system| system.arch.clone()),
                cpu_model: system.map(|system| system.cpu_model.clone()),
                cpu_cores: system.map(|system| system.cpu_cores),
                machine_uptime_seconds: system.map(|system| system.uptime_seconds),
            },
            system: system.map(system_section),
            gpu: snapshot.gpu.gpus.iter().map(gpu_entry).collect(),
            gpu_source: snapshot.gpu.source.into(),
            gpu_unavailable_reason: snapshot.gpu.unavailable.clone(),
            services: reported.services.clone(),
            worker: reported.worker.clone(),
            handlers: reported.handlers.clone(),
            processes: snapshot.watched.iter().map(process_entry).collect(),
            collector_errors: snapshot.errors.iter().chain(&reported.errors).cloned().collect(),
        },
    }
}

fn gb(bytes: u64) -> f64 {
    round2(bytes as f64 / GIB)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round2(part as f64 * 100.0 / whole as f64)
    }
}

fn system_section(system: &SystemInfo) -> SystemSection {
    let root_disk = system.disks.first();
    SystemSection {
        cpu_percent: round2(system.cpu_percent),
        memory_used_gb: gb(system.memory_used_bytes),
        memory_total_gb: gb(system.memory_total_bytes),
        memory_percent: percent(system.memory_used_bytes, system.memory_total_bytes),
        memory_available_gb: gb(system.memory_available_bytes),
        disk_used_gb: root_disk.map_or(0.0, |disk| gb(disk.used_bytes)),
        disk_total_gb: root_disk.map_or(0.0, |disk| gb(disk.total_bytes)),
        disk_available_gb: root_disk.map_or(0.0, |disk| gb(disk.available_bytes)),
        disk_percent: root_disk.map_or(0.0, |disk| percent(disk.used_bytes, disk.total_bytes)),
        disks: system
            .disks
            .iter()
            .map(|disk| DiskEntry {
                path: disk.path.clone(),
                mount: disk.mount.clone(),
                used_gb: gb(disk.used_bytes),
                total_gb: gb(disk.total_bytes),
                available_gb: gb(disk.available_bytes),
                percent: percent(disk.used_bytes, disk.total_bytes),
            })
            .collect(),
    }
}

fn gpu_entry(gpu: &GpuInfo) -> GpuEntry {
    GpuEntry {
        gpu: GpuInfo {
            power_watts: gpu.power_watts.map(round2),
            ..gpu.clone()
        },
        memory_free_mb: gpu
            .memory_total_mb
            .zip(gpu.memory_used_mb)
            .map(|(total, used)| total.saturating_sub(used)),
    }
}

fn process_entry(watched: &Watched) -> ProcessEntry {
    let process = watched.process.as_ref();
    ProcessEntry {
        name: watched.name.clone(),
        pid: process.map(|process| process.pid),
        cmdline: process.map(|process| crate::processes::shown_cmdline(&process.cmdline)),
        model: process.and_then(|process| process.model.clone()),
        uptime_seconds: process.map(|process| process.uptime_seconds),
        rss_mb: process.map(|process| process.rss_bytes / MIB),
        cgroup: watched.cgroup.clone(),
        gpu: watched.gpu.clone(),
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// RFC 3339 UTC to the second, as every other citadel timestamp.
fn humantime_rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::*;
    use crate::system::DiskUsage;
    use crate::{CgroupStats, Clocks, CollectorError, GpuProcess, GpuReport, ProcessInfo};

    /// A snapshot with one of everything, at a fixed moment.
    fn fixture() -> (NodeIdentity, Snapshot, Reported) {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let node = NodeIdentity {
            id: "gpu-7".into(),
            name: "rack 3 / 7".into(),
            agent_version: "0.1.0".into(),
            started_at: at - Duration::from_secs(3_600),
            tags: vec!["eu".into(), "h100".into()],
            device_code: Some("dev-abc".into()),
            device_config: Some(json!({"services": []})),
        };
        let snapshot = Snapshot {
            at,
            system: Some(SystemInfo {
                hostname: "gpu-7".into(),
                os: "Debian GNU/Linux 12".into(),
                arch: "x86_64".into(),
                cpu_model: "AMD EPYC".into(),
                cpu_cores: 64,
                uptime_seconds: 86_400,
                cpu_percent: 12.345,
                memory_total_bytes: 64 << 30,
                memory_used_bytes: 16 << 30,
                memory_available_bytes: 48 << 30,
                disks: vec![DiskUsage {
                    path: "/".into(),
                    mount: "/".into(),
                    total_bytes: 100 << 30,
                    used_bytes: 25 << 30,
                    available_bytes: 75 << 30,
                }],
            }),
            gpu: GpuReport {
                gpus: vec![GpuInfo {
                    index: 0,
                    name: "NVIDIA H100 80GB HBM3".into(),
                    uuid: "GPU-1".into(),
                    memory_used_mb: Some(1_000),
                    memory_total_mb: Some(81_559),
                    utilization_percent: Some(40),
                    memory_utilization_percent: Some(10),
                    temperature_celsius: Some(51),
                    power_watts: Some(123.456),
                    clocks_mhz: Clocks {
                        graphics: Some(1_980),
                        sm: Some(1_980),
                        memory: Some(2_619),
                    },
                    driver: "550.54.15".into(),
                    processes: vec![GpuProcess {
                        pid: 4242,
                        memory_mb: Some(900),
                        sm_percent: Some(35),
                    }],
                }],
                source: "nvml",
                unavailable: None,
            },
            watched: vec![Watched {
                name: "llama".into(),
                process: Some(ProcessInfo {
                    pid: 4242,
                    cmdline: vec!["llama-server".into(), "-m".into(), "smollm2.gguf".into()],
                    model: Some("smollm2.gguf".into()),
                    uptime_seconds: 600,
                    rss_bytes: 512 << 20,
                }),
                cgroup: Some(CgroupStats {
                    path: "citadel.slice/services/llama".into(),
                    version: 2,
                    cpu_percent: Some(3.5),
                    memory_bytes: 600 << 20,
                    memory_limit_bytes: Some(1 << 30),
                    io_read_bytes_per_s: Some(0.0),
                    io_write_bytes_per_s: None,
                }),
                gpu: None,
            }],
            errors: vec![CollectorError::new("processes", "pid 9 vanished")],
            took: Duration::from_millis(3),
        };
        let reported = Reported {
            services: vec![ServiceStatus {
                name: "llama".into(),
                kind: "native".into(),
                status: ServiceState::Running,
                port: Some(8080),
                health: ServiceHealth::Ok,
                models: vec!["smollm2".into()],
                placement: Some("citadel.slice/services/llama".into()),
                pid: Some(4242),
                restarts: Some(0),
                ..ServiceStatus::default()
            }],
            worker: WorkerStatus {
                consuming: true,
                in_flight: 1,
                processed: 10,
                failed: 2,
                last_job_consumed_at: Some("2026-09-21T12:26:40Z".into()),
            },
            handlers: vec![HandlerStatus {
                job_type: "echo".into(),
                digest: Some("sha256:ab".into()),
                source: HandlerOrigin::Fleet,
                refused: Some(RefusedHandler {
                    digest: "sha256:cd".into(),
                    reason: "unsigned".into(),
                }),
            }],
            mode: NodeMode::Redis,
            errors: Vec::new(),
        };
        (node, snapshot, reported)
    }

    #[test]
    fn the_message_has_citadels_field_names_exactly() {
        let (node, snapshot, reported) = fixture();
        let message = serde_json::to_value(status_message(&node, &snapshot, &reported)).unwrap();
        let golden = json!({
            "version": "1.0",
            "timestamp": "2026-09-21T14:13:20Z",
            "nodeId": "gpu-7",
            "deviceCode": "dev-abc",
            "status": {
                "version": "0.1.0",
                "timestamp": "2026-09-21T14:13:20Z",
                "node": {
                    "name": "rack 3 / 7", "id": "gpu-7", "tags": ["eu", "h100"],
                    "device_config": {"services": []}, "uptime_seconds": 3600, "mode": "redis",
                    "hostname": "gpu-7", "os": "Debian GNU/Linux 12", "arch": "x86_64",
                    "cpu_model": "AMD EPYC", "cpu_cores": 64, "machine_uptime_seconds": 86400
                },
                "system": {
                    "cpu_percent": 12.35, "memory_used_gb": 16.0, "memory_total_gb": 64.0,
                    "memory_percent": 25.0, "memory_available_gb": 48.0,
                    "disk_used_gb": 25.0, "disk_total_gb": 100.0, "disk_available_gb": 75.0,
                    "disk_percent": 25.0,
                    "disks": [{"path": "/", "mount": "/", "used_gb": 25.0, "total_gb": 100.0,
                               "available_gb": 75.0, "percent": 25.0}]
                },
                "gpu": [{
                    "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1",
                    "memory_used_mb": 1000, "memory_total_mb": 81559, "memory_free_mb": 80559,
                    "utilization_percent": 40, "memory_utilization_percent": 10,
                    "temperature_celsius": 51, "power_watts": 123.46,
                    "clocks_mhz": {"graphics": 1980, "sm": 1980, "memory": 2619},
                    "driver": "550.54.15",
                    "processes": [{"pid": 4242, "memory_mb": 900, "sm_percent": 35}]
                }],
                "gpu_source": "nvml",
                "gpu_unavailable_reason": null,
                "services": [{
                    "name": "llama", "type": "native", "status": "running", "port": 8080,
                    "health": "ok", "models": ["smollm2"],
                    "placement": "citadel.slice/services/llama", "pid": 4242, "restarts": 0
                }],
                "worker": {"consuming": true, "in_flight": 1, "processed": 10, "failed": 2,
                           "last_job_consumed_at": "2026-09-21T12:26:40Z"},
                "handlers": [{"job_type": "echo", "digest": "sha256:ab", "source": "fleet",
                              "refused": {"digest": "sha256:cd", "reason": "unsigned"}}],
                "processes": [{
                    "name": "llama", "pid": 4242, "cmdline": "llama-server -m smollm2.gguf",
                    "model": "smollm2.gguf", "uptime_seconds": 600, "rss_mb": 512,
                    "cgroup": {"path": "citadel.slice/services/llama", "version": 2,
                               "cpu_percent": 3.5, "memory_bytes": 629145600,
                               "memory_limit_bytes": 1073741824,
                               "io_read_bytes_per_s": 0.0, "io_write_bytes_per_s": null},
                    "gpu": null
                }],
                "collector_errors": [{"probe": "processes", "error": "pid 9 vanished"}]
            }
        });
        assert_eq!(message, golden, "{message:#}");
    }

    #[test]
    fn the_message_reads_back_as_it_was_written() {
        let (node, snapshot, reported) = fixture();
        let message = status_message(&node, &snapshot, &reported);
        let text = serde_json::to_string(&message).unwrap();
        let read: StatusMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(read, message);

        // A node without a device code, system or GPUs: still one message.
        let bare = NodeIdentity {
            device_code: None,
            ..node
        };
        let empty = Snapshot {
            system: None,
            gpu: GpuReport::default(),
            watched: Vec::new(),
            errors: Vec::new(),
            ..snapshot
        };
        let message = status_message(&bare, &empty, &Reported::default());
        let value = serde_json::to_value(&message).unwrap();
        assert!(value.get("deviceCode").is_none(), "absent, not null: {value}");
        assert_eq!(value["status"]["node"]["mode"], "local");
        assert_eq!(serde_json::from_value::<StatusMessage>(value).unwrap(), message);
    }

    #[test]
    fn unknown_states_are_refused_by_name() {
        let service = json!({"name": "x", "type": "native", "status": "sleeping", "port": null,
                             "health": "ok", "models": []});
        let err = serde_json::from_value::<ServiceStatus>(service)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `sleeping`"), "{err}");
    }
}
