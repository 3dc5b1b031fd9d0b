//! `citadel agent` against a **fake** of Citadel's Nexus API (a real HTTP
//! server on loopback; the real API is remote): jobs polled, run through the
//! real components and reported; a failing report endpoint retried until it
//! takes the outcome, the job run once; an outcome not yet reported when
//! the node is killed reported after it starts again.

use std::path::Path;
use std::time::Duration;

use citadel_runtime::Config;
use citadel_tests::{
    FakeNexus, RedisServer, WorkerProcess, enqueue, eventually, eventually_some, guest, node_status, pending, status,
    wait_status, worker_config,
};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(30);
const TOKEN: &str = "s3cret-token";

fn agent_config(nexus: &FakeNexus, state: &Path) -> Config {
    let mut config = Config::default();
    config.node.id = Some("onprem-1".into());
    config.node.state_dir = Some(state.to_path_buf());
    config.agent.nexus_url = Some(nexus.url());
    config.agent.token = Some(TOKEN.into());
    config.agent.poll_interval_ms = 50;
    config.worker.config_queue = String::new();
    config.telemetry.status_addr = "127.0.0.1:0".parse().unwrap();
    config.telemetry.http_endpoint = None;
    for (job_type, name) in [("echo", "echo"), ("trap", "bad-trap")] {
        config.handlers.insert(job_type.into(), guest(name));
    }
    config
}

