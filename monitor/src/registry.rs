//! The fleet's registry: the latest of every node, held in memory so that
//! a scheduler's question ("which up nodes have 20 GB free on one GPU for
//! model M?") is answered without touching the disk.
//!
//! A node's state comes from the age of the last thing it sent (heartbeat,
//! status, event), measured in its own heartbeat intervals: `up`, `late`
//! after `late_after_beats`, `down` after `down_after_beats`, `offline`
//! after a clean stop (`status stopping` or `node.stopping`). Times are the
//! Redis stream entry ids' (Redis's clock, one for the whole fleet), so
//! nodes' clock skew does not make them late. A node not heard from for
//! `stale_after_s` leaves the online set by itself (rbee's queen needed a
//! call for that) but keeps its history. Free VRAM is each GPU's own total
//! less its use — never an assumed card size — and summed per node.

use std::collections::HashMap;

use citadel_collector::status::{NodeStatus, ServiceHealth, ServiceState};
use serde::{Deserialize, Serialize};

use crate::config::MonitorConfig;

/// What a node's silence means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Beating.
    Up,
    /// A beat or so overdue.
    Late,
    /// Silent too long without saying goodbye.
    Down,
    /// Stopped cleanly.
    Offline,
}

impl NodeState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Late => "late",
            NodeState::Down => "down",
            NodeState::Offline => "offline",
        }
    }

    /// The state named `text`.
    pub fn parse(text: &str) -> Option<NodeState> {
        [NodeState::Up, NodeState::Late, NodeState::Down, NodeState::Offline]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// Heartbeat interval assumed for a node that has sent only status
/// snapshots (Citadel's own period), ms.
const SNAPSHOT_INTERVAL_MS: u64 = 30_000;

/// One node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: NodeState,
    /// When it was last heard from, ms since the epoch (Redis's clock).
    pub last_seen_ms: u64,
    /// When it was first heard from.
    pub first_seen_ms: u64,
    /// Its heartbeat interval, ms.
    pub interval_ms: u64,
    /// Jobs running on it, by its last heartbeat or status.
    pub in_flight: u64,
    /// Its latest full status.
    pub status: Option<NodeStatus>,
    /// When that status was written.
    pub status_at_ms: Option<u64>,
    /// When it last stopped cleanly (what it wrote before is no sign of a
    /// new life).
    pub stopped_at_ms: Option<u64>,
    /// What schedulers ask about, worked out once per status.
    pub summary: Summary,
}

/// A node's status, boiled down for scheduling queries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Models its running, healthy services serve (sorted).
    pub models: Vec<String>,
    /// Backends its running, healthy engines are (sorted).
    pub backends: Vec<String>,
    /// Free VRAM on all its GPUs, MiB.
    pub free_vram_mb: u64,
    /// Free VRAM on its emptiest GPU, MiB.
    pub max_free_vram_mb: u64,
    /// Whether a GPU is 5 % busy or more.
    pub gpu_busy: bool,
}

impl Summary {
    /// The summary of `status`.
    pub fn of(status: &NodeStatus) -> Summary {
        let serving = status.services.iter().filter(|service| {
            service.status == ServiceState::Running
                && matches!(service.health, ServiceHealth::Ok | ServiceHealth::Degraded)
        });
        let mut models: Vec<String> = serving.clone().flat_map(|service| service.models.clone()).collect();
        models.sort();
        models.dedup();
        let mut backends: Vec<String> = serving.flat_map(|service| service.backends.clone()).collect();
        backends.sort();
        backends.dedup();
        let free: Vec<u64> = status.gpu.iter().filter_map(free_mb).collect();
        Summary {
            models,
            backends,
            free_vram_mb: free.iter().sum(),
            max_free_vram_mb: free.iter().copied().max().unwrap_or(0),
            gpu_busy: status
                .gpu
                .iter()
                .any(|entry| entry.gpu.utilization_percent.unwrap_or(0) >= 5),
        }
    }
}

/// A GPU's free memory: as reported, else its own total less its use.
fn free_mb(entry: &citadel_collector::status::GpuEntry) -> Option<u64> {
    entry.memory_free_mb.or_else(|| {
        entry
            .gpu
            .memory_total_mb
            .zip(entry.gpu.memory_used_mb)
            .map(|(total, used)| total.saturating_sub(used))
    })
}

/// A node changed state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The node.
    pub node: String,
    /// Its state before (`None`: new).
    pub from: Option<NodeState>,
    /// Its state now.
    pub to: NodeState,
}

