//! The client stream as the connection loop holds it: counts the bytes
//! written and notes the status line of each response, so that handlers
//! report neither (the request summary reads them at the end). A response
//! of a client under a byte rate is paced here, on every path at once.

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

use crate::gate::limits::Pacer;
use crate::relay::ClientSink;
use crate::tls::stream::ServerTls;

/// A client stream that counts the bytes written to it and notes the status
/// of the response it carries, so that handlers need not report either.
pub struct Metered<S> {
    inner: S,
    bytes: u64,
    status: u16,
    sniff: bool,
    /// The byte rate this response is written at, if one applies.
    pace: Option<Pacer>,
}

impl<S> Metered<S> {
    pub fn new(inner: S) -> Metered<S> {
        Metered {
            inner,
            bytes: 0,
            status: 0,
            sniff: false,
            pace: None,
        }
    }

    /// Paces the response being written (until the next `pace`).
    pub fn pace(&mut self, pacer: Option<Pacer>) {
        self.pace = pacer;
    }

    /// Whether the response's writes had to wait for a byte rate.
    pub fn was_shaped(&self) -> bool {
        self.pace.as_ref().is_some_and(Pacer::waited)
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

/// A paced response takes the ordinary write path: the direct ones (the
/// in-place TLS relay, sendfile, sealed cache reads) send whole bodies past
/// `write`, where no pacer sees them.
impl<S: ClientSink> ClientSink for Metered<S> {
    fn tls(&mut self) -> Option<&mut ServerTls> {
        match self.pace {
            Some(_) => None,
            None => self.inner.tls(),
        }
    }

    fn plain_tcp(&mut self) -> Option<&monoio::net::TcpStream> {
        match self.pace {
            Some(_) => None,
            None => self.inner.plain_tcp(),
        }
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.raw_fd()
    }

    fn shaped(&self) -> bool {
        self.pace.is_some()
    }

    fn sent_directly(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    fn go_idle(&mut self) {
        self.inner.go_idle();
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
        if let Some(pace) = &mut self.pace {
            // Part of the buffer, once the rate allows it (a short write:
            // `write_all` comes back for the rest).
            let len = buf.bytes_init();
            let n = pace.admit(len).await;
            if n < len {
                let (res, part) = self.inner.write(buf.slice(0..n)).await;
                let buf = part.into_inner();
                if let Ok(n) = res {
                    let data = crate::sys::io_buf_bytes(&buf, 16);
                    self.note(data, n);
                }
                return (res, buf);
            }
        }
        let (res, buf) = self.inner.write(buf).await;
        if let Ok(n) = res {
            let data = crate::sys::io_buf_bytes(&buf, 16);
            self.note(data, n);
        }
        (res, buf)
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.inner.writev(buf).await;
        if let Ok(n) = res {
            self.bytes += n as u64;
            // Nothing writes bodies as vectors today; should something,
            // its bytes are paid for after the fact.
            if let Some(pace) = &mut self.pace {
                pace.paid(n).await;
            }
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
    fn the_status_is_read_from_the_status_line_after_any_100() {
        let mut m = Metered::new(());
        m.begin();
        m.note(b"HTTP/1.1 100 Continue\r\n\r\n", 25);
        m.note(b"HTTP/1.1 404 Not Found\r\n", 24);
        m.note(b"body", 4);
        assert_eq!(m.served(), (404, 53));
    }
}
