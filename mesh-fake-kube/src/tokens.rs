//! Service-account tokens: `TokenRequest` (`POST .../serviceaccounts/{sa}/token`) issues them,
//! `TokenReview` (`POST /apis/authentication.k8s.io/v1/tokenreviews`) checks them.
//!
//! Tokens are opaque random strings (a real server issues signed JWTs); the server remembers
//! each one with its service account, audiences and expiry, so a review answers as a real
//! server would: unknown token, expired token, or no audience in common -> `authenticated:
//! false` with an `error`; otherwise the service account's user name, uid, groups and the
//! audiences the token is valid for.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::util::{random_u64, rfc3339_from_unix};

/// Audience of tokens requested without `spec.audiences`, like a real server's
/// `--api-audiences` default.
pub(crate) const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// `expirationSeconds` when the request has none (a real server: 1 hour).
const DEFAULT_EXPIRATION_SECS: i64 = 3600;
/// Shortest `expirationSeconds` the API accepts (10 minutes, as a real server).
const MIN_EXPIRATION_SECS: i64 = 600;

/// What the server knows about a token it issued.
#[derive(Clone, Debug)]
struct Issued {
    namespace: String,
    service_account: String,
    /// uid of the ServiceAccount object when the token was issued, if it existed.
    uid: Option<String>,
    audiences: Vec<String>,
    expires: SystemTime,
}

/// Every token the server issued.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    issued: HashMap<String, Issued>,
}

impl Tokens {
    /// Issues a token for `namespace/service_account`, valid for `audiences` (the default
    /// audience when empty) until `ttl` from now.
    pub(crate) fn issue(
        &mut self,
        namespace: &str,
        service_account: &str,
        uid: Option<String>,
        audiences: Vec<String>,
        ttl: Duration,
    ) -> (String, SystemTime) {
        let token = format!(
            "fake-kube.{:016x}{:016x}{:016x}",
            random_u64(),
            random_u64(),
            random_u64()
        );
        let audiences = if audiences.is_empty() {
            vec![DEFAULT_AUDIENCE.to_string()]
        } else {
            audiences
        };
        let expires = SystemTime::now() + ttl;
        self.issued.insert(
            token.clone(),
            Issued {
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
                uid,
                audiences,
                expires,
            },
        );
        (token, expires)
    }

    /// The `status` of a TokenReview of `token` for `audiences` (the default audience when
    /// empty). `current_uid` is the uid of the token's ServiceAccount as it is now (`None`:
    /// deleted), looked up by the caller.
    pub(crate) fn review(
        &self,
        token: &str,
        audiences: &[String],
        current_uid: impl FnOnce(&str, &str) -> Option<String>,
    ) -> Value {
        let refuse = |error: &str| json!({"authenticated": false, "error": error});
        let Some(issued) = self.issued.get(token) else {
            return refuse("[invalid bearer token, token lookup failed]");
        };
        if SystemTime::now() >= issued.expires {
            return refuse("[invalid bearer token, service account token has expired]");
        }
        let wanted: Vec<String> = if audiences.is_empty() {
            vec![DEFAULT_AUDIENCE.to_string()]
        } else {
            audiences.to_vec()
        };
        let common: Vec<&String> = wanted
            .iter()
            .filter(|a| issued.audiences.contains(a))
            .collect();
        if common.is_empty() {
            return refuse("[invalid bearer token, token audiences don't match]");
        }
        let now_uid = current_uid(&issued.namespace, &issued.service_account);
        let uid = match (&issued.uid, now_uid) {
            (Some(then), Some(now)) if *then != now => {
                return refuse(&format!(
                    "[invalid bearer token, service account {}/{} has been deleted and recreated]",
                    issued.namespace, issued.service_account
                ))
            }
            (Some(_), None) => {
                return refuse(&format!(
                    "[invalid bearer token, service account {}/{} has been deleted]",
                    issued.namespace, issued.service_account
                ))
            }
            (Some(then), Some(_)) => then.clone(),
            (None, now) => now.unwrap_or_default(),
        };
        let ns = &issued.namespace;
        json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{ns}:{}", issued.service_account),
                "uid": uid,
                "groups": [
                    "system:serviceaccounts",
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated",
                ],
            },
            "audiences": common,
        })
    }
}

