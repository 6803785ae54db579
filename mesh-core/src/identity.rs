//! Workload identities (SPIFFE IDs such as `spiffe://cluster.local/ns/default/sa/web`), and
//! what a proxy's admin endpoint `GET /identity` says about its current certificate.

use std::fmt;

use crate::InvalidValue;

/// A workload identity, as carried in a certificate's URI SAN.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Identity(String);

impl Identity {
    /// Accepts `spiffe://<trust-domain>/<path>`: a lower-case trust domain and a non-empty
    /// path of printable ASCII without spaces.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| {
            InvalidValue::new(
                "",
                format!("'{s}' is not a SPIFFE ID (spiffe://domain/path)"),
            )
        })?;
        let (domain, path) = rest.split_once('/').ok_or_else(|| {
            InvalidValue::new("", format!("'{s}' has no path after the trust domain"))
        })?;
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(InvalidValue::new(
                "",
                format!(
                    "trust domain '{domain}' must be lower-case letters, digits, '-', '.', '_'"
                ),
            ));
        }
        if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidValue::new(
                "",
                format!("path '{path}' must be non-empty printable ASCII without spaces"),
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn trust_domain(&self) -> &str {
        let rest = &self.0["spiffe://".len()..];
        rest.split('/').next().unwrap_or_default()
    }
}

impl TryFrom<String> for Identity {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Identity> for String {
    fn from(i: Identity) -> String {
        i.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.0)
    }
}

/// The JSON of a proxy's `GET /identity` (admin port 4191): its current certificate. The
/// proxy answers 404 with a text body while it has none.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyIdentityStatus {
    /// The SPIFFE ID in the certificate (`spiffe://...`).
    pub identity: String,
    /// The end of the certificate's validity, RFC 3339 in UTC (`2026-01-02T03:04:05Z`).
    pub not_after: String,
    /// The certificate chain as PEM: the leaf first, then the intermediates.
    pub certificate_chain_pem: String,
    /// The proxy's version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spiffe_ids() {
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
    }

    #[test]
    fn proxy_identity_status_is_the_documented_json() {
        let s = ProxyIdentityStatus {
            identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
            not_after: "2026-01-02T03:04:05Z".into(),
            certificate_chain_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            version: "0.1.0".into(),
        };
        let v = serde_json::to_value(&s).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["certificate_chain_pem", "identity", "not_after", "version"]
        );
        assert_eq!(serde_json::from_value::<ProxyIdentityStatus>(v).unwrap(), s);
    }

    #[test]
    fn rejects_others() {
        for bad in [
            "",
            "web",
            "spiffe://",
            "spiffe://Cluster/x",
            "spiffe://d/",
            "spiffe://d/a b",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }
}
