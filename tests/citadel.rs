//! Coming from Citadel: what Citadel's own users run works unchanged. A
//! Citadel-style Python producer (redis-py: `XADD` with `backend`, `rayId`,
//! `enqueuedAt`, `SUBSCRIBE stream:v1:{jobId}`) against a real `citadel
//! work` with no handler mapping gets real tokens from the llama.cpp engine
//! for every `backend` the node serves, a clear refusal for one it does
//! not, and `extraction` results; `CITADEL_DEVICE_CODE` is read and carried
//! as `deviceCode` on the status stream; `citadel init` completes the
//! device authorization against a **fake** of the control plane (the real
//! one is remote) and `citadel up` brings the node's services up, then
//! takes a job from a **fake** Nexus API with the credential `init` stored.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use citadel_runtime::Config;
use citadel_runtime::config::{EngineSettings, RestartPolicy};
use citadel_tests::{
    ACCESS_TOKEN, CitadelProducer, DEVICE_CODE, FakeControlPlane, FakeNexus, LlmEngine, NODE, RedisServer, TestSlice,
    TokenAnswer, USER_CODE, WorkerProcess, citadel_bin, eventually_some, free_port, node_status, shell_service,
    stream_entries, with_policy, worker_config,
};
use citadel_transports::engines::{Backend, EngineKind};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(60);

/// Citadel's tenants have no policy of their own here: the default tenant
/// may run the test model.
const POLICY: &str = r#"
[tenants.default]
capabilities = ["log", "stream", "inference"]
inference.models = ["smollm2"]
"#;

/// The final event of a producer's run.
fn last(events: &[Value]) -> &Value {
    events.last().expect("at least one event")
}

/// The streamed text of a producer's run.
fn streamed(events: &[Value]) -> String {
    events
        .iter()
        .filter(|event| event["type"] == "chunk")
        .map(|event| event["data"]["content"].as_str().unwrap())
        .collect()
}

