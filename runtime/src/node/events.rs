//! What the node tells the fleet besides its jobs and status snapshots
//! (`citadel:v1:events`, `citadel:v1:heartbeats`): it started or is
//! stopping; a handler was swapped or refused; a service started, exited,
//! was OOM-killed, restarted or turned unhealthy; an engine went down or
//! came back; a GPU ran hot or cooled — each found by comparing what the
//! telemetry reports now with what it reported before, so an event is
//! written once per change; and NVML's XID errors (`gpu.xid`). And between
//! snapshots, a light heartbeat.
//!
//! Without Redis (or with `telemetry.events` off) all of it is a no-op.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use citadel_collector::GpuInfo;
use citadel_collector::gpu::xid::XidError;
use citadel_collector::status::{HandlerStatus, ServiceHealth, ServiceState, ServiceStatus};
use citadel_transports::fleet::{FleetEvent, Heartbeat, Level, epoch_millis, event_type};
use citadel_transports::redis::FleetPublisher;
use tokio_util::sync::CancellationToken;

/// Longest a stopping node waits for its last events to be written.
const STOPPING_FLUSH: Duration = Duration::from_secs(2);
/// The service source whose services are inference engines.
const ENGINES: &str = "inference";

/// The node's own fleet events.
pub struct NodeEvents {
    publisher: Option<FleetPublisher>,
    node_id: String,
    /// GPU temperature at which `gpu.hot` is written, °C.
    hot_celsius: u32,
    /// GPUs (by UUID) hot at the last snapshot.
    hot: Mutex<BTreeSet<String>>,
}

impl NodeEvents {
    /// Events of node `node_id` through `publisher` (`None`: nowhere).
    pub fn new(publisher: Option<FleetPublisher>, node_id: &str, hot_celsius: u32) -> NodeEvents {
        NodeEvents {
            publisher,
            node_id: node_id.to_string(),
            hot_celsius,
            hot: Mutex::default(),
        }
    }

    /// Write `event` (queued; never waits).
    pub fn emit(&self, event: FleetEvent) {
        if let Some(publisher) = &self.publisher {
            publisher.emit(event);
        }
    }

    fn event(&self, kind: &str, level: Level, message: String) -> FleetEvent {
        FleetEvent::new(kind, level, &self.node_id, message)
    }

    /// `node.started`, in `mode` (`redis`, `nexus`).
    pub fn started(&self, mode: &str, version: &str) {
        let message = format!("{} started ({mode}, citadel {version})", self.node_id);
        self.emit(
            self.event(event_type::NODE_STARTED, Level::Info, message)
                .with("mode", mode)
                .with("version", version),
        );
    }

    /// `node.stopping`, written before this returns (or within 2 s).
    pub async fn stopping(&self) {
        let message = format!("{} is stopping cleanly", self.node_id);
        self.emit(self.event(event_type::NODE_STOPPING, Level::Info, message));
        if let Some(publisher) = &self.publisher {
            publisher.flush(STOPPING_FLUSH).await;
        }
    }

    /// Services of `source` changed from `before` to `after`.
    pub fn services_changed(&self, source: &str, before: &[ServiceStatus], after: &[ServiceStatus]) {
        if self.publisher.is_none() {
            return;
        }
        for event in service_events(&self.node_id, source, before, after) {
            self.emit(event);
        }
    }

    /// The handlers changed from `before` to `after`.
    pub fn handlers_changed(&self, before: &[HandlerStatus], after: &[HandlerStatus]) {
        if self.publisher.is_none() {
            return;
        }
        for event in handler_events(&self.node_id, before, after) {
            self.emit(event);
        }
    }

    /// A snapshot saw `gpus`: `gpu.hot` for each that crossed the limit
    /// since the last, `gpu.cooled` for each back under it.
    pub fn gpus_seen(&self, gpus: &[GpuInfo]) {
        let now: BTreeSet<String> = gpus
            .iter()
            .filter(|gpu| {
                gpu.temperature_celsius
                    .is_some_and(|celsius| celsius >= self.hot_celsius)
            })
            .map(|gpu| gpu.uuid.clone())
            .collect();
        let before = std::mem::replace(&mut *self.hot.lock().expect("hot GPUs poisoned"), now.clone());
        for gpu in gpus {
            let (kind, level, word) = match (before.contains(&gpu.uuid), now.contains(&gpu.uuid)) {
                (false, true) => (event_type::GPU_HOT, Level::Warn, "at or above"),
                (true, false) => (event_type::GPU_COOLED, Level::Info, "back under"),
                _ => continue,
            };
            let celsius = gpu.temperature_celsius.unwrap_or_default();
            let message = format!(
                "GPU {} ({}) at {celsius} °C, {word} {} °C",
                gpu.index, gpu.name, self.hot_celsius
            );
            self.emit(
                self.event(kind, level, message)
                    .with("gpu", gpu.index)
                    .with("uuid", gpu.uuid.clone())
                    .with("temperatureCelsius", celsius)
                    .with("limitCelsius", self.hot_celsius),
            );
        }
    }

