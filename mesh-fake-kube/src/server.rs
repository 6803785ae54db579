//! HTTP: the accept loop, routing of API paths to discovery and store operations, query
//! parameters, request bodies and responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Access;
use crate::discovery;
use crate::error::ApiError;
use crate::patch::{self, PatchType};
use crate::podproxy::{self, PodRoutes};
use crate::resources::{Registry, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ListOptions, Preconditions, Store, Target, WatchFrom};
use crate::tokens::{self, Tokens};
use crate::util::{parse_query, percent_decode};
use crate::watch::{Filter, Watch};

/// Response body type for every response.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
const MAX_BODY: usize = 16 << 20;

/// A watch without `timeoutSeconds` ends after this long (a real server picks 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// State shared by the server thread and the [`crate::FakeApiServer`] handle.
pub(crate) struct Shared {
    store: Mutex<Store>,
    requests: Mutex<Vec<String>>,
    tokens: Mutex<Tokens>,
    /// What SelfSubjectAccessReviews deny.
    access: Mutex<Access>,
    /// Where the pod proxy subresource forwards to.
    pod_routes: Mutex<PodRoutes>,
    /// The Kubernetes version `/version` reports (major, minor).
    server_version: Mutex<(u32, u32)>,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub(crate) bookmark_interval: Duration,
    /// Where the server listens.
    pub(crate) addr: SocketAddr,
}

impl Shared {
    pub(crate) fn new(addr: SocketAddr, bookmark_interval: Duration) -> Self {
        Self {
            store: Mutex::new(Store::new()),
            requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(Tokens::default()),
            access: Mutex::new(Access::default()),
            pod_routes: Mutex::new(PodRoutes::default()),
            server_version: Mutex::new(discovery::DEFAULT_VERSION),
            bookmark_interval,
            addr,
        }
    }

    /// The store. A panic while holding the lock cannot leave it half-written in a way that
    /// matters for tests, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The service-account tokens issued so far.
    pub(crate) fn tokens(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What SelfSubjectAccessReviews deny.
    pub(crate) fn access(&self) -> MutexGuard<'_, Access> {
        self.access.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pod proxy's routes.
    pub(crate) fn pod_routes(&self) -> MutexGuard<'_, PodRoutes> {
        self.pod_routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The Kubernetes version `/version` reports (major, minor).
    pub(crate) fn server_version(&self) -> MutexGuard<'_, (u32, u32)> {
        self.server_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The request log.
    pub(crate) fn requests(&self) -> MutexGuard<'_, Vec<String>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Accepts connections until `shutdown` changes, serving HTTP/1.1 and h2c on each.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("fake-kube: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // Like a real kube-apiserver (Go sets TCP_NODELAY by default): without it, a
                // watch event written while the previous one is unacknowledged waits for the
                // client's delayed ACK (40 ms on Linux).
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), shutdown.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!("fake-kube: connection ended: {e}");
                    }
                });
            }
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    tracing::debug!("fake-kube: {line}");
    shared.requests().push(line);
    Ok(match dispatch(&shared, shutdown, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!("fake-kube: {e}");
            error_response(&e)
        }
    })
}

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "True" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

/// The parts of a request the handlers need.
struct Call {
    method: Method,
    query: Query,
    accept: String,
    content_type: String,
    body: Incoming,
}

impl Call {
    fn metadata_only(&self) -> bool {
        self.accept.contains("as=PartialObjectMetadata")
    }

