//! Node configuration: one TOML file (`--config`), overridden by `CITADEL_*`
//! environment variables, overridden by command-line flags; validated once,
//! before anything starts, with errors that name the key.
//!
//! Environment variables address keys by path: `CITADEL_SANDBOX__EPOCH_TICK_MS`
//! is `sandbox.epoch_tick_ms`, `CITADEL_POLICY` is `policy`,
//! `CITADEL_DEVICE_CODE` (Citadel's own) is `device_code`. A `CITADEL_*`
//! variable that names no key is a warning naming it, not a refusal (a
//! machine's environment holds more than this node's settings); unknown
//! keys in the file stay errors. Later subsystems add their own sections
//! (`[[engines]]`, `[[services]]`, ...) here. What the node keeps in its
//! state directory — the applied device configuration, the credential of
//! `citadel init` — is laid over (or under) the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use citadel_transports::redis::{Endpoint, EndpointError, RedisSettings};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, PolicyError};

mod agent;
mod auth;
mod builtin;
mod components;
mod credential;
mod device;
mod docker;
mod engines;
mod models;
mod sandbox;
mod services;
mod state_file;
mod telemetry;
mod worker;

pub use agent::AgentConfig;
pub use auth::AuthConfig;
pub use builtin::{BUILT_IN, EXTRACT, EXTRACTION, LLM_INFERENCE, MODEL_DOWNLOAD};
pub use components::ComponentsConfig;
pub use credential::{CREDENTIAL_FILE, Credential, CredentialStore};
pub use device::{DeviceConfig, DeviceStore};
pub use docker::DockerConfig;
pub use engines::EngineSettings;
pub use models::ModelsConfig;
pub use sandbox::SandboxConfig;
pub use services::{Limits, RestartPolicy, ServiceSettings, parse_bytes, parse_cpu_percent};
pub use telemetry::TelemetryConfig;
pub use worker::{GroupMode, WorkerConfig};

/// Environment variables that configure the command line itself, not a
/// config key.
const NON_KEY_ENV: &[&str] = &["config", "log", "log_format"];

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
    /// Redis (`redis://[user:password@]host:port/db`, `rediss://…` for
    /// TLS, `redis+unix:///path`).
    pub redis_url: Option<String>,
    /// How to reach it beyond the URL: TLS files (`[redis]`).
    pub redis: RedisSettings,
    /// The device code of the node's device authorization (Citadel's
    /// `CITADEL_DEVICE_CODE`; else the one `citadel init` stored), carried
    /// as `deviceCode` in status so the control plane can match the node to
    /// the user's onboarding session.
    pub device_code: Option<String>,
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
    /// The control plane `citadel init` authorizes the node with (`[auth]`).
    pub auth: AuthConfig,
    /// The models directory capability `models` writes (`[models]`).
    pub models: ModelsConfig,
    /// Handlers published to the fleet, and trusted signers (`[components]`).
    pub components: ComponentsConfig,
    /// `citadel monitor` (`[monitor]`; validated when the monitor starts).
    pub monitor: citadel_monitor::config::MonitorConfig,
    /// The device configuration applied by the control plane, laid over
    /// this file at start (not a TOML key: see `config/device.rs`).
    #[serde(skip)]
    pub device: Option<DeviceConfig>,
    /// Where the built-in handlers are (`llm-chat.wasm`, the default handler
    /// of `llm_inference` when engines are configured); default: `guests/`
    /// beside the binary's directory (`target/guests` in a checkout).
    pub guests_dir: Option<PathBuf>,
}

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

/// The `CITADEL_*` variables that name a config key; the others are
/// warned about, by name, and left out.
fn known_env() -> Env {
    let env = Env::prefixed("CITADEL_").split("__").ignore(NON_KEY_ENV);
    let shape = serde_json::to_value(Config::default()).unwrap_or_default();
    let unknown: Vec<String> = env
        .iter()
        .map(|(key, _)| key.to_string())
        .filter(|key| !names_a_key(&shape, key))
        .collect();
    for key in &unknown {
        let variable = format!("CITADEL_{}", key.to_ascii_uppercase().replace('.', "__"));
        tracing::warn!(
            %variable,
            "ignoring a CITADEL_ environment variable that names no configuration key (keys are CITADEL_<KEY> or CITADEL_<SECTION>__<KEY>)"
        );
    }
    let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
    env.ignore(&unknown)
}

