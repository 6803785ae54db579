//! `version` (MESH15xx): the ConfigMap `mesh-config` (what the webhook reads its injection
//! defaults from) exists with its `version`, and the control plane runs this meshctl's
//! version (that key and the controller Deployment's `app.kubernetes.io/version` label).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use super::cluster;
use super::report::Outcome;
use super::{codes, Ctx, CONFIG_MAP, CONTROLLER, VERSION};

const VERSION_LABEL: &str = "app.kubernetes.io/version";

pub async fn run(ctx: &Ctx, out: &mut Vec<Outcome>) -> Option<String> {
    let ns = &ctx.mesh_ns;
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let config_version = match cluster::get_opt(&maps, "the mesh configuration", CONFIG_MAP).await {
        Ok(Some(cm)) => {
            match cm
                .data
                .as_ref()
                .and_then(|d| d.get("version"))
                .filter(|v| !v.is_empty())
            {
                Some(v) => {
                    out.push(Outcome::ok(&codes::CONFIG, ""));
                    v.clone()
                }
                None => {
                    out.push(Outcome::error(
                        &codes::CONFIG,
                        format!("ConfigMap {CONFIG_MAP} has no version key"),
                        "restore it with meshctl upgrade --apply",
                    ));
                    return Some("the installed version is unknown".into());
                }
            }
        }
        Ok(None) => {
            out.push(Outcome::error(
                &codes::CONFIG,
                format!(
                    "ConfigMap {CONFIG_MAP} does not exist in namespace {ns}: the webhook has no \
                     injection defaults and meshctl upgrade cannot read the installed values"
                ),
                "restore it with meshctl upgrade --apply, or install the mesh with meshctl install --apply",
            ));
            return Some("the installed version is unknown".into());
        }
        Err(e) => {
            out.push(Outcome::error(
                &codes::CONFIG,
                e,
                "check that your user may read configmaps in the mesh namespace",
            ));
            return Some("the installed version is unknown".into());
        }
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let deployment_version =
        match cluster::get_opt(&deployments, "the controller Deployment", CONTROLLER).await {
            Ok(d) => d.and_then(|d| d.metadata.labels.and_then(|mut l| l.remove(VERSION_LABEL))),
            Err(e) => {
                out.push(Outcome::error(
                    &codes::CONTROL_PLANE_VERSION,
                    e,
                    "check that your user may read deployments in the mesh namespace",
                ));
                return None;
            }
        };
    out.push(version_outcome(
        &config_version,
        deployment_version.as_deref(),
    ));
    None
}

fn version_outcome(config: &str, deployment: Option<&str>) -> Outcome {
    let fix = format!(
        "upgrade the control plane with this meshctl (meshctl upgrade --apply), or use the \
         meshctl of version {config}"
    );
    if let Some(d) = deployment.filter(|d| *d != config) {
        return Outcome::warning(
            &codes::CONTROL_PLANE_VERSION,
            format!(
                "the controller Deployment is version {d} but ConfigMap {CONFIG_MAP} says {config}: \
                 an install or upgrade did not finish"
            ),
            "run meshctl upgrade --apply again",
        );
    }
    if config == VERSION {
        Outcome::ok(&codes::CONTROL_PLANE_VERSION, VERSION)
    } else {
        Outcome::warning(
            &codes::CONTROL_PLANE_VERSION,
            format!("the control plane is version {config}, this meshctl is {VERSION}"),
            fix,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::Status;
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_outcome(VERSION, Some(VERSION)).status, Status::Ok);
        assert_eq!(version_outcome(VERSION, None).status, Status::Ok);
        assert_eq!(
            version_outcome("0.0.1", Some("0.0.1")).status,
            Status::Warning
        );
        assert!(version_outcome(VERSION, Some("0.0.1"))
            .message
            .contains("did not finish"));
    }
}
