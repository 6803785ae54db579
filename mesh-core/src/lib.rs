//! Shared domain model of the mesh.
//!
//! Every value here is validated on construction: a [`Authority`] is a real `host:port`, a
//! [`Route`]'s regexes compile, a [`RetryPolicy`] has sane bounds. The proxy and the controller
//! exchange these types as `mesh-proto` messages; [`convert`] turns messages into validated
//! types (naming the offending field on error) and back.

pub mod authority;
pub mod authz;
pub mod convert;
pub mod endpoint;
pub mod error;
pub mod identity;
pub mod policy;
pub mod route;

pub use authority::Authority;
pub use authz::{
    Authorization, Cidr, Client, ClientMatch, DefaultPolicy, Denial, DenyReason, Egress,
    EgressMatch, InboundTls, PortPolicy, Rule, Verdict, WorkloadPolicy,
};
pub use endpoint::{AppProtocol, Endpoint, ProtocolHint};
pub use error::InvalidValue;
pub use identity::Identity;
pub use policy::{BackendPolicy, BalancerKind, CircuitBreaker, RetryBudget, RetryOn, RetryPolicy};
pub use route::{
    HeaderMatch, HeaderModifier, HeaderValue, PathMatch, Pattern, QueryParamMatch, Route,
    RouteMatch, ServiceProfile, WeightedBackend,
};
