//! Native services (`[[services]]`) run by a real `citadel work` process in
//! this machine's real cgroups (v1 here, v2 on the GPU machine): limits are
//! enforced (a memory hog is OOM-killed and restarted, a CPU burner is
//! throttled to its limit), forked children stay in the service's group,
//! health is probed, output lands in the service's logs, SIGTERM to the node
//! stops services gracefully and removes their groups; without writable
//! cgroups (a non-root node) services start plainly and status says so.

use std::time::Duration;

use citadel_runtime::Config;
use citadel_runtime::config::ServiceSettings;
use citadel_tests::{
    RedisServer, TestSlice, WorkerProcess, citadel_work_refusal, eventually_some, free_port, node_status,
    shell_service, worker_config,
};
use serde_json::Value;

/// Long enough for a restart after backoff on a busy 2-core machine.
const SETTLE: Duration = Duration::from_secs(30);

fn node_config(redis: &RedisServer, slice: &TestSlice, services: Vec<ServiceSettings>) -> Config {
    let mut config = worker_config(redis);
    config.node.cgroup_slice = Some(slice.name().into());
    config.services = services;
    config.telemetry.status_interval_s = 1;
    config.telemetry.min_change_interval_ms = 100;
    config.telemetry.service_poll_ms = 200;
    config
}

fn named<'a>(status: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    status[list].as_array()?.iter().find(|entry| entry["name"] == name)
}

/// Wait until the node reports `name` in `services[]` satisfying `check`.
async fn service_where(base: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually_some(SETTLE, what, || async {
        let status = node_status(base).await?;
        named(&status, "services", name)
            .filter(|service| check(service))
            .cloned()
    })
    .await
}

/// Running or sleeping, not gone and not a zombie waiting for its reaper.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// The children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}

fn process_in_group(pid: u32, group: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|cgroups| cgroups.contains(group))
}

