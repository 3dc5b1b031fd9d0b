//! Device authorization against the control plane: the OAuth 2.0 Device
//! Authorization Grant (RFC 8628), through the `oauth2` crate over the
//! node's own HTTP client. `citadel init` asks the device authorization
//! endpoint for a code, shows the user code and where to enter it, then
//! polls the token endpoint: every `interval` (5 s when the server names
//! none), 5 s slower after each `slow_down`, until a token arrives, the user
//! refuses (`access_denied`) or the code expires (`expired_token`, or its
//! `expires_in` passes). A poll that cannot reach the server is retried
//! with a growing pause, up to [`MAX_POLL_BACKOFF`].

use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, ClientId, DeviceAuthorizationUrl, DeviceCodeErrorResponseType, RequestTokenError, Scope,
    StandardDeviceAuthorizationResponse, TokenResponse, TokenUrl,
};

/// Longest pause between polls while the token endpoint does not answer.
pub const MAX_POLL_BACKOFF: Duration = Duration::from_secs(60);

/// Where and as whom to ask.
#[derive(Debug, Clone)]
pub struct DeviceAuthConfig {
    /// The device authorization endpoint (`POST`, form `client_id`, `scope`).
    pub device_authorization_url: String,
    /// The token endpoint.
    pub token_url: String,
    /// This client's id at the control plane.
    pub client_id: String,
    /// Scopes asked for (none: the server's default).
    pub scopes: Vec<String>,
    /// Longest one request may take.
    pub request_timeout: Duration,
}

/// What the user must do, and what the node polls with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCode {
    /// The code the node polls with (secret to the node; carried in its
    /// status as `deviceCode` so the control plane can match it to the
    /// user's session).
    pub device_code: String,
    /// The code the user enters.
    pub user_code: String,
    /// Where the user enters it.
    pub verification_uri: String,
    /// The same with the code filled in, when the server gives one.
    pub verification_uri_complete: Option<String>,
    /// How long the codes are valid.
    pub expires_in: Duration,
    /// The pause between polls the server asks for.
    pub interval: Duration,
}

/// The credential the control plane grants the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The bearer token.
    pub access_token: String,
    /// Its type (`bearer`).
    pub token_type: String,
    /// A refresh token, when granted one.
    pub refresh_token: Option<String>,
    /// How long the access token lasts, when the server says.
    pub expires_in: Option<Duration>,
    /// Scopes granted, when the server says.
    pub scopes: Vec<String>,
}

/// Why authorization did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DeviceAuthError {
    /// An endpoint URL is malformed.
    #[error("{what} {url:?} is not a URL: {detail}")]
    BadUrl {
        /// Which endpoint.
        what: &'static str,
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The user refused the request.
    #[error("the request was refused at the verification page (access_denied): nothing was stored")]
    Denied,
    /// The codes expired before the user approved them.
    #[error("the code expired before it was approved (expired_token): run `citadel init` again")]
    Expired,
    /// The server answered with another OAuth error.
    #[error("the control plane refused: {0}")]
    Refused(String),
    /// The server could not be reached, or answered something unusable.
    #[error("cannot talk to the control plane: {0}")]
    Transport(String),
}

/// A device authorization client.
pub struct DeviceAuthClient {
    config: DeviceAuthConfig,
    http: reqwest::Client,
}

/// One step of the polling, for the caller's progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// The user has not approved yet.
    Pending,
    /// The server asked the node to poll more slowly.
    SlowDown,
    /// The server could not be reached or answered something else.
    Trouble,
}

impl DeviceAuthClient {
    /// A client for `config`.
    pub fn new(config: DeviceAuthConfig) -> Result<DeviceAuthClient, DeviceAuthError> {
        for (what, url) in [
            ("the device authorization URL", &config.device_authorization_url),
            ("the token URL", &config.token_url),
        ] {
            reqwest::Url::parse(url).map_err(|err| DeviceAuthError::BadUrl {
                what,
                url: url.clone(),
                detail: err.to_string(),
            })?;
        }
        let http = crate::http::client(config.request_timeout).map_err(DeviceAuthError::Transport)?;
        Ok(DeviceAuthClient { config, http })
    }

    /// Ask for a device code (step 1).
    pub async fn request_code(&self) -> Result<DeviceCode, DeviceAuthError> {
        let response = self.request_raw().await?;
        Ok(DeviceCode {
            device_code: response.device_code().secret().clone(),
            user_code: response.user_code().secret().clone(),
            verification_uri: response.verification_uri().to_string(),
            verification_uri_complete: response.verification_uri_complete().map(|uri| uri.secret().clone()),
            expires_in: response.expires_in(),
            interval: response.interval(),
        })
    }

