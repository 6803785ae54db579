//! Local mode: the mesh's objects as Kubernetes-style YAML files in a directory.
//!
//! Every `*.yaml` / `*.yml` file under the directory (recursively; names starting with `.`
//! are skipped) may hold several documents (`---`). The kinds are those of a cluster, with the
//! same `apiVersion`s, so the same route and policy objects move between local mode and
//! Kubernetes unchanged: `v1` Service, `discovery.k8s.io/v1` EndpointSlice,
//! `gateway.networking.k8s.io/v1` HTTPRoute and GRPCRoute, `mesh.dev/v1alpha1` Workload,
//! Server, BackendPolicy, AuthorizationPolicy and EgressPolicy, and `v1` Namespace (for its
//! policy-default annotations). A missing namespace means `default`.
//!
//! The directory is watched (inotify via `notify`, plus a slow rescan as a safety net). A file
//! that does not parse or validate is reported with its path, document number and field, and
//! the objects it held before stay in force (on a first load, none of its objects are
//! loaded); the other files apply. Workloads register by
//! writing a file (and leave by deleting it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_crds::{AuthorizationPolicy, BackendPolicy, EgressPolicy, Server, Workload};
use notify::event::{CreateKind, ModifyKind, RemoveKind};
use notify::{EventKind, Watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::index::Input;
use crate::metrics::{KindLabel, Metrics};
use crate::objects::{Change, Kind, NamespaceInfo, ObjKey, Object, Objects};

/// Rejected files and why, shared with the admin server.
pub type FileErrors = Arc<Mutex<BTreeMap<PathBuf, String>>>;

/// How often the directory is rescanned even without a notification.
const RESCAN: Duration = Duration::from_secs(5);
/// Quiet time after a notification before reloading, so that an editor's burst of writes
/// (or `cp` of many files) becomes one reload. Part of every change's propagation time.
const DEBOUNCE: Duration = Duration::from_millis(25);

/// The content of one file and the objects it last held when valid.
struct FileState {
    content: Vec<u8>,
    objects: Vec<Object>,
}

/// An object's identity across files.
type ObjectId = (Kind, ObjKey);

/// Reads a directory of objects and feeds the index with the changes of each reload.
pub struct LocalSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Which file defines each object (the first to claim it).
    owners: BTreeMap<ObjectId, PathBuf>,
    /// Files that do not parse or validate.
    parse_errors: BTreeMap<PathBuf, String>,
    /// Files holding objects another file already defines.
    duplicates: BTreeMap<PathBuf, String>,
    /// Parse errors and duplicates, as shown on the admin page.
    errors: FileErrors,
    metrics: Arc<Metrics>,
    cluster_domain: String,
}

fn de<T: DeserializeOwned>(value: serde_yaml_ng::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

const SUPPORTED: &str = "v1 Service and Namespace, discovery.k8s.io/v1 EndpointSlice, gateway.networking.k8s.io/v1 HTTPRoute and GRPCRoute, mesh.dev/v1alpha1 Workload, Server, BackendPolicy, AuthorizationPolicy and EgressPolicy";

/// Parses one YAML document into an object (None for an empty document).
fn parse_doc(value: serde_yaml_ng::Value, cluster_domain: &str) -> Result<Option<Object>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let api = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or("apiVersion is missing")?
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or("kind is missing")?
        .to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        return Err(format!("{kind}: metadata.name is missing"));
    }
    let ctx = |e: String| format!("{kind} {name}: {e}");
    let obj = match (api.as_str(), kind.as_str()) {
        ("v1", "Service") => Object::Service(Arc::new(de::<Service>(value).map_err(ctx)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(Arc::new(de::<EndpointSlice>(value).map_err(ctx)?))
        }
        ("mesh.dev/v1alpha1", "Workload") => {
            let w: Workload = de(value).map_err(ctx)?;
            if w.spec.address.parse::<std::net::IpAddr>().is_err() {
                return Err(ctx(format!(
                    "spec.address: '{}' is not an IP address",
                    w.spec.address
                )));
            }
            Object::Workload(Arc::new(w))
        }
        ("mesh.dev/v1alpha1", "Server") => Object::Server(Arc::new(de::<Server>(value).map_err(ctx)?)),
        ("v1", "Namespace") => {
            let ns: Namespace = de(value).map_err(ctx)?;
            Object::Namespace(Arc::new(NamespaceInfo::from_namespace(&ns)))
        }
        // Authorization and egress policies are checked by the index, which keeps the last
        // valid version in force and reports the problem as the object's condition.
        ("mesh.dev/v1alpha1", "AuthorizationPolicy") => {
            Object::AuthorizationPolicy(Arc::new(de::<AuthorizationPolicy>(value).map_err(ctx)?))
        }
        ("mesh.dev/v1alpha1", "EgressPolicy") => {
            Object::EgressPolicy(Arc::new(de::<EgressPolicy>(value).map_err(ctx)?))
        }
        ("mesh.dev/v1alpha1", "BackendPolicy") => {
            let p: BackendPolicy = de(value).map_err(ctx)?;
            crate::policies::settings(&p).map_err(ctx)?;
            Object::BackendPolicy(Arc::new(p))
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            let r: HttpRoute = de(value).map_err(ctx)?;
            let conv = crate::routes::convert_http(&r, &Objects::default(), cluster_domain);
            if let Err((_, msg)) = conv.accepted {
                return Err(ctx(msg));
            }
            Object::HttpRoute(Arc::new(r))
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            let r: GrpcRoute = de(value).map_err(ctx)?;
            let conv = crate::routes::convert_grpc(&r, &Objects::default(), cluster_domain);
            if let Err((_, msg)) = conv.accepted {
                return Err(ctx(msg));
            }
            Object::GrpcRoute(Arc::new(r))
        }
        _ => {
            return Err(format!(
                "kind {kind} in apiVersion {api} is not supported in local mode (supported: {SUPPORTED})"
            ))
        }
    };
    Ok(Some(obj))
}

