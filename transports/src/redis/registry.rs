//! The fleet's handler registry on Redis: published component bytes
//! (`citadel:v1:component:{digest}`), the record saying which digest serves
//! each job type (`citadel:v1:handlers`, a HASH job type → record), a capped
//! history per job type for rollbacks
//! (`citadel:v1:handlers:history:{jobType}`, newest first) and the
//! announcement of every change on `citadel:v1:handlers:changed`.
//!
//! A publish writes all of it in one transaction, so a node that reads the
//! HASH never finds a digest whose bytes are missing. Nodes treat an
//! announcement only as a hint to read the HASH again (as they do after
//! every reconnect): a lost message can delay a change, never hide one.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Connection;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Endpoint;
use super::channel::follow_channel;

/// The HASH job type → [`HandlerRecord`] (JSON).
pub const HANDLERS_KEY: &str = "citadel:v1:handlers";
/// Where every change is announced.
pub const CHANGED_CHANNEL: &str = "citadel:v1:handlers:changed";
/// Records kept per job type for rollbacks (the current one included).
pub const HISTORY_LEN: usize = 20;

/// The key of a component's bytes (`digest` as `sha256:<hex>`).
pub fn component_key(digest: &str) -> String {
    format!("citadel:v1:component:{digest}")
}

/// The key of a job type's history.
pub fn history_key(job_type: &str) -> String {
    format!("citadel:v1:handlers:history:{job_type}")
}

/// Which component serves a job type, who published it and how it is
/// signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerRecord {
    /// `sha256:<hex>` of the component's bytes.
    pub digest: String,
    /// Size of the bytes.
    pub size: u64,
    /// Ed25519 signature of the digest's 32 bytes, hex; none when unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The signer's public key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Who published it (`user@host`).
    pub publisher: String,
    /// When (RFC 3339).
    pub published_at: String,
}

/// The announcement published on [`CHANGED_CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandlerChange {
    /// The job type whose handler changed.
    pub job_type: String,
    /// Its digest now.
    pub digest: String,
}

/// Rolls a job type back to the record before the current one: drops the
/// newest history entry, points the HASH at the next one, announces it.
/// Returns the record now in force, or nil when there is no earlier one.
const ROLLBACK_SCRIPT: &str = r"
local records = redis.call('LRANGE', KEYS[2], 0, 1)
if #records < 2 then return false end
redis.call('LPOP', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], records[2])
local record = cjson.decode(records[2])
redis.call('PUBLISH', ARGV[2], cjson.encode({jobType = ARGV[1], digest = record.digest}))
return records[2]
";

/// A record in the HASH that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Its job type.
    pub job_type: String,
    /// Why.
    pub problem: String,
}

/// The registry, through one reconnecting connection.
#[derive(Clone)]
pub struct Registry {
    conn: Connection,
}

impl Registry {
    /// The registry on `endpoint`'s Redis.
    pub fn new(endpoint: &Endpoint) -> Registry {
        Registry {
            conn: endpoint.command_connection(),
        }
    }

    /// Store `bytes`, point `job_type` at `record`, keep it in the history
    /// and announce it, in one transaction.
    pub async fn publish(&self, job_type: &str, bytes: &[u8], record: &HandlerRecord) -> redis::RedisResult<()> {
        let json = serde_json::to_string(record).expect("records serialize");
        let change = serde_json::to_string(&HandlerChange {
            job_type: job_type.to_string(),
            digest: record.digest.clone(),
        })
        .expect("changes serialize");
        let history = history_key(job_type);
        redis::pipe()
            .atomic()
            .set(component_key(&record.digest), bytes)
            .ignore()
            .hset(HANDLERS_KEY, job_type, &json)
            .ignore()
            .lpush(&history, &json)
            .ignore()
            .ltrim(&history, 0, HISTORY_LEN as isize - 1)
            .ignore()
            .publish(CHANGED_CHANNEL, change)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// Every job type's record, and the records that cannot be read.
    pub async fn handlers(&self) -> redis::RedisResult<(BTreeMap<String, HandlerRecord>, Vec<BadRecord>)> {
        let raw: BTreeMap<String, String> = self.conn.clone().hgetall(HANDLERS_KEY).await?;
        let mut records = BTreeMap::new();
        let mut bad = Vec::new();
        for (job_type, json) in raw {
            match serde_json::from_str(&json) {
                Ok(record) => {
                    records.insert(job_type, record);
                }
                Err(err) => bad.push(BadRecord {
                    job_type,
                    problem: format!("unreadable record in {HANDLERS_KEY}: {err}"),
                }),
            }
        }
        Ok((records, bad))
    }

    /// A component's bytes, if they are stored.
    pub async fn component(&self, digest: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        self.conn.clone().get(component_key(digest)).await
    }

    /// A job type's history, newest (the current record) first.
    pub async fn history(&self, job_type: &str) -> redis::RedisResult<Vec<HandlerRecord>> {
        let raw: Vec<String> = self.conn.clone().lrange(history_key(job_type), 0, -1).await?;
        Ok(raw.iter().filter_map(|json| serde_json::from_str(json).ok()).collect())
    }

    /// Point `job_type` back at its previous record; the record now in
    /// force, or `None` when there is no earlier one.
    pub async fn rollback(&self, job_type: &str) -> redis::RedisResult<Option<HandlerRecord>> {
        let json: Option<String> = redis::Script::new(ROLLBACK_SCRIPT)
            .key(HANDLERS_KEY)
            .key(history_key(job_type))
            .arg(job_type)
            .arg(CHANGED_CHANNEL)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(json.and_then(|json| serde_json::from_str(&json).ok()))
    }
}

/// Notify `changed` on every announcement, and on every (re)subscription
/// (a message may have been missed while unsubscribed); resubscribes with
/// the shared backoff after Redis goes away.
pub async fn listen_for_changes(endpoint: Endpoint, changed: Arc<Notify>, stop: CancellationToken) {
    follow_channel(endpoint, CHANGED_CHANNEL, |_| changed.notify_one(), stop).await;
}
