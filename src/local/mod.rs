//! Requests ocirelay answers itself: the landing page, `/healthz`,
//! `/readyz`, `/metrics` and the ACME HTTP-01 answers.

use std::time::SystemTime;

use monoio::io::AsyncWriteRent;

use crate::downstream::{ClientCtx, Outcome, Reply};
use crate::ops::health::{readiness, Certificates, Readiness};
use crate::wire::http::RequestHead;
use crate::wire::oci::{ErrorCode, ErrorReply};
use crate::worker::Worker;

/// `GET /`: the page that tells users how to point their clients here.
pub async fn landing<S: AsyncWriteRent>(
    w: &Worker,
    req: &RequestHead<'_>,
    cx: &ClientCtx,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Outcome {
    let page = crate::landing::render(w, req, cx);
    reply
        .small(
            client,
            200,
            &[
                ("Content-Type", b"text/html; charset=utf-8"),
                ("Cache-Control", b"no-cache"),
                ("Vary", b"Accept-Language"),
            ],
            page.as_bytes(),
        )
        .await
}

/// `GET /healthz`: the process serves requests (liveness).
pub async fn health<S: AsyncWriteRent>(client: &mut S, reply: &mut Reply<'_>) -> Outcome {
    reply
        .small(client, 200, &[("Content-Type", b"text/plain")], b"ok\n")
        .await
}

/// `GET /.well-known/acme-challenge/<token>`: the key authorization while
/// the ACME thread waits for the CA to validate that token (RFC 8555 8.3);
/// 404 otherwise.
pub async fn acme_challenge<S: AsyncWriteRent>(
    w: &Worker,
    token: &str,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Outcome {
    match w.acme.as_ref().and_then(|a| a.http01.answer(token)) {
        Some(key_authorization) => {
            reply
                .small(
                    client,
                    200,
                    &[("Content-Type", b"application/octet-stream")],
                    key_authorization.as_bytes(),
                )
                .await
        }
        None => {
            let e = ErrorReply::new(
                404,
                ErrorCode::Unknown,
                "no ACME challenge pending for this token",
            );
            reply.error(client, &e).await
        }
    }
}

/// `GET /readyz`: 200 when every readiness check passes, else 503; one
/// line per check either way (see `ops::health::readiness`). State reads
/// only: no I/O of its own.
pub async fn ready<S: AsyncWriteRent>(
    w: &Worker,
    query: Option<&str>,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Outcome {
    let r = readiness_now(w).excluding(query);
    let status = if r.ready() { 200 } else { 503 };
    let headers: &[(&str, &[u8])] = &[
        ("Content-Type", b"text/plain; charset=utf-8"),
        ("Cache-Control", b"no-store"),
    ];
    reply
        .small(client, status, headers, r.text().as_bytes())
        .await
}

/// `GET /metrics`: every worker's counters, summed, in the Prometheus text
/// format.
pub async fn metrics<S: AsyncWriteRent>(
    w: &Worker,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Outcome {
    let checks = readiness_now(w).summary();
    let text = w.metrics.shared().render(&checks);
    let headers: &[(&str, &[u8])] = &[
        ("Content-Type", b"text/plain; version=0.0.4; charset=utf-8"),
        ("Cache-Control", b"no-store"),
    ];
    reply.small(client, 200, headers, text.as_bytes()).await
}

/// The readiness checks as they stand, the certificates as this worker's
/// TLS listeners have them.
fn readiness_now(w: &Worker) -> Readiness {
    let certificates = if w.cfg.tls_listeners.is_empty() {
        Certificates::NotNeeded
    } else if w.certificates_loaded() {
        Certificates::Loaded
    } else {
        Certificates::Missing
    };
    readiness(w.metrics.shared(), certificates, SystemTime::now())
}
