//! Opaque TCP forwarding: bytes copied both ways, with the bytes read during protocol
//! detection replayed first, an idle timeout, half-close handling and byte counters.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::metrics::{ConnLabels, Metrics};

/// Connects to `target` and copies bytes until both sides are done or the connection is
/// idle for `idle`.
pub async fn forward(
    mut client: TcpStream,
    prefix: BytesMut,
    target: SocketAddr,
    connect_timeout: Duration,
    idle: Duration,
    metrics: &Metrics,
    labels: &ConnLabels,
) -> io::Result<()> {
    let mut server = tokio::time::timeout(connect_timeout, TcpStream::connect(target))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {target} timed out"),
            )
        })??;
    server.set_nodelay(true)?;
    if !prefix.is_empty() {
        server.write_all(&prefix).await?;
        metrics
            .tcp_read_bytes
            .get_or_create(labels)
            .inc_by(prefix.len() as u64);
    }
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    let (mut client_open, mut server_open) = (true, true);
    let read_bytes = metrics.tcp_read_bytes.get_or_create(labels).clone();
    let write_bytes = metrics.tcp_write_bytes.get_or_create(labels).clone();
    while client_open || server_open {
        tokio::select! {
            r = cr.read(&mut up), if client_open => {
                let n = r?;
                if n == 0 {
                    client_open = false;
                    let _ = sw.shutdown().await;
                } else {
                    sw.write_all(&up[..n]).await?;
                    read_bytes.inc_by(n as u64);
                }
            }
            r = sr.read(&mut down), if server_open => {
                let n = r?;
                if n == 0 {
                    server_open = false;
                    let _ = cw.shutdown().await;
                } else {
                    cw.write_all(&down[..n]).await?;
                    write_bytes.inc_by(n as u64);
                }
            }
            _ = tokio::time::sleep(idle) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
            }
        }
    }
    Ok(())
}
