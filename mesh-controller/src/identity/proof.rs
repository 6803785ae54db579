//! Proofs of workload identity for `Identity.Certify`.
//!
//! - Local mode: a join token made by `mesh-controller identity join-token`. The controller
//!   keeps only its hash, in `<identity dir>/join-tokens.yaml` (re-read when the file
//!   changes); the token proves the identity `spiffe://<td>/ns/<namespace>/sa/<sa>` of its
//!   entry (and, when the entry names a workload, only for that workload).
//! - Kubernetes: the pod's projected service-account token, checked with a TokenReview
//!   (`authentication.k8s.io/v1`) for the mesh's audience; the user name
//!   `system:serviceaccount:<ns>:<sa>` gives the identity it proves.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use mesh_core::Identity;
use serde::{Deserialize, Serialize};

/// Name of the join-token file inside an identity directory.
pub const JOIN_TOKENS_FILE: &str = "join-tokens.yaml";

/// One join token, as stored (hashed) in `join-tokens.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinTokenEntry {
    pub namespace: String,
    pub service_account: String,
    /// Only this workload (`InboundWorkload.workload` form, e.g. `ns:shop/pod:web-1`) may
    /// use the token; any workload of the service account when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// `sha256:<hex>` of the token (`mesh_identity::token::hash`).
    pub sha256: String,
}

/// Reads `join-tokens.yaml` (an absent file is an empty list).
pub fn read_join_tokens(path: &Path) -> anyhow::Result<Vec<JoinTokenEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<JoinTokenEntry> = serde_yaml_ng::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a list of {{namespace, serviceAccount, workload?, sha256}}: {e}",
            path.display()
        )
    })?;
    for (i, e) in entries.iter().enumerate() {
        if !e.sha256.starts_with("sha256:") {
            anyhow::bail!(
                "{}: entry {i} ({}/{}): sha256 must be 'sha256:<hex>', as written by `mesh-controller identity join-token`",
                path.display(),
                e.namespace,
                e.service_account
            );
        }
    }
    Ok(entries)
}

/// Writes `entries` to `path` atomically (a temporary file in the same directory, then a
/// rename), readable by the owner only.
pub fn write_join_tokens(path: &Path, entries: &[JoinTokenEntry]) -> anyhow::Result<()> {
    let text = serde_yaml_ng::to_string(entries)
        .map_err(|e| anyhow::anyhow!("cannot encode the join tokens: {e}"))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(".{JOIN_TOKENS_FILE}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("cannot write {}: {e}", path.display())
    })
}

/// Why a proof proves nothing (or not the identity asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// UNAUTHENTICATED: missing, unknown, expired or for another audience.
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    /// PERMISSION_DENIED: valid, but for another identity (or workload).
    Denied {
        reason: &'static str,
        message: String,
    },
    /// UNAVAILABLE: the proof could not be checked now (e.g. the API server is down).
    Unavailable {
        reason: &'static str,
        message: String,
    },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated { reason, .. }
            | Refusal::Denied { reason, .. }
            | Refusal::Unavailable { reason, .. } => reason,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Unauthenticated { message, .. }
            | Refusal::Denied { message, .. }
            | Refusal::Unavailable { message, .. } => message,
        }
    }
}

/// Checks proofs.
pub enum Prover {
    /// Local mode: join tokens from a file.
    Local(JoinTokens),
    /// Kubernetes: TokenReview through the API.
    Kubernetes {
        client: kube::Client,
        audience: String,
    },
}

impl Prover {
    /// Whether `token` proves `identity` (for `workload`, in local mode).
    pub async fn check(
        &self,
        token: &str,
        workload: &str,
        identity: &Identity,
        trust_domain: &str,
    ) -> Result<(), Refusal> {
        if token.is_empty() {
            return Err(Refusal::Unauthenticated {
                reason: "no_proof",
                message: "the request carries no token: send a join token (local mode) or the pod's service-account token".into(),
            });
        }
        match self {
            Prover::Local(tokens) => tokens.check(token, workload, identity, trust_domain),
            Prover::Kubernetes { client, audience } => {
                token_review(client, audience, token, identity, trust_domain).await
            }
        }
    }
}

/// The identity a namespace and service account make in `trust_domain`.
fn identity_for(trust_domain: &str, ns: &str, sa: &str) -> Option<Identity> {
    mesh_identity::spiffe_id(trust_domain, ns, sa).ok()
}

/// Join tokens from `join-tokens.yaml`, re-read when the file changes (size or mtime).
pub struct JoinTokens {
    path: PathBuf,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    stamp: Option<(SystemTime, u64)>,
    entries: Vec<JoinTokenEntry>,
    error: Option<String>,
}

impl JoinTokens {
    pub fn new(identity_dir: &Path) -> Self {
        Self {
            path: identity_dir.join(JOIN_TOKENS_FILE),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The current entries (re-reading the file if it changed). A file that cannot be read
    /// keeps the last good entries and logs the error once.
    fn entries(&self) -> Vec<JoinTokenEntry> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if stamp.is_none() || cache.stamp != stamp {
            match read_join_tokens(&self.path) {
                Ok(entries) => {
                    if cache.error.take().is_some() {
                        tracing::info!(file = %self.path.display(), "join tokens readable again");
                    }
                    cache.entries = entries;
                    cache.stamp = stamp;
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if cache.error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!("{msg}; keeping the last join tokens read");
                        cache.error = Some(msg);
                    }
                    cache.stamp = stamp;
                }
            }
        }
        cache.entries.clone()
    }

