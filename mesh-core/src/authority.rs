//! `host:port` authorities: the key under which a destination is discovered.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::InvalidValue;

/// A destination's authority: a DNS name or IP address with an explicit port, lower-cased.
/// `web.default.svc.cluster.local:8080`, `10.0.0.7:80`, `[fd00::1]:443`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Authority {
    /// The normalised text form, `host:port`.
    text: String,
    /// Byte index of the `:` before the port.
    colon: usize,
    port: u16,
}

impl Authority {
    /// Parse `host:port`. When `default_port` is given, a bare `host` gets that port.
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Self, InvalidValue> {
        let s = s.trim();
        if s.is_empty() {
            return Err(InvalidValue::new(
                "",
                "authority is empty; expected host:port",
            ));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::from(addr));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| {
                    InvalidValue::new("", format!("'{p}' in '{s}' is not a port number (1-65535)"))
                })?;
                (h, port)
            }
            _ => match default_port {
                Some(p) => (s, p),
                None => {
                    return Err(InvalidValue::new(
                        "",
                        format!("'{s}' has no port; expected host:port"),
                    ))
                }
            },
        };
        if port == 0 {
            return Err(InvalidValue::new(
                "",
                format!("port 0 in '{s}' is not valid"),
            ));
        }
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip: std::net::Ipv6Addr = inner
                .parse()
                .map_err(|_| InvalidValue::new("", format!("'{host}' is not an IPv6 address")))?;
            return Ok(Self::from(SocketAddr::from((ip, port))));
        }
        validate_dns_name(host).map_err(|r| InvalidValue::new("", format!("'{s}': {r}")))?;
        let text = format!("{}:{port}", host.to_ascii_lowercase().trim_end_matches('.'));
        let colon = text.len() - port.to_string().len() - 1;
        Ok(Self { text, colon, port })
    }

    pub fn host(&self) -> &str {
        &self.text[..self.colon]
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.text.parse().ok()
    }
}

fn validate_dns_name(host: &str) -> Result<(), String> {
    let host = host.trim_end_matches('.');
    if host.is_empty() || host.len() > 253 {
        return Err("host name must be 1-253 characters".into());
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("every dot-separated label must be 1-63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label '{label}' may only hold letters, digits, '-' and '_'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label '{label}' must not start or end with '-'"));
        }
    }
    Ok(())
}

impl From<SocketAddr> for Authority {
    fn from(addr: SocketAddr) -> Self {
        let text = addr.to_string();
        let colon = text.rfind(':').unwrap_or(text.len());
        Self {
            text,
            colon,
            port: addr.port(),
        }
    }
}

impl FromStr for Authority {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, None)
    }
}

impl TryFrom<String> for Authority {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s, None)
    }
}

impl From<Authority> for String {
    fn from(a: Authority) -> String {
        a.text
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authority({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_names_and_addresses() {
        let a: Authority = "Web.Default.svc.cluster.local.:8080".parse().unwrap();
        assert_eq!(a.as_str(), "web.default.svc.cluster.local:8080");
        assert_eq!(a.host(), "web.default.svc.cluster.local");
        assert_eq!(a.port(), 8080);
        let b: Authority = "10.1.2.3:80".parse().unwrap();
        assert_eq!(b.socket_addr(), Some("10.1.2.3:80".parse().unwrap()));
        let c: Authority = "[::1]:443".parse().unwrap();
        assert_eq!(c.host(), "[::1]");
        assert_eq!(c.port(), 443);
        assert_eq!(
            Authority::parse("web", Some(80)).unwrap().as_str(),
            "web:80"
        );
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        for bad in [
            "",
            "web",
            "web:0",
            "web:99999",
            "we b:80",
            "-web:80",
            "a..b:80",
        ] {
            let err = bad.parse::<Authority>().unwrap_err();
            assert!(!err.reason.is_empty(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(host in "[a-z][a-z0-9-]{0,20}[a-z0-9](\\.[a-z][a-z0-9]{0,10}){0,3}", port in 1u16..) {
            let a = Authority::parse(&format!("{host}:{port}"), None).unwrap();
            let again: Authority = a.to_string().parse().unwrap();
            prop_assert_eq!(&a, &again);
            prop_assert_eq!(a.port(), port);
            prop_assert_eq!(a.host(), host.as_str());
        }

        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = Authority::parse(&s, Some(80));
        }
    }
}
