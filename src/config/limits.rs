//! `[client_limits]`: how much one client may ask of the mirror (requests
//! per second with a burst, open connections, response bytes per second),
//! an optional byte rate for the whole process, and per-user limits for
//! clients the mirror authenticated. Absent table: no limits (the default).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{line_of, parse_size, ConfigError};

/// The checked `[client_limits]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// Clients are grouped by address prefix: IPv4 /32 and IPv6 /64 by
    /// default (one IPv6 subscriber usually holds a whole /64).
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Requests per client (prefix).
    pub requests: Option<RequestRate>,
    /// Connections open at once per client (prefix), counted from accept.
    pub max_connections: Option<u32>,
    /// Response bytes per client (prefix).
    pub bytes: Option<ByteRate>,
    /// Response bytes of the whole process.
    pub egress: Option<ByteRate>,
    /// Limits of authenticated users, by user name: they replace the
    /// address's request and byte limits for that user's requests.
    pub users: BTreeMap<String, UserLimits>,
}

/// A request rate with a burst: a token bucket of `burst` tokens refilled
/// at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate {
    pub per_sec: f64,
    pub burst: u32,
}

/// A byte rate with a burst (bytes sent at once after a quiet spell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate {
    pub per_sec: u64,
    pub burst: u64,
}

/// One user's own limits; `None`: that limit of the address applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserLimits {
    pub requests: Option<RequestRate>,
    pub bytes: Option<ByteRate>,
}

