//! Local mode: the mesh's objects as Kubernetes-style YAML files in a directory.
//!
//! Every `*.yaml` / `*.yml` file under the directory (recursively; names starting with `.`
//! are skipped) may hold several documents (`---`). The kinds are those of a cluster, with the
//! same `apiVersion`s, so the same route and policy objects move between local mode and
//! Kubernetes unchanged: `v1` Service, `discovery.k8s.io/v1` EndpointSlice,
//! `gateway.networking.k8s.io/v1` HTTPRoute and GRPCRoute, `mesh.dev/v1alpha1` Workload,
//! Server and BackendPolicy. A missing namespace means `default`.
//!
//! The directory is watched (inotify via `notify`, plus a slow rescan as a safety net). A file
//! that does not parse or validate is reported with its path, document number and field, and
//! the objects it held before stay in force; the other files apply. Workloads register by
//! writing a file (and leave by deleting it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_crds::{BackendPolicy, Server, Workload};
use notify::Watcher;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::index::Input;
use crate::metrics::{KindLabel, Metrics};
use crate::objects::{Change, Kind, ObjKey, Object, Objects};

/// Rejected files and why, shared with the admin server.
pub type FileErrors = Arc<Mutex<BTreeMap<PathBuf, String>>>;

/// How often the directory is rescanned even without a notification.
const RESCAN: Duration = Duration::from_secs(5);
/// Quiet time after a notification before reloading, so that an editor's burst of writes
/// (or `cp` of many files) becomes one reload.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The parsed content of one file.
struct FileState {
    content: Vec<u8>,
    objects: Vec<Object>,
}

/// Reads a directory of objects and feeds the index.
pub struct LocalSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Files that do not parse or validate.
    parse_errors: BTreeMap<PathBuf, String>,
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

const SUPPORTED: &str = "v1 Service, discovery.k8s.io/v1 EndpointSlice, gateway.networking.k8s.io/v1 HTTPRoute and GRPCRoute, mesh.dev/v1alpha1 Workload, Server and BackendPolicy";

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
            parse_errors: BTreeMap::new(),
            errors: FileErrors::default(),
            metrics,
            cluster_domain,
        }
    }

    pub fn errors(&self) -> FileErrors {
        self.errors.clone()
    }

    /// Re-reads the directory; returns the complete object set when anything changed.
    pub fn reload(&mut self) -> Option<Vec<Object>> {
        let mut paths = Vec::new();
        if let Err(e) = yaml_files(&self.dir, &mut paths) {
            tracing::warn!(dir = %self.dir.display(), "cannot read the config directory: {e}");
            self.metrics
                .watch_errors
                .get_or_create(&KindLabel { kind: "directory" })
                .inc();
            return None;
        }
        paths.sort();
        let mut changed = false;
        let present: BTreeSet<&PathBuf> = paths.iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for p in gone {
            tracing::info!(file = %p.display(), "file removed; its objects are deleted");
            self.files.remove(&p);
            self.parse_errors.remove(&p);
            changed = true;
        }
        for path in &paths {
            let content = match std::fs::read(path) {
                Ok(c) => c,
                Err(e) => {
                    // Vanished between listing and reading: the next pass sees it gone.
                    tracing::debug!(file = %path.display(), "cannot read: {e}");
                    continue;
                }
            };
            if self.files.get(path).is_some_and(|f| f.content == content) {
                continue;
            }
            let text = String::from_utf8_lossy(&content);
            match parse_file(&text, &self.cluster_domain) {
                Ok(objects) => {
                    if self.parse_errors.remove(path).is_some() {
                        tracing::info!(file = %path.display(), "file is valid again");
                    }
                    self.files
                        .insert(path.clone(), FileState { content, objects });
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(
                        file = %path.display(),
                        "rejected: {e}; the file's previous objects stay in force"
                    );
                    self.metrics
                        .watch_errors
                        .get_or_create(&KindLabel { kind: "file" })
                        .inc();
                    self.parse_errors.insert(path.clone(), e);
                    // Keep the old objects under the new (bad) content, so that the same bad
                    // content is reported once and a fix is noticed.
                    let objects = self
                        .files
                        .remove(path)
                        .map(|f| f.objects)
                        .unwrap_or_default();
                    self.files
                        .insert(path.clone(), FileState { content, objects });
                }
            }
        }
        // The same object in two files: the first file (by path) wins.
        let mut errors = self.parse_errors.clone();
        let mut seen: BTreeMap<(Kind, ObjKey), &PathBuf> = BTreeMap::new();
        let mut all = Vec::new();
        for (path, f) in &self.files {
            for o in &f.objects {
                let id = (o.kind(), o.key());
                if let Some(first) = seen.get(&id) {
                    let msg = format!(
                        "{} {} is also defined in {}; this copy is ignored",
                        id.0,
                        id.1,
                        first.display()
                    );
                    errors.entry(path.clone()).or_insert(msg);
                    continue;
                }
                seen.insert(id, path);
                all.push(o.clone());
            }
        }
        self.metrics.invalid_files.set(errors.len() as i64);
        let mut shared = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if changed {
            for (path, msg) in &errors {
                if !self.parse_errors.contains_key(path) {
                    tracing::warn!(file = %path.display(), "{msg}");
                }
            }
        }
        *shared = errors;
        drop(shared);
        changed.then_some(all)
    }

    /// Loads the directory, sends the state, then follows changes until the index is gone.
    pub async fn run(mut self, tx: mpsc::Sender<Input>) -> anyhow::Result<()> {
        let (ntx, mut nrx) = mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok() {
                    let _ = ntx.try_send(());
                }
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::Recursive)?;
        let mut first = true;
        loop {
            let dir_ok = self.dir.is_dir();
            if let Some(objects) = self.reload() {
                if send_all(&tx, objects).await.is_err() {
                    return Ok(());
                }
            }
            if first {
                first = false;
                if !dir_ok {
                    anyhow::bail!("{} is not a directory", self.dir.display());
                }
                if tx.send(Input::Synced).await.is_err() {
                    return Ok(());
                }
            }
            tokio::select! {
                _ = nrx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while nrx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(RESCAN) => {}
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}

/// Sends the complete object set as one Reset per kind.
async fn send_all(tx: &mpsc::Sender<Input>, objects: Vec<Object>) -> Result<(), ()> {
    let mut by_kind: BTreeMap<Kind, Vec<Object>> =
        Kind::ALL.iter().map(|k| (*k, Vec::new())).collect();
    for o in objects {
        by_kind.entry(o.kind()).or_default().push(o);
    }
    // Pods only come from Kubernetes.
    by_kind.remove(&Kind::Pod);
    for (kind, objs) in by_kind {
        tx.send(Input::Change(Change::Reset(kind, objs)))
            .await
            .map_err(|_| ())?;
    }
    Ok(())
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
    fn empty_documents_are_skipped() {
        let objs = parse_file(
            "---\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
            "c",
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
    }
}
