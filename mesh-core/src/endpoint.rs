//! Endpoints: one address of a service, with the hints the proxy needs to talk to it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::Identity;

/// How to speak to an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProtocolHint {
    /// Nothing known: forward with the protocol the client used.
    #[default]
    Unknown,
    /// A mesh proxy fronts the endpoint and accepts HTTP/2 on `inbound_port` (`None`: the
    /// endpoint's own port). HTTP/1 is carried over HTTP/2 between the two proxies.
    MeshedH2 {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inbound_port: Option<u16>,
    },
    /// Always opaque TCP.
    Opaque,
}

/// The application protocol a port declares (a `Server`, or a Service port's
/// `appProtocol`). Both proxies act on it: a declared protocol skips detection.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AppProtocol {
    /// Nothing declared: detect the protocol from the first bytes.
    #[default]
    Detect,
    Http1,
    Http2,
    Grpc,
    /// Opaque TCP, forwarded without detection (server-speaks-first protocols).
    Opaque,
}

impl AppProtocol {
    pub fn is_detect(&self) -> bool {
        *self == AppProtocol::Detect
    }
}

/// One address of a service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub addr: SocketAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    #[serde(default)]
    pub hint: ProtocolHint,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What the endpoint's port declares; `Opaque` means forward as TCP without detection.
    #[serde(default, skip_serializing_if = "AppProtocol::is_detect")]
    pub protocol: AppProtocol,
}

fn default_weight() -> u32 {
    1
}

impl Endpoint {
    /// An endpoint with default weight and no hints.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            zone: None,
            identity: None,
            hint: ProtocolHint::Unknown,
            labels: BTreeMap::new(),
            protocol: AppProtocol::Detect,
        }
    }

    /// The address the proxy connects to: the meshed inbound port when the hint names one.
    pub fn connect_addr(&self) -> SocketAddr {
        match self.hint {
            ProtocolHint::MeshedH2 {
                inbound_port: Some(p),
            } => SocketAddr::new(self.addr.ip(), p),
            _ => self.addr,
        }
    }
}
