//! The fleet's events and heartbeats as a real node writes them to a real
//! Redis: a job's lifecycle (`citadel:v1:events`), the node starting and
//! stopping, a GPU running hot and cooling (a fake `nvidia-smi`: CI has no
//! GPU), handler log records, and heartbeats every `telemetry.heartbeat_ms`.

use std::collections::HashMap;
use std::time::Duration;

use citadel_runtime::config::Config;
use citadel_tests::*;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(20);
const EVENTS: &str = "citadel:v1:events";
const HEARTBEATS: &str = "citadel:v1:heartbeats";

/// Every fleet event so far: the entry's fields and its parsed `event`.
fn fleet_events(redis: &RedisServer) -> Vec<(HashMap<String, String>, Value)> {
    stream_entries(&mut redis.conn(), EVENTS)
        .into_iter()
        .map(|fields| {
            let event = serde_json::from_str(&fields["event"]).expect("event JSON");
            (fields, event)
        })
        .collect()
}

/// The first event of `event_type` (about job `run_id`, when given),
/// waited for.
async fn wait_event(redis: &RedisServer, event_type: &str, run_id: Option<&str>) -> Value {
    eventually_some(SETTLE, &format!("a {event_type} event"), || async {
        fleet_events(redis)
            .into_iter()
            .map(|(_, event)| event)
            .find(|event| event["eventType"] == event_type && run_id.is_none_or(|run_id| event["runId"] == run_id))
    })
    .await
}

fn node_config(redis: &RedisServer) -> Config {
    let mut config = worker_config(redis);
    config.telemetry.status_interval_s = 600;
    config.telemetry.min_change_interval_ms = 100;
    config.telemetry.heartbeat_ms = 200;
    config.telemetry.event_log_sample_rate = 1.0;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writes_its_jobs_lifecycle_and_its_own_to_the_event_stream() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let node = TestWorker::start_node(&node_config(&redis)).await;
    let started = wait_event(&redis, "node.started", None).await;
    assert_eq!(started["node"], NODE);
    assert_eq!(started["meta"]["mode"], "redis");
    assert_eq!(started["sourceType"], "citadel");

    enqueue(&mut conn, "ev-ok", "echo", r#"{"text":"a b"}"#);
    enqueue(&mut conn, "ev-trap", "trap", "{}");
    enqueue(&mut conn, "ev-unknown", "no_such_type", "{}");
    let job_started = wait_event(&redis, "job.started", Some("ev-ok")).await;
    let completed = wait_event(&redis, "job.completed", Some("ev-ok")).await;
    for event in [&job_started, &completed] {
        assert_eq!(event["jobName"], "echo");
        assert_eq!(event["tenant"], "default");
        assert_eq!(event["node"], NODE);
        assert_eq!(event["meta"]["attempt"], 1);
    }
    assert_eq!(completed["level"], "INFO");
    assert!(completed["meta"]["durationMs"].is_u64(), "{completed}");

    let failed = wait_event(&redis, "job.failed", Some("ev-trap")).await;
    assert_eq!(failed["level"], "ERROR");
    assert_eq!(failed["meta"]["errorClass"], "trap");
    assert_eq!(failed["meta"]["willRetry"], false);
    // The guest's panic message went to its stderr, line by line:
    // warnings, always sent.
    let panic_line = eventually_some(SETTLE, "the guest's panic message", || async {
        fleet_events(&redis).into_iter().map(|(_, event)| event).find(|event| {
            event["eventType"] == "worker.message"
                && event["runId"] == "ev-trap"
                && event["message"]
                    .as_str()
                    .unwrap()
                    .contains("bad-trap was asked to fail")
        })
    })
    .await;
    assert_eq!(panic_line["level"], "WARN");
    assert_eq!(panic_line["meta"]["source"], "stderr");

    let unsupported = wait_event(&redis, "job.failed", Some("ev-unknown")).await;
    assert_eq!(unsupported["meta"]["errorClass"], "unsupported_job_type");
    assert_eq!(unsupported["jobName"], "no_such_type");

    // The job's events are in the stream only once each.
    let events = fleet_events(&redis);
    let count = |event_type: &str, run_id: &str| {
        events
            .iter()
            .filter(|(_, event)| event["eventType"] == event_type && event["runId"] == run_id)
            .count()
    };
    assert_eq!(count("job.started", "ev-ok"), 1);
    assert_eq!(count("job.completed", "ev-ok"), 1);
    // Entry fields name the type and node without parsing the event.
    let (fields, _) = events
        .iter()
        .find(|(_, event)| event["runId"] == "ev-ok" && event["eventType"] == "job.completed")
        .unwrap();
    assert_eq!(fields["type"], "job.completed");
    assert_eq!(fields["node"], NODE);

    node.stop().await;
    let stopping = wait_event(&redis, "node.stopping", None).await;
    assert_eq!(stopping["node"], NODE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_come_every_interval_and_stop_with_the_node() {
    let redis = RedisServer::start();
    let node = TestWorker::start_node(&node_config(&redis)).await;
    let beats = eventually_some(SETTLE, "five heartbeats", || async {
        let beats = stream_entries(&mut redis.conn(), HEARTBEATS);
        (beats.len() >= 5).then_some(beats)
    })
    .await;
    for beat in &beats {
        assert_eq!(beat["node"], NODE);
        assert_eq!(beat["intervalMs"], "200");
        assert!(beat["at"].parse::<u64>().is_ok(), "{beat:?}");
        assert!(beat["inFlight"].parse::<u64>().is_ok(), "{beat:?}");
    }
    let at: Vec<u64> = beats.iter().map(|beat| beat["at"].parse().unwrap()).collect();
    assert!(at.windows(2).all(|pair| pair[0] <= pair[1]), "{at:?}");
    node.stop().await;
    let after_stop = stream_entries(&mut redis.conn(), HEARTBEATS).len();
    // Nothing beats for a stopped node (a full interval and more later).
    let later = std::time::Instant::now() + Duration::from_millis(600);
    wait_until(Duration::from_secs(2), "600 ms to pass", || {
        std::time::Instant::now() >= later
    });
    assert_eq!(stream_entries(&mut redis.conn(), HEARTBEATS).len(), after_stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_running_hot_and_cooling_is_one_event_each() {
    let smi = FakeSmi::new(60);
    let redis = RedisServer::start();
    let mut config = node_config(&redis);
    config.telemetry.nvidia_smi = smi.program().display().to_string();
    config.telemetry.status_interval_s = 1;
    config.telemetry.min_change_interval_ms = 100;
    let node = TestWorker::start_node(&config).await;
    smi.set_temperature(91);
    let hot = wait_event(&redis, "gpu.hot", None).await;
    assert_eq!(hot["level"], "WARN");
    assert_eq!(hot["meta"]["temperatureCelsius"], 91);
    assert_eq!(hot["meta"]["limitCelsius"], 85);
    assert_eq!(hot["meta"]["uuid"], "GPU-fake-0");
    smi.set_temperature(70);
    let cooled = wait_event(&redis, "gpu.cooled", None).await;
    assert_eq!(cooled["meta"]["temperatureCelsius"], 70);
    let hot_events = fleet_events(&redis)
        .iter()
        .filter(|(_, event)| event["eventType"] == "gpu.hot")
        .count();
    assert_eq!(hot_events, 1, "one event per change, not per snapshot");
    node.stop().await;
}
