//! Inbound port policy from the controller's `Inbound.Watch` API: for each port of the local
//! workload, the protocol the controller declares (today: whether it is opaque TCP, so that
//! detection is skipped). Looked up without waiting: the first connection to a port starts
//! the watch and uses detection; later connections use the declared protocol. Kept across
//! controller outages; re-watched with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mesh_proto::v1 as pb;
use mesh_proto::v1::inbound_client::InboundClient;
use tonic::transport::Channel;

/// Most ports watched; more are served with detection only.
const MAX_PORTS: usize = 1024;

pub struct InboundPolicies {
    source: Option<(Channel, String)>,
    ports: RwLock<HashMap<u16, Arc<AtomicI32>>>,
}

impl InboundPolicies {
    /// No controller: every port uses detection (and the configured opaque ports).
    pub fn none() -> Self {
        Self {
            source: None,
            ports: RwLock::new(HashMap::new()),
        }
    }

    pub fn from_controller(channel: Channel, workload: String) -> Self {
        Self {
            source: Some((channel, workload)),
            ports: RwLock::new(HashMap::new()),
        }
    }

    /// The protocol declared for `port`, if the controller said one.
    pub fn protocol(&self, port: u16) -> pb::Protocol {
        if let Some(p) = self.ports.read().ok().and_then(|m| m.get(&port).cloned()) {
            return pb::Protocol::try_from(p.load(Ordering::Relaxed))
                .unwrap_or(pb::Protocol::Detect);
        }
        let Some((channel, workload)) = &self.source else {
            return pb::Protocol::Detect;
        };
        let Ok(mut ports) = self.ports.write() else {
            return pb::Protocol::Detect;
        };
        if ports.len() < MAX_PORTS && !ports.contains_key(&port) {
            let state = Arc::new(AtomicI32::new(pb::Protocol::Detect as i32));
            ports.insert(port, state.clone());
            tokio::spawn(watch(
                InboundClient::new(channel.clone()),
                workload.clone(),
                port,
                state,
            ));
        }
        pb::Protocol::Detect
    }
}

async fn watch(
    mut client: InboundClient<Channel>,
    workload: String,
    port: u16,
    state: Arc<AtomicI32>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let req = pb::InboundPort {
            workload: workload.clone(),
            port: port as u32,
        };
        match client.watch(req).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                while let Ok(Some(policy)) = stream.message().await {
                    state.store(policy.protocol, Ordering::Relaxed);
                    delay = Duration::from_millis(100);
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::debug!(
                    port,
                    "the controller serves no inbound policy; using detection"
                );
                return;
            }
            Err(status) => {
                tracing::debug!(port, "inbound policy unavailable: {}", status.message())
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
