//! Node configuration: one TOML file (`--config`), overridden by `CITADEL_*`
//! environment variables, overridden by command-line flags; validated once,
//! before anything starts, with errors that name the key.
//!
//! Environment variables address keys by path: `CITADEL_SANDBOX__EPOCH_TICK_MS`
//! is `sandbox.epoch_tick_ms`, `CITADEL_POLICY` is `policy`. Later subsystems
//! add their own sections (`[[engines]]`, `[[services]]`, ...) here.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, PolicyError};

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
    /// The wasmtime sandbox.
    pub sandbox: SandboxConfig,
}

/// Engine-wide sandbox settings (per-tenant limits live in the policy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// How often the epoch ticker interrupts running guests to check their
    /// deadline and let other jobs run, ms.
    pub epoch_tick_ms: u64,
    /// Component instances that can exist at once (pooling allocator slots).
    pub max_instances: u32,
    /// Largest linear memory any tenant may be given, MiB: the size of a
    /// pooling slot. Every tenant's `memory_mib` must fit in it.
    pub max_memory_mib: u32,
    /// Wasm stack per job, KiB; deeper recursion traps as a stack overflow.
    pub max_wasm_stack_kib: u32,
    /// Where compiled components are cached (`{digest}-{engine}.cwasm`);
    /// `none` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            epoch_tick_ms: 5,
            max_instances: 64,
            max_memory_mib: 512,
            max_wasm_stack_kib: 512,
            cache_dir: default_cache_dir(),
        }
    }
}

/// `$XDG_CACHE_HOME/citadel/components`, else `~/.cache/citadel/components`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("citadel").join("components"))
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
        let config: Config = figment
            .merge(Env::prefixed("CITADEL_").split("__").ignore(NON_KEY_ENV))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|err| ConfigError::Load(err.to_string()))?;
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
        Ok(())
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
                sandbox: Partial { max_instances: 3 },
            },
        )
        .unwrap();
        assert_eq!(config.sandbox.epoch_tick_ms, 7);
        assert_eq!(config.sandbox.max_instances, 3);
        assert_eq!(config.sandbox.max_memory_mib, SandboxConfig::default().max_memory_mib);
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
