//! BackendPolicy objects turned into the proxy's resilience settings.
//!
//! A policy targets a Service (everything about traffic to it: balancer, retries, budget,
//! circuit breaking, default timeout) or an HTTPRoute/GRPCRoute (retries and timeout for the
//! requests that route matches). When several policies target the same object, the oldest
//! (then the first by name) wins and the others are reported `Accepted: False`, reason
//! `Conflicted`, as Gateway API policy attachment prescribes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::{BalancerKind, CircuitBreaker, RetryBudget, RetryOn, RetryPolicy};
use mesh_crds::{BackendPolicy, LoadBalancer};

use crate::objects::{ObjKey, Objects};
use crate::status::Condition;

/// What a BackendPolicy says, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub balancer: Option<BalancerKind>,
    pub retry: Option<RetryPolicy>,
    pub retryable: bool,
    pub budget: Option<RetryBudget>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub timeout: Option<Duration>,
}

/// The CRD's names (under `spec.`) for the fields of the proxy's policy model, so that a
/// status message names what the user wrote (`spec.retry.maxBackoff`), never the model's
/// field (`backoff_max`).
const RETRY_FIELDS: &[(&str, &str)] = &[
    ("max_retries", "retry.attempts"),
    ("grpc_codes", "retry.grpcCodes"),
    ("backoff_base", "retry.backoff"),
    ("backoff_max", "retry.maxBackoff"),
    ("on", "retry.on"),
];
const BUDGET_FIELDS: &[(&str, &str)] = &[
    ("ratio", "retryBudget.ratio"),
    ("min_retries_per_second", "retryBudget.minRetriesPerSecond"),
    ("ttl", "retryBudget.ttl"),
];
const CIRCUIT_BREAKER_FIELDS: &[(&str, &str)] = &[
    ("consecutive_failures", "circuitBreaker.consecutiveFailures"),
    ("base_ejection", "circuitBreaker.baseEjectionTime"),
    ("max_ejection", "circuitBreaker.maxEjectionTime"),
    ("max_ejected_percent", "circuitBreaker.maxEjectedPercent"),
];

/// A model validation error in the CRD's terms: the field renamed, and model field names in
/// the reason (`... larger than backoff_max 10ms`) renamed too.
fn crd_message(e: &mesh_core::InvalidValue, section: &str, names: &[(&str, &str)]) -> String {
    let crd = |model: &str| {
        names
            .iter()
            .find(|(m, _)| *m == model)
            .map(|(_, c)| format!("spec.{c}"))
    };
    let field = crd(&e.field).unwrap_or_else(|| format!("spec.{section}"));
    let mut reason = e.reason.clone();
    for (model, c) in names.iter().filter(|(m, _)| m.contains('_')) {
        reason = reason.replace(model, &format!("spec.{c}"));
    }
    format!("{field}: {reason}")
}

fn duration(text: &Option<String>, field: &str, errors: &mut Vec<String>) -> Option<Duration> {
    let t = text.as_ref()?;
    match humantime::parse_duration(t) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(format!(
                "{field}: '{t}' is not a duration ({e}), write e.g. 250ms, 2s, 1m"
            ));
            None
        }
    }
}

/// A lower and an upper bound where either may be left out: the one given moves the other's
/// default out of its way (a `backoff` above the default `maxBackoff` raises it; a
/// `maxBackoff` below the default `backoff` lowers it). Only two given values can conflict.
fn bounds(
    low: Option<Duration>,
    high: Option<Duration>,
    default_low: Duration,
    default_high: Duration,
) -> (Duration, Duration) {
    match (low, high) {
        (Some(l), Some(h)) => (l, h),
        (Some(l), None) => (l, default_high.max(l)),
        (None, Some(h)) => (default_low.min(h), h),
        (None, None) => (default_low, default_high),
    }
}

