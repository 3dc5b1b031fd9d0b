//! Tenant policy: which capabilities and limits each tenant gets.
//!
//! A TOML file maps tenant names to grants (`[tenants.<name>]`), deny by
//! default: a capability not listed is refused. Jobs from tenants the file
//! does not name run under `[tenants.default]`, and when the file has no
//! `default` section, under the built-in one (`log` and `stream`, default
//! limits). Unknown keys and unknown capability names are errors that name
//! them, so a typo can never silently widen or narrow a grant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::capabilities::{Capabilities, Capability};

mod glob;

pub use crate::capabilities::docker::policy::{DockerAction, DockerPolicy};
pub use crate::capabilities::http::policy::HttpPolicy;
pub use crate::capabilities::inference::policy::InferencePolicy;
pub use crate::shell::policy::{ANY_FURTHER_ARGS, ShellDenied, ShellPolicy, ShellRule};
pub use glob::{Glob, first_problem, matches_any};

/// The tenant whose policy applies to tenants a policy does not name.
pub const DEFAULT_TENANT: &str = "default";

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys or values.
    #[error("invalid policy {origin}: {message}")]
    Parse {
        /// The file (or `inline`) the policy came from.
        origin: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid policy {origin}: tenants.{tenant}.{key} {problem}")]
    Invalid {
        /// The file (or `inline`) the policy came from.
        origin: String,
        /// The tenant whose section is wrong.
        tenant: String,
        /// The key that is wrong.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The whole policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    tenants: BTreeMap<String, TenantPolicy>,
}

/// What one tenant may do and use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    /// Capabilities the tenant's handlers may import and call.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Linear memory per job, MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Longest wall-clock time a job may run, ms (a job's own `timeout_ms`
    /// can only shorten it).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most bytes a job may output, streamed chunks and result together.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Largest single chunk, bytes.
    #[serde(default = "default_max_chunk_bytes")]
    pub max_chunk_bytes: u32,
    /// Chunks per second a job may stream (faster emits wait).
    #[serde(default = "default_max_chunks_per_second")]
    pub max_chunks_per_second: u32,
    /// Bytes of log (log records and captured stdout/stderr) kept per job.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u32,
    /// Jobs of this tenant running at once on one node; unset, a fair
    /// share of the node's slots (`crate::dispatch::tenants`).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Whether the tenant's jobs may pin a published component
    /// (`"component": "sha256:…"` in the payload) instead of the job
    /// type's current one.
    #[serde(default)]
    pub allow_pin: bool,
    /// Which engines and models capability `inference` reaches.
    #[serde(default)]
    pub inference: InferencePolicy,
    /// Which containers capability `docker` reaches, and what it may do.
    #[serde(default)]
    pub docker: DockerPolicy,
    /// Where capability `http` may connect, and how much it may fetch.
    #[serde(default)]
    pub http: HttpPolicy,
    /// What `shell_command` jobs may run (nothing by default).
    #[serde(default)]
    pub shell: ShellPolicy,
}

