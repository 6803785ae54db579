//! Resilience policy: retries, the retry budget, the load balancer choice and circuit
//! breaking (ejection of failing endpoints).

use std::time::Duration;

use crate::InvalidValue;

/// Conditions on which a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// The connection to the endpoint could not be established (the request never left).
    ConnectFailure,
    /// A gRPC status listed in `grpc_codes`.
    Grpc,
}

/// When and how often a route's requests are retried. Retries apply only to requests that
/// are safe to repeat: idempotent methods, or routes marked `retryable`, with bodies no larger
/// than `max_body_bytes`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub max_retries: u32,
    pub on: Vec<RetryOn>,
    /// gRPC status codes retried when `on` holds `grpc` (default: 14 UNAVAILABLE).
    pub grpc_codes: Vec<u32>,
    #[serde(with = "crate::policy::duration_text")]
    pub backoff_base: Duration,
    #[serde(with = "crate::policy::duration_text")]
    pub backoff_max: Duration,
    pub max_body_bytes: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            on: vec![
                RetryOn::GatewayError,
                RetryOn::ConnectFailure,
                RetryOn::Grpc,
            ],
            grpc_codes: vec![14],
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// The most retries a policy may ask for per request; more only amplifies outages.
pub const MAX_RETRIES_LIMIT: u32 = 10;
/// The largest body that may be buffered for replay.
pub const MAX_REPLAY_BODY_LIMIT: u32 = 16 * 1024 * 1024;

impl RetryPolicy {
    /// The first problem of [`RetryPolicy::problems`].
    pub fn validate(&self) -> Result<(), InvalidValue> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem, in field order (so that a person fixes them all at once).
    pub fn problems(&self) -> Vec<InvalidValue> {
        let mut out = Vec::new();
        if self.max_retries > MAX_RETRIES_LIMIT {
            out.push(InvalidValue::new(
                "max_retries",
                format!(
                    "{} is above the limit of {MAX_RETRIES_LIMIT}",
                    self.max_retries
                ),
            ));
        }
        if let Some(c) = self.grpc_codes.iter().find(|c| **c > 16) {
            out.push(InvalidValue::new(
                "grpc_codes",
                format!("{c} is not a gRPC status code (0-16)"),
            ));
        }
        if self.backoff_base > self.backoff_max {
            out.push(InvalidValue::new(
                "backoff_base",
                format!(
                    "{} is larger than backoff_max {}",
                    humantime::format_duration(self.backoff_base),
                    humantime::format_duration(self.backoff_max)
                ),
            ));
        }
        if self.backoff_max > Duration::from_secs(60) {
            out.push(InvalidValue::new("backoff_max", "must be at most 60s"));
        }
        if self.max_body_bytes > MAX_REPLAY_BODY_LIMIT {
            out.push(InvalidValue::new(
                "max_body_bytes",
                format!(
                    "{} is above the limit of {MAX_REPLAY_BODY_LIMIT}",
                    self.max_body_bytes
                ),
            ));
        }
        out
    }

    /// Whether a response with this HTTP status (and gRPC status, when the response carried
    /// one in its headers) should be retried.
    pub fn retries_response(&self, status: u16, grpc_status: Option<u32>) -> bool {
        self.on.iter().any(|on| match on {
            RetryOn::ServerError => (500..600).contains(&status),
            RetryOn::GatewayError => matches!(status, 502..=504),
            RetryOn::ConnectFailure => false,
            RetryOn::Grpc => grpc_status.is_some_and(|g| self.grpc_codes.contains(&g)),
        })
    }

    pub fn retries_connect_failure(&self) -> bool {
        self.on.contains(&RetryOn::ConnectFailure)
    }
}

