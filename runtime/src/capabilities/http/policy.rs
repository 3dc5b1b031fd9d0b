//! `[tenants.<name>.http]`: where capability `http` may connect and how
//! much it may fetch (the rules themselves: `crate::capabilities::http::egress`).

use std::sync::Arc;

use serde::Deserialize;

use super::egress::Egress;

/// `[tenants.<name>.http]`: outbound HTTP (see [`super::egress`]). Deny by
/// default: no host is allowed until `allowed_hosts` names it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPolicy {
    /// `scheme://host[:port]` patterns (`https://*.example.com`,
    /// `http://10.0.0.5:8080`, `https://api.test:*`); none by default.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Loopback, private, link-local … addresses (or CIDR ranges) requests
    /// may reach after all; none by default.
    #[serde(default)]
    pub allow_addresses: Vec<String>,
    /// Largest response body, bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Longest wait to connect, for the first byte, and between bytes, ms.
    #[serde(default = "default_http_timeout_ms")]
    pub timeout_ms: u64,
    /// `allowed_hosts` and `allow_addresses`, compiled by [`HttpPolicy::compile`]
    /// when the policy is read.
    #[serde(skip)]
    compiled: Arc<Egress>,
}

fn default_max_response_bytes() -> u64 {
    64 << 20
}

fn default_http_timeout_ms() -> u64 {
    30_000
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            allowed_hosts: Vec::new(),
            allow_addresses: Vec::new(),
            max_response_bytes: default_max_response_bytes(),
            timeout_ms: default_http_timeout_ms(),
            compiled: Arc::default(),
        }
    }
}

impl HttpPolicy {
    /// Compile the host patterns and addresses; the key and problem of the
    /// first mistake.
    pub(crate) fn compile(&mut self) -> Result<(), (&'static str, String)> {
        self.compiled = Arc::new(Egress::parse(&self.allowed_hosts, &self.allow_addresses)?);
        Ok(())
    }

    /// The compiled rules (none allowed before [`HttpPolicy::compile`]).
    pub fn egress(&self) -> Arc<Egress> {
        Arc::clone(&self.compiled)
    }
}
