//! The one outbound HTTP client setup: `reqwest` over rustls with the `ring`
//! provider and the platform's trust store.

use std::time::Duration;

/// A client with `timeout` per request.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    // Installing fails when a provider is already installed: that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("citadel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {err}"))
}
