//! The sweeper: every `worker.reclaim_interval_ms` it takes over the
//! pending jobs of consumers whose liveness key is gone (and, as a
//! backstop, of live ones that held a job past `worker.abandon_after_ms`),
//! retries this worker's own jobs left for a retry, and now and then
//! removes dead consumers that hold nothing.

use std::collections::HashMap;
use std::sync::Arc;

use citadel_transports::backoff::worth_logging;
use citadel_transports::redis as transport;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{FORGET_DEAD_EVERY, Lifecycle, RECLAIM_BATCH, RECLAIM_MIN_IDLE, Shared};

impl Shared {
    /// Every `reclaim_interval`, take over pending jobs of dead consumers
    /// (and this worker's own jobs left for a retry), until `stop`.
    pub(super) async fn sweep_loop(
        self: Arc<Self>,
        stop: CancellationToken,
        tracker: TaskTracker,
        lifecycle: Lifecycle,
    ) {
        let mut failures = 0u32;
        for sweep in 1u32.. {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.reclaim_interval) => {}
            }
            if sweep.is_multiple_of(FORGET_DEAD_EVERY)
                && let Err(err) = self.forget_dead_consumers().await
            {
                tracing::debug!(error = %err, "cannot clean up dead consumers");
            }
            match self.sweep(&stop, &tracker, &lifecycle).await {
                Ok(()) => failures = 0,
                Err(err) => {
                    if worth_logging(failures) {
                        tracing::warn!(error = %err, "cannot scan pending jobs");
                    }
                    failures += 1;
                }
            }
        }
    }

    /// Remove consumers that hold nothing and whose liveness key is gone.
    async fn forget_dead_consumers(&self) -> transport::RedisResult<()> {
        for queue in &self.queues.config().keys {
            for consumer in self.queues.idle_consumers(queue).await? {
                if consumer != self.consumer && !self.liveness.is_alive(&consumer).await? {
                    self.queues.delete_consumer(queue, &consumer).await?;
                    tracing::info!(consumer = %consumer, "removed a dead worker's consumer (it held no jobs)");
                }
            }
        }
        Ok(())
    }

    async fn sweep(
        self: &Arc<Self>,
        stop: &CancellationToken,
        tracker: &TaskTracker,
        lifecycle: &Lifecycle,
    ) -> transport::RedisResult<()> {
        let mut alive: HashMap<String, bool> = HashMap::new();
        for queue in &self.queues.config().keys {
            for entry in self.queues.pending(queue, RECLAIM_MIN_IDLE, RECLAIM_BATCH).await? {
                if stop.is_cancelled() {
                    return Ok(());
                }
                let reason = if entry.consumer == self.consumer {
                    let held = self.held.lock().expect("held jobs poisoned").contains_key(&entry.id);
                    if held || entry.idle < self.settings.retry_delay {
                        continue;
                    }
                    "retry"
                } else {
                    let live = match alive.get(&entry.consumer) {
                        Some(live) => *live,
                        None => {
                            let live = self.liveness.is_alive(&entry.consumer).await?;
                            alive.insert(entry.consumer.clone(), live);
                            live
                        }
                    };
                    if !live {
                        "owner dead"
                    } else if entry.idle >= self.settings.abandon_after {
                        "owner wedged (abandon_after_ms)"
                    } else {
                        continue;
                    }
                };
                let Some(permit) = self.slots.try_reserve() else {
                    return Ok(());
                };
                if let Some(delivery) = self.queues.claim(&entry, RECLAIM_MIN_IDLE).await? {
                    tracing::info!(
                        entry = %delivery.id,
                        job_id = delivery.fields.get("jobId").map(String::as_str).unwrap_or("?"),
                        from = %entry.consumer,
                        attempt = delivery.attempt,
                        reason,
                        "reclaimed pending job"
                    );
                    tracker.spawn(Arc::clone(self).handle(delivery, Some(permit), lifecycle.clone()));
                }
            }
        }
        Ok(())
    }
}
