//! `meshctl install` and `meshctl upgrade`: values from `-f`/`--set` (and, for upgrade, the
//! installed `mesh-config`), certificates generated, read from files or kept from the
//! cluster, every object rendered by `mesh_manifests`, then printed or applied.
//!
//! Nothing is printed or applied unless every value, file and certificate is good: a bad
//! input ends the command before the first write.

use mesh_manifests::certificates::{self, CertFiles};
use mesh_manifests::Values;
use serde_json::Value;

use crate::apply;
use crate::args::{
    ApplyArgs, IdentityFileArgs, InstallArgs, RenderFormat, UpgradeArgs, ValuesArgs,
};
use crate::cluster::{self, Cluster};
use crate::error::{self, Problem};
use crate::kinds::Kind;

/// Runs on a current-thread runtime; returns the exit code.
fn block_on(fut: impl std::future::Future<Output = Result<(), Vec<Problem>>>) -> u8 {
    let Some(runtime) = crate::cluster::runtime() else {
        return 1;
    };
    match runtime.block_on(fut) {
        Ok(()) => 0,
        Err(problems) => {
            error::print_all(&problems);
            1
        }
    }
}

pub fn install(args: InstallArgs) -> u8 {
    block_on(install_async(args))
}

pub fn upgrade(args: UpgradeArgs) -> u8 {
    block_on(upgrade_async(args))
}

