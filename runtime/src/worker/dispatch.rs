//! One job's life on this worker, from a delivered entry to its settlement:
//!
//! 1. not a job (malformed, oversized) → dead-lettered, `error` event if it
//!    has an id;
//! 2. delivered more than `max_attempts` times → dead-lettered with the last
//!    error, `error` event;
//! 3. `target_node` names another node → acknowledged, not run;
//! 4. already settled (status final for this very entry) → acknowledged;
//! 5. `claimed`; cancel flag already set → `cancelled`; unknown job type →
//!    `error` with `unsupported_job_type`;
//! 6. wait for a tenant slot, `start`, run with chunks streamed as `chunk`
//!    events in order, then `end` | `error` | `cancelled` and the settlement
//!    (status + `XACK` in one `MULTI`), retried until Redis takes it.
//!
//! Recoverable failures with attempts left are not settled: the entry is left
//! pending for a retry. Jobs interrupted by shutdown are never acknowledged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use citadel_transports::backoff::{Backoff, retry};
use citadel_transports::redis::Delivery;
use citadel_transports::wire::{EventKind, JobEntry, JobStatus};
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::{AGENT_VERSION, Held, Lifecycle, Shared};
use crate::job::{Chunk, JobError, JobSpec};
use crate::policy::DEFAULT_TENANT;

/// Chunks buffered between a running handler and the publisher.
const CHUNK_BUFFER: usize = 256;

