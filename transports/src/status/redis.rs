//! Status on Redis: `XADD node:status:stream MAXLEN ~ 10000 * nodeId <id>
//! timestamp <RFC 3339> payload <StatusMessage>` and `PUBLISH
//! node:status:{nodeId} <StatusMessage>`, in one round trip.

use std::time::SystemTime;

use ::redis::aio::ConnectionManager;

use crate::wire;

/// Publishes one node's status.
#[derive(Clone)]
pub struct RedisStatusPublisher {
    conn: ConnectionManager,
    node_id: String,
}

impl RedisStatusPublisher {
    /// A publisher for `node_id` over `conn`.
    pub fn new(conn: ConnectionManager, node_id: &str) -> RedisStatusPublisher {
        RedisStatusPublisher {
            conn,
            node_id: node_id.to_string(),
        }
    }

    /// Append `status` to the status stream (with `extra` fields, e.g.
    /// `status configured`) and publish it on the node's channel.
    pub async fn publish(&self, status: &str, extra: &[(&str, &str)]) -> ::redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut pipe = ::redis::pipe();
        pipe.cmd("XADD")
            .arg(wire::NODE_STATUS_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(wire::NODE_STATUS_STREAM_MAXLEN)
            .arg("*")
            .arg("nodeId")
            .arg(&self.node_id)
            .arg("timestamp")
            .arg(wire::timestamp(SystemTime::now()));
        for (field, value) in extra {
            pipe.arg(*field).arg(*value);
        }
        pipe.arg("payload")
            .arg(status)
            .ignore()
            .cmd("PUBLISH")
            .arg(wire::node_status_channel(&self.node_id))
            .arg(status)
            .ignore()
            .exec_async(&mut conn)
            .await
    }
}
