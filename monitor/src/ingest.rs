//! Reading the fleet's streams — `node:status:stream`, `citadel:v1:events`,
//! `citadel:v1:heartbeats` — through the monitor's own consumer group.
//!
//! Each read is applied in Redis's order (entry ids across the three
//! streams), committed with the position reached, and only then
//! acknowledged. At start the monitor first re-reads what it had read but
//! not acknowledged (it may have stopped in between); the engine skips
//! what its stored position says is done. Groups start at the streams'
//! beginning, so a new monitor reads the history Redis still holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use citadel_transports::backoff::{Backoff, worth_logging};
use citadel_transports::fleet;
use citadel_transports::wire;
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::entry_id;
use crate::service::Monitor;

/// The streams read, in the order given to `XREADGROUP`.
pub const STREAMS: [&str; 3] = [wire::NODE_STATUS_STREAM, fleet::EVENTS_STREAM, fleet::HEARTBEATS_STREAM];
/// Entries per stream per read, at most.
const COUNT: usize = 512;
/// How long a read waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);

type Entries = Vec<(&'static str, String, HashMap<String, String>)>;

/// Read and apply until `stop`, through Redis outages.
pub async fn run(monitor: Arc<Monitor>, tasks: TaskTracker, stop: CancellationToken) {
    let consumer = monitor.config.consumer.clone().unwrap_or_else(default_consumer);
    let group = monitor.config.group.clone();
    let mut waits = Backoff::DEFAULT.start();
    let mut caught_up = false;
    let mut ready = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let outcome = async {
            let mut conn = monitor.redis.blocking_connection(BLOCK);
            if !ready {
                create_groups(&mut conn, &group).await?;
                ready = true;
                tracing::info!(group = %group, consumer = %consumer, "monitor reading the fleet's streams");
            }
            // Our own unacknowledged entries first, then new ones.
            let id = if caught_up { ">" } else { "0" };
            let entries = read(&mut conn, &group, &consumer, id).await?;
            if entries.is_empty() && !caught_up {
                caught_up = true;
                return Ok(());
            }
            if entries.is_empty() {
                monitor.streams_current.store(true, Ordering::Relaxed);
                return Ok(());
            }
            let count = entries.len() as u64;
            // A full read means more is waiting: not current yet.
            let current = caught_up && entries.len() < COUNT;
            let applied = monitor
                .apply(|engine, commit, follow| {
                    for (stream, id, fields) in &entries {
                        engine.apply_entry(stream, id, fields, commit, follow);
                    }
                })
                .await;
            let (_, follow) = applied
                .map_err(|err| redis::RedisError::from((redis::ErrorKind::Client, "cannot store", err.to_string())))?;
            monitor.follow_up(follow, &tasks, &stop);
            monitor.count_entries(count);
            acknowledge(&mut conn, &group, &entries).await?;
            monitor.streams_current.store(current, Ordering::Relaxed);
            Ok(())
        };
        let outcome: redis::RedisResult<()> = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = outcome => outcome,
        };
        match outcome {
            Ok(()) => {
                if waits.attempts() > 0 {
                    tracing::info!("reading the fleet's streams again");
                }
                waits.reset();
            }
            Err(err) => {
                monitor.streams_current.store(false, Ordering::Relaxed);
                if err.code() == Some("NOGROUP") {
                    // Redis lost its data (restarted without persistence):
                    // the groups are made again.
                    ready = false;
                }
                if worth_logging(waits.attempts()) {
                    tracing::warn!(error = %err, "cannot read the fleet's streams; retrying with backoff");
                }
                if !waits.wait(&stop).await {
                    return;
                }
            }
        }
    }
}

fn default_consumer() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "monitor".into())
}

async fn create_groups(conn: &mut impl redis::aio::ConnectionLike, group: &str) -> redis::RedisResult<()> {
    for stream in STREAMS {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => {}
            other => other?,
        }
    }
    Ok(())
}

/// One read of every stream from `id` (`0`: own pending; `>`: new),
/// merged in Redis's order.
async fn read(
    conn: &mut citadel_transports::redis::Connection,
    group: &str,
    consumer: &str,
    id: &str,
) -> redis::RedisResult<Entries> {
    let mut options = StreamReadOptions::default().group(group, consumer).count(COUNT);
    if id == ">" {
        options = options.block(BLOCK.as_millis() as usize);
    }
    let reply: Option<StreamReadReply> = conn.xread_options(&STREAMS, &[id; 3], &options).await?;
    let mut entries: Entries = Vec::new();
    for key in reply.map(|reply| reply.keys).unwrap_or_default() {
        let Some(stream) = STREAMS.iter().copied().find(|stream| *stream == key.key) else {
            continue;
        };
        for entry in key.ids {
            let fields = text_fields(&entry.map);
            entries.push((stream, entry.id, fields));
        }
    }
    entries.sort_by_key(|(_, id, _)| entry_id(id).unwrap_or_default());
    Ok(entries)
}

/// A stream entry's fields as text (fields that are not text are left out).
pub(crate) fn text_fields(map: &HashMap<String, redis::Value>) -> HashMap<String, String> {
    map.iter()
        .filter_map(|(name, value)| Some((name.clone(), redis::from_redis_value::<String>(value.clone()).ok()?)))
        .collect()
}

async fn acknowledge(
    conn: &mut citadel_transports::redis::Connection,
    group: &str,
    entries: &Entries,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for stream in STREAMS {
        let ids: Vec<&str> = entries
            .iter()
            .filter(|(of, _, _)| *of == stream)
            .map(|(_, id, _)| id.as_str())
            .collect();
        if !ids.is_empty() {
            pipe.xack(stream, group, &ids).ignore();
        }
    }
    pipe.exec_async(conn).await
}
