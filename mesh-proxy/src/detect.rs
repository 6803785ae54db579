//! Protocol detection: read the first bytes a client sends and decide between HTTP/1,
//! HTTP/2 (prior knowledge, which covers gRPC) and opaque TCP.
//!
//! Server-speaks-first protocols (SMTP, MySQL, ...) would stall a proxy that waits for the
//! client, so their ports skip detection entirely, and on any other port a client that stays
//! silent for `timeout` is forwarded as opaque TCP. The bytes read are replayed to whichever
//! handler takes the connection ([`PrefixedIo`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Ports whose protocols speak first or are never HTTP: forwarded as opaque TCP without
/// waiting for the client. FTP, SSH, SMTP, POP3, IMAP, submission, MySQL, NATS, 4444 (often
/// Galera), PostgreSQL, Redis, Elasticsearch transport, memcached, MongoDB.
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[
    21, 22, 25, 110, 143, 587, 3306, 4222, 4444, 5432, 6379, 9300, 11211, 27017,
];

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest HTTP/1 request line we wait for before calling the stream opaque.
const MAX_REQUEST_LINE: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1",
            Protocol::Http2 => "h2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Is(Protocol),
    NeedMore,
}

/// Classifies the first bytes of a stream. Pure, so it is unit- and property-tested.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Verdict::Is(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    // HTTP/1 request line: METHOD SP request-target SP HTTP/1.x CRLF
    let method_len = buf.iter().take_while(|b| is_tchar(**b)).count();
    if method_len == 0 || method_len > 20 {
        return Verdict::Is(Protocol::Opaque);
    }
    if method_len == buf.len() {
        return Verdict::NeedMore;
    }
    if buf[method_len] != b' ' {
        return Verdict::Is(Protocol::Opaque);
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &buf[..end];
            let ok = line.len() > method_len + 10
                && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
                && !line[method_len + 1..line.len() - 9].contains(&b' ');
            Verdict::Is(if ok {
                Protocol::Http1
            } else {
                Protocol::Opaque
            })
        }
        None if buf.len() >= MAX_REQUEST_LINE => Verdict::Is(Protocol::Opaque),
        None => {
            // Request targets hold no control characters; binary data means opaque.
            if buf[method_len + 1..]
                .iter()
                .any(|b| *b < 0x20 && *b != b'\r')
            {
                Verdict::Is(Protocol::Opaque)
            } else {
                Verdict::NeedMore
            }
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until the protocol is known, the client goes quiet for `timeout` (opaque),
/// or the stream ends. Returns the protocol and the bytes read, to be replayed.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> io::Result<(Protocol, BytesMut)> {
    detect_from(io, BytesMut::with_capacity(1024), timeout).await
}

/// [`detect`], starting with bytes already read from `io` (`buf`).
pub async fn detect_from<I: AsyncRead + Unpin>(
    io: &mut I,
    mut buf: BytesMut,
    timeout: Duration,
) -> io::Result<(Protocol, BytesMut)> {
    if !buf.is_empty() {
        if let Verdict::Is(p) = classify(&buf) {
            return Ok((p, buf));
        }
    }
    if buf.capacity() < 1024 {
        buf.reserve(1024);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok((Protocol::Opaque, buf)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf)),
            Ok(Ok(_)) => {
                if let Verdict::Is(p) = classify(&buf) {
                    return Ok((p, buf));
                }
                if buf.capacity() == buf.len() {
                    buf.reserve(buf.len());
                }
            }
        }
    }
}

/// An IO that first yields `prefix` (bytes already read during detection), then reads from
/// the inner stream. Writes go straight to the inner stream.
pub struct PrefixedIo<I> {
    prefix: BytesMut,
    inner: I,
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: BytesMut, inner: I) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_known_prefixes() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(
            classify(b"POST /x?y=1 HTTP/1.0\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(classify(H2_PREFACE), Verdict::Is(Protocol::Http2));
        assert_eq!(classify(b"PRI * HT"), Verdict::NeedMore);
        assert_eq!(classify(b"GET /abc"), Verdict::NeedMore);
        assert_eq!(classify(b"GE"), Verdict::NeedMore);
        assert_eq!(
            classify(b"\x16\x03\x01\x02\x00"),
            Verdict::Is(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"*1\r\n$4\r\nPING\r\n"),
            Verdict::Is(Protocol::Opaque)
        );
        assert_eq!(classify(b"GET / SMTP\r\n"), Verdict::Is(Protocol::Opaque));
        assert_eq!(classify(b"GET /\x00"), Verdict::Is(Protocol::Opaque));
    }

    #[tokio::test]
    async fn silent_client_is_opaque_after_timeout() {
        let (mut a, _b) = tokio::io::duplex(64);
        let start = std::time::Instant::now();
        let (p, buf) = detect(&mut a, Duration::from_millis(50)).await.unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert!(buf.is_empty());
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn prefix_is_replayed() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, b"GET / HTTP/1.1\r\nrest")
            .await
            .unwrap();
        let (p, buf) = detect(&mut a, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        let mut io = PrefixedIo::new(buf, a);
        let mut out = vec![0u8; 20];
        io.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"GET / HTTP/1.1\r\nrest");
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = classify(&bytes);
        }
    }
}
