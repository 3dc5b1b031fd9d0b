//! Redis: the cluster transport. Jobs come in on Streams consumer groups
//! (`queue.rs`), events and results go out on Pub/Sub, a capped replay
//! stream and a status hash (`events.rs`), workers prove they are alive with
//! expiring keys (`liveness.rs`), producers cancel with flags
//! (`cancel.rs`) and wake an on-prem node's Nexus polling (`wake.rs`), and
//! published handlers live in a registry (`registry.rs`); the fleet's
//! events and heartbeats go out through `fleet.rs`.
//!
//! Every connection comes from one [`Endpoint`] (`endpoint.rs`): the URL
//! and the TLS files of `[redis]`, shown without its password.
//! Connections ([`Connection`], `connection.rs`) reconnect by themselves
//! after a failed command, and with Sentinel follow the master
//! (`sentinel.rs`); callers retry what must not be lost with
//! [`crate::backoff::retry`]. Blocking reads get their own connection, so a
//! `BLOCK` never delays an ack or a published token. Per-job writes are
//! [`Batch`]es sent through a [`Committer`], which groups the batches of
//! concurrent jobs into one write (`batch.rs`).

mod batch;
mod cancel;
mod channel;
mod connection;
mod endpoint;
mod events;
mod fleet;
mod liveness;
mod queue;
pub mod registry;
mod sentinel;
mod wake;

pub use batch::{Batch, Committer, send_together};
pub use cancel::CancelFlags;
pub use connection::Connection;
pub use endpoint::{Endpoint, EndpointError, RedisSettings, Refused, ShownUrl};
pub use events::{EventPublisher, JobCheck, ReplayConfig, subscribe_events};
pub use fleet::FleetPublisher;
pub use liveness::Liveness;
pub use queue::{Delivery, JobQueues, PendingEntry, QueueConfig, enqueue};
pub use redis::{Client, RedisError, RedisResult};
pub use wake::listen_for_wake;
