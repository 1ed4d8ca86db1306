//! The access log: one line per request, buffered per worker and written to
//! stderr in batches, so the data path takes no lock and makes no syscall
//! per request.
//!
//! `2026-11-22T08:40:00Z 10.0.0.7:51234 GET /v2/library/alpine/manifests/latest 200 docker.io library/alpine up=200/2.9ms cache=- err=- 1572 3.1ms`

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::summary::RequestSummary;

/// Lines are written out once this much is buffered (or every second).
const FLUSH_AT: usize = 32 * 1024;

/// A worker's buffered access log.
#[derive(Default)]
pub struct AccessLog {
    buf: RefCell<Vec<u8>>,
}

impl AccessLog {
    /// Records one finished request: `time client method target status
    /// registry repository upstream cache error bytes duration`, `-` for
    /// what does not apply (e.g. `... GET /v2/library/alpine/manifests/3
    /// 200 docker.io library/alpine up=200/41.2ms cache=- err=- 1572 43.0ms`).
    pub fn record(
        &self,
        peer: SocketAddr,
        method: &str,
        target: &str,
        s: &RequestSummary<'_>,
        took: Duration,
    ) {
        let mut buf = self.buf.borrow_mut();
        write_timestamp(&mut buf, SystemTime::now());
        let ms = took.as_secs_f64() * 1000.0;
        let _ = write!(
            buf,
            " {peer} {method} {target} {} {} {} up=",
            s.status,
            s.registry.unwrap_or("-"),
            s.repository.unwrap_or("-"),
        );
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
            " cache={} err={err} {} {ms:.1}ms",
            s.cache.as_str(),
            s.bytes
        );
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

fn flush_to_stderr(buf: &mut Vec<u8>) {
    crate::sys::write_stderr(buf);
    buf.clear();
}

/// Writes a finished line (or lines) to stderr, unbuffered.
pub fn write_stderr(bytes: &[u8]) {
    crate::sys::write_stderr(bytes);
}

/// RFC 3339 UTC timestamp with second precision.
fn write_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
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
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut out = Vec::new();
        write_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(1_795_323_661));
        assert_eq!(String::from_utf8(out).unwrap(), "2026-11-22T05:01:01Z");
        let mut out = Vec::new();
        write_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day
        assert_eq!(String::from_utf8(out).unwrap(), "2000-02-29T00:00:00Z");
    }
}