/// Whether the dotted `key` names a key of a configuration shaped like
/// `shape` (the default configuration as JSON). Maps (`handlers`, empty by
/// default) take any key; an unset option (`null`) has none below it.
fn names_a_key(shape: &serde_json::Value, key: &str) -> bool {
    let mut at = shape;
    for part in key.split('.') {
        match at {
            serde_json::Value::Object(fields) if fields.is_empty() => return true,
            serde_json::Value::Object(fields) => match fields.get(part) {
                Some(value) => at = value,
                None => return false,
            },
            _ => return false,
        }
    }
    true
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
            .merge(known_env())
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|err| ConfigError::Load(err.to_string()))?;
        if let Some(device) = DeviceStore::new(&config.state_dir())
            .load()
            .map_err(|err| ConfigError::Load(format!("applied device configuration: {err}")))?
        {
            config.apply_device(&device);
        }
        // A damaged credential must not keep `citadel init --force` from
        // replacing it: the node says so and runs without it.
        match CredentialStore::new(&config.state_dir()).load() {
            Ok(Some(credential)) => config.apply_credential(&credential),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "ignoring the node's credential"),
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
        if !(1..=1_000_000).contains(&sandbox.jobs_per_instance) {
            return Err(ConfigError::Invalid {
                key: "sandbox.jobs_per_instance",
                problem: format!(
                    "must be between 1 (a fresh instance for every job) and 1000000, got {}",
                    sandbox.jobs_per_instance
                ),
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
        self.auth.validate()?;
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

    /// The configured Redis (`redis_url` with `[redis]`); `None` when no
    /// URL is set. Reads the TLS files; connects to nothing.
    pub fn redis(&self) -> Result<Option<Endpoint>, EndpointError> {
        self.redis_url
            .as_deref()
            .map(|url| Endpoint::open(url, &self.redis))
            .transpose()
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
    fn environment_variables_name_keys_or_are_left_out() {
        let shape = serde_json::to_value(Config::default()).unwrap();
        for key in [
            "redis_url",
            "device_code",
            "sandbox.epoch_tick_ms",
            "telemetry.http_endpoint",
            "handlers.echo",
            "agent.token",
            "engines",
        ] {
            assert!(names_a_key(&shape, key), "{key}");
        }
        for key in [
            "device",
            "sandbox.epoch_tick",
            "redis_url.host",
            "nonsense",
            "worker.queues.x",
        ] {
            assert!(!names_a_key(&shape, key), "{key}");
        }
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
    fn a_status_server_beyond_loopback_needs_a_token() {
        let mut config = Config::default();
        config.telemetry.status_addr = "0.0.0.0:9330".parse().unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("telemetry.status_token") && err.contains("0.0.0.0:9330"),
            "{err}"
        );
        config.telemetry.status_token = Some("short".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
        config.telemetry.status_token = Some("a-token-of-24-characters".into());
        config.validate().unwrap();
        // Off, or on loopback, it needs none.
        config.telemetry.status_token = None;
        config.telemetry.status_server = false;
        config.validate().unwrap();
        config.telemetry.status_server = true;
        config.telemetry.status_addr = "[::1]:9330".parse().unwrap();
        config.validate().unwrap();
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

#[cfg(test)]
mod properties {
    //! Whatever the node's TOML file says: a configuration or an error
    //! naming what is wrong, never a panic.

    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|number| number.to_string()),
            any::<bool>().prop_map(|flag| flag.to_string()),
            "[a-z0-9_:/.@ -]{0,24}".prop_map(|text| format!("{text:?}")),
            proptest::collection::vec("[a-z0-9_.]{0,8}", 0..3).prop_map(|items| format!("{items:?}")),
            Just("\"redis://user:pw@[::1\"".to_string()),
            Just("\"rediss+sentinel://,/\"".to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "redis_url",
            "policy",
            "worker.concurrency",
            "worker.queues",
            "worker.block_ms",
            "worker.max_attempts",
            "sandbox.epoch_tick_ms",
            "sandbox.max_memory_mib",
            "telemetry.status_addr",
            "telemetry.status_token",
            "telemetry.heartbeat_ms",
            "redis.ca_file",
            "redis.client_cert_file",
            "monitor.addr",
            "monitor.api_keys",
            "node.id",
            "handlers.echo",
            "nonsense",
        ])
    }

    proptest! {
        #[test]
        fn any_config_file_is_a_config_or_a_named_error(
            text in prop_oneof![
                "(\\PC|\n){0,200}",
                proptest::collection::vec((key(), value()), 0..8).prop_map(|entries| {
                    entries.iter().map(|(key, value)| format!("{key} = {value}\n")).collect::<String>()
                }),
            ],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("citadel.toml");
            std::fs::write(&file, &text).unwrap();
            match Config::load(Some(&file), NoOverrides {}) {
                // What loads is usable as far as Redis goes, or says why not.
                Ok(config) => {
                    if let Err(err) = config.redis() {
                        prop_assert!(err.to_string().contains("redis"), "{err}");
                    }
                }
                Err(err) => prop_assert!(err.to_string().starts_with("invalid"), "{err}"),
            }
        }
    }
}
