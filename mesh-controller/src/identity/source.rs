//! Where the CA material comes from: an identity directory (local mode, polled every 2 s) or
//! a Kubernetes Secret (watched).
//!
//! Both give the current trust anchors and issuer, optionally `next` material (which starts a
//! trust-anchor rotation) and the rotation marker (the phase reached, tied to the next
//! issuer). Both can write the marker and promote `next` to current at the end of a rotation.
//!
//! Directory layout: see `mesh_identity::files`; the marker is `<dir>/rotation-phase`.
//! Secret keys: `trust-anchors.pem`, `issuer.crt`, `issuer.key`, and for a rotation
//! `next.trust-anchors.pem`, `next.issuer.crt`, `next.issuer.key`; the marker is the
//! annotation `mesh.dev/identity-rotation`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use mesh_identity::ca::{anchors_from_pem, Issuer};
use mesh_identity::files::IdentityDir;
use tokio::sync::watch;

use super::rotation::Phase;
use crate::named::{error_chain, watch_named, Named};

/// How often the identity directory is read again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Marker file in an identity directory.
pub const MARKER_FILE: &str = "rotation-phase";
/// Marker annotation on the identity Secret.
pub const MARKER_ANNOTATION: &str = "mesh.dev/identity-rotation";

/// Secret keys.
pub const KEY_ANCHORS: &str = "trust-anchors.pem";
pub const KEY_ISSUER_CRT: &str = "issuer.crt";
pub const KEY_ISSUER_KEY: &str = "issuer.key";
pub const NEXT_PREFIX: &str = "next.";

/// The CA material at one moment.
pub struct Material {
    pub current: IdentityDir,
    pub next: Option<IdentityDir>,
    /// The rotation phase recorded for this `next` issuer, if any.
    pub marker: Option<Phase>,
}

impl Material {
    /// Identifies the content (anchors, issuers, marker) to detect changes.
    pub fn fingerprint(&self) -> Vec<[u8; 32]> {
        let mut f: Vec<[u8; 32]> = self.current.anchors.iter().map(|a| a.sha256()).collect();
        f.push(self.current.issuer.sha256());
        if let Some(n) = &self.next {
            f.push([0xff; 32]);
            f.extend(n.anchors.iter().map(|a| a.sha256()));
            f.push(n.issuer.sha256());
        }
        let mut m = [0u8; 32];
        m[0] = self.marker.map_or(0, |p| p as u8 + 1);
        f.push(m);
        f
    }
}

/// What the source has now.
#[derive(Clone)]
pub enum State {
    /// No usable material (yet): why, and what to do.
    Missing(String),
    Ready(Arc<Material>),
}

/// Marker text: `<phase> <hex sha256 of the next issuer>`.
fn marker_text(phase: Phase, next_issuer: &[u8; 32]) -> String {
    format!("{} {}", phase.as_str(), hex(next_issuer))
}

