//! Reading what `tcpdump -w` captured, for the wire checks of the mTLS scenario: a pcap
//! reader (classic pcap, Ethernet or Linux cooked link layers, IPv4 + TCP), a per-direction
//! TCP reassembler (in sequence order, retransmissions dropped, gaps reported), and a TLS
//! record walker that says whether a byte stream is made of TLS records and nothing else.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// One captured TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub syn: bool,
    pub payload: Vec<u8>,
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_LINUX_SLL: u32 = 113;

fn u16be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a classic pcap file (either byte order, micro- or nanosecond timestamps) into its
/// IPv4 TCP segments; other packets are skipped.
pub fn parse(data: &[u8]) -> Result<Vec<Segment>, String> {
    if data.len() < 24 {
        return Err(format!("{} bytes: too short for a pcap header", data.len()));
    }
    let magic = [data[0], data[1], data[2], data[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => {
            return Err(format!(
                "not a pcap file (magic {magic:02x?}); pcapng is not read"
            ))
        }
    };
    let word = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = word(20);
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = word(at + 8) as usize;
        let orig = word(at + 12) as usize;
        let start = at + 16;
        let end = start + incl;
        if end > data.len() {
            // tcpdump was stopped mid-write: the last record is cut.
            break;
        }
        if incl < orig {
            return Err(format!(
                "packet at byte {at} was truncated to {incl} of {orig} bytes: capture with -s 0"
            ));
        }
        if let Some(seg) = segment(linktype, &data[start..end])? {
            out.push(seg);
        }
        at = end;
    }
    Ok(out)
}

/// The TCP segment in one link-layer frame, if it is IPv4 TCP.
fn segment(linktype: u32, frame: &[u8]) -> Result<Option<Segment>, String> {
    let (ethertype, ip) = match linktype {
        LINKTYPE_ETHERNET if frame.len() >= 14 => (u16be(frame, 12), &frame[14..]),
        LINKTYPE_LINUX_SLL if frame.len() >= 16 => (u16be(frame, 14), &frame[16..]),
        LINKTYPE_ETHERNET | LINKTYPE_LINUX_SLL => return Ok(None),
        other => {
            return Err(format!(
                "link type {other} is not read (Ethernet or Linux cooked only)"
            ))
        }
    };
    if ethertype != 0x0800 || ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return Ok(None);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16be(ip, 2)).min(ip.len());
    if ihl < 20 || total < ihl + 20 {
        return Ok(None);
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = &ip[ihl..total];
    let off = usize::from(tcp[12] >> 4) * 4;
    if off < 20 || off > tcp.len() {
        return Ok(None);
    }
    Ok(Some(Segment {
        src: SocketAddrV4::new(src_ip, u16be(tcp, 0)),
        dst: SocketAddrV4::new(dst_ip, u16be(tcp, 2)),
        seq: u32be(tcp, 4),
        syn: tcp[13] & 0x02 != 0,
        payload: tcp[off..].to_vec(),
    }))
}

/// The bytes one side of a TCP connection sent, in order.
#[derive(Clone, Debug, Default)]
pub struct Flow {
    pub src: Option<SocketAddrV4>,
    pub dst: Option<SocketAddrV4>,
    /// The connection's SYN was captured (the stream starts at its first byte).
    pub from_start: bool,
    pub bytes: Vec<u8>,
    /// Missing stretches (packets the capture lost); `bytes` ends at the first one.
    pub gaps: usize,
}

/// Reassembles the segments of each direction of each connection (keyed by source and
/// destination), in order of first appearance.
pub fn flows(segments: &[Segment]) -> Vec<Flow> {
    let mut order: Vec<(SocketAddrV4, SocketAddrV4)> = Vec::new();
    let mut by: BTreeMap<(SocketAddrV4, SocketAddrV4), Vec<&Segment>> = BTreeMap::new();
    for s in segments {
        let key = (s.src, s.dst);
        let list = by.entry(key).or_default();
        if list.is_empty() {
            order.push(key);
        }
        list.push(s);
    }
    order
        .into_iter()
        .map(|key| reassemble(key, &by[&key]))
        .collect()
}

