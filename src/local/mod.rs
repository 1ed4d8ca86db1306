//! Requests ocirelay answers itself: the landing page, `/healthz`, and the
//! ACME HTTP-01 answers.

use monoio::io::AsyncWriteRent;

use crate::downstream::{ClientCtx, Outcome, Reply};
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

/// `GET /healthz`: the process serves requests.
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
