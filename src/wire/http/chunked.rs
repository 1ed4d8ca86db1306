//! The chunked transfer coding as an incremental state machine.
//!
//! The same decoder serves two uses: decoding request bodies (the data spans
//! are handed to a callback) and relaying chunked responses verbatim, where
//! only the end of the message matters (the caller forwards the raw bytes it
//! consumed).

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    BadSize,
    LineTooLong,
    MissingCrlf,
}

impl std::fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkedError::BadSize => "invalid chunk size",
            ChunkedError::LineTooLong => "chunk line too long",
            ChunkedError::MissingCrlf => "missing CRLF after chunk data",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the digits: optional whitespace, then `;` or CR.
    SizeWs {
        value: u64,
    },
    /// A chunk extension, up to CR.
    SizeExt {
        value: u64,
    },
    /// After the size line's CR.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// Start of a trailer line (an empty one ends the message).
    TrailerStart,
    TrailerLine,
    TrailerLineLf,
    TrailerEndLf,
    Done,
}

/// Incremental decoder; feed it bytes as they arrive.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            line_len: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes as much of `input` as belongs to this message, calling
    /// `on_data` with each span of payload. Returns how many bytes were
    /// consumed; when the message ends, bytes after it are left unconsumed.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data { remaining } => {
                    let n = (input.len() - i).min(remaining.min(usize::MAX as u64) as usize);
                    on_data(&input[i..i + n]);
                    i += n;
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    continue;
                }
                _ => {}
            }
            let b = input[i];
            i += 1;
            self.state = match self.state {
                State::Size { value, digits } => match hex(b) {
                    Some(d) => {
                        if digits >= 15 {
                            return Err(ChunkedError::BadSize);
                        }
                        State::Size {
                            value: value << 4 | d as u64,
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(ChunkedError::BadSize),
                    None => {
                        self.line_len = 0;
                        self.size_rest(b, value)?
                    }
                },
                State::SizeWs { value } | State::SizeExt { value } => self.size_rest(b, value)?,
                State::SizeLf { value } => match b {
                    b'\n' if value == 0 => State::TrailerStart,
                    b'\n' => State::Data { remaining: value },
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::DataLf => match b {
                    b'\n' => State::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::TrailerStart => match b {
                    b'\r' => State::TrailerEndLf,
                    b'\n' => return Err(ChunkedError::MissingCrlf),
                    _ => {
                        self.line_len = 1;
                        State::TrailerLine
                    }
                },
                State::TrailerLine => {
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(ChunkedError::LineTooLong);
                    }
                    match b {
                        b'\r' => State::TrailerLineLf,
                        b'\n' => return Err(ChunkedError::MissingCrlf),
                        _ => State::TrailerLine,
                    }
                }
                State::TrailerLineLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::TrailerEndLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(ChunkedError::MissingCrlf),
                },
                State::Data { .. } | State::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }

    /// One byte of the size line after its digits. Lines end in CRLF, as
    /// heads do (see `head_end`), and only whitespace or `;` may follow the
    /// digits: `0x5` or `5 x` is no size, not a size and an extension.
    fn size_rest(&mut self, b: u8, value: u64) -> Result<State, ChunkedError> {
        self.line_len += 1;
        if self.line_len > MAX_LINE {
            return Err(ChunkedError::LineTooLong);
        }
        let in_ext = matches!(self.state, State::SizeExt { .. });
        Ok(match b {
            b'\r' => State::SizeLf { value },
            b'\n' => return Err(ChunkedError::MissingCrlf),
            _ if in_ext => State::SizeExt { value },
            b';' => State::SizeExt { value },
            b' ' | b'\t' => State::SizeWs { value },
            _ => return Err(ChunkedError::BadSize),
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(parts: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for p in parts {
            consumed += d.feed(p, |s| out.extend_from_slice(s))?;
        }
        Ok((out, consumed, d.is_done()))
    }

    #[test]
    fn decodes_chunks_with_extensions_and_trailers() {
        let msg = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: y\r\n\r\nNEXT";
        let (out, consumed, done) = decode_all(&[msg]).unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(&msg[consumed..], b"NEXT");
    }

    #[test]
    fn decodes_when_split_at_every_byte() {
        let msg = b"A\r\n0123456789\r\n0\r\n\r\n";
        let parts: Vec<&[u8]> = msg.chunks(1).collect();
        let (out, consumed, done) = decode_all(&parts).unwrap();
        assert_eq!(out, b"0123456789");
        assert!(done);
        assert_eq!(consumed, msg.len());
    }

    #[test]
    fn rejects_bad_sizes_and_missing_crlf() {
        assert_eq!(decode_all(&[b"zz\r\n"]).unwrap_err(), ChunkedError::BadSize);
        assert_eq!(
            decode_all(&[b"fffffffffffffffff\r\n"]).unwrap_err(),
            ChunkedError::BadSize
        );
        assert_eq!(
            decode_all(&[b"1\r\nab"]).unwrap_err(),
            ChunkedError::MissingCrlf
        );
        let long = [b"1;".as_slice(), &[b'x'; 5000]].concat();
        assert_eq!(decode_all(&[&long]).unwrap_err(), ChunkedError::LineTooLong);
    }

    #[test]
    fn lines_end_in_crlf_and_only_ws_or_a_semicolon_follows_the_size() {
        for bad in [
            &b"0x5\r\nabcde\r\n0\r\n\r\n"[..],
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5-1\r\nhello\r\n0\r\n\r\n",
        ] {
            let e = decode_all(&[bad]).unwrap_err();
            assert_eq!(e, ChunkedError::BadSize, "{}", String::from_utf8_lossy(bad));
        }
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;e=1\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX-T: y\n\r\n",
        ] {
            let e = decode_all(&[bad]).unwrap_err();
            assert_eq!(
                e,
                ChunkedError::MissingCrlf,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let (out, _, done) = decode_all(&[b"5 \t;e=\"a b\"\r\nhello\r\n0\r\n\r\n"]).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hello"[..], true));
    }

    #[test]
    fn incomplete_message_is_not_done() {
        let (_, _, done) = decode_all(&[b"5\r\nhel"]).unwrap();
        assert!(!done);
    }
}
