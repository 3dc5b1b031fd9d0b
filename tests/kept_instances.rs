//! Instances kept between jobs (`runtime/src/sandbox/warm.rs`) against real
//! guests: a tenant's next job of a component runs on the instance its last
//! one left, with its own log, chunks and limits; nothing crosses tenants or
//! components; a job that did not return, a memory that grew or a handle
//! left behind sends the instance away; `jobs_per_instance` bounds reuse;
//! kept instances give their pool slots to fresh ones.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use citadel_runtime::components::LoadedComponent;
use citadel_runtime::sandbox::warm::InstanceCounts;
use citadel_runtime::{Allocation, ComponentStore, Executor, Policy, SandboxConfig, SandboxEngine};
use citadel_tests::{class, guest, job, run, run_cancellable, sandbox_config};
use tokio_util::sync::CancellationToken;

/// An engine of its own (so its counts are this test's), compiled
/// components shared through one cache per test binary.
struct Node {
    store: Arc<ComponentStore>,
    executor: Executor,
}

impl Node {
    fn new(jobs_per_instance: u32, max_instances: u32, policy: &str) -> Node {
        static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
        let cache: &Path = CACHE.get_or_init(|| tempfile::tempdir().expect("temp dir")).path();
        let config = SandboxConfig {
            jobs_per_instance,
            max_instances,
            ..sandbox_config(Some(cache))
        };
        let engine = SandboxEngine::new(&config, Allocation::Pooling).expect("engine");
        let store = Arc::new(ComponentStore::new(engine, Some(cache)).expect("component store"));
        let policy = if policy.is_empty() {
            Policy::default()
        } else {
            Policy::from_toml(policy, "test policy").expect("policy")
        };
        let executor = Executor::new(Arc::clone(&store), policy);
        Node { store, executor }
    }

    fn load(&self, name: &str) -> Arc<LoadedComponent> {
        self.store.load_file(&guest(name)).expect("guest")
    }

    fn counts(&self) -> InstanceCounts {
        self.store.engine().instances().counts()
    }

    /// Run `payload` for `tenant` on `component`; its class.
    async fn run(&self, component: &LoadedComponent, tenant: &str, payload: &str) -> &'static str {
        class(&run(&self.executor, component, job(tenant, payload, None)).await.0)
    }
}

fn counts(fresh: u64, reused: u64, idle: usize) -> InstanceCounts {
    InstanceCounts { fresh, reused, idle }
}

const TWO_TENANTS: &str = r#"
[tenants.a]
capabilities = ["log", "stream"]
[tenants.b]
capabilities = ["log", "stream"]
"#;

