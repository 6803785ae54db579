//! `mesh-proxy`: the mesh's sidecar. The request path, outside in:
//! [`serve`] (accept, [`detect`] protocol) -> [`outbound`] / [`inbound`] (route, split, [`headers`]) ->
//! [`timeout`] -> [`retry`] -> [`forward`] ([`balance`], [`client`]). Routing state lives in
//! [`destination`], fed by [`discovery`]. See ARCHITECTURE.md for the tour.

pub mod admin;
pub mod app;
pub mod authz;
pub mod await_ready;
pub mod balance;
pub mod body;
pub mod budget;
pub mod client;
pub mod config;
pub mod destination;
pub mod detect;
pub mod discovery;
pub mod error;
pub mod forward;
pub mod headers;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod limits;
pub mod loops;
pub mod memory;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod retry;
pub mod serve;
pub mod tcp;
pub mod timeout;
pub mod tls;