/// The phase in a marker, if it is for `next_issuer`.
fn parse_marker(text: &str, next_issuer: &[u8; 32]) -> Option<Phase> {
    let (phase, issuer) = text.trim().split_once(' ')?;
    (issuer.trim() == hex(next_issuer))
        .then(|| Phase::parse(phase))
        .flatten()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A source of CA material.
pub enum Source {
    Dir(PathBuf),
    Secret {
        api: Api<Secret>,
        namespace: String,
        name: String,
    },
}

impl Source {
    pub fn secret(client: kube::Client, namespace: &str, name: &str) -> Self {
        Source::Secret {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// Human description, for logs and `/status`.
    pub fn describe(&self) -> String {
        match self {
            Source::Dir(d) => format!("directory {}", d.display()),
            Source::Secret {
                namespace, name, ..
            } => format!("Secret {namespace}/{name}"),
        }
    }

    /// Keeps `tx` up to date until the task is dropped.
    pub async fn run(self: Arc<Self>, tx: watch::Sender<State>) {
        match &*self {
            Source::Dir(dir) => run_dir(dir, &tx).await,
            Source::Secret {
                api,
                namespace,
                name,
            } => run_secret(api, namespace, name, &tx).await,
        }
    }

    /// Records that the rotation to `next_issuer` reached `phase`.
    pub async fn set_marker(&self, phase: Phase, next_issuer: &[u8; 32]) -> anyhow::Result<()> {
        let text = marker_text(phase, next_issuer);
        match self {
            Source::Dir(dir) => write_atomic(&dir.join(MARKER_FILE), text.as_bytes()),
            Source::Secret { api, name, .. } => {
                let patch = serde_json::json!({
                    "metadata": {"annotations": {MARKER_ANNOTATION: text}}
                });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| {
                        format!("cannot annotate Secret {name} with the rotation phase")
                    })?;
                Ok(())
            }
        }
    }

    /// Ends a rotation: the next material becomes the current one and the marker goes.
    pub async fn promote(&self) -> anyhow::Result<()> {
        match self {
            Source::Dir(dir) => {
                mesh_identity::files::promote_next(dir)
                    .with_context(|| format!("cannot promote {}/next", dir.display()))?;
                match std::fs::remove_file(dir.join(MARKER_FILE)) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(anyhow::anyhow!(
                        "cannot remove {}: {e}",
                        dir.join(MARKER_FILE).display()
                    )),
                }
            }
            Source::Secret {
                api,
                namespace,
                name,
            } => {
                let secret = api
                    .get(name)
                    .await
                    .with_context(|| format!("cannot read Secret {namespace}/{name}"))?;
                let data = secret.data.unwrap_or_default();
                let mut patch_data = serde_json::Map::new();
                for key in [KEY_ANCHORS, KEY_ISSUER_CRT, KEY_ISSUER_KEY] {
                    let next_key = format!("{NEXT_PREFIX}{key}");
                    let value = data.get(&next_key).with_context(|| {
                        format!("Secret {namespace}/{name} lost key {next_key} during the rotation")
                    })?;
                    patch_data.insert(key.to_string(), serde_json::to_value(value)?);
                    patch_data.insert(next_key, serde_json::Value::Null);
                }
                let patch = serde_json::json!({
                    "metadata": {
                        "annotations": {MARKER_ANNOTATION: null},
                        // Fails with a conflict if the Secret changed since it was read.
                        "resourceVersion": secret.metadata.resource_version,
                    },
                    "data": patch_data,
                });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| {
                        format!("cannot move the next.* keys of Secret {namespace}/{name} to the main keys")
                    })?;
                Ok(())
            }
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        })
}

/// Reads an identity directory.
pub fn load_dir(dir: &Path) -> anyhow::Result<Material> {
    let current = mesh_identity::files::load(dir)
        .with_context(|| format!("cannot load the identity directory {}", dir.display()))?;
    let next = mesh_identity::files::load_next(dir)
        .with_context(|| format!("cannot load {}/next", dir.display()))?;
    let marker = next.as_ref().and_then(|n| {
        let text = std::fs::read_to_string(dir.join(MARKER_FILE)).ok()?;
        parse_marker(&text, &n.issuer.sha256())
    });
    Ok(Material {
        current,
        next,
        marker,
    })
}

/// Publishes `state` if it differs from what `tx` holds.
fn publish(tx: &watch::Sender<State>, state: State) {
    tx.send_if_modified(|old| {
        let same = match (&*old, &state) {
            (State::Missing(a), State::Missing(b)) => a == b,
            (State::Ready(a), State::Ready(b)) => a.fingerprint() == b.fingerprint(),
            _ => false,
        };
        if !same {
            *old = state;
        }
        !same
    });
}

