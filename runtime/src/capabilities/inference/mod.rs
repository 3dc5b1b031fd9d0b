//! The node's inference engines (`[[engines]]`): one client each, its
//! concurrency limit (requests beyond `max_concurrency` wait their turn),
//! which engine serves a request ([`route`]), and their health, reported
//! in status as services.

mod host;
pub mod policy;
mod route;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use citadel_collector::status::{ServiceHealth, ServiceState, ServiceStatus};
use citadel_transports::engines::{Engine, EngineError, Finish, GenerationRequest, TokenStream, Usage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::EngineSettings;

pub use host::ActiveCompletion;
pub use route::{Route, Unrouted};

/// One configured engine.
pub struct EngineSlot {
    settings: EngineSettings,
    client: Engine,
    permits: Arc<Semaphore>,
}

/// A generation holding one of its engine's concurrency slots until dropped.
pub struct Generation {
    /// The tokens.
    pub stream: TokenStream,
    _permit: OwnedSemaphorePermit,
}

impl EngineSlot {
    /// Its settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Wait for a slot, then start the generation.
    pub async fn generate(&self, request: &GenerationRequest) -> Result<Generation, EngineError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("engine slots are never closed");
        let stream = self.client.generate(request).await?;
        Ok(Generation {
            stream,
            _permit: permit,
        })
    }
}

/// One generation, as metered.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRecord<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The engine.
    pub engine: &'a str,
    /// The model.
    pub model: &'a str,
    /// `ok`, or how it failed (`unavailable`, `rejected`, `malformed`,
    /// `failed`, `interrupted`, `stalled`, `abandoned` when the job stopped
    /// pulling: deadline, cancellation, the guest dropped it).
    pub outcome: &'a str,
    /// Token counts, when the engine reported them.
    pub usage: Option<Usage>,
    /// Time from the request to the first token.
    pub time_to_first_token: Option<Duration>,
    /// Time from the request to the end.
    pub duration: Duration,
}

/// Told about every generation when it ends (metrics).
pub trait InferenceObserver: Send + Sync {
    /// A generation ended.
    fn generation(&self, record: &GenerationRecord<'_>);
}

/// Meters one generation; reports it exactly once (when dropped unfinished:
/// as `abandoned`).
pub struct Metered {
    observer: Option<Arc<dyn InferenceObserver>>,
    tenant: String,
    engine: String,
    model: String,
    started: Instant,
    first_token: Option<Duration>,
    reported: bool,
}

impl Metered {
    /// Start metering a generation of `tenant` on `engine`.
    pub fn start(engines: &Engines, tenant: &str, engine: &str, model: &str) -> Metered {
        Metered {
            observer: engines.observer.get().cloned(),
            tenant: tenant.into(),
            engine: engine.into(),
            model: model.into(),
            started: Instant::now(),
            first_token: None,
            reported: false,
        }
    }

    /// A token arrived; `first` is the stream's own time to first token.
    pub fn token(&mut self, first: Option<Duration>) {
        if self.first_token.is_none() {
            self.first_token = first.or_else(|| Some(self.started.elapsed()));
        }
    }

    /// Time to first token, ms (0 before the first).
    pub fn time_to_first_token_ms(&self) -> u32 {
        self.first_token
            .map_or(0, |first| u32::try_from(first.as_millis()).unwrap_or(u32::MAX))
    }

    /// It finished.
    pub fn finished(&mut self, finish: &Finish) {
        self.report("ok", finish.usage);
    }

    /// It failed with `err`.
    pub fn failed(&mut self, err: &EngineError) {
        let outcome = match err {
            EngineError::Unavailable { .. } => "unavailable",
            EngineError::Rejected { .. } => "rejected",
            EngineError::Malformed { .. } => "malformed",
            EngineError::Failed { .. } => "failed",
            EngineError::Interrupted { .. } => "interrupted",
            EngineError::Stalled { .. } => "stalled",
        };
        self.report(outcome, None);
    }

    fn report(&mut self, outcome: &str, usage: Option<Usage>) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        if let Some(observer) = &self.observer {
            observer.generation(&GenerationRecord {
                tenant: &self.tenant,
                engine: &self.engine,
                model: &self.model,
                outcome,
                usage,
                time_to_first_token: self.first_token,
                duration: self.started.elapsed(),
            });
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.report("abandoned", None);
    }
}

/// Every engine of the node.
#[derive(Default)]
pub struct Engines {
    slots: Vec<EngineSlot>,
    observer: OnceLock<Arc<dyn InferenceObserver>>,
}

impl Engines {
    /// Clients for `settings` (validated with the configuration).
    pub fn from_config(settings: &[EngineSettings]) -> Result<Engines, String> {
        let slots = settings
            .iter()
            .map(|settings| {
                Ok(EngineSlot {
                    client: Engine::new(settings.client_config())?,
                    permits: Arc::new(Semaphore::new(settings.max_concurrency as usize)),
                    settings: settings.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Engines {
            slots,
            observer: OnceLock::new(),
        })
    }

    /// Report every generation to `observer` (once, at start-up).
    pub fn observe(&self, observer: Arc<dyn InferenceObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Whether the node has none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Probe every engine's health at once; each as a status service.
    pub async fn health(&self) -> Vec<ServiceStatus> {
        let probes = self.slots.iter().map(|slot| async move {
            let outcome = slot.client.health().await;
            if let Err(err) = &outcome {
                tracing::debug!(engine = %slot.settings.name, error = %err, "engine health probe failed");
            }
            service_status(&slot.settings, outcome.is_ok())
        });
        futures_util::future::join_all(probes).await
    }
}

/// An engine as a status service.
fn service_status(settings: &EngineSettings, healthy: bool) -> ServiceStatus {
    let port = settings
        .base_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|host| host.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok());
    ServiceStatus {
        name: settings.name.clone(),
        kind: "inference".into(),
        status: if healthy {
            ServiceState::Running
        } else {
            ServiceState::Error
        },
        port,
        health: if healthy {
            ServiceHealth::Ok
        } else {
            ServiceHealth::Unhealthy
        },
        models: settings.models.clone(),
        backends: settings
            .backends()
            .iter()
            .map(|backend| backend.name().to_string())
            .collect(),
        ..ServiceStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::inference::route::tests::settings;

    #[test]
    fn engines_show_as_services() {
        let status = service_status(&settings("llama", &["smollm2"]), false);
        assert_eq!(
            (status.kind.as_str(), status.status.as_str(), status.health.as_str()),
            ("inference", "error", "unhealthy")
        );
        assert_eq!(status.port, Some(8081));
        assert_eq!(status.models, ["smollm2"]);
    }
}
