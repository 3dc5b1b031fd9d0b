//! A simulated fleet for the monitor: nodes that exist only as what real
//! nodes write to Redis — a full status message per node on
//! `node:status:stream` and one heartbeat each — in the nodes' own wire
//! formats, so a monitor and its dashboard can be shown a thousand nodes
//! with eight GPUs each on a two-core machine.

use serde_json::{Value, json};

/// One simulated node's status message: `gpus` GPUs at `celsius`, tagged
/// `tags`, serving `model`.
pub fn status_message(node: &str, gpus: u32, celsius: u32, tags: &[&str], model: &str) -> Value {
    let now = citadel_transports::fleet::timestamp_millis(std::time::SystemTime::now());
    let gpu: Vec<Value> = (0..gpus)
        .map(|index| {
            let used = 1000 * u64::from(index + 1);
            json!({
                "index": index, "name": "NVIDIA H100 80GB HBM3", "uuid": format!("GPU-{node}-{index}"),
                "memory_used_mb": used, "memory_total_mb": 81559, "memory_free_mb": 81559 - used,
                "utilization_percent": (index * 11) % 100, "memory_utilization_percent": 10,
                "temperature_celsius": celsius + index % 3, "power_watts": 300.5,
                "clocks_mhz": { "graphics": 1980, "sm": 1980, "memory": 2619 },
                "driver": "580.159.04", "processes": [],
            })
        })
        .collect();
    json!({
        "version": "1.0", "timestamp": now, "nodeId": node,
        "status": {
            "version": "0.1.0", "timestamp": now,
            "node": { "name": node, "id": node, "tags": tags, "device_config": null, "uptime_seconds": 10, "mode": "redis" },
            "system": {
                "cpu_percent": 12.5, "memory_used_gb": 100.0, "memory_total_gb": 1024.0, "memory_percent": 9.8,
                "memory_available_gb": 924.0, "disk_used_gb": 500.0, "disk_total_gb": 2000.0,
                "disk_available_gb": 1500.0, "disk_percent": 25.0, "disks": [],
            },
            "gpu": gpu, "gpu_source": "nvml", "gpu_unavailable_reason": null,
            "services": [{
                "name": "vllm", "type": "inference", "status": "running", "port": 8000, "health": "ok",
                "models": [model], "backends": ["vllm"],
            }],
            "worker": { "consuming": true, "in_flight": 0, "processed": 0, "failed": 0, "last_job_consumed_at": null },
            "handlers": [{ "job_type": "llm_inference", "digest": null, "source": "config" }],
            "processes": [], "collector_errors": [],
        },
    })
}

/// The status of the `index`th simulated node: tagged `sim` and `rack-a`
/// (even) or `rack-b` (odd), serving `llama-3-70b` (every third) or
/// `qwen-2.5-7b`.
pub fn simulated_status(node: &str, index: usize, gpus: u32) -> Value {
    let rack = if index.is_multiple_of(2) { "rack-a" } else { "rack-b" };
    let model = if index.is_multiple_of(3) {
        "llama-3-70b"
    } else {
        "qwen-2.5-7b"
    };
    status_message(node, gpus, 50, &["sim", rack], model)
}

/// `XADD` of `message` as node `node`'s status, as nodes write it.
fn status_entry(node: &str, message: &Value) -> redis::Cmd {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(citadel_transports::wire::NODE_STATUS_STREAM)
        .arg("*")
        .arg("nodeId")
        .arg(node)
        .arg("timestamp")
        .arg("now")
        .arg("status")
        .arg("online")
        .arg("payload")
        .arg(message.to_string());
    xadd
}

/// Write `message` as node `node`'s status.
pub fn publish_status(conn: &mut redis::Connection, node: &str, message: &Value) {
    let _: String = status_entry(node, message).query(conn).expect("XADD status");
}

/// One heartbeat of `node`, which says it beats every `interval_ms`.
pub fn heartbeat(conn: &mut redis::Connection, node: &str, interval_ms: u64) {
    let at = citadel_transports::fleet::epoch_millis(std::time::SystemTime::now());
    let _: String = redis::cmd("XADD")
        .arg(citadel_transports::fleet::HEARTBEATS_STREAM)
        .arg("*")
        .arg("node")
        .arg(node)
        .arg("at")
        .arg(at)
        .arg("intervalMs")
        .arg(interval_ms)
        .arg("inFlight")
        .arg(0)
        .query(conn)
        .expect("XADD heartbeat");
}

/// `count` nodes named `{prefix}-{i}` with `gpus` GPUs each, their statuses
/// and a heartbeat saying they beat every `interval_ms` (long enough that
/// they stay up for the test without another); returns their ids.
pub fn simulate(conn: &mut redis::Connection, prefix: &str, count: usize, gpus: u32, interval_ms: u64) -> Vec<String> {
    let mut pipe = redis::pipe();
    let mut ids = Vec::with_capacity(count);
    for index in 0..count {
        let node = format!("{prefix}-{index:04}");
        pipe.add_command(status_entry(&node, &simulated_status(&node, index, gpus)))
            .ignore();
        ids.push(node);
    }
    let () = pipe.query(conn).expect("XADD statuses");
    for node in &ids {
        heartbeat(conn, node, interval_ms);
    }
    ids
}

/// Simulated nodes kept reporting (a status and a heartbeat each, every
/// `every`) until dropped: they stay `up` and fresh however long a test runs.
pub struct KeepReporting {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepReporting {
    /// Keep `ids` (made by [`simulate`] with `gpus` GPUs) reporting to the Redis at `url`.
    pub fn start(url: &str, ids: Vec<String>, gpus: u32, every: std::time::Duration) -> KeepReporting {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let mut conn = redis::Client::open(url)
            .and_then(|client| client.get_connection())
            .expect("a Redis connection");
        let thread = std::thread::spawn(move || {
            let interval_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for (index, node) in ids.iter().enumerate() {
                    publish_status(&mut conn, node, &simulated_status(node, index, gpus));
                    heartbeat(&mut conn, node, interval_ms);
                }
                std::thread::park_timeout(every);
            }
        });
        KeepReporting {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for KeepReporting {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