impl Shared {
    /// Hold `delivery` (visible to the cancel watcher and the sweeper), take
    /// a node slot if it came without one, and process it.
    pub(super) async fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        permit: Option<OwnedSemaphorePermit>,
        lifecycle: Lifecycle,
    ) {
        let entry_id = delivery.id.clone();
        let cancel = lifecycle.abort.child_token();
        let job_id = delivery.fields.get("jobId").cloned();
        self.held.lock().expect("held jobs poisoned").insert(
            entry_id.clone(),
            Held {
                job_id,
                cancel: cancel.clone(),
            },
        );
        let permit = match permit {
            Some(permit) => Some(permit),
            None => self.slots.reserve(&lifecycle.abort).await,
        };
        if permit.is_some() {
            self.process(delivery, &cancel, &lifecycle).await;
        }
        self.held.lock().expect("held jobs poisoned").remove(&entry_id);
        drop(permit);
    }

    async fn process(&self, delivery: Delivery, cancel: &CancellationToken, lifecycle: &Lifecycle) {
        let entry = match JobEntry::parse(&delivery.fields, self.settings.max_payload_bytes) {
            Ok(entry) => entry,
            Err(err) => {
                let reason = format!("malformed job entry: {err}");
                tracing::warn!(entry = %delivery.id, queue = %delivery.queue, error = %err, "dead-lettering malformed entry");
                if let Some(job_id) = delivery.fields.get("jobId").filter(|id| !id.is_empty()) {
                    let ray_id = delivery.fields.get("rayId").map(String::as_str);
                    self.publish_final(
                        job_id,
                        ray_id,
                        error_event(&reason, false, "malformed_entry"),
                        lifecycle,
                    )
                    .await;
                }
                self.dead_letter(&delivery, &reason, lifecycle).await;
                return;
            }
        };
        let job = entry.job_id.as_str();
        let ray = entry.ray_id.as_deref();

        if delivery.attempt > self.settings.max_attempts {
            let last_error = match self.events.status_error(job).await {
                Ok(Some(error)) => error,
                _ => "the worker running it died each time".to_string(),
            };
            let reason = format!("gave up after {} deliveries: {last_error}", delivery.attempt - 1);
            tracing::warn!(job_id = job, entry = %delivery.id, %reason, "dead-lettering job");
            let mut event = error_event(&reason, false, "dead_lettered");
            if let EventKind::Error { details, .. } = &mut event {
                details.insert("dead_lettered".into(), true.into());
                details.insert("attempts".into(), (delivery.attempt - 1).into());
            }
            self.publish_final(job, ray, event, lifecycle).await;
            self.dead_letter(&delivery, &reason, lifecycle).await;
            return;
        }
        if let Some(target) = entry
            .target_node
            .as_deref()
            .filter(|target| *target != self.node.node_id)
        {
            tracing::debug!(job_id = job, target, "job targets another node: acknowledged, not run");
            self.ack(&delivery, lifecycle).await;
            return;
        }
        if let Ok(Some((status, entry_id))) = self.events.status(job).await
            && status.is_final()
            && entry_id == delivery.id
        {
            tracing::info!(
                job_id = job,
                status = status.as_str(),
                "job already settled: acknowledging the redelivery"
            );
            self.ack(&delivery, lifecycle).await;
            return;
        }

        self.publish(
            job,
            ray,
            EventKind::Claimed {
                agent_version: AGENT_VERSION.into(),
            },
        )
        .await;
        if matches!(self.cancel_flags.check(&[job]).await.as_deref(), Ok([true])) {
            self.publish_final(
                job,
                ray,
                EventKind::Cancelled {
                    reason: "cancelled before start".into(),
                },
                lifecycle,
            )
            .await;
            self.settle(&delivery, job, JobStatus::Cancelled, &[], lifecycle).await;
            return;
        }
        let Some(component) = self.handlers.get(&entry.job_type) else {
            let supported = self.handlers.types();
            let reason = format!(
                "unsupported job type `{}`; this node handles {}",
                entry.job_type,
                supported.join(", ")
            );
            let mut event = error_event(&reason, false, "unsupported_job_type");
            if let EventKind::Error { details, .. } = &mut event {
                details.insert("unsupported_job_type".into(), true.into());
                details.insert("job_type".into(), entry.job_type.clone().into());
                details.insert("supported_types".into(), json!(supported));
            }
            self.publish_final(job, ray, event, lifecycle).await;
            self.settle(&delivery, job, JobStatus::Failed, &[("error", reason)], lifecycle)
                .await;
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };

        let tenant = entry.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.to_string());
        let limit = self.executor.policy().tenant(&tenant).1.max_in_flight;
        let Some(_tenant_slot) = self.slots.tenant(&tenant, limit, cancel).await else {
            self.interrupted(&delivery, job).await;
            return;
        };
        if let Err(err) = self
            .events
            .set_status(job, JobStatus::Running, &delivery.id, &self.consumer, &[])
            .await
        {
            tracing::debug!(job_id = job, error = %err, "could not record running status");
        }
        let message = format!("running {} on {}", entry.job_type, self.node.node_name);
        self.publish(job, ray, EventKind::Start { message }).await;

        let spec = JobSpec {
            id: entry.job_id.clone(),
            job_type: entry.job_type.clone(),
            tenant,
            payload: entry.payload.clone(),
            ray_id: entry.ray_id.clone(),
            attempt: u32::try_from(delivery.attempt).unwrap_or(u32::MAX),
            timeout: entry.timeout_ms.map(Duration::from_millis),
        };
        let (sink, chunks) = mpsc::channel(CHUNK_BUFFER);
        let forwarder = self.forward_chunks(job, ray, chunks);
        let run = self.executor.run(component, spec, Some(sink), cancel);
        let (report, ()) = tokio::join!(run, forwarder);

        match report.outcome {
            Ok(result) => {
                self.publish_final(job, ray, EventKind::End { result: result.clone() }, lifecycle)
                    .await;
                self.settle(
                    &delivery,
                    job,
                    JobStatus::Completed,
                    &[("result", result.to_string())],
                    lifecycle,
                )
                .await;
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(JobError::Cancelled { .. }) if lifecycle.abort.is_cancelled() => self.interrupted(&delivery, job).await,
            Err(JobError::Cancelled { .. }) => {
                let reason = format!("cancelled by request (job:cancelled:{job})");
                self.publish_final(job, ray, EventKind::Cancelled { reason }, lifecycle)
                    .await;
                self.settle(&delivery, job, JobStatus::Cancelled, &[], lifecycle).await;
            }
            Err(err) if err.recoverable() && delivery.attempt < self.settings.max_attempts => {
                tracing::info!(job_id = job, attempt = delivery.attempt, error = %err, "recoverable failure: the job will be retried");
                let extra = [("error", err.to_string()), ("error_class", err.class().to_string())];
                if let Err(status_err) = self
                    .events
                    .set_status(job, JobStatus::Retrying, &delivery.id, &self.consumer, &extra)
                    .await
                {
                    tracing::debug!(job_id = job, error = %status_err, "could not record retrying status");
                }
                if let Err(touch_err) = self.queues.touch(&delivery).await {
                    tracing::debug!(job_id = job, error = %touch_err, "could not restart the retry delay");
                }
            }
            Err(err) if err.recoverable() => {
                let reason = format!("gave up after {} attempts: {err}", delivery.attempt);
                tracing::warn!(job_id = job, %reason, "dead-lettering job");
                let mut event = error_event(&reason, false, err.class());
                if let EventKind::Error { details, .. } = &mut event {
                    details.insert("dead_lettered".into(), true.into());
                    details.insert("attempts".into(), delivery.attempt.into());
                }
                self.publish_final(job, ray, event, lifecycle).await;
                self.dead_letter(&delivery, &reason, lifecycle).await;
            }
            Err(err) => {
                tracing::debug!(job_id = job, class = err.class(), error = %err, "job failed");
                let message = err.to_string();
                self.publish_final(
                    job,
                    ray,
                    error_event(&message, err.recoverable(), err.class()),
                    lifecycle,
                )
                .await;
                let extra = [("error", message), ("error_class", err.class().to_string())];
                self.settle(&delivery, job, JobStatus::Failed, &extra, lifecycle).await;
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Publish chunks as they come, in order; a chunk that cannot be
    /// published (Redis down) is dropped, never holding up the handler.
    async fn forward_chunks(&self, job: &str, ray: Option<&str>, mut chunks: mpsc::Receiver<Chunk>) {
        let mut dropped = 0u32;
        while let Some(chunk) = chunks.recv().await {
            let event = EventKind::Chunk {
                content: chunk.content,
                index: chunk.index,
            };
            if self.events.publish(job, ray, event).await.is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(job_id = job, dropped, "chunks not published (Redis unreachable)");
        }
    }

    /// Publish a non-final event; failures are logged, not retried.
    async fn publish(&self, job: &str, ray: Option<&str>, kind: EventKind) {
        if let Err(err) = self.events.publish(job, ray, kind).await {
            tracing::debug!(job_id = job, error = %err, "could not publish event");
        }
    }

    /// Publish a final event, retrying until Redis takes it.
    async fn publish_final(&self, job: &str, ray: Option<&str>, kind: EventKind, lifecycle: &Lifecycle) {
        let what = format!("publish final event of job {job}");
        let publish = || self.events.publish(job, ray, kind.clone());
        if let Err(err) = retry(&what, Backoff::DEFAULT, &lifecycle.give_up, publish).await {
            tracing::error!(job_id = job, error = %err, "final event not published");
        }
    }

    /// Record the final status and acknowledge, retrying until Redis takes it.
    async fn settle(
        &self,
        delivery: &Delivery,
        job: &str,
        status: JobStatus,
        extra: &[(&str, String)],
        lifecycle: &Lifecycle,
    ) {
        let ttl = self.settings.status_ttl;
        let what = format!("settle job {job}");
        let settle = || self.queues.settle(delivery, job, status, extra, ttl);
        if let Err(err) = retry(&what, Backoff::DEFAULT, &lifecycle.give_up, settle).await {
            tracing::error!(job_id = job, error = %err, "job not settled: it stays pending and will be redelivered");
        }
    }

    /// Acknowledge without recording, retrying until Redis takes it.
    async fn ack(&self, delivery: &Delivery, lifecycle: &Lifecycle) {
        let ack = || self.queues.ack(delivery);
        if let Err(err) = retry("acknowledge entry", Backoff::DEFAULT, &lifecycle.give_up, ack).await {
            tracing::error!(entry = %delivery.id, error = %err, "entry not acknowledged: it will be redelivered");
        }
    }

    /// Dead-letter the entry, retrying until Redis takes it.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str, lifecycle: &Lifecycle) {
        let ttl = self.settings.status_ttl;
        let dead_letter = || self.queues.dead_letter(delivery, reason, ttl);
        if let Err(err) = retry("dead-letter entry", Backoff::DEFAULT, &lifecycle.give_up, dead_letter).await {
            tracing::error!(entry = %delivery.id, error = %err, "entry not dead-lettered: it will be redelivered");
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A job stopped by shutdown: left pending (never acknowledged) for
    /// another worker.
    async fn interrupted(&self, delivery: &Delivery, job: &str) {
        tracing::info!(job_id = job, entry = %delivery.id, "job interrupted by shutdown: left pending for another worker");
        if let Err(err) = self
            .events
            .set_status(job, JobStatus::Interrupted, &delivery.id, &self.consumer, &[])
            .await
        {
            tracing::debug!(job_id = job, error = %err, "could not record interrupted status");
        }
    }
}

/// An `error` event with our failure class in `error_class`.
fn error_event(error: &str, recoverable: bool, class: &str) -> EventKind {
    let mut details = Map::new();
    details.insert("error_class".into(), Value::from(class));
    EventKind::Error {
        error: error.to_string(),
        recoverable,
        details,
    }
}
