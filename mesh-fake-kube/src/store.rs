//! Object storage: every object of every kind, the global resourceVersion counter, the event
//! history that watches replay from, and the fan-out of new events to open watches.
//!
//! All state sits behind one mutex (see `server::Shared`). A write bumps the counter, stores
//! the object, appends a [`Change`] to the history and hands it to every open watch of that
//! kind, all in one critical section, so a watch registered under the same lock sees every
//! change exactly once: either in its replay or live.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::defaults::{self, object_mut, Allocator};
use crate::error::ApiError;
use crate::patch::{self, Patch, PatchType};
use crate::resources::{
    builtin_crds, builtin_types, types_from_crd, Registry, ResKey, ResourceType,
};
use crate::util::{generate_name_suffix, new_uid, now_rfc3339};
use crate::validation;
use crate::watch::Filter;

/// Namespaces every fresh server has, as on a real cluster.
const INITIAL_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One entry of the event history.
#[derive(Debug)]
pub(crate) struct Change {
    /// The resourceVersion this change produced.
    pub(crate) rv: u64,
    pub(crate) key: ResKey,
    pub(crate) kind: ChangeKind,
    /// The object after the change (for a deletion: its final state, with the new rv).
    pub(crate) object: Value,
    /// The object before the change, so a selector watch can tell "now matches" from
    /// "stopped matching".
    pub(crate) previous: Option<Value>,
}

/// Which part of an object a write targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The object itself (`.status` is ignored for kinds with a status subresource).
    Main,
    /// The `/status` subresource (only `.status` changes).
    Status,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// Now; with `initial`, first a synthetic ADDED for every current object.
    Now { initial: bool },
    /// Right after this resourceVersion, replaying the history since.
    After(u64),
}

/// A registered watch: what to replay first, and the live feed.
pub(crate) struct WatchStart {
    /// Changes to send before the live ones, or the 410 to send instead.
    pub(crate) initial: Result<Vec<Arc<Change>>, ApiError>,
    /// The resourceVersion at registration: everything up to it is in `initial`.
    pub(crate) rv: u64,
    /// Live changes of the watched kind (not yet filtered by namespace or selectors).
    pub(crate) live: mpsc::UnboundedReceiver<Arc<Change>>,
}

/// `ListOptions` that decide which state a list returns.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListOptions {
    pub(crate) limit: Option<usize>,
    pub(crate) continue_token: Option<String>,
    /// `resourceVersion` with `resourceVersionMatch=Exact`.
    pub(crate) exact_rv: Option<u64>,
}

/// `DeleteOptions.preconditions`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Preconditions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

struct Watcher {
    key: ResKey,
    tx: mpsc::UnboundedSender<Arc<Change>>,
}

/// Objects of one kind by (namespace, name); the namespace is empty for cluster-scoped kinds.
type Objects = BTreeMap<(String, String), Value>;

/// The whole state of the fake cluster.
pub(crate) struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone: the history before it is gone.
    compacted: u64,
    registry: Registry,
    objects: BTreeMap<ResKey, Objects>,
    history: Vec<Arc<Change>>,
    watchers: Vec<Watcher>,
    alloc: Allocator,
    /// Whether writes check the content of objects (see [`Store::upsert_unvalidated`]).
    check_content: bool,
}

impl Store {
    /// A store with the built-in kinds, the usual namespaces and the Gateway API CRDs.
    pub(crate) fn new() -> Self {
        let mut store = Self {
            rv: 1,
            compacted: 0,
            registry: Registry::default(),
            objects: BTreeMap::new(),
            history: Vec::new(),
            watchers: Vec::new(),
            alloc: Allocator::default(),
            check_content: true,
        };
        for rt in builtin_types() {
            store.registry.register(rt, None);
        }
        let ns_type = ResourceType::new("", "v1", "Namespace", "namespaces").cluster_scoped();
        for ns in INITIAL_NAMESPACES {
            let body = json!({"metadata": {"name": ns}});
            if let Err(e) = store.create(&ns_type, None, body, false) {
                tracing::error!("fake-kube: creating namespace {ns}: {e}");
            }
        }
        let crd_type = store.crd_type();
        for crd in builtin_crds() {
            if let Err(e) = store.create(&crd_type, None, crd, false) {
                tracing::error!("fake-kube: creating built-in CRD: {e}");
            }
        }
        store
    }

