//! Capability `http` and the `model_download` handler against real HTTP
//! servers on loopback, through the real `http-fetch` and `model-download`
//! components.
//!
//! `http`: an allowed host is fetched; a host outside `allowed_hosts`, a
//! redirect to one, a name that resolves to a refused address, a literal
//! metadata address and oversized responses (declared and streamed) end in
//! the typed `wasi:http` errors, with no request reaching the refused
//! server. `model_download`: progress chunks, SHA-256 checked, the file
//! published atomically; a wrong hash leaves nothing; a transfer broken off
//! mid-body is resumed with a `Range` request by the next attempt (or
//! started over when the server cannot resume); the size cap holds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use citadel_runtime::capabilities::models::ModelStore;
use citadel_runtime::{Executor, JobReport};
use citadel_tests::*;
use serde_json::{Value, json};

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(20));

/// A policy granting tenant `web` capability `http` (and `models`,
/// `stream`) with `rules` as its `[tenants.web.http]` section.
fn policy(rules: &str) -> String {
    format!(
        "[tenants.web]\ncapabilities = [\"http\", \"models\", \"stream\"]\n[tenants.web.http]\n{rules}\n\
         [tenants.offline]\ncapabilities = [\"stream\", \"models\"]\n"
    )
}

/// Loopback must be allowed explicitly: every server here is on it.
fn loopback(port: u16) -> String {
    policy(&format!(
        "allowed_hosts = [\"http://127.0.0.1:{port}\"]\nallow_addresses = [\"127.0.0.1\"]"
    ))
}

async fn fetch(executor: &Executor, payload: Value) -> JobReport {
    let (report, _) = run(executor, &load("http-fetch"), job("web", &payload.to_string(), TIMEOUT)).await;
    report
}

fn error_text(report: &JobReport) -> String {
    match &report.outcome {
        Ok(result) => panic!("expected an error, got {result}"),
        Err(err) => err.to_string(),
    }
}

/// The job failed with `class`, its error naming `code`.
fn assert_failed(report: &JobReport, class_name: &str, code: &str) {
    let text = error_text(report);
    assert_eq!(class(report), class_name, "{text}");
    assert!(text.contains(code), "expected {code}: {text}");
}

