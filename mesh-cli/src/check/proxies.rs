//! `proxies` (MESH16xx, `--proxy`): every meshed pod (annotation `mesh.dev/proxy-version`, or
//! a container `mesh-proxy` among its containers or init containers) in `-n NAMESPACE` or in
//! all namespaces: its proxy container is ready, it runs this meshctl's version (the
//! annotation, else the image tag), and its certificate, read from the proxy's admin
//! `/identity` through the API server's pod proxy (`pods/{name}:4191/proxy/identity`), is
//! valid now, is for the pod's SPIFFE ID (`spiffe://{trustDomain}/ns/{ns}/sa/{serviceAccount}`,
//! the trust domain from the installed values) and chains to the trust anchors of the
//! identity Secret.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use mesh_core::identity::ProxyIdentityStatus;

use super::certs;
use super::cluster::{self, api_error, timed};
use super::install::pod_not_ready;
use super::report::Outcome;
use super::{codes, identity, Ctx, CONFIG_MAP, VERSION};

const PROXY_CONTAINER: &str = mesh_inject::PROXY_CONTAINER;
const PROXY_VERSION_ANNOTATION: &str = mesh_inject::annotations::PROXY_VERSION;
const ADMIN_PORT: u16 = mesh_inject::sidecar::ADMIN_PORT;
/// How many proxies are asked for their identity at once.
const CONCURRENCY: usize = 8;
/// The longest one `/identity` request may take.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(3);

/// One meshed pod.
struct Meshed {
    namespace: String,
    name: String,
    pod: Pod,
}

impl Meshed {
    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn is_meshed(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(PROXY_VERSION_ANNOTATION));
    annotated || proxy_container(pod).is_some()
}

fn proxy_container(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == PROXY_CONTAINER)
}

/// Why the proxy container is not ready, if it is not.
fn proxy_not_ready(pod: &Pod) -> Option<String> {
    if let Some(why) = pod_not_ready(pod).filter(|w| !w.starts_with("not ready")) {
        return Some(format!("pod {why}"));
    }
    let status = pod.status.as_ref()?;
    let found = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|s| s.name == PROXY_CONTAINER);
    match found {
        Some(s) if s.ready => None,
        Some(s) => {
            let waiting = s
                .state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            Some(format!(
                "container {PROXY_CONTAINER} is not ready{waiting}, restarted {} times",
                s.restart_count
            ))
        }
        None => Some(format!("no status for container {PROXY_CONTAINER}")),
    }
}

/// The proxy version: the annotation, else the image tag.
fn proxy_version(pod: &Pod) -> Option<String> {
    if let Some(v) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROXY_VERSION_ANNOTATION))
    {
        return Some(v.clone());
    }
    let image = proxy_container(pod)?.image.clone()?;
    let image = image.split('@').next().unwrap_or_default();
    let (repo, tag) = image.rsplit_once(':')?;
    (!tag.contains('/') && !repo.is_empty()).then(|| tag.trim_start_matches('v').to_string())
}