/// Applies `-f` files, then `--set`s, over `values`.
pub fn apply_overrides(values: &mut Values, args: &ValuesArgs) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    for file in &args.files {
        let subject = file.display().to_string();
        match std::fs::read_to_string(file) {
            Ok(text) => {
                if let Err(e) = values.merge_yaml(&text, &subject) {
                    problems.push(Problem::input(&subject, e.to_string()));
                }
            }
            Err(e) => problems.push(Problem::input(
                &subject,
                format!("cannot read the values file: {e}"),
            )),
        }
    }
    for expr in &args.set {
        if let Err(e) = values.set(expr) {
            problems.push(Problem::input(&format!("--set {expr}"), e.to_string()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn namespace_of(values: &Values) -> String {
    values
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("mesh-system")
        .to_string()
}

/// The certificates of an existing installation, put into `values` where they are empty.
/// Returns whether an installation's identity Secret was found.
async fn keep_installed_certificates(
    cluster: &Cluster,
    values: &mut Values,
    skip_identity: bool,
) -> Result<bool, Vec<Problem>> {
    let namespace = namespace_of(values);
    let secret_kind = Kind::of(&serde_json::json!({"apiVersion": "v1", "kind": "Secret"}))
        .ok_or_else(|| {
            vec![Problem::input(
                "install",
                "the Secret kind is missing from meshctl's table",
            )]
        })?;
    let mut found_identity = false;
    for secret in [
        mesh_manifests::render::IDENTITY_SECRET,
        mesh_manifests::render::WEBHOOK_SECRET,
    ] {
        let Some(obj) = apply::get(cluster, secret_kind, &namespace, secret)
            .await
            .map_err(|p| vec![p])?
        else {
            continue;
        };
        if secret == mesh_manifests::render::IDENTITY_SECRET {
            found_identity = true;
            if skip_identity {
                continue;
            }
        }
        for (path, name, key) in mesh_manifests::render::SECRET_DATA {
            if name != secret {
                continue;
            }
            let given = values
                .get(path)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if given {
                continue;
            }
            let Some(pem) = secret_value(&obj, key) else {
                continue;
            };
            values
                .set_string(path, &pem)
                .map_err(|e| vec![Problem::input(path, e.to_string())])?;
        }
    }
    Ok(found_identity)
}

/// A key of a Secret's `data` (base64), decoded as text.
fn secret_value(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine;
    let b64 = secret.get("data")?.get(key)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

fn cert_files(args: &IdentityFileArgs) -> CertFiles {
    CertFiles {
        trust_anchor: args.identity_trust_anchor_file.clone(),
        issuer_cert: args.identity_issuer_cert_file.clone(),
        issuer_key: args.identity_issuer_key_file.clone(),
    }
}

async fn connect(args: &ApplyArgs) -> Result<Cluster, Vec<Problem>> {
    cluster::connect(
        args.cluster.kubeconfig.as_deref(),
        args.cluster.context.as_deref(),
    )
    .await
    .map(|(c, _)| c)
    .map_err(|p| vec![p])
}

fn check_print_flags(apply: &ApplyArgs, output: Option<RenderFormat>) -> Result<(), Vec<Problem>> {
    if apply.apply && output.is_some() {
        return Err(vec![Problem::input(
            "-o/--output",
            "formats the printed objects; with --apply nothing is printed (drop one of them)",
        )]);
    }
    Ok(())
}

async fn install_async(args: InstallArgs) -> Result<(), Vec<Problem>> {
    check_print_flags(&args.apply, args.output)?;
    let mut values = Values::defaults();
    apply_overrides(&mut values, &args.values)?;
    let cluster = if args.apply.apply {
        Some(connect(&args.apply).await?)
    } else {
        None
    };
    if let Some(cluster) = &cluster {
        let identity_given = args.identity.identity_trust_anchor_file.is_some()
            || args.identity.identity_issuer_cert_file.is_some();
        keep_installed_certificates(cluster, &mut values, identity_given).await?;
    }
    let generated = certificates::fill(&mut values, &cert_files(&args.identity))
        .map_err(|e| vec![Problem::input("certificates", e.to_string())])?;
    for what in &generated {
        eprintln!("generated {what}");
    }
    finish(cluster, values, &args.apply, args.output, "install").await
}

async fn upgrade_async(args: UpgradeArgs) -> Result<(), Vec<Problem>> {
    check_print_flags(&args.apply, args.output)?;
    let cluster = connect(&args.apply).await?;
    // The namespace to look in: from the overrides, else the default.
    let mut probe = Values::defaults();
    apply_overrides(&mut probe, &args.values)?;
    let namespace = namespace_of(&probe);
    let cm_kind = Kind::of(&serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap"}))
        .ok_or_else(|| {
            vec![Problem::input(
                "upgrade",
                "the ConfigMap kind is missing from meshctl's table",
            )]
        })?;
    let Some(config) = apply::get(
        &cluster,
        cm_kind,
        &namespace,
        mesh_manifests::render::CONFIG_MAP,
    )
    .await
    .map_err(|p| vec![p])?
    else {
        return Err(vec![Problem::input(
            &format!("configmap \"mesh-config\" in namespace \"{namespace}\""),
            "does not exist, so there is no installation to upgrade here; run `meshctl install` (or give --set namespace=NS)",
        )]);
    };
    let installed_version = config
        .pointer("/data/version")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let mut values = if args.reset_values {
        Values::defaults()
    } else {
        let text = config
            .pointer("/data/values.yaml")
            .and_then(Value::as_str)
            .unwrap_or("");
        let (values, dropped) = Values::from_installed(text).map_err(|e| {
            vec![Problem::input(
                &format!(
                    "configmap \"mesh-config\" in namespace \"{namespace}\" (key values.yaml)"
                ),
                format!("{e}; fix the ConfigMap or run with --reset-values"),
            )]
        })?;
        for key in dropped {
            eprintln!(
                "note: the installed value {key} is not known to this version and is dropped"
            );
        }
        values
    };
    apply_overrides(&mut values, &args.values)?;
    if namespace_of(&values) != namespace {
        return Err(vec![Problem::input(
            "namespace",
            "cannot be changed by an upgrade; uninstall and install again to move the mesh",
        )]);
    }
    let found = keep_installed_certificates(&cluster, &mut values, false).await?;
    if !found {
        return Err(vec![Problem::input(
            &format!("secret \"mesh-identity\" in namespace \"{namespace}\""),
            "does not exist: upgrade keeps the installed trust anchor and issuer and will not make new ones; restore the Secret, or run `meshctl install --apply`",
        )]);
    }
    // Only the webhook certificate can be missing here (it is re-generated if so).
    let generated = certificates::fill(&mut values, &CertFiles::default())
        .map_err(|e| vec![Problem::input("certificates", e.to_string())])?;
    for what in &generated {
        eprintln!("generated {what}");
    }
    eprintln!(
        "upgrading the mesh in namespace \"{namespace}\" from {installed_version} to {}",
        env!("CARGO_PKG_VERSION")
    );
    finish(Some(cluster), values, &args.apply, args.output, "upgrade").await
}

/// Renders, then prints or applies (and waits).
async fn finish(
    cluster: Option<Cluster>,
    values: Values,
    apply_args: &ApplyArgs,
    output: Option<RenderFormat>,
    verb: &str,
) -> Result<(), Vec<Problem>> {
    let objects = mesh_manifests::render(&values)
        .map_err(|e| vec![Problem::input("values", e.to_string())])?;
    if !apply_args.apply {
        let text = match output.unwrap_or(RenderFormat::Yaml) {
            RenderFormat::Yaml => mesh_manifests::to_yaml(&objects),
            RenderFormat::Json => {
                let list =
                    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
                serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
            }
            RenderFormat::Values => serde_yaml_ng::to_string(&values.to_json()).map_err(|e| {
                vec![Problem::input(
                    "values",
                    format!("cannot write them as YAML: {e}"),
                )]
            })?,
        };
        print!("{text}");
        return Ok(());
    }
    let Some(cluster) = cluster else {
        return Err(vec![Problem::input(
            verb,
            "no cluster connection (a bug: please report it)",
        )]);
    };
    let objects = skip_newer_gateway_crds(&cluster, objects).await?;
    apply::apply_all(&cluster, &objects)
        .await
        .map_err(|p| vec![p])?;
    if apply_args.no_wait {
        return Ok(());
    }
    let namespace = namespace_of(&values);
    apply::wait_ready(&cluster, &objects, &namespace, apply_args.wait_timeout)
        .await
        .map_err(|p| vec![p])?;
    eprintln!(
        "the mesh {} is {verb}ed in namespace \"{namespace}\"; run `meshctl check` to verify it",
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}

/// Gateway API CRDs already on the cluster at the same or a newer bundle version, and not
/// installed by the mesh, are left as they are.
async fn skip_newer_gateway_crds(
    cluster: &Cluster,
    objects: Vec<Value>,
) -> Result<Vec<Value>, Vec<Problem>> {
    const BUNDLE: &str = "gateway.networking.k8s.io/bundle-version";
    let mut out = Vec::with_capacity(objects.len());
    for obj in objects {
        let ours = obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(BUNDLE))
            .and_then(Value::as_str)
            .map(str::to_string);
        let (Some(ours), Some(kind)) = (ours, Kind::of(&obj)) else {
            out.push(obj);
            continue;
        };
        let name = crate::kinds::name_of(&obj).0.to_string();
        let live = apply::get(cluster, kind, "", &name)
            .await
            .map_err(|p| vec![p])?;
        let theirs = live.as_ref().and_then(|l| {
            let labeled = l.pointer("/metadata/labels/app.kubernetes.io~1part-of")
                == Some(&Value::from("mesh"));
            if labeled {
                return None;
            }
            l.pointer("/metadata/annotations")
                .and_then(|a| a.get(BUNDLE))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        match theirs {
            Some(theirs) if bundle_version(&theirs) >= bundle_version(&ours) => {
                eprintln!(
                    "customresourcedefinition \"{name}\" kept: Gateway API {theirs} is installed (the mesh needs {ours} or later)"
                );
            }
            _ => out.push(obj),
        }
    }
    Ok(out)
}

/// `v1.5.1` as comparable numbers (anything unparsable is oldest).
fn bundle_version(v: &str) -> Vec<u64> {
    v.trim_start_matches('v')
        .split(['.', '-'])
        .map_while(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::bundle_version;

    #[test]
    fn bundle_versions_compare_numerically() {
        assert!(bundle_version("v1.10.0") > bundle_version("v1.5.1"));
        assert!(bundle_version("v1.5.1") >= bundle_version("v1.5.1"));
        assert!(bundle_version("v1.3.0") < bundle_version("v1.5.1"));
        assert!(bundle_version("junk") < bundle_version("v0.1.0"));
    }
}
