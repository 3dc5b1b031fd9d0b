//! `citadel init`: zero-touch onboarding, as Citadel does it. The node
//! asks the control plane for a device code (OAuth 2.0 Device Authorization
//! Grant, RFC 8628), prints the user code and where to enter it (and one
//! plain `citadel-device-authorization key=value…` line a script can
//! parse), polls until the user approves, keeps the credential in the state
//! directory (0600), and publishes the node's first status — on
//! `node:status:stream` with `deviceCode`, and to the HTTP status endpoint
//! when one is configured — so the control plane can match the node to the
//! user's onboarding session and push its device configuration. `citadel
//! work`, `agent` and `up` pick the credential up from then on.

use std::time::{Duration, SystemTime};

use citadel_collector::status::NodeMode;
use citadel_transports::device_auth::{DeviceAuthClient, DeviceAuthConfig, DeviceAuthError, DeviceCode, Poll};
use citadel_transports::status::{NodeState, RedisStatusPublisher};
use citadel_transports::wire;
use clap::Args;
use serde::Serialize;

use super::{Failure, output};
use crate::config::{Config, Credential, CredentialStore};

/// Arguments of `citadel init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The control plane (`auth.url`).
    #[arg(long, value_name = "URL")]
    pub auth_url: Option<String>,
    /// Redis, for the node's first status (`redis_url`).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Node id (`node.id`).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Authorize again even when the node already has a credential.
    #[arg(long)]
    pub force: bool,
}

#[derive(Serialize)]
struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    auth: AuthOverrides,
    node: super::node::NodeKeys,
}

#[derive(Serialize)]
struct AuthOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

impl InitArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        Overrides {
            redis_url: self.redis_url.clone(),
            auth: AuthOverrides {
                url: self.auth_url.clone(),
            },
            node: super::node::NodeKeys {
                id: self.node_id.clone(),
            },
        }
    }
}

pub(super) async fn init(args: InitArgs, config: &Config) -> Result<(), Failure> {
    let store = CredentialStore::new(&config.state_dir());
    let existing = match store.load() {
        Ok(existing) => existing,
        Err(_) if args.force => None,
        Err(err) => return Err(Failure::input(err)),
    };
    let config = match existing {
        Some(credential) if !args.force => {
            output::line(format!(
                "this node already has a credential ({}, granted {} to node {}); `citadel init --force` authorizes it again",
                store.path().display(),
                credential.issued_at,
                credential.node_id
            ));
            config.clone()
        }
        _ => {
            let credential = authorize(config).await?;
            store.save(&credential).map_err(|err| {
                Failure::job(format!(
                    "approved, but the credential cannot be kept in {}: {err} (node.state_dir)",
                    store.path().display()
                ))
            })?;
            output::line(format!(
                "approved: the node's credential is in {} (readable by its owner only)",
                store.path().display()
            ));
            let mut config = config.clone();
            config.device_code = Some(credential.device_code.clone());
            config.apply_credential(&credential);
            config
        }
    };
    publish_first_status(&config).await?;
    output::line("next: `citadel up` (services and the Nexus agent) or `citadel work` (Redis workers)");
    Ok(())
}

