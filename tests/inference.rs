//! Capability `inference` end to end: the real `llm-chat` component on the
//! real llama.cpp test engine (SmolLM2-135M, temperature 0), with the
//! tenant's engine and model allowlists, the engine's concurrency, the job's
//! deadline and cancellation, an engine that dies mid-stream or is down,
//! and usage metered per tenant.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use citadel_runtime::capabilities::inference::{Engines, GenerationRecord, InferenceObserver};
use citadel_runtime::config::EngineSettings;
use citadel_runtime::{Executor, JobReport, Policy};
use citadel_tests::*;
use citadel_transports::engines::EngineKind;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const POLICY: &str = r#"
[tenants.acme]
capabilities = ["log", "stream", "inference"]
inference.models = ["smol*"]
inference.engines = ["llama", "ollama"]
timeout_ms = 120000
[tenants.narrow]
capabilities = ["log", "stream", "inference"]
inference.models = ["smollm2"]
inference.engines = ["ollama"]
"#;

/// One generation as reported: tenant, engine, outcome, (prompt, completion)
/// tokens, whether a first token was timed.
type Record = (String, String, String, Option<(u32, u32)>, bool);

/// What the engines reported, as the node's metrics would see it.
#[derive(Default)]
struct Recorded(Mutex<Vec<Record>>);

impl InferenceObserver for Recorded {
    fn generation(&self, record: &GenerationRecord<'_>) {
        self.0.lock().unwrap().push((
            record.tenant.into(),
            record.engine.into(),
            record.outcome.into(),
            record.usage.map(|usage| (usage.prompt_tokens, usage.completion_tokens)),
            record.time_to_first_token.is_some(),
        ));
    }
}

fn settings(name: &str, url: &str, models: &[&str]) -> EngineSettings {
    EngineSettings {
        name: name.into(),
        kind: EngineKind::OpenAi,
        backend: None,
        base_url: url.into(),
        models: models.iter().map(|model| model.to_string()).collect(),
        max_concurrency: 2,
        timeout_ms: 60_000,
    }
}

fn node(engines: Vec<EngineSettings>) -> (Executor, Arc<Recorded>) {
    let engines = Engines::from_config(&engines).unwrap();
    let recorded = Arc::new(Recorded::default());
    engines.observe(recorded.clone());
    let policy = Policy::from_toml(POLICY, "test policy").unwrap();
    (
        Executor::new(shared_store(), policy).with_engines(Arc::new(engines)),
        recorded,
    )
}

fn shared_node() -> (Executor, Arc<Recorded>) {
    node(vec![settings(
        "llama",
        &LlmEngine::shared().url(),
        &["smollm2", "llama3"],
    )])
}

fn say_hi(extra: Value) -> String {
    let mut payload = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "temperature": 0});
    payload
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    payload.to_string()
}

fn result_of(report: &JobReport) -> Value {
    report
        .outcome
        .as_ref()
        .unwrap_or_else(|err| panic!("job failed: {err}"))
        .clone()
}

