//! Handlers published to the fleet (`citadel component publish`), followed
//! while the node runs.
//!
//! The registry on Redis (`citadel_transports::redis::registry`) says which
//! component serves each job type. [`FleetHandlers::sync`] reads it and,
//! for every job type whose digest differs from the one in force, fetches
//! the bytes and checks them — the digest of the bytes, the signature
//! against `components.trusted_keys`, the component itself (valid, fits the
//! handler world, provided capabilities), and that some tenant's policy
//! grants everything it imports — compiles it (or takes it from the
//! compiled cache), then swaps it into the handler table. Jobs already
//! running finish on the component they started with; the next job of the
//! type gets the new one. A component failing any check is refused with a
//! log line and a `handlers[].refused` status entry, and the handler in
//! force stays. Sync runs at start (before the first job), on every
//! announcement, after every reconnect of the announcement subscription,
//! and every [`RESYNC_INTERVAL`] as a backstop. It also resolves jobs'
//! pins (`"component": "sha256:…"`) among the job type's published
//! components, with the same checks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use citadel_transports::backoff::{Backoff, worth_logging};
use citadel_transports::redis::registry::{HandlerRecord, Registry, listen_for_changes};
use citadel_transports::redis::{Endpoint, RedisResult};
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::components::signing::TrustedKeys;
use crate::components::{ComponentStore, Digest, LoadedComponent};
use citadel_collector::status::HandlerOrigin;

use crate::handlers::admission::{self, Refused};
use crate::handlers::{Handler, HandlerTable, PinResolver};
use crate::node::Telemetry;
use crate::policy::Policy;

/// How often the registry is read even without an announcement.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// What this node made of the registry.
#[derive(Debug, Default)]
struct Applied {
    /// Job types served by a published component → its digest.
    fleet: BTreeMap<String, Digest>,
    /// Job types whose latest published record was refused → that record as
    /// read (JSON, or the unreadable entry's problem): the same record is
    /// not checked again, a new one is.
    refused: BTreeMap<String, String>,
}

impl PinResolver for FleetHandlers {
    /// A pin must name a component published for the job type (one of the
    /// records in its history); it gets the same checks as a publish, once.
    fn resolve<'a>(
        &'a self,
        job_type: &'a str,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<Arc<LoadedComponent>, Refused>> {
        Box::pin(async move {
            let key = (job_type.to_string(), digest.to_string());
            if let Some(component) = self.pinned.lock().expect("pins poisoned").get(&key) {
                return Ok(Arc::clone(component));
            }
            let history = self
                .registry
                .history(job_type)
                .await
                .map_err(|err| Refused::Registry(err.to_string()))?;
            let record = history
                .into_iter()
                .find(|record| record.digest == digest)
                .ok_or_else(|| Refused::NotPublished(job_type.to_string()))?;
            let component = self.admit(&record).await?;
            self.pinned
                .lock()
                .expect("pins poisoned")
                .insert(key, Arc::clone(&component));
            Ok(component)
        })
    }
}

/// The node's follower of the fleet's published handlers.
pub struct FleetHandlers {
    registry: Registry,
    store: Arc<ComponentStore>,
    policy: Policy,
    trusted: TrustedKeys,
    table: HandlerTable,
    applied: Mutex<Applied>,
    telemetry: Mutex<Option<Arc<Telemetry>>>,
    /// Pinned components already checked, by (job type, digest).
    pinned: Mutex<BTreeMap<(String, String), Arc<LoadedComponent>>>,
}

impl FleetHandlers {
    /// A follower swapping published components into `table`.
    pub fn new(
        registry: Registry,
        store: Arc<ComponentStore>,
        policy: Policy,
        trusted: TrustedKeys,
        table: HandlerTable,
    ) -> FleetHandlers {
        FleetHandlers {
            registry,
            store,
            policy,
            trusted,
            table,
            applied: Mutex::default(),
            telemetry: Mutex::default(),
            pinned: Mutex::default(),
        }
    }

    /// Report the handlers in status from now on.
    pub fn report_to(&self, telemetry: Arc<Telemetry>) {
        *self.telemetry.lock().expect("telemetry poisoned") = Some(telemetry);
        self.report();
    }