    async fn body(self) -> Result<(Bytes, String), ApiError> {
        let bytes = Limited::new(self.body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
            .to_bytes();
        Ok((bytes, self.content_type))
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let query = parse_query(parts.uri.query().unwrap_or_default())
        .ok_or_else(|| ApiError::bad_request("the query string is not valid UTF-8"))?;
    let segments: Vec<String> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::bad_request("the path is not valid UTF-8"))?;
    let header_str = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let call = Call {
        method: parts.method.clone(),
        query: Query(query),
        accept: header_str(header::ACCEPT),
        content_type: header_str(header::CONTENT_TYPE),
        body,
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let aggregated = call.accept.contains(discovery::AGGREGATED_MARKER);
    let discovery_get = |doc: Option<Value>| -> Result<Response<Body>, ApiError> {
        if call.method != Method::GET {
            return Err(ApiError::method_not_allowed(call.method.as_str()));
        }
        doc.map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(ApiError::no_such_path)
    };
    match segs.as_slice() {
        ["version"] => {
            let (major, minor) = *shared.server_version();
            discovery_get(Some(discovery::version(major, minor)))
        }
        ["healthz" | "livez" | "readyz"] => Ok(text_response(StatusCode::OK, "ok")),
        ["api"] if aggregated => {
            let doc = discovery::aggregated(shared.lock().registry(), true);
            Ok(aggregated_response(doc))
        }
        ["apis"] if aggregated => {
            let doc = discovery::aggregated(shared.lock().registry(), false);
            Ok(aggregated_response(doc))
        }
        ["api"] => discovery_get(Some(discovery::api_versions(shared.addr))),
        ["apis"] => discovery_get(Some(discovery::api_group_list(shared.lock().registry()))),
        ["api", version] => discovery_get(discovery::resource_list(
            shared.lock().registry(),
            "",
            version,
        )),
        ["apis", group] => discovery_get(discovery::api_group(shared.lock().registry(), group)),
        ["apis", group, version] => discovery_get(discovery::resource_list(
            shared.lock().registry(),
            group,
            version,
        )),
        ["api", "v1", "namespaces", ns, "serviceaccounts", sa, "token"] => {
            if call.method != Method::POST {
                return Err(ApiError::method_not_allowed(call.method.as_str()));
            }
            token_request(shared, ns, sa, call).await
        }
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => {
            if call.method != Method::POST {
                return Err(ApiError::method_not_allowed(call.method.as_str()));
            }
            token_review(shared, call).await
        }
        ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => {
            if call.method != Method::POST {
                return Err(ApiError::method_not_allowed(call.method.as_str()));
            }
            let (bytes, content_type) = call.body().await?;
            let review = shared
                .access()
                .review(&parse_body(&content_type, &bytes)?)?;
            Ok(json_response(StatusCode::CREATED, &review))
        }
        ["api", "v1", "namespaces", ns, "pods", target, "proxy", path @ ..] => {
            pod_proxy(shared, ns, target, path, &parts.uri, &call.method).await
        }
        ["api", version, rest @ ..] => {
            let target = resolve(shared.lock().registry(), "", version, rest)?;
            resource(shared, shutdown, target, call).await
        }
        ["apis", group, version, rest @ ..] => {
            let target = resolve(shared.lock().registry(), group, version, rest)?;
            resource(shared, shutdown, target, call).await
        }
        _ => Err(ApiError::no_such_path()),
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{target}/proxy/{path}`: forwarded to the route a test
/// registered for the pod's port (see [`crate::podproxy`]).
async fn pod_proxy(
    shared: &Arc<Shared>,
    ns: &str,
    target: &str,
    path: &[&str],
    uri: &http::Uri,
    method: &Method,
) -> Result<Response<Body>, ApiError> {
    let (pod, port) = podproxy::parse_target(target)?;
    {
        let store = shared.lock();
        let rt = store
            .registry()
            .lookup("", "v1", "pods")
            .cloned()
            .ok_or_else(ApiError::no_such_path)?;
        store.get(&rt, Some(ns), &pod)?;
    }
    let addr = shared.pod_routes().get(ns, &pod, port);
    let mut forwarded = format!("/{}", path.join("/"));
    if uri.path().ends_with('/') && !forwarded.ends_with('/') {
        forwarded.push('/');
    }
    if let Some(q) = uri.query() {
        forwarded.push('?');
        forwarded.push_str(q);
    }
    podproxy::forward(method, addr, &pod, port, &forwarded).await
}

/// The uid of ServiceAccount `ns/sa`, or `None` if it does not exist.
fn service_account_uid(shared: &Shared, ns: &str, sa: &str) -> Option<String> {
    let store = shared.lock();
    let rt = store
        .registry()
        .lookup("", "v1", "serviceaccounts")?
        .clone();
    let obj = store.get(&rt, Some(ns), sa).ok()?;
    crate::store::meta_str(&obj, "uid")
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{sa}/token`: a TokenRequest for an
/// existing ServiceAccount.
async fn token_request(
    shared: &Arc<Shared>,
    ns: &str,
    sa: &str,
    call: Call,
) -> Result<Response<Body>, ApiError> {
    let dry_run = call.query.dry_run();
    let (bytes, content_type) = call.body().await?;
    let body = parse_body(&content_type, &bytes)?;
    let (audiences, ttl) = tokens::parse_request(&body)?;
    let Some(uid) = service_account_uid(shared, ns, sa) else {
        let rt = ResourceType::new("", "v1", "ServiceAccount", "serviceaccounts");
        return Err(ApiError::not_found(&rt, sa));
    };
    let (token, expires) = if dry_run {
        (String::new(), std::time::SystemTime::now() + ttl)
    } else {
        shared
            .tokens()
            .issue(ns, sa, Some(uid), audiences.clone(), ttl)
    };
    let mut spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    spec["expirationSeconds"] = json!(ttl.as_secs());
    if audiences.is_empty() {
        spec["audiences"] = json!([tokens::DEFAULT_AUDIENCE]);
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": sa, "namespace": ns, "creationTimestamp": crate::util::now_rfc3339()},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": tokens::timestamp(expires)},
        }),
    ))
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: checks a token this server issued.
async fn token_review(shared: &Arc<Shared>, call: Call) -> Result<Response<Body>, ApiError> {
    let (bytes, content_type) = call.body().await?;
    let body = parse_body(&content_type, &bytes)?;
    let (token, audiences) = tokens::parse_review(&body)?;
    let status = shared.tokens().review(&token, &audiences, |ns, sa| {
        service_account_uid(shared, ns, sa)
    });
    let mut spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    if let Some(obj) = spec.as_object_mut() {
        obj.entry("audiences").or_insert_with(|| json!([]));
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }),
    ))
}

