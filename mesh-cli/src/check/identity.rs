//! `identity` (MESH14xx): the identity Secret `mesh-identity` holds a trust bundle and an
//! issuer with its key (read with `mesh_identity::ca`), the issuer is signed by one of the
//! anchors, both are valid now and for more than 60 days, and the anchor rotation phase
//! (`next.*` keys and the `mesh.dev/identity-rotation` annotation, see docs/identity.md).

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use mesh_identity::ca::{anchors_from_pem, Anchor, Issuer};

use super::certs::{self, CertInfo, Validity};
use super::cluster;
use super::report::Outcome;
use super::{codes, secret_text, Ctx, IDENTITY_SECRET};

/// Where the controller records the rotation phase: `<phase> <sha256 of the next issuer>`.
const ROTATION_ANNOTATION: &str = "mesh.dev/identity-rotation";
const KEYS: [&str; 3] = ["trust-anchors.pem", "issuer.crt", "issuer.key"];

/// The CA material of the Secret.
pub struct Material {
    pub anchors: Vec<Anchor>,
    pub issuer: Issuer,
}

/// Reads the material under `prefix` (`""` or `"next."`).
fn material(secret: &Secret, prefix: &str) -> Result<Material, String> {
    let text = |key: &str| secret_text(secret, &format!("{prefix}{key}"));
    let anchors =
        anchors_from_pem(&text(KEYS[0])?).map_err(|e| format!("{prefix}{}: {e}", KEYS[0]))?;
    let issuer = Issuer::from_pem(&text(KEYS[1])?, &text(KEYS[2])?)
        .map_err(|e| format!("{prefix}{} / {prefix}{}: {e}", KEYS[1], KEYS[2]))?;
    Ok(Material { anchors, issuer })
}

/// The identity Secret, or an error message.
pub async fn secret(ctx: &Ctx) -> Result<Option<Secret>, String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.mesh_ns);
    cluster::get_opt(&api, "the identity Secret", IDENTITY_SECRET).await
}

/// The anchors proxies may chain to now: the current ones, and during a rotation the next
/// ones too (in the `reissuing` phase leaves come from the next issuer).
pub fn trusted_anchors(secret: &Secret) -> Result<Vec<Anchor>, String> {
    let mut anchors = material(secret, "")?.anchors;
    if has_next(secret) {
        if let Ok(next) = material(secret, "next.") {
            anchors.extend(next.anchors);
        }
    }
    Ok(anchors)
}

fn has_next(secret: &Secret) -> bool {
    let data = secret.data.as_ref();
    KEYS.iter()
        .any(|k| data.is_some_and(|d| d.contains_key(&format!("next.{k}"))))
}

pub async fn run(ctx: &Ctx, out: &mut Vec<Outcome>) -> Option<String> {
    let ns = &ctx.mesh_ns;
    let fix_secret = format!(
        "the controller signs proxy certificates with Secret {ns}/{IDENTITY_SECRET} (keys \
         trust-anchors.pem, issuer.crt, issuer.key): restore it with meshctl upgrade --apply, \
         which keeps the installed identity, or see docs/identity.md"
    );
    let secret = match secret(ctx).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            out.push(Outcome::error(
                &codes::IDENTITY_SECRET,
                format!("Secret {IDENTITY_SECRET} does not exist in namespace {ns}: proxies get no certificates"),
                fix_secret,
            ));
            return Some("there is no identity Secret".into());
        }
        Err(e) => {
            out.push(Outcome::error(
                &codes::IDENTITY_SECRET,
                e,
                "check that your user may read secrets in the mesh namespace",
            ));
            return Some("the identity Secret cannot be read".into());
        }
    };
    let current = match material(&secret, "") {
        Ok(m) => m,
        Err(e) => {
            out.push(Outcome::error(
                &codes::IDENTITY_SECRET,
                format!("Secret {IDENTITY_SECRET}: {e}"),
                fix_secret,
            ));
            return Some("the identity Secret cannot be read".into());
        }
    };
    out.push(Outcome::ok(
        &codes::IDENTITY_SECRET,
        format!(
            "{} trust anchor(s), issuer '{}'",
            current.anchors.len(),
            current.issuer.subject()
        ),
    ));

    let anchor_infos: Vec<CertInfo> = current
        .anchors
        .iter()
        .filter_map(|a| certs::info(a.cert_der(), "a trust anchor").ok())
        .collect();
    let issuer_info = match certs::info(current.issuer.cert_der(), "the issuer certificate") {
        Ok(i) => i,
        Err(e) => {
            out.push(Outcome::error(&codes::ISSUER_CHAIN, e, fix_secret));
            return Some("the issuer cannot be read".into());
        }
    };
    out.push(chain_outcome(ctx, &current, &issuer_info, &anchor_infos));
    out.push(validity_outcome(
        ctx,
        &codes::ANCHORS_VALID,
        &anchor_infos,
        "make a new trust anchor and rotate to it before this one expires (docs/identity.md, \
         \"Trust-anchor rotation\"); every proxy must trust the new anchor first",
    ));
    out.push(validity_outcome(
        ctx,
        &codes::ISSUER_VALID,
        std::slice::from_ref(&issuer_info),
        "sign a new issuer with the trust anchor's key (mesh-controller identity init) and store \
         it in the identity Secret's issuer.crt and issuer.key; the controller reloads it",
    ));
    out.push(rotation(&secret));
    None
}

