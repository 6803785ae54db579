//! Kubernetes backend: watches feeding the index, and status writes by the leader.
//!
//! One kube-rs watcher per kind (Services, EndpointSlices, Pods, Workloads, Servers,
//! BackendPolicies, HTTPRoutes, GRPCRoutes, Namespaces, AuthorizationPolicies,
//! EgressPolicies). Objects are watched untyped and converted one by
//! one, so that a malformed object is skipped and counted instead of failing the whole list
//! and stalling the watch. A (re)list becomes one `Reset` of that kind; watch errors are
//! retried with kube's default backoff, resuming from the last resourceVersion. A kind whose
//! CRD is not installed (404) counts as empty, so a cluster without Gateway API still works.
//!
//! Every replica serves proxies from its own watches; only the holder of the Lease writes
//! status conditions (`status.parents[]` of routes, under our controller name, leaving other
//! controllers' entries alone; `status.conditions` of the mesh's own kinds).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use mesh_crds::{AuthorizationPolicy, BackendPolicy, EgressPolicy, Server, Workload};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::index::Input;
use crate::metrics::{KindLabel, Metrics};
use crate::objects::{Change, Kind, NamespaceInfo, ObjKey, Object, PodInfo};
use crate::status::{ObjectStatus, StatusReport, CONTROLLER_NAME};

/// Starts one watcher per kind; sends `Synced` once every kind has been listed.
pub fn spawn_watches(client: Client, tx: mpsc::Sender<Input>, metrics: Arc<Metrics>) {
    let pending = Arc::new(AtomicUsize::new(Kind::ALL.len()));
    let ctx = WatchCtx {
        client,
        tx,
        metrics,
        pending,
    };
    ctx.spawn::<Service>(Kind::Service, |o| Object::Service(Arc::new(o)));
    ctx.spawn::<EndpointSlice>(Kind::EndpointSlice, |o| Object::EndpointSlice(Arc::new(o)));
    ctx.spawn::<Pod>(Kind::Pod, |o| Object::Pod(Arc::new(PodInfo::from_pod(&o))));
    ctx.spawn::<Workload>(Kind::Workload, |o| Object::Workload(Arc::new(o)));
    ctx.spawn::<Server>(Kind::Server, |o| Object::Server(Arc::new(o)));
    ctx.spawn::<BackendPolicy>(Kind::BackendPolicy, |o| Object::BackendPolicy(Arc::new(o)));
    ctx.spawn::<HttpRoute>(Kind::HttpRoute, |o| Object::HttpRoute(Arc::new(o)));
    ctx.spawn::<GrpcRoute>(Kind::GrpcRoute, |o| Object::GrpcRoute(Arc::new(o)));
    ctx.spawn::<Namespace>(Kind::Namespace, |o| {
        Object::Namespace(Arc::new(NamespaceInfo::from_namespace(&o)))
    });
    ctx.spawn::<AuthorizationPolicy>(Kind::AuthorizationPolicy, |o| {
        Object::AuthorizationPolicy(Arc::new(o))
    });
    ctx.spawn::<EgressPolicy>(Kind::EgressPolicy, |o| Object::EgressPolicy(Arc::new(o)));
}

#[derive(Clone)]
struct WatchCtx {
    client: Client,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicUsize>,
}

impl WatchCtx {
    fn spawn<K>(&self, kind: Kind, wrap: fn(K) -> Object)
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Debug + Send + 'static,
    {
        let ctx = self.clone();
        tokio::spawn(async move { ctx.watch(kind, wrap).await });
    }