    /// Whether events go anywhere.
    pub fn enabled(&self) -> bool {
        self.publisher.is_some()
    }

    /// `gpu.xid`: NVML reported an XID error on a GPU.
    pub fn gpu_xid(&self, error: &XidError) {
        let xid = error
            .xid
            .map_or_else(|| "an unknown XID".to_string(), |xid| format!("XID {xid}"));
        let message = format!("GPU {} ({}) reported {xid}", error.index, error.uuid);
        self.emit(
            self.event(event_type::GPU_XID, Level::Error, message)
                .with("gpu", error.index)
                .with("uuid", error.uuid.clone())
                .with("xid", error.xid),
        );
    }

    /// Append a heartbeat every `interval` until `stop`, saying how many
    /// jobs run (`in_flight`).
    pub async fn beat(&self, interval: Duration, in_flight: impl Fn() -> u64, stop: CancellationToken) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let beat = Heartbeat {
                node: self.node_id.clone(),
                at_ms: epoch_millis(SystemTime::now()),
                interval,
                in_flight: in_flight(),
            };
            let sent = tokio::select! {
                _ = stop.cancelled() => return,
                sent = tokio::time::timeout(interval, publisher.heartbeat(&beat)) => sent,
            };
            match sent {
                Ok(Ok(())) => failures = 0,
                Ok(Err(err)) => {
                    if citadel_transports::backoff::worth_logging(failures) {
                        tracing::warn!(error = %err, "cannot write the heartbeat");
                    }
                    failures += 1;
                }
                Err(_) => failures += 1,
            }
        }
    }
}

/// Whether a service (or engine) is up by its status and health.
fn is_up(service: &ServiceStatus) -> bool {
    service.status == ServiceState::Running && matches!(service.health, ServiceHealth::Ok | ServiceHealth::Degraded)
}

/// The events of the services of `source` going from `before` to `after`.
pub fn service_events(node: &str, source: &str, before: &[ServiceStatus], after: &[ServiceStatus]) -> Vec<FleetEvent> {
    let mut events = Vec::new();
    for service in after {
        let old = before.iter().find(|old| old.name == service.name);
        let event = |kind: &str, level: Level, message: String| {
            FleetEvent::new(kind, level, node, message)
                .with("service", service.name.clone())
                .with("kind", service.kind.clone())
                .with("status", service.status.as_str())
                .with("health", service.health.as_str())
        };
        if source == ENGINES {
            let (was_up, up) = (old.is_some_and(is_up), is_up(service));
            if old.is_some() && was_up == up || old.is_none() && up {
                continue;
            }
            events.push(if up {
                event(
                    event_type::ENGINE_UP,
                    Level::Info,
                    format!("engine {} answers again", service.name),
                )
            } else {
                event(
                    event_type::ENGINE_DOWN,
                    Level::Error,
                    format!("engine {} does not answer ({})", service.name, service.health.as_str()),
                )
            });
            continue;
        }
        let was_running = old.is_some_and(|old| old.status == ServiceState::Running);
        let restarts = |status: &ServiceStatus| status.restarts.unwrap_or(0);
        let restarted = old.is_some_and(|old| restarts(service) > restarts(old));
        let last_exit = service.last_exit.clone().unwrap_or_default();
        match (was_running, service.status == ServiceState::Running) {
            (false, true) if restarted => events.push(
                event(
                    event_type::SERVICE_RESTARTED,
                    Level::Warn,
                    format!("service {} restarted (restart {})", service.name, restarts(service)),
                )
                .with("restarts", restarts(service))
                .with("lastExit", last_exit),
            ),
            (false, true) => events.push(event(
                event_type::SERVICE_STARTED,
                Level::Info,
                format!("service {} started", service.name),
            )),
            (true, false) if last_exit.contains("out of memory") => events.push(
                event(
                    event_type::SERVICE_OOM_KILLED,
                    Level::Error,
                    format!("service {} was killed for memory: {last_exit}", service.name),
                )
                .with("lastExit", last_exit),
            ),
            (true, false) => events.push(
                event(
                    event_type::SERVICE_EXITED,
                    if service.status == ServiceState::Error {
                        Level::Error
                    } else {
                        Level::Info
                    },
                    format!("service {} exited: {}", service.name, or_unknown(&last_exit)),
                )
                .with("lastExit", last_exit),
            ),
            (true, true) => {
                let was_healthy = old.is_some_and(is_up);
                if was_healthy && !is_up(service) {
                    events.push(event(
                        event_type::SERVICE_UNHEALTHY,
                        Level::Error,
                        format!(
                            "service {} runs but fails its health check ({})",
                            service.name,
                            service.health.as_str()
                        ),
                    ));
                }
            }
            (false, false) => {}
        }
    }
    events
}