    fn check(
        &self,
        token: &str,
        workload: &str,
        identity: &Identity,
        trust_domain: &str,
    ) -> Result<(), Refusal> {
        let entries = self.entries();
        // Compare against every entry (constant-time each) so the time taken does not
        // depend on where a match is.
        let mut found: Option<&JoinTokenEntry> = None;
        for e in &entries {
            if mesh_identity::token::matches(token, &e.sha256) && found.is_none() {
                found = Some(e);
            }
        }
        let Some(entry) = found else {
            return Err(Refusal::Unauthenticated {
                reason: "unknown_token",
                message: format!(
                    "the join token is not known to this controller; create one with `mesh-controller identity join-token --dir D --namespace NS --service-account SA` (it is listed in {})",
                    self.path.display()
                ),
            });
        };
        let proves = identity_for(trust_domain, &entry.namespace, &entry.service_account);
        if proves.as_ref() != Some(identity) {
            return Err(Refusal::Denied {
                reason: "wrong_identity",
                message: format!(
                    "the join token proves {}, not {identity}",
                    proves.map_or_else(
                        || format!("ns {} sa {}", entry.namespace, entry.service_account),
                        |i| i.to_string()
                    )
                ),
            });
        }
        if let Some(w) = &entry.workload {
            if w != workload {
                return Err(Refusal::Denied {
                    reason: "wrong_workload",
                    message: format!("the join token is for workload '{w}', not '{workload}'"),
                });
            }
        }
        Ok(())
    }
}

/// Checks a service-account token with a TokenReview.
async fn token_review(
    client: &kube::Client,
    audience: &str,
    token: &str,
    identity: &Identity,
    trust_domain: &str,
) -> Result<(), Refusal> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: Some(vec![audience.to_string()]),
        },
        ..TokenReview::default()
    };
    let done = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| Refusal::Unavailable {
            reason: "review_failed",
            message: format!(
                "cannot check the token with a TokenReview: {e}; the controller needs RBAC `create` on tokenreviews.authentication.k8s.io"
            ),
        })?;
    let status = done.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        let reason = if why.contains("expired") {
            "expired_token"
        } else if why.contains("audience") {
            "wrong_audience"
        } else {
            "invalid_token"
        };
        return Err(Refusal::Unauthenticated {
            reason,
            message: format!("the service-account token was refused by the API server: {why}"),
        });
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|x| x == audience))
    {
        return Err(Refusal::Unauthenticated {
            reason: "wrong_audience",
            message: format!(
                "the service-account token is not for audience '{audience}'; mount a projected token with that audience"
            ),
        });
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    let Some((ns, sa)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    else {
        return Err(Refusal::Denied {
            reason: "not_service_account",
            message: format!("the token belongs to '{username}', which is not a service account"),
        });
    };
    let proves = identity_for(trust_domain, ns, sa);
    if proves.as_ref() != Some(identity) {
        return Err(Refusal::Denied {
            reason: "wrong_identity",
            message: format!("the token proves service account {ns}/{sa}, not {identity}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_token_file_round_trip_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOIN_TOKENS_FILE);
        assert!(read_join_tokens(&path).unwrap().is_empty());
        let token = mesh_identity::token::generate();
        let entries = vec![
            JoinTokenEntry {
                namespace: "shop".into(),
                service_account: "web".into(),
                workload: None,
                sha256: mesh_identity::token::hash(&token),
            },
            JoinTokenEntry {
                namespace: "shop".into(),
                service_account: "db".into(),
                workload: Some("ns:shop/pod:db-0".into()),
                sha256: mesh_identity::token::hash("other"),
            },
        ];
        write_join_tokens(&path, &entries).unwrap();
        assert_eq!(read_join_tokens(&path).unwrap(), entries);
        let tokens = JoinTokens::new(dir.path());
        let web = Identity::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        let db = Identity::parse("spiffe://cluster.local/ns/shop/sa/db").unwrap();
        assert_eq!(tokens.check(&token, "", &web, "cluster.local"), Ok(()));
        assert_eq!(
            tokens
                .check(&token, "", &db, "cluster.local")
                .unwrap_err()
                .reason(),
            "wrong_identity"
        );
        assert_eq!(
            tokens
                .check("nope", "", &web, "cluster.local")
                .unwrap_err()
                .reason(),
            "unknown_token"
        );
        assert_eq!(
            tokens
                .check("other", "ns:shop/pod:db-1", &db, "cluster.local")
                .unwrap_err()
                .reason(),
            "wrong_workload"
        );
        assert_eq!(
            tokens.check("other", "ns:shop/pod:db-0", &db, "cluster.local"),
            Ok(())
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOIN_TOKENS_FILE);
        std::fs::write(
            &path,
            "- namespace: a\n  serviceAccount: b\n  sha256: abc\n",
        )
        .unwrap();
        let e = read_join_tokens(&path).unwrap_err().to_string();
        assert!(
            e.contains("join-tokens.yaml") && e.contains("sha256"),
            "{e}"
        );
        std::fs::write(&path, "{not: a list}").unwrap();
        assert!(read_join_tokens(&path).is_err());
    }
}
