//! Discovery sources: where a destination's endpoints, routes and policy come from.
//! - [`static_file`]: a YAML file, re-read when it changes (the proxy runs alone).
//! - [`controller`]: the controller's streaming Destination API.
//! - [`PassThrough`]: nothing is a mesh service; every request goes to its original address.
//! - [`inbound_policy`]: the protocol the controller declares for the workload's own ports.

pub mod controller;
pub mod inbound_policy;
pub mod static_file;

use std::sync::Arc;

use crate::destination::{Destination, Resolve, Update};

/// The source used when none is configured.
pub struct PassThrough;

impl Resolve for PassThrough {
    fn subscribe(&self, dest: Arc<Destination>) {
        dest.apply(Update::NotFound);
    }
}
