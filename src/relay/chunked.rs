//! Chunked and close-delimited bodies: decoded (for the digest and for an
//! HTTP/1.0 client) or passed through as they came.

use std::io;

use monoio::io::AsyncWriteRent;

use super::io::{read_upstream, write_buf, write_client, Pace};
use super::tap::BodyTap;
use super::{RelayError, Relayed};
use crate::upstream::Conn;
use crate::wire::http::ChunkedDecoder;

pub(super) async fn relay_chunked<S: AsyncWriteRent, T: BodyTap>(
    conn: &mut Conn,
    client: &mut S,
    pace: &Pace,
    tap: &mut T,
    decode: bool,
    buf: &mut Vec<u8>,
) -> Result<Relayed, RelayError> {
    let mut dec = ChunkedDecoder::new();
    let mut bytes = 0u64;
    // Decoded payload for HTTP/1.0 clients (rare: a separate buffer is fine).
    let mut decoded = Vec::new();
    buf.clear();
    buf.extend_from_slice(conn.buffered());
    let n = buf.len();
    conn.consume(n);
    loop {
        if !buf.is_empty() {
            let consumed = dec
                .feed(buf, |data| {
                    bytes += data.len() as u64;
                    tap.data(data);
                    if decode {
                        decoded.extend_from_slice(data);
                    }
                })
                .map_err(RelayError::Framing)?;
            let extra = buf.len() - consumed;
            buf.truncate(consumed);
            if dec.is_done() {
                tap.end()?;
            }
            if decode {
                decoded = write_client(client, decoded, pace).await?;
                decoded.clear();
            } else {
                write_buf(client, buf, pace).await?;
            }
            if dec.is_done() {
                // Bytes after the end of the body mean the framing is off:
                // do not reuse this connection.
                return Ok(Relayed {
                    bytes,
                    reusable: extra == 0,
                });
            }
        }
        tap.flush().await;
        buf.clear();
        if read_upstream(conn, buf).await? == 0 {
            return Err(RelayError::Upstream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed inside a chunked body",
            )));
        }
    }
}