    fn crd_type(&self) -> ResourceType {
        ResourceType::new(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        )
        .cluster_scoped()
        .with_status()
    }

    /// The current (latest) resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves a kind not backed by a CRD object.
    pub(crate) fn register(&mut self, rt: ResourceType) {
        self.registry.register(rt, None);
    }

    fn slot(ns: Option<&str>, name: &str) -> (String, String) {
        (ns.unwrap_or_default().to_string(), name.to_string())
    }

    fn stored(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&rt.key())?.get(&Self::slot(ns, name))
    }

    /// One object, as the client sees it at `rt`'s version.
    pub(crate) fn get(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.stored(rt, ns, name)
            .map(|o| present(rt, o))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// A `{Kind}List` of the objects `filter` selects, in (namespace, name) order.
    ///
    /// With `limit`, returns at most that many and a `continue` token; a continued list
    /// reports the resourceVersion of its first page and shows objects as they are now
    /// (the real server serves all pages from one snapshot).
    pub(crate) fn list(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        opts: &ListOptions,
    ) -> Result<Value, ApiError> {
        let mut list_rv = self.rv;
        if let Some(exact) = opts.exact_rv {
            if exact != self.rv {
                return Err(ApiError::expired(format!(
                    "too old resource version: {exact} ({}); the fake API server can only serve \
                     the latest resourceVersion exactly",
                    self.rv
                )));
            }
        }
        let mut after: Option<(String, String)> = None;
        if let Some(token) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            let (rv, ns, name) = decode_continue(token).ok_or_else(|| {
                ApiError::bad_request(format!("invalid continue token {token:?}"))
            })?;
            if rv < self.compacted {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list \
                     result. You can start a new list without the continue parameter.",
                ));
            }
            list_rv = rv;
            after = Some((ns, name));
        }
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        if let Some(objects) = self.objects.get(&rt.key()) {
            let candidates = objects
                .iter()
                .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
                .filter(|(_, o)| filter.matches(o));
            for (k, o) in candidates {
                if opts.limit.is_some_and(|l| items.len() >= l) {
                    more = true;
                    break;
                }
                items.push(present(rt, o));
                last_key = Some(k);
            }
        }
        let mut metadata = json!({"resourceVersion": list_rv.to_string()});
        if let (true, Some((ns, name))) = (more, last_key) {
            // Keys are unique and ordered, so continuing after the last returned one is exact.
            metadata["continue"] = json!(encode_continue(list_rv, ns, name));
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Creates an object (POST). `ns` is the namespace from the URL (namespaced kinds only).
    pub(crate) fn create(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut obj = into_object(body)?;
        check_type(rt, &obj, false)?;
        if map_meta_str(&obj, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let ns = resolve_namespace(rt, ns, &mut obj)?;
        let generate_name = map_meta_str(&obj, "generateName")
            .filter(|s| !s.is_empty())
            .map(String::from);
        let meta = object_mut(&mut obj, "metadata");
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(n) => n.to_string(),
            None => {
                let prefix = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        let missing = validation::FieldError::required(
                            "metadata.name",
                            "name or generateName is required",
                        );
                        validation::invalid(rt, "", &[missing])
                    })?;
                let prefix: String = prefix.chars().take(58).collect();
                let mut name = format!("{prefix}{}", generate_name_suffix());
                while self.stored(rt, ns.as_deref(), &name).is_some() {
                    name = format!("{prefix}{}", generate_name_suffix());
                }
                name
            }
        };
        if let Some(ns) = &ns {
            if !self.namespace_exists(ns) {
                return Err(ApiError::namespace_not_found(ns));
            }
        }
        if self.stored(rt, ns.as_deref(), &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        let meta = object_mut(&mut obj, "metadata");
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        for system in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            meta.remove(system);
        }
        if rt.status_subresource {
            obj.remove("status");
        }
        defaults::on_create(&mut self.alloc, rt, &mut obj)?;
        let mut errors = validation::name_errors(rt, &name, generate_name.as_deref());
        errors.extend(self.content_errors(rt, &mut obj, None));
        if !errors.is_empty() {
            return Err(validation::invalid(rt, &name, &errors));
        }
        let obj = Value::Object(obj);
        if dry_run {
            return Ok(present(rt, &obj));
        }
        let out = self.commit(rt, ChangeKind::Added, obj, None);
        self.after_write(rt, &out);
        Ok(out)
    }

    /// Replaces an object (PUT) or its status (PUT `/status`).
    pub(crate) fn update(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: Value,
        target: Target,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut obj = into_object(body)?;
        check_type(rt, &obj, false)?;
        let existing = self
            .stored(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        check_body_name(&obj, name, false)?;
        resolve_namespace(rt, ns, &mut obj)?;
        if let Some(rv) = map_meta_str(&obj, "resourceVersion").filter(|s| !s.is_empty()) {
            if Some(rv) != meta_str(&existing, "resourceVersion").as_deref() {
                return Err(ApiError::conflict(rt, name));
            }
        }
        self.finish_update(rt, existing, Value::Object(obj), target, dry_run)
    }

    /// Patches an object or its status. Server-side apply creates a missing object.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: &Patch,
        target: Target,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if patch_type == PatchType::Apply {
            if let Patch::Merge(Value::Object(applied)) = patch {
                check_type(rt, applied, true)?;
                check_body_name(applied, name, true)?;
            }
        }
        let Some(existing) = self.stored(rt, ns, name).cloned() else {
            return match (patch_type, patch, target) {
                (PatchType::Apply, Patch::Merge(applied), Target::Main) => {
                    let mut obj = applied.clone();
                    if let Some(o) = obj.as_object_mut() {
                        let meta = object_mut(o, "metadata");
                        meta.insert("name".into(), json!(name));
                        meta.remove("resourceVersion");
                    }
                    self.create(rt, ns, obj, dry_run)
                }
                _ => Err(ApiError::not_found(rt, name)),
            };
        };
        let mut doc = present(rt, &existing);
        patch::apply(&mut doc, patch, &rt.kind, name)?;
        if !doc.is_object() {
            return Err(ApiError::invalid(
                &rt.kind,
                name,
                "the patched object is not a JSON object",
            ));
        }
        let patched_rv = meta_str(&doc, "resourceVersion");
        if patched_rv.is_some() && patched_rv != meta_str(&existing, "resourceVersion") {
            return Err(ApiError::conflict(rt, name));
        }
        self.finish_update(rt, existing, doc, target, dry_run)
    }

    /// The common end of PUT and PATCH: keep system fields, apply the status-subresource
    /// split, bump `generation`, and commit unless nothing changed.
    fn finish_update(
        &mut self,
        rt: &ResourceType,
        existing: Value,
        new: Value,
        target: Target,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = existing.as_object().cloned().unwrap_or_default();
        let mut new = match target {
            Target::Main => into_object(new)?,
            Target::Status => {
                let mut merged = old.clone();
                match new.get("status") {
                    Some(s) => merged.insert("status".into(), s.clone()),
                    None => merged.remove("status"),
                };
                merged
            }
        };
        // System metadata comes from the stored object.
        let old_meta = old
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let meta = object_mut(&mut new, "metadata");
        for system in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
            "managedFields",
            "selfLink",
        ] {
            match old_meta.get(system) {
                Some(v) => meta.insert(system.into(), v.clone()),
                None => meta.remove(system),
            };
        }
        // Finalizers cannot be added once deletion has started.
        if old_meta.contains_key("deletionTimestamp") {
            let old_f = finalizers(&old_meta);
            let new_f = finalizers(meta);
            if new_f.iter().any(|f| !old_f.contains(f)) {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &meta_str(&existing, "name").unwrap_or_default(),
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if target == Target::Main {
            if rt.status_subresource {
                match old.get("status") {
                    Some(s) => new.insert("status".into(), s.clone()),
                    None => new.remove("status"),
                };
            }
            defaults::on_update(rt, &old, &mut new)?;
            // Pruning comes first, so that a write of undeclared fields changes nothing.
            self.refuse_invalid(rt, &existing, &mut new, target)?;
            if spec_changed(&old, &new, rt.status_subresource) {
                let generation = old_meta
                    .get("generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    + 1;
                object_mut(&mut new, "metadata").insert("generation".into(), json!(generation));
            }
        } else {
            self.refuse_invalid(rt, &existing, &mut new, target)?;
        }
        let new = Value::Object(new);
        if new == existing {
            // A no-op write does not bump the resourceVersion, as on a real server.
            return Ok(present(rt, &existing));
        }
        if dry_run {
            return Ok(present(rt, &new));
        }
        let being_deleted = new.pointer("/metadata/deletionTimestamp").is_some();
        let meta = new
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if being_deleted && finalizers(&meta).is_empty() {
            let out = self.commit(rt, ChangeKind::Deleted, new, Some(existing));
            self.after_delete(rt, &out);
            return Ok(out);
        }
        let out = self.commit(rt, ChangeKind::Modified, new, Some(existing));
        self.after_write(rt, &out);
        Ok(out)
    }

    /// Deletes an object; one with finalizers only gets a `deletionTimestamp` and stays until
    /// an update removes the last finalizer. Returns the object's final state.
    pub(crate) fn delete(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let existing = self
            .stored(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let uid = meta_str(&existing, "uid").unwrap_or_default();
        if let Some(want) = pre.uid.as_deref().filter(|u| *u != uid) {
            return Err(ApiError::precondition_failed(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        let rv = meta_str(&existing, "resourceVersion").unwrap_or_default();
        if let Some(want) = pre.resource_version.as_deref().filter(|r| *r != rv) {
            return Err(ApiError::precondition_failed(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
                ),
            ));
        }
        let meta = existing
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if !finalizers(&meta).is_empty() {
            if meta.contains_key("deletionTimestamp") {
                return Ok(present(rt, &existing));
            }
            let mut new = existing.as_object().cloned().unwrap_or_default();
            let m = object_mut(&mut new, "metadata");
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            let generation = m.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            m.insert("generation".into(), json!(generation));
            let new = Value::Object(new);
            if dry_run {
                return Ok(present(rt, &new));
            }
            return Ok(self.commit(rt, ChangeKind::Modified, new, Some(existing)));
        }
        if dry_run {
            return Ok(present(rt, &existing));
        }
        let out = self.commit(rt, ChangeKind::Deleted, existing.clone(), Some(existing));
        self.after_delete(rt, &out);
        Ok(out)
    }

    /// Deletes every object `filter` selects; returns a list of them.
    pub(crate) fn delete_collection(
        &mut self,
        rt: &ResourceType,
        filter: &Filter,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let targets: Vec<(String, String)> = self
            .objects
            .get(&rt.key())
            .map(|objs| {
                objs.iter()
                    .filter(|(_, o)| filter.matches(o))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut items = Vec::new();
        for (ns, name) in targets {
            let ns = (!ns.is_empty()).then_some(ns);
            items.push(self.delete(
                rt,
                ns.as_deref(),
                &name,
                &Preconditions::default(),
                dry_run,
            )?);
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    /// Registers a watch on `rt`'s kind and collects what it must replay first.
    pub(crate) fn watch(&mut self, rt: &ResourceType, from: WatchFrom) -> WatchStart {
        let key = rt.key();
        let (tx, live) = mpsc::unbounded_channel();
        let initial = match from {
            WatchFrom::Now { initial: false } => Ok(Vec::new()),
            WatchFrom::Now { initial: true } => Ok(self
                .objects
                .get(&key)
                .map(|objs| {
                    objs.values()
                        .map(|o| {
                            Arc::new(Change {
                                rv: meta_str(o, "resourceVersion")
                                    .and_then(|s| s.parse().ok())
                                    .unwrap_or(0),
                                key: key.clone(),
                                kind: ChangeKind::Added,
                                object: o.clone(),
                                previous: None,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()),
            WatchFrom::After(rv) if rv < self.compacted => Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.compacted
            ))),
            WatchFrom::After(rv) => Ok(self
                .history
                .iter()
                .filter(|c| c.rv > rv && c.key == key)
                .cloned()
                .collect()),
        };
        if initial.is_ok() {
            self.watchers.push(Watcher { key, tx });
        }
        WatchStart {
            initial,
            rv: self.rv,
            live,
        }
    }

    /// Ends every open watch (after the changes already queued for it).
    pub(crate) fn drop_watches(&mut self) {
        self.watchers.clear();
    }

    /// Number of watches whose client is still connected.
    pub(crate) fn open_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }

    /// Forgets the event history: watches from an older resourceVersion get 410 Gone.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// What a real server's validation finds wrong with the content of `obj` (see
    /// [`validation`]); a custom resource is pruned to its schema on the way. On update
    /// (`old`), schema errors about values the update leaves alone are ratcheted.
    fn content_errors(
        &self,
        rt: &ResourceType,
        obj: &mut Map<String, Value>,
        old: Option<&Value>,
    ) -> Vec<validation::FieldError> {
        if !self.check_content {
            return Vec::new();
        }
        let mut errors = validation::builtin_errors(rt, obj);
        if let Some(schema) = self.crd_schema(rt) {
            let schema_errors = validation::schema_errors(schema, obj);
            errors.extend(match old {
                Some(old) => validation::ratchet(schema_errors, old, obj),
                None => schema_errors,
            });
        }
        errors
    }

    /// 422 if the updated `new` (of `existing`) breaks validation; a write to `/status` is
    /// checked (and pruned) only in `.status`.
    fn refuse_invalid(
        &self,
        rt: &ResourceType,
        existing: &Value,
        new: &mut Map<String, Value>,
        target: Target,
    ) -> Result<(), ApiError> {
        let errors = match (target, self.crd_schema(rt)) {
            (Target::Status, Some(schema)) if self.check_content => {
                let errors = validation::status_errors(schema, new);
                validation::ratchet(errors, existing, new)
            }
            (Target::Status, _) => Vec::new(),
            (Target::Main, _) => self.content_errors(rt, new, Some(existing)),
        };
        if errors.is_empty() {
            Ok(())
        } else {
            let name = meta_str(existing, "name").unwrap_or_default();
            Err(validation::invalid(rt, &name, &errors))
        }
    }

    /// The `openAPIV3Schema` of `rt`'s version in the CustomResourceDefinition that serves
    /// it, if a CRD object does and has one.
    fn crd_schema(&self, rt: &ResourceType) -> Option<&Value> {
        if rt.group.is_empty() {
            return None;
        }
        let key = ResKey {
            group: "apiextensions.k8s.io".into(),
            plural: "customresourcedefinitions".into(),
        };
        let crd_name = format!("{}.{}", rt.plural, rt.group);
        self.objects
            .get(&key)?
            .get(&(String::new(), crd_name))?
            .pointer("/spec/versions")?
            .as_array()?
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(rt.version.as_str()))?
            .pointer("/schema/openAPIV3Schema")
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        let key = ResKey {
            group: String::new(),
            plural: "namespaces".into(),
        };
        self.objects
            .get(&key)
            .is_some_and(|o| o.contains_key(&(String::new(), ns.to_string())))
    }

    /// Stores a change under a new resourceVersion and hands it to the watches of its kind.
    fn commit(
        &mut self,
        rt: &ResourceType,
        kind: ChangeKind,
        object: Value,
        previous: Option<Value>,
    ) -> Value {
        self.rv += 1;
        let mut object = object;
        if let Some(o) = object.as_object_mut() {
            object_mut(o, "metadata").insert("resourceVersion".into(), json!(self.rv.to_string()));
        }
        let object = present(rt, &object);
        let key = rt.key();
        let ns = meta_str(&object, "namespace").unwrap_or_default();
        let name = meta_str(&object, "name").unwrap_or_default();
        let objects = self.objects.entry(key.clone()).or_default();
        match kind {
            ChangeKind::Deleted => {
                objects.remove(&(ns, name));
            }
            ChangeKind::Added | ChangeKind::Modified => {
                objects.insert((ns, name), object.clone());
            }
        }
        let change = Arc::new(Change {
            rv: self.rv,
            key: key.clone(),
            kind,
            object: object.clone(),
            previous,
        });
        self.history.push(change.clone());
        self.watchers
            .retain(|w| w.key != key || w.tx.send(change.clone()).is_ok());
        object
    }

    /// Follow-ups of a create or update: a CRD (re)registers its kinds.
    fn after_write(&mut self, rt: &ResourceType, object: &Value) {
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            let name = meta_str(object, "name").unwrap_or_default();
            let old = self.registry.unregister_crd(&name);
            match types_from_crd(object) {
                Ok(types) => {
                    for t in types {
                        self.registry.register(t, Some(name.clone()));
                    }
                }
                Err(e) => tracing::warn!("fake-kube: CRD {name} no longer valid: {e}"),
            }
            self.drop_orphans(old);
        }
    }

    /// Follow-ups of a deletion: a CRD takes its kinds and objects with it, a namespace its
    /// contents.
    fn after_delete(&mut self, rt: &ResourceType, object: &Value) {
        let name = meta_str(object, "name").unwrap_or_default();
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            let old = self.registry.unregister_crd(&name);
            self.drop_orphans(old);
        } else if rt.group.is_empty() && rt.kind == "Namespace" {
            let keys: Vec<ResKey> = self.objects.keys().cloned().collect();
            for key in keys {
                let Some(t) = self
                    .registry
                    .types()
                    .find(|t| t.key() == key && t.namespaced)
                    .cloned()
                else {
                    continue;
                };
                let names: Vec<String> = self
                    .objects
                    .get(&key)
                    .map(|o| {
                        o.keys()
                            .filter(|(ns, _)| *ns == name)
                            .map(|(_, n)| n.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                for n in names {
                    if let Err(e) =
                        self.delete(&t, Some(&name), &n, &Preconditions::default(), false)
                    {
                        tracing::warn!("fake-kube: deleting {n} in namespace {name}: {e}");
                    }
                }
            }
        }
    }

    /// Deletes all objects of kinds that are no longer served at any version.
    fn drop_orphans(&mut self, gone: Vec<ResourceType>) {
        for rt in gone {
            let key = rt.key();
            if self.registry.serves_key(&key) {
                continue;
            }
            let objects = self.objects.remove(&key).unwrap_or_default();
            for obj in objects.into_values() {
                self.commit(&rt, ChangeKind::Deleted, obj.clone(), Some(obj));
            }
            self.objects.remove(&key);
        }
    }

    /// [`Store::upsert`] without checking the object's content (its name still is).
    pub(crate) fn upsert_unvalidated(&mut self, object: Value) -> Result<Value, ApiError> {
        self.check_content = false;
        let out = self.upsert(object);
        self.check_content = true;
        out
    }

    /// Creates or replaces an object given with its `apiVersion` and `kind` (Rust-side seeding).
    pub(crate) fn upsert(&mut self, object: Value) -> Result<Value, ApiError> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let rt = self
            .registry
            .lookup_kind(api_version, kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(format!("no kind {kind:?} is served at {api_version:?}"))
            })?;
        let name = meta_str(&object, "name").unwrap_or_default();
        let ns = rt.namespaced.then(|| {
            meta_str(&object, "namespace")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into())
        });
        let mut object = object;
        if let Some(o) = object.as_object_mut() {
            object_mut(o, "metadata").remove("resourceVersion");
        }
        if name.is_empty() || self.stored(&rt, ns.as_deref(), &name).is_none() {
            let created = self.create(&rt, ns.as_deref(), object.clone(), false)?;
            if !(rt.status_subresource && object.get("status").is_some()) {
                return Ok(created);
            }
            let name = meta_str(&created, "name").unwrap_or_default();
            return self.update(&rt, ns.as_deref(), &name, object, Target::Status, false);
        }
        let existing = self.update(
            &rt,
            ns.as_deref(),
            &name,
            object.clone(),
            Target::Main,
            false,
        )?;
        if rt.status_subresource && object.get("status").is_some() {
            return self.update(&rt, ns.as_deref(), &name, object, Target::Status, false);
        }
        Ok(existing)
    }
}

/// The object as a client sees it at `rt`'s version: `apiVersion` and `kind` filled in.
pub(crate) fn present(rt: &ResourceType, object: &Value) -> Value {
    let mut out = object.clone();
    if let Some(o) = out.as_object_mut() {
        o.insert("apiVersion".into(), json!(rt.api_version()));
        o.insert("kind".into(), json!(rt.kind));
    }
    out
}

/// A string field of `metadata`.
pub(crate) fn meta_str(object: &Value, field: &str) -> Option<String> {
    object
        .get("metadata")?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

/// A string field of `metadata`, for an object still held as a map.
fn map_meta_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn finalizers(meta: &Map<String, Value>) -> Vec<String> {
    meta.get("finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether anything but metadata (and status, for kinds with a status subresource) changed.
fn spec_changed(old: &Map<String, Value>, new: &Map<String, Value>, ignore_status: bool) -> bool {
    let strip = |m: &Map<String, Value>| {
        let mut m = m.clone();
        for k in ["metadata", "apiVersion", "kind"] {
            m.remove(k);
        }
        if ignore_status {
            m.remove("status");
        }
        m
    };
    strip(old) != strip(new)
}

fn into_object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(mut m) => {
            if m.get("metadata")
                .is_some_and(|v| !v.is_object() && !v.is_null())
            {
                return Err(ApiError::bad_request("metadata must be an object"));
            }
            if m.get("metadata").is_some_and(Value::is_null) {
                m.remove("metadata");
            }
            Ok(m)
        }
        _ => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
    }
}

/// The body's `apiVersion` and `kind`, if given (required for apply), must match the URL.
fn check_type(rt: &ResourceType, obj: &Map<String, Value>, required: bool) -> Result<(), ApiError> {
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    match (api_version, kind) {
        (None, _) | (_, None) if required => Err(ApiError::bad_request(format!(
            "Object 'Kind' or 'apiVersion' is missing in the request body; expected {} {}",
            rt.api_version(),
            rt.kind
        ))),
        (Some(v), _) if v != rt.api_version() => Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({})",
            rt.api_version()
        ))),
        (_, Some(k)) if k != rt.kind => Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        ))),
        _ => Ok(()),
    }
}

/// The body's `metadata.name` must equal the URL's (for apply, it may also be absent).
fn check_body_name(
    obj: &Map<String, Value>,
    name: &str,
    allow_empty: bool,
) -> Result<(), ApiError> {
    let body_name = map_meta_str(obj, "name").unwrap_or_default();
    if body_name == name || (allow_empty && body_name.is_empty()) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )))
    }
}