/// Validates a policy's spec; the error lists every invalid field (joined with "; "), each
/// named as in the CRD.
pub fn settings(p: &BackendPolicy) -> Result<Settings, String> {
    let s = &p.spec;
    let mut errors = Vec::new();
    let mut out = Settings {
        balancer: s.load_balancer.map(|b| match b {
            LoadBalancer::PeakEWMA => BalancerKind::P2cPeakEwma,
            LoadBalancer::RoundRobin => BalancerKind::RoundRobin,
        }),
        timeout: duration(&s.timeout, "spec.timeout", &mut errors),
        ..Default::default()
    };
    if let Some(r) = &s.retry {
        let mut policy = RetryPolicy::default();
        if let Some(n) = r.attempts {
            policy.max_retries = n;
        }
        if !r.on.is_empty() {
            policy.on =
                r.on.iter()
                    .map(|o| match o {
                        mesh_crds::RetryOn::ServerError => RetryOn::ServerError,
                        mesh_crds::RetryOn::GatewayError => RetryOn::GatewayError,
                        mesh_crds::RetryOn::ConnectFailure => RetryOn::ConnectFailure,
                        mesh_crds::RetryOn::Grpc => RetryOn::Grpc,
                    })
                    .collect();
        }
        if !r.grpc_codes.is_empty() {
            policy.grpc_codes = r.grpc_codes.clone();
        }
        let base = duration(&r.backoff, "spec.retry.backoff", &mut errors);
        let max = duration(&r.max_backoff, "spec.retry.maxBackoff", &mut errors);
        (policy.backoff_base, policy.backoff_max) =
            bounds(base, max, policy.backoff_base, policy.backoff_max);
        errors.extend(
            policy
                .problems()
                .iter()
                .map(|e| crd_message(e, "retry", RETRY_FIELDS)),
        );
        out.retry = Some(policy);
        out.retryable = r.retryable;
    }
    if let Some(b) = &s.retry_budget {
        let mut budget = RetryBudget::default();
        if let Some(r) = b.ratio {
            budget.ratio = r as f32;
        }
        if let Some(m) = b.min_retries_per_second {
            budget.min_retries_per_second = m;
        }
        if let Some(t) = duration(&b.ttl, "spec.retryBudget.ttl", &mut errors) {
            budget.ttl = t;
        }
        errors.extend(
            budget
                .problems()
                .iter()
                .map(|e| crd_message(e, "retryBudget", BUDGET_FIELDS)),
        );
        out.budget = Some(budget);
    }
    if let Some(c) = &s.circuit_breaker {
        let mut cb = CircuitBreaker::default();
        if let Some(n) = c.consecutive_failures {
            cb.consecutive_failures = n;
        }
        let base = duration(
            &c.base_ejection_time,
            "spec.circuitBreaker.baseEjectionTime",
            &mut errors,
        );
        let max = duration(
            &c.max_ejection_time,
            "spec.circuitBreaker.maxEjectionTime",
            &mut errors,
        );
        (cb.base_ejection, cb.max_ejection) = bounds(base, max, cb.base_ejection, cb.max_ejection);
        if let Some(p) = c.max_ejected_percent {
            cb.max_ejected_percent = p;
        }
        errors.extend(
            cb.problems()
                .iter()
                .map(|e| crd_message(e, "circuitBreaker", CIRCUIT_BREAKER_FIELDS)),
        );
        out.circuit_breaker = Some(cb);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

/// The policy in force for each target, and the conditions of every policy.
#[derive(Default)]
pub struct Resolved {
    /// By target: (kind, namespace/name) → settings.
    pub by_target: BTreeMap<(String, ObjKey), Arc<Settings>>,
    pub conditions: BTreeMap<ObjKey, Vec<Condition>>,
}

fn normal_kind(group: &str, kind: &str) -> Option<&'static str> {
    match (group, kind) {
        ("" | "core", "Service") => Some("Service"),
        ("gateway.networking.k8s.io", "HTTPRoute") => Some("HTTPRoute"),
        ("gateway.networking.k8s.io", "GRPCRoute") => Some("GRPCRoute"),
        _ => None,
    }
}

/// Resolves every BackendPolicy: validity, target existence and conflicts.
pub fn resolve(objs: &Objects) -> Resolved {
    let mut out = Resolved::default();
    let mut ordered: Vec<(&ObjKey, &Arc<BackendPolicy>)> = objs.policies.iter().collect();
    ordered.sort_by(|a, b| {
        let ta = a.1.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.1.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| a.0.cmp(b.0))
    });
    for (key, p) in ordered {
        let generation = p.metadata.generation;
        let t = &p.spec.target_ref;
        let target = ObjKey::new(key.namespace.clone(), t.name.clone());
        let cond = match normal_kind(&t.group, &t.kind) {
            None => Condition::fail(
                "Accepted",
                "InvalidKind",
                &format!(
                    "spec.targetRef: kind '{}' in group '{}' cannot be targeted; use Service, HTTPRoute or GRPCRoute",
                    t.kind, t.group
                ),
                generation,
            ),
            Some(kind) => {
                let exists = match kind {
                    "Service" => objs.services.contains_key(&target),
                    "HTTPRoute" => objs.http_routes.contains_key(&target),
                    _ => objs.grpc_routes.contains_key(&target),
                };
                match settings(p) {
                    Err(e) => Condition::fail("Accepted", "Invalid", &e, generation),
                    Ok(_) if !exists => Condition::fail(
                        "Accepted",
                        "TargetNotFound",
                        &format!("{kind} {target} does not exist"),
                        generation,
                    ),
                    Ok(s) => {
                        let slot = (kind.to_string(), target.clone());
                        if out.by_target.contains_key(&slot) {
                            Condition::fail(
                                "Accepted",
                                "Conflicted",
                                &format!("an older BackendPolicy already targets {kind} {target}"),
                                generation,
                            )
                        } else {
                            if kind != "Service"
                                && (s.balancer.is_some()
                                    || s.budget.is_some()
                                    || s.circuit_breaker.is_some())
                            {
                                // Applied, but say which fields have no effect on a route.
                                out.by_target.insert(slot, Arc::new(s));
                                out.conditions.insert(
                                    key.clone(),
                                    vec![Condition::ok(
                                        "Accepted",
                                        "Accepted",
                                        "applied; loadBalancer, retryBudget and circuitBreaker only apply when the target is a Service and are ignored here",
                                        generation,
                                    )],
                                );
                                continue;
                            }
                            out.by_target.insert(slot, Arc::new(s));
                            Condition::ok("Accepted", "Accepted", "policy applied", generation)
                        }
                    }
                }
            }
        };
        out.conditions.insert(key.clone(), vec![cond]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spec: serde_json::Value) -> BackendPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mesh.dev/v1alpha1",
            "kind": "BackendPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn target() -> serde_json::Value {
        serde_json::json!({"kind": "Service", "name": "web"})
    }

    #[test]
    fn every_error_is_reported_with_the_crd_field_names() {
        let p = policy(serde_json::json!({
            "targetRef": target(),
            "retry": {"backoff": "5s", "maxBackoff": "10ms", "attempts": 50},
            "circuitBreaker": {"baseEjectionTime": "300s", "maxEjectionTime": "1s", "maxEjectedPercent": 101},
            "retryBudget": {"ttl": "2h"},
            "timeout": "soon",
        }));
        let e = settings(&p).unwrap_err();
        let parts: Vec<&str> = e.split("; ").collect();
        assert_eq!(
            parts,
            [
                "spec.timeout: 'soon' is not a duration (expected number at 0), write e.g. 250ms, 2s, 1m",
                "spec.retry.attempts: 50 is above the limit of 10",
                "spec.retry.backoff: 5s is larger than spec.retry.maxBackoff 10ms",
                "spec.retryBudget.ttl: must be between 1s and 60s",
                "spec.circuitBreaker.maxEjectionTime: 1s is shorter than spec.circuitBreaker.baseEjectionTime 5m",
                "spec.circuitBreaker.maxEjectedPercent: 101 is not between 0 and 100",
            ],
            "{e}"
        );
        for internal in [
            "backoff_",
            "max_ejection",
            "base_ejection",
            "max_retries",
            "ejected_percent",
        ] {
            assert!(!e.contains(internal), "{internal} in {e}");
        }
    }

    #[test]
    fn one_bound_moves_the_default_of_the_other() {
        let p = policy(serde_json::json!({
            "targetRef": target(),
            "retry": {"maxBackoff": "10ms"},
            "circuitBreaker": {"baseEjectionTime": "10m"},
        }));
        let s = settings(&p).unwrap();
        let r = s.retry.unwrap();
        assert_eq!(
            (r.backoff_base, r.backoff_max),
            (Duration::from_millis(10), Duration::from_millis(10))
        );
        let cb = s.circuit_breaker.unwrap();
        assert_eq!(
            (cb.base_ejection, cb.max_ejection),
            (Duration::from_secs(600), Duration::from_secs(600))
        );
        let p = policy(serde_json::json!({
            "targetRef": target(),
            "circuitBreaker": {"maxEjectionTime": "1s"},
        }));
        let cb = settings(&p).unwrap().circuit_breaker.unwrap();
        assert_eq!(
            (cb.base_ejection, cb.max_ejection),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
        let p = policy(serde_json::json!({
            "targetRef": target(),
            "circuitBreaker": {"baseEjectionTime": "1s", "maxEjectionTime": "1s"},
        }));
        assert!(settings(&p).is_ok());
    }
}