async fn reports(nexus: &FakeNexus, count: usize) -> Vec<(String, Value)> {
    eventually_some(SETTLE, &format!("{count} reports"), || async {
        let reports = nexus.reports();
        (reports.len() >= count).then_some(reports)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_polls_runs_and_reports() {
    let nexus = FakeNexus::start(Some(TOKEN)).await;
    let state = tempfile::tempdir().unwrap();
    nexus.push(json!({"id": "n-echo", "type": "echo", "payload": {"text": "hello nexus"}}));
    nexus.push(json!({"jobId": "n-trap", "payload": "{\"type\":\"trap\"}"}));
    nexus.push(json!({"id": "n-unknown", "type": "transcode", "payload": {}}));
    let node = WorkerProcess::start_agent(&agent_config(&nexus, state.path()));

    let mut reports = reports(&nexus, 3).await;
    reports.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(reports[0].0, "n-echo");
    assert_eq!(
        reports[0].1,
        json!({"status": "SUCCESS", "output": {"text": "hello nexus"}})
    );
    assert_eq!(reports[1].0, "n-trap");
    assert_eq!(reports[1].1["status"], "FAILURE");
    assert!(
        reports[1].1["error"].as_str().unwrap().contains("(trap)"),
        "{}",
        reports[1].1
    );
    assert_eq!(reports[2].0, "n-unknown");
    assert_eq!(
        reports[2].1,
        json!({"status": "FAILURE", "error": "unsupported job type `transcode`; this node handles APPLY_DEVICE_CONFIG, echo, extract, extraction, llm_inference, model_download, trap"})
    );
    assert_eq!(nexus.unauthorized(), 0, "every call carried the token");
    let status = node_status(&node.status_url()).await.unwrap();
    assert_eq!(status["node"]["mode"], "nexus");
    // The jobs the agent ran are in status `worker{}` (the unsupported
    // type never ran).
    let worker = eventually_some(SETTLE, "the agent's jobs in status", || async {
        let status = node_status(&node.status_url()).await?;
        (status["worker"]["processed"] == 2).then(|| status["worker"].clone())
    })
    .await;
    assert_eq!(
        (worker["failed"].as_u64(), worker["in_flight"].as_u64()),
        (Some(1), Some(0)),
        "{worker}"
    );
    assert!(worker["last_job_consumed_at"].is_string(), "{worker}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_report_endpoint_is_retried_and_the_job_runs_once() {
    let nexus = FakeNexus::start(Some(TOKEN)).await;
    let state = tempfile::tempdir().unwrap();
    nexus.refuse_reports(3);
    nexus.push(json!({"id": "n-1", "type": "echo", "payload": {"text": "once"}}));
    let _node = WorkerProcess::start_agent(&agent_config(&nexus, state.path()));
    let reports = reports(&nexus, 1).await;
    assert_eq!(
        reports,
        [(
            "n-1".to_string(),
            json!({"status": "SUCCESS", "output": {"text": "once"}})
        )]
    );
    assert_eq!(nexus.report_attempts(), 4, "three refused, then taken");
    assert_eq!(nexus.handed_out(), ["n-1"]);
    // The node forgets an outcome once Nexus has answered its report,
    // which is just after Nexus has it.
    let kept = state.path().join("nexus-pending");
    eventually(SETTLE, "a reported outcome is not kept", || {
        std::fs::read_dir(&kept).unwrap().next().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_not_yet_reported_survives_a_killed_node() {
    let nexus = FakeNexus::start(Some(TOKEN)).await;
    let state = tempfile::tempdir().unwrap();
    nexus.refuse_reports(u64::MAX);
    nexus.push(json!({"id": "n-kept", "type": "echo", "payload": {"text": "kept"}}));
    let config = agent_config(&nexus, state.path());
    let mut node = WorkerProcess::start_agent(&config);
    eventually_some(SETTLE, "a refused report", || async {
        (nexus.report_attempts() >= 1).then_some(())
    })
    .await;
    node.kill9();
    let kept = std::fs::read_dir(state.path().join("nexus-pending")).unwrap().count();
    assert_eq!(kept, 1, "the outcome is on disk");

    nexus.refuse_reports(0);
    let node = WorkerProcess::start_agent(&config);
    let reports = reports(&nexus, 1).await;
    assert_eq!(
        reports,
        [(
            "n-kept".to_string(),
            json!({"status": "SUCCESS", "output": {"text": "kept"}})
        )]
    );
    assert_eq!(nexus.handed_out(), ["n-kept"], "the job was not taken (or run) again");
    assert!(node.log().contains("reporting an outcome an earlier run could not"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_node_takes_nexus_jobs_while_redis_is_down_and_each_job_once() {
    let mut redis = RedisServer::start_persistent();
    let nexus = FakeNexus::start(Some(TOKEN)).await;
    let state = tempfile::tempdir().unwrap();
    let mut config = worker_config(&redis);
    config.node.state_dir = Some(state.path().to_path_buf());
    config.agent.nexus_url = Some(nexus.url());
    config.agent.token = Some(TOKEN.into());
    config.agent.poll_interval_ms = 50;
    let node = WorkerProcess::start_agent(&config);
    let base = node.status_url();
    let mode = |wanted: &'static str| {
        let base = base.clone();
        async move {
            eventually_some(SETTLE, &format!("mode {wanted}"), || async {
                let status = node_status(&base).await?;
                (status["node"]["mode"] == wanted).then_some(())
            })
            .await
        }
    };

    // Redis answers: jobs come from Redis; Nexus only when woken.
    mode("redis").await;
    let mut conn = redis.conn();
    enqueue(&mut conn, "r-1", "echo", r#"{"text":"from redis"}"#);
    wait_status(&redis, "r-1", "completed", SETTLE).await;
    let polls_before_wake = nexus.polls();
    for n in 1..=3 {
        nexus.push(json!({"id": format!("n-{n}"), "type": "echo", "payload": {"text": "woken"}}));
    }
    // A job of Redis's own goes through while the Nexus jobs wait unasked:
    // with a poll every 50 ms, the node would have asked several times.
    enqueue(&mut conn, "r-3", "slow", r#"{"ms":300,"chunks":1}"#);
    wait_status(&redis, "r-3", "completed", SETTLE).await;
    assert_eq!(
        nexus.polls(),
        polls_before_wake,
        "while Redis answers, Nexus is asked only when the node is woken"
    );
    assert!(nexus.handed_out().is_empty());
    eventually_some(SETTLE, "a listener for the wake-up", || async {
        let listeners: u32 = redis::cmd("PUBLISH")
            .arg("wake:v1:node:test-node")
            .arg("jobs")
            .query(&mut redis.conn())
            .ok()?;
        (listeners > 0).then_some(())
    })
    .await;
    // One wake-up drains every job Nexus has.
    reports(&nexus, 3).await;
    let mut handed_out = nexus.handed_out();
    handed_out.sort();
    assert_eq!(handed_out, ["n-1", "n-2", "n-3"]);

    // Redis goes away: the node polls Nexus.
    redis.kill();
    mode("nexus").await;
    nexus.push(json!({"id": "n-4", "type": "echo", "payload": {"text": "while redis is down"}}));
    reports(&nexus, 4).await;

    // Redis is back: Redis again, and nothing was lost or done twice.
    redis.restart();
    mode("redis").await;
    let mut conn = redis.conn();
    enqueue(&mut conn, "r-2", "echo", r#"{"text":"redis again"}"#);
    wait_status(&redis, "r-2", "completed", SETTLE).await;
    assert_eq!(status(&mut conn, "r-1")["status"], "completed");
    let mut handed_out = nexus.handed_out();
    handed_out.sort();
    assert_eq!(
        handed_out,
        ["n-1", "n-2", "n-3", "n-4"],
        "each Nexus job handed out once"
    );
    let mut reported: Vec<String> = nexus.reports().into_iter().map(|(id, _)| id).collect();
    reported.sort();
    assert_eq!(reported, ["n-1", "n-2", "n-3", "n-4"], "and reported once");
    assert_eq!(pending(&mut conn), 0);
    assert!(
        node.log()
            .contains("Redis is unreachable: taking jobs from the Nexus API")
    );
    assert!(
        node.log()
            .contains("Redis answers again: taking jobs from Redis Streams")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_max_in_flight_holds_on_the_nexus_path_too() {
    let nexus = FakeNexus::start(Some(TOKEN)).await;
    let state = tempfile::tempdir().unwrap();
    let policy = state.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[tenants.solo]\ncapabilities = [\"stream\"]\nmax_in_flight = 1\n",
    )
    .unwrap();
    let mut config = agent_config(&nexus, state.path());
    config.worker.concurrency = 3;
    config.policy = Some(policy);
    config.handlers.insert("slow".into(), guest("slow"));
    let node = WorkerProcess::start_agent(&config);

    // Every job's start and finish, in order, from the node's live events.
    let client = citadel_transports::http::client(SETTLE).expect("HTTP client");
    let mut events = client
        .get(format!("{}/events", node.status_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let jobs: Vec<(String, &str)> = (0..6)
        .map(|n| (format!("n-cap-{n}"), if n % 2 == 0 { "solo" } else { "crowd" }))
        .collect();
    for (id, tenant) in &jobs {
        nexus.push(json!({"id": id, "type": "slow", "tenant": tenant, "payload": {"ms": 300, "chunks": 1}}));
    }
    let (mut running, mut peak, mut solo, mut solo_peak, mut finished) = (0i32, 0, 0i32, 0, 0);
    let mut text = String::new();
    tokio::time::timeout(SETTLE, async {
        while finished < jobs.len() {
            let chunk = events.chunk().await.unwrap().expect("the event stream ended");
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let Some(data) = block.lines().find_map(|line| line.strip_prefix("data: ")) else {
                    continue;
                };
                let event: Value = serde_json::from_str(data).unwrap();
                let is_solo = event["tenant"] == "solo";
                match event["event"].as_str() {
                    Some("started") => {
                        running += 1;
                        solo += i32::from(is_solo);
                    }
                    Some("finished") => {
                        assert_eq!(event["outcome"], "ok", "{event}");
                        running -= 1;
                        solo -= i32::from(is_solo);
                        finished += 1;
                    }
                    _ => {}
                }
                peak = peak.max(running);
                solo_peak = solo_peak.max(solo);
            }
        }
    })
    .await
    .expect("every job finished");
    assert!(peak <= 3, "at most worker.concurrency jobs at once, saw {peak}");
    assert!(peak >= 2, "jobs did run concurrently (peak {peak})");
    assert_eq!(solo_peak, 1, "tenant `solo` (max_in_flight = 1) never ran two at once");
    assert_eq!(reports(&nexus, jobs.len()).await.len(), jobs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_refused_for_good_is_dropped_not_retried() {
    let nexus = FakeNexus::start(Some(TOKEN)).await;
    let state = tempfile::tempdir().unwrap();
    nexus.reject_reports(1);
    nexus.push(json!({"id": "n-refused", "type": "echo", "payload": {"text": "refused"}}));
    let node = WorkerProcess::start_agent(&agent_config(&nexus, state.path()));
    eventually_some(SETTLE, "the report refused", || async {
        (nexus.report_attempts() >= 1).then_some(())
    })
    .await;
    // The next job's report is taken: by then the refused one was not tried again.
    nexus.push(json!({"id": "n-next", "type": "echo", "payload": {"text": "next"}}));
    let reports = reports(&nexus, 1).await;
    assert_eq!(reports[0].0, "n-next");
    assert_eq!(
        nexus.report_attempts(),
        2,
        "the refused report was dropped, not retried"
    );
    assert!(
        std::fs::read_dir(state.path().join("nexus-pending"))
            .unwrap()
            .next()
            .is_none(),
        "nothing kept to report again"
    );
    assert!(node.log().contains("n-refused"), "the drop is logged: {}", node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_running_at_sigterm_is_interrupted_and_not_reported() {
    let nexus = FakeNexus::start(Some(TOKEN)).await;
    let state = tempfile::tempdir().unwrap();
    let mut config = agent_config(&nexus, state.path());
    config.worker.shutdown_grace_ms = 300;
    config.handlers.insert("slow".into(), guest("slow"));
    nexus.push(json!({"id": "n-long", "type": "slow", "payload": {"ms": 60000, "chunks": 60}}));
    let mut node = WorkerProcess::start_agent(&config);
    let base = node.status_url();
    eventually_some(SETTLE, "the long job running", || async {
        let status = node_status(&base).await?;
        (status["worker"]["in_flight"] == 1).then_some(())
    })
    .await;
    node.terminate();
    assert!(node.wait(SETTLE).success(), "{}", node.log());
    assert_eq!(nexus.report_attempts(), 0, "not reported: the API hands it out again");
    assert!(
        std::fs::read_dir(state.path().join("nexus-pending"))
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(true),
        "and not kept to be reported later"
    );
}
