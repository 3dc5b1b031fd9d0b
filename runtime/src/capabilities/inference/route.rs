//! Which engine serves a request: the engine a job names, else Citadel's
//! routing — the `backend` asked for (the engine's kind; `auto` or none:
//! any) ∩ the engines serving the model ∩ those the tenant may use. A
//! refusal says what the node does serve.

use citadel_transports::engines::Backend;

use super::{EngineSlot, Engines};

/// What a request asks of the node's engines (Citadel's routing: the named
/// engine, else backend ∩ model ∩ what the tenant may use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// An engine by name (a job's own `engine` field).
    pub engine: Option<&'a str>,
    /// A kind of engine (`backend`; `None`: `auto`).
    pub backend: Option<Backend>,
    /// The model.
    pub model: &'a str,
}

/// Why no engine can take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrouted {
    /// The node has no engines at all.
    #[error("this node has no inference engines ([[engines]] in its configuration)")]
    NoEngines,
    /// The request names an engine this node does not have.
    #[error("no engine named `{name}` is configured on this node; it has {serves}")]
    NoSuchEngine {
        /// The name asked for.
        name: String,
        /// What the node serves.
        serves: String,
    },
    /// No engine is the backend asked for.
    #[error("this node serves no `{backend}` engine; it has {serves}")]
    NoBackend {
        /// The backend asked for.
        backend: Backend,
        /// What the node serves.
        serves: String,
    },
    /// The named engine is not the backend asked for.
    #[error("engine `{engine}` is not a `{backend}` engine; it has {serves}")]
    WrongBackend {
        /// The engine.
        engine: String,
        /// The backend asked for.
        backend: Backend,
        /// What the node serves.
        serves: String,
    },
    /// No engine (of the backend asked for) lists the model.
    #[error(
        "no {}engine on this node serves model `{model}`; it has {serves}",
        backend.map(|backend| format!("`{backend}` ")).unwrap_or_default()
    )]
    NoEngineFor {
        /// The model.
        model: String,
        /// The backend asked for, if any.
        backend: Option<Backend>,
        /// What the node serves.
        serves: String,
    },
    /// Engines serve it, but the tenant may use none of them.
    #[error("tenant `{tenant}` may not use {} (inference.engines)", engines.join(" or "))]
    NotGranted {
        /// The tenant.
        tenant: String,
        /// The engines that would serve it, as `engine `name``.
        engines: Vec<String>,
    },
}

impl Unrouted {
    /// Whether another node, or this one later, could serve the request: a
    /// model nobody here serves yet. Everything else is this node's
    /// configuration saying no.
    pub fn may_pass(&self) -> bool {
        matches!(self, Unrouted::NoEngineFor { .. })
    }
}

impl Engines {
    /// The engine for `route`: the one named, else the first that is the
    /// backend asked for and serves the model; among those, only the
    /// engines `tenant` may use (`allowed`). The refusal says what the node
    /// serves.
    pub fn route(
        &self,
        route: Route<'_>,
        tenant: &str,
        allowed: impl Fn(&str) -> bool,
    ) -> Result<&EngineSlot, Unrouted> {
        if self.slots.is_empty() {
            return Err(Unrouted::NoEngines);
        }
        let serves = || self.describe();
        let named: Vec<&EngineSlot> = match route.engine {
            Some(name) => {
                let slot = self
                    .slots
                    .iter()
                    .find(|slot| slot.settings.name == name)
                    .ok_or_else(|| Unrouted::NoSuchEngine {
                        name: name.to_string(),
                        serves: serves(),
                    })?;
                vec![slot]
            }
            None => self.slots.iter().collect(),
        };
        let of_backend: Vec<&EngineSlot> = match route.backend {
            Some(backend) => named
                .into_iter()
                .filter(|slot| slot.settings.backends().contains(&backend))
                .collect(),
            None => named,
        };
        if let (Some(backend), true) = (route.backend, of_backend.is_empty()) {
            return Err(match route.engine {
                Some(engine) => Unrouted::WrongBackend {
                    engine: engine.to_string(),
                    backend,
                    serves: serves(),
                },
                None => Unrouted::NoBackend {
                    backend,
                    serves: serves(),
                },
            });
        }
        let serving: Vec<&EngineSlot> = of_backend
            .into_iter()
            .filter(|slot| slot.settings.models.iter().any(|served| served == route.model))
            .collect();
        if serving.is_empty() {
            return Err(Unrouted::NoEngineFor {
                model: route.model.to_string(),
                backend: route.backend,
                serves: serves(),
            });
        }
        serving
            .iter()
            .find(|slot| allowed(&slot.settings.name))
            .copied()
            .ok_or_else(|| Unrouted::NotGranted {
                tenant: tenant.to_string(),
                engines: serving
                    .iter()
                    .map(|slot| format!("engine `{}`", slot.settings.name))
                    .collect(),
            })
    }

