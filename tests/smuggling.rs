//! Request smuggling and framing (issue 12, hardening item 4): every head
//! or body a front proxy and ocirelay could frame two ways is refused with
//! a JSON 400 and the connection closed, nothing reaches any upstream host
//! (the double's request log stays empty), and a request pipelined behind
//! the refused one is neither answered nor forwarded.
//!
//! Each case is sent twice: alone, and with a request that would go
//! upstream pipelined behind it in the same write. `CASES.len() * 2`
//! exchanges in all (see `every_case_is_refused_alone_and_pipelined`).
//!
//! Loopback only; every read is bounded by `WAIT`.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

/// What a pipelined request behind a refused one would ask: a manifest,
/// which goes upstream if it is ever read.
const BEHIND: &[u8] =
    b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\n\r\n";

/// (what the case tries, the bytes). Token POSTs go to the double's auth
/// host when accepted; registry GETs to its registry host.
const CASES: &[(&str, &[u8])] = &[
    // ---- body framing ----
    (
        "CL then TE",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE then CL",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    ),
    (
        "two different Content-Lengths",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    ),
    (
        "Content-Length list",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nContent-Length: 5, 5\r\n\r\nabcde",
    ),
    (
        "signed Content-Length",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nContent-Length: +5\r\n\r\nabcde",
    ),
    (
        "TE chunked, identity",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE identity",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding: identity\r\n\r\n",
    ),
    (
        "unknown TE",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE chunked twice",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunked in HTTP/1.0",
        b"POST /token HTTP/1.0\r\nHost: mirror.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "oversized chunk size",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n",
    ),
    (
        "chunk size that is not hex",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n",
    ),
    // ---- line endings and header syntax ----
    (
        "bare LF throughout",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\nHost: mirror.test\n\n",
    ),
    (
        "bare LF on one line",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\nX-A: b\r\n\r\n",
    ),
    (
        "bare LF ending the head",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\n\n",
    ),
    (
        "bare-LF token POST with a body",
        b"POST /token HTTP/1.1\nHost: mirror.test\nContent-Length: 9\n\nservice=x",
    ),
    (
        "bare CR in a header",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\nX-A: a\rb\r\n\r\n",
    ),
    (
        "obs-fold",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\nX-A: a\r\n  b\r\n\r\n",
    ),
    (
        "obs-fold on Transfer-Encoding",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "NUL in a header value",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\nX-A: a\x00b\r\n\r\n",
    ),
    (
        "NUL in a header name",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\nX\x00A: b\r\n\r\n",
    ),
    (
        "control byte in a header value",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\nX-A: a\x01b\r\n\r\n",
    ),
    (
        "DEL in a header value",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\nX-A: a\x7fb\r\n\r\n",
    ),
    (
        "space before the colon",
        b"POST /token HTTP/1.1\r\nHost: mirror.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    // ---- request targets and Host ----
    (
        "absolute-form naming another host",
        b"GET http://registry-1.docker.io/v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\n\r\n",
    ),
    (
        "absolute-form with userinfo",
        b"GET http://u@mirror.test/v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\n\r\n",
    ),
    (
        "absolute-form without a Host",
        b"GET http://mirror.test/v2/library/alpine/manifests/latest HTTP/1.0\r\n\r\n",
    ),
    (
        "authority-form (CONNECT)",
        b"CONNECT registry-1.docker.io:443 HTTP/1.1\r\nHost: registry-1.docker.io:443\r\n\r\n",
    ),
    (
        "asterisk-form outside OPTIONS",
        b"GET * HTTP/1.1\r\nHost: mirror.test\r\n\r\n",
    ),
    (
        "HTTP/1.1 without Host",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\n\r\n",
    ),
    (
        "two Hosts",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\nHost: other.test\r\n\r\n",
    ),
    (
        "two equal Hosts",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test\r\nHost: mirror.test\r\n\r\n",
    ),
    (
        "Host with a path",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: mirror.test/x\r\n\r\n",
    ),
    (
        "Host with userinfo",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: u:p@mirror.test\r\n\r\n",
    ),
    (
        "Host with an IPv6 zone id",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: [fe80::1%25lo]\r\n\r\n",
    ),
    (
        "empty Host",
        b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: \r\n\r\n",
    ),
];

/// Sends `bytes` and asserts one JSON 400, then a close.
fn refused(relay: &Relay, what: &str, bytes: &[u8]) {
    eprintln!("case: {what}");
    let (got, end) = Raw::one_shot(relay.http, bytes, WAIT);
    assert!(!got.is_empty(), "{what}: no answer");
    let r = assert_error_then_close(&got, end, 400);
    assert!(
        r.text().contains("\"errors\""),
        "{what}: not a registry JSON error: {}",
        r.text()
    );
}

#[test]
fn every_case_is_refused_alone_and_pipelined() {
    let hub = hub();
    let mut relay = Relay::start(&hub);
    for (what, bytes) in CASES {
        refused(&relay, what, bytes);
        // The pipelined request is never answered (one response, then the
        // close: `assert_error_then_close` checks nothing follows).
        let pipelined = [*bytes, BEHIND].concat();
        refused(&relay, &format!("{what}, pipelined"), &pipelined);
        assert!(
            hub.log().is_empty(),
            "{what}: forwarded upstream: {:?}",
            hub.log().entries()
        );
    }
    assert!(relay.alive());
    eprintln!(
        "smuggling: {} cases, {} exchanges",
        CASES.len(),
        CASES.len() * 2
    );
}

/// The control: the same bytes, well framed, are answered in order and go
/// upstream; so the refusals above are the cases' doing, not the harness's.
#[test]
fn well_framed_pipelined_requests_are_all_answered() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut raw = Raw::connect(relay.http);
    // Empty lines before a request line are allowed (RFC 9112 2.2).
    raw.send(
        &[
            b"\r\nGET /healthz HTTP/1.1\r\nHost: mirror.test\r\n\r\n",
            BEHIND,
        ]
        .concat(),
    );
    assert_eq!(raw.read_response(false).unwrap().status, 200);
    let second = raw.read_response(false).unwrap();
    assert_eq!(second.status, 401, "a manifest without a token");
    assert!(
        !hub.log().is_empty(),
        "the well-framed manifest GET went upstream"
    );
}

/// An absolute-form target whose authority is the Host is served as its
/// path (RFC 9112 3.2.2 asks servers to accept the form).
#[test]
fn absolute_form_naming_the_host_is_served_as_its_path() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut raw = Raw::connect(relay.http);
    raw.send(b"GET http://Mirror.Test/healthz HTTP/1.1\r\nHost: mirror.test\r\n\r\n");
    assert_eq!(raw.read_response(false).unwrap().status, 200);
}