/// How silence is judged.
#[derive(Debug, Clone, Copy)]
pub struct Judging {
    late_after_beats: f64,
    down_after_beats: f64,
    grace_ms: u64,
    stale_after_ms: u64,
}

impl Judging {
    /// As `[monitor]` says.
    pub fn from_config(config: &MonitorConfig) -> Judging {
        Judging {
            late_after_beats: config.late_after_beats,
            down_after_beats: config.down_after_beats,
            grace_ms: config.node_grace_ms,
            stale_after_ms: config.stale_after_s * 1000,
        }
    }

    fn state_after(&self, silence_ms: u64, interval_ms: u64) -> NodeState {
        let beats = |count: f64| (count * interval_ms as f64) as u64 + self.grace_ms;
        if silence_ms > beats(self.down_after_beats) {
            NodeState::Down
        } else if silence_ms > beats(self.late_after_beats) {
            NodeState::Late
        } else {
            NodeState::Up
        }
    }
}

/// A scheduler's question (`GET /v1/nodes?…`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeQuery {
    /// Only nodes in this state.
    pub state: Option<NodeState>,
    /// Only nodes running no job, every GPU (if any) under 5 % busy.
    pub idle: Option<bool>,
    /// Only nodes with a running, healthy service listing this model.
    pub model: Option<String>,
    /// Only nodes with a running, healthy engine of this backend.
    pub backend: Option<String>,
    /// Only nodes with one GPU having at least this much free, MiB.
    pub min_free_vram_mb: Option<u64>,
    /// Only nodes carrying this tag.
    pub tag: Option<String>,
    /// Include nodes that left the online set.
    pub include_stale: bool,
}

/// A GPU, for people and schedulers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuView {
    /// Its index on the node.
    pub index: u32,
    /// Its model name.
    pub name: String,
    /// Its UUID.
    pub uuid: String,
    /// Busy, %.
    pub utilization_percent: Option<u32>,
    /// Memory in total, MiB.
    pub memory_total_mb: Option<u64>,
    /// Memory in use, MiB.
    pub memory_used_mb: Option<u64>,
    /// Memory free, MiB.
    pub memory_free_mb: Option<u64>,
    /// Temperature, °C.
    pub temperature_celsius: Option<u32>,
    /// Power draw, W.
    pub power_watts: Option<f64>,
}

/// A node, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its state.
    pub state: NodeState,
    /// Whether it left the online set (not heard from for `stale_after_s`).
    pub stale: bool,
    /// How it takes jobs (`redis`, `nexus`…).
    pub mode: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// When it was last heard from, ms since the epoch.
    pub last_seen_ms: u64,
    /// How long ago, ms.
    pub silent_for_ms: u64,
    /// Its heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Jobs running.
    pub in_flight: u64,
    /// Its GPUs.
    pub gpus: Vec<GpuView>,
    /// Free VRAM on all its GPUs, MiB.
    pub free_vram_mb: u64,
    /// Free VRAM on its emptiest GPU, MiB.
    pub max_free_vram_mb: u64,
    /// Models its running services serve.
    pub models: Vec<String>,
    /// Backends its running engines are.
    pub backends: Vec<String>,
    /// Job types it handles.
    pub job_types: Vec<String>,
    /// The services it runs, as its last status had them.
    pub services: Vec<ServiceView>,
}

/// A service in a [`NodeView`]: what a fleet table shows of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// Its name.
    pub name: String,
    /// Whether it runs.
    pub status: ServiceState,
    /// What its health check says.
    pub health: ServiceHealth,
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    nodes: HashMap<String, Node>,
    judging: Judging,
}

impl Registry {
    /// An empty registry judging as `judging` says.
    pub fn new(judging: Judging) -> Registry {
        Registry {
            nodes: HashMap::new(),
            judging,
        }
    }

    /// Nodes known, in no order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// One node.
    pub fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Take `node` as stored (at start).
    pub fn restore(&mut self, node: Node) {
        self.nodes.insert(node.id.clone(), node);
    }

    fn seen(&mut self, id: &str, at_ms: u64) -> (&mut Node, Option<NodeState>) {
        let known = self.nodes.contains_key(id);
        if !known {
            self.insert_new(id, at_ms);
        }
        let node = self.nodes.get_mut(id).expect("inserted above");
        let before = known.then_some(node.state);
        node.last_seen_ms = node.last_seen_ms.max(at_ms);
        (node, before)
    }

