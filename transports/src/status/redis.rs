//! Status on Redis: `XADD node:status:stream MAXLEN ~ <maxlen> * nodeId
//! <id> timestamp <RFC 3339> status <online|configured|stopping>
//! [deviceCode <code>] [<extra>…] payload <StatusMessage>` and `PUBLISH
//! node:status:{nodeId} <StatusMessage>`, in one round trip.

use std::time::SystemTime;

use crate::redis::Connection;

use crate::wire;

/// What a status stream entry says of the node (its `status` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Running (every periodic and on-change entry).
    Online,
    /// A device configuration was just applied (the entry also carries its `jobId`).
    Configured,
    /// Shutting down cleanly: the last entry of this run.
    Stopping,
}

impl NodeState {
    /// The field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Online => "online",
            NodeState::Configured => "configured",
            NodeState::Stopping => "stopping",
        }
    }
}

/// Publishes one node's status.
#[derive(Clone)]
pub struct RedisStatusPublisher {
    conn: Connection,
    node_id: String,
    device_code: Option<String>,
    maxlen: usize,
}

impl RedisStatusPublisher {
    /// A publisher for `node_id` over `conn`, keeping about `maxlen` entries
    /// in the stream; entries carry `device_code` as `deviceCode` when given.
    pub fn new(conn: Connection, node_id: &str, device_code: Option<String>, maxlen: usize) -> RedisStatusPublisher {
        RedisStatusPublisher {
            conn,
            node_id: node_id.to_string(),
            device_code,
            maxlen,
        }
    }

    /// Append `status` to the status stream as `state` (with `extra` fields,
    /// e.g. the `jobId` of a configuration) and publish it on the node's
    /// channel.
    pub async fn publish(&self, status: &str, state: NodeState, extra: &[(&str, &str)]) -> ::redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut pipe = ::redis::pipe();
        pipe.cmd("XADD")
            .arg(wire::NODE_STATUS_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg("nodeId")
            .arg(&self.node_id)
            .arg("timestamp")
            .arg(wire::timestamp(SystemTime::now()))
            .arg("status")
            .arg(state.as_str());
        if let Some(code) = &self.device_code {
            pipe.arg("deviceCode").arg(code);
        }
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
