//! Renders every object the mesh needs from [`Values`], in apply order, as JSON trees
//! ([`render`]) and as one YAML stream ([`to_yaml`]).
//!
//! The object builders read values only through `Src`. With values (`Src::Values`)
//! they produce the objects `meshctl install` applies. In template mode (`Src::Template`,
//! used by [`crate::chart`]) every value they read is a placeholder string instead, which
//! `emit` writes as a Helm expression; so the Helm chart is generated from this same code
//! and cannot drift from it. The scheme is small:
//!
//! - a scalar placeholder `\u{E000}<n>\u{E000}` stands for expression `n` (a quoted string, an
//!   integer, or a map or list written with `toYaml | nindent`); placeholders
//!   inside a longer string become `printf`;
//! - a map key prefixed with `\u{E001}<n>\u{E001}` is emitted only when condition `n` holds
//!   (`{{- if ... }}` / `{{- end }}` around the entry);
//! - an object may carry a condition of its own (the Gateway API CRDs).

mod controller;
mod crds;
pub(crate) mod emit;
pub(crate) mod rbac;

use std::cell::RefCell;

use base64::Engine as _;
use serde_json::Value;

use crate::values::Values;
use crate::VERSION;

pub use controller::{ADMIN_PORT, GRPC_PORT, SECRET_DATA, WEBHOOK_PORT};
pub use crds::GATEWAY_API_BUNDLE_VERSION;
pub use rbac::{CONFIG_MAP, CONTROLLER, IDENTITY_SECRET, WEBHOOK_SECRET};

/// The MutatingWebhookConfiguration's name.
pub const WEBHOOK_CONFIGURATION: &str = "mesh-proxy-injector";

/// What keeps the objects from being rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "value {key} is empty: meshctl install generates it (or reads it from the --identity-* \
         files); with Helm give it with --set-file {key}=FILE or in a values file"
    )]
    MissingCertificate { key: String },
    #[error("value {key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// Every object of the mesh for these values, in apply order: CRDs, Namespace,
/// ServiceAccount, RBAC, ConfigMap, Secrets, Service, Deployment, PodDisruptionBudget,
/// webhook configuration.
pub fn render(values: &Values) -> Result<Vec<Value>, RenderError> {
    let src = Src::Values(values);
    Ok(objects(&src)?
        .into_iter()
        .filter(|o| {
            o.when
                .is_none_or(|path| values.get(path) == Some(&Value::Bool(true)))
        })
        .map(|o| o.value)
        .collect())
}

/// The objects as one `---`-separated YAML stream with a header comment. RBAC rules carry a
/// comment saying why the controller needs them.
pub fn to_yaml(objects: &[Value]) -> String {
    let mut out = format!(
        "# The mesh {VERSION}, rendered by meshctl install (mesh-manifests).\n\
         # Apply with: kubectl apply --server-side -f <this file>\n"
    );
    for obj in objects {
        out.push_str("---\n");
        emit::document(obj, None, &mut out);
    }
    out
}

/// One rendered object, with where it goes in the chart and when it is rendered.
pub(crate) struct Object {
    /// The chart's template file (`templates/<file>.yaml`).
    pub file: &'static str,
    /// A boolean value that must be true for the object to exist.
    pub when: Option<&'static str>,
    pub value: Value,
}

/// Every object, in apply order.
pub(crate) fn objects(src: &Src) -> Result<Vec<Object>, RenderError> {
    let mut out = Vec::new();
    let mut push = |file: &'static str, when: Option<&'static str>, value: Value| {
        out.push(Object { file, when, value })
    };
    for crd in crds::mesh_crds()? {
        push("crds", None, crd);
    }
    for crd in crds::gateway_crds()? {
        push("gateway-api-crds", Some("gatewayAPI.installCRDs"), crd);
    }
    push("namespace", None, controller::namespace(src));
    push("rbac", None, controller::service_account(src));
    for obj in rbac::objects(src) {
        push("rbac", None, obj);
    }
    push("config", None, controller::config_map(src)?);
    push("secrets", None, controller::identity_secret(src)?);
    push("secrets", None, controller::webhook_secret(src)?);
    push("service", None, controller::service(src));
    push("deployment", None, controller::deployment(src));
    push("deployment", None, controller::pod_disruption_budget(src));
    push("webhook", None, controller::webhook(src)?);
    Ok(out)
}

/// The labels every object carries.
pub(crate) fn part_of() -> Value {
    serde_json::json!({"app.kubernetes.io/part-of": "mesh"})
}

/// How a placeholder is written in the chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    /// A string: `{{ expr | quote }}`.
    Str,
    /// An integer: `{{ expr | int }}`.
    Int,
    /// A map or list: `{{- toYaml expr | nindent N }}` after its key.
    Yaml,
}

