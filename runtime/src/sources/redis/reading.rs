//! The worker's long-running tasks: the read loop (as many new entries as
//! there are free slots, riding out Redis outages with the shared backoff),
//! the liveness beat, and the watcher of cancel flags.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use citadel_transports::backoff::{Backoff, worth_logging};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Lifecycle, Progress, Shared};

impl Shared {
    /// Read as many new entries as there are free slots, until `stop`.
    pub(super) async fn read_loop(
        self: Arc<Self>,
        stop: &CancellationToken,
        tracker: &TaskTracker,
        lifecycle: &Lifecycle,
    ) {
        let queues = self.queues.config().keys.len();
        let mut waits = Backoff::DEFAULT.start();
        self.beat(|progress| progress.consuming = true);
        if let Some(observer) = self.dispatch.observer() {
            observer.consuming(true);
        }
        while let Some(free) = self.slots.wait_free(stop).await {
            self.beat(|_| {});
            let read = tokio::select! {
                _ = stop.cancelled() => break,
                read = self.queues.read(free.div_ceil(queues)) => read,
            };
            match read {
                Ok(deliveries) => {
                    if waits.attempts() > 0 {
                        tracing::info!("reading jobs again after a Redis outage");
                    }
                    waits.reset();
                    self.beat(|progress| {
                        progress.redis_down_since = None;
                        if !deliveries.is_empty() {
                            progress.last_consumed = Some(SystemTime::now());
                        }
                    });
                    for delivery in deliveries {
                        // Normally a slot is free for each entry; when the
                        // sweep took one meanwhile (or several queues
                        // returned entries), the job waits for a slot.
                        let permit = self.slots.try_reserve();
                        tracker.spawn(Arc::clone(&self).handle(delivery, permit, lifecycle.clone()));
                    }
                }
                Err(err) => {
                    if worth_logging(waits.attempts()) {
                        tracing::warn!(error = %err, "cannot read jobs from Redis; retrying with backoff");
                    }
                    self.beat(|progress| {
                        progress.redis_down_since.get_or_insert_with(Instant::now);
                    });
                    if !waits.wait(stop).await {
                        break;
                    }
                }
            }
        }
        self.beat(|progress| progress.consuming = false);
        if let Some(observer) = self.dispatch.observer() {
            observer.consuming(false);
        }
    }

    /// Record read-loop progress (and `update` its state).
    fn beat(&self, update: impl FnOnce(&mut Progress)) {
        let mut progress = self.progress.lock().expect("worker progress poisoned");
        progress.last_beat = Instant::now();
        update(&mut progress);
    }

    /// Refresh the liveness key every third of its lifetime until `done`.
    pub(super) async fn keep_alive(self: Arc<Self>, done: CancellationToken) {
        let holder = format!("{} pid {}", self.node_id, std::process::id());
        let mut failures = 0u32;
        loop {
            match self.liveness.beat(&holder).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("liveness key refreshed again");
                    }
                    failures = 0;
                }
                Err(err) => {
                    if worth_logging(failures) {
                        tracing::warn!(error = %err, "cannot refresh the liveness key; others may reclaim this worker's jobs if it expires");
                    }
                    failures += 1;
                }
            }
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(self.settings.liveness_ttl / 3) => {}
            }
        }
    }

    /// Poll the cancel flags of held jobs and stop those cancelled.
    pub(super) async fn watch_cancel_flags(self: Arc<Self>, done: CancellationToken) {
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(self.settings.cancel_poll) => {}
            }
            let watched: Vec<(String, CancellationToken)> = {
                let held = self.held.lock().expect("held jobs poisoned");
                held.values()
                    .filter(|job| !job.cancel.is_cancelled())
                    .filter_map(|job| job.job_id.clone().map(|id| (id, job.cancel.clone())))
                    .collect()
            };
            if watched.is_empty() {
                continue;
            }
            let ids: Vec<&str> = watched.iter().map(|(id, _)| id.as_str()).collect();
            match self.cancel_flags.check(&ids).await {
                Ok(flags) => {
                    for ((job_id, cancel), flagged) in watched.iter().zip(flags) {
                        if flagged {
                            tracing::info!(job_id = %job_id, "cancel flag set: stopping the job");
                            cancel.cancel();
                        }
                    }
                }
                Err(err) => tracing::debug!(error = %err, "cannot read cancel flags"),
            }
        }
    }
}
