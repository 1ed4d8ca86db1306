//! The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO: the header a
//! load balancer sends before anything else on a connection to say whom it
//! is forwarding. [`scan`] looks at the bytes received so far and says
//! whether they are (the start of) a header, a whole one, or something else
//! (a client speaking HTTP or TLS straight away).
//!
//! Version 1 is a text line, `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`
//! (or `TCP6`, or `UNKNOWN ...`), at most 107 bytes. Version 2 is binary: a
//! 12-byte signature, version and command, family and transport, a 16-bit
//! length, then the addresses and optional TLVs (skipped here).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// How a version 1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The fixed part of a version 2 header.
const V2_FIXED: usize = 16;
/// The longest version 2 header: the fixed part and a 16-bit length.
pub const V2_MAX: usize = V2_FIXED + u16::MAX as usize;

/// Which version a header was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// A TCP connection the proxy forwards: the client's address and the
    /// one it connected to.
    Tcp {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy's own connection (v2 `LOCAL`: health checks), or one it
    /// cannot describe (v1 `UNKNOWN`, v2 `UNSPEC` or a UNIX socket): the
    /// connection's own addresses stand.
    Unknown,
}

/// A whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub addresses: Addresses,
    /// Its length: the connection's own bytes start after it.
    pub len: usize,
}

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The start of a header, or too few bytes to tell: read more.
    Incomplete,
    /// Not a PROXY header (the client's own first bytes).
    NotProxy,
    Header(Header),
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// A version 1 line longer than 107 bytes.
    V1TooLong,
    /// A version 1 line that does not follow the grammar.
    V1Syntax(&'static str),
    /// A version 2 header of another version than 2.
    V2Version(u8),
    /// A version 2 command other than LOCAL or PROXY.
    V2Command(u8),
    /// A version 2 address family or transport that is not defined, or a
    /// datagram one (this is a TCP listener).
    V2Family(u8),
    /// A version 2 length too short for its addresses.
    V2Length { family: u8, len: u16 },
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::V1TooLong => write!(f, "PROXY v1 line longer than {V1_MAX} bytes"),
            ProxyError::V1Syntax(what) => write!(f, "PROXY v1 line: {what}"),
            ProxyError::V2Version(v) => write!(f, "PROXY v2 header with version {v}"),
            ProxyError::V2Command(c) => write!(f, "PROXY v2 header with command {c}"),
            ProxyError::V2Family(x) => {
                write!(f, "PROXY v2 header with family/transport {x:#04x}")
            }
            ProxyError::V2Length { family, len } => write!(
                f,
                "PROXY v2 header of {len} bytes is too short for family/transport {family:#04x}"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Looks at the first bytes of a connection.
pub fn scan(buf: &[u8]) -> Result<Scan, ProxyError> {
    if starts_with_or_is_prefix(buf, &V2_SIGNATURE) {
        if buf.len() < V2_FIXED {
            return Ok(Scan::Incomplete);
        }
        return scan_v2(buf);
    }
    if starts_with_or_is_prefix(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Scan::Incomplete);
        }
        return scan_v1(buf);
    }
    Ok(Scan::NotProxy)
}

/// `buf` starts with `sig`, or is a (possibly empty) beginning of it.
fn starts_with_or_is_prefix(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn scan_v1(buf: &[u8]) -> Result<Scan, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = memchr::memchr2(b'\r', b'\n', window) else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Scan::Incomplete)
        };
    };
    if window[cr] == b'\n' {
        return Err(ProxyError::V1Syntax("LF without CR"));
    }
    match window.get(cr + 1) {
        None if buf.len() < V1_MAX => return Ok(Scan::Incomplete),
        Some(b'\n') => {}
        _ => return Err(ProxyError::V1Syntax("CR not followed by LF")),
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| ProxyError::V1Syntax("not ASCII"))?;
    let len = cr + 2;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or("");
    if proto == "UNKNOWN" {
        // The rest of the line may say anything, and is to be ignored.
        return Ok(Scan::Header(Header {
            version: Version::V1,
            addresses: Addresses::Unknown,
            len,
        }));
    }
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyError::V1Syntax(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let mut field = || parts.next().ok_or(ProxyError::V1Syntax("missing field"));
    let (src, dst, sport, dport) = (field()?, field()?, field()?, field()?);
    if parts.next().is_some() {
        return Err(ProxyError::V1Syntax("extra field"));
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let bad = ProxyError::V1Syntax("address does not match the protocol");
        if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| bad)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| bad)
        }
    };
    let (src, dst) = (ip(src)?, ip(dst)?);
    let source = SocketAddr::new(src, v1_port(sport)?);
    let destination = SocketAddr::new(dst, v1_port(dport)?);
    Ok(Scan::Header(Header {
        version: Version::V1,
        addresses: Addresses::Tcp {
            source,
            destination,
        },
        len,
    }))
}