    /// What the node serves, for refusals: `engine `local` (llamacpp:
    /// smollm2, qwen)`, one per engine.
    pub fn describe(&self) -> String {
        let engines: Vec<String> = self
            .slots
            .iter()
            .map(|slot| {
                let backends: Vec<&str> = slot.settings.backends().iter().map(|backend| backend.name()).collect();
                format!(
                    "engine `{}` ({}: {})",
                    slot.settings.name,
                    backends.join("|"),
                    slot.settings.models.join(", ")
                )
            })
            .collect();
        engines.join("; ")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use citadel_transports::engines::EngineKind;

    use super::*;
    use crate::config::EngineSettings;

    /// An OpenAI-compatible engine `name` serving `models`.
    pub(in crate::capabilities::inference) fn settings(name: &str, models: &[&str]) -> EngineSettings {
        EngineSettings {
            name: name.into(),
            kind: EngineKind::OpenAi,
            backend: None,
            base_url: "http://127.0.0.1:8081/".into(),
            models: models.iter().map(|model| model.to_string()).collect(),
            max_concurrency: 2,
            timeout_ms: 1000,
        }
    }

    fn route<'a>(engine: Option<&'a str>, backend: Option<Backend>, model: &'a str) -> Route<'a> {
        Route { engine, backend, model }
    }

    fn engines() -> Engines {
        let vllm = EngineSettings {
            backend: Some(Backend::Vllm),
            ..settings("vllm", &["llama-3.2-1b", "smollm2"])
        };
        let local = EngineSettings {
            backend: Some(Backend::Llamacpp),
            ..settings("local", &["smollm2"])
        };
        let ollama = EngineSettings {
            kind: EngineKind::Ollama,
            ..settings("ollama", &["qwen"])
        };
        Engines::from_config(&[vllm, local, ollama]).unwrap()
    }

    fn routed(engines: &Engines, route: Route<'_>) -> Result<String, Unrouted> {
        engines
            .route(route, "acme", |_| true)
            .map(|slot| slot.settings().name.clone())
    }

    #[test]
    fn backend_model_and_grant_pick_the_engine() {
        let engines = engines();
        assert_eq!(routed(&engines, route(None, None, "smollm2")).unwrap(), "vllm");
        assert_eq!(
            routed(&engines, route(None, Some(Backend::Llamacpp), "smollm2")).unwrap(),
            "local"
        );
        assert_eq!(
            routed(&engines, route(None, Some(Backend::Ollama), "qwen")).unwrap(),
            "ollama",
            "an ollama engine is backend ollama by its kind"
        );
        assert_eq!(
            routed(&engines, route(Some("local"), None, "smollm2")).unwrap(),
            "local"
        );
        let only_local = engines
            .route(route(None, None, "smollm2"), "acme", |engine| engine == "local")
            .unwrap();
        assert_eq!(only_local.settings().name, "local", "the grant narrows the choice");
        let err = engines
            .route(route(None, None, "smollm2"), "acme", |engine| engine == "ollama")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "tenant `acme` may not use engine `vllm` or engine `local` (inference.engines)"
        );
    }

    #[test]
    fn refusals_say_what_the_node_serves() {
        let engines = engines();
        let serves = "engine `vllm` (vllm: llama-3.2-1b, smollm2); engine `local` (llamacpp: smollm2); \
                      engine `ollama` (ollama: qwen)";
        let err = routed(&engines, route(None, Some(Backend::Sglang), "smollm2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("this node serves no `sglang` engine; it has {serves}")
        );
        assert!(!err.may_pass());
        let err = routed(&engines, route(None, Some(Backend::Llamacpp), "qwen")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no `llamacpp` engine on this node serves model `qwen`; it has {serves}")
        );
        assert!(err.may_pass(), "another node may serve it");
        let err = routed(&engines, route(Some("tgi"), None, "x")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no engine named `tgi` is configured on this node; it has {serves}")
        );
        let err = routed(&engines, route(Some("local"), Some(Backend::Vllm), "smollm2")).unwrap_err();
        assert!(
            err.to_string().starts_with("engine `local` is not a `vllm` engine"),
            "{err}"
        );
        let err = routed(&engines, route(None, None, "gpt-4")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no engine on this node serves model `gpt-4`; it has {serves}")
        );
        let none = Engines::from_config(&[]).unwrap();
        assert_eq!(routed(&none, route(None, None, "x")), Err(Unrouted::NoEngines));
        let any_openai = Engines::from_config(&[settings("llama", &["smollm2"])]).unwrap();
        assert_eq!(
            any_openai.describe(),
            "engine `llama` (vllm|sglang|llamacpp: smollm2)",
            "an openai engine without a backend answers for every OpenAI-compatible one"
        );
    }
}
