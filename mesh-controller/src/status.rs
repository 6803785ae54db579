//! Status conditions the controller reports on the routes and policies it reads.
//!
//! The index computes a [`StatusReport`] for every HTTPRoute, GRPCRoute, BackendPolicy and
//! Server after each batch of changes. On Kubernetes the leader writes them to the objects'
//! status subresource (see `kubernetes::status`); in local mode they are logged and served on
//! the admin `/status` page. Conditions keep their `lastTransitionTime` while their status
//! does not change.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::objects::{Kind, ObjKey};

/// Name this controller uses in Gateway API route status (`status.parents[].controllerName`).
pub const CONTROLLER_NAME: &str = "mesh.dev/controller";

/// One condition, as Kubernetes defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True" or "False".
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339; filled when the report is published.
    pub last_transition_time: String,
}

impl Condition {
    pub fn ok(type_: &str, reason: &str, message: &str, generation: Option<i64>) -> Self {
        Self::new(type_, "True", reason, message, generation)
    }

    pub fn fail(type_: &str, reason: &str, message: &str, generation: Option<i64>) -> Self {
        Self::new(type_, "False", reason, message, generation)
    }

    fn new(
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
        generation: Option<i64>,
    ) -> Self {
        Self {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: String::new(),
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// The status of one object: for routes one entry per Service parent, for policies one entry
/// without a parent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObjectStatus {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub entries: Vec<StatusEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<serde_json::Value>,
    pub conditions: Vec<Condition>,
}

impl ObjectStatus {
    /// Whether any condition is False (for logging and `/status` summaries).
    pub fn has_problem(&self) -> bool {
        self.entries
            .iter()
            .flat_map(|e| &e.conditions)
            .any(|c| !c.is_true())
    }

    /// The first False condition's message.
    pub fn problem(&self) -> Option<&Condition> {
        self.entries
            .iter()
            .flat_map(|e| &e.conditions)
            .find(|c| !c.is_true())
    }
}

/// Every object's status, by kind and key.
pub type StatusReport = BTreeMap<(Kind, ObjKey), ObjectStatus>;

/// Carries `lastTransitionTime` over from the previous report for conditions whose status did
/// not change, and stamps the others with `now`.
pub fn stamp(report: &mut StatusReport, previous: &StatusReport, now: &str) {
    for (k, st) in report.iter_mut() {
        let prev = previous.get(k);
        for (ei, entry) in st.entries.iter_mut().enumerate() {
            for c in entry.conditions.iter_mut() {
                let before = prev
                    .and_then(|p| p.entries.get(ei))
                    .and_then(|e| e.conditions.iter().find(|pc| pc.type_ == c.type_));
                c.last_transition_time = match before {
                    Some(b) if b.status == c.status => b.last_transition_time.clone(),
                    _ => now.to_string(),
                };
            }
        }
    }
}

/// The current time as RFC 3339, for condition timestamps.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: &str) -> StatusReport {
        let mut r = StatusReport::new();
        r.insert(
            (Kind::HttpRoute, ObjKey::new("a", "r")),
            ObjectStatus {
                kind: "HTTPRoute".into(),
                namespace: "a".into(),
                name: "r".into(),
                entries: vec![StatusEntry {
                    parent_ref: None,
                    conditions: vec![Condition::new("Accepted", status, "x", "y", None)],
                }],
            },
        );
        r
    }

    #[test]
    fn transition_time_kept_while_status_is_unchanged() {
        let mut first = report("True");
        stamp(&mut first, &StatusReport::new(), "t1");
        let mut same = report("True");
        stamp(&mut same, &first, "t2");
        let c = &same.values().next().unwrap().entries[0].conditions[0];
        assert_eq!(c.last_transition_time, "t1");
        let mut flipped = report("False");
        stamp(&mut flipped, &same, "t3");
        let c = &flipped.values().next().unwrap().entries[0].conditions[0];
        assert_eq!(c.last_transition_time, "t3");
    }
}
