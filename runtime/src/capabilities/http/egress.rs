//! Where a tenant's handlers may connect (capability `http`): the
//! `http.allowed_hosts` patterns (`https://*.example.com:443`), and the
//! addresses no request reaches unless `http.allow_addresses` names them —
//! loopback, private and shared ranges, link-local (the cloud metadata
//! service at 169.254.169.254 among them), multicast, unspecified. The
//! address rule is applied to every address a name resolves to, so a name
//! cannot be pointed at the node's own network (DNS rebinding).

use std::net::IpAddr;

use ipnet::IpNet;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// Parse `http` / `https`.
    pub fn parse(text: &str) -> Option<Scheme> {
        match text.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    /// Its default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// One `http.allowed_hosts` entry: `scheme://host[:port]`, `host` either
/// exact, `*.suffix` (any subdomain, not the bare suffix) or `*`; `port`
/// exact, `*`, or the scheme's default when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Scheme,
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    Subdomain(String),
}

impl HostPattern {
    /// Parse a pattern; the error says what is wrong.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let problem =
            |what: &str| format!("{text:?} {what} (expected scheme://host[:port], like \"https://*.example.com:443\")");
        let (scheme, rest) = text.split_once("://").ok_or_else(|| problem("has no scheme"))?;
        let scheme = Scheme::parse(scheme).ok_or_else(|| problem("must start with http:// or https://"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(problem("must name a host only (no path, user or query)"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal is bracketed: `[::1]:8080`.
            Some((host, port)) if !port.contains(']') => {
                let port = match port {
                    "*" => None,
                    port => Some(port.parse::<u16>().map_err(|_| problem("has a bad port"))?),
                };
                (host, Some(port))
            }
            _ => (rest, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return Err(problem("has no host"));
        }
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(problem("has a bad wildcard"));
            }
            HostMatch::Subdomain(suffix.to_string())
        } else if host.contains('*') {
            return Err(problem("may use * only as the whole host or a leading `*.`"));
        } else {
            HostMatch::Exact(host)
        };
        let port = match port {
            None => Some(scheme.default_port()),
            Some(port) => port,
        };
        Ok(HostPattern { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` matches.
    pub fn matches(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.scheme == scheme
            && self.port.is_none_or(|wanted| wanted == port)
            && match &self.host {
                HostMatch::Any => true,
                HostMatch::Exact(exact) => *exact == host,
                HostMatch::Subdomain(suffix) => host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|label| label.ends_with('.') && label.len() > 1),
            }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// Why an address is refused unless explicitly allowed, if it is special.
pub fn special_address(address: IpAddr) -> Option<&'static str> {
    match canonical(address) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata lives here)")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_multicast() || v4.is_broadcast() || a >= 240 {
                Some("multicast, broadcast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// A tenant's egress rules, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    hosts: Vec<HostPattern>,
    addresses: Vec<IpNet>,
}

impl Egress {
    /// From `http.allowed_hosts` and `http.allow_addresses` (addresses or
    /// CIDR ranges); the error names the entry.
    pub fn parse(hosts: &[String], addresses: &[String]) -> Result<Egress, (&'static str, String)> {
        let hosts = hosts
            .iter()
            .map(|pattern| HostPattern::parse(pattern).map_err(|problem| ("http.allowed_hosts", problem)))
            .collect::<Result<_, _>>()?;
        let addresses = addresses
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        (
                            "http.allow_addresses",
                            format!("{text:?} is not an IP address or CIDR range"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Egress { hosts, addresses })
    }

    /// Whether `scheme://host:port` is an allowed destination.
    pub fn allows_host(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|pattern| pattern.matches(scheme, host, port))
    }

    /// `Ok` when a connection to `address` may be made; else why not.
    pub fn check_address(&self, address: IpAddr) -> Result<(), String> {
        let address = canonical(address);
        let Some(kind) = special_address(address) else {
            return Ok(());
        };
        if self.addresses.iter().any(|allowed| allowed.contains(&address)) {
            return Ok(());
        }
        Err(format!(
            "{address} is a {kind} address, refused unless http.allow_addresses names it"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(hosts: &[&str], addresses: &[&str]) -> Egress {
        let strings = |list: &[&str]| list.iter().map(|text| text.to_string()).collect::<Vec<_>>();
        Egress::parse(&strings(hosts), &strings(addresses)).unwrap()
    }

    #[test]
    fn host_patterns_match_scheme_host_and_port() {
        let rules = egress(
            &[
                "https://*.example.com",
                "http://models.local:8080",
                "https://api.test:*",
            ],
            &[],
        );
        assert!(rules.allows_host(Scheme::Https, "a.example.com", 443));
        assert!(rules.allows_host(Scheme::Https, "A.B.Example.com", 443));
        assert!(
            !rules.allows_host(Scheme::Https, "example.com", 443),
            "*. needs a subdomain"
        );
        assert!(!rules.allows_host(Scheme::Https, "evilexample.com", 443));
        assert!(!rules.allows_host(Scheme::Http, "a.example.com", 80), "scheme matters");
        assert!(
            !rules.allows_host(Scheme::Https, "a.example.com", 8443),
            "default port only"
        );
        assert!(rules.allows_host(Scheme::Http, "models.local", 8080));
        assert!(!rules.allows_host(Scheme::Http, "models.local", 80));
        assert!(rules.allows_host(Scheme::Https, "api.test", 9999));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (pattern, problem) in [
            ("example.com", "has no scheme"),
            ("ftp://example.com", "http:// or https://"),
            ("https://example.com/path", "host only"),
            ("https://ex*ample.com", "may use *"),
            ("https://example.com:99999", "bad port"),
            ("https://", "no host"),
        ] {
            let err = HostPattern::parse(pattern).unwrap_err();
            assert!(err.contains(problem), "{pattern}: {err}");
        }
        assert_eq!(
            Egress::parse(&[], &["10.0.0.0/33".into()]).unwrap_err().0,
            "http.allow_addresses"
        );
    }

    #[test]
    fn special_addresses_are_refused_unless_named() {
        let rules = egress(&[], &["127.0.0.1", "10.1.0.0/16"]);
        for (address, allowed) in [
            ("93.184.216.34", true),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("10.1.2.3", true),
            ("10.2.0.1", false),
            ("169.254.169.254", false),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("::1", false),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("2606:4700::1111", true),
        ] {
            let address: IpAddr = address.parse().unwrap();
            assert_eq!(rules.check_address(address).is_ok(), allowed, "{address}");
        }
        let refused = rules.check_address("169.254.169.254".parse().unwrap()).unwrap_err();
        assert!(
            refused.contains("link-local") && refused.contains("http.allow_addresses"),
            "{refused}"
        );
    }
}