#[tokio::test]
async fn services_run_in_their_cgroups_under_their_limits() {
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("hog-ran-once");
    let stopped = work.path().join("forker-stopped");
    let port = free_port();

    let mut hog = shell_service(
        "hog",
        r#"if [ ! -e "$MARK" ]; then touch "$MARK"; exec python3 -c 'x = b"x" * (256 << 20)'; fi
           echo second run; exec sleep 600"#,
    );
    hog.memory_limit = Some("32M".into());
    hog.env.insert("MARK".into(), marker.display().to_string());
    let mut burner = shell_service("burner", "while :; do :; done");
    burner.cpu_limit = Some("20%".into());
    let mut forker = shell_service(
        "forker",
        r#"trap 'echo graceful > "$OUT"; exit 0' TERM; sleep 600 & sleep 600 & echo forked; wait"#,
    );
    forker.env.insert("OUT".into(), stopped.display().to_string());
    let mut web = shell_service("web", &format!("exec python3 -m http.server {port} --bind 127.0.0.1"));
    web.port = Some(port);
    web.health_path = Some("/".into());

    let mut missing = shell_service("missing", "");
    missing.command = "/nonexistent/engine".into();
    missing.args.clear();

    let config = node_config(&redis, &slice, vec![hog, burner, forker, web, missing]);
    let mut node = WorkerProcess::start(&config);
    let base = node.status_url();

    // The hog exceeds 32M: the kernel kills it, the node says why and
    // restarts it (the second run only sleeps).
    let hog = service_where(&base, "hog", "the hog OOM-killed and running again", |hog| {
        hog["status"] == "running" && hog["restarts"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        hog["last_exit"]
            .as_str()
            .unwrap()
            .contains("out of memory (memory_limit 32M)"),
        "{hog}"
    );
    assert_eq!(hog["placement"], slice.service_path("hog"));
    let limit = if TestSlice::v2() {
        slice.read("hog", "memory.max")
    } else {
        slice.read("hog", "memory.limit_in_bytes")
    };
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    assert!(node.log().contains("service exited") && node.log().contains("out of memory"));

    // The web service answers its health check.
    let web = service_where(&base, "web", "the web service healthy", |web| web["health"] == "ok").await;
    assert_eq!(web["port"], port);

    // A program that cannot be run: an error with the reason, retried with backoff.
    let missing = service_where(&base, "missing", "the missing program reported", |missing| {
        missing["status"] == "error"
    })
    .await;
    assert!(
        missing["last_exit"].as_str().unwrap().contains("could not be run"),
        "{missing}"
    );
    let stderr = node.dir().join("state/services/missing.stderr.log");
    let stderr = std::fs::read_to_string(stderr).unwrap();
    assert!(
        stderr.contains("cannot run /nonexistent/engine: No such file or directory"),
        "{stderr}"
    );

    // Every process the forker started is in its group: its two children,
    // found through /proc, not through the group.
    let forker_group = slice.service_path("forker");
    let forker = service_where(&base, "forker", "the forker running", |forker| forker["pid"].is_u64()).await;
    let main_pid = forker["pid"].as_u64().unwrap() as u32;
    let children = eventually_some(SETTLE, "the forker's two children", || async {
        let children = children_of(main_pid);
        (children.len() == 2).then_some(children)
    })
    .await;
    let mut pids = children.clone();
    pids.push(main_pid);
    pids.sort_unstable();
    assert!(pids.iter().all(|pid| process_in_group(*pid, &forker_group)), "{pids:?}");
    assert_eq!(slice.procs("forker"), pids);

    // The burner is held near its 20% limit, and the kernel throttles it.
    let mut samples = Vec::new();
    let mut last_timestamp = String::new();
    while samples.len() < 3 {
        let sample = eventually_some(SETTLE, "a new CPU sample of the burner", || async {
            let status = node_status(&base).await?;
            let timestamp = status["timestamp"].as_str()?.to_string();
            let burner = named(&status, "processes", "burner")?;
            let percent = burner["cgroup"]["cpu_percent"].as_f64()?;
            (timestamp != last_timestamp).then_some((timestamp, percent, burner.clone()))
        })
        .await;
        assert_eq!(sample.2["cgroup"]["path"], slice.service_path("burner"));
        assert!(sample.2["pid"].as_u64().is_some());
        last_timestamp = sample.0;
        samples.push(sample.1);
    }
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    println!("burner limited to 20%: measured {samples:?}, mean {mean:.1}%");
    assert!(
        (5.0..=30.0).contains(&mean),
        "burner at {mean:.1}% of a core, limit 20%: {samples:?}"
    );
    let throttled: u64 = slice
        .read("burner", "cpu.stat")
        .lines()
        .find_map(|line| line.strip_prefix("nr_throttled "))
        .and_then(|count| count.trim().parse().ok())
        .expect("cpu.stat has nr_throttled");
    assert!(throttled > 0, "the kernel never throttled the burner");

    // Output went to the services' logs.
    let logs = node.dir().join("state").join("services");
    let web_log = std::fs::read_to_string(logs.join("web.stderr.log")).unwrap();
    assert!(web_log.contains("\"GET / HTTP/1.1\" 200"), "{web_log}");
    let forker_log = std::fs::read_to_string(logs.join("forker.stdout.log")).unwrap();
    assert_eq!(forker_log, "forked\n");

    // SIGTERM to the node: services get SIGTERM, leftovers are killed, the
    // groups are removed, the node exits 0.
    node.terminate();
    assert!(node.wait(SETTLE).success(), "{}", node.log());
    assert_eq!(std::fs::read_to_string(&stopped).unwrap(), "graceful\n");
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} outlived the node");
    }
    for service in ["hog", "burner", "forker", "web", "missing"] {
        assert!(slice.removed(service), "{service}'s cgroup is still there");
    }
    assert!(slice.gone(), "the slice outlived its services");
}

