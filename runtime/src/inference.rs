//! The node's inference engines (`[[engines]]`): one client each, its
//! concurrency limit (requests beyond `max_concurrency` wait their turn),
//! which engine serves a request, and their health, reported in status as
//! services.

use std::sync::Arc;

use citadel_collector::status::ServiceStatus;
use citadel_transports::engines::{Engine, EngineError, GenerationRequest, TokenStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::EngineSettings;

/// Why no engine can take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrouted {
    /// The request names an engine this node does not have.
    #[error("no engine named `{0}` is configured on this node")]
    NoSuchEngine(String),
    /// The named engine does not list the model.
    #[error("engine `{engine}` does not serve model `{model}` (it serves {serves})")]
    NotServed {
        /// The engine.
        engine: String,
        /// The model.
        model: String,
        /// What it serves.
        serves: String,
    },
    /// No engine lists the model.
    #[error("no engine on this node serves model `{0}`")]
    NoEngineFor(String),
}

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

    /// Requests waiting for or holding a slot now.
    pub fn busy(&self) -> usize {
        self.settings.max_concurrency as usize - self.permits.available_permits()
    }
}

/// Every engine of the node.
#[derive(Default)]
pub struct Engines {
    slots: Vec<EngineSlot>,
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
        Ok(Engines { slots })
    }

    /// Whether the node has none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The engine for a request: the one named, which must serve `model`,
    /// or the first that serves it.
    pub fn route(&self, engine: Option<&str>, model: &str) -> Result<&EngineSlot, Unrouted> {
        match engine {
            Some(name) => {
                let slot = self
                    .slots
                    .iter()
                    .find(|slot| slot.settings.name == name)
                    .ok_or_else(|| Unrouted::NoSuchEngine(name.to_string()))?;
                if slot.settings.models.iter().any(|served| served == model) {
                    Ok(slot)
                } else {
                    Err(Unrouted::NotServed {
                        engine: name.to_string(),
                        model: model.to_string(),
                        serves: slot.settings.models.join(", "),
                    })
                }
            }
            None => self
                .slots
                .iter()
                .find(|slot| slot.settings.models.iter().any(|served| served == model))
                .ok_or_else(|| Unrouted::NoEngineFor(model.to_string())),
        }
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
        status: if healthy { "running" } else { "error" }.into(),
        port,
        health: if healthy { "ok" } else { "unhealthy" }.into(),
        models: settings.models.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use citadel_transports::engines::EngineKind;

    fn settings(name: &str, models: &[&str]) -> EngineSettings {
        EngineSettings {
            name: name.into(),
            kind: EngineKind::OpenAi,
            base_url: "http://127.0.0.1:8081/".into(),
            models: models.iter().map(|model| model.to_string()).collect(),
            max_concurrency: 2,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn requests_are_routed_to_an_engine_serving_the_model() {
        let engines =
            Engines::from_config(&[settings("vllm", &["llama-3.2-1b"]), settings("llama", &["smollm2"])]).unwrap();
        assert_eq!(engines.route(None, "smollm2").unwrap().settings().name, "llama");
        assert_eq!(
            engines.route(Some("vllm"), "llama-3.2-1b").unwrap().settings().name,
            "vllm"
        );
        assert_eq!(
            engines.route(Some("tgi"), "x").err(),
            Some(Unrouted::NoSuchEngine("tgi".into()))
        );
        assert_eq!(
            engines.route(Some("vllm"), "smollm2").err().unwrap().to_string(),
            "engine `vllm` does not serve model `smollm2` (it serves llama-3.2-1b)"
        );
        assert_eq!(
            engines.route(None, "gpt-4").err(),
            Some(Unrouted::NoEngineFor("gpt-4".into()))
        );
    }

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