/// Reconciles the body's namespace with the URL's; returns the object's namespace.
fn resolve_namespace(
    rt: &ResourceType,
    url_ns: Option<&str>,
    obj: &mut Map<String, Value>,
) -> Result<Option<String>, ApiError> {
    let meta = object_mut(obj, "metadata");
    if !rt.namespaced {
        meta.remove("namespace");
        return Ok(None);
    }
    let url_ns = url_ns
        .ok_or_else(|| ApiError::bad_request("a namespace is required for a namespaced kind"))?;
    match meta.get("namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != url_ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".into(), json!(url_ns));
            Ok(Some(url_ns.to_string()))
        }
    }
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    format!("{rv}|{ns}|{name}")
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    let mut parts = token.splitn(3, '|');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_string(), parts.next()?.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm_type() -> ResourceType {
        ResourceType::new("", "v1", "ConfigMap", "configmaps")
    }

    #[test]
    fn bootstrap_state() {
        let s = Store::new();
        let ns = ResourceType::new("", "v1", "Namespace", "namespaces").cluster_scoped();
        let list = s
            .list(&ns, &Filter::default(), &ListOptions::default())
            .unwrap();
        assert_eq!(list["items"].as_array().map(Vec::len), Some(4));
        assert!(s
            .registry()
            .lookup("gateway.networking.k8s.io", "v1", "httproutes")
            .is_some());
        assert!(
            s.registry()
                .lookup("gateway.networking.k8s.io", "v1", "grpcroutes")
                .unwrap()
                .status_subresource
        );
    }

    #[test]
    fn create_update_conflict_and_noop() {
        let mut s = Store::new();
        let rt = cm_type();
        let created = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
                false,
            )
            .unwrap();
        let rv1 = meta_str(&created, "resourceVersion").unwrap();
        assert_eq!(created["kind"], "ConfigMap");
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_eq!(created["metadata"]["generation"], 1);

        let err = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "a"}}),
                false,
            )
            .unwrap_err();
        assert_eq!(err.reason, "AlreadyExists");
        let err = s
            .create(&rt, Some("nope"), json!({"metadata": {"name": "b"}}), false)
            .unwrap_err();
        assert_eq!(err.code, 404);
        let err = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "b", "resourceVersion": "5"}}),
                false,
            )
            .unwrap_err();
        assert_eq!(err.code, 400, "resourceVersion is not allowed on create");
        let err = s
            .update(
                &rt,
                Some("default"),
                "a",
                json!({"metadata": {}}),
                Target::Main,
                false,
            )
            .unwrap_err();
        assert_eq!(err.code, 400, "PUT needs the name in the body");

        let mut body = created.clone();
        body["data"]["k"] = json!("w");
        let updated = s
            .update(&rt, Some("default"), "a", body.clone(), Target::Main, false)
            .unwrap();
        assert_ne!(meta_str(&updated, "resourceVersion").unwrap(), rv1);
        assert_eq!(updated["metadata"]["generation"], 2);
        let err = s
            .update(&rt, Some("default"), "a", body, Target::Main, false)
            .unwrap_err();
        assert_eq!(err.reason, "Conflict");

        let rv_before = s.resource_version();
        let same = s
            .update(
                &rt,
                Some("default"),
                "a",
                updated.clone(),
                Target::Main,
                false,
            )
            .unwrap();
        assert_eq!(same, updated);
        assert_eq!(s.resource_version(), rv_before);
    }

    #[test]
    fn generate_name_and_invalid_names() {
        let mut s = Store::new();
        let rt = cm_type();
        let o = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"generateName": "web-"}}),
                false,
            )
            .unwrap();
        let name = meta_str(&o, "name").unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        for bad in ["Upper", "-x", "a_b", ""] {
            let err = s
                .create(
                    &rt,
                    Some("default"),
                    json!({"metadata": {"name": bad}}),
                    false,
                )
                .unwrap_err();
            assert_eq!(err.code, 422, "{bad}");
        }
    }

    #[test]
    fn finalizers_delay_deletion() {
        let mut s = Store::new();
        let rt = cm_type();
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "f", "finalizers": ["x/y"]}}),
            false,
        )
        .unwrap();
        let terminating = s
            .delete(&rt, Some("default"), "f", &Preconditions::default(), false)
            .unwrap();
        assert!(terminating.pointer("/metadata/deletionTimestamp").is_some());
        assert!(s.get(&rt, Some("default"), "f").is_ok());
        let mut body = terminating.clone();
        body["metadata"]["finalizers"] = json!([]);
        s.update(&rt, Some("default"), "f", body, Target::Main, false)
            .unwrap();
        assert_eq!(s.get(&rt, Some("default"), "f").unwrap_err().code, 404);
    }

    #[test]
    fn watch_replay_and_compaction() {
        let mut s = Store::new();
        let rt = cm_type();
        let start = s.resource_version();
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "a"}}),
            false,
        )
        .unwrap();
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "b"}}),
            false,
        )
        .unwrap();
        let w = s.watch(&rt, WatchFrom::After(start));
        assert_eq!(w.initial.unwrap().len(), 2);
        let w = s.watch(&rt, WatchFrom::Now { initial: true });
        assert_eq!(w.initial.unwrap().len(), 2);
        s.compact();
        let w = s.watch(&rt, WatchFrom::After(start));
        assert_eq!(w.initial.unwrap_err().code, 410);
        let w = s.watch(&rt, WatchFrom::After(s.resource_version()));
        assert!(w.initial.unwrap().is_empty());
    }

    #[test]
    fn pagination() {
        let mut s = Store::new();
        let rt = cm_type();
        for n in ["a", "b", "c"] {
            s.create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": n}}),
                false,
            )
            .unwrap();
        }
        let page = |token: Option<String>| {
            s.list(
                &rt,
                &Filter::default(),
                &ListOptions {
                    limit: Some(2),
                    continue_token: token,
                    exact_rv: None,
                },
            )
            .unwrap()
        };
        let first = page(None);
        assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
        let token = first["metadata"]["continue"].as_str().map(String::from);
        assert!(token.is_some());
        let second = page(token);
        assert_eq!(second["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(second["items"][0]["metadata"]["name"], "c");
        assert!(second["metadata"].get("continue").is_none());
        assert_eq!(
            first["metadata"]["resourceVersion"],
            second["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn crd_lifecycle_registers_and_removes_kinds() {
        let mut s = Store::new();
        let crd_t = s.crd_type();
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"kind": "Widget", "plural": "widgets"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true}],
            },
        });
        let created = s.create(&crd_t, None, crd, false).unwrap();
        assert_eq!(created["status"]["conditions"][1]["type"], "Established");
        let wt = s
            .registry()
            .lookup("example.com", "v1", "widgets")
            .cloned()
            .unwrap();
        s.create(
            &wt,
            Some("default"),
            json!({"metadata": {"name": "w"}}),
            false,
        )
        .unwrap();
        s.delete(
            &crd_t,
            None,
            "widgets.example.com",
            &Preconditions::default(),
            false,
        )
        .unwrap();
        assert!(s
            .registry()
            .lookup("example.com", "v1", "widgets")
            .is_none());
        assert!(s.get(&wt, Some("default"), "w").is_err());
    }
}
