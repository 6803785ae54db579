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
//! Losing the API server is logged once (with the whole cause chain, e.g. the rustls reason a
//! certificate was refused) and so is its return (`ApiHealth`).
//!
//! Every replica serves proxies from its own watches; only the holder of the Lease writes
//! status conditions (`status.parents[]` of routes, under our controller name, leaving other
//! controllers' entries alone; `status.conditions` of the mesh's own kinds). [`Election`]
//! takes and renews the Lease with resourceVersion-guarded patches, releases it on graceful
//! shutdown and when it could not be renewed within the deadline, and reports its state
//! ([`LeaderStatus`]) to `/status` and the metrics.

use crate::named::error_chain as chain;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use mesh_crds::{AuthorizationPolicy, BackendPolicy, EgressPolicy, Server, Workload};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::index::Input;
use crate::metrics::{KindLabel, Metrics, ReasonLabel, StateLabel};
use crate::objects::{Change, Kind, NamespaceInfo, ObjKey, Object, PodInfo};
use crate::status::{ObjectStatus, StatusReport, CONTROLLER_NAME};

/// Starts one watcher per kind; sends `Synced` once every kind has been listed.
pub fn spawn_watches(client: Client, tx: mpsc::Sender<Input>, metrics: Arc<Metrics>) {
    let pending = Arc::new(AtomicUsize::new(Kind::ALL.len()));
    let ctx = WatchCtx {
        health: Arc::new(ApiHealth::new(client.clone())),
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
    health: Arc<ApiHealth>,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicUsize>,
}

/// How the watches are doing, so that an outage is logged once when it starts and once when
/// it ends, not at every retry of every kind.
///
/// A transport failure (connection refused, TLS refused, timeouts) is an outage of the API:
/// the first one is logged at `warn` with its whole cause chain (down to e.g. the rustls
/// reason a certificate was refused), the rest at `debug` until the watches resume: a watch
/// delivers an event again, or the API server answers `/version` again (a resumed watch
/// delivers nothing until something changes). An error the API server returns (403, 500) is
/// the problem of one kind: logged per kind and message, at most every 5 minutes.
struct ApiHealth {
    client: Client,
    state: std::sync::Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    /// When the current outage started; `None` while healthy.
    outage: Option<std::time::Instant>,
    /// A task is probing `/version`.
    probing: bool,
    /// API errors already logged, by kind, with when.
    logged: HashMap<Kind, (String, std::time::Instant)>,
}

const REPEAT_AFTER: Duration = Duration::from_secs(300);

impl ApiHealth {
    fn new(client: Client) -> Self {
        Self {
            client,
            state: std::sync::Mutex::new(HealthState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A watch error of `kind`.
    fn failed(self: &Arc<Self>, kind: Kind, e: &watcher::Error) {
        let api_status = match e {
            watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.as_ref()),
            watcher::Error::WatchError(s) => Some(s.as_ref()),
            _ => None,
        };
        let text = chain(e);
        if let Some(status) = api_status {
            if status.code == 410 {
                tracing::debug!(%kind, "watch history expired; listing again");
                return;
            }
            let mut st = self.lock();
            let now = std::time::Instant::now();
            let repeat = st
                .logged
                .get(&kind)
                .is_none_or(|(prev, at)| *prev != text || now.duration_since(*at) >= REPEAT_AFTER);
            if repeat {
                st.logged.insert(kind, (text.clone(), now));
                drop(st);
                tracing::warn!(%kind, "the API server refused the watch (retrying with backoff): {text}");
            } else {
                tracing::debug!(%kind, "watch error (retrying with backoff): {text}");
            }
            return;
        }
        let start_probe = {
            let mut st = self.lock();
            if st.outage.is_some() {
                tracing::debug!(%kind, "watch error (retrying with backoff): {text}");
                false
            } else {
                st.outage = Some(std::time::Instant::now());
                tracing::warn!(%kind, "lost the Kubernetes API (watches retry with backoff; logged once until they resume): {text}");
                !std::mem::replace(&mut st.probing, true)
            }
        };
        if start_probe {
            let this = self.clone();
            tokio::spawn(async move { this.probe().await });
        }
    }

    /// A watch of `kind` delivered an event.
    fn flowing(&self, kind: Kind) {
        let mut st = self.lock();
        st.logged.remove(&kind);
        Self::resumed(&mut st);
    }

    fn resumed(st: &mut HealthState) {
        if let Some(since) = st.outage.take() {
            tracing::info!(
                "the Kubernetes API answers again after {}s; watches resume from where they stopped",
                since.elapsed().as_secs()
            );
        }
    }

    /// While the API is lost, asks for `/version` every 2 s; the first answer ends the outage.
    async fn probe(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            {
                let mut st = self.lock();
                if st.outage.is_none() {
                    st.probing = false;
                    return;
                }
            }
            if self.client.apiserver_version().await.is_ok() {
                let mut st = self.lock();
                Self::resumed(&mut st);
                st.probing = false;
                return;
            }
        }
    }
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
            // `Init` starts every list attempt, even one about to fail: not a sign of life.
            if matches!(&event, Ok(e) if !matches!(e, watcher::Event::Init)) {
                self.health.flowing(kind);
            }
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
                        self.health.failed(kind, &e);
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

/// How leader election is tuned (client-go's defaults, but for the follower): a Lease lasts
/// `ttl`; the leader renews it every `retry`; it stops writing status when it could not renew
/// for `renew_deadline` (shorter than the TTL, so that it stops before another replica may
/// take over). A follower reads the Lease every `follower_retry` and takes it as soon as it is
/// released (no holder) or expired, so a graceful handover takes about that long.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
    pub follower_retry: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            follower_retry: Duration::from_millis(500),
        }
    }
}

