//! The `StatusMessage` as types, both ways: built by the node's publishers
//! and `/status`, read back by `citadel status`, the fleet monitor and the
//! tests. Field names are Citadel's, exactly (DESIGN §3: `nodeId`,
//! `deviceCode`, `status.node`, `status.system`, `gpu[]`, `services[]`,
//! `worker{}`), plus citadel's own `handlers[]`, `processes[]` and
//! `collector_errors[]`. States are enums serialized as Citadel's strings.

use serde::{Deserialize, Serialize};

use crate::{CgroupStats, CollectorError, GpuInfo, GpuUsage};

/// Version of the message format (`version`).
pub const MESSAGE_VERSION: &str = "1.0";

/// One node's status at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// Message format version, `1.0`.
    pub version: String,
    /// When it was taken (RFC 3339, UTC, seconds).
    pub timestamp: String,
    /// The node's id.
    #[serde(rename = "nodeId")]
    pub node_id: String,
    /// The device code of its device authorization, when it has one.
    #[serde(rename = "deviceCode", default, skip_serializing_if = "Option::is_none")]
    pub device_code: Option<String>,
    /// Everything else.
    pub status: NodeStatus,
}

/// `status`: the node's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The agent's version.
    pub version: String,
    /// When it was taken (as the message's).
    pub timestamp: String,
    /// Who and what the node is.
    pub node: NodeSection,
    /// CPU, memory, disks (`null` when the system probe failed).
    pub system: Option<SystemSection>,
    /// One entry per GPU.
    pub gpu: Vec<GpuEntry>,
    /// Where the GPU figures came from (`nvml`, `nvidia-smi`, `driver`, `none`).
    pub gpu_source: String,
    /// Why there are no GPU figures, when there are none.
    pub gpu_unavailable_reason: Option<String>,
    /// Services the node runs: engines, native services, containers.
    pub services: Vec<ServiceStatus>,
    /// The job counters of every source together.
    pub worker: WorkerStatus,
    /// The handler of each job type.
    #[serde(default)]
    pub handlers: Vec<HandlerStatus>,
    /// The processes the node watches.
    #[serde(default)]
    pub processes: Vec<ProcessEntry>,
    /// Probes that failed in this snapshot.
    #[serde(default)]
    pub collector_errors: Vec<CollectorError>,
}

/// `status.node`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSection {
    /// Display name.
    pub name: String,
    /// Node id.
    pub id: String,
    /// Tags (`node.tags`).
    pub tags: Vec<String>,
    /// The device configuration the control plane applied, if any.
    pub device_config: Option<serde_json::Value>,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// Where the node takes jobs from.
    pub mode: NodeMode,
    /// Host name.
    pub hostname: Option<String>,
    /// Operating system.
    pub os: Option<String>,
    /// CPU architecture.
    pub arch: Option<String>,
    /// CPU model.
    pub cpu_model: Option<String>,
    /// Logical CPUs.
    pub cpu_cores: Option<usize>,
    /// Seconds since the machine booted.
    pub machine_uptime_seconds: Option<u64>,
}

/// Where the node takes jobs from (`status.node.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NodeMode {
    /// Redis Streams (`citadel work`, or `citadel agent` while Redis answers).
    Redis,
    /// Polling the Nexus API (`citadel agent`).
    Nexus,
    /// No jobs: a snapshot taken by `citadel status` on the spot.
    #[default]
    Local,
    /// No jobs yet: the first status of `citadel init`, sent once the node
    /// is authorized.
    Init,
}

impl NodeMode {
    /// As the message spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeMode::Redis => "redis",
            NodeMode::Nexus => "nexus",
            NodeMode::Local => "local",
            NodeMode::Init => "init",
        }
    }
}

/// `status.system`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemSection {
    /// CPU use, percent of all cores.
    pub cpu_percent: f64,
    /// Memory in use, GiB.
    pub memory_used_gb: f64,
    /// Memory installed, GiB.
    pub memory_total_gb: f64,
    /// Memory in use, percent.
    pub memory_percent: f64,
    /// Memory available to new work, GiB.
    pub memory_available_gb: f64,
    /// The root disk: used, GiB.
    pub disk_used_gb: f64,
    /// The root disk: size, GiB.
    pub disk_total_gb: f64,
    /// The root disk: free to the node, GiB.
    pub disk_available_gb: f64,
    /// The root disk: used, percent.
    pub disk_percent: f64,
    /// Every disk the node reports.
    #[serde(default)]
    pub disks: Vec<DiskEntry>,
}

