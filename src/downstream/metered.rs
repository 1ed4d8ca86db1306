//! The client stream as the connection loop holds it: counts the bytes
//! written and notes the status line of each response, so that handlers
//! report neither (the request summary reads them at the end).

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

use crate::relay::ClientSink;
use crate::tls::stream::ServerTls;

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

    fn plain_tcp(&mut self) -> Option<&monoio::net::TcpStream> {
        self.inner.plain_tcp()
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
            let data = crate::sys::io_buf_bytes(&buf, 16);
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
    fn the_status_is_read_from_the_status_line_after_any_100() {
        let mut m = Metered::new(());
        m.begin();
        m.note(b"HTTP/1.1 100 Continue\r\n\r\n", 25);
        m.note(b"HTTP/1.1 404 Not Found\r\n", 24);
        m.note(b"body", 4);
        assert_eq!(m.served(), (404, 53));
    }
}