pub async fn run(ctx: &Ctx, out: &mut Vec<Outcome>) -> Option<String> {
    let api: Api<Pod> = match &ctx.proxy_ns {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let where_ = match &ctx.proxy_ns {
        Some(ns) => format!("namespace {ns}"),
        None => "any namespace".to_string(),
    };
    let pods = match cluster::list(&api, "pods", &ListParams::default()).await {
        Ok(p) => p,
        Err(e) => {
            out.push(Outcome::error(
                &codes::PROXIES_READY,
                e,
                "check that your user may list pods",
            ));
            return Some("the pods cannot be listed".into());
        }
    };
    let meshed: Vec<Meshed> = pods
        .into_iter()
        .filter(|p| {
            let done = p
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
            is_meshed(p) && !done
        })
        .map(|pod| Meshed {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            pod,
        })
        .collect();
    if meshed.is_empty() {
        out.push(Outcome::ok(
            &codes::PROXIES_READY,
            format!("no meshed pods in {where_}"),
        ));
        return Some("there are no meshed pods".into());
    }

    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for m in &meshed {
        match proxy_not_ready(&m.pod) {
            None => ready.push(m),
            Some(why) => not_ready.push(format!("{}: {why}", m.id())),
        }
    }
    out.push(if not_ready.is_empty() {
        Outcome::ok(&codes::PROXIES_READY, format!("{} of {} ready", ready.len(), meshed.len()))
    } else {
        Outcome::error(
            &codes::PROXIES_READY,
            format!("{} of {} proxies not ready:\n{}", not_ready.len(), meshed.len(), not_ready.join("\n")),
            "find out why with kubectl -n NAMESPACE describe pod NAME and kubectl -n NAMESPACE logs NAME \
             -c mesh-proxy; a proxy becomes ready once it has its certificate from the controller",
        )
    });

    let mut old = Vec::new();
    for m in &meshed {
        match proxy_version(&m.pod) {
            Some(v) if v == VERSION => {}
            Some(v) => old.push(format!("{}: {v}", m.id())),
            None => old.push(format!("{}: unknown version", m.id())),
        }
    }
    out.push(if old.is_empty() {
        Outcome::ok(&codes::PROXIES_VERSION, VERSION)
    } else {
        Outcome::error(
            &codes::PROXIES_VERSION,
            format!(
                "old version (this meshctl is {VERSION}):\n{}",
                old.join("\n")
            ),
            "restart the workloads after meshctl upgrade (kubectl -n NAMESPACE rollout restart \
             deploy/NAME): pods get the current proxy when they are created",
        )
    });

    out.push(certificates(ctx, &ready).await);
    None
}

/// MESH1603 for the ready proxies.
async fn certificates(ctx: &Ctx, ready: &[&Meshed]) -> Outcome {
    if ready.is_empty() {
        return Outcome::error(
            &codes::PROXIES_CERTS,
            "no proxy is ready to be asked for its certificate",
            "fix the proxies that are not ready (above)",
        );
    }
    let secret = match identity::secret(ctx).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Outcome::error(
                &codes::PROXIES_CERTS,
                "there is no identity Secret to check the proxies' certificates against",
                "see the identity checks (meshctl check --category identity)",
            )
        }
        Err(e) => {
            return Outcome::error(
                &codes::PROXIES_CERTS,
                e,
                "check that your user may read secrets in the mesh namespace",
            )
        }
    };
    let anchors = match identity::trusted_anchors(&secret) {
        Ok(a) => a.iter().map(|a| a.cert_der().clone()).collect::<Vec<_>>(),
        Err(e) => {
            return Outcome::error(
                &codes::PROXIES_CERTS,
                format!("the identity Secret cannot be read: {e}"),
                "see the identity checks (meshctl check --category identity)",
            )
        }
    };
    let trust_domain = trust_domain(ctx).await;
    let results: Vec<Option<String>> = stream::iter(ready.iter())
        .map(|m| {
            let anchors = &anchors;
            let trust_domain = trust_domain.as_str();
            async move {
                proxy_certificate(ctx, m, anchors, trust_domain)
                    .await
                    .err()
                    .map(|e| format!("{}: {e}", m.id()))
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let problems: Vec<String> = results.into_iter().flatten().collect();
    if problems.is_empty() {
        Outcome::ok(&codes::PROXIES_CERTS, format!("{} checked", ready.len()))
    } else {
        Outcome::error(
            &codes::PROXIES_CERTS,
            problems.join("\n"),
            "a proxy renews its certificate from the controller on its own: check the identity \
             and install checks, then the proxy's log (kubectl -n NAMESPACE logs NAME -c \
             mesh-proxy); restart the pod if it stays broken",
        )
    }
}

/// The trust domain of the installation (`trustDomain` of the installed values in ConfigMap
/// `mesh-config`), `cluster.local` when it cannot be read (the version checks report that).
async fn trust_domain(ctx: &Ctx) -> String {
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.mesh_ns);
    let installed = cluster::get_opt(&maps, "the mesh configuration", CONFIG_MAP)
        .await
        .ok()
        .flatten()
        .and_then(|cm| cm.data?.get("values.yaml").cloned())
        .and_then(|text| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).ok())
        .and_then(|v| v.get("trustDomain")?.as_str().map(String::from));
    installed.unwrap_or_else(|| mesh_identity::DEFAULT_TRUST_DOMAIN.to_string())
}

