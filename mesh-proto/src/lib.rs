//! The versioned gRPC API between `mesh-proxy` and `mesh-controller`, generated from
//! `proto/mesh/v1/*.proto` at build time.
//!
//! - [`v1::destination_client`] / [`v1::destination_server`]: discovery of a service's
//!   endpoints, routes and backend policy, as a stream of full and incremental updates.
//! - [`v1::inbound_client`] / [`v1::inbound_server`]: inbound policy for one workload port.
//! - [`v1::identity_client`] / [`v1::identity_server`]: certificate issuance from a CSR.

/// Version 1 of the API (`package mesh.v1`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mesh.v1");
}
