//! Enforcing authorization decisions: counting denials (and audit mode's would-be
//! denials), logging them at a bounded rate, and the responses a denied request gets (403,
//! or for gRPC a trailers-only response with status PERMISSION_DENIED).
//!
//! The decisions themselves are `mesh_core::authz` (pure and tested there); the policy
//! comes from the controller's `Inbound.WatchWorkload` stream
//! ([`crate::discovery::inbound_policy`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Response, StatusCode};
use mesh_core::authz::Verdict;

use crate::body::ProxyBody;
use crate::error::PROXY_ERROR_HEADER;
use crate::metrics::{AuthzLabels, Direction, Metrics, Str};

/// Denials logged per second at most; the rest are counted only.
const LOGS_PER_SECOND: u64 = 5;

static LOG_SECOND: AtomicU64 = AtomicU64::new(0);
static LOGGED: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Counts and logs `verdict`; returns whether the traffic may pass (allowed, or audit).
/// `describe` is called only when a line is logged.
pub fn report(
    metrics: &Metrics,
    direction: Direction,
    server: &Str,
    route: Option<&Str>,
    verdict: &Verdict,
    describe: impl FnOnce() -> String,
) -> bool {
    let (denial, action, allowed) = match verdict {
        Verdict::Allow => return true,
        Verdict::Deny(d) => (d, "deny", false),
        Verdict::WouldDeny(d) => (d, "would-deny", true),
    };
    let reason = if direction == Direction::Outbound {
        "egress"
    } else {
        denial.reason.as_str()
    };
    metrics
        .authz_denials
        .get_or_create(&AuthzLabels {
            direction,
            server: server.clone(),
            policy: Str(denial.policy.clone()),
            route: route.cloned().unwrap_or_else(|| Str::from("")),
            reason,
            action,
        })
        .inc();
    if may_log() {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::info!(
            action,
            server = %server.0,
            policy = %denial.policy,
            reason,
            suppressed,
            "{}",
            describe()
        );
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
    allowed
}

fn may_log() -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if LOG_SECOND.swap(now, Ordering::Relaxed) != now {
        LOGGED.store(0, Ordering::Relaxed);
    }
    LOGGED.fetch_add(1, Ordering::Relaxed) < LOGS_PER_SECOND
}

/// The response to a denied request: gRPC gets PERMISSION_DENIED (trailers-only), anything
/// else 403.
pub fn denied(grpc: bool, why: &'static str) -> Response<ProxyBody> {
    let mut rsp = Response::new(ProxyBody::empty());
    if !grpc {
        *rsp.status_mut() = StatusCode::FORBIDDEN;
    }
    let h = rsp.headers_mut();
    h.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(why));
    if grpc {
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("7"));
        h.insert("grpc-message", HeaderValue::from_static(why));
    } else {
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    rsp
}

/// Whether a request is gRPC (its content type).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`).
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_of("api.example.com:443"), "api.example.com");
        assert_eq!(host_of("api.example.com"), "api.example.com");
        assert_eq!(host_of("[2001:db8::1]:80"), "2001:db8::1");
    }

    #[test]
    fn grpc_denials_are_trailers_only_permission_denied() {
        let rsp = denied(true, "forbidden");
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "7");
        assert_eq!(denied(false, "forbidden").status(), StatusCode::FORBIDDEN);
    }
}