/// The largest buffer a relay writes to a client in one timed write (the
/// relay buffer): a shaped client must be able to take it within
/// `client_write_secs`, or shaping would cut the body it should only slow.
const LARGEST_TIMED_WRITE: u64 = 256 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileClientLimits {
    ipv4_prefix: Option<Spanned<u8>>,
    ipv6_prefix: Option<Spanned<u8>>,
    requests_per_sec: Option<Spanned<f64>>,
    burst: Option<Spanned<u32>>,
    max_connections: Option<Spanned<u32>>,
    bytes_per_sec: Option<Spanned<String>>,
    bytes_burst: Option<Spanned<String>>,
    egress_bytes_per_sec: Option<Spanned<String>>,
    #[serde(default)]
    user: BTreeMap<String, Spanned<FileUserLimits>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUserLimits {
    requests_per_sec: Option<Spanned<f64>>,
    burst: Option<Spanned<u32>>,
    bytes_per_sec: Option<Spanned<String>>,
    bytes_burst: Option<Spanned<String>>,
}

/// Checks `[client_limits]`; `client_write` is the write timeout a shaped
/// client's byte rate must fit.
pub(super) fn parse(
    text: &str,
    f: &Spanned<FileClientLimits>,
    client_write: Duration,
) -> Result<ClientLimits, ConfigError> {
    let at = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let table = f.span();
    let f = f.get_ref();
    let prefix = |v: &Option<Spanned<u8>>, key: &str, default: u8, max: u8| match v {
        None => Ok(default),
        Some(p) if (1..=max).contains(p.get_ref()) => Ok(*p.get_ref()),
        Some(p) => Err(at(
            p.span(),
            format!("client_limits.{key} must be between 1 and {max}"),
        )),
    };
    let ipv4_prefix = prefix(&f.ipv4_prefix, "ipv4_prefix", 32, 32)?;
    let ipv6_prefix = prefix(&f.ipv6_prefix, "ipv6_prefix", 64, 128)?;
    let requests = request_rate(&at, "client_limits", &f.requests_per_sec, &f.burst)?;
    let bytes = byte_rate(
        &at,
        "client_limits.bytes_per_sec",
        &f.bytes_per_sec,
        &f.bytes_burst,
        client_write,
    )?;
    let egress = byte_rate(
        &at,
        "client_limits.egress_bytes_per_sec",
        &f.egress_bytes_per_sec,
        &None,
        Duration::ZERO,
    )?;
    let max_connections = match &f.max_connections {
        Some(m) if *m.get_ref() == 0 => {
            return Err(at(
                m.span(),
                "client_limits.max_connections must be at least 1 (leave it out for no cap)".into(),
            ))
        }
        m => m.as_ref().map(|m| *m.get_ref()),
    };
    let mut users = BTreeMap::new();
    for (name, u) in &f.user {
        let span = u.span();
        let u = u.get_ref();
        let key = format!("client_limits.user.{name}");
        let limits = UserLimits {
            requests: request_rate(&at, &key, &u.requests_per_sec, &u.burst)?,
            bytes: byte_rate(
                &at,
                &format!("{key}.bytes_per_sec"),
                &u.bytes_per_sec,
                &u.bytes_burst,
                client_write,
            )?,
        };
        if limits.requests.is_none() && limits.bytes.is_none() {
            return Err(at(
                span,
                format!("{key} sets no limit (requests_per_sec or bytes_per_sec)"),
            ));
        }
        users.insert(name.clone(), limits);
    }
    let limits = ClientLimits {
        ipv4_prefix,
        ipv6_prefix,
        requests,
        max_connections,
        bytes,
        egress,
        users,
    };
    if limits.requests.is_none()
        && limits.max_connections.is_none()
        && limits.bytes.is_none()
        && limits.egress.is_none()
        && limits.users.is_empty()
    {
        return Err(at(
            table,
            "[client_limits] sets no limit: give requests_per_sec, max_connections, bytes_per_sec or egress_bytes_per_sec (or leave the table out)".into(),
        ));
    }
    Ok(limits)
}

type At<'a> = dyn Fn(std::ops::Range<usize>, String) -> ConfigError + 'a;

fn request_rate(
    at: &At<'_>,
    key: &str,
    per_sec: &Option<Spanned<f64>>,
    burst: &Option<Spanned<u32>>,
) -> Result<Option<RequestRate>, ConfigError> {
    let Some(r) = per_sec else {
        if let Some(b) = burst {
            return Err(at(
                b.span(),
                format!("{key}.burst needs requests_per_sec beside it"),
            ));
        }
        return Ok(None);
    };
    let per_sec = *r.get_ref();
    // Below one request an hour a limit is a ban; above a million a second
    // it never applies: both are typos more often than not.
    if !(per_sec.is_finite() && (1.0 / 3600.0..=1e6).contains(&per_sec)) {
        return Err(at(
            r.span(),
            format!("{key}.requests_per_sec must be between 0.0003 and 1000000"),
        ));
    }
    let burst = match burst {
        // By default a client may send one second's worth at once (at least
        // one request).
        None => (per_sec.ceil() as u32).max(1),
        Some(b) if *b.get_ref() == 0 => {
            return Err(at(b.span(), format!("{key}.burst must be at least 1")))
        }
        Some(b) => *b.get_ref(),
    };
    Ok(Some(RequestRate { per_sec, burst }))
}

/// A byte rate such as `"10MiB"` (per second). `fit`: the write timeout a
/// client at this rate must fit a relay buffer in (zero: no check, for the
/// process-wide rate, which clients share).
fn byte_rate(
    at: &At<'_>,
    key: &str,
    per_sec: &Option<Spanned<String>>,
    burst: &Option<Spanned<String>>,
    fit: Duration,
) -> Result<Option<ByteRate>, ConfigError> {
    let size = |s: &Spanned<String>, what: &str| {
        parse_size(s.get_ref()).ok_or_else(|| {
            at(
                s.span(),
                format!("{what}: not a size (e.g. \"10MiB\", \"500KB\", \"65536\")"),
            )
        })
    };
    let Some(r) = per_sec else {
        if let Some(b) = burst {
            return Err(at(
                b.span(),
                format!("{key}: bytes_burst needs bytes_per_sec beside it"),
            ));
        }
        return Ok(None);
    };
    let rate = size(r, key)?;
    if !fit.is_zero() && (rate as f64) * fit.as_secs_f64() < LARGEST_TIMED_WRITE as f64 {
        return Err(at(
            r.span(),
            format!(
                "{key}: at {rate} bytes a second a client cannot take one 256 KiB relay buffer within client_write_secs ({} s), so shaping would cut bodies; raise the rate or the timeout",
                fit.as_secs_f64()
            ),
        ));
    }
    // By default one second's worth may leave at once.
    let burst = match burst {
        None => rate,
        Some(b) => size(b, &format!("{key}: bytes_burst"))?,
    };
    Ok(Some(ByteRate {
        per_sec: rate,
        burst,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    fn parse(extra: &str) -> Result<Option<ClientLimits>, crate::config::ConfigError> {
        Config::parse(&format!("listen = [\"127.0.0.1:0\"]\n{extra}")).map(|c| c.client_limits)
    }

    #[test]
    fn no_table_means_no_limits() {
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn a_public_mirror_shape_parses_with_defaults_filled_in() {
        let l = parse(
            "[client_limits]\nrequests_per_sec = 20\nmax_connections = 64\nbytes_per_sec = \"10MiB\"\negress_bytes_per_sec = \"1GiB\"\n[client_limits.user.ci]\nrequests_per_sec = 200\nburst = 1000\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((l.ipv4_prefix, l.ipv6_prefix), (32, 64));
        assert_eq!(
            l.requests,
            Some(RequestRate {
                per_sec: 20.0,
                burst: 20
            })
        );
        assert_eq!(l.max_connections, Some(64));
        assert_eq!(
            l.bytes,
            Some(ByteRate {
                per_sec: 10 << 20,
                burst: 10 << 20
            })
        );
        assert_eq!(l.egress.unwrap().per_sec, 1 << 30);
        let ci = l.users["ci"];
        assert_eq!(ci.requests.unwrap().burst, 1000);
        assert_eq!(ci.bytes, None);
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            ("[client_limits]\n", 2, "sets no limit"),
            ("[client_limits]\nipv6_prefix = 0\n", 3, "ipv6_prefix"),
            ("[client_limits]\nipv4_prefix = 33\n", 3, "ipv4_prefix"),
            (
                "[client_limits]\nrequests_per_sec = 0\n",
                3,
                "requests_per_sec",
            ),
            (
                "[client_limits]\nrequests_per_sec = 5\nburst = 0\n",
                4,
                "burst",
            ),
            ("[client_limits]\nburst = 5\n", 3, "needs requests_per_sec"),
            ("[client_limits]\nmax_connections = 0\n", 3, "at least 1"),
            (
                "[client_limits]\nbytes_per_sec = \"fast\"\n",
                3,
                "not a size",
            ),
            // 1 KiB/s cannot take a relay buffer within 120 s.
            (
                "[client_limits]\nbytes_per_sec = \"1KiB\"\n",
                3,
                "cut bodies",
            ),
            ("[client_limits]\nnope = 1\n", 3, "unknown field"),
            (
                "[client_limits]\n[client_limits.user.x]\nburst = 2\n",
                4,
                "needs",
            ),
        ];
        for (text, line, words) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(e.message.contains(words), "{text}: {e}");
        }
    }
}
