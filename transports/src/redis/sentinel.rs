//! Redis Sentinel: `redis+sentinel://[user:password@]host1[:port1],host2…/service[/db]`
//! (`rediss+sentinel://` for TLS to the Sentinels and the master) taken
//! apart, and the master of `service` looked up from the Sentinels (which
//! redis checks by asking the server itself for its `ROLE`).

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr, RedisResult, TlsCertificates, TlsMode};

/// The port Sentinels listen on unless told otherwise.
const SENTINEL_PORT: u16 = 26379;

/// A `redis+sentinel://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// TLS to the Sentinels and the master (`rediss+sentinel://`).
    pub tls: bool,
    /// The ACL user on the master.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// The Sentinels' addresses.
    pub sentinels: Vec<(String, u16)>,
    /// The name the Sentinels know the master by.
    pub service: String,
    /// The database on the master.
    pub db: i64,
}

impl SentinelUrl {
    /// `None` when `url` is not a Sentinel URL; else the URL taken apart or
    /// what is wrong with it.
    pub fn parse(url: &str) -> Option<Result<SentinelUrl, String>> {
        let (scheme, rest) = url.split_once("://")?;
        let tls = match scheme {
            "redis+sentinel" => false,
            "rediss+sentinel" => true,
            _ => return None,
        };
        Some(Self::parse_rest(tls, rest))
    }

    fn parse_rest(tls: bool, rest: &str) -> Result<SentinelUrl, String> {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| "the user or password is not UTF-8 once percent-decoded".to_string())
        };
        let (username, password) = match userinfo.map(|info| info.split_once(':').unwrap_or((info, ""))) {
            Some((user, password)) => (
                Some(decode(user)?).filter(|user| !user.is_empty()),
                Some(decode(password)?).filter(|password| !password.is_empty()),
            ),
            None => (None, None),
        };
        let sentinels = hosts
            .split(',')
            .map(|address| {
                let (host, port) = match address.rsplit_once(':') {
                    Some((host, port)) if !address.ends_with(']') => {
                        let port = port
                            .parse()
                            .map_err(|_| format!("sentinel address {address:?}: the port is not a number"))?;
                        (host, port)
                    }
                    _ => (address, SENTINEL_PORT),
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(format!("sentinel address {address:?} has no host"));
                }
                Ok((host.to_string(), port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut parts = path.split('/').filter(|part| !part.is_empty());
        let service = parts
            .next()
            .ok_or("no service name: redis+sentinel://host:26379[,host:26379…]/<service>[/<db>]")?
            .to_string();
        let db = match parts.next() {
            Some(db) => db.parse().map_err(|_| format!("database {db:?} is not a number"))?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err("the path is /<service>[/<db>], nothing after".into());
        }
        Ok(SentinelUrl {
            tls,
            username,
            password,
            sentinels,
            service,
            db,
        })
    }

    /// A lookup of the master through these Sentinels, with `certificates`
    /// for TLS (to the Sentinels and the master alike).
    pub fn client(&self, certificates: Option<TlsCertificates>) -> RedisResult<SentinelClient> {
        let addresses = self.sentinels.iter().map(|(host, port)| match self.tls {
            true => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
            false => ConnectionAddr::Tcp(host.clone(), *port),
        });
        let mut builder = SentinelClientBuilder::new(addresses, &self.service, SentinelServerType::Master)?
            .set_client_to_redis_db(self.db);
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certificates) = certificates {
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        builder.build()
    }
}

/// The Sentinels of one service, asked one lookup at a time.
pub(crate) struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
}

impl Sentinels {
    pub fn new(client: SentinelClient) -> Sentinels {
        Sentinels {
            client: tokio::sync::Mutex::new(client),
        }
    }

    /// A client of the master the Sentinels name now (checked to be one).
    /// Boxed: redis's lookup is a deep future, and every caller's state
    /// machine would otherwise hold it inline.
    pub async fn master(&self) -> RedisResult<Client> {
        let lookup: futures_util::future::BoxFuture<'_, RedisResult<Client>> =
            Box::pin(async { self.client.lock().await.async_get_client().await });
        lookup.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_are_taken_apart() {
        let url = SentinelUrl::parse("redis+sentinel://citadel:p%40ss@10.0.0.1:26380,[::1],sentinel-c/jobs/2")
            .unwrap()
            .unwrap();
        assert_eq!(
            url,
            SentinelUrl {
                tls: false,
                username: Some("citadel".into()),
                password: Some("p@ss".into()),
                sentinels: vec![
                    ("10.0.0.1".into(), 26380),
                    ("::1".into(), SENTINEL_PORT),
                    ("sentinel-c".into(), SENTINEL_PORT)
                ],
                service: "jobs".into(),
                db: 2,
            }
        );
        let url = SentinelUrl::parse("rediss+sentinel://:secret@s1/jobs")
            .unwrap()
            .unwrap();
        assert!(url.tls && url.username.is_none() && url.password.as_deref() == Some("secret"));
        assert!(SentinelUrl::parse("redis://host:6379").is_none());
        for (bad, why) in [
            ("redis+sentinel://s1:26379", "no service name"),
            ("redis+sentinel://s1:port/jobs", "not a number"),
            ("redis+sentinel://s1,/jobs", "has no host"),
            ("redis+sentinel://s1/jobs/x", "database"),
            ("redis+sentinel://s1/jobs/0/more", "nothing after"),
        ] {
            let err = SentinelUrl::parse(bad).unwrap().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