fn default_memory_mib() -> u32 {
    64
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_max_output_bytes() -> u64 {
    1 << 20
}
fn default_max_chunk_bytes() -> u32 {
    64 << 10
}
fn default_max_chunks_per_second() -> u32 {
    1_000
}
fn default_max_log_bytes() -> u32 {
    64 << 10
}

impl Default for TenantPolicy {
    /// The built-in default tenant: `log` and `stream`, default limits.
    fn default() -> Self {
        TenantPolicy {
            capabilities: vec![Capability::Log, Capability::Stream],
            memory_mib: default_memory_mib(),
            timeout_ms: default_timeout_ms(),
            max_output_bytes: default_max_output_bytes(),
            max_chunk_bytes: default_max_chunk_bytes(),
            max_chunks_per_second: default_max_chunks_per_second(),
            max_log_bytes: default_max_log_bytes(),
            max_in_flight: None,
            allow_pin: false,
            inference: InferencePolicy::default(),
            docker: DockerPolicy::default(),
            http: HttpPolicy::default(),
            shell: ShellPolicy::default(),
        }
    }
}

impl TenantPolicy {
    /// The granted capabilities as a set.
    pub fn capability_set(&self) -> Capabilities {
        self.capabilities.iter().copied().collect()
    }

    /// Check the section and compile what the job path matches against
    /// (patterns, egress rules), once.
    fn compile(&mut self, origin: &str, tenant: &str) -> Result<(), PolicyError> {
        let invalid = |key: &'static str, problem: String| PolicyError::Invalid {
            origin: origin.to_string(),
            tenant: tenant.to_string(),
            key,
            problem,
        };
        if self.memory_mib == 0 {
            return Err(invalid("memory_mib", "must be at least 1".into()));
        }
        if self.timeout_ms == 0 {
            return Err(invalid("timeout_ms", "must be at least 1".into()));
        }
        if self.max_chunk_bytes == 0 {
            return Err(invalid("max_chunk_bytes", "must be at least 1".into()));
        }
        if u64::from(self.max_chunk_bytes) > self.max_output_bytes {
            return Err(invalid(
                "max_chunk_bytes",
                format!(
                    "({}) exceeds max_output_bytes ({})",
                    self.max_chunk_bytes, self.max_output_bytes
                ),
            ));
        }
        if self.max_chunks_per_second == 0 {
            return Err(invalid("max_chunks_per_second", "must be at least 1".into()));
        }
        if self.max_in_flight == Some(0) {
            return Err(invalid("max_in_flight", "must be at least 1".into()));
        }
        for (key, patterns) in [
            ("inference.engines", &self.inference.engines),
            ("inference.models", &self.inference.models),
        ] {
            if let Some(problem) = first_problem(patterns) {
                return Err(invalid(key, problem));
            }
        }
        if let Err((key, problem)) = self.docker.validate() {
            return Err(invalid(key, problem));
        }
        if let Err((key, problem)) = self.http.compile() {
            return Err(invalid(key, problem));
        }
        if let Err((key, problem)) = self.shell.validate() {
            return Err(invalid(key, problem));
        }
        if self.http.max_response_bytes == 0 || !(1..=3_600_000).contains(&self.http.timeout_ms) {
            return Err(invalid(
                "http.timeout_ms",
                "http.max_response_bytes must be at least 1 and http.timeout_ms between 1 and 3600000".into(),
            ));
        }
        if self.capabilities.contains(&Capability::Http) && self.http.allowed_hosts.is_empty() {
            tracing::warn!(
                policy = origin,
                tenant,
                "capability http is granted but http.allowed_hosts is empty: every request will be refused"
            );
        }
        Ok(())
    }
}

/// Every tenant's policy, validated.
#[derive(Debug, Clone)]
pub struct Policy {
    tenants: BTreeMap<String, Arc<TenantPolicy>>,
    default: Arc<TenantPolicy>,
}

impl Default for Policy {
    /// Only the built-in default tenant.
    fn default() -> Self {
        Policy {
            tenants: BTreeMap::new(),
            default: Arc::new(TenantPolicy::default()),
        }
    }
}

