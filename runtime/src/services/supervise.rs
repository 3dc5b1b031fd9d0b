//! One service's lifecycle: place, start, watch (exit, health), stop or
//! restart with backoff, and finally empty and remove its cgroup.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use citadel_transports::backoff::{Backoff, worth_logging};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use tokio::process::Child;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cgroup::ServiceCgroup;
use super::logs::CappedLog;
use citadel_collector::status::{ServiceHealth, ServiceState};

use super::{RunState, Service, SupervisorSettings, launch};
use crate::config::RestartPolicy;

/// Waits between restarts: 1 s doubling to a minute; a service that ran
/// for [`STABLE_AFTER`] starts over at 1 s.
const RESTART_BACKOFF: Backoff = Backoff {
    min: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// A run this long counts as a success for the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// How long processes left in the group after the main one exits may take
/// to die.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How one run ended.
enum RunEnd {
    /// The main process exited by itself.
    Exited(ExitStatus),
    /// The node stopped it (shutdown, or it is no longer wanted).
    Stopped,
}

pub(super) async fn supervise(
    service: Arc<Service>,
    settings: Arc<SupervisorSettings>,
    changed: watch::Sender<()>,
    stop: CancellationToken,
    health_checks: Arc<AtomicBool>,
) {
    let name = service.settings.name.clone();
    let reporter = Reporter {
        service: &service,
        changed: &changed,
    };
    let cgroup = match place(&service, &settings).await {
        Ok(cgroup) => {
            let path = cgroup.path().to_string();
            let warning = (!cgroup.warnings().is_empty()).then(|| cgroup.warnings().join("; "));
            if let Some(warning) = &warning {
                tracing::warn!(service = %name, cgroup = %path, problem = %warning, "the service's limits are not all enforced");
            }
            reporter.update(|state| {
                state.cgroup = Some(path);
                state.warning = warning;
            });
            let cgroup = Arc::new(cgroup);
            let _ = service.placed.set(Arc::clone(&cgroup));
            Some(cgroup)
        }
        Err(reason) => {
            tracing::warn!(service = %name, reason = %reason, "no cgroup for the service: starting it without cpu/memory limits");
            reporter.update(|state| state.warning = Some(format!("running without cgroup limits: {reason}")));
            None
        }
    };
    let probe = HealthProbe::new(&service, &settings);
    let mut wanted = service.wanted.subscribe();
    let mut waits = RESTART_BACKOFF.start();
    let mut runs = 0u32;
    'lifecycle: loop {
        if stop.is_cancelled() {
            break;
        }
        while !*wanted.borrow_and_update() {
            tokio::select! {
                _ = stop.cancelled() => break 'lifecycle,
                _ = wanted.changed() => {}
            }
        }
        let mut child = match launch::command(&service.settings, &settings.launcher, cgroup.as_deref()).spawn() {
            Ok(child) => child,
            Err(err) => {
                let problem = format!("cannot start {:?}: {err}", service.settings.command);
                if worth_logging(waits.attempts()) {
                    tracing::error!(service = %name, error = %problem, attempts = waits.attempts() + 1, "service did not start; retrying with backoff");
                }
                reporter.update(|state| {
                    state.status = ServiceState::Error;
                    state.pid = None;
                    state.last_exit = Some(problem.clone());
                });
                wait_to_restart(&mut waits, &stop, &mut wanted).await;
                continue;
            }
        };
        let pid = child.id();
        capture_output(&mut child, &service, &settings).await;
        let restarts = runs;
        runs += 1;
        let health = if probe.is_some() {
            ServiceHealth::Starting
        } else {
            ServiceHealth::Unknown
        };
        reporter.update(|state| {
            state.status = ServiceState::Running;
            state.health = health;
            state.pid = pid;
            state.restarts = restarts;
        });
        tracing::info!(
            service = %name,
            pid = pid.unwrap_or_default(),
            cgroup = cgroup.as_ref().map_or("none (plain)", |group| group.path()),
            "service started"
        );
        let started = Instant::now();
        let oom_before = cgroup.as_ref().map_or(0, |group| group.oom_kills());
        let end = watch_run(
            &mut child,
            &service,
            probe.as_ref(),
            &health_checks,
            &reporter,
            &stop,
            &mut wanted,
        )
        .await;
        let end = match end {
            RunEnd::Stopped => {
                stop_gracefully(&mut child, &service, cgroup.as_ref()).await;
                reporter.update(|state| {
                    state.status = ServiceState::Stopped;
                    state.health = ServiceHealth::Unknown;
                    state.pid = None;
                    state.last_exit = Some("stopped by the node".into());
                });
                tracing::info!(service = %name, "service stopped");
                None
            }
            RunEnd::Exited(status) => Some(status),
        };
        let Some(status) = end else { continue };
        empty_group(cgroup.as_ref()).await;
        if cgroup.is_none() {
            kill_leftovers(pid);
        }
        // An OOM kill in the group during a run that failed is its cause
        // (the main process, or the engine a wrapper script waited for).
        let oom = !status.success() && cgroup.as_ref().is_some_and(|group| group.oom_kills() > oom_before);
        let description = describe_exit(status, oom, service.settings.memory_limit.as_deref());
        let failed = oom || !status.success();
        let restart = match service.settings.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if failed {
            tracing::warn!(service = %name, exit = %description, restart, "service exited");
        } else {
            tracing::info!(service = %name, exit = %description, restart, "service exited");
        }
        reporter.update(|state| {
            state.status = if failed {
                ServiceState::Error
            } else {
                ServiceState::Stopped
            };
            state.health = ServiceHealth::Unknown;
            state.pid = None;
            state.last_exit = Some(description.clone());
        });
        after_run(&mut waits, started.elapsed());
        if restart {
            wait_to_restart(&mut waits, &stop, &mut wanted).await;
        } else {
            // Down until it is wanted again (stopped and started by device
            // configuration) or the node stops.
            tokio::select! {
                _ = stop.cancelled() => break 'lifecycle,
                _ = wanted.changed() => {}
            }
        }
    }
    if let Some(cgroup) = cgroup {
        empty_group(Some(&cgroup)).await;
        tokio::task::spawn_blocking(move || cgroup.remove()).await.ok();
    }
}

