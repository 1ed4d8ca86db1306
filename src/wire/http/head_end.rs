//! Where a head ends: the one framing rule for request and response heads.
//!
//! Lines end in CRLF and nothing else. httparse on its own also takes a bare
//! LF as a line end (RFC 9112 2.2 lets a recipient do so), and a search for
//! CRLFCRLF beside a parser that accepts LFLF frames the same bytes two ways:
//! a bare-LF head waited for a CRLFCRLF that never came, and in a pipelined
//! packet the parser's head ended before the searcher's, so the bytes in
//! between (the next request, or a body) were read as the wrong thing. So
//! the scanner that finds the end is the one that refuses a bare LF (RFC 9112
//! 2.2 also allows that): a head it returns has CRLF line ends only, and
//! httparse's end and this one are the same byte (the parse checks it).

/// A line ended in LF without CR before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BareLf;

/// Finds the end of one head as its bytes arrive, scanning each byte once.
/// One scanner per head: after a head is consumed, start a new one.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadScanner {
    /// Bytes already scanned.
    pos: usize,
    /// Where the current line starts.
    line_start: usize,
    /// Whether a non-empty line (the start line) was seen: empty lines
    /// before it are skipped (RFC 9112 2.2), as httparse does.
    started: bool,
}

impl HeadScanner {
    pub fn new() -> HeadScanner {
        HeadScanner::default()
    }

    /// Scans `buf` (the same buffer as before, maybe longer) from where the
    /// last call stopped. `Ok(Some(n))`: the head is `buf[..n]`, the empty
    /// line included; `Ok(None)`: not complete yet.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, BareLf> {
        while let Some(i) = memchr::memchr(b'\n', &buf[self.pos..]) {
            let lf = self.pos + i;
            self.pos = lf + 1;
            if lf == 0 || buf[lf - 1] != b'\r' {
                return Err(BareLf);
            }
            let empty = lf - 1 == self.line_start;
            self.line_start = lf + 1;
            if empty && self.started {
                return Ok(Some(lf + 1));
            }
            self.started |= !empty;
        }
        self.pos = buf.len();
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(buf: &[u8]) -> Result<Option<usize>, BareLf> {
        HeadScanner::new().scan(buf)
    }

    #[test]
    fn the_head_ends_at_the_first_empty_crlf_line() {
        assert_eq!(
            whole(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"),
            Ok(Some(27))
        );
        assert_eq!(whole(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(whole(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), Ok(None));
    }

    #[test]
    fn leading_empty_lines_are_not_an_end() {
        assert_eq!(whole(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Ok(Some(22)));
        assert_eq!(whole(b"\r\n"), Ok(None));
    }

    #[test]
    fn a_bare_lf_anywhere_in_the_head_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\n",
            b"\nGET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(whole(bad), Err(BareLf), "{}", String::from_utf8_lossy(bad));
        }
        // A bare LF in a body behind the head is the body's business.
        assert_eq!(whole(b"POST / HTTP/1.1\r\n\r\na\nb"), Ok(Some(19)));
    }

    #[test]
    fn bytes_arriving_one_at_a_time_give_the_same_answers() {
        for raw in [
            &b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nrest"[..],
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
        ] {
            let mut s = HeadScanner::new();
            let mut got = Ok(None);
            for n in 1..=raw.len() {
                got = s.scan(&raw[..n]);
                if got != Ok(None) {
                    break;
                }
            }
            assert_eq!(got, whole(raw), "{}", String::from_utf8_lossy(raw));
        }
    }
}
