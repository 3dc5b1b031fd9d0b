//! Writing the fleet's events and heartbeats (`crate::fleet`).
//!
//! A job's events ride in the round trips the job already makes: the
//! worker adds them to its batches with [`FleetPublisher::event_in`] (and
//! to its start script with [`FleetPublisher::event_args`]). Everything
//! else a node has to say — it started, a service died, a GPU is hot, a
//! handler logged an error — goes through [`FleetPublisher::emit`], which
//! never waits: events queue (bounded) for one writer task that sends
//! whatever has queued in one pipeline, retrying with the shared backoff
//! while Redis is away. What does not fit in the queue is counted and
//! reported, not silently lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Connection;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Batch;
use crate::backoff::{Backoff, retry};
use crate::fleet::{EVENTS_STREAM, FleetEvent, HEARTBEATS_STREAM, HEARTBEATS_STREAM_MAXLEN, Heartbeat};

/// Events waiting for the writer, at most.
const QUEUE: usize = 4096;
/// Events sent in one pipeline, at most.
const PER_WRITE: usize = 256;

/// What the writer is asked to do.
enum Item {
    Event(Box<FleetEvent>),
    /// Answer once everything queued before is written (or given up).
    Flush(oneshot::Sender<()>),
}

/// Writes one node's fleet events and heartbeats.
#[derive(Clone)]
pub struct FleetPublisher {
    conn: Connection,
    maxlen: usize,
    queue: mpsc::Sender<Item>,
    dropped: Arc<AtomicU64>,
}

impl FleetPublisher {
    /// A publisher over `conn` keeping about `maxlen` events in the stream;
    /// starts the writer of what [`emit`](Self::emit) queues on the current
    /// tokio runtime (it ends with the last clone of the publisher).
    pub fn start(conn: Connection, maxlen: usize) -> FleetPublisher {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(conn.clone(), maxlen, receiver, Arc::clone(&dropped)));
        FleetPublisher {
            conn,
            maxlen,
            queue,
            dropped,
        }
    }

    /// The `XADD` of `event`.
    pub fn xadd(&self, event: &FleetEvent) -> redis::Cmd {
        xadd(self.maxlen, event)
    }

    /// Add `event` to `batch` (it is written if and only if the batch is).
    pub fn event_in(&self, batch: &mut Batch, event: &FleetEvent) {
        batch.push(self.xadd(event));
    }

    /// What a server-side script needs to append `event` itself: the
    /// stream's length cap and the values of the entry's `type`, `node`
    /// and `event` fields.
    pub fn event_args(&self, event: &FleetEvent) -> (usize, [String; 3]) {
        (self.maxlen, event.entry_fields().map(|(_, value)| value))
    }

    /// Queue `event` for the writer; never waits. When the queue is full
    /// (Redis has been away for a while) the event is counted as dropped.
    pub fn emit(&self, event: FleetEvent) {
        if self.queue.try_send(Item::Event(Box::new(event))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait until what was emitted before is written, at most `timeout`
    /// (a node stopping while Redis is away does not wait for it).
    pub async fn flush(&self, timeout: Duration) {
        let (done, written) = oneshot::channel();
        if self.queue.send_timeout(Item::Flush(done), timeout).await.is_ok() {
            let _ = tokio::time::timeout(timeout, written).await;
        }
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Append `beat` to the heartbeat stream.
    pub async fn heartbeat(&self, beat: &Heartbeat) -> redis::RedisResult<()> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(HEARTBEATS_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(HEARTBEATS_STREAM_MAXLEN)
            .arg("*")
            .arg(&beat.entry_fields()[..]);
        let mut conn = self.conn.clone();
        cmd.exec_async(&mut conn).await
    }
}

fn xadd(maxlen: usize, event: &FleetEvent) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(EVENTS_STREAM)
        .arg("MAXLEN")
        .arg("~")
        .arg(maxlen)
        .arg("*")
        .arg(&event.entry_fields()[..]);
    cmd
}

/// Send what has queued, in one pipeline per round, until every publisher
/// is gone. A failed write is retried with the shared backoff; while it is,
/// new events queue (and overflow into the dropped count).
async fn write_loop(conn: Connection, maxlen: usize, mut queue: mpsc::Receiver<Item>, dropped: Arc<AtomicU64>) {
    // Nothing cancels the writer's retries but a flush that times out: a
    // process exits without waiting for it.
    let never = CancellationToken::new();
    let mut ready = Vec::with_capacity(PER_WRITE);
    let mut reported_drops = 0;
    while queue.recv_many(&mut ready, PER_WRITE).await > 0 {
        let mut pipe = redis::pipe();
        let mut flushes = Vec::new();
        for item in ready.drain(..) {
            match item {
                Item::Event(event) => {
                    pipe.add_command(xadd(maxlen, &event)).ignore();
                }
                Item::Flush(done) => flushes.push(done),
            }
        }
        if !pipe.is_empty() {
            let sent = retry("write fleet events", Backoff::DEFAULT, &never, || {
                let mut conn = conn.clone();
                let pipe = pipe.clone();
                async move { pipe.exec_async(&mut conn).await }
            })
            .await;
            if let Err(err) = sent {
                tracing::warn!(error = %err, "fleet events not written");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped > reported_drops {
            tracing::warn!(
                dropped = now_dropped - reported_drops,
                "fleet events dropped: the queue was full while Redis was unreachable"
            );
            reported_drops = now_dropped;
        }
    }
}
