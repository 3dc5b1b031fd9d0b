//! The monitor's costs.
//! - `fleet_query_1000x8`: a scheduler's question ("up nodes with a GPU
//!   having 20 GB free, serving model M") over 1000 nodes × 8 GPUs,
//!   answered from the registry in memory, against the same question as
//!   SQL over an indexed in-memory SQLite copy of the same figures (the
//!   obvious alternative: keep the fleet in a database and ask it).
//! - `event_ingest_1000`: 1000 Chief-format events through
//!   `POST /v1/events/batch` of a monitor (HTTP, JSON, checks, judgement,
//!   one commit with indexes), against raw batched SQLite inserts of the
//!   same rows into the same table with the same indexes (one prepared
//!   statement, one transaction) — the floor of storing them at all.

use std::sync::Arc;

use citadel_collector::status::StatusMessage;
use citadel_monitor::config::MonitorConfig;
use citadel_monitor::registry::{Judging, NodeQuery, NodeState, Registry};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

const NODES: usize = 1000;
const GPUS: usize = 8;
const MODEL: &str = "llama-3-70b";

/// A full status message of node `index` with `GPUS` GPUs, some of them busy.
fn status(index: usize) -> StatusMessage {
    let gpus: Vec<Value> = (0..GPUS)
        .map(|gpu| {
            let used = ((index * 7 + gpu * 13) % 80) as u64 * 1000;
            json!({
                "index": gpu, "name": "NVIDIA H100 80GB HBM3", "uuid": format!("GPU-{index}-{gpu}"),
                "memory_used_mb": used, "memory_total_mb": 81559, "memory_free_mb": 81559 - used,
                "utilization_percent": (index + gpu) % 100, "memory_utilization_percent": 10,
                "temperature_celsius": 40 + (index + gpu) % 45, "power_watts": 300.5,
                "clocks_mhz": {"graphics": 1980, "sm": 1980, "memory": 2619},
                "driver": "580.159.04", "processes": []
            })
        })
        .collect();
    let model = if index.is_multiple_of(4) { MODEL } else { "qwen-2.5-7b" };
    let message = json!({
        "version": "1.0", "timestamp": "2026-12-07T00:00:00Z", "nodeId": format!("node-{index}"),
        "status": {
            "version": "0.1.0", "timestamp": "2026-12-07T00:00:00Z",
            "node": {"name": format!("node-{index}"), "id": format!("node-{index}"), "tags": ["eu"],
                     "device_config": null, "uptime_seconds": 10, "mode": "redis"},
            "system": null, "gpu": gpus, "gpu_source": "nvml", "gpu_unavailable_reason": null,
            "services": [{"name": "vllm", "type": "inference", "status": "running", "port": 8000,
                          "health": "ok", "models": [model], "backends": ["vllm"]}],
            "worker": {"consuming": true, "in_flight": index % 3, "processed": 0, "failed": 0,
                       "last_job_consumed_at": null},
            "handlers": [], "processes": [], "collector_errors": []
        }
    });
    serde_json::from_value(message).expect("a status message")
}

