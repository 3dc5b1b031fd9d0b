//! Shared test harness: where the built guests and the `citadel` binary
//! are, a component store shared by every test of a binary (so each guest is
//! compiled once per run), helpers to run a job and collect its chunks, a
//! private `redis-server` per test (`redis.rs`) and a Redis Streams worker
//! with its producer side (`worker.rs`), and an HTTP endpoint receiving
//! status messages (`receiver.rs`), and real cgroups with processes in them
//! (`cgroup.rs`), a fake of the Nexus API (`nexus.rs`), native services in a private cgroup slice (`services.rs`),
//! a fake of the control plane's device authorization (`control_plane.rs`),
//! a Citadel-style Python producer (`producer.rs`), certificates for TLS
//! (`pki.rs`), a Redis Sentinel deployment (`sentinel.rs`),
//! and inference engines: the real llama.cpp test engine, an
//! Ollama emulator and a misbehaving engine (`engine.rs`), and a private
//! podman serving the Docker Engine API (`podman.rs`), a simulated fleet for
//! the monitor (`fleet_sim.rs`) and a real headless Chromium for its
//! dashboard (`browser.rs`), and another tenant timing its jobs on a node
//! under attack (`latency.rs`).
//!
//! Guests are built by `scripts/build-guests` and the binary by
//! `cargo build`; `scripts/test` does both before running the tests.

mod browser;
mod cgroup;
mod control_plane;
mod engine;
mod files;
pub mod fleet_sim;
mod gpu;
mod http_server;
mod latency;
mod nexus;
mod pki;
mod podman;
mod producer;
mod receiver;
mod redis;
mod sentinel;
mod services;
mod worker;

pub use browser::Browser;
pub use cgroup::TestCgroups;
pub use control_plane::{ACCESS_TOKEN, DEVICE_CODE, FakeControlPlane, TokenAnswer, TokenPoll, USER_CODE};
pub use engine::{LlmEngine, Misbehaviour, misbehaving_engine, ollama_emulator};
pub use files::{FileServer, Seen};
pub use gpu::FakeSmi;
pub use http_server::serve_loopback;
pub use latency::{Victim, latency_summary, percentile, save_report};
pub use nexus::FakeNexus;
pub use pki::TestPki;
pub use podman::Podman;
pub use producer::CitadelProducer;
pub use receiver::{Answer, StatusReceiver};
pub use redis::{RedisOptions, RedisServer, RedisTls};
pub use sentinel::{SENTINEL_PASSWORD, SENTINEL_SERVICE, SentinelSet};
pub use services::{TestSlice, shell_service};
pub use worker::*;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use citadel_runtime::components::LoadedComponent;
use citadel_runtime::{
    Allocation, Chunk, ComponentStore, Executor, JobReport, JobSpec, Policy, SandboxConfig, SandboxEngine,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The built component of guest `name` (`guests/<name>`).
pub fn guest(name: &str) -> PathBuf {
    let path = workspace().join("target/guests").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-guests (scripts/test does)",
        path.display()
    );
    path
}

/// The `citadel` binary of this build profile.
pub fn citadel_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/citadel
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("citadel");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// Sandbox settings for tests: a short epoch tick, a private cache.
pub fn sandbox_config(cache_dir: Option<&Path>) -> SandboxConfig {
    SandboxConfig {
        epoch_tick_ms: 2,
        cache_dir: cache_dir.map(Path::to_path_buf),
        ..SandboxConfig::default()
    }
}

/// One component store per test binary (compiled guests are shared), with
/// its disk cache in a temporary directory that lives as long as the process.
pub fn shared_store() -> Arc<ComponentStore> {
    static STORE: OnceLock<(tempfile::TempDir, Arc<ComponentStore>)> = OnceLock::new();
    let (_, store) = STORE.get_or_init(|| {
        let cache = tempfile::tempdir().expect("temp dir");
        let config = sandbox_config(Some(cache.path()));
        let engine = SandboxEngine::new(&config, Allocation::Pooling).expect("engine");
        let store = ComponentStore::new(engine, Some(cache.path())).expect("component store");
        (cache, Arc::new(store))
    });
    Arc::clone(store)
}

/// An executor on the shared store under `policy` (TOML; empty = default).
pub fn executor(policy: &str) -> Executor {
    let policy = if policy.is_empty() {
        Policy::default()
    } else {
        Policy::from_toml(policy, "test policy").expect("policy")
    };
    Executor::new(shared_store(), policy)
}

/// Load guest `name` into the shared store.
pub fn load(name: &str) -> Arc<LoadedComponent> {
    shared_store()
        .load_file(&guest(name))
        .unwrap_or_else(|err| panic!("loading {name}: {err}"))
}

/// A job of `tenant` with `payload` and an optional budget.
pub fn job(tenant: &str, payload: &str, timeout: Option<Duration>) -> JobSpec {
    JobSpec {
        id: "test-job".into(),
        job_type: "test".into(),
        tenant: tenant.into(),
        payload: payload.into(),
        ray_id: None,
        attempt: 1,
        timeout,
    }
}

/// Run `job` on `component` to the end, returning the report and every chunk.
pub async fn run(executor: &Executor, component: &LoadedComponent, job: JobSpec) -> (JobReport, Vec<Chunk>) {
    run_cancellable(executor, component, job, &CancellationToken::new()).await
}