/// What a resource URL names.
struct ResourcePath {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    /// The `/status` subresource.
    status: bool,
    /// A deprecated `/watch/...` URL.
    legacy_watch: bool,
}

/// Parses the part of a resource URL after `/api/v1` or `/apis/{group}/{version}`.
fn resolve(
    registry: &Registry,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<ResourcePath, ApiError> {
    let (legacy_watch, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !matches!(*plural, "status" | "finalize") && tail.len() <= 2 =>
        {
            (
                Some(*ns),
                *plural,
                tail.first().copied(),
                tail.get(1).copied(),
            )
        }
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::no_such_path()),
    };
    let rt = registry
        .lookup(group, version, plural)
        .cloned()
        .ok_or_else(ApiError::no_such_path)?;
    if (rt.namespaced && namespace.is_none() && name.is_some())
        || (!rt.namespaced && namespace.is_some())
    {
        return Err(ApiError::no_such_path());
    }
    let status = match sub {
        None => false,
        Some("status") if rt.status_subresource => true,
        Some(_) => return Err(ApiError::no_such_path()),
    };
    Ok(ResourcePath {
        rt,
        namespace: namespace.map(String::from),
        name: name.map(String::from),
        status,
        legacy_watch,
    })
}

fn filter_for(path: &ResourcePath, query: &Query) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: path.namespace.clone(),
        name: None,
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(
            query.get("fieldSelector").unwrap_or_default(),
            &path.rt.kind,
        )
        .map_err(ApiError::bad_request)?,
    })
}