impl Policy {
    /// Read and validate a policy file.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::from_toml(&text, &path.display().to_string())
    }

    /// Parse and validate policy TOML; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|err| PolicyError::Parse {
            origin: origin.to_string(),
            message: err.to_string(),
        })?;
        let mut tenants = BTreeMap::new();
        for (name, mut tenant) in file.tenants {
            tenant.compile(origin, &name)?;
            tenants.insert(name, Arc::new(tenant));
        }
        let default = tenants
            .remove(DEFAULT_TENANT)
            .unwrap_or_else(|| Arc::new(TenantPolicy::default()));
        Ok(Policy { tenants, default })
    }

    /// The policy that applies to `tenant`, and the name it is known by
    /// (`default` for tenants the policy does not name).
    pub fn tenant(&self, tenant: &str) -> (&str, &Arc<TenantPolicy>) {
        match self.tenants.get_key_value(tenant) {
            Some((name, policy)) => (name.as_str(), policy),
            None => (DEFAULT_TENANT, &self.default),
        }
    }

    /// Every tenant's policy, `default` included.
    pub fn tenants(&self) -> impl Iterator<Item = (&str, &TenantPolicy)> {
        std::iter::once((DEFAULT_TENANT, self.default.as_ref())).chain(
            self.tenants
                .iter()
                .map(|(name, policy)| (name.as_str(), policy.as_ref())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grants_and_fills_defaults() {
        let policy = Policy::from_toml(
            r#"
            [tenants.default]
            capabilities = ["log"]
            [tenants.acme]
            capabilities = ["log", "stream", "inference"]
            memory_mib = 128
            max_in_flight = 2
            "#,
            "test",
        )
        .unwrap();
        let (name, acme) = policy.tenant("acme");
        assert_eq!(name, "acme");
        assert_eq!(acme.memory_mib, 128);
        assert_eq!(acme.timeout_ms, 30_000);
        assert!(acme.capability_set().contains(Capability::Inference));
        let (name, other) = policy.tenant("stranger");
        assert_eq!(name, DEFAULT_TENANT);
        assert_eq!(other.capabilities, vec![Capability::Log]);
    }

    #[test]
    fn missing_default_section_means_builtin_default() {
        let policy = Policy::from_toml("[tenants.acme]\ncapabilities = []\n", "test").unwrap();
        assert_eq!(
            policy.tenant("nobody").1.capabilities,
            vec![Capability::Log, Capability::Stream]
        );
        assert!(policy.tenant("acme").1.capabilities.is_empty());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Policy::from_toml("[tenants.acme]\nmemory_mb = 64\n", "policy.toml").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("memory_mb"), "{message}");
        assert!(message.contains("policy.toml"), "{message}");
        let err = Policy::from_toml("[tenant.acme]\n", "policy.toml").unwrap_err();
        assert!(err.to_string().contains("tenant"), "{err}");
    }

    #[test]
    fn inference_allowlists_are_globs_denying_by_default() {
        let policy = Policy::from_toml(
            "[tenants.acme]\ncapabilities = [\"inference\"]\ninference.models = [\"llama-3.2-*\", \"smollm2\"]\n\
             [tenants.globex]\ncapabilities = [\"inference\"]\ninference.engines = [\"vllm-*\"]\ninference.models = [\"*\"]\n",
            "p",
        )
        .unwrap();
        let acme = &policy.tenant("acme").1.inference;
        assert!(acme.allows_model("llama-3.2-1b") && acme.allows_model("smollm2"));
        assert!(!acme.allows_model("llama-3.1-8b"));
        assert!(acme.allows_engine("anything"), "every engine by default");
        let globex = &policy.tenant("globex").1.inference;
        assert!(globex.allows_engine("vllm-a") && !globex.allows_engine("ollama"));
        assert!(
            !policy.tenant("nobody").1.inference.allows_model("smollm2"),
            "no model by default"
        );
        let err = Policy::from_toml("[tenants.acme]\ninference.models = [\"[oops\"]\n", "p").unwrap_err();
        assert!(err.to_string().contains("tenants.acme.inference.models"), "{err}");
    }

    #[test]
    fn http_grants_are_host_patterns_and_named_addresses() {
        let policy = Policy::from_toml(
            r#"
            [tenants.fetcher]
            capabilities = ["http"]
            http.allowed_hosts = ["https://*.example.com", "http://127.0.0.1:8080"]
            http.allow_addresses = ["127.0.0.1"]
            http.max_response_bytes = 1024
            "#,
            "p",
        )
        .unwrap();
        let http = &policy.tenant("fetcher").1.http;
        assert_eq!((http.max_response_bytes, http.timeout_ms), (1024, 30_000));
        let egress = http.egress();
        assert!(egress.allows_host(crate::capabilities::http::egress::Scheme::Http, "127.0.0.1", 8080));
        assert!(egress.check_address("127.0.0.1".parse().unwrap()).is_ok());
        let default = policy.tenant("nobody").1.http.egress();
        assert!(
            !default.allows_host(crate::capabilities::http::egress::Scheme::Https, "a.example.com", 443),
            "deny by default"
        );
        for (line, key) in [
            ("http.allowed_hosts = [\"example.com\"]", "tenants.t.http.allowed_hosts"),
            (
                "http.allow_addresses = [\"not-an-ip\"]",
                "tenants.t.http.allow_addresses",
            ),
        ] {
            let err = Policy::from_toml(&format!("[tenants.t]\n{line}\n"), "p")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn docker_grants_are_name_globs_or_labels_and_read_only_by_default() {
        let policy = Policy::from_toml(
            r#"
            [tenants.acme]
            capabilities = ["docker"]
            docker.containers = ["vllm", "llama-*"]
            docker.labels = ["citadel.tenant=acme", "acme.owned"]
            docker.actions = ["list", "inspect", "logs", "restart"]
            [tenants.reader]
            capabilities = ["docker"]
            [tenants.reader.docker]
            containers = ["*"]
            "#,
            "p",
        )
        .unwrap();
        let acme = &policy.tenant("acme").1.docker;
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let none = labels(&[]);
        assert!(acme.allows_container("vllm", &none) && acme.allows_container("llama-3b", &none));
        assert!(!acme.allows_container("vllm-2", &none) && !acme.allows_container("redis", &none));
        assert!(acme.allows_container("redis", &labels(&[("citadel.tenant", "acme")])));
        assert!(!acme.allows_container("redis", &labels(&[("citadel.tenant", "globex")])));
        assert!(acme.allows_container("redis", &labels(&[("acme.owned", "")])));
        assert!(acme.allows_container("redis", &labels(&[("other", "x"), ("acme.owned", "anything")])));
        assert!(
            !acme.allows_container("redis", &labels(&[("citadel.tenant=acme", "")])),
            "a label is a key and a value"
        );
        assert!(acme.allows_action(DockerAction::Restart) && !acme.allows_action(DockerAction::Stop));

        let reader = &policy.tenant("reader").1.docker;
        assert!(reader.allows_name("anything"));
        for action in DockerAction::ALL {
            assert_eq!(reader.allows_action(action), !action.mutates(), "{action}");
        }
        let default = &policy.tenant("nobody").1.docker;
        assert!(
            !default.allows_container("vllm", &labels(&[("citadel.tenant", "acme")])),
            "no container by default"
        );
    }

    #[test]
    fn docker_mistakes_name_the_key() {
        for (toml, key, what) in [
            (
                "docker.actions = [\"list\", \"exec\"]",
                "tenants.acme.docker.actions",
                "\"exec\"",
            ),
            (
                "[tenants.acme.docker]\nactions = [\"create\"]",
                "tenants.acme.docker.actions",
                "\"create\"",
            ),
            (
                "docker.containers = [\"[oops\"]",
                "tenants.acme.docker.containers",
                "[oops",
            ),
            ("docker.labels = [\"=acme\"]", "tenants.acme.docker.labels", "=acme"),
        ] {
            let err = Policy::from_toml(&format!("[tenants.acme]\n{toml}\n"), "p").unwrap_err();
            let message = err.to_string();
            assert!(message.contains(key) && message.contains(what), "{message}");
        }
        let err = Policy::from_toml("[tenants.acme]\ndocker.images = [\"x\"]\n", "p").unwrap_err();
        assert!(err.to_string().contains("images"), "{err}");
    }

    #[test]
    fn unknown_capability_is_named() {
        let err = Policy::from_toml("[tenants.acme]\ncapabilities = [\"log\", \"root\"]\n", "p").unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
    }

    #[test]
    fn out_of_range_value_names_tenant_and_key() {
        let err = Policy::from_toml("[tenants.acme]\nmemory_mib = 0\n", "p").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid policy p: tenants.acme.memory_mib must be at least 1"
        );
    }
}

#[cfg(test)]
mod properties {
    //! Whatever an operator (or a template gone wrong) writes: any text and
    //! any TOML made of the policy's own keys with values of any type is a
    //! policy or an error naming the file, never a panic.

    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|number| number.to_string()),
            any::<u64>().prop_map(|number| number.to_string()),
            any::<bool>().prop_map(|flag| flag.to_string()),
            "[a-z_*.:/ -]{0,16}".prop_map(|text| format!("{text:?}")),
            proptest::collection::vec("[a-z_*.:/-]{0,10}", 0..4).prop_map(|items| format!("{items:?}")),
            Just("{ }".to_string()),
            Just("1e999".to_string()),
            Just("-0".to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "capabilities",
            "memory_mib",
            "timeout_ms",
            "max_output_bytes",
            "max_chunk_bytes",
            "max_chunks_per_second",
            "max_log_bytes",
            "max_in_flight",
            "allow_pin",
            "inference.models",
            "inference.max_tokens",
            "http.allow",
            "http.deny",
            "docker.actions",
            "docker.containers",
            "shell.run_as",
            "unknown_key",
        ])
    }

    proptest! {
        #[test]
        fn any_text_is_a_policy_or_a_named_error(text in "(\\PC|\n){0,300}") {
            if let Err(err) = Policy::from_toml(&text, "fuzz.toml") {
                prop_assert!(err.to_string().contains("fuzz.toml"), "{err}");
            }
        }

        #[test]
        fn any_policy_shaped_toml_is_a_policy_or_a_named_error(
            tenants in proptest::collection::vec(
                ("[a-z*]{0,8}", proptest::collection::vec((key(), value()), 0..6)),
                0..4,
            ),
        ) {
            let mut text = String::new();
            for (tenant, entries) in &tenants {
                text.push_str(&format!("[tenants.{tenant:?}]\n"));
                for (key, value) in entries {
                    text.push_str(&format!("{key} = {value}\n"));
                }
            }
            if let Err(err) = Policy::from_toml(&text, "fuzz.toml") {
                prop_assert!(err.to_string().contains("fuzz.toml"), "{err}");
            }
        }
    }
}