    async fn request_raw(&self) -> Result<StandardDeviceAuthorizationResponse, DeviceAuthError> {
        let url = DeviceAuthorizationUrl::new(self.config.device_authorization_url.clone()).map_err(|err| {
            DeviceAuthError::BadUrl {
                what: "the device authorization URL",
                url: self.config.device_authorization_url.clone(),
                detail: err.to_string(),
            }
        })?;
        let client = BasicClient::new(ClientId::new(self.config.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_device_authorization_url(url);
        let http = |request| send(&self.http, request, |_| {});
        client
            .exchange_device_code()
            .add_scopes(self.config.scopes.iter().cloned().map(Scope::new))
            .request_async(&http)
            .await
            .map_err(|err| describe(err, "the device authorization endpoint"))
    }

    /// Poll the token endpoint until the user approves `code` (step 2),
    /// telling `progress` about each unanswered poll.
    pub async fn wait_for_approval(
        &self,
        code: &DeviceCode,
        progress: impl Fn(Poll),
    ) -> Result<Granted, DeviceAuthError> {
        let token_url = TokenUrl::new(self.config.token_url.clone()).map_err(|err| DeviceAuthError::BadUrl {
            what: "the token URL",
            url: self.config.token_url.clone(),
            detail: err.to_string(),
        })?;
        let client = BasicClient::new(ClientId::new(self.config.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(token_url);
        let details: StandardDeviceAuthorizationResponse = serde_json::from_value(serde_json::json!({
            "device_code": code.device_code,
            "user_code": code.user_code,
            "verification_uri": code.verification_uri,
            "expires_in": code.expires_in.as_secs(),
            "interval": code.interval.as_secs(),
        }))
        .map_err(|err| DeviceAuthError::Transport(format!("device code: {err}")))?;
        let http = |request| send(&self.http, request, &progress);
        let token = client
            .exchange_device_access_token(&details)
            .set_max_backoff_interval(MAX_POLL_BACKOFF)
            .request_async(&http, tokio::time::sleep, Some(code.expires_in))
            .await
            .map_err(|err| match err {
                RequestTokenError::ServerResponse(response) => match response.error() {
                    DeviceCodeErrorResponseType::AccessDenied => DeviceAuthError::Denied,
                    DeviceCodeErrorResponseType::ExpiredToken => DeviceAuthError::Expired,
                    _ => DeviceAuthError::Refused(response.to_string()),
                },
                other => describe(other, "the token endpoint"),
            })?;
        Ok(Granted {
            access_token: token.access_token().secret().clone(),
            token_type: token.token_type().as_ref().to_string(),
            refresh_token: token.refresh_token().map(|token| token.secret().clone()),
            expires_in: token.expires_in(),
            scopes: token
                .scopes()
                .map(|scopes| scopes.iter().map(|scope| scope.to_string()).collect())
                .unwrap_or_default(),
        })
    }
}

/// An OAuth error of `what` (not the device-flow specific ones) in words.
fn describe<RE: std::error::Error, TE: oauth2::ErrorResponse>(
    err: RequestTokenError<RE, TE>,
    what: &str,
) -> DeviceAuthError {
    match err {
        RequestTokenError::ServerResponse(response) => DeviceAuthError::Refused(response.to_string()),
        RequestTokenError::Request(err) => DeviceAuthError::Transport(format!("{what}: {err}")),
        RequestTokenError::Parse(err, body) => DeviceAuthError::Transport(format!(
            "{what} answered something that is not an OAuth response ({err}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
        RequestTokenError::Other(err) => DeviceAuthError::Transport(format!("{what}: {err}")),
    }
}

/// Send one OAuth request with the node's HTTP client; tell `progress` what
/// a 4xx `error` answer or a failure means for the polling.
async fn send(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
    progress: impl Fn(Poll),
) -> Result<oauth2::HttpResponse, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let sent = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            progress(Poll::Trouble);
            return Err(err);
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await?.to_vec();
    if !status.is_success() {
        let error = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value["error"].as_str().map(String::from));
        progress(match error.as_deref() {
            Some("authorization_pending") => Poll::Pending,
            Some("slow_down") => Poll::SlowDown,
            _ => Poll::Trouble,
        });
    }
    let mut answer = http::Response::builder().status(status);
    if let Some(map) = answer.headers_mut() {
        *map = headers;
    }
    Ok(answer
        .body(body)
        .expect("a status and headers from a response are valid"))
}
