//! Node configuration: one TOML file (`--config`), overridden by `CITADEL_*`
//! environment variables, overridden by command-line flags; validated once,
//! before anything starts, with errors that name the key.
//!
//! Environment variables address keys by path: `CITADEL_SANDBOX__EPOCH_TICK_MS`
//! is `sandbox.epoch_tick_ms`, `CITADEL_POLICY` is `policy`. Later subsystems
//! add their own sections (`[[engines]]`, `[[services]]`, ...) here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, PolicyError};

mod agent;
mod components;
mod device;
mod docker;
mod engines;
mod models;
mod sandbox;
mod services;
mod telemetry;
mod worker;

pub use agent::AgentConfig;
pub use components::ComponentsConfig;
pub use device::{DeviceConfig, DeviceStore};
pub use docker::DockerConfig;
pub use engines::EngineSettings;
pub use models::ModelsConfig;
pub use sandbox::SandboxConfig;
pub use services::{Limits, RestartPolicy, ServiceSettings};
pub use telemetry::TelemetryConfig;
pub use worker::{GroupMode, WorkerConfig};

/// Environment variables that configure the command line itself, not a
/// config key.
const NON_KEY_ENV: &[&str] = &["config", "log"];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or parsing a source failed, or a key is unknown or mistyped.
    #[error("invalid configuration: {0}")]
    Load(String),
    /// A value is out of range.
    #[error("invalid configuration: {key} {problem}")]
    Invalid {
        /// The dotted key, e.g. `sandbox.epoch_tick_ms`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The policy file named by `policy` is unusable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Flags that set no config key.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NoOverrides {}

/// The whole node configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Tenant policy file (see `policy.rs`); the built-in default policy when absent.
    pub policy: Option<PathBuf>,
    /// Redis (`redis://host:port/db`, `rediss://…`, `redis+unix:///path`).
    pub redis_url: Option<String>,
    /// The node's identity.
    pub node: NodeConfig,
    /// The wasmtime sandbox.
    pub sandbox: SandboxConfig,
    /// The Redis Streams worker (`citadel work`).
    pub worker: WorkerConfig,
    /// Job type → handler component (`.wasm`).
    pub handlers: BTreeMap<String, PathBuf>,
    /// Node telemetry: status snapshot, publishers, status server.
    pub telemetry: TelemetryConfig,
    /// Local inference engines (`[[engines]]`).
    pub engines: Vec<EngineSettings>,
    /// Native processes the node runs in cgroups (`[[services]]`).
    pub services: Vec<ServiceSettings>,
    /// The Docker Engine API (`[docker]`).
    pub docker: DockerConfig,
    /// The Nexus polling agent (`citadel agent`).
    pub agent: AgentConfig,
    /// The models directory capability `models` writes (`[models]`).
    pub models: ModelsConfig,
    /// Handlers published to the fleet, and trusted signers (`[components]`).
    pub components: ComponentsConfig,
    /// The device configuration applied by the control plane, laid over
    /// this file at start (not a TOML key: see `config/device.rs`).
    #[serde(skip)]
    pub device: Option<DeviceConfig>,
    /// Where the built-in handlers are (`llm-chat.wasm`, the default handler
    /// of `llm_inference` when engines are configured); default: `guests/`
    /// beside the binary's directory (`target/guests` in a checkout).
    pub guests_dir: Option<PathBuf>,
}

/// The job type Citadel sends to inference handlers.
pub const LLM_INFERENCE: &str = "llm_inference";

/// The job type that stores a model file in the node's models directory.
pub const MODEL_DOWNLOAD: &str = "model_download";

/// Who this node is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node id (`^[a-zA-Z0-9._-]{1,64}$`); the host name when absent.
    pub id: Option<String>,
    /// Display name; the id when absent.
    pub name: Option<String>,
    /// Where the node keeps its state (service logs, applied device
    /// configuration); default `$XDG_STATE_HOME/citadel`, else
    /// `~/.local/state/citadel`.
    pub state_dir: Option<PathBuf>,
    /// The cgroup under which services run (`<slice>/<group>/<name>`);
    /// default `citadel.slice`.
    pub cgroup_slice: Option<String>,
    /// Tags reported in status (`node.tags`).
    pub tags: Vec<String>,
}