#[tokio::test]
async fn without_writable_cgroups_services_start_plainly_and_say_so() {
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let mut plain = shell_service("plain", "sleep 120 & echo hello; exec sleep 120");
    plain.memory_limit = Some("64M".into());
    let config = node_config(&redis, &slice, vec![plain]);
    redis.open_to_other_users();
    // A node that is not root cannot create cgroups.
    let mut node = WorkerProcess::start_as(
        &config,
        &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    );
    let base = node.status_url();
    let plain = service_where(&base, "plain", "the service running without a cgroup", |plain| {
        plain["status"] == "running"
    })
    .await;
    assert_eq!(plain["placement"], "plain");
    let warning = plain["warning"].as_str().unwrap();
    assert!(
        warning.starts_with("running without cgroup limits: cannot create cgroup")
            && warning.ends_with("Permission denied (os error 13)"),
        "{warning}"
    );
    assert!(
        node.log()
            .contains("no cgroup for the service: starting it without cpu/memory limits"),
        "{}",
        node.log()
    );
    let pid = plain["pid"].as_u64().unwrap() as u32;
    let child = eventually_some(SETTLE, "the service's background child", || async {
        children_of(pid).first().copied()
    })
    .await;
    node.terminate();
    assert!(node.wait(SETTLE).success(), "{}", node.log());
    assert!(!alive(pid), "the service outlived the node");
    // Without a cgroup, its process group is what is cleaned up.
    assert!(!alive(child), "the service's child outlived the node");
}

#[test]
fn invalid_limits_are_config_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, expected) in [
        (
            "memory_limit",
            "\"lots\"",
            "services.memory_limit services[0] (\"svc\"): \"lots\" must be bytes",
        ),
        (
            "cpu_limit",
            "\"2 cores\"",
            "services.cpu_limit services[0] (\"svc\"): \"2 cores\" must be a percentage",
        ),
    ] {
        let file = dir.path().join("citadel.toml");
        std::fs::write(
            &file,
            format!("[[services]]\nname = \"svc\"\ncommand = \"sleep\"\n{key} = {value}\n"),
        )
        .unwrap();
        let (code, stderr) = citadel_work_refusal(&file);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    // And the same through the library.
    let mut config = Config::default();
    let mut service = shell_service("svc", "true");
    service.memory_limit = Some("1K".into());
    config.services = vec![service];
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("services.memory_limit") && err.contains("below 4M"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_signal_kills_the_services_and_exits_at_once() {
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    // It ignores SIGTERM: a graceful stop would wait its whole 60 s.
    let mut stubborn = shell_service("stubborn", "trap '' TERM; sleep 600 & wait; wait");
    stubborn.stop_timeout_ms = 60_000;
    let mut node = WorkerProcess::start(&node_config(&redis, &slice, vec![stubborn]));
    let base = node.status_url();
    let stubborn = service_where(&base, "stubborn", "the stubborn service running", |stubborn| {
        stubborn["pid"].is_u64()
    })
    .await;
    let pid = stubborn["pid"].as_u64().unwrap() as u32;
    node.terminate();
    eventually_some(SETTLE, "the node draining", || async {
        node.log().contains("signal received: draining").then_some(())
    })
    .await;
    node.terminate();
    let exit = node.wait(SETTLE);
    assert_eq!(exit.code(), Some(130), "{}", node.log());
    assert!(!alive(pid), "the service outlived the node");
    // The group may already be removed (the stop in progress finishes as the
    // node exits); either way nothing is left in it.
    assert!(
        slice.removed("stubborn") || slice.procs("stubborn").is_empty(),
        "processes left in the service's cgroup"
    );
}

#[tokio::test]
async fn a_service_gets_the_nodes_environment_without_its_citadel_settings() {
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let work = tempfile::tempdir().unwrap();
    let written = work.path().join("env");
    let mut printer = shell_service("printer", r#"env > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"; exec sleep 600"#);
    printer.env.insert("OUT".into(), written.display().to_string());
    let config = node_config(&redis, &slice, vec![printer]);
    let node = WorkerProcess::start_with_env(
        &config,
        "work",
        &[
            ("CITADEL_AGENT__TOKEN", "node-secret-token"),
            ("SHARED_SETTING", "kept"),
        ],
    );
    let env = eventually_some(SETTLE, "the service to write its environment", || async {
        std::fs::read_to_string(&written).ok()
    })
    .await;
    assert!(
        env.lines().any(|line| line == "SHARED_SETTING=kept"),
        "the node's environment: {env}"
    );
    assert!(
        env.lines().any(|line| line == format!("OUT={}", written.display())),
        "the service's own env: {env}"
    );
    assert!(!env.contains("CITADEL_"), "no CITADEL_* setting: {env}");
    assert!(!env.contains("node-secret-token"), "{env}");
    let mut node = node;
    node.terminate();
    assert!(node.wait(SETTLE).success(), "{}", node.log());
}