    async fn done_initial(&self, first: &mut bool) -> bool {
        if std::mem::take(first) && self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            return self.tx.send(Input::Synced).await.is_ok();
        }
        true
    }

    async fn watch<K>(self, kind: Kind, wrap: fn(K) -> Object)
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Debug + Send + 'static,
    {
        let ar = ApiResource::erase::<K>(&());
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let label = KindLabel {
            kind: kind.as_str(),
        };
        let convert = |o: DynamicObject| -> Option<Object> {
            let key = ObjKey::of(&o);
            let value = match serde_json::to_value(&o) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(%kind, %key, "skipped an object that cannot be encoded: {e}");
                    return None;
                }
            };
            match serde_path_to_error::deserialize::<_, K>(value) {
                Ok(k) => Some(wrap(k)),
                Err(e) => {
                    self.metrics.watch_errors.get_or_create(&label).inc();
                    tracing::warn!(%kind, %key, "skipped a malformed object: {}: {}", e.path(), e.inner());
                    None
                }
            }
        };
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut buffer = Vec::new();
        let mut first = true;
        let mut missing_reported = false;
        while let Some(event) = stream.next().await {
            let change = match event {
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    buffer.extend(convert(o));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    missing_reported = false;
                    let objs = std::mem::take(&mut buffer);
                    tracing::debug!(%kind, count = objs.len(), "listed");
                    if self
                        .tx
                        .send(Change::Reset(kind, objs).into())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if !self.done_initial(&mut first).await {
                        return;
                    }
                    continue;
                }
                Ok(watcher::Event::Apply(o)) => match convert(o) {
                    Some(obj) => Change::Apply(obj),
                    None => continue,
                },
                Ok(watcher::Event::Delete(o)) if kind == Kind::Namespace => {
                    Change::Delete(kind, ObjKey::new("", kube::ResourceExt::name_any(&o)))
                }
                Ok(watcher::Event::Delete(o)) => Change::Delete(kind, ObjKey::of(&o)),
                Err(e) => {
                    self.metrics.watch_errors.get_or_create(&label).inc();
                    let not_installed = matches!(
                        &e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404
                    );
                    if not_installed {
                        if !missing_reported {
                            tracing::warn!(%kind, "the API server does not serve this kind (CRD not installed?); treating it as empty and retrying");
                            missing_reported = true;
                            if self
                                .tx
                                .send(Change::Reset(kind, Vec::new()).into())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        if !self.done_initial(&mut first).await {
                            return;
                        }
                    } else {
                        tracing::warn!(%kind, "watch error (retrying with backoff): {e}");
                    }
                    continue;
                }
            };
            if self.tx.send(change.into()).await.is_err() {
                return;
            }
        }
    }
}

/// Keeps trying to hold the Lease; `leader` is true while we hold it.
pub async fn lead(
    client: Client,
    namespace: String,
    lease_name: String,
    holder: String,
    leader: watch::Sender<bool>,
) {
    use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
    let ttl = Duration::from_secs(15);
    let lock = LeaseLock::new(
        client,
        &namespace,
        LeaseLockParams {
            lease_name: lease_name.clone(),
            holder_id: holder.clone(),
            lease_ttl: ttl,
        },
    );
    loop {
        let leading = match lock.try_acquire_or_renew().await {
            Ok(LeaseLockResult::Acquired(_)) => true,
            Ok(LeaseLockResult::NotAcquired(_)) => false,
            Err(e) => {
                tracing::warn!(lease = %lease_name, "leader election failed: {e}");
                false
            }
        };
        if leader.send_replace(leading) != leading {
            tracing::info!(%holder, leading, "leadership changed");
        }
        tokio::time::sleep(ttl / 3).await;
    }
}

fn api_for(client: &Client, kind: Kind, ns: &str) -> Option<Api<DynamicObject>> {
    let ar = match kind {
        Kind::HttpRoute => ApiResource::erase::<HttpRoute>(&()),
        Kind::GrpcRoute => ApiResource::erase::<GrpcRoute>(&()),
        Kind::BackendPolicy => ApiResource::erase::<BackendPolicy>(&()),
        Kind::Workload => ApiResource::erase::<Workload>(&()),
        Kind::Server => ApiResource::erase::<Server>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Kind::EgressPolicy => ApiResource::erase::<EgressPolicy>(&()),
        _ => return None,
    };
    Some(Api::namespaced_with(client.clone(), ns, &ar))
}

