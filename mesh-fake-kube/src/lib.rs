//! A small fake Kubernetes API server for tests.
//!
//! [`FakeApiServer::start`] serves the Kubernetes REST API over plain HTTP on
//! `127.0.0.1:<random port>`, from its own thread with its own tokio runtime, so it keeps
//! serving whatever the test's runtime does (blocks, is single-threaded, or is not there at
//! all). Clients reach it through an ordinary kubeconfig ([`FakeApiServer::write_kubeconfig`],
//! [`FakeApiServer::kubeconfig_yaml`]), so a real kube-rs client ([`FakeApiServer::client`])
//! and real binaries started with `KUBECONFIG` work unchanged.
//!
//! ```no_run
//! # async fn demo() {
//! use mesh_fake_kube::FakeApiServer;
//!
//! let server = FakeApiServer::start();
//! let client = server.client().await;
//! // ... use `client` as against a real cluster; inspect or disturb the server directly:
//! let svc = server.object("v1", "services", Some("default"), "web");
//! server.drop_watches(); // every watch connection ends; clients must resume
//! # }
//! ```
//!
//! # What it serves
//!
//! - Discovery: `/version` (Kubernetes 1.32 unless [`FakeApiServer::set_server_version`]
//!   says otherwise), `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//!   `/apis/{group}/{version}`, and aggregated discovery (`apidiscovery.k8s.io/v2`) at `/api`
//!   and `/apis` when asked for by `Accept`. kube-rs `Discovery::run`,
//!   `Discovery::run_aggregated` and `discovery::pinned_kind` work.
//! - Kinds: core `v1` namespaces, nodes, services, pods, serviceaccounts, endpoints,
//!   configmaps, secrets, events; `apps/v1` deployments, replicasets, statefulsets,
//!   daemonsets; `discovery.k8s.io/v1` endpointslices; `coordination.k8s.io/v1` leases;
//!   `rbac.authorization.k8s.io/v1` cluster roles, cluster role bindings, roles and role
//!   bindings; `policy/v1` pod disruption budgets;
//!   `events.k8s.io/v1` events;
//!   `apiextensions.k8s.io/v1` customresourcedefinitions; `admissionregistration.k8s.io/v1`
//!   mutating and validating webhook configurations; and, as CRD objects present from the
//!   start, Gateway API `gateway.networking.k8s.io/v1` httproutes, grpcroutes, gateways,
//!   gatewayclasses and `v1beta1` referencegrants. Namespaces `default`, `kube-system`,
//!   `kube-public` and `kube-node-lease` exist from the start.
//! - More kinds: creating a CustomResourceDefinition through the API serves its kinds (every
//!   served version, its scope, its status subresource); deleting it removes them and their
//!   objects. [`FakeApiServer::register`] serves a kind without a CRD object.
//! - Verbs, on namespaced, all-namespaces and cluster-scoped paths: list (with
//!   `labelSelector`, `fieldSelector`, `limit`/`continue`), watch, get, create (with
//!   `generateName`), update, patch (merge, strategic merge, JSON patch, server-side apply),
//!   delete (with finalizers and preconditions), deletecollection, `dryRun=All`; `/status`
//!   get, update and patch for kinds with a status subresource. Errors are `Status` objects
//!   (`NotFound`, `AlreadyExists`, `Conflict`, `BadRequest`, `Invalid`, `Expired`,
//!   `MethodNotAllowed`, `UnsupportedMediaType`), which kube-rs reports as `kube::Error::Api`.
//! - Watches: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`,
//!   `ERROR`). Without a resourceVersion (or with `0`) a watch starts with a synthetic
//!   `ADDED` per object; from resourceVersion `N` it replays what happened after `N`. With
//!   `allowWatchBookmarks=true` it sends a BOOKMARK after the replay and then every
//!   bookmark interval ([`Builder::bookmark_interval`], 1 s by default).
//!   `sendInitialEvents=true` (streaming lists, kube-rs `watcher::Config::streaming_lists`)
//!   ends the initial events with a BOOKMARK annotated `k8s.io/initial-events-end: "true"`.
//!   `timeoutSeconds` ends the stream. A watch from a resourceVersion older than the last
//!   [`FakeApiServer::compact`] gets a 200 response and then an `ERROR` event carrying a
//!   410 `Expired` Status, as from a real server. A label change that makes an object
//!   (un)match a selector is reported as `ADDED`/`DELETED`.
//! - Every write bumps one global resourceVersion (an increasing integer) and records an
//!   event in the history watches replay from. A write that changes nothing keeps the
//!   resourceVersion. Writes to anything but metadata (and `.status`, for kinds with a status
//!   subresource) bump `metadata.generation`.
//! - Service-account tokens: `POST /api/v1/namespaces/{ns}/serviceaccounts/{sa}/token`
//!   (TokenRequest: `spec.audiences`, `spec.expirationSeconds` of at least 600, the
//!   ServiceAccount must exist) returns `status.token` and `status.expirationTimestamp`;
//!   [`FakeApiServer::issue_token`] issues one without a request (any lifetime).
//!   `POST /apis/authentication.k8s.io/v1/tokenreviews` checks tokens this server issued:
//!   an unknown token, an expired one, one with no audience among `spec.audiences` (the
//!   default audience `https://kubernetes.default.svc.cluster.local` when empty), or one
//!   whose ServiceAccount was deleted gets `status.authenticated: false` and an `error`;
//!   otherwise `status.user` (`system:serviceaccount:<ns>:<sa>`, the ServiceAccount's uid,
//!   its groups) and `status.audiences`.
//! - Access reviews: `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` answers
//!   `status.allowed: true` for everything, except what a test denied with
//!   [`FakeApiServer::deny_access`] (verb, group, resource; `*` matches any); non-resource
//!   attributes are always allowed. Not listed in discovery.
//! - Pod proxy: `GET /api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/{path}` (also
//!   `{name}` for port 80 and `http:{name}:{port}`) forwards over plain HTTP/1.1 to the
//!   address registered with [`FakeApiServer::route_pod_port`] and returns its status,
//!   `Content-Type` and body; 404 when the Pod does not exist, 503 `ServiceUnavailable` when
//!   the port has no route or its address does not answer within 5 s. GET only.
//! - A little kind-specific behaviour: Services get a cluster IP from `10.96.0.0/12`,
//!   `type: ClusterIP` and port `protocol`/`targetPort` defaults, and keep their cluster IP on
//!   update; Namespaces get the `kubernetes.io/metadata.name` label and phase `Active`; Pods
//!   start with phase `Pending`; Secret `stringData` is folded into `data`; CRDs are validated
//!   (name, scope, versions, one storage version) and reported `Established`.
//! - Validation as on a real server, on create, update, patch and apply (`dryRun=All` too):
//!   a 422 `Invalid` Status worded as kube-apiserver's (`EndpointSlice.discovery.k8s.io
//!   "web-abc" is invalid: endpoints[0].addresses[0]: Invalid value: "127.0.0.1": may not be
//!   in the loopback range (127.0.0.0/8, ::1/128)`, several errors in brackets) with a
//!   `details.causes[]` entry (`reason`, `message`, `field`) per error. It checks
//!   - names: a DNS subdomain for every kind, an RFC 1123 label for Namespaces, an RFC 1035
//!     label for Services, a path segment (no `/`, `%`, `.` or `..`) for RBAC kinds; a
//!     `generateName` prefix and the name made from it;
//!   - EndpointSlice addresses of type `IPv4`/`IPv6` (a valid address of that family) and
//!     Endpoints `subsets[].addresses[].ip`/`notReadyAddresses[].ip`: not unspecified,
//!     loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, fe80::/10) or link-local
//!     multicast (224.0.0.0/24, ff02::/10); an EndpointSlice's `addressType` and that each
//!     endpoint has an address;
//!   - custom resources of a CRD created through the API against its version's
//!     `openAPIV3Schema`: `type`, `required`, `enum`, `pattern`, `minimum`/`maximum` (and
//!     exclusive), `multipleOf`, `minLength`/`maxLength`, `minItems`/`maxItems`,
//!     `minProperties`/`maxProperties`, `nullable`, `x-kubernetes-int-or-string`, in
//!     kube-openapi's words (`spec.address in body should be at least 2 chars long`). Fields
//!     the schema does not declare are pruned, not refused (kept under
//!     `x-kubernetes-preserve-unknown-fields`), and a `null` for a field that is not
//!     `nullable` is dropped, as for structural schemas. A `/status` write is checked (and
//!     pruned) only in `.status`. On update, errors about values left as they were are
//!     dropped (validation ratcheting, on by default since Kubernetes 1.30), so objects
//!     stored under a looser schema ([`FakeApiServer::upsert_unvalidated`]) stay usable. The
//!     Gateway API CRDs present from the start preserve unknown fields and check nothing.
//!
//! # Test hooks
//!
//! [`FakeApiServer::drop_watches`] ends every open watch (clients see the stream end and must
//! resume from their last resourceVersion); [`FakeApiServer::compact`] forgets the event
//! history (resuming from before it gets 410 Gone, so clients must re-list);
//! [`FakeApiServer::requests`] is the log of every request as `"METHOD path?query"`;
//! [`FakeApiServer::open_watches`] counts connected watches; [`FakeApiServer::object`],
//! [`FakeApiServer::objects`], [`FakeApiServer::upsert`] and [`FakeApiServer::remove`] read
//! and write state without a client; [`FakeApiServer::upsert_unvalidated`] stores an object
//! whose content validation would refuse, as a real server keeps objects stored before their
//! CRD's schema became stricter.
//!
//! # Limits
//!
//! When it disagrees with a real API server, the real one wins: a difference that matters to
//! a test is a bug here, not a behaviour to rely on. Known differences:
//!
//! - No authentication or authorization: any token (or none) is accepted on requests; no
//!   RBAC, no 403s (access reviews answer from [`FakeApiServer::deny_access`] only). Tokens from TokenRequest are opaque random strings, not signed JWTs,
//!   and are not bound to Pods or Secrets (no `boundObjectRef`); `tokenreviews` and the
//!   `token` subresource are not listed in discovery.
//! - No TLS and no protobuf: plain HTTP/1.1 (and h2c) with JSON (YAML accepted on writes).
//! - No admission: no webhooks are called (webhook configurations are only stored), no
//!   admission plugins, no ValidatingAdmissionPolicy, no quota, no LimitRange.
//! - Validation covers only what is listed above. Built-in kinds are otherwise stored as
//!   sent (no Pod, Service or Deployment field validation, no label or annotation syntax
//!   checks). CRD schemas: no defaulting (`default` is ignored, and a `null` for a field with
//!   a default is dropped rather than defaulted), `format` is never checked, no `allOf`/`anyOf`/
//!   `oneOf`/`not`, no `x-kubernetes-list-type`/`-map-type` uniqueness, no CEL
//!   (`x-kubernetes-validations`); ratcheting compares the value at each error's field
//!   only; `metadata` is not checked against the schema, and the CRD's own schema is not
//!   checked for being structural. EndpointSlice `FQDN` addresses are not checked.
//!   CRD conversion is always `None` (only `apiVersion` changes between versions).
//! - Server-side apply does not track field managers (`managedFields` is never set): an
//!   apply merges the applied object over the live one (a JSON merge patch), so fields that a
//!   manager stops applying are not removed, and there are no ownership conflicts; `force` is
//!   accepted and changes nothing.
//! - Strategic merge patch is applied as a JSON merge patch (RFC 7386) after dropping `$`
//!   directives: lists are replaced, not merged by their merge key.
//! - Pagination: `limit`/`continue` are honoured, but later pages show the objects as they
//!   are when the page is read (a real server serves every page from one snapshot); the
//!   list's resourceVersion is that of the first page, so a watch from it sees every change.
//! - Lists with `resourceVersionMatch=Exact` are only served for the latest
//!   resourceVersion (410 otherwise). A resourceVersion newer than the latest is not
//!   rejected or waited for.
//! - No controllers: no Endpoints or EndpointSlices for Services, no Pods for Deployments, no
//!   garbage collection by `ownerReferences`, no graceful Pod termination (deletion is
//!   immediate unless there are finalizers), no `kubernetes` Service in `default`. Deleting a
//!   Namespace deletes its contents at once (objects with finalizers stay, marked for
//!   deletion) instead of going through `Terminating`.
//! - Field selectors: `metadata.name` and `metadata.namespace` for every kind, plus a few
//!   per-kind fields of Pods, Secrets, Events, Namespaces and Nodes; CRD `selectableFields`
//!   are not supported.
//! - No `scale`, `eviction`, `log`, `exec`, `attach`, `portforward`, `binding`,
//!   `approval` or `finalize` subresources, and `proxy` only for Pods (above; no Service or
//!   Node proxy); no Table output (`as=Table`), but
//!   `as=PartialObjectMetadata` (kube-rs `metadata_watcher`) is supported.
//! - Core `v1` Events and `events.k8s.io/v1` Events are stored separately (a real server
//!   serves one set of objects under both).
//! - No OpenAPI documents (`/openapi/v2`, `/openapi/v3`), no `/metrics`.
//! - No API priority and fairness, no rate limiting, no request timeouts other than
//!   `timeoutSeconds` on watches (1800 s without it), no `managedFields`, no `selfLink`.
//! - Bookmarks come every bookmark interval (1 s by default) rather than about once a
//!   minute, and the one right after a watch's replay is sent even without
//!   `sendInitialEvents`.

