//! Batches and group commit.
//!
//! A [`Batch`] is the commands of one step of one job — its `claimed` and
//! `start`, or its final event, status and acknowledgement — sent in one
//! round trip, atomically (`MULTI`/`EXEC`) when it must be all-or-nothing.
//! A [`Committer`] sends the batches of all the jobs that are ready at the
//! same moment in a single pipeline: one write and one read for many jobs
//! instead of one each, which is most of a busy worker's cost. Each batch
//! still gets its own result.

use super::Connection;
use redis::{Cmd, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

/// Batches sent in one pipeline at most.
const MAX_GROUP: usize = 128;

/// Commands for one round trip.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    cmds: Vec<Cmd>,
    atomic: bool,
}

impl Batch {
    /// A plain pipeline.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// A transaction: all commands take effect, or none.
    pub fn atomic() -> Batch {
        Batch {
            cmds: Vec::new(),
            atomic: true,
        }
    }

    /// Add a command.
    pub fn push(&mut self, cmd: Cmd) {
        self.cmds.push(cmd);
    }

    /// Whether it holds no command.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Add this batch to `pipe` (wrapped in `MULTI`/`EXEC` when atomic).
    fn append_to(&self, pipe: &mut redis::Pipeline) {
        if self.atomic {
            pipe.cmd("MULTI");
        }
        for cmd in &self.cmds {
            pipe.add_command(cmd.clone());
        }
        if self.atomic {
            pipe.cmd("EXEC");
        }
    }

    /// How many replies this batch gets in a pipeline.
    fn reply_count(&self) -> usize {
        self.cmds.len() + if self.atomic { 2 } else { 0 }
    }

    /// This batch's replies (one per command) from its slice of a
    /// pipeline's replies, or the first error among them.
    fn results(&self, replies: Vec<RedisResult<Value>>) -> RedisResult<Vec<Value>> {
        let mut values = Vec::with_capacity(self.cmds.len());
        for reply in replies {
            match reply? {
                Value::ServerError(err) => return Err(err.into()),
                // EXEC: the replies of the queued commands.
                Value::Array(inner) if self.atomic => {
                    for value in inner {
                        if let Value::ServerError(err) = value {
                            return Err(err.into());
                        }
                        values.push(value);
                    }
                }
                // MULTI's OK and each command's QUEUED carry nothing.
                _ if self.atomic => {}
                value => values.push(value),
            }
        }
        Ok(values)
    }

    /// Add `other`'s commands after this batch's.
    pub fn append(&mut self, other: Batch) {
        self.cmds.extend(other.cmds);
    }

    /// Send this batch on its own; the replies of its commands.
    pub async fn send(&self, conn: &Connection) -> RedisResult<Vec<Value>> {
        let mut results = send_together(conn, std::slice::from_ref(self)).await?;
        results.pop().unwrap_or_else(|| Ok(Vec::new()))
    }
}

/// Send `batches` in one pipeline (one write, one read); each batch's
/// replies, or its first error. The outer error: the round trip failed.
pub async fn send_together(conn: &Connection, batches: &[Batch]) -> RedisResult<Vec<RedisResult<Vec<Value>>>> {
    let mut pipe = redis::pipe();
    for batch in batches {
        batch.append_to(&mut pipe);
    }
    let mut conn = conn.clone();
    let replies: Vec<RedisResult<Value>> = pipe.ignore_errors().query_async(&mut conn).await?;
    let mut replies = replies.into_iter();
    Ok(batches
        .iter()
        .map(|batch| batch.results(replies.by_ref().take(batch.reply_count()).collect()))
        .collect())
}

type Request = (Batch, oneshot::Sender<RedisResult<Vec<Value>>>);

/// Sends batches, grouping those submitted together into one pipeline.
#[derive(Clone)]
pub struct Committer {
    requests: mpsc::UnboundedSender<Request>,
}

impl Committer {
    /// Start the committer task on the current tokio runtime; it ends when
    /// the last clone of the committer is dropped.
    pub fn start(conn: Connection) -> Committer {
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(commit_loop(conn, queue));
        Committer { requests }
    }

    /// Send `batch` (with whatever other batches are ready) and return the
    /// replies of its commands.
    pub async fn send(&self, batch: Batch) -> RedisResult<Vec<Value>> {
        let (done, result) = oneshot::channel();
        if self.requests.send((batch, done)).is_err() {
            return Err(closed());
        }
        result.await.unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "committer stopped"))
}

async fn commit_loop(conn: Connection, mut queue: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = queue.recv().await {
        // Let the other jobs that are ready run up to their own send, so
        // their batches join this write.
        tokio::task::yield_now().await;
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let (batches, dones): (Vec<Batch>, Vec<_>) = group.into_iter().unzip();
        match send_together(&conn, &batches).await {
            Ok(results) => {
                for (result, done) in results.into_iter().zip(dones) {
                    let _ = done.send(result);
                }
            }
            Err(err) => {
                for done in dones {
                    let _ = done.send(Err(err.clone()));
                }
            }
        }
    }
}
