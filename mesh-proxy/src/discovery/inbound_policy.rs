//! Inbound port policy from the controller's `Inbound.WatchWorkload` API: for every port of
//! the local workload that declares a protocol (a `Server`, or the `appProtocol` of a Service
//! that targets it), that protocol; today it decides whether detection is skipped (opaque).
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
use mesh_proto::v1 as pb;
use mesh_proto::v1::inbound_client::InboundClient;
use tonic::transport::Channel;

pub struct InboundPolicies {
    ports: ArcSwap<HashMap<u16, pb::Protocol>>,
    /// Whether the first map arrived (always true without a controller).
    loaded: AtomicBool,
}

impl InboundPolicies {
    /// No controller: every port uses detection (and the configured opaque ports).
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            ports: ArcSwap::from_pointee(HashMap::new()),
            loaded: AtomicBool::new(true),
        })
    }

    /// Watches the policy of `workload`'s ports. Without a workload name there is nothing to
    /// ask for: detection everywhere.
    pub fn from_controller(channel: Channel, workload: String) -> Arc<Self> {
        let this = Self::none();
        if workload.is_empty() {
            return this;
        }
        this.loaded.store(false, Ordering::Release);
        tokio::spawn(watch(
            InboundClient::new(channel),
            workload,
            Arc::downgrade(&this),
        ));
        this
    }

    /// The protocol declared for `port` (detection when none is).
    pub fn protocol(&self, port: u16) -> pb::Protocol {
        self.ports
            .load()
            .get(&port)
            .copied()
            .unwrap_or(pb::Protocol::Detect)
    }

    /// Whether the controller's first answer arrived.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn set(&self, policy: pb::WorkloadPolicy) {
        let ports = policy
            .ports
            .into_iter()
            .filter_map(|(port, p)| {
                let port = u16::try_from(port).ok()?;
                let protocol = pb::Protocol::try_from(p.protocol).unwrap_or(pb::Protocol::Detect);
                Some((port, protocol))
            })
            .collect();
        self.ports.store(Arc::new(ports));
        self.loaded.store(true, Ordering::Release);
    }
}

async fn watch(
    mut client: InboundClient<Channel>,
    workload: String,
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
                    this.set(policy);
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