/// Where this replica stands in the election, for `/status` and the
/// `mesh_controller_leader` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LeaderState {
    /// Not yet tried.
    Starting,
    /// This replica holds the Lease and writes status conditions.
    Leading,
    /// Another replica holds the Lease.
    Following,
    /// The Lease cannot be read or written (see the reason); nobody may be writing status.
    Error,
}

impl LeaderState {
    pub const ALL: [LeaderState; 4] = [
        LeaderState::Starting,
        LeaderState::Leading,
        LeaderState::Following,
        LeaderState::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaderState::Starting => "starting",
            LeaderState::Leading => "leading",
            LeaderState::Following => "following",
            LeaderState::Error => "error",
        }
    }
}

/// The `leader` entry of `/status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderStatus {
    pub state: LeaderState,
    /// `namespace/name` of the Lease.
    pub lease: String,
    /// This replica's holder identity.
    pub identity: String,
    /// Who holds the Lease, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Why the state is `error`: `NamespaceMissing`, `Forbidden`, `Unreachable`, `ApiError`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What is wrong and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl LeaderStatus {
    pub fn starting(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            state: LeaderState::Starting,
            lease: format!("{namespace}/{name}"),
            identity: identity.to_string(),
            holder: None,
            reason: None,
            message: None,
        }
    }
}

/// Where to find the Lease, who we are, and how to report.
pub struct Election {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub timing: LeaseTiming,
    pub metrics: Arc<Metrics>,
}

/// Why an election round failed, classified for the status, the metric and the advice.
struct ElectionError {
    reason: &'static str,
    message: String,
}

