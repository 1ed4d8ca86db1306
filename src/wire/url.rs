//! Just enough URL handling for a registry proxy: absolute `http(s)` URLs of
//! upstreams, realms and redirect targets, and RFC 3986 resolution of a
//! relative `Location` against the URL that produced it. The query string is
//! kept byte for byte: signed CDN URLs break if it is re-encoded.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Scheme, host and port: the unit of trust and of connection pooling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// `host[:port]` as written in a Host header (port omitted when default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// An absolute URL split into origin and `path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub origin: Origin,
    /// Always starts with `/`.
    pub path_and_query: String,
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.path_and_query)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    Scheme,
    Host,
    Port,
    Chars,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::Scheme => "URL must start with http:// or https://",
            UrlError::Host => "URL has no valid host",
            UrlError::Port => "URL has an invalid port",
            UrlError::Chars => "URL contains spaces or control characters",
        })
    }
}

impl std::error::Error for UrlError {}

impl Url {
    /// Parses an absolute `http://` or `https://` URL. User info is refused:
    /// credentials never travel inside URLs here.
    pub fn parse(s: &str) -> Result<Url, UrlError> {
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UrlError::Chars);
        }
        let (scheme, rest) = if let Some(r) = strip_prefix_ci(s, "https://") {
            (Scheme::Https, r)
        } else if let Some(r) = strip_prefix_ci(s, "http://") {
            (Scheme::Http, r)
        } else {
            return Err(UrlError::Scheme);
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let origin = parse_authority(scheme, &rest[..end])?;
        let mut pq = rest[end..].split('#').next().unwrap_or("").to_string();
        if !pq.starts_with('/') {
            pq.insert(0, '/');
        }
        Ok(Url {
            origin,
            path_and_query: pq,
        })
    }

    /// Resolves a `Location` value against this URL (RFC 3986 section 5.2).
    pub fn join(&self, reference: &str) -> Result<Url, UrlError> {
        let reference = reference.trim();
        if reference
            .bytes()
            .any(|b| b < b' ' || b == 0x7f || b == b' ')
        {
            return Err(UrlError::Chars);
        }
        let reference = reference.split('#').next().unwrap_or("");
        let has_scheme = reference.find(':').is_some_and(|i| {
            i > 0
                && reference[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !reference[..i].contains('/')
        });
        if has_scheme {
            return Url::parse(reference);
        }
        if let Some(rest) = reference.strip_prefix("//") {
            return Url::parse(&format!("{}://{rest}", self.origin.scheme.as_str()));
        }
        let (base_path, _base_query) = split_query(&self.path_and_query);
        let pq = if reference.is_empty() {
            self.path_and_query.clone()
        } else if reference.starts_with('?') {
            format!("{base_path}{reference}")
        } else {
            let (ref_path, ref_query) = split_query(reference);
            let merged = if ref_path.starts_with('/') {
                ref_path.to_string()
            } else {
                let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
                format!("{dir}{ref_path}")
            };
            let mut p = remove_dot_segments(&merged);
            if let Some(q) = ref_query {
                p.push('?');
                p.push_str(q);
            }
            p
        };
        Ok(Url {
            origin: self.origin.clone(),
            path_and_query: pq,
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // `get`, not indexing: the cut may fall inside a multi-byte character
    // (`https:/я...` in a config or an upstream's Location), which is no
    // match rather than a panic.
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_query(pq: &str) -> (&str, Option<&str>) {
    match pq.find('?') {
        Some(i) => (&pq[..i], Some(&pq[i + 1..])),
        None => (pq, None),
    }
}

/// Parses `host[:port]` / `[v6][:port]`.
pub fn parse_authority(scheme: Scheme, auth: &str) -> Result<Origin, UrlError> {
    if auth.contains('@') || auth.is_empty() {
        return Err(UrlError::Host);
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let close = rest.find(']').ok_or(UrlError::Host)?;
        let host = &rest[..close];
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| UrlError::Host)?;
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError::Host),
        };
        (host, port)
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or(UrlError::Port)?,
        None => scheme.default_port(),
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    if !ok {
        return Err(UrlError::Host);
    }
    Ok(Origin {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i == segs.len() - 1;
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multibyte_character_where_a_scheme_would_end_is_an_error_not_a_panic() {
        // Found by the `config` fuzz target: `https:/я` cut `"https://"`'s
        // length inside `я`.
        for s in [
            "https:/\u{44f}vcr.io",
            "http:/\u{44f}x",
            "\u{44f}",
            "https:/\u{44f}",
        ] {
            assert!(Url::parse(s).is_err(), "{s}");
        }
        // The same through an upstream's redirect: `Location` is joined.
        let base = Url::parse("https://registry.example/v2/").unwrap();
        assert!(base.join("https:/\u{44f}cdn.example/blob").is_err());
    }

    #[test]
    fn absolute_urls_split_into_origin_and_path() {
        let u = Url::parse("https://Registry-1.Docker.io/v2/").unwrap();
        assert_eq!(u.origin.host, "registry-1.docker.io");
        assert_eq!(u.origin.port, 443);
        assert_eq!(u.path_and_query, "/v2/");
        let u = Url::parse("http://127.0.0.1:5001").unwrap();
        assert_eq!((u.origin.port, u.path_and_query.as_str()), (5001, "/"));
        let u = Url::parse("https://[::1]:8443/x?y=1").unwrap();
        assert_eq!(u.origin.host, "::1");
        assert_eq!(u.origin.authority(), "[::1]:8443");
        assert_eq!(u.to_string(), "https://[::1]:8443/x?y=1");
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "ftp://x/",
            "https://",
            "https://u:p@host/",
            "https://h:0/",
            "https://h:99999/",
            "https://h x/",
            "https://h/\n",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_locations_resolve_against_the_request_url() {
        let base = Url::parse("https://cdn.example/a/b/data?verify=1").unwrap();
        assert_eq!(
            base.join("/x/y?q=1").unwrap().to_string(),
            "https://cdn.example/x/y?q=1"
        );
        assert_eq!(
            base.join("c?d").unwrap().to_string(),
            "https://cdn.example/a/b/c?d"
        );
        assert_eq!(
            base.join("../c").unwrap().to_string(),
            "https://cdn.example/a/c"
        );
        assert_eq!(
            base.join("//other:8443/p").unwrap().to_string(),
            "https://other:8443/p"
        );
        assert_eq!(
            base.join("?z").unwrap().to_string(),
            "https://cdn.example/a/b/data?z"
        );
        assert_eq!(
            base.join("https://s3.example/b?X-Amz-Signature=AbC%2F&x=1")
                .unwrap()
                .to_string(),
            "https://s3.example/b?X-Amz-Signature=AbC%2F&x=1"
        );
    }
}
