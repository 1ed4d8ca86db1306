//! The access log: one line per request, buffered per worker and written to
//! stderr in batches, so the data path takes no lock and makes no syscall
//! per request. Two formats:
//!
//! - text (the default), space-separated fields:
//!   `2026-11-22T08:40:00Z 10.0.0.7:51234 GET /v2/library/alpine/manifests/latest 200 docker.io library/alpine up=200/2.9ms cache=- err=- 1572 3.1ms`
//! - JSON, one object per line (`access_log_format = "json"`):
//!   `{"time":"2026-11-22T08:40:00.123Z","client":"10.0.0.7","client_port":51234,"method":"GET",...}`
//!
//! What a client sent (target, user agent, method, repository) is escaped
//! on the way in ([`super::escape`]): a line always is one request.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::escape;
use super::summary::RequestSummary;
use crate::config::AccessLogFormat;
use crate::wire::addr::ClientAddr;

/// Lines are written out once this much is buffered (or every second).
const FLUSH_AT: usize = 32 * 1024;

/// A worker's buffered access log.
pub struct AccessLog {
    /// A reload may change it (see `Worker::reloaded`).
    format: Cell<AccessLogFormat>,
    buf: RefCell<Vec<u8>>,
}

/// Who asked for what: the request side of a line, borrowed from the
/// request head.
pub struct Asked<'a> {
    /// The client (after PROXY headers and `X-Forwarded-For` from trusted
    /// proxies).
    pub client: ClientAddr,
    pub method: &'a str,
    pub target: &'a str,
    pub user_agent: Option<&'a [u8]>,
}

impl AccessLog {
    pub fn new(format: AccessLogFormat) -> AccessLog {
        AccessLog {
            format: Cell::new(format),
            buf: RefCell::default(),
        }
    }

    /// The format of the lines recorded from now on.
    pub fn set_format(&self, format: AccessLogFormat) {
        self.format.set(format);
    }

    /// Records one finished request; `registry`: the name of the
    /// summary's registry.
    pub fn record(
        &self,
        asked: &Asked<'_>,
        registry: Option<&str>,
        s: &RequestSummary<'_>,
        took: Duration,
    ) {
        let mut buf = self.buf.borrow_mut();
        let line = Line {
            now: SystemTime::now(),
            asked,
            registry,
            s,
            took,
        };
        match self.format.get() {
            AccessLogFormat::Text => line.text(&mut buf),
            AccessLogFormat::Json => line.json(&mut buf),
        }
        if buf.len() >= FLUSH_AT {
            flush_to_stderr(&mut buf);
        }
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            flush_to_stderr(&mut buf);
        }
    }
}

/// One request's line, in either format.
#[derive(Clone, Copy)]
struct Line<'a> {
    now: SystemTime,
    asked: &'a Asked<'a>,
    registry: Option<&'a str>,
    s: &'a RequestSummary<'a>,
    took: Duration,
}