impl Election {
    fn classify(&self, what: &str, e: &kube::Error) -> ElectionError {
        let ns = &self.namespace;
        match e {
            kube::Error::Api(s)
                if s.code == 404
                    && s.details.as_ref().is_some_and(|d| d.kind == "namespaces") =>
            {
                ElectionError {
                    reason: "NamespaceMissing",
                    message: format!(
                        "the Lease namespace {ns} does not exist; create it (`kubectl create namespace {ns}`; \
                         `meshctl install` creates it) or set --lease-namespace to an existing one. \
                         Until then no replica writes status conditions (proxies are served as usual)"
                    ),
                }
            }
            kube::Error::Api(s) if s.code == 403 => ElectionError {
                reason: "Forbidden",
                message: format!(
                    "cannot {what} the Lease {ns}/{}: {}; grant the controller's service account get, create \
                     and patch on leases (coordination.k8s.io) in {ns}",
                    self.name, s.message
                ),
            },
            kube::Error::Api(s) => ElectionError {
                reason: "ApiError",
                message: format!(
                    "cannot {what} the Lease {ns}/{}: {} ({})",
                    self.name, s.message, s.code
                ),
            },
            other => ElectionError {
                reason: "Unreachable",
                message: format!(
                    "cannot {what} the Lease {ns}/{}: {}",
                    self.name,
                    chain(other)
                ),
            },
        }
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn spec(&self, acquired: bool, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.ttl.as_secs().clamp(1, 3600) as i32),
            acquire_time: if acquired {
                Some(now.clone())
            } else {
                previous.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if acquired && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..previous.cloned().unwrap_or_default()
        }
    }