async fn write_status(client: &Client, kind: Kind, st: &ObjectStatus) -> Result<(), kube::Error> {
    let Some(api) = api_for(client, kind, &st.namespace) else {
        return Ok(());
    };
    let body = match kind {
        Kind::HttpRoute | Kind::GrpcRoute => {
            // Keep other controllers' parent entries; replace ours.
            let current = api.get_status(&st.name).await?;
            let mut parents: Vec<serde_json::Value> = current
                .data
                .get("status")
                .and_then(|s| s.get("parents"))
                .and_then(|p| p.as_array())
                .map(|list| {
                    list.iter()
                        .filter(|p| {
                            p.get("controllerName").and_then(|c| c.as_str())
                                != Some(CONTROLLER_NAME)
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for e in &st.entries {
                parents.push(serde_json::json!({
                    "parentRef": e.parent_ref,
                    "controllerName": CONTROLLER_NAME,
                    "conditions": e.conditions,
                }));
            }
            serde_json::json!({ "status": { "parents": parents } })
        }
        _ => {
            let conditions: Vec<_> = st
                .entries
                .iter()
                .flat_map(|e| e.conditions.iter())
                .collect();
            serde_json::json!({ "status": { "conditions": conditions } })
        }
    };
    api.patch_status(&st.name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// Writes changed conditions while we are the leader; retries failures every 10 s.
pub async fn write_statuses(
    client: Client,
    mut report: watch::Receiver<Arc<StatusReport>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut written: HashMap<(Kind, ObjKey), ObjectStatus> = HashMap::new();
    loop {
        if *leader.borrow_and_update() {
            let current = report.borrow_and_update().clone();
            written.retain(|k, _| current.contains_key(k));
            for (key, st) in current.iter() {
                if written.get(key) == Some(st) {
                    continue;
                }
                match write_status(&client, key.0, st).await {
                    Ok(()) => {
                        tracing::debug!(kind = %key.0, object = %key.1, "status written");
                        written.insert(key.clone(), st.clone());
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        // Deleted meanwhile; the next report drops it.
                    }
                    Err(e) => {
                        tracing::warn!(kind = %key.0, object = %key.1, "cannot write status: {e}");
                    }
                }
            }
        } else {
            // Whoever leads next rewrites everything it does not know it wrote.
            written.clear();
        }
        tokio::select! {
            r = report.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Name of this replica for the Lease (the Pod name when running in a cluster).
pub fn holder_identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("mesh-controller-{}", std::process::id()))
}

/// A client for the cluster, configured like kubectl: the kubeconfig from `KUBECONFIG` (or
/// `~/.kube/config`), else the in-cluster service account. The error says once what was
/// tried and what to do, instead of kube's nested messages (which repeat each cause).
pub async fn client_from_environment() -> anyhow::Result<Client> {
    use kube::config::{Config, KubeConfigOptions, KubeconfigError};
    const ADVICE: &str = "set KUBECONFIG to a valid kubeconfig, run the controller in the \
                          cluster, or use --source local to run without Kubernetes";
    let kubeconfig = match Config::from_kubeconfig(&KubeConfigOptions::default()).await {
        Ok(mut config) => {
            config.apply_debug_overrides();
            return Client::try_from(config)
                .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client: {}", chain(&e)));
        }
        Err(KubeconfigError::ReadConfig(e, path)) => {
            let from = if std::env::var_os("KUBECONFIG").is_some() {
                " (from KUBECONFIG)"
            } else {
                ""
            };
            format!("cannot read the kubeconfig {}{from}: {e}", path.display())
        }
        Err(KubeconfigError::FindPath) => {
            "KUBECONFIG is not set and there is no home directory for ~/.kube/config".to_string()
        }
        Err(e) => format!("the kubeconfig is not usable: {}", chain(&e)),
    };
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        anyhow::bail!(
            "cannot reach the Kubernetes API: {kubeconfig}, and this is not a pod \
             (KUBERNETES_SERVICE_HOST is not set); {ADVICE}"
        );
    }
    match Config::incluster() {
        Ok(mut config) => {
            config.apply_debug_overrides();
            Client::try_from(config)
                .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client: {}", chain(&e)))
        }
        Err(e) => anyhow::bail!(
            "cannot reach the Kubernetes API: {kubeconfig}; in-cluster config: {}; {ADVICE}",
            chain(&e)
        ),
    }
}

/// An error and its sources on one line, skipping a source whose message the text already
/// holds (many errors print their source inside their own message).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text = format!("{text}: {msg}");
        }
        cur = s.source();
    }
    text
}
