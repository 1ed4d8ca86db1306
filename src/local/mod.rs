//! Requests ocirelay answers itself: the landing page and `/healthz`.

use monoio::io::AsyncWriteRent;

use crate::downstream::{ClientCtx, Outcome, Reply};
use crate::wire::http::RequestHead;
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