async fn resource(
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    path: ResourcePath,
    call: Call,
) -> Result<Response<Body>, ApiError> {
    let ns = path.namespace.as_deref();
    let target = if path.status {
        Target::Status
    } else {
        Target::Main
    };
    let rt = &path.rt;
    let metadata_only = call.metadata_only();
    let dry_run = call.query.dry_run();
    let method = call.method.clone();
    match (&method, path.name.as_deref()) {
        (&Method::GET, _) if path.legacy_watch || call.query.flag("watch") => {
            watch(shared, shutdown, &path, &call.query, metadata_only)
        }
        (&Method::GET, None) => {
            let filter = filter_for(&path, &call.query)?;
            let opts = list_options(&call.query)?;
            let list = shared.lock().list(rt, &filter, &opts)?;
            Ok(json_response(
                StatusCode::OK,
                &output_list(list, metadata_only),
            ))
        }
        (&Method::GET, Some(name)) => {
            let obj = shared.lock().get(rt, ns, name)?;
            Ok(json_response(StatusCode::OK, &output(obj, metadata_only)))
        }
        (&Method::POST, None) if !path.status && (ns.is_some() || !rt.namespaced) => {
            let (bytes, content_type) = call.body().await?;
            let body = parse_body(&content_type, &bytes)?;
            let obj = shared.lock().create(rt, ns, body, dry_run)?;
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        (&Method::PUT, Some(name)) => {
            let name = name.to_string();
            let (bytes, content_type) = call.body().await?;
            let body = parse_body(&content_type, &bytes)?;
            let obj = shared.lock().update(rt, ns, &name, body, target, dry_run)?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (&Method::PATCH, Some(name)) => {
            let name = name.to_string();
            let patch_type = PatchType::from_content_type(&call.content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
            check_patch_options(patch_type, &call.query)?;
            let (bytes, _) = call.body().await?;
            let patch = patch::decode(patch_type, &bytes)?;
            let mut store = shared.lock();
            let existed = store.get(rt, ns, &name).is_ok();
            let obj = store.patch(rt, ns, &name, patch_type, &patch, target, dry_run)?;
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok(json_response(code, &obj))
        }
        (&Method::DELETE, Some(name)) if !path.status => {
            let name = name.to_string();
            let (bytes, _) = call.body().await?;
            let (pre, body_dry_run) = delete_options(&bytes)?;
            let obj = shared
                .lock()
                .delete(rt, ns, &name, &pre, dry_run || body_dry_run)?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (&Method::DELETE, None) if ns.is_some() || !rt.namespaced => {
            let filter = filter_for(&path, &call.query)?;
            let list = shared.lock().delete_collection(rt, &filter, dry_run)?;
            Ok(json_response(StatusCode::OK, &list))
        }
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

fn list_options(query: &Query) -> Result<ListOptions, ApiError> {
    let limit = query
        .get("limit")
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))
        })
        .transpose()?
        .filter(|l| *l > 0);
    let rv = query.get("resourceVersion").filter(|s| !s.is_empty());
    let exact_rv = match (query.get("resourceVersionMatch"), rv) {
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "ListOptions.meta.k8s.io",
                "",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ))
        }
        (Some("Exact"), Some(rv)) => Some(parse_rv(rv)?),
        (Some("NotOlderThan") | None, Some(rv)) => {
            parse_rv(rv)?;
            None
        }
        (Some(other), _) => {
            return Err(ApiError::invalid(
                "ListOptions.meta.k8s.io",
                "",
                format!("resourceVersionMatch: Unsupported value: {other:?}"),
            ))
        }
        (None, None) => None,
    };
    Ok(ListOptions {
        limit,
        continue_token: query.get("continue").map(String::from),
        exact_rv,
    })
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resourceVersion {rv:?}: must be an integer"
        ))
    })
}

fn watch(
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    path: &ResourcePath,
    query: &Query,
    metadata_only: bool,
) -> Result<Response<Body>, ApiError> {
    let invalid = |msg: &str| ApiError::invalid("ListOptions.meta.k8s.io", "", msg.to_string());
    let send_initial = match query.get("sendInitialEvents") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid sendInitialEvents {other:?}"
            )))
        }
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let rv_match = query.get("resourceVersionMatch");
    if send_initial.is_some() {
        if rv_match != Some("NotOlderThan") {
            return Err(invalid(
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
            ));
        }
        if send_initial == Some(true) && !bookmarks {
            return Err(invalid(
                "allowWatchBookmarks: Forbidden: allowWatchBookmarks must be set to true when sendInitialEvents is true",
            ));
        }
    } else if rv_match.is_some() {
        return Err(invalid(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let rv = query.get("resourceVersion").unwrap_or_default();
    let from = if send_initial == Some(true) {
        WatchFrom::Now { initial: true }
    } else if rv.is_empty() || rv == "0" {
        WatchFrom::Now {
            initial: send_initial.is_none(),
        }
    } else {
        WatchFrom::After(parse_rv(rv)?)
    };
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        None => 0,
    };
    let timeout = if timeout == 0 {
        DEFAULT_WATCH_TIMEOUT
    } else {
        Duration::from_secs(timeout)
    };
    let mut filter = filter_for(path, query)?;
    filter.name = path.name.clone();
    let start = shared.lock().watch(&path.rt, from);
    let body = Watch {
        shared: shared.clone(),
        rt: path.rt.clone(),
        filter,
        metadata_only,
        bookmarks,
        initial_events_end: send_initial == Some(true),
        timeout,
        start,
    }
    .spawn(shutdown);
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// `fieldManager` is required for apply, `force` only allowed with it (422 otherwise).
fn check_patch_options(patch_type: PatchType, query: &Query) -> Result<(), ApiError> {
    let invalid = |msg: &str| ApiError::invalid("PatchOptions.meta.k8s.io", "", msg.to_string());
    if patch_type == PatchType::Apply {
        if query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(invalid(
                "fieldManager: Required value: is required for apply patch",
            ));
        }
    } else if query.get("force").is_some() {
        return Err(invalid(
            "force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    Ok(())
}

/// `DeleteOptions` from a DELETE body: preconditions and dry run.
fn delete_options(bytes: &[u8]) -> Result<(Preconditions, bool), ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((Preconditions::default(), false));
    }
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("decoding DeleteOptions: {e}")))?;
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(String::from);
    let dry_run = v
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == "All"));
    Ok((
        Preconditions {
            uid: s("/preconditions/uid"),
            resource_version: s("/preconditions/resourceVersion"),
        },
        dry_run,
    ))
}

