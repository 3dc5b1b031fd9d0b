//! The sandbox against real components from `guests/`: what each guest does,
//! how each misbehaving guest is stopped (and that the node carries on),
//! capability refusal before start, component validation, the compiled
//! cache, cancellation and pool exhaustion.

use std::time::Duration;

use citadel_runtime::components::ComponentError;
use citadel_runtime::sandbox::joblog::Source;
use citadel_runtime::{Allocation, ComponentStore, JobError, SandboxEngine};
use citadel_tests::{class, executor, guest, job, load, run, run_cancellable, sandbox_config, shared_store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn result(report: &citadel_runtime::JobReport) -> &Value {
    match &report.outcome {
        Ok(value) => value,
        Err(err) => panic!("job failed ({}): {err}", err.class()),
    }
}

/// The node is still healthy: a trivial job still runs.
async fn echo_still_works() {
    let (report, chunks) = run(
        &executor(""),
        &load("echo"),
        job("default", r#"{"text":"still here"}"#, None),
    )
    .await;
    assert_eq!(class(&report), "ok");
    assert_eq!(chunks.len(), 2);
}

/// Span names opened while it is the thread's subscriber.
#[derive(Clone, Default)]
struct SpanNames(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanNames {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.lock().unwrap().push(attrs.metadata().name().to_string());
    }
}

#[tokio::test]
async fn each_job_and_each_host_call_has_its_span() {
    use tracing_subscriber::layer::SubscriberExt;
    let names = SpanNames::default();
    let subscriber = tracing_subscriber::registry()
        .with(names.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    let _default = tracing::subscriber::set_default(subscriber);
    let (report, chunks) = run(
        &executor(""),
        &load("echo"),
        job("default", r#"{"text":"a b c"}"#, None),
    )
    .await;
    assert_eq!(class(&report), "ok");
    assert_eq!(chunks.len(), 3);
    let names = names.0.lock().unwrap().clone();
    assert_eq!(names.iter().filter(|name| *name == "job.run").count(), 1, "{names:?}");
    assert_eq!(
        names.iter().filter(|name| *name == "cap.stream.emit").count(),
        3,
        "one span per emit: {names:?}"
    );
}

#[tokio::test]
async fn echo_streams_each_word_and_returns_the_payload() {
    let payload = r#"{"text":"  the quick\tbrown\nfox ","n":1}"#;
    let (report, chunks) = run(&executor(""), &load("echo"), job("default", payload, None)).await;
    assert_eq!(result(&report), &json!({"text": "  the quick\tbrown\nfox ", "n": 1}));
    let words: Vec<(u32, &str)> = chunks
        .iter()
        .map(|chunk| (chunk.index, chunk.content.as_str()))
        .collect();
    assert_eq!(words, vec![(0, "the"), (1, "quick"), (2, "brown"), (3, "fox")]);
    assert_eq!(report.chunks, 4);
}

#[tokio::test]
async fn extract_html_gives_title_text_links_and_bounded_chunks() {
    let html = r#"<!doctype html><html><head><title> Release  notes </title><style>p{}</style></head>
        <body><h1>Citadel 0.1</h1><p>Runs <a href="https://example.com/wasm">WebAssembly handlers</a> under hard limits.</p>
        <script>alert("not text")</script><ul><li>one</li><li>two <a href="/docs">docs</a></li></ul></body></html>"#;
    let payload = json!({"content": html, "format": "html", "chunk_chars": 16}).to_string();
    let (report, chunks) = run(&executor(""), &load("extract"), job("default", &payload, None)).await;
    let out = result(&report);
    assert_eq!(out["title"], "Release notes");
    assert_eq!(
        out["text"],
        "Citadel 0.1\nRuns WebAssembly handlers under hard limits.\none\ntwo docs"
    );
    assert_eq!(out["word_count"], 11);
    assert_eq!(
        out["links"],
        json!([{"href": "https://example.com/wasm", "text": "WebAssembly handlers"}, {"href": "/docs", "text": "docs"}])
    );
    assert_eq!(out["chunk_count"], chunks.len());
    assert!(
        chunks.iter().all(|chunk| chunk.content.chars().count() <= 16),
        "{chunks:?}"
    );
    let rejoined: Vec<&str> = chunks.iter().flat_map(|chunk| chunk.content.split(' ')).collect();
    let words: Vec<&str> = out["text"].as_str().unwrap().split_whitespace().collect();
    assert_eq!(rejoined, words, "chunks cut on word boundaries and lose no word");
    let logged = report
        .log
        .iter()
        .find(|record| record.message == "document extracted")
        .expect("summary logged");
    assert!(
        logged.fields.contains(&("words".to_string(), "11".to_string())),
        "{logged:?}"
    );
}

#[tokio::test]
async fn extract_markdown_and_text() {
    let markdown = "# Guide\n\nRead [the spec](https://spec.example/wit) and `citadel run`.\n\n## Next\n\n- item one\n";
    let payload = json!({"content": markdown, "format": "markdown"}).to_string();
    let (report, chunks) = run(&executor(""), &load("extract"), job("default", &payload, None)).await;
    let out = result(&report);
    assert_eq!(out["title"], "Guide");
    assert_eq!(out["text"], "Guide\nRead the spec and citadel run.\nNext\nitem one");
    assert_eq!(
        out["links"],
        json!([{"href": "https://spec.example/wit", "text": "the spec"}])
    );
    assert_eq!(chunks.len(), 1, "default chunk size holds the whole text");

    let text = "Field report\n\nsee https://example.org/a, then https://example.org/b.\n";
    let payload = json!({"content": text, "format": "text", "chunk_chars": 5}).to_string();
    let (report, chunks) = run(&executor(""), &load("extract"), job("default", &payload, None)).await;
    let out = result(&report);
    assert_eq!(out["title"], "Field report");
    assert_eq!(out["links"].as_array().unwrap().len(), 2);
    assert_eq!(out["links"][0]["href"], "https://example.org/a");
    // A word longer than chunk_chars is cut inside the word, never past the cap.
    assert!(
        chunks.iter().all(|chunk| chunk.content.chars().count() <= 5),
        "{chunks:?}"
    );
    assert!(chunks.iter().any(|chunk| chunk.content == "https"), "{chunks:?}");
}

#[tokio::test]
async fn ticker_stamps_each_chunk_with_its_emit_time() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let payload = r#"{"chunks":5,"interval_us":200}"#;
    let (report, chunks) = run(&executor(""), &load("ticker"), job("default", payload, None)).await;
    assert_eq!(result(&report), &json!({"chunks": 5}));
    let stamps: Vec<u128> = chunks.iter().map(|chunk| chunk.content.parse().unwrap()).collect();
    assert_eq!(stamps.len(), 5);
    assert!(stamps[0] >= before, "stamps are wall-clock nanoseconds");
    assert!(stamps.windows(2).all(|pair| pair[1] >= pair[0] + 200_000), "{stamps:?}");
}

#[tokio::test]
async fn slow_and_flaky_report_their_attempt() {
    let mut flaky = job("default", r#"{"succeed_on_attempt":2}"#, None);
    let (report, _) = run(&executor(""), &load("flaky"), flaky.clone()).await;
    assert_eq!(class(&report), "unavailable");
    assert!(report.outcome.unwrap_err().recoverable());
    flaky.attempt = 2;
    let (report, _) = run(&executor(""), &load("flaky"), flaky).await;
    assert_eq!(result(&report), &json!({"attempt": 2}));

    let (report, chunks) = run(
        &executor(""),
        &load("slow"),
        job("default", r#"{"ms":60,"chunks":3}"#, None),
    )
    .await;
    assert_eq!(result(&report), &json!({"slept_ms": 60, "attempt": 1}));
    let steps: Vec<&str> = chunks.iter().map(|chunk| chunk.content.as_str()).collect();
    assert_eq!(steps, ["step 0", "step 1", "step 2"]);
    assert!(report.elapsed >= Duration::from_millis(60));
}

#[tokio::test]
async fn extract_rejects_malformed_input() {
    let cases = [
        "not json",
        r#"{"format":"html"}"#,
        r#"{"content":"x","format":"pdf"}"#,
        r#"{"content":"x","format":"text","chunk_chars":0}"#,
        r#"{"content":"x","format":"text","colour":"blue"}"#,
    ];
    for payload in cases {
        let (report, chunks) = run(&executor(""), &load("extract"), job("default", payload, None)).await;
        assert_eq!(class(&report), "invalid_input", "payload {payload}");
        assert!(chunks.is_empty());
    }
}

#[tokio::test]
async fn misbehaving_guests_fail_their_own_job_with_the_right_class() {
    let short = Some(Duration::from_millis(300));
    let cases = [
        ("bad-spin", "{}", "deadline"),
        ("bad-hog", "{}", "memory_limit"),
        ("bad-recurse", "{}", "stack_overflow"),
        ("bad-flood", r#"{"mode":"chunks"}"#, "output_limit"),
        ("bad-flood", r#"{"mode":"output"}"#, "output_limit"),
        ("bad-trap", "{}", "trap"),
        ("bad-sneaky", "{}", "capability_refused"),
        ("bad-greedy", r#"{"want":"random"}"#, "resource_limit"),
        ("bad-greedy", r#"{"want":"handles"}"#, "resource_limit"),
    ];
    for (name, payload, expected) in cases {
        let (report, _) = run(&executor(""), &load(name), job("default", payload, short)).await;
        assert_eq!(class(&report), expected, "{name} {payload}: {:?}", report.outcome);
        echo_still_works().await;
    }
}

#[tokio::test]
async fn failures_say_what_happened() {
    let (report, _) = run(&executor(""), &load("bad-trap"), job("default", "{}", None)).await;
    let message = report.outcome.unwrap_err().to_string();
    assert!(
        message.contains("bad-trap was asked to fail on job test-job"),
        "{message}"
    );

    let (report, _) = run(&executor(""), &load("bad-hog"), job("default", "{}", None)).await;
    assert_eq!(report.outcome.unwrap_err(), JobError::MemoryLimit { limit_mib: 64 });

    let (report, _) = run(
        &executor(""),
        &load("bad-greedy"),
        job("default", r#"{"want":"random"}"#, None),
    )
    .await;
    assert_eq!(
        report.outcome.unwrap_err().to_string(),
        "resource limit exceeded: the guest asked wasi:random for 1099511627776 bytes in one call; a job may ask for 16777216 at most"
    );
    let (report, _) = run(
        &executor(""),
        &load("bad-greedy"),
        job("default", r#"{"want":"handles"}"#, None),
    )
    .await;
    assert_eq!(
        report.outcome.unwrap_err().to_string(),
        "resource limit exceeded: the guest held more than 10000 host resource handles at once (streams, responses, completions it never dropped)"
    );

    let (report, chunks) = run(&executor(""), &load("bad-flood"), job("default", "{}", None)).await;
    match report.outcome.unwrap_err() {
        JobError::OutputLimit { limit, attempted } => {
            assert_eq!(limit, 1 << 20);
            assert!(attempted > limit);
        }
        other => panic!("expected output limit, got {other:?}"),
    }
    let streamed: usize = chunks.iter().map(|chunk| chunk.content.len()).sum();
    assert!(
        streamed as u64 <= 1 << 20,
        "nothing past the cap reached the stream ({streamed} bytes)"
    );
    assert!(
        chunks.iter().all(|chunk| chunk.content.len() <= 64 << 10),
        "no chunk over max_chunk_bytes"
    );
}

#[tokio::test]
async fn ungranted_capability_is_refused_before_the_component_runs() {
    let (report, chunks) = run(&executor(""), &load("bad-sneaky"), job("acme", "{}", None)).await;
    let message = report.outcome.as_ref().unwrap_err().to_string();
    assert!(
        message.contains("inference") && message.contains("tenant `default`"),
        "{message}"
    );
    assert!(chunks.is_empty() && report.log.is_empty(), "nothing ran");

    // A tenant that only lacks `stream` cannot run echo either.
    let (report, _) = run(
        &executor("[tenants.quiet]\ncapabilities = [\"log\"]\n"),
        &load("echo"),
        job("quiet", "{}", None),
    )
    .await;
    let message = report.outcome.unwrap_err().to_string();
    assert!(
        message.contains("[stream]") && message.contains("tenant `quiet`"),
        "{message}"
    );

    // Granted: it runs, and the call answers that this node has no engine.
    let policy = "[tenants.acme]\ncapabilities = [\"log\", \"stream\", \"inference\"]\ninference.models = [\"*\"]\n";
    let (report, _) = run(&executor(policy), &load("bad-sneaky"), job("acme", "{}", None)).await;
    let message = report.outcome.unwrap_err().to_string();
    assert!(message.contains("this node has no inference engines"), "{message}");
}

#[tokio::test]
async fn the_sandbox_inherits_nothing_from_the_node() {
    // A live port on loopback: the guest must not reach it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let payload = json!({"connect": listener.local_addr().unwrap().to_string()}).to_string();
    // The check means something: the node's own environment is not empty.
    assert!(std::env::vars().next().is_some());
    let (report, _) = run(&executor(""), &load("bad-snoop"), job("default", &payload, None)).await;
    let found = result(&report);
    assert_eq!(found["env"], json!([]), "no environment variables");
    assert_eq!(found["args"], json!([]), "no arguments");
    for door in ["read_root", "read_passwd", "write_tmp", "connect"] {
        assert!(found[door]["error"].is_string(), "{door} must fail: {found}");
    }
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "no connection arrived"
    );
    let said: Vec<(Source, &str)> = report
        .log
        .iter()
        .map(|record| (record.source, record.message.as_str()))
        .collect();
    assert!(said.contains(&(Source::Stdout, "snooping on job test-job")), "{said:?}");
    assert!(said.contains(&(Source::Stderr, "stderr is captured too")), "{said:?}");
}

#[tokio::test]
async fn a_stdout_flood_is_cut_in_the_log_not_fatal() {
    let (report, _) = run(
        &executor(""),
        &load("bad-flood"),
        job("default", r#"{"mode":"stdout"}"#, None),
    )
    .await;
    assert_eq!(result(&report), &json!("printed"));
    let kept: usize = report
        .log
        .iter()
        .filter(|record| record.source == Source::Stdout)
        .map(|r| r.message.len())
        .sum();
    assert!(kept > 0 && kept <= 64 << 10, "kept {kept} bytes");
    let note = report.log.last().unwrap();
    assert_eq!(note.source, Source::Node);
    assert!(note.message.starts_with("log cut:"), "{}", note.message);
}

#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_does_not_hold_up_other_jobs() {
    // One thread only: echo can finish only if the spinning guest yields.
    let executor = executor("");
    let spin = load("bad-spin");
    let echo = load("echo");
    let spinning = run(&executor, &spin, job("default", "{}", Some(Duration::from_secs(5))));
    let echoing = run(&executor, &echo, job("default", r#"{"text":"prompt"}"#, None));
    tokio::pin!(spinning);
    let (echo_report, _) = tokio::select! {
        echoed = echoing => echoed,
        _ = &mut spinning => panic!("bad-spin ended before echo did"),
    };
    assert_eq!(class(&echo_report), "ok");
    let (spin_report, _) = spinning.await;
    assert_eq!(class(&spin_report), "deadline");
    assert!(
        spin_report.elapsed >= Duration::from_secs(5),
        "stopped at its deadline, not before"
    );
}

#[tokio::test]
async fn cancelling_stops_a_running_job() {
    // A generous output budget and a slow chunk rate keep bad-flood running
    // until it is cancelled.
    let slow = executor(
        "[tenants.slow]\ncapabilities = [\"stream\"]\nmax_output_bytes = 1073741824\nmax_chunks_per_second = 20\n",
    );
    let flood = load("bad-flood");
    let cancel = CancellationToken::new();
    let (sink, mut chunks) = tokio::sync::mpsc::channel(16);
    let running = {
        let cancel = cancel.clone();
        async move { slow.run(&flood, job("slow", "{}", None), Some(sink), &cancel).await }
    };
    let handle = tokio::spawn(running);
    let first = chunks.recv().await.expect("the job started streaming");
    assert_eq!(first.index, 0);
    cancel.cancel();
    while chunks.recv().await.is_some() {}
    let report = handle.await.unwrap();
    assert_eq!(class(&report), "cancelled");

    // Cancelled before it starts: nothing runs.
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let (report, chunks) = run_cancellable(
        &executor(""),
        &load("echo"),
        job("default", r#"{"text":"a"}"#, None),
        &cancelled,
    )
    .await;
    assert_eq!(class(&report), "cancelled");
    assert!(chunks.is_empty());
}

#[tokio::test]
async fn invalid_components_get_clear_errors() {
    let store = shared_store();
    let err = store
        .load(b"#!/bin/sh\necho definitely not wasm\n")
        .err()
        .expect("text refused");
    assert!(matches!(err, ComponentError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("not a WebAssembly binary"), "{err}");

    let core = wat::parse_str("(module (func (export \"handle\")))").unwrap();
    let err = store.load(&core).err().expect("core module refused");
    assert!(
        err.to_string().contains("core WebAssembly module, not a component"),
        "{err}"
    );

    let empty = wat::parse_str("(component)").unwrap();
    let err = store.load(&empty).err().expect("no handle export");
    assert!(err.to_string().contains("does not export a `handle` function"), "{err}");

    let wrong_type = wat::parse_str(
        r#"(component
             (core module $m (func (export "f") (result i32) i32.const 7))
             (core instance $i (instantiate $m))
             (func (export "handle") (result u32) (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let component = store
        .load(&wrong_type)
        .expect("a valid component with the wrong signature loads");
    let (report, _) = run(&executor(""), &component, job("default", "{}", None)).await;
    let message = report.outcome.unwrap_err().to_string();
    assert!(message.contains("does not fit the handler world"), "{message}");

    let foreign = wat::parse_str(r#"(component (import "acme:secrets/vault@1.0.0" (instance)))"#).unwrap();
    let err = store.load(&foreign).err().expect("unknown import refused");
    assert!(err.to_string().contains("acme:secrets/vault@1.0.0"), "{err}");

    let echo = std::fs::read(guest("echo")).unwrap();
    let err = store
        .load(&echo[..echo.len() / 2])
        .err()
        .expect("truncated component refused");
    assert!(matches!(err, ComponentError::Invalid { .. }), "{err}");
}

#[test]
fn second_load_of_a_component_is_served_from_the_compiled_cache() {
    let cache = tempfile::tempdir().unwrap();
    let config = sandbox_config(Some(cache.path()));
    let fresh_store = || {
        let engine = SandboxEngine::new(&config, Allocation::Pooling).unwrap();
        ComponentStore::new(engine, Some(cache.path())).unwrap()
    };
    let first = fresh_store();
    let loaded = first.load_file(&guest("extract")).unwrap();
    assert_eq!((first.stats().compiled, first.stats().from_disk), (1, 0));
    let artifacts: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(artifacts.len(), 1);
    let name = artifacts[0].to_string_lossy().into_owned();
    assert!(
        name.starts_with(&loaded.digest.hex()) && name.ends_with(".cwasm"),
        "{name}"
    );
    first.load_file(&guest("extract")).unwrap();
    assert_eq!(first.stats().from_memory, 1);

    // A new process (a new store on the same cache) deserializes instead of compiling.
    let second = fresh_store();
    let again = second.load_file(&guest("extract")).unwrap();
    assert_eq!((second.stats().compiled, second.stats().from_disk), (0, 1));
    assert_eq!(again.digest, loaded.digest);

    // A damaged artifact is discarded and recompiled, never trusted.
    std::fs::write(cache.path().join(&name), b"garbage").unwrap();
    let third = fresh_store();
    third.load_file(&guest("extract")).unwrap();
    assert_eq!((third.stats().compiled, third.stats().from_disk), (1, 0));
}

#[tokio::test]
async fn a_full_instance_pool_is_a_capacity_error_not_a_crash() {
    let config = citadel_runtime::SandboxConfig {
        max_instances: 1,
        ..sandbox_config(None)
    };
    let engine = SandboxEngine::new(&config, Allocation::Pooling).unwrap();
    let store = std::sync::Arc::new(ComponentStore::new(engine, None).unwrap());
    let executor = citadel_runtime::Executor::new(store.clone(), citadel_runtime::Policy::default());
    let spin = store.load_file(&guest("bad-spin")).unwrap();
    let echo = store.load_file(&guest("echo")).unwrap();
    let cancel = CancellationToken::new();
    let (sink, _chunks) = tokio::sync::mpsc::channel(1);
    let spinning = executor.run(
        &spin,
        job("default", "{}", Some(Duration::from_secs(30))),
        Some(sink),
        &cancel,
    );
    tokio::pin!(spinning);
    // Let the spinning job take the only slot, then try another job.
    let busy = tokio::select! {
        biased;
        _ = &mut spinning => panic!("bad-spin ended early"),
        report = async {
            tokio::task::yield_now().await;
            run(&executor, &echo, job("default", "{}", None)).await.0
        } => report,
    };
    assert_eq!(class(&busy), "capacity");
    assert!(busy.outcome.as_ref().unwrap_err().recoverable());
    cancel.cancel();
    assert_eq!(class(&spinning.await), "cancelled");
    let (after, _) = run(&executor, &echo, job("default", "{}", None)).await;
    assert_eq!(class(&after), "ok", "the slot is free again");
}
