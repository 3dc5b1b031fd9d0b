//! `citadel up`: Citadel's one-command on-prem start. The node's
//! `[[services]]` start (each in its cgroup), `up` waits until every one of
//! them is healthy — a line per service as it starts and as it becomes
//! healthy (or, without a health check, has kept running for
//! [`STEADY`]) — and then runs the agent: jobs from the Nexus API, from Redis
//! Streams while Redis answers when `redis_url` is set (as `citadel
//! agent`). A service that fails to come up stops everything: its reason
//! and log are printed and `up` exits 1, so a broken engine never takes
//! jobs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use citadel_collector::status::{ServiceHealth, ServiceState};
use clap::Args;
use serde::Serialize;

use super::agent::AgentArgs;
use super::{Failure, output};
use crate::config::Config;
use crate::node::Sources;
use crate::services::Supervisor;

/// Arguments of `citadel up`: the agent's, and how long services may take.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The agent's flags.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Longest wait for every service to be healthy, seconds.
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub wait_s: u64,
}

impl UpArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        self.agent.overrides()
    }
}

pub(super) async fn up(args: UpArgs, config: &Config) -> Result<(), Failure> {
    super::node::run_node(config, Sources::Nexus, Some(Duration::from_secs(args.wait_s))).await
}

/// How long a service without a health check must keep running to count
/// as up (one that cannot start usually fails well within it).
pub const STEADY: Duration = Duration::from_secs(1);

/// What one service was last seen doing, as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Starting,
    Running,
    Healthy,
}

/// Wait until every wanted service runs and is healthy (or has no health
/// check), printing a line per service as it gets there; the first that
/// fails, or the deadline, is the reason returned.
pub(super) async fn wait_for_services(
    supervisor: &Supervisor,
    within: Duration,
    state_dir: &std::path::Path,
) -> Result<(), Failure> {
    let wanted = supervisor.wanted();
    if wanted.is_empty() {
        output::line("no services to start ([[services]], or none wanted by the device configuration)");
        return Ok(());
    }
    output::line(format!("starting {} service(s): {}", wanted.len(), wanted.join(", ")));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut changes = supervisor.subscribe();
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    // When each service without a health check was first seen running (by pid).
    let mut running_since: BTreeMap<String, (Option<u32>, tokio::time::Instant)> = BTreeMap::new();
    loop {
        let statuses = supervisor.statuses();
        let mut ready = 0;
        let mut recheck_at: Option<tokio::time::Instant> = None;
        for name in &wanted {
            let Some(service) = statuses.iter().find(|service| &service.name == name) else {
                continue;
            };
            if service.status == ServiceState::Error {
                let log = state_dir.join("services").join(format!("{name}.stderr.log"));
                return Err(Failure::job(format!(
                    "service {name} did not come up: {} (its stderr: {}); stopping",
                    service.last_exit.as_deref().unwrap_or("it failed"),
                    log.display()
                )));
            }
            let now = match (service.status, service.health) {
                (ServiceState::Running, ServiceHealth::Ok) => Seen::Healthy,
                (ServiceState::Running, ServiceHealth::Unknown) => {
                    let since = running_since
                        .entry(name.clone())
                        .and_modify(|(pid, since)| {
                            if *pid != service.pid {
                                *pid = service.pid;
                                *since = tokio::time::Instant::now();
                            }
                        })
                        .or_insert((service.pid, tokio::time::Instant::now()))
                        .1;
                    if since.elapsed() >= STEADY {
                        Seen::Healthy
                    } else {
                        let at = since + STEADY;
                        recheck_at = Some(recheck_at.map_or(at, |other| other.min(at)));
                        Seen::Running
                    }
                }
                (ServiceState::Running, _) => Seen::Running,
                _ => Seen::Starting,
            };
            if seen.get(name) != Some(&now) {
                let placement = service.placement.as_deref().unwrap_or("plain");
                match now {
                    Seen::Starting => {}
                    Seen::Running if service.health == ServiceHealth::Unknown => output::line(format!(
                        "service {name}: running (pid {}, {placement}), no health check: up once it has run for {} s",
                        service.pid.unwrap_or_default(),
                        STEADY.as_secs()
                    )),
                    Seen::Running => output::line(format!(
                        "service {name}: running (pid {}, {placement}), waiting for its health check",
                        service.pid.unwrap_or_default()
                    )),
                    Seen::Healthy if service.health == ServiceHealth::Unknown => output::line(format!(
                        "service {name}: up (still running after {} s)",
                        STEADY.as_secs()
                    )),
                    Seen::Healthy => output::line(format!(
                        "service {name}: healthy after {:.1} s",
                        started.elapsed().as_secs_f64()
                    )),
                }
                seen.insert(name.clone(), now.clone());
            }
            if now == Seen::Healthy {
                ready += 1;
            }
        }
        if ready == wanted.len() {
            output::line(format!("all services up in {:.1} s", started.elapsed().as_secs_f64()));
            return Ok(());
        }
        let recheck = recheck_at.unwrap_or(deadline);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                return Err(Failure::job("the services' supervisor stopped"));
            },
            _ = tokio::time::sleep_until(recheck), if recheck < deadline => {}
            _ = tokio::time::sleep_until(deadline) => {
                let waiting: Vec<&String> = wanted.iter().filter(|name| seen.get(*name) != Some(&Seen::Healthy)).collect();
                return Err(Failure::job(format!(
                    "services not healthy within {} s (--wait-s): {}; stopping",
                    within.as_secs(),
                    waiting.iter().map(|name| name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
    }
}