/// A Helm expression standing for a value.
#[derive(Clone, Debug)]
pub(crate) struct Expr {
    pub expr: String,
    pub ty: Ty,
}

/// Marks a scalar placeholder (`MARK n MARK`).
pub(crate) const MARK: char = '\u{E000}';
/// Marks a conditional key (`KEY_MARK n KEY_MARK name`).
pub(crate) const KEY_MARK: char = '\u{E001}';

/// The placeholders handed out while rendering in template mode.
#[derive(Default)]
pub(crate) struct Template {
    pub exprs: RefCell<Vec<Expr>>,
    pub conds: RefCell<Vec<String>>,
}

impl Template {
    fn scalar(&self, expr: String, ty: Ty) -> String {
        let mut exprs = self.exprs.borrow_mut();
        exprs.push(Expr { expr, ty });
        format!("{MARK}{}{MARK}", exprs.len() - 1)
    }

    fn cond(&self, cond: String, key: &str) -> String {
        let mut conds = self.conds.borrow_mut();
        conds.push(cond);
        format!("{KEY_MARK}{}{KEY_MARK}{key}", conds.len() - 1)
    }
}

/// Where the builders read values from.
pub(crate) enum Src<'a> {
    Values(&'a Values),
    Template(&'a Template),
}

impl Src<'_> {
    /// The value at `path` as a string (booleans and numbers as their text).
    pub fn s(&self, path: &str) -> String {
        match self {
            Src::Values(v) => match v.get(path) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            },
            Src::Template(t) => t.scalar(format!(".Values.{path}"), Ty::Str),
        }
    }

    /// An image tag: `""` means this version.
    pub fn tag(&self, path: &str) -> String {
        match self {
            Src::Values(v) if v.str(path).is_empty() => VERSION.to_string(),
            Src::Values(_) => self.s(path),
            Src::Template(t) => t.scalar(
                format!(".Values.{path} | default .Chart.AppVersion"),
                Ty::Str,
            ),
        }
    }

    /// An integer value.
    pub fn int(&self, path: &str) -> Value {
        match self {
            Src::Values(v) => v.get(path).cloned().unwrap_or(Value::Null),
            Src::Template(t) => Value::String(t.scalar(format!(".Values.{path}"), Ty::Int)),
        }
    }

    /// A map or list copied as is.
    pub fn raw(&self, path: &str) -> Value {
        match self {
            Src::Values(v) => v.get(path).cloned().unwrap_or(Value::Null),
            Src::Template(t) => Value::String(t.scalar(format!(".Values.{path}"), Ty::Yaml)),
        }
    }

    /// Base64 of a required PEM value (a Secret's data, the caBundle).
    pub fn pem_b64(&self, path: &str) -> Result<String, RenderError> {
        match self {
            Src::Values(v) => {
                let pem = v.str(path);
                if pem.trim().is_empty() {
                    return Err(RenderError::MissingCertificate { key: path.into() });
                }
                if !pem.contains("-----BEGIN ") {
                    return Err(RenderError::Invalid {
                        key: path.into(),
                        reason: "not PEM text (no -----BEGIN line); give the PEM file's \
                                 contents"
                            .into(),
                    });
                }
                Ok(base64::engine::general_purpose::STANDARD.encode(pem))
            }
            Src::Template(t) => Ok(t.scalar(
                format!(
                    "required \"value {path} is required (PEM text): give it with --set-file \
                     {path}=FILE, or generate all six with meshctl install\" .Values.{path} | \
                     b64enc"
                ),
                Ty::Str,
            )),
        }
    }

    /// The effective values without `certificates`, as YAML (the ConfigMap's record).
    pub fn values_yaml(&self) -> String {
        match self {
            Src::Values(v) => serde_yaml_ng::to_string(&v.without_certificates())
                .unwrap_or_else(|e| format!("# cannot write the values: {e}\n")),
            Src::Template(t) => t.scalar("omit .Values \"certificates\" | toYaml".into(), Ty::Str),
        }
    }

    /// `key` when any of `paths` holds a non-empty string (or `true`), else `None`; in
    /// template mode, `key` under that condition.
    pub fn key_if_any(&self, key: &str, paths: &[&str]) -> Option<String> {
        match self {
            Src::Values(v) => paths
                .iter()
                .any(|p| match v.get(p) {
                    Some(Value::String(s)) => !s.is_empty(),
                    Some(Value::Bool(b)) => *b,
                    _ => false,
                })
                .then(|| key.to_string()),
            Src::Template(t) => {
                let vals: Vec<String> = paths.iter().map(|p| format!(".Values.{p}")).collect();
                let cond = match vals.as_slice() {
                    [one] => one.clone(),
                    many => format!("or {}", many.join(" ")),
                };
                Some(t.cond(cond, key))
            }
        }
    }
}
