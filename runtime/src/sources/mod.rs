//! Where jobs come from. A source translates jobs in (a Redis Streams entry,
//! a Nexus API job) into a `JobSpec`, hands them to the dispatcher
//! (`crate::dispatch`) and settles each outcome its own way.
//!
//! - [`redis`]: `citadel work`, a consumer group on Redis Streams;
//! - [`nexus`]: `citadel agent`, polling Citadel's Nexus HTTP API (on-prem).

pub mod nexus;
pub mod redis;
