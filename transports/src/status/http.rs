//! Status over HTTP: each StatusMessage is POSTed (JSON) to a configured
//! endpoint by a background task, so publishing never waits on the network.
//!
//! Delivery: in order, at least once. Messages wait in a bounded in-memory
//! queue; when the endpoint is down the queue overflows, oldest first, into
//! a size-capped JSONL spool on disk (`spool.rs`), which is drained first
//! once the endpoint answers again. When even the spool is full the oldest
//! messages are dropped and counted. Connection errors, 5xx and 429 are
//! retried with the shared backoff; another 4xx means the endpoint rejects
//! that message, which is dropped (and counted) rather than blocking every
//! later one. On shutdown the queue is written to the spool.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::spool::Spool;
use crate::backoff::{Backoff, worth_logging};

/// How to reach the endpoint and how much to keep while it is away.
#[derive(Debug, Clone)]
pub struct HttpPublisherConfig {
    /// The URL status messages are POSTed to.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Messages kept in memory before spilling to the spool.
    pub queue: usize,
    /// The spool file.
    pub spool: PathBuf,
    /// The spool's size cap, bytes.
    pub spool_max_bytes: u64,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// What the publisher has done.
#[derive(Debug, Default)]
pub struct HttpPublisherStats {
    /// Messages delivered.
    pub sent: AtomicU64,
    /// Failed attempts (each retried).
    pub failed_attempts: AtomicU64,
    /// Messages the endpoint refused with a 4xx (dropped).
    pub rejected: AtomicU64,
    /// Messages moved to the spool.
    pub spooled: AtomicU64,
    /// Messages dropped because the spool was full.
    pub dropped: AtomicU64,
}

struct Pending {
    queue: VecDeque<String>,
    spool: Spool,
}

/// Where the message being sent came from.
enum Origin {
    Spool,
    Queue,
}

/// The HTTP status publisher; dropping it does not stop its task — call
/// [`HttpPublisher::shutdown`].
pub struct HttpPublisher {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    stats: Arc<HttpPublisherStats>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    queue_cap: usize,
}

impl HttpPublisher {
    /// Start the publisher's task (replaying any spool left from a previous run).
    pub fn start(config: HttpPublisherConfig) -> std::io::Result<HttpPublisher> {
        let spool = Spool::open(&config.spool, config.spool_max_bytes)?;
        let client = crate::http::client(config.timeout).map_err(std::io::Error::other)?;
        let pending = Arc::new(Mutex::new(Pending {
            queue: VecDeque::new(),
            spool,
        }));
        let wake = Arc::new(Notify::new());
        let stats = Arc::new(HttpPublisherStats::default());
        let stop = CancellationToken::new();
        let queue_cap = config.queue.max(1);
        let task = tokio::spawn(deliver(
            client,
            config,
            Arc::clone(&pending),
            Arc::clone(&wake),
            Arc::clone(&stats),
            stop.clone(),
        ));
        Ok(HttpPublisher {
            pending,
            wake,
            stats,
            stop,
            task,
            queue_cap,
        })
    }

    /// Queue `status` for delivery; never waits on the network.
    pub fn submit(&self, status: &str) {
        let mut pending = self.pending.lock().expect("http publisher queue poisoned");
        pending.queue.push_back(status.to_string());
        while pending.queue.len() > self.queue_cap {
            let oldest = pending.queue.pop_front().expect("queue over its cap is not empty");
            let before = pending.spool.dropped();
            if let Err(err) = pending.spool.push(&oldest) {
                tracing::warn!(error = %err, "cannot write the status spool; message dropped");
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.spooled.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .dropped
                    .fetch_add(pending.spool.dropped() - before, Ordering::Relaxed);
            }
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// What the publisher has done so far.
    pub fn stats(&self) -> &HttpPublisherStats {
        &self.stats
    }

    /// Messages waiting (in memory, plus spooled bytes).
    pub fn backlog(&self) -> (usize, u64) {
        let pending = self.pending.lock().expect("http publisher queue poisoned");
        (pending.queue.len(), pending.spool.pending_bytes())
    }

    /// Stop the task and write what is still queued to the spool.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let mut pending = self.pending.lock().expect("http publisher queue poisoned");
        while let Some(message) = pending.queue.pop_front() {
            if pending.spool.push(&message).is_err() {
                break;
            }
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    config: HttpPublisherConfig,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    stats: Arc<HttpPublisherStats>,
    stop: CancellationToken,
) {
    let mut waits = Backoff::DEFAULT.start();
    loop {
        let next = {
            let pending = pending.lock().expect("http publisher queue poisoned");
            match pending.spool.peek() {
                Ok(Some(line)) => Some((Origin::Spool, line)),
                _ => pending.queue.front().map(|message| (Origin::Queue, message.clone())),
            }
        };
        let Some((origin, message)) = next else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => continue,
            }
        };
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            attempt = post(&client, &config, message.clone()) => attempt,
        };
        match attempt {
            Ok(()) | Err(Failure::Rejected(_)) => {
                if let Err(Failure::Rejected(status)) = &attempt {
                    tracing::warn!(endpoint = %config.endpoint, %status, "status endpoint rejected a message; dropped");
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                if waits.attempts() > 0 {
                    tracing::info!(endpoint = %config.endpoint, "status endpoint reachable again");
                }
                waits.reset();
                let mut pending = pending.lock().expect("http publisher queue poisoned");
                match origin {
                    Origin::Spool => {
                        let _ = pending.spool.pop(&message);
                    }
                    Origin::Queue => {
                        // Still the front: submit only appends and spills
                        // from the front when over the cap, which moves this
                        // message to the spool end first (then it was sent
                        // twice, never lost).
                        if pending.queue.front() == Some(&message) {
                            pending.queue.pop_front();
                        }
                    }
                }
            }
            Err(Failure::Retry(reason)) => {
                stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                if worth_logging(waits.attempts()) {
                    tracing::warn!(endpoint = %config.endpoint, error = %reason, "cannot deliver status; retrying with backoff");
                }
                if !waits.wait(&stop).await {
                    return;
                }
            }
        }
    }
}

enum Failure {
    Retry(String),
    Rejected(reqwest::StatusCode),
}

async fn post(client: &reqwest::Client, config: &HttpPublisherConfig, body: String) -> Result<(), Failure> {
    let mut request = client
        .post(&config.endpoint)
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|err| Failure::Retry(err.to_string()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Err(Failure::Retry(format!("HTTP {status}")))
    } else {
        Err(Failure::Rejected(status))
    }
}
