//! Where webhooks may go. An endpoint is an `https://` URL whose host is a
//! public address, or a name that resolves to public addresses only when
//! the connection is made (checked by [`resolve`] at every new
//! connection, so a name that later resolves to an internal address is
//! refused then). Internal addresses (loopback, private, link-local,
//! carrier-grade NAT, unique local, multicast, ...) are the classic
//! server-side request forgery targets (a cloud's metadata service at
//! 169.254.169.254, an admin port on 127.0.0.1) and are refused unless the
//! configuration allows them. Plain `http://` is accepted only to
//! loopback, and only when loopback is allowed (tests, development).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use url::Url;

/// The longest endpoint URL accepted.
pub const MAX_URL: usize = 2048;

/// Which destinations are allowed besides public HTTPS ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Private and other internal addresses (an endpoint inside the
    /// operator's own network). Loopback stays governed by `allow_loopback`.
    pub allow_private: bool,
    /// Loopback addresses, and plain `http://` to them (tests, development).
    pub allow_loopback: bool,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the endpoint URL is not a URL: {0}")]
    NotAUrl(String),
    #[error("the endpoint URL is {0} characters; at most {MAX_URL}")]
    TooLong(usize),
    #[error(
        "the endpoint URL must be https:// (plain http:// only to a loopback address, when integrations.allow_loopback is set)"
    )]
    NotHttps,
    #[error("the endpoint URL carries a user name or password; leave them out (the signature authenticates pypes)")]
    Credentials,
    #[error("the endpoint URL has no host")]
    NoHost,
    #[error(
        "{address} is a {class} address: refused to prevent server-side request forgery (integrations.allow_private_addresses allows internal endpoints)"
    )]
    Internal { address: IpAddr, class: &'static str },
    #[error("{address} is a loopback address: refused (integrations.allow_loopback allows it, for tests)")]
    Loopback { address: IpAddr },
    #[error("{host} does not resolve: {reason}")]
    Unresolved { host: String, reason: String },
}

/// The class of an internal address, `None` for a public one.
pub fn internal_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_class(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("unique local")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation")
            } else if s[0] == 0x0064 && s[1] == 0xff9b {
                // NAT64: the embedded IPv4 address decides.
                let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                v4_class(v4)
            } else {
                None
            }
        }
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("carrier-grade NAT")
    } else if ip.is_documentation() {
        Some("documentation")
    } else if o[0] == 198 && (18..20).contains(&o[1]) {
        Some("benchmarking")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol")
    } else {
        None
    }
}

/// Whether `ip` may be delivered to under `policy`.
pub fn check_address(ip: IpAddr, policy: Policy) -> Result<(), TargetError> {
    match internal_class(ip) {
        None => Ok(()),
        Some("loopback") if policy.allow_loopback => Ok(()),
        Some("loopback") => Err(TargetError::Loopback { address: ip }),
        Some(_) if policy.allow_private => Ok(()),
        Some(class) => Err(TargetError::Internal { address: ip, class }),
    }
}

/// Checks an endpoint URL: its form, and its host when that is an address.
/// (A name is checked when it is resolved, at every attempt.)
pub fn check_url(text: &str, policy: Policy) -> Result<Url, TargetError> {
    if text.len() > MAX_URL {
        return Err(TargetError::TooLong(text.len()));
    }
    let url = Url::parse(text.trim()).map_err(|e| TargetError::NotAUrl(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Credentials);
    }
    let host = url.host().ok_or(TargetError::NoHost)?;
    let address = match host {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    };
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match (address, url.host_str()) {
                (Some(a), _) => a.is_loopback(),
                (None, Some(name)) => name.eq_ignore_ascii_case("localhost"),
                (None, None) => false,
            };
            if !(loopback && policy.allow_loopback) {
                return Err(TargetError::NotHttps);
            }
        }
        _ => return Err(TargetError::NotHttps),
    }
    if let Some(a) = address {
        check_address(a, policy)?;
    }
    Ok(url)
}

/// The addresses `host` resolves to that [`check_address`] allows, with
/// `port`; an error naming the refused address when none is left.
pub async fn resolve(host: &str, port: u16, policy: Policy) -> Result<Vec<SocketAddr>, TargetError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| TargetError::Unresolved { host: host.to_string(), reason: e.to_string() })?
        .collect();
    let mut refusal = None;
    let allowed: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| match check_address(a.ip(), policy) {
            Ok(()) => true,
            Err(e) => {
                refusal.get_or_insert(e);
                false
            }
        })
        .collect();
    if allowed.is_empty() {
        return Err(
            refusal.unwrap_or(TargetError::Unresolved { host: host.to_string(), reason: "no addresses".into() })
        );
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_by_class() {
        let strict = Policy::default();
        for (url, needle) in [
            ("https://10.1.2.3/hook", "private"),
            ("https://172.16.0.1/", "private"),
            ("https://192.168.1.1/", "private"),
            ("https://169.254.169.254/latest/meta-data/", "link-local"),
            ("https://100.64.0.1/", "carrier-grade NAT"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[fd00::1]/", "unique local"),
            ("https://[::ffff:10.0.0.1]/", "private"),
            ("https://[64:ff9b::a9fe:a9fe]/", "link-local"),
            ("https://224.0.0.1/", "multicast"),
            ("https://127.0.0.1/", "loopback"),
            ("https://[::1]/", "loopback"),
        ] {
            let e = check_url(url, strict).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
        assert!(check_url("https://93.184.215.14/hook", strict).is_ok());
        assert!(check_url("https://hooks.example.com/pypes", strict).is_ok());
        // The configuration opens internal networks, loopback separately.
        let private = Policy { allow_private: true, allow_loopback: false };
        assert!(check_url("https://10.1.2.3/", private).is_ok());
        assert!(check_url("https://127.0.0.1/", private).is_err());
        let loopback = Policy { allow_private: false, allow_loopback: true };
        assert!(check_url("https://127.0.0.1:8443/", loopback).is_ok());
        assert!(check_url("http://127.0.0.1:8080/", loopback).is_ok());
        assert!(check_url("http://localhost:8080/", loopback).is_ok());
        assert!(check_url("https://10.1.2.3/", loopback).is_err());
    }

    #[test]
    fn only_https_without_credentials() {
        let p = Policy { allow_private: true, allow_loopback: true };
        for (url, needle) in [
            ("http://hooks.example.com/", "https://"),
            ("http://10.0.0.1/", "https://"),
            ("ftp://hooks.example.com/", "https://"),
            ("https://user:pw@hooks.example.com/", "user name or password"),
            ("not a url", "not a URL"),
            ("https://", "not a URL"),
        ] {
            let e = check_url(url, p).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL));
        assert!(check_url(&long, p).unwrap_err().to_string().contains("at most"));
    }

    #[tokio::test]
    async fn names_are_checked_when_resolved() {
        let e = resolve("localhost", 443, Policy::default()).await.unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        let open = Policy { allow_private: false, allow_loopback: true };
        let addrs = resolve("localhost", 8443, open).await.unwrap();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8443));
    }
}
