//! A real HTTP file server on a loopback port for capability `http` and
//! `model_download`: files by path, `Range: bytes=N-` answered with 206
//! (unless told to ignore it), redirects, bodies without a length, and a
//! one-shot fault that breaks a transfer off mid-body. It records every
//! request it gets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use tokio::task::JoinHandle;

use crate::serve_loopback;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The path.
    pub path: String,
    /// Its `Range` header.
    pub range: Option<String>,
    /// Its `Host` header.
    pub host: Option<String>,
}

#[derive(Default)]
struct Files {
    files: HashMap<String, Bytes>,
    /// Served without `Content-Length`.
    streamed: HashMap<String, Bytes>,
    stalled: HashMap<String, Bytes>,
    /// Paths whose requests are read and never answered.
    silent: std::collections::HashSet<String>,
    redirects: HashMap<String, String>,
    ignore_range: bool,
    cut_after: Option<(usize, Arc<Notify>)>,
    seen: Vec<Seen>,
}

/// The server; stops when dropped.
pub struct FileServer {
    addr: SocketAddr,
    state: Arc<Mutex<Files>>,
    task: JoinHandle<()>,
}

impl FileServer {
    /// Start serving nothing yet.
    pub async fn start() -> FileServer {
        let state = Arc::new(Mutex::new(Files::default()));
        let shared = Arc::clone(&state);
        let (addr, task) = serve_loopback(move |request: Request<hyper::body::Incoming>| {
            let state = Arc::clone(&shared);
            async move {
                if record(&state, &request) {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(answer(&state, &request))
            }
        })
        .await;
        FileServer { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serve `content` at `path` with a `Content-Length`.
    pub fn file(&self, path: &str, content: impl Into<Bytes>) {
        self.state.lock().unwrap().files.insert(path.into(), content.into());
    }

    /// Serve `content` at `path` in pieces, without a length.
    pub fn unsized_file(&self, path: &str, content: impl Into<Bytes>) {
        self.state.lock().unwrap().streamed.insert(path.into(), content.into());
    }

    /// Answer `path` with `302 Location: location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.state
            .lock()
            .unwrap()
            .redirects
            .insert(path.into(), location.into());
    }

    /// Serve `content` at `path` with a `Content-Length`, but send only its
    /// first half, then nothing more (a stalled transfer).
    pub fn stalled_file(&self, path: &str, content: impl Into<Bytes>) {
        self.state.lock().unwrap().stalled.insert(path.into(), content.into());
    }

    /// Read requests for `path` and never answer them.
    pub fn never_answer(&self, path: &str) {
        self.state.lock().unwrap().silent.insert(path.into());
    }

    /// Answer every request with the whole file, `Range` or not.
    pub fn ignore_range(&self) {
        self.state.lock().unwrap().ignore_range = true;
    }

    /// Send the next file transfer's first `bytes` bytes, then hold it
    /// until the returned handle is notified, then break it off.
    pub fn cut_next_after(&self, bytes: usize) -> Arc<Notify> {
        let cut = Arc::new(Notify::new());
        self.state.lock().unwrap().cut_after = Some((bytes, Arc::clone(&cut)));
        cut
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(status: u16, headers: &[(&str, String)], body: Bytes) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response
        .body(Full::new(body).map_err(|never| match never {}).boxed_unsync())
        .unwrap()
}

/// Record `request`; whether it is to be left unanswered.
fn record(state: &Mutex<Files>, request: &Request<hyper::body::Incoming>) -> bool {
    let mut files = state.lock().unwrap();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(String::from)
    };
    let path = request.uri().path().to_string();
    let silent = files.silent.contains(&path);
    files.seen.push(Seen {
        path,
        range: header("range"),
        host: header("host"),
    });
    silent
}

fn answer(state: &Mutex<Files>, request: &Request<hyper::body::Incoming>) -> Response<Body> {
    let mut files = state.lock().unwrap();
    let path = request.uri().path().to_string();
    let range = request
        .headers()
        .get("range")
        .and_then(|value| value.to_str().ok())
        .map(String::from);
    if let Some(location) = files.redirects.get(&path) {
        return full(302, &[("location", location.clone())], Bytes::new());
    }
    if let Some(content) = files.stalled.get(&path).cloned() {
        let half = content.slice(..content.len() / 2);
        let pieces = stream::iter([Ok(Frame::data(half))]).chain(stream::pending());
        return Response::builder()
            .header("content-length", content.len())
            .body(StreamBody::new(pieces).boxed_unsync())
            .unwrap();
    }
    if let Some(content) = files.streamed.get(&path).cloned() {
        let pieces: Vec<Result<Frame<Bytes>, std::io::Error>> = content
            .chunks(1000)
            .map(|piece| Ok(Frame::data(Bytes::copy_from_slice(piece))))
            .collect();
        return Response::new(StreamBody::new(stream::iter(pieces)).boxed_unsync());
    }
    let Some(content) = files.files.get(&path).cloned() else {
        return full(404, &[], Bytes::from_static(b"not found"));
    };
    let start = match range.as_deref().and_then(|range| range.strip_prefix("bytes=")) {
        Some(spec) if !files.ignore_range => spec.trim_end_matches('-').parse::<usize>().ok(),
        _ => None,
    };
    let (status, body, mut headers) = match start {
        Some(start) if start >= content.len() => {
            return full(
                416,
                &[("content-range", format!("bytes */{}", content.len()))],
                Bytes::new(),
            );
        }
        Some(start) => (
            206,
            content.slice(start..),
            vec![(
                "content-range",
                format!("bytes {start}-{}/{}", content.len() - 1, content.len()),
            )],
        ),
        None => (200, content, Vec::new()),
    };
    headers.push(("content-length", body.len().to_string()));
    let Some((cut, when)) = files.cut_after.take() else {
        return full(status, &headers, body);
    };
    // Headers promise the whole body; the stream fails after `cut` bytes
    // (once the test says so), which makes hyper abort the connection.
    let sent = body.slice(..cut.min(body.len()));
    let broken = stream::once(async move {
        when.notified().await;
        Err(std::io::Error::other("transfer broken off by the test"))
    });
    let pieces = stream::iter([Ok(Frame::data(sent))]).chain(broken);
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        response = response.header(*name, value);
    }
    response.body(StreamBody::new(pieces).boxed_unsync()).unwrap()
}