/// Steps 1 and 2 of the device flow: the code, the user's approval.
async fn authorize(config: &Config) -> Result<Credential, Failure> {
    let (device_authorization_url, token_url) = config.auth.endpoints().ok_or_else(|| {
        Failure::input("no control plane to authorize with: give --auth-url or set auth.url (or auth.device_authorization_url and auth.token_url)")
    })?;
    let client = DeviceAuthClient::new(DeviceAuthConfig {
        device_authorization_url,
        token_url: token_url.clone(),
        client_id: config.auth.client_id.clone(),
        scopes: config.auth.scopes.clone(),
        request_timeout: Duration::from_millis(config.auth.request_timeout_ms),
    })
    .map_err(Failure::input)?;
    let code = client.request_code().await.map_err(Failure::job)?;
    show(&code);
    let interval = std::cell::Cell::new(code.interval);
    let granted = client
        .wait_for_approval(&code, |poll| match poll {
            Poll::Pending => {}
            Poll::SlowDown => {
                interval.set(interval.get() + Duration::from_secs(5));
                output::line(format!(
                    "the control plane asked for slower polling: asking every {} s",
                    interval.get().as_secs()
                ));
            }
            Poll::Trouble => tracing::warn!("the token endpoint did not answer as expected; asking again"),
        })
        .await
        .map_err(|err| match err {
            DeviceAuthError::BadUrl { .. } => Failure::input(err),
            other => Failure::job(other),
        })?;
    let now = SystemTime::now();
    Ok(Credential {
        node_id: config.node_id(),
        device_code: code.device_code,
        access_token: granted.access_token,
        token_type: granted.token_type,
        refresh_token: granted.refresh_token,
        expires_at: granted.expires_in.map(|lasts| wire::timestamp(now + lasts)),
        scopes: granted.scopes,
        issued_at: wire::timestamp(now),
        token_url,
    })
}

/// What the user must do, for people and for scripts.
fn show(code: &DeviceCode) {
    let minutes = code.expires_in.as_secs().div_ceil(60);
    output::line(format!(
        "To add this node, open {} and enter the code {} (it expires in {minutes} min).",
        code.verification_uri, code.user_code
    ));
    if let Some(complete) = &code.verification_uri_complete {
        output::line(format!("Or open {complete}"));
    }
    let mut line = format!(
        "citadel-device-authorization user_code={} verification_uri={} expires_in={}",
        code.user_code,
        code.verification_uri,
        code.expires_in.as_secs()
    );
    if let Some(complete) = &code.verification_uri_complete {
        line.push_str(&format!(" verification_uri_complete={complete}"));
    }
    output::line(line);
    output::line(format!(
        "Waiting for approval (asking every {} s)…",
        code.interval.as_secs()
    ));
}

/// The node's first status, with its device code, wherever it reports.
async fn publish_first_status(config: &Config) -> Result<(), Failure> {
    let redis = config.redis().map_err(|err| Failure::input(err.to_string()))?;
    let endpoint = config.telemetry.http_endpoint_for(&config.node_id());
    if redis.is_none() && endpoint.is_none() {
        output::line(
            "no redis_url or telemetry.http_endpoint: the node's status goes out when `citadel up` or `citadel work` runs",
        );
        return Ok(());
    }
    let snapshot = super::status::local_snapshot(config, NodeMode::Init).await;
    let status = serde_json::to_string(&snapshot).expect("a status message serializes");
    if let Some(redis) = redis {
        let publisher = RedisStatusPublisher::new(
            redis.command_connection(),
            &config.node_id(),
            config.device_code.clone(),
            config.telemetry.status_stream_maxlen,
        );
        publisher
            .publish(&status, NodeState::Online, &[])
            .await
            .map_err(|err| {
                Failure::job(format!(
                    "cannot publish the node's first status: {}",
                    redis.explain(&err)
                ))
            })?;
        output::line(format!(
            "published the node's first status on {} (deviceCode included)",
            wire::NODE_STATUS_STREAM
        ));
    }
    if let Some(endpoint) = endpoint {
        let client = citadel_transports::http::client(Duration::from_millis(config.telemetry.http_timeout_ms))
            .map_err(Failure::input)?;
        let mut request = client
            .post(&endpoint)
            .header("content-type", "application/json")
            .body(status);
        if let Some(token) = &config.telemetry.http_token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                output::line(format!("sent the node's first status to {endpoint}"))
            }
            Ok(response) => output::line(format!(
                "the status endpoint {endpoint} answered {}: the node reports there again when it runs",
                response.status()
            )),
            Err(err) => output::line(format!(
                "cannot reach the status endpoint {endpoint} ({err}): the node reports there again when it runs"
            )),
        }
    }
    Ok(())
}
