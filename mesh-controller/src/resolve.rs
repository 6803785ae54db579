//! Which Service port a proxy means when it asks for an authority.
//!
//! Accepted forms, for a Service `web` in namespace `shop` with port 8080:
//! `web.shop.svc.cluster.local:8080`, `web.shop.svc:8080`, `web.shop:8080`, and `web:8080`
//! from a proxy whose context says it runs in `shop` (`ns:shop/pod:...`); also any of the
//! Service's cluster IPs with the port. Anything else is not a Service of the mesh, and the
//! proxy passes it through.

use std::net::{IpAddr, SocketAddr};

use crate::objects::ObjKey;

/// What a discovery request resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Service port by name.
    Name(ObjKey, u16),
    /// A cluster IP and port.
    Addr(SocketAddr),
}

/// The namespace in a proxy's context (`ns:<namespace>/...`), `default` when absent.
pub fn context_namespace(context: &str) -> &str {
    context
        .split('/')
        .find_map(|part| part.strip_prefix("ns:"))
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
}

/// Parses an authority (`host:port`, as the proxy normalises it).
pub fn target(authority: &str, context: &str, cluster_domain: &str) -> Option<Target> {
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Target::Addr(SocketAddr::new(ip, port)));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let suffix = format!(".svc.{cluster_domain}");
    let name_ns = host
        .strip_suffix(&suffix)
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(&host);
    let mut labels = name_ns.split('.');
    let name = labels.next().filter(|n| !n.is_empty())?;
    let ns = match (labels.next(), labels.next()) {
        (None, _) => context_namespace(context).to_string(),
        (Some(ns), None) if !ns.is_empty() => ns.to_string(),
        _ => return None,
    };
    Some(Target::Name(ObjKey::new(ns, name), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(ns: &str, n: &str, port: u16) -> Option<Target> {
        Some(Target::Name(ObjKey::new(ns, n), port))
    }

    #[test]
    fn forms() {
        let d = "cluster.local";
        assert_eq!(
            target("web.shop.svc.cluster.local:80", "", d),
            name("shop", "web", 80)
        );
        assert_eq!(target("web.shop.svc:80", "", d), name("shop", "web", 80));
        assert_eq!(target("web.shop:80", "", d), name("shop", "web", 80));
        assert_eq!(
            target("web:80", "ns:shop/pod:a", d),
            name("shop", "web", 80)
        );
        assert_eq!(target("web:80", "", d), name("default", "web", 80));
        assert_eq!(
            target("WEB.Shop.svc.cluster.local.:80", "", d),
            name("shop", "web", 80)
        );
        assert_eq!(
            target("10.0.0.1:80", "", d),
            Some(Target::Addr("10.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            target("[::1]:80", "", d),
            Some(Target::Addr("[::1]:80".parse().unwrap()))
        );
        assert_eq!(target("api.example.com:443", "", d), None);
        assert_eq!(target("web.shop.svc.other.domain:80", "", d), None);
        assert_eq!(target("web:0", "", d), None);
        assert_eq!(target("web", "", d), None);
    }
}
