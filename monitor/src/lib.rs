//! `citadel monitor`: the fleet side (DESIGN §13).
//!
//! Nodes push their status snapshots (`node:status:stream`), events
//! (`citadel:v1:events`) and heartbeats (`citadel:v1:heartbeats`) to
//! Redis; the monitor reads them through its own consumer group
//! (`ingest`), keeps the latest of every node in memory (`registry`),
//! judges nodes and job types (`engine`, `checks`) into alerts with
//! Chief's rules (`alerts`) — with what waits in the queues (`queues`:
//! stuck backlogs, dead letters) and the jobs dead nodes held
//! (`orphans`) — stores events, rollups, alerts and deliveries (`store`),
//! notifies webhooks (`notify`), answers an HTTP API (`api`) and serves
//! the fleet dashboard on it (`web`). Sources
//! that are not citadel nodes POST Chief-format events to the same API.
//! `service` runs it all.

pub mod alerts;
pub mod api;
pub mod checks;
pub mod config;
pub mod engine;
pub mod ingest;
pub mod notify;
pub mod orphans;
pub mod queues;
pub mod registry;
pub mod service;
pub mod store;
pub mod web;
