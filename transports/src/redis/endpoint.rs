//! Where the node's Redis is and how to reach it safely: `redis_url` with the
//! `[redis]` settings beside it (the TLS files a managed Redis asks for),
//! turned into one [`Endpoint`] that every connection of the process comes
//! from; the URL as it may be shown (password removed) in errors, logs and
//! status; and the start-up check that tells configuration to fix (a
//! refused password, an untrusted certificate: the process stops, naming
//! the key) from a Redis that is not up yet (the process waits for it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{Client, ClientTlsConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, TlsCertificates};
use serde::{Deserialize, Serialize};

use super::Connection;
use super::sentinel::{SentinelUrl, Sentinels};

/// How long a command may wait for its reply before the connection is
/// considered broken.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a connection to be established (TLS handshake
/// included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The `[redis]` settings beside `redis_url`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// PEM file of the certificate authorities that sign the server's
    /// certificate (`rediss://` only); the system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate (chain) this node presents, for a Redis that checks
    /// clients (`tls-auth-clients yes`); with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

/// `redis_url` and `[redis]` do not describe a usable Redis.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL does not parse, or asks for what citadel refuses.
    #[error("invalid redis_url {url}: {reason}")]
    Url {
        /// The URL, password removed.
        url: ShownUrl,
        /// Why.
        reason: String,
    },
    /// A TLS file is set for a plaintext URL: TLS would silently not happen.
    #[error("redis.{key} is set but redis_url {url} is plaintext: use rediss:// for TLS, or remove redis.{key}")]
    NotTls {
        /// The `[redis]` key.
        key: &'static str,
        /// The URL, password removed.
        url: ShownUrl,
    },
    /// One of the client certificate and its key is set without the other.
    #[error("redis.{set} is set without redis.{missing}: give both (the certificate and its private key) or neither")]
    HalfAPair {
        /// The key that is set.
        set: &'static str,
        /// The key that is missing.
        missing: &'static str,
    },
    /// A TLS file cannot be read.
    #[error("cannot read redis.{key} {}: {source}", path.display())]
    File {
        /// The `[redis]` key.
        key: &'static str,
        /// Its value.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS files do not hold usable PEM certificates or key.
    #[error("unusable TLS files (redis.ca_file, redis.client_cert_file, redis.client_key_file): {0}")]
    Certificates(RedisError),
}

/// Redis refused this process for a reason that waiting will not fix.
#[derive(Debug, thiserror::Error)]
#[error("Redis at {url} refused this node: {reason} (check {key})")]
pub struct Refused {
    /// The URL, password removed.
    pub url: ShownUrl,
    /// The setting to fix.
    pub key: &'static str,
    /// What Redis or the TLS handshake said.
    pub reason: String,
}

/// A Redis URL as it may be shown: any password is replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownUrl(String);

impl ShownUrl {
    /// `url` with its password (user info or `pass=` query) removed. Taken
    /// apart by hand, not parsed: a URL too broken to parse must not show
    /// its password either.
    pub fn of(url: &str) -> ShownUrl {
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, url),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("{userinfo}@{host}"),
            },
            None => authority.to_string(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let pairs: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((key, _)) if matches!(key, "pass" | "password") => format!("{key}=***"),
                        _ => pair.to_string(),
                    })
                    .collect();
                format!("{path}?{}", pairs.join("&"))
            }
            None => tail.to_string(),
        };
        ShownUrl(match scheme {
            Some(scheme) => format!("{scheme}://{authority}{tail}"),
            None => format!("{authority}{tail}"),
        })
    }
}

impl fmt::Display for ShownUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One Redis, as configured: every connection of the process is made from
/// it. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    target: Target,
    shown: ShownUrl,
    tls: bool,
    ca_file: bool,
    client_cert: bool,
}