/// The SPIFFE ID a pod's proxy must have.
fn expected_identity(m: &Meshed, trust_domain: &str) -> String {
    let account = m
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|a| !a.is_empty())
        .unwrap_or("default");
    format!("spiffe://{trust_domain}/ns/{}/sa/{account}", m.namespace)
}

async fn proxy_certificate(
    ctx: &Ctx,
    m: &Meshed,
    anchors: &[rustls_pki_types::CertificateDer<'static>],
    trust_domain: &str,
) -> Result<(), String> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}:{ADMIN_PORT}/proxy/identity",
        m.namespace, m.name
    );
    let request = http::Request::get(&path)
        .body(Vec::new())
        .map_err(|e| format!("cannot build the request {path}: {e}"))?;
    let text = match tokio::time::timeout(
        IDENTITY_TIMEOUT,
        timed("GET /identity", ctx.client.request_text(request)),
    )
    .await
    {
        Err(_) => {
            return Err(format!(
                "its admin endpoint did not answer /identity within {}s",
                IDENTITY_TIMEOUT.as_secs()
            ))
        }
        // A 404 the proxy wrote (text, not a Status of the API server): no identity yet.
        Ok(Err(kube::Error::Api(s))) if s.code == 404 && s.reason != "NotFound" => {
            return Err(format!(
                "the proxy has no certificate yet: {}",
                s.message.trim()
            ))
        }
        Ok(Err(e)) => {
            return Err(format!(
                "cannot read its /identity through the API server's pod proxy: {}",
                api_error(&e)
            ))
        }
        Ok(Ok(t)) => t,
    };
    let status: ProxyIdentityStatus = serde_json::from_str(&text)
        .map_err(|e| format!("its /identity answer is not the expected JSON: {e}"))?;
    let chain = certs::certs_from_pem(&status.certificate_chain_pem, "its certificate chain")?;
    let leaf = certs::info(&chain[0], "its certificate")?;
    match certs::validity(&leaf, ctx.now) {
        certs::Validity::Expired | certs::Validity::NotYetValid => {
            return Err(format!(
                "its certificate {}",
                certs::describe_validity(&leaf, ctx.now)
            ))
        }
        _ => {}
    }
    let expected = expected_identity(m, trust_domain);
    match mesh_identity::leaf::identity_of(&chain[0]) {
        Some(id) if id.as_str() == expected => {}
        Some(id) => {
            return Err(format!(
                "its certificate is for {id}, but the pod runs as {expected}"
            ))
        }
        None => return Err("its certificate has no SPIFFE ID (URI SAN)".to_string()),
    }
    certs::verify_leaf(&chain, anchors, ctx.now)
        .map_err(|e| format!("its certificate ({}) does not verify: {e}", status.identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn meshed_and_versions() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}],
                     "initContainers": [{"name": "mesh-proxy", "image": "reg:5000/mesh-proxy:v0.0.9"}]}
        }));
        assert!(is_meshed(&p));
        assert_eq!(proxy_version(&p).as_deref(), Some("0.0.9"));
        let q = pod(serde_json::json!({
            "metadata": {"name": "b", "annotations": {"mesh.dev/proxy-version": "1.2.3"}},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert!(is_meshed(&q));
        assert_eq!(proxy_version(&q).as_deref(), Some("1.2.3"));
        let r = pod(serde_json::json!({"metadata": {"name": "c"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}));
        assert!(!is_meshed(&r));
        let s = pod(serde_json::json!({"metadata": {"name": "d"},
            "spec": {"containers": [{"name": "mesh-proxy", "image": "reg:5000/mesh-proxy"}]}}));
        assert_eq!(proxy_version(&s), None);
    }
}
