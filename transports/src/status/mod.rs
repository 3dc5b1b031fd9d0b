//! Getting the node's status out: pushed to Redis (`redis.rs`) and to an
//! HTTP endpoint with an on-disk spool for outages (`http.rs`, `spool.rs`),
//! and served by the node's own HTTP server (`server.rs`).
//!
//! Publishers take the status as JSON text: this crate does not know its
//! shape (the collector does). A publisher never blocks or slows jobs: Redis
//! publishing is one pipelined round trip, HTTP publishing is queued for a
//! background task.

mod client;
mod http;
mod redis;
mod server;
mod spool;

pub use self::client::fetch_status;
pub use self::http::{HttpPublisher, HttpPublisherConfig, HttpPublisherStats};
pub use self::redis::{NodeState, RedisStatusPublisher};
pub use self::server::{Access, Health, ServerEvent, StatusServer, StatusSource};
pub use self::spool::Spool;