fn reassemble(key: (SocketAddrV4, SocketAddrV4), segs: &[&Segment]) -> Flow {
    // Data starts right after the SYN's sequence number, or at the first segment seen.
    let syn = segs.iter().find(|s| s.syn);
    let base = match syn {
        Some(s) => s.seq.wrapping_add(1),
        None => segs.first().map(|s| s.seq).unwrap_or(0),
    };
    let mut pieces: BTreeMap<u32, &[u8]> = BTreeMap::new();
    for s in segs.iter().filter(|s| !s.payload.is_empty()) {
        let off = s.seq.wrapping_sub(base);
        if off >= 1 << 31 {
            continue; // before the start (a retransmission of something earlier)
        }
        let e = pieces.entry(off).or_insert(s.payload.as_slice());
        if s.payload.len() > e.len() {
            *e = s.payload.as_slice();
        }
    }
    let mut flow = Flow {
        src: Some(key.0),
        dst: Some(key.1),
        from_start: syn.is_some(),
        ..Flow::default()
    };
    let mut cursor: u32 = 0;
    for (off, data) in pieces {
        if flow.gaps > 0 {
            if off > cursor {
                flow.gaps += 1;
            }
            cursor = cursor.max(off + data.len() as u32);
            continue;
        }
        if off > cursor {
            flow.gaps += 1;
            cursor = off + data.len() as u32;
            continue;
        }
        let end = off + data.len() as u32;
        if end > cursor {
            flow.bytes
                .extend_from_slice(&data[(cursor - off) as usize..]);
            cursor = end;
        }
    }
    flow
}

/// TLS record content types: change_cipher_spec, alert, handshake, application_data.
pub const TLS_TYPES: std::ops::RangeInclusive<u8> = 0x14..=0x17;

/// What a stream of TLS records held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// Records by content type (0x14..=0x17 at indexes 0..=3).
    pub by_type: [usize; 4],
    /// The first record's payload, when it is a handshake record (a ClientHello or
    /// ServerHello, readable on the wire).
    pub first_handshake: Vec<u8>,
    /// Bytes after the last whole record (a record the capture ended in).
    pub partial: usize,
}

impl Records {
    pub fn total(&self) -> usize {
        self.by_type.iter().sum()
    }
}