/// Where the master is.
#[derive(Clone)]
enum Target {
    /// One server (boxed: a client is large, the endpoint is cloned).
    Fixed(Box<Client>),
    /// Whichever server the Sentinels name.
    Sentinel { sentinels: Arc<Sentinels>, db: i64 },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The Redis of `url` (`redis://[user:password@]host:port/db`,
    /// `rediss://…` for TLS, `redis+unix:///path`, or the master of a
    /// Sentinel service: `redis+sentinel://[user:password@]host:port,…/service[/db]`,
    /// `rediss+sentinel://…`) with `settings`. Checks the URL and reads the
    /// TLS files; connects to nothing.
    pub fn open(url: &str, settings: &RedisSettings) -> Result<Endpoint, EndpointError> {
        let shown = ShownUrl::of(url);
        let invalid = |reason: String| EndpointError::Url {
            url: shown.clone(),
            reason,
        };
        let address = match SentinelUrl::parse(url) {
            Some(sentinel) => Address::Sentinel(sentinel.map_err(invalid)?),
            None => Address::Fixed(url.into_connection_info().map_err(|err| invalid(err.to_string()))?),
        };
        let tls = match &address {
            Address::Sentinel(sentinel) => sentinel.tls,
            Address::Fixed(info) => match info.addr() {
                ConnectionAddr::TcpTls { insecure: true, .. } => {
                    return Err(invalid(
                        "#insecure turns off the server's certificate check, which citadel does not do: \
                         give the CA that signed it as redis.ca_file"
                            .into(),
                    ));
                }
                ConnectionAddr::TcpTls { .. } => true,
                _ => false,
            },
        };
        let files = [
            ("ca_file", &settings.ca_file),
            ("client_cert_file", &settings.client_cert_file),
            ("client_key_file", &settings.client_key_file),
        ];
        if !tls && let Some((key, _)) = files.iter().find(|(_, file)| file.is_some()) {
            return Err(EndpointError::NotTls { key, url: shown });
        }
        let certificates = if tls {
            let read = |key: &'static str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, EndpointError> {
                path.as_deref().map(|path| read_file(key, path)).transpose()
            };
            let client_tls = match (
                read("client_cert_file", &settings.client_cert_file)?,
                read("client_key_file", &settings.client_key_file)?,
            ) {
                (Some(client_cert), Some(client_key)) => Some(ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(EndpointError::HalfAPair {
                        set: "client_cert_file",
                        missing: "client_key_file",
                    });
                }
                (None, Some(_)) => {
                    return Err(EndpointError::HalfAPair {
                        set: "client_key_file",
                        missing: "client_cert_file",
                    });
                }
            };
            install_crypto_provider();
            Some(TlsCertificates {
                client_tls,
                root_cert: read("ca_file", &settings.ca_file)?,
            })
        } else {
            None
        };
        let target = match (address, certificates) {
            (Address::Fixed(info), Some(certificates)) => Target::Fixed(Box::new(
                Client::build_with_tls(info, certificates).map_err(EndpointError::Certificates)?,
            )),
            (Address::Fixed(info), None) => {
                Target::Fixed(Box::new(Client::open(info).map_err(|err| invalid(err.to_string()))?))
            }
            (Address::Sentinel(sentinel), certificates) => {
                let lookup = sentinel.client(certificates).map_err(|err| invalid(err.to_string()))?;
                Target::Sentinel {
                    sentinels: Arc::new(Sentinels::new(lookup)),
                    db: sentinel.db,
                }
            }
        };
        Ok(Endpoint {
            target,
            shown,
            tls,
            ca_file: settings.ca_file.is_some(),
            client_cert: settings.client_cert_file.is_some(),
        })
    }

    /// The URL as it may be shown (no password).
    pub fn shown_url(&self) -> &ShownUrl {
        &self.shown
    }

    /// A client of the server that is the master now.
    async fn master(&self) -> Result<Client, RedisError> {
        match &self.target {
            Target::Fixed(client) => Ok(Client::clone(client)),
            Target::Sentinel { sentinels, .. } => sentinels.master().await,
        }
    }

    /// A Pub/Sub connection of its own (a subscription holds it), to the
    /// master of now.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, RedisError> {
        self.master().await?.get_async_pubsub().await
    }

    /// A reconnecting connection for ordinary commands. Lazy: it connects on
    /// first use, so a node can start before Redis does.
    pub fn command_connection(&self) -> Connection {
        self.connection(COMMAND_TIMEOUT)
    }

    /// A reconnecting connection for blocking reads of up to `block`.
    pub fn blocking_connection(&self, block: Duration) -> Connection {
        self.connection(block + COMMAND_TIMEOUT)
    }

    fn connection(&self, response_timeout: Duration) -> Connection {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Reconnection inside the manager is kept short: the callers' own
            // backoff (`crate::backoff`) decides how long to keep trying.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        match &self.target {
            // Only settings out of range are refused, and these are constants.
            Target::Fixed(client) => Connection::fixed(
                client
                    .get_connection_manager_lazy(config)
                    .expect("the connection manager settings are in range"),
            ),
            Target::Sentinel { sentinels, db } => Connection::following(Arc::clone(sentinels), config, *db),
        }
    }

    /// Connect once and `PING`: `Ok(Ok(()))` when Redis answers,
    /// `Ok(Err(reason))` when it cannot be reached now (not up yet: worth
    /// waiting for), `Err` when it refused this process for a reason only
    /// the configuration can fix.
    pub async fn check(&self) -> Result<Result<(), RedisError>, Refused> {
        let attempt = async {
            let mut conn = self.master().await?.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        let outcome = match tokio::time::timeout(COMMAND_TIMEOUT + CONNECT_TIMEOUT, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(RedisError::from((ErrorKind::Io, "no answer in time"))),
        };
        match outcome {
            Ok(_) => Ok(Ok(())),
            Err(err) => match self.refusal(&err) {
                Some(refused) => Err(refused),
                None => Ok(Err(err)),
            },
        }
    }

    /// What `err` says to someone who asked: the setting to fix when no
    /// retry will help, else that Redis did not answer.
    pub fn explain(&self, err: &RedisError) -> String {
        match self.refusal(err) {
            Some(refused) => refused.to_string(),
            None => format!("Redis at {} does not answer: {err}", self.shown),
        }
    }

    /// The setting to blame for `err`, when it is one no retry will fix.
    fn refusal(&self, err: &RedisError) -> Option<Refused> {
        let refused = |key: &'static str, reason: String| Refused {
            url: self.shown.clone(),
            key,
            reason,
        };
        let code = err.code().unwrap_or_default();
        if err.kind() == ErrorKind::AuthenticationFailed || matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM") {
            return Some(refused("the user and password in redis_url", err.to_string()));
        }
        if err.kind() == ErrorKind::MasterNameNotFoundBySentinel {
            return Some(refused(
                "the service name in redis_url: no Sentinel knows it",
                err.to_string(),
            ));
        }
        if !self.tls {
            return None;
        }
        let tls = tls_error(err)?;
        let key = match &tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }) => {
                "the host in redis_url: the server's certificate does not name it"
            }
            rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => {
                if self.ca_file {
                    "redis.ca_file: it does not hold the CA that signed the server's certificate"
                } else {
                    "redis.ca_file: unset, so the system's roots were used, and none signed the server's certificate"
                }
            }
            rustls::Error::AlertReceived(_) if !self.client_cert => {
                "redis.client_cert_file and redis.client_key_file: the server asks for a client certificate"
            }
            rustls::Error::AlertReceived(_) => {
                "redis.client_cert_file and redis.client_key_file: the server did not accept them"
            }
            _ => "redis.ca_file, redis.client_cert_file and redis.client_key_file",
        };
        Some(refused(key, format!("TLS: {tls}")))
    }
}