/// Node ids are `^[a-zA-Z0-9._-]{1,64}$` (DESIGN §3).
fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Config {
    /// Layer defaults, the file (if any), the environment and `overrides`
    /// (the flags), then validate.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let mut config: Config = figment
            .merge(Env::prefixed("CITADEL_").split("__").ignore(NON_KEY_ENV))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|err| ConfigError::Load(err.to_string()))?;
        if let Some(device) = DeviceStore::new(&config.state_dir())
            .load()
            .map_err(|err| ConfigError::Load(format!("applied device configuration: {err}")))?
        {
            config.apply_device(&device);
        }
        config.validate()?;
        Ok(config)
    }

    /// Check ranges and cross-key constraints.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sandbox = &self.sandbox;
        if !(1..=100).contains(&sandbox.epoch_tick_ms) {
            return Err(ConfigError::Invalid {
                key: "sandbox.epoch_tick_ms",
                problem: format!("must be between 1 and 100, got {}", sandbox.epoch_tick_ms),
            });
        }
        if sandbox.max_instances == 0 {
            return Err(ConfigError::Invalid {
                key: "sandbox.max_instances",
                problem: "must be at least 1".into(),
            });
        }
        if !(1..=4096).contains(&sandbox.max_memory_mib) {
            return Err(ConfigError::Invalid {
                key: "sandbox.max_memory_mib",
                problem: format!("must be between 1 and 4096, got {}", sandbox.max_memory_mib),
            });
        }
        if !(64..=16384).contains(&sandbox.max_wasm_stack_kib) {
            return Err(ConfigError::Invalid {
                key: "sandbox.max_wasm_stack_kib",
                problem: format!("must be between 64 and 16384, got {}", sandbox.max_wasm_stack_kib),
            });
        }
        if let Some(id) = &self.node.id
            && !valid_node_id(id)
        {
            return Err(ConfigError::Invalid {
                key: "node.id",
                problem: format!("{id:?} must match ^[a-zA-Z0-9._-]{{1,64}}$"),
            });
        }
        self.worker.validate(sandbox)?;
        self.telemetry.validate()?;
        engines::validate(&self.engines)?;
        services::validate(&self.services)?;
        self.docker.validate()?;
        self.agent.validate()?;
        self.models.validate()?;
        self.components.validate()?;
        if let Some(slice) = &self.node.cgroup_slice
            && (slice.is_empty() || slice.split('/').any(|part| !valid_node_id(part)))
        {
            return Err(ConfigError::Invalid {
                key: "node.cgroup_slice",
                problem: format!("{slice:?} must be a relative cgroup path of ^[a-zA-Z0-9._-]{{1,64}}$ parts"),
            });
        }
        Ok(())
    }

    /// The node id: `node.id`, else the host name (made valid).
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node.id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let id: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        if id.is_empty() { "citadel-node".into() } else { id }
    }

    /// The handlers to load: `[handlers]`, plus the built-in ones found in
    /// `guests_dir` for job types `[handlers]` does not name:
    /// `model-download` for `model_download`, and `llm-chat` for
    /// `llm_inference` when engines are configured.
    pub fn handlers_with_defaults(&self) -> BTreeMap<String, PathBuf> {
        let mut handlers = self.handlers.clone();
        let dir = self.guests_dir.clone().or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("guests"))
        });
        let built_in = |file: &str| dir.as_ref().map(|dir| dir.join(file));
        if !handlers.contains_key(MODEL_DOWNLOAD)
            && let Some(component) = built_in("model-download.wasm").filter(|path| path.is_file())
        {
            handlers.insert(MODEL_DOWNLOAD.into(), component);
        }
        if !self.engines.is_empty() && !handlers.contains_key(LLM_INFERENCE) {
            match built_in("llm-chat.wasm") {
                Some(component) if component.is_file() => {
                    handlers.insert(LLM_INFERENCE.into(), component);
                }
                component => tracing::warn!(
                    looked_at = ?component,
                    "engines are configured but no llm_inference handler: set [handlers] llm_inference or guests_dir"
                ),
            }
        }
        handlers
    }

    /// Whether handlers can arrive while the node runs: published to the
    /// fleet (followed when Redis is configured) or put in `components.dir`.
    pub fn handlers_can_arrive(&self) -> bool {
        (self.components.fleet && self.redis_url.is_some()) || self.components.dir.is_some()
    }

    /// The models directory: `models.dir`, else `<state_dir>/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.models
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join("models"))
    }

    /// The node's display name: `node.name`, else its id.
    pub fn node_name(&self) -> String {
        self.node.name.clone().unwrap_or_else(|| self.node_id())
    }

    /// Where the node keeps its state: `node.state_dir`, else
    /// `$XDG_STATE_HOME/citadel`, else `~/.local/state/citadel`, else
    /// `citadel-state` in the temporary directory.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.node.state_dir {
            return dir.clone();
        }
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local").join("state")))
            .map(|base| base.join("citadel"))
            .unwrap_or_else(|| std::env::temp_dir().join("citadel-state"))
    }

    /// The cgroup services run under (`node.cgroup_slice`).
    pub fn cgroup_slice(&self) -> &str {
        self.node.cgroup_slice.as_deref().unwrap_or("citadel.slice")
    }

    /// The tenant policy named by `policy`, checked against the sandbox
    /// (every tenant's memory must fit a pooling slot).
    pub fn load_policy(&self) -> Result<Policy, ConfigError> {
        let policy = match &self.policy {
            Some(path) => Policy::from_file(path)?,
            None => Policy::default(),
        };
        for (tenant, grant) in policy.tenants() {
            if grant.memory_mib > self.sandbox.max_memory_mib {
                return Err(ConfigError::Invalid {
                    key: "sandbox.max_memory_mib",
                    problem: format!(
                        "({}) is smaller than tenants.{tenant}.memory_mib ({}); raise it or lower the tenant's",
                        self.sandbox.max_memory_mib, grant.memory_mib
                    ),
                });
            }
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("citadel.toml");
        std::fs::write(&file, "[sandbox]\nepoch_tick_ms = 7\nmax_instances = 8\n").unwrap();
        #[derive(Serialize)]
        struct Flags {
            sandbox: Partial,
        }
        #[derive(Serialize)]
        struct Partial {
            max_instances: u32,
        }
        let config = Config::load(
            Some(&file),
            Flags {
                sandbox: Partial { max_instances: 12 },
            },
        )
        .unwrap();
        assert_eq!(config.sandbox.epoch_tick_ms, 7);
        assert_eq!(config.sandbox.max_instances, 12);
        assert_eq!(config.sandbox.max_memory_mib, SandboxConfig::default().max_memory_mib);
    }

    #[test]
    fn worker_concurrency_must_fit_the_instance_pool() {
        let mut config = Config::default();
        config.sandbox.max_instances = 3;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("worker.concurrency") && err.contains("sandbox.max_instances"),
            "{err}"
        );
    }

    #[test]
    fn node_ids_are_checked() {
        let mut config = Config::default();
        config.node.id = Some("gpu 7!".into());
        assert!(config.validate().unwrap_err().to_string().contains("node.id"));
        config.node.id = Some("gpu-7.rack_2".into());
        config.validate().unwrap();
        assert_eq!(config.node_id(), "gpu-7.rack_2");
        assert_eq!(config.node_name(), "gpu-7.rack_2");
    }

    #[test]
    fn engines_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("citadel.toml");
        let engine = |name: &str, kind: &str, url: &str| {
            format!("[[engines]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"{url}\"\nmodels = [\"smollm2\"]\n")
        };
        let load = |text: String| {
            std::fs::write(&file, text).unwrap();
            Config::load(Some(&file), NoOverrides {})
        };
        let config = load(
            engine("llama", "openai", "http://127.0.0.1:8081") + &engine("ollama", "ollama", "http://127.0.0.1:11434"),
        )
        .unwrap();
        assert_eq!(config.engines.len(), 2);
        assert_eq!(config.engines[0].max_concurrency, 4, "default");
        assert_eq!(config.engines[1].kind, citadel_transports::engines::EngineKind::Ollama);
        let err = load(engine("llama", "openai", "http://a:1") + &engine("llama", "openai", "http://b:1")).unwrap_err();
        assert!(
            err.to_string().contains("engines.name") && err.to_string().contains("another engine"),
            "{err}"
        );
        let err = load(engine("llama", "openai", "127.0.0.1:8081")).unwrap_err();
        assert!(err.to_string().contains("engines.base_url"), "{err}");
        let err = load(engine("llama", "tgi", "http://a:1")).unwrap_err();
        assert!(err.to_string().contains("tgi"), "{err}");
    }

    #[test]
    fn llm_inference_defaults_to_the_built_in_handler_when_engines_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("llm-chat.wasm"), b"").unwrap();
        let mut config = Config {
            guests_dir: Some(dir.path().to_path_buf()),
            ..Config::default()
        };
        assert!(config.handlers_with_defaults().is_empty(), "no engines, no default");
        config.engines = vec![EngineSettings {
            name: "llama".into(),
            kind: citadel_transports::engines::EngineKind::OpenAi,
            base_url: "http://127.0.0.1:8081".into(),
            models: vec!["smollm2".into()],
            max_concurrency: 1,
            timeout_ms: 1000,
        }];
        assert_eq!(
            config.handlers_with_defaults()[LLM_INFERENCE],
            dir.path().join("llm-chat.wasm")
        );
        config.handlers.insert(LLM_INFERENCE.into(), "mine.wasm".into());
        assert_eq!(
            config.handlers_with_defaults()[LLM_INFERENCE],
            PathBuf::from("mine.wasm"),
            "a named handler wins"
        );
        assert!(!config.handlers_with_defaults().contains_key(MODEL_DOWNLOAD));
        std::fs::write(dir.path().join("model-download.wasm"), b"").unwrap();
        assert_eq!(
            config.handlers_with_defaults()[MODEL_DOWNLOAD],
            dir.path().join("model-download.wasm"),
            "model_download is built in whenever its component is there"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("citadel.toml");
        std::fs::write(&file, "[sandbox]\nepoch_tick = 7\n").unwrap();
        let err = Config::load(Some(&file), NoOverrides {}).unwrap_err().to_string();
        assert!(err.contains("epoch_tick"), "{err}");
    }

    #[test]
    fn out_of_range_value_is_named() {
        let mut config = Config::default();
        config.sandbox.epoch_tick_ms = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("sandbox.epoch_tick_ms"), "{err}");
    }

    #[test]
    fn tenant_memory_must_fit_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, "[tenants.big]\nmemory_mib = 1024\n").unwrap();
        let mut config = Config {
            policy: Some(policy),
            ..Config::default()
        };
        config.sandbox.max_memory_mib = 256;
        let err = config.load_policy().unwrap_err().to_string();
        assert!(err.contains("tenants.big.memory_mib"), "{err}");
    }
}
