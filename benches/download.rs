//! Outbound HTTP through the sandbox against a native client, both on the
//! same local server in the same run:
//!
//! - `model_download_16mib`: `native` — reqwest GET, SHA-256 while
//!   receiving, write, fsync, rename (what a native downloader does);
//!   `citadel` — a `model_download` job (the `model-download` component:
//!   `wasi:http` through the node's checked connector, capability `models`
//!   hashing and writing, progress chunks).
//! - `http_get_1kib`: one small GET on a fresh connection: `native`
//!   (reqwest) vs `citadel` (an `http-fetch` job: instantiate, egress
//!   checks, connect, request, result) — the per-request overhead.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use citadel_benches::{guest, sandbox_config};
use citadel_runtime::capabilities::models::ModelStore;
use citadel_runtime::{Allocation, ComponentStore, Executor, JobSpec, Policy, SandboxEngine};
use citadel_tests::FileServer;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const MODEL_BYTES: usize = 16 << 20;

fn policy(port: u16) -> Policy {
    let toml = format!(
        "[tenants.bench]\ncapabilities = [\"http\", \"models\", \"stream\"]\nmax_output_bytes = 16777216\n\
         [tenants.bench.http]\nallowed_hosts = [\"http://127.0.0.1:{port}\"]\nallow_addresses = [\"127.0.0.1\"]\n"
    );
    Policy::from_toml(&toml, "bench policy").expect("policy")
}

fn job(payload: String) -> JobSpec {
    JobSpec {
        id: "bench".into(),
        job_type: "bench".into(),
        tenant: "bench".into(),
        payload,
        ray_id: None,
        attempt: 1,
        timeout: Some(Duration::from_secs(60)),
    }
}

/// GET `url`, hash and store it as `dir/name` the way a native downloader would.
async fn native_download(client: &reqwest::Client, url: &str, dir: &Path, name: &str) -> String {
    let mut response = client.get(url).send().await.expect("GET");
    let partial = dir.join(format!(".{name}.part"));
    let mut file = std::fs::File::create(&partial).expect("create");
    let mut hasher = Sha256::new();
    while let Some(piece) = response.chunk().await.expect("body") {
        hasher.update(&piece);
        file.write_all(&piece).expect("write");
    }
    file.sync_all().expect("sync");
    std::fs::rename(&partial, dir.join(name)).expect("rename");
    hex::encode(hasher.finalize())
}

fn download(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(FileServer::start());
    let content: Vec<u8> = (0..MODEL_BYTES).map(|i| (i * 7919 % 251) as u8).collect();
    let digest = hex::encode(Sha256::digest(&content));
    server.file("/model.bin", content);
    server.file("/small", vec![b'x'; 1024]);
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = SandboxEngine::new(&sandbox_config(), Allocation::OnDemand).expect("engine");
    let store = Arc::new(ComponentStore::new(engine, None).expect("component store"));
    let executor = Executor::new(Arc::clone(&store), policy(server.port()))
        .with_models(Arc::new(ModelStore::new(dir.path().join("models"), 1 << 30)));
    let downloader = store.load_file(&guest("model-download")).expect("model-download");
    let fetcher = store.load_file(&guest("http-fetch")).expect("http-fetch");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let model_url = format!("{}/model.bin", server.base());
    let small_url = format!("{}/small", server.base());
    let cancel = CancellationToken::new();

    let mut group = c.benchmark_group("model_download_16mib");
    group.sample_size(20).throughput(Throughput::Bytes(MODEL_BYTES as u64));
    group.bench_function("native", |b| {
        b.iter(|| runtime.block_on(native_download(&client, &model_url, dir.path(), "native.bin")))
    });
    let payload = serde_json::json!({"url": model_url, "sha256": digest, "name": "model.bin"}).to_string();
    group.bench_function("citadel", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (sink, mut chunks) = tokio::sync::mpsc::channel(64);
                let drain = tokio::spawn(async move { while chunks.recv().await.is_some() {} });
                let report = executor
                    .run(&downloader, job(payload.clone()), Some(sink), &cancel)
                    .await;
                drain.await.expect("drain");
                report.outcome.expect("downloaded")
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("http_get_1kib");
    group.bench_function("native", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let response = client.get(&small_url).send().await.expect("GET");
                response.bytes().await.expect("body").len()
            })
        })
    });
    let payload = serde_json::json!({"url": small_url}).to_string();
    group.bench_function("citadel", |b| {
        b.iter(|| {
            runtime.block_on(async {
                executor
                    .run(&fetcher, job(payload.clone()), None, &cancel)
                    .await
                    .outcome
                    .expect("fetched")
            })
        })
    });
    group.finish();
}

criterion_group!(benches, download);
criterion_main!(benches);