    fn insert_new(&mut self, id: &str, at_ms: u64) {
        self.nodes.insert(
            id.to_string(),
            Node {
                id: id.to_string(),
                state: NodeState::Up,
                last_seen_ms: at_ms,
                first_seen_ms: at_ms,
                interval_ms: SNAPSHOT_INTERVAL_MS,
                in_flight: 0,
                status: None,
                status_at_ms: None,
                stopped_at_ms: None,
                summary: Summary::default(),
            },
        );
    }

    /// `id` said it is alive at `at_ms` (a heartbeat every `interval_ms`,
    /// `in_flight` jobs running). Returns the transition it made, if any.
    pub fn heartbeat(&mut self, id: &str, at_ms: u64, interval_ms: u64, in_flight: u64) -> Option<Transition> {
        let (node, before) = self.seen(id, at_ms);
        node.interval_ms = interval_ms.max(1);
        node.in_flight = in_flight;
        Self::alive(node, before, at_ms)
    }

    /// `id` wrote a full status at `at_ms`; `stopping` when it is its last.
    pub fn status(&mut self, id: &str, at_ms: u64, status: NodeStatus, stopping: bool) -> Option<Transition> {
        let (node, before) = self.seen(id, at_ms);
        node.in_flight = status.worker.in_flight;
        node.summary = Summary::of(&status);
        node.status = Some(status);
        node.status_at_ms = Some(at_ms);
        if stopping {
            return Self::stopped(node, before, at_ms);
        }
        Self::alive(node, before, at_ms)
    }

    /// `id` wrote an event at `at_ms` (it is alive, unless it says it is stopping).
    pub fn event(&mut self, id: &str, at_ms: u64, stopping: bool) -> Option<Transition> {
        let (node, before) = self.seen(id, at_ms);
        if stopping {
            return Self::stopped(node, before, at_ms);
        }
        Self::alive(node, before, at_ms)
    }

    fn stopped(node: &mut Node, before: Option<NodeState>, at_ms: u64) -> Option<Transition> {
        node.stopped_at_ms = Some(node.stopped_at_ms.map_or(at_ms, |stopped| stopped.max(at_ms)));
        Self::set(node, before, NodeState::Offline)
    }

    fn alive(node: &mut Node, before: Option<NodeState>, at_ms: u64) -> Option<Transition> {
        // What a node wrote before its clean stop (read late) is no sign
        // of a new life; what its next run writes is.
        if node.stopped_at_ms.is_some_and(|stopped| at_ms <= stopped) {
            return None;
        }
        Self::set(node, before, NodeState::Up)
    }

    fn set(node: &mut Node, before: Option<NodeState>, to: NodeState) -> Option<Transition> {
        node.state = to;
        (before != Some(to)).then(|| Transition {
            node: node.id.clone(),
            from: before,
            to,
        })
    }

    /// Judge every node's silence at `now_ms`: up → late → down.
    pub fn judge(&mut self, now_ms: u64) -> Vec<Transition> {
        let judging = self.judging;
        let mut transitions = Vec::new();
        for node in self.nodes.values_mut() {
            if node.state == NodeState::Offline {
                continue;
            }
            let silence = now_ms.saturating_sub(node.last_seen_ms);
            let state = judging.state_after(silence, node.interval_ms);
            // Silence only makes things worse; only a sign of life makes
            // a node up again.
            if state != node.state && rank(state) > rank(node.state) {
                transitions.push(Transition {
                    node: node.id.clone(),
                    from: Some(node.state),
                    to: state,
                });
                node.state = state;
            }
        }
        transitions
    }

    /// Whether `node` left the online set at `now_ms`.
    pub fn is_stale(&self, node: &Node, now_ms: u64) -> bool {
        now_ms.saturating_sub(node.last_seen_ms) > self.judging.stale_after_ms
    }

    /// The nodes answering `query` at `now_ms`, by id. Filters run on
    /// each node's summary; only the answers are built into views.
    pub fn query(&self, query: &NodeQuery, now_ms: u64) -> Vec<NodeView> {
        let mut found: Vec<&Node> = self
            .nodes
            .values()
            .filter(|node| self.answers(node, query, now_ms))
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.into_iter().map(|node| self.view(node, now_ms)).collect()
    }