async fn run_dir(dir: &Path, tx: &watch::Sender<State>) {
    let mut last_error: Option<String> = None;
    loop {
        match load_dir(dir) {
            Ok(m) => {
                if last_error.take().is_some() {
                    tracing::info!(dir = %dir.display(), "identity directory readable again");
                }
                publish(tx, State::Ready(Arc::new(m)));
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_deref() != Some(msg.as_str()) {
                    let ready = matches!(&*tx.borrow(), State::Ready(_));
                    if ready {
                        tracing::warn!("{msg}; keeping the CA material read before");
                    } else {
                        tracing::warn!("{msg}; no certificates are issued until it loads (create it with `mesh-controller identity init --dir {}`)", dir.display());
                    }
                    last_error = Some(msg.clone());
                }
                if !matches!(&*tx.borrow(), State::Ready(_)) {
                    publish(
                        tx,
                        State::Missing(format!(
                            "{msg}; create it with `mesh-controller identity init --dir {}`",
                            dir.display()
                        )),
                    );
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn key_text<'a>(data: &'a BTreeMap<String, ByteString>, key: &str) -> Option<&'a str> {
    data.get(key).and_then(|v| std::str::from_utf8(&v.0).ok())
}

/// Reads the material from a Secret's data; `prefix` is "" or "next.". `Ok(None)`: none of
/// the three keys is there.
fn material_from(
    data: &BTreeMap<String, ByteString>,
    prefix: &str,
) -> anyhow::Result<Option<IdentityDir>> {
    let keys = [KEY_ANCHORS, KEY_ISSUER_CRT, KEY_ISSUER_KEY].map(|k| format!("{prefix}{k}"));
    let present: Vec<&String> = keys.iter().filter(|k| data.contains_key(*k)).collect();
    if present.is_empty() {
        return Ok(None);
    }
    let get = |k: &String| {
        key_text(data, k).with_context(|| format!("key {k} is missing or not UTF-8 PEM text"))
    };
    let anchors = anchors_from_pem(get(&keys[0])?).with_context(|| format!("key {}", keys[0]))?;
    let issuer = Issuer::from_pem(get(&keys[1])?, get(&keys[2])?)
        .with_context(|| format!("keys {} / {}", keys[1], keys[2]))?;
    issuer.chains_to(&anchors).with_context(|| {
        format!(
            "the issuer in {} is not signed by an anchor in {}",
            keys[1], keys[0]
        )
    })?;
    Ok(Some(IdentityDir { anchors, issuer }))
}

/// Reads the material of an identity Secret.
pub fn load_secret(secret: &Secret) -> anyhow::Result<Material> {
    let data = secret.data.clone().unwrap_or_default();
    let current = material_from(&data, "")?.with_context(|| {
        format!("it has no {KEY_ANCHORS}, {KEY_ISSUER_CRT} and {KEY_ISSUER_KEY} keys")
    })?;
    let next = material_from(&data, NEXT_PREFIX)?;
    let marker = next.as_ref().and_then(|n| {
        let text = secret
            .metadata
            .annotations
            .as_ref()?
            .get(MARKER_ANNOTATION)?;
        parse_marker(text, &n.issuer.sha256())
    });
    Ok(Material {
        current,
        next,
        marker,
    })
}

async fn run_secret(api: &Api<Secret>, namespace: &str, name: &str, tx: &watch::Sender<State>) {
    let missing = format!(
        "the identity Secret {namespace}/{name} does not exist; create it with keys {KEY_ANCHORS}, {KEY_ISSUER_CRT} and {KEY_ISSUER_KEY} (see docs/identity.md)"
    );
    let apply = |secret: &Secret| match load_secret(secret) {
        Ok(m) => publish(tx, State::Ready(Arc::new(m))),
        Err(e) => {
            let msg = format!("the identity Secret {namespace}/{name} is not usable: {e:#}");
            tracing::warn!("{msg}");
            if !matches!(&*tx.borrow(), State::Ready(_)) {
                publish(tx, State::Missing(msg));
            }
        }
    };
    watch_named(api.clone(), name, |ev| match ev {
        Named::Present(s) => apply(&s),
        Named::Missing { deleted: false } => {
            tracing::info!("{missing}; identity is off until it appears");
            publish(tx, State::Missing(missing.clone()));
        }
        Named::Missing { deleted: true } => {
            tracing::warn!("{missing} (deleted); identity is off until it is back");
            publish(tx, State::Missing(missing.clone()));
        }
        Named::Failed(e) => tracing::warn!(
            "watching the identity Secret {namespace}/{name}: {}",
            error_chain(&e)
        ),
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_tied_to_the_next_issuer() {
        let a = [7u8; 32];
        let b = [8u8; 32];
        let text = marker_text(Phase::Reissuing, &a);
        assert_eq!(parse_marker(&text, &a), Some(Phase::Reissuing));
        assert_eq!(parse_marker(&text, &b), None);
        assert_eq!(parse_marker("garbage", &a), None);
    }
}