fn failure(report: &JobReport) -> (String, String) {
    let err = report.outcome.as_ref().expect_err("the job fails");
    (err.class().to_string(), err.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_streams_real_tokens_as_chunks_with_usage() {
    let (executor, recorded) = shared_node();
    let (report, chunks) = run(&executor, &load("llm-chat"), job("acme", &say_hi(json!({})), None)).await;
    let result = result_of(&report);
    let streamed: String = chunks.iter().map(|chunk| chunk.content.as_str()).collect();
    assert_eq!(chunks.len(), 8, "one chunk per token");
    assert_eq!(result["content"], streamed);
    assert_eq!(result["finish_reason"], "length");
    assert_eq!(result["usage"]["completion_tokens"], 8);
    let prompt = result["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(result["usage"]["total_tokens"], prompt + 8);
    assert!(result["time_to_first_token_ms"].as_u64().unwrap() > 0);
    println!("streamed: {streamed:?}");
    // The pull path gives the same text (temperature 0), with no chunks.
    let (report, chunks) = run(
        &executor,
        &load("llm-chat"),
        job("acme", &say_hi(json!({"stream": false})), None),
    )
    .await;
    assert!(chunks.is_empty());
    assert_eq!(result_of(&report)["content"], streamed);
    // Streaming through the guest (pull, then emit each token): the same chunks.
    let (report, chunks) = run(
        &executor,
        &load("llm-chat"),
        job("acme", &say_hi(json!({"splice": false})), None),
    )
    .await;
    assert_eq!(
        chunks.iter().map(|chunk| chunk.content.as_str()).collect::<String>(),
        streamed
    );
    assert_eq!(result_of(&report)["content"], streamed);
    // Metered for the tenant.
    let recorded = recorded.0.lock().unwrap().clone();
    assert_eq!(recorded.len(), 3);
    for (tenant, engine, outcome, usage, first_token) in recorded {
        assert_eq!(
            (tenant.as_str(), engine.as_str(), outcome.as_str()),
            ("acme", "llama", "ok")
        );
        assert_eq!(usage, Some((prompt as u32, 8)));
        assert!(first_token);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_completes_through_the_completion_endpoint() {
    let (executor, _) = shared_node();
    let payload = json!({"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0, "stop": "\n"});
    let (report, chunks) = run(&executor, &load("llm-chat"), job("acme", &payload.to_string(), None)).await;
    let result = result_of(&report);
    assert!(result["content"].as_str().unwrap().contains("Paris"), "{result}");
    assert_eq!(result["finish_reason"], "stop");
    assert!(!chunks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_models_engines_and_unknown_engines_are_denied() {
    let (executor, recorded) = shared_node();
    let component = load("llm-chat");
    // A model the engine serves but the tenant's allowlist does not cover.
    let (report, _) = run(
        &executor,
        &component,
        job("acme", &say_hi(json!({"model": "llama3"})), None),
    )
    .await;
    assert_eq!(
        failure(&report),
        (
            "denied".into(),
            "handler returned denied: tenant `acme` may not use model `llama3` (inference.models)".into()
        )
    );
    // An engine outside the tenant's allowlist.
    let (report, _) = run(&executor, &component, job("narrow", &say_hi(json!({})), None)).await;
    assert_eq!(
        failure(&report).1,
        "handler returned denied: tenant `narrow` may not use engine `llama` (inference.engines)"
    );
    // An engine this node does not have: the guest cannot reach anything else.
    let serves = "engine `llama` (vllm|sglang|llamacpp: smollm2, llama3)";
    let (report, _) = run(
        &executor,
        &component,
        job("acme", &say_hi(json!({"engine": "10.0.0.7:8000"})), None),
    )
    .await;
    assert_eq!(
        failure(&report),
        (
            "denied".into(),
            format!(
                "handler returned denied: no engine named `10.0.0.7:8000` is configured on this node; it has {serves}"
            )
        )
    );
    // A backend (Citadel's engine kind) this node does not serve, and one
    // that is no backend at all.
    let (report, _) = run(
        &executor,
        &component,
        job("acme", &say_hi(json!({"backend": "ollama"})), None),
    )
    .await;
    assert_eq!(
        failure(&report),
        (
            "denied".into(),
            format!("handler returned denied: this node serves no `ollama` engine; it has {serves}")
        )
    );
    let (report, _) = run(
        &executor,
        &component,
        job("acme", &say_hi(json!({"backend": "tgi"})), None),
    )
    .await;
    assert_eq!(failure(&report).0, "invalid_input");
    assert!(failure(&report).1.contains("unknown backend `tgi`"), "{report:?}");
    // A tenant without the capability never runs the component.
    let (report, _) = run(&executor, &component, job("default", &say_hi(json!({})), None)).await;
    assert_eq!(failure(&report).0, "capability_refused");
    assert!(recorded.0.lock().unwrap().is_empty(), "nothing reached an engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_is_down_makes_the_job_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (executor, _) = node(vec![settings(
        "llama",
        &format!("http://127.0.0.1:{port}"),
        &["smollm2"],
    )]);
    let (report, _) = run(&executor, &load("llm-chat"), job("acme", &say_hi(json!({})), None)).await;
    let (class, message) = failure(&report);
    assert_eq!(class, "unavailable");
    assert!(
        message.contains("engine llama unavailable") && message.contains("Connection refused"),
        "{message}"
    );
    assert!(report.outcome.as_ref().unwrap_err().recoverable(), "retried later");
}

/// The engine's slot is freed (llama.cpp's own `/slots`: no generation
/// left running) and a short request is served again.
async fn engine_is_free(executor: &Executor, llm: &LlmEngine) {
    eventually_some(Duration::from_secs(10), "the engine's slot to be freed", || async {
        (llm.generating().await == 0).then_some(())
    })
    .await;
    let (report, _) = run(
        executor,
        &load("llm-chat"),
        job("acme", &say_hi(json!({"max_tokens": 4})), None),
    )
    .await;
    result_of(&report);
}

const LONG: &str = r#"{"model": "smollm2", "messages": [{"role": "user", "content": "Write a long story about a dragon."}], "max_tokens": 1500, "temperature": 0}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_and_cancellation_stop_a_generation_mid_stream() {
    let llm = LlmEngine::start(1);
    let (executor, recorded) = node(vec![settings("llama", &llm.url(), &["smollm2"])]);
    let component = load("llm-chat");

    // Deadline: 1500 tokens do not fit in 2 s.
    let (report, chunks) = run(&executor, &component, job("acme", LONG, Some(Duration::from_secs(2)))).await;
    assert_eq!(failure(&report).0, "deadline");
    assert!(!chunks.is_empty(), "tokens streamed until the deadline");
    engine_is_free(&executor, &llm).await;

    // Cancellation once the first tokens are out.
    let cancel = CancellationToken::new();
    let (first, streaming) = tokio::sync::oneshot::channel();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            streaming.await.expect("a first chunk");
            cancel.cancel();
        })
    };
    let (report, chunks) =
        run_telling_first_chunk(&executor, &component, job("acme", LONG, None), &cancel, Some(first)).await;
    canceller.await.unwrap();
    assert_eq!(failure(&report).0, "cancelled");
    assert!(!chunks.is_empty());
    engine_is_free(&executor, &llm).await;
    let outcomes: Vec<String> = recorded
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|record| record.2.clone())
        .collect();
    assert_eq!(outcomes, ["abandoned", "ok", "abandoned", "ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_stream_fails_the_job_with_a_clear_message() {
    let mut llm = LlmEngine::start(1);
    let (executor, _) = node(vec![settings("llama", &llm.url(), &["smollm2"])]);
    let (first, streaming) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(async move {
        let component = load("llm-chat");
        let never = CancellationToken::new();
        run_telling_first_chunk(&executor, &component, job("acme", LONG, None), &never, Some(first)).await
    });
    // Once it streams, kill the engine.
    streaming.await.expect("a first chunk");
    llm.kill();
    let (report, chunks) = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("ends promptly")
        .unwrap();
    assert!(!chunks.is_empty());
    let (class, message) = failure(&report);
    assert_eq!(class, "failed");
    assert!(message.contains("engine llama stopped mid-generation"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_inference_jobs_stream_real_tokens_through_redis() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    let _policy = with_policy(&mut config, POLICY);
    config.engines = vec![settings("llama", &LlmEngine::shared().url(), &["smollm2"])];
    // No [handlers] entry: with engines configured, `llm_inference` goes to
    // the built-in llm-chat (target/guests beside the binary's directory).
    assert!(!config.handlers.contains_key("llm_inference"));
    let node = WorkerProcess::start(&config);
    let payload = json!({
        "model": "smollm2", "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8, "temperature": 0, "organizationId": "acme"
    });
    let out = tokio::process::Command::new(citadel_bin())
        .args([
            "submit",
            "--redis-url",
            &redis.url(),
            "--wait-ms",
            "60000",
            "--type",
            "llm_inference",
        ])
        .args(["--payload", &payload.to_string(), "--follow"])
        .env_remove("CITADEL_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let chunks: String = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("chunk "))
        .map(|line| line.split_once(": ").map_or("", |(_, token)| token))
        .collect::<Vec<_>>()
        .join("");
    assert_eq!(
        stdout.lines().filter(|line| line.starts_with("chunk ")).count(),
        8,
        "{stdout}"
    );
    let (_, result) = stdout.split_once("result: ").expect("a result");
    let result: Value = serde_json::from_str(result).unwrap();
    assert_eq!(result["usage"]["completion_tokens"], 8);
    assert_eq!(result["finish_reason"], "length");
    // Tokens may start with a space, which the line format keeps.
    assert_eq!(
        result["content"].as_str().unwrap().replace(' ', ""),
        chunks.replace(' ', "")
    );
    assert!(node.log().contains("llm_inference"), "the ready line lists the handler");
    println!("{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ollama_engine_serves_jobs_in_its_own_wire_format() {
    // Ollama's API as an emulator (none can run here) on the real engine's tokens.
    let llm = LlmEngine::shared();
    let emulator = ollama_emulator(llm.url(), &["smollm2"]).await;
    let mut ollama = settings("ollama", &emulator, &["smollm2"]);
    ollama.kind = EngineKind::Ollama;
    let (executor, recorded) = node(vec![ollama]);
    let (report, chunks) = run(&executor, &load("llm-chat"), job("narrow", &say_hi(json!({})), None)).await;
    let result = result_of(&report);
    let (direct, _) = run(
        &shared_node().0,
        &load("llm-chat"),
        job("acme", &say_hi(json!({})), None),
    )
    .await;
    assert_eq!(
        result["content"],
        result_of(&direct)["content"],
        "the same tokens through either dialect"
    );
    assert_eq!(chunks.len(), 8);
    assert_eq!(result["usage"]["completion_tokens"], 8);
    let recorded = recorded.0.lock().unwrap().clone();
    assert_eq!(
        (recorded[0].0.as_str(), recorded[0].1.as_str(), recorded[0].2.as_str()),
        ("narrow", "ollama", "ok")
    );
}

/// The most slots of `llm` generating at once while `jobs` run side by side
/// on `executor`, sampled every 10 ms.
async fn most_generating_at_once(executor: &Executor, llm: &LlmEngine, jobs: usize) -> usize {
    let component = load("llm-chat");
    let payload = r#"{"model": "smollm2", "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 48, "temperature": 0}"#;
    let all = futures_util::future::join_all((0..jobs).map(|_| run(executor, &component, job("acme", payload, None))));
    tokio::pin!(all);
    let mut most = 0;
    loop {
        tokio::select! {
            reports = &mut all => {
                for (report, _) in reports {
                    result_of(&report);
                }
                return most;
            }
            generating = llm.generating() => most = most.max(generating),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engines_max_concurrency_queues_the_requests_beyond_it() {
    // An engine with two slots: the node may use both, or hold itself to one.
    let llm = LlmEngine::start(2);
    let (both, _) = node(vec![settings("llama", &llm.url(), &["smollm2"])]);
    assert_eq!(
        most_generating_at_once(&both, &llm, 2).await,
        2,
        "max_concurrency = 2 uses both slots"
    );
    let mut one = settings("llama", &llm.url(), &["smollm2"]);
    one.max_concurrency = 1;
    let (queued, recorded) = node(vec![one]);
    assert_eq!(
        most_generating_at_once(&queued, &llm, 2).await,
        1,
        "with max_concurrency = 1 the second request waits its turn"
    );
    let outcomes: Vec<String> = recorded
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|record| record.2.clone())
        .collect();
    assert_eq!(outcomes, ["ok", "ok"], "both served, neither refused");
}
