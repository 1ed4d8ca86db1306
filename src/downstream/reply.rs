//! [`Reply`]: the only writer of response heads and small bodies, and the
//! one place that decides whether the connection stays open after them.
//!
//! A head is built in the connection's reused output buffer (`status`,
//! `header`, then one of the `end_*` calls, which write the framing and
//! `Connection: close` when the connection ends after this response), and
//! goes out with `send`, together with a small body when there is one.

use std::time::Duration;

use monoio::io::AsyncWriteRent;

use super::Outcome;
use crate::relay::io::{write_client, Pace};
use crate::wire::http::response::write_content_length;
use crate::wire::http::{write_header, write_status, ClientFraming, RespFraming};
use crate::wire::oci::ErrorReply;

/// How long a complete small reply (an error, a token, the landing page,
/// `/metrics`) may take to be written, unless the connection sets its
/// `client_write_secs` (`Reply::write_limit`): the default of that. A
/// whole-reply bound rather than a measured pace (`relay::io::Pace`)
/// because the writer here need not be a socket; at the default minimum
/// rate (4 KiB/s) the largest of them is out in well under a minute.
pub const SMALL_REPLY_LIMIT: Duration = Duration::from_secs(120);

/// The response to one request, being written.
pub struct Reply<'b> {
    out: &'b mut Vec<u8>,
    head_only: bool,
    /// The connection closes after this response: the client asked for it,
    /// a request body was left unread, or the body is close-delimited.
    close: bool,
    /// The client's HTTP/1.x minor version (its framing needs).
    minor: u8,
    /// How long `small` may take to write a whole reply.
    write_limit: Duration,
}

impl<'b> Reply<'b> {
    pub fn new(out: &'b mut Vec<u8>, head_only: bool, close: bool, minor: u8) -> Self {
        Reply {
            out,
            head_only,
            close,
            minor,
            write_limit: SMALL_REPLY_LIMIT,
        }
    }

    /// The bound on writing a whole small reply (`client_write_secs`).
    pub fn write_limit(mut self, limit: Duration) -> Self {
        self.write_limit = limit;
        self
    }

    /// Gives the output buffer back (to start another reply on it).
    pub fn into_out(self) -> &'b mut Vec<u8> {
        self.out
    }

    /// A HEAD request: heads only, whatever the status.
    pub fn head_only(&self) -> bool {
        self.head_only
    }

    /// Whether the connection closes after this response.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// The connection ends after this response (a request body that cannot
    /// be skipped, a failed body read).
    pub fn must_close(&mut self) {
        self.close = true;
    }

    /// Starts a head: the status line (anything written before is dropped).
    pub fn status(&mut self, status: u16) {
        self.out.clear();
        write_status(self.out, status);
    }

    pub fn header(&mut self, name: &str, value: &[u8]) {
        write_header(self.out, name, value);
    }

    /// The head being written, for header values composed in place (a
    /// rewritten challenge) without an intermediate allocation.
    pub fn head_mut(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// How the client receives a body the upstream framed as `framing`.
    pub fn client_framing(&self, framing: RespFraming) -> ClientFraming {
        ClientFraming::for_client(framing, self.minor)
    }

    /// Ends a head whose body is relayed from an upstream framed as
    /// `framing`: the client's framing headers, and `Connection: close` when
    /// the body is close-delimited for this client.
    pub fn end_relayed(&mut self, framing: RespFraming) -> ClientFraming {
        let to_client = self.client_framing(framing);
        self.close |= to_client.close_delimited(framing);
        to_client.write_headers(framing, self.out);
        self.finish_head();
        to_client
    }

    /// Ends a head with a `Content-Length` of `len` (a body from memory, or
    /// a HEAD answered with a measured length).
    pub fn end_length(&mut self, len: u64) {
        write_content_length(self.out, len);
        self.finish_head();
    }

    fn finish_head(&mut self) {
        if self.close {
            self.out.extend_from_slice(b"Connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
    }

    /// Appends body bytes behind the head (small bodies only: the head and
    /// body then leave in one write). Nothing for a HEAD request.
    pub fn body(&mut self, bytes: &[u8]) {
        if !self.head_only {
            self.out.extend_from_slice(bytes);
        }
    }

    /// Appends relayed bytes that were gathered behind the head (the caller
    /// already knows the request is not a HEAD).
    pub fn append_relayed(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Sends what is written (a head, maybe a small body) within `limit`;
    /// false if the client is gone.
    pub async fn send<S: AsyncWriteRent>(&mut self, io: &mut S, limit: Duration) -> bool {
        match write_client(io, std::mem::take(self.out), &Pace::fixed(limit)).await {
            Ok(b) => {
                *self.out = b;
                true
            }
            Err(_) => false,
        }
    }

    /// What the connection does once this response is out.
    pub fn outcome(&self) -> Outcome {
        if self.close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        }
    }

    /// Writes a complete response with a small body from memory.
    pub async fn small<S: AsyncWriteRent>(
        &mut self,
        io: &mut S,
        status: u16,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Outcome {
        self.status(status);
        for (n, v) in headers {
            self.header(n, v);
        }
        self.end_length(body.len() as u64);
        self.body(body);
        // Bounded: a small reply usually fits the socket buffer, but a
        // client that reads nothing (a landing page or /metrics is tens of
        // KiB) would otherwise hold this connection and its task forever.
        let buf = std::mem::take(self.out);
        match write_client(io, buf, &Pace::fixed(self.write_limit)).await {
            Ok(buf) => {
                *self.out = buf;
                self.outcome()
            }
            // The buffer went with the cut write; the connection ends.
            Err(_) => Outcome::Close,
        }
    }

    /// Writes an OCI JSON error response.
    pub async fn error<S: AsyncWriteRent>(&mut self, io: &mut S, e: &ErrorReply) -> Outcome {
        let allow: &[(&str, &[u8])] = if e.status == 405 {
            &[("Allow", b"GET, HEAD")]
        } else {
            &[]
        };
        self.error_with(io, e, allow).await
    }

    /// Writes an OCI JSON error response that asks the client to wait
    /// `secs` seconds before trying again (a 429 or 503).
    pub async fn error_retry_after<S: AsyncWriteRent>(
        &mut self,
        io: &mut S,
        e: &ErrorReply,
        secs: u64,
    ) -> Outcome {
        let secs = secs.to_string();
        self.error_with(io, e, &[("Retry-After", secs.as_bytes())])
            .await
    }

    async fn error_with<S: AsyncWriteRent>(
        &mut self,
        io: &mut S,
        e: &ErrorReply,
        extra: &[(&str, &[u8])],
    ) -> Outcome {
        let body = e.body();
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("Content-Type", b"application/json"),
            ("Docker-Distribution-Api-Version", b"registry/2.0"),
        ];
        headers.extend_from_slice(extra);
        self.small(io, e.status, &headers, &body).await
    }
}
