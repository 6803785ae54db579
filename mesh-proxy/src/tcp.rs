//! Opaque TCP forwarding: bytes copied both ways (tokio's `copy_bidirectional`, which
//! handles half-close) over plaintext or mTLS ([`Io`]), with the bytes read during protocol detection replayed first, an
//! idle timeout and byte counters.
//!
//! The idle timeout costs nothing per read: each read bumps a counter (one relaxed atomic,
//! also the byte metric), and a timer that fires every quarter of the timeout closes the
//! connection when the counter has not moved for the whole timeout. So an idle connection is
//! closed between 1 and 1.25 times the timeout after its last byte.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::metrics::{ConnLabels, Metrics};
use crate::tls::Io;
use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Copies bytes between `client` and the already connected `server` until both sides are
/// done or the connection is idle for `idle`.
pub async fn forward(
    client: Io,
    prefix: BytesMut,
    mut server: Io,
    idle: Duration,
    metrics: &Metrics,
    labels: &ConnLabels,
) -> io::Result<()> {
    let read_bytes = metrics.tcp_read_bytes.get_or_create(labels).clone();
    let write_bytes = metrics.tcp_write_bytes.get_or_create(labels).clone();
    if !prefix.is_empty() {
        server.write_all(&prefix).await?;
        read_bytes.inc_by(prefix.len() as u64);
    }
    let activity = AtomicU64::new(0);
    let mut client = Counted {
        io: client,
        bytes: &read_bytes,
        activity: &activity,
    };
    let mut server = Counted {
        io: server,
        bytes: &write_bytes,
        activity: &activity,
    };
    let copy =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, 16 * 1024, 16 * 1024);
    tokio::select! {
        biased;
        r = copy => r.map(|_| ()),
        () = idle_watch(&activity, idle) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))
        }
    }
}

/// Resolves once `activity` has not changed for `idle`.
async fn idle_watch(activity: &AtomicU64, idle: Duration) {
    let tick = (idle / 4).max(Duration::from_millis(1));
    let mut last = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.load(Ordering::Relaxed);
        if now == last {
            quiet += tick;
            if quiet >= idle {
                return;
            }
        } else {
            last = now;
            quiet = Duration::ZERO;
        }
    }
}

/// A stream whose reads are counted: into a metric, and into the connection's activity.
struct Counted<'a> {
    io: Io,
    bytes: &'a Counter,
    activity: &'a AtomicU64,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.bytes.inc_by(n as u64);
            this.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_watch_waits_for_a_quiet_timeout() {
        let activity = AtomicU64::new(0);
        let idle = Duration::from_millis(400);
        let watch = idle_watch(&activity, idle);
        let mut last = tokio::time::Instant::now();
        let bump = async {
            // Activity more often than the timeout keeps the connection open.
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                activity.fetch_add(1, Ordering::Relaxed);
                last = tokio::time::Instant::now();
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = watch => {}
            () = bump => unreachable!(),
        }
        let quiet = last.elapsed();
        assert!(quiet >= idle, "closed {quiet:?} after the last activity");
        assert!(quiet < Duration::from_secs(5), "{quiet:?}");
    }
}
