//! The inference engine clients against the real llama.cpp test engine
//! (SmolLM2-135M, deterministic at temperature 0), Ollama's wire format
//! through an emulator fed with that engine's real tokens, and every fault a
//! misbehaving engine can inject. Generation tests share one engine and are
//! few: one CPU thread decodes ~50 tokens/s here.

use std::time::{Duration, Instant};

use citadel_tests::*;
use citadel_transports::engines::{
    Engine, EngineConfig, EngineError, EngineKind, Finish, GenerationRequest, Input, Message, TokenStream,
};
use serde_json::Value;

fn engine(kind: EngineKind, base_url: &str) -> Engine {
    Engine::new(EngineConfig {
        name: "local".into(),
        kind,
        base_url: base_url.into(),
        token_timeout: Duration::from_secs(60),
        max_bytes_without_token: 1 << 20,
    })
    .unwrap()
}

fn chat(text: &str, max_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        model: "smollm2".into(),
        input: Input::Messages(vec![Message {
            role: "user".into(),
            content: text.into(),
        }]),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        top_p: None,
        stop: Vec::new(),
    }
}

/// Every token, then how it finished.
async fn drain(mut stream: TokenStream) -> (Vec<String>, Finish) {
    let mut tokens = Vec::new();
    while let Some(token) = stream.next().await.expect("a token") {
        tokens.push(token);
    }
    (tokens, stream.finish().expect("finished"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_streams_real_tokens_deterministically_with_usage() {
    let llm = LlmEngine::shared();
    let engine = engine(EngineKind::OpenAi, &llm.url());
    engine.health().await.expect("healthy");
    let stream = engine.generate(&chat("Say hi", 8)).await.unwrap();
    let (tokens, finish) = drain(stream).await;
    assert_eq!(tokens.len(), 8, "{tokens:?}");
    assert_eq!(finish.reason, "length");
    let usage = finish.usage.expect("usage");
    assert_eq!(usage.completion_tokens, 8);
    assert!(usage.prompt_tokens > 0);
    // Temperature 0: the same text again.
    let (again, _) = drain(engine.generate(&chat("Say hi", 8)).await.unwrap()).await;
    assert_eq!(again.concat(), tokens.concat());
    println!("chat: {:?}", tokens.concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_completion_of_a_prompt() {
    let engine = engine(EngineKind::OpenAi, &LlmEngine::shared().url());
    let request = GenerationRequest {
        input: Input::Prompt("The capital of France is".into()),
        stop: vec!["\n".into()],
        ..chat("", 12)
    };
    let mut stream = engine.generate(&request).await.unwrap();
    let mut text = String::new();
    while let Some(token) = stream.next().await.unwrap() {
        text.push_str(&token);
    }
    assert!(text.contains("Paris"), "{text:?}");
    assert!(stream.time_to_first_token().is_some());
    assert_eq!(stream.finish().unwrap().reason, "stop", "the stop sequence ended it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_wire_format_through_the_emulator_gives_the_same_tokens() {
    let llm = LlmEngine::shared();
    let emulator = ollama_emulator(llm.url(), &["smollm2"]).await;
    let ollama = engine(EngineKind::Ollama, &emulator);
    ollama.health().await.expect("healthy");
    let (tokens, finish) = drain(ollama.generate(&chat("Say hi", 8)).await.unwrap()).await;
    let (direct, _) = drain(
        engine(EngineKind::OpenAi, &llm.url())
            .generate(&chat("Say hi", 8))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tokens.concat(), direct.concat());
    assert_eq!(finish.reason, "length");
    assert_eq!(finish.usage.unwrap().completion_tokens, 8);
    // /api/generate for prompts.
    let request = GenerationRequest {
        input: Input::Prompt("The capital of France is".into()),
        ..chat("", 6)
    };
    let (tokens, _) = drain(ollama.generate(&request).await.unwrap()).await;
    assert!(tokens.concat().contains("Paris"), "{tokens:?}");
    // An unknown model: Ollama's 404.
    let unknown = GenerationRequest {
        model: "llama3.2".into(),
        ..chat("hi", 4)
    };
    let err = ollama.generate(&unknown).await.err().unwrap();
    assert_eq!(
        err,
        EngineError::Rejected {
            engine: "local".into(),
            status: 404,
            message: "model \"llama3.2\" not found, try pulling it first".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_engine_refuses_is_rejected_with_its_message() {
    let engine = engine(EngineKind::OpenAi, &LlmEngine::shared().url());
    // Far more than the 2048-token context.
    let long = "lorem ipsum ".repeat(3000);
    let err = engine.generate(&chat(&long, 4)).await.err().expect("refused");
    match err {
        EngineError::Rejected {
            status: 400, message, ..
        } => assert!(message.contains("context"), "{message}"),
        other => panic!("expected a 400 rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_is_down_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let engine = engine(EngineKind::OpenAi, &format!("http://127.0.0.1:{port}"));
    let err = engine.generate(&chat("hi", 4)).await.err().unwrap();
    assert!(
        matches!(&err, EngineError::Unavailable { reason, .. } if reason.contains("Connection refused")),
        "{err}"
    );
    assert!(matches!(engine.health().await, Err(EngineError::Unavailable { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_stream_ends_the_stream_with_a_clear_error() {
    let mut llm = LlmEngine::start(1);
    let engine = engine(EngineKind::OpenAi, &llm.url());
    let mut stream = engine
        .generate(&chat("Write a long story about a dragon.", 400))
        .await
        .unwrap();
    for _ in 0..3 {
        stream.next().await.unwrap().expect("a token");
    }
    llm.kill();
    let started = Instant::now();
    let err = loop {
        match stream.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("finished although the engine was killed"),
            Err(err) => break err,
        }
    };
    assert!(matches!(err, EngineError::Interrupted { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "noticed at once");
    println!("{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_stops_the_generation() {
    // One slot: a second request waits for the first generation to end.
    let llm = LlmEngine::start(1);
    let engine = engine(EngineKind::OpenAi, &llm.url());
    let mut long = engine
        .generate(&chat("Write a long story about a dragon.", 1500))
        .await
        .unwrap();
    long.next().await.unwrap().expect("a token");
    assert_eq!(llm.generating().await, 1, "the engine's one slot generates");
    drop(long);
    // The engine's slot is freed: llama.cpp's own `/slots` says so (had the
    // generation gone on, it would stay busy for ~30 s of 1500 tokens).
    eventually_some(
        Duration::from_secs(10),
        "the dropped stream's slot to be freed",
        || async { (llm.generating().await == 0).then_some(()) },
    )
    .await;
    let (tokens, _) = drain(engine.generate(&chat("Say hi", 4)).await.unwrap()).await;
    assert_eq!(tokens.len(), 4);
}

async fn fault(misbehaviour: Misbehaviour) -> EngineError {
    let url = misbehaving_engine(misbehaviour).await;
    let engine = Engine::new(EngineConfig {
        name: "bad".into(),
        kind: EngineKind::OpenAi,
        base_url: url,
        token_timeout: Duration::from_millis(500),
        max_bytes_without_token: 64 * 1024,
    })
    .unwrap();
    let mut stream = engine.generate(&chat("hi", 4)).await.unwrap();
    let started = Instant::now();
    let err = loop {
        match stream.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("{misbehaviour:?} ended as a success"),
            Err(err) => break err,
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{misbehaviour:?} was not bounded"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_engine_output_ends_in_a_bounded_clear_error() {
    let garbage = fault(Misbehaviour::Garbage).await;
    assert!(
        matches!(&garbage, EngineError::Malformed { reason, .. } if reason.starts_with("not JSON") && reason.contains("502 Bad Gateway")),
        "{garbage}"
    );
    let truncated = fault(Misbehaviour::TruncatedJson).await;
    assert!(
        matches!(&truncated, EngineError::Malformed { reason, .. } if reason.starts_with("not JSON")),
        "{truncated}"
    );
    let cut = fault(Misbehaviour::CutShort).await;
    assert!(matches!(cut, EngineError::Interrupted { .. }), "{cut}");
    let endless = fault(Misbehaviour::Endless).await;
    assert_eq!(
        endless,
        EngineError::Stalled {
            engine: "bad".into(),
            waited: Duration::from_millis(500)
        }
    );
    let flood = fault(Misbehaviour::Flood).await;
    assert!(
        matches!(&flood, EngineError::Malformed { reason, .. } if reason.contains("without a token")),
        "{flood}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_are_services_in_status_and_a_dead_one_is_published_at_once() {
    let redis = RedisServer::start();
    let mut llm = LlmEngine::start(1);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = worker_config(&redis);
    config.telemetry.status_interval_s = 600;
    config.telemetry.min_change_interval_ms = 100;
    config.telemetry.service_poll_ms = 200;
    let engine = |name: &str, url: String| citadel_runtime::config::EngineSettings {
        name: name.into(),
        kind: EngineKind::OpenAi,
        backend: None,
        base_url: url,
        models: vec!["smollm2".into()],
        max_concurrency: 2,
        timeout_ms: 2_000,
    };
    config.engines = vec![
        engine("llama", llm.url()),
        engine("ghost", format!("http://127.0.0.1:{dead_port}")),
    ];
    let mut subscriber = redis.conn();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe(format!("node:status:{NODE}")).unwrap();
    pubsub.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let node = TestWorker::start_node(&config).await;

    let health = |status: &Value, name: &str| -> Option<String> {
        status["status"]["services"]
            .as_array()?
            .iter()
            .find(|service| service["name"] == name)
            .map(|service| {
                format!(
                    "{}/{}",
                    service["status"].as_str().unwrap(),
                    service["health"].as_str().unwrap()
                )
            })
    };
    let first = next_status(&mut pubsub, |status| health(status, "llama").is_some());
    assert_eq!(health(&first, "llama").as_deref(), Some("running/ok"));
    assert_eq!(health(&first, "ghost").as_deref(), Some("error/unhealthy"));
    let llama = first["status"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "llama")
        .unwrap()
        .clone();
    assert_eq!(llama["type"], "inference");
    assert_eq!(llama["models"], serde_json::json!(["smollm2"]));
    assert!(llama["port"].is_u64());

    // The engine dies: published on change, not at the next 600 s interval.
    llm.kill();
    let killed_at = Instant::now();
    next_status(&mut pubsub, |status| {
        health(status, "llama").as_deref() == Some("error/unhealthy")
    });
    println!("an engine's death was published {:?} after it", killed_at.elapsed());
    node.stop().await;
}

/// The next status on `pubsub` that satisfies `wanted`.
fn next_status(pubsub: &mut redis::PubSub<'_>, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a status on the node's channel"
        );
        let Ok(message) = pubsub.get_message() else { continue };
        let status: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        if wanted(&status) {
            return status;
        }
    }
}

/// An engine that answers one generation on a connection, keeps the
/// connection alive, and then closes it when the next request arrives on it
/// (the race of a server closing an idle keep-alive connection just as the
/// client reuses it). Returns its URL and the count of connections it took.
async fn engine_closing_kept_connections() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
                            data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
                            data: [DONE]\n\n";
                let mut request = vec![0u8; 64 * 1024];
                // The first request (headers and a small JSON body in one read
                // on loopback) is answered; the next one on the connection is not.
                if socket.read(&mut request).await.unwrap_or(0) == 0 {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                socket.write_all(body.as_bytes()).await.unwrap();
                let _ = socket.read(&mut request).await;
                // Dropped: closed without an answer.
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn a_kept_alive_connection_the_engine_closed_is_retried_on_a_fresh_one() {
    let (url, connections) = engine_closing_kept_connections().await;
    let engine = engine(EngineKind::OpenAi, &url);
    for _ in 0..3 {
        let (tokens, finish) = drain(engine.generate(&chat("Say hi", 8)).await.expect("answered")).await;
        assert_eq!((tokens, finish.reason.as_str()), (vec!["Hi".to_string()], "stop"));
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "each later request found its connection closed and went again on a new one"
    );
}
