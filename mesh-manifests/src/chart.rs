//! The Helm chart `charts/mesh`, generated from the same object builders as
//! [`crate::render()`], run in template mode (see [`mod@crate::render`]'s module documentation
//! for the placeholder scheme), plus `values.yaml` and `values.schema.json` generated from
//! [`crate::values::KEYS`].
//!
//! The chart is checked in; `mesh-manifests/tests/chart.rs` fails when it differs from
//! [`chart_files`]. Regenerate it with
//! `MESH_UPDATE_CHART=1 cargo test -p mesh-manifests --test chart`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::render::{emit, objects, RenderError, Src, Template};
use crate::values::{Kind, GROUPS, KEYS};
use crate::VERSION;

/// The command that regenerates the chart, named in every generated file.
pub const REGENERATE: &str = "MESH_UPDATE_CHART=1 cargo test -p mesh-manifests --test chart";

/// The oldest Kubernetes version the mesh supports.
pub const KUBE_VERSION: &str = ">=1.32.0-0";

fn header(comment: &str) -> String {
    format!(
        "{comment} Generated from mesh-manifests (the code behind meshctl install); do not edit.\n\
         {comment} Regenerate with: {REGENERATE}\n"
    )
}

/// Every file of the chart, by path relative to `charts/mesh`.
pub fn chart_files() -> Result<BTreeMap<PathBuf, String>, RenderError> {
    let mut files = BTreeMap::new();
    files.insert(PathBuf::from("Chart.yaml"), chart_yaml());
    files.insert(PathBuf::from("values.yaml"), values_yaml());
    files.insert(PathBuf::from("values.schema.json"), values_schema());
    files.insert(PathBuf::from("README.md"), readme());
    files.insert(PathBuf::from("templates/NOTES.txt"), notes());

    let template = Template::default();
    let src = Src::Template(&template);
    for obj in objects(&src)? {
        let text = files
            .entry(PathBuf::from(format!("templates/{}.yaml", obj.file)))
            .or_insert_with(|| header("#"));
        if let Some(path) = obj.when {
            text.push_str(&format!("{{{{- if .Values.{path} }}}}\n"));
        }
        text.push_str("---\n");
        emit::document(&obj.value, Some(&template), text);
        if obj.when.is_some() {
            text.push_str("{{- end }}\n");
        }
    }
    Ok(files)
}

fn chart_yaml() -> String {
    format!(
        "{}apiVersion: v2\n\
         name: mesh\n\
         description: The mesh's control plane, CRDs and proxy injector (the objects of meshctl install)\n\
         type: application\n\
         version: {VERSION}\n\
         appVersion: {}\n\
         kubeVersion: {}\n",
        header("#"),
        json!(VERSION),
        json!(KUBE_VERSION),
    )
}

/// values.yaml: every key with its default and a comment, grouped as the keys are.
fn values_yaml() -> String {
    let mut out = header("#");
    out.push_str(
        "#\n# The same keys as meshctl install --set / -f. Unknown keys and wrong types are\n\
         # refused (values.schema.json).\n",
    );
    let mut open: Vec<&str> = Vec::new();
    for k in KEYS {
        let segs: Vec<&str> = k.path.split('.').collect();
        let (groups, name) = segs.split_at(segs.len() - 1);
        let common = open.iter().zip(groups).take_while(|(a, b)| a == b).count();
        open.truncate(common);
        for (depth, g) in groups.iter().enumerate().skip(common) {
            let path = groups[..=depth].join(".");
            let help = group_help(&path);
            let pad = "  ".repeat(depth);
            if depth == 0 {
                out.push('\n');
            }
            if !help.is_empty() {
                out.push_str(&format!("{pad}# {help}\n"));
            }
            out.push_str(&format!("{pad}{g}:\n"));
            open.push(g);
        }
        let pad = "  ".repeat(groups.len());
        if groups.is_empty() {
            out.push('\n');
        }
        let default = match k.kind {
            Kind::Int { .. } | Kind::Bool => k.default.to_string(),
            Kind::StringMap => "{}".into(),
            Kind::List => "[]".into(),
            _ => emit::plain_scalar(&Value::String(k.default.into()), 0),
        };
        out.push_str(&format!("{pad}# {}\n{pad}{}: {default}\n", k.help, name[0]));
    }
    out
}

fn group_help(path: &str) -> &'static str {
    GROUPS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, h)| *h)
        .unwrap_or("")
}

