//! One job's life on this worker, from a delivered entry to its settlement:
//!
//! 1. not a job (malformed, oversized) → dead-lettered, `error` event if it
//!    has an id;
//! 2. `target_node` names another node → acknowledged, not run;
//! 3. a redelivery: already settled (status final for this very entry) →
//!    acknowledged; delivered more than `max_attempts` times → dead-lettered
//!    with the last error, `error` event;
//! 4. admitted by the dispatcher (`crate::dispatch`): unknown job type →
//!    `claimed`, `error` with `unsupported_job_type`; else it waits for a
//!    tenant slot;
//! 5. in one round trip (a server-side script): cancel flag set → nothing
//!    (we answer `claimed`, `cancelled`), else `claimed`, status `running`,
//!    `start`;
//! 6. run by the dispatcher with chunks streamed as `chunk` events in
//!    order; then, by its outcome, the final event (`end` | `error` |
//!    `cancelled`), the final status and the `XACK` in one transaction,
//!    retried until Redis takes it.
//!
//! So a first delivery costs two round trips besides its chunks.
//!
//! Recoverable failures with attempts left are not settled: the entry is left
//! pending for a retry. Jobs interrupted by shutdown are never acknowledged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use citadel_transports::backoff::{Backoff, retry};
use citadel_transports::redis::{Batch, Delivery};
use citadel_transports::wire::{EventKind, JobEntry, JobStatus};
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::{AGENT_VERSION, Held, Lifecycle, Shared};
use citadel_transports::fleet::FleetEvent;

use crate::dispatch::fleet::Ended;
use crate::dispatch::{Admission, JobControl, JobInfo, JobOutcome, Recovery};
use crate::job::{Chunk, JobSpec};
use crate::policy::DEFAULT_TENANT;

