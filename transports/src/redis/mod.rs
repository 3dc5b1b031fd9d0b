//! Redis: the cluster transport. Jobs come in on Streams consumer groups
//! (`queue.rs`), events and results go out on Pub/Sub, a capped replay
//! stream and a status hash (`events.rs`), workers prove they are alive with
//! expiring keys (`liveness.rs`), producers cancel with flags
//! (`cancel.rs`) and wake an on-prem node's Nexus polling (`wake.rs`), and
//! published handlers live in a registry (`registry.rs`); the fleet's
//! events and heartbeats go out through `fleet.rs`.
//!
//! Connections are `ConnectionManager`s, which reconnect by themselves after
//! a failed command; callers retry what must not be lost with
//! [`crate::backoff::retry`]. Blocking reads get their own connection, so a
//! `BLOCK` never delays an ack or a published token. Per-job writes are
//! [`Batch`]es sent through a [`Committer`], which groups the batches of
//! concurrent jobs into one write (`batch.rs`).

mod batch;
mod cancel;
mod channel;
mod events;
mod fleet;
mod liveness;
mod queue;
pub mod registry;
mod wake;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use batch::{Batch, Committer};
pub use cancel::CancelFlags;
pub use events::{EventPublisher, JobCheck, ReplayConfig, subscribe_events};
pub use fleet::FleetPublisher;
pub use liveness::Liveness;
pub use queue::{Delivery, JobQueues, PendingEntry, QueueConfig, enqueue};
pub use redis::{Client, RedisError, RedisResult};
pub use wake::listen_for_wake;

/// How long a command may wait for its reply before the connection is
/// considered broken.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a connection to be established.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Open a client for `url` (`redis://host:port/db`, `rediss://…`,
/// `redis+unix:///path`), checking only its syntax: no connection is made.
pub fn client(url: &str) -> RedisResult<Client> {
    Client::open(url)
}

/// A reconnecting connection for ordinary commands. Lazy: it connects on
/// first use, so a node can start before Redis does.
pub fn command_connection(client: &Client) -> RedisResult<ConnectionManager> {
    connection(client, COMMAND_TIMEOUT)
}

/// A reconnecting connection for blocking reads of up to `block`.
pub fn blocking_connection(client: &Client, block: Duration) -> RedisResult<ConnectionManager> {
    connection(client, block + COMMAND_TIMEOUT)
}

fn connection(client: &Client, response_timeout: Duration) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        // Reconnection inside the manager is kept short: the callers' own
        // backoff (`crate::backoff`) decides how long to keep trying.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200));
    client.get_connection_manager_lazy(config)
}