/// Parses a whole file; errors name the document (1-based) and the field.
pub fn parse_file(text: &str, cluster_domain: &str) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc)
            .map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        if let Some(obj) =
            parse_doc(value, cluster_domain).map_err(|e| format!("document {}: {e}", i + 1))?
        {
            out.push(obj);
        }
    }
    Ok(out)
}

use serde::Deserialize;

/// A YAML file that is not hidden (editors' and tools' temporary files start with `.`).
fn is_config_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        )
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            yaml_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

impl LocalSource {
    pub fn new(dir: PathBuf, metrics: Arc<Metrics>, cluster_domain: String) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
            owners: BTreeMap::new(),
            parse_errors: BTreeMap::new(),
            duplicates: BTreeMap::new(),
            errors: FileErrors::default(),
            metrics,
            cluster_domain,
        }
    }

    pub fn errors(&self) -> FileErrors {
        self.errors.clone()
    }

    /// Takes ownership of an object for `path` (unless another file has it).
    fn claim(&mut self, obj: &Object, path: &Path, changes: &mut Vec<Change>) {
        let id = (obj.kind(), obj.key());
        match self.owners.get(&id) {
            Some(owner) if owner != path => {
                let msg = format!(
                    "{} {} is also defined in {}; this copy is ignored",
                    id.0,
                    id.1,
                    owner.display()
                );
                self.duplicates.entry(path.to_path_buf()).or_insert(msg);
            }
            _ => {
                self.owners.insert(id, path.to_path_buf());
                changes.push(Change::Apply(obj.clone()));
            }
        }
    }

    /// Gives up an object `path` no longer defines.
    fn release(&mut self, obj: &Object, path: &Path, changes: &mut Vec<Change>) -> bool {
        let id = (obj.kind(), obj.key());
        if self.owners.get(&id).is_some_and(|o| o == path) {
            self.owners.remove(&id);
            changes.push(Change::Delete(id.0, id.1));
            return true;
        }
        false
    }

    /// Forgets a file that is gone, deleting the objects it owned.
    fn forget(&mut self, path: &Path, changes: &mut Vec<Change>) -> bool {
        let mut released = false;
        self.parse_errors.remove(path);
        self.duplicates.remove(path);
        if let Some(f) = self.files.remove(path) {
            tracing::info!(file = %path.display(), "file removed; its objects are deleted");
            for o in &f.objects {
                released |= self.release(o, path, changes);
            }
        }
        released
    }

    /// Reads one file again if its content changed; true when it gave up objects.
    fn read(&mut self, path: &Path, changes: &mut Vec<Change>) -> bool {
        let content = match std::fs::read(path) {
            Ok(c) => c,
            // Vanished between the event (or listing) and now: it is gone.
            Err(_) => return self.forget(path, changes),
        };
        if self.files.get(path).is_some_and(|f| f.content == content) {
            return false;
        }
        let mut released = false;
        let text = String::from_utf8_lossy(&content);
        match parse_file(&text, &self.cluster_domain) {
            Ok(objects) => {
                if self.parse_errors.remove(path).is_some() {
                    tracing::info!(file = %path.display(), "file is valid again");
                }
                self.duplicates.remove(path);
                let old = self
                    .files
                    .insert(
                        path.to_path_buf(),
                        FileState {
                            content,
                            objects: objects.clone(),
                        },
                    )
                    .map(|f| f.objects)
                    .unwrap_or_default();
                let now: BTreeSet<ObjectId> = objects.iter().map(|o| (o.kind(), o.key())).collect();
                for o in old.iter().filter(|o| !now.contains(&(o.kind(), o.key()))) {
                    released |= self.release(o, path, changes);
                }
                // Only objects that differ from the file's previous version are sent.
                let before: BTreeMap<ObjectId, &Object> =
                    old.iter().map(|o| ((o.kind(), o.key()), o)).collect();
                for o in &objects {
                    let id = (o.kind(), o.key());
                    let owned = self.owners.get(&id).is_some_and(|p| p == path);
                    if owned && before.get(&id).is_some_and(|b| b.same(o)) {
                        continue;
                    }
                    self.claim(o, path, changes);
                }
            }
            Err(e) => {
                // On a first load (or when the file never held a valid object) there is
                // nothing to keep: say that its objects were not loaded.
                if self.files.get(path).is_some_and(|f| !f.objects.is_empty()) {
                    tracing::warn!(
                        file = %path.display(),
                        "rejected: {e}; the file's previous objects stay in force"
                    );
                } else {
                    tracing::warn!(
                        file = %path.display(),
                        "rejected: {e}; none of the file's objects were loaded"
                    );
                }
                self.metrics
                    .watch_errors
                    .get_or_create(&KindLabel { kind: "file" })
                    .inc();
                self.parse_errors.insert(path.to_path_buf(), e);
                // Keep the old objects under the new (bad) content, so that the same bad
                // content is reported once and a fix is noticed.
                let objects = self
                    .files
                    .remove(path)
                    .map(|f| f.objects)
                    .unwrap_or_default();
                self.files
                    .insert(path.to_path_buf(), FileState { content, objects });
            }
        }
        released
    }

    /// Re-reads the whole directory and returns what changed. Only files whose content
    /// changed are parsed again, and only objects that changed are sent.
    pub fn reload(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut paths = Vec::new();
        if let Err(e) = yaml_files(&self.dir, &mut paths) {
            tracing::warn!(dir = %self.dir.display(), "cannot read the config directory: {e}");
            self.metrics
                .watch_errors
                .get_or_create(&KindLabel { kind: "directory" })
                .inc();
            return changes;
        }
        let present: BTreeSet<&PathBuf> = paths.iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        let mut released = false;
        for p in gone {
            released |= self.forget(&p, &mut changes);
        }
        for path in &paths {
            released |= self.read(path, &mut changes);
        }
        self.finish(released, &mut changes);
        changes
    }

    /// Re-reads only the files a notification named.
    pub fn reload_paths(&mut self, paths: &BTreeSet<PathBuf>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut released = false;
        // Files under a hidden directory are not config either (the full scan skips them).
        let visible = |p: &&PathBuf| {
            p.strip_prefix(&self.dir).is_ok_and(|rel| {
                rel.components()
                    .all(|c| !c.as_os_str().to_string_lossy().starts_with('.'))
            })
        };
        let paths: Vec<PathBuf> = paths
            .iter()
            .filter(|p| is_config_file(p))
            .filter(visible)
            .cloned()
            .collect();
        for path in &paths {
            released |= self.read(path, &mut changes);
        }
        self.finish(released, &mut changes);
        changes
    }

    /// Lets waiting duplicates take over released objects and publishes the file errors.
    fn finish(&mut self, released: bool, changes: &mut Vec<Change>) {
        if released && !self.duplicates.is_empty() {
            let waiting: Vec<PathBuf> = self.duplicates.keys().cloned().collect();
            for path in waiting {
                self.duplicates.remove(&path);
                let objects = self
                    .files
                    .get(&path)
                    .map(|f| f.objects.clone())
                    .unwrap_or_default();
                for o in &objects {
                    self.claim(o, &path, changes);
                }
            }
        }
        let mut errors = self.parse_errors.clone();
        for (path, msg) in &self.duplicates {
            if !errors.contains_key(path) {
                errors.insert(path.clone(), msg.clone());
            }
        }
        self.metrics.invalid_files.set(errors.len() as i64);
        let mut shared = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        for (path, msg) in &self.duplicates {
            if shared.get(path) != Some(msg) {
                tracing::warn!(file = %path.display(), "{msg}");
            }
        }
        *shared = errors;
    }

    /// Loads the directory, sends the state, then follows changes until the index is gone.
    pub async fn run(mut self, tx: mpsc::Sender<Input>) -> anyhow::Result<()> {
        // Notifications carry the paths they concern; `None` asks for a full rescan (a
        // directory appeared or went, or the watcher lost track).
        let (ntx, mut nrx) = mpsc::unbounded_channel::<Option<Vec<PathBuf>>>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let Ok(e) = res else {
                    let _ = ntx.send(None);
                    return;
                };
                // Only content and name changes matter; our own reads (access events) and
                // metadata changes must not trigger a reload.
                let relevant = matches!(
                    e.kind,
                    EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(
                            ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any
                        )
                        | EventKind::Any
                );
                if !relevant {
                    return;
                }
                let whole = matches!(
                    e.kind,
                    EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
                ) || e.need_rescan()
                    || e.paths.iter().any(|p| p.is_dir());
                let _ = ntx.send((!whole).then_some(e.paths));
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::Recursive)?;
        let mut changes = self.reload();
        if !changes.is_empty() && tx.send(Input::Batch(changes)).await.is_err() {
            return Ok(());
        }
        if tx.send(Input::Synced).await.is_err() {
            return Ok(());
        }
        loop {
            tokio::select! {
                first = nrx.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    tokio::time::sleep(DEBOUNCE).await;
                    let mut paths = BTreeSet::new();
                    let mut rescan = false;
                    let mut next = Some(first);
                    while let Some(n) = next.take() {
                        match n {
                            Some(p) => paths.extend(p),
                            None => rescan = true,
                        }
                        next = nrx.try_recv().ok();
                    }
                    changes = if rescan { self.reload() } else { self.reload_paths(&paths) };
                }
                _ = tokio::time::sleep(RESCAN) => changes = self.reload(),
                _ = tx.closed() => return Ok(()),
            }
            // One reload is one batch for the index: one recomputation, one publication.
            if !changes.is_empty() && tx.send(Input::Batch(changes)).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_document_and_field() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split}