/// Chunks buffered between a running handler and the publisher.
const CHUNK_BUFFER: usize = 256;
/// Most chunks published in one write (those that queued while the last write was out).
const CHUNKS_PER_WRITE: usize = 128;

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
        let mut permit = match permit {
            Some(permit) => Some(permit),
            None => self.slots.reserve(&lifecycle.abort).await,
        };
        if permit.is_some() {
            self.process(delivery, &mut permit, &cancel, &lifecycle).await;
        }
        self.held.lock().expect("held jobs poisoned").remove(&entry_id);
        drop(permit);
    }

    /// Admit `spec`: at once when its tenant has a slot free. Otherwise it
    /// waits parked: its node slot is given back meanwhile (when the parking,
    /// as large as the node, has room), so the node goes on reading and
    /// running other tenants' jobs instead of filling up with one tenant's
    /// waiting ones; once admitted it takes a node slot again.
    async fn admit(
        &self,
        spec: &JobSpec,
        node_slot: &mut Option<OwnedSemaphorePermit>,
        cancel: &CancellationToken,
    ) -> Admission {
        let busy = match self.dispatch.try_admit(spec) {
            Ok(admission) => return admission,
            Err(busy) => busy,
        };
        let parked = self.slots.try_park();
        if parked.is_some() {
            *node_slot = None;
        }
        let admission = self.dispatch.wait_for_slot(spec, busy, cancel).await;
        if parked.is_some() && matches!(admission, Admission::Admitted(_)) {
            match self.slots.reserve(cancel).await {
                Some(permit) => *node_slot = Some(permit),
                None => return Admission::Stopped,
            }
        }
        admission
    }

    async fn process(
        &self,
        delivery: Delivery,
        node_slot: &mut Option<OwnedSemaphorePermit>,
        cancel: &CancellationToken,
        lifecycle: &Lifecycle,
    ) {
        let entry = match JobEntry::parse(&delivery.fields, self.settings.max_payload_bytes) {
            Ok(entry) => entry,
            Err(err) => {
                let reason = format!("malformed job entry: {err}");
                tracing::warn!(entry = %delivery.id, queue = %delivery.queue, error = %err, "dead-lettering malformed entry");
                let job_id = delivery.fields.get("jobId").filter(|id| !id.is_empty()).cloned();
                let ray_id = delivery.fields.get("rayId").cloned();
                let job = job_id.as_deref().map(|job| (job, ray_id.as_deref()));
                let fleet = job_id.as_deref().and_then(|job_id| {
                    let job = JobInfo {
                        job_id,
                        job_type: delivery.fields.get("type").map_or("", String::as_str),
                        tenant: delivery.fields.get("tenant").map_or(DEFAULT_TENANT, String::as_str),
                    };
                    let ended = Ended::DeadLettered {
                        class: "malformed_entry",
                        reason: &reason,
                    };
                    self.fleet_event(&job, attempt_of(&delivery), ended, None)
                });
                self.dead_letter(
                    &delivery,
                    job,
                    &reason,
                    error_event(&reason, false, "malformed_entry"),
                    fleet,
                    lifecycle,
                )
                .await;
                return;
            }
        };
        let job = entry.job_id.as_str();
        let ray = entry.ray_id.as_deref();
        if let Some(target) = entry.target_node.as_deref().filter(|target| *target != self.node_id) {
            tracing::debug!(job_id = job, target, "job targets another node: acknowledged, not run");
            self.settle(&delivery, job, ray, &[], None, Vec::new(), lifecycle).await;
            return;
        }
        // A redelivery may be settled already, or have run out of attempts.
        // (A first delivery cannot: the cancel flag, its only other check,
        // is read in the same round trip that starts it.)
        let tenant = entry.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        let info = JobInfo {
            job_id: job,
            job_type: &entry.job_type,
            tenant,
        };
        let attempt = attempt_of(&delivery);
        if delivery.attempt > 1 && !self.check_redelivery(&delivery, &info, ray, lifecycle).await {
            return;
        }
        let claimed = EventKind::Claimed {
            agent_version: AGENT_VERSION.into(),
        };
        let spec = JobSpec {
            id: entry.job_id.clone(),
            job_type: entry.job_type.clone(),
            tenant: entry.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.to_string()),
            payload: entry.payload.clone(),
            ray_id: entry.ray_id.clone(),
            attempt,
            timeout: entry.timeout_ms.map(Duration::from_millis),
        };
        let admitted = match self.admit(&spec, node_slot, cancel).await {
            Admission::Admitted(admitted) => admitted,
            Admission::Unsupported(unsupported) => {
                let reason = unsupported.to_string();
                let mut event = error_event(&reason, false, "unsupported_job_type");
                if let EventKind::Error { details, .. } = &mut event {
                    details.insert("unsupported_job_type".into(), true.into());
                    details.insert("job_type".into(), unsupported.job_type.into());
                    details.insert("supported_types".into(), json!(unsupported.supported));
                }
                let ended = Ended::Failed {
                    class: "unsupported_job_type",
                    error: &reason,
                    will_retry: false,
                };
                let fleet = self.fleet_event(&info, attempt, ended, None).into_iter().collect();
                let failed = (JobStatus::Failed, &[("error", reason.clone())][..]);
                self.settle(&delivery, job, ray, &[claimed, event], Some(failed), fleet, lifecycle)
                    .await;
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Admission::Stopped => {
                self.interrupted(&delivery, job).await;
                return;
            }
        };
        let start = EventKind::Start {
            message: format!("running {} on {}", entry.job_type, self.events.meta().node_name),
        };
        let started = self.fleet.as_ref().map(|fleet| (fleet, fleet.started(&info, attempt)));
        let started = started.as_ref().map(|(fleet, event)| (fleet.publisher(), event));
        match self
            .events
            .start(job, ray, claimed.clone(), start, &delivery.id, &self.consumer, started)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let cancelled = EventKind::Cancelled {
                    reason: "cancelled before start".into(),
                };
                let fleet = self
                    .fleet_event(&info, attempt, Ended::Cancelled, None)
                    .into_iter()
                    .collect();
                self.settle(
                    &delivery,
                    job,
                    ray,
                    &[claimed, cancelled],
                    Some((JobStatus::Cancelled, &[])),
                    fleet,
                    lifecycle,
                )
                .await;
                return;
            }
            Err(err) => {
                // Redis went away between the read and now: leave the entry
                // pending; it is retried once Redis is back.
                tracing::warn!(job_id = job, error = %err, "cannot start the job; leaving it for a retry");
                return;
            }
        }

        let (sink, chunks) = mpsc::channel(CHUNK_BUFFER);
        let control = JobControl {
            cancel,
            interrupt: &lifecycle.abort,
            recovery: if delivery.attempt < self.settings.max_attempts {
                Recovery::Retry
            } else {
                Recovery::DeadLetter
            },
        };
        let started_at = Instant::now();
        let forwarder = self.forward_chunks(info, ray, chunks, started_at);
        let run = self.dispatch.run(admitted, spec, Some(sink), control);
        let (ran, ()) = tokio::join!(run, forwarder);
        let took = Some(started_at.elapsed());
        // The job's ending and its log records, for the fleet.
        let fleet_events = |ended: Ended<'_>| -> Vec<FleetEvent> {
            let Some(fleet) = &self.fleet else {
                return Vec::new();
            };
            let mut events = fleet.log_records(&info, &ran.report.log);
            events.push(fleet.ended(&info, attempt, ended, took));
            events
        };

        match (&ran.outcome, &ran.report.outcome) {
            (_, Ok(result)) => {
                let fleet = fleet_events(Ended::Completed);
                let completed = (JobStatus::Completed, &[("result", result.to_string())][..]);
                let end = EventKind::End { result: result.clone() };
                self.settle(&delivery, job, ray, &[end], Some(completed), fleet, lifecycle)
                    .await;
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
            }
            (JobOutcome::Interrupted, _) => self.interrupted(&delivery, job).await,
            (JobOutcome::Cancelled, _) => {
                let reason = format!("cancelled by request (job:cancelled:{job})");
                let cancelled = EventKind::Cancelled { reason };
                let fleet = fleet_events(Ended::Cancelled);
                self.settle(
                    &delivery,
                    job,
                    ray,
                    &[cancelled],
                    Some((JobStatus::Cancelled, &[])),
                    fleet,
                    lifecycle,
                )
                .await;
            }
            (JobOutcome::Retrying, Err(err)) => {
                tracing::info!(job_id = job, attempt = delivery.attempt, error = %err, "recoverable failure: the job will be retried");
                let message = err.to_string();
                let ended = Ended::Failed {
                    class: err.class(),
                    error: &message,
                    will_retry: true,
                };
                let fleet = fleet_events(ended);
                let extra = [("error", message.clone()), ("error_class", err.class().to_string())];
                let mut batch = Batch::new();
                self.events.status_in(
                    &mut batch,
                    job,
                    JobStatus::Retrying,
                    &delivery.id,
                    &self.consumer,
                    &extra,
                );
                if let Some(events) = &self.fleet {
                    events.add_to(&mut batch, &fleet);
                }
                if let Err(status_err) = self.events.send(batch).await {
                    tracing::debug!(job_id = job, error = %status_err, "could not record retrying status");
                }
                if let Err(touch_err) = self.queues.touch(&delivery).await {
                    tracing::debug!(job_id = job, error = %touch_err, "could not restart the retry delay");
                }
            }
            (JobOutcome::DeadLettered, Err(err)) => {
                let reason = format!("gave up after {} attempts: {err}", delivery.attempt);
                tracing::warn!(job_id = job, %reason, "dead-lettering job");
                let event = dead_letter_event(&reason, err.class(), delivery.attempt);
                let fleet = fleet_events(Ended::DeadLettered {
                    class: err.class(),
                    reason: &reason,
                });
                self.dead_letter(&delivery, Some((job, ray)), &reason, event, fleet, lifecycle)
                    .await;
            }
            (_, Err(err)) => {
                tracing::debug!(job_id = job, class = err.class(), error = %err, "job failed");
                let message = err.to_string();
                let event = error_event(&message, err.recoverable(), err.class());
                let fleet = fleet_events(Ended::Failed {
                    class: err.class(),
                    error: &message,
                    will_retry: false,
                });
                let extra = [("error", message.clone()), ("error_class", err.class().to_string())];
                self.settle(
                    &delivery,
                    job,
                    ray,
                    &[event],
                    Some((JobStatus::Failed, &extra)),
                    fleet,
                    lifecycle,
                )
                .await;
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Checks a redelivered entry: dead-letter it when it has been delivered
    /// more than `max_attempts` times, acknowledge it when its job is already
    /// settled. `true` when it should run.
    async fn check_redelivery(
        &self,
        delivery: &Delivery,
        info: &JobInfo<'_>,
        ray: Option<&str>,
        lifecycle: &Lifecycle,
    ) -> bool {
        let job = info.job_id;
        let check = match self.events.check(job).await {
            Ok(check) => check,
            Err(err) => {
                tracing::warn!(job_id = job, error = %err, "cannot check the job's state; leaving it for a retry");
                return false;
            }
        };
        // A device configuration job fans out to every node, all writing the
        // one status: another node's outcome says nothing about this one
        // (and applying a configuration again is harmless).
        if let Some((status, entry_id)) = &check.status
            && status.is_final()
            && *entry_id == delivery.id
            && !self.settings.device_config
        {
            tracing::info!(
                job_id = job,
                status = status.as_str(),
                "job already settled: acknowledging the redelivery"
            );
            self.settle(delivery, job, ray, &[], None, Vec::new(), lifecycle).await;
            return false;
        }
        if delivery.attempt > self.settings.max_attempts {
            let last_error = check
                .error
                .unwrap_or_else(|| "the worker running it died each time".to_string());
            let reason = format!("gave up after {} deliveries: {last_error}", delivery.attempt - 1);
            tracing::warn!(job_id = job, entry = %delivery.id, %reason, "dead-lettering job");
            let event = dead_letter_event(&reason, "dead_lettered", delivery.attempt - 1);
            let ended = Ended::DeadLettered {
                class: "dead_lettered",
                reason: &reason,
            };
            let fleet = self.fleet_event(info, attempt_of(delivery) - 1, ended, None);
            self.dead_letter(delivery, Some((job, ray)), &reason, event, fleet, lifecycle)
                .await;
            return false;
        }
        true
    }

    /// Publish chunks as they come, in order; a chunk that cannot be
    /// published (Redis down) is dropped, never holding up the handler.
    async fn forward_chunks(
        &self,
        info: JobInfo<'_>,
        ray: Option<&str>,
        mut chunks: mpsc::Receiver<Chunk>,
        started: Instant,
    ) {
        let job = info.job_id;
        let mut dropped = 0usize;
        let mut ready = Vec::with_capacity(CHUNKS_PER_WRITE);
        // A chunk goes out as soon as it comes; chunks that queued up while
        // the previous write was in flight go out together, in one write.
        while chunks.recv_many(&mut ready, CHUNKS_PER_WRITE).await > 0 {
            if ready[0].index == 0
                && let Some(observer) = self.dispatch.observer()
            {
                observer.first_chunk(&info, started.elapsed());
            }
            let count = ready.len();
            let events = ready.drain(..).map(|chunk| EventKind::Chunk {
                content: chunk.content,
                index: chunk.index,
            });
            if self.events.publish_all(job, ray, events).await.is_err() {
                dropped += count;
            }
        }
        if dropped > 0 {
            tracing::warn!(job_id = job, dropped, "chunks not published (Redis unreachable)");
        }
    }

    /// Publish `events`, record the final `status` (if any), append the
    /// `fleet` events and acknowledge the entry, all in one transaction,
    /// retrying until Redis takes it: the final event is seen if and only
    /// if the job is settled.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        delivery: &Delivery,
        job: &str,
        ray: Option<&str>,
        events: &[EventKind],
        status: Option<(JobStatus, &[(&str, String)])>,
        fleet: Vec<FleetEvent>,
        lifecycle: &Lifecycle,
    ) {
        let mut batch = Batch::atomic();
        for event in events {
            self.events.publish_in(&mut batch, job, ray, event.clone());
        }
        if let Some(publisher) = &self.fleet {
            publisher.add_to(&mut batch, &fleet);
        }
        if let Some((status, extra)) = status {
            self.events
                .status_in(&mut batch, job, status, &delivery.id, &self.consumer, extra);
        }
        self.queues.ack_in(&mut batch, delivery);
        let what = format!("settle job {job}");
        if let Err(err) = retry(&what, Backoff::DEFAULT, &lifecycle.give_up, || {
            self.queues.send(batch.clone())
        })
        .await
        {
            tracing::error!(job_id = job, error = %err, "job not settled: it stays pending and will be redelivered");
        }
    }

    /// Move the entry to the dead-letter queue with `reason` and, when it is
    /// a job, publish `event`, record it as dead-lettered and append its
    /// `fleet` events — one transaction, retried until Redis takes it.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        job: Option<(&str, Option<&str>)>,
        reason: &str,
        event: EventKind,
        fleet: impl IntoIterator<Item = FleetEvent>,
        lifecycle: &Lifecycle,
    ) {
        let mut batch = Batch::atomic();
        if let Some(publisher) = &self.fleet {
            publisher.add_to(&mut batch, &fleet.into_iter().collect::<Vec<_>>());
        }
        if let Some((job, ray)) = job {
            self.events.publish_in(&mut batch, job, ray, event);
            let extra = [("error", reason.to_string())];
            self.events.status_in(
                &mut batch,
                job,
                JobStatus::DeadLettered,
                &delivery.id,
                &self.consumer,
                &extra,
            );
        }
        self.queues.dead_letter_in(&mut batch, delivery, reason);
        if let Err(err) = retry("dead-letter entry", Backoff::DEFAULT, &lifecycle.give_up, || {
            self.queues.send(batch.clone())
        })
        .await
        {
            tracing::error!(entry = %delivery.id, error = %err, "entry not dead-lettered: it will be redelivered");
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The fleet event of a job that ended `ended` (with fleet events on).
    fn fleet_event(
        &self,
        job: &JobInfo<'_>,
        attempt: u32,
        ended: Ended<'_>,
        took: Option<Duration>,
    ) -> Option<FleetEvent> {
        self.fleet.as_ref().map(|fleet| fleet.ended(job, attempt, ended, took))
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

/// How many times the entry has been delivered.
fn attempt_of(delivery: &Delivery) -> u32 {
    u32::try_from(delivery.attempt).unwrap_or(u32::MAX)
}

/// The final `error` event of a dead-lettered job.
fn dead_letter_event(reason: &str, class: &str, attempts: u64) -> EventKind {
    let mut event = error_event(reason, false, class);
    if let EventKind::Error { details, .. } = &mut event {
        details.insert("dead_lettered".into(), true.into());
        details.insert("attempts".into(), attempts.into());
    }
    event
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