/// Changes a service's state and announces each change to status.
struct Reporter<'a> {
    service: &'a Service,
    changed: &'a watch::Sender<()>,
}

impl Reporter<'_> {
    fn update(&self, edit: impl FnOnce(&mut RunState)) {
        let mut state = self.service.state.lock().expect("service state poisoned");
        let before = state.clone();
        edit(&mut state);
        if *state != before {
            drop(state);
            self.changed.send_replace(());
        }
    }
}

/// Create the service's cgroup; why not when it cannot be.
async fn place(service: &Service, settings: &SupervisorSettings) -> Result<ServiceCgroup, String> {
    let path = format!(
        "{}/{}/{}",
        settings.slice, service.settings.group, service.settings.name
    );
    let limits = service.settings.limits();
    tokio::task::spawn_blocking(move || ServiceCgroup::create(&path, limits))
        .await
        .unwrap_or_else(|err| Err(format!("placing the service failed: {err}")))
}

/// Copy the child's stdout and stderr into the service's capped logs.
async fn capture_output(child: &mut Child, service: &Service, settings: &SupervisorSettings) {
    let name = &service.settings.name;
    let max = service.settings.log_max_bytes;
    if let Some(stdout) = child.stdout.take() {
        let path = settings.log_dir.join(format!("{name}.stdout.log"));
        spawn_copy(path, max, stdout).await;
    }
    if let Some(stderr) = child.stderr.take() {
        let path = settings.log_dir.join(format!("{name}.stderr.log"));
        spawn_copy(path, max, stderr).await;
    }
}

async fn spawn_copy(path: std::path::PathBuf, max: u64, source: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
    match CappedLog::open(path.clone(), max).await {
        Ok(log) => {
            tokio::spawn(log.copy_from(source));
        }
        Err(err) => {
            tracing::warn!(log = %path.display(), error = %err, "cannot open the service's log; its output is dropped");
            tokio::spawn(async move {
                let mut source = source;
                let _ = tokio::io::copy(&mut source, &mut tokio::io::sink()).await;
            });
        }
    }
}

/// Wait for the run to end, probing health meanwhile.
async fn watch_run(
    child: &mut Child,
    service: &Service,
    probe: Option<&HealthProbe>,
    health_checks: &AtomicBool,
    reporter: &Reporter<'_>,
    stop: &CancellationToken,
    wanted: &mut watch::Receiver<bool>,
) -> RunEnd {
    let mut ticks = probe.map(|probe| {
        let mut ticks = tokio::time::interval(probe.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut was_ok = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => RunEnd::Exited(status),
                    Err(err) => {
                        tracing::error!(service = %service.settings.name, error = %err, "cannot wait for the service; stopping it");
                        RunEnd::Stopped
                    }
                };
            }
            _ = stop.cancelled() => return RunEnd::Stopped,
            result = wanted.changed() => {
                if result.is_err() || !*wanted.borrow_and_update() {
                    return RunEnd::Stopped;
                }
            }
            _ = async { ticks.as_mut().expect("guarded").tick().await }, if ticks.is_some() => {
                let probe = probe.expect("ticks come with a probe");
                if !health_checks.load(Ordering::Relaxed) {
                    was_ok = false;
                    reporter.update(|state| state.health = ServiceHealth::Unknown);
                    continue;
                }
                let ok = probe.check().await;
                let health = match (ok, was_ok) {
                    (true, _) => ServiceHealth::Ok,
                    (false, true) => ServiceHealth::Unhealthy,
                    (false, false) => ServiceHealth::Starting,
                };
                if ok != was_ok {
                    tracing::info!(service = %service.settings.name, health = health.as_str(), "service health changed");
                }
                was_ok |= ok;
                reporter.update(|state| state.health = health);
            }
        }
    }
}

