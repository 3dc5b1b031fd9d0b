//! Opening a checked connection: where a request goes (scheme, host,
//! port), the name resolved once with every address checked against the
//! tenant's address rules, TCP to a checked address, and TLS verified
//! against the name the handler asked for.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::Error as HttpError;

use super::JobContext;
use crate::capabilities::http::egress::{Egress, Scheme};

/// A byte stream to the server: TCP or TLS over TCP.
pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Destination {
    pub(super) scheme: Scheme,
    /// Lower-case, without brackets or a trailing dot.
    pub(super) host: String,
    pub(super) port: u16,
}

impl Destination {
    /// The destination of an absolute request URI; user info is refused
    /// (it would hide the real host from a reader of the URL).
    pub(super) fn of(uri: &http::Uri) -> Result<Destination, HttpError> {
        let scheme = uri
            .scheme_str()
            .and_then(Scheme::parse)
            .ok_or(HttpError::HttpProtocolError)?;
        let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
        if authority.as_str().contains('@') {
            return Err(HttpError::HttpRequestUriInvalid);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(HttpError::HttpRequestUriInvalid);
        }
        let port = authority.port_u16().unwrap_or(scheme.default_port());
        Ok(Destination { scheme, host, port })
    }

    fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        match self.literal() {
            Some(IpAddr::V6(v6)) => write!(f, "{scheme}://[{v6}]:{}", self.port),
            _ => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// Resolve `destination` once, refuse it if any address is one the rules
/// keep out, and connect to the first checked address that answers.
pub(super) async fn open(
    job: &JobContext,
    destination: &Destination,
    egress: &Egress,
    connect_timeout: Duration,
    tls: impl FnOnce() -> Result<Arc<rustls::ClientConfig>, String>,
) -> Result<Box<dyn Stream>, HttpError> {
    let shown = destination.to_string();
    let addresses: Vec<SocketAddr> = match destination.literal() {
        Some(address) => vec![SocketAddr::new(address, destination.port)],
        None => tokio::time::timeout(
            connect_timeout,
            tokio::net::lookup_host((destination.host.as_str(), destination.port)),
        )
        .await
        .map_err(|_| HttpError::DnsTimeout)?
        .map_err(|err| HttpError::DnsError {
            rcode: Some(err.to_string()),
            info_code: None,
        })?
        .collect(),
    };
    if addresses.is_empty() {
        return Err(HttpError::DestinationNotFound);
    }
    for address in &addresses {
        if let Err(why) = egress.check_address(address.ip()) {
            let reason = match destination.literal() {
                Some(_) => why,
                None => format!("{} resolves to {}; {why}", destination.host, address.ip()),
            };
            return Err(job.refuse(&shown, &reason, HttpError::DestinationIpProhibited));
        }
    }
    let mut last_error = HttpError::ConnectionRefused;
    let mut connected = None;
    for address in addresses {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                connected = Some(stream);
                break;
            }
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                last_error = HttpError::ConnectionRefused
            }
            Ok(Err(err)) => last_error = HttpError::Connect(err),
            Err(_) => last_error = HttpError::ConnectionTimeout,
        }
    }
    let tcp = connected.ok_or(last_error)?;
    let _ = tcp.set_nodelay(true);
    if destination.scheme == Scheme::Http {
        return Ok(Box::new(tcp));
    }
    let config = tls().map_err(|err| HttpError::InternalError(Some(err)))?;
    let name = match destination.literal() {
        Some(address) => ServerName::from(address),
        None => ServerName::try_from(destination.host.clone()).map_err(|_| HttpError::HttpRequestUriInvalid)?,
    };
    let stream = tokio::time::timeout(
        connect_timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)?
    .map_err(HttpError::Tls)?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    fn destination(uri: &str) -> Result<Destination, HttpError> {
        Destination::of(&uri.parse().unwrap())
    }

    #[test]
    fn destinations_take_default_ports_and_normalise_hosts() {
        let https = destination("https://Models.Example.COM./x?y").unwrap();
        assert_eq!(
            (https.scheme, https.host.as_str(), https.port),
            (Scheme::Https, "models.example.com", 443)
        );
        assert_eq!(https.to_string(), "https://models.example.com:443");
        let v6 = destination("http://[::1]:8080/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert_eq!(v6.to_string(), "http://[::1]:8080");
    }

    #[test]
    fn user_info_and_other_schemes_are_refused() {
        assert!(matches!(
            destination("http://allowed.test@evil.test/"),
            Err(HttpError::HttpRequestUriInvalid)
        ));
        assert!(matches!(
            destination("ftp://files.test/"),
            Err(HttpError::HttpProtocolError)
        ));
    }

    /// A TLS server on loopback presenting a certificate for `names`,
    /// signed by `ca`; it answers one handshake.
    async fn tls_server(ca: &Issuer<'static, KeyPair>, names: &[&str]) -> u16 {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn tls_checks_the_name_asked_for_against_the_trusted_roots() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(ca_params, ca_key);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let job = JobContext {
            job_id: Arc::from("tls-test"),
            tenant: "acme".into(),
            log: crate::sandbox::joblog::JobLog::new(1 << 16),
            connections: Arc::new(tokio::sync::Semaphore::new(8)),
        };
        let egress = Egress::parse(
            &["https://localhost:*".to_string()],
            &["127.0.0.0/8".to_string(), "::1".to_string()],
        )
        .unwrap();
        let connect = |port: u16| {
            let destination = destination(&format!("https://localhost:{port}/")).unwrap();
            let (job, egress, client) = (&job, &egress, Arc::clone(&client));
            async move { open(job, &destination, egress, Duration::from_secs(5), || Ok(client)).await }
        };

        let right_name = tls_server(&ca, &["localhost"]).await;
        assert!(
            connect(right_name).await.is_ok(),
            "a certificate for the name asked for"
        );

        let wrong_name = tls_server(&ca, &["other.test"]).await;
        match connect(wrong_name).await {
            Err(HttpError::Tls(err)) => assert!(err.to_string().contains("certificate"), "{err}"),
            Err(other) => panic!("expected a TLS error, got {other:?}"),
            Ok(_) => panic!("a certificate for another name was accepted"),
        }
    }
}
