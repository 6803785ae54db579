//! Bounds on connections, so that a storm (a loop, a misbehaving client, a slowloris) costs
//! a bounded number of file descriptors and bytes of memory:
//!
//! - per listener, the connections open at once ([`Slots`], `MESH_PROXY_*_MAX_CONNECTIONS`)
//!   and those that have not yet sent a complete first request head
//!   (`MESH_PROXY_MAX_PENDING_CONNECTIONS`): past either, a new connection is closed at once;
//! - per endpoint address, the connections the proxy opens to it ([`EndpointSlots`],
//!   `MESH_PROXY_MAX_CONNECTIONS_PER_ENDPOINT`).
//!
//! Every refusal is counted in `mesh_proxy_connections_refused_total{direction, reason}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProxyError;

/// A fixed number of slots; a slot is held as long as its permit lives.
#[derive(Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Semaphore::new(n)))
    }

    /// A slot if one is free, without waiting.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// Open connections per endpoint address, with a limit. Touched when a connection is opened
/// or closed, never per request.
pub struct EndpointSlots {
    limit: usize,
    open: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

/// One open connection to an endpoint; frees its slot when dropped.
pub struct EndpointSlot {
    addr: SocketAddr,
    open: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

impl EndpointSlots {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn take(&self, addr: SocketAddr) -> Result<EndpointSlot, ProxyError> {
        let Ok(mut open) = self.open.lock() else {
            return Err(ProxyError::EndpointLimit { addr, open: 0 });
        };
        let n = open.entry(addr).or_insert(0);
        if *n >= self.limit {
            return Err(ProxyError::EndpointLimit { addr, open: *n });
        }
        *n += 1;
        Ok(EndpointSlot {
            addr,
            open: self.open.clone(),
        })
    }

    /// Connections open to `addr`.
    #[cfg(test)]
    fn open(&self, addr: SocketAddr) -> usize {
        self.open
            .lock()
            .ok()
            .and_then(|m| m.get(&addr).copied())
            .unwrap_or(0)
    }
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock() {
            if let Some(n) = open.get_mut(&self.addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.addr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_slots_are_bounded_and_freed() {
        let slots = EndpointSlots::new(2);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let s1 = slots.take(a).unwrap();
        let _s2 = slots.take(a).unwrap();
        assert!(matches!(
            slots.take(a),
            Err(ProxyError::EndpointLimit { open: 2, .. })
        ));
        let _other = slots.take(b).unwrap();
        drop(s1);
        assert_eq!(slots.open(a), 1);
        let _s3 = slots.take(a).unwrap();
    }

    #[test]
    fn listener_slots() {
        let slots = Slots::new(1);
        let p = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        drop(p);
        assert!(slots.try_take().is_some());
    }
}
