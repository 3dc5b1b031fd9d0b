//! The monitor's judgement: every input — a stream entry (status,
//! event, heartbeat), an event POSTed by a source that is not a node, a
//! tick of the clock, an operator closing an alert — goes through here and
//! comes out as one [`Commit`] (what to store, which alerts changed, which
//! notifications to send). Pure and synchronous: no I/O, so the rules can
//! be driven by a property test as well as by Redis.
//!
//! Stream entries carry their own time (the entry id is Redis's clock) and
//! their stream position; an entry at or before the position already
//! committed is skipped, so re-reading after a crash changes nothing.

use std::collections::{BTreeSet, HashMap};

use citadel_collector::status::StatusMessage;
use citadel_transports::fleet::{self, FleetEvent, Heartbeat, Level, event_type};
use citadel_transports::wire;
use serde_json::{Value, json};

use crate::alerts::{AlertChange, AlertType, Alerts, NewAlert};
use crate::checks::{Checks, Run};
use crate::config::MonitorConfig;
use crate::queues::Waiting;
use crate::registry::{Judging, Node, NodeState, Registry, Summary, Transition};
use crate::store::{Commit, GpuSample, Loaded, NewEvent, NodeRow, Sample};

/// A stream entry id's parts (`<ms>-<seq>`), ordered as Redis orders them.
pub fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// What the engine asks the runner to do after a commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FollowUp {
    /// Nodes that went down: find the jobs they held.
    pub orphans_of: Vec<String>,
    /// Nodes whose status was applied: live pages show their new numbers.
    pub reported: Vec<String>,
}

/// The judgement's state.
pub struct Engine {
    registry: Registry,
    alerts: Alerts,
    checks: Checks,
    config: MonitorConfig,
    receivers: Vec<String>,
    cursors: HashMap<String, (u64, u64)>,
    /// Nodes whose row changed since it was last stored.
    dirty: BTreeSet<String>,
    /// Nodes that write fleet events (their own `gpu.hot` rules their GPUs).
    eventful: BTreeSet<String>,
    /// Each node's `last_seen_ms` as last stored.
    stored_seen: HashMap<String, u64>,
}

/// How often a node's `last_seen_ms` moved by heartbeats alone is stored, ms.
const SEEN_STORE_INTERVAL_MS: u64 = 5_000;

