//! `[auth]`: the control plane `citadel init` authorizes the node with
//! (OAuth 2.0 Device Authorization Grant, RFC 8628).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Device authorization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The control plane (`https://api.example`); the endpoints below
    /// default to paths under it.
    pub url: Option<String>,
    /// The device authorization endpoint; default `<url>/oauth/device/code`.
    pub device_authorization_url: Option<String>,
    /// The token endpoint; default `<url>/oauth/token`.
    pub token_url: Option<String>,
    /// This node's client id at the control plane.
    pub client_id: String,
    /// Scopes asked for (none: the server's default).
    pub scopes: Vec<String>,
    /// Longest one request may take, ms.
    pub request_timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            url: None,
            device_authorization_url: None,
            token_url: None,
            client_id: "citadel".into(),
            scopes: Vec::new(),
            request_timeout_ms: 10_000,
        }
    }
}

impl AuthConfig {
    /// The device authorization and token endpoints, when configured.
    pub fn endpoints(&self) -> Option<(String, String)> {
        let base = self.url.as_deref().map(|url| url.trim_end_matches('/'));
        let endpoint = |explicit: &Option<String>, path: &str| {
            explicit.clone().or_else(|| base.map(|base| format!("{base}{path}")))
        };
        Some((
            endpoint(&self.device_authorization_url, "/oauth/device/code")?,
            endpoint(&self.token_url, "/oauth/token")?,
        ))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String| Err(ConfigError::Invalid { key, problem });
        for (key, url) in [
            ("auth.url", &self.url),
            ("auth.device_authorization_url", &self.device_authorization_url),
            ("auth.token_url", &self.token_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return invalid(key, format!("{url:?} must be an http:// or https:// URL"));
            }
        }
        if self.client_id.trim().is_empty() {
            return invalid("auth.client_id", "must not be empty".into());
        }
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            return invalid(
                "auth.request_timeout_ms",
                format!("must be between 100 and 600000, got {}", self.request_timeout_ms),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_under_the_control_plane() {
        let mut auth = AuthConfig::default();
        assert_eq!(auth.endpoints(), None);
        auth.url = Some("https://api.example/".into());
        assert_eq!(
            auth.endpoints(),
            Some((
                "https://api.example/oauth/device/code".into(),
                "https://api.example/oauth/token".into()
            ))
        );
        auth.token_url = Some("https://login.example/token".into());
        assert_eq!(auth.endpoints().unwrap().1, "https://login.example/token");
        auth.url = Some("api.example".into());
        assert!(auth.validate().unwrap_err().to_string().contains("auth.url"));
    }
}
