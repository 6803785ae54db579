//! Discovery from the controller's streaming `Destination.Get` API.
//!
//! One stream per destination. The first message is a full state (or not-found); later ones
//! are incremental. When a stream fails the destination keeps its last state (the controller
//! is never on the request path) and the stream is re-opened with exponential backoff, its
//! first message then replacing the state wholesale. Messages that fail validation are
//! logged and skipped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use mesh_core::convert::{addr_from_proto, endpoints_from_proto};
use mesh_core::{InvalidValue, ServiceProfile};
use mesh_proto::v1 as pb;
use mesh_proto::v1::destination_client::DestinationClient;
use tonic::transport::{Channel, Endpoint};

use crate::destination::{Destination, Resolve, Update};
use crate::metrics::Metrics;

pub struct ControllerResolver {
    channel: Channel,
    context: String,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicBool>,
}

impl ControllerResolver {
    /// Creates a lazily connecting client; [`Self::connected`] turns true once the controller
    /// has answered.
    pub fn new(
        uri: http::Uri,
        context: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let channel = Endpoint::from(uri)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let this = Arc::new(Self {
            channel,
            context,
            metrics,
            connected: Arc::new(AtomicBool::new(false)),
        });
        // Probe the controller at start so /ready reflects whether discovery is up.
        let probe = this.channel.clone();
        let connected = this.connected.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                let mut client = DestinationClient::new(probe.clone());
                let req = pb::GetDestination {
                    authority: "readiness.probe.invalid:1".into(),
                    context: String::new(),
                };
                if client.get(req).await.is_ok() {
                    connected.store(true, Ordering::Release);
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        Ok(this)
    }

    /// The gRPC channel to the controller, shared with the other APIs.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

impl Resolve for ControllerResolver {
    fn subscribe(&self, dest: Arc<Destination>) {
        let client = DestinationClient::new(self.channel.clone());
        let context = self.context.clone();
        let metrics = self.metrics.clone();
        let connected = self.connected.clone();
        let weak = Arc::downgrade(&dest);
        drop(dest);
        tokio::spawn(watch(client, weak, context, metrics, connected));
    }
}

async fn watch(
    mut client: DestinationClient<Channel>,
    dest: Weak<Destination>,
    context: String,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicBool>,
) {
    let mut delay = Duration::from_millis(100);
    let mut answered = false;
    loop {
        let Some(authority) = dest.upgrade().map(|d| d.authority.to_string()) else {
            return;
        };
        let req = pb::GetDestination {
            authority: authority.clone(),
            context: context.clone(),
        };
        match client.get(req).await {
            Ok(rsp) => {
                connected.store(true, Ordering::Release);
                let mut stream = rsp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            let Some(d) = dest.upgrade() else { return };
                            match convert(msg) {
                                Ok(update) => {
                                    answered = true;
                                    metrics.discovery_updates.inc();
                                    d.apply(update);
                                    delay = Duration::from_millis(100);
                                }
                                Err(e) => {
                                    metrics.discovery_errors.inc();
                                    tracing::warn!(%authority, "ignored invalid discovery update: {e}");
                                }
                            }
                        }
                        Ok(None) => {
                            tracing::debug!(%authority, "discovery stream ended");
                            break;
                        }
                        Err(status) => {
                            metrics.discovery_errors.inc();
                            tracing::warn!(%authority, "discovery stream failed: {}", status.message());
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                metrics.discovery_errors.inc();
                if answered {
                    tracing::warn!(%authority, "discovery unavailable, keeping the last state: {}", status.message());
                } else {
                    tracing::warn!(%authority, "discovery unavailable, retrying (requests for it wait up to MESH_PROXY_DISCOVERY_TIMEOUT): {}", status.message());
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Validates one message from the controller.
pub fn convert(msg: pb::DestinationUpdate) -> Result<Update, InvalidValue> {
    use pb::destination_update::Update as U;
    match msg.update {
        None => Err(InvalidValue::new("update", "is empty")),
        Some(U::NotFound(_)) => Ok(Update::NotFound),
        Some(U::State(s)) => Ok(Update::State {
            profile: s
                .profile
                .as_ref()
                .map(ServiceProfile::try_from)
                .transpose()
                .map_err(|e| e.within("state.profile"))?
                .unwrap_or_default(),
            endpoints: endpoints_from_proto(&s.endpoints).map_err(|e| e.within("state"))?,
        }),
        Some(U::Add(a)) => Ok(Update::Add(
            endpoints_from_proto(&a.endpoints).map_err(|e| e.within("add"))?,
        )),
        Some(U::Remove(r)) => Ok(Update::Remove(
            r.addresses
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    addr_from_proto(a).map_err(|e| e.within(format!("remove.addresses[{i}]")))
                })
                .collect::<Result<_, _>>()?,
        )),
        Some(U::Profile(p)) => Ok(Update::Profile(
            ServiceProfile::try_from(&p).map_err(|e| e.within("profile"))?,
        )),
    }
}