    /// Read the registry and apply what changed.
    pub async fn sync(&self) -> RedisResult<()> {
        let (records, unreadable) = self.registry.handlers().await?;
        for bad in unreadable {
            if !self.refused_already(&bad.job_type, &bad.problem) {
                self.refuse(&bad.job_type, bad.problem.clone(), "unknown", &bad.problem);
            }
        }
        for (job_type, record) in records {
            let seen = serde_json::to_string(&record).expect("records serialize");
            let in_force = self
                .applied
                .lock()
                .expect("applied poisoned")
                .fleet
                .get(&job_type)
                .copied();
            if in_force.is_some_and(|digest| digest.to_string() == record.digest)
                || self.refused_already(&job_type, &seen)
            {
                continue;
            }
            match self.admit(&record).await {
                Ok(component) => self.swap(&job_type, &record, component),
                Err(refused) => self.refuse(&job_type, seen, &record.digest, &refused.to_string()),
            }
        }
        self.report();
        Ok(())
    }

    /// Fetch and check a published component.
    async fn admit(&self, record: &HandlerRecord) -> Result<Arc<LoadedComponent>, Refused> {
        let digest = Digest::parse(&record.digest).ok_or_else(|| Refused::BadDigest(record.digest.clone()))?;
        let bytes = self
            .registry
            .component(&record.digest)
            .await
            .map_err(|err| Refused::Fetch(err.to_string()))?
            .ok_or(Refused::Missing)?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(Refused::Tampered { actual });
        }
        self.trusted
            .check(&digest, record.signature.as_deref(), record.signer.as_deref())
            .map_err(|err| Refused::Untrusted(err.to_string()))?;
        let (store, policy) = (Arc::clone(&self.store), self.policy.clone());
        tokio::task::spawn_blocking(move || admission::admit(&store, &policy, &bytes))
            .await
            .map_err(|err| Refused::Load(err.to_string()))?
    }

    fn swap(&self, job_type: &str, record: &HandlerRecord, component: Arc<LoadedComponent>) {
        let previous = self.table.swap(job_type, Arc::clone(&component), HandlerOrigin::Fleet);
        let previous = match previous {
            Some(Handler::Component(previous)) => previous.digest.to_string(),
            Some(Handler::Native(_)) => "a native handler".into(),
            None => "none".into(),
        };
        tracing::info!(
            job_type,
            digest = %component.digest,
            previous,
            publisher = %record.publisher,
            signer = record.signer.as_deref().unwrap_or("unsigned"),
            "handler swapped: the next job of this type runs the published component"
        );
        let mut applied = self.applied.lock().expect("applied poisoned");
        applied.fleet.insert(job_type.to_string(), component.digest);
        applied.refused.remove(job_type);
    }

    /// Whether the record `seen` of `job_type` was refused already.
    fn refused_already(&self, job_type: &str, seen: &str) -> bool {
        self.applied
            .lock()
            .expect("applied poisoned")
            .refused
            .get(job_type)
            .is_some_and(|refused| refused == seen)
    }

    fn refuse(&self, job_type: &str, seen: String, digest: &str, reason: &str) {
        tracing::error!(
            job_type,
            digest,
            reason,
            "published handler refused; the handler in force stays"
        );
        self.table.refuse(job_type, digest, reason);
        self.applied
            .lock()
            .expect("applied poisoned")
            .refused
            .insert(job_type.to_string(), seen);
    }

    fn report(&self) {
        if let Some(telemetry) = self.telemetry.lock().expect("telemetry poisoned").as_ref() {
            telemetry.set_handlers(self.table.statuses());
        }
    }

    /// Sync on every announcement and reconnect (and every
    /// [`RESYNC_INTERVAL`]) until `stop`, retrying failed reads with the
    /// shared backoff.
    pub async fn follow(self: Arc<Self>, redis: Endpoint, stop: CancellationToken) {
        let changed = Arc::new(Notify::new());
        tokio::spawn(listen_for_changes(redis, Arc::clone(&changed), stop.clone()));
        let mut waits = Backoff::DEFAULT.start();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
            }
            while let Err(err) = self.sync().await {
                if worth_logging(waits.attempts()) {
                    tracing::warn!(error = %err, "cannot read the published handlers; retrying with backoff");
                }
                if !waits.wait(&stop).await {
                    return;
                }
            }
            waits.reset();
        }
    }
}