spec:
  parentRefs: [{kind: Service, group: "", name: web, port: 80}]
  rules:
  - backendRefs: [{name: web, port: 80, weight: "lots"}]
"#;
        let e = parse_file(text, "cluster.local").unwrap_err();
        assert!(
            e.starts_with("document 2: HTTPRoute split: spec.rules[0].backendRefs[0].weight"),
            "{e}"
        );

        let e = parse_file(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "c",
        )
        .unwrap_err();
        assert!(e.contains("not supported in local mode"), "{e}");

        let e = parse_file(
            "apiVersion: mesh.dev/v1alpha1\nkind: Workload\nmetadata: {name: vm}\nspec: {address: web-1}\n",
            "c",
        )
        .unwrap_err();
        assert!(e.contains("spec.address"), "{e}");

        let e = parse_file(
            "apiVersion: mesh.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Service, name: web}, timeout: soon}\n",
            "c",
        )
        .unwrap_err();
        assert!(e.contains("spec.timeout"), "{e}");
    }

    #[test]
    fn reloads_send_only_what_changed_and_duplicates_wait_their_turn() {
        let dir = tempfile::tempdir().unwrap();
        let svc = |port: u16| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\nspec: {{ports: [{{port: {port}}}]}}\n")
        };
        std::fs::write(dir.path().join("a.yaml"), svc(80)).unwrap();
        std::fs::write(
            dir.path().join("other.yaml"),
            svc(80).replace("name: x", "name: y"),
        )
        .unwrap();
        let mut src = LocalSource::new(dir.path().into(), Arc::new(Metrics::new()), "c".into());
        assert_eq!(src.reload().len(), 2, "initial load sends every object");
        assert!(src.reload().is_empty(), "nothing changed, nothing sent");

        // A second definition of x is reported and ignored.
        std::fs::write(dir.path().join("b.yaml"), svc(81)).unwrap();
        assert!(src.reload().is_empty());
        let errors = src.errors().lock().unwrap().clone();
        assert!(
            errors[&dir.path().join("b.yaml")].contains("also defined in"),
            "{errors:?}"
        );

        // When a.yaml goes, b.yaml's copy takes over.
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let changes = src.reload();
        assert!(
            matches!(changes[0], Change::Delete(Kind::Service, _)),
            "{changes:?}"
        );
        assert!(
            matches!(&changes[1], Change::Apply(Object::Service(s)) if s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port == 81),
            "{changes:?}"
        );
        assert!(src.errors().lock().unwrap().is_empty());
    }

    #[test]
    fn empty_documents_are_skipped() {
        let objs = parse_file(
            "---\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
            "c",
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
    }
}