/// Like [`run`], with a cancellation token.
pub async fn run_cancellable(
    executor: &Executor,
    component: &LoadedComponent,
    job: JobSpec,
    cancel: &CancellationToken,
) -> (JobReport, Vec<Chunk>) {
    run_telling_first_chunk(executor, component, job, cancel, None).await
}

/// Like [`run_cancellable`], telling `first_chunk` when the first chunk
/// arrives (so a test can act mid-stream without guessing when that is).
pub async fn run_telling_first_chunk(
    executor: &Executor,
    component: &LoadedComponent,
    job: JobSpec,
    cancel: &CancellationToken,
    mut first_chunk: Option<tokio::sync::oneshot::Sender<()>>,
) -> (JobReport, Vec<Chunk>) {
    let (sink, mut chunks) = mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            if let Some(first) = first_chunk.take() {
                let _ = first.send(());
            }
            all.push(chunk);
        }
        all
    });
    let report = executor.run(component, job, Some(sink), cancel).await;
    let chunks = collect.await.expect("chunk collector");
    (report, chunks)
}

/// The error class of a report, or `ok`.
pub fn class(report: &JobReport) -> &'static str {
    match &report.outcome {
        Ok(_) => "ok",
        Err(err) => err.class(),
    }
}

/// Wait for `condition` to hold, checking every few ms, failing after `within`.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut condition: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`eventually`] for an async check that yields a value once it holds.
pub async fn eventually_some<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for code outside a tokio runtime.
pub fn wait_until<F: FnMut() -> bool>(within: Duration, what: &str, mut condition: F) {
    let deadline = std::time::Instant::now() + within;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send `request` as raw bytes to `addr` and read what comes back until the
/// server closes (or 5 s pass): for requests no HTTP client would send.
/// With `hang_up`, the client closes its side after the request (a server
/// may then drop it unanswered: HTTP/1.1 does not require half-close).
/// `None` when the connection cannot be made.
pub fn raw_request(addr: &str, request: &[u8], hang_up: bool) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // The server may close before reading it all: that is an answer too.
    let _ = stream.write_all(request);
    if hang_up {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// What the server answered on `stream` before closing it (EOF or reset)
/// within `within`; `None` when it is still open then.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// Random HTTP/1.1 requests, as an attacker or a broken client sends them:
/// odd methods, paths and headers, garbage, truncation.
pub fn hostile_requests() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("PUT".to_string()),
        Just("DELETE".to_string()),
        Just("OPTIONS".to_string()),
        "[A-Z]{0,10}",
    ];
    let path = prop_oneof![
        Just("/".to_string()),
        Just("/status".to_string()),
        Just("/metrics".to_string()),
        Just("/events".to_string()),
        Just("/v1/events".to_string()),
        Just("/v1/nodes?state=up&tag=%ff".to_string()),
        Just("/v1/alerts/%2e%2e%2f/close".to_string()),
        Just("/login?next=//evil.example".to_string()),
        "/[a-z0-9%./?&=_-]{0,40}",
    ];
    let header = (
        prop_oneof![
            Just("content-length".to_string()),
            Just("transfer-encoding".to_string()),
            Just("authorization".to_string()),
            Just("x-api-key".to_string()),
            Just("cookie".to_string()),
            Just("last-event-id".to_string()),
            "[a-z-]{1,12}",
        ],
        prop_oneof![
            Just("chunked".to_string()),
            Just("-1".to_string()),
            Just("99999999999999999999".to_string()),
            Just("Bearer ".to_string()),
            "[ -~]{0,30}",
        ],
    );
    let well_formed = (
        method,
        path,
        proptest::collection::vec(header, 0..5),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(method, path, headers, body)| {
            let mut request = format!("{method} {path} HTTP/1.1\r\nhost: citadel\r\n");
            for (name, value) in headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            let mut bytes = request.into_bytes();
            bytes.extend(body);
            bytes
        });
    prop_oneof![
        4 => well_formed.clone(),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => (well_formed, any::<proptest::sample::Index>()).prop_map(|(bytes, cut)| {
            let at = cut.index(bytes.len().max(1));
            bytes[..at].to_vec()
        }),
    ]
}

/// A free loopback TCP port (for a server the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// `GET url`: its status code and body, `None` when nothing answers.
pub async fn try_get(url: &str) -> Option<(u16, String)> {
    let client = citadel_transports::http::client(Duration::from_secs(5)).ok()?;
    let response = client.get(url).send().await.ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.ok()?))
}

/// The `status` part of the latest StatusMessage of the node serving `base`.
pub async fn node_status(base: &str) -> Option<serde_json::Value> {
    let (_, body) = try_get(&format!("{base}/status")).await?;
    let message: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(message["status"].clone())
}

/// Run `citadel --config <file> work`, which must refuse to start: its exit
/// code and stderr.
pub fn citadel_work_refusal(config_file: &Path) -> (Option<i32>, String) {
    let output = std::process::Command::new(citadel_bin())
        .arg("--config")
        .arg(config_file)
        .arg("work")
        .env_remove("CITADEL_CONFIG")
        .output()
        .expect("run citadel work");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
