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

fn duration(text: &Option<String>, field: &str) -> Result<Option<Duration>, String> {
    match text {
        None => Ok(None),
        Some(t) => humantime::parse_duration(t).map(Some).map_err(|e| {
            format!("{field}: '{t}' is not a duration ({e}); write e.g. 250ms, 2s, 1m")
        }),
    }
}

/// Validates a policy's spec.
pub fn settings(p: &BackendPolicy) -> Result<Settings, String> {
    let s = &p.spec;
    let mut out = Settings {
        balancer: s.load_balancer.map(|b| match b {
            LoadBalancer::PeakEWMA => BalancerKind::P2cPeakEwma,
            LoadBalancer::RoundRobin => BalancerKind::RoundRobin,
        }),
        timeout: duration(&s.timeout, "spec.timeout")?,
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
        if let Some(b) = duration(&r.backoff, "spec.retry.backoff")? {
            policy.backoff_base = b;
            policy.backoff_max = policy.backoff_max.max(b);
        }
        if let Some(b) = duration(&r.max_backoff, "spec.retry.maxBackoff")? {
            policy.backoff_max = b;
        }
        policy.validate().map_err(|e| format!("spec.retry: {e}"))?;
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
        if let Some(t) = duration(&b.ttl, "spec.retryBudget.ttl")? {
            budget.ttl = t;
        }
        budget
            .validate()
            .map_err(|e| format!("spec.retryBudget: {e}"))?;
        out.budget = Some(budget);
    }
    if let Some(c) = &s.circuit_breaker {
        let mut cb = CircuitBreaker::default();
        if let Some(n) = c.consecutive_failures {
            cb.consecutive_failures = n;
        }
        if let Some(t) = duration(
            &c.base_ejection_time,
            "spec.circuitBreaker.baseEjectionTime",
        )? {
            cb.base_ejection = t;
            cb.max_ejection = cb.max_ejection.max(t);
        }
        if let Some(t) = duration(&c.max_ejection_time, "spec.circuitBreaker.maxEjectionTime")? {
            cb.max_ejection = t;
        }
        if let Some(p) = c.max_ejected_percent {
            cb.max_ejected_percent = p;
        }
        cb.validate()
            .map_err(|e| format!("spec.circuitBreaker: {e}"))?;
        out.circuit_breaker = Some(cb);
    }
    Ok(out)
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