mod access;
mod defaults;
mod discovery;
mod error;
mod kubeconfig;
mod patch;
mod podproxy;
mod resources;
mod selector;
mod server;
mod store;
mod tokens;
mod util;
mod validation;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

pub use error::ApiError;
pub use resources::ResourceType;

use server::Shared;
use store::Preconditions;

/// Settings for a [`FakeApiServer`]; [`FakeApiServer::builder`] starts with the defaults.
#[derive(Clone, Debug)]
pub struct Builder {
    bookmark_interval: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

impl Builder {
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK event (default 1 s).
    #[must_use]
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Starts the server.
    ///
    /// # Panics
    ///
    /// If it cannot bind a port on 127.0.0.1 or start its thread (see [`Builder::try_start`]).
    pub fn start(self) -> FakeApiServer {
        match self.try_start() {
            Ok(server) => server,
            Err(e) => panic!("fake-kube: cannot start the fake API server: {e}"),
        }
    }

    /// Starts the server: binds `127.0.0.1:0` and serves from a new thread with its own
    /// single-threaded tokio runtime.
    pub fn try_start(self) -> io::Result<FakeApiServer> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(addr, self.bookmark_interval));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-kube-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => server::serve(listener, thread_shared, shutdown_rx).await,
                        Err(e) => tracing::error!("fake-kube: cannot use the listener: {e}"),
                    }
                });
                // Dropping the runtime ends every open connection and watch.
                drop(runtime);
            })?;
        Ok(FakeApiServer {
            shared,
            addr,
            shutdown,
            thread: Some(thread),
        })
    }
}

