//! The Docker Engine API client against a real podman API service (one
//! private service per test) and real busybox containers: listing with label
//! filters, inspecting, stop/start/restart, log tails, and the errors for an
//! unknown container and for a socket nobody serves. Then capability
//! `docker` end to end: jobs of the real `docker-ops` component under tenant
//! policies (name globs, labels, actions), with the state changes checked
//! through the client, denials, refusal of ungranted tenants, and nodes
//! without a Docker API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_runtime::capabilities::docker::DockerAccess;
use citadel_runtime::config::DockerConfig;
use citadel_runtime::{Allocation, Config, Executor, JobReport};
use citadel_tests::*;
use citadel_transports::docker::{ContainerDetails, DockerClient, DockerError};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);
const WITHIN: Duration = Duration::from_secs(20);
/// A service that exits promptly on SIGTERM (busybox `sh` as PID 1 would
/// otherwise ignore it and wait for SIGKILL).
const SERVICE: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";

fn client(podman: &Podman) -> DockerClient {
    DockerClient::new(&podman.socket(), TIMEOUT).unwrap()
}

/// Inspect `name` until `check` holds.
async fn inspect_until(
    docker: &DockerClient,
    name: &str,
    what: &str,
    check: impl Fn(&ContainerDetails) -> bool,
) -> ContainerDetails {
    eventually_some(WITHIN, what, || async {
        docker.inspect(name).await.ok().filter(|details| check(details))
    })
    .await
}

fn names(mut listed: Vec<citadel_transports::docker::ContainerSummary>) -> Vec<String> {
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    listed.into_iter().map(|c| c.name).collect()
}

