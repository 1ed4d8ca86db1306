//! Absolute `http(s)` URLs for the test client: parsing, resolving `Location`s.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// An absolute `http(s)` URL split into parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port (default 80 / 443).
    pub port: u16,
    /// Path and query, at least `/`.
    pub target: String,
}

impl Url {
    /// Parses `scheme://host[:port][/path][?query]`.
    pub fn parse(url: &str) -> Option<Url> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(cut);
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), default_port),
            }
        };
        (!host.is_empty()).then_some(Url {
            scheme,
            host,
            port,
            target,
        })
    }

    /// `host:port` as for a `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves host and port.
    pub fn socket_addr(&self) -> io::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid(format!("cannot resolve {}", self.host)))
    }

    /// Resolves a `Location` (absolute URL, `//authority/..`, `/path`, relative path with
    /// `.`/`..` segments, or `?query`) against this URL per RFC 3986 section 5.2; a fragment
    /// is dropped.
    pub fn join(&self, location: &str) -> Option<Url> {
        let location = location.split('#').next().unwrap_or("");
        let mut url = if location.contains("://") {
            Url::parse(location)?
        } else if let Some(rest) = location.strip_prefix("//") {
            Url::parse(&format!("{}://{rest}", self.scheme))?
        } else {
            let base_path = self.target.split('?').next().unwrap_or("/");
            let target = if location.is_empty() {
                base_path.to_string()
            } else if location.starts_with('?') {
                format!("{base_path}{location}")
            } else if location.starts_with('/') {
                location.to_string()
            } else {
                let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
                format!("{dir}{location}")
            };
            Url {
                target,
                ..self.clone()
            }
        };
        let (path, query) = match url.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url.target.as_str(), None),
        };
        let mut target = remove_dot_segments(path);
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        url.target = target;
        Some(url)
    }
}

/// RFC 3986 section 5.2.4 for an absolute path (the result starts with `/`).
fn remove_dot_segments(path: &str) -> String {
    if !path.split('/').any(|s| s == "." || s == "..") {
        return path.to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let n = segs.len();
    for (i, seg) in segs.into_iter().enumerate() {
        let last = i + 1 == n;
        match seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_join() {
        let u = Url::parse("https://127.0.0.3:8443/a/b/data?verify=1-2").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.3", 8443, "/a/b/data?verify=1-2")
        );
        assert_eq!(u.join("/x?y").unwrap().target, "/x?y");
        assert_eq!(u.join("c").unwrap().target, "/a/b/c");
        assert_eq!(u.join("http://h:1/z").unwrap().port, 1);
        assert_eq!(Url::parse("http://[::1]/").unwrap().host, "::1");
        assert_eq!(Url::parse("http://h").unwrap().target, "/");
        assert_eq!(Url::parse("https://h:5000?q").unwrap().target, "/?q");
        assert!(Url::parse("ftp://h/").is_none());
        let b = Url::parse("https://h/v2/a/b/blobs/sha256:0").unwrap();
        assert_eq!(b.join("../../../../x/y?q=1").unwrap().target, "/x/y?q=1");
        assert_eq!(b.join("../../../../../../x").unwrap().target, "/x");
        assert_eq!(b.join("./c/./d/../e").unwrap().target, "/v2/a/b/blobs/c/e");
        assert_eq!(b.join("..").unwrap().target, "/v2/a/b/");
        assert_eq!(b.join("?n=1").unwrap().target, "/v2/a/b/blobs/sha256:0?n=1");
        assert_eq!(b.join("/p/../q?a=../b").unwrap().target, "/q?a=../b");
        assert_eq!(b.join("http://o/a/./b/../c").unwrap().target, "/a/c");
    }
}