/// Walks `bytes` as TLS records: each must be of a TLS content type with record version
/// 0x0303 (0x0301 is allowed on the first record, a ClientHello's legacy version) and a
/// plausible length. The error names the first offset that is not a TLS record.
pub fn tls_records(bytes: &[u8]) -> Result<Records, String> {
    let mut r = Records::default();
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at < 5 {
            r.partial = bytes.len() - at;
            break;
        }
        let ty = bytes[at];
        let version = u16be(bytes, at + 1);
        let len = usize::from(u16be(bytes, at + 3));
        let version_ok = version == 0x0303 || (at == 0 && ty == 0x16 && version == 0x0301);
        if !TLS_TYPES.contains(&ty) || !version_ok || len == 0 || len > (1 << 14) + 256 {
            let end = (at + 16).min(bytes.len());
            return Err(format!(
                "byte {at} is not a TLS record header (type {ty:#04x}, version {version:#06x}, length {len}): {:02x?} {:?}",
                &bytes[at..end],
                String::from_utf8_lossy(&bytes[at..end])
            ));
        }
        if bytes.len() - at - 5 < len {
            r.partial = bytes.len() - at;
            break;
        }
        if at == 0 && ty == 0x16 {
            r.first_handshake = bytes[5..5 + len].to_vec();
        }
        r.by_type[usize::from(ty - 0x14)] += 1;
        at += 5 + len;
    }
    Ok(r)
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap (little-endian, Ethernet) holding `segs` as (src, dst, seq, syn, payload).
    fn pcap(segs: &[(SocketAddrV4, SocketAddrV4, u32, bool, &[u8])]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        for (src, dst, seq, syn, payload) in segs {
            let mut tcp = Vec::new();
            tcp.extend_from_slice(&src.port().to_be_bytes());
            tcp.extend_from_slice(&dst.port().to_be_bytes());
            tcp.extend_from_slice(&seq.to_be_bytes());
            tcp.extend_from_slice(&[0; 4]);
            tcp.push(5 << 4);
            tcp.push(if *syn { 0x02 } else { 0x18 });
            tcp.extend_from_slice(&[0; 6]);
            tcp.extend_from_slice(payload);
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0]);
            ip.extend_from_slice(&src.ip().octets());
            ip.extend_from_slice(&dst.ip().octets());
            ip.extend_from_slice(&tcp);
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00]);
            frame.extend_from_slice(&ip);
            // Ethernet padding, which must not count as payload.
            frame.extend_from_slice(&[0; 4]);
            f.extend_from_slice(&[0; 8]);
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(&frame);
        }
        f
    }

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), port)
    }

    fn record(ty: u8, version: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![ty];
        r.extend_from_slice(&version.to_be_bytes());
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn reassembles_out_of_order_and_retransmitted_segments() {
        let (a, b) = (addr(1, 40000), addr(2, 8080));
        let mut stream = record(0x16, 0x0301, b"client hello mesh.dev/transport.v1");
        stream.extend(record(0x17, 0x0303, &[0xab; 40]));
        let (one, two) = stream.split_at(10);
        let file = pcap(&[
            (a, b, 99, true, b""),
            (a, b, 100 + 10, false, two),
            (a, b, 100, false, one),
            (a, b, 100, false, one),
            (b, a, 7, false, b"HTTP/1.1 200 OK\r\n"),
        ]);
        let segs = parse(&file).unwrap();
        assert_eq!(segs.len(), 5);
        let flows = flows(&segs);
        assert_eq!(flows.len(), 2);
        assert!(flows[0].from_start);
        assert_eq!(flows[0].gaps, 0);
        assert_eq!(flows[0].bytes, stream);
        let r = tls_records(&flows[0].bytes).unwrap();
        assert_eq!(r.by_type, [0, 0, 1, 1]);
        assert!(contains(&r.first_handshake, b"mesh.dev/transport.v1"));
        // The other direction is plaintext HTTP: not TLS, and the needle is found.
        assert!(!flows[1].from_start);
        let err = tls_records(&flows[1].bytes).unwrap_err();
        assert!(err.contains("byte 0 is not a TLS record"), "{err}");
        assert!(contains(&flows[1].bytes, b"HTTP/1."));
    }

    #[test]
    fn reports_gaps_and_non_tls_after_records() {
        let (a, b) = (addr(1, 40000), addr(2, 8080));
        let file = pcap(&[
            (a, b, 0, true, b""),
            (a, b, 1, false, &record(0x17, 0x0303, b"x")),
            (a, b, 50, false, b"later"),
        ]);
        let flows = flows(&parse(&file).unwrap());
        assert_eq!(flows[0].gaps, 1);
        assert_eq!(flows[0].bytes, record(0x17, 0x0303, b"x"));

        let mut s = record(0x17, 0x0303, b"ok");
        s.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let err = tls_records(&s).unwrap_err();
        assert!(err.starts_with("byte 7 "), "{err}");
        // A version other than TLS 1.2's record version is refused after the first record.
        let mut s = record(0x16, 0x0303, b"hello");
        s.extend(record(0x17, 0x0301, b"data"));
        assert!(tls_records(&s).is_err());
        assert!(parse(b"not a pcap file at all, really").is_err());
    }
}
