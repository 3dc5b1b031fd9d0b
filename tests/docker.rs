//! The Docker Engine API client against a real podman API service (one
//! private service per test) and real busybox containers: listing with label
//! filters, inspecting, stop/start/restart, log tails, and the errors for an
//! unknown container and for a socket nobody serves.

use std::time::{Duration, Instant};

use citadel_tests::*;
use citadel_transports::docker::{ContainerDetails, DockerClient, DockerError};

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

    let began = Instant::now();
    docker.stop("svc", grace).await.unwrap();
    assert!(began.elapsed() < grace, "SIGTERM stops it, took {:?}", began.elapsed());
    let stopped = inspect_until(&docker, "svc", "svc to stop", |c| !c.running).await;
    assert_eq!(stopped.state, "exited");
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
    let impatient = DockerClient::new(&podman.socket(), Duration::from_secs(1)).unwrap();
    let began = Instant::now();
    impatient.stop("stubborn", Duration::from_secs(2)).await.unwrap();
    assert!(began.elapsed() >= Duration::from_secs(2), "took {:?}", began.elapsed());
    assert!(!impatient.inspect("stubborn").await.unwrap().running);
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
