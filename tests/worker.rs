//! `citadel work` against a real `redis-server` (one per test) and real
//! components: the wire format, delivery guarantees and fault handling of
//! DESIGN §3–4. Workers run in-process, or as real processes where the test
//! kills or signals them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use citadel_tests::*;
use futures_util::StreamExt;
use redis::Commands;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(20);

fn keys_of(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_streams_through_redis_in_the_citadel_wire_format() {
    let redis = RedisServer::start();
    let worker = TestWorker::start(&worker_config(&redis));
    // Subscribe before enqueueing, as producers do.
    let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe("stream:v1:job-echo").await.unwrap();
    let mut conn = redis.conn();
    let entry = enqueue_fields(
        &mut conn,
        &[
            ("jobId", "job-echo"),
            ("type", "echo"),
            ("payload", r#"{"text":"tokens flow out"}"#),
            ("rayId", "ray-42"),
        ],
    );

    let mut messages = pubsub.on_message();
    let mut live = Vec::new();
    while live.last().map(|event: &Value| event["type"] != "end").unwrap_or(true) {
        let message = tokio::time::timeout(SETTLE, messages.next())
            .await
            .expect("events arrive")
            .unwrap();
        live.push(serde_json::from_str::<Value>(&message.get_payload::<String>().unwrap()).unwrap());
    }
    let types: Vec<&str> = live.iter().map(|event| event["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["claimed", "start", "chunk", "chunk", "chunk", "end"]);

    for event in &live {
        assert_eq!(
            keys_of(event),
            ["data", "jobId", "rayId", "timestamp", "type", "version"]
        );
        assert_eq!(event["version"], "1.0");
        assert_eq!(event["jobId"], "job-echo");
        assert_eq!(event["rayId"], "ray-42");
        let stamp = event["timestamp"].as_str().unwrap();
        assert!(
            stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "RFC 3339 seconds: {stamp}"
        );
        assert_eq!(event["data"]["meta"], json!({"node_id": NODE, "node_name": NODE}));
    }
    assert_eq!(keys_of(&live[0]["data"]), ["agent_version", "meta"]);
    assert_eq!(keys_of(&live[1]["data"]), ["message", "meta"]);
    let chunks: Vec<(&str, u64)> = live[2..5]
        .iter()
        .map(|e| {
            (
                e["data"]["content"].as_str().unwrap(),
                e["data"]["index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(chunks, [("tokens", 0), ("flow", 1), ("out", 2)]);
    assert_eq!(live[5]["data"]["result"], json!({"text": "tokens flow out"}));

    // The same events were kept for replay, and the result in the status hash.
    let replayed = events(&mut conn, "job-echo");
    assert_eq!(replayed, live);
    let state = wait_status(&redis, "job-echo", "completed", SETTLE).await;
    assert_eq!(state["message_id"], entry);
    assert_eq!(
        serde_json::from_str::<Value>(&state["result"]).unwrap(),
        json!({"text": "tokens flow out"})
    );
    assert_eq!(state["worker_id"], worker.worker.consumer());
    let ttl: i64 = conn.ttl("job:job-echo:status").unwrap();
    assert!(ttl > 0, "status hash expires");
    assert_eq!(pending(&mut conn), 0, "acknowledged");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extract_runs_end_to_end() {
    let redis = RedisServer::start();
    let worker = TestWorker::start(&worker_config(&redis));
    let mut conn = redis.conn();
    let html = "<title>T</title><p>alpha beta gamma delta</p>";
    enqueue(
        &mut conn,
        "job-x",
        "extract",
        &json!({"content": html, "format": "html", "chunk_chars": 11}).to_string(),
    );
    let state = wait_status(&redis, "job-x", "completed", SETTLE).await;
    let result: Value = serde_json::from_str(&state["result"]).unwrap();
    assert_eq!(
        (result["title"].as_str(), result["word_count"].as_u64()),
        (Some("T"), Some(4))
    );
    let chunks: Vec<String> = events(&mut conn, "job-x")
        .iter()
        .filter(|event| event["type"] == "chunk")
        .map(|event| event["data"]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(chunks, ["alpha beta", "gamma delta"]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_unknown_types_and_malformed_entries_are_answered_never_fatal() {
    let redis = RedisServer::start();
    let worker = TestWorker::start(&worker_config(&redis));
    let mut conn = redis.conn();

    enqueue(&mut conn, "job-trap", "trap", "{}");
    let state = wait_status(&redis, "job-trap", "failed", SETTLE).await;
    assert_eq!(state["error_class"], "trap");
    let last = events(&mut conn, "job-trap").pop().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(keys_of(&last["data"]), ["error", "error_class", "meta", "recoverable"]);
    assert_eq!(last["data"]["recoverable"], false);
    assert!(
        last["data"]["error"]
            .as_str()
            .unwrap()
            .contains("bad-trap was asked to fail"),
        "{last}"
    );

    enqueue(&mut conn, "job-unknown", "transcode", "{}");
    wait_status(&redis, "job-unknown", "failed", SETTLE).await;
    let error = events(&mut conn, "job-unknown").pop().unwrap();
    assert_eq!(error["data"]["unsupported_job_type"], true);
    assert_eq!(error["data"]["job_type"], "transcode");
    assert_eq!(
        error["data"]["supported_types"],
        json!(["echo", "extract", "flaky", "slow", "spin", "trap"])
    );

    // Not jobs at all: dead-lettered, with an error event when there is a job id.
    let huge = format!(r#"{{"text":"{}"}}"#, "x".repeat(2 << 20));
    enqueue_fields(&mut conn, &[("type", "echo"), ("payload", "{}")]); // no jobId
    enqueue(&mut conn, "job-notjson", "echo", "{not json");
    enqueue(&mut conn, "job-huge", "echo", &huge);
    enqueue_fields(&mut conn, &[("jobId", "job-notype"), ("payload", "{}")]);
    enqueue_fields(&mut conn, &[("jobId", "job-nopayload"), ("type", "echo")]);
    eventually(SETTLE, "five dead letters", || dead_letters(&mut conn).len() == 5).await;
    let reasons: std::collections::HashMap<String, String> = dead_letters(&mut conn)
        .into_iter()
        .map(|entry| (entry["jobId"].clone(), entry["reason"].clone()))
        .collect();
    assert!(reasons[""].contains("no `jobId` field"), "{reasons:?}");
    assert!(
        reasons["job-notjson"].contains("payload is not a JSON object"),
        "{reasons:?}"
    );
    assert!(reasons["job-huge"].contains("over the node's limit"), "{reasons:?}");
    assert!(reasons["job-notype"].contains("no `type`"), "{reasons:?}");
    assert!(reasons["job-nopayload"].contains("no `payload` field"), "{reasons:?}");
    for job in ["job-notjson", "job-huge", "job-notype", "job-nopayload"] {
        assert_eq!(event_types(&mut conn, job), ["error"], "{job}");
        assert_eq!(status(&mut conn, job)["status"], "dead_lettered", "{job}");
    }

    // The worker is fine: a normal job still runs, nothing is left pending.
    enqueue(&mut conn, "job-after", "echo", r#"{"text":"still here"}"#);
    wait_status(&redis, "job-after", "completed", SETTLE).await;
    assert_eq!(pending(&mut conn), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_queue_and_run_each_job_once() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.worker.concurrency = 2;
    let first = TestWorker::start(&config);
    let second = TestWorker::start(&config);
    let mut conn = redis.conn();
    let jobs: Vec<String> = (0..24).map(|n| format!("job-share-{n}")).collect();
    for job in &jobs {
        enqueue(&mut conn, job, "slow", r#"{"ms":40,"chunks":1}"#);
    }
    for job in &jobs {
        wait_status(&redis, job, "completed", SETTLE).await;
        assert_eq!(
            event_types(&mut conn, job),
            ["claimed", "start", "chunk", "end"],
            "{job} ran once"
        );
    }
    let done = |worker: &TestWorker| {
        worker
            .worker
            .stats()
            .completed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(done(&first) + done(&second), 24);
    assert!(
        done(&first) > 0 && done(&second) > 0,
        "both workers took jobs: {} / {}",
        done(&first),
        done(&second)
    );
    assert_eq!(pending(&mut conn), 0);
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_jobs_resume_on_the_surviving_worker() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.worker.concurrency = 2;
    let ttl = Duration::from_millis(config.worker.liveness_ttl_ms);
    let mut doomed = WorkerProcess::start(&config);
    let doomed_consumer = doomed.consumer();
    let mut conn = redis.conn();
    for n in 0..2 {
        enqueue(
            &mut conn,
            &format!("job-orphan-{n}"),
            "slow",
            r#"{"ms":3000,"chunks":30}"#,
        );
    }
    for n in 0..2 {
        wait_status(&redis, &format!("job-orphan-{n}"), "running", SETTLE).await;
    }
    let survivor = TestWorker::start(&config);
    doomed.kill9();
    let killed_at = Instant::now();
    let jobs = ["job-orphan-0", "job-orphan-1"];
    let claimed = eventually_some(SETTLE, "the survivor to claim both orphaned jobs", || {
        let done = jobs
            .iter()
            .all(|job| status(&mut conn, job).get("worker_id").map(String::as_str) == Some(survivor.worker.consumer()));
        let diagnostics = (!done && killed_at.elapsed() > SETTLE / 2).then(|| reclaim_diagnostics(&mut conn));
        std::future::ready(if done { Some(None) } else { diagnostics.map(Some) })
    })
    .await;
    assert!(
        claimed.is_none(),
        "not reclaimed; health {:?}\n{}",
        survivor.worker.health(),
        claimed.unwrap()
    );
    println!(
        "orphaned jobs resumed {:?} after kill -9 (liveness TTL {ttl:?})",
        killed_at.elapsed()
    );
    for job in jobs {
        let state = wait_status(&redis, job, "completed", SETTLE).await;
        let result: Value = serde_json::from_str(&state["result"]).unwrap();
        assert_eq!(result["attempt"], 2, "second delivery");
    }
    // The dead worker's consumer, now holding nothing, is removed from the group.
    eventually(SETTLE, "the dead consumer to be forgotten", || {
        let consumers: Vec<redis::streams::StreamInfoConsumer> = conn
            .xinfo_consumers::<_, _, redis::streams::StreamInfoConsumersReply>(QUEUE, "citadel-workers")
            .unwrap()
            .consumers;
        consumers.iter().all(|consumer| consumer.name != doomed_consumer)
    })
    .await;
    assert_eq!(pending(&mut conn), 0, "no job lost, none left pending");
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_on_a_live_worker_is_never_run_twice() {
    let redis = RedisServer::start();
    let config = worker_config(&redis);
    let owner = TestWorker::start(&config);
    let mut conn = redis.conn();
    // Much longer than the liveness TTL and the reclaim idle threshold.
    enqueue(&mut conn, "job-long", "slow", r#"{"ms":6000,"chunks":6}"#);
    wait_status(&redis, "job-long", "running", SETTLE).await;
    let bystander = TestWorker::start(&config);
    let state = wait_status(&redis, "job-long", "completed", SETTLE).await;
    assert_eq!(state["worker_id"], owner.worker.consumer());
    assert_eq!(serde_json::from_str::<Value>(&state["result"]).unwrap()["attempt"], 1);
    let types = event_types(&mut conn, "job-long");
    assert_eq!(types.iter().filter(|kind| *kind == "claimed").count(), 1, "{types:?}");
    assert_eq!(types.iter().filter(|kind| *kind == "start").count(), 1, "{types:?}");
    owner.stop().await;
    bystander.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recoverable_failures_are_retried_and_poison_jobs_end_in_the_dlq() {
    let redis = RedisServer::start();
    let config = worker_config(&redis);
    let worker = TestWorker::start(&config);
    let mut conn = redis.conn();

    enqueue(&mut conn, "job-flaky", "flaky", r#"{"succeed_on_attempt":2}"#);
    let state = wait_status(&redis, "job-flaky", "completed", SETTLE).await;
    assert_eq!(
        serde_json::from_str::<Value>(&state["result"]).unwrap(),
        json!({"attempt": 2})
    );

    let entry = enqueue(&mut conn, "job-poison", "flaky", r#"{"never":true}"#);
    let state = wait_status(&redis, "job-poison", "dead_lettered", SETTLE).await;
    assert!(state["error"].contains("backend still down on attempt 3"), "{state:?}");
    let letters = dead_letters(&mut conn);
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    let mut fields: Vec<&str> = letter.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "attempts",
            "jobId",
            "moved_at",
            "original_message_id",
            "original_queue",
            "payload",
            "reason",
            "worker_id"
        ]
    );
    assert_eq!(letter["original_message_id"], entry);
    assert_eq!(letter["original_queue"], QUEUE);
    assert_eq!(letter["attempts"], config.worker.max_attempts.to_string());
    assert_eq!(letter["jobId"], "job-poison");
    assert_eq!(letter["payload"], r#"{"never":true}"#);
    assert!(letter["reason"].contains("gave up after 3 attempts") && letter["reason"].contains("backend still down"));
    let types = event_types(&mut conn, "job-poison");
    assert_eq!(
        types.iter().filter(|kind| *kind == "claimed").count(),
        3,
        "three deliveries: {types:?}"
    );
    let last = events(&mut conn, "job-poison").pop().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["data"]["dead_lettered"].as_bool()),
        (Some("error"), Some(true))
    );
    assert_eq!(pending(&mut conn), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_over_a_host_call_limit_fails_once_as_resource_limit_not_a_node_fault() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.handlers.insert("greedy".into(), guest("bad-greedy"));
    let worker = TestWorker::start(&config);
    let mut conn = redis.conn();
    for (job, payload) in [
        ("job-random", r#"{"want":"random"}"#),
        ("job-handles", r#"{"want":"handles"}"#),
    ] {
        enqueue(&mut conn, job, "greedy", payload);
        let state = wait_status(&redis, job, "failed", SETTLE).await;
        assert_eq!(state["error_class"], "resource_limit", "{job}: {state:?}");
        assert_eq!(
            event_types(&mut conn, job),
            ["claimed", "start", "error"],
            "{job} ran once: a deterministic guest fault is not retried"
        );
        let last = events(&mut conn, job).pop().unwrap();
        assert_eq!(last["data"]["recoverable"], false, "{last}");
        let error = last["data"]["error"].as_str().unwrap();
        assert!(
            error.starts_with("resource limit exceeded: the guest") && !error.contains('\n'),
            "one line naming the limit, no backtrace: {error}"
        );
    }
    assert!(dead_letters(&mut conn).is_empty());
    assert_eq!(pending(&mut conn), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_every_time_ends_in_the_dlq() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.worker.max_attempts = 2;
    config.worker.liveness_ttl_ms = 1_000;
    let mut conn = redis.conn();
    enqueue(&mut conn, "job-killer", "slow", r#"{"ms":60000}"#);
    for _ in 0..2 {
        let mut victim = WorkerProcess::start(&config);
        let consumer = victim.consumer();
        eventually(SETTLE, "the job to start on the victim", || {
            let state = status(&mut conn, "job-killer");
            state.get("status").map(String::as_str) == Some("running") && state.get("worker_id") == Some(&consumer)
        })
        .await;
        victim.kill9();
    }
    let survivor = TestWorker::start(&config);
    let state = wait_status(&redis, "job-killer", "dead_lettered", SETTLE).await;
    assert!(state["error"].contains("gave up after 2 deliveries"), "{state:?}");
    assert_eq!(dead_letters(&mut conn)[0]["attempts"], "3");
    assert_eq!(pending(&mut conn), 0);
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish_and_exits_zero() {
    let redis = RedisServer::start();
    let config = worker_config(&redis);
    let mut process = WorkerProcess::start(&config);
    let mut conn = redis.conn();
    let jobs: Vec<String> = (0..4).map(|n| format!("job-drain-{n}")).collect();
    for job in &jobs {
        enqueue(&mut conn, job, "slow", r#"{"ms":1500,"chunks":3}"#);
    }
    for job in &jobs {
        wait_status(&redis, job, "running", SETTLE).await;
    }
    enqueue(&mut conn, "job-after-sigterm", "echo", "{}");
    process.terminate();
    let exit = process.wait(SETTLE);
    assert!(exit.success(), "exit 0: {exit:?}\n{}", process.log());
    for job in &jobs {
        assert_eq!(status(&mut conn, job)["status"], "completed", "{job}");
    }
    assert_eq!(pending(&mut conn), 0, "all acknowledged");
    let liveness: Vec<String> = conn.keys("citadel:v1:consumer:*").unwrap();
    assert!(liveness.is_empty(), "liveness key retired: {liveness:?}");
    // A job that arrived while draining may have been read or not; never lost.
    let worker = TestWorker::start(&config);
    wait_status(&redis, "job-after-sigterm", "completed", SETTLE).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_still_running_after_the_grace_period_are_left_for_another_worker() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.worker.shutdown_grace_ms = 300;
    let mut process = WorkerProcess::start(&config);
    let mut conn = redis.conn();
    enqueue(&mut conn, "job-interrupted", "slow", r#"{"ms":4000,"chunks":40}"#);
    wait_status(&redis, "job-interrupted", "running", SETTLE).await;
    process.terminate();
    assert!(process.wait(SETTLE).success());
    assert_eq!(status(&mut conn, "job-interrupted")["status"], "interrupted");
    assert_eq!(pending(&mut conn), 1, "never acknowledged");
    let successor = TestWorker::start(&config);
    let state = wait_status(&redis, "job-interrupted", "completed", SETTLE).await;
    assert_eq!(state["worker_id"], successor.worker.consumer());
    assert_eq!(pending(&mut conn), 0);
    successor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_and_restart_mid_run_loses_no_job() {
    let mut redis = RedisServer::start_persistent();
    let config = worker_config(&redis);
    let worker = TestWorker::start(&config);
    let mut conn = redis.conn();
    // One long job first, so that it runs across the whole outage.
    let mut jobs = vec!["job-crash-long".to_string()];
    enqueue(&mut conn, &jobs[0], "slow", r#"{"ms":2500,"chunks":5}"#);
    jobs.extend((0..16).map(|n| format!("job-crash-{n}")));
    for job in &jobs[1..] {
        enqueue(&mut conn, job, "slow", r#"{"ms":300,"chunks":2}"#);
    }
    wait_status(&redis, &jobs[2], "completed", SETTLE).await;
    assert_eq!(
        status(&mut conn, &jobs[0])["status"],
        "running",
        "the long job spans the outage"
    );
    redis.kill();
    // Redis stays down for 800 ms (the outage itself) while jobs keep
    // running; then it comes back with its AOF.
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart();
    let mut conn = redis.conn();
    for job in &jobs {
        wait_status(&redis, job, "completed", SETTLE).await;
    }
    eventually(SETTLE, "nothing pending", || pending(&mut conn) == 0).await;
    for job in &jobs {
        let types = event_types(&mut conn, job);
        let ends = types.iter().filter(|kind| *kind == "end").count();
        assert_eq!(ends, 1, "{job} ended exactly once: {types:?}");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_mid_run_and_a_queued_one_before_it_starts() {
    let redis = RedisServer::start();
    let worker = TestWorker::start(&worker_config(&redis));
    let mut conn = redis.conn();
    enqueue(&mut conn, "job-cancel", "slow", r#"{"ms":20000,"chunks":200}"#);
    eventually(SETTLE, "the job to stream", || {
        event_types(&mut conn, "job-cancel").contains(&"chunk".to_string())
    })
    .await;
    let _: () = conn.set("job:cancelled:job-cancel", 1).unwrap();
    let flagged = Instant::now();
    wait_status(&redis, "job-cancel", "cancelled", Duration::from_secs(5)).await;
    println!("running job cancelled {:?} after its flag was set", flagged.elapsed());
    let types = event_types(&mut conn, "job-cancel");
    let chunks = types.iter().filter(|kind| *kind == "chunk").count();
    assert!(
        chunks < 200,
        "stopped mid-run, not run to its end ({chunks} of 200 chunks)"
    );
    let last = events(&mut conn, "job-cancel").pop().unwrap();
    assert_eq!(last["type"], "cancelled");
    assert_eq!(keys_of(&last["data"]), ["meta", "reason"]);

    let _: () = conn.set("job:cancelled:job-precancel", 1).unwrap();
    enqueue(&mut conn, "job-precancel", "echo", r#"{"text":"never"}"#);
    wait_status(&redis, "job-precancel", "cancelled", SETTLE).await;
    assert_eq!(event_types(&mut conn, "job-precancel"), ["claimed", "cancelled"]);
    assert_eq!(pending(&mut conn), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_for_another_node_are_acknowledged_not_run() {
    let redis = RedisServer::start();
    let worker = TestWorker::start(&worker_config(&redis));
    let mut conn = redis.conn();
    enqueue(&mut conn, "job-elsewhere", "echo", r#"{"target_node":"gpu-99"}"#);
    enqueue(&mut conn, "job-here", "echo", &json!({"target_node": NODE}).to_string());
    wait_status(&redis, "job-here", "completed", SETTLE).await;
    eventually(SETTLE, "the foreign job to be acknowledged", || pending(&mut conn) == 0).await;
    assert!(event_types(&mut conn, "job-elsewhere").is_empty());
    assert!(status(&mut conn, "job-elsewhere").is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_caps_are_never_exceeded() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    let _policy = with_policy(
        &mut config,
        "[tenants.solo]\ncapabilities = [\"stream\"]\nmax_in_flight = 1\n",
    );
    config.worker.concurrency = 3;
    let worker = TestWorker::start(&config);
    // Every event of every job, in the order they were published.
    let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
    pubsub.psubscribe("stream:v1:*").await.unwrap();
    let mut conn = redis.conn();
    let mut jobs = HashSet::new();
    for n in 0..12 {
        let (job, tenant) = (format!("job-cap-{n}"), if n % 3 == 0 { "solo" } else { "crowd" });
        enqueue(
            &mut conn,
            &job,
            "slow",
            &json!({"ms": 150, "chunks": 1, "tenant": tenant}).to_string(),
        );
        jobs.insert((job, tenant));
    }
    let mut messages = pubsub.on_message();
    let (mut running, mut peak, mut solo, mut solo_peak, mut ended) = (0i32, 0, 0i32, 0, 0);
    while ended < 12 {
        let message = tokio::time::timeout(SETTLE, messages.next())
            .await
            .expect("events")
            .unwrap();
        let event: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        let is_solo = jobs
            .iter()
            .any(|(job, tenant)| *tenant == "solo" && event["jobId"] == job.as_str());
        match event["type"].as_str().unwrap() {
            "start" => {
                running += 1;
                solo += i32::from(is_solo);
            }
            "end" | "error" => {
                running -= 1;
                solo -= i32::from(is_solo);
                ended += 1;
            }
            _ => {}
        }
        peak = peak.max(running);
        solo_peak = solo_peak.max(solo);
    }
    assert!(peak <= 3, "at most worker.concurrency jobs at once, saw {peak}");
    assert!(peak >= 2, "jobs did run concurrently (peak {peak})");
    assert_eq!(solo_peak, 1, "tenant `solo` (max_in_flight = 1) never ran two at once");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follow_prints_the_jobs_events() {
    let redis = RedisServer::start();
    let worker = TestWorker::start(&worker_config(&redis));
    let run = |args: &[&str]| {
        let url = redis.url();
        let mut command = tokio::process::Command::new(citadel_bin());
        command
            .args(["submit", "--redis-url", &url, "--wait-ms", "20000"])
            .args(args)
            .env_remove("CITADEL_CONFIG");
        command.output()
    };
    let out = run(&["--type", "echo", "--payload", r#"{"text":"a b"}"#, "--follow"])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("chunk 0: a\nchunk 1: b\nresult: {"), "{stdout}");

    let out = run(&["--type", "nope", "--follow", "--json", "--job-id", "job-nope"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["data"]["unsupported_job_type"], true);

    let out = run(&["--type", "echo", "--payload", "[1,2]"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_job_delivered_again_is_acknowledged_not_rerun() {
    let redis = RedisServer::start();
    let config = worker_config(&redis);
    let mut conn = redis.conn();
    // A consumer that read the entry and died between recording the result
    // and acknowledging it (the settle transaction makes this rare; a crashed
    // Redis without fsync can still produce it).
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(QUEUE)
        .arg("citadel-workers")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut conn)
        .unwrap();
    let entry = enqueue(&mut conn, "job-done", "echo", r#"{"text":"once"}"#);
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("citadel-workers")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(QUEUE)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    let _: () = conn
        .hset_multiple(
            "job:job-done:status",
            &[
                ("status", "completed"),
                ("message_id", entry.as_str()),
                ("result", "{}"),
            ],
        )
        .unwrap();
    let worker = TestWorker::start(&config);
    eventually(SETTLE, "the redelivered entry to be acknowledged", || {
        pending(&mut conn) == 0
    })
    .await;
    assert!(
        event_types(&mut conn, "job-done").is_empty(),
        "not run again, nothing published"
    );
    assert_eq!(
        status(&mut conn, "job-done")["result"],
        "{}",
        "the recorded result is kept"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_workers_job_is_taken_over_after_the_backstop() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.worker.abandon_after_ms = 3_000;
    let wedged = TestWorker::start(&config);
    let mut conn = redis.conn();
    // Alive (its liveness key stays fresh) but not finishing.
    enqueue(&mut conn, "job-stuck", "slow", r#"{"ms":60000,"chunks":600}"#);
    wait_status(&redis, "job-stuck", "running", SETTLE).await;
    let rescuer = TestWorker::start(&config);
    eventually(SETTLE, "the backstop to hand the job to the rescuer", || {
        status(&mut conn, "job-stuck").get("worker_id").map(String::as_str) == Some(rescuer.worker.consumer())
    })
    .await;
    let claims = event_types(&mut conn, "job-stuck")
        .iter()
        .filter(|kind| *kind == "claimed")
        .count();
    assert_eq!(claims, 2, "claimed again by the rescuer");
    let _: () = conn.set("job:cancelled:job-stuck", 1).unwrap();
    wait_status(&redis, "job-stuck", "cancelled", SETTLE).await;
    wedged.stop().await;
    rescuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_groups_fan_out_and_the_targeted_node_runs_the_job() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.worker.group_mode = citadel_runtime::config::GroupMode::PerNode;
    let mut other = config.clone();
    other.node.id = Some("gpu-b".into());
    let here = TestWorker::start(&config);
    let there = TestWorker::start(&other);
    let mut conn = redis.conn();
    enqueue(
        &mut conn,
        "job-for-b",
        "echo",
        r#"{"target_node":"gpu-b","text":"hi b"}"#,
    );
    let state = wait_status(&redis, "job-for-b", "completed", SETTLE).await;
    assert_eq!(state["worker_id"], there.worker.consumer());
    // Both nodes' groups saw the entry; each acknowledged it.
    for group in [format!("citadel-workers-{NODE}"), "citadel-workers-gpu-b".to_string()] {
        eventually(SETTLE, &format!("group {group} to acknowledge"), || {
            let summary: redis::streams::StreamPendingReply = conn.xpending(QUEUE, &group).unwrap();
            summary.count() == 0
        })
        .await;
    }
    assert_eq!(
        event_types(&mut conn, "job-for-b")
            .iter()
            .filter(|kind| *kind == "claimed")
            .count(),
        1
    );
    here.stop().await;
    there.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_leaves_the_backlog_in_redis() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.worker.concurrency = 2;
    let worker = TestWorker::start(&config);
    let mut conn = redis.conn();
    let jobs: Vec<String> = (0..8).map(|n| format!("job-backlog-{n}")).collect();
    for job in &jobs {
        enqueue(&mut conn, job, "slow", r#"{"ms":300,"chunks":3}"#);
    }
    wait_status(&redis, &jobs[0], "running", SETTLE).await;
    // Until the backlog is done, the node never holds more entries than it
    // has slots: the rest wait in Redis, where another node could take them.
    let mut most_held = 0;
    eventually(SETTLE, "the backlog to drain", || {
        most_held = most_held.max(pending(&mut conn));
        jobs.iter()
            .all(|job| status(&mut conn, job).get("status").map(String::as_str) == Some("completed"))
    })
    .await;
    assert_eq!(
        most_held, 2,
        "at most worker.concurrency entries held, and the node used both slots"
    );
    worker.stop().await;
}
