//! Consumer liveness: each worker process keeps
//! `citadel:v1:consumer:{group}:{consumer}` alive with a TTL. Pending jobs
//! are reclaimed from a consumer only once its key is gone — so a long job
//! on a live worker is never taken away, and a dead worker's jobs are free
//! again within one TTL.

use std::time::Duration;

use super::Connection;
use redis::AsyncCommands;

use crate::wire::liveness_key;

/// One consumer's liveness key, and lookups of other consumers' keys.
#[derive(Clone)]
pub struct Liveness {
    conn: Connection,
    group: String,
    consumer: String,
    ttl: Duration,
}

impl Liveness {
    /// Liveness of `consumer` in `group`, expiring `ttl` after each beat.
    pub fn new(conn: Connection, group: &str, consumer: &str, ttl: Duration) -> Liveness {
        Liveness {
            conn,
            group: group.to_string(),
            consumer: consumer.to_string(),
            ttl,
        }
    }

    /// Refresh this consumer's key (`value` says who holds it, for operators).
    pub async fn beat(&self, value: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let ttl_ms = self.ttl.as_millis() as u64;
        conn.pset_ex(liveness_key(&self.group, &self.consumer), value, ttl_ms)
            .await
    }

    /// Whether `consumer`'s key exists.
    pub async fn is_alive(&self, consumer: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        conn.exists(liveness_key(&self.group, consumer)).await
    }

    /// Remove this consumer's key (on shutdown: its leftover jobs are then
    /// reclaimed by other workers at once).
    pub async fn retire(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.del(liveness_key(&self.group, &self.consumer)).await
    }
}