/// MESH1402.
fn chain_outcome(
    ctx: &Ctx,
    current: &Material,
    issuer: &CertInfo,
    anchors: &[CertInfo],
) -> Outcome {
    let fix = "sign the issuer with one of the trust anchors (mesh-controller identity init makes \
               a matching pair), or add the anchor that signed it to trust-anchors.pem";
    let all_valid_now = std::iter::once(issuer).chain(anchors).all(|c| {
        matches!(
            certs::validity(c, ctx.now),
            Validity::Valid(_) | Validity::ExpiresSoon(_)
        )
    });
    if all_valid_now {
        // The full check: the key signs, the chain verifies with webpki.
        return match current.issuer.chains_to(&current.anchors) {
            Ok(i) => Outcome::ok(
                &codes::ISSUER_CHAIN,
                format!("by '{}'", current.anchors[i].subject()),
            ),
            Err(e) => Outcome::error(&codes::ISSUER_CHAIN, e.to_string(), fix),
        };
    }
    // Something has expired (reported by its own check): check the signature alone.
    for anchor in &current.anchors {
        if certs::signed_by(current.issuer.cert_der(), anchor.cert_der()).unwrap_or(false) {
            return Outcome::ok(&codes::ISSUER_CHAIN, format!("by '{}'", anchor.subject()));
        }
    }
    let subjects: Vec<String> = current
        .anchors
        .iter()
        .map(|a| format!("'{}'", a.subject()))
        .collect();
    Outcome::error(
        &codes::ISSUER_CHAIN,
        format!(
            "issuer '{}' is not signed by any trust anchor ({})",
            issuer.subject,
            subjects.join(", ")
        ),
        fix,
    )
}

/// MESH1403 / MESH1404: expired or not yet valid fails, within 60 days warns.
fn validity_outcome(
    ctx: &Ctx,
    check: &'static codes::Check,
    certs_: &[CertInfo],
    fix: &str,
) -> Outcome {
    let mut failed = Vec::new();
    let mut soon = Vec::new();
    let mut fine = Vec::new();
    for c in certs_ {
        let text = certs::describe_validity(c, ctx.now);
        match certs::validity(c, ctx.now) {
            Validity::Expired | Validity::NotYetValid => failed.push(text),
            Validity::ExpiresSoon(_) => soon.push(text),
            Validity::Valid(_) => fine.push(text),
        }
    }
    if !failed.is_empty() {
        let mut lines = failed;
        lines.extend(soon);
        Outcome::error(check, lines.join("\n"), fix)
    } else if !soon.is_empty() {
        Outcome::warning(
            check,
            format!(
                "{}: less than {} left",
                soon.join("\n"),
                certs::days(certs::EXPIRY_WARNING)
            ),
            fix,
        )
    } else {
        Outcome::ok(check, fine.join("; "))
    }
}

/// MESH1405.
fn rotation(secret: &Secret) -> Outcome {
    if !has_next(secret) {
        return Outcome::ok(&codes::ROTATION, "idle (no rotation in progress)");
    }
    let hint = "the controller moves through distributing, reissuing and retiring as every \
                connected proxy follows; wait for it (meshctl check --wait 10m), and see \
                docs/identity.md, \"Trust-anchor rotation\", if it does not move";
    let next =
        match material(secret, "next.") {
            Ok(n) => n,
            Err(e) => return Outcome::error(
                &codes::ROTATION,
                format!("a rotation was started but its material is broken: {e}"),
                "give all three keys next.trust-anchors.pem, next.issuer.crt and next.issuer.key \
                 (docs/identity.md, \"Trust-anchor rotation\"), or remove them to cancel",
            ),
        };
    if let Err(e) = next.issuer.chains_to(&next.anchors) {
        return Outcome::error(
            &codes::ROTATION,
            format!("the next issuer does not chain to the next anchors: {e}"),
            "make the next anchor and issuer as a pair (mesh-controller identity init --dir \
             ./ca-next) and store them again",
        );
    }
    let next_sha = mesh_identity::hex(&next.issuer.sha256());
    let phase = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATION_ANNOTATION))
        .and_then(|m| {
            let (phase, sha) = m.trim().split_once(' ')?;
            (sha.trim() == next_sha).then(|| phase.to_string())
        })
        .unwrap_or_else(|| "distributing".to_string());
    Outcome::warning(
        &codes::ROTATION,
        format!("a trust anchor rotation is in progress: phase {phase}"),
        hint,
    )
}
