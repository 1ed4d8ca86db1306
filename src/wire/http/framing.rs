//! Response body framing: how an upstream delimited a body, and how the
//! client receives it (the same, re-chunked for HTTP/1.1, or de-chunked for
//! HTTP/1.0).

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespFraming {
    /// No body (HEAD, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// How the client receives a body, relative to how the upstream sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// Byte for byte (Content-Length, or chunked passed through).
    Same,
    /// Close-delimited upstream body, chunked to an HTTP/1.1 client.
    Rechunk,
    /// Chunked upstream body, decoded for an HTTP/1.0 client (which then
    /// sees a close-delimited body).
    Dechunk,
}

impl ClientFraming {
    /// The framing an HTTP/1.`minor` client needs for an upstream `framing`.
    pub fn for_client(framing: RespFraming, minor: u8) -> ClientFraming {
        match (framing, minor) {
            (RespFraming::Close, 1) => ClientFraming::Rechunk,
            (RespFraming::Chunked, 0) => ClientFraming::Dechunk,
            _ => ClientFraming::Same,
        }
    }

    /// Whether the client connection must close to end the body.
    pub fn close_delimited(self, framing: RespFraming) -> bool {
        self == ClientFraming::Dechunk
            || (framing == RespFraming::Close && self != ClientFraming::Rechunk)
    }

    /// Writes the framing header lines for the client's response head.
    pub fn write_headers(self, framing: RespFraming, out: &mut Vec<u8>) {
        match (framing, self) {
            (RespFraming::Length(n), _) => super::response::write_content_length(out, n),
            (RespFraming::Chunked, ClientFraming::Same)
            | (RespFraming::Close, ClientFraming::Rechunk) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
            }
            _ => {}
        }
    }
}
