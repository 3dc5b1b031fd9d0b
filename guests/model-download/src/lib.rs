//! `model_download`: fetches a model file through capability `http` into
//! the node's models directory (capability `models`).
//!
//! Payload `{"url", "sha256", "name", "size"?}`. The node computes the
//! SHA-256 while the bytes are written and publishes the file under `name`
//! only when it matches (a wrong hash leaves nothing). Progress is
//! streamed as chunks `{"bytes", "total", "percent"}` (every 5 %, or every
//! 8 MiB when the size is unknown). An interrupted transfer keeps the bytes
//! received; the job fails `unavailable` (so it is retried) and the next
//! attempt resumes with a `Range` request, or starts over when the server
//! cannot resume. Redirects are followed here, each hop checked by the
//! node's egress rules. Result `{"name", "sha256", "bytes",
//! "resumed_from"}`.

use citadel_guest::http::{self, HttpFailure, Url};
use citadel_guest::models::{self, Download, ModelsError};
use citadel_guest::{Guest, HandlerError, Job, stream};
use serde::Deserialize;

/// Most bytes asked of the response body per read.
const PIECE: u64 = 256 * 1024;
/// Redirects followed before giving up.
const MAX_REDIRECTS: u32 = 5;
/// Progress interval when the size is unknown.
const UNSIZED_STEP: u64 = 8 << 20;

/// Other keys (`tenant`, `type`, `timeout_ms`, which the wire format
/// allows in a payload) are ignored.
#[derive(Deserialize)]
struct Request {
    url: String,
    sha256: String,
    name: String,
    #[serde(default)]
    size: Option<u64>,
}

fn models_error(err: ModelsError) -> HandlerError {
    match err {
        ModelsError::Denied(why) => HandlerError::Denied(why),
        ModelsError::Invalid(why) => HandlerError::InvalidInput(why),
        ModelsError::NoSpace(free) => {
            HandlerError::Failed(format!("the node's models directory is full ({free} bytes free)"))
        }
        ModelsError::HashMismatch(actual) => HandlerError::InvalidInput(format!(
            "the downloaded file hashes to sha256 {actual}, not the one asked for; nothing was kept"
        )),
        ModelsError::Busy(name) => HandlerError::Unavailable(format!("{name} is being downloaded by another job")),
        ModelsError::Io(why) => HandlerError::Failed(why),
    }
}

/// GET `url` from byte `offset` on, following redirects.
fn get_from(url: &str, offset: u64) -> Result<http::Response, HandlerError> {
    let mut url = Url::parse(url).map_err(HandlerError::InvalidInput)?;
    let range = format!("bytes={offset}-");
    let headers: &[(&str, &str)] = if offset > 0 { &[("range", &range)] } else { &[] };
    for _ in 0..=MAX_REDIRECTS {
        let response = http::send("GET", &url, headers, None).map_err(HttpFailure::into_handler_error)?;
        match (response.status, response.header("location")) {
            (301 | 302 | 303 | 307 | 308, Some(location)) => {
                url = http::resolve(&url, location).map_err(HandlerError::Failed)?;
            }
            (200 | 206, _) => return Ok(response),
            (416, _) if offset > 0 => return Ok(response),
            (status @ 500.., _) => return Err(HandlerError::Unavailable(format!("{url}: HTTP status {status}"))),
            (status, _) => return Err(HandlerError::Failed(format!("{url}: HTTP status {status}"))),
        }
    }
    Err(HandlerError::Failed(format!(
        "{url}: more than {MAX_REDIRECTS} redirects"
    )))
}

/// Progress chunks: every 5 % of a known size, else every 8 MiB, and the
/// end.
struct Progress {
    total: Option<u64>,
    /// The step and byte count of the last chunk.
    reported: Option<(u64, u64)>,
}

impl Progress {
    fn step(&self, bytes: u64) -> u64 {
        match self.total {
            Some(total) if total > 0 => bytes * 20 / total,
            _ => bytes / UNSIZED_STEP,
        }
    }

    fn update(&mut self, bytes: u64, last: bool) -> Result<(), HandlerError> {
        let step = self.step(bytes);
        let unchanged = match self.reported {
            Some((reported_step, reported_bytes)) => {
                if last {
                    reported_bytes == bytes
                } else {
                    reported_step == step
                }
            }
            None => false,
        };
        if unchanged {
            return Ok(());
        }
        self.reported = Some((step, bytes));
        let percent = self
            .total
            .filter(|total| *total > 0)
            .map(|total| (bytes as f64 * 1000.0 / total as f64).round().min(1000.0) / 10.0);
        let chunk = serde_json::json!({"bytes": bytes, "total": self.total, "percent": percent});
        stream::emit(&chunk.to_string()).map_err(|err| HandlerError::Failed(format!("progress: {err:?}")))
    }
}

/// Copy the response body into the download.
fn copy(
    response: &mut http::Response,
    download: &Download,
    mut written: u64,
    progress: &mut Progress,
) -> Result<u64, HandlerError> {
    progress.update(written, false)?;
    loop {
        let piece = match response.read(PIECE) {
            Ok(Some(piece)) => piece,
            Ok(None) => return Ok(written),
            Err(failure) if failure.is_transient() => {
                return Err(HandlerError::Unavailable(format!(
                    "the transfer broke off after {written} bytes ({failure}); they are kept and the next attempt resumes"
                )));
            }
            Err(failure) => return Err(failure.into_handler_error()),
        };
        download.write(&piece).map_err(models_error)?;
        written += piece.len() as u64;
        progress.update(written, false)?;
    }
}

struct ModelDownload;

impl Guest for ModelDownload {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let request: Request = serde_json::from_str(&job.payload).map_err(|err| {
            HandlerError::InvalidInput(format!("payload: {err} (expected {{\"url\", \"sha256\", \"name\"}})"))
        })?;
        let download = models::begin(&request.name, &request.sha256, request.size).map_err(models_error)?;
        let mut resumed_from = download.offset();
        let mut response = get_from(&request.url, resumed_from)?;
        let mut written = resumed_from;
        match response.status {
            206 => {}
            416 => {
                // Everything was already received: the digest decides.
                drop(response);
                return finish(
                    download,
                    resumed_from,
                    &mut Progress {
                        total: Some(written),
                        reported: None,
                    },
                    written,
                );
            }
            _ if resumed_from > 0 => {
                // The server sent the whole file: start over.
                download.restart().map_err(models_error)?;
                written = 0;
                resumed_from = 0;
            }
            _ => {}
        }
        let total = response
            .content_length()
            .map(|length| length + written)
            .or(request.size);
        let mut progress = Progress { total, reported: None };
        let written = copy(&mut response, &download, written, &mut progress)?;
        drop(response);
        finish(download, resumed_from, &mut progress, written)
    }
}

fn finish(
    download: Download,
    resumed_from: u64,
    progress: &mut Progress,
    written: u64,
) -> Result<String, HandlerError> {
    let stored = download.finish().map_err(models_error)?;
    progress.total = Some(stored.bytes);
    progress.update(written, true)?;
    let result = serde_json::json!({
        "name": stored.name,
        "sha256": stored.sha256,
        "bytes": stored.bytes,
        "resumed_from": resumed_from,
    });
    Ok(result.to_string())
}

citadel_guest::export_handler!(ModelDownload);