/// One disk in `status.system.disks[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// The path asked about.
    pub path: String,
    /// Its mount point.
    pub mount: String,
    /// Used, GiB.
    pub used_gb: f64,
    /// Size, GiB.
    pub total_gb: f64,
    /// Free to the node, GiB.
    pub available_gb: f64,
    /// Used, percent.
    pub percent: f64,
}

/// One GPU in `status.gpu[]`: what the collector reads of it, and what
/// it has free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuEntry {
    /// Index, name, UUID, memory, utilisation, temperature, power, clocks,
    /// driver and processes, as read (power rounded to 0.01 W).
    #[serde(flatten)]
    pub gpu: GpuInfo,
    /// Memory free, MiB.
    pub memory_free_mb: Option<u64>,
}

/// A service the node runs (an engine, a native service, a container). The
/// first six fields are Citadel's; the optional rest are citadel's own and
/// absent where they do not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// Its kind (`inference`, `native`, `docker`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it runs.
    pub status: ServiceState,
    /// The port it serves on.
    pub port: Option<u16>,
    /// What its health check says.
    pub health: ServiceHealth,
    /// Models it serves.
    pub models: Vec<String>,
    /// The backends an inference engine is (`vllm`, `llamacpp`, `ollama`…),
    /// for schedulers asking which node serves one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// Where it runs: its cgroup (`citadel.slice/services/llama`), `plain`
    /// (no cgroup: see `warning`), or its container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// Its main process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Times it has been restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// How its last run ended (`exited with status 1`, `killed by the
    /// kernel: out of memory (limit 64 MiB)`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Something the operator should know (it runs without limits because
    /// cgroups are not writable, it cannot be started, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Whether a service runs (`services[].status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// It runs.
    Running,
    /// It is not running, and that is expected (not started yet, stopped).
    #[default]
    Stopped,
    /// It is not running and should be (it failed, cannot start, or its
    /// engine does not answer).
    Error,
}

impl ServiceState {
    /// As the message spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Running => "running",
            ServiceState::Stopped => "stopped",
            ServiceState::Error => "error",
        }
    }
}

/// What a service's health check says (`services[].health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServiceHealth {
    /// It answers its health check.
    Ok,
    /// It answers, but not fully.
    Degraded,
    /// It answered before and no longer does.
    Unhealthy,
    /// It has no health check, or is not running.
    #[default]
    Unknown,
    /// It has not answered its health check yet since it started.
    Starting,
}

impl ServiceHealth {
    /// As the message spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceHealth::Ok => "ok",
            ServiceHealth::Degraded => "degraded",
            ServiceHealth::Unhealthy => "unhealthy",
            ServiceHealth::Unknown => "unknown",
            ServiceHealth::Starting => "starting",
        }
    }
}

/// The job counters (`status.worker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerStatus {
    /// The job type.
    pub job_type: String,
    /// `sha256:<hex>` of the component serving it (`null` for native ones).
    pub digest: Option<String>,
    /// Where the handler in force came from.
    pub source: HandlerOrigin,
    /// A published component this node refused, and why (the handler in
    /// force is the one above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedHandler>,
}

/// Where a job type's handler came from (`handlers[].source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerOrigin {
    /// `[handlers]`, or a built-in default.
    Config,
    /// Published to the fleet (`citadel component publish`).
    Fleet,
    /// A file in the watched directory (`components.dir`).
    Dir,
    /// Code of the node itself.
    Native,
    /// None in force: only a refused component is known.
    None,
}

impl HandlerOrigin {
    /// As the message spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerOrigin::Config => "config",
            HandlerOrigin::Fleet => "fleet",
            HandlerOrigin::Dir => "dir",
            HandlerOrigin::Native => "native",
            HandlerOrigin::None => "none",
        }
    }
}

/// A published component a node would not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedHandler {
    /// Its digest.
    pub digest: String,
    /// Why.
    pub reason: String,
}

/// A watched process (`processes[]`): the main process of a service and
/// its cgroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// What the node calls it.
    pub name: String,
    /// Its pid (absent when it is not running).
    pub pid: Option<u32>,
    /// Its command line, joined by spaces.
    pub cmdline: Option<String>,
    /// The model it serves, read from its command line.
    pub model: Option<String>,
    /// Seconds since it started.
    pub uptime_seconds: Option<u64>,
    /// Resident memory, MiB.
    pub rss_mb: Option<u64>,
    /// Its cgroup's statistics.
    pub cgroup: Option<CgroupStats>,
    /// Its use of the GPUs.
    pub gpu: Option<GpuUsage>,
}