/// SIGTERM the main process, give it `stop_timeout_ms`, then SIGKILL
/// whatever is left of the service.
async fn stop_gracefully(child: &mut Child, service: &Service, cgroup: Option<&Arc<ServiceCgroup>>) {
    let timeout = Duration::from_millis(service.settings.stop_timeout_ms);
    let child_pid = child.id();
    let pid = child_pid.and_then(|pid| Pid::from_raw(pid as i32));
    if let Some(pid) = pid {
        let _ = kill_process(pid, Signal::TERM);
    }
    if tokio::time::timeout(timeout, child.wait()).await.is_err() {
        tracing::warn!(service = %service.settings.name, timeout_ms = service.settings.stop_timeout_ms, "service ignored SIGTERM; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    empty_group(cgroup).await;
    if cgroup.is_none() {
        kill_leftovers(child_pid);
    }
}

/// Without a cgroup, what is left of a service after its main process is
/// its process group (it leads one: see `launch::command`); kill it.
fn kill_leftovers(pid: Option<u32>) {
    if let Some(group) = pid.and_then(|pid| Pid::from_raw(pid as i32)) {
        let _ = kill_process_group(group, Signal::KILL);
    }
}

/// Kill whatever is left in the service's cgroup (children that outlived
/// the main process).
async fn empty_group(cgroup: Option<&Arc<ServiceCgroup>>) {
    if let Some(cgroup) = cgroup {
        let cgroup = Arc::clone(cgroup);
        let _ = tokio::task::spawn_blocking(move || cgroup.kill_all(KILL_WAIT)).await;
    }
}

/// Count a run that lasted `ran`: one that was stable starts the waits over.
fn after_run(waits: &mut citadel_transports::backoff::Waits, ran: Duration) {
    if ran >= STABLE_AFTER {
        waits.reset();
    }
}

/// Wait out the next backoff delay; `false` when the node stops or the
/// service is no longer wanted first.
async fn wait_to_restart(
    waits: &mut citadel_transports::backoff::Waits,
    stop: &CancellationToken,
    wanted: &mut watch::Receiver<bool>,
) -> bool {
    let delay = waits.next_delay();
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
        _ = wanted.changed() => *wanted.borrow(),
    }
}

/// How a run ended, in words.
fn describe_exit(status: ExitStatus, oom: bool, memory_limit: Option<&str>) -> String {
    if oom {
        return format!(
            "killed by the kernel: out of memory (memory_limit {})",
            memory_limit.unwrap_or("none")
        );
    }
    match (status.code(), status.signal()) {
        (Some(code), _) if code == i32::from(launch::LAUNCH_FAILED) => format!(
            "exited with status {code} (the program could not be run or the cgroup not joined: see the service's stderr log)"
        ),
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".into(),
    }
}

/// A service's HTTP health check.
struct HealthProbe {
    url: String,
    client: reqwest::Client,
    every: Duration,
}

impl HealthProbe {
    fn new(service: &Service, settings: &SupervisorSettings) -> Option<HealthProbe> {
        let (Some(port), Some(path)) = (service.settings.port, &service.settings.health_path) else {
            return None;
        };
        let client = match citadel_transports::http::client(settings.probe_timeout) {
            Ok(client) => client,
            Err(err) => {
                tracing::error!(service = %service.settings.name, error = %err, "cannot build the health-check client");
                return None;
            }
        };
        Some(HealthProbe {
            url: format!("http://127.0.0.1:{port}{path}"),
            client,
            every: settings.health_poll,
        })
    }

    async fn check(&self) -> bool {
        matches!(self.client.get(&self.url).send().await, Ok(response) if response.status().is_success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next wait lies in [base, 2 × base): the base doubles, jitter adds
    /// up to as much again.
    fn assert_next(waits: &mut citadel_transports::backoff::Waits, base_s: u64) {
        let wait = waits.next_delay();
        let base = Duration::from_secs(base_s);
        assert!(wait >= base && wait < 2 * base, "{wait:?} for a base of {base:?}");
    }

    #[test]
    fn restarts_wait_a_second_doubling_to_a_minute_and_start_over_after_a_stable_run() {
        let mut waits = RESTART_BACKOFF.start();
        for base in [1, 2, 4, 8, 16, 32, 60, 60, 60] {
            assert_next(&mut waits, base);
        }
        after_run(&mut waits, STABLE_AFTER - Duration::from_secs(1));
        assert_next(&mut waits, 60);
        after_run(&mut waits, STABLE_AFTER);
        assert_next(&mut waits, 1);
        assert_next(&mut waits, 2);
    }
}