#[tokio::test]
async fn a_tenants_next_job_runs_on_the_instance_its_last_job_left_with_its_own_log_and_chunks() {
    let node = Node::new(100, 8, "");
    let greedy = node.load("bad-greedy");
    let mut logs = Vec::new();
    for id in ["first", "second", "third"] {
        let mut spec = job("default", r#"{"want":"leak"}"#, None);
        spec.id = id.into();
        let (report, _) = run(&node.executor, &greedy, spec).await;
        assert_eq!(class(&report), "ok");
        logs.push(
            report
                .log
                .iter()
                .map(|record| record.message.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(node.counts(), counts(1, 2, 1));
    for (id, log) in ["first", "second", "third"].iter().zip(&logs) {
        // Each job's stdout and stderr land in its own log, though the
        // guest holds the streams it opened during the first job.
        assert_eq!(
            log,
            &[format!("stdout of job {id}"), format!("stderr of job {id}")],
            "the log of job {id}"
        );
    }

    // Chunks reach each job's own sink, and the sink is let go when the job
    // ends (`run` waits for every sender to close).
    let echo = node.load("echo");
    for text in ["one two", "three four five"] {
        let payload = serde_json::json!({ "text": text }).to_string();
        let (report, chunks) = tokio::time::timeout(
            Duration::from_secs(30),
            run(&node.executor, &echo, job("default", &payload, None)),
        )
        .await
        .expect("the job's chunk stream ends with the job");
        assert_eq!(class(&report), "ok");
        let words: Vec<_> = chunks.into_iter().map(|chunk| chunk.content).collect();
        assert_eq!(words, text.split(' ').collect::<Vec<_>>());
    }
    assert_eq!(node.counts(), counts(2, 3, 2));
}

#[tokio::test]
async fn kept_instances_never_cross_tenants_or_components() {
    let node = Node::new(100, 8, TWO_TENANTS);
    let echo = node.load("echo");
    let flaky = node.load("flaky");
    assert_eq!(node.run(&echo, "a", "{}").await, "ok");
    assert_eq!(node.run(&echo, "b", "{}").await, "ok");
    assert_eq!(node.run(&flaky, "a", r#"{"succeed_on_attempt":1}"#).await, "ok");
    assert_eq!(node.counts(), counts(3, 0, 3), "one instance per tenant and component");
    assert_eq!(node.run(&echo, "b", "{}").await, "ok");
    assert_eq!(node.run(&echo, "a", "{}").await, "ok");
    // A handler's own error is a return: its instance is kept.
    assert_eq!(node.run(&flaky, "a", "{}").await, "unavailable");
    assert_eq!(node.run(&flaky, "a", r#"{"succeed_on_attempt":1}"#).await, "ok");
    assert_eq!(node.counts(), counts(3, 4, 3));
}

#[tokio::test]
async fn a_job_that_did_not_return_takes_its_instance_with_it() {
    let node = Node::new(100, 8, "");
    let slow = node.load("slow");
    let quick = r#"{"ms":0,"chunks":1}"#;
    assert_eq!(node.run(&slow, "default", quick).await, "ok");
    // A deadline.
    let late = job("default", r#"{"ms":5000,"chunks":1}"#, Some(Duration::from_millis(50)));
    assert_eq!(class(&run(&node.executor, &slow, late).await.0), "deadline");
    assert_eq!(node.counts(), counts(1, 1, 0), "the instance went with the deadline");
    assert_eq!(node.run(&slow, "default", quick).await, "ok");
    assert_eq!(node.counts(), counts(2, 1, 1));
    // A cancel.
    let cancel = CancellationToken::new();
    cancel.cancel();
    let cancelled = run_cancellable(
        &node.executor,
        &slow,
        job("default", r#"{"ms":5000,"chunks":1}"#, None),
        &cancel,
    )
    .await;
    assert_eq!(class(&cancelled.0), "cancelled");
    assert_eq!(node.run(&slow, "default", quick).await, "ok");
    assert_eq!(node.counts(), counts(3, 2, 1));
    // A trap.
    let trap = node.load("bad-trap");
    assert_eq!(node.run(&trap, "default", "{}").await, "trap");
    assert_eq!(node.run(&trap, "default", "{}").await, "trap");
    assert_eq!(node.counts(), counts(5, 2, 1), "a trapped instance is never reused");
}

#[tokio::test]
async fn an_instance_whose_memory_grew_or_that_kept_a_handle_is_not_kept() {
    let node = Node::new(100, 8, "");
    let flaky = node.load("flaky");
    let succeed = r#"{"succeed_on_attempt":1}"#;
    assert_eq!(node.run(&flaky, "default", succeed).await, "ok");
    // 8 MiB of payload to parse: the guest's heap grows past its initial memory.
    let big = serde_json::json!({ "succeed_on_attempt": 1, "blob": "x".repeat(8 << 20) }).to_string();
    assert_eq!(node.run(&flaky, "default", &big).await, "ok");
    assert_eq!(node.counts(), counts(1, 1, 0), "a grown instance is dropped");
    assert_eq!(node.run(&flaky, "default", succeed).await, "ok");
    assert_eq!(node.counts(), counts(2, 1, 1));

    let greedy = node.load("bad-greedy");
    let leak = |stdout: u32, pollables: u32, networks: u32| {
        format!(r#"{{"want":"leak","stdout":{stdout},"pollables":{pollables},"networks":{networks}}}"#)
    };
    assert_eq!(node.run(&greedy, "default", &leak(1, 0, 0)).await, "ok");
    assert_eq!(node.run(&greedy, "default", &leak(0, 0, 0)).await, "ok");
    assert_eq!(node.counts(), counts(3, 2, 2), "stdio streams may stay");
    // One stream more than after its first job: a leak, not a cached stream.
    assert_eq!(node.run(&greedy, "default", &leak(1, 0, 0)).await, "ok");
    assert_eq!(node.counts(), counts(3, 3, 1), "it ran there, and was dropped");
    // The same for a pollable.
    assert_eq!(node.run(&greedy, "default", &leak(0, 0, 0)).await, "ok");
    assert_eq!(node.run(&greedy, "default", &leak(0, 1, 0)).await, "ok");
    assert_eq!(node.counts(), counts(4, 4, 1));
    // Anything but streams and pollables sends it away at once, even from
    // its first job.
    assert_eq!(node.run(&greedy, "default", &leak(0, 0, 1)).await, "ok");
    assert_eq!(node.counts(), counts(5, 4, 1));
}

#[tokio::test]
async fn jobs_per_instance_bounds_reuse() {
    let fresh_every_time = Node::new(1, 8, "");
    let echo = fresh_every_time.load("echo");
    for _ in 0..3 {
        assert_eq!(fresh_every_time.run(&echo, "default", "{}").await, "ok");
    }
    assert_eq!(fresh_every_time.counts(), counts(3, 0, 0));

    let three = Node::new(3, 8, "");
    let echo = three.load("echo");
    for _ in 0..7 {
        assert_eq!(three.run(&echo, "default", "{}").await, "ok");
    }
    assert_eq!(three.counts(), counts(3, 4, 1), "instances of 3, 3 and 1 jobs");
}

#[tokio::test]
async fn kept_instances_give_their_pool_slots_to_fresh_ones() {
    const THREE_TENANTS: &str = r#"
[tenants.a]
capabilities = ["log", "stream"]
[tenants.b]
capabilities = ["log", "stream"]
[tenants.c]
capabilities = ["log", "stream"]
"#;
    let node = Node::new(100, 2, THREE_TENANTS);
    let slow = node.load("slow");
    let quick = r#"{"ms":0,"chunks":1}"#;
    assert_eq!(node.run(&slow, "a", quick).await, "ok");
    assert_eq!(
        node.counts(),
        counts(1, 0, 1),
        "a's instance kept in one of the two slots"
    );
    // Two jobs at once need both slots: the second to start drops a's.
    let long = r#"{"ms":300,"chunks":3}"#;
    let (b, c) = tokio::join!(node.run(&slow, "b", long), node.run(&slow, "c", long));
    assert_eq!((b, c), ("ok", "ok"));
    // At most half the slots stay kept.
    assert_eq!(node.counts(), counts(3, 0, 1));
    assert_eq!(node.run(&slow, "a", quick).await, "ok");
    assert_eq!(node.counts(), counts(4, 0, 1), "a's instance had made room");
}