/// Caps retries to a share of original requests so that retries never amplify an outage.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries may add at most this fraction of original requests.
    pub ratio: f32,
    /// Retries always allowed per second, whatever the ratio.
    pub min_retries_per_second: u32,
    /// How long a request counts towards the budget.
    #[serde(with = "crate::policy::duration_text")]
    pub ttl: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_retries_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl RetryBudget {
    /// The first problem of [`RetryBudget::problems`].
    pub fn validate(&self) -> Result<(), InvalidValue> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem, in field order.
    pub fn problems(&self) -> Vec<InvalidValue> {
        let mut out = Vec::new();
        if !(0.0..=1000.0).contains(&self.ratio) || self.ratio.is_nan() {
            out.push(InvalidValue::new(
                "ratio",
                format!("{} is not between 0.0 and 1000.0", self.ratio),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl) {
            out.push(InvalidValue::new("ttl", "must be between 1s and 60s"));
        }
        out
    }
}

/// The load-balancing algorithm for a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Power of two random choices, comparing peak-EWMA latency times in-flight requests.
    #[default]
    P2cPeakEwma,
    RoundRobin,
}

/// Circuit breaking by outlier ejection (Envoy's consecutive-5xx detection): an endpoint
/// that fails `consecutive_failures` requests in a row is taken out of load balancing for
/// `base_ejection` times the number of times it has been ejected, at most `max_ejection`;
/// unless more than `max_ejected_percent` of the service's endpoints would then be out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Failures in a row (no success between them) that eject an endpoint.
    pub consecutive_failures: u32,
    /// Length of the first ejection; the n-th ejection lasts n times as long.
    #[serde(with = "crate::policy::duration_text")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(with = "crate::policy::duration_text")]
    pub max_ejection: Duration,
    /// Most endpoints (in percent of the service's) that may be ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for CircuitBreaker {
    /// Envoy's outlier detection defaults (with a 50% cap instead of Envoy's 10%, so that
    /// small services can eject one endpoint).
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

impl CircuitBreaker {
    /// The first problem of [`CircuitBreaker::problems`].
    pub fn validate(&self) -> Result<(), InvalidValue> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem, in field order.
    pub fn problems(&self) -> Vec<InvalidValue> {
        let mut out = Vec::new();
        if self.consecutive_failures == 0 {
            out.push(InvalidValue::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.base_ejection < Duration::from_millis(1) {
            out.push(InvalidValue::new("base_ejection", "must be at least 1ms"));
        }
        if self.max_ejection < self.base_ejection {
            out.push(InvalidValue::new(
                "max_ejection",
                format!(
                    "{} is shorter than base_ejection {}",
                    humantime::format_duration(self.max_ejection),
                    humantime::format_duration(self.base_ejection)
                ),
            ));
        }
        if self.max_ejected_percent > 100 {
            out.push(InvalidValue::new(
                "max_ejected_percent",
                format!("{} is not between 0 and 100", self.max_ejected_percent),
            ));
        }
        out
    }

    /// How long the `n`-th ejection (counting from 1) of an endpoint lasts.
    pub fn ejection_time(&self, n: u32) -> Duration {
        self.base_ejection
            .saturating_mul(n.max(1))
            .min(self.max_ejection)
    }
}

/// Policy for reaching a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendPolicy {
    pub balancer: BalancerKind,
    pub retry_budget: RetryBudget,
    /// Ejection of failing endpoints; `None` (the default) turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

impl BackendPolicy {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        self.retry_budget
            .validate()
            .map_err(|e| e.within("retry_budget"))?;
        if let Some(cb) = &self.circuit_breaker {
            cb.validate().map_err(|e| e.within("circuit_breaker"))?;
        }
        Ok(())
    }
}

/// Serde helper: durations as human-readable text (`250ms`, `2s`, `1m 30s`).
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{text}' is not a duration ({e}); write e.g. 250ms, 2s, 1m"
            ))
        })
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&humantime::format_duration(*d)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_only_configured_conditions() {
        let p = RetryPolicy::default();
        assert!(p.retries_response(503, None));
        assert!(!p.retries_response(500, None));
        assert!(p.retries_response(200, Some(14)));
        assert!(!p.retries_response(200, Some(2)));
        assert!(p.retries_connect_failure());
        let all5xx = RetryPolicy {
            on: vec![RetryOn::ServerError],
            ..Default::default()
        };
        assert!(all5xx.retries_response(500, None));
        assert!(!all5xx.retries_connect_failure());
    }

    #[test]
    fn validation_names_the_field() {
        let p = RetryPolicy {
            max_retries: 50,
            ..Default::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "max_retries");
        let b = BackendPolicy {
            retry_budget: RetryBudget {
                ttl: Duration::from_millis(1),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(b.validate().unwrap_err().field, "retry_budget.ttl");
    }

    #[test]
    fn circuit_breaker_defaults_validation_and_ejection_times() {
        let p: BackendPolicy = serde_yaml_ng::from_str("balancer: round_robin\n").unwrap();
        assert_eq!(p.circuit_breaker, None, "off unless configured");
        let p: BackendPolicy = serde_yaml_ng::from_str("circuit_breaker: {}\n").unwrap();
        let cb = p.circuit_breaker.unwrap();
        assert_eq!(cb, CircuitBreaker::default());
        assert_eq!(cb.consecutive_failures, 5);
        assert_eq!(cb.base_ejection, Duration::from_secs(30));
        assert_eq!(cb.max_ejection, Duration::from_secs(300));
        assert_eq!(cb.max_ejected_percent, 50);
        p.validate().unwrap();
        assert_eq!(cb.ejection_time(1), Duration::from_secs(30));
        assert_eq!(cb.ejection_time(3), Duration::from_secs(90));
        assert_eq!(cb.ejection_time(11), Duration::from_secs(300));
        assert_eq!(cb.ejection_time(u32::MAX), Duration::from_secs(300));

        let p: BackendPolicy = serde_yaml_ng::from_str(
            "circuit_breaker: { consecutive_failures: 2, base_ejection: 250ms, max_ejection: 1s, max_ejected_percent: 100 }\n",
        )
        .unwrap();
        p.validate().unwrap();
        let yaml = serde_yaml_ng::to_string(&p).unwrap();
        assert!(yaml.contains("base_ejection: 250ms"), "{yaml}");
        assert_eq!(serde_yaml_ng::from_str::<BackendPolicy>(&yaml).unwrap(), p);

        for (yaml, field) in [
            (
                "{ consecutive_failures: 0 }",
                "circuit_breaker.consecutive_failures",
            ),
            ("{ base_ejection: 0s }", "circuit_breaker.base_ejection"),
            (
                "{ base_ejection: 1m, max_ejection: 10s }",
                "circuit_breaker.max_ejection",
            ),
            (
                "{ max_ejected_percent: 101 }",
                "circuit_breaker.max_ejected_percent",
            ),
        ] {
            let p: BackendPolicy =
                serde_yaml_ng::from_str(&format!("circuit_breaker: {yaml}\n")).unwrap();
            assert_eq!(p.validate().unwrap_err().field, field, "{yaml}");
        }
        assert!(
            serde_yaml_ng::from_str::<BackendPolicy>("circuit_breaker: { failures: 3 }\n").is_err()
        );
    }

    #[test]
    fn problems_lists_every_invalid_field() {
        let p = RetryPolicy {
            max_retries: 50,
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_millis(10),
            ..Default::default()
        };
        let fields: Vec<_> = p.problems().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["max_retries", "backoff_base"]);
        assert_eq!(p.validate().unwrap_err().field, "max_retries");
        let msg = p.problems()[1].to_string();
        assert_eq!(msg, "backoff_base: 5s is larger than backoff_max 10ms");
        let cb = CircuitBreaker {
            consecutive_failures: 0,
            base_ejection: Duration::from_secs(300),
            max_ejection: Duration::from_secs(1),
            max_ejected_percent: 101,
        };
        let fields: Vec<_> = cb.problems().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "consecutive_failures",
                "max_ejection",
                "max_ejected_percent"
            ]
        );
        assert!(RetryPolicy::default().problems().is_empty());
        assert!(CircuitBreaker::default().problems().is_empty());
        assert!(RetryBudget::default().problems().is_empty());
    }

    #[test]
    fn policy_reads_from_yaml() {
        let p: RetryPolicy = serde_yaml_ng::from_str(
            "max_retries: 3\non: [5xx, connect_failure]\nbackoff_base: 10ms\n",
        )
        .unwrap();
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.on, vec![RetryOn::ServerError, RetryOn::ConnectFailure]);
        assert_eq!(p.backoff_base, Duration::from_millis(10));
        let err = serde_yaml_ng::from_str::<RetryPolicy>("backoff_base: soon\n").unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}
