//! Reading and dropping a small response body (a redirect's, a `/v2/`
//! ping's) so that its connection can serve another request. One helper for
//! every such body; a large or close-delimited one is not worth reading:
//! its connection is dropped instead.

use super::pool::Conn;
use crate::wire::http::{ChunkedDecoder, RespFraming};

impl Conn {
    /// Consumes a response body framed as `framing` (the head already
    /// consumed), reading at most `max` bytes. True when the connection
    /// ended exactly at the end of the body and may be reused.
    pub async fn drain(&mut self, framing: RespFraming, max: u64) -> bool {
        match framing {
            RespFraming::None => true,
            RespFraming::Close => false,
            RespFraming::Length(n) if n > max => false,
            RespFraming::Length(n) => {
                let mut left = n;
                loop {
                    let take = (self.buffered().len() as u64).min(left) as usize;
                    self.consume(take);
                    left -= take as u64;
                    if left == 0 {
                        return self.buffered().is_empty();
                    }
                    if !matches!(self.fill().await, Ok(n) if n > 0) {
                        return false;
                    }
                }
            }
            RespFraming::Chunked => {
                let mut dec = ChunkedDecoder::new();
                let mut seen = 0u64;
                loop {
                    let buffered = self.buffered();
                    let Ok(used) = dec.feed(buffered, |d| seen += d.len() as u64) else {
                        return false;
                    };
                    self.consume(used);
                    if dec.is_done() {
                        return self.buffered().is_empty();
                    }
                    if seen > max || !matches!(self.fill().await, Ok(n) if n > 0) {
                        return false;
                    }
                }
            }
        }
    }
}
