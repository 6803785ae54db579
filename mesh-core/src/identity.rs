//! Workload identities (SPIFFE IDs such as `spiffe://cluster.local/ns/default/sa/web`).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spiffe_ids() {
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
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