/// A running fake API server. Dropping it (or [`FakeApiServer::stop`]) shuts it down.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeApiServer {
    /// Starts a server with default settings.
    ///
    /// # Panics
    ///
    /// If it cannot bind a port on 127.0.0.1 or start its thread.
    pub fn start() -> Self {
        Builder::default().start()
    }

    /// Settings for a server, to adjust before [`Builder::start`].
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The address the server listens on (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for the server: cluster `fake-kube` at [`FakeApiServer::url`], a user with
    /// a dummy token, and the current context using namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig::yaml(&self.url())
    }

    /// Writes [`FakeApiServer::kubeconfig_yaml`] to `path` (for `KUBECONFIG=path`).
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// A kube-rs client for the server, built from [`FakeApiServer::kubeconfig_yaml`].
    ///
    /// Call it from the runtime that will use the client (kube spawns its request buffer on
    /// the current runtime).
    ///
    /// # Panics
    ///
    /// If kube rejects the generated kubeconfig (a bug here).
    pub async fn client(&self) -> kube::Client {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let kubeconfig = match Kubeconfig::from_yaml(&self.kubeconfig_yaml()) {
            Ok(k) => k,
            Err(e) => panic!("fake-kube: kube rejects the generated kubeconfig: {e}"),
        };
        let config =
            match kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
            {
                Ok(c) => c,
                Err(e) => panic!("fake-kube: kube rejects the generated kubeconfig: {e}"),
            };
        match kube::Client::try_from(config) {
            Ok(c) => c,
            Err(e) => panic!("fake-kube: cannot build a kube client: {e}"),
        }
    }

    /// Serves another kind, as if a CRD declared it (without creating a CRD object).
    /// Registering the same group, version and plural again replaces the definition.
    pub fn register(&self, resource: ResourceType) {
        self.shared.lock().register(resource);
    }

    fn resolve(&self, api_version: &str, plural: &str) -> Option<ResourceType> {
        self.shared
            .lock()
            .registry()
            .lookup_api_version(api_version, plural)
            .cloned()
    }

    /// One object as a client would read it, or `None` if it (or its kind) does not exist.
    /// `api_version` is `v1` or `group/version`; `namespace` is `None` for cluster-scoped kinds.
    pub fn object(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let rt = self.resolve(api_version, plural)?;
        self.shared.lock().get(&rt, namespace, name).ok()
    }

    /// All objects of a kind, in one namespace or (with `None`) everywhere, in
    /// (namespace, name) order.
    pub fn objects(&self, api_version: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some(rt) = self.resolve(api_version, plural) else {
            return Vec::new();
        };
        let filter = watch::Filter {
            namespace: namespace.map(String::from),
            ..watch::Filter::default()
        };
        self.shared
            .lock()
            .list(&rt, &filter, &store::ListOptions::default())
            .ok()
            .and_then(|list| list.get("items").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    }

    /// Creates or replaces an object given with `apiVersion`, `kind` and `metadata.name`
    /// (namespaced objects without a namespace go to `default`), without a client. Its
    /// `status`, if any, is written too. Watches see the change as from any other client.
    pub fn upsert(&self, object: Value) -> Result<Value, ApiError> {
        self.shared.lock().upsert(object)
    }

    /// [`FakeApiServer::upsert`] without the checks of the object's content (EndpointSlice
    /// and Endpoints addresses, a custom resource's schema; unknown fields are not pruned);
    /// its name is still checked. For objects a real server holds although its validation
    /// would refuse them now: stored before their CRD's schema became stricter, or while
    /// validation was off. Everything else should go through [`FakeApiServer::upsert`].
    pub fn upsert_unvalidated(&self, object: Value) -> Result<Value, ApiError> {
        self.shared.lock().upsert_unvalidated(object)
    }

    /// Deletes an object without a client (finalizers still delay the deletion).
    pub fn remove(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let rt = self.resolve(api_version, plural).ok_or_else(|| {
            ApiError::bad_request(format!("{plural} is not served at {api_version}"))
        })?;
        self.shared
            .lock()
            .delete(&rt, namespace, name, &Preconditions::default(), false)
    }

    /// A service-account token for `namespace/service_account`, valid for `audiences` (the
    /// server's default audience when empty) for `ttl`, as a TokenRequest would return it;
    /// TokenReviews accept it until it expires. Unlike a TokenRequest through the API, the
    /// ServiceAccount need not exist (if it does, deleting it invalidates the token) and
    /// any `ttl` is accepted, even zero (an expired token).
    pub fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        ttl: Duration,
    ) -> String {
        let uid = self
            .object("v1", "serviceaccounts", Some(namespace), service_account)
            .and_then(|sa| store::meta_str(&sa, "uid"));
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        self.shared
            .tokens()
            .issue(namespace, service_account, uid, audiences, ttl)
            .0
    }

    /// Makes `/version` report Kubernetes `major.minor` (default 1.32).
    pub fn set_server_version(&self, major: u32, minor: u32) {
        *self.shared.server_version() = (major, minor);
    }

    /// Makes SelfSubjectAccessReviews for `verb` on `resource` of API `group` (`""` for the
    /// core group; `resource` is the plural, or `plural/subresource`) answer "not allowed".
    /// `*` in any argument matches every value. Requests themselves are still served: only
    /// the reviews are affected.
    pub fn deny_access(&self, verb: &str, group: &str, resource: &str) {
        self.shared.access().deny(verb, group, resource);
    }

    /// Undoes every [`FakeApiServer::deny_access`].
    pub fn allow_all_access(&self) {
        self.shared.access().allow_all();
    }

    /// Routes the pod proxy subresource for port `port` of Pod `namespace/pod` to `addr`
    /// (a plain HTTP/1.1 server the test runs, e.g. a fake proxy admin endpoint).
    pub fn route_pod_port(&self, namespace: &str, pod: &str, port: u16, addr: SocketAddr) {
        self.shared.pod_routes().insert(namespace, pod, port, addr);
    }

    /// Removes a route set with [`FakeApiServer::route_pod_port`] (the port then gets 503).
    pub fn unroute_pod_port(&self, namespace: &str, pod: &str, port: u16) {
        self.shared.pod_routes().remove(namespace, pod, port);
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }

    /// Ends every open watch stream. Changes already queued are still sent; then the
    /// response ends, as when a real server's watch times out. Clients must resume from
    /// their last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared.lock().drop_watches();
    }

    /// Forgets the event history, like an etcd compaction at the latest resourceVersion: a
    /// later watch from an older resourceVersion gets an `ERROR` event with a 410 `Expired`
    /// Status, and continuing an older paginated list gets 410. Open watches are not affected
    /// (combine with [`FakeApiServer::drop_watches`] to force clients to re-list).
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Number of watch requests currently streaming to a connected client.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches()
    }

    /// Every request so far, in order, as `"METHOD path?query"` (the raw, still
    /// percent-encoded path and query), e.g.
    /// `"GET /api/v1/namespaces/default/services?watch=true&resourceVersion=12"`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests().clone()
    }

    /// Number of requests so far.
    pub fn request_count(&self) -> usize {
        self.shared.requests().len()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.shared.requests().clear();
    }

    /// Shuts the server down and waits for its thread; open connections are closed.
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    fn shutdown_and_join(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("fake-kube: the server thread panicked");
            }
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}
