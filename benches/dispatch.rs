//! Per-job overhead of a trivial `echo` job (`{"text":"hello world"}`: parse
//! the payload, stream two chunks, return the payload), six ways:
//! - `pooling`: the sandbox's path as the node runs it (pooling allocator,
//!   the tenant's kept instance with the job's limits, captured stdio,
//!   chunk channel; a fresh instance every 100 jobs);
//! - `fresh`: the same with a fresh instance for every job (a new Store
//!   from the cached InstancePre, `jobs_per_instance = 1`);
//! - `dispatcher`: the same job as every source runs it, through the
//!   dispatcher (handler lookup, tenant slot, pin check, outcome);
//! - `on_demand`: a fresh instance per job with mmap-per-instance allocation;
//! - `native`: the same work as a plain Rust function (the floor);
//! - `process_per_job`: spawning `citadel run` for each job (what isolation
//!   by process costs).
//!
//! With the node's allocator (mimalloc, as the `citadel` binary), for every
//! variant alike.

use std::process::Command;
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Arc;

use citadel_benches::{citadel_bin, executor, executor_keeping, guest};
use citadel_runtime::dispatch::{Admission, Dispatcher, JobControl, Recovery};
use citadel_runtime::handlers::HandlerTable;
use citadel_runtime::{Allocation, Chunk, JobSpec};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: &str = r#"{"text":"hello world"}"#;

fn job() -> JobSpec {
    JobSpec {
        id: "bench".into(),
        job_type: "echo".into(),
        tenant: "default".into(),
        payload: PAYLOAD.into(),
        ray_id: None,
        attempt: 1,
        timeout: None,
    }
}

/// What echo does, natively: parse, emit each word, return the payload.
async fn native_echo(payload: &str, sink: &mpsc::Sender<Chunk>) -> serde_json::Value {
    let parsed: serde_json::Value = serde_json::from_str(payload).expect("payload");
    if let Some(text) = parsed.get("text").and_then(|text| text.as_str()) {
        for (index, word) in text.split_whitespace().enumerate() {
            sink.send(Chunk {
                index: index as u32,
                content: word.to_string(),
            })
            .await
            .expect("sink");
        }
    }
    serde_json::from_str(payload).expect("result")
}

fn per_job(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    let mut group = c.benchmark_group("echo_job");

    // The sandbox alone, then the same executor through the dispatcher.
    let pooled = Arc::new(executor(Allocation::Pooling));
    let fresh = Arc::new(executor_keeping(Allocation::Pooling, 1));
    let on_demand = Arc::new(executor_keeping(Allocation::OnDemand, 1));
    for (name, executor) in [("pooling", &pooled), ("fresh", &fresh), ("on_demand", &on_demand)] {
        let echo = executor.components().load_file(&guest("echo")).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let (sink, mut chunks) = mpsc::channel(16);
                    let report = executor.run(&echo, job(), Some(sink), &cancel).await;
                    assert!(report.outcome.is_ok());
                    while chunks.try_recv().is_ok() {}
                })
            })
        });
    }

    let handlers = HandlerTable::load(
        pooled.components(),
        &BTreeMap::from([("echo".to_string(), guest("echo"))]),
    )
    .unwrap();
    let dispatch = Dispatcher::new(Arc::clone(&pooled), handlers, 1);
    let control = JobControl {
        cancel: &cancel,
        interrupt: &cancel,
        recovery: Recovery::Retry,
    };
    group.bench_function("dispatcher", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (sink, mut chunks) = mpsc::channel(16);
                let spec = job();
                let Admission::Admitted(admitted) = dispatch.admit(&spec, &cancel).await else {
                    panic!("echo is handled");
                };
                let ran = dispatch.run(admitted, spec, Some(sink), control).await;
                assert!(ran.report.outcome.is_ok());
                while chunks.try_recv().is_ok() {}
            })
        })
    });

    group.bench_function("native", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (sink, mut chunks) = mpsc::channel(16);
                let result = native_echo(std::hint::black_box(PAYLOAD), &sink).await;
                std::hint::black_box(result);
                while chunks.try_recv().is_ok() {}
            })
        })
    });

    let binary = citadel_bin();
    let echo = guest("echo");
    let cache = tempfile::tempdir().unwrap();
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("process_per_job", |b| {
        b.iter(|| {
            let out = Command::new(&binary)
                .args(["run", "--component"])
                .arg(&echo)
                .args(["--payload", PAYLOAD])
                .env("CITADEL_SANDBOX__CACHE_DIR", cache.path())
                .output()
                .unwrap();
            assert!(out.status.success());
        })
    });
    group.finish();
}

criterion_group!(benches, per_job);
criterion_main!(benches);