    fn answers(&self, node: &Node, query: &NodeQuery, now_ms: u64) -> bool {
        let summary = &node.summary;
        (query.include_stale || query.state.is_some() || !self.is_stale(node, now_ms))
            && query.state.is_none_or(|state| node.state == state)
            && query
                .min_free_vram_mb
                .is_none_or(|need| summary.max_free_vram_mb >= need)
            && query
                .model
                .as_ref()
                .is_none_or(|model| summary.models.binary_search(model).is_ok())
            && query
                .backend
                .as_ref()
                .is_none_or(|backend| summary.backends.binary_search(backend).is_ok())
            && query
                .idle
                .is_none_or(|idle| (node.in_flight == 0 && !summary.gpu_busy) == idle)
            && query.tag.as_ref().is_none_or(|tag| {
                node.status
                    .as_ref()
                    .is_some_and(|status| status.node.tags.contains(tag))
            })
    }

    /// `node` as the API shows it.
    pub fn view(&self, node: &Node, now_ms: u64) -> NodeView {
        let status = node.status.as_ref();
        let gpus: Vec<GpuView> = status
            .map(|status| {
                status
                    .gpu
                    .iter()
                    .map(|entry| {
                        let gpu = &entry.gpu;
                        GpuView {
                            index: gpu.index,
                            name: gpu.name.clone(),
                            uuid: gpu.uuid.clone(),
                            utilization_percent: gpu.utilization_percent,
                            memory_total_mb: gpu.memory_total_mb,
                            memory_used_mb: gpu.memory_used_mb,
                            memory_free_mb: free_mb(entry),
                            temperature_celsius: gpu.temperature_celsius,
                            power_watts: gpu.power_watts,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        NodeView {
            id: node.id.clone(),
            name: status.map_or_else(|| node.id.clone(), |status| status.node.name.clone()),
            state: node.state,
            stale: self.is_stale(node, now_ms),
            mode: status.map(|status| status.node.mode.as_str().to_string()),
            tags: status.map(|status| status.node.tags.clone()).unwrap_or_default(),
            last_seen_ms: node.last_seen_ms,
            silent_for_ms: now_ms.saturating_sub(node.last_seen_ms),
            heartbeat_interval_ms: node.interval_ms,
            in_flight: node.in_flight,
            free_vram_mb: node.summary.free_vram_mb,
            max_free_vram_mb: node.summary.max_free_vram_mb,
            gpus,
            models: node.summary.models.clone(),
            backends: node.summary.backends.clone(),
            job_types: status
                .map(|status| status.handlers.iter().map(|handler| handler.job_type.clone()).collect())
                .unwrap_or_default(),
            services: status
                .map(|status| {
                    status
                        .services
                        .iter()
                        .map(|service| ServiceView {
                            name: service.name.clone(),
                            status: service.status,
                            health: service.health,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn rank(state: NodeState) -> u8 {
    match state {
        NodeState::Up => 0,
        NodeState::Late => 1,
        NodeState::Down => 2,
        NodeState::Offline => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(Judging::from_config(&MonitorConfig {
            node_grace_ms: 0,
            ..MonitorConfig::default()
        }))
    }

    #[test]
    fn silence_makes_a_node_late_then_down_and_a_beat_brings_it_back() {
        let mut registry = registry();
        let new = registry.heartbeat("a", 1_000, 1_000, 0).unwrap();
        assert_eq!((new.from, new.to), (None, NodeState::Up));
        assert!(registry.judge(2_500).is_empty(), "1.5 beats: still up");
        assert_eq!(registry.judge(2_501)[0].to, NodeState::Late);
        assert_eq!(registry.judge(3_501)[0].to, NodeState::Down);
        assert!(registry.judge(60_000).is_empty(), "down stays down");
        let back = registry.heartbeat("a", 60_000, 1_000, 0).unwrap();
        assert_eq!((back.from, back.to), (Some(NodeState::Down), NodeState::Up));
    }

    #[test]
    fn a_clean_stop_is_offline_and_is_never_judged_down() {
        let mut registry = registry();
        registry.heartbeat("a", 1_000, 1_000, 0);
        let stop = registry.event("a", 1_500, true).unwrap();
        assert_eq!(stop.to, NodeState::Offline);
        assert!(registry.judge(100_000).is_empty());
        assert!(registry.query(&NodeQuery::default(), 100_000).is_empty(), "stale");
        let all = NodeQuery {
            include_stale: true,
            ..NodeQuery::default()
        };
        assert_eq!(registry.query(&all, 100_000)[0].state, NodeState::Offline);
        assert!(
            registry.heartbeat("a", 1_400, 1_000, 0).is_none(),
            "a beat from before the stop, read late"
        );
        assert_eq!(registry.heartbeat("a", 200_000, 1_000, 0).unwrap().to, NodeState::Up);
    }
}