fn fleet_query(c: &mut Criterion) {
    let now = 1_000_000;
    let mut registry = Registry::new(Judging::from_config(&MonitorConfig::default()));
    let sql = rusqlite::Connection::open_in_memory().unwrap();
    sql.execute_batch(
        "CREATE TABLE nodes (id TEXT PRIMARY KEY, state TEXT NOT NULL);
         CREATE TABLE gpus (node TEXT NOT NULL, idx INTEGER NOT NULL, free_mb INTEGER NOT NULL);
         CREATE INDEX gpus_free ON gpus(node, free_mb);
         CREATE TABLE models (node TEXT NOT NULL, model TEXT NOT NULL);
         CREATE INDEX models_model ON models(model, node);",
    )
    .unwrap();
    for index in 0..NODES {
        let message = status(index);
        let id = message.node_id.clone();
        sql.execute("INSERT INTO nodes VALUES (?1, 'up')", [&id]).unwrap();
        for gpu in &message.status.gpu {
            sql.execute(
                "INSERT INTO gpus VALUES (?1, ?2, ?3)",
                rusqlite::params![id, gpu.gpu.index, gpu.memory_free_mb],
            )
            .unwrap();
        }
        for model in &message.status.services[0].models {
            sql.execute("INSERT INTO models VALUES (?1, ?2)", [&id, model]).unwrap();
        }
        registry.heartbeat(&id, now, 5_000, 0);
        registry.status(&id, now, message.status, false);
    }
    let query = NodeQuery {
        state: Some(NodeState::Up),
        model: Some(MODEL.into()),
        min_free_vram_mb: Some(20_000),
        ..NodeQuery::default()
    };
    let from_memory = registry.query(&query, now).len();
    let mut statement = sql
        .prepare(
            "SELECT n.id FROM nodes n WHERE n.state = 'up'
               AND EXISTS (SELECT 1 FROM models m WHERE m.model = ?1 AND m.node = n.id)
               AND EXISTS (SELECT 1 FROM gpus g WHERE g.node = n.id AND g.free_mb >= ?2)
             ORDER BY n.id",
        )
        .unwrap();
    let from_sql = statement
        .query_map(rusqlite::params![MODEL, 20_000], |row| row.get::<_, String>(0))
        .unwrap()
        .count();
    assert_eq!(from_memory, from_sql, "both answers name the same nodes");
    let mut group = c.benchmark_group("fleet_query_1000x8");
    group.bench_function("registry", |b| b.iter(|| registry.query(&query, now)));
    group.bench_function("sqlite", |b| {
        b.iter(|| {
            statement
                .query_map(rusqlite::params![MODEL, 20_000], |row| row.get::<_, String>(0))
                .unwrap()
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

fn events(batch: usize) -> Vec<Value> {
    (0..batch)
        .map(|index| {
            json!({
                "sourceType": "chief", "eventType": "job.completed", "level": "INFO",
                "message": format!("sample-etl-pipeline run {index} completed in 1.8 s"),
                "jobName": "sample-etl-pipeline", "runId": format!("run-{index}"),
                "node": "gpu-7", "meta": {"durationMs": 1800 + index % 100, "rows": 10_000}
            })
        })
        .collect()
}

fn event_ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = MonitorConfig {
        redis_url: Some("redis://127.0.0.1:1".into()),
        db: dir.path().join("monitor.sqlite"),
        max_batch: 1000,
        max_body_bytes: 8 << 20,
        ..MonitorConfig::default()
    };
    let (base, _server) = runtime.block_on(async {
        let monitor = citadel_monitor::service::Monitor::open(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = citadel_monitor::api::router(Arc::clone(&monitor));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), server)
    });
    let client = citadel_transports::http::client(std::time::Duration::from_secs(30)).unwrap();
    let body = serde_json::to_string(&events(1000)).unwrap();

    // The floor: the same rows, the monitor's events table and indexes.
    let raw = rusqlite::Connection::open(dir.path().join("raw.sqlite")).unwrap();
    raw.pragma_update(None, "journal_mode", "WAL").unwrap();
    raw.pragma_update(None, "synchronous", "NORMAL").unwrap();
    raw.execute_batch(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, stream_id TEXT UNIQUE, at_ms INTEGER NOT NULL,
             source_type TEXT NOT NULL, event_type TEXT NOT NULL, level TEXT NOT NULL, node TEXT,
             job_name TEXT, run_id TEXT, tenant TEXT, script_path TEXT, scheduled_for TEXT,
             message TEXT NOT NULL, meta TEXT);
         CREATE INDEX events_at ON events(at_ms);
         CREATE INDEX events_job ON events(job_name, at_ms);
         CREATE INDEX events_node ON events(node, at_ms);",
    )
    .unwrap();
    let rows = events(1000);
    let mut raw = raw;
    let mut group = c.benchmark_group("event_ingest_1000");
    group.sample_size(20);
    group.bench_function("raw_sqlite", |b| {
        b.iter(|| {
            let tx = raw.transaction().unwrap();
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO events (stream_id, at_ms, source_type, event_type, level, node, job_name,
                             run_id, tenant, script_path, scheduled_for, message, meta)
                         VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, NULL, ?8, ?9)",
                    )
                    .unwrap();
                for row in &rows {
                    insert
                        .execute(rusqlite::params![
                            1_796_000_000_000i64,
                            row["sourceType"].as_str(),
                            row["eventType"].as_str(),
                            row["level"].as_str(),
                            row["node"].as_str(),
                            row["jobName"].as_str(),
                            row["runId"].as_str(),
                            row["message"].as_str(),
                            row["meta"].to_string(),
                        ])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });
    group.bench_function("http_batch", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let response = client
                    .post(format!("{base}/v1/events/batch"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 202);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, fleet_query, event_ingest);
criterion_main!(benches);
