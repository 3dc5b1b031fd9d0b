//! The alert state machine under random interleavings of heartbeats,
//! silences, job failures and successes, monitor restarts (with entries
//! read again, as after a crash before their acknowledgement) and manual
//! closes — driven through the engine and a real SQLite store:
//!
//! - at most one open alert per (subject, type), in memory and on disk;
//! - every `RECOVERY` follows a problem of its subject that is closed;
//! - no notification twice for the same change of the same alert.

use std::collections::{HashMap, HashSet};

use citadel_monitor::alerts::{AlertStatus, AlertType};
use citadel_monitor::config::MonitorConfig;
use citadel_monitor::engine::{Engine, FollowUp};
use citadel_monitor::store::sqlite::SqliteStore;
use citadel_monitor::store::{AlertQuery, Commit, Store};
use citadel_transports::fleet::{self, FleetEvent, Heartbeat, Level, event_type};
use proptest::prelude::*;

const NODES: [&str; 2] = ["a", "b"];
const JOBS: [&str; 2] = ["etl", "render"];
const RECEIVER: &str = "http://hook.invalid/";

#[derive(Debug, Clone)]
enum Step {
    Beat(usize),
    Quiet(u64),
    Failed(usize),
    Succeeded(usize),
    Restart { replay: usize },
    Close(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..NODES.len()).prop_map(Step::Beat),
        2 => (500u64..8_000).prop_map(Step::Quiet),
        2 => (0..JOBS.len()).prop_map(Step::Failed),
        2 => (0..JOBS.len()).prop_map(Step::Succeeded),
        1 => (0usize..4).prop_map(|replay| Step::Restart { replay }),
        1 => (0usize..8).prop_map(Step::Close),
    ]
}

struct World {
    store: SqliteStore,
    _dir: tempfile::TempDir,
    engine: Engine,
    config: MonitorConfig,
    now: u64,
    seq: u64,
    /// Every entry applied, in order: (stream, id, fields).
    log: Vec<(&'static str, String, HashMap<String, String>)>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("m.sqlite")).unwrap();
        let config = MonitorConfig {
            redis_url: Some("redis://unused".into()),
            node_grace_ms: 0,
            recovery_ttl_s: 20,
            ..MonitorConfig::default()
        };
        let engine = Engine::resume(&config, store.load().unwrap(), vec![RECEIVER.into()], 1_000);
        World {
            store,
            _dir: dir,
            engine,
            config,
            now: 1_000,
            seq: 0,
            log: Vec::new(),
        }
    }

    fn commit(&mut self, commit: Commit) {
        self.store.commit(commit).expect("a commit the store takes");
    }

    fn entry(&mut self, stream: &'static str, fields: HashMap<String, String>) {
        self.now += 10;
        self.seq += 1;
        let id = format!("{}-{}", self.now, self.seq);
        let mut commit = Commit::default();
        self.engine
            .apply_entry(stream, &id, &fields, &mut commit, &mut FollowUp::default());
        self.commit(commit);
        self.log.push((stream, id, fields));
    }

    fn event(&mut self, event: FleetEvent) {
        let fields = event
            .entry_fields()
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect();
        self.entry(fleet::EVENTS_STREAM, fields);
    }

    fn run(&mut self, step: &Step) {
        match step {
            Step::Beat(node) => {
                let beat = Heartbeat {
                    node: NODES[*node].into(),
                    at_ms: self.now,
                    interval: std::time::Duration::from_millis(1000),
                    in_flight: 0,
                };
                let fields = beat
                    .entry_fields()
                    .into_iter()
                    .map(|(key, value)| (key.to_string(), value))
                    .collect();
                self.entry(fleet::HEARTBEATS_STREAM, fields);
            }
            Step::Quiet(ms) => {
                self.now += ms;
                let mut commit = Commit::default();
                self.engine.tick(self.now, true, &mut commit, &mut FollowUp::default());
                self.commit(commit);
            }
            Step::Failed(job) => self.event(
                FleetEvent::new(event_type::JOB_FAILED, Level::Error, NODES[0], "boom")
                    .for_job(JOBS[*job], "run", "t")
                    .with("willRetry", false),
            ),
            Step::Succeeded(job) => self.event(
                FleetEvent::new(event_type::JOB_COMPLETED, Level::Info, NODES[0], "ok").for_job(JOBS[*job], "run", "t"),
            ),
            Step::Restart { replay } => {
                self.engine = Engine::resume(
                    &self.config,
                    self.store.load().unwrap(),
                    vec![RECEIVER.into()],
                    self.now,
                );
                // The last entries were never acknowledged: read again.
                let again: Vec<_> = self.log.iter().rev().take(*replay).rev().cloned().collect();
                for (stream, id, fields) in again {
                    let mut commit = Commit::default();
                    self.engine
                        .apply_entry(stream, &id, &fields, &mut commit, &mut FollowUp::default());
                    assert!(
                        commit.alerts.is_empty() && commit.events.is_empty(),
                        "entry {id} applied twice"
                    );
                    self.commit(commit);
                }
            }
            Step::Close(pick) => {
                let open: Vec<i64> = self.engine.alerts().open().map(|alert| alert.id).collect();
                if let Some(id) = open.get(pick % open.len().max(1)) {
                    let mut commit = Commit::default();
                    assert!(self.engine.close(*id, "by hand", self.now, &mut commit).is_some());
                    self.commit(commit);
                }
            }
        }
    }

