//! `citadel monitor` against a real redis-server and real `citadel work`
//! nodes (processes, killed for real): nodes going down and coming back,
//! clean stops, hot GPUs (a fake `nvidia-smi`: CI has no GPU), failing job
//! types, missed cadences, a monitor killed mid-stream, a webhook receiver
//! that fails then recovers, and Chief-format ingest with its bad inputs.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use citadel_monitor::config::{CheckConfig, MonitorConfig, NotifyConfig};
use citadel_runtime::config::Config;
use citadel_tests::*;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(30);
const INGEST_KEY: &str = "ingest-key-0123456789";
const READ_KEY: &str = "read-key-0123456789ab";

/// A monitor on `redis` storing in `db`, adjusted by `adjust`.
fn monitor_config(redis: &RedisServer, db: &Path, adjust: impl FnOnce(&mut MonitorConfig)) -> Config {
    let mut config = Config {
        redis_url: Some(redis.url()),
        ..Config::default()
    };
    config.monitor.addr = "127.0.0.1:0".parse().unwrap();
    config.monitor.db = db.to_path_buf();
    config.monitor.consumer = Some("monitor-under-test".into());
    config.monitor.node_grace_ms = 100;
    adjust(&mut config.monitor);
    config
}

/// A `citadel monitor` process with its database in a temp dir of its own.
struct TestMonitor {
    /// Its API's base URL.
    base: String,
    _process: WorkerProcess,
    _db: tempfile::TempDir,
}

impl TestMonitor {
    /// A monitor on `redis`, configured as `adjust` says, ready.
    fn start(redis: &RedisServer, adjust: impl FnOnce(&mut MonitorConfig)) -> TestMonitor {
        let db = tempfile::tempdir().unwrap();
        let process = WorkerProcess::start_with_env(
            &monitor_config(redis, &db.path().join("m.sqlite"), adjust),
            "monitor",
            &[],
        );
        TestMonitor {
            base: process.monitor_url(),
            _process: process,
            _db: db,
        }
    }
}

