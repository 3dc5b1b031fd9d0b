//! Device configuration end to end over a real Redis: `APPLY_DEVICE_CONFIG`
//! jobs on `jobs:v1:config` reach a real `citadel work` process through its
//! own consumer group, are validated, written atomically to the state
//! directory, applied (name, tags, which services run, the high-temperature
//! alert) and confirmed on the status stream; the applied configuration
//! survives a restart; malformed ones are rejected with the old
//! configuration intact.

use std::path::Path;
use std::time::Duration;

use citadel_runtime::Config;
use citadel_runtime::config::RestartPolicy;
use citadel_tests::{
    NODE, RedisServer, TestSlice, WorkerProcess, citadel_work_refusal, enqueue, events, eventually_some, free_port,
    node_status, shell_service, status, try_get, worker_config,
};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(30);
const CONFIG_QUEUE: &str = "jobs:v1:config";

fn node_config(redis: &RedisServer, slice: &TestSlice, state: &Path) -> Config {
    let mut config = worker_config(redis);
    config.node.state_dir = Some(state.to_path_buf());
    config.node.cgroup_slice = Some(slice.name().into());
    let mut oneshot = shell_service("oneshot", r#"echo ran >> "$OUT""#);
    oneshot.restart = RestartPolicy::Never;
    oneshot
        .env
        .insert("OUT".into(), state.join("oneshot.out").display().to_string());
    config.services = vec![
        shell_service("alpha", "exec sleep 600"),
        shell_service("beta", "exec sleep 600"),
        oneshot,
    ];
    config.telemetry.status_interval_s = 1;
    config.telemetry.min_change_interval_ms = 100;
    config
}

fn apply(conn: &mut redis::Connection, job_id: &str, payload: &Value) {
    let _: String = redis::cmd("XADD")
        .arg(CONFIG_QUEUE)
        .arg("*")
        .arg(&[
            ("jobId", job_id),
            ("type", "APPLY_DEVICE_CONFIG"),
            ("payload", &payload.to_string()),
        ])
        .query(conn)
        .expect("XADD");
}

/// Wait for the job's final status.
async fn settled(redis: &RedisServer, job_id: &str) -> std::collections::HashMap<String, String> {
    eventually_some(SETTLE, "the configuration job to settle", || async {
        let found = status(&mut redis.conn(), job_id);
        matches!(found.get("status").map(String::as_str), Some("completed" | "failed")).then_some(found)
    })
    .await
}

/// The `field` of service `name` in status (`absent` when it is not there).
fn service_field(status: &Value, name: &str, field: &str) -> String {
    status["services"]
        .as_array()
        .and_then(|services| services.iter().find(|service| service["name"] == name))
        .and_then(|service| service[field].as_str())
        .unwrap_or("absent")
        .to_string()
}

fn service_state(status: &Value, name: &str) -> String {
    service_field(status, name, "status")
}

/// How often the one-shot service has run.
fn runs(state: &Path) -> usize {
    std::fs::read_to_string(state.join("oneshot.out"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn device(name: &str, services: &[&str]) -> Value {
    json!({
        "deviceName": name,
        "services": services,
        "autoStartServices": true,
        "sshEnabled": false,
        "customTags": ["eu-west", "h100"],
        "healthMonitoringEnabled": true,
        "alertOnOffline": true,
        "alertOnHighTemp": false,
    })
}

#[tokio::test]
async fn device_config_is_applied_confirmed_and_kept_across_a_restart() {
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let state = tempfile::tempdir().unwrap();
    let config = node_config(&redis, &slice, state.path());
    let mut node = WorkerProcess::start(&config);
    let base = node.status_url();
    eventually_some(SETTLE, "both services running, the one-shot run", || async {
        let status = node_status(&base).await?;
        (service_state(&status, "alpha") == "running"
            && service_state(&status, "beta") == "running"
            && runs(state.path()) == 1)
            .then_some(())
    })
    .await;

    // The config arrives as a JSON string, as Citadel's API sends it.
    let mut conn = redis.conn();
    apply(
        &mut conn,
        "cfg-1",
        &json!({ "config": device("rack-4 gpu", &["beta"]).to_string() }),
    );
    let done = settled(&redis, "cfg-1").await;
    assert_eq!(done["status"], "completed", "{done:?}");
    let result: Value = serde_json::from_str(&done["result"]).unwrap();
    assert_eq!(result["status"], "configured");
    assert_eq!(
        result["services"],
        json!({"running": ["beta"], "stopped": ["alpha", "oneshot"]})
    );
    let kinds: Vec<String> = events(&mut conn, "cfg-1")
        .iter()
        .map(|event| event["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["claimed", "start", "end"]);

    // Confirmed on the status stream.
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("node:status:stream")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let confirmation = entries
        .ids
        .iter()
        .find(|entry| entry.get::<String>("status").as_deref() == Some("configured"))
        .expect("a `status configured` entry on node:status:stream");
    assert_eq!(confirmation.get::<String>("jobId").as_deref(), Some("cfg-1"));
    let payload: Value = serde_json::from_str(&confirmation.get::<String>("payload").unwrap()).unwrap();
    assert_eq!(payload["status"]["node"]["name"], "rack-4 gpu");
    assert_eq!(payload["status"]["node"]["tags"], json!(["eu-west", "h100"]));
    assert_eq!(payload["status"]["node"]["device_config"]["alertOnOffline"], true);

    // Applied: alpha stops, beta runs; written to the state directory.
    eventually_some(SETTLE, "alpha stopped by the configuration", || async {
        let status = node_status(&base).await?;
        (service_state(&status, "alpha") == "stopped" && service_state(&status, "beta") == "running").then_some(())
    })
    .await;
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(state.path().join("device-config.json")).unwrap()).unwrap();
    assert_eq!(written["deviceName"], "rack-4 gpu");
    assert!(node.log().contains("device configuration applied"));
    // Job events carry the new name at once.
    enqueue(&mut conn, "after-rename", "echo", r#"{"text":"hi"}"#);
    assert_eq!(settled(&redis, "after-rename").await["status"], "completed");
    for event in events(&mut conn, "after-rename") {
        assert_eq!(event["data"]["meta"]["node_name"], "rack-4 gpu", "{event}");
    }

    // Listing a service runs it, also when it exited by itself since (its
    // policy does not restart it) while still listed.
    for (job, expected_runs) in [("cfg-2", 2), ("cfg-3", 3)] {
        apply(
            &mut conn,
            job,
            &json!({ "config": device("rack-4 gpu", &["beta", "oneshot"]) }),
        );
        assert_eq!(settled(&redis, job).await["status"], "completed");
        eventually_some(SETTLE, "the one-shot service run again", || async {
            (runs(state.path()) == expected_runs).then_some(())
        })
        .await;
    }

    // Restarted, the node comes back configured.
    node.terminate();
    assert!(node.wait(SETTLE).success(), "{}", node.log());
    let node = WorkerProcess::start(&config);
    let base = node.status_url();
    let status = eventually_some(SETTLE, "the restarted node running beta", || async {
        let status = node_status(&base).await?;
        (service_state(&status, "beta") == "running").then_some(status)
    })
    .await;
    assert_eq!(status["node"]["name"], "rack-4 gpu");
    assert_eq!(status["node"]["tags"], json!(["eu-west", "h100"]));
    assert_eq!(service_state(&status, "alpha"), "stopped");
}

#[tokio::test]
async fn malformed_device_config_is_rejected_and_the_old_one_kept() {
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let state = tempfile::tempdir().unwrap();
    let config = node_config(&redis, &slice, state.path());
    let node = WorkerProcess::start(&config);
    let base = node.status_url();
    let mut conn = redis.conn();
    apply(
        &mut conn,
        "good",
        &json!({ "config": device("first", &["alpha", "beta"]) }),
    );
    assert_eq!(settled(&redis, "good").await["status"], "completed");
    let file = state.path().join("device-config.json");
    let applied = std::fs::read_to_string(&file).unwrap();

    for (job, payload, expected) in [
        (
            "no-config",
            json!({"deviceName": "x"}),
            "the payload has no `config` object",
        ),
        ("bad-json", json!({"config": "{not json"}), "invalid device config"),
        (
            "no-name",
            json!({"config": {"services": []}}),
            "missing field `deviceName`",
        ),
        (
            "unknown-service",
            json!({"config": device("second", &["gamma"])}),
            "services: gamma not configured on this node (it has: alpha, beta, oneshot)",
        ),
        (
            "blank-name",
            json!({"config": device("  ", &[])}),
            "deviceName \"  \" must be",
        ),
    ] {
        apply(&mut conn, job, &payload);
        let done = settled(&redis, job).await;
        assert_eq!(done["status"], "failed", "{job}: {done:?}");
        assert!(done["error"].contains(expected), "{job}: {}", done["error"]);
        let error = events(&mut conn, job)
            .into_iter()
            .find(|event| event["type"] == "error")
            .unwrap_or_else(|| panic!("{job}: no error event"));
        assert_eq!(error["data"]["recoverable"], false, "{job}");
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        applied,
        "a rejected config changed the file"
    );
    let status = node_status(&base).await.unwrap();
    assert_eq!(status["node"]["name"], "first");
    assert_eq!(service_state(&status, "alpha"), "running");
    drop(node);

    // A damaged file stops the node with what to do about it.
    std::fs::write(&file, "{damaged").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("citadel.toml");
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    let (code, stderr) = citadel_work_refusal(&config_file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("device-config.json is damaged") && stderr.contains("device-config.prev.json"),
        "{stderr}"
    );
}

#[tokio::test]
async fn alert_on_high_temp_turns_health_red_while_a_gpu_is_hot() {
    // A fake nvidia-smi (CI has no GPU): one H100 at 91 °C.
    let dir = tempfile::tempdir().unwrap();
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, GPU-fake-0, 1024, 81559, 10, 5, 91, 120.5, 1980, 1980, 2619, 580.159.04'\n",
    )
    .unwrap();
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let state = tempfile::tempdir().unwrap();
    let mut config = node_config(&redis, &slice, state.path());
    config.services.clear();
    config.telemetry.nvidia_smi = smi.display().to_string();
    let node = WorkerProcess::start(&config);
    let base = node.status_url();
    let health = format!("{base}/health");
    eventually_some(SETTLE, "healthy while the alert is off", || async {
        try_get(&health).await.filter(|(code, _)| *code == 200)
    })
    .await;
    let mut hot = device("hot", &[]);
    hot["alertOnHighTemp"] = json!(true);
    apply(&mut redis.conn(), "alert", &json!({ "config": hot }));
    assert_eq!(settled(&redis, "alert").await["status"], "completed");
    let (_, body) = eventually_some(SETTLE, "503 naming the hot GPU", || async {
        try_get(&health).await.filter(|(code, _)| *code == 503)
    })
    .await;
    assert!(
        body.contains("gpu 0: 91 °C, at or above 85 °C (alertOnHighTemp; telemetry.high_temp_celsius)"),
        "{body}"
    );
}

#[tokio::test]
async fn configs_for_other_nodes_are_skipped_a_joining_node_replays_none_and_health_checks_can_be_off() {
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = node_config(&redis, &slice, state.path());
    let mut web = shell_service("web", &format!("exec python3 -m http.server {port} --bind 127.0.0.1"));
    web.port = Some(port);
    web.health_path = Some("/".into());
    config.services = vec![web];
    let node = WorkerProcess::start(&config);
    let base = node.status_url();
    eventually_some(SETTLE, "the web service healthy", || async {
        let status = node_status(&base).await?;
        (service_field(&status, "web", "health") == "ok").then_some(())
    })
    .await;
    let mut conn = redis.conn();

    // A config for another node is acknowledged and not applied; the next
    // one, read after it, is.
    let other = device("not this node", &["web"]);
    apply(
        &mut conn,
        "cfg-other",
        &json!({ "config": other, "target_node": "another-node" }),
    );
    let mut off = device("health off", &["web"]);
    off["healthMonitoringEnabled"] = json!(false);
    apply(&mut conn, "cfg-mine", &json!({ "config": off, "target_node": NODE }));
    assert_eq!(settled(&redis, "cfg-mine").await["status"], "completed");
    assert!(status(&mut conn, "cfg-other").is_empty(), "nobody here ran it");
    let status_now = eventually_some(SETTLE, "health unknown once monitoring is off", || async {
        let status = node_status(&base).await?;
        (service_field(&status, "web", "health") == "unknown").then_some(status)
    })
    .await;
    assert_eq!(status_now["node"]["name"], "health off", "never `not this node`");
    assert_eq!(
        service_state(&status_now, "web"),
        "running",
        "not probed, still running"
    );
    let group = format!("citadel-config-{NODE}");
    let held: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(CONFIG_QUEUE)
        .arg(&group)
        .query(&mut conn)
        .unwrap();
    assert_eq!(held.count(), 0, "both acknowledged");

    // A config for every node, then a node joins: it does not replay it.
    apply(&mut conn, "cfg-all", &json!({ "config": device("everyone", &[]) }));
    assert_eq!(settled(&redis, "cfg-all").await["status"], "completed");
    let late_state = tempfile::tempdir().unwrap();
    let mut late = node_config(&redis, &slice, late_state.path());
    late.node.id = Some("late-node".into());
    late.services.clear();
    let late_node = WorkerProcess::start(&late);
    let late_base = late_node.status_url();
    eventually_some(SETTLE, "the late node's first status", || async {
        node_status(&late_base).await
    })
    .await;
    // The next config for every node reaches it (so its reader is at the
    // queue's end), and is the first it applies.
    apply(
        &mut conn,
        "cfg-after",
        &json!({ "config": device("after the join", &[]) }),
    );
    eventually_some(
        SETTLE,
        "the late node to apply the config sent after it joined",
        || async {
            let status = node_status(&late_base).await?;
            (status["node"]["name"] == "after the join").then_some(())
        },
    )
    .await;
    assert_eq!(
        late_node.log().matches("device configuration applied").count(),
        1,
        "only the config sent after it joined: {}",
        late_node.log()
    );
    assert!(
        !late_state.path().join("device-config.prev.json").exists(),
        "no earlier config was ever written"
    );
}
