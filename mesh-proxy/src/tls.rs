//! Mutual TLS between proxies: the connection types, the client handshake with the
//! server identity discovery expects, and, inbound, telling a meshed client's TLS apart from
//! plaintext and from an application's own TLS.
//!
//! A client proxy offers ALPN [`MESH_ALPN`] and, once the handshake is done, sends a
//! [`pb::TransportHeader`] (`MSH1`, a 2-byte big-endian length, the message) naming the app
//! port and the protocol it already knows, so the server proxy detects nothing. Inbound, the
//! first bytes are read without a TLS library ([`sniff`]): a TLS record whose ClientHello
//! offers our ALPN is terminated here; any other TLS (the app's own) and plaintext are
//! handled as before, and refused on strict ports.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use mesh_core::Identity;
use mesh_identity::tls::Credentials;
use mesh_identity::MESH_ALPN;
use mesh_proto::v1 as pb;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::detect::PrefixedIo;

const HEADER_MAGIC: &[u8; 4] = b"MSH1";
/// Longest transport header accepted (it is a few bytes).
const MAX_HEADER: usize = 1024;
/// Longest ClientHello we read before calling the stream "not ours".
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// A proxied connection: plaintext, or mTLS as client or server.
pub enum Io {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<PrefixedIo<TcpStream>>>),
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Io::Client($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
            Io::Server($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Client(io) => io.is_write_vectored(),
            Io::Server(io) => io.is_write_vectored(),
        }
    }
}

/// Encodes the transport header.
pub fn encode_header(port: u16, protocol: pb::Protocol) -> BytesMut {
    let msg = pb::TransportHeader {
        port: u32::from(port),
        protocol: protocol as i32,
    };
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(6 + len);
    buf.put_slice(HEADER_MAGIC);
    buf.put_u16(len as u16);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut buf);
    buf
}

/// Reads the transport header a client proxy sends first.
pub async fn read_header<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(u16, pb::Protocol)> {
    let mut head = [0u8; 6];
    io.read_exact(&mut head).await?;
    if &head[..4] != HEADER_MAGIC {
        return Err(invalid(
            "the mesh transport header does not start with MSH1",
        ));
    }
    let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
    if len > MAX_HEADER {
        return Err(invalid("the mesh transport header is too long"));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    let msg = pb::TransportHeader::decode(body.as_slice())
        .map_err(|e| invalid_owned(format!("the mesh transport header does not decode: {e}")))?;
    let port = u16::try_from(msg.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid("the mesh transport header names no valid port"))?;
    let protocol = pb::Protocol::try_from(msg.protocol)
        .map_err(|_| invalid("the mesh transport header names an unknown protocol"))?;
    Ok((port, protocol))
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn invalid_owned(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Why a client handshake failed, for metrics.
pub fn failure_reason(e: &io::Error) -> &'static str {
    if mesh_identity::tls::is_identity_mismatch(e) {
        "identity_mismatch"
    } else if e.kind() == io::ErrorKind::TimedOut {
        "timeout"
    } else if e.kind() == io::ErrorKind::InvalidData {
        "invalid_certificate"
    } else {
        "handshake"
    }
}

/// Opens mTLS on `stream` to a proxy that must prove `expected`, then sends the transport
/// header.
pub async fn connect(
    creds: &Credentials,
    stream: TcpStream,
    expected: &Identity,
    port: u16,
    protocol: pb::Protocol,
) -> io::Result<Io> {
    let connector = tokio_rustls::TlsConnector::from(creds.client_config(expected));
    let mut tls = connector
        .connect(mesh_identity::tls::server_name(), stream)
        .await?;
    tls.write_all(&encode_header(port, protocol)).await?;
    Ok(Io::Client(Box::new(tls)))
}

/// What the first bytes of an inbound connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// A ClientHello offering the mesh's ALPN: a meshed client.
    Mesh,
    /// TLS, but not from a proxy of ours (the app's own TLS).
    OtherTls,
    /// Anything else, or nothing within the timeout.
    Plain,
}

/// Reads the first bytes of `stream` into `buf` (to be replayed) and says what they are.
/// Silence for `timeout` is plaintext (a server-speaks-first protocol).
pub async fn sniff(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> io::Result<Sniffed> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        if buf.len() >= 3 && !(buf[0] == 0x16 && buf[1] == 0x03) {
            return Ok(Sniffed::Plain);
        }
        if buf.len() > fed {
            let mut rd = &buf[fed..];
            if acceptor.read_tls(&mut rd).is_err() {
                return Ok(Sniffed::OtherTls);
            }
            fed = buf.len();
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let ours = accepted
                        .client_hello()
                        .alpn()
                        .is_some_and(|mut a| a.any(|p| p == MESH_ALPN));
                    return Ok(if ours {
                        Sniffed::Mesh
                    } else {
                        Sniffed::OtherTls
                    });
                }
                Ok(None) => {}
                Err(_) => return Ok(Sniffed::OtherTls),
            }
        }
        if buf.len() >= MAX_CLIENT_HELLO {
            return Ok(Sniffed::OtherTls);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(1024));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_elapsed) => {
                return Ok(if buf.is_empty() {
                    Sniffed::Plain
                } else if buf[0] == 0x16 {
                    Sniffed::OtherTls
                } else {
                    Sniffed::Plain
                })
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                return Ok(if buf.first() == Some(&0x16) {
                    Sniffed::OtherTls
                } else {
                    Sniffed::Plain
                })
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// A terminated mTLS connection from another proxy.
pub struct Accepted {
    pub io: Io,
    /// The client's identity (`None`: it presented no certificate).
    pub client: Option<Identity>,
    pub port: u16,
    pub protocol: pb::Protocol,
}

/// Completes the server handshake of a [`Sniffed::Mesh`] connection (replaying `prefix`)
/// and reads the transport header, all within `timeout`.
pub async fn accept(
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    prefix: BytesMut,
    timeout: Duration,
) -> io::Result<Accepted> {
    let work = async {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let mut tls = acceptor.accept(PrefixedIo::new(prefix, stream)).await?;
        let client = mesh_identity::tls::peer_identity(tls.get_ref().1);
        let (port, protocol) = read_header(&mut tls).await?;
        Ok(Accepted {
            io: Io::Server(Box::new(tls)),
            client,
            port,
            protocol,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "mTLS handshake timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_round_trips_and_rejects_garbage() {
        let buf = encode_header(8080, pb::Protocol::Opaque);
        let mut rd: &[u8] = &buf;
        let (port, protocol) = read_header(&mut rd).await.unwrap();
        assert_eq!((port, protocol), (8080, pb::Protocol::Opaque));

        let mut bad: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(read_header(&mut bad).await.is_err());
        let mut zero_port: &[u8] = &encode_header(0, pb::Protocol::Http2);
        assert!(read_header(&mut zero_port).await.is_err());
        let mut long: Vec<u8> = b"MSH1".to_vec();
        long.extend_from_slice(&[0xff, 0xff]);
        let mut long: &[u8] = &long;
        assert!(read_header(&mut long).await.is_err());
    }
}
