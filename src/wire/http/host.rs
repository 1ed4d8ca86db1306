//! The Host header and the request target's authority (RFC 9112 3.2): what
//! a request may name as the host it wants, checked once at the edge.
//!
//! Stricter than RFC 3986's `reg-name` on purpose: a host here is a DNS
//! name (letters, digits, `-`, `_`, dots), an IPv4 address or a bracketed
//! IPv6 address without a zone id, with an optional decimal port. No
//! userinfo, no percent-encoding, no path: the value is echoed into realms
//! and the landing page, and picks a registry.

/// Longest Host value accepted: a 253-byte DNS name, a colon and a port.
pub const MAX_HOST_LEN: usize = 253 + 6;

/// A valid `host[:port]`, as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// The host, brackets kept for IPv6.
    pub host: &'a str,
    pub port: Option<u16>,
}

impl<'a> HostPort<'a> {
    /// Parses a Host value or a target's authority; `None` when it is not a
    /// plain `host[:port]`.
    pub fn parse(s: &'a str) -> Option<HostPort<'a>> {
        if s.is_empty() || s.len() > MAX_HOST_LEN {
            return None;
        }
        let (host, port) = if s.starts_with('[') {
            let close = s.find(']')?;
            let (host, rest) = s.split_at(close + 1);
            let inner = &host[1..host.len() - 1];
            // No zone id (`%25eth0`): it names an interface of whoever
            // resolves it, and means nothing to a mirror.
            inner.parse::<std::net::Ipv6Addr>().ok()?;
            match rest {
                "" => (host, None),
                _ => (host, Some(rest.strip_prefix(':')?)),
            }
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if !host.starts_with('[') && !is_dns_name(host) {
            return None;
        }
        let port = match port {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(p.parse::<u16>().ok()?)
            }
        };
        Some(HostPort { host, port })
    }
}

/// Dot-separated labels of letters, digits, `-` and `_`, none empty except
/// a trailing root dot; covers IPv4 literals too.
fn is_dns_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_and_ports_are_hosts() {
        let hp = |s| HostPort::parse(s).map(|h| (h.host, h.port));
        assert_eq!(hp("mirror.example.com"), Some(("mirror.example.com", None)));
        assert_eq!(
            hp("Mirror.Example.com:5000"),
            Some(("Mirror.Example.com", Some(5000)))
        );
        assert_eq!(hp("127.0.0.1:80"), Some(("127.0.0.1", Some(80))));
        assert_eq!(hp("[::1]:8080"), Some(("[::1]", Some(8080))));
        assert_eq!(hp("[2001:db8::1]"), Some(("[2001:db8::1]", None)));
        assert_eq!(hp("localhost."), Some(("localhost.", None)));
    }

    #[test]
    fn anything_else_is_not() {
        let long = format!("{}.com", "a".repeat(300));
        for bad in [
            "",
            "user@host",
            "host/path",
            "host:",
            "host:99999",
            "host:+80",
            "host:80:80",
            "[fe80::1%25eth0]",
            "[::1",
            "[::1]x",
            "[nothex]",
            "a..b",
            ".",
            "ho st",
            "h%2e",
            "evil\"/x",
            &long,
        ] {
            assert_eq!(HostPort::parse(bad), None, "{bad}");
        }
    }
}
