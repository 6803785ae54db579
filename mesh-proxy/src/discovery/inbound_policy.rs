//! The workload's policy from the controller's `Inbound.WatchWorkload` API: per port, the
//! declared protocol (a `Server`, or the `appProtocol` of a Service that targets it: opaque
//! skips detection), the mTLS mode and who may call it; and the workload's egress policy.
//! A policy that fails validation is rejected and the last good one stays.
//!
//! The stream starts with the proxy, so the policy is known before the first connection
//! (`/ready` waits for it), and a declared port costs nothing even on that first connection.
//! Lookups never wait; a port not in the map uses detection. The last map is kept across
//! controller outages; the stream is re-opened with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::authz::{PortPolicy, WorkloadPolicy};
use mesh_core::convert::workload_policy_from_proto;
use mesh_core::AppProtocol;
use mesh_proto::v1 as pb;
use mesh_proto::v1::inbound_client::InboundClient;
use tonic::transport::Channel;

use crate::metrics::Str;

/// The policy as the request path reads it: each port's policy shared behind an `Arc`.
struct Compiled {
    ports: HashMap<u16, Arc<PortPolicy>>,
    default_port: Arc<PortPolicy>,
    workload: Arc<WorkloadPolicy>,
    egress_label: Str,
}

impl Compiled {
    fn new(policy: WorkloadPolicy) -> Self {
        let ports = policy
            .ports
            .iter()
            .map(|(p, pp)| (*p, Arc::new(pp.clone())))
            .collect();
        let default_port = Arc::new(policy.default_port.clone());
        let egress_label = Str::from(policy.egress.as_ref().map_or("", |e| &*e.name));
        Self {
            ports,
            default_port,
            workload: Arc::new(policy),
            egress_label,
        }
    }
}

pub struct InboundPolicies {
    policy: ArcSwap<Compiled>,
    /// Whether the first map arrived (always true without a controller).
    loaded: AtomicBool,
}

impl InboundPolicies {
    /// No controller: every port uses detection (and the configured opaque ports).
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            policy: ArcSwap::from_pointee(Compiled::new(WorkloadPolicy::default())),
            loaded: AtomicBool::new(true),
        })
    }

    /// Watches the policy of `workload`'s ports. Without a workload name there is nothing to
    /// ask for: detection everywhere.
    /// `trust_domain` is the mesh's (of the proxy's identity), for namespace and
    /// cluster-authenticated rules.
    pub fn from_controller(channel: Channel, workload: String, trust_domain: String) -> Arc<Self> {
        let this = Self::none();
        if workload.is_empty() {
            return this;
        }
        this.loaded.store(false, Ordering::Release);
        tokio::spawn(watch(
            InboundClient::new(channel),
            workload,
            trust_domain,
            Arc::downgrade(&this),
        ));
        this
    }

    /// The protocol declared for `port` (detection when none is).
    pub fn protocol(&self, port: u16) -> AppProtocol {
        self.port(port).protocol
    }

    /// The policy of `port`.
    pub fn port(&self, port: u16) -> Arc<PortPolicy> {
        let c = self.policy.load();
        c.ports.get(&port).unwrap_or(&c.default_port).clone()
    }

    /// The whole policy (egress included).
    pub fn workload(&self) -> Arc<WorkloadPolicy> {
        self.policy.load().workload.clone()
    }

    /// The egress policy's name, for metrics.
    pub fn egress_label(&self) -> Str {
        self.policy.load().egress_label.clone()
    }

    /// Whether the controller's first answer arrived.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn set(&self, policy: pb::WorkloadPolicy, trust_domain: &str) {
        match workload_policy_from_proto(&policy, trust_domain) {
            Ok(p) => self.policy.store(Arc::new(Compiled::new(p))),
            Err(e) => tracing::warn!(
                error = %e,
                "rejected an inbound policy from the controller; keeping the last good one"
            ),
        }
        self.loaded.store(true, Ordering::Release);
    }
}

async fn watch(
    mut client: InboundClient<Channel>,
    workload: String,
    trust_domain: String,
    this: std::sync::Weak<InboundPolicies>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let req = pb::InboundWorkload {
            workload: workload.clone(),
        };
        match client.watch_workload(req).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                while let Ok(Some(policy)) = stream.message().await {
                    let Some(this) = this.upgrade() else { return };
                    this.set(policy, &trust_domain);
                    delay = Duration::from_millis(100);
                }
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                tracing::error!(
                    %workload,
                    "the controller refused the workload name: {}; inbound ports use detection",
                    status.message()
                );
                if let Some(this) = this.upgrade() {
                    this.loaded.store(true, Ordering::Release);
                }
                return;
            }
            Err(status) => {
                tracing::debug!(%workload, "inbound policy unavailable: {}", status.message())
            }
        }
        if this.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