/// The node's own records in the job's log.
fn node_log(report: &JobReport) -> String {
    report
        .log
        .iter()
        .map(|record| record.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_is_fetched_and_a_redirect_on_it_followed() {
    let server = FileServer::start().await;
    server.file("/greeting", "hello from a real server");
    server.redirect("/old", "/greeting");
    let executor = executor(&loopback(server.port()));

    let report = fetch(&executor, json!({"url": format!("{}/greeting?x=1", server.base())})).await;
    let result = report.outcome.expect("fetched");
    assert_eq!(result["status"], 200);
    assert_eq!(result["body"], "hello from a real server");
    let seen = server.seen();
    assert_eq!(seen[0].path, "/greeting");
    assert_eq!(
        seen[0].host.as_deref(),
        Some(format!("127.0.0.1:{}", server.port()).as_str())
    );

    let report = fetch(&executor, json!({"url": format!("{}/old", server.base())})).await;
    let result = report.outcome.expect("redirect followed");
    assert_eq!(
        (result["redirects"].as_u64(), result["body"].as_str()),
        (Some(1), Some("hello from a real server"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_outside_allowed_hosts_is_refused_before_any_connection() {
    let allowed = FileServer::start().await;
    let other = FileServer::start().await;
    other.file("/secret", "must not be read");
    let executor = executor(&loopback(allowed.port()));

    let report = fetch(&executor, json!({"url": format!("{}/secret", other.base())})).await;
    assert_failed(&report, "denied", "HttpRequestDenied");
    assert!(
        node_log(&report).contains(&format!("http: request to http://127.0.0.1:{}", other.port()))
            && node_log(&report).contains("not in http.allowed_hosts"),
        "{}",
        node_log(&report)
    );
    // https to the allowed host and port is another destination.
    let report = fetch(
        &executor,
        json!({"url": format!("https://127.0.0.1:{}/", allowed.port())}),
    )
    .await;
    assert_failed(&report, "denied", "HttpRequestDenied");
    assert!(other.seen().is_empty() && allowed.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_denied_host_is_refused() {
    let allowed = FileServer::start().await;
    let other = FileServer::start().await;
    other.file("/internal", "must not be read");
    allowed.redirect("/go", &format!("http://localhost:{}/internal", other.port()));
    let executor = executor(&loopback(allowed.port()));

    let report = fetch(&executor, json!({"url": format!("{}/go", allowed.base())})).await;
    assert_failed(&report, "denied", "HttpRequestDenied");
    assert_eq!(allowed.seen().len(), 1);
    assert!(other.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_literals_of_refused_addresses_are_refused() {
    let server = FileServer::start().await;
    server.file("/", "local");
    let port = server.port();
    // `localhost` is an allowed host, but it resolves to loopback, which
    // this tenant may not reach.
    let executor_without_addresses = executor(&policy(&format!(
        "allowed_hosts = [\"http://localhost:{port}\", \"http://169.254.169.254\", \"http://[::1]:{port}\"]"
    )));
    for url in [
        format!("http://localhost:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://[::1]:{port}/"),
    ] {
        let report = fetch(&executor_without_addresses, json!({"url": url})).await;
        assert_eq!(class(&report), "denied", "{url}");
        assert!(
            error_text(&report).contains("DestinationIpProhibited"),
            "{url}: {}",
            error_text(&report)
        );
    }
    let log = node_log(
        &fetch(
            &executor_without_addresses,
            json!({"url": format!("http://localhost:{port}/")}),
        )
        .await,
    );
    assert!(
        log.contains("localhost resolves to") && log.contains("loopback"),
        "{log}"
    );
    assert!(server.seen().is_empty());

    // Allowing loopback (both families `localhost` has) lets it through.
    let executor = executor(&policy(&format!(
        "allowed_hosts = [\"http://localhost:{port}\"]\nallow_addresses = [\"127.0.0.0/8\", \"::1\"]"
    )));
    let report = fetch(&executor, json!({"url": format!("http://localhost:{port}/")})).await;
    assert_eq!(report.outcome.expect("allowed")["body"], "local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_responses_end_in_a_body_size_error() {
    let server = FileServer::start().await;
    server.file("/declared", vec![b'a'; 5000]);
    server.unsized_file("/streamed", vec![b'b'; 5000]);
    server.file("/fits", vec![b'c'; 1000]);
    let port = server.port();
    let executor = executor(&policy(&format!(
        "allowed_hosts = [\"http://127.0.0.1:{port}\"]\nallow_addresses = [\"127.0.0.1\"]\nmax_response_bytes = 1000"
    )));
    let report = fetch(&executor, json!({"url": format!("{}/declared", server.base())})).await;
    assert_eq!(class(&report), "failed");
    assert!(
        error_text(&report).contains("HttpResponseBodySize(Some(5000))"),
        "{}",
        error_text(&report)
    );
    assert!(node_log(&report).contains("more than http.max_response_bytes (1000)"));

    let report = fetch(&executor, json!({"url": format!("{}/streamed", server.base())})).await;
    assert_failed(&report, "failed", "HttpResponseBodySize");

    let report = fetch(&executor, json!({"url": format!("{}/fits", server.base())})).await;
    assert_eq!(report.outcome.expect("at the cap")["bytes"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_and_a_stalled_body_end_in_timeouts() {
    let server = FileServer::start().await;
    server.never_answer("/silent");
    server.stalled_file("/stalled", vec![b's'; 100_000]);
    let port = server.port();
    let executor = executor(&policy(&format!(
        "allowed_hosts = [\"http://127.0.0.1:{port}\"]\nallow_addresses = [\"127.0.0.1\"]\ntimeout_ms = 300"
    )));
    for path in ["/silent", "/stalled"] {
        let report = fetch(&executor, json!({"url": format!("{}{path}", server.base())})).await;
        assert_failed(&report, "unavailable", "ConnectionReadTimeout");
    }
    assert_eq!(server.seen().len(), 2, "both requests reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_holds_at_most_eight_connections() {
    let server = FileServer::start().await;
    server.file("/", "open");
    server.stalled_file("/stalled", vec![b's'; 100_000]);
    let executor = executor(&loopback(server.port()));
    let hold = |count: usize| json!({"url": server.base(), "hold_open": count, "hold_url": format!("{}/stalled", server.base())});
    let report = fetch(&executor, hold(7)).await;
    assert_eq!(report.outcome.expect("eight at once")["held_open"], 7);
    let report = fetch(&executor, hold(8)).await;
    assert_failed(&report, "unavailable", "ConnectionLimitReached");
    assert!(
        node_log(&report).contains("already holds 8 connections"),
        "{}",
        node_log(&report)
    );
    // The connections of a finished job are gone: the next job has all eight.
    let report = fetch(&executor, hold(7)).await;
    assert_eq!(report.outcome.expect("eight again")["held_open"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_http_is_refused_before_the_handler_runs() {
    let executor = executor(&loopback(1));
    let (report, _) = run(
        &executor,
        &load("http-fetch"),
        job("offline", r#"{"url": "http://127.0.0.1:1/"}"#, TIMEOUT),
    )
    .await;
    assert_eq!(class(&report), "capability_refused");
    assert!(error_text(&report).contains("http"), "{}", error_text(&report));
}

// ---- model_download ----

/// Deterministic, incompressible-looking test content.
fn model_bytes(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7919 % 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A file server offering a model, and a node whose models directory
/// holds at most `max_bytes`.
struct ModelScene {
    server: FileServer,
    content: Vec<u8>,
    models: std::path::PathBuf,
    executor: Arc<Executor>,
    _dir: tempfile::TempDir,
}

impl ModelScene {
    async fn new(path: &str, size: usize, max_bytes: u64) -> ModelScene {
        let server = FileServer::start().await;
        let content = model_bytes(size);
        server.file(path, content.clone());
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let store = ModelStore::new(models.clone(), max_bytes);
        let executor = Arc::new(executor(&loopback(server.port())).with_models(Arc::new(store)));
        ModelScene {
            server,
            content,
            models,
            executor,
            _dir: dir,
        }
    }

    /// The payload asking for `path` as `name`, with the right digest.
    fn payload(&self, path: &str, name: &str) -> Value {
        json!({"url": format!("{}{path}", self.server.base()), "sha256": sha256_hex(&self.content), "name": name})
    }
}

async fn download(executor: &Executor, payload: Value) -> (JobReport, Vec<Value>) {
    let (report, chunks) = run(
        executor,
        &load("model-download"),
        job("web", &payload.to_string(), TIMEOUT),
    )
    .await;
    let progress = chunks
        .iter()
        .map(|chunk| serde_json::from_str(&chunk.content).expect("progress is JSON"))
        .collect();
    (report, progress)
}

/// Run a download whose transfer the server breaks off once `cut` bytes
/// have reached the models directory.
async fn interrupted_download(scene: &ModelScene, payload: Value, cut: usize) -> (JobReport, Vec<Value>) {
    let breaking = scene.server.cut_next_after(cut);
    let attempt = tokio::spawn({
        let executor = Arc::clone(&scene.executor);
        async move { download(&executor, payload).await }
    });
    let received = |models: &Path| files(models).iter().map(|(_, size)| *size).sum::<u64>();
    eventually(TIMEOUT.unwrap(), "the first bytes to be stored", || {
        received(&scene.models) == cut as u64
    })
    .await;
    breaking.notify_one();
    attempt.await.expect("download task")
}

/// The files in `dir` and its `.partial` directory, with sizes.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let root = dir.parent().unwrap();
    for dir in [dir.to_path_buf(), dir.join(".partial")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_file() {
                let name = entry.path().strip_prefix(root).unwrap().display().to_string();
                found.push((name, meta.len()));
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_downloaded_with_progress_and_its_hash_checked() {
    let scene = ModelScene::new("/m.gguf", 3 << 20, 1 << 30).await;
    let (report, progress) = download(&scene.executor, scene.payload("/m.gguf", "m.gguf")).await;
    let (content, models) = (&scene.content, &scene.models);
    let result = report.outcome.expect("downloaded");
    assert_eq!(result["bytes"], content.len());
    assert_eq!(result["sha256"], sha256_hex(content));
    assert_eq!(result["resumed_from"], 0);
    assert_eq!(&std::fs::read(models.join("m.gguf")).unwrap(), content);
    assert_eq!(files(models), [("models/m.gguf".to_string(), content.len() as u64)]);

    // Progress: bytes rising to the size, percent to 100, several steps.
    assert!(progress.len() >= 5, "{progress:?}");
    assert_eq!(progress[0]["bytes"], 0);
    assert!(
        progress
            .windows(2)
            .all(|pair| pair[0]["bytes"].as_u64() < pair[1]["bytes"].as_u64())
    );
    let last = progress.last().unwrap();
    assert_eq!(
        (last["bytes"].as_u64(), last["total"].as_u64()),
        (Some(content.len() as u64), Some(content.len() as u64))
    );
    assert_eq!(last["percent"], 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hash_leaves_nothing_behind() {
    let scene = ModelScene::new("/m.bin", 200_000, 1 << 30).await;
    let mut payload = scene.payload("/m.bin", "m.bin");
    payload["sha256"] = sha256_hex(b"some other file").into();
    let (report, _) = download(&scene.executor, payload).await;
    assert_eq!(class(&report), "invalid_input");
    assert!(
        error_text(&report).contains(&sha256_hex(&scene.content)),
        "{}",
        error_text(&report)
    );
    assert!(files(&scene.models).is_empty(), "{:?}", files(&scene.models));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_is_resumed_by_the_next_attempt() {
    let scene = ModelScene::new("/m.bin", 2 << 20, 1 << 30).await;
    let payload = scene.payload("/m.bin", "m.bin");
    let (report, _) = interrupted_download(&scene, payload.clone(), 700_000).await;
    assert_eq!(class(&report), "unavailable", "{:?}", report.outcome);
    assert!(
        error_text(&report).contains("next attempt resumes"),
        "{}",
        error_text(&report)
    );
    let partial = files(&scene.models);
    assert_eq!(partial.len(), 1, "{partial:?}");
    let kept = partial[0].1;
    assert!(
        partial[0].0.starts_with("models/.partial/m.bin.") && kept == 700_000,
        "{partial:?}"
    );

    let (report, progress) = download(&scene.executor, payload).await;
    let result = report.outcome.expect("resumed");
    assert_eq!(result["resumed_from"], kept);
    assert_eq!(std::fs::read(scene.models.join("m.bin")).unwrap(), scene.content);
    assert_eq!(
        files(&scene.models),
        [("models/m.bin".to_string(), scene.content.len() as u64)]
    );
    assert_eq!(
        scene.server.seen()[1].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_eq!(progress[0]["bytes"], kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_resume_gets_a_fresh_download() {
    let scene = ModelScene::new("/m.bin", 1 << 20, 1 << 30).await;
    scene.server.ignore_range();
    let payload = scene.payload("/m.bin", "m.bin");
    let (report, _) = interrupted_download(&scene, payload.clone(), 300_000).await;
    assert_eq!(class(&report), "unavailable", "{:?}", report.outcome);
    let (report, _) = download(&scene.executor, payload).await;
    assert_eq!(report.outcome.expect("started over")["resumed_from"], 0);
    assert_eq!(std::fs::read(scene.models.join("m.bin")).unwrap(), scene.content);
    assert_eq!(files(&scene.models).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_directory_cap_and_grant_hold() {
    let scene = ModelScene::new("/m.bin", 100_000, 50_000).await;
    let payload = scene.payload("/m.bin", "m.bin");
    let (report, _) = download(&scene.executor, payload.clone()).await;
    assert_eq!(class(&report), "failed");
    assert!(
        error_text(&report).contains("models directory is full"),
        "{}",
        error_text(&report)
    );
    assert!(!scene.models.join("m.bin").exists());

    // A tenant without `http` never gets to run the handler.
    let (report, _) = run(
        &scene.executor,
        &load("model-download"),
        job("offline", &payload.to_string(), TIMEOUT),
    )
    .await;
    assert_eq!(class(&report), "capability_refused");
}