    fn check(&self) {
        let all = self
            .store
            .alerts(&AlertQuery {
                limit: 100_000,
                ..AlertQuery::default()
            })
            .unwrap();
        let mut open = HashSet::new();
        for alert in all.iter().filter(|alert| alert.status == AlertStatus::Open) {
            assert!(
                open.insert((alert.subject.clone(), alert.alert_type)),
                "two open {:?} on {}",
                alert.alert_type,
                alert.subject
            );
        }
        let memory: HashSet<_> = self
            .engine
            .alerts()
            .open()
            .map(|alert| (alert.subject.clone(), alert.alert_type))
            .collect();
        assert_eq!(open, memory, "the store and the engine agree on what is open");
        for recovery in all.iter().filter(|alert| alert.alert_type == AlertType::Recovery) {
            let from = recovery.details["recoveredFrom"]
                .as_i64()
                .expect("a recovery names its problem");
            let problem = all
                .iter()
                .find(|alert| alert.id == from)
                .expect("the problem is stored");
            assert_eq!(problem.subject, recovery.subject);
            assert_eq!(problem.status, AlertStatus::Closed, "recovered from a closed problem");
            assert!(problem.closed_at_ms.unwrap() <= recovery.opened_at_ms);
        }
        for alert in &all {
            let deliveries = self.store.deliveries(alert.id).unwrap();
            let mut seen = HashSet::new();
            for delivery in deliveries {
                assert!(
                    seen.insert((delivery.change.clone(), delivery.receiver.clone())),
                    "alert {} notified {} twice",
                    alert.id,
                    delivery.change
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn alerts_stay_one_per_subject_recover_after_problems_and_notify_once(steps in prop::collection::vec(step(), 1..60)) {
        let mut world = World::new();
        for step in &steps {
            world.run(step);
            world.check();
        }
    }
}

#[test]
fn a_silent_node_goes_down_and_recovers_with_its_next_beat() {
    let mut world = World::new();
    world.run(&Step::Beat(0));
    world.run(&Step::Quiet(3_000));
    let down = world
        .engine
        .alerts()
        .get(AlertType::NodeDown, "node:a")
        .expect("NODE_DOWN");
    assert!(down.message.contains("a stopped beating"), "{}", down.message);
    world.run(&Step::Restart { replay: 2 });
    world.run(&Step::Beat(0));
    assert!(world.engine.alerts().get(AlertType::NodeDown, "node:a").is_none());
    assert!(world.engine.alerts().get(AlertType::Recovery, "node:a").is_some());
    world.run(&Step::Beat(0));
    assert!(
        world.engine.alerts().get(AlertType::Recovery, "node:a").is_none(),
        "the next beat closes the RECOVERY"
    );
    world.check();
    let all = world
        .store
        .alerts(&AlertQuery {
            limit: 100,
            ..AlertQuery::default()
        })
        .unwrap();
    assert_eq!(all.len(), 2, "one NODE_DOWN, one RECOVERY: {all:?}");
    assert_eq!(world.store.deliveries(all[1].id).unwrap().len(), 2, "firing, resolved");
}

#[test]
fn a_device_configuration_without_alert_on_offline_silences_node_down() {
    let mut world = World::new();
    let mut status: serde_json::Value = serde_json::json!({
        "version": "1.0", "timestamp": "2026-12-07T00:00:00Z", "nodeId": "a",
        "status": {
            "version": "0.1.0", "timestamp": "2026-12-07T00:00:00Z",
            "node": {"name": "a", "id": "a", "tags": [], "device_config": {"alertOnOffline": false},
                     "uptime_seconds": 1, "mode": "redis"},
            "system": null, "gpu": [], "gpu_source": "none", "gpu_unavailable_reason": null,
            "services": [], "worker": {"consuming": true, "in_flight": 0, "processed": 0, "failed": 0,
                                       "last_job_consumed_at": null},
            "handlers": [], "processes": [], "collector_errors": []
        }
    });
    let entry = |status: &serde_json::Value| {
        HashMap::from([
            ("nodeId".to_string(), "a".to_string()),
            ("status".to_string(), "online".to_string()),
            ("payload".to_string(), status.to_string()),
        ])
    };
    world.entry(citadel_transports::wire::NODE_STATUS_STREAM, entry(&status));
    world.run(&Step::Beat(0));
    world.run(&Step::Quiet(5_000));
    assert_eq!(world.engine.registry().get("a").unwrap().state.as_str(), "down");
    assert!(
        world.engine.alerts().get(AlertType::NodeDown, "node:a").is_none(),
        "the operator asked for none"
    );
    status["status"]["node"]["device_config"]["alertOnOffline"] = serde_json::json!(true);
    world.entry(citadel_transports::wire::NODE_STATUS_STREAM, entry(&status));
    world.run(&Step::Quiet(5_000));
    assert!(world.engine.alerts().get(AlertType::NodeDown, "node:a").is_some());
}
