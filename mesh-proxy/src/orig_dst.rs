//! Recovering the original destination of a connection that iptables redirected to the proxy
//! (`SO_ORIGINAL_DST`, Linux only).

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The address the client meant to reach, when the connection was redirected by a NAT rule.
/// `None` when the connection came to the proxy's own address (explicit mode) or the
/// platform cannot tell.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let orig = sys::original_dst(stream, local.is_ipv6())?;
    (orig != local).then_some(orig)
}

#[cfg(target_os = "linux")]
mod sys {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use tokio::net::TcpStream;

    /// From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>.
    const SO_ORIGINAL_DST: libc::c_int = 80;
    const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

    pub fn original_dst(stream: &TcpStream, v6: bool) -> Option<SocketAddr> {
        let fd = stream.as_raw_fd();
        // SAFETY: getsockopt writes at most `len` bytes into a properly sized, zeroed
        // sockaddr_storage that lives for the duration of the call; fd is a valid socket.
        unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let (level, opt) = if v6 {
                (libc::SOL_IPV6, IP6T_SO_ORIGINAL_DST)
            } else {
                (libc::SOL_IP, SO_ORIGINAL_DST)
            };
            let rc = libc::getsockopt(
                fd,
                level,
                opt,
                &mut storage as *mut _ as *mut libc::c_void,
                &mut len,
            );
            if rc != 0 {
                return None;
            }
            match storage.ss_family as libc::c_int {
                libc::AF_INET => {
                    let sa = &*(&storage as *const _ as *const libc::sockaddr_in);
                    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
                    Some(SocketAddr::V4(SocketAddrV4::new(
                        ip,
                        u16::from_be(sa.sin_port),
                    )))
                }
                libc::AF_INET6 => {
                    let sa = &*(&storage as *const _ as *const libc::sockaddr_in6);
                    let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
                    Some(SocketAddr::V6(SocketAddrV6::new(
                        ip,
                        u16::from_be(sa.sin6_port),
                        sa.sin6_flowinfo,
                        sa.sin6_scope_id,
                    )))
                }
                _ => None,
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::net::SocketAddr;
    use tokio::net::TcpStream;

    pub fn original_dst(_: &TcpStream, _: bool) -> Option<SocketAddr> {
        None
    }
}