/// The status stream's entries, as field maps, oldest first.
fn status_entries(conn: &mut redis::Connection) -> Vec<HashMap<String, String>> {
    stream_entries(conn, "node:status:stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citadel_producer_gets_tokens_for_every_backend_the_node_serves() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    let _policy = with_policy(&mut config, POLICY);
    // No [handlers] at all: Citadel's job types are built in.
    config.handlers.clear();
    config.telemetry.status_interval_s = 1;
    config.telemetry.min_change_interval_ms = 100;
    // The engine is called `local`; Citadel sends the kind, `llamacpp`.
    config.engines = vec![EngineSettings {
        name: "local".into(),
        kind: EngineKind::OpenAi,
        backend: Some(Backend::Llamacpp),
        base_url: LlmEngine::shared().url(),
        models: vec!["smollm2".into()],
        max_concurrency: 2,
        timeout_ms: 60_000,
    }];
    let mut node = WorkerProcess::start_with_env(
        &config,
        "work",
        &[("CITADEL_DEVICE_CODE", "dev-code-42"), ("CITADEL_NOT_A_SETTING", "1")],
    );
    let producer = CitadelProducer::new();
    let url = redis.url();

    let chat = |backend: Option<&str>| {
        let mut payload = json!({
            "model": "smollm2", "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8, "temperature": 0, "stream": true
        });
        if let Some(backend) = backend {
            payload["backend"] = backend.into();
        }
        payload
    };
    let mut contents = Vec::new();
    for backend in [Some("llamacpp"), Some("auto"), None] {
        let events = producer.run(&url, "llm_inference", &chat(backend)).await;
        let end = last(&events);
        assert_eq!(end["type"], "end", "backend {backend:?}: {events:?}\n{}", node.log());
        let types: Vec<&str> = events.iter().map(|event| event["type"].as_str().unwrap()).collect();
        assert_eq!(&types[..2], ["claimed", "start"], "{types:?}");
        assert!(types.iter().filter(|kind| **kind == "chunk").count() >= 1, "{types:?}");
        assert_eq!(end["data"]["result"]["content"], streamed(&events), "tokens as chunks");
        assert!(
            events
                .iter()
                .all(|event| event["rayId"].as_str().is_some_and(|ray| ray.starts_with("ray-"))),
            "rayId travels with every event"
        );
        contents.push(end["data"]["result"]["content"].as_str().unwrap().to_string());
    }
    assert!(
        contents.iter().all(|content| *content == contents[0]),
        "the same engine, deterministic: {contents:?}"
    );

    // A backend this node does not serve: refused, saying what it serves.
    let events = producer.run(&url, "llm_inference", &chat(Some("vllm"))).await;
    let error = last(&events);
    assert_eq!(error["type"], "error", "{events:?}");
    assert_eq!(error["data"]["recoverable"], false);
    assert_eq!(
        error["data"]["error"],
        "handler returned denied: this node serves no `vllm` engine; it has engine `local` (llamacpp: smollm2)"
    );

    // Document extraction, by Citadel's name and without a mapping.
    let page =
        json!({"content": "<title>Quarterly</title><p>Revenue rose <a href=\"/q3\">again</a>.</p>", "format": "html"});
    let events = producer.run(&url, "extraction", &page).await;
    let end = last(&events);
    assert_eq!(end["type"], "end", "{events:?}");
    assert_eq!(end["data"]["result"]["title"], "Quarterly");
    assert_eq!(
        end["data"]["result"]["links"],
        json!([{"href": "/q3", "text": "again"}])
    );

    // CITADEL_DEVICE_CODE is Citadel's variable: read, and carried on every
    // status entry; an unknown CITADEL_ variable is only a warning.
    let mut conn = redis.conn();
    let entries = status_entries(&mut conn);
    assert!(!entries.is_empty());
    for entry in &entries {
        assert_eq!(entry["nodeId"], NODE);
        assert_eq!(entry["status"], "online");
        assert_eq!(entry["deviceCode"], "dev-code-42");
        let message: Value = serde_json::from_str(&entry["payload"]).unwrap();
        assert_eq!(message["deviceCode"], "dev-code-42");
    }
    let log = node.log();
    assert!(
        log.contains("CITADEL_NOT_A_SETTING") && log.contains("ignoring a CITADEL_ environment variable"),
        "{log}"
    );

    // A clean stop is the last entry: `status stopping`.
    node.terminate();
    assert!(node.wait(SETTLE).success());
    let entries = status_entries(&mut conn);
    assert_eq!(entries.last().unwrap()["status"], "stopping", "{entries:?}");
}

/// `citadel --config <file> init …`: exit code, stdout, stderr.
async fn init(config_file: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(citadel_bin())
        .arg("--config")
        .arg(config_file)
        .arg("init")
        .args(extra)
        .env_remove("CITADEL_CONFIG")
        .output()
        .await
        .expect("run citadel init");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_config(config: &Config, dir: &Path) -> std::path::PathBuf {
    let file = dir.join("citadel.toml");
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    file
}

/// An on-prem node: its state in `state`, services in `slice`, the control
/// plane and Nexus API given.
fn onprem_config(state: &Path, slice: &TestSlice, control_plane: &str, nexus: &str) -> Config {
    let mut config = Config::default();
    config.node.id = Some("onprem-7".into());
    config.node.state_dir = Some(state.to_path_buf());
    config.node.cgroup_slice = Some(slice.name().into());
    config.auth.url = Some(control_plane.into());
    config.agent.nexus_url = Some(nexus.into());
    config.agent.poll_interval_ms = 100;
    config.worker.config_queue = String::new();
    config.telemetry.status_addr = "127.0.0.1:0".parse().unwrap();
    config.telemetry.spool_dir = Some(state.to_path_buf());
    config.telemetry.service_poll_ms = 200;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_authorizes_the_node_and_up_brings_it_into_service() {
    let control_plane =
        FakeControlPlane::start(1, &[TokenAnswer::Pending, TokenAnswer::SlowDown, TokenAnswer::Grant]).await;
    let nexus = FakeNexus::start(Some(ACCESS_TOKEN)).await;
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut config = onprem_config(&state, &slice, &control_plane.url(), &nexus.url());
    let port = free_port();
    let mut web = shell_service(
        "web",
        &format!("sleep 0.5; exec python3 -m http.server {port} --bind 127.0.0.1"),
    );
    web.port = Some(port);
    web.health_path = Some("/".into());
    config.services = vec![web];
    let file = write_config(&config, dir.path());

    // citadel init: the code shown, approval polled for, the credential kept,
    // the first status on the status stream with the device code.
    let (code, stdout, stderr) = init(&file, &["--redis-url", &redis.url()]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "To add this node, open http://citadel.example/device and enter the code {USER_CODE} (it expires in 15 min)."
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "citadel-device-authorization user_code={USER_CODE} verification_uri=http://citadel.example/device \
             expires_in=900 verification_uri_complete=http://citadel.example/device?user_code={USER_CODE}"
        )),
        "one line a script can parse: {stdout}"
    );
    assert!(stdout.contains("asking every 6 s"), "slow_down was honoured: {stdout}");
    let requests = control_plane.code_requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].contains(&("client_id".into(), "citadel".into())),
        "{requests:?}"
    );
    let polls = control_plane.polls();
    assert_eq!(polls.len(), 3, "pending, slow_down, granted");
    for poll in &polls {
        for field in [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", DEVICE_CODE),
            ("client_id", "citadel"),
        ] {
            assert!(poll.form.contains(&(field.0.into(), field.1.into())), "{:?}", poll.form);
        }
    }
    let gap = |n: usize| polls[n].at.duration_since(polls[n - 1].at);
    assert!(gap(1) >= Duration::from_millis(950), "the interval: {:?}", gap(1));
    assert!(
        gap(2) >= Duration::from_millis(5_950),
        "5 s slower after slow_down: {:?}",
        gap(2)
    );
    let credential_file = state.join("credential.json");
    let credential: Value = serde_json::from_str(&std::fs::read_to_string(&credential_file).unwrap()).unwrap();
    assert_eq!(credential["access_token"], ACCESS_TOKEN);
    assert_eq!(credential["device_code"], DEVICE_CODE);
    assert_eq!(credential["node_id"], "onprem-7");
    let mode = std::fs::metadata(&credential_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let entries = status_entries(&mut redis.conn());
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (
            entries[0]["nodeId"].as_str(),
            entries[0]["status"].as_str(),
            entries[0]["deviceCode"].as_str()
        ),
        ("onprem-7", "online", DEVICE_CODE)
    );
    // Run again: nothing to authorize, nothing lost.
    let (code, stdout, _) = init(&file, &[]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("already has a credential"), "{stdout}");
    assert_eq!(control_plane.polls().len(), 3);

    // citadel up: the service first (a line as it starts and as it is
    // healthy), then a job from Nexus with the credential's token.
    nexus.push(json!({"id": "n-doc", "type": "extraction", "payload": {"content": "# Notes\n\nSee [x](/x).", "format": "markdown"}}));
    let mut node = WorkerProcess::start_with_env(&config, "up", &[]);
    let report = eventually_some(SETTLE, "the Nexus job's report", || async {
        nexus.reports().into_iter().find(|(id, _)| id == "n-doc")
    })
    .await;
    assert_eq!(report.1["status"], "SUCCESS", "{report:?}\n{}", node.log());
    assert_eq!(report.1["output"]["title"], "Notes");
    assert_eq!(
        nexus.unauthorized(),
        0,
        "the credential's token authenticates the agent"
    );
    // Device configuration is a built-in job type from Nexus too.
    nexus.push(json!({"id": "n-config", "type": "APPLY_DEVICE_CONFIG",
        "payload": {"config": {"deviceName": "rack 4, gpu 7", "services": ["web"], "customTags": ["eu"]}}}));
    let report = eventually_some(SETTLE, "the configuration's report", || async {
        nexus.reports().into_iter().find(|(id, _)| id == "n-config")
    })
    .await;
    assert_eq!(report.1["status"], "SUCCESS", "{report:?}");
    assert_eq!(report.1["output"]["status"], "configured");
    let base = node.status_url();
    eventually_some(SETTLE, "the new name in status", || async {
        let status = node_status(&base).await?;
        (status["node"]["name"] == "rack 4, gpu 7").then_some(())
    })
    .await;
    let stdout = node.stdout();
    let started = stdout.find("starting 1 service(s): web").expect(&stdout);
    let healthy = stdout.find("service web: healthy after").expect(&stdout);
    let all_up = stdout.find("all services up in").expect(&stdout);
    assert!(started < healthy && healthy < all_up, "{stdout}");
    let log = node.log();
    let ready = log.find("agent ready").expect(&log);
    assert!(
        log.find("service started").is_some_and(|at| at < ready),
        "jobs only once the services are up: {log}"
    );
    node.terminate();
    assert!(node.wait(SETTLE).success(), "{}", node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_stores_nothing_when_refused_or_expired() {
    let slice = TestSlice::new();
    for (answers, expected) in [
        (
            &[TokenAnswer::Denied][..],
            "the request was refused at the verification page (access_denied)",
        ),
        (
            &[TokenAnswer::Pending, TokenAnswer::Expired][..],
            "the code expired before it was approved (expired_token)",
        ),
    ] {
        let control_plane = FakeControlPlane::start(1, answers).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = onprem_config(&state, &slice, &control_plane.url(), "http://127.0.0.1:9");
        let (code, stdout, stderr) = init(&write_config(&config, dir.path()), &[]).await;
        assert_eq!(code, Some(1), "{stdout}\n{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!state.join("credential.json").exists());
    }
    // No control plane configured: told how to give one.
    let dir = tempfile::tempdir().unwrap();
    let mut config = onprem_config(dir.path(), &slice, "http://x", "http://127.0.0.1:9");
    config.auth.url = None;
    let (code, _, stderr) = init(&write_config(&config, dir.path()), &[]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("give --auth-url or set auth.url"), "{stderr}");
    // A damaged credential: named, and replaced by `init --force`.
    let control_plane = FakeControlPlane::start(0, &[TokenAnswer::Grant]).await;
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("credential.json"), "{").unwrap();
    let config = onprem_config(&state, &slice, &control_plane.url(), "http://127.0.0.1:9");
    let file = write_config(&config, dir.path());
    let (code, _, stderr) = init(&file, &[]).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("is damaged") && stderr.contains("citadel init --force"),
        "{stderr}"
    );
    let (code, stdout, stderr) = init(&file, &["--force"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let credential: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("credential.json")).unwrap()).unwrap();
    assert_eq!(credential["access_token"], ACCESS_TOKEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_takes_no_job_when_a_service_cannot_come_up() {
    let nexus = FakeNexus::start(None).await;
    nexus.push(json!({"id": "n-1", "type": "extraction", "payload": {"content": "x", "format": "text"}}));
    let slice = TestSlice::new();
    let dir = tempfile::tempdir().unwrap();
    let mut config = onprem_config(&dir.path().join("state"), &slice, "http://x", &nexus.url());
    let mut broken = shell_service("broken", "echo 'no model file' >&2; exit 3");
    broken.restart = RestartPolicy::Never;
    config.services = vec![broken];
    let file = write_config(&config, dir.path());
    let output = tokio::process::Command::new(citadel_bin())
        .arg("--config")
        .arg(&file)
        .args(["up", "--wait-s", "60"])
        .env_remove("CITADEL_CONFIG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("citadel: service broken did not come up: exited with status 3"),
        "{stderr}"
    );
    assert!(stderr.contains("broken.stderr.log"), "{stderr}");
    assert!(nexus.handed_out().is_empty(), "no job taken");
    assert!(slice.gone(), "the service's cgroup is removed");
}