impl Engine {
    /// Resume from `loaded` at `now_ms`, notifying `receivers`.
    pub fn resume(config: &MonitorConfig, loaded: Loaded, receivers: Vec<String>, now_ms: u64) -> Engine {
        let mut registry = Registry::new(Judging::from_config(config));
        for row in loaded.nodes {
            let status = row.status.as_deref().and_then(|status| {
                serde_json::from_str::<StatusMessage>(status)
                    .ok()
                    .map(|message| message.status)
            });
            registry.restore(Node {
                summary: status.as_ref().map(Summary::of).unwrap_or_default(),
                status,
                id: row.id,
                state: row.state,
                last_seen_ms: row.last_seen_ms,
                first_seen_ms: row.first_seen_ms,
                interval_ms: row.interval_ms,
                in_flight: 0,
                status_at_ms: row.status_at_ms,
                stopped_at_ms: row.stopped_at_ms,
            });
        }
        Engine {
            registry,
            alerts: Alerts::resume(loaded.open_alerts, loaded.last_alert_id, config.recovery_ttl_s * 1000),
            checks: Checks::resume(loaded.checks, config, now_ms),
            config: config.clone(),
            receivers,
            cursors: loaded
                .cursors
                .into_iter()
                .filter_map(|(stream, id)| Some((stream, entry_id(&id)?)))
                .collect(),
            dirty: BTreeSet::new(),
            eventful: BTreeSet::new(),
            stored_seen: HashMap::new(),
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The open alerts.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The job checks.
    pub fn checks(&self) -> &Checks {
        &self.checks
    }

    /// Apply entry `id` of `stream`; skipped when already applied.
    pub fn apply_entry(
        &mut self,
        stream: &str,
        id: &str,
        fields: &HashMap<String, String>,
        commit: &mut Commit,
        follow: &mut FollowUp,
    ) {
        let Some(position) = entry_id(id) else {
            tracing::warn!(stream, id, "an entry id that is not <ms>-<seq>: skipped");
            return;
        };
        if self.cursors.get(stream).is_some_and(|done| position <= *done) {
            return;
        }
        self.cursors.insert(stream.to_string(), position);
        commit.cursors.retain(|(known, _)| known != stream);
        commit.cursors.push((stream.to_string(), id.to_string()));
        let at_ms = position.0;
        match stream {
            fleet::HEARTBEATS_STREAM => match Heartbeat::from_entry(fields) {
                Ok(beat) => {
                    let interval = u64::try_from(beat.interval.as_millis()).unwrap_or(u64::MAX);
                    let transition = self.registry.heartbeat(&beat.node, at_ms, interval, beat.in_flight);
                    self.signs_of_life(&beat.node, transition, at_ms, commit, follow);
                }
                Err(err) => tracing::warn!(id, error = %err, "a heartbeat that does not parse: skipped"),
            },
            fleet::EVENTS_STREAM => match FleetEvent::from_entry(fields) {
                Ok(event) => self.event(Some(id), at_ms, event, commit, follow),
                Err(err) => tracing::warn!(id, error = %err, "a fleet event that does not parse: skipped"),
            },
            wire::NODE_STATUS_STREAM => self.status(fields, at_ms, commit, follow),
            _ => tracing::warn!(stream, "an entry of a stream the monitor does not read: skipped"),
        }
    }

    /// Apply events a source POSTed, received at `now_ms`.
    pub fn apply_posted(&mut self, events: Vec<FleetEvent>, now_ms: u64, commit: &mut Commit, follow: &mut FollowUp) {
        for event in events {
            let at_ms = event
                .at
                .as_deref()
                .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
                .map_or(now_ms, fleet::epoch_millis);
            self.event(None, at_ms, event, commit, follow);
        }
    }

    fn status(&mut self, fields: &HashMap<String, String>, at_ms: u64, commit: &mut Commit, follow: &mut FollowUp) {
        let Some(payload) = fields.get("payload") else {
            return;
        };
        let message: StatusMessage = match serde_json::from_str(payload) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "a status entry whose payload is not a status message: skipped");
                return;
            }
        };
        let node = fields.get("nodeId").cloned().unwrap_or_else(|| message.node_id.clone());
        let stopping = fields.get("status").map(String::as_str) == Some("stopping");
        let status = message.status;
        commit.samples.push(sample(&node, at_ms, &status));
        let gpus: Vec<(String, u32, Option<u32>)> = status
            .gpu
            .iter()
            .map(|entry| (entry.gpu.uuid.clone(), entry.gpu.index, entry.gpu.temperature_celsius))
            .collect();
        let transition = self.registry.status(&node, at_ms, status, stopping);
        self.signs_of_life(&node, transition, at_ms, commit, follow);
        follow.reported.push(node.clone());
        self.dirty.remove(&node);
        if let Some(row) = self.node_row(&node, Some(payload)) {
            commit.nodes.retain(|known| known.id != row.id);
            commit.nodes.push(row);
        }
        // Nodes that write no events (Citadel's own) are judged hot here.
        if !self.eventful.contains(&node) {
            for (uuid, index, celsius) in gpus {
                let Some(celsius) = celsius else { continue };
                let hot = celsius >= self.config.high_temp_celsius;
                self.gpu(&node, &uuid, index, celsius, hot, at_ms, commit);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn gpu(&mut self, node: &str, uuid: &str, index: u32, celsius: u32, hot: bool, at_ms: u64, commit: &mut Commit) {
        let subject = format!("gpu:{node}/{uuid}");
        if hot && !self.wants(node, "alertOnHighTemp") {
            return;
        }
        if hot {
            let alert = NewAlert {
                alert_type: AlertType::GpuHot,
                subject,
                node: Some(node.to_string()),
                job_name: None,
                message: format!("GPU {index} on {node} is at {celsius} °C"),
                details: json!({ "gpu": index, "uuid": uuid, "temperatureCelsius": celsius }),
            };
            let raised = self.alerts.raise(alert, at_ms);
            self.changed(raised, commit);
        } else {
            let changes = self
                .alerts
                .resolve(AlertType::GpuHot, &subject, &format!("cooled to {celsius} °C"), at_ms);
            self.all_changed(changes, commit);
        }
    }

    fn event(
        &mut self,
        stream_id: Option<&str>,
        at_ms: u64,
        event: FleetEvent,
        commit: &mut Commit,
        follow: &mut FollowUp,
    ) {
        if let Some(node) = event.node.clone().filter(|node| !node.is_empty()) {
            if event.source_type == fleet::SOURCE_CITADEL {
                self.eventful.insert(node.clone());
            }
            let stopping = event.event_type == event_type::NODE_STOPPING;
            let transition = self.registry.event(&node, at_ms, stopping);
            self.signs_of_life(&node, transition, at_ms, commit, follow);
        }
        self.rules(&event, at_ms, commit);
        commit.events.push(NewEvent {
            stream_id: stream_id.map(str::to_string),
            at_ms,
            event,
        });
    }

    /// What an event means for checks and alerts.
    fn rules(&mut self, event: &FleetEvent, at_ms: u64, commit: &mut Commit) {
        let node = event.node.as_deref().unwrap_or("");
        let meta_str = |key: &str| event.meta.get(key).and_then(Value::as_str).unwrap_or("").to_string();
        match event.event_type.as_str() {
            event_type::JOB_STARTED
            | event_type::JOB_COMPLETED
            | event_type::JOB_FAILED
            | event_type::JOB_DEAD_LETTERED => {
                let Some(job) = event.job_name.clone().filter(|job| !job.is_empty()) else {
                    return;
                };
                let will_retry = event.meta.get("willRetry").and_then(Value::as_bool) == Some(true);
                let run = match event.event_type.as_str() {
                    event_type::JOB_STARTED => Run::Started,
                    event_type::JOB_COMPLETED if event.level < Level::Error => Run::Succeeded,
                    event_type::JOB_FAILED if will_retry => return,
                    _ => Run::Failed,
                };
                self.job_run(&job, run, event, at_ms, commit);
            }
            event_type::GPU_HOT | event_type::GPU_COOLED => {
                let number = |key: &str| event.meta.get(key).and_then(Value::as_u64).unwrap_or(0);
                let index = u32::try_from(number("gpu")).unwrap_or(0);
                let celsius = u32::try_from(number("temperatureCelsius")).unwrap_or(0);
                let hot = event.event_type == event_type::GPU_HOT;
                self.gpu(node, &meta_str("uuid"), index, celsius, hot, at_ms, commit);
            }
            event_type::SERVICE_EXITED
            | event_type::SERVICE_OOM_KILLED
            | event_type::SERVICE_UNHEALTHY
            | event_type::ENGINE_DOWN => {
                if event.event_type == event_type::SERVICE_EXITED && event.level < Level::Error {
                    return;
                }
                let service = meta_str("service");
                let alert = NewAlert {
                    alert_type: AlertType::ServiceDown,
                    subject: format!("service:{node}/{service}"),
                    node: Some(node.to_string()),
                    job_name: None,
                    message: event.message.clone(),
                    details: json!({ "service": service, "event": event.event_type, "meta": event.meta }),
                };
                let raised = self.alerts.raise(alert, at_ms);
                self.changed(raised, commit);
            }
            event_type::SERVICE_STARTED | event_type::SERVICE_RESTARTED | event_type::ENGINE_UP => {
                let subject = format!("service:{node}/{}", meta_str("service"));
                let changes = self
                    .alerts
                    .resolve(AlertType::ServiceDown, &subject, &event.message, at_ms);
                self.all_changed(changes, commit);
            }
            _ => {}
        }
    }

    fn job_run(&mut self, job: &str, run: Run, event: &FleetEvent, at_ms: u64, commit: &mut Commit) {
        let row = self.checks.record(job, run, at_ms);
        let alert_on_failure = self.checks.config(job).is_none_or(|check| check.alert_on_failure);
        // One row per job type per commit: its latest.
        match commit.checks.iter_mut().find(|known| known.job_name == row.job_name) {
            Some(known) => *known = row.clone(),
            None => commit.checks.push(row.clone()),
        }
        let subject = format!("job:{job}");
        // A run is the job type's sign of life: a RECOVERY from before closes.
        let alive = self.alerts.alive(&subject, at_ms);
        self.changed(alive, commit);
        if self.alerts.get(AlertType::Missed, &subject).is_some() {
            let ran = self
                .alerts
                .resolve(AlertType::Missed, &subject, &format!("{job} ran again"), at_ms);
            self.all_changed(ran, commit);
        }
        match run {
            Run::Started => {}
            Run::Succeeded => {
                let failing = [AlertType::Failure, AlertType::DeadLetter]
                    .into_iter()
                    .filter(|kind| self.alerts.get(*kind, &subject).is_some())
                    .collect::<Vec<_>>();
                let reason = format!("{job} succeeded on {}", event.node.as_deref().unwrap_or("?"));
                for kind in failing {
                    let recovered = self.alerts.resolve(kind, &subject, &reason, at_ms);
                    self.all_changed(recovered, commit);
                }
            }
            Run::Failed => {
                let details = json!({
                    "consecutiveFailures": row.consecutive_failures,
                    "lastError": event.message,
                    "errorClass": event.meta.get("errorClass"),
                    "runId": event.run_id,
                    "node": event.node,
                });
                if event.event_type == event_type::JOB_DEAD_LETTERED {
                    let alert = NewAlert {
                        alert_type: AlertType::DeadLetter,
                        subject: subject.clone(),
                        node: event.node.clone(),
                        job_name: Some(job.to_string()),
                        message: format!("a {job} job was dead-lettered: {}", event.message),
                        details: details.clone(),
                    };
                    let raised = self.alerts.raise(alert, at_ms);
                    self.changed(raised, commit);
                }
                if alert_on_failure {
                    let alert = NewAlert {
                        alert_type: AlertType::Failure,
                        subject: subject.clone(),
                        node: event.node.clone(),
                        job_name: Some(job.to_string()),
                        message: format!("{job} failed: {}", event.message),
                        details: details.clone(),
                    };
                    match self.alerts.raise(alert, at_ms) {
                        Some(opened) => self.changed(Some(opened), commit),
                        None => {
                            let updated = self.alerts.update(AlertType::Failure, &subject, details);
                            self.changed(updated, commit);
                        }
                    }
                }
            }
        }
    }

    /// A node showed a sign of life (or said it stops): its state moved
    /// by `transition`, if at all.
    fn signs_of_life(
        &mut self,
        node: &str,
        transition: Option<Transition>,
        at_ms: u64,
        commit: &mut Commit,
        follow: &mut FollowUp,
    ) {
        let subject = format!("node:{node}");
        if self
            .registry
            .get(node)
            .is_some_and(|known| known.state == NodeState::Up)
        {
            let alive = self.alerts.alive(&subject, at_ms);
            self.changed(alive, commit);
        }
        if let Some(transition) = transition {
            self.transition(transition, at_ms, commit, follow);
        }
    }

    fn transition(&mut self, transition: Transition, at_ms: u64, commit: &mut Commit, follow: &mut FollowUp) {
        let node = transition.node.clone();
        let subject = format!("node:{node}");
        self.dirty.insert(node.clone());
        match transition.to {
            NodeState::Down => {
                let silent_s = self
                    .registry
                    .get(&node)
                    .map_or(0, |known| at_ms.saturating_sub(known.last_seen_ms) / 1000);
                let alert = NewAlert {
                    alert_type: AlertType::NodeDown,
                    subject,
                    node: Some(node.clone()),
                    job_name: None,
                    message: format!("{node} stopped beating {silent_s} s ago without saying goodbye"),
                    details: json!({ "lastSeenMs": self.registry.get(&node).map(|known| known.last_seen_ms), "orphans": [] }),
                };
                if !self.wants(&node, "alertOnOffline") {
                    return;
                }
                if let Some(opened) = self.alerts.raise(alert, at_ms) {
                    follow.orphans_of.push(node);
                    self.changed(Some(opened), commit);
                }
            }
            NodeState::Up => {
                let changes = self.alerts.resolve(
                    AlertType::NodeDown,
                    &subject,
                    &format!("{node} is beating again"),
                    at_ms,
                );
                self.all_changed(changes, commit);
            }
            NodeState::Offline => {
                // A node that was down and now says goodbye: closed, no
                // recovery to announce.
                let id = self.alerts.get(AlertType::NodeDown, &subject).map(|alert| alert.id);
                if let Some(id) = id {
                    let closed = self.alerts.close_by_id(id, "the node stopped cleanly", at_ms);
                    self.changed(closed, commit);
                }
            }
            NodeState::Late => {}
        }
    }

    /// Whether `node`'s device configuration (from the control plane,
    /// reported in its status) wants alerts of kind `key`
    /// (`alertOnOffline`, `alertOnHighTemp`): as it says (absent: no, as
    /// Citadel reads it); a node without one gets them all.
    fn wants(&self, node: &str, key: &str) -> bool {
        let device = self
            .registry
            .get(node)
            .and_then(|known| known.status.as_ref())
            .and_then(|status| status.node.device_config.as_ref());
        match device {
            Some(device) => device.get(key).and_then(Value::as_bool).unwrap_or(false),
            None => true,
        }
    }

    /// The jobs `node` held when it went down, and where they are now.
    pub fn orphans_found(&mut self, node: &str, orphans: Value, commit: &mut Commit) {
        let subject = format!("node:{node}");
        let Some(alert) = self.alerts.get(AlertType::NodeDown, &subject) else {
            return;
        };
        let mut details = alert.details.clone();
        details["orphans"] = orphans;
        let updated = self.alerts.update(AlertType::NodeDown, &subject, details);
        self.changed(updated, commit);
    }

    /// Judge the passing of time at `now_ms`: silent nodes (only when
    /// `streams_current`: the monitor has read the streams up to now, so
    /// silence is the nodes' and not its own), missed cadences, expired
    /// recoveries; store nodes that changed.
    pub fn tick(&mut self, now_ms: u64, streams_current: bool, commit: &mut Commit, follow: &mut FollowUp) {
        if streams_current {
            for transition in self.registry.judge(now_ms) {
                self.transition(transition, now_ms, commit, follow);
            }
        }
        for (job, expected_ms) in self.checks.missed(now_ms) {
            let late_s = now_ms.saturating_sub(expected_ms) / 1000;
            let alert = NewAlert {
                alert_type: AlertType::Missed,
                subject: format!("job:{job}"),
                node: None,
                job_name: Some(job.clone()),
                message: format!("{job} was expected {late_s} s ago and has not run"),
                details: json!({ "expectedAtMs": expected_ms }),
            };
            let raised = self.alerts.raise(alert, now_ms);
            self.changed(raised, commit);
        }
        let expired = self.alerts.expire(now_ms);
        self.all_changed(expired, commit);
        // Heartbeats move `last_seen` in memory; it is stored now and then.
        for node in self.registry.nodes() {
            let stored = self.stored_seen.get(&node.id).copied().unwrap_or(0);
            if node.last_seen_ms >= stored + SEEN_STORE_INTERVAL_MS {
                self.dirty.insert(node.id.clone());
            }
        }
        for id in std::mem::take(&mut self.dirty) {
            if let Some(row) = self.node_row(&id, None) {
                commit.nodes.retain(|known| known.id != row.id);
                commit.nodes.push(row);
            }
        }
    }

    /// Weigh the queues' `waiting` jobs against the nodes up at `now_ms`:
    /// waiting past `grace_ms` with no up node handling their type (and
    /// serving their model) opens `BACKLOG_STUCK`; any other open one —
    /// drained, or served again — closes.
    pub fn backlog(&mut self, waiting: &[Waiting], grace_ms: u64, now_ms: u64, commit: &mut Commit) {
        let registry = &self.registry;
        let served = |job: &Waiting| {
            registry.nodes().filter(|node| node.state == NodeState::Up).any(|node| {
                let Some(status) = &node.status else { return false };
                let handles = status.handlers.iter().any(|handler| handler.job_type == job.job_type);
                let serves_model = job
                    .model
                    .as_ref()
                    .is_none_or(|model| status.services.iter().any(|service| service.models.contains(model)));
                handles && serves_model
            })
        };
        let stuck: Vec<&Waiting> = waiting
            .iter()
            .filter(|job| now_ms.saturating_sub(job.oldest_ms) >= grace_ms && !served(job))
            .collect();
        for job in &stuck {
            let what = match &job.model {
                Some(model) => format!("{} jobs for model {model}", job.job_type),
                None => format!("{} jobs", job.job_type),
            };
            let alert = NewAlert {
                alert_type: AlertType::BacklogStuck,
                subject: job.subject(),
                node: None,
                job_name: Some(job.job_type.clone()),
                message: format!(
                    "{} {what} have waited in {} for {} s and no up node serves them",
                    job.count,
                    job.queue,
                    now_ms.saturating_sub(job.oldest_ms) / 1000
                ),
                details: json!({
                    "queue": job.queue,
                    "jobType": job.job_type,
                    "model": job.model,
                    "waiting": job.count,
                    "oldestMs": job.oldest_ms,
                }),
            };
            let raised = self.alerts.raise(alert, now_ms);
            self.changed(raised, commit);
        }
        let still: BTreeSet<String> = stuck.iter().map(|job| job.subject()).collect();
        let over: Vec<String> = self
            .alerts
            .open()
            .filter(|alert| alert.alert_type == AlertType::BacklogStuck && !still.contains(&alert.subject))
            .map(|alert| alert.subject.clone())
            .collect();
        for subject in over {
            let changes = self
                .alerts
                .resolve(AlertType::BacklogStuck, &subject, "served or drained", now_ms);
            self.all_changed(changes, commit);
        }
    }

    /// How far dead-letter queue `key` has been looked at (`None`: never).
    pub fn dead_letter_cursor(&self, key: &str) -> Option<String> {
        self.cursors.get(key).map(|(ms, seq)| format!("{ms}-{seq}"))
    }

    /// New entries of dead-letter queue `key` (after its cursor, or after
    /// the monitor's start on first sight); `last` is the queue's newest.
    /// Entries moved there by nodes that write fleet events were already
    /// judged from their `job.dead_lettered`; the others (Citadel's own
    /// workers, anything else) open `DEAD_LETTER` on their job type, or on
    /// the queue when the entry does not say.
    pub fn dead_letters(
        &mut self,
        key: &str,
        entries: &[(String, HashMap<String, String>)],
        last: &str,
        now_ms: u64,
        commit: &mut Commit,
    ) {
        for (id, fields) in entries {
            let worker = fields.get("worker_id").map_or("", String::as_str);
            let node = node_of_consumer(worker);
            if self.eventful.contains(node) {
                continue;
            }
            let job_type = fields
                .get("payload")
                .and_then(|payload| serde_json::from_str::<Value>(payload).ok())
                .and_then(|payload| payload["type"].as_str().map(str::to_string));
            let subject = match &job_type {
                Some(job_type) => format!("job:{job_type}"),
                None => format!("dlq:{key}"),
            };
            let reason = fields.get("reason").cloned().unwrap_or_default();
            let alert = NewAlert {
                alert_type: AlertType::DeadLetter,
                subject,
                node: (!node.is_empty()).then(|| node.to_string()),
                job_name: job_type.clone(),
                message: format!("a job was dead-lettered to {key}: {reason}"),
                details: json!({
                    "queue": key,
                    "entryId": id,
                    "jobId": fields.get("jobId"),
                    "reason": reason,
                    "workerId": worker,
                    "attempts": fields.get("attempts"),
                }),
            };
            let raised = self.alerts.raise(alert, now_ms);
            self.changed(raised, commit);
        }
        let position = entries.last().map_or(last, |(id, _)| id.as_str());
        if let Some(at) = entry_id(position)
            && self.cursors.get(key).is_none_or(|done| at > *done)
        {
            self.cursors.insert(key.to_string(), at);
            commit.cursors.push((key.to_string(), position.to_string()));
        }
    }

    /// An operator closes alert `id` with `reason`.
    pub fn close(&mut self, id: i64, reason: &str, now_ms: u64, commit: &mut Commit) -> Option<AlertChange> {
        let closed = self.alerts.close_by_id(id, reason, now_ms)?;
        self.changed(Some(closed.clone()), commit);
        Some(closed)
    }

    fn changed(&self, change: Option<AlertChange>, commit: &mut Commit) {
        let Some(change) = change else { return };
        if !matches!(change, AlertChange::Updated(_)) {
            let index = commit.alerts.len();
            commit
                .deliveries
                .extend(self.receivers.iter().map(|receiver| (index, receiver.clone())));
        }
        commit.alerts.push(change);
    }

    fn all_changed(&self, changes: Vec<AlertChange>, commit: &mut Commit) {
        for change in changes {
            self.changed(Some(change), commit);
        }
    }

    /// The row of node `id` to store (`status`: the JSON of the status
    /// just applied).
    fn node_row(&mut self, id: &str, status: Option<&str>) -> Option<NodeRow> {
        let node = self.registry.get(id)?;
        self.stored_seen.insert(node.id.clone(), node.last_seen_ms);
        Some(NodeRow {
            id: node.id.clone(),
            state: node.state,
            last_seen_ms: node.last_seen_ms,
            first_seen_ms: node.first_seen_ms,
            interval_ms: node.interval_ms,
            status: status.map(str::to_string),
            status_at_ms: node.status_at_ms,
            stopped_at_ms: node.stopped_at_ms,
        })
    }
}

/// The node of a worker's consumer name (`<node>-<pid>-<tag>`).
fn node_of_consumer(consumer: &str) -> &str {
    let mut parts = consumer.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_tag), Some(_pid), Some(node)) => node,
        _ => consumer,
    }
}

/// The numbers of a status for the rollups.
fn sample(node: &str, at_ms: u64, status: &citadel_collector::status::NodeStatus) -> Sample {
    Sample {
        node: node.to_string(),
        at_ms,
        cpu_percent: status.system.as_ref().map(|system| system.cpu_percent),
        memory_percent: status.system.as_ref().map(|system| system.memory_percent),
        gpus: status
            .gpu
            .iter()
            .map(|entry| {
                let gpu = &entry.gpu;
                GpuSample {
                    index: gpu.index,
                    utilization_percent: gpu.utilization_percent.map(f64::from),
                    temperature_celsius: gpu.temperature_celsius.map(f64::from),
                    memory_used_mb: gpu.memory_used_mb.map(|mb| mb as f64),
                    memory_total_mb: gpu.memory_total_mb.map(|mb| mb as f64),
                    power_watts: gpu.power_watts,
                }
            })
            .collect(),
    }
}