/// Decodes a JSON (or YAML) object body; anything else is 400 or 415.
fn parse_body(content_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let value: Value = match media {
        "application/yaml" => serde_yaml_ng::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("decoding the YAML body: {e}")))?,
        "" | "application/json" | "*/*" => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("decoding the JSON body: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ))
    }
}

/// The object as sent to a client: whole, or as `PartialObjectMetadata` when the client
/// asked for metadata only.
pub(crate) fn output(object: Value, metadata_only: bool) -> Value {
    if !metadata_only {
        return object;
    }
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn output_list(list: Value, metadata_only: bool) -> Value {
    if !metadata_only {
        return list;
    }
    let items: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|items| items.iter().map(|i| output(i.clone(), true)).collect())
        .unwrap_or_default();
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": list.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "items": items,
    })
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn aggregated_response(value: Value) -> Response<Body> {
    let mut resp = json_response(StatusCode::OK, &value);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
    );
    resp
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::builtin()
    }

    #[test]
    fn resolves_paths() {
        let r = registry();
        let p = resolve(
            &r,
            "",
            "v1",
            &["namespaces", "a", "services", "web", "status"],
        )
        .unwrap();
        assert_eq!(p.rt.kind, "Service");
        assert_eq!(p.namespace.as_deref(), Some("a"));
        assert_eq!(p.name.as_deref(), Some("web"));
        assert!(p.status);
        let p = resolve(&r, "", "v1", &["namespaces", "a"]).unwrap();
        assert_eq!(p.rt.kind, "Namespace");
        assert_eq!(p.name.as_deref(), Some("a"));
        let p = resolve(&r, "", "v1", &["namespaces", "a", "status"]).unwrap();
        assert!(p.status && p.rt.kind == "Namespace");
        let p = resolve(&r, "", "v1", &["services"]).unwrap();
        assert!(p.namespace.is_none() && p.name.is_none());
        let p = resolve(&r, "", "v1", &["watch", "namespaces", "a", "pods"]).unwrap();
        assert!(p.legacy_watch);
        assert!(resolve(&r, "", "v1", &["services", "web"]).is_err());
        assert!(resolve(
            &r,
            "",
            "v1",
            &["namespaces", "a", "configmaps", "x", "status"]
        )
        .is_err());
        assert!(resolve(&r, "", "v1", &["namespaces", "a", "nodes"]).is_err());
        assert!(resolve(&r, "", "v1", &["nope"]).is_err());
        assert!(resolve(
            &r,
            "apps",
            "v1",
            &["namespaces", "a", "deployments", "d", "scale"]
        )
        .is_err());
    }

    #[test]
    fn bodies() {
        assert!(parse_body("application/json", b"{}").is_ok());
        assert!(parse_body("application/yaml", b"a: b").is_ok());
        assert_eq!(parse_body("application/json", b"[]").unwrap_err().code, 400);
        assert_eq!(parse_body("application/json", b"{").unwrap_err().code, 400);
        assert_eq!(
            parse_body("application/vnd.kubernetes.protobuf", b"")
                .unwrap_err()
                .code,
            415
        );
        let (pre, dry) =
            delete_options(br#"{"preconditions": {"uid": "u"}, "dryRun": ["All"]}"#).unwrap();
        assert_eq!(pre.uid.as_deref(), Some("u"));
        assert!(dry);
        assert!(delete_options(b"").is_ok());
        assert_eq!(delete_options(b"nope").unwrap_err().code, 400);
    }
}
