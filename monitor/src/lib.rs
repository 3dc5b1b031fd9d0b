//! `citadel monitor`: the fleet side (DESIGN §13).
//!
//! Nodes push their status snapshots (`node:status:stream`), events
//! (`citadel:v1:events`) and heartbeats (`citadel:v1:heartbeats`) to
//! Redis; the monitor reads them through its own consumer group
//! (`ingest`), keeps the latest of every node in memory (`registry`),
//! judges nodes and job types (`checks`) into alerts with Chief's rules
//! (`alerts`), stores events, rollups, alerts and deliveries (`store`),
//! and answers an HTTP API (`api`). Sources that are not citadel nodes
//! POST Chief-format events to the same API.

pub mod alerts;
pub mod api;
pub mod backlog;
pub mod checks;
pub mod config;
pub mod engine;
pub mod ingest;
pub mod notify;
pub mod orphans;
pub mod registry;
pub mod service;
pub mod store;