fn or_unknown(text: &str) -> &str {
    if text.is_empty() { "no exit recorded" } else { text }
}

/// The events of the handlers going from `before` to `after`: a digest
/// that changed is a swap, a refusal not seen before is a refusal.
pub fn handler_events(node: &str, before: &[HandlerStatus], after: &[HandlerStatus]) -> Vec<FleetEvent> {
    let mut events = Vec::new();
    for handler in after {
        let old = before.iter().find(|old| old.job_type == handler.job_type);
        if let Some(old) = old
            && old.digest != handler.digest
            && handler.digest.is_some()
        {
            let message = format!(
                "{} now runs {}",
                handler.job_type,
                handler.digest.as_deref().unwrap_or("a native handler")
            );
            events.push(
                FleetEvent::new(event_type::HANDLER_SWAPPED, Level::Info, node, message)
                    .with("jobType", handler.job_type.clone())
                    .with("digest", handler.digest.clone())
                    .with("previousDigest", old.digest.clone())
                    .with("origin", handler.source.as_str()),
            );
        }
        if let Some(refused) = &handler.refused
            && old.and_then(|old| old.refused.as_ref()) != Some(refused)
        {
            let message = format!("{} refused: {}", handler.job_type, refused.reason);
            events.push(
                FleetEvent::new(event_type::HANDLER_REFUSED, Level::Error, node, message)
                    .with("jobType", handler.job_type.clone())
                    .with("digest", refused.digest.clone())
                    .with("reason", refused.reason.clone()),
            );
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: ServiceState, health: ServiceHealth, restarts: u32, last_exit: Option<&str>) -> ServiceStatus {
        ServiceStatus {
            name: "llama".into(),
            kind: "native".into(),
            status,
            port: Some(8080),
            health,
            models: Vec::new(),
            placement: None,
            pid: None,
            restarts: Some(restarts),
            last_exit: last_exit.map(str::to_string),
            warning: None,
            backends: Vec::new(),
        }
    }

    fn kinds(events: &[FleetEvent]) -> Vec<&str> {
        events.iter().map(|event| event.event_type.as_str()).collect()
    }

    #[test]
    fn a_service_life_is_one_event_per_change() {
        use ServiceHealth::{Ok, Unhealthy};
        use ServiceState::{Error, Running, Stopped};
        let stopped = service(Stopped, Ok, 0, None);
        let running = service(Running, Ok, 0, None);
        let sick = service(Running, Unhealthy, 0, None);
        let oom = service(
            Error,
            Unhealthy,
            0,
            Some("killed by the kernel: out of memory (limit 64 MiB)"),
        );
        let back = service(Running, Ok, 1, None);
        let exited = service(Stopped, Ok, 1, Some("exited with status 0"));
        let steps = [
            (vec![], stopped.clone(), vec![]),
            (vec![stopped.clone()], running.clone(), vec!["service.started"]),
            (vec![running.clone()], running.clone(), vec![]),
            (vec![running.clone()], sick.clone(), vec!["service.unhealthy"]),
            (vec![sick.clone()], oom.clone(), vec!["service.oom_killed"]),
            (vec![oom.clone()], back.clone(), vec!["service.restarted"]),
            (vec![back.clone()], exited.clone(), vec!["service.exited"]),
        ];
        for (before, after, expected) in steps {
            let events = service_events("n1", "native", &before, &[after]);
            assert_eq!(kinds(&events), expected);
        }
    }

    #[test]
    fn engines_go_down_and_come_back() {
        let mut up = service(ServiceState::Running, ServiceHealth::Ok, 0, None);
        up.kind = "inference".into();
        let mut down = up.clone();
        down.status = ServiceState::Error;
        down.health = ServiceHealth::Unhealthy;
        assert!(service_events("n1", ENGINES, &[], std::slice::from_ref(&up)).is_empty());
        let events = service_events("n1", ENGINES, std::slice::from_ref(&up), std::slice::from_ref(&down));
        assert_eq!(kinds(&events), ["engine.down"]);
        assert_eq!(events[0].level, Level::Error);
        assert_eq!(events[0].meta["service"], "llama");
        let events = service_events("n1", ENGINES, &[down], &[up]);
        assert_eq!(kinds(&events), ["engine.up"]);
    }
}
