//! Client addresses behind load balancers: [`ClientAddr`] (the address a
//! client is known by), [`Cidr`] ranges (`trusted_proxies`), and the
//! right-to-left walk of `X-Forwarded-For` that finds the client among the
//! hops a trusted proxy vouches for.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The address a client is known by: the TCP peer, the source a trusted
/// proxy gave in a PROXY header, or an `X-Forwarded-For` hop (which may
/// have no port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl ClientAddr {
    /// An IPv4 client on a dual-stack socket (`::ffff:a.b.c.d`) is known by
    /// its IPv4 address: that is what `trusted_proxies` and the log name.
    pub fn from_socket(a: SocketAddr) -> ClientAddr {
        ClientAddr {
            ip: a.ip().to_canonical(),
            port: Some(a.port()),
        }
    }
}

impl fmt::Display for ClientAddr {
    /// `10.0.0.7:51234`, `[2001:db8::7]:51234`, or without a port `10.0.0.7`,
    /// `2001:db8::7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => SocketAddr::new(self.ip, p).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address
/// (`192.0.2.7` is `192.0.2.7/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

/// Why a range did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    Address,
    /// The prefix length is not a number up to 32 (IPv4) or 128 (IPv6).
    Length,
    /// Bits are set after the prefix (`10.0.0.1/8`): a typo more often than
    /// not, so it is named instead of silently widened.
    HostBits,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CidrError::Address => "not an IP address or range (e.g. \"10.0.0.0/8\")",
            CidrError::Length => {
                "the prefix length is out of range (0-32 for IPv4, 0-128 for IPv6)"
            }
            CidrError::HostBits => "bits are set after the prefix length",
        })
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| CidrError::Length)?
            }
            Some(_) => return Err(CidrError::Length),
        };
        if len > max {
            return Err(CidrError::Length);
        }
        let c = Cidr { net, len };
        if bits(net) & !c.mask() != 0 {
            return Err(CidrError::HostBits);
        }
        Ok(c)
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && bits(ip) & self.mask() == bits(self.net)
    }

    /// The prefix as a mask over [`bits`].
    fn mask(&self) -> u128 {
        let width = if self.net.is_ipv4() { 32 } else { 128 };
        let host = width - u32::from(self.len);
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all.checked_shl(host).unwrap_or(0) & all
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// An address as an integer (IPv4 in the low 32 bits).
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The client named by `X-Forwarded-For`, for a request whose connection
/// came from a trusted proxy. `values` are the header's values last first
/// (a list split over several header lines is one list, in order).
///
/// Each proxy appends the address it received the request from, so the
/// list is read right to left: every entry reached so far was written by a
/// trusted proxy, and the first address that is not itself trusted is the
/// client. Entries left of it were written by whoever that client is, and
/// prove nothing. All entries trusted: the left-most. An entry that is not
/// an address stops the walk at the last trusted hop (a proxy wrote
/// nonsense; what lies left of it is not vouched for). `None`: no usable
/// entry; the connection's own address stands.
pub fn forwarded_client<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<ClientAddr> {
    let mut last_trusted = None;
    for value in values {
        for entry in value.rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(addr) = forwarded_entry(entry) else {
                return last_trusted;
            };
            if !trusted(addr.ip) {
                return Some(addr);
            }
            last_trusted = Some(addr);
        }
    }
    last_trusted
}

/// One `X-Forwarded-For` entry: `192.0.2.7`, `192.0.2.7:5678`,
/// `2001:db8::7`, `[2001:db8::7]`, `[2001:db8::7]:5678`.
fn forwarded_entry(entry: &[u8]) -> Option<ClientAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ClientAddr {
            ip: ip.to_canonical(),
            port: None,
        });
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(ClientAddr::from_socket(a));
    }
    let ip = s
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<IpAddr>()
        .ok()?;
    Some(ClientAddr {
        ip: ip.to_canonical(),
        port: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_contain() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.255.0.1")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(
            ten.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!ten.contains(ip("2001:db8::1")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
    }

    #[test]
    fn bad_ranges_say_why() {
        assert_eq!(Cidr::parse("ten/8"), Err(CidrError::Address));
        assert_eq!(Cidr::parse("10.0.0.0/33"), Err(CidrError::Length));
        assert_eq!(Cidr::parse("10.0.0.0/"), Err(CidrError::Length));
        assert_eq!(Cidr::parse("10.0.0.0/+8"), Err(CidrError::Length));
        assert_eq!(Cidr::parse("2001:db8::/129"), Err(CidrError::Length));
        assert_eq!(Cidr::parse("10.0.0.1/8"), Err(CidrError::HostBits));
    }

    fn xff(values: &[&str], trusted: &[&str]) -> Option<String> {
        let ranges: Vec<Cidr> = trusted.iter().map(|t| Cidr::parse(t).unwrap()).collect();
        forwarded_client(values.iter().rev().map(|v| v.as_bytes()), |a| {
            ranges.iter().any(|r| r.contains(a))
        })
        .map(|c| c.to_string())
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let t = &["10.0.0.0/8"];
        assert_eq!(xff(&["203.0.113.9"], t).as_deref(), Some("203.0.113.9"));
        // The client forged an entry on the left: ignored.
        assert_eq!(
            xff(&["1.2.3.4, 203.0.113.9, 10.0.0.2"], t).as_deref(),
            Some("203.0.113.9")
        );
        // Several header lines are one list.
        assert_eq!(
            xff(&["1.2.3.4", "203.0.113.9", "10.0.0.2, 10.0.0.3"], t).as_deref(),
            Some("203.0.113.9")
        );
        // Every hop trusted: the farthest.
        assert_eq!(xff(&["10.0.0.5, 10.0.0.2"], t).as_deref(), Some("10.0.0.5"));
        assert_eq!(
            xff(&["[2001:db8::9]:4711, 203.0.113.9:80"], t).as_deref(),
            Some("203.0.113.9:80")
        );
        assert_eq!(xff(&["2001:db8::9"], t).as_deref(), Some("2001:db8::9"));
        assert_eq!(xff(&["[2001:db8::9]"], t).as_deref(), Some("2001:db8::9"));
    }

    #[test]
    fn nonsense_stops_the_walk_at_the_last_trusted_hop() {
        let t = &["10.0.0.0/8"];
        assert_eq!(xff(&["unknown"], t), None);
        assert_eq!(xff(&[""], t), None);
        assert_eq!(xff(&[], t), None);
        assert_eq!(
            xff(&["203.0.113.9, unknown, 10.0.0.2"], t).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            xff(&["203.0.113.9\n, 10.0.0.2"], t).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(xff(&["1.2.3.4\u{2028}"], t), None);
    }
}

/// Whether `ip` is not on the public internet: loopback, private
/// (RFC 1918, RFC 4193), link-local, shared (RFC 6598), unspecified,
/// multicast or broadcast; an IPv4-mapped IPv6 address as its IPv4.
/// Redirects to these are refused for public upstreams (`redirect_private`).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod private_tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_are_private_and_public_is_not() {
        for p in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_private(p.parse().unwrap()), "{p}");
        }
        for p in ["8.8.8.8", "104.16.0.1", "2606:4700::1", "::ffff:8.8.8.8"] {
            assert!(!is_private(p.parse().unwrap()), "{p}");
        }
    }
}
