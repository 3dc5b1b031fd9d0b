//! Inference engines for tests: the real llama.cpp test engine
//! (`scripts/llm-engine`: llama.cpp's server with SmolLM2-135M, one thread),
//! an **emulator** of Ollama's API that re-frames that engine's real tokens
//! as Ollama's documented NDJSON (no real Ollama can run here), and a
//! **misbehaving engine** that injects faults (garbage, cut or endless
//! streams).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::free_port;
use crate::workspace;

/// A running llama.cpp test engine; killed when dropped.
pub struct LlmEngine {
    child: Option<Child>,
    port: u16,
}

impl LlmEngine {
    /// Start a private engine serving `parallel` requests at once and wait
    /// until it is healthy. It also exits when this test process does.
    pub fn start(parallel: u32) -> LlmEngine {
        let port = free_port();
        let child = Command::new(workspace().join("scripts/llm-engine"))
            .args(["--port", &port.to_string(), "--parallel", &parallel.to_string()])
            .args(["--parent-pid", &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn scripts/llm-engine");
        let engine = LlmEngine {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while !engine.healthy() {
            assert!(
                Instant::now() < deadline,
                "the llama.cpp test engine did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    /// The engine every test of this binary shares (two parallel slots).
    pub fn shared() -> &'static LlmEngine {
        static SHARED: OnceLock<LlmEngine> = OnceLock::new();
        SHARED.get_or_init(|| LlmEngine::start(2))
    }

    fn healthy(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        use std::io::{Read, Write};
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"GET /health HTTP/1.0\r\nhost: x\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200") && answer.contains(r#""status":"ok""#)
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many of its slots are generating now (llama.cpp's own `GET /slots`).
    pub async fn generating(&self) -> usize {
        let body = reqwest::get(format!("{}/slots", self.url()))
            .await
            .expect("GET /slots")
            .text()
            .await
            .expect("the slots");
        let slots: Value = serde_json::from_str(&body).expect("slots as JSON");
        slots
            .as_array()
            .expect("a list of slots")
            .iter()
            .filter(|slot| slot["is_processing"] == true)
            .count()
    }

    /// Kill it (SIGKILL) now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LlmEngine {
    fn drop(&mut self) {
        self.kill();
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// Serve `respond` on a free loopback port until the test process ends.
async fn serve<F, Fut>(respond: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let respond = respond.clone();
                    async move { Ok::<_, Infallible>(respond(request).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn full(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

/// An **emulator** of Ollama's API (`/api/version`, `/api/chat`,
/// `/api/generate`, streaming NDJSON as Ollama documents it), generating
/// with the real llama.cpp engine at `upstream`. Serves the models in
/// `models`; others get Ollama's 404 `model "…" not found`.
pub async fn ollama_emulator(upstream: String, models: &'static [&'static str]) -> String {
    let addr = serve(move |request: Request<hyper::body::Incoming>| {
        let upstream = upstream.clone();
        async move {
            let path = request.uri().path().to_string();
            if path == "/api/version" {
                return full(StatusCode::OK, "application/json", json!({"version": "0.12.0"}).to_string());
            }
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let model = body["model"].as_str().unwrap_or_default().to_string();
            if !models.contains(&model.as_str()) {
                let error = json!({"error": format!("model \"{model}\" not found, try pulling it first")});
                return full(StatusCode::NOT_FOUND, "application/json", error.to_string());
            }
            let options = &body["options"];
            let mut openai = json!({
                "model": model,
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": options["num_predict"],
                "temperature": options["temperature"],
            });
            let chat = path == "/api/chat";
            let openai_path = if chat {
                openai["messages"] = body["messages"].clone();
                "/v1/chat/completions"
            } else {
                openai["prompt"] = body["prompt"].clone();
                "/v1/completions"
            };
            let response = reqwest_client().post(format!("{upstream}{openai_path}")).json(&openai).send().await;
            let Ok(response) = response else {
                return full(StatusCode::INTERNAL_SERVER_ERROR, "application/json", json!({"error": "upstream down"}).to_string());
            };
            let events = response.bytes_stream().eventsource();
            let state = (events, model, None::<String>, false);
            let lines = futures_util::stream::unfold(state, move |(mut events, model, mut reason, finished)| async move {
                if finished {
                    return None;
                }
                loop {
                    let event = events.next().await?.ok()?;
                    if event.data == "[DONE]" {
                        return None;
                    }
                    let chunk: Value = serde_json::from_str(&event.data).ok()?;
                    let at = "2026-11-23T00:00:00.000000Z";
                    if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
                        let last = json!({
                            "model": model, "created_at": at, "done": true,
                            "done_reason": reason.clone().unwrap_or_else(|| "stop".into()),
                            "total_duration": 1, "load_duration": 1,
                            "prompt_eval_count": usage["prompt_tokens"], "eval_count": usage["completion_tokens"],
                        });
                        let mut last = last;
                        if chat {
                            last["message"] = json!({"role": "assistant", "content": ""});
                        } else {
                            last["response"] = json!("");
                        }
                        let line = Frame::data(Bytes::from(format!("{last}\n")));
                        return Some((Ok::<_, Infallible>(line), (events, model, reason, true)));
                    }
                    let choice = &chunk["choices"][0];
                    if let Some(finish) = choice["finish_reason"].as_str() {
                        reason = Some(finish.to_string());
                    }
                    let text = choice["delta"]["content"].as_str().or_else(|| choice["text"].as_str()).unwrap_or("");
                    if text.is_empty() {
                        continue;
                    }
                    let frame = if chat {
                        json!({"model": model, "created_at": at, "message": {"role": "assistant", "content": text}, "done": false})
                    } else {
                        json!({"model": model, "created_at": at, "response": text, "done": false})
                    };
                    let line = Frame::data(Bytes::from(format!("{frame}\n")));
                    return Some((Ok(line), (events, model, reason, false)));
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/x-ndjson")
                .body(BodyExt::boxed(StreamBody::new(lines)))
                .unwrap()
        }
    })
    .await;
    format!("http://{addr}")
}

fn reqwest_client() -> reqwest::Client {
    citadel_transports::http::client(Duration::from_secs(300)).expect("HTTP client")
}

/// How the misbehaving engine misbehaves (fault injection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// `data:` lines that are not JSON.
    Garbage,
    /// One token, then half a JSON chunk as a complete event.
    TruncatedJson,
    /// One token, then the connection closes mid-chunk.
    CutShort,
    /// Role-only chunks and keep-alive comments forever, never a token.
    Endless,
    /// One line of `x` that never ends.
    Flood,
}

/// A **misbehaving** OpenAI-compatible engine: answers every generation
/// request with `misbehaviour`.
pub async fn misbehaving_engine(misbehaviour: Misbehaviour) -> String {
    let addr = serve(move |_request: Request<hyper::body::Incoming>| async move {
        let token = r#"data: {"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}"#;
        let frames: Vec<String> = match misbehaviour {
            Misbehaviour::Garbage => vec!["data: <html>502 Bad Gateway</html>\n\n".into()],
            Misbehaviour::TruncatedJson => {
                vec![format!("{token}\n\n"), "data: {\"choices\":[{\"index\":0,\"delta\":{\"cont\n\n".into()]
            }
            Misbehaviour::CutShort => vec![format!("{token}\n\n"), "data: {\"choices\":[{\"index\":0,\"del".into()],
            Misbehaviour::Endless | Misbehaviour::Flood => Vec::new(),
        };
        let stream = futures_util::stream::unfold((frames.into_iter(), 0u64), move |(mut frames, sent)| async move {
            let next = match frames.next() {
                Some(frame) => frame,
                None if misbehaviour == Misbehaviour::Endless => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if sent % 2 == 0 {
                        ": keep-alive\n\n".to_string()
                    } else {
                        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n".to_string()
                    }
                }
                None if misbehaviour == Misbehaviour::Flood => "x".repeat(16 * 1024),
                None => return None,
            };
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(next))), (frames, sent + 1)))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    })
    .await;
    format!("http://{addr}")
}
