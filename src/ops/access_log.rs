//! The access log: one line per request, buffered per worker and written to
//! stderr in batches, so the data path takes no lock and makes no syscall
//! per request.
//!
//! `2026-11-22T08:40:00Z 10.0.0.7:51234 GET /v2/library/alpine/manifests/latest 200 1572 3.1ms`

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

use crate::relay::ClientSink;
use crate::tls::stream::ServerTls;

/// Lines are written out once this much is buffered (or every second).
const FLUSH_AT: usize = 32 * 1024;

/// A worker's buffered access log.
#[derive(Default)]
pub struct AccessLog {
    buf: RefCell<Vec<u8>>,
}

impl AccessLog {
    /// Records one request.
    pub fn record(
        &self,
        peer: SocketAddr,
        method: &str,
        target: &str,
        status: u16,
        bytes: u64,
        took: Duration,
    ) {
        let mut buf = self.buf.borrow_mut();
        write_timestamp(&mut buf, SystemTime::now());
        let ms = took.as_secs_f64() * 1000.0;
        let _ = writeln!(buf, " {peer} {method} {target} {status} {bytes} {ms:.1}ms");
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
    let mut rest: &[u8] = buf;
    while !rest.is_empty() {
        // SAFETY: writes `rest.len()` initialised bytes from a live slice to
        // fd 2; no memory is handed to the kernel beyond this call.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            break; // stderr is gone or broken: drop the lines, never block serving
        }
        rest = &rest[n as usize..];
    }
    buf.clear();
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

/// A client stream that counts the bytes written to it and notes the status
/// of the response it carries, so that handlers need not report either.
pub struct Metered<S> {
    inner: S,
    bytes: u64,
    status: u16,
    sniff: bool,
}

impl<S> Metered<S> {
    pub fn new(inner: S) -> Metered<S> {
        Metered {
            inner,
            bytes: 0,
            status: 0,
            sniff: false,
        }
    }

    /// Starts counting a new response.
    pub fn begin(&mut self) {
        self.bytes = 0;
        self.status = 0;
        self.sniff = true;
    }

    /// Status and bytes of the response since [`Metered::begin`].
    pub fn served(&self) -> (u16, u64) {
        (self.status, self.bytes)
    }

    fn note(&mut self, data: &[u8], written: usize) {
        if self.sniff && data.len() >= 12 && data.starts_with(b"HTTP/1.") {
            let code = std::str::from_utf8(&data[9..12])
                .ok()
                .and_then(|c| c.parse().ok());
            if let Some(code) = code {
                self.status = code;
                // An interim 100 Continue is followed by the real status.
                self.sniff = code == 100;
            }
        }
        self.bytes += written as u64;
    }
}

impl<S: ClientSink> ClientSink for Metered<S> {
    fn tls(&mut self) -> Option<&mut ServerTls> {
        self.inner.tls()
    }

    fn sent_directly(&mut self, bytes: u64) {
        self.bytes += bytes;
    }
}

impl<S: AsyncReadRent> AsyncReadRent for Metered<S> {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.inner.read(buf).await
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.inner.readv(buf).await
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for Metered<S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.inner.write(buf).await;
        if let Ok(n) = res {
            // SAFETY: `read_ptr` is valid for `bytes_init` bytes (IoBuf contract).
            let data =
                unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init().min(16)) };
            self.note(data, n);
        }
        (res, buf)
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.inner.writev(buf).await;
        if let Ok(n) = res {
            self.bytes += n as u64;
        }
        (res, buf)
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().await
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }
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

    #[test]
    fn the_status_is_read_from_the_status_line_after_any_100() {
        let mut m = Metered::new(());
        m.begin();
        m.note(b"HTTP/1.1 100 Continue\r\n\r\n", 25);
        m.note(b"HTTP/1.1 404 Not Found\r\n", 24);
        m.note(b"body", 4);
        assert_eq!(m.served(), (404, 53));
    }
}