/// `redis_url` taken apart.
enum Address {
    Fixed(redis::ConnectionInfo),
    Sentinel(SentinelUrl),
}

/// The rustls error somewhere in `err`'s causes: redis keeps an I/O error
/// as an `Arc<dyn Error>`, and the handshake's error is the payload of that
/// `io::Error` (which `source()` skips over).
fn tls_error(err: &RedisError) -> Option<rustls::Error> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        let current = match current.downcast_ref::<Shared>() {
            Some(shared) => &**shared as &(dyn std::error::Error + 'static),
            None => current,
        };
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.clone());
        }
        cause = current.source();
    }
    None
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, EndpointError> {
    std::fs::read(path).map_err(|source| EndpointError::File {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// TLS to Redis uses the process's rustls provider (ring, as the HTTP
/// clients do).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "redis://citadel:s3cret@redis.example:6380/2",
                "redis://citadel:***@redis.example:6380/2",
            ),
            ("rediss://:s3cret@redis.example", "rediss://:***@redis.example"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
        ] {
            assert_eq!(ShownUrl::of(url).to_string(), shown);
        }
        for garbled in [
            "redis://user:s3cret@[bad",
            "user:s3cret@host:6379",
            "redis+sentinel://user:s3cret@h1:26379,h2:26379/citadel",
            "redis://u:s3cret@host?pass=s3cret#frag",
        ] {
            let shown = ShownUrl::of(garbled).to_string();
            assert!(!shown.contains("s3cret") && shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn bad_urls_and_settings_are_named_without_the_password() {
        let err = |url: &str, settings: &RedisSettings| Endpoint::open(url, settings).unwrap_err().to_string();
        let none = RedisSettings::default();
        let message = err("http://user:s3cret@host", &none);
        assert!(
            message.contains("redis_url") && !message.contains("s3cret"),
            "{message}"
        );
        let message = err("rediss://host:6380/#insecure", &none);
        assert!(
            message.contains("#insecure") && message.contains("redis.ca_file"),
            "{message}"
        );
        let ca = RedisSettings {
            ca_file: Some("/etc/ssl/redis-ca.pem".into()),
            ..RedisSettings::default()
        };
        let message = err("redis://:s3cret@host:6379", &ca);
        assert!(
            message.contains("redis.ca_file") && message.contains("rediss://"),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
        let message = err("rediss://host:6380", &ca);
        assert!(
            message.contains("redis.ca_file") && message.contains("/etc/ssl/redis-ca.pem"),
            "{message}"
        );
        let half = RedisSettings {
            client_cert_file: Some("/dev/null".into()),
            ..RedisSettings::default()
        };
        let message = err("rediss://host:6380", &half);
        assert!(message.contains("redis.client_key_file"), "{message}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("ca.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let message = err(
            "rediss://host:6380",
            &RedisSettings {
                ca_file: Some(junk),
                ..RedisSettings::default()
            },
        );
        assert!(message.contains("redis.ca_file"), "{message}");
    }

    #[tokio::test]
    async fn nothing_listening_is_worth_waiting_for() {
        let endpoint = Endpoint::open("redis://:s3cret@127.0.0.1:1", &RedisSettings::default()).unwrap();
        let outcome = endpoint.check().await.expect("a closed port is not a refusal");
        assert!(outcome.is_err());
        assert_eq!(endpoint.shown_url().to_string(), "redis://:***@127.0.0.1:1");
        // The managers' settings are accepted (they are built lazily).
        drop(endpoint.command_connection());
        drop(endpoint.blocking_connection(Duration::from_secs(1)));
    }
}