    /// One round: take a free or expired Lease, renew ours, or see who holds it. Writes
    /// are guarded by the resourceVersion read, so two replicas never both win a round.
    async fn round(&self) -> Result<(bool, Option<String>), ElectionError> {
        let api = self.api();
        let current = api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.classify("read", &e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(true, None)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok((true, Some(self.identity.clone()))),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok((false, None)),
                Err(e) => Err(self.classify("create", &e)),
            };
        };
        let spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && holder.is_some() && !expired(&spec) {
            return Ok((false, holder));
        }
        let next = self.spec(!ours, Some(&spec));
        match self.patch(&api, &lease, &next).await {
            Ok(()) => Ok((true, Some(self.identity.clone()))),
            // Someone else wrote it since we read it (took it, or renewed it).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok((false, None)),
            Err(e) => Err(self.classify("update", &e)),
        }
    }

    /// A merge patch of the spec, on the condition that the Lease is still the version we
    /// read (`metadata.resourceVersion` in a patch is a precondition: 409 otherwise). A patch,
    /// not an update, so that `get`, `create` and `patch` on the Lease suffice.
    async fn patch(
        &self,
        api: &Api<Lease>,
        read: &Lease,
        spec: &LeaseSpec,
    ) -> Result<(), kube::Error> {
        let body = serde_json::json!({
            "metadata": {"resourceVersion": read.metadata.resource_version},
            "spec": spec,
        });
        api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map(|_| ())
    }

    /// Gives the Lease up if we hold it: no holder, a 1 s duration (as client-go does), so
    /// that another replica takes it at once instead of waiting for the TTL.
    pub async fn step_down(&self) -> Result<bool, kube::Error> {
        let api = self.api();
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        self.patch(&api, &lease, &spec).await?;
        Ok(true)
    }

    fn publish(&self, status: &watch::Sender<LeaderStatus>, next: LeaderStatus) {
        for s in LeaderState::ALL {
            self.metrics
                .leader_state
                .get_or_create(&StateLabel { state: s.as_str() })
                .set(i64::from(s == next.state));
        }
        status.send_if_modified(|cur| {
            let changed = *cur != next;
            *cur = next;
            changed
        });
    }

    /// Keeps trying to hold the Lease until `stop` fires; `leader` is true while we hold it
    /// (and renewed it within the renew deadline). On `stop`, a leader stops writing status
    /// and releases the Lease, so that another replica takes over at once.
    pub async fn run(
        self,
        leader: watch::Sender<bool>,
        status: watch::Sender<LeaderStatus>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut last_renew: Option<tokio::time::Instant> = None;
        let mut last_warning: Option<(&'static str, tokio::time::Instant)> = None;
        let mut current = LeaderStatus::starting(&self.namespace, &self.name, &self.identity);
        self.publish(&status, current.clone());
        loop {
            // A leader must know it lost the Lease before the renew deadline passes, however
            // slow the API server is: bound the round by what is left of it.
            let limit = match (current.state, last_renew) {
                (LeaderState::Leading, Some(t)) => self
                    .timing
                    .renew_deadline
                    .saturating_sub(t.elapsed())
                    .clamp(Duration::from_millis(100), ROUND_TIMEOUT),
                _ => ROUND_TIMEOUT,
            };
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = tokio::time::timeout(limit, self.round()) => r.unwrap_or_else(|_| {
                    Err(ElectionError {
                        reason: "Unreachable",
                        message: format!(
                            "the API server did not answer about the Lease {} within {} ms",
                            current.lease,
                            limit.as_millis()
                        ),
                    })
                }),
                _ = stop.changed() => break,
            };
            let now = tokio::time::Instant::now();
            let mut next = current.clone();
            match result {
                Ok((leading, holder)) => {
                    if leading {
                        last_renew = Some(started);
                    }
                    if last_warning.take().is_some() {
                        tracing::info!(lease = %current.lease, "the Lease can be read and written again");
                    }
                    next.state = if leading {
                        LeaderState::Leading
                    } else {
                        LeaderState::Following
                    };
                    next.holder = holder.or(if leading {
                        None
                    } else {
                        current.holder.clone()
                    });
                    next.reason = None;
                    next.message = None;
                }
                Err(e) => {
                    self.metrics
                        .leader_election_errors
                        .get_or_create(&ReasonLabel { reason: e.reason })
                        .inc();
                    // Once per reason, repeated at most every 5 minutes.
                    let repeat = last_warning.is_none_or(|(r, at)| {
                        r != e.reason || now.duration_since(at) >= Duration::from_secs(300)
                    });
                    if repeat {
                        tracing::warn!(lease = %current.lease, reason = e.reason, "leader election: {}", e.message);
                        last_warning = Some((e.reason, now));
                    } else {
                        tracing::debug!(lease = %current.lease, reason = e.reason, "leader election: {}", e.message);
                    }
                    let still_leading = current.state == LeaderState::Leading
                        && last_renew
                            .is_some_and(|t| now.duration_since(t) < self.timing.renew_deadline);
                    next.state = if still_leading {
                        LeaderState::Leading
                    } else {
                        LeaderState::Error
                    };
                    next.reason = Some(e.reason);
                    next.message = Some(e.message);
                }
            }
            let leading = next.state == LeaderState::Leading;
            if leader.send_replace(leading) != leading {
                tracing::info!(holder = %self.identity, leading, "leadership changed");
            }
            if current.state == LeaderState::Leading && !leading && next.state == LeaderState::Error
            {
                tracing::warn!(lease = %current.lease, "could not renew the Lease for {}s; stopped writing status and releasing it", self.timing.renew_deadline.as_secs());
                self.release().await;
            }
            self.publish(&status, next.clone());
            current = next;
            let wait = if leading {
                let left = last_renew.map_or(Duration::ZERO, |t| {
                    self.timing.renew_deadline.saturating_sub(t.elapsed())
                });
                self.timing.retry.min(left)
            } else {
                self.timing.follower_retry
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
            if *stop.borrow() {
                break;
            }
        }
        if leader.send_replace(false) {
            tracing::info!(holder = %self.identity, "stopping: releasing the Lease");
            self.release().await;
        }
    }

    /// Best effort, bounded: on shutdown the process exits soon after.
    async fn release(&self) {
        match tokio::time::timeout(Duration::from_secs(2), self.step_down()).await {
            Ok(Ok(true)) => {
                tracing::info!(lease = %format!("{}/{}", self.namespace, self.name), "released the Lease")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(
                "cannot release the Lease (another replica takes over when it expires): {}",
                chain(&e)
            ),
            Err(_) => tracing::warn!(
                "cannot release the Lease within 2s (another replica takes over when it expires)"
            ),
        }
    }
}

/// The longest one election round (a read and a write of the Lease) may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(4);

/// Whether a Lease held by someone else has run out.
fn expired(spec: &LeaseSpec) -> bool {
    let (Some(renewed), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    let until = renewed
        .0
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
            secs,
        )));
    match until {
        Ok(until) => k8s_openapi::jiff::Timestamp::now() > until,
        Err(_) => false,
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