fn key_schema(kind: Kind, help: &str) -> Value {
    let string_or_int = json!(["string", "integer"]);
    let mut s = match kind {
        Kind::Str | Kind::Pem => json!({"type": string_or_int}),
        Kind::DnsLabel => json!({
            "type": "string",
            "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        }),
        Kind::Domain => json!({
            "type": "string",
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
            "maxLength": 253,
        }),
        Kind::Enum(options) => json!({"type": "string", "enum": options}),
        Kind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Quantity { empty_ok } => json!({
            "type": string_or_int,
            "pattern": format!(
                "^{}[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?{}$",
                if empty_ok { "(" } else { "" },
                if empty_ok { ")?" } else { "" },
            ),
        }),
        Kind::Duration => json!({"type": "string", "pattern": "^([0-9]+(h|m|s|d))+$"}),
        Kind::StringMap => json!({"type": "object", "additionalProperties": {"type": "string"}}),
        Kind::List => json!({"type": "array"}),
    };
    s["description"] = json!(help);
    s
}

/// values.schema.json: Helm refuses unknown keys and wrong types with it, as meshctl does.
fn values_schema() -> String {
    let mut root = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Values of the mesh chart",
        "type": "object",
        "additionalProperties": false,
        "properties": {},
    });
    for k in KEYS {
        let segs: Vec<&str> = k.path.split('.').collect();
        let mut node = &mut root;
        for (depth, seg) in segs.iter().enumerate() {
            let schema = if depth + 1 == segs.len() {
                key_schema(k.kind, k.help)
            } else {
                let path = segs[..=depth].join(".");
                json!({
                    "type": "object",
                    "description": group_help(&path),
                    "additionalProperties": false,
                    "properties": {},
                })
            };
            let Some(props) = node.get_mut("properties").and_then(Value::as_object_mut) else {
                break;
            };
            node = props.entry(seg.to_string()).or_insert(schema);
        }
    }
    let mut text = serde_json::to_string_pretty(&root).unwrap_or_default();
    text.push('\n');
    text
}

fn notes() -> String {
    "The mesh {{ .Chart.AppVersion }} is installed in namespace {{ .Values.namespace }}.\n\
     \n\
     Check it:   meshctl check\n\
     Inject pods of a namespace:\n\
     \x20 kubectl annotate namespace <ns> mesh.dev/inject=enabled\n"
        .to_string()
}

fn readme() -> String {
    let mut out = header("<!--").replace('\n', " -->\n");
    out.push_str(&format!(
        "\n# mesh Helm chart\n\n\
         The mesh's CRDs, control plane and proxy injector: the same objects as\n\
         `meshctl install` renders for the same values (version {VERSION}).\n\n\
         The chart needs the six `certificates.*` values (PEM), which it does not generate:\n\
         the trust anchor and issuer (e.g. from `mesh-controller identity init --dir ./ca`)\n\
         and the webhook's serving certificate with the DNS names\n\
         `mesh-controller.<namespace>.svc` and `mesh-controller.<namespace>.svc.<clusterDomain>`,\n\
         with the CA that signed it:\n\n\
         ```sh\n\
         helm install mesh charts/mesh \\\n\
         \x20 --set-file certificates.trustAnchorsPEM=ca/trust-anchors.pem \\\n\
         \x20 --set-file certificates.issuerCrtPEM=ca/issuer.crt \\\n\
         \x20 --set-file certificates.issuerKeyPEM=ca/issuer.key \\\n\
         \x20 --set-file certificates.webhookCrtPEM=webhook.crt \\\n\
         \x20 --set-file certificates.webhookKeyPEM=webhook.key \\\n\
         \x20 --set-file certificates.webhookCaPEM=webhook-ca.crt\n\
         ```\n\n\
         Objects go to the namespace of the `namespace` value (created by the chart), whatever\n\
         the release namespace. The CRDs are templates (not `crds/`), so that upgrades\n\
         update them and `gatewayAPI.installCRDs` can leave the Gateway API ones out; they\n\
         carry `helm.sh/resource-policy: keep`, so `helm uninstall` leaves them (deleting a\n\
         CRD deletes every object of its kind).\n\n\
         ## Values\n\n\
         | key | default | meaning |\n|---|---|---|\n"
    ));
    for k in KEYS {
        let default = match k.kind {
            Kind::StringMap => "{}".to_string(),
            Kind::List => "[]".to_string(),
            Kind::Int { .. } | Kind::Bool => k.default.to_string(),
            _ => format!("{:?}", k.default),
        };
        out.push_str(&format!(
            "| `{}` | `{default}` | {} |\n",
            k.path,
            k.help.replace('|', "\\|")
        ));
    }
    out
}