async fn get(base: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let client = citadel_transports::http::client(Duration::from_secs(10)).unwrap();
    let mut request = client.get(format!("{base}{path}"));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.expect("the monitor answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(base: &str, path: &str, body: impl Into<reqwest::Body>, key: Option<&str>) -> (u16, Value) {
    let client = citadel_transports::http::client(Duration::from_secs(10)).unwrap();
    let mut request = client
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.expect("the monitor answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The alerts matching `query`.
async fn alerts(base: &str, query: &str) -> Vec<Value> {
    let (status, body) = get(base, &format!("/v1/alerts?{query}"), None).await;
    assert_eq!(status, 200, "{body}");
    body["alerts"].as_array().cloned().unwrap_or_default()
}

/// Wait for an alert matching `query` satisfying `wanted`.
async fn wait_alert(base: &str, query: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    eventually_some(SETTLE, &format!("an alert {query}"), || async {
        alerts(base, query).await.into_iter().find(|alert| wanted(alert))
    })
    .await
}

async fn node_state(base: &str, id: &str) -> Option<String> {
    let (_, body) = get(base, "/v1/nodes?stale=true", None).await;
    body["nodes"]
        .as_array()?
        .iter()
        .find(|node| node["id"] == id)
        .map(|node| node["state"].as_str().unwrap_or_default().to_string())
}

fn run_ids(alert: &Value) -> BTreeSet<String> {
    alert["details"]["orphans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|orphan| orphan["jobId"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_down_naming_its_jobs_and_where_they_went_and_recovers_when_back() {
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |_| {});
    let base = monitor.base.clone();
    let mut doomed = WorkerProcess::start(&fleet_node_config(&redis, "doomed"));
    let mut conn = redis.conn();
    let jobs = ["orphan-1", "orphan-2", "orphan-3"];
    for job in jobs {
        enqueue(&mut conn, job, "slow", r#"{"ms":3000,"chunks":3}"#);
    }
    for job in jobs {
        wait_status(&redis, job, "running", SETTLE).await;
    }
    eventually_some(SETTLE, "the node up in the monitor", || async {
        (node_state(&base, "doomed").await.as_deref() == Some("up")).then_some(())
    })
    .await;

    let killed = Instant::now();
    doomed.kill9();
    let down = wait_alert(&base, "alertType=NODE_DOWN&status=OPEN", |alert| {
        run_ids(alert).len() == jobs.len()
    })
    .await;
    let noticed = killed.elapsed();
    assert!(noticed < Duration::from_secs(10), "NODE_DOWN after {noticed:?}");
    assert_eq!(down["node"], "doomed");
    assert_eq!(run_ids(&down), jobs.iter().map(|job| job.to_string()).collect());
    for orphan in down["details"]["orphans"].as_array().unwrap() {
        assert_eq!(orphan["jobType"], "slow");
        assert_eq!(orphan["queue"], "jobs:v1:gpu-general");
        assert!(orphan["consumer"].as_str().unwrap().starts_with("doomed-"), "{orphan}");
    }

    // Another node takes them over: the alert says who, then that they
    // are done.
    let rescuer = WorkerProcess::start(&fleet_node_config(&redis, "rescuer"));
    let rescuer_consumer = rescuer.consumer();
    let settled = wait_alert(&base, "alertType=NODE_DOWN", |alert| {
        alert["details"]["orphans"]
            .as_array()
            .is_some_and(|orphans| orphans.iter().all(|orphan| orphan["now"] == "settled"))
    })
    .await;
    for orphan in settled["details"]["orphans"].as_array().unwrap() {
        assert_eq!(orphan["status"], "completed", "{orphan}");
        assert_eq!(orphan["by"], rescuer_consumer.as_str(), "{orphan}");
    }

    // The node comes back: NODE_DOWN closes, RECOVERY opens (and closes
    // on its next heartbeat).
    let _back = WorkerProcess::start(&fleet_node_config(&redis, "doomed"));
    let closed = wait_alert(&base, "alertType=NODE_DOWN&status=CLOSED", |_| true).await;
    assert_eq!(closed["id"], down["id"]);
    let recovery = wait_alert(&base, "alertType=RECOVERY", |alert| alert["node"] == "doomed").await;
    assert_eq!(recovery["details"]["recoveredFrom"], down["id"]);
    wait_alert(&base, "alertType=RECOVERY&status=CLOSED", |alert| {
        alert["node"] == "doomed"
    })
    .await;
    assert_eq!(alerts(&base, "alertType=NODE_DOWN").await.len(), 1, "one NODE_DOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_is_offline_and_alerts_nothing() {
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |_| {});
    let base = monitor.base.clone();
    let mut node = WorkerProcess::start(&fleet_node_config(&redis, "tidy"));
    eventually_some(SETTLE, "the node up", || async {
        (node_state(&base, "tidy").await.as_deref() == Some("up")).then_some(())
    })
    .await;
    let stopped = Instant::now();
    node.terminate();
    node.wait(SETTLE);
    eventually_some(SETTLE, "the node offline", || async {
        (node_state(&base, "tidy").await.as_deref() == Some("offline")).then_some(())
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(10));
    // Well past the time a silent node would be down (3 heartbeats).
    eventually_some(SETTLE, "the node silent for 2 s", || async {
        let (_, body) = get(&base, "/v1/nodes?stale=true", None).await;
        let silent = body["nodes"][0]["silentForMs"].as_u64().unwrap_or(0);
        (silent > 2_000).then_some(())
    })
    .await;
    assert_eq!(node_state(&base, "tidy").await.as_deref(), Some("offline"));
    assert!(alerts(&base, "").await.is_empty(), "{:?}", alerts(&base, "").await);

    // The same from a terminal.
    let (code, table) = fleet_cli(&["nodes", "--stale", "--monitor", &base]);
    assert_eq!(code, Some(0), "{table}");
    let row = table
        .lines()
        .find(|line| line.starts_with("tidy"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("offline"), "{row}");
    let (code, json) = fleet_cli(&["nodes", "--state", "offline", "--json", "--monitor", &base]);
    assert_eq!(code, Some(0));
    let body: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(body["nodes"][0]["id"], "tidy");
    let (code, events) = fleet_cli(&["events", "--type", "node.stopping", "--monitor", &base]);
    assert_eq!(code, Some(0));
    assert!(events.contains("tidy is stopping cleanly"), "{events}");
}

/// `citadel fleet …`: exit code and stdout (stderr appended).
fn fleet_cli(args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(citadel_bin())
        .arg("fleet")
        .args(args)
        .env_remove("CITADEL_MONITOR_API_KEY")
        .env_remove("CITADEL_MONITOR_URL")
        .output()
        .expect("run citadel fleet");
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_gpu_alerts_and_the_alert_closes_when_it_cools() {
    let smi = FakeSmi::new(60);
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |_| {});
    let base = monitor.base.clone();
    let mut config = fleet_node_config(&redis, "warm");
    config.telemetry.nvidia_smi = smi.program().display().to_string();
    config.telemetry.status_interval_s = 1;
    let _node = WorkerProcess::start(&config);
    // The registry knows the GPU's real size and what is free on it.
    let (_, body) = eventually_some(SETTLE, "the GPU in the registry", || async {
        let found = get(&base, "/v1/nodes?min_free_vram_mb=80000", None).await;
        (found.1["nodes"].as_array().is_some_and(|nodes| nodes.len() == 1)).then_some(found)
    })
    .await;
    assert_eq!(body["nodes"][0]["gpus"][0]["memoryTotalMb"], 81559);
    assert_eq!(body["nodes"][0]["freeVramMb"], 81559 - 1024);
    let (_, none) = get(&base, "/v1/nodes?min_free_vram_mb=90000", None).await;
    assert_eq!(none["nodes"], json!([]));

    smi.set_temperature(91);
    let hot = wait_alert(&base, "alertType=GPU_HOT&status=OPEN", |_| true).await;
    assert_eq!(hot["node"], "warm");
    assert_eq!(hot["details"]["temperatureCelsius"], 91);
    smi.set_temperature(70);
    let cooled = wait_alert(&base, "alertType=GPU_HOT&status=CLOSED", |_| true).await;
    assert_eq!(cooled["id"], hot["id"]);
    assert_eq!(alerts(&base, "alertType=GPU_HOT").await.len(), 1);
    // The node's page: its latest status and its per-minute history.
    let (status, page) = get(&base, "/v1/nodes/warm", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["status"]["gpu"][0]["uuid"], "GPU-fake-0");
    let minute = &page["history"][0];
    assert_eq!(minute["gpus"][0]["index"], 0);
    let mean = minute["gpus"][0]["temperatureCelsius"].as_f64().unwrap();
    assert!((60.0..=91.0).contains(&mean), "{minute}");
    assert_eq!(minute["gpus"][0]["memoryTotalMb"], 81559.0);
    assert_eq!(get(&base, "/v1/nodes/nobody", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_type_alerts_and_recovers_on_its_next_success() {
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |_| {});
    let base = monitor.base.clone();
    let mut config = fleet_node_config(&redis, "worker");
    config.worker.max_attempts = 1;
    let _node = WorkerProcess::start(&config);
    let mut conn = redis.conn();
    enqueue(&mut conn, "poison", "flaky", r#"{"succeed_on_attempt":9}"#);
    let failure = wait_alert(&base, "alertType=FAILURE&status=OPEN", |_| true).await;
    assert_eq!(failure["jobName"], "flaky");
    assert_eq!(failure["details"]["runId"], "poison");
    let dead = wait_alert(&base, "alertType=DEAD_LETTER&status=OPEN", |_| true).await;
    assert_eq!(dead["jobName"], "flaky");
    enqueue(&mut conn, "poison-2", "flaky", r#"{"succeed_on_attempt":9}"#);
    wait_status(&redis, "poison-2", "dead_lettered", SETTLE).await;
    let streak = wait_alert(&base, "alertType=FAILURE&status=OPEN", |alert| {
        alert["details"]["consecutiveFailures"] == 2
    })
    .await;
    assert_eq!(streak["id"], failure["id"], "one open FAILURE, refreshed");

    enqueue(&mut conn, "fine", "flaky", r#"{"succeed_on_attempt":1}"#);
    let closed = wait_alert(&base, "alertType=FAILURE&status=CLOSED", |_| true).await;
    assert_eq!(closed["id"], failure["id"]);
    let recovery = wait_alert(&base, "alertType=RECOVERY&status=OPEN", |_| true).await;
    assert_eq!(recovery["subject"], "job:flaky");
    wait_alert(&base, "alertType=DEAD_LETTER&status=CLOSED", |_| true).await;
    let (_, jobs) = get(&base, "/v1/status/jobs/flaky", None).await;
    assert_eq!(jobs["check"]["consecutiveFailures"], 0);
    assert_eq!(jobs["lastDay"]["runs"], 3);
    assert_eq!(jobs["lastDay"]["failures"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_type_missing_its_cadence_is_missed_until_it_runs() {
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |monitor| {
        monitor.checks = vec![CheckConfig {
            job_type: "echo".into(),
            every_s: Some(1),
            schedule: None,
            grace_s: 1,
            alert_on_failure: true,
            alert_on_miss: true,
        }];
    });
    let base = monitor.base.clone();
    let missed = wait_alert(&base, "alertType=MISSED&status=OPEN", |_| true).await;
    assert_eq!(missed["jobName"], "echo");
    let (_, jobs) = get(&base, "/v1/status/jobs", None).await;
    let echo = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["jobName"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(echo["state"], "DOWN");
    let _node = WorkerProcess::start(&fleet_node_config(&redis, "worker"));
    enqueue(&mut redis.conn(), "on-time", "echo", r#"{"text":"x"}"#);
    wait_alert(&base, "alertType=MISSED&status=CLOSED", |alert| {
        alert["id"] == missed["id"]
    })
    .await;
    let recovery = wait_alert(&base, "alertType=RECOVERY", |_| true).await;
    assert_eq!(recovery["details"]["recoveredType"], "MISSED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_killed_mid_stream_loses_nothing_and_alerts_and_notifies_once() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let receiver = StatusReceiver::start(Answer::Accept).await;
    let config = monitor_config(&redis, &db.path().join("m.sqlite"), |monitor| {
        monitor.notify = vec![NotifyConfig {
            url: receiver.url(),
            bearer: Some("hook-token".into()),
        }];
    });
    let mut first = WorkerProcess::start_with_env(&config, "monitor", &[]);
    let base = first.monitor_url();
    let _node = WorkerProcess::start(&fleet_node_config(&redis, "busy"));
    let mut conn = redis.conn();
    enqueue(&mut conn, "bad-1", "trap", "{}");
    let failure = wait_alert(&base, "alertType=FAILURE&status=OPEN", |_| true).await;
    eventually(SETTLE, "the FAILURE notified", || receiver.accepted().len() == 1).await;
    for index in 0..20 {
        enqueue(&mut conn, &format!("stream-{index}"), "echo", r#"{"text":"x"}"#);
    }
    first.kill9();
    for index in 20..40 {
        enqueue(&mut conn, &format!("stream-{index}"), "echo", r#"{"text":"x"}"#);
    }
    enqueue(&mut conn, "bad-2", "trap", "{}");
    wait_status(&redis, "stream-39", "completed", SETTLE).await;
    wait_status(&redis, "bad-2", "failed", SETTLE).await;

    let second = WorkerProcess::start_with_env(&config, "monitor", &[]);
    let base = second.monitor_url();
    let completed = eventually_some(SETTLE, "40 job.completed events", || async {
        let (_, body) = get(
            &base,
            "/v1/events?eventType=job.completed&jobName=echo&limit=1000",
            None,
        )
        .await;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        (events.len() >= 40).then_some(events)
    })
    .await;
    let ids: BTreeSet<&str> = completed.iter().map(|event| event["runId"].as_str().unwrap()).collect();
    assert_eq!((completed.len(), ids.len()), (40, 40), "every event once");
    let streak = wait_alert(&base, "alertType=FAILURE", |alert| {
        alert["details"]["consecutiveFailures"] == 2
    })
    .await;
    assert_eq!(streak["id"], failure["id"]);
    assert_eq!(alerts(&base, "alertType=FAILURE").await.len(), 1, "no second FAILURE");
    let (_, metrics_before) = get(&base, "/v1/health", None).await;
    assert_eq!(metrics_before["status"], "ok");
    // Nothing more is notified: the open FAILURE was notified before the kill.
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let notification: Value = serde_json::from_str(&accepted[0]).unwrap();
    assert_eq!(notification["status"], "firing");
    assert_eq!(notification["alerts"][0]["labels"]["alertname"], "FAILURE");
    assert_eq!(receiver.authorization()[0].as_deref(), Some("Bearer hook-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_failing_then_recovering_gets_each_notification_once() {
    let redis = RedisServer::start();
    let receiver = StatusReceiver::start(Answer::Unavailable).await;
    let monitor = TestMonitor::start(&redis, |monitor| {
        monitor.notify = vec![NotifyConfig {
            url: receiver.url(),
            bearer: None,
        }];
    });
    let base = monitor.base.clone();
    let mut node_settings = fleet_node_config(&redis, "worker");
    node_settings.worker.max_attempts = 1;
    let _node = WorkerProcess::start(&node_settings);
    let mut conn = redis.conn();
    enqueue(&mut conn, "fails", "flaky", r#"{"succeed_on_attempt":9}"#);
    wait_alert(&base, "alertType=FAILURE&status=OPEN", |_| true).await;
    eventually(SETTLE, "attempts on the failing receiver", || receiver.attempts() >= 2).await;
    assert!(receiver.accepted().is_empty());
    receiver.answer(Answer::Accept);
    enqueue(&mut conn, "works", "flaky", r#"{"succeed_on_attempt":1}"#);
    // FAILURE and DEAD_LETTER firing, both resolved, RECOVERY firing.
    eventually(SETTLE, "five notifications", || receiver.accepted().len() >= 5).await;
    let (_, metrics) = {
        let client = citadel_transports::http::client(Duration::from_secs(10)).unwrap();
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (200, text)
    };
    assert!(
        metrics.contains("citadel_monitor_notifications_delivered_total 5"),
        "{metrics}"
    );
    let mut seen = BTreeSet::new();
    for body in receiver.accepted() {
        let notification: Value = serde_json::from_str(&body).unwrap();
        let alert = &notification["alerts"][0];
        let key = (
            alert["labels"]["alertname"].as_str().unwrap().to_string(),
            notification["status"].as_str().unwrap().to_string(),
        );
        assert!(seen.insert(key.clone()), "{key:?} twice");
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chief_events_come_in_with_the_right_key_and_bad_input_stores_nothing() {
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |monitor| {
        monitor.api_keys = vec![READ_KEY.into()];
        monitor.ingest_keys = vec![INGEST_KEY.into()];
        monitor.max_body_bytes = 4096;
        monitor.max_batch = 3;
    });
    let base = monitor.base.clone();
    let chief = json!({"sourceType":"chief","eventType":"job.started","level":"INFO","message":"Job started","jobName":"sample-etl-pipeline","runId":"demo-1"});

    assert_eq!(get(&base, "/v1/health", None).await.0, 200, "health is open");
    assert_eq!(post(&base, "/v1/events", chief.to_string(), None).await.0, 401);
    assert_eq!(
        post(&base, "/v1/events", chief.to_string(), Some("wrong-key-0123456789"))
            .await
            .0,
        401
    );
    let (status, body) = post(&base, "/v1/events", chief.to_string(), Some(INGEST_KEY)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        get(&base, "/v1/events", Some(INGEST_KEY)).await.0,
        401,
        "an ingest key cannot read"
    );
    let (code, refused) = fleet_cli(&["alerts", "--monitor", &base]);
    assert_eq!(code, Some(2));
    assert!(refused.contains("401") && refused.contains("x-api-key"), "{refused}");
    let (code, listed) = fleet_cli(&["alerts", "--monitor", &base, "--api-key", READ_KEY]);
    assert_eq!(code, Some(0), "{listed}");
    let batch = json!({"events": [
        {"sourceType":"chief","eventType":"job.completed","level":"INFO","message":"done","jobName":"sample-etl-pipeline","runId":"demo-1"},
        {"sourceType":"chief","eventType":"worker.message","level":"WARN","message":"latency elevated","jobName":"sample-etl-pipeline","meta":{"duration_ms":1800}}
    ]});
    assert_eq!(
        post(&base, "/v1/events/batch", batch.to_string(), Some(READ_KEY))
            .await
            .0,
        202
    );
    let stored = |query: &'static str| {
        let base = base.clone();
        async move {
            let (status, body) = get(&base, query, Some(READ_KEY)).await;
            assert_eq!(status, 200, "{body}");
            body["events"].as_array().cloned().unwrap_or_default()
        }
    };
    assert_eq!(stored("/v1/events?jobName=sample-etl-pipeline").await.len(), 3);
    let warned = stored("/v1/events?level=WARN").await;
    assert_eq!(warned[0]["meta"]["duration_ms"], 1800);

    // Bad input: a 400 naming the field, and nothing stored.
    let bad = [
        (json!({"level":"INFO"}).to_string(), "eventType"),
        (json!({"eventType":"x","level":"LOUD"}).to_string(), "level"),
        (json!({"eventType":"x","jobName":["a"]}).to_string(), "jobName"),
        ("{not json".to_string(), "body"),
    ];
    for (body, field) in bad {
        let (status, answer) = post(&base, "/v1/events", body, Some(INGEST_KEY)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().starts_with(field), "{answer}");
    }
    let half_bad = json!([{"eventType":"fine"}, {"eventType":""}]).to_string();
    let (status, answer) = post(&base, "/v1/events/batch", half_bad, Some(INGEST_KEY)).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().starts_with("events[1].eventType"),
        "{answer}"
    );
    let too_many = json!([{"eventType":"a"},{"eventType":"b"},{"eventType":"c"},{"eventType":"d"}]).to_string();
    assert_eq!(post(&base, "/v1/events/batch", too_many, Some(INGEST_KEY)).await.0, 400);
    let oversized = json!({"eventType":"x","message":"y".repeat(8000)}).to_string();
    assert_eq!(post(&base, "/v1/events", oversized, Some(INGEST_KEY)).await.0, 413);
    assert!(
        stored("/v1/events?eventType=fine").await.is_empty(),
        "nothing of a refused batch"
    );
    assert!(stored("/v1/events?eventType=x").await.is_empty());

    // Hostile filters.
    for query in [
        "/v1/events?jobName%3B%20DROP%20TABLE%20events=1",
        "/v1/events?limit=1000000",
        "/v1/events?level=LOUD",
        "/v1/events?from=yesterday",
        "/v1/alerts?alertType=PANIC",
        "/v1/nodes?min_free_vram_mb=-1",
    ] {
        let (status, body) = get(&base, query, Some(READ_KEY)).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    assert!(stored("/v1/events?jobName=x%27%20OR%20%271%27%3D%271").await.is_empty());
    assert_eq!(stored("/v1/events?limit=1000").await.len(), 3, "the table is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_only_server_left_is_a_stuck_backlog_until_one_returns() {
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |monitor| {
        monitor.backlog_grace_s = 1;
        monitor.backlog_poll_ms = 200;
    });
    let base = monitor.base.clone();
    let mut conn = redis.conn();
    let mut server = WorkerProcess::start(&fleet_node_config(&redis, "only-server"));
    enqueue(&mut conn, "served", "echo", r#"{"text":"x"}"#);
    wait_status(&redis, "served", "completed", SETTLE).await;
    server.terminate();
    server.wait(SETTLE);
    eventually_some(SETTLE, "the server offline", || async {
        (node_state(&base, "only-server").await.as_deref() == Some("offline")).then_some(())
    })
    .await;
    for index in 0..3 {
        enqueue(&mut conn, &format!("waiting-{index}"), "echo", r#"{"text":"x"}"#);
    }
    let stuck = wait_alert(&base, "alertType=BACKLOG_STUCK&status=OPEN", |_| true).await;
    assert_eq!(stuck["subject"], "queue:jobs:v1:gpu-general/echo");
    assert_eq!(stuck["details"]["waiting"], 3);
    assert_eq!(stuck["jobName"], "echo");
    let _back = WorkerProcess::start(&fleet_node_config(&redis, "only-server"));
    wait_status(&redis, "waiting-2", "completed", SETTLE).await;
    let closed = wait_alert(&base, "alertType=BACKLOG_STUCK&status=CLOSED", |_| true).await;
    assert_eq!(closed["id"], stuck["id"]);
}

/// Read SSE `event:`/`data:`/`id:` records from `response` until `done`
/// holds for the records so far.
async fn read_stream(
    response: reqwest::Response,
    done: impl Fn(&[(String, Value, Option<String>)]) -> bool,
) -> Vec<(String, Value, Option<String>)> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let mut records = Vec::new();
    let mut events = response.bytes_stream().eventsource();
    let read = async {
        while let Some(event) = events.next().await {
            let event = event.expect("a well-formed event");
            let id = (!event.id.is_empty()).then(|| event.id.clone());
            records.push((
                event.event.clone(),
                serde_json::from_str(&event.data).unwrap_or(Value::Null),
                id,
            ));
            if done(&records) {
                return;
            }
        }
        panic!("the stream ended");
    };
    tokio::time::timeout(SETTLE, read)
        .await
        .expect("the awaited records in time");
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_carries_events_alerts_and_nodes_and_resumes_where_it_left() {
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |_| {});
    let base = monitor.base.clone();
    let client = citadel_transports::http::client(Duration::from_secs(60)).unwrap();
    let live = client.get(format!("{base}/v1/stream")).send().await.unwrap();
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let _node = WorkerProcess::start(&fleet_node_config(&redis, "live"));
    enqueue(&mut redis.conn(), "live-1", "trap", "{}");
    let records = read_stream(live, |records| {
        records
            .iter()
            .any(|(kind, data, _)| kind == "alert" && data["alert"]["alertType"] == "FAILURE")
            && records
                .iter()
                .any(|(kind, data, _)| kind == "node" && data["id"] == "live")
    })
    .await;
    let events: Vec<&(String, Value, Option<String>)> = records.iter().filter(|(kind, _, _)| kind == "event").collect();
    assert!(events.iter().all(|(_, _, id)| id.is_some()), "events carry their id");
    let started = events
        .iter()
        .find(|(_, data, _)| data["eventType"] == "node.started")
        .expect("node.started");
    let resume_from = started.2.clone().unwrap();

    // Reconnecting from node.started replays what followed it, in order.
    let again = client
        .get(format!("{base}/v1/stream"))
        .header("last-event-id", &resume_from)
        .send()
        .await
        .unwrap();
    let replayed = read_stream(again, |records| {
        records
            .iter()
            .any(|(kind, data, _)| kind == "event" && data["eventType"] == "job.failed")
    })
    .await;
    let ids: Vec<i64> = replayed
        .iter()
        .filter_map(|(_, _, id)| id.as_ref().map(|id| id.parse().unwrap()))
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    assert!(
        ids[0] > resume_from.parse::<i64>().unwrap(),
        "nothing before the resume point"
    );
    assert!(replayed.iter().any(|(_, data, _)| data["eventType"] == "job.started"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_client_is_told_it_lagged_and_holds_nobody_up() {
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |_| {});
    let base = monitor.base.clone();
    let client = citadel_transports::http::client(Duration::from_secs(120)).unwrap();
    // Connected, and never read until the end.
    let slow = client.get(format!("{base}/v1/stream")).send().await.unwrap();
    let fast = client.get(format!("{base}/v1/stream")).send().await.unwrap();
    let fast_reader = tokio::spawn(read_stream(fast, |records| {
        records.iter().any(|(_, data, _)| data["message"] == "last")
    }));
    // ~24 MB of events: more than the socket buffers and the live buffer hold.
    let filler = "x".repeat(4000);
    let batches = 40;
    for batch in 0..batches {
        let events: Vec<Value> = (0..150)
            .map(|index| {
                let last = batch == batches - 1 && index == 149;
                json!({"eventType": "load.test", "message": if last { "last".to_string() } else { filler.clone() }})
            })
            .collect();
        let (status, body) = post(&base, "/v1/events/batch", json!(events).to_string(), None).await;
        assert_eq!(status, 202, "{body}");
    }
    let fast = fast_reader.await.unwrap();
    let received = fast.iter().filter(|(kind, _, _)| kind == "event").count();
    assert_eq!(received, batches * 150, "the reading client got every event");
    assert!(fast.iter().all(|(kind, _, _)| kind != "lagged"));
    let slow = read_stream(slow, |records| records.iter().any(|(kind, _, _)| kind == "lagged")).await;
    let lagged = slow.iter().find(|(kind, _, _)| kind == "lagged").unwrap();
    assert!(lagged.1["skipped"].as_u64().unwrap() > 0, "{:?}", lagged.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_moved_by_a_worker_without_events_alerts_once_and_old_ones_do_not() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let dead_letter = |conn: &mut redis::Connection, job: &str| {
        // As Citadel's own (Go) worker moves a job: no fleet event.
        let payload = json!({"type": "render", "frame": 7}).to_string();
        let _: String = redis::cmd("XADD")
            .arg("dlq:v1:gpu-general")
            .arg("*")
            .arg(&[
                ("original_message_id", "1-0"),
                ("original_queue", "jobs:v1:gpu-general"),
                ("reason", "gave up after 3 attempts: boom"),
                ("moved_at", "2026-12-07T00:00:00Z"),
                ("worker_id", "go-worker-77-00af"),
                ("jobId", job),
                ("payload", payload.as_str()),
                ("attempts", "3"),
            ])
            .query(conn)
            .unwrap();
    };
    dead_letter(&mut conn, "old-1");
    let monitor = TestMonitor::start(&redis, |monitor| monitor.backlog_poll_ms = 200);
    let base = monitor.base.clone();
    // Dead letters from before the monitor started are history; a new one alerts.
    dead_letter(&mut conn, "new-1");
    let alert = wait_alert(&base, "alertType=DEAD_LETTER&status=OPEN", |_| true).await;
    assert_eq!(alert["subject"], "job:render");
    assert_eq!(alert["details"]["jobId"], "new-1", "{alert}");
    assert_eq!(alert["node"], "go-worker");
    assert_eq!(
        alerts(&base, "alertType=DEAD_LETTER").await.len(),
        1,
        "the old one did not alert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_drops_slow_headers_and_bodies_and_caps_connections_per_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |monitor| {
        monitor.api_keys = vec![READ_KEY.into()];
        monitor.header_timeout_ms = 500;
        monitor.body_timeout_ms = 500;
        monitor.connections_per_client = 4;
    });
    let addr = monitor.base.trim_start_matches("http://").to_string();

    // Headers that never finish: dropped.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\nhost: citadel\r\nx-slow: ")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, SETTLE).await.is_some(),
        "slow headers are dropped"
    );

    // A body that never finishes: cut off, answered, nothing stored.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: citadel\r\nx-api-key: {READ_KEY}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{{\"type\":"
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let answer = closed_within(&mut trickle, SETTLE)
        .await
        .expect("the trickled body is cut off");
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("not received within the designated timeout"),
        "{answer}"
    );
    let (code, events) = get(&monitor.base, "/v1/events", Some(READ_KEY)).await;
    assert_eq!(code, 200);
    assert_eq!(events["events"], json!([]), "nothing stored");

    // One client holding `connections_per_client` live streams is turned
    // away on the next; another address is not affected.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = format!("GET /v1/stream HTTP/1.1\r\nhost: citadel\r\nx-api-key: {READ_KEY}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = [0u8; 64];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        streams.push(stream);
    }
    let mut over = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = over
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: citadel\r\n\r\n")
        .await;
    assert_eq!(
        closed_within(&mut over, SETTLE).await.as_deref(),
        Some(""),
        "over the cap: closed unanswered"
    );
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(addr.parse().unwrap()).await.unwrap();
    other
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: citadel\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut other, SETTLE)
        .await
        .expect("another address is served");
    assert!(
        answer.starts_with("HTTP/1.1 "),
        "another address is answered: {answer:?}"
    );
    drop(streams.pop());
    let mut served = None;
    eventually(SETTLE, "a freed place to be taken", || {
        served = std::net::TcpStream::connect(&addr)
            .and_then(|mut stream| {
                use std::io::{Read, Write};
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                stream.write_all(b"GET /v1/health HTTP/1.1\r\nhost: citadel\r\nconnection: close\r\n\r\n")?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(text)
            })
            .ok()
            .filter(|text| text.starts_with("HTTP/1.1 "));
        served.is_some()
    })
    .await;
}

#[test]
fn any_request_with_or_without_a_key_is_answered_never_with_a_server_error() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as Cases, TestRunner};
    let redis = RedisServer::start();
    let monitor = TestMonitor::start(&redis, |monitor| {
        monitor.api_keys = vec![READ_KEY.into()];
        monitor.ingest_keys = vec![INGEST_KEY.into()];
        monitor.header_timeout_ms = 2_000;
    });
    let addr = monitor.base.trim_start_matches("http://").to_string();
    let json_body = prop_oneof![
        Just(json!({"type": "job.finished", "node": "n1", "jobType": "etl", "ok": true})),
        Just(json!([{"type": "job.finished"}, 7, null])),
        Just(json!({"events": [{"type": "x", "timestamp": "not a time"}]})),
        proptest::collection::btree_map("[a-zA-Z]{0,8}", "(\\PC){0,12}", 0..6).prop_map(|map| json!(map)),
        (0usize..300).prop_map(|depth| serde_json::from_str::<Value>(&format!(
            "{}1{}",
            "[".repeat(depth),
            "]".repeat(depth)
        ))
        .unwrap_or(Value::Null)),
    ];
    let route = prop_oneof![
        Just(("POST", "/v1/events".to_string())),
        Just(("POST", "/v1/events/batch".to_string())),
        Just(("POST", "/v1/alerts/1/close".to_string())),
        Just(("POST", "/login".to_string())),
        Just(("GET", "/v1/nodes?state=sideways&limit=-1".to_string())),
        Just(("GET", "/v1/events?since=yesterday&limit=99999999999".to_string())),
        Just(("GET", "/v1/status/jobs/%00".to_string())),
        Just(("GET", "/nodes/%3Cscript%3E".to_string())),
        "/v1/[a-z/%0-9?=&]{0,30}".prop_map(|path| ("GET", path)),
    ];
    let key = prop_oneof![
        Just(Some(READ_KEY)),
        Just(Some(INGEST_KEY)),
        Just(Some("not-a-key-at-all-000")),
        Just(None)
    ];
    // 256 cases (PROPTEST_CASES in scripts/bench: many more).
    let mut runner = TestRunner::new(Cases::default());
    runner
        .run(&(route, key, json_body), |((method, path), key, body)| {
            let body = body.to_string();
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nhost: citadel\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            if let Some(key) = key {
                request.push_str(&format!("x-api-key: {key}\r\n"));
            }
            request.push_str("\r\n");
            request.push_str(&body);
            let answer = raw_request(&addr, request.as_bytes(), false).expect("the monitor accepts connections");
            prop_assert!(answer.starts_with("HTTP/1.1 "), "{method} {path}: {answer:?}");
            prop_assert!(!answer.starts_with("HTTP/1.1 5"), "{method} {path} {body}: {answer}");
            Ok(())
        })
        .unwrap();
    let health = raw_request(
        &addr,
        b"GET /v1/health HTTP/1.1\r\nhost: citadel\r\nconnection: close\r\n\r\n",
        false,
    );
    assert!(health.is_some_and(|health| health.starts_with("HTTP/1.1 200")));
}