/// A decimal port, 0-65535, no sign or leading zero.
fn v1_port(s: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::V1Syntax("port is not a number from 0 to 65535");
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

/// Address families and transports of version 2 (high and low nibble).
const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;
const UNSPEC: u8 = 0x0;
const STREAM: u8 = 0x1;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;

fn scan_v2(buf: &[u8]) -> Result<Scan, ProxyError> {
    let ver_cmd = buf[12];
    let fam = buf[13];
    let rest = u16::from_be_bytes([buf[14], buf[15]]);
    let len = V2_FIXED + usize::from(rest);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let command = ver_cmd & 0x0f;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyError::V2Command(command));
    }
    let need = match (fam >> 4, fam & 0x0f) {
        // A LOCAL header's addresses are to be ignored, whatever its
        // family says; only its length stands.
        _ if command == CMD_LOCAL => 0,
        (AF_UNSPEC, UNSPEC) => 0,
        (AF_INET, STREAM) => 12,
        (AF_INET6, STREAM) => 36,
        (AF_UNIX, STREAM) => 216,
        _ => return Err(ProxyError::V2Family(fam)),
    };
    if usize::from(rest) < need {
        return Err(ProxyError::V2Length {
            family: fam,
            len: rest,
        });
    }
    if buf.len() < len {
        return Ok(Scan::Incomplete);
    }
    let a = &buf[V2_FIXED..len];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let addresses = match (command, fam >> 4) {
        (CMD_PROXY, AF_INET) => {
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            Addresses::Tcp {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        (CMD_PROXY, AF_INET6) => {
            let ip = |i: usize| {
                let octets: [u8; 16] = a[i..i + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Addresses::Tcp {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        _ => Addresses::Unknown,
    };
    Ok(Scan::Header(Header {
        version: Version::V2,
        addresses,
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src: &str, dst: &str) -> Addresses {
        Addresses::Tcp {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    fn v1(line: &str) -> Result<Scan, ProxyError> {
        scan(line.as_bytes())
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = "PROXY TCP4 203.0.113.9 192.0.2.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            v1(line),
            Ok(Scan::Header(Header {
                version: Version::V1,
                addresses: tcp("203.0.113.9:56324", "192.0.2.1:443"),
                len: 44,
            }))
        );
        let Ok(Scan::Header(h)) = v1("PROXY TCP6 2001:db8::9 2001:db8::1 65535 0\r\n") else {
            panic!()
        };
        assert_eq!(h.addresses, tcp("[2001:db8::9]:65535", "[2001:db8::1]:0"));
        let Ok(Scan::Header(h)) = v1("PROXY UNKNOWN\r\n") else {
            panic!()
        };
        assert_eq!((h.addresses, h.len), (Addresses::Unknown, 15));
        let Ok(Scan::Header(h)) = v1("PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 1 2\r\n") else {
            panic!()
        };
        assert_eq!(h.addresses, Addresses::Unknown);
    }

    #[test]
    fn other_first_bytes_are_not_proxy_and_prefixes_wait_for_more() {
        assert_eq!(scan(b"GET / HTTP/1.1\r\n"), Ok(Scan::NotProxy));
        assert_eq!(scan(b"POST /token"), Ok(Scan::NotProxy));
        assert_eq!(scan(b"PROXIES"), Ok(Scan::NotProxy));
        assert_eq!(
            scan(&[0x16, 0x03, 0x01]),
            Ok(Scan::NotProxy),
            "a TLS ClientHello"
        );
        assert_eq!(scan(b"\r\n\r\nGET"), Ok(Scan::NotProxy));
        for partial in [
            &b""[..],
            b"P",
            b"PROX",
            b"PROXY ",
            b"PROXY TCP4 1.2.3.4",
            b"\r\n\r\n\0",
        ] {
            assert_eq!(scan(partial), Ok(Scan::Incomplete), "{partial:?}");
        }
        assert_eq!(scan(&V2_SIGNATURE), Ok(Scan::Incomplete));
        assert_eq!(v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), Ok(Scan::Incomplete));
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        for (line, why) in [
            ("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "missing"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "extra"),
            ("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "extra field"),
            ("PROXY TCP4 1.2.3.4  5.6.7.8 1\r\n", "address"),
            ("PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "address"),
            ("PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", "address"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "LF"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
        ] {
            match v1(line) {
                Err(ProxyError::V1Syntax(m)) => assert!(m.contains(why), "{line:?}: {m}"),
                other => panic!("{line:?}: {other:?}"),
            }
        }
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert_eq!(v1(&long), Err(ProxyError::V1TooLong));
        assert_eq!(v1(&"PROXY ".repeat(20)), Err(ProxyError::V1TooLong));
        assert_eq!(
            scan(b"PROXY TCP4 \xff 5.6.7.8 1 2\r\n"),
            Err(ProxyError::V1Syntax("not ASCII"))
        );
    }

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v2_inet_inet6_local_and_unspec() {
        let mut body = vec![203, 0, 113, 9, 192, 0, 2, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]); // a TLV, skipped
        let mut h = v2(0x21, 0x11, &body);
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01"); // the ClientHello behind it
        assert_eq!(
            scan(&h),
            Ok(Scan::Header(Header {
                version: Version::V2,
                addresses: tcp("203.0.113.9:56324", "192.0.2.1:443"),
                len,
            }))
        );

        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0xc3, 0x50, 0x01, 0xbb]);
        let Ok(Scan::Header(h)) = scan(&v2(0x21, 0x21, &body)) else {
            panic!()
        };
        assert_eq!(h.addresses, tcp("[2001:db8::9]:50000", "[2001:db8::1]:443"));

        for (cmd, fam, body) in [
            (0x20, 0x00, &[][..]),         // LOCAL
            (0x20, 0x11, &[0u8; 12][..]),  // LOCAL with addresses: ignored
            (0x20, 0xff, &[1, 2, 3][..]),  // LOCAL: the family is not looked at
            (0x21, 0x00, &[][..]),         // PROXY, UNSPEC
            (0x21, 0x31, &[0u8; 216][..]), // a UNIX socket
        ] {
            let h = v2(cmd, fam, body);
            assert_eq!(
                scan(&h),
                Ok(Scan::Header(Header {
                    version: Version::V2,
                    addresses: Addresses::Unknown,
                    len: h.len()
                })),
                "{cmd:#x} {fam:#x}"
            );
        }
    }

    #[test]
    fn truncated_and_malformed_v2_headers() {
        let whole = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for n in 0..whole.len() {
            assert_eq!(scan(&whole[..n]), Ok(Scan::Incomplete), "{n} bytes");
        }
        assert_eq!(
            scan(&v2(0x11, 0x11, &[0; 12])),
            Err(ProxyError::V2Version(1))
        );
        assert_eq!(
            scan(&v2(0x22, 0x11, &[0; 12])),
            Err(ProxyError::V2Command(2))
        );
        assert_eq!(
            scan(&v2(0x21, 0x12, &[0; 12])),
            Err(ProxyError::V2Family(0x12)),
            "UDP"
        );
        assert_eq!(
            scan(&v2(0x21, 0x41, &[0; 12])),
            Err(ProxyError::V2Family(0x41))
        );
        assert_eq!(
            scan(&v2(0x21, 0x21, &[0; 12])),
            Err(ProxyError::V2Length {
                family: 0x21,
                len: 12
            })
        );
        // A length that promises more than was sent waits for it (the
        // reader's deadline and V2_MAX bound the wait).
        let mut short = v2(0x21, 0x11, &[0; 12]);
        short[15] = 200;
        assert_eq!(scan(&short), Ok(Scan::Incomplete));
    }
}