/// The `spec.audiences` and `spec.expirationSeconds` of a TokenRequest body.
pub(crate) fn parse_request(body: &Value) -> Result<(Vec<String>, Duration), ApiError> {
    let audiences = string_list(body.pointer("/spec/audiences"), "spec.audiences")?;
    let secs = match body.pointer("/spec/expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECS,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "spec.expirationSeconds must be an integer, got {v}"
            ))
        })?,
    };
    if secs < MIN_EXPIRATION_SECS {
        return Err(ApiError::invalid(
            "TokenRequest.authentication.k8s.io",
            "",
            format!(
                "spec.expirationSeconds: Invalid value: {secs}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    // `secs` is at least 600 here, so the cast cannot wrap.
    Ok((audiences, Duration::from_secs(secs as u64)))
}

/// The `spec.token` and `spec.audiences` of a TokenReview body.
pub(crate) fn parse_review(body: &Value) -> Result<(String, Vec<String>), ApiError> {
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let audiences = string_list(body.pointer("/spec/audiences"), "spec.audiences")?;
    Ok((token, audiences))
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(String::from).ok_or_else(|| {
                    ApiError::bad_request(format!("{field} must be a list of strings, got {i}"))
                })
            })
            .collect(),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field} must be a list of strings, got {other}"
        ))),
    }
}

/// RFC 3339 text of `t` (second precision).
pub(crate) fn timestamp(t: SystemTime) -> String {
    rfc3339_from_unix(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str, _: &str) -> Option<String> {
        None
    }

    #[test]
    fn reviews_what_it_issued() {
        let mut t = Tokens::default();
        let (tok, _) = t.issue(
            "shop",
            "web",
            None,
            vec!["mesh".into()],
            Duration::from_secs(60),
        );
        let ok = t.review(&tok, &["mesh".into()], none);
        assert_eq!(ok["authenticated"], true);
        assert_eq!(ok["user"]["username"], "system:serviceaccount:shop:web");
        assert_eq!(ok["audiences"], json!(["mesh"]));
        let wrong_aud = t.review(&tok, &["other".into()], none);
        assert_eq!(wrong_aud["authenticated"], false);
        assert!(wrong_aud["error"].as_str().unwrap().contains("audiences"));
        let unknown = t.review("nope", &["mesh".into()], none);
        assert_eq!(unknown["authenticated"], false);
    }

    #[test]
    fn expired_and_deleted_tokens_fail() {
        let mut t = Tokens::default();
        let (tok, _) = t.issue("shop", "web", None, vec![], Duration::ZERO);
        let r = t.review(&tok, &[], none);
        assert_eq!(r["authenticated"], false);
        assert!(r["error"].as_str().unwrap().contains("expired"));
        let (tok, _) = t.issue(
            "shop",
            "web",
            Some("u1".into()),
            vec![],
            Duration::from_secs(60),
        );
        assert_eq!(t.review(&tok, &[], none)["authenticated"], false);
        assert_eq!(
            t.review(&tok, &[], |_, _| Some("u2".into()))["authenticated"],
            false
        );
        let ok = t.review(&tok, &[], |_, _| Some("u1".into()));
        assert_eq!(ok["authenticated"], true);
        assert_eq!(ok["user"]["uid"], "u1");
        assert_eq!(ok["audiences"], json!([DEFAULT_AUDIENCE]));
    }

    #[test]
    fn request_bodies() {
        let (aud, ttl) =
            parse_request(&json!({"spec": {"audiences": ["a"], "expirationSeconds": 900}}))
                .unwrap();
        assert_eq!(aud, vec!["a".to_string()]);
        assert_eq!(ttl, Duration::from_secs(900));
        assert_eq!(
            parse_request(&json!({"spec": {}})).unwrap().1,
            Duration::from_secs(3600)
        );
        assert_eq!(
            parse_request(&json!({"spec": {"expirationSeconds": 5}}))
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            parse_request(&json!({"spec": {"audiences": "a"}}))
                .unwrap_err()
                .code,
            400
        );
    }
}
