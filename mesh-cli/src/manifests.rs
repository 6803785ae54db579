//! `meshctl inject|uninject FILE|DIR|-...`: reads every input, injects (or uninjects) each
//! document with the namespace annotations found in the input, and writes all documents to
//! stdout, or, if anything is wrong, only the errors to stderr.

use std::collections::BTreeMap;
use std::io::Write;

use mesh_inject::{Context, Doc, Report};
use serde_yaml_ng::Value;

use crate::args::Format;
use crate::documents::{self, Document};
use crate::error;
use crate::input;
use crate::summary::{self, Operation};

/// Namespace name -> annotations of every Namespace object in the documents (List items
/// included).
pub fn namespaces_in(docs: &[Document]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for doc in docs {
        collect_namespaces(&doc.value, &mut out);
    }
    out
}

fn collect_namespaces(value: &Value, out: &mut BTreeMap<String, BTreeMap<String, String>>) {
    let Some(map) = value.as_mapping() else {
        return;
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind.ends_with("List") {
        if let Some(items) = map.get("items").and_then(Value::as_sequence) {
            items.iter().for_each(|item| collect_namespaces(item, out));
        }
        return;
    }
    if kind != "Namespace" {
        return;
    }
    let meta = map.get("metadata");
    let Some(name) = meta.and_then(|m| m.get("name")).and_then(Value::as_str) else {
        return;
    };
    out.insert(
        name.to_string(),
        string_map(meta.and_then(|m| m.get("annotations"))),
    );
}

/// The string entries of an annotations mapping (others are reported by the injector).
pub fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one operation on one document in place.
pub fn transform(
    value: &mut Doc,
    op: Operation,
    ctx: &Context,
) -> Result<Vec<Report>, mesh_inject::InjectError> {
    match op {
        Operation::Inject(mode) => mesh_inject::inject(value, ctx, mode),
        Operation::Uninject => mesh_inject::uninject(value),
    }
}

/// The whole run over manifests; returns the process exit code.
pub fn run(op: Operation, inputs: &[String], format: Format, ctx: Context) -> u8 {
    let mut problems = Vec::new();
    let mut docs = Vec::new();
    for source in input::read_all(inputs) {
        match source.map(|s| documents::parse(&s)) {
            Ok(Ok(d)) => docs.extend(d),
            Ok(Err(p)) => problems.extend(p),
            Err(p) => problems.push(p),
        }
    }
    docs.retain(|doc| match documents::check_object(&doc.value) {
        Ok(()) => true,
        Err(message) => {
            problems.push(doc.problem(message));
            false
        }
    });
    let ctx = Context {
        namespaces: namespaces_in(&docs),
        ..ctx
    };
    let mut reports = Vec::new();
    for doc in &mut docs {
        match transform(&mut doc.value, op, &ctx) {
            Ok(r) => reports.extend(r),
            Err(e) => problems.push(doc.problem(e.to_string())),
        }
    }
    let output = if problems.is_empty() {
        match documents::render(&docs, format) {
            Ok(out) => Some(out),
            Err(p) => {
                problems.push(p);
                None
            }
        }
    } else {
        None
    };
    let Some(output) = output else {
        error::print_all(&problems);
        eprintln!(
            "meshctl {}: {} error(s); nothing was written to stdout. Fix the input and run it again.",
            op.verb(),
            problems.len()
        );
        return 1;
    };
    if docs.is_empty() {
        eprintln!(
            "meshctl {}: the input holds no documents; nothing to do",
            op.verb()
        );
    }
    for r in &reports {
        eprintln!("{r}");
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("error: cannot write to stdout: {e}");
        return 1;
    }
    eprintln!("{}", summary::line(op, &reports, false));
    0
}
