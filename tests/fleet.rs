//! Handlers published to the fleet, against a real `redis-server` and real
//! `citadel work` processes: `citadel component publish` swaps a job type's
//! component while jobs run (running ones finish on the old version, new
//! ones get the new, none fails), `rollback` swaps it back; tampered bytes,
//! a bad signature, an unknown signer, an unsigned component where keys are
//! trusted, a component importing more than any tenant is granted and
//! malformed bytes are refused with a status entry while the old handler
//! keeps serving; a node that was down during a publish starts on the
//! current handler, and two nodes converge on the same digest.

use std::process::Command;
use std::time::{Duration, SystemTime};

use citadel_runtime::Config;
use citadel_runtime::Digest;
use citadel_runtime::components::signing;
use citadel_tests::*;
use citadel_transports::redis::registry::{HandlerRecord, Registry};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(30);
/// The job type the tests publish handlers for (no node configures it).
const GREET: &str = "greet";

fn digest_of(guest_name: &str) -> String {
    Digest::of(&std::fs::read(guest(guest_name)).unwrap()).to_string()
}

/// `citadel component <args…> --redis-url URL`: its exit status and output.
fn component(redis: &RedisServer, args: &[&str]) -> (bool, String) {
    let output = Command::new(citadel_bin())
        .arg("component")
        .args(args)
        .args(["--redis-url", &redis.url()])
        .output()
        .expect("run citadel component");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn publish(redis: &RedisServer, guest_name: &str, extra: &[&str]) {
    let file = guest(guest_name);
    let mut args = vec!["publish", file.to_str().unwrap(), "--job-type", GREET];
    args.extend_from_slice(extra);
    let (ok, text) = component(redis, &args);
    assert!(ok, "publish {guest_name}: {text}");
}

/// The node's `handlers[]` entry for `job_type`, once `check` holds.
async fn handler_entry(node: &WorkerProcess, job_type: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually_some(WITHIN, what, || async {
        let status = node_status(&node.status_url()).await?;
        let entry = status["handlers"]
            .as_array()?
            .iter()
            .find(|entry| entry["job_type"] == job_type)?
            .clone();
        check(&entry).then_some(entry)
    })
    .await
}

async fn serving(node: &WorkerProcess, digest: &str) -> Value {
    handler_entry(node, GREET, &format!("{GREET} served by {digest}"), |entry| {
        entry["digest"] == digest
    })
    .await
}

/// Run one `greet` job: its result.
async fn greet(redis: &RedisServer, job_id: &str, payload: &str) -> Value {
    enqueue(&mut redis.conn(), job_id, GREET, payload);
    let state = wait_status(redis, job_id, "completed", WITHIN).await;
    serde_json::from_str(&state["result"]).unwrap()
}

fn fleet_config(redis: &RedisServer, trusted: &[String]) -> Config {
    let mut config = worker_config(redis);
    config.components.trusted_keys = trusted.to_vec();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_swaps_the_handler_between_jobs_and_rollback_swaps_it_back() {
    let redis = RedisServer::start();
    let node = WorkerProcess::start(&fleet_config(&redis, &[]));
    let (v1, v2) = (digest_of("slow"), digest_of("echo"));

    publish(&redis, "slow", &[]);
    let entry = serving(&node, &v1).await;
    assert_eq!(entry["source"], "fleet");
    assert_eq!(greet(&redis, "v1-first", r#"{"ms": 1}"#).await["attempt"], 1);
    let table = Command::new(citadel_bin())
        .args([
            "status",
            "--status-addr",
            node.status_url().trim_start_matches("http://"),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("handler greet") && line.contains(&v1) && line.contains("fleet")),
        "{table}"
    );

    // v1 jobs still running when v2 is published finish on v1.
    let slow = r#"{"ms": 1500, "chunks": 3, "text": "hello"}"#;
    for id in ["long-1", "long-2", "long-3"] {
        enqueue(&mut redis.conn(), id, GREET, slow);
    }
    for id in ["long-1", "long-2", "long-3"] {
        wait_status(&redis, id, "running", WITHIN).await;
    }
    // Meanwhile a producer enqueues a short job every 20 ms, across the publish.
    let stop_producing = tokio_util::sync::CancellationToken::new();
    let producer = tokio::spawn({
        let client = redis.client();
        let stop = stop_producing.clone();
        async move {
            let mut conn = client.get_connection().unwrap();
            let mut ids = Vec::new();
            while !stop.is_cancelled() {
                let id = format!("steady-{}", ids.len());
                enqueue(&mut conn, &id, GREET, r#"{"ms": 1, "text": "steady"}"#);
                ids.push(id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        }
    });
    publish(&redis, "echo", &[]);
    serving(&node, &v2).await;
    let after = greet(&redis, "v2-first", slow).await;
    assert_eq!(
        after,
        serde_json::from_str::<Value>(slow).unwrap(),
        "the new job ran v2 (echo)"
    );
    stop_producing.cancel();
    let steady = producer.await.unwrap();
    let mut on_new = 0;
    for id in &steady {
        let state = wait_status(&redis, id, "completed", WITHIN).await;
        let result: Value = serde_json::from_str(&state["result"]).unwrap();
        on_new += usize::from(result["text"] == "steady");
        let ends = event_types(&mut redis.conn(), id)
            .iter()
            .filter(|kind| *kind == "end")
            .count();
        assert_eq!(ends, 1, "{id} ran once");
    }
    assert!(on_new > 0, "some of the {} steady jobs ran on v2", steady.len());
    println!(
        "{} jobs enqueued across the publish: {} on v1, {on_new} on v2, none failed",
        steady.len(),
        steady.len() - on_new
    );
    for id in ["long-1", "long-2", "long-3"] {
        let state = wait_status(&redis, id, "completed", WITHIN).await;
        let result: Value = serde_json::from_str(&state["result"]).unwrap();
        assert_eq!(result["slept_ms"], 1500, "{id} finished on v1: {result}");
    }
    assert!(dead_letters(&mut redis.conn()).is_empty());
    assert!(node.log().contains("handler swapped"), "{}", node.log());

    let (ok, text) = component(&redis, &["rollback", "--job-type", GREET]);
    assert!(ok && text.contains(&v1), "{text}");
    serving(&node, &v1).await;
    assert_eq!(greet(&redis, "v1-again", r#"{"ms": 1}"#).await["attempt"], 1);

    let (ok, text) = component(&redis, &["list"]);
    assert!(
        ok && text.contains(GREET) && text.contains(&v1) && text.contains("unsigned"),
        "{text}"
    );
    let (ok, text) = component(&redis, &["rollback", "--job-type", GREET]);
    assert!(!ok && text.contains("no earlier handler"), "{text}");
}

/// A record for `bytes` published directly (what a broken or hostile
/// publisher could write), signed by `key` over `signed_digest`.
fn record(digest: &str, signature: Option<(&signing::SigningKey, &Digest)>) -> HandlerRecord {
    HandlerRecord {
        digest: digest.to_string(),
        size: 0,
        signature: signature.map(|(key, signed)| signing::sign(key, signed)),
        signer: signature.map(|(key, _)| signing::public_hex(key)),
        publisher: "test".into(),
        published_at: citadel_transports::wire::timestamp(SystemTime::now()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_failing_a_check_are_refused_and_the_old_handler_stays() {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("publisher.key");
    let keygen = Command::new(citadel_bin())
        .args(["component", "keygen", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let public = std::fs::read_to_string(keys.path().join("publisher.key.pub")).unwrap();
    let node = WorkerProcess::start(&fleet_config(&redis, &[public.trim().to_string()]));

    publish(&redis, "slow", &["--sign", key_file.to_str().unwrap()]);
    let v1 = digest_of("slow");
    serving(&node, &v1).await;

    let key = signing::read_key(&key_file).unwrap();
    let stranger = signing::generate();
    let registry = Registry::new(&redis.endpoint());
    let echo = std::fs::read(guest("echo")).unwrap();
    let echo_digest = Digest::of(&echo);
    let sneaky = std::fs::read(guest("bad-sneaky")).unwrap();
    let sneaky_digest = Digest::of(&sneaky);
    let junk = b"\0asm but not really a component".to_vec();
    let junk_digest = Digest::of(&junk);
    let slow_bytes = std::fs::read(guest("slow")).unwrap();
    let cases: Vec<(&str, Vec<u8>, HandlerRecord, &str)> = vec![
        (
            "tampered bytes",
            slow_bytes.clone(),
            record(&echo_digest.to_string(), Some((&key, &echo_digest))),
            "not the published digest",
        ),
        (
            "bad signature",
            echo.clone(),
            record(&echo_digest.to_string(), Some((&key, &sneaky_digest))),
            "signature does not match",
        ),
        (
            "unknown signer",
            echo.clone(),
            record(&echo_digest.to_string(), Some((&stranger, &echo_digest))),
            "not in trusted_keys",
        ),
        (
            "unsigned",
            echo.clone(),
            record(&echo_digest.to_string(), None),
            "unsigned",
        ),
        (
            "imports beyond every grant",
            sneaky,
            record(&sneaky_digest.to_string(), Some((&key, &sneaky_digest))),
            "more than any tenant's policy grants",
        ),
        (
            "malformed",
            junk,
            record(&junk_digest.to_string(), Some((&key, &junk_digest))),
            "is not a",
        ),
    ];
    for (index, (case, bytes, record, reason)) in cases.into_iter().enumerate() {
        // Each case under its own record (the first three share a digest).
        let record = HandlerRecord {
            publisher: format!("test case {index}"),
            ..record
        };
        registry.publish(GREET, &bytes, &record).await.unwrap();
        let entry = handler_entry(&node, GREET, &format!("{case} refused"), |entry| {
            entry["refused"]["digest"] == record.digest.as_str()
                && entry["refused"]["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains(reason))
        })
        .await;
        assert_eq!(entry["digest"], v1.as_str(), "{case}: the old handler stays");
        let result = greet(&redis, &format!("after-{index}"), r#"{"ms": 1}"#).await;
        assert_eq!(result["attempt"], 1, "{case}: jobs still run v1");
    }
    assert!(node.log().contains("published handler refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_a_publish_starts_on_the_current_handler_and_nodes_converge() {
    let redis = RedisServer::start();
    let config = fleet_config(&redis, &[]);
    publish(&redis, "slow", &[]);
    let first = WorkerProcess::start(&config);
    serving(&first, &digest_of("slow")).await;

    publish(&redis, "echo", &[]);
    let second = WorkerProcess::start(&config);
    // Read before it was ready for jobs: the second node never served v1.
    let log = second.log();
    let swaps: Vec<&str> = log.lines().filter(|line| line.contains("handler swapped")).collect();
    assert_eq!(swaps.len(), 1, "{log}");
    assert!(swaps[0].contains(&digest_of("echo")), "{log}");
    assert!(log.find("handler swapped") < log.find("worker ready"), "{log}");
    for node in [&first, &second] {
        serving(node, &digest_of("echo")).await;
    }
    publish(&redis, "extract", &[]);
    for node in [&first, &second] {
        serving(node, &digest_of("extract")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_tenant_allowed_to_pin_runs_the_component_it_names() {
    let redis = RedisServer::start();
    let mut config = fleet_config(&redis, &[]);
    let _policy = with_policy(
        &mut config,
        "[tenants.pinner]\ncapabilities = [\"log\", \"stream\"]\nallow_pin = true\n",
    );
    let node = WorkerProcess::start(&config);
    let (v1, v2) = (digest_of("slow"), digest_of("echo"));
    publish(&redis, "slow", &[]);
    publish(&redis, "echo", &[]);
    serving(&node, &v2).await;

    // Pinned to v1 while v2 is current: runs v1.
    let pinned = format!(r#"{{"tenant": "pinner", "component": "{v1}", "ms": 1}}"#);
    assert_eq!(greet(&redis, "pinned-v1", &pinned).await["attempt"], 1);
    // Not pinned: the current one.
    let plain = r#"{"tenant": "pinner", "ms": 1}"#;
    assert_eq!(
        greet(&redis, "current", plain).await["ms"],
        1,
        "echo returns the payload"
    );

    // A tenant without allow_pin, and a digest never published for the job type.
    let refused = |id: &str, payload: String, reason: &'static str| {
        let redis = &redis;
        let id = id.to_string();
        async move {
            enqueue(&mut redis.conn(), &id, GREET, &payload);
            let state = wait_status(redis, &id, "failed", WITHIN).await;
            assert!(state["error"].contains(reason), "{id}: {state:?}");
        }
    };
    refused(
        "not-allowed",
        format!(r#"{{"component": "{v1}", "ms": 1}}"#),
        "may not pin components (allow_pin)",
    )
    .await;
    let extract = digest_of("extract");
    refused(
        "not-published",
        format!(r#"{{"tenant": "pinner", "component": "{extract}"}}"#),
        "not among the components published for `greet`",
    )
    .await;
}

/// Put `guest_name`'s component in `dir` as `<job_type>.wasm`, atomically.
fn place(dir: &std::path::Path, job_type: &str, bytes: &[u8]) {
    let staging = dir.join(format!(".{job_type}.partial"));
    std::fs::write(&staging, bytes).unwrap();
    std::fs::rename(&staging, dir.join(format!("{job_type}.wasm"))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_directory_swaps_refuses_and_restores_handlers() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = worker_config(&redis);
    config.components.fleet = false;
    config.components.dir = Some(dir.path().to_path_buf());
    config.components.dir_poll_ms = 100;
    place(dir.path(), GREET, &std::fs::read(guest("slow")).unwrap());
    let node = WorkerProcess::start(&config);
    // Scanned before the first job.
    assert!(node.log().contains("runs the directory's component"), "{}", node.log());
    let entry = serving(&node, &digest_of("slow")).await;
    assert_eq!(entry["source"], "dir");
    assert_eq!(greet(&redis, "dir-v1", r#"{"ms": 1}"#).await["attempt"], 1);

    place(dir.path(), GREET, &std::fs::read(guest("echo")).unwrap());
    serving(&node, &digest_of("echo")).await;
    assert_eq!(greet(&redis, "dir-v2", r#"{"ms": 7}"#).await["ms"], 7);

    let junk = b"not a component at all".to_vec();
    place(dir.path(), GREET, &junk);
    let entry = handler_entry(&node, GREET, "the junk refused", |entry| {
        entry["refused"]["digest"] == Digest::of(&junk).to_string().as_str()
    })
    .await;
    assert_eq!(entry["digest"], digest_of("echo").as_str(), "echo stays");

    // A file for a configured job type overrides it; removing it restores it.
    place(dir.path(), "echo", &std::fs::read(guest("extract")).unwrap());
    handler_entry(&node, "echo", "echo served by extract", |entry| {
        entry["digest"] == digest_of("extract").as_str() && entry["source"] == "dir"
    })
    .await;
    std::fs::remove_file(dir.path().join("echo.wasm")).unwrap();
    handler_entry(&node, "echo", "echo back to its configured component", |entry| {
        entry["digest"] == digest_of("echo").as_str() && entry["source"] == "config"
    })
    .await;
    // Removing a file of a job type nobody configured stops handling it.
    std::fs::remove_file(dir.path().join(format!("{GREET}.wasm"))).unwrap();
    eventually_some(WITHIN, "greet no longer handled", || async {
        let status = node_status(&node.status_url()).await?;
        let handled = status["handlers"]
            .as_array()?
            .iter()
            .any(|entry| entry["job_type"] == GREET && !entry["digest"].is_null());
        (!handled).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_handlers_starts_when_they_can_be_published() {
    let redis = RedisServer::start();
    let empty = tempfile::tempdir().unwrap();
    let mut config = fleet_config(&redis, &[]);
    config.handlers.clear();
    config.guests_dir = Some(empty.path().to_path_buf());
    let node = WorkerProcess::start(&config);
    publish(&redis, "slow", &[]);
    serving(&node, &digest_of("slow")).await;
    assert_eq!(greet(&redis, "first-ever", r#"{"ms": 1}"#).await["attempt"], 1);

    // Nothing configured and nothing that could arrive: it refuses to start.
    config.components.fleet = false;
    let file = empty.path().join("citadel.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let (code, stderr) = citadel_work_refusal(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no handlers"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_types_history_keeps_the_last_twenty_newest_first() {
    let redis = RedisServer::start();
    let registry = Registry::new(&redis.endpoint());
    let digests: Vec<String> = (0..25)
        .map(|n| Digest::of(format!("component {n}").as_bytes()).to_string())
        .collect();
    for digest in &digests {
        registry.publish(GREET, b"bytes", &record(digest, None)).await.unwrap();
    }
    let history: Vec<String> = registry
        .history(GREET)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.digest)
        .collect();
    let newest_twenty: Vec<String> = digests.iter().rev().take(20).cloned().collect();
    assert_eq!(history, newest_twenty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rereads_the_registry_when_its_subscription_reconnects() {
    let mut redis = RedisServer::start_persistent();
    let node = WorkerProcess::start(&fleet_config(&redis, &[]));
    publish(&redis, "slow", &[]);
    serving(&node, &digest_of("slow")).await;
    // A change written without its announcement (as a lost message would
    // leave it): the registry holds echo, the node still serves slow.
    let echo = digest_of("echo");
    let bytes = std::fs::read(guest("echo")).unwrap();
    let mut conn = redis.conn();
    let _: () = redis::cmd("SET")
        .arg(citadel_transports::redis::registry::component_key(&echo))
        .arg(bytes)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(citadel_transports::redis::registry::HANDLERS_KEY)
        .arg(GREET)
        .arg(serde_json::to_string(&record(&echo, None)).unwrap())
        .query(&mut conn)
        .unwrap();
    // Redis restarts: the node's subscription reconnects and it reads the
    // registry again, long before its once-a-minute resync.
    redis.kill();
    redis.restart();
    serving(&node, &echo).await;
    let after = greet(&redis, "after-reconnect", r#"{"text": "echoed"}"#).await;
    assert_eq!(after["text"], "echoed", "the job ran the handler the registry holds");
}