fn labels(filters: &[&str]) -> Vec<String> {
    filters.iter().map(|f| f.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_running_and_stopped_containers_with_their_labels() {
    let podman = Podman::start();
    let docker = client(&podman);
    docker.ping().await.unwrap();
    let web = podman.run("web", &[("app", "citadel"), ("role", "web")], SERVICE);
    podman.run("done", &[("app", "citadel"), ("role", "batch")], "echo done; exit 3");
    podman.create("later", &[("app", "citadel")], "true");
    podman.run("other", &[("app", "other")], SERVICE);
    inspect_until(&docker, "done", "`done` to exit", |c| {
        !c.running && c.finished_at.is_some()
    })
    .await;

    let all = docker.list(&[]).await.unwrap();
    assert_eq!(names(all.clone()), ["done", "later", "other", "web"]);
    let state = |name: &str| all.iter().find(|c| c.name == name).unwrap().state.clone();
    assert_eq!(state("web"), "running");
    assert_eq!(state("done"), "exited");
    assert_eq!(state("later"), "created");
    let listed_web = all.iter().find(|c| c.name == "web").unwrap();
    assert_eq!(listed_web.id, web);
    assert_eq!(listed_web.image, podman.busybox_image());
    assert!(listed_web.status.starts_with("Up"), "{}", listed_web.status);
    assert_eq!(listed_web.labels["app"], "citadel");
    assert_eq!(listed_web.labels["role"], "web");

    let citadel = docker.list(&labels(&["app=citadel"])).await.unwrap();
    assert_eq!(names(citadel), ["done", "later", "web"]);
    let with_role = docker.list(&labels(&["role"])).await.unwrap();
    assert_eq!(names(with_role), ["done", "web"]);
    let both = docker.list(&labels(&["app=citadel", "role=web"])).await.unwrap();
    assert_eq!(names(both), ["web"]);
    assert!(docker.list(&labels(&["app=nothing"])).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_state_exit_code_and_times() {
    let podman = Podman::start();
    let docker = client(&podman);
    let id = podman.run("web", &[("app", "citadel")], SERVICE);
    podman.run("failed", &[], "exit 3");
    podman.create("later", &[], "true");

    let web = docker.inspect("web").await.unwrap();
    assert_eq!((web.id.as_str(), web.name.as_str()), (id.as_str(), "web"));
    assert_eq!(web.image, podman.busybox_image());
    assert_eq!((web.state.as_str(), web.running, web.exit_code), ("running", true, 0));
    assert!(web.started_at.is_some());
    assert_eq!(web.finished_at, None);
    assert_eq!(web.health, None);
    assert_eq!(web.restart_count, 0);
    assert_eq!(web.labels["app"], "citadel");
    // By id too.
    assert_eq!(docker.inspect(&id).await.unwrap().name, "web");

    let failed = inspect_until(&docker, "failed", "`failed` to exit", |c| {
        !c.running && c.finished_at.is_some()
    })
    .await;
    assert_eq!((failed.state.as_str(), failed.exit_code), ("exited", 3));
    assert!(failed.started_at.is_some());

    let later = docker.inspect("later").await.unwrap();
    assert_eq!((later.state.as_str(), later.running), ("created", false));
    assert_eq!((later.started_at, later.finished_at), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_stay_readable_while_a_container_exits() {
    // podman 4.3 reports `stopped` between a process's exit and its cleanup,
    // a state bollard's enums refuse: list and inspect keep answering,
    // with Docker's `exited`. Polled back to back to land in that window.
    let podman = Podman::start();
    let docker = client(&podman);
    podman.run("brief", &[], "sleep 0.5; exit 3");
    let deadline = Instant::now() + WITHIN;
    loop {
        let listed = docker.list(&[]).await.unwrap().remove(0).state;
        let inspected = docker.inspect("brief").await.unwrap();
        for state in [&listed, &inspected.state] {
            assert!(state == "running" || state == "exited", "{state}");
        }
        if listed == "exited" && inspected.state == "exited" {
            assert_eq!((inspected.running, inspected.exit_code), (false, 3));
            break;
        }
        assert!(Instant::now() < deadline, "`brief` never exited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_and_restart_change_the_state() {
    let podman = Podman::start();
    let docker = client(&podman);
    podman.run("svc", &[], SERVICE);
    let grace = Duration::from_secs(5);
    let first = docker.inspect("svc").await.unwrap();
    assert!(first.running);

    docker.stop("svc", grace).await.unwrap();
    let stopped = inspect_until(&docker, "svc", "svc to stop", |c| !c.running).await;
    assert_eq!(stopped.state, "exited");
    assert_eq!(stopped.exit_code, 0, "its SIGTERM trap ran: stopped, not killed");
    assert!(stopped.finished_at.is_some());
    // Stopping a stopped container is fine (304).
    docker.stop("svc", grace).await.unwrap();

    docker.start("svc").await.unwrap();
    let started = inspect_until(&docker, "svc", "svc to run again", |c| c.running).await;
    assert_eq!(started.state, "running");
    assert_ne!(started.started_at, first.started_at);
    // Starting a running container is fine (304).
    docker.start("svc").await.unwrap();

    docker.restart("svc", grace).await.unwrap();
    let restarted = inspect_until(&docker, "svc", "svc to run after restart", |c| c.running).await;
    assert_ne!(restarted.started_at, started.started_at);
    assert_eq!(docker.list(&[]).await.unwrap()[0].state, "running");

    // `sleep` as PID 1 ignores SIGTERM: stopping takes the whole grace
    // period, which a stop's bound allows for beyond the call timeout.
    podman.run("stubborn", &[], "sleep 1000");
    // (A call bound of 3 s leaves room for podman's clean-up on a busy machine.)
    let impatient = DockerClient::new(&podman.socket(), Duration::from_secs(3)).unwrap();
    let began = Instant::now();
    impatient.stop("stubborn", Duration::from_secs(4)).await.unwrap();
    assert!(
        began.elapsed() >= Duration::from_secs(4),
        "the grace period was given in full, took {:?}",
        began.elapsed()
    );
    let killed = impatient.inspect("stubborn").await.unwrap();
    assert!(!killed.running);
    assert_eq!(killed.exit_code, 137, "SIGKILL after the grace period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_return_the_last_lines_capped_in_bytes() {
    let podman = Podman::start();
    let docker = client(&podman);
    podman.run("talker", &[], "for i in 1 2 3 4 5; do echo line$i; done; sleep 1000");
    podman.run("both", &[], "echo to-stdout; echo to-stderr >&2; sleep 1000");

    let all = eventually_some(WITHIN, "all five lines", || async {
        let logs = docker.logs("talker", 100, 1 << 20).await.unwrap();
        logs.contains("line5").then_some(logs)
    })
    .await;
    assert_eq!(all, "line1\nline2\nline3\nline4\nline5\n");
    assert_eq!(docker.logs("talker", 2, 1 << 20).await.unwrap(), "line4\nline5\n");
    // The newest bytes are kept.
    assert_eq!(docker.logs("talker", 2, 6).await.unwrap(), "line5\n");

    let both = eventually_some(WITHIN, "stdout and stderr", || async {
        let logs = docker.logs("both", 10, 1 << 20).await.unwrap();
        logs.contains("to-stderr").then_some(logs)
    })
    .await;
    assert!(both.contains("to-stdout\n") && both.contains("to-stderr\n"), "{both:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_container_is_not_found() {
    let podman = Podman::start();
    let docker = client(&podman);
    let not_found = DockerError::NotFound {
        container: "nope".into(),
    };
    let grace = Duration::from_secs(1);
    assert_eq!(docker.inspect("nope").await.unwrap_err(), not_found);
    assert_eq!(docker.start("nope").await.unwrap_err(), not_found);
    assert_eq!(docker.stop("nope", grace).await.unwrap_err(), not_found);
    assert_eq!(docker.restart("nope", grace).await.unwrap_err(), not_found);
    assert_eq!(docker.logs("nope", 10, 1024).await.unwrap_err(), not_found);
    assert!(docker.list(&[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_nobody_serves_is_unavailable_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("docker.sock").display().to_string();
    let docker = DockerClient::new(&format!("unix://{missing}"), TIMEOUT).unwrap();
    let began = Instant::now();
    let err = docker.ping().await.unwrap_err();
    assert!(began.elapsed() < Duration::from_secs(2), "took {:?}", began.elapsed());
    assert!(
        matches!(&err, DockerError::Unavailable { socket, .. } if *socket == missing),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is the Docker or podman API service running"),
        "{err}"
    );
    assert!(matches!(docker.list(&[]).await, Err(DockerError::Unavailable { .. })));

    // A service that answered, then went away.
    let mut podman = Podman::start();
    let docker = client(&podman);
    podman.run("svc", &[], SERVICE);
    assert_eq!(docker.list(&[]).await.unwrap().len(), 1);
    podman.stop_service();
    let began = Instant::now();
    for err in [
        docker.list(&[]).await.unwrap_err(),
        docker.inspect("svc").await.unwrap_err(),
        docker.logs("svc", 10, 1024).await.unwrap_err(),
        docker.stop("svc", Duration::from_secs(1)).await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, DockerError::Unavailable { socket, .. } if *socket == podman.socket()),
            "{err:?}"
        );
    }
    assert!(began.elapsed() < Duration::from_secs(2), "took {:?}", began.elapsed());
}

// Capability `docker` through the executor and the `docker-ops` guest.

const POLICY: &str = r#"
[tenants.ops]
capabilities = ["log", "docker"]
timeout_ms = 60000
docker.containers = ["allowed-*"]
docker.labels = ["citadel.test=yes"]
docker.actions = ["list", "inspect", "logs", "restart", "stop", "start"]

[tenants.reader]
capabilities = ["docker"]
timeout_ms = 60000
[tenants.reader.docker]
containers = ["allowed-*"]
labels = ["citadel.test=yes"]

[tenants.plain]
capabilities = ["log", "stream"]
"#;

const GRACE: Duration = Duration::from_secs(5);

/// An executor under [`POLICY`] reaching `docker`.
fn node(docker: DockerAccess) -> Executor {
    executor(POLICY).with_docker(Arc::new(docker))
}

fn podman_node(podman: &Podman) -> Executor {
    node(DockerAccess::new(Some(client(podman)), GRACE, 1 << 20))
}

/// Run one `docker-ops` job of `tenant`.
async fn docker_op(executor: &Executor, tenant: &str, payload: Value) -> JobReport {
    run(executor, &load("docker-ops"), job(tenant, &payload.to_string(), None))
        .await
        .0
}

fn ok(report: &JobReport) -> Value {
    report
        .outcome
        .as_ref()
        .unwrap_or_else(|err| panic!("job failed: {err}"))
        .clone()
}

fn failure(report: &JobReport) -> (&'static str, String) {
    let err = report.outcome.as_ref().expect_err("the job fails");
    (err.class(), err.to_string())
}

/// The containers of the capability tests: two the tenants may use (one by
/// name, one by label), two they may not (a label with another value, and
/// no label).
fn containers(podman: &Podman) {
    podman.run(
        "allowed-web",
        &[("role", "web")],
        "echo started; echo line2; trap 'exit 0' TERM; while true; do sleep 0.1; done",
    );
    podman.run("labelled", &[("citadel.test", "yes")], SERVICE);
    podman.run("secret", &[("citadel.test", "no")], SERVICE);
    podman.create("other", &[("role", "web")], "true");
}

fn listed_names(result: &Value) -> Vec<String> {
    let mut names: Vec<String> = result
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_exactly_the_tenants_containers_by_name_and_label() {
    let podman = Podman::start();
    containers(&podman);
    let executor = podman_node(&podman);
    for tenant in ["ops", "reader"] {
        let listed = ok(&docker_op(&executor, tenant, json!({"op": "list"})).await);
        assert_eq!(listed_names(&listed), ["allowed-web", "labelled"], "{tenant}");
        let labelled = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "labelled")
            .unwrap();
        assert_eq!(labelled["state"], "running");
        assert_eq!(labelled["labels"], json!({"citadel.test": "yes"}));
        assert_eq!(labelled["image"], podman.busybox_image());
    }
    // The node has all four.
    assert_eq!(client(&podman).list(&[]).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_logs_stop_start_and_restart_work_on_allowed_containers() {
    let podman = Podman::start();
    containers(&podman);
    let docker = client(&podman);
    let executor = podman_node(&podman);

    let web = ok(&docker_op(&executor, "ops", json!({"op": "inspect", "container": "allowed-web"})).await);
    assert_eq!(
        (web["name"].as_str(), web["running"].as_bool()),
        (Some("allowed-web"), Some(true))
    );
    assert_eq!(web["labels"], json!({"role": "web"}));
    assert_eq!(web["exit_code"], 0);
    // By label, and by id (the policy applies to what the id resolves to).
    let labelled = ok(&docker_op(&executor, "reader", json!({"op": "inspect", "container": "labelled"})).await);
    assert_eq!(labelled["state"], "running");
    let id = labelled["id"].as_str().unwrap();
    let by_id = ok(&docker_op(&executor, "reader", json!({"op": "inspect", "container": id})).await);
    assert_eq!(by_id["name"], "labelled");

    let logs = eventually_some(WITHIN, "both log lines", || async {
        let report = docker_op(&executor, "reader", json!({"op": "logs", "container": "allowed-web"})).await;
        let logs = ok(&report)["logs"].as_str().unwrap().to_string();
        logs.contains("line2").then_some(logs)
    })
    .await;
    assert_eq!(logs, "started\nline2\n");
    let last = ok(&docker_op(
        &executor,
        "ops",
        json!({"op": "logs", "container": "allowed-web", "tail": 1}),
    )
    .await);
    assert_eq!(last, json!({"logs": "line2\n"}));

    let stopped = docker_op(&executor, "ops", json!({"op": "stop", "container": "allowed-web"})).await;
    assert_eq!(ok(&stopped), json!({"ok": true}));
    let down = inspect_until(&docker, "allowed-web", "allowed-web to stop", |c| !c.running).await;
    assert_eq!(down.state, "exited");
    ok(&docker_op(&executor, "ops", json!({"op": "start", "container": "allowed-web"})).await);
    let up = inspect_until(&docker, "allowed-web", "allowed-web to run again", |c| c.running).await;
    assert_ne!(up.started_at, down.started_at);
    ok(&docker_op(&executor, "ops", json!({"op": "restart", "container": "labelled"})).await);
    let restarted = inspect_until(&docker, "labelled", "labelled to run after restart", |c| c.running).await;
    assert_ne!(restarted.started_at.as_deref(), labelled["started_at"].as_str());
    // The others were left alone.
    assert!(docker.inspect("secret").await.unwrap().running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_on_a_container_not_the_tenants_is_denied() {
    let podman = Podman::start();
    containers(&podman);
    let docker = client(&podman);
    let executor = podman_node(&podman);
    let secret_id = docker.inspect("secret").await.unwrap().id;
    // `secret` exists, `nowhere` does not: the same answer, so denials say
    // nothing about what exists. An id resolves to `secret`: denied too.
    for container in ["secret", "other", "nowhere", secret_id.as_str(), &secret_id[..12]] {
        for op in ["inspect", "logs", "start", "stop", "restart"] {
            let report = docker_op(&executor, "ops", json!({"op": op, "container": container})).await;
            let (class, message) = failure(&report);
            assert_eq!(class, "denied", "{op} {container}: {message}");
            assert!(
                message.contains(&format!("tenant `ops` may not use container `{container}`"))
                    && message.contains("docker.containers, docker.labels"),
                "{message}"
            );
        }
    }
    assert!(
        docker.inspect("secret").await.unwrap().running,
        "the denied stop did nothing"
    );
    assert_eq!(
        docker.inspect("other").await.unwrap().state,
        "created",
        "nor the denied start"
    );
    // A name the globs allow that no container has is not found; a string
    // that is no name never reaches the API.
    for container in ["allowed-missing", "x/../../images/json", ""] {
        let report = docker_op(&executor, "ops", json!({"op": "start", "container": container})).await;
        let (class, message) = failure(&report);
        assert_eq!(class, "invalid_input", "{container}: {message}");
        assert!(message.contains("no container named"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_tenant_cannot_change_containers() {
    let podman = Podman::start();
    containers(&podman);
    let docker = client(&podman);
    let executor = podman_node(&podman);
    let before = docker.inspect("allowed-web").await.unwrap();
    for op in ["start", "stop", "restart"] {
        let report = docker_op(&executor, "reader", json!({"op": op, "container": "allowed-web"})).await;
        let (class, message) = failure(&report);
        assert_eq!(class, "denied", "{op}: {message}");
        assert!(
            message.contains(&format!(
                "tenant `reader` may not use docker action `{op}` (docker.actions)"
            )),
            "{message}"
        );
    }
    let after = docker.inspect("allowed-web").await.unwrap();
    assert!(after.running);
    assert_eq!(after.started_at, before.started_at, "never restarted");
    // Reading is granted.
    ok(&docker_op(
        &executor,
        "reader",
        json!({"op": "inspect", "container": "allowed-web"}),
    )
    .await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_docker_is_refused_before_the_job_runs() {
    // No Docker API is needed: the component is refused at admission.
    let executor = node(DockerAccess::default());
    for tenant in ["plain", "stranger"] {
        let report = docker_op(&executor, tenant, json!({"op": "list"})).await;
        let (class, message) = failure(&report);
        assert_eq!(class, "capability_refused", "{message}");
        assert!(message.contains("imports [docker]"), "{message}");
        assert!(message.contains("is not granted"), "{message}");
        assert!(report.log.is_empty(), "nothing ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_docker_api_calls_are_unavailable() {
    let every_op = [
        json!({"op": "list"}),
        json!({"op": "inspect", "container": "allowed-web"}),
        json!({"op": "logs", "container": "allowed-web"}),
        json!({"op": "stop", "container": "allowed-web"}),
    ];
    // A node without a Docker API.
    let executor = node(DockerAccess::default());
    for payload in &every_op {
        let (class, message) = failure(&docker_op(&executor, "ops", payload.clone()).await);
        assert_eq!(class, "unavailable", "{payload}: {message}");
        assert!(
            message.contains("no Docker API on this node: set docker.socket"),
            "{message}"
        );
    }
    // The grant is checked first: a read-only tenant's stop is still denied.
    let report = docker_op(&executor, "reader", json!({"op": "stop", "container": "allowed-web"})).await;
    assert_eq!(failure(&report).0, "denied");

    // docker.socket names a path nobody serves, through the node's configuration.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let missing = dir.path().join("docker.sock").display().to_string();
    let config = Config {
        policy: Some(policy),
        docker: DockerConfig {
            socket: Some(format!("unix://{missing}")),
            ..DockerConfig::default()
        },
        sandbox: sandbox_config(Some(&dir.path().join("cache"))),
        ..Config::default()
    };
    let configured = Executor::from_config(&config, Allocation::OnDemand).unwrap();
    assert_eq!(
        configured.docker().client().map(DockerClient::socket),
        Some(missing.as_str())
    );
    let component = configured.components().load_file(&guest("docker-ops")).unwrap();
    for payload in &every_op {
        let began = Instant::now();
        let report = run(&configured, &component, job("ops", &payload.to_string(), None))
            .await
            .0;
        let (class, message) = failure(&report);
        assert_eq!(class, "unavailable", "{payload}: {message}");
        assert!(message.contains(&missing), "{message}");
        assert!(began.elapsed() < Duration::from_secs(2), "took {:?}", began.elapsed());
    }

    // A podman whose API service went away; the node carries on.
    let mut podman = Podman::start();
    containers(&podman);
    let executor = podman_node(&podman);
    assert_eq!(
        listed_names(&ok(&docker_op(&executor, "ops", json!({"op": "list"})).await)),
        ["allowed-web", "labelled"]
    );
    podman.stop_service();
    for payload in &every_op {
        let (class, message) = failure(&docker_op(&executor, "ops", payload.clone()).await);
        assert_eq!(class, "unavailable", "{payload}: {message}");
        assert!(message.contains(&podman.socket()), "{message}");
    }
    let (report, _) = run(&executor, &load("echo"), job("plain", r#"{"text":"still here"}"#, None)).await;
    assert_eq!(class(&report), "ok");
}

// --- the node's containers in status ---------------------------------------

/// The node's latest status and `/health`.
async fn node_view(base: &str) -> Option<(Value, u16, String)> {
    let status = node_status(base).await?;
    let (code, health) = try_get(&format!("{base}/health")).await?;
    Some((status, code, health))
}

fn docker_services(status: &Value) -> Vec<Value> {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|service| service["type"] == "docker")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_nodes_containers_and_a_docker_api_that_stops_answering() {
    let mut podman = Podman::start();
    podman.run(
        "vllm",
        &[("citadel.models", "llama-3.2-1b, qwen"), ("citadel.port", "8000")],
        SERVICE,
    );
    podman.create("idle", &[], SERVICE);
    podman.run("unreported", &[], SERVICE);
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.docker = DockerConfig {
        socket: Some(podman.socket()),
        report: vec!["vllm".into(), "idle".into()],
        ..DockerConfig::default()
    };
    config.telemetry.service_poll_ms = 200;
    config.telemetry.status_interval_s = 1;
    config.telemetry.min_change_interval_ms = 100;
    let node = TestWorker::start_node(&config).await;
    let base = node.status_url();

    let services = eventually_some(WITHIN, "both reported containers in services[]", || async {
        let (status, _, _) = node_view(&base).await?;
        let services = docker_services(&status);
        (services.len() == 2).then_some(services)
    })
    .await;
    let vllm = services.iter().find(|service| service["name"] == "vllm").unwrap();
    assert_eq!(vllm["status"], "running");
    assert_eq!(vllm["health"], "unknown", "no health check defined");
    assert_eq!(vllm["port"], 8000);
    assert_eq!(vllm["models"], json!(["llama-3.2-1b", "qwen"]));
    assert!(vllm["placement"].as_str().unwrap().starts_with("container "), "{vllm}");
    let idle = services.iter().find(|service| service["name"] == "idle").unwrap();
    assert_eq!(idle["status"], "stopped");

    // Stopping a container shows in status.
    client(&podman).stop("vllm", Duration::from_secs(2)).await.unwrap();
    eventually_some(WITHIN, "vllm stopped in status", || async {
        let (status, _, _) = node_view(&base).await?;
        docker_services(&status)
            .iter()
            .any(|service| service["name"] == "vllm" && service["status"] == "stopped")
            .then_some(())
    })
    .await;

    // The API goes away: said in collector_errors[] and /health, no crash.
    podman.stop_service();
    let (status, code, health) = eventually_some(WITHIN, "the docker probe failing in status", || async {
        let view = node_view(&base).await?;
        let failing = view.0["collector_errors"]
            .as_array()?
            .iter()
            .any(|error| error["probe"] == "docker");
        failing.then_some(view)
    })
    .await;
    assert!(docker_services(&status).is_empty(), "{status}");
    assert_eq!(code, 503, "{health}");
    assert!(
        health.contains("docker: ") && health.contains(&podman.socket()),
        "{health}"
    );
    node.stop().await;
}