impl Line<'_> {
    /// `time client method target status registry repository upstream cache
    /// error bytes duration`, `-` for what does not apply (e.g. `... GET
    /// /v2/library/alpine/manifests/3 200 docker.io library/alpine
    /// up=200/41.2ms cache=- err=- 1572 43.0ms`).
    fn text(self, buf: &mut Vec<u8>) {
        let Line {
            now,
            asked,
            registry,
            s,
            took,
        } = self;
        write_timestamp(buf, now, false);
        let _ = write!(buf, " {} ", asked.client);
        escape::text_field(buf, asked.method.as_bytes());
        buf.push(b' ');
        escape::text_field(buf, asked.target.as_bytes());
        let _ = write!(buf, " {} ", s.status);
        escape::text_field(buf, registry.unwrap_or("-").as_bytes());
        buf.push(b' ');
        escape::text_field(buf, s.repository.unwrap_or("-").as_bytes());
        buf.extend_from_slice(b" up=");
        match (s.upstream_status, s.upstream_time) {
            (Some(st), Some(t)) => {
                let _ = write!(buf, "{st}/{:.1}ms", t.as_secs_f64() * 1000.0);
            }
            (Some(st), None) => {
                let _ = write!(buf, "{st}");
            }
            _ => buf.push(b'-'),
        }
        let err = s.error.as_ref().map_or("-", |e| e.kind.as_str());
        let _ = writeln!(
            buf,
            " cache={} err={err} {} {:.1}ms",
            s.cache.as_str(),
            s.bytes,
            took.as_secs_f64() * 1000.0
        );
    }

    /// One JSON object: every field always present, `null` for what does
    /// not apply. Written by hand into the buffer: no allocation per field.
    fn json(self, buf: &mut Vec<u8>) {
        let Line {
            now,
            asked,
            registry,
            s,
            took,
        } = self;
        let str_or_null = |buf: &mut Vec<u8>, v: Option<&[u8]>| match v {
            Some(v) => escape::json_string(buf, v),
            None => buf.extend_from_slice(b"null"),
        };
        buf.extend_from_slice(b"{\"time\":\"");
        write_timestamp(buf, now, true);
        let _ = write!(
            buf,
            "\",\"client\":\"{}\",\"client_port\":",
            asked.client.ip
        );
        match asked.client.port {
            Some(p) => {
                let _ = write!(buf, "{p}");
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"method\":");
        escape::json_string(buf, asked.method.as_bytes());
        buf.extend_from_slice(b",\"target\":");
        escape::json_string(buf, asked.target.as_bytes());
        buf.extend_from_slice(b",\"registry\":");
        str_or_null(buf, registry.map(str::as_bytes));
        buf.extend_from_slice(b",\"repository\":");
        str_or_null(buf, s.repository.map(str::as_bytes));
        buf.extend_from_slice(b",\"user\":");
        str_or_null(buf, s.user.as_deref().map(str::as_bytes));
        let _ = write!(
            buf,
            ",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"cache\":",
            s.status,
            s.bytes,
            took.as_secs_f64() * 1000.0
        );
        let cache = s.cache.as_str();
        str_or_null(buf, (cache != "-").then_some(cache.as_bytes()));
        buf.extend_from_slice(b",\"upstream_status\":");
        match s.upstream_status {
            Some(st) => {
                let _ = write!(buf, "{st}");
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"upstream_ms\":");
        match s.upstream_time {
            Some(t) => {
                let _ = write!(buf, "{:.3}", t.as_secs_f64() * 1000.0);
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"error\":");
        str_or_null(buf, s.error.as_ref().map(|e| e.kind.as_str().as_bytes()));
        buf.extend_from_slice(b",\"user_agent\":");
        str_or_null(buf, asked.user_agent);
        buf.extend_from_slice(b"}\n");
    }
}

fn flush_to_stderr(buf: &mut Vec<u8>) {
    crate::sys::write_stderr(buf);
    buf.clear();
}

/// Writes a finished line (or lines) to stderr, unbuffered.
pub fn write_stderr(bytes: &[u8]) {
    crate::sys::write_stderr(bytes);
}

/// RFC 3339 UTC timestamp, to the second or the millisecond.
pub fn write_timestamp(out: &mut Vec<u8>, t: SystemTime, millis: bool) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if millis {
        let _ = write!(out, ".{:03}", since.subsec_millis());
    }
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = |t: Duration, millis: bool| {
            let mut out = Vec::new();
            write_timestamp(&mut out, UNIX_EPOCH + t, millis);
            String::from_utf8(out).unwrap()
        };
        let t = Duration::from_secs(1_795_323_661);
        assert_eq!(ts(t, false), "2026-11-22T05:01:01Z");
        let leap_day = Duration::from_secs(951_782_400);
        assert_eq!(ts(leap_day, false), "2000-02-29T00:00:00Z");
        assert_eq!(
            ts(t + Duration::from_micros(7_999), true),
            "2026-11-22T05:01:01.007Z"
        );
        assert_eq!(ts(leap_day, true), "2000-02-29T00:00:00.000Z");
    }

    fn hostile() -> Asked<'static> {
        Asked {
            client: ClientAddr {
                ip: "203.0.113.9".parse().unwrap(),
                port: Some(4711),
            },
            method: "GET",
            target: "/v2/x\u{2028}\"}\\/manifests/\u{2029}latest",
            user_agent: Some(
                b"evil\"agent\\\r\n2026-01-01T00:00:00Z 1.2.3.4 GET / 200\x1b[2J\xff\xfe",
            ),
        }
    }

    fn summary() -> RequestSummary<'static> {
        RequestSummary {
            route: super::super::summary::RouteKind::Manifest,
            repository: Some("library/alpine"),
            status: 200,
            bytes: 1572,
            upstream_status: Some(200),
            upstream_time: Some(Duration::from_micros(2_900)),
            cache: super::super::summary::CacheStatus::Miss,
            ..RequestSummary::default()
        }
    }

    #[test]
    fn json_lines_carry_every_field_and_escape_what_clients_sent() {
        let mut buf = Vec::new();
        let took = Duration::from_micros(3_100);
        let (asked, s, empty) = (hostile(), summary(), RequestSummary::default());
        let line = |registry, s| Line {
            now: UNIX_EPOCH,
            asked: &asked,
            registry,
            s,
            took,
        };
        line(Some("docker.io"), &s).json(&mut buf);
        line(None, &empty).json(&mut buf);
        let text = String::from_utf8(buf).expect("UTF-8 whatever the client sent");
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            !text.contains('\u{2028}') && !text.contains('\u{2029}'),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["client"], "203.0.113.9");
        assert_eq!(v["client_port"], 4711);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["target"], "/v2/x\u{2028}\"}\\/manifests/\u{2029}latest");
        assert_eq!(v["registry"], "docker.io");
        assert_eq!(v["repository"], "library/alpine");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1572);
        assert_eq!(v["duration_ms"], 3.1);
        assert_eq!(v["cache"], "miss");
        assert_eq!(v["upstream_status"], 200);
        assert_eq!(v["upstream_ms"], 2.9);
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(
            v["user_agent"],
            "evil\"agent\\\r\n2026-01-01T00:00:00Z 1.2.3.4 GET / 200\u{1b}[2J\u{fffd}\u{fffd}"
        );
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        for absent in [
            "registry",
            "repository",
            "cache",
            "upstream_status",
            "upstream_ms",
        ] {
            assert_eq!(v[absent], serde_json::Value::Null, "{absent}");
        }
    }

    #[test]
    fn text_lines_escape_what_clients_sent() {
        let mut buf = Vec::new();
        let mut asked = hostile();
        asked.client.port = None;
        let s = summary();
        let line = Line {
            now: UNIX_EPOCH,
            asked: &asked,
            registry: Some("docker.io"),
            s: &s,
            took: Duration::from_millis(3),
        };
        line.text(&mut buf);
        let line = String::from_utf8(buf).unwrap();
        assert_eq!(
            line,
            "1970-01-01T00:00:00Z 203.0.113.9 GET /v2/x\\u2028\"}\\\\/manifests/\\u2029latest 200 \
             docker.io library/alpine up=200/2.9ms cache=miss err=- 1572 3.0ms\n"
        );
    }
}
